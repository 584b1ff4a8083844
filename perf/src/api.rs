//! `croupier-perf api`: the analytics API's latency per route on a generated game history
//! of N events (10 M and 50 M by default), and the rows each one-day query reads against
//! the rows of that day.
//!
//! The history is written by ClickHouse itself (`INSERT … SELECT … FROM system.numbers`),
//! not through the pipeline, so that 50 M events over 30 days take minutes: N/500 players,
//! each active on every day, six event names (a level on the level events), one payment per
//! 500 events (success, refunded, failed), and the aggregate tables (`daily_users`,
//! `daily_revenue`, `minute_online` of the last day) and today's sketches in Redis as the
//! worker would have left them. Then `croupier run` serves the API and every route is asked
//! R times in a row on one keep-alive connection (after one request to warm the caches),
//! or for at most 30 s per route; p50 and p99 are over those answers, and the rows read are
//! the `read_rows` the API wrote to `analytics.audit_log` for them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::http::HttpClient;
use croupier_it::redis::RedisServer;
use croupier_protocol::resp;

const GAME: &str = "g1";
const SECRET: &str = "perf-secret";
const DAY: i64 = 86_400;

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn date(day: i64) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Writes the history: `rows` events over the 30 days before now, payments, aggregates.
fn generate(ch: &ClickHouseServer, rows: u64) -> u64 {
    let players = (rows / 500).max(1);
    let now = now_secs();
    let start = now - 30 * DAY;
    let mut done = 0u64;
    while done < rows {
        let n = (rows - done).min(10_000_000);
        ch.query(&format!(
            "INSERT INTO analytics.events (event_time, game_id, env, user_id, session_id, event, channel, platform, \
               country, app_version, event_id, props_json)
             SELECT toDateTime({start} + intDiv(n * {span}, {rows})), '{GAME}', 'prod', concat('u', toString(n % {players})),
               concat('s', toString(n % {players}), '-', toString(intDiv(n * 30, {rows}))),
               ['login', 'session_start', 'level_start', 'level_clear', 'heartbeat', 'register'][n % 6 + 1],
               ['appstore', 'google', 'web'][n % 3 + 1], ['ios', 'android', 'web'][intDiv(n, 3) % 3 + 1], 'US', '1.0',
               generateUUIDv4(), if(n % 6 IN (2, 3), concat('{{\"level\":\"', toString(intDiv(n, 6) % 20), '\"}}'), '{{}}')
             FROM (SELECT number + {done} AS n FROM system.numbers LIMIT {n})",
            span = 30 * DAY,
        ));
        done += n;
        eprintln!("api: {done} of {rows} events written");
    }
    // `user_days` as the worker leaves it for the events it inserts (written here
    // straight into `events`, no worker folds them).
    ch.query(&croupier_dataplane::clickhouse::schema::user_days_copy("1 = 1", ""));
    let payments = rows / 500;
    ch.query(&format!(
        "INSERT INTO analytics.payments (time, game_id, env, user_id, order_id, amount_cents, currency, status, channel, \
           platform, country, region, city, product_id, reason)
         SELECT toDateTime({start} + intDiv(n * {span}, {payments})), '{GAME}', 'prod', concat('u', toString(n * 7919 % {players})),
           concat('o', toString(n)), 99 + (n % 50) * 100, 'USD', ['success', 'success', 'success', 'success', 'success',
           'success', 'success', 'success', 'refunded', 'failed'][n % 10 + 1], ['appstore', 'google', 'web'][n % 3 + 1],
           ['ios', 'android', 'web'][intDiv(n, 3) % 3 + 1], 'US', '', '', ['gems', 'pass', 'skin'][n % 3 + 1], ''
         FROM (SELECT number AS n FROM system.numbers LIMIT {payments})",
        span = 30 * DAY,
    ));
    // The aggregate tables as the worker leaves them (uniq stands for the sketches).
    ch.query(
        "INSERT INTO analytics.daily_users (d, game_id, env, dau, new_users, version, payers)
         SELECT toDate(event_time, 'UTC') AS d, game_id, env,
           uniqIf(user_id, event IN ('login', 'session_start')), uniqIf(user_id, event = 'register'), 1, 0
         FROM analytics.events GROUP BY d, game_id, env",
    );
    ch.query(
        "INSERT INTO analytics.daily_revenue (d, game_id, env, revenue_cents, refunds_cents, failed, version)
         SELECT toDate(time, 'UTC') AS d, game_id, env, sumIf(amount_cents, status = 'success'),
           sumIf(amount_cents, status = 'refunded'), countIf(status = 'failed'), 1
         FROM analytics.payments GROUP BY d, game_id, env",
    );
    ch.query(&format!(
        "INSERT INTO analytics.minute_online (m, game_id, env, online, version)
         SELECT toStartOfMinute(event_time) AS m, game_id, env, toUInt32(uniq(user_id)), 1
         FROM analytics.events WHERE event_time >= toDateTime({}) GROUP BY m, game_id, env",
        now - DAY
    ));
    players
}

/// Today's DAU and new-user sketches and the last hour's online sketches, as PFADDs of the
/// users ClickHouse holds for them.
fn sketches(ch: &ClickHouseServer, redis: &RedisServer) {
    let now = now_secs();
    let today = now.div_euclid(DAY);
    let users = |sql: &str| -> Vec<String> { ch.query(sql).lines().map(str::to_owned).collect() };
    let mut keys: Vec<(String, Vec<String>)> = vec![
        (
            format!("hll:dau:{GAME}:prod:{}", date(today)),
            users(&format!(
                "SELECT DISTINCT user_id FROM analytics.events WHERE event_time >= toDateTime({}) \
                 AND event IN ('login', 'session_start')",
                today * DAY
            )),
        ),
        (
            format!("hll:new:{GAME}:prod:{}", date(today)),
            users(&format!(
                "SELECT DISTINCT user_id FROM analytics.events WHERE event_time >= toDateTime({}) AND event = 'register'",
                today * DAY
            )),
        ),
    ];
    for i in 0..60 {
        let m = (now / 60 - i) * 60;
        let (y, mo, d) = civil(m.div_euclid(DAY));
        let (h, mi) = (m.rem_euclid(DAY) / 3600, m.rem_euclid(3600) / 60);
        keys.push((
            format!("hll:online:{GAME}:prod:{y:04}{mo:02}{d:02}{h:02}{mi:02}"),
            users(&format!(
                "SELECT DISTINCT user_id FROM analytics.events WHERE event_time >= toDateTime({m}) \
                 AND event_time < toDateTime({})",
                m + 60
            )),
        ));
    }
    let mut client = redis.client();
    for (key, members) in &keys {
        for chunk in members.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"PFADD", key.as_bytes()];
            args.extend(chunk.iter().map(|u| u.as_bytes()));
            let mut out = Vec::new();
            resp::command(&mut out, &args);
            client.send(&out).expect("PFADD");
            client.replies(1).expect("PFADD reply");
        }
    }
}

fn token() -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let claims = serde_json::json!({"sub": "perf", "roles": ["admin"], "exp": now_secs() + 6 * 3600});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"))
        .expect("token")
}

/// The routes asked, as (name, path and query). `day` is yesterday.
fn routes(day: i64) -> Vec<(String, String)> {
    let g = format!("game_id={GAME}&env=prod");
    let one = format!("{g}&start={d}&end={d}", d = date(day));
    let week = format!("{g}&start={}&end={}", date(day - 6), date(day));
    let mut r: Vec<(&str, String)> = vec![
        ("overview (7 days)", format!("overview?{week}")),
        ("overview (1 day)", format!("overview?{one}")),
        ("realtime", format!("realtime?{g}")),
        ("realtime/series (1 day)", format!("realtime/series?{one}")),
        ("retention (7 cohorts)", format!("retention?{week}")),
        ("payments/summary (1 day)", format!("payments/summary?{one}")),
        ("payments/transactions (1 day)", format!("payments/transactions?{one}&size=20&page=1")),
        ("payments/product_trend (1 day)", format!("payments/product_trend?{one}&product_id=gems,pass")),
        ("behavior/events (1 day)", format!("behavior/events?{one}")),
        ("behavior/funnel (1 day)", format!("behavior/funnel?{one}&steps=login,level_start,level_clear")),
        ("behavior/paths (1 day)", format!("behavior/paths?{one}&steps=3&limit=10")),
        ("behavior/adoption (1 day)", format!("behavior/adoption?{one}&features=level_start,level_clear")),
        (
            "behavior/adoption_breakdown (1 day)",
            format!("behavior/adoption_breakdown?{one}&features=level_start&by=platform"),
        ),
        ("levels (1 day)", format!("levels?{one}")),
        ("levels/episodes (1 day)", format!("levels/episodes?{one}")),
        ("ltv (7 cohorts)", format!("ltv?{week}")),
        ("attribution (7 days)", format!("attribution?{week}")),
        ("segments (1 day)", format!("segments?{one}")),
        ("filters", format!("filters?{g}")),
    ];
    r.drain(..).map(|(n, p)| (n.to_owned(), format!("/api/analytics/{p}"))).collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One size: servers, history, `croupier run`, every route.
fn one_size(rows: u64, runs: usize, only: &[String], out: &mut String) {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start_logging_queries();
    let control_port = croupier_it::free_port();
    let env = |c: &mut Command| {
        c.env("CROUPIER_REDIS__ADDR", redis.addr())
            .env("CROUPIER_CLICKHOUSE__ADDR", ch.addr())
            .env("CROUPIER_SERVER__LISTEN", format!("127.0.0.1:{}", croupier_it::free_port()))
            .env("CROUPIER_CONTROL__LISTEN", format!("127.0.0.1:{control_port}"))
            .env("CROUPIER_OTLP__LISTEN", "")
            .env("CROUPIER_OTLP__GRPC_LISTEN", "")
            .env("CROUPIER_SERVER__PIN", "false")
            .env("CROUPIER_SERVER__SHARDS", "1")
            .env("CROUPIER_WORKER__SHARDS", "1")
            .env("CROUPIER_WORKER__CONSUMER", "perf")
            .env("CROUPIER_API__JWT_SECRET", SECRET)
            .env("CROUPIER_API__QUERY_TIMEOUT_MS", "600000")
            .env(format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET);
    };
    let bin = crate::e2e::croupier_binary();
    let mut migrate = Command::new(&bin);
    migrate.arg("migrate").stdout(Stdio::null());
    env(&mut migrate);
    assert!(migrate.status().expect("croupier migrate").success(), "croupier migrate failed");
    let t = Instant::now();
    let players = generate(&ch, rows);
    sketches(&ch, &redis);
    let gen_s = t.elapsed().as_secs_f64();
    ch.query("OPTIMIZE TABLE analytics.daily_users FINAL");
    let day = now_secs().div_euclid(DAY) - 1;
    let day_rows: u64 = ch
        .query(&format!(
            "SELECT count() FROM analytics.events WHERE event_time >= toDateTime({}) AND event_time < toDateTime({})",
            day * DAY,
            day * DAY + DAY
        ))
        .trim()
        .parse()
        .unwrap_or(0);
    let parts = ch.query("SELECT count() FROM system.parts WHERE active AND table = 'events'");

    let mut run = Command::new(&bin);
    run.arg("run").stdout(Stdio::null()).stderr(Stdio::null());
    env(&mut run);
    let mut child = run.spawn().expect("croupier run");
    let addr: SocketAddr = format!("127.0.0.1:{control_port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "croupier did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let auth = vec![("Authorization".to_owned(), format!("Bearer {}", token()))];
    let _ = writeln!(
        out,
        "\n### {rows} events ({players} players over 30 days, {} payments; generated in {gen_s:.0} s; \
         {} active parts in `events`; yesterday holds {day_rows} events)\n",
        rows / 500,
        parts.trim()
    );
    let _ =
        writeln!(out, "| route | n | p50 ms | p99 ms | max ms | rows read per answer (median) | largest query's rows read | ÷ yesterday's rows |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut client = HttpClient::connect(addr);
    let mut breakdown = String::new();
    for (name, path) in routes(day) {
        if !only.is_empty() && !only.iter().any(|o| name.starts_with(o.as_str())) {
            continue;
        }
        // Each route's queries in system.query_log by their second: routes a second apart.
        std::thread::sleep(Duration::from_millis(1100));
        let t0 = now_secs();
        let warm = client.request("GET", &path, &auth, b"");
        if warm.status != 200 {
            let _ =
                writeln!(out, "| {name} | — | status {} | {} | | | | |", warm.status, warm.text().replace('|', "/"));
            continue;
        }
        let mut ms = Vec::new();
        let started = Instant::now();
        while ms.len() < runs && (ms.len() < 3 || started.elapsed() < Duration::from_secs(30)) {
            let t = Instant::now();
            let r = client.request("GET", &path, &auth, b"");
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
        ms.sort_by(f64::total_cmp);
        std::thread::sleep(Duration::from_millis(1100));
        let t1 = now_secs();
        ch.query("SYSTEM FLUSH LOGS");
        let largest: f64 = ch
            .query(&format!(
                "SELECT max(read_rows) FROM system.query_log WHERE type = 2 AND interface = 1 \
                 AND query LIKE 'SELECT %' AND query LIKE '%analytics.%' AND event_time >= toDateTime({t0}) \
                 AND event_time < toDateTime({t1})"
            ))
            .trim()
            .parse()
            .unwrap_or(0.0);
        // The audit log is written in batches: wait for this route's rows.
        let route = path.split('?').next().unwrap_or("").to_owned();
        let start = path.split(['?', '&']).find_map(|p| p.strip_prefix("start=")).unwrap_or("").to_owned();
        let mut read = String::new();
        for _ in 0..50 {
            read = ch.query(&format!(
                "SELECT count(), median(read_rows) FROM analytics.audit_log WHERE route = '{route}' \
                 AND params LIKE '%{start}%' AND status = 200"
            ));
            if read.split('\t').next().and_then(|c| c.trim().parse::<usize>().ok()).unwrap_or(0) > ms.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let read_rows: f64 = read.split('\t').nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
        let ratio = if name.contains("(1 day)") && day_rows > 0 {
            format!("{:.2}", largest / day_rows as f64)
        } else {
            "—".into()
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {read_rows:.0} | {largest:.0} | {ratio} |",
            ms.len(),
            pct(&ms, 0.5),
            pct(&ms, 0.99),
            ms.last().copied().unwrap_or(0.0)
        );
        eprintln!("api: {name}: p50 {:.1} ms over {}", pct(&ms, 0.5), ms.len());
        if name.starts_with("overview") || name == "realtime" {
            // Each query of the route (the warm-up's included: figures answered from
            // memory afterwards show as one run), by its first words.
            let q = ch.query(&format!(
                "SELECT substring(query, 1, 90) AS q, count(), \
                 median(query_duration_ms), max(query_duration_ms), median(read_rows) FROM system.query_log \
                 WHERE type = 2 AND interface = 1 AND query LIKE 'SELECT %' AND query LIKE '%analytics.%' \
                 AND event_time >= toDateTime({t0}) AND event_time < toDateTime({t1}) GROUP BY q ORDER BY q"
            ));
            for line in q.lines().filter(|l| !l.is_empty()) {
                let f: Vec<&str> = line.split('\t').collect();
                if let [q, n, p50, max, read] = f[..] {
                    let q = q.replace('|', "/").replace('`', "'");
                    let _ = writeln!(breakdown, "| {name} | `{q}` | {n} | {p50} | {max} | {read} |");
                }
            }
        }
    }
    if !breakdown.is_empty() {
        let _ = writeln!(
            out,
            "\nQueries of the overview and realtime answers above (system.query_log: how many, median and \
             largest duration, median rows read):\n\n| route | query | n | p50 ms | max ms | rows read |\n|---|---|---:|---:|---:|---:|\n{breakdown}"
        );
    }
    croupier_it::signal(&child, "TERM");
    let _ = child.wait();
}

/// Runs the API benchmark at each size; returns the report section.
pub fn run(sizes: &[u64], runs: usize, only: &[String]) -> String {
    let mut out = String::from(
        "## Analytics API (`croupier-perf api`)\n\n\
         Latency per route on one keep-alive connection, requests in series, against a generated history \
         (perf/src/api.rs says how it is made). p50/p99 over n answers (p99 of fewer than 100 answers is their \
         largest). Rows read per answer: the median `read_rows` of the route's \
         answers in `analytics.audit_log` (every query of the answer summed); the largest query's: the most \
         rows one query of the route read (`system.query_log`), and for the one-day routes its ratio to \
         yesterday's events (the issue's target for a one-day query: ≤ 2).\n",
    );
    for &rows in sizes {
        one_size(rows, runs, only, &mut out);
    }
    out
}
