//! Redis Sentinel: 1 primary, 1 replica and 3 sentinels on loopback. Ingest and the
//! worker find the primary through the sentinels; the primary is killed under load with
//! `wait_replicas = 1`; the replica takes over and every event answered 202 is in
//! ClickHouse. The requests answered otherwise are sent again, as a client does, and
//! every event ends up there once.

use std::time::{Duration, Instant};

use croupier_control::config::Driver;
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::redis::RedisServer;
use croupier_it::sentinel::{SentinelServer, MASTER_NAME};

use crate::fixture::Fixture;
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
    let list = format!("[{}]", sentinels.iter().map(|s| format!("\"{}\"", s.addr())).collect::<Vec<_>>().join(","));
    let clickhouse = ClickHouseServer::start();
    let primary_port = primary.port;
    let addrs: Vec<String> = sentinels.iter().map(SentinelServer::addr).collect();
    // `redis.addr` names nothing: only the sentinels say where the primary is.
    let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start(), |c| {
        c.redis.addr = "127.0.0.1:1".into();
        c.redis.sentinels = addrs;
        c.redis.master_name = MASTER_NAME.into();
        c.redis.wait_replicas = 1;
        c.redis.wait_timeout_ms = 500;
        c.redis.reply_timeout_ms = 1_000;
    });
    let (ok, out) = croupier(&["migrate"], &env(&ingest.redis, &clickhouse));
    assert!(ok, "croupier migrate failed: {out}");
    let mut p = Pipeline { ingest, clickhouse, worker: None };
    p.start_worker(&[
        ("CROUPIER_REDIS__ADDR", "127.0.0.1:1"),
        ("CROUPIER_REDIS__SENTINELS", list.as_str()),
        ("CROUPIER_REDIS__MASTER_NAME", MASTER_NAME),
    ]);

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
    // The old primary comes back as the new one's replica: appends are confirmed again.
    primary.restart_with(&["--replicaof", "127.0.0.1", &replica.port.to_string()]);
    primary.wait_synced();
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
