//! `GET /api/analytics/overview`: the KPIs of the range's last day (DAU, new users,
//! revenue, pay rate, ARPU, ARPPU), WAU/MAU ending that day, D1/D7/D30 of the latest
//! cohorts whose day N is complete, the registered total, and daily series.
//!
//! Its queries do not depend on one another: they are sent together (each on its own
//! connection, at most half of `api.max_queries_in_flight` at once), so the answer takes
//! about as long as the slowest ones rather than their sum.

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Value as Json};

use super::db::u as get;
use super::db::Recipe;
use super::error::ApiError;
use super::params::{self, percent, ratio, Range, DAY};
use super::retention::latest_rates;
use super::taxonomy::{ACTIVE_KIND, NEW_KIND};
use super::Ctx;

/// `toDate('YYYY-MM-DD')` of a day number.
fn day(n: i64) -> String {
    format!("toDate('{}')", params::date_string(n))
}

/// The route.
pub async fn overview(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = ctx.scope.filter();
    let last = range.end.div_euclid(DAY);
    let (day0, day_end) = (last * DAY, last * DAY + DAY - 1);
    // Before any figure: 503 while the tables are being filled.
    ctx.db.require_user_days().await?;
    let today = ctx.now.div_euclid(DAY);
    // Players per day come from the per-day sketches of `daily_players` (a few rows per
    // day, not a row per player and day: `uniqCombined`, exact to a few thousand players,
    // then an estimate, docs/metrics.md): DAU, WAU and MAU in one pass over the month's
    // sketches of active players (each sketch read once), new users from the new-user
    // series below (its last day).
    let last_d = day(last);
    let players_sql = format!(
        "SELECT uniqCombinedMergeIf(users, d = {last_d}), uniqCombinedMergeIf(users, d >= {}), uniqCombinedMerge(users) \
         FROM analytics.daily_players WHERE kind = {ACTIVE_KIND} AND d >= {} AND d <= {last_d}{w}",
        day(last - 6),
        day(last - 29)
    );
    let pay_time = format!("time >= toDateTime({day0}) AND time <= toDateTime({day_end})");
    let pay_sql = format!(
        "SELECT sumIf(amount_cents, status = 'success'), uniqExactIf(user_id, status = 'success') \
         FROM {} WHERE {pay_time}{w}",
        super::payments::latest(&pay_time, &w)
    );

    // D-N of the latest cohort whose day N is complete: day N is at most yesterday and
    // at most the range's last complete day.
    // None when the range holds no such day (today only, the future): no cohort, 0.
    let end_complete = if range.end.rem_euclid(DAY) == DAY - 1 { last } else { last - 1 };
    let complete = Some(end_complete.min(today - 1)).filter(|l| *l >= range.start.div_euclid(DAY));

    let series_range = Range { start: range.start.div_euclid(DAY) * DAY, end: day_end };
    let (first_day, last_day) = series_range.days();
    let new_sql = format!(
        "SELECT toUInt32(d) AS day, uniqCombinedMerge(users) FROM analytics.daily_players \
         WHERE kind = {NEW_KIND} AND d >= {} AND d <= {}{w} GROUP BY day ORDER BY day",
        day(first_day),
        day(last_day)
    );
    let revenue_sql = format!(
        "SELECT toUInt32(toDate(time, 'UTC')) AS d, sumIf(amount_cents, status = 'success') FROM {} \
         WHERE {}{w} GROUP BY d ORDER BY d",
        super::payments::latest(&series_range.filter("time"), &w),
        series_range.filter("time")
    );
    let peak_sql = format!(
        "SELECT toUInt32(d) AS day, maxMerge(peak_online) FROM analytics.daily_online_peak \
         WHERE d >= toDate(toDateTime({}), 'UTC') AND d <= toDate(toDateTime({}), 'UTC'){w} GROUP BY day ORDER BY day",
        first_day * DAY,
        last_day * DAY
    );
    // `join!`, not `try_join!`: a query still running when a sibling fails is not dropped
    // (its connection closed and its place freed while ClickHouse still runs it) but ends
    // as every read does — answered, or given up on at the deadline and cancelled.
    let (players, registered_total, pay, rates, new_rows, revenue_series, peak_series) = monoio::join!(
        ctx.db.select(&players_sql),
        registered_total(ctx, Some(last), today),
        ctx.db.select(&pay_sql),
        async {
            match complete {
                Some(l) => latest_rates(ctx, l).await,
                None => Ok([0.0; 3]),
            }
        },
        ctx.db.select(&new_sql),
        day_series(ctx, &revenue_sql),
        day_series(ctx, &peak_sql),
    );
    let (players, registered_total, pay, rates) = (players?, registered_total?, pay?, rates?);
    let (new_rows, revenue_series, peak_series) = (new_rows?, revenue_series?, peak_series?);
    let a = players.first().cloned().unwrap_or_default();
    let (dau, wau, mau) = (get(&a, 0), get(&a, 1), get(&a, 2));
    let new_users = new_rows.iter().find(|r| get(r, 0) as i64 == last).map_or(0, |r| get(r, 1));
    let new_series = series(&new_rows);
    let p = pay.first().cloned().unwrap_or_default();
    let (revenue, payers) = (get(&p, 0), get(&p, 1));
    let d = |n: i64| super::retention::DAYS.iter().position(|x| *x == n).map_or(0.0, |i| rates[i]);
    Ok(json!({
        "dau": dau,
        "wau": wau,
        "mau": mau,
        "new_users": new_users,
        "registered_total": registered_total,
        "revenue_cents": revenue,
        "pay_rate": percent(payers as f64, dau as f64),
        "arpu": ratio(revenue as f64, dau as f64),
        "arppu": ratio(revenue as f64, payers as f64),
        "d1": d(1),
        "d7": d(7),
        "d30": d(30),
        "series": {
            "new_users": new_series,
            "peak_online": peak_series,
            "revenue_cents": revenue_series,
        }
    }))
}

/// Players whose first new-user day is at most `last` (exact; `None`: ever): the players
/// per first day of the complete days (before `today`), read from `registered_users` and
/// remembered like the other figures of complete days ([`super::db::Reads::remembered_or_read`]:
/// rows arriving late for those days show within [`super::db::REMEMBER_FOR`] plus
/// `api.query_timeout_ms`), plus,
/// when `last` is today or later, the players whose first such day is in `today ..= last`,
/// read each time: the players with a new-user event in those days (`user_days`) whose
/// first day is not earlier (their rows of `registered_users`).
pub async fn registered_total(ctx: &Ctx<'_>, last: Option<i64>, today: i64) -> Result<u64, ApiError> {
    let w = ctx.scope.filter();
    let recent = async {
        if last.is_some_and(|l| l < today) {
            return Ok::<u64, ApiError>(0);
        }
        let from = day(today);
        let (to_d, to_first) = match last {
            Some(l) => (format!(" AND d <= {}", day(l)), format!(" AND minMerge(first_d) <= {}", day(l))),
            None => (String::new(), String::new()),
        };
        let n = ctx
            .db
            .scalar(&format!(
                "SELECT count() FROM (SELECT user_id FROM analytics.registered_users WHERE user_id != '' AND user_id IN \
                 (SELECT user_id FROM analytics.user_days WHERE d >= {from}{to_d} \
                 AND (registered > 0 OR first_active > 0){w}){w} \
                 GROUP BY user_id HAVING minMerge(first_d) >= {from}{to_first})"
            ))
            .await?;
        Ok(n.as_u64())
    };
    // Both end before either's failure is answered (as the overview's reads, above).
    let (by_day, recent) = monoio::join!(registered_by_day(ctx, today), recent);
    let (by_day, recent) = (by_day?, recent?);
    let complete: u64 = by_day.iter().filter(|(d, _)| last.is_none_or(|l| *d <= l)).map(|(_, n)| n).sum();
    Ok(complete + recent)
}

/// `(day, players whose first new-user day it is)` for the days before `today`,
/// remembered per scope and `today`.
async fn registered_by_day(ctx: &Ctx<'_>, today: i64) -> Result<Vec<(i64, u64)>, ApiError> {
    let w = ctx.scope.filter();
    let recipe = Recipe {
        sql: format!(
            "SELECT toUInt32(fd) AS day, count() FROM (SELECT user_id, minMerge(first_d) AS fd \
             FROM analytics.registered_users WHERE user_id != ''{w} GROUP BY user_id) WHERE fd < {} \
             GROUP BY day ORDER BY day",
            day(today)
        ),
        decode: day_pairs,
        arg: 0,
    };
    let flat = ctx.db.remembered_or_read(format!("registered_by_day{w}|{today}"), recipe).await?;
    Ok(flat.chunks_exact(2).map(|p| (p[0] as i64, p[1] as u64)).collect())
}

/// Rows of (day number, n) as `[day, n, day, n, ...]` (both below 2^53: exact as f64).
fn day_pairs(rows: &[Vec<Value>], _: i64) -> Vec<f64> {
    rows.iter().flat_map(|r| [get(r, 0) as f64, get(r, 1) as f64]).collect()
}

/// `[[RFC 3339 of the day, n], ...]` from the rows of `sql`, (day number, n).
async fn day_series(ctx: &Ctx<'_>, sql: &str) -> Result<Json, ApiError> {
    Ok(series(&ctx.db.select(sql).await?))
}

/// `[[RFC 3339 of the day, n], ...]` from rows of (day number, n).
fn series(rows: &[Vec<Value>]) -> Json {
    Json::Array(
        rows.iter()
            .map(|r| {
                let day = r.first().map_or(0, |v| v.as_u64()) as i64;
                json!([params::rfc3339(day * DAY), r.get(1).map_or(0, |v| v.as_u64())])
            })
            .collect(),
    )
}
