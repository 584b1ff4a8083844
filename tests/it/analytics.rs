//! The Analytics API on the control listener against real clickhouse-server and
//! redis-server: a generated game history (players, sessions, levels, payments, refunds
//! and redelivered duplicates over 45 days) whose exact answers the test computes itself;
//! auth (HS256, RS256 from a JWKS file) with its 401/403s; the audit log; SQL escaping
//! against a corpus of injection attempts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use croupier_control::config::{Config, Driver, Game};
use croupier_control::metrics::Registry;
use croupier_dataplane::analytics::sql::quote;
use croupier_dataplane::clickhouse::connection::{ChOptions, Connection};
use croupier_dataplane::clickhouse::{schema, user_days};
use croupier_dataplane::control::listener::{self, Control};
use croupier_dataplane::runtime::{block_on, ActiveDriver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::cluster::RedisCluster;
use croupier_it::http::{clear_of_day_turn, HttpClient, Reply};
use croupier_it::redis::RedisServer;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const DAY: i64 = 86_400;
const SECRET: &str = "it-jwt-secret";
const PLAYERS: u64 = 240;
const HISTORY_DAYS: i64 = 45;
const CHANNELS: [&str; 3] = ["appstore", "google", "web"];

/// A deterministic hash of a few numbers (splitmix64).
pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for p in parts {
        x ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(x << 6).wrapping_add(x >> 2);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

/// One generated payment row.
#[derive(Debug, Clone)]
struct Payment {
    time: i64,
    user: u64,
    order: String,
    amount: u64,
    status: &'static str,
    channel: &'static str,
    product: &'static str,
}

/// One generated event of g1: (time, user, session, name, props, event id).
type Ev = (i64, u64, String, String, String, u64);

/// The generated history of game `g1`, env `prod` (plus a little of `g2`).
struct History {
    today: i64,
    /// Registration day of each player.
    reg: Vec<i64>,
    /// Days each player was active (an event that day).
    active: Vec<BTreeSet<i64>>,
    payments: Vec<Payment>,
    /// The events of g1.
    events: Vec<Ev>,
    /// TabSeparated rows of events and payments.
    event_rows: Vec<String>,
    payment_rows: Vec<String>,
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

impl History {
    fn generate(now: i64) -> History {
        let today = now.div_euclid(DAY);
        let first = today - HISTORY_DAYS;
        let mut h = History {
            today,
            reg: Vec::new(),
            active: Vec::new(),
            payments: Vec::new(),
            events: Vec::new(),
            event_rows: Vec::new(),
            payment_rows: Vec::new(),
        };
        let mut next_id = 0u64;
        let mut event = |h: &mut History, t: i64, game: &str, user: u64, session: u64, name: &str, props: &str| {
            next_id += 1;
            if game == "g1" {
                h.events.push((t, user, format!("s{user}-{session}"), name.to_owned(), props.to_owned(), next_id));
            }
            let channel = CHANNELS[(user % 3) as usize];
            let platform = if user.is_multiple_of(2) { "ios" } else { "android" };
            h.event_rows.push(format!(
                "{t}\t{game}\tprod\tu{user}\ts{user}-{session}\t{name}\t{channel}\t{platform}\tUS\t1.0\t{}\t{props}",
                uuid(next_id)
            ));
        };
        for p in 0..PLAYERS {
            let reg = first + (mix(&[p, 1]) % HISTORY_DAYS as u64) as i64;
            let mut days = BTreeSet::new();
            for d in reg..today {
                let keep = d == reg || mix(&[p, d as u64, 2]) % 100 < 35 + (p % 40);
                if !keep {
                    continue;
                }
                days.insert(d);
                let base = d * DAY + (mix(&[p, d as u64, 3]) % (DAY as u64 - 7200)) as i64;
                if d == reg {
                    event(&mut h, base, "g1", p, 0, "register", "{}");
                }
                event(&mut h, base + 1, "g1", p, d as u64, "login", "{}");
                event(&mut h, base + 2, "g1", p, d as u64, "session_start", "{}");
                let level = 1 + mix(&[p, d as u64, 4]) % 5;
                event(
                    &mut h,
                    base + 60,
                    "g1",
                    p,
                    d as u64,
                    "level_start",
                    &format!(r#"{{"level":"{level}","episode":"e1"}}"#),
                );
                let clear = if mix(&[p, d as u64, 5]).is_multiple_of(3) { "level_fail" } else { "level_clear" };
                event(
                    &mut h,
                    base + 120,
                    "g1",
                    p,
                    d as u64,
                    clear,
                    &format!(r#"{{"level":"{level}","duration_sec":{},"retries":{}}}"#, 30 + level, level % 3),
                );
                let roll = mix(&[p, d as u64, 6]) % 10;
                if roll < 2 {
                    let order = format!("o{p}-{d}");
                    let amount = 99 + mix(&[p, d as u64, 7]) % 5000;
                    let pay = |status, time| Payment {
                        time,
                        user: p,
                        order: order.clone(),
                        amount,
                        status,
                        channel: CHANNELS[(p % 3) as usize],
                        product: if amount.is_multiple_of(2) { "gems" } else { "pass" },
                    };
                    h.payments.push(pay(if roll == 0 { "success" } else { "failed" }, base + 300));
                    // Some successes are refunded later the same day, under both names.
                    if roll == 0 && mix(&[p, d as u64, 8]).is_multiple_of(4) {
                        let status = if p % 2 == 0 { "refund" } else { "refunded" };
                        h.payments.push(pay(status, base + 3600));
                    }
                }
            }
            h.reg.push(reg);
            h.active.push(days);
        }
        // Another game's players, outside every g1 figure.
        for p in 0..20 {
            event(&mut h, (today - 1) * DAY + 100, "g2", 10_000 + p, 0, "register", "{}");
            event(&mut h, (today - 1) * DAY + 101, "g2", 10_000 + p, 0, "login", "{}");
        }
        for p in &h.payments {
            h.payment_rows.push(format!(
                "{}\tg1\tprod\tu{}\t{}\t{}\tUSD\t{}\t{}\tios\tUS\tCA\tSF\t{}\t",
                p.time, p.user, p.order, p.amount, p.status, p.channel, p.product
            ));
        }
        h
    }

    fn players(&self) -> impl Iterator<Item = usize> + '_ {
        0..self.reg.len()
    }

    fn active_on(&self, p: usize, d: i64) -> bool {
        self.active[p].contains(&d)
    }

    /// (cohort size, retained on D+1, D+7, D+30) of cohort day `d`.
    fn cohort(&self, d: i64) -> (u64, [u64; 3]) {
        let members: Vec<usize> = self.players().filter(|p| self.reg[*p] == d).collect();
        let kept = |n: i64| members.iter().filter(|p| self.active_on(**p, d + n)).count() as u64;
        (members.len() as u64, [kept(1), kept(7), kept(30)])
    }
}

fn percent(x: u64, base: u64) -> f64 {
    if base == 0 {
        0.0
    } else {
        (x as f64 * 10_000.0 / base as f64).round() / 100.0
    }
}

fn date(day: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(day * DAY).unwrap();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// The ClickHouse server's time zone in these tests: eight hours ahead of UTC.
const TZ: &str = "Asia/Shanghai";

/// ClickHouse and Redis with the schema and a history, and the control listener on them.
struct Api {
    ch: ClickHouseServer,
    redis: RedisServer,
    control: Option<Control>,
    history: History,
    _keys: tempfile::TempDir,
    rsa_pem: Vec<u8>,
    other_rsa_pem: Vec<u8>,
}

const EVENT_COLUMNS: &str =
    "event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, props_json";

/// The statements that insert `data` (`VALUES ...` or `FORMAT TabSeparated\n...`, of
/// [`EVENT_COLUMNS`]) into `analytics.events` as the worker does: the rows, then the
/// `user_days` rows folded from those rows alone (the same fold in SQL, over a table
/// holding only them, dropped after). A batch inserted again adds its days again, as a
/// redelivered batch does.
fn worker_insert(data: &str) -> Vec<String> {
    vec![
        "CREATE TABLE analytics.events_batch AS analytics.events ENGINE = Memory".to_owned(),
        format!("INSERT INTO analytics.events_batch ({EVENT_COLUMNS}) {data}"),
        "INSERT INTO analytics.events SELECT * FROM analytics.events_batch".to_owned(),
        format!(
            "INSERT INTO analytics.user_days ({}) {}",
            user_days::COLUMNS,
            user_days::fold_select("analytics.events_batch", "1 = 1")
        ),
        "DROP TABLE analytics.events_batch".to_owned(),
    ]
}

/// Inserts `data` into `analytics.events` on `ch` as the worker does ([`worker_insert`]).
fn insert_events(ch: &ClickHouseServer, data: &str) {
    for sql in worker_insert(data) {
        ch.query(&sql);
    }
}
const PAYMENT_COLUMNS: &str =
    "time, game_id, env, user_id, order_id, amount_cents, currency, status, channel, platform, country, region, city, product_id, reason";

/// Options of a native connection to `ch`'s default database.
pub(crate) fn ch_options(ch: &ClickHouseServer) -> ChOptions {
    ChOptions {
        addr: ch.addr(),
        database: "default".into(),
        user: "default".into(),
        password: Default::default(),
        compression: true,
        timeout: Duration::from_secs(30),
    }
}

fn rsa_key(dir: &std::path::Path, name: &str) -> (Vec<u8>, String) {
    let path = dir.join(format!("{name}.pem"));
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .expect("openssl");
    let hex = String::from_utf8(modulus.stdout).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    (std::fs::read(&path).unwrap(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Api {
    fn start() -> Api {
        Self::start_with(false)
    }

    fn start_with(log_queries: bool) -> Api {
        let api = Self::start_after(log_queries, |_| {});
        api.wait_redis();
        api
    }

    /// Migrated, the history inserted, then `prepare` run before the control listener
    /// starts; answers nothing yet (no request made).
    fn start_after(log_queries: bool, prepare: impl FnOnce(&ClickHouseServer)) -> Api {
        Self::start_configured(log_queries, prepare, |_, _| {})
    }

    /// As [`Api::start_after`], with `configure` changing the configuration last.
    fn start_configured(
        log_queries: bool,
        prepare: impl FnOnce(&ClickHouseServer),
        configure: impl FnOnce(&ClickHouseServer, &mut Config),
    ) -> Api {
        // A server whose local day is not the UTC day (as many studios' are): every figure
        // is still per UTC day.
        let ch = if log_queries { ClickHouseServer::start_logging_queries() } else { ClickHouseServer::start_in(TZ) };
        let redis = RedisServer::start();
        block_on(ActiveDriver::Epoll, async {
            let mut c = Connection::connect(&ch_options(&ch)).await.expect("connect");
            schema::migrate(&mut c).await.expect("migrate");
        })
        .unwrap();
        // The history and the tests' requests fall on one UTC day ("today", complete
        // days, the realtime figures of payments stamped up to a minute back).
        clear_of_day_turn(180, 60);
        let now = croupier_dataplane::analytics::now_secs();
        let history = History::generate(now);
        let insert = |table: &str, cols: &str, rows: &[String]| {
            for chunk in rows.chunks(20_000) {
                let data = format!("FORMAT TabSeparated\n{}\n", chunk.join("\n"));
                if table == "events" {
                    insert_events(&ch, &data);
                } else {
                    ch.query(&format!("INSERT INTO analytics.{table} ({cols}) {data}"));
                }
            }
        };
        insert("events", EVENT_COLUMNS, &history.event_rows);
        insert("payments", PAYMENT_COLUMNS, &history.payment_rows);
        // Redelivered copies (same event ids, same order and status) in parts of their own.
        insert("events", EVENT_COLUMNS, &history.event_rows[..history.event_rows.len() / 3]);
        insert("payments", PAYMENT_COLUMNS, &history.payment_rows[..history.payment_rows.len() / 2]);

        prepare(&ch);
        let keys = tempfile::tempdir().unwrap();
        let (rsa_pem, n) = rsa_key(keys.path(), "k1");
        let (other_rsa_pem, _) = rsa_key(keys.path(), "k2");
        let jwks = keys.path().join("jwks.json");
        std::fs::write(
            &jwks,
            json!({"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":n,"e":"AQAB"}]}).to_string(),
        )
        .unwrap();

        let mut config = Config::default();
        config.server.driver = Driver::Epoll;
        config.redis.addr = redis.addr();
        config.clickhouse.addr = ch.addr();
        config.control.listen = "127.0.0.1:0".into();
        config.api.jwt_secret = SECRET.into();
        config.api.jwks_file = Some(jwks);
        config.api.audit_flush_ms = 100;
        config.api.roles.insert("guest".into(), vec![]);
        config.api.filters_file = Some(keys.path().join("filters.json"));
        for g in ["g1", "g2"] {
            config.games.insert(g.into(), Game { secret: Some("s".into()), ..Game::default() });
        }
        config.api.cpi_cents.insert("appstore".into(), 150);
        config.api.cpi_cents.insert("g1/google".into(), 80);
        config.api.cpi_cents.insert("g2/web".into(), 5);
        configure(&ch, &mut config);
        let control = listener::start(Arc::new(config), Registry::new(&[], &[], false), false, false)
            .expect("control starts")
            .expect("control listener");
        Api { ch, redis, control: Some(control), history, _keys: keys, rsa_pem, other_rsa_pem }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.control.as_ref().unwrap().local_addr()
    }

    /// Waits until the API's Redis connection is up (a realtime read answers 200).
    fn wait_redis(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.get("/api/analytics/realtime?game_id=g1&env=prod", &admin()).status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "realtime never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str, token: &str) -> Reply {
        let mut headers = vec![];
        if !token.is_empty() {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        HttpClient::connect(self.addr()).request("GET", path, &headers, b"")
    }

    fn json(&self, path: &str) -> Value {
        let r = self.get(path, &admin());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_str(&r.text()).unwrap()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown();
        }
    }
}

fn hs256(claims: Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn exp() -> i64 {
    croupier_dataplane::analytics::now_secs() + 3600
}

fn admin() -> String {
    hs256(json!({"sub":"alice","roles":["admin"],"exp":exp()}), SECRET)
}

/// The exact figures of the overview of the last 10 complete days.
#[test]
fn analytics_overview_is_exact() {
    let api = Api::start();
    let h = &api.history;
    let last = h.today - 1;
    // A player of an env of its own registers the day before yesterday and yesterday sends
    // only a level event: retained on D1 (any event), even after user_days is merged.
    insert_events(&api.ch, &format!(
        "VALUES \
         ({}, 'g1', 'solo', 'lone', 's1', 'register', '', '', 'US', '1', '00000000-0000-4000-8000-0000000000a1', '{{}}'), \
         ({}, 'g1', 'solo', 'lone', 's2', 'level_start', '', '', 'US', '1', '00000000-0000-4000-8000-0000000000a2', '{{}}')",
        (last - 1) * DAY + 100,
        last * DAY + 100
    ));
    api.ch.query("OPTIMIZE TABLE analytics.user_days FINAL");
    // The worker's fold filled user_days from the inserts (duplicates in parts of their
    // own), and a merge keeps every player's day.
    assert_eq!(api.ch.query(USER_DAYS_OF_EVENTS), api.ch.query(USER_DAYS));
    api.ch.query("OPTIMIZE TABLE analytics.daily_players FINAL");
    api.ch.query("OPTIMIZE TABLE analytics.registered_users FINAL");
    assert_eq!(api.ch.query(DAILY_PLAYERS_OF_EVENTS), api.ch.query(DAILY_PLAYERS));
    assert_eq!(api.ch.query(REGISTERED_OF_EVENTS), api.ch.query(REGISTERED));
    let solo =
        api.json(&format!("/api/analytics/overview?game_id=g1&env=solo&start={}&end={}", date(last), date(last)));
    assert_eq!((solo["d1"].as_f64(), solo["dau"].as_u64()), (Some(100.0), Some(0)), "{solo}");
    // Online minutes (the materialized view keeps each day's peak), one late in the UTC
    // day: already the next day where the server is.
    api.ch.query(&format!(
        "INSERT INTO analytics.minute_online (m, game_id, env, online) VALUES \
         ({}, 'g1', 'prod', 5), ({}, 'g1', 'prod', 9), ({}, 'g1', 'prod', 7), ({}, 'g2', 'prod', 99)",
        (last - 2) * DAY + 60,
        (last - 2) * DAY + 23 * 3600,
        last * DAY + 60,
        last * DAY + 60
    ));
    let v =
        api.json(&format!("/api/analytics/overview?game_id=g1&env=prod&start={}&end={}", date(last - 9), date(last)));
    let active_in = |from: i64| h.players().filter(|p| (from..=last).any(|d| h.active_on(*p, d))).count() as u64;
    let dau = active_in(last);
    assert_eq!(v["dau"], dau);
    assert_eq!(v["wau"], active_in(last - 6));
    assert_eq!(v["mau"], active_in(last - 29));
    let new_users = h.players().filter(|p| h.reg[*p] == last).count() as u64;
    assert_eq!(v["new_users"], new_users);
    assert_eq!(v["registered_total"], PLAYERS);
    let day_pay: Vec<&Payment> =
        h.payments.iter().filter(|p| p.time.div_euclid(DAY) == last && p.status == "success").collect();
    let revenue: u64 = day_pay.iter().map(|p| p.amount).sum();
    let payers = day_pay.iter().map(|p| p.user).collect::<BTreeSet<_>>().len() as u64;
    assert_eq!(v["revenue_cents"], revenue);
    assert_eq!(v["pay_rate"], percent(payers, dau));
    let r2 = |x: u64, b: u64| if b == 0 { 0.0 } else { (x as f64 * 100.0 / b as f64).round() / 100.0 };
    assert_eq!(v["arpu"], r2(revenue, dau));
    assert_eq!(v["arppu"], r2(revenue, payers));
    for (key, n, i) in [("d1", 1, 0), ("d7", 7, 1), ("d30", 30, 2)] {
        let (total, kept) = h.cohort(last - n);
        assert_eq!(v[key], percent(kept[i], total), "{key}");
    }
    let mut new_series = vec![];
    let mut rev_series = vec![];
    for d in last - 9..=last {
        let n = h.players().filter(|p| h.reg[*p] == d).count() as u64;
        if n > 0 {
            new_series.push(json!([format!("{}T00:00:00Z", date(d)), n]));
        }
        let ps: Vec<&Payment> = h.payments.iter().filter(|p| p.time.div_euclid(DAY) == d).collect();
        if !ps.is_empty() {
            let r: u64 = ps.iter().filter(|p| p.status == "success").map(|p| p.amount).sum();
            rev_series.push(json!([format!("{}T00:00:00Z", date(d)), r]));
        }
    }
    assert_eq!(v["series"]["new_users"], Value::Array(new_series));
    assert_eq!(v["series"]["revenue_cents"], Value::Array(rev_series));
    assert_eq!(
        v["series"]["peak_online"],
        json!([[format!("{}T00:00:00Z", date(last - 2)), 9], [format!("{}T00:00:00Z", date(last)), 7]])
    );
}

/// While `croupier migrate` has not yet filled `daily_players` and `registered_users`
/// (their fill mark `player_tables_filled` missing, `user_days_filled` present), what reads
/// them answers 503 `not_ready` with `Retry-After: 10`, never figures of half-filled
/// tables; once the mark exists they answer.
#[test]
fn analytics_answers_not_ready_until_the_player_tables_are_filled() {
    let api = Api::start_after(false, |ch| {
        ch.query("DROP TABLE analytics.player_tables_filled");
    });
    let h = &api.history;
    let overview =
        format!("/api/analytics/overview?game_id=g1&env=prod&start={}&end={}", date(h.today - 7), date(h.today - 1));
    let r = api.get(&overview, &admin());
    assert_eq!(
        (r.status, r.error_tag(), r.header("retry-after")),
        (503, "not_ready".to_owned(), Some("10")),
        "{}",
        r.text()
    );
    // Realtime reads Redis first: wait for the API's connection, then its registered total.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = api.get("/api/analytics/realtime?game_id=g1&env=prod", &admin());
        if r.status != 502 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (r.status, r.error_tag(), r.header("retry-after")),
        (503, "not_ready".to_owned(), Some("10")),
        "{}",
        r.text()
    );
    // Retention reads `events` only: it answers meanwhile.
    assert_eq!(api.get(&overview.replace("overview", "retention"), &admin()).status, 200);
    api.ch.query(schema::PLAYER_TABLES_MARK);
    let v = api.json(&overview);
    assert_eq!(v["registered_total"], PLAYERS);
    assert_eq!(api.get("/api/analytics/realtime?game_id=g1&env=prod", &admin()).status, 200);
}

/// D1/D7/D30 and the registered total up to a complete day are figures of complete days:
/// answered from memory for 60 s per scope and day (docs/analytics-api.md), then read again.
/// Figures of the day itself (DAU) are read every time, and so are registrations of today
/// in a range that ends today.
#[test]
fn analytics_overview_remembers_complete_days_for_60_s() {
    let api = Api::start();
    let h = &api.history;
    let last = h.today - 1;
    let to_last = format!("/api/analytics/overview?game_id=g1&env=prod&start={}&end={}", date(last - 6), date(last));
    let to_today =
        format!("/api/analytics/overview?game_id=g1&env=prod&start={}&end={}", date(last - 6), date(h.today));
    let before = api.json(&to_last);
    let read_at = Instant::now();
    let (total, kept) = h.cohort(last - 1);
    assert_eq!(before["d1"], percent(kept[0], total));
    assert_eq!(before["registered_total"], PLAYERS);
    // Late rows for complete days: `late` registers on the day before `last` and is
    // retained on `last` (a level event) when nobody of that cohort was, else not, so that
    // D1 changes either way; `walker` logs in on `last` (DAU); `newcomer` registers today.
    let retained = kept[0] == 0;
    let after_d1 = percent(kept[0] + u64::from(retained), total + 1);
    assert_ne!(json!(after_d1), before["d1"]);
    let now = croupier_dataplane::analytics::now_secs();
    let mut rows = vec![
        format!(
            "({}, 'g1', 'prod', 'late', 'l1', 'register', '', '', 'US', '1', '{}', '{{}}')",
            (last - 1) * DAY + 50,
            uuid(1 << 40)
        ),
        format!(
            "({}, 'g1', 'prod', 'walker', 'w1', 'login', '', '', 'US', '1', '{}', '{{}}')",
            last * DAY + 50,
            uuid((1 << 40) + 1)
        ),
        format!(
            "({}, 'g1', 'prod', 'newcomer', 'n1', 'register', '', '', 'US', '1', '{}', '{{}}')",
            now - 5,
            uuid((1 << 40) + 2)
        ),
    ];
    if retained {
        rows.push(format!(
            "({}, 'g1', 'prod', 'late', 'l2', 'level_start', '', '', 'US', '1', '{}', '{{}}')",
            last * DAY + 60,
            uuid((1 << 40) + 3)
        ));
    }
    insert_events(&api.ch, &format!("VALUES {}", rows.join(", ")));
    let again = api.json(&to_last);
    assert!(read_at.elapsed() < Duration::from_secs(50), "the test was too slow to see the memory");
    assert_eq!((&again["d1"], &again["d7"], &again["d30"]), (&before["d1"], &before["d7"], &before["d30"]));
    assert_eq!(again["registered_total"], PLAYERS, "remembered: the late registration is not counted yet");
    assert_eq!(again["dau"], before["dau"].as_u64().unwrap() + 1, "DAU is read each time");
    // Ending today: the complete days from memory, today's registrations read now.
    assert_eq!(api.json(&to_today)["registered_total"], PLAYERS + 1);
    // Another scope is remembered on its own: the whole game reads afresh.
    let game = api.json(&format!("/api/analytics/overview?game_id=g1&start={}&end={}", date(last - 6), date(last)));
    assert_eq!(game["registered_total"], PLAYERS + 1, "read afresh: `late` counts");
    std::thread::sleep(Duration::from_secs(61).saturating_sub(read_at.elapsed()));
    let fresh = api.json(&to_last);
    assert_eq!(fresh["d1"], after_d1);
    assert_eq!(fresh["registered_total"], PLAYERS + 1);
    assert_eq!(api.json(&to_today)["registered_total"], PLAYERS + 2);
}

/// A TCP relay to ClickHouse that, while armed, holds back every chunk a client sends
/// containing `marker` (one query: the client writes a query in one buffer) until
/// released, counting them.
struct Stall {
    addr: std::net::SocketAddr,
    state: Arc<(std::sync::Mutex<(bool, usize)>, std::sync::Condvar)>,
}

impl Stall {
    fn start(upstream: String, marker: &'static str) -> Stall {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((std::sync::Mutex::new((false, 0usize)), std::sync::Condvar::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = std::net::TcpStream::connect(&upstream) else { return };
                let (mut client_r, mut server_r) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut server_r, &mut client));
                let state = shared.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match client_r.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let hit = buf[..n].windows(marker.len()).any(|w| w == marker.as_bytes());
                        let (lock, cv) = &*state;
                        let mut s = lock.lock().unwrap();
                        if hit && s.0 {
                            s.1 += 1;
                            while s.0 {
                                s = cv.wait(s).unwrap();
                            }
                        }
                        drop(s);
                        if server.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Stall { addr, state }
    }

    fn arm(&self, armed: bool) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().0 = armed;
        cv.notify_all();
    }

    /// Queries held back so far.
    fn held(&self) -> usize {
        self.state.0.lock().unwrap().1
    }
}

/// An API whose ClickHouse is reached through a [`Stall`] that can hold back the query of
/// the registered players per first day (`registered_by_day`), with `query_timeout_ms`;
/// and the overview of the 7 days ending yesterday.
fn api_behind_stall(query_timeout_ms: u64) -> (Api, Stall, String) {
    api_behind_stall_with(|config| config.api.query_timeout_ms = query_timeout_ms)
}

/// [`api_behind_stall`] with the API's configuration set by `tweak`.
fn api_behind_stall_with(tweak: impl FnOnce(&mut Config)) -> (Api, Stall, String) {
    let mut stall = None;
    let api = Api::start_configured(
        false,
        |_| {},
        |ch, config| {
            let s = Stall::start(ch.addr(), "minMerge(first_d) AS fd");
            config.clickhouse.addr = s.addr.to_string();
            tweak(config);
            stall = Some(s);
        },
    );
    let stall = stall.expect("the stall started");
    api.wait_redis();
    let last = api.history.today - 1;
    let to_last = format!("/api/analytics/overview?game_id=g1&env=prod&start={}&end={}", date(last - 6), date(last));
    (api, stall, to_last)
}

/// 503 `busy` with `Retry-After: 1` for a request kept waiting by other requests' queries:
/// with two connections (`api.max_queries_in_flight`) held by two overviews whose query of
/// the players per first day is held back, a third overview's query waits for a
/// connection — theirs, given up on at their deadline, stay taken until the server ends
/// their queries — and runs out of its own time: its wait was the others' load, not its
/// query (a black-box finding: it was 504 `query_timeout`). The first two are 504.
#[test]
fn analytics_a_request_kept_waiting_by_others_is_busy_not_a_timeout() {
    let (api, stall, path) = api_behind_stall_with(|config| {
        config.api.query_timeout_ms = 3_000;
        config.api.max_queries_in_flight = 2;
    });
    stall.arm(true);
    let [a, b, c] = std::thread::scope(|s| {
        let first = [s.spawn(|| api.get(&path, &admin())), s.spawn(|| api.get(&path, &admin()))];
        std::thread::sleep(Duration::from_millis(500));
        let third = s.spawn(|| api.get(&path, &admin()));
        let [a, b] = first.map(|t| t.join().unwrap());
        [a, b, third.join().unwrap()]
    });
    stall.arm(false);
    for r in [&a, &b] {
        assert_eq!((r.status, r.error_tag()), (504, "query_timeout".to_owned()), "{}", r.text());
    }
    assert_eq!((c.status, c.error_tag(), c.header("retry-after")), (503, "busy".to_owned(), Some("1")), "{}", c.text());
    assert!(stall.held() >= 2, "the first two overviews' queries were held");
    // Released, the overview answers.
    assert_eq!(api.json(&path)["registered_total"], PLAYERS);
}

/// A client that closes its connection before its answer ends its request: its reads
/// are given up on (cancelled on ClickHouse, their slot held until the server ended
/// them), not left running until `api.query_timeout_ms` — a dashboard reloaded while its
/// reports load must not leave every earlier load's queries running. Recorded as 499.
#[test]
fn analytics_a_client_gone_before_its_answer_ends_its_reads() {
    use std::io::Write;
    let (api, stall, path) = api_behind_stall_with(|config| {
        config.api.query_timeout_ms = 30_000;
    });
    stall.arm(true);
    let mut client = std::net::TcpStream::connect(api.addr()).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", admin());
    client.write_all(request.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stall.held() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stall.held(), 1, "the overview's query was held");
    drop(client);
    // Well before the 30 s deadline: the read is given up on, the request counted 499.
    let series = r#"croupier_api_requests_total{route="/api/analytics/overview",status="499"}"#;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        text = api.get("/metrics", "").text();
        if crate::metrics::sample(&text, series) == Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(crate::metrics::sample(&text, series), Some(1.0), "{text}");
    // The held read, and any other of the overview's still in flight.
    let given_up = crate::metrics::sample(&text, "croupier_api_reads_given_up_total").unwrap_or(0.0);
    assert!(given_up >= 1.0, "{text}");
    // Half-closed (its sending side shut) while its query is held: taken for gone too,
    // and nothing is written, neither its answer nor one to the request sent behind it.
    let mut client = std::net::TcpStream::connect(api.addr()).unwrap();
    client.write_all(format!("{request}{request}").as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stall.held() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stall.held(), 2, "the half-closed client's overview's query was held");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let read = std::io::Read::read_to_end(&mut client, &mut answer);
    assert!(read.is_ok() && answer.is_empty(), "{read:?} {:?}", String::from_utf8_lossy(&answer));
    // A request answered when first run (a token refused) is answered, whatever the
    // client did meanwhile: it is not watched.
    let mut client = std::net::TcpStream::connect(api.addr()).unwrap();
    let refused = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n");
    client.write_all(refused.as_bytes()).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut client, &mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 401 "), "{:?}", String::from_utf8_lossy(&answer));
    let text = api.get("/metrics", "").text();
    assert_eq!(crate::metrics::sample(&text, series), Some(2.0), "{text}");
    // A client that sends its next request while it waits is not taken for gone: the
    // bytes are kept and answered after the first.
    let mut client = HttpClient::connect(api.addr());
    client.send_raw(request.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while stall.held() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stall.held(), 3, "the third overview's query was held");
    client.send_raw(request.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    stall.arm(false);
    for _ in 0..2 {
        let r = client.read_reply();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(serde_json::from_str::<Value>(&r.text()).unwrap()["registered_total"], PLAYERS);
    }
}

/// Black-box finding: with 64 Analytics API requests in flight (each may wait
/// `api.query_timeout_ms` for ClickHouse) every place of the control port was taken by a
/// connection in a request, never closed for a new one: `/healthz` and `/metrics` waited
/// 6–10 s. At most half the places now handle API requests; past that an API request is
/// 503 `busy` at once, and probes get through.
#[test]
fn attack_api_requests_leave_the_control_port_places_for_probes() {
    let (api, stall, path) = api_behind_stall_with(|config| {
        config.api.query_timeout_ms = 4_000;
        config.api.max_queries_in_flight = 2;
    });
    stall.arm(true);
    let (probe, answers) = std::thread::scope(|s| {
        let requests: Vec<_> = (0..70).map(|_| s.spawn(|| api.get(&path, &admin()))).collect();
        std::thread::sleep(Duration::from_millis(800));
        let asked = Instant::now();
        let health = HttpClient::connect(api.addr()).request("GET", "/healthz", &[], b"");
        let probe = (health.status, asked.elapsed());
        let answers: Vec<Reply> = requests.into_iter().map(|t| t.join().unwrap()).collect();
        (probe, answers)
    });
    stall.arm(false);
    assert_eq!(probe.0, 200);
    assert!(probe.1 < Duration::from_millis(1_000), "/healthz answered after {:?}", probe.1);
    // The port's own bound, answered at once (the reads kept waiting past their deadline
    // are `busy` too, from the connection slots, later): the 38 past 32 when all 70 are in
    // before the stall ends (fewer if a slow machine let some in after it; a refusal that
    // freed a place let every second one in: 19).
    let at_once =
        answers.iter().filter(|r| r.status == 503 && r.text().contains("too many Analytics API requests")).count();
    assert!((30..=70 - 32).contains(&at_once), "{at_once}: {:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(answers.iter().all(|r| matches!(r.status, 503 | 504)), "every other one waited for the stalled query");
    // Counted for `/metrics` (black-box finding: the API had no series): every answer by
    // route and status, and the reads given up on (cancelled on ClickHouse).
    let text = api.get("/metrics", "").text();
    let count = |status: u16| {
        let series = format!(r#"croupier_api_requests_total{{route="/api/analytics/overview",status="{status}"}}"#);
        crate::metrics::sample(&text, &series).unwrap_or(0.0) as usize
    };
    let by = |status: u16| answers.iter().filter(|r| r.status == status).count();
    assert_eq!((count(503), count(504)), (by(503), by(504)), "{text}");
    let given_up = crate::metrics::sample(&text, "croupier_api_reads_given_up_total").unwrap_or(0.0);
    assert!(given_up >= 2.0, "{text}");
}

/// Remembered figures of complete days are read again in the background before they
/// expire (docs/analytics-api.md): past their 60 s, requests answer them from memory while
/// that read is in flight (here held back on its way to ClickHouse), with one such read
/// per figure however many requests ask, and answer the new figure once it is done.
/// Realtime's registered total is read at each request.
#[test]
fn analytics_overview_reads_complete_days_again_in_the_background() {
    let (api, stall, to_last) = api_behind_stall(60_000);
    let h = &api.history;
    let last = h.today - 1;
    let realtime = "/api/analytics/realtime?game_id=g1&env=prod";
    // The first overview reads the players per day: from then on.
    let read_at = Instant::now();
    assert_eq!(api.json(&to_last)["registered_total"], PLAYERS);
    assert_eq!(api.json(realtime)["registered_total"], PLAYERS);
    // `late` registers on the day before `last` (a complete day), `newcomer` today.
    let now = croupier_dataplane::analytics::now_secs();
    insert_events(
        &api.ch,
        &format!(
            "VALUES \
         ({}, 'g1', 'prod', 'late', 'l1', 'register', '', '', 'US', '1', '{}', '{{}}'), \
         ({}, 'g1', 'prod', 'newcomer', 'n1', 'register', '', '', 'US', '1', '{}', '{{}}')",
            (last - 1) * DAY + 50,
            uuid(1 << 41),
            now - 5,
            uuid((1 << 41) + 1)
        ),
    );
    // Today's registrations are read at each request; the complete days are remembered
    // (realtime reads everything at each request).
    assert_eq!(api.json(realtime)["registered_total"], PLAYERS + 2);
    assert_eq!(api.json(&to_last)["registered_total"], PLAYERS);
    stall.arm(true);
    std::thread::sleep(Duration::from_secs(61).saturating_sub(read_at.elapsed()));
    // Past the memory's 60 s the figure is being read again (held back): requests answer
    // it from memory rather than reading it themselves.
    for _ in 0..3 {
        assert_eq!(api.json(&to_last)["registered_total"], PLAYERS, "from memory while read again");
        assert_eq!(api.json(realtime)["registered_total"], PLAYERS + 2);
    }
    assert_eq!(stall.held(), 1, "one read of the figure in flight, by none of the requests");
    stall.arm(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.json(&to_last)["registered_total"] != PLAYERS + 1 {
        assert!(Instant::now() < deadline, "the figure read again never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(api.json(realtime)["registered_total"], PLAYERS + 2);
    assert_eq!(stall.held(), 1);
}

/// A remembered figure is answered past its 60 s only while its background read may still
/// finish (60 s plus `api.query_timeout_ms` after its read began): when that read keeps
/// failing (here held back until it times out, again and again), a request past that age
/// reads the figure itself and answers its error (504, or 503 `busy` once the reads given
/// up on hold every connection until the server ends them), never the old figure, and
/// the new figure once ClickHouse answers (docs/analytics-api.md).
#[test]
fn analytics_overview_never_answers_remembered_figures_past_their_limit() {
    let (api, stall, to_last) = api_behind_stall(4_000);
    let last = api.history.today - 1;
    // The figure is first read by the first overview below, after this.
    let read_at = Instant::now();
    assert_eq!(api.json(&to_last)["registered_total"], PLAYERS);
    insert_events(
        &api.ch,
        &format!(
            "VALUES \
         ({}, 'g1', 'prod', 'late', 'l1', 'register', '', '', 'US', '1', '{}', '{{}}')",
            (last - 1) * DAY + 50,
            uuid(1 << 42)
        ),
    );
    stall.arm(true);
    assert!(read_at.elapsed() < Duration::from_secs(45), "the test was too slow to hold the background read");
    // Past 60 s + 4 s every read of the figure is held until it times out: the background
    // read fails (and is tried again) and requests read it themselves, also while a
    // background read is in flight (the 2 s pauses leave the task time to begin one).
    std::thread::sleep(Duration::from_secs(65).saturating_sub(read_at.elapsed()));
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        let r = api.get(&to_last, &admin());
        let refused = [(504, "query_timeout".to_owned()), (503, "busy".to_owned())];
        assert!(refused.contains(&(r.status, r.error_tag())), "never the old figure: {} {}", r.status, r.text());
    }
    assert!(stall.held() >= 2, "the background read and the first request's read were held");
    stall.arm(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = api.get(&to_last, &admin());
        if r.status == 200 {
            let v: Value = serde_json::from_str(&r.text()).unwrap();
            assert_eq!(v["registered_total"], PLAYERS + 1, "the new figure, never the old one");
            break;
        }
        assert!(Instant::now() < deadline, "the figure was never read again: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Black-box finding (critical): an overview whose queries ran past `api.query_timeout_ms`
/// (or failed) dropped its other queries while they waited for a slot, and the slots'
/// semaphore panicked on that drop ("already borrowed"), killing the process. Every
/// answer is now a status with a JSON body, and the listener stays up.
#[test]
fn analytics_overview_past_its_deadline_answers_and_the_listener_stays_up() {
    let api = Api::start_configured(false, |_| {}, |_, config| config.api.query_timeout_ms = 2);
    let h = &api.history;
    let path = format!("/api/analytics/overview?game_id=g1&env=prod&start={}&end={}", date(h.today - 7), date(h.today));
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = api.get(&path, &admin());
        assert!([200, 503, 504].contains(&r.status), "{}: {}", r.status, r.text());
        if r.status != 200 {
            let body: Value = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
            assert!(body["error"].is_string(), "{}", r.text());
        }
        seen.push(r.status);
    }
    assert!(seen.contains(&504), "no answer ran past 2 ms: {seen:?}");
    assert_eq!(api.get("/healthz", "").status, 200, "the listener is up");
}

/// Retention rows carry day, date and total; D-N only for cohorts whose day N is over.
#[test]
fn analytics_retention_counts_only_complete_days() {
    let api = Api::start();
    let h = &api.history;
    let (first, last) = (h.today - 40, h.today);
    let v = api.json(&format!("/api/analytics/retention?game_id=g1&env=prod&start={}&end={}", date(first), date(last)));
    let rows = v["cohorts"].as_array().unwrap();
    assert_eq!(rows.len(), (last - first + 1) as usize);
    for (row, d) in rows.iter().zip(first..=last) {
        let (total, kept) = h.cohort(d);
        assert_eq!(row["day"], date(d));
        assert_eq!(row["date"], date(d));
        assert_eq!(row["total"], total, "{}", date(d));
        for (key, n, i) in [("d1", 1, 0), ("d7", 7, 1), ("d30", 30, 2)] {
            if d + n < h.today {
                assert_eq!(row[key], percent(kept[i], total), "{key} of {}", date(d));
            } else {
                assert_eq!(row[key], Value::Null, "{key} of {} is not complete", date(d));
            }
        }
    }
    // The date forms the dashboard sends (toISOString) give the same rows.
    let iso = api.json(&format!(
        "/api/analytics/retention?game_id=g1&env=prod&start={}T00:00:00.000Z&end={}T23:59:59.999Z",
        date(first),
        date(last)
    ));
    assert_eq!(iso, v);
}

/// Black-box finding: the overview's D1 counted a player registering again on the cohort
/// day, the retention route only a player's first register in the range. Both now count
/// as Croupier does: a cohort is the players with a `register` event on its day, whatever
/// they did before (a player registering on two days is in both), and the two routes agree
/// whatever the range's start. An env of its own, today T: a, b, c, d register on T−3; on
/// T−2 a and b log in, a registers again, e and h register; on T−1 a logs in and e sends a
/// heartbeat. p registers on T−10 and T−8 and logs in on T−1.
#[test]
fn analytics_cohorts_are_the_players_registering_that_day_in_both_routes() {
    let api = Api::start();
    let t = api.history.today;
    let ev = |n: u64, day: i64, user: &str, event: &str| {
        format!(
            "({}, 'g1', 'ret', '{user}', 's', '{event}', '', '', 'US', '1', '{}', '{{}}')",
            day * DAY + 600,
            uuid(0xE000 + n)
        )
    };
    let rows = [
        ev(1, t - 3, "a", "register"),
        ev(2, t - 3, "b", "register"),
        ev(3, t - 3, "c", "register"),
        ev(4, t - 3, "d", "register"),
        ev(5, t - 2, "a", "login"),
        ev(6, t - 2, "b", "login"),
        ev(7, t - 2, "a", "register"),
        ev(8, t - 2, "e", "register"),
        ev(9, t - 2, "h", "register"),
        ev(10, t - 1, "a", "login"),
        ev(11, t - 1, "e", "heartbeat"),
        ev(12, t - 10, "p", "register"),
        ev(13, t - 8, "p", "register"),
        ev(14, t - 1, "p", "login"),
    ];
    insert_events(&api.ch, &format!("VALUES {}", rows.join(", ")));
    for start in [t - 10, t - 3, t - 2] {
        let q = format!("game_id=g1&env=ret&start={}&end={}", date(start), date(t - 1));
        let o = api.json(&format!("/api/analytics/overview?{q}"));
        // D1: T−2's cohort a, e, h, of whom a and e are active on T−1; D7: T−8's, p, active.
        assert_eq!((&o["d1"], &o["d7"], &o["d30"]), (&json!(66.67), &json!(100.0), &json!(0.0)), "from {start}: {o}");
        let r = api.json(&format!("/api/analytics/retention?{q}"));
        let day = |d: i64| {
            r["cohorts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["day"] == date(d))
                .cloned()
                .unwrap_or_else(|| panic!("no {}: {r}", date(d)))
        };
        assert_eq!((&day(t - 2)["total"], &day(t - 2)["d1"]), (&json!(3), &json!(66.67)), "from {start}: {r}");
        if start <= t - 3 {
            assert_eq!((&day(t - 3)["total"], &day(t - 3)["d1"]), (&json!(4), &json!(50.0)), "from {start}: {r}");
        }
        if start <= t - 8 {
            assert_eq!((&day(t - 8)["total"], &day(t - 8)["d7"]), (&json!(1), &json!(100.0)), "{r}");
            assert_eq!((&day(t - 10)["total"], &day(t - 10)["d1"]), (&json!(1), &json!(0.0)), "{r}");
        }
    }
    // L, the last complete day, must lie in the range: a range of today only, or of the
    // future, has none (not yesterday's figures); one that ends today has yesterday.
    let rates = |start: i64, end: i64| {
        let o =
            api.json(&format!("/api/analytics/overview?game_id=g1&env=ret&start={}&end={}", date(start), date(end)));
        (o["d1"].clone(), o["d7"].clone(), o["d30"].clone())
    };
    let none = (json!(0.0), json!(0.0), json!(0.0));
    assert_eq!(rates(t, t), none);
    assert_eq!(rates(t + 400, t + 401), none);
    assert_eq!(rates(t - 1, t), (json!(66.67), json!(100.0), json!(0.0)));
}

/// Payments: totals (refund and refunded both refunds, duplicates read once), breakdowns,
/// transactions paged, product trend.
#[test]
fn analytics_payments_are_exact() {
    let api = Api::start();
    let h = &api.history;
    let (first, last) = (h.today - HISTORY_DAYS, h.today - 1);
    let range = format!("game_id=g1&env=prod&start={}&end={}", date(first), date(last));
    let v = api.json(&format!("/api/analytics/payments/summary?{range}"));
    let sum = |f: &dyn Fn(&Payment) -> bool| h.payments.iter().filter(|p| f(p)).map(|p| p.amount).sum::<u64>();
    let count = |f: &dyn Fn(&Payment) -> bool| h.payments.iter().filter(|p| f(p)).count() as u64;
    let is_refund = |p: &Payment| p.status == "refund" || p.status == "refunded";
    let succ = count(&|p| p.status == "success");
    // Croupier's total: every row, refunds included (`count()`).
    let total = count(&|_| true);
    assert!(count(&|p| p.status == "refund") > 0 && count(&|p| p.status == "refunded") > 0);
    assert_eq!(
        v["totals"],
        json!({
            "revenue_cents": sum(&|p| p.status == "success"),
            "refunds_cents": sum(&is_refund),
            "failed": total - succ,
            "success_rate": percent(succ, total),
        })
    );
    let mut by_channel: Vec<Value> = CHANNELS
        .iter()
        .map(|c| {
            let s = count(&|p| p.channel == *c && p.status == "success");
            let n = count(&|p| p.channel == *c);
            json!({"channel": c, "revenue_cents": sum(&|p| p.channel == *c && p.status == "success"),
                   "success": s, "total": n, "success_rate": percent(s, n)})
        })
        .collect();
    by_channel.sort_by(|a, b| {
        b["revenue_cents"]
            .as_u64()
            .cmp(&a["revenue_cents"].as_u64())
            .then(a["channel"].as_str().cmp(&b["channel"].as_str()))
    });
    assert_eq!(v["by_channel"], Value::Array(by_channel));
    assert_eq!(v["by_product"].as_array().unwrap().len(), 2);
    assert_eq!(v["truncated"], json!(false));

    let t = api.json(&format!("/api/analytics/payments/transactions?{range}&status=refund&size=5&page=2"));
    let refunds = count(&is_refund);
    assert_eq!(t["total"], refunds);
    let mut sorted: Vec<&Payment> = h.payments.iter().filter(|p| is_refund(p)).collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then(a.order.cmp(&b.order)));
    let page: Vec<Value> = t["transactions"].as_array().unwrap().clone();
    let want: Vec<String> = sorted.iter().skip(5).take(5).map(|p| p.order.clone()).collect();
    let got: Vec<String> = page.iter().map(|r| r["order_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, want);

    let trend =
        api.json(&format!("/api/analytics/payments/product_trend?{range}&product_id=pass,gems&granularity=hour"));
    let products = trend["products"].as_array().unwrap();
    assert_eq!(products[0]["product_id"], "pass");
    let pass_rev: u64 =
        products[0]["points"].as_array().unwrap().iter().map(|p| p["revenue_cents"].as_u64().unwrap()).sum();
    assert_eq!(pass_rev, sum(&|p| p.product == "pass" && p.status == "success"));
    let pass_total: u64 = products[0]["points"].as_array().unwrap().iter().map(|p| p["total"].as_u64().unwrap()).sum();
    assert_eq!(pass_total, count(&|p| p.product == "pass"));
    let r = api.get(&format!("/api/analytics/payments/product_trend?{range}"), &admin());
    assert_eq!((r.status, r.error_tag()), (400, "invalid_parameter".to_owned()));
    // Products in request order, one without payments with no points.
    let trend = api
        .json(&format!("/api/analytics/payments/product_trend?{range}&product_id=nothing,gems,pass&granularity=hour"));
    let ids: Vec<&str> =
        trend["products"].as_array().unwrap().iter().map(|p| p["product_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["nothing", "gems", "pass"]);
    assert_eq!(trend["products"][0]["points"], json!([]));
    assert_eq!(trend["products"][2]["points"], products[0]["points"]);
    // A product listed twice has its points both times.
    let twice =
        api.json(&format!("/api/analytics/payments/product_trend?{range}&product_id=pass,gems,pass&granularity=hour"));
    assert_eq!(twice["products"][0]["points"], products[0]["points"]);
    assert_eq!(twice["products"][2]["points"], products[0]["points"]);
    assert_eq!(twice["products"][1]["points"], trend["products"][1]["points"]);
}

/// An order stored again at a later time (a client's retry stamped anew, across midnight
/// and a month) counts on the day of its last stored row only, in every report of
/// payments: `FINAL` runs over whole orders before the range is applied
/// (docs/aggregation.md), so day by day the figures add up to the range's. Merges are
/// stopped: the two rows stay apart, as they are until ClickHouse merges them.
#[test]
fn analytics_an_order_stored_again_later_counts_on_its_latest_day_only() {
    let api = Api::start();
    let today = api.history.today;
    // Across a month boundary (each month its own partition), the latest month's first
    // day at most today: the order's rows are never merged into one.
    let first = (0..62).map(|k| today - k).find(|d| date(*d).ends_with("-01") && *d < today).unwrap_or(today - 1);
    let (d1, d2) = (first - 1, first);
    api.ch.query("SYSTEM STOP MERGES analytics.payments");
    // Two inserts: the second row is the order's latest.
    for d in [d1, d2] {
        api.ch.query(&format!(
            "INSERT INTO analytics.payments ({PAYMENT_COLUMNS}) FORMAT TabSeparated\n\
             {}\tg1\tmoved\tu1\tmv1\t1000\tUSD\tsuccess\tweb\tios\tUS\t\t\tgems\t\n",
            d * DAY + 500
        ));
    }
    let scope = "game_id=g1&env=moved";
    let day = |a: i64, b: i64| format!("{scope}&start={}&end={}", date(a), date(b));
    for (a, b, want) in [(d1, d1, 0), (d2, d2, 1000), (d1, d2, 1000)] {
        let range = day(a, b);
        let v = api.json(&format!("/api/analytics/payments/summary?{range}"));
        assert_eq!(v["totals"]["revenue_cents"], want, "summary {range}");
        let t = api.json(&format!("/api/analytics/payments/transactions?{range}"));
        assert_eq!(t["total"], u64::from(want > 0), "transactions {range}");
        let trend = api.json(&format!("/api/analytics/payments/product_trend?{range}&product_id=gems"));
        let cents: u64 = trend["products"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["revenue_cents"].as_u64().unwrap())
            .sum();
        assert_eq!(cents, want, "product_trend {range}");
        let o = api.json(&format!("/api/analytics/overview?{range}"));
        assert_eq!(o["revenue_cents"], want, "overview {range}");
        let series = api.json(&format!(
            "/api/analytics/realtime/series?{scope}&start={}T00:00:00Z&end={}T23:59:00Z",
            date(a),
            date(b)
        ));
        let cents: u64 = series["revenue_cents"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(cents, want, "realtime/series {range}");
    }
    let t = api.json(&format!("/api/analytics/payments/transactions?{}", day(d1, d2)));
    assert_eq!(t["transactions"][0]["time"], format!("{}T00:08:20Z", date(d2)));
}

/// The API keeps idle ClickHouse connections: after a restart of the server every one of
/// them is closed, and the next request's queries, sent on them, are sent again on new
/// connections rather than answered 502.
#[test]
fn analytics_answers_after_a_clickhouse_restart_and_hides_its_address_when_it_is_gone() {
    let mut api = Api::start();
    let h = &api.history;
    let path = format!(
        "/api/analytics/payments/summary?game_id=g1&env=prod&start={}&end={}",
        date(h.today - 9),
        date(h.today - 1)
    );
    let before = api.json(&path);
    api.ch.restart();
    let r = api.get(&path, &admin());
    assert_eq!(r.status, 200, "{}", r.text());
    let after: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(after, before);
    // ClickHouse gone: 502, whose body names neither its address nor its error text.
    api.ch.stop();
    let r = api.get(&path, &admin());
    let port = api.ch.addr().rsplit(':').next().unwrap_or_default().to_owned();
    assert_eq!((r.status, r.error_tag()), (502, "query_failed".to_owned()), "{}", r.text());
    assert!(!r.text().contains(&port) && !r.text().contains("127.0.0.1"), "{}", r.text());
    assert_eq!(r.text(), r#"{"error":"query_failed","message":"query failed: ClickHouse unavailable"}"#);
}

/// The first realtime requests after a Redis restart are answered (its reads are sent
/// again while the client reconnects), with the figures Redis holds.
#[test]
fn analytics_realtime_answers_after_a_redis_restart() {
    let mut api = Api::start();
    let path = "/api/analytics/realtime?game_id=g1&env=prod";
    let before = api.json(path);
    api.redis.restart();
    for _ in 0..3 {
        let r = api.get(path, &admin());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The history's keys were not persisted: the figures read are the restarted Redis's.
    assert!(before.get("online").is_some(), "{before}");
}

/// A refusal's status, tag and field.
fn refusal(api: &Api, path: &str) -> (u16, String, Option<String>) {
    let r = api.get(path, &admin());
    let v: Value = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
    (r.status, r.error_tag(), v["field"].as_str().map(str::to_owned))
}

/// Times outside ClickHouse's `DateTime` (1970-01-01 .. 2105-12-31) and requests past a
/// route's caps are refused with 400 naming the field, never answered with wrapped times
/// or a failed query.
#[test]
fn analytics_refuses_times_outside_datetime_and_requests_past_the_caps() {
    let api = Api::start();
    let bad = |field: &str| (400, "invalid_parameter".to_owned(), Some(field.to_owned()));
    for (query, field) in [
        ("start=1969-12-31&end=1970-01-05", "start"),
        ("start=1969-12-31T23:59:59Z&end=1970-01-05", "start"),
        ("start=-0001-01-01&end=1970-01-05", "start"),
        ("start=2025-01-01&end=2150-01-01", "end"),
        ("end=2106-01-01", "end"),
    ] {
        for route in ["overview", "payments/summary", "ltv", "segments", "behavior/events"] {
            let path = format!("/api/analytics/{route}?game_id=g1&env=prod&{query}");
            assert_eq!(refusal(&api, &path), bad(field), "{path}");
        }
    }
    // The first and last days ClickHouse holds are answered.
    for route in ["overview", "payments/summary", "ltv", "segments"] {
        api.json(&format!("/api/analytics/{route}?game_id=g1&env=prod&start=1970-01-01&end=1970-01-03"));
        api.json(&format!("/api/analytics/{route}?game_id=g1&env=prod&start=2105-12-01&end=2105-12-31"));
    }
    // Segments read every active user of the range: at most 366 days, both ends included,
    // as the cohorts and attribution (2024 has 366).
    for route in ["segments", "retention", "ltv", "attribution"] {
        let path = format!("/api/analytics/{route}?game_id=g1&env=prod&start=2024-01-01&end=2025-01-01");
        assert_eq!(refusal(&api, &path), bad("start"), "{route}");
        api.json(&format!("/api/analytics/{route}?game_id=g1&env=prod&start=2024-01-01&end=2024-12-31"));
    }
    // Series: at most 100,000 points (products × buckets, minutes).
    let products = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",");
    let trend = |n: usize, start: &str, granularity: &str| {
        format!(
            "/api/analytics/payments/product_trend?game_id=g1&env=prod&product_id={}&start={start}&end=2025-12-31&granularity={granularity}",
            products(n)
        )
    };
    // 100 products by minute over 41 days: by hour they fit, so `granularity` is named;
    // over a year neither fits.
    assert_eq!(refusal(&api, &trend(100, "2025-11-21", "minute")), bad("granularity"));
    assert_eq!(refusal(&api, &trend(100, "2025-01-01", "minute")), bad("start"));
    assert_eq!(refusal(&api, &trend(100, "2025-01-01", "hour")), bad("start"));
    // 100 products × 1,000 hours (41 days and 16 hours) is the cap.
    api.json(&trend(100, "2025-11-20T08:00:00Z", "hour"));
    assert_eq!(refusal(&api, &trend(100, "2025-11-20T07:59:59Z", "hour")), bad("start"));
    api.json(&trend(1, "2025-11-01", "minute"));
    let series =
        |start: &str| format!("/api/analytics/realtime/series?game_id=g1&env=prod&start={start}&end=2025-12-31");
    assert_eq!(refusal(&api, &series("2025-01-01")), bad("start"));
    api.json(&series("2025-11-01"));
    // Adoption: at most 50 features.
    let features = |n: usize| (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",");
    for route in ["adoption", "adoption_breakdown"] {
        let path = format!("/api/analytics/behavior/{route}?game_id=g1&env=prod&features={}", features(51));
        assert_eq!(refusal(&api, &path), bad("features"), "{route}");
        api.json(&format!("/api/analytics/behavior/{route}?game_id=g1&env=prod&features={}", features(50)));
    }
}

/// Realtime figures come from the HyperLogLogs in Redis and today's payments.
#[test]
fn analytics_realtime_reads_the_sketches() {
    let api = Api::start();
    let now = croupier_dataplane::analytics::now_secs();
    let minute = |secs: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
        format!("{:04}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
    };
    let mut c = api.redis.client();
    // Users 0..10 now, 5..20 two minutes ago, 100..110 ten minutes ago.
    let add = |c: &mut croupier_it::redis::RedisClient, secs: i64, users: std::ops::Range<u32>| {
        let mut args = vec!["PFADD".to_owned(), format!("hll:online:g1:prod:{}", minute(secs))];
        args.extend(users.map(|u| format!("u{u}")));
        c.cmd(&args);
    };
    // The live figures are per game and env: a request without them is refused by name.
    for (path, field) in [("/api/analytics/realtime?game_id=g1", "env"), ("/api/analytics/realtime", "game_id")] {
        let r = api.get(path, &admin());
        let v: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!((r.status, v["error"].as_str(), v["field"].as_str()), (400, Some("invalid_parameter"), Some(field)));
    }
    add(&mut c, now, 0..10);
    add(&mut c, now - 120, 5..20);
    add(&mut c, now - 600, 100..110);
    let today = date(now.div_euclid(DAY));
    c.cmd(&["PFADD", &format!("hll:dau:g1:prod:{today}"), "a", "b", "c"]);
    c.cmd(&["PFADD", &format!("hll:new:g1:prod:{today}"), "a"]);
    api.ch.query(&format!(
        "INSERT INTO analytics.payments ({PAYMENT_COLUMNS}) FORMAT TabSeparated\n\
         {}\tg1\tprod\tu1\trt1\t500\tUSD\tsuccess\tweb\tios\tUS\t\t\tgems\t\n\
         {}\tg1\tprod\tu2\trt2\t700\tUSD\tfailed\tweb\tios\tUS\t\t\tgems\t\n\
         {}\tg1\tprod\tu1\trt1\t500\tUSD\trefunded\tweb\tios\tUS\t\t\tgems\t\n\
         {}\tg1\tprod\tu3\trt3\t300\tUSD\trefund\tweb\tios\tUS\t\t\tgems\t\n\
         {}\tg1\tprod\tu4\trt4\t40\tUSD\tsuccess\tweb\tios\tUS\t\t\tgems\t\n",
        now - 30,
        now - 20,
        now - 10,
        now - 5,
        // Stamped a minute ahead (a client's clock): counted once stored, as Croupier's
        // windows have no upper bound.
        now + 60
    ));
    api.ch.query(&format!(
        "INSERT INTO analytics.minute_online (m, game_id, env, online) VALUES \
         ({}, 'g1', 'prod', 42), ({}, 'g1', 'prod', 50), ({}, 'g2', 'prod', 99)",
        now.div_euclid(DAY) * DAY,
        now.div_euclid(DAY) * DAY - 60,
        now.div_euclid(DAY) * DAY
    ));
    let v = api.json("/api/analytics/realtime?game_id=g1&env=prod");
    assert_eq!((v["online_peak_today"].as_u64(), v["online_peak_all_time"].as_u64()), (Some(42), Some(50)));
    // The minute may have turned between the PFADDs and the read.
    if minute(croupier_dataplane::analytics::now_secs()) == minute(now) {
        assert_eq!(v["online"], 10);
        assert_eq!(v["active_1m"], 10);
        assert_eq!(v["active_5m"], 20);
        assert_eq!(v["active_15m"], 30);
    }
    assert_eq!(v["dau_today"], 3);
    assert_eq!(v["new_today"], 1);
    assert_eq!(v["rev_5m"], 540);
    assert_eq!(v["rev_5m_yuan"], "5.40");
    // Croupier's rate: successes over every row of the 5 minutes, refunds included.
    assert_eq!(v["pay_succ_rate"], 40.0);
    assert_eq!(v["registered_total"], PLAYERS);
    // A minute of the last 15 with more players than the stored peaks (not written to
    // `minute_online` yet: the worker writes it later): the peaks do not wait for it, and
    // do not dip when a minute turns.
    add(&mut c, now - 180, 200..260);
    let v = api.json("/api/analytics/realtime?game_id=g1&env=prod");
    let today_too = now - 180 >= now.div_euclid(DAY) * DAY;
    let want_today = if today_too { 60 } else { 42 };
    assert_eq!((v["online_peak_today"].as_u64(), v["online_peak_all_time"].as_u64()), (Some(want_today), Some(60)));

    // Redis lost today's keys, but `daily_users` keeps the day's figures (the worker never
    // writes them lower): they are the floor of the live ones. Another game's row counts
    // nowhere here.
    c.cmd(&["DEL", &format!("hll:dau:g1:prod:{today}"), &format!("hll:new:g1:prod:{today}")]);
    api.ch.query(&format!(
        "INSERT INTO analytics.daily_users (d, game_id, env, dau, new_users, payers, version) VALUES \
         ('{today}', 'g1', 'prod', 500, 40, 3, 1), ('{today}', 'g2', 'prod', 900, 90, 9, 1)"
    ));
    let v = api.json("/api/analytics/realtime?game_id=g1&env=prod");
    assert_eq!((v["dau_today"].as_u64(), v["new_today"].as_u64()), (Some(500), Some(40)));

    // A series of 15 minutes: two writes of one minute, the latest wins. Two hours before
    // today's midnight, away from the peaks' rows written above around it (a run just
    // after midnight found them in a window of the last 20 minutes).
    let m0 = now.div_euclid(DAY) * DAY - 7200;
    api.ch.query(&format!(
        "INSERT INTO analytics.minute_online (m, game_id, env, online, version) VALUES \
         ({m0}, 'g1', 'prod', 3, 1), ({m0}, 'g1', 'prod', 4, 2), ({}, 'g1', 'prod', 6, 1), ({}, 'g1', 'prod', 8, 1), \
         ({}, 'g2', 'prod', 99, 1)",
        m0 + 60,
        m0 + 600,
        m0 + 60
    ));
    let rfc = |t: i64| {
        let d = time::OffsetDateTime::from_unix_timestamp(t).unwrap();
        format!("{}T{:02}:{:02}:00Z", date(t.div_euclid(DAY)), d.hour(), d.minute())
    };
    let v = api.json(&format!(
        "/api/analytics/realtime/series?game_id=g1&env=prod&start={}&end={}",
        rfc(m0 - 60),
        rfc(m0 + 900)
    ));
    assert_eq!(v["online"], json!([[rfc(m0), 4], [rfc(m0 + 60), 6], [rfc(m0 + 600), 8]]));
    assert_eq!(v["active_5m_sum"], json!([[rfc(m0), 4], [rfc(m0 + 60), 10], [rfc(m0 + 600), 18]]));
    assert_eq!(api.get("/api/analytics/realtime/series?game_id=g1", &admin()).status, 400);
}

/// `/realtime` on a Redis Cluster: the 15 minute keys `hll:online:g:e:YYYYMMDDHHmm` lie
/// in several slots (no hash tag), so one `PFCOUNT` over them would be refused
/// (`CROSSSLOT`). The figures equal Redis's `PFCOUNT` of the same unions (the same adds
/// made on a single Redis) and, the players being few thousand, the players sent to within
/// 2 %. With a primary frozen, the answer is 504 `query_timeout` at the request's deadline
/// (`api.query_timeout_ms`), not a 502 after Redis's much longer reply timeout.
#[test]
fn analytics_realtime_on_a_redis_cluster() {
    let cluster = RedisCluster::primaries_only(3);
    let seeds = cluster.seeds();
    let api = Api::start_configured(
        false,
        |_| {},
        |_, config| {
            config.redis.addr = "127.0.0.1:1".into();
            config.redis.cluster = seeds;
            config.redis.reply_timeout_ms = 60_000;
            config.api.query_timeout_ms = 4_000;
        },
    );
    api.wait_redis();
    let minute = |secs: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
        format!("{:04}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
    };
    // Far enough from the next minute that the adds and the read fall in this one.
    while croupier_dataplane::analytics::now_secs().rem_euclid(60) > 40 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = croupier_dataplane::analytics::now_secs();
    // Minute i back holds players 200 i .. 200 i + 400: overlapping sets, 3,200 in all.
    let keys: Vec<String> = (0..15).map(|i| format!("hll:online:g1:prod:{}", minute(now - 60 * i))).collect();
    let mut single = api.redis.client();
    for (i, key) in keys.iter().enumerate() {
        let mut args = vec!["PFADD".to_owned(), key.clone()];
        args.extend((200 * i..200 * i + 400).map(|u| format!("p{u}")));
        let n = cluster.primary_of(key).expect("a primary for the key");
        cluster.nodes[n].client().cmd(&args);
        single.cmd(&args);
    }
    let owners: BTreeSet<usize> = keys.iter().map(|k| cluster.primary_of(k).expect("served")).collect();
    assert!(owners.len() > 1, "the minute keys lie on several primaries: {owners:?}");
    let today = date(now.div_euclid(DAY));
    let dau = format!("hll:dau:g1:prod:{today}");
    let n = cluster.primary_of(&dau).expect("a primary");
    cluster.nodes[n].client().cmd(&["PFADD", &dau, "a", "b", "c"]);
    // Redis's own count of each union, on the single Redis.
    let mut want = Vec::new();
    for n in [1, 5, 15] {
        let mut args = vec!["PFCOUNT".to_owned()];
        args.extend(keys[..n].iter().cloned());
        match single.cmd(&args) {
            croupier_protocol::resp::Frame::Integer(c) => want.push(c as u64),
            other => panic!("PFCOUNT: {other:?}"),
        }
    }
    let v = api.json("/api/analytics/realtime?game_id=g1&env=prod");
    assert_eq!(minute(croupier_dataplane::analytics::now_secs()), minute(now), "the minute turned during the test");
    let got = [v["online"].as_u64(), v["active_5m"].as_u64(), v["active_15m"].as_u64()];
    assert_eq!(got, [Some(want[0]), Some(want[1]), Some(want[2])], "{v}");
    assert_eq!(v["active_1m"], v["online"]);
    for (count, sent) in [(want[0], 400.0), (want[1], 1_200.0), (want[2], 3_200.0)] {
        assert!((count as f64 - sent).abs() <= sent * 0.02, "{count} counted for {sent} players");
    }
    assert_eq!(v["dau_today"], 3);
    eprintln!("cluster realtime: online/5m/15m = {got:?} for 400/1200/3200 players, on {} primaries", owners.len());

    // One primary frozen: its GETs go unanswered; the request ends at its deadline.
    let frozen = cluster.primary_of(&keys[0]).expect("a primary");
    let pid = cluster.nodes[frozen].pid().expect("running").to_string();
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, pid.as_str()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    };
    kill("-STOP");
    let started = Instant::now();
    let r = api.get("/api/analytics/realtime?game_id=g1&env=prod", &admin());
    let took = started.elapsed();
    kill("-CONT");
    assert_eq!((r.status, r.error_tag()), (504, "query_timeout".to_owned()), "{}", r.text());
    assert!(took < Duration::from_secs(15), "answered after {took:?}");
}

/// No token, expired, bad signature, unknown key, wrong role, wrong game: 401/403 as
/// JSON; RS256 from the JWKS file; every access in the audit log.
#[test]
fn analytics_auth_is_enforced_and_audited() {
    let api = Api::start();
    let path = "/api/analytics/overview?game_id=g1&env=prod";
    let check = |token: &str, status: u16, tag: &str| {
        let r = api.get(path, token);
        assert_eq!((r.status, r.error_tag()), (status, tag.to_owned()), "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            (r.header("cache-control"), r.header("x-content-type-options")),
            (Some("no-store"), Some("nosniff"))
        );
    };
    check("", 401, "unauthorized");
    check("not-a-jwt", 401, "unauthorized");
    check(&hs256(json!({"sub":"a","roles":["admin"],"exp":exp() - 7200}), SECRET), 401, "unauthorized");
    check(&hs256(json!({"sub":"a","roles":["admin"],"exp":exp()}), "wrong-secret"), 401, "unauthorized");
    check(&hs256(json!({"sub":"a","roles":["admin"]}), SECRET), 401, "unauthorized");
    check(&hs256(json!({"sub":"a","roles":["guest"],"exp":exp()}), SECRET), 403, "forbidden");
    check(&hs256(json!({"sub":"a","roles":["nobody"],"exp":exp()}), SECRET), 403, "forbidden");
    let g2 = hs256(json!({"sub":"bob","roles":["viewer"],"games":["g2"],"exp":exp()}), SECRET);
    check(&g2, 403, "forbidden");
    assert_eq!(api.get("/api/analytics/overview", &g2).status, 403, "a limited token must name its game");
    assert_eq!(api.get("/api/analytics/overview?game_id=g2", &g2).status, 200);

    let rs = |pem: &[u8], kid: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        encode(&h, &json!({"sub":"carol","roles":["analyst"],"exp":exp()}), &EncodingKey::from_rsa_pem(pem).unwrap())
            .unwrap()
    };
    assert_eq!(api.get(path, &rs(&api.rsa_pem, "k1")).status, 200);
    check(&rs(&api.other_rsa_pem, "k1"), 401, "unauthorized");
    check(&rs(&api.rsa_pem, "k9"), 401, "unauthorized");
    // Health stays open.
    assert_eq!(api.get("/healthz", "").status, 200);
    // A `games` claim written as one string: `"*"` reads every game, `"g2"` that one.
    let star = hs256(json!({"sub":"fay","roles":["viewer"],"games":"*","exp":exp()}), SECRET);
    assert_eq!(api.get("/api/analytics/filters", &star).status, 200);
    assert_eq!(api.get("/api/analytics/filters?game_id=g1", &star).status, 200);
    let only = hs256(json!({"sub":"gus","roles":["viewer"],"games":"g2","exp":exp()}), SECRET);
    assert_eq!(api.get("/api/analytics/filters?game_id=g2", &only).status, 200);
    let r = api.get("/api/analytics/filters?game_id=g1", &only);
    assert_eq!((r.status, r.error_tag()), (403, "forbidden".to_owned()), "{}", r.text());

    // CSV export needs analytics:export besides analytics:read: a viewer may read the
    // segments, not export them; an analyst may (and gets the JSON's figures).
    let segments = "/api/analytics/segments?game_id=g1&env=prod";
    let viewer = hs256(json!({"sub":"dan","roles":["viewer"],"exp":exp()}), SECRET);
    let analyst = hs256(json!({"sub":"eve","roles":["analyst"],"exp":exp()}), SECRET);
    assert_eq!(api.get(segments, &viewer).status, 200);
    let r = api.get(&format!("{segments}&format=csv"), &viewer);
    let e: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!((r.status, e["permission"].as_str()), (403, Some("analytics:export")), "{}", r.text());
    let r = api.get(&format!("{segments}&format=csv"), &analyst);
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/csv; charset=utf-8")));
    assert_eq!((r.header("cache-control"), r.header("x-content-type-options")), (Some("no-store"), Some("nosniff")));
    let json = api.json(segments);
    let mut want = String::from("arpu,name,ratio,users\r\n");
    for s in json["segments"].as_array().unwrap() {
        want.push_str(&format!("{},{},{},{}\r\n", s["arpu"], s["name"].as_str().unwrap(), s["ratio"], s["users"]));
    }
    assert_eq!(r.text(), want);
    let r = api.get("/api/analytics/levels?game_id=g1&env=prod&format=csv", &analyst);
    assert_eq!((r.status, r.error_tag()), (400, "invalid_parameter".to_owned()));

    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let text = api.ch.query(
            "SELECT user, route, game_id, status FROM analytics.audit_log \
             WHERE route = '/api/analytics/overview' ORDER BY time, user, status FORMAT TabSeparated",
        );
        let rows: Vec<String> = text.lines().map(str::to_owned).collect();
        // wait_redis's realtime reads are audited too; the overview ones are 13.
        if rows.len() >= 13 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(audit.len(), 13, "{audit:?}");
    let count = |s: &str| audit.iter().filter(|r| r.ends_with(s)).count();
    assert_eq!((count("\t401"), count("\t403"), count("\t200")), (7, 4, 2), "{audit:?}");
    assert!(audit.contains(&"carol\t/api/analytics/overview\tg1\t200".to_owned()), "{audit:?}");
    assert!(audit.contains(&"bob\t/api/analytics/overview\tg2\t200".to_owned()), "{audit:?}");

    // A repeated parameter is logged with the value the answer used (the first), and a
    // scope of kilobytes (an unauthenticated request's headers) is cut in the log.
    let r = api.get("/api/analytics/filters?game_id=g2&env=prod&game_id=g1", &only);
    assert_eq!(r.status, 200, "{}", r.text());
    let long = "x".repeat(6 * 1024);
    let r = HttpClient::connect(api.addr()).request(
        "GET",
        "/api/analytics/realtime",
        &[("X-Game-ID".to_owned(), long.clone()), ("X-Env".to_owned(), long)],
        b"",
    );
    assert_eq!(r.status, 401);
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let text = api.ch.query(
            "SELECT params, game_id, length(game_id), length(env) FROM analytics.audit_log \
             WHERE user = 'gus' AND params LIKE '%prod%' OR user = '' AND route = '/api/analytics/realtime' \
             ORDER BY user DESC FORMAT TabSeparated",
        );
        let rows: Vec<String> = text.lines().map(str::to_owned).collect();
        if rows.len() >= 2 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(logged.len(), 2, "{logged:?}");
    let used: Vec<&str> = logged[0].split('\t').collect();
    let params: Value = serde_json::from_str(used[0]).unwrap();
    assert_eq!((params, &used[1..]), (json!({"game_id": "g2", "env": "prod"}), &["g2", "2", "4"][..]), "{logged:?}");
    let cut: Vec<&str> = logged[1].split('\t').collect();
    assert!(cut[2].parse::<usize>().unwrap() <= 256 && cut[3].parse::<usize>().unwrap() <= 256, "{:?}", &cut[2..]);
}

/// A request to an API route refused before the API read it — a method the route does not
/// take (405), a body past its limit (413), a header sent twice (400) — keeps the API's
/// contract: `no-store` and `nosniff`, a count in `croupier_api_requests_total`, a row in
/// the audit log (black-box finding: none of the three).
#[test]
fn analytics_refusals_before_the_api_keep_its_contract() {
    let api = Api::start_after(false, |_| {});
    let auth = ("Authorization".to_owned(), format!("Bearer {}", admin()));
    let send = |method: &str, path: &str, headers: &[(String, String)], body: &[u8]| {
        HttpClient::connect(api.addr()).request(method, path, headers, body)
    };
    fn private(r: &Reply) -> (Option<&str>, Option<&str>) {
        (r.header("cache-control"), r.header("x-content-type-options"))
    }
    let r = send("POST", "/api/analytics/overview?game_id=g1", std::slice::from_ref(&auth), b"{}");
    assert_eq!((r.status, r.error_tag(), r.header("allow")), (405, "method_not_allowed".to_owned(), Some("GET, HEAD")));
    assert_eq!(private(&r), (Some("no-store"), Some("nosniff")));
    let big = vec![b' '; 80 * 1024];
    let json = ("Content-Type".to_owned(), "application/json".to_owned());
    let r = send("POST", "/api/analytics/filters", &[auth.clone(), json], &big);
    assert_eq!((r.status, r.error_tag()), (413, "payload_too_large".to_owned()), "{}", r.text());
    assert_eq!(private(&r), (Some("no-store"), Some("nosniff")));
    let r = send("GET", "/api/analytics/realtime", &[auth.clone(), auth.clone()], b"");
    assert_eq!((r.status, r.error_tag()), (400, "bad_request".to_owned()), "{}", r.text());
    assert_eq!(private(&r), (Some("no-store"), Some("nosniff")));
    let r = send("PUT", "/api/agent/analytics_filters", &[], b"");
    assert_eq!((r.status, private(&r)), (405, (Some("no-store"), Some("nosniff"))));
    // Paths that are not the API's keep the HTTP layer's answer.
    let r = send("POST", "/healthz", &[], b"");
    assert_eq!((r.status, r.header("cache-control")), (405, None));

    let text = api.get("/metrics", "").text();
    let count = |route: &str, status: u16| {
        let series = format!(r#"croupier_api_requests_total{{route="{route}",status="{status}"}}"#);
        crate::metrics::sample(&text, &series).unwrap_or(0.0) as usize
    };
    assert_eq!(
        (
            count("/api/analytics/overview", 405),
            count("/api/analytics/filters", 413),
            count("/api/analytics/realtime", 400)
        ),
        (1, 1, 1),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let text = api.ch.query(
            "SELECT user, route, status FROM analytics.audit_log WHERE status IN (400, 405, 413) \
             ORDER BY route FORMAT TabSeparated",
        );
        let rows: Vec<String> = text.lines().map(str::to_owned).collect();
        if rows.len() >= 3 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The duplicate's row names the token read before the second one.
    assert_eq!(
        audit,
        [
            "alice\t/api/analytics/filters\t413",
            "alice\t/api/analytics/overview\t405",
            "alice\t/api/analytics/realtime\t400"
        ],
        "{audit:?}"
    );
}

/// An `exp` or `nbf` that is not a unix second (a JSON integer) is refused with 401
/// `unauthorized`, a fraction however small (the JWT crate alone rounds it and accepts).
#[test]
fn analytics_refuses_an_exp_or_nbf_that_is_not_a_unix_second() {
    let api = Api::start_after(false, |_| {});
    let status = |claims: Value| {
        let r = api.get("/api/analytics/filters?game_id=g1", &hs256(claims, SECRET));
        (r.status, r.error_tag())
    };
    let now = croupier_dataplane::analytics::now_secs();
    let refused = (401, "unauthorized".to_owned());
    assert_eq!(status(json!({"sub":"a","roles":["admin"],"exp":now as f64 + 100.5})), refused);
    assert_eq!(status(json!({"sub":"a","roles":["admin"],"exp":(now + 100) as f64})), refused);
    assert_eq!(status(json!({"sub":"a","roles":["admin"],"exp":now + 100,"nbf":now as f64 - 10.5})), refused);
    assert_eq!(status(json!({"sub":"a","roles":["admin"],"exp":now + 100,"nbf":now - 10})), (200, String::new()));
}

/// The audit log's `read_rows` of an answer is the rows every query of it read, summed
/// (the overview sends seven), as ClickHouse logged them.
#[test]
fn analytics_audit_counts_the_rows_every_query_read() {
    let api = Api::start_with(true);
    let h = &api.history;
    api.json(&format!(
        "/api/analytics/overview?game_id=g1&env=prod&start={}&end={}",
        date(h.today - 9),
        date(h.today - 1)
    ));
    let logged = || -> u64 {
        api.ch.query("SYSTEM FLUSH LOGS");
        api.ch
            .query(
                "SELECT sum(read_rows) FROM system.query_log WHERE type = 2 AND interface = 1 \
                 AND query LIKE 'SELECT %' AND ((query LIKE '%analytics.%' AND query NOT LIKE '%system.%') \
                 OR query LIKE 'SELECT count() FROM system.tables %user_days_filled%')",
            )
            .trim()
            .parse()
            .unwrap()
    };
    let audited = || -> (u64, u64) {
        let t = api.ch.query("SELECT count(), sum(read_rows) FROM analytics.audit_log");
        let mut f = t.trim().split('\t').map(|v| v.parse::<u64>().unwrap());
        (f.next().unwrap(), f.next().unwrap())
    };
    let overview = || api.ch.query("SELECT count() FROM analytics.audit_log WHERE route = '/api/analytics/overview'");
    let deadline = Instant::now() + Duration::from_secs(10);
    while overview().trim() != "1" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every answer so far (the harness's realtime reads and the overview) against every
    // query they sent.
    let (answers, read) = audited();
    assert!(answers >= 1 && read > 0, "{answers} answers, {read} rows");
    let detail = api.ch.query(
        "SELECT read_rows, substring(query, 1, 120) FROM system.query_log WHERE type = 2 AND interface = 1 \
         AND query LIKE 'SELECT %' FORMAT TabSeparated",
    );
    assert_eq!(read, logged(), "the audit log's read_rows against system.query_log:\n{detail}");
}

/// Injection attempts as values are literals on the real server; as identifiers they
/// are refused.
#[test]
fn analytics_sql_escaping_holds_against_injection() {
    let api = Api::start();
    let corpus = [
        "'",
        "''",
        "\\",
        "\\'",
        "' OR 1=1 --",
        "'; DROP TABLE analytics.events; --",
        "g1' OR game_id != '",
        "\\\\'",
        "x\0y",
        "line\nbreak",
        "tab\there",
        "\r\n",
        "' UNION SELECT * FROM system.users --",
        "/* c */",
        "`backtick`",
        "\"double\"",
        "$$dollar$$",
        "\u{7f}",
        "ünïcödé ' 🎲",
        "\\x27",
        "%27",
        "' FORMAT JSON",
    ];
    let answers = block_on(ActiveDriver::Epoll, async {
        let mut c = Connection::connect(&ch_options(&api.ch)).await.expect("connect");
        let mut out = BTreeMap::new();
        for p in corpus {
            let s = c.select(&format!("SELECT {}", quote(p)), &[]).await.expect(p);
            out.insert(p, s.rows[0][0].as_str());
        }
        out
    })
    .unwrap();
    for (p, got) in answers {
        assert_eq!(got, p, "a literal must read back as itself");
    }
    // A value that is only white space is no filter at all (parameters are trimmed).
    for p in corpus.iter().filter(|p| !p.trim().is_empty()) {
        let q: String = form_encode(p);
        let r = api.get(&format!("/api/analytics/payments/transactions?game_id={q}&channel={q}&status={q}"), &admin());
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        let v: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(v["total"], 0, "{p}");
    }
    assert_eq!(api.ch.query("SELECT count() > 0 FROM analytics.events"), "1\n", "the table is still there");
}

fn form_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Behavior: events with a prop filter (paged, duplicates once), funnels in every mode,
/// paths per session.
#[test]
fn analytics_behavior_is_exact() {
    let api = Api::start();
    let h = &api.history;
    let (first, last) = (h.today - 20, h.today - 1);
    let range = format!("game_id=g1&env=prod&start={}&end={}", date(first), date(last));
    let in_range = |t: i64| t >= first * DAY && t < (last + 1) * DAY;

    let mut clears: Vec<&Ev> = h
        .events
        .iter()
        .filter(|e| in_range(e.0) && e.3 == "level_clear" && e.4.starts_with(r#"{"level":"3""#))
        .collect();
    clears.sort_by(|a, b| b.0.cmp(&a.0).then(a.5.cmp(&b.5)));
    let v = api.json(&format!(
        "/api/analytics/behavior/events?{range}&event=level_clear&prop_key=level&prop_val=3&size=7&page=2"
    ));
    assert_eq!(v["total"], clears.len());
    let want: Vec<Value> = clears
        .iter()
        .skip(7)
        .take(7)
        .map(|e| {
            let t = time::OffsetDateTime::from_unix_timestamp(e.0).unwrap();
            json!({"time": format!("{}T{:02}:{:02}:{:02}Z", date(e.0.div_euclid(DAY)), t.hour(), t.minute(), t.second()),
                   "event": "level_clear", "user_id": format!("u{}", e.1)})
        })
        .collect();
    assert_eq!(v["events"], Value::Array(want));
    // Croupier's defaults for its own out-of-range `page`/`size`: page 1 of 50 rows.
    let all = h.events.iter().filter(|e| in_range(e.0)).count();
    assert!(all > 50, "{all} events: too few to see the default size");
    let default = api.json(&format!("/api/analytics/behavior/events?{range}"));
    assert_eq!(default["events"].as_array().map(Vec::len), Some(50));
    for q in ["size=0&page=0", "size=501&page=-1", "size=-5"] {
        assert_eq!(api.json(&format!("/api/analytics/behavior/events?{range}&{q}")), default, "{q}");
    }
    let r = api.get(&format!("/api/analytics/behavior/events?{range}&prop_key=a'b"), &admin());
    assert_eq!((r.status, r.error_tag()), (400, "invalid_parameter".to_owned()));

    // Per user, the range's events in time order (ties by name, then session).
    let mut seqs: BTreeMap<u64, Vec<(i64, String, String)>> = BTreeMap::new();
    for e in h.events.iter().filter(|e| in_range(e.0)) {
        seqs.entry(e.1).or_default().push((e.0, e.3.clone(), e.2.clone()));
    }
    for s in seqs.values_mut() {
        s.sort();
    }
    let steps = ["register", "login", "level_start", "level_clear"];
    // The best chain from any start: each step the first later event of its name.
    let depth = |seq: &[(i64, String, String)], same: bool, gap: i64| -> usize {
        let mut best = 0;
        for (i, e) in seq.iter().enumerate() {
            if e.1 != steps[0] {
                continue;
            }
            let (mut d, mut prev) = (1, i);
            for name in &steps[1..] {
                let p = seq[prev].clone();
                let found = (prev + 1..seq.len())
                    .take_while(|j| gap == 0 || seq[*j].0 - p.0 <= gap)
                    .find(|j| seq[*j].1 == *name && (!same || seq[*j].2 == p.2));
                match found {
                    Some(j) => {
                        d += 1;
                        prev = j;
                    }
                    None => break,
                }
            }
            best = best.max(d);
        }
        best
    };
    let expect = |same: bool, gap: i64| -> Vec<u64> {
        (1..=steps.len()).map(|k| seqs.values().filter(|s| depth(s, same, gap) >= k).count() as u64).collect()
    };
    let rates = |c: &[u64]| -> Value {
        Value::Array(
            steps.iter().zip(c).map(|(s, n)| json!({"step": s, "users": n, "rate": percent(*n, c[0])})).collect(),
        )
    };
    let base = format!("/api/analytics/behavior/funnel?{range}&steps={}", steps.join(","));
    for (q, same, gap) in [("&sequential=1", false, 0), ("&same_session=1", true, 0), ("&gap_sec=59", false, 59)] {
        let v = api.json(&format!("{base}{q}"));
        let want = expect(same, gap);
        assert!(want[0] > 0, "{q}: {want:?}");
        if gap > 0 {
            assert!(want[2] > want[3], "{q}: the gap cuts some chains: {want:?}");
        }
        assert_eq!(v["steps"], rates(&want), "{q}");
        assert_eq!(v["truncated"], json!(false), "{q}");
    }
    // Past `max_users` the ordered funnel reads the lowest user ids only, and says so.
    let v = api.json(&format!("{base}&sequential=1&max_users=1"));
    assert_eq!(v["truncated"], json!(true), "{v}");
    assert!(v["steps"][0]["users"].as_u64().is_some_and(|n| n <= 1), "{v}");
    // Same session: register is in a session of its own, so nobody goes further.
    assert_eq!(expect(true, 0)[1], 0);
    // Plain: users of step 1 who also did step k in the range, in any order.
    let step1: BTreeSet<u64> =
        seqs.iter().filter(|(_, s)| s.iter().any(|e| e.1 == steps[0])).map(|(u, _)| *u).collect();
    let plain: Vec<u64> =
        steps.iter().map(|st| step1.iter().filter(|u| seqs[*u].iter().any(|e| e.1 == *st)).count() as u64).collect();
    assert_eq!(api.json(&base)["steps"], rates(&plain));

    // Paths per session, 3 steps.
    let mut groups: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for e in h.events.iter().filter(|e| in_range(e.0)) {
        groups.entry(format!("u{}|{}", e.1, e.2)).or_default().push((e.0, e.3.clone()));
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for g in groups.values_mut() {
        g.sort();
        let p: Vec<&str> = g.iter().take(3).map(|e| e.1.as_str()).collect();
        *counts.entry(p.join(">")).or_default() += 1;
    }
    let mut want: Vec<(String, u64)> = counts.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let kept: Vec<Value> = want
        .iter()
        .filter(|(p, _)| p.starts_with("login>") && !p.contains("level_fail"))
        .take(10)
        .map(|(p, n)| json!({"path": p, "groups": n}))
        .collect();
    let want: Vec<Value> = want.into_iter().take(10).map(|(p, n)| json!({"path": p, "groups": n})).collect();
    let v = api.json(&format!("/api/analytics/behavior/paths?{range}&steps=3&limit=10"));
    assert_eq!(v["paths"], Value::Array(want));
    // Filtered by expressions on the path (Go's regexp syntax): %5E is ^.
    let v = api.json(&format!(
        "/api/analytics/behavior/paths?{range}&steps=3&limit=10&path_re=%5Elogin%3E&path_not_re=level_f.il"
    ));
    assert!(!kept.is_empty());
    assert_eq!(v["paths"], Value::Array(kept.clone()));
    // Case-insensitive, as Go's `(?i)`: the same paths.
    let v = api.json(&format!(
        "/api/analytics/behavior/paths?{range}&steps=3&limit=10&path_re=%28%3Fi%29%5ELOGIN%3E&path_not_re=level_f.il"
    ));
    assert_eq!(v["paths"], Value::Array(kept));
    // What Go's parser refuses: 400 naming the parameter.
    for bad in ["(login", "a%7B1001%7D", "x%2A%2A"] {
        let r = api.get(&format!("/api/analytics/behavior/paths?{range}&path_re={bad}"), &admin());
        let e: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!((r.status, e["field"].as_str()), (400, Some("path_re")), "{bad}");
    }

    // Adoption of level_fail and register per user, and broken down by platform.
    let all: BTreeSet<u64> = seqs.keys().copied().collect();
    let did = |name: &str| seqs.iter().filter(|(_, s)| s.iter().any(|e| e.1 == name)).count() as u64;
    let v = api.json(&format!("/api/analytics/behavior/adoption?{range}&features=level_fail,register"));
    let base = all.len() as u64;
    assert_eq!(
        v,
        json!({"features": [
            {"feature": "level_fail", "groups": did("level_fail"), "rate": percent(did("level_fail"), base)},
            {"feature": "register", "groups": did("register"), "rate": percent(did("register"), base)},
        ], "baseline": base})
    );
    let v = api.json(&format!("/api/analytics/behavior/adoption_breakdown?{range}&features=register&by=platform"));
    let rows: Vec<Value> = ["android", "ios"]
        .iter()
        .map(|p| {
            let members: Vec<&u64> = all.iter().filter(|u| (**u % 2 == 0) == (*p == "ios")).collect();
            let n = members.iter().filter(|u| seqs[**u].iter().any(|e| e.1 == "register")).count() as u64;
            json!({"dim": p, "baseline": members.len(), "groups": n, "rate": percent(n, members.len() as u64)})
        })
        .collect();
    assert_eq!(v, json!({"by": "platform", "rows": rows, "truncated": false}));
}

/// Every query the API sends (logged by ClickHouse 18.16 while the routes answer) gives
/// the same rows on a current engine (chdb-core, ClickHouse 26.x) over the same rows,
/// duplicates included, after the same migration.
#[test]
fn analytics_queries_agree_on_a_current_engine() {
    let ok = std::process::Command::new("python3").args(["-c", "import chdb"]).status().is_ok_and(|s| s.success());
    assert!(ok, "python3 with chdb-core is needed (scripts/setup.sh installs it)");
    let api = Api::start_with(true);
    let h = &api.history;
    let range = format!("game_id=g1&env=prod&start={}&end={}", date(h.today - 30), date(h.today - 1));
    api.ch.query(&format!(
        "INSERT INTO analytics.minute_online (m, game_id, env, online) VALUES ({}, 'g1', 'prod', 5)",
        (h.today - 2) * DAY
    ));
    for path in [
        format!("overview?{range}"),
        format!("overview?game_id=g1&env=prod&start={}&end={}", date(h.today - 6), date(h.today)),
        "realtime?game_id=g1&env=prod".to_owned(),
        format!("retention?{range}"),
        format!("retention?{range}&cohort=first_active"),
        format!("payments/summary?{range}&platform=ios"),
        format!("payments/transactions?{range}&status=refunded&page=2&size=3"),
        format!("payments/product_trend?{range}&product_id=gems,pass&granularity=minute"),
        format!("behavior/events?{range}&event=level_start&prop_key=level&prop_val=2"),
        format!("behavior/funnel?{range}&steps=register,login,level_start"),
        format!("behavior/funnel?{range}&steps=login,level_start,level_clear&same_session=1&gap_sec=100"),
        format!("behavior/paths?{range}&per=user&steps=4&exclude=session_start"),
        format!("levels?{range}&episode=e1"),
        format!("behavior/adoption?{range}&features=login,level_fail&per=session"),
        format!("behavior/adoption_breakdown?{range}&features=login,level_fail"),
        format!("levels?{range}"),
        format!("levels/episodes?{range}"),
        format!("ltv?{range}"),
        format!("segments?{range}"),
        format!("attribution?{range}"),
    ] {
        api.json(&format!("/api/analytics/{path}"));
    }
    api.ch.query("SYSTEM FLUSH LOGS");
    let logged = api.ch.query(
        "SELECT DISTINCT query FROM system.query_log WHERE type = 2 AND interface = 1 \
         AND query LIKE 'SELECT %' AND query LIKE '%analytics.%' FORMAT TabSeparatedRaw",
    );
    let queries: Vec<&str> = logged.lines().filter(|l| !l.is_empty()).collect();
    assert!(queries.len() >= 25, "{} queries logged:\n{logged}", queries.len());

    let dir = tempfile::tempdir().unwrap();
    for (table, cols) in
        [("events", EVENT_COLUMNS), ("payments", PAYMENT_COLUMNS), ("minute_online", "m, game_id, env, online")]
    {
        let rows = api.ch.query(&format!("SELECT {cols} FROM analytics.{table} FORMAT TabSeparated"));
        std::fs::write(dir.path().join(format!("{table}.tsv")), rows).unwrap();
        std::fs::write(dir.path().join(format!("{table}.cols")), cols).unwrap();
    }
    std::fs::write(dir.path().join("queries.sql"), queries.join("\n")).unwrap();
    // user_days from the rows loaded, by the worker's fold in SQL (no view fills it).
    std::fs::write(dir.path().join("after_load.sql"), schema::user_days_copy("1 = 1", "")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chdb-queries.py");
    let out = std::process::Command::new("python3").arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let current = std::fs::read_to_string(dir.path().join("results.txt")).unwrap();
    let current: Vec<&str> = current.split("--end--\n").collect();
    // Arrays (groupArray) may list their elements in another order, and rows of a query
    // without ORDER BY come in any order: both compared sorted.
    let normal = |text: &str| -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split('\t')
                    .map(|f| {
                        if f.starts_with('[') && f.ends_with(']') {
                            let mut items: Vec<&str> = f[1..f.len() - 1].split(',').collect();
                            items.sort();
                            items.join(",")
                        } else {
                            f.to_owned()
                        }
                    })
                    .collect()
            })
            .collect();
        rows.sort();
        rows
    };
    for (i, q) in queries.iter().enumerate() {
        let old = api.ch.query(&format!("{q} FORMAT TabSeparated"));
        assert_eq!(normal(current[i]), normal(&old), "{q}");
    }
}

/// Through a cluster (2 shards × 2 replicas of 18.16, rows placed by the `Distributed`
/// tables' sharding keys, redelivered copies included) every route answers exactly what it
/// answers on one server over the same rows: `FINAL` per shard, sums and distinct counts
/// merged, subqueries run `GLOBAL`.
#[test]
fn analytics_routes_agree_through_a_cluster() {
    use croupier_it::clickhouse_cluster::{ClickHouseCluster, CLUSTER};
    let api = Api::start();
    let cluster = ClickHouseCluster::start(2, 2);
    block_on(ActiveDriver::Epoll, async {
        for node in cluster.all() {
            let mut c = Connection::connect(&ch_options(node)).await.expect("connect");
            schema::migrate_cluster_node(&mut c, CLUSTER).await.expect("migrate");
        }
    })
    .unwrap();
    let h = &api.history;
    let node = &cluster.nodes[0][0];
    // Events as the worker inserts them (their user_days rows folded from them alone),
    // through the Distributed tables: the user_days rows go to the shard of their user
    // rather than of their events, which changes nothing the routes read (a player's days
    // are counted across the shards); `ch_cluster_user_days_land_on_the_shard_of_their_events`
    // checks where the worker puts them.
    let insert = |table: &str, cols: &str, rows: &[String]| {
        for chunk in rows.chunks(20_000) {
            let data = format!("FORMAT TabSeparated\n{}\n", chunk.join("\n"));
            if table == "events" {
                for sql in worker_insert(&data) {
                    let sql = sql.replace("AS analytics.events ENGINE", "AS analytics.events_local ENGINE");
                    node.query_with("&insert_distributed_sync=1", &sql);
                }
            } else {
                node.query_with(
                    "&insert_distributed_sync=1",
                    &format!("INSERT INTO analytics.{table} ({cols}) {data}"),
                );
            }
        }
    };
    insert("events", EVENT_COLUMNS, &h.event_rows);
    insert("payments", PAYMENT_COLUMNS, &h.payment_rows);
    insert("events", EVENT_COLUMNS, &h.event_rows[..h.event_rows.len() / 3]);
    insert("payments", PAYMENT_COLUMNS, &h.payment_rows[..h.payment_rows.len() / 2]);
    for n in cluster.all() {
        n.query("SYSTEM SYNC REPLICA analytics.events_local");
        n.query("SYSTEM SYNC REPLICA analytics.payments_local");
    }
    // Both shards hold rows, and the copies stay until merged (FINAL must fold them).
    let local = |s: usize| -> u64 {
        cluster.nodes[s][1].query("SELECT count() FROM analytics.events_local").trim().parse().unwrap()
    };
    assert!(local(0) > 0 && local(1) > 0);
    assert_eq!(local(0) + local(1), (h.event_rows.len() + h.event_rows.len() / 3) as u64);

    let mut config = Config::default();
    config.server.driver = Driver::Epoll;
    config.redis.addr = api.redis.addr();
    config.clickhouse.shards = cluster.nodes.iter().map(|s| s.iter().map(ClickHouseServer::addr).collect()).collect();
    config.clickhouse.cluster = CLUSTER.into();
    config.control.listen = "127.0.0.1:0".into();
    config.api.jwt_secret = SECRET.into();
    for g in ["g1", "g2"] {
        config.games.insert(g.into(), Game { secret: Some("s".into()), ..Game::default() });
    }
    config.api.cpi_cents.insert("appstore".into(), 150);
    config.api.cpi_cents.insert("g1/google".into(), 80);
    config.api.cpi_cents.insert("g2/web".into(), 5);
    let control = listener::start(Arc::new(config), Registry::new(&[], &[], false), false, false)
        .expect("control starts")
        .expect("control listener");
    let range = format!("game_id=g1&env=prod&start={}&end={}", date(h.today - 30), date(h.today - 1));
    for path in [
        format!("overview?{range}"),
        // Ending today: today's registrations are read apart from the complete days'.
        format!("overview?game_id=g1&env=prod&start={}&end={}", date(h.today - 6), date(h.today)),
        format!("retention?{range}"),
        format!("retention?{range}&cohort=first_active"),
        format!("payments/summary?{range}&platform=ios"),
        format!("payments/transactions?{range}&status=refunded&page=2&size=3"),
        format!("payments/product_trend?{range}&product_id=gems,pass&granularity=minute"),
        format!("behavior/events?{range}&event=level_start&prop_key=level&prop_val=2"),
        format!("behavior/funnel?{range}&steps=register,login,level_start"),
        format!("behavior/funnel?{range}&steps=login,level_start,level_clear&same_session=1&gap_sec=100"),
        format!("behavior/paths?{range}&per=user&steps=4&exclude=session_start"),
        format!("behavior/adoption?{range}&features=login,level_fail&per=session"),
        format!("behavior/adoption_breakdown?{range}&features=login,level_fail"),
        format!("levels?{range}"),
        format!("levels?{range}&episode=e1"),
        format!("levels/episodes?{range}"),
        format!("ltv?{range}"),
        format!("segments?{range}"),
        format!("attribution?{range}"),
    ] {
        let path = format!("/api/analytics/{path}");
        let one = api.json(&path);
        let r = HttpClient::connect(control.local_addr()).request(
            "GET",
            &path,
            &[("Authorization".to_owned(), format!("Bearer {}", admin()))],
            b"",
        );
        assert_eq!(r.status, 200, "{path} through the cluster: {}", r.text());
        let through: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(through, one, "{path}");
    }
    control.shutdown();
}

/// The first `events` layout as the first schema created it.
const FIRST_EVENTS_LAYOUT: &str = "CREATE TABLE analytics.events (
    event_time DateTime, game_id LowCardinality(String), env LowCardinality(String), user_id String,
    session_id String, event LowCardinality(String), channel LowCardinality(String),
    platform LowCardinality(String), country FixedString(2), app_version String, event_id UUID,
    props_json String, device_id String DEFAULT '', ingested_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (game_id, env, event, event_id)";

/// The materialized view that filled `analytics.user_days` in earlier versions, as they
/// created it (`croupier migrate` drops it: the worker writes `user_days`).
const OLD_USER_DAYS_VIEW: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.user_days_mv
    TO analytics.user_days
    AS SELECT toDate(event_time, 'UTC') AS d, game_id, env, user_id, count() AS events,
        countIf(event IN ('login', 'session_start', 'user.login', 'session.start')) AS active,
        countIf(event IN ('register', 'user.register')) AS registered,
        countIf(event IN ('first_active')) AS first_active
    FROM analytics.events GROUP BY d, game_id, env, user_id";

/// What `analytics.user_days` must hold for the rows of `analytics.events`: each (day,
/// game, env, user) once, with whether it had an active, register and `first_active` event.
const USER_DAYS_OF_EVENTS: &str = "SELECT toDate(event_time, 'UTC') AS d, game_id, env, user_id, \
    max(event IN ('login', 'session_start', 'user.login', 'session.start')), max(event IN ('register', 'user.register')), \
    max(event = 'first_active') FROM analytics.events GROUP BY d, game_id, env, user_id ORDER BY d, game_id, env, user_id \
    FORMAT TabSeparated";
/// What it holds, in the same shape.
const USER_DAYS: &str = "SELECT d, game_id, env, user_id, max(active > 0), max(registered > 0), max(first_active > 0) \
    FROM analytics.user_days GROUP BY d, game_id, env, user_id ORDER BY d, game_id, env, user_id FORMAT TabSeparated";

/// What `analytics.daily_players` must hold for the rows of `analytics.events`: per day,
/// game and env, the distinct users with an active event (kind 0) and with a new-user
/// event (kind 1); the history's few hundred players are below the size where
/// `uniqCombined` estimates, so its sketches count them exactly.
const DAILY_PLAYERS_OF_EVENTS: &str = "SELECT toDate(event_time, 'UTC') AS d, game_id, env, \
    toUInt8(event IN ('register', 'user.register', 'first_active')) AS kind, uniqExact(user_id) FROM analytics.events \
    WHERE event IN ('login', 'session_start', 'user.login', 'session.start', 'register', 'user.register', 'first_active') \
    GROUP BY d, game_id, env, kind ORDER BY d, game_id, env, kind FORMAT TabSeparated";
/// What it holds, in the same shape.
const DAILY_PLAYERS: &str = "SELECT d, game_id, env, kind, uniqCombinedMerge(users) FROM analytics.daily_players \
    GROUP BY d, game_id, env, kind ORDER BY d, game_id, env, kind FORMAT TabSeparated";
/// What `analytics.registered_users` must hold: each player with a new-user event and the
/// first day of one.
const REGISTERED_OF_EVENTS: &str =
    "SELECT game_id, env, user_id, min(toDate(event_time, 'UTC')) FROM analytics.events \
    WHERE event IN ('register', 'user.register', 'first_active') GROUP BY game_id, env, user_id \
    ORDER BY game_id, env, user_id FORMAT TabSeparated";
/// What it holds, in the same shape.
const REGISTERED: &str = "SELECT game_id, env, user_id, minMerge(first_d) FROM analytics.registered_users \
    GROUP BY game_id, env, user_id ORDER BY game_id, env, user_id FORMAT TabSeparated";

/// Migrate takes an `events` table of the first layout to the day-keyed one with every
/// row (duplicates as they were), once, and a one-day read then reads fewer rows.
#[test]
fn analytics_events_relayout_keeps_rows_and_reads_one_day() {
    let ch = ClickHouseServer::start_logging_queries();
    ch.query("CREATE DATABASE analytics");
    ch.query(FIRST_EVENTS_LAYOUT);
    let h = History::generate(croupier_dataplane::analytics::now_secs());
    for rows in [&h.event_rows[..], &h.event_rows[..h.event_rows.len() / 3]] {
        ch.query(&format!("INSERT INTO analytics.events ({EVENT_COLUMNS}) FORMAT TabSeparated\n{}\n", rows.join("\n")));
    }
    // 40,000 more events of one past month, 65 s apart, for a one-day read to measure.
    let month: i64 = ch.query("SELECT toUInt32(toDateTime(toStartOfMonth(today() - 60)))").trim().parse().unwrap();
    ch.query(&format!(
        "INSERT INTO analytics.events ({EVENT_COLUMNS}) SELECT toDateTime({month} + number * 65), 'g1', 'prod', \
         toString(number % 5000), 's', arrayElement(['login', 'level_start', 'level_clear'], number % 3 + 1), '', '', \
         'US', '1', toUUID(concat('00000000-0000-4000-9000-', substring(concat('000000000000', hex(number)), \
         length(hex(number)) + 1, 12))), '{{}}' FROM system.numbers LIMIT 40000"
    ));
    let figures = "SELECT count(), uniqExact(event_id), sum(cityHash64(toString(event_id), user_id, toUInt32(event_time), props_json)) \
                   FROM analytics.events FORMAT TabSeparated";
    let before = ch.query(figures);
    let day = month / DAY + 10;
    let one_day = format!(
        "SELECT uniqExact(user_id) FROM analytics.events WHERE game_id = 'g1' AND env = 'prod' \
         AND event_time >= toDateTime({}) AND event_time <= toDateTime({})",
        day * DAY,
        day * DAY + DAY - 1
    );
    // Rows read, as ClickHouse logged them.
    let read = |tag: &str| {
        let q = one_day.replace("uniqExact(user_id)", &format!("uniqExact(user_id) AS {tag}"));
        let users = block_on(ActiveDriver::Epoll, async {
            let mut c = Connection::connect(&ch_options(&ch)).await.expect("connect");
            c.select(&q, &[]).await.expect("select").rows[0][0].as_u64()
        })
        .unwrap();
        // The log's row may come a little after the answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        let rows = loop {
            ch.query("SYSTEM FLUSH LOGS");
            let rows = ch.query(&format!(
                "SELECT read_rows FROM system.query_log WHERE type = 2 AND query LIKE '%AS {tag} FROM%' \
                 AND query NOT LIKE '%query_log%' LIMIT 1"
            ));
            if !rows.trim().is_empty() || Instant::now() > deadline {
                break rows;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        (users, rows.trim().parse::<u64>().unwrap())
    };
    let (users_before, read_before) = read("read_before");
    for _ in 0..2 {
        block_on(ActiveDriver::Epoll, async {
            let mut c = Connection::connect(&ch_options(&ch)).await.expect("connect");
            schema::migrate(&mut c).await.expect("migrate");
        })
        .unwrap();
        assert_eq!(ch.query(figures), before, "every row once, duplicates as they were");
        let engine = ch.query("SELECT engine_full FROM system.tables WHERE database = 'analytics' AND name = 'events'");
        assert!(engine.contains("ORDER BY (game_id, env, event_time,"), "{engine}");
        let left =
            ch.query("SELECT count() FROM system.tables WHERE database = 'analytics' AND name = 'events_relayout'");
        assert_eq!(left, "0\n");
        // `user_days` holds every (day, game, env, user) of the rows already there, with
        // their flags, after the first migrate and after the second alike.
        assert_eq!(ch.query(USER_DAYS_OF_EVENTS), ch.query(USER_DAYS), "user_days filled from the rows already there");
        // So do the player tables (a second copy of a sketch or a first day changes nothing).
        assert_eq!(ch.query(DAILY_PLAYERS_OF_EVENTS), ch.query(DAILY_PLAYERS), "daily_players filled");
        assert_eq!(ch.query(REGISTERED_OF_EVENTS), ch.query(REGISTERED), "registered_users filled");
        let marks = "SELECT count() FROM system.tables WHERE database = 'analytics' \
                     AND name IN ('user_days_filled', 'player_tables_filled')";
        assert_eq!(ch.query(marks), "2\n");
    }
    // The views (and the worker, for user_days) add what is inserted from then on.
    insert_events(&ch, &format!(
        "VALUES \
         ({}, 'g3', 'prod', 'late', 's1', 'register', '', '', 'US', '1', '00000000-0000-4000-8000-0000000000b1', '{{}}')",
        h.today * DAY + 5
    ));
    assert_eq!(ch.query(DAILY_PLAYERS_OF_EVENTS), ch.query(DAILY_PLAYERS), "daily_players after an insert");
    assert_eq!(ch.query(REGISTERED_OF_EVENTS), ch.query(REGISTERED), "registered_users after an insert");
    let (users_after, read_after) = read("read_after");
    assert_eq!(users_after, users_before);
    assert!(read_after * 2 < read_before, "one day read {read_after} rows after, {read_before} before");
    eprintln!("one-day read of {} rows: {read_before} rows read before the relayout, {read_after} after", DAY / 65);
}

/// A first-layout `events` with the views of the current schema already reading it (an
/// upgrade from a version that had them): after migrate, inserts into the new `events`
/// still reach `user_days`, `daily_players` and `registered_users`, on ClickHouse 18.16
/// and on a current engine (chdb-core, ClickHouse 26.x), where the statements the
/// migration sent to 18.16 (from `system.query_log`, in the order it sent them) are run
/// again over the same first state. A current engine binds a view to its source table,
/// not to its name: a view kept through the move of the old table aside follows it.
#[test]
fn analytics_events_relayout_keeps_the_views_filling_on_a_current_engine() {
    let ok = std::process::Command::new("python3").args(["-c", "import chdb"]).status().is_ok_and(|s| s.success());
    assert!(ok, "python3 with chdb-core is needed (scripts/setup.sh installs it)");
    let ch = ClickHouseServer::start_logging_queries();
    let event = |t: i64, user: &str, name: &str, n: u32| {
        format!(
            "({t}, 'g1', 'prod', '{user}', 's', '{name}', '', '', 'US', '1', \
             '00000000-0000-4000-8000-{n:012}', '{{}}')"
        )
    };
    let now = croupier_dataplane::analytics::now_secs();
    let today = now / DAY;
    let old_rows: Vec<String> = (0..40u32)
        .map(|i| {
            let day = today - 40 + i64::from(i);
            event(day * DAY + 60, &format!("u{}", i % 7), ["register", "login", "level_start"][i as usize % 3], i)
        })
        .collect();
    // The first state: the database, the first layout, every other table and view of the
    // current schema (so its views read the first-layout table), their tables marked
    // filled, and events that reach the views.
    let mut first: Vec<String> = vec!["CREATE DATABASE analytics".into(), FIRST_EVENTS_LAYOUT.into()];
    first.extend(
        schema::STATEMENTS
            .iter()
            .filter(|s| {
                !s.starts_with("CREATE DATABASE") && !s.starts_with("CREATE TABLE IF NOT EXISTS analytics.events ")
            })
            .map(|s| s.to_string()),
    );
    // The view that filled `user_days` until the worker did, which migrate drops.
    first.push(OLD_USER_DAYS_VIEW.to_owned());
    first.extend([schema::USER_DAYS_MARK.to_owned(), schema::PLAYER_TABLES_MARK.to_owned()]);
    first.push(format!("INSERT INTO analytics.events ({EVENT_COLUMNS}) VALUES {}", old_rows.join(", ")));
    for sql in &first {
        ch.query(sql);
    }
    block_on(ActiveDriver::Epoll, async {
        let mut c = Connection::connect(&ch_options(&ch)).await.expect("connect");
        schema::migrate(&mut c).await.expect("migrate");
    })
    .unwrap();
    // Every statement of the migration's connection, in its order, and whether it threw
    // (`type` 3 or 4). A statement's end (2, 3 or 4) may reach the log after its answer
    // reached the client: read until no statement shows only its start (1).
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        ch.query("SYSTEM FLUSH LOGS");
        let logged = ch.query(
            "SELECT query_id, max(toUInt8(type)) AS t, any(query) AS q \
             FROM system.query_log \
             WHERE query_id LIKE 'croupier-%' GROUP BY query_id FORMAT JSONEachRow",
        );
        if !logged.contains(r#""t":1,"#) || Instant::now() > deadline {
            break logged;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut sent: Vec<(u64, bool, String)> = logged
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let id = v["query_id"].as_str().unwrap();
            let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
            (n, v["t"].as_u64().unwrap() > 2, v["q"].as_str().unwrap().to_owned())
        })
        .collect();
    sent.sort();
    assert!(sent.iter().any(|s| s.2.starts_with("RENAME TABLE analytics.events")), "{sent:?}");
    assert!(sent.iter().any(|s| s.2 == schema::DROP_USER_DAYS_VIEW), "{sent:?}");
    let views = "SELECT count() FROM system.tables WHERE database = 'analytics' AND name = 'user_days_mv'";
    assert_eq!(ch.query(views), "0\n", "user_days_mv dropped");
    // What is inserted after the migration, as the worker inserts it, reaches every table a
    // view or the worker fills.
    let late = worker_insert(&format!(
        "VALUES {}",
        [event(now - 60, "late", "register", 900), event(now - 30, "u1", "login", 901)].join(", ")
    ));
    let checks =
        [USER_DAYS_OF_EVENTS, USER_DAYS, DAILY_PLAYERS_OF_EVENTS, DAILY_PLAYERS, REGISTERED_OF_EVENTS, REGISTERED];
    for sql in &late {
        ch.query(sql);
    }
    let old: Vec<String> = checks.iter().map(|q| ch.query(q)).collect();
    for pair in old.chunks(2) {
        assert_eq!(pair[0], pair[1], "ClickHouse 18.16: a table of the views against events");
    }
    assert!(old[5].contains("late"), "{}", old[5]);
    // The tables stayed marked filled: a running API went on answering from them.
    let marks = "SELECT count() FROM system.tables WHERE database = 'analytics' \
                 AND name IN ('user_days_filled', 'player_tables_filled')";
    assert_eq!(ch.query(marks), "2\n");
    assert!(!sent.iter().any(|s| s.2.contains("_filled") && s.2.starts_with("DROP")), "marks dropped: {sent:?}");

    let mut script = String::new();
    for sql in &first {
        script.push_str(&format!("{sql}\n;;\n"));
    }
    for (_, threw, sql) in &sent {
        script.push_str(&format!("{sql}\n{}\n", if *threw { ";; may fail" } else { ";;" }));
    }
    for sql in &late {
        script.push_str(&format!("{sql}\n;;\n"));
    }
    for q in checks {
        script.push_str(&format!("{}\n;;\n", q.replace("FORMAT TabSeparated", "")));
    }
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.sql"), dir.path().join("out.txt"));
    std::fs::write(&input, script).unwrap();
    let run = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chdb-run.py");
    let out = std::process::Command::new("python3").arg(run).arg(&input).arg(&output).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = std::fs::read_to_string(&output).unwrap();
    let results: Vec<&str> = results.split("--end--\n").collect();
    let current: Vec<&str> = results[results.len() - 1 - checks.len()..results.len() - 1].to_vec();
    let names = ["user_days", "daily_players", "registered_users"];
    for (i, pair) in current.chunks(2).enumerate() {
        assert_eq!(pair[0].trim(), pair[1].trim(), "current engine: {} against events", names[i]);
        assert_eq!(pair[1].trim(), old[2 * i + 1].trim(), "current engine: {} as on 18.16", names[i]);
    }
}

/// Levels, LTV and segments against the history.
#[test]
fn analytics_levels_ltv_and_segments_are_exact() {
    let api = Api::start();
    let h = &api.history;
    let (first, last) = (h.today - 20, h.today - 1);
    let range = format!("game_id=g1&env=prod&start={}&end={}", date(first), date(last));
    let in_range = |t: i64| t >= first * DAY && t < (last + 1) * DAY;
    let evs: Vec<&Ev> = h.events.iter().filter(|e| in_range(e.0)).collect();
    let level_of = |props: &str| props.split('"').nth(3).unwrap_or("").to_owned();
    let users = |f: &dyn Fn(&&Ev) -> bool| -> BTreeSet<u64> { evs.iter().filter(|e| f(e)).map(|e| e.1).collect() };
    let new_users = users(&|e| e.3 == "register");
    let payers: BTreeSet<u64> =
        h.payments.iter().filter(|p| in_range(p.time) && p.status == "success").map(|p| p.user).collect();

    let v = api.json(&format!("/api/analytics/levels?{range}"));
    let started = users(&|e| e.3 == "level_start").len() as u64;
    let cleared = users(&|e| e.3 == "level_clear").len() as u64;
    let failed = users(&|e| e.3 == "level_fail").len() as u64;
    assert_eq!(
        v["funnel"],
        json!([
            {"step": "开始关卡", "users": started, "rate": 100.0},
            {"step": "完成关卡", "users": cleared, "rate": percent(cleared, started)},
            {"step": "失败过", "users": failed, "rate": percent(failed, started)},
        ])
    );
    let mut per_level = vec![];
    let (mut new, mut payer, mut returning) = (vec![], vec![], vec![]);
    for l in 1..=5u64 {
        let lv = l.to_string();
        let players = users(&|e| e.3 == "level_start" && level_of(&e.4) == lv);
        let winners = users(&|e| e.3 == "level_clear" && level_of(&e.4) == lv);
        let wr = percent(winners.len() as u64, players.len() as u64);
        let difficulty = if wr > 70.0 {
            "低"
        } else if wr >= 40.0 {
            "中"
        } else {
            "高"
        };
        per_level.push(json!({"level": lv, "players": players.len(), "win_rate": wr,
            "avg_duration_sec": (30 + l) as f64, "avg_retries": (l % 3) as f64, "difficulty": difficulty}));
        let seg = |set: &dyn Fn(&u64) -> bool| {
            let p = players.iter().filter(|u| set(u)).count() as u64;
            let w = winners.iter().filter(|u| set(u)).count() as u64;
            json!({"level": lv, "players": p, "win_rate": percent(w, p)})
        };
        new.push(seg(&|u| new_users.contains(u)));
        payer.push(seg(&|u| payers.contains(u)));
        returning.push(seg(&|u| !new_users.contains(u)));
    }
    assert_eq!(v["per_level"], Value::Array(per_level));
    assert_eq!(v["per_level_segments"], json!({"new": new, "payer": payer, "returning": returning}));
    assert_eq!(v["truncated"], json!(false));

    // Episodes: only starts carry one in this history (clears without it are left out).
    let v = api.json(&format!("/api/analytics/levels/episodes?{range}"));
    let per: Vec<Value> = (1..=5u64)
        .map(|l| {
            let lv = l.to_string();
            let n = users(&|e| e.3 == "level_start" && level_of(&e.4) == lv).len();
            json!({"level": lv, "players": n, "win_rate": 0.0})
        })
        .collect();
    assert_eq!(v, json!({"episodes": [{"episode": "e1", "per_level": per}], "truncated": false}));
    assert_eq!(api.json(&format!("/api/analytics/levels/maps?{range}")), json!({"maps": [], "truncated": false}));

    // LTV of the cohorts of the last 40 days.
    let (c0, c1) = (h.today - 40, h.today - 1);
    let v = api.json(&format!("/api/analytics/ltv?game_id=g1&env=prod&start={}&end={}", date(c0), date(c1)));
    let mut want = vec![];
    for c in c0..=c1 {
        let members: BTreeSet<u64> = h.players().filter(|p| h.reg[*p] == c).map(|p| p as u64).collect();
        if members.is_empty() {
            continue;
        }
        let mut row = json!({"day": date(c), "date": date(c), "users": members.len()});
        for n in [1i64, 7, 30, 90] {
            let rev: u64 = h
                .payments
                .iter()
                .filter(|p| p.status == "success" && members.contains(&p.user))
                .filter(|p| (c..c + n).contains(&p.time.div_euclid(DAY)))
                .map(|p| p.amount)
                .sum();
            let x = (rev as f64 * 100.0 / members.len() as f64).round() / 100.0;
            row[format!("ltv_d{n}")] = if c + n - 1 < h.today { json!(x) } else { Value::Null };
        }
        want.push(row);
    }
    assert_eq!(v["cohorts"], Value::Array(want));

    // Segments of the last 21 days.
    let v = api.json(&format!("/api/analytics/segments?{range}"));
    let active = users(&|_| true);
    let mut rev: BTreeMap<u64, u64> = BTreeMap::new();
    for p in h.payments.iter().filter(|p| in_range(p.time) && p.status == "success") {
        *rev.entry(p.user).or_default() += p.amount;
    }
    let mut ranked: Vec<(u64, u64)> = rev.iter().map(|(u, r)| (*u, *r)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(format!("u{}", a.0).cmp(&format!("u{}", b.0))));
    let whales: BTreeSet<u64> = ranked.iter().take(ranked.len().div_ceil(10)).map(|(u, _)| *u).collect();
    let seg = |name: &str, members: Vec<u64>| {
        let r: u64 = members.iter().map(|m| rev.get(m).copied().unwrap_or(0)).sum();
        let n = members.len() as u64;
        let arpu = if n == 0 { 0.0 } else { (r as f64 * 100.0 / n as f64).round() / 100.0 };
        json!({"name": name, "users": n, "ratio": percent(n, active.len() as u64), "arpu": arpu})
    };
    assert_eq!(
        v["segments"],
        json!([
            seg("new", active.iter().copied().filter(|u| new_users.contains(u)).collect()),
            seg("returning", active.iter().copied().filter(|u| !new_users.contains(u)).collect()),
            seg("payer", rev.keys().copied().collect()),
            seg("whale", whales.into_iter().collect()),
        ])
    );
}

/// A level's `avg_duration_sec` / `avg_retries` average the numbers among its clears'
/// `props.duration_sec` / `props.retries` (a JSON number, or a string holding one, as
/// `toFloat64OrNull(JSON_VALUE(...))` reads them), skip anything else, are `null` when
/// none is left, and stay finite for values near the largest `Float64`.
#[test]
fn analytics_levels_average_only_the_numbers_of_clears() {
    let api = Api::start();
    let t = api.history.today;
    let ev = |n: u64, user: &str, event: &str, props: &str| {
        format!(
            "({}, 'g1', 'lv', '{user}', 's', '{event}', '', '', 'US', '1', '{}', {})",
            (t - 1) * DAY + 600 + n as i64,
            uuid(0xF000 + n),
            quote(props)
        )
    };
    let rows = [
        ev(1, "u1", "level_start", r#"{"level":"1"}"#),
        ev(2, "u2", "level_start", r#"{"level":"1"}"#),
        ev(3, "u3", "level_start", r#"{"level":"1"}"#),
        ev(4, "u1", "level_clear", r#"{"level":"1","duration_sec":10,"retries":"2"}"#),
        ev(5, "u2", "level_clear", r#"{"level":"1","duration_sec":"abc","retries":[1]}"#),
        ev(6, "u3", "level_clear", r#"{"level":"1","retries":{"n":4}}"#),
        ev(12, "u3", "level_clear", r#"{"level":"1","duration_sec":"nan","retries":"inf"}"#),
        ev(13, "u2", "level_clear", r#"{"level":"1","duration_sec":"-inf"}"#),
        ev(7, "u1", "level_start", r#"{"level":"2"}"#),
        ev(8, "u1", "level_clear", r#"{"level":"2","duration_sec":1e308,"retries":true}"#),
        ev(9, "u1", "level_clear", r#"{"level":"2","duration_sec":"1e308","retries":""}"#),
        ev(10, "u1", "level_start", r#"{"level":"3","duration_sec":5,"retries":1}"#),
        ev(11, "u2", "level_fail", r#"{"level":"3","duration_sec":5,"retries":1}"#),
        // A string with escapes is its value, as `JSON_VALUE` reads it: `a"b\c`.
        ev(14, "u3", "level_start", r#"{"level":"a\"b\\c","duration_sec":"7"}"#),
    ];
    insert_events(&api.ch, &format!("VALUES {}", rows.join(", ")));
    let v = api.json(&format!("/api/analytics/levels?game_id=g1&env=lv&start={}&end={}", date(t - 1), date(t - 1)));
    let means: Vec<(Value, Value, Value)> = v["per_level"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["level"].clone(), l["avg_duration_sec"].clone(), l["avg_retries"].clone()))
        .collect();
    assert_eq!(
        means,
        vec![
            (json!("1"), json!(10.0), json!(2.0)),
            (json!("2"), json!(1e308), Value::Null),
            (json!("3"), Value::Null, Value::Null),
            (json!("a\"b\\c"), Value::Null, Value::Null),
        ],
        "{v}"
    );
    // The events filter compares the same value (`a"b\c`, percent-encoded).
    let v = api.json(&format!(
        "/api/analytics/behavior/events?game_id=g1&env=lv&start={}&end={}&prop_key=level&prop_val=a%22b%5Cc",
        date(t - 1),
        date(t - 1)
    ));
    assert_eq!(v["total"], 1, "{v}");
}

/// Filters: defaults, a POST needs analytics:manage and a game the token may read, the
/// value is clamped, kept in the file, and read back.
/// `props.level`, a platform, a city are whatever clients send: with more distinct values
/// than an answer holds (1,000), `/levels`, `/levels/episodes` and `/levels/maps` answer
/// the 1,000 levels with the most players (ties by level), listed by level, the payment
/// and adoption breakdowns the 1,000 values that weigh most, each with
/// `"truncated": true`, and the control port keeps answering.
#[test]
fn analytics_levels_and_breakdowns_answer_at_most_1000_values() {
    let t = croupier_dataplane::analytics::now_secs() - 3600;
    let api = Api::start_after(false, |ch| {
        let mut rows = Vec::new();
        let mut id = 1u64 << 40;
        let mut start = |user: u64, level: &str| {
            id += 1;
            // Each level of one player on a platform of its own.
            let platform = if level.starts_with('x') { format!("p{level}") } else { "ios".to_owned() };
            rows.push(format!(
                "{t}\tg1\tlv\tu{user}\ts{user}\tlevel_start\tgoogle\t{platform}\tUS\t1.0\t{}\t{{\"level\":\"{level}\",\"episode\":\"e1\",\"map\":\"m1\"}}",
                uuid(id)
            ));
        };
        // 1,500 levels of one player, then 10 of three.
        for l in 0..1500 {
            start(1, &format!("x{l:04}"));
        }
        for l in 0..10 {
            for user in 1..=3 {
                start(user, &format!("top{l}"));
            }
        }
        // In env lv2: 1,010 users registering, each from a channel of its own.
        for k in 0..1010u64 {
            rows.push(format!(
                "{t}\tg1\tlv2\tr{k}\tr{k}\tregister\tch{k:04}\tios\tUS\t1.0\t{}\t{{}}",
                uuid((2 << 40) + k)
            ));
        }
        insert_events(ch, &format!("FORMAT TabSeparated\n{}\n", rows.join("\n")));
        // 1,010 cities, city k with a payment of 1,000 + k cents.
        let payments: Vec<String> = (0..1010)
            .map(|k| format!("{t}\tg1\tlv\tu1\to{k}\t{}\tCNY\tsuccess\tgoogle\tios\tUS\tr\tk{k:04}\tp1\t", 1000 + k))
            .collect();
        ch.query(&format!(
            "INSERT INTO analytics.payments ({PAYMENT_COLUMNS}) FORMAT TabSeparated\n{}\n",
            payments.join("\n")
        ));
    });
    let want: Vec<(String, u64)> =
        (0..10).map(|l| (format!("top{l}"), 3)).chain((0..990).map(|l| (format!("x{l:04}"), 1))).collect();
    let levels = |items: &Value| -> Vec<(String, u64)> {
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["level"].as_str().unwrap().to_owned(), i["players"].as_u64().unwrap()))
            .collect()
    };
    let v = api.json("/api/analytics/levels?game_id=g1&env=lv");
    assert_eq!(v["truncated"], json!(true));
    assert_eq!(levels(&v["per_level"]), want);
    for seg in ["new", "payer", "returning"] {
        assert_eq!(v["per_level_segments"][seg].as_array().map(Vec::len), Some(1000), "{seg}");
    }
    for (route, key, dim, value) in [("episodes", "episodes", "episode", "e1"), ("maps", "maps", "map", "m1")] {
        let v = api.json(&format!("/api/analytics/levels/{route}?game_id=g1&env=lv"));
        assert_eq!(v["truncated"], json!(true), "{route}");
        assert_eq!(v[key].as_array().map(Vec::len), Some(1), "{route}");
        assert_eq!(v[key][0][dim], json!(value), "{route}");
        assert_eq!(levels(&v[key][0]["per_level"]), want, "{route}");
    }
    let v = api.json("/api/analytics/behavior/adoption_breakdown?game_id=g1&env=lv&features=level_start&by=platform");
    assert_eq!(v["truncated"], json!(true));
    let dims: Vec<(String, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["dim"].as_str().unwrap().to_owned(), r["baseline"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> =
        std::iter::once(("ios".to_owned(), 3)).chain((0..999).map(|l| (format!("px{l:04}"), 1))).collect();
    assert_eq!(dims, want);
    let v = api.json("/api/analytics/payments/summary?game_id=g1&env=lv");
    assert_eq!(v["truncated"], json!(true));
    let cities: Vec<(String, u64)> = v["by_city"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["city"].as_str().unwrap().to_owned(), r["revenue_cents"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = (10..1010).rev().map(|k| (format!("k{k:04}"), 1000 + k)).collect();
    assert_eq!(cities, want);
    assert_eq!(v["by_product"].as_array().map(Vec::len), Some(1));
    let v = api.json("/api/analytics/attribution?game_id=g1&env=lv2");
    assert_eq!(v["truncated"], json!(true));
    assert_eq!(v["summary"]["installs"], json!(1010));
    let channels: Vec<&str> =
        v["by_channel"].as_array().unwrap().iter().map(|c| c["channel"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..1000).map(|k| format!("ch{k:04}")).collect();
    assert_eq!(channels, want);
    let r = HttpClient::connect(api.addr()).request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn analytics_filters_are_kept_and_guarded() {
    let api = Api::start();
    let get = |q: &str| api.json(&format!("/api/analytics/filters?{q}"));
    assert_eq!(get("game_id=g1&env=prod"), json!({"events": [], "payments_enabled": true, "sample_global": 100}));
    let post = |token: &str, body: &str| {
        let headers = vec![("Authorization".to_owned(), format!("Bearer {token}"))];
        HttpClient::connect(api.addr()).request("POST", "/api/analytics/filters", &headers, body.as_bytes())
    };
    let body = r#"{"game_id":"g1","env":"prod","events":["login","pay"],"payments_enabled":false,"sample_global":150}"#;
    let viewer = hs256(json!({"sub":"v","roles":["viewer"],"exp":exp()}), SECRET);
    assert_eq!(post(&viewer, body).status, 403);
    let g2_ops = hs256(json!({"sub":"o","roles":["ops"],"games":["g2"],"exp":exp()}), SECRET);
    assert_eq!(post(&g2_ops, body).status, 403);
    let r = post(&admin(), r#"{"env":"prod"}"#);
    assert_eq!((r.status, r.error_tag()), (400, "invalid_parameter".to_owned()));
    let r = post(&admin(), body);
    assert_eq!((r.status, r.text()), (200, r#"{"ok":true}"#.to_owned()));
    let want = json!({"events": ["login", "pay"], "payments_enabled": false, "sample_global": 100});
    assert_eq!(get("game_id=g1&env=prod"), want);
    assert_eq!(get("game_id=g1&env=test")["sample_global"], 100);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(api._keys.path().join("filters.json")).unwrap()).unwrap();
    assert_eq!(file["g1|prod"], want);
    assert_eq!(api.get("/api/analytics/filters?game_id=g1", "").status, 401);
}

/// Attribution by channel, computed here from the history: installs (the register day),
/// signups, day-0 revenue, CPI and ROAS from the configured costs (a per-game cost before
/// a channel's; `web` has none for g1), and the summary's payback day.
#[test]
fn analytics_attribution_is_exact() {
    let api = Api::start();
    let h = &api.history;
    let (first, last) = (h.today - 40, h.today - 1);
    let v =
        api.json(&format!("/api/analytics/attribution?game_id=g1&env=prod&start={}&end={}", date(first), date(last)));
    let cpi = |c: &str| match c {
        "appstore" => Some(150u64),
        "google" => Some(80),
        _ => None,
    };
    let mut rows = vec![];
    let (mut cost, mut costed_installs, mut installs_total) = (0u64, 0u64, 0u64);
    let mut returned = vec![0u64; 90];
    for (i, channel) in CHANNELS.iter().enumerate() {
        let members: Vec<usize> = h.players().filter(|p| p % 3 == i && (first..=last).contains(&h.reg[*p])).collect();
        let installs = members.len() as u64;
        installs_total += installs;
        let mut by_offset = vec![0u64; 90];
        for pay in h.payments.iter().filter(|p| p.status == "success") {
            let p = pay.user as usize;
            if !members.contains(&p) {
                continue;
            }
            let offset = pay.time.div_euclid(DAY) - h.reg[p];
            if (0..90).contains(&offset) {
                by_offset[offset as usize] += pay.amount;
            }
        }
        let within = |n: usize| by_offset[..n].iter().sum::<u64>();
        let c = cpi(channel).map(|x| x * installs);
        let roas = |n: usize| c.map_or(Value::Null, |c| json!(percent(within(n), c)));
        if let Some(c) = c {
            cost += c;
            costed_installs += installs;
            returned.iter_mut().zip(&by_offset).for_each(|(r, b)| *r += b);
        }
        rows.push(json!({
            "channel": channel, "installs": installs, "signups": installs, "first_active": 0,
            "rev_d0_cents": within(1), "cpi_cents": cpi(channel),
            "roas_d1": roas(1), "roas_d7": roas(7), "roas_d30": roas(30),
        }));
    }
    assert_eq!(v["by_channel"], Value::Array(rows));
    assert_eq!(v["truncated"], json!(false));
    let back = |n: usize| returned[..n].iter().sum::<u64>();
    let payback = (1..=90).find(|n| back(*n) >= cost);
    assert_eq!(
        v["summary"],
        json!({
            "installs": installs_total, "signups": installs_total, "first_active": 0,
            "cpi_cents": cost / costed_installs,
            "roas_d1": percent(back(1), cost), "roas_d7": percent(back(7), cost), "roas_d30": percent(back(30), cost),
            "payback_days": payback,
        })
    );
    assert!(installs_total > 100 && back(30) > 0, "{v}");
}

/// Review finding: with no `api.cpi_cents` (the default) the costed channels' query read
/// `c IN ()`, which ClickHouse refuses: every attribution was 502. Without costs every
/// channel is listed with null CPI and ROAS, and the summary counts them all.
#[test]
fn analytics_attribution_without_configured_costs() {
    let api = Api::start_configured(false, |_| {}, |_, c| c.api.cpi_cents.clear());
    let h = &api.history;
    let (first, last) = (h.today - 40, h.today - 1);
    let v =
        api.json(&format!("/api/analytics/attribution?game_id=g1&env=prod&start={}&end={}", date(first), date(last)));
    let channels = v["by_channel"].as_array().expect("channels");
    assert_eq!(channels.len(), CHANNELS.len(), "{v}");
    let installs: u64 = channels.iter().map(|c| c["installs"].as_u64().expect("installs")).sum();
    assert!(installs > 100, "{v}");
    for c in channels {
        assert_eq!((&c["cpi_cents"], &c["roas_d1"], &c["roas_d30"]), (&Value::Null, &Value::Null, &Value::Null), "{c}");
    }
    assert_eq!(
        v["summary"],
        json!({"installs": installs, "signups": installs, "first_active": 0, "cpi_cents": null,
               "roas_d1": null, "roas_d7": null, "roas_d30": null, "payback_days": null})
    );
}
