//! The consumer group's backlog per stream, as one shard sees it.
//!
//! Every `backlog_poll_ms` the shard reads `XINFO GROUPS` (pending + lag) of each stream
//! and adds the entries it appended itself since that reading. Ingest refuses with 503
//! once the backlog reaches the stream's high-water mark. When Redis cannot report the lag
//! (after deletions), the stream's length stands in for it: an upper bound.
//!
//! Retention and the mark are configured in events, but Redis counts entries, and how many
//! events an entry holds depends on the traffic: a 100-event request makes one full entry
//! on `analytics:events` and, beside it, one entry of a few events on `analytics:custom`.
//! The ingest script keeps each stream's mean events per entry over the last entries of
//! every shard (`croupier:entry-events`); the shard reads it with the backlog, moves it by
//! its own appends in between, and converts with it (one event per entry before any entry
//! was ever appended). The `MAXLEN` it sends never falls below the backlog it knows of
//! times retention / mark, so a change of traffic that makes entries fuller (fewer entries
//! for the same events) never trims what the group has not read.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use croupier_control::config::StreamLimits;
use croupier_protocol::resp::{self, Frame, GroupInfo};
use croupier_protocol::stream::{StreamKind, CONSUMER_GROUP, ENTRY_EVENTS, ENTRY_EVENTS_WINDOW};

use super::connection::RedisClient;

/// Per-stream backlog estimate and limits.
#[derive(Debug)]
struct StreamState {
    /// Backlog at the last reading, in entries.
    observed: Cell<u64>,
    /// Entries this shard appended since that reading was requested.
    added: Cell<u64>,
    /// Whether a reading succeeded since the last connect.
    known: Cell<bool>,
    /// Mean events per entry of the stream: the last reading, moved by this shard's own
    /// appends since (`None` before any entry: one event per entry is assumed).
    per_entry: Cell<Option<f64>>,
    /// Retention and mark, in events.
    limits: StreamLimits,
}

impl StreamState {
    /// `events` in entries of the measured size (at least one).
    fn entries(&self, events: u64) -> u64 {
        ((events as f64 / self.per_entry.get().unwrap_or(1.0)).ceil() as u64).max(1)
    }

    fn backlog(&self) -> u64 {
        self.observed.get() + self.added.get()
    }
}

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

/// The shard's view of the three streams' backlogs.
#[derive(Debug)]
pub struct Backlog {
    streams: [StreamState; 3],
}

impl Backlog {
    /// `limits[i]` are those of `StreamKind::ALL[i]`.
    pub fn new(limits: [StreamLimits; 3]) -> Rc<Backlog> {
        Rc::new(Backlog {
            streams: limits.map(|limits| StreamState {
                observed: Cell::new(0),
                added: Cell::new(0),
                known: Cell::new(false),
                per_entry: Cell::new(None),
                limits,
            }),
        })
    }

    /// Whether `stream` takes more entries: below its mark, at it, or not known (Redis
    /// unreachable, or not read since the last connect).
    pub fn admission(&self, stream: StreamKind) -> Admission {
        let s = &self.streams[stream.index()];
        if !s.known.get() {
            Admission::Unknown
        } else if s.backlog() < s.entries(s.limits.high_water_events) {
            Admission::Open
        } else {
            Admission::Full
        }
    }

    /// Whether `stream` is below its mark (`false` too while not known).
    pub fn admits(&self, stream: StreamKind) -> bool {
        self.admission(stream) == Admission::Open
    }

    /// Whether every stream's backlog has been read since the last connect.
    pub fn all_known(&self) -> bool {
        StreamKind::ALL.iter().all(|s| self.admission(*s) != Admission::Unknown)
    }

    /// Whether every stream is below its mark.
    pub fn all_admit(&self) -> bool {
        StreamKind::ALL.iter().all(|s| self.admits(*s))
    }

    /// Records that this shard is appending one entry of `events` records to `stream`
    /// (call before queueing the command), and returns the `MAXLEN ~` to send with it.
    pub fn added(&self, stream: StreamKind, events: usize) -> u64 {
        let s = &self.streams[stream.index()];
        s.added.set(s.added.get() + 1);
        // The script's update, mirrored until the next reading brings every shard's.
        let n = events.max(1) as f64;
        let m = s.per_entry.get().map_or(n, |m| m + (n - m) / f64::from(ENTRY_EVENTS_WINDOW));
        s.per_entry.set(Some(m.max(1.0)));
        self.maxlen(stream)
    }

    /// `MAXLEN ~` of `stream`: its retention in entries of the measured size, and never
    /// less than the known backlog scaled by retention / mark.
    pub fn maxlen(&self, stream: StreamKind) -> u64 {
        let s = &self.streams[stream.index()];
        let l = s.limits;
        let guard =
            (u128::from(s.backlog()) * u128::from(l.retention_events)).div_ceil(u128::from(l.high_water_events.max(1)));
        s.entries(l.retention_events).max(u64::try_from(guard).unwrap_or(u64::MAX))
    }

    /// Reads the backlogs every `every`, forever (spawned once per shard).
    pub async fn poll(self: Rc<Self>, redis: RedisClient, every: Duration) {
        loop {
            if redis.is_up() {
                if let Some(means) = read_entry_events(&redis).await {
                    for (s, mean) in self.streams.iter().zip(means) {
                        if let Some(m) = mean {
                            s.per_entry.set(Some(m.max(1.0)));
                        }
                    }
                }
            }
            for kind in StreamKind::ALL {
                let s = &self.streams[kind.index()];
                if !redis.is_up() {
                    s.known.set(false);
                    continue;
                }
                let added_before = s.added.get();
                match read_backlog(&redis, kind).await {
                    Some(b) => {
                        s.observed.set(b);
                        s.added.set(s.added.get() - added_before);
                        s.known.set(true);
                    }
                    None => s.known.set(false),
                }
            }
            monoio::time::sleep(every).await;
        }
    }
}

/// The streams' mean events per entry, in `StreamKind::ALL` order (`None` for a stream
/// nothing was appended to yet).
async fn read_entry_events(redis: &RedisClient) -> Option<[Option<f64>; 3]> {
    let mut cmd = Vec::with_capacity(128);
    let [a, b, c] = StreamKind::ALL.map(|k| k.key().as_bytes());
    resp::command(&mut cmd, &[b"HMGET", ENTRY_EVENTS.as_bytes(), a, b, c]);
    let Frame::Array(items) = redis.call(cmd).await.ok()? else { return None };
    let mut means = [None; 3];
    for (m, item) in means.iter_mut().zip(items) {
        if let Frame::BulkString(v) = item {
            *m = std::str::from_utf8(&v).ok().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        }
    }
    Some(means)
}

async fn read_backlog(redis: &RedisClient, kind: StreamKind) -> Option<u64> {
    let key = kind.key().as_bytes();
    let mut cmd = Vec::with_capacity(64);
    resp::command(&mut cmd, &[b"XINFO", b"GROUPS", key]);
    let info = redis.call(cmd).await.ok()?;
    let group = resp::group_info(&info, CONSUMER_GROUP).ok()?;
    match group {
        Some(GroupInfo { pending, lag: Some(lag) }) => Some(pending + lag),
        other => {
            if other.is_none() {
                // The group is gone (Redis lost its data): recreate it from the start.
                let mut create = Vec::with_capacity(96);
                resp::command(&mut create, &[b"XGROUP", b"CREATE", key, CONSUMER_GROUP.as_bytes(), b"0", b"MKSTREAM"]);
                let _ = redis.call(create).await;
            }
            let mut xlen = Vec::with_capacity(48);
            resp::command(&mut xlen, &[b"XLEN", key]);
            match redis.call(xlen).await.ok()? {
                Frame::Integer(n) => Some(n.max(0) as u64),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOM: StreamKind = StreamKind::Custom;

    /// Retention 500 events, mark 400 on every stream, backlogs read (empty).
    fn backlog() -> Rc<Backlog> {
        let l = StreamLimits { retention_events: 500, high_water_events: 400 };
        let b = Backlog::new([l; 3]);
        for s in &b.streams {
            s.known.set(true);
        }
        b
    }

    fn set_mean(b: &Backlog, stream: StreamKind, mean: f64) {
        b.streams[stream.index()].per_entry.set(Some(mean));
    }

    #[test]
    fn limits_convert_with_the_measured_entry_size() {
        let b = backlog();
        set_mean(&b, CUSTOM, 100.0);
        assert_eq!(b.added(CUSTOM, 100), 5, "full entries: 500 events in 5");
        set_mean(&b, CUSTOM, 2.0);
        assert_eq!(b.maxlen(CUSTOM), 250);
    }

    #[test]
    fn sparse_entries_get_the_configured_room_in_events() {
        let b = backlog();
        set_mean(&b, CUSTOM, 2.0);
        let mut accepted = 0;
        while b.admits(CUSTOM) {
            b.added(CUSTOM, 2);
            accepted += 1;
        }
        assert_eq!(accepted, 200, "400 events of 2 per entry");
        assert_eq!(b.maxlen(CUSTOM), 250);
        assert!(b.admits(StreamKind::Events), "another stream is not held back");
    }

    #[test]
    fn before_any_entry_one_event_per_entry_is_counted() {
        let b = backlog();
        b.streams[CUSTOM.index()].observed.set(399);
        assert!(b.admits(CUSTOM), "399 entries of unknown size");
        b.added(CUSTOM, 1);
        assert!(!b.admits(CUSTOM));
    }

    #[test]
    fn own_appends_move_the_measure_between_readings() {
        let b = backlog();
        assert_eq!(b.added(CUSTOM, 4), 125, "the first entry sets it");
        b.added(CUSTOM, 68);
        assert_eq!(b.streams[CUSTOM.index()].per_entry.get(), Some(5.0), "then 1/64 of each difference");
    }

    #[test]
    fn fuller_entries_never_trim_below_the_backlog() {
        let b = backlog();
        set_mean(&b, CUSTOM, 2.0);
        for _ in 0..150 {
            b.added(CUSTOM, 2);
        }
        // The traffic changes to full entries: the mark in entries falls below the
        // backlog, and MAXLEN still keeps every unread entry.
        set_mean(&b, CUSTOM, 100.0);
        assert!(!b.admits(CUSTOM));
        assert_eq!(b.maxlen(CUSTOM), 150 * 500 / 400 + 1, "150 unread entries, scaled by retention / mark");
        // A reading that finds the group caught up lets MAXLEN shrink to the retention.
        let s = &b.streams[CUSTOM.index()];
        s.observed.set(0);
        s.added.set(0);
        assert_eq!(b.maxlen(CUSTOM), 5);
    }
}
