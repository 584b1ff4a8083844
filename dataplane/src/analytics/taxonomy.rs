//! The event names each figure counts, with the aliases Croupier's dashboards and SDKs
//! send (reference §6.2), as SQL lists.

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
pub const LEVEL_START: &str = "('level_start', 'level_enter', 'level_begin', 'progression.start')";
/// A level cleared.
pub const LEVEL_CLEAR: &str = "('level_clear', 'level_pass', 'level_win', 'level_complete', 'progression.complete')";
/// A level failed.
pub const LEVEL_FAIL: &str = "('level_fail', 'level_lose', 'level_dead', 'progression.fail')";
/// Payment statuses that are refunds (both spellings Croupier uses).
pub const REFUND: &str = "('refund', 'refunded')";

/// A payment row is a refund, as an aggregate's condition: `status` cast to `String`
/// first, because ClickHouse 18.16 cannot merge, through a `Distributed` table (a
/// cluster), an aggregate whose argument is `IN` over a `LowCardinality` column (code 70:
/// `AggregateFunction(sumIf, UInt64, LowCardinality(UInt8))` is not the `UInt8` one).
pub const REFUNDED: &str = "CAST(status AS String) IN ('refund', 'refunded')";
