//! Partitioned streams (`streams.partitions`) on one Redis and on a Redis Cluster of 6
//! `redis-server` processes (3 primaries, 3 replicas) on loopback: traffic across the
//! partitions lands in ClickHouse once; a primary killed under load with
//! `wait_replicas = 1` loses no event answered 202, and with `wait_replicas = 0` loses
//! exactly the appends its replica had not received.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use croupier_control::config::Driver;
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::cluster::RedisCluster;
use croupier_it::http::{now_secs, HttpClient};
use croupier_it::redis::RedisServer;
use croupier_protocol::cluster::Partitions;
use croupier_protocol::stream::StreamKind;

use crate::fixture::{xlen, Fixture, GAME, SECRET};
use crate::load::{Load, Sent, PER_REQUEST};
use crate::pipeline::{croupier, env, Pipeline};

/// A pipeline whose ingest and worker use the cluster of `seeds` with `partitions`.
fn cluster_pipeline(
    seeds: &[String],
    partitions: u16,
    tweak: impl FnOnce(&mut croupier_control::config::Config),
) -> Pipeline {
    cluster_pipeline_with(seeds, partitions, tweak, &[])
}

/// [`cluster_pipeline`], the worker with `worker_env` too.
pub(crate) fn cluster_pipeline_with(
    seeds: &[String],
    partitions: u16,
    tweak: impl FnOnce(&mut croupier_control::config::Config),
    worker_env: &[(&str, &str)],
) -> Pipeline {
    let clickhouse = ClickHouseServer::start();
    let list = seeds.to_vec();
    // `redis.addr` names nothing: only the cluster's nodes are used.
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |c| {
        c.redis.addr = "127.0.0.1:1".into();
        c.redis.cluster = list;
        c.redis.reply_timeout_ms = 1_000;
        c.streams.partitions = partitions;
        tweak(c);
    });
    let (ok, out) = croupier(&["migrate"], &env(&ingest.redis, &clickhouse));
    assert!(ok, "croupier migrate failed: {out}");
    let mut p = Pipeline { ingest, clickhouse, worker: None };
    start_cluster_worker(&mut p, seeds, partitions, worker_env);
    p
}

/// Starts the pipeline's worker on the cluster of `seeds` with `partitions` (and `extra`).
fn start_cluster_worker(p: &mut Pipeline, seeds: &[String], partitions: u16, extra: &[(&str, &str)]) {
    let seeds = format!("[{}]", seeds.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","));
    let partitions = partitions.to_string();
    let mut worker = vec![
        ("CROUPIER_REDIS__ADDR", "127.0.0.1:1"),
        ("CROUPIER_REDIS__CLUSTER", seeds.as_str()),
        ("CROUPIER_STREAMS__PARTITIONS", partitions.as_str()),
    ];
    worker.extend_from_slice(extra);
    p.start_worker(&worker);
}

#[test]
fn three_partitions_on_one_redis_land_once_and_a_retry_is_a_duplicate() {
    let mut p = Pipeline::start_with(&[], |c| c.streams.partitions = 3);
    p.start_worker(&[("CROUPIER_STREAMS__PARTITIONS", "3")]);
    let addr = p.ingest.addr;
    let mut sent: Vec<Sent> = (0..30).map(|_| Sent::new()).collect();
    for s in &mut sent {
        s.send(addr);
        assert_eq!(s.status, 202);
    }
    // The same request again: its nonce is in its partition, found there.
    sent[0].send(addr);
    assert_eq!(sent[0].status, 202);
    let parts = Partitions::new(3);
    let per: Vec<i64> = (0..3).map(|i| xlen(&p.ingest.redis, parts.stream(i, StreamKind::Events))).collect();
    assert_eq!(per.iter().sum::<i64>(), 30, "one entry per request, the retry appended nothing: {per:?}");
    assert!(per.iter().all(|n| *n > 0), "every partition took requests: {per:?}");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events"), 0, "no entry under the unpartitioned key");
    let events = (30 * PER_REQUEST) as u64;
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    assert_eq!(p.distinct_events(), events);
    // Acknowledged after the insert: waited for.
    p.wait_for(0, "entries pending", |p| {
        (0..3).map(|i| p.pending(parts.stream(i, StreamKind::Events))).sum::<i64>() as u64
    });
}

/// A primary of the cluster gone (no replica to take over; the others serve their slots):
/// the requests routed to its partition are refused, the others' taken, and the node
/// stays ready (a load balancer taking every node out would refuse them all) — also when
/// the cluster agrees the primary failed and ingest reads the map without its slots,
/// which leaves the other partitions' backlog readings standing. The backlog is read
/// every second here, so a node that forgot them would be unready until the next reading.
#[test]
fn a_primary_gone_refuses_only_its_partitions_requests_and_leaves_the_node_ready() {
    let mut cluster = RedisCluster::primaries_only(3);
    let p = cluster_pipeline(&cluster.seeds(), 3, |c| c.redis.backlog_poll_ms = 1_000);
    let addr = p.ingest.addr;
    let ready = || p.ingest.client().request("GET", "/readyz", &[], b"").status;
    assert_eq!(ready(), 200);
    let gone = cluster.primary_of(Partitions::new(3).stream(0, StreamKind::Events)).expect("served");
    cluster.nodes[gone].stop();
    // The others find it failed after the node timeout (1 s), a shard's readings after that.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut taken, mut refused) = (0, 0);
    while taken == 0 || refused == 0 || ready() != 200 {
        assert!(Instant::now() < deadline, "{taken} taken, {refused} refused, /readyz {}", ready());
        let mut s = Sent::new();
        s.send(addr);
        match s.status {
            202 => taken += 1,
            _ => refused += 1,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ready for a while, not by chance of one probe, through the moment the cluster flags
    // the primary failed and ingest reads the map without it (up to its 800 ms pause
    // between unchanged readings); meanwhile exactly the requests routed to the gone
    // primary's partition are refused. Partition 0's primary was stopped; each of the
    // three primaries serves one partition (`cluster_traffic_across_partitions_lands_once`).
    let gone_partition = 0;
    let probe = |round: usize| {
        let r = p.ingest.client().request("GET", "/readyz", &[], b"");
        assert_eq!(r.status, 200, "round {round}: {}", String::from_utf8_lossy(&r.body));
        let mut s = Sent::new();
        s.send(addr);
        let key = croupier_dataplane::auth::nonce_key(GAME, s.nonce());
        let partition = croupier_protocol::cluster::partition_of(&key, 3);
        assert_eq!(s.status == 202, partition != gone_partition, "round {round}, partition {partition}: {}", s.status);
        std::thread::sleep(Duration::from_millis(20));
    };
    for round in 0..5 {
        probe(round);
    }
    cluster.wait_failed(gone, Duration::from_secs(20));
    let until = Instant::now() + Duration::from_millis(2_500);
    let mut round = 5;
    while Instant::now() < until {
        probe(round);
        round += 1;
    }
}

/// `streams.partitions` changed while entries waited: ingest wrote with 3 partitions, the
/// worker is configured with 2. Ingest records its count (`croupier:partitions`), and the
/// worker reads the streams of every count recorded: nothing is stranded in the old ones.
#[test]
fn a_worker_with_another_partition_count_drains_the_streams_ingest_wrote() {
    let mut p = Pipeline::start_with(&[], |c| c.streams.partitions = 3);
    let addr = p.ingest.addr;
    let mut sent: Vec<Sent> = (0..12).map(|_| Sent::new()).collect();
    for s in &mut sent {
        s.send(addr);
        assert_eq!(s.status, 202);
    }
    let layouts = p.ingest.redis.client().cmd(&["ZRANGE", "croupier:partitions", "0", "-1"]);
    assert_eq!(croupier_protocol::cluster::layouts(&layouts), [3], "{layouts:?}");
    p.start_worker(&[("CROUPIER_STREAMS__PARTITIONS", "2")]);
    let events = (12 * PER_REQUEST) as u64;
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    let old = Partitions::new(3);
    // Acknowledged once inserted, in the old partitions' groups.
    p.wait_for(0, "entries of the old partitions pending", |p| {
        (0..3).map(|i| p.pending(old.stream(i, StreamKind::Events))).sum::<i64>() as u64
    });
}

/// An old count's partitions that took only payments (no event) are drained too: a
/// partition is read when any of its three streams holds entries.
#[test]
fn a_worker_drains_the_payments_only_partitions_of_another_count() {
    let mut p = Pipeline::start_with(&[], |c| c.streams.partitions = 3);
    let mut c = p.ingest.client();
    for _ in 0..9 {
        let body = crate::metrics::payments(1);
        let r = crate::fixture::post_signed(&mut c, "/api/ingest/payments", GAME, SECRET, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    p.start_worker(&[("CROUPIER_STREAMS__PARTITIONS", "2")]);
    p.wait_for(9, "payments in ClickHouse", |p| p.scalar("SELECT count() FROM analytics.payments"));
}

/// A count recorded by mistake (`ZADD croupier:partitions … 1000`, as an ingest started with
/// a typo would) costs a worker no consumer for its empty partitions: its connections stay
/// those of its own streams (a black-box run saw 5,000 per worker, and Redis at its
/// `maxclients` for every client).
#[test]
fn a_stray_partition_count_opens_no_consumers() {
    let mut p = Pipeline::start(&[]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["ZADD", "croupier:partitions", "1", "1000"]);
    let clients = |r: &mut croupier_it::redis::RedisClient| match r.cmd(&["CLIENT", "LIST"]) {
        croupier_protocol::resp::Frame::BulkString(b) => String::from_utf8_lossy(&b).lines().count(),
        other => panic!("CLIENT LIST: {other:?}"),
    };
    let before = clients(&mut r);
    p.start_worker(&[]);
    // The worker's first look is at its start; give it that and a request's round trip.
    let mut sent = Sent::new();
    sent.send(p.ingest.addr);
    assert_eq!(sent.status, 202);
    p.wait_for(PER_REQUEST as u64, "the request's events", Pipeline::distinct_events);
    // Consumers connect as they start: counted once they would have.
    std::thread::sleep(Duration::from_secs(2));
    let worker = clients(&mut r) - before;
    assert!(worker < 40, "{worker} connections for one worker shard reading 3 streams");
}

#[test]
fn cluster_traffic_across_partitions_lands_once() {
    let cluster = RedisCluster::start(3, 1);
    let p = cluster_pipeline(&cluster.seeds(), 3, |_| {});
    let addr = p.ingest.addr;
    let mut sent: Vec<Sent> = (0..30).map(|_| Sent::new()).collect();
    for s in &mut sent {
        s.send(addr);
        assert_eq!(s.status, 202);
    }
    sent[0].send(addr);
    assert_eq!(sent[0].status, 202, "a retry");
    let parts = Partitions::new(3);
    let keys: Vec<&str> = (0..3).map(|i| parts.stream(i, StreamKind::Events)).collect();
    let owners: BTreeSet<usize> = keys.iter().map(|k| cluster.primary_of(k).expect("served")).collect();
    assert_eq!(owners.len(), 3, "the three partitions are on the three primaries");
    let per: Vec<i64> = keys.iter().map(|k| cluster.xlen(k)).collect();
    assert_eq!(per.iter().sum::<i64>(), 30, "one entry per request: {per:?}");
    assert!(per.iter().all(|n| *n > 0), "every primary took requests: {per:?}");
    let events = (30 * PER_REQUEST) as u64;
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    assert_eq!(p.distinct_events(), events);
    // Every partition's entries were acknowledged by the workers.
    p.wait_for(0, "entries pending", |_| keys.iter().map(|k| cluster.pending(k)).sum::<i64>() as u64);
    // Custom events: each partition's events consumer reads its custom stream with its own
    // (one XREADGROUP over two keys of one slot) and acknowledges them there.
    let mut c = p.ingest.client();
    for k in 0..30 {
        let body = format!("[{}]", crate::fixture::event("boss_killed", &format!("custom-{k}")));
        let r = crate::fixture::post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let custom: Vec<&str> = (0..3).map(|i| parts.stream(i, StreamKind::Custom)).collect();
    assert_eq!(custom.iter().map(|k| cluster.xlen(k)).sum::<i64>(), 30);
    assert!(custom.iter().filter(|k| cluster.xlen(k) > 0).count() >= 2, "custom events on more than one partition");
    p.wait_for(events + 30, "custom events in ClickHouse too", Pipeline::distinct_events);
    p.wait_for(0, "custom entries pending", |_| custom.iter().map(|k| cluster.pending(k)).sum::<i64>() as u64);
}

#[test]
fn cluster_primary_killed_under_load_loses_no_202_with_wait_replicas_1() {
    let mut cluster = RedisCluster::start(3, 1);
    let p = cluster_pipeline(&cluster.seeds(), 3, |c| {
        c.redis.wait_replicas = 1;
        c.redis.wait_timeout_ms = 500;
    });
    let load = Load::start(p.ingest.addr, Duration::from_millis(20));
    load.wait_more(30, "before the kill");
    // Partition 0's primary dies mid-load; the cluster promotes its replica.
    let key = Partitions::new(3).stream(0, StreamKind::Events).to_owned();
    let victim = cluster.primary_of(&key).expect("a primary");
    cluster.nodes[victim].stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.primary_of(&key).is_none_or(|n| n == victim) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old primary comes back as the new one's replica: appends are confirmed again.
    cluster.nodes[victim].restart();
    cluster.nodes[victim].wait_synced();
    load.wait_more(30, "after the failover");
    let done = load.finish();
    let events = done.events();
    // Each event has a user of its own: every one is in ClickHouse, including every one
    // answered 202 during the load (none of those was sent again).
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    assert_eq!(p.distinct_events(), events, "one row per event");
    eprintln!("{} requests, {} sent again", done.requests, done.refused);
}

/// With `wait_replicas = 0` (the default) ingest answers 202 once the partition's primary
/// has the append; what its replica has not received yet when the primary dies is lost.
/// The test makes that window certain and counts the loss: the replica of partition 0's
/// primary is frozen (SIGSTOP) and its link dropped while 30 requests are answered 202, that primary is
/// killed, the replica thawed and promoted. Exactly the entries partition 0 took during
/// the freeze are gone from its stream and from ClickHouse; everything else is there.
/// With `wait_replicas = 1` such requests are refused (503) instead (the test above),
/// which the client retries.
#[test]
fn cluster_primary_killed_with_wait_replicas_0_loses_the_202s_its_replica_missed() {
    let mut cluster = RedisCluster::start(3, 1);
    let mut p = cluster_pipeline(&cluster.seeds(), 3, |c| c.redis.wait_replicas = 0);
    let addr = p.ingest.addr;
    // Each request is sent until it is answered 202 (ingest may refuse one while it learns
    // the slot map): one entry per request.
    let send = |n: usize| {
        for _ in 0..n {
            let mut s = Sent::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            s.send(addr);
            while s.status != 202 {
                assert!(Instant::now() < deadline, "a retry was not accepted: {}", s.status);
                std::thread::sleep(Duration::from_millis(50));
                s.send(addr);
            }
        }
    };
    let users = |p: &Pipeline| p.scalar("SELECT uniqExact(user_id) FROM analytics.events");
    send(10);
    p.wait_for((10 * PER_REQUEST) as u64, "users in ClickHouse", users);
    // No worker reads the next entries from the primary before it dies.
    p.kill_worker();
    let key = Partitions::new(3).stream(0, StreamKind::Events).to_owned();
    let victim = cluster.primary_of(&key).expect("a primary");
    let victim_port = cluster.nodes[victim].port.to_string();
    let replica = (cluster.primaries..cluster.nodes.len())
        .find(|&i| match cluster.nodes[i].client().cmd(&["INFO", "replication"]) {
            croupier_protocol::resp::Frame::BulkString(b) => {
                String::from_utf8_lossy(&b).contains(&format!("master_port:{victim_port}"))
            }
            _ => false,
        })
        .expect("the victim's replica");
    cluster.nodes[replica].wait_synced();
    let kept = cluster.xlen(&key);
    let replica_pid = cluster.nodes[replica].pid().expect("replica running");
    signal(replica_pid, "STOP");
    // The primary drops its link to the frozen replica, which cannot connect again: what
    // follows exists on the primary alone (left linked, the kernel's socket buffers would
    // still carry it to the replica once thawed).
    let dropped = cluster.nodes[victim].client().cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(dropped, croupier_protocol::resp::Frame::Integer(1), "the replica's link dropped");
    send(30);
    let lost = cluster.xlen(&key) - kept;
    assert!(lost > 0, "no request of 30 went to partition 0");
    cluster.nodes[victim].stop();
    signal(replica_pid, "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.primary_of(&key).is_none_or(|n| n != replica) {
        assert!(Instant::now() < deadline, "the replica was not promoted within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The promoted replica has partition 0's entries of before the freeze, none of after.
    assert_eq!(cluster.xlen(&key), kept, "partition 0's entries on the promoted replica");
    start_cluster_worker(&mut p, &cluster.seeds(), 3, &[]);
    send(5);
    // ClickHouse holds every event answered 202 but those of the lost entries.
    let want = ((10 + 30 + 5 - lost as usize) * PER_REQUEST) as u64;
    p.wait_for(want, "users in ClickHouse", users);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(users(&p), want, "events in ClickHouse: {lost} entries of 30 lost");
    eprintln!("wait_replicas = 0: {lost} of 30 requests answered 202 were lost with the primary");
}

/// `kill -<sig> <pid>`.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

/// Review finding: in a Redis Cluster each primary's connection stamped an owed reply of
/// its own, which the data port's `/readyz` did not read: with a primary frozen (SIGSTOP)
/// it answered 200 until the reply timeout. It now answers 503 once a reply from the
/// primary is overdue (a quarter of the 5 s reply timeout), and 200 once it answers.
#[test]
fn cluster_frozen_primary_fails_data_readyz_before_the_reply_timeout() {
    let cluster = RedisCluster::primaries_only(3);
    let list = cluster.seeds();
    // `redis.addr` names nothing: only the cluster's nodes are used.
    let f = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |c| {
        c.redis.addr = "127.0.0.1:1".into();
        c.redis.cluster = list;
        c.redis.reply_timeout_ms = 5_000;
        c.streams.partitions = 3;
    });
    let readyz = || -> Vec<(u16, String)> {
        // A new connection per probe lands on either shard.
        (0..6)
            .map(|_| {
                let r = f.client().request("GET", "/readyz", &[], b"");
                (r.status, r.error_tag())
            })
            .collect()
    };
    let key = Partitions::new(3).stream(0, StreamKind::Events).to_owned();
    let victim = cluster.primary_of(&key).expect("a primary");
    let pid = cluster.nodes[victim].pid().expect("the primary's pid");
    signal(pid, "STOP");
    let t = Instant::now();
    let frozen = loop {
        let seen = readyz();
        if seen.iter().all(|s| *s == (503, "redis_unavailable".to_owned())) {
            break None;
        }
        if t.elapsed() > Duration::from_millis(3_000) {
            break Some(seen);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let waited = t.elapsed();
    signal(pid, "CONT");
    assert_eq!(frozen, None, "data /readyz {waited:?} after the primary froze");
    let t = Instant::now();
    loop {
        let seen = readyz();
        if seen.iter().all(|s| s.0 == 200) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "data /readyz after CONT: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The control port's `/readyz` read the overdue stamps of each shard's one connection,
/// which a cluster's primaries did not write (each has a stamp of its own): with a
/// primary frozen it saw nothing overdue and waited on its own probe's timeout. Each
/// shard's cluster now mirrors the earliest of its primaries' stamps into the shard's.
#[test]
fn cluster_frozen_primary_fails_control_readyz_before_the_reply_timeout() {
    let cluster = RedisCluster::primaries_only(3);
    let seeds = format!("[{}]", cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","));
    let redis = RedisServer::start();
    let c = crate::control::ingest_on(
        &redis,
        &[
            ("CROUPIER_REDIS__ADDR", "127.0.0.1:1"),
            ("CROUPIER_REDIS__CLUSTER", seeds.as_str()),
            ("CROUPIER_STREAMS__PARTITIONS", "3"),
            ("CROUPIER_REDIS__REPLY_TIMEOUT_MS", "5000"),
        ],
    );
    c.wait_data_ready();
    c.wait_control_ready(200);
    let key = Partitions::new(3).stream(0, StreamKind::Events).to_owned();
    let victim = cluster.primary_of(&key).expect("a primary");
    let pid = cluster.nodes[victim].pid().expect("the primary's pid");
    // The shards read the backlog of every partition every 20 ms: replies are owed.
    signal(pid, "STOP");
    // Past a quarter of the reply timeout, the control port answers at once and says
    // which reply is late, without asking Redis.
    std::thread::sleep(Duration::from_millis(1_600));
    let asked = Instant::now();
    let (status, body) = c.control_get("/readyz");
    let took = asked.elapsed();
    signal(pid, "CONT");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overdue"), "{body}");
    assert!(took < Duration::from_millis(500), "control /readyz took {took:?}: {body}");
    c.wait_control_ready(200);
}

/// `cmd` on the primary serving `key`.
fn on_primary(cluster: &RedisCluster, key: &str, cmd: &[&str]) -> croupier_protocol::resp::Frame {
    let n = cluster.primary_of(key).expect("a primary for the key");
    cluster.nodes[n].client().cmd(cmd)
}

/// Real-time aggregation on a Redis Cluster: Croupier's `hll:*` keys of one day lie in
/// several slots (no hash tag), so each key is merged and read on its own slot's primary.
/// N distinct players log in through ingest on the cluster: `PFCOUNT` of the day's DAU key
/// equals a sketch of the same players (Redis's count, exactly) and is within 2 % of N;
/// new users, payers and the online minute too; `daily_users` holds the keys' counts, and
/// no row is left marked unwritten.
#[test]
fn cluster_aggregation_counts_players_in_croupiers_keys() {
    use croupier_dataplane::worker::aggregate::what::{day_of, minute_of, Kind};
    let cluster = RedisCluster::primaries_only(3);
    let p = cluster_pipeline_with(
        &cluster.seeds(),
        3,
        |_| {},
        &[("CROUPIER_AGGREGATE__FLUSH_MS", "200"), ("CROUPIER_AGGREGATE__WRITE_MS", "200")],
    );
    let ts = now_secs() as u64;
    const N: usize = 3_000;
    let mut c = p.ingest.client();
    let post = |c: &mut HttpClient, path: &str, items: Vec<String>| {
        let body = format!("[{}]", items.join(","));
        let r = crate::fixture::post_signed(c, path, GAME, SECRET, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    };
    let event = |name: &str, i: usize| {
        format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","event":"{name}","user_id":"cp-{i}"}}"#)
    };
    for lo in (0..N).step_by(500) {
        post(&mut c, "/api/ingest/events", (lo..lo + 500).map(|i| event("login", i)).collect());
    }
    post(&mut c, "/api/ingest/events", (0..300).map(|i| event("register", i)).collect());
    post(&mut c, "/api/ingest/events", (0..500).map(|i| event("heartbeat", i)).collect());
    let payments: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","user_id":"cp-{}","order_id":"co-{i}","amount_cents":100,"currency":"USD","status":"success"}}"#,
                i % 25
            )
        })
        .collect();
    post(&mut c, "/api/ingest/payments", payments);

    let (ms, day) = (ts as i64 * 1000, day_of(ts as i64 * 1000));
    let key = |kind: Kind| {
        let period = if kind.per_minute() { minute_of(ms) } else { day };
        let mut k = String::new();
        kind.key(GAME, "prod", period, &mut k);
        k
    };
    let keys = [key(Kind::Dau), key(Kind::New), key(Kind::Payers), key(Kind::Online)];
    let slots: BTreeSet<u16> = keys.iter().map(|k| croupier_protocol::cluster::key_slot(k.as_bytes())).collect();
    assert!(slots.len() > 1, "the keys span slots: {slots:?}");
    let pfcount = |k: &str| match on_primary(&cluster, k, &["PFCOUNT", k]) {
        croupier_protocol::resp::Frame::Integer(n) => n as u64,
        _ => 0,
    };
    let oracle = |users: std::ops::Range<usize>| {
        let mut s = croupier_protocol::hll::Sketch::new();
        for i in users {
            s.add(format!("cp-{i}").as_bytes());
        }
        s.count()
    };
    let want = [oracle(0..N), oracle(0..300), oracle(0..25), oracle(0..500)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<u64> = keys.iter().map(|k| pfcount(k)).collect();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "PFCOUNT of {keys:?}: {got:?}, a sketch of the players: {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dau = want[0];
    assert!((dau as f64 - N as f64).abs() <= N as f64 * 0.02, "DAU {dau} for {N} players");
    eprintln!("cluster: PFCOUNT dau/new/payers/online = {want:?} in slots {slots:?}");
    // The tables are written from the keys read back on their primaries.
    let row = format!("{} {} {}", want[0], want[1], want[2]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = p.clickhouse.query(&format!(
            "SELECT dau, new_users, payers FROM analytics.daily_users FINAL WHERE game_id = '{GAME}' \
             AND d = toDate('1970-01-01') + {day} FORMAT TabSeparated"
        ));
        if got.split_whitespace().collect::<Vec<_>>().join(" ") == row {
            break;
        }
        assert!(Instant::now() < deadline, "daily_users {got:?}, keys {row}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = minute_of(ms) as u64 * 60;
    p.wait_for(want[3], "minute_online FINAL", |p| {
        p.scalar(&format!(
            "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
        ))
    });
    let marked = "croupier:aggregate:unwritten";
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_primary(&cluster, marked, &["ZCARD", marked]) != croupier_protocol::resp::Frame::Integer(0) {
        assert!(
            Instant::now() < deadline,
            "rows left marked unwritten: {:?}",
            on_primary(&cluster, marked, &["ZRANGE", marked, "0", "-1", "WITHSCORES"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // TTLs as on one Redis; no scratch key left.
    match on_primary(&cluster, &keys[0], &["TTL", &keys[0]]) {
        croupier_protocol::resp::Frame::Integer(t) => assert!(t > 29 * 86_400, "TTL {t}"),
        other => panic!("TTL: {other:?}"),
    }
    for n in &cluster.nodes {
        assert_eq!(n.client().cmd(&["KEYS", "*:merge"]), croupier_protocol::resp::Frame::Array(vec![]));
    }
}

/// A slot moved between primaries under load (`CLUSTER SETSLOT … MIGRATING/IMPORTING`,
/// `MIGRATE` of its keys in batches, then `SETSLOT … NODE`), as `redis-cli --cluster
/// reshard` does: partition 0's stream, its consumer group and its nonces move from one
/// primary to the other while requests arrive. Commands for keys already moved are
/// redirected with `ASK` (the target primary counts `ASKING` calls), a script whose keys are
/// split between the two gets `TRYAGAIN` (503, retried by the client), and after the move
/// `MOVED`. Every request answered 202 is in ClickHouse once, and the worker acknowledges
/// the moved stream's entries on its new primary.
#[test]
fn cluster_stream_slot_migrated_under_load_loses_no_202() {
    use croupier_protocol::resp::Frame;
    let cluster = RedisCluster::primaries_only(2);
    let p = cluster_pipeline(&cluster.seeds(), 2, |_| {});
    let addr = p.ingest.addr;
    let key = Partitions::new(2).stream(0, StreamKind::Events).to_owned();
    let slot = croupier_protocol::cluster::key_slot(key.as_bytes()).to_string();
    let from = cluster.primary_of(&key).expect("a primary");
    let to = 1 - from;
    let id = |n: usize| match cluster.nodes[n].client().cmd(&["CLUSTER", "MYID"]) {
        Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLUSTER MYID: {other:?}"),
    };
    let (from_id, to_id) = (id(from), id(to));

    let load = Load::start(addr, Duration::ZERO);
    load.wait_more(40, "before the migration");
    let ok = |f: Frame, what: &str| assert_eq!(f, Frame::SimpleString(b"OK".to_vec()), "{what}");
    ok(cluster.nodes[to].client().cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]), "IMPORTING");
    ok(cluster.nodes[from].client().cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]), "MIGRATING");
    // The keys move a few at a time, requests arriving in between.
    let to_port = cluster.nodes[to].port.to_string();
    let mut moved = 0;
    loop {
        let keys = match cluster.nodes[from].client().cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "5"]) {
            Frame::Array(a) => a,
            other => panic!("GETKEYSINSLOT: {other:?}"),
        };
        if keys.is_empty() {
            break;
        }
        let names: Vec<String> = keys
            .iter()
            .map(|k| match k {
                Frame::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("a key name: {other:?}"),
            })
            .collect();
        let mut cmd = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        cmd.extend(names.iter().map(String::as_str));
        ok(cluster.nodes[from].client().cmd(&cmd), "MIGRATE");
        moved += names.len();
        load.wait_more(3, "during the migration");
    }
    // Every key has moved, the slot is still migrating: each command is asked over.
    load.wait_more(10, "with every key moved");
    let asking = |n: usize| match cluster.nodes[n].client().cmd(&["INFO", "commandstats"]) {
        Frame::BulkString(b) => String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_asking:calls=")?.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0),
        other => panic!("INFO commandstats: {other:?}"),
    };
    let asked = asking(to);
    ok(cluster.nodes[to].client().cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "SETSLOT NODE (target)");
    ok(cluster.nodes[from].client().cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "SETSLOT NODE (source)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.primary_of(&key) != Some(to) {
        assert!(Instant::now() < deadline, "the slot is not served by its new primary within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    load.wait_more(40, "after the migration");
    let done = load.finish();
    assert!(moved >= 1, "the stream and its nonces moved: {moved} keys");
    assert!(asked > 0, "commands for moved keys were redirected with ASK");

    let events = done.events();
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    assert_eq!(p.distinct_events(), events, "one row per event");
    p.wait_for(0, "entries pending on the new primary", |_| cluster.pending(&key) as u64);
    eprintln!("{} requests, {} sent again, {moved} keys moved, {asked} ASKING calls", done.requests, done.refused);
}

/// A request's commands after its lease run where its lease ran or nowhere
/// (docs/ingest.md, "One server"): with the lease's slot moved to the other primary, a
/// command sent on the lease's placement is answered `MOVED` and not sent on (it is not
/// run by either primary), while a routed command follows the slot.
#[test]
fn cluster_a_placed_command_does_not_follow_its_slot_to_another_primary() {
    use croupier_dataplane::redis::connection::{RedisClient, RedisOptions};
    use croupier_protocol::resp::{self, Frame};
    let cluster = RedisCluster::primaries_only(2);
    let (leased, placed, routed) = ("{placed}lease", "{placed}append", "{placed}routed");
    let slot = croupier_protocol::cluster::key_slot(leased.as_bytes()).to_string();
    let from = cluster.primary_of(leased).expect("a primary");
    let to = 1 - from;
    let id = |n: usize| match cluster.nodes[n].client().cmd(&["CLUSTER", "MYID"]) {
        Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLUSTER MYID: {other:?}"),
    };
    let (from_id, to_id) = (id(from), id(to));
    let ok = |f: Frame, what: &str| assert_eq!(f, Frame::SimpleString(b"OK".to_vec()), "{what}");
    let mut config = croupier_control::config::Config::default();
    config.redis.cluster = cluster.seeds();
    let options = RedisOptions::from_config(&config);
    let set = |key: &str| {
        let mut cmd = Vec::new();
        resp::command(&mut cmd, &[b"SET", key.as_bytes(), b"1"]);
        cmd
    };
    let driver = croupier_dataplane::runtime::resolve(Driver::Epoll).expect("epoll");
    croupier_dataplane::runtime::block_on(driver, async {
        let client = RedisClient::start(options);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.is_up() {
            assert!(Instant::now() < deadline, "not connected within 10 s");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let (frames, _, at) = client.call_group(set(leased), 1, 0, leased, false).await.expect("ran");
        assert_eq!(frames, vec![Frame::SimpleString(b"OK".to_vec())]);
        // The slot moves to the other primary, its key with it.
        ok(cluster.nodes[to].client().cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]), "IMPORTING");
        ok(cluster.nodes[from].client().cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]), "MIGRATING");
        let to_port = cluster.nodes[to].port.to_string();
        let migrate = ["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS", leased];
        ok(cluster.nodes[from].client().cmd(&migrate), "MIGRATE");
        ok(cluster.nodes[to].client().cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "SETSLOT NODE (target)");
        ok(cluster.nodes[from].client().cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "SETSLOT NODE (source)");
        let (frames, _) = client.call_group_on(&at, set(placed), 1, false).await.expect("answered");
        assert!(matches!(frames.as_slice(), [Frame::Error(e)] if e.starts_with("MOVED")), "{frames:?}");
        let (frames, _, _) = client.call_group(set(routed), 1, 0, routed, false).await.expect("answered");
        assert_eq!(frames, vec![Frame::SimpleString(b"OK".to_vec())]);
    })
    .expect("a runtime");
    for (key, at_from, at_to) in [(leased, 0, 1), (placed, 0, 0), (routed, 0, 1)] {
        let exists = |n: usize| match cluster.nodes[n].client().cmd(&["EXISTS", key]) {
            Frame::Integer(i) => i,
            Frame::Error(_) => 0, // MOVED: not there
            other => panic!("EXISTS: {other:?}"),
        };
        assert_eq!((exists(from), exists(to)), (at_from, at_to), "{key}");
    }
}
