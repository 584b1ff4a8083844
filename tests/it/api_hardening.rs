//! The Analytics API's refusals of hostile input, on a control listener with Redis and
//! no ClickHouse (every refusal comes before a query): strict numeric and enumerated
//! parameters, the filters' game and ids, JWT `nbf` and `exp`, and status lines with
//! their standard reason phrases; `control.metrics_token` and the agent route.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use croupier_control::config::{Config, Driver, Game};
use croupier_control::metrics::Registry;
use croupier_dataplane::control::listener::{self, Control};
use croupier_it::http::{HttpClient, Reply};
use croupier_it::redis::RedisServer;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "it-jwt-secret";

/// A control listener on a fresh Redis; ClickHouse's address has nobody listening.
struct LightApi {
    control: Option<Control>,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl LightApi {
    fn start() -> LightApi {
        Self::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut Config)) -> LightApi {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.server.driver = Driver::Epoll;
        config.redis.addr = redis.addr();
        config.clickhouse.addr = format!("127.0.0.1:{}", croupier_it::free_port());
        config.control.listen = "127.0.0.1:0".into();
        config.api.jwt_secret = SECRET.into();
        config.api.filters_file = Some(dir.path().join("filters.json"));
        for g in ["g1", "g2"] {
            config.games.insert(g.into(), Game { secret: Some("s".into()), ..Game::default() });
        }
        tweak(&mut config);
        let control = listener::start(Arc::new(config), Registry::new(&[], &[], false), false, false)
            .expect("control starts")
            .expect("control listener");
        LightApi { control: Some(control), _redis: redis, _dir: dir }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.control.as_ref().expect("running").local_addr()
    }

    fn request(&self, method: &str, path: &str, token: &str, body: &str) -> Reply {
        let headers = vec![("Authorization".to_owned(), format!("Bearer {token}"))];
        HttpClient::connect(self.addr()).request(method, path, &headers, body.as_bytes())
    }

    /// `GET path` with exactly `headers`.
    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        HttpClient::connect(self.addr()).request("GET", path, &headers, b"")
    }

    /// The status line of `GET path` with `token`, as sent.
    fn status_line(&self, path: &str, token: &str) -> String {
        let mut s = std::net::TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        text.split("\r\n").next().unwrap_or_default().to_owned()
    }
}

impl Drop for LightApi {
    fn drop(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown();
        }
    }
}

fn now() -> i64 {
    croupier_dataplane::analytics::now_secs()
}

fn token(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"))
        .expect("encode")
}

fn admin() -> String {
    token(json!({"sub":"alice","roles":["admin"],"exp":now() + 3600}))
}

/// 400 `invalid_parameter` naming `field`.
fn assert_refused(r: &Reply, field: &str, what: &str) {
    let body: Value = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
    assert_eq!(
        (r.status, body["error"].as_str(), body["field"].as_str()),
        (400, Some("invalid_parameter"), Some(field)),
        "{what}: {}",
        r.text()
    );
}

/// Black-box finding (low): `page=-1`, `size=0`, a huge `size`, `retention?cohort=xyz`
/// and the like were accepted silently. Croupier's own parameters keep Croupier's lenient
/// defaults (its clients rely on them: the dashboard sends `cohort=signup`); what cannot
/// be read as the type Croupier reads (an integer that is not one) and our own parameters
/// (`format`) are refused: 400 naming the field.
#[test]
fn attack_loose_api_parameters_are_refused_naming_the_field() {
    let api = LightApi::start();
    let range = "start=2025-11-01&end=2025-11-02";
    let cases = [
        ("behavior/events?page=x", "page"),
        ("behavior/events?size=99999999999999999999", "size"),
        ("payments/transactions?size=1e3", "size"),
        ("payments/transactions?page=1.5", "page"),
        ("behavior/funnel?steps=a,b&max_users=lots", "max_users"),
        ("behavior/funnel?steps=a,b&gap_sec=1m", "gap_sec"),
        ("behavior/paths?steps=five", "steps"),
        ("behavior/paths?limit=-", "limit"),
        ("behavior/paths?max_groups=1e9", "max_groups"),
        ("retention?start=2025-11", "start"),
        ("overview?format=xml", "format"),
    ];
    let token = admin();
    for (query, field) in cases {
        let query = query.replace("RANGE", range);
        let path = format!("/api/analytics/{query}");
        assert_refused(&api.request("GET", &path, &token, ""), field, &path);
    }
    // Valid values, and Croupier's out-of-range or unknown ones (which it reads as its
    // defaults), get past validation (to the query, which fails here: no ClickHouse).
    for query in [
        "behavior/events?page=2&size=500",
        "behavior/events?page=-1&size=0",
        "behavior/events?page=0&size=501",
        "payments/transactions?page=1&size=200",
        "payments/transactions?page=-1&size=0",
        "payments/transactions?size=201",
        "retention?cohort=first_active",
        "retention?cohort=signup",
        "retention?cohort=xyz",
        "behavior/paths?steps=3&limit=10&per=user&same_session=1",
        "behavior/paths?steps=0&limit=0&max_groups=-3&per=team&gap_sec=-5&same_session=yes",
        "behavior/paths?steps=99&limit=501&max_groups=200001",
        "behavior/funnel?steps=a,b&sequential=1&max_users=10",
        "behavior/funnel?steps=a,b&sequential=2&same_session=maybe&max_users=0&gap_sec=-1",
        "behavior/funnel?steps=a,b&max_users=200001",
        "behavior/adoption?features=a&per=team",
        "behavior/adoption_breakdown?features=a&by=country&per=session",
        "behavior/adoption_breakdown?features=a&by=xyz&per=x",
        "payments/product_trend?product_id=p&granularity=day&RANGE",
    ] {
        let query = query.replace("RANGE", range);
        let r = api.request("GET", &format!("/api/analytics/{query}"), &token, "");
        assert_eq!((r.status, r.error_tag()), (502, "query_failed".to_owned()), "{query}: {}", r.text());
    }
}

/// Black-box finding (low): `POST /api/analytics/filters` stored settings for a game that
/// is not configured, and ids holding `|` (the storage key's separator, so that
/// `g1|a` + `b` and `g1` + `a|b` were one key).
#[test]
fn attack_filters_refuse_unconfigured_games_and_separators() {
    let api = LightApi::start();
    let post = |body: &str| api.request("POST", "/api/analytics/filters", &admin(), body);
    assert_refused(&post(r#"{"game_id":"g9","env":"prod"}"#), "game_id", "unconfigured game");
    assert_refused(&post(r#"{"game_id":"g1|x","env":"prod"}"#), "game_id", "| in the game");
    assert_refused(&post(r#"{"game_id":"g1","env":"prod|x"}"#), "env", "| in the env");
    let r = api.request("GET", "/api/analytics/filters?game_id=g1&env=a%7Cb", &admin(), "");
    assert_refused(&r, "env", "| in a read's env");
    // A caller limited to g1 is told 403 for any other game, configured (g2) or not (g9):
    // nothing says which games are configured.
    let limited = token(json!({"sub":"bob","roles":["admin"],"games":["g1"],"exp":now() + 3600}));
    for game in ["g2", "g9"] {
        let body = format!(r#"{{"game_id":"{game}","env":"prod"}}"#);
        let r = api.request("POST", "/api/analytics/filters", &limited, &body);
        assert_eq!((r.status, r.error_tag()), (403, "forbidden".to_owned()), "{game}: {}", r.text());
    }
    // A field given twice (black-box finding: the last won, where a proxy reading the
    // first would see another game) is refused, as ingest refuses a record's.
    let twice = post(r#"{"game_id":"g2","env":"prod","game_id":"g1","events":["x"]}"#);
    assert_refused(&twice, "body", "game_id given twice");
    assert!(twice.text().contains("duplicate field"), "{}", twice.text());
    // A misspelt field (black-box finding: `{"ok":true}`, the setting unchanged and the
    // allow-list, left out, opened to every event) is refused, naming it; and an empty
    // event name, which no event has.
    let misspelt = post(r#"{"game_id":"g1","env":"prod","payment_enabled":false,"events":["login"]}"#);
    assert_refused(&misspelt, "body", "a misspelt field");
    assert!(misspelt.text().contains("payment_enabled"), "{}", misspelt.text());
    assert_refused(&post(r#"{"game_id":"g1","env":"prod","events":["login",""]}"#), "events", "an empty name");
    let r = post(r#"{"game_id":"g1","env":"prod","sample_global":50}"#);
    assert_eq!((r.status, r.text()), (200, r#"{"ok":true}"#.to_owned()));
    let r = api.request("GET", "/api/analytics/filters?game_id=g1&env=prod", &admin(), "");
    assert_eq!(r.text(), r#"{"events":[],"payments_enabled":true,"sample_global":50}"#);
}

/// Black-box finding (low): a JWT's `nbf` was not checked, and a token whose `exp` is
/// the current second was accepted. Real HS256 tokens against the filters route.
#[test]
fn attack_jwt_not_yet_valid_and_expiring_now_are_refused() {
    let api = LightApi::start();
    let path = "/api/analytics/filters?game_id=g1&env=prod";
    let status = |claims: Value| {
        let r = api.request("GET", path, &token(claims), "");
        (r.status, r.text())
    };
    let ok = status(json!({"sub":"a","roles":["admin"],"exp":now() + 60, "nbf": now() - 5}));
    assert_eq!(ok.0, 200, "{}", ok.1);
    let early = status(json!({"sub":"a","roles":["admin"],"exp":now() + 600, "nbf": now() + 300}));
    assert_eq!(early.0, 401, "nbf in the future: {}", early.1);
    assert!(early.1.contains("not yet valid"), "{}", early.1);
    // Minted at the start of a second, so that the server reads the same second.
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_millis() > 300 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_now = status(json!({"sub":"a","roles":["admin"],"exp":now()}));
    assert_eq!(at_now.0, 401, "exp == now: {}", at_now.1);
    assert!(at_now.1.contains("token expired"), "{}", at_now.1);
}

/// Black-box finding (low): statuses outside a short table went out as `504 Unknown`.
/// Every status line carries the standard reason phrase.
#[test]
fn attack_status_lines_carry_standard_reason_phrases() {
    let api = LightApi::start();
    // ClickHouse unreachable: 502.
    let line = api.status_line("/api/analytics/overview?game_id=g1", &admin());
    assert_eq!(line, "HTTP/1.1 502 Bad Gateway");
    assert_eq!(api.status_line("/api/analytics/overview", "x"), "HTTP/1.1 401 Unauthorized");
}

const TOKEN: &str = "scrape-token-0123456789";

/// `control.metrics_token`: unset, `/metrics` is open (as before); set, it needs
/// `Authorization: Bearer <token>` (what Prometheus sends for `authorization:
/// credentials`), and the probes stay open.
#[test]
fn metrics_token_guards_the_control_ports_metrics() {
    let open = LightApi::start();
    assert_eq!(open.get_with("/metrics", &[]).status, 200);
    drop(open);
    let api = LightApi::start_with(|c| c.control.metrics_token = Some(TOKEN.into()));
    let r = api.get_with("/metrics", &[]);
    assert_eq!((r.status, r.error_tag(), r.header("www-authenticate")), (401, "unauthorized".into(), Some("Bearer")));
    let r = api.get_with("/metrics", &[("Authorization", "Bearer scrape-token-012345678")]);
    assert_eq!(r.status, 401, "a prefix of the token");
    let r = api.get_with("/metrics", &[("Authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("croupier_build_info{"), "{}", r.text());
    assert_eq!(api.get_with("/healthz", &[]).status, 200);
    assert_eq!(api.get_with("/readyz", &[]).status, 200);
}

/// `GET /api/agent/analytics_filters` (Croupier's agent route): `X-Agent-Token` must be
/// `api.agent_token`; unset, 503 `{"message":"agent filters disabled"}`; wrong, 401; else
/// the filters as `GET /api/analytics/filters` answers them.
#[test]
fn agent_filters_route_needs_the_agent_token() {
    let path = "/api/agent/analytics_filters?game_id=g1&env=prod";
    let disabled = LightApi::start();
    let r = disabled.get_with(path, &[("X-Agent-Token", TOKEN)]);
    assert_eq!((r.status, r.text()), (503, r#"{"message":"agent filters disabled"}"#.into()));
    drop(disabled);
    let api = LightApi::start_with(|c| c.api.agent_token = Some(TOKEN.into()));
    assert_eq!(api.get_with(path, &[]).status, 401);
    assert_eq!(api.get_with(path, &[("X-Agent-Token", "not-the-agent-token")]).status, 401);
    let defaults = r#"{"events":[],"payments_enabled":true,"sample_global":100}"#;
    let r = api.get_with(path, &[("X-Agent-Token", TOKEN)]);
    assert_eq!((r.status, r.text()), (200, defaults.to_owned()));
    let body = r#"{"game_id":"g1","env":"prod","events":["login"],"sample_global":30}"#;
    assert_eq!(api.request("POST", "/api/analytics/filters", &admin(), body).status, 200);
    let r = api.get_with(path, &[("X-Agent-Token", TOKEN)]);
    assert_eq!(r.text(), r#"{"events":["login"],"payments_enabled":true,"sample_global":30}"#);
    // The scope from the headers, as the API's.
    let r = api
        .get_with("/api/agent/analytics_filters", &[("X-Agent-Token", TOKEN), ("X-Game-ID", "g1"), ("X-Env", "prod")]);
    assert_eq!(r.text(), r#"{"events":["login"],"payments_enabled":true,"sample_global":30}"#);
    // The same token is no bearer token for the API.
    assert_eq!(api.get_with("/api/analytics/filters?game_id=g1", &[("X-Agent-Token", TOKEN)]).status, 401);
}

/// Black-box finding (medium): a `POST` took one of the API's places before its token was
/// checked, then waited for its body: 40 connections without a token, each sending a
/// head and part of a body, kept every dashboard's request at `503 busy` until the read
/// timeout, and again at every reconnect. The token is now checked from the head.
#[test]
fn attack_slow_posts_without_a_token_hold_no_api_place() {
    let api = LightApi::start();
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(api.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(
            s,
            "POST /api/analytics/filters HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{\"game_id\":"
        )
        .expect("write");
        held.push(s);
    }
    // Each is answered 401 from its head, its body never awaited.
    for s in &mut held {
        let mut line = [0u8; 12];
        s.read_exact(&mut line).expect("an answer before the body");
        assert_eq!(&line, b"HTTP/1.1 401");
    }
    let r = api.request("GET", "/api/analytics/filters?game_id=g1", &admin(), "");
    assert_eq!(r.status, 200, "{}", r.text());
    // A token without `analytics:manage` is refused the same way.
    let viewer = token(json!({"sub":"v","roles":["viewer"],"exp":now() + 3600}));
    let r = api.request("POST", "/api/analytics/filters", &viewer, r#"{"game_id":"g1"}"#);
    assert_eq!(r.status, 403, "{}", r.text());
}
