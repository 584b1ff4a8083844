//! A real `redis-server` for one test, and a small synchronous RESP client.
//!
//! A server started with `--requirepass <pw>` has its password noted by port
//! ([`note_password`]): the harness's own clients ([`RedisClient::connect`]) send `AUTH`
//! first on such a port, so every helper works on a server that requires a password.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use croupier_protocol::resp::{self, Frame};

use crate::{free_port, kill, require_binary, wait_until_ready};

/// The password of each loopback port that requires one (`requirepass`).
static PASSWORDS: Mutex<Option<HashMap<u16, String>>> = Mutex::new(None);

/// Notes that the server on `port` requires `password`: the harness's clients
/// authenticate there.
pub fn note_password(port: u16, password: &str) {
    let mut all = PASSWORDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.get_or_insert_with(HashMap::new).insert(port, password.to_owned());
}

/// The server on `port` requires no password (any more).
fn forget_password(port: u16) {
    let mut all = PASSWORDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = all.as_mut() {
        m.remove(&port);
    }
}

fn password_of(port: u16) -> Option<String> {
    let all = PASSWORDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.as_ref().and_then(|m| m.get(&port).cloned())
}

/// A `redis-server` process on a free loopback port, in its own temporary directory.
/// Dropping it kills the process and removes the directory.
pub struct RedisServer {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server with small stream nodes (so `MAXLEN ~` trims at small sizes) and
    /// no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let binary = require_binary("redis-server", "redis-server");
        let dir = tempfile::Builder::new().prefix("croupier-redis-").tempdir().expect("temp dir");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            binary,
            child: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        match self.extra.iter().position(|a| a == "--requirepass").and_then(|i| self.extra.get(i + 1)) {
            Some(pw) => note_password(self.port, pw),
            None => forget_password(self.port),
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--stream-node-max-entries", "4", "--protected-mode", "no", "--logfile", "redis.log"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let (port, log) = (self.port, self.dir.path().join("redis.log"));
        wait_until_ready(&mut child, "redis-server", &log, Duration::from_secs(10), || {
            RedisClient::connect(port)
                .is_ok_and(|mut c| c.try_cmd(&["PING"]).is_ok_and(|f| f == Frame::SimpleString(b"PONG".to_vec())))
        });
        self.child = Some(child);
    }

    /// Starts a replica of `primary` (`--replicaof`) and waits until it has synchronised.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let r = Self::start_with(&["--replicaof", "127.0.0.1", &port]);
        r.wait_synced();
        r
    }

    /// Waits (30 s at most) until this replica's link to its primary is up. (An old
    /// primary restarted as a replica under sentinels can be reconfigured by them once more
    /// before its link is up: 10 s was once too short for that under a full CI load.)
    pub fn wait_synced(&self) {
        self.wait_replication("replica not synchronised", |info| info.contains("master_link_status:up"));
    }

    /// Waits (30 s at most) until this server and its peer replicate one way or the
    /// other: this one a replica with its link up, or — sentinels having made it the
    /// primary again meanwhile (a second failover under a loaded machine) — a primary with
    /// a replica online.
    pub fn wait_replicating(&self) {
        self.wait_replication("not replicating", |info| {
            info.contains("master_link_status:up") || (info.contains("role:master") && info.contains("state=online"))
        });
    }

    /// Waits (30 s at most) until `INFO replication` satisfies `ready`; `what` names the
    /// failure.
    fn wait_replication(&self, what: &str, ready: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let info = match self.client().cmd(&["INFO", "replication"]) {
                Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => panic!("INFO reply {other:?}"),
            };
            if ready(&info) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what} within 30 s: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server again on the same port and directory with other extra arguments.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        self.spawn();
    }

    /// A new client connection.
    pub fn client(&self) -> RedisClient {
        RedisClient::connect(self.port).expect("connect to redis-server")
    }

    /// Calls of `command` the server has counted (`INFO commandstats`; a subcommand as
    /// `xinfo|groups`), 0 for one never called.
    pub fn calls(&self, command: &str) -> u64 {
        let Frame::BulkString(info) = self.client().cmd(&["INFO", "commandstats"]) else { panic!("INFO reply") };
        let info = String::from_utf8_lossy(&info).into_owned();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("calls"))
    }

    /// Connections open to the server (`CLIENT LIST`), the one asking included.
    pub fn clients(&self) -> usize {
        let Frame::BulkString(list) = self.client().cmd(&["CLIENT", "LIST"]) else { panic!("CLIENT LIST reply") };
        String::from_utf8_lossy(&list).lines().count()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A synchronous RESP client over TCP, using the project's RESP codec.
pub struct RedisClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RedisClient {
    /// Connects to 127.0.0.1:`port` (and authenticates, when the port's server was
    /// noted as requiring a password).
    pub fn connect(port: u16) -> std::io::Result<RedisClient> {
        let mut c = Self::connect_unauthenticated(port)?;
        if let Some(pw) = password_of(port) {
            match c.try_cmd(&["AUTH", pw.as_str()])? {
                Frame::SimpleString(_) => {}
                other => return Err(std::io::Error::other(format!("AUTH: {other:?}"))),
            }
        }
        Ok(c)
    }

    /// Connects to 127.0.0.1:`port` without `AUTH`.
    pub fn connect_unauthenticated(port: u16) -> std::io::Result<RedisClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RedisClient { stream, buf: Vec::new() })
    }

    /// Sends a command; returns the reply or an I/O error.
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Frame> {
        let mut out = Vec::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
        resp::command(&mut out, &args);
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    /// Sends commands already encoded in `commands` (several, pipelined) without waiting
    /// for their replies; [`replies`](Self::replies) reads them.
    pub fn send(&mut self, commands: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(commands)
    }

    /// Reads the next `count` replies, in order.
    pub fn replies(&mut self, count: usize) -> std::io::Result<Vec<Frame>> {
        (0..count).map(|_| self.read_reply()).collect()
    }

    fn read_reply(&mut self) -> std::io::Result<Frame> {
        loop {
            if let Some((frame, used)) = resp::decode_reply(&self.buf).map_err(std::io::Error::other)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command; panics on I/O errors.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Frame {
        self.try_cmd(args).expect("redis command")
    }

    /// A command whose reply is an integer.
    pub fn int<A: AsRef<[u8]>>(&mut self, args: &[A]) -> i64 {
        match self.cmd(args) {
            Frame::Integer(i) => i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }
}

/// One stream entry: its id and field/value pairs.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Entry id.
    pub id: String,
    /// Fields in order.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The value of `field`.
    pub fn get(&self, field: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_slice())
    }
}

fn bulk(f: &Frame) -> Vec<u8> {
    match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => b.clone(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// Reads a whole stream with `XRANGE key - +`.
pub fn xrange(c: &mut RedisClient, key: &str) -> Vec<Entry> {
    let Frame::Array(entries) = c.cmd(&["XRANGE", key, "-", "+"]) else { panic!("XRANGE reply") };
    entries
        .iter()
        .map(|e| {
            let Frame::Array(parts) = e else { panic!("entry") };
            let id = String::from_utf8(bulk(&parts[0])).expect("utf8 id");
            let Frame::Array(kv) = &parts[1] else { panic!("fields") };
            let fields =
                kv.chunks(2).map(|p| (String::from_utf8(bulk(&p[0])).expect("utf8 field"), bulk(&p[1]))).collect();
            Entry { id, fields }
        })
        .collect()
}
