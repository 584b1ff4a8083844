//! The OTLP receiver beside JSON ingest, in one run: the same events of the traffic model
//! as JSON ingest batches (`/api/ingest/events`), as OTLP/HTTP protobuf log records
//! (`/v1/logs`) and as OTLP/gRPC `LogsService/Export` calls, each sent at max (closed
//! loop) to one `croupier ingest` for a phase; the figure is records per CPU second of the
//! ingest shard threads (`/proc`), which the machine's other load disturbs less than
//! records per second of wall time. A fourth phase sends OTLP/HTTP with every other
//! record a plain log line (no event), what a Collector forwarding a game server's logs
//! sends. Phases alternate their order over the runs, Redis is
//! emptied before each, medians are reported. Before them, on one core in this process:
//! decode + map + encode of the same bodies both ways, with allocations per record.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_it::redis::RedisServer;
use croupier_perf::alloc_count;
use croupier_perf::loadgen::{self, LoadConfig, LoadReport};
use croupier_perf::model::TrafficModel;
use croupier_perf::otlp_load::{self, OtlpLoadConfig, Transport};
use croupier_protocol::batch::{self, Batch, Records};
use croupier_protocol::envelope::{EventBatch, PaymentBatch};
use croupier_protocol::otlp::{self, Context, Format, Signal, Sink, SpanEvents};
use croupier_protocol::validate::{self, JsonBuffers, Limits};

use crate::e2e::{threads_cpu, E2eConfig};

const GAME: &str = "perf-game";
const SECRET: &str = "perf-secret";
const TOKEN: &str = "perf-otlp-token-0123456789";
const SEED: u64 = 42;

/// A path a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Json,
    OtlpHttp,
    /// OTLP/HTTP protobuf, half the log records plain log lines (no event).
    OtlpHttpMixed,
    OtlpGrpc,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Json => "JSON ingest `/api/ingest/events` (the ceiling)",
            Path::OtlpHttp => "OTLP/HTTP protobuf `/v1/logs`",
            Path::OtlpHttpMixed => "OTLP/HTTP protobuf `/v1/logs`, half the records no event (log lines)",
            Path::OtlpGrpc => "OTLP/gRPC `LogsService/Export`",
        }
    }
}

/// Decode + map + encode of `bodies` on this thread for about `seconds`, as a shard
/// does it with its buffers reused: records/s and allocations per record.
fn cpu_path(path: Path, seconds: f64) -> (f64, f64) {
    let mut m = TrafficModel::new(2, GAME, 100_000, 300);
    let json: Vec<String> = (0..16).map(|_| m.events_body(100, 1_795_617_749_000)).collect();
    let bodies: Vec<Vec<u8>> = match path {
        Path::Json => json.into_iter().map(String::into_bytes).collect(),
        _ => json.iter().map(|j| otlp_load::logs_request(j, path == Path::OtlpHttpMixed).0).collect(),
    };
    let limits = Limits::default();
    let ctx = Context { game: GAME, limits: &limits, spans: SpanEvents::default() };
    let (mut events, mut custom) = (EventBatch::with_capacity(100, 320), EventBatch::default());
    let mut seen = croupier_protocol::otlp::occurrence::Occurrences::default();
    let (mut payments, mut props) = (PaymentBatch::default(), croupier_protocol::otlp::props::Props::default());
    let mut bufs = JsonBuffers::default();
    let mut archive = rkyv::util::AlignedVec::new();
    let mut buf = Vec::new();
    let mut run = |b: &[u8], events: &mut EventBatch, custom: &mut EventBatch| {
        buf.clear();
        buf.extend_from_slice(b);
        events.clear();
        custom.clear();
        match path {
            Path::Json => {
                validate::parse_events_in(&mut bufs, &mut buf, GAME, &limits, &mut || [1; 16], events, custom)
                    .expect("valid")
            }
            _ => {
                payments.clear();
                let mut sink = Sink { events, custom, payments: &mut payments, props: &mut props, seen: &mut seen };
                let s =
                    otlp::decode(Signal::Logs, Format::Protobuf, &mut buf, &ctx, &mut bufs, &mut || [1; 16], &mut sink)
                        .expect("valid");
                assert_eq!(s.accepted + s.skipped, 100);
            }
        }
        // The batch and the archive buffer are reused, as a shard can (custom events
        // are left out on both sides, as in the e2e section's figure).
        let b = Batch { accepted_at_ms: 1, records: Records::Events(std::mem::take(events)) };
        archive = batch::encode_into(&b, std::mem::take(&mut archive)).expect("encode");
        std::hint::black_box(archive.len());
        if let Records::Events(e) = b.records {
            *events = e;
        }
    };
    // Warm the buffers up to their steady-state size.
    for b in &bodies {
        run(b, &mut events, &mut custom);
    }
    let t = Instant::now();
    let allocs_before = alloc_count::count();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        for b in &bodies {
            run(b, &mut events, &mut custom);
            n += 100;
        }
    }
    let allocs = alloc_count::count() - allocs_before;
    (n as f64 / t.elapsed().as_secs_f64(), allocs as f64 / n as f64)
}

struct Croupier {
    child: Child,
    data: SocketAddr,
    otlp_http: SocketAddr,
    otlp_grpc: SocketAddr,
}

impl Drop for Croupier {
    fn drop(&mut self) {
        croupier_it::signal(&self.child, "TERM");
        let _ = self.child.wait();
    }
}

fn start_ingest(cores: &[usize], redis: &RedisServer) -> Croupier {
    let exe = std::env::current_exe().expect("own path").with_file_name("croupier");
    assert!(
        exe.exists(),
        "{} not built: cargo build -p croupier-dataplane --bin croupier (same profile)",
        exe.display()
    );
    let [data, http, grpc] = [0; 3].map(|_| {
        let a: SocketAddr = format!("127.0.0.1:{}", croupier_it::free_port()).parse().expect("addr");
        a
    });
    let core_list = format!("[{}]", cores.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","));
    let child = Command::new(exe)
        .arg("ingest")
        .env("CROUPIER_SERVER__LISTEN", data.to_string())
        .env("CROUPIER_OTLP__LISTEN", http.to_string())
        .env("CROUPIER_OTLP__GRPC_LISTEN", grpc.to_string())
        .env("CROUPIER_SERVER__SHARDS", cores.len().to_string())
        .env("CROUPIER_SERVER__CORES", &core_list)
        .env("CROUPIER_CONTROL__LISTEN", "127.0.0.1:0")
        .env("CROUPIER_REDIS__ADDR", redis.addr())
        .env(format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET)
        .env(format!("CROUPIER_GAMES__{GAME}__OTLP_TOKEN"), TOKEN)
        // Room for a phase's records (Redis is emptied before each): no request is refused
        // at the high-water mark, whose cheap 503s would count as CPU without records.
        .envs(["EVENTS", "CUSTOM"].iter().flat_map(|s| {
            [
                (format!("CROUPIER_STREAMS__{s}__HIGH_WATER_EVENTS"), "20000000"),
                (format!("CROUPIER_STREAMS__{s}__RETENTION_EVENTS"), "25000000"),
            ]
        }))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start croupier ingest");
    let deadline = Instant::now() + Duration::from_secs(20);
    for a in [data, http, grpc] {
        while std::net::TcpStream::connect(a).is_err() {
            assert!(Instant::now() < deadline, "croupier did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    Croupier { child, data, otlp_http: http, otlp_grpc: grpc }
}

/// One phase: `path` at max for the configured seconds; the load report and records
/// per ingest-shard CPU second.
fn phase(cfg: &E2eConfig, redis: &RedisServer, c: &Croupier, path: Path) -> (LoadReport, f64) {
    let _ = redis.client().cmd(&["FLUSHALL"]);
    let pid = c.child.id();
    let shard0 = threads_cpu(pid, "croupier-shard");
    let duration = Duration::from_secs_f64(cfg.seconds);
    let otlp = |addr, transport| OtlpLoadConfig {
        addr,
        transport,
        game: GAME.into(),
        token: TOKEN.into(),
        connections: cfg.connections,
        duration,
        batch: 100,
        event_bytes: 300,
        seed: SEED,
        bodies: 64,
        cores: cfg.loadgen_cores.clone(),
        mixed: path == Path::OtlpHttpMixed,
    };
    let r = match path {
        Path::Json => loadgen::run(&LoadConfig {
            addr: c.data,
            game: GAME.into(),
            secret: SECRET.into(),
            connections: cfg.connections,
            rate_eps: 0,
            duration,
            batch: 100,
            event_bytes: 300,
            seed: SEED,
            payments_every: 0,
            bodies: 64,
            cores: cfg.loadgen_cores.clone(),
        }),
        Path::OtlpHttp | Path::OtlpHttpMixed => otlp_load::run(&otlp(c.otlp_http, Transport::Http)),
        Path::OtlpGrpc => otlp_load::run(&otlp(c.otlp_grpc, Transport::Grpc)),
    };
    let shard1 = threads_cpu(pid, "croupier-shard");
    let per_cpu = if shard1 > shard0 { r.accepted_events as f64 / (shard1 - shard0) } else { f64::NAN };
    (r, per_cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the OTLP measurement; returns the report section.
pub fn run(cfg: &E2eConfig, runs: usize) -> String {
    let load_before = load_average();
    eprintln!("otlp: decode paths on one core");
    let seconds = cfg.seconds.min(3.0);
    let cpu: Vec<(Path, (f64, f64))> =
        [Path::Json, Path::OtlpHttp, Path::OtlpHttpMixed].into_iter().map(|p| (p, cpu_path(p, seconds))).collect();
    let redis = RedisServer::start();
    let c = start_ingest(&cfg.croupier_cores, &redis);
    let paths = [Path::Json, Path::OtlpHttp, Path::OtlpHttpMixed, Path::OtlpGrpc];
    let mut results: Vec<(Path, Vec<(LoadReport, f64)>)> = paths.iter().map(|&p| (p, Vec::new())).collect();
    for r in 0..runs.max(1) {
        for k in 0..paths.len() {
            let path = paths[(k + r) % paths.len()];
            eprintln!("otlp: run {} {:?}", r + 1, path);
            let got = phase(cfg, &redis, &c, path);
            if let Some((_, v)) = results.iter_mut().find(|(p, _)| *p == path) {
                v.push(got);
            }
        }
    }
    drop(c);
    let load_after = load_average();
    let json_per_cpu = median(results[0].1.iter().map(|(_, x)| *x).collect());
    let json_cpu_path = cpu[0].1 .0;
    let mut t = format!(
        "\n## OTLP beside JSON ingest\n\n\
         `croupier ingest` (ingest shards on cores {:?}, no worker) with redis-server unpinned; the same events of \
         the traffic model (batches of 100, ~300 B as JSON) sent at max (closed loop, {} connections, on cores {:?}) \
         as JSON ingest, as OTLP/HTTP protobuf log records and as OTLP/gRPC calls, {} s per phase, {} runs with the \
         order rotated, Redis emptied before each phase; medians, every run listed. Load average (1, 5, 15 min) \
         before: {load_before}; after: {load_after}.\n\n\
         | path | accepted records/s | records per ingest-shard CPU second | ratio to JSON ingest | refused |\n\
         |---|---:|---:|---:|---|\n",
        cfg.croupier_cores,
        cfg.connections,
        cfg.loadgen_cores,
        cfg.seconds,
        runs.max(1),
    );
    for (path, v) in &results {
        let per_cpu = median(v.iter().map(|(_, x)| *x).collect());
        let rate = median(v.iter().map(|(r, _)| r.events_per_sec).collect());
        let list = v.iter().map(|(_, x)| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        let refused: Vec<String> = v
            .iter()
            .flat_map(|(r, _)| r.refused.iter().map(|(s, n)| format!("{s}×{n}")))
            .chain(
                v.iter()
                    .filter(|(r, _)| r.connection_errors > 0)
                    .map(|(r, _)| format!("errors×{}", r.connection_errors)),
            )
            .collect();
        t.push_str(&format!(
            "| {} | {rate:.0} | {per_cpu:.0} ({list}) | {:.2} | {} |\n",
            path.label(),
            per_cpu / json_per_cpu,
            refused.join(" ")
        ));
    }
    t.push_str(
        "\nThe mixed path counts every log record it sends: half are events (stored), half are plain log lines \
         (decoded, counted as accepted by OTLP, not stored).\n",
    );
    t.push_str(&format!(
        "\nDecode + map + encode of the same bodies on one core of this process (no I/O, {seconds} s each), \
         buffers reused as a shard reuses them:\n\n\
         | path | records/s | ratio to JSON ingest | allocations per record |\n|---|---:|---:|---:|\n"
    ));
    for (path, (rate, allocs)) in &cpu {
        t.push_str(&format!("| {} | {rate:.0} | {:.2} | {allocs:.4} |\n", path.label(), rate / json_cpu_path));
    }
    t
}
