//! The aggregate rows the worker writes: `minute_online` and `daily_users` from the
//! merged (all-workers) sketches, `daily_revenue` computed by ClickHouse from the
//! deduplicated `payments`. Every row is a whole figure with a version; the tables are
//! `ReplacingMergeTree(version)`, so rewriting a figure never adds to it; and a player
//! figure is never written lower than the row it replaces ([`write_figures`]).

use croupier_protocol::clickhouse::block::{Column, ColumnData, LowCardinality};
use croupier_protocol::clickhouse::packet::Setting;
use croupier_protocol::clickhouse::result::Value;

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

/// Writes minute and day figures (one insert per table), each column raised to the row
/// the table already holds for its minute or day ([`existing_sql`], one look-up per table
/// with rows to write): a figure row is never written lower than the one it replaces.
/// A reading of a key Redis lost and then filled again counts only the players merged
/// since; written as it is, with its later version, it would replace the right figure
/// for good.
pub async fn write_figures(ch: &mut Connection, minutes: &[MinuteRow], days: &[DayRow]) -> Result<(), ChError> {
    if !minutes.is_empty() {
        let keys: Vec<(&str, &str, u32)> =
            minutes.iter().map(|r| (r.game.as_str(), r.env.as_str(), r.minute)).collect();
        let existing = existing(ch, Figure::Minutes, &keys).await?;
        let mut m = TableRows::<MinuteOnline>::new();
        for r in minutes {
            m.push(&raise_minute(r, &existing));
        }
        insert(ch, &m).await?;
    }
    if !days.is_empty() {
        let keys: Vec<(&str, &str, u32)> = days.iter().map(|r| (r.game.as_str(), r.env.as_str(), r.day)).collect();
        let existing = existing(ch, Figure::Days, &keys).await?;
        let mut d = TableRows::<DailyUsers>::new();
        for r in days {
            d.push(&raise_day(r, &existing));
        }
        insert(ch, &d).await?;
    }
    Ok(())
}

/// A table of figures rewritten whole: `minute_online` or `daily_users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// `analytics.minute_online`, per minute (`m`).
    Minutes,
    /// `analytics.daily_users`, per UTC day (`d`).
    Days,
}

impl Figure {
    /// The columns read: game, environment, period, then the figures.
    fn select(self) -> &'static str {
        match self {
            Figure::Minutes => "SELECT toString(game_id), toString(env), m, online FROM analytics.minute_online FINAL WHERE ",
            Figure::Days => {
                "SELECT toString(game_id), toString(env), d, dau, new_users, payers FROM analytics.daily_users FINAL WHERE "
            }
        }
    }

    /// The period's column.
    fn column(self) -> &'static str {
        match self {
            Figure::Minutes => "m",
            Figure::Days => "d",
        }
    }

    /// A period as a literal of its column's type: a minute's Unix time (independent of
    /// the server's time zone), a day's UTC date.
    fn literal(self, period: u32) -> String {
        match self {
            Figure::Minutes => format!("toDateTime({})", u64::from(period) * 60),
            Figure::Days => {
                let (y, m, d) = crate::worker::aggregate::what::civil(period);
                format!("toDate('{y:04}-{m:02}-{d:02}')")
            }
        }
    }

    /// The period of a value of its column read back (`DateTime`: seconds; `Date`: days).
    fn period(self, value: u64) -> Option<u32> {
        match self {
            Figure::Minutes => u32::try_from(value / 60).ok(),
            Figure::Days => u32::try_from(value).ok(),
        }
    }
}

/// Most bytes of SQL in one [`existing_sql`] statement (a quarter of ClickHouse's default
/// `max_query_size`, as [`ORDER_DAYS_SQL_BYTES`]).
pub const EXISTING_SQL_BYTES: usize = 64 * 1024;

/// The most games and environments a worker's start reads back from Redis for the live
/// gauges ([`scopes_of_day`]): each costs a handful of `GET`s of up to 12 KiB.
pub const MAX_SCOPES_READ_AT_START: usize = 1_000;

/// The games and environments with a `daily_users` row on UTC day `day` (days since the
/// epoch): those whose real-time figures a worker just started reports at once, read back
/// from Redis, rather than with each scope's next event. At most `limit` (and
/// [`MAX_SCOPES_READ_AT_START`]), the most active first.
pub async fn scopes_of_day(ch: &mut Connection, day: u32, limit: usize) -> Result<Vec<(String, String)>, ChError> {
    let limit = limit.min(MAX_SCOPES_READ_AT_START);
    let (y, m, d) = crate::worker::aggregate::what::civil(day);
    let sql = format!(
        "SELECT toString(game_id), toString(env) FROM analytics.daily_users WHERE d = toDate('{y:04}-{m:02}-{d:02}') \
         GROUP BY game_id, env ORDER BY max(dau) DESC, game_id, env LIMIT {limit}"
    );
    let rows = ch.select(&sql, &[]).await?.rows;
    Ok(rows
        .into_iter()
        .filter_map(|r| match (r.first(), r.get(1)) {
            (Some(Value::Str(g)), Some(Value::Str(e))) => Some((g.clone(), e.clone())),
            _ => None,
        })
        .collect())
}

/// The statements reading the rows `table` holds (`FINAL`: the figure the product reads)
/// for `keys` (game, environment, minute or UTC day): one for any ordinary write. Per
/// game and environment, `game_id = … AND env = … AND <period> >= <first> AND <period> <=
/// <last> AND <period> IN (…)`, joined by `OR`: conditions on the sort key `(game_id,
/// env, period)` (and the bounds on the partition key's column), so only the granules of
/// those rows are read, on ClickHouse 18.16 as on later versions, and on a cluster through
/// the `Distributed` table (whose figures are all on the first shard). Every string goes
/// through [`quote`]. Statements stay within [`EXISTING_SQL_BYTES`] (one game's and
/// environment's condition alone may pass it by its quoted names): a long list of one
/// scope's periods is split over conditions, and conditions over statements.
pub fn existing_sql(table: Figure, keys: &[(&str, &str, u32)]) -> Vec<String> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let col = table.column();
    let mut conditions = Vec::new();
    let mut i = 0;
    while let Some(&(game, env, _)) = sorted.get(i) {
        let scope = format!("(game_id = {} AND env = {}", quote(game), quote(env));
        let mut periods: Vec<String> = Vec::new();
        let mut len = scope.len();
        let (mut first, mut last) = (u32::MAX, 0);
        while let Some(&(g, e, period)) = sorted.get(i) {
            if (g, e) != (game, env) || (!periods.is_empty() && len > EXISTING_SQL_BYTES / 2) {
                break;
            }
            let literal = table.literal(period);
            len += literal.len() + 2;
            periods.push(literal);
            first = first.min(period);
            last = last.max(period);
            i += 1;
        }
        conditions.push(format!(
            "{scope} AND {col} >= {} AND {col} <= {} AND {col} IN ({}))",
            table.literal(first),
            table.literal(last),
            periods.join(", ")
        ));
    }
    let mut out = Vec::new();
    let mut sql = String::new();
    for c in conditions {
        if !sql.is_empty() && sql.len() + c.len() + 4 > EXISTING_SQL_BYTES {
            out.push(std::mem::take(&mut sql));
        }
        sql.push_str(if sql.is_empty() { table.select() } else { " OR " });
        sql.push_str(&c);
    }
    if !sql.is_empty() {
        out.push(sql);
    }
    out
}

/// The figures a table holds, by game, environment and period: `online` for a minute,
/// `dau`, `new_users`, `payers` for a day.
pub type Existing = std::collections::HashMap<(String, String, u32), Vec<u64>>;

/// Adds the rows of an [`existing_sql`] answer to `out`: a row per game, environment and
/// period (should one come twice, the largest of each figure is kept).
pub fn note_existing(table: Figure, rows: &[Vec<croupier_protocol::clickhouse::result::Value>], out: &mut Existing) {
    for r in rows {
        let [game, env, period, figures @ ..] = r.as_slice() else { continue };
        let Some(period) = table.period(period.as_u64()) else { continue };
        let known = out.entry((game.as_str(), env.as_str(), period)).or_insert_with(|| vec![0; figures.len()]);
        for (k, f) in known.iter_mut().zip(figures) {
            *k = (*k).max(f.as_u64());
        }
    }
}

async fn existing(ch: &mut Connection, table: Figure, keys: &[(&str, &str, u32)]) -> Result<Existing, ChError> {
    let mut out = Existing::new();
    for sql in existing_sql(table, keys) {
        note_existing(table, &ch.select(&sql, &[]).await?.rows, &mut out);
    }
    Ok(out)
}

/// `r` with its figure raised to the row `existing` holds for its minute.
pub fn raise_minute(r: &MinuteRow, existing: &Existing) -> MinuteRow {
    let mut out = r.clone();
    if let Some(f) = existing.get(&(r.game.clone(), r.env.clone(), r.minute)) {
        let held = f.first().copied().unwrap_or(0);
        out.online = out.online.max(u32::try_from(held).unwrap_or(u32::MAX));
    }
    out
}

/// `r` with each figure raised to the row `existing` holds for its day.
pub fn raise_day(r: &DayRow, existing: &Existing) -> DayRow {
    let mut out = r.clone();
    if let Some(f) = existing.get(&(r.game.clone(), r.env.clone(), r.day)) {
        let held = |i: usize| f.get(i).copied().unwrap_or(0);
        out.dau = out.dau.max(held(0));
        out.new_users = out.new_users.max(held(1));
        out.payers = out.payers.max(held(2));
    }
    out
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
                 sumIf(amount_cents, status = 'success'), sumIf(amount_cents, status IN ('refunded', 'refund')), \
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
        assert!(!revenue_sql(&[("g".into(), "prod".into(), 20_789)], 7, false).contains("order_id IN"));
        assert!(sql.contains("toDate('2026-12-02')"), "{sql}");
        assert!(sql.contains(r"game_id = 'g\'1'") && sql.contains("time >= toDateTime(1796169600)"), "{sql}");
        assert!(sql.contains("time < toDateTime(1796256000)"), "{sql}");
    }

    #[test]
    fn existing_figures_are_read_by_the_sort_key_with_every_string_quoted() {
        let days = [("g'1", r"p\r", 20_789), ("g'1", r"p\r", 20_787), ("g", "prod", 20_789), ("g'1", r"p\r", 20_789)];
        assert_eq!(
            existing_sql(Figure::Days, &days),
            [
                r"SELECT toString(game_id), toString(env), d, dau, new_users, payers FROM analytics.daily_users FINAL WHERE (game_id = 'g' AND env = 'prod' AND d >= toDate('2026-12-02') AND d <= toDate('2026-12-02') AND d IN (toDate('2026-12-02'))) OR (game_id = 'g\'1' AND env = 'p\\r' AND d >= toDate('2026-11-30') AND d <= toDate('2026-12-02') AND d IN (toDate('2026-11-30'), toDate('2026-12-02')))"
            ]
        );
        let hostile = "x') OR 1=1 --";
        let minutes = existing_sql(Figure::Minutes, &[("g", hostile, 29_936_160), ("g", hostile, 29_936_161)]);
        assert_eq!(
            minutes,
            [
                r"SELECT toString(game_id), toString(env), m, online FROM analytics.minute_online FINAL WHERE (game_id = 'g' AND env = 'x\') OR 1=1 --' AND m >= toDateTime(1796169600) AND m <= toDateTime(1796169660) AND m IN (toDateTime(1796169600), toDateTime(1796169660)))"
            ]
        );
        assert!(existing_sql(Figure::Minutes, &[]).is_empty());
    }

    #[test]
    fn existing_look_ups_are_split_by_size() {
        // 500 environments of 250 quotes (doubled by escaping), and one scope with
        // 20,000 minutes: several statements, none much past the bound, every key once.
        let long = "'".repeat(250);
        let envs: Vec<String> = (0..500).map(|i| format!("{i:06}{long}")).collect();
        let mut keys: Vec<(&str, &str, u32)> = envs.iter().map(|e| ("g", e.as_str(), 29_936_160)).collect();
        keys.extend((0..20_000).map(|i| ("g", "prod", 29_900_000 + i)));
        let sql = existing_sql(Figure::Minutes, &keys);
        assert!(sql.len() > 2, "{} statements", sql.len());
        for s in &sql {
            assert!(s.len() <= EXISTING_SQL_BYTES + 2_048, "{}", s.len());
            assert!(s.starts_with("SELECT toString(game_id), toString(env), m, online FROM analytics.minute_online FINAL WHERE (game_id = 'g' AND env = "));
        }
        let scopes: usize = sql.iter().map(|s| s.matches("(game_id = 'g' AND env = '").count()).sum();
        assert_eq!(scopes - sql.iter().map(|s| s.matches("env = 'prod'").count()).sum::<usize>(), 500);
        let minutes: usize = sql.iter().map(|s| s.matches("toDateTime(").count()).sum();
        let conditions: usize = sql.iter().map(|s| s.matches(" IN (").count()).sum();
        // Each condition names its first and last minute, then its list.
        assert_eq!(minutes - 2 * conditions, 20_500);
    }

    #[test]
    fn figures_are_raised_column_wise_to_the_rows_already_written() {
        use croupier_protocol::clickhouse::result::Value;
        let s = |x: &str| Value::Str(x.into());
        let mut held = Existing::new();
        note_existing(
            Figure::Days,
            &[
                vec![s("g"), s("prod"), Value::UInt(20_789), Value::UInt(327), Value::UInt(4), Value::UInt(0)],
                vec![s("g"), s("stg"), Value::UInt(20_789), Value::UInt(9), Value::UInt(9), Value::UInt(9)],
            ],
            &mut held,
        );
        let day = DayRow {
            day: 20_789,
            game: "g".into(),
            env: "prod".into(),
            dau: 171,
            new_users: 30,
            payers: 2,
            version: 7,
        };
        assert_eq!(raise_day(&day, &held), DayRow { dau: 327, new_users: 30, payers: 2, ..day.clone() });
        // Another day, another environment: as read.
        let other = DayRow { day: 20_788, ..day.clone() };
        assert_eq!(raise_day(&other, &held), other);
        let mut minutes = Existing::new();
        note_existing(
            Figure::Minutes,
            &[vec![s("g"), s("prod"), Value::UInt(1_796_169_600), Value::UInt(40)]],
            &mut minutes,
        );
        let m = MinuteRow { minute: 29_936_160, game: "g".into(), env: "prod".into(), online: 15, version: 9 };
        assert_eq!(raise_minute(&m, &minutes), MinuteRow { online: 40, ..m.clone() });
        let higher = MinuteRow { online: 41, ..m.clone() };
        assert_eq!(raise_minute(&higher, &minutes), higher);
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
