//! Counter cells with one writer: a shard's own block of `u64` counters, on cache lines
//! no other data shares, written without locked instructions and read by the control
//! thread at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters per [`Line`]: 16 × 8 bytes = 128 bytes. Two 64-byte cache lines, because
/// x86's adjacent-line prefetcher fetches lines in pairs: a block aligned to 128 bytes
/// shares neither line of a pair with another block.
const PER_LINE: usize = 16;

/// 128 bytes of counters, aligned to 128.
#[repr(align(128))]
#[derive(Default)]
struct Line([AtomicU64; PER_LINE]);

/// A block of counters owned by one thread.
///
/// Only the owner adds (through its [`super::ShardWriter`], which is neither `Clone` nor
/// `Sync`): an add is a relaxed load and a relaxed store, plain moves on x86 and ARM, with
/// no read-modify-write that would lock the bus. Other threads read with relaxed loads
/// and see each counter whole (an aligned 64-bit access never tears), at most a moment
/// late. The block starts and ends on a 128-byte boundary, so the owner's writes never
/// touch a line another thread writes.
pub struct Cells {
    lines: Box<[Line]>,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cells({} counters)", self.lines.len() * PER_LINE)
    }
}

impl Cells {
    /// A block of at least `len` counters, all zero.
    pub fn new(len: usize) -> Cells {
        let lines = len.div_ceil(PER_LINE).max(1);
        Cells { lines: (0..lines).map(|_| Line::default()).collect() }
    }

    fn cell(&self, i: usize) -> Option<&AtomicU64> {
        self.lines.get(i / PER_LINE).map(|l| &l.0[i % PER_LINE])
    }

    /// Adds `n` to counter `i` (nothing if out of range). Owner only: two owners adding
    /// at once could lose an add (never memory safety).
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.cell(i) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Counter `i` (0 if out of range).
    #[inline]
    pub fn get(&self, i: usize) -> u64 {
        self.cell(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_whole_aligned_lines() {
        assert_eq!(std::mem::size_of::<Line>(), 128);
        assert_eq!(std::mem::align_of::<Line>(), 128);
        let c = Cells::new(17);
        assert_eq!(c.lines.len(), 2);
        assert_eq!(c.lines.as_ptr() as usize % 128, 0);
    }

    #[test]
    fn adds_and_reads_back() {
        let c = Cells::new(40);
        c.add(0, 1);
        c.add(39, 5);
        c.add(39, 2);
        c.add(1000, 9);
        assert_eq!((c.get(0), c.get(39), c.get(1), c.get(1000)), (1, 7, 0, 0));
    }

    #[test]
    fn another_thread_reads_what_the_owner_wrote() {
        let c = std::sync::Arc::new(Cells::new(1));
        let w = c.clone();
        std::thread::spawn(move || (0..100_000).for_each(|_| w.add(0, 1))).join().map_err(|_| "writer").ok();
        assert_eq!(c.get(0), 100_000);
    }
}
