//! What the demo's screen and summary show, read from where it lives: the control port's
//! `/metrics` (events accepted and refused, backlog, rows inserted), ClickHouse (rows,
//! exact DAU, new users, revenue, conversion, level pass rate, online, freshness) and
//! Redis (the HyperLogLog sketches the workers merge: `hll:dau:`, `hll:new:`,
//! `hll:online:`).

use std::net::SocketAddr;
use std::time::Duration;

use super::http_client;
use super::redis_client::Redis;

/// The game and environment the demo plays.
pub const GAME: &str = "demo-game";
/// The simulated players' environment.
pub const ENV: &str = "prod";

/// Counters from `/metrics`, summed over their labels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    /// `croupier_events_accepted_total` (events and payments).
    pub accepted: u64,
    /// `croupier_events_refused_total`.
    pub refused: u64,
    /// `croupier_stream_backlog_events`.
    pub backlog: u64,
    /// `croupier_worker_rows_inserted_total`.
    pub inserted: u64,
}

/// Reads `/metrics` from the control port.
pub fn metrics(control: SocketAddr) -> Result<Metrics, String> {
    let res = http_client::get(control, "/metrics", Duration::from_secs(5)).map_err(|e| format!("/metrics: {e}"))?;
    if res.status != 200 {
        return Err(format!("/metrics: status {}", res.status));
    }
    Ok(parse_metrics(&String::from_utf8_lossy(&res.body)))
}

fn parse_metrics(text: &str) -> Metrics {
    let mut m = Metrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0).max(0.0) as u64;
        match name {
            "croupier_events_accepted_total" => m.accepted += value,
            "croupier_events_refused_total" => m.refused += value,
            "croupier_stream_backlog_events" => m.backlog += value,
            "croupier_worker_rows_inserted_total" => m.inserted += value,
            _ => {}
        }
    }
    m
}

/// What ClickHouse and Redis hold for the demo's game today (UTC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// Rows in `analytics.events` (all games, deduplicated).
    pub event_rows: u64,
    /// Rows in `analytics.payments` (all games, deduplicated).
    pub payment_rows: u64,
    /// Distinct players with an event today.
    pub dau_exact: u64,
    /// `PFCOUNT hll:dau:<game>:<env>:<today>`.
    pub dau_sketch: u64,
    /// Distinct players who registered today.
    pub new_exact: u64,
    /// `PFCOUNT hll:new:<game>:<env>:<today>`.
    pub new_sketch: u64,
    /// Distinct players with an event in the last 60 s.
    pub online_exact: u64,
    /// `PFCOUNT hll:online:<game>:<env>:<this minute>`.
    pub online_sketch: u64,
    /// Sum of today's successful payments, in cents.
    pub revenue_cents: u64,
    /// Today's successful payments.
    pub payments_ok: u64,
    /// Distinct players with a successful payment today.
    pub payers: u64,
    /// Today's `level_complete` events.
    pub level_complete: u64,
    /// Today's `level_fail` events.
    pub level_fail: u64,
    /// Seconds between now and the newest event in ClickHouse (`None` when there is none).
    pub freshness_secs: Option<u64>,
    /// The UTC day these figures are for (`YYYY-MM-DD`).
    pub day: String,
}

impl Stored {
    /// Paying players over daily players, in percent.
    pub fn conversion_pct(&self) -> f64 {
        if self.dau_exact == 0 {
            0.0
        } else {
            100.0 * self.payers as f64 / self.dau_exact as f64
        }
    }

    /// Levels completed over levels finished, in percent.
    pub fn pass_rate_pct(&self) -> f64 {
        let done = self.level_complete + self.level_fail;
        if done == 0 {
            0.0
        } else {
            100.0 * self.level_complete as f64 / done as f64
        }
    }
}

/// The query of the events table: one row of tab-separated figures.
pub fn events_query() -> String {
    let today = format!("toDate(event_time, 'UTC') = toDate(now(), 'UTC') AND game_id = '{GAME}' AND env = '{ENV}'");
    format!(
        "SELECT count(), uniqExactIf(user_id, {today}), uniqExactIf(user_id, {today} AND event = 'register'), \
         uniqExactIf(user_id, event_time >= now() - 60 AND game_id = '{GAME}' AND env = '{ENV}'), \
         countIf({today} AND event = 'level_complete'), countIf({today} AND event = 'level_fail'), \
         toUInt32(now()) - toUInt32(max(event_time)), toString(toDate(now(), 'UTC')) FROM analytics.events FINAL"
    )
}

/// The query of the payments table: one row of tab-separated figures.
pub fn payments_query() -> String {
    let ok = format!(
        "toDate(time, 'UTC') = toDate(now(), 'UTC') AND game_id = '{GAME}' AND env = '{ENV}' AND status = 'success'"
    );
    format!(
        "SELECT count(), sumIf(amount_cents, {ok}), countIf({ok}), uniqExactIf(user_id, {ok}) \
         FROM analytics.payments FINAL"
    )
}

/// Runs `sql` on ClickHouse's HTTP interface; the first line's tab-separated fields.
fn query(clickhouse_http: SocketAddr, sql: &str) -> Result<Vec<String>, String> {
    let target = format!("/?query={}", percent_encode(sql));
    let res =
        http_client::get(clickhouse_http, &target, Duration::from_secs(10)).map_err(|e| format!("ClickHouse: {e}"))?;
    let text = String::from_utf8_lossy(&res.body);
    if res.status != 200 {
        return Err(format!("ClickHouse: status {}: {}", res.status, text.trim()));
    }
    Ok(text.lines().next().unwrap_or("").split('\t').map(str::to_owned).collect())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn field(row: &[String], i: usize) -> u64 {
    row.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64
}

/// Reads today's figures from ClickHouse (HTTP) and Redis.
pub fn stored(clickhouse_http: SocketAddr, redis: SocketAddr) -> Result<Stored, String> {
    let mut s = Stored::default();
    tables(clickhouse_http, &mut s)?;
    sketches(redis, &mut s)?;
    Ok(s)
}

/// Reads ClickHouse's figures into `s`, its sketches left as they are (the live screen
/// reads each server on its own: one that fails leaves the other's figures live).
pub fn tables(clickhouse_http: SocketAddr, s: &mut Stored) -> Result<(), String> {
    let e = query(clickhouse_http, &events_query())?;
    let p = query(clickhouse_http, &payments_query())?;
    let event_rows = field(&e, 0);
    *s = Stored {
        event_rows,
        payment_rows: field(&p, 0),
        dau_exact: field(&e, 1),
        new_exact: field(&e, 2),
        online_exact: field(&e, 3),
        level_complete: field(&e, 4),
        level_fail: field(&e, 5),
        freshness_secs: (event_rows > 0).then(|| field(&e, 6)),
        revenue_cents: field(&p, 1),
        payments_ok: field(&p, 2),
        payers: field(&p, 3),
        day: e.get(7).cloned().unwrap_or_default(),
        ..std::mem::take(s)
    };
    Ok(())
}

/// Reads today's real-time sketches (the UTC day, as ClickHouse's figures count it) from
/// Redis into `s`.
pub fn sketches(redis: SocketAddr, s: &mut Stored) -> Result<(), String> {
    let now = time::OffsetDateTime::now_utc();
    let day = format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day());
    if s.day.is_empty() {
        s.day = day.clone();
    }
    let mut r = Redis::connect(redis, Duration::from_secs(2)).map_err(|e| format!("Redis: {e}"))?;
    let minute = minute_now();
    s.dau_sketch = r.pfcount(&format!("hll:dau:{GAME}:{ENV}:{day}")).map_err(|e| format!("Redis: {e}"))?;
    s.new_sketch = r.pfcount(&format!("hll:new:{GAME}:{ENV}:{day}")).map_err(|e| format!("Redis: {e}"))?;
    s.online_sketch = r.pfcount(&format!("hll:online:{GAME}:{ENV}:{minute}")).map_err(|e| format!("Redis: {e}"))?;
    Ok(())
}

/// The current UTC minute as `YYYYMMDDHHmm` (the online sketches' key suffix).
fn minute_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}{:02}{:02}{:02}{:02}", now.year(), u8::from(now.month()), now.day(), now.hour(), now.minute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP x\n\
            croupier_events_accepted_total{game=\"g\",stream=\"events\"} 10\n\
            croupier_events_accepted_total{game=\"g\",stream=\"payments\"} 2\n\
            croupier_events_refused_total{game=\"g\",reason=\"rate_limited\"} 3\n\
            croupier_stream_backlog_events{stream=\"events\"} 7\n\
            croupier_worker_rows_inserted_total{table=\"events\"} 9\n\
            croupier_events_accepted_totalx 100\n";
        assert_eq!(parse_metrics(text), Metrics { accepted: 12, refused: 3, backlog: 7, inserted: 9 });
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode("SELECT 'a' = 1"), "SELECT%20%27a%27%20%3D%201");
    }
}
