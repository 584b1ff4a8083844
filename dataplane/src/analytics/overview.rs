//! `GET /api/analytics/overview`: the KPIs of the range's last day (DAU, new users,
//! revenue, pay rate, ARPU, ARPPU), WAU/MAU ending that day, D1/D7/D30 of the latest
//! cohorts whose day N is complete, the registered total, and daily series.

use serde_json::{json, Value as Json};

use super::error::ApiError;
use super::params::{self, percent, ratio, Range, DAY};
use super::retention::latest_rates;
use super::taxonomy::{ACTIVE_KIND, NEW_KIND};
use super::Ctx;

/// The route.
pub async fn overview(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = ctx.scope.filter();
    let last = range.end.div_euclid(DAY);
    let (day0, day_end) = (last * DAY, last * DAY + DAY - 1);
    // Players per day come from the per-day sketches of `daily_players` (a few rows per
    // day, not a row per player and day: `uniqCombined`, exact to a few thousand players,
    // then an estimate, docs/metrics.md); the registered total from `registered_users`
    // (a row per player).
    ctx.db.require_user_days().await?;
    let day = |n: i64| format!("toDate('{}')", params::date_string(n));
    let (first, last_d, week) = (day(last - 29), day(last), day(last - 6));
    let get = |r: &Vec<_>, i: usize| r.get(i).map_or(0, croupier_protocol::clickhouse::result::Value::as_u64);
    let players = ctx
        .db
        .select(&format!(
            "SELECT uniqCombinedMergeIf(users, kind = {ACTIVE_KIND} AND d = {last_d}), \
             uniqCombinedMergeIf(users, kind = {ACTIVE_KIND} AND d >= {week}), \
             uniqCombinedMergeIf(users, kind = {ACTIVE_KIND}), uniqCombinedMergeIf(users, kind = {NEW_KIND} AND d = {last_d}) \
             FROM analytics.daily_players WHERE d >= {first} AND d <= {last_d}{w}"
        ))
        .await?;
    let a = players.first().cloned().unwrap_or_default();
    let (dau, wau, mau, new_users) = (get(&a, 0), get(&a, 1), get(&a, 2), get(&a, 3));
    let registered_total = ctx
        .db
        .scalar(&format!(
            "SELECT count() FROM (SELECT user_id FROM analytics.registered_users WHERE 1 = 1{w} \
             GROUP BY user_id HAVING minMerge(first_d) <= {last_d})"
        ))
        .await?
        .as_u64();
    let pay = ctx
        .db
        .select(&format!(
            "SELECT sumIf(amount_cents, status = 'success'), uniqExactIf(user_id, status = 'success') \
             FROM analytics.payments FINAL WHERE time >= toDateTime({day0}) AND time <= toDateTime({day_end}){w}"
        ))
        .await?;
    let p = pay.first().cloned().unwrap_or_default();
    let (revenue, payers) = (get(&p, 0), get(&p, 1));

    // D-N of the latest cohort whose day N is complete: day N is at most yesterday and
    // at most the range's last complete day.
    let today = ctx.now.div_euclid(DAY);
    let end_complete = if range.end.rem_euclid(DAY) == DAY - 1 { last } else { last - 1 };
    let complete = end_complete.min(today - 1);
    let rates = latest_rates(ctx, complete).await?;
    let d = |n: i64| super::retention::DAYS.iter().position(|x| *x == n).map_or(0.0, |i| rates[i]);

    let series_range = Range { start: range.start.div_euclid(DAY) * DAY, end: day_end };
    let (first_day, last_day) = series_range.days();
    let new_series = day_series(
        ctx,
        &format!(
            "SELECT toUInt32(d) AS day, uniqCombinedMerge(users) FROM analytics.daily_players \
             WHERE kind = {NEW_KIND} AND d >= {} AND d <= {}{w} GROUP BY day ORDER BY day",
            day(first_day),
            day(last_day)
        ),
    )
    .await?;
    let revenue_series = day_series(
        ctx,
        &format!(
            "SELECT toUInt32(toDate(time, 'UTC')) AS d, sumIf(amount_cents, status = 'success') FROM analytics.payments FINAL \
             WHERE {}{w} GROUP BY d ORDER BY d",
            series_range.filter("time")
        ),
    )
    .await?;
    let peak_series = day_series(
        ctx,
        &format!(
            "SELECT toUInt32(d) AS day, maxMerge(peak_online) FROM analytics.daily_online_peak \
             WHERE d >= toDate(toDateTime({}), 'UTC') AND d <= toDate(toDateTime({}), 'UTC'){w} GROUP BY day ORDER BY day",
            first_day * DAY,
            last_day * DAY
        ),
    )
    .await?;
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

/// `[[RFC 3339 of the day, n], ...]` from rows of (day number, n).
async fn day_series(ctx: &Ctx<'_>, sql: &str) -> Result<Json, ApiError> {
    let rows = ctx.db.select(sql).await?;
    Ok(Json::Array(
        rows.iter()
            .map(|r| {
                let day = r.first().map_or(0, |v| v.as_u64()) as i64;
                json!([params::rfc3339(day * DAY), r.get(1).map_or(0, |v| v.as_u64())])
            })
            .collect(),
    ))
}
