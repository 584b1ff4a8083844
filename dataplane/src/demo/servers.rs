//! The demo's servers: `redis-server` and `clickhouse-server` from the PATH, started as
//! child processes with their data under the demo's directory, on free loopback ports.
//! Each runs in a process group of its own, so that a Ctrl-C at the terminal reaches only
//! the demo, which then stops them in order (after the data plane has drained).

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{http_client, redis_client::Redis};

/// A server started by the demo; stopped (SIGTERM, then SIGKILL after 30 s) on drop.
#[derive(Debug)]
pub struct Server {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// Stops the server and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status}); see {}", self.name, self.log.display())),
            _ => None,
        }
    }

    /// Waits until `ready` says yes with `port` listened on by this server (or a process
    /// it started), the server exits, or `timeout` passes. The port was free when chosen,
    /// but another process may take it before the server binds it: that server's answers
    /// are not this one's (the demo would run on it, and this one exits).
    fn wait_ready(&mut self, port: u16, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut foreign_since = None;
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            if ready() {
                match self.child.as_ref().map(|c| listened_by(c.id(), port)) {
                    Some(Some(false)) => {
                        let since = *foreign_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(5) {
                            return Err(format!(
                                "127.0.0.1:{port} is answered by another process than the {} started (it took the \
                                 port first); see {}",
                                self.name,
                                self.log.display()
                            ));
                        }
                    }
                    // Ours, or not known (no /proc): ready.
                    _ => return Ok(()),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{} not ready after {timeout:?}; see {}", self.name, self.log.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a socket listening on TCP `port` belongs to process `pid` or one of its
/// descendants (a server may run under a watchdog it forks); `None` when `/proc` cannot
/// tell (not Linux).
fn listened_by(pid: u32, port: u16) -> Option<bool> {
    // The listening sockets' inodes on that port, from /proc/net/tcp and tcp6: local
    // address `ADDR:PORT` in hex, state 0A (LISTEN), inode in the tenth column.
    let mut inodes = Vec::new();
    let want = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let (Some(local), Some(&"0A"), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9)) {
                if local.ends_with(&want) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return fs::metadata("/proc/net/tcp").is_ok().then_some(false);
    }
    // `pid` and its descendants, from each process's parent in /proc/<p>/stat.
    let mut family = vec![pid];
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: the command may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut i = 0;
    while let Some(&p) = family.get(i) {
        family.extend(parents.iter().filter(|(_, parent)| *parent == p).map(|(child, _)| *child));
        i += 1;
    }
    // A process whose descriptors cannot be read (a program with file capabilities, as
    // ClickHouse's own packages give theirs, is not readable in /proc by its user) leaves
    // the answer unknown, not "another's".
    let mut unreadable = false;
    let owns = family.iter().any(|p| match fs::read_dir(format!("/proc/{p}/fd")) {
        Ok(fds) => fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        }),
        Err(_) => {
            unreadable = true;
            false
        }
    });
    if owns {
        Some(true)
    } else if unreadable {
        None
    } else {
        Some(false)
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Where `program` is: the first executable file of that name on the PATH, else in
/// `/usr/sbin` or `/sbin`, where Debian installs `clickhouse-server` and which a user's
/// PATH does not name.
pub fn find(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A command running `program` as [`find`] finds it (by name when it is nowhere: the
/// spawn's error then says so).
fn command(program: &str) -> Command {
    Command::new(find(program).unwrap_or_else(|| PathBuf::from(program)))
}

fn spawn(name: &'static str, mut cmd: Command, dir: &Path, log: PathBuf) -> Result<Server, String> {
    let out = fs::File::create(dir.join(format!("{name}.out"))).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: the terminal's Ctrl-C is the demo's to handle.
        .process_group(0);
    // Stopped with the demo however it ends (killed, out of memory): sent SIGTERM when the
    // thread that started it (the demo's main thread) is gone, rather than left running.
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only calls prctl and getppid, which are
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died before the prctl: nothing would send the signal.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(Server { name, child: Some(child), log })
}

/// Starts `redis-server` with its append-only file in `dir`, answering on `port`.
pub fn redis(dir: &Path, port: u16) -> Result<Server, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = dir.join("redis.log");
    let mut cmd = command("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
        .arg(dir)
        .arg("--logfile")
        .arg(&log);
    let mut server = spawn("redis-server", cmd, dir, log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    server.wait_ready(port, Duration::from_secs(30), || {
        Redis::connect(addr, Duration::from_millis(200))
            .and_then(|mut r| r.command(&[b"PING"]))
            .is_ok_and(|f| matches!(f, croupier_protocol::resp::Frame::SimpleString(ref s) if s == b"PONG"))
    })?;
    Ok(server)
}

/// Starts `clickhouse-server` with its data in `dir`, native protocol on `tcp`, HTTP on
/// `http`.
pub fn clickhouse(dir: &Path, tcp: u16, http: u16) -> Result<Server, String> {
    for sub in ["data", "tmp", "user_files", "format_schemas"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let d = dir.display();
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#
    );
    let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;
    fs::write(dir.join("config.xml"), config).map_err(|e| format!("{d}: {e}"))?;
    fs::write(dir.join("users.xml"), users).map_err(|e| format!("{d}: {e}"))?;
    let mut cmd = command("clickhouse-server");
    cmd.arg(format!("--config-file={d}/config.xml"));
    let mut server = spawn("clickhouse-server", cmd, dir, dir.join("error.log"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    server.wait_ready(http, Duration::from_secs(120), || {
        http_client::get(addr, "/ping", Duration::from_millis(500)).is_ok_and(|r| r.status == 200)
    })?;
    Ok(server)
}
