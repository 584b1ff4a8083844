//! Trimming never deletes an entry the consumer group has not acknowledged: a consumer
//! that died holding entries holds back trimming, and ingest refuses (503 backlog_full)
//! rather than letting the stream grow without bound, until the entries are claimed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver, StreamLimits};
use croupier_control::metrics::Registry;
use croupier_dataplane::control::listener;
use croupier_it::http::HttpClient;
use croupier_it::redis::{xrange, RedisServer};
use croupier_protocol::resp::Frame;

use crate::fixture::event;
use crate::pipeline::Pipeline;

const KEY: &str = "analytics:events";

/// Ids of the entries delivered to `consumer` and not acknowledged.
fn pel(p: &Pipeline, consumer: &str) -> Vec<String> {
    let reply = p.ingest.redis.client().cmd(&["XPENDING", KEY, "analytics-workers", "-", "+", "100", consumer]);
    let Frame::Array(rows) = reply else { panic!("XPENDING reply") };
    rows.iter()
        .map(|r| match r {
            Frame::Array(f) => match &f[0] {
                Frame::BulkString(id) => String::from_utf8(id.clone()).expect("utf8"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

fn post(p: &Pipeline, user: &str) -> croupier_it::http::Reply {
    p.ingest.post("/api/ingest/events", &format!("[{}]", event("login", user)))
}

/// Reads everything new as consumer `other`, acknowledged as it is delivered (`NOACK`):
/// a worker that never holds an entry pending, so that what a shard counts is the lag.
fn consume(p: &Pipeline) {
    p.ingest.redis.client().cmd(&[
        "XREADGROUP",
        "GROUP",
        "analytics-workers",
        "other",
        "COUNT",
        "1000",
        "NOACK",
        "STREAMS",
        KEY,
        ">",
    ]);
}

#[test]
fn c2_entries_pending_with_a_dead_consumer_are_never_trimmed() {
    let mut p = Pipeline::start_with(&[], |c| {
        c.streams.events = StreamLimits { retention_events: 50, high_water_events: 40 };
    });
    for i in 0..5 {
        assert_eq!(post(&p, &format!("ghost-{i}")).status, 202);
    }
    // A consumer takes the five entries and dies without acknowledging them.
    p.ingest.redis.client().cmd(&[
        "XREADGROUP",
        "GROUP",
        "analytics-workers",
        "ghost",
        "COUNT",
        "5",
        "STREAMS",
        KEY,
        ">",
    ]);
    let ghost = pel(&p, "ghost");
    assert_eq!(ghost.len(), 5);
    // Another consumer keeps up with everything after them.
    let mut sent = 0;
    let mut refused = false;
    while sent < 400 {
        let r = post(&p, &format!("early-{sent}"));
        sent += 1;
        if r.status == 503 {
            assert_eq!(r.error_tag(), "backlog_full", "{}", r.text());
            refused = true;
            break;
        }
        assert_eq!(r.status, 202);
        consume(&p);
    }
    // Nothing the group has not acknowledged was trimmed ...
    let ids: Vec<String> = xrange(&mut p.ingest.redis.client(), KEY).into_iter().map(|e| e.id).collect();
    for id in &ghost {
        assert!(ids.contains(id), "pending entry {id} was trimmed");
    }
    assert_eq!(pel(&p, "ghost"), ghost, "still pending with ghost");
    // ... and the stream does not grow without bound either: ingest refuses instead.
    assert!(refused, "ingest accepted {sent} requests while the untrimmable stream grew");

    // A worker claims the dead consumer's entries and inserts them; ingest takes
    // requests again.
    p.start_worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut late = 0;
    while late < 50 {
        let r = post(&p, &format!("late-{late}"));
        match r.status {
            202 => late += 1,
            503 => {
                assert!(Instant::now() < deadline, "ingest still refused: {}", r.text());
                std::thread::sleep(Duration::from_millis(50));
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    let count = |p: &Pipeline, like: &str| {
        p.scalar(&format!("SELECT count() FROM analytics.events FINAL WHERE user_id LIKE '{like}'"))
    };
    p.wait_for(5, "the dead consumer's events in ClickHouse", |p| count(p, "ghost-%"));
    p.wait_for(50, "events accepted afterwards in ClickHouse", |p| count(p, "late-%"));
}

/// The group's `entries-read` as Redis reports it, and its `lag` (`None`: nil).
fn group_position(redis: &RedisServer) -> (i64, Option<i64>) {
    let Frame::Array(groups) = redis.client().cmd(&["XINFO", "GROUPS", KEY]) else { panic!("XINFO GROUPS reply") };
    let Some(Frame::Array(kv)) = groups.first() else { panic!("no group on {KEY}") };
    let field = |name: &str| {
        kv.chunks(2).find(|p| matches!(&p[0], Frame::BulkString(k) if k == name.as_bytes())).map(|p| p[1].clone())
    };
    let read = match field("entries-read") {
        Some(Frame::Integer(n)) => n,
        other => panic!("entries-read {other:?}"),
    };
    let lag = match field("lag") {
        Some(Frame::Integer(n)) => Some(n),
        _ => None,
    };
    (read, lag)
}

/// A replica can hold a group whose `entries-read` lags its last delivered id (Redis does
/// not always carry it consistently across a failover), so that Redis's `lag` counts
/// entries that were delivered and acknowledged long ago. Neither the control port
/// (`/readyz`, `croupier_stream_backlog_events`) nor ingest counts them as a backlog, and
/// the ingest shards repair the group's position.
#[test]
fn a_wrong_lag_of_a_group_that_delivered_everything_is_no_backlog() {
    let limits = StreamLimits { retention_events: 100, high_water_events: 40 };
    let redis = RedisServer::start();
    let mut r = redis.client();
    for i in 0..45 {
        let user = format!("u{i}");
        assert!(matches!(r.cmd(&["XADD", KEY, "*", "user", &user]), Frame::BulkString(_)));
    }
    r.cmd(&["XGROUP", "CREATE", KEY, "analytics-workers", "0"]);
    let Frame::Array(_) =
        r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "w", "COUNT", "1000", "STREAMS", KEY, ">"])
    else {
        panic!("XREADGROUP reply")
    };
    let Frame::Array(all) = r.cmd(&["XRANGE", KEY, "-", "+"]) else { panic!("XRANGE reply") };
    for e in &all {
        let Frame::Array(kv) = e else { continue };
        let Frame::BulkString(id) = &kv[0] else { continue };
        r.int(&[b"XACK".as_slice(), KEY.as_bytes(), b"analytics-workers", id]);
    }
    assert_eq!(group_position(&redis), (45, Some(0)));
    // What a failover left: the newest entry delivered and acknowledged, but entries-read
    // 1, so Redis reports a lag of 44 (above the mark of 40).
    let set = r.cmd(&["XGROUP", "SETID", KEY, "analytics-workers", "$", "ENTRIESREAD", "1"]);
    assert!(matches!(set, Frame::SimpleString(_)), "{set:?}");
    assert_eq!(group_position(&redis), (1, Some(44)));

    // The control port, alone on this Redis.
    let mut config = Config::default();
    config.server.driver = Driver::Epoll;
    config.redis.addr = redis.addr();
    config.control.listen = "127.0.0.1:0".into();
    config.streams.events = limits;
    let control = listener::start(Arc::new(config), Registry::new(&[], &[], false), true, false)
        .expect("control starts")
        .expect("control listener");
    let get = |path: &str| HttpClient::connect(control.local_addr()).request("GET", path, &[], b"");
    // Once its connection is up, it reads the streams on each probe.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let ready = get("/readyz");
        if !ready.text().contains("not connected") || Instant::now() > deadline {
            break ready;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ready.status, 200, "{}", ready.text());
    let metrics = get("/metrics").text();
    assert!(metrics.contains("croupier_stream_backlog_events{stream=\"events\"} 0\n"), "{metrics}");
    assert!(metrics.contains("croupier_stream_entries{stream=\"events\"} 45\n"), "{metrics}");
    control.shutdown();
    assert_eq!(group_position(&redis), (1, Some(44)), "the control port only reads");

    // The ingest shards on it: ready, taking events, and the position repaired.
    let f = crate::fixture::Fixture::start_with_redis(Driver::Epoll, redis, |c| c.streams.events = limits);
    for _ in 0..8 {
        let ready = f.client().request("GET", "/readyz", &[], b"");
        assert_eq!(ready.status, 200, "{}", ready.text());
    }
    let accepted = f.post("/api/ingest/events", &format!("[{}]", event("login", "after")));
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let (read, lag) = group_position(&f.redis);
    assert!(read == 45 && lag == Some(1), "entries-read {read}, lag {lag:?}");
}

/// Limits of 100 events and a mark of 40, with 45 one-event entries (above the mark) all
/// delivered and acknowledged: the retained history.
fn at_retention_all_acknowledged() -> Pipeline {
    at_retention_all_acknowledged_with(|_| {})
}

/// [`at_retention_all_acknowledged`] with the configuration adjusted by `tweak`.
fn at_retention_all_acknowledged_with(tweak: impl FnOnce(&mut Config)) -> Pipeline {
    let p = Pipeline::start_with(&[], |c| {
        c.streams.events = StreamLimits { retention_events: 100, high_water_events: 40 };
        tweak(c);
    });
    for i in 0..45 {
        assert_eq!(post(&p, &format!("u{i}")).status, 202);
        if i % 10 == 9 {
            consume(&p);
        }
    }
    consume(&p);
    p
}

/// One request sent twice (same nonce, same body): both 202, the second's append taken back.
fn send_twice(p: &Pipeline) {
    let body = format!("[{}]", event("login", "again"));
    let nonce = croupier_it::http::fresh_nonce();
    let h = croupier_it::http::signed_headers(
        crate::fixture::GAME,
        crate::fixture::SECRET,
        body.as_bytes(),
        croupier_it::http::now_secs(),
        &nonce,
    );
    for _ in 0..2 {
        let r = p.ingest.client().request("POST", "/api/ingest/events", &h, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
}

/// A request sent again (same nonce, same body) is appended and deleted again within the
/// ingest transaction, leaving the stream's last generated id on a deleted entry: Redis
/// then reports no lag for the group, and the group never delivers that id. A group that
/// delivered every entry there is is still caught up: ingest takes the next request
/// (not `503 backlog_full` for a stream holding its retention above the mark) and the
/// retained entries are not trimmed.
#[test]
fn a_taken_back_duplicate_at_the_end_of_the_stream_is_no_backlog() {
    let p = at_retention_all_acknowledged();
    send_twice(&p);
    consume(&p);
    // Every shard reads the backlog after the duplicate.
    std::thread::sleep(Duration::from_millis(600));
    let r = post(&p, "next");
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(crate::fixture::xlen(&p.ingest.redis, KEY) >= 47, "the retained entries are kept");
}

/// The same under load: entries lie after the group's position when the duplicate is
/// taken back, so Redis cannot tell the position until the group has delivered the
/// stream's last entry. Meanwhile ingest keeps the backlog of its last reading that knew
/// it (here 3 entries, far below the mark), not the whole stream with its retained
/// history: the next request is 202.
#[test]
fn a_taken_back_duplicate_under_load_keeps_the_last_known_backlog() {
    let p = at_retention_all_acknowledged();
    // Entries the group has not read yet, then a reading that knows the position.
    for i in 0..3 {
        assert_eq!(post(&p, &format!("v{i}")).status, 202);
    }
    std::thread::sleep(Duration::from_millis(300));
    send_twice(&p);
    std::thread::sleep(Duration::from_millis(300));
    let r = post(&p, "next");
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(crate::fixture::xlen(&p.ingest.redis, KEY) >= 50, "the retained entries are kept");
}

/// A steady trickle of duplicates (one request in ten sent twice, the group keeping up):
/// each leaves a deleted entry at the stream's end that the shard's reading moves the
/// group past, and the stream is still trimmed to about its retention. (When every such
/// repair dropped the sampled positions, trimming waited a whole retention after each
/// duplicate and the stream grew without bound.) The retention is counted in entries
/// added, so the entries taken back within it (one in twelve here: about 8 of 100) come
/// off what is kept.
#[test]
fn a_trickle_of_duplicates_does_not_stop_trimming() {
    let p = at_retention_all_acknowledged();
    for round in 0..20 {
        for i in 0..10 {
            assert_eq!(post(&p, &format!("w{round}-{i}")).status, 202);
        }
        send_twice(&p);
        consume(&p);
        // A reading of the backlog after the duplicate.
        std::thread::sleep(Duration::from_millis(250));
    }
    let appended = 45 + 20 * 11;
    let xlen = crate::fixture::xlen(&p.ingest.redis, KEY);
    assert!((85..180).contains(&xlen), "{xlen} of {appended} entries kept, retention 100");
}

/// The group kept behind a taken-back duplicate for longer than the shards hold their last
/// backlog (workers lagging for seconds): Redis still cannot tell the position, and the
/// shards place it from their samples (here the group's own, taken while it was 3 behind)
/// and the stream's `entries-added` instead of counting the whole stream with its retained
/// history (above the mark: every request was refused `503
/// backlog_full` until the group caught up). Memory stays bounded: the mark still refuses.
#[test]
fn a_group_behind_a_taken_back_duplicate_for_long_is_placed_and_still_bounded() {
    let p = at_retention_all_acknowledged();
    // Entries the group has not read, a reading that samples its position, then the
    // duplicate behind it and more unread entries.
    for i in 0..3 {
        assert_eq!(post(&p, &format!("v{i}")).status, 202);
    }
    std::thread::sleep(Duration::from_millis(300));
    send_twice(&p);
    for i in 0..3 {
        assert_eq!(post(&p, &format!("w{i}")).status, 202);
    }
    let (read, lag) = group_position(&p.ingest.redis);
    assert_eq!(lag, None, "Redis cannot tell the position (entries-read {read})");
    // Well past the 20 readings of the hold (20 ms apart).
    std::thread::sleep(Duration::from_millis(2_000));
    let r = post(&p, "next");
    assert_eq!(r.status, 202, "{}", r.text());
    // About 8 entries owed: the mark (40) refuses after some 30 more, not after the
    // retained history, and not never.
    let mut accepted = 0;
    let refused = loop {
        let r = post(&p, &format!("x{accepted}"));
        if r.status != 202 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 60, "never refused: the backlog is not bounded");
        std::thread::sleep(Duration::from_millis(30));
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("backlog_full"), "{}", refused.text());
    assert!(accepted >= 20, "refused after {accepted}: the owed entries were over-counted");
    assert_eq!(group_position(&p.ingest.redis).1, None, "still not told by Redis");
}

/// Redis restarted without its data between two readings of the shards, and requests
/// made the shards connect again before the next one (so only the connection's epoch
/// tells that reading that the samples it holds were taken on another server): those
/// samples never place the group on the new server. Here another producer fills the new
/// stream past the old sampled counts, with the group behind a deleted entry and 45
/// entries owed (mark 40): every shard refuses. (Placed by the old samples, the group
/// seemed to owe 6, and ingest took more.)
#[test]
fn samples_from_before_a_restart_do_not_place_the_group_on_the_new_server() {
    let mut p = Pipeline::start_with(&[], |c| {
        c.streams.events = StreamLimits { retention_events: 100, high_water_events: 40 };
        c.redis.backlog_poll_ms = 2_000;
    });
    // The old server: the group's position sampled at 20, 40 and 60 entries.
    for round in 0..3 {
        for i in 0..20 {
            assert_eq!(post(&p, &format!("old{round}-{i}")).status, 202);
        }
        consume(&p);
        std::thread::sleep(Duration::from_millis(2_200));
    }
    // Just after a reading, so that the restart and the shards' reconnect fall before the
    // next one.
    let open = p.ingest.redis.clients() - 1;
    let before = p.ingest.redis.calls("xinfo|groups");
    while p.ingest.redis.calls("xinfo|groups") == before {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    p.ingest.redis.restart();
    // 20 entries delivered and acknowledged, 5 owed, a deleted one (a duplicate taken
    // back), 40 more owed.
    let mut r = p.ingest.redis.client();
    let _ = r.cmd(&["XGROUP", "CREATE", KEY, "analytics-workers", "0", "MKSTREAM"]);
    for _ in 0..20 {
        r.cmd(&["XADD", KEY, "*", "f", "v"]);
    }
    consume(&p);
    for _ in 0..5 {
        r.cmd(&["XADD", KEY, "*", "f", "v"]);
    }
    let Frame::BulkString(taken_back) = r.cmd(&["XADD", KEY, "*", "f", "v"]) else { panic!("XADD reply") };
    assert_eq!(r.int(&[b"XDEL".as_slice(), KEY.as_bytes(), &taken_back]), 1);
    for _ in 0..40 {
        r.cmd(&["XADD", KEY, "*", "f", "v"]);
    }
    assert_eq!(group_position(&p.ingest.redis).1, None, "Redis cannot tell the lag");
    let ours = p.ingest.redis.calls("xinfo|groups");
    // Requests find the old connections closed and the shards connect again, before
    // their next reading (a request on a dead connection is refused: its effect is
    // unknown; one that finds the new connection not yet read is taken or refused).
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut taken = 0;
    while p.ingest.redis.clients() - 1 < open {
        assert!(Instant::now() < deadline, "the shards did not reconnect");
        let reply = post(&p, "meanwhile");
        assert!([202, 503].contains(&reply.status), "{}", reply.text());
        taken += usize::from(reply.status == 202);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(taken <= 10, "{taken} taken");
    assert_eq!(p.ingest.redis.calls("xinfo|groups"), ours, "a shard read the new server before it was set up");
    // Every shard has read it.
    std::thread::sleep(Duration::from_millis(4_500));
    for i in 0..4 {
        let reply = post(&p, &format!("new{i}"));
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(reply.text().contains("backlog_full"), "{}", reply.text());
    }
}

/// A shard started while a worker's insert holds entries pending (here consumer `slow`
/// holds the newest entry, behind the retained history: 46 entries, mark 40) has no
/// sampled position older than them: while the entry was delivered less long ago than a
/// worker's insert holds one, it counts what is owed and pending (1), not the whole
/// stream, and takes requests (counting the whole stream, a shard started under steady
/// traffic refused every request until the insert was acknowledged). Pending for longer,
/// the whole stream counts and ingest refuses: by the shard's own time while the entry's
/// consumer keeps it (`XCLAIM … JUSTID`, which starts Redis's idle time again), and by
/// Redis's idle time right after the shards are started again (a consumer that died
/// holding it); until the entry is acknowledged.
#[test]
fn a_shard_started_while_an_insert_is_pending_takes_requests() {
    // An insert holds entries for 4 s + 0.2 s, 1 s more for a retry's back-off, + 2 s.
    let grace = Duration::from_millis(7_200);
    let mut p = at_retention_all_acknowledged_with(|c| {
        c.worker.insert_interval_ms = 4_000;
        c.worker.backoff_max_ms = 1_000;
    });
    assert_eq!(post(&p, "pending").status, 202);
    let slow = ["XREADGROUP", "GROUP", "analytics-workers", "slow", "COUNT", "10", "STREAMS", KEY, ">"];
    p.ingest.redis.client().cmd(&slow);
    let delivered = Instant::now();
    let held = pel(&p, "slow");
    assert_eq!(held.len(), 1);
    p.ingest.restart_ingest();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut taken = 0;
    while taken < 8 {
        let r = post(&p, &format!("started-{taken}"));
        if r.status == 503 && r.error_tag() == "redis_unavailable" {
            // A shard that has not read the backlog yet.
            assert!(Instant::now() < deadline, "the shards did not read the backlog");
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        assert!(delivered.elapsed() < grace, "the requests came after the grace (a slow machine)");
        assert_eq!(r.status, 202, "{}", r.text());
        taken += 1;
        consume(&p);
    }
    // Kept by its consumer for longer than an insert holds it: refused.
    let keep = ["XCLAIM", KEY, "analytics-workers", "slow", "0", held[0].as_str(), "JUSTID"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.ingest.redis.client().cmd(&keep);
        let r = post(&p, "held");
        if r.status == 503 {
            assert_eq!(r.error_tag(), "backlog_full", "{}", r.text());
            break;
        }
        assert_eq!(r.status, 202, "{}", r.text());
        assert!(Instant::now() < deadline, "ingest still took requests with an entry pending for long");
        consume(&p);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Left idle past the grace (its consumer died): shards started again refuse at once.
    std::thread::sleep(grace);
    p.ingest.restart_ingest();
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = post(&p, "again");
        if r.error_tag() != "redis_unavailable" {
            break r;
        }
        assert!(Instant::now() < deadline, "the shards did not read the backlog");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((r.status, r.error_tag().as_str()), (503, "backlog_full"), "{}", r.text());
    let ids: Vec<String> = xrange(&mut p.ingest.redis.client(), KEY).into_iter().map(|e| e.id).collect();
    assert!(ids.contains(&held[0]), "the pending entry was trimmed");
    // Acknowledged: every shard takes requests again.
    let ack = [b"XACK".as_slice(), KEY.as_bytes(), b"analytics-workers", held[0].as_bytes()];
    assert_eq!(p.ingest.redis.client().int(&ack), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 8 {
        let r = post(&p, "after");
        consume(&p);
        in_a_row = if r.status == 202 { in_a_row + 1 } else { 0 };
        assert!(Instant::now() < deadline, "still refused after the acknowledgement: {}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
}
