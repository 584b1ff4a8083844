//! Redis that requires a password: `requirepass`, an ACL user, a Redis Cluster whose
//! nodes all require one, and Sentinel with passwords on the data nodes and on the
//! sentinels. Every connection croupier makes (ingest shards, worker, control port,
//! slot-map readings, the `+switch-master` subscription) authenticates first; a wrong or
//! missing password is reported as an authentication failure, never with the password.

use std::time::{Duration, Instant};

use croupier_control::config::Secret;
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::cluster::RedisCluster;
use croupier_it::http::HttpClient;
use croupier_it::monitoring::Croupier;
use croupier_it::redis::{RedisClient, RedisServer};
use croupier_it::sentinel::{SentinelServer, MASTER_NAME};
use croupier_protocol::cluster::Partitions;
use croupier_protocol::resp::Frame;
use croupier_protocol::stream::StreamKind;

use crate::control::ingest_on;
use crate::fixture::{event, events, post_signed, total_entries, GAME, SECRET};
use crate::load::{Sent, PER_REQUEST};
use crate::pipeline::{croupier, env, Pipeline, CROUPIER};
use crate::redis_cluster::cluster_pipeline_with;
use crate::sentinel::{events_added, role, through_sentinels_with};

/// The data nodes' password.
const PASSWORD: &str = "c0rrect-horse-42";
/// The sentinels' own password.
const SENTINEL_PASSWORD: &str = "sentinel-s3cret";

/// Waits (20 s at most) until `f()` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `requirepass`: ingest (in this process, the password in its configuration) and
/// `croupier worker` (the password from a file named by an environment variable)
/// authenticate; every event lands in ClickHouse and the group acknowledges it.
#[test]
fn auth_requirepass_ingest_and_worker_land_in_clickhouse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write the password file");
    let mut p = Pipeline::start_with(&["--requirepass", PASSWORD], |c| c.redis.password = Some(Secret::from(PASSWORD)));
    let file = file.display().to_string();
    p.start_worker(&[("CROUPIER_REDIS__PASSWORD_FILE", file.as_str())]);
    for _ in 0..10 {
        assert_eq!(p.ingest.post("/api/ingest/events", &events(5)).status, 202);
    }
    assert_eq!(total_entries(&p.ingest.redis), 10);
    p.wait_for(50, "events in ClickHouse", Pipeline::distinct_events);
    p.wait_for(0, "entries pending", |p| p.pending("analytics:events").max(0) as u64);
}

/// A wrong password, then none: the control port's `/readyz` is 503 and says the
/// authentication failed (`WRONGPASS`, `NOAUTH`), the log says so too, ingest refuses
/// (503), the connections are tried again with back-off (not in a hot loop), and the
/// password given appears nowhere in what croupier says.
#[test]
fn auth_wrong_or_missing_password_is_reported_without_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let wrong = "not-the-pass-7f3a";
    for (extra, reply) in [(vec![("CROUPIER_REDIS__PASSWORD", wrong)], "WRONGPASS"), (vec![], "NOAUTH")] {
        let c = ingest_on(&redis, &extra);
        let body = c.wait_control_ready(503);
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = {
            let mut body = body;
            while !body.contains(reply) {
                assert!(Instant::now() < deadline, "/readyz does not say {reply}: {body}\n{}", c.log());
                std::thread::sleep(Duration::from_millis(50));
                body = c.control_get("/readyz").1;
            }
            body
        };
        assert!(body.contains("authentication failed"), "{body}");
        assert!(body.contains(r#""redis":{"ok":false"#), "{body}");
        wait_until("the log says the authentication failed", || {
            let log = c.log();
            log.contains("authentication failed") && log.contains(reply)
        });
        let r = post_signed(&mut HttpClient::connect(c.data), "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
        assert_eq!(r.status, 503, "{}", r.text());
        // Back-off, not a hot loop: 2 shards and the control thread try at most a few
        // times a second each once the back-off has grown.
        let connections = |r: &RedisServer| -> i64 {
            let Frame::BulkString(info) = r.client().cmd(&["INFO", "stats"]) else { panic!("INFO stats") };
            let info = String::from_utf8_lossy(&info).into_owned();
            info.lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("total_connections_received")
        };
        std::thread::sleep(Duration::from_secs(2));
        let before = connections(&redis);
        std::thread::sleep(Duration::from_secs(2));
        let made = connections(&redis) - before - 1;
        assert!(made <= 30, "{made} connections in 2 s: not backing off");
        let (log, body) = (c.log(), c.control_get("/readyz").1);
        for said in [&log, &body] {
            assert!(!said.contains(wrong) && !said.contains(PASSWORD), "a password in what croupier says:\n{said}");
        }
        assert_eq!(total_entries(&redis), 0);
    }
}

/// `croupier run` (2 ingest shards and a worker) as the ACL user `croupier` (password
/// `user-pass`) on `redis`: both ports ready with Redis ok, 20 events posted and in
/// ClickHouse. Returns the ClickHouse server (kept running) and the process.
fn run_as_the_acl_user(redis: &RedisServer, extra: &[(&str, &str)]) -> (ClickHouseServer, Croupier) {
    let clickhouse = ClickHouseServer::start();
    let mut e = env(redis, &clickhouse);
    let (ok, out) = croupier(&["migrate"], &e);
    assert!(ok, "croupier migrate failed: {out}");
    e.extend(
        [
            ("CROUPIER_REDIS__USERNAME", "croupier"),
            ("CROUPIER_REDIS__PASSWORD", "user-pass"),
            ("CROUPIER_SERVER__SHARDS", "2"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    e.push((format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET.to_owned()));
    let c = Croupier::start(CROUPIER, "run", &e);
    c.wait_data_ready();
    let body = c.wait_control_ready(200);
    assert!(body.contains(r#""redis":{"ok":true}"#), "{body}");
    let mut client = HttpClient::connect(c.data);
    for _ in 0..4 {
        let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(5).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while clickhouse.query("SELECT count() FROM analytics.events FINAL").trim() != "20" {
        assert!(Instant::now() < deadline, "events not in ClickHouse: {}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    (clickhouse, c)
}

/// An ACL user (`redis.username`) in a `croupier run` process: ingest, the worker and the
/// control port's probes authenticate as that user; events land in ClickHouse.
#[test]
fn auth_acl_user_runs_the_whole_pipeline() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let reply = redis.client().cmd(&["ACL", "SETUSER", "croupier", "on", ">user-pass", "~*", "&*", "+@all"]);
    assert_eq!(reply, Frame::SimpleString(b"OK".to_vec()));
    let (_clickhouse, c) = run_as_the_acl_user(&redis, &[]);
    // Every connection of the process is the ACL user's.
    let Frame::BulkString(list) = redis.client().cmd(&["CLIENT", "LIST"]) else { panic!("CLIENT LIST") };
    let list = String::from_utf8_lossy(&list).into_owned();
    assert!(list.lines().filter(|l| l.contains("user=croupier")).count() >= 3, "{list}");
    assert!(!c.log().contains("user-pass"), "{}", c.log());
}

/// A Redis Cluster of 6 nodes, each with `requirepass` and `masterauth`: the slot map
/// is read and every primary's connection made with `AUTH`; requests across the three
/// partitions land once.
#[test]
fn auth_cluster_with_requirepass_lands_across_partitions() {
    let cluster = RedisCluster::start_with_password(3, 1, Some(PASSWORD));
    let p = cluster_pipeline_with(
        &cluster.seeds(),
        3,
        |c| c.redis.password = Some(Secret::from(PASSWORD)),
        &[("CROUPIER_REDIS__PASSWORD", PASSWORD)],
    );
    let addr = p.ingest.addr;
    for _ in 0..30 {
        let mut s = Sent::new();
        s.send(addr);
        assert_eq!(s.status, 202);
    }
    let parts = Partitions::new(3);
    let keys: Vec<&str> = (0..3).map(|i| parts.stream(i, StreamKind::Events)).collect();
    let per: Vec<i64> = keys.iter().map(|k| cluster.xlen(k)).collect();
    assert_eq!(per.iter().sum::<i64>(), 30, "one entry per request: {per:?}");
    assert!(per.iter().all(|n| *n > 0), "every primary took requests: {per:?}");
    let events = (30 * PER_REQUEST) as u64;
    p.wait_for(events, "distinct users in ClickHouse", |p| p.scalar("SELECT uniqExact(user_id) FROM analytics.events"));
    p.wait_for(0, "entries pending", |_| keys.iter().map(|k| cluster.pending(k)).sum::<i64>() as u64);
}

/// Sentinel with passwords everywhere: the data nodes require one (`requirepass`,
/// `masterauth`; the sentinels' `auth-pass`) and so do the sentinels (`requirepass`).
/// Ingest and the worker find the primary through them, and a `SENTINEL FAILOVER` is
/// followed as the sentinels announce it (the `+switch-master` subscription
/// authenticates too): a second after the announcement every request is appended to the
/// new primary and none to the old, which is still a writable primary.
#[test]
fn auth_sentinel_with_passwords_follows_a_failover() {
    let auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD];
    let old = RedisServer::start_with(&auth);
    let port = old.port.to_string();
    let mut replica_args = auth.to_vec();
    replica_args.extend(["--replicaof", "127.0.0.1", port.as_str()]);
    let new = RedisServer::start_with(&replica_args);
    new.wait_synced();
    let sentinels: Vec<SentinelServer> =
        (0..3).map(|_| SentinelServer::start_with_auth(&old, Some(PASSWORD), Some(SENTINEL_PASSWORD))).collect();
    for s in &sentinels {
        s.wait_for_peers(1, 2);
    }
    let p = through_sentinels_with(
        &sentinels,
        |c| {
            c.redis.password = Some(Secret::from(PASSWORD));
            c.redis.sentinel_password = Some(Secret::from(SENTINEL_PASSWORD));
        },
        &[("CROUPIER_REDIS__PASSWORD", PASSWORD), ("CROUPIER_REDIS__SENTINEL_PASSWORD", SENTINEL_PASSWORD)],
    );
    for _ in 0..3 {
        assert_eq!(p.ingest.post("/api/ingest/events", &events(1)).status, 202);
    }
    wait_until("the replica has the 3 appends", || events_added(&new) == 3);

    crate::sentinel::ask_failover(&sentinels[0]);
    wait_until("the sentinels name the new primary", || sentinels[0].primary_port() == Some(new.port));
    let announced = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(announced.elapsed()));
    let (old_before, new_before) = (events_added(&old), events_added(&new));
    for i in 0..20 {
        let body = format!("[{}]", event("level_start", &format!("after-switch-{i}")));
        let r = p.ingest.post("/api/ingest/events", &body);
        assert_eq!(r.status, 202, "{}", r.text());
    }
    // Still a writable primary: an error would not have moved ingest yet.
    assert_eq!(role(&old), "master", "the old primary was reconfigured before the test was done");
    assert_eq!(events_added(&new) - new_before, 20, "every request after the announcement is on the new primary");
    assert_eq!(events_added(&old), old_before, "nothing more was appended to the old primary");
    p.wait_for(20, "events sent after the announcement in ClickHouse", |p| {
        p.scalar("SELECT uniqExact(user_id) FROM analytics.events WHERE user_id LIKE 'after-switch-%'")
    });
}

/// The least-privilege ACL of docs/redis-topologies.md ("ACL permissions"), after
/// `ACL SETUSER croupier on >user-pass`: the commands croupier sends (and those its
/// scripts call), on its keys only, no channel, nothing `@dangerous` but `ROLE` and
/// `CLUSTER SHARDS`/`CLUSTER SLOTS`.
const LEAST_PRIVILEGE: &str =
    "resetkeys ~analytics:* ~croupier:* ~hll:* ~{hll:* resetchannels -@all +ping +role +wait +multi \
     +exec +asking +cluster|shards +cluster|slots +eval +get +set +del +expire +pexpire +pttl +type +time +hset +hmget \
     +pfcount +pfmerge +zadd +zrangebyscore +zrem +zremrangebyscore +zscore +xadd +xreadgroup +xack +xclaim \
     +xautoclaim +xpending +xrange +xrevrange +xdel +xlen +xinfo|stream +xinfo|groups +xgroup|create +xgroup|createconsumer \
     +xgroup|setid";

/// `ACL SETUSER croupier on >user-pass <rules>` on `redis`, the rules
/// [`LEAST_PRIVILEGE`] without the rules `without`.
fn acl_user(redis: &RedisServer, without: &[&str]) {
    let mut args = vec!["ACL", "SETUSER", "croupier", "reset", "on", ">user-pass"];
    args.extend(LEAST_PRIVILEGE.split_ascii_whitespace().filter(|r| !without.contains(r)));
    assert_eq!(redis.client().cmd(&args), Frame::SimpleString(b"OK".to_vec()));
}

/// What Redis denied an ACL user since the log was last reset (`ACL LOG`).
fn acl_denials(redis: &RedisServer) -> Vec<String> {
    let Frame::Array(entries) = redis.client().cmd(&["ACL", "LOG"]) else { panic!("ACL LOG") };
    let text = |f: &Frame| match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    entries
        .iter()
        .map(|e| match e {
            Frame::Array(fields) => fields.iter().map(text).collect::<Vec<_>>().join(" "),
            other => text(other),
        })
        .collect()
}

/// Waits (20 s at most) until the control port's `/readyz` says `what`; its body.
fn readyz_says(c: &Croupier, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = c.control_get("/readyz");
        if body.contains(what) {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz does not say {what}: {body}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The least-privilege user of the documentation (`-@all` and the commands croupier
/// sends, on its keys) runs `croupier run`: ingest, the worker with its aggregates and
/// the control port's probes. Events land in ClickHouse, Redis denied nothing (`ACL LOG`
/// stays empty, scripts included) and croupier reports no refusal.
#[test]
fn auth_least_privilege_acl_user_runs_the_whole_pipeline() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    acl_user(&redis, &[]);
    let (_clickhouse, c) = run_as_the_acl_user(&redis, &[]);
    requests_again_and_replayed_with_nothing_denied(&redis, &c);
}

/// The same user under the lease protocol (`redis.ingest_protocol = "lease"`: `SET NX`,
/// `PTTL`, `PEXPIRE` and `DEL` instead of the script): events land in ClickHouse, a
/// request sent again is answered 202, a replay 401, and Redis denied nothing.
#[test]
fn auth_least_privilege_acl_user_runs_the_lease_protocol() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    acl_user(&redis, &[]);
    let (_clickhouse, c) = run_as_the_acl_user(&redis, &[("CROUPIER_REDIS__INGEST_PROTOCOL", "lease")]);
    requests_again_and_replayed_with_nothing_denied(&redis, &c);
}

/// A request sent twice (202 both times) and a replay of its nonce (401) through `c`,
/// then: `ACL LOG` empty, croupier's connections are the ACL user's, no refusal logged.
fn requests_again_and_replayed_with_nothing_denied(redis: &RedisServer, c: &Croupier) {
    // A request sent again and a replay: their appends are taken back or never made.
    let body = events(2);
    let nonce = croupier_it::http::fresh_nonce();
    let h = croupier_it::http::signed_headers(GAME, SECRET, body.as_bytes(), croupier_it::http::now_secs(), &nonce);
    let mut client = HttpClient::connect(c.data);
    assert_eq!(client.request("POST", "/api/ingest/events", &h, body.as_bytes()).status, 202, "{}", c.log());
    // Sent again: 202, nothing appended; under the lease protocol after `request_in_flight`
    // while the first attempt has not yet given its lease back (README, "503").
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.request("POST", "/api/ingest/events", &h, body.as_bytes());
        if r.status == 202 {
            break;
        }
        assert_eq!((r.status, r.error_tag().as_str()), (503, "request_in_flight"), "{}", c.log());
        assert!(Instant::now() < deadline, "not answered 202 within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let other = events(3);
    let h = croupier_it::http::signed_headers(GAME, SECRET, other.as_bytes(), croupier_it::http::now_secs(), &nonce);
    assert_eq!(client.request("POST", "/api/ingest/events", &h, other.as_bytes()).status, 401);
    // The worker's aggregates (scripts on the hll keys) have had a few seconds to run.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(acl_denials(redis), Vec::<String>::new(), "{}", c.log());
    let Frame::BulkString(list) = redis.client().cmd(&["CLIENT", "LIST"]) else { panic!("CLIENT LIST") };
    let list = String::from_utf8_lossy(&list).into_owned();
    assert!(list.lines().filter(|l| l.contains("user=croupier")).count() >= 3, "{list}");
    let log = c.log();
    assert!(!log.contains("NOPERM") && !log.contains("permission denied"), "{log}");
}

/// A user without one command croupier needs (`XGROUP CREATE`, sent by every connection
/// before it is used): the control port's `/readyz` says which command was refused, at
/// which server, and what the user needs; the log says so too.
#[test]
fn auth_a_user_missing_a_command_is_reported() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    acl_user(&redis, &["+xgroup|create"]);
    let c = ingest_on(&redis, &[("CROUPIER_REDIS__USERNAME", "croupier"), ("CROUPIER_REDIS__PASSWORD", "user-pass")]);
    let body = readyz_says(&c, "permission denied (NOPERM) for XGROUP CREATE at");
    assert!(body.contains(&redis.addr()) && body.contains("the user needs"), "{body}");
    wait_until("the log says NOPERM for XGROUP CREATE", || {
        let log = c.log();
        log.contains("NOPERM") && log.contains("XGROUP CREATE")
    });
    assert!(!c.log().contains("user-pass"), "{}", c.log());
}

/// A user that may append but not take an append back (`XDEL`, which the ingest script
/// needs for a duplicate or a replay): refused before any request is appended, and
/// reported as such by `/readyz` and the log, so that a replay can never be appended.
#[test]
fn auth_a_user_who_may_not_take_an_append_back_is_refused() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    acl_user(&redis, &["+xdel"]);
    let c = ingest_on(&redis, &[("CROUPIER_REDIS__USERNAME", "croupier"), ("CROUPIER_REDIS__PASSWORD", "user-pass")]);
    let body = readyz_says(&c, "permission denied (NOPERM) for XREVRANGE and XDEL at");
    assert!(body.contains(&redis.addr()) && body.contains("the user needs"), "{body}");
    let r = post_signed(&mut HttpClient::connect(c.data), "/api/ingest/events", GAME, SECRET, events(2).as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(redis.client().int(&["XLEN", "analytics:events"]), 0);
}

/// A user that may take an append back but not run another command of the ingest script
/// (`TYPE`): each request is answered 503 and its append is taken back within its
/// transaction, so nothing is appended, however often it is retried.
#[test]
fn auth_a_command_refused_inside_the_ingest_script_appends_nothing() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    acl_user(&redis, &["+type"]);
    let c = ingest_on(&redis, &[("CROUPIER_REDIS__USERNAME", "croupier"), ("CROUPIER_REDIS__PASSWORD", "user-pass")]);
    c.wait_data_ready();
    let body = events(2);
    let nonce = croupier_it::http::fresh_nonce();
    let h = croupier_it::http::signed_headers(GAME, SECRET, body.as_bytes(), croupier_it::http::now_secs(), &nonce);
    let mut client = HttpClient::connect(c.data);
    for _ in 0..3 {
        let r = client.request("POST", "/api/ingest/events", &h, body.as_bytes());
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!(redis.client().int(&["XLEN", "analytics:events"]), 0);
    assert_eq!(redis.client().int(&["EXISTS", &format!("croupier:nonce:{GAME}:{nonce}")]), 0);
    // Black-box finding: every request refused and nothing in the log. Said now, once
    // for the three (at most every 10 s per error code).
    wait_until("the log says Redis refused the requests", || {
        c.log().matches("Redis refused an ingest request's transaction").count() == 1
    });
}

/// Black-box finding: `XREVRANGE` revoked while the connections were up (their set-up
/// had checked it): the ingest script's take-back failed quietly, so a request sent again
/// stayed appended twice and a replay's body stayed, nothing logged, until the next
/// connection. Now the transaction that meets the refusal is answered 503 and logged, and
/// the connection made again is refused by its check: nothing more is appended until the
/// permission is back; then the retry is the duplicate it is.
#[test]
fn auth_take_back_revoked_while_connected_stops_ingest_loudly() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    acl_user(&redis, &[]);
    let c = ingest_on(
        &redis,
        &[
            ("CROUPIER_REDIS__USERNAME", "croupier"),
            ("CROUPIER_REDIS__PASSWORD", "user-pass"),
            ("CROUPIER_SERVER__SHARDS", "1"),
        ],
    );
    c.wait_data_ready();
    let xlen = || redis.client().int(&["XLEN", "analytics:events"]);
    let body = events(2);
    let nonce = croupier_it::http::fresh_nonce();
    let h = croupier_it::http::signed_headers(GAME, SECRET, body.as_bytes(), croupier_it::http::now_secs(), &nonce);
    let mut client = HttpClient::connect(c.data);
    assert_eq!(client.request("POST", "/api/ingest/events", &h, body.as_bytes()).status, 202, "{}", c.log());
    assert_eq!(xlen(), 1);
    assert_eq!(redis.client().cmd(&["ACL", "SETUSER", "croupier", "-xrevrange"]), Frame::SimpleString(b"OK".to_vec()));
    // The retry meets the refusal: 503, not a quiet 202 with its copy left appended.
    let r = client.request("POST", "/api/ingest/events", &h, body.as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    let after_refusal = xlen();
    assert!(after_refusal <= 2, "one transaction's copy at most: {after_refusal}");
    wait_until("the log names the refusal and the check's", || {
        let log = c.log();
        log.contains("an ingest transaction failed as a whole")
            && log.contains("NOPERM")
            && log.contains("Redis refused XREVRANGE and XDEL")
    });
    assert_eq!(
        croupier_it::monitoring::http_get(&format!("http://{}/readyz", c.data)),
        None,
        "the data port is not ready"
    );
    // The control port says so too (its own connection is up: a shard's was refused).
    readyz_says(&c, "permission denied (NOPERM) for XREVRANGE and XDEL");
    for _ in 0..5 {
        let r = client.request("POST", "/api/ingest/events", &h, body.as_bytes());
        assert_eq!(r.status, 503, "{}", r.text());
        let r = post_signed(&mut HttpClient::connect(c.data), "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!(xlen(), after_refusal, "nothing appended while the user may not take appends back");
    // The permission back: the retry is a duplicate again, a new request is appended.
    assert_eq!(redis.client().cmd(&["ACL", "SETUSER", "croupier", "+xrevrange"]), Frame::SimpleString(b"OK".to_vec()));
    wait_until("ingest takes requests again", || {
        post_signed(&mut HttpClient::connect(c.data), "/api/ingest/events", GAME, SECRET, events(1).as_bytes()).status
            == 202
    });
    let now = xlen();
    let r = client.request("POST", "/api/ingest/events", &h, body.as_bytes());
    assert_eq!((r.status, r.text()), (202, r#"{"accepted":2}"#.to_owned()));
    assert_eq!(xlen(), now, "the retry appends nothing");
}

/// Sentinel, with a password on the data node and one on the sentinel: the one that is
/// missing from croupier's configuration is reported (`NOAUTH`, naming the server that
/// refused and the keys to check) by the log and the control port's `/readyz`.
#[test]
fn auth_sentinel_noauth_is_reported_for_the_data_node_and_the_sentinel() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let sentinel = SentinelServer::start_with_auth(&redis, Some(PASSWORD), Some(SENTINEL_PASSWORD));
    let sentinels = format!("[\"127.0.0.1:{}\"]", sentinel.port);
    let through = [("CROUPIER_REDIS__SENTINELS", sentinels.as_str()), ("CROUPIER_REDIS__MASTER_NAME", MASTER_NAME)];
    let cases = [
        (
            "CROUPIER_REDIS__SENTINEL_PASSWORD",
            SENTINEL_PASSWORD,
            format!("Redis authentication failed at {}", redis.addr()),
        ),
        (
            "CROUPIER_REDIS__PASSWORD",
            PASSWORD,
            format!("sentinel authentication failed at 127.0.0.1:{}", sentinel.port),
        ),
    ];
    for (key, value, said) in cases {
        let mut extra = through.to_vec();
        extra.push((key, value));
        let c = ingest_on(&redis, &extra);
        let body = readyz_says(&c, &said);
        assert!(body.contains("NOAUTH"), "{body}");
        wait_until("the log says NOAUTH", || {
            let log = c.log();
            log.contains("authentication failed") && log.contains("NOAUTH")
        });
        let log = c.log();
        assert!(!log.contains(PASSWORD) && !log.contains(SENTINEL_PASSWORD), "{log}");
    }
}

/// Black-box finding: a `redis.master_name` the sentinels do not monitor refused every
/// request (503 `redis_unavailable`) with nothing said at the default log level, and
/// `/readyz` only "not connected". The sentinel's refusal is logged and shown.
#[test]
fn a_master_name_the_sentinels_do_not_monitor_is_reported() {
    let redis = RedisServer::start();
    let sentinel = SentinelServer::start(&redis);
    let sentinels = format!("[\"127.0.0.1:{}\"]", sentinel.port);
    let c = ingest_on(
        &redis,
        &[("CROUPIER_REDIS__SENTINELS", sentinels.as_str()), ("CROUPIER_REDIS__MASTER_NAME", "nosuch")],
    );
    let body = readyz_says(&c, &format!("the sentinel at 127.0.0.1:{} names no primary", sentinel.port));
    assert!(body.contains("No such master") && body.contains("redis.master_name"), "{body}");
    wait_until("the log says so", || c.log().contains("the sentinel names no primary by redis.master_name"));
    let r = post_signed(&mut HttpClient::connect(c.data), "/api/ingest/events", GAME, SECRET, events(1).as_bytes());
    assert_eq!((r.status, r.error_tag().as_str()), (503, "redis_unavailable"), "{}", r.text());
    drop(c);
    // One sentinel of two that does not monitor the name (being set up, or another
    // deployment's): the other names the primary, requests are taken, and the control
    // port stays ready while the odd one is logged.
    let other = SentinelServer::start(&redis);
    RedisClient::connect(other.port).expect("sentinel").cmd(&["SENTINEL", "REMOVE", MASTER_NAME]);
    let both = format!("[\"127.0.0.1:{}\",\"127.0.0.1:{}\"]", other.port, sentinel.port);
    let c = ingest_on(
        &redis,
        &[("CROUPIER_REDIS__SENTINELS", both.as_str()), ("CROUPIER_REDIS__MASTER_NAME", MASTER_NAME)],
    );
    wait_until("ingest takes requests", || {
        post_signed(&mut HttpClient::connect(c.data), "/api/ingest/events", GAME, SECRET, events(1).as_bytes()).status
            == 202
    });
    wait_until("the odd sentinel is logged", || c.log().contains("the sentinel names no primary by redis.master_name"));
    wait_until("the control port is ready", || c.control_get("/readyz").0 == 200);
    for _ in 0..30 {
        let (status, body) = c.control_get("/readyz");
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Redis Cluster whose ACL user may run neither `CLUSTER SHARDS` nor `CLUSTER SLOTS`:
/// the slot map cannot be read, and the log and the control port's `/readyz` say
/// `NOPERM` for `CLUSTER SHARDS` at a seed.
#[test]
fn auth_cluster_user_missing_cluster_commands_is_reported() {
    let cluster = RedisCluster::start_with_password(3, 1, Some(PASSWORD));
    for node in &cluster.nodes {
        acl_user(node, &["+cluster|shards", "+cluster|slots"]);
    }
    let seeds = format!("[{}]", cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","));
    let c = ingest_on(
        &cluster.nodes[0],
        &[
            ("CROUPIER_REDIS__CLUSTER", seeds.as_str()),
            ("CROUPIER_STREAMS__PARTITIONS", "3"),
            ("CROUPIER_REDIS__USERNAME", "croupier"),
            ("CROUPIER_REDIS__PASSWORD", "user-pass"),
        ],
    );
    let body = readyz_says(&c, "permission denied (NOPERM) for CLUSTER SHARDS at");
    assert!(body.contains("the user needs"), "{body}");
    wait_until("the log says NOPERM for CLUSTER SHARDS", || {
        let log = c.log();
        log.contains("NOPERM") && log.contains("CLUSTER SHARDS")
    });
}
