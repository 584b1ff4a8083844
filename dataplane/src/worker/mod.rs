//! The worker: shards that consume the three streams into ClickHouse.
//!
//! Each worker shard is one pinned thread with its own runtime and, per stream (and per
//! partition, `streams.partitions`), one consumer task ([`consumer`]) with two Redis connections of its own (one for its
//! blocking reads, one for acknowledgements and the rest) and its own ClickHouse
//! connection. A partition's events consumer reads its custom stream's new entries with
//! its own ([`join`]).

pub mod aggregate;
pub mod cadence;
pub mod consumer;
pub mod entries;
pub mod join;
pub mod read_size;
pub mod sink;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::Config;
use croupier_control::metrics::{Registry, Table};
use croupier_protocol::cluster::Partitions;
use croupier_protocol::stream::StreamKind;

use crate::clickhouse::connection::ChOptions;
use crate::redis::connection::{RedisClient, RedisOptions};
use crate::redis::partition_counts;
use crate::runtime;
use crate::shards::{self, Shards};

/// ClickHouse options from the configuration: the server, or every node of the cluster
/// (a connection takes the first that answers).
pub fn clickhouse_options(config: &Config) -> ChOptions {
    ChOptions {
        addr: config.clickhouse.nodes().join(","),
        database: config.clickhouse.database.clone(),
        user: config.clickhouse.user.clone(),
        password: config.clickhouse.password.clone(),
        compression: config.clickhouse.compression,
        timeout: Duration::from_millis(config.clickhouse.timeout_ms),
    }
}

/// Per shard the worker inserts into, the options reaching its replicas (one shard, the
/// server, without `clickhouse.shards`).
pub fn shard_options(config: &Config) -> Vec<ChOptions> {
    let all = clickhouse_options(config);
    if !config.clickhouse.is_cluster() {
        return vec![all];
    }
    config.clickhouse.shards.iter().map(|replicas| ChOptions { addr: replicas.join(","), ..all.clone() }).collect()
}

/// Bytes a record can add to its entry beyond its text (rkyv slots and offsets: an
/// event's ids, time and field ends, a payment's string headers and numbers).
const ENTRY_BYTES_PER_RECORD: usize = 128;

/// The largest stream entry ingest writes under `config`: a batch archive holds at most
/// the (decompressed) body's text plus a fixed part per record; a little more for the
/// other fields. Entries written by other producers are not bounded by this.
pub fn max_entry_bytes(config: &Config) -> usize {
    let s = &config.server;
    s.max_body_bytes
        .max(s.max_decompressed_bytes)
        .saturating_add(s.max_records.saturating_mul(ENTRY_BYTES_PER_RECORD))
        .saturating_add(4096)
}

fn consumer_config(config: &Config, stream: StreamKind, key: &str, shard: usize) -> consumer::ConsumerConfig {
    let w = &config.worker;
    // A blocking read must end well before the Redis reply timeout.
    let idle_block = Duration::from_millis((config.redis.reply_timeout_ms / 2).clamp(10, 1000));
    consumer::ConsumerConfig {
        stream,
        key: key.to_owned(),
        consumer: format!("{}-{shard}", config.consumer_prefix()),
        read_count: w.read_count,
        batch_rows: w.batch_rows,
        batch_bytes: w.batch_bytes,
        max_entry_bytes: max_entry_bytes(config),
        // Honoured as configured: gathering reads in blocks of at most `idle_block`.
        linger: Duration::from_millis(w.linger_ms),
        insert_interval: Duration::from_millis(w.insert_interval_ms),
        claim_idle: Duration::from_millis(w.claim_idle_ms),
        claim_interval: Duration::from_millis(w.claim_interval_ms),
        max_deliveries: w.max_deliveries,
        backoff_max: Duration::from_millis(w.backoff_max_ms),
        max_refused_per_batch: w.max_refused_per_batch,
        idle_block,
        read_pause: Duration::from_millis(w.read_pause_ms),
        partitions_per_block: config.clickhouse.max_partitions_per_block,
        clickhouse: clickhouse_options(config),
        shards: shard_options(config),
        cluster: config.clickhouse.is_cluster().then(|| config.clickhouse.cluster.clone()),
    }
}

/// The core worker shard `shard` is pinned to, if any. Alone in its process a worker
/// takes `server.cores` (else the process's allowed CPUs in order: its cpuset in a
/// container) like ingest shards do. Beside ingest (`run`) it takes the cores after the
/// ingest shards' (`cores[ingest shards + shard]`, else the allowed CPU `ingest shards +
/// shard`) and runs unpinned when there is none, rather than share an ingest shard's core.
pub fn worker_core(config: &Config, shard: usize, beside_ingest: bool) -> Option<usize> {
    if !config.server.pin {
        return None;
    }
    let index = if beside_ingest { config.shard_count().checked_add(shard)? } else { shard };
    match config.server.cores.get(index) {
        Some(&core) => Some(core),
        None if !config.server.cores.is_empty() && beside_ingest => None,
        None => {
            let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
            // The index-th CPU the process may run on (its cpuset in a container).
            (!beside_ingest || index < cores).then(|| crate::runtime::allowed_core(index).unwrap_or(index))
        }
    }
}

/// How often a worker shard looks for partition counts ingest wrote with
/// (`croupier_protocol::cluster::LAYOUTS`).
const LAYOUTS_EVERY: Duration = Duration::from_secs(10);

/// How often a worker shard looks at the partitions of another recorded count it does
/// not read yet (three `XLEN`s each): a new count's at once, then at this pace.
const LAYOUT_SCAN_EVERY: Duration = Duration::from_secs(60);

/// Most partitions of other counts a worker shard reads besides its own (each costs its
/// three consumers' connections).
const EXTRA_PARTITIONS: usize = 64;

/// Starts the worker shards; `beside_ingest` when ingest shards run in the same process
/// (their cores are left to them). They count in a registry of their own.
pub fn start(config: Config, beside_ingest: bool) -> Result<Shards, String> {
    let metrics = crate::registry(&config);
    start_with_metrics(config, beside_ingest, metrics)
}

/// [`start`], each worker shard counting in its own block of `metrics`. With
/// `aggregate.enabled`, the shards' real-time gauges are a source of `metrics` too.
pub fn start_with_metrics(config: Config, beside_ingest: bool, metrics: Arc<Registry>) -> Result<Shards, String> {
    let driver = runtime::resolve(config.server.driver)?;
    let config = Arc::new(config);
    let core = |shard: usize| worker_core(&config, shard, beside_ingest);
    let published = Arc::new(aggregate::sketches::Published::default());
    if config.aggregate.enabled {
        metrics.add_source(Arc::new(aggregate::gauges::RealtimeGauges::new(published.clone())));
    }
    shards::spawn_shards("worker", config.worker.shards, driver, core, |shard, stop| {
        let config = config.clone();
        let writer = metrics.writer();
        let published = published.clone();
        move || async move {
            let live = Rc::new(Cell::new(0usize));
            let writer = Rc::new(writer);
            // The worker's connections find the primary as ingest does, but never wait for
            // replicas (nothing they do is acknowledged to a client), and keep their own
            // queue bound (`redis.max_queued_bytes` is ingest's).
            let connect = || {
                let mut options = RedisOptions::from_config(&config);
                options.wait_replicas = 0;
                options.max_queued_bytes = 64 << 20;
                RedisClient::start(options)
            };
            let agg = config.aggregate.enabled.then(|| {
                aggregate::Aggregator::new(
                    shard,
                    published,
                    &config.aggregate,
                    connect(),
                    config.clickhouse.is_cluster(),
                )
            });
            if let Some(a) = &agg {
                let every = Duration::from_millis(config.aggregate.flush_ms);
                monoio::spawn(a.clone().run(every, clickhouse_options(&config), stop.clone()));
            }
            // Every worker shard reads every partition of every stream, in the one consumer
            // group: an idle or dead shard's entries are claimed by the others as before.
            // A partition's events consumer reads its custom stream's new entries too.
            // The consumers of one table judge its load on this shard together.
            let tables = Table::ALL.map(|_| Rc::new(cadence::TableLoad::default()));
            // Partitions read, by their events stream's key (layouts may share partitions).
            let mut reading: HashSet<String> = HashSet::new();
            let read_partition = |partitions: &Partitions, p: usize| {
                let custom = partitions.stream(p, StreamKind::Custom);
                let shared = Rc::new(join::Shared::default());
                for stream in StreamKind::ALL {
                    let (key, join) = (partitions.stream(p, stream), join::Join::of(stream, custom, &shared));
                    let cfg = Rc::new(consumer_config(&config, stream, key, shard));
                    let load = tables[Table::of(stream).index()].join();
                    // A consumer whose new entries another reads blocks on no read of its own.
                    let redis = connect();
                    let reads = if join.reads_new() { connect() } else { redis.clone() };
                    let (stop, live, writer, agg) = (stop.clone(), live.clone(), writer.clone(), agg.clone());
                    live.set(live.get() + 1);
                    monoio::spawn(async move {
                        consumer::run(cfg, reads, redis, stop, writer, agg, consumer::Siblings { load, join }).await;
                        live.set(live.get() - 1);
                    });
                }
            };
            let partitions = Partitions::new(config.streams.partitions);
            for p in 0..partitions.len() {
                reading.insert(partitions.stream(p, StreamKind::Events).to_owned());
                read_partition(&partitions, p);
            }
            // The partitions of every count ingest has written with (`streams.partitions`
            // changed while entries waited): read too, found at start and every 10 s. Only a
            // partition whose events stream holds entries is read (a count recorded by
            // mistake costs no consumer), at most `EXTRA_PARTITIONS` per worker shard; a
            // count the configuration could not hold is passed over (one partition too, on a
            // Redis Cluster: its plain keys span slots).
            let layouts = connect();
            let (mut extra, mut full_logged) = (0usize, false);
            // Each count's keys, made once (finding a count's tags takes a search each), and
            // when its partitions were last looked at (at most every `LAYOUT_SCAN_EVERY`).
            let mut counts: HashMap<u16, Partitions> = HashMap::new();
            let mut scanned: HashMap<u16, Instant> = HashMap::new();
            let mut next_look = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next_look {
                    let cluster = !config.redis.cluster.is_empty();
                    let found = partition_counts::recorded(&layouts, config.streams.partitions, cluster).await;
                    // Not connected yet: looked for again soon.
                    let again = if found.is_some() { LAYOUTS_EVERY } else { Duration::from_millis(200) };
                    next_look = Instant::now() + again;
                    for n in found.unwrap_or_default() {
                        if scanned.get(&n).is_some_and(|t| t.elapsed() < LAYOUT_SCAN_EVERY) {
                            continue;
                        }
                        scanned.insert(n, Instant::now());
                        let other = counts.entry(n).or_insert_with(|| Partitions::new(n));
                        for p in 0..other.len() {
                            let key = other.stream(p, StreamKind::Events);
                            // Past the limit, said once, nothing more is looked at.
                            let spent = extra >= EXTRA_PARTITIONS && full_logged;
                            if stop.load(Ordering::Relaxed) || reading.contains(key) || spent {
                                continue;
                            }
                            if !partition_counts::holds_entries(&layouts, other, p).await {
                                continue;
                            }
                            if extra >= EXTRA_PARTITIONS {
                                if !full_logged {
                                    full_logged = true;
                                    tracing::error!(
                                        shard,
                                        partitions = n,
                                        limit = EXTRA_PARTITIONS,
                                        "streams of another partition count hold entries past the partitions a worker \
                                         shard reads besides its own: run workers with that streams.partitions to \
                                         drain them"
                                    );
                                }
                                continue;
                            }
                            extra += 1;
                            reading.insert(key.to_owned());
                            tracing::info!(
                                shard,
                                partitions = n,
                                partition = p,
                                configured = config.streams.partitions,
                                "ingest wrote with another partition count: this partition is read too"
                            );
                            read_partition(other, p);
                        }
                    }
                }
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while live.get() > 0 && std::time::Instant::now() < deadline {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(a) = &agg {
                a.finish(&clickhouse_options(&config)).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_is_honoured_as_configured() {
        let mut config = Config::default();
        config.redis.reply_timeout_ms = 1_000;
        config.worker.linger_ms = 3_000;
        let c = consumer_config(&config, StreamKind::Events, StreamKind::Events.key(), 0);
        assert_eq!(c.linger, Duration::from_secs(3), "not cut to half the reply timeout");
        assert!(c.idle_block <= Duration::from_millis(500), "each read still blocks less than the reply timeout");
    }

    #[test]
    fn workers_beside_ingest_do_not_take_ingest_cores() {
        let mut config = Config::default();
        config.server.shards = 2;
        config.worker.shards = 2;
        // Alone: cores 0 and 1, like ingest.
        assert_eq!((worker_core(&config, 0, false), worker_core(&config, 1, false)), (Some(0), Some(1)));
        // Beside two ingest shards: cores 2 and 3 where the machine has them, else unpinned.
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        assert_eq!(worker_core(&config, 0, true), (cores > 2).then_some(2));
        assert_eq!(worker_core(&config, 1, true), (cores > 3).then_some(3));
        // Listed cores: the ones after the ingest shards'.
        config.server.cores = vec![4, 5, 6];
        assert_eq!(worker_core(&config, 0, true), Some(6));
        assert_eq!(worker_core(&config, 1, true), None);
        assert_eq!(worker_core(&config, 1, false), Some(5));
        config.server.pin = false;
        assert_eq!(worker_core(&config, 0, false), None);
    }
}
