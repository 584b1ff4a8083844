//! Retrying is safe: a batch sent again gets the same event ids, a request sent again
//! with its nonce is answered as the first time without a second append, a nonce lives
//! as long as its timestamp is fresh, and the ingest script appends all or nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croupier_control::config::{Driver, EventIds, IngestProtocol};
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};
use croupier_it::redis::xrange;
use croupier_protocol::batch::{self, BatchBuf, Records};
use croupier_protocol::resp::Frame;

use crate::fixture::{both_drivers, event, events, xlen, Fixture, GAME, SECRET};

both_drivers!(
    c4_a_retried_batch_gets_the_same_event_ids,
    c4_same_nonce_same_body_is_answered_202_without_a_second_append,
    low_a_stream_key_of_another_type_uses_up_nothing,
    a_retry_to_a_stream_whose_ids_are_used_up_takes_back_nothing_accepted,
    copies_sent_at_once_to_a_stream_that_refuses_appends_are_never_202,
);

/// The event ids of every entry of `key`, entry by entry.
fn entry_ids(f: &Fixture, key: &str) -> Vec<Vec<[u8; 16]>> {
    xrange(&mut f.redis.client(), key)
        .iter()
        .map(|e| {
            let mut buf = BatchBuf::default();
            let archived = buf.load(e.get("batch").expect("batch")).expect("archive");
            let Records::Events(ev) = batch::to_owned(archived).expect("batch").records else { panic!("events") };
            ev.to_events().iter().map(|e| e.event_id).collect()
        })
        .collect()
}

fn c4_a_retried_batch_gets_the_same_event_ids(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    // Standard and custom events, one with its own event_id.
    let body = format!(
        "[{},{},{},{}]",
        event("login", "a"),
        event("boss_killed", "b"),
        event("login", "c").replace(r#""env""#, r#""event_id":"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03","env""#),
        event("level_start", "d"),
    );
    // The client did not get the answer and sends the batch again, with a new nonce.
    for _ in 0..2 {
        assert_eq!(f.post("/api/ingest/events", &body).status, 202);
    }
    let standard = entry_ids(&f, "analytics:events");
    let custom = entry_ids(&f, "analytics:custom");
    assert_eq!((standard.len(), custom.len()), (2, 2));
    assert_eq!(standard[0], standard[1], "same ids on the retry: ClickHouse keeps one copy");
    assert_eq!(custom[0], custom[1]);
    let mut all: Vec<[u8; 16]> = standard[0].iter().chain(&custom[0]).copied().collect();
    assert_eq!(standard[0][1][0], 0x6f, "a sent event_id is kept");
    for id in [standard[0][0], standard[0][2], custom[0][0]] {
        assert_eq!((id[6] >> 4, id[8] >> 6), (8, 0b10), "UUID version 8, RFC variant: {id:02x?}");
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "distinct within the batch");
    // Another body gets other ids.
    assert_eq!(f.post("/api/ingest/events", &body.replace(r#""a""#, r#""a2""#)).status, 202);
    let standard = entry_ids(&f, "analytics:events");
    assert_ne!(standard[2][0], standard[0][0]);
}

/// The ids the SHA-256 derivation (`server.event_ids = "sha256"`) gives the first `n`
/// id-less events of `body`, computed by Python's hashlib.
fn sha256_ids(body: &str, n: usize) -> Vec<[u8; 16]> {
    let script = "import hashlib,sys\n\
        d=hashlib.sha256(sys.stdin.buffer.read()).digest()\n\
        for i in range(int(sys.argv[1])):\n\
        \x20b=bytearray(hashlib.sha256(b'croupier event id v1\\n'+d+i.to_bytes(4,'little')).digest()[:16])\n\
        \x20b[6]=(b[6]&15)|128; b[8]=(b[8]&63)|128; print(b.hex())\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, &n.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), body.as_bytes()).expect("body");
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "python3 failed");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| {
            let b: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).expect("hex")).collect();
            b.try_into().expect("16 bytes")
        })
        .collect()
}

/// `server.event_ids` picks the derivation: `sha256` gives the ids of earlier versions,
/// exactly as Python computes them from the body; the default gives others, so a batch
/// sent again under a new nonce to a node with the other setting is stored twice
/// (docs/deploy.md, "Upgrading: event ids").
#[test]
fn event_ids_follow_the_configured_derivation() {
    let body = format!("[{},{}]", event("login", "a"), event("level_start", "b"));
    let old = Fixture::start(Driver::Epoll, |c| c.server.event_ids = EventIds::Sha256);
    assert_eq!(old.post("/api/ingest/events", &body).status, 202);
    let sha = entry_ids(&old, "analytics:events");
    assert_eq!(sha, vec![sha256_ids(&body, 2)], "the SHA-256 ids of earlier versions");
    let new = Fixture::start(Driver::Epoll, |_| {});
    assert_eq!(new.post("/api/ingest/events", &body).status, 202);
    let sip = entry_ids(&new, "analytics:events");
    assert_eq!(sip[0].len(), 2);
    assert!(sip[0][0] != sha[0][0] && sip[0][1] != sha[0][1], "SipHash ids by default");
}

fn c4_same_nonce_same_body_is_answered_202_without_a_second_append(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let body = events(3);
    let nonce = fresh_nonce();
    let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
    let first = f.client().request("POST", "/api/ingest/events", &headers, body.as_bytes());
    assert_eq!((first.status, first.text()), (202, r#"{"accepted":3}"#.to_owned()));
    // The same request again (the client never saw the answer): the first answer again.
    let again = f.client().request("POST", "/api/ingest/events", &headers, body.as_bytes());
    assert_eq!((again.status, again.text()), (202, r#"{"accepted":3}"#.to_owned()));
    assert_eq!(xlen(&f.redis, "analytics:events"), 1, "appended once");
    // The same nonce with another body is a replay.
    let other = events(4);
    let h = signed_headers(GAME, SECRET, other.as_bytes(), now_secs(), &nonce);
    let r = f.client().request("POST", "/api/ingest/events", &h, other.as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (401, "replayed_nonce"));
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
}

fn a_retry_to_a_stream_whose_ids_are_used_up_takes_back_nothing_accepted(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    // Two accepted requests of the same size, then the stream's ids used up: every
    // `XADD` to it fails when run, so a take-back reads older entries back.
    let (a, b) = (events(3), events(3));
    let (na, nb) = (fresh_nonce(), fresh_nonce());
    let send = |body: &str, nonce: &str| {
        let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), nonce);
        f.client().request("POST", "/api/ingest/events", &h, body.as_bytes())
    };
    assert_eq!((send(&a, &na).status, send(&b, &nb).status), (202, 202));
    let before = xrange(&mut f.redis.client(), "analytics:events");
    assert_eq!(before.len(), 2);
    let mut redis = f.redis.client();
    redis.cmd(&["XSETID", "analytics:events", "18446744073709551615-18446744073709551615"]);
    // Retries of both (each a duplicate whose first copy is where its own append would
    // have been: 503, as its own append failed and croupier cannot tell a first copy
    // stored long ago from one that failed the same way) and a replay of the first's
    // nonce (401): nothing deleted.
    for _ in 0..2 {
        let (rb, ra) = (send(&b, &nb), send(&a, &na));
        assert_eq!((rb.status, rb.error_tag().as_str()), (503, "redis_unavailable"), "{}", rb.text());
        assert_eq!(ra.status, 503, "{}", ra.text());
        let r = send(&b, &na);
        assert_eq!((r.status, r.error_tag().as_str()), (401, "replayed_nonce"));
    }
    // A new request cannot be appended: 503, and its nonce stays free.
    let (c, nc) = (events(3), fresh_nonce());
    let r = send(&c, &nc);
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    let after = xrange(&mut f.redis.client(), "analytics:events");
    let ids = |v: &[croupier_it::redis::Entry]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "the accepted entries are all there");
    assert!(after.iter().zip(&before).all(|(x, y)| x.get("batch") == y.get("batch")), "unchanged");
    assert_eq!(redis.int(&["EXISTS", &format!("croupier:nonce:{GAME}:{nc}")]), 0, "the nonce is given back");
}

/// Black-box finding: identical copies of a request sent at once to a stream whose every
/// `XADD` fails when run (its ids used up) were answered 202 with nothing stored, under
/// either protocol: a copy judged a duplicate of the first, whose nonce was marked done
/// by the failed transaction and not yet given back.
fn copies_sent_at_once_to_a_stream_that_refuses_appends_are_never_202(driver: Driver) {
    for protocol in [IngestProtocol::Script, IngestProtocol::Lease] {
        let f = Fixture::start(driver, |c| c.redis.ingest_protocol = protocol);
        f.redis.client().cmd(&["XSETID", "analytics:events", "18446744073709551615-18446744073709551615"]);
        let mut sent = Vec::new();
        for _ in 0..12 {
            let (body, nonce) = (events(2), fresh_nonce());
            let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
            let start = std::sync::Arc::new(std::sync::Barrier::new(4));
            let copies: Vec<_> = (0..4)
                .map(|_| {
                    let (mut client, h, body, start) = (f.client(), h.clone(), body.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        client.request("POST", "/api/ingest/events", &h, body.as_bytes()).status
                    })
                })
                .collect();
            let statuses: Vec<u16> = copies.into_iter().map(|c| c.join().expect("thread")).collect();
            assert!(statuses.iter().all(|s| *s == 503), "{protocol:?}: {statuses:?}");
            sent.push(nonce);
        }
        assert_eq!(xlen(&f.redis, "analytics:events"), 0);
        // Given back (script) or pending again (lease): a retry once repaired appends.
        let mut redis = f.redis.client();
        for nonce in sent {
            let key = format!("croupier:nonce:{GAME}:{nonce}");
            match protocol {
                IngestProtocol::Script => assert_eq!(redis.int(&["EXISTS", &key]), 0, "given back"),
                IngestProtocol::Lease => {
                    let Frame::BulkString(v) = redis.cmd(&["GET", &key]) else { panic!("no nonce") };
                    assert_eq!(v.first(), Some(&b'P'), "pending again");
                }
            }
        }
    }
}

fn low_a_stream_key_of_another_type_uses_up_nothing(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let mut redis = f.redis.client();
    // Someone wrote a string where a stream belongs.
    redis.cmd(&["DEL", "analytics:custom"]);
    assert_eq!(redis.cmd(&["SET", "analytics:custom", "oops"]), Frame::SimpleString(b"OK".to_vec()));
    let body = format!("[{},{}]", event("login", "a"), event("boss_killed", "b"));
    let nonce = fresh_nonce();
    let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
    let r = f.client().request("POST", "/api/ingest/events", &headers, body.as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(xlen(&f.redis, "analytics:events"), 0, "the other stream was not appended to");
    assert_eq!(redis.int(&["EXISTS", &format!("croupier:nonce:{GAME}:{nonce}")]), 0, "the nonce is not used up");
    // Once the key is repaired, the retry with the same nonce goes through.
    redis.cmd(&["DEL", "analytics:custom"]);
    redis.cmd(&["XGROUP", "CREATE", "analytics:custom", "analytics-workers", "0", "MKSTREAM"]);
    // Taken again once a backlog reading finds the stream (`/readyz` passed over it
    // meanwhile: the other streams took requests all along).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = f.client().request("POST", "/api/ingest/events", &headers, body.as_bytes());
        if r.status != 503 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":2}"#.to_owned()));
    assert_eq!((xlen(&f.redis, "analytics:events"), xlen(&f.redis, "analytics:custom")), (1, 1));
}

#[test]
fn hostile5_a_nonce_lives_while_its_timestamp_is_fresh() {
    let f = Fixture::start(Driver::Epoll, |c| c.auth.max_skew_secs = 3);
    // Just after a second starts, a request stamped at the far edge of the window.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    std::thread::sleep(Duration::from_millis(1_020) - Duration::from_nanos(u64::from(now.subsec_nanos())));
    let t0 = now_secs();
    let ts = t0 + 3;
    let nonce = fresh_nonce();
    let body = events(1);
    let h = signed_headers(GAME, SECRET, body.as_bytes(), ts, &nonce);
    assert_eq!(f.client().request("POST", "/api/ingest/events", &h, body.as_bytes()).status, 202);
    // Six seconds on, the timestamp is still within 3 s of the clock: its nonce must be
    // remembered still.
    let until = UNIX_EPOCH + Duration::from_secs((t0 + 6) as u64) + Duration::from_millis(400);
    std::thread::sleep(until.duration_since(SystemTime::now()).unwrap_or_default());
    assert_eq!(now_secs(), t0 + 6, "the test runs within the second it means to");
    let other = events(2);
    let h = signed_headers(GAME, SECRET, other.as_bytes(), ts, &nonce);
    let r = f.client().request("POST", "/api/ingest/events", &h, other.as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (401, "replayed_nonce"), "{}", r.text());
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
}

/// A duplicate's and a replay's entries are appended and deleted again within their
/// transaction, while a worker is blocked reading the stream: none is ever delivered.
/// Every accepted event lands once (no extra row, not even one collapsed later), nothing
/// is dead-lettered, nothing stays pending.
#[test]
fn a_duplicate_or_replay_taken_back_is_never_delivered_to_a_waiting_worker() {
    let mut p = crate::pipeline::Pipeline::start(&[]);
    p.start_worker(&[]);
    let mut accepted = 0;
    for _ in 0..20 {
        let body = events(3);
        let nonce = fresh_nonce();
        let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &nonce);
        let first = p.ingest.client().request("POST", "/api/ingest/events", &h, body.as_bytes());
        assert_eq!(first.status, 202, "{}", first.text());
        accepted += 3;
        // The worker reads that entry, then waits on the stream again.
        std::thread::sleep(Duration::from_millis(30));
        let again = p.ingest.client().request("POST", "/api/ingest/events", &h, body.as_bytes());
        assert_eq!((again.status, again.text()), (202, r#"{"accepted":3}"#.to_owned()));
        let other = events(4);
        let h = signed_headers(GAME, SECRET, other.as_bytes(), now_secs(), &nonce);
        let replay = p.ingest.client().request("POST", "/api/ingest/events", &h, other.as_bytes());
        assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"));
    }
    p.wait_for(accepted, "events in ClickHouse", crate::pipeline::Pipeline::distinct_events);
    p.wait_for(0, "pending entries", |p| p.pending("analytics:events") as u64);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.scalar("SELECT count() FROM analytics.events"), accepted, "no row inserted twice");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
}

/// Black-box finding: the nonce recorded the body's digest alone, so the same nonce and
/// body sent to the events route and then to the payments route (a record valid as both)
/// was answered 202 for the payment with nothing appended. The route is part of the
/// request's identity now: the second is a replay, whichever route comes first, under
/// both ingest protocols.
#[test]
fn the_same_nonce_and_body_on_the_other_route_is_a_replay() {
    for protocol in [IngestProtocol::Script, IngestProtocol::Lease] {
        let f = Fixture::start(Driver::Epoll, |c| c.redis.ingest_protocol = protocol);
        let record = format!(
            r#"[{{"ts":{},"game_id":"{GAME}","env":"prod","event":"purchase","user_id":"u1","order_id":"o-1",
            "amount_cents":499,"currency":"USD","status":"success"}}]"#,
            now_secs()
        );
        for (first, second, stream) in [
            ("/api/ingest/events", "/api/ingest/payments", "analytics:payments"),
            ("/api/ingest/payments", "/api/ingest/events", "analytics:events"),
        ] {
            let headers = signed_headers(GAME, SECRET, record.as_bytes(), now_secs(), &fresh_nonce());
            let r = f.client().request("POST", first, &headers, record.as_bytes());
            assert_eq!((r.status, r.text()), (202, r#"{"accepted":1}"#.to_owned()), "{protocol:?} {first}");
            let r = f.client().request("POST", second, &headers, record.as_bytes());
            assert_eq!(
                (r.status, r.error_tag().as_str()),
                (401, "replayed_nonce"),
                "{protocol:?} {second}: {}",
                r.text()
            );
            assert_eq!(xlen(&f.redis, stream), if stream == "analytics:events" { 1 } else { 0 }, "{protocol:?}");
            // The first route's retry is still the duplicate it was.
            let r = f.client().request("POST", first, &headers, record.as_bytes());
            assert_eq!((r.status, r.text()), (202, r#"{"accepted":1}"#.to_owned()), "{protocol:?} {first} again");
        }
        assert_eq!((xlen(&f.redis, "analytics:events"), xlen(&f.redis, "analytics:payments")), (1, 1), "{protocol:?}");
    }
}
