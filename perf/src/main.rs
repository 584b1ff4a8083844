//! `croupier-perf`: measures the data plane on this machine against the machine's own
//! ceilings, measured in the same run, and writes `perf/RESULTS.md`.
//!
//! ```text
//! croupier-perf all    [--seconds S] [--rows N] [--runs R] [--smoke] [--out FILE]
//! croupier-perf e2e    [--seconds S] [--connections C] [--sustain S [--sustain-fraction F]] [--smoke] [--out FILE]
//! croupier-perf worker [--rows N] [--runs R] [--out FILE]
//! croupier-perf api    [--rows N[,N...]] [--runs R] [--routes NAME[,NAME...]] [--out FILE]
//! croupier-perf otlp   [--seconds S] [--connections C] [--runs R] [--smoke] [--out FILE]
//! croupier-perf switch --env KEY=VALUE [--both-env KEY=VALUE] [--seconds S] [--runs R] [--replica] [--rate EPS] [--ingest-only] [--out FILE]
//! croupier-perf cluster [--seconds S] [--runs R] [--out FILE]
//! croupier-perf chcluster [--rows N] [--runs R] [--out FILE]
//! ```
//!
//! `chcluster`: the worker phase (N events from the stream) into one clickhouse-server
//! and into 2 shards × 2 replicas with ZooKeeper, alternated R times: rows/s, and CPU
//! seconds per million rows of the worker's threads, of all clickhouse-server processes
//! and of ZooKeeper, medians and the ratio (printed unless `--out` names a file).
//!
//! `cluster`: ingest at max on a Redis Cluster of 1, 2 and 3 primaries and on one plain
//! Redis, rotated, medians (a ratio; printed unless `--out` names a file).
//!
//! `switch`: the cost of one setting (`CROUPIER_<SECTION>__<KEY>=value`), A/B in one run:
//! `croupier run` at max with the defaults and with the setting, alternated, medians.
//! `--replica`: redis-server has a replica (`--replicaof`) on both sides, for settings
//! such as `CROUPIER_REDIS__WAIT_REPLICAS=1`; `--rate EPS`: at that fixed rate (open
//! loop) instead of at max, where latency is not queueing; `--ingest-only`: `croupier
//! ingest` (no worker) instead of `croupier run`, so that redis-server's CPU per event is
//! the ingest path's alone (the streams' high-water marks raised, as nothing consumes);
//! `--both-env KEY=VALUE`: a setting on both sides (say, another build under a non-default
//! setting).
//!
//! `e2e`: ceilings (simd-json parse on one core, `redis-benchmark` XADD per event and per
//! batch, `clickhouse-client` Native insert), then `croupier run` under the load
//! generator at max and at fixed rates, with freshness, CPU, RSS and allocations.
//!
//! `api`: the analytics API's p50/p99 per route and rows read per one-day query on a
//! generated history of N events (default 10 M and 50 M; see `api.rs`).
//!
//! `otlp`: the same events as JSON ingest batches, OTLP/HTTP protobuf log records and
//! OTLP/gRPC calls, at max to one `croupier ingest`: records per ingest-shard CPU second
//! of each, as a ratio to JSON ingest's, and allocations per record of the decode path.
//! Printed, and written to a file only when `--out` names one (the section goes into
//! `perf/RESULTS.md` beside the other OTLP figures).
//!
//! `worker`: the stream holds N events in batch entries of 100; the ceiling is
//! `clickhouse-client` inserting the same rows in Native format into a twin table; then
//! `croupier worker` (one shard) consumes the stream into ClickHouse. Each is run R times
//! on fresh tables; medians are reported, and our figure as a ratio to the ceiling.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod api;
mod chcluster;
mod e2e;
mod machine;
mod otlp;
mod worker;

#[global_allocator]
static GLOBAL: croupier_perf::alloc_count::Counting = croupier_perf::alloc_count::Counting;

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
    let smoke = args.iter().any(|a| a == "--smoke");
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let e2e_cfg = || e2e::E2eConfig {
        seconds: args.windows(2).find(|w| w[0] == "--seconds").and_then(|w| w[1].parse().ok()).unwrap_or(if smoke {
            1.0
        } else {
            20.0
        }),
        connections: arg(&args, "--connections", 8),
        croupier_cores: (0..(cores / 2).max(1)).collect(),
        loadgen_cores: ((cores / 2).max(1).min(cores - 1)..cores).collect(),
        ceiling_rows: if smoke { 20_000 } else { 1_000_000 },
        sustain_seconds: args.windows(2).find(|w| w[0] == "--sustain").and_then(|w| w[1].parse().ok()).unwrap_or(0.0),
        sustain_fraction: args
            .windows(2)
            .find(|w| w[0] == "--sustain-fraction")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(0.75),
        switch_rate: arg(&args, "--rate", 0) as u64,
        switch_ingest_only: args.iter().any(|a| a == "--ingest-only"),
    };
    let rows = arg(&args, "--rows", if smoke { 20_000 } else { 1_000_000 });
    let runs = arg(&args, "--runs", if smoke { 1 } else { 3 });
    let body = match args.first().map(String::as_str) {
        Some("worker") => worker::run(rows, runs),
        Some("e2e") => e2e::run(&e2e_cfg()),
        Some("switch") => {
            let env = args.windows(2).find(|w| w[0] == "--env").and_then(|w| w[1].split_once('='));
            let binary = args.windows(2).find(|w| w[0] == "--with-binary").map(|w| std::path::PathBuf::from(&w[1]));
            if env.is_none() && binary.is_none() {
                eprintln!(
                    "usage: croupier-perf switch (--env KEY=VALUE | --with-binary PATH | both) [--both-env KEY=VALUE] [--seconds S] [--runs R] [--replica] [--rate EPS] [--ingest-only] [--out FILE]"
                );
                std::process::exit(2);
            }
            let replica = args.iter().any(|a| a == "--replica");
            let both = args.windows(2).find(|w| w[0] == "--both-env").and_then(|w| w[1].split_once('='));
            let pair = |(k, v): (&str, &str)| (k.to_owned(), v.to_owned());
            let change = e2e::Change { env: env.map(pair), binary, both: both.map(pair) };
            e2e::switch(&e2e_cfg(), &change, runs, replica)
        }
        Some("api") => {
            let sizes: Vec<u64> = args
                .windows(2)
                .find(|w| w[0] == "--rows")
                .map(|w| w[1].split(',').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_else(|| if smoke { vec![100_000] } else { vec![10_000_000, 50_000_000] });
            // Only the routes whose name starts with one of these (all without it).
            let only: Vec<String> = args
                .windows(2)
                .find(|w| w[0] == "--routes")
                .map(|w| w[1].split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            api::run(&sizes, arg(&args, "--runs", 20), &only)
        }
        Some("cluster") => e2e::cluster(&e2e_cfg(), runs),
        Some("chcluster") => chcluster::run(rows, runs),
        Some("otlp") => otlp::run(&e2e_cfg(), runs),
        Some("all") => format!("{}{}", e2e::run(&e2e_cfg()), worker::run(rows, runs)),
        _ => {
            eprintln!(
                "usage: croupier-perf all|e2e|worker|switch|api|cluster|chcluster|otlp [--seconds S] [--rows N] [--runs R] [--smoke] [--out FILE]"
            );
            std::process::exit(2);
        }
    };
    let text = format!("{}\n{}", machine::header(&args), body);
    // A switch run is an A/B for perf/CHANGES.md and an api, cluster, chcluster or otlp run
    // one section of RESULTS.md, not the whole file: they are written to a file only when
    // --out names one.
    if matches!(args.first().map(String::as_str), Some("switch" | "api" | "cluster" | "chcluster" | "otlp"))
        && !args.iter().any(|a| a == "--out")
    {
        println!("{text}");
        return;
    }
    std::fs::write(&out, text).expect("write results");
    println!("{}", std::fs::read_to_string(&out).unwrap_or_default());
}
