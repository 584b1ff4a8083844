//! `GET /api/analytics/realtime`: online now and active users over the last 1/5/15
//! minutes from the per-minute HyperLogLogs in Redis (`hll:online:<game>:<env>:<YYYYMMDDHHmm>`),
//! DAU and new users of today from `hll:dau:`/`hll:new:...:<YYYY-MM-DD>`; revenue, success
//! rate, the registered total and the online peaks from ClickHouse. An empty scope reads
//! the keys with empty segments, as Croupier's worker writes them.
//!
//! The minute keys have no hash tag, so on a Redis Cluster they lie in different slots and
//! one `PFCOUNT` over them is refused (`CROSSSLOT`): each key is read with its own `GET`
//! (all sent at once; in a cluster each to its slot's primary) and the registers are
//! merged here with the protocol crate's sketch, whose count is Redis's `PFCOUNT` of the
//! union. The same path serves a single Redis. Every Redis read is bounded by the
//! request's deadline (`api.query_timeout_ms`, 504 past it), not only by
//! `redis.reply_timeout_ms`.

use croupier_protocol::clickhouse::result::Value;
use croupier_protocol::hll::Sketch;
use croupier_protocol::resp::{self, Frame};
use serde_json::{json, Value as Json};
use time::OffsetDateTime;

use super::error::ApiError;
use super::params::{self, DAY};
use super::Ctx;

/// `YYYYMMDDHHmm` of a minute (unix seconds).
pub fn minute_key(secs: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

/// `PFCOUNT` of one key.
async fn pfcount(ctx: &Ctx<'_>, key: &str) -> Result<u64, ApiError> {
    match ctx.redis(&[b"PFCOUNT", key.as_bytes()]).await? {
        Frame::Integer(n) => Ok(u64::try_from(n).unwrap_or(0)),
        other => Err(ApiError::RedisFailed(format!("PFCOUNT answered {other:?}"))),
    }
}

/// The counts of the unions of the first `ns[i]` of `keys` (each `n` at most
/// `keys.len()`, in increasing order), equal to Redis's `PFCOUNT` over those keys, and the
/// count of each key alone: every
/// key is read with a `GET` of its own, all sent at once (in a cluster each to its own
/// slot's primary), within the request's deadline, and merged in order. An absent key is
/// an empty sketch; a key of another type, a malformed value or a Redis failure is 502.
pub async fn union_counts(ctx: &Ctx<'_>, keys: &[String], ns: &[usize]) -> Result<(Vec<u64>, Vec<u64>), ApiError> {
    let handles: Vec<_> = keys
        .iter()
        .map(|k| {
            let redis = ctx.redis.clone();
            let mut cmd = Vec::with_capacity(k.len() + 24);
            resp::command(&mut cmd, &[b"GET".as_slice(), k.as_bytes()]);
            monoio::spawn(async move { super::read_redis(&redis, cmd).await })
        })
        .collect();
    let replies = async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await);
        }
        out
    };
    let Ok(replies) = monoio::time::timeout_at(ctx.db.deadline(), replies).await else {
        return Err(ApiError::QueryTimeout);
    };
    let mut union = Sketch::new();
    let mut counts = Vec::with_capacity(ns.len());
    let mut each = Vec::with_capacity(keys.len());
    let mut wanted = ns.iter().peekable();
    for (i, (reply, key)) in replies.into_iter().zip(keys).enumerate() {
        match super::redis_reply(reply)? {
            Frame::Null => each.push(0),
            Frame::BulkString(bytes) => {
                let mut one = Sketch::new();
                one.merge_redis(&bytes)
                    .map_err(|e| ApiError::RedisFailed(format!("{key} holds no HyperLogLog: {e}")))?;
                each.push(one.count());
                union.merge(&one);
            }
            other => return Err(ApiError::RedisFailed(format!("GET {key} answered {other:?}"))),
        }
        while wanted.next_if(|n| **n == i + 1).is_some() {
            counts.push(union.count());
        }
    }
    // Unions of more keys than given (none asked for) are the union of all of them.
    while wanted.next().is_some() {
        counts.push(union.count());
    }
    Ok((counts, each))
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
    let (counts, minutes) = union_counts(ctx, &online_keys(15), &[1, 5, 15]).await?;
    let (online, active_5m, active_15m) = match counts[..] {
        [a, b, c] => (a, b, c),
        _ => (0, 0, 0),
    };
    // The last minutes' figures count in the peaks: the stored ones come with the worker's
    // next write of `minute_online`, and a peak must not fall back meanwhile when a minute
    // turns (the minutes of today only for today's).
    let day_start = ctx.now.div_euclid(DAY) * DAY;
    let recent_peak = minutes.iter().copied().max().unwrap_or(0);
    let today_peak = minutes
        .iter()
        .enumerate()
        .filter(|(i, _)| minute - 60 * *i as i64 >= day_start)
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    let today = params::date_string(ctx.now.div_euclid(DAY));
    let dau_today = pfcount(ctx, &format!("hll:dau:{game}:{env}:{today}")).await?;
    let new_today = pfcount(ctx, &format!("hll:new:{game}:{env}:{today}")).await?;

    let w = ctx.scope.filter();
    let day0 = ctx.now.div_euclid(DAY) * DAY;
    let five = ctx.now - 300;
    // Croupier's windows: `time > now() - 5 minutes` (yesterday's last minutes just after
    // midnight) and `time >= today`, neither bounded above (a payment stamped ahead counts
    // once stored); the rate's total is every row, refunds included (`count()`).
    let window = format!("time >= toDateTime({})", day0.min(five + 1));
    let pay = ctx
        .db
        .select(&format!(
            "SELECT sumIf(amount_cents, status = 'success' AND time > toDateTime({five})), \
             sumIf(amount_cents, status = 'success' AND time >= toDateTime({day0})), \
             countIf(status = 'success' AND time > toDateTime({five})), \
             countIf(time > toDateTime({five})) \
             FROM {} WHERE {window}{w}",
            super::payments::latest(&window, &w)
        ))
        .await?;
    let p = pay.first().cloned().unwrap_or_default();
    let u = |r: &[Value], i: usize| r.get(i).map_or(0, Value::as_u64);
    let (rev_5m, rev_today, succ_5m, total_5m) = (u(&p, 0), u(&p, 1), u(&p, 2), u(&p, 3));
    ctx.db.require_user_days().await?;
    // Read at each request: one pass over `registered_users` (a row per player) costs
    // less than the remembered per-day sum plus today's players checked against it.
    let registered_total = ctx
        .db
        .scalar(&format!("SELECT uniqExact(user_id) FROM analytics.registered_users WHERE user_id != ''{w}"))
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
    // Today's row of `daily_users` (never written lower than it was): the floor of the
    // key's count when Redis lost the key and the worker that held its sketch is gone.
    let stored = ctx
        .db
        .select(&format!(
            "SELECT max(dau), max(new_users) FROM analytics.daily_users FINAL WHERE d = toDate('{today}'){w}"
        ))
        .await?;
    let st = stored.first().cloned().unwrap_or_default();
    let (dau_today, new_today) = (dau_today.max(u(&st, 0)), new_today.max(u(&st, 1)));
    let pay_succ_rate = if total_5m == 0 { 0.0 } else { succ_5m as f64 * 100.0 / total_5m as f64 };
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
        "online_peak_today": u(&pk, 0).max(today_peak),
        "online_peak_all_time": u(&pk, 1).max(recent_peak),
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
    if range.buckets(60) > params::MAX_POINTS {
        return Err(ApiError::param(
            "start",
            format!("more than {} minutes from start to end: a later start", params::MAX_POINTS),
        ));
    }
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
             FROM {} WHERE {}{w} GROUP BY t ORDER BY t",
            super::payments::latest(&range.filter("time"), &w),
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
    Ok(super::object([
        ("online", online.iter().map(|r| json!([ts(r), u(r, 1)])).collect::<Vec<_>>().into()),
        ("active_5m_sum", window(5).into()),
        ("active_15m_sum", window(15).into()),
        ("revenue_cents", revenue.iter().map(|r| json!([ts(r), u(r, 1)])).collect::<Vec<_>>().into()),
    ]))
}
