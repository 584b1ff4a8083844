//! A real Redis Sentinel (`redis-server --sentinel`, Debian's redis package) for one
//! test, watching a primary on loopback with short failure detection.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_protocol::resp::Frame;

use crate::redis::{RedisClient, RedisServer};
use crate::{free_port, kill, require_binary, wait_until_ready};

/// The name the sentinels know the primary by.
pub const MASTER_NAME: &str = "croupier";

/// A sentinel process on a free loopback port, in its own temporary directory (its
/// config file is rewritten by the sentinel). Dropping it kills the process.
pub struct SentinelServer {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelServer {
    /// Starts a sentinel monitoring `primary` as [`MASTER_NAME`] with a quorum of 2: the
    /// primary is down after 500 ms without an answer, a failover may take 3 s.
    pub fn start(primary: &RedisServer) -> SentinelServer {
        Self::start_with_auth(primary, None, None)
    }

    /// [`SentinelServer::start`] for a primary (and replicas) that require
    /// `data_password` (`sentinel auth-pass`), the sentinel itself requiring
    /// `sentinel_password` (`requirepass`; its peers are asked with the same).
    pub fn start_with_auth(
        primary: &RedisServer,
        data_password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> SentinelServer {
        let dir = tempfile::Builder::new().prefix("croupier-sentinel-").tempdir().expect("temp dir");
        let port = free_port();
        let child = Self::spawn(dir.path(), port, primary, 0, data_password, sentinel_password);
        SentinelServer { port, dir, child: Some(child) }
    }

    /// [`SentinelServer::start`] with a history: its configuration file says the
    /// sentinels' epoch is `epoch` and the primary's configuration epoch too (as after that
    /// many failovers).
    pub fn start_at_epoch(primary: &RedisServer, epoch: u64) -> SentinelServer {
        let dir = tempfile::Builder::new().prefix("croupier-sentinel-").tempdir().expect("temp dir");
        let port = free_port();
        let child = Self::spawn(dir.path(), port, primary, epoch, None, None);
        SentinelServer { port, dir, child: Some(child) }
    }

    /// Kills the sentinel (SIGKILL); [`SentinelServer::start_afresh`] starts it again.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the sentinel again on its port with a new configuration file monitoring
    /// `primary` (no password), as a sentinel deployed afresh: a new id, its epochs at 0,
    /// knowing no other sentinel until it hears from them.
    pub fn start_afresh(&mut self, primary: &RedisServer) {
        kill(&mut self.child);
        self.child = Some(Self::spawn(self.dir.path(), self.port, primary, 0, None, None));
    }

    fn spawn(
        dir: &std::path::Path,
        port: u16,
        primary: &RedisServer,
        epoch: u64,
        data_password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> Child {
        let binary: PathBuf = require_binary("redis-server", "redis-server");
        let conf = dir.join("sentinel.conf");
        let history = if epoch > 0 {
            format!("sentinel current-epoch {epoch}\nsentinel config-epoch {MASTER_NAME} {epoch}\n")
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nlogfile sentinel.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 500\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n{history}{auth_pass}{requirepass}",
                dir = dir.display(),
                primary = primary.port,
                auth_pass =
                    data_password.map(|p| format!("sentinel auth-pass {MASTER_NAME} {p}\n")).unwrap_or_default(),
                requirepass = sentinel_password.map(|p| format!("requirepass {p}\n")).unwrap_or_default(),
            ),
        )
        .expect("write sentinel.conf");
        if let Some(pw) = sentinel_password {
            crate::redis::note_password(port, pw);
        }
        let mut child = Command::new(binary)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel: {e}"));
        let log = dir.join("sentinel.log");
        wait_until_ready(&mut child, "redis-server --sentinel", &log, Duration::from_secs(10), || {
            RedisClient::connect(port).is_ok_and(|mut c| c.try_cmd(&["PING"]).is_ok())
        });
        child
    }

    /// `host:port` of the sentinel.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The primary's port as this sentinel names it.
    pub fn primary_port(&self) -> Option<u16> {
        let mut c = RedisClient::connect(self.port).ok()?;
        let Frame::Array(parts) = c.try_cmd(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]).ok()? else {
            return None;
        };
        match parts.get(1) {
            Some(Frame::BulkString(p)) => std::str::from_utf8(p).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// A field of `SENTINEL MASTER` (`num-slaves`, `num-other-sentinels`, ...).
    fn master_field(&self, field: &str) -> Option<String> {
        let mut c = RedisClient::connect(self.port).ok()?;
        let Frame::Array(kv) = c.try_cmd(&["SENTINEL", "MASTER", MASTER_NAME]).ok()? else { return None };
        kv.chunks(2).find_map(|p| match p {
            [Frame::BulkString(k), Frame::BulkString(v)] if k == field.as_bytes() => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        })
    }

    /// How many of this sentinel's clients are subscribed to a channel (`CLIENT LIST`'s
    /// `sub=`): the sentinels connect to each other without subscribing, so these are the
    /// `+switch-master` subscriptions of the processes that follow the primary.
    pub fn subscribers(&self) -> usize {
        let Ok(mut c) = RedisClient::connect(self.port) else { return 0 };
        let Ok(Frame::BulkString(list)) = c.try_cmd(&["CLIENT", "LIST"]) else { return 0 };
        String::from_utf8_lossy(&list)
            .lines()
            .filter(|l| l.split(' ').any(|f| f.strip_prefix("sub=").is_some_and(|n| n != "0")))
            .count()
    }

    /// The ids (`CLIENT LIST`'s `id=`) of the clients subscribed to a channel: an id that
    /// stays is a subscription that held.
    pub fn subscriber_ids(&self) -> Vec<u64> {
        let Ok(mut c) = RedisClient::connect(self.port) else { return Vec::new() };
        let Ok(Frame::BulkString(list)) = c.try_cmd(&["CLIENT", "LIST"]) else { return Vec::new() };
        let mut ids: Vec<u64> = String::from_utf8_lossy(&list)
            .lines()
            .filter(|l| l.split(' ').any(|f| f.strip_prefix("sub=").is_some_and(|n| n != "0")))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).and_then(|n| n.parse().ok()))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Freezes the sentinel (SIGSTOP): its connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen sentinel go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("sentinel running");
        assert!(crate::signal(child, sig), "kill -{sig} {}", child.id());
    }

    /// Waits (15 s at most) until this sentinel knows `replicas` replicas and `others`
    /// other sentinels: only then can they agree on a failover.
    pub fn wait_for_peers(&self, replicas: usize, others: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (r, o) = (self.master_field("num-slaves"), self.master_field("num-other-sentinels"));
            if r == Some(replicas.to_string()) && o == Some(others.to_string()) {
                return;
            }
            assert!(Instant::now() < deadline, "sentinel sees {r:?} replicas and {o:?} sentinels");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
