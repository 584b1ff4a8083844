//! Per-shard budgets before authentication: connections, request bodies in flight,
//! refused bodies drained without being kept, connection buffers given back after a
//! large request. Named after the finding they pin down (M2).

use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient};

use crate::fixture::{both_drivers, events, post_signed, total_entries, Fixture, GAME, SECRET};

both_drivers!(
    m2_connection_cap_closes_the_oldest_idle_connection_for_a_new_one,
    attack_slow_bodies_do_not_starve_the_data_port,
    attack_a_queue_of_slow_bodies_does_not_starve_the_data_port,
    m2_body_budget_refuses_with_503_while_spent,
    attack_declared_lengths_alone_do_not_spend_the_body_budget,
    m2_refused_bodies_are_drained_not_kept,
    m2_connection_buffers_shrink_after_a_large_request,
    m2_inflated_bodies_are_freed_before_the_wait_for_redis,
    attack_silent_connections_give_their_place_back_after_the_read_timeout,
);

/// One shard, so that every connection of a test shares its budgets.
fn one_shard(c: &mut Config) {
    c.server.shards = 1;
}

/// Black-box finding: at `server.max_connections` new connections waited until one
/// closed, so one host holding idle keep-alive connections (one `GET /healthz` each) kept
/// every other client out for `idle_timeout_ms`, again and again. At the cap the oldest
/// connection idle between requests is now closed for the new one, else the oldest that
/// sent part of a head; an upload whose body is arriving is never cut.
fn m2_connection_cap_closes_the_oldest_idle_connection_for_a_new_one(driver: Driver) {
    let f = Fixture::start(driver, |c| {
        one_shard(c);
        c.server.max_connections = 3;
        // Far longer than the test: it cannot pass by a connection timing out.
        c.server.idle_timeout_ms = 120_000;
        c.server.read_timeout_ms = 120_000;
    });
    // wait_ready's probes have closed. The oldest connection is an upload: its whole head
    // and its body but for the last bytes.
    let body = events(3).into_bytes();
    let (sent, rest) = body.split_at(body.len() - 16);
    let mut upload = f.client();
    upload.send_raw(&[signed_head(&body), sent.to_vec()].concat());
    std::thread::sleep(Duration::from_millis(100));
    // Two idle keep-alive connections take the other places.
    let mut first = f.client();
    let mut second = f.client();
    for c in [&mut first, &mut second] {
        assert_eq!(c.request("GET", "/healthz", &[], b"").status, 200);
    }
    // A fourth is served at once: the oldest idle connection made room, closed cleanly.
    let mut fourth = f.client();
    fourth.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = fourth.reply_within(Duration::from_secs(2)).expect("a new connection at the cap was served");
    assert_eq!(r.status, 200);
    assert!(first.is_closed(Duration::from_secs(2)), "the oldest idle connection was closed");
    assert_eq!(second.request("GET", "/healthz", &[], b"").status, 200);
    // The places: the upload, `second` and `fourth` (idle). Two holding part of a head,
    // newer than the upload, push both idle ones out, then each other: the upload stays.
    drop(second);
    drop(fourth);
    std::thread::sleep(Duration::from_millis(100));
    let mut partial: Vec<HttpClient> = (0..3)
        .map(|_| {
            let mut c = f.client();
            c.send_raw(b"GET /healthz HTTP/1.1\r\n");
            std::thread::sleep(Duration::from_millis(100));
            c
        })
        .collect();
    assert!(partial[0].is_closed(Duration::from_secs(2)), "the oldest partial head was closed for the newest");
    // The upload was never the one closed: it is answered, and stored.
    upload.send_raw(rest);
    assert_eq!(upload.reply_within(Duration::from_secs(2)).map(|r| r.status), Some(202));
    assert_eq!(total_entries(&f.redis), 1);
    partial.clear();
}

/// Black-box finding: requests whose whole head was in (a signed-looking head of a known
/// game, a refused one with a `Content-Length`) and whose body trickled a byte every half
/// second held every place until `read_timeout_ms`, with no credentials. With no
/// connection idle or reading a head, the oldest whose body is arriving is closed for the
/// new one (it was not acknowledged: nothing stored is lost).
fn attack_slow_bodies_do_not_starve_the_data_port(driver: Driver) {
    let f = two_places(driver);
    let mut slow: Vec<HttpClient> = (0..2)
        .map(|_| {
            let c = slow_body(&f);
            std::thread::sleep(Duration::from_millis(100));
            c
        })
        .collect();
    let mut probe = f.client();
    probe.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = probe.reply_within(Duration::from_secs(2)).expect("a new connection served at the cap");
    assert_eq!(r.status, 200);
    assert!(slow[0].is_closed(Duration::from_secs(2)), "the oldest slow body was closed");
    slow.clear();
}

/// One shard of two connection places and a read timeout of two minutes.
fn two_places(driver: Driver) -> Fixture {
    Fixture::start(driver, |c| {
        one_shard(c);
        c.server.max_connections = 2;
        c.server.read_timeout_ms = 120_000;
    })
}

/// A connection that sent a signed-looking head of a known game (a wrong signature) and
/// the first 10 bytes of its 4096-byte body, and nothing more.
fn slow_body(f: &Fixture) -> HttpClient {
    let body = padded_batch(4096);
    let mut c = f.client();
    let mut head = head(body.len(), vec![("X-Game-ID".into(), GAME.into()), ("X-Signature".into(), "0".repeat(64))]);
    head.extend_from_slice(&body[..10]);
    c.send_raw(&head);
    c
}

/// Black-box finding: slow bodies arriving faster than about ten a second kept the data
/// port from new clients (a probe waited 4–10 s behind them). At the cap each queued
/// connection was let in by closing another, and the one chosen was often the one let in
/// just before, whose request had already arrived: it went on, nothing was freed, and the
/// next place waited 100 ms. One chosen as its request arrives now stays and says so, and
/// another is chosen at once; one chosen while reading a body closes even as its bytes
/// arrive. Forty slow bodies queued ahead of a probe: it is served, and not after forty
/// such waits.
fn attack_a_queue_of_slow_bodies_does_not_starve_the_data_port(driver: Driver) {
    let f = two_places(driver);
    let mut slow: Vec<HttpClient> = (0..2).map(|_| slow_body(&f)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // Forty more wait in the listen queue, their requests sent.
    slow.extend((0..40).map(|_| slow_body(&f)));
    let mut probe = f.client();
    probe.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = probe.reply_within(Duration::from_secs(2)).expect("a new connection served behind the queue");
    assert_eq!(r.status, 200);
    slow.clear();
}

/// A connection that never sends a byte holds its place for `read_timeout_ms`, not for
/// `idle_timeout_ms` (meant for keep-alive connections between requests): silent sockets
/// at the cap kept every new client waiting for the idle timeout (60 s by default).
fn attack_silent_connections_give_their_place_back_after_the_read_timeout(driver: Driver) {
    let f = Fixture::start(driver, |c| {
        one_shard(c);
        c.server.max_connections = 2;
        c.server.read_timeout_ms = 300;
        c.server.idle_timeout_ms = 60_000;
    });
    let silent = [f.client(), f.client()];
    let mut client = f.client();
    client.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = client.reply_within(Duration::from_secs(10)).expect("answered once a silent connection was closed");
    assert_eq!(r.status, 200);
    drop(silent);
}

/// The head of an events request with a body of `len` bytes and `headers`.
fn head(len: usize, headers: Vec<(String, String)>) -> Vec<u8> {
    let mut req = format!("POST /api/ingest/events HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The head of a request whose body is `body`, signed for `GAME`.
fn signed_head(body: &[u8]) -> Vec<u8> {
    head(body.len(), signed_headers(GAME, SECRET, body, now_secs(), &fresh_nonce()))
}

/// A valid batch padded with spaces to exactly `len` bytes.
fn padded_batch(len: usize) -> Vec<u8> {
    let mut b = events(2).into_bytes();
    assert!(b.len() <= len);
    b.resize(len, b' ');
    b
}

fn m2_body_budget_refuses_with_503_while_spent(driver: Driver) {
    let f = Fixture::start(driver, |c| {
        one_shard(c);
        c.server.max_body_bytes = 64 << 10;
        c.server.max_inflight_body_bytes = 128 << 10;
    });
    // Two requests at the body limit, each sent but for its last bytes: the budget is
    // spent (bodies count as their bytes arrive, not as their heads declare).
    let body = padded_batch(64 << 10);
    let (half, rest) = body.split_at(body.len() - 16);
    let mut slow: Vec<HttpClient> = (0..2).map(|_| f.client()).collect();
    for c in &mut slow {
        c.send_raw(&[signed_head(&body), half.to_vec()].concat());
    }
    // Both are read (and counted) before the first probe: a probe counted while the
    // second was still arriving would leave that one no room (it is the one refused, 503,
    // and the probes then fit beside the first).
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let r = post_signed(&mut f.client(), "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 202, "{}", r.text());
        assert!(Instant::now() < deadline, "a request was taken beyond the body budget");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.error_tag(), "server_busy", "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("connection"), Some("close"));
    let before = total_entries(&f.redis);
    // The two finish and are accepted; then there is room again.
    for c in &mut slow {
        c.send_raw(rest);
        assert_eq!(c.read_reply().status, 202);
    }
    let r = post_signed(&mut f.client(), "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(total_entries(&f.redis), before + 3);
}

/// Heads that declare bodies at the limit and send a byte of them (an unauthenticated
/// client: the signature is over the body, checked once it arrived) do not spend the
/// budget: other clients' requests are still taken. Before, 2 such heads refused every
/// signed request with 503 until the read timeout.
fn attack_declared_lengths_alone_do_not_spend_the_body_budget(driver: Driver) {
    let f = Fixture::start(driver, |c| {
        one_shard(c);
        c.server.max_body_bytes = 64 << 10;
        c.server.max_inflight_body_bytes = 128 << 10;
    });
    let body = padded_batch(64 << 10);
    let mut idle: Vec<HttpClient> = (0..8).map(|_| f.client()).collect();
    for c in &mut idle {
        c.send_raw(&[signed_head(&body), body[..1].to_vec()].concat());
    }
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        let r = post_signed(&mut f.client(), "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
}

/// Resident memory of this process (the shards run in it), in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

/// Connections that each sent one large request; kept open while memory is measured.
const CONNECTIONS: usize = 32;
const LARGE: usize = 8 << 20;
/// Growth of resident memory allowed for all of them together (they would keep
/// `CONNECTIONS * LARGE` = 256 MiB if each kept its body).
const ALLOWED_GROWTH: usize = 64 << 20;

fn m2_refused_bodies_are_drained_not_kept(driver: Driver) {
    let f = Fixture::start(driver, one_shard);
    let body = vec![b' '; LARGE];
    // Refused from the head (no such game): the body is read past, not kept.
    let head = head(LARGE, signed_headers("nosuchgame", SECRET, &body, now_secs(), &fresh_nonce()));
    let mut open = Vec::new();
    let before = rss();
    for _ in 0..CONNECTIONS {
        let mut c = f.client();
        c.send_raw(&head);
        c.send_raw(&body);
        let r = c.read_reply();
        assert_eq!((r.status, r.error_tag().as_str()), (401, "unknown_game"));
        open.push(c);
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < ALLOWED_GROWTH, "refused bodies kept: {} MiB more resident", grown >> 20);
    // The connections are still usable.
    assert_eq!(post_signed(&mut open[0], "/api/ingest/events", GAME, SECRET, events(1).as_bytes()).status, 202);
}

fn m2_connection_buffers_shrink_after_a_large_request(driver: Driver) {
    let f = Fixture::start(driver, one_shard);
    let body = vec![b' '; LARGE];
    let mut open = Vec::new();
    let before = rss();
    for _ in 0..CONNECTIONS {
        // Read in full, then refused: signed for other bytes.
        let mut c = f.client();
        c.send_raw(&head(LARGE, signed_headers(GAME, SECRET, b"other bytes", now_secs(), &fresh_nonce())));
        c.send_raw(&body);
        let r = c.read_reply();
        assert_eq!((r.status, r.error_tag().as_str()), (401, "bad_signature"), "{}", r.text());
        open.push(c);
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < ALLOWED_GROWTH, "buffers kept after large requests: {} MiB more resident", grown >> 20);
    assert_eq!(post_signed(&mut open[0], "/api/ingest/events", GAME, SECRET, events(1).as_bytes()).status, 202);
}

/// Requests whose small gzip bodies inflate to 4 MiB each, all waiting for a frozen
/// Redis: the inflated copies (outside the body budget, which counts bodies as sent) are
/// freed once their records are staged, not held while the appends wait. Before, each
/// waiting request held its inflated body: 16 × 4 MiB more resident (144–148 MiB grown
/// here; 20–33 MiB since, the most under a loaded machine).
fn m2_inflated_bodies_are_freed_before_the_wait_for_redis(driver: Driver) {
    const WAITING: usize = 16;
    const ALLOWED: usize = 48 << 20;
    let f = Fixture::start(driver, |c| {
        one_shard(c);
        // Inflating the bodies in a debug build takes seconds; Redis is not given up on.
        c.redis.reply_timeout_ms = 30_000;
    });
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &padded_batch(4 << 20)).expect("compress");
    let gz = enc.finish().expect("gzip");
    let pid = f.redis.pid().expect("redis-server's pid").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    let before = rss();
    signal("-STOP");
    let mut open = Vec::new();
    for _ in 0..WAITING {
        let mut h = signed_headers(GAME, SECRET, &gz, now_secs(), &fresh_nonce());
        h.push(("Content-Encoding".into(), "gzip".into()));
        let mut c = f.client();
        c.send_raw(&[head(gz.len(), h), gz.clone()].concat());
        open.push(c);
    }
    // Inflated, parsed and staged.
    std::thread::sleep(Duration::from_secs(4));
    let grown = rss().saturating_sub(before);
    signal("-CONT");
    for c in &mut open {
        let r = c.read_reply();
        assert_eq!(r.status, 202, "{}", r.text());
    }
    assert!(grown < ALLOWED, "inflated bodies held while Redis was waited for: {} MiB more resident", grown >> 20);
    assert_eq!(total_entries(&f.redis), WAITING as i64);
}
