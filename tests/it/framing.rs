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
    hostile9_content_length_is_digits_only,
    hostile10_head_size_limit_does_not_depend_on_segmentation,
    hostile11_absolute_form_target_routes_like_origin_form,
    hostile12_duplicate_credential_and_media_headers_are_refused,
    low_http10_keep_alive_answer_says_keep_alive,
    expect_continue_is_not_answered_for_a_refused_length_nor_to_http10,
    a_bare_lf_in_a_chunk_extension_or_trailer_is_refused_not_framed,
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

/// A request to `target` signed for `GAME` with a fresh batch, the head's lines edited
/// by `edit` (each `Name: value` without CRLF).
fn signed_raw(target: &str, edit: impl FnOnce(&mut Vec<String>)) -> Vec<u8> {
    let body = events(2);
    let mut lines = vec![format!("Content-Length: {}", body.len()), "Host: t".to_owned()];
    for (k, v) in signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce()) {
        lines.push(format!("{k}: {v}"));
    }
    edit(&mut lines);
    let mut req = format!("POST {target} HTTP/1.1\r\n");
    for l in lines {
        req.push_str(&l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

fn hostile9_content_length_is_digits_only(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    for bad in ["+{}", "-{}", "{} ,{}", "0x{}", "{}.0"] {
        let raw = signed_raw("/api/ingest/events", |lines| {
            let n = lines[0].trim_start_matches("Content-Length: ").to_owned();
            lines[0] = format!("Content-Length: {}", bad.replace("{}", &n));
        });
        let mut c = f.client();
        c.send_raw(&raw);
        let r = c.read_reply();
        assert_eq!((r.status, r.error_tag().as_str()), (400, "bad_request"), "{bad}: {}", r.text());
    }
    assert_eq!(total_entries(&f.redis), 0);
    // Digits, with the optional white space around the value, are fine.
    let mut c = f.client();
    c.send_raw(&signed_raw("/api/ingest/events", |lines| lines[0] = lines[0].replace(": ", ":  ")));
    assert_eq!(c.read_reply().status, 202);
}

fn hostile10_head_size_limit_does_not_depend_on_segmentation(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    for (filler, status) in [(30_000, 400), (15_000, 200)] {
        let raw = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Filler: {}\r\n\r\n", "a".repeat(filler));
        // In one write, and in writes of 1 KiB.
        let mut whole = f.client();
        whole.send_raw(raw.as_bytes());
        let mut pieces = f.client();
        for piece in raw.as_bytes().chunks(1024) {
            pieces.send_raw(piece);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for c in [&mut whole, &mut pieces] {
            let r = c.read_reply();
            assert_eq!(r.status, status, "head of {filler} bytes: {}", r.text());
            if status == 400 {
                assert!(r.text().contains("request head too large"), "{}", r.text());
            }
        }
    }
}

fn hostile11_absolute_form_target_routes_like_origin_form(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let target = format!("http://{}/api/ingest/events?x=1", f.addr);
    let mut c = f.client();
    c.send_raw(&signed_raw(&target, |_| {}));
    let r = c.read_reply();
    assert_eq!(r.status, 202, "{}", r.text());
    c.send_raw(b"GET HTTP://example.com/healthz HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(c.read_reply().status, 200);
    // An authority alone names no route.
    c.send_raw(b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(c.read_reply().status, 404);
    assert_eq!(total_entries(&f.redis), 1);
}

fn hostile12_duplicate_credential_and_media_headers_are_refused(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let names = ["X-Game-Id", "X-Timestamp", "X-Nonce", "X-Signature", "Content-Type", "Content-Encoding"];
    for name in names {
        let raw = signed_raw("/api/ingest/events", |lines| {
            // The same value twice (or `identity` twice): still refused, naming the header.
            let line =
                lines.iter().find(|l| l.starts_with(name)).cloned().unwrap_or_else(|| format!("{name}: identity"));
            if !lines.contains(&line) {
                lines.push(line.clone());
            }
            // The second one spelled in lower case: header names are case-insensitive.
            lines.push(format!("{}{}", name.to_ascii_lowercase(), &line[name.len()..]));
        });
        let mut c = f.client();
        c.send_raw(&raw);
        let r = c.read_reply();
        assert_eq!((r.status, r.error_tag().as_str()), (400, "bad_request"), "{name}: {}", r.text());
        assert!(r.text().contains(&format!(r#""header":"{name}""#)), "{}", r.text());
    }
    assert_eq!(total_entries(&f.redis), 0);
}

fn low_http10_keep_alive_answer_says_keep_alive(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let mut c = f.client();
    for _ in 0..2 {
        c.send_raw(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_reply();
        assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    }
    // Without it, HTTP/1.0 closes.
    c.send_raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = c.read_reply();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.is_closed(std::time::Duration::from_secs(2)));
}

/// Black-box finding: `Expect: 100-continue` was answered `100 Continue` for a head whose
/// declared length is refused already (then 413: the client was told to upload a body
/// that could only be refused), and to HTTP/1.0 clients, which cannot take an interim
/// answer (RFC 9110 10.1.1).
fn expect_continue_is_not_answered_for_a_refused_length_nor_to_http10(driver: Driver) {
    use std::io::Read;
    let f = Fixture::start(driver, |c| c.server.max_body_bytes = 64 * 1024);
    let head_of = |raw: &[u8]| {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        (raw[..end].to_vec(), raw[end..].to_vec())
    };
    let first_bytes = |s: &mut std::net::TcpStream| {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    };
    // Declared past `server.max_body_bytes`: 413 at once, no 100.
    let raw = signed_raw("/api/ingest/events", |lines| {
        lines[0] = "Content-Length: 5000000".to_owned();
        lines.push("Expect: 100-continue".to_owned());
    });
    let (head, _) = head_of(&raw);
    let mut s = std::net::TcpStream::connect(f.addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    s.write_all(&head).expect("head");
    let got = first_bytes(&mut s);
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
    // HTTP/1.0: no interim answer; the body sent after a pause is taken.
    let raw = signed_raw("/api/ingest/events", |lines| lines.push("Expect: 100-continue".to_owned()));
    let raw = String::from_utf8(raw).expect("text").replacen("HTTP/1.1", "HTTP/1.0", 1).into_bytes();
    let (head, body) = head_of(&raw);
    let mut s = std::net::TcpStream::connect(f.addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_millis(500))).expect("timeout");
    s.write_all(&head).expect("head");
    assert_eq!(first_bytes(&mut s), "", "nothing before the body");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    s.write_all(&body).expect("body");
    let got = first_bytes(&mut s);
    assert!(got.starts_with("HTTP/1.1 202"), "{got:?}");
    // HTTP/1.1 with a length within the limit still gets its 100 Continue.
    let raw = signed_raw("/api/ingest/events", |lines| lines.push("Expect: 100-continue".to_owned()));
    let (head, body) = head_of(&raw);
    let mut s = std::net::TcpStream::connect(f.addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    s.write_all(&head).expect("head");
    assert_eq!(first_bytes(&mut s), "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(&body).expect("body");
    assert!(first_bytes(&mut s).starts_with("HTTP/1.1 202"));
    assert_eq!(total_entries(&f.redis), 2);
}

fn a_bare_lf_in_a_chunk_extension_or_trailer_is_refused_not_framed(driver: Driver) {
    // A proxy ending lines at LF would see a smuggled request where we see one body.
    let f = Fixture::start(driver, |_| {});
    let body = events(1);
    for (framing, why) in [
        ("{n};ext=a\nGET /healthz HTTP/1.1\r\n{body}\r\n0\r\n\r\n", "control byte in a chunk extension"),
        ("{n}\r\n{body}\r\n0\r\nX: a\nGET /healthz HTTP/1.1\r\n\r\n", "malformed trailer field"),
        ("{n}\r\n{body}\r\n0\r\n\n", "malformed trailer field"),
    ] {
        let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
        let mut raw = chunked_head(&headers);
        raw.extend_from_slice(framing.replace("{n}", &format!("{:x}", body.len())).replace("{body}", &body).as_bytes());
        let mut c = f.client();
        c.send_raw(&raw);
        let r = c.read_reply();
        assert_eq!((r.status, r.error_tag().as_str()), (400, "bad_request"), "{framing:?}: {}", r.text());
        assert!(r.text().contains(why), "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(total_entries(&f.redis), 0);
}
