//! `GET`/`POST /api/analytics/filters`: the sampling and allow-list Croupier pushes to its
//! agents, per game and environment (`{events, payments_enabled, sample_global}`; defaults
//! `[]`, `true`, `100`). Kept in memory and, when `api.filters_file` is set, in that JSON
//! file (a map keyed `"<game>|<env>"` as Croupier's), rewritten whole on each change
//! (written to a temporary file, then renamed). Client ingest (`/api/analytics/ingest` on
//! the data port, `client/filters.rs`) enforces them — read from the file when there is
//! one, else from the memory of this process ([`SharedFilters`]); the signed
//! `/api/ingest/*` and OTLP do not (trusted servers).
//!
//! A `POST` names a configured game (`[games.<id>]`); neither its game nor its env may
//! hold `|`, the key's separator (else `g|a` + `b` and `g` + `a|b` would be one key), nor
//! may a read's.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::error::ApiError;
use super::params::Scope;

/// One game and environment's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Events allowed (empty: all).
    pub events: Vec<String>,
    /// Payments are collected.
    pub payments_enabled: bool,
    /// Percent of users sampled, 0 to 100.
    pub sample_global: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { events: Vec::new(), payments_enabled: true, sample_global: 100 }
    }
}

/// A `POST` body.
#[derive(Debug, Deserialize)]
struct Update {
    #[serde(default)]
    game_id: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    events: Vec<String>,
    payments_enabled: Option<bool>,
    sample_global: Option<i64>,
}

/// The stored map, keyed `"<game>|<env>"`.
pub type Stored = BTreeMap<String, Settings>;

/// The filters as the process's Analytics API last stored them, for its client-ingest
/// shards when no `api.filters_file` is set. Written by the control thread on a `POST`;
/// a shard loads the version (one atomic load) and takes the lock only when it moved.
#[derive(Debug, Default)]
pub struct SharedFilters {
    version: AtomicU64,
    map: Mutex<Arc<Stored>>,
}

impl SharedFilters {
    /// Replaces the filters.
    fn publish(&self, map: &Stored) {
        let mut held = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        *held = Arc::new(map.clone());
        self.version.fetch_add(1, Ordering::Release);
    }

    /// How many times the filters were replaced.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The filters, with their version.
    pub fn snapshot(&self) -> (u64, Arc<Stored>) {
        let held = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        (self.version.load(Ordering::Acquire), held.clone())
    }
}

/// The settings of every game and environment.
pub struct Filters {
    path: Option<PathBuf>,
    map: RefCell<Stored>,
    /// Where the process's client ingest reads them.
    shared: Arc<SharedFilters>,
    /// The configured games: the only ones a `POST` may set.
    games: Vec<String>,
}

/// 400 naming `field` when `id` holds the key's separator.
fn check_id(field: &'static str, id: &str) -> Result<(), ApiError> {
    if id.contains('|') {
        return Err(ApiError::param(field, "must not contain |"));
    }
    Ok(())
}

fn key(game: &str, env: &str) -> String {
    format!("{game}|{env}")
}

impl Filters {
    /// Reads `path` when it exists; `games` are the configured ones; `shared` is where the
    /// process's client ingest reads them.
    pub fn load(path: Option<PathBuf>, games: Vec<String>, shared: Arc<SharedFilters>) -> Result<Filters, String> {
        let map = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("api.filters_file: {}: {e}", p.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("api.filters_file: {}: {e}", p.display()))?
            }
            _ => BTreeMap::new(),
        };
        shared.publish(&map);
        Ok(Filters { path, map: RefCell::new(map), shared, games })
    }

    /// `GET`: the settings client ingest applies to the scope — its own, else its game's
    /// for every environment (`"<game>|"`), else the defaults.
    pub fn get(&self, scope: &Scope) -> Result<Json, ApiError> {
        let (game, env) = (scope.game.as_deref().unwrap_or(""), scope.env.as_deref().unwrap_or(""));
        check_id("game_id", game)?;
        check_id("env", env)?;
        let map = self.map.borrow();
        let s = map.get(&key(game, env)).or_else(|| map.get(&key(game, ""))).cloned().unwrap_or_default();
        Ok(json!(s))
    }

    /// A `POST` body, read: JSON naming a game (nothing said yet about that game).
    fn read(body: &[u8]) -> Result<Update, ApiError> {
        let u: Update = serde_json::from_slice(body).map_err(|e| ApiError::param("body", e.to_string()))?;
        if u.game_id.trim().is_empty() {
            return Err(ApiError::param("game_id", "required"));
        }
        Ok(u)
    }

    /// A `POST` body, checked: a configured game, ids without `|`. Only for a caller
    /// already allowed the game, so that whether a game is configured is not told to
    /// callers limited to other games.
    fn parse(&self, body: &[u8]) -> Result<Update, ApiError> {
        let u = Self::read(body)?;
        check_id("game_id", &u.game_id)?;
        check_id("env", &u.env)?;
        // A read's values are trimmed: settings under an untrimmed name could be applied
        // and never read back.
        if u.env.trim() != u.env {
            return Err(ApiError::param("env", "must not begin or end with whitespace"));
        }
        if !self.games.contains(&u.game_id) {
            return Err(ApiError::param("game_id", format!("{} is not a configured game", u.game_id)));
        }
        Ok(u)
    }

    /// The game a `POST` body names (400 without one), before any check of that game:
    /// the caller's access to it is checked first.
    pub fn game_of(&self, body: &[u8]) -> Result<String, ApiError> {
        Self::read(body).map(|u| u.game_id)
    }

    /// `POST`: stores the body's settings (`sample_global` clamped to 0..100).
    pub fn update(&self, body: &[u8]) -> Result<Json, ApiError> {
        let u = self.parse(body)?;
        let k = key(&u.game_id, &u.env);
        let mut map = self.map.borrow_mut();
        // Fields left out keep what applied to the scope: its own settings, else its game's
        // for every environment (what GET answered), else the defaults.
        let mut s = map.get(&k).or_else(|| map.get(&key(&u.game_id, ""))).cloned().unwrap_or_default();
        s.events = u.events;
        if let Some(p) = u.payments_enabled {
            s.payments_enabled = p;
        }
        if let Some(g) = u.sample_global {
            s.sample_global = g.clamp(0, 100);
        }
        let mut next = map.clone();
        next.insert(k, s);
        if let Some(path) = &self.path {
            let text = serde_json::to_string_pretty(&next).map_err(|e| ApiError::QueryFailed(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
                // Its text names the file: logged, not answered.
                tracing::warn!(error = %e, path = %path.display(), "analytics filters file not written");
                ApiError::QueryFailed("filters file not written".into())
            })?;
        }
        self.shared.publish(&next);
        *map = next;
        Ok(json!({ "ok": true }))
    }
}
