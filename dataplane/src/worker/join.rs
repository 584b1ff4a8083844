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
//! consumer name, so a crash leaves every entry in that name's pending lists, as before;
//! and so the custom consumer's claims can meet custom entries the events consumer has in
//! hand (idle while its inserts fail): those it leaves to the events consumer
//! ([`InHand`]).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

use croupier_protocol::stream::StreamKind;

/// The IDs of the custom entries the events consumer has in hand (read, not yet
/// acknowledged): a claim of the custom stream on the same shard takes them too once they
/// are idle, and must not insert them a second time.
#[derive(Debug, Clone, Default)]
pub struct InHand(Rc<RefCell<HashSet<String>>>);

impl InHand {
    /// Entries `ids` were read.
    pub fn add<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        self.0.borrow_mut().extend(ids.map(str::to_owned));
    }

    /// Entries `ids` were acknowledged.
    pub fn remove(&self, ids: &[&str]) {
        let mut set = self.0.borrow_mut();
        for id in ids {
            set.remove(*id);
        }
    }

    /// Whether entry `id` is in hand.
    pub fn holds(&self, id: &str) -> bool {
        self.0.borrow().contains(id)
    }
}

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
        /// The other stream's entries in this consumer's hands.
        in_hand: InHand,
    },
    /// Its new entries are read by the other consumer: this one recovers its pending list
    /// after the start (then sets `recovered`), claims idle entries and tries entries alone.
    ReadBy {
        /// Set once the recovery after the start is done.
        recovered: Rc<Cell<bool>>,
        /// This stream's entries in the other consumer's hands.
        in_hand: InHand,
    },
}

impl Join {
    /// The join of one partition's consumers of `stream`; `custom_key` is the key of that
    /// partition's custom stream; `recovered` and `in_hand` are shared by the partition's
    /// two event streams.
    pub fn of(stream: StreamKind, custom_key: &str, recovered: &Rc<Cell<bool>>, in_hand: &InHand) -> Join {
        let (recovered, in_hand) = (recovered.clone(), in_hand.clone());
        match stream {
            StreamKind::Events => {
                Join::Reads { stream: StreamKind::Custom, key: custom_key.to_owned(), recovered, in_hand }
            }
            StreamKind::Custom => Join::ReadBy { recovered, in_hand },
            StreamKind::Payments => Join::Alone,
        }
    }

    /// The custom entries the events consumer has in hand (none: not joined).
    pub fn in_hand(&self) -> Option<&InHand> {
        match self {
            Join::Reads { in_hand, .. } | Join::ReadBy { in_hand, .. } => Some(in_hand),
            Join::Alone => None,
        }
    }

    /// Whether this consumer reads its own stream's new entries.
    pub fn reads_new(&self) -> bool {
        !matches!(self, Join::ReadBy { .. })
    }

    /// The other stream and its key, when this consumer reads it now.
    pub fn reading(&self) -> Option<(StreamKind, &str)> {
        match self {
            Join::Reads { stream, key, recovered, .. } if recovered.get() => Some((*stream, key.as_str())),
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
        if let Join::ReadBy { recovered, .. } = self {
            recovered.set(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_consumer_reads_custom_only_once_its_consumer_recovered() {
        let (recovered, in_hand) = (Rc::new(Cell::new(false)), InHand::default());
        let events = Join::of(StreamKind::Events, "analytics:custom", &recovered, &in_hand);
        let custom = Join::of(StreamKind::Custom, "analytics:custom", &recovered, &in_hand);
        let payments = Join::of(StreamKind::Payments, "analytics:custom", &recovered, &in_hand);
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
        assert!(payments.in_hand().is_none());
    }

    #[test]
    fn entries_read_by_one_are_in_hand_for_the_other_until_acknowledged() {
        let (recovered, in_hand) = (Rc::new(Cell::new(true)), InHand::default());
        let events = Join::of(StreamKind::Events, "c", &recovered, &in_hand);
        let custom = Join::of(StreamKind::Custom, "c", &recovered, &in_hand);
        events.in_hand().expect("joined").add(["1-0", "2-0"].into_iter());
        let seen = custom.in_hand().expect("joined");
        assert!(seen.holds("1-0") && seen.holds("2-0") && !seen.holds("3-0"));
        events.in_hand().expect("joined").remove(&["1-0"]);
        assert!(!seen.holds("1-0") && seen.holds("2-0"));
    }
}
