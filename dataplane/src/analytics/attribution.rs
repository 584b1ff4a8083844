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

use std::collections::{BTreeMap, HashMap};

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Value as Json};

use super::error::ApiError;
use super::params::{self, percent, Range, DAY};
use super::taxonomy::{FIRST_ACTIVE, REGISTER};
use super::Ctx;

/// Events that make an install.
const INSTALL: &str = "('install', 'first_active', 'register', 'user.register')";

/// The ROAS horizons, days.
const ROAS_DAYS: [i64; 3] = [1, 7, 30];

/// Days after an install that payback is looked for.
const PAYBACK_DAYS: i64 = 90;

fn u(r: &[Value], i: usize) -> u64 {
    r.get(i).map_or(0, Value::as_u64)
}

fn s(r: &[Value], i: usize) -> String {
    r.get(i).map(Value::as_str).unwrap_or_default()
}

fn channel_name(c: String) -> String {
    if c.is_empty() {
        "unknown".to_owned()
    } else {
        c
    }
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

/// The figures of `name`, created with its configured cost.
fn entry<'c>(
    channels: &'c mut BTreeMap<String, Channel>,
    costs: &BTreeMap<String, u64>,
    game: Option<&str>,
    name: String,
) -> &'c mut Channel {
    channels.entry(name).or_insert_with_key(|name| Channel {
        by_offset: vec![0; PAYBACK_DAYS as usize],
        cpi: cpi(costs, game, name),
        ..Channel::default()
    })
}

fn roas(revenue: u64, cost: Option<u64>) -> Json {
    match cost {
        Some(c) if c > 0 => json!(percent(revenue as f64, c as f64)),
        _ => Json::Null,
    }
}

/// `/attribution`.
pub async fn attribution(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 29 * DAY, false)?;
    let (first, last) = range.days();
    if last - first > 366 {
        return Err(ApiError::param("start", "at most 366 days"));
    }
    let w = ctx.scope.filter();
    let span = range.filter("event_time");
    let installs = ctx
        .db
        .select(&format!(
            "SELECT user_id, toString(argMin(channel, event_time)), toUInt32(toDate(min(event_time), 'UTC')) \
             FROM analytics.events WHERE event IN {INSTALL} AND {span}{w} GROUP BY user_id"
        ))
        .await?;
    let counted = |events: &'static str| {
        format!(
            "SELECT toString(channel), uniqExact(user_id) FROM analytics.events WHERE event IN {events} AND {span}{w} \
             GROUP BY channel"
        )
    };
    let signups = ctx.db.select(&counted(REGISTER)).await?;
    let first_active = ctx.db.select(&counted(FIRST_ACTIVE)).await?;
    let pay = Range { start: first * DAY, end: (last + PAYBACK_DAYS) * DAY - 1 }.filter("time");
    let paid = super::cohorts::paid_by_day(ctx, &pay, INSTALL, &span).await?;

    let game = ctx.scope.game.as_deref();
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let mut installed: HashMap<String, (String, i64)> = HashMap::new();
    for r in &installs {
        let channel = channel_name(s(r, 1));
        entry(&mut channels, ctx.costs, game, channel.clone()).installs += 1;
        installed.insert(s(r, 0), (channel, u(r, 2) as i64));
    }
    for r in &signups {
        entry(&mut channels, ctx.costs, game, channel_name(s(r, 0))).signups += u(r, 1);
    }
    for r in &first_active {
        entry(&mut channels, ctx.costs, game, channel_name(s(r, 0))).first_active += u(r, 1);
    }
    for r in &paid {
        let Some((channel, day)) = installed.get(&s(r, 0)) else { continue };
        let offset = u(r, 1) as i64 - day;
        if (0..PAYBACK_DAYS).contains(&offset) {
            entry(&mut channels, ctx.costs, game, channel.clone()).by_offset[offset as usize] += u(r, 2);
        }
    }

    // Channels are whatever clients send: the MAX_GROUPS with the most installs (then
    // signups, then by name) are listed, by name; the summary counts them all.
    let truncated = channels.len() > params::MAX_GROUPS;
    let mut listed: Vec<(&String, &Channel)> = channels.iter().collect();
    if truncated {
        listed.sort_by(|a, b| (b.1.installs, b.1.signups).cmp(&(a.1.installs, a.1.signups)).then(a.0.cmp(b.0)));
        listed.truncate(params::MAX_GROUPS);
        listed.sort_by(|a, b| a.0.cmp(b.0));
    }
    let by_channel: Vec<Json> = listed
        .into_iter()
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
    // The summary: every channel's counts; cost and returns of the channels with a cost.
    let costed: Vec<&Channel> = channels.values().filter(|c| c.cpi.is_some()).collect();
    let cost: u64 = costed.iter().filter_map(|c| c.cost()).sum();
    let costed_installs: u64 = costed.iter().map(|c| c.installs).sum();
    let total = |f: fn(&Channel) -> u64| channels.values().map(f).sum::<u64>();
    let has_cost = !costed.is_empty();
    let mut summary = json!({
        "installs": total(|c| c.installs),
        "signups": total(|c| c.signups),
        "first_active": total(|c| c.first_active),
        "cpi_cents": if has_cost && costed_installs > 0 { json!(cost / costed_installs) } else { Json::Null },
    });
    let returned = |n: i64| costed.iter().map(|c| c.revenue_within(n)).sum::<u64>();
    for n in ROAS_DAYS {
        summary[format!("roas_d{n}")] = if has_cost { roas(returned(n), Some(cost)) } else { Json::Null };
    }
    let payback = (has_cost && cost > 0).then(|| (1..=PAYBACK_DAYS).find(|n| returned(*n) >= cost)).flatten();
    summary["payback_days"] = json!(payback);
    Ok(json!({ "summary": summary, "by_channel": by_channel, "truncated": truncated }))
}
