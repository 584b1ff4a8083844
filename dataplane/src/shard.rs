//! A shard's context: one thread, one core, one monoio runtime. It owns its Redis
//! connection, its backlog view, its reused buffers and its counters (what it serves is
//! `data_port.rs`); nothing in it is locked, and the
//! only thing shared with other shards is each game's rate cell (one atomic word,
//! `ratelimit.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use croupier_control::config::Config;
use croupier_control::metrics::{GameIx, ShardWriter};
use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate::{JsonBuffers, Limits};

use crate::ingest::IngestBuffers;
use crate::ratelimit::{GameRate, RateLimits};
use crate::redis::backlog::Backlog;
use crate::redis::connection::{RedisClient, RedisOptions};

/// A configured game, as a shard holds it.
#[derive(Debug)]
pub struct GameState {
    /// HMAC secret.
    pub secret: Vec<u8>,
    /// The game's rate limit, if it has one: shared with every shard of the process.
    pub rate: Option<Arc<GameRate>>,
    /// A gzip body may be signed over its decompressed bytes (`gzip_signed_after`).
    pub gzip_signed_after: bool,
    /// The game as the shard's counters label it.
    pub metrics: GameIx,
    /// The bearer token of its OTLP exports, if it has one.
    pub otlp_token: Option<Vec<u8>>,
}

/// Everything a shard's tasks share (through `Rc`, on the shard's thread only).
pub struct Shard {
    /// Shard number.
    pub id: usize,
    /// The configuration.
    pub config: Arc<Config>,
    /// Games by id.
    pub games: HashMap<String, GameState>,
    /// The shard's Redis connection.
    pub redis: RedisClient,
    /// The shard's view of the group backlogs.
    pub backlog: Rc<Backlog>,
    /// Body limits.
    pub limits: Limits,
    /// simd-json buffers reused by every request of the shard.
    pub json: RefCell<JsonBuffers>,
    /// Record batches and archives reused by every request of the shard.
    pub batches: RefCell<IngestBuffers>,
    /// The shard's own counters (`/metrics`).
    pub metrics: ShardWriter,
}

/// Builds shard `id`'s context on the current thread's runtime (its Redis connection and
/// backlog poller start here). `rates` holds the games' rate limits, shared by all
/// shards; `metrics` is this shard's own block of counters.
pub fn build(id: usize, config: Arc<Config>, rates: &RateLimits, metrics: ShardWriter) -> Rc<Shard> {
    let games = config
        .games
        .iter()
        .map(|(name, g)| {
            let secret = g.secret.clone().unwrap_or_default().into_bytes();
            let state = GameState {
                secret,
                rate: rates.game(name),
                gzip_signed_after: g.gzip_signed_after,
                metrics: metrics.layout().game(name),
                otlp_token: g.otlp_token.clone().map(String::into_bytes),
            };
            (name.clone(), state)
        })
        .collect();
    let s = &config.streams;
    let stream_limits = StreamKind::ALL.map(|k| match k {
        StreamKind::Events => s.events,
        StreamKind::Custom => s.custom,
        StreamKind::Payments => s.payments,
    });
    let redis = RedisClient::start(RedisOptions::from_config(&config.redis));
    let backlog = Backlog::new(stream_limits, redis.epoch());
    monoio::spawn(backlog.clone().poll(redis.clone(), Duration::from_millis(config.redis.backlog_poll_ms)));
    let limits = Limits { max_records: config.server.max_records, ..Limits::default() };
    Rc::new(Shard {
        id,
        config,
        games,
        redis,
        backlog,
        limits,
        json: RefCell::new(JsonBuffers::default()),
        batches: RefCell::new(IngestBuffers::default()),
        metrics,
    })
}
