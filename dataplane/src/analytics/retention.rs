//! `GET /api/analytics/retention`: per cohort day D (users with a `register` — or
//! `first_active` with `cohort=first_active` — event on D, as Croupier counts it: a
//! player registering on two days is in both cohorts), the cohort size
//! and the percent of it active (any event) on D+1, D+7 and D+30. A D-N figure is given
//! only when day D+N is complete (before today, UTC); otherwise it is `null`.

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Value as Json};

use super::db::Recipe;
use super::error::ApiError;
use super::params::{self, percent, Range, DAY};
use super::taxonomy::{FIRST_ACTIVE, REGISTER};
use super::Ctx;

/// The days after the cohort day that are measured.
pub const DAYS: [i64; 3] = [1, 7, 30];

/// One cohort.
#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    /// Day number (days since the epoch).
    pub day: i64,
    /// Users in it.
    pub total: u64,
    /// Of them, active on day + 1, + 7, + 30.
    pub retained: [u64; 3],
    /// The last complete day (yesterday).
    pub complete: i64,
}

impl Cohort {
    /// D-`n` in percent, `None` while day + n is not complete.
    pub fn rate(&self, n: i64) -> Option<f64> {
        let i = DAYS.iter().position(|d| *d == n)?;
        (self.day + n <= self.complete).then(|| percent(self.retained[i] as f64, self.total as f64))
    }
}

/// The cohorts of days `first..=last` (day numbers); `kind` is `register` or
/// `first_active`. Days without a cohort are absent.
pub async fn cohorts(ctx: &Ctx<'_>, kind: &str, first: i64, last: i64) -> Result<Vec<Cohort>, ApiError> {
    let events = if kind == "first_active" { FIRST_ACTIVE } else { REGISTER };
    let w = ctx.scope.filter();
    let cohort_range = Range { start: first * DAY, end: last * DAY + DAY - 1 }.filter("event_time");
    let activity = Range { start: (first + 1) * DAY, end: (last + 30) * DAY + DAY - 1 }.filter("event_time");
    let sql = format!(
        "SELECT toUInt32(cd) AS day, count(), sum(has(ad, cd + 1)), sum(has(ad, cd + 7)), sum(has(ad, cd + 30)) \
         FROM (SELECT DISTINCT user_id, toDate(event_time, 'UTC') AS cd FROM analytics.events \
               WHERE event IN {events} AND {cohort_range}{w}) AS c \
         ANY LEFT JOIN \
              (SELECT user_id, groupUniqArray(toDate(event_time, 'UTC')) AS ad FROM analytics.events \
               WHERE {activity}{w} AND user_id IN \
                 (SELECT user_id FROM analytics.events WHERE event IN {events} AND {cohort_range}{w}) \
               GROUP BY user_id) AS a \
         USING user_id GROUP BY cd ORDER BY cd"
    );
    let complete = ctx.now.div_euclid(DAY) - 1;
    let rows = ctx.db.select(&sql).await?;
    let u = |r: &[Value], i: usize| r.get(i).map_or(0, Value::as_u64);
    Ok(rows
        .iter()
        .map(|r| Cohort { day: u(r, 0) as i64, total: u(r, 1), retained: [u(r, 2), u(r, 3), u(r, 4)], complete })
        .collect())
}

/// D1, D7 and D30 of the latest cohorts whose day N is `day` (a complete day): the
/// percent of the `register` cohorts of `day − 1`, `day − 7` and `day − 30` active on
/// `day`. Reads those four days only (the overview's figures; `cohorts` reads every day
/// between), remembered per scope and day ([`super::db::Reads::remembered_or_read`]):
/// the days are complete.
pub async fn latest_rates(ctx: &Ctx<'_>, day: i64) -> Result<[f64; 3], ApiError> {
    ctx.db.require_user_days().await?;
    let w = ctx.scope.filter();
    let date = |d: i64| format!("toDate('{}')", params::date_string(d));
    let cohort_days: Vec<String> = DAYS.iter().map(|n| date(day - n)).collect();
    let cohort_days = cohort_days.join(", ");
    // From `user_days` (a row per player and day, not an event), in one pass over the
    // four days: per player, the cohort days with a register event (each a cohort of
    // its own, as the retention route counts them), and whether any row is on `day`.
    let sql = format!(
        "SELECT toUInt32(cd) AS day, count(), sum(retained) \
         FROM (SELECT user_id, groupUniqArrayIf(d, registered > 0 AND d IN ({cohort_days})) AS cds, \
                      max(d = {day_d}) AS retained \
               FROM analytics.user_days WHERE d IN ({cohort_days}, {day_d}) AND user_id != ''{w} GROUP BY user_id \
               HAVING length(cds) > 0) \
         ARRAY JOIN cds AS cd \
         GROUP BY day ORDER BY day",
        day_d = date(day)
    );
    let recipe = Recipe { sql, decode: rates_of, arg: day };
    let v = ctx.db.remembered_or_read(format!("latest_rates{w}|{day}"), recipe).await?;
    Ok([0, 1, 2].map(|i| v.get(i).copied().unwrap_or(0.0)))
}

/// D1, D7, D30 of `day` from the rows of (cohort day, players, of them active on `day`).
fn rates_of(rows: &[Vec<Value>], day: i64) -> Vec<f64> {
    let u = |r: &[Value], i: usize| r.get(i).map_or(0, Value::as_u64);
    DAYS.iter()
        .map(|n| {
            rows.iter().find(|r| u(r, 0) as i64 == day - n).map_or(0.0, |r| percent(u(r, 2) as f64, u(r, 1) as f64))
        })
        .collect()
}

/// The route.
pub async fn retention(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 13 * DAY, false)?;
    let (first, last) = range.days();
    params::at_most_366_days(first, last)?;
    // As Croupier: `first_active` in any case, anything else (the dashboard sends
    // `signup`) is `register`.
    let kind = ctx.params.choice_or_default("cohort", &["register", "first_active"]);
    let found = cohorts(ctx, kind, first, last).await?;
    let complete = ctx.now.div_euclid(DAY) - 1;
    let rows: Vec<Json> = (first..=last)
        .map(|day| {
            let c = found.iter().find(|c| c.day == day).cloned().unwrap_or(Cohort {
                day,
                total: 0,
                retained: [0; 3],
                complete,
            });
            let date = params::date_string(day);
            json!({
                "day": date,
                "date": date,
                "total": c.total,
                "d1": c.rate(1),
                "d7": c.rate(7),
                "d30": c.rate(30),
            })
        })
        .collect();
    Ok(super::object([("cohorts", rows.into())]))
}
