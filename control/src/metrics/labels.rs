//! The label values of the metrics: every set is bounded and fixed at start, so a label
//! is an index into a shard's counters and no request can create a series.

use croupier_protocol::stream::StreamKind;

/// Label of a stream: the part of its key after `analytics:`.
pub fn stream(s: StreamKind) -> &'static str {
    match s {
        StreamKind::Events => "events",
        StreamKind::Custom => "custom",
        StreamKind::Payments => "payments",
    }
}

/// HTTP statuses counted: every code from 100 to 599 has its counter.
pub const STATUS_MIN: u16 = 100;
/// One past the last status counted.
pub const STATUS_END: u16 = 600;
/// Number of status counters.
pub const STATUSES: usize = (STATUS_END - STATUS_MIN) as usize;

/// Index of `status` among the counted ones (a code outside 100-599 counts as 500).
#[inline]
pub fn status_index(status: u16) -> usize {
    let s = if (STATUS_MIN..STATUS_END).contains(&status) { status } else { 500 };
    usize::from(s - STATUS_MIN)
}

/// Refusal reasons: the error tags of the ingest API (README, "Ingest API"). A tag not in
/// this list (one added later and not here yet) counts as `other`.
pub const REASONS: [&str; 33] = [
    "malformed_json",
    "invalid_utf8",
    "too_deep",
    "invalid_batch",
    "invalid_field",
    "game_mismatch",
    "not_allowed",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "payload_too_large",
    "unsupported_media_type",
    "missing_credentials",
    "bad_token",
    "unknown_key",
    "revoked_key",
    "origin_not_allowed",
    "game_not_allowed",
    "payments_not_allowed",
    "missing_permission",
    "unknown_game",
    "stale_timestamp",
    "bad_signature",
    "replayed_nonce",
    "rate_limited",
    "redis_unavailable",
    "not_replicated",
    "request_in_flight",
    "backlog_full",
    "encode_failed",
    "server_busy",
    "other",
];

/// Index of the error tag `tag` in [`REASONS`].
pub fn reason_index(tag: &str) -> usize {
    REASONS.iter().position(|r| *r == tag).unwrap_or(REASONS.len() - 1)
}

/// The game label of a request whose `X-Game-Id` names no configured game (or none).
pub const UNKNOWN_GAME: &str = "(unknown)";

/// A ClickHouse table the workers insert into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `analytics.events` (from `analytics:events` and `analytics:custom`).
    Events,
    /// `analytics.payments`.
    Payments,
}

impl Table {
    /// Both tables, in index order.
    pub const ALL: [Table; 2] = [Table::Events, Table::Payments];

    /// The table a stream's entries go to.
    pub fn of(s: StreamKind) -> Table {
        match s {
            StreamKind::Events | StreamKind::Custom => Table::Events,
            StreamKind::Payments => Table::Payments,
        }
    }

    /// Label value: the table's name in database `analytics`.
    pub fn label(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Payments => "payments",
        }
    }

    /// Position in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why an entry went to its stream's dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Delivered `worker.max_deliveries` times without being acknowledged.
    MaxDeliveries,
    /// Deleted from the stream while pending (only its id is known).
    Deleted,
    /// Not a batch the worker can read (another producer's entry, or damaged).
    Undecodable,
    /// Refused by ClickHouse, alone (the batch was split until it was found).
    Rejected,
}

impl DeadReason {
    /// All reasons, in index order.
    pub const ALL: [DeadReason; 4] =
        [DeadReason::MaxDeliveries, DeadReason::Deleted, DeadReason::Undecodable, DeadReason::Rejected];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveries => "max_deliveries",
            DeadReason::Deleted => "deleted",
            DeadReason::Undecodable => "undecodable",
            DeadReason::Rejected => "rejected",
        }
    }

    /// Position in [`DeadReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_in_range() {
        assert_eq!(status_index(100), 0);
        assert_eq!(status_index(599), STATUSES - 1);
        assert_eq!(status_index(0), status_index(500));
        assert_eq!(status_index(777), status_index(500));
        assert_eq!(REASONS[reason_index("backlog_full")], "backlog_full");
        assert_eq!(REASONS[reason_index("something_new")], "other");
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
        for (i, r) in DeadReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
