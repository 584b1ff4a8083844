//! The consumer group's backlog per stream, as one shard sees it.
//!
//! Every `backlog_poll_ms` the shard reads `XINFO GROUPS` (pending + lag) of each stream
//! and adds the entries it appended itself since that reading. Ingest refuses with 503
//! once the sum reaches the stream's high-water mark, which the configuration keeps below
//! `MAXLEN`, so trimming never removes entries the group has not read. When Redis cannot
//! report the lag (after deletions), the stream's length stands in for it: an upper bound.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use croupier_protocol::resp::{self, Frame, GroupInfo};
use croupier_protocol::stream::{StreamKind, CONSUMER_GROUP};

use super::connection::RedisClient;

/// Per-stream backlog estimate and limits (entries).
#[derive(Debug, Default)]
struct StreamState {
    /// Backlog at the last reading.
    observed: Cell<u64>,
    /// Entries this shard appended since that reading was requested.
    added: Cell<u64>,
    /// Refuse at or above this.
    high_water: u64,
    /// Whether a reading succeeded since the last connect.
    known: Cell<bool>,
}

/// The shard's view of the three streams' backlogs.
#[derive(Debug)]
pub struct Backlog {
    streams: [StreamState; 3],
}

impl Backlog {
    /// `high_water[i]` is the mark of `StreamKind::ALL[i]`, in entries.
    pub fn new(high_water: [u64; 3]) -> Rc<Backlog> {
        Rc::new(Backlog { streams: high_water.map(|h| StreamState { high_water: h, ..StreamState::default() }) })
    }

    /// Whether `stream` is below its mark (`false` too before the first reading).
    pub fn admits(&self, stream: StreamKind) -> bool {
        let s = &self.streams[stream.index()];
        s.known.get() && s.observed.get() + s.added.get() < s.high_water
    }

    /// Whether every stream is below its mark.
    pub fn all_admit(&self) -> bool {
        StreamKind::ALL.iter().all(|s| self.admits(*s))
    }

    /// Records that this shard is appending one entry to `stream` (call before queueing
    /// the command).
    pub fn added(&self, stream: StreamKind) {
        let s = &self.streams[stream.index()];
        s.added.set(s.added.get() + 1);
    }

    /// Reads the backlogs every `every`, forever (spawned once per shard).
    pub async fn poll(self: Rc<Self>, redis: RedisClient, every: Duration) {
        loop {
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
