//! Logs of the `croupier` process: structured events, as JSON lines or text by
//! configuration, filtered by the configured level and by `RUST_LOG`.

use std::time::{Duration, Instant};

use croupier_it::monitoring::Croupier;
use croupier_it::proxy::FaultProxy;
use croupier_it::redis::RedisServer;
use croupier_protocol::resp::Frame;

use crate::fixture::{events, post_signed, GAME, SECRET};
use crate::pipeline::CROUPIER;

fn env(redis: &RedisServer, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("CROUPIER_REDIS__ADDR", redis.addr()),
        ("CROUPIER_SERVER__PIN", "false".into()),
        ("CROUPIER_SERVER__SHARDS", "1".into()),
        ("CROUPIER_SERVER__DRIVER", "epoll".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

/// The log once it has a line containing `what` (10 s at most).
fn log_with(c: &Croupier, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = c.log();
        if log.contains(what) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {what:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn logs_are_json_lines_with_fields_when_configured() {
    let redis = RedisServer::start();
    let c = Croupier::start(CROUPIER, "ingest", &env(&redis, &[("CROUPIER_LOG__FORMAT", "json")]));
    let log = log_with(&c, "ingest listening");
    let line = log.lines().find(|l| l.contains("ingest listening")).expect("the line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "ingest listening", "{v}");
    assert_eq!(v["addr"], c.data.to_string(), "the address is a field: {v}");
    assert_eq!(v["shards"], 1, "{v}");
    assert!(v["io_driver"].is_string() && v["timestamp"].is_string() && v["target"].is_string(), "{v}");
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "every line is JSON: {l}");
    }
}

#[test]
fn logs_are_text_by_default_and_rust_log_overrides_the_level() {
    let redis = RedisServer::start();
    let c = Croupier::start(CROUPIER, "ingest", &env(&redis, &[]));
    let log = log_with(&c, "ingest listening");
    let line = log.lines().find(|l| l.contains("ingest listening")).expect("the line");
    assert!(line.contains(" INFO ") && line.contains(&format!("addr={}", c.data)), "{line}");
    drop(c);

    // The configured level says debug, RUST_LOG says warn: RUST_LOG wins.
    let mut e = env(&redis, &[("CROUPIER_LOG__LEVEL", "debug"), ("RUST_LOG", "warn")]);
    // A setting that is no longer used: its warning is logged at start.
    e.push(("CROUPIER_STREAMS__BATCH_EVENTS".into(), "100".into()));
    let c = Croupier::start(CROUPIER, "ingest", &e);
    let log = log_with(&c, "streams.batch_events is no longer used");
    assert!(log.contains(" WARN "), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!c.log().contains("ingest listening"), "info filtered out by RUST_LOG=warn:\n{}", c.log());
}

/// Black-box findings: a Redis that stopped answering for seconds, and a stream key of
/// another type, left nothing in the log. Both are warnings now, naming the server, the
/// cause and the key.
#[test]
fn a_frozen_redis_and_a_stream_key_of_another_type_are_warned_of() {
    let redis = RedisServer::start();
    let mut client = redis.client();
    assert_eq!(client.cmd(&["SET", "analytics:custom", "not a stream"]), Frame::SimpleString(b"OK".to_vec()));
    let proxy = FaultProxy::start(redis.port);
    let mut e = env(&redis, &[("CROUPIER_REDIS__REPLY_TIMEOUT_MS", "1000")]);
    e.retain(|(k, _)| k != "CROUPIER_REDIS__ADDR");
    e.push(("CROUPIER_REDIS__ADDR".into(), proxy.addr()));
    let c = Croupier::start(CROUPIER, "ingest", &e);
    let log = log_with(&c, "a stream key holds another type");
    let line = log.lines().find(|l| l.contains("a stream key holds another type")).expect("the line");
    assert!(line.contains(" WARN ") && line.contains("key=analytics:custom"), "{line}");
    // Broken while running (no connection is made again): the backlog readings name it.
    // Once the connection is ready, so that its set-up, which checks each stream key in
    // turn, is not the one finding it.
    c.wait_data_ready();
    assert_eq!(client.int(&["DEL", "analytics:payments"]), 1);
    assert_eq!(client.int(&["LPUSH", "analytics:payments", "x"]), 1);
    let log = log_with(&c, "key=analytics:payments");
    let line = log.lines().find(|l| l.contains("key=analytics:payments")).expect("the line");
    assert!(line.contains(" WARN ") && line.contains("a stream key holds another type"), "{line}");
    // Said by a backlog reading, not by a connection made again (whose line names the server).
    assert!(!line.contains("server="), "{line}");
    // The backlog readings keep the connection busy: frozen, it times out.
    log_with(&c, "ingest listening");
    proxy.freeze();
    let log = log_with(&c, "no reply within redis.reply_timeout_ms");
    let line = log.lines().find(|l| l.contains("no reply within")).expect("the line");
    assert!(line.contains(" WARN ") && line.contains(&format!("server={}", proxy.addr())), "{line}");
}

#[test]
fn a_stream_whose_ids_are_used_up_is_warned_of_once_not_per_request() {
    let redis = RedisServer::start();
    let secret = format!("CROUPIER_GAMES__{GAME}__SECRET");
    let c = Croupier::start(CROUPIER, "ingest", &env(&redis, &[(secret.as_str(), SECRET)]));
    c.wait_data_ready();
    let mut http = croupier_it::http::HttpClient::connect(c.data);
    let ok = post_signed(&mut http, "/api/ingest/events", GAME, SECRET, events(2).as_bytes());
    assert_eq!(ok.status, 202, "{}", ok.text());
    redis.client().cmd(&["XSETID", "analytics:events", "18446744073709551615-18446744073709551615"]);
    for _ in 0..20 {
        let r = post_signed(&mut http, "/api/ingest/events", GAME, SECRET, events(2).as_bytes());
        assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    }
    // One line for the twenty (at most every 10 s per error code), naming the stream.
    let what = "an append of the ingest transaction failed when run";
    let log = log_with(&c, what);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(" WARN ") && lines[0].contains("XADD to analytics:events"), "{}", lines[0]);
    assert_eq!(redis.client().int(&["XLEN", "analytics:events"]), 1);
}

/// Black-box finding: with Redis refusing connections, the ingest shards said nothing
/// (the node was just unready). Each server and error is now one warning per 10 s,
/// naming the server and the system's error.
#[test]
fn a_redis_that_cannot_be_reached_is_warned_of_with_its_address() {
    let redis = RedisServer::start();
    let closed = format!("127.0.0.1:{}", croupier_it::free_port());
    let mut e = env(&redis, &[]);
    e.retain(|(k, _)| k != "CROUPIER_REDIS__ADDR");
    e.push(("CROUPIER_REDIS__ADDR".into(), closed.clone()));
    let c = Croupier::start(CROUPIER, "ingest", &e);
    let log = log_with(&c, "cannot connect to Redis");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("cannot connect to Redis")).collect();
    assert!(lines[0].contains(" WARN ") && lines[0].contains(&format!("server={closed}")), "{}", lines[0]);
    assert!(lines[0].to_ascii_lowercase().contains("refused"), "{}", lines[0]);
    // Tried again every few hundred milliseconds, said once.
    std::thread::sleep(Duration::from_secs(2));
    let n = c.log().lines().filter(|l| l.contains("cannot connect to Redis")).count();
    assert_eq!(n, 1, "{}", c.log());
}
