//! How large an entry the next read should expect: sized from the entries recent reads
//! returned, so that a read asks for as many entries as fit the batch's byte budget.
//!
//! Sizing every read for the largest entry ingest can write (~11.3 MiB by default) asked
//! for 5 entries per read where typical entries hold a few kilobytes. Instead the size
//! expected is the largest entry of the last read: a larger entry raises it at once (the
//! next read asks for fewer), smaller ones lower it by at most half per read (the count
//! grows towards `worker.read_count` by doubling). A sudden run of maximal entries after
//! small ones can make one read hold `read_count` of them (docs/worker.md).

use std::cell::Cell;

/// The smallest entry size a read is sized for, in bytes: a read never asks for more than
/// the bytes left in the batch divided by this.
pub const ENTRY_FLOOR: usize = 1024;

/// The entry size the next read of one consumer is sized for, shared by its reads.
#[derive(Debug)]
pub struct ReadSize {
    /// Bytes expected per entry of the next read.
    entry_bytes: Cell<usize>,
}

impl ReadSize {
    /// Starts cautious: entries as large as `max_entry_bytes` (the largest ingest writes).
    pub fn new(max_entry_bytes: usize) -> ReadSize {
        ReadSize { entry_bytes: Cell::new(max_entry_bytes.max(ENTRY_FLOOR)) }
    }

    /// Bytes expected per entry of the next read (at least [`ENTRY_FLOOR`]).
    pub fn entry_bytes(&self) -> usize {
        self.entry_bytes.get()
    }

    /// After a read whose largest entry held `largest` bytes (`None`: the read returned
    /// nothing, which says nothing of the entries' size).
    pub fn observe(&self, largest: Option<usize>) {
        let Some(largest) = largest else { return };
        let now = self.entry_bytes.get();
        let next = if largest >= now { largest } else { (now / 2).max(largest) };
        self.entry_bytes.set(next.max(ENTRY_FLOOR));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults: 64 MiB per batch, entries up to ~11.3 MiB, 200 entries per read.
    const BATCH_BYTES: usize = 64 << 20;
    const MAX_ENTRY: usize = (10 << 20) + 10_000 * 128 + 4096;
    const READ_COUNT: usize = 200;

    fn count(s: &ReadSize) -> usize {
        (BATCH_BYTES / s.entry_bytes()).clamp(1, READ_COUNT)
    }

    #[test]
    fn read_size_grows_towards_read_count_for_small_entries() {
        let s = ReadSize::new(MAX_ENTRY);
        assert_eq!(count(&s), 5, "the first read is sized for the largest entries");
        let mut counts = Vec::new();
        for _ in 0..10 {
            // Batch entries of 100 events, ~30 KB each.
            s.observe(Some(30_000));
            counts.push(count(&s));
        }
        assert_eq!(counts[..5], [11, 22, 45, 91, 182], "doubling");
        assert_eq!(counts[5..], [READ_COUNT; 5]);
        assert_eq!(s.entry_bytes(), 30_000, "settles on the entries seen");
    }

    #[test]
    fn read_size_shrinks_at_once_when_a_large_entry_is_seen() {
        let s = ReadSize::new(MAX_ENTRY);
        for _ in 0..20 {
            s.observe(Some(300));
        }
        assert_eq!(s.entry_bytes(), ENTRY_FLOOR, "never below the floor");
        assert_eq!(count(&s), READ_COUNT);
        s.observe(Some(MAX_ENTRY));
        assert_eq!(count(&s), 5, "one maximal entry: the next read is sized for it");
        // An entry larger than ingest writes (another producer's): sized for it too.
        s.observe(Some(BATCH_BYTES));
        assert_eq!(count(&s), 1);
        // A read that returned nothing changes nothing.
        s.observe(None);
        assert_eq!(count(&s), 1);
    }
}
