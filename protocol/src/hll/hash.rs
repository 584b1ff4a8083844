//! The hash Redis's `PFADD` applies to an element, and how a hash picks a register and a
//! rank.
//!
//! Redis hashes with MurmurHash64A (Austin Appleby's 64-bit MurmurHash2) reading 8-byte
//! blocks little-endian on every platform, seeded with [`SEED`](super::SEED). The low
//! [`P`](super::P) bits of the hash select the register; the rank is one plus the number
//! of trailing zeros of the remaining [`Q`](super::Q) bits, with bit Q set so that the
//! rank never exceeds Q + 1.

use super::{P, Q, REGISTERS, SEED};

const M: u64 = 0xc6a4_a793_5bd1_e995;
const R: u32 = 47;

/// MurmurHash64A of `key` with `seed`, as Redis computes it (little-endian block reads).
///
/// Redis takes the length as a C `int`; elements are far below 2 GiB, where both agree.
pub fn murmur_hash64a(key: &[u8], seed: u32) -> u64 {
    let mut h = u64::from(seed) ^ (key.len() as u64).wrapping_mul(M);
    let mut blocks = key.chunks_exact(8);
    for block in &mut blocks {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        let mut k = u64::from_le_bytes(word);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u64::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The hash `PFADD` computes for `element`.
#[inline]
pub fn hash_element(element: &[u8]) -> u64 {
    murmur_hash64a(element, SEED)
}

/// The register (0..16384) and rank (1..=51) a hash updates.
#[inline(always)]
pub fn index_and_rank(hash: u64) -> (usize, u8) {
    let index = (hash as usize) & (REGISTERS - 1);
    let rest = (hash >> P) | (1u64 << Q);
    // trailing_zeros of a value with bit Q set is at most Q = 50: fits a u8.
    let rank = rest.trailing_zeros() as u8 + 1;
    (index, rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_is_one_plus_trailing_zeros_above_the_index_bits() {
        assert_eq!(index_and_rank(0), (0, 51), "no bit set above the index: the sentinel bit Q gives Q + 1");
        assert_eq!(index_and_rank(1 << P), (0, 1));
        assert_eq!(index_and_rank((1 << (P + 3)) | 5), (5, 4));
        assert_eq!(index_and_rank(u64::MAX), (REGISTERS - 1, 1));
    }

    #[test]
    fn every_tail_length_is_hashed() {
        // A different tail byte changes the hash at every length (no byte ignored).
        let base = b"0123456789abcdefg";
        for len in 0..base.len() {
            let a = murmur_hash64a(&base[..len], SEED);
            let mut other = base[..len].to_vec();
            if let Some(last) = other.last_mut() {
                *last ^= 1;
                assert_ne!(a, murmur_hash64a(&other, SEED), "length {len}");
            }
        }
    }
}
