//! `redis.wait_replicas`: a 202 only once the append is on the replicas asked for, one
//! `WAIT` per pipeline round; a replica that does not confirm in time is a 503
//! `not_replicated` whose retry (same request, same nonce) is answered 202 once
//! replicated, never appended twice. A real primary and replica (`--replicaof`).

use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_it::http::{fresh_nonce, now_secs, signed_headers};
use croupier_it::redis::RedisServer;

use crate::fixture::{events, xlen, Fixture, GAME, SECRET};

/// A primary with one synchronised replica, and ingest on the primary.
fn primary_and_replica(tweak: impl FnOnce(&mut Config)) -> (Fixture, RedisServer) {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let f = Fixture::start_with_redis(Driver::Epoll, primary, tweak);
    (f, replica)
}

#[test]
fn wait1_every_202_is_on_the_replica_with_one_wait_per_round() {
    let (f, replica) = primary_and_replica(|c| {
        c.redis.wait_replicas = 1;
        c.redis.wait_timeout_ms = 5_000;
    });
    // One at a time: each 202 finds its entry on the replica already.
    for i in 1..=10 {
        let r = f.post("/api/ingest/events", &events(3));
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(xlen(&replica, "analytics:events"), i, "the 202 came before the replica had the entry");
    }
    // 8 clients at once: the rounds hold several appends, each round one WAIT.
    let (appends, waits) = (f.redis.calls("xadd"), f.redis.calls("wait"));
    let addr = f.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = croupier_it::http::HttpClient::connect(addr);
                (0..10)
                    .map(|_| {
                        crate::fixture::post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(3).as_bytes())
                            .status
                    })
                    .filter(|s| *s == 202)
                    .count()
            })
        })
        .collect();
    let accepted: usize = clients.into_iter().map(|t| t.join().expect("client")).sum();
    assert_eq!(accepted, 80);
    assert_eq!(xlen(&replica, "analytics:events"), 90, "every 202 is on the replica");
    let (appends, waits) = (f.redis.calls("xadd") - appends, f.redis.calls("wait") - waits);
    assert_eq!(appends, 80);
    assert!(waits < appends, "{waits} WAITs for {appends} appends: one round trip per request");
}

#[test]
fn wait1_replica_down_is_503_after_the_timeout_and_the_retry_is_accepted_once() {
    let (f, mut replica) = primary_and_replica(|c| {
        c.redis.wait_replicas = 1;
        c.redis.wait_timeout_ms = 500;
    });
    replica.stop();
    let body = events(4);
    let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
    let send = || f.client().request("POST", "/api/ingest/events", &headers, body.as_bytes());
    let t = Instant::now();
    let r = send();
    let took = t.elapsed();
    assert_eq!((r.status, r.error_tag().as_str(), r.header("retry-after")), (503, "not_replicated", Some("1")));
    assert!(r.text().contains(r#""appended":true,"replicas":0,"wanted":1"#), "{}", r.text());
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(2_000), "503 after {took:?}");
    assert_eq!(xlen(&f.redis, "analytics:events"), 1, "the events were appended");
    // The client retries while the replica is still down: still not confirmed, and the
    // retry appends nothing.
    let r = send();
    assert_eq!((r.status, r.error_tag().as_str()), (503, "not_replicated"), "{}", r.text());
    assert_eq!(xlen(&f.redis, "analytics:events"), 1);
    // The replica is back: the same request is answered as already accepted, once.
    replica.restart();
    replica.wait_synced();
    let r = send();
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":4}"#.to_owned()));
    assert_eq!((xlen(&f.redis, "analytics:events"), xlen(&replica, "analytics:events")), (1, 1));
    assert_eq!(f.post("/api/ingest/events", &events(2)).status, 202);
    assert_eq!(xlen(&replica, "analytics:events"), 2);
}

#[test]
fn wait0_sends_no_wait_and_does_not_wait_for_a_replica() {
    let (f, mut replica) = primary_and_replica(|_| {});
    replica.stop();
    let t = Instant::now();
    assert_eq!(f.post("/api/ingest/events", &events(3)).status, 202);
    assert!(t.elapsed() < Duration::from_millis(500), "took {:?}", t.elapsed());
    assert_eq!(f.redis.calls("wait"), 0);
}
