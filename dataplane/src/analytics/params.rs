//! Request parameters: the query string, the scope (`game_id`/`env` from the query, else
//! the `X-Game-ID`/`X-Env` headers, as Croupier's dashboard sends them), and times.
//!
//! `start`/`end` accept RFC 3339 with or without fractional seconds (the dashboard sends
//! `Date.toISOString()`), and `YYYY-MM-DD`. A range is inclusive of both ends, in whole
//! seconds (UTC); a date as `end` means the end of that day (23:59:59). A time must lie
//! within ClickHouse's `DateTime` (1970-01-01 to 2105-12-31, [`MIN_TIME`]..=[`MAX_TIME`]):
//! outside it ClickHouse would wrap it to another time, so it is refused by name.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::error::ApiError;

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// The query string's parameters, decoded (a repeated name keeps its first value).
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes `a=1&b=x%20y`.
    pub fn parse(query: &str) -> Params {
        Params { pairs: form_urlencoded::parse(query.as_bytes()).into_owned().collect() }
    }

    /// Decodes a form body or query, appending to these.
    pub fn extend(&mut self, other: Params) {
        self.pairs.extend(other.pairs);
    }

    /// The value of `name`, trimmed, when present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// A comma-separated list (empty items dropped).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// An integer, `default` when absent; refused when not a number (spaces around it
    /// included, as Croupier's integer parsing refuses them; a leading `+` it takes).
    pub fn int(&self, name: &'static str, default: i64) -> Result<i64, ApiError> {
        match self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()) {
            None | Some("") => Ok(default),
            Some(v) if v.trim() != v => Err(ApiError::param(name, "expected an integer (without spaces)")),
            Some(v) => v.parse().map_err(|_| ApiError::param(name, "expected an integer")),
        }
    }

    /// An integer within `range`, `default` when absent; refused when not a number or
    /// outside the range (never clamped: a request asking for something else is told).
    /// For parameters of our own; Croupier's use [`Params::int_or_default`].
    pub fn int_in(
        &self,
        name: &'static str,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ApiError> {
        let v = self.int(name, default)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(ApiError::param(name, format!("expected an integer from {} to {}", range.start(), range.end())))
        }
    }

    /// One of Croupier's integers, as Croupier reads it: `default` when absent or outside
    /// `ok` (`size=0` or `size=501` on `/behavior/events` is its default 50); refused only
    /// when not an integer at all, as Croupier's request parser refuses it.
    pub fn int_or_default(
        &self,
        name: &'static str,
        default: i64,
        ok: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ApiError> {
        let v = self.int(name, default)?;
        Ok(if ok.contains(&v) { v } else { default })
    }

    /// Croupier's `page`: 1 when absent or below 1; refused only when not an integer.
    pub fn page(&self) -> Result<i64, ApiError> {
        Ok(self.int("page", 1)?.max(1))
    }

    /// Croupier's `gap_sec`: seconds, 0 (no limit) when absent or negative; refused only
    /// when not an integer.
    pub fn gap_sec(&self) -> Result<u64, ApiError> {
        Ok(self.int("gap_sec", 0)?.max(0).unsigned_abs())
    }

    /// One of Croupier's flags (`sequential`, `same_session`): true only for `1`, as
    /// Croupier compares it; anything else, or nothing, is false.
    pub fn flag_one(&self, name: &str) -> bool {
        self.get(name) == Some("1")
    }

    /// One of `allowed` for our own parameters (`allowed[0]` when absent); anything else is
    /// refused, naming the values allowed.
    pub fn choice(&self, name: &'static str, allowed: &[&'static str]) -> Result<&'static str, ApiError> {
        match self.get(name) {
            None => Ok(allowed.first().copied().unwrap_or_default()),
            Some(v) => allowed
                .iter()
                .copied()
                .find(|a| *a == v)
                .ok_or_else(|| ApiError::param(name, format!("expected one of {}", allowed.join(", ")))),
        }
    }

    /// One of Croupier's choices (`per`, `by`, `granularity`), as Croupier reads it: one
    /// of `allowed` in any case, else (absent or anything else) `allowed[0]`.
    pub fn choice_or_default(&self, name: &str, allowed: &[&'static str]) -> &'static str {
        let v = self.get(name).unwrap_or_default();
        let default = allowed.first().copied().unwrap_or_default();
        allowed.iter().copied().find(|a| a.eq_ignore_ascii_case(v)).unwrap_or(default)
    }

    /// The parameters as a JSON object (for the audit log): of a repeated name, the first
    /// value, the one the request was answered with ([`Params::get`]).
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.pairs {
            map.entry(k.clone()).or_insert_with(|| serde_json::Value::String(v.clone()));
        }
        serde_json::Value::Object(map).to_string()
    }
}

/// Which game and environment a request reads; `None` means all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `game_id`.
    pub game: Option<String>,
    /// `env`.
    pub env: Option<String>,
}

/// Refuses a `game_id` or `env` (`field`) longer than ingest takes one (256 bytes).
pub fn check_scope_value(field: &'static str, v: &str) -> Result<(), ApiError> {
    let max = croupier_protocol::validate::Limits::default().max_field_bytes;
    if v.len() > max {
        return Err(ApiError::param(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

impl Scope {
    /// From the query, else the headers.
    pub fn resolve(params: &Params, game_header: Option<&str>, env_header: Option<&str>) -> Scope {
        let pick =
            |q: Option<&str>, h: Option<&str>| q.or(h.map(str::trim).filter(|v| !v.is_empty())).map(str::to_owned);
        Scope { game: pick(params.get("game_id"), game_header), env: pick(params.get("env"), env_header) }
    }

    /// Refuses a `game_id` or `env` longer than ingest takes one (256 bytes): no row can
    /// hold it, and the figures remembered per scope would be keyed by kilobytes.
    pub fn check(&self) -> Result<(), ApiError> {
        for (field, v) in [("game_id", &self.game), ("env", &self.env)] {
            check_scope_value(field, v.as_deref().unwrap_or_default())?;
        }
        Ok(())
    }

    /// ` AND game_id = '...' AND env = '...'` for what is set.
    pub fn filter(&self) -> String {
        let mut out = String::new();
        if let Some(g) = &self.game {
            out.push_str(&format!(" AND game_id = {}", super::sql::quote(g)));
        }
        if let Some(e) = &self.env {
            out.push_str(&format!(" AND env = {}", super::sql::quote(e)));
        }
        out
    }
}

/// The first second a request may name: 1970-01-01T00:00:00Z (ClickHouse's `DateTime`
/// starts there).
pub const MIN_TIME: i64 = 0;

/// The last second a request may name: 2105-12-31T23:59:59Z (ClickHouse's `DateTime`
/// ends on 2106-02-07; whole years are kept).
pub const MAX_TIME: i64 = 4_291_747_199;

/// Parses a time: RFC 3339 (fractional seconds dropped) or `YYYY-MM-DD` (its midnight,
/// or with `end_of_day` its last second). Unix seconds, within [`MIN_TIME`]..=[`MAX_TIME`]
/// (else refused, naming `field`).
pub fn parse_time(field: &'static str, v: &str, end_of_day: bool) -> Result<i64, ApiError> {
    let refused =
        || ApiError::param(field, "expected RFC 3339 (2025-11-22T12:00:00Z, fractions allowed) or YYYY-MM-DD");
    let t = match OffsetDateTime::parse(v, &Rfc3339) {
        Ok(t) => t.unix_timestamp(),
        // Four digits of year, as in RFC 3339 (`[year]` alone also takes `+2026`).
        Err(_) if !v.as_bytes().first().is_some_and(u8::is_ascii_digit) => return Err(refused()),
        Err(_) => {
            let date = Date::parse(v, format_description!("[year]-[month]-[day]")).map_err(|_| refused())?;
            let midnight = date.midnight().assume_utc().unix_timestamp();
            if end_of_day {
                midnight + DAY - 1
            } else {
                midnight
            }
        }
    };
    if (MIN_TIME..=MAX_TIME).contains(&t) {
        Ok(t)
    } else {
        Err(ApiError::param(field, "expected a time from 1970-01-01 to 2105-12-31 (UTC)"))
    }
}

/// The most points a series answers (`/payments/product_trend`: products × buckets,
/// `/realtime/series`: minutes): a longer range is 400, never an answer that holds the
/// control thread.
pub const MAX_POINTS: i64 = 100_000;

/// The most values of a dimension clients send (`city`, `product_id`, `country`, ...) a
/// breakdown answers: those that weigh most (revenue, groups), and `"truncated": true`
/// when there were more.
pub const MAX_GROUPS: usize = 1000;

/// The longest range, in days, of the routes that answer a row per day of it (retention,
/// LTV, segments, attribution).
pub const MAX_DAYS: i64 = 366;

/// Refuses a range from day `first` to day `last` (both included) of more than
/// [`MAX_DAYS`] days.
pub fn at_most_366_days(first: i64, last: i64) -> Result<(), ApiError> {
    if last - first >= MAX_DAYS {
        return Err(ApiError::param("start", "at most 366 days"));
    }
    Ok(())
}

/// An inclusive range of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First second.
    pub start: i64,
    /// Last second.
    pub end: i64,
}

impl Range {
    /// `start`/`end` from the request; absent ones default to `now` for the end and
    /// `default_secs` before the end for the start. `required` refuses absent ones.
    pub fn from(params: &Params, now: i64, default_secs: i64, required: bool) -> Result<Range, ApiError> {
        // `start` is named first when it is missing (when both are, the first of the two).
        if required && params.get("start").is_none() {
            return Err(ApiError::param("start", "required"));
        }
        let end = match params.get("end") {
            Some(v) => parse_time("end", v, true)?,
            None if required => return Err(ApiError::param("end", "required")),
            None => now,
        };
        let start = match params.get("start") {
            Some(v) => parse_time("start", v, false)?,
            // A default start before the first second is that second.
            None => (end - default_secs).max(MIN_TIME),
        };
        if start > end {
            return Err(ApiError::param("start", "after end"));
        }
        Ok(Range { start, end })
    }

    /// `<col> >= toDateTime(start) AND <col> <= toDateTime(end)`, both kept within
    /// [`MIN_TIME`]..=[`MAX_TIME`] (a range a route widened, as the LTV's 90 days past its
    /// cohorts, never wraps around in ClickHouse).
    pub fn filter(&self, col: &str) -> String {
        let clamp = |t: i64| t.clamp(MIN_TIME, MAX_TIME);
        format!("{col} >= toDateTime({}) AND {col} <= toDateTime({})", clamp(self.start), clamp(self.end))
    }

    /// How many buckets of `secs` seconds (aligned on the epoch) the range touches.
    pub fn buckets(&self, secs: i64) -> i64 {
        let secs = secs.max(1);
        self.end.div_euclid(secs) - self.start.div_euclid(secs) + 1
    }

    /// Day numbers (days since the epoch) of the first and last second.
    pub fn days(&self) -> (i64, i64) {
        (self.start.div_euclid(DAY), self.end.div_euclid(DAY))
    }
}

/// `YYYY-MM-DD` of a day number, kept within [`MIN_TIME`]..=[`MAX_TIME`] (a day a route
/// counts back from the range, as the overview's 30 days before its last, is never one
/// ClickHouse cannot read).
pub fn date_string(day: i64) -> String {
    let day = day.clamp(MIN_TIME / DAY, MAX_TIME / DAY);
    let t = OffsetDateTime::from_unix_timestamp(day * DAY).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// RFC 3339 (`2025-11-22T12:00:00Z`) of unix seconds.
pub fn rfc3339(secs: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{}T{:02}:{:02}:{:02}Z", date_string(secs.div_euclid(DAY)), t.hour(), t.minute(), t.second())
}

/// `round(x * 100 / base, 2)`: a percent to 2 decimals, 0 when `base` is 0.
pub fn percent(x: f64, base: f64) -> f64 {
    if base <= 0.0 {
        0.0
    } else {
        (x * 10_000.0 / base).round() / 100.0
    }
}

/// `x / base` to 2 decimals, 0 when `base` is 0.
pub fn ratio(x: f64, base: f64) -> f64 {
    if base <= 0.0 {
        0.0
    } else {
        (x * 100.0 / base).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_form_the_dashboard_and_server_send() {
        let want = 1_763_812_800; // 2025-11-22T12:00:00Z
        assert_eq!(parse_time("start", "2025-11-22T12:00:00Z", false), Ok(want));
        assert_eq!(parse_time("start", "2025-11-22T12:00:00.000Z", false), Ok(want));
        assert_eq!(parse_time("start", "2025-11-22T14:00:00+02:00", false), Ok(want));
        assert_eq!(parse_time("start", "2025-11-22", false), Ok(want - 12 * 3600));
        assert_eq!(parse_time("end", "2025-11-22", true), Ok(want + 12 * 3600 - 1));
        // A fraction is dropped, for the start as for the end.
        assert_eq!(parse_time("start", "2025-11-22T12:00:00.5Z", false), Ok(want));
        assert_eq!(parse_time("end", "2025-11-22T12:00:00.5Z", true), Ok(want));
        for bad in ["", "2025-11", "22/11/2025", "2025-11-22 12:00:00", "x'; DROP", "+2025-11-22", "-2025-11-22"] {
            assert!(parse_time("start", bad, false).is_err(), "{bad}");
        }
        assert_eq!(rfc3339(want), "2025-11-22T12:00:00Z");
        assert_eq!(date_string(want / DAY), "2025-11-22");
    }

    /// A required range without either end names the first missing one.
    #[test]
    fn a_required_range_names_the_first_end_missing() {
        let missing = |q: &str| match Range::from(&Params::parse(q), 1_000_000, 0, true) {
            Err(ApiError::InvalidParameter { field, .. }) => field,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(missing(""), "start");
        assert_eq!(missing("end=2025-11-22"), "start");
        assert_eq!(missing("start=2025-11-22"), "end");
        assert_eq!(missing("end=x"), "start");
        assert!(Range::from(&Params::parse("start=2025-11-22&end=2025-11-23"), 0, 0, true).is_ok());
    }

    /// Times outside ClickHouse's `DateTime` are refused naming the field, never wrapped.
    #[test]
    fn times_outside_clickhouses_datetime_are_refused() {
        assert_eq!(rfc3339(MAX_TIME), "2105-12-31T23:59:59Z");
        assert_eq!(parse_time("start", "1970-01-01", false), Ok(0));
        assert_eq!(parse_time("end", "2105-12-31", true), Ok(MAX_TIME));
        for (field, bad, eod) in [
            ("start", "1969-12-31", false),
            ("start", "1969-12-31T23:59:59Z", false),
            ("start", "-0001-01-01", false),
            ("end", "2106-01-01", true),
            ("end", "2150-01-01", true),
            ("end", "9999-12-31T23:59:59Z", true),
        ] {
            let e = parse_time(field, bad, eod).expect_err(bad);
            assert_eq!((e.status(), e.field()), (400, Some(field)), "{bad}");
        }
        let e = Range::from(&Params::parse("start=1969-12-31&end=1970-01-05"), 0, DAY, false).expect_err("start");
        assert_eq!(e.field(), Some("start"));
        let e = Range::from(&Params::parse("end=2150-01-01"), 0, DAY, false).expect_err("end");
        assert_eq!(e.field(), Some("end"));
        // A default start never goes before the first second.
        let r = Range::from(&Params::parse("end=1970-01-02"), 0, 30 * DAY, false).expect("range");
        assert_eq!(r.start, 0);
        assert_eq!(
            Range { start: -5, end: MAX_TIME + 90 * DAY }.filter("t"),
            format!("t >= toDateTime(0) AND t <= toDateTime({MAX_TIME})")
        );
    }

    #[test]
    fn params_scope_and_ranges() {
        let p = Params::parse("game_id=g%201&steps=a,%20b,,c&start=2025-11-20&end=2025-11-21");
        assert_eq!(p.list("steps"), vec!["a", "b", "c"]);
        let s = Scope::resolve(&p, Some("other"), Some("prod"));
        assert_eq!(s, Scope { game: Some("g 1".into()), env: Some("prod".into()) });
        assert!(s.check().is_ok());
        // Longer than ingest takes: no row can hold it.
        let long = Scope { game: Some("g".into()), env: Some("e".repeat(257)) };
        assert_eq!(long.check().map_err(|e| e.field()), Err(Some("env")));
        assert!(Scope { game: Some("g".repeat(256)), env: None }.check().is_ok());
        let r = Range::from(&p, 0, DAY, false).expect("range");
        assert_eq!(r.end - r.start + 1, 2 * DAY);
        assert!(Range::from(&Params::parse(""), 0, DAY, true).is_err());
        assert!(Range::from(&Params::parse("start=2025-11-22&end=2025-11-21"), 0, DAY, false).is_err());
        // Integers as Croupier parses them: a `+` taken, spaces refused.
        assert_eq!(Params::parse("size=%2B10").int("size", 50), Ok(10));
        for bad in ["size=%2010", "size=10%20", "size=%20", "size=+10", "size=1.0", "size=x"] {
            assert!(Params::parse(bad).int("size", 50).is_err(), "{bad}");
        }
        assert_eq!(Params::parse("size=").int("size", 50), Ok(50));
        assert_eq!(percent(1.0, 3.0), 33.33);
        assert_eq!(percent(1.0, 0.0), 0.0);
    }

    /// The audit log records the value a repeated parameter was answered with.
    #[test]
    fn the_audited_parameters_are_those_used() {
        let p = Params::parse("game_id=g1&start=2025-11-01&game_id=g2&start=2025-11-09");
        assert_eq!((p.get("game_id"), p.get("start")), (Some("g1"), Some("2025-11-01")));
        let logged: serde_json::Value = serde_json::from_str(&p.to_json()).expect("json");
        assert_eq!(logged, serde_json::json!({"game_id": "g1", "start": "2025-11-01"}));
    }

    #[test]
    fn croupier_parameters_fall_back_to_croupier_defaults() {
        let p = Params::parse("size=0&big=501&neg=-4&ok=20&nan=1e3&page=-3&per=TEAM&by=Platform&f=1&g=true&gap_sec=-9");
        assert_eq!(p.int_or_default("size", 50, 1..=500), Ok(50));
        assert_eq!(p.int_or_default("big", 50, 1..=500), Ok(50));
        assert_eq!(p.int_or_default("neg", 20, 1..=200), Ok(20));
        assert_eq!(p.int_or_default("ok", 50, 1..=500), Ok(20));
        assert_eq!(p.int_or_default("absent", 7, 1..=500), Ok(7));
        assert!(p.int_or_default("nan", 20, 1..=200).is_err(), "not an integer stays refused");
        assert_eq!(p.page(), Ok(1));
        assert_eq!(Params::parse("page=3").page(), Ok(3));
        assert!(Params::parse("page=x").page().is_err());
        assert_eq!(p.gap_sec(), Ok(0));
        assert_eq!(Params::parse("gap_sec=59").gap_sec(), Ok(59));
        assert_eq!(p.choice_or_default("per", &["session", "user"]), "session");
        assert_eq!(p.choice_or_default("by", &["channel", "platform", "country"]), "platform");
        assert_eq!(p.choice_or_default("absent", &["hour", "minute"]), "hour");
        assert!(p.flag_one("f"));
        assert!(!p.flag_one("g"), "only 1 is true, as Croupier compares it");
        assert!(!p.flag_one("absent"));
    }
}
