//! A real `haproxy` (Debian package `haproxy`) running a configuration file of the
//! repository as is, its addresses given in the environment, on free loopback ports.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, kill, require_binary, wait_until_ready};

/// A `haproxy` process in the foreground, killed when dropped.
pub struct Haproxy {
    /// The frontend's address (`HAPROXY_BIND`).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Haproxy {
    /// Starts `haproxy -f config` with `env` and `HAPROXY_BIND` set to a free loopback
    /// port; waits until the frontend accepts connections.
    pub fn start(config: &Path, env: &[(String, String)]) -> Haproxy {
        let binary = require_binary("haproxy", "haproxy");
        let dir = tempfile::Builder::new().prefix("croupier-haproxy-").tempdir().expect("temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new(binary)
            .arg("-f")
            .arg(config)
            .arg("-db")
            .envs(env.iter().cloned())
            .env("HAPROXY_BIND", addr.to_string())
            .stdout(std::fs::File::create(dir.path().join("haproxy.out")).expect("out file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start haproxy: {e}"));
        wait_until_ready(&mut child, "haproxy", &log, Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Haproxy { addr, _dir: dir, child: Some(child) }
    }

    /// What haproxy wrote on stderr so far (alerts, servers going up and down).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
