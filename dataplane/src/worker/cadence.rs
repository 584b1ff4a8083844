//! When a consumer's batch closes: `linger` after its first entries and, under a heavy
//! load, no sooner than `insert_interval` after the consumer's previous insert
//! (docs/worker.md "Batching").
//!
//! The load is judged per ClickHouse table on the worker shard ([`TableLoad`]): the
//! consumers of `analytics:events` and `analytics:custom` (and of their partitions) all
//! write `analytics.events`, and every insert is a part that table writes and merges. A
//! consumer whose own stream is light but whose table is heavy waits for the interval too,
//! instead of inserting a small part every linger. (The custom stream's new entries are
//! now read by the events consumer, [`super::join`]; partitions and future streams of one
//! table still add up here.)

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the close of a consumer's batch depends on.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// A batch closes this long after its first entries ...
    pub linger: Duration,
    /// ... and, under a heavy load, no sooner than this after the previous insert.
    pub insert_interval: Duration,
    /// Rows that fill a batch; a tenth of them per interval is a heavy load.
    pub batch_rows: usize,
}

impl Cadence {
    /// The rate, in rows per second, at which a load is heavy: a tenth of `batch_rows`
    /// within the insert interval (33,333 rows/s by default).
    fn heavy_rate(&self) -> f64 {
        rate((self.batch_rows / 10).max(1), self.insert_interval)
    }
}

/// Rows per second of `rows` gathered in `gathered` (infinite when gathered at once).
fn rate(rows: usize, gathered: Duration) -> f64 {
    if rows == 0 {
        return 0.0;
    }
    rows as f64 * 1e6 / gathered.as_micros() as f64
}

/// The batch a consumer gathered last: when it closed (or when the consumer last inserted,
/// [`other_insert`]), how long it gathered (from its first entries to its close) and its
/// rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// When it closed.
    pub at: Instant,
    /// From its first entries to its close.
    pub gathered: Duration,
    /// Its rows.
    pub rows: usize,
}

impl Closed {
    /// Its rows per second: a rate, not a count, so that a load is heavy or not whatever
    /// the batch's length.
    fn rate(&self) -> f64 {
        rate(self.rows, self.gathered)
    }
}

/// When a batch whose first entries were read at `first` closes (unless full first):
/// `linger` after them, and, when `heavy`, no sooner than `insert_interval` after the
/// consumer's previous batch closed (`previous`; none before its first batch).
pub fn close_at(first: Instant, previous: Option<Closed>, heavy: bool, cadence: &Cadence) -> Instant {
    // A configured length past what an `Instant` holds waits a year instead.
    let after = |t: Instant, d: Duration| t.checked_add(d).unwrap_or(t + Duration::from_secs(365 * 86_400));
    let by_linger = after(first, cadence.linger);
    match previous {
        Some(p) if heavy => by_linger.max(after(p.at, cadence.insert_interval)),
        _ => by_linger,
    }
}

/// The last batch closed as `previous` says, once a claimed, recovered or tried-alone
/// batch's insert starts at `at`: the interval's clock moves to it (an insert like any
/// other: under a heavy load the next gathered batch closes no sooner than the interval
/// after it), while the load stays the one judged from the last gathered batch (a claimed
/// batch comes at once, whatever the stream's rate). Unknown before a batch was gathered.
pub fn other_insert(previous: Option<Closed>, at: Instant) -> Option<Closed> {
    previous.map(|p| Closed { at: at.max(p.at), ..p })
}

/// One consumer's part in its table's load.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Its last batch ([`Closed::at`] moved by its other inserts).
    last: Option<Closed>,
    /// When its last gathered batch closed (not moved by other inserts).
    gathered_at: Option<Instant>,
    /// It is committing a batch it gathered.
    held: bool,
}

/// The last batches of the consumers of one table on one worker shard: the table's load
/// there. Shared by those consumers, which all run on the shard's thread (no lock).
/// Judging the load reads every slot: with 1,024 partitions, 2,048 slots (microseconds)
/// per batch closed.
#[derive(Debug, Default)]
pub struct TableLoad {
    slots: RefCell<Vec<Slot>>,
}

impl TableLoad {
    /// A consumer of the table joins: its place in the load.
    pub fn join(self: &Rc<Self>) -> LoadSlot {
        let mut slots = self.slots.borrow_mut();
        slots.push(Slot::default());
        LoadSlot { table: self.clone(), slot: slots.len() - 1 }
    }
}

/// One consumer's place in its table's [`TableLoad`].
#[derive(Debug, Clone)]
pub struct LoadSlot {
    table: Rc<TableLoad>,
    slot: usize,
}

impl LoadSlot {
    /// A consumer alone with its table.
    #[cfg(test)]
    fn alone() -> LoadSlot {
        Rc::new(TableLoad::default()).join()
    }

    fn update(&self, f: impl FnOnce(&mut Slot)) {
        if let Some(s) = self.table.slots.borrow_mut().get_mut(self.slot) {
            f(s);
        }
    }

    /// The consumer's last batch.
    pub fn last(&self) -> Option<Closed> {
        self.table.slots.borrow().get(self.slot).and_then(|s| s.last)
    }

    /// The consumer gathered a batch, which closed as `closed` says.
    pub fn gathered(&self, closed: Closed) {
        self.update(|s| {
            s.last = Some(closed);
            s.gathered_at = Some(closed.at);
        });
    }

    /// The consumer inserts a claimed, recovered or tried-alone batch, starting at `at`
    /// ([`other_insert`]): its interval's clock moves, its load (and how recent it is to
    /// the others) does not.
    pub fn inserted_other(&self, at: Instant) {
        self.update(|s| s.last = other_insert(s.last, at));
    }

    /// The consumer commits a batch it gathered until the guard is dropped: meanwhile its
    /// load counts for the others however long the commit takes (a slow ClickHouse).
    pub fn hold(&self) -> Held {
        self.update(|s| s.held = true);
        Held(self.clone())
    }

    /// Whether the table's load is heavy for a batch whose first entries were read at
    /// `first`: the rate of this consumer's last batch plus those of the other consumers'
    /// last gathered batches, each while that consumer commits it or for two insert
    /// intervals after it closed (a consumer that went quiet no longer counts), reaches
    /// [`Cadence`]'s heavy rate. With no batch of its own yet, not heavy (the linger).
    pub fn heavy(&self, first: Instant, cadence: &Cadence) -> bool {
        let slots = self.table.slots.borrow();
        let Some(own) = slots.get(self.slot).and_then(|s| s.last) else {
            return false;
        };
        let recent = cadence.insert_interval.saturating_mul(2);
        let current = |s: &Slot| s.held || s.gathered_at.is_some_and(|t| first.saturating_duration_since(t) <= recent);
        let others: f64 = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != self.slot && current(s))
            .filter_map(|(_, s)| s.last)
            .map(|c| c.rate())
            .sum();
        own.rate() + others >= cadence.heavy_rate()
    }
}

/// A consumer committing a batch it gathered ([`LoadSlot::hold`]); dropped when the
/// commit ends (committed, or the consumer stopping).
#[derive(Debug)]
pub struct Held(LoadSlot);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.update(|s| s.held = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cadence() -> Cadence {
        // batch_rows 1000, interval 600 ms: "heavy" is at least 100 rows per 600 ms.
        Cadence { linger: Duration::from_millis(200), insert_interval: Duration::from_millis(600), batch_rows: 1000 }
    }

    /// `close_at` for a consumer alone with its table whose last batch was `previous`.
    fn alone(first: Instant, previous: Option<Closed>, c: &Cadence) -> Instant {
        let slot = LoadSlot::alone();
        slot.update(|s| s.last = previous);
        close_at(first, previous, slot.heavy(first, c), c)
    }

    fn is_heavy(previous: Option<Closed>, c: &Cadence) -> bool {
        let slot = LoadSlot::alone();
        slot.update(|s| s.last = previous);
        previous.is_some_and(|p| slot.heavy(p.at, c))
    }

    #[test]
    fn a_batch_closes_after_the_linger_and_under_heavy_load_not_sooner_than_the_interval() {
        let c = cadence();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let closed = |rows, gathered| Some(Closed { at: t0, gathered: ms(gathered), rows });
        // The first batch: the linger after its first entries.
        assert_eq!(alone(t0, None, &c), t0 + ms(200));
        // Under a heavy load (the previous batch closed just now): the interval.
        assert_eq!(alone(t0 + ms(5), closed(34, 200), &c), t0 + ms(600));
        assert_eq!(alone(t0 + ms(5), closed(100, 600), &c), t0 + ms(600));
        // The same rate is heavy whether it gathered a linger or an interval (no state
        // that depends on the previous mode).
        assert!(is_heavy(closed(40, 200), &c) && is_heavy(closed(120, 600), &c));
        assert!(!is_heavy(closed(30, 200), &c) && !is_heavy(closed(90, 600), &c));
        // At the threshold, from other figures: heavy; one row less: not.
        assert!(is_heavy(closed(50, 300), &c) && is_heavy(closed(1, 6), &c));
        assert!(!is_heavy(closed(99, 600), &c) && !is_heavy(closed(49, 300), &c));
        // A light load: the linger.
        assert_eq!(alone(t0 + ms(5), closed(33, 200), &c), t0 + ms(205));
        // A full batch gathered at once is heavy; an empty one is not.
        assert!(is_heavy(closed(1000, 0), &c));
        assert!(!is_heavy(closed(0, 0), &c));
        // After a quiet spell: the linger again.
        assert_eq!(alone(t0 + ms(2_000), closed(1000, 600), &c), t0 + ms(2_200));
        // In between: whichever is later.
        assert_eq!(alone(t0 + ms(500), closed(1000, 600), &c), t0 + ms(700));
        // An interval of 0: the linger alone.
        let mut c0 = c;
        c0.insert_interval = Duration::ZERO;
        assert_eq!(alone(t0 + ms(5), closed(1000, 100), &c0), t0 + ms(205));
        // Lengths past what an `Instant` holds do not panic.
        c0.insert_interval = Duration::MAX;
        c0.linger = Duration::MAX;
        assert!(alone(t0, closed(1000, 0), &c0) > t0 + ms(1_000_000));
    }

    #[test]
    fn a_claimed_recovered_or_alone_insert_moves_the_intervals_clock_not_the_load() {
        let c = cadence();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let heavy = Some(Closed { at: t0, gathered: ms(600), rows: 1000 });
        let light = Some(Closed { at: t0, gathered: ms(200), rows: 10 });
        // Heavy: a claimed batch inserted 400 ms after the last gathered one closed; the next
        // gathered batch closes the interval after the claimed one, not after the last.
        let after_claim = other_insert(heavy, t0 + ms(400));
        assert_eq!(alone(t0 + ms(450), heavy, &c), t0 + ms(650), "without the claim");
        assert_eq!(alone(t0 + ms(450), after_claim, &c), t0 + ms(1_000));
        assert!(is_heavy(after_claim, &c) && after_claim.is_some_and(|p| p.rows == 1000 && p.gathered == ms(600)));
        // Light: still the linger.
        assert_eq!(alone(t0 + ms(450), other_insert(light, t0 + ms(400)), &c), t0 + ms(650));
        // Nothing gathered yet: nothing known of the load, the linger.
        assert!(other_insert(None, t0).is_none());
        // The clock never goes back.
        assert!(other_insert(heavy, t0.checked_sub(ms(1)).unwrap_or(t0)).is_some_and(|p| p.at == t0));
    }

    #[test]
    fn a_light_stream_waits_for_the_interval_when_its_table_is_heavy() {
        let c = cadence();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let table = Rc::new(TableLoad::default());
        let (events, custom, payments) = (table.join(), table.join(), Rc::new(TableLoad::default()).join());
        let close = |slot: &LoadSlot, first: Instant| close_at(first, slot.last(), slot.heavy(first, &c), &c);
        // The custom stream alone is light (30 rows per 200 ms): the linger.
        custom.gathered(Closed { at: t0, gathered: ms(200), rows: 30 });
        assert!(!custom.heavy(t0 + ms(5), &c));
        assert_eq!(close(&custom, t0 + ms(5)), t0 + ms(205));
        // The events stream of the same table is heavy: the custom consumer waits for the
        // interval after its own last batch.
        events.gathered(Closed { at: t0, gathered: ms(600), rows: 900 });
        assert!(custom.heavy(t0 + ms(5), &c));
        assert_eq!(close(&custom, t0 + ms(5)), t0 + ms(600));
        // Two light streams whose sum is heavy: both wait (20 + 20 rows per 200 ms).
        events.gathered(Closed { at: t0, gathered: ms(200), rows: 20 });
        custom.gathered(Closed { at: t0, gathered: ms(200), rows: 20 });
        assert!(custom.heavy(t0 + ms(5), &c) && events.heavy(t0 + ms(5), &c));
        // Another table's consumer is not counted.
        payments.gathered(Closed { at: t0, gathered: ms(200), rows: 30 });
        assert!(!payments.heavy(t0 + ms(5), &c));
        // Nor is a consumer heavy before its own first batch.
        let fresh = table.join();
        assert!(!fresh.heavy(t0 + ms(5), &c));
        assert_eq!(fresh.last(), None);
    }

    #[test]
    fn another_consumers_load_counts_while_recent_or_being_committed() {
        let c = cadence();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let table = Rc::new(TableLoad::default());
        let (events, custom) = (table.join(), table.join());
        events.gathered(Closed { at: t0, gathered: ms(600), rows: 900 });
        custom.gathered(Closed { at: t0 + ms(1_300), gathered: ms(200), rows: 30 });
        // Closed two intervals ago or less: counted; more: not (it went quiet).
        assert!(custom.heavy(t0 + ms(1_200), &c));
        assert!(!custom.heavy(t0 + ms(1_201), &c));
        // Its claimed, recovered or tried-alone inserts move its interval's clock, not how
        // recent its load is: an old heavy load stays uncounted.
        events.inserted_other(t0 + ms(5_000));
        assert_eq!(events.last().map(|l| l.at), Some(t0 + ms(5_000)));
        assert!(!custom.heavy(t0 + ms(5_001), &c));
        // While it commits a batch it gathered, its load counts however long that takes
        // (a slow ClickHouse), and no longer once the commit ends.
        let held = events.hold();
        assert!(custom.heavy(t0 + ms(10_000), &c));
        drop(held);
        assert!(!custom.heavy(t0 + ms(10_000), &c));
    }
}
