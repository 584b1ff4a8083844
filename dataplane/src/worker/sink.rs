//! Turning stream entries into ClickHouse rows and inserting them.
//!
//! Each entry is either a batch entry (`fmt=rkyv1`, read in place) or a Croupier-format
//! entry (`data` = one record's JSON). An entry that cannot be read is *poison*: it is
//! reported with its reason and contributes no rows. Rows are grouped by partition (month
//! of their time) into blocks of at most a set number of partitions
//! ([`crate::clickhouse::partitions`]), and a block streams to ClickHouse once it holds
//! [`BLOCK_ROWS`] rows, its rows in the table's sort-key order. On a cluster
//! (`clickhouse.shards`) every row goes to the shard [`cluster::shard_of`] names for its
//! dedup key (event id, order id), into that shard's `_local` table; the same entries
//! always make the same blocks, in the same order (replicated block deduplication drops a
//! retried one).
//!
//! The events of an insert are also folded into `analytics.user_days` rows, per shard
//! ([`UserDayFold`]), inserted on the shard's connection (into `user_days_local` on a
//! cluster) once its `events` insert is confirmed: an insert is confirmed only when both
//! are, so the batch is acknowledged only then, and a failure of either keeps it for a
//! retry. Entries without rows (poison) and parts ClickHouse refuses are folded nowhere.
//! What a shard confirmed of a batch being retried ([`Confirmed`]) is not sent to it again:
//! a batch whose `events` rows a shard stored but whose `user_days` insert failed sends
//! that shard only its `user_days` rows on the retry.

use croupier_control::metrics::DeadReason;
use std::rc::Rc;

use croupier_protocol::batch::{ArchivedRecords, BatchBuf, FIELD_BATCH, FIELD_CROUPIER_DATA, FIELD_FORMAT, FORMAT};
use croupier_protocol::clickhouse::packet::Setting;
use croupier_protocol::envelope::{text, PaymentStatus};
use croupier_protocol::stream::StreamKind;
use croupier_protocol::validate::{self, Limits};

use super::aggregate::sketches::{Sketches, Staged};
use super::aggregate::what::day_of;
use super::aggregate::Aggregator;
use super::entries::Entry;
use crate::clickhouse::cluster;
use crate::clickhouse::connection::{ChError, Connection};
use crate::clickhouse::partitions::{self, PartitionedRows};
use crate::clickhouse::rows::{
    check_header, unix_seconds, ArchivedEventRef, EventRows, Events, PaymentFields, PaymentRows, Payments, Table,
    TableRows,
};
use crate::clickhouse::user_days::{UserDayFold, UserDayRows, UserDays};

/// Rows per block sent to ClickHouse: above the default `worker.batch_rows` (200,000), so
/// that a batch's rows of one partition make one block, sent in the table's sort-key
/// order (ClickHouse then writes the part without sorting it,
/// `croupier_protocol::clickhouse::order`). Smaller blocks would not spare the server
/// anything: it joins an insert's blocks into one before writing (up to
/// `min_insert_block_size_rows`, 1,048,576), and blocks each in order but not between them
/// it sorts again. What a block holds in memory: docs/worker.md ("At most two batches").
pub const BLOCK_ROWS: usize = 262_144;

/// Settings of an insert whose blocks must reach the table as they are sent. ClickHouse
/// joins an insert's blocks into one before writing them (until it holds
/// `min_insert_block_size_rows`, 1,048,576 rows, or `min_insert_block_size_bytes`), and
/// ClickHouse 19 and later count the partitions of that one block against
/// `max_partitions_per_insert_block` (100): blocks of at most 100 months each, joined,
/// would be refused whole (code 252), and the batch retried for ever. At 1 a block
/// passes as it is. 18.16 knows both settings (and has no partition limit).
pub const BLOCKS_AS_SENT: &[(&str, Setting<'static>)] =
    &[("min_insert_block_size_rows", Setting::UInt(1)), ("min_insert_block_size_bytes", Setting::UInt(1))];

/// The settings of an insert starting with `blocks` blocks to send, or told to keep its
/// blocks apart anyway (`apart`: one that may send more once started). One block alone
/// has nothing to be joined with: its insert is sent as ever, without settings.
fn insert_settings(blocks: usize, apart: bool) -> &'static [(&'static str, Setting<'static>)] {
    if blocks > 1 || apart {
        BLOCKS_AS_SENT
    } else {
        &[]
    }
}

/// The dead-letter reason of an entry deleted from its stream while pending (its rows
/// lost): found by `XAUTOCLAIM`, or without fields among a consumer's own pending entries.
pub const DELETED_WHILE_PENDING: &str = "deleted from the stream while pending";

/// Merges into Redis one insert may wait for to make room for its players' sketches
/// (past periods go once merged); past them, adds that find no room are refused. Bounds
/// what a client spreading timestamps over many periods can cost the shard per insert.
pub const ROOM_MERGES: usize = 8;

/// Nothing of an entry's rows on a shard is confirmed ([`Confirmed`]).
const NOTHING: u8 = 0;
/// The shard confirmed the entry's rows in the stream's table (`events`, `payments`).
const TABLE: u8 = 1;
/// The shard confirmed them and their `user_days` rows too.
const BOTH: u8 = 2;

/// What ClickHouse confirmed (EndOfStream), shard by shard, of the entries of a batch
/// whose insert has not succeeded as a whole yet. The consumer keeps it with the batch in
/// hand across its retries, and [`Sink::insert`] sends a shard only what it has not
/// confirmed: the rows of an entry whose `events` rows a shard stored are not sent there
/// again, only its `user_days` rows until those are stored too. An entry's rows are still
/// pushed on every try (its sketch adds and revenue days are staged again and made only
/// when the whole insert succeeds), so the batch is acknowledged only once every shard
/// confirmed both.
#[derive(Debug, Default)]
pub struct Confirmed {
    /// Shards of the sink.
    shards: usize,
    /// Per entry of the batch, then per shard: [`NOTHING`], [`TABLE`] or [`BOTH`].
    level: Vec<u8>,
    /// Per entry, then per shard: whether the entry has rows for the shard (a shard it
    /// has none for confirms it all the same, with the others).
    routed: Vec<bool>,
}

impl Confirmed {
    /// Nothing confirmed yet of a batch of `entries` entries on `shards` shards (at least 1).
    pub fn new(entries: usize, shards: usize) -> Confirmed {
        let shards = shards.max(1);
        Confirmed {
            shards,
            level: vec![NOTHING; entries.saturating_mul(shards)],
            routed: vec![false; entries.saturating_mul(shards)],
        }
    }

    /// How far entry `i`'s rows on shard `s` are confirmed (nothing when out of range).
    fn get(&self, i: usize, s: usize) -> u8 {
        if s >= self.shards {
            return NOTHING;
        }
        i.checked_mul(self.shards).and_then(|at| self.level.get(at + s)).copied().unwrap_or(NOTHING)
    }

    /// Shard `s` confirmed `to` for the entries `which`.
    fn raise(&mut self, which: &[usize], s: usize, to: u8) {
        if s >= self.shards {
            return;
        }
        for &i in which {
            if let Some(l) = i.checked_mul(self.shards).and_then(|at| self.level.get_mut(at + s)) {
                *l = (*l).max(to);
            }
        }
    }

    /// Whether every shard confirmed entry `i`'s rows in the stream's table: a refusal of
    /// it since came from its `user_days` rows, not from them.
    pub fn table_rows_stored(&self, i: usize) -> bool {
        (0..self.shards).all(|s| self.get(i, s) >= TABLE)
    }

    /// Shard `s` confirmed the stream's table rows of the entries `which` (for tests
    /// elsewhere in the worker).
    #[cfg(test)]
    pub(crate) fn raise_for_test(&mut self, which: &[usize], s: usize) {
        self.raise(which, s, TABLE);
    }

    /// Entry `i` has rows for shard `s`.
    pub(crate) fn note_routed(&mut self, i: usize, s: usize) {
        if s < self.shards {
            if let Some(r) = i.checked_mul(self.shards).and_then(|at| self.routed.get_mut(at + s)) {
                *r = true;
            }
        }
    }

    /// Of the shards entry `i` has rows for, how many confirmed them in the stream's
    /// table, and how many there are.
    pub fn table_rows_stored_on(&self, i: usize) -> (usize, usize) {
        let routed =
            |s: usize| i.checked_mul(self.shards).and_then(|at| self.routed.get(at + s)).copied() == Some(true);
        let shards = (0..self.shards).filter(|&s| routed(s));
        let (mut stored, mut all) = (0, 0);
        for s in shards {
            all += 1;
            if self.get(i, s) >= TABLE {
                stored += 1;
            }
        }
        (stored, all)
    }
}

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

    /// Sends the blocks holding at least `min_rows` rows (and any rows) with `sql`,
    /// starting the insert first if `started` is not set yet (keeping its blocks apart
    /// when more than one is to go then, or when `apart`).
    async fn send(
        &mut self,
        ch: &mut Connection,
        sql: &str,
        min_rows: usize,
        started: &mut bool,
        apart: bool,
    ) -> Result<(), ChError> {
        match self {
            Rows::Events(r) => send_blocks(ch, r.blocks_mut(), sql, min_rows, started, apart).await,
            Rows::Payments(r) => send_blocks(ch, r.blocks_mut(), sql, min_rows, started, apart).await,
        }
    }
}

async fn send_blocks<T: Table>(
    ch: &mut Connection,
    blocks: &mut [TableRows<T>],
    sql: &str,
    min_rows: usize,
    started: &mut bool,
    apart: bool,
) -> Result<(), ChError> {
    // Each block holds months no other holds (`PartitionedRows`): more than one with rows
    // is more than one group of partitions.
    let groups = blocks.iter().filter(|b| b.rows > 0).count();
    for b in blocks {
        if b.rows == 0 || b.rows < min_rows {
            continue;
        }
        if !*started {
            let header = ch.insert_start(sql, insert_settings(groups, apart)).await?;
            *started = true;
            check_header(T::NAME, &header, &b.columns).map_err(ChError::SchemaMismatch)?;
        }
        // In the table's order, so that ClickHouse need not sort the part it writes.
        let order = croupier_protocol::clickhouse::order::sort_order(&b.columns, b.rows, T::ORDER_BY);
        ch.insert_block_in_order(&b.columns, b.rows, order.as_deref()).await?;
        b.clear();
    }
    Ok(())
}

/// Builds and inserts rows for one stream, reusing its buffers across batches.
pub struct Sink {
    stream: StreamKind,
    /// Per shard (one without a cluster).
    rows: Vec<Rows>,
    /// The insert statement (into the `_local` table on a cluster).
    insert_sql: String,
    /// Per shard, the `user_days` rows of the events being inserted there (none for
    /// payments).
    user_days: Vec<UserDayFold>,
    /// The `user_days` insert statement (into `user_days_local` on a cluster).
    user_days_sql: String,
    /// Blocks of `user_days` rows being sent, kept for their allocations.
    user_day_blocks: Vec<UserDayRows>,
    /// Per shard, how far the entry being pushed is already confirmed there ([`Confirmed`]):
    /// its rows go only where they are not (none: everywhere).
    pushing: Vec<u8>,
    /// Per shard, whether the entry being pushed has rows for it.
    routed: Vec<bool>,
    /// Every insert keeps its blocks apart ([`BLOCKS_AS_SENT`]), not only one that starts
    /// with more than one: set once ClickHouse refused an insert's joined blocks for the
    /// partitions they span (an insert started by a full block, before the batch's other
    /// months were read, may meet them later).
    apart: bool,
    archive: BatchBuf,
    json: Vec<u8>,
    limits: Limits,
    /// The shard's real-time sketches, fed as rows are built (none: aggregation off).
    agg: Option<Rc<Aggregator>>,
    /// (game, environment, UTC day) of the payments pushed since the last
    /// [`Sink::take_revenue_days`].
    revenue_days: DaySet,
    /// The sketch adds of the rows being inserted, made once ClickHouse confirms them.
    staged: Vec<Staged>,
    /// How many of `staged` are made (the rest are still to be made or dropped).
    made: usize,
    /// The days the batch's orders were on could not be asked: [`Sink::take_revenue_days`]
    /// adds the day before and after each day (an order retried across midnight left one
    /// of them).
    neighbours: bool,
    /// The keys the consumer reads its streams' entries from, where not the stream's own
    /// name (a partition's: `streams.partitions`), for the ids of events written without
    /// one.
    keys: Vec<(StreamKind, String)>,
}

/// Days noted per game and environment: a payment's day is noted with two hash look-ups
/// by `&str` and no allocation once its game and environment are known (a batch of
/// 200,000 payments on as many distinct days stays linear).
type DaySet = std::collections::HashMap<String, std::collections::HashMap<String, std::collections::BTreeSet<u32>>>;

/// Notes a payment's day, once per game, environment and day.
fn note_day(days: &mut DaySet, game: &str, env: &str, day: u32) {
    if let Some(set) = days.get_mut(game).and_then(|envs| envs.get_mut(env)) {
        set.insert(day);
        return;
    }
    days.entry(game.to_owned()).or_default().entry(env.to_owned()).or_default().insert(day);
}

impl Sink {
    /// A sink for `stream`'s table, on `shards` shards; `local`: into the shard-local
    /// tables of a cluster.
    pub fn new(stream: StreamKind, shards: usize, local: bool) -> Sink {
        let one = || match stream {
            StreamKind::Payments => Rows::Payments(PartitionedRows::new(partitions::DEFAULT_LIMIT, true)),
            _ => Rows::Events(PartitionedRows::new(partitions::DEFAULT_LIMIT, true)),
        };
        let (table, insert) = match stream {
            StreamKind::Payments => (Payments::NAME, PaymentRows::INSERT),
            _ => (Events::NAME, EventRows::INSERT),
        };
        let user_days = match stream {
            StreamKind::Payments => Vec::new(),
            _ => (0..shards.max(1)).map(|_| UserDayFold::default()).collect(),
        };
        Sink {
            stream,
            rows: (0..shards.max(1)).map(|_| one()).collect(),
            insert_sql: if local { cluster::local_insert(insert, table) } else { insert.to_owned() },
            user_days,
            user_days_sql: if local {
                cluster::local_insert(UserDays::INSERT, UserDays::NAME)
            } else {
                UserDays::INSERT.to_owned()
            },
            user_day_blocks: Vec::new(),
            pushing: Vec::new(),
            routed: Vec::new(),
            apart: false,
            archive: BatchBuf::default(),
            json: Vec::new(),
            limits: Limits::default(),
            agg: None,
            revenue_days: DaySet::new(),
            staged: Vec::new(),
            made: 0,
            neighbours: false,
            keys: Vec::new(),
        }
    }

    /// Feeds the shard's sketches from now on.
    pub fn set_aggregator(&mut self, agg: Option<Rc<Aggregator>>) {
        self.agg = agg;
    }

    /// The days of the payments pushed since the last call, and those noted by
    /// [`Sink::note_revenue_days`].
    /// With [`Sink::recompute_neighbour_days`], each day's neighbours too.
    pub fn take_revenue_days(&mut self) -> Vec<(String, String, u32)> {
        let neighbours = std::mem::take(&mut self.neighbours);
        let mut out = Vec::new();
        for (g, envs) in self.revenue_days.drain() {
            for (e, days) in envs {
                let mut days: Vec<u32> = days.into_iter().collect();
                if neighbours {
                    let around: Vec<u32> =
                        days.iter().flat_map(|d| [d.saturating_sub(1), d.saturating_add(1)]).collect();
                    days.extend(around);
                    days.sort_unstable();
                    days.dedup();
                }
                out.extend(days.into_iter().map(|d| (g.clone(), e.clone(), d)));
            }
        }
        out
    }

    /// The days the batch's orders are on could not be asked: recompute, with the days of
    /// its payments, the day before and after each.
    pub fn recompute_neighbour_days(&mut self) {
        self.neighbours = true;
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

    /// The entries of `stream` are read from `key` (a partition's; by default, the stream's
    /// own name).
    pub fn read_from(&mut self, stream: StreamKind, key: &str) {
        self.keys.retain(|(s, _)| *s != stream);
        if key != stream.key() {
            self.keys.push((stream, key.to_owned()));
        }
    }

    /// The key `e` was read from.
    fn key_of(&self, e: &Entry) -> &str {
        self.keys.iter().find(|(s, _)| *s == e.stream).map_or(e.stream.key(), |(_, k)| k.as_str())
    }

    /// Appends the rows of `e`, or says why it has none (an entry without fields, deleted
    /// while pending, is dead-lettered as such: `Consumer::dead_letter`).
    fn push(&mut self, e: &Entry) -> Result<(), String> {
        let mut sketches = self.agg.as_ref().map(|a| a.sketches());
        if let Some(s) = sketches.as_mut() {
            s.set_now(crate::ingest::now_ms());
        }
        // Which one to store would be a guess, and the other would be lost unseen.
        if let Some(f) = e.repeated(&[FIELD_CROUPIER_DATA, FIELD_BATCH, FIELD_FORMAT]) {
            return Err(format!("the entry gives its field {f} more than once"));
        }
        if e.get(FIELD_CROUPIER_DATA).is_some() && (e.get(FIELD_BATCH).is_some() || e.get(FIELD_FORMAT).is_some()) {
            return Err("the entry gives both a data record and a batch archive (fmt, batch)".into());
        }
        if let Some(data) = e.get(FIELD_CROUPIER_DATA) {
            self.json.clear();
            self.json.extend_from_slice(data);
            let shards = self.rows.len();
            return match self.rows.first() {
                Some(Rows::Events(_)) => {
                    // Entry IDs are per stream key: two partitions may each hold one.
                    let id = validate::derived_event_id(self.key_of(e), &e.id);
                    let ev =
                        validate::parse_event_object(&mut self.json, &self.limits, id).map_err(|x| x.to_string())?;
                    let shard = event_shard(&ev.event_id, shards);
                    if let Some(r) = self.routed.get_mut(shard) {
                        *r = true;
                    }
                    let (Some(Rows::Events(r)), Some(days)) = (self.rows.get_mut(shard), self.user_days.get_mut(shard))
                    else {
                        return Err("no rows for the event's shard".into());
                    };
                    let done = self.pushing.get(shard).copied().unwrap_or(NOTHING);
                    if done < TABLE {
                        r.block(unix_seconds(ev.ts_ms)).push(&ev, entry_ms(&e.id));
                    }
                    if done < BOTH {
                        days.add(unix_seconds(ev.ts_ms), &ev.game_id, &ev.env, &ev.user_id, &ev.event);
                    }
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
                Some(Rows::Payments(_)) => {
                    let p = validate::parse_payment_object(&mut self.json, &self.limits).map_err(|x| x.to_string())?;
                    let shard = payment_shard(&p, shards);
                    if let Some(r) = self.routed.get_mut(shard) {
                        *r = true;
                    }
                    let Some(Rows::Payments(r)) = self.rows.get_mut(shard) else {
                        return Err("no rows for the payment's shard".into());
                    };
                    if self.pushing.get(shard).copied().unwrap_or(NOTHING) < TABLE {
                        r.block(unix_seconds(p.ts_ms)).push(&p, entry_ms(&e.id));
                    }
                    if let Some(s) = sketches.as_mut() {
                        count_payment(s, &mut self.staged, &mut self.revenue_days, &p);
                    }
                    Ok(())
                }
                None => Err("no rows".into()),
            };
        }
        if e.get(FIELD_FORMAT) != Some(FORMAT.as_bytes()) {
            return Err("unknown entry format (neither `fmt=rkyv1` nor `data`)".into());
        }
        let bytes = e.get(FIELD_BATCH).ok_or("batch entry without `batch` field")?;
        let batch = self.archive.load(bytes).map_err(|x| x.to_string())?;
        let accepted = batch.accepted_at_ms.to_native();
        let shards = self.rows.len();
        match (&batch.records, self.rows.first()) {
            (ArchivedRecords::Events(b), Some(Rows::Events(_))) => {
                for index in 0..b.len() {
                    let ev = ArchivedEventRef { batch: b, index }.read();
                    let ts = ev.ts_ms;
                    let shard = event_shard(&ev.event_id, shards);
                    if let Some(r) = self.routed.get_mut(shard) {
                        *r = true;
                    }
                    let (Some(Rows::Events(r)), Some(days)) = (self.rows.get_mut(shard), self.user_days.get_mut(shard))
                    else {
                        return Err("no rows for the event's shard".into());
                    };
                    let done = self.pushing.get(shard).copied().unwrap_or(NOTHING);
                    if done < TABLE {
                        r.block(unix_seconds(ts)).push(&ev, accepted);
                    }
                    let f = |i: usize| ev.text[i];
                    if done < BOTH {
                        days.add(unix_seconds(ts), f(text::GAME_ID), f(text::ENV), f(text::USER_ID), f(text::EVENT));
                    }
                    if let Some(s) = sketches.as_mut() {
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
            (ArchivedRecords::Payments(v), Some(Rows::Payments(_))) => {
                for p in v.iter() {
                    let shard = payment_shard(p, shards);
                    if let Some(r) = self.routed.get_mut(shard) {
                        *r = true;
                    }
                    let Some(Rows::Payments(r)) = self.rows.get_mut(shard) else {
                        return Err("no rows for the payment's shard".into());
                    };
                    if self.pushing.get(shard).copied().unwrap_or(NOTHING) < TABLE {
                        r.block(unix_seconds(p.ts_ms())).push(p, accepted);
                    }
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
    /// fill, and returns the entries that had no rows to give (poison). `ch` holds a
    /// connection per shard. `Ok` means every shard's ClickHouse confirmed its insert
    /// (EndOfStream), and then its insert of the events' `user_days` rows; only then are
    /// the rows' players counted in the shard's sketches (a part ClickHouse refuses, later
    /// dead-lettered entry by entry, counts nowhere). What each shard confirmed is noted in
    /// `confirmed` as it does, and not sent to it again by a later call with the same
    /// `confirmed` (the retry of an insert that failed after it).
    pub async fn insert(
        &mut self,
        ch: &mut [&mut Connection],
        batch: &[Entry],
        which: &[usize],
        confirmed: &mut Confirmed,
    ) -> Result<Vec<Poison>, ChError> {
        let Some(agg) = self.agg.clone() else { return self.insert_rows(ch, batch, which, confirmed).await };
        // Left by an insert that never finished (its future dropped): ended unmade.
        agg.sketches().discard(self.staged.get(self.made..).unwrap_or_default());
        self.staged.clear();
        self.made = 0;
        let inserted = self.insert_rows(ch, batch, which, confirmed).await;
        if inserted.is_err() {
            agg.sketches().discard(&self.staged);
            self.staged.clear();
            return inserted;
        }
        let mut merges = 0;
        while self.made < self.staged.len() {
            self.made += agg.sketches().apply(self.staged.get(self.made..).unwrap_or_default(), true);
            if self.made >= self.staged.len() {
                break;
            }
            // The shard or a game holds its most sketches with adds left (a backlog of late
            // events, one sketch per minute). While sketches hold unmerged adds, they are
            // merged into Redis, so that those of past periods can go, and the rest is
            // applied; while another consumer's merge is in flight (its sketches clean but
            // not droppable until it ends), this one waits for it and tries again. When no
            // merge can make room (nothing unmerged or in flight, or this insert's merges
            // spent), the add is refused (counted) and the rest go on.
            if merges >= ROOM_MERGES || !agg.sketches().room_may_come() {
                agg.sketches().apply(self.staged.get(self.made..self.made + 1).unwrap_or_default(), false);
                self.made += 1;
                continue;
            }
            merges += 1;
            // Waits for a merge in flight, then merges what is still unmerged.
            if let Err(e) = agg.flush().await {
                // Reported as a failed insert: its rows, confirmed, are not sent again; its
                // adds are staged again on the retry, none lost.
                agg.sketches().discard(self.staged.get(self.made..).unwrap_or_default());
                self.staged.clear();
                self.made = 0;
                return Err(ChError::Unexpected(format!(
                    "real-time sketches not merged into Redis to make room for the part's players: {e}"
                )));
            }
            agg.sketches().evict(crate::ingest::now_ms());
        }
        self.staged.clear();
        self.made = 0;
        inserted
    }

    async fn insert_rows(
        &mut self,
        ch: &mut [&mut Connection],
        batch: &[Entry],
        which: &[usize],
        confirmed: &mut Confirmed,
    ) -> Result<Vec<Poison>, ChError> {
        if ch.len() != self.rows.len() {
            return Err(ChError::Unexpected(format!("{} connections for {} shards", ch.len(), self.rows.len())));
        }
        for r in &mut self.rows {
            r.clear();
        }
        for d in &mut self.user_days {
            d.clear();
        }
        let mut poison = Vec::new();
        let mut started = vec![false; self.rows.len()];
        let shards = self.rows.len();
        for &i in which {
            self.pushing.clear();
            self.pushing.extend((0..shards).map(|s| confirmed.get(i, s)));
            self.routed.clear();
            self.routed.resize(shards, false);
            if let Err(reason) = self.push(&batch[i]) {
                poison.push(Poison { index: i, cause: DeadReason::Undecodable, reason });
                continue;
            }
            for (s, _) in self.routed.iter().enumerate().filter(|(_, r)| **r) {
                confirmed.note_routed(i, s);
            }
            for (s, rows) in self.rows.iter_mut().enumerate() {
                rows.send(ch[s], &self.insert_sql, BLOCK_ROWS, &mut started[s], self.apart).await?;
            }
        }
        for (s, rows) in self.rows.iter_mut().enumerate() {
            if rows.count() > 0 {
                rows.send(ch[s], &self.insert_sql, 1, &mut started[s], self.apart).await?;
            }
            if started[s] {
                ch[s].insert_end().await?;
            }
            confirmed.raise(which, s, TABLE);
        }
        self.pushing.clear();
        self.insert_user_days(ch, which, confirmed).await?;
        Ok(poison)
    }

    /// Inserts each shard's `user_days` rows on its connection, once its `events` rows
    /// are confirmed: in blocks of at most the partitions an `events` block may span,
    /// already in the table's order. Each shard that confirms them (or has none) is noted
    /// in `confirmed` for the entries `which`.
    async fn insert_user_days(
        &mut self,
        ch: &mut [&mut Connection],
        which: &[usize],
        confirmed: &mut Confirmed,
    ) -> Result<(), ChError> {
        let limit = self.partition_limit();
        for (s, days) in self.user_days.iter().enumerate() {
            if days.is_empty() {
                confirmed.raise(which, s, BOTH);
                continue;
            }
            let Some(conn) = ch.get_mut(s) else {
                return Err(ChError::Unexpected(format!("no connection for shard {s}")));
            };
            days.blocks(limit, &mut self.user_day_blocks);
            let mut started = false;
            for b in &self.user_day_blocks {
                if !started {
                    let settings = insert_settings(self.user_day_blocks.len(), self.apart);
                    let header = conn.insert_start(&self.user_days_sql, settings).await?;
                    started = true;
                    check_header(UserDays::NAME, &header, &b.columns).map_err(ChError::SchemaMismatch)?;
                }
                conn.insert_block_in_order(&b.columns, b.rows, None).await?;
            }
            if started {
                conn.insert_end().await?;
            }
            confirmed.raise(which, s, BOTH);
        }
        Ok(())
    }

    /// The partitions one block may span.
    pub fn partition_limit(&self) -> usize {
        self.rows.first().map_or(partitions::DEFAULT_LIMIT, Rows::partition_limit)
    }

    /// Whether every insert keeps its blocks apart ([`Sink::keep_blocks_apart`]).
    pub fn blocks_apart(&self) -> bool {
        self.apart
    }

    /// Every insert from now on keeps its blocks apart ([`BLOCKS_AS_SENT`]): ClickHouse
    /// refused one's joined blocks for the partitions they span.
    pub fn keep_blocks_apart(&mut self) {
        self.apart = true;
    }

    /// Sets the partitions one block may span (at least 1), and whether each month
    /// reserves its neighbours (the server's time zone is not UTC).
    pub fn set_partition_limit(&mut self, limit: usize, neighbours: bool) {
        for r in &mut self.rows {
            r.set_partition_limit(limit, neighbours);
        }
    }
}

/// The shard of an event: by its id, as ClickHouse's `toString(event_id)` writes it.
fn event_shard(id: &[u8; 16], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    cluster::shard_of(&cluster::uuid_text(id), shards)
}

/// The shard of a payment: by its order id.
fn payment_shard(p: &impl PaymentFields, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    cluster::shard_of(p.text()[3].as_bytes(), shards)
}

/// A payment's share of the figures: its user as a payer when it succeeded, its day for
/// `daily_revenue` whatever its status.
fn count_payment(s: &mut Sketches, staged: &mut Vec<Staged>, days: &mut DaySet, p: &impl PaymentFields) {
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

/// Rows an entry holds, from its `n` field (1 for Croupier-format entries). Another
/// producer writes the streams too: an `n` is held to the entry's size (a row takes a
/// byte at least), so a wrong one cannot make a batch look full or a counter wrap.
pub fn entry_rows(e: &Entry) -> usize {
    e.get(croupier_protocol::batch::FIELD_COUNT)
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .min(e.byte_len().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_protocol::batch::{encode, Batch, Records};
    use croupier_protocol::envelope::{Event, EventBatch};

    #[test]
    fn an_insert_of_more_than_one_block_keeps_them_apart() {
        assert!(insert_settings(0, false).is_empty());
        assert!(insert_settings(1, false).is_empty(), "one block: sent as ever");
        assert_eq!(insert_settings(2, false), BLOCKS_AS_SENT);
        assert_eq!(insert_settings(1, true), BLOCKS_AS_SENT);
    }

    #[test]
    fn an_entry_count_is_held_to_the_entry_size() {
        let entry = |n: &str| Entry {
            stream: StreamKind::Events,
            id: "1-0".into(),
            fields: vec![(b"n".to_vec(), n.as_bytes().to_vec()), (b"b".to_vec(), vec![0; 100])],
        };
        assert_eq!(entry_rows(&entry("100")), 100);
        let huge = entry("18446744073709551615");
        assert_eq!(entry_rows(&huge), huge.byte_len());
        assert_eq!(entry_rows(&entry("x")), 1);
    }

    /// The rows pushed for a batch entry, a Croupier-format entry and a poison entry: each
    /// shard's `user_days` fold holds exactly the events of its `events` rows, and the
    /// poison entry counts nowhere.
    #[test]
    fn each_shards_user_days_fold_holds_the_events_pushed_there() {
        let t: i64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z, day 19,675
        let mut b = EventBatch::default();
        for i in 0..40u32 {
            let e = Event {
                ts_ms: t + i64::from(i),
                game_id: "g".into(),
                env: "prod".into(),
                event: ["login", "register", "level_start", "first_active"][i as usize % 4].into(),
                user_id: format!("u{}", i % 8),
                event_id: u128::from(i).to_le_bytes(),
                ..Event::default()
            };
            b.push(&e).expect("fits");
        }
        let archive = encode(&Batch { accepted_at_ms: 1, records: Records::Events(b) }).expect("encodes");
        let field = |k: &str, v: &[u8]| (k.as_bytes().to_vec(), v.to_vec());
        let batch_entry = Entry {
            stream: StreamKind::Events,
            id: "1-0".into(),
            fields: vec![field(FIELD_FORMAT, FORMAT.as_bytes()), field(FIELD_BATCH, archive.as_slice())],
        };
        let json = format!(r#"{{"ts":{t},"game_id":"g","env":"prod","event":"session.start","user_id":"u0"}}"#);
        let json_entry = Entry {
            stream: StreamKind::Events,
            id: "2-0".into(),
            fields: vec![field(FIELD_CROUPIER_DATA, json.as_bytes())],
        };
        let poison = Entry {
            stream: StreamKind::Events,
            id: "3-0".into(),
            fields: vec![field(FIELD_CROUPIER_DATA, b"{not json")],
        };
        let mut sink = Sink::new(StreamKind::Events, 2, true);
        assert!(sink.user_days_sql.starts_with("INSERT INTO analytics.user_days_local ("), "{}", sink.user_days_sql);
        sink.push(&batch_entry).expect("rows");
        sink.push(&json_entry).expect("rows");
        assert!(sink.push(&poison).is_err());
        let day = 19_675;
        let mut per_user = [(0u64, 0u64, 0u64, 0u64); 8];
        for (s, rows) in sink.rows.iter().enumerate() {
            let events = rows.count() as u64;
            let folded = &sink.user_days[s];
            let mut counted = 0;
            for (u, total) in per_user.iter_mut().enumerate() {
                if let Some(c) = folded.get(day, "g", "prod", &format!("u{u}")) {
                    counted += c.events;
                    total.0 += c.events;
                    total.1 += c.active;
                    total.2 += c.registered;
                    total.3 += c.first_active;
                }
            }
            assert_eq!(counted, events, "shard {s}: its user_days count its events rows");
            assert!(events > 0, "both shards hold events");
        }
        // u0: events 0, 8, .. 32 (all logins) and the session.start; u1: registers; u3: first_active.
        assert_eq!(per_user[0], (6, 6, 0, 0));
        assert_eq!(per_user[1], (5, 0, 5, 0));
        assert_eq!(per_user[2], (5, 0, 0, 0));
        assert_eq!(per_user[3], (5, 0, 0, 5));
        // Payments have no user_days.
        assert!(Sink::new(StreamKind::Payments, 1, false).user_days.is_empty());
    }

    /// What a shard confirmed is not pushed for it again: an entry whose `events` rows a
    /// shard stored gives that shard only its `user_days` rows, one stored in both gives it
    /// nothing; the other shard gets both. An entry's table rows count as stored only once
    /// every shard confirmed them.
    #[test]
    fn an_entry_gives_a_shard_only_what_it_did_not_confirm() {
        let json = r#"{"ts":1700000000000,"game_id":"g","env":"prod","event":"login","user_id":"u"}"#;
        let field = |k: &str, v: &[u8]| (k.as_bytes().to_vec(), v.to_vec());
        let entry = |id: &str| Entry {
            stream: StreamKind::Events,
            id: id.into(),
            fields: vec![field(FIELD_CROUPIER_DATA, json.as_bytes())],
        };
        let mut sink = Sink::new(StreamKind::Events, 1, false);
        let mut confirmed = Confirmed::new(3, 1);
        assert!(!confirmed.table_rows_stored(0));
        confirmed.raise(&[0, 1], 0, TABLE);
        confirmed.raise(&[1], 0, BOTH);
        confirmed.raise(&[0], 0, NOTHING);
        assert!(confirmed.table_rows_stored(0) && confirmed.table_rows_stored(1) && !confirmed.table_rows_stored(2));
        // Out of range: nothing confirmed, nothing noted.
        confirmed.raise(&[7], 0, BOTH);
        confirmed.raise(&[2], 3, BOTH);
        assert_eq!((confirmed.get(7, 0), confirmed.get(2, 3), confirmed.get(2, 0)), (NOTHING, NOTHING, NOTHING));
        let day = 19_675;
        let pushed = |sink: &mut Sink, i: usize| {
            for r in &mut sink.rows {
                r.clear();
            }
            for d in &mut sink.user_days {
                d.clear();
            }
            sink.pushing = vec![confirmed.get(i, 0)];
            sink.push(&entry(&format!("{i}-0"))).expect("rows");
            let folded = sink.user_days[0].get(day, "g", "prod", "u").map_or(0, |c| c.events);
            (sink.rows[0].count(), folded)
        };
        assert_eq!(pushed(&mut sink, 0), (0, 1), "events stored: only its user_days rows");
        assert_eq!(pushed(&mut sink, 1), (0, 0), "both stored: nothing");
        assert_eq!(pushed(&mut sink, 2), (1, 1), "nothing stored: both");
        // Two shards: stored on one only is not stored.
        let mut two = Confirmed::new(1, 2);
        two.raise(&[0], 1, TABLE);
        assert!(!two.table_rows_stored(0));
        two.raise(&[0], 0, BOTH);
        assert!(two.table_rows_stored(0));
    }

    #[test]
    fn payment_days_are_noted_once_each_in_linear_time() {
        let mut days = DaySet::new();
        for i in 0..200_000u32 {
            let env = ["e0", "e1", "e2", "e3"][(i % 4) as usize];
            note_day(&mut days, "g", env, i);
            note_day(&mut days, "g", env, i);
        }
        let n: usize = days.values().flat_map(|e| e.values()).map(|d| d.len()).sum();
        assert_eq!(n, 200_000);
    }
}
