//! A Redis that misbehaves, through the harness's fault proxy: a connection that stops
//! answering, a lost reply, a reply that is not RESP. Ingest answers 503 within the reply
//! timeout, drops the connection, and takes requests again on a new one; what it answered
//! 503 for is not appended later.
//!
//! And the nonce lease of the `lease` ingest protocol at each of its steps (docs/ingest.md):
//! the lease's reply lost, a partition between the lease and the append, the append's
//! reply lost, croupier killed (SIGKILL) and Redis restarted between them. Whatever
//! happens, the request sent again with its nonce is appended exactly once, another body
//! with that nonce never, and nothing is answered 202 that Redis does not have.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver, IngestProtocol};
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient, Reply};
use croupier_it::proxy::{Fault, FaultProxy};
use croupier_it::redis::RedisServer;

use crate::fixture::{both_drivers, events, total_entries, xlen, Fixture, GAME, SECRET};
use crate::pipeline::Pipeline;

both_drivers!(
    c4_frozen_connection_is_replaced_and_503s_are_not_stored,
    c4_dropped_reply_fails_the_connection,
    c4_truncated_bulk_header_replaces_the_connection,
    c4_full_queue_refuses_at_once,
    hostile2_deeply_nested_reply_is_refused_not_a_crash,
    hostile8_unknown_backlog_is_redis_unavailable_not_backlog_full,
    lease1_lease_reply_lost_then_the_retry_appends_once,
    lease2_append_reply_lost_then_the_retry_is_answered_without_an_append,
    lease3_partition_between_lease_and_append_appends_nothing_late,
    lease4_croupier_killed_between_the_steps,
    lease5_redis_restarted_between_the_steps,
    lease6_the_script_protocol_stays_selectable,
    lease7_an_append_failing_in_the_commit_leaves_the_other_entry_and_its_retry_appends_the_same_ids,
    lease8_a_nonce_that_spells_another_requests_lease_is_a_nonce_of_its_own,
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

/// Noticed after a black-box run: with Redis out of memory (every append refused, 503
/// `redis_unavailable`) the data port's `/readyz` stayed 200, as Redis still answered
/// reads in time. Both ports' `/readyz` now answer 503 while a shard's last append was
/// refused (within the reply timeout) and none went in since: 200 again at once when one
/// goes in, and after the reply timeout without traffic.
#[test]
fn attack_redis_refusing_appends_fails_readyz() {
    let redis = RedisServer::start();
    let c = crate::control::ingest_on(&redis, &[("CROUPIER_REDIS__REPLY_TIMEOUT_MS", "3000")]);
    c.wait_data_ready();
    c.wait_control_ready(200);
    let mut admin = redis.client();
    let oom = |admin: &mut croupier_it::redis::RedisClient, on: bool| {
        admin.cmd(&["CONFIG", "SET", "maxmemory", if on { "1" } else { "0" }]);
    };
    // A refusal on either shard makes every shard's `/readyz` 503 (as an overdue reply does).
    let refused_everywhere = |admin: &mut croupier_it::redis::RedisClient| {
        oom(admin, true);
        for _ in 0..3 {
            let r = Signed::new(events(2)).send(c.data);
            assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
        }
        let seen = data_readyz(c.data);
        assert!(seen.iter().all(|s| *s == (503, "redis_unavailable".to_owned())), "data /readyz: {seen:?}");
        let (status, body) = c.control_get("/readyz");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(r#""redis":{"ok":false,"error":""#) && body.contains("refuses appends"), "{body}");
    };
    refused_everywhere(&mut admin);
    // Memory again, and appends go in: ready once each shard that was refused took one
    // (new connections, spread over the shards by the kernel), well before the hold.
    oom(&mut admin, false);
    let before = total_entries(&redis);
    let t = Instant::now();
    loop {
        assert_eq!(Signed::new(events(2)).send(c.data).status, 202);
        let seen = data_readyz(c.data);
        if seen.iter().all(|s| s.0 == 200) {
            break;
        }
        assert!(t.elapsed() < Duration::from_millis(2_000), "data /readyz after appends went in: {seen:?}");
    }
    assert!(total_entries(&redis) > before);
    assert_eq!(c.control_get("/readyz").0, 200);
    // Refused again, then memory again with no traffic: ready once the reply timeout ran
    // out since the last refusal.
    refused_everywhere(&mut admin);
    let refused = Instant::now();
    oom(&mut admin, false);
    let t = Instant::now();
    loop {
        let seen = data_readyz(c.data);
        if seen.iter().all(|s| s.0 == 200) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(8), "data /readyz without traffic: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused.elapsed() >= Duration::from_millis(2_500), "ready {:?} after the last refusal", refused.elapsed());
    c.wait_control_ready(200);
}

/// The lease of a request whose attempt was lost: three reply timeouts and 2 s.
const LEASE_MS: u64 = 3 * REPLY_TIMEOUT_MS + 2_000;

/// A signed request kept to be sent again as it is (same nonce, same body).
struct Signed {
    nonce: String,
    body: String,
    headers: Vec<(String, String)>,
}

impl Signed {
    fn new(body: String) -> Signed {
        Signed::with_nonce(fresh_nonce(), body)
    }

    fn with_nonce(nonce: String, body: String) -> Signed {
        let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
        Signed { nonce, body, headers }
    }

    /// Another body signed with this nonce.
    fn replayed(&self) -> Signed {
        Signed::with_nonce(self.nonce.clone(), events(2))
    }

    fn send(&self, addr: SocketAddr) -> Reply {
        HttpClient::connect(addr).request("POST", "/api/ingest/events", &self.headers, self.body.as_bytes())
    }
}

/// Sends `r` again until it is answered 202 (within `within`); every other answer must
/// be a 503 with `Retry-After`. Returns the error tags seen before the 202.
fn retry_until_accepted(addr: SocketAddr, r: &Signed, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let a = r.send(addr);
        if a.status == 202 {
            assert_eq!(a.text(), r#"{"accepted":3}"#);
            return seen;
        }
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)), "{:?}", a.headers);
        seen.push(a.error_tag());
        assert!(Instant::now() < deadline, "not accepted within {within:?}: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cut after the lease: the lease transaction ran, its reply never came. The attempt is
/// answered 503; its retry meets the lease (503 `request_in_flight`, nothing appended)
/// until it runs out, then appends once; another body with the nonce is a replay.
fn lease1_lease_reply_lost_then_the_retry_appends_once(driver: Driver) {
    let (proxy, f) = through_proxy(driver, |c| c.redis.ingest_protocol = IngestProtocol::Lease);
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    proxy.on_next_reply("EXEC", Fault::Drop);
    let r = Signed::new(events(3));
    let a = r.send(f.addr);
    assert_eq!((a.status, a.error_tag().as_str()), (503, "redis_unavailable"), "{}", a.text());
    assert!(!proxy.fault_pending());
    let t = Instant::now();
    let seen = retry_until_accepted(f.addr, &r, Duration::from_millis(LEASE_MS + 3_000));
    assert!(seen.iter().any(|t| t == "request_in_flight"), "the retry met the lease: {seen:?}");
    assert!(t.elapsed() >= Duration::from_millis(LEASE_MS - REPLY_TIMEOUT_MS - 1_000), "{:?}", t.elapsed());
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "appended once");
    // Answered as the first time, nothing appended again.
    assert_eq!(r.send(f.addr).status, 202);
    let replay = r.replayed().send(f.addr);
    assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"));
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}

/// Cut after the append: the append transaction ran (entries and the nonce marked
/// done, the lease kept three reply timeouts more), its reply never came. The attempt is
/// answered 503 after one reply timeout; the retry meets the lease for at most the
/// other two (503 `request_in_flight`: its holder could have been about to mark the nonce
/// pending again), then is answered 202 with nothing appended again.
fn lease2_append_reply_lost_then_the_retry_is_answered_without_an_append(driver: Driver) {
    let (proxy, f) = through_proxy(driver, |c| c.redis.ingest_protocol = IngestProtocol::Lease);
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    proxy.on_next_reply("EXEC+XADD", Fault::Drop);
    let r = Signed::new(events(3));
    let a = r.send(f.addr);
    assert_eq!((a.status, a.error_tag().as_str()), (503, "redis_unavailable"), "{}", a.text());
    assert!(!proxy.fault_pending());
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "appended, though answered 503");
    let t = Instant::now();
    let seen = retry_until_accepted(f.addr, &r, Duration::from_secs(5));
    assert!(seen.iter().all(|t| t == "request_in_flight" || t == "redis_unavailable"), "{seen:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2 * REPLY_TIMEOUT_MS + 1_500),
        "the lease outlived its hold: {:?}",
        t.elapsed()
    );
    assert_eq!(r.send(f.addr).status, 202);
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "not appended again");
    let replay = r.replayed().send(f.addr);
    assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"));
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}

/// A partition right after the lease's reply: the append transaction is written into
/// it and never reaches Redis (the connection is given up, and what it held with it).
/// The retry waits out the lease, then appends once; the partition healing adds nothing.
fn lease3_partition_between_lease_and_append_appends_nothing_late(driver: Driver) {
    let (proxy, f) = through_proxy(driver, |c| c.redis.ingest_protocol = IngestProtocol::Lease);
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    proxy.on_next_reply("EXEC", Fault::PassThenFreeze);
    let r = Signed::new(events(3));
    let a = r.send(f.addr);
    assert_eq!((a.status, a.error_tag().as_str()), (503, "redis_unavailable"), "{}", a.text());
    let seen = retry_until_accepted(f.addr, &r, Duration::from_millis(LEASE_MS + 3_000));
    assert!(seen.iter().any(|t| t == "request_in_flight"), "{seen:?}");
    proxy.thaw();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "appended once");
    assert_eq!(r.send(f.addr).status, 202);
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}

/// A process, killed with SIGKILL (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `croupier ingest` process of one shard on `redis_addr`, and its address once ready.
fn ingest_process(redis_addr: &str) -> (Killed, SocketAddr) {
    let port = croupier_it::free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Killed(
        Command::new(crate::pipeline::CROUPIER)
            .arg("ingest")
            .envs([
                ("CROUPIER_SERVER__LISTEN", listen.as_str()),
                ("CROUPIER_SERVER__SHARDS", "1"),
                ("CROUPIER_SERVER__PIN", "false"),
                ("CROUPIER_SERVER__DRIVER", "epoll"),
                ("CROUPIER_REDIS__ADDR", redis_addr),
                ("CROUPIER_REDIS__REPLY_TIMEOUT_MS", "1000"),
                ("CROUPIER_REDIS__BACKLOG_POLL_MS", "20"),
                ("CROUPIER_REDIS__INGEST_PROTOCOL", "lease"),
                ("CROUPIER_CONTROL__LISTEN", "127.0.0.1:0"),
                ("CROUPIER_OTLP__LISTEN", "127.0.0.1:0"),
                ("CROUPIER_OTLP__GRPC_LISTEN", "127.0.0.1:0"),
                ("CROUPIER_GAMES__g1__SECRET", SECRET),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start croupier ingest"),
    );
    let addr: SocketAddr = listen.parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = std::net::TcpStream::connect(addr).is_ok()
            && HttpClient::connect(addr).request("GET", "/readyz", &[], b"").status == 200;
        if ready {
            return (child, addr);
        }
        assert!(Instant::now() < deadline, "croupier ingest not ready within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `r` to a process in the background (it is killed before it answers).
fn send_in_background(r: &Signed, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let (headers, body) = (r.headers.clone(), r.body.clone());
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| {
            HttpClient::connect(addr).request("POST", "/api/ingest/events", &headers, body.as_bytes())
        });
    })
}

/// Waits until the fault set on the proxy has been applied.
fn wait_applied(proxy: &FaultProxy) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.fault_pending() {
        assert!(Instant::now() < deadline, "the request did not reach the fault");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// croupier killed (SIGKILL) with the append made and not answered, then killed with
/// the lease taken and the append not sent: a fresh process answers the first's retry
/// without an append (once the lease's hold after the append, three reply timeouts, is
/// over), and appends the second's once (after the lease).
fn lease4_croupier_killed_between_the_steps(driver: Driver) {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port);
    // Killed after the append, before its answer.
    let (first, addr) = ingest_process(&proxy.addr());
    proxy.on_next_reply("EXEC+XADD", Fault::Drop);
    let r1 = Signed::new(events(3));
    let client = send_in_background(&r1, addr);
    wait_applied(&proxy);
    drop(first);
    let _ = client.join();
    // Killed between the lease and the append.
    let (second, addr) = ingest_process(&proxy.addr());
    proxy.on_next_reply("EXEC", Fault::PassThenFreeze);
    let r2 = Signed::new(events(3));
    let client = send_in_background(&r2, addr);
    wait_applied(&proxy);
    drop(second);
    let _ = client.join();
    let f = Fixture::start_with_redis(driver, redis, |c| {
        c.server.shards = 1;
        c.redis.reply_timeout_ms = REPLY_TIMEOUT_MS;
        c.redis.ingest_protocol = IngestProtocol::Lease;
    });
    assert_eq!(xlen(&f.redis, "analytics:events"), 1, "the first's append ran, the second's did not");
    let a = r2.send(f.addr);
    assert_eq!((a.status, a.error_tag().as_str()), (503, "request_in_flight"), "{}", a.text());
    let seen = retry_until_accepted(f.addr, &r1, Duration::from_millis(2 * REPLY_TIMEOUT_MS + 1_500));
    assert!(seen.iter().all(|t| t == "request_in_flight"), "{seen:?}");
    assert_eq!(xlen(&f.redis, "analytics:events"), 1, "the first is not appended again");
    retry_until_accepted(f.addr, &r2, Duration::from_millis(LEASE_MS + 3_000));
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "the second appended once");
    for r in [&r1, &r2] {
        assert_eq!(r.send(f.addr).status, 202);
        let replay = r.replayed().send(f.addr);
        assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"));
    }
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}

/// Redis restarted (with its append-only file, so the nonces and leases outlive it)
/// between the lease and the append, then between the append and its reply.
fn lease5_redis_restarted_between_the_steps(driver: Driver) {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let proxy = FaultProxy::start(redis.port);
    let addr = proxy.addr();
    let mut f = Fixture::start_with_redis(driver, redis, |c| {
        c.server.shards = 1;
        c.redis.addr = addr;
        c.redis.reply_timeout_ms = REPLY_TIMEOUT_MS;
        c.redis.ingest_protocol = IngestProtocol::Lease;
    });
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    // Restarted with the lease taken, the append held in a partition.
    proxy.on_next_reply("EXEC", Fault::PassThenFreeze);
    let r1 = Signed::new(events(3));
    let client = send_in_background(&r1, f.addr);
    wait_applied(&proxy);
    f.redis.restart_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let _ = client.join();
    let seen = retry_until_accepted(f.addr, &r1, Duration::from_millis(LEASE_MS + 5_000));
    assert!(seen.iter().any(|t| t == "request_in_flight"), "the lease outlived the restart: {seen:?}");
    assert_eq!(xlen(&f.redis, "analytics:events"), 2, "appended once");
    // Restarted after the append, before its reply.
    proxy.on_next_reply("EXEC+XADD", Fault::Drop);
    let r2 = Signed::new(events(3));
    let client = send_in_background(&r2, f.addr);
    wait_applied(&proxy);
    f.redis.restart_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let _ = client.join();
    assert_eq!(xlen(&f.redis, "analytics:events"), 3, "the append outlived the restart");
    // The lease held three reply timeouts after the append (it outlived the restart too),
    // then the retry is answered without an append.
    let seen = retry_until_accepted(f.addr, &r2, Duration::from_secs(10));
    assert!(seen.iter().all(|t| t == "request_in_flight" || t == "redis_unavailable"), "{seen:?}");
    for r in [&r1, &r2] {
        assert_eq!(r.send(f.addr).status, 202);
        let replay = r.replayed().send(f.addr);
        assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"));
    }
    assert_eq!(xlen(&f.redis, "analytics:events"), 3);
}

/// `redis.ingest_protocol = "script"`: one transaction of plain `XADD`s and the checking
/// `EVAL`; a retry is answered 202 and another body is a replay, and what their
/// transactions appended is taken back within them: one entry in the stream.
fn lease6_the_script_protocol_stays_selectable(driver: Driver) {
    let f = Fixture::start(driver, |c| c.redis.ingest_protocol = IngestProtocol::Script);
    let r = Signed::new(events(3));
    for _ in 0..2 {
        assert_eq!(r.send(f.addr).status, 202);
    }
    let replay = r.replayed().send(f.addr);
    assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"));
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    // The script's nonce (the digest), no lease.
    let mut redis = f.redis.client();
    let key = format!("croupier:nonce:{GAME}:{}", r.nonce);
    assert_eq!(redis.int(&["STRLEN", &key]), 32);
    assert_eq!(redis.cmd(&["KEYS", "croupier:lease:*"]), croupier_protocol::resp::Frame::Array(vec![]));
    let stats = match redis.cmd(&["INFO", "commandstats"]) {
        croupier_protocol::resp::Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO reply {other:?}"),
    };
    let calls = |cmd: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Each request a transaction whose `XADD` is a command of its own (the archive never
    // passes through Lua). At least, not exactly: the connection's checks at connect and
    // the backlog's readings run scripts too.
    assert!(calls("exec") >= 3 && calls("xadd") >= 3 && calls("eval") >= 3, "{stats}");
    assert!(!stats.contains("cmdstat_pttl:"), "no lease: {stats}");
    // Three appends, and the duplicate's and the replay's deleted in their transactions.
    let info = match redis.cmd(&["XINFO", "STREAM", "analytics:events"]) {
        croupier_protocol::resp::Frame::Array(a) => a,
        other => panic!("XINFO reply {other:?}"),
    };
    let field = |name: &str| {
        info.chunks(2).find_map(|kv| match kv {
            [croupier_protocol::resp::Frame::BulkString(k), croupier_protocol::resp::Frame::Integer(v)]
                if k.as_slice() == name.as_bytes() =>
            {
                Some(*v)
            }
            _ => None,
        })
    };
    assert_eq!((field("length"), field("entries-added")), (Some(1), Some(3)), "{info:?}");
}

/// Black-box finding: under the lease protocol, a request appending to two streams whose
/// one key is made another type between the lease and the commit has its other entry left
/// appended (Redis does not roll a transaction back) while it is answered 503, and its
/// retry appends the request whole: that entry is there twice, with the same event ids
/// (ClickHouse keeps one row per id). Deleting it instead could delete what a worker has
/// read already, or what a retry answered 202 in between relies on (docs/ingest.md).
fn lease7_an_append_failing_in_the_commit_leaves_the_other_entry_and_its_retry_appends_the_same_ids(driver: Driver) {
    let (proxy, f) = through_proxy(driver, |c| {
        c.redis.ingest_protocol = IngestProtocol::Lease;
        // Room for the test's own steps while the commit is held.
        c.redis.reply_timeout_ms = 5_000;
    });
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    let (events_before, custom_before) = (xlen(&f.redis, "analytics:events"), xlen(&f.redis, "analytics:custom"));
    // A standard and a custom event: an entry on each stream.
    let body = format!("[{},{}]", crate::fixture::event("login", "a"), crate::fixture::event("boss_killed", "b"));
    let r = Signed::new(body);
    // The lease's reply passes, then the commit is held while the events key is broken.
    proxy.on_next_reply("EXEC", Fault::PassThenFreeze);
    let addr = f.addr;
    let (headers, bytes) = (r.headers.clone(), r.body.clone());
    let attempt = std::thread::spawn(move || {
        HttpClient::connect(addr).request("POST", "/api/ingest/events", &headers, bytes.as_bytes())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.fault_pending() {
        assert!(Instant::now() < deadline, "the lease transaction was not sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut redis = f.redis.client();
    let ok = croupier_protocol::resp::Frame::SimpleString(b"OK".to_vec());
    assert_eq!(redis.cmd(&["RENAME", "analytics:events", "kept:events"]), ok);
    assert_eq!(redis.int(&["LPUSH", "analytics:events", "not a stream"]), 1);
    proxy.thaw();
    let a = attempt.join().expect("attempt");
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(xlen(&f.redis, "analytics:custom"), custom_before + 1, "the custom entry stays");
    // Repaired: the retry appends the request whole.
    assert_eq!(redis.int(&["DEL", "analytics:events"]), 1);
    assert_eq!(redis.cmd(&["RENAME", "kept:events", "analytics:events"]), ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = r.send(f.addr);
        if a.status == 202 {
            assert_eq!(a.text(), r#"{"accepted":2}"#);
            break;
        }
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(Instant::now() < deadline, "not accepted again: {}", a.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (xlen(&f.redis, "analytics:events"), xlen(&f.redis, "analytics:custom")),
        (events_before + 1, custom_before + 2),
    );
    // The two custom entries hold the same event.
    let ids: Vec<Vec<[u8; 16]>> = croupier_it::redis::xrange(&mut redis, "analytics:custom")
        .iter()
        .skip(custom_before as usize)
        .map(|e| {
            let mut buf = croupier_protocol::batch::BatchBuf::default();
            let archived = buf.load(e.get("batch").expect("batch")).expect("archive");
            let croupier_protocol::batch::Records::Events(ev) =
                croupier_protocol::batch::to_owned(archived).expect("batch").records
            else {
                panic!("events")
            };
            ev.to_events().iter().map(|e| e.event_id).collect()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "the same event ids");
    // Answered as appended from now on, without another append.
    assert_eq!(r.send(f.addr).status, 202);
    assert_eq!(xlen(&f.redis, "analytics:custom"), custom_before + 2);
}

/// A request's commands after its lease go on the connection its lease ran on, or
/// nowhere (docs/ingest.md, "One server"): once that connection was replaced (here, killed
/// by the server; as after a restart or a failover), a command sent on the placement is
/// refused unsent, while the client's other commands go on the new connection.
#[test]
fn commands_sent_on_a_placement_run_on_its_connection_or_nowhere() {
    use croupier_dataplane::redis::connection::{RedisClient, RedisError};
    use croupier_protocol::resp::{self, Frame};
    let redis = RedisServer::start();
    let mut admin = redis.client();
    let addr = redis.addr();
    let set = |key: &str| {
        let mut cmd = Vec::new();
        resp::command(&mut cmd, &[b"SET", key.as_bytes(), b"1"]);
        cmd
    };
    let ok = || vec![Frame::SimpleString(b"OK".to_vec())];
    let driver = croupier_dataplane::runtime::resolve(Driver::Epoll).expect("epoll");
    croupier_dataplane::runtime::block_on(driver, async move {
        let client = RedisClient::spawn(addr, Duration::from_secs(1), Duration::from_secs(1));
        let up = |client: &RedisClient| client.is_up();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !up(&client) {
            assert!(Instant::now() < deadline, "not connected within 5 s");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let (frames, _, at) = client.call_group(set("p:lease"), 1, 0, "p:lease", false).await.expect("ran");
        assert_eq!(frames, ok());
        // The same connection: sent.
        assert_eq!(client.call_group_on(&at, set("p:same"), 1, false).await.map(|(f, _)| f), Ok(ok()));
        // The connection replaced: refused unsent.
        let epoch = client.epoch();
        let before = epoch.get();
        assert!(
            matches!(admin.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]), Frame::Integer(n) if n >= 1)
        );
        // An idle connection learns it was closed when next used: the client's other
        // commands fail until it has connected again, then go on the new connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(client.call_group(set("p:routed"), 1, 0, "p:routed", false).await, Ok((f, _, _)) if f == ok()) {
            assert!(Instant::now() < deadline, "not connected again within 5 s");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(epoch.get() > before && up(&client));
        assert_eq!(client.call_group_on(&at, set("p:after"), 1, false).await, Err(RedisError::Unavailable));
    })
    .expect("a runtime");
    let mut c = redis.client();
    for (key, there) in [("p:lease", 1), ("p:same", 1), ("p:after", 0), ("p:routed", 1)] {
        assert_eq!(c.cmd(&["EXISTS", key]), Frame::Integer(there), "{key}");
    }
}

/// Black-box finding: the lease key was the nonce key and `:lease:<hex>`, and a nonce may
/// hold both, so the request whose nonce was `n:lease:<hex of B's digest>` took the key
/// of nonce `n`'s lease for body B: sent first, it left (n, B) — a nonce never used —
/// answered 503 `request_in_flight` for the whole nonce window. Lease keys now live
/// under their own prefix: both requests are appended, each once.
fn lease8_a_nonce_that_spells_another_requests_lease_is_a_nonce_of_its_own(driver: Driver) {
    let f = Fixture::start(driver, |c| c.redis.ingest_protocol = IngestProtocol::Lease);
    let body = events(3);
    let digest = croupier_protocol::signature::body_sha256(body.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let nonce = fresh_nonce();
    let spelled = Signed::with_nonce(format!("{nonce}:lease:{hex}"), events(2));
    assert_eq!(spelled.send(f.addr).status, 202);
    let r = Signed::with_nonce(nonce, body);
    let a = r.send(f.addr);
    assert_eq!((a.status, a.error_tag()), (202, String::new()), "{}", a.text());
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
    // Each is its own request: sent again, answered 202 with nothing appended.
    assert_eq!(r.send(f.addr).status, 202);
    assert_eq!(spelled.send(f.addr).status, 202);
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}
