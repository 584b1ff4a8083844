//! One stream's consumer on a worker shard: read, insert, acknowledge.
//!
//! Order of work:
//! 1. On start (and after a failed read or claim; the custom consumer only on start,
//!    [`super::join`]) the consumer recovers its own pending entries —
//!    entries it was given before but never acknowledged — by ID (`XPENDING`, `XRANGE`:
//!    no delivery), after trying alone those delivered `max_deliveries` times, and moving
//!    those delivered twice that to the dead-letter stream. It does so only once
//!    ClickHouse answers. Deliveries count tries: a recovered entry's try is counted just
//!    before it (`XCLAIM ... RETRYCOUNT`) and given back when it fails for a reason of
//!    ClickHouse's, so only a try that never came back (a crash) stays counted.
//! 2. Then it reads new entries (`>`), gathering until `batch_rows` rows, `linger_ms`, or
//!    under a heavy load (of its table on the shard, [`super::cadence`])
//!    `insert_interval_ms` after the previous batch (docs/worker.md). The events consumer
//!    reads the custom stream's new entries with its own, and the custom consumer none
//!    ([`super::join`]): one insert into `events` for both.
//! 3. Every `claim_interval_ms` it claims entries idle past `claim_idle_ms` in other
//!    consumers' pending lists (`XAUTOCLAIM`): those consumers are presumed dead (and its
//!    own, after a lost reply; the custom entries the events consumer holds are left to
//!    it). It claims only while ClickHouse answers it.
//! 4. A batch is inserted and only after ClickHouse's EndOfStream are its entries
//!    acknowledged (`XACK`). Entries that cannot be read, or whose rows ClickHouse
//!    rejects as bad data (found by bisecting the batch), go to
//!    `<stream>:dead` with their reason and are then acknowledged; the rest commits.
//! 5. While ClickHouse fails otherwise, the batch is kept and retried with back-off:
//!    nothing is acknowledged, nothing dropped.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::metrics::{
    DeadLettered, DeadReason, EventsDelayed, InsertFailed, RowsInserted, ShardWriter, Table,
};
use croupier_protocol::resp::Frame;
use croupier_protocol::stream::{StreamId, StreamKind, CONSUMER_GROUP};

use super::aggregate::Aggregator;
use super::cadence::{close_at, Cadence, Closed, LoadSlot};
use super::entries::{self, cmd, Entry};
use super::join::Join;
use super::read_size::ReadSize;
use super::sink::{entry_ms, entry_rows, Confirmed, Poison, Sink};
use crate::clickhouse::cluster;
use crate::clickhouse::connection::{ChError, ChOptions, Connection};
use crate::redis::connection::RedisClient;

/// What a consumer needs to know.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The stream.
    pub stream: StreamKind,
    /// Its key: the stream's, or one partition's (`streams.partitions`).
    pub key: String,
    /// Consumer name (stable across restarts).
    pub consumer: String,
    /// Entries per read.
    pub read_count: usize,
    /// Flush at this many rows.
    pub batch_rows: usize,
    /// Flush when the batch's entries hold this many bytes.
    pub batch_bytes: usize,
    /// The largest entry a read can return, in bytes (what ingest can write).
    pub max_entry_bytes: usize,
    /// Flush this long after the first row ...
    pub linger: Duration,
    /// ... but not before this long after the previous batch closed.
    pub insert_interval: Duration,
    /// Claim entries idle this long.
    pub claim_idle: Duration,
    /// How often to try claiming.
    pub claim_interval: Duration,
    /// Dead-letter after this many deliveries.
    pub max_deliveries: u64,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// More entries than this refused by ClickHouse in one batch stall the stream
    /// instead of being dead-lettered.
    pub max_refused_per_batch: usize,
    /// Longest a read blocks while idle.
    pub idle_block: Duration,
    /// The pause after a short read while a batch gathers.
    pub read_pause: Duration,
    /// Partitions one INSERT block may span.
    pub partitions_per_block: usize,
    /// ClickHouse.
    pub clickhouse: ChOptions,
    /// Per shard, its replicas (one shard: the server).
    pub shards: Vec<ChOptions>,
    /// The cluster's name when inserts go to the shards' `_local` tables
    /// (`clickhouse.shards`).
    pub cluster: Option<String>,
}

impl ConsumerConfig {
    /// When its batches close.
    pub fn cadence(&self) -> Cadence {
        Cadence { linger: self.linger, insert_interval: self.insert_interval, batch_rows: self.batch_rows }
    }

    /// Entries to ask for in one read when the batch already holds `rows` rows and
    /// `bytes` bytes and entries are expected to hold up to `entry_bytes` bytes (see
    /// [`ReadSize`]): no more than `read_count`, than the rows still wanted (an entry holds
    /// at least one row), or than such entries that fit in the bytes still allowed; at
    /// least one. `streams`: streams read at once (each returns up to the count), which
    /// share all three bounds.
    pub fn read_count(&self, rows: usize, bytes: usize, entry_bytes: usize, streams: usize) -> usize {
        let streams = streams.max(1);
        let by_rows = self.batch_rows.saturating_sub(rows) / streams;
        let by_bytes = self.batch_bytes.saturating_sub(bytes) / entry_bytes.max(1) / streams;
        (self.read_count / streams).min(by_rows).min(by_bytes).max(1)
    }

    /// Whether a batch of `rows` rows and `bytes` bytes is full.
    pub fn is_full(&self, rows: usize, bytes: usize) -> bool {
        rows >= self.batch_rows || bytes >= self.batch_bytes
    }
}

/// Whether (and how) a consumer re-reads its own pending entries before reading new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Nothing to re-read.
    Done,
    /// After a start: what is pending was held by a consumer that stopped.
    Restart,
    /// After a read or claim failed in this process: what is pending was delivered by
    /// the call that failed.
    Resume,
}

impl Recovery {
    /// The recovery due after a read or claim failed.
    fn after_failure(self) -> Recovery {
        match self {
            Recovery::Done => Recovery::Resume,
            other => other,
        }
    }
}

/// Whether a ClickHouse server time zone is UTC (`toYYYYMM` then agrees with UTC months).
fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "Etc/UTC" | "UCT" | "Etc/UCT" | "GMT" | "Etc/GMT" | "Universal" | "Etc/Universal" | "Zulu")
}

/// The longest a probe of ClickHouse ([`Consumer::reachable`]) waits for a connect or a
/// ping: a blackholed host must not hold a claim, a recovery or a shutdown for the whole
/// `clickhouse.timeout_ms` per replica.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The dead-letter stream of `stream`.
/// (`<stream key>:dead`: a partition's in the partition's slot).
pub fn dead_letter_key(key: &str) -> String {
    format!("{key}:dead")
}

/// The connection to one shard: to one of its replicas, the next one after a failure.
#[derive(Default)]
struct ShardLink {
    conn: Option<Connection>,
    /// The replica tried first on the next connect.
    next: usize,
}

struct Consumer {
    cfg: Rc<ConsumerConfig>,
    reader: Reader,
    /// Acknowledgements, dead letters, claims: a connection of their own, so that they
    /// never queue behind a blocking read on the reader's.
    redis: RedisClient,
    /// Per shard, the connection to one of its replicas.
    ch: Vec<ShardLink>,
    sink: Sink,
    backoff: Duration,
    /// Where the next `XAUTOCLAIM` goes on scanning the group's pending list.
    claim_cursor: String,
    /// IDs reported deleted while pending whose dead letters are not written yet.
    deleted: Vec<String>,
    /// The last commit failed for a reason every consumer would meet (schema drift, the
    /// refusal breaker, too many parts): the batch is kept, not left for others to claim.
    systemic: bool,
    /// When the batches in hand were last marked as being worked on.
    kept_at: Instant,
    /// Entries refused one by one and dead-lettered since ClickHouse last took an insert
    /// of this consumer, across batches: at a light load a batch holds a few entries, and
    /// a fault of the stream would otherwise dead-letter them batch after batch below the
    /// breaker.
    refused_in_a_row: usize,
    /// The worker shard's counters (shared by its consumers).
    metrics: Rc<ShardWriter>,
    /// The worker shard's real-time sketches (none: aggregation off).
    agg: Option<Rc<Aggregator>>,
    /// Entries delivered `max_deliveries` times, each to be tried in a batch of its own.
    alone: VecDeque<Alone>,
    /// Entries of the batch in hand recovered after a start, with their deliveries so far:
    /// their try is counted on purpose (see [`Consumer::count_tries`]).
    tries: Vec<(String, u64)>,
    /// Redis holds the counts of `tries` raised by one (a try under way).
    tries_counted: bool,
    /// Set when the worker stops.
    stop: Arc<AtomicBool>,
}

/// An entry delivered `max_deliveries` times without being acknowledged. It is no longer
/// read with others (an entry that kills its consumer would take its batch with it every
/// time): each further delivery tries it alone — inserted (the table collapses a copy
/// ClickHouse already holds), counted, merged and acknowledged like any entry, or
/// dead-lettered if it cannot be read or ClickHouse refuses it. Only an entry delivered
/// twice `max_deliveries` times is dead-lettered unread.
#[derive(Debug)]
struct Alone {
    id: String,
    /// Its fields when in hand (claimed: the claim counted its delivery).
    entry: Option<Entry>,
    /// Its deliveries so far when its try is to be counted (recovered after a start; a
    /// claimed entry's claim counted it).
    deliveries: Option<u64>,
}

/// Runs the consumer until `stop` is set (finishing the batches in hand when it can).
///
/// In steady state the next batch is gathered from Redis while the current one is
/// inserted and acknowledged, so reading never waits for ClickHouse and a row waits for
/// the longer of the insert and the linger (or the insert interval under a heavy load). Both batches are in this consumer's pending list
/// until acknowledged: a crash in between loses nothing. `reads` carries the
/// `XREADGROUP`s, `redis` everything else; `metrics` counts inserts and dead letters;
/// `agg` (when aggregating) gets each batch's players, merged into Redis before the
/// batch is acknowledged. `siblings`: what it shares with its table's other consumers on
/// the shard.
pub async fn run(
    cfg: Rc<ConsumerConfig>,
    reads: RedisClient,
    redis: RedisClient,
    stop: Arc<AtomicBool>,
    metrics: Rc<ShardWriter>,
    agg: Option<Rc<Aggregator>>,
    siblings: Siblings,
) {
    let Siblings { load, join } = siblings;
    let join = Rc::new(join);
    let reader =
        Reader { size: Rc::new(ReadSize::new(cfg.max_entry_bytes)), load, cfg: cfg.clone(), redis: reads, join };
    let mut sink = Sink::new(cfg.stream, cfg.shards.len(), cfg.cluster.is_some());
    sink.read_from(cfg.stream, &cfg.key);
    if let Join::Reads { stream, key, .. } = &*reader.join {
        sink.read_from(*stream, key);
    }
    sink.set_partition_limit(cfg.partitions_per_block, true);
    sink.set_aggregator(agg.clone());
    let links = (0..cfg.shards.len().max(1)).map(|_| ShardLink::default()).collect();
    let mut c = Consumer {
        sink,
        cfg,
        reader,
        redis,
        ch: links,
        backoff: Duration::from_millis(100),
        claim_cursor: "0-0".to_owned(),
        deleted: Vec::new(),
        systemic: false,
        kept_at: Instant::now(),
        refused_in_a_row: 0,
        metrics,
        agg,
        alone: VecDeque::new(),
        tries: Vec::new(),
        tries_counted: false,
        stop: stop.clone(),
    };
    let mut recovering = Recovery::Restart;
    // Its pending list holds the entries its stream's reader has in hand too: it is not
    // re-read after a failure (what a lost reply delivered is claimed again once idle).
    let reads_new = c.reader.join.reads_new();
    let after_failure = |r: Recovery| if reads_new { r.after_failure() } else { r };
    let mut last_claim = Instant::now();
    // Claims are being skipped, ClickHouse not answering (logged once until it does).
    let mut claims_skipped = false;
    let interval = c.cfg.claim_interval;
    let claim_due = |last: Instant| last.elapsed() >= interval;
    // Gathered while the previous batch was committed.
    let mut next: Option<Vec<Entry>> = None;
    while next.is_some() || !stop.load(Ordering::Relaxed) {
        // The batch below was gathered from new entries (which set the insert interval's
        // clock as they close), not claimed, recovered or tried alone.
        let mut gathered = false;
        if !c.reader.redis.is_up() || !c.redis.is_up() {
            if stop.load(Ordering::Relaxed) {
                // A batch read ahead stays pending; it is re-read on the next start.
                return;
            }
            // Connecting (or reconnecting): the Redis connection task retries on its own.
            monoio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let batch = if let Some(b) = next.take() {
            gathered = true;
            b
        } else if !c.alone.is_empty() {
            match c.next_alone().await {
                Ok(b) => b,
                Err(e) => {
                    c.fail(&e).await;
                    continue;
                }
            }
        } else if recovering != Recovery::Done {
            match c.recover_page(recovering).await {
                Ok(b) if b.is_empty() => {
                    // Entries to try alone first: then the pending list again.
                    if c.alone.is_empty() {
                        recovering = Recovery::Done;
                        c.reader.join.recovered();
                    }
                    continue;
                }
                Ok(b) => b,
                Err(e) => {
                    c.fail(&e).await;
                    continue;
                }
            }
        } else if claim_due(last_claim) {
            // A claim is a delivery: only while ClickHouse answers (see `reachable`).
            if let Err(e) = c.reachable().await {
                if stop.load(Ordering::Relaxed) {
                    continue;
                }
                if !claims_skipped {
                    tracing::warn!(
                        consumer = %c.cfg.consumer,
                        stream = c.key(),
                        error = %e,
                        "ClickHouse cannot be reached: idle entries of other consumers are not claimed until it answers"
                    );
                }
                claims_skipped = true;
                last_claim = Instant::now();
                continue;
            }
            claims_skipped = false;
            let mut more = false;
            let claimed = c.claim(&mut more).await;
            if !more {
                last_claim = Instant::now();
            }
            match claimed {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => b,
                Err(e) => {
                    c.fail(&e).await;
                    // Entries claimed before the failure are in this consumer's list.
                    recovering = after_failure(recovering);
                    continue;
                }
            }
        } else if !reads_new {
            // Its new entries are read with the other stream's: only claims are left.
            let due = interval.saturating_sub(last_claim.elapsed());
            monoio::time::sleep(due.min(Duration::from_millis(250))).await;
            continue;
        } else {
            gathered = true;
            match c.reader.gather(&stop).await {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => b,
                Err(e) => {
                    c.fail(&e).await;
                    recovering = after_failure(recovering);
                    continue;
                }
            }
        };
        // An insert too: the next gathered batch keeps the interval from it. A gathered
        // batch's load counts for the table's other consumers until it is committed.
        let _held = if gathered {
            Some(c.reader.load.hold())
        } else {
            c.reader.load.inserted_other(Instant::now());
            None
        };
        // Retry the batch until it is committed; on shutdown leave it pending. What
        // ClickHouse confirmed of it is remembered across retries and not sent again.
        let mut progress = Progress::new(batch.len(), c.cfg.shards.len());
        loop {
            // A recovered entry's try counts a delivery (one that never comes back, a
            // crash, stays counted).
            if let Err(e) = c.count_tries().await {
                c.fail(&e).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            // Overlap only in steady state: recovery and claims read this consumer's
            // pending list, which must not hold a batch gathered ahead. (Custom entries
            // the events consumer holds are in the custom consumer's list: its claims
            // leave them, see `claim`, and it does not re-read that list after a start.)
            let overlap = next.is_none()
                && reads_new
                && recovering == Recovery::Done
                && !stop.load(Ordering::Relaxed)
                && !claim_due(last_claim);
            let committed = if overlap {
                let reader = c.reader.clone();
                let (committed, gathered) = monoio::join!(c.commit(&batch, &mut progress), reader.gather(&stop));
                match gathered {
                    Ok(b) if !b.is_empty() => next = Some(b),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(consumer = %c.cfg.consumer, stream = c.key(), error = %e, "reading ahead failed");
                        recovering = after_failure(recovering);
                    }
                }
                committed
            } else {
                c.commit(&batch, &mut progress).await
            };
            match committed {
                Ok(()) => {
                    c.backoff = Duration::from_millis(100);
                    c.tries.clear();
                    c.tries_counted = false;
                    break;
                }
                Err(e) => {
                    // The try came back: not the entries' fault (bad rows are dead-lettered).
                    c.give_back_tries().await;
                    c.fail(&e).await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if c.systemic {
                        c.keep(&batch, next.as_deref()).await;
                    }
                }
            }
        }
    }
}

/// What a consumer shares with the other consumers of its table on its worker shard.
pub struct Siblings {
    /// Its last batch, in the table's load ([`super::cadence`]).
    pub load: LoadSlot,
    /// Whether it reads the table's other stream, or is read by that stream's consumer.
    pub join: Join,
}

/// Reads from the stream for one consumer; cloned so that the next batch can be
/// gathered while the consumer commits the current one.
#[derive(Clone)]
struct Reader {
    cfg: Rc<ConsumerConfig>,
    redis: RedisClient,
    /// The entry size reads are sized for, shared by the clones.
    size: Rc<ReadSize>,
    /// The consumer's last batch, in its table's load on the shard; shared by the clones.
    load: LoadSlot,
    /// The table's other stream, when read with this one.
    join: Rc<Join>,
}

/// Why a Redis call failed.
enum ReadFailure {
    /// Redis answered with an error (the fault is one of the keys': its type, its group).
    Refused(String),
    /// No usable answer (the connection, a timeout, a malformed reply): entries may have
    /// been delivered.
    Lost(String),
}

impl ReadFailure {
    fn into_message(self) -> String {
        match self {
            ReadFailure::Refused(m) | ReadFailure::Lost(m) => m,
        }
    }
}

/// One command; a Redis error reply is an error.
/// Creates `key`'s consumer group from the stream's start, where it is missing (logged
/// when made: its entries are delivered again).
async fn make_group(redis: &RedisClient, consumer: &str, key: &str) {
    let args: [&[u8]; 6] = [b"XGROUP", b"CREATE", key.as_bytes(), CONSUMER_GROUP.as_bytes(), b"0", b"MKSTREAM"];
    match redis_call(redis, cmd(&args)).await {
        Ok(_) => tracing::warn!(
            consumer = %consumer,
            stream = key,
            "the stream's consumer group was missing: made again from the stream's start"
        ),
        Err(e) if e.contains("BUSYGROUP") => {}
        Err(e) => tracing::warn!(consumer = %consumer, stream = key, error = %e, "could not make the consumer group"),
    }
}

async fn redis_call(redis: &RedisClient, c: Vec<u8>) -> Result<Frame, String> {
    redis_call_blocking(redis, c, Duration::ZERO).await
}

/// [`redis_call`] for a command that blocks in Redis for up to `block`.
async fn redis_call_blocking(redis: &RedisClient, c: Vec<u8>, block: Duration) -> Result<Frame, String> {
    redis_reply(redis, c, block).await.map_err(ReadFailure::into_message)
}

/// One command that may block up to `block`; an error reply is [`ReadFailure::Refused`],
/// no usable answer [`ReadFailure::Lost`] (the messages start `Redis: `).
async fn redis_reply(redis: &RedisClient, c: Vec<u8>, block: Duration) -> Result<Frame, ReadFailure> {
    match redis.call_blocking(c, block).await {
        Ok(Frame::Error(e)) => Err(ReadFailure::Refused(format!("Redis: {e}"))),
        Ok(f) => Ok(f),
        Err(e) => Err(ReadFailure::Lost(format!("Redis: {e:?}"))),
    }
}

impl Reader {
    /// One `XREADGROUP` page of new entries, at most `count` of each stream read (its own
    /// and, when joined, the table's other one); also whether it was short (no stream
    /// gave `count`). A joined read that Redis refuses is made again per stream, so that
    /// a fault of the other stream alone (its group gone, its slot half moved between
    /// cluster nodes: `TRYAGAIN` for a command of two keys) does not stop this one; the
    /// other stream's entries then wait for it to read again. A joined read without an
    /// answer fails, as a read of one stream does.
    async fn read(&self, block: Option<Duration>, count: usize) -> Result<(Vec<Entry>, bool), String> {
        let own = (self.cfg.key.as_str(), self.cfg.stream);
        let Some((stream, key)) = self.join.reading() else {
            return self.read_keys(&[own], block, count).await.map_err(ReadFailure::into_message);
        };
        let both = [own, (key, stream)];
        match self.read_keys(&both, block, count).await {
            Ok(read) => Ok(read),
            // No answer: what the read delivered, if anything, is the consumer's to recover.
            Err(ReadFailure::Lost(e)) => Err(e),
            Err(ReadFailure::Refused(e)) => {
                tracing::debug!(consumer = %self.cfg.consumer, stream = key, error = %e, "read of both streams refused; reading each");
                let (mut entries, mut short) =
                    self.read_keys(&[own], block, count).await.map_err(ReadFailure::into_message)?;
                match self.read_keys(&[(key, stream)], None, count).await {
                    Ok((other, other_short)) => {
                        entries.extend(other);
                        short &= other_short;
                    }
                    Err(e) => {
                        let e = e.into_message();
                        tracing::debug!(consumer = %self.cfg.consumer, stream = key, error = %e, "read failed");
                        // Its group gone: made again here, or the other stream would wait
                        // for its own consumer's next claim (and for ClickHouse to answer).
                        if e.contains("NOGROUP") {
                            make_group(&self.redis, &self.cfg.consumer, key).await;
                        }
                    }
                }
                Ok((entries, short))
            }
        }
    }

    /// [`Reader::read`] of the streams `keys` (key, stream) in one `XREADGROUP`.
    async fn read_keys(
        &self,
        keys: &[(&str, StreamKind)],
        block: Option<Duration>,
        count: usize,
    ) -> Result<(Vec<Entry>, bool), ReadFailure> {
        let count_arg = count.to_string();
        let mut args: Vec<&[u8]> = vec![
            b"XREADGROUP",
            b"GROUP",
            CONSUMER_GROUP.as_bytes(),
            self.cfg.consumer.as_bytes(),
            b"COUNT",
            count_arg.as_bytes(),
        ];
        let ms = block.map(|b| b.as_millis().max(1).to_string());
        if let Some(ms) = &ms {
            args.extend([b"BLOCK".as_slice(), ms.as_bytes()]);
        }
        args.push(b"STREAMS");
        args.extend(keys.iter().map(|(k, _)| k.as_bytes()));
        args.extend(keys.iter().map(|_| b">".as_slice()));
        let reply = redis_reply(&self.redis, cmd(&args), block.unwrap_or_default()).await?;
        let entries = entries::xreadgroup_reply(reply, keys).map_err(ReadFailure::Lost)?;
        self.size.observe(entries.iter().map(Entry::byte_len).max());
        self.join.took(entries.iter().filter(|e| e.stream != self.cfg.stream).map(|e| e.id.as_str()));
        let short = keys.iter().all(|&(_, s)| entries.iter().filter(|e| e.stream == s).count() < count);
        Ok((entries, short))
    }

    /// Entries to ask for, of each stream read, when the batch holds `rows` rows and
    /// `bytes` bytes.
    fn count(&self, rows: usize, bytes: usize) -> usize {
        let streams = 1 + usize::from(self.join.reading().is_some());
        self.cfg.read_count(rows, bytes, self.size.entry_bytes(), streams)
    }

    /// Entries of a page of this consumer's own stream alone (recovery, claims).
    fn page(&self) -> usize {
        self.cfg.read_count(0, 0, self.size.entry_bytes(), 1)
    }

    /// New entries: waits up to the idle block for the first, then gathers until
    /// `batch_rows` rows (or `batch_bytes`), or until [`close_at`] for the linger and the
    /// insert interval.
    async fn gather(&self, stop: &AtomicBool) -> Result<Vec<Entry>, String> {
        let (batch, short) = self.read(Some(self.cfg.idle_block), self.count(0, 0)).await?;
        if batch.is_empty() {
            return Ok(batch);
        }
        let first = Instant::now();
        let cadence = self.cfg.cadence();
        let deadline = close_at(first, self.load.last(), self.load.heavy(first, &cadence), &cadence);
        let (batch, rows) = self.gather_until(batch, short, deadline, stop).await?;
        let at = Instant::now();
        self.load.gathered(Closed { at, gathered: at - first, rows });
        Ok(batch)
    }

    /// [`Reader::gather`] after the first read (`short`: it returned fewer entries than it
    /// asked for); also returns the batch's rows.
    ///
    /// After a short read the next waits `read_pause` (capped at the idle block, never past
    /// the close): what was there is read, and the next read then takes a pause's worth of
    /// entries rather than returning with the next one appended (one read per append at
    /// moderate rates). The batch closes when it would have, with what arrived during a
    /// pause that its close cut short (one more read, not blocking).
    async fn gather_until(
        &self,
        mut batch: Vec<Entry>,
        mut short: bool,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<(Vec<Entry>, usize), String> {
        let mut rows: usize = batch.iter().map(entry_rows).fold(0, usize::saturating_add);
        let mut bytes: usize = batch.iter().map(Entry::byte_len).sum();
        let pause = self.cfg.read_pause.min(self.cfg.idle_block);
        while !self.cfg.is_full(rows, bytes) && !stop.load(Ordering::Relaxed) {
            if short && !pause.is_zero() {
                let left = deadline.saturating_duration_since(Instant::now());
                monoio::time::sleep(pause.min(left)).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if pause >= left {
                    let (last, _) = match self.read(None, self.count(rows, bytes)).await {
                        Ok(read) => read,
                        Err(e) => return Err(self.let_go(&batch, e)),
                    };
                    rows = rows.saturating_add(last.iter().map(entry_rows).sum::<usize>());
                    batch.extend(last);
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A long linger is waited out in reads of at most the idle block each.
            let block = left.min(self.cfg.idle_block);
            let (more, short_read) = match self.read(Some(block), self.count(rows, bytes)).await {
                Ok(read) => read,
                Err(e) => return Err(self.let_go(&batch, e)),
            };
            // An empty read blocked until the close or the idle block: nothing to pace.
            short = !more.is_empty() && short_read;
            rows = rows.saturating_add(more.iter().map(entry_rows).sum::<usize>());
            bytes = bytes.saturating_add(more.iter().map(Entry::byte_len).sum::<usize>());
            batch.extend(more);
        }
        Ok((batch, rows))
    }

    /// Lets go of a batch whose gathering a failed read cut short (returns the read's
    /// error). Its entries stay pending under the consumer's name: its own stream's are
    /// recovered after the failure, and the joined stream's are no longer in its hands,
    /// so that stream's consumer claims them once idle (left marked as held, every claim
    /// would give them back, and they would wait for a restart).
    fn let_go(&self, batch: &[Entry], error: String) -> String {
        let joined: Vec<&str> = batch.iter().filter(|e| e.stream != self.cfg.stream).map(|e| e.id.as_str()).collect();
        self.join.let_go(&joined);
        error
    }
}

impl Consumer {
    fn key(&self) -> &str {
        &self.cfg.key
    }

    /// The key `stream`'s entries in hand were read from: this consumer's, or the joined
    /// stream's ([`Join`]).
    fn key_of(&self, stream: StreamKind) -> &str {
        if stream == self.cfg.stream {
            return &self.cfg.key;
        }
        self.reader.join.key_of(stream).unwrap_or(&self.cfg.key)
    }

    /// The streams of `entries` (in hand: this consumer's, and the joined one's) with
    /// their keys and the entries' IDs, in order.
    fn by_key<'e>(&self, entries: impl Iterator<Item = &'e Entry>) -> Vec<(&str, Vec<&'e str>)> {
        let mut out: Vec<(StreamKind, Vec<&'e str>)> = Vec::new();
        for e in entries {
            match out.iter_mut().find(|(s, _)| *s == e.stream) {
                Some((_, ids)) => ids.push(e.id.as_str()),
                None => out.push((e.stream, vec![e.id.as_str()])),
            }
        }
        out.into_iter().map(|(s, ids)| (self.key_of(s), ids)).collect()
    }

    async fn fail(&mut self, e: &str) {
        tracing::warn!(
            consumer = %self.cfg.consumer,
            stream = self.key(),
            error = %e,
            retry_in_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
            "batch not committed; retrying"
        );
        // The retry goes to the next replica of every shard: the one that failed may be
        // down, or refusing (a read-only table whose ZooKeeper session is gone).
        for link in &mut self.ch {
            link.conn = None;
            link.next = link.next.wrapping_add(1);
        }
        // The group is gone (destroyed, or Redis lost its data): made again from the
        // stream's start (its entries inserted again are the same rows), here as by an
        // ingest shard's backlog reading, which a worker running alone does not have.
        if e.contains("NOGROUP") {
            self.make_groups().await;
        }
        monoio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
    }

    /// Creates the consumer group of each stream this consumer reads, from the stream's
    /// start, where it is missing.
    async fn make_groups(&self) {
        let mut keys = vec![self.key()];
        if let Some((_, key)) = self.reader.join.reading() {
            keys.push(key);
        }
        for key in keys {
            make_group(&self.redis, &self.cfg.consumer, key).await;
        }
    }

    async fn call(&self, c: Vec<u8>) -> Result<Frame, String> {
        redis_call(&self.redis, c).await
    }

    /// Deliveries after which an entry is dead-lettered unread: twice `max_deliveries`
    /// (the last half of them each a try of the entry alone).
    fn give_up_after(&self) -> u64 {
        self.cfg.max_deliveries.saturating_mul(2)
    }

    /// One page of this consumer's own pending entries, after setting apart the entries
    /// to try alone ([`Alone`]) and dead-lettering those delivered too often even for that.
    /// Empty, with entries set apart, when those are to be tried before the page is read.
    ///
    /// The entries are fetched by ID (`XPENDING` for IDs and counts, `XRANGE` for fields),
    /// which counts no delivery: neither a restart nor a failed read or claim is a try.
    /// After a start, the page's entries have their try counted on purpose
    /// ([`Consumer::count_tries`]); entries already delivered `max_deliveries` times are
    /// tried alone, and those delivered twice that are dead-lettered. After a read or claim
    /// failed in this process, the entries were delivered (and counted) by that call and
    /// never reached the consumer: that call was their try.
    async fn recover_page(&mut self, mode: Recovery) -> Result<Vec<Entry>, String> {
        let count = self.reader.page();
        let pending = self.own_pending(count).await?;
        if !pending.is_empty() {
            // Setting apart and giving up are decided on delivery counts: only while
            // ClickHouse answers, so that an outage ends no entry's tries (see `reachable`).
            self.reachable().await.map_err(|e| {
                format!("{e}; this consumer's pending entries are left pending until ClickHouse answers")
            })?;
        }
        let mut page = Vec::new();
        let mut tries = Vec::new();
        for (id, deliveries) in pending {
            // A resumed entry's failed read or claim counted a delivery it never saw.
            let done = if mode == Recovery::Resume { deliveries.saturating_sub(1) } else { deliveries };
            if done >= self.give_up_after() {
                let entry = self.fetch(&id).await?;
                let reason = format!("delivered {done} times without being acknowledged");
                self.dead_letter(&entry, DeadReason::MaxDeliveries, &reason).await?;
                self.ack(&[id.as_str()]).await?;
                continue;
            }
            if done >= self.cfg.max_deliveries {
                let deliveries = (mode != Recovery::Resume).then_some(deliveries);
                self.alone.push_back(Alone { id, entry: None, deliveries });
                continue;
            }
            if mode != Recovery::Resume {
                tries.push((id.clone(), deliveries));
            }
            page.push(id);
        }
        if mode != Recovery::Resume && !self.alone.is_empty() {
            // After a start the set-apart entries go first, one at a time.
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(page.len());
        for id in &page {
            entries.push(self.fetch(id).await?);
        }
        self.reader.size.observe(entries.iter().map(Entry::byte_len).max());
        self.tries = tries;
        self.tries_counted = false;
        Ok(entries)
    }

    /// A pending entry by ID (`XRANGE`, no delivery). An entry deleted from the stream
    /// (trimmed) comes back without fields: it is dead-lettered as such.
    async fn fetch(&self, id: &str) -> Result<Entry, String> {
        let got = self.call(cmd(&[b"XRANGE", self.key().as_bytes(), id.as_bytes(), id.as_bytes()])).await?;
        let stream = self.cfg.stream;
        Ok(entries::xrange_reply(got, stream)?.pop().unwrap_or(Entry { stream, id: id.to_owned(), fields: Vec::new() }))
    }

    /// The next entry set apart to be tried alone, as a batch of its own (fetched by ID;
    /// after a start its try is counted, see [`Consumer::count_tries`], so that an entry
    /// that kills its consumer every time reaches the limit).
    async fn next_alone(&mut self) -> Result<Vec<Entry>, String> {
        let Some(a) = self.alone.front() else { return Ok(Vec::new()) };
        let (id, deliveries) = (a.id.clone(), a.deliveries);
        let entry = match &a.entry {
            Some(e) => e.clone(),
            None => self.fetch(&id).await?,
        };
        self.alone.pop_front();
        self.tries = deliveries.map(|n| vec![(id.clone(), n)]).unwrap_or_default();
        self.tries_counted = false;
        tracing::info!(
            consumer = %self.cfg.consumer,
            stream = self.key(),
            id = %id,
            "entry delivered worker.max_deliveries times without being acknowledged: tried alone"
        );
        Ok(vec![entry])
    }

    /// Counts the try of the batch in hand's recovered entries (`tries`) as a delivery,
    /// just before it and only while ClickHouse answers: `XCLAIM ... RETRYCOUNT <n + 1>
    /// JUSTID`. A try that kills the consumer stays counted, so an entry that does so every
    /// time is set apart and at last given up on; one that comes back is given back
    /// ([`Consumer::give_back_tries`]).
    async fn count_tries(&mut self) -> Result<(), String> {
        if self.tries.is_empty() || self.tries_counted {
            return Ok(());
        }
        self.reachable().await?;
        self.set_tries(1).await?;
        self.tries_counted = true;
        Ok(())
    }

    /// After a try of the batch in hand failed (ClickHouse refused it as a whole, or could
    /// not be reached): the try was not the entries' fault — rows it refuses as bad data
    /// are dead-lettered, not retried — so their counts go back to what they were, and
    /// the retries of this batch in this process count none (a restart alone, or a
    /// systemic fault held through restarts, never moves an entry towards being set apart
    /// or dead-lettered).
    async fn give_back_tries(&mut self) {
        if !self.tries_counted {
            self.tries.clear();
            return;
        }
        match self.set_tries(0).await {
            Ok(()) => {
                self.tries.clear();
                self.tries_counted = false;
            }
            Err(e) => tracing::warn!(
                consumer = %self.cfg.consumer,
                stream = self.key(),
                error = %e,
                "cannot give back the deliveries of a failed try; giving them back after the next"
            ),
        }
    }

    /// Sets the delivery counts of `tries` to theirs plus `add`.
    async fn set_tries(&self, add: u64) -> Result<(), String> {
        self.set_deliveries(&self.tries, add).await
    }

    /// Sets the delivery counts of `entries` (id, count) in this consumer's stream to
    /// theirs plus `add` (`XCLAIM` to this consumer with `RETRYCOUNT`, `JUSTID`: no
    /// delivery counted by the call itself; their idle time starts again).
    async fn set_deliveries(&self, entries: &[(String, u64)], add: u64) -> Result<(), String> {
        let mut counts: Vec<u64> = entries.iter().map(|(_, n)| *n).collect();
        counts.sort_unstable();
        counts.dedup();
        for n in counts {
            let retries = n.saturating_add(add).to_string();
            let ids: Vec<&str> = entries.iter().filter(|(_, m)| *m == n).map(|(id, _)| id.as_str()).collect();
            for chunk in ids.chunks(1000) {
                let mut args: Vec<&[u8]> = vec![
                    b"XCLAIM",
                    self.key().as_bytes(),
                    CONSUMER_GROUP.as_bytes(),
                    self.cfg.consumer.as_bytes(),
                    b"0",
                ];
                args.extend(chunk.iter().map(|i| i.as_bytes()));
                args.extend([b"RETRYCOUNT".as_slice(), retries.as_bytes(), b"JUSTID"]);
                self.call(cmd(&args)).await?;
            }
        }
        Ok(())
    }

    /// `(id, deliveries)` of the first `count` entries in this consumer's pending list.
    async fn own_pending(&self, count: usize) -> Result<Vec<(String, u64)>, String> {
        // The consumer joins the group now, as a read of its history used to make it do:
        // `XINFO CONSUMERS` lists a worker as soon as it runs, not once it first got an
        // entry (a blocked `XREADGROUP` creates no consumer).
        let consumer = self.cfg.consumer.as_bytes();
        self.call(cmd(&[b"XGROUP", b"CREATECONSUMER", self.key().as_bytes(), CONSUMER_GROUP.as_bytes(), consumer]))
            .await?;
        let count = count.to_string();
        let reply = self
            .call(cmd(&[
                b"XPENDING",
                self.key().as_bytes(),
                CONSUMER_GROUP.as_bytes(),
                b"-",
                b"+",
                count.as_bytes(),
                self.cfg.consumer.as_bytes(),
            ]))
            .await?;
        entries::xpending_reply(reply)
    }

    /// Entries idle in other consumers' pending lists, now ours, from where the last
    /// claim left off; `more` is set when the scan stopped at a full page.
    ///
    /// The entries come with their fields in the `XAUTOCLAIM` reply, which is the
    /// delivery (it counts one); they are not read again. Entries the reply reports as
    /// deleted from the stream while pending (Redis 7 drops them from the pending list)
    /// are dead-lettered by ID, so what was lost can be seen.
    async fn claim(&mut self, more: &mut bool) -> Result<Vec<Entry>, String> {
        let idle = self.cfg.claim_idle.as_millis().to_string();
        let count = self.reader.page();
        let count_arg = count.to_string();
        // What the events consumer acknowledges while the claim is out is still in its
        // reply, inserted already: kept until the claimed entries are sorted below.
        self.reader.join.claim_sent();
        let reply = self
            .call(cmd(&[
                b"XAUTOCLAIM",
                self.key().as_bytes(),
                CONSUMER_GROUP.as_bytes(),
                self.cfg.consumer.as_bytes(),
                idle.as_bytes(),
                self.claim_cursor.as_bytes(),
                b"COUNT",
                count_arg.as_bytes(),
            ]))
            .await;
        let claimed = reply.and_then(|r| entries::xautoclaim_reply(r, self.cfg.stream));
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                self.reader.join.claim_read();
                return Err(e);
            }
        };
        // Sorted now, before anything awaited lets the events consumer acknowledge more.
        let held_ids: Vec<bool> = claimed.entries.iter().map(|e| self.reader.join.held_by_reader(&e.id)).collect();
        self.reader.join.claim_read();
        self.reader.size.observe(claimed.entries.iter().map(Entry::byte_len).max());
        *more = claimed.cursor != "0-0" && claimed.entries.len() + claimed.deleted.len() >= count;
        self.claim_cursor = claimed.cursor;
        if !claimed.deleted.is_empty() {
            tracing::warn!(
                consumer = %self.cfg.consumer,
                stream = self.key(),
                count = claimed.deleted.len(),
                ids = %claimed.deleted.join(" "),
                "pending entries deleted from the stream before being consumed (dead-lettered by id)"
            );
        }
        if claimed.unnamed_deleted > 0 {
            tracing::warn!(
                consumer = %self.cfg.consumer,
                stream = self.key(),
                count = claimed.unnamed_deleted,
                "pending entries deleted from the stream before being consumed, which this Redis (6.2) does not \
                 name: they stay pending to this consumer and are dead-lettered by id at its next start"
            );
        }
        // Already gone from the pending list (nothing to acknowledge), so kept here until
        // their dead letters are written, across failures.
        self.deleted.extend(claimed.deleted);
        self.dead_letter_deleted().await?;
        if claimed.entries.is_empty() {
            return Ok(claimed.entries);
        }
        // Claiming counted one delivery; entries that keep killing consumers are tried
        // alone, and stop here once delivered too often even for that.
        let deliveries = self.deliveries(&claimed.entries).await?;
        // Custom entries the events consumer of this shard has in hand (its inserts
        // failing long enough for them to be idle): still its to insert, under the same
        // consumer name. Left to it, with the delivery this claim counted given back.
        // (Also those it acknowledged while the claim was out: inserted already.)
        let mut held = Vec::new();
        let mut entries = Vec::with_capacity(claimed.entries.len());
        for (e, is_held) in claimed.entries.into_iter().zip(held_ids) {
            if is_held {
                held.push(e);
            } else {
                entries.push(e);
            }
        }
        if !held.is_empty() {
            let back: Vec<(String, u64)> = deliveries
                .iter()
                .filter(|(id, _)| held.iter().any(|e| e.id == *id))
                .map(|(id, n)| (id.clone(), n.saturating_sub(1)))
                .collect();
            self.set_deliveries(&back, 0).await?;
        }
        let mut ours = Vec::with_capacity(entries.len());
        for e in entries {
            match deliveries.iter().find(|(id, _)| *id == e.id) {
                Some(&(_, n)) if n > self.give_up_after() => {
                    let reason = format!("delivered {} times without being acknowledged", n - 1);
                    self.dead_letter(&e, DeadReason::MaxDeliveries, &reason).await?;
                    self.ack(&[e.id.as_str()]).await?;
                }
                Some(&(_, n)) if n > self.cfg.max_deliveries => {
                    self.alone.push_back(Alone { id: e.id.clone(), entry: Some(e), deliveries: None });
                }
                _ => ours.push(e),
            }
        }
        Ok(ours)
    }

    /// While a systemic fault stalls the batch in hand (and the one read ahead), marks
    /// their entries as being worked on (`XCLAIM ... JUSTID` to this consumer: their idle
    /// time restarts, their delivery count does not grow) about three times per
    /// `claim_idle`. Other consumers would otherwise claim them, meet the same fault and
    /// count a delivery each time, until the entries were dead-lettered as delivered too
    /// often. Failures to connect to ClickHouse do not keep: there another worker may well
    /// succeed, and claiming is how it takes over (a worker that cannot reach ClickHouse
    /// either claims nothing, see [`Consumer::reachable`]).
    async fn keep(&mut self, batch: &[Entry], next: Option<&[Entry]>) {
        if self.kept_at.elapsed() < self.cfg.claim_idle / 3 {
            return;
        }
        self.kept_at = Instant::now();
        for (key, ids) in self.by_key(batch.iter().chain(next.unwrap_or_default())) {
            for chunk in ids.chunks(1000) {
                let mut args: Vec<&[u8]> =
                    vec![b"XCLAIM", key.as_bytes(), CONSUMER_GROUP.as_bytes(), self.cfg.consumer.as_bytes(), b"0"];
                args.extend(chunk.iter().map(|i| i.as_bytes()));
                args.push(b"JUSTID");
                if let Err(e) = self.call(cmd(&args)).await {
                    tracing::warn!(consumer = %self.cfg.consumer, stream = key, error = %e, "cannot keep the stalled batch");
                    return;
                }
            }
        }
    }

    /// Writes the dead letters of entries Redis reported deleted while pending.
    async fn dead_letter_deleted(&mut self) -> Result<(), String> {
        while let Some(id) = self.deleted.last() {
            let gone = Entry { stream: self.cfg.stream, id: id.clone(), fields: Vec::new() };
            self.dead_letter(&gone, DeadReason::Deleted, super::sink::DELETED_WHILE_PENDING).await?;
            self.deleted.pop();
        }
        Ok(())
    }

    /// Delivery counts of `entries` in this consumer's pending list: claimed entries come
    /// in ID order, with entries of ours in between (the custom consumer's list also holds
    /// what the events consumer read of its stream), so the range is read page by page
    /// until every entry is found or the range ends.
    async fn deliveries(&self, entries: &[Entry]) -> Result<Vec<(String, u64)>, String> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(Vec::new()) };
        let page = entries.len() + 64;
        let count = page.to_string();
        let wanted: std::collections::HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut found = Vec::with_capacity(entries.len());
        let mut from = first.id.clone();
        loop {
            let reply = self
                .call(cmd(&[
                    b"XPENDING",
                    self.key().as_bytes(),
                    CONSUMER_GROUP.as_bytes(),
                    from.as_bytes(),
                    last.id.as_bytes(),
                    count.as_bytes(),
                    self.cfg.consumer.as_bytes(),
                ]))
                .await?;
            let read = entries::xpending_reply(reply)?;
            let next = match read.last() {
                Some((id, _)) if read.len() >= page => StreamId::parse(id.as_bytes()).and_then(StreamId::next),
                _ => None,
            };
            found.extend(read.into_iter().filter(|(id, _)| wanted.contains(id.as_str())));
            match next {
                Some(n) if found.len() < wanted.len() => n.write_to(&mut from),
                _ => return Ok(found),
            }
        }
    }

    /// Whether ClickHouse answers now: a replica of every shard connected (its handshake
    /// answered) and answering a ping.
    ///
    /// Every way a consumer takes pending entries from others — a claim — and every try of
    /// a recovered entry counts a delivery in the group, and those counts set entries apart
    /// and dead-letter them. So those happen only right after ClickHouse answered: while it
    /// cannot be reached (connection refused, timed out, its name not resolved) entries
    /// stay where they are, and the counts stay those of real tries.
    ///
    /// A probe: each connect and ping waits at most [`PROBE_TIMEOUT`] (or the configured
    /// timeout when shorter), a connection that fails its ping (closed by the server while
    /// idle) is replaced once before ClickHouse is taken as unreachable, and a stopping
    /// worker probes no further.
    async fn reachable(&mut self) -> Result<(), String> {
        for s in 0..self.ch.len() {
            let mut fresh = false;
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return Err("the worker is stopping".into());
                }
                if self.ch[s].conn.is_none() {
                    self.connect_shard(s, true).await.map_err(|e| format!("ClickHouse cannot be reached: {e}"))?;
                    fresh = true;
                }
                let Some(conn) = self.ch[s].conn.as_mut() else { break };
                let full = conn.timeout();
                conn.set_timeout(full.min(PROBE_TIMEOUT));
                let pinged = conn.ping().await;
                conn.set_timeout(full);
                match pinged {
                    Ok(()) => break,
                    Err(e) => {
                        self.ch[s].conn = None;
                        if fresh {
                            return Err(format!("ClickHouse cannot be reached: {e}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Connects to a replica of every shard not connected.
    async fn connection(&mut self) -> Result<(), String> {
        for s in 0..self.ch.len() {
            if self.ch[s].conn.is_none() {
                self.connect_shard(s, false).await?;
            }
        }
        Ok(())
    }

    /// Connects shard `s` to its next replica that answers (`probe`: waiting at most
    /// [`PROBE_TIMEOUT`] for each; the connection then waits the configured timeout).
    async fn connect_shard(&mut self, s: usize, probe: bool) -> Result<(), String> {
        let Some(opts) = self.cfg.shards.get(s) else { return Err(format!("no options for shard {s}")) };
        let Some(start) = self.ch.get(s).map(|l| l.next) else { return Err(format!("no link for shard {s}")) };
        let (mut ch, replica) = if probe {
            let mut quick = opts.clone();
            quick.timeout = opts.timeout.min(PROBE_TIMEOUT);
            let (mut ch, replica) = Connection::connect_from(&quick, start).await.map_err(|e| e.to_string())?;
            ch.set_timeout(opts.timeout);
            (ch, replica)
        } else {
            Connection::connect_from(opts, start).await.map_err(|e| e.to_string())?
        };
        // On a cluster, a node listed under another shard than its own takes no row.
        let checked = match &self.cfg.cluster {
            Some(name) => {
                let addr = opts.addrs().get(replica).copied().unwrap_or_default().to_owned();
                cluster::check_node(&mut ch, &addr, s, self.cfg.shards.len(), name).await
            }
            None => Ok(()),
        };
        let Some(link) = self.ch.get_mut(s) else { return Err(format!("no link for shard {s}")) };
        if let Err(e) = checked {
            // The next attempt starts at the next replica.
            link.next = replica + 1;
            return Err(e.to_string());
        }
        link.next = replica;
        // Months are told apart in UTC; elsewhere a month's neighbours are reserved too.
        let limit = self.sink.partition_limit();
        self.sink.set_partition_limit(limit, !is_utc(&ch.server().timezone));
        link.conn = Some(ch);
        Ok(())
    }

    /// Drops the connections (after an error that leaves them unusable) without moving to
    /// other replicas.
    fn disconnect(&mut self) {
        for link in &mut self.ch {
            link.conn = None;
        }
    }

    /// After ClickHouse refused a block for spanning too many partitions (`named`: the
    /// limit it said): blocks span fewer from now on. False when they cannot.
    fn lower_partition_limit(&mut self, named: Option<usize>) -> bool {
        let now = self.sink.partition_limit();
        let lower = match named {
            Some(n) if n >= 1 && n < now => n,
            _ => now / 2,
        };
        if lower == 0 || lower >= now {
            return false;
        }
        tracing::warn!(
            consumer = %self.cfg.consumer,
            stream = self.key(),
            refused = now,
            now_at_most = lower,
            "ClickHouse refused a block spanning that many partitions; blocks now span fewer (set \
             clickhouse.max_partitions_per_block to match the server's max_partitions_per_insert_block)"
        );
        let utc = self.ch.iter().filter_map(|l| l.conn.as_ref()).all(|c| is_utc(&c.server().timezone));
        self.sink.set_partition_limit(lower, !utc);
        true
    }

    /// Inserts `batch`, dead-letters what cannot be inserted, then acknowledges all of it.
    ///
    /// `progress` carries what earlier attempts at the same batch settled: entries whose
    /// rows ClickHouse confirmed (and unreadable entries found on the way) are not sent
    /// again, so a batch stalled by the refusal breaker or a failing server does not
    /// insert its good rows once per retry; and of the others, what a shard confirmed
    /// already (`events` rows stored, their `user_days` insert failed) is not sent to it
    /// again either.
    async fn commit(&mut self, batch: &[Entry], progress: &mut Progress) -> Result<(), String> {
        self.systemic = false;
        // Entries ClickHouse refused one by one in this attempt: dead-lettered only if the
        // attempt ends without tripping the breaker; otherwise retried with the rest.
        let mut refused: Vec<Poison> = Vec::new();
        // Bisect on bad data: halves that insert commit; single entries that fail are poison.
        // So, after a few attempts, for exceptions rows raise (a view's `throwIf`).
        let bisect_raised = progress.raised_by_rows >= BISECT_AFTER_REFUSALS;
        let mut todo: Vec<Vec<usize>> = vec![progress.unsettled()];
        let table = Table::of(self.cfg.stream);
        if let (StreamKind::Payments, Some(agg)) = (self.cfg.stream, self.agg.clone()) {
            // Before the rows replace them: the days orders of this batch are on now. The
            // look-up is never fatal: without its answer the batch's days' neighbours are
            // recomputed too.
            match self.moved_orders_days(batch, &todo[0]).await {
                Ok(days) => {
                    // Marked unwritten in Redis before the insert (not computed: that
                    // comes once it is confirmed): once the new rows are in and merged, no
                    // look-up finds the day an order left, so a worker killed between the
                    // insert and its flush would leave that day counting the order. No
                    // insert without the mark.
                    agg.mark_revenue_unwritten(&days)
                        .await
                        .map_err(|e| format!("the days the batch's orders are on not marked unwritten: {e}"))?;
                    self.sink.note_revenue_days(days);
                }
                Err(e) => {
                    tracing::warn!(
                        consumer = %self.cfg.consumer,
                        stream = self.key(),
                        error = %e,
                        "could not ask ClickHouse which days the batch's orders are on; the payments are \
                         inserted anyway and the day before and after each of their days is recomputed too"
                    );
                    self.sink.recompute_neighbour_days();
                }
            }
        }
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            if let Err(e) = self.connection().await {
                self.metrics.emit(InsertFailed { table });
                return Err(e);
            }
            let mut conns: Vec<&mut Connection> = self.ch.iter_mut().filter_map(|l| l.conn.as_mut()).collect();
            let started = Instant::now();
            let inserted = self.sink.insert(&mut conns, batch, &part, &mut progress.confirmed).await;
            if inserted.is_err() {
                self.metrics.emit(InsertFailed { table });
            }
            match inserted {
                Ok(p) => {
                    if self.metrics.enabled() {
                        count_inserted(&self.metrics, table, batch, &part, &p, started.elapsed());
                    }
                    progress.settle(&part, p);
                    self.refused_in_a_row = 0;
                }
                Err(e) if e.too_many_partitions().is_some() => {
                    // Not the rows' fault: keep the blocks apart (the server joined them), or
                    // once they are, split them finer, and insert again.
                    let named = e.too_many_partitions().flatten();
                    self.disconnect();
                    if !self.sink.blocks_apart() {
                        tracing::warn!(
                            consumer = %self.cfg.consumer,
                            stream = self.key(),
                            "ClickHouse joined an insert's blocks and refused the partitions they span; \
                             inserts now keep their blocks apart"
                        );
                        self.sink.keep_blocks_apart();
                    } else if !self.lower_partition_limit(named) {
                        self.systemic = true;
                        return Err(e.to_string());
                    }
                    todo.push(part);
                }
                Err(e) if e.is_bad_data() || (bisect_raised && e.is_raised_by_rows()) => {
                    self.disconnect();
                    if let [index] = part[..] {
                        let max = self.cfg.max_refused_per_batch;
                        // This attempt's refusals, and those dead-lettered since the last
                        // insert ClickHouse took (counted once settled: a retry of a batch
                        // does not count its entries again).
                        if refused.len().saturating_add(self.refused_in_a_row) >= max {
                            // Entries were validated at ingest: this many refusals is a fault
                            // of the stream (schema, server, this client), not of its rows.
                            self.systemic = true;
                            return Err(format!(
                                "ClickHouse refused more than {max} entries one by one (of a batch of {}, or \
                                 in a row since its last insert; last: {e}); that looks systemic, not bad rows: \
                                 nothing more is dead-lettered, the batch is retried (worker.max_refused_per_batch)",
                                batch.len()
                            ));
                        }
                        let reason = refusal_reason(&progress.confirmed, index, &e);
                        refused.push(Poison { index, cause: DeadReason::Rejected, reason });
                    } else {
                        let (a, b) = part.split_at(part.len() / 2);
                        todo.push(b.to_vec());
                        todo.push(a.to_vec());
                    }
                }
                Err(e) => {
                    // Faults every consumer would meet: the schema, or the server answering
                    // and refusing for its own state ([`ChError::is_server_state`]): another
                    // consumer claiming the entries would only count deliveries towards
                    // dead-lettering them unread. Not being able to reach the server is
                    // not (another worker may well reach it), nor a refusal that may be the
                    // batch's (a memory or size limit, a timeout): its deliveries grow, and
                    // it is tried alone in the end. An exception rows raise (a view's
                    // `throwIf`) is retried, then bisected (`BISECT_AFTER_REFUSALS`).
                    self.systemic = matches!(&e, ChError::SchemaMismatch(_)) || e.is_server_state();
                    if e.is_raised_by_rows() {
                        progress.raised_by_rows = progress.raised_by_rows.saturating_add(1);
                        return Err(format!(
                            "{e} (the batch refused whole {} time(s); after {BISECT_AFTER_REFUSALS} it is \
                             bisected, and the entries refused alone are dead-lettered)",
                            progress.raised_by_rows
                        ));
                    }
                    return Err(e.to_string());
                }
            }
        }
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(refused.len());
        for p in refused {
            progress.settle(&[p.index], vec![p]);
        }
        // The batch's players go into Redis before its entries are acknowledged: an
        // acknowledged entry is never missing from the figures.
        if let Some(agg) = &self.agg {
            // The days of its payments too: marked unwritten in Redis by the flush.
            agg.revenue_confirmed(self.sink.take_revenue_days());
            agg.flush().await?;
        }
        // In batch order, each forgotten once written: a retry does not write it twice.
        while let Some(p) = progress.poison.last() {
            self.dead_letter(&batch[p.index], p.cause, &p.reason).await?;
            progress.poison.pop();
        }
        for (key, ids) in self.by_key(batch.iter()) {
            if key == self.key() {
                self.ack_on(key, &ids).await?;
                continue;
            }
            self.ack_joined(key, &ids).await?;
            self.reader.join.released(&ids);
        }
        Ok(())
    }

    /// The days on which `payments` already holds the orders of `batch[i]`, `i` in
    /// `which`, for the revenue recompute after this batch commits: an order sent again
    /// with another time (a retry re-stamped after midnight) replaces its row and leaves its
    /// earlier day, whose revenue must drop it. Asked before the insert, when the earlier
    /// row is certainly there (a merge after the insert keeps the new row).
    async fn moved_orders_days(
        &mut self,
        batch: &[Entry],
        which: &[usize],
    ) -> Result<Vec<(String, String, u32)>, String> {
        let orders = self.sink.payment_orders(batch, which);
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        self.connection().await?;
        // `analytics.payments` (Distributed on a cluster: every shard) from any shard's node.
        let Some(ch) = self.ch.first_mut().and_then(|l| l.conn.as_mut()) else {
            return Err("no ClickHouse connection".into());
        };
        match crate::clickhouse::aggregates::order_days(ch, &orders).await {
            Ok(days) => Ok(days),
            Err(e) => {
                self.disconnect();
                Err(e.to_string())
            }
        }
    }

    /// Moves `e` to the dead-letter stream with `reason`. That stream is never trimmed:
    /// its entries are what an operator must see (and delete when handled).
    async fn dead_letter(&self, e: &Entry, cause: DeadReason, reason: &str) -> Result<(), String> {
        // Redis keeps no entry without fields: one that comes back without them was deleted
        // from the stream while pending, whatever found it (a claim, a recovery, a try past
        // the delivery limit). Its rows are lost, and it is said so.
        let (cause, reason) = if e.fields.is_empty() {
            (DeadReason::Deleted, super::sink::DELETED_WHILE_PENDING)
        } else {
            (cause, reason)
        };
        let key = self.key_of(e.stream);
        let dead = dead_letter_key(key);
        tracing::warn!(consumer = %self.cfg.consumer, stream = key, id = %e.id, to = %dead, reason, "dead-lettered");
        let mut args: Vec<&[u8]> =
            vec![b"XADD", dead.as_bytes(), b"*", b"reason", reason.as_bytes(), b"source_id", e.id.as_bytes()];
        for (k, v) in &e.fields {
            args.push(k);
            args.push(v);
        }
        self.call(cmd(&args)).await?;
        self.metrics.emit(DeadLettered { stream: e.stream, reason: cause });
        Ok(())
    }

    /// Acknowledges entries `ids` of this consumer's stream.
    async fn ack(&self, ids: &[&str]) -> Result<(), String> {
        self.ack_on(self.key(), ids).await
    }

    /// Acknowledges entries `ids` of the joined stream `key` (their rows are stored). A
    /// key that now holds another type (`WRONGTYPE`; the stream was deleted, and its entries
    /// with it) has nothing left to acknowledge: logged and passed over, so that a broken
    /// custom stream does not hold the events stream's batch back. Any other failure is
    /// the batch's, as for its own entries.
    async fn ack_joined(&self, key: &str, ids: &[&str]) -> Result<(), String> {
        match self.ack_on(key, ids).await {
            Err(e) if e.starts_with("Redis: WRONGTYPE") => {
                tracing::warn!(
                    consumer = %self.cfg.consumer,
                    stream = key,
                    count = ids.len(),
                    error = %e,
                    "the stream of these inserted entries is gone (its key holds another type): nothing to acknowledge"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Acknowledges entries `ids` of stream `key`.
    async fn ack_on(&self, key: &str, ids: &[&str]) -> Result<(), String> {
        for chunk in ids.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"XACK", key.as_bytes(), CONSUMER_GROUP.as_bytes()];
            args.extend(chunk.iter().map(|i| i.as_bytes()));
            self.call(cmd(&args)).await?;
        }
        Ok(())
    }
}

/// What attempts at committing one batch have settled so far, kept across its retries.
#[derive(Debug, Default)]
struct Progress {
    /// Per entry of the batch: its rows were confirmed by ClickHouse, or it has none
    /// (poison); either way it is not sent again.
    settled: Vec<bool>,
    /// Settled entries still to be dead-lettered, the last in the batch first (they are
    /// written from the end of this list).
    poison: Vec<Poison>,
    /// Of the entries not settled, what each shard confirmed already (their `events` rows
    /// stored, their `user_days` insert failed): not sent to it again.
    confirmed: Confirmed,
    /// Attempts at the batch refused whole with an exception rows raise
    /// ([`ChError::is_raised_by_rows`]): once there were [`BISECT_AFTER_REFUSALS`], the
    /// next attempt bisects such a refusal like bad data.
    raised_by_rows: u32,
}

/// Attempts of a batch refused whole with an exception rows raise (an operator's view
/// calling `throwIf`) before the next bisects it like bad data: the third attempt is
/// bisected, so rows a view refuses cannot stall the stream for good (no consumer would
/// claim them: each is busy retrying its own batch).
const BISECT_AFTER_REFUSALS: u32 = 2;

impl Progress {
    /// Nothing settled yet of a batch of `len` entries, inserted on `shards` shards.
    fn new(len: usize, shards: usize) -> Progress {
        Progress {
            settled: vec![false; len],
            poison: Vec::new(),
            confirmed: Confirmed::new(len, shards),
            raised_by_rows: 0,
        }
    }

    /// The entries still to insert, in batch order.
    fn unsettled(&self) -> Vec<usize> {
        self.settled.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect()
    }

    /// Entries `part` are settled: ClickHouse confirmed their rows, except for `poison`,
    /// which had none to give.
    fn settle(&mut self, part: &[usize], poison: Vec<Poison>) {
        for &i in part {
            if let Some(s) = self.settled.get_mut(i) {
                *s = true;
            }
        }
        self.poison.extend(poison);
        self.poison.sort_by_key(|p| std::cmp::Reverse(p.index));
        self.poison.dedup_by_key(|p| p.index);
    }
}

/// Counts an insert ClickHouse confirmed: the rows of the entries `part` of `batch` that
/// were not `poison`, the insert's duration, and each entry's delay since Redis appended
/// it (its id's time, when ingest accepted it).
fn count_inserted(m: &ShardWriter, table: Table, batch: &[Entry], part: &[usize], poison: &[Poison], took: Duration) {
    let now = crate::ingest::now_ms();
    let mut rows = 0u64;
    for &i in part {
        if poison.iter().any(|p| p.index == i) {
            continue;
        }
        let Some(e) = batch.get(i) else { continue };
        let n = entry_rows(e) as u64;
        rows = rows.saturating_add(n);
        let delay_ms = u64::try_from(now.saturating_sub(entry_ms(&e.id))).unwrap_or(0);
        m.emit(EventsDelayed { table, delay_ms, count: n });
    }
    m.emit(RowsInserted { table, rows, duration: took });
}

/// The dead-letter reason of entry `index`, refused alone by ClickHouse with `e`: what of
/// its rows may be stored all the same, so that whoever replays it knows they collapse into
/// the stored ones.
fn refusal_reason(confirmed: &Confirmed, index: usize, e: &ChError) -> String {
    let (stored_on, shards) = confirmed.table_rows_stored_on(index);
    if confirmed.table_rows_stored(index) {
        // Every shard stored its rows: its `user_days` rows were refused. Dead-lettered all
        // the same (a stall would stop the stream for good), saying that its rows are in
        // the table, so that replaying it adds its player-days and collapses into them.
        format!("its rows are stored; its user_days rows were rejected by ClickHouse: {e}")
    } else if stored_on > 0 {
        // On a cluster, shards before the refusing one confirmed their part of its rows
        // (a view's exception may have come after the refusing shard wrote its own too).
        let least = if e.is_raised_by_rows() { "at least " } else { "" };
        format!(
            "rejected by ClickHouse (its rows are stored on {least}{stored_on} of {shards} shards, not in user_days \
             nor the real-time figures): {e}"
        )
    } else if e.is_raised_by_rows() {
        // ClickHouse writes the table before its views: the rows may be in it; a replay
        // collapses into them.
        format!(
            "rejected by ClickHouse (raised while the rows were written: they may be stored in the table, not in \
             the real-time figures): {e}"
        )
    } else {
        format!("rejected by ClickHouse: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead letter says what of its rows is stored: every shard's (its `user_days` rows
    /// were refused), some shards' (a later shard refused them), or none.
    #[test]
    fn a_refusal_reason_says_which_rows_are_stored() {
        let e = ChError::Server(croupier_protocol::clickhouse::packet::ServerException {
            code: 6,
            name: "DB::Exception".into(),
            message: "Cannot parse".into(),
            stack_trace: String::new(),
            nested: None,
        });
        let mut c = Confirmed::new(2, 3);
        for s in 0..3 {
            c.note_routed(0, s);
        }
        c.note_routed(1, 2);
        assert!(refusal_reason(&c, 0, &e).starts_with("rejected by ClickHouse: "));
        c.raise_for_test(&[0], 0);
        c.raise_for_test(&[0], 1);
        assert!(refusal_reason(&c, 0, &e).starts_with("rejected by ClickHouse (its rows are stored on 2 of 3 shards"));
        c.raise_for_test(&[0], 2);
        assert!(refusal_reason(&c, 0, &e).starts_with("its rows are stored; its user_days rows were rejected"));
        assert!(refusal_reason(&c, 1, &e).starts_with("rejected by ClickHouse: "));
        // Entry 1 has rows on shard 2 alone: shards 0 and 1 confirming nothing of it are
        // not said to store its rows.
        c.raise_for_test(&[1], 0);
        c.raise_for_test(&[1], 1);
        assert!(refusal_reason(&c, 1, &e).starts_with("rejected by ClickHouse: "), "{}", refusal_reason(&c, 1, &e));
    }

    fn config(read_count: usize, batch_rows: usize, batch_bytes: usize, max_entry_bytes: usize) -> ConsumerConfig {
        ConsumerConfig {
            stream: StreamKind::Events,
            key: StreamKind::Events.key().to_owned(),
            consumer: "t-0".into(),
            read_count,
            batch_rows,
            batch_bytes,
            max_entry_bytes,
            linger: Duration::from_millis(200),
            insert_interval: Duration::from_millis(600),
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 5,
            backoff_max: Duration::from_secs(5),
            max_refused_per_batch: 10,
            idle_block: Duration::from_secs(1),
            read_pause: Duration::from_millis(25),
            partitions_per_block: 100,
            clickhouse: ChOptions {
                addr: String::new(),
                database: String::new(),
                user: String::new(),
                password: Default::default(),
                compression: false,
                timeout: Duration::from_secs(1),
            },
            shards: Vec::new(),
            cluster: None,
        }
    }

    #[test]
    fn the_clickhouse_password_is_not_in_debug() {
        let mut c = config(10, 10, 1 << 20, 1 << 20);
        c.clickhouse.password = "hunter2".into();
        c.shards = vec![c.clickhouse.clone()];
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("ChOptions"), "{d}");
    }

    #[test]
    fn breaker_retry_sends_only_what_clickhouse_did_not_confirm() {
        let mut p = Progress::new(6, 1);
        assert_eq!(p.unsettled(), vec![0, 1, 2, 3, 4, 5]);
        // A half confirmed (entry 1 had no rows), then the breaker trips: 2, 3, 5 are left.
        let unreadable = |index| Poison { index, cause: DeadReason::Undecodable, reason: "bad".into() };
        p.settle(&[0, 1], vec![unreadable(1)]);
        p.settle(&[4], Vec::new());
        assert_eq!(p.unsettled(), vec![2, 3, 5]);
        p.settle(&[2, 3, 5], vec![unreadable(5), unreadable(1)]);
        assert!(p.unsettled().is_empty());
        // Dead-lettered from the end of the list: batch order, each once.
        assert_eq!(p.poison.iter().rev().map(|x| x.index).collect::<Vec<_>>(), vec![1, 5]);
    }

    #[test]
    fn m7_a_read_asks_for_no_more_than_fits_the_byte_budget() {
        // Defaults: 64 MiB per batch; sized for entries of ~11.3 MiB: 5 entries per read.
        let max = (10 << 20) + 10_000 * 128 + 4096;
        let c = config(200, 200_000, 64 << 20, max);
        assert_eq!(c.read_count(0, 0, max, 1), 5);
        assert!(c.read_count(0, 0, max, 1) * max <= c.batch_bytes);
        // As the batch fills, fewer; never zero (a batch always progresses).
        assert_eq!(c.read_count(0, 40 << 20, max, 1), 2);
        assert_eq!(c.read_count(0, 63 << 20, max, 1), 1);
        assert_eq!(c.read_count(0, usize::MAX, max, 1), 1);
        assert_eq!(c.read_count(0, 0, 0, 1), 200);
        // Small entries: `read_count` bounds it.
        assert_eq!(c.read_count(0, 0, 64 << 10, 1), 200);
        // Rows still wanted bound it too: every entry holds at least one row.
        assert_eq!(c.read_count(199_990, 0, 64 << 10, 1), 10);
        // Two streams read at once (events with custom) share what is left: each gets half.
        assert_eq!(c.read_count(0, 0, max, 2), 2);
        assert!(2 * c.read_count(0, 0, max, 2) * max <= c.batch_bytes);
        assert_eq!(c.read_count(199_990, 0, 64 << 10, 2), 5);
        assert_eq!(c.read_count(0, 0, 64 << 10, 2), 100, "the worst case stays read_count largest entries");
        assert!(c.is_full(200_000, 0) && c.is_full(0, 64 << 20) && !c.is_full(199_999, (64 << 20) - 1));
    }
}
