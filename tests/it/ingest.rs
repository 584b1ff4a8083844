//! Accepted batches land on their streams, whole and exactly as sent.

use std::io::Write;
use std::time::{Duration, Instant};

use croupier_control::config::{Driver, Game, IngestProtocol, StreamLimits};
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};
use croupier_it::redis::{xrange, Entry, RedisClient, RedisServer};
use croupier_protocol::batch::{self, BatchBuf, Records};
use croupier_protocol::envelope::{Event, Payment, PaymentStatus};
use croupier_protocol::resp::Frame;
use croupier_protocol::stream::{merge_means, Appended};

use crate::fixture::{both_drivers, event, events, post_signed, total_entries, xlen, Fixture, GAME, SECRET};

both_drivers!(
    events_round_trip_field_by_field,
    payments_round_trip,
    gzip_and_chunked_bodies_are_accepted,
    maxlen_trims_consumed_entries,
    backlog_at_high_water_refuses_without_trimming,
    sparse_stream_gets_its_room_in_events,
    a_broken_entry_sizes_key_does_not_stop_ingest,
    a_stream_key_of_another_type_fails_only_its_requests_after_a_restart,
    redis_stopped_then_back_without_restart,
    keep_alive_serves_many_requests,
    pipelined_requests_in_one_write,
);

fn decode(entry: &Entry) -> batch::Batch {
    assert_eq!(entry.get("fmt"), Some(b"rkyv1".as_slice()), "entry format");
    let mut buf = BatchBuf::default();
    let archived = buf.load(entry.get("batch").expect("batch field")).expect("valid archive");
    let n: usize = std::str::from_utf8(entry.get("n").expect("n field")).expect("utf8").parse().expect("count");
    let owned = batch::to_owned(archived).expect("deserialises");
    assert_eq!(owned.records.len(), n, "n field matches the archive");
    owned
}

fn events_round_trip_field_by_field(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let body = r#"[{"ts":"2026-11-25T14:42:29.250Z","game_id":"g1","env":"prod","event":"login","user_id":"u1",
        "session_id":"s1","device_id":"d1","channel":"appstore","platform":"ios","country":"de",
        "app_version":"1.2.3","event_id":"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03","props":{"lvl":3,"tags":["a","b"]}},
        {"ts":1795617749,"game_id":"g1","env":"prod","event":"boss_killed","user_id":"u2","props":{"boss":"hydra"}},
        {"ts":"2026-11-25 14:42:29","game_id":"g1","env":"prod","event":"session.start","user_id":"u3"}]"#;
    let before = now_secs() * 1000;
    let r = f.post("/api/ingest/events", body);
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":3}"#.to_owned()));
    assert_eq!(r.header("content-type"), Some("application/json"));

    let mut redis = f.redis.client();
    let standard = xrange(&mut redis, "analytics:events");
    let custom = xrange(&mut redis, "analytics:custom");
    assert_eq!((standard.len(), custom.len()), (1, 1), "one entry per stream per request");
    assert_eq!(xlen(&f.redis, "analytics:payments"), 0);

    let b = decode(&standard[0]);
    assert!(b.accepted_at_ms >= before && b.accepted_at_ms <= now_secs() * 1000 + 1000);
    let Records::Events(ev) = b.records else { panic!("events") };
    let ev = ev.to_events();
    assert_eq!(ev.len(), 2);
    let want = Event {
        ts_ms: 1_795_617_749_250,
        game_id: "g1".into(),
        env: "prod".into(),
        event: "login".into(),
        user_id: "u1".into(),
        session_id: "s1".into(),
        device_id: "d1".into(),
        channel: "appstore".into(),
        platform: "ios".into(),
        country: "DE".into(),
        app_version: "1.2.3".into(),
        event_id: [0x6f, 0x1c, 0x2b, 0x9e, 0x0d, 0x3a, 0x4c, 0x1e, 0x9a, 0x57, 0x2f, 0x4b, 0x8e, 0x6d, 0x1c, 0x03],
        props: r#"{"lvl":3,"tags":["a","b"]}"#.into(),
    };
    assert_eq!(ev[0], want);
    assert_eq!((ev[1].event.as_str(), ev[1].user_id.as_str(), ev[1].ts_ms), ("session.start", "u3", 1_795_617_749_000));
    assert_eq!(ev[1].props, "{}");
    // An event without event_id gets one derived from the body at ingest (UUID version 8).
    assert_eq!(ev[1].event_id[6] >> 4, 8);

    let c = decode(&custom[0]);
    let Records::Events(cv) = c.records else { panic!("events") };
    let cv = cv.to_events();
    assert_eq!((cv[0].event.as_str(), cv[0].props.as_str()), ("boss_killed", r#"{"boss":"hydra"}"#));
    assert_ne!(cv[0].event_id, ev[1].event_id);
}

fn payments_round_trip(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let body = r#"{"events":[{"ts":1795617749000,"game_id":"g1","env":"prod","user_id":"u1","order_id":"o-1",
        "amount_cents":499,"currency":"USD","status":"success","channel":"gp","platform":"android","country":"BR",
        "region":"SP","city":"Campinas","product_id":"gems_100"},
        {"ts":"1795617749","game_id":"g1","env":"prod","user_id":"u2","order_id":"o-2","amount_cents":1,
        "currency":"EUR","status":"failed","reason":"card_declined"}]}"#;
    let r = f.post("/api/ingest/payments", body);
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":2}"#.to_owned()));
    let entries = xrange(&mut f.redis.client(), "analytics:payments");
    assert_eq!(entries.len(), 1);
    assert_eq!(xlen(&f.redis, "analytics:events") + xlen(&f.redis, "analytics:custom"), 0);
    let Records::Payments(p) = decode(&entries[0]).records else { panic!("payments") };
    assert_eq!(
        p[0],
        Payment {
            ts_ms: 1_795_617_749_000,
            game_id: "g1".into(),
            env: "prod".into(),
            user_id: "u1".into(),
            order_id: "o-1".into(),
            amount_cents: 499,
            currency: "USD".into(),
            status: PaymentStatus::Success,
            channel: "gp".into(),
            platform: "android".into(),
            country: "BR".into(),
            region: "SP".into(),
            city: "Campinas".into(),
            product_id: "gems_100".into(),
            reason: String::new(),
        }
    );
    assert_eq!((p[1].status, p[1].reason.as_str(), p[1].amount_cents), (PaymentStatus::Failed, "card_declined", 1));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("compress");
    enc.finish().expect("finish")
}

fn gzip_and_chunked_bodies_are_accepted(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    let plain = events(50);
    // gzip, signed over the bytes sent.
    let gz = gzip(plain.as_bytes());
    let mut h = signed_headers(GAME, SECRET, &gz, now_secs(), &fresh_nonce());
    h.push(("Content-Encoding".into(), "gzip".into()));
    let r = f.client().request("POST", "/api/ingest/events", &h, &gz);
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":50}"#.to_owned()));
    // (gzip signed over the JSON before compression: body::m2_hostile3_*.)

    // Chunked, in uneven pieces, with Expect: 100-continue.
    let body = events(7);
    let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let mut req = String::from(
        "POST /api/ingest/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n",
    );
    for (k, v) in &h {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut c = f.client();
    c.send_raw(req.as_bytes());
    for piece in body.as_bytes().chunks(97) {
        c.send_raw(format!("{:x}\r\n", piece.len()).as_bytes());
        c.send_raw(piece);
        c.send_raw(b"\r\n");
    }
    c.send_raw(b"0\r\n\r\n");
    let r = c.read_reply();
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":7}"#.to_owned()));

    let stored: usize = xrange(&mut f.redis.client(), "analytics:events").iter().map(|e| decode(e).records.len()).sum();
    assert_eq!(stored, 57);
}

fn read_and_ack(redis: &mut croupier_it::redis::RedisClient, key: &str) -> usize {
    let reply = redis.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "test", "COUNT", "1000", "STREAMS", key, ">"]);
    let Frame::Array(streams) = reply else { return 0 };
    let mut n = 0;
    for s in streams {
        let Frame::Array(parts) = s else { continue };
        let Frame::Array(entries) = &parts[1] else { continue };
        for e in entries {
            let Frame::Array(kv) = e else { continue };
            let Frame::BulkString(id) = &kv[0] else { continue };
            assert_eq!(redis.int(&[b"XACK".as_slice(), key.as_bytes(), b"analytics-workers", id]), 1);
            n += 1;
        }
    }
    n
}

fn maxlen_trims_consumed_entries(driver: Driver) {
    // 40 events of retention in entries of 4 events: about 10 acknowledged entries kept.
    let f = Fixture::start(driver, |c| {
        c.streams.events = StreamLimits { retention_events: 40, high_water_events: 32 };
    });
    let mut redis = f.redis.client();
    for _ in 0..30 {
        // The shard counts its own appends until its next backlog reading, so a fast
        // producer may briefly see 503 even though every entry was consumed: retry.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = f.post("/api/ingest/events", &events(4));
            if r.status == 202 {
                break;
            }
            assert_eq!((r.status, r.error_tag().as_str()), (503, "backlog_full"));
            assert!(Instant::now() < deadline, "refused although consumed");
            std::thread::sleep(Duration::from_millis(10));
        }
        read_and_ack(&mut redis, "analytics:events");
        // The trim point follows the group's progress at each backlog reading (20 ms).
        std::thread::sleep(Duration::from_millis(30));
    }
    let len = xlen(&f.redis, "analytics:events");
    // `MINID ~` trims whole stream nodes (4 entries each in the test server), at the
    // position a reading saw before the last append.
    assert!((10..=16).contains(&len), "XLEN {len} should be about 10");
    let Frame::Array(groups) = redis.cmd(&["XINFO", "GROUPS", "analytics:events"]) else { panic!("groups") };
    assert_eq!(groups.len(), 1);
}

/// With several partitions, one at its high-water mark refuses (503 `backlog_full`) only
/// the requests routed to it: the others are taken, and the node stays ready (every node
/// sees the same Redis; a load balancer taking every node out would refuse them all).
#[test]
fn a_partition_at_its_mark_refuses_only_its_requests_and_leaves_the_node_ready() {
    // Per partition: retention 100 events, mark 50.
    let f = Fixture::start(Driver::Epoll, |c| {
        c.streams.partitions = 3;
        c.streams.events = StreamLimits { retention_events: 300, high_water_events: 150 };
    });
    assert_eq!(f.post("/api/ingest/events", &events(55)).status, 202);
    // The backlog readings (every 20 ms) see one partition at its mark.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(f.client().request("GET", "/readyz", &[], b"").status, 200);
    let (mut taken, mut full) = (0, 0);
    for _ in 0..30 {
        let r = f.post("/api/ingest/events", &events(1));
        match (r.status, r.error_tag().as_str()) {
            (202, _) => taken += 1,
            (503, "backlog_full") => full += 1,
            other => panic!("{other:?}: {}", r.text()),
        }
    }
    assert!(taken > 0 && full > 0, "{taken} taken, {full} refused");
    assert_eq!(f.client().request("GET", "/readyz", &[], b"").status, 200);
}

fn backlog_at_high_water_refuses_without_trimming(driver: Driver) {
    // Entries of 10 events: MAXLEN ~ 10 entries, high-water mark 3 entries.
    let f = Fixture::start(driver, |c| {
        c.streams.events = StreamLimits { retention_events: 100, high_water_events: 30 };
    });
    for _ in 0..3 {
        assert_eq!(f.post("/api/ingest/events", &events(10)).status, 202);
    }
    std::thread::sleep(Duration::from_millis(150));
    for _ in 0..4 {
        let r = f.post("/api/ingest/events", &events(10));
        assert_eq!((r.status, r.error_tag().as_str()), (503, "backlog_full"), "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(f.client().request("GET", "/readyz", &[], b"").status, 503);
    // What a balancer checks: the node serves the other streams (review finding: one full
    // stream took every node out of HAProxy and Kubernetes, which then refused them all).
    let r = f.client().request("GET", "/readyz?exclude=streams", &[], b"");
    assert_eq!((r.status, r.text()), (200, r#"{"status":"ready","ready":true}"#.to_owned()));
    assert_eq!(f.client().request("GET", "/readyz?exclude=redis", &[], b"").status, 503);
    for query in
        ["exclude=redis,streams", "exclude=redis&exclude=streams", "exclude=%73treams", "exclude=redis%2Cstreams"]
    {
        assert_eq!(f.client().request("GET", &format!("/readyz?{query}"), &[], b"").status, 200, "{query}");
    }
    assert_eq!(f.client().request("GET", "/readyz?exclude=Streams", &[], b"").status, 503);
    assert_eq!(xlen(&f.redis, "analytics:events"), 3, "nothing added, nothing trimmed");
    // Other streams are not held back by this one.
    let custom = format!("[{}]", event("boss_killed", "u1"));
    assert_eq!(f.post("/api/ingest/events", &custom).status, 202);

    let mut redis = f.redis.client();
    assert_eq!(read_and_ack(&mut redis, "analytics:events"), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = f.post("/api/ingest/events", &events(10));
        if r.status == 202 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "still refused after the backlog drained");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(xlen(&f.redis, "analytics:events"), 4);
}

fn sparse_stream_gets_its_room_in_events(driver: Driver) {
    sparse_stream_gets_its_room(driver, IngestProtocol::Script);
}

/// The same with the `lease` protocol.
#[test]
fn sparse_stream_gets_its_room_in_events_with_the_lease_protocol() {
    sparse_stream_gets_its_room(Driver::Epoll, IngestProtocol::Lease);
}

/// Only appends Redis confirmed move the mean entry sizes: a replay's (which the script
/// appends and takes back) and a duplicate's do not.
#[test]
fn only_confirmed_appends_move_the_entry_sizes() {
    for protocol in [IngestProtocol::Script, IngestProtocol::Lease] {
        let f = Fixture::start(Driver::Epoll, |c| c.redis.ingest_protocol = protocol);
        // One connection: one shard, whose merges cover all it appended before.
        let mut c = f.client();
        let mut post = |body: &str, nonce: &str| {
            let h = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), nonce);
            c.request("POST", "/api/ingest/events", &h, body.as_bytes())
        };
        let (nonce, ten) = (fresh_nonce(), events(10));
        assert_eq!(post(&ten, &nonce).status, 202);
        let replay = post(&events(1), &nonce);
        assert_eq!((replay.status, replay.error_tag().as_str()), (401, "replayed_nonce"), "{protocol:?}");
        assert_eq!(post(&ten, &nonce).text(), r#"{"accepted":10}"#, "{protocol:?}: a duplicate");
        assert_eq!(post(&format!("[{}]", event("boss_killed", "u1")), &fresh_nonce()).status, 202);
        assert_eq!(xlen(&f.redis, "analytics:events"), 1);
        // The custom stream's mean appears with the merge that covers the appends before it.
        let mut redis = f.redis.client();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stored_mean(&mut redis, "analytics:custom").is_empty() {
            assert!(Instant::now() < deadline, "{protocol:?}: no mean merged");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stored_mean(&mut redis, "analytics:custom"), "1", "{protocol:?}");
        assert_eq!(stored_mean(&mut redis, "analytics:events"), "10", "{protocol:?}");
    }
}

/// The mean entry size kept for `stream` in `croupier:entry-events`, as stored (empty:
/// none).
fn stored_mean(redis: &mut RedisClient, stream: &str) -> String {
    match redis.cmd(&["HGET", "croupier:entry-events", stream]) {
        Frame::BulkString(v) => String::from_utf8(v).expect("utf8"),
        Frame::Null => String::new(),
        other => panic!("{other:?}"),
    }
}

/// The merge of the shards' appends into the mean entry sizes, against redis-server: the
/// hash keeps decayed sums of entries and events per stream, and their ratio. Merged
/// within the window, every shard's entries count (at high rates each shard merges
/// hundreds of entries at once: one shard's must not wipe out another's); past it, the
/// weight of the last 64 entries still does, and no more (a burst's sums do not linger);
/// a stream with no sums yet takes the merge's mean; damaged sums start again.
#[test]
fn merged_entry_sizes_mix_every_shards_appends() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    let mut merge = |window_ms: u64, appended: &[Appended<'_>]| {
        let mut cmd = Vec::new();
        merge_means(&mut cmd, "croupier:entry-events", window_ms, appended);
        c.send(&cmd).expect("send");
        assert_eq!(c.replies(1).expect("reply"), vec![Frame::Integer(1)]);
    };
    let hour = 3_600_000;
    let a = |stream, entries, events| Appended { stream, entries, events };
    // Two shards within the window: one of full entries, one of single events.
    merge(hour, &[a("mixed", 340, 34_000), a("first", 4, 8)]);
    merge(hour, &[a("mixed", 340, 340)]);
    // Past a 1 ms window, only the last 64 entries' weight is left of what came before.
    merge(1, &[a("decayed", 1, 500), a("burst", 10_000, 1_000_000)]);
    std::thread::sleep(Duration::from_millis(30));
    merge(1, &[a("decayed", 100, 100), a("burst", 1, 1)]);
    // Damaged sums (not numbers, not finite, a mean out of bounds, a time to come) and a
    // damaged mean without sums start again.
    let mut other = redis.client();
    for (field, bad) in [
        ("u:entries", "nan"),
        ("u:events", "6"),
        ("u:at", "0"),
        ("v:entries", "inf"),
        ("v:events", "inf"),
        ("v:at", "0"),
        ("w:entries", "1"),
        ("w:events", "1e308"),
        ("w:at", "0"),
        ("x:entries", "1"),
        ("x:events", "1"),
        ("x:at", "99999999999999"),
        ("y", "1e308"),
    ] {
        assert_eq!(other.int(&["HSET", "croupier:entry-events", field, bad]), 1);
    }
    // Sums written by a clock 5 s ahead of this server's (a failover): no time passed.
    let Frame::Array(time) = other.cmd(&["TIME"]) else { panic!("TIME") };
    let [Frame::BulkString(secs), _] = time.as_slice() else { panic!("TIME {time:?}") };
    let ahead = std::str::from_utf8(secs).expect("utf8").parse::<u64>().expect("seconds") * 1000 + 5000;
    for (field, value) in [("z:entries", "1".to_owned()), ("z:events", "100".to_owned()), ("z:at", ahead.to_string())] {
        assert_eq!(other.int(&["HSET", "croupier:entry-events", field, &value]), 1);
    }
    merge(hour, &[a("u", 2, 6), a("v", 2, 6), a("w", 2, 6), a("x", 2, 6), a("y", 2, 6), a("z", 2, 6)]);
    let mut c = redis.client();
    let mut mean = |key: &str| -> f64 { stored_mean(&mut c, key).parse().expect("a number") };
    assert_eq!(mean("first"), 2.0);
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-4 * want, "{got} against {want}");
    close(mean("mixed"), 34_340.0 / 680.0);
    let w = (63.0_f64 / 64.0).powi(100);
    close(mean("decayed"), (500.0 * w + 100.0) / (w + 100.0));
    // 10,000 entries of 100 events, then one of 1: 64 entries' worth of weight, 63 kept.
    let kept = 64.0 * 63.0 / 64.0;
    close(mean("burst"), (100.0 * kept + 1.0) / (kept + 1.0));
    for key in ["u", "v", "w", "x", "y"] {
        assert_eq!(mean(key), 3.0, "{key}");
    }
    close(mean("z"), 106.0 / 3.0);
}

fn sparse_stream_gets_its_room(driver: Driver, protocol: IngestProtocol) {
    // Requests that carry one custom event each fill the custom stream with one-event
    // entries: its mark of 40 events is 40 entries (not 40 / 100, as if entries were
    // full batches).
    let f = Fixture::start(driver, |c| {
        c.streams.custom = StreamLimits { retention_events: 50, high_water_events: 40 };
        c.redis.ingest_protocol = protocol;
    });
    let mut accepted = 0;
    let refused = loop {
        let r = f.post("/api/ingest/events", &format!("[{}]", event("boss_killed", &format!("u{accepted}"))));
        if r.status != 202 {
            break r;
        }
        accepted += 1;
        assert!(accepted <= 40, "accepted past the mark");
        // Let every shard read the backlog (a shard overshoots by what the others append
        // within one poll interval).
        std::thread::sleep(Duration::from_millis(30));
    };
    assert_eq!((refused.status, refused.error_tag().as_str()), (503, "backlog_full"), "{}", refused.text());
    assert_eq!(accepted, 40);
    assert_eq!(xlen(&f.redis, "analytics:custom"), 40, "nothing trimmed unread");
    // The standard stream keeps its own room.
    assert_eq!(f.post("/api/ingest/events", &events(10)).status, 202);
    // The entry sizes every shard reads: written by the shards with their next reading
    // (whichever protocol: no script keeps them per request).
    let mut redis = f.redis.client();
    let mut mean = |key: &str| stored_mean(&mut redis, key);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let means = (mean("analytics:custom"), mean("analytics:events"));
        if means == ("1".to_owned(), "10".to_owned()) {
            break;
        }
        assert!(Instant::now() < deadline, "{means:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn a_broken_entry_sizes_key_does_not_stop_ingest(driver: Driver) {
    a_broken_entry_sizes_key_does_not_stop(driver, IngestProtocol::Script);
}

#[test]
fn a_broken_entry_sizes_key_does_not_stop_ingest_with_the_lease_protocol() {
    a_broken_entry_sizes_key_does_not_stop(Driver::Epoll, IngestProtocol::Lease);
}

fn a_broken_entry_sizes_key_does_not_stop(driver: Driver, protocol: IngestProtocol) {
    let f = Fixture::start(driver, |c| c.redis.ingest_protocol = protocol);
    let mut redis = f.redis.client();
    assert_eq!(redis.cmd(&["SET", "croupier:entry-events", "not a hash"]), Frame::SimpleString(b"OK".to_vec()));
    let r = f.post("/api/ingest/events", &events(5));
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":5}"#.to_owned()));
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    // The shards' readings delete the key of another type (logged), and the sizes are
    // kept again from the next appends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd(&["TYPE", "croupier:entry-events"]) == Frame::SimpleString(b"string".to_vec()) {
        assert!(Instant::now() < deadline, "the key of another type is still there");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = f.post("/api/ingest/events", &events(5));
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":5}"#.to_owned()));
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
    loop {
        let mean = stored_mean(&mut redis, "analytics:events");
        if mean == "5" {
            break;
        }
        assert!(Instant::now() < deadline, "{mean:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Posts `body` until it is answered 202, within 10 s; any other answer meanwhile must be
/// a 503.
fn accepted_within_10s(f: &Fixture, path: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.post(path, body);
        if r.status == 202 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "{path} not accepted within 10 s: {}", r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Black-box finding: a key of another type where a stream belongs failed every request
/// once croupier (re)connected, since making the connection ready (the consumer group on
/// each stream) failed, without naming the key. Now only the requests appending to that
/// stream are refused, `/readyz` stays 200 (the other streams take requests), and they
/// are taken again once the key is repaired.
fn a_stream_key_of_another_type_fails_only_its_requests_after_a_restart(driver: Driver) {
    let mut f = Fixture::start(driver, |c| c.server.shards = 1);
    let mut redis = f.redis.client();
    assert_eq!(redis.int(&["DEL", "analytics:custom"]), 1);
    assert_eq!(redis.cmd(&["SET", "analytics:custom", "not a stream"]), Frame::SimpleString(b"OK".to_vec()));
    f.restart_ingest();
    accepted_within_10s(&f, "/api/ingest/events", &events(3));
    let payment = r#"[{"ts":1795617749000,"game_id":"g1","env":"prod","user_id":"u1","order_id":"o-1",
        "amount_cents":499,"currency":"USD","status":"success"}]"#;
    let r = f.post("/api/ingest/payments", payment);
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":1}"#.to_owned()));
    // A custom event goes to the broken key: refused, and nothing of it stored.
    let custom = format!("[{}]", event("boss_killed", "u1"));
    for _ in 0..3 {
        let r = f.post("/api/ingest/events", &custom);
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!((xlen(&f.redis, "analytics:events"), xlen(&f.redis, "analytics:payments")), (1, 1));
    assert_eq!(redis.cmd(&["TYPE", "analytics:custom"]), Frame::SimpleString(b"string".to_vec()));
    // Ready all the same: a load balancer keeps the node for the other streams' requests.
    for _ in 0..8 {
        assert_eq!(f.client().request("GET", "/readyz", &[], b"").status, 200, "unready for one broken stream");
    }
    // Repaired: taken again.
    assert_eq!(redis.int(&["DEL", "analytics:custom"]), 1);
    accepted_within_10s(&f, "/api/ingest/events", &custom);
    assert_eq!(xlen(&f.redis, "analytics:custom"), 1);
}

fn redis_stopped_then_back_without_restart(driver: Driver) {
    let mut f = Fixture::start(driver, |_| {});
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    f.redis.stop();
    for _ in 0..3 {
        let r = f.post("/api/ingest/events", &events(3));
        assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // Every shard notices within its backlog poll interval.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (0..8).any(|_| f.client().request("GET", "/readyz", &[], b"").status != 503) {
        assert!(Instant::now() < deadline, "/readyz still 200 with Redis down");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.client().request("GET", "/healthz", &[], b"").status, 200, "alive while Redis is down");
    f.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.post("/api/ingest/events", &events(3));
        if r.status == 202 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "ingest did not recover after Redis came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server restarted empty (no persistence): the group was recreated with the stream.
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    let Frame::Array(groups) = f.redis.client().cmd(&["XINFO", "GROUPS", "analytics:events"]) else { panic!("groups") };
    assert_eq!(groups.len(), 1);
}

fn keep_alive_serves_many_requests(driver: Driver) {
    let f = Fixture::start(driver, |c| {
        c.games.insert("limited".into(), Game { secret: Some("s".into()), ..Game::default() });
    });
    let mut c = f.client();
    for i in 0..50 {
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(1 + i % 5).as_bytes());
        assert_eq!(r.status, 202);
    }
    assert_eq!(c.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(total_entries(&f.redis), 50);
}

fn pipelined_requests_in_one_write(driver: Driver) {
    // Signed requests back to back in one write, each body followed in the same read by
    // the next request's head: before them, one answered from its head whose body is read
    // past (no such game) and one without a body.
    let f = Fixture::start(driver, |_| {});
    let mut raw = Vec::new();
    for (game, n) in [("nosuchgame", 2), (GAME, 3), (GAME, 4)] {
        let body = events(n);
        raw.extend_from_slice(
            format!("POST /api/ingest/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n", body.len()).as_bytes(),
        );
        for (k, v) in signed_headers(game, SECRET, body.as_bytes(), now_secs(), &fresh_nonce()) {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body.as_bytes());
        if n == 2 {
            raw.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        }
    }
    let mut c = f.client();
    c.send_raw(&raw);
    let r = c.read_reply();
    assert_eq!((r.status, r.error_tag().as_str()), (401, "unknown_game"), "{}", r.text());
    assert_eq!(c.read_reply().status, 200);
    for want in [r#"{"accepted":3}"#, r#"{"accepted":4}"#] {
        let r = c.read_reply();
        assert_eq!((r.status, r.text()), (202, want.to_owned()));
    }
    let mut redis = f.redis.client();
    let counts: Vec<usize> = xrange(&mut redis, "analytics:events").iter().map(|e| decode(e).records.len()).collect();
    assert_eq!(counts, vec![3, 4]);
}

#[test]
fn rate_limit_refuses_with_retry_after() {
    let f = Fixture::start(Driver::Epoll, |c| {
        c.server.shards = 1;
        c.games.insert("limited".into(), Game { secret: Some("s".into()), rate_limit_eps: 10, ..Game::default() });
    });
    let body = events(10).replace(r#""game_id":"g1""#, r#""game_id":"limited""#);
    let mut c = f.client();
    assert_eq!(post_signed(&mut c, "/api/ingest/events", "limited", "s", body.as_bytes()).status, 202);
    let r = post_signed(&mut c, "/api/ingest/events", "limited", "s", body.as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (429, "rate_limited"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Other games are not limited.
    assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(10).as_bytes()).status, 202);
    assert_eq!(xlen(&f.redis, "analytics:events"), 2);
}
