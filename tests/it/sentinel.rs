//! Redis Sentinel: 1 primary, 1 replica and 3 sentinels on loopback. Ingest and the
//! worker find the primary through the sentinels; the primary is killed under load with
//! `wait_replicas = 1`; the replica takes over and every event answered 202 is in
//! ClickHouse. The requests answered otherwise are sent again, as a client does, and
//! every event ends up there once. A primary that stays one but refuses writes
//! `NOREPLICAS` is left for the primary the sentinels name. A manual failover, whose old
//! primary stays a writable primary for seconds, is followed as the sentinels announce it
//! (`+switch-master`), and so is one whose announcement was missed (the subscribed sentinel
//! frozen), through the configuration epoch the other sentinels name the new primary at.

use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::redis::{RedisClient, RedisServer};
use croupier_it::sentinel::{SentinelServer, MASTER_NAME};
use croupier_protocol::resp::Frame;

use crate::fixture::{event, events, total_entries, Fixture};
use crate::load::Load;
use crate::pipeline::{croupier, env, Pipeline};

#[test]
fn sentinel_failover_under_load_loses_no_202_with_wait_replicas_1() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start(&primary)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let primary_port = primary.port;
    let p = through_sentinels(&sentinels, |c| {
        c.redis.wait_replicas = 1;
        c.redis.wait_timeout_ms = 500;
    });

    // Load: one client, one request after another, until told to stop.
    let load = Load::start(p.ingest.addr, Duration::from_millis(20));
    load.wait_more(20, "before the failover");
    // The primary dies mid-load; the sentinels promote the replica.
    primary.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinels[0].primary_port() != Some(replica.port) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old primary comes back as the new one's replica: appends are confirmed again
    // (or, should the sentinels fail over once more, it is the primary of the other).
    primary.restart_with(&["--replicaof", "127.0.0.1", &replica.port.to_string()]);
    primary.wait_replicating();
    load.wait_more(20, "after the failover");
    // Everything not answered 202 is sent again, as it was (a retry), until it is.
    let done = load.finish();
    assert_ne!(primary_port, replica.port);
    let events = done.events();
    // Each event has a user of its own: every one is in ClickHouse, including every one
    // answered 202 during the load (none of those was sent again).
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    assert_eq!(p.distinct_events(), events, "one row per event");
    eprintln!("{} requests, {} sent again", done.requests, done.refused);
}

/// An old primary cut off from its replicas, with `min-replicas-to-write`, refuses every
/// write `NOREPLICAS` and never `READONLY`, and stays a primary. Ingest asks the
/// sentinels again on that reply and follows the primary they name now.
#[test]
fn sentinel_primary_refusing_noreplicas_is_left_for_the_one_the_sentinels_name() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let sentinel = SentinelServer::start(&old);
    let addrs = vec![sentinel.addr()];
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |c| {
        c.redis.addr = "127.0.0.1:1".into();
        c.redis.sentinels = addrs;
        c.redis.master_name = MASTER_NAME.into();
        c.redis.reply_timeout_ms = 1_000;
    });
    assert_eq!(ingest.post("/api/ingest/events", &events(1)).status, 202);
    assert_eq!(total_entries(&old), 1);

    // The sentinels now name `new`; `old` keeps answering as a primary that refuses writes.
    old.client().cmd(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let mut s = RedisClient::connect(sentinel.port).expect("sentinel");
    s.cmd(&["SENTINEL", "REMOVE", MASTER_NAME]);
    s.cmd(&["SENTINEL", "MONITOR", MASTER_NAME, "127.0.0.1", &new.port.to_string(), "1"]);
    assert_eq!(sentinel.primary_port(), Some(new.port));

    // Each request is answered 202 (appended to `new`) or 503 (nothing appended) until
    // every shard has moved: then 20 in a row are answered 202.
    let (mut accepted, mut in_a_row, mut refused) = (0i64, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while in_a_row < 20 {
        assert!(Instant::now() < deadline, "still refused after 15 s: {refused} refused, {accepted} accepted");
        match ingest.post("/api/ingest/events", &events(1)).status {
            202 => (accepted, in_a_row) = (accepted + 1, in_a_row + 1),
            503 => (refused, in_a_row) = (refused + 1, 0),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(total_entries(&new), accepted, "every 202 after the switch is in the new primary");
    assert_eq!(total_entries(&old), 1, "nothing more was appended to the old primary");
    eprintln!("{accepted} accepted, {refused} refused on the way");
}

/// The role `ROLE` gives (`master`, `slave`).
/// Ingest, ClickHouse and a worker that find the Redis primary only through `sentinels`
/// (`redis.addr` names nothing), with `tweak` setting more of the ingest's configuration.
fn through_sentinels(sentinels: &[SentinelServer], tweak: impl FnOnce(&mut Config)) -> Pipeline {
    through_sentinels_with(sentinels, tweak, &[])
}

/// [`through_sentinels`], the worker with `worker_env` too.
pub(crate) fn through_sentinels_with(
    sentinels: &[SentinelServer],
    tweak: impl FnOnce(&mut Config),
    worker_env: &[(&str, &str)],
) -> Pipeline {
    let list = format!("[{}]", sentinels.iter().map(|s| format!("\"{}\"", s.addr())).collect::<Vec<_>>().join(","));
    let addrs: Vec<String> = sentinels.iter().map(SentinelServer::addr).collect();
    let clickhouse = ClickHouseServer::start();
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |c| {
        c.redis.addr = "127.0.0.1:1".into();
        c.redis.sentinels = addrs;
        c.redis.master_name = MASTER_NAME.into();
        c.redis.reply_timeout_ms = 1_000;
        tweak(c);
    });
    let (ok, out) = croupier(&["migrate"], &env(&ingest.redis, &clickhouse));
    assert!(ok, "croupier migrate failed: {out}");
    let mut p = Pipeline { ingest, clickhouse, worker: None };
    let mut worker = vec![
        ("CROUPIER_REDIS__ADDR", "127.0.0.1:1"),
        ("CROUPIER_REDIS__SENTINELS", list.as_str()),
        ("CROUPIER_REDIS__MASTER_NAME", MASTER_NAME),
    ];
    worker.extend_from_slice(worker_env);
    p.start_worker(&worker);
    p
}

pub(crate) fn role(redis: &RedisServer) -> String {
    match redis.client().cmd(&["ROLE"]) {
        Frame::Array(parts) => match parts.first() {
            Some(Frame::BulkString(r)) => String::from_utf8_lossy(r).into_owned(),
            other => panic!("ROLE: {other:?}"),
        },
        other => panic!("ROLE: {other:?}"),
    }
}

/// Entries ever appended to `analytics:events` (`XINFO STREAM`'s `entries-added`, which
/// trimming does not lower: the worker acknowledges and ingest trims meanwhile). Asked
/// again when the connection is closed under it: a sentinel promoting a replica or
/// demoting a primary closes every client connection of the server (`CLIENT KILL`).
pub(crate) fn events_added(redis: &RedisServer) -> i64 {
    let mut tries = 0;
    let reply = loop {
        match RedisClient::connect(redis.port).and_then(|mut c| c.try_cmd(&["XINFO", "STREAM", "analytics:events"])) {
            // Nothing appended there yet.
            Ok(Frame::Error(e)) if e.contains("no such key") => return 0,
            Ok(f) => break f,
            Err(e) => {
                tries += 1;
                assert!(tries < 10, "XINFO STREAM analytics:events: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let Frame::Array(kv) = reply else { panic!("XINFO STREAM analytics:events: {reply:?}") };
    kv.chunks(2)
        .find_map(|p| match p {
            [Frame::BulkString(k), Frame::Integer(n)] if k == b"entries-added" => Some(*n),
            _ => None,
        })
        .expect("entries-added")
}

/// Black-box finding: the primary frozen (SIGSTOP) with a request's append in flight, the
/// sentinels promote the replica and ingest hears it; the old primary, thawed, then
/// answered the append, and ingest passed it on as 202 although it knew the primary had
/// changed: with `wait_replicas = 0` the old primary's demotion threw the events away.
/// A reply read after the announcement is answered 503 now, and the client's retry (the
/// same nonce) is appended once, on the new primary.
#[test]
fn sentinel_a_reply_from_a_primary_the_sentinels_replaced_is_not_a_202() {
    use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient};
    let old = RedisServer::start();
    let new = RedisServer::start_replica_of(&old);
    let sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start(&old)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    // Long enough that the frozen primary's round is still awaited when it is thawed.
    let p = through_sentinels(&sentinels, |c| c.redis.reply_timeout_ms = 60_000);
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    new.wait_synced();
    let body = format!("[{}]", event("level_start", "in-flight"));
    let headers =
        signed_headers(crate::fixture::GAME, crate::fixture::SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let signal = |sig: &str| {
        let pid = old.pid().expect("old primary running").to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success()));
    };
    signal("-STOP");
    let addr = p.ingest.addr;
    let (h, b) = (headers.clone(), body.clone());
    let in_flight =
        std::thread::spawn(move || HttpClient::connect(addr).request("POST", "/api/ingest/events", &h, b.as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    ask_failover(&sentinels[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinels.iter().any(|s| s.primary_port() != Some(new.port)) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Ingest hears the announcement (its subscription), then the old primary answers.
    std::thread::sleep(Duration::from_millis(1_000));
    signal("-CONT");
    let r = in_flight.join().expect("request thread");
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // The retry, as sent (again on 503, as a client does): appended once, on the new primary.
    let before = events_added(&new);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let again = HttpClient::connect(addr).request("POST", "/api/ingest/events", &headers, body.as_bytes());
        if again.status == 202 {
            break;
        }
        assert!(again.status == 503 && Instant::now() < deadline, "{} {}", again.status, again.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(events_added(&new) - before, 1);
    p.wait_for(1, "the retried event in ClickHouse", |p| {
        p.scalar("SELECT count() FROM analytics.events WHERE user_id = 'in-flight'")
    });
}

/// `SENTINEL FAILOVER` promotes the replica while the old primary stays up: the sentinels
/// make it a replica only some seconds later (after `+switch-master` they wait 8 s and an
/// `INFO` before they reconfigure it). Meanwhile it is a primary and accepts every write,
/// which it throws away once it resyncs from the new one: nothing refuses them, so
/// following on errors alone would keep appending there (and answering 202) for those
/// seconds. Ingest and the worker follow the sentinels' announcement: a second after it,
/// every request is appended to the new primary and none to the old, at most the requests
/// queued at the instant of the move were refused (503, sent again), and the worker reads
/// them there into ClickHouse.
#[test]
fn sentinel_switch_master_moves_ingest_while_the_old_primary_still_takes_writes() {
    let old = RedisServer::start();
    let new = RedisServer::start_replica_of(&old);
    let sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start(&old)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let p = through_sentinels(&sentinels, |_| {});

    // The replica counts the appends it receives as the primary does.
    for _ in 0..3 {
        assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while events_added(&new) != 3 {
        assert!(Instant::now() < deadline, "the replica has {} of 3 appends", events_added(&new));
        std::thread::sleep(Duration::from_millis(10));
    }

    // Steady traffic across the failover.
    let load = Load::start(p.ingest.addr, Duration::from_millis(20));
    load.wait_more(20, "before the failover");
    ask_failover(&sentinels[0]);
    let asked = Instant::now();
    let deadline = asked + Duration::from_secs(20);
    while sentinels[0].primary_port() != Some(new.port) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let announced = Instant::now();
    let failover = announced - asked;
    load.wait_more(10, "after the failover");
    let done = load.finish();
    // Only what was queued on a connection at the instant it moved is refused (503: the
    // client retries); a request's commands never span two primaries.
    assert!(
        done.refused <= 2,
        "{} of {} requests refused across the failover: more than the move's instant",
        done.refused,
        done.requests
    );

    // A second after the announcement, every request goes to the new primary.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(announced.elapsed()));
    let (old_before, new_before) = (events_added(&old), events_added(&new));
    for i in 0..20 {
        let body = format!("[{}]", event("level_start", &format!("after-switch-{i}")));
        assert_eq!(p.ingest.post("/api/ingest/events", &body).status, 202);
    }
    // Still a writable primary: an error would not have moved ingest yet.
    assert_eq!(role(&old), "master", "the old primary was reconfigured before the test was done");
    assert_eq!(role(&new), "master");
    assert_eq!(events_added(&new) - new_before, 20, "every request after the announcement is on the new primary");
    assert_eq!(events_added(&old), old_before, "nothing more was appended to the old primary");
    // Only the new primary has them: the worker moved there too.
    p.wait_for(20, "events sent after the announcement in ClickHouse", |p| {
        p.scalar("SELECT uniqExact(user_id) FROM analytics.events WHERE user_id LIKE 'after-switch-%'")
    });
    // With `wait_replicas = 0` the appends between the promotion and the announcement
    // went to the old primary and are lost with its resync (docs/redis-topologies.md).
    let sent = i64::try_from(done.requests).unwrap_or(i64::MAX);
    eprintln!(
        "{} requests during the load, all 202; {} of them are not on the new primary; \
         the failover was announced {failover:?} after it was asked for",
        done.requests,
        sent + 3 - new_before
    );
}

/// The sentinel holding the `+switch-master` subscriptions of ingest and the worker is
/// frozen (SIGSTOP: its connections stay open and nothing is answered, so a subscription
/// hears nothing until it gives the sentinel up for silence) and another sentinel is
/// asked for a failover. The announcement is missed; the other sentinels name the new
/// primary at a higher configuration epoch, and ingest follows them within a few seconds,
/// while the old primary is still a writable primary (no error would have moved it: it
/// takes and loses every write until the sentinels make it a replica, 8 s and more later).
/// Then the only sentinel to answer is one with the old configuration (told to monitor
/// the old primary afresh, the others frozen): ingest stays on the new primary, even when
/// its connections there are closed and made again.
#[test]
fn sentinel_failover_missed_by_a_frozen_subscribed_sentinel_is_followed_by_its_epoch() {
    let old = RedisServer::start();
    let new = RedisServer::start_replica_of(&old);
    let sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start(&old)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let p = through_sentinels(&sentinels, |_| {});
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);

    // The sentinels holding the subscriptions (ingest's and the worker's) are frozen; one
    // of the others is asked for the failover.
    let deadline = Instant::now() + Duration::from_secs(10);
    let subscribed = loop {
        let counts: Vec<usize> = sentinels.iter().map(SentinelServer::subscribers).collect();
        if counts.iter().sum::<usize>() >= 2 {
            break counts;
        }
        assert!(Instant::now() < deadline, "subscriptions per sentinel: {counts:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let asked = subscribed.iter().position(|n| *n == 0).expect("a sentinel without subscriptions");
    for (s, _) in sentinels.iter().zip(&subscribed).filter(|(_, n)| **n > 0) {
        s.freeze();
    }
    ask_failover(&sentinels[asked]);
    let started = Instant::now();

    // Requests one after another: each is appended to the old primary (which the new one
    // no longer copies once promoted) or to the new one only. Within 5 s of the failover
    // being asked for, 10 in a row are on the new primary.
    let (mut in_a_row, mut requests, mut refused) = (0, 0, 0);
    let mut followed = None;
    let mut refusals = Vec::new();
    while followed.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ingest still appends to the old primary 5 s after the failover was asked for \
             ({requests} requests, {refused} refused; the sentinel asked names port {:?}, the new primary is {})",
            sentinels[asked].primary_port(),
            new.port
        );
        let (old_before, new_before) = (events_added(&old), events_added(&new));
        requests += 1;
        match p.ingest.post("/api/ingest/events", &events(1)).status {
            202 => {}
            503 => {
                // Refused at the move (the round queued then); the client retries.
                refused += 1;
                refusals.push(started.elapsed());
                continue;
            }
            other => panic!("unexpected status {other}"),
        }
        if events_added(&old) == old_before && events_added(&new) == new_before + 1 {
            in_a_row += 1;
            if in_a_row == 10 {
                followed = Some(started.elapsed());
            }
        } else {
            in_a_row = 0;
        }
    }
    // No error moved it: the old primary still takes writes.
    assert_eq!(role(&old), "master", "the old primary was made a replica before ingest moved");

    // A sentinel with an older configuration: a frozen one goes on and is told to monitor
    // the old primary afresh (epoch 0, as one that never heard of the failover), and the
    // others are frozen, so that it stays so and is the only one to answer (the
    // subscription, given up for silence, is made again on it). Croupier asks it every
    // second and never goes back.
    // The others are frozen before it goes on: a hello from one of them would tell it of
    // the failover.
    let stale = sentinels.iter().zip(&subscribed).find(|(_, n)| **n > 0).map(|(s, _)| s).expect("frozen");
    let others: Vec<&SentinelServer> = sentinels.iter().filter(|s| s.port != stale.port).collect();
    for s in &others {
        s.freeze();
    }
    stale.thaw();
    let mut c = RedisClient::connect(stale.port).expect("sentinel");
    c.cmd(&["SENTINEL", "REMOVE", MASTER_NAME]);
    c.cmd(&["SENTINEL", "MONITOR", MASTER_NAME, "127.0.0.1", &old.port.to_string(), "2"]);
    let thawed = Instant::now();
    let (old_before, new_before) = (events_added(&old), events_added(&new));
    let (mut after, mut after_kill, mut killed) = (0, 0, false);
    while thawed.elapsed() < Duration::from_secs(5) {
        assert_eq!(stale.primary_port(), Some(old.port), "the sentinel was to name the old primary");
        if p.ingest.post("/api/ingest/events", &events(1)).status == 202 {
            after += 1;
            if killed {
                after_kill += 1;
            }
        }
        // Every connection to the new primary is closed once: they connect again, asking
        // the sentinels, and the only one to answer names the old primary.
        if !killed && thawed.elapsed() >= Duration::from_secs(1) {
            killed = true;
            new.client().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(events_added(&old), old_before, "a sentinel with the old configuration moved ingest back");
    assert_eq!(events_added(&new) - new_before, after, "every request meanwhile is on the new primary");
    // The connections were made again, to the new primary: ingest did not stop.
    assert!(after_kill >= 10, "only {after_kill} requests answered 202 after the connections were closed");
    assert_eq!(role(&old), "master", "the old primary was made a replica before the test was done");
    for s in &others {
        s.thaw();
    }
    // Requests that came while a connection moved (connect, `ROLE`, the consumer groups)
    // were refused 503, as during any reconnect; the client retries.
    eprintln!(
        "followed {followed:?} after the failover was asked for; {requests} requests, {refused} refused \
         at {refusals:?}; then {after} requests on the new primary ({after_kill} after its connections \
         were closed) while the only sentinel to answer named the old one"
    );
}

/// Asks `sentinel` for a failover, again while it may not have checked the replica
/// recently enough, until it starts one (or one is in progress).
pub(crate) fn ask_failover(sentinel: &SentinelServer) {
    let mut s = RedisClient::connect(sentinel.port).expect("sentinel");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.try_cmd(&["SENTINEL", "FAILOVER", MASTER_NAME]).expect("SENTINEL FAILOVER") {
            Frame::SimpleString(_) => return,
            Frame::Error(e) if e.starts_with("INPROG") => return,
            other => {
                assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Requests one after another until `n` in a row are appended to `to` (and none to `from`,
/// when given, meanwhile), within `bound` of `since`; how long after `since` that was.
/// Requests refused 503 (a connection moving) are sent again.
fn in_a_row_on(
    p: &Pipeline,
    n: usize,
    from: Option<&RedisServer>,
    to: &RedisServer,
    since: Instant,
    bound: Duration,
) -> Duration {
    let (mut in_a_row, mut requests, mut refused) = (0, 0, 0);
    loop {
        assert!(
            since.elapsed() < bound,
            "not {n} requests in a row on port {} within {bound:?} ({requests} requests, {refused} refused)",
            to.port
        );
        let (from_before, to_before) = (from.map(events_added), events_added(to));
        requests += 1;
        match p.ingest.post("/api/ingest/events", &events(1)).status {
            202 => {}
            503 => {
                refused += 1;
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            other => panic!("unexpected status {other}"),
        }
        if from.map(events_added) == from_before && events_added(to) == to_before + 1 {
            in_a_row += 1;
            if in_a_row == n {
                return since.elapsed();
            }
        } else {
            in_a_row = 0;
        }
    }
}

/// Sentinels with a history (epoch 3) are all told to monitor another server under the
/// name (`SENTINEL REMOVE` and `MONITOR`: its epoch is 0, lower than the one ingest
/// recorded), and the primary ingest recorded is killed at once. The connections cannot
/// reach it, and the sentinels name the other server: ingest goes there, its first request
/// within 3 s (before the majority of sentinels has named it for long enough to be taken
/// anyway), then every request.
/// Before, every reconnect went to the recorded primary, dead, and ingest answered 503
/// until it was restarted.
#[test]
fn sentinel_recorded_primary_gone_while_every_sentinel_names_another_at_epoch_0() {
    let mut old = RedisServer::start();
    let replica = RedisServer::start_replica_of(&old);
    let sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start_at_epoch(&old, 3)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let other = RedisServer::start();
    let p = through_sentinels(&sentinels, |_| {});
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    // Asked every second: the old primary is recorded at epoch 3.
    std::thread::sleep(Duration::from_millis(1_500));

    for s in &sentinels {
        let mut c = RedisClient::connect(s.port).expect("sentinel");
        c.cmd(&["SENTINEL", "REMOVE", MASTER_NAME]);
        c.cmd(&["SENTINEL", "MONITOR", MASTER_NAME, "127.0.0.1", &other.port.to_string(), "2"]);
    }
    old.stop();
    let killed = Instant::now();
    // The first request stored there within 3 s: sooner than the majority's rounds could
    // have taken it (5 rounds of 1 s from the MONITOR). Then 10 in a row, as the other
    // connections follow (a bound only against hanging: the rule is shown above).
    let first = in_a_row_on(&p, 1, None, &other, killed, Duration::from_secs(3));
    let took = in_a_row_on(&p, 10, None, &other, killed, Duration::from_secs(15));
    drop(replica);
    eprintln!(
        "the first request on the server the sentinels name {first:?}, 10 in a row {took:?} after the recorded primary died"
    );
}

/// Sentinels with a history (epoch 3) are all deployed afresh (new configuration files:
/// their epochs start again at 0) while the primary stays, then asked for a failover
/// (`SENTINEL FAILOVER`: the old primary stays a writable primary for seconds). Ingest took
/// their older epoch once most of them named it for 5 rounds, and follows the failover
/// (at their epoch 1) as any: within 5 s of the failover being asked for, 10 requests in
/// a row are on the new primary and none on the old, still a primary. Before, their epoch
/// 1 was lower than the recorded 3: ingest stayed on the old primary.
#[test]
fn sentinel_failover_after_the_sentinels_were_deployed_afresh_is_followed() {
    let old = RedisServer::start();
    let new = RedisServer::start_replica_of(&old);
    let mut sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start_at_epoch(&old, 3)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let p = through_sentinels(&sentinels, |_| {});
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    std::thread::sleep(Duration::from_millis(1_500));

    // All of them at once: one started afresh among the others would take their epoch.
    for s in &mut sentinels {
        s.kill();
    }
    for s in &mut sentinels {
        s.start_afresh(&old);
    }
    let restarted = Instant::now();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    // Time for ingest to connect to them again (its pause after a failed connect doubles
    // up to 8 s) and hear 5 rounds of their answers.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(restarted.elapsed()));

    ask_failover(&sentinels[0]);
    let asked = Instant::now();
    let took = in_a_row_on(&p, 10, Some(&old), &new, asked, Duration::from_secs(5));
    // No error moved it: the old primary still takes writes.
    assert_eq!(role(&old), "master", "the old primary was made a replica before ingest moved");
    eprintln!("followed {took:?} after the failover was asked for");
}

/// The sentinels require a password; one that no process subscribes to is frozen
/// (SIGSTOP: its kernel accepts connections, `AUTH` is never answered). Asking it ties up
/// nothing else: the subscriptions on the others hold (the same clients, 12 s later), and
/// a `SENTINEL FAILOVER` asked of another is followed within 4 s while the old primary is
/// still a writable primary. Before, the thread that held the subscription also asked the
/// sentinels, and waited there for the frozen one's `AUTH` reply for the connect timeout:
/// the subscription was given up as silent, and following was late by as much.
#[test]
fn sentinel_a_frozen_sentinel_with_a_password_holds_up_neither_subscription_nor_following() {
    const PASSWORD: &str = "sentinel-pass";
    let old = RedisServer::start();
    let new = RedisServer::start_replica_of(&old);
    let sentinels: Vec<SentinelServer> =
        (0..3).map(|_| SentinelServer::start_with_auth(&old, None, Some(PASSWORD))).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let p = through_sentinels_with(
        &sentinels,
        |c| {
            c.redis.sentinel_password = Some(croupier_control::config::Secret::from(PASSWORD));
            // The default, as the worker's: the longest a connect or `AUTH` may take.
            c.redis.reply_timeout_ms = 5_000;
        },
        &[("CROUPIER_REDIS__SENTINEL_PASSWORD", PASSWORD)],
    );
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let subscribed = loop {
        let ids: Vec<Vec<u64>> = sentinels.iter().map(SentinelServer::subscriber_ids).collect();
        if ids.iter().map(Vec::len).sum::<usize>() >= 2 {
            break ids;
        }
        assert!(Instant::now() < deadline, "subscriptions per sentinel: {ids:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let frozen = subscribed.iter().position(Vec::is_empty).expect("a sentinel without subscriptions");
    sentinels[frozen].freeze();
    // Its connections go unanswered for 3 s (asked within a second), then are made again:
    // connected, and `AUTH` waits for a reply for the connect timeout (5 s).
    std::thread::sleep(Duration::from_secs(12));
    let now: Vec<Vec<u64>> =
        sentinels.iter().enumerate().map(|(i, s)| if i == frozen { Vec::new() } else { s.subscriber_ids() }).collect();
    assert_eq!(now, subscribed, "the subscriptions were not held while a frozen sentinel was asked");

    let asked = sentinels.iter().enumerate().position(|(i, _)| i != frozen).expect("another sentinel");
    ask_failover(&sentinels[asked]);
    let started = Instant::now();
    let took = in_a_row_on(&p, 10, Some(&old), &new, started, Duration::from_secs(4));
    assert_eq!(role(&old), "master", "the old primary was made a replica before ingest moved");
    sentinels[frozen].thaw();
    eprintln!("followed {took:?} after the failover was asked for, one sentinel frozen");
}

/// Every sentinel is down (killed) while the primary stays healthy, and the primary drops
/// every client connection (`CLIENT KILL TYPE normal`): the connections made again go to
/// the primary the watch recorded, since no sentinel answers, and ingest is back on it
/// within 5 s. Before, a connection made again needed a sentinel's answer: every request
/// was refused until the sentinels came back.
#[test]
fn sentinel_all_sentinels_down_connections_made_again_go_to_the_recorded_primary() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let mut sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start(&primary)).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let p = through_sentinels(&sentinels, |_| {});
    assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    // Asked every second: the primary is recorded.
    std::thread::sleep(Duration::from_millis(1_500));
    for s in &mut sentinels {
        s.kill();
    }
    primary.client().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    let killed = Instant::now();
    let took = in_a_row_on(&p, 10, None, &primary, killed, Duration::from_secs(5));
    drop(replica);
    eprintln!("10 requests in a row on the recorded primary {took:?} after every sentinel was down");
}
