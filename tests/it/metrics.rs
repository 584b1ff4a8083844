//! Metrics: the shards' counters against what was sent and what was answered.

use croupier_control::config::Driver;
use croupier_control::metrics::Encoder;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};

use crate::fixture::{event, events, post_signed, Fixture, GAME, OTHER_GAME, OTHER_SECRET, SECRET};

/// The value of the sample `series` (its name and labels as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

pub(crate) fn payments(n: usize) -> String {
    let ts = now_secs();
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","user_id":"u{i}","order_id":"o-{i}-{}","amount_cents":100,"currency":"USD","status":"success"}}"#,
                fresh_nonce()
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn ingest_counters_are_exact_against_what_was_sent_and_answered() {
    let f = Fixture::start(Driver::Epoll, |_| {});
    let mut c = f.client();
    // Accepted: 7 batches of 10 standard events, 3 batches of 2 standard + 1 custom event,
    // 4 batches of 5 payments.
    for _ in 0..7 {
        assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(10).as_bytes()).status, 202);
    }
    for i in 0..3 {
        let body = format!(
            "[{},{},{}]",
            event("login", &format!("a{i}")),
            event("level_start", &format!("b{i}")),
            event("boss_killed", "c")
        );
        assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes()).status, 202);
    }
    for _ in 0..4 {
        assert_eq!(post_signed(&mut c, "/api/ingest/payments", GAME, SECRET, payments(5).as_bytes()).status, 202);
    }
    // Refused: 2 with a wrong secret, 1 with a bad record, 1 for an unconfigured game,
    // 1 without credentials.
    for _ in 0..2 {
        let r = post_signed(&mut c, "/api/ingest/events", GAME, "wrong", events(3).as_bytes());
        assert_eq!((r.status, r.error_tag().as_str()), (401, "bad_signature"));
    }
    // A bad record refuses its batch: its three events are counted refused.
    let bad = br#"[{"ts":1,"game_id":"g1"},{"ts":1,"game_id":"g1"},{"ts":1,"game_id":"g1"}]"#;
    let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, bad);
    assert_eq!((r.status, r.error_tag().as_str()), (400, "invalid_field"));
    let r = post_signed(&mut c, "/api/ingest/events", "nope", "x", events(1).as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (401, "unknown_game"));
    let r = c.request("POST", "/api/ingest/payments", &[("Content-Type".into(), "application/json".into())], b"[]");
    assert_eq!((r.status, r.error_tag().as_str()), (401, "missing_credentials"));
    // Another game, and a path that is no route.
    let h = signed_headers(OTHER_GAME, OTHER_SECRET, b"[]", now_secs(), &fresh_nonce());
    assert_eq!(c.request("POST", "/api/ingest/events", &h, b"[]").error_tag(), "invalid_batch");
    assert_eq!(c.request("GET", "/nowhere", &[], b"").status, 404);
    // A head refused after its request line (a credential header sent twice) counts on
    // its route and as one refused record of its game; the connection closes after it.
    let body = events(2);
    let mut h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let nonce = h.iter().find(|(k, _)| k.eq_ignore_ascii_case("X-Nonce")).cloned().expect("a nonce");
    h.push(nonce);
    let r = f.client().request("POST", "/api/ingest/events", &h, body.as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (400, "bad_request"));
    // A head refused before its request line is read, after a request on the same
    // connection: `unmatched`, not the earlier request's route.
    let mut k = f.client();
    assert_eq!(k.request("GET", "/healthz", &[], b"").status, 200);
    k.send_raw(b"NOT A REQUEST LINE\r\n\r\n");
    assert_eq!(k.read_reply().status, 400);

    let registry = f.ingest.as_ref().expect("running").metrics().clone();
    let mut enc = Encoder::new();
    registry.encode(&mut enc);
    let text = enc.finish();
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(v(r#"croupier_events_accepted_total{game="g1",stream="events"}"#), 76.0);
    assert_eq!(v(r#"croupier_events_accepted_total{game="g1",stream="custom"}"#), 3.0);
    assert_eq!(v(r#"croupier_events_accepted_total{game="g1",stream="payments"}"#), 20.0);
    assert_eq!(sample(&text, r#"croupier_events_accepted_total{game="g2",stream="events"}"#), None);
    assert_eq!(v(r#"croupier_events_refused_total{game="g1",reason="bad_signature"}"#), 2.0);
    assert_eq!(v(r#"croupier_events_refused_total{game="g1",reason="invalid_field"}"#), 3.0);
    assert_eq!(v(r#"croupier_events_refused_total{game="(unknown)",reason="unknown_game"}"#), 1.0);
    assert_eq!(v(r#"croupier_events_refused_total{game="(unknown)",reason="missing_credentials"}"#), 1.0);
    assert_eq!(v(r#"croupier_events_refused_total{game="g2",reason="invalid_batch"}"#), 1.0);
    assert_eq!(v(r#"croupier_events_refused_total{game="g1",reason="bad_request"}"#), 1.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="/api/ingest/events",status="202"}"#), 10.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="/api/ingest/payments",status="202"}"#), 4.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="/api/ingest/events",status="401"}"#), 3.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="/api/ingest/events",status="400"}"#), 3.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="/api/ingest/payments",status="401"}"#), 1.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="unmatched",status="404"}"#), 1.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="unmatched",status="400"}"#), 1.0);
    assert_eq!(v(r#"croupier_http_requests_total{route="/healthz",status="200"}"#), 1.0);
    assert_eq!(sample(&text, r#"croupier_http_requests_total{route="/healthz",status="400"}"#), None);
    assert_eq!(v(r#"croupier_http_request_duration_seconds_count{route="/api/ingest/events"}"#), 16.0);
    assert_eq!(v(r#"croupier_http_request_duration_seconds_count{route="/api/ingest/payments"}"#), 5.0);
    // The 14 accepted requests were sent one after another: a transaction each.
    assert_eq!(v("croupier_ingest_transaction_requests_count"), 14.0);
    assert_eq!(v("croupier_ingest_transaction_requests_sum"), 14.0);
    assert_eq!(v(r#"croupier_ingest_transaction_requests_bucket{le="1"}"#), 14.0);
}

#[test]
fn metrics_disabled_count_nothing() {
    let f = Fixture::start(Driver::Epoll, |c| c.metrics.enabled = false);
    assert_eq!(f.post("/api/ingest/events", &events(4)).status, 202);
    let mut enc = Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    assert_eq!(sample(&text, r#"croupier_events_accepted_total{game="g1",stream="events"}"#), None, "{text}");
    assert!(!text.contains("croupier_http_requests_total{"), "{text}");
}

#[test]
fn worker_counters_are_exact_against_what_was_inserted() {
    use croupier_control::config::Config;
    use croupier_it::redis::RedisServer;

    use crate::pipeline::Pipeline;

    let p = Pipeline::start(&[]);
    // The worker in this process, counting in a registry the test reads.
    let mut config = Config::load(None, crate::pipeline::env(&p.ingest.redis, &p.clickhouse)).expect("config");
    config.worker.linger_ms = 20;
    let registry = croupier_dataplane::registry(&config);
    let worker = croupier_dataplane::worker::start_with_metrics(config, false, registry.clone()).expect("worker");
    let mut c = p.ingest.client();
    for _ in 0..6 {
        assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(25).as_bytes()).status, 202);
    }
    assert_eq!(post_signed(&mut c, "/api/ingest/payments", GAME, SECRET, payments(4).as_bytes()).status, 202);
    // Two entries the worker cannot read: dead letters.
    let r: &RedisServer = &p.ingest.redis;
    r.client().cmd(&["XADD", "analytics:events", "*", "data", "{not json"]);
    r.client().cmd(&["XADD", "analytics:payments", "*", "fmt", "rkyv1", "n", "3", "batch", "garbage"]);
    p.wait_for(150, "events in ClickHouse", Pipeline::distinct_events);
    p.wait_for(4, "payments in ClickHouse", |p| p.scalar("SELECT count() FROM analytics.payments"));
    p.wait_for(1, "payment dead letters", |p| crate::fixture::xlen(&p.ingest.redis, "analytics:payments:dead") as u64);
    // Counted once the dead letter is written, and acknowledged after.
    p.wait_for(0, "pending payments", |p| p.pending("analytics:payments") as u64);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    worker.shutdown();

    let mut enc = Encoder::new();
    registry.encode(&mut enc);
    let text = enc.finish();
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(v(r#"croupier_worker_rows_inserted_total{table="events"}"#), 150.0);
    assert_eq!(v(r#"croupier_worker_rows_inserted_total{table="payments"}"#), 4.0);
    assert_eq!(v(r#"croupier_worker_insert_failures_total{table="events"}"#), 0.0);
    assert_eq!(v(r#"croupier_worker_event_delay_seconds_count{table="events"}"#), 150.0);
    assert_eq!(v(r#"croupier_worker_event_delay_seconds_count{table="payments"}"#), 4.0);
    assert!(v(r#"croupier_worker_insert_duration_seconds_count{table="events"}"#) >= 1.0);
    assert_eq!(v(r#"croupier_dead_letters_total{stream="events",reason="undecodable"}"#), 1.0);
    assert_eq!(v(r#"croupier_dead_letters_total{stream="payments",reason="undecodable"}"#), 1.0);
}
