//! Real-time aggregation on a worker shard: HyperLogLog sketches of players (online per
//! minute, DAU, new users, payers, level starts and clears per UTC day), per game and
//! environment, merged into Croupier's `hll:*` keys in Redis, and the aggregate tables.
//!
//! - [`what`]: which events count where; keys and TTLs.
//! - [`sketches`]: the shard's sketches (updated by the shard alone) and their published
//!   readers.
//! - [`flush`]: the merge into Redis and the read-back of the merged values.
//! - [`gauges`]: the `croupier_realtime_*` gauges from the published readers.
//!
//! Order of work: a consumer adds a batch's users to the shard's sketches as it builds
//! the rows; after ClickHouse confirmed the rows and before the entries are acknowledged,
//! the touched sketches are merged into Redis ([`Aggregator::flush`]) — so an
//! acknowledged entry's players are in Redis, and a redelivered one is merged again, which
//! changes nothing (a merge is a register-wise maximum). Every `aggregate.flush_ms` the
//! shard also merges, then writes the figures Redis holds after the merge (all workers')
//! to `minute_online` and `daily_users`, and recomputes `daily_revenue` for the days whose
//! payments were confirmed, from the deduplicated `payments` table.

pub mod flush;
pub mod gauges;
pub mod sketches;
pub mod what;

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clickhouse::aggregates::{self, DayRow, MinuteRow};
use crate::clickhouse::connection::{ChOptions, Connection};
use crate::redis::connection::RedisClient;
use flush::Wanted;
use sketches::{Dirty, Published, Sketches};
use what::Kind;

/// A day of a game and environment.
type DayKey = (Arc<str>, Arc<str>, u32);

/// Figures read from Redis, waiting to be written to ClickHouse (the latest of each).
#[derive(Default)]
struct Figures {
    minutes: HashMap<DayKey, MinuteRow>,
    days: HashMap<DayKey, DayRow>,
    /// Days whose payments ClickHouse confirmed since `daily_revenue` was last computed.
    revenue: HashSet<(String, String, u32)>,
}

/// A worker shard's aggregation: its sketches, its Redis connection for merging, and
/// the figures waiting for ClickHouse.
pub struct Aggregator {
    sketches: RefCell<Sketches>,
    redis: RedisClient,
    flushing: Cell<bool>,
    figures: RefCell<Figures>,
    /// Whether this shard still has to recompute the revenue of recently paid days (shard
    /// 0, once per start): a worker killed after acknowledging payments but before their
    /// day's recompute left `daily_revenue` behind, and no later payment may come.
    reconcile: Cell<bool>,
}

impl Aggregator {
    /// Shard `shard`'s aggregation, publishing its sketches' readers in `published`,
    /// holding at most `max_sketches` sketches, and merging through `redis`.
    pub fn new(shard: usize, published: Arc<Published>, max_sketches: usize, redis: RedisClient) -> Rc<Aggregator> {
        Rc::new(Aggregator {
            sketches: RefCell::new(Sketches::new(shard, published, max_sketches)),
            redis,
            flushing: Cell::new(false),
            figures: RefCell::new(Figures::default()),
            reconcile: Cell::new(shard == 0),
        })
    }

    /// The sketches, to add to (never held across an await).
    pub fn sketches(&self) -> RefMut<'_, Sketches> {
        self.sketches.borrow_mut()
    }

    /// Days (game, environment, UTC day) whose payments ClickHouse has just confirmed:
    /// their `daily_revenue` is recomputed at the next flush.
    pub fn revenue_confirmed(&self, days: impl IntoIterator<Item = (String, String, u32)>) {
        self.figures.borrow_mut().revenue.extend(days);
    }

    /// Makes sure every add made so far is merged into Redis: waits for a merge in
    /// progress, then merges what is still unmerged. `Err` when Redis did not take it
    /// (the sketches stay unmerged and are merged again later).
    pub async fn flush(&self) -> Result<(), String> {
        loop {
            if self.flushing.get() {
                monoio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            if !self.sketches.borrow().is_dirty() {
                return Ok(());
            }
            return self.flush_once().await;
        }
    }

    async fn flush_once(&self) -> Result<(), String> {
        self.flushing.set(true);
        let dirty = self.sketches.borrow_mut().take_dirty();
        let groups = read_groups(&dirty);
        let result = async {
            flush::merge(&self.redis, &dirty).await?;
            flush::read_back(&self.redis, &groups).await
        }
        .await;
        self.flushing.set(false);
        let back = match result {
            Ok(back) => back,
            Err(e) => {
                self.sketches.borrow_mut().redirty(&dirty);
                return Err(e);
            }
        };
        let mut sketches = self.sketches.borrow_mut();
        let mut figures = self.figures.borrow_mut();
        for r in back {
            let Some(sketch) = &r.sketch else { continue };
            // Keys read for the gauges only get a sketch of their own (kept until evicted).
            sketches.merge_back(r.kind, &r.game, &r.env, r.period, sketch, !r.table);
            if !r.table {
                continue;
            }
            let count = sketch.count();
            let key = (r.game.clone(), r.env.clone(), r.period);
            if r.kind.per_minute() {
                figures.minutes.insert(
                    key,
                    MinuteRow {
                        minute: r.period,
                        game: r.game.to_string(),
                        env: r.env.to_string(),
                        online: u32::try_from(count).unwrap_or(u32::MAX),
                        version: r.version,
                    },
                );
                continue;
            }
            let row = figures.days.entry(key).or_insert_with(|| DayRow {
                day: r.period,
                game: r.game.to_string(),
                env: r.env.to_string(),
                dau: 0,
                new_users: 0,
                payers: 0,
                version: r.version,
            });
            if row.version != r.version {
                // A later reading of the day: start from it.
                *row = DayRow { version: r.version, dau: 0, new_users: 0, payers: 0, ..row.clone() };
            }
            match r.kind {
                Kind::Dau => row.dau = count,
                Kind::New => row.new_users = count,
                Kind::Payers => row.payers = count,
                _ => {}
            }
        }
        Ok(())
    }

    /// Queues the recompute of recently paid days, once ([`Aggregator::reconcile`]).
    async fn reconcile(&self, ch: &mut Option<Connection>, opts: &ChOptions) -> Result<(), String> {
        if !self.reconcile.get() {
            return Ok(());
        }
        if ch.is_none() {
            *ch = Some(Connection::connect(opts).await.map_err(|e| e.to_string())?);
        }
        let Some(conn) = ch.as_mut() else { return Err("no ClickHouse connection".to_owned()) };
        match aggregates::recent_payment_days(conn).await {
            Ok(days) => {
                tracing::debug!(days = days.len(), "recomputing the revenue of recently paid days");
                self.revenue_confirmed(days);
                self.reconcile.set(false);
                Ok(())
            }
            Err(e) => {
                *ch = None;
                Err(e.to_string())
            }
        }
    }

    /// Writes the figures waiting for ClickHouse; those not written wait for the next
    /// call.
    async fn write_tables(&self, ch: &mut Option<Connection>, opts: &ChOptions) -> Result<(), String> {
        let (minutes, days, revenue) = {
            let mut f = self.figures.borrow_mut();
            if f.minutes.is_empty() && f.days.is_empty() && f.revenue.is_empty() {
                return Ok(());
            }
            (std::mem::take(&mut f.minutes), std::mem::take(&mut f.days), std::mem::take(&mut f.revenue))
        };
        let result = async {
            if ch.is_none() {
                *ch = Some(Connection::connect(opts).await.map_err(|e| e.to_string())?);
            }
            let Some(conn) = ch.as_mut() else { return Err("no ClickHouse connection".to_owned()) };
            let m: Vec<MinuteRow> = minutes.values().cloned().collect();
            let d: Vec<DayRow> = days.values().cloned().collect();
            aggregates::write_figures(conn, &m, &d).await.map_err(|e| e.to_string())?;
            for (game, env, day) in &revenue {
                aggregates::write_revenue(conn, game, env, *day).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            *ch = None;
            // Put back what was taken, unless a later reading came meanwhile.
            let mut f = self.figures.borrow_mut();
            for (k, v) in minutes {
                f.minutes.entry(k).or_insert(v);
            }
            for (k, v) in days {
                f.days.entry(k).or_insert(v);
            }
            f.revenue.extend(revenue);
        }
        result
    }

    /// One round: merge into Redis, drop old clean sketches, write the tables.
    async fn round(&self, ch: &mut Option<Connection>, opts: &ChOptions) {
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "real-time sketches not merged into Redis; retried at the next flush");
        }
        let over = {
            let mut sketches = self.sketches.borrow_mut();
            sketches.evict(crate::ingest::now_ms());
            sketches.take_over()
        };
        if over > 0 {
            tracing::warn!(
                adds = over,
                "players not counted in real-time figures that needed a new sketch: the shard holds aggregate.max_sketches sketches"
            );
        }
        if let Err(e) = self.reconcile(ch, opts).await {
            tracing::warn!(error = %e, "recently paid days not read for their revenue; retried at the next flush");
        }
        if let Err(e) = self.write_tables(ch, opts).await {
            tracing::warn!(error = %e, "aggregate tables not written; retried at the next flush");
        }
    }

    /// Flushes every `every` until `stop` is set.
    pub async fn run(self: Rc<Self>, every: Duration, opts: ChOptions, stop: Arc<AtomicBool>) {
        let mut ch = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            while started.elapsed() < every && !stop.load(Ordering::Relaxed) {
                monoio::time::sleep(every.saturating_sub(started.elapsed()).min(Duration::from_millis(50))).await;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.round(&mut ch, &opts).await;
        }
    }

    /// The last round, once the shard's consumers have stopped.
    pub async fn finish(&self, opts: &ChOptions) {
        let mut ch = None;
        self.round(&mut ch, opts).await;
    }
}

/// The keys to read back after merging `dirty`: each online minute alone, and for each
/// day touched, the day's DAU, new-users and payers keys together (one row of
/// `daily_users`), its level keys and the previous day's new users (for the live
/// figures: day-1 retention).
fn read_groups(dirty: &[Dirty]) -> Vec<Vec<Wanted>> {
    let mut groups = Vec::new();
    let mut days: Vec<DayKey> = Vec::new();
    for d in dirty {
        let want = |kind| Wanted { kind, game: d.game.clone(), env: d.env.clone(), period: d.period, table: true };
        if d.kind.per_minute() {
            groups.push(vec![want(d.kind)]);
            continue;
        }
        let key = (d.game.clone(), d.env.clone(), d.period);
        if days.contains(&key) {
            continue;
        }
        days.push(key);
        let mut group: Vec<Wanted> = Kind::ALL.iter().filter(|k| !k.per_minute()).map(|&k| want(k)).collect();
        if let Some(yesterday) = d.period.checked_sub(1) {
            group.push(Wanted { period: yesterday, table: false, ..want(Kind::New) });
        }
        groups.push(group);
    }
    groups
}
