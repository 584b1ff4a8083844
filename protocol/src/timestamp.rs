//! Event timestamps in every form the ingest contract accepts.
//!
//! - RFC 3339 (`2026-11-25T14:42:29Z`, `2026-11-25T22:42:29.250+08:00`)
//! - `YYYY-MM-DD HH:MM:SS`, taken as UTC
//! - Unix seconds or milliseconds, as a JSON number or a string of digits. A value of
//!   10^11 or more is milliseconds (10^11 seconds lies in the year 5138).
//!
//! Every form yields milliseconds since the epoch, within [`MIN_MS`, `MAX_MS`).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// 2000-01-01T00:00:00Z: earlier timestamps are refused as implausible.
pub const MIN_MS: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z: later timestamps are refused as implausible.
pub const MAX_MS: i64 = 4_102_444_800_000;

const SECONDS_OR_MILLIS: i64 = 100_000_000_000;

/// Why a timestamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampError {
    /// Not in any accepted form.
    Format,
    /// Well-formed but before 2000 or from 2100 on.
    OutOfRange,
}

fn in_range(ms: i64) -> Result<i64, TimestampError> {
    if (MIN_MS..MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(TimestampError::OutOfRange)
    }
}

/// Interprets an integer as Unix seconds or milliseconds.
pub fn from_unix_int(v: i64) -> Result<i64, TimestampError> {
    if v.unsigned_abs() >= SECONDS_OR_MILLIS as u64 {
        in_range(v)
    } else {
        in_range(v.saturating_mul(1000))
    }
}

/// Interprets a float as Unix seconds (with a fraction) or milliseconds.
pub fn from_unix_float(v: f64) -> Result<i64, TimestampError> {
    if !v.is_finite() {
        return Err(TimestampError::Format);
    }
    let ms = if v.abs() >= SECONDS_OR_MILLIS as f64 { v } else { v * 1000.0 };
    if ms < MIN_MS as f64 || ms >= MAX_MS as f64 {
        return Err(TimestampError::OutOfRange);
    }
    Ok(ms.round() as i64)
}

/// Parses a timestamp given as a JSON string.
pub fn parse_str(s: &str) -> Result<i64, TimestampError> {
    let b = s.as_bytes();
    if !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit) {
        let v: i64 = s.parse().map_err(|_| TimestampError::Format)?;
        return from_unix_int(v);
    }
    let mut utc = [0u8; 20];
    let s = match (b.len(), b.get(10)) {
        // Read as the RFC 3339 time it stands for (`T` for the space, `Z` appended), so
        // both forms agree on every value, second 60 included.
        (19, Some(&b' ')) => {
            utc[..19].copy_from_slice(b);
            utc[10] = b'T';
            utc[19] = b'Z';
            std::str::from_utf8(&utc).map_err(|_| TimestampError::Format)?
        }
        _ => s,
    };
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimestampError::Format)?;
    in_range(millis(t))
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-25T14:42:29Z, checked with `date -u -d @1795617749`.
    const S: i64 = 1_795_617_749;

    #[test]
    fn every_accepted_form_gives_the_same_instant() {
        let want = Ok(S * 1000);
        assert_eq!(parse_str("2026-11-25T14:42:29Z"), want);
        assert_eq!(parse_str("2026-11-25T22:42:29+08:00"), want);
        assert_eq!(parse_str("2026-11-25 14:42:29"), want);
        assert_eq!(parse_str("1795617749"), want);
        assert_eq!(parse_str("1795617749000"), want);
        assert_eq!(from_unix_int(S), want);
        assert_eq!(from_unix_int(S * 1000), want);
        assert_eq!(from_unix_float(S as f64), want);
    }

    #[test]
    fn fractions_are_kept_to_the_millisecond() {
        assert_eq!(parse_str("2026-11-25T14:42:29.250Z"), Ok(S * 1000 + 250));
        assert_eq!(from_unix_float(S as f64 + 0.5), Ok(S * 1000 + 500));
    }

    #[test]
    fn low_leap_second_is_read_the_same_in_both_forms() {
        // RFC 3339 allows second 60 at the end of a month (UTC); both forms read it as
        // the last millisecond of the minute (as the time crate does for RFC 3339), and
        // both refuse it elsewhere, so one form is never refused where the other is not.
        let want = Ok(1_798_761_599_999);
        assert_eq!(parse_str("2026-12-31T23:59:60Z"), want);
        assert_eq!(parse_str("2026-12-31 23:59:60"), want);
        assert_eq!(parse_str("2026-11-25 14:42:60"), parse_str("2026-11-25T14:42:60Z"));
        assert_eq!(parse_str("2026-11-25 14:42:61"), Err(TimestampError::Format));
        assert_eq!(parse_str("2026-11-25T14:42:61Z"), Err(TimestampError::Format));
    }

    #[test]
    fn malformed_and_implausible_are_refused() {
        assert_eq!(parse_str(""), Err(TimestampError::Format));
        assert_eq!(parse_str("yesterday"), Err(TimestampError::Format));
        assert_eq!(parse_str("2026-13-01 00:00:00"), Err(TimestampError::Format));
        assert_eq!(parse_str("2026-11-25T14:42:29"), Err(TimestampError::Format));
        assert_eq!(parse_str("12"), Err(TimestampError::OutOfRange));
        assert_eq!(from_unix_int(-5), Err(TimestampError::OutOfRange));
        assert_eq!(parse_str("2100-01-01T00:00:00Z"), Err(TimestampError::OutOfRange));
        assert_eq!(from_unix_float(f64::NAN), Err(TimestampError::Format));
    }
}
