//! The event names each figure counts, with the aliases Croupier's dashboards and SDKs
//! send (reference §6.2), as SQL lists. The level lists hold every name the worker's
//! sketches count (`worker::aggregate::what`; a unit test keeps them so). Online players
//! are not counted from events here: the API reads the worker's sketches and
//! `minute_online`, which count `session.heartbeat` and the rest. Names are compared as
//! stored (with case), where the worker ignores case: `events.event` keeps the name as sent,
//! and `user_days`/`daily_players` are filled with the same case-sensitive lists (the
//! worker's `user_days` fold takes them from `crate::clickhouse::user_days`; a unit test
//! keeps these the same).

/// Activity that makes a user daily-active (DAU/WAU/MAU).
pub const ACTIVE: &str = "('login', 'session_start', 'user.login', 'session.start')";
/// A user's registration: new users and cohorts (`cohort=signup`).
pub const REGISTER: &str = "('register', 'user.register')";
/// A user's first activity (`cohort=first_active`).
pub const FIRST_ACTIVE: &str = "('first_active')";
/// Either of the two: the registered total, new users.
pub const NEW_USER: &str = "('register', 'user.register', 'first_active')";
/// In `daily_players`: the sketch of a day's players with an [`ACTIVE`] event.
pub const ACTIVE_KIND: u8 = 0;
/// In `daily_players`: the sketch of a day's players with a [`NEW_USER`] event.
pub const NEW_KIND: u8 = 1;
/// A level started.
pub const LEVEL_START: &str = "('level_start', 'level_enter', 'level_begin', 'level.start', 'progression.start')";
/// A level cleared.
pub const LEVEL_CLEAR: &str =
    "('level_clear', 'level_pass', 'level_win', 'level_complete', 'level.complete', 'progression.complete')";
/// A level failed.
pub const LEVEL_FAIL: &str = "('level_fail', 'level_lose', 'level_dead', 'progression.fail')";
/// Payment statuses that are refunds (both spellings Croupier uses).
pub const REFUND: &str = "('refund', 'refunded')";

/// A payment row is a refund, as an aggregate's condition: `status` cast to `String`
/// first, because ClickHouse 18.16 cannot merge, through a `Distributed` table (a
/// cluster), an aggregate whose argument is `IN` over a `LowCardinality` column (code 70:
/// `AggregateFunction(sumIf, UInt64, LowCardinality(UInt8))` is not the `UInt8` one).
pub const REFUNDED: &str = "CAST(status AS String) IN ('refund', 'refunded')";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::aggregate::what;

    /// The API counts a level start, a clear and a new user under every name the worker's
    /// sketches count it (the realtime level gauges and the `/levels` figures agree).
    /// What the API reads as active, registered and first-active is what `user_days` was
    /// filled with, and what `daily_players_mv` keeps.
    #[test]
    fn the_api_reads_user_days_by_the_lists_it_was_filled_with() {
        use crate::clickhouse::user_days::{sql_list, ACTIVE_EVENTS, FIRST_ACTIVE_EVENTS, REGISTER_EVENTS};
        assert_eq!(ACTIVE, sql_list(ACTIVE_EVENTS));
        assert_eq!(REGISTER, sql_list(REGISTER_EVENTS));
        assert_eq!(FIRST_ACTIVE, sql_list(FIRST_ACTIVE_EVENTS));
        let new_user: Vec<&str> = REGISTER_EVENTS.iter().chain(FIRST_ACTIVE_EVENTS).copied().collect();
        assert_eq!(NEW_USER, sql_list(&new_user));
        let view = crate::clickhouse::schema::STATEMENTS
            .iter()
            .find(|s| s.contains("TO analytics.daily_players\n"))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let every: Vec<&str> = ACTIVE_EVENTS.iter().chain(&new_user).copied().collect();
        assert!(view.contains(&format!("toUInt8(lower(event) IN {}) AS kind", sql_list(&new_user))), "{view}");
        assert!(
            view.contains(&format!("WHERE lower(event) IN {} AND user_id != '' GROUP BY", sql_list(&every))),
            "{view}"
        );
    }

    #[test]
    fn the_api_counts_every_name_the_worker_counts() {
        for (api, worker) in [(LEVEL_START, what::LEVEL_START), (LEVEL_CLEAR, what::LEVEL_CLEAR), (NEW_USER, what::NEW)]
        {
            for name in worker {
                assert!(api.contains(&format!("'{name}'")), "{name} missing from {api}");
            }
        }
    }
}
