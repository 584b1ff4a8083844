//! Graceful shutdown of the ingest shards: the listener closes at once, keep-alive
//! connections get `Connection: close` on their next answer, idle ones are closed, and
//! every request written before the close gets its answer.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::Driver;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};

use crate::fixture::{both_drivers, events, total_entries, Fixture, GAME, SECRET};

both_drivers!(
    m3_hostile7_keep_alive_clients_get_every_answer_and_a_close_on_shutdown,
    m3_shutdown_closes_the_listener_and_idle_connections_and_finishes_the_request_in_progress,
);

/// A signed events request of `n` events, as raw bytes.
fn signed_request(n: usize) -> Vec<u8> {
    let body = events(n);
    let mut req = format!("POST /api/ingest/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce()) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct Seen {
    accepted: usize,
    /// A request was written and the connection ended without its answer.
    unanswered: bool,
    /// The last answer said `Connection: close` and the server then closed.
    closed_cleanly: bool,
}

fn m3_hostile7_keep_alive_clients_get_every_answer_and_a_close_on_shutdown(driver: Driver) {
    let mut f = Fixture::start(driver, |_| {});
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut c = f.client();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                loop {
                    c.send_raw(&signed_request(2));
                    sent.fetch_add(1, Ordering::Relaxed);
                    let Some(r) = c.try_read_reply() else {
                        seen.unanswered = true;
                        return seen;
                    };
                    assert_eq!(r.status, 202, "{}", r.text());
                    seen.accepted += 1;
                    if r.header("connection") == Some("close") {
                        seen.closed_cleanly = c.is_closed(Duration::from_secs(5));
                        return seen;
                    }
                }
            })
        })
        .collect();
    // Shut down with every client busy.
    while sent.load(Ordering::Relaxed) < 40 {
        std::thread::sleep(Duration::from_millis(5));
    }
    f.ingest.take().expect("running").shutdown();
    let mut accepted = 0;
    for c in clients {
        let seen = c.join().expect("client");
        assert!(!seen.unanswered, "a request written before the close got no answer: {seen:?}");
        assert!(seen.closed_cleanly, "{seen:?}");
        accepted += seen.accepted;
    }
    // Every 202 is one entry in Redis, and nothing else landed.
    assert_eq!(total_entries(&f.redis), accepted as i64);
}

fn m3_shutdown_closes_the_listener_and_idle_connections_and_finishes_the_request_in_progress(driver: Driver) {
    let mut f = Fixture::start(driver, |c| c.server.read_timeout_ms = 30_000);
    // An idle keep-alive connection, and one with half a request sent.
    let mut idle = f.client();
    assert_eq!(idle.request("GET", "/healthz", &[], b"").status, 200);
    let request = signed_request(3);
    let (first, rest) = request.split_at(request.len() - 20);
    let mut busy = f.client();
    busy.send_raw(first);
    std::thread::sleep(Duration::from_millis(100));

    let ingest = f.ingest.take().expect("running");
    let stopping = Arc::new(AtomicBool::new(true));
    let done = stopping.clone();
    let shutdown = std::thread::spawn(move || {
        ingest.shutdown();
        done.store(false, Ordering::Relaxed);
    });
    // New connections are refused (no listener left), while the request is in progress.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(f.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections while stopping");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(idle.is_closed(Duration::from_secs(5)), "the idle connection was not closed");
    assert!(stopping.load(Ordering::Relaxed), "shutdown did not wait for the request in progress");
    // The request in progress is finished and answered, with the close.
    busy.send_raw(rest);
    let r = busy.read_reply();
    assert_eq!((r.status, r.header("connection")), (202, Some("close")), "{}", r.text());
    assert!(busy.is_closed(Duration::from_secs(5)));
    shutdown.join().expect("shutdown");
    assert_eq!(total_entries(&f.redis), 1);
}
