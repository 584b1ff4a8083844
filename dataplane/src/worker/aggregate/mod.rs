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
//! Order of work: a consumer stages a batch's adds as it builds the rows and makes them
//! once ClickHouse confirmed the rows; before the entries are acknowledged, the touched
//! sketches are merged into Redis and their rows marked unwritten ([`Aggregator::flush`])
//! — so an acknowledged entry's players are in Redis, and a redelivered one is merged
//! again, which changes nothing (a merge is a register-wise maximum). Every
//! `aggregate.flush_ms` the shard also merges (every held sketch each
//! `aggregate.resend_ms`) and reads back the keys merged since its last round, as Redis
//! holds them (all workers'); at most every `aggregate.write_ms` it writes them to
//! `minute_online` and `daily_users`, and recomputes `daily_revenue` for the days whose
//! payments were confirmed, from the deduplicated `payments` table.

pub mod flush;
pub mod gauges;
pub mod sketches;
pub mod unwritten;
pub mod what;

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clickhouse::aggregates::{self, DayRow, MinuteRow};
use crate::clickhouse::connection::{ChError, ChOptions, Connection};
use crate::redis::connection::RedisClient;
use croupier_control::config::Aggregate as AggregateConfig;
use flush::Wanted;
use sketches::{Published, Sketches};
use what::Kind;

/// A day of a game and environment.
type DayKey = (Arc<str>, Arc<str>, u32);

/// A sketch's key: kind, game, environment and period.
type SketchKey = (Kind, Arc<str>, Arc<str>, u32);

/// Figures read from Redis, waiting to be written to ClickHouse (the latest of each).
#[derive(Default)]
struct Figures {
    minutes: HashMap<DayKey, MinuteRow>,
    days: HashMap<DayKey, DayRow>,
    /// Days whose `daily_revenue` the next write computes: days whose payments ClickHouse
    /// confirmed since it was last computed, and days computed before their mark was made.
    revenue: HashSet<(String, String, u32)>,
    /// Of those, the days not yet marked unwritten in Redis ([`unwritten`]).
    revenue_unmarked: HashSet<(String, String, u32)>,
    /// Of those, the days whose mark is being made (by the one flush in progress).
    revenue_marking: HashSet<(String, String, u32)>,
}

impl Figures {
    /// Moves the days to mark into the mark in progress; returns them.
    fn begin_marking(&mut self) -> Vec<(String, String, u32)> {
        let days: Vec<_> = self.revenue_unmarked.drain().collect();
        self.revenue_marking.extend(days.iter().cloned());
        days
    }

    /// Ends the mark in progress: made (`ok`), or to be made again by the next flush.
    fn end_marking(&mut self, ok: bool) {
        let days = std::mem::take(&mut self.revenue_marking);
        if !ok {
            self.revenue_unmarked.extend(days);
        }
    }

    /// The confirmed days whose `daily_revenue` to compute now: all of them. A day whose
    /// mark is still to be made or in progress also stays for the next write (and every
    /// write until one comes after its mark): this write's unmark, by a time that may come
    /// before the mark, could leave the mark, which only a computation after it removes
    /// (else it would stay until a start or the `aggregate.resend_ms` check).
    fn take_revenue(&mut self) -> HashSet<(String, String, u32)> {
        let all = self.revenue.clone();
        self.revenue.retain(|d| self.revenue_unmarked.contains(d) || self.revenue_marking.contains(d));
        all
    }
}

/// A worker shard's aggregation: its sketches, its Redis connection for merging, and
/// the figures waiting for ClickHouse.
pub struct Aggregator {
    sketches: RefCell<Sketches>,
    redis: RedisClient,
    flushing: Cell<bool>,
    figures: RefCell<Figures>,
    /// Whether this shard still has to write the rows marked unwritten in Redis (shard
    /// 0, once per start, [`unwritten`]): a worker killed after acknowledging entries but
    /// before its next write of the tables left `daily_revenue`, `minute_online` and
    /// `daily_users` behind Redis, and no later entry of the same minute or day may come.
    reconcile: Cell<bool>,
    /// Whether this shard still has to read back today's figures of every game and
    /// environment `daily_users` has a row of today for (shard 0, once per start): the live
    /// gauges of a worker just started report them at once, not each with its scope's
    /// next event (an absent gauge reads as 0 to the alerts and the boards).
    discover: Cell<bool>,
    /// The most scopes read back so: an eighth of `aggregate.max_sketches` (a scope takes
    /// up to 8 sketches), so that the shard keeps room for the day's new ones.
    discover_limit: usize,
    /// When the read was last tried (it waits on ClickHouse: tried at most every
    /// [`DISCOVER_RETRY`] while ClickHouse does not answer, not at every round).
    discover_tried: Cell<Option<Instant>>,
    /// How often shard 0 also writes the rows marked unwritten for longer than this
    /// (`aggregate.resend_ms`; none on other shards, or with `resend_ms = 0`): marks a
    /// worker killed while others run left, without waiting for a start.
    orphans_every: Option<Duration>,
    /// When shard 0 last looked for such rows.
    orphans_checked: Cell<Instant>,
    /// When the failure to read the rows left unwritten was last logged as a warning (it
    /// is retried at every flush: while Redis refuses, one warning per 10 s).
    reconcile_warned: Cell<Option<Instant>>,
    /// Whether ClickHouse is a cluster (`clickhouse.shards`): `payments` is `Distributed`
    /// ([`aggregates::revenue_sql`]).
    ch_cluster: bool,
    /// The tables are written at most this often (`aggregate.write_ms`).
    write_every: Duration,
    /// When the tables were last written (or tried).
    written: Cell<Option<Instant>>,
    /// Every held sketch is merged again this often (`aggregate.resend_ms`; none: never).
    resend_every: Option<Duration>,
    /// When every held sketch was last merged again.
    resent: Cell<Instant>,
    /// The keys merged since the last read-back (kind, game, environment, period): read
    /// back by the next round, not on the way to an acknowledgement.
    unread: RefCell<HashSet<SketchKey>>,
    /// The Redis connection's epoch the held sketches were last merged under: when it
    /// moves (a reconnect: Redis restarted or failed over, maybe losing its last writes),
    /// every held sketch is merged again before the next acknowledgement.
    merged_epoch: Cell<u64>,
    /// Every shard's readers and counters, for the control thread (merges Redis refused).
    published: Arc<Published>,
    /// `aggregate.max_envs_per_game`.
    max_envs: usize,
}

impl Aggregator {
    /// Shard `shard`'s aggregation, publishing its sketches' readers in `published`,
    /// with the settings `cfg` (`aggregate.*`), merging through `redis`; `ch_cluster`
    /// when ClickHouse is a cluster.
    pub fn new(
        shard: usize,
        published: Arc<Published>,
        cfg: &AggregateConfig,
        redis: RedisClient,
        ch_cluster: bool,
    ) -> Rc<Aggregator> {
        Rc::new(Aggregator {
            sketches: RefCell::new(Sketches::new(
                shard,
                published.clone(),
                cfg.max_sketches,
                cfg.max_sketches_per_game,
            )),
            published,
            flushing: Cell::new(false),
            figures: RefCell::new(Figures::default()),
            reconcile: Cell::new(shard == 0),
            discover: Cell::new(shard == 0),
            discover_limit: cfg.max_sketches / 8,
            discover_tried: Cell::new(None),
            orphans_every: (shard == 0 && cfg.resend_ms > 0).then(|| Duration::from_millis(cfg.resend_ms)),
            orphans_checked: Cell::new(Instant::now()),
            reconcile_warned: Cell::new(None),
            ch_cluster,
            write_every: Duration::from_millis(cfg.write_ms),
            written: Cell::new(None),
            resend_every: (cfg.resend_ms > 0).then(|| Duration::from_millis(cfg.resend_ms)),
            resent: Cell::new(Instant::now()),
            unread: RefCell::new(HashSet::new()),
            merged_epoch: Cell::new(redis.epoch().get()),
            redis,
            max_envs: cfg.max_envs_per_game,
        })
    }

    /// The sketches, to add to (never held across an await).
    pub fn sketches(&self) -> RefMut<'_, Sketches> {
        self.sketches.borrow_mut()
    }

    /// Days (game, environment, UTC day) whose payments ClickHouse has just confirmed:
    /// marked unwritten in Redis by the next [`Aggregator::flush`] (which the consumer
    /// awaits before acknowledging), their `daily_revenue` recomputed at the next write
    /// (and at every write until one comes after their mark).
    pub fn revenue_confirmed(&self, days: impl IntoIterator<Item = (String, String, u32)>) {
        let mut f = self.figures.borrow_mut();
        for d in days {
            f.revenue.insert(d.clone());
            f.revenue_unmarked.insert(d);
        }
    }

    /// Makes sure every add made so far is merged into Redis: waits for a merge in
    /// progress, then merges what is still unmerged. `Err` when Redis did not take it
    /// (the sketches stay unmerged and are merged again later).
    ///
    /// When the Redis connection's epoch moved since the last merge (a reconnect: Redis
    /// may have restarted from an older AOF, or a replica that missed the last writes
    /// was promoted), every held sketch is merged again first, and again if it moves
    /// during the merge: an entry is never acknowledged while its players may be missing
    /// from the keys.
    pub async fn flush(&self) -> Result<(), String> {
        let epoch = self.redis.epoch();
        loop {
            if self.flushing.get() {
                monoio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let now = epoch.get();
            if now != self.merged_epoch.get() {
                self.sketches.borrow_mut().redirty_all();
                // The marks of the days still to compute may be lost with the rest.
                let f = &mut *self.figures.borrow_mut();
                f.revenue_unmarked.extend(f.revenue.iter().cloned());
                self.merged_epoch.set(now);
            }
            if !self.sketches.borrow().is_dirty() && self.figures.borrow().revenue_unmarked.is_empty() {
                return Ok(());
            }
            self.flush_once().await?;
            if epoch.get() == now {
                return Ok(());
            }
        }
    }

    async fn flush_once(&self) -> Result<(), String> {
        self.flushing.set(true);
        // No eviction until the merge is known made or the sketches are dirty again: it
        // would drop sketches that are clean only because their values are in flight,
        // and a failed merge could not mark them dirty again — their players, maybe of
        // entries another consumer then acknowledges, would never reach Redis.
        let dirty = {
            let mut sketches = self.sketches.borrow_mut();
            sketches.begin_flush();
            sketches.take_dirty()
        };
        let dirty = match self.admit(dirty).await {
            Ok(dirty) => dirty,
            Err((e, dirty)) => {
                self.flushing.set(false);
                let mut sketches = self.sketches.borrow_mut();
                sketches.redirty(&dirty);
                sketches.end_flush();
                return Err(e);
            }
        };
        let revenue = self.figures.borrow_mut().begin_marking();
        // The rows these merges change, marked after the merges and before anything is
        // acknowledged: a worker killed before it writes them leaves them named in Redis.
        let mut rows: HashSet<unwritten::Unwritten> = dirty
            .iter()
            .map(|d| unwritten::Unwritten {
                row: unwritten::Row::of(d.kind),
                game: d.game.to_string(),
                env: d.env.to_string(),
                period: d.period,
            })
            .collect();
        rows.extend(revenue.iter().map(|(game, env, day)| unwritten::Unwritten {
            row: unwritten::Row::Revenue,
            game: game.clone(),
            env: env.clone(),
            period: *day,
        }));
        let rows: Vec<unwritten::Unwritten> = rows.into_iter().collect();
        // The read-back is not on the way to an acknowledgement: the round makes it.
        let result = async {
            let refused = flush::merge(&self.redis, &dirty).await?;
            self.published.merges_refused(refused);
            unwritten::mark(&self.redis, &rows).await
        }
        .await;
        self.flushing.set(false);
        if let Err(e) = result {
            let mut sketches = self.sketches.borrow_mut();
            sketches.redirty(&dirty);
            sketches.end_flush();
            self.figures.borrow_mut().end_marking(false);
            return Err(e);
        }
        self.figures.borrow_mut().end_marking(true);
        self.unread.borrow_mut().extend(dirty.into_iter().map(|d| (d.kind, d.game, d.env, d.period)));
        self.sketches.borrow_mut().end_flush();
        Ok(())
    }

    /// The sketches of `dirty` whose environments may have real-time keys: environments
    /// not asked for yet (or an hour ago) are asked of Redis first
    /// (`aggregate.max_envs_per_game`, every worker's); the sketches of those refused are
    /// dropped unmerged. `Err` (with `dirty`, to mark dirty again) when Redis did not
    /// answer.
    async fn admit(&self, dirty: Vec<sketches::Dirty>) -> Result<Vec<sketches::Dirty>, (String, Vec<sketches::Dirty>)> {
        let now = crate::ingest::now_ms();
        let (now_minute, today) = (what::minute_of(now), what::day_of(now));
        let asks = self.sketches.borrow().to_admit(&dirty, now_minute);
        let mut refused: HashSet<(Arc<str>, Arc<str>)> = HashSet::new();
        for (game, envs) in asks {
            let verdicts = match flush::admit(&self.redis, &game, &envs, self.max_envs, today).await {
                Ok(v) => v,
                Err(e) => return Err((format!("environments' admission: {e}"), dirty)),
            };
            let mut sketches = self.sketches.borrow_mut();
            for (env, ok) in envs.into_iter().zip(verdicts) {
                if ok {
                    sketches.admit(&game, &env, now_minute);
                } else {
                    refused.insert((game.clone(), env));
                }
            }
        }
        if refused.is_empty() {
            return Ok(dirty);
        }
        let mut sketches = self.sketches.borrow_mut();
        for (game, env) in &refused {
            sketches.refuse_env(game, env, now_minute);
        }
        let games: std::collections::BTreeSet<&str> = refused.iter().map(|(g, _)| &**g).collect();
        if !crate::redis::auth::recently_logged(format!("envs refused {games:?}")) {
            tracing::warn!(
                games = ?games,
                environments = refused.len(),
                max_envs_per_game = self.max_envs,
                "environments past aggregate.max_envs_per_game are not counted in the real-time figures"
            );
        }
        Ok(dirty.into_iter().filter(|d| !refused.contains(&(d.game.clone(), d.env.clone()))).collect())
    }

    /// Reads back the keys merged since the last call (the all-workers values: the
    /// shard's sketches are raised to them, and the table figures kept for the next
    /// write). On an error they are read at the next call.
    async fn read_back_merged(&self) -> Result<(), String> {
        let touched: Vec<SketchKey> = self.unread.borrow_mut().drain().collect();
        if touched.is_empty() {
            return Ok(());
        }
        let groups = read_groups(touched.iter().map(|(k, g, e, p)| (*k, g, e, *p)));
        match flush::read_back(&self.redis, &groups).await {
            Ok(back) => {
                let empty = self.note_figures(back);
                // Rows of 0 are not written; their marks go (a later mark stays).
                if !empty.is_empty() {
                    if let Err(e) = unwritten::unmark(&self.redis, &empty).await {
                        tracing::warn!(error = %e, "rows of 0 left out still marked unwritten in Redis");
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.unread.borrow_mut().extend(touched);
                Err(e)
            }
        }
    }

    /// Raises the shard's sketches to the merged values read back, and keeps the table
    /// figures among them for the next write (a later reading of a figure replaces an
    /// earlier one). Minutes of 0 and days of 0 everywhere are left out: their keys are
    /// absent (expired, never written, or lost by Redis between the merge and this
    /// reading, which comes at the next round), and a row of 0 would replace the right
    /// one in ClickHouse for good. Returns those rows left out, with their reading's time
    /// (to unmark them).
    fn note_figures(&self, back: Vec<flush::ReadBack>) -> Vec<(unwritten::Unwritten, u64)> {
        let mut minutes: HashMap<DayKey, MinuteRow> = HashMap::new();
        let mut days: HashMap<DayKey, DayRow> = HashMap::new();
        // Days one of whose `daily_users` keys could not be read (another type, a
        // malformed value): their row is not written rather than written with a 0.
        let mut unreadable: HashSet<DayKey> = HashSet::new();
        let mut sketches = self.sketches.borrow_mut();
        let today = what::day_of(crate::ingest::now_ms());
        for r in back {
            let Some(sketch) = &r.sketch else {
                if r.table && matches!(r.kind, Kind::Dau | Kind::New | Kind::Payers) {
                    unreadable.insert((r.game.clone(), r.env.clone(), r.period));
                }
                continue;
            };
            // Keys read for the gauges only get a sketch of their own (kept until evicted),
            // and so does a figure of today this shard holds no sketch of but Redis
            // counts players in: after a restart, the day's payers and level clears are
            // reported again with the scope's first event, not only with its next payment
            // or clear (an absent gauge reads as 0 to the alerts). Only today's: the
            // gauges read no other day, and each such sketch takes room in the bounds.
            let create = !r.table || (!r.kind.per_minute() && r.period == today && !sketch.is_empty());
            sketches.merge_back(r.kind, &r.game, &r.env, r.period, sketch, create);
            if !r.table {
                continue;
            }
            let count = sketch.count();
            let key = (r.game.clone(), r.env.clone(), r.period);
            if r.kind.per_minute() {
                let online = u32::try_from(count).unwrap_or(u32::MAX);
                let row = MinuteRow {
                    minute: r.period,
                    game: r.game.to_string(),
                    env: r.env.to_string(),
                    online,
                    version: r.version,
                };
                minutes.insert(key, row);
                continue;
            }
            let row = days.entry(key).or_insert_with(|| DayRow {
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
        days.retain(|k, _| !unreadable.contains(k));
        let mut empty = Vec::new();
        let left_out = |row, (game, env, period): &DayKey, version| {
            (unwritten::Unwritten { row, game: game.to_string(), env: env.to_string(), period: *period }, version)
        };
        minutes.retain(|k, m| {
            let keep = m.online > 0;
            if !keep {
                empty.push(left_out(unwritten::Row::Minute, k, m.version));
            }
            keep
        });
        days.retain(|k, d| {
            let keep = d.dau > 0 || d.new_users > 0 || d.payers > 0;
            if !keep {
                empty.push(left_out(unwritten::Row::Day, k, d.version));
            }
            keep
        });
        let mut figures = self.figures.borrow_mut();
        for (k, m) in minutes {
            match figures.minutes.get(&k) {
                Some(old) if old.version > m.version => {}
                _ => {
                    figures.minutes.insert(k, m);
                }
            }
        }
        for (k, d) in days {
            match figures.days.get(&k) {
                Some(old) if old.version > d.version => {}
                _ => {
                    figures.days.insert(k, d);
                }
            }
        }
        // A row with figures still waiting to be written keeps its mark.
        empty.retain(|(u, _)| {
            let key: DayKey = (u.game.as_str().into(), u.env.as_str().into(), u.period);
            match u.row {
                unwritten::Row::Minute => !figures.minutes.contains_key(&key),
                _ => !figures.days.contains_key(&key),
            }
        });
        empty
    }

    /// Reads the rows marked unwritten in Redis ([`unwritten`]; with `min_age`, only
    /// those last marked at least that long ago), reads their minutes' and days' figures
    /// back from Redis and queues them, and the revenue of their days, for the next
    /// write. Marked rows whose keys are gone (expired, or never readable) are unmarked at
    /// once. Shard 0, once per start and every `aggregate.resend_ms`.
    async fn reconcile(&self, min_age: Option<Duration>) -> Result<(), String> {
        let marked = unwritten::read(&self.redis, min_age).await?;
        if marked.is_empty() {
            return Ok(());
        }
        // One Arc per game and environment.
        let mut names: HashMap<(String, String), (Arc<str>, Arc<str>)> = HashMap::new();
        let mut touched: Vec<(Kind, Arc<str>, Arc<str>, u32)> = Vec::new();
        let mut paid = Vec::new();
        for u in &marked {
            let (game, env) = names
                .entry((u.game.clone(), u.env.clone()))
                .or_insert_with(|| (u.game.as_str().into(), u.env.as_str().into()))
                .clone();
            let kind = match u.row {
                unwritten::Row::Minute => Kind::Online,
                unwritten::Row::Day => Kind::Dau,
                unwritten::Row::Revenue => {
                    paid.push((u.game.clone(), u.env.clone(), u.period));
                    Kind::Dau
                }
            };
            touched.push((kind, game, env, u.period));
        }
        let groups = read_groups(touched.iter().map(|(k, g, e, p)| (*k, g, e, *p)));
        let back = flush::read_back(&self.redis, &groups).await?;
        // The reading's time of each minute and day read.
        let read_at: HashMap<(unwritten::Row, &str, &str, u32), u64> = back
            .iter()
            .filter(|r| r.table)
            .map(|r| ((unwritten::Row::of(r.kind), &*r.game, &*r.env, r.period), r.version))
            .collect();
        tracing::debug!(marked = marked.len(), paid_days = paid.len(), "rows left unwritten read again from Redis");
        self.note_figures(back.clone());
        let gone: Vec<(unwritten::Unwritten, u64)> = {
            let f = self.figures.borrow();
            marked
                .iter()
                .filter(|u| u.row != unwritten::Row::Revenue)
                .filter_map(|u| {
                    let version = *read_at.get(&(u.row, u.game.as_str(), u.env.as_str(), u.period))?;
                    let key: DayKey = (u.game.as_str().into(), u.env.as_str().into(), u.period);
                    let queued = match u.row {
                        unwritten::Row::Minute => f.minutes.contains_key(&key),
                        _ => f.days.contains_key(&key),
                    };
                    (!queued).then(|| (u.clone(), version))
                })
                .collect()
        };
        if !gone.is_empty() {
            unwritten::unmark(&self.redis, &gone).await?;
        }
        // Already marked: recomputed at the next write, not marked again.
        self.figures.borrow_mut().revenue.extend(paid);
        Ok(())
    }

    /// Marks the revenue of `days` unwritten in Redis now, without computing it: the days
    /// a batch's orders are on, before the insert that may move them. The computation
    /// comes once the insert is confirmed ([`Aggregator::revenue_confirmed`]); if the
    /// worker dies in between, the mark has the next start compute them.
    pub async fn mark_revenue_unwritten(&self, days: &[(String, String, u32)]) -> Result<(), String> {
        let rows: Vec<unwritten::Unwritten> = days
            .iter()
            .map(|(game, env, period)| unwritten::Unwritten {
                row: unwritten::Row::Revenue,
                game: game.clone(),
                env: env.clone(),
                period: *period,
            })
            .collect();
        unwritten::mark(&self.redis, &rows).await
    }

    /// Writes the figures waiting for ClickHouse, each raised to the row the table
    /// already holds ([`aggregates::write_figures`]: a key Redis lost and then filled
    /// again never lowers a row), then the revenue days. The two are apart: rows
    /// ClickHouse confirmed are unmarked whatever happens to the rest, and only what was
    /// not written waits for the next call (a revenue statement that keeps failing never
    /// holds back, nor piles up, the minutes and days).
    async fn write_tables(&self, ch: &mut Option<Connection>, opts: &ChOptions) -> Result<(), String> {
        let (minutes, days, revenue) = {
            let mut f = self.figures.borrow_mut();
            let revenue = f.take_revenue();
            if f.minutes.is_empty() && f.days.is_empty() && revenue.is_empty() {
                return Ok(());
            }
            (std::mem::take(&mut f.minutes), std::mem::take(&mut f.days), revenue)
        };
        let conn = match connected(ch, opts).await {
            Ok(c) => c,
            Err(e) => {
                self.put_back_figures(minutes, days);
                self.put_back_revenue(revenue);
                return Err(e);
            }
        };
        let mut failed = None;
        if !minutes.is_empty() || !days.is_empty() {
            let m: Vec<MinuteRow> = minutes.values().cloned().collect();
            let d: Vec<DayRow> = days.values().cloned().collect();
            match aggregates::write_figures(conn, &m, &d).await {
                Ok(()) => {
                    let minutes = m.into_iter().map(|r| {
                        let row = unwritten::Row::Minute;
                        (unwritten::Unwritten { row, game: r.game, env: r.env, period: r.minute }, r.version)
                    });
                    let days = d.into_iter().map(|r| {
                        let row = unwritten::Row::Day;
                        (unwritten::Unwritten { row, game: r.game, env: r.env, period: r.day }, r.version)
                    });
                    self.unmark_written(&minutes.chain(days).collect::<Vec<_>>()).await;
                }
                Err(e) => {
                    self.put_back_figures(minutes, days);
                    failed = Some(e);
                }
            }
        }
        // After a refusal the connection serves on; after any other error it may be in
        // any state: a new one next time.
        let broken = |e: &ChError| !matches!(e, ChError::Server(_));
        let mut reset = failed.as_ref().is_some_and(broken);
        let mut failed = failed.map(|e| e.to_string());
        if reset {
            self.put_back_revenue(revenue);
        } else if !revenue.is_empty() {
            match unwritten::time(&self.redis).await {
                Ok(version) => {
                    if let Err(e) = self.write_revenue(conn, revenue, version).await {
                        reset |= broken(&e);
                        failed = failed.or(Some(e.to_string()));
                    }
                }
                Err(e) => {
                    self.put_back_revenue(revenue);
                    failed = failed.or(Some(e));
                }
            }
        }
        if reset {
            *ch = None;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Recomputes the revenue of `days`, [`aggregates::REVENUE_DAYS_PER_INSERT`] per
    /// statement, as of `version` (Redis's time, taken after their payments were
    /// confirmed and before the computation: orders the computations, and no later mark
    /// is removed). A statement the server refuses leaves its days for the next write
    /// and the others go on; a broken connection leaves every day not yet written.
    async fn write_revenue(
        &self,
        conn: &mut Connection,
        days: HashSet<(String, String, u32)>,
        version: u64,
    ) -> Result<(), ChError> {
        let mut days: Vec<(String, String, u32)> = days.into_iter().collect();
        days.sort_unstable();
        let mut first_error = None;
        let mut chunks = days.chunks(aggregates::REVENUE_DAYS_PER_INSERT);
        for chunk in chunks.by_ref() {
            match aggregates::write_revenue(conn, chunk, version, self.ch_cluster).await {
                Ok(()) => {
                    let written: Vec<_> = chunk
                        .iter()
                        .map(|(game, env, period)| {
                            let (game, env, period) = (game.clone(), env.clone(), *period);
                            (unwritten::Unwritten { row: unwritten::Row::Revenue, game, env, period }, version)
                        })
                        .collect();
                    self.unmark_written(&written).await;
                }
                Err(e) => {
                    self.put_back_revenue(chunk.iter().cloned().collect());
                    let refused = matches!(e, ChError::Server(_));
                    first_error = first_error.or(Some(e));
                    if !refused {
                        break;
                    }
                }
            }
        }
        for rest in chunks {
            self.put_back_revenue(rest.iter().cloned().collect());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the marks of rows ClickHouse confirmed (as of the versions written).
    async fn unmark_written(&self, written: &[(unwritten::Unwritten, u64)]) {
        // Not fatal: a row left marked is written again at a start.
        if let Err(e) = unwritten::unmark(&self.redis, written).await {
            tracing::warn!(error = %e, "rows written to the aggregate tables still marked unwritten in Redis");
        }
    }

    /// Puts back minutes and days not written, unless a later reading came meanwhile.
    fn put_back_figures(&self, minutes: HashMap<DayKey, MinuteRow>, days: HashMap<DayKey, DayRow>) {
        let mut f = self.figures.borrow_mut();
        for (k, v) in minutes {
            f.minutes.entry(k).or_insert(v);
        }
        for (k, v) in days {
            f.days.entry(k).or_insert(v);
        }
    }

    /// Puts back revenue days not written, to be marked again too: a reconnect while the
    /// write was under way may have lost their marks, and the days were not in `revenue`
    /// to be marked again then.
    fn put_back_revenue(&self, days: HashSet<(String, String, u32)>) {
        let mut f = self.figures.borrow_mut();
        f.revenue_unmarked.extend(days.iter().cloned());
        f.revenue.extend(days);
    }

    /// One round: merge into Redis (every held sketch when `aggregate.resend_ms` has
    /// passed), drop old clean sketches, write the tables when `aggregate.write_ms` has
    /// passed since the last write (or `last`).
    async fn round(&self, ch: &mut Option<Connection>, opts: &ChOptions, last: bool) {
        if self.resend_every.is_some_and(|every| self.resent.get().elapsed() >= every) {
            // Keys Redis lost (a restart without fsync, a failover) come back; merging
            // again what Redis holds changes nothing.
            self.resent.set(Instant::now());
            self.sketches.borrow_mut().redirty_all();
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "real-time sketches not merged into Redis; retried at the next flush");
        }
        if let Err(e) = self.read_back_merged().await {
            tracing::warn!(error = %e, "merged figures not read back from Redis; read at the next flush");
        }
        let refused = {
            let mut sketches = self.sketches.borrow_mut();
            // Before the eviction, which may drop the share (and the name) of a game.
            let refused = sketches.take_refused();
            sketches.evict(crate::ingest::now_ms());
            refused
        };
        // At most every 10 s (a client inventing environments refuses adds every round).
        if refused.total > 0 && !crate::redis::auth::recently_logged("realtime adds refused".into()) {
            let games: Vec<String> = refused.by_game.iter().take(10).map(|(g, n)| format!("{g}={n}")).collect();
            tracing::warn!(
                adds = refused.total,
                games = %games.join(" "),
                "players not counted in real-time figures: the game holds aggregate.max_sketches_per_game \
                 sketches on this worker shard, or the shard aggregate.max_sketches, or their environment is past \
                 aggregate.max_envs_per_game"
            );
        }
        let start = self.reconcile.get();
        let due = !start && self.orphans_every.is_some_and(|every| self.orphans_checked.get().elapsed() >= every);
        if start || due {
            self.orphans_checked.set(Instant::now());
            match self.reconcile(if start { None } else { self.orphans_every }).await {
                Ok(()) => self.reconcile.set(false),
                Err(e) if self.reconcile_warned.get().is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) => {
                    self.reconcile_warned.set(Some(Instant::now()));
                    tracing::warn!(error = %e, "rows left unwritten not read from Redis; retried at the next flush")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "rows left unwritten not read from Redis; retried at the next flush")
                }
            }
        }
        if self.discover.get() && !last && self.discover_tried.get().is_none_or(|t| t.elapsed() >= DISCOVER_RETRY) {
            let first = self.discover_tried.get().is_none();
            self.discover_tried.set(Some(Instant::now()));
            match self.discover_today(ch, opts).await {
                Ok(n) => {
                    self.discover.set(false);
                    tracing::debug!(scopes = n, "today's figures to read back for the live gauges");
                }
                Err(e) if first => tracing::warn!(
                    error = %e,
                    "today's games not read from daily_users: the live gauges come with each game's next event \
                     until ClickHouse answers (tried every 10 s)"
                ),
                Err(e) => tracing::debug!(error = %e, "today's games not read from daily_users"),
            }
        }
        if !last && self.written.get().is_some_and(|t| t.elapsed() < self.write_every) {
            return;
        }
        self.written.set(Some(Instant::now()));
        if let Err(e) = self.write_tables(ch, opts).await {
            tracing::warn!(error = %e, "aggregate tables not written; retried at the next write");
        }
    }

    /// Queues today's keys of every game and environment with a `daily_users` row today
    /// for the next read-back ([`Aggregator::discover`]); how many.
    async fn discover_today(&self, ch: &mut Option<Connection>, opts: &ChOptions) -> Result<usize, String> {
        let conn = connected(ch, opts).await?;
        let today = what::day_of(crate::ingest::now_ms());
        let scopes = match aggregates::scopes_of_day(conn, today, self.discover_limit).await {
            Ok(s) => s,
            Err(e) => {
                // The next round connects again.
                *ch = None;
                return Err(e.to_string());
            }
        };
        let n = scopes.len();
        let mut unread = self.unread.borrow_mut();
        for (game, env) in scopes {
            unread.insert((Kind::Dau, game.as_str().into(), env.as_str().into(), today));
        }
        Ok(n)
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
            self.round(&mut ch, &opts, false).await;
        }
    }

    /// The last round, once the shard's consumers have stopped.
    pub async fn finish(&self, opts: &ChOptions) {
        let mut ch = None;
        self.round(&mut ch, opts, true).await;
    }
}

/// The round's ClickHouse connection, made first when there is none.
async fn connected<'c>(ch: &'c mut Option<Connection>, opts: &ChOptions) -> Result<&'c mut Connection, String> {
    if ch.is_none() {
        *ch = Some(Connection::connect(opts).await.map_err(|e| e.to_string())?);
    }
    ch.as_mut().ok_or_else(|| "no ClickHouse connection".to_owned())
}

/// How often shard 0 tries again to read today's games from `daily_users` at a start
/// ([`Aggregator::discover`]) while ClickHouse does not answer.
const DISCOVER_RETRY: Duration = Duration::from_secs(10);

/// The keys to read back after merging sketches (`touched`: kind, game, environment,
/// period): each online minute alone, and for each day touched, the day's DAU, new-users
/// and payers keys together (one row of `daily_users`), its level keys and the previous
/// day's new users (for the live figures: day-1 retention), and for today the current and
/// previous online minutes (the online gauge).
fn read_groups<'a>(touched: impl IntoIterator<Item = (Kind, &'a Arc<str>, &'a Arc<str>, u32)>) -> Vec<Vec<Wanted>> {
    let now = crate::ingest::now_ms();
    let (today, now_minute) = (what::day_of(now), what::minute_of(now));
    let mut groups = Vec::new();
    let mut days: HashSet<DayKey> = HashSet::new();
    for (kind, game, env, period) in touched {
        let want = |kind| Wanted { kind, game: game.clone(), env: env.clone(), period, table: true };
        if kind.per_minute() {
            groups.push(vec![want(kind)]);
            continue;
        }
        if !days.insert((game.clone(), env.clone(), period)) {
            continue;
        }
        let mut group: Vec<Wanted> = Kind::ALL.iter().filter(|k| !k.per_minute()).map(|&k| want(k)).collect();
        if let Some(yesterday) = period.checked_sub(1) {
            group.push(Wanted { period: yesterday, table: false, ..want(Kind::New) });
        }
        // Today's: the current and previous online minutes too, for the gauge, which a
        // worker restarted mid-day would otherwise report only with the scope's next
        // session or heartbeat.
        if period == today {
            for minute in [now_minute.saturating_sub(1), now_minute] {
                group.push(Wanted { period: minute, table: false, ..want(Kind::Online) });
            }
        }
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revenue_of_a_day_not_marked_yet_is_computed_again_after_its_mark() {
        let day = |d| ("g".to_owned(), "prod".to_owned(), d);
        let mut f = Figures::default();
        // Confirmed, not yet marked: computed, and kept for the next write.
        f.revenue.insert(day(1));
        f.revenue_unmarked.insert(day(1));
        assert_eq!(f.take_revenue(), HashSet::from([day(1)]));
        assert_eq!(f.revenue, HashSet::from([day(1)]));
        // Its mark in progress, a second day confirmed meanwhile: both computed and kept.
        assert_eq!(f.begin_marking(), vec![day(1)]);
        f.revenue.insert(day(2));
        f.revenue_unmarked.insert(day(2));
        assert_eq!(f.take_revenue(), HashSet::from([day(1), day(2)]));
        assert_eq!(f.revenue.len(), 2);
        // The mark failed: made again by the next flush, the days still kept.
        f.end_marking(false);
        assert_eq!(f.take_revenue().len(), 2);
        let mut marking = f.begin_marking();
        marking.sort();
        assert_eq!(marking, vec![day(1), day(2)]);
        f.end_marking(true);
        // Marked, and a third day confirmed since: all computed, only the third kept.
        f.revenue.insert(day(3));
        f.revenue_unmarked.insert(day(3));
        assert_eq!(f.take_revenue(), HashSet::from([day(1), day(2), day(3)]));
        assert_eq!(f.revenue, HashSet::from([day(3)]));
        assert_eq!(f.begin_marking(), vec![day(3)]);
        f.end_marking(true);
        assert_eq!(f.take_revenue(), HashSet::from([day(3)]));
        assert!(f.revenue.is_empty() && f.revenue_unmarked.is_empty() && f.revenue_marking.is_empty());
        assert!(f.take_revenue().is_empty());
    }
}
