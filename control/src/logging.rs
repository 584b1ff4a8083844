//! Logs: structured events (`tracing`), written as text or JSON lines on standard error by
//! a thread of their own, never by the thread that logs.
//!
//! The level comes from `[log] level` (a level, or a filter such as
//! `info,croupier_dataplane::worker=debug`), and `RUST_LOG` overrides it when set. The
//! writer is `tracing-appender`'s non-blocking one: an event is formatted into a line and
//! queued; when the queue is full (a burst the writer thread cannot keep up with) lines
//! are dropped rather than a shard blocked on its standard error.

use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Lines queued for the writer thread before new ones are dropped.
const QUEUED_LINES: usize = 64 * 1024;

/// The writer thread's guard: dropping it writes what is queued.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// The filter of `log`, `RUST_LOG` first.
///
/// A directive without `=` must be a level (a name, or 0–5 as `tracing` reads them):
/// `tracing`'s filter reads any other bare word (`warning`, `verbose`) as the name of a
/// target to log, and everything else, errors included, would then go unlogged. A target
/// is given with its level (`croupier=debug`). `RUST_LOG` is held to the same rule.
pub fn filter(log: &Log, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or(&log.level);
    // Directives trimmed (` info` would be a target's name to `tracing`), none empty.
    let directives: Vec<&str> = spec.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return Err(format!("{spec:?}: no level (error, warn, info, debug, trace, off)"));
    }
    for &d in &directives {
        let level = ["error", "warn", "info", "debug", "trace", "off", "0", "1", "2", "3", "4", "5"]
            .iter()
            .any(|l| d.eq_ignore_ascii_case(l));
        if !level && !d.contains('=') {
            return Err(format!(
                "{spec:?}: {d:?} is not a level (error, warn, info, debug, trace, off); a target takes one (target=debug)"
            ));
        }
    }
    EnvFilter::try_new(directives.join(",")).map_err(|e| format!("{spec:?}: {e}"))
}

/// Installs the process's logger. Later calls do nothing (the first logger stays).
pub fn init(log: &Log) -> Result<(), String> {
    let filter = filter(log, std::env::var("RUST_LOG").ok().as_deref())?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("croupier-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if installed.is_ok() {
        if let Ok(mut g) = GUARD.lock() {
            *g = Some(guard);
        }
    }
    Ok(())
}

/// Writes what is queued and stops the writer (at exit; later events are lost).
pub fn flush() {
    if let Ok(mut g) = GUARD.lock() {
        g.take();
    }
}

/// Whether [`init`] installed the logger.
pub fn installed() -> bool {
    GUARD.lock().map(|g| g.is_some()).unwrap_or(false)
}

/// The last words of a process about to exit: logged and written out when a logger is
/// installed, else straight to standard error.
pub fn fatal(message: &str) {
    if installed() {
        tracing::error!("{message}");
        flush();
    } else {
        eprintln!("croupier: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_level() {
        let log = Log { level: "warn".into(), format: LogFormat::Text };
        assert_eq!(filter(&log, None).unwrap().to_string(), "warn");
        assert_eq!(filter(&log, Some("debug")).unwrap().to_string(), "debug");
        assert_eq!(filter(&log, Some("  ")).unwrap().to_string(), "warn", "an empty RUST_LOG is no override");
        assert!(filter(&Log { level: "worker=loudest".into(), format: LogFormat::Json }, None).is_err());
    }
}
