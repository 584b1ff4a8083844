//! The audit log: every Analytics API access (who, route, game, parameters, status,
//! duration, rows read) is queued in memory by the request and written to
//! `analytics.audit_log` in batches by a task of the control thread, never on the
//! request's path. At most `api.audit_max_pending` rows wait; past that the oldest are
//! dropped and counted in the log (an unreachable ClickHouse must not grow memory
//! without bound).

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
    pending: RefCell<VecDeque<AuditRow>>,
    max_pending: usize,
    dropped: Cell<u64>,
}

/// The statement the rows are inserted with.
const INSERT: &str =
    "INSERT INTO analytics.audit_log (time, user, roles, route, game_id, env, params, status, duration_ms, read_rows) VALUES";

impl AuditLog {
    /// An empty log holding at most `max_pending` rows.
    pub fn new(max_pending: usize) -> AuditLog {
        AuditLog { pending: RefCell::new(VecDeque::new()), max_pending: max_pending.max(1), dropped: Cell::new(0) }
    }

    /// Queues a row (the oldest is dropped when full).
    pub fn record(&self, mut row: AuditRow) {
        // A row's size is bounded, so that the queue's bound in rows bounds its bytes
        // (parameters come from the request; a query string may be kilobytes).
        for field in [&mut row.params, &mut row.user, &mut row.roles] {
            truncate(field, MAX_FIELD_BYTES);
        }
        let mut p = self.pending.borrow_mut();
        if p.len() >= self.max_pending {
            p.pop_front();
            self.dropped.set(self.dropped.get() + 1);
        }
        p.push_back(row);
    }

    /// Rows waiting.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Writes what is pending in one insert; on failure the rows stay queued.
    pub async fn flush(&self, conn: &mut Option<Connection>, opts: &ChOptions) -> Result<usize, ChError> {
        let rows: Vec<AuditRow> = self.pending.borrow().iter().cloned().collect();
        if rows.is_empty() {
            return Ok(0);
        }
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Connection::connect(opts).await?),
        };
        let result = async {
            c.insert_start(INSERT, &[]).await?;
            let columns = columns(&rows);
            c.insert_block(&columns, rows.len()).await?;
            c.insert_end().await
        }
        .await;
        if let Err(e) = result {
            *conn = None;
            return Err(e);
        }
        let mut p = self.pending.borrow_mut();
        let n = rows.len().min(p.len());
        p.drain(..n);
        Ok(n)
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
            let dropped = self.dropped.replace(0);
            if dropped > 0 {
                tracing::warn!(dropped, "audit rows dropped: the log was full");
            }
            if last {
                return;
            }
        }
    }
}

/// The rows as the table's columns.
fn columns(rows: &[AuditRow]) -> Vec<Column> {
    let string = |name: &str, get: &dyn Fn(&AuditRow) -> &str| {
        let mut d = ColumnData::String(Vec::new());
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

/// The longest text an audit row keeps per field (parameters, user, roles), bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

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
    fn long_fields_are_cut_at_a_character_boundary() {
        let mut s = "é".repeat(1000);
        truncate(&mut s, MAX_FIELD_BYTES);
        assert!(s.len() <= MAX_FIELD_BYTES && s.ends_with('…'), "{}", s.len());
        let mut short = "abc".to_owned();
        truncate(&mut short, MAX_FIELD_BYTES);
        assert_eq!(short, "abc");
    }
}
