//! The games' filters as client ingest enforces them: the settings the Analytics API
//! keeps in `api.filters_file` (`POST /api/analytics/filters`, a map keyed
//! `"<game>|<env>"`), read by each shard and read again when the file changes (looked at
//! no more often than `client.filters_check_ms`) — without a file, the ones the process's
//! API holds in memory, taken again when they change — and the verdict on one record: the
//! event allow-list, `payments_enabled`, and `sample_global` (percent of users, chosen by
//! a hash of the user id — of the event id for events without one — so a retried batch
//! is sampled the same way and a sampled user's events are all kept). The hash is
//! SipHash-1-3 with fixed keys (the `siphasher` crate): specified, so the same user is in
//! or out of the sample in every process and release (std's `DefaultHasher` promises
//! neither), and several times cheaper per record than SHA-256.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::FilteredEvents;
use croupier_protocol::validate::{RecordView, Verdict};
use siphasher::sip::SipHasher13;

use crate::analytics::filters::{Settings, SharedFilters, Stored};

/// The filters a shard holds: per game, per environment (`""`: the game's settings for
/// environments without their own).
#[derive(Debug)]
pub struct FilterView {
    path: Option<PathBuf>,
    /// Without `path`: the process's API's filters, and the version last taken.
    shared: Arc<SharedFilters>,
    taken: u64,
    every: Duration,
    checked: Option<Instant>,
    /// The file's inode, modification time and length when last read (`None`: no
    /// file): two writes within one tick of a coarse clock still differ by inode (the
    /// API renames a new file over it) or length.
    modified: Option<crate::analytics::filters::Stamp>,
    games: HashMap<String, HashMap<String, Settings>>,
}

/// The settings of a record's game and environment when none are stored: everything
/// passes.
static DEFAULT: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(Settings::default);

impl FilterView {
    /// Filters read from `path`, looked at again every `every`; without a path, the ones
    /// the process's API stores in `shared` (none stored: every record passes).
    pub fn new(path: Option<PathBuf>, every: Duration, shared: Arc<SharedFilters>) -> FilterView {
        let mut v = FilterView { path, shared, taken: 0, every, checked: None, modified: None, games: HashMap::new() };
        v.refresh(Instant::now());
        v
    }

    /// Reads the file again if it changed and it was not looked at within `every`. A file
    /// that cannot be read or parsed keeps the filters read before (and says so in the log).
    /// Without a file, takes the API's filters when they changed (one atomic load).
    pub fn refresh(&mut self, now: Instant) {
        let Some(path) = &self.path else {
            if self.shared.version() != self.taken {
                let (version, map) = self.shared.snapshot();
                self.taken = version;
                self.games = by_game(&map);
            }
            return;
        };
        if self.checked.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            return;
        }
        self.checked = Some(now);
        let modified = crate::analytics::filters::stamp(path);
        if modified == self.modified {
            return;
        }
        self.modified = modified;
        if modified.is_none() {
            self.games.clear();
            return;
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Stored>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(map) => self.games = by_game(&map),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "filters not read again; the previous ones hold")
            }
        }
    }

    /// The settings of `game` in `env`: its own, else the game's for every environment
    /// (`"<game>|"`), else the defaults.
    pub fn settings(&self, game: &str, env: &str) -> &Settings {
        let Some(envs) = self.games.get(game) else { return &DEFAULT };
        envs.get(env).or_else(|| envs.get("")).unwrap_or(&DEFAULT)
    }

    /// The verdict on an event: outside the allow-list it is dropped or refused as
    /// `action` says; outside the sample it is dropped.
    pub fn event(&self, r: &RecordView<'_>, action: FilteredEvents) -> Verdict {
        let s = self.settings(r.game, r.env);
        if !s.events.is_empty() && !s.events.iter().any(|e| e == r.event) {
            return refused(action);
        }
        if sampled(s.sample_global, r) {
            Verdict::Keep
        } else {
            Verdict::Drop
        }
    }

    /// The verdict on a payment: `payments_enabled` off drops or refuses it as `action`
    /// says. Payments are never sampled (revenue would be wrong).
    pub fn payment(&self, r: &RecordView<'_>, action: FilteredEvents) -> Verdict {
        if self.settings(r.game, r.env).payments_enabled {
            Verdict::Keep
        } else {
            refused(action)
        }
    }
}

fn refused(action: FilteredEvents) -> Verdict {
    match action {
        FilteredEvents::Drop => Verdict::Drop,
        FilteredEvents::Refuse => Verdict::Refuse,
    }
}

/// The stored map (`"<game>|<env>"`) by game, then environment.
fn by_game(map: &Stored) -> HashMap<String, HashMap<String, Settings>> {
    let mut games: HashMap<String, HashMap<String, Settings>> = HashMap::new();
    for (key, s) in map {
        let (game, env) = key.split_once('|').unwrap_or((key.as_str(), ""));
        games.entry(game.to_owned()).or_default().insert(env.to_owned(), s.clone());
    }
    games
}

/// Whether a record is in a sample of `percent` percent: its user hashed with SipHash-1-3
/// (fixed keys) into one of 10 000 buckets, stable across processes and releases. A
/// record without a user is sampled by its device, else its session, else its event id:
/// a player not yet identified is kept or left out whole (the SDK always sends its
/// device), not event by event.
pub fn sampled(percent: i64, r: &RecordView<'_>) -> bool {
    if percent >= 100 {
        return true;
    }
    if percent <= 0 {
        return false;
    }
    let mut h = SipHasher13::new_with_keys(0x6372_6f75_7069_6572, 0x7361_6d70_6c65_7631);
    if !r.user_id.is_empty() {
        h.write(b"u\0");
        h.write(r.user_id.as_bytes());
    } else if !r.device_id.is_empty() {
        h.write(b"d\0");
        h.write(r.device_id.as_bytes());
    } else if !r.session_id.is_empty() {
        h.write(b"s\0");
        h.write(r.session_id.as_bytes());
    } else {
        h.write(b"e\0");
        h.write(&r.event_id);
    }
    let word = h.finish();
    (word % 10_000) < (percent as u64) * 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(env: &'a str, event: &'a str, user: &'a str) -> RecordView<'a> {
        RecordView { game: "g1", env, event, user_id: user, device_id: "", session_id: "", event_id: [7; 16] }
    }

    #[test]
    fn allow_list_per_environment_and_payments() {
        let dir = std::env::temp_dir().join(format!("croupier-filters-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("filters.json");
        let text = r#"{"g1|prod":{"events":["login"],"payments_enabled":false,"sample_global":100},
            "g1|":{"events":[],"payments_enabled":true,"sample_global":0}}"#;
        assert!(std::fs::write(&path, text).is_ok());
        let v = FilterView::new(Some(path.clone()), Duration::from_secs(60), Arc::default());
        assert_eq!(v.event(&view("prod", "login", "u"), FilteredEvents::Drop), Verdict::Keep);
        assert_eq!(v.event(&view("prod", "level_start", "u"), FilteredEvents::Drop), Verdict::Drop);
        assert_eq!(v.event(&view("prod", "level_start", "u"), FilteredEvents::Refuse), Verdict::Refuse);
        assert_eq!(v.payment(&view("prod", "", "u"), FilteredEvents::Refuse), Verdict::Refuse);
        // Another environment: the game's catch-all, which samples nobody.
        assert_eq!(v.event(&view("dev", "level_start", "u"), FilteredEvents::Drop), Verdict::Drop);
        assert_eq!(v.payment(&view("dev", "", "u"), FilteredEvents::Drop), Verdict::Keep);
        // Another game: defaults.
        let other = RecordView { game: "g2", ..view("prod", "x", "u") };
        assert_eq!(v.event(&other, FilteredEvents::Refuse), Verdict::Keep);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A new file renamed over the old one with the same modification time (two writes
    /// within one tick of a coarse clock) is read again: its inode differs.
    #[test]
    fn a_file_replaced_within_one_clock_tick_is_read_again() {
        let dir = std::env::temp_dir().join(format!("croupier-filters-tick-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("filters.json");
        let allow = |event: &str| {
            format!(r#"{{"g1|prod":{{"events":["{event}"],"payments_enabled":true,"sample_global":100}}}}"#)
        };
        assert!(std::fs::write(&path, allow("login")).is_ok());
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut v = FilterView::new(Some(path.clone()), Duration::ZERO, Arc::default());
        assert_eq!(v.event(&view("prod", "login", "u"), FilteredEvents::Drop), Verdict::Keep);
        let next = dir.join("filters.json.tmp");
        assert!(std::fs::write(&next, allow("logon")).is_ok());
        let set = std::fs::File::options().write(true).open(&next).and_then(|f| match mtime {
            Some(t) => f.set_modified(t),
            None => Ok(()),
        });
        assert!(set.is_ok() && std::fs::rename(&next, &path).is_ok());
        assert_eq!(std::fs::metadata(&path).and_then(|m| m.modified()).ok(), mtime, "the same modification time");
        v.refresh(Instant::now());
        assert_eq!(v.event(&view("prod", "login", "u"), FilteredEvents::Drop), Verdict::Drop);
        assert_eq!(v.event(&view("prod", "logon", "u"), FilteredEvents::Drop), Verdict::Keep);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sampling_is_stable_and_near_the_rate() {
        let kept = (0..20_000).filter(|i| sampled(30, &view("p", "e", &format!("user-{i}")))).count();
        assert!((5_700..=6_300).contains(&kept), "{kept}");
        // Pinned: a release that changed who is sampled would split users' histories.
        assert_eq!(kept, 6_105);
        let again = (0..20_000).filter(|i| sampled(30, &view("p", "e", &format!("user-{i}")))).count();
        assert_eq!(kept, again);
    }

    /// Review finding: a player without a user id was sampled event by event (by event
    /// id), so a sample kept parts of sessions. Its device decides, else its session.
    #[test]
    fn a_player_without_a_user_is_sampled_whole_by_device_then_session() {
        fn anonymous<'a>(device: &'a str, session: &'a str, id: u8) -> RecordView<'a> {
            RecordView {
                game: "g1",
                env: "p",
                event: "e",
                user_id: "",
                device_id: device,
                session_id: session,
                event_id: [id; 16],
            }
        }
        for d in 0..200 {
            let device = format!("device-{d}");
            let first = sampled(30, &anonymous(&device, "s", 0));
            assert!((1..=50).all(|i| sampled(30, &anonymous(&device, &format!("s{i}"), i)) == first), "{device}");
            let session = format!("session-{d}");
            let first = sampled(30, &anonymous("", &session, 0));
            assert!((1..=50).all(|i| sampled(30, &anonymous("", &session, i)) == first), "{session}");
        }
        let kept = (0..20_000).filter(|i| sampled(30, &anonymous(&format!("device-{i}"), "", 0))).count();
        assert!((5_700..=6_300).contains(&kept), "{kept}");
    }
}
