//! A real ZooKeeper (the Debian package `zookeeper`) for one test: a standalone server on
//! a free loopback port with its own data directory, killed when dropped.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, kill, require_binary, wait_until_ready};

/// Debian's ZooKeeper jar (its manifest names the jars it needs).
const JAR: &str = "/usr/share/java/zookeeper.jar";

/// A standalone ZooKeeper process.
pub struct ZooKeeperServer {
    /// The client port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ZooKeeperServer {
    /// Starts a server (`ZooKeeperServerMain <port> <data dir>`, admin server off) and waits
    /// until it answers `srvr`.
    pub fn start() -> ZooKeeperServer {
        let java = require_binary("java", "zookeeper");
        assert!(Path::new(JAR).exists(), "{JAR} not found: install the Debian package `zookeeper`");
        let dir = tempfile::Builder::new().prefix("croupier-zookeeper-").tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("zookeeper.log");
        let out = std::fs::File::create(&log).expect("zookeeper log");
        let mut child = Command::new(java)
            .args(["-Xmx256m", "-Dzookeeper.admin.enableServer=false", "-cp"])
            .arg(format!("{JAR}:/etc/zookeeper/conf"))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(port.to_string())
            .arg(dir.path().join("data"))
            .stdout(Stdio::from(out.try_clone().expect("log handle")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ZooKeeper: {e}"));
        wait_until_ready(&mut child, "zookeeper", &log, Duration::from_secs(30), || srvr(port));
        ZooKeeperServer { port, dir, child: Some(child) }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running server (the `java` process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Whether the server on `port` answers the `srvr` four-letter word (allowed by default).
fn srvr(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"srvr").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("Zookeeper version")
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
