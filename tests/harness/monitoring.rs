//! The monitoring side for end-to-end tests: a real `prometheus` and `alertmanager`
//! (Debian packages `prometheus`, `prometheus-alertmanager`) on free loopback ports in
//! temporary directories, a webhook receiver that records what Alertmanager sends, and
//! a `croupier` process with its data and control ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{free_port, kill, require_binary, wait_until_ready};

/// `GET url` with curl; the body, or `None` when it failed or answered an error status.
pub fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "--max-time", "10", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `prometheus` server scraping `targets` every second, evaluating `rules` (a file)
/// every second and sending alerts to `alertmanager`.
pub struct Prometheus {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    /// Starts it; `targets` are `host:port` of control listeners (job `croupier`).
    pub fn start(targets: &[SocketAddr], rules: Option<&Path>, alertmanager: Option<SocketAddr>) -> Prometheus {
        let binary = require_binary("prometheus", "prometheus");
        let dir = tempfile::Builder::new().prefix("croupier-prometheus-").tempdir().expect("temp dir");
        let port = free_port();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: croupier\n    \
             static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        if let Some(r) = rules {
            config.push_str(&format!("rule_files:\n  - \"{}\"\n", r.display()));
        }
        if let Some(am) = alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{am}\"]\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
        wait_until_ready(&mut child, "prometheus", &log, Duration::from_secs(30), || {
            http_get(&format!("http://127.0.0.1:{port}/-/ready")).is_some()
        });
        Prometheus { port, dir, child: Some(child) }
    }

    /// `GET /api/v1/<path>` as JSON.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let body = http_get(&format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
            .unwrap_or_else(|| panic!("prometheus /api/v1/{path} failed: {}", self.log()));
        serde_json::from_str(&body).expect("prometheus answers JSON")
    }

    /// The instant vector of `query` as (labels, value) pairs.
    pub fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let q: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let v = self.api(&format!("query?query={q}"));
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        (s["metric"].clone(), s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// What a webhook receiver got: each request body (Alertmanager's JSON).
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    /// The bodies so far.
    pub fn bodies(&self) -> Vec<String> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Waits until a body satisfies `pred` (at most `timeout`); returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            for b in self.bodies() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&b) {
                    if pred(&v) {
                        return v;
                    }
                }
            }
            assert!(Instant::now() < deadline, "{what}: not received within {timeout:?}; got {:?}", self.bodies());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An HTTP server on a free loopback port that answers 200 to every POST and keeps the
/// bodies (one request per connection is all Alertmanager needs; keep-alive is honoured).
pub fn webhook() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let keep = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || serve_webhook(stream, &keep));
        }
    });
    (addr, received)
}

fn serve_webhook(stream: TcpStream, keep: &Received) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut b) = keep.0.lock() {
            b.push(String::from_utf8_lossy(&body).into_owned());
        }
        if writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// An `alertmanager` routing every alert to `webhook` at once (grouping waits of a
/// second), resolved ones included.
pub struct Alertmanager {
    /// Its address.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Alertmanager {
    /// Starts it.
    pub fn start(webhook: SocketAddr) -> Alertmanager {
        let binary = require_binary("prometheus-alertmanager", "prometheus-alertmanager");
        let dir = tempfile::Builder::new().prefix("croupier-alertmanager-").tempdir().expect("temp dir");
        let port = free_port();
        let config = format!(
            "route:\n  receiver: test\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: \
             \"http://{webhook}/alerts\"\n        send_resolved: true\n"
        );
        std::fs::write(dir.path().join("alertmanager.yml"), config).expect("write alertmanager.yml");
        let log = dir.path().join("alertmanager.log");
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start alertmanager: {e}"));
        wait_until_ready(&mut child, "alertmanager", &log, Duration::from_secs(30), || {
            http_get(&format!("http://127.0.0.1:{port}/-/ready")).is_some()
        });
        Alertmanager { addr: SocketAddr::from(([127, 0, 0, 1], port)), _dir: dir, child: Some(child) }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A `croupier` process (`run`, `ingest` or `worker`) with its data port and control
/// port on free loopback ports; killed when dropped.
pub struct Croupier {
    /// The data port.
    pub data: SocketAddr,
    /// The control port.
    pub control: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Croupier {
    /// Starts `binary <command>` with `env` (the data and control ports are set here) and
    /// waits until its control port answers `/healthz`.
    pub fn start(binary: &str, command: &str, env: &[(String, String)]) -> Croupier {
        let dir = tempfile::Builder::new().prefix("croupier-run-").tempdir().expect("temp dir");
        let data = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("croupier.log");
        let mut child = Command::new(binary)
            .arg(command)
            .envs(env.iter().cloned())
            .env("CROUPIER_SERVER__LISTEN", data.to_string())
            .env("CROUPIER_OTLP__LISTEN", "")
            .env("CROUPIER_CONTROL__LISTEN", control.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start croupier: {e}"));
        wait_until_ready(&mut child, "croupier", &log, Duration::from_secs(20), || {
            http_get(&format!("http://{control}/healthz")).is_some()
        });
        Croupier { data, control, child: Some(child), log, _dir: dir }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits until the data port's shards are ready (every shard has read the backlogs):
    /// `/readyz` 200 on several new connections in a row.
    pub fn wait_data_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(0..8).all(|_| http_get(&format!("http://{}/readyz", self.data)).is_some()) {
            assert!(Instant::now() < deadline, "data port not ready within 20 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the control port's `/readyz` answers `status`; returns its body.
    pub fn wait_control_ready(&self, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (got, body) = self.control_get("/readyz");
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz {got}, expected {status}: {body}
{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET <path>` on the control port: (status, body).
    pub fn control_get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", &format!("http://{}{path}", self.control)])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (`TERM`, `INT`, ...) to the process; true if it was delivered.
    pub fn signal(&self, sig: &str) -> bool {
        self.child.as_ref().is_some_and(|c| crate::signal(c, sig))
    }

    /// Waits (at most `timeout`) for the process to end; its exit status, or `None` if it
    /// is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if status.is_some() || Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Croupier {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
