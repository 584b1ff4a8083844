//! End to end on this machine: ceilings measured in the same run, then `croupier run`
//! (ingest + worker) pinned to chosen cores, driven by the load generator on the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::redis::RedisServer;
use croupier_perf::alloc_count;
use croupier_perf::loadgen::{self, LoadConfig, LoadReport};
use croupier_perf::model::TrafficModel;
use croupier_protocol::batch::{self, Batch, Records};
use croupier_protocol::envelope::EventBatch;
use croupier_protocol::validate::{self, JsonBuffers, Limits};

use crate::worker;

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct E2eConfig {
    /// Seconds per load phase.
    pub seconds: f64,
    /// Load generator connections.
    pub connections: usize,
    /// Cores for croupier (ingest shards and the worker share them).
    pub croupier_cores: Vec<usize>,
    /// Cores for the load generator.
    pub loadgen_cores: Vec<usize>,
    /// Rows for the ClickHouse ceiling.
    pub ceiling_rows: usize,
    /// Seconds of the sustained phase (0 = none).
    pub sustain_seconds: f64,
    /// Its rate as a fraction of the measured max.
    pub sustain_fraction: f64,
    /// `switch` at this fixed rate, events/s (0: at max, closed loop).
    pub switch_rate: u64,
    /// `switch` runs `croupier ingest` (no worker) instead of `croupier run`, so that
    /// redis-server's CPU is the ingest path's alone.
    pub switch_ingest_only: bool,
}

const GAME: &str = "perf-game";
const SECRET: &str = "perf-secret";
/// The freshness probes' own game: with it and an event id of their own, a probe is
/// found through the table's primary key (game_id, env, event, event_id) instead of a
/// scan of every row, which on tens of millions of rows would load ClickHouse more than
/// the traffic being measured.
const PROBE_GAME: &str = "perf-probe";

pub(crate) fn croupier_binary() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("own path");
    let p = me.with_file_name("croupier");
    assert!(p.exists(), "{} not built: cargo build -p croupier-dataplane --bin croupier (same profile)", p.display());
    p
}

/// simd-json parse of the request bodies on one core (to its tape, with reused buffers:
/// the least work a parse can do): events/s.
fn parse_ceiling(seconds: f64) -> f64 {
    let mut m = TrafficModel::new(1, GAME, 100_000, 300);
    let bodies: Vec<Vec<u8>> = (0..16).map(|_| m.events_body(100, 1_795_617_749_000).into_bytes()).collect();
    let t = Instant::now();
    let mut n = 0u64;
    let mut buf = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    while t.elapsed().as_secs_f64() < seconds {
        for b in &bodies {
            buf.clear();
            buf.extend_from_slice(b);
            let v = simd_json::to_tape_with_buffers(&mut buf, &mut buffers).expect("valid JSON");
            std::hint::black_box(v.0.len());
            n += 100;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Parse + validate + encode on one core: events/s, allocations per event.
fn ingest_cpu_path(seconds: f64) -> (f64, f64) {
    let mut m = TrafficModel::new(2, GAME, 100_000, 300);
    let bodies: Vec<Vec<u8>> = (0..16).map(|_| m.events_body(100, 1_795_617_749_000).into_bytes()).collect();
    let limits = Limits::default();
    let (mut events, mut custom) = (EventBatch::with_capacity(100, 320), EventBatch::default());
    let mut json = JsonBuffers::default();
    let mut archive = rkyv::util::AlignedVec::new();
    let mut buf = Vec::new();
    let t = Instant::now();
    let allocs_before = alloc_count::count();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        for b in &bodies {
            buf.clear();
            buf.extend_from_slice(b);
            events.clear();
            custom.clear();
            validate::parse_events_in(&mut json, &mut buf, GAME, &limits, &mut || [1; 16], &mut events, &mut custom)
                .expect("valid");
            // The batch and the archive buffer are reused, as a shard can.
            let b = Batch { accepted_at_ms: 1, records: Records::Events(std::mem::take(&mut events)) };
            archive = batch::encode_into(&b, std::mem::take(&mut archive)).expect("encode");
            std::hint::black_box(archive.len());
            if let Records::Events(e) = b.records {
                events = e;
            }
            n += 100;
        }
    }
    let allocs = alloc_count::count() - allocs_before;
    (n as f64 / t.elapsed().as_secs_f64(), allocs as f64 / n as f64)
}

/// `redis-benchmark` XADD: one event per entry, and one 100-event batch per entry.
fn redis_ceilings(redis: &RedisServer) -> (f64, f64) {
    let mut m = TrafficModel::new(3, GAME, 100_000, 300);
    let body = m.events_body(100, 1_795_617_749_000);
    let one = body.trim_start_matches('[').split("},{").next().unwrap_or("{}").to_owned() + "}";
    let mut ev = EventBatch::default();
    let mut c = EventBatch::default();
    let mut b = body.clone().into_bytes();
    validate::parse_events(&mut b, GAME, &Limits::default(), &mut || [1; 16], &mut ev, &mut c).expect("valid");
    c.to_events().iter().for_each(|e| ev.push(e).expect("an event fits"));
    let archive = batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(ev) }).expect("encode");
    let archive_text: String =
        archive.iter().map(|&x| if x.is_ascii_alphanumeric() { x as char } else { 'x' }).collect();
    let bench = |n: &str, args: &[&str]| -> f64 {
        let out = Command::new("redis-benchmark")
            .args(["-p", &redis.port.to_string(), "-n", n, "-P", "32", "-c", "8", "-q"])
            .args(args)
            .output()
            .expect("redis-benchmark (Debian package redis-tools)");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(" requests per second")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let single = bench("200000", &["XADD", "bench:one", "MAXLEN", "~", "1000000", "*", "data", &one]);
    let batched = bench(
        "20000",
        &["XADD", "bench:batch", "MAXLEN", "~", "10000", "*", "fmt", "rkyv1", "n", "100", "batch", &archive_text],
    );
    let mut r = redis.client();
    r.cmd(&["DEL", "bench:one", "bench:batch"]);
    (single, batched * 100.0)
}

/// User + system CPU seconds from a `/proc/.../stat` file (a process's or a thread's).
fn stat_cpu(path: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub(crate) fn proc_stat(pid: u32) -> (f64, u64) {
    let cpu = stat_cpu(std::path::Path::new(&format!("/proc/{pid}/stat")));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// CPU seconds used so far by each of `pids` (croupier, redis-server, clickhouse-server).
fn processes_cpu(pids: [Option<u32>; 3]) -> [f64; 3] {
    pids.map(|p| p.map_or(0.0, |p| proc_stat(p).0))
}

/// CPU seconds used in each whole second until `until` by each of `pids`.
fn cpu_per_second(pids: [Option<u32>; 3], until: Instant) -> Vec<[f64; 3]> {
    let read = || processes_cpu(pids);
    let start = Instant::now();
    let mut prev = read();
    let mut out = Vec::new();
    for k in 1.. {
        let next = start + Duration::from_secs(k);
        if next > until {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = read();
        out.push([0, 1, 2].map(|i| now[i] - prev[i]));
        prev = now;
    }
    out
}

/// The seconds of the sustained phase with the longest acks, beside what each process used
/// of the machine in them, and the same for all seconds.
fn worst_seconds(max_us: &[u64], cpu: &[[f64; 3]]) -> String {
    let n = max_us.len().min(cpu.len());
    if n == 0 {
        return String::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(max_us[i]));
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let col = |idx: &[usize], c: usize| median(idx.iter().map(|&i| cpu[i][c]).collect());
    let worst: Vec<usize> = order.iter().copied().take(10).collect();
    let mut t = String::from(
        "\nThe seconds with the longest acks, and the CPU each process used in them (cores; from `/proc`, \
         sampled every second):\n\n\
         | second | longest ack ms | croupier | redis-server | clickhouse-server |\n|---:|---:|---:|---:|---:|\n",
    );
    for &i in worst.iter().take(5) {
        t.push_str(&format!(
            "| {i} | {:.1} | {:.2} | {:.2} | {:.2} |\n",
            max_us[i] as f64 / 1000.0,
            cpu[i][0],
            cpu[i][1],
            cpu[i][2]
        ));
    }
    let all: Vec<usize> = (0..n).collect();
    t.push_str(&format!(
        "| median of the worst 10 | {:.1} | {:.2} | {:.2} | {:.2} |\n\
         | median of all {n} seconds | {:.1} | {:.2} | {:.2} | {:.2} |\n",
        median(worst.iter().map(|&i| max_us[i] as f64 / 1000.0).collect()),
        col(&worst, 0),
        col(&worst, 1),
        col(&worst, 2),
        median(all.iter().map(|&i| max_us[i] as f64 / 1000.0).collect()),
        col(&all, 0),
        col(&all, 1),
        col(&all, 2),
    ));
    t
}

/// CPU seconds of the process's threads whose name starts with `prefix` (Linux truncates
/// thread names to 15 bytes: `croupier-shard-`, `croupier-worker`).
pub(crate) fn threads_cpu(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let mut total = 0.0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        total += stat_cpu(&t.path().join("stat"));
    }
    total
}

struct Croupier {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Croupier {
    fn drop(&mut self) {
        croupier_it::signal(&self.child, "TERM");
        let _ = self.child.wait();
    }
}

/// Where `croupier run` writes its log: `CROUPIER_PERF_LOG` (appended to), else nowhere.
fn croupier_log() -> Stdio {
    std::env::var_os("CROUPIER_PERF_LOG")
        .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
        .map_or_else(Stdio::null, Stdio::from)
}

fn start_croupier(
    driver: &str,
    cores: &[usize],
    redis: &RedisServer,
    ch: &ClickHouseServer,
    extra_env: &[(String, String)],
) -> Croupier {
    start_croupier_as("run", driver, cores, redis, ch, extra_env)
}

/// [`start_croupier`] with the subcommand `cmd` (`run`, or `ingest`: no worker).
fn start_croupier_as(
    cmd: &str,
    driver: &str,
    cores: &[usize],
    redis: &RedisServer,
    ch: &ClickHouseServer,
    extra_env: &[(String, String)],
) -> Croupier {
    start_binary_as(&croupier_binary(), cmd, driver, cores, redis, ch, extra_env)
}

/// [`start_croupier_as`] with the `croupier` binary at `binary` (another build, for A/B).
fn start_binary_as(
    binary: &Path,
    cmd: &str,
    driver: &str,
    cores: &[usize],
    redis: &RedisServer,
    ch: &ClickHouseServer,
    extra_env: &[(String, String)],
) -> Croupier {
    let port = croupier_it::free_port();
    let core_list = format!("[{}]", cores.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","));
    let child = Command::new(binary)
        .arg(cmd)
        .env("CROUPIER_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CROUPIER_OTLP__LISTEN", "")
        .env("CROUPIER_SERVER__SHARDS", cores.len().to_string())
        .env("CROUPIER_SERVER__CORES", &core_list)
        .env("CROUPIER_SERVER__DRIVER", driver)
        .env("CROUPIER_CONTROL__LISTEN", "127.0.0.1:0")
        .env("CROUPIER_WORKER__SHARDS", "1")
        .env("CROUPIER_WORKER__CONSUMER", "perf")
        .env("CROUPIER_REDIS__ADDR", redis.addr())
        .env("CROUPIER_CLICKHOUSE__ADDR", ch.addr())
        .env(format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET)
        .env(format!("CROUPIER_GAMES__{PROBE_GAME}__SECRET"), SECRET)
        .envs(extra_env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(croupier_log())
        .spawn()
        .expect("start croupier run");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "croupier did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    Croupier { child, addr }
}

fn load(cfg: &E2eConfig, addr: SocketAddr, rate: u64, seconds: f64) -> LoadReport {
    let lc = LoadConfig {
        addr,
        game: GAME.into(),
        secret: SECRET.into(),
        connections: cfg.connections,
        rate_eps: rate,
        duration: Duration::from_secs_f64(seconds),
        batch: 100,
        event_bytes: 300,
        seed: 42,
        payments_every: 0,
        bodies: 64,
        cores: cfg.loadgen_cores.clone(),
    };
    loadgen::run(&lc)
}

/// Rows in `analytics.events`, counted without `FINAL` (which on tens of millions of rows
/// takes ClickHouse 18 longer than the measurement). A run without faults redelivers
/// nothing, so rows equal distinct events here; the fault tests (tests/it/worker.rs) are
/// where duplicates are counted away.
fn count(ch: &ClickHouseServer) -> u64 {
    ch.query("SELECT count() FROM analytics.events").trim().parse().unwrap_or(0)
}

/// Waits (up to 2 minutes) until `want` rows are visible; returns the last count.
fn wait_visible(ch: &ClickHouseServer, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut visible = count(ch);
    while visible < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        visible = count(ch);
    }
    visible
}

/// Freshness samples: a marker event posted every `every`, timed until visible.
fn freshness(addr: SocketAddr, ch: &ClickHouseServer, samples: usize, until: Option<Instant>) -> Vec<f64> {
    static PROBE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut out = Vec::new();
    for _ in 0..samples {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let i = PROBE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let id = format!("00000000-0000-4000-8000-{:04x}{:08x}", std::process::id() & 0xffff, i);
        let body = format!(
            r#"[{{"ts":{ts},"game_id":"{PROBE_GAME}","env":"prod","event":"heartbeat","user_id":"probe","event_id":"{id}"}}]"#
        );
        let headers = croupier_it::http::signed_headers(
            PROBE_GAME,
            SECRET,
            body.as_bytes(),
            ts as i64,
            &croupier_it::http::fresh_nonce(),
        );
        let t = Instant::now();
        let r = croupier_it::http::HttpClient::connect(addr).request(
            "POST",
            "/api/ingest/events",
            &headers,
            body.as_bytes(),
        );
        if r.status != 202 {
            continue;
        }
        let q = format!(
            "SELECT count() FROM analytics.events WHERE game_id = '{PROBE_GAME}' AND env = 'prod' \
             AND event = 'heartbeat' AND event_id = toUUID('{id}')"
        );
        while ch.query(&q).trim() != "1" && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn q(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Open loop at `rate` with clickhouse-server frozen (SIGSTOP) for the phase: ingest's
/// latency without ClickHouse's inserts and merges competing for the cores. The streams'
/// high-water marks are raised so the backlog of the phase fits; afterwards ClickHouse
/// goes on and every accepted event must land. Returns the load report and the loss.
fn clickhouse_paused(cfg: &E2eConfig, redis: &RedisServer, ch: &ClickHouseServer, rate: f64) -> (LoadReport, i64) {
    eprintln!("e2e: {rate:.0} events/s with ClickHouse paused");
    let room = (rate * cfg.seconds * 2.0) as u64 + 1_000_000;
    let env: Vec<(String, String)> = ["EVENTS", "CUSTOM"]
        .iter()
        .flat_map(|s| {
            [
                (format!("CROUPIER_STREAMS__{s}__HIGH_WATER_EVENTS"), room),
                (format!("CROUPIER_STREAMS__{s}__RETENTION_EVENTS"), room + room / 4),
            ]
        })
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    let c = start_croupier("auto", &cfg.croupier_cores, redis, ch, &env);
    // Earlier phases' last entries are still being consumed (by this croupier's worker,
    // under the same consumer name): start counting once the row count holds still.
    let settle = Instant::now() + Duration::from_secs(120);
    let mut before = count(ch);
    let mut still = 0;
    while still < 3 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(500));
        let now = count(ch);
        still = if now == before { still + 1 } else { 0 };
        before = now;
    }
    ch.pause();
    let r = load(cfg, c.addr, rate as u64, cfg.seconds);
    ch.resume();
    let want = before + r.accepted_events;
    (r, want as i64 - wait_visible(ch, want) as i64)
}

/// Runs the end-to-end measurement; returns the report section.
pub fn run(cfg: &E2eConfig) -> String {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let phase = cfg.seconds;
    eprintln!("e2e: ceilings");
    let parse = parse_ceiling(phase.min(2.0));
    let (path_eps, allocs_per_event) = ingest_cpu_path(phase.min(2.0));
    let (xadd_one, xadd_batch) = redis_ceilings(&redis);
    let ch_ceiling = worker::clickhouse_ceiling(&ch, cfg.ceiling_rows);
    eprintln!("e2e: croupier run");
    let croupier = start_croupier("auto", &cfg.croupier_cores, &redis, &ch, &[]);
    let pid = croupier.child.id();
    let pids = [Some(pid), redis.pid(), ch.pid()];
    let cpu_start = processes_cpu(pids);
    let cpu0 = cpu_start[0];
    let (shard0, worker0) = (threads_cpu(pid, "croupier-shard"), threads_cpu(pid, "croupier-worker"));
    let t0 = Instant::now();
    let max = load(cfg, croupier.addr, 0, phase);
    let (cpu1, _) = proc_stat(pid);
    let (shard1, worker1) = (threads_cpu(pid, "croupier-shard"), threads_cpu(pid, "croupier-worker"));
    // Everything accepted must become visible.
    let visible = wait_visible(&ch, max.accepted_events);
    if visible < max.accepted_events {
        // Where the missing events are: still in the stream, pending, dead-lettered, or gone.
        for args in [
            &["XINFO", "GROUPS", "analytics:events"][..],
            &["XLEN", "analytics:events"],
            &["XPENDING", "analytics:events", "analytics-workers"],
            &["XLEN", "analytics:events:dead"],
            &["XINFO", "STREAM", "analytics:events"],
        ] {
            eprintln!("e2e: missing rows; {}: {:?}", args.join(" "), redis.client().cmd(args));
        }
    }
    let drained = t0.elapsed().as_secs_f64();
    let cpu_drained = processes_cpu(pids);
    let e2e_eps = visible as f64 / drained;
    let mut rows = Vec::new();
    let mut fresh_loaded = Vec::new();
    for frac in [0.5, 0.25] {
        let rate = (max.events_per_sec * frac).max(100.0) as u64;
        eprintln!("e2e: fixed rate {rate} events/s");
        // Freshness probes run beside the load at 50 % of max.
        let (r, f) = std::thread::scope(|sc| {
            let probe = (frac == 0.5).then(|| {
                let until = Instant::now() + Duration::from_secs_f64(phase);
                let ch = &ch;
                let addr = croupier.addr;
                sc.spawn(move || freshness(addr, ch, usize::MAX, Some(until)))
            });
            let r = load(cfg, croupier.addr, rate, phase);
            (r, probe.and_then(|p| p.join().ok()).unwrap_or_default())
        });
        fresh_loaded.extend(f);
        rows.push((frac, r));
    }
    fresh_loaded.sort_by(|a, b| a.total_cmp(b));
    let fresh = freshness(croupier.addr, &ch, if phase < 3.0 { 5 } else { 40 }, None);
    let sustained = (cfg.sustain_seconds > 0.0).then(|| {
        let rate = (max.events_per_sec * cfg.sustain_fraction) as u64;
        eprintln!("e2e: sustained {rate} events/s for {} s", cfg.sustain_seconds);
        let before = count(&ch);
        let (r, f, cpu) = std::thread::scope(|sc| {
            let until = Instant::now() + Duration::from_secs_f64(cfg.sustain_seconds);
            let (ch, addr) = (&ch, croupier.addr);
            let probe = sc.spawn(move || freshness(addr, ch, usize::MAX, Some(until)));
            let sampler = sc.spawn(move || cpu_per_second(pids, until));
            let r = load(cfg, croupier.addr, rate, cfg.sustain_seconds);
            (r, probe.join().unwrap_or_default(), sampler.join().unwrap_or_default())
        });
        let want = before + r.accepted_events + f.len() as u64;
        let visible = wait_visible(&ch, want);
        let mut f = f;
        f.sort_by(|a, b| a.total_cmp(b));
        (rate, r, want - before, visible - before, f, cpu)
    });
    let (_, rss_kb) = proc_stat(pid);
    let millions = max.accepted_events.max(1) as f64 / 1e6;
    let cpu_per_m = (cpu1 - cpu0) / millions;
    let (shard_per_m, worker_per_m) = ((shard1 - shard0) / millions, (worker1 - worker0) / millions);
    // Events per second of ingest-shard CPU: what one data core would carry with the
    // load generator, Redis and ClickHouse elsewhere.
    let per_shard_core = if shard1 > shard0 { max.accepted_events as f64 / (shard1 - shard0) } else { f64::NAN };
    // Where the machine goes: CPU per million events of each process, from the start of
    // the max phase until everything accepted is visible.
    let [croupier_drained_per_m, redis_per_m, ch_per_m] = [0, 1, 2].map(|i| (cpu_drained[i] - cpu_start[i]) / millions);
    drop(croupier);
    let all_cores: Vec<usize> = (0..std::thread::available_parallelism().map(usize::from).unwrap_or(1)).collect();
    let mut variants = Vec::new();
    for (label, driver, cores) in [
        ("epoll driver, same cores", "epoll", cfg.croupier_cores.clone()),
        ("io_uring driver (auto), one shard per core of the machine", "auto", all_cores.clone()),
    ] {
        eprintln!("e2e: variant {label}");
        let c = start_croupier(driver, &cores, &redis, &ch, &[]);
        variants.push((label, cores.len(), load(cfg, c.addr, 0, phase)));
    }
    let paused = clickhouse_paused(cfg, &redis, &ch, max.events_per_sec * 0.5);

    let lat = |r: &LoadReport| {
        format!(
            "{:.0} | {:.1} | {} | {} | {} | {}",
            r.events_per_sec,
            r.mb_per_sec,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.refused.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" ")
        )
    };
    let mut t = format!(
        "\n## End to end: HTTP → Redis → ClickHouse\n\n\
         `croupier run` (ingest shards on cores {:?}, one worker shard) with redis-server and clickhouse-server \
         unpinned on the same machine; the load generator ({} connections, batches of 100 events of ~300 B, \
         closed loop at max, open loop at fixed rates, latency corrected for coordinated omission) on cores {:?}; \
         {phase} s per phase.\n\n\
         ### Ceilings measured in this run\n\n\
         | ceiling | events/s |\n|---|---:|\n\
         | simd-json parse of the request bodies to its tape, one core | {parse:.0} |\n\
         | `redis-benchmark` XADD, one event per entry (as Croupier's Go ingest) | {xadd_one:.0} |\n\
         | `redis-benchmark` XADD, one 100-event batch per entry | {xadd_batch:.0} |\n\
         | `clickhouse-client` INSERT FORMAT Native of the same rows | {ch_ceiling:.0} |\n\n\
         ### Ingest\n\n\
         | load | accepted events/s | MB/s | ack p50 µs | ack p99 µs | ack p99.9 µs | refused |\n|---|---:|---:|---:|---:|---:|---|\n\
         | max (closed loop) | {} |\n",
        cfg.croupier_cores,
        cfg.connections,
        cfg.loadgen_cores,
        lat(&max),
    );
    for (frac, r) in &rows {
        t.push_str(&format!("| {:.0}% of max ({} events/s target) | {} |\n", frac * 100.0, r.target_eps, lat(r)));
    }
    t.push_str(&format!(
        "| 50% of max with clickhouse-server paused (SIGSTOP) for the phase; lost after it went on: {} | {} |\n",
        paused.1,
        lat(&paused.0)
    ));
    t.push_str(&format!(
        "\n### Figures and ratios\n\n\
         | figure | value | ceiling | ratio |\n|---|---:|---:|---:|\n\
         | ingest events/s at max | {:.0} | {parse:.0} (parse, 1 core) | {:.2} |\n\
         | ingest events/s at max vs Redis batch XADD | {:.0} | {xadd_batch:.0} | {:.2} |\n\
         | parse + validate + encode, one core (no I/O) | {path_eps:.0} | {parse:.0} (parse, 1 core) | {:.2} |\n\
         | events per CPU second of the ingest shard at max (HTTP + parse + Redis round trip) | {per_shard_core:.0} | {parse:.0} (parse, 1 core) | {:.2} |\n\
         | end to end (accepted → visible in ClickHouse) events/s | {e2e_eps:.0} | {ch_ceiling:.0} (Native insert) | {:.2} |\n\n\
         | figure | value |\n|---|---:|\n\
         | accepted at max / rows in ClickHouse (loss) | {} / {visible} ({}) |\n\
         | freshness p50 / p99 (accepted → visible) under load at 50 % of max, ms | {:.0} / {:.0} ({} samples) |\n\
         | freshness p50 / p99 (accepted → visible) idle, ms | {:.0} / {:.0} ({} samples) |\n\
         | croupier CPU seconds per million events (ingest + worker) | {cpu_per_m:.2} |\n\
         | of which ingest shard / worker threads | {shard_per_m:.2} / {worker_per_m:.2} |\n\
         | CPU seconds per million events by process, max phase until all visible ({drained:.0} s): croupier / redis-server / clickhouse-server | {croupier_drained_per_m:.2} / {redis_per_m:.2} / {ch_per_m:.2} |\n\
         | croupier peak RSS | {:.1} MiB |\n\
         | allocations per event, parse + validate + encode | {allocs_per_event:.2} |\n\n\
         ### io driver and shards (closed loop at max)\n\n\
         | croupier | ingest shards | accepted events/s | ack p99 µs | vs the first row |\n|---|---:|---:|---:|---:|\n\
         | io_uring driver (auto), cores {:?} | {} | {:.0} | {} | 1.00 |\n",
        max.events_per_sec,
        max.events_per_sec / parse,
        max.events_per_sec,
        max.events_per_sec / xadd_batch,
        path_eps / parse,
        per_shard_core / parse,
        e2e_eps / ch_ceiling,
        max.accepted_events,
        max.accepted_events as i64 - visible as i64,
        q(&fresh_loaded, 0.5),
        q(&fresh_loaded, 0.99),
        fresh_loaded.len(),
        q(&fresh, 0.5),
        q(&fresh, 0.99),
        fresh.len(),
        rss_kb as f64 / 1024.0,
        cfg.croupier_cores,
        cfg.croupier_cores.len(),
        max.events_per_sec,
        max.latency.p99_us,
    ));
    for (label, shards, r) in &variants {
        t.push_str(&format!(
            "| {label} | {shards} | {:.0} | {} | {:.2} |\n",
            r.events_per_sec,
            r.latency.p99_us,
            r.events_per_sec / max.events_per_sec.max(1.0)
        ));
    }
    if let Some((rate, r, want, visible, f, cpu)) = &sustained {
        t.push_str(&format!(
            "\n### Sustained\n\n{} s open loop at {rate} events/s ({:.0} % of max), freshness probes beside it.\n\n\
             | figure | value |\n|---|---:|\n\
             | accepted events/s | {:.0} |\n\
             | ack p50 / p99 / p99.9 µs | {} / {} / {} |\n\
             | accepted / rows in ClickHouse (loss) | {want} / {visible} ({}) |\n\
             | freshness p50 / p99 ms | {:.0} / {:.0} ({} samples) |\n\
             | refused | {} |\n",
            cfg.sustain_seconds,
            cfg.sustain_fraction * 100.0,
            r.events_per_sec,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            *want as i64 - *visible as i64,
            q(f, 0.5),
            q(f, 0.99),
            f.len(),
            r.refused.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" "),
        ));
        t.push_str(&worst_seconds(&r.max_us_per_second, cpu));
    }
    t.push_str(&format!(
        "\nWith {} cores, one shard per core shares every core with the load generator, redis-server and \
         clickhouse-server: this machine cannot show how shards scale on dedicated cores, only what happens \
         when they contend.\n",
        all_cores.len()
    ));
    t
}

/// A figure read off a [`SwitchRun`].
type Figure = fn(&SwitchRun) -> f64;

/// One side of a [`switch`] run: ingest at max with or without the setting.
struct SwitchRun {
    events_per_sec: f64,
    /// Answers other than 202 per second (a run held at the backlog's high-water mark
    /// answers 503s quickly: its latency percentiles then mix those in).
    refused_per_sec: f64,
    per_shard_cpu_second: f64,
    /// CPU seconds per million accepted events of croupier (the whole process),
    /// redis-server (the primary) and clickhouse-server, from the start of the load until
    /// every accepted event is visible and ClickHouse has no merge running
    /// ([`wait_merges_idle`]); without a worker, over the load only (ClickHouse's then
    /// `NaN`). The worker's reads and acknowledgements count in redis-server's.
    cpu_per_m: [f64; 3],
    /// redis-server's time in each command (`INFO commandstats`, counted from the start
    /// of the load to the end of the run), seconds per million accepted events.
    redis_commands: Vec<(String, f64)>,
    /// Of croupier's, the worker threads' (`croupier-worker*`), per million events.
    worker_cpu_per_m: f64,
    /// Accepted events not visible in ClickHouse at the end (`NaN` without a worker).
    lost: f64,
    p50_us: u64,
    p99_us: u64,
}

impl SwitchRun {
    /// The events per second the machine's cores could carry at most if they did nothing
    /// but what the three processes spent per event: cores ÷ the sum of their CPU seconds
    /// per event.
    fn ceiling(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        cores * 1e6 / self.cpu_per_m.iter().sum::<f64>()
    }
}

/// Waits (up to a minute) until ClickHouse runs no merge in two readings 500 ms apart, so
/// that a run's CPU includes the merges its inserts caused and the next run does not pay
/// for them.
fn wait_merges_idle(ch: &ClickHouseServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut idle = 0;
    while idle < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let running: u64 = ch.query("SELECT count() FROM system.merges").trim().parse().unwrap_or(1);
        idle = if running == 0 { idle + 1 } else { 0 };
    }
}

/// A fresh `analytics` database made by `binary`'s own `croupier migrate`, so that each
/// side of an A/B runs on its own schema and no run pays for an earlier one's merges.
fn fresh_schema(binary: &Path, ch: &ClickHouseServer) {
    ch.query("DROP DATABASE IF EXISTS analytics");
    let status = Command::new(binary)
        .arg("migrate")
        .env("CROUPIER_CLICKHOUSE__ADDR", ch.addr())
        .env(format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET)
        .stdout(Stdio::null())
        .stderr(croupier_log())
        .status()
        .expect("run croupier migrate");
    assert!(status.success(), "croupier migrate failed: {status}");
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` has them.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn switch_run(
    cfg: &E2eConfig,
    redis: &RedisServer,
    ch: &ClickHouseServer,
    env: &[(String, String)],
    binary: &Path,
) -> SwitchRun {
    // Every run starts from empty streams: an earlier run's backlog would hold the next
    // one at its high-water mark (refused with 503) instead of at its max.
    let _ = redis.client().cmd(&["FLUSHALL"]);
    let cmd = if cfg.switch_ingest_only { "ingest" } else { "run" };
    if !cfg.switch_ingest_only {
        fresh_schema(binary, ch);
    }
    // Nothing consumes without a worker: marks far above what a run appends, so that a
    // run at max is not held at them.
    let mut env = env.to_vec();
    if cfg.switch_ingest_only {
        for s in ["EVENTS", "CUSTOM", "PAYMENTS"] {
            env.push((format!("CROUPIER_STREAMS__{s}__RETENTION_EVENTS"), "200000000".into()));
            env.push((format!("CROUPIER_STREAMS__{s}__HIGH_WATER_EVENTS"), "100000000".into()));
        }
    }
    let croupier = start_binary_as(binary, cmd, "auto", &cfg.croupier_cores, redis, ch, &env);
    let pid = croupier.child.id();
    let pids = [Some(pid), redis.pid(), ch.pid()];
    let shard0 = threads_cpu(pid, "croupier-shard");
    let worker0 = threads_cpu(pid, "croupier-worker");
    let cpu0 = processes_cpu(pids);
    if redis.client().try_cmd(&["CONFIG", "RESETSTAT"]).is_err() {
        eprintln!("CONFIG RESETSTAT failed: the command table adds up this run and the earlier ones");
    }
    let r = load(cfg, croupier.addr, cfg.switch_rate, cfg.seconds);
    let shard1 = threads_cpu(pid, "croupier-shard");
    let lost = if cfg.switch_ingest_only {
        f64::NAN
    } else {
        let visible = wait_visible(ch, r.accepted_events);
        wait_merges_idle(ch);
        r.accepted_events as f64 - visible as f64
    };
    let cpu1 = processes_cpu(pids);
    let worker1 = threads_cpu(pid, "croupier-worker");
    let commands = command_usec(redis);
    eprintln!("load average after the run: {}", load_average());
    drop(croupier);
    let refused: u64 = r.refused.iter().map(|(_, n)| n).sum();
    if refused > 0 {
        eprintln!("refused answers by status: {:?}", r.refused);
    }
    let per_m = |i: usize| {
        if r.accepted_events == 0 || (i == 2 && cfg.switch_ingest_only) {
            f64::NAN
        } else {
            (cpu1[i] - cpu0[i]) * 1e6 / r.accepted_events as f64
        }
    };
    SwitchRun {
        events_per_sec: r.events_per_sec,
        refused_per_sec: refused as f64 / r.seconds.max(1e-9),
        per_shard_cpu_second: if shard1 > shard0 { r.accepted_events as f64 / (shard1 - shard0) } else { f64::NAN },
        cpu_per_m: [per_m(0), per_m(1), per_m(2)],
        worker_cpu_per_m: if r.accepted_events == 0 || cfg.switch_ingest_only {
            f64::NAN
        } else {
            (worker1 - worker0) * 1e6 / r.accepted_events as f64
        },
        lost,
        p50_us: r.latency.p50_us,
        p99_us: r.latency.p99_us,
        redis_commands: commands
            .into_iter()
            .map(|(name, usec)| (name, usec / r.accepted_events.max(1) as f64))
            .collect(),
    }
}

/// Microseconds redis-server spent in each command since its statistics were reset
/// (`INFO commandstats`: `cmdstat_<name>:calls=…,usec=…,…`); empty if it does not answer.
fn command_usec(redis: &RedisServer) -> Vec<(String, f64)> {
    let info = match redis.client().try_cmd(&["INFO", "commandstats"]) {
        Ok(croupier_protocol::resp::Frame::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => return Vec::new(),
    };
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let usec = stats.split(',').find_map(|kv| kv.strip_prefix("usec="))?.parse().ok()?;
            Some((name.to_owned(), usec))
        })
        .collect()
}

/// What the "with" side of a [`switch`] changes: a setting, another build, or both.
pub struct Change {
    /// An environment variable set on the "with" side (`CROUPIER_...=value`).
    pub env: Option<(String, String)>,
    /// Another `croupier` binary for the "with" side (its own `croupier migrate` too).
    pub binary: Option<PathBuf>,
    /// An environment variable set on both sides.
    pub both: Option<(String, String)>,
}

/// The cost of one change, A/B in one run: `croupier run` (or `ingest`) with this build's
/// defaults and with the change (a setting, another build, or both), `runs` times each,
/// alternating which goes first, medians. With `replica`, redis-server has a replica on
/// both sides (what `redis.wait_replicas` waits for).
pub fn switch(cfg: &E2eConfig, change: &Change, runs: usize, replica: bool) -> String {
    let redis = RedisServer::start();
    let replica = replica.then(|| RedisServer::start_replica_of(&redis));
    let ch = ClickHouseServer::start();
    worker::migrate(&ch);
    let (mut base, mut with) = (Vec::new(), Vec::new());
    let common: Vec<(String, String)> = change.both.iter().cloned().collect();
    let setting: Vec<(String, String)> = common.iter().chain(&change.env).cloned().collect();
    let this = croupier_binary();
    let other = change.binary.clone().unwrap_or_else(|| this.clone());
    let load_before = load_average();
    for r in 0..runs.max(1) {
        for first in [r % 2 == 0, r % 2 == 1] {
            let label = if first { "defaults" } else { "with the change" };
            eprintln!("switch: run {} {label}", r + 1);
            if first {
                base.push(switch_run(cfg, &redis, &ch, &common, &this));
            } else {
                with.push(switch_run(cfg, &redis, &ch, &setting, &other));
            }
        }
    }
    let median = |v: &[SwitchRun], f: Figure| {
        let xs: Vec<f64> = v.iter().map(f).collect();
        let mut s = xs.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        (q(&s, 0.5), xs)
    };
    let what = match (&change.env, &change.binary) {
        (Some((k, v)), None) => format!("`{k}={v}`"),
        (None, Some(b)) => format!("the build `{}`", b.display()),
        (Some((k, v)), Some(b)) => format!("the build `{}` with `{k}={v}`", b.display()),
        (None, None) => "nothing (the same build twice)".to_owned(),
    };
    let what = match &change.both {
        Some((k, v)) => format!("{what}, `{k}={v}` on both sides,"),
        None => what,
    };
    let mut out = format!(
        "## Switch: {what} against the defaults\n\n\
         `croupier {}` {}, {} connections, {} s per run), {} runs each, \
         alternating which goes first; medians, every run listed.{}{}\n\n\
         | figure | defaults | with the change | ratio (change / defaults) |\n|---|---:|---:|---:|\n",
        if cfg.switch_ingest_only { "ingest (no worker)" } else { "run" },
        if cfg.switch_rate == 0 {
            "at max (closed loop".to_owned()
        } else {
            format!("at a fixed {} events/s (open loop", cfg.switch_rate)
        },
        cfg.connections,
        cfg.seconds,
        runs.max(1),
        if replica.is_some() { " redis-server has one replica (`--replicaof`) on both sides." } else { "" },
        if cfg.switch_ingest_only {
            " CPU per million events over the load."
        } else {
            " Each run starts on a fresh `analytics` database made by its build's `croupier migrate`; CPU per \
             million events from the start of the load until every accepted event is visible and ClickHouse \
             runs no merge (two readings of `system.merges` 500 ms apart, at most a minute); the ceiling is \
             the machine's cores ÷ the three processes' CPU seconds per event."
        }
    );
    let figures: [(&str, Figure, usize); 12] = [
        ("accepted events/s", |r| r.events_per_sec, 0),
        ("refused requests/s (not 202)", |r| r.refused_per_sec, 0),
        ("accepted but not in ClickHouse at the end", |r| r.lost, 0),
        ("events per ingest-shard CPU second", |r| r.per_shard_cpu_second, 0),
        ("croupier CPU s per million events", |r| r.cpu_per_m[0], 3),
        ("of which its worker threads", |r| r.worker_cpu_per_m, 3),
        ("redis-server CPU s per million events", |r| r.cpu_per_m[1], 3),
        ("clickhouse-server CPU s per million events", |r| r.cpu_per_m[2], 3),
        ("all three, CPU s per million events", |r| r.cpu_per_m.iter().sum(), 3),
        ("ceiling they imply, events/s (cores ÷ sum)", SwitchRun::ceiling, 0),
        ("ack p50, µs", |r| r.p50_us as f64, 0),
        ("ack p99, µs", |r| r.p99_us as f64, 0),
    ];
    for (name, f, digits) in figures {
        let ((a, xa), (b, xb)) = (median(&base, f), median(&with, f));
        if a.is_nan() && b.is_nan() {
            continue;
        }
        let list = |xs: &[f64]| xs.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ");
        out += &format!("| {name} | {a:.digits$} ({}) | {b:.digits$} ({}) | {:.3} |\n", list(&xa), list(&xb), b / a);
    }
    out += &commands_table(&base, &with);
    out += &format!("\nLoad average (1, 5, 15 min) before the runs: {load_before}; after: {}.\n", load_average());
    out
}

/// redis-server's time per command on both sides of a [`switch`] (medians of the runs,
/// seconds per million accepted events), largest first, beside its whole CPU.
fn commands_table(base: &[SwitchRun], with: &[SwitchRun]) -> String {
    let mut names: Vec<&str> =
        base.iter().chain(with).flat_map(|r| r.redis_commands.iter().map(|(n, _)| n.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return String::new();
    }
    let median = |runs: &[SwitchRun], name: &str| {
        let mut xs: Vec<f64> =
            runs.iter().map(|r| r.redis_commands.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v)).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        q(&xs, 0.5)
    };
    let mut rows: Vec<(&str, f64, f64)> = names.iter().map(|n| (*n, median(base, n), median(with, n))).collect();
    rows.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    let total = |runs: &[SwitchRun]| {
        let mut xs: Vec<f64> = runs.iter().map(|r| r.redis_commands.iter().map(|(_, v)| v).sum()).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        q(&xs, 0.5)
    };
    let mut out = String::from(
        "\nredis-server's time inside each command (`INFO commandstats` `usec`, from the start of the load to \
         the end of the run), seconds per million events, medians. Elapsed time in the command, not CPU: \
         reading requests and writing replies are not in it, and a command run by a script or a \
         transaction (`EVAL`, `EXEC`) counts both in its own row and in the script's or transaction's, so \
         the rows overlap and their sum (the first row) is more than the time spent:\n\n\
         | command | defaults | with the change |\n|---|---:|---:|\n",
    );
    out += &format!("| sum of the rows below | {:.3} | {:.3} |\n", total(base), total(with));
    for (name, a, b) in rows.into_iter().filter(|r| r.1 + r.2 >= 0.005) {
        // A subcommand (`xinfo|groups`) without the table's column separator.
        out += &format!("| `{}` | {a:.3} | {b:.3} |\n", name.replace('|', " "));
    }
    out
}

/// Ingest events/s on a Redis Cluster of 1, 2 and 3 primaries (no replicas, slots split
/// evenly, `streams.partitions = 6` so that each primary holds as many partitions), at max
/// (closed loop), `runs` times each in rotating order, medians; and on one plain Redis
/// (no cluster, one partition) in the same run, the ceiling the ratios are read against.
pub fn cluster(cfg: &E2eConfig, runs: usize) -> String {
    let ch = ClickHouseServer::start();
    worker::migrate(&ch);
    let mut by: [Vec<SwitchRun>; 4] = Default::default();
    for r in 0..runs.max(1) {
        for i in 0..4 {
            let k = (i + r) % 4;
            eprintln!(
                "cluster: run {} with {}",
                r + 1,
                if k == 0 { "one plain Redis".into() } else { format!("{k} primaries") }
            );
            let plain = RedisServer::start();
            let run = if k == 0 {
                switch_run(cfg, &plain, &ch, &[], &croupier_binary())
            } else {
                let c = croupier_it::cluster::RedisCluster::primaries_only(k);
                let seeds = format!("[{}]", c.seeds().iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","));
                let env = [
                    ("CROUPIER_REDIS__CLUSTER".to_owned(), seeds),
                    ("CROUPIER_STREAMS__PARTITIONS".to_owned(), "6".to_owned()),
                ];
                switch_run(cfg, &plain, &ch, &env, &croupier_binary())
            };
            by[k].push(run);
        }
    }
    let median = |v: &[SwitchRun], f: Figure| {
        let mut s: Vec<f64> = v.iter().map(f).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        q(&s, 0.5)
    };
    let eps: Figure = |r| r.events_per_sec;
    let base = median(&by[0], eps);
    let one = median(&by[1], eps);
    let mut out = format!(
        "## Redis Cluster: ingest with 1, 2 and 3 primaries\n\n\
         `croupier run` at max (closed loop, {} connections, {} s per run), {} runs each in rotating order, \
         medians; `streams.partitions = 6`, a cluster of primaries only (`CLUSTER ADDSLOTSRANGE`, even \
         ranges), the worker aggregating (the default) in every run. Everything (croupier, the load generator, every redis-server, ClickHouse) \
         shares this machine's cores: more primaries add Redis threads, not cores, so the ratio shows the \
         cost of the cluster's routing and of spreading, not the scale-out of separate machines.\n\n\
         | Redis | accepted events/s (runs) | ratio to one plain Redis | ratio to 1 primary | refused requests/s | ack p50 µs | ack p99 µs |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        cfg.connections,
        cfg.seconds,
        runs.max(1)
    );
    for (k, v) in by.iter().enumerate() {
        let list = v.iter().map(|r| format!("{:.0}", r.events_per_sec)).collect::<Vec<_>>().join(", ");
        let m = median(v, eps);
        out += &format!(
            "| {} | {m:.0} ({list}) | {:.3} | {} | {:.0} | {:.0} | {:.0} |\n",
            if k == 0 { "one plain Redis (partitions = 1)".to_owned() } else { format!("cluster, {k} primaries") },
            m / base,
            if k == 0 { "".to_owned() } else { format!("{:.3}", m / one) },
            median(v, |r| r.refused_per_sec),
            median(v, |r| r.p50_us as f64),
            median(v, |r| r.p99_us as f64),
        );
    }
    out
}
