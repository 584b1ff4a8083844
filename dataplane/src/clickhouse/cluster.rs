//! ClickHouse as a cluster of shards and replicas (`clickhouse.shards`, docs/clickhouse-cluster.md):
//! the schema `croupier migrate` gives every node, and the shard a row goes to.
//!
//! Every node gets, for each table of [`super::schema::STATEMENTS`], a shard-local table
//! `analytics.<table>_local` on the replicated variant of its engine, its ZooKeeper path
//! `/clickhouse/tables/{shard}/analytics/<table>_local` and replica name `{replica}` taken
//! from the node's own `<macros>`, and a `Distributed` table `analytics.<table>` over the
//! cluster (the names the API reads). The worker inserts into the `_local` tables of the
//! shard [`shard_of`] names for a row's dedup key, so that every copy of a row lands on one
//! shard and `FINAL` (applied per shard) folds them. The aggregate tables' figures all go
//! to the first shard (a constant sharding key: they are a few rows per game and minute
//! or day, each written whole, the latest version winning).

use croupier_protocol::clickhouse::packet::Setting;
use croupier_protocol::clickhouse::result::Value;
use siphasher::sip::SipHasher24;

use super::connection::{ChError, Connection};
use super::schema::STATEMENTS;

/// The `Distributed` sharding key of `events`: the same function as [`shard_of`] over the
/// event id's text.
pub const EVENTS_SHARDING_KEY: &str = "sipHash64(toString(event_id))";
/// The `Distributed` sharding key of `payments`: [`shard_of`] over the order id.
pub const PAYMENTS_SHARDING_KEY: &str = "sipHash64(order_id)";

/// Each table's sharding key in its `Distributed` table.
const SHARDING_KEYS: &[(&str, &str)] = &[
    ("events", EVENTS_SHARDING_KEY),
    ("payments", PAYMENTS_SHARDING_KEY),
    // Figures: all on the first shard.
    ("minute_online", "0"),
    ("daily_users", "0"),
    ("daily_revenue", "0"),
    ("daily_online_peak", "0"),
    // Written once per API request, read by operators: anywhere.
    ("audit_log", "rand()"),
    // Written by the worker on each shard from the events it inserts there (a player's
    // days are spread over the shards with the events; reads count distinct users across
    // them).
    ("user_days", "sipHash64(user_id)"),
    // The same: each shard's sketches of its own events' players per day (merged across
    // shards on reads), and its registered players' first days.
    ("daily_players", "rand()"),
    ("registered_users", "sipHash64(user_id)"),
];

/// The shard (0-based, of `shards`) for a row whose dedup key is `key`: ClickHouse's
/// `sipHash64(key) % shards`, which a `Distributed` table of equal shard weights computes
/// from [`EVENTS_SHARDING_KEY`] / [`PAYMENTS_SHARDING_KEY`] too.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (SipHasher24::new().hash(key) % shards as u64) as usize
}

/// An event id as ClickHouse's `toString` writes a UUID (lowercase, hyphenated).
pub fn uuid_text(id: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut o = 0;
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 15)];
        o += 2;
    }
    out
}

/// The replicated engine for a table's single-server engine.
fn replicated(table: &str, engine: &str) -> Option<String> {
    let path = format!("'/clickhouse/tables/{{shard}}/analytics/{table}_local', '{{replica}}'");
    let (name, args) = engine.split_once('(')?;
    let args = args.strip_suffix(')')?;
    let args = if args.trim().is_empty() { path } else { format!("{path}, {args}") };
    Some(format!("Replicated{name}({args})"))
}

/// Statements for one node of cluster `cluster`, in order; every one idempotent.
pub fn statements(cluster: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sql in STATEMENTS {
        if let Some(rest) = sql.strip_prefix("CREATE TABLE IF NOT EXISTS analytics.") {
            let Some((table, body)) = rest.split_once(' ') else { continue };
            let Some((columns, tail)) = body.split_once(") ENGINE = ") else { continue };
            let Some((engine, order)) = tail.split_once('\n') else { continue };
            let Some(engine) = replicated(table, engine.trim()) else { continue };
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS analytics.{table}_local {columns}) ENGINE = {engine}\n{order}"
            ));
            let key = SHARDING_KEYS.iter().find(|(t, _)| *t == table).map_or("rand()", |(_, k)| k);
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS analytics.{table} AS analytics.{table}_local \
                 ENGINE = Distributed({cluster}, analytics, {table}_local, {key})"
            ));
        } else if sql.starts_with("CREATE MATERIALIZED VIEW") {
            // A view feeds each shard's own table from its own rows (the peaks from its
            // minutes, the player tables from its events).
            let mut view = (*sql).to_owned();
            for (table, _) in SHARDING_KEYS {
                for clause in ["TO", "FROM"] {
                    view = view.replace(
                        &format!("{clause} analytics.{table}\n"),
                        &format!("{clause} analytics.{table}_local\n"),
                    );
                    view = view.replace(
                        &format!("{clause} analytics.{table} "),
                        &format!("{clause} analytics.{table}_local "),
                    );
                }
            }
            out.push(view);
        } else {
            out.push((*sql).to_owned());
        }
    }
    out
}

/// The tables [`statements`] make `Distributed`.
pub fn distributed_tables() -> Vec<&'static str> {
    SHARDING_KEYS.iter().map(|(t, _)| *t).collect()
}

/// Creates (or finds) the cluster schema on the node `conn` is connected to. Refuses a
/// node whose `analytics.<table>` is not `Distributed` (a single-server schema: its rows
/// would be hidden behind the cluster's tables) and names it.
pub async fn migrate_node(
    conn: &mut Connection,
    cluster: &str,
    settings: &[(&str, Setting<'_>)],
) -> Result<(), ChError> {
    super::schema::drop_case_sensitive_player_views(conn).await?;
    for sql in statements(cluster) {
        conn.execute(&sql, settings).await?;
    }
    super::schema::fill_user_days(conn, settings, "_local").await?;
    super::schema::fill_player_tables(conn, settings, "_local").await?;
    super::schema::recopy_player_tables(conn, settings, "_local").await?;
    let names = distributed_tables().iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    let found = conn
        .select(
            &format!(
                "SELECT name, engine FROM system.tables WHERE database = 'analytics' AND name IN ({names}) \
                 AND engine != 'Distributed'"
            ),
            &[],
        )
        .await?;
    if let Some(row) = found.rows.first() {
        let table = row.first().map(Value::as_str).unwrap_or_default();
        let engine = row.get(1).map(Value::as_str).unwrap_or_default();
        return Err(ChError::SchemaMismatch(format!(
            "analytics.{table} is a {engine} table on this node (a single-server schema): with clickhouse.shards \
             it must be Distributed over analytics.{table}_local; move its rows into the cluster's tables and drop \
             it, then run migrate again (docs/clickhouse-cluster.md)"
        )));
    }
    Ok(())
}

/// Checks that the node `conn` is connected to (`addr`) is a replica of shard `s`
/// (0-based) of the `shards` of `clickhouse.shards`, on a cluster `cluster` of as many
/// shards: its `shard` macro — which names the ZooKeeper path its replicated tables share
/// with the shard's other replicas — must be `s + 1` (leading zeros allowed), as
/// docs/clickhouse-cluster.md asks, and its `<remote_servers>` entry for `cluster` must
/// list `shards` shards. A node listed under another shard, or a list that leaves shards
/// out, would take rows [`shard_of`] sends elsewhere, and a copy of a row inserted again
/// once the list is mended could land on two shards, where `FINAL` cannot fold it.
pub async fn check_node(
    conn: &mut Connection,
    addr: &str,
    s: usize,
    shards: usize,
    cluster: &str,
) -> Result<(), ChError> {
    let found = conn.select("SELECT substitution FROM system.macros WHERE macro = 'shard'", &[]).await?;
    let value = found.rows.first().and_then(|r| r.first()).map(Value::as_str).unwrap_or_default();
    let want = s + 1;
    if value.trim().parse::<usize>().ok() != Some(want) {
        let has = if value.is_empty() { "no `shard` macro".to_owned() } else { format!("`shard` macro {value:?}") };
        return Err(ChError::SchemaMismatch(format!(
            "{addr} has {has} but is listed in clickhouse.shards[{s}], shard {want}: list each node under the \
             shard its <macros><shard> names (1, 2, ... in the order of clickhouse.shards; \
             docs/clickhouse-cluster.md)"
        )));
    }
    let sql = format!(
        "SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = {}",
        super::aggregates::quote(cluster)
    );
    let found = conn.select(&sql, &[]).await?;
    let defined = found.rows.first().and_then(|r| r.first()).map(Value::as_u64).unwrap_or(0);
    if defined != shards as u64 {
        let what = match defined {
            0 => format!("defines no cluster {cluster:?} in its <remote_servers>"),
            n => format!("defines cluster {cluster:?} with {n} shard(s)"),
        };
        return Err(ChError::SchemaMismatch(format!(
            "{addr} {what}, but clickhouse.shards lists {shards}: list every shard of the cluster, in the order of \
             its <macros><shard> (docs/clickhouse-cluster.md)"
        )));
    }
    Ok(())
}

/// The insert statement of a table into its shard-local table.
pub fn local_insert(insert: &str, table: &str) -> String {
    insert.replacen(&format!("INSERT INTO {table} "), &format!("INSERT INTO {table}_local "), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_clickhouse_siphash64_modulo_shards() {
        // SELECT sipHash64('abc') on ClickHouse 18.16 and 26.9 (chdb-core).
        assert_eq!(SipHasher24::new().hash(b"abc"), 4_596_069_200_710_135_518);
        assert_eq!(shard_of(b"abc", 2), 0);
        assert_eq!(shard_of(b"abc", 1), 0);
        let id = [0x6f, 0x1c, 0x2b, 0x9e, 0x0d, 0x3a, 0x4c, 0x1e, 0x9a, 0x57, 0x2f, 0x4b, 0x8e, 0x6d, 0x1c, 0x00];
        assert_eq!(&uuid_text(&id), b"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c00");
    }

    #[test]
    fn every_table_gets_a_replicated_local_table_and_a_distributed_one() {
        let s = statements("prod");
        assert!(s.iter().any(|x| x.starts_with("CREATE TABLE IF NOT EXISTS analytics.events_local (")
            && x.contains("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics/events_local', '{replica}')\n")));
        assert!(s.iter().any(|x| x.contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics/daily_users_local', '{replica}', version)"
        )));
        assert!(s.iter().any(|x| x.contains("ENGINE = ReplicatedAggregatingMergeTree(")));
        assert!(
            s.iter()
                .any(|x| x
                    .contains("ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/analytics/audit_log_local'"))
        );
        assert!(s.contains(
            &"CREATE TABLE IF NOT EXISTS analytics.events AS analytics.events_local ENGINE = Distributed(prod, \
              analytics, events_local, sipHash64(toString(event_id)))"
                .to_owned()
        ));
        assert!(s
            .iter()
            .any(|x| x.contains("TO analytics.daily_online_peak_local")
                && x.contains("FROM analytics.minute_online_local")));
        // user_days_local is written by the worker, not by a view.
        assert!(!s.iter().any(|x| x.contains("user_days_mv") || x.contains("TO analytics.user_days")));
        assert!(s.iter().any(|x| x.starts_with("CREATE TABLE IF NOT EXISTS analytics.user_days_local (")
            && x.contains("ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/analytics/user_days_local', '{replica}', (events, active, registered, first_active))")));
        assert!(
            s.iter()
                .any(|x| x.contains("TO analytics.daily_players_local")
                    && x.contains("FROM analytics.events_local WHERE"))
        );
        assert!(s
            .iter()
            .any(|x| x.contains("TO analytics.registered_users_local")
                && x.contains("FROM analytics.events_local WHERE")));
        assert!(s.iter().any(|x| x.starts_with("CREATE TABLE IF NOT EXISTS analytics.registered_users_local (")
            && x.contains("ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/analytics/registered_users_local', '{replica}')\n    ORDER BY (game_id, env, user_id)")));
        let tables = s.iter().filter(|x| x.contains("ENGINE = Distributed(")).count();
        assert_eq!(tables, distributed_tables().len());
        assert_eq!(s.iter().filter(|x| x.contains("_local (")).count(), tables);
        assert_eq!(
            local_insert("INSERT INTO analytics.events (event_time) VALUES", "analytics.events"),
            "INSERT INTO analytics.events_local (event_time) VALUES"
        );
    }
}
