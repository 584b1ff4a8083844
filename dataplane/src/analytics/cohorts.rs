//! `GET /api/analytics/ltv` and `/segments` (which Croupier's dashboard calls and its
//! server lacks).
//!
//! - LTV: per install cohort (users whose first register event in the range is on day C),
//!   the cumulative revenue of `success` payments its users made in days C .. C+N−1, per
//!   cohort user (cents, 2 decimals), for N = 1, 7, 30, 90; `null` until day C+N−1 is
//!   over. Cohorts without users are absent.
//! - Segments over the range: `new` (registered in it), `returning` (active in it, not
//!   new), `payer` (a `success` payment in it), `whale` (the top tenth of payers by revenue,
//!   at least one when there are payers); each with users, ratio (percent of the active
//!   users: any event in the range) and ARPU (its revenue in the range per user, cents).

use serde_json::{json, Value as Json};

use super::db::u;
use super::error::ApiError;
use super::params::{self, percent, ratio, Range, DAY};
use super::taxonomy::{NEW_USER, REGISTER};
use super::Ctx;

/// The LTV horizons in days.
pub const LTV_DAYS: [i64; 4] = [1, 7, 30, 90];

/// The query of rows `(user_id, pd: UTC day, cents)`: the `success` revenue per user and
/// day, in the payments range `pay` (a filter on `time`), of the users with an event of
/// `events` (an SQL list) in `span` (a filter on `event_time`) — the revenue of a cohort.
pub fn paid_by_day_sql(ctx: &Ctx<'_>, pay: &str, events: &str, span: &str) -> String {
    let w = ctx.scope.filter();
    let from = super::payments::latest(pay, &w);
    format!(
        "SELECT user_id, toUInt32(toDate(time, 'UTC')) AS pd, sum(amount_cents) AS cents FROM {from} \
         WHERE status = 'success' AND {pay}{w} AND user_id IN \
         (SELECT user_id FROM analytics.events WHERE event IN {events} AND {span}{w}) GROUP BY user_id, pd"
    )
}

/// `/ltv`.
pub async fn ltv(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 29 * DAY, false)?;
    let (first, last) = range.days();
    params::at_most_366_days(first, last)?;
    let w = ctx.scope.filter();
    let cohort = Range { start: first * DAY, end: last * DAY + DAY - 1 }.filter("event_time");
    let pay = Range { start: first * DAY, end: (last + 90) * DAY - 1 }.filter("time");
    // Per cohort day, in one query (a row per day back, whatever the number of players):
    // its players (`c`: the day of their first register event in the range) and, per
    // player, the `success` revenue of the days C .. C+N−1 for each horizon N.
    let members = format!(
        "SELECT user_id, toUInt32(toDate(min(event_time), 'UTC')) AS c FROM analytics.events \
         WHERE event IN {REGISTER} AND {cohort}{w} GROUP BY user_id"
    );
    let paid = paid_by_day_sql(ctx, &pay, REGISTER, &cohort);
    let horizons: Vec<String> =
        LTV_DAYS.iter().map(|n| format!("sumIf(cents, pd >= c AND pd < c + {n}) AS r{n}")).collect();
    let sums: Vec<String> = LTV_DAYS.iter().map(|n| format!("sum(r{n})")).collect();
    let rows = ctx
        .db
        .select(&format!(
            "SELECT c, count(), {} FROM (SELECT user_id, c, {} FROM ({members}) AS m \
             ALL LEFT JOIN ({paid}) AS p USING user_id GROUP BY user_id, c) GROUP BY c ORDER BY c",
            sums.join(", "),
            horizons.join(", ")
        ))
        .await?;
    // Each row: the day, its players, then one revenue per horizon.
    let per_day: Vec<(i64, (u64, [u64; LTV_DAYS.len()]))> =
        rows.iter().map(|r| (u(r, 0) as i64, (u(r, 1), std::array::from_fn(|i| u(r, 2 + i))))).collect();
    let complete = ctx.now.div_euclid(DAY) - 1;
    let out: Vec<Json> = per_day
        .iter()
        .map(|(day, (users, revenue))| {
            let date = params::date_string(*day);
            let mut o = json!({ "day": date, "date": date, "users": users });
            for (i, n) in LTV_DAYS.iter().enumerate() {
                let v = (day + n - 1 <= complete).then(|| ratio(revenue[i] as f64, *users as f64));
                o[format!("ltv_d{n}")] = json!(v);
            }
            o
        })
        .collect();
    Ok(super::object([("cohorts", out.into())]))
}

/// `/segments`.
pub async fn segments(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 29 * DAY, false)?;
    // Bounded as the other ranges.
    let (first, last) = range.days();
    params::at_most_366_days(first, last)?;
    let w = ctx.scope.filter();
    // Counted by ClickHouse in one query, a row back whatever the number of players, and
    // one pass over the payments (`FINAL` over whole orders: the costly side, once):
    // the active players (any event in the range; `n`: a new-user event among them) and
    // the payers (their `success` revenue in the range), joined both ways.
    let active = format!(
        "SELECT user_id, max(CAST(event AS String) IN {NEW_USER}) AS n, toUInt8(1) AS is_active \
         FROM analytics.events WHERE {}{w} GROUP BY user_id",
        range.filter("event_time")
    );
    let paid = format!(
        "SELECT user_id, sum(amount_cents) AS r, toUInt8(1) AS is_payer FROM {} \
         WHERE status = 'success' AND {}{w} GROUP BY user_id",
        super::payments::latest(&range.filter("time"), &w),
        range.filter("time")
    );
    // Whales: the tenth of the payers who paid most, at least one (ties change who, not
    // their revenue): the sum of the top revenues.
    let rows = ctx
        .db
        .select(&format!(
            "SELECT countIf(is_active = 1 AND n = 1), sumIf(r, is_active = 1 AND n = 1), \
             countIf(is_active = 1 AND n = 0), sumIf(r, is_active = 1 AND n = 0), \
             countIf(is_payer = 1), sumIf(r, is_payer = 1), \
             arraySum(arraySlice(arrayReverseSort(groupArrayIf(r, is_payer = 1)), 1, \
             intDiv(countIf(is_payer = 1) + 9, 10))) \
             FROM ({active}) AS a ALL FULL OUTER JOIN ({paid}) AS p USING user_id"
        ))
        .await?;
    let row = |i: usize| rows.first().map_or(0, |r| u(r, i));
    let (new, new_rev, returning, returning_rev) = (row(0), row(1), row(2), row(3));
    let (paying, paying_rev) = (row(4), row(5));
    let (whale, whale_rev) = (paying.div_ceil(10), row(6));
    let total = (new + returning) as f64;
    let seg = |name: &str, users: u64, revenue: u64| {
        let n = users as f64;
        json!({ "name": name, "users": users, "ratio": percent(n, total), "arpu": ratio(revenue as f64, n) })
    };
    Ok(json!({
        "segments": [
            seg("new", new, new_rev),
            seg("returning", returning, returning_rev),
            seg("payer", paying, paying_rev),
            seg("whale", whale, whale_rev)
        ]
    }))
}
