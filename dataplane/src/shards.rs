//! A set of shard threads: started by [`spawn_shards`] (one pinned thread per shard, each
//! running its own runtime), a shared stop flag, a supervisor that ends the process when
//! a thread ends before it was asked to, and a graceful stop that joins them.
//!
//! A shard that dies (a panic, or its runtime failing) would otherwise leave a process
//! that is alive but deaf on that shard's share of the listening port, and liveness
//! probes would keep passing. So the supervisor logs which thread ended and exits the
//! process ([`DEAD_SHARD_EXIT_CODE`]); the service manager restarts it. (Release builds
//! also abort on any panic: `panic = "abort"` in the workspace's release profile.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::runtime::{self, ActiveDriver};

/// Exit status of a process whose shard thread ended unexpectedly (EX_SOFTWARE).
pub const DEAD_SHARD_EXIT_CODE: i32 = 70;

/// How often the supervisor looks at the threads.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Running shard threads, their supervisor, and the flag that stops them.
#[derive(Debug)]
pub struct Shards {
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

impl Shards {
    /// Supervises threads that watch `stop`: if one ends while `stop` is not set, the
    /// process exits.
    pub fn new(stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>>) -> Shards {
        let watched = stop.clone();
        let supervisor = std::thread::Builder::new()
            .name("croupier-supervisor".into())
            .spawn(move || supervise(&watched, threads))
            .map_err(|e| {
                // Without a supervisor the shards still run; only a dead one goes unnoticed.
                tracing::error!(error = %e, "cannot start the shard supervisor; a shard that dies goes unnoticed");
            })
            .ok();
        Shards { stop, supervisor }
    }

    /// Sets the flag and waits for every thread (each drains its work first).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.supervisor.take() {
            let _ = s.join();
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts `count` shard threads named `croupier-{kind}-{id}`. Each is pinned to `core(id)`
/// when that says a core, and runs on its own runtime of `driver` the future that the
/// body made by `make(id, stop)` returns there (so the future need not be `Send`); it
/// must end once `stop` is set. If a thread cannot be started, those already running are
/// stopped.
pub fn spawn_shards<M, B, Fut>(
    kind: &str,
    count: usize,
    driver: ActiveDriver,
    core: impl Fn(usize) -> Option<usize>,
    mut make: M,
) -> Result<Shards, String>
where
    M: FnMut(usize, Arc<AtomicBool>) -> B,
    B: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(count);
    for id in 0..count {
        let body = make(id, stop.clone());
        let core = core(id);
        let label = format!("{kind} {id}");
        let spawned = std::thread::Builder::new().name(format!("croupier-{kind}-{id}")).spawn(move || {
            if let Some(core) = core {
                if !runtime::pin(core) {
                    tracing::warn!(thread = %label, core, "could not pin to the core; running unpinned");
                }
            }
            if let Err(e) = runtime::block_on(driver, body()) {
                tracing::error!(thread = %label, error = %e, "runtime failed");
            }
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                Shards::new(stop, threads).shutdown();
                return Err(format!("cannot start {kind} {id}: {e}"));
            }
        }
    }
    Ok(Shards::new(stop, threads))
}

/// Watches `threads` until `stop` is set, then joins them. A thread that ends first
/// ends the process.
fn supervise(stop: &AtomicBool, mut threads: Vec<JoinHandle<()>>) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(i) = threads.iter().position(JoinHandle::is_finished) {
            // Read the flag again: the thread may have ended because it was just set.
            if !stop.load(Ordering::Relaxed) {
                let t = threads.swap_remove(i);
                let name = t.thread().name().unwrap_or("a shard thread").to_owned();
                let how = match t.join() {
                    Ok(()) => "it returned".to_owned(),
                    Err(payload) => format!("it panicked: {}", panic_message(payload.as_ref())),
                };
                // Logged and written out before the exit, which runs no destructors.
                croupier_control::logging::fatal(&format!(
                    "{name} ended unexpectedly ({how}); exiting so that the process is restarted \
                     (exit status {DEAD_SHARD_EXIT_CODE})"
                ));
                std::process::exit(DEAD_SHARD_EXIT_CODE);
            }
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    for t in threads {
        let _ = t.join();
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in the child process that [`c1_a_shard_thread_that_dies_ends_the_process`] starts.
    const CHILD: &str = "CROUPIER_TEST_DEAD_SHARD_CHILD";

    fn threads(stop: &Arc<AtomicBool>, panic_in: Option<usize>) -> Vec<JoinHandle<()>> {
        (0..2)
            .map(|id| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("croupier-shard-{id}"))
                    .spawn(move || {
                        if panic_in == Some(id) {
                            std::thread::sleep(Duration::from_millis(50));
                            panic!("shard {id} broke");
                        }
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    })
                    .unwrap()
            })
            .collect()
    }

    /// Runs in a child process only: a shard panics, then the process would idle for 5 s.
    #[test]
    #[ignore = "started as a child process by c1_a_shard_thread_that_dies_ends_the_process"]
    fn dead_shard_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let _shards = Shards::new(stop.clone(), threads(&stop, Some(1)));
        std::thread::sleep(Duration::from_secs(5));
        std::process::exit(0);
    }

    #[test]
    fn c1_a_shard_thread_that_dies_ends_the_process() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["shards::tests::dead_shard_child", "--exact", "--ignored", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(DEAD_SHARD_EXIT_CODE), "{stderr}");
        assert!(stderr.contains("croupier-shard-1 ended unexpectedly (it panicked: shard 1 broke)"), "{stderr}");
    }

    #[test]
    fn threads_that_end_on_shutdown_are_joined() {
        let stop = Arc::new(AtomicBool::new(false));
        let shards = Shards::new(stop.clone(), threads(&stop, None));
        std::thread::sleep(Duration::from_millis(50));
        shards.shutdown();
        assert!(stop.load(Ordering::Relaxed));
    }
}
