//! The whole pipeline on real servers: redis-server, clickhouse-server, the ingest shards
//! in this process, and `croupier worker` as a separate process that tests can kill.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_control::config::{Config, Driver};
use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::redis::RedisServer;

use crate::fixture::Fixture;

/// The croupier binary built for the tests.
pub const CROUPIER: &str = env!("CARGO_BIN_EXE_croupier-it-bin");

/// Servers, ingest and (maybe) a worker process.
pub struct Pipeline {
    pub ingest: Fixture,
    pub clickhouse: ClickHouseServer,
    pub worker: Option<Child>,
}

/// Environment that points a croupier process at the test servers.
pub fn env(redis: &RedisServer, ch: &ClickHouseServer) -> Vec<(String, String)> {
    [
        ("CROUPIER_REDIS__ADDR", redis.addr()),
        ("CROUPIER_CLICKHOUSE__ADDR", ch.addr()),
        ("CROUPIER_CLICKHOUSE__TIMEOUT_MS", "3000".into()),
        ("CROUPIER_SERVER__PIN", "false".into()),
        ("CROUPIER_SERVER__DRIVER", "epoll".into()),
        ("CROUPIER_WORKER__CONSUMER", "it".into()),
        ("CROUPIER_WORKER__LINGER_MS", "50".into()),
        ("CROUPIER_WORKER__INSERT_INTERVAL_MS", "50".into()),
        ("CROUPIER_WORKER__CLAIM_IDLE_MS", "1000".into()),
        ("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "200".into()),
        ("CROUPIER_WORKER__BACKOFF_MAX_MS", "300".into()),
        ("CROUPIER_REDIS__REPLY_TIMEOUT_MS", "2000".into()),
        // Each process's control port on a port of its own (tests run side by side).
        ("CROUPIER_CONTROL__LISTEN", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs `croupier <args>` to completion; returns (success, stdout + stderr).
pub fn croupier(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(CROUPIER).args(args).envs(env.iter().cloned()).output().expect("run croupier");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

impl Pipeline {
    /// Starts everything; the schema is created with `croupier migrate`.
    pub fn start(redis_args: &[&str]) -> Pipeline {
        Self::start_with(redis_args, |_| {})
    }

    /// [`Pipeline::start`] with the ingest configuration adjusted by `tweak`.
    pub fn start_with(redis_args: &[&str], tweak: impl FnOnce(&mut Config)) -> Pipeline {
        Self::start_on(ClickHouseServer::start(), redis_args, tweak)
    }

    /// [`Pipeline::start_with`] on a ClickHouse server the test started.
    pub fn start_on(clickhouse: ClickHouseServer, redis_args: &[&str], tweak: impl FnOnce(&mut Config)) -> Pipeline {
        let ingest = Fixture::start_with_redis(Driver::Epoll, RedisServer::start_with(redis_args), tweak);
        let (ok, out) = croupier(&["migrate"], &env(&ingest.redis, &clickhouse));
        assert!(ok, "croupier migrate failed: {out}");
        Pipeline { ingest, clickhouse, worker: None }
    }

    /// Starts `croupier worker` (with extra environment).
    pub fn start_worker(&mut self, extra: &[(&str, &str)]) {
        assert!(self.worker.is_none(), "a worker is already running");
        let mut env = env(&self.ingest.redis, &self.clickhouse);
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let child = Command::new(CROUPIER)
            .arg("worker")
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start croupier worker");
        self.worker = Some(child);
    }

    /// Kills the worker with SIGKILL.
    pub fn kill_worker(&mut self) {
        if let Some(mut c) = self.worker.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the worker with SIGTERM and waits for it to drain; true if it exited cleanly.
    pub fn stop_worker(&mut self) -> bool {
        let Some(mut c) = self.worker.take() else { return false };
        croupier_it::signal(&c, "TERM");
        c.wait().is_ok_and(|s| s.success())
    }

    /// A query's single value, from ClickHouse's HTTP interface.
    pub fn scalar(&self, sql: &str) -> u64 {
        self.clickhouse.query(sql).trim().parse().unwrap_or_else(|_| panic!("{sql}: not a number"))
    }

    /// Distinct events stored (duplicates from redelivery collapsed).
    pub fn distinct_events(&self) -> u64 {
        self.scalar("SELECT count() FROM analytics.events FINAL")
    }

    /// Waits until `f()` returns `want` (30 s at most), returning the last value.
    pub fn wait_for(&self, want: u64, what: &str, f: impl Fn(&Self) -> u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = f(self);
            if got == want {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: {got}, expected {want} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pending entries of the group on `stream`.
    pub fn pending(&self, stream: &str) -> i64 {
        match self.ingest.redis.client().cmd(&["XPENDING", stream, "analytics-workers"]) {
            croupier_protocol::resp::Frame::Array(a) => match a.first() {
                Some(croupier_protocol::resp::Frame::Integer(n)) => *n,
                _ => 0,
            },
            _ => 0,
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill_worker();
    }
}

/// Runs `sql` with clickhouse-rs (an independent native-protocol client) and returns its
/// block. `url_params` is appended to the connection URL (`?compression=lz4`, or empty).
pub fn rs_block(
    ch: &ClickHouseServer,
    url_params: &str,
    sql: &str,
) -> clickhouse_rs::types::Block<clickhouse_rs::types::Complex> {
    let url = format!("tcp://127.0.0.1:{}/default{url_params}", ch.tcp_port);
    let sql = sql.to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(async move {
        let pool = clickhouse_rs::Pool::new(url);
        let mut h = pool.get_handle().await.expect("clickhouse-rs connects");
        h.query(sql).fetch_all().await.expect("select")
    })
}

/// [`rs_block`] where every column is a `String` expression: the rows as strings.
pub fn read_rs(ch: &ClickHouseServer, sql: &str) -> Vec<Vec<String>> {
    let block = rs_block(ch, "", sql);
    let names: Vec<String> = block.columns().iter().map(|c| c.name().to_owned()).collect();
    block
        .rows()
        .map(|r| names.iter().map(|n| r.get::<String, _>(n.as_str()).expect("string column")).collect())
        .collect()
}
