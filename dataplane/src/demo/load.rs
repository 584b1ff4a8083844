//! The simulated players: a thread that sends the player model's events (and payments) to
//! the data port, signed like any client, at the rate asked, while players join the game
//! over the compressed day. It counts what was accepted and refused and how long each
//! acknowledgement took.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::http_client::Client;
use super::model::TrafficModel;

/// Events per request at most (fewer at low rates: one request per tick).
const MAX_BATCH: usize = 200;
/// How often the sender catches up with the rate.
const TICK: Duration = Duration::from_millis(100);
/// Acknowledgement times kept for the run's percentiles (the newest are dropped past it).
const MAX_SAMPLES: usize = 1 << 20;

/// What the load thread has done so far.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    /// Events acknowledged with 202.
    pub accepted_events: u64,
    /// Payments acknowledged with 202.
    pub accepted_payments: u64,
    /// Records refused (any status but 202), and requests that failed.
    pub refused: u64,
    /// Requests that got no answer (connection errors, timeouts).
    pub failed_requests: u64,
    /// Acknowledgement times since the last [`Load::take_recent`], in microseconds.
    recent_us: Vec<u32>,
    /// All acknowledgement times of the run, in microseconds.
    all_us: Vec<u32>,
    /// Players in the game.
    pub joined: usize,
}

/// The p50 and p99 of `samples`, in milliseconds (`None` when empty).
pub fn percentiles(samples: &mut [u32]) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Some((at(0.50), at(0.99)))
}

/// The running load.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    thread: Option<JoinHandle<()>>,
}

/// What the simulated players send, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The data port.
    pub addr: SocketAddr,
    /// The game and its secret.
    pub game: String,
    /// The game's secret.
    pub secret: String,
    /// Events per second.
    pub rate: u32,
    /// Players in the model.
    pub players: usize,
    /// The first player's number (each run brings new players).
    pub first_player: u64,
    /// The compressed day: players join over it.
    pub day: Duration,
    /// The model's seed.
    pub seed: u64,
}

impl Load {
    /// Starts sending.
    pub fn start(plan: Plan) -> Result<Load, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let thread = std::thread::Builder::new()
            .name("demo-players".into())
            .spawn({
                let (stop, stats) = (stop.clone(), stats.clone());
                move || run(plan, &stop, &stats)
            })
            .map_err(|e| format!("cannot start the players' thread: {e}"))?;
        Ok(Load { stop, stats, thread: Some(thread) })
    }

    /// A copy of the counters, and the acknowledgement times since the last call.
    pub fn take_recent(&self) -> (LoadStats, Vec<u32>) {
        match self.stats.lock() {
            Ok(mut s) => {
                let recent = std::mem::take(&mut s.recent_us);
                (LoadStats { recent_us: Vec::new(), all_us: Vec::new(), ..s.clone() }, recent)
            }
            Err(_) => (LoadStats::default(), Vec::new()),
        }
    }

    /// Stops sending (the request in flight gets its answer) and returns the run's
    /// counters and all its acknowledgement times.
    pub fn stop(mut self) -> (LoadStats, Vec<u32>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.stats.lock() {
            Ok(mut s) => {
                let all = std::mem::take(&mut s.all_us);
                (LoadStats { recent_us: Vec::new(), all_us: Vec::new(), ..s.clone() }, all)
            }
            Err(_) => (LoadStats::default(), Vec::new()),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn run(plan: Plan, stop: &AtomicBool, stats: &Mutex<LoadStats>) {
    let mut model = TrafficModel::new(plan.seed, &plan.game, plan.players, 0).with_registrations(plan.first_player);
    let mut client = Client::new(plan.addr, Duration::from_secs(10));
    let start = Instant::now();
    let (mut sent, mut payments_due, mut nonce) = (0u64, 0.0f64, 0u64);
    let run_id = plan.seed;
    while !stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        // Players join over the day: a tenth at once, the rest evenly.
        let day_part = (elapsed.as_secs_f64() / plan.day.as_secs_f64()).min(1.0);
        model.set_joined(((0.1 + 0.9 * day_part) * plan.players as f64).ceil() as usize);
        let due = (elapsed.as_secs_f64() * f64::from(plan.rate)) as u64;
        if due <= sent {
            // Nothing due: the events of the next 100 ms go in one request.
            std::thread::sleep(TICK);
            continue;
        }
        let n = ((due - sent) as usize).min(MAX_BATCH);
        sent += n as u64;
        let body = model.events_body(n, now_ms());
        nonce += 1;
        send(&mut client, &plan, &format!("demo-{run_id}-{nonce}"), body.as_bytes(), n, false, stats);
        // About one payment per 500 events.
        payments_due += n as f64 / 500.0;
        if payments_due >= 1.0 {
            let k = payments_due as usize;
            payments_due -= k as f64;
            let body = model.payments_body(k, now_ms());
            nonce += 1;
            send(&mut client, &plan, &format!("demo-{run_id}-{nonce}"), body.as_bytes(), k, true, stats);
        }
        if let Ok(mut s) = stats.lock() {
            s.joined = model.joined();
        }
    }
}

fn send(
    client: &mut Client,
    plan: &Plan,
    nonce: &str,
    body: &[u8],
    n: usize,
    payments: bool,
    stats: &Mutex<LoadStats>,
) {
    let ts = (now_ms() / 1000).to_string();
    let signature = croupier_protocol::signature::sign(plan.secret.as_bytes(), &ts, nonce, body);
    let path = if payments { "/api/ingest/payments" } else { "/api/ingest/events" };
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Game-Id", plan.game.as_str()),
        ("X-Timestamp", ts.as_str()),
        ("X-Nonce", nonce),
        ("X-Signature", signature.as_str()),
    ];
    let t0 = Instant::now();
    let res = client.request("POST", path, &headers, body);
    let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
    let Ok(mut s) = stats.lock() else { return };
    match res {
        Ok(r) if r.status == 202 => {
            if payments {
                s.accepted_payments += n as u64;
            } else {
                s.accepted_events += n as u64;
            }
            s.recent_us.push(us);
            if s.all_us.len() < MAX_SAMPLES {
                s.all_us.push(us);
            }
        }
        Ok(_) => s.refused += n as u64,
        Err(_) => {
            s.refused += n as u64;
            s.failed_requests += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_samples() {
        let mut s: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentiles(&mut s), Some((51.0, 99.0)));
        assert_eq!(percentiles(&mut []), None);
    }
}
