//! Client ingest (`/api/analytics/ingest`, `/api/analytics/payments/ingest`) against
//! real servers: both body shapes and the header scope into ClickHouse, bearer tokens
//! and public write keys, their rate limits, CORS, a `sendBeacon` body, and the games'
//! filters (allow-list dropped or refused, payments off, sampling).

use std::time::Duration;

use croupier_control::config::{Config, Driver, FilteredEvents};
use croupier_it::http::{now_secs, HttpClient, Reply};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::fixture::{xlen, Fixture, GAME, OTHER_GAME};
use crate::pipeline::Pipeline;

const EVENTS: &str = "/api/analytics/ingest";
const PAYMENTS: &str = "/api/analytics/payments/ingest";
const JWT_SECRET: &str = "client-ingest-jwt-secret";
/// A write key of `GAME`, and one of `OTHER_GAME`.
const KEY: &str = "pk_test_game_one_0001";
const OTHER_KEY: &str = "pk_test_game_two_0001";
const REVOKED: &str = "pk_test_game_one_old1";
const PAGE: &str = "http://127.0.0.1:5555";

fn keys(c: &mut Config) {
    c.api.jwt_secret = JWT_SECRET.into();
    let g = c.games.get_mut(GAME).expect("g1");
    g.write_keys = vec![KEY.into()];
    g.revoked_write_keys = vec![REVOKED.into()];
    g.allowed_origins = vec![PAGE.into()];
    g.public_payments = true;
    c.games.get_mut(OTHER_GAME).expect("g2").write_keys = vec![OTHER_KEY.into()];
}

fn token(roles: &[&str], exp_in: i64, games: Option<&[&str]>) -> String {
    let mut claims = json!({"sub": "producer", "roles": roles, "exp": now_secs() + exp_in});
    if let Some(g) = games {
        claims["games"] = json!(g);
    }
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes()).expect("key");
    encode(&Header::new(Algorithm::HS256), &claims, &key).expect("token")
}

fn post(f: &Fixture, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut h: Vec<(String, String)> = vec![("Content-Type".into(), "application/json".into())];
    for (k, v) in headers {
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        h.push(((*k).to_owned(), (*v).to_owned()));
    }
    HttpClient::connect(f.addr).request("POST", target, &h, body.as_bytes())
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// `n` events without game or env (the headers fill them), users `{run}-{i}`.
fn bare(run: &str, n: usize, name: &str) -> String {
    let items: Vec<String> =
        (0..n).map(|i| format!(r#"{{"ts":{},"event":"{name}","user_id":"{run}-{i}"}}"#, now_secs())).collect();
    format!("[{}]", items.join(","))
}

fn ok(r: &Reply, accepted: usize, dropped: usize) {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!((r.status, body), (202, json!({"ok": true, "accepted": accepted, "dropped": dropped})), "{}", r.text());
}

fn refused(r: &Reply, status: u16, tag: &str) {
    assert_eq!((r.status, r.error_tag().as_str()), (status, tag), "{}", r.text());
}

fn run_id() -> String {
    format!(
        "c{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

#[test]
fn client_ingest_body_shapes_and_header_scope_land_in_clickhouse() {
    let mut p = Pipeline::start_with(&[], keys);
    p.start_worker(&[]);
    let f = &p.ingest;
    let run = run_id();
    let admin = token(&["admin"], 3600, None);
    // A bare array with a write key: game and env from the headers.
    let r = post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "staging")], &bare(&format!("{run}-a"), 3, "login"));
    ok(&r, 3, 0);
    // {"events":[...]} with a token: X-Game-ID fills the game, the record's env stays.
    let body = format!(
        r#"{{"events":[{{"ts":{},"env":"prod","event":"level_start","user_id":"{run}-b0","props":{{"level":3}}}}]}}"#,
        now_secs()
    );
    ok(&post(f, EVENTS, &[("Authorization", &bearer(&admin)), ("X-Game-ID", GAME)], &body), 1, 0);
    // A token without X-Game-ID: the records name their game.
    let body = format!(
        r#"[{{"ts":{},"game_id":"{OTHER_GAME}","env":"prod","event":"login","user_id":"{run}-c0"}}]"#,
        now_secs()
    );
    ok(&post(f, EVENTS, &[("Authorization", &bearer(&admin))], &body), 1, 0);
    // sendBeacon: text/plain, the key in the query, no other header (the records carry
    // their env; the key's game fills game_id).
    let beacon = format!(
        r#"[{{"ts":{t},"env":"beta","event":"session_end","user_id":"{run}-d0"}},{{"ts":{t},"env":"beta","event":"session_end","user_id":"{run}-d1"}}]"#,
        t = now_secs()
    );
    let target = format!("{EVENTS}?key={KEY}");
    ok(&post(f, &target, &[("Content-Type", "text/plain;charset=UTF-8")], &beacon), 2, 0);
    // The same beacon again (a retry): answered alike, stored once.
    ok(&post(f, &target, &[("Content-Type", "text/plain;charset=UTF-8")], &beacon), 2, 0);
    // A payment with the token, env from X-Env.
    let pay = format!(
        r#"[{{"ts":{},"user_id":"{run}-p","order_id":"{run}-o1","amount_cents":499,"currency":"USD","status":"success"}}]"#,
        now_secs()
    );
    ok(&post(f, PAYMENTS, &[("Authorization", &bearer(&admin)), ("X-Game-ID", GAME), ("X-Env", "prod")], &pay), 1, 0);
    // The same bytes valid as an event and as a payment, sent to both routes: two
    // requests, both stored (the retry window must not take one for the other).
    let both = format!(
        r#"[{{"ts":{},"event":"purchase","user_id":"{run}-q","order_id":"{run}-o2","amount_cents":299,"currency":"USD","status":"success"}}]"#,
        now_secs()
    );
    let scope = [("Authorization", bearer(&admin)), ("X-Game-ID", GAME.to_owned()), ("X-Env", "prod".to_owned())];
    let scope: Vec<(&str, &str)> = scope.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ok(&post(f, EVENTS, &scope, &both), 1, 0);
    ok(&post(f, PAYMENTS, &scope, &both), 1, 0);
    // X-Env fills every record: it is held to a field's 256 bytes.
    let r = post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", &"e".repeat(257))], &bare(&run, 2, "login"));
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!((r.status, v["field"].as_str()), (400, Some("env")), "{}", r.text());

    p.wait_for(8, "client events stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.events WHERE user_id LIKE '{run}-%'"))
    });
    let got = p.clickhouse.query(&format!(
        "SELECT game_id, env, event, user_id, props_json FROM analytics.events WHERE user_id LIKE '{run}-%' ORDER BY user_id"
    ));
    let want: Vec<String> = [
        (GAME, "staging", "login", "a-0", "{}"),
        (GAME, "staging", "login", "a-1", "{}"),
        (GAME, "staging", "login", "a-2", "{}"),
        (GAME, "prod", "level_start", "b0", r#"{"level":3}"#),
        (OTHER_GAME, "prod", "login", "c0", "{}"),
        (GAME, "beta", "session_end", "d0", "{}"),
        (GAME, "beta", "session_end", "d1", "{}"),
        (GAME, "prod", "purchase", "q", "{}"),
    ]
    .iter()
    .map(|(g, e, n, u, props)| format!("{g}\t{e}\t{n}\t{run}-{u}\t{props}"))
    .collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    p.wait_for(1, "client payment stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.payments WHERE order_id = '{run}-o1' AND env = 'prod' AND game_id = '{GAME}' AND amount_cents = 499"))
    });
    p.wait_for(1, "the payment sent to both routes stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.payments WHERE order_id = '{run}-o2' AND amount_cents = 299"))
    });
}

#[test]
fn client_ingest_tokens_and_write_keys() {
    let f = Fixture::start(Driver::Epoll, keys);
    let run = run_id();
    let body = bare(&run, 2, "login");
    let scope = [("X-Game-ID", GAME), ("X-Env", "prod")];
    let with = |auth: (&'static str, &str)| -> Reply {
        let mut h = scope.to_vec();
        h.push(auth);
        post(&f, EVENTS, &h, &body)
    };
    // Tokens: valid, expired, signed with another secret, without analytics:manage,
    // limited to another game.
    ok(&with(("Authorization", &bearer(&token(&["ops"], 3600, None)))), 2, 0);
    refused(&with(("Authorization", &bearer(&token(&["admin"], -10, None)))), 401, "bad_token");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"x","roles":["admin"],"exp":now_secs() + 3600}),
        &EncodingKey::from_secret(b"another secret").expect("key"),
    )
    .expect("token");
    refused(&with(("Authorization", &bearer(&forged))), 401, "bad_token");
    refused(&with(("Authorization", &bearer(&token(&["viewer"], 3600, None)))), 403, "missing_permission");
    let other_only = token(&["admin"], 3600, Some(&[OTHER_GAME]));
    refused(&with(("Authorization", &bearer(&other_only))), 403, "game_not_allowed");
    // Write keys: valid, the other game's key for this game, unknown, revoked, none.
    ok(&with(("X-Write-Key", KEY)), 2, 0);
    // Another scheme's `Authorization` (a proxy's or a staging site's Basic) beside a key
    // is not the credential; alone it is a bad token.
    let basic = ("Authorization", "Basic dXNlcjpwYXNz");
    ok(&post(&f, EVENTS, &[scope[0], scope[1], basic, ("X-Write-Key", KEY)], &body), 2, 0);
    refused(&with(basic), 401, "bad_token");
    // A head refused whole (a header sent twice) counts as one refused record of the
    // write key's game; a refused preflight counts none.
    let twice: Vec<(String, String)> =
        [("Content-Type", "application/json"), ("X-Write-Key", KEY), ("X-Env", "prod"), ("X-Env", "prod")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    refused(&HttpClient::connect(f.addr).request("POST", EVENTS, &twice, body.as_bytes()), 400, "bad_request");
    // The key in the query (a beacon's): the same.
    let by_query: Vec<(String, String)> = twice.iter().filter(|(k, _)| k != "X-Write-Key").cloned().collect();
    let target = format!("{EVENTS}?key={KEY}");
    refused(&HttpClient::connect(f.addr).request("POST", &target, &by_query, body.as_bytes()), 400, "bad_request");
    // An empty `X-Write-Key` beside it is no key, as for the route.
    let mut empty_header = by_query.clone();
    empty_header.push(("X-Write-Key".into(), String::new()));
    refused(&HttpClient::connect(f.addr).request("POST", &target, &empty_header, body.as_bytes()), 400, "bad_request");
    assert_eq!(HttpClient::connect(f.addr).request("OPTIONS", EVENTS, &twice, b"").status, 400);
    refused(&with(("X-Write-Key", OTHER_KEY)), 403, "game_mismatch");
    refused(&with(("X-Write-Key", "pk_nobody_has_this_key")), 401, "unknown_key");
    refused(&with(("X-Write-Key", REVOKED)), 401, "revoked_key");
    // Without `X-Game-ID` too, a revoked key's refusal counts under its game.
    refused(&post(&f, EVENTS, &[("X-Write-Key", REVOKED)], &body), 401, "revoked_key");
    refused(&post(&f, EVENTS, &scope, &body), 401, "missing_credentials");
    // A record of another game under a key: refused whole, naming the record.
    let mixed = format!(
        r#"[{{"ts":{t},"event":"login","env":"prod"}},{{"ts":{t},"game_id":"{OTHER_GAME}","event":"login","env":"prod"}}]"#,
        t = now_secs()
    );
    let r = post(&f, EVENTS, &[("X-Write-Key", KEY)], &mixed);
    refused(&r, 403, "game_mismatch");
    assert!(r.text().contains(r#""index":1"#), "{}", r.text());
    // A token's batch whose game is its first record's, one not configured: refused once
    // the records were read, so all three count.
    let unknown = format!(
        r#"[{{"ts":{t},"game_id":"nope","event":"login","env":"prod"}},{{"ts":{t},"game_id":"nope","event":"login","env":"prod"}},{{"ts":{t},"game_id":"nope","event":"login","env":"prod"}}]"#,
        t = now_secs()
    );
    let r = post(&f, EVENTS, &[("Authorization", &bearer(&token(&["ops"], 3600, None)))], &unknown);
    refused(&r, 401, "unknown_game");
    // Payments: the other game takes none from its public key.
    let pay = format!(
        r#"[{{"ts":{},"env":"prod","user_id":"u","order_id":"{run}-o","amount_cents":100,"currency":"EUR","status":"success"}}]"#,
        now_secs()
    );
    refused(&post(&f, PAYMENTS, &[("X-Write-Key", OTHER_KEY)], &pay), 403, "payments_not_allowed");
    ok(&post(&f, PAYMENTS, &[("X-Write-Key", KEY)], &pay), 1, 0);
    // Validation and media type as on /api/ingest/*.
    refused(
        &post(&f, EVENTS, &[("X-Write-Key", KEY)], r#"[{"event":"login"},{"event":"login"}]"#),
        400,
        "invalid_field",
    );
    refused(
        &post(&f, EVENTS, &[("X-Write-Key", KEY), ("Content-Type", "application/xml")], &body),
        415,
        "unsupported_media_type",
    );
    // The key's request had the token's body and scope: a retry of it, appended once.
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    assert_eq!(xlen(&f.redis, "analytics:payments"), 1);
    // Every refusal is counted under its own reason (black-box finding: those before the
    // body were not counted at all), one event each when the records were not read yet,
    // each record of the batch when one of them was refused.
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    // The game is the credential's, else the configured game `X-Game-ID` names.
    for (game, reason, n) in [
        (GAME, "bad_token", 3.0),
        (GAME, "bad_request", 3.0),
        (GAME, "missing_permission", 1.0),
        (GAME, "game_not_allowed", 1.0),
        (OTHER_GAME, "game_mismatch", 1.0),
        (GAME, "unknown_key", 1.0),
        (GAME, "revoked_key", 2.0),
        (GAME, "missing_credentials", 1.0),
        (GAME, "game_mismatch", 2.0),
        (OTHER_GAME, "payments_not_allowed", 1.0),
        (GAME, "invalid_field", 2.0),
        (GAME, "unsupported_media_type", 1.0),
        ("(unknown)", "unknown_game", 3.0),
    ] {
        let series = format!(r#"croupier_events_refused_total{{game="{game}",reason="{reason}"}}"#);
        assert_eq!(crate::metrics::sample(&text, &series), Some(n), "{series}\n{text}");
    }
}

#[test]
fn client_ingest_write_key_and_address_rates() {
    const A: &str = "pk_rate_limited_key_a";
    const B: &str = "pk_rate_limited_key_b";
    let limited = |key_eps: u64, address_eps: u64| {
        Fixture::start(Driver::Epoll, move |c| {
            keys(c);
            c.client.key_rate_eps = key_eps;
            c.client.address_rate_eps = address_eps;
            c.games.get_mut(OTHER_GAME).expect("g2").write_keys = vec![A.into(), B.into()];
        })
    };
    let run = run_id();
    let batch = std::sync::atomic::AtomicUsize::new(0);
    let send = |f: &Fixture, key: &str, n: usize| {
        let b = batch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        post(f, EVENTS, &[("X-Write-Key", key), ("X-Env", "prod")], &bare(&format!("{run}-{b}"), n, "login"))
    };
    // Per key: a second's worth (10), then 429 with Retry-After; another key is not held.
    let f = limited(10, 0);
    ok(&send(&f, A, 10), 10, 0);
    let r = send(&f, A, 9);
    refused(&r, 429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    ok(&send(&f, B, 10), 10, 0);
    // More than a second's worth in one request is refused whole (400): passing it would
    // leave the key, shared by every browser of the game, in debt for seconds.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let r = send(&f, B, 11);
    refused(&r, 400, "invalid_batch");
    ok(&send(&f, B, 10), 10, 0);
    // A token is held by neither.
    let t = token(&["admin"], 3600, None);
    let h = [("Authorization", bearer(&t)), ("X-Game-ID", OTHER_GAME.into()), ("X-Env", "prod".into())];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ok(&post(&f, EVENTS, &h, &bare(&run, 300, "login")), 300, 0);
    assert_eq!(xlen(&f.redis, "analytics:events"), 4);
    drop(f);
    // Per client address: every key sent from it counts.
    let f = limited(0, 20);
    ok(&send(&f, A, 20), 20, 0);
    let r = send(&f, B, 15);
    refused(&r, 429, "rate_limited");
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    drop(f);
    // Per game: its rate, shared with its signed servers, bounds a page's request too.
    // Before, one request of 1,000 events from a page passed and left the game in debt:
    // its servers were refused (429, `Retry-After: 100`) for a hundred seconds.
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 0;
        c.client.address_rate_eps = 0;
        c.games.get_mut(GAME).expect("g1").rate_limit_eps = 10;
    });
    let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &bare(&format!("{run}-g"), 1_000, "login"));
    refused(&r, 400, "invalid_batch");
    assert!(r.text().contains("more than 10"), "{}", r.text());
    let signed = crate::fixture::post_signed(
        &mut f.client(),
        "/api/ingest/events",
        GAME,
        crate::fixture::SECRET,
        crate::fixture::events(10).as_bytes(),
    );
    assert_eq!(signed.status, 202, "{}", signed.text());
}

/// Review finding: behind a proxy every browser counted as the proxy's address (one cell
/// of `address_rate_eps` for all of them), and the shipped compose, HAProxy and Kubernetes
/// set-ups all have one. With `client.trusted_proxies` the address is the right-most
/// `X-Forwarded-For` hop that is not a trusted proxy; a peer not listed is its own
/// address, whatever it writes there.
#[test]
fn client_ingest_address_rate_counts_the_client_behind_a_trusted_proxy() {
    let proxied = |trusted: &'static str| {
        Fixture::start(Driver::Epoll, move |c| {
            keys(c);
            c.client.key_rate_eps = 0;
            c.client.address_rate_eps = 20;
            c.client.trusted_proxies = serde_json::from_value(json!([trusted])).expect("valid");
        })
    };
    let run = run_id();
    let batch = std::sync::atomic::AtomicUsize::new(0);
    let send = |f: &Fixture, forwarded: &str| {
        let b = batch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Two lines, as HAProxy's `option forwardfor` sends behind a client's own: read
        // as one list.
        let body = bare(&format!("{run}-{b}"), 20, "login");
        let h = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("X-Write-Key".to_owned(), KEY.to_owned()),
            ("X-Env".to_owned(), "prod".to_owned()),
            ("X-Forwarded-For".to_owned(), "192.0.2.99".to_owned()),
            ("X-Forwarded-For".to_owned(), format!("{forwarded}, 127.0.0.1")),
        ];
        HttpClient::connect(f.addr).request("POST", EVENTS, &h, body.as_bytes())
    };
    // The test's connections come from 127.0.0.1, listed (as a network): through it,
    // one address spends its second's worth and is refused; others are not held by it.
    let f = proxied("127.0.0.0/8");
    ok(&send(&f, "198.51.100.1"), 20, 0);
    refused(&send(&f, "198.51.100.1"), 429, "rate_limited");
    // Addresses share 4096 cells by hash: two of three others are enough to show theirs.
    let others = ["203.0.113.1", "203.0.113.2", "203.0.113.3"].map(|a| send(&f, a).status);
    assert!(others.iter().filter(|s| **s == 202).count() >= 2, "{others:?}");
    drop(f);
    // A peer that is not a trusted proxy: its header names nothing.
    let f = proxied("10.0.0.0/8");
    ok(&send(&f, "198.51.100.1"), 20, 0);
    refused(&send(&f, "203.0.113.1"), 429, "rate_limited");
}

/// Review finding: a public write key's request made the shard inflate up to 10 MiB and
/// parse up to 10,000 records before it was refused for more records than the key's
/// burst, and refusals spend no rate. A write key's body is now at most
/// `client.max_body_bytes` as sent and once inflated (413), and more records than the
/// burst are refused from a scan of the bytes, before the parse.
#[test]
fn client_ingest_a_write_keys_request_is_bounded_before_it_is_parsed() {
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 50;
        c.client.address_rate_eps = 0;
        c.client.max_body_bytes = 64 << 10;
    });
    let key = |extra: &[(&str, &str)], body: &[u8]| {
        let mut h = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("X-Write-Key".to_owned(), KEY.to_owned()),
            ("X-Env".to_owned(), "prod".to_owned()),
        ];
        h.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        HttpClient::connect(f.addr).request("POST", EVENTS, &h, body)
    };
    let run = run_id();
    // 51 records, the last not even JSON: refused for their number, not their syntax.
    let good = bare(&run, 50, "login");
    let many = format!("{},{{\"ts\":oops}}]", good.trim_end_matches(']'));
    let r = key(&[], many.as_bytes());
    refused(&r, 400, "invalid_batch");
    assert!(r.text().contains("50"), "{}", r.text());
    // Larger than 64 KiB as sent, and once inflated (a few hundred bytes of gzip).
    let padded = format!(
        r#"[{{"ts":{},"event":"login","user_id":"{run}","props":{{"pad":"{}"}}}}]"#,
        now_secs(),
        "x".repeat(70_000)
    );
    refused(&key(&[], padded.as_bytes()), 413, "payload_too_large");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, padded.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    assert!(gz.len() < 4096);
    refused(&key(&[("Content-Encoding", "gzip")], &gz), 413, "payload_too_large");
    // Chunked, 1-byte chunks of a body under the limit: its framing is held to the
    // limit's share, not the server's (black-box finding: 6 MB of framing taken).
    let small = format!(
        r#"[{{"ts":{},"event":"login","user_id":"{run}-c","props":{{"pad":"{}"}}}}]"#,
        now_secs(),
        "y".repeat(20_000)
    );
    assert!(small.len() < 64 << 10);
    let mut raw = format!(
        "POST {EVENTS} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Write-Key: {KEY}\r\nX-Env: prod\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for b in small.bytes() {
        raw.extend_from_slice(b"1\r\n");
        raw.push(b);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = HttpClient::connect(f.addr);
    c.send_raw(&raw);
    refused(&c.read_reply(), 413, "payload_too_large");
    // A token's request is a server's: the server's limits.
    let t = token(&["admin"], 3600, None);
    let h = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Authorization".to_owned(), bearer(&t)),
        ("X-Game-ID".to_owned(), GAME.to_owned()),
        ("X-Env".to_owned(), "prod".to_owned()),
    ];
    let big = HttpClient::connect(f.addr).request("POST", EVENTS, &h, bare(&run, 600, "login").as_bytes());
    ok(&big, 600, 0);
    // Nothing refused above was appended, nor spent the key's second but the gzip body
    // inflated to the limit (64 KiB, paid as parsed bytes: 16 of its 50 events).
    ok(&key(&[], bare(&format!("{run}-d"), 34, "login").as_bytes()), 34, 0);
}

#[test]
fn client_ingest_cors() {
    let f = Fixture::start(Driver::Epoll, keys);
    let preflight = |origin: &str, query: &str| {
        let h = vec![
            ("Origin".to_owned(), origin.to_owned()),
            ("Access-Control-Request-Method".to_owned(), "POST".to_owned()),
            ("Access-Control-Request-Headers".to_owned(), "content-type,x-write-key".to_owned()),
        ];
        f.client().request("OPTIONS", &format!("{EVENTS}{query}"), &h, b"")
    };
    let r = preflight(PAGE, "");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(r.header("access-control-allow-methods"), Some("POST, OPTIONS"));
    assert!(r.header("access-control-allow-headers").is_some_and(|h| h.contains("X-Write-Key")));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    // A page whose own instrumentation adds a header (a trace's) is allowed it; a list
    // that is not header names is refused, naming the field.
    let asking = |headers: &str| {
        let h = vec![
            ("Origin".to_owned(), PAGE.to_owned()),
            ("Access-Control-Request-Method".to_owned(), "POST".to_owned()),
            ("Access-Control-Request-Headers".to_owned(), headers.to_owned()),
        ];
        f.client().request("OPTIONS", EVENTS, &h, b"")
    };
    let r = asking("content-type,traceparent,x-write-key,baggage");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type, Content-Encoding, Authorization, X-Write-Key, X-Game-ID, X-Env, traceparent, baggage")
    );
    let r = asking("content-type,trace parent");
    refused(&r, 400, "bad_request");
    assert!(r.text().contains(r#""header":"Access-Control-Request-Headers""#), "{}", r.text());
    // g1 allows only PAGE; g2 lists none (any origin): without a key the preflight
    // passes for an origin some game allows, with g1's key only for g1's.
    assert_eq!(preflight("https://evil.example", "").status, 204);
    let r = preflight("https://evil.example", &format!("?key={KEY}"));
    refused(&r, 403, "origin_not_allowed");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(preflight(PAGE, &format!("?key={KEY}")).status, 204);
    // The POST itself: from the page, readable by it; from elsewhere, refused.
    let run = run_id();
    let body = bare(&run, 1, "login");
    let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod"), ("Origin", PAGE)], &body);
    ok(&r, 1, 0);
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(r.header("access-control-expose-headers"), Some("Retry-After"));
    let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod"), ("Origin", "https://evil.example")], &body);
    refused(&r, 403, "origin_not_allowed");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A revoked key's refusal is readable by the page (else the SDK sees no status and
    // retries for ever).
    let r = post(&f, EVENTS, &[("X-Write-Key", REVOKED), ("X-Env", "prod"), ("Origin", PAGE)], &body);
    refused(&r, 401, "revoked_key");
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
    // A bearer token without X-Game-ID (its records name the game): the answer is
    // readable by the pages that game allows (review finding: never, not even its 202).
    let t = token(&["admin"], 3600, None);
    let named =
        format!(r#"[{{"ts":{},"event":"login","game_id":"{GAME}","env":"prod","user_id":"{run}-t"}}]"#, now_secs());
    let r = post(&f, EVENTS, &[("Authorization", &bearer(&t)), ("Origin", PAGE)], &named);
    ok(&r, 1, 0);
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));
    let r = post(&f, EVENTS, &[("Authorization", &bearer(&t)), ("Origin", "https://evil.example")], &named);
    ok(&r, 1, 0);
    assert_eq!(r.header("access-control-allow-origin"), None, "another site's page cannot read it");
    // The route takes POST and OPTIONS only.
    let r = f.client().request("GET", EVENTS, &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    // (The second token request is the first again: answered as it was, not appended.)
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
    // A head the HTTP layer refuses (a field read twice) on the route is readable by the
    // key's game's origins only, even though another game allows any.
    let twice = |o: &str| {
        let h: Vec<(String, String)> = [("Origin", o), ("X-Write-Key", KEY), ("X-Env", "prod"), ("X-Env", "dev")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        f.client().request("POST", EVENTS, &h, b"[]")
    };
    let r = twice(PAGE);
    assert_eq!((r.status, r.header("access-control-allow-origin")), (400, Some(PAGE)));
    let r = twice("https://evil.example");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (400, None));
    drop(f);
    // A 404 or 405 before any route (a path or a method a proxy changed) is readable by a
    // page of an origin some game allows, so that the SDK sees its status (five tries,
    // then told) instead of a network failure it would retry for ever; not by others.
    const OTHER_PAGE: &str = "https://b.example";
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.games.get_mut(OTHER_GAME).expect("g2").allowed_origins = vec![PAGE.into(), OTHER_PAGE.into()];
    });
    let origin = |o: &str| vec![("Origin".to_owned(), o.to_owned()), ("X-Write-Key".to_owned(), KEY.to_owned())];
    // The browser's preflight first: allowed, else the request would never be sent.
    let mut ask = origin(PAGE);
    ask.push(("Access-Control-Request-Method".into(), "POST".into()));
    ask.push(("Access-Control-Request-Headers".into(), "content-type,x-write-key".into()));
    let r = f.client().request("OPTIONS", "/api/analytics/ingest/", &ask, b"");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (204, Some(PAGE)));
    ask[0].1 = "https://evil.example".into();
    assert_eq!(f.client().request("OPTIONS", "/api/analytics/ingest/", &ask, b"").status, 404);
    let r = f.client().request("POST", "/api/analytics/ingest/", &origin(PAGE), b"[]");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (404, Some(PAGE)));
    assert_eq!(r.header("access-control-expose-headers"), Some("Retry-After"));
    let r = f.client().request("GET", EVENTS, &origin(PAGE), b"");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (405, Some(PAGE)));
    let r = f.client().request("POST", "/nowhere", &origin("https://evil.example"), b"[]");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (404, None));
    // With a write key, its game's origins decide: another game's page is not told.
    let r = f.client().request("POST", "/nowhere", &origin(OTHER_PAGE), b"[]");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (404, None));
    let mut other = origin(OTHER_PAGE);
    other[1].1 = OTHER_KEY.into();
    let r = f.client().request("POST", "/nowhere", &other, b"[]");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (404, Some(OTHER_PAGE)));
    let mut ask = vec![
        ("Origin".to_owned(), OTHER_PAGE.to_owned()),
        ("Access-Control-Request-Method".to_owned(), "POST".to_owned()),
    ];
    assert_eq!(f.client().request("OPTIONS", &format!("/nowhere?key={KEY}"), &ask, b"").status, 404);
    ask[0].1 = PAGE.into();
    assert_eq!(f.client().request("OPTIONS", &format!("/nowhere?key={KEY}"), &ask, b"").status, 204);
}

/// A filters file as the Analytics API writes it.
fn filters_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filters.json");
    let text = json!({
        format!("{GAME}|prod"): {"events": ["login", "level_start"], "payments_enabled": false, "sample_global": 100},
        format!("{GAME}|sampled"): {"events": [], "payments_enabled": true, "sample_global": 25},
    });
    std::fs::write(&path, text.to_string()).expect("write filters");
    path
}

/// The keys' fixture applying the filters of `path`, with no key rate and `address_eps`
/// per client address (0: none).
fn filtered(path: &std::path::Path, address_eps: u64) -> Fixture {
    let path = path.to_path_buf();
    Fixture::start(Driver::Epoll, move |c| {
        keys(c);
        c.api.filters_file = Some(path);
        c.client.key_rate_eps = 0;
        c.client.address_rate_eps = address_eps;
    })
}

#[test]
fn client_ingest_filters_drop_and_sample() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = filtered(&filters_file(dir.path()), 0);
    let run = run_id();
    let t = now_secs();
    // Outside the allow-list: dropped, the rest stored.
    let body = format!(
        r#"[{{"ts":{t},"event":"login","user_id":"a"}},{{"ts":{t},"event":"boss_killed","user_id":"b"}},
        {{"ts":{t},"event":"level_start","user_id":"c"}},{{"ts":{t},"event":"ad_impression","user_id":"d"}}]"#
    );
    ok(&post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &body), 2, 2);
    // Payments off in prod: dropped.
    let pay = format!(
        r#"[{{"ts":{t},"user_id":"u","order_id":"{run}-o","amount_cents":100,"currency":"EUR","status":"success"}}]"#
    );
    ok(&post(&f, PAYMENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &pay), 0, 1);
    assert_eq!(xlen(&f.redis, "analytics:payments"), 0);
    // 25 % of 100 000 users, in ten requests of 10 000.
    let mut kept = 0;
    let mut first = String::new();
    for batch in 0..10 {
        let body = bare(&format!("{run}-{batch}"), 10_000, "heartbeat");
        let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "sampled")], &body);
        assert_eq!(r.status, 202, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        let (a, d) = (v["accepted"].as_u64().unwrap_or(0), v["dropped"].as_u64().unwrap_or(0));
        assert_eq!(a + d, 10_000);
        kept += a;
        if batch == 0 {
            first = body;
        }
    }
    assert!((23_000..=27_000).contains(&kept), "{kept} of 100000 kept at 25 %");
    // The same users again (a retry with new ids): sampled alike.
    let again = first.replace("heartbeat", "session_start");
    let r1: Value =
        serde_json::from_slice(&post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "sampled")], &again).body)
            .expect("json");
    let r0 = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "sampled")], &first);
    let r0: Value = serde_json::from_slice(&r0.body).expect("json");
    assert_eq!(r1["accepted"], r0["accepted"]);
    let events = xlen(&f.redis, "analytics:events") + xlen(&f.redis, "analytics:custom");
    assert!(events > 0);
}

#[test]
fn client_ingest_filters_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = filters_file(dir.path());
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.api.filters_file = Some(path.clone());
        c.client.filtered_events = FilteredEvents::Refuse;
    });
    let t = now_secs();
    let body = format!(r#"[{{"ts":{t},"event":"login"}},{{"ts":{t},"event":"boss_killed"}}]"#);
    let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &body);
    refused(&r, 403, "not_allowed");
    assert!(r.text().contains(r#""field":"event","index":1"#), "{}", r.text());
    // Another environment of the game has no list.
    ok(&post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "dev")], &body), 2, 0);
    // The file changes (as POST /api/analytics/filters rewrites it): read again.
    std::thread::sleep(Duration::from_millis(20));
    let text = json!({format!("{GAME}|prod"): {"events": [], "payments_enabled": true, "sample_global": 100}});
    std::fs::write(&path, text.to_string()).expect("write filters");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &body);
        if r.status == 202 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "filters not read again: {}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a request took from its write key's and address's rates is given back when Redis
/// does not take it: a retry of an append not yet replicated (a duplicate) leaves the key
/// as it found it, so a new request of the same size still fits (else every retry of
/// every browser would push the key further into debt).
#[test]
fn client_ingest_rates_are_given_back_when_nothing_is_appended() {
    const A: &str = "pk_rate_given_back_key";
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 10;
        c.client.address_rate_eps = 0;
        c.redis.wait_replicas = 1;
        c.redis.wait_timeout_ms = 100;
        c.games.get_mut(OTHER_GAME).expect("g2").write_keys = vec![A.into()];
    });
    let run = run_id();
    let send = |body: &str| post(&f, EVENTS, &[("X-Write-Key", A), ("X-Env", "prod")], body);
    let first = bare(&format!("{run}-a"), 10, "login");
    // No replica: appended, not replicated (the key's second is spent).
    refused(&send(&first), 503, "not_replicated");
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    // The retry: a duplicate, still not replicated; it takes the key's second and gives it back.
    refused(&send(&first), 503, "not_replicated");
    // So another request of a second's worth fits at once (not 429).
    refused(&send(&bare(&format!("{run}-b"), 10, "login")), 503, "not_replicated");
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
    // Each answer counted as refused, as answered (black-box finding: none was, and the
    // drop-rate alert reads this reason), besides the 20 records accepted.
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    let series = format!(r#"croupier_events_refused_total{{game="{OTHER_GAME}",reason="not_replicated"}}"#);
    assert_eq!(crate::metrics::sample(&text, &series), Some(30.0), "{text}");
}

/// Events the filters leave out count against the key's and the address's rates as the
/// kept ones do (each costs the shard its parse): one address sending events outside the
/// allow-list at will was never answered 429, nothing stored, every request parsed.
#[test]
fn client_ingest_events_the_filters_drop_count_against_the_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = filtered(&filters_file(dir.path()), 50);
    let run = run_id();
    let send = |b: usize| {
        post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &bare(&format!("{run}-{b}"), 30, "not_allowed"))
    };
    ok(&send(0), 0, 30);
    let r = send(1);
    refused(&r, 429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // More than a second's worth, all to be dropped: refused whole, as a kept batch is.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let r = post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &bare(&run, 51, "not_allowed"));
    refused(&r, 400, "invalid_batch");
    assert_eq!(xlen(&f.redis, "analytics:events"), 0);
}

/// Review finding: a write key's request refused by its game's rate counted only the
/// records the filters kept, where one refused by the key's or the address's rate counts
/// every record it carried (the client sends them all again): counted alike now.
#[test]
fn client_ingest_a_refusal_counts_every_record_carried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = filters_file(dir.path());
    let f = Fixture::start(Driver::Epoll, move |c| {
        keys(c);
        c.api.filters_file = Some(path);
        c.client.key_rate_eps = 0;
        c.client.address_rate_eps = 0;
        c.games.get_mut(GAME).expect("game").rate_limit_eps = 10;
    });
    let run = run_id();
    let t = now_secs();
    // Nine events kept, one the filters leave out.
    let send = |b: usize| {
        let mut items: Vec<String> =
            (0..9).map(|i| format!(r#"{{"ts":{t},"event":"login","user_id":"{run}-{b}-{i}"}}"#)).collect();
        items.push(format!(r#"{{"ts":{t},"event":"not_allowed","user_id":"{run}-{b}"}}"#));
        post(&f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &format!("[{}]", items.join(",")))
    };
    ok(&send(0), 9, 1);
    refused(&send(1), 429, "rate_limited");
    let mut enc = croupier_control::metrics::Encoder::new();
    f.ingest.as_ref().expect("running").metrics().encode(&mut enc);
    let text = enc.finish();
    let series = format!(r#"croupier_events_refused_total{{game="{GAME}",reason="rate_limited"}}"#);
    assert_eq!(crate::metrics::sample(&text, &series), Some(10.0), "{text}");
}

/// Review finding: the same accepted body sent again was answered 202 and its rates
/// given back, so a page could make Redis append (and take back) or look up a body at
/// will, free. A duplicate answered 202 now keeps what it took from the key's and the
/// address's cells (one not yet replicated still gives it back, above).
#[test]
fn client_ingest_an_accepted_body_sent_again_is_paid_for() {
    const A: &str = "pk_rate_paid_again_key";
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 10;
        c.client.address_rate_eps = 0;
        c.games.get_mut(OTHER_GAME).expect("g2").write_keys = vec![A.into()];
    });
    let run = run_id();
    let send = |body: &str| post(&f, EVENTS, &[("X-Write-Key", A), ("X-Env", "prod")], body);
    let first = bare(&format!("{run}-a"), 10, "login");
    ok(&send(&first), 10, 0);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    // Answered as the first time, nothing appended, the key's second spent.
    ok(&send(&first), 10, 0);
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    refused(&send(&bare(&format!("{run}-b"), 10, "login")), 429, "rate_limited");
}

/// Black-box finding: a 1.6 KB gzip body inflating to a megabyte (one record and an
/// ignored object of duplicate keys) cost a shard tens of milliseconds to parse and the
/// key's and address's rates one event, and nothing when refused: one client kept both
/// cores busy with 130 KiB/s of upload, never answered 429. A body's bytes cost its
/// rates one event per 4 KiB, accepted or refused, and a rate in debt refuses the next
/// request before its body is read.
#[test]
fn client_ingest_a_bodys_bytes_cost_its_rates_accepted_or_refused() {
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 0;
        c.client.address_rate_eps = 50;
        c.client.max_body_bytes = 2 << 20;
    });
    let run = run_id();
    let send = |body: &[u8], gzip: bool| key_post(&f, body, gzip);
    let t = now_secs();
    // What the SDK sends, 20 records of 3 KB (60 KiB): what its records cost, twice in a
    // second of the address's 50.
    for b in 0..2 {
        let items: Vec<String> = (0..20)
            .map(|i| {
                format!(
                    r#"{{"ts":{t},"event":"login","user_id":"{run}-{b}-{i}","props":{{"p":"{}"}}}}"#,
                    "s".repeat(3_000)
                )
            })
            .collect();
        ok(&send(format!("[{}]", items.join(",")).as_bytes(), false), 20, 0);
    }
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    // One record and a megabyte of duplicate keys: accepted, 256 events to pay.
    let dup = "\"a\":0,".repeat(180_000);
    let bomb = format!(r#"[{{"ts":{t},"event":"login","user_id":"{run}-bomb","x":{{{dup}"a":0}}}}]"#);
    ok(&send(bomb.as_bytes(), true), 1, 0);
    let small = bare(&format!("{run}-after"), 1, "login");
    let r = send(small.as_bytes(), false);
    refused(&r, 429, "rate_limited");
    let wait: u64 = r.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((4..=6).contains(&wait), "Retry-After {wait}: a megabyte is 256 events of 50 a second");
    std::thread::sleep(std::time::Duration::from_secs(wait));
    ok(&send(small.as_bytes(), false), 1, 0);
    // Refused for its props' size after the parse: the same bytes, the same debt.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let props = format!(r#"[{{"ts":{t},"event":"login","user_id":"{run}-props","props":{{{dup}"a":0}}}}]"#);
    refused(&send(props.as_bytes(), true), 400, "invalid_field");
    refused(&send(small.as_bytes(), false), 429, "rate_limited");
    assert_eq!(xlen(&f.redis, "analytics:events"), 4);
}

/// Review finding: the debt check before a body is read took nothing, so requests
/// arriving together all passed it and were all parsed before any was charged. Each
/// takes an event while its body comes: with the address's burst (2) held by requests
/// whose bodies are on their way, another request is refused at once; the held ones are
/// taken whole when their bodies come, for what their events cost.
#[test]
fn client_ingest_requests_whose_bodies_are_coming_hold_the_burst() {
    use std::io::{Read, Write};
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 0;
        c.client.address_rate_eps = 2;
    });
    let run = run_id();
    let mut open: Vec<(std::net::TcpStream, String)> = (0..2)
        .map(|i| {
            let body = bare(&format!("{run}-{i}"), 1, "login");
            let head = format!(
                "POST {EVENTS} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Write-Key: {KEY}\r\n\
                 X-Env: prod\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut c = std::net::TcpStream::connect(f.addr).expect("connect");
            c.write_all(head.as_bytes()).expect("head");
            c.write_all(&body.as_bytes()[..5]).expect("part of the body");
            (c, body)
        })
        .collect();
    // Within the half second the cell takes to give one event back.
    std::thread::sleep(std::time::Duration::from_millis(100));
    refused(&key_post(&f, bare(&format!("{run}-meanwhile"), 1, "login").as_bytes(), false), 429, "rate_limited");
    for (c, body) in &mut open {
        c.write_all(&body.as_bytes()[5..]).expect("the rest of the body");
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).expect("an answer");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    }
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}

/// Black-box finding: a body's bytes were charged to the write key's rate too, which every
/// browser of the game shares: 50 gzip bodies of 1.6 KB from one address (80 KB) shut
/// the key out for everyone for a minute. They cost the sender's address alone.
#[test]
fn client_ingest_a_bodys_bytes_cost_its_address_not_the_key_every_page_shares() {
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 100;
        c.client.address_rate_eps = 50;
        c.client.max_body_bytes = 2 << 20;
        c.client.trusted_proxies = serde_json::from_value(json!(["127.0.0.0/8"])).expect("valid");
    });
    let (run, t) = (run_id(), now_secs());
    let from = |address: &str, body: &[u8], gzip: bool| key_post_from(&f, Some(address), body, gzip);
    let dup = "\"a\":0,".repeat(180_000);
    let bomb = format!(r#"[{{"ts":{t},"event":"login","user_id":"{run}-bomb","x":{{{dup}"a":0}}}}]"#);
    ok(&from("198.51.100.1", bomb.as_bytes(), true), 1, 0);
    let small = |who: &str| bare(&format!("{run}-{who}"), 1, "login").into_bytes();
    refused(&from("198.51.100.1", &small("again"), false), 429, "rate_limited");
    // Another page of the game: the key owes nothing for the bytes.
    ok(&from("203.0.113.1", &small("player"), false), 1, 0);
}

/// `body` sent with [`KEY`] (gzipped, to under 4 KiB, when `gzip`).
fn key_post(f: &Fixture, body: &[u8], gzip: bool) -> Reply {
    key_post_from(f, None, body, gzip)
}

/// [`key_post`], from the client address `forwarded` names when given (`X-Forwarded-For`).
fn key_post_from(f: &Fixture, forwarded: Option<&str>, body: &[u8], gzip: bool) -> Reply {
    let mut h = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("X-Write-Key".to_owned(), KEY.to_owned()),
        ("X-Env".to_owned(), "prod".to_owned()),
    ];
    if let Some(address) = forwarded {
        h.push(("X-Forwarded-For".to_owned(), address.to_owned()));
    }
    if !gzip {
        return HttpClient::connect(f.addr).request("POST", EVENTS, &h, body);
    }
    h.push(("Content-Encoding".to_owned(), "gzip".to_owned()));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, body).expect("gzip");
    let gz = gz.finish().expect("gzip");
    assert!(gz.len() < 4 << 10, "{} bytes of gzip", gz.len());
    HttpClient::connect(f.addr).request("POST", EVENTS, &h, &gz)
}

/// Review finding: a body refused once staged (here by its game's rate) was charged its
/// bytes past its records when taken and its bytes again when refused: a megabyte cost
/// the address 511 events, not 256.
#[test]
fn client_ingest_a_body_refused_once_staged_pays_its_bytes_once() {
    let f = Fixture::start(Driver::Epoll, |c| {
        keys(c);
        c.client.key_rate_eps = 0;
        c.client.address_rate_eps = 50;
        c.client.max_body_bytes = 2 << 20;
        c.games.get_mut(GAME).expect("g1").rate_limit_eps = 1;
    });
    let (run, t) = (run_id(), now_secs());
    // The game's second spent.
    ok(&key_post(&f, bare(&run, 1, "login").as_bytes(), false), 1, 0);
    let dup = "\"a\":0,".repeat(180_000);
    let bomb = format!(r#"[{{"ts":{t},"event":"login","user_id":"{run}-bomb","x":{{{dup}"a":0}}}}]"#);
    refused(&key_post(&f, bomb.as_bytes(), true), 429, "rate_limited");
    let r = key_post(&f, bare(&format!("{run}-after"), 1, "login").as_bytes(), false);
    refused(&r, 429, "rate_limited");
    let wait: u64 = r.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((4..=6).contains(&wait), "Retry-After {wait}: a megabyte is 256 events of 50 a second, once");
}

/// Without `api.filters_file`, the filters `POST /api/analytics/filters` stores are the
/// ones the process's client ingest applies, at once; `GET` answers what it applies to an
/// environment without settings of its own (the game's for every environment).
#[test]
fn filters_stored_without_a_file_are_applied_by_the_process() {
    let redis = croupier_it::redis::RedisServer::start();
    let write_keys = format!(r#"["{KEY}"]"#);
    let p = crate::control::ingest_on(
        &redis,
        &[("CROUPIER_API__JWT_SECRET", JWT_SECRET), (&format!("CROUPIER_GAMES__{GAME}__WRITE_KEYS"), &write_keys)],
    );
    p.wait_data_ready();
    let t = now_secs();
    let body =
        format!(r#"[{{"ts":{t},"event":"login","user_id":"a"}},{{"ts":{t},"event":"level_start","user_id":"b"}}]"#);
    let send = |env: &str| {
        HttpClient::connect(p.data).request(
            "POST",
            EVENTS,
            &[
                ("Content-Type".into(), "application/json".into()),
                ("X-Write-Key".into(), KEY.into()),
                ("X-Env".into(), env.into()),
            ],
            body.as_bytes(),
        )
    };
    ok(&send("prod"), 2, 0);
    let manage = vec![("Authorization".to_owned(), bearer(&token(&["ops"], 600, None)))];
    let store = |settings: Value| {
        let r = HttpClient::connect(p.control).request(
            "POST",
            "/api/analytics/filters",
            &manage,
            settings.to_string().as_bytes(),
        );
        assert_eq!((r.status, r.text()), (200, r#"{"ok":true}"#.to_owned()));
    };
    let read = |env: &str| {
        let r = HttpClient::connect(p.control).request(
            "GET",
            &format!("/api/analytics/filters?game_id={GAME}&env={env}"),
            &manage,
            b"",
        );
        let got: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r, got)
    };
    store(json!({"game_id": GAME, "env": "prod", "events": ["login"]}));
    ok(&send("prod"), 1, 1);
    ok(&send("dev"), 2, 0);
    // The game's settings for every environment: applied to `dev`, and what GET answers for it.
    store(json!({"game_id": GAME, "env": "", "events": ["level_start"]}));
    ok(&send("dev"), 1, 1);
    ok(&send("prod"), 1, 1);
    let (r, got) = read("dev");
    assert_eq!(
        (r.status, got),
        (200, json!({"events": ["level_start"], "payments_enabled": true, "sample_global": 100})),
        "{}",
        r.text()
    );
    // A POST for an environment without settings of its own starts from what applied to
    // it: fields it leaves out keep the game's.
    store(json!({"game_id": GAME, "env": "", "events": [], "payments_enabled": false}));
    store(json!({"game_id": GAME, "env": "qa", "events": [], "sample_global": 50}));
    let (r, got) = read("qa");
    assert_eq!(got, json!({"events": [], "payments_enabled": false, "sample_global": 50}), "{}", r.text());
    // Names a read would trim are refused: settings stored under them could not be read back.
    let r = HttpClient::connect(p.control).request(
        "POST",
        "/api/analytics/filters",
        &manage,
        json!({"game_id": GAME, "env": " prod", "events": ["x"]}).to_string().as_bytes(),
    );
    assert_eq!((r.status, r.error_tag().as_str()), (400, "invalid_parameter"), "{}", r.text());
}

#[test]
fn client_ingest_takes_croupier_sdk_bodies_and_derives_ids_from_the_records() {
    let mut p = Pipeline::start_with(&[], keys);
    p.start_worker(&[]);
    let f = &p.ingest;
    let run = run_id();
    let ms = now_secs() * 1000;
    // Croupier's JS/H5 documentation: `attrs` is the props; the superset's `uid` the player.
    let h5 =
        format!(r#"[{{"event":"session.start","ts":{ms},"uid":"{run}-h5","attrs":{{"uid":"{run}-h5","lvl":2}}}}]"#);
    ok(&post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "prod")], &h5), 1, 0);
    // Its Unity documentation's PascalCase records, with X-Game-ID and X-Env.
    let unity = format!(
        r#"[{{"EventName":"level_start","GameID":"{GAME}","Environment":"prod","UserID":"{run}-unity","SessionID":"s1",
            "DeviceID":"d1","Platform":"android","AppVersion":"1.0","Timestamp":{ms},"Properties":{{"device_model":"Pixel"}}}}]"#
    );
    ok(&post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Game-ID", GAME), ("X-Env", "prod")], &unity), 1, 0);
    // Croupier's route skips null elements; a batch of nothing else holds no record.
    let nulls = format!(r#"[null,{{"event":"login","ts":{ms},"env":"prod","user_id":"{run}-null"}},null]"#);
    ok(&post(f, EVENTS, &[("X-Write-Key", KEY)], &nulls), 1, 0);
    refused(&post(f, EVENTS, &[("X-Write-Key", KEY)], "[null]"), 400, "invalid_batch");
    // An alias given twice is refused, as a field is.
    let twice = format!(r#"[{{"event":"login","ts":{ms},"env":"prod","uid":"a","uid":"b"}}]"#);
    let r = post(f, EVENTS, &[("X-Write-Key", KEY)], &twice);
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!((r.status, v["field"].as_str()), (400, Some("uid")), "{}", r.text());
    // Records without `event_id` sent with and without headers that fill nothing (a
    // fetch with X-Env and X-Game-ID, then its beacon) get the same ids.
    let plain = format!(r#"[{{"event":"login","ts":{ms},"env":"prod","game_id":"{GAME}","user_id":"{run}-ids"}}]"#);
    ok(&post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "staging"), ("X-Game-ID", GAME)], &plain), 1, 0);
    let beacon = format!("{EVENTS}?key={}", KEY.replace('_', "%5F"));
    ok(&post(f, &beacon, &[("Content-Type", "text/plain;charset=UTF-8")], &plain), 1, 0);
    // X-Env filling the record makes another record: another id.
    let bare = format!(r#"[{{"event":"login","ts":{ms},"user_id":"{run}-ids"}}]"#);
    ok(&post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "beta")], &bare), 1, 0);
    // The same bytes filled with another env: another request, other records, other ids.
    ok(&post(f, EVENTS, &[("X-Write-Key", KEY), ("X-Env", "gamma")], &bare), 1, 0);

    p.wait_for(6, "client events stored", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.events WHERE user_id LIKE '{run}-%'"))
    });
    let ids = p.scalar(&format!("SELECT uniqExact(event_id) FROM analytics.events WHERE user_id LIKE '{run}-%'"));
    assert_eq!(ids, 6, "every record has an id of its own");
    let got = p.clickhouse.query(&format!(
        "SELECT env, event, user_id, session_id, device_id, platform, app_version, props_json, uniqExact(event_id) \
         FROM analytics.events WHERE user_id LIKE '{run}-%' \
         GROUP BY env, event, user_id, session_id, device_id, platform, app_version, props_json ORDER BY user_id, env"
    ));
    let want = [
        format!("prod\tsession.start\t{run}-h5\t\t\t\t\t{{\"uid\":\"{run}-h5\",\"lvl\":2}}\t1"),
        format!("beta\tlogin\t{run}-ids\t\t\t\t\t{{}}\t1"),
        format!("gamma\tlogin\t{run}-ids\t\t\t\t\t{{}}\t1"),
        format!("prod\tlogin\t{run}-ids\t\t\t\t\t{{}}\t1"),
        format!("prod\tlogin\t{run}-null\t\t\t\t\t{{}}\t1"),
        format!("prod\tlevel_start\t{run}-unity\ts1\td1\tandroid\t1.0\t{{\"device_model\":\"Pixel\"}}\t1"),
    ];
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
}
