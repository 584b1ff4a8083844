//! What is counted: which events and payments feed which sketch, per game, environment
//! and period, and the Redis key and TTL of each (Croupier's `hll:*` keys).

use std::fmt::Write;

/// One kind of figure, counted in its own sketches (elements: user ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Players seen per minute: `session_start`, `heartbeat` (and their dotted aliases)
    /// and any event carrying a session.
    Online,
    /// Players with any event per UTC day.
    Dau,
    /// Players who registered (`register`, `first_active`, `user.register`) per day.
    New,
    /// Players with a successful payment per day.
    Payers,
    /// Players who started a level per day.
    LevelStart,
    /// Players who cleared a level per day.
    LevelClear,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [Kind::Online, Kind::Dau, Kind::New, Kind::Payers, Kind::LevelStart, Kind::LevelClear];

    /// The key prefix (`hll:<name>`).
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Online => "hll:online",
            Kind::Dau => "hll:dau",
            Kind::New => "hll:new",
            Kind::Payers => "hll:payers",
            Kind::LevelStart => "hll:level_start",
            Kind::LevelClear => "hll:level_clear",
        }
    }

    /// Whether its period is a minute (else a UTC day).
    pub fn per_minute(self) -> bool {
        self == Kind::Online
    }

    /// The key's time to live in seconds: Croupier's 48 h for online minutes, 30 days
    /// for days.
    pub fn ttl_secs(self) -> u64 {
        if self.per_minute() {
            ONLINE_TTL_SECS
        } else {
            DAY_TTL_SECS
        }
    }

    /// Oldest period still counted, given the current minute and day: a key written
    /// for an older one would outlive nothing (its TTL runs from the write).
    pub fn oldest(self, now_minute: u32, today: u32) -> u32 {
        if self.per_minute() {
            now_minute.saturating_sub((ONLINE_TTL_SECS / 60) as u32)
        } else {
            today.saturating_sub((DAY_TTL_SECS / 86_400) as u32)
        }
    }

    /// Writes the Redis key of game `game`, environment `env` and `period` into `out`
    /// (cleared first): `hll:online:<game>:<env>:<YYYYMMDDHHmm>` for minutes,
    /// `hll:<kind>:<game>:<env>:<YYYY-MM-DD>` for days.
    pub fn key(self, game: &str, env: &str, period: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}:{game}:{env}:", self.prefix());
        if self.per_minute() {
            let (y, mo, d) = civil(period / 1440);
            let (h, mi) = ((period % 1440) / 60, period % 60);
            let _ = write!(out, "{y:04}{mo:02}{d:02}{h:02}{mi:02}");
        } else {
            let (y, mo, d) = civil(period);
            let _ = write!(out, "{y:04}-{mo:02}-{d:02}");
        }
    }
}

/// Croupier's TTL of `hll:online:*` keys: 48 hours.
pub const ONLINE_TTL_SECS: u64 = 48 * 3600;
/// Croupier's TTL of the per-day keys: 30 days.
pub const DAY_TTL_SECS: u64 = 30 * 86_400;

/// Minutes since the epoch of a time in milliseconds (0 before it).
pub fn minute_of(ts_ms: i64) -> u32 {
    ts_ms.div_euclid(60_000).clamp(0, i64::from(u32::MAX)) as u32
}

/// UTC days since the epoch of a time in milliseconds (0 before it).
pub fn day_of(ts_ms: i64) -> u32 {
    ts_ms.div_euclid(86_400_000).clamp(0, i64::from(u32::MAX)) as u32
}

/// (year, month, day) of a day number (days since 1970-01-01), proleptic Gregorian.
pub fn civil(day: u32) -> (i32, u32, u32) {
    let date = time::Date::from_julian_day(2_440_588 + day.min(2_000_000) as i32).unwrap_or(time::Date::MIN);
    (date.year(), u32::from(u8::from(date.month())), u32::from(date.day()))
}

/// Which sketches an event feeds, besides DAU (every event with a user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventKinds {
    /// Online this minute.
    pub online: bool,
    /// A new player today.
    pub new: bool,
    /// Started a level.
    pub level_start: bool,
    /// Cleared a level.
    pub level_clear: bool,
}

/// Event names (compared without case) of the kind.
pub(crate) const ONLINE: &[&str] = &["session_start", "heartbeat", "session.start", "session.heartbeat"];
/// Event names (compared without case) of the kind.
pub(crate) const NEW: &[&str] = &["register", "first_active", "user.register"];
/// Event names (compared without case) of the kind.
pub(crate) const LEVEL_START: &[&str] =
    &["level_start", "level_enter", "level_begin", "level.start", "progression.start"];
/// Event names (compared without case) of the kind.
pub(crate) const LEVEL_CLEAR: &[&str] =
    &["level_clear", "level_pass", "level_win", "level_complete", "level.complete", "progression.complete"];

fn one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The sketches an event named `name` (compared without case, as Croupier lowercases)
/// with session `session` feeds.
#[inline]
pub fn classify(name: &str, session: &str) -> EventKinds {
    // Only the lists whose names start with the event's first letter are compared.
    let first = name.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
    let has_session = !session.is_empty();
    match first {
        b's' | b'h' => EventKinds { online: has_session || one_of(name, ONLINE), ..EventKinds::default() },
        b'r' | b'f' | b'u' => EventKinds { online: has_session, new: one_of(name, NEW), ..EventKinds::default() },
        b'l' | b'p' => EventKinds {
            online: has_session,
            level_start: one_of(name, LEVEL_START),
            level_clear: one_of(name, LEVEL_CLEAR),
            ..EventKinds::default()
        },
        _ => EventKinds { online: has_session, ..EventKinds::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_croupiers() {
        let mut k = String::new();
        // 2026-12-02 10:37 UTC.
        let ms = 1_796_207_820_000i64;
        Kind::Online.key("g1", "prod", minute_of(ms), &mut k);
        assert_eq!(k, "hll:online:g1:prod:202612021037");
        Kind::Dau.key("g1", "prod", day_of(ms), &mut k);
        assert_eq!(k, "hll:dau:g1:prod:2026-12-02");
        Kind::New.key("g1", "", day_of(ms), &mut k);
        assert_eq!(k, "hll:new:g1::2026-12-02");
        Kind::Payers.key("g", "e", 0, &mut k);
        assert_eq!(k, "hll:payers:g:e:1970-01-01");
        assert_eq!(civil(day_of(951_782_400_000)), (2000, 2, 29));
        assert_eq!((Kind::Online.ttl_secs(), Kind::Dau.ttl_secs()), (172_800, 2_592_000));
    }

    #[test]
    fn croupier_names_and_dotted_aliases_count() {
        assert!(classify("session_start", "").online && classify("Heartbeat", "").online);
        assert!(classify("session.start", "").online && classify("level_complete", "s1").online);
        assert!(!classify("login", "").online);
        assert!(classify("register", "").new && classify("first_active", "").new && classify("user.register", "").new);
        assert!(!classify("user.login", "").new);
        assert!(classify("level_enter", "").level_start && classify("progression.start", "").level_start);
        assert!(classify("level_win", "").level_clear && classify("level.complete", "").level_clear);
        assert_eq!(classify("ad_impression", ""), EventKinds::default());
    }
}
