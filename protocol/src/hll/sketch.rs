//! [`Sketch`]: a HyperLogLog with plain registers, owned and used by one thread.

use super::estimate::{estimate, histogram};
use super::hash::{hash_element, index_and_rank};
use super::redis_string::{self, Header, HllError};
use super::REGISTERS;

/// A HyperLogLog of 16,384 registers, one byte each (16 KiB), compatible with Redis's
/// `PFADD`/`PFCOUNT`/`PFMERGE`. For a sketch other threads read while it is updated, see
/// [`SketchWriter`](super::SketchWriter).
#[derive(Clone, PartialEq, Eq)]
pub struct Sketch {
    registers: Box<[u8; REGISTERS]>,
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.registers.iter().filter(|&&r| r != 0).count();
        f.debug_struct("Sketch").field("registers_set", &set).finish()
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Sketch {
        Sketch { registers: Box::new([0; REGISTERS]) }
    }

    /// A sketch with these registers (values above 63 are kept to their low 6 bits).
    pub fn from_registers(registers: &[u8; REGISTERS]) -> Sketch {
        let mut s = Sketch { registers: Box::new(*registers) };
        for r in s.registers.iter_mut() {
            *r &= 63;
        }
        s
    }

    /// Adds an element as `PFADD` does; true if a register changed.
    #[inline]
    pub fn add(&mut self, element: &[u8]) -> bool {
        self.add_hash(hash_element(element))
    }

    /// Adds an element by its hash ([`hash_element`]); true if a register changed.
    #[inline(always)]
    pub fn add_hash(&mut self, hash: u64) -> bool {
        let (index, rank) = index_and_rank(hash);
        let r = &mut self.registers[index];
        if rank > *r {
            *r = rank;
            true
        } else {
            false
        }
    }

    /// Register-wise maximum with `other`: this sketch then counts the union.
    pub fn merge(&mut self, other: &Sketch) {
        for (a, &b) in self.registers.iter_mut().zip(other.registers.iter()) {
            *a = (*a).max(b);
        }
    }

    /// Register-wise maximum with a Redis HyperLogLog string (dense or sparse), as
    /// `PFMERGE` does. A malformed string is an error and leaves the sketch unchanged.
    pub fn merge_redis(&mut self, bytes: &[u8]) -> Result<Header, HllError> {
        redis_string::merge_into(bytes, &mut self.registers)
    }

    /// The sketch held in a Redis HyperLogLog string (dense or sparse).
    pub fn from_redis(bytes: &[u8]) -> Result<Sketch, HllError> {
        let mut s = Sketch::new();
        redis_string::decode(bytes, &mut s.registers)?;
        Ok(s)
    }

    /// The cardinality estimate: equal to Redis's `PFCOUNT` of the same registers.
    pub fn count(&self) -> u64 {
        estimate(&histogram(&self.registers))
    }

    /// The dense Redis string of this sketch with its cached cardinality marked stale (no
    /// estimate computed; Redis computes it on the first `PFCOUNT`). Ready for `SET`, then
    /// `PFMERGE` into a key.
    pub fn to_redis_dense(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(redis_string::DENSE_LEN);
        self.write_redis_dense(&mut out);
        out
    }

    /// Appends [`to_redis_dense`](Self::to_redis_dense)'s string to `out` (reusing its
    /// buffer).
    pub fn write_redis_dense(&self, out: &mut Vec<u8>) {
        redis_string::encode_dense(&self.registers, None, out);
    }

    /// The dense Redis string with the current estimate cached: byte for byte what Redis
    /// holds for the same registers after `PFDEBUG TODENSE` and `PFCOUNT`.
    pub fn to_redis_dense_counted(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(redis_string::DENSE_LEN);
        redis_string::encode_dense(&self.registers, Some(self.count()), &mut out);
        out
    }

    /// The sparse Redis string of this sketch (cached cardinality stale), or `None` if a
    /// register exceeds 32 (only the dense encoding holds it).
    pub fn to_redis_sparse(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        redis_string::encode_sparse(&self.registers, usize::MAX, &mut out).then_some(out)
    }

    /// The string Redis itself would keep for these registers: sparse while that is
    /// possible and no longer than Redis's default `hll-sparse-max-bytes` (3,000 bytes),
    /// dense otherwise (cached cardinality stale in both). `PFMERGE` of a sparse string
    /// into a sparse key keeps the key sparse, so small sets stay small in Redis.
    pub fn to_redis(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_redis(&mut out);
        out
    }

    /// Appends [`to_redis`](Self::to_redis)'s string to `out` (reusing its buffer).
    pub fn write_redis(&self, out: &mut Vec<u8>) {
        // A VAL opcode covers at most 4 registers: more set registers cannot fit.
        let set = self.registers.iter().filter(|&&r| r != 0).count();
        let fits = set <= 4 * redis_string::SPARSE_MAX_BYTES
            && redis_string::encode_sparse(&self.registers, redis_string::SPARSE_MAX_BYTES, out);
        if !fits {
            self.write_redis_dense(out);
        }
    }

    /// The registers, by index.
    pub fn registers(&self) -> &[u8; REGISTERS] {
        &self.registers
    }

    /// Whether no element was added (every register is 0).
    pub fn is_empty(&self) -> bool {
        self.registers.iter().all(|&r| r == 0)
    }

    /// Empties the sketch, keeping its memory.
    pub fn clear(&mut self) {
        self.registers.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_as_redis_does_and_merges_as_union() {
        // Redis 7.0.15: PFADD k user-0 … user-99 → PFCOUNT 99 (two share a register);
        // PFADD j user-50 … user-149 → PFCOUNT k j 149.
        let mut a = Sketch::new();
        let mut b = Sketch::new();
        assert_eq!(a.count(), 0);
        for i in 0..100u32 {
            a.add(format!("user-{i}").as_bytes());
            b.add(format!("user-{}", i + 50).as_bytes());
        }
        assert_eq!(a.count(), 99);
        assert!(!a.add(b"user-7"), "an element already counted changes nothing");
        a.merge(&b);
        assert_eq!(a.count(), 149);
        let back = Sketch::from_redis(&a.to_redis_dense()).unwrap();
        assert_eq!(back, a);
        let mut c = Sketch::new();
        c.merge_redis(&a.to_redis_dense_counted()).unwrap();
        assert_eq!(c, a);
        c.clear();
        assert!(c.is_empty());
    }
}
