//! Whether a Redis connection owes a reply for too long, for `/readyz`.
//!
//! A connection task stamps, in an atomic of its own ([`Overdue`]), the time from which
//! the reply at the head of its pipeline is owed: when it writes a round, and after each
//! reply while more are owed (plus a blocking command's own allowance); it clears it when
//! nothing is owed. Readers compare the stamp with the clock: a reply owed for longer
//! than [`Overdue::threshold`] (a quarter of `redis.reply_timeout_ms`) is overdue, and
//! `/readyz` answers 503 from then on, long before the connection is given up at the
//! reply timeout, and 200 again as soon as Redis answers. The ingest shards' stamps form
//! one [`RedisHealth`] that every shard's `/readyz` and the control thread read: each
//! stamp has one writer and its own cache line, readers only load, no lock. A shard on a
//! Redis Cluster has one connection per primary, each with a stamp of its own; the
//! shard's cluster copies the earliest of them into the shard's stamp every
//! [`MIRROR_EVERY`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often a cluster copies its primaries' stamps into its shard's.
pub const MIRROR_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The process's reference instant for the stamps.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since [`ORIGIN`], plus `extra`, plus 1 (0 means "nothing owed").
fn stamp(extra: Duration) -> u64 {
    let since = ORIGIN.get_or_init(Instant::now).elapsed().saturating_add(extra);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX - 1).saturating_add(1)
}

/// One connection's stamp: since when a reply is owed (0: none).
#[derive(Debug)]
#[repr(align(64))]
pub struct Overdue {
    owed_since: AtomicU64,
    threshold: Duration,
    /// The shard's own readiness to ingest, as its data port's `/readyz` reads it
    /// (connected, every stream's backlog read since): the connection epoch its last
    /// complete backlog reading was made in, or [`NOT_SERVING`]. Set by the shard after
    /// each reading, cleared when its connection goes or a newer epoch begins; read by the
    /// control thread's `/readyz`.
    serving: AtomicU64,
    /// When the shard's last append was refused by Redis (an error reply: out of memory,
    /// a read-only replica, a command the ACL user lacks), as a stamp; 0 once an append
    /// went in since. Written by the shard after each append's outcome, read by both
    /// `/readyz`s: a Redis that answers but takes no writes is not ready either.
    refused_since: AtomicU64,
    /// How long a refusal holds `/readyz` at 503 when no append follows it: the reply
    /// timeout (without traffic, nothing else tells that Redis takes writes again).
    refusal_hold: Duration,
    /// Whether the shard's last backlog reading found a stream at its mark in every
    /// partition, as the shard counts it (`redis::backlog`: the entries it cannot trim,
    /// up to a sample's spacing more than pending and lag, or the whole stream while it
    /// cannot place an old pending entry or the group): its data port answers 503
    /// `backlog_full`. Set after each reading; read by the control thread's `/readyz`,
    /// whose own reading counts pending and lag only.
    backlog_full: AtomicBool,
}

/// [`Overdue`]'s serving epoch when the shard cannot ingest.
const NOT_SERVING: u64 = u64::MAX;

impl Overdue {
    /// A connection whose replies are overdue after a quarter of `reply_timeout`.
    pub fn new(reply_timeout: Duration) -> Overdue {
        Overdue {
            owed_since: AtomicU64::new(0),
            threshold: Self::threshold(reply_timeout),
            serving: AtomicU64::new(NOT_SERVING),
            refused_since: AtomicU64::new(0),
            refusal_hold: reply_timeout,
            backlog_full: AtomicBool::new(false),
        }
    }

    /// The shard's last backlog reading found a stream at its mark in every partition
    /// (`full`), or not.
    pub(crate) fn set_backlog_full(&self, full: bool) {
        if self.backlog_full.load(Ordering::Relaxed) != full {
            self.backlog_full.store(full, Ordering::Relaxed);
        }
    }

    /// The shard can ingest (connected, every stream's backlog read since), as read in
    /// connection epoch `epoch`; `None`: it cannot.
    pub(crate) fn set_serving(&self, epoch: Option<u64>) {
        self.serving.store(epoch.map_or(NOT_SERVING, |e| e.min(NOT_SERVING - 1)), Ordering::Relaxed);
    }

    /// A connection epoch began (a primary of a cluster reconnected, a slot got a new primary): a
    /// reading of an earlier one no longer makes the shard serving. One made in `epoch`
    /// already (the mirror noticing late) still does.
    pub(crate) fn epoch_began(&self, epoch: u64) {
        let _ = self.serving.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
            (e != NOT_SERVING && e != epoch.min(NOT_SERVING - 1)).then_some(NOT_SERVING)
        });
    }

    /// How long a reply may be owed before `/readyz` fails: a quarter of the reply timeout.
    pub fn threshold(reply_timeout: Duration) -> Duration {
        reply_timeout / 4
    }

    /// A reply is owed from now on, plus `allowance` (a blocking read's block).
    pub(crate) fn owed(&self, allowance: Duration) {
        self.owed_since.store(stamp(allowance), Ordering::Relaxed);
    }

    /// Nothing is owed.
    pub(crate) fn settled(&self) {
        self.owed_since.store(0, Ordering::Relaxed);
    }

    /// Takes the earliest of other connections' stamps (a cluster's primaries, each with
    /// a stamp of its own) as this one's: owed since the earliest owes, or nothing.
    pub(crate) fn mirror<'a>(&self, others: impl Iterator<Item = &'a Overdue>) {
        let since = others.map(|o| o.owed_since.load(Ordering::Relaxed)).filter(|s| *s != 0).min();
        self.owed_since.store(since.unwrap_or(0), Ordering::Relaxed);
    }

    /// An append's outcome: `went_in` when Redis took it (or had it: a duplicate, a
    /// replay), else Redis refused it with an error reply. A refusal stamps its time; an
    /// append that goes in clears the stamp (a store only when one is there: the common
    /// path only loads).
    pub(crate) fn append_answered(&self, went_in: bool) {
        if !went_in {
            self.refused_since.store(stamp(Duration::ZERO), Ordering::Relaxed);
        } else if self.refused_since.load(Ordering::Relaxed) != 0 {
            self.refused_since.store(0, Ordering::Relaxed);
        }
    }

    /// How long ago the last append was refused, when no append went in since and it was
    /// within the hold (the reply timeout).
    pub fn refused_for(&self) -> Option<Duration> {
        let since = self.refused_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let ago = Duration::from_millis(stamp(Duration::ZERO).saturating_sub(since));
        (ago <= self.refusal_hold).then_some(ago)
    }

    /// How long the owed reply is past the threshold, if it is.
    pub fn late_by(&self) -> Option<Duration> {
        let since = self.owed_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let owed = Duration::from_millis(stamp(Duration::ZERO).saturating_sub(since));
        (owed > self.threshold).then_some(owed)
    }
}

/// The ingest shards' connections, by shard.
#[derive(Debug)]
pub struct RedisHealth {
    shards: Vec<Arc<Overdue>>,
}

impl RedisHealth {
    /// One stamp per shard.
    pub fn new(shards: usize, reply_timeout: Duration) -> Arc<RedisHealth> {
        Arc::new(RedisHealth { shards: (0..shards).map(|_| Arc::new(Overdue::new(reply_timeout))).collect() })
    }

    /// Shard `id`'s stamp, for its connection (a fresh one past the table).
    pub fn shard(&self, id: usize, reply_timeout: Duration) -> Arc<Overdue> {
        self.shards.get(id).cloned().unwrap_or_else(|| Arc::new(Overdue::new(reply_timeout)))
    }

    /// Shard `id`'s appends were answered: `went_in`, or refused by Redis.
    pub fn append_answered(&self, id: usize, went_in: bool) {
        if let Some(o) = self.shards.get(id) {
            o.append_answered(went_in);
        }
    }

    /// The first shard whose appends Redis refuses (the last one refused within the reply
    /// timeout, none taken since), and how long ago it was refused.
    pub fn refusing(&self) -> Option<(usize, Duration)> {
        self.shards.iter().enumerate().find_map(|(i, o)| o.refused_for().map(|d| (i, d)))
    }

    /// The shard whose reply is overdue the longest, and how long it has been owed.
    pub fn overdue(&self) -> Option<(usize, Duration)> {
        self.shards.iter().enumerate().filter_map(|(i, o)| o.late_by().map(|d| (i, d))).max_by_key(|(_, d)| *d)
    }

    /// The first serving shard whose last backlog reading found a stream at its mark in
    /// every partition (its data port refuses that stream's requests, 503 `backlog_full`).
    pub fn backlog_full(&self) -> Option<usize> {
        self.shards
            .iter()
            .position(|o| o.serving.load(Ordering::Relaxed) != NOT_SERVING && o.backlog_full.load(Ordering::Relaxed))
    }

    /// The first shard that cannot ingest yet (not connected, or its streams not read
    /// since it connected): its data port's `/readyz` is 503 too.
    pub fn not_serving(&self) -> Option<usize> {
        self.shards.iter().position(|o| o.serving.load(Ordering::Relaxed) == NOT_SERVING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_overdue_past_a_quarter_of_the_timeout() {
        let o = Overdue::new(Duration::from_millis(200));
        assert_eq!(o.late_by(), None);
        o.owed(Duration::ZERO);
        assert_eq!(o.late_by(), None, "just written");
        std::thread::sleep(Duration::from_millis(80));
        assert!(o.late_by().is_some_and(|d| d >= Duration::from_millis(51)));
        o.owed(Duration::from_secs(5));
        assert_eq!(o.late_by(), None, "a blocking read's allowance");
        o.settled();
        assert_eq!(o.late_by(), None);
    }

    /// A shard serves from a complete reading until its connection goes or a newer epoch
    /// begins; the cluster's mirror noticing the reading's own epoch late changes nothing.
    #[test]
    fn serving_holds_for_the_epoch_it_was_read_in() {
        let h = RedisHealth::new(2, Duration::from_millis(200));
        let (a, b) = (h.shard(0, Duration::ZERO), h.shard(1, Duration::ZERO));
        assert_eq!(h.not_serving(), Some(0), "nothing read yet");
        a.set_serving(Some(3));
        b.set_serving(Some(7));
        assert_eq!(h.not_serving(), None);
        a.epoch_began(3);
        assert_eq!(h.not_serving(), None, "read in the epoch that began");
        a.epoch_began(4);
        assert_eq!(h.not_serving(), Some(0), "read in an earlier epoch");
        a.epoch_began(5);
        assert_eq!(h.not_serving(), Some(0));
        a.set_serving(Some(5));
        assert_eq!(h.not_serving(), None);
        b.set_serving(None);
        assert_eq!(h.not_serving(), Some(1));
    }

    #[test]
    fn a_refused_append_holds_until_one_goes_in_or_the_hold_runs_out() {
        let h = RedisHealth::new(2, Duration::from_millis(400));
        assert_eq!(h.refusing(), None);
        h.append_answered(1, false);
        assert_eq!(h.refusing().map(|(i, _)| i), Some(1));
        h.append_answered(0, true);
        assert_eq!(h.refusing().map(|(i, _)| i), Some(1), "another shard's append went in");
        h.append_answered(1, true);
        assert_eq!(h.refusing(), None, "one went in");
        h.append_answered(0, false);
        std::thread::sleep(Duration::from_millis(300));
        h.append_answered(0, false);
        // Past the first refusal's hold, within the latest's (a sleep may overshoot by
        // up to 200 ms here).
        std::thread::sleep(Duration::from_millis(200));
        assert!(h.refusing().is_some(), "the hold counts from the latest refusal");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(h.refusing(), None, "no append since, and the hold ran out");
        h.append_answered(7, false);
        assert_eq!(h.refusing(), None, "a shard past the table");
    }

    #[test]
    fn a_mirror_is_owed_since_the_earliest_of_its_connections() {
        let (a, b, shard) = (
            Overdue::new(Duration::from_millis(200)),
            Overdue::new(Duration::from_millis(200)),
            Overdue::new(Duration::from_millis(200)),
        );
        a.owed(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(80));
        b.owed(Duration::ZERO);
        shard.mirror([&a, &b].into_iter());
        assert!(shard.late_by().is_some_and(|d| d >= Duration::from_millis(51)), "a's reply is late");
        a.settled();
        shard.mirror([&a, &b].into_iter());
        assert_eq!(shard.late_by(), None, "b's is not yet");
        b.settled();
        shard.mirror([&a, &b].into_iter());
        assert_eq!(shard.owed_since.load(Ordering::Relaxed), 0);
    }
}
