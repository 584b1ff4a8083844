//! `GET /api/analytics/payments/summary`, `/transactions` and `/product_trend`, read
//! from `analytics.payments FINAL` (one row per order and status however often it was
//! delivered). Refunds are `refund` and `refunded` alike. A total is every row, refunds
//! included, and `failed` is the total less the successes: Croupier's `count()` and
//! `total - success` (docs/metrics.md).

use std::collections::HashMap;

use croupier_protocol::clickhouse::result::Value;
use serde_json::{json, Map, Value as Json};

use super::db::u;
use super::error::ApiError;
use super::params::{self, percent, Range, DAY};
use super::sql::{quote, quote_list};
use super::taxonomy::{REFUND, REFUNDED};
use super::Ctx;

/// The dimensions a summary breaks down by: (query parameter and column, response key).
const DIMENSIONS: [(&str, &str); 6] = [
    ("channel", "by_channel"),
    ("platform", "by_platform"),
    ("country", "by_country"),
    ("region", "by_region"),
    ("city", "by_city"),
    ("product_id", "by_product"),
];

/// `analytics.payments` as the reports read it, for rows whose `time` passes `time` (a
/// condition on `time`) in `scope` (a `Scope::filter`): `FINAL` over whole orders — those
/// with a row that passes — so that each order and status is one row, the last stored;
/// the caller's own conditions (`time` again among them) go outside, on `FINAL`'s result.
/// A condition on `time` inside `FINAL` would keep a superseded row (an order stored
/// again at a later time would count on both days: docs/aggregation.md). `order_id` is
/// in the sort key, so only the granules of those orders are read (on one server; on a
/// cluster the `IN` is `GLOBAL`, `distributed_product_mode`, whose set 18.16 does not use
/// the index for: docs/clickhouse-cluster.md), and an order's rows are on one shard.
pub fn latest(time: &str, scope: &str) -> String {
    format!(
        "(SELECT * FROM analytics.payments FINAL WHERE order_id IN \
         (SELECT order_id FROM analytics.payments WHERE {time}{scope}){scope})"
    )
}

/// The reports' payments of `range` in the request's scope ([`latest`]).
fn latest_in(ctx: &Ctx<'_>, range: &Range) -> String {
    latest(&range.filter("time"), &ctx.scope.filter())
}

/// The WHERE clause: range, scope, then the dimension filters given, and `status`
/// (`refund` or `refunded` matches both) when `with_status`.
fn filter(ctx: &Ctx<'_>, range: &Range, with_status: bool) -> String {
    let mut w = format!("{}{}", range.filter("time"), ctx.scope.filter());
    for (col, _) in DIMENSIONS.iter().take(5) {
        if let Some(v) = ctx.params.get(col) {
            w.push_str(&format!(" AND {col} = {}", quote(v)));
        }
    }
    if with_status {
        match ctx.params.get("status") {
            Some("refund") | Some("refunded") => w.push_str(&format!(" AND status IN {REFUND}")),
            Some(s) => w.push_str(&format!(" AND status = {}", quote(s))),
            None => {}
        }
    }
    w
}

/// A dimension's values as text, for [`summary`]'s one pass: `LowCardinality` read as
/// `String`, `country` cut at its first zero byte (an empty `FixedString(2)` is `''`, as
/// the answer decodes one; ingest stores two letters or none, so nothing else has a zero).
fn as_text(col: &str) -> String {
    match col {
        "channel" | "platform" => format!("CAST({col} AS String)"),
        "country" => format!("toStringCutToZero({col})"),
        _ => col.to_owned(),
    }
}

/// `/payments/summary`: the totals and every breakdown from one pass over the payments
/// (`FINAL` over whole orders is the costly part: read once, not once per breakdown) —
/// each row taken once per dimension and once for the totals (dimension `''`), grouped by
/// dimension and value, each dimension's groups by revenue (ties by value) to
/// `MAX_GROUPS`.
pub async fn summary(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = filter(ctx, &range, false);
    let from = latest_in(ctx, &range);
    let dims: Vec<String> = DIMENSIONS.iter().map(|(col, _)| format!("('{col}', {})", as_text(col))).collect();
    let rows = ctx
        .db
        .select(&format!(
            "SELECT d.1 AS dim, d.2 AS value, sumIf(amount_cents, status = 'success') AS revenue, \
             sumIf(amount_cents, {REFUNDED}), countIf(status = 'success'), count() \
             FROM {from} ARRAY JOIN [('', ''), {}] AS d WHERE {w} \
             GROUP BY dim, value ORDER BY dim, revenue DESC, value LIMIT {} BY dim",
            dims.join(", "),
            params::MAX_GROUPS + 1
        ))
        .await?;
    // The rows by dimension, in their order (by revenue): `''` the totals' one row.
    let mut by_dim: HashMap<String, Vec<&Vec<Value>>> = HashMap::new();
    for r in &rows {
        by_dim.entry(r.first().map(Value::as_str).unwrap_or_default()).or_default().push(r);
    }
    let t = by_dim.get("").and_then(|t| t.first()).map_or(&[][..], |r| r.as_slice());
    let (succ, total) = (u(t, 4), u(t, 5));
    let mut out = Map::new();
    out.insert(
        "totals".into(),
        json!({
            "revenue_cents": u(t, 2),
            "refunds_cents": u(t, 3),
            "failed": total.saturating_sub(succ),
            "success_rate": percent(succ as f64, total as f64),
        }),
    );
    let mut truncated = false;
    for (col, key) in DIMENSIONS {
        let groups = by_dim.get(col).map_or(&[][..], |g| g.as_slice());
        truncated |= groups.len() > params::MAX_GROUPS;
        let items: Vec<Json> = groups
            .iter()
            .take(params::MAX_GROUPS)
            .map(|r| {
                let (s, n) = (u(r, 4), u(r, 5));
                json!({
                    col: r.get(1).map(Value::as_str).unwrap_or_default(),
                    "revenue_cents": u(r, 2),
                    "success": s,
                    "total": n,
                    "success_rate": percent(s as f64, n as f64),
                })
            })
            .collect();
        out.insert(key.into(), Json::Array(items));
    }
    out.insert("truncated".into(), Json::Bool(truncated));
    Ok(Json::Object(out))
}

/// `/payments/transactions`.
pub async fn transactions(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let range = Range::from(ctx.params, ctx.now, 7 * DAY, false)?;
    let w = filter(ctx, &range, true);
    let page = ctx.params.page()?;
    let size = ctx.params.int_or_default("size", 20, 1..=200)?;
    let from = latest_in(ctx, &range);
    // The count and the page do not depend on each other: sent together (each on its own
    // connection, within the request's share), the answer takes about the longer of them.
    let count = format!("SELECT count() FROM {from} WHERE {w}");
    let page_sql = format!(
        "SELECT toUInt32(time), order_id, user_id, amount_cents, status, channel, reason \
         FROM {from} WHERE {w} ORDER BY time DESC, order_id, status LIMIT {size} OFFSET {}",
        (page - 1).saturating_mul(size)
    );
    // `join!`: both end as reads do before a failure is answered (overview.rs).
    let (total, rows) = monoio::join!(ctx.db.scalar(&count), ctx.db.select(&page_sql));
    let (total, rows) = (total?.as_u64(), rows?);
    let items: Vec<Json> = rows
        .iter()
        .map(|r| {
            let s = |i: usize| r.get(i).map(Value::as_str).unwrap_or_default();
            json!({
                "time": params::rfc3339(u(r, 0) as i64),
                "order_id": s(1),
                "user_id": s(2),
                "amount_cents": u(r, 3),
                "status": s(4),
                "channel": s(5),
                "reason": s(6),
            })
        })
        .collect();
    Ok(super::object([("transactions", items.into()), ("total", total.into())]))
}

/// `/payments/product_trend`.
pub async fn product_trend(ctx: &Ctx<'_>) -> Result<Json, ApiError> {
    let products = ctx.params.list("product_id");
    if products.is_empty() {
        return Err(ApiError::param("product_id", "required"));
    }
    if products.len() > 100 {
        return Err(ApiError::param("product_id", "at most 100 products"));
    }
    let range = Range::from(ctx.params, ctx.now, 0, true)?;
    let minute = ctx.params.choice_or_default("granularity", &["hour", "minute"]) == "minute";
    let bucket = if minute { "toStartOfMinute" } else { "toStartOfHour" };
    // At most MAX_POINTS points (products × buckets).
    let n = products.len() as i64;
    let points = n.saturating_mul(range.buckets(if minute { 60 } else { 3600 }));
    if points > params::MAX_POINTS {
        let reason = format!(
            "{n} products over this range are {points} points, more than {}: a later start or fewer products",
            params::MAX_POINTS
        );
        let field =
            if minute && n.saturating_mul(range.buckets(3600)) <= params::MAX_POINTS { "granularity" } else { "start" };
        return Err(ApiError::param(
            field,
            if field == "granularity" { format!("{reason} (or granularity=hour)") } else { reason },
        ));
    }
    let w = filter(ctx, &range, false);
    let from = latest_in(ctx, &range);
    let rows = ctx
        .db
        .select(&format!(
            "SELECT toUInt32({bucket}(time, 'UTC')) AS t, product_id, sumIf(amount_cents, status = 'success'), \
             countIf(status = 'success'), count() FROM {from} \
             WHERE {w} AND product_id IN {} GROUP BY t, product_id ORDER BY t",
            quote_list(&products)
        ))
        .await?;
    // One pass over the rows: each product's points, in time order.
    let mut points: HashMap<String, Vec<Json>> = HashMap::with_capacity(products.len());
    for r in &rows {
        let product = r.get(1).map(Value::as_str).unwrap_or_default();
        points.entry(product).or_default().push(json!({
            "time": params::rfc3339(u(r, 0) as i64),
            "success": u(r, 3),
            "total": u(r, 4),
            "revenue_cents": u(r, 2),
        }));
    }
    // Each product's points moved into the answer (copied only for a product listed
    // again later): a copy of 100 products' hourly points was a third of the answer's
    // CPU, on the thread that answers probes.
    let out: Vec<Json> = products
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let again = products[i + 1..].contains(p);
            let points = if again { points.get(p).cloned() } else { points.remove(p) };
            super::object([("product_id", p.as_str().into()), ("points", points.unwrap_or_default().into())])
        })
        .collect();
    Ok(super::object([("products", out.into())]))
}
