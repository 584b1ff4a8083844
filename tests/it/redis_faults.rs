//! A Redis that misbehaves, through the harness's fault proxy: a connection that stops
//! answering, a lost reply, a reply that is not RESP. Ingest answers 503 within the reply
//! timeout, drops the connection, and takes requests again on a new one; what it answered
//! 503 for is not appended later.

use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_it::proxy::{Fault, FaultProxy};
use croupier_it::redis::RedisServer;

use crate::fixture::{both_drivers, events, xlen, Fixture};
use crate::pipeline::Pipeline;

both_drivers!(
    c4_frozen_connection_is_replaced_and_503s_are_not_stored,
    c4_dropped_reply_fails_the_connection,
    c4_truncated_bulk_header_replaces_the_connection,
    c4_full_queue_refuses_at_once,
    hostile2_deeply_nested_reply_is_refused_not_a_crash,
    hostile8_unknown_backlog_is_redis_unavailable_not_backlog_full,
);

const REPLY_TIMEOUT_MS: u64 = 1_000;

/// One shard on a redis-server behind a fault proxy.
fn through_proxy(driver: Driver, tweak: impl FnOnce(&mut Config)) -> (FaultProxy, Fixture) {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port);
    let addr = proxy.addr();
    let f = Fixture::start_with_redis(driver, redis, |c| {
        c.server.shards = 1;
        c.redis.addr = addr;
        c.redis.reply_timeout_ms = REPLY_TIMEOUT_MS;
        tweak(c);
    });
    (proxy, f)
}

/// Posts 3 events until one is accepted (503 meanwhile), within `within`.
fn accepted_again_within(f: &Fixture, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = f.post("/api/ingest/events", &events(3));
        if r.status == 202 {
            return;
        }
        assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
        assert!(Instant::now() < deadline, "ingest did not take requests again within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request through a reply fault: 503 within the reply timeout, then 202 again on a
/// new connection.
fn fault_then_recover(driver: Driver, fault: Fault) {
    let (proxy, f) = through_proxy(driver, |_| {});
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    let connections = proxy.accepted();
    proxy.on_next_reply("EVAL", fault);
    let t = Instant::now();
    let r = f.post("/api/ingest/events", &events(3));
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_millis(REPLY_TIMEOUT_MS + 1_500), "503 after {:?}", t.elapsed());
    assert!(!proxy.fault_pending());
    accepted_again_within(&f, Duration::from_secs(5));
    assert!(proxy.accepted() > connections, "the connection was replaced");
}

fn c4_frozen_connection_is_replaced_and_503s_are_not_stored(driver: Driver) {
    let (proxy, f) = through_proxy(driver, |_| {});
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    let connections = proxy.accepted();
    proxy.freeze();
    let t = Instant::now();
    let r = f.post("/api/ingest/events", &events(3));
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_millis(REPLY_TIMEOUT_MS + 1_500), "503 after {:?}", t.elapsed());
    // The frozen connection is given up and a new one made, while the old one stays
    // frozen (as in a partition nobody told the kernel about).
    accepted_again_within(&f, Duration::from_secs(5));
    assert!(proxy.accepted() > connections, "the connection was replaced");
    // The partition heals: what the frozen connection held is not appended after the
    // client was told 503.
    proxy.thaw();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "only the two 202s are stored");
}

fn c4_dropped_reply_fails_the_connection(driver: Driver) {
    fault_then_recover(driver, Fault::Drop);
}

fn c4_truncated_bulk_header_replaces_the_connection(driver: Driver) {
    fault_then_recover(driver, Fault::Rewrite(b"$9223372036854775807\r\n".to_vec()));
}

fn hostile2_deeply_nested_reply_is_refused_not_a_crash(driver: Driver) {
    let mut nested = b"*1\r\n".repeat(10_000);
    nested.extend_from_slice(b":1\r\n");
    fault_then_recover(driver, Fault::Rewrite(nested));
}

fn c4_full_queue_refuses_at_once(driver: Driver) {
    let (proxy, f) = through_proxy(driver, |c| {
        c.redis.reply_timeout_ms = 3_000;
        c.redis.max_queued_bytes = 4_096;
    });
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    proxy.freeze();
    // One request in flight, one queued behind it.
    let addr = f.addr;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let t = std::thread::spawn(move || {
                let mut c = croupier_it::http::HttpClient::connect(addr);
                crate::fixture::post_signed(&mut c, "/api/ingest/events", "g1", "secret-one", events(3).as_bytes())
                    .status
            });
            std::thread::sleep(Duration::from_millis(200));
            t
        })
        .collect();
    let t = Instant::now();
    let r = f.post("/api/ingest/events", &events(60));
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_millis(1_500), "refused only after {:?}", t.elapsed());
    for w in waiting {
        assert_eq!(w.join().expect("client thread"), 503);
    }
}

#[test]
fn c4_worker_consumers_recover_after_a_freeze() {
    let mut p = Pipeline::start(&[]);
    let proxy = FaultProxy::start(p.ingest.redis.port);
    let addr = proxy.addr();
    p.start_worker(&[("CROUPIER_REDIS__ADDR", addr.as_str())]);
    assert_eq!(p.ingest.post("/api/ingest/events", &events(10)).status, 202);
    p.wait_for(10, "rows before the freeze", Pipeline::distinct_events);
    // Idle consumers block in XREADGROUP for up to their idle block: no reply is late
    // for that, and no connection is replaced.
    let connections = proxy.accepted();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.accepted(), connections, "blocking reads tripped the reply deadline");
    proxy.freeze();
    assert_eq!(p.ingest.post("/api/ingest/events", &events(10)).status, 202);
    p.wait_for(20, "rows after the freeze", Pipeline::distinct_events);
    assert!(proxy.accepted() > connections, "the worker made new connections");
}

fn hostile8_unknown_backlog_is_redis_unavailable_not_backlog_full(driver: Driver) {
    // Backlog readings 3 s apart: after a reconnect the backlog stays unknown that long.
    let (proxy, f) = through_proxy(driver, |c| c.redis.backlog_poll_ms = 3_000);
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    // The next backlog reading gets a reply that is not RESP: the connection is replaced
    // and the backlog is unknown until the reading after.
    proxy.on_next_reply("XINFO", Fault::Rewrite(b"?\r\n".to_vec()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.fault_pending() {
        assert!(Instant::now() < deadline, "no backlog reading");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = f.post("/api/ingest/events", &events(3));
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    let ready = f.client().request("GET", "/readyz", &[], b"");
    assert_eq!((ready.status, ready.error_tag().as_str()), (503, "redis_unavailable"), "{}", ready.text());
    accepted_again_within(&f, Duration::from_secs(5));
}

/// Sends `sig` to a process; sends `CONT` when dropped (a test that fails while Redis is
/// stopped must not leave it stopped).
struct Stopped(u32);

impl Stopped {
    fn signal(pid: u32, sig: &str) {
        let ok = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }

    fn stop(pid: u32) -> Stopped {
        Self::signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        Self::signal(self.0, "CONT");
    }
}

/// `/readyz` on the data port from new connections (so that several shards answer):
/// every status seen.
fn data_readyz(addr: std::net::SocketAddr) -> Vec<(u16, String)> {
    (0..6)
        .map(|_| {
            let r = croupier_it::http::HttpClient::connect(addr).request("GET", "/readyz", &[], b"");
            (r.status, r.error_tag())
        })
        .collect()
}

/// Black-box finding: with redis-server frozen (SIGSTOP) the data port's `/readyz` stayed
/// 200 until a reply timed out (5 s), while ingest answered 503 meanwhile. Both ports'
/// `/readyz` now answer 503 once a request to Redis is overdue (a quarter of the reply
/// timeout), and 200 again once Redis answers.
#[test]
fn attack_frozen_redis_fails_readyz_before_the_reply_timeout() {
    let redis = RedisServer::start();
    let pid = redis.pid().expect("redis pid");
    let c = crate::control::ingest_on(&redis, &[("CROUPIER_REDIS__REPLY_TIMEOUT_MS", "5000")]);
    c.wait_data_ready();
    c.wait_control_ready(200);
    let frozen = Stopped::stop(pid);
    let t = Instant::now();
    loop {
        let seen = data_readyz(c.data);
        if seen.iter().all(|s| *s == (503, "redis_unavailable".to_owned())) {
            break;
        }
        assert!(t.elapsed() < Duration::from_millis(2_500), "data /readyz after {:?}: {seen:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The control port answers at once, and says what is late.
    let asked = Instant::now();
    let (status, body) = c.control_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""redis":{"ok":false,"error":""#) && body.contains("overdue"), "{body}");
    assert!(asked.elapsed() < Duration::from_millis(500), "control /readyz took {:?}", asked.elapsed());
    // Redis answers again, before any connection was given up: ready again.
    drop(frozen);
    let t = Instant::now();
    loop {
        let seen = data_readyz(c.data);
        if seen.iter().all(|s| s.0 == 200) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "data /readyz after CONT: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait_control_ready(200);
}
