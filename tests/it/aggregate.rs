//! Real-time aggregation end to end: players posted over HTTP, counted by the worker in
//! HyperLogLog sketches merged into Croupier's `hll:*` keys, and the aggregate tables
//! written from the merged figures — with Redis's PFCOUNT as the oracle.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_dataplane::worker::aggregate::what::{day_of, minute_of, Kind};
use croupier_it::http::now_secs;

use crate::fixture::{post_signed, GAME, SECRET};
use crate::pipeline::{env, Pipeline, CROUPIER};

/// The worker's settings in these tests: flushes every 200 ms.
const FAST: &[(&str, &str)] = &[("CROUPIER_AGGREGATE__FLUSH_MS", "200")];

fn key(kind: Kind, ts_secs: u64) -> String {
    let ms = ts_secs as i64 * 1000;
    let period = if kind.per_minute() { minute_of(ms) } else { day_of(ms) };
    let mut k = String::new();
    kind.key(GAME, "prod", period, &mut k);
    k
}

fn pfcount(p: &Pipeline, key: &str) -> u64 {
    p.ingest.redis.client().int(&["PFCOUNT", key]) as u64
}

/// Posts events named `name` for users `prefix-<i>`, `i` in `users`, at `ts`, in
/// batches of 500.
fn post_players(p: &Pipeline, name: &str, prefix: &str, users: std::ops::Range<usize>, ts: u64) {
    let mut c = p.ingest.client();
    let all: Vec<usize> = users.collect();
    for chunk in all.chunks(500) {
        let items: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","event":"{name}","user_id":"{prefix}-{i}"}}"#)
            })
            .collect();
        let body = format!("[{}]", items.join(","));
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
}

/// A payment body: `(order, user, amount, status)` at `ts`.
fn payments(rows: &[(String, String, u64, &str)], ts: u64) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|(o, u, a, s)| {
            format!(
                r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","user_id":"{u}","order_id":"{o}","amount_cents":{a},"currency":"USD","status":"{s}"}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Entries of `stream` not yet delivered to the group (`XINFO GROUPS` lag; 0 when the
/// stream does not exist).
fn lag(p: &Pipeline, stream: &str) -> u64 {
    use croupier_protocol::resp::Frame;
    let Frame::Array(groups) = p.ingest.redis.client().cmd(&["XINFO", "GROUPS", stream]) else { return 0 };
    groups
        .into_iter()
        .filter_map(|g| match g {
            Frame::Array(kv) => kv.chunks(2).find_map(|c| match c {
                [Frame::BulkString(k), Frame::Integer(n)] if k == b"lag" => Some(*n as u64),
                [Frame::BulkString(k), Frame::Null] if k == b"lag" => Some(u64::MAX),
                _ => None,
            }),
            _ => None,
        })
        .sum()
}

/// Waits until every entry of the three streams was delivered and acknowledged.
fn wait_idle(p: &Pipeline) {
    p.wait_for(0, "entries not yet delivered or acknowledged", |p| {
        ["analytics:events", "analytics:custom", "analytics:payments"]
            .iter()
            .map(|s| (p.pending(s) as u64).saturating_add(lag(p, s)))
            .fold(0u64, u64::saturating_add)
    });
}

/// `daily_users` of today as the product reads it (`FINAL`): dau, new_users, payers.
fn daily_users(p: &Pipeline, ts: u64) -> (u64, u64, u64) {
    let d = day_of(ts as i64 * 1000);
    let out = p.clickhouse.query(&format!(
        "SELECT dau, new_users, payers FROM analytics.daily_users FINAL WHERE game_id = '{GAME}' AND env = 'prod' \
         AND d = toDate('1970-01-01') + {d} FORMAT TabSeparated"
    ));
    let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v[..] {
        [a, b, c] => (a, b, c),
        _ => (0, 0, 0),
    }
}

/// Waits until `daily_users` shows what Redis's keys count.
fn wait_daily_users_match_redis(p: &Pipeline, ts: u64) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let redis =
            (pfcount(p, &key(Kind::Dau, ts)), pfcount(p, &key(Kind::New, ts)), pfcount(p, &key(Kind::Payers, ts)));
        let table = daily_users(p, ts);
        if table == redis {
            return table;
        }
        assert!(Instant::now() < deadline, "daily_users {table:?}, Redis {redis:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn within(got: u64, want: u64, pct: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * pct / 100.0
}

/// N distinct players log in over HTTP, half before the worker is SIGKILLed and half
/// after a new one starts (plus the first half again): the day's DAU key and
/// `daily_users` count N within 2 %, and equal each other; new users and online too.
#[test]
fn dau_of_players_logging_in_through_http_and_a_killed_worker() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let ts = now_secs() as u64;
    const N: usize = 6_000;
    post_players(&p, "login", "player", 0..N / 2, ts);
    post_players(&p, "register", "player", 0..1_000, ts);
    post_players(&p, "session.start", "player", 0..2_000, ts);
    wait_idle(&p);
    let half = wait_daily_users_match_redis(&p, ts);
    assert!(within(half.0, N as u64 / 2, 2.0), "DAU after the first half: {half:?}");
    p.kill_worker();
    // The day survives in Redis: the next worker adds to it, and players seen again
    // count once.
    p.start_worker(FAST);
    post_players(&p, "user.login", "player", N / 2..N, ts);
    post_players(&p, "heartbeat", "player", 0..N / 2, ts);
    wait_idle(&p);
    let (dau, new, payers) = wait_daily_users_match_redis(&p, ts);
    eprintln!("N = {N}: PFCOUNT dau = {dau}, new = {new}; daily_users FINAL equal");
    assert!(within(dau, N as u64, 2.0), "DAU {dau} for {N} players");
    assert!(within(new, 1_000, 2.0), "new users {new}");
    assert_eq!(payers, 0);
    let online = pfcount(&p, &key(Kind::Online, ts));
    assert!(within(online, N as u64 / 2, 2.0), "online {online}");
    // minute_online holds the merged minute, and the peak view follows it.
    let m = minute_of(ts as i64 * 1000) as u64 * 60;
    p.wait_for(online, "minute_online FINAL of the minute", |p| {
        p.scalar(&format!(
            "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
        ))
    });
    p.wait_for(online, "daily_online_peak of the day", |p| {
        p.scalar(&format!(
            "SELECT maxMerge(peak_online) FROM analytics.daily_online_peak WHERE game_id = '{GAME}' \
             AND d = toDate(toDateTime({m}), 'UTC')"
        ))
    });
    // Croupier's TTLs.
    let ttl = |k: &str| p.ingest.redis.client().int(&["TTL", k]);
    assert!((30 * 86_400 - 60..=30 * 86_400).contains(&ttl(&key(Kind::Dau, ts))));
    assert!((48 * 3600 - 60..=48 * 3600).contains(&ttl(&key(Kind::Online, ts))));
    assert!(p.stop_worker());
}

/// Starts another `croupier worker` process with its own consumer name.
fn second_worker(p: &Pipeline, name: &str) -> Child {
    let mut e = env(&p.ingest.redis, &p.clickhouse);
    e.push(("CROUPIER_WORKER__CONSUMER".into(), name.into()));
    e.extend(FAST.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Command::new(CROUPIER).arg("worker").envs(e).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("worker")
}

/// The same players and payments through one worker and through two worker processes of
/// the same group: the same keys (register for register), the same table figures.
#[test]
fn two_workers_give_the_same_figures_as_one() {
    let ts = now_secs() as u64;
    let run = |workers: usize| {
        let mut p = Pipeline::start(&[]);
        p.start_worker(FAST);
        let mut others: Vec<Child> = (1..workers).map(|i| second_worker(&p, &format!("it-{i}"))).collect();
        for round in 0..4 {
            post_players(&p, "login", "p", round * 1_000..(round + 1) * 1_500, ts);
            post_players(&p, "first_active", "p", round * 100..round * 100 + 150, ts);
            let pays: Vec<(String, String, u64, &str)> =
                (0..50).map(|i| (format!("o{round}-{i}"), format!("p-{i}"), 100 + i as u64, "success")).collect();
            let r = p.ingest.post("/api/ingest/payments", &payments(&pays, ts));
            assert_eq!(r.status, 202, "{}", r.text());
        }
        wait_idle(&p);
        let users = wait_daily_users_match_redis(&p, ts);
        let dense = |k: &str| match p.ingest.redis.client().cmd(&["PFDEBUG", "GETREG", k]) {
            croupier_protocol::resp::Frame::Array(a) => a,
            other => panic!("{other:?}"),
        };
        let registers = (dense(&key(Kind::Dau, ts)), dense(&key(Kind::New, ts)), dense(&key(Kind::Payers, ts)));
        let revenue = wait_revenue(&p, ts, 4 * (0..50).map(|i| 100 + i).sum::<u64>());
        for o in &mut others {
            let _ = o.kill();
            let _ = o.wait();
        }
        (users, registers, revenue)
    };
    let one = run(1);
    let two = run(2);
    assert_eq!(one.0, two.0, "daily_users");
    assert!(one.1 == two.1, "the keys' registers differ");
    assert_eq!(one.2, two.2, "daily_revenue");
    assert!(within(one.0 .0, 6_000, 2.0) && within(one.0 .2, 50, 2.0), "{:?}", one.0);
}

/// Waits until `daily_revenue FINAL` of today shows `revenue`; returns the row.
fn wait_revenue(p: &Pipeline, ts: u64, revenue: u64) -> (u64, u64, u64) {
    let d = day_of(ts as i64 * 1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = p.clickhouse.query(&format!(
            "SELECT revenue_cents, refunds_cents, failed FROM analytics.daily_revenue FINAL \
             WHERE game_id = '{GAME}' AND env = 'prod' AND d = toDate('1970-01-01') + {d} FORMAT TabSeparated"
        ));
        let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if let [r, f, n] = v[..] {
            if r == revenue {
                return (r, f, n);
            }
        }
        assert!(Instant::now() < deadline, "daily_revenue {v:?}, expected revenue {revenue}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `daily_revenue` is the exact sum of the accepted successful payments (refunds and
/// failures apart), also when the worker is SIGKILLed after inserting a batch it could
/// not acknowledge, and the batch is delivered again to the next worker; payments posted
/// twice count once.
#[test]
fn daily_revenue_is_exact_after_a_killed_worker_and_redelivery() {
    // XACK is renamed away: the worker inserts and merges, cannot acknowledge, is killed.
    let mut p = Pipeline::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--rename-command",
        "XACK",
        "XACK_HIDDEN_FOR_TEST",
    ]);
    p.start_worker(FAST);
    let ts = now_secs() as u64;
    let mut want = (0u64, 0u64, 0u64);
    let mut payers = std::collections::BTreeSet::new();
    for batch in 0..10 {
        let rows: Vec<(String, String, u64, &str)> = (0..20)
            .map(|i| {
                let status = ["success", "success", "success", "failed", "refunded"][i % 5];
                (
                    format!("ord-{batch}-{i}"),
                    format!("buyer-{}", (batch * 20 + i) % 70),
                    1_000 + (batch * 20 + i) as u64,
                    status,
                )
            })
            .collect();
        for (_, u, a, s) in &rows {
            match *s {
                "success" => {
                    want.0 += a;
                    payers.insert(u.clone());
                }
                "refunded" => want.1 += a,
                _ => want.2 += 1,
            }
        }
        let body = payments(&rows, ts);
        assert_eq!(p.ingest.post("/api/ingest/payments", &body).status, 202);
        if batch % 3 == 0 {
            // A client retry under a new nonce: the same orders again.
            assert_eq!(p.ingest.post("/api/ingest/payments", &body).status, 202);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.scalar("SELECT count() FROM analytics.payments") == 0 {
        assert!(Instant::now() < deadline, "nothing inserted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.pending("analytics:payments") > 0, "nothing may be acknowledged yet");
    p.kill_worker();
    p.ingest.redis.restart_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    p.start_worker(FAST);
    wait_idle(&p);
    let got = wait_revenue(&p, ts, want.0);
    assert_eq!(got, want, "daily_revenue (revenue, refunds, failed)");
    let (_, _, payers_count) = wait_daily_users_match_redis(&p, ts);
    assert_eq!(payers_count, payers.len() as u64, "payers: {} distinct", payers.len());
}

/// A worker SIGKILLed after acknowledging payments but before a flush recomputed their
/// day's `daily_revenue` (here: flushes every ten minutes) leaves the day behind; the next
/// worker recomputes recently paid days when it starts, without a new payment.
#[test]
fn revenue_left_behind_by_a_killed_worker_is_recomputed_at_start() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[("CROUPIER_AGGREGATE__FLUSH_MS", "600000")]);
    let ts = now_secs() as u64;
    let rows: Vec<(String, String, u64, &str)> = (0..30)
        .map(|i| {
            (format!("o-{i}"), format!("buyer-{}", i % 7), 100 + i as u64, ["success", "refunded", "failed"][i % 3])
        })
        .collect();
    let want = rows.iter().fold((0, 0, 0), |(r, f, n), (_, _, a, s)| match *s {
        "success" => (r + a, f, n),
        "refunded" => (r, f + a, n),
        _ => (r, f, n + 1),
    });
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&rows, ts)).status, 202);
    wait_idle(&p);
    assert_eq!(p.scalar("SELECT count() FROM analytics.payments FINAL"), 30);
    assert_eq!(p.scalar("SELECT count() FROM analytics.daily_revenue"), 0, "no flush ran yet");
    p.kill_worker();
    p.start_worker(FAST);
    assert_eq!(wait_revenue(&p, ts, want.0), want, "daily_revenue (revenue, refunds, failed)");
}

/// A database Croupier created: its `daily_users` lacks `payers`, and a peak view of an
/// earlier schema took local days. Migrate adds the column (keeping the rows) and makes
/// the view take UTC days; the worker then writes the table.
#[test]
fn croupiers_own_daily_users_table_is_upgraded_and_written() {
    let mut p = Pipeline::start(&[]);
    let ch = &p.clickhouse;
    ch.query("DROP TABLE analytics.daily_users");
    ch.query(
        "CREATE TABLE analytics.daily_users (d Date, game_id LowCardinality(String), env LowCardinality(String), \
         dau UInt64, new_users UInt64, version UInt64) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY toYYYYMM(d) ORDER BY (game_id, env, d)",
    );
    ch.query("INSERT INTO analytics.daily_users VALUES ('2026-01-01', 'old', 'prod', 3, 1, 1)");
    ch.query("DROP TABLE analytics.daily_online_peak_mv");
    ch.query(
        "CREATE MATERIALIZED VIEW analytics.daily_online_peak_mv TO analytics.daily_online_peak AS SELECT toDate(m) AS d, \
         game_id, env, maxState(online) AS peak_online FROM analytics.minute_online GROUP BY d, game_id, env",
    );
    for _ in 0..2 {
        let (ok, out) = crate::pipeline::croupier(&["migrate"], &env(&p.ingest.redis, ch));
        assert!(ok, "{out}");
    }
    assert_eq!(
        ch.query("SELECT dau, new_users, payers FROM analytics.daily_users WHERE game_id = 'old' FORMAT TabSeparated")
            .trim(),
        "3\t1\t0"
    );
    let view = ch.query("SELECT create_table_query FROM system.tables WHERE name = 'daily_online_peak_mv'");
    assert!(view.contains("toDate(m, \\'UTC\\')"), "{view}");
    p.start_worker(FAST);
    let ts = now_secs() as u64;
    post_players(&p, "login", "p", 0..50, ts);
    wait_idle(&p);
    let (dau, _, _) = wait_daily_users_match_redis(&p, ts);
    assert_eq!(dau, 50);
}

/// Aggregate tables of the first schema (never written) are replaced by migrate; run
/// twice, migrate changes nothing more.
#[test]
fn migrate_replaces_the_first_schemas_empty_aggregate_tables() {
    let p = Pipeline::start(&[]);
    let ch = &p.clickhouse;
    for t in ["daily_online_peak_mv", "daily_online_peak", "minute_online", "daily_users", "daily_revenue"] {
        ch.query(&format!("DROP TABLE analytics.{t}"));
    }
    ch.query(
        "CREATE TABLE analytics.minute_online (m DateTime, game_id LowCardinality(String), env LowCardinality(String), \
         online UInt32) ENGINE = SummingMergeTree() PARTITION BY toYYYYMM(m) ORDER BY (game_id, env, m)",
    );
    ch.query(
        "CREATE TABLE analytics.daily_revenue (d Date, game_id LowCardinality(String), env LowCardinality(String), \
         revenue_cents UInt64, refunds_cents UInt64, failed UInt64, version UInt64) ENGINE = ReplacingMergeTree() \
         ORDER BY (game_id, env, d, version)",
    );
    for _ in 0..2 {
        let (ok, out) = crate::pipeline::croupier(&["migrate"], &env(&p.ingest.redis, ch));
        assert!(ok, "{out}");
    }
    let engines = ch.query(
        "SELECT name, engine FROM system.tables WHERE database = 'analytics' AND name IN \
         ('minute_online', 'daily_revenue', 'daily_users', 'daily_online_peak') ORDER BY name FORMAT TabSeparated",
    );
    assert_eq!(
        engines.trim_end(),
        "daily_online_peak\tAggregatingMergeTree\ndaily_revenue\tReplacingMergeTree\n\
         daily_users\tReplacingMergeTree\nminute_online\tReplacingMergeTree"
    );
    assert!(ch.query("SELECT engine_full FROM system.tables WHERE name = 'minute_online'").contains("(version)"));
    // One with rows is left to an operator.
    ch.query("INSERT INTO analytics.daily_revenue (d, game_id, env, revenue_cents, refunds_cents, failed, version) VALUES ('2026-01-01', 'g', 'e', 1, 0, 0, 1)");
    ch.query("DROP TABLE analytics.daily_revenue");
    ch.query(
        "CREATE TABLE analytics.daily_revenue (d Date, game_id String, env String, revenue_cents UInt64, \
         refunds_cents UInt64, failed UInt64, version UInt64) ENGINE = ReplacingMergeTree() ORDER BY (game_id, env, d, version)",
    );
    ch.query("INSERT INTO analytics.daily_revenue VALUES ('2026-01-01', 'g', 'e', 1, 0, 0, 1)");
    let (ok, out) = crate::pipeline::croupier(&["migrate"], &env(&p.ingest.redis, ch));
    assert!(!ok && out.contains("analytics.daily_revenue has an engine of an earlier schema"), "{out}");
}

/// The value of `name{game="g1",env="prod"}` in a scrape, if present.
fn gauge(scrape: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{game=\"{GAME}\",env=\"prod\"}} ");
    scrape.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// The worker process's control port exports the real-time gauges, read from its sketches:
/// after the flushes they equal Redis's `PFCOUNT` of the keys; day-1 retention of a cohort
/// half of which came back is about a half.
#[test]
fn realtime_gauges_on_the_control_port_equal_the_keys() {
    let mut p = Pipeline::start(&[]);
    let port = croupier_it::free_port();
    let listen = format!("127.0.0.1:{port}");
    p.start_worker(&[("CROUPIER_AGGREGATE__FLUSH_MS", "200"), ("CROUPIER_CONTROL__LISTEN", &listen)]);
    let ts = now_secs() as u64;
    // Yesterday's cohort: 2,000 new players, as an earlier worker left them in Redis.
    let yesterday = {
        let mut k = String::new();
        Kind::New.key(GAME, "prod", day_of(ts as i64 * 1000) - 1, &mut k);
        k
    };
    let cohort: Vec<String> = (0..1_000).chain(5_000..6_000).map(|i| format!("player-{i}")).collect();
    let mut args = vec!["PFADD".to_owned(), yesterday.clone()];
    args.extend(cohort);
    p.ingest.redis.client().cmd(&args);
    post_players(&p, "login", "player", 0..3_000, ts);
    post_players(&p, "register", "player", 2_000..3_000, ts);
    post_players(&p, "level_start", "player", 0..800, ts);
    post_players(&p, "level_clear", "player", 0..300, ts);
    post_players(&p, "heartbeat", "player", 0..500, ts);
    let pays: Vec<(String, String, u64, &str)> =
        (0..40).map(|i| (format!("g-{i}"), format!("player-{i}"), 10, "success")).collect();
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&pays, ts)).status, 202);
    wait_idle(&p);
    wait_daily_users_match_redis(&p, ts);
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let want = [
        ("croupier_realtime_dau", pfcount(&p, &key(Kind::Dau, ts))),
        ("croupier_realtime_new_users_today", pfcount(&p, &key(Kind::New, ts))),
        ("croupier_realtime_payers_today", pfcount(&p, &key(Kind::Payers, ts))),
        ("croupier_realtime_level_starts_today", pfcount(&p, &key(Kind::LevelStart, ts))),
        ("croupier_realtime_level_completions_today", pfcount(&p, &key(Kind::LevelClear, ts))),
        ("croupier_realtime_online_users", pfcount(&p, &key(Kind::Online, ts))),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let r = croupier_it::http::HttpClient::connect(addr).request("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        let text = r.text();
        if want.iter().all(|(n, v)| gauge(&text, n) == Some(*v as f64)) {
            break text;
        }
        assert!(Instant::now() < deadline, "gauges {want:?} not in\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(within(want[0].1, 3_000, 2.0) && within(want[3].1, 800, 2.0) && within(want[4].1, 300, 2.0), "{want:?}");
    let d1 = gauge(&scrape, "croupier_realtime_d1_retention_ratio").unwrap_or_else(|| {
        panic!(
            "no d1 retention in {}",
            scrape.lines().filter(|l| l.contains("realtime")).collect::<Vec<_>>().join("\n")
        )
    });
    assert!((d1 - 0.5).abs() < 0.05, "day-1 retention {d1}");
    assert!(p.stop_worker());
}
