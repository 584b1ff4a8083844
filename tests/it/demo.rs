//! `croupier demo` as a user runs it: the binary alone with `redis-server` and
//! `clickhouse-server` on the PATH. Its final summary must be what ClickHouse and Redis
//! hold (read back with clickhouse-client and redis-cli after the demo has stopped its
//! servers); a second run continues on the same data; the live screen, in tmux, shows every
//! figure and changes from one second to the next, and Ctrl-C stops everything.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use croupier_dataplane::demo::servers;

fn demo(dir: &Path, extra: &[&str]) -> HashMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_croupier-it-bin"))
        .arg("demo")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("croupier demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "croupier demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Off a terminal: progress lines, no escape codes, then the summary.
    assert!(!stdout.contains('\x1b'), "plain output has escape codes:\n{stdout}");
    for step in ["redis-server on", "clickhouse-server on", "migrate", "warm-up", "Summary", "servers stopped"] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix("summary: ")).expect("a summary line");
    line.split(' ').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn n(summary: &HashMap<String, String>, key: &str) -> u64 {
    summary[key].parse().unwrap_or_else(|_| panic!("{key}={}", summary[key]))
}

/// Starts the demo's servers again on its data and reads what they hold, with the
/// servers' own clients.
fn held(dir: &Path, day: &str) -> HashMap<&'static str, u64> {
    let (rp, tcp, http) = (servers::free_port().unwrap(), servers::free_port().unwrap(), servers::free_port().unwrap());
    let mut redis = servers::redis(&dir.join("redis"), rp).expect("redis-server on the demo's data");
    let mut ch = servers::clickhouse(&dir.join("clickhouse"), tcp, http).expect("clickhouse-server on the demo's data");
    let q = |sql: &str| -> u64 {
        let out =
            Command::new("clickhouse-client").args(["--port", &tcp.to_string(), "--query", sql]).output().unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let pf = |key: &str| -> u64 {
        let out = Command::new("redis-cli").args(["-p", &rp.to_string(), "PFCOUNT", key]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let game = "game_id = 'demo-game' AND env = 'prod'";
    let today = format!("toDate(event_time) = '{day}' AND {game}");
    let paid = format!("toDate(time) = '{day}' AND {game} AND status = 'success'");
    let held = HashMap::from([
        ("event_rows", q("SELECT count() FROM analytics.events FINAL")),
        ("event_ids", q("SELECT uniqExact(event_id) FROM analytics.events")),
        ("payment_rows", q("SELECT count() FROM analytics.payments FINAL")),
        ("dau_exact", q(&format!("SELECT uniqExact(user_id) FROM analytics.events WHERE {today}"))),
        (
            "new_exact",
            q(&format!("SELECT uniqExact(user_id) FROM analytics.events WHERE {today} AND event = 'register'")),
        ),
        ("revenue_cents", q(&format!("SELECT sum(amount_cents) FROM analytics.payments FINAL WHERE {paid}"))),
        ("payers", q(&format!("SELECT uniqExact(user_id) FROM analytics.payments FINAL WHERE {paid}"))),
        ("dau_sketch", pf(&format!("hll:dau:demo-game:prod:{day}"))),
        ("new_sketch", pf(&format!("hll:new:demo-game:prod:{day}"))),
    ]);
    ch.stop();
    redis.stop();
    held
}

fn assert_held(summary: &HashMap<String, String>, held: &HashMap<&str, u64>) {
    for key in
        ["event_rows", "payment_rows", "dau_exact", "new_exact", "revenue_cents", "payers", "dau_sketch", "new_sketch"]
    {
        assert_eq!(n(summary, key), held[key], "{key}: summary {summary:?}, held {held:?}");
    }
    assert_eq!(held["event_ids"], held["event_rows"], "every event once");
}

#[test]
fn demo_summary_is_what_clickhouse_and_redis_hold_and_a_second_run_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    // Every player of the first run is new today: its 20 s and the reads after them fall
    // on one UTC day.
    croupier_it::http::clear_of_day_turn(90, 0);
    let first = demo(&dir, &["--duration", "20", "--fresh", "--rate", "400", "--players", "2000"]);
    let day = first["day"].clone();
    let held1 = held(&dir, &day);
    assert_held(&first, &held1);
    // A fresh directory: everything stored is this run's, every player new, none refused.
    assert_eq!(n(&first, "run_refused"), 0);
    assert!(n(&first, "run_events") >= 400 * 15, "{first:?}");
    assert_eq!(n(&first, "event_rows"), n(&first, "run_events"));
    assert_eq!(n(&first, "payment_rows"), n(&first, "run_payments"));
    assert_eq!(n(&first, "new_exact"), n(&first, "dau_exact"));
    assert!(n(&first, "revenue_cents") > 0 && n(&first, "dau_exact") >= 200, "{first:?}");

    // Without --fresh: the same data, and this run's players on top.
    let second = demo(&dir, &["--duration", "8", "--rate", "400", "--players", "2000"]);
    if second["day"] == day {
        assert_held(&second, &held(&dir, &day));
        assert!(n(&second, "dau_exact") > n(&first, "dau_exact"), "{second:?}");
        assert!(n(&second, "revenue_cents") >= n(&first, "revenue_cents"));
    }
    assert_eq!(n(&second, "event_rows"), n(&first, "event_rows") + n(&second, "run_events"));
    assert_eq!(n(&second, "payment_rows"), n(&first, "payment_rows") + n(&second, "run_payments"));
}

/// tmux with a server of its own (`-L`), so the test touches no other tmux session.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux").arg("-L").arg(socket).args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmux session of its own (`socket`) running `croupier demo --dir dir --fresh
/// --duration 120 --rate 300 --players 2000` and then `after` in a 132×40 terminal; the
/// session goes with the value, whatever happens (its demo stops on the hang-up).
struct Session(String);

impl Session {
    fn start(socket: &str, dir: &Path, after: &str) -> Session {
        let cmd = format!(
            "{} demo --dir {} --fresh --duration 120 --rate 300 --players 2000{after}",
            env!("CARGO_BIN_EXE_croupier-it-bin"),
            dir.display()
        );
        tmux(socket, &["new-session", "-d", "-s", "demo", "-x", "132", "-y", "40", &cmd]);
        Session(socket.to_owned())
    }

    /// The screen as it shows now.
    fn capture(&self) -> String {
        tmux(&self.0, &["capture-pane", "-p", "-t", "demo"])
    }

    /// The scrollback and the screen.
    fn history(&self) -> String {
        tmux(&self.0, &["capture-pane", "-p", "-S", "-", "-t", "demo"])
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        tmux(&self.0, &["kill-server"]);
    }
}

#[test]
fn demo_live_screen_shows_every_figure_and_changes_and_ctrl_c_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let socket = format!("croupier-demo-{}", std::process::id());
    let session = Session::start(&socket, &dir, "; sleep 60");
    let capture = || session.capture();
    let fields = [
        "accepted",
        "refused",
        "ack",
        "p50",
        "p99",
        "backlog",
        "rows in ClickHouse",
        "freshness",
        "online now",
        "DAU",
        "new users",
        "revenue",
        "conversion",
        "pass rate",
        "/metrics",
        "/readyz",
        "dashboard",
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let screen = capture();
        // The screen from its third second: figures read at least twice.
        if screen.contains("Croupier demo  00:00:03") {
            break screen;
        }
        assert!(Instant::now() < deadline, "no live screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(3));
    let second = capture();
    // The start-up lines went up into the scrollback, not under the screen: the login
    // link is there to click (black-box finding: the first frame drew over it).
    let history = session.history();
    assert!(
        history.contains("/login#token=") || history.contains("dashboard: not built"),
        "no dashboard line in the scrollback:\n{history}"
    );
    let result = std::panic::catch_unwind(|| {
        for screen in [&first, &second] {
            for f in fields {
                assert!(screen.contains(f), "{f:?} not on the screen:\n{screen}");
            }
        }
        // What a person sees move: the clock, the totals, the rows.
        let line = |s: &str, p: &str| s.lines().find(|l| l.trim_start().starts_with(p)).unwrap_or("").to_owned();
        for prefix in ["Croupier demo", "ingest     accepted", "pipeline"] {
            assert_ne!(line(&first, prefix), line(&second, prefix), "{prefix:?} did not change:\n{first}\n{second}");
        }
    });
    // Ctrl-C at the terminal, as a person stops it: the players stop, the data plane
    // drains and stops, the summary is printed, the servers are stopped.
    tmux(&socket, &["send-keys", "-t", "demo", "C-c"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !capture().contains("servers stopped") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = capture();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(last.contains("summary: ") && last.contains("servers stopped"), "no summary after Ctrl-C:\n{last}");
    // Nothing left running on the demo's data: no server working in its directory, and
    // the demo itself gone (its exit follows the last line by a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = left_running(&dir);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running after Ctrl-C: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A second demo on a running demo's directory is refused before it touches anything
/// (`--fresh` deleted the running one's Redis data, and without it a second redis-server
/// opened the same append-only file); a terminal that goes away (tmux's session killed: a
/// hang-up) stops the demo in order, servers included (they were left running, and the
/// next demo could not start its ClickHouse on the locked directory).
#[test]
fn demo_refuses_a_second_demo_on_its_directory_and_stops_on_a_hang_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let socket = format!("croupier-demo-hup-{}", std::process::id());
    let session = Session::start(&socket, &dir, "");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let screen = session.capture();
        if screen.contains("Croupier demo  00:00:02") {
            break;
        }
        assert!(Instant::now() < deadline, "no live screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_croupier-it-bin"))
        .args(["demo", "--dir"])
        .arg(&dir)
        .args(["--fresh", "--duration", "5"])
        .output()
        .expect("croupier demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a second demo ran:\n{stdout}");
    assert!(stdout.contains("another croupier demo, or servers an earlier one left running, use"), "{stdout}");
    assert!(dir.join("redis").is_dir() && dir.join("clickhouse").is_dir(), "the running demo's data was deleted");
    // The terminal goes: everything stops.
    drop(session);
    wait_all_stopped(&dir, "after the hang-up");
}

/// Processes working in `dir` (the servers run in its sub-directories) or running
/// `demo --dir <dir>`.
fn left_running(dir: &Path) -> Vec<String> {
    let args = format!("demo\0--dir\0{}\0", dir.display());
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&std::fs::read(p.join("cmdline")).unwrap_or_default()).into_owned();
        let in_dir = std::fs::read_link(p.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if in_dir || cmdline.contains(&args) {
            left.push(cmdline.replace('\0', " "));
        }
    }
    left
}

/// Waits until nothing runs in `dir` (90 s at most).
fn wait_all_stopped(dir: &Path, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = left_running(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running {after}: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Black-box findings: a demo killed (`SIGKILL`) left clickhouse-server running, which
/// holds none of the demo's lock (it closes what it inherits), so `--fresh` deleted its
/// data under it; and a demo whose output was closed (`| head`) panicked, leaving both
/// servers running. The servers now stop with a killed demo, a run while one still stops is
/// refused, and a closed output stops the demo in order.
#[test]
fn demo_killed_or_cut_off_leaves_no_server_running() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let start = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_croupier-it-bin"))
            .args(["demo", "--plain", "--dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("croupier demo starts")
    };
    // Read until the players start, then kill the demo.
    let mut child = start(&["--duration", "600"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("players:")), "the demo did not start");
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    wait_all_stopped(&dir, "after the demo was killed");
    // A closed output: the demo stops in order (drain, servers stopped) and exits 0.
    let mut child = start(&["--duration", "600"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("players:")), "the demo did not start");
    drop(lines);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop when its output closed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status:?}");
    wait_all_stopped(&dir, "after the output closed");
    // And the directory is usable again, its data kept.
    let summary = demo(&dir, &["--plain", "--duration", "3"]);
    assert!(n(&summary, "event_rows") > 0, "{summary:?}");
}

/// Black-box finding: the demo's Redis port, free when chosen, was taken by another
/// server before the demo's `redis-server` bound it; that one exited ("Address already in
/// use"), but the other answered PING and the demo ran on it, its data nowhere in the
/// demo's directory. A server that answers on the port must be the one the demo started.
#[test]
fn demo_servers_are_not_taken_for_another_process_on_their_port() {
    let other = croupier_it::redis::RedisServer::start();
    let port: u16 = other.addr().rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = servers::redis(dir.path(), port).expect_err("another process's redis-server is not the demo's");
    assert!(err.contains("redis-server exited"), "{err}");
    // The demo's own: answered by it.
    let port = servers::free_port().expect("port");
    let mut own = servers::redis(&dir.path().join("own"), port).expect("the demo's redis-server");
    own.stop();
}

/// Black-box finding: with a server killed under the demo, its live figures froze
/// without a word (both servers' figures, as they were read together), and the run ended
/// after a 60 s drain with one line of error, no summary. Each server is read on its
/// own and the screen names the one that cannot be read; the drain gives up once nothing
/// moves, and the summary gives this run's figures and where its accepted events are.
#[test]
fn demo_says_when_a_server_is_down_and_still_sums_up_its_run() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_croupier-it-bin"))
        .args(["demo", "--plain", "--duration", "14", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("croupier demo starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines().map_while(Result::ok);
    assert!(lines.by_ref().any(|l| l.contains("players:")), "the demo did not start");
    // The demo's redis-server: the process running in DIR/redis.
    let redis = left_running(&dir.join("redis"));
    assert_eq!(redis.len(), 1, "{redis:?}");
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir.join("redis"))))
        .and_then(|e| e.file_name().to_str().map(str::to_owned))
        .expect("redis-server's pid");
    std::thread::sleep(Duration::from_secs(2));
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let started = Instant::now();
    let rest: Vec<String> = lines.collect();
    let status = child.wait().unwrap();
    let text = rest.join("\n");
    assert!(text.lines().any(|l| l.starts_with("! Redis: ")), "no word of Redis:\n{text}");
    // The figures' lines keep their format (revenue last).
    assert!(
        text.lines().filter(|l| l.contains(" ev/s ")).all(|l| l.split(' ').nth_back(1) == Some("revenue")),
        "{text}"
    );
    assert!(text.contains("ClickHouse     "), "ClickHouse's rows, read, are told: {text}");
    assert!(text.contains("Summary") && text.contains("this run "), "{text}");
    assert!(text.contains("stored figures not read: Redis"), "{text}");
    assert!(text.contains("summary: run_events="), "{text}");
    assert!(!status.success(), "a run that could not drain fails: {status}");
    assert!(started.elapsed() < Duration::from_secs(50), "the drain waited {:?}", started.elapsed());
    wait_all_stopped(&dir, "after the run");
}
