//! The control port of a real `croupier` process: `/metrics` exact against the traffic
//! sent and answered, scraped by a real Prometheus, checked by `promtool`; `/readyz` per
//! component; and the backlog alert end to end through Prometheus and Alertmanager.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::http::HttpClient;
use croupier_it::monitoring::{http_get, webhook, Alertmanager, Croupier, Prometheus};
use croupier_it::redis::RedisServer;
use croupier_it::require_binary;
use croupier_protocol::resp::Frame;

use crate::fixture::{events, post_signed, GAME, SECRET};
use crate::metrics::sample;
use crate::pipeline::{croupier, CROUPIER};

/// Redis, ClickHouse with the schema, and the environment of a croupier process on them.
struct Servers {
    redis: RedisServer,
    clickhouse: ClickHouseServer,
    env: Vec<(String, String)>,
}

fn servers() -> Servers {
    let redis = RedisServer::start();
    let clickhouse = ClickHouseServer::start();
    let mut env = crate::pipeline::env(&redis, &clickhouse);
    env.extend([
        (format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET.to_owned()),
        ("CROUPIER_SERVER__SHARDS".into(), "2".into()),
        ("CROUPIER_REDIS__BACKLOG_POLL_MS".into(), "20".into()),
    ]);
    let (ok, out) = croupier(&["migrate"], &env);
    assert!(ok, "croupier migrate: {out}");
    Servers { redis, clickhouse, env }
}

fn scrape(c: &Croupier) -> String {
    let (status, text) = c.control_get("/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The metric families the alert rules and the Grafana board name (`croupier_*`), the
/// real-time ones excepted (they come with the sketches).
fn families_used_by_deploy() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut names = Vec::new();
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/dashboards/croupier-technical.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("read deploy file");
        for (i, _) in text.match_indices("croupier_") {
            if i > 0 && (text.as_bytes()[i - 1].is_ascii_alphanumeric() || text.as_bytes()[i - 1] == b':') {
                continue;
            }
            let name: String =
                text[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.clone(), |n, s| n.strip_suffix(s).unwrap_or(&n).to_owned());
            // A regular expression's prefix (`croupier_events_(accepted|refused)_total`) is
            // not a name; those names appear elsewhere too.
            if !family.ends_with('_') && !family.starts_with("croupier_realtime_") && !names.contains(&family) {
                names.push(family);
            }
        }
    }
    names
}

#[test]
fn croupier_run_metrics_are_exact_and_a_real_prometheus_scrapes_them() {
    let s = servers();
    let c = Croupier::start(CROUPIER, "run", &s.env);
    c.wait_data_ready();
    c.wait_control_ready(200);
    // Traffic: 4 clients × 20 batches of 25 events, 5 refused batches, 3 payment batches.
    let accepted = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, accepted) = (c.data, accepted.clone());
            std::thread::spawn(move || {
                let mut client = HttpClient::connect(addr);
                for _ in 0..20 {
                    let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(25).as_bytes());
                    assert_eq!(r.status, 202, "{}", r.text());
                    accepted.fetch_add(25, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut client = HttpClient::connect(c.data);
    for _ in 0..5 {
        let r = post_signed(&mut client, "/api/ingest/events", GAME, "not-the-secret", events(4).as_bytes());
        assert_eq!(r.error_tag(), "bad_signature");
    }
    for i in 0..3 {
        let body = format!(
            r#"[{{"ts":{ts},"game_id":"{GAME}","env":"prod","user_id":"p{i}","order_id":"ctl-{i}-a","amount_cents":100,"currency":"USD","status":"success"}},{{"ts":{ts},"game_id":"{GAME}","env":"prod","user_id":"p{i}","order_id":"ctl-{i}-b","amount_cents":250,"currency":"EUR","status":"failed"}}]"#,
            ts = croupier_it::http::now_secs()
        );
        assert_eq!(post_signed(&mut client, "/api/ingest/payments", GAME, SECRET, body.as_bytes()).status, 202);
    }
    for t in senders {
        t.join().expect("sender");
    }
    let sent = accepted.load(Ordering::Relaxed);
    assert_eq!(sent, 2000);

    // Once the worker has inserted and acknowledged everything, every counter is final
    // (rows are counted when ClickHouse confirms them, just before their entries are
    // acknowledged: a scrape in between sees them in the backlog still).
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape(&c);
        let rows = sample(&text, r#"croupier_worker_rows_inserted_total{table="events"}"#).unwrap_or(0.0);
        let pay = sample(&text, r#"croupier_worker_rows_inserted_total{table="payments"}"#).unwrap_or(0.0);
        let backlog = sample(&text, r#"croupier_stream_backlog_events{stream="events"}"#);
        if rows == sent as f64 && pay == 6.0 && backlog == Some(0.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "worker did not insert everything within 60 s:\n{text}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&text, r#"croupier_events_accepted_total{game="g1",stream="events"}"#), sent as f64);
    assert_eq!(value(&text, r#"croupier_events_accepted_total{game="g1",stream="payments"}"#), 6.0);
    assert_eq!(value(&text, r#"croupier_events_refused_total{game="g1",reason="bad_signature"}"#), 5.0);
    assert_eq!(value(&text, r#"croupier_http_requests_total{route="/api/ingest/events",status="202"}"#), 80.0);
    assert_eq!(value(&text, r#"croupier_http_requests_total{route="/api/ingest/events",status="401"}"#), 5.0);
    assert_eq!(value(&text, r#"croupier_http_requests_total{route="/api/ingest/payments",status="202"}"#), 3.0);
    assert_eq!(value(&text, r#"croupier_http_request_duration_seconds_count{route="/api/ingest/events"}"#), 85.0);
    assert_eq!(value(&text, r#"croupier_worker_event_delay_seconds_count{table="events"}"#), sent as f64);
    assert_eq!(value(&text, r#"croupier_worker_insert_failures_total{table="events"}"#), 0.0);
    assert_eq!(value(&text, r#"croupier_stream_backlog_events{stream="events"}"#), 0.0);
    assert!(value(&text, r#"croupier_stream_entries{stream="events"}"#) >= 80.0);
    assert!(text.contains("croupier_build_info{version=\""), "{text}");
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(value(&text, "process_open_fds") > 0.0);
    let in_clickhouse: u64 =
        s.clickhouse.query("SELECT count() FROM analytics.events FINAL").trim().parse().expect("a count");
    assert_eq!(in_clickhouse, sent, "rows counted are rows stored");
    // Every family the alert rules and the board use is exported.
    for family in families_used_by_deploy() {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} is used by deploy/ but not exported");
    }

    // promtool's own checks of the exposition.
    let promtool = require_binary("promtool", "prometheus");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    check.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it: the target is up and the series come back.
    let prom = Prometheus::start(&[c.control], None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = prom.query("up{job=\"croupier\"}");
        let accepted = prom.query("croupier_events_accepted_total{stream=\"events\"}");
        if up.first().is_some_and(|(_, v)| *v == 1.0) && accepted.first().is_some_and(|(_, v)| *v == sent as f64) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus: up {up:?}, accepted {accepted:?}\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let targets = prom.api("targets");
    assert_eq!(targets["data"]["activeTargets"][0]["health"], "up", "{targets}");
    let rows = prom.query("sum(croupier_worker_rows_inserted_total)");
    assert_eq!(rows.first().map(|(_, v)| *v), Some(sent as f64 + 6.0));
    let driver = prom.query("croupier_build_info");
    assert!(driver.first().is_some_and(|(m, _)| m["io_driver"].is_string()), "{driver:?}");
}

/// A worker whose every insert fails while ClickHouse answers pings (here `user_days`,
/// which every insert of events also writes, renamed away) is not ready once no row was
/// inserted for 15 s while inserts failed, and ready again once they go through.
#[test]
fn control_readyz_says_when_every_insert_fails_while_clickhouse_answers() {
    let s = servers();
    s.clickhouse.query("RENAME TABLE analytics.user_days TO analytics.user_days_away");
    let w = Croupier::start(CROUPIER, "run", &s.env);
    w.wait_data_ready();
    let mut c = HttpClient::connect(w.data);
    assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(5).as_bytes()).status, 202);
    let wait = |status: u16, needle: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (got, body) = w.control_get("/readyz");
            if got == status && body.contains(needle) {
                return body;
            }
            assert!(Instant::now() < deadline, "not {status} with {needle:?} within {secs} s: {got} {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let body = wait(503, "events: no row inserted for 1", 45);
    assert!(body.contains(r#""redis":{"ok":true}"#), "{body}");
    s.clickhouse.query("RENAME TABLE analytics.user_days_away TO analytics.user_days");
    wait(200, r#""clickhouse":{"ok":true}"#, 30);

    // One table stalled while the other's rows go in: named, not hidden by the others.
    s.clickhouse.query("RENAME TABLE analytics.payments TO analytics.payments_away");
    let t = croupier_it::http::now_secs();
    let payment = format!(
        r#"[{{"ts":{t},"game_id":"{GAME}","env":"prod","user_id":"u1","order_id":"stall-1","amount_cents":100,"currency":"EUR","status":"success"}}]"#
    );
    assert_eq!(post_signed(&mut c, "/api/ingest/payments", GAME, SECRET, payment.as_bytes()).status, 202);
    let deadline = Instant::now() + Duration::from_secs(45);
    let body = loop {
        assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(5).as_bytes()).status, 202);
        let (got, body) = w.control_get("/readyz");
        if got == 503 && body.contains("payments: no row inserted for 1") {
            break body;
        }
        assert!(Instant::now() < deadline, "payments' stall not seen: {got} {body}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!body.contains("events: no row"), "{body}");
    s.clickhouse.query("RENAME TABLE analytics.payments_away TO analytics.payments");
    wait(200, r#""clickhouse":{"ok":true}"#, 30);
    let stored = || s.clickhouse.query("SELECT count() FROM analytics.payments WHERE order_id = 'stall-1'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored().trim() != "1" {
        assert!(Instant::now() < deadline, "the payment was not stored once the table was back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn control_readyz_names_the_failing_component() {
    let mut s = servers();
    // A worker whose ClickHouse cannot be reached.
    let mut env = s.env.clone();
    env.push(("CROUPIER_CLICKHOUSE__ADDR".into(), format!("127.0.0.1:{}", croupier_it::free_port())));
    let w = Croupier::start(CROUPIER, "worker", &env);
    // /metrics has ClickHouse's state from the control thread's own pings (every 2 to 3 s),
    // before any /readyz: absent until the first, then 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = w.control_get("/metrics");
        if status == 200 {
            if let Some(v) = sample(&text, r#"croupier_component_ready{component="clickhouse"}"#) {
                assert_eq!(v, 0.0, "{text}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no clickhouse component on /metrics: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = w.control_get("/readyz");
        assert_eq!(status, 503, "{body}");
        if body.contains(r#""redis":{"ok":true}"#) {
            break body;
        }
        assert!(Instant::now() < deadline, "redis not reached: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains(r#""clickhouse":{"ok":false,"error":"127.0.0.1:"#), "{body}");
    assert!(!body.contains("streams"), "a worker-only process does not answer for the streams' marks: {body}");
    assert_eq!(w.control_get("/healthz").0, 200, "alive all the same");
    // /metrics says as much, with no traffic at all (CroupierDependencyDown).
    let text = scrape(&w);
    assert_eq!(value(&text, r#"croupier_component_ready{component="clickhouse"}"#), 0.0);
    assert_eq!(value(&text, r#"croupier_component_ready{component="redis"}"#), 1.0);
    assert!(!text.contains(r#"component="streams""#), "{text}");
    drop(w);

    // Ingest alone, no worker: a backlog at the high-water mark.
    let mut env = s.env.clone();
    env.push(("CROUPIER_STREAMS__EVENTS__HIGH_WATER_EVENTS".into(), "30".into()));
    let i = Croupier::start(CROUPIER, "ingest", &env);
    i.wait_data_ready();
    let wait = |want: u16| i.wait_control_ready(want);
    let body = wait(200);
    assert_eq!(body, r#"{"ready":true,"components":{"redis":{"ok":true},"streams":{"ok":true}}}"#);
    let mut client = HttpClient::connect(i.data);
    for _ in 0..2 {
        assert_eq!(post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(20).as_bytes()).status, 202);
    }
    let body = wait(503);
    assert!(body.contains("analytics:events at its high-water mark (40 of 30 events)"), "{body}");
    assert!(body.contains(r#""redis":{"ok":true}"#), "{body}");
    let text = scrape(&i);
    assert_eq!(value(&text, r#"croupier_component_ready{component="streams"}"#), 0.0);
    assert_eq!(value(&text, r#"croupier_component_ready{component="redis"}"#), 1.0);
    // Redis gone: the component says so.
    s.redis.stop();
    let body = wait(503);
    assert!(body.contains(r#""redis":{"ok":false,"error":""#) && body.contains(&s.redis.addr()), "{body}");
    let text = scrape(&i);
    assert_eq!(value(&text, r#"croupier_component_ready{component="redis"}"#), 0.0, "{text}");
    assert!(!text.contains("croupier_stream_backlog_events"), "no stream gauges while Redis cannot be read");
}

/// A shard counts against the mark the entries it cannot trim, which may be more than the
/// pending and unread entries the control port reads (here: 40 entries, 39 acknowledged
/// and one pending since before the shard started, with no sample of the group's position
/// older than it: the whole stream). Its data port refuses with 503 `backlog_full`, and the
/// control port's `/readyz` and `croupier_component_ready{component="streams"}` say so,
/// though its gauge counts one entry (a black-box finding: they said ready while the node
/// refused every event).
#[test]
fn control_readyz_says_when_a_shard_is_at_a_mark_as_it_counts_it() {
    let s = servers();
    let mut r = s.redis.client();
    for i in 0..40 {
        r.cmd(&["XADD", "analytics:events", "*", "f", &i.to_string()]);
    }
    r.cmd(&["XGROUP", "CREATE", "analytics:events", "analytics-workers", "0"]);
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "w1", "COUNT", "40", "STREAMS", "analytics:events", ">"]);
    let Frame::Array(pending) = r.cmd(&["XPENDING", "analytics:events", "analytics-workers", "-", "+", "40"]) else {
        panic!("XPENDING")
    };
    for entry in pending.iter().skip(1) {
        let Frame::Array(fields) = entry else { panic!("{entry:?}") };
        let Some(Frame::BulkString(id)) = fields.first() else { panic!("{fields:?}") };
        r.cmd(&["XACK", "analytics:events", "analytics-workers", &String::from_utf8_lossy(id.as_ref())]);
    }
    // The pending entry held past what a worker's insert takes (2 s with no interval).
    let mut env = s.env.clone();
    env.extend([
        ("CROUPIER_STREAMS__EVENTS__HIGH_WATER_EVENTS".into(), "30".into()),
        ("CROUPIER_STREAMS__EVENTS__RETENTION_EVENTS".into(), "1000".into()),
        ("CROUPIER_WORKER__INSERT_INTERVAL_MS".into(), "0".into()),
        ("CROUPIER_WORKER__LINGER_MS".into(), "0".into()),
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    let i = Croupier::start(CROUPIER, "ingest", &env);
    let mut client = HttpClient::connect(i.data);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
        if r.status == 503 && r.text().contains("backlog_full") {
            break;
        }
        assert!(Instant::now() < deadline, "not refused for the backlog: {} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = i.wait_control_ready(503);
    assert!(body.contains("refuses a stream's requests (503 backlog_full)"), "{body}");
    assert!(body.contains(r#""redis":{"ok":true}"#), "{body}");
    let text = scrape(&i);
    assert_eq!(value(&text, r#"croupier_component_ready{component="streams"}"#), 0.0, "{text}");
    assert_eq!(value(&text, r#"croupier_stream_backlog_events{stream="events"}"#), 1.0, "{text}");
    assert_eq!(r.cmd(&["XLEN", "analytics:events"]), Frame::Integer(40), "nothing trimmed");
}

/// The control port's `/readyz` (the readiness probe of ingest pods, deploy/k8s) is 503
/// while an ingest shard cannot ingest yet: after Redis comes back, until every shard has
/// read the streams again, as the data port's `/readyz` (a black-box finding: the control
/// port said ready while the shards still refused). The shards read every 3 s here, so the
/// control port's own reading comes first by far.
#[test]
fn control_readyz_waits_for_every_ingest_shard_after_redis_returns() {
    let mut s = servers();
    let mut env = s.env.clone();
    env.push(("CROUPIER_REDIS__BACKLOG_POLL_MS".into(), "3000".into()));
    let i = Croupier::start(CROUPIER, "ingest", &env);
    i.wait_data_ready();
    i.wait_control_ready(200);
    s.redis.stop();
    let body = i.wait_control_ready(503);
    assert!(body.contains(r#""redis":{"ok":false"#), "{body}");
    // The shards find Redis gone at their next reading.
    let data_ready = || (0..8).map(|_| http_get(&format!("http://{}/readyz", i.data)).is_some()).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while data_ready().contains(&true) {
        assert!(Instant::now() < deadline, "the shards never found Redis gone");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.redis.restart();
    // Ready again only once the shards are (their next reading, up to 3 s on): from then
    // on they take requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = i.control_get("/readyz");
        if status == 200 {
            assert_eq!(body, r#"{"ready":true,"components":{"redis":{"ok":true},"streams":{"ok":true}}}"#);
            break;
        }
        assert!(Instant::now() < deadline, "never ready again: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!data_ready().contains(&false), "the control port said ready before the shards");
    for _ in 0..4 {
        let mut client = HttpClient::connect(i.data);
        let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
        assert_eq!(r.status, 202, "the control port said ready: {}", r.text());
    }
}

/// Black-box finding: after Redis restarted, the first `/readyz` (or scrape) said Redis
/// was down, whenever it came: its reading found the control thread's idle connection
/// lost, which is news of the past. It reads again once the client has reconnected.
#[test]
fn control_readyz_after_a_redis_restart_reads_redis_as_it_is_now() {
    let mut s = servers();
    let i = Croupier::start(CROUPIER, "ingest", &s.env);
    i.wait_data_ready();
    i.wait_control_ready(200);
    for _ in 0..3 {
        s.redis.stop();
        s.redis.restart();
        // Redis back, the shards reading it again (every 20 ms here); nobody probes.
        std::thread::sleep(Duration::from_secs(3));
        let (status, body) = i.control_get("/readyz");
        assert_eq!(status, 200, "the first probe after the restart: {body}");
    }
}

#[test]
fn alerting_backlog_alert_reaches_a_webhook_while_clickhouse_is_paused_and_resolves() {
    let s = servers();
    let c = Croupier::start(CROUPIER, "run", &s.env);
    c.wait_data_ready();
    // The shipped rules, with a low backlog threshold and no wait: the one line an
    // operator changes, and the alert's `for`.
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml"))
        .expect("read alerts.yml");
    let threshold = "      - record: croupier:threshold:stream_backlog_events\n        expr: vector(10000)\n";
    assert!(shipped.contains(threshold), "the backlog threshold is set in one place");
    let mut rules = shipped.replace(threshold, &threshold.replace("vector(10000)", "vector(300)"));
    let alert = rules.find("- alert: CroupierStreamBacklogHigh").expect("the backlog alert");
    let for_at = alert + rules[alert..].find("for: 2m").expect("its for");
    rules.replace_range(for_at..for_at + "for: 2m".len(), "for: 1s");
    let dir = tempfile::tempdir().expect("temp dir");
    let rule_file = dir.path().join("alerts.yml");
    std::fs::write(&rule_file, rules).expect("write rules");

    let (hook, received) = webhook();
    let am = Alertmanager::start(hook);
    let prom = Prometheus::start(&[c.control], Some(&rule_file), Some(am.addr));

    // Load, with ClickHouse paused: the backlog grows past the threshold.
    s.clickhouse.pause();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (addr, stop) = (c.data, stop.clone());
        std::thread::spawn(move || {
            let mut client = HttpClient::connect(addr);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(50).as_bytes());
                assert_eq!(r.status, 202, "{}", r.text());
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let is = |v: &serde_json::Value, status: &str| {
        v["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|x| x["labels"]["alertname"] == "CroupierStreamBacklogHigh" && x["status"] == status)
        })
    };
    let firing = received.wait_for(Duration::from_secs(90), "the backlog alert firing", |v| is(v, "firing"));
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["severity"], "warning", "{firing}");
    assert_eq!(alert["labels"]["stream"], "events", "{firing}");
    assert!(
        alert["annotations"]["summary"].as_str().is_some_and(|s| s.starts_with("Stream events backlog is")),
        "{firing}"
    );
    // The control port says what is wrong meanwhile.
    let (status, body) = c.control_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""clickhouse":{"ok":false"#), "{body}");

    // ClickHouse back, the load over: the workers drain the backlog and the alert resolves.
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    s.clickhouse.resume();
    received.wait_for(Duration::from_secs(120), "the backlog alert resolved", |v| is(v, "resolved"));
    let backlog = prom.query("max(croupier_stream_backlog_events)");
    assert!(backlog.first().is_some_and(|(_, v)| *v < 300.0), "{backlog:?}");
}

/// Black-box finding: the hash of mean entry sizes damaged (another type, or a value that
/// is no mean) made the control port's `/readyz` answer 503 (the streams "cannot be
/// read"), which deploy/ and docker-compose.yml probe, while ingest took requests: one bad
/// key marked every ingest process unready. The streams are read with one event per entry
/// where the mean cannot be; a mean of `1e308` is not believed.
#[test]
fn a_damaged_entry_sizes_key_keeps_the_control_port_ready() {
    let redis = RedisServer::start();
    let i = ingest_on(&redis, &[]);
    i.wait_data_ready();
    assert_eq!(i.wait_control_ready(200), r#"{"ready":true,"components":{"redis":{"ok":true},"streams":{"ok":true}}}"#);
    let mut c = redis.client();
    assert_eq!(c.cmd(&["SET", "croupier:entry-events", "garbage"]), Frame::SimpleString(b"OK".to_vec()));
    let mut client = HttpClient::connect(i.data);
    assert_eq!(post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(20).as_bytes()).status, 202);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = i.control_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(scrape(&i).contains(r#"croupier_stream_backlog_events{stream="events"}"#), "the gauges stay");
    // A mean no entry can have is not believed: the entry counts one event, not 1e308.
    c.cmd(&["DEL", "croupier:entry-events"]);
    c.cmd(&["HSET", "croupier:entry-events", "analytics:events", "1e308"]);
    std::thread::sleep(Duration::from_millis(300));
    let text = scrape(&i);
    assert_eq!(value(&text, r#"croupier_stream_backlog_events{stream="events"}"#), 1.0, "{text}");
    assert_eq!(i.control_get("/readyz").0, 200);
}

/// A `croupier ingest` on `redis` alone (no ClickHouse needed), with `extra` settings.
pub(crate) fn ingest_on(redis: &RedisServer, extra: &[(&str, &str)]) -> Croupier {
    let mut env: Vec<(String, String)> = [
        ("CROUPIER_REDIS__ADDR", redis.addr().as_str()),
        ("CROUPIER_SERVER__PIN", "false"),
        ("CROUPIER_SERVER__SHARDS", "2"),
        ("CROUPIER_REDIS__BACKLOG_POLL_MS", "20"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.push((format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET.to_owned()));
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Croupier::start(CROUPIER, "ingest", &env)
}

/// Black-box finding: 64 idle keep-alive connections held the control port's 64 places
/// until one timed out, and `/healthz` took 4–5 s. At the cap the oldest idle connection
/// is closed for the new one; a request in progress is not cut.
#[test]
fn attack_idle_connections_do_not_starve_the_control_port() {
    let redis = RedisServer::start();
    // Timeouts far longer than the test: it cannot pass by a connection timing out.
    let c = ingest_on(
        &redis,
        &[("CROUPIER_SERVER__IDLE_TIMEOUT_MS", "120000"), ("CROUPIER_SERVER__READ_TIMEOUT_MS", "120000")],
    );
    // Ready first (the shards' first readings of the streams): `/readyz` is probed below.
    c.wait_control_ready(200);
    // The oldest connection has a request in progress: half its head is in.
    let mut busy = HttpClient::connect(c.control);
    busy.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    // The rest of the cap: connections between requests.
    let mut idle: Vec<HttpClient> = (0..63)
        .map(|_| {
            let mut h = HttpClient::connect(c.control);
            assert_eq!(h.request("GET", "/healthz", &[], b"").status, 200);
            h
        })
        .collect();
    // Each probe stays open: each needs a place of its own.
    let mut probes = Vec::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let t = Instant::now();
        let mut probe = HttpClient::connect(c.control);
        probe.send_raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = probe.reply_within(Duration::from_secs(1));
        assert_eq!(r.map(|r| r.status), Some(200), "{path} at the connection cap, after {:?}", t.elapsed());
        probes.push(probe);
    }
    // The three oldest idle connections made room, closed cleanly (FIN, no reset); the
    // others still serve.
    for h in &mut idle[..3] {
        assert!(h.is_closed(Duration::from_secs(1)), "the oldest idle connections were closed");
    }
    assert_eq!(idle[62].request("GET", "/healthz", &[], b"").status, 200);
    // The request in progress was not cut.
    busy.send_raw(b"\r\n");
    assert_eq!(busy.reply_within(Duration::from_secs(2)).map(|r| r.status), Some(200));
}

/// Black-box finding: sockets that sent part of a head (`GET /healthz HTTP/1.1\r\n`) and
/// nothing more held the control port's 64 places until `read_timeout`: none of them was
/// idle, so none was closed for a new connection, and `/healthz` waited for seconds. At
/// the cap, no connection being idle, the oldest still reading a head is closed for the
/// new one.
#[test]
fn attack_incomplete_heads_do_not_starve_the_control_port() {
    let redis = RedisServer::start();
    // Timeouts far longer than the test: it cannot pass by a connection timing out.
    let c = ingest_on(
        &redis,
        &[("CROUPIER_SERVER__IDLE_TIMEOUT_MS", "120000"), ("CROUPIER_SERVER__READ_TIMEOUT_MS", "120000")],
    );
    // Ready first (the shards' first readings of the streams): `/readyz` is probed below.
    c.wait_control_ready(200);
    let half: Vec<HttpClient> = (0..100)
        .map(|_| {
            let mut h = HttpClient::connect(c.control);
            h.send_raw(b"GET /healthz HTTP/1.1\r\n");
            h
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/healthz", "/readyz", "/healthz"] {
        let t = Instant::now();
        let mut probe = HttpClient::connect(c.control);
        probe.send_raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = probe.reply_within(Duration::from_secs(20));
        eprintln!("DEBUG {path} {:?}", t.elapsed());
        assert_eq!(r.map(|r| r.status), Some(200), "{path} behind 100 incomplete heads, after {:?}", t.elapsed());
    }
    drop(half);
}

/// The resident memory of process `pid`, bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS in kB") * 1024
}

/// Whether the server has closed `h` (reset, or end of stream after what it wrote),
/// reading and dropping what it sent, waiting at most `wait`.
fn closed_within(h: &HttpClient, wait: Duration) -> bool {
    let mut s = h.writer();
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Black-box finding: sockets that sent a whole head (`Content-Length: 60000`) and then
/// one byte of body a second held the control port's places until `read_timeout`: a
/// connection whose body was still arriving was never closed for a new one. At the cap
/// it counts with those reading a head (after the idle ones, oldest first).
#[test]
fn attack_slow_bodies_do_not_starve_the_control_port() {
    let redis = RedisServer::start();
    // Timeouts far longer than the test: it cannot pass by a connection timing out.
    let c = ingest_on(
        &redis,
        &[("CROUPIER_SERVER__IDLE_TIMEOUT_MS", "120000"), ("CROUPIER_SERVER__READ_TIMEOUT_MS", "120000")],
    );
    // Ready first (the shards' first readings of the streams): `/readyz` is probed below.
    c.wait_control_ready(200);
    let slow: Vec<HttpClient> = (0..100)
        .map(|_| {
            let mut h = HttpClient::connect(c.control);
            h.send_raw(b"POST /api/analytics/filters HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n{");
            h
        })
        .collect();
    // The body keeps trickling in (one byte per socket every 200 ms) during the probes.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = slow.iter().map(|h| h.writer()).collect();
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for mut w in &writers {
                    let _ = std::io::Write::write_all(&mut w, b" ");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for path in ["/healthz", "/readyz", "/healthz"] {
        let t = Instant::now();
        let mut probe = HttpClient::connect(c.control);
        probe.send_raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        // Within 3 s, not the 1 s of a probe's timeout: the control thread encodes up to
        // 64 large answers meanwhile, and tests run beside others; without the fix it waits
        // for the read timeout (120 s / 5 s).
        let r = probe.reply_within(Duration::from_secs(3));
        assert_eq!(r.map(|r| r.status), Some(200), "{path} behind 100 slow bodies, after {:?}", t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().expect("trickle thread");
    drop(slow);
}

/// Black-box finding: sockets that pipelined requests for large answers and never read
/// held the control port's places with no write timeout, each with its answer in memory.
/// An answer not wholly written within `read_timeout` closes its connection, a connection
/// holds one answer at a time, and at the cap one stuck writing is closed for a new one.
#[test]
fn attack_slow_readers_do_not_starve_the_control_port() {
    const ASSET: usize = 4 << 20;
    let redis = RedisServer::start();
    let dist = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dist.path().join("assets")).expect("assets dir");
    std::fs::write(dist.path().join("index.html"), "<html>").expect("index.html");
    std::fs::write(dist.path().join("assets/big-1.js"), vec![b'x'; ASSET]).expect("asset");
    let c = ingest_on(
        &redis,
        &[
            ("CROUPIER_SERVER__IDLE_TIMEOUT_MS", "120000"),
            ("CROUPIER_SERVER__READ_TIMEOUT_MS", "5000"),
            ("CROUPIER_CONTROL__DASHBOARD_DIR", dist.path().to_str().expect("utf-8 path")),
        ],
    );
    // Ready first (the shards' first readings of the streams): `/readyz` is probed below.
    c.wait_control_ready(200);
    let base = rss_bytes(c.pid());
    let request = "GET /assets/big-1.js HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3);
    let started = Instant::now();
    let mut slow: Vec<HttpClient> = (0..70)
        .map(|_| {
            let mut h = HttpClient::connect(c.control);
            h.send_raw(request.as_bytes());
            h
        })
        .collect();
    // The first answers fill the sockets' kernel buffers.
    std::thread::sleep(Duration::from_millis(1500));
    for path in ["/healthz", "/readyz", "/healthz"] {
        let t = Instant::now();
        let mut probe = HttpClient::connect(c.control);
        probe.send_raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        // Within 3 s, not the 1 s of a probe's timeout: the control thread encodes up to
        // 64 large answers meanwhile, and tests run beside others; without the fix it waits
        // for the read timeout (120 s / 5 s).
        let r = probe.reply_within(Duration::from_secs(3));
        assert_eq!(r.map(|r| r.status), Some(200), "{path} behind 70 slow readers, after {:?}", t.elapsed());
    }
    // One answer per connection at most (64 places), however many were asked for.
    let peak = rss_bytes(c.pid());
    assert!(peak < base + 64 * ASSET as u64 + (64 << 20), "RSS {peak} from {base}");
    // Every slow reader is closed by the write timeout: 5 s after its answer began (those
    // the backlog held began once others closed). Read only after that, so that reading
    // cannot let an answer finish.
    std::thread::sleep(Duration::from_secs(11).saturating_sub(started.elapsed()));
    let mut unread = 0usize;
    for h in &mut slow {
        assert!(closed_within(h, Duration::from_secs(2)), "a slow reader still open after {:?}", started.elapsed());
        unread += 1;
    }
    assert_eq!(unread, 70);
    assert_eq!(HttpClient::connect(c.control).request("GET", "/healthz", &[], b"").status, 200);
}

/// `streams.partitions` changed from 3 to 2 while entries waited (no worker): the control
/// port reports every stream with `layout` and `partition`, the smallest count holding its
/// key (a partition of both counts, the same keys, once, as the count of 2's), every
/// event posted counted once over all the series; readiness is the new count's.
#[test]
fn the_streams_of_an_earlier_partition_count_are_reported_with_their_layout() {
    use croupier_protocol::cluster::Partitions;
    use croupier_protocol::stream::StreamKind;
    let redis = RedisServer::start();
    let old = ingest_on(&redis, &[("CROUPIER_STREAMS__PARTITIONS", "3")]);
    old.wait_data_ready();
    let mut c = HttpClient::connect(old.data);
    // One event per request: the backlog in events is the entries, whatever mean was kept.
    for _ in 0..12 {
        assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(1).as_bytes()).status, 202);
    }
    drop(old);
    let new = ingest_on(&redis, &[("CROUPIER_STREAMS__PARTITIONS", "2")]);
    new.wait_data_ready();
    let text = scrape(&new);
    let series = |labels: &str| sample(&text, &format!("croupier_stream_backlog_events{{{labels}}}")).unwrap_or(0.0);
    let (three, two) = (Partitions::new(3), Partitions::new(2));
    let new_keys: Vec<&str> = (0..2).map(|p| two.stream(p, StreamKind::Events)).collect();
    // Entries of the old partitions that are not the new ones' (XLEN: nothing was read).
    let only_old: i64 = (0..3)
        .map(|p| three.stream(p, StreamKind::Events))
        .filter(|k| !new_keys.contains(k))
        .map(|k| crate::fixture::xlen(&redis, k))
        .sum();
    let layout3: f64 = (0..3).map(|p| series(&format!(r#"stream="events",layout="3",partition="{p}""#))).sum();
    // Two counts recorded: every stream labelled by the smallest count holding its key,
    // the configured ones too (any process reports a stream under one label set).
    let configured: f64 = (0..2).map(|p| series(&format!(r#"stream="events",layout="2",partition="{p}""#))).sum();
    assert!(!text.contains(r#"croupier_stream_backlog_events{stream="events",partition="#), "{text}");
    // Partitions 0 and 2 of 3 are tagged `0.1` and `2.0`, 1 of both counts `1.0`: the 12
    // requests spread over the three (all in the shared one: one chance in 3^12).
    assert!(only_old > 0);
    assert_eq!(layout3, only_old as f64, "{text}");
    assert_eq!(layout3 + configured, 12.0, "every event once: {text}");
    assert_eq!(new.control_get("/readyz").0, 200);
}

/// Black-box finding: with every stream key of another type, ingest refused every request
/// while the control port's `/readyz` answered 200 (the broken streams left out of its
/// readings, none left). It answers 503 naming why; with one stream working, 200.
#[test]
fn control_readyz_is_unready_when_every_stream_key_holds_another_type() {
    let redis = RedisServer::start();
    let c = ingest_on(&redis, &[("CROUPIER_SERVER__SHARDS", "1")]);
    c.wait_data_ready();
    let mut client = redis.client();
    for key in ["analytics:events", "analytics:payments"] {
        client.cmd(&["DEL", key]);
        assert_eq!(client.int(&["LPUSH", key, "x"]), 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = c.control_get("/readyz");
    assert_eq!(status, 200, "one stream works: {body}");
    client.cmd(&["DEL", "analytics:custom"]);
    assert_eq!(client.int(&["LPUSH", "analytics:custom", "x"]), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = c.control_get("/readyz");
        if status == 503 {
            assert!(body.contains("holds another type"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The data port says so as well, once its shard's next backlog reading has run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while croupier_it::monitoring::http_get(&format!("http://{}/readyz", c.data)).is_some() {
        assert!(Instant::now() < deadline, "the data port is still ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}
