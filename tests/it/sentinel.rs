//! Redis Sentinel: 1 primary, 1 replica and 3 sentinels on loopback. Ingest and the
//! worker find the primary through the sentinels; the primary is killed under load with
//! `wait_replicas = 1`; the replica takes over and every event answered 202 is in
//! ClickHouse. The requests answered otherwise are sent again, as a client does, and
//! every event ends up there once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::Driver;
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient};
use croupier_it::redis::RedisServer;
use croupier_it::sentinel::{SentinelServer, MASTER_NAME};

use crate::fixture::{events, Fixture, GAME, SECRET};
use crate::pipeline::{croupier, env, Pipeline};

/// Events per request.
const PER_REQUEST: usize = 5;

/// One request as sent (sent again with the same headers, it is a retry).
struct Sent {
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
}

fn send(c: &mut HttpClient, s: &mut Sent) {
    s.status = c.request("POST", "/api/ingest/events", &s.headers, s.body.as_bytes()).status;
}

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
    let addr = p.ingest.addr;
    let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = events(PER_REQUEST);
                let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
                let mut s = Sent { headers, body, status: 0 };
                send(&mut HttpClient::connect(addr), &mut s);
                if s.status == 202 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                sent.push(s);
            }
            sent
        })
    };
    let wait_accepted = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while accepted.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "{what}: {} requests accepted", accepted.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_accepted(20, "before the failover");
    // The primary dies mid-load; the sentinels promote the replica.
    primary.stop();
    let before = accepted.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinels[0].primary_port() != Some(replica.port) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old primary comes back as the new one's replica: appends are confirmed again.
    primary.restart_with(&["--replicaof", "127.0.0.1", &replica.port.to_string()]);
    primary.wait_synced();
    wait_accepted(before + 20, "after the failover");
    stop.store(true, Ordering::Relaxed);
    let mut sent = load.join().expect("load thread");
    assert_ne!(primary_port, replica.port);

    // Everything not answered 202 is sent again, as it was (a retry), until it is.
    let refused = sent.iter().filter(|s| s.status != 202).count();
    for s in sent.iter_mut().filter(|s| s.status != 202) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.status != 202 {
            assert!(Instant::now() < deadline, "a retry was not accepted: {}", s.status);
            send(&mut HttpClient::connect(addr), s);
        }
    }
    let events = (sent.len() * PER_REQUEST) as u64;
    // Each event has a user of its own: every one is in ClickHouse, including every one
    // answered 202 during the load (none of those was sent again).
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    assert_eq!(p.distinct_events(), events, "one row per event");
    eprintln!("{} requests, {} accepted during the load, {refused} sent again", sent.len(), sent.len() - refused);
}
