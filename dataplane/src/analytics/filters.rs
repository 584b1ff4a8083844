//! `GET`/`POST /api/analytics/filters`: the sampling and allow-list Croupier pushes to its
//! agents, per game and environment (`{events, payments_enabled, sample_global}`; defaults
//! `[]`, `true`, `100`). Kept in memory and, when `api.filters_file` is set, in that JSON
//! file (a map keyed `"<game>|<env>"` as Croupier's), which several processes may share:
//! a change is made under an exclusive lock (`flock` of `<file>.lock`) on the file as it
//! is then (another process's changes kept), written to a temporary file of its own,
//! synced and renamed over it; a `GET` reads the file again when it changed. Client ingest (`/api/analytics/ingest` on
//! the data port, `client/filters.rs`) enforces them — read from the file when there is
//! one, else from the memory of this process ([`SharedFilters`]); the signed
//! `/api/ingest/*` and OTLP do not (trusted servers).
//!
//! A `POST` names a configured game (`[games.<id>]`); neither its game nor its env may
//! hold `|`, the key's separator (else `g|a` + `b` and `g` + `a|b` would be one key), nor
//! may a read's.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

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

/// The fields of a `POST` body.
const FIELDS: [&str; 5] = ["game_id", "env", "events", "payments_enabled", "sample_global"];

/// A `POST` body: a JSON object (a field that is `null` is absent, as Go's decoder reads it).
#[derive(Debug, Deserialize)]
struct Update {
    #[serde(default)]
    game_id: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
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
        // Copied before the lock is taken: the shards take it too.
        let next = Arc::new(map.clone());
        let mut held = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        *held = next;
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
    /// The file's [`Stamp`] when `map` was read from it (`None`: there was no file).
    read_as: Cell<Option<Stamp>>,
    /// Where the process's client ingest reads them.
    shared: Arc<SharedFilters>,
    /// The configured games: the only ones a `POST` may set.
    games: Vec<String>,
}

/// What tells one version of the file from another: its inode (a rename over it makes a
/// new one), modification time and length; `None` when it is not there.
pub(crate) type Stamp = (u64, SystemTime, u64);

/// The file's [`Stamp`].
pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

/// The map in `path` (empty when there is no file).
fn read_file(path: &Path) -> Result<Stored, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("api.filters_file: {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("api.filters_file: {}: {e}", path.display())),
    }
}

/// Writes `map` over `path`: to a temporary file of this process, synced, renamed over
/// it, and the directory synced (a crash leaves the old file or the new one).
fn write_file(path: &Path, map: &Stored) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let text = serde_json::to_string_pretty(map).map_err(std::io::Error::other)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

/// How long a `POST` waits for another process to let go of the filters file's lock.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// An exclusive lock (`flock`) of `<path>.lock`, held until dropped (the file closed).
/// Another process holds it only while it writes the file: it is asked again every 10 ms
/// for up to [`LOCK_WAIT`], the control thread serving its other requests meanwhile.
async fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(PathBuf::from(name))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("another process held the lock for {} ms", LOCK_WAIT.as_millis()),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
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
        // Stamped before it is read: a write in between is read again at the next look.
        let (read_as, map) = match &path {
            Some(p) => (stamp(p), read_file(p)?),
            None => (None, BTreeMap::new()),
        };
        shared.publish(&map);
        Ok(Filters { path, map: RefCell::new(map), read_as: Cell::new(read_as), shared, games })
    }

    /// Reads the file again when it changed since it was last read (another process
    /// sharing it wrote it); a file taken away is no settings, as client ingest reads it.
    /// A file that no longer reads keeps the settings in memory.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let now = stamp(path);
        if now == self.read_as.get() {
            return;
        }
        match read_file(path) {
            Ok(map) => {
                self.shared.publish(&map);
                *self.map.borrow_mut() = map;
                self.read_as.set(now);
            }
            Err(e) => {
                // Not read again until it changes (one warning per version of it).
                self.read_as.set(now);
                tracing::warn!(error = %e, "analytics filters file not read again; the settings read before stay");
            }
        }
    }

    /// `GET`: the settings client ingest applies to the scope — its own, else its game's
    /// for every environment (`"<game>|"`), else the defaults.
    pub fn get(&self, scope: &Scope) -> Result<Json, ApiError> {
        scope.check()?;
        let (game, env) = (scope.game.as_deref().unwrap_or(""), scope.env.as_deref().unwrap_or(""));
        check_id("game_id", game)?;
        check_id("env", env)?;
        self.refresh();
        let map = self.map.borrow();
        let s = map.get(&key(game, env)).or_else(|| map.get(&key(game, ""))).cloned().unwrap_or_default();
        Ok(json!(s))
    }

    /// A `POST` body, read: a JSON object naming a game (nothing said yet about that game).
    fn read(body: &[u8]) -> Result<Update, ApiError> {
        let v: Json = serde_json::from_slice(body).map_err(|e| ApiError::param("body", e.to_string()))?;
        let Some(fields) = v.as_object() else {
            return Err(ApiError::param("body", "expected a JSON object"));
        };
        // A misspelt field would be a setting left out: `events` left out allows every
        // event, so `{"game_id":"g1","event":["login"]}` would open the allow-list.
        if let Some(other) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::param(
                "body",
                format!("unknown field {other:?}: expected game_id, env, events, payments_enabled, sample_global"),
            ));
        }
        // Read again from the bytes, not the value: a field given twice is refused (a map
        // keeps the last, where a proxy reading the first would see another game).
        let u: Update = serde_json::from_slice(body).map_err(|e| ApiError::param("body", e.to_string()))?;
        if u.game_id.as_deref().is_none_or(|g| g.trim().is_empty()) {
            return Err(ApiError::param("game_id", "required"));
        }
        // No event has an empty name: `[""]` would allow none.
        if u.events.as_ref().is_some_and(|e| e.iter().any(|n| n.is_empty())) {
            return Err(ApiError::param("events", "an event name is empty"));
        }
        Ok(u)
    }

    /// A `POST` body, checked: a configured game, ids without `|`. Only for a caller
    /// already allowed the game, so that whether a game is configured is not told to
    /// callers limited to other games.
    fn parse(&self, body: &[u8]) -> Result<Update, ApiError> {
        let u = Self::read(body)?;
        let (game, env) = (u.game_id.as_deref().unwrap_or_default(), u.env.as_deref().unwrap_or_default());
        // As long as ingest takes them, else settings no event can match and no read can
        // ask for.
        super::params::check_scope_value("game_id", game)?;
        super::params::check_scope_value("env", env)?;
        check_id("game_id", game)?;
        check_id("env", env)?;
        // A read's values are trimmed: settings under an untrimmed name could be applied
        // and never read back.
        if env.trim() != env {
            return Err(ApiError::param("env", "must not begin or end with whitespace"));
        }
        if !self.games.iter().any(|g| g == game) {
            return Err(ApiError::param("game_id", format!("{game} is not a configured game")));
        }
        Ok(u)
    }

    /// The game a `POST` body names (400 without one), before any check of that game:
    /// the caller's access to it is checked first.
    pub fn game_of(&self, body: &[u8]) -> Result<String, ApiError> {
        Self::read(body).map(|u| u.game_id.unwrap_or_default())
    }

    /// `POST`: stores the body's settings (`sample_global` clamped to 0..100). With a
    /// file, the change is made to the file as it is under its lock, so that processes
    /// sharing it lose none of each other's changes; nothing is changed when it cannot be
    /// written (500 `store_failed`).
    pub async fn update(&self, body: &[u8]) -> Result<Json, ApiError> {
        let u = self.parse(body)?;
        let (game, env) = (u.game_id.unwrap_or_default(), u.env.unwrap_or_default());
        let k = key(&game, &env);
        let change = |map: &Stored| {
            // Fields left out keep what applied to the scope: its own settings, else its
            // game's for every environment (what GET answered), else the defaults.
            let mut s = map.get(&k).or_else(|| map.get(&key(&game, ""))).cloned().unwrap_or_default();
            s.events = u.events.clone().unwrap_or_default();
            if let Some(p) = u.payments_enabled {
                s.payments_enabled = p;
            }
            if let Some(g) = u.sample_global {
                s.sample_global = g.clamp(0, 100);
            }
            let mut next = map.clone();
            next.insert(k.clone(), s);
            next
        };
        let next = match &self.path {
            None => change(&self.map.borrow()),
            Some(path) => {
                // Its text names the file: logged, not answered.
                let failed = |e: &dyn std::fmt::Display| {
                    tracing::warn!(error = %e, path = %path.display(), "analytics filters file not written");
                    ApiError::StoreFailed("the filters file")
                };
                let _held = lock(path).await.map_err(|e| failed(&e))?;
                let next = change(&read_file(path).map_err(|e| failed(&e))?);
                write_file(path, &next).map_err(|e| failed(&e))?;
                self.read_as.set(stamp(path));
                next
            }
        };
        self.shared.publish(&next);
        *self.map.borrow_mut() = next;
        Ok(json!({ "ok": true }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` to its end on a runtime of its own (the control thread's kind).
    fn run<F: std::future::Future>(f: F) -> F::Output {
        crate::runtime::block_on(crate::runtime::ActiveDriver::Epoll, f).expect("runtime")
    }

    fn scope(game: &str, env: &str) -> Scope {
        Scope { game: Some(game.into()), env: Some(env.into()) }
    }

    /// Two processes sharing one file (as the docs advise for several nodes): neither
    /// loses the other's change, and each reads the other's.
    #[test]
    fn processes_sharing_the_file_keep_each_others_changes() {
        let dir = std::env::temp_dir().join(format!("croupier-filters-{}-{:?}", std::process::id(), SystemTime::now()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("filters.json");
        let games = vec!["g1".to_owned()];
        let open = || Filters::load(Some(path.clone()), games.clone(), Arc::default()).expect("load");
        let (a, b) = (open(), open());
        run(a.update(br#"{"game_id":"g1","env":"prod","payments_enabled":false}"#)).expect("a");
        run(b.update(br#"{"game_id":"g1","env":"dev","events":["login"]}"#)).expect("b");
        let stored = read_file(&path).expect("file");
        assert_eq!(stored.keys().collect::<Vec<_>>(), ["g1|dev", "g1|prod"]);
        assert!(!stored["g1|prod"].payments_enabled);
        // Each answers the other's change (the file's length or time changed).
        assert_eq!(b.get(&scope("g1", "prod")).expect("get")["payments_enabled"], json!(false));
        assert_eq!(a.get(&scope("g1", "dev")).expect("get")["events"], json!(["login"]));
        // No temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // A file taken away is no settings, as client ingest reads it.
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(a.get(&scope("g1", "prod")).expect("get"), json!(Settings::default()));
        // Longer than ingest takes: refused, not written.
        let long = format!(r#"{{"game_id":"g1","env":"{}"}}"#, "e".repeat(257));
        assert_eq!(run(a.update(long.as_bytes())).map_err(|e| e.field()), Err(Some("env")));
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A body is a JSON object; a `null` field is absent (Go's decoder gives it its zero
    /// value); a file that cannot be written changes nothing and says so.
    #[test]
    fn bodies_are_objects_and_nulls_are_absent() {
        let f = Filters::load(None, vec!["g1".to_owned()], Arc::default()).expect("load");
        let err = run(f.update(br#"["g1","prod",["x"],false,7]"#)).expect_err("an array");
        assert_eq!((err.status(), err.field()), (400, Some("body")));
        run(f.update(br#"{"game_id":"g1","env":null,"events":null,"sample_global":5}"#)).expect("nulls");
        assert_eq!(
            f.get(&scope("g1", "")).expect("get"),
            json!({"events": [], "payments_enabled": true, "sample_global": 5})
        );
        let gone = std::env::temp_dir().join(format!("croupier-no-such-dir-{}", std::process::id())).join("f.json");
        let f = Filters::load(Some(gone), vec!["g1".to_owned()], Arc::default()).expect("load");
        let err = run(f.update(br#"{"game_id":"g1","env":"prod"}"#)).expect_err("not written");
        assert_eq!((err.status(), err.tag()), (500, "store_failed"));
        assert_eq!(f.get(&scope("g1", "prod")).expect("get"), json!(Settings::default()));
    }

    /// Review finding: the lock was waited for without end, on the control thread. Held by
    /// another process past the wait, a `POST` is 500 `store_failed` after about a second,
    /// and changes nothing.
    #[test]
    fn a_lock_held_elsewhere_is_waited_for_a_second_only() {
        let dir =
            std::env::temp_dir().join(format!("croupier-filters-lock-{}-{:?}", std::process::id(), SystemTime::now()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("filters.json");
        let held = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("filters.json.lock"))
            .expect("lock file");
        held.lock().expect("held");
        let f = Filters::load(Some(path.clone()), vec!["g1".to_owned()], Arc::default()).expect("load");
        let started = std::time::Instant::now();
        let err = run(f.update(br#"{"game_id":"g1","env":"prod"}"#)).expect_err("lock held");
        assert_eq!((err.status(), err.tag()), (500, "store_failed"));
        assert!(started.elapsed() >= LOCK_WAIT && started.elapsed() < LOCK_WAIT * 3, "{:?}", started.elapsed());
        assert!(!path.exists());
        drop(held);
        run(f.update(br#"{"game_id":"g1","env":"prod"}"#)).expect("lock free");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
