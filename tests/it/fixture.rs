//! A running ingest data plane on a fresh redis-server, and helpers to post to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver, Game};
use croupier_dataplane::Handle;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient, Reply};
use croupier_it::redis::RedisServer;

pub const GAME: &str = "g1";
pub const SECRET: &str = "secret-one";
pub const OTHER_GAME: &str = "g2";
pub const OTHER_SECRET: &str = "secret-two";

/// Runs a test body once per io driver: `name_io_uring` and `name_epoll`.
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn io_uring() {
                    super::$name(croupier_control::config::Driver::IoUring);
                }
                #[test]
                fn epoll() {
                    super::$name(croupier_control::config::Driver::Epoll);
                }
            }
        )*
    };
}
pub(crate) use both_drivers;

/// redis-server + the ingest shards.
pub struct Fixture {
    pub redis: RedisServer,
    pub ingest: Option<Handle>,
    pub addr: SocketAddr,
    /// The configuration the shards were started with.
    config: Config,
}

impl Fixture {
    /// Starts with the test configuration, adjusted by `tweak`.
    pub fn start(driver: Driver, tweak: impl FnOnce(&mut Config)) -> Fixture {
        Self::start_with_redis(driver, RedisServer::start(), tweak)
    }

    /// Starts on a given redis-server.
    pub fn start_with_redis(driver: Driver, redis: RedisServer, tweak: impl FnOnce(&mut Config)) -> Fixture {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.shards = 2;
        config.server.pin = false;
        config.server.driver = driver;
        config.redis.addr = redis.addr();
        config.redis.backlog_poll_ms = 20;
        config.redis.reply_timeout_ms = 2_000;
        config.otlp.listen = "127.0.0.1:0".into();
        config.otlp.grpc_listen = "127.0.0.1:0".into();
        for (g, s) in [(GAME, SECRET), (OTHER_GAME, OTHER_SECRET)] {
            config.games.insert(g.into(), Game { secret: Some(s.into()), ..Game::default() });
        }
        tweak(&mut config);
        let ingest = croupier_dataplane::start(config.clone()).expect("ingest starts");
        let addr = ingest.local_addr();
        let f = Fixture { redis, ingest: Some(ingest), addr, config };
        f.wait_ready();
        f
    }

    /// Stops the shards and starts them again with the same configuration (on a new port),
    /// without waiting until they are ready.
    pub fn restart_ingest(&mut self) {
        if let Some(h) = self.ingest.take() {
            h.shutdown();
        }
        let ingest = croupier_dataplane::start(self.config.clone()).expect("ingest starts again");
        self.addr = ingest.local_addr();
        self.ingest = Some(ingest);
    }

    /// Waits until every shard reports ready (it has read the backlogs once).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A new connection per probe lands on either shard.
            let ready = (0..8).all(|_| self.client().request("GET", "/readyz", &[], b"").status == 200);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "ingest not ready within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::connect(self.addr)
    }

    /// Posts `body` signed for `GAME` on a new connection.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        post_signed(&mut self.client(), path, GAME, SECRET, body.as_bytes())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(h) = self.ingest.take() {
            h.shutdown();
        }
    }
}

/// Posts `body` signed for `game` with a fresh nonce.
pub fn post_signed(c: &mut HttpClient, path: &str, game: &str, secret: &str, body: &[u8]) -> Reply {
    let headers = signed_headers(game, secret, body, now_secs(), &fresh_nonce());
    c.request("POST", path, &headers, body)
}

/// A valid standard event for `GAME` with the given name and user.
pub fn event(name: &str, user: &str) -> String {
    format!(r#"{{"ts":{},"game_id":"{GAME}","env":"prod","event":"{name}","user_id":"{user}"}}"#, now_secs())
}

/// A JSON array of `n` standard events, a batch no other call returns (its users are
/// numbered per call): a body sent twice is a retry, whose event ids are the same.
pub fn events(n: usize) -> String {
    static BATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let batch = BATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let items: Vec<String> = (0..n).map(|i| event("level_start", &format!("u{i}-b{batch}"))).collect();
    format!("[{}]", items.join(","))
}

/// XLEN of a stream.
pub fn xlen(redis: &RedisServer, key: &str) -> i64 {
    redis.client().int(&["XLEN", key])
}

/// Sum of XLEN over the three streams.
pub fn total_entries(redis: &RedisServer) -> i64 {
    ["analytics:events", "analytics:custom", "analytics:payments"].iter().map(|k| xlen(redis, k)).sum()
}
