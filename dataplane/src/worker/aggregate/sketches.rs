//! A worker shard's sketches: one per kind, game, environment and period, updated by
//! the shard alone (no locks); each one's reader is published for the control thread.

use std::collections::HashMap;
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
}

/// The readers of every worker shard's sketches, for the control thread. Locked only when
/// a sketch is created or dropped, and by a scrape to copy the list; never per event.
#[derive(Debug, Default)]
pub struct Published {
    sketches: Mutex<Vec<PublishedSketch>>,
}

impl Published {
    fn lock(&self) -> MutexGuard<'_, Vec<PublishedSketch>> {
        self.sketches.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the list.
    pub fn list(&self) -> Vec<PublishedSketch> {
        self.lock().clone()
    }
}

/// A sketch and whether it holds adds Redis has not merged yet.
struct Slot {
    writer: SketchWriter,
    dirty: bool,
}

/// The sketches of one game and environment.
struct Scope {
    game: Arc<str>,
    env: Arc<str>,
    slots: Vec<((Kind, u32), Slot)>,
    /// Position in `slots` of each (kind, period).
    index: HashMap<(Kind, u32), usize>,
    /// Per kind, the slot used last: consecutive events mostly fall in the same minute
    /// and day, and are found without hashing.
    hot: [usize; Kind::ALL.len()],
}

impl Scope {
    fn new(game: &str, env: &str) -> Scope {
        Scope {
            game: game.into(),
            env: env.into(),
            slots: Vec::new(),
            index: HashMap::new(),
            hot: [usize::MAX; Kind::ALL.len()],
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

    /// Keeps the slots `keep` accepts.
    fn retain(&mut self, mut keep: impl FnMut(Kind, u32, &Slot) -> bool) {
        self.slots.retain(|((kind, period), slot)| keep(*kind, *period, slot));
        self.index = self.slots.iter().enumerate().map(|(i, (key, _))| (*key, i)).collect();
        self.hot = [usize::MAX; Kind::ALL.len()];
    }
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

/// One add waiting for ClickHouse to confirm its row: the scope (its position; scopes are
/// not moved while any add waits, see [`Sketches::pin`]), kind, period and hash.
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    scope: u32,
    kind: Kind,
    period: u32,
    hash: u64,
}

/// The shard's sketches.
pub struct Sketches {
    shard: usize,
    scopes: Vec<Scope>,
    /// Index of each scope in `scopes` by game, then environment (looked up by `&str`,
    /// with no allocation).
    index: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
    last: usize,
    /// Sketches held (the sum of the scopes' slots).
    held: usize,
    /// The most sketches held at once.
    max: usize,
    /// Adds (one per sketch an event feeds) not made because `max` sketches were held,
    /// since the last warning.
    over: u64,
    published: Arc<Published>,
    now_minute: u32,
    today: u32,
    dirty: usize,
    /// Consumers holding staged adds: while any does, scopes keep their positions.
    pins: usize,
    /// An eviction put off while adds were staged (its time): made at the last unpin.
    evict_due: Option<i64>,
}

impl Sketches {
    /// No sketches yet; new ones are published in `published`; at most `max` are held.
    pub fn new(shard: usize, published: Arc<Published>, max: usize) -> Sketches {
        let mut s = Sketches {
            shard,
            scopes: Vec::new(),
            index: HashMap::new(),
            last: 0,
            held: 0,
            max,
            over: 0,
            published,
            now_minute: 0,
            today: 0,
            dirty: 0,
            pins: 0,
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

    fn scope(&mut self, game: &str, env: &str) -> usize {
        if let Some(s) = self.scopes.get(self.last) {
            if &*s.game == game && &*s.env == env {
                return self.last;
            }
        }
        let i = match self.index.get(game).and_then(|envs| envs.get(env)) {
            Some(&i) => i,
            None => {
                self.scopes.push(Scope::new(game, env));
                let scope = self.scopes.len() - 1;
                if let Some(new) = self.scopes.get(scope) {
                    self.index.entry(new.game.clone()).or_default().insert(new.env.clone(), scope);
                }
                self.scopes.len() - 1
            }
        };
        self.last = i;
        i
    }

    /// Whether `period` of `kind` is still counted (not past its key's TTL, not more than
    /// a day ahead).
    fn counted(&self, kind: Kind, period: u32) -> bool {
        let ahead = if kind.per_minute() { self.now_minute.saturating_add(1440) } else { self.today.saturating_add(1) };
        period >= kind.oldest(self.now_minute, self.today) && period <= ahead
    }

    #[inline]
    fn add(&mut self, scope: usize, kind: Kind, period: u32, hash: u64) {
        if !self.counted(kind, period) {
            return;
        }
        let found = self.scopes.get_mut(scope).and_then(|s| s.find(kind, period));
        let Some(i) = found.or_else(|| self.new_slot(scope, kind, period, None)) else { return };
        let Some(s) = self.scopes.get_mut(scope) else { return };
        let Some((_, slot)) = s.slots.get_mut(i) else { return };
        if slot.writer.add_hash(hash) && !slot.dirty {
            slot.dirty = true;
            self.dirty += 1;
        }
    }

    /// Stages the adds of an event into `out`: DAU for its user, and online, new, level
    /// start or clear by its name and session; the user id is hashed once. Nothing is
    /// counted until [`Sketches::apply`] (once ClickHouse confirmed the event's row); the
    /// caller holds a [`Sketches::pin`] meanwhile.
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
        let hash = hash_element(user.as_bytes());
        let scope = self.scope(game, env) as u32;
        let k = classify(name, session);
        let mut stage = |kind, period| out.push(Staged { scope, kind, period, hash });
        stage(Kind::Dau, day);
        if k.online {
            stage(Kind::Online, minute_of(ts_ms));
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
    }

    /// Stages a successful payment's user as a payer of its day ([`Sketches::stage_event`]).
    pub fn stage_payer(&mut self, out: &mut Vec<Staged>, game: &str, env: &str, user: &str, ts_ms: i64) {
        if user.is_empty() {
            return;
        }
        if !self.counted(Kind::Payers, day_of(ts_ms)) {
            return;
        }
        let hash = hash_element(user.as_bytes());
        let scope = self.scope(game, env) as u32;
        out.push(Staged { scope, kind: Kind::Payers, period: day_of(ts_ms), hash });
    }

    /// Keeps scopes where they are until [`Sketches::unpin`]: adds staged meanwhile name
    /// them by position.
    pub fn pin(&mut self) {
        self.pins += 1;
    }

    /// Ends a [`Sketches::pin`]; the last one makes an eviction put off meanwhile.
    pub fn unpin(&mut self) {
        self.pins = self.pins.saturating_sub(1);
        if self.pins == 0 {
            if let Some(now_ms) = self.evict_due.take() {
                self.evict(now_ms);
            }
        }
    }

    /// Makes the staged adds (their rows are confirmed).
    pub fn apply(&mut self, staged: &[Staged]) {
        for s in staged {
            self.add(s.scope as usize, s.kind, s.period, s.hash);
        }
    }

    /// Counts an event at once ([`Sketches::stage_event`] then [`Sketches::apply`]).
    pub fn event(&mut self, game: &str, env: &str, name: &str, user: &str, session: &str, ts_ms: i64) {
        let mut staged = Vec::new();
        self.stage_event(&mut staged, game, env, name, user, session, ts_ms);
        self.apply(&staged);
    }

    /// Counts a successful payment's user as a payer of its day, at once.
    pub fn payer(&mut self, game: &str, env: &str, user: &str, ts_ms: i64) {
        let mut staged = Vec::new();
        self.stage_payer(&mut staged, game, env, user, ts_ms);
        self.apply(&staged);
    }

    /// The sketches with adds Redis has not merged, with their values; they are clean
    /// from now on (until [`Sketches::redirty`] if the merge fails).
    pub fn take_dirty(&mut self) -> Vec<Dirty> {
        let mut out = Vec::with_capacity(self.dirty);
        for s in &mut self.scopes {
            for ((kind, period), slot) in s.slots.iter_mut().filter(|(_, slot)| slot.dirty) {
                let (kind, period) = (*kind, *period);
                slot.dirty = false;
                let mut value = Vec::new();
                slot.writer.snapshot().write_redis(&mut value);
                out.push(Dirty { kind, game: s.game.clone(), env: s.env.clone(), period, value });
            }
        }
        self.dirty = 0;
        out
    }

    /// Marks sketches dirty again (their merge failed).
    pub fn redirty(&mut self, sketches: &[Dirty]) {
        for d in sketches {
            let scope = self.scope(&d.game, &d.env);
            if let Some(slot) = self.scopes.get_mut(scope).and_then(|s| s.get_mut(d.kind, d.period)) {
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty += 1;
                }
            }
        }
    }

    /// Marks every held sketch dirty: the next flush merges them all into Redis again.
    pub fn redirty_all(&mut self) {
        for s in &mut self.scopes {
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
    /// makes the sketch (clean) if the shard has none.
    pub fn merge_back(&mut self, kind: Kind, game: &str, env: &str, period: u32, merged: &Sketch, create: bool) {
        let scope = self.scope(game, env);
        let Some(s) = self.scopes.get_mut(scope) else { return };
        if let Some(slot) = s.get_mut(kind, period) {
            slot.writer.merge(merged);
            return;
        }
        if create {
            self.new_slot(scope, kind, period, Some(merged));
        }
    }

    /// Makes the (clean) sketch of `kind` and `period` in scope `scope`, holding
    /// `merged`'s registers if given, and publishes its reader; its position, or `None`
    /// when the shard already holds `max` sketches (counted in `over`, said by the next
    /// flush round, never per event).
    fn new_slot(&mut self, scope: usize, kind: Kind, period: u32, merged: Option<&Sketch>) -> Option<usize> {
        if self.held >= self.max {
            self.over += 1;
            return None;
        }
        let s = self.scopes.get_mut(scope)?;
        let mut writer = SketchWriter::new();
        if let Some(m) = merged {
            writer.merge(m);
        }
        self.published.lock().push(PublishedSketch {
            shard: self.shard,
            kind,
            game: s.game.clone(),
            env: s.env.clone(),
            period,
            reader: writer.reader(),
        });
        self.held += 1;
        Some(s.insert(kind, period, Slot { writer, dirty: false }))
    }

    /// Drops clean sketches of periods before the previous minute (online) or yesterday
    /// (days): Redis holds them; late events for them start a new sketch.
    pub fn evict(&mut self, now_ms: i64) {
        if self.pins > 0 {
            // Staged adds name scopes by position: evicted at the last unpin.
            self.evict_due = Some(now_ms);
            return;
        }
        let (minute, today) = (minute_of(now_ms), day_of(now_ms));
        let keep = |kind: Kind, period: u32| {
            if kind.per_minute() {
                period + 1 >= minute
            } else {
                period + 1 >= today
            }
        };
        let mut dropped = false;
        for s in &mut self.scopes {
            let before = s.slots.len();
            s.retain(|kind, period, slot| slot.dirty || keep(kind, period));
            dropped |= s.slots.len() != before;
        }
        if dropped {
            // Scopes left without sketches go too, so that game/env pairs seen once do
            // not stay for the life of the process.
            self.scopes.retain(|s| !s.slots.is_empty());
            self.index.clear();
            for (i, s) in self.scopes.iter().enumerate() {
                self.index.entry(s.game.clone()).or_default().insert(s.env.clone(), i);
            }
            self.last = 0;
            self.held = self.scopes.iter().map(|s| s.slots.len()).sum();
            let scopes = &self.scopes;
            let shard = self.shard;
            self.published.lock().retain(|p| {
                p.shard != shard
                    || scopes
                        .iter()
                        .any(|s| s.game == p.game && s.env == p.env && s.index.contains_key(&(p.kind, p.period)))
            });
        }
    }

    /// Sketches held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Adds not made since the last call because the shard held its most sketches.
    pub fn take_over(&mut self) -> u64 {
        std::mem::take(&mut self.over)
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
        let mut s = Sketches::new(0, published.clone(), 4096);
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
        let mut s = Sketches::new(0, Arc::new(Published::default()), 4096);
        let now = crate::ingest::now_ms();
        s.set_now(now);
        let mut out = Vec::new();
        for i in 0..1_000 {
            s.stage_event(&mut out, "g", &format!("e{i}"), "login", "u", "", now - 400 * 86_400_000);
            s.stage_payer(&mut out, "g", &format!("e{i}"), "u", now - 400 * 86_400_000);
        }
        assert!(out.is_empty());
        assert_eq!(s.scopes.len(), 0);
    }

    #[test]
    fn staged_adds_count_once_applied_and_eviction_waits_for_the_last_unpin() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published, 4096);
        let now = crate::ingest::now_ms();
        s.event("old", "prod", "login", "u0", "", now - 2 * 86_400_000);
        s.take_dirty();
        let mut staged = Vec::new();
        s.pin();
        s.stage_event(&mut staged, "g", "prod", "session_start", "u1", "", now);
        s.stage_payer(&mut staged, "g", "prod", "u1", now);
        assert_eq!(staged.len(), 3, "dau, online, payer");
        assert!(!s.is_dirty() && s.len() == 1, "nothing counted while staged");
        // An eviction meanwhile is put off: the scopes keep their positions.
        s.evict(now);
        assert_eq!(s.len(), 1);
        s.apply(&staged);
        assert_eq!(s.take_dirty().len(), 3);
        s.unpin();
        assert_eq!(s.len(), 3, "the old day's sketch went at the unpin");
        assert!(s.scopes.iter().all(|x| &*x.game == "g"));
    }

    #[test]
    fn invented_envs_cannot_grow_a_shard_past_its_sketches_bound() {
        let published = Arc::new(Published::default());
        let mut s = Sketches::new(0, published.clone(), 64);
        let now = crate::ingest::now_ms();
        for i in 0..10_000 {
            s.event("g", &format!("env-{i}"), "session_start", &format!("u{i}"), "", now);
        }
        assert_eq!(s.len(), 64, "held at the bound");
        assert_eq!(published.list().len(), 64);
        // 32 scopes got their DAU and online sketches; every other event's two adds
        // (DAU and online) were refused.
        assert_eq!(s.take_over(), 2 * (10_000 - 32));
        assert_eq!(s.take_over(), 0, "said once");
        // A scope already held still counts.
        s.event("g", "env-0", "login", "someone-else", "", now);
        assert_eq!(s.take_over(), 0);
        // Once merged and past their periods, the sketches and their scopes go.
        s.take_dirty();
        s.evict(now + 3 * 86_400_000);
        assert!(s.is_empty());
        assert!(s.scopes.is_empty() && s.index.is_empty());
        s.set_now(now + 3 * 86_400_000);
        s.event("g", "prod", "login", "u1", "", now + 3 * 86_400_000);
        assert_eq!(s.len(), 1, "room again");
    }
}
