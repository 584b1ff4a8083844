//! A worker shard's sketches: one per kind, game, environment and period, updated by
//! the shard alone (no locks); each one's reader is published for the control thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use croupier_protocol::hll::{hash_element, Sketch, SketchReader, SketchWriter};

use super::what::{classify, day_of, minute_of, Kind};

/// One published sketch: whose it is and a live reader of it.
#[derive(Debug, Clone)]
pub struct PublishedSketch {
    /// The worker shard that owns it.
    pub shard: usize,
    /// What it counts.
    pub kind: Kind,
    /// Game.
    pub game: Arc<str>,
    /// Environment.
    pub env: Arc<str>,
    /// Minute or day number.
    pub period: u32,
    /// Live reader.
    pub reader: SketchReader,
    /// Whether it has been raised to Redis's merged key once (made from a read-back, or
    /// read back since): before that it holds only this shard's adds, which the gauges do
    /// not show as the all-workers figure (a worker just started would read a day's
    /// players as the few it has counted itself).
    pub read_back: Arc<AtomicBool>,
}

/// The readers of every worker shard's sketches, for the control thread. Locked only when
/// a sketch is created or dropped, and by a scrape to copy the list; never per event.
#[derive(Debug, Default)]
pub struct Published {
    sketches: Mutex<Vec<PublishedSketch>>,
    /// Adds refused for want of room, per game, every shard's (at most
    /// [`REFUSED_GAMES`] games; the others under the empty name).
    refused: Mutex<BTreeMap<Arc<str>, u64>>,
    /// Sketches Redis refused to merge into their key (`PFMERGE` failed: the key holds
    /// another type, or a string that is no HyperLogLog), every shard's.
    merges_refused: std::sync::atomic::AtomicU64,
}

/// How many minutes ahead of the worker's clock an event still counts in its online
/// minute (clients' clocks run a little fast): further ahead, one event per minute would
/// make a sketch per minute, which would stay until its minute came — a game's share of
/// the shard for a day. Such an event still counts in its day's sketches.
pub const MINUTES_AHEAD: u32 = 5;

/// Games named in `croupier_realtime_adds_refused_total`; adds refused for others are
/// counted under `game=""`.
pub const REFUSED_GAMES: usize = 1_000;

impl Published {
    fn lock(&self) -> MutexGuard<'_, Vec<PublishedSketch>> {
        self.sketches.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the list.
    pub fn list(&self) -> Vec<PublishedSketch> {
        self.lock().clone()
    }

    /// Adds refused so far for want of room, per game.
    pub fn refused(&self) -> Vec<(Arc<str>, u64)> {
        let r = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.iter().map(|(g, n)| (g.clone(), *n)).collect()
    }

    /// `n` more sketches Redis refused to merge into their keys.
    pub fn merges_refused(&self, n: u64) {
        self.merges_refused.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sketches Redis refused to merge so far.
    pub fn merges_refused_total(&self) -> u64 {
        self.merges_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add_refused(&self, by_game: &[(Arc<str>, u64)]) {
        let mut r = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (game, n) in by_game {
            let named = r.contains_key(game) || r.len() < REFUSED_GAMES;
            let key = if named { game.clone() } else { Arc::from("") };
            *r.entry(key).or_default() += n;
        }
    }
}

/// A sketch and whether it holds adds Redis has not merged yet.
struct Slot {
    writer: SketchWriter,
    dirty: bool,
    /// Shared with its [`PublishedSketch`].
    read_back: Arc<AtomicBool>,
}

/// Whether an environment may have real-time keys in Redis (`aggregate.max_envs_per_game`,
/// asked of Redis by the flush: [`super::flush::admit`]); minutes are the worker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Not asked yet: its sketches are asked for before their first merge.
    Unknown,
    /// Admitted at this minute; asked again an hour later (raising its day in Redis, so
    /// that an environment in use keeps its place).
    Admitted(u32),
    /// Refused at this minute: its adds are refused until the next minute but one, then
    /// asked again.
    Refused(u32),
}

/// Minutes after which an admitted environment is asked for again.
const ADMITTED_FOR_MINUTES: u32 = 60;

/// The sketches of one game and environment.
struct Scope {
    game: Arc<str>,
    env: Arc<str>,
    admission: Admission,
    slots: Vec<((Kind, u32), Slot)>,
    /// Position in `slots` of each (kind, period).
    index: HashMap<(Kind, u32), usize>,
    /// Per kind, the slot used last: consecutive events mostly fall in the same minute
    /// and day, and are found without hashing.
    hot: [usize; Kind::ALL.len()],
    /// Adds staged for this scope and neither made nor dropped yet: they name the scope
    /// by position, so while any is, the place is not freed.
    staged: usize,
    /// Whether the place holds a scope (free places are reused).
    live: bool,
}

impl Scope {
    fn new(game: Arc<str>, env: Arc<str>) -> Scope {
        Scope {
            game,
            env,
            admission: Admission::Unknown,
            slots: Vec::new(),
            index: HashMap::new(),
            hot: [usize::MAX; Kind::ALL.len()],
            staged: 0,
            live: true,
        }
    }

    /// Position of the slot of `kind` and `period`.
    #[inline]
    fn find(&mut self, kind: Kind, period: u32) -> Option<usize> {
        let k = kind as usize;
        let h = self.hot.get(k).copied().unwrap_or(usize::MAX);
        if self.slots.get(h).is_some_and(|(key, _)| *key == (kind, period)) {
            return Some(h);
        }
        let i = *self.index.get(&(kind, period))?;
        if let Some(x) = self.hot.get_mut(k) {
            *x = i;
        }
        Some(i)
    }

    fn get_mut(&mut self, kind: Kind, period: u32) -> Option<&mut Slot> {
        let i = self.find(kind, period)?;
        self.slots.get_mut(i).map(|(_, slot)| slot)
    }

    fn insert(&mut self, kind: Kind, period: u32, slot: Slot) -> usize {
        self.slots.push(((kind, period), slot));
        let i = self.slots.len() - 1;
        self.index.insert((kind, period), i);
        i
    }

    /// Keeps the slots `keep` accepts; the (kind, period) of those dropped go to `dropped`.
    fn retain(&mut self, mut keep: impl FnMut(Kind, u32, &Slot) -> bool, dropped: &mut Vec<(Kind, u32)>) {
        self.slots.retain(|((kind, period), slot)| {
            let k = keep(*kind, *period, slot);
            if !k {
                dropped.push((*kind, *period));
            }
            k
        });
        self.index = self.slots.iter().enumerate().map(|(i, (key, _))| (*key, i)).collect();
        self.hot = [usize::MAX; Kind::ALL.len()];
    }
}

/// One game's share of a shard.
#[derive(Default)]
struct GameShare {
    /// The position of each of its environments' scope.
    envs: HashMap<Arc<str>, usize>,
    /// Sketches it holds.
    held: usize,
    /// Adds refused for want of room since the last [`Sketches::take_refused`].
    refused: u64,
}

/// A sketch to merge into Redis: its key parts and its value (Redis's string).
#[derive(Debug, Clone)]
pub struct Dirty {
    /// What it counts.
    pub kind: Kind,
    /// Game.
    pub game: Arc<str>,
    /// Environment.
    pub env: Arc<str>,
    /// Minute or day number.
    pub period: u32,
    /// Redis's string of the sketch (sparse while small, else dense).
    pub value: Vec<u8>,
}

/// One add waiting for ClickHouse to confirm its row: the scope (its position, kept
/// while the add waits: [`Sketches::apply`] or [`Sketches::discard`] ends the wait),
/// kind, period and hash.
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    scope: u32,
    kind: Kind,
    period: u32,
    hash: u64,
}

/// Adds refused for want of room since the last [`Sketches::take_refused`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// All of them.
    pub total: u64,
    /// Per game, most first (games since dropped from the shard are not named).
    pub by_game: Vec<(Arc<str>, u64)>,
}

/// The shard's sketches.
///
/// Bounds: at most `max` sketches (and game/environment scopes) in all, and at most
/// `max_per_game` per game, so that one game's client inventing environments or
/// spreading timestamps can exhaust its own share only, never another game's.
pub struct Sketches {
    shard: usize,
    /// Scopes by position; a freed place (`live` false) is reused, so positions named by
    /// staged adds never move.
    scopes: Vec<Scope>,
    /// Free places in `scopes`.
    free: Vec<usize>,
    /// Each game's scopes (by environment, looked up by `&str`, with no allocation) and
    /// its share.
    games: HashMap<Arc<str>, GameShare>,
    last: usize,
    /// Sketches held (the sum of the scopes' slots).
    held: usize,
    /// Live scopes.
    live: usize,
    /// The most sketches, and scopes, held at once.
    max: usize,
    /// The most sketches, and scopes, one game holds at once.
    max_per_game: usize,
    /// Adds refused for want of room since the last [`Sketches::take_refused`].
    refused: u64,
    /// Of those, the ones of games that no longer have a share.
    refused_unnamed: u64,
    published: Arc<Published>,
    now_minute: u32,
    today: u32,
    dirty: usize,
    /// A flush is in flight: its sketches are clean only because their values are on
    /// their way, so nothing is evicted until it ends.
    flushing: bool,
    /// Flushes ended so far.
    flushes: u64,
    /// The value of `flushes` when sketches of past periods were last dropped to make
    /// room: at most once per flush, so that a flood of refused adds does not scan the
    /// shard's sketches per event.
    room_made_at: Option<u64>,
    /// An eviction put off while a flush was in flight (its time): made when it ends.
    evict_due: Option<i64>,
}

impl Sketches {
    /// No sketches yet; new ones are published in `published`; at most `max` are held,
    /// at most `max_per_game` of one game.
    pub fn new(shard: usize, published: Arc<Published>, max: usize, max_per_game: usize) -> Sketches {
        let mut s = Sketches {
            shard,
            scopes: Vec::new(),
            free: Vec::new(),
            games: HashMap::new(),
            last: usize::MAX,
            held: 0,
            live: 0,
            max,
            max_per_game: max_per_game.min(max),
            refused: 0,
            refused_unnamed: 0,
            published,
            now_minute: 0,
            today: 0,
            dirty: 0,
            flushing: false,
            flushes: 0,
            room_made_at: None,
            evict_due: None,
        };
        s.set_now(crate::ingest::now_ms());
        s
    }

    /// Sets the time against which events are judged too old to count (called once per
    /// entry, not per event).
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_minute = minute_of(now_ms);
        self.today = day_of(now_ms);
    }

    /// Whether some sketch holds adds not merged into Redis yet.
    pub fn is_dirty(&self) -> bool {
        self.dirty > 0
    }

    /// Whether a merge may make room for a sketch: some sketch holds unmerged adds, or a
    /// flush is in flight (its sketches are clean only because their values are on their
    /// way, and none can go until it ends: once it has, the merged ones of past periods
    /// can).
    pub fn room_may_come(&self) -> bool {
        self.dirty > 0 || self.flushing
    }

    /// The position of the scope of `game` and `env`, if the shard has one.
    fn find_scope(&self, game: &str, env: &str) -> Option<usize> {
        if let Some(s) = self.scopes.get(self.last) {
            if s.live && &*s.game == game && &*s.env == env {
                return Some(self.last);
            }
        }
        self.games.get(game).and_then(|g| g.envs.get(env)).copied()
    }

    /// The position of the scope of `game` and `env`, made if there is room for one (a
    /// scope is there to hold sketches: a game holds no more scopes than sketches).
    fn scope(&mut self, game: &str, env: &str) -> Option<usize> {
        let i = match self.find_scope(game, env) {
            Some(i) => i,
            None => {
                let share = self.games.get_key_value(game);
                if share.is_some_and(|(_, g)| g.envs.len() >= self.max_per_game) || self.live >= self.max {
                    return None;
                }
                let game: Arc<str> = share.map_or_else(|| game.into(), |(g, _)| g.clone());
                let env: Arc<str> = env.into();
                let scope = Scope::new(game.clone(), env.clone());
                let i = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.scopes.push(Scope::new("".into(), "".into()));
                        self.scopes.len() - 1
                    }
                };
                let place = self.scopes.get_mut(i)?;
                *place = scope;
                self.games.entry(game).or_default().envs.insert(env, i);
                self.live += 1;
                i
            }
        };
        self.last = i;
        Some(i)
    }

    /// [`Sketches::scope`], but none while the environment is refused (until the next
    /// minute but one: then it is asked for again).
    fn admissible_scope(&mut self, game: &str, env: &str) -> Option<usize> {
        let i = self.scope(game, env)?;
        let s = self.scopes.get_mut(i)?;
        match s.admission {
            Admission::Refused(at) if self.now_minute <= at.saturating_add(1) => None,
            Admission::Refused(_) => {
                s.admission = Admission::Unknown;
                Some(i)
            }
            _ => Some(i),
        }
    }

    /// The environments (by game) of `dirty` to ask Redis for before their merge: not
    /// asked yet, or admitted an hour ago or more (`now_minute`).
    pub fn to_admit(&self, dirty: &[Dirty], now_minute: u32) -> BTreeMap<Arc<str>, Vec<Arc<str>>> {
        // Per game, the environments admitted before first, so that they keep their places
        // when the set must be made again (Redis lost it) while others ask for room.
        type BeforeAndNew = (Vec<Arc<str>>, Vec<Arc<str>>);
        let mut asked: BTreeMap<Arc<str>, BeforeAndNew> = BTreeMap::new();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        for d in dirty {
            if !seen.insert((&d.game, &d.env)) {
                continue;
            }
            let admission = self.find_scope(&d.game, &d.env).and_then(|i| self.scopes.get(i)).map(|s| s.admission);
            let (before, new) = asked.entry(d.game.clone()).or_default();
            match admission {
                Some(Admission::Admitted(at)) if now_minute >= at.saturating_add(ADMITTED_FOR_MINUTES) => {
                    before.push(d.env.clone())
                }
                Some(Admission::Admitted(_)) => {}
                _ => new.push(d.env.clone()),
            }
        }
        asked
            .into_iter()
            .filter(|(_, (before, new))| !before.is_empty() || !new.is_empty())
            .map(|(game, (mut before, new))| {
                before.extend(new);
                (game, before)
            })
            .collect()
    }

    /// Redis admitted `env` of `game` at `now_minute`.
    pub fn admit(&mut self, game: &str, env: &str, now_minute: u32) {
        if let Some(s) = self.find_scope(game, env).and_then(|i| self.scopes.get_mut(i)) {
            s.admission = Admission::Admitted(now_minute);
        }
    }

    /// Redis refused `env` of `game` (its game has `aggregate.max_envs_per_game`
    /// others) at `now_minute`: its sketches are dropped unmerged, each counted as an add
    /// refused, and its adds refused until the next minute but one. Returns how many
    /// sketches went.
    pub fn refuse_env(&mut self, game: &str, env: &str, now_minute: u32) -> usize {
        let Some(i) = self.find_scope(game, env) else { return 0 };
        let Some(s) = self.scopes.get_mut(i) else { return 0 };
        s.admission = Admission::Refused(now_minute);
        let dirty = s.slots.iter().filter(|(_, slot)| slot.dirty).count();
        let mut dropped = Vec::new();
        s.retain(|_, _, _| false, &mut dropped);
        let (game, env) = (s.game.clone(), s.env.clone());
        self.dirty = self.dirty.saturating_sub(dirty);
        if let Some(g) = self.games.get_mut(&*game) {
            g.held = g.held.saturating_sub(dropped.len());
        }
        self.held = self.held.saturating_sub(dropped.len());
        if !dropped.is_empty() {
            let shard = self.shard;
            self.published.lock().retain(|p| p.shard != shard || p.game != game || p.env != env);
        }
        self.refuse(&game, dropped.len().max(1) as u64);
        dropped.len()
    }

    /// Counts `n` adds of `game` refused for want of room.
    fn refuse(&mut self, game: &str, n: u64) {
        self.refused += n;
        match self.games.get_mut(game) {
            Some(g) => g.refused += n,
            None => self.refused_unnamed += n,
        }
    }

    /// Whether `period` of `kind` is still counted (not past its key's TTL; not more than
    /// [`MINUTES_AHEAD`] minutes ahead for a minute, a day ahead for a day).
    fn counted(&self, kind: Kind, period: u32) -> bool {
        let ahead = if kind.per_minute() {
            self.now_minute.saturating_add(MINUTES_AHEAD)
        } else {
            self.today.saturating_add(1)
        };
        period >= kind.oldest(self.now_minute, self.today) && period <= ahead
    }

    /// Makes one staged add (its period was judged counted when it was staged) and ends
    /// its wait; false when it needs a new sketch and there is no room for one (the add
    /// is then neither made nor ended).
    #[inline]
    fn add(&mut self, scope: usize, kind: Kind, period: u32, hash: u64) -> bool {
        let Some(s) = self.scopes.get_mut(scope) else { return true };
        if matches!(s.admission, Admission::Refused(_)) {
            // Its environment was refused while the add waited: ended, not made.
            s.staged = s.staged.saturating_sub(1);
            let game = s.game.clone();
            self.refuse(&game, 1);
            return true;
        }
        let i = match s.find(kind, period) {
            Some(i) => i,
            None => match self.new_slot(scope, kind, period, None) {
                Some(i) => i,
                None => return false,
            },
        };
        let Some(s) = self.scopes.get_mut(scope) else { return true };
        s.staged = s.staged.saturating_sub(1);
        let Some((_, slot)) = s.slots.get_mut(i) else { return true };
        if slot.writer.add_hash(hash) && !slot.dirty {
            slot.dirty = true;
            self.dirty += 1;
        }
        true
    }

    /// Stages the adds of an event into `out`: DAU for its user, and online, new, level
    /// start or clear by its name and session; the user id is hashed once. Nothing is
    /// counted until [`Sketches::apply`] (once ClickHouse confirmed the event's row); a
    /// staged add is ended by [`Sketches::apply`] or [`Sketches::discard`].
    #[allow(clippy::too_many_arguments)]
    pub fn stage_event(
        &mut self,
        out: &mut Vec<Staged>,
        game: &str,
        env: &str,
        name: &str,
        user: &str,
        session: &str,
        ts_ms: i64,
    ) {
        if user.is_empty() {
            return;
        }
        let day = day_of(ts_ms);
        if !self.counted(Kind::Dau, day) {
            // Too old (or too far ahead) for every key it would feed: no scope is made.
            return;
        }
        let k = classify(name, session);
        let Some(scope) = self.admissible_scope(game, env) else {
            let n = 1 + u64::from(k.online) + u64::from(k.new) + u64::from(k.level_start) + u64::from(k.level_clear);
            self.refuse(game, n);
            return;
        };
        let hash = hash_element(user.as_bytes());
        let before = out.len();
        let scope32 = scope as u32;
        let minute = minute_of(ts_ms);
        let online = k.online && self.counted(Kind::Online, minute);
        let mut stage = |kind, period| out.push(Staged { scope: scope32, kind, period, hash });
        stage(Kind::Dau, day);
        if online {
            stage(Kind::Online, minute);
        }
        if k.new {
            stage(Kind::New, day);
        }
        if k.level_start {
            stage(Kind::LevelStart, day);
        }
        if k.level_clear {
            stage(Kind::LevelClear, day);
        }
        let n = out.len() - before;
        if let Some(s) = self.scopes.get_mut(scope) {
            s.staged += n;
        }
    }

    /// Stages a successful payment's user as a payer of its day ([`Sketches::stage_event`]).
    pub fn stage_payer(&mut self, out: &mut Vec<Staged>, game: &str, env: &str, user: &str, ts_ms: i64) {
        if user.is_empty() {
            return;
        }
        if !self.counted(Kind::Payers, day_of(ts_ms)) {
            return;
        }
        let Some(scope) = self.admissible_scope(game, env) else {
            self.refuse(game, 1);
            return;
        };
        let hash = hash_element(user.as_bytes());
        out.push(Staged { scope: scope as u32, kind: Kind::Payers, period: day_of(ts_ms), hash });
        if let Some(s) = self.scopes.get_mut(scope) {
            s.staged += 1;
        }
    }

    /// Makes the staged adds (their rows are confirmed), in order, and ends them (their
    /// scopes may go from then on); returns how many it made. An add that needs a new
    /// sketch while the shard or its game holds its most (even after dropping merged
    /// sketches of past periods) is refused and counted — or, with `stop_when_full`, left
    /// unmade, and the adds from it on are not made: the caller merges the dirty sketches
    /// into Redis, so that those of past periods can go, and applies the rest.
    pub fn apply(&mut self, staged: &[Staged], stop_when_full: bool) -> usize {
        for (n, s) in staged.iter().enumerate() {
            let scope = s.scope as usize;
            if !self.add(scope, s.kind, s.period, s.hash) {
                if stop_when_full {
                    return n;
                }
                if let Some(x) = self.scopes.get_mut(scope) {
                    x.staged = x.staged.saturating_sub(1);
                    let game = x.game.clone();
                    self.refuse(&game, 1);
                }
            }
        }
        staged.len()
    }

    /// Drops the staged adds unmade (their rows were not confirmed; a retry stages them
    /// again); their scopes may go from now on.
    pub fn discard(&mut self, staged: &[Staged]) {
        for s in staged {
            if let Some(x) = self.scopes.get_mut(s.scope as usize) {
                x.staged = x.staged.saturating_sub(1);
            }
        }
    }

    /// Counts an event at once ([`Sketches::stage_event`] then [`Sketches::apply`]).
    pub fn event(&mut self, game: &str, env: &str, name: &str, user: &str, session: &str, ts_ms: i64) {
        let mut staged = Vec::new();
        self.stage_event(&mut staged, game, env, name, user, session, ts_ms);
        self.apply(&staged, false);
    }

    /// Counts a successful payment's user as a payer of its day, at once.
    pub fn payer(&mut self, game: &str, env: &str, user: &str, ts_ms: i64) {
        let mut staged = Vec::new();
        self.stage_payer(&mut staged, game, env, user, ts_ms);
        self.apply(&staged, false);
    }

    /// A flush starts: the sketches it takes ([`Sketches::take_dirty`]) are clean only
    /// because their values are in flight, so nothing is evicted until
    /// [`Sketches::end_flush`] (a failed merge must find them to mark them dirty again).
    pub fn begin_flush(&mut self) {
        self.flushing = true;
    }

    /// The flush ended (merged, or its sketches marked dirty again): an eviction put off
    /// meanwhile is made now.
    pub fn end_flush(&mut self) {
        self.flushing = false;
        self.flushes = self.flushes.wrapping_add(1);
        if let Some(now_ms) = self.evict_due.take() {
            self.evict(now_ms);
        }
    }

    /// The sketches with adds Redis has not merged, with their values; they are clean
    /// from now on (until [`Sketches::redirty`] if the merge fails).
    pub fn take_dirty(&mut self) -> Vec<Dirty> {
        let mut out = Vec::with_capacity(self.dirty);
        for s in self.scopes.iter_mut().filter(|s| s.live) {
            for ((kind, period), slot) in s.slots.iter_mut().filter(|(_, slot)| slot.dirty) {
                let (kind, period) = (*kind, *period);
                slot.dirty = false;
                // A sketch of nobody (one read back for the figures, resent): no key is
                // made for it, as Croupier makes one only with a player.
                let sketch = slot.writer.snapshot();
                if sketch.is_empty() {
                    continue;
                }
                let mut value = Vec::new();
                sketch.write_redis(&mut value);
                out.push(Dirty { kind, game: s.game.clone(), env: s.env.clone(), period, value });
            }
        }
        self.dirty = 0;
        out
    }

    /// Marks sketches dirty again (their merge failed).
    pub fn redirty(&mut self, sketches: &[Dirty]) {
        for d in sketches {
            let Some(scope) = self.find_scope(&d.game, &d.env) else { continue };
            if let Some(slot) = self.scopes.get_mut(scope).and_then(|s| s.get_mut(d.kind, d.period)) {
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty += 1;
                }
            }
        }
    }

    /// Marks every held sketch dirty: the next flush merges them all into Redis again —
    /// and asks for every admitted environment again, first of its game's: Redis may have
    /// lost the environments' set with the keys (a restart, a failover to a replica behind).
    pub fn redirty_all(&mut self) {
        for s in self.scopes.iter_mut().filter(|s| s.live) {
            if let Admission::Admitted(_) = s.admission {
                s.admission = Admission::Admitted(0);
            }
            for (_, slot) in &mut s.slots {
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty += 1;
                }
            }
        }
    }

    /// Raises a sketch to the registers of `merged` (what Redis holds after every
    /// worker's merges), so that the live figures are the all-workers ones; `create`
    /// makes the sketch (clean) if the shard has none and there is room.
    pub fn merge_back(&mut self, kind: Kind, game: &str, env: &str, period: u32, merged: &Sketch, create: bool) {
        let scope = if create { self.scope(game, env) } else { self.find_scope(game, env) };
        let Some(scope) = scope else { return };
        let Some(s) = self.scopes.get_mut(scope) else { return };
        if let Some(slot) = s.get_mut(kind, period) {
            slot.writer.merge(merged);
            slot.read_back.store(true, Ordering::Relaxed);
            return;
        }
        if create {
            self.new_slot(scope, kind, period, Some(merged));
        }
    }

    /// Whether scope `scope` may get one more sketch: the shard holds fewer than `max`
    /// and its game fewer than `max_per_game`.
    fn room(&self, scope: usize) -> bool {
        let game_held = self.scopes.get(scope).and_then(|s| self.games.get(&*s.game)).map_or(0, |g| g.held);
        self.held < self.max && game_held < self.max_per_game
    }

    /// Makes the (clean) sketch of `kind` and `period` in scope `scope`, holding
    /// `merged`'s registers if given, and publishes its reader; its position, or `None`
    /// when the shard or the scope's game holds its most sketches even after dropping the
    /// merged sketches of past periods.
    fn new_slot(&mut self, scope: usize, kind: Kind, period: u32, merged: Option<&Sketch>) -> Option<usize> {
        if !self.room(scope) {
            // Without waiting for the next round: at most once per flush.
            if !self.flushing && self.room_made_at != Some(self.flushes) {
                self.room_made_at = Some(self.flushes);
                self.drop_past(self.now_minute, self.today);
            }
            if !self.room(scope) {
                return None;
            }
        }
        let s = self.scopes.get_mut(scope)?;
        let mut writer = SketchWriter::new();
        if let Some(m) = merged {
            writer.merge(m);
        }
        let read_back = Arc::new(AtomicBool::new(merged.is_some()));
        self.published.lock().push(PublishedSketch {
            shard: self.shard,
            kind,
            game: s.game.clone(),
            env: s.env.clone(),
            period,
            reader: writer.reader(),
            read_back: read_back.clone(),
        });
        let i = s.insert(kind, period, Slot { writer, dirty: false, read_back });
        if let Some(g) = self.games.get_mut(&*s.game) {
            g.held += 1;
        }
        self.held += 1;
        Some(i)
    }

    /// Drops clean sketches of periods before `minute` - 1 (online) or `today` - 1
    /// (days), and of periods to come (after `minute` or `today`: Redis holds their adds,
    /// and a later add starts a new sketch), and their readers. Scopes keep their places.
    fn drop_past(&mut self, minute: u32, today: u32) {
        let keep = |kind: Kind, period: u32| {
            if kind.per_minute() {
                period.saturating_add(1) >= minute && period <= minute
            } else {
                period.saturating_add(1) >= today && period <= today
            }
        };
        let mut gone: HashSet<(Arc<str>, Arc<str>, Kind, u32)> = HashSet::new();
        let mut dropped = Vec::new();
        for s in self.scopes.iter_mut().filter(|s| s.live) {
            dropped.clear();
            s.retain(|kind, period, slot| slot.dirty || keep(kind, period), &mut dropped);
            if dropped.is_empty() {
                continue;
            }
            if let Some(g) = self.games.get_mut(&*s.game) {
                g.held = g.held.saturating_sub(dropped.len());
            }
            self.held = self.held.saturating_sub(dropped.len());
            gone.extend(dropped.iter().map(|&(kind, period)| (s.game.clone(), s.env.clone(), kind, period)));
        }
        if gone.is_empty() {
            return;
        }
        let shard = self.shard;
        self.published
            .lock()
            .retain(|p| p.shard != shard || !gone.contains(&(p.game.clone(), p.env.clone(), p.kind, p.period)));
    }

    /// Frees the places of scopes left without sketches and without staged adds, and the
    /// shares of games left without scopes, so that game/env pairs seen once do not stay
    /// for the life of the process.
    fn free_empty(&mut self, now_minute: u32) {
        for (i, s) in self.scopes.iter_mut().enumerate() {
            if !s.live || !s.slots.is_empty() || s.staged > 0 {
                continue;
            }
            // A refused environment's place keeps its refusal until it runs out (it counts
            // in its game's share meanwhile): freed, its next event would be asked for at
            // the next flush.
            if matches!(s.admission, Admission::Refused(at) if now_minute <= at.saturating_add(1)) {
                continue;
            }
            if let Some(g) = self.games.get_mut(&*s.game) {
                g.envs.remove(&*s.env);
                if g.envs.is_empty() {
                    self.refused_unnamed += g.refused;
                    self.games.remove(&*s.game);
                }
            }
            *s = Scope::new("".into(), "".into());
            s.live = false;
            self.free.push(i);
            self.live = self.live.saturating_sub(1);
        }
    }

    /// Drops clean sketches of periods before the previous minute (online) or yesterday
    /// (days), or after the current minute or day: Redis holds them; late (or early)
    /// events for them start a new sketch. Put off while
    /// a flush is in flight (made when it ends), never by staged adds.
    pub fn evict(&mut self, now_ms: i64) {
        if self.flushing {
            self.evict_due = Some(now_ms);
            return;
        }
        self.drop_past(minute_of(now_ms), day_of(now_ms));
        self.free_empty(minute_of(now_ms));
    }

    /// Sketches held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Adds not made since the last call because the shard or the game held its most
    /// sketches; added to the published per-game counts
    /// (`croupier_realtime_adds_refused_total`).
    pub fn take_refused(&mut self) -> Refused {
        let mut by_game: Vec<(Arc<str>, u64)> = self
            .games
            .iter_mut()
            .filter(|(_, g)| g.refused > 0)
            .map(|(name, g)| (name.clone(), std::mem::take(&mut g.refused)))
            .collect();
        by_game.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let total = std::mem::take(&mut self.refused);
        let unnamed = std::mem::take(&mut self.refused_unnamed);
        let mut published = by_game.clone();
        if unnamed > 0 {
            published.push(("".into(), unnamed));
        }
        if total > 0 {
            self.published.add_refused(&published);
        }
        Refused { total, by_game }
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hash_feeds_every_sketch_of_an_event_and_only_changes_dirty() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published.clone(), 4096, 512);
        let now = crate::ingest::now_ms();
        s.event("g", "prod", "session_start", "u1", "", now);
        assert_eq!(s.len(), 2, "dau and online");
        assert_eq!(published.list().len(), 2);
        let dirty = s.take_dirty();
        assert_eq!(dirty.len(), 2);
        assert!(!s.is_dirty());
        // The same user again changes no register: nothing to merge.
        s.event("g", "prod", "login", "u1", "", now);
        assert!(!s.is_dirty());
        s.payer("g", "prod", "u1", now);
        assert!(s.is_dirty());
        // Too old for its key: not counted.
        s.event("g", "prod", "login", "u2", "", now - 40 * 86_400_000);
        assert_eq!(s.len(), 3);
        s.redirty(&dirty);
        assert_eq!(s.take_dirty().len(), 3);
        // Old clean sketches go, and their readers with them.
        s.evict(now + 3 * 86_400_000);
        assert!(s.is_empty());
        assert!(published.list().is_empty());
    }

    #[test]
    fn events_too_old_to_count_make_no_scope() {
        let mut s = Sketches::new(0, Arc::new(Published::default()), 4096, 512);
        let now = crate::ingest::now_ms();
        s.set_now(now);
        let mut out = Vec::new();
        for i in 0..1_000 {
            s.stage_event(&mut out, "g", &format!("e{i}"), "login", "u", "", now - 400 * 86_400_000);
            s.stage_payer(&mut out, "g", &format!("e{i}"), "u", now - 400 * 86_400_000);
        }
        assert!(out.is_empty());
        assert_eq!(s.live, 0);
    }

    /// While consumers hold staged adds (their inserts in flight, back to back under a
    /// backlog), eviction still drops the merged sketches of past periods: staged adds
    /// name places that never move, so nothing waits for them.
    #[test]
    fn eviction_is_not_put_off_by_staged_adds_and_they_count_where_they_were_staged() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published, 4096, 512);
        let now = crate::ingest::now_ms();
        s.event("old", "prod", "login", "u0", "", now - 2 * 86_400_000);
        s.event("old2", "prod", "login", "u0", "", now - 2 * 86_400_000);
        s.take_dirty();
        let mut staged = Vec::new();
        s.stage_event(&mut staged, "g", "prod", "session_start", "u1", "", now);
        s.stage_payer(&mut staged, "g", "prod", "u1", now);
        assert_eq!(staged.len(), 3, "dau, online, payer");
        // Another consumer's adds of a scope that has no sketch yet.
        let mut other = Vec::new();
        s.stage_event(&mut other, "h", "dev", "login", "u2", "", now);
        assert!(!s.is_dirty() && s.len() == 2, "nothing counted while staged");
        s.evict(now);
        assert_eq!(s.len(), 0, "the old days' sketches went at once");
        assert_eq!(s.live, 2, "the staged adds' scopes stayed");
        // A scope made after the eviction takes a freed place, not a staged one.
        s.event("new", "prod", "login", "u3", "", now);
        s.apply(&staged, false);
        s.apply(&other, false);
        let dirty = s.take_dirty();
        let mut got: Vec<(String, String, Kind)> =
            dirty.iter().map(|d| (d.game.to_string(), d.env.to_string(), d.kind)).collect();
        got.sort();
        let want = [
            ("g", "prod", Kind::Online),
            ("g", "prod", Kind::Dau),
            ("g", "prod", Kind::Payers),
            ("h", "dev", Kind::Dau),
            ("new", "prod", Kind::Dau),
        ];
        let mut want: Vec<(String, String, Kind)> =
            want.iter().map(|(g, e, k)| (g.to_string(), e.to_string(), *k)).collect();
        want.sort();
        assert_eq!(got, want);
        // Discarded adds end too: their scope goes once it holds nothing.
        let mut dropped = Vec::new();
        s.stage_event(&mut dropped, "gone", "prod", "login", "u4", "", now);
        s.evict(now);
        assert!(s.find_scope("gone", "prod").is_some());
        s.discard(&dropped);
        s.evict(now);
        assert!(s.find_scope("gone", "prod").is_none());
        assert!(s.find_scope("g", "prod").is_some());
    }

    /// Online minutes count at most a few minutes ahead; sketches of periods to come go
    /// once merged, like those of past periods.
    #[test]
    fn future_minutes_count_a_few_minutes_ahead_and_go_once_merged() {
        let mut s = Sketches::new(0, Arc::new(Published::default()), 4096, 512);
        // 2026-12-02 10:37 UTC: the next 600 minutes are of the same day.
        let now = 1_796_207_820_000;
        s.set_now(now);
        for m in 1..600 {
            s.event("g", "prod", "heartbeat", &format!("u{m}"), "", now + m * 60_000);
        }
        let dirty = s.take_dirty();
        let online = dirty.iter().filter(|d| d.kind == Kind::Online).count();
        assert_eq!(online, MINUTES_AHEAD as usize, "one sketch per minute up to {MINUTES_AHEAD} ahead");
        assert!(dirty.iter().any(|d| d.kind == Kind::Dau), "the day still counts them");
        s.evict(now);
        let left: Vec<(Kind, u32)> = s.scopes.iter().flat_map(|x| x.slots.iter().map(|(k, _)| *k)).collect();
        assert_eq!(left, vec![(Kind::Dau, day_of(now))], "merged sketches of periods to come went");
    }

    #[test]
    fn eviction_waits_for_a_flush_in_flight() {
        let mut s = Sketches::new(0, Arc::new(Published::default()), 4096, 512);
        let now = crate::ingest::now_ms();
        s.event("old", "prod", "login", "u0", "", now - 2 * 86_400_000);
        s.begin_flush();
        let dirty = s.take_dirty();
        s.evict(now);
        assert_eq!(s.len(), 1, "clean only because its value is in flight");
        // The merge failed: dirty again, kept.
        s.redirty(&dirty);
        s.end_flush();
        assert_eq!(s.len(), 1);
        s.begin_flush();
        s.take_dirty();
        s.evict(now);
        s.end_flush();
        assert_eq!(s.len(), 0, "merged: dropped when the flush ended");
    }

    #[test]
    fn invented_envs_cannot_grow_a_shard_past_its_sketches_bound() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published.clone(), 64, 64);
        let now = crate::ingest::now_ms();
        for i in 0..10_000 {
            s.event("g", &format!("env-{i}"), "session_start", &format!("u{i}"), "", now);
        }
        assert_eq!(s.len(), 64, "held at the bound");
        assert_eq!(published.list().len(), 64);
        assert!(s.live <= 64, "scopes are bounded too: {}", s.live);
        // 32 scopes got their DAU and online sketches; every other event's two adds
        // (DAU and online) were refused.
        let refused = s.take_refused();
        assert_eq!(refused.total, 2 * (10_000 - 32));
        assert_eq!(refused.by_game, vec![(Arc::from("g"), 2 * (10_000 - 32))]);
        assert_eq!(s.take_refused().total, 0, "said once");
        assert_eq!(published.refused(), vec![(Arc::from("g"), 2 * (10_000 - 32))]);
        // A scope already held still counts.
        s.event("g", "env-0", "login", "someone-else", "", now);
        assert_eq!(s.take_refused().total, 0);
        // Once merged and past their periods, the sketches and their scopes go.
        s.take_dirty();
        s.evict(now + 3 * 86_400_000);
        assert!(s.is_empty());
        assert!(s.live == 0 && s.games.is_empty());
        s.set_now(now + 3 * 86_400_000);
        s.event("g", "prod", "login", "u1", "", now + 3 * 86_400_000);
        assert_eq!(s.len(), 1, "room again");
    }

    /// One game inventing environments fills its own share only: another game's players,
    /// coming after the flood, still get their sketches.
    #[test]
    fn a_game_flooding_invented_envs_fills_its_share_not_the_shards() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published.clone(), 256, 32);
        let now = crate::ingest::now_ms();
        for i in 0..5_000 {
            s.event("flood", &format!("inv-{i}"), "login", "u", "", now);
        }
        assert_eq!(s.len(), 32, "the flooding game holds its share");
        assert_eq!(s.games.get("flood").map(|g| g.envs.len()), Some(32));
        for i in 0..300 {
            s.event("b", "prod", "session_start", &format!("b-{i}"), "", now);
        }
        let mut oracle = Sketch::default();
        for i in 0..300 {
            oracle.add(format!("b-{i}").as_bytes());
        }
        let dirty = s.take_dirty();
        let b: Vec<&Dirty> = dirty.iter().filter(|d| &*d.game == "b").collect();
        assert_eq!(b.len(), 2, "game B's DAU and online sketches");
        for d in b {
            let got = Sketch::from_redis(&d.value).map(|x| x.count());
            assert_eq!(got, Ok(oracle.count()), "{:?}", d.kind);
        }
        let refused = s.take_refused();
        assert_eq!(refused.by_game, vec![(Arc::from("flood"), 5_000 - 32)]);
        // Several flooding games: each is held to its share, and the shard to its bound.
        for g in 0..20 {
            for i in 0..100 {
                s.event(&format!("f{g}"), &format!("inv-{i}"), "login", "u", "", now);
            }
        }
        assert!(s.len() <= 256);
        assert!(s.games.values().all(|g| g.held <= 32 && g.envs.len() <= 32));
    }

    /// At the bound, merged sketches of past periods are dropped to make room without
    /// waiting for the next round (a backlog of late events needs one per minute).
    #[test]
    fn room_is_made_from_merged_past_periods_once_per_flush() {
        let mut s = Sketches::new(0, Arc::new(Published::default()), 64, 64);
        let now = crate::ingest::now_ms();
        s.set_now(now);
        // A backlog: one online minute each, 10 to 60 minutes ago (and a DAU sketch,
        // two if that crosses midnight).
        for m in 10..60 {
            s.event("g", "prod", "heartbeat", "u", "", now - m * 60_000);
        }
        assert!((51..=52).contains(&s.len()), "{}", s.len());
        s.begin_flush();
        s.take_dirty();
        s.end_flush();
        // 50 more minutes: more than the room left, no round in between.
        for m in 60..110 {
            s.event("g", "prod", "heartbeat", "u", "", now - m * 60_000);
        }
        assert_eq!(s.take_refused().total, 0, "room was made from the merged minutes");
        assert!(s.len() <= 64);
        // Full of unmerged minutes: an apply that may stop leaves the adds that find no
        // room unmade (and uncounted as refused) for its caller to merge and retry.
        let mut staged = Vec::new();
        for m in 110..140 {
            s.stage_event(&mut staged, "g", "prod", "heartbeat", "u", "", now - m * 60_000);
        }
        let made = s.apply(&staged, true);
        assert!(made < staged.len() && s.len() == 64, "{made} made, {} held", s.len());
        assert_eq!(s.take_refused().total, 0);
        s.begin_flush();
        s.take_dirty();
        s.end_flush();
        s.evict(now);
        let rest = staged.get(made..).unwrap_or_default();
        assert_eq!(s.apply(rest, true), rest.len(), "the rest fits once the merged minutes went");
        assert_eq!(s.take_refused().total, 0);
    }

    /// Two consumers of a shard full of unmerged past minutes (the second's players in
    /// another environment of the game): one's room-making merge is
    /// in flight (every sketch clean, none droppable until it ends) when the other finds
    /// no room. Room will come when the merge ends, so the second waits for it and tries
    /// again rather than refusing its players.
    #[test]
    fn a_merge_in_flight_is_room_to_come_for_another_consumer() {
        let mut s = Sketches::new(0, Arc::new(Published::default()), 64, 64);
        let now = crate::ingest::now_ms();
        s.set_now(now);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for m in 10..90 {
            s.stage_event(&mut first, "g", "prod", "heartbeat", "a", "", now - m * 60_000);
            s.stage_event(&mut second, "g", "dev", "heartbeat", "b", "", now - (m + 100) * 60_000);
        }
        let made = s.apply(&first, true);
        assert!(made < first.len() && s.len() == 64, "{made} made, {} held", s.len());
        // The first consumer's merge: in flight.
        s.begin_flush();
        let dirty = s.take_dirty();
        // Its first add needs a sketch: no room while the merged minutes are in flight.
        let stuck = s.apply(&second, true);
        assert_eq!(stuck, 0);
        assert!(s.room_may_come(), "the merge in flight will leave past minutes to drop");
        // It ends; the second consumer's retry finds room.
        s.end_flush();
        s.evict(now);
        assert!(dirty.len() == 64 && s.len() < 64);
        let rest = second.get(stuck..).unwrap_or_default();
        assert!(s.apply(rest, true) > 0, "the second consumer's adds are made once the merge ended");
        assert_eq!(s.take_refused().total, 0);
    }

    /// An environment Redis refused: its sketches go unmerged (and unpublished), each
    /// counted as a refused add; its adds are refused until the next minute but one, then
    /// it is asked for again. An admitted one is asked for again an hour later.
    #[test]
    fn a_refused_environments_sketches_go_and_its_adds_are_refused_for_a_while() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published.clone(), 4096, 512);
        let now = crate::ingest::now_ms();
        let minute = minute_of(now);
        s.event("g", "prod", "session_start", "u1", "", now);
        s.event("g", "spam", "session_start", "u2", "", now);
        s.begin_flush();
        let dirty = s.take_dirty();
        let asks = s.to_admit(&dirty, minute);
        assert_eq!(asks.get("g").map(Vec::len), Some(2), "both asked for");
        s.admit("g", "prod", minute);
        // An add made while the answer was awaited is dropped with the rest.
        s.event("g", "spam", "login", "u3", "", now);
        assert_eq!(s.refuse_env("g", "spam", minute), 2, "dau and online");
        s.end_flush();
        assert_eq!(s.len(), 2, "prod's two sketches stay");
        assert!(!s.is_dirty(), "the refused sketches' dirt is gone with them");
        assert!(published.list().iter().all(|p| &*p.env == "prod"));
        assert_eq!(s.take_refused().total, 2);
        // The round's eviction keeps the refusal (its place is not freed while it holds).
        s.evict(now);
        s.event("g", "spam", "login", "u4", "", now);
        assert_eq!(s.take_refused().total, 1, "its DAU add refused at once");
        assert_eq!(s.len(), 2);
        // Two minutes on: asked for again; prod only after an hour.
        s.set_now(now + 120_000);
        s.event("g", "spam", "login", "u5", "", now + 120_000);
        s.event("g", "prod", "login", "u6", "", now + 120_000);
        let dirty = s.take_dirty();
        let asks = s.to_admit(&dirty, minute + 2);
        assert_eq!(
            asks.get("g").map(|e| e.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
            Some(vec!["spam".to_owned()])
        );
        let asks = s.to_admit(&dirty, minute + 60);
        assert_eq!(asks.get("g").map(Vec::len), Some(2));
        // Redis may have lost the set: every admitted environment is asked for again,
        // before the new ones.
        s.redirty_all();
        let asks = s.to_admit(&dirty, minute + 2);
        let names = asks.get("g").map(|e| e.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(names, Some(vec!["prod".to_owned(), "spam".to_owned()]));
    }
}
