//! The Analytics API: Croupier's `/api/analytics/*` reads on the control listener, off
//! the data shards. Each request is authenticated ([`auth`]), checked against its
//! route's permission and the token's games, answered from ClickHouse ([`db`]) or Redis,
//! and recorded in the audit log ([`audit`]) after its answer is ready. Refusals follow
//! one contract ([`error`]); request values reach SQL only through [`sql`]. Figures are
//! defined in `docs/metrics.md`.

pub mod attribution;
pub mod audit;
pub mod auth;
pub mod behavior;
pub mod cohorts;
pub mod db;
pub mod error;
pub mod export;
pub mod filters;
pub mod go_regex;
pub mod levels;
pub mod overview;
pub mod params;
pub mod payments;
pub mod realtime;
pub mod retention;
pub mod sql;
pub mod taxonomy;
pub mod telemetry;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use croupier_control::config::Config;
use croupier_protocol::resp::{self, Frame};
use serde_json::Value as Json;

use self::audit::{AuditLog, AuditRow};
use self::auth::{Caller, Verifier};
use self::db::{Db, Reads};
use self::error::ApiError;
use self::params::{Params, Scope};
use crate::clickhouse::connection::ChOptions;
use crate::http::response::Response;
use crate::redis::connection::{RedisClient, RedisError, RedisOptions};
use crate::router::{Methods, Router};

/// A JSON object of `fields`, their values moved in. `json!` copies every value it is
/// given (it serializes a reference to it), so an answer's arrays of thousands of objects
/// put in with it were built twice, on the thread that also answers probes.
pub(crate) fn object<const N: usize>(fields: [(&str, Json); N]) -> Json {
    Json::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// An Analytics API route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/api/analytics/overview`.
    Overview,
    /// `/api/analytics/realtime`.
    Realtime,
    /// `/api/analytics/realtime/series`.
    RealtimeSeries,
    /// `/api/analytics/retention`.
    Retention,
    /// `/api/analytics/payments/summary`.
    PaymentsSummary,
    /// `/api/analytics/payments/transactions`.
    PaymentsTransactions,
    /// `/api/analytics/payments/product_trend`.
    PaymentsProductTrend,
    /// `/api/analytics/behavior/events`.
    BehaviorEvents,
    /// `/api/analytics/behavior/funnel`.
    BehaviorFunnel,
    /// `/api/analytics/behavior/paths`.
    BehaviorPaths,
    /// `/api/analytics/behavior/adoption`.
    BehaviorAdoption,
    /// `/api/analytics/behavior/adoption_breakdown`.
    BehaviorAdoptionBreakdown,
    /// `/api/analytics/levels`.
    Levels,
    /// `/api/analytics/levels/episodes`.
    LevelEpisodes,
    /// `/api/analytics/levels/maps`.
    LevelMaps,
    /// `/api/analytics/ltv`.
    Ltv,
    /// `/api/analytics/segments`.
    Segments,
    /// `/api/analytics/attribution`.
    Attribution,
    /// `/api/analytics/filters` (GET and POST).
    Filters,
}

impl Route {
    /// Every route with its path.
    pub const ALL: &'static [(&'static str, Route)] = &[
        ("/api/analytics/overview", Route::Overview),
        ("/api/analytics/realtime", Route::Realtime),
        ("/api/analytics/realtime/series", Route::RealtimeSeries),
        ("/api/analytics/retention", Route::Retention),
        ("/api/analytics/payments/summary", Route::PaymentsSummary),
        ("/api/analytics/payments/transactions", Route::PaymentsTransactions),
        ("/api/analytics/payments/product_trend", Route::PaymentsProductTrend),
        ("/api/analytics/behavior/events", Route::BehaviorEvents),
        ("/api/analytics/behavior/funnel", Route::BehaviorFunnel),
        ("/api/analytics/behavior/paths", Route::BehaviorPaths),
        ("/api/analytics/behavior/adoption", Route::BehaviorAdoption),
        ("/api/analytics/behavior/adoption_breakdown", Route::BehaviorAdoptionBreakdown),
        ("/api/analytics/levels", Route::Levels),
        ("/api/analytics/levels/episodes", Route::LevelEpisodes),
        ("/api/analytics/levels/maps", Route::LevelMaps),
        ("/api/analytics/ltv", Route::Ltv),
        ("/api/analytics/segments", Route::Segments),
        ("/api/analytics/attribution", Route::Attribution),
        ("/api/analytics/filters", Route::Filters),
    ];

    /// The permission it requires (a `POST` changes settings).
    pub fn permission(self, post: bool) -> &'static str {
        if post {
            auth::MANAGE
        } else {
            auth::READ
        }
    }

    /// The methods it takes.
    pub fn methods(self) -> Methods {
        match self {
            Route::Filters => Methods::GET_HEAD_POST,
            _ => Methods::GET_HEAD,
        }
    }

    /// Its path.
    pub fn path(self) -> &'static str {
        Route::ALL.iter().find(|(_, r)| *r == self).map_or("", |(p, _)| p)
    }
}

/// Adds the API's routes to a route table, each as `wrap(route)`.
pub fn routes<R: Copy>(mut router: Router<R>, wrap: impl Fn(Route) -> R) -> Router<R> {
    for (path, route) in Route::ALL {
        router = router.route(path, route.methods(), wrap(*route));
    }
    router
}

/// What a route's handler is given.
pub struct Ctx<'a> {
    /// ClickHouse.
    pub db: &'a Reads<'a>,
    /// Redis.
    pub redis: &'a RedisClient,
    /// The query's parameters.
    pub params: &'a Params,
    /// The game and environment read.
    pub scope: &'a Scope,
    /// Unix seconds at the request.
    pub now: i64,
    /// Cost per install by channel (`api.cpi_cents`).
    pub costs: &'a BTreeMap<String, u64>,
}

impl Ctx<'_> {
    /// Runs a Redis command within the request's deadline (504 `query_timeout` past it,
    /// as a ClickHouse query); an error reply or a failure is 502.
    pub async fn redis(&self, args: &[&[u8]]) -> Result<Frame, ApiError> {
        let mut cmd = Vec::new();
        resp::command(&mut cmd, args);
        match monoio::time::timeout_at(self.db.deadline(), read_redis(self.redis, cmd)).await {
            Ok(reply) => redis_reply(reply),
            Err(_) => Err(ApiError::QueryTimeout),
        }
    }
}

/// Pauses before each new try of a Redis read whose connection was down: a Redis that
/// just came back is connected to again within the client's reconnect pause (at most 1 s).
const REDIS_RETRY_PAUSES: [Duration; 3] =
    [Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(600)];

/// Sends a Redis read, and again (up to three more times, [`REDIS_RETRY_PAUSES`] apart)
/// while the connection is down: the first requests after a Redis restart are answered
/// rather than 502. Reads only: sending one twice changes nothing. The caller bounds it
/// by the request's deadline.
pub async fn read_redis(redis: &RedisClient, cmd: Vec<u8>) -> Result<Frame, RedisError> {
    for pause in REDIS_RETRY_PAUSES {
        match redis.call(cmd.clone()).await {
            Err(RedisError::Unavailable) => monoio::time::sleep(pause).await,
            other => return other,
        }
    }
    redis.call(cmd).await
}

/// A Redis reply as the API answers it: an error reply or a failure is 502, its text
/// logged (it may name the server) and not answered.
pub fn redis_reply(reply: Result<Frame, RedisError>) -> Result<Frame, ApiError> {
    match reply {
        Ok(Frame::Error(e)) => {
            tracing::warn!(error = %e, "analytics Redis command refused");
            Err(ApiError::RedisFailed("Redis refused the command".into()))
        }
        Ok(f) => Ok(f),
        Err(e) => {
            tracing::warn!(error = ?e, "analytics Redis command failed");
            Err(ApiError::RedisFailed("Redis unavailable".into()))
        }
    }
}

/// The API's state on the control thread.
pub struct Api {
    verifier: Verifier,
    db: Rc<Db>,
    redis: RedisClient,
    audit: Rc<AuditLog>,
    filters: filters::Filters,
    audit_opts: ChOptions,
    audit_every: Duration,
    costs: BTreeMap<String, u64>,
    /// Requests and reads given up on, for `/metrics`.
    metrics: std::sync::Arc<telemetry::ApiMetrics>,
}

impl Api {
    /// From the configuration, on the control thread (starts its Redis connection);
    /// `filters` is where the process's client ingest reads the filters it stores.
    pub fn new(config: &Config, filters: std::sync::Arc<filters::SharedFilters>) -> Result<Api, String> {
        let ch = &config.clickhouse;
        let opts = ChOptions {
            // On a cluster: any node (the first that answers); reads go through its
            // Distributed tables.
            addr: ch.nodes().join(","),
            database: ch.database.clone(),
            user: ch.user.clone(),
            password: ch.password.clone(),
            compression: ch.compression,
            timeout: Duration::from_millis(ch.timeout_ms),
        };
        let api = &config.api;
        let timeout = Duration::from_millis(api.query_timeout_ms);
        let metrics = std::sync::Arc::new(telemetry::ApiMetrics::default());
        Ok(Api {
            verifier: Verifier::from_config(api)?,
            db: Rc::new(
                Db::new(opts.clone(), api.max_queries_in_flight, timeout)
                    .on_cluster(ch.is_cluster())
                    .with_memory_limit(api.max_query_memory_bytes)
                    .with_metrics(metrics.clone()),
            ),
            redis: RedisClient::start(RedisOptions::from_config(config)),
            audit: Rc::new(AuditLog::new(api.audit_max_pending)),
            filters: filters::Filters::load(api.filters_file.clone(), config.games.keys().cloned().collect(), filters)?,
            audit_opts: opts,
            audit_every: Duration::from_millis(api.audit_flush_ms),
            costs: api.cpi_cents.clone(),
            metrics,
        })
    }

    /// Its counters, for the registry (`/metrics`).
    pub fn metrics(&self) -> std::sync::Arc<telemetry::ApiMetrics> {
        self.metrics.clone()
    }

    /// The audit writer's task: spawn it on the control thread; it ends after a last
    /// flush once `stop` is set.
    pub fn audit_task(&self, stop: Rc<std::cell::Cell<bool>>) -> impl std::future::Future<Output = ()> {
        self.audit.clone().run(self.audit_opts.clone(), self.audit_every, stop)
    }

    /// The task reading remembered figures of complete days again before they expire
    /// ([`Db::refresh_due`]): spawn it on the control thread; it ends once `stop` is set.
    pub fn refresh_task(&self, stop: Rc<std::cell::Cell<bool>>) -> impl std::future::Future<Output = ()> {
        self.db.clone().refresh(stop)
    }

    /// A request's reads ([`Api::handle`]'s), made by its caller: a request whose client
    /// went away is recorded with the rows its reads had read ([`Api::refused`]).
    pub fn reads(&self) -> Reads<'_> {
        self.db.reads()
    }

    /// Answers a request to `route` (`body`: a `POST`'s) with its `reads` ([`Api::reads`])
    /// and records it in the audit log.
    pub async fn handle(
        &self,
        route: Route,
        query: &str,
        headers: Headers<'_>,
        body: Option<&[u8]>,
        reads: &Reads<'_>,
    ) -> Response {
        let started = std::time::Instant::now();
        let params = Params::parse(query);
        let mut scope = Scope::resolve(&params, headers.game, headers.env);
        let caller = self.verifier.verify(headers.authorization);
        // `format=csv` exports the route's table, with `analytics:export` besides the
        // route's permission.
        let format = params.choice("format", &["json", "csv"]);
        let csv = body.is_none() && format == Ok("csv");
        let result = match (&caller, body) {
            (Ok(_), None) if format.is_err() => format.map(|_| Json::Null),
            (Ok(c), Some(body)) => self.post(route, c, body, &mut scope).await,
            (Ok(c), None) if csv => match export::check(route).and_then(|()| c.require(auth::EXPORT)) {
                Ok(()) => self.authorized(route, c, &params, &scope, reads).await,
                Err(e) => Err(e),
            },
            (Ok(c), None) => self.authorized(route, c, &params, &scope, reads).await,
            (Err(e), _) => Err(e.clone()),
        };
        // Building the answer counts against the deadline too: past it, 504 rather than
        // a late answer.
        let result = match result {
            Ok(_) if body.is_none() && monoio::time::Instant::now() > reads.deadline() => Err(ApiError::QueryTimeout),
            r => r,
        }
        .map_err(|e| reads.answer_late(e));
        let resp = match result {
            Ok(body) if csv => match export::csv(route, &body) {
                Ok(text) => Response::with_type(200, "text/csv; charset=utf-8", text),
                Err(e) => e.response(),
            },
            Ok(body) => Response::json(200, body.to_string()),
            Err(e) => e.response(),
        };
        self.record(route, &caller, &params, &scope, resp.status, started, reads.read_rows());
        resp
    }

    /// Whether the head of a `POST` to `route` carries a token that may change settings:
    /// checked before the request takes one of the API's places or its body is read (a
    /// client without a token holding places with slow bodies kept every dashboard out).
    pub fn may_post(&self, route: Route, headers: Headers<'_>) -> Result<(), ApiError> {
        self.verifier.verify(headers.authorization).and_then(|c| c.require(route.permission(true)))
    }

    /// Records a request to `route` begun at `started` and answered `resp` before the API
    /// read it (refused by the HTTP layer or the port: a method the route does not take,
    /// a body past its limit, no place free), or ended without an answer (its client gone,
    /// after its reads read `read_rows` rows) — in the audit log and
    /// `croupier_api_requests_total` as every other answer — and returns `resp`.
    pub fn refused(
        &self,
        route: Route,
        query: &str,
        headers: Headers<'_>,
        started: std::time::Instant,
        resp: Response,
        read_rows: u64,
    ) -> Response {
        let params = Params::parse(query);
        let scope = Scope::resolve(&params, headers.game, headers.env);
        let caller = self.verifier.verify(headers.authorization);
        self.record(route, &caller, &params, &scope, resp.status, started, read_rows);
        resp
    }

    /// One answer to `route`: its audit row and its count.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        route: Route,
        caller: &Result<Caller, ApiError>,
        params: &Params,
        scope: &Scope,
        status: u16,
        started: std::time::Instant,
        read_rows: u64,
    ) {
        let (user, roles) = match caller {
            Ok(c) => (c.user.clone(), c.roles.join(",")),
            Err(_) => (String::new(), String::new()),
        };
        let row = AuditRow {
            time: u32::try_from(now_secs()).unwrap_or(0),
            user,
            roles,
            route: route.path().to_owned(),
            game_id: scope.game.clone().unwrap_or_default(),
            env: scope.env.clone().unwrap_or_default(),
            params: params.to_json(),
            status,
            duration_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            read_rows,
        };
        match caller {
            Ok(_) => self.audit.record(row),
            Err(_) => self.audit.record_anonymous(row),
        }
        self.metrics.answered(route, status);
    }

    /// `GET /api/agent/analytics_filters` once its `X-Agent-Token` has matched: the
    /// filters of the scope, as `GET /api/analytics/filters` answers them (not audited:
    /// an agent is no API user).
    pub fn agent_filters(&self, query: &str, headers: Headers<'_>) -> Response {
        let params = Params::parse(query);
        let scope = Scope::resolve(&params, headers.game, headers.env);
        match self.filters.get(&scope) {
            Ok(body) => Response::json(200, body.to_string()),
            Err(e) => e.response(),
        }
    }

    /// A `POST` (the filters): the game it changes is the body's.
    async fn post(&self, route: Route, caller: &Caller, body: &[u8], scope: &mut Scope) -> Result<Json, ApiError> {
        caller.require(route.permission(true))?;
        let game = self.filters.game_of(body)?;
        caller.may_read(Some(&game))?;
        scope.game = Some(game);
        self.filters.update(body).await
    }

    async fn authorized(
        &self,
        route: Route,
        caller: &Caller,
        params: &Params,
        scope: &Scope,
        reads: &Reads<'_>,
    ) -> Result<Json, ApiError> {
        caller.require(route.permission(false))?;
        scope.check()?;
        caller.may_read(scope.game.as_deref())?;
        let ctx = Ctx { db: reads, redis: &self.redis, params, scope, now: now_secs(), costs: &self.costs };
        match route {
            Route::Overview => overview::overview(&ctx).await,
            Route::Realtime => realtime::realtime(&ctx).await,
            Route::RealtimeSeries => realtime::series(&ctx).await,
            Route::Retention => retention::retention(&ctx).await,
            Route::PaymentsSummary => payments::summary(&ctx).await,
            Route::PaymentsTransactions => payments::transactions(&ctx).await,
            Route::PaymentsProductTrend => payments::product_trend(&ctx).await,
            Route::BehaviorEvents => behavior::events(&ctx).await,
            Route::BehaviorFunnel => behavior::funnel(&ctx).await,
            Route::BehaviorPaths => behavior::paths(&ctx).await,
            Route::BehaviorAdoption => behavior::adoption(&ctx).await,
            Route::BehaviorAdoptionBreakdown => behavior::adoption_breakdown(&ctx).await,
            Route::Levels => levels::levels(&ctx).await,
            Route::LevelEpisodes => levels::facets(&ctx, "episode", "episodes").await,
            Route::LevelMaps => levels::facets(&ctx, "map", "maps").await,
            Route::Ltv => cohorts::ltv(&ctx).await,
            Route::Segments => cohorts::segments(&ctx).await,
            Route::Attribution => attribution::attribution(&ctx).await,
            Route::Filters => self.filters.get(scope),
        }
    }
}

/// The header fields the API reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    /// `Authorization`.
    pub authorization: Option<&'a str>,
    /// `X-Game-ID`.
    pub game: Option<&'a str>,
    /// `X-Env`.
    pub env: Option<&'a str>,
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
