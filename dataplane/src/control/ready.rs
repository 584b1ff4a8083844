//! Readiness of the process as the control port reports it (`/readyz`): each component
//! it depends on, whether it is fine, and what failed.
//!
//! - `redis`: no reply is overdue (owed for a quarter of `redis.reply_timeout_ms`) on
//!   the control thread's connection or an ingest shard's, the control thread's own
//!   connection is up and reads the streams, and every ingest shard is connected and has
//!   read the streams since, and none has had its last append refused by Redis within the
//!   reply timeout (what its data port's `/readyz` asks); an overdue reply is reported at
//!   once, without asking Redis;
//! - `clickhouse` (processes that run workers): a connection answers a ping, on every
//!   shard of `clickhouse.shards` (any of its replicas);
//! - `streams` (processes that run ingest): no stream's backlog is at its high-water
//!   mark, where ingest refuses with 503 `backlog_full`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::{Config, StreamLimits};
use croupier_control::metrics::{Encoder, Kind, Registry, Table};
use croupier_protocol::cluster::Partitions;

use super::streams::{self, StreamReading};
use crate::clickhouse::connection::{ChOptions, Connection};
use crate::http::response::json_string;
use crate::redis::backlog::every_stream_somewhere;
use crate::redis::connection::{RedisClient, RedisOptions};
use crate::redis::overdue::RedisHealth;

/// One component's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// `redis`, `clickhouse` or `streams`.
    pub name: &'static str,
    /// What is wrong, if anything.
    pub error: Option<String>,
}

/// Every component's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// In a fixed order.
    pub components: Vec<Component>,
}

impl Readiness {
    /// Whether every component is fine.
    pub fn ready(&self) -> bool {
        self.components.iter().all(|c| c.error.is_none())
    }

    /// `{"ready":bool,"components":{"redis":{"ok":true},"clickhouse":{"ok":false,"error":"..."}}}`.
    pub fn body(&self) -> String {
        let mut out = format!(r#"{{"ready":{},"components":{{"#, self.ready());
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match &c.error {
                None => out.push_str(&format!(r#""{}":{{"ok":true}}"#, c.name)),
                Some(e) => out.push_str(&format!(r#""{}":{{"ok":false,"error":{}}}"#, c.name, json_string(e))),
            }
        }
        out.push_str("}}");
        out
    }
}

/// How often [`Probes::watch_clickhouse`] pings ClickHouse for `/metrics`.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// How long inserts may fail with no row inserted before ClickHouse is not ready
/// ([`InsertWatch`]).
const STALLED_AFTER: Duration = Duration::from_secs(15);

/// What the readiness remembers of the workers' inserts between two looks (every
/// [`WATCH_EVERY`] and at each probe): a worker whose every insert fails while ClickHouse
/// answers pings (a table read-only, too many parts, a full disk) stalls its streams; so
/// once no row was inserted for [`STALLED_AFTER`] since an insert failed, and one failed
/// within the last `window`, ClickHouse is not ready.
#[derive(Debug, Default)]
struct InsertWatch {
    /// The counters at the last look.
    rows: u64,
    failed: u64,
    /// The first failure with no row inserted since, and the failures counted then.
    since: Option<(Instant, u64)>,
    /// The last look that saw a new failure.
    last_failure: Option<Instant>,
}

impl InsertWatch {
    /// Takes a table's counters `(rows, failed)` at `now`; why its inserts are stalled, if
    /// they are.
    fn look(&mut self, (rows, failed): (u64, u64), now: Instant, window: Duration) -> Option<String> {
        let progressed = rows != self.rows;
        let new_failure = failed != self.failed;
        if new_failure {
            self.last_failure = Some(now);
        }
        // A row inserted ends a stall, and so does a window without a failure (a poison
        // entry dead-lettered, then nothing to insert): a later failure starts anew.
        let quiet = self.last_failure.is_none_or(|f| now.saturating_duration_since(f) >= window);
        if progressed || quiet {
            self.since = None;
        }
        if new_failure && !progressed && self.since.is_none() {
            self.since = Some((now, self.failed));
        }
        self.rows = rows;
        self.failed = failed;
        let (since, before) = self.since?;
        let stalled = now.saturating_duration_since(since);
        let recent = self.last_failure.is_some_and(|f| now.saturating_duration_since(f) < window);
        (stalled >= STALLED_AFTER && recent).then(|| {
            format!(
                "no row inserted for {} s while inserts fail ({} failed inserts since; the worker's log says why, \
                 croupier_worker_insert_failures_total counts them)",
                stalled.as_secs(),
                failed.wrapping_sub(before)
            )
        })
    }
}

/// What the control thread asks Redis and ClickHouse, with connections of its own.
pub struct Probes {
    redis: RedisClient,
    redis_addr: String,
    /// A partition's limits.
    limits: [StreamLimits; 3],
    partitions: Partitions,
    /// Set when the process runs workers (ClickHouse is its dependency): per shard the
    /// worker inserts into, the options reaching its replicas (one, the server, without
    /// `clickhouse.shards`). A shard none of whose replicas answers stalls every insert.
    clickhouse: Option<Vec<ChOptions>>,
    /// Per shard, kept between probes; dropped after a failure.
    ch: RefCell<Vec<Option<Connection>>>,
    /// Per shard, the replica that answered the last connection (tried first next time).
    answered: RefCell<Vec<usize>>,
    /// The cluster's name when ClickHouse is a cluster (`clickhouse.shards`): a node must
    /// be listed under its own shard, and its replicated tables writable.
    ch_cluster: Option<String>,
    /// The process's metrics, whose insert counters [`InsertWatch`] watches (workers).
    registry: Option<Arc<Registry>>,
    /// Per table, in [`Table::ALL`]'s order: one table's inserts may all fail while the
    /// other's go through.
    inserts: RefCell<[InsertWatch; Table::ALL.len()]>,
    /// How recent a failed insert must be for inserts to count as stalled: three of the
    /// workers' longest back-offs, and [`STALLED_AFTER`] at least.
    stall_window: Duration,
    /// The last ClickHouse ping's outcome (`None` before the first), for `/metrics`,
    /// which does not wait for a ping: a paused server would hold the scrape past
    /// Prometheus's timeout. Pinged by [`Probes::watch_clickhouse`] and by `/readyz`.
    pinged: RefCell<Option<Result<(), String>>>,
    /// Set when the process runs ingest (the streams' marks concern it).
    ingest: bool,
    timeout: Duration,
    /// The ingest shards' connections, when the process runs ingest.
    health: Option<Arc<RedisHealth>>,
}

impl Probes {
    /// Starts the Redis connection on the current runtime.
    pub fn new(
        config: &Config,
        ingest: bool,
        worker: bool,
        health: Option<Arc<RedisHealth>>,
        registry: Arc<Registry>,
    ) -> Probes {
        let limits = config.streams.partition_limits();
        let timeout = Duration::from_millis(config.control.probe_timeout_ms);
        let mut options = RedisOptions::from_config(config);
        options.reply_timeout = options.reply_timeout.min(timeout);
        Probes {
            redis: RedisClient::start(options),
            redis_addr: if !config.redis.cluster.is_empty() {
                format!("the cluster of {}", config.redis.cluster.join(", "))
            } else if !config.redis.sentinels.is_empty() {
                // `redis.addr` is not used: the primary is the one the sentinels name.
                format!(
                    "the primary \"{}\" of sentinels {}",
                    config.redis.master_name,
                    config.redis.sentinels.join(", ")
                )
            } else {
                config.redis.addr.clone()
            },
            limits,
            partitions: Partitions::new(config.streams.partitions),
            clickhouse: worker.then(|| crate::worker::shard_options(config)),
            ch: RefCell::new(Vec::new()),
            answered: RefCell::new(Vec::new()),
            ch_cluster: config.clickhouse.is_cluster().then(|| config.clickhouse.cluster.clone()),
            registry: worker.then_some(registry),
            inserts: RefCell::new(Default::default()),
            stall_window: Duration::from_millis(config.worker.backoff_max_ms.saturating_mul(3)).max(STALLED_AFTER),
            pinged: RefCell::new(None),
            ingest,
            timeout,
            health,
        }
    }

    /// A reply from Redis owed too long, on the control thread's connection or a shard's.
    fn overdue(&self) -> Option<String> {
        let late = |what: String, d: Duration| {
            format!("a reply from {} is overdue: owed for {} ms ({what})", self.redis_addr, d.as_millis())
        };
        if let Some((shard, d)) = self.health.as_ref().and_then(|h| h.overdue()) {
            return Some(late(format!("ingest shard {shard}"), d));
        }
        self.redis.overdue().map(|d| late("control connection".into(), d))
    }

    /// An ingest shard that cannot ingest: not connected to Redis, its streams not read
    /// since it connected, or its appends refused by Redis (its data port's `/readyz` is
    /// 503 too).
    fn shard_not_serving(&self) -> Option<String> {
        let health = self.health.as_ref()?;
        if let Some(shard) = health.not_serving() {
            return Some(format!(
                "ingest shard {shard} is not connected to {} or has not read the streams since it connected",
                self.redis_addr
            ));
        }
        let (shard, ago) = health.refusing()?;
        Some(format!(
            "{} refuses appends: ingest shard {shard}'s last append was refused {} ms ago and none went in since \
             (the log names the error: out of memory, read-only, a command the ACL user lacks)",
            self.redis_addr,
            ago.as_millis()
        ))
    }

    /// An ingest shard whose last backlog reading found a stream at its mark: its data
    /// port refuses (503 `backlog_full`) though this reading of pending and lag is below
    /// it (the shard counts the entries it cannot trim, `redis::backlog`: up to a sample's
    /// spacing more, or the whole stream while an entry pending past the grace has no older
    /// sample or the group's position is unknown).
    fn shard_backlog_full(&self) -> Option<String> {
        let shard = self.health.as_ref()?.backlog_full()?;
        Some(format!(
            "ingest shard {shard} refuses a stream's requests (503 backlog_full): at its high-water mark as the \
             shard counts it, the entries it cannot trim (above the pending and unread entries counted here by up \
             to a sample's spacing, max(min(retention, mark)/16, retention/48), or the whole stream while an entry \
             pending longer than a worker holds one has no older sample, or the group's position is unknown)"
        ))
    }

    /// Reads the configured partition count's streams (an error says what failed), and,
    /// with `others` (for `/metrics`), those of other counts ingest wrote with.
    pub async fn streams(&self, others: bool) -> Result<Vec<StreamReading>, String> {
        if !self.redis.is_up() {
            return Err(match crate::redis::auth::why_not_connected() {
                Some(why) => format!("not connected to {}: {why}", self.redis_addr),
                None => format!("not connected to {}", self.redis_addr),
            });
        }
        // Another connection of the process (an ingest shard's) refused: ingest is not
        // ready although this one is up.
        if let Some(why) = crate::redis::auth::recent_refusal() {
            return Err(format!("{}: {why}", self.redis_addr));
        }
        let others = others.then_some(streams::OtherCounts { cluster: self.redis.is_cluster() });
        let read = || streams::read(&self.redis, self.limits, &self.partitions, others);
        match read().await {
            // This reading found the connection lost (an idle one, closed while Redis
            // restarted or by its `timeout`): that is news of the past, not of Redis now.
            // The client reconnects at once; read again once it has, within half the
            // probe's time, before saying Redis is down.
            Err(e) if e.contains(streams::CONNECTION_LOST) => {
                let until = monoio::time::Instant::now() + self.timeout / 2;
                while !self.redis.is_up() && monoio::time::Instant::now() < until {
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
                read().await.map_err(|e| format!("{}: {e}", self.redis_addr))
            }
            r => r.map_err(|e| format!("{}: {e}", self.redis_addr)),
        }
    }

    /// Pings every shard (the server, without `clickhouse.shards`): the first error, a
    /// shard's named by its place when there are several.
    async fn ping_clickhouse(&self, shards: &[ChOptions]) -> Result<(), String> {
        for (i, opts) in shards.iter().enumerate() {
            self.ping_shard(i, opts).await.map_err(|e| match shards.len() {
                1 => e,
                n => format!("shard {} of {n}: {e}", i + 1),
            })?;
        }
        Ok(())
    }

    /// Connects if needed and pings shard `i` (any of its replicas), within the probe timeout.
    async fn ping_shard(&self, i: usize, opts: &ChOptions) -> Result<(), String> {
        let held = self.ch.borrow_mut().get_mut(i).and_then(Option::take);
        let attempt = async {
            if let Some(mut conn) = held {
                if conn.ping().await.is_ok() {
                    let at = self.answered.borrow().get(i).copied().unwrap_or(0);
                    match self.fits(&mut conn, i, opts, at, false).await {
                        Ok(()) => return Ok(conn),
                        // Read-only: another of the shard's replicas may take inserts.
                        Err(_) => self.set_answered(i, at + 1),
                    }
                }
                // The replica it was on went away: another of the shard's may answer.
            }
            // Each replica within its share of the probe's time (a silent first one
            // would take it all), from the one that answered last; one that answers but
            // does not fit (another shard's, read-only) hands over to the next.
            let replicas = opts.addrs().len().max(1);
            let n = u32::try_from(replicas).unwrap_or(u32::MAX);
            let mut each = opts.clone();
            each.timeout = (self.timeout / n).max(Duration::from_millis(100));
            let mut last = String::new();
            for _ in 0..replicas {
                let start = self.answered.borrow().get(i).copied().unwrap_or(0);
                let (mut conn, at) = Connection::connect_from(&each, start).await.map_err(|e| e.to_string())?;
                self.set_answered(i, at);
                if let Err(e) = conn.ping().await {
                    // Connected but not answering: the next try from the next replica.
                    self.set_answered(i, at + 1);
                    last = e.to_string();
                    continue;
                }
                match self.fits(&mut conn, i, opts, at, true).await {
                    Ok(()) => return Ok(conn),
                    Err(e) => {
                        // The next try, and the next probe, from the shard's next replica.
                        self.set_answered(i, at + 1);
                        last = e;
                    }
                }
            }
            Err(last)
        };
        match monoio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(conn)) => {
                let mut held = self.ch.borrow_mut();
                if held.len() <= i {
                    held.resize_with(i + 1, || None);
                }
                held[i] = Some(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("{}: {e}", opts.addr)),
            Err(_) => Err(self.late(&opts.addr)),
        }
    }

    /// Remembers replica `at` (modulo their number) as the one shard `i`'s next connection
    /// tries first.
    fn set_answered(&self, i: usize, at: usize) {
        let mut answered = self.answered.borrow_mut();
        if answered.len() <= i {
            answered.resize(i + 1, 0);
        }
        answered[i] = at;
    }

    /// On a cluster, whether the node `conn` is on (replica `at` of shard `i`) fits: listed
    /// under the shard its `shard` macro names (checked on a new connection, `fresh`), and
    /// its replicated tables taking inserts — without ZooKeeper (or Keeper) they are
    /// read-only, and every insert into them fails (`Table is in readonly mode`) while
    /// pings answer.
    async fn fits(
        &self,
        conn: &mut Connection,
        i: usize,
        opts: &ChOptions,
        at: usize,
        fresh: bool,
    ) -> Result<(), String> {
        let Some(cluster) = &self.ch_cluster else { return Ok(()) };
        let addrs = opts.addrs();
        let addr = addrs.get(at % addrs.len().max(1)).copied().unwrap_or_default().to_owned();
        if fresh {
            let shards = self.clickhouse.as_ref().map_or(0, Vec::len);
            crate::clickhouse::cluster::check_node(conn, &addr, i, shards, cluster).await.map_err(|e| e.to_string())?;
        }
        let sql = "SELECT count() FROM system.replicas WHERE database = 'analytics' AND is_readonly";
        let found = conn.select(sql, &[]).await.map_err(|e| e.to_string())?;
        let n = found.rows.first().and_then(|r| r.first()).map(|v| v.as_u64()).unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        Err(format!(
            "{addr}: {n} replicated table(s) of analytics are read-only (ZooKeeper not reachable?): inserts into \
             them fail"
        ))
    }

    /// Asks every component; also returns the streams when Redis could be read.
    pub async fn readiness(&self) -> (Readiness, Option<Vec<StreamReading>>) {
        let read = self.read().await;
        (self.judge(read.as_deref().map_err(Clone::clone), true).await, read.ok())
    }

    /// What `/metrics` shows: the streams of every partition count ingest wrote with (an
    /// error when Redis cannot be read), and each component as `/readyz` judges it —
    /// ClickHouse by its last ping ([`Probes::watch_clickhouse`]), not one made now.
    pub async fn scrape(&self) -> (Readiness, Result<Vec<StreamReading>, String>) {
        // One reading: the gauges' as they always were (every partition count, each
        // command within its own timeout, also while a reply is overdue). Its configured
        // count's part is what `/readyz` reads (the other counts' are added, never an
        // error), so the components are judged on it, an overdue reply first.
        let readings = self.streams(true).await;
        let judged = match self.overdue() {
            Some(e) => Err(e),
            None => readings.as_deref().map_err(Clone::clone),
        };
        (self.judge(judged, false).await, readings)
    }

    /// Pings ClickHouse every [`WATCH_EVERY`] (processes that run workers) so that
    /// `/metrics` has a recent outcome without waiting for one; until `stop`.
    pub async fn watch_clickhouse(self: Rc<Self>, stop: Rc<Cell<bool>>) {
        let Some(opts) = &self.clickhouse else { return };
        while !stop.get() {
            let pinged = monoio::time::timeout(self.timeout, self.ping_clickhouse(opts)).await;
            *self.pinged.borrow_mut() = Some(pinged.unwrap_or_else(|_| Err(self.late("ClickHouse"))));
            self.stalled_inserts();
            // In short steps, so that a stopping control thread does not wait a whole one.
            for _ in 0..WATCH_EVERY.as_millis() / 100 {
                if stop.get() {
                    return;
                }
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Why the workers' inserts are stalled, if they are ([`InsertWatch`]).
    fn stalled_inserts(&self) -> Option<String> {
        let totals = self.registry.as_ref()?.insert_totals();
        let now = Instant::now();
        let mut watches = self.inserts.borrow_mut();
        let stalled: Vec<String> = Table::ALL
            .iter()
            .zip(totals)
            .zip(watches.iter_mut())
            .filter_map(|((table, t), w)| {
                w.look(t, now, self.stall_window).map(|why| format!("{}: {why}", table.label()))
            })
            .collect();
        (!stalled.is_empty()).then(|| stalled.join("; "))
    }

    /// `what` did not answer within the probe timeout.
    fn late(&self, what: &str) -> String {
        format!("{what}: no answer within {} ms", self.timeout.as_millis())
    }

    /// The configured partition count's streams within the probe timeout as a whole (a
    /// reading is many commands, each within it); an overdue reply is an error at once.
    async fn read(&self) -> Result<Vec<StreamReading>, String> {
        match self.overdue() {
            Some(e) => Err(e),
            None => monoio::time::timeout(self.timeout, self.streams(false))
                .await
                .unwrap_or_else(|_| Err(self.late(&self.redis_addr))),
        }
    }

    /// Each component's state, given the streams as `read`; ClickHouse pinged now with
    /// `ping`, else as last pinged (left out before the first ping).
    async fn judge(&self, read: Result<&[StreamReading], String>, ping: bool) -> Readiness {
        let mut components = Vec::with_capacity(3);
        // Several ClickHouse shards are pinged one after another, within the probe timeout
        // as a whole.
        let within = self.timeout;
        let error = read.as_ref().err().cloned().or_else(|| self.shard_not_serving());
        components.push(Component { name: "redis", error });
        if let Some(opts) = &self.clickhouse {
            let pinged = if ping {
                let pinged = monoio::time::timeout(within, self.ping_clickhouse(opts)).await;
                let pinged = pinged.unwrap_or_else(|_| Err(self.late("ClickHouse")));
                *self.pinged.borrow_mut() = Some(pinged.clone());
                Some(pinged)
            } else {
                self.pinged.borrow().clone()
            };
            if let Some(pinged) = pinged {
                let error = pinged.err().or_else(|| self.stalled_inserts());
                components.push(Component { name: "clickhouse", error });
            }
        }
        if self.ingest {
            let error = match read {
                Err(_) => Some("unknown: Redis cannot be read".to_owned()),
                // The data port's rule: unready when a stream is at its mark in every
                // partition read (a partition at its mark refuses only its own requests).
                // Below the marks by this reading, a shard may still be at one as it counts.
                Ok(r)
                    if every_stream_somewhere(self.partitions.len(), |p, k| {
                        r.iter()
                            .find(|s| s.configured && usize::from(s.partition) == p && s.stream == k)
                            .map(|s| !s.at_high_water())
                    }) =>
                {
                    self.shard_backlog_full()
                }
                Ok(r) => {
                    let full: Vec<String> = r
                        .iter()
                        .filter(|s| s.configured && s.at_high_water())
                        .map(|s| {
                            format!(
                                "{} at its high-water mark ({} of {} events)",
                                self.partitions.stream(usize::from(s.partition), s.stream),
                                s.backlog_events(),
                                s.high_water_events
                            )
                        })
                        .collect();
                    (!full.is_empty()).then(|| full.join("; "))
                }
            };
            components.push(Component { name: "streams", error });
        }
        Readiness { components }
    }
}

/// `croupier_component_ready`: each component `/readyz` checks, 1 when it is fine. A
/// dependency down shows here whatever the traffic (the counters of refusals and failed
/// inserts move only when requests or batches meet it).
pub fn encode(enc: &mut Encoder, readiness: &Readiness) {
    enc.family(
        "croupier_component_ready",
        Kind::Gauge,
        "Whether a component /readyz checks is fine (1) or not (0): redis, clickhouse (processes that run \
         workers), streams (processes that run ingest: no stream at its high-water mark).",
    );
    for c in &readiness.components {
        enc.sample("croupier_component_ready", &[("component", c.name)], u64::from(c.error.is_none()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_failing_with_no_row_for_a_while_are_stalled_until_a_row_is_inserted() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let window = Duration::from_secs(15);
        let mut w = InsertWatch::default();
        assert_eq!(w.look((1000, 0), at(0), window), None);
        // Failures from second 2 on, no row: stalled from second 17.
        assert_eq!(w.look((1000, 1), at(2), window), None);
        assert_eq!(w.look((1000, 3), at(10), window), None);
        let why = w.look((1000, 5), at(17), window).expect("stalled");
        assert!(why.starts_with("no row inserted for 15 s while inserts fail (5 failed inserts since"), "{why}");
        // A row inserted: not stalled, whatever failed beside it.
        assert_eq!(w.look((1001, 6), at(18), window), None);
        assert_eq!(w.look((1001, 6), at(40), window), None);
        // One failure, then nothing to insert: not stalled.
        assert_eq!(w.look((1001, 7), at(41), window), None);
        assert_eq!(w.look((1001, 7), at(56), window), None);
        assert_eq!(w.look((1001, 7), at(80), window), None);
        // A failure long after: a stall of its own, from it (not from second 41).
        assert_eq!(w.look((1001, 8), at(2400), window), None);
        assert_eq!(w.look((1001, 9), at(2410), window), None);
        let why = w.look((1001, 10), at(2415), window).expect("stalled");
        assert!(why.starts_with("no row inserted for 15 s"), "{why}");
        // Once failures stop, past the window, not.
        assert_eq!(w.look((1001, 10), at(2431), window), None);
    }

    #[test]
    fn the_body_says_per_component_what_failed() {
        let r = Readiness {
            components: vec![
                Component { name: "redis", error: None },
                Component { name: "clickhouse", error: Some("127.0.0.1:9000: \"refused\"".into()) },
            ],
        };
        assert!(!r.ready());
        assert_eq!(
            r.body(),
            r#"{"ready":false,"components":{"redis":{"ok":true},"clickhouse":{"ok":false,"error":"127.0.0.1:9000: \"refused\""}}}"#
        );
    }
}
