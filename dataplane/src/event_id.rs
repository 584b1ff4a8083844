//! Event ids assigned at ingest to events sent without `event_id`.
//!
//! The id is derived from the request body's SHA-256 (computed for the signature anyway)
//! and the event's position among the id-less events of the body: a client that sends the
//! same batch again (it never saw the answer) gets the same ids, so ClickHouse's
//! `ReplacingMergeTree` keeps one copy. Shaped as a UUID version 8 (RFC 9562, custom),
//! RFC variant.
//!
//! By default ([`EventIds::Siphash`]) an id is a 128-bit SipHash-1-3 (the `siphasher`
//! crate) keyed by the first half of the body digest, over a tag, the digest's second
//! half and the index: a few nanoseconds per id, where the earlier SHA-256 per id
//! ([`EventIds::Sha256`], still selectable: two blocks, as tag, digest and index pass one)
//! was 8 % of an ingest shard's CPU (perf/CHANGES.md). The key is no secret (anyone with
//! the body has it) and need not be: every input comes from SHA-256, which no client can
//! steer, and a client may send any `event_id` of its own anyway. What ids need is to be
//! the same for the same body and index and, otherwise, as unlikely to meet as random
//! UUIDs.

use std::hash::Hasher;

use croupier_control::config::EventIds;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};

/// The tag [`EventIds::Siphash`] hashes before the digest's second half and the index.
const SIP_TAG: &[u8] = b"croupier event id v2\n";
/// The tag [`EventIds::Sha256`] hashes before the digest and the index.
const SHA_TAG: &[u8] = b"croupier event id v1\n";

/// A hash state with everything but the index absorbed.
#[derive(Clone)]
enum Seeded {
    /// Keyed by the digest's first half; the tag and the digest's second half absorbed.
    Sip(SipHasher13),
    /// The tag and the digest absorbed.
    Sha(Sha256),
}

/// Derives ids from one body's digest; each [`IdDeriver::next_id`] is the next id-less
/// event. (Not `Copy`: a copy would hand out the same indexes again.)
pub struct IdDeriver {
    seeded: Seeded,
    next: u32,
}

impl IdDeriver {
    /// Ids for the body whose digest is `body_sha256`, derived as `how` says.
    pub fn new(body_sha256: &[u8; 32], how: EventIds) -> IdDeriver {
        let seeded = match how {
            EventIds::Siphash => {
                let (key, rest) = body_sha256.split_at(16);
                let mut k = [0u8; 16];
                k.copy_from_slice(key);
                let mut h = SipHasher13::new_with_key(&k);
                h.write(SIP_TAG);
                h.write(rest);
                Seeded::Sip(h)
            }
            EventIds::Sha256 => {
                let mut h = Sha256::new();
                h.update(SHA_TAG);
                h.update(body_sha256);
                Seeded::Sha(h)
            }
        };
        IdDeriver { seeded, next: 0 }
    }

    /// The id of the next event without one, with the version and variant bits of a
    /// UUIDv8: SipHash-1-3-128 keyed by the digest's first 16 bytes, of tag ‖ the
    /// digest's last 16 bytes ‖ index (4 bytes, little-endian), its two words
    /// little-endian; or the first 16 bytes of SHA-256(tag ‖ digest ‖ index).
    pub fn next_id(&mut self) -> [u8; 16] {
        let index = self.next;
        self.next = self.next.wrapping_add(1);
        self.id_at(index)
    }

    /// The id of the `index`th id-less event ([`IdDeriver::next_id`] without the count).
    pub fn id_at(&self, index: u32) -> [u8; 16] {
        let index = index.to_le_bytes();
        let mut id = [0u8; 16];
        match &self.seeded {
            Seeded::Sip(seeded) => {
                let mut h = *seeded;
                h.write(&index);
                let full = h.finish128();
                id[..8].copy_from_slice(&full.h1.to_le_bytes());
                id[8..].copy_from_slice(&full.h2.to_le_bytes());
            }
            Seeded::Sha(seeded) => {
                let full: [u8; 32] = seeded.clone().chain_update(index).finalize().into();
                id.copy_from_slice(&full[..16]);
            }
        }
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
            let mut g = IdDeriver::new(d, EventIds::Siphash);
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
        let mut g = IdDeriver::new(&digest, EventIds::Siphash);
        let hex = |id: [u8; 16]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(g.next_id()), "80ca199ac81a8f2fa9fe2615162ffc66");
        assert_eq!(hex(g.next_id()), "223b23ab38ab824ab8e348cbb0bd329b");
        // The earlier derivation: SHA-256, as Python's hashlib computes it.
        let mut g = IdDeriver::new(&digest, EventIds::Sha256);
        assert_eq!(hex(g.next_id()), "f51c590dc0fb84a3b863a12eef610a25");
        assert_eq!(hex(g.next_id()), "9ff4d4a9f8278b9b89b14513b7d1a82e");
    }
}
