//! `GET /api/analytics/levels`: the level funnel (started, cleared, failed), per level
//! players, win rate, mean duration and retries of clears, difficulty, and the same per
//! segment (new, payer, returning). Level fields come from `props` (`level`, `episode`,
//! `duration_sec`, `retries`); each event is read once (`LIMIT 1 BY event_id`).
//! `props.level` is whatever clients send: an answer holds the [`MAX_LEVELS`] levels
//! (pairs of a group and a level for `/episodes` and `/maps`) with the most players, and
//! says `"truncated": true` when there were more.

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Value as Json};

use super::db::u;
use super::error::ApiError;
use super::params::{percent, Range, DAY};
use super::sql::{prop, quote};
use super::taxonomy::{LEVEL_CLEAR, LEVEL_FAIL, LEVEL_START, NEW_USER};
use super::Ctx;

/// The most levels `/levels` answers (and pairs of an episode or map and a level
/// `/levels/episodes` and `/levels/maps` answer): those with the most players, ties by
/// level (then group) as strings, listed by level as Croupier lists them.
pub const MAX_LEVELS: usize = 1000;

/// `x` to 2 decimals; a value too large to have any (|x| × 100 ≥ 2^53) is itself.
fn round2(x: f64) -> f64 {
    let y = x * 100.0;
    if y.is_finite() && y.abs() < 9_007_199_254_740_992.0 {
        y.round() / 100.0
    } else {
        x
    }
}

/// Two columns: how many clears carry a number in `col` (a prop's text), and the mean of
/// those numbers × 2^-64. A number is what `toFloat64OrNull` reads from the text (as
/// Croupier's `avgOrNull(toFloat64OrNull(JSON_VALUE(...)))`: a JSON number or a string
/// holding one; other strings, objects, arrays, booleans and absent keys are skipped).
/// Scaling by a power of two changes no digit of a sum, but keeps the sum of values near
/// the largest `Float64` finite, where their sum itself would overflow.
fn mean_of_clears(col: &str) -> String {
    // `inf` and `nan` read as numbers; they are skipped as other non-numbers are, so one
    // client cannot blank a level's mean. 2^-64 as a literal (exact in a Float64).
    let n = format!("toFloat64OrNull({col})");
    let kept = format!("k = 2 AND isNotNull({n}) AND isFinite(ifNull({n}, 0))");
    format!("countIf({kept}), avgIf(ifNull({n}, 0) * 5.42101086242752217003726400434970855712890625e-20, {kept})")
}

/// The mean of the columns `i` (count) and `i + 1` (scaled mean) of [`mean_of_clears`],
/// to 2 decimals; `null` when no clear carries a number (or the mean is no finite
/// number: a value of `inf` or `nan`).
fn mean(r: &[Value], i: usize) -> Json {
    if u(r, i) == 0 {
        return Json::Null;
    }
    let m = r.get(i + 1).map_or(f64::NAN, Value::as_f64) * 2f64.powi(64);
    if m.is_finite() {
        json!(round2(m))
    } else {
        Json::Null
    }
}

/// `低` above 70 % wins, `中` from 40 %, else `高` (Croupier's labels).
fn difficulty(win_rate: f64) -> &'static str {
    if win_rate > 70.0 {
        "低"
    } else if win_rate >= 40.0 {
        "中"
    } else {
        "高"
    }
}

/// The route.
pub async fn levels(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let scope = ctx.scope.filter();
    let days = format!("{}{scope}", range.filter("event_time"));
    let episode = match ctx.params.get("episode") {
        Some(e) => format!(" AND {} = {}", prop("episode"), quote(e)),
        None => String::new(),
    };
    let w = format!("{days}{episode}");
    let funnel = ctx
        .db
        .select(&format!(
            "SELECT uniqExactIf(user_id, CAST(event AS String) IN {LEVEL_START}), \
             uniqExactIf(user_id, CAST(event AS String) IN {LEVEL_CLEAR}), \
             uniqExactIf(user_id, CAST(event AS String) IN {LEVEL_FAIL}) FROM analytics.events WHERE {w}"
        ))
        .await?;
    let f = funnel.first().cloned().unwrap_or_default();
    let started = u(&f, 0);
    let steps: Vec<Json> = [("开始关卡", u(&f, 0)), ("完成关卡", u(&f, 1)), ("失败过", u(&f, 2))]
        .iter()
        .map(|(s, n)| json!({ "step": s, "users": n, "rate": percent(*n as f64, started as f64) }))
        .collect();
    let payers = format!(
        "SELECT user_id FROM {} WHERE status = 'success' AND {}{scope}",
        super::payments::latest(&range.filter("time"), &scope),
        range.filter("time")
    );
    // One pass over the range's events: per user, whether a new-user event is among them
    // (the `new` segment) and the level events (start 1, clear 2), each read once
    // (`LIMIT 1 BY event_id`); then per level.
    let mut rows = ctx
        .db
        .select(&format!(
            "SELECT lvl, uniqExactIf(user_id, k = 1) AS players, uniqExactIf(user_id, k = 2), \
             {}, {}, \
             uniqExactIf(user_id, k = 1 AND is_new = 1), uniqExactIf(user_id, k = 2 AND is_new = 1), \
             uniqExactIf(user_id, k = 1 AND user_id IN ({payers})), \
             uniqExactIf(user_id, k = 2 AND user_id IN ({payers})) \
             FROM (SELECT user_id, is_new, e.1 AS k, e.2 AS lvl, e.3 AS dur, e.4 AS ret \
                   FROM (SELECT user_id, max(n) AS is_new, groupArrayIf((k, lvl, dur, ret), k > 0) AS evs \
                         FROM (SELECT user_id, toUInt8(CAST(event AS String) IN {NEW_USER}) AS n, \
                               multiIf(CAST(event AS String) IN {LEVEL_START}, 1, CAST(event AS String) IN {LEVEL_CLEAR}, 2, 0) AS k, \
                               {} AS lvl, {} AS dur, {} AS ret FROM analytics.events \
                               WHERE {days} AND (event IN {NEW_USER} OR (event IN {}{episode})) LIMIT 1 BY event_id) \
                         GROUP BY user_id) \
                   ARRAY JOIN evs AS e) \
             WHERE lvl != '' GROUP BY lvl ORDER BY players DESC, lvl LIMIT {}",
            mean_of_clears("dur"),
            mean_of_clears("ret"),
            prop("level"),
            prop("duration_sec"),
            prop("retries"),
            level_events(),
            MAX_LEVELS + 1,
        ))
        .await?;
    let truncated = keep_top(&mut rows, 1);
    let mut per_level = Vec::new();
    let (mut new, mut payer, mut returning) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let level = r.first().map(Value::as_str).unwrap_or_default();
        let (players, winners) = (u(r, 1), u(r, 2));
        let win_rate = percent(winners as f64, players as f64);
        per_level.push(json!({
            "level": level,
            "players": players,
            "win_rate": win_rate,
            "avg_duration_sec": mean(r, 3),
            "avg_retries": mean(r, 5),
            "difficulty": difficulty(win_rate),
        }));
        let seg = |p: u64, w: u64| json!({ "level": level, "players": p, "win_rate": percent(w as f64, p as f64) });
        new.push(seg(u(r, 7), u(r, 8)));
        payer.push(seg(u(r, 9), u(r, 10)));
        returning.push(seg(players.saturating_sub(u(r, 7)), winners.saturating_sub(u(r, 8))));
    }
    Ok(super::object([
        ("funnel", steps.into()),
        ("per_level", per_level.into()),
        (
            "per_level_segments",
            super::object([("new", new.into()), ("payer", payer.into()), ("returning", returning.into())]),
        ),
        ("truncated", truncated.into()),
    ]))
}

/// Keeps the first [`MAX_LEVELS`] of `rows` (read with `LIMIT MAX_LEVELS + 1`, most
/// players first), sorted by their first `keys` columns as strings; whether some were
/// left out.
fn keep_top(rows: &mut Vec<Vec<Value>>, keys: usize) -> bool {
    let truncated = rows.len() > MAX_LEVELS;
    rows.truncate(MAX_LEVELS);
    let key =
        |r: &[Value]| -> Vec<String> { (0..keys).map(|i| r.get(i).map(Value::as_str).unwrap_or_default()).collect() };
    rows.sort_by_cached_key(|r| key(r));
    truncated
}

/// Start and clear events together.
fn level_events() -> String {
    let strip = |s: &str| s.trim_start_matches('(').trim_end_matches(')').to_owned();
    format!("({}, {})", strip(LEVEL_START), strip(LEVEL_CLEAR))
}

/// `/levels/episodes` (`dim` = `episode`) and `/levels/maps` (`map`): per value of
/// `props.<dim>` and level, players (distinct starters) and win rate (distinct clearers
/// of events carrying the same value); events without the value or a level are left out,
/// as Croupier does.
pub async fn facets(ctx: &Ctx<'_>, dim: &'static str, key: &'static str) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = format!("{}{}", range.filter("event_time"), ctx.scope.filter());
    let mut rows = ctx
        .db
        .select(&format!(
            "SELECT grp, lvl, uniqExactIf(user_id, CAST(event AS String) IN {LEVEL_START}) AS players, \
             uniqExactIf(user_id, CAST(event AS String) IN {LEVEL_CLEAR}) \
             FROM (SELECT user_id, event, {} AS grp, {} AS lvl FROM analytics.events \
                   WHERE {w} AND event IN {} LIMIT 1 BY event_id) \
             WHERE grp != '' AND lvl != '' GROUP BY grp, lvl ORDER BY players DESC, lvl, grp LIMIT {}",
            prop(dim),
            prop("level"),
            level_events(),
            MAX_LEVELS + 1,
        ))
        .await?;
    let truncated = keep_top(&mut rows, 2);
    let mut out: Vec<Json> = Vec::new();
    let mut current: Option<(String, Vec<Json>)> = None;
    for r in &rows {
        let g = r.first().map(Value::as_str).unwrap_or_default();
        let (players, winners) = (u(r, 2), u(r, 3));
        let item = json!({
            "level": r.get(1).map(Value::as_str).unwrap_or_default(),
            "players": players,
            "win_rate": percent(winners as f64, players as f64),
        });
        match &mut current {
            Some((name, items)) if *name == g => items.push(item),
            _ => {
                if let Some((name, items)) = current.take() {
                    out.push(json!({ dim: name, "per_level": items }));
                }
                current = Some((g, vec![item]));
            }
        }
    }
    if let Some((name, items)) = current {
        out.push(json!({ dim: name, "per_level": items }));
    }
    Ok(super::object([(key, out.into()), ("truncated", truncated.into())]))
}
