//! The data port: its route table and the handlers behind it, on a shard's context —
//! the ingest endpoints, client ingest (`/api/analytics/ingest`, `client/`), liveness
//! (`/healthz`) and readiness (`/readyz`) — and the OTLP
//! port's table (`/v1/logs`, `/v1/traces`, `/v1/metrics`, `otlp.rs`) on the same context.
//! [`run`] serves them on a shard's listeners, and OTLP/gRPC (`otlp_grpc.rs`) on its
//! third.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use croupier_control::config::Config;
use croupier_control::metrics::{RequestServed, ShardWriter};
use croupier_protocol::otlp::Signal;

use crate::auth::CredentialHeaders;
use crate::client;
use crate::error::IngestError;
use crate::http::conn;
use crate::http::error::HttpError;
use crate::http::handler::{Handler, Request};
use crate::http::request::{Fields, Head, Method};
use crate::http::response::Response;
use crate::ingest::{self, Endpoint, IngestHead};
use crate::otlp::{self, OtlpRoute};
use crate::otlp_grpc;
use crate::ratelimit::RateLimits;
use crate::router::{Methods, Router};
use crate::server;
use crate::shard::{self, Shard};

/// The data port's routes, as its requests are counted (`croupier_http_requests_total`).
pub const ROUTES: [&str; 9] = [
    "/api/ingest/events",
    "/api/ingest/payments",
    "/healthz",
    "/readyz",
    "/v1/logs",
    "/v1/traces",
    "/v1/metrics",
    "/api/analytics/ingest",
    "/api/analytics/payments/ingest",
];

/// The header fields the data port reads, by index ([`GAME_ID`] ...): each may appear
/// once (a second is a `400 bad_request` naming it), but `X-Forwarded-For` and
/// `Access-Control-Request-Headers`, lists that may come as several lines (read as one
/// list, in order).
pub static FIELDS: Fields = Fields::new(&[
    "X-Game-Id",
    "X-Timestamp",
    "X-Nonce",
    "X-Signature",
    "Content-Type",
    "Content-Encoding",
    "Authorization",
    "X-Env",
    "Origin",
    "X-Write-Key",
    "X-Forwarded-For",
    "Access-Control-Request-Headers",
])
.list(FORWARDED_FOR)
.list(REQUEST_HEADERS);
/// Index of `X-Game-Id` in [`FIELDS`].
pub const GAME_ID: usize = 0;
/// Index of `X-Timestamp` in [`FIELDS`].
pub const TIMESTAMP: usize = 1;
/// Index of `X-Nonce` in [`FIELDS`].
pub const NONCE: usize = 2;
/// Index of `X-Signature` in [`FIELDS`].
pub const SIGNATURE: usize = 3;
/// Index of `Content-Type` in [`FIELDS`].
pub const CONTENT_TYPE: usize = 4;
/// Index of `Content-Encoding` in [`FIELDS`].
pub const CONTENT_ENCODING: usize = 5;
/// Index of `Authorization` in [`FIELDS`] (OTLP's and client ingest's bearer token).
pub const AUTHORIZATION: usize = 6;
/// Index of `X-Env` in [`FIELDS`] (client ingest).
pub const ENV: usize = 7;
/// Index of `Origin` in [`FIELDS`] (client ingest's CORS).
pub const ORIGIN: usize = 8;
/// Index of `X-Write-Key` in [`FIELDS`] (client ingest).
pub const WRITE_KEY: usize = 9;
/// Index of `X-Forwarded-For` in [`FIELDS`] (client ingest's address, from trusted
/// proxies: `client.trusted_proxies`).
pub const FORWARDED_FOR: usize = 10;
/// Index of `Access-Control-Request-Headers` in [`FIELDS`] (a client-ingest preflight's
/// headers, a list).
pub const REQUEST_HEADERS: usize = 11;

/// What a data-port request is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An ingest endpoint.
    Ingest(Endpoint),
    /// Liveness.
    Health,
    /// Readiness.
    Ready,
    /// OTLP/HTTP.
    Otlp(OtlpRoute),
    /// Client ingest (`client/`), and its CORS preflight.
    Client(Endpoint),
}

/// The data port's route table (OTLP/HTTP included, for a load balancer or Collector
/// that sends everything to one port).
pub fn router() -> Router<Route> {
    Router::new(&FIELDS)
        .route(ROUTES[0], Methods::POST, Route::Ingest(Endpoint::Events))
        .route(ROUTES[1], Methods::POST, Route::Ingest(Endpoint::Payments))
        .route(ROUTES[2], Methods::GET_HEAD, Route::Health)
        .route(ROUTES[3], Methods::GET_HEAD, Route::Ready)
        .route(ROUTES[4], Methods::POST, Route::Otlp(OtlpRoute::Export(Signal::Logs)))
        .route(ROUTES[5], Methods::POST, Route::Otlp(OtlpRoute::Export(Signal::Traces)))
        .route(ROUTES[6], Methods::POST, Route::Otlp(OtlpRoute::Metrics))
        .route(ROUTES[7], Methods::POST_OPTIONS, Route::Client(Endpoint::Events))
        .route(ROUTES[8], Methods::POST_OPTIONS, Route::Client(Endpoint::Payments))
}

/// The OTLP port's route table: OTLP/HTTP and the probes.
pub fn otlp_router() -> Router<Route> {
    Router::new(&FIELDS)
        .route(ROUTES[4], Methods::POST, Route::Otlp(OtlpRoute::Export(Signal::Logs)))
        .route(ROUTES[5], Methods::POST, Route::Otlp(OtlpRoute::Export(Signal::Traces)))
        .route(ROUTES[6], Methods::POST, Route::Otlp(OtlpRoute::Metrics))
        .route(ROUTES[2], Methods::GET_HEAD, Route::Health)
        .route(ROUTES[3], Methods::GET_HEAD, Route::Ready)
}

/// What ingest reads from a head.
pub fn ingest_head(head: &Head) -> IngestHead<'_> {
    IngestHead {
        content_type: head.field(CONTENT_TYPE),
        content_encoding: head.field(CONTENT_ENCODING),
        credentials: CredentialHeaders {
            game_id: head.field(GAME_ID),
            timestamp: head.field(TIMESTAMP),
            nonce: head.field(NONCE),
            signature: head.field(SIGNATURE),
        },
    }
}

/// The data port of one shard.
pub struct DataPort {
    shard: Rc<Shard>,
    router: Router<Route>,
    /// Set when the process starts to drain: `/readyz` answers 503 from then on.
    draining: Arc<AtomicBool>,
}

impl DataPort {
    /// The data port on `shard`'s context.
    pub fn new(shard: Rc<Shard>, draining: Arc<AtomicBool>) -> DataPort {
        DataPort { shard, router: router(), draining }
    }

    /// The OTLP port on `shard`'s context.
    pub fn otlp(shard: Rc<Shard>, draining: Arc<AtomicBool>) -> DataPort {
        DataPort { shard, router: otlp_router(), draining }
    }
}

impl Handler for DataPort {
    type Route = Route;

    fn router(&self) -> &Router<Route> {
        &self.router
    }

    async fn handle(&self, route: Route, req: &mut Request<'_>) -> Response {
        match route {
            Route::Health => Response::json(200, r#"{"status":"ok"}"#.into()),
            Route::Ready => ready(&self.shard, &self.draining, excludes_streams(req.head().query())),
            Route::Ingest(endpoint) => ingest(&self.shard, endpoint, req).await,
            Route::Otlp(route) => otlp::handle(&self.shard, route, req).await,
            Route::Client(endpoint) => client::handle(&self.shard, endpoint, req).await,
        }
    }

    /// A head refused on an ingest, client-ingest or OTLP/HTTP signal route counts as one
    /// refused record (docs/metrics.md: a batch refused before its records were counted
    /// counts as one) of the game its credential names, as far as it was read before the
    /// fault: a client route's write key (header, else `?key=`), else `X-Game-Id`; an
    /// OTLP route's bearer token (`otlp::refused_head`, which also answers in OTLP's
    /// contract). A preflight (`OPTIONS`) carries no records and counts none, nor does
    /// `/v1/metrics` (not a signal taken).
    fn refused_head(&self, head: &Head, error: &HttpError) -> Option<Response> {
        let route = self.router.find(head.method, head.path());
        let game = match route {
            Ok(Route::Ingest(_)) => head.field(GAME_ID),
            // As the route reads its credential: a bearer token first (its game is then
            // `X-Game-ID`'s), else the write key's.
            Ok(Route::Client(_)) if head.method != Method::Options => {
                let token = crate::http::request::bearer_token(head.field(AUTHORIZATION)).is_some();
                self.key_game(head).filter(|_| !token).or_else(|| head.field(GAME_ID))
            }
            Ok(Route::Otlp(route)) => return Some(otlp::refused_head(&self.shard, route, head, error)),
            // A preflight to a path no route takes (or that does not take `OPTIONS`), from
            // an origin some game allows: allowed, so that the request after it gets its
            // 404 or 405 readable (below) instead of a failed preflight.
            Err(HttpError::NotFound | HttpError::MethodNotAllowed { .. }) if head.method == Method::Options => {
                let origin = head.field(ORIGIN).filter(|o| !o.is_empty());
                let game = self.key_game(head);
                let allowed = origin.is_some_and(|o| client::cors::allowed_for(&self.shard, game, o));
                return allowed
                    .then(|| client::cors::preflight(&self.shard, origin, game, head.field(REQUEST_HEADERS)));
            }
            _ => return self.readable_by_pages(head, error, self.key_game(head)),
        };
        ingest::count_refused(&self.shard, game.unwrap_or_default(), &IngestError::Http(error.clone()), 1);
        let client_game = match route {
            Ok(Route::Client(_)) => game.filter(|g| self.shard.games.contains_key(*g)),
            _ => None,
        };
        self.readable_by_pages(head, error, client_game)
    }

    fn served(&self, path: Option<&str>, status: u16, duration: Duration) {
        let m = &self.shard.metrics;
        if m.enabled() {
            let route = path.map_or_else(|| m.layout().unmatched(), |p| m.layout().route(p));
            m.emit(RequestServed { route, status, duration });
        }
    }
}

impl DataPort {
    /// The game of the write key the head carries (`X-Write-Key`, else `?key=`; revoked
    /// ones too), if it is a configured key.
    fn key_game(&self, head: &Head) -> Option<&str> {
        client::credential::key_game(&self.shard, head.field(WRITE_KEY), head.query())
    }

    /// A refusal before any route handled the request (an unknown path, a method the path
    /// does not take, a head the HTTP layer refused), readable by a page of an origin
    /// `game` allows (a client route's write key's game), or without one some game: without
    /// CORS headers the browser would hide its status, and the SDK would take a `404` or
    /// `405` for a network failure and send again for ever instead of five times
    /// (docs/sdk.md). `None` for other requests (the answer as it is).
    fn readable_by_pages(&self, head: &Head, error: &HttpError, game: Option<&str>) -> Option<Response> {
        let origin = head.field(ORIGIN).filter(|o| !o.is_empty())?;
        if !client::cors::allowed_for(&self.shard, game, origin) {
            return None;
        }
        let mut resp = error.response();
        client::cors::expose(&mut resp, origin);
        Some(resp)
    }
}

/// What the process shares with every shard: set from other threads, read here.
pub struct Flags {
    /// Stop serving (shutdown).
    pub stop: Arc<AtomicBool>,
    /// The process drains: `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// The shards' Redis connections' owed replies.
    pub health: Arc<crate::redis::overdue::RedisHealth>,
    /// The client filters the Analytics API stored (read when no `api.filters_file` is set).
    pub filters: Arc<crate::analytics::filters::SharedFilters>,
}

/// Readiness: not draining, Redis reached, no shard's reply from Redis overdue (owed for
/// a quarter of `redis.reply_timeout_ms`; in a Redis Cluster, no reply owed by a primary
/// to this shard's connections), no shard's appends refused by Redis (the last one
/// refused within the reply timeout, none taken since), every stream's backlog read since it
/// connected, no stream at its high-water mark — what ingest needs, and nothing else (a
/// load balancer checking it keeps taking events while ClickHouse is away: Redis holds
/// them). With `?exclude=streams` the high-water marks are not looked at: every node
/// shares the streams, so a balancer checking the marks would take every node out at once
/// for one full stream, and answer for them without `Retry-After`, although the other
/// streams have room (each node's own `503 backlog_full` refuses only what cannot go in).
fn ready(shard: &Shard, draining: &AtomicBool, exclude_streams: bool) -> Response {
    let unready = |tag: &str| {
        let mut r = Response::json(503, format!(r#"{{"error":"{tag}","ready":false}}"#));
        r.retry_after = Some(shard.config.redis.retry_after_secs);
        r
    };
    if draining.load(Ordering::Relaxed) {
        unready("draining")
    } else if !shard.redis.is_up()
        || !shard.backlog.all_known()
        || shard.redis_health.overdue().is_some()
        // In a Redis Cluster each primary's connection has a stamp of its own (one shared
        // stamp would be cleared by one primary while another owes a reply): this shard's
        // are read here (the same thread, no lock, no allocation).
        || shard.redis.overdue().is_some()
        // Redis answers but refuses appends (out of memory, read-only): a shard's last
        // append was refused, within the reply timeout, and none went in since.
        || shard.redis_health.refusing().is_some()
    {
        unready("redis_unavailable")
    } else if !exclude_streams && !shard.backlog.all_admit() {
        unready("backlog_full")
    } else {
        Response::json(200, r#"{"status":"ready","ready":true}"#.into())
    }
}

/// Whether a `/readyz` query excludes the streams' check: an `exclude` parameter naming
/// `streams` (as Kubernetes' `/readyz?exclude=<check>`; several may be given, or one list
/// separated by commas), percent-decoded as a form is.
fn excludes_streams(query: &str) -> bool {
    !query.is_empty()
        && form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "exclude")
            .any(|(_, v)| v.split([',', ' ']).any(|c| c == "streams"))
}

/// An ingest request: checks from the head, the body claimed from the shard's budget and
/// read, then ingest proper.
async fn ingest(shard: &Shard, endpoint: Endpoint, req: &mut Request<'_>) -> Response {
    let head = ingest_head(req.head());
    // Refused before its records were counted: one refused event.
    let refuse = |e: IngestError| {
        ingest::count_refused(shard, head.credentials.game_id.unwrap_or(""), &e, 1);
        e.response()
    };
    let (cred, encoding) = match ingest::precheck(shard, &head) {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    // The body counts against the shard's budget from before it is read (and before
    // `100 Continue` invites it) until the request has been handled.
    let mut held = match req.claim_body() {
        Ok(held) => held,
        Err(e) => return refuse(e.into()),
    };
    if let Err(e) = req.read_body(&mut held).await {
        return refuse(e.into());
    }
    let (wire, scratch) = req.buffers();
    match ingest::handle(shard, endpoint, &cred, encoding, wire, scratch).await {
        Ok(n) => Response::json(202, format!(r#"{{"accepted":{n}}}"#)),
        Err(e) => e.response(),
    }
}

/// Runs shard `id`'s data port, and its OTLP port when it has a listener for it, on the
/// current thread's runtime until `stop` is set and their connections have drained
/// (`server.rs`). `rates` holds the games' rate limits, shared by all shards; `metrics` is
/// this shard's own block of counters.
pub async fn run(
    id: usize,
    config: Arc<Config>,
    rates: Arc<RateLimits>,
    metrics: ShardWriter,
    listeners: (std::net::TcpListener, Option<std::net::TcpListener>, Option<std::net::TcpListener>),
    flags: Flags,
) {
    let Flags { stop, draining, health, filters } = flags;
    let limits = server::Limits {
        read_timeout: Duration::from_millis(config.server.read_timeout_ms),
        idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
        max_body_bytes: config.server.max_body_bytes,
        max_connections: config.server.max_connections,
        max_inflight_body_bytes: config.server.body_budget(),
        retry_after_secs: config.redis.retry_after_secs,
        // At the cap, the oldest idle keep-alive connection (else the oldest that sent
        // nothing yet or part of a head, else the oldest whose body is still arriving) is
        // closed for a new one: otherwise one host holding connections keeps every other
        // client out. An answer being written is never cut.
        evict_idle: true,
        evict_busy: false,
    };
    let shard = shard::build(id, config, &rates, metrics, health, filters);
    let (listener, otlp_listener, grpc_listener) = listeners;
    let otlp = otlp_listener.map(|l| {
        let port = Rc::new(DataPort::otlp(shard.clone(), draining.clone()));
        let serve = move |stream, server| conn::serve(port.clone(), server, stream);
        monoio::spawn(server::run(l, stop.clone(), limits, serve))
    });
    let grpc = grpc_listener.map(|l| {
        let shard = shard.clone();
        let serve = move |stream, server| otlp_grpc::serve(shard.clone(), server, stream);
        monoio::spawn(server::run(l, stop.clone(), limits, serve))
    });
    let port = Rc::new(DataPort::new(shard, draining));
    let serve = move |stream, server| conn::serve(port.clone(), server, stream);
    if let Err(e) = server::run(listener, stop, limits, serve).await {
        tracing::error!(shard = id, error = %e, "listener failed");
    }
    if let Some(otlp) = otlp {
        if let Err(e) = otlp.await {
            tracing::error!(shard = id, error = %e, "OTLP listener failed");
        }
    }
    if let Some(grpc) = grpc {
        if let Err(e) = grpc.await {
            tracing::error!(shard = id, error = %e, "OTLP/gRPC listener failed");
        }
    }
}
