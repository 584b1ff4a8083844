//! The control listener (`[control] listen`): `/metrics`, `/healthz`, `/readyz`, the
//! Analytics API (`/api/analytics/*`, [`crate::analytics`]) and the web dashboard (`/`,
//! [`super::dashboard`]) on a thread of its own,
//! never a data shard. It is one more surface of the generic HTTP
//! layer: a route table and a [`Handler`] served by `http::conn` like the data port.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use croupier_control::config::Config;
use croupier_control::metrics::{process, Encoder, Registry, CONTENT_TYPE};

use super::dashboard::{self, Dashboard};
use super::ready::Probes;
use super::streams;
use crate::analytics::error::ApiError;
use crate::analytics::filters::SharedFilters;
use crate::analytics::{self, Api, Headers};
use crate::http::conn;
use crate::http::error::HttpError;
use crate::http::handler::{Handler, Request};
use crate::http::request::{Fields, Head, Method};
use crate::http::response::{error_body, Response};
use crate::redis::overdue::RedisHealth;
use crate::router::{Methods, Router};
use crate::runtime::ActiveDriver;
use crate::server;
use crate::shards::{self, Shards};
use crate::slots::Slots;

/// What a control-port request is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Health,
    /// `/readyz`.
    Ready,
    /// An Analytics API route.
    Analytics(analytics::Route),
    /// The web dashboard: a page path or a file under `/assets/`.
    Dashboard,
    /// `/api/agent/analytics_filters`: the filters, for agents (`X-Agent-Token`).
    AgentFilters,
}

/// The header fields the Analytics API, `/metrics` and the agent route read, by index.
static FIELDS: Fields = Fields::new(&["Authorization", "X-Game-ID", "X-Env", "X-Agent-Token"]);

/// Whether `given` is `expected`, in constant time (for equal lengths).
fn token_matches(expected: &str, given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(expected.as_bytes().ct_eq(g.as_bytes())))
}

/// The control port's route table.
pub fn router() -> Router<Route> {
    let r = Router::new(&FIELDS)
        .route("/metrics", Methods::GET_HEAD, Route::Metrics)
        .route("/healthz", Methods::GET_HEAD, Route::Health)
        .route("/readyz", Methods::GET_HEAD, Route::Ready)
        .route("/api/agent/analytics_filters", Methods::GET_HEAD, Route::AgentFilters)
        .prefix(dashboard::ASSETS, Methods::GET_HEAD, Route::Dashboard);
    let r = dashboard::PAGES.iter().fold(r, |r, page| r.route(page, Methods::GET_HEAD, Route::Dashboard));
    analytics::routes(r, Route::Analytics)
}

/// The control port on its thread.
struct ControlPort {
    config: Arc<Config>,
    registry: Arc<Registry>,
    probes: Rc<Probes>,
    driver: ActiveDriver,
    router: Router<Route>,
    api: Api,
    /// Set by [`Control::drain`]: `/readyz` answers 503 from then on.
    draining: Arc<AtomicBool>,
    dashboard: Dashboard,
    /// Places for Analytics API requests being handled ([`API_REQUESTS_AT_ONCE`]).
    api_requests: Slots,
}

/// The control port's places (connections at once).
const PLACES: usize = 64;

/// Analytics API requests the control port handles at once: half its places. A request
/// may wait `api.query_timeout_ms` for ClickHouse, and connections in a request are never
/// closed for new ones: were every place taken by such requests, `/healthz`, `/readyz`
/// and `/metrics` would wait that long (a liveness probe failing under a dashboard's
/// load). Past it a request is answered 503 `busy` at once.
const API_REQUESTS_AT_ONCE: usize = PLACES / 2;

impl ControlPort {
    /// 401 unless `Authorization` carries `control.metrics_token` (when one is set).
    fn metrics_refused(&self, authorization: Option<&str>) -> Option<Response> {
        let expected = self.config.control.metrics_token.as_deref()?;
        if token_matches(expected, crate::http::request::bearer_token(authorization)) {
            return None;
        }
        let body = error_body("unauthorized", "/metrics needs Authorization: Bearer <control.metrics_token>", "");
        let mut r = Response::json(401, body);
        r.headers.push(("WWW-Authenticate", "Bearer".into()));
        Some(r)
    }

    async fn metrics(&self) -> Response {
        let (readiness, readings) = self.probes.scrape().await;
        let mut enc = Encoder::new();
        self.registry.encode(&mut enc);
        if let Ok(r) = &readings {
            let now = u64::try_from(crate::ingest::now_ms()).unwrap_or(0);
            streams::encode(&mut enc, r, now);
        }
        super::ready::encode(&mut enc, &readiness);
        process::encode_build_info(&mut enc, self.driver.name());
        process::encode_process(&mut enc);
        Response::with_type(200, CONTENT_TYPE, enc.finish())
    }

    async fn ready(&self) -> Response {
        if self.draining.load(Ordering::Relaxed) {
            let mut r = Response::json(503, r#"{"ready":false,"draining":true}"#.into());
            r.retry_after = Some(self.config.redis.retry_after_secs);
            return r;
        }
        let (readiness, _) = self.probes.readiness().await;
        if readiness.ready() {
            Response::json(200, readiness.body())
        } else {
            let mut r = Response::json(503, readiness.body());
            r.retry_after = Some(self.config.redis.retry_after_secs);
            r
        }
    }
}

impl Handler for ControlPort {
    type Route = Route;

    fn router(&self) -> &Router<Route> {
        &self.router
    }

    async fn handle(&self, route: Route, req: &mut Request<'_>) -> Response {
        match route {
            Route::Metrics => match self.metrics_refused(req.head().field(0)) {
                Some(refused) => refused,
                None => self.metrics().await,
            },
            Route::AgentFilters => private({
                let head = req.head();
                let headers = Headers { authorization: None, game: head.field(1), env: head.field(2) };
                match self.config.api.agent_token.as_deref() {
                    None => Response::json(503, r#"{"message":"agent filters disabled"}"#.into()),
                    Some(t) if !token_matches(t, head.field(3)) => {
                        Response::json(401, error_body("unauthorized", "X-Agent-Token missing or wrong", ""))
                    }
                    Some(_) => self.api.agent_filters(head.query(), headers),
                }
            }),
            Route::Health => Response::json(200, r#"{"status":"ok"}"#.into()),
            Route::Ready => self.ready().await,
            Route::Dashboard => self.dashboard.serve(req.head().path()),
            Route::Analytics(r) => {
                let started = std::time::Instant::now();
                let head = req.head();
                let headers = api_headers(head);
                let refused = |resp: Response| private(self.api.refused(r, head.query(), headers, started, resp, 0));
                // A change's token is checked from its head, before it takes a place and
                // its body is awaited: refused at once, and the connection closed (its
                // body is not waited for).
                if head.method == Method::Post {
                    if let Err(e) = self.api.may_post(r, headers) {
                        let mut resp = refused(e.response());
                        resp.close = true;
                        return resp;
                    }
                }
                let Some(_counted) = self.api_requests.try_acquire() else {
                    return refused(ApiError::TooManyRequests.response());
                };
                if head.method != Method::Post {
                    let reads = self.api.reads();
                    // A client gone before its answer (closed its connection) ends the
                    // request: its reads are cancelled on ClickHouse, not left running;
                    // recorded as 499, nothing written.
                    return match req.unless_closed(self.api.handle(r, head.query(), headers, None, &reads)).await {
                        Some(resp) => private(resp),
                        None => {
                            let gone = ApiError::ClientClosed.response();
                            private(self.api.refused(r, head.query(), headers, started, gone, reads.read_rows()))
                        }
                    };
                }
                let mut held = match req.claim_body() {
                    Ok(h) => h,
                    Err(e) => return refused(e.response()),
                };
                if let Err(e) = req.read_body(&mut held).await {
                    return refused(e.response());
                }
                let body = req.buffers().0.to_vec();
                // A change is made whole whether or not its client waits for the answer.
                private(self.api.handle(r, head.query(), headers, Some(&body), &self.api.reads()).await)
            }
        }
    }

    /// The control port's own requests are not counted (its scrapes would show in the
    /// data port's figures).
    fn served(&self, _path: Option<&str>, _status: u16, _duration: Duration) {}

    /// A refusal of an Analytics API route's request before the API read it (a method the
    /// route does not take, a head the HTTP layer refuses) keeps the API's contract: its
    /// headers ([`private`]), its count and its audit row.
    fn refused_head(&self, head: &Head, error: &HttpError) -> Option<Response> {
        match self.router.route_of(head.path())? {
            Route::Analytics(r) => {
                let now = std::time::Instant::now();
                Some(private(self.api.refused(r, head.query(), api_headers(head), now, error.response(), 0)))
            }
            Route::AgentFilters => Some(private(error.response())),
            _ => None,
        }
    }
}

/// The header fields an Analytics API request is read with.
fn api_headers(head: &Head) -> Headers<'_> {
    Headers { authorization: head.field(0), game: head.field(1), env: head.field(2) }
}

/// An answer of the Analytics API (a player's figures, a game's settings): kept by no
/// cache (`Cache-Control: no-store`), and read as the type it says (`nosniff`).
fn private(mut r: Response) -> Response {
    r.headers.push(("Cache-Control", "no-store".to_owned()));
    r.headers.push(("X-Content-Type-Options", "nosniff".to_owned()));
    r
}

/// A running control listener.
#[derive(Debug)]
pub struct Control {
    addr: SocketAddr,
    thread: Shards,
    draining: Arc<AtomicBool>,
}

impl Control {
    /// The address it listens on (the resolved port when `:0` was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `/readyz` answer 503 (`{"ready":false,"draining":true}`) from now on: the
    /// process is stopping, a load balancer should send it nothing new.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting, answers the requests in hand, and waits for the thread.
    pub fn shutdown(self) {
        self.thread.shutdown();
    }
}

/// Starts the control listener of a process that runs `ingest` and/or `worker` (which
/// decides what `/readyz` checks); `None` when `[control] listen` is empty. The thread is
/// supervised like a shard: if it ends on its own, the process ends.
pub fn start(
    config: Arc<Config>,
    registry: Arc<Registry>,
    ingest: bool,
    worker: bool,
) -> Result<Option<Control>, String> {
    start_with_health(config, registry, (ingest, worker), None, Arc::default())
}

/// [`start`], with the ingest shards' Redis connections (`health`), whose overdue
/// replies `/readyz` reports at once, and the filters the ingest shards read when no
/// `api.filters_file` is set (`filters`, which the Analytics API stores into).
pub fn start_with_health(
    config: Arc<Config>,
    registry: Arc<Registry>,
    (ingest, worker): (bool, bool),
    health: Option<Arc<RedisHealth>>,
    filters: Arc<SharedFilters>,
) -> Result<Option<Control>, String> {
    if config.control.listen.is_empty() {
        return Ok(None);
    }
    let driver = crate::runtime::resolve(config.server.driver)?;
    let listen: SocketAddr = config.control.listen.parse().map_err(|e| format!("control.listen: {e}"))?;
    let listener =
        std::net::TcpListener::bind(listen).map_err(|e| format!("control.listen: cannot listen on {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("control.listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("control.listen: {e}"))?;
    let mut listener = Some(listener);
    let draining = Arc::new(AtomicBool::new(false));
    let flag = draining.clone();
    let thread = shards::spawn_shards(
        "control",
        1,
        driver,
        |_| None,
        |_, stop| {
            let (config, registry, listener, draining, health, filters) =
                (config.clone(), registry.clone(), listener.take(), flag.clone(), health.clone(), filters.clone());
            move || async move {
                let Some(listener) = listener else { return };
                let limits = server::Limits {
                    read_timeout: Duration::from_millis(config.server.read_timeout_ms),
                    idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
                    // Its routes take small bodies at most (the filters): others are read past.
                    max_body_bytes: 64 << 10,
                    max_connections: PLACES,
                    max_inflight_body_bytes: 64 << 10,
                    retry_after_secs: config.redis.retry_after_secs,
                    // Probes and scrapes must get through idle keep-alive connections.
                    evict_idle: true,
                    evict_busy: true,
                };
                let probes = Rc::new(Probes::new(&config, ingest, worker, health, registry.clone()));
                let api = match Api::new(&config, filters) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "analytics API cannot start");
                        return;
                    }
                };
                registry.add_source(api.metrics());
                let audit_stop = Rc::new(Cell::new(false));
                let audit = monoio::spawn(api.audit_task(audit_stop.clone()));
                let refresh = monoio::spawn(api.refresh_task(audit_stop.clone()));
                let watch = monoio::spawn(probes.clone().watch_clickhouse(audit_stop.clone()));
                let dashboard = Dashboard::load(&config.control.dashboard_dir);
                let port = Rc::new(ControlPort {
                    config,
                    registry,
                    probes,
                    driver,
                    router: router(),
                    api,
                    draining,
                    dashboard,
                    api_requests: Slots::new(API_REQUESTS_AT_ONCE),
                });
                let serve = move |stream, server| conn::serve(port.clone(), server, stream);
                if let Err(e) = server::run(listener, stop, limits, serve).await {
                    tracing::error!(error = %e, "control listener failed");
                }
                audit_stop.set(true);
                audit.await;
                refresh.await;
                watch.await;
            }
        },
    )?;
    Ok(Some(Control { addr, thread, draining }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::HttpError;

    #[test]
    fn routes_of_the_control_port() {
        let r = router();
        assert_eq!(r.find(Method::Get, "/metrics"), Ok(Route::Metrics));
        assert_eq!(r.find(Method::Head, "/readyz"), Ok(Route::Ready));
        assert_eq!(r.find(Method::Post, "/metrics"), Err(HttpError::MethodNotAllowed { allow: "GET, HEAD" }));
        assert_eq!(r.find(Method::Get, "/api/ingest/events"), Err(HttpError::NotFound));
        assert_eq!(r.find(Method::Get, "/"), Ok(Route::Dashboard));
        assert_eq!(r.find(Method::Get, "/overview"), Ok(Route::Dashboard));
        assert_eq!(r.find(Method::Get, "/assets/index-abc.js"), Ok(Route::Dashboard));
        assert_eq!(r.find(Method::Get, "/api/analytics/nope"), Err(HttpError::NotFound));
        assert_eq!(r.find(Method::Post, "/"), Err(HttpError::MethodNotAllowed { allow: "GET, HEAD" }));
        assert_eq!(r.find(Method::Get, "/api/agent/analytics_filters"), Ok(Route::AgentFilters));
    }
}
