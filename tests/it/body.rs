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
    assert!(r.text().contains("body larger than 262144 bytes once decompressed"), "{}", r.text());

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

/// Posts `body` signed for `GAME` on a new connection, to `path`.
fn post(f: &Fixture, path: &str, body: &[u8]) -> croupier_it::http::Reply {
    crate::fixture::post_signed(&mut f.client(), path, GAME, SECRET, body)
}

#[test]
fn hostile4_pathological_batch_is_refused_with_the_records_limit() {
    let f = Fixture::start(Driver::Epoll, |_| {});
    // Just under 10 MiB (the default body limit) of `[0,0,...]` and `[{},{},...]`.
    for element in ["0", "{}"] {
        let n = ((10 << 20) - 2) / (element.len() + 1);
        let body = format!("[{}{element}]", format!("{element},").repeat(n - 1));
        let r = post(&f, "/api/ingest/events", body.as_bytes());
        assert_eq!((r.status, r.error_tag().as_str()), (400, "invalid_batch"), "{}", r.text());
        assert!(r.text().contains("more than 10000 records"), "{}", r.text());
    }
    assert_eq!(total_entries(&f.redis), 0);
    // The shard still serves.
    assert_eq!(post(&f, "/api/ingest/events", events(3).as_bytes()).status, 202);
}

#[test]
fn hostile6_lone_surrogates_are_refused_in_fields_and_props() {
    let f = Fixture::start(Driver::Epoll, |_| {});
    let ts = now_secs();
    for bad in [
        r#""user_id":"u\ud800u""#,
        r#""user_id":"u\udc00u""#,
        r#""props":{"k":"\ud800A"}"#,
        r#""props":{"k":"\uDFFF"}"#,
    ] {
        let body = format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"login",{bad}}}]"#);
        let r = post(&f, "/api/ingest/events", body.as_bytes());
        assert_eq!((r.status, r.error_tag().as_str()), (400, "malformed_json"), "{bad}: {}", r.text());
        assert!(r.text().contains("surrogate"), "{}", r.text());
    }
    assert_eq!(total_entries(&f.redis), 0);
    // A surrogate pair is one character and is accepted.
    let body = format!(r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"login","user_id":"\ud83c\udfb2"}}]"#);
    assert_eq!(post(&f, "/api/ingest/events", body.as_bytes()).status, 202);
}

#[test]
fn amount_cents_over_the_cap_is_refused_so_revenue_sums_cannot_wrap() {
    let f = Fixture::start(Driver::Epoll, |_| {});
    let ts = now_secs();
    let payment = |amount: &str| {
        format!(
            r#"[{{"ts":{ts},"game_id":"g1","env":"prod","user_id":"u","order_id":"o-{amount}","amount_cents":{amount},"currency":"USD","status":"success"}}]"#
        )
    };
    for bad in ["18446744073709551615", "9223372036854775808", "1000000000001"] {
        let r = post(&f, "/api/ingest/payments", payment(bad).as_bytes());
        assert_eq!((r.status, r.error_tag().as_str()), (400, "invalid_field"), "{bad}: {}", r.text());
        assert!(r.text().contains(r#""field":"amount_cents""#), "{}", r.text());
    }
    assert_eq!(total_entries(&f.redis), 0);
    assert_eq!(post(&f, "/api/ingest/payments", payment("1000000000000").as_bytes()).status, 202);
}

#[test]
fn hostile13_empty_country_counts_as_absent() {
    let f = Fixture::start(Driver::Epoll, |_| {});
    let body = format!(r#"[{{"ts":{},"game_id":"g1","env":"prod","event":"login","country":""}}]"#, now_secs());
    assert_eq!(post(&f, "/api/ingest/events", body.as_bytes()).status, 202);
}

const LIMITED: &str = "limited";
const LIMITED_SECRET: &str = "limited-secret";

fn limited_events(n: usize) -> String {
    events(n).replace(r#""game_id":"g1""#, &format!(r#""game_id":"{LIMITED}""#))
}

fn limited_fixture(shards: usize, eps: u64) -> Fixture {
    Fixture::start(Driver::Epoll, |c| {
        c.server.shards = shards;
        c.games.insert(
            LIMITED.into(),
            Game { secret: Some(LIMITED_SECRET.into()), rate_limit_eps: eps, ..Game::default() },
        );
    })
}

#[test]
fn m6_one_connection_gets_the_games_whole_rate_on_two_shards() {
    let f = limited_fixture(2, 10);
    let mut c = f.client();
    let post = |c: &mut croupier_it::http::HttpClient, n: usize| {
        crate::fixture::post_signed(c, "/api/ingest/events", LIMITED, LIMITED_SECRET, limited_events(n).as_bytes())
    };
    // 6 + 3 events within a second on one keep-alive connection (one shard): within the
    // game's 10 events/s, although more than a shard's half of it.
    assert_eq!(post(&mut c, 6).status, 202);
    let r = post(&mut c, 3);
    assert_eq!(r.status, 202, "{}", r.text());
    // The rate is the game's, whichever shard a connection lands on: new connections
    // (spread over both shards) find it spent.
    for _ in 0..4 {
        let r = post(&mut f.client(), 9);
        assert_eq!((r.status, r.error_tag().as_str()), (429, "rate_limited"), "{}", r.text());
    }
}

#[test]
fn m6_refused_requests_do_not_spend_the_rate() {
    let f = limited_fixture(1, 10);
    let body = limited_events(5);
    let nonce = fresh_nonce();
    let h = signed_headers(LIMITED, LIMITED_SECRET, body.as_bytes(), now_secs(), &nonce);
    let mut c = f.client();
    assert_eq!(c.request("POST", "/api/ingest/events", &h, body.as_bytes()).status, 202);
    // Replays (the nonce with another body) are refused 401 and take nothing from the
    // game's rate; nor does the same request sent again, answered 202 with nothing added ...
    let other = limited_events(4);
    let replay = signed_headers(LIMITED, LIMITED_SECRET, other.as_bytes(), now_secs(), &nonce);
    for _ in 0..3 {
        let r = c.request("POST", "/api/ingest/events", &replay, other.as_bytes());
        assert_eq!((r.status, r.error_tag().as_str()), (401, "replayed_nonce"), "{}", r.text());
        let r = c.request("POST", "/api/ingest/events", &h, body.as_bytes());
        assert_eq!((r.status, r.text()), (202, r#"{"accepted":5}"#.to_owned()));
    }
    // ... so the other half of the second's rate is still there.
    let r = crate::fixture::post_signed(&mut c, "/api/ingest/events", LIMITED, LIMITED_SECRET, body.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(total_entries(&f.redis), 2);
}
