//! The thread-per-core data plane of Croupier Analytics.
//!
//! [`start`] binds the shared listening port once per shard (SO_REUSEPORT), then starts
//! one thread per shard ([`shards::spawn_shards`]), each with its own monoio runtime
//! ([`runtime`]) pinned to a core and its own [`shard::Shard`], serving the
//! [`data_port`] (and the OTLP ports, [`otlp`] and [`otlp_grpc`]) through the generic HTTP layer
//! ([`server`], [`http`], [`router`]). The
//! returned [`Handle`] stops them gracefully.

pub mod analytics;
pub mod auth;
pub mod cli;
pub mod clickhouse;
pub mod client;
pub mod control;
pub mod data_port;
pub mod demo;
pub mod error;
pub mod event_id;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod io;
pub mod otlp;
pub mod otlp_grpc;
pub mod ratelimit;
pub mod redis;
pub mod router;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod shards;
pub mod signals;
pub mod slots;
pub mod stack;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use croupier_control::config::Config;
use croupier_control::metrics::Registry;

pub use runtime::ActiveDriver;
use shards::Shards;

/// A running ingest data plane.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    otlp_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    driver: ActiveDriver,
    shards: Shards,
    metrics: Arc<Registry>,
    /// Read by every shard's `/readyz`.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Handle {
    /// The address the shards listen on (the resolved port when `:0` was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes every shard's `/readyz` answer 503 (`draining`) from now on; the shards go
    /// on serving until [`Handle::shutdown`].
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The address of the OTLP/HTTP listener, if `[otlp] listen` is set.
    pub fn otlp_addr(&self) -> Option<SocketAddr> {
        self.otlp_addr
    }

    /// The address of the OTLP/gRPC listener, if `[otlp] grpc_listen` is set.
    pub fn otlp_grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The io driver the shards run on.
    pub fn driver(&self) -> ActiveDriver {
        self.driver
    }

    /// The registry the shards count in.
    pub fn metrics(&self) -> &Arc<Registry> {
        &self.metrics
    }

    /// Stops accepting, lets requests in flight finish, and waits for the shards.
    pub fn shutdown(self) {
        self.shards.shutdown();
    }
}

/// Binds one shard's listening socket with SO_REUSEPORT. For port 0 the first socket is
/// bound before the option is set, so the kernel picks a port no other socket uses (else
/// two processes binding port 0 could land in one reuse group and share connections);
/// the option is set before `listen`, which is when the socket joins its group.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if addr.port() == 0 {
        socket.bind(&addr.into())?;
        socket.set_reuse_port(true)?;
    } else {
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
    }
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One listening socket per shard on `listen` (config key `key`), none when it is empty;
/// port 0 resolves to one port for all of them.
fn bind_shards(
    listen: &str,
    key: &str,
    shards: usize,
) -> Result<(Vec<std::net::TcpListener>, Option<SocketAddr>), String> {
    if listen.is_empty() {
        return Ok((Vec::new(), None));
    }
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{key}: {e}"))?;
    let first = bind(listen).map_err(|e| format!("{key}: cannot listen on {listen}: {e}"))?;
    let addr = first.local_addr().map_err(|e| e.to_string())?;
    let mut all = vec![first];
    for _ in 1..shards {
        all.push(bind(addr).map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?);
    }
    Ok((all, Some(addr)))
}

/// The process's metrics registry for `config`: the data port's routes, the configured
/// games, counting on or off (`metrics.enabled`).
pub fn registry(config: &Config) -> Arc<Registry> {
    let games: Vec<&str> = config.games.keys().map(String::as_str).collect();
    Registry::new(&data_port::ROUTES, &games, config.metrics.enabled)
}

/// Starts the ingest shards, with a registry of their own.
pub fn start(config: Config) -> Result<Handle, String> {
    let metrics = registry(&config);
    let health = redis_health(&config);
    start_with_metrics(config, metrics, health, Arc::default())
}

/// The stamps of the ingest shards' Redis connections, for `/readyz` (one per shard).
pub fn redis_health(config: &Config) -> Arc<redis::overdue::RedisHealth> {
    let reply_timeout = std::time::Duration::from_millis(config.redis.reply_timeout_ms);
    redis::overdue::RedisHealth::new(config.shard_count(), reply_timeout)
}

/// Starts the ingest shards; each counts in its own block of `metrics`, stamps the
/// replies its Redis connection owes in its place of `health`, and applies the client
/// filters of `filters` when no `api.filters_file` is set.
pub fn start_with_metrics(
    config: Config,
    metrics: Arc<Registry>,
    health: Arc<redis::overdue::RedisHealth>,
    filters: Arc<analytics::filters::SharedFilters>,
) -> Result<Handle, String> {
    let driver = runtime::resolve(config.server.driver)?;
    let shards = config.shard_count();
    let (listeners, addr) = bind_shards(&config.server.listen, "server.listen", shards)?;
    let addr = addr.ok_or("server.listen: expected an address like 0.0.0.0:8080")?;
    // The OTLP ports: a second and a third listener on every shard, in the same
    // SO_REUSEPORT way.
    let (otlp, otlp_addr) = bind_shards(&config.otlp.listen, "otlp.listen", shards)?;
    let (grpc, grpc_addr) = bind_shards(&config.otlp.grpc_listen, "otlp.grpc_listen", shards)?;
    let rates = Arc::new(ratelimit::RateLimits::new(&config));
    let config = Arc::new(config);
    let (pin, cores) = (config.server.pin, config.server.cores.clone());
    // Without a list, shard i takes the i-th CPU the process may run on (in a container,
    // the cpuset it was given), not CPU number i.
    let core =
        |id: usize| pin.then(|| cores.get(id).copied().unwrap_or_else(|| runtime::allowed_core(id).unwrap_or(id)));
    let mut listeners = listeners.into_iter();
    let mut otlp = otlp.into_iter();
    let mut grpc = grpc.into_iter();
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shards = shards::spawn_shards("shard", shards, driver, core, |id, stop| {
        let (config, rates, writer) = (config.clone(), rates.clone(), metrics.writer());
        let (listener, otlp, grpc) = (listeners.next(), otlp.next(), grpc.next());
        let (draining, health, filters) = (draining.clone(), health.clone(), filters.clone());
        move || async move {
            if let Some(listener) = listener {
                let flags = data_port::Flags { stop, draining, health, filters };
                data_port::run(id, config, rates, writer, (listener, otlp, grpc), flags).await;
            }
        }
    })?;
    Ok(Handle { addr, otlp_addr, grpc_addr, driver, shards, metrics, draining })
}
