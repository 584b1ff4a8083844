//! Event ids assigned at ingest to events sent without `event_id`.
//!
//! The id is derived from the request body's SHA-256 (computed for the signature anyway)
//! and the event's position among the id-less events of the body: a client that sends the
//! same batch again (it never saw the answer) gets the same ids, so ClickHouse's
//! `ReplacingMergeTree` keeps one copy. Shaped as a UUID version 8 (RFC 9562, custom),
//! RFC variant.

use sha2::{Digest, Sha256};

/// Derives ids from one body's digest; each [`IdDeriver::next`] is the next id-less event.
#[derive(Clone)]
pub struct IdDeriver {
    /// SHA-256 state with the body digest absorbed.
    seeded: Sha256,
    next: u32,
}

impl IdDeriver {
    /// Ids for the body whose SHA-256 is `body_sha256`.
    pub fn new(body_sha256: &[u8; 32]) -> IdDeriver {
        let mut seeded = Sha256::new();
        seeded.update(b"croupier event id v1\n");
        seeded.update(body_sha256);
        IdDeriver { seeded, next: 0 }
    }

    /// The id of the next event without one: `SHA-256(tag ‖ body digest ‖ index)`, first
    /// 16 bytes, with the version and variant bits of a UUIDv8.
    pub fn next_id(&mut self) -> [u8; 16] {
        let mut h = self.seeded.clone();
        h.update(self.next.to_le_bytes());
        self.next = self.next.wrapping_add(1);
        let full: [u8; 32] = h.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        id[6] = (id[6] & 0x0f) | 0x80;
        id[8] = (id[8] & 0x3f) | 0x80;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_body_same_ids_other_body_other_ids() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ids = |d: &[u8; 32]| {
            let mut g = IdDeriver::new(d);
            [g.next_id(), g.next_id(), g.next_id()]
        };
        assert_eq!(ids(&a), ids(&a));
        assert_ne!(ids(&a)[0], ids(&b)[0]);
        let x = ids(&a);
        assert!(x[0] != x[1] && x[1] != x[2] && x[0] != x[2]);
        for id in x {
            assert_eq!((id[6] >> 4, id[8] >> 6), (8, 0b10));
        }
    }
}
