//! A real `clickhouse-server` for one test, on free loopback ports in a temporary
//! directory, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, kill, require_binary, wait_until_ready};

/// A `clickhouse-server` process.
pub struct ClickHouseServer {
    /// Native TCP port.
    pub tcp_port: u16,
    /// HTTP port.
    pub http_port: u16,
    /// Every query is logged in `system.query_log`.
    log_queries: bool,
    /// The server's time zone (`UTC` unless a test asks for another).
    timezone: &'static str,
    /// More top-level configuration (a cluster node's `remote_servers`, `macros`, ...).
    extra: String,
    /// The level of the server's own log (`warning` unless a test asks for another): an
    /// 18.16 server sends a client no log line below it, whatever `send_logs_level` says.
    log_level: &'static str,
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
}

impl ClickHouseServer {
    /// Starts a server and waits until it answers on the native port.
    pub fn start() -> ClickHouseServer {
        Self::start_with(false, "UTC")
    }

    /// Starts a server whose time zone is `timezone` (days and hours in its SQL functions
    /// are local to it unless a query names UTC).
    pub fn start_in(timezone: &'static str) -> ClickHouseServer {
        Self::start_with(false, timezone)
    }

    /// Starts a server that logs every query in `system.query_log` (flushed every 200 ms).
    pub fn start_logging_queries() -> ClickHouseServer {
        Self::start_with(true, "UTC")
    }

    /// Starts a server that logs at `level` (`trace`, `information`, ...).
    pub fn start_logging_at(level: &'static str) -> ClickHouseServer {
        Self::launch(free_port(), free_port(), String::new(), false, "UTC", level)
    }

    fn start_with(log_queries: bool, timezone: &'static str) -> ClickHouseServer {
        Self::launch(free_port(), free_port(), String::new(), log_queries, timezone, "warning")
    }

    /// Starts a server on the given ports with `extra` in its configuration (a node of a
    /// [`crate::clickhouse_cluster::ClickHouseCluster`]).
    pub fn start_node(
        tcp_port: u16,
        http_port: u16,
        extra: String,
        log_queries: bool,
        timezone: &'static str,
    ) -> ClickHouseServer {
        Self::launch(tcp_port, http_port, extra, log_queries, timezone, "warning")
    }

    fn launch(
        tcp_port: u16,
        http_port: u16,
        extra: String,
        log_queries: bool,
        timezone: &'static str,
        log_level: &'static str,
    ) -> ClickHouseServer {
        let binary = require_binary("clickhouse-server", "clickhouse-server");
        let dir = tempfile::Builder::new().prefix("croupier-clickhouse-").tempdir().expect("temp dir");
        let mut s =
            ClickHouseServer { tcp_port, http_port, log_queries, timezone, extra, log_level, dir, binary, child: None };
        s.write_config();
        s.spawn();
        s
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>{}</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{}</tcp_port>
  <http_port>{}</http_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>{}</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  {}
  {}
</yandex>
"#,
            self.log_level,
            self.tcp_port,
            self.http_port,
            self.timezone,
            self.extra,
            if self.log_queries {
                "<query_log><database>system</database><table>query_log</table>\
                 <flush_interval_milliseconds>200</flush_interval_milliseconds></query_log>"
            } else {
                ""
            }
        );
        std::fs::write(self.dir.path().join("config.xml"), config).expect("write config");
        self.write_users("");
    }

    /// Writes `users.xml`: the default user, its profile with `settings` (XML elements).
    fn write_users(&self, settings: &str) {
        let log = if self.log_queries { "<log_queries>1</log_queries>" } else { "" };
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default>{log}{settings}</default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#
        );
        std::fs::write(self.dir.path().join("users.xml"), users).expect("write users");
    }

    /// Sets the default user's profile to `settings` (XML elements, e.g.
    /// `<send_logs_level>trace</send_logs_level>`) while the server runs, and waits until
    /// the server has read it again (it looks at `users.xml` every few seconds):
    /// `check` is a `(setting, value)` pair then shown by `system.settings`.
    pub fn set_profile(&self, settings: &str, check: (&str, &str)) {
        self.write_users(settings);
        // The server compares modification times in whole seconds: one written in the
        // second the server started would look unchanged.
        let later = std::time::SystemTime::now() + Duration::from_secs(2);
        let file = std::fs::File::options().write(true).open(self.dir.path().join("users.xml")).expect("users.xml");
        file.set_modified(later).expect("set the modification time");
        let sql = format!("SELECT value FROM system.settings WHERE name = '{}'", check.0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.query(&sql).trim() != check.1 {
            assert!(std::time::Instant::now() < deadline, "clickhouse-server did not take the profile {settings}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start clickhouse-server: {e}"));
        let mut child = child;
        let log = self.dir.path().join("error.log");
        wait_until_ready(&mut child, "clickhouse-server", &log, Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", self.tcp_port)).is_ok() && self.ping_http()
        });
        self.child = Some(child);
    }

    fn ping_http(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http_port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("Ok.")
    }

    /// `host:port` of the native protocol.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.tcp_port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("server running");
        assert!(crate::signal(child, sig), "kill -{sig} {}", child.id());
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `sql` through the HTTP interface and returns the response body
    /// (TabSeparated). Panics on an error status. LowCardinality columns may be created
    /// (ClickHouse 18 needs a setting for that).
    pub fn query(&self, sql: &str) -> String {
        self.query_with("", sql)
    }

    /// [`ClickHouseServer::query`] with more settings as URL parameters
    /// (`&insert_distributed_sync=1`).
    pub fn query_with(&self, settings: &str, sql: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
        let req = format!(
            "POST /?allow_experimental_low_cardinality_type=1{settings} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{sql}: {head}\n{body}");
        body.to_owned()
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}
