//! What ingest does with a body before Redis: decompression only after a signature
//! matched, bounded parse work, string escapes, field bounds, and the game's rate limit
//! across shards. Named after the hardening findings they pin down.

use std::io::Write;

use croupier_control::config::{Driver, Game};
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};

use crate::fixture::{events, total_entries, Fixture, GAME, SECRET};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("compress");
    enc.finish().expect("finish")
}

/// A game that signs its JSON before compressing it (opted in).
const LATE_SIGNER: &str = "late-signer";
const LATE_SECRET: &str = "late-secret";

fn with_late_signer(c: &mut croupier_control::config::Config) {
    c.games.insert(
        LATE_SIGNER.into(),
        Game { secret: Some(LATE_SECRET.into()), gzip_signed_after: true, ..Game::default() },
    );
}

#[test]
fn m2_hostile3_gzip_is_inflated_only_after_its_signature_matched() {
    let f = Fixture::start(Driver::Epoll, |c| {
        c.server.max_body_bytes = 64 * 1024;
        c.server.max_decompressed_bytes = 256 * 1024;
        with_late_signer(c);
    });
    // A gzip bomb (16 MiB inflated) with a wrong signature: refused for the signature,
    // so it was never inflated (inflating it would have answered 413).
    let bomb = gzip(&vec![b' '; 16 << 20]);
    let mut h = signed_headers(GAME, "not-the-secret", &bomb, now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    let r = f.client().request("POST", "/api/ingest/events", &h, &bomb);
    assert_eq!((r.status, r.error_tag().as_str()), (401, "bad_signature"), "{}", r.text());
    // Signed over the bytes sent, the same bomb is inflated and refused for its size.
    let mut h = signed_headers(GAME, SECRET, &bomb, now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    let r = f.client().request("POST", "/api/ingest/events", &h, &bomb);
    assert_eq!((r.status, r.error_tag().as_str()), (413, "payload_too_large"), "{}", r.text());

    // By default a gzip body signed over its decompressed JSON is refused ...
    let plain = events(5);
    let gz = gzip(plain.as_bytes());
    let mut h = signed_headers(GAME, SECRET, plain.as_bytes(), now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    let r = f.client().request("POST", "/api/ingest/events", &h, &gz);
    assert_eq!((r.status, r.error_tag().as_str()), (401, "bad_signature"), "{}", r.text());
    assert_eq!(total_entries(&f.redis), 0);
    // ... and accepted for a game that opted in (`gzip_signed_after = true`).
    let late = plain.replace(r#""game_id":"g1""#, &format!(r#""game_id":"{LATE_SIGNER}""#));
    let gz = gzip(late.as_bytes());
    let mut h = signed_headers(LATE_SIGNER, LATE_SECRET, late.as_bytes(), now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    let r = f.client().request("POST", "/api/ingest/events", &h, &gz);
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":5}"#.to_owned()));
    // That game's gzip signed over the bytes sent is accepted too.
    let mut h = signed_headers(LATE_SIGNER, LATE_SECRET, &gz, now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    assert_eq!(f.client().request("POST", "/api/ingest/events", &h, &gz).status, 202);
    assert_eq!(total_entries(&f.redis), 2);
}
