//! Every refusal: its status and error tag, nothing from the request reaches Redis, and
//! the connection stays usable where HTTP allows it.

use std::io::Write;
use std::time::Duration;

use croupier_control::config::Driver;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient, Reply};

use crate::fixture::{
    both_drivers, events, post_signed, total_entries, Fixture, GAME, OTHER_GAME, OTHER_SECRET, SECRET,
};

both_drivers!(auth_refusals, body_refusals, size_and_media_refusals, http_refusals, slow_client_gets_408);

/// Asserts `r` is the refusal `(status, tag)`, then that the same connection still
/// serves a valid request.
fn refused_then_usable(f: &Fixture, c: &mut HttpClient, r: Reply, status: u16, tag: &str) {
    assert_eq!((r.status, r.error_tag().as_str()), (status, tag), "{}", r.text());
    assert!(r.header("connection").is_none(), "connection kept open after {tag}");
    let before = total_entries(&f.redis);
    let ok = post_signed(c, "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
    assert_eq!(ok.status, 202, "connection unusable after {tag}: {}", ok.text());
    assert_eq!(total_entries(&f.redis), before + 1);
}

fn auth_refusals(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let body = events(2);
    let b = body.as_bytes();
    let mut c = f.client();

    let mut h = signed_headers(GAME, SECRET, b, now_secs(), &fresh_nonce());
    h[4].1 = crate::fixture::SECRET.chars().rev().collect(); // not the signature
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 401, "bad_signature");

    let h = signed_headers(GAME, "wrong-secret", b, now_secs(), &fresh_nonce());
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 401, "bad_signature");

    let h = signed_headers(GAME, SECRET, b, now_secs() - 301, &fresh_nonce());
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 401, "stale_timestamp");
    let h = signed_headers(GAME, SECRET, b, now_secs() + 301, &fresh_nonce());
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 401, "stale_timestamp");

    let h = signed_headers("nosuchgame", SECRET, b, now_secs(), &fresh_nonce());
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 401, "unknown_game");

    let h: Vec<_> = signed_headers(GAME, SECRET, b, now_secs(), &fresh_nonce()).into_iter().take(4).collect();
    let r = c.request("POST", "/api/ingest/events", &h, b);
    assert!(r.text().contains(r#""header":"X-Signature""#), "{}", r.text());
    refused_then_usable(&f, &mut c, r, 401, "missing_credentials");

    // Signed correctly by the other game, but the body claims g1.
    let r = post_signed(&mut c, "/api/ingest/events", OTHER_GAME, OTHER_SECRET, b);
    assert!(r.text().contains(r#""field":"game_id","index":0"#), "{}", r.text());
    refused_then_usable(&f, &mut c, r, 403, "game_mismatch");

    // A nonce used again with another body is a replay and adds nothing (the same body
    // again is the same request retried: 202 with nothing added, see retries.rs).
    let nonce = fresh_nonce();
    let h = signed_headers(GAME, SECRET, b, now_secs(), &nonce);
    let before = total_entries(&f.redis);
    assert_eq!(c.request("POST", "/api/ingest/events", &h, b).status, 202);
    let other = events(3);
    let h = signed_headers(GAME, SECRET, other.as_bytes(), now_secs(), &nonce);
    let r = c.request("POST", "/api/ingest/events", &h, other.as_bytes());
    assert_eq!(total_entries(&f.redis), before + 1);
    refused_then_usable(&f, &mut c, r, 401, "replayed_nonce");
    // A replay on another connection (likely another shard) is refused too.
    let r = f.client().request("POST", "/api/ingest/events", &h, other.as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (401, "replayed_nonce"));
}

fn body_refusals(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let mut c = f.client();
    let ts = now_secs();
    let deep_props = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"[{\"ts\":1,".to_vec(), "malformed_json", None),
        (b"not json".to_vec(), "malformed_json", None),
        (format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":7}}]"#).into_bytes(), "invalid_field", Some(r#""field":"event","index":0"#)),
        (br#"[{"ts":true,"game_id":"g1","env":"prod","event":"login"}]"#.to_vec(), "invalid_field", Some(r#""field":"ts""#)),
        (format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"login"}},{{"ts":{ts},"game_id":"g1","event":"login"}}]"#).into_bytes(), "invalid_field", Some(r#""field":"env","index":1"#)),
        (format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"login","country":"ZZ"}}]"#).into_bytes(), "invalid_field", Some(r#""field":"country""#)),
        (format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"login","event_id":"123"}}]"#).into_bytes(), "invalid_field", Some(r#""field":"event_id""#)),
        ([b"[{\"ts\":1795617749,\"game_id\":\"g1\",\"env\":\"\xc3\x28\",\"event\":\"login\"}]".as_slice()].concat(), "invalid_utf8", None),
        (format!("{}{}", "[".repeat(100), "]".repeat(100)).into_bytes(), "too_deep", None),
        (format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"login","props":{deep_props}}}]"#).into_bytes(), "too_deep", None),
        (b"[]".to_vec(), "invalid_batch", None),
        (br#"{"records":[]}"#.to_vec(), "invalid_batch", None),
    ];
    for (body, tag, detail) in cases {
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, &body);
        if let Some(d) = detail {
            assert!(r.text().contains(d), "{} lacks {d}", r.text());
        }
        refused_then_usable(&f, &mut c, r, 400, tag);
    }
    let bad_payment = format!(
        r#"[{{"ts":{ts},"game_id":"g1","env":"prod","user_id":"u","order_id":"o","amount_cents":0,"currency":"USD","status":"success"}}]"#
    );
    let r = post_signed(&mut c, "/api/ingest/payments", GAME, SECRET, bad_payment.as_bytes());
    assert!(r.text().contains(r#""field":"amount_cents""#), "{}", r.text());
    refused_then_usable(&f, &mut c, r, 400, "invalid_field");
    // A batch is refused whole: the valid first record did not land either.
    assert_eq!(crate::fixture::xlen(&f.redis, "analytics:payments"), 0);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("compress");
    enc.finish().expect("finish")
}

fn size_and_media_refusals(driver: Driver) {
    let f = Fixture::start(driver, |c| {
        c.server.max_body_bytes = 64 * 1024;
        c.server.max_decompressed_bytes = 256 * 1024;
    });
    let before = total_entries(&f.redis);

    // Too large as sent: refused from Content-Length, connection closed.
    let big = vec![b' '; 64 * 1024 + 1];
    let mut c = f.client();
    let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, &big);
    assert_eq!((r.status, r.error_tag().as_str()), (413, "payload_too_large"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed(Duration::from_secs(2)));

    // A gzip bomb: 2 KiB on the wire, 16 MiB inflated.
    let bomb = gzip(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let mut h = signed_headers(GAME, SECRET, &bomb, now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    let mut c = f.client();
    let r = c.request("POST", "/api/ingest/events", &h, &bomb);
    assert_eq!((r.status, r.error_tag().as_str()), (413, "payload_too_large"));

    let body = events(1);
    let b = body.as_bytes();
    let mut c = f.client();
    let mut h = signed_headers(GAME, SECRET, b, now_secs(), &fresh_nonce());
    h[0].1 = "text/plain".into();
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 415, "unsupported_media_type");
    let mut h = signed_headers(GAME, SECRET, b, now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "br".into()));
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 415, "unsupported_media_type");
    let h: Vec<_> = signed_headers(GAME, SECRET, b, now_secs(), &fresh_nonce()).into_iter().skip(1).collect();
    let r = c.request("POST", "/api/ingest/events", &h, b);
    refused_then_usable(&f, &mut c, r, 415, "unsupported_media_type");
    // Only the probes of refused_then_usable landed.
    assert_eq!(total_entries(&f.redis), before + 3);
}

fn http_refusals(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let mut c = f.client();
    let r = c.request("GET", "/api/ingest/events", &[], b"");
    assert_eq!(r.header("allow"), Some("POST"));
    refused_then_usable(&f, &mut c, r, 405, "method_not_allowed");
    let r = c.request("POST", "/nowhere", &[], b"{}");
    refused_then_usable(&f, &mut c, r, 404, "not_found");
    let r = c.request("DELETE", "/healthz", &[], b"");
    refused_then_usable(&f, &mut c, r, 405, "method_not_allowed");

    // Garbage instead of HTTP: 400 and closed.
    let mut c = f.client();
    c.send_raw(b"\x16\x03\x01 hello\r\n\r\n");
    let r = c.read_reply();
    assert_eq!((r.status, r.error_tag().as_str()), (400, "bad_request"));
    assert!(c.is_closed(Duration::from_secs(2)));
    // Request smuggling shape: both framings.
    let mut c = f.client();
    c.send_raw(b"POST /api/ingest/events HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(c.read_reply().status, 400);
    assert_eq!(total_entries(&f.redis), 3);
}

fn slow_client_gets_408(driver: Driver) {
    let f = Fixture::start(driver, |c| c.server.read_timeout_ms = 300);
    // Half a head, then silence.
    let mut c = f.client();
    c.send_raw(b"POST /api/ingest/events HTTP/1.1\r\nHost: t\r\n");
    let r = c.read_reply();
    assert_eq!((r.status, r.error_tag().as_str()), (408, "request_timeout"));
    assert!(c.is_closed(Duration::from_secs(2)));
    // A whole head, half a body, then silence.
    let body = events(3);
    let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let mut req = format!("POST /api/ingest/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in &h {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body[..body.len() / 2]);
    let mut c = f.client();
    c.send_raw(req.as_bytes());
    let r = c.read_reply();
    assert_eq!(r.status, 408);
    assert!(c.is_closed(Duration::from_secs(2)));
    assert_eq!(total_entries(&f.redis), 0);
}
