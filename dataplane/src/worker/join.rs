//! One table's two streams read together on a worker shard.
//!
//! `analytics:events` and `analytics:custom` (or one partition of each) both fill
//! `analytics.events`. Read by two consumers, they made two inserts per interval into one
//! table, each a part for ClickHouse to write and merge, with its `user_days` and view
//! parts. So the events consumer reads the new entries of both streams in one
//! `XREADGROUP` and inserts them together; each entry is acknowledged (or dead-lettered)
//! on its own stream. The custom stream's consumer keeps what only its stream's pending
//! list can do: after a start it recovers what is pending there, and it claims entries
//! idle there (other shards', and its own after a read or claim whose reply was lost),
//! trying alone those delivered too often. Both read and claim under the shard's one
//! consumer name, so a crash leaves every entry in that name's pending lists, as before.

use std::cell::Cell;
use std::rc::Rc;

use croupier_protocol::stream::StreamKind;

/// How a consumer shares its table with the other consumer of that table on its shard.
#[derive(Debug, Clone)]
pub enum Join {
    /// Alone with its table (payments).
    Alone,
    /// Also reads the new entries of `key`, stream `stream`, once `recovered` is set (the
    /// other consumer recovered its pending list: an entry read now is not also taken for
    /// one left by a stopped consumer).
    Reads {
        /// The other stream.
        stream: StreamKind,
        /// Its key (or its partition's).
        key: String,
        /// Set by the other consumer once its recovery after the start is done.
        recovered: Rc<Cell<bool>>,
    },
    /// Its new entries are read by the other consumer: this one recovers its pending list
    /// after the start (then sets `recovered`), claims idle entries and tries entries alone.
    ReadBy {
        /// Set once the recovery after the start is done.
        recovered: Rc<Cell<bool>>,
    },
}

impl Join {
    /// The join of one partition's consumers of `stream`; `custom_key` is the key of that
    /// partition's custom stream, `recovered` shared by the partition's two event streams.
    pub fn of(stream: StreamKind, custom_key: &str, recovered: &Rc<Cell<bool>>) -> Join {
        match stream {
            StreamKind::Events => {
                Join::Reads { stream: StreamKind::Custom, key: custom_key.to_owned(), recovered: recovered.clone() }
            }
            StreamKind::Custom => Join::ReadBy { recovered: recovered.clone() },
            StreamKind::Payments => Join::Alone,
        }
    }

    /// Whether this consumer reads its own stream's new entries.
    pub fn reads_new(&self) -> bool {
        !matches!(self, Join::ReadBy { .. })
    }

    /// The other stream and its key, when this consumer reads it now.
    pub fn reading(&self) -> Option<(StreamKind, &str)> {
        match self {
            Join::Reads { stream, key, recovered } if recovered.get() => Some((*stream, key.as_str())),
            _ => None,
        }
    }

    /// The other stream's key, when this consumer reads it (entries of it in hand are
    /// acknowledged there).
    pub fn key_of(&self, stream: StreamKind) -> Option<&str> {
        match self {
            Join::Reads { stream: s, key, .. } if *s == stream => Some(key.as_str()),
            _ => None,
        }
    }

    /// After the start, this consumer's recovery is done (the other may read its stream).
    pub fn recovered(&self) {
        if let Join::ReadBy { recovered } = self {
            recovered.set(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_consumer_reads_custom_only_once_its_consumer_recovered() {
        let recovered = Rc::new(Cell::new(false));
        let events = Join::of(StreamKind::Events, "analytics:custom", &recovered);
        let custom = Join::of(StreamKind::Custom, "analytics:custom", &recovered);
        let payments = Join::of(StreamKind::Payments, "analytics:custom", &recovered);
        assert!(events.reads_new() && !custom.reads_new() && payments.reads_new());
        assert_eq!(events.reading(), None);
        events.recovered();
        payments.recovered();
        assert_eq!(events.reading(), None, "only the custom consumer's recovery counts");
        custom.recovered();
        assert_eq!(events.reading(), Some((StreamKind::Custom, "analytics:custom")));
        assert_eq!(events.key_of(StreamKind::Custom), Some("analytics:custom"));
        assert_eq!(events.key_of(StreamKind::Payments), None);
        assert_eq!(custom.reading(), None);
        assert_eq!(payments.key_of(StreamKind::Custom), None);
    }
}
