//! `GET /api/analytics/attribution` (which Croupier's dashboard calls and its server
//! lacks): installs by acquisition channel and what they returned.
//!
//! - An install is a user whose earliest `install`, `first_active` or `register` event in
//!   the range falls on day C; its channel is that event's `channel` (empty: `unknown`).
//! - `signups`: users with a `register` event in the range; `first_active`: users with a
//!   `first_active` event in it (per channel of those events).
//! - `rev_d0_cents`: `success` payments of installs on their install day; ROAS D-N:
//!   their `success` payments in days C .. C+N−1, in percent of the channel's cost.
//! - Cost: `api.cpi_cents` per channel (`"<game>/<channel>"` before `"<channel>"`) times
//!   its installs; a channel without a configured cost has `null` CPI and ROAS.
//! - `payback_days`: the first N (1 to 90) at which the installs of the channels with a
//!   cost have returned their cost, `null` when not (yet).

use std::collections::BTreeMap;

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Value as Json};

use super::db::u;
use super::error::ApiError;
use super::params::{self, percent, Range, DAY};
use super::sql;
use super::taxonomy::{FIRST_ACTIVE, REGISTER};
use super::Ctx;

/// Events that make an install.
const INSTALL: &str = "('install', 'first_active', 'register', 'user.register')";

/// The ROAS horizons, days.
const ROAS_DAYS: [i64; 3] = [1, 7, 30];

/// Days after an install that payback is looked for.
const PAYBACK_DAYS: i64 = 90;

fn s(r: &[Value], i: usize) -> String {
    r.get(i).map(Value::as_str).unwrap_or_default()
}

/// A channel's name as answered, in SQL: an empty `channel` is `unknown`.
fn channel_sql(column: &str) -> String {
    format!("if(empty(toString({column})), 'unknown', toString({column}))")
}

/// One channel's figures.
#[derive(Default)]
struct Channel {
    installs: u64,
    signups: u64,
    first_active: u64,
    /// Revenue of its installs on day offset `i` after the install (0 .. PAYBACK_DAYS).
    by_offset: Vec<u64>,
    cpi: Option<u64>,
}

impl Channel {
    fn revenue_within(&self, days: i64) -> u64 {
        self.by_offset.iter().take(days as usize).sum()
    }

    fn cost(&self) -> Option<u64> {
        self.cpi.map(|c| c.saturating_mul(self.installs))
    }
}

/// The configured cost per install of `channel` in `game`.
fn cpi(costs: &BTreeMap<String, u64>, game: Option<&str>, channel: &str) -> Option<u64> {
    game.and_then(|g| costs.get(&format!("{g}/{channel}"))).or_else(|| costs.get(channel)).copied()
}

/// The channels that may have a configured cost in `game`: every key, and every key of
/// the game without its `"<game>/"`.
fn costed_names(costs: &BTreeMap<String, u64>, game: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = costs.keys().cloned().collect();
    if let Some(g) = game {
        let prefix = format!("{g}/");
        names.extend(costs.keys().filter_map(|k| k.strip_prefix(&prefix)).map(str::to_owned));
    }
    names.sort();
    names.dedup();
    names
}

fn roas(revenue: u64, cost: Option<u64>) -> Json {
    match cost {
        Some(c) if c > 0 => json!(percent(revenue as f64, c as f64)),
        _ => Json::Null,
    }
}

/// `/attribution`. Channels are whatever clients send: everything per user or per
/// channel is counted in ClickHouse, and only the channels listed (at most
/// `MAX_GROUPS`) and those with a configured cost come back, so that no number of
/// distinct channels costs this process memory.
pub async fn attribution(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 29 * DAY, false)?;
    let (first, last) = range.days();
    params::at_most_366_days(first, last)?;
    let w = ctx.scope.filter();
    let span = range.filter("event_time");
    // Each user's install: the channel and day of their earliest install event.
    let installs = format!(
        "SELECT user_id, {} AS c, toUInt32(toDate(min(event_time), 'UTC')) AS d \
         FROM analytics.events WHERE event IN {INSTALL} AND {span}{w} GROUP BY user_id",
        channel_sql("argMin(channel, event_time)")
    );
    // Users per channel of `events`, as the signups (`s`) or first_active (`f`) column.
    let counted = |events: &str, signups: bool| {
        let (sv, fv) =
            if signups { ("uniqExact(user_id)", "toUInt64(0)") } else { ("toUInt64(0)", "uniqExact(user_id)") };
        format!(
            "SELECT {} AS c, toUInt64(0) AS i, {sv} AS s, {fv} AS f FROM analytics.events \
             WHERE event IN {events} AND {span}{w} GROUP BY c",
            channel_sql("channel")
        )
    };
    // Per channel: installs, signups, first_active (a user once per channel).
    let per_channel = format!(
        "SELECT c, sum(i) AS installs, sum(s) AS signups, sum(f) AS first_active FROM (\
         SELECT c, count() AS i, toUInt64(0) AS s, toUInt64(0) AS f FROM ({installs}) GROUP BY c \
         UNION ALL {} UNION ALL {}) GROUP BY c",
        counted(REGISTER, true),
        counted(FIRST_ACTIVE, false)
    );
    // The channels with the most installs (then signups, then by name), one past the list
    // to know whether it is cut; the channels with a configured cost (names of the
    // configuration); each with its name's hash, by which the revenue query picks them
    // (names are client text: a thousand of them could pass ClickHouse's query size).
    let top = format!(
        "SELECT c, installs, signups, first_active, cityHash64(c) FROM ({per_channel}) \
         ORDER BY installs DESC, signups DESC, c LIMIT {}",
        params::MAX_GROUPS + 1
    );
    let costed = costed_names(ctx.costs, ctx.scope.game.as_deref());
    let costed = (!costed.is_empty()).then(|| {
        format!(
            "SELECT c, installs, signups, first_active, cityHash64(c) FROM ({per_channel}) WHERE c IN {}",
            sql::quote_list(&costed)
        )
    });
    // The summary's counts over every channel, in one pass: users with an install event;
    // (channel, user) pairs with a register or first_active event.
    let totals = format!(
        "SELECT uniqExact(user_id), uniqExactIf(c, user_id, e IN {REGISTER}), uniqExactIf(c, user_id, e IN {FIRST_ACTIVE}) \
         FROM (SELECT {} AS c, user_id, CAST(event AS String) AS e FROM analytics.events WHERE event IN {INSTALL} AND {span}{w})",
        channel_sql("channel")
    );
    let costed_rows = async {
        match &costed {
            Some(q) => ctx.db.select(q).await,
            None => Ok(Vec::new()),
        }
    };
    // `join!`: every read ends as reads do before a failure is answered (overview.rs).
    let (top, totals, costed_rows) = monoio::join!(ctx.db.select(&top), ctx.db.select(&totals), costed_rows);
    let (top, totals, costed_rows) = (top?, totals?, costed_rows?);
    let truncated = top.len() > params::MAX_GROUPS;
    let game = ctx.scope.game.as_deref();
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let mut hashes: Vec<u64> = Vec::with_capacity(top.len() + costed_rows.len());
    let mut listed: Vec<String> = Vec::with_capacity(top.len().min(params::MAX_GROUPS));
    for (n, r) in top.iter().take(params::MAX_GROUPS).chain(&costed_rows).enumerate() {
        let name = s(r, 0);
        if n < params::MAX_GROUPS.min(top.len()) {
            listed.push(name.clone());
        }
        let c = cpi(ctx.costs, game, &name);
        channels.entry(name).or_insert_with(|| {
            hashes.push(u(r, 4));
            Channel {
                installs: u(r, 1),
                signups: u(r, 2),
                first_active: u(r, 3),
                by_offset: vec![0; PAYBACK_DAYS as usize],
                cpi: c,
            }
        });
    }
    // Their installs' `success` revenue per day after the install (a channel whose name's
    // hash another shares brings rows that no listed channel takes), the payers' days on
    // the right of the join (ClickHouse holds that side in memory: fewer than the installs).
    if !hashes.is_empty() {
        let hashes: Vec<String> = hashes.iter().map(u64::to_string).collect();
        let pay = Range { start: first * DAY, end: (last + PAYBACK_DAYS) * DAY - 1 }.filter("time");
        let paid = super::cohorts::paid_by_day_sql(ctx, &pay, INSTALL, &span);
        let rows = ctx
            .db
            .select(&format!(
                "SELECT c, toUInt64(pd - d) AS o, sum(cents) FROM \
                 (SELECT user_id, c, d FROM ({installs}) WHERE cityHash64(c) IN ({})) AS i ALL INNER JOIN ({paid}) AS p \
                 USING user_id WHERE pd >= d AND pd - d < {PAYBACK_DAYS} GROUP BY c, o",
                hashes.join(", ")
            ))
            .await?;
        for r in &rows {
            if let (Some(c), Ok(i)) = (channels.get_mut(&s(r, 0)), usize::try_from(u(r, 1))) {
                if let Some(slot) = c.by_offset.get_mut(i) {
                    *slot += u(r, 2);
                }
            }
        }
    }

    // Listed by name.
    listed.sort();
    let by_channel: Vec<Json> = listed
        .iter()
        .filter_map(|name| channels.get(name).map(|c| (name, c)))
        .map(|(name, c)| {
            let mut o = json!({
                "channel": name,
                "installs": c.installs,
                "signups": c.signups,
                "first_active": c.first_active,
                "rev_d0_cents": c.revenue_within(1),
                "cpi_cents": c.cpi,
            });
            for n in ROAS_DAYS {
                o[format!("roas_d{n}")] = roas(c.revenue_within(n), c.cost());
            }
            o
        })
        .collect();
    // The summary: every channel's counts (ClickHouse's sums); cost and returns of the
    // channels with a cost.
    let costed: Vec<&Channel> = channels.values().filter(|c| c.cpi.is_some()).collect();
    let cost: u64 = costed.iter().filter_map(|c| c.cost()).sum();
    let costed_installs: u64 = costed.iter().map(|c| c.installs).sum();
    let has_cost = !costed.is_empty();
    let totals = totals.first().map(Vec::as_slice).unwrap_or_default();
    let mut summary = json!({
        "installs": u(totals, 0),
        "signups": u(totals, 1),
        "first_active": u(totals, 2),
        "cpi_cents": if has_cost && costed_installs > 0 { json!(cost / costed_installs) } else { Json::Null },
    });
    let returned = |n: i64| costed.iter().map(|c| c.revenue_within(n)).sum::<u64>();
    for n in ROAS_DAYS {
        summary[format!("roas_d{n}")] = if has_cost { roas(returned(n), Some(cost)) } else { Json::Null };
    }
    let payback = (has_cost && cost > 0).then(|| (1..=PAYBACK_DAYS).find(|n| returned(*n) >= cost)).flatten();
    summary["payback_days"] = json!(payback);
    Ok(super::object([("summary", summary), ("by_channel", by_channel.into()), ("truncated", truncated.into())]))
}
