//! Worker throughput against `clickhouse-client`'s Native-format insert of the same rows.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_dataplane::clickhouse::connection::Connection;
use croupier_dataplane::clickhouse::rows::EventRows;
use croupier_dataplane::clickhouse::schema;
use croupier_dataplane::runtime::{block_on, ActiveDriver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::redis::RedisServer;
use croupier_protocol::batch::{self, Batch, Records};
use croupier_protocol::clickhouse::block;
use croupier_protocol::envelope::{Event, EventBatch};
use croupier_protocol::resp;

const PER_ENTRY: usize = 100;

/// Where the events' times start: an hour before the run, so that every event counts in
/// the real-time sketches (online minutes within their 48 h, today's and yesterday's DAU).
fn base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        i64::try_from(now).unwrap_or(0) - 3_600_000
    })
}

/// The synthetic events: realistic sizes, distinct ids; a new session every 30 events
/// (so each counts in an online minute), 1 ms apart (about 17 minutes per million).
pub(crate) fn event(i: usize) -> Event {
    let names = ["level_start", "level_complete", "economy_earn", "heartbeat", "session_start", "ad_impression"];
    Event {
        ts_ms: base_ms() + (i as i64 % 86_400_000),
        game_id: "perf-game".into(),
        env: "prod".into(),
        event: names[i % names.len()].into(),
        user_id: format!("user-{:07}", i * 7919 % 5_000_000),
        session_id: format!("sess-{:08x}", i / 30),
        device_id: format!("dev-{:08x}", i / 30),
        channel: "googleplay".into(),
        platform: "android".into(),
        country: ["BR", "US", "DE", "JP"][i % 4].into(),
        app_version: "3.14.2".into(),
        event_id: (i as u128 + 1).to_be_bytes(),
        props: format!(r#"{{"level":{},"coins":{},"mode":"ranked"}}"#, i % 60, i * 13 % 100_000),
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fill_stream(redis: &RedisServer, rows: usize) {
    fill_stream_from(redis, 0, rows);
}

/// Fills `analytics:events` (emptied first, with the workers' group) with the events
/// `first..first + rows` in batch entries of [`PER_ENTRY`].
pub(crate) fn fill_stream_from(redis: &RedisServer, first: usize, rows: usize) {
    let mut c = redis.client();
    c.cmd(&["DEL", "analytics:events"]);
    c.cmd(&["XGROUP", "CREATE", "analytics:events", "analytics-workers", "0", "MKSTREAM"]);
    let mut i = first;
    let end = first + rows;
    while i < end {
        let n = PER_ENTRY.min(end - i);
        let mut events = EventBatch::with_capacity(n, 320);
        (i..i + n).for_each(|k| events.push(&event(k)).expect("an event fits"));
        let archive = batch::encode(&Batch { accepted_at_ms: 1_795_617_749_000, records: Records::Events(events) })
            .expect("encode");
        let count = n.to_string();
        let f = c.cmd(&[
            b"XADD".as_slice(),
            b"analytics:events",
            b"*",
            b"fmt",
            b"rkyv1",
            b"n",
            count.as_bytes(),
            b"batch",
            &archive,
        ]);
        assert!(!matches!(f, resp::Frame::Error(_)), "XADD: {f:?}");
        i += n;
    }
}

/// `clickhouse-client` inserting `rows` model rows in Native format into a twin of
/// `analytics.events`: rows/s (the median of one run).
pub fn clickhouse_ceiling(ch: &ClickHouseServer, rows: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("croupier-perf-ceiling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let native = dir.join("events.native");
    native_file(rows, &native);
    let rate = native_insert(ch, &native, rows);
    let _ = std::fs::remove_dir_all(&dir);
    ch.query("DROP TABLE analytics.events_ceiling");
    rate
}

/// Times `clickhouse-client` inserting the Native file of `rows` rows into fresh tables.
fn native_insert(ch: &ClickHouseServer, native: &std::path::Path, rows: usize) -> f64 {
    reset_tables(ch);
    let t = Instant::now();
    let status = Command::new("clickhouse-client")
        .args(["--port", &ch.tcp_port.to_string(), "--query", "INSERT INTO analytics.events_ceiling FORMAT Native"])
        .stdin(Stdio::from(std::fs::File::open(native).expect("open native file")))
        .status()
        .expect("clickhouse-client");
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success() && count(ch, "events_ceiling") == rows, "ceiling insert failed");
    rows as f64 / secs
}

fn native_file(rows: usize, path: &std::path::Path) {
    let mut out = Vec::new();
    let mut block_rows = EventRows::new();
    for i in 0..rows {
        block_rows.push(&event(i), 1_795_617_749_000);
        if block_rows.rows == 65_536 || i + 1 == rows {
            // Native format in a file: blocks without block info (revision 0).
            block::write_block(&mut out, 0, &block_rows.columns, block_rows.rows);
            block_rows.clear();
        }
    }
    std::fs::write(path, out).expect("write native file");
}

fn reset_tables(ch: &ClickHouseServer) {
    ch.query("DROP TABLE IF EXISTS analytics.events");
    ch.query("DROP TABLE IF EXISTS analytics.events_ceiling");
    migrate(ch);
    ch.query("CREATE TABLE analytics.events_ceiling AS analytics.events");
}

/// Creates croupier's schema on `ch` (what `croupier migrate` does): without it the
/// worker's inserts fail and a run only fills the streams up to their high-water mark.
pub fn migrate(ch: &ClickHouseServer) {
    let addr = ch.addr();
    block_on(ActiveDriver::Epoll, async move {
        let opts = croupier_dataplane::clickhouse::connection::ChOptions {
            addr,
            database: "default".into(),
            user: "default".into(),
            password: Default::default(),
            compression: false,
            timeout: Duration::from_secs(30),
        };
        let mut conn = Connection::connect(&opts).await.expect("connect");
        schema::migrate(&mut conn).await.expect("migrate");
    })
    .expect("runtime");
}

fn count(ch: &ClickHouseServer, table: &str) -> usize {
    ch.query(&format!("SELECT count() FROM analytics.{table}")).trim().parse().unwrap_or(0)
}

/// Runs the worker benchmark; returns the report section.
pub fn run(rows: usize, runs: usize) -> String {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let dir = std::env::temp_dir().join(format!("croupier-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let native = dir.join("events.native");
    native_file(rows, &native);
    let native_mb = std::fs::metadata(&native).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let (mut ceiling, mut ours, mut ours_lz4, mut lz4_no_agg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Worker-thread CPU microseconds per row, LZ4 with aggregation off and on: less
    // sensitive than wall time to other work on a shared machine.
    let (mut cpu_off, mut cpu_on) = (Vec::new(), Vec::new());
    for run in 0..runs {
        eprintln!("worker bench: run {}/{runs}", run + 1);
        ceiling.push(native_insert(&ch, &native, rows));
        // Aggregation off and on alternate within the run, on the same rows.
        for (compression, aggregate, sink) in
            [(false, true, &mut ours), (true, false, &mut lz4_no_agg), (true, true, &mut ours_lz4)]
        {
            reset_tables(&ch);
            fill_stream(&redis, rows);
            let mut config = Config::default();
            config.server.pin = false;
            config.server.driver = Driver::Auto;
            config.redis.addr = redis.addr();
            config.clickhouse.addr = ch.addr();
            config.clickhouse.compression = compression;
            config.aggregate.enabled = aggregate;
            config.worker.consumer = format!("perf-{run}-{compression}-{aggregate}");
            // Every run starts with no sketch in Redis.
            let mut c = redis.client();
            if let resp::Frame::Array(keys) = c.cmd(&["KEYS", "hll:*"]) {
                for k in keys {
                    if let resp::Frame::BulkString(k) = k {
                        c.cmd(&[b"DEL".as_slice(), &k]);
                    }
                }
            }
            let t = Instant::now();
            let worker = croupier_dataplane::worker::start(config, false).expect("worker starts");
            while count(&ch, "events") < rows {
                std::thread::sleep(Duration::from_millis(20));
                assert!(t.elapsed() < Duration::from_secs(600), "worker too slow");
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu_us_per_row = crate::e2e::threads_cpu(std::process::id(), "croupier-worker") * 1e6 / rows as f64;
            worker.shutdown();
            sink.push(rows as f64 / secs);
            if compression {
                if aggregate { &mut cpu_on } else { &mut cpu_off }.push(cpu_us_per_row);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (c, o, l) = (median(ceiling.clone()), median(ours.clone()), median(ours_lz4.clone()));
    let off = median(lz4_no_agg.clone());
    let (c_off, c_on) = (median(cpu_off.clone()), median(cpu_on.clone()));
    let fmt2 = |v: &[f64]| v.iter().map(|x| format!("{:.2}", x)).collect::<Vec<_>>().join(", ");
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{:.0}", x)).collect::<Vec<_>>().join(", ");
    format!(
        "\n## Worker: Redis stream → ClickHouse\n\n\
         {rows} events ({PER_ENTRY} per stream entry, ~{:.0} B per row in Native format), one worker shard, \
         {runs} runs on fresh tables; medians.\n\n\
         | measurement | rows/s (median) | ratio to ceiling | runs |\n|---|---:|---:|---|\n\
         | ceiling: `clickhouse-client` INSERT FORMAT Native, same rows | {c:.0} | 1.00 | {} |\n\
         | `croupier worker`, plain blocks | {o:.0} | {:.2} | {} |\n\
         | `croupier worker`, LZ4 blocks | {l:.0} | {:.2} | {} |\n\
         | `croupier worker`, LZ4 blocks, `aggregate.enabled = false` | {off:.0} | {:.2} | {} |\n\n\
         The worker's time runs from its start until `count()` shows every row, so it includes \
         connecting, reading the stream, acknowledging and the 20 ms polling of the count. \
         Real-time aggregation (on in the two rows above it, the default) changes the LZ4 worker's \
         rows/s by {:+.1} % against the same worker with it off in this run \
         (median on / median off = {:.3}; every event has a user and a session: DAU and online \
         sketches, merged into Redis before each acknowledgement and every second).\n\n\
         | worker thread CPU per row, LZ4 blocks | µs (median) | runs |\n|---|---:|---|\n\
         | `aggregate.enabled = false` | {c_off:.2} | {} |\n\
         | `aggregate.enabled = true` | {c_on:.2} | {} |\n\n\
         CPU time is less disturbed by other work on the machine than rows/s: with aggregation \
         the worker thread spends {:.1} % {} CPU per row (on / off = {:.3}).\n",
        native_mb * 1e6 / rows as f64,
        fmt(&ceiling),
        o / c,
        fmt(&ours),
        l / c,
        fmt(&ours_lz4),
        off / c,
        fmt(&lz4_no_agg),
        (l / off - 1.0) * 100.0,
        l / off,
        fmt2(&cpu_off),
        fmt2(&cpu_on),
        (c_on / c_off - 1.0).abs() * 100.0,
        if c_on >= c_off { "more" } else { "less" },
        c_on / c_off,
    )
}
