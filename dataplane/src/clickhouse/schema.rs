//! The analytics schema (database `analytics`), compatible with Croupier's tables, and
//! the idempotent migration that creates it.
//!
//! Differences from Croupier's DDL, all additive: `events` and `payments` are
//! `ReplacingMergeTree` keyed on the dedup key (`event_id`, `order_id`) so a redelivered
//! batch never shows twice; `events` has `device_id`, both have `ingested_at` (when ingest
//! accepted the record; identical in redelivered copies). TTLs are left to operators
//! (ClickHouse 18.16 has no column TTL).

use croupier_protocol::clickhouse::packet::Setting;

use super::connection::{ChError, Connection};

/// Servers below this revision (ClickHouse 18.x) need
/// `allow_experimental_low_cardinality_type = 1` to create `LowCardinality` columns.
const LOW_CARDINALITY_GA: u64 = 54420;

/// The statements, in order. Every one is idempotent.
pub const STATEMENTS: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS analytics",
    "CREATE TABLE IF NOT EXISTS analytics.events (
        event_time  DateTime,
        game_id     LowCardinality(String),
        env         LowCardinality(String),
        user_id     String,
        session_id  String,
        event       LowCardinality(String),
        channel     LowCardinality(String),
        platform    LowCardinality(String),
        country     FixedString(2),
        app_version String,
        event_id    UUID,
        props_json  String,
        device_id   String DEFAULT '',
        ingested_at DateTime DEFAULT now()
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(event_time)
    ORDER BY (game_id, env, event, event_id)",
    "CREATE TABLE IF NOT EXISTS analytics.payments (
        time         DateTime,
        game_id      LowCardinality(String),
        env          LowCardinality(String),
        user_id      String,
        order_id     String,
        amount_cents UInt64,
        currency     String,
        status       LowCardinality(String),
        channel      LowCardinality(String),
        platform     LowCardinality(String),
        country      FixedString(2),
        region       String,
        city         String,
        product_id   String,
        reason       String,
        ingested_at  DateTime DEFAULT now()
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(time)
    ORDER BY (game_id, env, order_id, status)",
    "CREATE TABLE IF NOT EXISTS analytics.minute_online (
        m       DateTime,
        game_id LowCardinality(String),
        env     LowCardinality(String),
        online  UInt32
    ) ENGINE = SummingMergeTree()
    PARTITION BY toYYYYMM(m)
    ORDER BY (game_id, env, m)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_users (
        d         Date,
        game_id   LowCardinality(String),
        env       LowCardinality(String),
        dau       UInt64,
        new_users UInt64,
        version   UInt64
    ) ENGINE = ReplacingMergeTree()
    ORDER BY (game_id, env, d, version)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_revenue (
        d             Date,
        game_id       LowCardinality(String),
        env           LowCardinality(String),
        revenue_cents UInt64,
        refunds_cents UInt64,
        failed        UInt64,
        version       UInt64
    ) ENGINE = ReplacingMergeTree()
    ORDER BY (game_id, env, d, version)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_online_peak (
        d       Date,
        game_id LowCardinality(String),
        env     LowCardinality(String),
        peak    UInt32
    ) ENGINE = ReplacingMergeTree(peak)
    ORDER BY (game_id, env, d)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.daily_online_peak_mv
    TO analytics.daily_online_peak
    AS SELECT toDate(m) AS d, game_id, env, online AS peak FROM analytics.minute_online",
];

/// Servers from this revision (19.x) may understand `ALTER TABLE ... MODIFY SETTING`;
/// 18.x does not.
const MODIFY_SETTING: u64 = 54420;

/// Makes the inserts into the tables the worker fills durable on their own: every new
/// part, and its directory, is fsynced before the insert is confirmed. Without it an
/// EndOfStream (after which the worker acknowledges the entries) can precede the data
/// reaching the disk, and a power loss there loses confirmed rows.
pub const FSYNC_STATEMENTS: &[&str] = &[
    "ALTER TABLE analytics.events MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1",
    "ALTER TABLE analytics.payments MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1",
];

/// Sets [`FSYNC_STATEMENTS`] where the server has those settings. `Ok(false)` when it does
/// not (18.x, or a server without the settings: syntax error 62 or unknown setting 115).
pub async fn fsync_after_insert(conn: &mut Connection) -> Result<bool, ChError> {
    if conn.server().revision < MODIFY_SETTING {
        return Ok(false);
    }
    for sql in FSYNC_STATEMENTS {
        match conn.execute(sql, &[]).await {
            Ok(()) => {}
            Err(ChError::Server(e)) if e.code == 62 || e.code == 115 => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Creates or upgrades the schema. Safe to run any number of times.
pub async fn migrate(conn: &mut Connection) -> Result<(), ChError> {
    let legacy = conn.server().revision < LOW_CARDINALITY_GA;
    let settings: &[(&str, Setting<'_>)] =
        if legacy { &[("allow_experimental_low_cardinality_type", Setting::UInt(1))] } else { &[] };
    for sql in STATEMENTS {
        conn.execute(sql, settings).await?;
    }
    Ok(())
}
