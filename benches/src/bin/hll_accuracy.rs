//! The accuracy table of the HyperLogLog sketch (docs/aggregation.md): for several seeds,
//! adds distinct user ids (`user-<seed>-<i>`) to a sketch and compares its estimate with
//! the exact count at 10^3 … 10^7 elements. Prints a Markdown table.
//!
//! ```text
//! cargo run --release -p croupier-benches --bin hll-accuracy [SEEDS]
//! ```

use std::io::Write;

use croupier_protocol::hll::{Sketch, REGISTERS};

const SIZES: [u64; 5] = [1_000, 10_000, 100_000, 1_000_000, 10_000_000];

fn main() {
    let seeds: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 100,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: hll-accuracy [SEEDS]  (a positive number of seeds, default 100)");
            std::process::exit(2);
        }
    };
    let sigma = 1.04 / (REGISTERS as f64).sqrt();
    // errors[size][seed]: relative error of the estimate.
    let mut errors = vec![Vec::new(); SIZES.len()];
    let mut id = Vec::with_capacity(32);
    for seed in 0..seeds {
        let mut sketch = Sketch::new();
        let mut added = 0;
        for (k, &n) in SIZES.iter().enumerate() {
            while added < n {
                id.clear();
                let _ = write!(id, "user-{seed}-{added}");
                sketch.add(&id);
                added += 1;
            }
            errors[k].push((sketch.count() as f64 - n as f64) / n as f64);
        }
    }
    println!("Relative error of the estimate, {seeds} seeds (element sets) per size; expected standard error 1.04/√16384 = {:.2} %.\n", sigma * 100.0);
    println!(
        "| distinct elements | mean error (bias) | RMS error | largest error | within 1σ | within 2σ | within 3σ |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (k, &n) in SIZES.iter().enumerate() {
        let e = &errors[k];
        let count = e.len() as f64;
        let mean = e.iter().sum::<f64>() / count;
        let rms = (e.iter().map(|x| x * x).sum::<f64>() / count).sqrt();
        let max = e.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let within = |k: f64| e.iter().filter(|x| x.abs() <= k * sigma).count();
        println!(
            "| {n} | {:+.3} % | {:.3} % | {:.3} % | {}/{} | {}/{} | {}/{} |",
            mean * 100.0,
            rms * 100.0,
            max * 100.0,
            within(1.0),
            e.len(),
            within(2.0),
            e.len(),
            within(3.0),
            e.len()
        );
    }
}
