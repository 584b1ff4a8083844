//! A sketch one thread updates while other threads read live estimates, without locks.
//!
//! The registers are atomic bytes. Only the [`SketchWriter`] (one per sketch, not
//! `Clone`, updated through `&mut self`) writes them, so an update is a relaxed load, a
//! compare and, when the rank is larger, a relaxed store — the same instructions as
//! a plain byte array on x86-64 and AArch64, with no read-modify-write and no fence.
//! [`SketchReader`]s copy the registers with relaxed loads and estimate from the copy.
//!
//! A reader may see some of a concurrent batch of updates and not others. Registers only
//! grow, so what it estimates is a register set between the sketch before and after the
//! batch: a live figure, never a wrong one. docs/aggregation.md has the measured cost
//! against plain registers.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use super::estimate::{estimate, Histogram};
use super::hash::{hash_element, index_and_rank};
use super::redis_string::{self, Header, HllError};
use super::sketch::Sketch;
use super::REGISTERS;

/// The registers of a shared sketch.
type Registers = [AtomicU8; REGISTERS];

/// The writing side of a shared sketch: the one thread that adds and merges.
pub struct SketchWriter {
    registers: Arc<Registers>,
}

/// A reading side of a shared sketch: live estimates and snapshots from any thread.
#[derive(Clone)]
pub struct SketchReader {
    registers: Arc<Registers>,
}

impl std::fmt::Debug for SketchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SketchWriter").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SketchReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SketchReader").finish_non_exhaustive()
    }
}

impl Default for SketchWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SketchWriter {
    /// An empty shared sketch.
    pub fn new() -> SketchWriter {
        SketchWriter { registers: Arc::new([const { AtomicU8::new(0) }; REGISTERS]) }
    }

    /// A reader of this sketch, for another thread.
    pub fn reader(&self) -> SketchReader {
        SketchReader { registers: Arc::clone(&self.registers) }
    }

    /// Adds an element as `PFADD` does; true if a register changed.
    #[inline]
    pub fn add(&mut self, element: &[u8]) -> bool {
        self.add_hash(hash_element(element))
    }

    /// Adds an element by its hash; true if a register changed.
    #[inline(always)]
    pub fn add_hash(&mut self, hash: u64) -> bool {
        let (index, rank) = index_and_rank(hash);
        self.raise(index, rank)
    }

    #[inline(always)]
    fn raise(&mut self, index: usize, value: u8) -> bool {
        let r = &self.registers[index];
        // The only writer: a load and a store cannot lose an update.
        if value > r.load(Relaxed) {
            r.store(value, Relaxed);
            true
        } else {
            false
        }
    }

    /// Register-wise maximum with `other`.
    pub fn merge(&mut self, other: &Sketch) {
        for (index, &value) in other.registers().iter().enumerate() {
            self.raise(index, value);
        }
    }

    /// Register-wise maximum with a Redis HyperLogLog string (dense or sparse). A
    /// malformed string is an error and leaves the sketch unchanged.
    pub fn merge_redis(&mut self, bytes: &[u8]) -> Result<Header, HllError> {
        let mut incoming = [0u8; REGISTERS];
        let header = redis_string::decode(bytes, &mut incoming)?;
        for (index, &value) in incoming.iter().enumerate() {
            self.raise(index, value);
        }
        Ok(header)
    }

    /// The current estimate (Redis's `PFCOUNT` of the current registers).
    pub fn count(&self) -> u64 {
        count(&self.registers)
    }

    /// A copy of the current registers.
    pub fn snapshot(&self) -> Sketch {
        snapshot(&self.registers)
    }
}

impl SketchReader {
    /// The live estimate; never blocks or slows the writer beyond sharing cache lines.
    pub fn count(&self) -> u64 {
        count(&self.registers)
    }

    /// A copy of the registers as they are now.
    pub fn snapshot(&self) -> Sketch {
        snapshot(&self.registers)
    }
}

fn count(registers: &Registers) -> u64 {
    let mut hist: Histogram = [0; 64];
    for r in registers {
        hist[usize::from(r.load(Relaxed) & 63)] += 1;
    }
    estimate(&hist)
}

fn snapshot(registers: &Registers) -> Sketch {
    let mut copy = [0u8; REGISTERS];
    for (c, r) in copy.iter_mut().zip(registers) {
        *c = r.load(Relaxed);
    }
    Sketch::from_registers(&copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_on_other_threads_see_the_writers_adds() {
        let mut w = SketchWriter::new();
        let r = w.reader();
        let reading = std::thread::spawn(move || {
            let mut last = 0;
            while last < 10_000 {
                let c = r.count();
                assert!(c >= last, "registers only grow: {c} after {last}");
                last = c;
            }
            r.snapshot()
        });
        let mut plain = Sketch::new();
        let mut i = 0u64;
        while !reading.is_finished() {
            let h = hash_element(&i.to_le_bytes());
            assert_eq!(w.add_hash(h), plain.add_hash(h));
            i += 1;
        }
        let seen = reading.join().unwrap();
        assert!(seen.count() >= 10_000);
        assert_eq!(w.snapshot(), plain);
        assert_eq!(w.count(), plain.count());
    }
}
