//! `deploy/nginx/nginx.conf` as shipped (only its addresses changed), in front of a real
//! croupier: a request that fails on one replica is sent to the other, as docs/deploy.md
//! says.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use croupier_control::config::Driver;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient};
use croupier_it::nginx::Nginx;

use crate::fixture::{events, total_entries, Fixture, GAME, SECRET};

/// How the broken replica fails each request it is sent.
#[derive(Clone, Copy)]
enum Broken {
    /// Reads the request and answers 502.
    Answers502,
    /// Reads the request and closes the connection without a word (a crash).
    Closes,
}

/// A replica that fails every request, counting them.
fn broken_replica(how: Broken) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                let mut buf = vec![0u8; 1 << 20];
                // Whatever arrives within the timeout is the request (head and body).
                let mut got = 0;
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                if got == 0 {
                    return;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Broken::Answers502 = how {
                    let _ = conn
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfake");
                }
            });
        }
    });
    (addr, seen)
}

/// Through the shipped nginx, with one replica answering 502 (or closing the connection
/// without an answer) to every request: small and large signed requests are all answered
/// 202, by the other replica, each stored once (a black-box finding: with
/// `proxy_request_buffering off` nginx could not send a body it had passed on again, and
/// the client got the 502).
#[test]
fn nginx_sends_a_request_a_replica_failed_to_the_other() {
    for how in [Broken::Answers502, Broken::Closes] {
        let f = Fixture::start(Driver::Epoll, |_| {});
        let (broken, seen) = broken_replica(how);
        let lb = Nginx::start(broken, f.addr);
        for (i, n) in [1usize, 2, 2000, 3, 2500, 4].into_iter().enumerate() {
            let body = events(n);
            let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
            // Some bodies past nginx's 128 KiB in memory: sent on from its temporary file.
            assert!(n < 2000 || body.len() > 128 << 10, "{} bytes", body.len());
            let r = HttpClient::connect(lb.addr).request("POST", "/api/ingest/events", &h, body.as_bytes());
            assert_eq!(r.status, 202, "request {i} ({} bytes): {}", body.len(), r.text());
        }
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the broken replica was tried");
        assert_eq!(total_entries(&f.redis), 6, "each request stored once");
    }
}
