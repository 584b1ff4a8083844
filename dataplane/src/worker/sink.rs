//! Turning stream entries into ClickHouse rows and inserting them.
//!
//! Each entry is either a batch entry (`fmt=rkyv1`, read in place) or a Croupier-format
//! entry (`data` = one record's JSON). An entry that cannot be read is *poison*: it is
//! reported with its reason and contributes no rows. Rows are grouped by partition (month
//! of their time) into blocks of at most a set number of partitions
//! ([`crate::clickhouse::partitions`]), and a block streams to ClickHouse once it holds
//! [`BLOCK_ROWS`] rows.

use croupier_control::metrics::DeadReason;
use std::rc::Rc;

use croupier_protocol::batch::{ArchivedRecords, BatchBuf, FIELD_BATCH, FIELD_CROUPIER_DATA, FIELD_FORMAT, FORMAT};
use croupier_protocol::envelope::{text, PaymentStatus};
use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate::{self, Limits};

use super::aggregate::sketches::{Sketches, Staged};
use super::aggregate::what::day_of;
use super::aggregate::Aggregator;
use super::entries::Entry;
use crate::clickhouse::connection::{ChError, Connection};
use crate::clickhouse::partitions::{self, PartitionedRows};
use crate::clickhouse::rows::{
    check_header, unix_seconds, ArchivedEventRef, EventFields, EventRows, Events, PaymentFields, PaymentRows, Payments,
    Table, TableRows,
};

/// Rows per block sent to ClickHouse.
pub const BLOCK_ROWS: usize = 65_536;

/// An entry that cannot be inserted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Index in the batch.
    pub index: usize,
    /// Why, as counted (`croupier_dead_letters_total`).
    pub cause: DeadReason,
    /// Why.
    pub reason: String,
}

enum Rows {
    Events(PartitionedRows<Events>),
    Payments(PartitionedRows<Payments>),
}

impl Rows {
    fn count(&self) -> usize {
        match self {
            Rows::Events(r) => r.rows(),
            Rows::Payments(r) => r.rows(),
        }
    }

    fn clear(&mut self) {
        match self {
            Rows::Events(r) => r.clear(),
            Rows::Payments(r) => r.clear(),
        }
    }

    fn set_partition_limit(&mut self, limit: usize, neighbours: bool) {
        match self {
            Rows::Events(r) => r.set_limit(limit, neighbours),
            Rows::Payments(r) => r.set_limit(limit, neighbours),
        }
    }

    fn partition_limit(&self) -> usize {
        match self {
            Rows::Events(r) => r.limit(),
            Rows::Payments(r) => r.limit(),
        }
    }

    fn insert_sql(&self) -> &'static str {
        match self {
            Rows::Events(_) => EventRows::INSERT,
            Rows::Payments(_) => PaymentRows::INSERT,
        }
    }

    /// Sends the blocks holding at least `min_rows` rows (and any rows), starting the
    /// insert first if `started` is not set yet.
    async fn send(&mut self, ch: &mut Connection, min_rows: usize, started: &mut bool) -> Result<(), ChError> {
        let sql = self.insert_sql();
        match self {
            Rows::Events(r) => send_blocks(ch, r.blocks_mut(), sql, min_rows, started).await,
            Rows::Payments(r) => send_blocks(ch, r.blocks_mut(), sql, min_rows, started).await,
        }
    }
}

async fn send_blocks<T: Table>(
    ch: &mut Connection,
    blocks: &mut [TableRows<T>],
    sql: &str,
    min_rows: usize,
    started: &mut bool,
) -> Result<(), ChError> {
    for b in blocks {
        if b.rows == 0 || b.rows < min_rows {
            continue;
        }
        if !*started {
            let header = ch.insert_start(sql, &[]).await?;
            *started = true;
            check_header(T::NAME, &header, &b.columns).map_err(ChError::SchemaMismatch)?;
        }
        ch.insert_block(&b.columns, b.rows).await?;
        b.clear();
    }
    Ok(())
}

/// Builds and inserts rows for one stream, reusing its buffers across batches.
pub struct Sink {
    stream: StreamKind,
    rows: Rows,
    archive: BatchBuf,
    json: Vec<u8>,
    limits: Limits,
    /// The shard's real-time sketches, fed as rows are built (none: aggregation off).
    agg: Option<Rc<Aggregator>>,
    /// (game, environment, UTC day) of the payments pushed since the last
    /// [`Sink::take_revenue_days`].
    revenue_days: Vec<(String, String, u32)>,
    /// The sketch adds of the rows being inserted, made once ClickHouse confirms them.
    staged: Vec<Staged>,
}

/// Notes a payment's day, once per game, environment and day.
fn note_day(days: &mut Vec<(String, String, u32)>, game: &str, env: &str, day: u32) {
    if !days.iter().any(|(g, e, d)| *d == day && g == game && e == env) {
        days.push((game.to_owned(), env.to_owned(), day));
    }
}

impl Sink {
    /// A sink for `stream`'s table.
    pub fn new(stream: StreamKind) -> Sink {
        let rows = match stream {
            StreamKind::Payments => Rows::Payments(PartitionedRows::new(partitions::DEFAULT_LIMIT, true)),
            _ => Rows::Events(PartitionedRows::new(partitions::DEFAULT_LIMIT, true)),
        };
        Sink {
            stream,
            rows,
            archive: BatchBuf::default(),
            json: Vec::new(),
            limits: Limits::default(),
            agg: None,
            revenue_days: Vec::new(),
            staged: Vec::new(),
        }
    }

    /// Feeds the shard's sketches from now on.
    pub fn set_aggregator(&mut self, agg: Option<Rc<Aggregator>>) {
        self.agg = agg;
    }

    /// The days of the payments pushed since the last call, and those noted by
    /// [`Sink::note_revenue_days`].
    pub fn take_revenue_days(&mut self) -> Vec<(String, String, u32)> {
        std::mem::take(&mut self.revenue_days)
    }

    /// Notes more days whose `daily_revenue` is to be recomputed once the batch commits.
    pub fn note_revenue_days(&mut self, days: impl IntoIterator<Item = (String, String, u32)>) {
        for (g, e, d) in days {
            note_day(&mut self.revenue_days, &g, &e, d);
        }
    }

    /// (game, environment, order) of the payments of `batch[i]`, `i` in `which`; entries
    /// that cannot be read are left out (they are poison, with no rows).
    pub fn payment_orders(&mut self, batch: &[Entry], which: &[usize]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut add = |p: &dyn PaymentFields| {
            let [game, env, _, order, ..] = p.text();
            out.push((game.to_owned(), env.to_owned(), order.to_owned()));
        };
        for e in which.iter().filter_map(|&i| batch.get(i)) {
            if let Some(data) = e.get(FIELD_CROUPIER_DATA) {
                self.json.clear();
                self.json.extend_from_slice(data);
                if let Ok(p) = validate::parse_payment_object(&mut self.json, &self.limits) {
                    add(&p);
                }
                continue;
            }
            let Some(bytes) = e.get(FIELD_BATCH) else { continue };
            if let Ok(batch) = self.archive.load(bytes) {
                if let ArchivedRecords::Payments(v) = &batch.records {
                    v.iter().for_each(|p| add(p));
                }
            }
        }
        out
    }

    /// Appends the rows of `e`, or says why it has none.
    fn push(&mut self, e: &Entry) -> Result<(), String> {
        if e.fields.is_empty() {
            return Err("entry was deleted (trimmed) before it was consumed".into());
        }
        let mut sketches = self.agg.as_ref().map(|a| a.sketches());
        if let Some(s) = sketches.as_mut() {
            s.set_now(crate::ingest::now_ms());
        }
        if let Some(data) = e.get(FIELD_CROUPIER_DATA) {
            self.json.clear();
            self.json.extend_from_slice(data);
            return match &mut self.rows {
                Rows::Events(r) => {
                    let id = validate::derived_event_id(self.stream.key(), &e.id);
                    let ev =
                        validate::parse_event_object(&mut self.json, &self.limits, id).map_err(|x| x.to_string())?;
                    r.block(unix_seconds(ev.ts_ms)).push(&ev, entry_ms(&e.id));
                    if let Some(s) = sketches.as_mut() {
                        s.stage_event(
                            &mut self.staged,
                            &ev.game_id,
                            &ev.env,
                            &ev.event,
                            &ev.user_id,
                            &ev.session_id,
                            ev.ts_ms,
                        );
                    }
                    Ok(())
                }
                Rows::Payments(r) => {
                    let p = validate::parse_payment_object(&mut self.json, &self.limits).map_err(|x| x.to_string())?;
                    r.block(unix_seconds(p.ts_ms)).push(&p, entry_ms(&e.id));
                    if let Some(s) = sketches.as_mut() {
                        count_payment(s, &mut self.staged, &mut self.revenue_days, &p);
                    }
                    Ok(())
                }
            };
        }
        if e.get(FIELD_FORMAT) != Some(FORMAT.as_bytes()) {
            return Err("unknown entry format (neither `fmt=rkyv1` nor `data`)".into());
        }
        let bytes = e.get(FIELD_BATCH).ok_or("batch entry without `batch` field")?;
        let batch = self.archive.load(bytes).map_err(|x| x.to_string())?;
        let accepted = batch.accepted_at_ms.to_native();
        match (&batch.records, &mut self.rows) {
            (ArchivedRecords::Events(b), Rows::Events(r)) => {
                for index in 0..b.len() {
                    let ev = ArchivedEventRef { batch: b, index };
                    let ts = ev.ts_ms();
                    r.block(unix_seconds(ts)).push(&ev, accepted);
                    if let Some(s) = sketches.as_mut() {
                        let f = |i| b.field(index, i);
                        s.stage_event(
                            &mut self.staged,
                            f(text::GAME_ID),
                            f(text::ENV),
                            f(text::EVENT),
                            f(text::USER_ID),
                            f(text::SESSION_ID),
                            ts,
                        );
                    }
                }
            }
            (ArchivedRecords::Payments(v), Rows::Payments(r)) => {
                for p in v.iter() {
                    r.block(unix_seconds(p.ts_ms())).push(p, accepted);
                    if let Some(s) = sketches.as_mut() {
                        count_payment(s, &mut self.staged, &mut self.revenue_days, p);
                    }
                }
            }
            _ => return Err(format!("batch holds records of another stream than {}", self.stream.key())),
        }
        Ok(())
    }

    /// Inserts the rows of `batch[i]` for every `i` in `which`, streaming blocks as they
    /// fill, and returns the entries that had no rows to give (poison). `Ok` means
    /// ClickHouse confirmed the insert (EndOfStream); only then are the rows' players
    /// counted in the shard's sketches (a part ClickHouse refuses, later dead-lettered
    /// entry by entry, counts nowhere).
    pub async fn insert(
        &mut self,
        ch: &mut Connection,
        batch: &[Entry],
        which: &[usize],
    ) -> Result<Vec<Poison>, ChError> {
        self.staged.clear();
        let Some(agg) = self.agg.clone() else { return self.insert_rows(ch, batch, which).await };
        agg.sketches().pin();
        let inserted = self.insert_rows(ch, batch, which).await;
        let mut sketches = agg.sketches();
        if inserted.is_ok() {
            sketches.apply(&self.staged);
        }
        sketches.unpin();
        self.staged.clear();
        inserted
    }

    async fn insert_rows(
        &mut self,
        ch: &mut Connection,
        batch: &[Entry],
        which: &[usize],
    ) -> Result<Vec<Poison>, ChError> {
        self.rows.clear();
        let mut poison = Vec::new();
        let mut started = false;
        for &i in which {
            if let Err(reason) = self.push(&batch[i]) {
                poison.push(Poison { index: i, cause: DeadReason::Undecodable, reason });
                continue;
            }
            self.rows.send(ch, BLOCK_ROWS, &mut started).await?;
        }
        if self.rows.count() > 0 {
            self.rows.send(ch, 1, &mut started).await?;
        }
        if started {
            ch.insert_end().await?;
        }
        Ok(poison)
    }

    /// The partitions one block may span.
    pub fn partition_limit(&self) -> usize {
        self.rows.partition_limit()
    }

    /// Sets the partitions one block may span (at least 1), and whether each month
    /// reserves its neighbours (the server's time zone is not UTC).
    pub fn set_partition_limit(&mut self, limit: usize, neighbours: bool) {
        self.rows.set_partition_limit(limit, neighbours);
    }
}

/// A payment's share of the figures: its user as a payer when it succeeded, its day for
/// `daily_revenue` whatever its status.
fn count_payment(
    s: &mut Sketches,
    staged: &mut Vec<Staged>,
    days: &mut Vec<(String, String, u32)>,
    p: &impl PaymentFields,
) {
    let [game, env, user, ..] = p.text();
    if p.status() == PaymentStatus::Success.as_str() {
        s.stage_payer(staged, game, env, user, p.ts_ms());
    }
    note_day(days, game, env, day_of(p.ts_ms()));
}

/// Milliseconds of an entry ID (`<ms>-<seq>`): when Redis accepted it.
pub fn entry_ms(id: &str) -> i64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

/// Rows an entry holds, from its `n` field (1 for Croupier-format entries).
pub fn entry_rows(e: &Entry) -> usize {
    e.get(croupier_protocol::batch::FIELD_COUNT)
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}
