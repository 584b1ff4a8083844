//! The analytics schema (database `analytics`), compatible with Croupier's tables, and
//! the idempotent migration that creates it.
//!
//! Differences from Croupier's DDL, all additive: `events` and `payments` are
//! `ReplacingMergeTree` keyed on the dedup key (`event_id`, `order_id`) so a redelivered
//! batch never shows twice; `events` has `device_id`, both have `ingested_at` (when ingest
//! accepted the record; identical in redelivered copies). TTLs are left to operators
//! (ClickHouse 18.16 has no column TTL). `events` is sorted by `(game_id, env,
//! event_time, event, event_id)`, so a one-day read reads about that day; a table
//! of the first layout (without the day) is copied into it by [`super::relayout`].
//!
//! The aggregate tables the worker writes from the merged sketches
//! (`minute_online`, `daily_users`, `daily_revenue`) are `ReplacingMergeTree(version)` on
//! `(game_id, env, period)`: every write of a figure is the whole figure, the latest
//! wins, so several workers, restarts and redeliveries never add up; `minute_online` has
//! a `version` column and `daily_users` a `payers` one beyond Croupier's. `daily_online_peak`
//! is Croupier's `AggregatingMergeTree` of `maxState(online)`, fed by its materialized view
//! (a maximum does not double-count either).
//!
//! `user_days` is ours: one row per (game, env, UTC day, user) with counts of the user's
//! active, registration and first-activity events that day, written by the worker with
//! each insert into `events`, folded from the rows it inserts (`super::user_days`; earlier
//! versions had a materialized view do it, which [`migrate`] drops: it cost the server
//! about as much as the insert itself). A `SummingMergeTree`; the API reads the counts as
//! flags, so a row counted twice (a redelivered batch) changes nothing; `events` counts
//! every event, so no row sums to zero and none is dropped by a merge. The overview, the realtime registered total and
//! retention's latest rates read it instead of scanning `events`: a day of it is a row
//! per player, not an event.
//!
//! `daily_players` and `registered_users` are ours too, for what would otherwise read a
//! row of `user_days` per player and day over many days: per game, env and UTC day a
//! `uniqCombined` sketch of the day's active players (`kind` 0) and of its players with a
//! new-user event (`kind` 1) (`AggregatingMergeTree`: WAU/MAU and the new-user series
//! merge a few sketches), and one row per player with a new-user event holding the first
//! such day (`minState`: the registered total reads a row per player). Both are fed from
//! `events` by views that keep only the events they count (few of them: cheap on inserts).

use croupier_protocol::clickhouse::packet::Setting;
use croupier_protocol::clickhouse::result::Value;

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
    ORDER BY (game_id, env, event_time, event, event_id)",
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
        online  UInt32,
        version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(m)
    ORDER BY (game_id, env, m)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_users (
        d         Date,
        game_id   LowCardinality(String),
        env       LowCardinality(String),
        dau       UInt64,
        new_users UInt64,
        version   UInt64,
        payers    UInt64 DEFAULT 0
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(d)
    ORDER BY (game_id, env, d)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_revenue (
        d             Date,
        game_id       LowCardinality(String),
        env           LowCardinality(String),
        revenue_cents UInt64,
        refunds_cents UInt64,
        failed        UInt64,
        version       UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(d)
    ORDER BY (game_id, env, d)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_online_peak (
        d           Date,
        game_id     LowCardinality(String),
        env         LowCardinality(String),
        peak_online AggregateFunction(max, UInt32)
    ) ENGINE = AggregatingMergeTree()
    PARTITION BY toYYYYMM(d)
    ORDER BY (game_id, env, d)",
    "CREATE TABLE IF NOT EXISTS analytics.audit_log (
        time        DateTime,
        user        String,
        roles       String,
        route       String,
        game_id     String,
        env         String,
        params      String,
        status      UInt16,
        duration_ms UInt32,
        read_rows   UInt64
    ) ENGINE = MergeTree()
    PARTITION BY toYYYYMM(time)
    ORDER BY (time, user)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.daily_online_peak_mv
    TO analytics.daily_online_peak
    AS SELECT toDate(m, 'UTC') AS d, game_id, env, maxState(online) AS peak_online
    FROM analytics.minute_online GROUP BY d, game_id, env",
    "CREATE TABLE IF NOT EXISTS analytics.user_days (
        d            Date,
        game_id      LowCardinality(String),
        env          LowCardinality(String),
        user_id      String,
        events       UInt64,
        active       UInt64,
        registered   UInt64,
        first_active UInt64
    ) ENGINE = SummingMergeTree((events, active, registered, first_active))
    PARTITION BY toYYYYMM(d)
    ORDER BY (game_id, env, d, user_id)",
    "CREATE TABLE IF NOT EXISTS analytics.daily_players (
        d       Date,
        game_id LowCardinality(String),
        env     LowCardinality(String),
        kind    UInt8,
        users   AggregateFunction(uniqCombined, String)
    ) ENGINE = AggregatingMergeTree()
    PARTITION BY toYYYYMM(d)
    ORDER BY (game_id, env, kind, d)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.daily_players_mv
    TO analytics.daily_players
    AS SELECT toDate(event_time, 'UTC') AS d, game_id, env,
        toUInt8(lower(event) IN ('register', 'user.register', 'first_active')) AS kind, uniqCombinedState(user_id) AS users
    FROM analytics.events WHERE lower(event) IN ('login', 'session_start', 'user.login', 'session.start', 'register',
        'user.register', 'first_active') AND user_id != '' GROUP BY d, game_id, env, kind",
    "CREATE TABLE IF NOT EXISTS analytics.registered_users (
        game_id LowCardinality(String),
        env     LowCardinality(String),
        user_id String,
        first_d AggregateFunction(min, Date)
    ) ENGINE = AggregatingMergeTree()
    ORDER BY (game_id, env, user_id)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.registered_users_mv
    TO analytics.registered_users
    AS SELECT game_id, env, user_id, minState(toDate(event_time, 'UTC')) AS first_d
    FROM analytics.events WHERE lower(event) IN ('register', 'user.register', 'first_active') AND user_id != ''
    GROUP BY game_id, env, user_id",
];

/// Drops the materialized view that filled `user_days` from every insert into `events`
/// in earlier versions: the worker folds its inserts into `user_days` itself now
/// ([`super::user_days`]). `croupier migrate` keeps a view it finds (workers of earlier
/// versions still need it) unless asked to drop it ([`drop_user_days_view`]), or when it
/// lays `events` out again ([`super::relayout`]).
pub const DROP_USER_DAYS_VIEW: &str = "DROP TABLE IF EXISTS analytics.user_days_mv";

/// How far back [`drop_user_days_view`] copies `events` into `user_days` again: longer
/// than any batch an earlier worker had in flight when the view went.
pub const USER_DAYS_CATCH_UP_SECONDS: u64 = 900;

/// Drops `user_days_mv` (on this node: `suffix` is `_local` in a cluster) and copies the
/// `events` rows ingested in the last [`USER_DAYS_CATCH_UP_SECONDS`] into `user_days`
/// again, so that a batch an earlier worker inserted while the view went is not missing
/// there. Rows counted twice change no figure: readers take the counts as "more than
/// zero". Run by `croupier migrate --drop-user-days-view`, once every worker writes
/// `user_days` itself (docs/deploy.md). Returns whether the view existed.
pub async fn drop_user_days_view(
    conn: &mut Connection,
    settings: &[(&str, Setting<'_>)],
    suffix: &str,
) -> Result<bool, ChError> {
    let existed = has_user_days_view(conn).await?;
    conn.execute(DROP_USER_DAYS_VIEW, &[]).await?;
    let since = format!("ingested_at >= now() - {USER_DAYS_CATCH_UP_SECONDS}");
    conn.execute(&user_days_copy(&since, suffix), settings).await?;
    Ok(existed)
}

/// Whether `analytics.user_days_mv` exists on the server `conn` is connected to.
pub async fn has_user_days_view(conn: &mut Connection) -> Result<bool, ChError> {
    marked(conn, "user_days_mv").await
}

/// The table whose existence says that `user_days` holds the rows `events` had when the
/// migration filled it ([`fill_user_days`]); the API answers from `user_days` only then.
pub const USER_DAYS_FILLED: &str = "user_days_filled";

/// The same for `daily_players` and `registered_users` ([`fill_player_tables`]).
pub const PLAYER_TABLES_FILLED: &str = "player_tables_filled";

/// The views [`fill_player_tables`] copies for: the start of each one's statement, its
/// table and that table's columns.
const PLAYER_VIEWS: &[(&str, &str, &str)] = &[
    (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.daily_players_mv",
        "daily_players",
        "d, game_id, env, kind, users",
    ),
    (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.registered_users_mv",
        "registered_users",
        "game_id, env, user_id, first_d",
    ),
];

/// The rows the view whose statement starts with `view` writes into `table` (of
/// `columns`) for the `events` rows matching `condition`: what it would have written for
/// rows already there.
fn view_copy(view: &str, table: &str, columns: &str, condition: &str, suffix: &str) -> String {
    let select = STATEMENTS
        .iter()
        .find(|s| s.starts_with(view))
        .and_then(|s| s.split_once("AS SELECT"))
        .map_or("", |(_, select)| select);
    let select = if select.contains(" WHERE ") {
        select.replacen(" WHERE ", &format!(" WHERE {condition} AND "), 1)
    } else {
        select.replacen(" GROUP BY", &format!(" WHERE {condition} GROUP BY"), 1)
    };
    let select = select.replacen("FROM analytics.events ", &format!("FROM analytics.events{suffix} "), 1);
    format!("INSERT INTO analytics.{table}{suffix} ({columns}) SELECT{select}")
}

/// The rows of `analytics.user_days` for `events` rows matching a condition: what the
/// worker folds from its inserts ([`super::user_days`]), for rows already there.
pub fn user_days_copy(condition: &str, suffix: &str) -> String {
    let select = super::user_days::fold_select(&format!("analytics.events{suffix}"), condition);
    format!("INSERT INTO analytics.user_days{suffix} ({}) {select}", super::user_days::COLUMNS)
}

/// Makes the views reading `events` again, bound to the `events` there is now (a current
/// ClickHouse binds a view to its source table, not to its name: [`super::relayout`]),
/// and gives their tables every row of that `events`: what it took before the views
/// existed. The tables' marks stay: a row counted twice changes no figure
/// ([`fill_player_tables`]). `user_days` has no view: the worker fills it, from the new
/// `events`' inserts as from the old one's. Run by the relayout once the new `events` exists, while it still
/// holds only the rows inserted since (or, after an interrupted run, part of the copy).
/// Views not made yet are left to the rest of the migration.
pub(super) async fn rebind_event_views(conn: &mut Connection, settings: &[(&str, Setting<'_>)]) -> Result<(), ChError> {
    // Views of the schema that matched names with their case go first, with the mark
    // that has the rest of the migration copy every row again, `user_days` included.
    drop_case_sensitive_player_views(conn).await?;
    for &(view, table, columns) in PLAYER_VIEWS {
        let Some(statement) = STATEMENTS.iter().find(|s| s.starts_with(view)) else { continue };
        let name = view.trim_start_matches("CREATE MATERIALIZED VIEW IF NOT EXISTS ");
        // A view not made yet (nor, then, perhaps its table) is made and its table filled
        // by the rest of the migration.
        let short = name.trim_start_matches("analytics.");
        let exists = format!(
            "SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' \
             AND name = '{short}') WHERE x != 0"
        );
        if !threw(conn, &exists).await? {
            continue;
        }
        conn.execute(&format!("DROP TABLE IF EXISTS {name}"), &[]).await?;
        conn.execute(statement, settings).await?;
        conn.execute(&view_copy(view, table, columns, "1 = 1", ""), settings).await?;
    }
    Ok(())
}

/// Marks `user_days` as filled (see [`USER_DAYS_FILLED`]).
pub const USER_DAYS_MARK: &str =
    "CREATE TABLE IF NOT EXISTS analytics.user_days_filled (at DateTime DEFAULT now()) ENGINE = TinyLog";

/// Marks `daily_players` and `registered_users` as filled (see [`PLAYER_TABLES_FILLED`]).
pub const PLAYER_TABLES_MARK: &str =
    "CREATE TABLE IF NOT EXISTS analytics.player_tables_filled (at DateTime DEFAULT now()) ENGINE = TinyLog";

/// Whether the mark table `mark` exists.
async fn marked(conn: &mut Connection, mark: &str) -> Result<bool, ChError> {
    let sql = format!(
        "SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' \
         AND name = '{mark}') WHERE x != 0"
    );
    threw(conn, &sql).await
}

/// The months (`YYYYMM`) `events` holds rows of.
async fn event_months(conn: &mut Connection, suffix: &str) -> Result<Vec<u64>, ChError> {
    let months = conn
        .select(&format!("SELECT DISTINCT toYYYYMM(event_time) AS m FROM analytics.events{suffix} ORDER BY m"), &[])
        .await?;
    Ok(months.rows.iter().map(|r| r.first().map_or(0, Value::as_u64)).collect())
}

/// `user_days` (one row per user and UTC day: how many events, how many of them active,
/// register and first-activity events) is what the overview's DAU and new users and
/// retention's latest rates read instead of scanning `events`. The worker adds the rows of
/// every insert into `events` ([`super::user_days`]); the rows `events` already held are
/// copied here, one month at a time, and then `user_days_filled` is created. A row the
/// worker and the copy both count only raises its counts, which the API reads as "more
/// than zero", so a migrate stopped anywhere copies everything again next time, and loses
/// nothing: until the mark exists the API answers 503 for what reads `user_days`.
/// `suffix`: `""`, or `"_local"` on a cluster's node (its shard-local tables; every
/// replica copies, which counts twice and changes nothing).
pub async fn fill_user_days(
    conn: &mut Connection,
    settings: &[(&str, Setting<'_>)],
    suffix: &str,
) -> Result<(), ChError> {
    if marked(conn, USER_DAYS_FILLED).await? {
        return Ok(());
    }
    for month in event_months(conn, suffix).await? {
        copy_user_days_month(conn, settings, suffix, month).await?;
    }
    conn.execute(USER_DAYS_MARK, settings).await
}

/// Copies `events`' rows of `month` (`YYYYMM`) into `user_days`, as the worker folds them.
async fn copy_user_days_month(
    conn: &mut Connection,
    settings: &[(&str, Setting<'_>)],
    suffix: &str,
    month: u64,
) -> Result<(), ChError> {
    tracing::info!(month, "copying analytics.events into analytics.user_days");
    conn.execute(&user_days_copy(&format!("toYYYYMM(event_time) = {month}"), suffix), settings).await
}

/// Copies `events`' rows of `month` (`YYYYMM`) into the player tables, as their views count.
async fn copy_player_tables_month(
    conn: &mut Connection,
    settings: &[(&str, Setting<'_>)],
    suffix: &str,
    month: u64,
) -> Result<(), ChError> {
    let condition = format!("toYYYYMM(event_time) = {month}");
    for (view, table, columns) in PLAYER_VIEWS {
        tracing::info!(month, table, "copying analytics.events into analytics.{table}");
        conn.execute(&view_copy(view, table, columns, &condition, suffix), settings).await?;
    }
    Ok(())
}

/// `daily_players` (per game, env and UTC day, a `uniqCombined` sketch of the players
/// active that day, `kind` 0, and of those with a new-user event, `kind` 1) and
/// `registered_users` (one row per player with a new-user event: the first such day)
/// are what WAU/MAU, the new-user series and the registered total read: a few rows per
/// day, and a row per player, instead of a row per player and day. Filled like
/// [`fill_user_days`], from `events`, one month at a time, then marked
/// `player_tables_filled`. A row the view and the copy both count changes nothing: a
/// sketch of a player twice is the sketch of it once, and a minimum stays the minimum.
pub async fn fill_player_tables(
    conn: &mut Connection,
    settings: &[(&str, Setting<'_>)],
    suffix: &str,
) -> Result<(), ChError> {
    if marked(conn, PLAYER_TABLES_FILLED).await? {
        return Ok(());
    }
    for month in event_months(conn, suffix).await? {
        copy_player_tables_month(conn, settings, suffix, month).await?;
    }
    conn.execute(PLAYER_TABLES_MARK, settings).await
}

/// The mark that the player tables and `user_days` are to be given every `events` row
/// again, as they count now ([`drop_case_sensitive_player_views`]).
const PLAYER_RECOPY: &str = "player_views_recopy";

/// Drops `daily_players_mv` and `registered_users_mv` of an earlier schema, which matched
/// event names with their case (`Login` was no login; Croupier lowercases names) and
/// counted the events without a user as one player, so that they are made again as they
/// are now; [`recopy_player_tables`] then gives their tables every `events` row again.
/// The mark is made first: a migrate stopped in between copies next time.
pub(super) async fn drop_case_sensitive_player_views(conn: &mut Connection) -> Result<(), ChError> {
    let old = "SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' \
               AND name IN ('daily_players_mv', 'registered_users_mv') \
               AND create_table_query NOT LIKE '%lower(event)%') WHERE x != 0";
    if threw(conn, old).await? {
        tracing::info!("replacing daily_players_mv and registered_users_mv: event names without case, no empty user");
        let mark = format!(
            "CREATE TABLE IF NOT EXISTS analytics.{PLAYER_RECOPY} (at DateTime DEFAULT now()) ENGINE = TinyLog"
        );
        conn.execute(&mark, &[]).await?;
        conn.execute("DROP TABLE IF EXISTS analytics.daily_players_mv", &[]).await?;
        conn.execute("DROP TABLE IF EXISTS analytics.registered_users_mv", &[]).await?;
    }
    Ok(())
}

/// Copies every `events` row (of this node: `suffix`) into the player tables and
/// `user_days` as the views and the worker count now, one month at a time, when
/// [`drop_case_sensitive_player_views`] replaced the views. What the earlier views and
/// workers wrote stays: the players they missed (a name in another case) are added, since
/// a player counted twice is one (sketch states and minimum dates merge; `user_days`
/// counts are read as "more than zero"); the empty user they counted in a day's sketch
/// stays in that day (readers of `registered_users` and `user_days` leave it out).
pub(super) async fn recopy_player_tables(
    conn: &mut Connection,
    settings: &[(&str, Setting<'_>)],
    suffix: &str,
) -> Result<(), ChError> {
    if !marked(conn, PLAYER_RECOPY).await? {
        return Ok(());
    }
    for month in event_months(conn, suffix).await? {
        copy_player_tables_month(conn, settings, suffix, month).await?;
        copy_user_days_month(conn, settings, suffix, month).await?;
    }
    conn.execute(&format!("DROP TABLE IF EXISTS analytics.{PLAYER_RECOPY}"), &[]).await
}

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
/// `local`: on the shard-local tables of a cluster node (`events_local`, `payments_local`).
pub async fn fsync_after_insert(conn: &mut Connection, local: bool) -> Result<bool, ChError> {
    if conn.server().revision < MODIFY_SETTING {
        return Ok(false);
    }
    for sql in FSYNC_STATEMENTS {
        let sql = if local { sql.replacen(" MODIFY", "_local MODIFY", 1) } else { (*sql).to_owned() };
        match conn.execute(&sql, &[]).await {
            Ok(()) => {}
            Err(ChError::Server(e)) if e.code == 62 || e.code == 115 => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The aggregate tables as the first schema created them (placeholders nothing wrote:
/// `minute_online` summing, `daily_users` and `daily_revenue` with the version in the sort
/// key, so never replaced, `daily_online_peak` with a plain `peak`), and the start of the
/// engine each has now. [`migrate`] replaces such a table when it is empty.
const AGGREGATE_ENGINES: &[(&str, &str)] = &[
    ("minute_online", "ReplacingMergeTree(version)"),
    ("daily_users", "ReplacingMergeTree(version)"),
    ("daily_revenue", "ReplacingMergeTree(version)"),
    ("daily_online_peak", "AggregatingMergeTree"),
];

/// `throwIf`'s error: the value passed was not zero.
const THROW_IF: i32 = 395;

/// Whether `sql` (a `SELECT throwIf(...)` returning no rows when it does not throw)
/// threw.
async fn threw(conn: &mut Connection, sql: &str) -> Result<bool, ChError> {
    match conn.execute(sql, &[]).await {
        Ok(()) => Ok(false),
        Err(ChError::Server(e)) if e.code == THROW_IF => Ok(true),
        Err(e) => Err(e),
    }
}

/// Drops aggregate tables of the first schema (see [`AGGREGATE_ENGINES`]) so that they are
/// created again as they are now; refuses when one holds rows (nothing of croupier wrote
/// them: someone else did, and an operator decides).
async fn replace_first_aggregate_tables(conn: &mut Connection) -> Result<(), ChError> {
    for (table, engine) in AGGREGATE_ENGINES {
        let old = format!(
            "SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' \
             AND name = '{table}' AND engine_full NOT LIKE '{engine}%') WHERE x != 0"
        );
        if !threw(conn, &old).await? {
            continue;
        }
        let rows = format!("SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM analytics.{table}) WHERE x != 0");
        if threw(conn, &rows).await? {
            return Err(ChError::SchemaMismatch(format!(
                "analytics.{table} has an engine of an earlier schema and holds rows; croupier writes it as \
                 {engine} (docs/aggregation.md): move its rows away and drop it, then run migrate again"
            )));
        }
        tracing::info!(table, engine, "replacing an empty aggregate table of the first schema");
        conn.execute("DROP TABLE IF EXISTS analytics.daily_online_peak_mv", &[]).await?;
        conn.execute(&format!("DROP TABLE IF EXISTS analytics.{table}"), &[]).await?;
    }
    Ok(())
}

/// Drops a `daily_online_peak_mv` of an earlier schema, which took the day of a minute in
/// the server's time zone (`toDate(m)`), so that it is created again taking the UTC day
/// like every other figure. The view holds no rows (it writes to `daily_online_peak`);
/// peaks it wrote before under local days stay as they are.
async fn replace_local_time_view(conn: &mut Connection) -> Result<(), ChError> {
    let old = "SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' \
               AND name = 'daily_online_peak_mv' AND create_table_query NOT LIKE '%UTC%') WHERE x != 0";
    if threw(conn, old).await? {
        tracing::info!("replacing daily_online_peak_mv: days are UTC days");
        conn.execute("DROP TABLE IF EXISTS analytics.daily_online_peak_mv", &[]).await?;
    }
    Ok(())
}

/// Adds `daily_users.payers` to a table created without it (Croupier's own schema has
/// `d, game_id, env, dau, new_users, version`): the worker writes the column.
async fn add_payers_column(conn: &mut Connection) -> Result<(), ChError> {
    // Throws when a daily_users table exists without the column.
    let missing = "SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' \
                   AND name = 'daily_users' AND name NOT IN (SELECT table FROM system.columns \
                   WHERE database = 'analytics' AND table = 'daily_users' AND name = 'payers')) WHERE x != 0";
    if threw(conn, missing).await? {
        tracing::info!("adding payers to analytics.daily_users");
        conn.execute("ALTER TABLE analytics.daily_users ADD COLUMN payers UInt64 DEFAULT 0", &[]).await?;
    }
    Ok(())
}

/// The settings DDL needs on the server `conn` is connected to.
fn ddl_settings(conn: &Connection) -> &'static [(&'static str, Setting<'static>)] {
    if conn.server().revision < LOW_CARDINALITY_GA {
        &[("allow_experimental_low_cardinality_type", Setting::UInt(1))]
    } else {
        &[]
    }
}

/// Creates the schema of one node of cluster `cluster` ([`super::cluster`]). Safe to run
/// any number of times.
pub async fn migrate_cluster_node(conn: &mut Connection, cluster: &str) -> Result<(), ChError> {
    let settings = ddl_settings(conn);
    super::cluster::migrate_node(conn, cluster, settings).await
}

/// The columns of the tables the worker writes (`analytics.<table><suffix>`: `_local` on
/// a cluster's node) that differ from what it writes: altered, dropped or renamed by hand.
/// [`migrate`] creates what is missing but does not change a column back (a change of type
/// may lose values: the operator decides); each difference comes with the statement that
/// restores it. A worker meeting one waits (`rows::check_header`).
pub async fn drift(conn: &mut Connection, suffix: &str) -> Result<Vec<String>, ChError> {
    use super::aggregates::{DailyUsers, MinuteOnline};
    use super::rows::{comparable_type, Events, Payments, Table};
    use super::user_days::UserDays;
    fn of<T: Table>() -> (&'static str, Vec<(String, String)>) {
        (T::NAME, T::columns().into_iter().map(|c| (c.name, c.ty)).collect())
    }
    // `daily_revenue` is written by an `INSERT … SELECT` naming its columns: as created.
    let revenue = [
        ("d", "Date"),
        ("game_id", "LowCardinality(String)"),
        ("env", "LowCardinality(String)"),
        ("revenue_cents", "UInt64"),
        ("refunds_cents", "UInt64"),
        ("failed", "UInt64"),
        ("version", "UInt64"),
    ];
    let tables = [
        of::<Events>(),
        of::<Payments>(),
        of::<UserDays>(),
        of::<MinuteOnline>(),
        of::<DailyUsers>(),
        ("analytics.daily_revenue", revenue.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()),
    ];
    let mut out = Vec::new();
    for (name, written) in tables {
        let table = format!("{}{suffix}", name.trim_start_matches("analytics."));
        let name = format!("analytics.{table}");
        let have = conn
            .select(
                &format!("SELECT name, type FROM system.columns WHERE database = 'analytics' AND table = '{table}'"),
                &[],
            )
            .await?;
        let have: Vec<(String, String)> =
            have.rows.iter().filter_map(|r| Some((r.first()?.as_str(), r.get(1)?.as_str()))).collect();
        for (column, ty) in written {
            match have.iter().find(|(n, _)| *n == column) {
                None => out.push(format!(
                    "{name} has no column {column}: ALTER TABLE {name} ADD COLUMN {column} {ty}{}",
                    created_default(&name, &column)
                )),
                // ClickHouse 18.16 refuses a `FixedString` narrowed in one step ("String too
                // long", its padding counted): through `String` first.
                Some((_, on)) if comparable_type(on) != comparable_type(&ty) && ty.starts_with("FixedString(") => out
                    .push(format!(
                        "{name}.{column} is {on} but croupier writes {ty}: ALTER TABLE {name} MODIFY COLUMN {column} \
                         String; ALTER TABLE {name} MODIFY COLUMN {column} {ty}"
                    )),
                Some((_, on)) if comparable_type(on) != comparable_type(&ty) => out.push(format!(
                    "{name}.{column} is {on} but croupier writes {ty}: ALTER TABLE {name} MODIFY COLUMN {column} {ty}"
                )),
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

/// ` DEFAULT <expr>` when `table`'s statement in [`STATEMENTS`] gives `column` one (so that
/// a column dropped by hand is restored as it was made), else nothing.
fn created_default(table: &str, column: &str) -> String {
    let base = table.trim_end_matches("_local");
    let create = format!("CREATE TABLE IF NOT EXISTS {base} (");
    let Some(statement) = STATEMENTS.iter().find(|s| s.starts_with(&create)) else { return String::new() };
    statement
        .lines()
        .map(str::trim)
        .find(|l| l.split_whitespace().next() == Some(column))
        .and_then(|l| l.find(" DEFAULT ").map(|at| l[at..].trim_end_matches(',').to_owned()))
        .unwrap_or_default()
}

/// Creates or upgrades the schema. Safe to run any number of times.
pub async fn migrate(conn: &mut Connection) -> Result<(), ChError> {
    let settings = ddl_settings(conn);
    if let Some(database) = STATEMENTS.first() {
        conn.execute(database, settings).await?;
    }
    replace_first_aggregate_tables(conn).await?;
    if let Some(events) = STATEMENTS.iter().find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS analytics.events ")) {
        super::relayout::relayout_events(conn, events, settings).await?;
    }
    replace_local_time_view(conn).await?;
    drop_case_sensitive_player_views(conn).await?;
    for sql in STATEMENTS {
        conn.execute(sql, settings).await?;
    }
    fill_user_days(conn, settings, "").await?;
    fill_player_tables(conn, settings, "").await?;
    recopy_player_tables(conn, settings, "").await?;
    add_payers_column(conn).await?;
    Ok(())
}
