//! The worker: shards that consume the three streams into ClickHouse.
//!
//! Each worker shard is one pinned thread with its own runtime and, per stream, one
//! consumer task ([`consumer`]) with two Redis connections of its own (one for its
//! blocking reads, one for acknowledgements and the rest) and its own ClickHouse
//! connection.

pub mod consumer;
pub mod entries;
pub mod sink;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use croupier_control::config::Config;
use croupier_protocol::stream::StreamKind;

use crate::clickhouse::connection::ChOptions;
use crate::redis::connection::RedisClient;
use crate::runtime;
use crate::shards::Shards;

/// ClickHouse options from the configuration.
pub fn clickhouse_options(config: &Config) -> ChOptions {
    ChOptions {
        addr: config.clickhouse.addr.clone(),
        database: config.clickhouse.database.clone(),
        user: config.clickhouse.user.clone(),
        password: config.clickhouse.password.clone(),
        compression: config.clickhouse.compression,
        timeout: Duration::from_millis(config.clickhouse.timeout_ms),
    }
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

fn consumer_config(config: &Config, stream: StreamKind, shard: usize) -> consumer::ConsumerConfig {
    let w = &config.worker;
    // A blocking read must end well before the Redis reply timeout.
    let idle_block = Duration::from_millis((config.redis.reply_timeout_ms / 2).clamp(10, 1000));
    consumer::ConsumerConfig {
        stream,
        consumer: format!("{}-{shard}", config.consumer_prefix()),
        read_count: w.read_count,
        batch_rows: w.batch_rows,
        batch_bytes: w.batch_bytes,
        max_entry_bytes: max_entry_bytes(config),
        linger: Duration::from_millis(w.linger_ms).min(idle_block),
        claim_idle: Duration::from_millis(w.claim_idle_ms),
        claim_interval: Duration::from_millis(w.claim_interval_ms),
        max_deliveries: w.max_deliveries,
        backoff_max: Duration::from_millis(w.backoff_max_ms),
        max_refused_per_batch: w.max_refused_per_batch,
        idle_block,
        partitions_per_block: config.clickhouse.max_partitions_per_block,
        clickhouse: clickhouse_options(config),
    }
}

/// Starts the worker shards.
pub fn start(config: Config) -> Result<Shards, String> {
    let driver = runtime::resolve(config.server.driver)?;
    let config = Arc::new(config);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for shard in 0..config.worker.shards {
        let config = config.clone();
        let stop = stop.clone();
        let core = config.server.cores.get(shard).copied().unwrap_or(shard);
        let t = std::thread::Builder::new()
            .name(format!("croupier-worker-{shard}"))
            .spawn(move || {
                if config.server.pin && !runtime::pin(core) {
                    eprintln!("croupier: worker {shard}: could not pin to core {core}; running unpinned");
                }
                let res = runtime::block_on(driver, async move {
                    let live = Rc::new(Cell::new(0usize));
                    for stream in StreamKind::ALL {
                        let cfg = Rc::new(consumer_config(&config, stream, shard));
                        let connect = || {
                            RedisClient::spawn(
                                config.redis.addr.clone(),
                                Duration::from_millis(config.redis.connect_timeout_ms),
                                Duration::from_millis(config.redis.reply_timeout_ms),
                            )
                        };
                        let (reads, redis) = (connect(), connect());
                        let (stop, live) = (stop.clone(), live.clone());
                        live.set(live.get() + 1);
                        monoio::spawn(async move {
                            consumer::run(cfg, reads, redis, stop).await;
                            live.set(live.get() - 1);
                        });
                    }
                    while !stop.load(Ordering::Relaxed) {
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let deadline = std::time::Instant::now() + Duration::from_secs(30);
                    while live.get() > 0 && std::time::Instant::now() < deadline {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                if let Err(e) = res {
                    eprintln!("croupier: worker {shard}: runtime: {e}");
                }
            })
            .map_err(|e| format!("cannot start worker shard {shard}: {e}"))?;
        threads.push(t);
    }
    Ok(Shards::new(stop, threads))
}
