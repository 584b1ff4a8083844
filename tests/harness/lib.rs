//! The local-services test harness: real `redis-server` (and later `clickhouse-server`)
//! processes on free loopback ports in temporary directories, stopped when dropped, even
//! when a test fails; plus byte-level HTTP and RESP clients over real TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod clickhouse;
pub mod clickhouse_cluster;
pub mod cluster;
pub mod haproxy;
pub mod http;
pub mod monitoring;
pub mod nginx;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod zookeeper;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Ports handed out by [`free_port`]: below the kernel's ephemeral range (32768 and up on
/// Linux), so no connection's local port and no `bind(0)` of another process takes one
/// between the test choosing it and its server binding it.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// A free loopback TCP port that no other test process is handed: one of [`TEST_PORTS`],
/// reserved for this process's life by an exclusive `flock` on a file named after it (tests
/// run side by side, a process each), and bound once to check that nothing else holds it.
/// (A port the kernel picks for `bind(0)` and that is released again can be picked
/// again by another test, or taken as a connection's local port, before the server
/// that was meant to get it binds it: "Address already in use".)
pub fn free_port() -> u16 {
    use std::os::fd::AsRawFd;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("croupier-it-ports");
    let _ = std::fs::create_dir_all(&dir);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = fastrand::u32(..span);
    for i in 0..span {
        let port = TEST_PORTS.start + ((start + i) % span) as u16;
        let Ok(file) =
            std::fs::File::options().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
        else {
            continue;
        };
        // SAFETY: `flock` on a descriptor this function owns; it reads no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(file);
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
}

/// Finds `binary` on PATH (or in /usr/sbin, /usr/bin), or panics naming the Debian
/// package that provides it.
pub fn require_binary(binary: &str, package: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()]);
    for d in dirs {
        let p = d.join(binary);
        if is_executable(&p) {
            return p;
        }
    }
    panic!("`{binary}` not found: install the Debian package `{package}` (apt-get install {package}), or run .ci/run");
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Runs a command to completion and returns its stdout, panicking with its stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `ready()` holds for a server just started as `child`; panics with the
/// server's log if it exits first, or (after killing it) when `timeout` passes.
pub fn wait_until_ready(child: &mut Child, name: &str, log: &Path, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{name} exited with {status}: {log}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` (a name: `TERM`, `STOP`, `CONT`) to `child`; true if it was delivered.
pub fn signal(child: &Child, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills a server process (SIGKILL) and reaps it.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
