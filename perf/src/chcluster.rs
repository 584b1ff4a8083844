//! The cost of ClickHouse as a cluster: the same rows through the worker into one
//! clickhouse-server and into 2 shards × 2 replicas (`ReplicatedReplacingMergeTree`
//! shard-local tables, ZooKeeper, `Distributed` for reads), alternated in one run, CPU
//! per row of every process from `/proc`.

use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_dataplane::clickhouse::connection::{ChOptions, Connection};
use croupier_dataplane::clickhouse::schema;
use croupier_dataplane::runtime::{block_on, ActiveDriver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::clickhouse_cluster::{ClickHouseCluster, CLUSTER};
use croupier_it::redis::RedisServer;
use croupier_protocol::resp;

use crate::e2e::{load_average, proc_stat, threads_cpu};
use crate::worker::{fill_stream_from, median, migrate};

/// How long the CPU counters keep running after the last row is visible: the servers'
/// work right after the inserts (the other replica's fetches, first merges).
const SETTLE: Duration = Duration::from_secs(5);

/// How often `count()` is asked while the worker runs (each ask is a query the servers
/// answer, through `Distributed` on the cluster: CPU counted with the rest).
const POLL: Duration = Duration::from_millis(200);

/// How long every process's CPU is read with the schema in place and nothing inserting.
const IDLE: Duration = Duration::from_secs(10);

/// The counters of `system.events` one run reads on every node.
const EVENTS: [&str; 4] = ["InsertQuery", "InsertedRows", "ReplicatedPartFetches", "DuplicatedInsertedBlocks"];

/// Where the worker writes: one server, or the cluster.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// One clickhouse-server with the single-server schema.
    Single(&'a ClickHouseServer),
    /// Shards × replicas with the cluster schema.
    Cluster(&'a ClickHouseCluster),
}

impl Target<'_> {
    fn nodes(&self) -> Vec<&ClickHouseServer> {
        match self {
            Target::Single(ch) => vec![ch],
            Target::Cluster(c) => c.all().collect(),
        }
    }

    /// The server `count()` is asked on (the cluster's first node, through `Distributed`).
    fn reader(&self) -> &ClickHouseServer {
        match self {
            Target::Single(ch) => ch,
            Target::Cluster(c) => &c.nodes[0][0],
        }
    }

    /// Drops `analytics` everywhere (on the cluster this also removes each replica from
    /// ZooKeeper) and creates the schema again, as `croupier migrate` does.
    fn reset(&self) {
        for node in self.nodes() {
            node.query("DROP DATABASE IF EXISTS analytics");
        }
        match self {
            Target::Single(ch) => migrate(ch),
            Target::Cluster(c) => {
                for node in c.all() {
                    let addr = node.addr();
                    block_on(ActiveDriver::Epoll, async move {
                        let opts = ChOptions {
                            addr: addr.clone(),
                            database: "default".into(),
                            user: "default".into(),
                            password: Default::default(),
                            compression: false,
                            timeout: Duration::from_secs(60),
                        };
                        let mut conn = Connection::connect(&opts).await.expect("connect");
                        schema::migrate_cluster_node(&mut conn, CLUSTER)
                            .await
                            .map_err(|e| format!("{addr}: {e}"))
                            .expect("cluster schema");
                    })
                    .expect("runtime");
                }
            }
        }
    }

    fn configure(&self, config: &mut Config) {
        match self {
            Target::Single(ch) => config.clickhouse.addr = ch.addr(),
            Target::Cluster(c) => {
                config.clickhouse.addr = c.nodes[0][0].addr();
                config.clickhouse.shards =
                    c.nodes.iter().map(|s| s.iter().map(ClickHouseServer::addr).collect()).collect();
                config.clickhouse.cluster = CLUSTER.into();
            }
        }
    }
}

/// The counters of [`EVENTS`] on `node`, in that order.
fn events(node: &ClickHouseServer) -> [u64; 4] {
    let list = EVENTS.iter().map(|e| format!("'{e}'")).collect::<Vec<_>>().join(",");
    let text =
        node.query(&format!("SELECT event, value FROM system.events WHERE event IN ({list}) FORMAT TabSeparated"));
    let mut out = [0; 4];
    for line in text.lines() {
        let Some((name, value)) = line.split_once('\t') else { continue };
        if let Some(i) = EVENTS.iter().position(|e| *e == name) {
            out[i] = value.trim().parse().unwrap_or(0);
        }
    }
    out
}

fn visible(ch: &ClickHouseServer) -> usize {
    ch.query("SELECT count() FROM analytics.events").trim().parse().unwrap_or(0)
}

/// One run's figures.
struct Run {
    rows_per_sec: f64,
    /// From the worker's start until the last row is visible, plus [`SETTLE`].
    phase_secs: f64,
    worker_cpu_per_m: f64,
    /// CPU seconds per million rows of each clickhouse-server (in [`Target::nodes`] order).
    node_cpu_per_m: Vec<f64>,
    zookeeper_cpu_per_m: f64,
    /// The [`EVENTS`] counted by each node during the phase.
    node_events: Vec<[u64; 4]>,
}

impl Run {
    fn servers_cpu_per_m(&self) -> f64 {
        self.node_cpu_per_m.iter().sum()
    }
}

fn cpu(pid: Option<u32>) -> f64 {
    pid.map_or(0.0, |p| proc_stat(p).0)
}

/// Fills the stream with events `first..first + rows`, starts a worker on `target` and
/// measures until every row is visible and [`SETTLE`] has passed.
fn one_run(redis: &RedisServer, target: Target, zookeeper: Option<u32>, first: usize, rows: usize, name: &str) -> Run {
    target.reset();
    fill_stream_from(redis, first, rows);
    // Every run starts with no sketch in Redis.
    let mut c = redis.client();
    if let resp::Frame::Array(keys) = c.cmd(&["KEYS", "hll:*"]) {
        for k in keys {
            if let resp::Frame::BulkString(k) = k {
                c.cmd(&[b"DEL".as_slice(), &k]);
            }
        }
    }
    let mut config = Config::default();
    config.server.pin = false;
    config.server.driver = Driver::Auto;
    config.redis.addr = redis.addr();
    config.worker.consumer = format!("perf-{name}-{first}");
    target.configure(&mut config);
    let nodes = target.nodes();
    let pids: Vec<Option<u32>> = nodes.iter().map(|n| n.pid()).collect();
    let events0: Vec<[u64; 4]> = nodes.iter().map(|n| events(n)).collect();
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu(p)).collect();
    let zk0 = cpu(zookeeper);
    let t = Instant::now();
    let worker = croupier_dataplane::worker::start(config, false).expect("worker starts");
    while visible(target.reader()) < rows {
        std::thread::sleep(POLL);
        assert!(t.elapsed() < Duration::from_secs(900), "{name}: rows not all visible after 900 s");
    }
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let phase_secs = t.elapsed().as_secs_f64();
    let worker_cpu = threads_cpu(std::process::id(), "croupier-worker");
    let cpu1: Vec<f64> = pids.iter().map(|&p| cpu(p)).collect();
    let zk1 = cpu(zookeeper);
    let events1: Vec<[u64; 4]> = nodes.iter().map(|n| events(n)).collect();
    worker.shutdown();
    let per_m = |s: f64| s * 1e6 / rows as f64;
    let run = Run {
        rows_per_sec: rows as f64 / secs,
        phase_secs,
        worker_cpu_per_m: per_m(worker_cpu),
        node_cpu_per_m: cpu0.iter().zip(&cpu1).map(|(a, b)| per_m(b - a)).collect(),
        zookeeper_cpu_per_m: per_m(zk1 - zk0),
        node_events: events0
            .iter()
            .zip(&events1)
            .map(|(a, b)| [0, 1, 2, 3].map(|i| b[i].saturating_sub(a[i])))
            .collect(),
    };
    eprintln!(
        "chcluster {name}: {:.0} rows/s, worker {:.2}, clickhouse-server {:.2}, zookeeper {:.2} CPU s per M rows; load average {}",
        run.rows_per_sec,
        run.worker_cpu_per_m,
        run.servers_cpu_per_m(),
        run.zookeeper_cpu_per_m,
        load_average()
    );
    run
}

fn list(xs: &[f64], digits: usize) -> String {
    xs.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
}

fn list_u(xs: &[u64]) -> String {
    xs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Runs the comparison: `runs` pairs, alternating which goes first; returns the section.
pub fn run(rows: usize, runs: usize) -> String {
    let runs = runs.max(1);
    let started = crate::machine::utc_now();
    let redis = RedisServer::start();
    let single = ClickHouseServer::start();
    let cluster = ClickHouseCluster::start(2, 2);
    let zookeeper = cluster.zookeeper.pid();
    let idle = idle_cores(&single, &cluster, zookeeper);
    let load_before = load_average();
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for r in 0..runs {
        // Both sides of a pair get the same rows; each pair new event ids, so that no
        // block repeats one ZooKeeper remembers (replicated deduplication).
        let first = r * rows;
        for single_first in [r % 2 == 0, r % 2 == 1] {
            eprintln!("chcluster: run {}/{runs}, {}", r + 1, if single_first { "one server" } else { "cluster" });
            if single_first {
                one.push(one_run(&redis, Target::Single(&single), zookeeper, first, rows, "one-server"));
            } else {
                two.push(one_run(&redis, Target::Cluster(&cluster), zookeeper, first, rows, "cluster"));
            }
        }
    }
    let load_after = load_average();
    report(rows, runs, &cluster, &one, &two, idle, &started, &load_before, &load_after)
}

/// Cores used, idle, by the one server, by the cluster's servers added up and by
/// ZooKeeper: both schemas in place, nothing inserting or asking, for [`IDLE`]. What they
/// use by the second whatever the rows (background threads, ZooKeeper sessions and the
/// replicated tables' polling of it), which a phase's CPU includes.
fn idle_cores(single: &ClickHouseServer, cluster: &ClickHouseCluster, zookeeper: Option<u32>) -> [f64; 3] {
    Target::Single(single).reset();
    Target::Cluster(cluster).reset();
    // What creating the tables set off settles first.
    std::thread::sleep(Duration::from_secs(5));
    let read = || [cpu(single.pid()), cluster.all().map(|n| cpu(n.pid())).sum::<f64>(), cpu(zookeeper)];
    let (a, t) = (read(), Instant::now());
    std::thread::sleep(IDLE);
    let b = read();
    let secs = t.elapsed().as_secs_f64();
    [0, 1, 2].map(|i| (b[i] - a[i]) / secs)
}

#[allow(clippy::too_many_arguments)]
fn report(
    rows: usize,
    runs: usize,
    cluster: &ClickHouseCluster,
    one: &[Run],
    two: &[Run],
    idle: [f64; 3],
    started: &str,
    load_before: &str,
    load_after: &str,
) -> String {
    let mut out = format!(
        "## ClickHouse cluster (issue 16): one server against 2 shards × 2 replicas, CPU per row\n\n\
         {rows} events ({} per stream entry) through one worker shard (LZ4 blocks, aggregation on: \
         the defaults) into (a) one clickhouse-server (single-server schema) and (b) four \
         clickhouse-server processes as 2 shards × 2 replicas with one ZooKeeper \
         (`ReplicatedReplacingMergeTree` shard-local tables, `Distributed` tables; \
         `clickhouse.shards`), {runs} runs each, alternating which goes first; every run on \
         freshly created tables; medians, every run listed. Started {started}.\n\n\
         Each phase runs from the worker's start until `count()` of `analytics.events` (the \
         `Distributed` table on the cluster, asked every {} ms) shows every row, plus a fixed \
         {} s settle; CPU is user + system from `/proc/<pid>/stat` (the worker's threads from \
         `/proc/self/task`) over that phase. Background merges after the settle are not \
         counted. Every process shares this machine's {} cores: rows/s is bounded by them, and \
         the ratio of rows/s measures the machine as much as the cluster; CPU seconds per \
         row is the figure to read.\n\n\
         | figure | one server (runs) | 2 × 2 cluster (runs) | ratio cluster / one server |\n|---|---:|---:|---:|\n",
        100,
        POLL.as_millis(),
        SETTLE.as_secs(),
        std::thread::available_parallelism().map(usize::from).unwrap_or(1),
    );
    type Fig = fn(&Run) -> f64;
    let figures: [(&str, Fig, usize); 5] = [
        ("rows/s until visible (bounded by the machine's cores)", |r| r.rows_per_sec, 0),
        ("worker threads, CPU s per million rows", |r| r.worker_cpu_per_m, 2),
        ("clickhouse-server, all processes, CPU s per million rows", |r| r.servers_cpu_per_m(), 2),
        ("ZooKeeper (java), CPU s per million rows (idle beside one server)", |r| r.zookeeper_cpu_per_m, 2),
        ("phase seconds (until visible + settle)", |r| r.phase_secs, 1),
    ];
    for (name, f, d) in figures {
        let (xa, xb): (Vec<f64>, Vec<f64>) = (one.iter().map(f).collect(), two.iter().map(f).collect());
        let (a, b) = (median(xa.clone()), median(xb.clone()));
        out += &format!("| {name} | {a:.d$} ({}) | {b:.d$} ({}) | {:.2} |\n", list(&xa, d), list(&xb, d), b / a);
    }
    let total = |r: &Run| r.worker_cpu_per_m + r.servers_cpu_per_m() + r.zookeeper_cpu_per_m;
    let (ta, tb) = (median(one.iter().map(total).collect()), median(two.iter().map(total).collect()));
    out += &format!(
        "| worker + clickhouse-server + ZooKeeper, CPU s per million rows | {ta:.2} ({}) | {tb:.2} ({}) | {:.2} |\n",
        list(&one.iter().map(total).collect::<Vec<_>>(), 2),
        list(&two.iter().map(total).collect::<Vec<_>>(), 2),
        tb / ta
    );
    out += &format!(
        "\nIdle, before the runs (both schemas in place, nothing inserting, {} s): the one server used \
         {:.3} cores, the cluster's four servers {:.3} cores added up, ZooKeeper {:.3} cores. A phase's \
         CPU includes what they use by the second whatever the rows: the idle rate times the phase's \
         seconds.\n",
        IDLE.as_secs(),
        idle[0],
        idle[1],
        idle[2]
    );
    out += "\nPer server, from `system.events` over the phase (`InsertQuery`: the INSERT queries \
            the server took, whoever sent them; a replica's parts fetched from its peer count as \
            `ReplicatedPartFetches`, not as inserts):\n\n\
            | server | CPU s per million rows (runs) | InsertQuery (runs) | InsertedRows (runs) | \
            ReplicatedPartFetches (runs) | DuplicatedInsertedBlocks (runs) |\n|---|---:|---:|---:|---:|---:|\n";
    let mut names = vec!["one server".to_owned()];
    let mut sides: Vec<(&[Run], usize)> = vec![(one, 0)];
    for (s, shard) in cluster.nodes.iter().enumerate() {
        for r in 0..shard.len() {
            names.push(format!("cluster shard {} replica {}", s + 1, r + 1));
            sides.push((two, s * shard.len() + r));
        }
    }
    for (name, (side, i)) in names.iter().zip(sides) {
        let cpu: Vec<f64> = side.iter().map(|r| r.node_cpu_per_m.get(i).copied().unwrap_or(f64::NAN)).collect();
        let ev = |k: usize| -> Vec<u64> { side.iter().map(|r| r.node_events.get(i).map_or(0, |e| e[k])).collect() };
        out += &format!(
            "| {name} | {:.2} ({}) | {} | {} | {} | {} |\n",
            median(cpu.clone()),
            list(&cpu, 2),
            list_u(&ev(0)),
            list_u(&ev(1)),
            list_u(&ev(2)),
            list_u(&ev(3)),
        );
    }
    // Inserts per shard: its replicas' InsertQuery added up, per run.
    let replicas = cluster.nodes.first().map_or(1, Vec::len);
    for s in 0..cluster.nodes.len() {
        let per_run: Vec<u64> = two
            .iter()
            .map(|r| (0..replicas).map(|k| r.node_events.get(s * replicas + k).map_or(0, |e| e[0])).sum())
            .collect();
        out += &format!(
            "\nInserts into shard {} per run (InsertQuery of its replicas added up): {}.",
            s + 1,
            list_u(&per_run)
        );
    }
    out += &format!(
        "\nInserts into the one server per run: {}.\n\n\
         Load average (1, 5, 15 min) before the runs: {load_before}; after: {load_after}.\n",
        list_u(&one.iter().map(|r| r.node_events.first().map_or(0, |e| e[0])).collect::<Vec<_>>())
    );
    out
}
