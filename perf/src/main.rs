//! `croupier-perf`: measures the data plane on this machine against the machine's own
//! ceilings, measured in the same run, and writes `perf/RESULTS.md`.
//!
//! ```text
//! croupier-perf worker [--rows N] [--runs R] [--out FILE]
//! ```
//!
//! `worker`: the stream holds N events in batch entries of 100; the ceiling is
//! `clickhouse-client` inserting the same rows in Native format into a twin table; then
//! `croupier worker` (one shard) consumes the stream into ClickHouse. Each is run R times
//! on fresh tables; medians are reported, and our figure as a ratio to the ceiling.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod machine;
mod worker;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .windows(2)
        .find(|w| w[0] == "--out")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md").to_owned());
    match args.first().map(String::as_str) {
        Some("worker") => {
            let rows = arg(&args, "--rows", 1_000_000);
            let runs = arg(&args, "--runs", 3);
            let report = worker::run(rows, runs);
            let text = format!("{}\n{}", machine::header(&args), report);
            std::fs::write(&out, text).expect("write results");
            println!("{}", std::fs::read_to_string(&out).unwrap_or_default());
        }
        _ => {
            eprintln!("usage: croupier-perf worker [--rows N] [--runs R] [--out FILE]");
            std::process::exit(2);
        }
    }
}
