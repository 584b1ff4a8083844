//! The OTLP/HTTP receiver against real servers: the OpenTelemetry Python SDK's exporters
//! (`tests/otlp/sdk_export.py`, installed by `scripts/setup.sh`) and hand-built OTLP/JSON
//! into redis-server, the worker and clickhouse-server; refusals, partial success and the
//! retry contract; OTLP/gRPC with the SDK's gRPC exporters and raw grpcio calls.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_it::http::{HttpClient, Reply};

use crate::fixture::{both_drivers, total_entries, Fixture, GAME, OTHER_GAME};
use crate::pipeline::Pipeline;

const TOKEN: &str = "otlp-token-of-game-one";
const OTHER_TOKEN: &str = "otlp-token-of-game-two";

fn tokens(c: &mut Config) {
    c.games.get_mut(GAME).expect("g1").otlp_token = Some(TOKEN.into());
    c.games.get_mut(OTHER_GAME).expect("g2").otlp_token = Some(OTHER_TOKEN.into());
}

/// The Python that has the OpenTelemetry SDK (`scripts/setup.sh` installs it):
/// `CROUPIER_OTEL_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("CROUPIER_OTEL_PYTHON").unwrap_or_else(|_| "python3".into())
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/otlp/sdk_export.py");

fn sdk(args: &[&str]) -> std::process::Output {
    let out = Command::new(python()).arg(SCRIPT).args(args).output().expect("run the Python exporter");
    assert!(
        out.status.success(),
        "sdk_export.py {args:?} failed (is the OpenTelemetry SDK installed? scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn unique_run() -> String {
    format!(
        "r{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

fn otlp_addr(f: &Fixture) -> std::net::SocketAddr {
    f.ingest.as_ref().and_then(|h| h.otlp_addr()).expect("an OTLP listener")
}

fn post(f: &Fixture, path: &str, token: &str, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut headers = vec![
        ("Authorization".to_owned(), format!("Bearer {token}")),
        ("Content-Type".to_owned(), content_type.to_owned()),
    ];
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    HttpClient::connect(otlp_addr(f)).request("POST", path, &headers, body)
}

fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn kv(key: &str, value: &str) -> String {
    format!(r#"{{"key":"{key}","value":{{"stringValue":"{value}"}}}}"#)
}

/// An OTLP/JSON logs request with one event record per `(event name, user, time)`.
fn json_logs(game: &str, records: &[(&str, String, u128)]) -> String {
    let recs: Vec<String> = records
        .iter()
        .map(|(name, user, t)| {
            format!(
                r#"{{"timeUnixNano":"{t}","eventName":"{name}","traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","attributes":[{},{},{{"key":"score","value":{{"intValue":"42"}}}}]}}"#,
                kv("game.user_id", user),
                kv("game.device_id", "dev-9"),
            )
        })
        .collect();
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{},{},{}]}},"scopeLogs":[{{"scope":{{"name":"it"}},"logRecords":[{}]}}]}}]}}"#,
        kv("game.id", game),
        kv("deployment.environment", "staging"),
        kv("game.app_version", "2.0.0"),
        recs.join(",")
    )
}

/// An OTLP/JSON traces request with `n` `user.login` spans.
fn json_spans(run: &str, from: usize, n: usize) -> String {
    let t = now_ns();
    let spans: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"traceId":"{:032x}","spanId":"{:016x}","name":"user.login","startTimeUnixNano":"{t}","endTimeUnixNano":"{t}","attributes":[{}]}}"#,
                i + 1,
                i + 1,
                kv("game.user_id", &format!("{run}-j{i}"))
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        kv("deployment.environment.name", "prod"),
        spans.join(",")
    )
}

fn rows(p: &Pipeline, sql: &str) -> Vec<Vec<String>> {
    p.clickhouse.query(sql).lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

#[test]
fn otlp_sdk_exports_and_otlp_json_land_in_clickhouse_with_every_column() {
    let mut p = Pipeline::start_with(&[], tokens);
    p.start_worker(&[]);
    let run = unique_run();
    let base = format!("http://{}", otlp_addr(&p.ingest));
    let before = now_ns() / 1_000_000_000;
    let out = sdk(&["http", &base, TOKEN, &run]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got, serde_json::json!({"logs": "SUCCESS", "spans": "SUCCESS", "wrong_token": "FAILURE"}));
    // A hand-built OTLP/JSON body, gzip-compressed.
    let body = json_logs(GAME, &[("user.login", format!("{run}-u3"), 1_795_617_749_250_000_000)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).expect("gzip");
    let r = post(
        &p.ingest,
        "/v1/logs",
        TOKEN,
        "application/json",
        &[("Content-Encoding", "gzip")],
        &gz.finish().expect("gzip"),
    );
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (200, "{}"));

    p.wait_for(4, "events stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.events FINAL WHERE user_id LIKE '{run}-%'"))
    });
    assert_sdk_rows(&p, &run, before);
    // The OTLP/JSON record: its own time, resource attributes, device id.
    let got = rows(
        &p,
        &format!(
            "SELECT event, game_id, env, user_id, session_id, device_id, channel, platform, country, app_version, props_json, \
             toUnixTimestamp(event_time) FROM analytics.events FINAL WHERE user_id = '{run}-u3'"
        ),
    );
    let u3 = format!("{run}-u3");
    assert_eq!(
        got,
        [[
            "login",
            "g1",
            "staging",
            &u3,
            "",
            "dev-9",
            "",
            "",
            r"\0\0",
            "2.0.0",
            r#"{"score":42,"event.name":"user.login","trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174"}"#,
            "1795617749"
        ]]
    );
}

/// The rows of what `sdk_export.py` exports (`logs(run)`, `spans(run)`): three events with
/// every mapped column, and the purchase in `payments`; `before` is a time in seconds
/// before the export.
fn assert_sdk_rows(p: &Pipeline, run: &str, before: u128) {
    p.wait_for(3, "SDK events stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.events FINAL WHERE user_id IN ('{run}-u1', '{run}-u2')"))
    });
    let got = rows(
        p,
        &format!(
            "SELECT event, game_id, env, user_id, session_id, device_id, channel, platform, country, app_version, props_json, \
             toUnixTimestamp(event_time) FROM analytics.events FINAL WHERE user_id IN ('{run}-u1', '{run}-u2') ORDER BY event"
        ),
    );
    let now = now_ns() / 1_000_000_000;
    let recent = |t: &str| {
        let t: u128 = t.parse().expect("time");
        assert!(t >= before && t <= now, "{t} not within [{before}, {now}]");
    };
    let row = |i: usize| got[i][..11].iter().map(String::as_str).collect::<Vec<_>>();
    let (u1, s1, u2, s2) = (format!("{run}-u1"), format!("{run}-s1"), format!("{run}-u2"), format!("{run}-s2"));
    // A log record named by its `event.name` attribute: a custom event.
    assert_eq!(row(0), ["boss_killed", "g1", "prod", &u2, "", "", "", "", r"\0\0", "3.1.4", r#"{"boss":"hydra"}"#]);
    recent(&got[0][11]);
    // A log record with `event_name`: the taxonomy's name, every mapped column.
    assert_eq!(
        row(1),
        [
            "level_complete",
            "g1",
            "prod",
            &u2,
            &s2,
            "",
            "",
            "ios",
            "DE",
            "3.1.4",
            r#"{"progression.level_id":7,"progression.stars":3,"loot":["sword","shield"],"event.name":"progression.complete","body":"level 7 done"}"#
        ]
    );
    recent(&got[1][11]);
    // A span of a Croupier type; its trace and span ids are random.
    assert_eq!(row(2)[..10], ["session_start", "g1", "prod", &u1, &s1, "", "", "android", "FR", "1.4.0"]);
    let props = &got[2][10];
    let prefix = r#"{"game.region":"eu-west","session.entry_point":"push","event.name":"session.start","trace_id":""#;
    let ids = props.strip_prefix(prefix).and_then(|r| r.strip_suffix(r#""}"#)).unwrap_or_default();
    let (trace, span) = ids.split_once(r#"","span_id":""#).unwrap_or_default();
    let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex(trace, 32) && hex(span, 16), "{props}");
    recent(&got[2][11]);
    assert_eq!(got.len(), 3, "the plain log and the GET span are no events");
    // The purchase span is a payment.
    p.wait_for(1, "payments stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.payments FINAL WHERE order_id = '{run}-order-1'"))
    });
    let pay = rows(
        p,
        &format!(
            "SELECT game_id, env, user_id, amount_cents, currency, status, platform, region, product_id \
             FROM analytics.payments FINAL WHERE order_id = '{run}-order-1'"
        ),
    );
    assert_eq!(pay, [["g1", "prod", &u1, "499", "USD", "success", "android", "eu-west", "gems_500"]]);
}

/// A body that does not arrive within `server.read_timeout_ms` is answered 504
/// `UNAVAILABLE`, which OTLP/HTTP exporters retry (they drop a batch answered 408), and
/// which the drop-rate alert does not count as the server's refusal (503 it would).
#[test]
fn otlp_http_body_not_in_time_is_answered_504_unavailable() {
    let f = Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.read_timeout_ms = 300;
    });
    let mut s = std::net::TcpStream::connect(otlp_addr(&f)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"resource"
    );
    s.write_all(head.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert!(answer.ends_with(r#"{"code":14,"message":"request not received in time"}"#), "{answer}");
}

/// A logs request whose resource is large and followed by many scopes without records
/// (a few KB once gzipped) is answered, and its shard serves other connections meanwhile:
/// the resource is hashed once, not once per scope (that cost their product: with one
/// shard, minutes deaf to every client of every game).
#[test]
fn otlp_a_large_resource_before_many_empty_scopes_is_decoded_once() {
    let f = Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.shards = 1;
    });
    // A resource of one unknown field of 512 KiB, then 100,000 empty `scope_logs`.
    let resource = pb(1, &pb(5, &vec![b'r'; 512 * 1024]));
    let scopes = [0x12u8, 0x00].repeat(100_000);
    let body = pb(1, &[resource, scopes].concat());
    let mut otlp = HttpClient::connect(otlp_addr(&f));
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    otlp.send_raw(&[head.into_bytes(), body].concat());
    std::thread::sleep(Duration::from_millis(200));
    let mut other = f.client();
    other.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let health = other.reply_within(Duration::from_secs(10)).expect("the shard serves another client meanwhile");
    assert_eq!(health.status, 200);
    let r = otlp.reply_within(Duration::from_secs(10)).expect("the request is answered");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "nothing rejected: no partial success ({:?})", r.body);
}

#[test]
fn otlp_partial_success_refusals_and_unsupported_signals() {
    let f = Fixture::start(Driver::Epoll, tokens);
    let t = now_ns();
    let body = json_logs(
        GAME,
        &[
            ("user.login", "a".into(), t),
            ("user.login", "b".into(), t / 1_000_000_000),
            ("session.start", "c".into(), t),
        ],
    );
    let r = post(&f, "/v1/logs", TOKEN, "application/json", &[], body.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        r#"{"partialSuccess":{"rejectedLogRecords":"1","errorMessage":"1 of 3 rejected; the first, log record 1: time_unix_nano must be nanoseconds between 2000 and 2100"}}"#
    );
    let entries = croupier_it::redis::xrange(&mut f.redis.client(), "analytics:events");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].get("n"), Some(b"2".as_slice()));
    // The same bytes again (an exporter's retry): answered the same, nothing appended.
    let r = post(&f, "/v1/logs", TOKEN, "application/json", &[], body.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(croupier_it::redis::xrange(&mut f.redis.client(), "analytics:events").len(), 1);
    // A head refused for a header sent twice counts as one refused record of the token's
    // game, as on the data port.
    // Answered as the route's other refusals: a `google.rpc.Status`, in the encoding of
    // the Content-Type read before the fault.
    let twice = [("Content-Type", "application/json")];
    let r = post(&f, "/v1/logs", TOKEN, "application/json", &twice, body.as_bytes());
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (400, r#"{"code":3,"message":"bad request: header Content-Type appears more than once"}"#)
    );
    let twice = [("Authorization", "Bearer x")];
    let r = post(&f, "/v1/traces", TOKEN, "application/x-protobuf", &twice, b"");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (400, b"\x08\x03\x12\x38bad request: header Authorization appears more than once".as_slice())
    );
    // Its rejected record is counted once, with the append, not again for the retry.
    let registry = f.ingest.as_ref().expect("running").metrics().clone();
    let mut enc = croupier_control::metrics::Encoder::new();
    registry.encode(&mut enc);
    let text = enc.finish();
    let series = r#"croupier_events_refused_total{game="g1",reason="invalid_field"}"#;
    assert_eq!(crate::metrics::sample(&text, series), Some(1.0), "{text}");
    let series = r#"croupier_events_refused_total{game="g1",reason="bad_request"}"#;
    assert_eq!(crate::metrics::sample(&text, series), Some(2.0), "{text}");

    // A token never grants another game: g2's token with records of g1 rejects them all.
    let r = post(
        &f,
        "/v1/logs",
        OTHER_TOKEN,
        "application/json",
        &[],
        json_logs(GAME, &[("user.login", "d".into(), t)]).as_bytes(),
    );
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (
            200,
            r#"{"partialSuccess":{"rejectedLogRecords":"1","errorMessage":"1 of 1 rejected; the first, log record 0: game.id differs from the game of the token"}}"#
        )
    );
    // Wrong or missing token: 401 with a Status in the request's encoding.
    for token in ["nope-nope-nope-nope", ""] {
        let r = post(&f, "/v1/traces", token, "application/json", &[], json_spans("x", 0, 1).as_bytes());
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).as_ref()),
            (401, r#"{"code":16,"message":"a valid Authorization: Bearer token is required"}"#)
        );
    }
    let r = post(&f, "/v1/traces", "nope", "application/x-protobuf", &[], b"");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (401, b"\x08\x10\x12\x2fa valid Authorization: Bearer token is required".as_slice())
    );
    // Undecodable: 400 INVALID_ARGUMENT.
    let r = post(&f, "/v1/logs", TOKEN, "application/x-protobuf", &[], b"\x0a\x05\x01");
    assert_eq!((r.status, r.body.as_slice()), (400, b"\x08\x03\x12\x15protobuf is truncated".as_slice()));
    let r = post(&f, "/v1/logs", TOKEN, "application/json", &[], b"{\"resourceLogs\":[{");
    assert_eq!(r.status, 400);
    // An unknown Content-Type: 415, a `google.rpc.Status` in JSON as the other refusals.
    let r = post(&f, "/v1/logs", TOKEN, "text/plain", &[], b"x");
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (415, r#"{"code":3,"message":"unsupported Content-Type (use application/x-protobuf or application/json)"}"#)
    );
    // A gzip body that does not inflate is an undecodable payload too.
    let r = post(&f, "/v1/logs", TOKEN, "application/x-protobuf", &[("Content-Encoding", "gzip")], b"\x1f\x8b junk");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (400, b"\x08\x03\x12\x28the gzip body does not inflate (corrupt)".as_slice())
    );
    let r = post(&f, "/v1/traces", TOKEN, "application/json", &[("Content-Encoding", "gzip")], b"not gzip");
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (400, r#"{"code":3,"message":"the gzip body does not inflate (corrupt)"}"#)
    );
    // Metrics are not a signal this receiver takes.
    let r = post(&f, "/v1/metrics", TOKEN, "application/json", &[], b"{}");
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (404, r#"{"code":12,"message":"metrics are not accepted: export logs and traces"}"#)
    );
    // Each request refused before its records were counted counts as one refused event,
    // as on the data port (a black-box finding: the token, Content-Type and Redis
    // refusals counted none, so the drop-rate alert missed them).
    let refused = |reason: &str, game: &str| {
        let mut enc = croupier_control::metrics::Encoder::new();
        registry.encode(&mut enc);
        let text = enc.finish();
        let series = format!(r#"croupier_events_refused_total{{game="{game}",reason="{reason}"}}"#);
        crate::metrics::sample(&text, &series).unwrap_or(0.0)
    };
    assert_eq!(refused("missing_credentials", "(unknown)"), 3.0);
    assert_eq!(refused("unsupported_media_type", "g1"), 1.0);
    // Redis down: 503 UNAVAILABLE with Retry-After, so exporters retry.
    let mut f = f;
    f.redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = post(&f, "/v1/traces", TOKEN, "application/json", &[], json_spans("y", 0, 1).as_bytes());
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status, 503);
    assert!(r.headers.iter().any(|(k, _)| k == "retry-after"), "{:?}", r.headers);
    assert!(String::from_utf8_lossy(&r.body).starts_with(r#"{"code":14,"#), "{:?}", String::from_utf8_lossy(&r.body));
    // Once the shard knows Redis is gone, a request is refused before its body is read
    // (its 5 spans uncounted): one refused event (the code before: none).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = refused("redis_unavailable", "g1");
        let r = post(&f, "/v1/traces", TOKEN, "application/json", &[], json_spans("z", 0, 5).as_bytes());
        assert_eq!(r.status, 503);
        let counted = refused("redis_unavailable", "g1") - before;
        if counted == 1.0 {
            break;
        }
        assert!(counted == 5.0 && Instant::now() < deadline, "counted {counted} for a request of 5 spans");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn otlp_exporter_is_told_to_retry_at_high_water_and_every_accepted_record_lands_once() {
    retry_at_high_water(false);
}

#[test]
fn otlp_grpc_exporter_is_told_to_retry_with_retry_info_at_high_water() {
    retry_at_high_water(true);
}

/// Fills the backlog to its high-water mark with ClickHouse stopped, then exports 5 spans
/// with the SDK (over gRPC when `grpc`): told to retry, it retries until ClickHouse is
/// back, and every record it was told was accepted is stored once.
fn retry_at_high_water(grpc: bool) {
    let mut p = Pipeline::start_with(&[], |c| {
        tokens(c);
        c.streams.events.retention_events = 100_000;
        c.streams.events.high_water_events = 40;
        c.redis.retry_after_secs = 2;
    });
    p.start_worker(&[]);
    p.clickhouse.stop();
    let run = unique_run();
    // Batches of 10 spans until the backlog refuses.
    let mut accepted = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r =
            post(&p.ingest, "/v1/traces", TOKEN, "application/json", &[], json_spans(&run, accepted, 10).as_bytes());
        match r.status {
            200 => accepted += 10,
            503 => {
                assert!(r.headers.iter().any(|(k, v)| k == "retry-after" && v == "2"), "{:?}", r.headers);
                break;
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&r.body)),
        }
        assert!(Instant::now() < deadline, "no 503 after {accepted} spans");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(accepted >= 40, "{accepted}");
    // The SDK's exporter sends while the backlog is full: it is told to retry, and does.
    let (mode, target) = if grpc {
        ("grpc-retry", grpc_addr(&p.ingest).to_string())
    } else {
        ("retry", format!("http://{}", otlp_addr(&p.ingest)))
    };
    let child = Command::new(python())
        .arg(SCRIPT)
        .args([mode, &target, TOKEN, &run, "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the exporter");
    std::thread::sleep(Duration::from_secs(3));
    p.clickhouse.restart();
    let out = child.wait_with_output().expect("exporter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}: {:?}: {stderr}", out.status, String::from_utf8_lossy(&out.stdout)));
    assert_eq!(got["result"], "SUCCESS", "{got}: {stderr}");
    if grpc {
        // UNAVAILABLE, and the delay is the RetryInfo's (2 s), not the exporter's backoff.
        assert!(stderr.contains("Transient error StatusCode.UNAVAILABLE"), "{stderr}");
        assert!(stderr.contains("retrying in 2.00s"), "{stderr}");
    } else {
        assert!(stderr.contains("Transient error Service Unavailable"), "{stderr}");
    }
    let want = accepted as u64 + 5;
    p.wait_for(want, "accepted spans stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.events FINAL WHERE user_id LIKE '{run}-%'"))
    });
    // Once each: as many distinct ids and users as records.
    let (ids, users) = (
        p.scalar(&format!("SELECT uniqExact(event_id) FROM analytics.events WHERE user_id LIKE '{run}-%'")),
        p.scalar(&format!("SELECT uniqExact(user_id) FROM analytics.events WHERE user_id LIKE '{run}-%'")),
    );
    assert_eq!((ids, users), (want, want));
}

fn grpc_addr(f: &Fixture) -> std::net::SocketAddr {
    f.ingest.as_ref().and_then(|h| h.otlp_grpc_addr()).expect("an OTLP/gRPC listener")
}

#[test]
fn otlp_grpc_sdk_exports_land_in_clickhouse_with_every_column() {
    let mut p = Pipeline::start_with(&[], tokens);
    p.start_worker(&[]);
    let run = unique_run();
    let before = now_ns() / 1_000_000_000;
    // Logs gzip-compressed, spans not; then a wrong token.
    let out = sdk(&["grpc", &grpc_addr(&p.ingest).to_string(), TOKEN, &run]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got, serde_json::json!({"logs": "SUCCESS", "spans": "SUCCESS", "wrong_token": "FAILURE"}));
    assert_sdk_rows(&p, &run, before);
    let bad = p.scalar(&format!("SELECT count() FROM analytics.events WHERE user_id LIKE '{run}-bad-%'"));
    assert_eq!(bad, 0, "nothing of the wrong token is stored");
}

/// Protobuf: a length-delimited field.
fn pb(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    let mut n = bytes.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
    out
}

/// An `ExportTraceServiceRequest` of `user.login` spans, one per `(user, start time)`.
fn pb_spans(spans: &[(&str, u64)]) -> Vec<u8> {
    // A KeyValue with a string AnyValue.
    let kv = |k: &str, v: &str| [pb(1, k.as_bytes()), pb(2, &pb(1, v.as_bytes()))].concat();
    let resource = pb(1, &kv("deployment.environment.name", "prod"));
    let spans: Vec<u8> = spans
        .iter()
        .enumerate()
        .flat_map(|(i, (user, t))| {
            let mut span = [pb(1, &[i as u8 + 1; 16]), pb(2, &[i as u8 + 1; 8]), pb(5, b"user.login")].concat();
            span.push(0x39); // start_time_unix_nano, fixed64
            span.extend_from_slice(&t.to_le_bytes());
            span.extend(pb(9, &kv("game.user_id", user)));
            pb(2, &span)
        })
        .collect();
    pb(1, &[pb(1, &resource), pb(2, &spans)].concat())
}

fn grpc_calls(f: &Fixture, calls: serde_json::Value) -> Vec<serde_json::Value> {
    let mut child = Command::new(python())
        .arg(SCRIPT)
        .args(["grpc-calls", &grpc_addr(f).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gRPC client");
    child.stdin.take().expect("stdin").write_all(calls.to_string().as_bytes()).expect("write the calls");
    let out = child.wait_with_output().expect("gRPC client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

both_drivers!(otlp_grpc_statuses_partial_success_and_retry_info);

/// Raw calls (grpcio): partial success, gzip, each refusal's status, and `UNAVAILABLE`
/// with `RetryInfo` while Redis is down; on both io drivers (HTTP/2 over monoio-compat).
fn otlp_grpc_statuses_partial_success_and_retry_info(driver: Driver) {
    let mut f = Fixture::start(driver, tokens);
    let traces = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let t = (now_ns() as u64 / 1_000_000) * 1_000_000;
    let body = pb_spans(&[("grpc-a", t), ("grpc-b", t / 1_000_000_000), ("grpc-c", t)]);
    let call = |path: &str, token: &str, body: &[u8], gzip: bool| serde_json::json!({"path": path, "token": token, "body_hex": hex(body), "gzip": gzip});
    let got = grpc_calls(
        &f,
        serde_json::json!([
            call(traces, TOKEN, &body, false),
            call(traces, TOKEN, &body, true),
            call(traces, TOKEN, b"\x0a\x05\x01", false),
            call(traces, "nope-nope-nope-nope", &body, false),
            call("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", TOKEN, b"", false),
            call("/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export", TOKEN, b"", false),
        ]),
    );
    // Partial success in the ExportTraceServiceResponse, grpc-status 0.
    let message = "1 of 3 rejected; the first, span 1: start_time_unix_nano must be nanoseconds between 2000 and 2100";
    let mut partial = vec![0x08, 0x01];
    partial.extend(pb(2, message.as_bytes()));
    let want_ok = serde_json::json!({"code": "OK", "response_hex": hex(&pb(1, &partial))});
    assert_eq!(got[0], want_ok);
    // The same request gzip-compressed is the same export (same records, same answer).
    assert_eq!(got[1], want_ok);
    // (grpcio reads grpc-status and grpc-message into the code and details, and shows the
    // other trailers.)
    let status = |code: &str, details: &str| serde_json::json!({"code": code, "details": details, "trailers": {}});
    assert_eq!(got[2], status("INVALID_ARGUMENT", "protobuf is truncated"));
    assert_eq!(got[3], status("UNAUTHENTICATED", "a valid Authorization: Bearer token is required"));
    assert_eq!(got[4], status("UNIMPLEMENTED", "metrics are not accepted: export logs and traces"));
    assert_eq!(
        got[5],
        status(
            "UNIMPLEMENTED",
            "unknown method /opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
        )
    );
    // The call with a wrong token counts as one refused event, as on the data port.
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    let series = r#"croupier_events_refused_total{game="(unknown)",reason="missing_credentials"}"#;
    assert_eq!(crate::metrics::sample(&text, series), Some(1.0), "{text}");
    let entries = croupier_it::redis::xrange(&mut f.redis.client(), "analytics:events");
    // The gzip call's bytes differ, so it is a request of its own (the nonce is the body's
    // digest as sent); its spans' ids are the first call's (from their trace and span
    // ids), which ClickHouse deduplicates.
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.get("n") == Some(b"2".as_slice())));

    // Redis down: UNAVAILABLE with a RetryInfo of `redis.retry_after_secs`.
    f.redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = grpc_calls(&f, serde_json::json!([call(traces, TOKEN, &pb_spans(&[("grpc-d", t)]), false)]));
        if got[0]["code"] != "OK" || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let retry_info = "type.googleapis.com/google.rpc.RetryInfo";
    assert_eq!(
        got[0],
        serde_json::json!({"code": "UNAVAILABLE", "details": "redis_unavailable", "trailers": {
            "grpc-status-details-bin": [14, "redis_unavailable", [retry_info, 1]],
            "google.rpc.retryinfo-bin": "CgIIAQ==",
        }})
    );
}

/// The game's rate limit over gRPC is backpressure: `UNAVAILABLE` with a `RetryInfo` of
/// the limit's `Retry-After`, so that exporters retry instead of dropping the export.
#[test]
fn otlp_grpc_rate_limit_is_unavailable_with_retry_info() {
    let f = Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.shards = 1;
        c.games.get_mut(GAME).expect("g1").rate_limit_eps = 3;
    });
    let traces = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let t = (now_ns() as u64 / 1_000_000) * 1_000_000;
    let call = |users: [&str; 3]| {
        let body = pb_spans(&[(users[0], t), (users[1], t), (users[2], t)]);
        serde_json::json!({"path": traces, "token": TOKEN, "body_hex": hex(&body), "gzip": false})
    };
    let got = grpc_calls(&f, serde_json::json!([call(["rl-a", "rl-b", "rl-c"]), call(["rl-d", "rl-e", "rl-f"])]));
    assert_eq!(got[0]["code"], "OK");
    let retry_info = "type.googleapis.com/google.rpc.RetryInfo";
    assert_eq!(
        got[1],
        serde_json::json!({"code": "UNAVAILABLE", "details": "rate_limited", "trailers": {
            "grpc-status-details-bin": [14, "rate_limited", [retry_info, 1]],
            "google.rpc.retryinfo-bin": "CgIIAQ==",
        }})
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Spans whose trace and span ids are 1 byte long (OTLP: 16 and 8), over protobuf and
/// with short hex over OTLP/JSON: each is its own event, also after ClickHouse has
/// merged away duplicates.
#[test]
fn otlp_spans_with_wrongly_sized_ids_stay_distinct_rows_after_optimize_final() {
    let mut p = Pipeline::start_with(&[], tokens);
    p.start_worker(&[]);
    let run = unique_run();
    let t = now_ns() as u64;
    let pb_kv = |k: &str, v: &str| [pb(1, k.as_bytes()), pb(2, &pb(1, v.as_bytes()))].concat();
    let user = format!("{run}-short");
    let span = {
        let mut span = [pb(1, &[1]), pb(2, &[1]), pb(5, b"user.login")].concat();
        span.push(0x39); // start_time_unix_nano, fixed64
        span.extend_from_slice(&t.to_le_bytes());
        span.extend(pb(9, &pb_kv("game.user_id", &user)));
        pb(2, &span)
    };
    let resource = pb(1, &pb_kv("deployment.environment.name", "prod"));
    let body = pb(1, &[pb(1, &resource), pb(2, &span.repeat(3))].concat());
    let r = post(&p.ingest, "/v1/traces", TOKEN, "application/x-protobuf", &[], &body);
    assert_eq!((r.status, r.body.as_slice()), (200, b"".as_slice()));
    let one = format!(
        r#"{{"traceId":"01","spanId":"01","name":"user.login","startTimeUnixNano":"{t}","attributes":[{}]}}"#,
        kv("game.user_id", &user)
    );
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{}]}},"scopeSpans":[{{"spans":[{one},{one},{one}]}}]}}]}}"#,
        kv("deployment.environment.name", "prod"),
    );
    let r = post(&p.ingest, "/v1/traces", TOKEN, "application/json", &[], body.as_bytes());
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (200, "{}"));
    let count = format!("SELECT count() FROM analytics.events WHERE user_id = '{user}'");
    p.wait_for(6, "spans stored", |p| p.scalar(&count));
    p.clickhouse.query("OPTIMIZE TABLE analytics.events FINAL");
    let got = rows(
        &p,
        &format!(
            "SELECT count(), uniqExact(event_id), any(event), any(props_json) FROM analytics.events FINAL \
             WHERE user_id = '{user}'"
        ),
    );
    assert_eq!(got, [["6", "6", "login", r#"{"event.name":"user.login"}"#]]);
    assert_eq!(p.scalar(&count), 6);
}

/// Two identical `ad.impression` log records (same user, attributes and nanosecond) in
/// one protobuf request are two rows, also after ClickHouse has merged away duplicates;
/// the request sent again with other bytes on the wire (gzip, so a new nonce) gives the
/// same two ids, and still two rows.
#[test]
fn otlp_identical_log_records_in_one_request_are_two_rows_and_a_retry_adds_none() {
    let mut p = Pipeline::start_with(&[], tokens);
    p.start_worker(&[]);
    let user = format!("{}-twice", unique_run());
    let pb_kv = |k: &str, v: &str| [pb(1, k.as_bytes()), pb(2, &pb(1, v.as_bytes()))].concat();
    let mut record = vec![0x09]; // time_unix_nano, fixed64
    record.extend_from_slice(&(now_ns() as u64).to_le_bytes());
    record.extend([pb(6, &pb_kv("game.user_id", &user)), pb(12, b"ad.impression")].concat());
    let resource = pb(1, &pb_kv("deployment.environment.name", "prod"));
    let scope = [pb(1, &pb(1, b"ads")), pb(2, &record), pb(2, &record)].concat();
    let body = pb(1, &[pb(1, &resource), pb(2, &scope)].concat());
    let r = post(&p.ingest, "/v1/logs", TOKEN, "application/x-protobuf", &[], &body);
    assert_eq!((r.status, r.body.as_slice()), (200, b"".as_slice()));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).expect("gzip");
    let gzipped = gz.finish().expect("gzip");
    let r = post(&p.ingest, "/v1/logs", TOKEN, "application/x-protobuf", &[("Content-Encoding", "gzip")], &gzipped);
    assert_eq!((r.status, r.body.as_slice()), (200, b"".as_slice()));
    let count = format!("SELECT count() FROM analytics.events WHERE user_id = '{user}'");
    p.wait_for(4, "both requests stored", |p| p.scalar(&count));
    p.clickhouse.query("OPTIMIZE TABLE analytics.events FINAL");
    let got = rows(
        &p,
        &format!(
            "SELECT count(), uniqExact(event_id), any(event) FROM analytics.events FINAL WHERE user_id = '{user}'"
        ),
    );
    assert_eq!(got, [["2", "2", "ad_impression"]]);
    assert_eq!(p.scalar(&count), 2);

    // The same OTLP/JSON sent plain, then gzip-compressed (a hop that compresses again):
    // one request (its identity is the body as decoded), answered the same, its records
    // stored once.
    let user = format!("{}-json", unique_run());
    let body = json_logs(GAME, &[("user.login", user.clone(), now_ns()), ("user.logout", user.clone(), now_ns())]);
    let r = post(&p.ingest, "/v1/logs", TOKEN, "application/json", &[], body.as_bytes());
    assert_eq!(r.status, 200);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).expect("gzip");
    let gzipped = gz.finish().expect("gzip");
    let r = post(&p.ingest, "/v1/logs", TOKEN, "application/json", &[("Content-Encoding", "gzip")], &gzipped);
    assert_eq!(r.status, 200);
    let count = format!("SELECT count() FROM analytics.events WHERE user_id = '{user}'");
    p.wait_for(2, "the JSON request stored", |p| p.scalar(&count));
    p.clickhouse.query("OPTIMIZE TABLE analytics.events FINAL");
    let got =
        rows(&p, &format!("SELECT count(), uniqExact(event_id) FROM analytics.events FINAL WHERE user_id = '{user}'"));
    assert_eq!(got, [["2", "2"]]);
}

/// Review finding: the request's key was the body's digest alone, whatever the route, so
/// the same bytes exported as logs and then as traces (a body both decode) were answered
/// 200 the second time with nothing appended. Traces have a key of their own: each
/// route's retry appends nothing, the other route's request does.
#[test]
fn otlp_the_same_bytes_as_logs_then_as_traces_are_two_requests() {
    let f = Fixture::start(Driver::Epoll, tokens);
    let run = unique_run();
    let logs = json_logs(GAME, &[("level_start", format!("{run}-log"), now_ns())]);
    let spans = json_spans(&run, 0, 1);
    // One JSON object holding both signals' requests.
    let both = format!("{},{}", logs.trim_end_matches('}'), spans.trim_start_matches('{'));
    let ok = |path: &str| {
        let r = post(&f, path, TOKEN, "application/json", &[], both.as_bytes());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    };
    ok("/v1/logs");
    let after_logs = total_entries(&f.redis);
    assert!(after_logs > 0);
    ok("/v1/logs");
    assert_eq!(total_entries(&f.redis), after_logs, "a retry of the logs appends nothing");
    ok("/v1/traces");
    let after_traces = total_entries(&f.redis);
    assert!(after_traces > after_logs, "the traces request appended nothing");
    ok("/v1/traces");
    assert_eq!(total_entries(&f.redis), after_traces, "a retry of the traces appends nothing");
}

/// An HTTP/2 client ready to send on a connection to `addr`, the connection driven by a
/// task of its own.
async fn h2_client(addr: std::net::SocketAddr) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client.ready().await.expect("ready"), conn)
}

/// Of `calls` (each having sent part of its message), how many are still waiting for an
/// answer after 1.5 s and how many were refused `UNAVAILABLE` (any other answer fails).
async fn held_and_refused(calls: &mut [(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)]) -> (usize, usize) {
    let (mut held, mut refused) = (0, 0);
    for (answer, _send) in calls {
        match tokio::time::timeout(Duration::from_millis(1500), answer).await {
            Err(_) => held += 1,
            Ok(Ok(r)) => {
                let status = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("");
                assert_eq!(status, "14", "{r:?}");
                refused += 1;
            }
            Ok(Err(e)) => panic!("call reset: {e}"),
        }
    }
    (held, refused)
}

/// A `LogsService/Export` call to `addr` with the game's token (and `padding` as a header
/// field's value, when given), for the HTTP/2 client to send.
fn export_request(addr: std::net::SocketAddr, padding: Option<String>) -> http::Request<()> {
    let mut request =
        http::Request::post(format!("http://{addr}/opentelemetry.proto.collector.logs.v1.LogsService/Export"))
            .header("content-type", "application/grpc")
            .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(p) = padding {
        request = request.header("x-padding", p);
    }
    request.body(()).expect("request")
}

/// The HTTP status of an empty export on a new connection to `addr`.
async fn empty_export(addr: std::net::SocketAddr) -> http::StatusCode {
    let (mut client, _conn) = h2_client(addr).await;
    let (answer, mut send) = client.send_request(export_request(addr, None), false).expect("send");
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("data");
    answer.await.expect("answer").status()
}

/// The fixture for the connection cap: one shard, four places, nothing timed out.
fn four_places() -> Fixture {
    Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.shards = 1;
        c.server.max_connections = 4;
        c.server.idle_timeout_ms = 120_000;
        c.server.read_timeout_ms = 120_000;
    })
}

/// Black-box finding: an OTLP/gRPC call declaring a large message made the server reserve
/// up to 256 KiB at its first bytes, outside the shard's body budget, so thousands of calls
/// sending a few bytes each held gigabytes. The reservation is now counted in the budget:
/// past it, calls are refused `UNAVAILABLE` (retry later) while the ones holding it wait.
#[test]
fn grpc_calls_declaring_large_messages_are_held_within_the_body_budget() {
    let f = Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.shards = 1;
        c.server.max_body_bytes = 1 << 20;
        c.server.max_inflight_body_bytes = 1 << 20;
    });
    let addr = grpc_addr(&f);
    let request = || export_request(addr, None);
    let connect = || h2_client(addr);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let (mut client, conn) = connect().await;
        let mut calls = Vec::new();
        for _ in 0..16 {
            let (answer, mut send) = client.send_request(request(), false).expect("send");
            // A message declared 1,000,000 bytes long, of which 1,000 are sent.
            let mut data = vec![0u8];
            data.extend_from_slice(&1_000_000u32.to_be_bytes());
            data.extend_from_slice(&[0u8; 1000]);
            send.send_data(bytes::Bytes::from(data), false).expect("data");
            calls.push((answer, send));
            client = client.ready().await.expect("ready");
        }
        let (held, refused) = held_and_refused(&mut calls).await;
        // 1 MiB holds three calls of 256 KiB and their prefixes; the others are refused.
        assert_eq!((held, refused), (3, 13));
        drop(calls);
        drop(client);
        conn.abort();
        // Nothing stays counted once those calls are gone: a whole small export is taken.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (mut client, _conn) = connect().await;
            let (answer, mut send) = client.send_request(request(), false).expect("send");
            send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("data");
            let r = answer.await.expect("answer");
            let early = r.headers().get("grpc-status").map(|v| v.as_bytes().to_vec());
            let status = match early {
                Some(s) => s,
                None => {
                    let mut body = r.into_body();
                    while let Some(d) = body.data().await {
                        let n = d.map(|d| d.len()).unwrap_or(0);
                        let _ = body.flow_control().release_capacity(n);
                    }
                    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
                    trailers.get("grpc-status").map(|v| v.as_bytes().to_vec()).unwrap_or_default()
                }
            };
            if status == b"0" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a small export still refused: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// A gRPC call refused for its headers — a `content-type` that is not gRPC's, a
/// `grpc-encoding` the receiver does not have, a compressed message without one — counts
/// as one refused event of the token's game, as the data port and OTLP/HTTP count theirs
/// (the receiver before answered them and counted nothing).
#[test]
fn grpc_calls_refused_for_their_headers_count_as_refused() {
    let f = Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.shards = 1;
    });
    let addr = grpc_addr(&f);
    let logs = format!("http://{addr}/opentelemetry.proto.collector.logs.v1.LogsService/Export");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // (content-type, grpc-encoding, the message's compressed flag, more header fields) ->
    // (HTTP status, grpc-status)
    let call_with = |content_type: &str, encoding: Option<&str>, compressed: u8, more: &[(&str, &str)]| {
        let mut request = http::Request::post(logs.as_str())
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(e) = encoding {
            request = request.header("grpc-encoding", e);
        }
        for (k, v) in more {
            request = request.header(*k, *v);
        }
        let request = request.body(()).expect("request");
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut client = client.ready().await.expect("ready");
            let (answer, mut send) = client.send_request(request, false).expect("send");
            send.send_data(bytes::Bytes::from(vec![compressed, 0, 0, 0, 0]), true).expect("data");
            let r = answer.await.expect("answer");
            let status = r.headers().get("grpc-status").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            conn.abort();
            (r.status().as_u16(), status.unwrap_or_default())
        })
    };
    let call =
        |content_type: &str, encoding: Option<&str>, compressed: u8| call_with(content_type, encoding, compressed, &[]);
    assert_eq!(call("text/plain", None, 0), (415, String::new()));
    assert_eq!(call("application/grpc", Some("br"), 0), (200, "12".to_owned()));
    assert_eq!(call("application/grpc", None, 1), (200, "13".to_owned()));
    // A good call beside them: taken, and not counted as refused.
    assert_eq!(call("application/grpc", None, 0), (200, String::new()));
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    let series = r#"croupier_events_refused_total{game="g1",reason="unsupported_media_type"}"#;
    assert_eq!(crate::metrics::sample(&text, series), Some(3.0), "{text}");
    // A deciding field sent twice: INVALID_ARGUMENT, as OTLP/HTTP's 400 (the first token
    // was taken, whichever the second).
    let other = format!("Bearer {OTHER_TOKEN}");
    for more in [
        [("authorization", other.as_str())],
        [("authorization", "Bearer nope")],
        [("content-type", "application/json")],
    ] {
        assert_eq!(call_with("application/grpc", None, 0, &more), (200, "3".to_owned()), "{more:?}");
    }
    assert_eq!(call_with("application/grpc", Some("identity"), 0, &[("grpc-encoding", "gzip")]), (200, "3".to_owned()));
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    // Counted under the token's game where the token was not what came twice.
    let series = r#"croupier_events_refused_total{game="(unknown)",reason="bad_request"}"#;
    assert_eq!(crate::metrics::sample(&text, series), Some(2.0), "{text}");
    let series = r#"croupier_events_refused_total{game="g1",reason="bad_request"}"#;
    assert_eq!(crate::metrics::sample(&text, series), Some(2.0), "{text}");
}

/// Black-box finding: connections that sent the HTTP/2 preface and nothing else held every
/// place of the OTLP/gRPC listener (`server.max_connections`), so no exporter got in
/// until `idle_timeout_ms`. At the cap the oldest connection without a call in progress
/// is closed for the new one.
#[test]
fn idle_grpc_connections_at_the_cap_make_room_for_a_new_exporter() {
    let f = four_places();
    let addr = grpc_addr(&f);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        // The oldest: a raw connection (the preface and an empty SETTINGS), to see the frames
        // it gets; the others: idle h2 clients.
        let mut raw = std::net::TcpStream::connect(addr).expect("connect");
        raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").expect("preface");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(h2_client(addr).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = tokio::time::timeout(Duration::from_secs(2), empty_export(addr))
            .await
            .expect("a new exporter served at the cap");
        assert_eq!(status, http::StatusCode::OK);
        // The oldest idle connection was the one closed, after a GOAWAY (frame type 7).
        raw.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut got = Vec::new();
        let _ = raw.read_to_end(&mut got);
        let mut types = Vec::new();
        let mut at = 0;
        while at + 9 <= got.len() {
            let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
            types.push(got[at + 3]);
            at += 9 + len;
        }
        assert!(types.contains(&7), "frames before the close: {types:?}");
        drop(idle);
    });
}

/// Review finding: a gRPC connection with a call in progress was never closed at the
/// cap, so a token holder trickling one call's message after another on every connection
/// held every place (HTTP/1 closes the oldest connection whose body is still arriving).
/// Connections whose every call is still receiving its message are now closed for a new
/// exporter when none is idle; a call past its message is never cut.
#[test]
fn grpc_calls_trickling_their_messages_make_room_for_a_new_exporter() {
    let f = four_places();
    let addr = grpc_addr(&f);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        // Every place: a call that sent the first byte of its message.
        let mut held = Vec::new();
        for _ in 0..4 {
            let (mut client, conn) = h2_client(addr).await;
            let (answer, mut send) = client.send_request(export_request(addr, None), false).expect("send");
            send.send_data(bytes::Bytes::from_static(&[0]), false).expect("data");
            held.push((client, conn, answer, send));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the server see every call reading.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let status = tokio::time::timeout(Duration::from_secs(3), empty_export(addr))
            .await
            .expect("a new exporter served at the cap");
        assert_eq!(status, http::StatusCode::OK);
        drop(held);
    });
}

/// Review finding: a gRPC call's metadata (up to 16 KiB, 64 calls a connection) was kept
/// until the call was answered and counted by no budget. It now counts in the body budget
/// as the call's message does: past it, calls are refused `UNAVAILABLE`.
#[test]
fn grpc_calls_metadata_counts_in_the_body_budget() {
    let f = Fixture::start(Driver::Epoll, |c| {
        tokens(c);
        c.server.shards = 1;
        c.server.max_body_bytes = 32 << 10;
        c.server.max_inflight_body_bytes = 32 << 10;
    });
    let addr = grpc_addr(&f);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let (mut client, conn) = h2_client(addr).await;
        let mut calls = Vec::new();
        for i in 0..6 {
            // About 7 KiB of metadata, then the first byte of a message.
            let req = export_request(addr, Some(format!("{i}{}", "p".repeat(7 << 10))));
            let (answer, mut send) = client.send_request(req, false).expect("send");
            send.send_data(bytes::Bytes::from_static(&[0]), false).expect("data");
            calls.push((answer, send));
            client = client.ready().await.expect("ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (held, refused) = held_and_refused(&mut calls).await;
        // 32 KiB holds four calls of ~7 KiB of metadata; the others are refused.
        assert_eq!((held, refused), (4, 2));
        drop(calls);
        conn.abort();
    });
}
