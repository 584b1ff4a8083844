//! `GET`/`POST /api/analytics/filters`: the sampling and allow-list Croupier pushes to its
//! agents, per game and environment (`{events, payments_enabled, sample_global}`; defaults
//! `[]`, `true`, `100`). Kept in memory and, when `api.filters_file` is set, in that JSON
//! file (a map keyed `"<game>|<env>"` as Croupier's), rewritten whole on each change
//! (written to a temporary file, then renamed). Client ingest (`/api/analytics/ingest` on
//! the data port, `client/filters.rs`) enforces them; the signed `/api/ingest/*` and
//! OTLP do not (trusted servers).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// The settings of every game and environment.
pub struct Filters {
    path: Option<PathBuf>,
    map: RefCell<BTreeMap<String, Settings>>,
}

fn key(game: &str, env: &str) -> String {
    format!("{game}|{env}")
}

impl Filters {
    /// Reads `path` when it exists.
    pub fn load(path: Option<PathBuf>) -> Result<Filters, String> {
        let map = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("api.filters_file: {}: {e}", p.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("api.filters_file: {}: {e}", p.display()))?
            }
            _ => BTreeMap::new(),
        };
        Ok(Filters { path, map: RefCell::new(map) })
    }

    /// `GET`: the scope's settings, or the defaults.
    pub fn get(&self, scope: &Scope) -> Json {
        let k = key(scope.game.as_deref().unwrap_or(""), scope.env.as_deref().unwrap_or(""));
        let s = self.map.borrow().get(&k).cloned().unwrap_or_default();
        json!(s)
    }

    /// The game a `POST` body names (400 without one).
    pub fn game_of(body: &[u8]) -> Result<String, ApiError> {
        let u: Update = serde_json::from_slice(body).map_err(|e| ApiError::param("body", e.to_string()))?;
        if u.game_id.trim().is_empty() {
            return Err(ApiError::param("game_id", "required"));
        }
        Ok(u.game_id)
    }

    /// `POST`: stores the body's settings (`sample_global` clamped to 0..100).
    pub fn update(&self, body: &[u8]) -> Result<Json, ApiError> {
        let u: Update = serde_json::from_slice(body).map_err(|e| ApiError::param("body", e.to_string()))?;
        if u.game_id.trim().is_empty() {
            return Err(ApiError::param("game_id", "required"));
        }
        let k = key(&u.game_id, &u.env);
        let mut map = self.map.borrow_mut();
        let mut s = map.get(&k).cloned().unwrap_or_default();
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
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| ApiError::QueryFailed(format!("filters file: {e}")))?;
        }
        *map = next;
        Ok(json!({ "ok": true }))
    }
}
