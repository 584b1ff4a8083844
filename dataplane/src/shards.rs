//! Stopping a set of shard threads: a shared flag, then join.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Running shard threads and the flag that stops them.
#[derive(Debug)]
pub struct Shards {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Wraps threads that watch `stop`.
    pub fn new(stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>>) -> Shards {
        Shards { stop, threads }
    }

    /// Sets the flag and waits for every thread (each drains its work first).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
