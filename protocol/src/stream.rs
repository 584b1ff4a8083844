//! Stream names and routing of records to streams.

/// The consumer group every worker joins (Croupier's name).
pub const CONSUMER_GROUP: &str = "analytics-workers";

/// Hash of the mean events per batch entry of each stream (field: the stream key), kept
/// over the recent entries of every shard: each shard merges its appends into it once per
/// backlog reading ([`MERGE_MEANS_SCRIPT`], which also keeps the sums it is the ratio of).
pub const ENTRY_EVENTS: &str = "croupier:entry-events";

/// Entries over which [`ENTRY_EVENTS`] settles at the least (at high rates it covers a
/// window of time: [`MERGE_MEANS_SCRIPT`]): each append moves the mean by about
/// 1/`ENTRY_EVENTS_WINDOW` of its difference to the entry's count.
pub const ENTRY_EVENTS_WINDOW: u32 = 64;

/// The largest mean events per entry believed ([`entry_mean`]); a stored mean above it (or
/// not a number, or not finite) is a damaged key, and the script that keeps the means
/// starts again from the next entries.
pub const MAX_ENTRY_MEAN: f64 = 1_000_000.0;

/// A mean events per entry as stored in [`ENTRY_EVENTS`]: at least 1; `None` when it is
/// not a number, not finite or above [`MAX_ENTRY_MEAN`].
pub fn entry_mean(stored: &[u8]) -> Option<f64> {
    let m = std::str::from_utf8(stored).ok()?.trim().parse::<f64>().ok()?;
    (m.is_finite() && m <= MAX_ENTRY_MEAN).then_some(m.max(1.0))
}

/// The script that unlinks `KEYS[1]` (the [`ENTRY_EVENTS`] hash) when it holds another type
/// (nothing of Croupier's writes one): 1 when it did, else 0. One script, so that a hash
/// made again in between is never deleted.
pub const DROP_DAMAGED_MEANS_SCRIPT: &str = "\
local t = redis.call('TYPE', KEYS[1]).ok \
if t ~= 'hash' and t ~= 'none' then return redis.call('UNLINK', KEYS[1]) end \
return 0";

/// The script that merges one shard's appends since its last merge into each stream's
/// mean events per entry (`KEYS[1]`: the [`ENTRY_EVENTS`] hash; `ARGV[1]`: the window in
/// milliseconds, then stream, entries, events, ...). The hash keeps, per stream, decayed
/// sums of entries and events (fields `<stream>:entries`, `<stream>:events`, and
/// `<stream>:at`, Redis's time of the last merge) and their ratio, the mean (field
/// `<stream>`, what [`entry_mean`] reads). A merge of `k` entries of `n` events in all
/// keeps of the sums the larger of two weights, in entries, then adds `k` and `n`: what the
/// window of time keeps, `entries · e^(-t/window)` with `t` the time since the last merge
/// of any shard, and what an average over the last [`ENTRY_EVENTS_WINDOW`] entries keeps,
/// `min(entries, 64) · (63/64)^k` (the weight of the old mean after `k` appends that each
/// move it by 1/64 of the difference); the events are kept in proportion. At high rates
/// each shard merges hundreds of entries at a time, and weighed by entries alone each merge
/// would leave only the merging shard's mean: the time keeps every shard's of the last
/// window. At low rates the entries keep the last 64, as long ago as they were. Sums that
/// are not numbers, not finite, out of bounds (a mean below 1 or above [`MAX_ENTRY_MEAN`])
/// or more than a minute ahead of Redis's clock start again (a clock a little behind, say
/// after a failover, counts as no time passed). Run once per reading, not per request.
pub const MERGE_MEANS_SCRIPT: &str = "\
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
local window = tonumber(ARGV[1]) \
for i = 2, #ARGV, 3 do \
local s, k, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]) \
local v = redis.call('HMGET', KEYS[1], s .. ':entries', s .. ':events', s .. ':at') \
local ke, ne, at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]) \
if ke and ne and at and ke > 0 and ke < 1e15 and ne >= ke and ne <= ke * 1000000 and at <= now + 60000 then \
local kept = math.max(ke * math.exp(math.min(0, at - now) / window), math.min(ke, 64) * (63 / 64) ^ k) \
k, n = kept + k, ne * kept / ke + n \
end \
redis.call('HSET', KEYS[1], s, tostring(n / k), s .. ':entries', tostring(k), s .. ':events', tostring(n), s .. ':at', tostring(now)) \
end \
return 1";

const _: () = assert!(ENTRY_EVENTS_WINDOW == 64, "the script's window");

/// One stream's appends since the last merge, for [`merge_means`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended<'a> {
    /// The stream key.
    pub stream: &'a str,
    /// Entries appended (at least one).
    pub entries: u64,
    /// Events in them.
    pub events: u64,
}

/// The command that merges `appended` into the means kept in the hash `entry_events`
/// over the last `window_ms` ([`MERGE_MEANS_SCRIPT`]).
pub fn merge_means(out: &mut Vec<u8>, entry_events: &str, window_ms: u64, appended: &[Appended<'_>]) {
    let window = window_ms.max(1).to_string();
    let counts: Vec<[String; 2]> = appended.iter().map(|a| [a.entries.to_string(), a.events.to_string()]).collect();
    let mut args: Vec<&[u8]> = Vec::with_capacity(5 + 3 * appended.len());
    args.extend([b"EVAL".as_slice(), MERGE_MEANS_SCRIPT.as_bytes(), b"1", entry_events.as_bytes(), window.as_bytes()]);
    for (a, [k, n]) in appended.iter().zip(&counts) {
        args.extend([a.stream.as_bytes(), k.as_bytes(), n.as_bytes()]);
    }
    crate::resp::command(out, &args);
}

/// A stream entry id, `<ms>-<seq>`; ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `<ms>-<seq>` (or `<ms>`, sequence 0).
    pub fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(StreamId { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }

    /// The smallest id after this one (a range that starts past it: Redis before 6.2 has
    /// no exclusive `(` bound); `None` after the last id there is.
    pub fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { seq, ..self }),
            None => Some(StreamId { ms: self.ms.checked_add(1)?, seq: 0 }),
        }
    }

    /// Writes `<ms>-<seq>` into `out` (cleared first).
    pub fn write_to(self, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        let _ = write!(out, "{}-{}", self.ms, self.seq);
    }
}

/// One of the three analytics streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `analytics:events`: events of the standard game taxonomy.
    Events,
    /// `analytics:custom`: every other event name.
    Custom,
    /// `analytics:payments`.
    Payments,
}

impl StreamKind {
    /// All streams, in a fixed order (used to index per-stream state).
    pub const ALL: [StreamKind; 3] = [StreamKind::Events, StreamKind::Custom, StreamKind::Payments];

    /// The Redis key of the stream.
    pub fn key(self) -> &'static str {
        match self {
            StreamKind::Events => "analytics:events",
            StreamKind::Custom => "analytics:custom",
            StreamKind::Payments => "analytics:payments",
        }
    }

    /// Position in [`StreamKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            StreamKind::Events => 0,
            StreamKind::Custom => 1,
            StreamKind::Payments => 2,
        }
    }

    /// Short label for metrics and config (`events`, `custom`, `payments`).
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Events => "events",
            StreamKind::Custom => "custom",
            StreamKind::Payments => "payments",
        }
    }
}

/// Event names of the standard game taxonomy, including the dotted aliases.
const STANDARD_EVENTS: &[&str] = &[
    "login",
    "register",
    "session_start",
    "session_end",
    "heartbeat",
    "level_start",
    "level_complete",
    "level_fail",
    "purchase",
    "ad_impression",
    "economy_earn",
    "economy_spend",
    "social_share",
    "error",
    "user.login",
    "user.register",
    "session.start",
    "session.end",
    "session.heartbeat",
    "level.start",
    "level.complete",
    "level.fail",
    "payment.purchase",
    "ad.impression",
    "economy.earn",
    "economy.spend",
    "social.share",
];

/// Whether `name` belongs to the standard game taxonomy.
pub fn is_standard_event(name: &str) -> bool {
    STANDARD_EVENTS.contains(&name)
}

/// The stream an event with this name goes to.
pub fn route_event(name: &str) -> StreamKind {
    if is_standard_event(name) {
        StreamKind::Events
    } else {
        StreamKind::Custom
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_means_are_believed_within_bounds() {
        assert_eq!(super::entry_mean(b"7.5"), Some(7.5));
        assert_eq!(super::entry_mean(b"0.2"), Some(1.0));
        assert_eq!(super::entry_mean(b"-5"), Some(1.0));
        for bad in [&b"nan"[..], b"inf", b"-inf", b"1e308", b"1000001", b"abc", b"", b"\xff"] {
            assert_eq!(super::entry_mean(bad), None, "{bad:?}");
        }
        assert_eq!(super::entry_mean(b"1000000"), Some(super::MAX_ENTRY_MEAN));
        // The script that keeps the means starts again above the same upper bound (and
        // below 1, where these readers count 1).
        let script = MERGE_MEANS_SCRIPT;
        assert!(script.contains("ne >= ke and ne <= ke * 1000000 "), "{script}");
    }

    use super::*;

    #[test]
    fn the_id_after_an_id() {
        let after = |t: &str| {
            StreamId::parse(t.as_bytes()).and_then(StreamId::next).map(|id| {
                let mut out = String::new();
                id.write_to(&mut out);
                out
            })
        };
        assert_eq!(after("5-0").as_deref(), Some("5-1"));
        assert_eq!(after("1700000000000-41").as_deref(), Some("1700000000000-42"));
        assert_eq!(after(&format!("7-{}", u64::MAX)).as_deref(), Some("8-0"));
        assert_eq!(after(&format!("{}-{}", u64::MAX, u64::MAX)), None);
        assert_eq!(after("x"), None);
        assert_eq!(after("5-x"), None);
    }

    #[test]
    fn stream_ids_parse_and_order() {
        let a = StreamId::parse(b"1796196221695-0").expect("id");
        let b = StreamId::parse(b"1796196221695-3").expect("id");
        assert!(a < b && StreamId::ZERO < a);
        assert_eq!(StreamId::parse(b"7"), Some(StreamId { ms: 7, seq: 0 }));
        assert_eq!(StreamId::parse(b"x-1"), None);
        let mut s = String::new();
        b.write_to(&mut s);
        assert_eq!(s, "1796196221695-3");
    }

    #[test]
    fn standard_names_and_aliases_go_to_events() {
        for name in ["login", "level_complete", "session.start", "user.login", "error"] {
            assert_eq!(route_event(name), StreamKind::Events, "{name}");
        }
    }

    #[test]
    fn other_names_go_to_custom() {
        for name in ["boss_killed", "Login", "session.Start", "", "level_complete "] {
            assert_eq!(route_event(name), StreamKind::Custom, "{name:?}");
        }
    }

    #[test]
    fn merge_means_sends_counts_only() {
        let mut out = Vec::new();
        merge_means(&mut out, "ee", 2000, &[Appended { stream: "s", entries: 3, events: 12 }]);
        let mut want = Vec::new();
        let script = MERGE_MEANS_SCRIPT.as_bytes();
        crate::resp::command(&mut want, &[b"EVAL", script, b"1", b"ee", b"2000", b"s", b"3", b"12"]);
        assert_eq!(out, want);
    }
}
