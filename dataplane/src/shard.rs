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
use croupier_protocol::batch::Marks;
use croupier_protocol::cluster::Partitions;
use croupier_protocol::validate::{JsonBuffers, Limits};

use crate::analytics::auth::Verifier;
use crate::analytics::filters::SharedFilters;
use crate::client::filters::FilterView;
use crate::ingest::IngestBuffers;
use crate::ratelimit::{GameRate, RateLimits};
use crate::redis::append_group::AppendGroups;
use crate::redis::backlog::{Backlog, BacklogSettings};
use crate::redis::connection::{RedisClient, RedisOptions};
use crate::redis::overdue::RedisHealth;

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
    /// Origins whose pages may send with its write keys (empty: any).
    pub allowed_origins: Vec<String>,
    /// Payments may be sent with its write keys.
    pub public_payments: bool,
}

/// A public write key, as a shard holds it.
#[derive(Debug)]
pub struct WriteKey {
    /// The game it appends to.
    pub game: String,
    /// Taken out of use (`revoked_write_keys`).
    pub revoked: bool,
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
    /// Every shard's owed replies (`/readyz`).
    pub redis_health: Arc<RedisHealth>,
    /// The shard's view of the group backlogs.
    pub backlog: Rc<Backlog>,
    /// Ingest appends waiting for Redis, sent a group per transaction.
    pub appends: Rc<AppendGroups>,
    /// Body limits.
    pub limits: Limits,
    /// simd-json buffers reused by every request of the shard.
    pub json: RefCell<JsonBuffers>,
    /// Record batches and archives reused by every request of the shard.
    pub batches: RefCell<IngestBuffers>,
    /// The shard's own counters (`/metrics`).
    pub metrics: Rc<ShardWriter>,
    /// Public write keys of every game (client ingest).
    pub keys: HashMap<String, WriteKey>,
    /// Verifies client ingest's bearer tokens (`[api]`'s keys); `None` if they could not
    /// be read.
    pub verifier: Option<Verifier>,
    /// The games' filters, as last read from `api.filters_file` (or the process's API).
    pub filters: RefCell<FilterView>,
    /// Rate limits shared with every shard (write keys', client addresses').
    pub rates: Arc<RateLimits>,
    /// The marks of the shard's appends (one per request, in each of its entries).
    pub marks: Marks,
}

/// A number drawn from the operating system's randomness (the keys of a new
/// `RandomState`), mixed with the process id and the time.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    std::hash::RandomState::new().hash_one((std::process::id(), now.as_nanos()))
}

/// Builds shard `id`'s context on the current thread's runtime (its Redis connection and
/// backlog poller start here). `rates` holds the games' rate limits, shared by all
/// shards; `metrics` is this shard's own block of counters.
pub fn build(
    id: usize,
    config: Arc<Config>,
    rates: &Arc<RateLimits>,
    metrics: ShardWriter,
    redis_health: Arc<RedisHealth>,
    filters: Arc<SharedFilters>,
) -> Rc<Shard> {
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
                allowed_origins: g.allowed_origins.clone(),
                public_payments: g.public_payments,
            };
            (name.clone(), state)
        })
        .collect();
    let mut options = RedisOptions::from_config(&config);
    let health = redis_health.shard(id, options.reply_timeout);
    options.overdue = Some(health.clone());
    let redis = RedisClient::start(options);
    let partitions = Partitions::new(config.streams.partitions);
    let backlog = Backlog::new(BacklogSettings::from_config(&config), redis.epoch(), partitions);
    monoio::spawn(backlog.clone().poll(redis.clone(), Duration::from_millis(config.redis.backlog_poll_ms), health));
    let metrics = Rc::new(metrics);
    let appends = AppendGroups::new(redis.clone(), backlog.clone(), metrics.clone(), &config);
    let limits = Limits { max_records: config.server.max_records, ..Limits::default() };
    let mut keys = HashMap::new();
    for (name, g) in &config.games {
        for (k, revoked) in
            g.write_keys.iter().map(|k| (k, false)).chain(g.revoked_write_keys.iter().map(|k| (k, true)))
        {
            keys.insert(k.clone(), WriteKey { game: name.clone(), revoked });
        }
    }
    let verifier = match Verifier::from_config(&config.api) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(shard = id, error = %e, "client ingest refuses bearer tokens");
            None
        }
    };
    let filters = RefCell::new(FilterView::new(
        config.api.filters_file.clone(),
        Duration::from_millis(config.client.filters_check_ms),
        filters,
    ));
    Rc::new(Shard {
        id,
        config,
        games,
        redis,
        redis_health,
        backlog,
        appends,
        limits,
        json: RefCell::new(JsonBuffers::default()),
        batches: RefCell::new(IngestBuffers::default()),
        metrics,
        keys,
        verifier,
        filters,
        rates: rates.clone(),
        marks: Marks::new(random_u64()),
    })
}
