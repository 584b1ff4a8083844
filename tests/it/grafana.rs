//! The Grafana boards of `deploy/grafana/dashboards/` run for real:
//!
//! - every SQL panel (and variable) of the business board against a real
//!   `clickhouse-server` holding known rows (superseded aggregate readings, redelivered
//!   duplicates, other games and environments, rows outside the range), each figure
//!   checked; the same queries on a current engine (chdb-core, ClickHouse 26.x) give the
//!   same rows;
//! - every PromQL panel (and variable) of the technical board against a real Prometheus
//!   scraping a running `croupier run` that took traffic (and `prometheus-node-exporter`
//!   for the host panels): each answers, and with a non-empty result.
//!
//! Grafana's macros are expanded here the way the plugins do it (grafana-clickhouse-datasource
//! `pkg/macros/macros.go`; Grafana's template service for variables):
//! `$__timeFilter(c)` → `c >= toDateTime(<from>) AND c <= toDateTime(<to>)` (Unix seconds),
//! `$__dateFilter(c)` → `c >= toDate('<from day>') AND c <= toDate('<to day>')` (UTC),
//! `$__fromTime` / `$__toTime` → `toDateTime(<from>)` / `toDateTime(<to>)`; a single-valued
//! variable (`${game}`, `${env}`) is its value as is (the board quotes it). On the
//! Prometheus side, `$__rate_interval` → `1m` (Grafana gives at least four scrape
//! intervals) and `$job` / `$instance` → the scraped job and instance, regex-escaped as
//! Grafana does for a single value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_dataplane::clickhouse::connection::Connection;
use croupier_dataplane::clickhouse::schema;
use croupier_dataplane::runtime::{block_on, ActiveDriver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::http::HttpClient;
use croupier_it::monitoring::{Croupier, Prometheus};
use croupier_it::redis::RedisServer;
use croupier_it::{free_port, require_binary};
use serde_json::Value;

use crate::analytics::ch_options;
use crate::fixture::{events, post_signed, GAME, SECRET};
use crate::pipeline::{croupier, CROUPIER};

const DAY: i64 = 86_400;
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn board(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/dashboards/{name}")).expect("read board");
    serde_json::from_str(&text).expect("board is JSON")
}

/// (title, query) of every panel target and every variable of `board` whose datasource
/// is of `kind`.
fn queries(board: &Value, kind: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in board["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = if t["datasource"].is_object() { &t["datasource"] } else { &p["datasource"] };
            if ds["type"] == kind {
                let q = t["rawSql"].as_str().or(t["expr"].as_str()).expect("a query");
                out.push((p["title"].as_str().expect("title").to_owned(), q.to_owned()));
            }
        }
    }
    for v in board["templating"]["list"].as_array().into_iter().flatten() {
        if v["datasource"]["type"] == kind {
            let q = v["definition"].as_str().expect("definition");
            out.push((format!("variable {}", v["name"].as_str().expect("name")), q.to_owned()));
        }
    }
    out
}

/// `YYYY-MM-DD` of a Unix time (UTC).
fn day_text(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).expect("time");
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `YYYY-MM-DD hh:mm:ss` of a Unix time (UTC), as ClickHouse writes a DateTime.
fn time_text(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).expect("time");
    format!("{} {:02}:{:02}:{:02}", day_text(secs), t.hour(), t.minute(), t.second())
}

/// Replaces every `name(arg)` in `sql` by `f(arg)`.
fn expand_call(sql: &str, name: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find(name) {
        out.push_str(&rest[..i]);
        let after = &rest[i + name.len()..];
        let end = after.find(')').expect("macro argument closed");
        out.push_str(&f(after[..end].trim()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The SQL grafana-clickhouse-datasource sends for `sql` over `from..=to` (Unix seconds)
/// with the variables `vars` (see the module's documentation).
fn expand_sql(sql: &str, from: i64, to: i64, vars: &[(&str, &str)]) -> String {
    let mut s =
        expand_call(sql, "$__timeFilter(", |c| format!("{c} >= toDateTime({from}) AND {c} <= toDateTime({to})"));
    s = expand_call(&s, "$__dateFilter(", |c| {
        format!("{c} >= toDate('{}') AND {c} <= toDate('{}')", day_text(from), day_text(to))
    });
    s = s.replace("$__fromTime", &format!("toDateTime({from})")).replace("$__toTime", &format!("toDateTime({to})"));
    for (k, v) in vars {
        s = s.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    assert!(!s.contains("$__") && !s.contains("${"), "a macro or variable left unexpanded: {s}");
    s
}

/// Rows of TabSeparated text.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines().filter(|l| !l.is_empty()).map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

/// Whether two result sets are the same, numbers compared to 1e-9 (engines print
/// floating-point values with different digits).
fn same(a: &[Vec<String>], b: &[Vec<String>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| match (p.parse::<f64>(), q.parse::<f64>()) {
                    (Ok(p), Ok(q)) => (p - q).abs() < 1e-9,
                    _ => p == q,
                })
        })
}

const EVENT_COLUMNS: &str =
    "event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, props_json";
const PAYMENT_COLUMNS: &str =
    "time, game_id, env, user_id, order_id, amount_cents, currency, status, channel, platform, \
                               country, region, city, product_id, reason";
const TABLES: [(&str, &str); 5] = [
    ("events", EVENT_COLUMNS),
    ("payments", PAYMENT_COLUMNS),
    ("minute_online", "m, game_id, env, online, version"),
    ("daily_users", "d, game_id, env, dau, new_users, version, payers"),
    ("daily_revenue", "d, game_id, env, revenue_cents, refunds_cents, failed, version"),
];

/// The known rows: today is day `t` (day number), `now` the time.
struct Rows {
    tables: BTreeMap<&'static str, Vec<String>>,
}

impl Rows {
    fn new(t: i64, now: i64) -> Rows {
        let mut tables: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let day = |n: i64| day_text((t + n) * DAY);
        // Aggregate readings: several per day (the largest version is the figure), other
        // games and environments, a day outside the range.
        let users = [
            (-2, "g1", "prod", 50, 5, 1, 2),
            (-2, "g1", "prod", 60, 6, 2, 3),
            (-1, "g1", "prod", 40, 4, 1, 4),
            (0, "g1", "prod", 8, 1, 1, 1),
            (0, "g1", "prod", 10, 2, 3, 2),
            (0, "g1", "prod", 9, 9, 2, 9),
            (-20, "g1", "prod", 99, 9, 1, 9),
            (-1, "g2", "prod", 777, 7, 1, 7),
            (-1, "g1", "dev", 555, 5, 1, 5),
        ];
        tables.insert(
            "daily_users",
            users
                .iter()
                .map(|(d, g, e, dau, new, v, p)| format!("{}\t{g}\t{e}\t{dau}\t{new}\t{v}\t{p}", day(*d)))
                .collect(),
        );
        let revenue = [
            (-2, "g1", "prod", 1000, 0, 0, 1),
            (-2, "g1", "prod", 3000, 100, 1, 2),
            (-1, "g1", "prod", 2000, 0, 0, 1),
            (0, "g1", "prod", 500, 50, 0, 1),
            (-1, "g2", "prod", 90_000, 0, 0, 1),
        ];
        tables.insert(
            "daily_revenue",
            revenue.iter().map(|(d, g, e, r, f, n, v)| format!("{}\t{g}\t{e}\t{r}\t{f}\t{n}\t{v}", day(*d))).collect(),
        );
        let minute = now / 60 * 60;
        let online = [
            (minute - 120, "g1", "prod", 5, 1),
            (minute - 120, "g1", "prod", 7, 2),
            (minute - 60, "g1", "prod", 3, 1),
            ((t - 10) * DAY + 600, "g1", "prod", 50, 1),
            (minute - 60, "g2", "prod", 40, 1),
        ];
        tables.insert(
            "minute_online",
            online.iter().map(|(m, g, e, o, v)| format!("{}\t{g}\t{e}\t{o}\t{v}", time_text(*m))).collect(),
        );
        // Events: two registration cohorts (day -8: u1..u4, day -2: u5, u6), activity,
        // levels; u9 registered before the range; g2 and dev rows alike.
        let mut ev = Vec::new();
        let mut id = 0u32;
        let mut add = |d: i64, game: &str, env: &str, user: &str, event: &str, props: &str| {
            id += 1;
            ev.push(format!(
                "{}\t{game}\t{env}\t{user}\ts-{user}\t{event}\tweb\tios\tUS\t1.0\t00000000-0000-0000-0000-{id:012}\t{props}",
                time_text((t + d) * DAY + 3600)
            ));
        };
        for u in ["u1", "u2", "u3", "u4"] {
            add(-8, "g1", "prod", u, "register", "{}");
        }
        add(-7, "g1", "prod", "u1", "login", "{}");
        add(-7, "g1", "prod", "u2", "login", "{}");
        add(-6, "g1", "prod", "u4", "login", "{}");
        add(-1, "g1", "prod", "u1", "login", "{}");
        add(-2, "g1", "prod", "u5", "user.register", "{}");
        add(-2, "g1", "prod", "u6", "register", "{}");
        add(-1, "g1", "prod", "u5", "login", "{}");
        add(-30, "g1", "prod", "u9", "register", "{}");
        add(-8, "g2", "prod", "x1", "register", "{}");
        add(-7, "g2", "prod", "x1", "login", "{}");
        add(-8, "g1", "dev", "y1", "register", "{}");
        add(-1, "g1", "prod", "u1", "level_start", r#"{"level":1}"#);
        add(-1, "g1", "prod", "u1", "level_clear", r#"{"level":1,"duration_sec":30}"#);
        add(-1, "g1", "prod", "u2", "level_start", r#"{"level":1}"#);
        add(-1, "g1", "prod", "u2", "level_fail", r#"{"level":1}"#);
        add(-1, "g1", "prod", "u2", "level_start", r#"{"level":2}"#);
        add(-1, "g1", "prod", "u1", "level_start", r#"{"level":"2"}"#);
        add(-1, "g1", "prod", "u1", "level_complete", r#"{"level":"2"}"#);
        add(-1, "g1", "prod", "u3", "level_start", r#"{"level":10}"#);
        add(-1, "g2", "prod", "x1", "level_start", r#"{"level":1}"#);
        tables.insert("events", ev);
        let pay =
            |d: i64, game: &str, user: &str, order: &str, cents: u64, status: &str, channel: &str, product: &str| {
                format!(
                "{}\t{game}\tprod\t{user}\t{order}\t{cents}\tUSD\t{status}\t{channel}\tios\tUS\tCA\tSF\t{product}\t",
                time_text((t + d) * DAY + 7200)
            )
            };
        tables.insert(
            "payments",
            vec![
                pay(-3, "g1", "u1", "o1", 499, "success", "appstore", "gems"),
                pay(-3, "g1", "u2", "o2", 499, "failed", "appstore", "gems"),
                pay(-2, "g1", "u1", "o3", 999, "success", "google", "pass"),
                pay(-1, "g1", "u1", "o3", 999, "refund", "google", "pass"),
                pay(-1, "g1", "u5", "o4", 199, "success", "web", "gems"),
                pay(-20, "g1", "u5", "o5", 10_000, "success", "web", "gems"),
                pay(-1, "g2", "x1", "o6", 10_000, "success", "web", "gems"),
            ],
        );
        Rows { tables }
    }
}

/// Every SQL panel and variable of the business board against ClickHouse 18.16 holding
/// known rows, each figure exact; then the same queries on a current engine (chdb-core).
#[test]
fn grafana_business_board_sql_is_exact_on_clickhouse() {
    let ch = ClickHouseServer::start();
    block_on(ActiveDriver::Epoll, async {
        let mut c = Connection::connect(&ch_options(&ch)).await.expect("connect");
        schema::migrate(&mut c).await.expect("migrate");
    })
    .unwrap();
    let now = croupier_it::http::now_secs();
    let t = now.div_euclid(DAY);
    let data = Rows::new(t, now);
    for (table, cols) in TABLES {
        let rows = &data.tables[table];
        // Each row an insert of its own: parts that only FINAL (or a merge) makes one,
        // and a redelivered copy of the first half of the events and payments.
        for row in rows {
            ch.query(&format!("INSERT INTO analytics.{table} ({cols}) FORMAT TabSeparated\n{row}\n"));
        }
        if table == "events" || table == "payments" {
            let half = rows[..rows.len() / 2].join("\n");
            ch.query(&format!("INSERT INTO analytics.{table} ({cols}) FORMAT TabSeparated\n{half}\n"));
        }
    }

    // The range: from day -9 (start of day) to now; game g1, environment prod.
    let from = (t - 9) * DAY;
    let vars = [("game", "g1"), ("env", "prod")];
    let midnight = |n: i64| time_text((t + n) * DAY);
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let minute = now / 60 * 60;
    // Peak online per day: the largest figure written for the day (superseded readings
    // included: a maximum of readings that only grow).
    let mut peaks: BTreeMap<i64, u32> = BTreeMap::new();
    for (m, o) in [(minute - 120, 5), (minute - 120, 7), (minute - 60, 3)] {
        let e = peaks.entry(m.div_euclid(DAY)).or_default();
        *e = (*e).max(o);
    }
    let mut expected: BTreeMap<&str, Vec<Vec<String>>> = BTreeMap::new();
    expected.insert(
        "Last day of the range: DAU, new users, revenue, pay rate, ARPU, ARPPU",
        vec![s(&[&midnight(0), "10", "2", "5", "20", "0.5", "2.5"])],
    );
    expected.insert(
        "DAU, new users and payers per day",
        vec![
            s(&[&midnight(-2), "60", "6", "3"]),
            s(&[&midnight(-1), "40", "4", "4"]),
            s(&[&midnight(0), "10", "2", "2"]),
        ],
    );
    expected.insert(
        "Revenue and refunds per day",
        vec![s(&[&midnight(-2), "30", "1"]), s(&[&midnight(-1), "20", "0"]), s(&[&midnight(0), "5", "0.5"])],
    );
    expected.insert(
        "Pay rate, ARPU and ARPPU per day",
        vec![
            s(&[&midnight(-2), "5", "0.5", "10"]),
            s(&[&midnight(-1), "10", "0.5", "5"]),
            s(&[&midnight(0), "20", "0.5", "2.5"]),
        ],
    );
    // Cohort day -8: 4 users, 2 active on day -7 (D1), 3 on day -1 (D7: u1 logs in, u2 and u3 play levels), D30 not over;
    // cohort day -2: 2 users, 1 active on day -1 (D1), D7 and D30 not over.
    expected.insert(
        "Retention D1 / D7 / D30 by registration cohort",
        vec![
            s(&[&day_text((t - 8) * DAY), "4", "50", "75", "\\N"]),
            s(&[&day_text((t - 2) * DAY), "2", "50", "\\N", "\\N"]),
        ],
    );
    expected.insert(
        "Online players per minute",
        vec![s(&[&time_text(minute - 120), "7"]), s(&[&time_text(minute - 60), "3"])],
    );
    expected
        .insert("Peak online per day", peaks.iter().map(|(d, p)| vec![time_text(d * DAY), p.to_string()]).collect());
    expected.insert(
        "Top events",
        vec![
            s(&["level_start", "5", "3"]),
            s(&["login", "5", "4"]),
            s(&["register", "5", "5"]),
            s(&["level_clear", "1", "1"]),
            s(&["level_complete", "1", "1"]),
            s(&["level_fail", "1", "1"]),
            s(&["user.register", "1", "1"]),
        ],
    );
    expected.insert(
        "Payments by product",
        // Payments: every row, the refund of `pass` included (the API's `total`).
        vec![s(&["pass", "9.99", "1", "2", "9.99"]), s(&["gems", "6.98", "2", "3", "0"])],
    );
    expected.insert(
        "Payments by channel",
        vec![
            s(&["google", "9.99", "1", "2", "9.99"]),
            s(&["appstore", "4.99", "1", "2", "0"]),
            s(&["web", "1.99", "1", "1", "0"]),
        ],
    );
    expected.insert(
        "Levels: players who started, cleared and failed, win rate",
        vec![s(&["1", "2", "1", "1", "50"]), s(&["2", "2", "1", "0", "50"]), s(&["10", "1", "0", "0", "0"])],
    );
    expected.insert("variable game", vec![s(&["g1"]), s(&["g2"])]);
    expected.insert("variable env", vec![s(&["dev"]), s(&["prod"])]);

    let panels = queries(&board("croupier-business.json"), "grafana-clickhouse-datasource");
    assert_eq!(panels.len(), expected.len(), "every SQL query of the board has its expected rows");
    let mut sent = Vec::new();
    for (title, sql) in &panels {
        let want = expected.get(title.as_str()).unwrap_or_else(|| panic!("no expected rows for {title}"));
        let q = expand_sql(sql, from, now, &vars);
        let got = rows(&ch.query(&format!("{q} FORMAT TabSeparated")));
        assert!(same(&got, want), "{title}:\n{q}\ngot {got:?}\nexpected {want:?}");
        sent.push(q);
    }

    // A current engine (chdb-core, ClickHouse 26.x) gives the same rows for the same
    // queries over the same rows, after the same migration.
    let ok = std::process::Command::new("python3").args(["-c", "import chdb"]).status().is_ok_and(|s| s.success());
    assert!(ok, "python3 with chdb-core is needed (scripts/setup.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    for (table, cols) in TABLES {
        let dump = ch.query(&format!("SELECT {cols} FROM analytics.{table} FORMAT TabSeparated"));
        std::fs::write(dir.path().join(format!("{table}.tsv")), dump).unwrap();
        std::fs::write(dir.path().join(format!("{table}.cols")), cols).unwrap();
    }
    std::fs::write(dir.path().join("queries.sql"), sent.join("\n")).unwrap();
    let script = format!("{ROOT}/scripts/chdb-queries.py");
    let out = std::process::Command::new("python3").arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let current = std::fs::read_to_string(dir.path().join("results.txt")).unwrap();
    let current: Vec<&str> = current.split("--end--\n").collect();
    for (i, ((title, _), q)) in panels.iter().zip(&sent).enumerate() {
        let old = rows(&ch.query(&format!("{q} FORMAT TabSeparated")));
        let new = rows(current.get(i).copied().unwrap_or(""));
        assert!(same(&new, &old), "{title} on a current engine:\n{q}\n{new:?}\nClickHouse 18.16: {old:?}");
    }
}

/// `prometheus-node-exporter` on a free loopback port, killed when dropped.
struct NodeExporter {
    addr: std::net::SocketAddr,
    child: Option<std::process::Child>,
}

impl NodeExporter {
    fn start() -> NodeExporter {
        let binary = require_binary("prometheus-node-exporter", "prometheus-node-exporter");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node-exporter.log");
        let mut child = std::process::Command::new(binary)
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus-node-exporter");
        croupier_it::wait_until_ready(&mut child, "node-exporter", &log, Duration::from_secs(20), || {
            croupier_it::monitoring::http_get(&format!("http://{addr}/metrics")).is_some()
        });
        NodeExporter { addr, child: Some(child) }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        croupier_it::kill(&mut self.child);
    }
}

/// `127.0.0.1:9000` as Grafana writes a single value into a regex matcher.
fn regex_escaped(v: &str) -> String {
    v.replace('.', "\\\\.")
}

/// Every PromQL panel and variable of the technical board against a real Prometheus
/// scraping a `croupier run` that took traffic, and node-exporter: each query answers
/// with at least one series.
#[test]
fn grafana_technical_board_promql_answers_on_a_real_prometheus() {
    let redis = RedisServer::start();
    let clickhouse = ClickHouseServer::start();
    let mut env = crate::pipeline::env(&redis, &clickhouse);
    env.extend([
        (format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET.to_owned()),
        ("CROUPIER_SERVER__SHARDS".into(), "2".into()),
        ("CROUPIER_REDIS__BACKLOG_POLL_MS".into(), "20".into()),
    ]);
    let (ok, out) = croupier(&["migrate"], &env);
    assert!(ok, "croupier migrate: {out}");
    let c = Croupier::start(CROUPIER, "run", &env);
    c.wait_data_ready();
    c.wait_control_ready(200);
    let node = NodeExporter::start();
    let prom = Prometheus::start(&[c.control, node.addr], None, None);

    // Traffic until every query has answered: accepted batches, refused ones (a 401),
    // payments.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (addr, stop) = (c.data, stop.clone());
        std::thread::spawn(move || {
            let mut client = HttpClient::connect(addr);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, events(10).as_bytes());
                assert_eq!(r.status, 202, "{}", r.text());
                if i.is_multiple_of(5) {
                    let bad = post_signed(&mut client, "/api/ingest/events", GAME, "wrong", events(2).as_bytes());
                    assert_eq!(bad.status, 401);
                    let body = format!(
                        r#"[{{"ts":{},"game_id":"{GAME}","env":"prod","user_id":"p{i}","order_id":"gr-{i}","amount_cents":100,"currency":"USD","status":"success"}}]"#,
                        croupier_it::http::now_secs()
                    );
                    assert_eq!(
                        post_signed(&mut client, "/api/ingest/payments", GAME, SECRET, body.as_bytes()).status,
                        202
                    );
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let instance = regex_escaped(&c.control.to_string());
    let expand =
        |q: &str| q.replace("$__rate_interval", "1m").replace("$job", "croupier").replace("$instance", &instance);
    let technical = board("croupier-technical.json");
    let promql = queries(&technical, "prometheus");
    assert!(promql.len() >= 20, "{promql:?}");
    // Series that exist only once something goes wrong, which this traffic does not do.
    let only_on_failure = ["Dead letters"];
    let mut pending: Vec<(String, String)> = promql
        .iter()
        .filter(|(title, _)| !only_on_failure.contains(&title.as_str()))
        .map(|(title, q)| {
            let q = match q.strip_prefix("label_values(") {
                // label_values(<selector>, label): Grafana asks for the selector's series.
                Some(rest) => rest.rsplit_once(',').map(|(sel, _)| sel.to_owned()).expect("label_values(a, b)"),
                None => q.clone(),
            };
            (title.clone(), expand(&q))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        pending.retain(|(_, q)| {
            let v = prom.api(&format!("query?query={}", url_encode(q)));
            assert_eq!(v["status"], "success", "{q}: {v}");
            v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
        });
        if pending.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "empty results after 60 s: {pending:#?}\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The queries expected empty still parse and run.
    for (title, q) in promql.iter().filter(|(t, _)| only_on_failure.contains(&t.as_str())) {
        let v = prom.api(&format!("query?query={}", url_encode(&expand(q))));
        assert_eq!(v["status"], "success", "{title}: {v}");
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
}

fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
