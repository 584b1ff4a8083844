//! How many times a log record's bytes (under one resource and scope) occurred earlier in
//! the same request, so that identical records are distinct events with ids that a retry
//! of the request reproduces: the k-th repeat's id mixes in k (`map.rs`).
//!
//! An open-addressing table of record digests, indexed by a seeded hash (the digests are
//! of bytes a sender chooses), emptied per request by a generation count and reused with
//! the shard's buffers: it grows (doubling) to the most records a request has held and
//! is not allocated again.

use std::hash::BuildHasher;

/// A digest seen in the current request and how many times.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    generation: u32,
    count: u32,
    digest: u128,
}

/// The digests of the current request's log records; reused between requests.
#[derive(Debug, Default)]
pub struct Occurrences {
    cells: Vec<Cell>,
    len: usize,
    generation: u32,
    hasher: foldhash::fast::RandomState,
}

impl Occurrences {
    /// Starts a request: nothing seen.
    pub fn begin(&mut self) {
        self.len = 0;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.cells.fill(Cell::default());
            self.generation = 1;
        }
    }

    /// How many times `digest` was seen earlier in this request (0 the first time);
    /// notes it once more.
    pub fn next(&mut self, digest: u128) -> u32 {
        if (self.len + 1) * 2 > self.cells.len() {
            self.grow();
        }
        match self.slot(digest) {
            Some(i) => match self.cells.get_mut(i) {
                Some(c) if c.generation == self.generation => {
                    let k = c.count;
                    c.count = c.count.saturating_add(1);
                    k
                }
                Some(c) => {
                    *c = Cell { generation: self.generation, count: 1, digest };
                    self.len += 1;
                    0
                }
                None => 0,
            },
            None => 0,
        }
    }

    /// The cell holding `digest`, or the empty one where it goes.
    fn slot(&self, digest: u128) -> Option<usize> {
        let mask = self.cells.len().checked_sub(1)?;
        let mut i = self.hasher.hash_one(digest) as usize & mask;
        for _ in 0..self.cells.len() {
            let c = self.cells.get(i)?;
            if c.generation != self.generation || c.digest == digest {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Doubles the table (at least 64 cells), keeping this request's digests.
    fn grow(&mut self) {
        let size = (self.cells.len() * 2).max(64);
        let old = std::mem::replace(&mut self.cells, vec![Cell::default(); size]);
        for c in old.into_iter().filter(|c| c.generation == self.generation) {
            if let Some(i) = self.slot(c.digest) {
                if let Some(cell) = self.cells.get_mut(i) {
                    *cell = c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_per_request() {
        let mut o = Occurrences::default();
        o.begin();
        let got: Vec<u32> = [1u128, 2, 1, 1, 3, 2].into_iter().map(|d| o.next(d)).collect();
        assert_eq!(got, [0, 0, 1, 2, 0, 1]);
        // Growth keeps the counts.
        let got: Vec<u32> = (0..1000u128).chain(0..1000).map(|d| o.next(d + 10)).collect();
        assert!(got[..1000].iter().all(|&k| k == 0) && got[1000..].iter().all(|&k| k == 1));
        assert_eq!(o.next(1), 3);
        o.begin();
        assert_eq!((o.next(1), o.next(1), o.next(1010)), (0, 1, 0));
    }
}
