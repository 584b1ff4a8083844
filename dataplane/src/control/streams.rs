//! The streams as the control thread reads them on a scrape or a readiness probe: each
//! stream's backlog for the consumer group, its length, and the age of its oldest entry
//! not yet acknowledged. Read with the control thread's own Redis connection, so a
//! scrape never touches a data shard.

use croupier_control::config::StreamLimits;
use croupier_control::metrics::{labels, Encoder, Kind};
use croupier_protocol::cluster::Partitions;
use croupier_protocol::resp::{self, Frame};
use croupier_protocol::stream::{StreamId, StreamKind, CONSUMER_GROUP};

use crate::redis::connection::{RedisClient, RedisError};
use crate::redis::partition_counts;

/// One stream, read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamReading {
    /// The stream.
    pub stream: StreamKind,
    /// Its partition in its partition count (`streams.partitions`; 0 when there is one).
    pub partition: u16,
    /// Whether it is a stream of the configured partition count (the others, of counts
    /// ingest wrote with before, count for no readiness).
    pub configured: bool,
    /// `layout` and `partition` labels, set while several partition counts are recorded
    /// (`croupier_protocol::cluster::LAYOUTS`): the smallest count holding the stream's key
    /// and its partition there, the same whatever count the process is configured with.
    pub label: Option<(u16, u16)>,
    /// Entries pending in the group or not yet read (`XLEN` when Redis cannot tell the lag).
    pub backlog_entries: u64,
    /// Mean events per entry (`croupier:entry-events`; 1 before any entry).
    pub events_per_entry: f64,
    /// Entries in the stream (`XLEN`).
    pub entries: u64,
    /// Milliseconds part of the oldest entry not acknowledged (pending, or the first not
    /// yet delivered); `None` when every entry is acknowledged.
    pub oldest_unacked_ms: Option<u64>,
    /// The configured high-water mark, in events.
    pub high_water_events: u64,
}

impl StreamReading {
    /// The backlog in events (entries times the mean events per entry).
    pub fn backlog_events(&self) -> u64 {
        (self.backlog_entries as f64 * self.events_per_entry).round() as u64
    }

    /// Whether the backlog has reached the high-water mark (ingest refuses it).
    pub fn at_high_water(&self) -> bool {
        self.backlog_events() >= self.high_water_events
    }
}

/// What a reading says when its connection was found lost (the reading may be tried again
/// once the client has reconnected).
pub const CONNECTION_LOST: &str = "connection lost";

/// What went wrong with a command, in words.
fn failed(e: RedisError) -> String {
    match e {
        RedisError::Unavailable => CONNECTION_LOST.into(),
        RedisError::Timeout => "no reply in time".into(),
        RedisError::QueueFull => "too many commands waiting".into(),
        RedisError::Protocol(p) => format!("protocol error: {p}"),
    }
}

async fn call(redis: &RedisClient, args: &[&[u8]]) -> Result<Frame, String> {
    let mut cmd = Vec::with_capacity(96);
    resp::command(&mut cmd, args);
    match redis.call(cmd).await.map_err(failed)? {
        Frame::Error(e) => Err(e),
        f => Ok(f),
    }
}

/// Partition `p`'s streams' mean events per entry, in [`StreamKind::ALL`] order: one
/// event per entry where none is kept, or the hash is damaged (another type, a value
/// that is no mean): the figures are then in entries, and Redis still counts as read
/// (ingest takes requests all the same). A Redis that cannot be reached is an error.
async fn entry_means(redis: &RedisClient, partitions: &Partitions, p: usize) -> Result<[f64; 3], String> {
    let reply = redis.call(partitions.entry_means_command(p)).await.map_err(failed)?;
    Ok(resp::entry_means(&reply).unwrap_or_default().map(|m| m.unwrap_or(1.0)))
}

/// The first id of an `XRANGE` reply.
fn first_id(frame: &Frame) -> Option<StreamId> {
    let Frame::Array(entries) = frame else { return None };
    let Some(Frame::Array(entry)) = entries.first() else { return None };
    match entry.first() {
        Some(Frame::BulkString(id) | Frame::SimpleString(id)) => StreamId::parse(id),
        _ => None,
    }
}

async fn read_one(
    redis: &RedisClient,
    (stream, partition, name): (StreamKind, u16, &str),
    mean: f64,
    limits: StreamLimits,
) -> Result<Option<StreamReading>, String> {
    let key = name.as_bytes();
    let entries = match call(redis, &[b"XLEN", key]).await {
        Ok(Frame::Integer(n)) => n.max(0) as u64,
        Err(e) if e.starts_with("WRONGTYPE") => return Ok(None),
        Err(e) => return Err(e),
        Ok(other) => return Err(format!("XLEN {name}: {other:?}")),
    };
    // An error reply for a missing key means no group: not through `call`.
    let frame = redis.call(xinfo(key)).await.map_err(failed)?;
    let info = resp::group_info(&frame, CONSUMER_GROUP).map_err(|e| e.0)?;
    let mut reading = StreamReading {
        stream,
        partition,
        configured: true,
        label: None,
        backlog_entries: entries,
        events_per_entry: mean,
        entries,
        oldest_unacked_ms: None,
        high_water_events: limits.high_water_events,
    };
    let Some(g) = info else {
        // No group yet: everything in the stream is owed to it.
        reading.oldest_unacked_ms =
            first_id(&call(redis, &[b"XRANGE", key, b"-", b"+", b"COUNT", b"1"]).await?).map(|i| i.ms);
        return Ok(Some(reading));
    };
    let oldest_pending = if g.pending > 0 {
        resp::oldest_pending(&call(redis, &[b"XPENDING", key, CONSUMER_GROUP.as_bytes()]).await?).map_err(|e| e.0)?
    } else {
        None
    };
    let after = format!("({}", g.last_delivered.map_or_else(|| "0-0".to_owned(), |id| format!("{}-{}", id.ms, id.seq)));
    let undelivered = first_id(&call(redis, &[b"XRANGE", key, after.as_bytes(), b"+", b"COUNT", b"1"]).await?);
    reading.backlog_entries = backlog_entries(g.pending, g.lag, undelivered.is_some(), entries);
    reading.oldest_unacked_ms = match (oldest_pending, undelivered) {
        (Some(a), Some(b)) => Some(a.min(b).ms),
        (a, b) => a.or(b).map(|i| i.ms),
    };
    Ok(Some(reading))
}

/// Entries pending in the group or not yet delivered: `pending` + `lag`, where the lag is 0
/// when no entry follows the last delivered id, whatever Redis says (its lag is
/// `entries-added` − `entries-read`, and `entries-read` is not always carried consistently
/// across a failover), and never more than the stream holds (`xlen`, also when Redis
/// cannot tell the lag).
fn backlog_entries(pending: u64, lag: Option<u64>, undelivered: bool, xlen: u64) -> u64 {
    match (lag, undelivered) {
        (_, false) => pending.min(xlen),
        (Some(lag), true) => pending.saturating_add(lag).min(xlen),
        (None, true) => xlen,
    }
}

fn xinfo(key: &[u8]) -> Vec<u8> {
    let mut cmd = Vec::with_capacity(64);
    resp::command(&mut cmd, &[b"XINFO", b"GROUPS", key]);
    cmd
}

/// Reads the three streams of each partition (in [`StreamKind::ALL`] order, partition by
/// partition); `limits` are a partition's. A stream key holding another type is left out
/// (ingest refuses only the requests appending to it; the data shards log it). A
/// partition that cannot be read (its primary of a Redis Cluster down, every stream key
/// of another type) is left out and logged, the others read: ingest refuses only the
/// requests routed to it. An error when no partition can be read.
pub async fn read(
    redis: &RedisClient,
    limits: [StreamLimits; 3],
    partitions: &Partitions,
    others: Option<OtherCounts>,
) -> Result<Vec<StreamReading>, String> {
    let mut out = Vec::with_capacity(3 * partitions.len());
    let mut failed = Vec::new();
    for p in 0..partitions.len() {
        match read_partition(redis, limits, partitions, p).await {
            Ok(r) => out.extend(r),
            Err(e) => failed.push(if partitions.len() > 1 { format!("partition {p}: {e}") } else { e }),
        }
    }
    if out.is_empty() {
        return Err(failed.join("; "));
    }
    if let Some(others) = others {
        read_other_counts(redis, limits, partitions, others, &mut out).await;
    }
    if !failed.is_empty() && !crate::redis::auth::recently_logged(format!("streams unread {}", failed.len())) {
        tracing::warn!(
            unread = %failed.join("; "),
            "partitions of the streams could not be read: their gauges are left out, the others' reported \
             (logged at most every 10 s)"
        );
    }
    Ok(out)
}

/// Which other partition counts a reading covers (for `/metrics`, never for readiness).
#[derive(Debug, Clone, Copy)]
pub struct OtherCounts {
    /// Whether Redis is a Redis Cluster (one partition's plain keys span slots there: a
    /// count of 1 is passed over).
    pub cluster: bool,
}

thread_local! {
    /// The keys of each partition count read (the control thread's; finding a count's tags
    /// takes a search per partition).
    static COUNTS: std::cell::RefCell<std::collections::HashMap<u16, std::rc::Rc<Partitions>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

thread_local! {
    /// Per other partition count, when its partitions were looked at and which held
    /// entries then (looked at again at most every minute: three `XLEN`s a partition).
    static HOLDING: std::cell::RefCell<std::collections::HashMap<u16, (std::time::Instant, Vec<usize>)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// How long the partitions of another count found holding entries are believed.
const HOLDING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The partitions of `n`, made once per thread.
fn partitions_of(n: u16) -> std::rc::Rc<Partitions> {
    COUNTS.with(|c| c.borrow_mut().entry(n).or_insert_with(|| std::rc::Rc::new(Partitions::new(n))).clone())
}

/// Adds the streams of the other partition counts ingest wrote with (the workers drain
/// them too) that hold entries, and labels every reading with its `layout` and
/// `partition` while more than one count is recorded: a stream's key is labelled by the
/// smallest count holding it (two counts may share a partition's tag), so every process,
/// whatever count it is configured with, reports one stream under one label set and the
/// backlog alert's sum counts it once. A partition of another count whose three streams
/// are empty or gone is passed over (a count recorded by mistake adds nothing to the
/// series; its partitions are looked at once a minute).
async fn read_other_counts(
    redis: &RedisClient,
    limits: [StreamLimits; 3],
    partitions: &Partitions,
    others: OtherCounts,
    out: &mut Vec<StreamReading>,
) {
    let configured = u16::try_from(partitions.len()).unwrap_or(u16::MAX);
    let Some(mut counts) = partition_counts::recorded(redis, configured, others.cluster).await else { return };
    if counts.is_empty() {
        return;
    }
    counts.push(configured);
    counts.sort_unstable();
    counts.dedup();
    // Each key's label: the smallest count holding it, and its partition there.
    let mut owner: std::collections::HashMap<String, (u16, u16)> = std::collections::HashMap::new();
    for &n in &counts {
        let parts = partitions_of(n);
        for p in 0..parts.len() {
            let id = u16::try_from(p).unwrap_or(u16::MAX);
            owner.entry(parts.stream(p, StreamKind::Events).to_owned()).or_insert((n, id));
        }
    }
    for r in out.iter_mut() {
        r.label = owner.get(partitions.stream(usize::from(r.partition), StreamKind::Events)).copied();
    }
    let mut seen: std::collections::HashSet<String> =
        (0..partitions.len()).map(|p| partitions.stream(p, StreamKind::Events).to_owned()).collect();
    for &n in counts.iter().filter(|n| **n != configured) {
        let parts = partitions_of(n);
        let cached =
            HOLDING.with(|h| h.borrow().get(&n).filter(|(at, _)| at.elapsed() < HOLDING_FOR).map(|c| c.1.clone()));
        let holding = match cached {
            Some(list) => list,
            None => {
                let mut list = Vec::new();
                for p in 0..parts.len() {
                    if !seen.contains(parts.stream(p, StreamKind::Events))
                        && partition_counts::holds_entries(redis, &parts, p).await
                    {
                        list.push(p);
                    }
                }
                HOLDING.with(|h| h.borrow_mut().insert(n, (std::time::Instant::now(), list.clone())));
                list
            }
        };
        for p in holding {
            let key = parts.stream(p, StreamKind::Events);
            if seen.contains(key) {
                continue;
            }
            seen.insert(key.to_owned());
            if let Ok(r) = read_partition(redis, limits, &parts, p).await {
                let label = owner.get(key).copied();
                out.extend(r.into_iter().map(|r| StreamReading { configured: false, label, ..r }));
            }
        }
    }
}

/// The three streams of partition `p`: those that are streams, or an error.
async fn read_partition(
    redis: &RedisClient,
    limits: [StreamLimits; 3],
    partitions: &Partitions,
    p: usize,
) -> Result<Vec<StreamReading>, String> {
    let means = entry_means(redis, partitions, p).await?;
    let id = u16::try_from(p).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(3);
    for (i, stream) in StreamKind::ALL.into_iter().enumerate() {
        if let Some(r) = read_one(redis, (stream, id, partitions.stream(p, stream)), means[i], limits[i]).await? {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(format!("every stream key of partition {p} holds another type"));
    }
    Ok(out)
}

/// Writes the stream gauges of `readings`, ages as of `now_ms`; labelled by partition
/// too when there are several (one partition keeps the series as they were).
pub fn encode(enc: &mut Encoder, readings: &[StreamReading], now_ms: u64) {
    let partitioned = readings.iter().any(|r| r.partition > 0 && r.configured);
    let parts: Vec<(String, String)> = readings
        .iter()
        .map(|r| match r.label {
            Some((n, p)) => (p.to_string(), n.to_string()),
            None => (r.partition.to_string(), String::new()),
        })
        .collect();
    let labels: Vec<Vec<(&str, &str)>> = readings
        .iter()
        .zip(&parts)
        .map(|(r, (p, n))| {
            let mut l = vec![("stream", labels::stream(r.stream))];
            if r.label.is_some() {
                // Several partition counts recorded: the count and the partition there.
                l.push(("layout", n.as_str()));
                l.push(("partition", p.as_str()));
            } else if partitioned {
                l.push(("partition", p.as_str()));
            }
            l
        })
        .collect();
    enc.family(
        "croupier_stream_backlog_events",
        Kind::Gauge,
        "Events of the stream pending in the consumer group analytics-workers or not yet read (pending + lag, \
         in events).",
    );
    for (r, l) in readings.iter().zip(&labels) {
        enc.sample("croupier_stream_backlog_events", l, r.backlog_events());
    }
    enc.family(
        "croupier_stream_entries",
        Kind::Gauge,
        "Entries in the stream (XLEN), acknowledged ones kept included.",
    );
    for (r, l) in readings.iter().zip(&labels) {
        enc.sample("croupier_stream_entries", l, r.entries);
    }
    enc.family(
        "croupier_stream_high_water_events",
        Kind::Gauge,
        "The stream's (partition's) high-water mark in events: ingest refuses with 503 backlog_full at it.",
    );
    for (r, l) in readings.iter().zip(&labels) {
        enc.sample("croupier_stream_high_water_events", l, r.high_water_events);
    }
    enc.family(
        "croupier_stream_oldest_unacked_age_seconds",
        Kind::Gauge,
        "Age of the oldest entry of the stream not yet acknowledged by the workers (0 when none): how far \
         ClickHouse is behind.",
    );
    for (r, l) in readings.iter().zip(&labels) {
        let age_ms = r.oldest_unacked_ms.map_or(0, |ms| now_ms.saturating_sub(ms));
        enc.sample_f64("croupier_stream_oldest_unacked_age_seconds", l, age_ms as f64 / 1e3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_in_events_and_the_mark() {
        let r = StreamReading {
            stream: StreamKind::Custom,
            partition: 0,
            configured: true,
            label: None,
            backlog_entries: 10,
            events_per_entry: 2.5,
            entries: 40,
            oldest_unacked_ms: Some(1_000),
            high_water_events: 25,
        };
        assert_eq!(r.backlog_events(), 25);
        assert!(r.at_high_water());
        let mut enc = Encoder::new();
        encode(&mut enc, &[r], 31_000);
        let text = enc.finish();
        assert!(text.contains("croupier_stream_backlog_events{stream=\"custom\"} 25\n"), "{text}");
        assert!(text.contains("croupier_stream_oldest_unacked_age_seconds{stream=\"custom\"} 30\n"), "{text}");
        // Another partition count's stream beside one unlabelled: its count and partition.
        let old = StreamReading { partition: 1, configured: false, label: Some((3, 1)), ..r };
        let mut enc = Encoder::new();
        encode(&mut enc, &[r, old], 31_000);
        let text = enc.finish();
        assert!(text.contains("croupier_stream_backlog_events{stream=\"custom\"} 25\n"), "{text}");
        assert!(
            text.contains("croupier_stream_backlog_events{stream=\"custom\",layout=\"3\",partition=\"1\"} 25\n"),
            "{text}"
        );
    }
    #[test]
    fn a_wrong_lag_is_no_backlog() {
        // After failovers: nothing pending, the newest entry delivered, yet Redis reports a
        // lag of 26082 entries, 78246 events at 3 events per entry, over the mark of 60000.
        let entries = backlog_entries(0, Some(26_082), false, 90_000);
        assert_eq!(entries, 0);
        let r = StreamReading {
            stream: StreamKind::Events,
            partition: 0,
            configured: true,
            label: None,
            backlog_entries: entries,
            events_per_entry: 3.0,
            entries: 90_000,
            oldest_unacked_ms: None,
            high_water_events: 60_000,
        };
        assert_eq!(r.backlog_events(), 0);
        assert!(!r.at_high_water());
        // Entries not yet delivered: the lag counts, but never more than the stream holds.
        assert_eq!(backlog_entries(2, Some(30_288), true, 20_000), 20_000);
        assert_eq!(backlog_entries(2, Some(300), true, 20_000), 302);
        // Redis cannot tell the lag: the length, or only what is pending when nothing
        // follows the last delivered id.
        assert_eq!(backlog_entries(3, None, true, 20_000), 20_000);
        assert_eq!(backlog_entries(3, None, false, 20_000), 3);
    }
}
