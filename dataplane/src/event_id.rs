//! Event ids assigned at ingest to events sent without `event_id`.
//!
//! The id is derived from the request body's SHA-256 (computed for the signature anyway)
//! and the event's position among the id-less events of the body: a client that sends the
//! same batch again (it never saw the answer) gets the same ids, so ClickHouse's
//! `ReplacingMergeTree` keeps one copy. Shaped as a UUID version 8 (RFC 9562, custom),
//! RFC variant.
//!
//! Each id is a 128-bit SipHash-1-3 (the `siphasher` crate) keyed by the first half of the
//! body digest, over a tag, the digest's second half and the index: a few nanoseconds per
//! id where a SHA-256 per id (two blocks: tag, digest and index pass one) was 8 % of an
//! ingest shard's CPU (perf/CHANGES.md). Ids are not a secret nor an authentication: a
//! client may send any `event_id` of its own; what they need is to be the same for the
//! same body and index and, for anything else, as unlikely to meet as random UUIDs.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

/// What the digest's second half and the index follow in every id's input.
const TAG: &[u8] = b"croupier event id v2\n";

/// Derives ids from one body's digest; each [`IdDeriver::next_id`] is the next id-less
/// event.
#[derive(Clone, Copy)]
pub struct IdDeriver {
    /// SipHash state keyed by the digest's first half, the tag and its second half
    /// absorbed.
    seeded: SipHasher13,
    next: u32,
}

impl IdDeriver {
    /// Ids for the body whose SHA-256 is `body_sha256`.
    pub fn new(body_sha256: &[u8; 32]) -> IdDeriver {
        let (key, rest) = body_sha256.split_at(16);
        let mut k = [0u8; 16];
        k.copy_from_slice(key);
        let mut seeded = SipHasher13::new_with_key(&k);
        seeded.write(TAG);
        seeded.write(rest);
        IdDeriver { seeded, next: 0 }
    }

    /// The id of the next event without one: SipHash-1-3-128 keyed by the digest's first
    /// 16 bytes, of tag ‖ the digest's last 16 bytes ‖ index (4 bytes, little-endian),
    /// its two words little-endian, with the version and variant bits of a UUIDv8.
    pub fn next_id(&mut self) -> [u8; 16] {
        let mut h = self.seeded;
        h.write(&self.next.to_le_bytes());
        self.next = self.next.wrapping_add(1);
        let full = h.finish128();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&full.h1.to_le_bytes());
        id[8..].copy_from_slice(&full.h2.to_le_bytes());
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

    /// The derivation is fixed: a batch retried through another build or node gets the
    /// same ids. (These were computed by a separate implementation of SipHash-1-3-128
    /// written from the specification, in Python, not by this code.)
    #[test]
    fn ids_are_those_of_the_specified_derivation() {
        let digest: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut g = IdDeriver::new(&digest);
        let hex = |id: [u8; 16]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(g.next_id()), "80ca199ac81a8f2fa9fe2615162ffc66");
        assert_eq!(hex(g.next_id()), "223b23ab38ab824ab8e348cbb0bd329b");
    }
}
