//! The consumer group's backlog per stream, as one shard sees it, and where the stream
//! may be trimmed.
//!
//! Every `backlog_poll_ms` the shard reads each stream's group (`XINFO GROUPS`: last
//! delivered id, entries read, lag), its oldest pending entry (`XPENDING` summary) and
//! `XLEN`, and adds the entries it appended itself since that reading. A lag is never
//! counted above `XLEN`, and is 0 when the group delivered the stream's newest entry,
//! whatever Redis says (its `entries-read` can be wrong after a failover; the shard then
//! repairs it, see `CAUGHT_UP`).
//!
//! **Nothing unacknowledged is ever trimmed.** Entries are trimmed with `XADD MINID ~ T`,
//! and `T` is never above `S` = min(oldest pending id, last delivered id): every entry
//! below `S` was delivered (it is not above the last delivered id) and acknowledged (it is
//! below the oldest pending one). `S` moves back only when the group is moved back (an
//! operator's `XGROUP SETID` to an older id, or the group re-created): every reading, also
//! one that keeps the last figures, takes `T` no higher than the `S` it read, so a `T`
//! read earlier stays safe until the next reading (a group moved back between two
//! readings of the stream is the one window: a poll cycle, see docs/ingest.md).
//!
//! **Acknowledged entries are kept for the retention where possible.** The shard samples
//! the group's position (entries read, last delivered id) over time; an id whose position
//! is at least the retention (in entries) behind the stream's end (entries read + lag)
//! has at least that many entries after it. `T` = min(`S`, the newest such sampled id), or
//! no trimming while no sample is that old. When Redis cannot tell the group's position
//! (a deleted entry lies after it), the shard places it itself: its samples of the
//! group's position and of the stream's end (`entries-added`, last generated id) give a
//! count of entries at or below the group's last delivered id, and the backlog is at most
//! `entries-added` minus that count ([`StreamState::estimate`]). Without such a sample,
//! for a moment after a reading that knew the position, the last `T` and backlog are
//! kept, this shard's appends counted on top ([`HOLD_READINGS`]); longer, `T` = `S`:
//! safety first, retention second.
//!
//! **Memory is bounded by refusing ingest, never by deletion.** The backlog that the mark
//! is compared with is the part of the stream that cannot be trimmed: the lag when
//! nothing is pending, else everything after the newest sample older than the oldest
//! pending entry (a consumer that died holding entries makes it grow until they are
//! claimed), or `XLEN` when the position can be neither told nor placed (past the moment
//! above). With no sample older than the oldest pending entry (a shard just started, or
//! its samples dropped), the lag and the pending entries count while that entry was
//! delivered, and first found so by the shard, less long ago than a worker's insert holds
//! one ([`BacklogSettings::pending_grace`]), else `XLEN`.
//! At the mark ingest answers 503 `backlog_full`.
//!
//! Retention and the mark are configured in events, but Redis counts entries, and how many
//! events an entry holds depends on the traffic: a 100-event request makes one full entry
//! on `analytics:events` and, beside it, one entry of a few events on `analytics:custom`.
//! Each stream's mean events per entry over the recent entries of every shard is kept in
//! `croupier:entry-events`: each shard merges the entries Redis confirmed it appended into
//! it before each reading (nothing per request keeps it), reads it with the backlog, moves
//! its copy by its own appends in between, and converts with it (one event per entry before
//! any entry was ever appended).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::{Config, StreamLimits};
use croupier_protocol::cluster::{self, Partitions};
use croupier_protocol::resp::{self, Frame, GroupInfo};
use croupier_protocol::stream::{merge_means, Appended};
use croupier_protocol::stream::{StreamId, StreamKind, CONSUMER_GROUP, DROP_DAMAGED_MEANS_SCRIPT, ENTRY_EVENTS_WINDOW};

use super::connection::{Epoch, RedisClient};
use super::overdue::Overdue;

/// Per-stream backlog estimate and limits.
#[derive(Debug)]
struct StreamState {
    /// Untrimmable entries at the last reading.
    observed: Cell<u64>,
    /// Entries this shard appended since that reading was requested.
    added: Cell<u64>,
    /// Entries of requests this shard admitted whose transaction is not queued yet
    /// (waiting for their group, `redis::append_group`): part of the backlog the mark is
    /// compared with, not of what a reading counts.
    staged: Cell<u64>,
    /// Whether a reading succeeded since the last connect.
    known: Cell<bool>,
    /// The connection epoch in which the last reading found the key holding another type
    /// (`None` since a reading found a stream, or could not tell): requests appending to
    /// it are refused, and readiness passes over it (the other streams take requests).
    not_a_stream_in: Cell<Option<u64>>,
    /// The connection epoch the last reading was taken in.
    read_in: Cell<u64>,
    /// Mean events per entry of the stream: the last reading's; before any reading found
    /// one, this shard's own appends' (`None` before any entry: one event per entry is
    /// assumed).
    per_entry: Cell<Option<f64>>,
    /// Whether a reading found the stream's mean (every shard's appends), which this
    /// shard's own appends then no longer move: at high rates a shard appends hundreds of
    /// entries between readings, and moved by them the copy would be its own mean again.
    mean_read: Cell<bool>,
    /// Entries and events this shard appended to the stream since it last merged them into
    /// the mean ([`merge_entry_events`]; [`Backlog::appended`]).
    unmerged: Cell<(u64, u64)>,
    /// The oldest pending entry with no sample older than it, and when a reading first
    /// found it so ([`BacklogSettings::pending_grace`]).
    unplaced_since: Cell<Option<(StreamId, Instant)>>,
    /// Retention and mark, in events.
    limits: StreamLimits,
    /// [`BacklogSettings::pending_grace`].
    pending_grace: Duration,
    /// `MINID` to trim with (`0-0`: none).
    trim: Cell<StreamId>,
    /// The group's position over time: (entries read, last delivered id), oldest first.
    samples: RefCell<VecDeque<(u64, StreamId)>>,
    /// Whether a reading since the last connect knew the group's position.
    positioned: Cell<bool>,
    /// Readings in a row, since, that did not ([`HOLD_READINGS`]).
    unknown_for: Cell<u32>,
    /// The stream's end over time: (entries added, last generated id), oldest first, read
    /// by [`CAUGHT_UP`] whenever the group was behind or its position unknown. Entry
    /// number `n` of the stream has an id at or below the sample's id when `n` is at most
    /// its count, so these place the group's last delivered id in the stream's numbering
    /// when Redis cannot ([`StreamState::estimate`]).
    ends: RefCell<VecDeque<(u64, StreamId)>>,
    /// The connection epoch of the last repair of the group's position ([`CAUGHT_UP`]):
    /// a drift of `entries-read` comes with a failover or a restart, which is a new
    /// connection, so only the first repair on a connection may renumber.
    repaired_in: Cell<Option<u64>>,
}

/// Readings in a row (about 2 s at the default `redis.backlog_poll_ms`) that keep the last
/// known backlog and trim point (the point never above the reading's `S`) while neither
/// Redis nor the samples can tell the group's position, counting this shard's appends on
/// top: a duplicate's or a replay's append that the ingest script took back leaves a
/// deleted entry beyond the group's position, and Redis knows the position again as soon
/// as the group has delivered the stream's last entry, which a worker keeping up does
/// every insert. Past them, the whole stream counts.
const HOLD_READINGS: u32 = 20;

/// Samples kept per stream.
const MAX_SAMPLES: usize = 64;

/// One reading of a stream.
#[derive(Debug, Clone, Copy)]
struct Reading {
    group: GroupInfo,
    oldest_pending: Option<StreamId>,
    /// How long ago the oldest pending entry was last delivered.
    pending_idle: Duration,
    /// When the reading was taken.
    at: Instant,
    xlen: u64,
    /// When the group has delivered the stream's newest entry (its last delivered id is
    /// the stream's last generated id): the stream's `entries-added`, which the group's
    /// `entries-read` now holds.
    caught_up: Option<u64>,
    /// The group's `entries-read` was set to `entries-added` by this reading (a repair,
    /// not a group that simply caught up since its `XINFO GROUPS`).
    repair: Repair,
    /// The connection epoch the reading was taken in.
    epoch: u64,
    /// The stream's `entries-added` and last generated id, when [`CAUGHT_UP`] read them.
    end: Option<(u64, StreamId)>,
}

/// What [`CAUGHT_UP`] did to the group's `entries-read`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Repair {
    /// Nothing: it was right.
    #[default]
    None,
    /// Raised by this many: the entries added after the group's position and deleted
    /// since (a duplicate's or a replay's appends, taken back), or a drift.
    By(u64),
    /// Set from an unknown value: Redis stops counting the group's reads while a deleted
    /// entry lies after its position (a duplicate taken back while the group had entries
    /// left to read), and the group is then moved past it. The samples were taken while it
    /// counted, in the stream's own numbering (`entries-added`), which the group's position
    /// is now in again.
    Unknown,
    /// Set from a larger value, or the group re-created: the numbering changed.
    Renumbered,
}

impl StreamState {
    /// `events` in entries of the measured size (at least one).
    fn entries(&self, events: u64) -> u64 {
        ((events as f64 / self.per_entry.get().unwrap_or(1.0)).ceil() as u64).max(1)
    }

    fn backlog(&self) -> u64 {
        self.observed.get() + self.added.get()
    }

    /// The backlog, with the entries staged but not yet queued: what admission compares
    /// with the mark.
    fn admitted(&self) -> u64 {
        self.backlog() + self.staged.get()
    }

    /// Nothing read can be trusted any more (no connection, a reconnect, a failed reading).
    /// The samples of the stream's end go too, and the group's own place it no more until
    /// a reading on the new connection knows its position: another server (after a
    /// restart or a failover) may number the stream otherwise. The group's samples stay
    /// for trimming (a reading that finds the group's count below them drops them; the
    /// trim point stays at most `S` whatever they say): dropping them at every reconnect
    /// would stop trimming for a whole retention each time, for good under a flapping
    /// connection.
    fn forget_position(&self) {
        self.known.set(false);
        self.positioned.set(false);
        self.unknown_for.set(0);
        self.ends.borrow_mut().clear();
    }

    /// A sample's spacing, in entries: a sixteenth of the retention or the mark, but no
    /// less than a 48th of the retention, so that the [`MAX_SAMPLES`] kept always reach a
    /// retention back (with a mark below a quarter of the retention they did not, and
    /// nothing was ever trimmed).
    fn spacing(&self) -> u64 {
        let retention = self.entries(self.limits.retention_events);
        let finest = retention.min(self.entries(self.limits.high_water_events)) / 16;
        finest.max(retention / 48).max(1)
    }

    /// Drops every sample and what was known of the group's position: the stream or the
    /// group is numbered anew.
    fn renumber(&self) {
        self.samples.borrow_mut().clear();
        self.ends.borrow_mut().clear();
        self.positioned.set(false);
    }

    /// Keeps the stream's end read by `r`, a sample's spacing after the last one kept.
    fn sample_end(&self, r: &Reading) {
        let Some((added, last)) = r.end else { return };
        // Fewer entries added than sampled, or an older last id: the stream was deleted and
        // made anew. A group that read more than the stream ever added: its `entries-read`
        // drifted or was set high, and its samples count in another numbering.
        let anew = self.ends.borrow().back().is_some_and(|(n, id)| *n > added || *id > last)
            || self.samples.borrow().back().is_some_and(|(n, _)| *n > added)
            || r.group.entries_read.is_some_and(|n| n > added);
        if anew {
            self.renumber();
        }
        let mut ends = self.ends.borrow_mut();
        if ends.back().is_none_or(|(n, _)| added >= n.saturating_add(self.spacing())) {
            ends.push_back((added, last));
            if ends.len() > MAX_SAMPLES {
                ends.pop_front();
            }
        }
    }

    /// The backlog and trim point when Redis cannot tell the group's position (a deleted
    /// entry lies after it), from the stream's `entries-added` and the sampled positions
    /// (the group's and the stream end's): the group has read at least as many entries
    /// as the newest sample at or below its last delivered id, so what it still owes is at
    /// most `entries-added` minus that sample's count (more by the entries deleted since
    /// and by at most a sample's spacing and the entries added between two readings). The
    /// group's own samples count only while a reading on this connection knew its position
    /// (every sample is dropped with the connection). `None` when this
    /// reading did not read the stream's end or no sample lies at or below the group's
    /// position.
    fn estimate(&self, r: &Reading) -> Option<(u64, StreamId)> {
        let (added, _) = r.end?;
        let no_samples = VecDeque::new();
        let samples = self.samples.borrow();
        let samples = if self.positioned.get() { &*samples } else { &no_samples };
        let ends = self.ends.borrow();
        // The count of the newest sample of either kind whose id passes `below`.
        let count_below = |below: &dyn Fn(StreamId) -> bool| {
            let newest = |v: &VecDeque<(u64, StreamId)>| v.iter().rev().find(|(_, id)| below(*id)).map(|(n, _)| *n);
            newest(samples).max(newest(&ends))
        };
        let last = r.group.last_delivered.unwrap_or(StreamId::ZERO);
        let read = count_below(&|id| id <= last)?;
        if read > added {
            return None;
        }
        let untrimmable = match r.oldest_pending {
            None => added - read,
            Some(p) => count_below(&|id| id < p).map_or(r.xlen, |n| added.saturating_sub(n)),
        };
        let retention = self.entries(self.limits.retention_events);
        let kept = samples
            .iter()
            .chain(ends.iter())
            .filter(|(n, _)| added.saturating_sub(*n) >= retention)
            .map(|(_, id)| *id)
            .max()
            .unwrap_or(StreamId::ZERO);
        Some((untrimmable.min(r.xlen), kept))
    }

    /// Whether the oldest pending entry `p`, with no sample older than it, is still within
    /// the time a worker's insert holds an entry: delivered less long ago (Redis's idle
    /// time, which a shard started again does not start again) and first found so by this
    /// shard less long ago (which a worker keeping a stalled batch, `XCLAIM … JUSTID`,
    /// does not start again).
    fn pending_in_grace(&self, p: StreamId, r: &Reading) -> bool {
        let since = match self.unplaced_since.get() {
            Some((q, since)) if q == p => since,
            _ => {
                self.unplaced_since.set(Some((p, r.at)));
                r.at
            }
        };
        let held = r.at.saturating_duration_since(since);
        r.pending_idle < self.pending_grace && held < self.pending_grace
    }

    /// Takes a reading: the untrimmable backlog and the trim point. `false` when it kept
    /// the last ones ([`HOLD_READINGS`]): the appends counted before it was asked for are
    /// not in them, and stay counted. Whatever it keeps or finds, the trim point leaves it
    /// no higher than the reading's `S`, below every entry still owed to the group.
    fn assess(&self, r: &Reading) -> bool {
        let taken = self.take(r);
        self.trim.set(self.trim.get().min(r.safe()));
        taken
    }

    /// [`StreamState::assess`] but for bounding the trim point by `S`.
    fn take(&self, r: &Reading) -> bool {
        let g = &r.group;
        // The group re-created (Redis lost it) or its count above the stream's: nothing
        // sampled before is in its numbering.
        if r.repair == Repair::Renumbered {
            self.renumber();
        }
        // Caught up, the group is at the stream's last generated id when the script read
        // `entries-added` (it moved the group there): the sample's id, not the last
        // delivered id read before, which a worker may have moved on since.
        let last = match (r.caught_up, r.end) {
            (Some(_), Some((_, id))) => id,
            _ => g.last_delivered.unwrap_or(StreamId::ZERO),
        };
        // A group that has delivered nothing has read nothing.
        let read = g.entries_read.or((last == StreamId::ZERO).then_some(0));
        // Redis's lag is `entries-added` − `entries-read`, and `entries-read` is not always
        // carried consistently to a replica (after a failover it can be far behind): a group
        // that delivered the newest entry owes nothing, and no group owes more entries than
        // the stream holds.
        let (read, lag) = match r.caught_up {
            Some(added) => (Some(added), Some(0)),
            None => (read, g.lag.map(|lag| lag.min(r.xlen))),
        };
        self.sample_end(r);
        let (Some(read), Some(lag)) = (read, lag) else {
            let unknown = self.unknown_for.get().saturating_add(1);
            self.unknown_for.set(unknown);
            if let Some((untrimmable, trim)) = self.estimate(r) {
                self.observed.set(untrimmable);
                self.trim.set(trim);
                return true;
            }
            if self.positioned.get() && unknown <= HOLD_READINGS {
                // The backlog is held; the trim point too, but no higher than `S`: the
                // group may have been moved back (`XGROUP SETID`) or re-created since.
                return false;
            }
            self.observed.set(r.xlen);
            self.trim.set(r.safe());
            return true;
        };
        self.positioned.set(true);
        self.unknown_for.set(0);
        let end = read.saturating_add(lag);
        let retention = self.entries(self.limits.retention_events);
        let spacing = self.spacing();
        let mut samples = self.samples.borrow_mut();
        // The stream or the group was recreated, or the group's position was repaired by
        // more than a sample's spacing on a new connection (a drift after a failover or a
        // restart): older samples count in another numbering. Any other repair keeps them:
        // by entries taken back (counted by `entries-added` but never read, however many
        // duplicates came between two readings), or from a count Redis had stopped
        // keeping; they are in the stream's numbering. (Should a drifted count have been
        // sampled and then stopped, the retention kept is short by the drift until those
        // samples age out; nothing is trimmed above `S` either way.) Clearing them at
        // duplicates would stop trimming for a whole retention each time.
        let first_repair = self.repaired_in.get() != Some(r.epoch);
        let renumbered = match r.repair {
            Repair::None | Repair::Unknown => false,
            Repair::By(d) => d > spacing && first_repair,
            Repair::Renumbered => true,
        };
        if r.repair != Repair::None {
            self.repaired_in.set(Some(r.epoch));
        }
        if samples.back().is_some_and(|(pos, _)| *pos > read) || renumbered {
            samples.clear();
        }
        if samples.back().is_none_or(|(pos, id)| read >= pos.saturating_add(spacing) && last > *id) {
            samples.push_back((read, last));
            if samples.len() > MAX_SAMPLES {
                samples.pop_front();
            }
        }
        // The newest sample older than the oldest pending entry, if any.
        let placing = r.oldest_pending.map(|p| (p, samples.iter().rev().find(|(_, id)| *id < p).map(|(pos, _)| *pos)));
        let untrimmable = match placing {
            None => lag,
            Some((_, Some(pos))) => end.saturating_sub(pos),
            // No sample older than the oldest pending entry (the shard just started, or the
            // samples were dropped): while that entry is no older than a worker's insert
            // holds one, what is owed and what is pending; older (a consumer died holding
            // it), the whole stream, so that memory stays bounded (Redis's idle time: a
            // shard started again does not start it again).
            Some((p, None)) if self.pending_in_grace(p, r) => lag.saturating_add(g.pending).min(r.xlen),
            Some((_, None)) => r.xlen,
        };
        if !matches!(placing, Some((_, None))) {
            self.unplaced_since.set(None);
        }
        self.observed.set(untrimmable);
        let kept = samples.iter().rev().find(|(pos, _)| end.saturating_sub(*pos) >= retention);
        self.trim.set(kept.map_or(StreamId::ZERO, |(_, id)| *id));
        true
    }
}

impl Reading {
    /// `S`: min(oldest pending id, last delivered id), below every entry still owed to
    /// the group.
    fn safe(&self) -> StreamId {
        let last = self.group.last_delivered.unwrap_or(StreamId::ZERO);
        self.oldest_pending.map_or(last, |p| p.min(last))
    }
}

/// What a shard's [`Backlog`] is set up with.
#[derive(Debug, Clone, Copy)]
pub struct BacklogSettings {
    /// Retention and mark of `StreamKind::ALL[i]` in one partition.
    pub limits: [StreamLimits; 3],
    /// How long a worker's insert may hold an entry pending: with no sampled position
    /// older than the oldest pending entry, the lag and the pending entries count as the
    /// backlog while that entry was delivered less long ago; past it, the whole stream.
    pub pending_grace: Duration,
    /// The time over which the streams' mean events per entry mixes every shard's appends
    /// (`croupier_protocol::stream::MERGE_MEANS_SCRIPT`).
    pub mean_window: Duration,
}

impl BacklogSettings {
    /// From the configuration: the partition's limits;
    /// `worker.insert_interval_ms` + `worker.linger_ms` (how long a batch's first entries
    /// wait, pending, before their insert) + `worker.backoff_max_ms` (how long a worker
    /// whose insert or acknowledgement failed, say across a Redis failover, waits before it
    /// tries the batch again, holding it) + [`INSERT_MARGIN`] for the insert itself; and
    /// [`MEAN_WINDOW_READINGS`] backlog readings.
    pub fn from_config(config: &Config) -> BacklogSettings {
        let w = &config.worker;
        let held = w.insert_interval_ms.saturating_add(w.linger_ms).saturating_add(w.backoff_max_ms);
        let poll = Duration::from_millis(config.redis.backlog_poll_ms.max(1));
        BacklogSettings {
            limits: config.streams.partition_limits(),
            pending_grace: Duration::from_millis(held).saturating_add(INSERT_MARGIN),
            mean_window: poll.saturating_mul(MEAN_WINDOW_READINGS),
        }
    }
}

/// The mean events per entry covers the appends of every shard over this many times
/// `redis.backlog_poll_ms` (each shard merges its own with each reading): 2 s at the
/// default 100 ms.
const MEAN_WINDOW_READINGS: u32 = 20;

/// The time an insert takes on top of a batch's wait, in [`BacklogSettings::pending_grace`].
const INSERT_MARGIN: Duration = Duration::from_secs(2);

/// Whether a stream takes more entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Below the high-water mark.
    Open,
    /// At or above it.
    Full,
    /// Not known: Redis is unreachable or has not been read since the last connect.
    Unknown,
}

/// The shard's view of the three streams' backlogs, per partition (`streams.partitions`:
/// each partition has its own reading, trim point and mark, the stream's divided by the
/// partitions).
#[derive(Debug)]
pub struct Backlog {
    /// Per partition, per stream in [`StreamKind::ALL`] order.
    streams: Vec<[StreamState; 3]>,
    partitions: Partitions,
    /// The Redis connection's epoch: a reading from an earlier connection is unknown.
    epoch: Epoch,
    /// [`BacklogSettings::mean_window`].
    mean_window: Duration,
    /// The connection epoch in which the partition count was last written to
    /// `croupier:partitions` ([`Backlog::announce_layout`]).
    announced_in: Cell<Option<u64>>,
}

impl Backlog {
    /// A shard's backlogs of `partitions`' streams, read on the connection of `epoch`.
    pub fn new(settings: BacklogSettings, epoch: Epoch, partitions: Partitions) -> Rc<Backlog> {
        let BacklogSettings { limits, pending_grace, mean_window } = settings;
        let state = |limits| StreamState {
            observed: Cell::new(0),
            added: Cell::new(0),
            staged: Cell::new(0),
            known: Cell::new(false),
            not_a_stream_in: Cell::new(None),
            read_in: Cell::new(0),
            per_entry: Cell::new(None),
            mean_read: Cell::new(false),
            unmerged: Cell::new((0, 0)),
            unplaced_since: Cell::new(None),
            limits,
            pending_grace,
            trim: Cell::new(StreamId::ZERO),
            samples: RefCell::new(VecDeque::new()),
            positioned: Cell::new(false),
            unknown_for: Cell::new(0),
            ends: RefCell::new(VecDeque::new()),
            repaired_in: Cell::new(None),
        };
        let streams = (0..partitions.len()).map(|_| limits.map(state)).collect();
        Rc::new(Backlog { epoch, streams, partitions, mean_window, announced_in: Cell::new(None) })
    }

    /// The partitions' key names.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    fn state(&self, p: usize, stream: StreamKind) -> &StreamState {
        let p = p.min(self.streams.len().saturating_sub(1));
        &self.streams[p][stream.index()]
    }

    /// Whether `stream` of partition `p` takes more entries: below its mark, at it, or not
    /// known (Redis unreachable, or not read since the last connect).
    pub fn admission(&self, p: usize, stream: StreamKind) -> Admission {
        let s = self.state(p, stream);
        if !s.known.get() || s.read_in.get() != self.epoch.get() {
            Admission::Unknown
        } else if s.admitted() < s.entries(s.limits.high_water_events) {
            Admission::Open
        } else {
            Admission::Full
        }
    }

    /// Whether `stream` of partition `p` is below its mark (`false` too while not known).
    pub fn admits(&self, p: usize, stream: StreamKind) -> bool {
        self.admission(p, stream) == Admission::Open
    }

    /// [`every_stream_somewhere`] of `f`, passing over the keys the last reading on this
    /// connection found holding another type.
    fn every(&self, f: impl Fn(usize, StreamKind) -> bool) -> bool {
        every_stream_somewhere(self.streams.len(), |p, s| (!self.not_a_stream(p, s)).then(|| f(p, s)))
    }

    /// Whether the last reading on this connection found `stream`'s key of partition `p`
    /// holding another type.
    fn not_a_stream(&self, p: usize, stream: StreamKind) -> bool {
        self.state(p, stream).not_a_stream_in.get() == Some(self.epoch.get())
    }

    /// Whether every stream's backlog has been read since the last connect, in one
    /// partition at least ([`Backlog::every`]).
    pub fn all_known(&self) -> bool {
        self.every(|p, s| self.admission(p, s) != Admission::Unknown)
    }

    /// Whether every stream is below its mark, in one partition at least
    /// ([`Backlog::every`]): a partition at its mark refuses (503 `backlog_full`) only the
    /// requests routed to it.
    pub fn all_admit(&self) -> bool {
        self.every(|p, s| self.admits(p, s))
    }

    /// Records that this shard is appending one entry of `events` records to `stream` of
    /// partition `p` (call before queueing the command), and returns the `MINID ~` to
    /// send with it.
    #[cfg(test)]
    pub fn added(&self, p: usize, stream: StreamKind, events: usize) -> StreamId {
        self.count_added(p, stream, events);
        self.trim_point(p, stream)
    }

    /// The `MINID ~` to send with an append to `stream` of partition `p`. One read
    /// earlier stays safe to send later: the point never moves back past what the group
    /// acknowledged.
    pub fn trim_point(&self, p: usize, stream: StreamKind) -> StreamId {
        self.state(p, stream).trim.get()
    }

    /// Records that this shard is appending one entry of `events` records to `stream` of
    /// partition `p`: call right before queueing the command that appends it.
    pub fn count_added(&self, p: usize, stream: StreamKind, events: usize) {
        let s = self.state(p, stream);
        s.added.set(s.added.get() + 1);
        // Until a reading finds every shard's mean, the shard's own appends make its copy,
        // as they are queued (a later duplicate's, replay's or failure's too).
        if !s.mean_read.get() {
            let n = events.max(1) as f64;
            let m = s.per_entry.get().map_or(n, |m| m + (n - m) / f64::from(ENTRY_EVENTS_WINDOW));
            s.per_entry.set(Some(m.max(1.0)));
        }
    }

    /// Records that this shard admitted an entry to `stream` of partition `p` whose
    /// transaction waits to be queued: admission counts it until [`Backlog::unstage`].
    pub fn stage(&self, p: usize, stream: StreamKind) {
        let s = self.state(p, stream);
        s.staged.set(s.staged.get() + 1);
    }

    /// An entry [`Backlog::stage`] recorded is queued now (and counted by
    /// [`Backlog::count_added`]), or never will be.
    pub fn unstage(&self, p: usize, stream: StreamKind) {
        let s = self.state(p, stream);
        s.staged.set(s.staged.get().saturating_sub(1));
    }

    /// Records that Redis confirmed this shard's append of one entry of `events` records to
    /// `stream` of partition `p`, to be merged into the streams' mean events per entry
    /// with the next reading (a duplicate's or a replay's append, taken back, is not).
    pub fn appended(&self, p: usize, stream: StreamKind, events: usize) {
        let s = self.state(p, stream);
        let (k, sum) = s.unmerged.get();
        s.unmerged.set((k.saturating_add(1), sum.saturating_add(events.max(1) as u64)));
    }

    /// Reads the backlogs every `every`, forever (spawned once per shard), and after each
    /// reading says in `serving` whether the shard can ingest and whether a stream is at
    /// its mark as this shard counts it (the control port's `/readyz` reads both).
    pub async fn poll(self: Rc<Self>, redis: RedisClient, every: Duration, serving: Arc<Overdue>) {
        loop {
            self.announce_layout(&redis).await;
            for p in 0..self.streams.len() {
                self.read_partition(&redis, p).await;
            }
            // The epoch the reading was made in (`all_known` holds only for the current one).
            let known = redis.is_up() && self.all_known();
            serving.set_serving(known.then(|| self.epoch.get()));
            serving.set_backlog_full(known && !self.all_admit());
            monoio::time::sleep(every).await;
        }
    }

    /// Writes this shard's partition count to `croupier:partitions` once per connection,
    /// so that workers configured with another count still drain these streams
    /// (`croupier_protocol::cluster::LAYOUTS`). A refusal (an ACL without `ZADD` on
    /// `croupier:*`) is logged and not retried before the next connection.
    async fn announce_layout(&self, redis: &RedisClient) {
        let epoch = self.epoch.get();
        if !redis.is_up() || self.announced_in.get() == Some(epoch) {
            return;
        }
        let mut cmd = Vec::with_capacity(64);
        let n = u16::try_from(self.partitions.len()).unwrap_or(u16::MAX);
        cluster::announce_layout(&mut cmd, n, crate::ingest::now_ms().max(0) as u64);
        match redis.call(cmd).await {
            Ok(Frame::Integer(_)) => self.announced_in.set(Some(epoch)),
            Ok(other) => {
                self.announced_in.set(Some(epoch));
                if !super::auth::recently_logged("partitions not announced".to_owned()) {
                    tracing::warn!(
                        key = cluster::LAYOUTS,
                        reply = ?other,
                        "the partition count could not be written: a worker configured with another \
                         streams.partitions would not drain these streams (logged at most every 10 s)"
                    );
                }
            }
            Err(_) => {}
        }
    }

    async fn read_partition(&self, redis: &RedisClient, p: usize) {
        let streams = &self.streams[p];
        if redis.is_up() {
            merge_entry_events(redis, &self.partitions, p, self.mean_window, streams).await;
        }
        if redis.is_up() {
            if let Some(means) = read_entry_events(redis, &self.partitions, p).await {
                for (s, mean) in streams.iter().zip(means) {
                    if let Some(m) = mean {
                        s.per_entry.set(Some(m.max(1.0)));
                        s.mean_read.set(true);
                    }
                }
            }
        }
        for kind in StreamKind::ALL {
            let s = &streams[kind.index()];
            if !redis.is_up() {
                s.forget_position();
                continue;
            }
            let added_before = s.added.get();
            let epoch = self.epoch.get();
            // The connection was replaced since the last reading (a restart or a failover
            // can fall between two readings): nothing read on the old one holds.
            if s.read_in.get() != epoch {
                s.forget_position();
            }
            let key = self.partitions.stream(p, kind);
            let read = read_backlog(redis, key, epoch).await;
            let not_a_stream = read.as_ref().err() == Some(&Unread::NotAStream);
            if not_a_stream {
                super::connection::warn_not_a_stream(key, None);
            }
            s.not_a_stream_in.set(not_a_stream.then_some(epoch));
            match read {
                // A reading that spans a reconnect is not trusted.
                Ok(_) if self.epoch.get() != epoch => s.forget_position(),
                Ok(reading) => {
                    if s.assess(&reading) {
                        s.added.set(s.added.get() - added_before);
                    }
                    s.read_in.set(epoch);
                    s.known.set(true);
                }
                Err(_) => s.forget_position(),
            }
        }
    }
}

/// Whether every stream (events, custom, payments) takes requests somewhere, the rule of
/// readiness on both ports: for each, `state` is `Some(true)` in at least one of
/// `partitions` partitions. `state` is `None` for a stream passed over: its key holds
/// another type, or its partition could not be read. Only the requests routed to a stream
/// that fails (or is passed over) are refused, so they do not make a node unready: every
/// node sees the same Redis, and a load balancer taking every node out would refuse the
/// other streams' and partitions' requests too. With one partition this is every stream
/// that is not passed over. A partition whose every stream is passed over holds nothing
/// and is left out; none left is `false`.
pub fn every_stream_somewhere(partitions: usize, state: impl Fn(usize, StreamKind) -> Option<bool>) -> bool {
    let live: Vec<usize> =
        (0..partitions).filter(|&p| StreamKind::ALL.iter().any(|s| state(p, *s).is_some())).collect();
    !live.is_empty()
        && StreamKind::ALL.iter().all(|s| {
            let mut known = live.iter().filter_map(|&p| state(p, *s)).peekable();
            known.peek().is_none() || known.any(|ok| ok)
        })
}

/// Merges this shard's appends to partition `p`'s streams since the last merge into their
/// mean events per entry (`croupier_protocol::stream::merge_means`: the streams' entries
/// and events since, added to the hash's decayed sums, whose ratio is the mean of every
/// shard's recent entries). Appends that fail to merge (Redis gone, the key of
/// another type) are merged with the next reading.
async fn merge_entry_events(
    redis: &RedisClient,
    partitions: &Partitions,
    p: usize,
    window: Duration,
    streams: &[StreamState; 3],
) {
    let taken: Vec<(&StreamState, Appended<'_>)> = StreamKind::ALL
        .iter()
        .zip(streams)
        .filter_map(|(k, s)| {
            let (entries, events) = s.unmerged.replace((0, 0));
            (entries > 0).then(|| (s, Appended { stream: partitions.stream(p, *k), entries, events }))
        })
        .collect();
    if taken.is_empty() {
        return;
    }
    let appended: Vec<Appended<'_>> = taken.iter().map(|(_, a)| *a).collect();
    let mut cmd = Vec::with_capacity(512);
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    merge_means(&mut cmd, partitions.entry_events(p), window_ms, &appended);
    if !matches!(redis.call(cmd).await, Ok(Frame::Integer(1))) {
        for (s, a) in taken {
            let (e, n) = s.unmerged.get();
            s.unmerged.set((e.saturating_add(a.entries), n.saturating_add(a.events)));
        }
    }
}

/// Partition `p`'s streams' mean events per entry, in `StreamKind::ALL` order (`None` for
/// a stream nothing was appended to yet). The hash holding another type (nothing of
/// Croupier's writes one: an operator's mistake) is deleted, logged: it holds nothing but
/// these means and their sums, which the next merges make again, and left so no merge
/// could keep them.
async fn read_entry_events(redis: &RedisClient, partitions: &Partitions, p: usize) -> Option<[Option<f64>; 3]> {
    match resp::entry_means(&redis.call(partitions.entry_means_command(p)).await.ok()?) {
        Ok(means) => Some(means),
        Err(e) if e.0.starts_with("WRONGTYPE") => {
            let key = partitions.entry_events(p);
            let drop = [b"EVAL".as_slice(), DROP_DAMAGED_MEANS_SCRIPT.as_bytes(), b"1", key.as_bytes()];
            if call(redis, &drop).await == Some(Frame::Integer(1)) {
                tracing::warn!(
                    key,
                    "the mean entry sizes' key held another type: deleted, made again by the next appends"
                );
            }
            None
        }
        Err(_) => None,
    }
}

async fn call(redis: &RedisClient, args: &[&[u8]]) -> Option<Frame> {
    let mut cmd = Vec::with_capacity(96);
    resp::command(&mut cmd, args);
    match redis.call(cmd).await.ok()? {
        Frame::Error(_) => None,
        f => Some(f),
    }
}

/// Why a stream's backlog could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// The key holds another type (`WRONGTYPE`).
    NotAStream,
    /// Redis did not answer, or answered what cannot be read.
    Failed,
}

async fn read_backlog(redis: &RedisClient, key: &str, epoch: u64) -> Result<Reading, Unread> {
    let at = Instant::now();
    let mut cmd = Vec::with_capacity(64);
    resp::command(&mut cmd, &[b"XINFO", b"GROUPS", key.as_bytes()]);
    let info = redis.call(cmd).await.map_err(|_| Unread::Failed)?;
    if matches!(&info, Frame::Error(e) if e.starts_with("WRONGTYPE")) {
        return Err(Unread::NotAStream);
    }
    read_group(redis, key.as_bytes(), epoch, at, &info).await.ok_or(Unread::Failed)
}

/// The rest of a backlog reading, from the group's `XINFO GROUPS` reply `info`.
async fn read_group(redis: &RedisClient, key: &[u8], epoch: u64, at: Instant, info: &Frame) -> Option<Reading> {
    let group = CONSUMER_GROUP.as_bytes();
    let found = resp::group_info(info, CONSUMER_GROUP).ok()?;
    let xlen = match call(redis, &[b"XLEN", key]).await? {
        Frame::Integer(n) => n.max(0) as u64,
        _ => return None,
    };
    let Some(g) = found else {
        // The group is gone (Redis lost its data): recreate it from the start. Until it
        // is read again, the whole stream counts and nothing is trimmed; the samples were
        // of the group that is gone.
        call(redis, &[b"XGROUP", b"CREATE", key, group, b"0", b"MKSTREAM"]).await;
        return Some(Reading {
            group: GroupInfo::default(),
            oldest_pending: None,
            pending_idle: Duration::ZERO,
            at,
            xlen,
            caught_up: None,
            repair: Repair::Renumbered,
            epoch,
            end: None,
        });
    };
    let (oldest_pending, pending_idle) = if g.pending > 0 {
        let oldest = call(redis, &[b"XPENDING", key, group, b"-", b"+", b"1"]).await?;
        match resp::oldest_pending_entry(&oldest).ok()? {
            Some((id, idle_ms)) => (Some(id), Duration::from_millis(idle_ms)),
            None => (None, Duration::ZERO),
        }
    } else {
        (None, Duration::ZERO)
    };
    // A lag of 0 with a position is believed; any other lag (or none), or no position, is
    // checked against the stream's end.
    let CaughtUp { added, repair, end } = if g.lag == Some(0) && g.entries_read.is_some() {
        CaughtUp { added: None, repair: Repair::None, end: None }
    } else {
        caught_up(redis, key).await
    };
    Some(Reading { group: g, oldest_pending, pending_idle, at, xlen, caught_up: added, repair, epoch, end })
}

/// Whether the group has delivered every entry the stream holds, in one script: then
/// every entry added was read or deleted, and the group's `entries-read` is set to the
/// stream's `entries-added` when it differs (`XGROUP SETID`, to the stream's last
/// generated id), so that Redis's own lag is right again. The last generated id may be
/// an entry the ingest script appended and deleted again (a duplicate's or a replay's,
/// docs/ingest.md): no entry after what the group delivered is caught up too, and the
/// group is moved past that deleted id (nothing lies in between, and the script runs
/// whole). Returns `{entries-added, what it raised entries-read by, last generated id}`
/// when caught up (0: nothing set; -1: set from an unknown value; -2: from a larger one),
/// `{entries-added, -3, last generated id}` when not, and -1 when the stream or the group
/// cannot be read.
const CAUGHT_UP: &str = r"
local function field(t, name)
  for i = 1, #t, 2 do if t[i] == name then return t[i + 1] end end
end
local s = redis.call('XINFO', 'STREAM', KEYS[1])
local last, added = field(s, 'last-generated-id'), field(s, 'entries-added')
if not last or type(added) ~= 'number' then return -1 end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(g, 'name') == ARGV[1] then
    local delivered, read = field(g, 'last-delivered-id'), field(g, 'entries-read')
    if delivered ~= last and #redis.call('XRANGE', KEYS[1], '(' .. delivered, '+', 'COUNT', 1) > 0 then
      return {added, -3, last}
    end
    if delivered == last and read == added then return {added, 0, last} end
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', added)
    if type(read) ~= 'number' then return {added, -1, last} end
    if read < added then return {added, added - read, last} end
    return {added, -2, last}
  end
end
return -1
";

/// [`CAUGHT_UP`]'s answer.
#[derive(Debug, Clone, Copy)]
struct CaughtUp {
    /// `entries-added` when the group is caught up.
    added: Option<u64>,
    /// What the script did to the group's `entries-read`.
    repair: Repair,
    /// The stream's `entries-added` and last generated id, caught up or not.
    end: Option<(u64, StreamId)>,
}

async fn caught_up(redis: &RedisClient, key: &[u8]) -> CaughtUp {
    let reply = call(redis, &[b"EVAL", CAUGHT_UP.as_bytes(), b"1", key, CONSUMER_GROUP.as_bytes()]).await;
    let mut answer = CaughtUp { added: None, repair: Repair::None, end: None };
    let Some(Frame::Array(a)) = reply else { return answer };
    let [Frame::Integer(added), Frame::Integer(by), Frame::BulkString(last)] = a.as_slice() else { return answer };
    let (Ok(added), Some(last)) = (u64::try_from(*added), StreamId::parse(last)) else { return answer };
    answer.end = Some((added, last));
    if *by != -3 {
        answer.added = Some(added);
        answer.repair = match *by {
            0 => Repair::None,
            -1 => Repair::Unknown,
            d => u64::try_from(d).map_or(Repair::Renumbered, Repair::By),
        };
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOM: StreamKind = StreamKind::Custom;

    /// Retention 500 events, mark 400 on every stream, backlogs read (empty).
    fn backlog() -> Rc<Backlog> {
        let l = StreamLimits { retention_events: 500, high_water_events: 400 };
        let b = Backlog::new(settings(l), Epoch::default(), Partitions::new(1));
        for s in b.streams.iter().flatten() {
            s.known.set(true);
        }
        b
    }

    /// `l` for each stream, a grace of 3 s for pending entries.
    fn settings(l: StreamLimits) -> BacklogSettings {
        BacklogSettings { limits: [l; 3], pending_grace: Duration::from_secs(3), mean_window: Duration::from_secs(2) }
    }

    fn set_mean(b: &Backlog, stream: StreamKind, mean: f64) {
        b.streams[0][stream.index()].per_entry.set(Some(mean));
    }

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    /// A reading where entry `n` has id `n-0`: the group has read up to entry `read`, the
    /// stream ends at entry `end`, and the oldest pending entry is `pending`.
    fn reading(read: u64, end: u64, pending: Option<u64>, xlen: u64) -> Reading {
        let group = GroupInfo {
            pending: u64::from(pending.is_some()),
            lag: Some(end - read),
            last_delivered: Some(id(read)),
            entries_read: Some(read),
        };
        Reading {
            group,
            oldest_pending: pending.map(id),
            pending_idle: Duration::ZERO,
            at: Instant::now(),
            xlen,
            caught_up: None,
            repair: Repair::None,
            epoch: 1,
            end: None,
        }
    }

    /// `s` read every 25 entries up to entry 1000, the group `behind` entries behind the
    /// stream's end: its positions sampled, retention 500 entries (trim point entry 500).
    fn sampled_to_1000(s: &StreamState, behind: u64, xlen: u64) {
        for read in (0..=1000).step_by(25) {
            s.assess(&reading(read, read + behind, None, xlen));
        }
    }

    /// Mark 60000 events, 1 event per entry in these figures.
    fn events_backlog() -> Rc<Backlog> {
        let l = StreamLimits { retention_events: 100_000, high_water_events: 60_000 };
        let b = Backlog::new(settings(l), Epoch::default(), Partitions::new(1));
        for s in b.streams.iter().flatten() {
            s.known.set(true);
        }
        b
    }

    #[test]
    fn a_group_that_delivered_the_newest_entry_owes_nothing_whatever_its_lag() {
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        // The new primary's group: nothing pending, last delivered = the newest entry,
        // entries-read 7252 where the stream added 16284 (lag 9032), then drifting to a
        // lag of 78246 over more failovers.
        for (lag, read) in [(9_032, 7_252), (30_288, 7_252), (78_246, 7_252)] {
            let mut r = reading(read, read + lag, None, 90_000);
            r.caught_up = Some(16_284);
            s.assess(&r);
            assert_eq!(s.observed.get(), 0, "lag {lag}");
            assert!(b.admits(0, StreamKind::Events));
        }
        // The same lag without the check, but the stream holds only 20000 entries: the
        // backlog is at most those.
        s.assess(&reading(7_252, 7_252 + 78_246, None, 20_000));
        assert_eq!(s.observed.get(), 20_000);
        assert!(b.admits(0, StreamKind::Events));
    }

    #[test]
    fn repairing_the_position_renumbers_the_samples() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        sampled_to_1000(s, 10, 1010);
        assert_eq!(s.trim.get(), id(500));
        // entries-read was 9032 behind: repaired to entries-added, the old samples would
        // put the retention 9032 entries too far back.
        let mut r = reading(1000, 1000, None, 1010);
        r.caught_up = Some(10_032);
        r.repair = Repair::By(9_032);
        s.assess(&r);
        assert_eq!((s.observed.get(), s.trim.get()), (0, StreamId::ZERO));
        // The same from a larger entries-read.
        let s = &b.streams[0][StreamKind::Payments.index()];
        sampled_to_1000(s, 10, 1010);
        r.repair = Repair::Renumbered;
        s.assess(&r);
        assert_eq!((s.observed.get(), s.trim.get()), (0, StreamId::ZERO));
    }

    /// A duplicate's append taken back at the stream's end leaves Redis unable to tell the
    /// lag until the group is moved past it, by one: the samples stay, and trimming goes on
    /// (clearing them at every duplicate left the stream untrimmed for good under a steady
    /// trickle of duplicates).
    #[test]
    fn a_repair_by_a_few_taken_back_entries_keeps_trimming() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        sampled_to_1000(s, 10, 1010);
        assert_eq!(s.trim.get(), id(500));
        for (n, read) in (1025..=3000).step_by(25).enumerate() {
            let mut r = reading(read, read, None, 600);
            if n % 4 == 0 {
                r.caught_up = Some(read + 1);
                r.repair = Repair::By(1);
            } else if n % 4 == 2 {
                // Redis had stopped counting the group's reads.
                r.caught_up = Some(read + 1);
                r.repair = Repair::Unknown;
            }
            s.assess(&r);
            assert!(s.trim.get() >= id(read - 560), "{read}: trim {:?}", s.trim.get());
        }
    }

    /// Many duplicates between two readings (more than a sample's spacing): only the first
    /// such repair on a connection may be a failover's drift and drop the samples; the next
    /// ones keep them, and trimming goes on.
    #[test]
    fn bursts_of_duplicates_drop_the_samples_once_per_connection() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        sampled_to_1000(s, 0, 600);
        let burst = |read: u64, epoch: u64| {
            let mut r = reading(read, read, None, 600);
            r.caught_up = Some(read + 100);
            r.repair = Repair::By(100);
            r.epoch = epoch;
            r
        };
        s.assess(&burst(1000, 1));
        assert_eq!(s.trim.get(), StreamId::ZERO, "the first repair on a connection renumbers");
        for read in (1025..=3000).step_by(25) {
            s.assess(&burst(read, 1));
        }
        assert!(s.trim.get() >= id(3000 - 600), "trim {:?}", s.trim.get());
        // A new connection (a failover): its first large repair renumbers again.
        s.assess(&burst(3025, 2));
        assert_eq!(s.trim.get(), StreamId::ZERO);
    }

    /// The group moved back while its position cannot be told (`XGROUP SETID` to an
    /// older id, or re-created from 0): the held trim point goes no further than `S`, so
    /// no entry the group is owed again is trimmed.
    #[test]
    fn a_held_trim_point_is_never_above_what_the_group_acknowledged() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        sampled_to_1000(s, 10, 1010);
        assert_eq!(s.trim.get(), id(500));
        // Rewound to entry 300: entries-read unknown, nothing pending.
        let mut r = reading(300, 1010, None, 1010);
        r.group.lag = None;
        r.group.entries_read = None;
        assert!(!s.assess(&r), "held");
        assert_eq!(s.trim.get(), id(300));
        // Re-created from 0.
        let mut r = reading(0, 1010, None, 1010);
        r.group.last_delivered = None;
        r.group.lag = None;
        r.group.entries_read = None;
        assert!(!s.assess(&r), "held");
        assert_eq!(s.trim.get(), StreamId::ZERO);
    }

    #[test]
    fn a_group_that_caught_up_since_its_reading_keeps_the_samples() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        sampled_to_1000(s, 10, 1010);
        assert_eq!(s.trim.get(), id(500));
        // Behind by 10 when the groups were read, caught up (nothing repaired) when the
        // script ran: the same numbering, so trimming goes on.
        let mut r = reading(1000, 1010, Some(1005), 1010);
        r.caught_up = Some(1010);
        s.assess(&r);
        assert_eq!(s.trim.get(), id(500));
        assert!(s.observed.get() < 1010, "{}", s.observed.get());
    }

    #[test]
    fn limits_convert_with_the_measured_entry_size() {
        let b = backlog();
        set_mean(&b, CUSTOM, 100.0);
        let s = &b.streams[0][CUSTOM.index()];
        assert_eq!((s.entries(500), s.entries(400)), (5, 4), "full entries");
        set_mean(&b, CUSTOM, 2.0);
        assert_eq!((s.entries(500), s.entries(400)), (250, 200));
    }

    #[test]
    fn sparse_entries_get_the_configured_room_in_events() {
        let b = backlog();
        set_mean(&b, CUSTOM, 2.0);
        let mut accepted = 0;
        while b.admits(0, CUSTOM) {
            b.added(0, CUSTOM, 2);
            accepted += 1;
        }
        assert_eq!(accepted, 200, "400 events of 2 per entry");
        assert!(b.admits(0, StreamKind::Events), "another stream is not held back");
    }

    #[test]
    fn before_any_entry_one_event_per_entry_is_counted() {
        let b = backlog();
        b.streams[0][CUSTOM.index()].observed.set(399);
        assert!(b.admits(0, CUSTOM), "399 entries of unknown size");
        b.added(0, CUSTOM, 1);
        assert!(!b.admits(0, CUSTOM));
    }

    #[test]
    fn own_appends_make_the_measure_until_a_reading_finds_one() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        b.added(0, CUSTOM, 4);
        assert_eq!(s.per_entry.get(), Some(4.0), "the first entry sets it");
        b.added(0, CUSTOM, 68);
        assert_eq!(s.per_entry.get(), Some(5.0), "then 1/64 of each difference");
        // A reading's mean is every shard's: this shard's appends no longer move it.
        s.per_entry.set(Some(50.0));
        s.mean_read.set(true);
        for _ in 0..500 {
            b.added(0, CUSTOM, 1);
        }
        assert_eq!(s.per_entry.get(), Some(50.0));
    }

    #[test]
    fn acknowledged_entries_are_kept_for_the_retention() {
        // One event per entry: retention 500 entries, mark 400, samples every 25.
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        s.assess(&reading(0, 0, None, 0));
        assert_eq!(b.added(0, CUSTOM, 1), StreamId::ZERO, "nothing is trimmed before any sample is old enough");
        for read in (25..=1000).step_by(25) {
            s.assess(&reading(read, read + 10, None, read + 10));
        }
        // The stream ends at 1010: the newest sample at least 500 entries back is 500.
        assert_eq!(s.trim.get(), id(500));
        assert_eq!(s.observed.get(), 10, "nothing pending: the lag is what cannot be trimmed");
    }

    #[test]
    fn c2_nothing_pending_is_ever_trimmed() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        s.assess(&reading(0, 0, None, 0));
        // Entry 3 is pending with a consumer that died; the others keep up.
        for read in (25..=1000).step_by(25) {
            s.assess(&reading(read, read + 10, Some(3), 1010));
        }
        assert!(s.trim.get() <= id(3), "trim point {:?} above a pending entry", s.trim.get());
        // Everything after the newest sample below entry 3 counts: ingest refuses.
        assert_eq!(s.observed.get(), 1010);
        assert!(!b.admits(0, CUSTOM));
        // Claimed and acknowledged: the retention applies again and ingest resumes.
        s.assess(&reading(1025, 1030, None, 1030));
        assert_eq!(s.trim.get(), id(525));
        assert!(b.admits(0, CUSTOM));
    }

    #[test]
    fn unknown_position_trims_only_what_was_acknowledged_and_counts_the_length() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        let mut r = reading(600, 700, Some(550), 690);
        r.group.lag = None;
        assert!(s.assess(&r));
        assert_eq!((s.trim.get(), s.observed.get()), (id(550), 690));
    }

    /// A position Redis cannot tell for a moment, after a known one (a duplicate taken
    /// back under load): the last backlog and trim point are kept, with this shard's
    /// appends since on top, for [`HOLD_READINGS`] readings; then the length counts.
    #[test]
    fn a_moment_without_a_position_keeps_the_last_known_backlog_then_counts_the_length() {
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        for read in (1_000..=50_000).step_by(1_000) {
            assert!(s.assess(&reading(read, read + 50, None, read + 50)));
        }
        let (observed, trim) = (s.observed.get(), s.trim.get());
        assert_eq!(observed, 50);
        // The retained history alone (90000 entries) is above the mark of 60000.
        let mut r = reading(50_100, 50_200, None, 90_000);
        r.group.lag = None;
        r.group.entries_read = None;
        for _ in 0..HOLD_READINGS {
            assert!(!s.assess(&r), "held");
            assert_eq!((s.observed.get(), s.trim.get()), (observed, trim));
            assert!(b.admits(0, StreamKind::Events));
        }
        assert!(s.assess(&r), "held no longer");
        assert_eq!(s.observed.get(), 90_000);
        assert!(!b.admits(0, StreamKind::Events));
        // Known again: counted as usual.
        assert!(s.assess(&reading(50_300, 50_310, None, 90_000)));
        assert_eq!(s.observed.get(), 10);
        // Lost after a reconnect: nothing is held over it.
        s.forget_position();
        assert!(s.assess(&r));
        assert_eq!(s.observed.get(), 90_000);
    }

    /// A shard started under traffic: a worker's insert holds entries pending, and no
    /// sample is older than them. What is owed and pending counts while the oldest pending
    /// entry was delivered less than the grace ago and this shard first found it so less
    /// than the grace ago (counting the stream with its retained history, above the mark,
    /// refused every request until the insert was acknowledged); past either (a consumer
    /// that died holding it, seen from a shard started again, or a stalled batch kept by
    /// its worker, whose `XCLAIM` starts Redis's idle time again), the whole stream counts.
    #[test]
    fn a_shard_started_under_traffic_counts_what_is_owed_and_pending_while_an_insert_holds_them() {
        let t0 = Instant::now();
        let started = |idle_ms: u64, at_ms: u64| {
            let mut r = reading(90_000, 90_050, Some(89_500), 90_050);
            r.group.pending = 500;
            r.pending_idle = Duration::from_millis(idle_ms);
            r.at = t0 + Duration::from_millis(at_ms);
            r
        };
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        for (idle_ms, at_ms) in [(0, 0), (1_000, 1_000), (2_999, 2_999)] {
            assert!(s.assess(&started(idle_ms, at_ms)));
            assert_eq!(s.observed.get(), 550, "delivered {idle_ms} ms ago");
            assert!(s.trim.get() <= id(89_500));
            assert!(b.admits(0, StreamKind::Events));
        }
        assert!(s.assess(&started(3_000, 3_000)));
        assert_eq!(s.observed.get(), 90_050, "pending for longer than an insert: the whole stream");
        assert!(!b.admits(0, StreamKind::Events));
        // A reconnect changes nothing, nor does a shard started anew.
        s.forget_position();
        s.assess(&started(3_100, 3_100));
        assert_eq!(s.observed.get(), 90_050);
        let again = events_backlog();
        let s2 = &again.streams[0][StreamKind::Events.index()];
        s2.assess(&started(3_100, 3_100));
        assert_eq!(s2.observed.get(), 90_050);
        // A worker keeping its stalled batch (Redis's idle time starts again): the shard's
        // own time still runs.
        let kept = events_backlog();
        let s3 = &kept.streams[0][StreamKind::Events.index()];
        for at_ms in (0..3_000).step_by(500) {
            s3.assess(&started(at_ms % 1_000, at_ms));
            assert_eq!(s3.observed.get(), 550, "{at_ms} ms");
        }
        s3.assess(&started(100, 3_000));
        assert_eq!(s3.observed.get(), 90_050);
        // Acknowledged: the lag. The next insert's pending entries lie after a sample, and
        // everything after it counts however long they are pending. (Samples are 3750
        // entries apart.)
        assert!(s.assess(&reading(95_000, 95_050, None, 95_050)));
        assert_eq!(s.observed.get(), 50);
        let mut r = reading(96_000, 96_050, Some(95_500), 96_050);
        r.group.pending = 500;
        r.pending_idle = Duration::from_secs(10);
        assert!(s.assess(&r));
        assert_eq!(s.observed.get(), 1_050, "everything after the sample at entry 95000");
        // Another entry found with no older sample (the samples dropped): its own grace.
        s.renumber();
        let mut r = reading(97_000, 97_050, Some(96_500), 97_050);
        r.group.pending = 500;
        assert!(s.assess(&r));
        assert_eq!(s.observed.get(), 550);
    }

    /// Black-box finding: after a Redis failover a worker whose acknowledgement failed
    /// holds its batch pending through its back-off (5 s); with a grace of the insert's
    /// 2.8 s alone, a shard whose samples were dropped counted the stream whole, at its
    /// retention above the mark, and refused requests for seconds with nothing owed.
    #[test]
    fn the_grace_covers_a_workers_back_off() {
        let mut config = Config::default();
        let grace = |c: &Config| BacklogSettings::from_config(c).pending_grace;
        let w = &config.worker;
        let back_off = Duration::from_millis(w.insert_interval_ms + w.linger_ms + w.backoff_max_ms);
        assert_eq!(grace(&config), back_off + INSERT_MARGIN);
        assert_eq!(grace(&config), Duration::from_millis(7_800), "the defaults");
        config.worker.backoff_max_ms = 1_000;
        assert_eq!(grace(&config), Duration::from_millis(3_800));
    }

    /// A reading that could not tell the group's position, the stream's end read by the
    /// script.
    fn unplaced(delivered: u64, end: u64, pending: Option<u64>, xlen: u64) -> Reading {
        let mut r = reading(delivered, end, pending, xlen);
        r.group.lag = None;
        r.group.entries_read = None;
        r.end = Some((end, id(end)));
        r
    }

    /// A group kept behind a deleted entry for longer than the hold (workers lagging under
    /// load, a duplicate taken back): what it owes is told from the sampled ends of the
    /// stream, a little above the truth, instead of the whole stream with its retained
    /// history, which is above the mark and refused every request until the group caught up.
    #[test]
    fn a_group_behind_a_deleted_entry_is_placed_by_the_sampled_ends_of_the_stream() {
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        // Known and 5000 behind, the stream's end read at every reading.
        for read in (1_000..=50_000).step_by(1_000) {
            let mut r = reading(read, read + 5_000, None, 90_000);
            r.end = Some((read + 5_000, id(read + 5_000)));
            assert!(s.assess(&r));
        }
        assert_eq!(s.observed.get(), 5_000);
        // Then Redis cannot tell the position for many readings while the group goes on
        // 5000 behind: never the whole stream, never below the truth, above it by at most
        // a sample's spacing (3750 entries) and the entries between two readings (1000).
        for delivered in (50_100..=80_000).step_by(100) {
            assert!(s.assess(&unplaced(delivered, delivered + 5_000, None, 90_000)), "not held");
            let owed = s.observed.get();
            assert!((5_000..=5_000 + 3_750 + 1_000).contains(&owed), "{delivered}: {owed}");
            assert!(b.admits(0, StreamKind::Events));
            assert!(s.trim.get() <= id(delivered), "{delivered}: trim {:?}", s.trim.get());
        }
        // Retention: an id at least 100000 entries before the end is trimmed to, no later.
        s.assess(&unplaced(120_000, 125_000, None, 110_000));
        let trim = s.trim.get();
        assert!(trim > StreamId::ZERO && trim <= id(25_000), "trim {trim:?}");
        // A pending entry: everything after the newest sample before it counts.
        s.assess(&unplaced(120_000, 125_000, Some(60_500), 110_000));
        assert!((64_500..=64_500 + 3_750 + 1_000).contains(&s.observed.get()), "{}", s.observed.get());
        assert!(s.trim.get() < id(60_500));
        // The group stuck while the stream grows past the mark: refused.
        s.assess(&unplaced(120_000, 181_000, None, 140_000));
        assert!(s.observed.get() >= 61_000, "{}", s.observed.get());
        assert!(!b.admits(0, StreamKind::Events));
    }

    /// Known and 5000 behind up to entry 50000, the stream's end read at every reading.
    fn sampled_behind_to_50000(s: &StreamState) {
        for read in (1_000..=50_000).step_by(1_000) {
            let mut r = reading(read, read + 5_000, None, 90_000);
            r.end = Some((read + 5_000, id(read + 5_000)));
            assert!(s.assess(&r));
        }
    }

    /// The stream deleted and made anew (fewer entries added than sampled, later ids): no
    /// sample of the old one places the group in the new one, not even once the new one
    /// has added more entries than the old samples count (that placed a group 12000 behind
    /// at 2000).
    #[test]
    fn the_samples_of_a_stream_made_anew_place_nothing_in_it() {
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        sampled_behind_to_50000(s);
        // The new stream: entry n has id 200000 + n; the group 12000 behind it (or at its
        // start), a deleted entry after it.
        for added in (700u64..=52_000).step_by(100) {
            let delivered = added.saturating_sub(12_000);
            let mut r = unplaced(200_000 + delivered, 200_000 + added, None, added);
            r.end = Some((added, id(200_000 + added)));
            s.assess(&r);
            let owed = s.observed.get();
            assert!(owed >= added - delivered, "{added}: {owed} owed, {} undelivered", added - delivered);
        }
    }

    /// The group gone (Redis lost it; the shard re-creates it) or its count found above
    /// the stream's: the samples are dropped, and so is what was known of its position.
    #[test]
    fn a_group_renumbered_drops_every_sample() {
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        sampled_behind_to_50000(s);
        let mut gone = reading(0, 0, None, 90_000);
        (gone.group, gone.repair, gone.epoch) = (GroupInfo::default(), Repair::Renumbered, 0);
        s.assess(&gone);
        assert!(s.samples.borrow().is_empty() && s.ends.borrow().is_empty());
        assert_eq!(s.observed.get(), 90_000, "the length counts");
        // entries-read above entries-added: Redis's lag is negative, read as unknown.
        sampled_behind_to_50000(s);
        let mut r = unplaced(50_500, 55_500, None, 90_000);
        r.group.entries_read = Some(60_000);
        s.assess(&r);
        assert!(s.samples.borrow().is_empty());
        assert_eq!(s.observed.get(), 90_000, "not placed: its end sample is after the group");
    }

    /// After a reconnect (a restart, a failover, noticed between two readings by the
    /// connection's epoch) no sample from the other server places the group until a
    /// reading on the new connection knows its position; the group's samples still trim.
    #[test]
    fn samples_from_before_a_reconnect_place_nothing() {
        let b = events_backlog();
        let s = &b.streams[0][StreamKind::Events.index()];
        sampled_behind_to_50000(s);
        s.forget_position();
        assert!(s.ends.borrow().is_empty() && !s.samples.borrow().is_empty());
        s.assess(&unplaced(50_500, 55_500, None, 90_000));
        assert_eq!(s.observed.get(), 90_000);
        // Known again on this connection: placed again, and trimmed as before.
        let mut r = reading(51_000, 56_000, None, 90_000);
        r.end = Some((56_000, id(56_000)));
        s.assess(&r);
        s.assess(&unplaced(51_500, 56_500, None, 90_000));
        assert!((5_000..=5_000 + 3_750 + 1_000).contains(&s.observed.get()), "{}", s.observed.get());
    }

    /// A mark far below the retention (a fifth here): the samples kept still reach a
    /// retention back, and the stream is trimmed (they spanned four marks, 16000 entries
    /// of the 20000 retention, and nothing was ever trimmed).
    #[test]
    fn a_mark_far_below_the_retention_still_trims() {
        let l = StreamLimits { retention_events: 20_000, high_water_events: 4_000 };
        let b = Backlog::new(settings(l), Epoch::default(), Partitions::new(1));
        let s = &b.streams[0][StreamKind::Events.index()];
        for read in (0..=60_000).step_by(50) {
            s.assess(&reading(read, read + 50, None, 20_100));
        }
        let trim = s.trim.get();
        assert!(trim >= id(60_050 - 20_000 - 500) && trim <= id(60_050 - 20_000), "trim {trim:?}");
    }

    /// Caught up, the sample is the script's: `entries-added` at the stream's last id, not
    /// at the last delivered id read before it (a worker's read in between would give
    /// that id too high a count).
    #[test]
    fn a_caught_up_sample_is_placed_at_the_last_generated_id() {
        let b = backlog();
        let s = &b.streams[0][CUSTOM.index()];
        s.assess(&reading(0, 0, None, 0));
        let mut r = reading(1_000, 1_010, None, 1_010);
        r.caught_up = Some(1_010);
        r.end = Some((1_010, id(1_010)));
        s.assess(&r);
        assert_eq!(s.samples.borrow().back(), Some(&(1_010, id(1_010))));
    }

    #[test]
    fn every_stream_is_taken_somewhere() {
        use StreamKind::{Custom, Events, Payments};
        let rule = |n: usize, f: &dyn Fn(usize, StreamKind) -> Option<bool>| every_stream_somewhere(n, f);
        // One partition: every stream that is a stream must pass.
        assert!(rule(1, &|_, _| Some(true)));
        assert!(!rule(1, &|_, s| Some(s != Payments)));
        assert!(rule(1, &|_, s| if s == Payments { None } else { Some(true) }), "another type: passed over");
        assert!(!rule(1, &|_, _| None), "holds nothing");
        // Three: a stream failing in one partition is taken by another.
        assert!(rule(3, &|p, s| Some(!(p == 1 && s == Events))));
        assert!(!rule(3, &|_, s| Some(s != Events)), "events taken nowhere");
        // A partition unread (None throughout) is left out; the others decide.
        assert!(rule(3, &|p, _| (p != 0).then_some(true)));
        assert!(!rule(3, &|p, s| (p != 0).then_some(s != Custom)));
        assert!(!rule(3, &|_, _| None));
    }

    #[test]
    fn a_partition_at_its_mark_leaves_the_shard_ready_while_another_takes_the_stream() {
        let l = StreamLimits { retention_events: 500, high_water_events: 400 };
        let b = Backlog::new(settings(l), Epoch::default(), Partitions::new(3));
        for s in b.streams.iter().flatten() {
            s.known.set(true);
        }
        assert!(b.all_admit());
        // Partition 1's events at the mark: its requests are refused, the others' taken.
        b.streams[1][StreamKind::Events.index()].observed.set(400);
        assert_eq!(b.admission(1, StreamKind::Events), Admission::Full);
        assert!(b.all_admit());
        // Events at the mark in every partition: no events request is taken anywhere.
        for p in [0, 2] {
            b.streams[p][StreamKind::Events.index()].observed.set(400);
        }
        assert!(!b.all_admit());
        // One partition unread (its primary down) while the others are read.
        b.streams[0][CUSTOM.index()].known.set(false);
        assert!(b.all_known());
        for p in [1, 2] {
            b.streams[p][CUSTOM.index()].known.set(false);
        }
        assert!(!b.all_known());
        // A single partition: one full stream is enough, as before.
        let one = backlog();
        one.streams[0][StreamKind::Payments.index()].observed.set(400);
        assert!(!one.all_admit());
    }

    #[test]
    fn review_a_reading_from_before_a_reconnect_is_unknown() {
        let b = backlog();
        assert_eq!(b.admission(0, CUSTOM), Admission::Open);
        // Redis restarted and the connection came back between two readings: what was
        // read before says nothing about the new server.
        b.epoch.advance();
        assert_eq!(b.admission(0, CUSTOM), Admission::Unknown);
        assert!(!b.all_known());
    }
}
