//! The audit log: every Analytics API access (who, route, game, parameters, status,
//! duration, rows read) is queued in memory by the request and written to
//! `analytics.audit_log` in batches by a task of the control thread, never on the
//! request's path. At most `api.audit_max_pending` rows wait; past that the oldest are
//! dropped and counted in the log (an unreachable ClickHouse must not grow memory
//! without bound). Every text field of a row is cut to a bound ([`MAX_FIELD_BYTES`],
//! [`MAX_SCOPE_BYTES`]), so the bound in rows is one in bytes. Each row carries a sequence
//! number: a write removes exactly the rows it wrote, however many were dropped or queued
//! while it was in flight. Requests refused without a verified token are audited at most
//! [`MAX_ANONYMOUS_PER_SEC`] a second (the rest counted in the log): a flood of them must
//! not push the rows of real users out of the queue, nor fill ClickHouse's disk.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use croupier_protocol::clickhouse::block::{Column, ColumnData};

use crate::clickhouse::connection::{ChError, ChOptions, Connection};

/// One access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Unix seconds.
    pub time: u32,
    /// The token's `sub` (empty when it did not verify).
    pub user: String,
    /// Its roles, comma-separated.
    pub roles: String,
    /// The path.
    pub route: String,
    /// `game_id` read (empty: all or none).
    pub game_id: String,
    /// `env` read.
    pub env: String,
    /// The query parameters as a JSON object.
    pub params: String,
    /// The response's status.
    pub status: u16,
    /// Milliseconds from the request to the response.
    pub duration_ms: u32,
    /// Rows ClickHouse read for it.
    pub read_rows: u64,
}

/// The rows waiting to be written.
pub struct AuditLog {
    /// Rows with their sequence numbers, oldest first.
    pending: RefCell<VecDeque<(u64, AuditRow)>>,
    max_pending: usize,
    dropped: Cell<u64>,
    /// The next row's sequence number.
    next_seq: Cell<u64>,
    /// The sequence number of the last row of the write in flight.
    in_flight: Cell<Option<u64>>,
    /// Rows of the write in flight pushed out of the full queue meanwhile: written if the
    /// write succeeds, else counted dropped.
    dropped_in_flight: Cell<u64>,
    /// The second of the last anonymous row, and how many were queued in it.
    anonymous: Cell<(u32, u32)>,
    /// Anonymous rows not queued (past [`MAX_ANONYMOUS_PER_SEC`]) since last logged.
    anonymous_skipped: Cell<u64>,
}

/// Most rows a second of requests refused without a verified token.
pub const MAX_ANONYMOUS_PER_SEC: u32 = 10;

/// The statement the rows are inserted with.
const INSERT: &str =
    "INSERT INTO analytics.audit_log (time, user, roles, route, game_id, env, params, status, duration_ms, read_rows) VALUES";

impl AuditLog {
    /// An empty log holding at most `max_pending` rows.
    pub fn new(max_pending: usize) -> AuditLog {
        AuditLog {
            pending: RefCell::new(VecDeque::new()),
            max_pending: max_pending.max(1),
            dropped: Cell::new(0),
            next_seq: Cell::new(0),
            in_flight: Cell::new(None),
            dropped_in_flight: Cell::new(0),
            anonymous: Cell::new((0, 0)),
            anonymous_skipped: Cell::new(0),
        }
    }

    /// Queues the row of a request refused without a verified token, unless
    /// [`MAX_ANONYMOUS_PER_SEC`] were queued in its second already (then it is counted).
    pub fn record_anonymous(&self, row: AuditRow) {
        let (second, count) = self.anonymous.get();
        let count = if second == row.time { count } else { 0 };
        if count >= MAX_ANONYMOUS_PER_SEC {
            self.anonymous_skipped.set(self.anonymous_skipped.get() + 1);
            return;
        }
        self.anonymous.set((row.time, count + 1));
        self.record(row);
    }

    /// Queues a row (the oldest is dropped when full).
    pub fn record(&self, mut row: AuditRow) {
        // A row's size is bounded, so that the queue's bound in rows bounds its bytes
        // (every text comes from the request: a query string, or the scope from the query
        // or the `X-Game-ID`/`X-Env` headers, may be kilobytes).
        for field in [&mut row.params, &mut row.user, &mut row.roles, &mut row.route] {
            truncate(field, MAX_FIELD_BYTES);
        }
        for field in [&mut row.game_id, &mut row.env] {
            truncate(field, MAX_SCOPE_BYTES);
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let mut p = self.pending.borrow_mut();
        if p.len() >= self.max_pending {
            if let Some((old, _)) = p.pop_front() {
                if self.in_flight.get().is_some_and(|last| old <= last) {
                    self.dropped_in_flight.set(self.dropped_in_flight.get() + 1);
                } else {
                    self.dropped.set(self.dropped.get() + 1);
                }
            }
        }
        p.push_back((seq, row));
    }

    /// Rows waiting.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Rows dropped since the last call (the queue was full), and the count reset.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.replace(0)
    }

    /// Starts a write: a copy of the rows waiting and the sequence number of the last of
    /// them (`None`: none wait).
    fn begin(&self) -> Option<(Vec<AuditRow>, u64)> {
        let p = self.pending.borrow();
        let last = p.back().map(|(seq, _)| *seq)?;
        self.in_flight.set(Some(last));
        Some((p.iter().map(|(_, r)| r.clone()).collect(), last))
    }

    /// Ends the write begun with [`AuditLog::begin`]: when it succeeded, removes the rows
    /// it wrote, those numbered up to `last` (rows queued since stay); when it failed,
    /// counts as dropped the rows of it the full queue pushed out meanwhile (the others
    /// stay queued). Returns the rows removed.
    fn end(&self, last: u64, written: bool) -> usize {
        self.in_flight.set(None);
        let pushed_out = self.dropped_in_flight.replace(0);
        if !written {
            self.dropped.set(self.dropped.get() + pushed_out);
            return 0;
        }
        let mut p = self.pending.borrow_mut();
        let n = p.iter().take_while(|(seq, _)| *seq <= last).count();
        p.drain(..n);
        n
    }

    /// Writes what is pending in one insert; on failure the rows stay queued.
    pub async fn flush(&self, conn: &mut Option<Connection>, opts: &ChOptions) -> Result<usize, ChError> {
        let Some((rows, last)) = self.begin() else { return Ok(0) };
        let result = insert(conn, opts, &rows).await;
        let removed = self.end(last, result.is_ok());
        if let Err(e) = result {
            *conn = None;
            return Err(e);
        }
        Ok(removed)
    }

    /// Flushes every `every` until `stop` is set, then once more.
    pub async fn run(self: Rc<Self>, opts: ChOptions, every: Duration, stop: Rc<Cell<bool>>) {
        let mut conn = None;
        loop {
            monoio::time::sleep(every).await;
            let last = stop.get();
            if let Err(e) = self.flush(&mut conn, &opts).await {
                tracing::warn!(error = %e, pending = self.pending(), "audit log not written yet");
            }
            let dropped = self.take_dropped();
            if dropped > 0 {
                tracing::warn!(dropped, "audit rows dropped: the log was full");
            }
            let skipped = self.anonymous_skipped.replace(0);
            if skipped > 0 {
                tracing::warn!(
                    skipped,
                    per_second = MAX_ANONYMOUS_PER_SEC,
                    "requests refused without a verified token not audited (past the rows kept per second)"
                );
            }
            if last {
                return;
            }
        }
    }
}

/// Inserts `rows` on `conn` (connected first when `None`).
async fn insert(conn: &mut Option<Connection>, opts: &ChOptions, rows: &[AuditRow]) -> Result<(), ChError> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Connection::connect(opts).await?),
    };
    c.insert_start(INSERT, &[]).await?;
    let columns = columns(rows);
    c.insert_block(&columns, rows.len()).await?;
    c.insert_end().await
}

/// The rows as the table's columns.
fn columns(rows: &[AuditRow]) -> Vec<Column> {
    let string = |name: &str, get: &dyn Fn(&AuditRow) -> &str| {
        let mut d = ColumnData::String(Default::default());
        for r in rows {
            d.push_str(get(r).as_bytes());
        }
        Column::new(name, "String", d)
    };
    let mut time = ColumnData::fixed(4);
    let mut status = ColumnData::fixed(2);
    let mut duration = ColumnData::fixed(4);
    let mut read = ColumnData::fixed(8);
    for r in rows {
        time.push_fixed(&r.time.to_le_bytes());
        status.push_fixed(&r.status.to_le_bytes());
        duration.push_fixed(&r.duration_ms.to_le_bytes());
        read.push_fixed(&r.read_rows.to_le_bytes());
    }
    vec![
        Column::new("time", "DateTime", time),
        string("user", &|r| &r.user),
        string("roles", &|r| &r.roles),
        string("route", &|r| &r.route),
        string("game_id", &|r| &r.game_id),
        string("env", &|r| &r.env),
        string("params", &|r| &r.params),
        Column::new("status", "UInt16", status),
        Column::new("duration_ms", "UInt32", duration),
        Column::new("read_rows", "UInt64", read),
    ]
}

/// The longest text an audit row keeps of the parameters, the user, the roles and the
/// route, bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

/// The longest `game_id` and `env` an audit row keeps, bytes.
pub const MAX_SCOPE_BYTES: usize = 256;

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut with `…`.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_without_a_token_are_audited_at_most_ten_a_second() {
        let log = AuditLog::new(1000);
        let anonymous = |time: u32| AuditRow { time, ..row(time, "") };
        for _ in 0..25 {
            log.record_anonymous(anonymous(7));
        }
        log.record(row(7, "a"));
        for _ in 0..3 {
            log.record_anonymous(anonymous(8));
        }
        assert_eq!(log.pending(), 10 + 1 + 3);
        assert_eq!(log.anonymous_skipped.get(), 15);
    }

    #[test]
    fn long_fields_are_cut_at_a_character_boundary() {
        let mut s = "é".repeat(1000);
        truncate(&mut s, MAX_FIELD_BYTES);
        assert!(s.len() <= MAX_FIELD_BYTES && s.ends_with('…'), "{}", s.len());
        let mut short = "abc".to_owned();
        truncate(&mut short, MAX_FIELD_BYTES);
        assert_eq!(short, "abc");
    }

    fn row(n: u32, text: &str) -> AuditRow {
        AuditRow {
            time: n,
            user: text.into(),
            roles: text.into(),
            route: "/api/analytics/overview".into(),
            game_id: text.into(),
            env: text.into(),
            params: text.into(),
            status: 200,
            duration_ms: 0,
            read_rows: 0,
        }
    }

    /// Every text field is bounded, the scope from the query or the headers included: a
    /// row's size does not follow the request's.
    #[test]
    fn every_field_of_a_row_is_bounded() {
        let log = AuditLog::new(4);
        let long = "g".repeat(16 * 1024);
        let mut r = row(1, &long);
        r.route = long.clone();
        log.record(r);
        let (rows, _) = log.begin().expect("a row");
        let r = &rows[0];
        assert!(r.game_id.len() <= MAX_SCOPE_BYTES && r.env.len() <= MAX_SCOPE_BYTES, "{}", r.game_id.len());
        for f in [&r.params, &r.user, &r.roles, &r.route] {
            assert!(f.len() <= MAX_FIELD_BYTES, "{}", f.len());
        }
        let text: usize = [&r.params, &r.user, &r.roles, &r.route, &r.game_id, &r.env].iter().map(|f| f.len()).sum();
        assert!(text <= 4 * MAX_FIELD_BYTES + 2 * MAX_SCOPE_BYTES, "{text}");
    }

    /// Rows queued while a write is in flight stay queued after it, even when the full
    /// queue pushed out rows of that write meanwhile; every row is written once or counted
    /// dropped once.
    #[test]
    fn a_write_removes_only_the_rows_it_wrote() {
        let log = AuditLog::new(3);
        for n in 1..=3 {
            log.record(row(n, "a"));
        }
        let (in_flight, last) = log.begin().expect("rows");
        assert_eq!(in_flight.len(), 3);
        // While the insert is in flight, two more rows push out the two oldest, which the
        // insert is writing.
        log.record(row(4, "a"));
        log.record(row(5, "a"));
        assert_eq!(log.end(last, true), 1, "only row 3 of the write was still queued");
        assert_eq!(log.take_dropped(), 0, "rows 1 and 2 were written");
        let times = |log: &AuditLog| log.pending.borrow().iter().map(|(_, r)| r.time).collect::<Vec<_>>();
        assert_eq!(times(&log), vec![4, 5]);
        // A failed write: a row of it pushed out meanwhile is lost, and counted.
        let (_, last) = log.begin().expect("rows");
        log.record(row(6, "a"));
        log.record(row(7, "a"));
        assert_eq!(log.end(last, false), 0);
        assert_eq!(log.take_dropped(), 1, "row 4 was pushed out and not written");
        assert_eq!(times(&log), vec![5, 6, 7]);
        // Outside a write, a row pushed out is dropped at once.
        log.record(row(8, "a"));
        assert_eq!(log.take_dropped(), 1);
        let (_, last) = log.begin().expect("rows");
        assert_eq!(log.end(last, true), 3);
        assert_eq!(log.pending(), 0);
    }
}
