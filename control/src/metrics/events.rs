//! What the data plane counts, one type per thing counted: a shard builds the event
//! where it happens and emits it through its [`super::ShardWriter`], which adds it to
//! the shard's own counters (nothing when metrics are disabled).

use std::time::Duration;

use croupier_protocol::stream::StreamKind;

use super::cells::Cells;
use super::histogram::{DELAY_SECONDS, INSERT_SECONDS, REQUEST_SECONDS, TRANSACTION_REQUESTS};
use super::labels::{reason_index, DeadReason, Table};
use super::registry::{observe, GameIx, Layout, RouteIx};

/// Something counted.
pub trait Event {
    /// Adds the event to a shard's counters.
    fn record(self, layout: &Layout, cells: &Cells);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The data port answered a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestServed {
    /// The route it matched.
    pub route: RouteIx,
    /// The status of the response.
    pub status: u16,
    /// From its head's arrival to the response made (counted before it is written).
    pub duration: Duration,
}

impl Event for RequestServed {
    #[inline]
    fn record(self, l: &Layout, c: &Cells) {
        c.add(l.request(self.route, self.status), 1);
        observe(c, l.request_seconds(self.route), &REQUEST_SECONDS, nanos(self.duration), 1);
    }
}

/// Events of a game were appended to a stream and acknowledged (202).
#[derive(Debug, Clone, Copy)]
pub struct EventsAccepted {
    /// The game.
    pub game: GameIx,
    /// The stream.
    pub stream: StreamKind,
    /// Events (records).
    pub count: u64,
}

impl Event for EventsAccepted {
    #[inline]
    fn record(self, l: &Layout, c: &Cells) {
        c.add(l.accepted(self.game, self.stream), self.count);
    }
}

/// An ingest Redis transaction was sent: the requests waiting at once on a partition
/// share one (`redis.ingest_group_max` at most).
#[derive(Debug, Clone, Copy)]
pub struct IngestTransactionSent {
    /// The requests it carries.
    pub requests: u64,
}

impl Event for IngestTransactionSent {
    #[inline]
    fn record(self, l: &Layout, c: &Cells) {
        observe(c, l.transaction_requests, &TRANSACTION_REQUESTS, self.requests, 1);
    }
}

/// A batch was refused.
#[derive(Debug, Clone, Copy)]
pub struct EventsRefused<'a> {
    /// The game its credentials named (the unknown game when none or not configured).
    pub game: GameIx,
    /// The error tag.
    pub reason: &'a str,
    /// Its records, when they were counted; else 1.
    pub count: u64,
}

impl Event for EventsRefused<'_> {
    fn record(self, l: &Layout, c: &Cells) {
        c.add(l.refused(self.game, reason_index(self.reason)), self.count);
    }
}

/// ClickHouse confirmed an insert.
#[derive(Debug, Clone, Copy)]
pub struct RowsInserted {
    /// The table.
    pub table: Table,
    /// Rows inserted.
    pub rows: u64,
    /// From the query sent to ClickHouse's end of stream.
    pub duration: Duration,
}

impl Event for RowsInserted {
    #[inline]
    fn record(self, l: &Layout, c: &Cells) {
        c.add(l.rows(self.table), self.rows);
        observe(c, l.insert_seconds(self.table), &INSERT_SECONDS, nanos(self.duration), 1);
    }
}

/// Inserted events waited this long since ingest accepted them.
#[derive(Debug, Clone, Copy)]
pub struct EventsDelayed {
    /// The table they were inserted into.
    pub table: Table,
    /// Milliseconds from acceptance to the insert's confirmation (0 if the clocks say
    /// it was earlier).
    pub delay_ms: u64,
    /// How many events waited that long (one batch entry's events).
    pub count: u64,
}

impl Event for EventsDelayed {
    #[inline]
    fn record(self, l: &Layout, c: &Cells) {
        observe(c, l.delay(self.table), &DELAY_SECONDS, self.delay_ms, self.count);
    }
}

/// An insert attempt failed.
#[derive(Debug, Clone, Copy)]
pub struct InsertFailed {
    /// The table.
    pub table: Table,
}

impl Event for InsertFailed {
    fn record(self, l: &Layout, c: &Cells) {
        c.add(l.insert_failures(self.table), 1);
    }
}

/// An entry was moved to its stream's dead-letter stream.
#[derive(Debug, Clone, Copy)]
pub struct DeadLettered {
    /// The stream it came from.
    pub stream: StreamKind,
    /// Why.
    pub reason: DeadReason,
}

impl Event for DeadLettered {
    fn record(self, l: &Layout, c: &Cells) {
        c.add(l.dead(self.stream, self.reason), 1);
    }
}
