//! HTTP framing under hostile input: chunk sizes, chunk lines, bodies where none is
//! expected, header syntax. Each test is named after the finding it pins down.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use croupier_control::config::Driver;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, Reply};

use crate::fixture::{both_drivers, events, total_entries, Fixture, GAME, SECRET};

both_drivers!(
    c1_chunk_size_near_u64_max_is_refused_not_a_panic,
    c5_chunk_line_with_a_50_mib_extension_is_refused_at_once,
    c5_tiny_chunks_with_huge_extensions_cannot_exceed_max_body_bytes_on_the_wire,
    m1_a_body_on_a_health_route_is_discarded_not_run_as_the_next_request,
);

/// Connections opened per check: enough that every shard of the fixture gets some
/// (the kernel spreads connections over the SO_REUSEPORT group by hash).
const SPREAD: usize = 16;

/// Every shard still answers `/healthz` on new connections.
fn every_shard_answers(f: &Fixture) {
    for _ in 0..SPREAD {
        let r = f.client().request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn c1_chunk_size_near_u64_max_is_refused_not_a_panic(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    // The 80 bytes of the finding: no credentials, a route that does not exist.
    let poison: &[u8] =
        b"POST /anything HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nFFFFFFFFFFFFFFFE\r\n";
    for _ in 0..SPREAD {
        let mut c = f.client();
        c.send_raw(poison);
        let r = c.try_read_reply().expect("an answer, not a dead shard");
        assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    }
    every_shard_answers(&f);
}

/// Sends `head`, then `body` from another thread while waiting for the answer; the
/// writer stops once the answer is in (or the server closed). Returns the answer.
fn send_while_reading(f: &Fixture, head: &[u8], body: impl Iterator<Item = Vec<u8>> + Send + 'static) -> Option<Reply> {
    let mut c = f.client();
    c.send_raw(head);
    let done = Arc::new(AtomicBool::new(false));
    let mut w = c.writer();
    let stop = done.clone();
    let writer = std::thread::spawn(move || {
        for piece in body {
            if stop.load(Ordering::Relaxed) || w.write_all(&piece).is_err() {
                return;
            }
        }
    });
    let r = c.try_read_reply();
    done.store(true, Ordering::Relaxed);
    let _ = writer.join();
    r
}

/// The head of a chunked POST to the events route with `headers`.
fn chunked_head(headers: &[(String, String)]) -> Vec<u8> {
    let mut req = String::from("POST /api/ingest/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

fn c5_chunk_line_with_a_50_mib_extension_is_refused_at_once(driver: Driver) {
    // A read timeout longer than the client waits: only a limit on the line can answer.
    let f = Fixture::start(driver, |c| c.server.read_timeout_ms = 60_000);
    let body = events(1);
    let credentialed = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let anonymous = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    for headers in [credentialed, anonymous] {
        // `1;aaaa…` for 50 MiB, never ending the line.
        let pieces = std::iter::once(b"1;".to_vec()).chain(std::iter::repeat_n(vec![b'a'; 64 << 10], 800));
        let r = send_while_reading(&f, &chunked_head(&headers), pieces).expect("an answer before the read timeout");
        assert!(matches!(r.status, 400 | 413), "{} {}", r.status, r.text());
        assert_eq!(r.header("connection"), Some("close"));
    }
    every_shard_answers(&f);
    assert_eq!(total_entries(&f.redis), 0);
}

fn c5_tiny_chunks_with_huge_extensions_cannot_exceed_max_body_bytes_on_the_wire(driver: Driver) {
    let f = Fixture::start(driver, |c| c.server.max_body_bytes = 64 << 10);
    // A valid signed batch of ~150 bytes, one byte per chunk, each chunk line carrying an
    // extension of 4000 bytes: ~600 KB on the wire for a body far under the limit.
    let body = events(1);
    let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let ext = "e".repeat(4000);
    let pieces: Vec<Vec<u8>> = body
        .as_bytes()
        .iter()
        .map(|b| [format!("1;{ext}\r\n").as_bytes(), &[*b], b"\r\n"].concat())
        .chain(std::iter::once(b"0\r\n\r\n".to_vec()))
        .collect();
    assert!(pieces.iter().map(Vec::len).sum::<usize>() > 4 * (64 << 10));
    let r = send_while_reading(&f, &chunked_head(&headers), pieces.into_iter()).expect("an answer");
    assert_eq!((r.status, r.error_tag().as_str()), (413, "payload_too_large"), "{}", r.text());
    assert_eq!(total_entries(&f.redis), 0);
}

fn m1_a_body_on_a_health_route_is_discarded_not_run_as_the_next_request(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let smuggled = b"GET /smuggled-path HTTP/1.1\r\nHost: x\r\n\r\n";
    for path in ["/healthz", "/readyz"] {
        let mut c = f.client();
        // Content-Length framing, then chunked framing, each followed by a real request.
        let mut raw =
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", smuggled.len()).into_bytes();
        raw.extend_from_slice(smuggled);
        raw.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        raw.extend_from_slice(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
        );
        raw.extend_from_slice(format!("{:x}\r\n", smuggled.len()).as_bytes());
        raw.extend_from_slice(smuggled);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        raw.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send_raw(&raw);
        // One answer per request sent: the smuggled one is a body, never answered.
        for _ in 0..4 {
            let r = c.read_reply();
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
        let r = c.request("GET", "/healthz", &[], b"");
        assert_eq!((r.status, r.text()), (200, r#"{"status":"ok"}"#.to_owned()), "{path}");
    }
}
