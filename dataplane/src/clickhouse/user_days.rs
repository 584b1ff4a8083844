//! `analytics.user_days`: one row per (UTC day, game, env, user) with how many events the
//! user sent that day and how many of them were active, registration and first-activity
//! events. The worker folds the rows of each insert into `events` itself
//! ([`UserDayFold`]) and inserts them on the same connection once `events` confirmed its
//! rows; `croupier migrate` copies the rows `events` already holds with [`fold_select`],
//! the same fold in SQL over the same event-name lists.
//!
//! The table is a `SummingMergeTree`: the API reads each count as "more than zero", so a
//! day counted twice (a redelivered batch, whose events `events` deduplicates, or a copy
//! and a fold of the same rows) changes no figure.

use std::collections::HashMap;

use croupier_protocol::clickhouse::block::{Column, ColumnData, LowCardinality};

use super::partitions::utc_month;
use super::rows::{Table, TableRows};

/// Events that make a user active that day (`user_days.active`).
pub const ACTIVE_EVENTS: &[&str] = &["login", "session_start", "user.login", "session.start"];
/// A user's registration (`user_days.registered`).
pub const REGISTER_EVENTS: &[&str] = &["register", "user.register"];
/// A user's first activity (`user_days.first_active`).
pub const FIRST_ACTIVE_EVENTS: &[&str] = &["first_active"];

/// Whether `event` is one of `names`, compared without ASCII case (Croupier lowercases
/// event names before it counts them; SQL's `lower(event)` is the same).
fn named(names: &[&str], event: &str) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(event))
}

/// A list of names as SQL: `('a', 'b')`. The names hold no quote or backslash.
pub fn sql_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("({})", quoted.join(", "))
}

/// The columns of `user_days`, in the order [`fold_select`] and [`UserDays`] give them.
pub const COLUMNS: &str = "d, game_id, env, user_id, events, active, registered, first_active";

/// The `user_days` rows of the rows of `from` (a table of `events`' columns) matching
/// `condition`: the fold [`UserDayFold`] makes, in SQL.
pub fn fold_select(from: &str, condition: &str) -> String {
    format!(
        "SELECT toDate(event_time, 'UTC') AS d, game_id, env, user_id, count() AS events, \
         countIf(lower(event) IN {}) AS active, countIf(lower(event) IN {}) AS registered, \
         countIf(lower(event) IN {}) AS first_active \
         FROM {from} WHERE user_id != '' AND {condition} GROUP BY d, game_id, env, user_id",
        sql_list(ACTIVE_EVENTS),
        sql_list(REGISTER_EVENTS),
        sql_list(FIRST_ACTIVE_EVENTS)
    )
}

/// `analytics.user_days`, as the worker writes it.
pub struct UserDays;

impl Table for UserDays {
    const NAME: &'static str = "analytics.user_days";
    const INSERT: &'static str = "INSERT INTO analytics.user_days (d, game_id, env, user_id, events, active, \
        registered, first_active) VALUES";
    const ORDER_BY: &'static [&'static str] = &["game_id", "env", "d", "user_id"];

    fn columns() -> Vec<Column> {
        vec![
            Column::new("d", "Date", ColumnData::fixed(2)),
            Column::new("game_id", "LowCardinality(String)", ColumnData::LowCardinality(LowCardinality::default())),
            Column::new("env", "LowCardinality(String)", ColumnData::LowCardinality(LowCardinality::default())),
            Column::new("user_id", "String", ColumnData::String(Default::default())),
            Column::new("events", "UInt64", ColumnData::fixed(8)),
            Column::new("active", "UInt64", ColumnData::fixed(8)),
            Column::new("registered", "UInt64", ColumnData::fixed(8)),
            Column::new("first_active", "UInt64", ColumnData::fixed(8)),
        ]
    }
}

/// A block of `analytics.user_days` rows.
pub type UserDayRows = TableRows<UserDays>;

/// One user's day: the counts of `user_days`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DayCounts {
    /// Events.
    pub events: u64,
    /// Of them, in [`ACTIVE_EVENTS`].
    pub active: u64,
    /// In [`REGISTER_EVENTS`].
    pub registered: u64,
    /// In [`FIRST_ACTIVE_EVENTS`].
    pub first_active: u64,
}

/// The `user_days` rows of the events of one insert, folded as they are pushed: one entry
/// per (UTC day, game, env, user). Keys are kept as bytes (the day, then the game, env
/// and user, each but the last after its length), so that a row already seen costs a
/// hash look-up and no allocation.
/// Keys are hashed with foldhash (as `LowCardinality` columns are): a look-up per event.
#[derive(Default)]
pub struct UserDayFold {
    days: HashMap<Box<[u8]>, DayCounts, foldhash::fast::RandomState>,
    key: Vec<u8>,
}

/// A folded row, its key read back from the bytes.
struct Folded<'a> {
    /// The block it goes to ([`UserDayFold::blocks`]).
    block: usize,
    game: &'a [u8],
    env: &'a [u8],
    day: u16,
    user: &'a [u8],
    counts: DayCounts,
}

/// Writes the key of a user's day into `key` (emptied first): the day, then the game and
/// env each after its length, then the user.
fn write_key(key: &mut Vec<u8>, day: u16, game: &str, env: &str, user: &str) {
    key.clear();
    key.extend_from_slice(&day.to_le_bytes());
    key.extend_from_slice(&(game.len() as u32).to_le_bytes());
    key.extend_from_slice(game.as_bytes());
    key.extend_from_slice(&(env.len() as u32).to_le_bytes());
    key.extend_from_slice(env.as_bytes());
    key.extend_from_slice(user.as_bytes());
}

/// A folded row: the parts of its key made by [`write_key`], and its counts.
fn folded(key: &[u8], counts: DayCounts) -> Option<Folded<'_>> {
    let (day, rest) = key.split_first_chunk::<2>()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let (game, rest) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let (env, user) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
    Some(Folded { block: 0, game, env, day: u16::from_le_bytes(*day), user, counts })
}

impl UserDayFold {
    /// Counts one event of `user` at `event_time` (Unix seconds, as the `events` row holds
    /// it): its UTC day is the row's `d`.
    /// An event without a user is nobody's day: not folded.
    pub fn add(&mut self, event_time: u32, game: &str, env: &str, user: &str, event: &str) {
        if user.is_empty() {
            return;
        }
        // Days since 1970 of a `u32` time fit a `u16` (a `Date`).
        write_key(&mut self.key, (event_time / 86_400) as u16, game, env, user);
        let counts = match self.days.get_mut(self.key.as_slice()) {
            Some(c) => c,
            None => self.days.entry(self.key.as_slice().into()).or_default(),
        };
        counts.events += 1;
        counts.active += u64::from(named(ACTIVE_EVENTS, event));
        counts.registered += u64::from(named(REGISTER_EVENTS, event));
        counts.first_active += u64::from(named(FIRST_ACTIVE_EVENTS, event));
    }

    /// Rows folded.
    pub fn len(&self) -> usize {
        self.days.len()
    }

    /// Whether nothing was folded.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Forgets every row.
    pub fn clear(&mut self) {
        self.days.clear();
    }

    /// The counts of one user's day, if any event of it was folded.
    pub fn get(&self, day: u16, game: &str, env: &str, user: &str) -> Option<DayCounts> {
        let mut key = Vec::new();
        write_key(&mut key, day, game, env, user);
        self.days.get(key.as_slice()).copied()
    }

    /// The rows as blocks of at most `partitions` months each (`user_days` is partitioned
    /// by `toYYYYMM(d)`), each in the table's sort-key order. The same rows always make
    /// the same blocks, byte for byte, whatever order they were folded in (a retried block
    /// is then one a replicated table recognises).
    pub fn blocks(&self, partitions: usize, out: &mut Vec<UserDayRows>) {
        for b in out.iter_mut() {
            b.clear();
        }
        let mut rows: Vec<Folded<'_>> = self.days.iter().filter_map(|(key, counts)| folded(key, *counts)).collect();
        let month = |day: u16| utc_month(u32::from(day) * 86_400).0;
        let mut months: Vec<u32> = rows.iter().map(|r| month(r.day)).collect();
        months.sort_unstable();
        months.dedup();
        let per = partitions.max(1);
        // A row's block: its month's place among the batch's months, `per` months a block
        // (one block unless the batch spans more months than that).
        if months.len() > per {
            for r in &mut rows {
                r.block = months.binary_search(&month(r.day)).unwrap_or(0) / per;
            }
        }
        // Sorted by one number (the block, then the rank of the game and env among the
        // batch's, then the day) and the user: a batch holds few games and envs.
        let mut pairs: Vec<(&[u8], &[u8])> = rows.iter().map(|r| (r.game, r.env)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut keyed: Vec<(u64, &[u8], usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rank = pairs.binary_search(&(r.game, r.env)).unwrap_or(0) as u64;
                ((r.block as u64) << 48 | rank << 16 | u64::from(r.day), r.user, i)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let rows: Vec<&Folded<'_>> = keyed.iter().filter_map(|k| rows.get(k.2)).collect();
        let used = rows.last().map_or(0, |r| r.block + 1);
        while out.len() < used {
            out.push(UserDayRows::new());
        }
        out.truncate(used);
        for r in rows {
            let Some(rows) = out.get_mut(r.block) else { continue };
            let c = &mut rows.columns;
            c[0].data.push_fixed(&r.day.to_le_bytes());
            c[1].data.push_str(r.game);
            c[2].data.push_str(r.env);
            c[3].data.push_str(r.user);
            c[4].data.push_fixed(&r.counts.events.to_le_bytes());
            c[5].data.push_fixed(&r.counts.active.to_le_bytes());
            c[6].data.push_fixed(&r.counts.registered.to_le_bytes());
            c[7].data.push_fixed(&r.counts.first_active.to_le_bytes());
            rows.rows += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_protocol::clickhouse::order::sort_order;

    const DAY: u32 = 86_400;

    fn counts(events: u64, active: u64, registered: u64, first_active: u64) -> Option<DayCounts> {
        Some(DayCounts { events, active, registered, first_active })
    }

    #[test]
    fn a_users_day_counts_its_events_by_list() {
        let mut f = UserDayFold::default();
        let t = 20_000 * DAY;
        for (secs, user, event) in [
            (t + 5, "u1", "login"),
            (t + 6, "u1", "session.start"),
            (t + 7, "u1", "register"),
            (t + 8, "u1", "level_start"),
            (t + DAY - 1, "u1", "first_active"),
            // The next UTC day, and a name in another case (the same name: Croupier
            // lowercases names), and an event without a user (nobody's day).
            (t + DAY, "u1", "user.login"),
            (t + DAY + 1, "u1", "Login"),
            (t + DAY + 2, "", "login"),
            (t + 9, "u2", "user.register"),
        ] {
            f.add(secs, "g1", "prod", user, event);
        }
        // Another game and env keep their own rows.
        f.add(t, "g2", "prod", "u1", "session_start");
        f.add(t, "g1", "dev", "u1", "level_start");
        assert_eq!(f.len(), 5);
        assert_eq!(f.get(20_000, "g1", "prod", "u1"), counts(5, 2, 1, 1));
        assert_eq!(f.get(20_001, "g1", "prod", "u1"), counts(2, 2, 0, 0));
        assert_eq!(f.get(20_001, "g1", "prod", ""), None);
        assert_eq!(f.get(20_000, "g1", "prod", "u2"), counts(1, 0, 1, 0));
        assert_eq!(f.get(20_000, "g2", "prod", "u1"), counts(1, 1, 0, 0));
        assert_eq!(f.get(20_000, "g1", "dev", "u1"), counts(1, 0, 0, 0));
        // A key's parts cannot run into each other.
        f.add(t, "g1p", "rod", "u1", "login");
        assert_eq!(f.get(20_000, "g1", "prod", "u1"), counts(5, 2, 1, 1));
        f.clear();
        assert!(f.is_empty());
    }

    /// The SQL copy and the fold count the same names: the lists are the same constants.
    #[test]
    fn the_sql_fold_uses_the_same_lists() {
        let sql = fold_select("analytics.events", "1 = 1");
        assert!(sql
            .contains("countIf(lower(event) IN ('login', 'session_start', 'user.login', 'session.start')) AS active"));
        assert!(sql.contains("countIf(lower(event) IN ('register', 'user.register')) AS registered"));
        assert!(sql.contains("countIf(lower(event) IN ('first_active')) AS first_active"));
        assert!(sql.contains("FROM analytics.events WHERE user_id != '' AND 1 = 1 GROUP BY d, game_id, env, user_id"));
        let names: Vec<String> = UserDays::columns().iter().map(|c| c.name.clone()).collect();
        assert_eq!(names.join(", "), COLUMNS);
        assert!(UserDays::INSERT.contains(&format!("({COLUMNS})")));
    }

    /// The rows come out in the table's order, whatever order they were folded in, in the
    /// same bytes; months past the partition limit go to further blocks.
    #[test]
    fn blocks_are_sorted_by_the_key_and_split_by_month() {
        let jan = 19_723 * DAY; // 2024-01-01
        let feb = 19_754 * DAY; // 2024-02-01
        let events = [
            (feb, "g2", "prod", "b"),
            (jan + 10, "g1", "prod", "z"),
            (jan, "g1", "prod", "a"),
            (feb, "g1", "prod", "a"),
            (jan, "g1", "dev", "y"),
        ];
        let mut one = UserDayFold::default();
        let mut other = UserDayFold::default();
        for e in events {
            one.add(e.0, e.1, e.2, e.3, "login");
        }
        for e in events.iter().rev() {
            other.add(e.0, e.1, e.2, e.3, "login");
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        one.blocks(100, &mut a);
        other.blocks(100, &mut b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rows, 5);
        for (x, y) in a[0].columns.iter().zip(&b[0].columns) {
            let (mut bx, mut by) = (Vec::new(), Vec::new());
            croupier_protocol::clickhouse::block::write_block(&mut bx, 54412, std::slice::from_ref(x), 5);
            croupier_protocol::clickhouse::block::write_block(&mut by, 54412, std::slice::from_ref(y), 5);
            assert_eq!(bx, by, "column {}", x.name);
        }
        // Already in the order the server sorts by: no order to apply.
        let order = sort_order(&a[0].columns, a[0].rows, UserDays::ORDER_BY);
        if let Some(order) = order {
            assert_eq!(order, (0..5).collect::<Vec<u32>>());
        }
        // One month a block.
        one.blocks(1, &mut a);
        assert_eq!(a.iter().map(|b| b.rows).collect::<Vec<_>>(), [3, 2]);
        one.clear();
        one.blocks(1, &mut a);
        assert!(a.is_empty());
    }
}
