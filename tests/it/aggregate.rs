//! Real-time aggregation end to end: players posted over HTTP, counted by the worker in
//! HyperLogLog sketches merged into Croupier's `hll:*` keys, and the aggregate tables
//! written from the merged figures — with Redis's PFCOUNT as the oracle.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_dataplane::worker::aggregate::what::{day_of, minute_of, Kind};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::http::{clear_of_day_turn, now_secs};

use crate::fixture::{post_signed, GAME, SECRET};
use crate::pipeline::{env, Pipeline, CROUPIER};

/// The worker's settings in these tests: flushes and writes the tables every 200 ms.
const FAST: &[(&str, &str)] = &[("CROUPIER_AGGREGATE__FLUSH_MS", "200"), ("CROUPIER_AGGREGATE__WRITE_MS", "200")];

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
/// stream does not exist, its length while the group does not).
fn lag(p: &Pipeline, stream: &str) -> u64 {
    use croupier_protocol::resp::Frame;
    let Frame::Array(groups) = p.ingest.redis.client().cmd(&["XINFO", "GROUPS", stream]) else { return 0 };
    if groups.is_empty() {
        // The stream exists but the worker has not made the group yet: nothing read.
        return p.ingest.redis.client().int(&["XLEN", stream]).max(0) as u64;
    }
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
///
/// Per stream, the lag (entries not yet delivered) is read before the pending count
/// (delivered, not yet acknowledged), in the order an entry goes through them: read the
/// other way round, an entry delivered between the two readings is in neither (pending
/// 0, then lag 0), and the streams look idle while the worker holds the entries it has
/// just read, their players not yet merged.
fn wait_idle(p: &Pipeline) {
    p.wait_for(0, "entries not yet delivered or acknowledged", |p| {
        ["analytics:events", "analytics:custom", "analytics:payments"]
            .iter()
            .map(|s| {
                let undelivered = lag(p, s);
                undelivered.saturating_add(p.pending(s) as u64)
            })
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

/// Rows of `table` for game `GAME` on the UTC day of `ts` (column `col`: the `Date` `d`,
/// or a `DateTime`), without `FINAL`: any row at all.
fn rows_on_day(p: &Pipeline, table: &str, col: &str, ts: u64) -> u64 {
    let d = day_of(ts as i64 * 1000);
    let day = if col == "d" { col.to_owned() } else { format!("toDate({col}, 'UTC')") };
    p.scalar(&format!(
        "SELECT count() FROM analytics.{table} WHERE game_id = '{GAME}' AND {day} = toDate('1970-01-01') + {d}"
    ))
}

/// Events and payments of yesterday (UTC) arriving today through HTTP update yesterday's
/// keys and rows — DAU, new users, payers, the online minute, exact revenue — and nothing
/// of today's.
#[test]
fn late_events_and_payments_of_yesterday_update_yesterdays_figures_only() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let now = now_secs() as u64;
    let y = now - 86_400;
    post_players(&p, "login", "late", 0..400, y);
    post_players(&p, "register", "late", 0..60, y);
    post_players(&p, "heartbeat", "late", 0..100, y);
    let rows: Vec<(String, String, u64, &str)> = (0..25)
        .map(|i| {
            (
                format!("late-{i}"),
                format!("late-{}", i % 9),
                700 + i as u64,
                ["success", "success", "refunded", "failed"][i % 4],
            )
        })
        .collect();
    let want = rows.iter().fold((0, 0, 0), |(r, f, n), (_, _, a, s)| match *s {
        "success" => (r + a, f, n),
        "refunded" => (r, f + a, n),
        _ => (r, f, n + 1),
    });
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&rows, y)).status, 202);
    wait_idle(&p);
    let (dau, new, payers) = wait_daily_users_match_redis(&p, y);
    assert!(within(dau, 400, 2.0) && within(new, 60, 2.0), "yesterday's daily_users {:?}", (dau, new, payers));
    // The successful payments' users: late-0, 1, 4, 5, 8, … (i % 4 < 2) modulo 9.
    let buyers: std::collections::BTreeSet<usize> = (0..25).filter(|i| i % 4 < 2).map(|i| i % 9).collect();
    assert_eq!(payers, buyers.len() as u64);
    assert_eq!(wait_revenue(&p, y, want.0), want, "yesterday's daily_revenue (revenue, refunds, failed)");
    let online = pfcount(&p, &key(Kind::Online, y));
    assert!(within(online, 100, 2.0), "yesterday's online minute {online}");
    let m = minute_of(y as i64 * 1000) as u64 * 60;
    p.wait_for(online, "minute_online FINAL of yesterday's minute", |p| {
        p.scalar(&format!(
            "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
        ))
    });
    // Today is untouched: no key, no row.
    for kind in [Kind::Dau, Kind::New, Kind::Payers, Kind::Online] {
        let k = key(kind, now);
        assert_eq!(p.ingest.redis.client().int(&["EXISTS", &k]), 0, "{k} exists");
    }
    assert_eq!(rows_on_day(&p, "daily_users", "d", now), 0, "daily_users of today");
    assert_eq!(rows_on_day(&p, "daily_revenue", "d", now), 0, "daily_revenue of today");
    assert_eq!(rows_on_day(&p, "minute_online", "m", now), 0, "minute_online of today");
    assert!(p.stop_worker());
}

/// Starts another `croupier worker` process with its own consumer name and control port.
fn second_worker(p: &Pipeline, name: &str, listen: &str) -> Child {
    let mut e = env(&p.ingest.redis, &p.clickhouse);
    e.push(("CROUPIER_WORKER__CONSUMER".into(), name.into()));
    e.push(("CROUPIER_CONTROL__LISTEN".into(), listen.into()));
    e.extend(FAST.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Command::new(CROUPIER).arg("worker").envs(e).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("worker")
}

/// Rows a worker process says it inserted (`croupier_worker_rows_inserted_total`, every
/// table), from its control port at `listen`; 0 while the port does not answer.
fn rows_inserted(listen: &str) -> u64 {
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else { return 0 };
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        return 0;
    }
    let r = croupier_it::http::HttpClient::connect(addr).request("GET", "/metrics", &[], b"");
    r.text()
        .lines()
        .filter(|l| l.starts_with("croupier_worker_rows_inserted_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// Names of the group's consumers on `stream` (`XINFO CONSUMERS`).
fn consumers(p: &Pipeline, stream: &str) -> Vec<String> {
    use croupier_protocol::resp::Frame;
    let Frame::Array(all) = p.ingest.redis.client().cmd(&["XINFO", "CONSUMERS", stream, "analytics-workers"]) else {
        return Vec::new();
    };
    all.into_iter()
        .filter_map(|c| match c {
            Frame::Array(kv) => kv.chunks(2).find_map(|c| match c {
                [Frame::BulkString(k), Frame::BulkString(v)] if k == b"name" => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

/// The same players and payments through one worker and through two worker processes of
/// the same group: the same keys (register for register), the same table figures — and
/// with two, each process inserted rows (its control port's counter), so both consumed.
#[test]
fn two_workers_give_the_same_figures_as_one() {
    let ts = now_secs() as u64;
    let run = |workers: usize| {
        let mut p = Pipeline::start(&[]);
        let listens: Vec<String> = (0..workers).map(|_| format!("127.0.0.1:{}", croupier_it::free_port())).collect();
        let mut first = FAST.to_vec();
        first.push(("CROUPIER_CONTROL__LISTEN", &listens[0]));
        p.start_worker(&first);
        let mut others: Vec<Child> =
            (1..workers).map(|i| second_worker(&p, &format!("other{i}"), &listens[i])).collect();
        // Every worker's consumers are in the group before anything is posted.
        let started = Instant::now();
        let joined = |p: &Pipeline| {
            let names = consumers(p, "analytics:events");
            (0..workers)
                .all(|i| names.iter().any(|n| n.starts_with(&if i == 0 { "it-".into() } else { format!("other{i}-") })))
        };
        while !joined(&p) {
            assert!(started.elapsed() < Duration::from_secs(30), "the workers' consumers did not join the group");
            std::thread::sleep(Duration::from_millis(50));
        }
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
        // 9,000 logins, 600 first_active, 200 payments were posted; each worker process
        // inserted some of them (redelivered entries may be counted twice).
        let inserted: Vec<u64> = listens.iter().map(|l| rows_inserted(l)).collect();
        eprintln!("{workers} worker(s): rows inserted per process {inserted:?}");
        assert!(inserted.iter().all(|&n| n > 0), "a worker consumed nothing: {inserted:?}");
        assert!(inserted.iter().sum::<u64>() >= 9_800, "{inserted:?}");
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
    // Named in Redis before the entries were acknowledged: the day's revenue and its
    // daily_users row (payers).
    let day = day_of(ts as i64 * 1000);
    assert_eq!(unwritten(&p), [format!("d:{day}:2:{GAME}prod"), format!("r:{day}:2:{GAME}prod")]);
    p.kill_worker();
    p.start_worker(FAST);
    assert_eq!(wait_revenue(&p, ts, want.0), want, "daily_revenue (revenue, refunds, failed)");
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
}

/// A pipeline whose ClickHouse logs every query in `system.query_log`.
fn logging_pipeline() -> Pipeline {
    Pipeline::start_on(ClickHouseServer::start_logging_queries(), &[], |_| {})
}

/// [`FAST`], and every held sketch merged again every 500 ms (`aggregate.resend_ms`).
fn fast_resending() -> Vec<(&'static str, &'static str)> {
    let mut settings = FAST.to_vec();
    settings.push(("CROUPIER_AGGREGATE__RESEND_MS", "500"));
    settings
}

/// The rows marked unwritten in Redis (`croupier:aggregate:unwritten`), sorted.
fn unwritten(p: &Pipeline) -> Vec<String> {
    use croupier_protocol::resp::Frame;
    let Frame::Array(members) = p.ingest.redis.client().cmd(&["ZRANGE", "croupier:aggregate:unwritten", "0", "-1"])
    else {
        return Vec::new();
    };
    let mut out: Vec<String> = members
        .into_iter()
        .filter_map(|m| match m {
            Frame::BulkString(b) => String::from_utf8(b).ok(),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A worker SIGKILLed after merging its sketches into Redis (before acknowledging) but
/// before it wrote the tables (here: flushes every ten minutes) leaves the minutes and
/// the day behind Redis — minutes that no later event may touch again. The next worker
/// reads the figures of recently received events' minutes and days from Redis when it
/// starts, and writes them.
#[test]
fn minute_online_and_daily_users_left_behind_by_a_killed_worker_are_written_at_start() {
    let mut p = logging_pipeline();
    p.start_worker(&[("CROUPIER_AGGREGATE__FLUSH_MS", "600000")]);
    // The current minute, and one up to ten minutes earlier on the same UTC day that
    // nothing touches afterwards (a minute of yesterday would count in yesterday's
    // players, not today's).
    let now = clear_of_day_turn(60, 120) as u64;
    let earlier = now - (now % 86_400 - 60).min(600);
    post_players(&p, "heartbeat", "on", 0..250, now);
    post_players(&p, "session_start", "on", 100..400, earlier);
    post_players(&p, "register", "on", 0..30, now);
    wait_idle(&p);
    let figures = |p: &Pipeline| {
        [
            pfcount(p, &key(Kind::Online, now)),
            pfcount(p, &key(Kind::Online, earlier)),
            pfcount(p, &key(Kind::Dau, now)),
            pfcount(p, &key(Kind::New, now)),
        ]
    };
    let want = figures(&p);
    assert!(within(want[0], 250, 2.0) && within(want[1], 300, 2.0) && within(want[2], 400, 2.0), "{want:?}");
    for t in ["minute_online", "daily_users"] {
        assert_eq!(p.scalar(&format!("SELECT count() FROM analytics.{t}")), 0, "{t}: no flush ran yet");
    }
    // What the next worker needs is named in Redis: two minutes and a day, however many
    // events there were (and are in ClickHouse).
    let (m_now, m_earlier) = (minute_of(now as i64 * 1000), minute_of(earlier as i64 * 1000));
    let day = day_of(now as i64 * 1000);
    let mut marked =
        vec![format!("d:{day}:2:{GAME}prod"), format!("m:{m_now}:2:{GAME}prod"), format!("m:{m_earlier}:2:{GAME}prod")];
    marked.sort();
    assert_eq!(unwritten(&p), marked);
    p.kill_worker();
    p.start_worker(FAST);
    for (i, ts) in [now, earlier].into_iter().enumerate() {
        let m = minute_of(ts as i64 * 1000) as u64 * 60;
        p.wait_for(want[i], "minute_online FINAL", |p| {
            p.scalar(&format!(
                "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
            ))
        });
    }
    let (dau, new, _) = wait_daily_users_match_redis(&p, now);
    assert_eq!([dau, new], [want[2], want[3]]);
    assert_eq!(figures(&p), want, "Redis unchanged");
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
    assert!(p.stop_worker());
    // Neither worker read an event or a payment back from ClickHouse (the first version
    // scanned `analytics.events` by `ingested_at` at every start: every row).
    p.clickhouse.query("SYSTEM FLUSH LOGS");
    // (Only `croupier migrate` looked, at the empty tables.)
    let read = p.clickhouse.query(
        "SELECT read_rows, query FROM system.query_log WHERE type = 2 AND interface = 1 \
         AND query LIKE 'SELECT%' AND (query LIKE '%analytics.events%' OR query LIKE '%analytics.payments%') \
         AND read_rows > 0 FORMAT TabSeparated",
    );
    assert_eq!(read, "", "queries that read rows of events or payments (rows read, query)");
}

/// `daily_revenue FINAL` of environment `env` on day `day`: (revenue, refunds, failed),
/// `None` without a row.
fn revenue_row(p: &Pipeline, env: &str, day: u32) -> Option<(u64, u64, u64)> {
    let out = p.clickhouse.query(&format!(
        "SELECT revenue_cents, refunds_cents, failed FROM analytics.daily_revenue FINAL \
         WHERE game_id = '{GAME}' AND env = '{env}' AND d = toDate('1970-01-01') + {day} FORMAT TabSeparated"
    ));
    let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v[..] {
        [r, f, n] => Some((r, f, n)),
        _ => None,
    }
}

/// Waits until every `(env, day, figures)` of `want` is in `daily_revenue FINAL`.
fn wait_revenue_rows(p: &Pipeline, want: &[(&str, u32, (u64, u64, u64))]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<Option<(u64, u64, u64)>> = want.iter().map(|(e, d, _)| revenue_row(p, e, *d)).collect();
        if got.iter().zip(want).all(|(g, (_, _, w))| *g == Some(*w)) {
            return;
        }
        assert!(Instant::now() < deadline, "daily_revenue {got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client retries payments of yesterday 23:59:30 after midnight, re-stamped today: the
/// orders move to today (`payments` keeps one row per order and status), and yesterday's
/// `daily_revenue` drops them — to zero where every order moved, to what stayed where
/// some did.
#[test]
fn a_payment_retried_across_midnight_moves_out_of_yesterdays_revenue() {
    let now = now_secs() as u64;
    payments_retried_across(now - now % 86_400);
}

/// The same across the first midnight of the month: `payments` is partitioned by month,
/// so the order keeps a row in each month (`ReplacingMergeTree` replaces within a
/// partition only); the revenue still counts it once, on its latest day.
#[test]
fn a_payment_retried_across_a_month_boundary_moves_out_of_last_months_revenue() {
    let now = now_secs() as u64;
    let today = day_of(now as i64 * 1000);
    let (_, _, d) = croupier_dataplane::worker::aggregate::what::civil(today);
    let month_start = u64::from(today - (d - 1)) * 86_400;
    let p = payments_retried_across(month_start);
    assert_eq!(
        p.scalar(&format!(
            "SELECT uniqExact(toYYYYMM(time)) FROM analytics.payments WHERE game_id = '{GAME}' AND order_id = 'x'"
        )),
        2,
        "the order has a row in each month"
    );
}

/// Payments at `midnight` - 30 s, then some of them retried (re-stamped) just after it:
/// the revenue of both days, exact.
fn payments_retried_across(midnight: u64) -> Pipeline {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let now = now_secs() as u64;
    let (before, after) = (midnight - 30, midnight + now.saturating_sub(midnight).min(5));
    let (yesterday, today) = (day_of(before as i64 * 1000), day_of(after as i64 * 1000));
    let body = |env: &str, rows: &[(&str, &str, u64, &str)], ts: u64| {
        let items: Vec<String> = rows
            .iter()
            .map(|(o, u, a, s)| {
                format!(
                    r#"{{"ts":{ts},"game_id":"{GAME}","env":"{env}","user_id":"{u}","order_id":"{o}","amount_cents":{a},"currency":"USD","status":"{s}"}}"#
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    };
    let prod = [("x", "u1", 1_000, "success"), ("y", "u2", 300, "refunded"), ("z", "u3", 50, "failed")];
    let stg = [("k", "u4", 250, "success"), ("m", "u5", 400, "success")];
    for (env, rows) in [("prod", &prod[..]), ("stg", &stg[..])] {
        assert_eq!(p.ingest.post("/api/ingest/payments", &body(env, rows, before)).status, 202);
    }
    wait_idle(&p);
    wait_revenue_rows(&p, &[("prod", yesterday, (1_000, 300, 1)), ("stg", yesterday, (650, 0, 0))]);
    // The retries: every prod order, and one of stg's.
    assert_eq!(p.ingest.post("/api/ingest/payments", &body("prod", &prod, after)).status, 202);
    assert_eq!(p.ingest.post("/api/ingest/payments", &body("stg", &stg[1..], after)).status, 202);
    wait_idle(&p);
    wait_revenue_rows(
        &p,
        &[
            ("prod", today, (1_000, 300, 1)),
            ("stg", today, (400, 0, 0)),
            ("prod", yesterday, (0, 0, 0)),
            ("stg", yesterday, (250, 0, 0)),
        ],
    );
    assert!(p.stop_worker());
    p
}

/// Players are counted only once ClickHouse confirmed their rows: an entry ClickHouse
/// refuses (here a view on `events` fails on one user's rows, as bad data) is
/// dead-lettered and its player is in no key, while the rest count — the DAU key's
/// registers are those of Redis's own `PFADD` of the players whose rows were stored.
#[test]
fn a_dead_lettered_entrys_players_are_not_counted() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query(
        "CREATE MATERIALIZED VIEW analytics.refuse_one_player ENGINE = Memory AS \
         SELECT toUInt32(if(user_id = 'refused-0', 'not a number', '1')) AS x FROM analytics.events",
    );
    let ts = now_secs() as u64;
    post_players(&p, "login", "stored", 0..20, ts);
    post_players(&p, "login", "refused", 0..1, ts);
    post_players(&p, "login", "stored", 20..40, ts);
    p.start_worker(FAST);
    p.wait_for(1, "dead letters", |p| p.ingest.redis.client().int(&["XLEN", "analytics:events:dead"]) as u64);
    wait_idle(&p);
    let mut oracle = vec!["PFADD".to_owned(), "oracle".to_owned()];
    oracle.extend((0..40).map(|i| format!("stored-{i}")));
    p.ingest.redis.client().cmd(&oracle);
    let registers = |k: &str| match p.ingest.redis.client().cmd(&["PFDEBUG", "GETREG", k]) {
        croupier_protocol::resp::Frame::Array(a) => a,
        other => panic!("{other:?}"),
    };
    let dau = key(Kind::Dau, ts);
    p.wait_for(pfcount(&p, "oracle"), "DAU", |p| pfcount(p, &dau));
    assert!(registers(&dau) == registers("oracle"), "the DAU key holds a player whose rows were refused");
    assert_eq!(wait_daily_users_match_redis(&p, ts).0, 40);
    assert!(p.stop_worker());
}

/// The dense registers of `key` (`PFDEBUG GETREG`), `None` when there is no such key.
fn registers(p: &Pipeline, key: &str) -> Option<Vec<croupier_protocol::resp::Frame>> {
    match p.ingest.redis.client().cmd(&["PFDEBUG", "GETREG", key]) {
        croupier_protocol::resp::Frame::Array(a) => Some(a),
        _ => None,
    }
}

/// Redis loses the `hll:*` keys (a restart without fsync, a failover): the worker merges
/// every sketch it holds again every `aggregate.resend_ms`, so today's keys come back,
/// register for register, without a new event.
#[test]
fn hll_keys_redis_lost_come_back_from_the_workers_sketches() {
    let mut p = Pipeline::start(&[]);
    // The shard holds the current and previous minute's sketches: the players' minute must
    // stay one of those until its key has come back (a minute and more from here).
    while now_secs() % 60 > 45 {
        std::thread::sleep(Duration::from_millis(200));
    }
    p.start_worker(&fast_resending());
    let ts = now_secs() as u64;
    post_players(&p, "login", "kept", 0..500, ts);
    post_players(&p, "register", "kept", 0..50, ts);
    post_players(&p, "heartbeat", "kept", 0..100, ts);
    // What each key must hold: Redis's own PFADD of its players (every player logged in;
    // the first 50 registered, the first 100 sent heartbeats).
    let players = |n: usize| (0..n).map(|i| format!("kept-{i}"));
    oracle(&p, "oracle:dau", players(500));
    oracle(&p, "oracle:new", players(50));
    oracle(&p, "oracle:online", players(100));
    let keys = [key(Kind::Dau, ts), key(Kind::New, ts), key(Kind::Online, ts)];
    let want: Vec<_> = ["oracle:dau", "oracle:new", "oracle:online"].iter().map(|k| registers(&p, k)).collect();
    assert!(want.iter().all(Option::is_some));
    // Every player merged: waiting on the keys themselves (a `daily_users` matching
    // Redis's counts proves nothing while neither holds anything yet).
    let held = |p: &Pipeline| keys.iter().map(|k| registers(p, k)).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held(&p) != want {
        assert!(
            Instant::now() < deadline,
            "keys written: {:?}",
            keys.iter().map(|k| pfcount(&p, k)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut del = vec!["DEL".to_owned()];
    del.extend(keys.iter().cloned());
    assert_eq!(p.ingest.redis.client().cmd(&del), croupier_protocol::resp::Frame::Integer(3));
    let deadline = Instant::now() + Duration::from_secs(30);
    while held(&p) != want {
        assert!(Instant::now() < deadline, "the keys did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    // With their TTLs.
    assert!(p.ingest.redis.client().int(&["TTL", &keys[0]]) > 29 * 86_400);
    assert!(p.stop_worker());
}

/// `daily_users` (`FINAL`) of `GAME`/prod on the UTC day of `ts`: dau, new_users, payers
/// and version; `None` without a row.
fn day_row(p: &Pipeline, ts: u64) -> Option<(u64, u64, u64, u64)> {
    let d = day_of(ts as i64 * 1000);
    let out = p.clickhouse.query(&format!(
        "SELECT dau, new_users, payers, version FROM analytics.daily_users FINAL WHERE game_id = '{GAME}' \
         AND env = 'prod' AND d = toDate('1970-01-01') + {d} FORMAT TabSeparated"
    ));
    let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v[..] {
        [a, b, c, version] => Some((a, b, c, version)),
        _ => None,
    }
}

/// `minute_online` (`FINAL`) of `GAME`/prod in the minute of `ts`: online and version.
fn minute_row(p: &Pipeline, ts: u64) -> Option<(u64, u64)> {
    let m = minute_of(ts as i64 * 1000) as u64 * 60;
    let out = p.clickhouse.query(&format!(
        "SELECT online, version FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND env = 'prod' \
         AND m = toDateTime({m}) FORMAT TabSeparated"
    ));
    let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v[..] {
        [online, version] => Some((online, version)),
        _ => None,
    }
}

/// Redis loses every `hll:*` key while no worker holds a sketch of a past day (two days
/// back) and of a past minute (an hour back); new players then come for that day and
/// minute, so the keys count only them. The rows keep at least what they had: each figure
/// is the larger of the row before and the new reading (`daily_users` dau stays at the
/// first players' count, `new_users` rises to the second's), never the new reading alone.
#[test]
fn figure_rows_are_not_written_lower_after_redis_lost_their_keys() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let now = now_secs() as u64;
    let (day, minute) = (now - 2 * 86_400, now - 3_600);
    // Players `<prefix>-0..` logging in and registering on `day` and online in `minute`;
    // what Redis's own PFADD of them counts, per key.
    let come = |p: &Pipeline, prefix: &'static str, (logins, registers, online): (usize, usize, usize)| {
        let players = |n: usize| (0..n).map(move |i| format!("{prefix}-{i}"));
        post_players(p, "login", prefix, 0..logins, day);
        post_players(p, "register", prefix, 0..registers, day);
        post_players(p, "heartbeat", prefix, 0..online, minute);
        (
            oracle(p, "oracle:dau", players(logins)),
            oracle(p, "oracle:new", players(registers)),
            oracle(p, "oracle:online", players(online)),
        )
    };
    let (dau_a, new_a, online_a) = come(&p, "a", (60, 20, 40));
    p.wait_for(dau_a, "daily_users dau", |p| day_row(p, day).map_or(0, |r| r.0));
    p.wait_for(new_a, "daily_users new_users", |p| day_row(p, day).map_or(0, |r| r.1));
    p.wait_for(online_a, "minute_online", |p| minute_row(p, minute).map_or(0, |r| r.0));
    // The versions of the rows written so far.
    let before = (day_row(&p, day).map_or(0, |r| r.3), minute_row(&p, minute).map_or(0, |r| r.1));
    // The worker stops (no sketch of that day or minute is left anywhere) and Redis loses
    // the keys.
    assert!(p.stop_worker());
    let lost = match p.ingest.redis.client().cmd(&["KEYS", "hll:*"]) {
        croupier_protocol::resp::Frame::Array(k) => k,
        other => panic!("KEYS: {other:?}"),
    };
    assert!(lost.len() >= 3, "{lost:?}");
    let mut del = vec![croupier_protocol::resp::Frame::BulkString(b"DEL".to_vec())];
    del.extend(lost);
    let del: Vec<Vec<u8>> = del
        .into_iter()
        .filter_map(|f| match f {
            croupier_protocol::resp::Frame::BulkString(b) => Some(b),
            _ => None,
        })
        .collect();
    p.ingest.redis.client().cmd(&del);
    p.start_worker(FAST);
    let (dau_b, new_b, online_b) = come(&p, "b", (30, 30, 15));
    p.wait_for(dau_b, "the DAU key (the second players only)", |p| pfcount(p, &key(Kind::Dau, day)));
    p.wait_for(new_b, "the new-users key", |p| pfcount(p, &key(Kind::New, day)));
    p.wait_for(online_b, "the online key", |p| pfcount(p, &key(Kind::Online, minute)));
    // Rewritten since the loss (a later version), the rows hold the larger of what they
    // had and what the keys now count, figure by figure: `dau` and `online` what they had,
    // `new_users` the new count.
    let want = (Some((dau_a.max(dau_b), new_a.max(new_b), 0)), Some(online_a.max(online_b)));
    let rows = |p: &Pipeline| {
        let day = day_row(p, day).filter(|r| r.3 > before.0).map(|r| (r.0, r.1, r.2));
        let minute = minute_row(p, minute).filter(|r| r.1 > before.1).map(|r| r.0);
        (day, minute)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = rows(&p);
        if got == want {
            break;
        }
        // Never lower than before, at any write.
        if let Some((dau, new, _)) = got.0 {
            assert!(
                dau >= dau_a && new >= new_a,
                "daily_users written lower: ({dau}, {new}), before ({dau_a}, {new_a})"
            );
        }
        if let Some(online) = got.1 {
            assert!(online >= online_a, "minute_online written lower: {online}, before {online_a}");
        }
        assert!(
            Instant::now() < deadline,
            "rows rewritten after the loss (daily_users dau, new_users, payers; minute_online online): {got:?}, \
             expected {want:?}; before the loss: ({dau_a}, {new_a}, 0), {online_a}; the keys now: ({dau_b}, {new_b}, \
             0), {online_b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop_worker());
}

/// Inserts a MergeTree table took: every part an insert writes takes the next block
/// number, one part per partition (month) of its rows — here, at most one insert spans
/// several months.
fn inserts(p: &Pipeline, table: &str) -> u64 {
    p.scalar(&format!(
        "SELECT max(max_block_number) + 1 - uniqExact(partition) FROM system.parts \
         WHERE database = 'analytics' AND table = '{table}'"
    ))
}

/// The aggregate tables get one insert per table at most per `aggregate.write_ms`
/// (here 1 s), however often the shard flushes to Redis (here every 50 ms) and however
/// many days' revenue changed (three days of payments: one insert).
#[test]
fn aggregate_tables_get_one_insert_per_table_per_write() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&[("CROUPIER_AGGREGATE__FLUSH_MS", "50"), ("CROUPIER_AGGREGATE__WRITE_MS", "1000")]);
    let now = now_secs() as u64;
    let days = [now, now - 86_400, now - 2 * 86_400];
    let mut body = Vec::new();
    for (i, ts) in days.iter().enumerate() {
        let rows: Vec<(String, String, u64, &str)> =
            (0..3).map(|j| (format!("o{i}-{j}"), format!("u{j}"), 100 * (i as u64 + 1), "success")).collect();
        let one = payments(&rows, *ts);
        body.push(one[1..one.len() - 1].to_owned());
    }
    let body = format!("[{}]", body.join(","));
    assert_eq!(p.ingest.post("/api/ingest/payments", &body).status, 202);
    let started = Instant::now();
    for i in 0..20 {
        post_players(&p, "heartbeat", "hb", i * 10..(i + 1) * 10, now);
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_idle(&p);
    for (i, ts) in days.iter().enumerate() {
        assert_eq!(wait_revenue(&p, *ts, 300 * (i as u64 + 1)), (300 * (i as u64 + 1), 0, 0));
    }
    let online = pfcount(&p, &key(Kind::Online, now));
    assert!(within(online, 200, 2.0), "{online}");
    let m = minute_of(now as i64 * 1000) as u64 * 60;
    p.wait_for(online, "minute_online FINAL", |p| {
        p.scalar(&format!(
            "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
        ))
    });
    let secs = started.elapsed().as_secs();
    let counted = [inserts(&p, "minute_online"), inserts(&p, "daily_users"), inserts(&p, "daily_revenue")];
    eprintln!("inserts in {secs} s (minute_online, daily_users, daily_revenue): {counted:?}");
    assert!(counted[0] <= secs + 2 && counted[1] <= secs + 2, "{counted:?} in {secs} s");
    assert_eq!(counted[2], 1, "three days' revenue in one insert");
    assert!(p.stop_worker());
}

/// A day key holding another type (here a list where today's DAU key should be) reads
/// back as no figure, not as 0: the day's `daily_users` row is not written, while the
/// keys of other days and kinds are merged and written as always. The merges Redis
/// refused are counted (`croupier_realtime_merges_refused_total`), for an alert.
#[test]
fn a_key_of_another_type_is_not_written_as_a_zero() {
    let mut p = Pipeline::start(&[]);
    let ts = now_secs() as u64;
    let dau = key(Kind::Dau, ts);
    p.ingest.redis.client().cmd(&["RPUSH", &dau, "not a HyperLogLog"]);
    // And the day's payers key a string that is no HyperLogLog.
    let payers = key(Kind::Payers, ts);
    p.ingest.redis.client().cmd(&["SET", &payers, "x"]);
    let port = croupier_it::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut settings = FAST.to_vec();
    settings.push(("CROUPIER_CONTROL__LISTEN", &listen));
    p.start_worker(&settings);
    let pays: Vec<(String, String, u64, &str)> =
        (0..3).map(|i| (format!("g-{i}"), format!("t-{i}"), 10, "success")).collect();
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&pays, ts)).status, 202);
    post_players(&p, "register", "t", 0..30, ts);
    post_players(&p, "heartbeat", "t", 0..20, ts);
    wait_idle(&p);
    let online = pfcount(&p, &key(Kind::Online, ts));
    let m = minute_of(ts as i64 * 1000) as u64 * 60;
    p.wait_for(online, "minute_online FINAL", |p| {
        p.scalar(&format!(
            "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
        ))
    });
    // Several writes later (every 200 ms), still no row of the day.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(rows_on_day(&p, "daily_users", "d", ts), 0, "daily_users written with a DAU it could not read");
    assert!(within(pfcount(&p, &key(Kind::New, ts)), 30, 2.0));
    assert_eq!(p.ingest.redis.client().int(&["LLEN", &dau]), 1, "the list is left alone");
    assert_eq!(
        p.ingest.redis.client().cmd(&["GET", &payers]),
        croupier_protocol::resp::Frame::BulkString(b"x".to_vec()),
        "the string too"
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let text = croupier_it::http::HttpClient::connect(addr).request("GET", "/metrics", &[], b"").text();
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("croupier_realtime_merges_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // At least one refusal of each key (the DAU's merges are refused with every batch).
    assert!(refused >= 2.0, "{text}");
    // The events and payments were acknowledged and stored all the same.
    assert_eq!(p.scalar("SELECT count() FROM analytics.payments"), 3);
    assert!(p.stop_worker());
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
    let mut settings = FAST.to_vec();
    settings.push(("CROUPIER_CONTROL__LISTEN", &listen));
    p.start_worker(&settings);
    // The gauges are of the day: it does not turn before the scrapes match.
    let ts = clear_of_day_turn(60, 0) as u64;
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
    // A worker started afresh reports the day's figures again before any event (the
    // games of today's `daily_users` rows read back from Redis), and keeps them when the
    // scope's first event comes: one login of a known player (no session: it counts in no
    // online minute, and the current minute's sketch it makes holds no player). The online
    // gauge is the current minute's, else the previous one's: the heartbeats' minute while
    // at most one minute has turned since (the test takes seconds).
    p.start_worker(&settings);
    let expect = |when: &str| {
        let turned = minute_of(now_secs() as i64 * 1000) - minute_of(ts as i64 * 1000);
        let days = if turned <= 1 { &want[..] } else { &want[..want.len() - 1] };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The worker may not listen yet.
            let text = match std::net::TcpStream::connect(addr) {
                Ok(_) => croupier_it::http::HttpClient::connect(addr).request("GET", "/metrics", &[], b"").text(),
                Err(e) => e.to_string(),
            };
            if days.iter().all(|(n, v)| gauge(&text, n) == Some(*v as f64)) {
                break;
            }
            assert!(Instant::now() < deadline, "after a restart, {when}: gauges {days:?} not in\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    expect("before any event");
    post_players(&p, "login", "player", 0..1, ts);
    wait_idle(&p);
    expect("after a login");
    assert!(p.stop_worker());
}

/// A write of the aggregates to Redis that fails mid-way is retried, and nothing is lost
/// or counted twice. Here every flush script stops after its first key's `PFMERGE`
/// (`EXPIRE` is renamed away: the merge is in, the script fails): ClickHouse has the rows,
/// the entries stay unacknowledged, the merged keys have no TTL yet. Redis is restarted
/// (from its AOF, `EXPIRE` back) mid-run — the worker's connections drop — and more
/// players come: the retried flushes go through, every entry is acknowledged, and the keys
/// hold exactly the registers of a sketch of the same players, with their TTLs.
#[test]
fn aggregates_written_half_way_to_redis_are_retried_after_a_redis_restart() {
    const AOF: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];
    let mut args = AOF.to_vec();
    args.extend(["--rename-command", "EXPIRE", "EXPIRE_HIDDEN_FOR_TEST"]);
    let mut p = Pipeline::start(&args);
    let mut settings = FAST.to_vec();
    settings.push(("CROUPIER_WORKER__BACKOFF_MAX_MS", "200"));
    p.start_worker(&settings);
    let ts = now_secs() as u64;
    post_players(&p, "login", "rs", 0..1_500, ts);
    post_players(&p, "register", "rs", 0..200, ts);
    // The first batch's rows are inserted; its flush fails again and again, so the
    // consumer retries it and reads no further (how much is in it depends on timing).
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.scalar("SELECT count() FROM analytics.events") == 0 {
        assert!(Instant::now() < deadline, "no row reached ClickHouse");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.pending("analytics:events") > 0, "nothing may be acknowledged while the flush fails");
    let (dau, new) = (key(Kind::Dau, ts), key(Kind::New, ts));
    let ttls: Vec<i64> = [&dau, &new].iter().map(|k| p.ingest.redis.client().int(&["TTL", k])).collect();
    assert!(ttls.contains(&-1) && ttls.iter().all(|t| [-1, -2].contains(t)), "merged half way: TTLs {ttls:?}");
    p.ingest.redis.restart_with(&AOF);
    p.ingest.wait_ready();
    post_players(&p, "login", "rs", 1_500..3_000, ts);
    wait_idle(&p);
    let sketch = |users: std::ops::Range<usize>| {
        let mut s = croupier_protocol::hll::Sketch::new();
        for i in users {
            s.add(format!("rs-{i}").as_bytes());
        }
        s
    };
    let want = [(dau.clone(), sketch(0..3_000)), (new.clone(), sketch(0..200))];
    let value = |k: &str| match p.ingest.redis.client().cmd(&["GET", k]) {
        croupier_protocol::resp::Frame::BulkString(b) => croupier_protocol::hll::Sketch::from_redis(&b).ok(),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while want.iter().any(|(k, s)| value(k).as_ref() != Some(s)) {
        assert!(Instant::now() < deadline, "the keys do not hold the players' registers");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (d, n, _) = wait_daily_users_match_redis(&p, ts);
    assert_eq!([d, n], [want[0].1.count(), want[1].1.count()]);
    assert!(within(d, 3_000, 2.0), "DAU {d}");
    for k in [&dau, &new] {
        assert!(p.ingest.redis.client().int(&["TTL", k]) > 29 * 86_400, "{k}: TTL set once the flush went through");
    }
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
    assert!(p.stop_worker());
}

/// A worker killed while others run leaves rows marked unwritten that no start comes to
/// write: worker shard 0 writes rows marked longer than `aggregate.resend_ms` ago. Here
/// the killed worker's state is made by hand — a minute's key in Redis and its mark, a
/// second old — and the running worker writes the minute's `minute_online` row and
/// removes the mark.
#[test]
fn rows_left_marked_by_a_worker_that_died_are_written_by_a_running_one() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&fast_resending());
    // Its start-time look at the marks is behind it once it has written a row.
    let now = now_secs() as u64;
    post_players(&p, "login", "alive", 0..10, now);
    wait_idle(&p);
    assert_eq!(wait_daily_users_match_redis(&p, now).0, 10);
    let earlier = now_secs() as u64 - 900;
    let minute = minute_of(earlier as i64 * 1000);
    let k = key(Kind::Online, earlier);
    let mut pfadd = vec!["PFADD".to_owned(), k.clone()];
    pfadd.extend((0..50).map(|i| format!("dead-{i}")));
    p.ingest.redis.client().cmd(&pfadd);
    let online = pfcount(&p, &k);
    let score = (now_secs() as u64 - 1) * 1_000_000;
    let member = format!("m:{minute}:2:{GAME}prod");
    p.ingest.redis.client().cmd(&["ZADD", "croupier:aggregate:unwritten", &score.to_string(), &member]);
    let m = minute as u64 * 60;
    p.wait_for(online, "minute_online FINAL of the dead worker's minute", |p| {
        p.scalar(&format!(
            "SELECT sum(online) FROM analytics.minute_online FINAL WHERE game_id = '{GAME}' AND m = toDateTime({m})"
        ))
    });
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
    assert!(p.stop_worker());
}

/// The revenue of a day is computed from the payments of the orders with a row on that
/// day, not from every payment of the game: with 200,000 older payments of the same game
/// (three months back), the statement that writes today's `daily_revenue` reads a few
/// granules of them (`system.query_log`), and today's figures are exact.
#[test]
fn revenue_recompute_reads_the_days_orders_not_every_payment_of_the_game() {
    let mut p = logging_pipeline();
    let now = now_secs() as u64;
    p.clickhouse.query(&format!(
        "INSERT INTO analytics.payments (time, game_id, env, user_id, order_id, amount_cents, currency, status) \
         SELECT toDateTime({}), '{GAME}', 'prod', concat('old-', toString(number % 1000)), \
         concat('old-', toString(number)), 100, 'USD', 'success' FROM system.numbers LIMIT 200000",
        now - 90 * 86_400
    ));
    p.start_worker(FAST);
    let rows: Vec<(String, String, u64, &str)> = [(1_000, "success"), (300, "refunded"), (50, "failed")]
        .iter()
        .enumerate()
        .map(|(i, (a, s))| (format!("new-{i}"), format!("buyer-{i}"), *a, *s))
        .collect();
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&rows, now)).status, 202);
    wait_idle(&p);
    assert_eq!(wait_revenue(&p, now, 1_000), (1_000, 300, 1));
    assert!(p.stop_worker());
    p.clickhouse.query("SYSTEM FLUSH LOGS");
    let read = p.scalar(
        "SELECT max(read_rows) FROM system.query_log WHERE type = 2 \
         AND query LIKE 'INSERT INTO analytics.daily_revenue%'",
    );
    eprintln!("rows read by the revenue statement: {read} (200,003 payments of the game)");
    assert!(read > 0 && read < 50_000, "the revenue statement read {read} rows");
}

/// One batch of 500 payments whose environments and order ids are as long as ingest
/// allows (256 bytes) and full of quotes (escaping doubles them): the look-up of the
/// days the orders are already on is split by size, never one statement past
/// ClickHouse's `max_query_size`, so the payments are inserted and acknowledged (none
/// dead-lettered) and `daily_revenue` is exact.
#[test]
fn payments_with_longest_envs_and_order_ids_are_inserted_and_counted() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let ts = now_secs() as u64;
    let quotes = "'".repeat(250);
    let items: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"ts":{ts},"game_id":"{GAME}","env":"{i:06}{quotes}","user_id":"u-{i}","order_id":"{i:06}{quotes}","amount_cents":{a},"currency":"USD","status":"success"}}"#,
                a = 100 + i
            )
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    assert_eq!(p.ingest.post("/api/ingest/payments", &body).status, 202);
    wait_idle(&p);
    assert_eq!(p.ingest.redis.client().int(&["XLEN", "analytics:payments:dead"]), 0, "nothing dead-lettered");
    assert_eq!(p.scalar("SELECT count() FROM analytics.payments FINAL"), 500);
    let want: u64 = (0..500).map(|i| 100 + i).sum();
    let d = day_of(ts as i64 * 1000);
    p.wait_for(want, "daily_revenue of the 500 environments", |p| {
        p.scalar(&format!(
            "SELECT sum(revenue_cents) FROM analytics.daily_revenue FINAL WHERE game_id = '{GAME}' \
             AND d = toDate('1970-01-01') + {d}"
        ))
    });
    assert_eq!(
        p.scalar(&format!(
            "SELECT count() FROM analytics.daily_revenue FINAL WHERE game_id = '{GAME}' AND d = toDate('1970-01-01') + {d}"
        )),
        500
    );
    assert!(p.stop_worker());
}

/// Redis loses its last writes — here the `hll:*` keys are deleted and the worker's
/// connections are killed, as a restart from an older AOF or a failover to a replica
/// that missed them would — and the worker reconnects: before it acknowledges the next
/// entries it merges every sketch it holds again, so the keys hold the earlier players'
/// registers again (without waiting for `aggregate.resend_ms`, a minute by default).
#[test]
fn a_redis_reconnect_merges_every_held_sketch_before_the_next_acknowledgement() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let ts = now_secs() as u64;
    post_players(&p, "register", "early", 0..300, ts);
    wait_idle(&p);
    // The new-users key: the later logins do not touch its sketch.
    let dau = key(Kind::New, ts);
    assert!(registers(&p, &dau).is_some(), "key written");
    assert_eq!(p.ingest.redis.client().int(&["DEL", &dau]), 1);
    p.ingest.redis.client().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    // The ingest's connection was killed too: it answers 503 until it has reconnected.
    let items: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","event":"login","user_id":"late-{i}"}}"#))
        .collect();
    let body = format!("[{}]", items.join(","));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = p.ingest.client();
    while post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes()).status != 202 {
        assert!(Instant::now() < deadline, "ingest did not reconnect");
        std::thread::sleep(Duration::from_millis(50));
        c = p.ingest.client();
    }
    wait_idle(&p);
    let mut want = croupier_protocol::hll::Sketch::new();
    for i in 0..300 {
        want.add(format!("early-{i}").as_bytes());
    }
    let got = match p.ingest.redis.client().cmd(&["GET", &dau]) {
        croupier_protocol::resp::Frame::BulkString(b) => croupier_protocol::hll::Sketch::from_redis(&b).ok(),
        _ => None,
    };
    assert!(got.as_ref() == Some(&want), "the new-users key lacks the players merged before the reconnect");
    assert!(p.stop_worker());
}

/// Posts `name` events of `game` (signed with `secret`) for users `prefix-<i>`, `i` in
/// `users`, the environment of each `env(i)`, at `ts`, in batches of 500.
#[allow(clippy::too_many_arguments)]
fn post_game_players(
    p: &Pipeline,
    game: &str,
    secret: &str,
    name: &str,
    prefix: &str,
    users: std::ops::Range<usize>,
    env: impl Fn(usize) -> String,
    ts: u64,
) {
    let mut c = p.ingest.client();
    let all: Vec<usize> = users.collect();
    for chunk in all.chunks(500) {
        let items: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let e = env(i);
                format!(r#"{{"ts":{ts},"game_id":"{game}","env":"{e}","event":"{name}","user_id":"{prefix}-{i}"}}"#)
            })
            .collect();
        let body = format!("[{}]", items.join(","));
        let r = post_signed(&mut c, "/api/ingest/events", game, secret, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
}

/// `PFADD`s `players` into the key `oracle` (replacing it): what Redis itself counts.
fn oracle(p: &Pipeline, oracle: &str, players: impl Iterator<Item = String>) -> u64 {
    p.ingest.redis.client().cmd(&["DEL", oracle]);
    let mut args = vec!["PFADD".to_owned(), oracle.to_owned()];
    args.extend(players);
    p.ingest.redis.client().cmd(&args);
    pfcount(p, oracle)
}

/// `daily_users` (`FINAL`) of `game` and `env` on the UTC day of `ts`: dau, new_users, payers.
fn daily_users_of(p: &Pipeline, game: &str, env: &str, ts: u64) -> (u64, u64, u64) {
    let d = day_of(ts as i64 * 1000);
    let out = p.clickhouse.query(&format!(
        "SELECT dau, new_users, payers FROM analytics.daily_users FINAL WHERE game_id = '{game}' AND env = '{env}' \
         AND d = toDate('1970-01-01') + {d} FORMAT TabSeparated"
    ));
    let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v[..] {
        [a, b, c] => (a, b, c),
        _ => (0, 0, 0),
    }
}

/// One game's client inventing environments (5,000 of them, more than the sketches a
/// worker shard holds, `aggregate.max_sketches` = 4,096) cannot stop another game's
/// players from being counted: game B's players, posted after the flood and after more of
/// it, are in B's DAU key register for register as Redis's own `PFADD` of them, and in
/// `daily_users`; the flooding game holds no more than its own budget of keys.
#[test]
fn a_game_inventing_environments_cannot_stop_another_games_players_being_counted() {
    use crate::fixture::{OTHER_GAME, OTHER_SECRET};
    let mut p = Pipeline::start(&[]);
    let ts = now_secs() as u64;
    post_game_players(&p, GAME, SECRET, "login", "flood", 0..5_000, |i| format!("inv-{i}"), ts);
    post_game_players(&p, OTHER_GAME, OTHER_SECRET, "login", "b", 0..300, |_| "prod".into(), ts);
    p.start_worker(FAST);
    wait_idle(&p);
    // More of the flood, then more of B's players: B keeps being counted.
    post_game_players(&p, GAME, SECRET, "session_start", "flood2", 0..2_000, |i| format!("inv2-{i}"), ts);
    post_game_players(&p, OTHER_GAME, OTHER_SECRET, "session_start", "b", 300..500, |_| "prod".into(), ts);
    wait_idle(&p);
    let want = oracle(&p, "oracle-b", (0..500).map(|i| format!("b-{i}")));
    let mut dau = String::new();
    Kind::Dau.key(OTHER_GAME, "prod", day_of(ts as i64 * 1000), &mut dau);
    p.wait_for(want, "game B's DAU key", |p| pfcount(p, &dau));
    assert!(registers(&p, &dau) == registers(&p, "oracle-b"), "game B's DAU key is not its players' registers");
    let mut online = String::new();
    Kind::Online.key(OTHER_GAME, "prod", minute_of(ts as i64 * 1000), &mut online);
    let want_online = oracle(&p, "oracle-b-online", (300..500).map(|i| format!("b-{i}")));
    assert_eq!(pfcount(&p, &online), want_online, "game B's online minute");
    let deadline = Instant::now() + Duration::from_secs(30);
    while daily_users_of(&p, OTHER_GAME, "prod", ts) != (want, 0, 0) {
        assert!(
            Instant::now() < deadline,
            "daily_users of game B: {:?}, expected ({want}, 0, 0)",
            daily_users_of(&p, OTHER_GAME, "prod", ts)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The flood was bounded: far fewer of its environments have a key than it invented.
    let flooded = match p.ingest.redis.client().cmd(&["KEYS", &format!("hll:dau:{GAME}:inv*")]) {
        croupier_protocol::resp::Frame::Array(a) => a.len(),
        other => panic!("{other:?}"),
    };
    eprintln!("game A: {flooded} DAU keys of the 7,000 environments it invented; game B: DAU {want}");
    assert!(flooded > 0 && flooded < 7_000, "{flooded} keys of the flooding game");
    assert!(p.stop_worker());
}

/// Entries delivered `worker.max_deliveries` (5) times without being acknowledged — as a
/// worker killed again and again leaves them, after ClickHouse stored their rows but
/// before their players were merged into Redis — are still inserted (the table collapses
/// the copies) and counted, not dead-lettered: the DAU key holds exactly the registers of
/// Redis's own `PFADD` of every player, and `daily_users` that count. Only an entry
/// delivered twice the limit (here one never stored) is dead-lettered unread.
#[test]
fn entries_over_the_delivery_limit_are_still_counted_not_dead_lettered() {
    use croupier_protocol::resp::Frame;
    let mut p = Pipeline::start(&[]);
    let ts = now_secs() as u64;
    post_players(&p, "login", "killed", 0..1_000, ts);
    // A worker stores the rows and acknowledges them without counting them: the rows are
    // in ClickHouse, no player is in Redis.
    p.start_worker(&[("CROUPIER_AGGREGATE__ENABLED", "false")]);
    wait_idle(&p);
    p.wait_for(1_000, "rows stored", |p| p.distinct_events());
    assert!(p.stop_worker());
    assert_eq!(pfcount(&p, &key(Kind::Dau, ts)), 0);
    // Rows not stored yet.
    post_players(&p, "login", "killed", 1_000..1_300, ts);
    let stored_or_not = p.ingest.redis.client().int(&["XLEN", "analytics:events"]);
    post_players(&p, "login", "given-up", 0..50, ts);
    // Every entry pending again for the worker's consumer, delivered 5 times; the last
    // one 10 times.
    let mut r = p.ingest.redis.client();
    r.cmd(&["XGROUP", "SETID", "analytics:events", "analytics-workers", "0"]);
    r.cmd(&["XREADGROUP", "GROUP", "analytics-workers", "it-0", "COUNT", "100", "STREAMS", "analytics:events", ">"]);
    let Frame::Array(entries) = r.cmd(&["XRANGE", "analytics:events", "-", "+"]) else { panic!("XRANGE") };
    let ids: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            Frame::Array(x) => match x.first() {
                Some(Frame::BulkString(id)) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(ids.len() as i64, stored_or_not + 1);
    for (i, id) in ids.iter().enumerate() {
        let times = if i + 1 == ids.len() { "10" } else { "5" };
        r.cmd(&["XCLAIM", "analytics:events", "analytics-workers", "it-0", "0", id, "RETRYCOUNT", times, "JUSTID"]);
    }
    assert_eq!(p.pending("analytics:events"), ids.len() as i64);
    p.start_worker(FAST);
    wait_idle(&p);
    p.wait_for(1_300, "rows stored once each", |p| p.distinct_events());
    assert_eq!(
        p.ingest.redis.client().int(&["XLEN", "analytics:events:dead"]),
        1,
        "only the entry delivered 10 times is dead-lettered"
    );
    let want = oracle(&p, "oracle", (0..1_300).map(|i| format!("killed-{i}")));
    let dau = key(Kind::Dau, ts);
    p.wait_for(want, "DAU", |p| pfcount(p, &dau));
    assert!(registers(&p, &dau) == registers(&p, "oracle"), "the DAU key is not the stored players' registers");
    assert_eq!(wait_daily_users_match_redis(&p, ts), (want, 0, 0));
    assert!(p.stop_worker());
}

/// A backlog after an outage: one batch holds heartbeats of 300 past minutes, each minute
/// a sketch of its own, on a worker shard that may hold 64 sketches. The shard merges what
/// it holds into Redis and drops the merged past minutes as it goes, rather than refusing
/// the players of entries it then acknowledges: every minute's key holds its player, and
/// the day's DAU key every player.
#[test]
fn a_backlog_spanning_more_minutes_than_the_shard_holds_is_counted_whole() {
    let mut p = Pipeline::start(&[]);
    let now = now_secs() as u64;
    let minute = |i: u64| (now / 60 - 2 - i) * 60 + 30;
    let items: Vec<String> = (0..300u64)
        .map(|i| {
            let ts = minute(i);
            format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","event":"heartbeat","user_id":"late-{i}"}}"#)
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    let r = post_signed(&mut p.ingest.client(), "/api/ingest/events", GAME, SECRET, body.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let mut settings = FAST.to_vec();
    settings.push(("CROUPIER_AGGREGATE__MAX_SKETCHES", "64"));
    p.start_worker(&settings);
    wait_idle(&p);
    p.wait_for(300, "rows", Pipeline::distinct_events);
    let missing: Vec<u64> = (0..300u64).filter(|&i| pfcount(&p, &key(Kind::Online, minute(i))) != 1).collect();
    assert!(missing.is_empty(), "{} of 300 minutes without their player: {missing:?}", missing.len());
    // Each UTC day's DAU key (the backlog may cross midnight) holds exactly its players.
    let mut days: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for i in 0..300u64 {
        days.entry(key(Kind::Dau, minute(i))).or_default().push(format!("late-{i}"));
    }
    for (k, players) in days {
        let want = oracle(&p, "oracle", players.into_iter());
        assert_eq!(pfcount(&p, &k), want, "{k}");
        assert!(registers(&p, &k) == registers(&p, "oracle"), "{k}");
    }
    assert!(p.stop_worker());
}

/// A game's client stamping events in the future — one heartbeat per minute over the next
/// ten hours, more minutes than the game's share of a worker shard's sketches
/// (`aggregate.max_sketches_per_game`, 512) — cannot pin that share with sketches of
/// minutes to come: the game's players of now, posted after, are counted. Their online
/// minute's key is register for register Redis's own `PFADD` of them, and the day's DAU
/// key holds them with the future players of the same day.
#[test]
fn events_stamped_in_many_future_minutes_do_not_stop_a_games_players_of_now_being_counted() {
    let mut p = Pipeline::start(&[]);
    let now = now_secs() as u64;
    let future = |i: u64| (now / 60 + 10 + i) * 60 + 30;
    let mut c = p.ingest.client();
    let all: Vec<u64> = (0..600).collect();
    for chunk in all.chunks(300) {
        let items: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let ts = future(i);
                format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"prod","event":"heartbeat","user_id":"future-{i}"}}"#)
            })
            .collect();
        let body = format!("[{}]", items.join(","));
        let r = post_signed(&mut c, "/api/ingest/events", GAME, SECRET, body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
    }
    p.start_worker(FAST);
    wait_idle(&p);
    let ts = now_secs() as u64;
    post_players(&p, "heartbeat", "now", 0..200, ts);
    wait_idle(&p);
    let online = key(Kind::Online, ts);
    let want = oracle(&p, "oracle-online", (0..200).map(|i| format!("now-{i}")));
    p.wait_for(want, "the online minute of the players of now", |p| pfcount(p, &online));
    assert!(registers(&p, &online) == registers(&p, "oracle-online"), "{online}");
    // The future players of the same day count in its DAU (a day ahead is counted).
    let dau = key(Kind::Dau, ts);
    let today: Vec<String> = (0..600u64)
        .filter(|&i| key(Kind::Dau, future(i)) == dau)
        .map(|i| format!("future-{i}"))
        .chain((0..200).map(|i| format!("now-{i}")))
        .collect();
    let want_dau = oracle(&p, "oracle-dau", today.into_iter());
    p.wait_for(want_dau, "the day's DAU", |p| pfcount(p, &dau));
    assert!(registers(&p, &dau) == registers(&p, "oracle-dau"), "{dau}");
    // Minutes more than a few minutes ahead have no online key.
    assert_eq!(pfcount(&p, &key(Kind::Online, future(0))), 0, "an online minute ten minutes ahead");
    assert!(p.stop_worker());
}

/// A server that sends its log lines with every query (`send_logs_level` in the worker
/// user's profile): the `Log` packets carry rows, which the client read as a protocol error
/// before, so no insert and no figure was ever written. They are read and set aside.
#[test]
fn server_logs_sent_with_every_query_do_not_stop_inserts_or_figures() {
    let mut p = Pipeline::start_on(ClickHouseServer::start_logging_at("trace"), &[], |_| {});
    p.clickhouse.set_profile("<send_logs_level>trace</send_logs_level>", ("send_logs_level", "trace"));
    p.start_worker(FAST);
    let ts = clear_of_day_turn(60, 0) as u64;
    post_players(&p, "login", "logger", 0..30, ts);
    let rows = [("ord-log-1".to_owned(), "logger-1".to_owned(), 1234, "success")];
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&rows, ts)).status, 202);
    p.wait_for(30, "events in ClickHouse", Pipeline::distinct_events);
    assert_eq!(wait_revenue(&p, ts, 1234), (1234, 0, 0));
    assert_eq!(wait_daily_users_match_redis(&p, ts).0, 30);
}

/// A revenue statement that keeps failing (here `daily_revenue` renamed away) holds back
/// no other figure: the minute and the day are written once and unmarked, only the
/// revenue day stays marked, and it is written once the table is back. (The worker before
/// put the minutes and days back with the revenue, re-inserted them at every write and
/// never unmarked them: a set that only grew.)
#[test]
fn a_revenue_statement_that_keeps_failing_holds_back_no_other_figure() {
    let mut p = Pipeline::start(&[]);
    p.clickhouse.query("RENAME TABLE analytics.daily_revenue TO analytics.daily_revenue_away");
    p.start_worker(FAST);
    let ts = clear_of_day_turn(60, 0) as u64;
    post_players(&p, "login", "held", 0..40, ts);
    let rows = [("ord-held-1".to_owned(), "held-1".to_owned(), 500, "success")];
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&rows, ts)).status, 202);
    p.wait_for(40, "daily_users' dau", |p| daily_users(p, ts).0);
    assert_eq!(wait_daily_users_match_redis(&p, ts), (40, 0, 1));
    let day = day_of(ts as i64 * 1000);
    let revenue_mark = vec![format!("r:{day}:2:{GAME}prod")];
    let deadline = Instant::now() + Duration::from_secs(30);
    while unwritten(&p) != revenue_mark {
        assert!(Instant::now() < deadline, "marked unwritten: {:?}, expected {revenue_mark:?}", unwritten(&p));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Written once, not again at every write (every 200 ms): merges may only lower the
    // count of rows as inserted.
    let inserted = |p: &Pipeline| {
        p.scalar("SELECT count() FROM analytics.minute_online") + p.scalar("SELECT count() FROM analytics.daily_users")
    };
    let before = inserted(&p);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(inserted(&p) <= before, "minute and day rows inserted again: {} after {before}", inserted(&p));
    assert_eq!(unwritten(&p), revenue_mark);
    p.clickhouse.query("RENAME TABLE analytics.daily_revenue_away TO analytics.daily_revenue");
    assert_eq!(wait_revenue(&p, ts, 500), (500, 0, 0));
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
}

/// The day an order leaves (a retry re-stamped after midnight) is marked unwritten in
/// Redis before the order's new row is inserted: once that row is in and merged no
/// look-up finds the earlier day, so a worker killed between the insert and its flush
/// would have left that day counting the order. Here the insert stalls (the table's
/// `amount_cents` drifted to `Int64`): the mark is there while it waits; once the table is mended, each
/// day holds the order once.
#[test]
fn the_day_an_order_leaves_is_marked_before_the_insert_that_moves_it() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(FAST);
    let now = now_secs() as u64;
    let (before, after) = (now - now % 86_400 - 30, now);
    let (yesterday, today) = (day_of(before as i64 * 1000), day_of(after as i64 * 1000));
    let order = [("ord-moved".to_owned(), "mover".to_owned(), 700, "success")];
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&order, before)).status, 202);
    wait_revenue_rows(&p, &[("prod", yesterday, (700, 0, 0))]);
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
    p.clickhouse.query("ALTER TABLE analytics.payments MODIFY COLUMN amount_cents Int64");
    assert_eq!(p.ingest.post("/api/ingest/payments", &payments(&order, after)).status, 202);
    let mark = format!("r:{yesterday}:2:{GAME}prod");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !unwritten(&p).contains(&mark) {
        assert!(Instant::now() < deadline, "{mark} not marked while the insert waits: {:?}", unwritten(&p));
        std::thread::sleep(Duration::from_millis(100));
    }
    // And it stays marked while the insert waits: it is not computed (and unmarked) from
    // the rows before the insert, through several writes of the tables (every 200 ms).
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(unwritten(&p).contains(&mark), "{mark} unmarked before the insert: {:?}", unwritten(&p));
    }
    assert_eq!(p.scalar("SELECT count() FROM analytics.payments"), 1, "the insert waits");
    p.clickhouse.query("ALTER TABLE analytics.payments MODIFY COLUMN amount_cents UInt64");
    wait_revenue_rows(&p, &[("prod", today, (700, 0, 0)), ("prod", yesterday, (0, 0, 0))]);
    p.wait_for(0, "rows marked unwritten", |p| unwritten(p).len() as u64);
}

/// Black-box finding: the sketches a worker reads back for its figures (the current and
/// the previous minute online, yesterday's new players) were merged into Redis again at
/// every `aggregate.resend_ms` even when nobody was in them, making keys of nobody (a
/// `PFCOUNT` of 0, kept 48 hours or 30 days) for every scope. Only logins here: after
/// several resends every `hll:*` key counts someone.
#[test]
fn resent_sketches_make_no_key_of_nobody() {
    let mut p = Pipeline::start(&[]);
    p.start_worker(&fast_resending());
    let ts = clear_of_day_turn(60, 0) as u64;
    post_players(&p, "login", "only", 0..5, ts);
    p.wait_for(5, "dau", |p| pfcount(p, &key(Kind::Dau, ts)));
    std::thread::sleep(Duration::from_secs(3));
    let keys = match p.ingest.redis.client().cmd(&["KEYS", "hll:*"]) {
        croupier_protocol::resp::Frame::Array(keys) => keys,
        other => panic!("{other:?}"),
    };
    let mut empty = Vec::new();
    for k in keys {
        let croupier_protocol::resp::Frame::BulkString(k) = k else { continue };
        let k = String::from_utf8_lossy(&k).into_owned();
        if pfcount(&p, &k) == 0 {
            empty.push(k);
        }
    }
    assert!(empty.is_empty(), "keys of nobody: {empty:?}");
    assert_eq!(pfcount(&p, &key(Kind::Dau, ts)), 5);
}

/// `n` events named `name` of `env` for users `<env>-<i>` at `ts`, in one request.
fn post_env(p: &Pipeline, env: &str, name: &str, n: usize, ts: u64) {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"ts":{ts},"game_id":"{GAME}","env":"{env}","event":"{name}","user_id":"{env}-{i}"}}"#))
        .collect();
    let r = post_signed(
        &mut p.ingest.client(),
        "/api/ingest/events",
        GAME,
        SECRET,
        format!("[{}]", items.join(",")).as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

/// The members of a sorted set, sorted.
fn admitted(p: &Pipeline, key: &str) -> Vec<String> {
    use croupier_protocol::resp::Frame;
    let Frame::Array(members) = p.ingest.redis.client().cmd(&["ZRANGE", key, "0", "-1"]) else {
        panic!("ZRANGE {key}")
    };
    let mut out: Vec<String> = members
        .into_iter()
        .filter_map(|m| match m {
            Frame::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// `hll:*` keys of `env` in Redis.
fn env_keys(p: &Pipeline, env: &str) -> usize {
    use croupier_protocol::resp::Frame;
    let pattern = format!("hll:*:{GAME}:{env}:*");
    match p.ingest.redis.client().cmd(&["KEYS", &pattern]) {
        Frame::Array(keys) => keys.len(),
        other => panic!("KEYS {pattern}: {other:?}"),
    }
}

/// A client inventing `env` values makes no more than `aggregate.max_envs_per_game`
/// environments' real-time keys in Redis (each would live 30 days): the environments
/// admitted first keep being counted, across a worker's restart, and a new one past the
/// bound is stored in ClickHouse but gets no `hll:*` key (its players counted in
/// `croupier_realtime_adds_refused_total`). Before, every new `env` made keys.
#[test]
fn environments_past_the_games_bound_get_no_real_time_keys() {
    let mut p = Pipeline::start(&[]);
    let mut settings = FAST.to_vec();
    settings.push(("CROUPIER_AGGREGATE__MAX_ENVS_PER_GAME", "2"));
    p.start_worker(&settings);
    let ts = clear_of_day_turn(60, 0) as u64;
    let day_key = |env: &str| {
        let mut k = String::new();
        Kind::Dau.key(GAME, env, day_of(ts as i64 * 1000), &mut k);
        k
    };
    post_env(&p, "prod", "session_start", 10, ts);
    p.wait_for(10, "prod's players", |p| pfcount(p, &day_key("prod")));
    post_env(&p, "staging", "session_start", 5, ts);
    p.wait_for(5, "staging's players", |p| pfcount(p, &day_key("staging")));
    // A third environment, then more of the first two's players: only those count.
    for (i, env) in ["spam-1", "spam-2", "spam-3"].iter().enumerate() {
        post_env(&p, env, "login", 3 + i, ts);
    }
    post_env(&p, "prod", "login", 20, ts);
    wait_idle(&p);
    p.wait_for(20, "prod's players", |p| pfcount(p, &day_key("prod")));
    assert_eq!(
        p.scalar("SELECT count() FROM analytics.events FINAL WHERE env LIKE 'spam-%'"),
        12,
        "stored all the same"
    );
    for env in ["spam-1", "spam-2", "spam-3"] {
        assert_eq!(env_keys(&p, env), 0, "{env} has real-time keys");
    }
    let envs_key = format!("croupier:aggregate:envs:{GAME}");
    assert_eq!(admitted(&p, &envs_key), ["prod", "staging"]);
    // A restarted worker keeps the admitted environments and the bound.
    assert!(p.stop_worker());
    p.start_worker(&settings);
    post_env(&p, "staging", "login", 8, ts);
    post_env(&p, "spam-4", "login", 4, ts);
    wait_idle(&p);
    p.wait_for(8, "staging's players", |p| pfcount(p, &day_key("staging")));
    assert_eq!(env_keys(&p, "spam-4"), 0);
    assert!(p.stop_worker());
}

/// A game's environments' set that holds another type (another tool wrote the key) cannot
/// be read: every environment is admitted, and the shard goes on merging and
/// acknowledging. Before, every flush failed and the shard acknowledged nothing more.
#[test]
fn an_unreadable_environments_set_admits_rather_than_stops_the_shard() {
    let mut p = Pipeline::start(&[]);
    let envs_key = format!("croupier:aggregate:envs:{GAME}");
    p.ingest.redis.client().cmd(&["SET", &envs_key, "not a sorted set"]);
    p.start_worker(FAST);
    let ts = clear_of_day_turn(60, 0) as u64;
    post_env(&p, "prod", "session_start", 12, ts);
    let mut k = String::new();
    Kind::Dau.key(GAME, "prod", day_of(ts as i64 * 1000), &mut k);
    p.wait_for(12, "prod's players", |p| pfcount(p, &k));
    wait_idle(&p);
    assert!(p.stop_worker());
}
