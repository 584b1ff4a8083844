//! `GET /api/analytics/realtime`: online now and active users over the last 1/5/15
//! minutes from the per-minute HyperLogLogs in Redis (`hll:online:<game>:<env>:<YYYYMMDDHHmm>`,
//! a union with one `PFCOUNT` over several keys, no temporary key), DAU and new users
//! of today from `hll:dau:`/`hll:new:...:<YYYY-MM-DD>`; revenue, success rate, the
//! registered total and the online peaks from ClickHouse. An empty scope reads the keys
//! with empty segments, as Croupier's worker writes them.

use croupier_protocol::clickhouse::result::Value;
use croupier_protocol::resp::Frame;
use serde_json::{json, Value as Json};
use time::OffsetDateTime;

use super::error::ApiError;
use super::params::{self, DAY};
use super::taxonomy::REFUNDED;
use super::Ctx;

/// `YYYYMMDDHHmm` of a minute (unix seconds).
pub fn minute_key(secs: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

/// `PFCOUNT` of the union of `keys`.
async fn pfcount(ctx: &Ctx<'_>, keys: &[String]) -> Result<u64, ApiError> {
    let mut args: Vec<&[u8]> = vec![b"PFCOUNT"];
    args.extend(keys.iter().map(|k| k.as_bytes()));
    match ctx.redis(&args).await? {
        Frame::Integer(n) => Ok(u64::try_from(n).unwrap_or(0)),
        other => Err(ApiError::RedisFailed(format!("PFCOUNT answered {other:?}"))),
    }
}

/// The route.
pub async fn realtime(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    // The live sketches are per game and environment: without both, Croupier reads keys
    // with empty segments and answers 0 players beside revenue summed over every game.
    let game = ctx.scope.game.as_deref().filter(|g| !g.is_empty());
    let game = game.ok_or_else(|| ApiError::param("game_id", "required: live figures are per game and env"))?;
    let env = ctx.scope.env.as_deref().filter(|e| !e.is_empty());
    let env = env.ok_or_else(|| ApiError::param("env", "required: live figures are per game and env"))?;
    let minute = ctx.now - ctx.now.rem_euclid(60);
    let online_keys = |n: i64| -> Vec<String> {
        (0..n).map(|i| format!("hll:online:{game}:{env}:{}", minute_key(minute - 60 * i))).collect()
    };
    let online = pfcount(ctx, &online_keys(1)).await?;
    let active_5m = pfcount(ctx, &online_keys(5)).await?;
    let active_15m = pfcount(ctx, &online_keys(15)).await?;
    let today = params::date_string(ctx.now.div_euclid(DAY));
    let dau_today = pfcount(ctx, &[format!("hll:dau:{game}:{env}:{today}")]).await?;
    let new_today = pfcount(ctx, &[format!("hll:new:{game}:{env}:{today}")]).await?;

    let w = ctx.scope.filter();
    let day0 = ctx.now.div_euclid(DAY) * DAY;
    let five = ctx.now - 300;
    let pay = ctx
        .db
        .select(&format!(
            "SELECT sumIf(amount_cents, status = 'success' AND time > toDateTime({five})), \
             sumIf(amount_cents, status = 'success'), \
             countIf(status = 'success' AND time > toDateTime({five})), \
             countIf(NOT ({REFUNDED}) AND time > toDateTime({five})) \
             FROM analytics.payments FINAL WHERE time >= toDateTime({day0}) AND time <= toDateTime({}){w}",
            ctx.now
        ))
        .await?;
    let p = pay.first().cloned().unwrap_or_default();
    let u = |r: &[Value], i: usize| r.get(i).map_or(0, Value::as_u64);
    let (rev_5m, rev_today, succ_5m, attempts_5m) = (u(&p, 0), u(&p, 1), u(&p, 2), u(&p, 3));
    ctx.db.require_user_days().await?;
    // Read at each request: one pass over `registered_users` (a row per player) costs
    // less than the remembered per-day sum plus today's players checked against it.
    let registered_total = ctx
        .db
        .scalar(&format!("SELECT uniqExact(user_id) FROM analytics.registered_users WHERE 1 = 1{w}"))
        .await?
        .as_u64();
    let peaks = ctx
        .db
        .select(&format!(
            "SELECT maxIf(p, d = toDate(toDateTime({day0}), 'UTC')), max(p) FROM (SELECT d, maxMerge(peak_online) AS p \
             FROM analytics.daily_online_peak WHERE 1 = 1{w} GROUP BY d)"
        ))
        .await?;
    let pk = peaks.first().cloned().unwrap_or_default();
    let pay_succ_rate = if attempts_5m == 0 { 0.0 } else { succ_5m as f64 * 100.0 / attempts_5m as f64 };
    Ok(json!({
        "online": online,
        "active_1m": online,
        "active_5m": active_5m,
        "active_15m": active_15m,
        "rev_5m": rev_5m,
        "rev_today": rev_today,
        "rev_5m_yuan": format!("{:.2}", rev_5m as f64 / 100.0),
        "rev_today_yuan": format!("{:.2}", rev_today as f64 / 100.0),
        "pay_succ_rate": pay_succ_rate,
        "registered_total": registered_total,
        "online_peak_today": u(&pk, 0).max(online),
        "online_peak_all_time": u(&pk, 1).max(online),
        "dau_today": dau_today,
        "new_today": new_today,
    }))
}

/// `/realtime/series`: per minute of the range (`start`, `end` required), online (the
/// latest write of `minute_online` per game, env and minute, summed over the scope), its
/// sums over the last 5 and 15 minutes present (Croupier's `ROWS BETWEEN 4/14 PRECEDING`),
/// and `success` revenue.
pub async fn series(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = super::params::Range::from(ctx.params, ctx.now, 0, true)?;
    let w = ctx.scope.filter();
    let online = ctx
        .db
        .select(&format!(
            "SELECT t, sum(o) FROM (SELECT toUInt32(m) AS t, game_id, env, argMax(online, version) AS o \
             FROM analytics.minute_online WHERE {}{w} GROUP BY t, game_id, env) GROUP BY t ORDER BY t",
            range.filter("m")
        ))
        .await?;
    let revenue = ctx
        .db
        .select(&format!(
            "SELECT toUInt32(toStartOfMinute(time, 'UTC')) AS t, sumIf(amount_cents, status = 'success') \
             FROM analytics.payments FINAL WHERE {}{w} GROUP BY t ORDER BY t",
            range.filter("time")
        ))
        .await?;
    let u = |r: &[Value], i: usize| r.get(i).map_or(0, Value::as_u64);
    let ts = |r: &[Value]| params::rfc3339(u(r, 0) as i64);
    let values: Vec<u64> = online.iter().map(|r| u(r, 1)).collect();
    let window = |n: usize| -> Vec<Json> {
        online
            .iter()
            .enumerate()
            .map(|(i, r)| json!([ts(r), values[i.saturating_sub(n - 1)..=i].iter().sum::<u64>()]))
            .collect()
    };
    Ok(json!({
        "online": online.iter().map(|r| json!([ts(r), u(r, 1)])).collect::<Vec<_>>(),
        "active_5m_sum": window(5),
        "active_15m_sum": window(15),
        "revenue_cents": revenue.iter().map(|r| json!([ts(r), u(r, 1)])).collect::<Vec<_>>(),
    }))
}
