//! The aggregate rows the worker writes: `minute_online` and `daily_users` from the
//! merged (all-workers) sketches, `daily_revenue` computed by ClickHouse from the
//! deduplicated `payments`. Every row is a whole figure with a version; the tables are
//! `ReplacingMergeTree(version)`, so rewriting a figure never adds to it.

use croupier_protocol::clickhouse::block::{Column, ColumnData, LowCardinality};
use croupier_protocol::clickhouse::packet::Setting;

use super::connection::{ChError, Connection};
use super::rows::{check_header, Table, TableRows};

/// Players online in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteRow {
    /// Minutes since the epoch.
    pub minute: u32,
    /// Game.
    pub game: String,
    /// Environment.
    pub env: String,
    /// `PFCOUNT` of the minute's key.
    pub online: u32,
    /// Redis's time of the reading, microseconds: later readings win.
    pub version: u64,
}

/// A day's players.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRow {
    /// UTC days since the epoch.
    pub day: u32,
    /// Game.
    pub game: String,
    /// Environment.
    pub env: String,
    /// `PFCOUNT` of the day's DAU key.
    pub dau: u64,
    /// `PFCOUNT` of the day's new-users key.
    pub new_users: u64,
    /// `PFCOUNT` of the day's payers key.
    pub payers: u64,
    /// Redis's time of the reading, microseconds.
    pub version: u64,
}

fn lc() -> ColumnData {
    ColumnData::LowCardinality(LowCardinality::default())
}

/// `analytics.minute_online`.
pub struct MinuteOnline;

impl Table for MinuteOnline {
    const NAME: &'static str = "analytics.minute_online";
    const INSERT: &'static str = "INSERT INTO analytics.minute_online (m, game_id, env, online, version) VALUES";

    fn columns() -> Vec<Column> {
        vec![
            Column::new("m", "DateTime", ColumnData::fixed(4)),
            Column::new("game_id", "LowCardinality(String)", lc()),
            Column::new("env", "LowCardinality(String)", lc()),
            Column::new("online", "UInt32", ColumnData::fixed(4)),
            Column::new("version", "UInt64", ColumnData::fixed(8)),
        ]
    }
}

/// `analytics.daily_users`.
pub struct DailyUsers;

impl Table for DailyUsers {
    const NAME: &'static str = "analytics.daily_users";
    const INSERT: &'static str =
        "INSERT INTO analytics.daily_users (d, game_id, env, dau, new_users, payers, version) VALUES";

    fn columns() -> Vec<Column> {
        vec![
            Column::new("d", "Date", ColumnData::fixed(2)),
            Column::new("game_id", "LowCardinality(String)", lc()),
            Column::new("env", "LowCardinality(String)", lc()),
            Column::new("dau", "UInt64", ColumnData::fixed(8)),
            Column::new("new_users", "UInt64", ColumnData::fixed(8)),
            Column::new("payers", "UInt64", ColumnData::fixed(8)),
            Column::new("version", "UInt64", ColumnData::fixed(8)),
        ]
    }
}

impl TableRows<MinuteOnline> {
    /// Appends one minute.
    pub fn push(&mut self, r: &MinuteRow) {
        let c = &mut self.columns;
        c[0].data.push_fixed(&r.minute.saturating_mul(60).to_le_bytes());
        c[1].data.push_str(r.game.as_bytes());
        c[2].data.push_str(r.env.as_bytes());
        c[3].data.push_fixed(&r.online.to_le_bytes());
        c[4].data.push_fixed(&r.version.to_le_bytes());
        self.rows += 1;
    }
}

impl TableRows<DailyUsers> {
    /// Appends one day.
    pub fn push(&mut self, r: &DayRow) {
        let c = &mut self.columns;
        c[0].data.push_fixed(&(r.day.min(u32::from(u16::MAX)) as u16).to_le_bytes());
        c[1].data.push_str(r.game.as_bytes());
        c[2].data.push_str(r.env.as_bytes());
        c[3].data.push_fixed(&r.dau.to_le_bytes());
        c[4].data.push_fixed(&r.new_users.to_le_bytes());
        c[5].data.push_fixed(&r.payers.to_le_bytes());
        c[6].data.push_fixed(&r.version.to_le_bytes());
        self.rows += 1;
    }
}

/// On a cluster the figures' tables are `Distributed` (all to the first shard,
/// [`super::cluster`]): an insert is confirmed once the shard has the rows, not once
/// they are queued on the node for sending. No effect on other tables.
const SYNC: &[(&str, Setting<'static>)] = &[("insert_distributed_sync", Setting::UInt(1))];

async fn insert<T: Table>(ch: &mut Connection, rows: &TableRows<T>) -> Result<(), ChError> {
    if rows.rows == 0 {
        return Ok(());
    }
    let header = ch.insert_start(T::INSERT, SYNC).await?;
    check_header(T::NAME, &header, &rows.columns).map_err(ChError::SchemaMismatch)?;
    ch.insert_block(&rows.columns, rows.rows).await?;
    ch.insert_end().await
}

/// Writes minute and day figures (one insert per table).
pub async fn write_figures(ch: &mut Connection, minutes: &[MinuteRow], days: &[DayRow]) -> Result<(), ChError> {
    let mut m = TableRows::<MinuteOnline>::new();
    minutes.iter().for_each(|r| m.push(r));
    insert(ch, &m).await?;
    let mut d = TableRows::<DailyUsers>::new();
    days.iter().for_each(|r| d.push(r));
    insert(ch, &d).await
}

/// A string literal for ClickHouse SQL: quoted, backslashes and quotes escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The statement that rewrites `daily_revenue` for `days` (game, environment, UTC day)
/// from `payments FINAL` (each order and status once, however often it was delivered,
/// and at its latest time): per day, revenue of `success`, refunds of `refunded`, the
/// count of `failed` (a row of zeros when no payment is left on the day: its orders were
/// retried and moved to another day). One `SELECT` per day, joined by `UNION ALL`: one
/// insert. `FINAL` runs on the game's and environment's payments — with `narrow`, only
/// those of the orders with a row on the day (found in the day's month's partitions;
/// `order_id` is in the sort key, so only their granules are read, whatever the month;
/// whole orders, so `FINAL` collapses them as it would unfiltered) — and the day is taken
/// from its result, so an order that moved is left out of the day it left. Not `narrow`
/// on a ClickHouse cluster: there `IN` over the `Distributed` table would be a
/// double-distributed subquery, and ClickHouse 18.16 reads every row for `GLOBAL IN`
/// (its set does not use the index), so every payment of the game is read, as the first
/// version did everywhere. `version`
/// orders the computations (Redis's `TIME`, taken after the payments were confirmed: a
/// later computation has seen every payment an earlier one saw).
pub fn revenue_sql(days: &[(String, String, u32)], version: u64, narrow: bool) -> String {
    let selects: Vec<String> = days
        .iter()
        .map(|(game, env, day)| {
            let (y, mo, d) = crate::worker::aggregate::what::civil(*day);
            let start = u64::from(*day) * 86_400;
            format!(
                "SELECT toDate('{y:04}-{mo:02}-{d:02}') AS d, {g} AS game_id, {e} AS env, \
                 sumIf(amount_cents, status = 'success'), sumIf(amount_cents, status = 'refunded'), \
                 countIf(status = 'failed'), toUInt64({version}) \
                 FROM (SELECT amount_cents, status, time FROM analytics.payments FINAL \
                 WHERE game_id = {g} AND env = {e}{orders}) \
                 WHERE time >= toDateTime({start}) AND time < toDateTime({end})",
                g = quote(game),
                e = quote(env),
                end = start + 86_400,
                orders = if narrow {
                    format!(
                        " AND order_id IN (SELECT order_id FROM analytics.payments WHERE game_id = {g} \
                         AND env = {e} AND time >= toDateTime({start}) AND time < toDateTime({end}))",
                        g = quote(game),
                        e = quote(env),
                        end = start + 86_400
                    )
                } else {
                    String::new()
                },
            )
        })
        .collect();
    format!(
        "INSERT INTO analytics.daily_revenue (d, game_id, env, revenue_cents, refunds_cents, failed, version) {}",
        selects.join(" UNION ALL ")
    )
}

/// Days per revenue statement.
pub const REVENUE_DAYS_PER_INSERT: usize = 32;

/// Settings of the revenue statement: its time condition stays outside `FINAL` (not
/// moved to `PREWHERE`, not pushed into the subquery, where it would pick an order's
/// older row on the day it left). On a cluster, confirmed once the first shard has the
/// rows ([`SYNC`]).
pub const REVENUE_SETTINGS: &[(&str, Setting<'static>)] = &[
    ("optimize_move_to_prewhere", Setting::UInt(0)),
    ("enable_optimize_predicate_expression", Setting::UInt(0)),
    ("insert_distributed_sync", Setting::UInt(1)),
];

/// Most bytes of SQL in one [`order_days`] statement: a quarter of ClickHouse's default
/// `max_query_size` (262,144), so no batch of orders — however long their ids and
/// environments, however many quotes escaping doubles — makes a statement the server
/// cannot parse.
pub const ORDER_DAYS_SQL_BYTES: usize = 64 * 1024;

/// The statements [`order_days`] sends for `orders` (game, environment, order): each at
/// most about [`ORDER_DAYS_SQL_BYTES`] long (one order's condition more at most: an
/// order is never split), orders grouped by game and environment within a statement.
pub fn order_days_sql(orders: &[(String, String, String)]) -> Vec<String> {
    const HEAD: &str = "SELECT DISTINCT toString(game_id), toString(env), \
                        toUInt32(intDiv(toUInt32(time), 86400)) FROM analytics.payments WHERE ";
    let mut sorted: Vec<&(String, String, String)> = orders.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut sql = String::new();
    // The scope whose `IN (` list is open in `sql`.
    let mut open: Option<(&str, &str)> = None;
    for (g, e, o) in sorted {
        let order = quote(o);
        if !sql.is_empty() && sql.len() + order.len() + 4 > ORDER_DAYS_SQL_BYTES {
            sql.push_str("))");
            out.push(std::mem::take(&mut sql));
            open = None;
        }
        if open == Some((g.as_str(), e.as_str())) {
            sql.push_str(", ");
        } else {
            if sql.is_empty() {
                sql.push_str(HEAD);
            } else {
                sql.push_str(")) OR ");
            }
            sql.push_str("(game_id = ");
            sql.push_str(&quote(g));
            sql.push_str(" AND env = ");
            sql.push_str(&quote(e));
            sql.push_str(" AND order_id IN (");
            open = Some((g.as_str(), e.as_str()));
        }
        sql.push_str(&order);
    }
    if !sql.is_empty() {
        sql.push_str("))");
        out.push(sql);
    }
    out
}

/// Days (game, environment, UTC day) on which `payments` holds rows of `orders` (game,
/// environment, order), asked before a batch's payments are inserted: an order inserted
/// again at another time (a retry re-stamped after midnight) leaves the day it was on,
/// whose revenue must be computed again. One statement per [`ORDER_DAYS_SQL_BYTES`] of
/// SQL ([`order_days_sql`]): one for any batch of ordinary orders.
pub async fn order_days(
    ch: &mut Connection,
    orders: &[(String, String, String)],
) -> Result<Vec<(String, String, u32)>, ChError> {
    let mut out = Vec::new();
    for sql in order_days_sql(orders) {
        out.extend(game_env_periods(&ch.select(&sql, &[]).await?.rows));
    }
    Ok(out)
}

fn game_env_periods(rows: &[Vec<croupier_protocol::clickhouse::result::Value>]) -> Vec<(String, String, u32)> {
    rows.iter()
        .filter_map(|r| match r.as_slice() {
            [g, e, p] => Some((g.as_str(), e.as_str(), u32::try_from(p.as_u64()).ok()?)),
            _ => None,
        })
        .collect()
}

/// Rewrites `daily_revenue` of `days` (game, environment, day), as of `version`
/// ([`revenue_sql`], `narrow` unless `cluster`): one insert per
/// [`REVENUE_DAYS_PER_INSERT`] days.
pub async fn write_revenue(
    ch: &mut Connection,
    days: &[(String, String, u32)],
    version: u64,
    cluster: bool,
) -> Result<(), ChError> {
    for chunk in days.chunks(REVENUE_DAYS_PER_INSERT) {
        ch.execute(&revenue_sql(chunk, version, !cluster), REVENUE_SETTINGS).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_and_days_are_utc() {
        assert_eq!(quote(r"a'b\c"), r"'a\'b\\c'");
        let sql = revenue_sql(&[("g'1".into(), "prod".into(), 20_789)], 7, true);
        assert!(
            sql.contains(r"AND order_id IN (SELECT order_id FROM analytics.payments WHERE game_id = 'g\'1'"),
            "{sql}"
        );
        assert!(!revenue_sql(&[("g".into(), "prod".into(), 20_789)], 7, false).contains(" IN "));
        assert!(sql.contains("toDate('2026-12-02')"), "{sql}");
        assert!(sql.contains(r"game_id = 'g\'1'") && sql.contains("time >= toDateTime(1796169600)"), "{sql}");
        assert!(sql.contains("time < toDateTime(1796256000)"), "{sql}");
    }

    #[test]
    fn order_look_ups_are_split_by_size_and_grouped_by_scope() {
        let long = "'".repeat(250);
        let orders: Vec<(String, String, String)> =
            (0..500).map(|i| ("g".into(), format!("{i:06}{long}"), format!("{i:06}{long}"))).collect();
        let sql = order_days_sql(&orders);
        assert!(sql.len() > 1, "{} statements", sql.len());
        for s in &sql {
            assert!(s.len() <= ORDER_DAYS_SQL_BYTES + 2_048, "{}", s.len());
            assert_eq!(s.matches('(').count(), s.matches(')').count(), "balanced");
        }
        let total: usize = sql.iter().map(|s| s.matches("order_id IN (").count()).sum();
        assert_eq!(total, 500);
        let few: Vec<(String, String, String)> = (0..3).map(|i| ("g".into(), "prod".into(), format!("o{i}"))).collect();
        assert_eq!(
            order_days_sql(&few),
            ["SELECT DISTINCT toString(game_id), toString(env), toUInt32(intDiv(toUInt32(time), 86400)) \
              FROM analytics.payments WHERE (game_id = 'g' AND env = 'prod' AND order_id IN ('o0', 'o1', 'o2'))"]
        );
    }
}
