//! Streams into ClickHouse: every accepted record lands exactly once as the product sees
//! it, whatever fails in between.

use std::process::Command;
use std::time::{Duration, Instant};

use croupier_it::http::now_secs;
use croupier_it::require_binary;

use croupier_it::proxy::{Fault, FaultProxy};

use crate::fixture::{event, events, post_signed, xlen, GAME, SECRET};
use crate::pipeline::Pipeline;

/// Posts `batches` batches of `per` standard events; returns how many were accepted.
fn post_events(p: &Pipeline, batches: usize, per: usize) -> u64 {
    let mut c = p.ingest.client();
    let mut accepted = 0;
    for _ in 0..batches {
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(per).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
        accepted += per as u64;
    }
    accepted
}

fn redis_cli(p: &Pipeline, args: &[&str]) -> String {
    redis_cli_on(p.ingest.redis.port, args)
}

/// `redis-cli -p <port> <args>`: its output, trimmed.
fn redis_cli_on(port: u16, args: &[&str]) -> String {
    let cli = require_binary("redis-cli", "redis-tools");
    let out = Command::new(cli).args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn posted_records_land_column_by_column() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[]);
    let ts = now_secs();
    let body = format!(
        r#"[{{"ts":{ts},"game_id":"g1","env":"prod","event":"level_complete","user_id":"u-1","session_id":"s-1",
        "device_id":"d-1","channel":"gp","platform":"android","country":"br","app_version":"2.0.1",
        "event_id":"11111111-2222-4333-8444-555555555555","props":{{"level":7}}}},
        {{"ts":{ts},"game_id":"g1","env":"prod","event":"guild_joined","user_id":"u-2"}}]"#
    );
    assert_eq!(post_signed(&mut p.ingest.client(), "/api/ingest/events", GAME, SECRET, body.as_bytes()).status, 202);
    let pay = format!(
        r#"[{{"ts":{ts},"game_id":"g1","env":"prod","user_id":"u-1","order_id":"ord-9","amount_cents":1999,
        "currency":"EUR","status":"refunded","region":"EU","reason":"chargeback"}}]"#
    );
    assert_eq!(post_signed(&mut p.ingest.client(), "/api/ingest/payments", GAME, SECRET, pay.as_bytes()).status, 202);

    p.wait_for(2, "events in ClickHouse", Pipeline::distinct_events);
    p.wait_for(1, "payments in ClickHouse", |p| p.scalar("SELECT count() FROM analytics.payments FINAL"));
    // Read back by an independent client over the native protocol.
    let row = crate::pipeline::read_rs(
        &p.clickhouse,
        "SELECT toString(toUnixTimestamp(event_time)) AS t, CAST(game_id AS String) AS g, CAST(env AS String) AS e, \
         user_id, session_id, CAST(event AS String) AS ev, CAST(channel AS String) AS c, \
         CAST(platform AS String) AS pl, toString(country) AS co, app_version, toString(event_id) AS id, \
         props_json, device_id FROM analytics.events WHERE user_id = 'u-1'",
    );
    let want: Vec<String> = [
        ts.to_string().as_str(),
        "g1",
        "prod",
        "u-1",
        "s-1",
        "level_complete",
        "gp",
        "android",
        "BR",
        "2.0.1",
        "11111111-2222-4333-8444-555555555555",
        r#"{"level":7}"#,
        "d-1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(row, vec![want]);
    let custom =
        p.clickhouse.query("SELECT event, user_id FROM analytics.events WHERE user_id = 'u-2' FORMAT TabSeparated");
    assert_eq!(custom.trim_end(), "guild_joined\tu-2", "custom events land in the same table");
    let pay_row = p.clickhouse.query(
        "SELECT toUnixTimestamp(time), user_id, order_id, amount_cents, currency, status, region, reason \
         FROM analytics.payments FORMAT TabSeparated",
    );
    assert_eq!(pay_row.trim_end(), format!("{ts}\tu-1\tord-9\t1999\tEUR\trefunded\tEU\tchargeback"));
    p.wait_for(0, "pending entries", |p| {
        (p.pending("analytics:events") + p.pending("analytics:custom") + p.pending("analytics:payments")) as u64
    });
    assert!(p.stop_worker(), "SIGTERM stops the worker cleanly");
}

#[test]
fn croupier_format_entries_and_poison() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[]);
    let ts = now_secs();
    let with_id = format!(
        r#"{{"ts":"{ts}","game_id":"legacy","env":"prod","event":"login","user_id":"old-1","event_id":"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}}"#
    );
    let without_id = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"login","user_id":"old-2"}}"#);
    redis_cli(&p, &["XADD", "analytics:events", "*", "data", &with_id]);
    let poison_id = redis_cli(&p, &["XADD", "analytics:events", "*", "data", "{not json"]);
    redis_cli(&p, &["XADD", "analytics:events", "*", "fmt", "rkyv1", "n", "3", "batch", "garbage"]);
    let id2 = redis_cli(&p, &["XADD", "analytics:events", "*", "data", &without_id]);
    // Two records in one entry, by its field given twice (Redis keeps both): neither is
    // taken for the other (the first alone was stored, the second lost unseen).
    let twice = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"login","user_id":"old-3"}}"#);
    let twice_id = redis_cli(&p, &["XADD", "analytics:events", "*", "data", &twice, "data", &without_id]);
    // A record and an archive in one entry: the archive was ignored unseen.
    let both = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"login","user_id":"old-4"}}"#);
    let both_id =
        redis_cli(&p, &["XADD", "analytics:events", "*", "data", &both, "fmt", "rkyv1", "n", "1", "batch", "x"]);
    let pay = format!(
        r#"{{"ts":{ts},"game_id":"legacy","env":"prod","user_id":"old-1","order_id":"L-1","amount_cents":5,"currency":"USD","status":"success"}}"#
    );
    redis_cli(&p, &["XADD", "analytics:payments", "*", "data", &pay]);

    p.wait_for(2, "Croupier-format events", Pipeline::distinct_events);
    p.wait_for(1, "Croupier-format payments", |p| p.scalar("SELECT count() FROM analytics.payments"));
    p.wait_for(4, "dead letters", |p| xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    let ids = p
        .clickhouse
        .query("SELECT user_id, toString(event_id) FROM analytics.events ORDER BY user_id FORMAT TabSeparated");
    let lines: Vec<&str> = ids.lines().collect();
    assert_eq!(lines[0], "old-1\taaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
    // Without event_id: derived from the stream and entry ID, so redelivery keeps it.
    let derived = croupier_protocol::validate::derived_event_id("analytics:events", &id2);
    let derived = uuid_text(&derived);
    assert_eq!(lines[1], format!("old-2\t{derived}"));

    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert_eq!(dead[0].get("source_id"), Some(poison_id.as_bytes()));
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(dead[0].get("data"), Some(b"{not json".as_slice()), "the original entry is kept");
    let reason2 = String::from_utf8_lossy(dead[1].get("reason").expect("reason")).into_owned();
    assert!(reason2.contains("batch archive"), "{reason2}");
    assert_eq!(dead[2].get("source_id"), Some(twice_id.as_bytes()));
    let reason3 = String::from_utf8_lossy(dead[2].get("reason").expect("reason")).into_owned();
    assert_eq!(reason3, "the entry gives its field data more than once");
    assert_eq!(p.scalar("SELECT count() FROM analytics.events WHERE user_id = 'old-3'"), 0);
    assert_eq!(dead[3].get("source_id"), Some(both_id.as_bytes()));
    let reason4 = String::from_utf8_lossy(dead[3].get("reason").expect("reason")).into_owned();
    assert_eq!(reason4, "the entry gives both a data record and a batch archive (fmt, batch)");
    assert_eq!(dead[3].get("batch"), Some(b"x".as_slice()), "the original entry is kept");
    assert_eq!(p.scalar("SELECT count() FROM analytics.events WHERE user_id = 'old-4'"), 0);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[test]
fn worker_killed_after_insert_before_ack() {
    // XACK is renamed away: the worker inserts, cannot acknowledge, and is killed there.
    let mut p = Pipeline::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--rename-command",
        "XACK",
        "XACK_HIDDEN_FOR_TEST",
    ]);
    p.start_worker(&[]);
    let accepted = post_events(&p, 20, 50);
    // The first batch is inserted; its acknowledgement fails, so the worker holds it and
    // retries (inserting it again: the table keeps one copy) and reads nothing more.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.distinct_events() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing inserted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let inserted = p.distinct_events();
    assert!(inserted > 0 && inserted <= accepted);
    assert!(p.pending("analytics:events") > 0, "nothing may be acknowledged yet");
    assert!(p.scalar("SELECT count() FROM analytics.events") >= inserted, "copies before merges");
    p.kill_worker();
    // Redis comes back with XACK (same data from the AOF); a new worker process recovers.
    p.ingest.redis.restart_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    p.start_worker(&[]);
    p.wait_for(0, "pending after recovery", |p| p.pending("analytics:events") as u64);
    assert_eq!(p.distinct_events(), accepted, "redelivered rows never show twice");
}

#[test]
fn worker_killed_before_insert_and_clickhouse_down_for_a_while() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.stop();
    p.start_worker(&[]);
    let first = post_events(&p, 10, 20);
    // The worker has the entries (pending) but cannot insert; kill it there.
    p.wait_for(10, "entries delivered", |p| p.pending("analytics:events") as u64);
    p.kill_worker();
    p.start_worker(&[]);
    std::thread::sleep(Duration::from_millis(500));
    let second = post_events(&p, 10, 20);
    // Nothing acknowledged, nothing dropped: all 20 entries are in the stream, the first
    // 10 still pending (the worker keeps retrying them before reading more).
    assert_eq!(xlen(&p.ingest.redis, "analytics:events"), 20);
    assert_eq!(p.pending("analytics:events"), 10);
    p.clickhouse.restart();
    p.wait_for(first + second, "rows after ClickHouse came back", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

/// While a batch is being inserted the consumer already reads the next one: with
/// ClickHouse frozen mid-insert, a second batch is delivered (pending) before the first
/// is acknowledged; when ClickHouse goes on, both land once and nothing stays pending.
#[test]
fn next_batch_is_read_while_one_is_inserted() {
    let mut p = Pipeline::start(&[]);
    // A consumer does not read ahead when a claim is due (claims read its pending list),
    // and this harness claims every 200 ms: claims are put out of the way here.
    p.start_worker(&[("CROUPIER_CLICKHOUSE__TIMEOUT_MS", "60000"), ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "600000")]);
    let warm = post_events(&p, 1, 10);
    p.wait_for(warm, "first rows", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);

    p.clickhouse.pause();
    // One entry per batch: the first batch cannot be split between the insert and the
    // read-ahead.
    let first = post_events(&p, 1, 30);
    p.wait_for(1, "first batch delivered", |p| p.pending("analytics:events") as u64);
    // Past the linger: the first batch is closed and its insert waits on ClickHouse.
    std::thread::sleep(Duration::from_millis(500));
    let second = post_events(&p, 1, 40);
    p.wait_for(2, "second batch read ahead", |p| p.pending("analytics:events") as u64);
    p.clickhouse.resume();
    p.wait_for(warm + first + second, "rows after ClickHouse went on", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(p.scalar("SELECT count() FROM analytics.events"), warm + first + second, "each row once");
}

/// Under a heavy load a consumer's batches close `worker.insert_interval_ms` apart, not a
/// linger after each one's first entry, while a light load is inserted a linger after it
/// arrives. "Heavy" is rows arriving fast enough to fill a tenth of `batch_rows` within
/// the interval: here 100 rows per 600 ms, with a 150 ms linger. Claims are put out of the
/// way so that the consumer reads ahead, as in steady state. Inserts are counted by the
/// table's block numbers, which every insert takes and merges do not: one per partition it
/// writes, so every event is stamped with the test's start time (one month, one partition,
/// even when the test runs across the turn of a UTC month) and the count is checked to be
/// of one partition.
#[test]
fn a_heavy_load_is_inserted_once_per_insert_interval_a_light_one_after_the_linger() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[
        ("CROUPIER_WORKER__INSERT_INTERVAL_MS", "600"),
        ("CROUPIER_WORKER__LINGER_MS", "150"),
        ("CROUPIER_WORKER__BATCH_ROWS", "1000"),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "600000"),
        // Above twice the interval and the linger (else refused), and no claims anyway.
        ("CROUPIER_WORKER__CLAIM_IDLE_MS", "600000"),
    ]);
    let blocks = |p: &Pipeline| {
        p.scalar("SELECT max(max_block_number) FROM system.parts WHERE database = 'analytics' AND table = 'events'")
    };
    // `per` events at the test's start time, of users no other body has.
    let t0 = now_secs();
    let mut bodies = 0;
    let mut events_at_start = |per: usize| {
        bodies += 1;
        let items: Vec<String> = (0..per)
            .map(|i| {
                format!(
                    r#"{{"ts":{t0},"game_id":"{GAME}","env":"prod","event":"level_start","user_id":"u{i}-h{bodies}"}}"#
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    };
    let mut c = p.ingest.client();
    let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events_at_start(10).as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let mut accepted = 10;
    p.wait_for(accepted, "first rows", Pipeline::distinct_events);
    // Posts `per` events every `every` for `seconds`; returns the inserts they took.
    let mut phase = |per: usize, every: u64, seconds: u64, accepted: &mut u64| {
        let before = blocks(&p);
        let start = Instant::now();
        let mut requests = 0;
        while start.elapsed() < Duration::from_secs(seconds) {
            let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events_at_start(per).as_bytes());
            assert_eq!(r.status, 202, "{}", r.text());
            *accepted += per as u64;
            requests += 1;
            std::thread::sleep(Duration::from_millis(every));
        }
        p.wait_for(*accepted, "rows of the phase", Pipeline::distinct_events);
        (blocks(&p) - before, requests)
    };
    // Heavy: 40 events every 50 ms (800 rows/s; heavy from 167). 3 s / 600 ms, plus the
    // batches at either end (a linger alone: about 3 s / 150 ms, 17 when measured).
    let (inserts, requests) = phase(40, 50, 3, &mut accepted);
    assert!((2..=10).contains(&inserts), "heavy: {inserts} inserts for {requests} requests");
    // Light: one event every 100 ms (10 rows/s): each batch a linger after its first (the
    // interval would make about 3 of 2 s, 4 when measured).
    std::thread::sleep(Duration::from_secs(1));
    let (inserts, requests) = phase(1, 100, 2, &mut accepted);
    assert!(inserts >= 6, "light: {inserts} inserts for {requests} requests");
    let partitions = "SELECT uniqExact(partition) FROM system.parts WHERE database = 'analytics' AND table = 'events'";
    assert_eq!(p.scalar(partitions), 1, "a block number per insert");
}

/// A trickle of appends (one-event requests back to back) while batches gather for a
/// second: a consumer reads what arrived once per pause (here 150 ms), not each entry as
/// it is appended. Redis counts the reads (`INFO commandstats`); every event is inserted.
/// (With no pause: 35 and 39 reads when measured, the requests taking 0.05 s.)
#[test]
fn a_trickle_is_read_once_per_pause_not_once_per_append() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[
        ("CROUPIER_WORKER__LINGER_MS", "1000"),
        ("CROUPIER_WORKER__INSERT_INTERVAL_MS", "1000"),
        ("CROUPIER_WORKER__READ_PAUSE_MS", "150"),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "600000"),
        ("CROUPIER_WORKER__CLAIM_IDLE_MS", "600000"),
    ]);
    let accepted = post_events(&p, 1, 1);
    p.wait_for(accepted, "the first event", Pipeline::distinct_events);
    let before = p.ingest.redis.calls("xreadgroup");
    let start = Instant::now();
    let accepted = accepted + post_events(&p, 100, 1);
    let reads = p.ingest.redis.calls("xreadgroup") - before;
    let secs = start.elapsed().as_secs_f64();
    // The events stream's consumer (reading the custom stream with its own): a read per
    // pause and one to start each batch (a second apart); the idle payments consumer: a
    // read per idle block (1 s).
    let bound = (secs / 0.15).ceil() + (secs + 1.0) + (secs + 1.0) + 4.0;
    assert!((reads as f64) <= bound, "{reads} reads for 100 appends in {secs:.2} s (at most {bound})");
    p.wait_for(accepted, "every event", Pipeline::distinct_events);
}

/// Under a heavy load on `analytics.events` (standard events at 400 rows/s, heavy from
/// 100 rows/s here), the light custom stream feeding the same table (20 rows/s) makes no
/// inserts of its own: its entries are read and inserted with the standard events', one
/// insert per interval for the table. ClickHouse numbers every insert's block: the
/// table's highest block number counts its inserts.
/// (Judged per stream: 35 and 36 inserts in 3.0 s when measured; per table 8; read
/// together 4.)
#[test]
fn a_light_stream_is_inserted_with_its_tables_heavy_one_once_per_interval() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[
        ("CROUPIER_WORKER__BATCH_ROWS", "1000"),
        ("CROUPIER_WORKER__LINGER_MS", "50"),
        ("CROUPIER_WORKER__INSERT_INTERVAL_MS", "1000"),
        ("CROUPIER_WORKER__READ_PAUSE_MS", "10"),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "600000"),
        ("CROUPIER_WORKER__CLAIM_IDLE_MS", "600000"),
    ]);
    let mut c = p.ingest.client();
    let start = Instant::now();
    let (mut accepted, mut k) = (0u64, 0usize);
    while start.elapsed() < Duration::from_secs(3) {
        let tick = start + Duration::from_millis(50 * k as u64);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let custom = format!("[{}]", event("boss_killed", &format!("c{k}")));
        for body in [events(20), custom] {
            let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
            assert_eq!(r.status, 202, "{}", r.text());
        }
        accepted += 21;
        k += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    p.wait_for(accepted, "every event", Pipeline::distinct_events);
    let inserts =
        p.scalar("SELECT max(max_block_number) FROM system.parts WHERE database = 'analytics' AND table = 'events'");
    // The first batch after the linger, then one per interval, and the rest after the
    // load stopped.
    let bound = secs + 3.0;
    assert!((inserts as f64) <= bound, "{inserts} inserts in {secs:.1} s (at most {bound})");
    p.wait_for(0, "custom entries acknowledged on their own stream", |p| p.pending("analytics:custom") as u64);
}

/// The events consumer reads the custom stream's new entries with its own, in one insert
/// (the table's only block number is 1): each entry is still acknowledged on its own
/// stream, dead-lettered to its own stream's dead letters, and a Croupier-format entry's
/// derived event id is its own stream's.
#[test]
fn custom_entries_read_with_events_keep_their_own_stream() {
    let mut p = Pipeline::start(&[]);
    let ts = now_secs();
    let custom = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"boss_killed","user_id":"c-1"}}"#);
    let standard = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"login","user_id":"e-1"}}"#);
    let custom_id = redis_cli(&p, &["XADD", "analytics:custom", "*", "data", &custom]);
    let poison_id = redis_cli(&p, &["XADD", "analytics:custom", "*", "data", "{not json"]);
    let standard_id = redis_cli(&p, &["XADD", "analytics:events", "*", "data", &standard]);
    p.start_worker(&[]);
    p.wait_for(2, "both events", Pipeline::distinct_events);
    p.wait_for(1, "the custom dead letter", |p| xlen(&p.ingest.redis, "analytics:custom:dead") as u64);
    p.wait_for(0, "pending custom", |p| p.pending("analytics:custom") as u64);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:custom:dead");
    assert_eq!(dead[0].get("source_id"), Some(poison_id.as_bytes()));
    let ids = p
        .clickhouse
        .query("SELECT user_id, toString(event_id) FROM analytics.events ORDER BY user_id FORMAT TabSeparated");
    let derived = |key: &str, id: &str| uuid_text(&croupier_protocol::validate::derived_event_id(key, id));
    let want = format!(
        "c-1\t{}\ne-1\t{}\n",
        derived("analytics:custom", &custom_id),
        derived("analytics:events", &standard_id)
    );
    assert_eq!(ids, want);
    let blocks = "SELECT max(max_block_number) FROM system.parts WHERE database = 'analytics' AND table = 'events'";
    assert_eq!(p.scalar(blocks), 1, "one insert for both streams");
}

/// Entry IDs are per stream key: entries written without an event id to the plain key and
/// to two partitions' keys, under one and the same entry ID, are three events, each with
/// its id derived from its own key (the plain key's as before partitions).
#[test]
fn events_without_ids_in_different_partitions_are_different_events() {
    use croupier_protocol::cluster::{partition_tag, stream_key};
    use croupier_protocol::stream::StreamKind;
    let mut p = Pipeline::start(&[]);
    let ts = now_secs();
    let keys: Vec<String> = [None, partition_tag(0, 2), partition_tag(1, 2)]
        .iter()
        .map(|t| stream_key(StreamKind::Events, t.as_deref()))
        .collect();
    let now = redis_cli(&p, &["TIME"]);
    let score = now.lines().next().unwrap_or("1");
    redis_cli(&p, &["ZADD", "croupier:partitions", score, "1"]);
    for (i, key) in keys.iter().enumerate() {
        let data = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"login","user_id":"u-{i}"}}"#);
        assert_eq!(redis_cli(&p, &["XADD", key, "1700000000000-7", "data", &data]), "1700000000000-7");
    }
    p.start_worker(&[("CROUPIER_STREAMS__PARTITIONS", "2")]);
    p.wait_for(3, "three events", Pipeline::distinct_events);
    let ids = p
        .clickhouse
        .query("SELECT user_id, toString(event_id) FROM analytics.events FINAL ORDER BY user_id FORMAT TabSeparated");
    let want: String = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            format!("u-{i}\t{}\n", uuid_text(&croupier_protocol::validate::derived_event_id(key, "1700000000000-7")))
        })
        .collect();
    assert_eq!(ids, want);
}

/// A worker running alone (no ingest process, whose backlog readings also make a missing
/// group again) makes a consumer group destroyed under it again from the stream's start,
/// and goes on: the entries appended meanwhile land, each once.
#[test]
fn a_worker_alone_makes_a_destroyed_consumer_group_again() {
    use croupier_it::clickhouse::ClickHouseServer;
    use croupier_it::redis::RedisServer;
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let env = crate::pipeline::env(&redis, &ch);
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok, "croupier migrate failed: {out}");
    let cli = |args: &[&str]| redis_cli_on(redis.port, args);
    let stored = |want: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: u64 = ch.query("SELECT count() FROM analytics.events FINAL").trim().parse().unwrap_or(0);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {got} events stored, expected {want} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Killed when dropped.
    let _worker = croupier_it::monitoring::Croupier::start(crate::pipeline::CROUPIER, "worker", &env);
    let ts = now_secs();
    let data =
        |user: &str| format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"login","user_id":"{user}"}}"#);
    cli(&["XADD", "analytics:events", "*", "data", &data("u-1")]);
    stored(1, "before the group is destroyed");
    assert_eq!(cli(&["XGROUP", "DESTROY", "analytics:events", "analytics-workers"]), "1");
    cli(&["XADD", "analytics:events", "*", "data", &data("u-2")]);
    stored(2, "after the group was destroyed");
    assert_eq!(cli(&["XINFO", "GROUPS", "analytics:events"]).lines().nth(1), Some("analytics-workers"));
    // The custom stream's group too, which the events consumer reads with its own.
    let custom = format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"boss_killed","user_id":"c-1"}}"#);
    cli(&["XADD", "analytics:custom", "*", "data", &custom]);
    stored(3, "a custom event");
    assert_eq!(cli(&["XGROUP", "DESTROY", "analytics:custom", "analytics-workers"]), "1");
    cli(&["XADD", "analytics:custom", "*", "data", &custom.replace("c-1", "c-2")]);
    stored(4, "after the custom group was destroyed");
}

/// A fault of the custom stream alone does not stop the events stream read with it. With
/// `analytics:custom` turned into a string while the events consumer holds a custom entry
/// (its insert failing: `user_days` renamed away), the entry's acknowledgement meets
/// `WRONGTYPE`: its stream is gone with nothing left to acknowledge, and the batch commits;
/// the reads of both keys answer `WRONGTYPE` too, and the events consumer reads its own
/// stream alone. Custom entries flow again once the key is a stream with its group.
#[test]
fn a_broken_custom_stream_does_not_stop_the_events_stream_read_with_it() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[]);
    let ts = now_secs();
    let entry = |event: &str, user: &str| {
        format!(r#"{{"ts":{ts},"game_id":"legacy","env":"prod","event":"{event}","user_id":"{user}"}}"#)
    };
    p.clickhouse.query("RENAME TABLE analytics.user_days TO analytics.user_days_away");
    redis_cli(&p, &["XADD", "analytics:custom", "*", "data", &entry("boss_killed", "c-1")]);
    p.wait_for(1, "the custom entry in the events consumer's hands", |p| p.pending("analytics:custom") as u64);
    redis_cli(&p, &["DEL", "analytics:custom"]);
    redis_cli(&p, &["SET", "analytics:custom", "oops"]);
    p.clickhouse.query("RENAME TABLE analytics.user_days_away TO analytics.user_days");
    redis_cli(&p, &["XADD", "analytics:events", "*", "data", &entry("login", "e-1")]);
    p.wait_for(2, "the standard event while the custom stream is broken", Pipeline::distinct_events);
    redis_cli(&p, &["DEL", "analytics:custom"]);
    redis_cli(&p, &["XGROUP", "CREATE", "analytics:custom", "analytics-workers", "0", "MKSTREAM"]);
    redis_cli(&p, &["XADD", "analytics:custom", "*", "data", &entry("boss_killed", "c-2")]);
    p.wait_for(3, "the custom event once the stream is back", Pipeline::distinct_events);
    p.wait_for(0, "pending custom", |p| p.pending("analytics:custom") as u64);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
}

/// The custom stream's consumer claims idle entries under the shard's consumer name,
/// which is also the name the events consumer reads custom entries under. While the
/// events consumer's inserts fail (the `user_days` table renamed away: ClickHouse answers,
/// nothing systemic), the custom entries it holds go idle past `claim_idle_ms`: the custom
/// consumer's claims leave them to it, giving back the delivery each claim counted. Once
/// the table is back, every event is counted once in `user_days`.
#[test]
fn custom_entries_the_events_consumer_holds_are_not_claimed_from_it() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("RENAME TABLE analytics.user_days TO analytics.user_days_away");
    p.start_worker(&[
        ("CROUPIER_WORKER__LINGER_MS", "50"),
        ("CROUPIER_WORKER__INSERT_INTERVAL_MS", "100"),
        ("CROUPIER_WORKER__CLAIM_IDLE_MS", "1000"),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "200"),
    ]);
    let mut c = p.ingest.client();
    let body = format!("[{},{}]", event("boss_killed", "held-1"), event("level_start", "held-2"));
    assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes()).status, 202);
    p.wait_for(1, "the custom entry delivered", |p| p.pending("analytics:custom") as u64);
    let id = redis_cli(&p, &["XRANGE", "analytics:custom", "-", "+", "COUNT", "1"]);
    let id = id.lines().next().unwrap_or_default().to_owned();
    // Three claim idles: without the rule the custom consumer took it at the first.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(pending_owner_in(&p, "analytics:custom", &id), Some(("it-0".into(), 1)), "claimed from its holder");
    p.clickhouse.query("RENAME TABLE analytics.user_days_away TO analytics.user_days");
    p.wait_for(0, "pending custom", |p| p.pending("analytics:custom") as u64);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    assert_eq!(p.scalar("SELECT sum(events) FROM analytics.user_days"), 2, "each event counted once");
    assert_eq!(xlen(&p.ingest.redis, "analytics:custom:dead"), 0);
}

/// The events consumer gathers a batch holding a custom entry and loses its Redis
/// connection before the batch closes: the batch is let go, its entries still pending
/// under the consumer's name. The custom entry is no longer in the events consumer's
/// hands, so the custom consumer claims it once idle and it lands. (Left marked as held,
/// every claim gave it back to a holder that had dropped it: it waited for a restart.)
#[test]
fn a_custom_entry_of_a_batch_cut_short_by_a_lost_connection_is_claimed_and_lands() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[
        ("CROUPIER_WORKER__LINGER_MS", "2500"),
        ("CROUPIER_WORKER__CLAIM_IDLE_MS", "6000"),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "200"),
    ]);
    // Let the consumers start and settle into their blocking reads.
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = p.ingest.client();
    let body = format!("[{}]", event("boss_killed", "cut-1"));
    assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes()).status, 202);
    p.wait_for(1, "the custom entry read", |p| p.pending("analytics:custom") as u64);
    // The batch is still gathering (a 2.5 s linger): every connection of the worker cut.
    p.ingest.redis.client().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    p.wait_for(1, "the custom event in ClickHouse", Pipeline::distinct_events);
    p.wait_for(0, "pending custom", |p| p.pending("analytics:custom") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:custom:dead"), 0);
}

/// Custom entries a killed worker left pending under its consumer name are recovered by
/// the custom consumer after the start, while new custom entries arrive and are read by
/// the events consumer: every event lands once. `user_days` sums what it is sent, so an
/// entry inserted twice (recovered and also read anew) would count twice there.
#[test]
fn custom_entries_left_pending_are_recovered_once_while_new_ones_arrive() {
    let mut p = Pipeline::start(&[]);
    let mut c = p.ingest.client();
    let custom = |k: usize| {
        let items: Vec<String> = (0..10).map(|i| event("boss_killed", &format!("c{k}-{i}"))).collect();
        format!("[{}]", items.join(","))
    };
    for k in 0..20 {
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, custom(k).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    // The worker's consumer read them and was killed before inserting them.
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "it-0", "COUNT", "100", "STREAMS", "analytics:custom", ">"]);
    assert_eq!(p.pending("analytics:custom"), 20);
    p.start_worker(&[]);
    let mut sent = 200u64;
    for k in 20..60 {
        for body in [custom(k), events(5)] {
            let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
            assert_eq!(r.status, 202, "{}", r.text());
        }
        sent += 15;
        std::thread::sleep(Duration::from_millis(5));
    }
    p.wait_for(sent, "every event", Pipeline::distinct_events);
    p.wait_for(0, "pending custom", |p| p.pending("analytics:custom") as u64);
    p.wait_for(0, "pending events", |p| p.pending("analytics:events") as u64);
    assert_eq!(p.scalar("SELECT sum(events) FROM analytics.user_days"), sent, "each event counted once");
}

/// Redis is killed (SIGKILL) and restarted from its append-only file. With
/// `appendfsync always` every acknowledged append survives; with Redis's default
/// `everysec` a crash may lose the last writes Redis already confirmed (README).
#[test]
fn redis_restarted_with_aof() {
    let mut p = Pipeline::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    p.start_worker(&[]);
    let first = post_events(&p, 5, 40);
    p.ingest.redis.restart_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    // Ingest reconnects on its own; retry until it does.
    let mut c = p.ingest.client();
    let mut second = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while second < 200 {
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(40).as_bytes());
        match r.status {
            202 => second += 40,
            503 => std::thread::sleep(Duration::from_millis(50)),
            s => panic!("{s}: {}", r.text()),
        }
        assert!(std::time::Instant::now() < deadline, "ingest did not recover");
    }
    p.wait_for(first + second, "rows after Redis restart", Pipeline::distinct_events);
}

#[test]
fn entries_of_a_dead_consumer_are_claimed() {
    let mut p = Pipeline::start(&[]);
    let body = format!("[{},{}]", event("login", "a"), event("login", "b"));
    assert_eq!(post_signed(&mut p.ingest.client(), "/api/ingest/events", GAME, SECRET, body.as_bytes()).status, 202);
    // Another consumer takes the entry and dies without acknowledging it.
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "dead-one", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    assert_eq!(p.pending("analytics:events"), 1);
    p.start_worker(&[]);
    p.wait_for(2, "claimed rows", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

#[test]
fn entry_delivered_too_often_goes_to_dead_letter() {
    let p = Pipeline::start(&[]);
    // Another consumer took both; the first is handed to this worker's consumer as an entry
    // that has already been delivered 10 times, twice `max_deliveries` (it kept killing
    // whoever read it, with others and then alone).
    let (mut p, first, second) = two_logins_read_by_a_ghost(p, ["first", "second"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XCLAIM", "analytics:events", "analytics-workers", "it-0", "0", &first, "RETRYCOUNT", "10"]);
    p.start_worker(&[]);
    p.wait_for(1, "dead letters", |p| xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert_eq!(dead[0].get("source_id"), Some(first.as_bytes()));
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("delivered 10 times"), "{reason}");
    assert!(dead[0].get("batch").is_some(), "the original entry is kept");
    // The second entry is claimed from the silent consumer and lands.
    p.wait_for(1, "rows of the second entry", Pipeline::distinct_events);
    assert_eq!(p.clickhouse.query("SELECT user_id FROM analytics.events FORMAT TabSeparated").trim(), "second");
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert!(dead.iter().all(|d| d.get("source_id") != Some(second.as_bytes())));
}

/// Entries claimed from a dead consumer past `max_deliveries` (5) are tried alone, not
/// dead-lettered: one delivered 6 times (7 with the claim) is inserted and acknowledged;
/// one delivered 10 times (twice the limit; 11 with the claim) is dead-lettered unread.
#[test]
fn entries_claimed_past_the_delivery_limit_are_tried_alone() {
    let p = Pipeline::start(&[]);
    let (mut p, first, second) = two_logins_read_by_a_ghost(p, ["alone", "given-up"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XCLAIM", "analytics:events", "analytics-workers", "ghost", "0", &first, "RETRYCOUNT", "6", "JUSTID"]);
    r.cmd(&["XCLAIM", "analytics:events", "analytics-workers", "ghost", "0", &second, "RETRYCOUNT", "10", "JUSTID"]);
    p.start_worker(&[]);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    p.wait_for(1, "rows of the entry tried alone", Pipeline::distinct_events);
    assert_eq!(p.clickhouse.query("SELECT user_id FROM analytics.events FORMAT TabSeparated").trim(), "alone");
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get("source_id"), Some(second.as_bytes()));
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("delivered 10 times"), "{reason}");
}

/// Posts one login of each of `users` (one request, one stream entry each) and has a
/// consumer `ghost` read both entries without acknowledging them; returns their ids.
fn two_logins_read_by_a_ghost(p: Pipeline, users: [&str; 2]) -> (Pipeline, String, String) {
    for user in users {
        let body = format!("[{}]", event("login", user));
        assert_eq!(
            post_signed(&mut p.ingest.client(), "/api/ingest/events", GAME, SECRET, body.as_bytes()).status,
            202
        );
    }
    let entries = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events");
    let (first, second) = (entries[0].id.clone(), entries[1].id.clone());
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "ghost", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    (p, first, second)
}

/// Posts one batch of two events; returns the id of its stream entry.
fn post_one_entry(p: &Pipeline, users: [&str; 2]) -> String {
    let body = format!("[{},{}]", event("login", users[0]), event("login", users[1]));
    let r = post_signed(&mut p.ingest.client(), "/api/ingest/events", GAME, SECRET, body.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let entries = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events");
    entries.last().expect("an entry").id.clone()
}

/// `(consumer, deliveries)` of a pending entry.
fn pending_owner(p: &Pipeline, id: &str) -> Option<(String, i64)> {
    pending_owner_in(p, "analytics:events", id)
}

/// [`pending_owner`] in stream `key`.
fn pending_owner_in(p: &Pipeline, key: &str, id: &str) -> Option<(String, i64)> {
    use croupier_protocol::resp::Frame;
    let Frame::Array(items) = p.ingest.redis.client().cmd(&["XPENDING", key, "analytics-workers", id, id, "1"]) else {
        return None;
    };
    let Some(Frame::Array(item)) = items.into_iter().next() else { return None };
    match (&item[1], &item[3]) {
        (Frame::BulkString(c), Frame::Integer(n)) => Some((String::from_utf8_lossy(c).into_owned(), *n)),
        _ => None,
    }
}

/// C2: an entry deleted from the stream while pending with a dead consumer is reported
/// by XAUTOCLAIM as deleted (Redis 7); the worker dead-letters it by id instead of
/// dropping it silently.
#[test]
fn c2_entry_deleted_while_pending_is_dead_lettered_by_id() {
    let mut p = Pipeline::start(&[]);
    let id = post_one_entry(&p, ["a", "b"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "dead-one", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    assert_eq!(r.int(&["XDEL", "analytics:events", &id]), 1);
    assert_eq!(p.pending("analytics:events"), 1, "still pending with the dead consumer");
    p.start_worker(&[]);
    p.wait_for(1, "dead letters", |p| xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert_eq!(dead[0].get("source_id"), Some(id.as_bytes()));
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("deleted from the stream while pending"), "{reason}");
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

/// A worker's own pending entry deleted from the stream (read by it before a restart,
/// then deleted) comes back without fields on recovery: dead-lettered as deleted while
/// pending, as `XAUTOCLAIM`'s deleted ids are (docs/worker.md), not as undecodable.
#[test]
fn an_own_pending_entry_deleted_is_dead_lettered_as_deleted() {
    let mut p = Pipeline::start(&[]);
    let id = post_one_entry(&p, ["a", "b"]);
    let kept = post_one_entry(&p, ["c", "d"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "it-0", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    assert_eq!(r.int(&["XDEL", "analytics:events", &id]), 1);
    assert_eq!(pending_owner(&p, &kept), Some(("it-0".into(), 1)));
    p.start_worker(&[]);
    p.wait_for(2, "rows of the entry left", Pipeline::distinct_events);
    p.wait_for(1, "dead letters", |p| xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert_eq!(dead[0].get("source_id"), Some(id.as_bytes()));
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert_eq!(reason, "deleted from the stream while pending");
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

/// M5: a claim is one delivery. With `max_deliveries = 3`, an entry read by one dead
/// consumer, claimed by a second that died too, and then claimed by the worker has been
/// delivered 3 times: it is inserted, not dead-lettered.
#[test]
fn m5_an_entry_claimed_twice_counts_two_deliveries() {
    let mut p = Pipeline::start(&[]);
    let id = post_one_entry(&p, ["a", "b"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "dead-1", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    r.cmd(&["XCLAIM", "analytics:events", "analytics-workers", "dead-2", "0", &id]);
    assert_eq!(pending_owner(&p, &id), Some(("dead-2".into(), 2)));
    p.start_worker(&[("CROUPIER_WORKER__MAX_DELIVERIES", "3")]);
    p.wait_for(2, "rows of the claimed entry", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "nothing dead-lettered");
}

/// M5: a claim followed by a restart is two deliveries. With `max_deliveries = 3`, an
/// entry read by a dead consumer, claimed by a worker that cannot insert it (the table
/// drifted: ClickHouse answers, and refuses) and is killed, then recovered by the next
/// worker, is inserted. (A worker that cannot reach ClickHouse at all claims nothing:
/// `clickhouse_outage_with_restarts_and_claims_dead_letters_nothing`.)
#[test]
fn m5_an_entry_claimed_then_recovered_is_inserted() {
    let mut p = Pipeline::start(&[]);
    let id = post_one_entry(&p, ["a", "b"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "dead-1", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(3)");
    let env = [("CROUPIER_WORKER__MAX_DELIVERIES", "3")];
    p.start_worker(&env);
    p.wait_for(1, "claimed by the worker", |p| u64::from(pending_owner(p, &id).is_some_and(|(c, _)| c == "it-0")));
    std::thread::sleep(Duration::from_millis(300));
    p.kill_worker();
    assert_eq!(pending_owner(&p, &id), Some(("it-0".into(), 2)), "read once, claimed once");
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(2)");
    p.start_worker(&env);
    p.wait_for(2, "rows of the recovered entry", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "nothing dead-lettered");
}

/// M7: a read is bounded in bytes, not only in entries. 24 entries of about 250 KB wait
/// in the stream; the worker may hold at most `batch_bytes` (1 MiB) plus one largest
/// entry per batch, and two batches (one inserted, one read ahead). With ClickHouse
/// frozen, what it has taken (its pending entries) stays within that; once ClickHouse goes
/// on, everything lands.
#[test]
fn m7_a_read_takes_no_more_than_the_byte_budget() {
    let mut p = Pipeline::start(&[]);
    let props = "x".repeat(240);
    let mut accepted = 0;
    let mut c = p.ingest.client();
    for b in 0..24 {
        let items: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"ts":{},"game_id":"{GAME}","env":"prod","event":"level_start","user_id":"u{b}-{i}","props":{{"p":"{props}"}}}}"#,
                    now_secs()
                )
            })
            .collect();
        let body = format!("[{}]", items.join(","));
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
        accepted += 1000;
    }
    let entries = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events");
    assert_eq!(entries.len(), 24);
    let largest = entries.iter().map(|e| e.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()).max();
    assert!(largest.is_some_and(|l| l > 200_000 && l < 400_000), "{largest:?}");
    p.clickhouse.pause();
    // Entries up to 300,000 + 1,000 × 128 bytes: a read asks for at most 2 of them.
    p.start_worker(&[
        ("CROUPIER_SERVER__MAX_BODY_BYTES", "300000"),
        ("CROUPIER_SERVER__MAX_DECOMPRESSED_BYTES", "300000"),
        ("CROUPIER_SERVER__MAX_RECORDS", "1000"),
        ("CROUPIER_WORKER__BATCH_BYTES", "1048576"),
        ("CROUPIER_CLICKHOUSE__TIMEOUT_MS", "60000"),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "600000"),
    ]);
    p.wait_for(1, "entries taken", |p| u64::from(p.pending("analytics:events") > 0));
    std::thread::sleep(Duration::from_millis(1500));
    // Each batch stops once it holds 1 MiB: at most 5 entries of ~250 KB; two batches.
    let taken = p.pending("analytics:events");
    assert!(taken <= 10, "{taken} entries taken at once");
    p.clickhouse.resume();
    p.wait_for(accepted, "rows after ClickHouse went on", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

/// C3: one request of 150 events in 150 different months (a device with a wrong clock,
/// or a tenant on purpose) is inserted whole with every `ts` as sent, and the worker goes
/// on with the next batch. Blocks are grouped by month so that none spans more than
/// `clickhouse.max_partitions_per_block` partitions (ClickHouse 19+ refuses more than 100
/// with code 252; 18.16, here, has no such limit: the grouping itself is unit-tested in
/// `clickhouse::partitions`). With four blocks here, the insert carries the settings that
/// keep them apart (`sink::BLOCKS_AS_SENT`), which 18.16 takes;
/// `clickhouse::a_current_engine_takes_150_months_in_blocks_kept_apart` shows on 26.9 why.
#[test]
fn c3_events_over_150_months_insert_whole_and_the_worker_goes_on() {
    let mut p = Pipeline::start(&[]);
    // 150 months make 150 parts on 18.16: on a loaded machine their confirmation can take
    // longer than the tests' usual 3 s timeout, and the batch would be retried for ever.
    p.start_worker(&[
        ("CROUPIER_CLICKHOUSE__MAX_PARTITIONS_PER_BLOCK", "40"),
        ("CROUPIER_CLICKHOUSE__TIMEOUT_MS", "30000"),
    ]);
    // The 15th of each month from 2001-01 on, at noon UTC.
    let ts = |i: u64| format!("{:04}-{:02}-15 12:00:00", 2001 + i / 12, i % 12 + 1);
    let items: Vec<String> = (0..150u64)
        .map(|i| {
            format!(r#"{{"ts":"{}","game_id":"{GAME}","env":"prod","event":"login","user_id":"clock-{i}"}}"#, ts(i))
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    let r = post_signed(&mut p.ingest.client(), "/api/ingest/events", GAME, SECRET, body.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    p.wait_for(150, "rows over 150 months", Pipeline::distinct_events);
    assert_eq!(p.scalar("SELECT uniqExact(toYYYYMM(event_time)) FROM analytics.events"), 150);
    assert_eq!(
        p.clickhouse.query("SELECT toString(event_time) FROM analytics.events WHERE user_id = 'clock-149'").trim(),
        ts(149),
        "each time kept as sent"
    );
    let next = post_events(&p, 1, 10);
    p.wait_for(150 + next, "rows of the next batch", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
}

/// M4: a table altered to a column type the worker cannot write is a systemic fault, not
/// bad rows: nothing is dead-lettered, the entries stay pending, and once the table is
/// fixed they are inserted. (18.16 reads a block by the table's types: our
/// `FixedString(2)` country read as `FixedString(3)` shifts every later column, and the
/// insert fails as if the rows were bad, or worse, succeeds with garbage.)
///
/// `croupier migrate` does not change a column back (a change of type may lose values) but
/// no longer calls such a schema up to date: it names each column that differs and the
/// statement that restores it (exit 0 still: ingest, started after it, goes on); run,
/// those statements fix the tables.
#[test]
fn m4_schema_drift_stalls_instead_of_dead_lettering() {
    let mut p = Pipeline::start(&[]);
    // Rows stored before (with them, 18.16 refuses to narrow a FixedString in one step).
    p.clickhouse.query(
        "INSERT INTO analytics.events (event_time, game_id, env, event, event_id, country) \
         SELECT now(), 'earlier', 'prod', 'x', generateUUIDv4(), 'FR' FROM numbers(100000)",
    );
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(3)");
    p.clickhouse.query("ALTER TABLE analytics.events DROP COLUMN ingested_at");
    p.clickhouse.query("ALTER TABLE analytics.payments DROP COLUMN city");
    p.clickhouse.query("ALTER TABLE analytics.daily_revenue DROP COLUMN failed");
    p.start_worker(&[]);
    let accepted = post_events(&p, 3, 10);
    p.wait_for(3, "entries taken", |p| p.pending("analytics:events") as u64);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "nothing dead-lettered");
    assert_eq!(p.pending("analytics:events"), 3, "the entries stay pending");
    assert_eq!(p.scalar("SELECT count() FROM analytics.events"), 100_000);
    let env = crate::pipeline::env(&p.ingest.redis, &p.clickhouse);
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok, "{out}");
    assert!(!out.contains("schema up to date") && out.contains("4 column(s) differ"), "{out}");
    let fixes: Vec<&str> =
        out.lines().filter_map(|l| Some(l.split_once(": ALTER TABLE ")?.1.split("; ALTER TABLE "))).flatten().collect();
    assert_eq!(
        fixes,
        [
            "analytics.events MODIFY COLUMN country String",
            "analytics.events MODIFY COLUMN country FixedString(2)",
            // Restored as it was made, its default with it.
            "analytics.events ADD COLUMN ingested_at DateTime DEFAULT now()",
            "analytics.payments ADD COLUMN city String",
            "analytics.daily_revenue ADD COLUMN failed UInt64"
        ],
        "{out}"
    );
    assert!(out.contains("analytics.events.country is FixedString(3) but croupier writes FixedString(2)"), "{out}");
    for f in fixes {
        p.clickhouse.query(&format!("ALTER TABLE {f}"));
    }
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env);
    assert!(ok && out.contains("schema up to date"), "{out}");
    lands_once(&p, accepted + 100_000, "once the table is fixed");
    assert_eq!(p.scalar("SELECT count() FROM analytics.events WHERE game_id = 'earlier' AND country = 'FR'"), 100_000);
}

/// M5: a read whose reply is lost delivered its entries (Redis counted them) without
/// their reaching the worker. The worker's connection is replaced and it fetches its own
/// pending entries by ID: the lost read stays the one delivery, not two.
#[test]
fn m5_a_lost_read_reply_counts_one_delivery() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.stop();
    let proxy = FaultProxy::start(p.ingest.redis.port);
    let addr = proxy.addr();
    p.start_worker(&[("CROUPIER_REDIS__ADDR", addr.as_str())]);
    // Let the consumers start and settle into their blocking reads.
    std::thread::sleep(Duration::from_millis(1500));
    let connections = proxy.accepted();
    proxy.on_next_reply("XREADGROUP", Fault::Drop);
    assert_eq!(p.ingest.post("/api/ingest/events", &events(10)).status, 202);
    p.wait_for(1, "the read's reply dropped", |_| u64::from(!proxy.fault_pending()));
    p.wait_for(1, "a new connection", |_| u64::from(proxy.accepted() > connections));
    // Recovered and held (ClickHouse is down): pending with the worker, delivered once.
    std::thread::sleep(Duration::from_millis(1500));
    let counts =
        match p.ingest.redis.client().cmd(&["XPENDING", "analytics:events", "analytics-workers", "-", "+", "10"]) {
            croupier_protocol::resp::Frame::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    croupier_protocol::resp::Frame::Array(f) => match &f[3] {
                        croupier_protocol::resp::Frame::Integer(n) => *n,
                        _ => -1,
                    },
                    _ => -1,
                })
                .collect::<Vec<i64>>(),
            other => panic!("{other:?}"),
        };
    assert_eq!(counts, vec![1], "deliveries of the entry");
    p.clickhouse.restart();
    p.wait_for(10, "rows", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

/// M4: a batch stalled by a systemic fault stays with the consumer that holds it. Other
/// workers would otherwise claim it once it is idle past `claim_idle_ms`, stall on it too,
/// and count a delivery per claim until it was dead-lettered as "delivered too often":
/// with `max_deliveries = 2` and two more workers free to claim, nothing is dead-lettered.
#[test]
fn m4_a_stalled_batch_is_kept_not_claimed_until_dead_lettered() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(3)");
    let max = ("CROUPIER_WORKER__MAX_DELIVERIES", "2");
    p.start_worker(&[max]);
    let accepted = post_events(&p, 2, 10);
    p.wait_for(2, "entries taken", |p| p.pending("analytics:events") as u64);
    let mut others: Vec<std::process::Child> = ["other-a", "other-b"]
        .iter()
        .map(|name| {
            let mut env = crate::pipeline::env(&p.ingest.redis, &p.clickhouse);
            env.push(("CROUPIER_WORKER__CONSUMER".into(), (*name).into()));
            env.push((max.0.into(), max.1.into()));
            Command::new(crate::pipeline::CROUPIER)
                .arg("worker")
                .envs(env)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start another worker")
        })
        .collect();
    // Several claim_idle_ms (1 s) while the table is wrong.
    std::thread::sleep(Duration::from_secs(5));
    let dead = xlen(&p.ingest.redis, "analytics:events:dead");
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(2)");
    assert_eq!(dead, 0, "nothing dead-lettered while stalled");
    lands_once(&p, accepted, "once the table is fixed");
    for o in &mut others {
        let _ = o.kill();
        let _ = o.wait();
    }
}

/// An operator's view that refuses (`throwIf`, code 395) the rows of users `poison…`.
fn poison_view(p: &Pipeline) {
    p.clickhouse.query("CREATE TABLE analytics.trap (x UInt8) ENGINE = Null");
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.trap_mv TO analytics.trap AS \
         SELECT throwIf(user_id LIKE 'poison%') AS x FROM analytics.events",
    );
}

/// Rows an operator's view refuses (`throwIf`, code 395, neither bad data nor the server's
/// state) do not stall the stream for good: the batch is retried as it is a few times, then
/// bisected; the entries refused alone are dead-lettered with the server's message and the
/// others land. (Before, the consumer retried the whole batch forever: no other worker
/// claimed it, every one being busy with its own.)
#[test]
fn rows_a_view_refuses_are_isolated_instead_of_stalling_the_stream() {
    let mut p = Pipeline::start(&[]);
    poison_view(&p);
    let mut c = p.ingest.client();
    for b in 0..12u64 {
        let poison = b % 4 == 3;
        let items: Vec<String> = (0..10u64)
            .map(|i| {
                let user = if poison { format!("poison-{b}-{i}") } else { format!("good-{b}-{i}") };
                crate::fixture::event("level_start", &user)
            })
            .collect();
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", items.join(",")).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    p.start_worker(&[("CROUPIER_WORKER__BACKOFF_MAX_MS", "200")]);
    p.wait_for(3, "the three entries the view refuses dead-lettered", |p| {
        xlen(&p.ingest.redis, "analytics:events:dead") as u64
    });
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    p.wait_for(90, "the other entries' rows", |p| {
        p.scalar("SELECT uniqExact(event_id) FROM analytics.events WHERE user_id LIKE 'good-%'")
    });
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    for d in &dead {
        let reason = String::from_utf8_lossy(d.get("reason").expect("reason")).into_owned();
        assert!(reason.contains("rejected by ClickHouse") && reason.contains("395"), "{reason}");
        assert!(reason.contains("may be stored in the table"), "{reason}");
    }
    // A later entry lands at once: the stream goes on.
    assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, events(5).as_bytes()).status, 202);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 3);
}

/// The refusal breaker: once ClickHouse has refused more than `worker.max_refused_per_batch`
/// entries of a batch one by one, the batch stalls and is retried — but the entries it
/// already inserted (halves ClickHouse confirmed while bisecting) are not sent again on
/// each retry: the table's row count (without FINAL, duplicates included) does not grow
/// while the stream is stalled, and once the fault is gone (the table fixed while the worker is
/// stopped) every row is there once.
/// (The columns the worker writes cannot make 18.16 refuse valid rows one by one; a
/// MATERIALIZED column computed from them can: `toUInt64` of a user id that is not a number
/// fails with code 6, bad data.)
#[test]
fn breaker_stall_does_not_resend_rows_clickhouse_confirmed() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("ALTER TABLE analytics.events ADD COLUMN probe UInt64 MATERIALIZED toUInt64(user_id)");
    // Merges would collapse duplicates and hide them from count().
    p.clickhouse.query("SYSTEM STOP MERGES analytics.events");
    // 12 entries of 10 events: users of every third entry are not numbers.
    let mut c = p.ingest.client();
    let mut good = 0u64;
    for b in 0..12u64 {
        let refused = b % 3 == 2;
        let items: Vec<String> = (0..10u64)
            .map(|i| {
                let user = if refused { format!("user-{b}-{i}") } else { (b * 100 + i).to_string() };
                crate::fixture::event("level_start", &user)
            })
            .collect();
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", items.join(",")).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
        if !refused {
            good += 10;
        }
    }
    p.start_worker(&[("CROUPIER_WORKER__MAX_REFUSED_PER_BATCH", "2"), ("CROUPIER_WORKER__BACKOFF_MAX_MS", "200")]);
    p.wait_for(1, "good rows inserted while bisecting", |p| {
        u64::from(p.scalar("SELECT count() FROM analytics.events") > 0)
    });
    // The first attempt's bisection goes on a little after its first insert (longer on a
    // loaded machine): wait until the count has held for 1.5 s.
    let mut first = p.scalar("SELECT count() FROM analytics.events");
    let (mut since, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(30));
    while since.elapsed() < Duration::from_millis(1_500) {
        assert!(Instant::now() < deadline, "the first attempt still inserting after 30 s");
        std::thread::sleep(Duration::from_millis(100));
        let now = p.scalar("SELECT count() FROM analytics.events");
        if now != first {
            (first, since) = (now, Instant::now());
        }
    }
    // Several retries (back-off at most 200 ms) while the breaker holds the batch.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let now = p.scalar("SELECT count() FROM analytics.events");
        assert_eq!(now, first, "rows already inserted were sent again while stalled");
    }
    assert!(first <= good, "{first} rows inserted, only {good} can be");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "nothing dead-lettered");
    assert_eq!(p.pending("analytics:events"), 12, "the batch stays pending");
    // The worker is stopped while the table is fixed: an attempt cut by the change would
    // see a refusal or two below the breaker's threshold and dead-letter them, as bad rows.
    assert!(p.stop_worker(), "the worker stops");
    p.clickhouse.query("ALTER TABLE analytics.events DROP COLUMN probe");
    p.start_worker(&[("CROUPIER_WORKER__MAX_REFUSED_PER_BATCH", "2"), ("CROUPIER_WORKER__BACKOFF_MAX_MS", "200")]);
    p.wait_for(0, "pending once the table is fixed", |p| p.pending("analytics:events") as u64);
    // The new worker does not know what the stopped one inserted: it sends the confirmed
    // rows again, and the table collapses them (at least once, deduplicated on event_id).
    assert_eq!(p.distinct_events(), 120, "every row once");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
}

/// A worker process started by a test, killed when dropped (also when the test fails).
struct OtherWorker(std::process::Child);

impl Drop for OtherWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `croupier worker` with consumer prefix `name` beside the pipeline's worker (`it`).
fn spawn_worker(p: &Pipeline, name: &str, extra: &[(&str, &str)]) -> OtherWorker {
    let mut env = crate::pipeline::env(&p.ingest.redis, &p.clickhouse);
    env.push(("CROUPIER_WORKER__CONSUMER".into(), name.into()));
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let child = Command::new(crate::pipeline::CROUPIER)
        .arg("worker")
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start another worker");
    OtherWorker(child)
}

/// Delivery counts of every entry pending on `analytics:events`, in id order.
fn delivery_counts(p: &Pipeline) -> Vec<i64> {
    use croupier_protocol::resp::Frame;
    let Frame::Array(items) =
        p.ingest.redis.client().cmd(&["XPENDING", "analytics:events", "analytics-workers", "-", "+", "100"])
    else {
        return Vec::new();
    };
    items
        .into_iter()
        .map(|i| match i {
            Frame::Array(f) => match f.get(3) {
                Some(Frame::Integer(n)) => *n,
                _ => -1,
            },
            _ => -1,
        })
        .collect()
}

/// A long ClickHouse outage dead-letters nothing. The entries are taken by a worker that
/// cannot reach ClickHouse; for several `claim_idle_ms` (1 s) that worker and a second
/// one are killed and restarted again and again. Restarts and claims while ClickHouse
/// cannot be reached are not tries of the entries: they do not count towards
/// `max_deliveries` (2), nothing is set apart or dead-lettered, and once ClickHouse is
/// back every row is stored and the dead-letter stream is empty.
#[test]
fn clickhouse_outage_with_restarts_and_claims_dead_letters_nothing() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.stop();
    let accepted = post_events(&p, 4, 10);
    let max = ("CROUPIER_WORKER__MAX_DELIVERIES", "2");
    p.start_worker(&[max]);
    p.wait_for(4, "entries taken", |p| p.pending("analytics:events") as u64);
    let mut other = spawn_worker(&p, "other", &[max]);
    // Each round outlasts `claim_idle_ms`: what neither worker holds may be claimed.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        p.kill_worker();
        drop(other);
        p.start_worker(&[max]);
        other = spawn_worker(&p, "other", &[max]);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let dead = xlen(&p.ingest.redis, "analytics:events:dead");
    let counts = delivery_counts(&p);
    p.clickhouse.restart();
    assert_eq!(dead, 0, "nothing dead-lettered while ClickHouse was down");
    assert_eq!(counts, vec![1; 4], "deliveries of the entries while ClickHouse was down");
    lands_once(&p, accepted, "once ClickHouse is back");
    drop(other);
}

/// ClickHouse answers but refuses every insert for a reason every consumer meets (the
/// table drifted: a read-only replicated table or a full disk behave alike), and the
/// worker is killed and restarted more than twice `max_deliveries` (2) times. A restart
/// recovers its pending entries without a delivery, and a try that fails systemically
/// gives its delivery back: the counts stay at the one read, nothing is set apart or
/// dead-lettered, and once the table is fixed every row is stored once.
#[test]
fn systemic_refusals_with_restarts_add_no_deliveries() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(3)");
    let max = ("CROUPIER_WORKER__MAX_DELIVERIES", "2");
    p.start_worker(&[max]);
    let accepted = post_events(&p, 3, 10);
    p.wait_for(3, "entries taken", |p| p.pending("analytics:events") as u64);
    for _ in 0..6 {
        // Long enough for the recovery and its first (refused) try.
        std::thread::sleep(Duration::from_millis(2000));
        p.kill_worker();
        p.start_worker(&[max]);
    }
    std::thread::sleep(Duration::from_millis(2000));
    p.kill_worker();
    let dead = xlen(&p.ingest.redis, "analytics:events:dead");
    let counts = delivery_counts(&p);
    assert_eq!(dead, 0, "nothing dead-lettered while every insert was refused");
    assert_eq!(counts, vec![1; 3], "deliveries after six restarts");
    assert_eq!(p.scalar("SELECT count() FROM analytics.events"), 0);
    p.clickhouse.query("ALTER TABLE analytics.events MODIFY COLUMN country FixedString(2)");
    p.start_worker(&[max]);
    p.wait_for(0, "pending once the table is fixed", |p| p.pending("analytics:events") as u64);
    assert_eq!(p.distinct_events(), accepted, "every row once");
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "nothing dead-lettered");
}

/// ClickHouse answers but refuses every insert for its own state (here the worker's user
/// is read-only, `readonly = 2`: code 164; a full disk or a read-only replicated table alike), and a second
/// worker with nothing to do claims idle entries. The holder keeps its stalled batch
/// marked as worked on, so the other never claims it: the counts stay at the one read and
/// nothing is dead-lettered, and once the server takes inserts again every row is stored
/// once. (Before, only a drifted schema and "too many parts" kept: the claims added a
/// delivery each until the entries were dead-lettered unread.)
#[test]
fn refusals_for_the_servers_state_are_not_claimed_into_dead_letters() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.set_profile("<readonly>2</readonly>", ("readonly", "2"));
    // Idle for 3 s before another may claim: longer than a batch takes to gather and
    // meet its first refusal.
    let settings = [("CROUPIER_WORKER__MAX_DELIVERIES", "2"), ("CROUPIER_WORKER__CLAIM_IDLE_MS", "3000")];
    p.start_worker(&settings);
    let accepted = post_events(&p, 3, 10);
    p.wait_for(3, "entries taken", |p| p.pending("analytics:events") as u64);
    let other = spawn_worker(&p, "other", &settings);
    // Several `claim_idle_ms`.
    std::thread::sleep(Duration::from_secs(10));
    let dead = xlen(&p.ingest.redis, "analytics:events:dead");
    let counts = delivery_counts(&p);
    assert_eq!(p.scalar("SELECT count() FROM analytics.events"), 0, "every insert refused");
    p.clickhouse.set_profile("", ("readonly", "0"));
    assert_eq!(dead, 0, "nothing dead-lettered while the server refused every insert");
    assert_eq!(counts, vec![1; 3], "deliveries while the server refused every insert");
    lands_once(&p, accepted, "once the server takes inserts");
    drop(other);
}

/// An entry whose try never comes back (the worker dies during its insert, every time)
/// still reaches the delivery limit: each start counts its try before the insert, so with
/// `max_deliveries = 2` it is set apart after the first crash past the limit, tried alone,
/// and after twice the limit dead-lettered unread. (Inserts are made to hang with a
/// materialized view that sleeps on each row; the worker is killed while one hangs.)
#[test]
fn a_try_that_never_comes_back_counts_until_dead_lettered() {
    let mut p = Pipeline::start(&[]);
    let id = post_one_entry(&p, ["a", "b"]);
    let mut r = p.ingest.redis.client();
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "it-0", "COUNT", "10", "STREAMS", "analytics:events", ">"]);
    assert_eq!(pending_owner(&p, &id), Some(("it-0".into(), 1)));
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.slow ENGINE = Memory AS SELECT sleepEachRow(1.2) AS x FROM analytics.events",
    );
    let max = ("CROUPIER_WORKER__MAX_DELIVERIES", "2");
    let deliveries = |p: &Pipeline| pending_owner(p, &id).map_or(0, |(_, n)| n as u64);
    // Three starts, each killed while its try hangs: tried with the others (2), then,
    // at the limit, alone (3, 4).
    for want in 2..=4 {
        p.start_worker(&[max]);
        p.wait_for(want, "the try counted", deliveries);
        p.kill_worker();
        assert_eq!(deliveries(&p), want, "the try stays counted");
    }
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0);
    p.clickhouse.query("DROP TABLE analytics.slow");
    p.start_worker(&[max]);
    p.wait_for(1, "dead letters", |p| xlen(&p.ingest.redis, "analytics:events:dead") as u64);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    assert_eq!(dead[0].get("source_id"), Some(id.as_bytes()));
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("delivered 4 times"), "{reason}");
}

/// Review finding: the breaker judged one batch, so at a light load — a few entries per
/// batch — a fault of the stream that makes ClickHouse refuse every row as bad data
/// dead-lettered every entry, batch after batch, never more than the limit in one. It also
/// counts refusals in a row since the consumer's last insert: with
/// `max_refused_per_batch = 3`, entries sent one at a time while every row is refused (a
/// materialized column of the user id as a number), at most three are dead-lettered; the
/// rest wait in the stream and land once the table is fixed.
#[test]
fn refusals_in_a_row_across_small_batches_trip_the_breaker() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("ALTER TABLE analytics.events ADD COLUMN probe UInt64 MATERIALIZED toUInt64(user_id)");
    p.start_worker(&[("CROUPIER_WORKER__MAX_REFUSED_PER_BATCH", "3"), ("CROUPIER_WORKER__BACKOFF_MAX_MS", "200")]);
    let mut c = p.ingest.client();
    for i in 0..10 {
        let body = format!("[{}]", crate::fixture::event("level_start", &format!("player-{i}")));
        assert_eq!(post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes()).status, 202);
        // Each its own batch (the worker lingers 50 ms).
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    let dead = xlen(&p.ingest.redis, "analytics:events:dead");
    // The first three, each alone in its batch, look like bad rows; the fourth trips it.
    assert!((1..=3).contains(&dead), "{dead} entries dead-lettered");
    assert_eq!(p.scalar("SELECT count() FROM analytics.events"), 0, "every row refused");
    p.kill_worker();
    p.clickhouse.query("ALTER TABLE analytics.events DROP COLUMN probe");
    p.start_worker(&[]);
    p.wait_for(10 - dead as u64, "rows once the table is fixed", Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
}

/// Every accepted event lands once (`FINAL`), nothing stays pending and nothing was
/// dead-lettered, once the fault described by `after` is gone.
fn lands_once(p: &Pipeline, accepted: u64, after: &str) {
    p.wait_for(accepted, &format!("rows {after}"), Pipeline::distinct_events);
    p.wait_for(0, "pending", |p| p.pending("analytics:events") as u64);
    assert_eq!(xlen(&p.ingest.redis, "analytics:events:dead"), 0, "nothing dead-lettered");
}

/// An insert ClickHouse refuses in its first block (an older month's partition, the
/// first entry's) while a ~17 MB block of the current month is still being written: the
/// worker reads the server's exception (code 395, not a broken connection it would retry
/// for ever without splitting the batch), bisects, dead-letters the refused entry and
/// inserts the others.
#[test]
fn a_refusal_while_a_large_block_is_written_is_read_as_the_servers() {
    let mut p = Pipeline::start(&[]);
    poison_view(&p);
    let mut c = p.ingest.client();
    let old = now_secs() - 62 * 86_400;
    let poison: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"ts":{old},"game_id":"{GAME}","env":"prod","event":"login","user_id":"poison-{i}"}}"#))
        .collect();
    let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", poison.join(",")).as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let pad = "x".repeat(400);
    for b in 0..40 {
        let items: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"ts":{},"game_id":"{GAME}","env":"prod","event":"login","user_id":"good-{b}-{i}","props":{{"pad":"{pad}"}}}}"#,
                    now_secs()
                )
            })
            .collect();
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, format!("[{}]", items.join(",")).as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    p.start_worker(&[("CROUPIER_WORKER__BACKOFF_MAX_MS", "200")]);
    p.wait_for(1, "the entry the view refuses dead-lettered", |p| {
        xlen(&p.ingest.redis, "analytics:events:dead") as u64
    });
    p.wait_for(40_000, "the other entries' rows", |p| {
        p.scalar("SELECT uniqExact(event_id) FROM analytics.events WHERE user_id LIKE 'good-%'")
    });
    let dead = croupier_it::redis::xrange(&mut p.ingest.redis.client(), "analytics:events:dead");
    let reason = String::from_utf8_lossy(dead[0].get("reason").expect("reason")).into_owned();
    assert!(reason.contains("rejected by ClickHouse") && reason.contains("395"), "{reason}");
}
