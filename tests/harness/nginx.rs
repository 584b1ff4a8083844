//! A real `nginx` (Debian package `nginx`) running `deploy/nginx/nginx.conf` as shipped,
//! only its addresses changed, on a free loopback port.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, kill, require_binary, wait_until_ready};

/// nginx running the shipped file with its upstreams `first` and `second` and listening
/// on a free port; killed when dropped.
pub struct Nginx {
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Nginx {
    /// Starts it; waits until it accepts connections.
    pub fn start(first: SocketAddr, second: SocketAddr) -> Nginx {
        let binary = require_binary("nginx", "nginx");
        let dir = tempfile::Builder::new().prefix("croupier-nginx-").tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx/nginx.conf")).unwrap();
        let conf = shipped
            .replace("server 172.28.0.11:8080", &format!("server {first}"))
            .replace("server 172.28.0.12:8080", &format!("server {second}"))
            .replace("listen 8080 reuseport;", &format!("listen {addr};"))
            .replace("worker_processes auto;", "worker_processes 1;\npid nginx.pid;");
        assert_ne!(conf, shipped);
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let log = dir.path().join("nginx.log");
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .args(["-c", "nginx.conf", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        wait_until_ready(&mut child, "nginx", &log, Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Nginx { addr, _dir: dir, child: Some(child) }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
