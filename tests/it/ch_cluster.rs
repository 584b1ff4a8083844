//! ClickHouse as two shards × two replicas (four clickhouse-server 18.16 processes) and
//! one ZooKeeper on loopback: `croupier migrate` creates the cluster schema on every node,
//! the worker inserts into the shard-local replicated tables by event id, and a replica
//! killed while the worker inserts loses nothing and duplicates nothing, as read through
//! the `Distributed` tables; the worker writes `user_days_local` on the shard of its events.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use croupier_control::config::Driver;
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::clickhouse_cluster::{ClickHouseCluster, CLUSTER};
use croupier_it::redis::RedisServer;

use crate::fixture::{event, post_signed, Fixture, GAME, SECRET};
use crate::pipeline::{croupier, env, CROUPIER};

fn number(node: &ClickHouseServer, sql: &str) -> u64 {
    node.query(sql).trim().parse().unwrap_or_else(|_| panic!("{sql}: not a number"))
}

/// Waits until `f()` is `want` (30 s at most).
fn wait_for(want: u64, what: &str, f: impl Fn() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = f();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got}, expected {want} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The worker's environment for `cluster` (its shards, its name) and `redis`, with a
/// ClickHouse timeout long enough for replicated DDL, which waits on ZooKeeper (more than
/// the pipeline's 3 s on a loaded machine).
fn cluster_env(redis: &RedisServer, cluster: &ClickHouseCluster) -> Vec<(String, String)> {
    let mut env = env(redis, &cluster.nodes[0][0]);
    env.push(("CROUPIER_CLICKHOUSE__SHARDS".into(), cluster.shards_toml()));
    env.push(("CROUPIER_CLICKHOUSE__CLUSTER".into(), CLUSTER.into()));
    env.retain(|(k, _)| k != "CROUPIER_CLICKHOUSE__TIMEOUT_MS");
    env.push(("CROUPIER_CLICKHOUSE__TIMEOUT_MS".into(), "20000".into()));
    env
}

/// `croupier migrate` with `env`, which must succeed.
fn migrate(env: &[(String, String)]) {
    let (ok, out) = croupier(&["migrate"], env);
    assert!(ok, "croupier migrate failed: {out}");
}

#[test]
fn ch_cluster_replica_killed_mid_insert_loses_and_duplicates_nothing() {
    let mut cluster = ClickHouseCluster::start(2, 2);
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |_| {});
    let mut env = cluster_env(&ingest.redis, &cluster);
    // The figures too: written through their Distributed tables to the first shard.
    env.push(("CROUPIER_AGGREGATE__FLUSH_MS".into(), "200".into()));
    env.push(("CROUPIER_AGGREGATE__WRITE_MS".into(), "200".into()));

    // Twice: the second run finds everything in place.
    for _ in 0..2 {
        migrate(&env);
    }
    for node in cluster.all() {
        let tables = node.query(
            "SELECT name, engine FROM system.tables WHERE database = 'analytics' \
             AND (name LIKE 'events%' OR name LIKE 'payments%') ORDER BY name FORMAT TabSeparated",
        );
        assert_eq!(
            tables,
            "events\tDistributed\nevents_local\tReplicatedReplacingMergeTree\n\
             payments\tDistributed\npayments_local\tReplicatedReplacingMergeTree\n",
            "on {}",
            node.addr()
        );
    }

    let mut worker = start_worker(&env);

    // Batches posted one after the other while the first replica of the first shard (the
    // one the worker inserts into first) is killed.
    let (batches, per) = (60, 200);
    let addr = ingest.addr;
    let poster = std::thread::spawn(move || {
        let mut c = croupier_it::http::HttpClient::connect(addr);
        let mut accepted = 0u64;
        for b in 0..batches {
            // Logins of players seen once each: every one is a daily active user.
            let items: Vec<String> = (0..per).map(|i| event("login", &format!("p{b}-{i}"))).collect();
            let body = format!("[{}]", items.join(","));
            let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
            assert_eq!(r.status, 202, "{}", r.text());
            accepted += per as u64;
            std::thread::sleep(Duration::from_millis(10));
        }
        accepted
    });
    let reader = &cluster.nodes[1][1];
    let deadline = Instant::now() + Duration::from_secs(30);
    while number(reader, "SELECT count() FROM analytics.events") == 0 {
        assert!(Instant::now() < deadline, "no event in ClickHouse within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.nodes[0][0].stop();
    let accepted = poster.join().expect("poster");
    assert_eq!(accepted, (batches * per) as u64);

    // The killed replica comes back with its disk; what it alone had confirmed is
    // fetched by its peer, and what it missed it fetches.
    cluster.nodes[0][0].restart();
    for node in cluster.all() {
        node.query("SYSTEM SYNC REPLICA analytics.events_local");
    }
    let reader = &cluster.nodes[1][1];
    let distinct = "SELECT count() FROM analytics.events FINAL";
    wait_for(accepted, "events through the Distributed table", || number(reader, distinct));
    for node in cluster.all() {
        node.query("SYSTEM SYNC REPLICA analytics.events_local");
        let seen = node.query("SELECT count(), uniqExact(event_id) FROM analytics.events FORMAT TabSeparated");
        assert_eq!(seen, format!("{accepted}\t{accepted}\n"), "count and distinct ids through {}", node.addr());
        // Each event on the shard its id names, as the Distributed table's key would put it.
        let shard: u64 = node
            .query("SELECT substitution FROM system.macros WHERE macro = 'shard'")
            .trim()
            .parse()
            .expect("shard macro");
        let misplaced = format!(
            "SELECT count() FROM analytics.events_local WHERE sipHash64(toString(event_id)) % 2 != {}",
            shard.saturating_sub(1)
        );
        assert_eq!(number(node, &misplaced), 0, "rows on the wrong shard on {}", node.addr());
    }
    // Today's players, from the merged sketches (HyperLogLog: within 2 %), one figure,
    // on the first shard only.
    let dau = "SELECT count(), sum(dau) FROM analytics.daily_users FINAL WHERE game_id = 'g1' AND env = 'prod'";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cluster.nodes[1][1].query(&format!("{dau} FORMAT TabSeparated"));
        let (rows, players) = got.trim().split_once('\t').unwrap_or(("0", "0"));
        let players: u64 = players.parse().unwrap_or(0);
        if rows == "1" && players.abs_diff(accepted) * 50 <= accepted {
            break;
        }
        assert!(Instant::now() < deadline, "daily_users: {got:?}, expected one row of about {accepted} players");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(number(&cluster.nodes[1][0], "SELECT count() FROM analytics.daily_users_local"), 0);
    let shard_rows: Vec<u64> =
        cluster.nodes.iter().map(|s| number(&s[0], "SELECT count() FROM analytics.events_local")).collect();
    assert_eq!(shard_rows.iter().sum::<u64>(), accepted);
    assert!(shard_rows.iter().all(|&n| n > accepted / 4), "both shards hold events: {shard_rows:?}");
    let _ = worker.kill();
    let _ = worker.wait();
}

/// `user_days` on a cluster: `croupier migrate` leaves no `user_days_mv` on any node, and
/// the worker writes each event's user-day rows into `user_days_local` on the shard that
/// holds the event (where the view wrote them before), with the counts of that shard's
/// events, on both of its replicas.
#[test]
fn ch_cluster_user_days_land_on_the_shard_of_their_events() {
    let cluster = ClickHouseCluster::start(2, 2);
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |_| {});
    let env = cluster_env(&ingest.redis, &cluster);
    migrate(&env);
    for node in cluster.all() {
        let views = "SELECT count() FROM system.tables WHERE database = 'analytics' AND name LIKE 'user_days_mv%'";
        assert_eq!(number(node, views), 0, "user_days_mv on {}", node.addr());
    }
    let mut worker = start_worker(&env);
    // 40 players, each with a login, a registration and a level event (spread over both
    // shards by event id), in 4 bodies.
    let mut c = croupier_it::http::HttpClient::connect(ingest.addr);
    let mut posted = 0u64;
    for b in 0..4 {
        let mut items = Vec::new();
        for i in 0..10 {
            let user = format!("p{b}-{i}");
            items.extend(["login", "register", "level_start"].map(|name| event(name, &user)));
        }
        posted += items.len() as u64;
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", items.join(",")).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let reader = &cluster.nodes[1][1];
    wait_for(posted, "events through the Distributed table", || {
        number(reader, "SELECT count() FROM analytics.events FINAL")
    });
    // Each node's user_days_local against the fold of its own shard's events.
    let fold = "SELECT toUInt16(toDate(event_time, 'UTC')) AS d, game_id, env, user_id, count(), \
                countIf(event IN ('login', 'session_start', 'user.login', 'session.start')), \
                countIf(event IN ('register', 'user.register')), countIf(event IN ('first_active')) \
                FROM analytics.events_local FINAL GROUP BY d, game_id, env, user_id \
                ORDER BY d, game_id, env, user_id FORMAT TabSeparated";
    let stored = "SELECT toUInt16(d), game_id, env, user_id, sum(events), sum(active), sum(registered), \
                  sum(first_active) FROM analytics.user_days_local GROUP BY d, game_id, env, user_id \
                  ORDER BY d, game_id, env, user_id FORMAT TabSeparated";
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in cluster.all() {
        loop {
            node.query("SYSTEM SYNC REPLICA analytics.events_local");
            node.query("SYSTEM SYNC REPLICA analytics.user_days_local");
            let (want, got) = (node.query(fold), node.query(stored));
            if want == got && !got.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "user_days_local on {}:\n{got}\nexpected\n{want}", node.addr());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Every player's day is somewhere, and the shards' pieces add up to its events.
    let total = "SELECT sum(events), uniqExact(user_id) FROM analytics.user_days FORMAT TabSeparated";
    assert_eq!(reader.query(total), format!("{posted}\t40\n"));
    let _ = worker.kill();
    let _ = worker.wait();
}

/// On a cluster, the `user_days` insert failing on one shard only (`user_days_local`
/// renamed away on both its replicas) after both shards stored their `events` rows: the
/// retries send neither shard its `events` rows again, nor the other shard its
/// `user_days` rows — nothing reaches a replicated table twice, so the servers deduplicate
/// no block (`DuplicatedInsertedBlocks`; aggregation is off, whose figures are written
/// again by design) — and the batch stays pending until the table is back, when every
/// shard's `user_days_local` holds the fold of its own events, once.
#[test]
fn ch_cluster_user_days_failing_on_one_shard_sends_each_shard_only_what_it_lacks() {
    let cluster = ClickHouseCluster::start(2, 2);
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |_| {});
    let mut env = cluster_env(&ingest.redis, &cluster);
    env.push(("CROUPIER_AGGREGATE__ENABLED".into(), "false".into()));
    migrate(&env);
    for node in &cluster.nodes[1] {
        node.query("RENAME TABLE analytics.user_days_local TO analytics.user_days_away");
    }
    let duplicated = || -> u64 {
        let sql = "SELECT sum(value) FROM system.events WHERE event = 'DuplicatedInsertedBlocks'";
        cluster.all().map(|node| number(node, sql)).sum()
    };
    let before = duplicated();
    // 20 players with a login and a registration each (spread over both shards), one body.
    let items: Vec<String> =
        (0..20).flat_map(|i| ["login", "register"].map(|name| event(name, &format!("s{i}")))).collect();
    let posted = items.len() as u64;
    let mut c = croupier_it::http::HttpClient::connect(ingest.addr);
    let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", items.join(",")).as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let mut worker = start_worker(&env);
    let reader = &cluster.nodes[0][1];
    wait_for(posted, "events on both shards", || number(reader, "SELECT count() FROM analytics.events FINAL"));
    let shard_events = |s: usize| {
        cluster.nodes[s][0].query("SYSTEM SYNC REPLICA analytics.events_local");
        number(&cluster.nodes[s][0], "SELECT count() FROM analytics.events_local FINAL")
    };
    assert!(shard_events(0) > 0 && shard_events(1) > 0, "events on both shards");
    let pending = || match ingest.redis.client().cmd(&["XPENDING", "analytics:events", "analytics-workers"]) {
        croupier_protocol::resp::Frame::Array(a) => match a.first() {
            Some(croupier_protocol::resp::Frame::Integer(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    // Several retries (back-off up to 300 ms, each to the shards' other replica).
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(duplicated(), before, "rows a shard had confirmed were sent to it again");
        assert_eq!(pending(), 1, "acknowledged without shard 1's user_days rows");
    }
    for node in &cluster.nodes[1] {
        node.query("RENAME TABLE analytics.user_days_away TO analytics.user_days_local");
    }
    wait_for(0, "pending", pending);
    let fold = "SELECT toUInt16(toDate(event_time, 'UTC')) AS d, user_id, count(), \
                countIf(event IN ('login', 'session_start', 'user.login', 'session.start')), \
                countIf(event IN ('register', 'user.register')) \
                FROM analytics.events_local FINAL GROUP BY d, user_id ORDER BY d, user_id FORMAT TabSeparated";
    let stored = "SELECT toUInt16(d), user_id, sum(events), sum(active), sum(registered) \
                  FROM analytics.user_days_local GROUP BY d, user_id ORDER BY d, user_id FORMAT TabSeparated";
    for node in cluster.all() {
        node.query("SYSTEM SYNC REPLICA analytics.events_local");
        node.query("SYSTEM SYNC REPLICA analytics.user_days_local");
        let (want, got) = (node.query(fold), node.query(stored));
        assert!(!got.is_empty() && want == got, "user_days_local on {}:\n{got}\nexpected\n{want}", node.addr());
    }
    assert_eq!(duplicated(), before, "a block sent twice");
    let _ = worker.kill();
    let _ = worker.wait();
}

/// `croupier worker` with `env`, its output discarded.
fn start_worker(env: &[(String, String)]) -> std::process::Child {
    Command::new(CROUPIER)
        .arg("worker")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start croupier worker")
}

/// Waits up to 30 s for `w`'s `/readyz` to answer `want` with `needle` in its body; the body.
fn wait_readyz(w: &croupier_it::monitoring::Croupier, want: u16, what: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = w.control_get("/readyz");
        if status == want && body.contains(needle) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A worker's `/readyz` answers for every shard: with the only replica of one shard
/// stopped, every insert stalls, so ClickHouse is not ready, the shard named; ready again
/// once the replica is back.
#[test]
fn ch_cluster_a_shard_without_a_replica_makes_the_worker_unready() {
    let mut cluster = ClickHouseCluster::start(2, 1);
    let redis = RedisServer::start();
    let env = cluster_env(&redis, &cluster);
    migrate(&env);
    let w = croupier_it::monitoring::Croupier::start(CROUPIER, "worker", &env);
    let readyz = |want: u16, what: &str, needle: &str| wait_readyz(&w, want, what, needle);
    readyz(200, "ready with both shards", r#""clickhouse":{"ok":true}"#);
    cluster.nodes[1][0].stop();
    let body = readyz(503, "unready with shard 2 down", "shard 2 of 2: ");
    assert!(body.contains(&cluster.nodes[1][0].addr()), "{body}");
    cluster.nodes[1][0].restart();
    readyz(200, "ready again", r#""clickhouse":{"ok":true}"#);
}

/// Black-box finding: `clickhouse.shards` listing a node under another shard than its
/// `shard` macro names was taken silently, and the worker's rows landed on the wrong
/// shard (copies of a row on two shards after fail-overs). `croupier migrate` refuses it
/// naming the node, and a worker takes no row there: `/readyz` says why.
#[test]
fn ch_cluster_a_node_listed_under_another_shard_is_refused() {
    let cluster = ClickHouseCluster::start(2, 1);
    let redis = RedisServer::start();
    let env = cluster_env(&redis, &cluster);
    migrate(&env);
    let (a, b) = (cluster.nodes[0][0].addr(), cluster.nodes[1][0].addr());
    // `env` with `clickhouse.shards` set to `toml`.
    let with_shards = |toml: String| {
        let mut e = env.clone();
        e.retain(|(k, _)| k != "CROUPIER_CLICKHOUSE__SHARDS");
        e.push(("CROUPIER_CLICKHOUSE__SHARDS".into(), toml));
        e
    };
    let swapped = with_shards(format!(r#"[["{b}"],["{a}"]]"#));
    let (ok, out) = croupier(&["migrate"], &swapped);
    assert!(!ok, "migrate took the swapped shards: {out}");
    assert!(out.contains(&format!(r#"{b} has `shard` macro "2" but is listed in clickhouse.shards[0]"#)), "{out}");
    let w = croupier_it::monitoring::Croupier::start(CROUPIER, "worker", &swapped);
    wait_readyz(&w, 503, "unready on the swapped shards", "is listed in clickhouse.shards[0], shard 1");
    drop(w);
    // A list that leaves a shard out: its rows would land on the shards listed.
    let short = with_shards(format!(r#"[["{a}"]]"#));
    let (ok, out) = croupier(&["migrate"], &short);
    assert!(!ok, "migrate took one shard of two: {out}");
    assert!(
        out.contains(&format!("{a} defines cluster {CLUSTER:?} with 2 shard(s), but clickhouse.shards lists 1")),
        "{out}"
    );
    let w = croupier_it::monitoring::Croupier::start(CROUPIER, "worker", &short);
    wait_readyz(&w, 503, "unready on one shard of two", "with 2 shard(s), but clickhouse.shards lists 1");
}

/// Black-box finding: with ZooKeeper gone, every insert failed (`Table is in readonly
/// mode`) while `/readyz` said ClickHouse was fine (its pings answer). The replicated
/// tables' read-only state is part of the probe now.
#[test]
fn ch_cluster_read_only_replicas_without_zookeeper_make_the_worker_unready() {
    let cluster = ClickHouseCluster::start(2, 1);
    let redis = RedisServer::start();
    let env = cluster_env(&redis, &cluster);
    migrate(&env);
    let w = croupier_it::monitoring::Croupier::start(CROUPIER, "worker", &env);
    wait_readyz(&w, 200, "ready with ZooKeeper", r#""clickhouse":{"ok":true}"#);
    let pid = cluster.zookeeper.pid().expect("ZooKeeper running");
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(killed, "kill ZooKeeper");
    // The nodes' ZooKeeper sessions expire after 10 s (the harness's session timeout).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = w.control_get("/readyz");
        if status == 503 && body.contains("read-only (ZooKeeper not reachable?)") {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body} a minute after ZooKeeper went");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Black-box finding: with one replica of a shard killed and the other up, `/readyz` said
/// the shard was down for a round (its held connection to the killed one failed the ping).
/// The probe now asks another replica at once: ready throughout.
#[test]
fn ch_cluster_a_lost_replica_beside_a_live_one_keeps_the_worker_ready() {
    let mut cluster = ClickHouseCluster::start(2, 2);
    let redis = RedisServer::start();
    let env = cluster_env(&redis, &cluster);
    migrate(&env);
    let w = croupier_it::monitoring::Croupier::start(CROUPIER, "worker", &env);
    wait_readyz(&w, 200, "ready with both shards", r#""clickhouse":{"ok":true}"#);
    // The probe's connections are on each shard's first replica: stop shard 1's.
    cluster.nodes[0][0].stop();
    for _ in 0..20 {
        let (status, body) = w.control_get("/readyz");
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.nodes[0][0].restart();
}
