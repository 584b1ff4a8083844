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
//! ([`Shared`]).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

use croupier_protocol::stream::StreamKind;

/// What a partition's events and custom consumers on one shard share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The custom consumer's recovery after the start is done: the events consumer may
    /// read custom entries (one read now is not also taken for one left by a stopped
    /// consumer).
    recovered: Cell<bool>,
    /// The IDs of the custom entries the events consumer has in hand (read, not yet
    /// acknowledged): a claim of the custom stream on the same shard takes them too once
    /// they are idle, and must not insert them a second time.
    in_hand: RefCell<HashSet<String>>,
    /// While a claim of the custom stream is out (`Some`): the IDs the events consumer
    /// acknowledged meanwhile. Held when the claim ran, gone from the pending list when
    /// its reply is read: the claim's reply may still hold them, and they are inserted.
    released_during_claim: RefCell<Option<HashSet<String>>>,
}

/// How a consumer shares its table with the other consumer of that table on its shard.
#[derive(Debug, Clone)]
pub enum Join {
    /// Alone with its table (payments).
    Alone,
    /// Also reads the new entries of `key`, stream `stream`, once the other consumer
    /// recovered its pending list.
    Reads {
        /// The other stream.
        stream: StreamKind,
        /// Its key (or its partition's).
        key: String,
        /// Shared with the other consumer.
        shared: Rc<Shared>,
    },
    /// Its new entries are read by the other consumer: this one recovers its pending list
    /// after the start, claims idle entries and tries entries alone.
    ReadBy {
        /// Shared with the other consumer.
        shared: Rc<Shared>,
    },
}

impl Join {
    /// The join of one partition's consumer of `stream`; `custom_key` is the key of that
    /// partition's custom stream, `shared` the partition's (one per partition and shard).
    pub fn of(stream: StreamKind, custom_key: &str, shared: &Rc<Shared>) -> Join {
        let shared = shared.clone();
        match stream {
            StreamKind::Events => Join::Reads { stream: StreamKind::Custom, key: custom_key.to_owned(), shared },
            StreamKind::Custom => Join::ReadBy { shared },
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
            Join::Reads { stream, key, shared } if shared.recovered.get() => Some((*stream, key.as_str())),
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
        if let Join::ReadBy { shared } = self {
            shared.recovered.set(true);
        }
    }

    /// The reading consumer has entries `ids` of the other stream in hand.
    pub fn took<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        if let Join::Reads { shared, .. } = self {
            shared.in_hand.borrow_mut().extend(ids.map(str::to_owned));
        }
    }

    /// The reading consumer acknowledged entries `ids` of the other stream.
    pub fn released(&self, ids: &[&str]) {
        if let Join::Reads { shared, .. } = self {
            let mut set = shared.in_hand.borrow_mut();
            let mut during = shared.released_during_claim.borrow_mut();
            for id in ids {
                set.remove(*id);
                if let Some(d) = during.as_mut() {
                    d.insert((*id).to_owned());
                }
            }
        }
    }

    /// The reading consumer let go of entries `ids` of the other stream without
    /// acknowledging them (a failed read cut its batch short): still pending, held by
    /// nobody — a claim out now, whose reply holds them, takes them (taken for
    /// acknowledged, they would be given back and wait another `claim_idle`).
    pub fn let_go(&self, ids: &[&str]) {
        if let Join::Reads { shared, .. } = self {
            let mut set = shared.in_hand.borrow_mut();
            for id in ids {
                set.remove(*id);
            }
        }
    }

    /// Whether this consumer's entry `id` is in the other consumer's hands (read with its
    /// own stream, not yet acknowledged), or was acknowledged by it since
    /// [`Join::claim_sent`].
    pub fn held_by_reader(&self, id: &str) -> bool {
        match self {
            Join::ReadBy { shared } => {
                shared.in_hand.borrow().contains(id)
                    || shared.released_during_claim.borrow().as_ref().is_some_and(|d| d.contains(id))
            }
            _ => false,
        }
    }

    /// This consumer sends a claim: what the reader acknowledges until
    /// [`Join::claim_read`] is kept, for [`Join::held_by_reader`].
    pub fn claim_sent(&self) {
        if let Join::ReadBy { shared } = self {
            *shared.released_during_claim.borrow_mut() = Some(HashSet::new());
        }
    }

    /// The claim's reply was read and its entries sorted: no more need of what was kept.
    pub fn claim_read(&self) {
        if let Join::ReadBy { shared } = self {
            *shared.released_during_claim.borrow_mut() = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> [Join; 3] {
        let shared = Rc::new(Shared::default());
        StreamKind::ALL.map(|k| Join::of(k, "analytics:custom", &shared))
    }

    #[test]
    fn the_events_consumer_reads_custom_only_once_its_consumer_recovered() {
        let [events, custom, payments] = partition();
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

    #[test]
    fn entries_acknowledged_while_a_claim_is_out_count_as_held_until_its_reply_is_read() {
        let [events, custom, _] = partition();
        events.took(["1-0", "2-0"].into_iter());
        events.released(&["1-0"]);
        assert!(!custom.held_by_reader("1-0"), "acknowledged before the claim");
        custom.claim_sent();
        events.released(&["2-0"]);
        assert!(custom.held_by_reader("2-0"), "acknowledged while the claim was out");
        custom.claim_read();
        assert!(!custom.held_by_reader("2-0"));
    }

    #[test]
    fn entries_let_go_while_a_claim_is_out_are_the_claims() {
        let [events, custom, _] = partition();
        events.took(["1-0", "2-0"].into_iter());
        custom.claim_sent();
        events.let_go(&["1-0"]);
        events.released(&["2-0"]);
        assert!(!custom.held_by_reader("1-0"), "let go unacknowledged: nobody holds it");
        assert!(custom.held_by_reader("2-0"), "acknowledged while the claim was out");
    }

    #[test]
    fn entries_read_by_one_are_in_hand_for_the_other_until_acknowledged() {
        let [events, custom, payments] = partition();
        events.took(["1-0", "2-0"].into_iter());
        assert!(custom.held_by_reader("1-0") && custom.held_by_reader("2-0") && !custom.held_by_reader("3-0"));
        // Only the custom consumer asks: an events entry of the same ID is another entry.
        assert!(!events.held_by_reader("1-0") && !payments.held_by_reader("1-0"));
        events.released(&["1-0"]);
        assert!(!custom.held_by_reader("1-0") && custom.held_by_reader("2-0"));
    }
}
