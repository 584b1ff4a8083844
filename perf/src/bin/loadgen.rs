//! `croupier-loadgen`: signed game traffic against a running ingest.
//!
//! ```text
//! croupier-loadgen --url 127.0.0.1:8080 --game g --secret s [--connections 4]
//!     [--rate EVENTS_PER_SEC (0 = closed loop)] [--duration SECS] [--batch 100]
//!     [--event-bytes 300] [--seed 42] [--payments-every 50] [--cores 1,2] [--out report.json]
//! ```

#![allow(clippy::expect_used)]

use std::time::Duration;

use croupier_perf::loadgen::{run, LoadConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let num = |name: &str, d: u64| get(name).and_then(|v| v.parse().ok()).unwrap_or(d);
    let Some(url) = get("--url") else {
        eprintln!("usage: croupier-loadgen --url HOST:PORT --game ID --secret SECRET [options]; see the source header");
        std::process::exit(2);
    };
    let addr = url.trim_start_matches("http://").trim_end_matches('/').parse().expect("--url HOST:PORT");
    let cfg = LoadConfig {
        addr,
        game: get("--game").unwrap_or_else(|| "demo-game".into()),
        secret: get("--secret").unwrap_or_else(|| "change-me".into()),
        connections: num("--connections", 4) as usize,
        rate_eps: num("--rate", 0),
        duration: Duration::from_secs_f64(get("--duration").and_then(|v| v.parse().ok()).unwrap_or(10.0)),
        batch: num("--batch", 100) as usize,
        event_bytes: num("--event-bytes", 300) as usize,
        seed: num("--seed", 42),
        payments_every: num("--payments-every", 0) as usize,
        bodies: 64,
        cores: get("--cores").map(|c| c.split(',').filter_map(|x| x.trim().parse().ok()).collect()).unwrap_or_default(),
    };
    let report = run(&cfg);
    let json = serde_json::to_string_pretty(&report).expect("json");
    if let Some(out) = get("--out") {
        std::fs::write(out, &json).expect("write report");
    }
    println!("{json}");
}
