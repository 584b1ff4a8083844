//! The API's ClickHouse reads: the project's own native-protocol client
//! (`crate::clickhouse::connection`), a few connections kept on the control thread, at
//! most `api.max_queries_in_flight` queries at once (one request at most half of them),
//! a request's queries all within `api.query_timeout_ms` of its start (on our side, and on
//! the server's as `max_execution_time`). Figures of complete days are remembered and read
//! again in the background before they expire ([`Reads::remembered_or_read`],
//! [`Db::refresh_due`]).
//! Why the native protocol and not ClickHouse's HTTP interface: `docs/analytics-api.md`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use croupier_protocol::clickhouse::packet::Setting;

/// The largest answer a query may return (ClickHouse's `max_result_bytes`, in its
/// uncompressed blocks). Its rows are decoded into values on the control thread, about
/// seven times its size (64 MiB of narrow rows took 2.3 s and 460 MB in a debug build):
/// at 16 MiB an answer holds that thread well under a second and ~120 MB; the routes
/// whose JSON grows with their rows bound those (`docs/analytics-api.md`).
pub const MAX_RESULT_BYTES: u64 = 16 << 20;
use crate::slots::{OwnedSlot, Slots};
use croupier_protocol::clickhouse::result::Value;

use super::error::ApiError;
use crate::clickhouse::connection::{ChError, ChOptions, Connection};

/// Queries to ClickHouse, bounded.
pub struct Db {
    opts: ChOptions,
    /// A read holds one from before it is sent until the server ended it: a read given up
    /// on holds it while its cancel is waited for ([`Db::reap`]), so that no more than
    /// `api.max_queries_in_flight` queries run on the server.
    slots: Rc<Slots>,
    /// `max_memory_usage` of every read (0: the server's own).
    memory_limit: u64,
    /// Reads given up on, for `/metrics`.
    metrics: std::sync::Arc<super::telemetry::ApiMetrics>,
    idle: RefCell<Vec<Connection>>,
    timeout: Duration,
    /// The tables are `Distributed` (`clickhouse.shards`).
    cluster: bool,
    /// `analytics.user_days` and the player tables were found filled
    /// ([`Reads::require_user_days`]).
    user_days_filled: Cell<bool>,
    /// Figures of complete days, by key ([`Reads::remembered_or_read`]).
    remembered: RefCell<HashMap<String, Remembered>>,
    /// Queries one request may run at once: half of `max_in_flight`, at least one.
    per_request: usize,
}

/// How long a figure of complete days is answered from memory
/// ([`Reads::remembered_or_read`]).
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);

/// Age at which [`Db::refresh_due`] reads a remembered figure again, before it expires.
pub const REFRESH_AFTER: Duration = Duration::from_secs(50);

/// A remembered figure no request asked for this long is forgotten (neither read again
/// nor kept): a dashboard polling less often reads it itself.
pub const FORGET_AFTER: Duration = Duration::from_secs(120);

/// The most figures [`Db::refresh_due`] reads again per call (per second).
pub const REFRESH_AT_MOST: usize = 8;

/// The longest a figure whose background reads failed waits before the next one (the
/// wait doubles from 1 s after each failure in a row).
pub const RETRY_AFTER_AT_MOST: Duration = Duration::from_secs(60);

/// The unsigned integer in column `i` of a row (0 when absent), as the routes read
/// their counts.
pub fn u(r: &[Value], i: usize) -> u64 {
    r.get(i).map_or(0, Value::as_u64)
}

/// The most figures kept in memory; past it the one asked for least recently is forgotten.
const REMEMBER_AT_MOST: usize = 4096;

/// How a remembered figure is read: its query, and how its rows become the figures
/// (`decode(rows, arg)`).
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The `SELECT`.
    pub sql: String,
    /// Its rows to the figures.
    pub decode: fn(&[Vec<Value>], i64) -> Vec<f64>,
    /// Passed to `decode`.
    pub arg: i64,
}

/// A remembered figure.
struct Remembered {
    /// When its read began (rows arriving later may be missing from it).
    at: Instant,
    /// When a request last asked for it.
    asked: Instant,
    figures: Vec<f64>,
    recipe: Recipe,
    /// Reads of it in flight (a request's or [`Db::refresh_due`]'s).
    reading: u32,
    /// [`Db::refresh_due`]'s reads of it that failed in a row.
    failed: u32,
    /// [`Db::refresh_due`] reads it again no sooner than this (after failed reads).
    retry_at: Instant,
}

/// Counts a read of `key` in flight while it lives (read done, failed or abandoned).
struct Reading<'a> {
    db: &'a Db,
    key: &'a str,
    /// `key` was remembered when the read began (and counted).
    counted: bool,
}

impl<'a> Reading<'a> {
    fn start(db: &'a Db, key: &'a str) -> Reading<'a> {
        let counted = match db.remembered.borrow_mut().get_mut(key) {
            Some(e) => {
                e.reading = e.reading.saturating_add(1);
                true
            }
            None => false,
        };
        Reading { db, key, counted }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        if let Some(e) = self.db.remembered.borrow_mut().get_mut(self.key) {
            e.reading = e.reading.saturating_sub(1);
        }
    }
}

/// One request's reads through [`Db`], with the rows ClickHouse read for all of them (the
/// audit log's `read_rows`), at most [`Db::per_request`] at once, all of them within
/// `api.query_timeout_ms` of the request's start.
pub struct Reads<'a> {
    db: &'a Db,
    read_rows: Cell<u64>,
    slots: Slots,
    /// One of its queries waited for a connection half of `api.query_timeout_ms` or more.
    kept_waiting: Cell<bool>,
    /// The request's start plus `api.query_timeout_ms`.
    deadline: monoio::time::Instant,
}

impl Reads<'_> {
    /// Runs a `SELECT` ([`Db`] says how) and counts the rows it read.
    pub async fn select(&self, sql: &str) -> Result<Vec<Vec<Value>>, ApiError> {
        // The request's own share first, so that one request (the overview sends seven
        // queries) leaves slots to others. Waiting for it is waiting for the request's own
        // queries, not for others': past the deadline it is 504, not 503 `busy` (unless
        // others kept one of its queries waiting: [`Reads::answer_late`]).
        let Ok(_mine) = monoio::time::timeout_at(self.deadline, self.slots.acquire()).await else {
            return Err(ApiError::QueryTimeout);
        };
        self.db.select(sql, self.deadline, true, &self.kept_waiting, &self.read_rows).await
    }

    /// The first row's first value (a query of one aggregate).
    pub async fn scalar(&self, sql: &str) -> Result<Value, ApiError> {
        let rows = self.select(sql).await?;
        Ok(rows.into_iter().next().and_then(|r| r.into_iter().next()).unwrap_or(Value::Null))
    }

    /// `Ok` once `analytics.user_days`, `daily_players` and `registered_users` hold every
    /// row of `events` (their fill marks exist; checked until they do, then remembered),
    /// else 503 `not_ready`.
    pub async fn require_user_days(&self) -> Result<(), ApiError> {
        if self.db.user_days_filled.get() {
            return Ok(());
        }
        let sql = format!(
            "SELECT count() FROM system.tables WHERE database = 'analytics' AND name IN ('{}', '{}')",
            crate::clickhouse::schema::USER_DAYS_FILLED,
            crate::clickhouse::schema::PLAYER_TABLES_FILLED
        );
        if self.scalar(&sql).await?.as_u64() < 2 {
            return Err(ApiError::NotReady("analytics.user_days, daily_players, registered_users"));
        }
        self.db.user_days_filled.set(true);
        Ok(())
    }

    /// The figures under `key`, read with `recipe` (the same key, the same recipe): for
    /// figures of complete days, which only rows arriving late for those days can change,
    /// so that a dashboard polling the overview does not read them again every few
    /// seconds. From memory when read less than [`REMEMBER_FOR`] ago, or while a read of
    /// them is in flight and they are younger than [`REMEMBER_FOR`] plus
    /// `api.query_timeout_ms` ([`Db::refresh_due`] reads them again from [`REFRESH_AFTER`]
    /// on, so a request asked for them in the last [`FORGET_AFTER`] finds them in memory
    /// while that read can still finish); else read now (its error is the answer's).
    pub async fn remembered_or_read(&self, key: String, recipe: Recipe) -> Result<Vec<f64>, ApiError> {
        {
            let mut map = self.db.remembered.borrow_mut();
            if let Some(e) = map.get_mut(&key) {
                e.asked = Instant::now();
                let age = e.at.elapsed();
                if age < REMEMBER_FOR || (e.reading > 0 && age < REMEMBER_FOR + self.db.timeout) {
                    return Ok(e.figures.clone());
                }
            }
        }
        let _reading = Reading::start(self.db, &key);
        let began = Instant::now();
        let rows = self.select(&recipe.sql).await?;
        let figures = (recipe.decode)(&rows, recipe.arg);
        self.db.remember(key.clone(), figures.clone(), recipe, began);
        Ok(figures)
    }

    /// Rows ClickHouse read for this request's queries so far.
    pub fn read_rows(&self) -> u64 {
        self.read_rows.get()
    }

    /// The request's deadline: its start plus `api.query_timeout_ms` (its Redis reads
    /// keep to it too).
    pub fn deadline(&self) -> monoio::time::Instant {
        self.deadline
    }

    /// The request's error as answered: running out of time (504) is 503 `busy` (with its
    /// `Retry-After`) when others' queries kept one of its queries waiting for a
    /// connection — until the request ended, or half of the time it had left when it
    /// asked, or more — their load's doing rather than its own queries'.
    pub fn answer_late(&self, e: ApiError) -> ApiError {
        if e == ApiError::QueryTimeout && self.kept_waiting.get() {
            ApiError::Busy
        } else {
            e
        }
    }
}

/// A read's connection, once made, and its slot: dropped while it still holds the
/// connection — the read dropped with its request, the client gone — it hands both to
/// [`Db::reap`], which cancels the query and frees the slot once the server ended it, as
/// for a read given up on at its deadline. A read that ended takes its connection out
/// first. (Dropped as the runtime itself ends, nothing can be waited for: the connection
/// is closed, which ClickHouse takes as a cancel at its next check.) The rows the server
/// had read for a read given up on count in `read_rows` too.
struct InFlight<'a> {
    db: &'a Db,
    conn: Option<Connection>,
    slot: Option<OwnedSlot>,
    read_rows: &'a Cell<u64>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Some(slot)) = (self.conn.take(), self.slot.take()) {
            self.read_rows.set(self.read_rows.get().saturating_add(conn.rows_read()));
            if crate::runtime::running() {
                self.db.reap(conn, slot);
            }
        }
    }
}

/// A query waiting for a connection: dropped before it got one (its request ended, or
/// the deadline passed), it marks its request as kept waiting.
struct Waiting<'a> {
    kept_waiting: &'a Cell<bool>,
    got: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.got {
            self.kept_waiting.set(true);
        }
    }
}

impl Db {
    /// Reads with `opts`, `max_in_flight` at once, each within `timeout`.
    pub fn new(mut opts: ChOptions, max_in_flight: usize, timeout: Duration) -> Db {
        opts.timeout = opts.timeout.min(timeout);
        Db {
            opts,
            slots: Rc::new(Slots::new(max_in_flight.max(1))),
            memory_limit: 0,
            metrics: Default::default(),
            idle: RefCell::new(Vec::new()),
            timeout,
            cluster: false,
            user_days_filled: Cell::new(false),
            remembered: RefCell::new(HashMap::new()),
            per_request: (max_in_flight / 2).max(1),
        }
    }

    /// Queries one request may run at once: half of `api.max_queries_in_flight`, at
    /// least one.
    pub fn per_request(&self) -> usize {
        self.per_request
    }

    /// Keeps `figures` under `key`, read from `began` on (see [`Reads::remembered_or_read`]).
    fn remember(&self, key: String, figures: Vec<f64>, recipe: Recipe, began: Instant) {
        let mut map = self.remembered.borrow_mut();
        if let Some(e) = map.get_mut(&key) {
            // Of two reads in flight, the one begun later wins.
            if began >= e.at {
                e.at = began;
                e.figures = figures;
                e.recipe = recipe;
            }
            e.failed = 0;
            e.retry_at = Instant::now();
            return;
        }
        // Full: the figure asked for least recently makes room (not every dashboard's
        // figures at once).
        if map.len() >= REMEMBER_AT_MOST {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.asked).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        let now = Instant::now();
        map.insert(key, Remembered { at: began, asked: now, figures, recipe, reading: 0, failed: 0, retry_at: now });
    }

    /// Whether [`Db::refresh_due`] reads `e` again now.
    fn due(e: &Remembered, now: Instant) -> bool {
        e.reading == 0 && now.saturating_duration_since(e.at) >= REFRESH_AFTER && now >= e.retry_at
    }

    /// Reads again, one after another, at most [`REFRESH_AT_MOST`] of the remembered
    /// figures (oldest first) at least [`REFRESH_AFTER`] old that a request asked for in
    /// the last [`FORGET_AFTER`] and that no read is in flight for; forgets those not asked
    /// for that long. Meanwhile requests answer the figures from memory (for
    /// `api.query_timeout_ms` past [`REMEMBER_FOR`] at most). A figure whose read failed
    /// is read again 1 s later, then 2, 4, … up to [`RETRY_AFTER_AT_MOST`] while it keeps
    /// failing; the failures of a call are logged in one line.
    pub async fn refresh_due(&self) {
        let due: Vec<(String, Recipe)> = {
            let mut map = self.remembered.borrow_mut();
            map.retain(|_, e| e.reading > 0 || e.asked.elapsed() < FORGET_AFTER);
            let now = Instant::now();
            let mut due: Vec<(Instant, &String)> =
                map.iter().filter(|(_, e)| Self::due(e, now)).map(|(k, e)| (e.at, k)).collect();
            due.sort_unstable();
            due.truncate(REFRESH_AT_MOST);
            due.into_iter().filter_map(|(_, k)| map.get(k).map(|e| (k.clone(), e.recipe.clone()))).collect()
        };
        let (mut failed, mut last_error) = (0usize, None);
        for (key, recipe) in due {
            // A request may have read it meanwhile.
            if !self.remembered.borrow().get(&key).is_some_and(|e| Self::due(e, Instant::now())) {
                continue;
            }
            let _reading = Reading::start(self, &key);
            let began = Instant::now();
            let deadline = monoio::time::Instant::now() + self.timeout;
            match self.select(&recipe.sql, deadline, false, &Cell::new(false), &Cell::new(0)).await {
                Ok(rows) => {
                    let figures = (recipe.decode)(&rows, recipe.arg);
                    if let Some(e) = self.remembered.borrow_mut().get_mut(&key) {
                        // Unless a request's read begun later finished first.
                        if began >= e.at {
                            e.at = began;
                            e.figures = figures;
                        }
                        e.failed = 0;
                    }
                }
                Err(e) => {
                    if let Some(r) = self.remembered.borrow_mut().get_mut(&key) {
                        r.failed = r.failed.saturating_add(1);
                        let wait = Duration::from_secs(1 << (r.failed - 1).min(6)).min(RETRY_AFTER_AT_MOST);
                        r.retry_at = Instant::now() + wait;
                    }
                    failed += 1;
                    last_error = Some(e);
                }
            }
        }
        if let Some(error) = last_error {
            tracing::warn!(failed, error = ?error, "remembered figures not read again yet (tried again later)");
        }
    }

    /// Calls [`Db::refresh_due`] every second until `stop` is set: the control thread's
    /// task.
    pub async fn refresh(self: Rc<Self>, stop: Rc<Cell<bool>>) {
        while !stop.get() {
            monoio::time::sleep(Duration::from_secs(1)).await;
            if !stop.get() {
                self.refresh_due().await;
            }
        }
    }

    /// Reads `Distributed` tables of a cluster (`cluster`): a subquery of `IN` or `JOIN`
    /// over one is run once and its answer sent to every shard (`GLOBAL`), rather than
    /// refused by ClickHouse (`distributed_product_mode = 'deny'`) — a user's rows are
    /// spread over the shards by event id, so a per-shard subquery would miss them.
    pub fn on_cluster(mut self, cluster: bool) -> Db {
        self.cluster = cluster;
        self
    }

    /// Reads limited to `bytes` of memory on the server (`max_memory_usage`; 0: none).
    pub fn with_memory_limit(mut self, bytes: u64) -> Db {
        self.memory_limit = bytes;
        self
    }

    /// Reads given up on counted in `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<super::telemetry::ApiMetrics>) -> Db {
        self.metrics = metrics;
        self
    }

    /// A request's reads.
    pub fn reads(&self) -> Reads<'_> {
        Reads {
            db: self,
            read_rows: Cell::new(0),
            slots: Slots::new(self.per_request),
            kept_waiting: Cell::new(false),
            deadline: monoio::time::Instant::now() + self.timeout,
        }
    }

    /// Runs a `SELECT` by `deadline`: its rows and the rows ClickHouse read for it, or why
    /// not (502 refused or failed, 504 too slow, 503 no slot free by then); `log`: a
    /// failure is logged (a request's; the background reads log theirs together);
    /// `kept_waiting` is set when it waited for a slot half of the time it had left or
    /// more, or never got one ([`Reads::answer_late`]).
    async fn select(
        &self,
        sql: &str,
        deadline: monoio::time::Instant,
        log: bool,
        kept_waiting: &Cell<bool>,
        read_rows: &Cell<u64>,
    ) -> Result<Vec<Vec<Value>>, ApiError> {
        let asked = monoio::time::Instant::now();
        if deadline <= asked {
            return Err(ApiError::QueryTimeout);
        }
        let mut waiting = Waiting { kept_waiting, got: false };
        let Ok(slot) = monoio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await else {
            return Err(ApiError::Busy);
        };
        waiting.got = true;
        // Kept waiting by others' queries for half of the time it had left or more.
        if asked.elapsed().saturating_mul(2) >= deadline.saturating_duration_since(asked) {
            kept_waiting.set(true);
        }
        self.run_select(sql, deadline, log, slot, read_rows).await
    }

    /// A read given up on (its deadline passed on our side, or its request ended without
    /// it: [`InFlight`]): its connection, which the
    /// server may still be running the query on, is cancelled in the background, and
    /// `slot` held until the server ended the query or twice `api.query_timeout_ms`
    /// passed — ClickHouse 18.16 checks `max_execution_time` only between blocks read, so a
    /// query in a long `GROUP BY` or sort runs on; were the slot freed at once, requests
    /// sent again would pile queries onto the server past `api.max_queries_in_flight`.
    /// (A read given up on as bytes arrived may have lost them with its buffer: the
    /// cancel then fails to read the answer's end and closes the connection at once, the
    /// slot freed as before.)
    fn reap(&self, mut conn: Connection, slot: OwnedSlot) {
        let within = self.timeout.saturating_mul(2);
        let metrics = self.metrics.clone();
        metrics.gave_up();
        monoio::spawn(async move {
            let ended = conn.cancel(within).await;
            metrics.given_up_ended();
            if !ended {
                tracing::warn!(
                    within_ms = within.as_millis() as u64,
                    "an analytics query given up on did not end on the server after its cancel: its connection is closed"
                );
            }
            drop(conn);
            drop(slot);
        });
    }

    /// [`Db::select`] once a connection slot is held.
    async fn run_select(
        &self,
        sql: &str,
        deadline: monoio::time::Instant,
        log: bool,
        slot: OwnedSlot,
        read_rows: &Cell<u64>,
    ) -> Result<Vec<Vec<Value>>, ApiError> {
        let left = deadline.saturating_duration_since(monoio::time::Instant::now());
        let secs = left.as_secs().max(1);
        let mut settings = vec![
            ("max_execution_time", Setting::UInt(secs)),
            // The answer is decoded into memory on the control thread: bounded.
            ("max_result_bytes", Setting::UInt(MAX_RESULT_BYTES)),
            ("result_overflow_mode", Setting::Str("throw")),
        ];
        if self.memory_limit > 0 {
            settings.push(("max_memory_usage", Setting::UInt(self.memory_limit)));
        }
        if self.cluster {
            settings.push(("distributed_product_mode", Setting::Str("global")));
        }
        // The connection the query runs on and its slot, kept past a timeout (or this
        // read's end, its request gone) to be cancelled.
        let mut held = InFlight { db: self, conn: None, slot: Some(slot), read_rows };
        let run = async {
            if let Some(conn) = self.idle.borrow_mut().pop() {
                held.conn = Some(conn);
            }
            if let Some(conn) = held.conn.as_mut() {
                let before = conn.packets_received();
                match conn.select(sql, &settings).await {
                    Ok(out) => return Ok(out),
                    // The server closed the idle connection (it restarted, or dropped idle
                    // clients) before answering anything: once more on a fresh connection.
                    Err(ChError::Io(e)) if conn.packets_received() == before => {
                        tracing::debug!(error = %e, "pooled ClickHouse connection closed; query sent again on a new one");
                    }
                    Err(e) => return Err(e),
                }
            }
            held.conn = None;
            let conn = held.conn.insert(Connection::connect(&self.opts).await?);
            conn.select(sql, &settings).await
        };
        let outcome = monoio::time::timeout(left, run).await;
        let conn = held.conn.take();
        // What the server read for it, whatever the outcome (its progress so far).
        if let Some(c) = &conn {
            read_rows.set(read_rows.get().saturating_add(c.rows_read()));
        }
        match (&outcome, conn) {
            (Ok(Ok(_)), Some(conn)) => self.idle.borrow_mut().push(conn),
            // Given up on while the server may still run it (a connection is held only
            // once made: one given up on while connecting has nothing to cancel).
            (Err(_) | Ok(Err(ChError::Timeout)), Some(conn)) => {
                if let Some(slot) = held.slot.take() {
                    self.reap(conn, slot);
                }
                return Err(ApiError::QueryTimeout);
            }
            _ => {}
        }
        drop(held);
        match outcome {
            // Decoding a large answer may itself run past the deadline.
            Ok(Ok(_)) if monoio::time::Instant::now() > deadline => Err(ApiError::QueryTimeout),
            Ok(Ok(s)) => Ok(s.rows),
            Ok(Err(ChError::Timeout)) | Err(_) => Err(ApiError::QueryTimeout),
            // 241 MEMORY_LIMIT_EXCEEDED of the query itself: past `max_query_memory_bytes`
            // (the server's or a user's total past its limit is not the request's doing:
            // a failure, below).
            Ok(Err(ChError::Server(e))) if e.code == 241 && e.message.contains("(for query)") => Err(ApiError::param(
                "end",
                "the query needs more memory than api.max_query_memory_bytes: a shorter range, fewer groups or lower limits",
            )),
            // 159 TIMEOUT_EXCEEDED: the server's own max_execution_time.
            Ok(Err(ChError::Server(e))) if e.code == 159 => Err(ApiError::QueryTimeout),
            // 396 TOO_MANY_ROWS_OR_BYTES: the answer passed MAX_RESULT_BYTES.
            Ok(Err(ChError::Server(e))) if e.code == 396 => Err(ApiError::param(
                "end",
                format!("the answer is larger than {} MiB: a shorter range or lower limits", MAX_RESULT_BYTES >> 20),
            )),
            Ok(Err(ChError::Server(e))) => {
                if log {
                    tracing::warn!(code = e.code, error = %e.message, "analytics query refused");
                }
                Err(ApiError::QueryFailed(format!("ClickHouse error {}", e.code)))
            }
            // Its text names the server's address: logged, not answered.
            Ok(Err(e)) => {
                if log {
                    tracing::warn!(error = %e, "analytics query failed");
                }
                Err(ApiError::QueryFailed("ClickHouse unavailable".into()))
            }
        }
    }
}
