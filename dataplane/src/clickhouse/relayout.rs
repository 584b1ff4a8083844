//! Takes an `events` table of the first layout (`ORDER BY (game_id, env, event,
//! event_id)`, where a one-day read scans the month) to the current one, whose key starts
//! `(game_id, env, event_time, ...)` so that a one-day read reads about one day, without
//! losing or duplicating a row (the time itself, not `toDate(event_time)`: ClickHouse 18.16
//! does not narrow a range of `event_time` through `toDate` in the key and read the whole
//! table; measured in `analytics_events_relayout_keeps_rows_and_reads_one_day`):
//!
//! 1. `RENAME TABLE events TO events_relayout` (atomic: inserts arriving now fail and are
//!    retried by the worker, their entries stay pending);
//! 2. `events` is created with the current layout (inserts succeed again);
//! 3. the materialized views reading `events` (`daily_players_mv`, `registered_users_mv`)
//!    are made again on it, and their tables given what the new `events` took before they
//!    existed (a few inserts' rows: the rows since step 2); `user_days` needs nothing: the
//!    worker writes it with each insert, into whichever `events` there is;
//! 4. per month, the rows of `events_relayout` whose `event_id` is not in `events` yet are
//!    copied (so a run interrupted anywhere and run again copies each row once);
//! 5. once no id of `events_relayout` is missing from `events` (checked a month at a time,
//!    so the check's set of ids is a month's, not the table's), it is dropped.
//!
//! Step 3 is needed on a current ClickHouse (an `Atomic` database), which binds a view to
//! its source table, not to the name: a view kept through the `RENAME` would follow
//! `events_relayout`, be dropped with it, and never see an insert into the new `events`
//! (ClickHouse 18.16 finds views by name and keeps filling them). The views' tables stay
//! filled and marked throughout, so a running API goes on answering from them. The copy
//! of step 4 passes through the views again, as step 3's catch-up may: that changes no
//! figure (a sketch or a first day of a player twice is the same); it does not reach
//! `user_days`, which already holds those rows. A first-layout table and a moved-aside one
//! together is refused before anything changes.
//!
//! Redelivered copies keep their dedup key (`event_id` and `event_time` are the same), so
//! the ReplacingMergeTree still folds them.

use croupier_protocol::clickhouse::packet::Setting;
use croupier_protocol::clickhouse::result::Value;

use super::connection::{ChError, Connection};

/// What the current layout's sorting key contains.
const CURRENT_KEY: &str = "ORDER BY (game_id, env, event_time,";
/// The old table while its rows are copied.
const OLD: &str = "analytics.events_relayout";

async fn exists(conn: &mut Connection, table: &str) -> Result<Option<String>, ChError> {
    let s = conn
        .select(
            &format!("SELECT engine_full FROM system.tables WHERE database = 'analytics' AND name = '{table}'"),
            &[],
        )
        .await?;
    Ok(s.rows.first().and_then(|r| r.first()).map(Value::as_str))
}

/// Relayouts `events` if needed; `create` is the current `CREATE TABLE IF NOT EXISTS
/// analytics.events` statement. Returns the rows copied.
pub async fn relayout_events(
    conn: &mut Connection,
    create: &str,
    settings: &[(&str, Setting<'_>)],
) -> Result<u64, ChError> {
    let engine = exists(conn, "events").await?;
    let current = engine.as_deref().is_some_and(|e| e.contains(CURRENT_KEY));
    let moved_aside = exists(conn, "events_relayout").await?.is_some();
    if (current || engine.is_none()) && !moved_aside {
        return Ok(0);
    }
    if !current && engine.is_some() {
        if moved_aside {
            return Err(ChError::SchemaMismatch(
                "analytics.events and analytics.events_relayout both have the first layout: move one away".into(),
            ));
        }
        tracing::info!("events: moving the first layout aside to copy it into the current one");
        // Its view, bound to the table moved aside, would follow it; the worker writes
        // `user_days` (docs/deploy.md: replace the workers first).
        conn.execute(super::schema::DROP_USER_DAYS_VIEW, &[]).await?;
        conn.execute(&format!("RENAME TABLE analytics.events TO {OLD}"), &[]).await?;
    }
    conn.execute(create, settings).await?;
    // Also when a run stopped half way: a view made since may be bound to either table.
    super::schema::rebind_event_views(conn, settings).await?;
    let cols = conn
        .select("SELECT name FROM system.columns WHERE database = 'analytics' AND table = 'events_relayout'", &[])
        .await?;
    let cols: Vec<String> = cols.rows.iter().filter_map(|r| r.first()).map(Value::as_str).collect();
    let cols = cols.join(", ");
    let months = conn.select(&format!("SELECT DISTINCT toYYYYMM(event_time) AS m FROM {OLD} ORDER BY m"), &[]).await?;
    let mut copied = 0;
    for m in months.rows.iter().filter_map(|r| r.first()).map(Value::as_u64) {
        let before = count(conn, "analytics.events").await?;
        conn.execute(
            &format!(
                "INSERT INTO analytics.events ({cols}) SELECT {cols} FROM {OLD} WHERE toYYYYMM(event_time) = {m} \
                 AND toString(event_id) NOT IN \
                 (SELECT toString(event_id) FROM analytics.events WHERE toYYYYMM(event_time) = {m})"
            ),
            &[],
        )
        .await?;
        copied += count(conn, "analytics.events").await?.saturating_sub(before);
    }
    let mut missing = 0;
    for m in months.rows.iter().filter_map(|r| r.first()).map(Value::as_u64) {
        let left = conn
            .select(
                &format!(
                    "SELECT count() FROM {OLD} WHERE toYYYYMM(event_time) = {m} AND toString(event_id) NOT IN \
                     (SELECT toString(event_id) FROM analytics.events WHERE toYYYYMM(event_time) = {m})"
                ),
                &[],
            )
            .await?;
        missing += left.rows.first().and_then(|r| r.first()).map_or(0, Value::as_u64);
    }
    if missing > 0 {
        return Err(ChError::SchemaMismatch(format!("events relayout: {missing} rows not copied; run migrate again")));
    }
    conn.execute(&format!("DROP TABLE {OLD}"), &[]).await?;
    tracing::info!(copied, "events: relayout done");
    Ok(copied)
}

async fn count(conn: &mut Connection, table: &str) -> Result<u64, ChError> {
    let s = conn.select(&format!("SELECT count() FROM {table}"), &[]).await?;
    Ok(s.rows.first().and_then(|r| r.first()).map_or(0, Value::as_u64))
}
