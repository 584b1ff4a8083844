//! `GET /api/analytics/behavior/events`, `/funnel` and `/paths`: event exploration,
//! funnels (plain, or ordered with `sequential`, `same_session`, `gap_sec`) and the
//! most common paths. Events are read once per `event_id` (`LIMIT 1 BY event_id`, or
//! `uniqExact(event_id)`), so redelivered copies never count twice.

use std::collections::HashMap;

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Value as Json};

use super::db::u;
use super::error::ApiError;
use super::params::{self, percent, Range, DAY};
use super::sql::{prop, prop_key, quote, quote_list};
use super::Ctx;

/// Most steps of a funnel or a path.
const MAX_STEPS: usize = 10;

/// Most features of an adoption (each is an aggregate of the query).
pub const MAX_FEATURES: usize = 50;

/// A user's events an ordered funnel looks at: the earliest this many of the funnel's
/// events in the range.
pub const MAX_FUNNEL_EVENTS: usize = 1_000;

/// Events an ordered funnel may look at in one request, over all users.
pub const FUNNEL_BUDGET: u64 = 50_000_000;

/// `/behavior/events`.
pub async fn events(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, DAY, false)?;
    let mut w = format!("{}{}", range.filter("event_time"), ctx.scope.filter());
    if let Some(e) = ctx.params.get("event") {
        w.push_str(&format!(" AND event = {}", quote(e)));
    }
    if let Some(k) = ctx.params.get("prop_key") {
        let k = prop_key("prop_key", k)?;
        let v = ctx.params.get("prop_val").unwrap_or("");
        w.push_str(&format!(" AND {} = {}", prop(&k), quote(v)));
    }
    let page = ctx.params.page()?;
    let size = ctx.params.int_or_default("size", 50, 1..=500)?;
    let total = ctx.db.scalar(&format!("SELECT uniqExact(event_id) FROM analytics.events WHERE {w}")).await?.as_u64();
    let rows = ctx
        .db
        .select(&format!(
            "SELECT toUInt32(event_time) AS t, event, user_id FROM \
             (SELECT event_time, event, user_id, event_id FROM analytics.events WHERE {w} LIMIT 1 BY event_id) \
             ORDER BY event_time DESC, event_id LIMIT {size} OFFSET {}",
            (page - 1).saturating_mul(size)
        ))
        .await?;
    let items: Vec<Json> = rows
        .iter()
        .map(|r| {
            json!({
                "time": params::rfc3339(u(r, 0) as i64),
                "event": r.get(1).map(Value::as_str).unwrap_or_default(),
                "user_id": r.get(2).map(Value::as_str).unwrap_or_default(),
            })
        })
        .collect();
    Ok(super::object([("events", items.into()), ("total", total.into())]))
}

/// One event of a group's sequence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Step {
    /// Unix seconds.
    pub time: u64,
    /// Event name.
    pub event: String,
    /// Session id.
    pub session: String,
}

/// How far a funnel's chain goes from each start: the steps reached by the best chain,
/// where each step is the first event of the next name at the previous step's second or
/// later, not already in the chain (times are kept to the second: the events of one
/// second may have come in any order) — in the same session with `same_session`, at most
/// `gap` seconds after the previous with `gap > 0`. `seq` is in time order. Each event
/// looked at takes one from `budget`; `None` when it runs out (a request's funnel may not
/// hold the control thread for long).
pub fn funnel_depth(seq: &[Step], steps: &[String], same_session: bool, gap: u64, budget: &mut u64) -> Option<usize> {
    let mut best = 0;
    let mut chain: Vec<usize> = Vec::with_capacity(steps.len());
    // Where each event's second starts in `seq`: a next step's candidates start there.
    *budget = budget.checked_sub(seq.len() as u64)?;
    let mut second_starts = Vec::with_capacity(seq.len());
    for (i, s) in seq.iter().enumerate() {
        let same = i > 0 && seq[i - 1].time == s.time;
        second_starts.push(if same { second_starts[i - 1] } else { i });
    }
    for (start, first) in seq.iter().enumerate() {
        *budget = budget.checked_sub(1)?;
        if first.event != steps[0] {
            continue;
        }
        chain.clear();
        chain.push(start);
        let mut prev = start;
        for name in &steps[1..] {
            let p = &seq[prev];
            let mut next = None;
            for (j, s) in seq.iter().enumerate().skip(second_starts[prev]) {
                *budget = budget.checked_sub(1)?;
                if gap > 0 && s.time - p.time > gap {
                    break;
                }
                if &s.event == name && (!same_session || s.session == p.session) && !chain.contains(&j) {
                    next = Some(j);
                    break;
                }
            }
            match next {
                Some(j) => {
                    chain.push(j);
                    prev = j;
                }
                None => break,
            }
        }
        best = best.max(chain.len());
        if best == steps.len() {
            break;
        }
    }
    Some(best)
}

/// Each group's events in time order (ties by event name, then session), from rows of
/// (group, [times], [events], [sessions]). The rows are consumed as they are read (each
/// row's arrays freed once its steps are made), not copied.
fn sequences(rows: Vec<Vec<Value>>) -> Vec<Vec<Step>> {
    rows.into_iter()
        .map(|r| {
            let mut r = r.into_iter().skip(1).map(|v| match v {
                Value::Array(a) => a,
                _ => Vec::new(),
            });
            let (t, e, s) = (r.next().unwrap_or_default(), r.next().unwrap_or_default(), r.next().unwrap_or_default());
            let mut seq: Vec<Step> = t
                .iter()
                .zip(e.iter())
                .zip(s.iter())
                .map(|((t, e), s)| Step { time: t.as_u64(), event: e.as_str(), session: s.as_str() })
                .collect();
            seq.sort();
            seq
        })
        .collect()
}

/// `/behavior/funnel`.
pub async fn funnel(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let steps = ctx.params.list("steps");
    if steps.is_empty() {
        return Err(ApiError::param("steps", "required"));
    }
    if steps.len() > MAX_STEPS {
        return Err(ApiError::param("steps", format!("at most {MAX_STEPS}")));
    }
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = format!("{}{}", range.filter("event_time"), ctx.scope.filter());
    let same_session = ctx.params.flag_one("same_session");
    let gap = ctx.params.gap_sec()?;
    let ordered = ctx.params.flag_one("sequential") || same_session || gap > 0;
    let max_users = ctx.params.int_or_default("max_users", 50_000, 1..=200_000)?;
    let mut counts = vec![0u64; steps.len()];
    // Ordered, the funnel reads the events of at most `max_users` users (the lowest ids):
    // said in `truncated` when there were more.
    let mut truncated = false;
    if ordered {
        let rows = ctx
            .db
            .select(&format!(
                "SELECT user_id, groupArray(t), groupArray(event), groupArray(session_id) FROM \
                 (SELECT * FROM (SELECT user_id, toUInt32(event_time) AS t, event, session_id FROM analytics.events \
                  WHERE {w} AND event IN {} LIMIT 1 BY event_id) \
                  ORDER BY user_id, t, event, session_id LIMIT {MAX_FUNNEL_EVENTS} BY user_id) \
                 GROUP BY user_id ORDER BY user_id LIMIT {}",
                quote_list(&steps),
                max_users + 1
            ))
            .await?;
        let mut rows = rows;
        truncated = rows.len() as i64 > max_users;
        rows.truncate(max_users as usize);
        let mut budget = FUNNEL_BUDGET;
        for seq in sequences(rows) {
            let d = funnel_depth(&seq, &steps, same_session, gap, &mut budget).ok_or_else(|| {
                ApiError::param(
                    "max_users",
                    "the funnel needs more work than one request may take: fewer users or a shorter range",
                )
            })?;
            for c in counts.iter_mut().take(d) {
                *c += 1;
            }
        }
    } else {
        // One pass over the range: per user, which steps it did; then the users of step 1
        // who also did step k.
        let did: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("max(CAST(event AS String) = {}) AS h{i}", quote(s)))
            .collect();
        let cols: Vec<String> = (0..steps.len()).map(|i| format!("sum(h0 AND h{i})")).collect();
        let rows = ctx
            .db
            .select(&format!(
                "SELECT {} FROM (SELECT user_id, {} FROM analytics.events WHERE {w} AND event IN {} GROUP BY user_id)",
                cols.join(", "),
                did.join(", "),
                quote_list(&steps)
            ))
            .await?;
        if let Some(r) = rows.first() {
            for (i, c) in counts.iter_mut().enumerate() {
                *c = u(r, i);
            }
        }
    }
    let base = counts.first().copied().unwrap_or(0);
    let out: Vec<Json> = steps
        .iter()
        .zip(&counts)
        .map(|(s, n)| json!({ "step": s, "users": n, "rate": percent(*n as f64, base as f64) }))
        .collect();
    Ok(super::object([("steps", out.into()), ("truncated", truncated.into())]))
}

/// A group's path: its first `n` events joined with `>`, cut at a gap longer than `gap`
/// seconds (when > 0) or, with `same_session`, at a change of session.
pub fn path_of(seq: &[Step], n: usize, same_session: bool, gap: u64) -> String {
    let mut out: Vec<&str> = Vec::new();
    for (i, s) in seq.iter().enumerate() {
        if i > 0 {
            let p = &seq[i - 1];
            if (gap > 0 && s.time - p.time > gap) || (same_session && s.session != p.session) {
                break;
            }
        }
        out.push(&s.event);
        if out.len() == n {
            break;
        }
    }
    out.join(">")
}

/// A path filter (`path_re`, `path_not_re`): an expression in Go's `regexp` syntax, with
/// its meaning (`go_regex`), compiled within a size bound; a bad one is 400 naming the
/// parameter.
fn path_pattern(ctx: &Ctx<'_>, name: &'static str) -> Result<Option<regex::Regex>, ApiError> {
    let Some(p) = ctx.params.get(name).filter(|p| !p.is_empty()) else { return Ok(None) };
    super::go_regex::compile(p, 1 << 20)
        .map(Some)
        .map_err(|e| ApiError::param(name, format!("not a regular expression: {e}")))
}

/// `/behavior/paths`.
pub async fn paths(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let n = ctx.params.int_or_default("steps", 5, 1..=MAX_STEPS as i64)? as usize;
    let limit = ctx.params.int_or_default("limit", 50, 1..=500)? as usize;
    let max_groups = ctx.params.int_or_default("max_groups", 50_000, 1..=200_000)?;
    let per_user = ctx.params.choice_or_default("per", &["session", "user"]) == "user";
    let same_session = ctx.params.flag_one("same_session");
    let gap = ctx.params.gap_sec()?;
    let path_re = path_pattern(ctx, "path_re")?;
    let path_not_re = path_pattern(ctx, "path_not_re")?;
    let mut w = format!("{}{}", range.filter("event_time"), ctx.scope.filter());
    let include = ctx.params.list("include");
    if !include.is_empty() {
        w.push_str(&format!(" AND event IN {}", quote_list(&include)));
    }
    let exclude = ctx.params.list("exclude");
    if !exclude.is_empty() {
        w.push_str(&format!(" AND event NOT IN {}", quote_list(&exclude)));
    }
    let group = if per_user { "user_id" } else { "concat(user_id, '|', session_id)" };
    let rows = ctx
        .db
        .select(&format!(
            "SELECT g, groupArray(t), groupArray(event), groupArray(session_id) FROM \
             (SELECT * FROM (SELECT {group} AS g, toUInt32(event_time) AS t, event, session_id FROM analytics.events \
              WHERE {w} LIMIT 1 BY event_id) ORDER BY g, t, event, session_id LIMIT {n} BY g) \
             GROUP BY g ORDER BY g LIMIT {max_groups}"
        ))
        .await?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for seq in sequences(rows) {
        let p = path_of(&seq, n, same_session, gap);
        let wanted = path_re.as_ref().is_none_or(|re| re.is_match(&p))
            && !path_not_re.as_ref().is_some_and(|re| re.is_match(&p));
        if !p.is_empty() && wanted {
            *counts.entry(p).or_default() += 1;
        }
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let out: Vec<Json> =
        sorted.into_iter().take(limit).map(|(path, groups)| json!({ "path": path, "groups": groups })).collect();
    Ok(super::object([("paths", out.into())]))
}

/// The group of `/adoption`: a user (default) or, with `per=session`, a user's session.
fn adoption_group(ctx: &Ctx<'_>) -> Result<&'static str, ApiError> {
    Ok(match ctx.params.choice_or_default("per", &["user", "session"]) {
        "session" => "concat(user_id, '|', session_id)",
        _ => "user_id",
    })
}

/// The `features` of `/adoption` and `/adoption_breakdown`: required, at most
/// [`MAX_FEATURES`].
fn features(ctx: &Ctx<'_>) -> Result<Vec<String>, ApiError> {
    let features = ctx.params.list("features");
    if features.is_empty() {
        return Err(ApiError::param("features", "required"));
    }
    if features.len() > MAX_FEATURES {
        return Err(ApiError::param("features", format!("at most {MAX_FEATURES}")));
    }
    Ok(features)
}

/// `/behavior/adoption`: per feature event, the groups that did it, as a percent of the
/// groups with any event in the range (`baseline`).
pub async fn adoption(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let features = features(ctx)?;
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = format!("{}{}", range.filter("event_time"), ctx.scope.filter());
    let g = adoption_group(ctx)?;
    let cols: Vec<String> = features.iter().map(|f| format!("uniqExactIf({g}, event = {})", quote(f))).collect();
    let rows =
        ctx.db.select(&format!("SELECT uniqExact({g}), {} FROM analytics.events WHERE {w}", cols.join(", "))).await?;
    let r = rows.first().cloned().unwrap_or_default();
    let baseline = u(&r, 0);
    let out: Vec<Json> = features
        .iter()
        .enumerate()
        .map(|(i, f)| json!({ "feature": f, "groups": u(&r, i + 1), "rate": percent(u(&r, i + 1) as f64, baseline as f64) }))
        .collect();
    Ok(super::object([("features", out.into()), ("baseline", baseline.into())]))
}

/// `/behavior/adoption_breakdown`: per value of `by` (`platform`, `country`, else
/// `channel`), the groups with any event (`baseline`), those that did any of the features,
/// and the percent; sorted by value; the [`params::MAX_GROUPS`] values with the most
/// groups at most.
pub async fn adoption_breakdown(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let features = features(ctx)?;
    let by = ctx.params.choice_or_default("by", &["channel", "platform", "country"]);
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = format!("{}{}", range.filter("event_time"), ctx.scope.filter());
    let g = adoption_group(ctx)?;
    let mut rows = ctx
        .db
        .select(&format!(
            "SELECT toString({by}) AS dim, uniqExact({g}) AS base, uniqExactIf({g}, CAST(event AS String) IN {}) \
             FROM analytics.events WHERE {w} GROUP BY dim ORDER BY base DESC, dim LIMIT {}",
            quote_list(&features),
            params::MAX_GROUPS + 1
        ))
        .await?;
    // The MAX_GROUPS values with the largest baseline, by value.
    let truncated = rows.len() > params::MAX_GROUPS;
    rows.truncate(params::MAX_GROUPS);
    rows.sort_by_cached_key(|r| r.first().map(Value::as_str).unwrap_or_default());
    let out: Vec<Json> = rows
        .iter()
        .map(|r| {
            let (base, n) = (u(r, 1), u(r, 2));
            json!({ "dim": r.first().map(Value::as_str).unwrap_or_default(), "baseline": base, "groups": n,
                    "rate": percent(n as f64, base as f64) })
        })
        .collect();
    Ok(super::object([("by", by.into()), ("rows", out.into()), ("truncated", truncated.into())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(items: &[(u64, &str, &str)]) -> Vec<Step> {
        items.iter().map(|(t, e, s)| Step { time: *t, event: (*e).into(), session: (*s).into() }).collect()
    }

    #[test]
    fn funnel_chains_take_the_best_start() {
        let steps: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_string()).collect();
        let s = seq(&[(0, "a", "s1"), (100, "b", "s1"), (105, "a", "s2"), (106, "b", "s2"), (107, "c", "s2")]);
        let mut budget = u64::MAX;
        let b = &mut budget;
        assert_eq!(funnel_depth(&s, &steps, false, 0, b), Some(3));
        assert_eq!(funnel_depth(&s, &steps, true, 0, b), Some(3));
        assert_eq!(funnel_depth(&s, &steps, false, 5, b), Some(3), "the second start is within the gap");
        let s = seq(&[(0, "a", "s1"), (100, "b", "s1"), (300, "c", "s1")]);
        assert_eq!(funnel_depth(&s, &steps, false, 150, b), Some(2));
        assert_eq!(funnel_depth(&seq(&[(0, "b", "s"), (1, "c", "s")]), &steps, false, 0, b), Some(0));
        assert_eq!(path_of(&s, 2, false, 0), "a>b");
        assert_eq!(path_of(&s, 5, false, 150), "a>b");
    }

    #[test]
    fn events_of_one_second_follow_each_other_in_any_order() {
        let steps = |names: &[&str]| names.iter().map(|s| (*s).to_string()).collect::<Vec<String>>();
        let mut budget = u64::MAX;
        let b = &mut budget;
        // A session's start and its first event in the same second (sorted by name).
        let s = seq(&[(5, "level_start", "s"), (5, "session_start", "s"), (9, "session_end", "s")]);
        assert_eq!(funnel_depth(&s, &steps(&["session_start", "level_start", "session_end"]), true, 0, b), Some(3));
        assert_eq!(funnel_depth(&s, &steps(&["session_start", "level_start"]), false, 1, b), Some(2));
        // An earlier second is still before: no step goes back in time.
        assert_eq!(funnel_depth(&s, &steps(&["session_end", "level_start"]), false, 0, b), Some(1));
        // The same event is not two steps.
        assert_eq!(funnel_depth(&seq(&[(0, "a", "s")]), &steps(&["a", "a"]), false, 0, b), Some(1));
        assert_eq!(funnel_depth(&seq(&[(0, "a", "s"), (0, "a", "s")]), &steps(&["a", "a"]), false, 0, b), Some(2));
        // Another session's event of the same second is not the next step with same_session.
        let s = seq(&[(5, "level_start", "other"), (5, "session_start", "s")]);
        assert_eq!(funnel_depth(&s, &steps(&["session_start", "level_start"]), true, 0, b), Some(1));
    }

    #[test]
    fn a_funnel_stops_when_its_budget_is_spent() {
        let steps: Vec<String> = ["a", "b"].iter().map(|s| (*s).to_string()).collect();
        // Every event starts a chain that never finds "b": quadratic in the events.
        let many: Vec<(u64, &str, &str)> = (0..1_000).map(|t| (t, "a", "s")).collect();
        let s = seq(&many);
        let mut budget = 1_000_000;
        assert_eq!(funnel_depth(&s, &steps, false, 0, &mut budget), Some(1));
        // The seconds' starts, each start, and each chain's look from its own event on.
        assert_eq!(budget, 1_000_000 - 1_000 - 1_000 - 1_000 * 1_001 / 2);
        let mut budget = 10_000;
        assert_eq!(funnel_depth(&s, &steps, false, 0, &mut budget), None);
    }
}
