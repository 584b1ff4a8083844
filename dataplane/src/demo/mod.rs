//! `croupier demo`: the whole pipeline on one machine in one command. It starts
//! `redis-server` and `clickhouse-server` from the PATH with their data in a directory of
//! its own ([`servers`]), creates the schema, runs the data plane (ingest, worker and the
//! control port) in this process ([`crate::stack`]), and drives it with simulated players
//! ([`load`], using the load generator's player [`model`]) while a live screen shows,
//! every second, what is accepted, queued and stored ([`figures`], [`screen`]). Ctrl-C
//! (or `--duration`) stops the players, waits until the streams are drained into
//! ClickHouse, stops the data plane, prints a summary of what ClickHouse and Redis hold,
//! and stops the servers; the data stays for the next run (`--fresh` deletes it).

pub mod figures;
pub mod http_client;
pub mod load;
pub mod model;
pub mod options;
pub mod redis_client;
pub mod screen;
pub mod servers;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_control::config::Config;

use figures::{Metrics, Stored, GAME};
use options::{Options, Parsed};
use screen::{Endpoints, RunTotals, View};

/// The demo game's secret (the one in `croupier.example.toml`).
pub const SECRET: &str = "change-me";
/// The demo's HS256 secret of Analytics API tokens.
const JWT_SECRET: &str = "demo-jwt-secret";
/// What `--fresh` deletes in the demo's directory (and nothing else).
const ENTRIES: [&str; 6] = ["redis", "clickhouse", "croupier.toml", "croupier.log", "runs", "api-token"];
/// How long the drain at the end may take.
const DRAIN: Duration = Duration::from_secs(60);
/// How long the drain waits without any progress (nothing inserted, the backlog not
/// read or not moving: a server down) before it gives up; longer than a worker's insert
/// of the demo's batches takes on a loaded machine.
const STALLED: Duration = Duration::from_secs(20);

/// Set once standard output is closed (its reader gone: `croupier demo --plain | head`):
/// the demo then stops in order, as on Ctrl-C, and writes nothing more.
static OUTPUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes `text` to standard output. A write that fails (a closed pipe) points standard
/// output at `/dev/null` for the rest of the run and flags [`OUTPUT_GONE`], where
/// `println!` would panic and leave the servers running.
fn say(text: &str) {
    if OUTPUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    // A standard output left non-blocking by another program that is full: this frame
    // is dropped, the next one drawn.
    if written.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock) {
        OUTPUT_GONE.store(true, Ordering::Relaxed);
        if let Ok(devnull) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            // SAFETY: dup2 onto standard output of a descriptor we own (closed after).
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), 1) };
        }
    }
}

/// Runs `croupier demo` with the arguments after `demo`.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let opts = match options::parse(args) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            crate::cli::say!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            crate::cli::tell!("croupier demo: {e}\n{}", options::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Standard error may be the log file by now: say it on standard output too.
            say(&format!("croupier demo: {e}\n"));
            ExitCode::FAILURE
        }
    }
}

/// A step of the start-up, shown as it happens.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    say(&format!("  {what} ... "));
    let t0 = Instant::now();
    let res = f();
    match &res {
        Ok(_) => say(&format!("ok ({:.1} s)\n", t0.elapsed().as_secs_f64())),
        Err(_) => say("failed\n"),
    }
    res
}

/// The demo's directory, locked for this run (`flock` on its `lock` file): a second demo
/// on the same directory would start a second redis-server on its append-only file, and
/// `--fresh` would delete a running demo's data. redis-server inherits the lock's
/// descriptor, so the directory stays locked while it runs; the servers are sent SIGTERM
/// when the demo dies however it ends ([`servers`]), and a clickhouse-server still
/// stopping (or left by an earlier version) is found by its own lock on its status file.
fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => format!(
                "another croupier demo, or servers an earlier one left running, use {} (stop them first — \
                 `fuser {}` lists them — or give this one another --dir)",
                dir.display(),
                path.display()
            ),
            _ => format!("{}: cannot lock: {e}", path.display()),
        });
    }
    // SAFETY: fcntl on a descriptor we own: cleared close-on-exec, the servers inherit it.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(format!("{}: {}", path.display(), std::io::Error::last_os_error()));
    }
    // clickhouse-server closes the descriptors it inherits, so the lock above is not held
    // while one an earlier demo left runs (killed before its servers could be told, or
    // still stopping): its own lock on its status file says it.
    let status = dir.join("clickhouse").join("data").join("status");
    if let Ok(s) = std::fs::File::open(&status) {
        // SAFETY: flock on a descriptor we own; released when `s` is closed.
        if unsafe { libc::flock(s.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
        {
            return Err(format!(
                "a clickhouse-server an earlier demo started still runs on {} (it may be stopping: try again \
                 in a moment; else stop it — `fuser {}` lists it — or give this demo another --dir)",
                dir.display(),
                status.display()
            ));
        }
    }
    Ok(f)
}

fn prepare_dir(o: &Options) -> Result<PathBuf, String> {
    if o.fresh {
        for e in ENTRIES {
            let p = o.dir.join(e);
            let res = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            match res {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(format!("--fresh: cannot delete {}: {err}", p.display())),
            }
        }
    }
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    o.dir.canonicalize().map_err(|e| format!("{}: {e}", o.dir.display()))
}

/// Sends this process's standard error (the data plane's log) to `path`, so that it does
/// not write over the screen.
fn log_to(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: dup2 onto fd 2 with a descriptor we own; the file stays open through fd 2.
    if unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
        return Err(format!("cannot redirect the log: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The next run's number (each run brings players of its own).
fn next_run(dir: &Path) -> Result<u64, String> {
    let path = dir.join("runs");
    let runs = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    std::fs::write(&path, format!("{}\n", runs + 1)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(runs)
}

/// The built web dashboard: `dashboard/dist` under the working directory, near the
/// binary (`target/<profile>/croupier` in its repository), or in the repository the
/// binary was built from (a copied binary on the machine that built it); `None` when not
/// built.
fn dashboard_dir() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("dashboard/dist")];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(3).map(|d| d.join("dashboard/dist")));
    }
    candidates.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboard/dist")));
    candidates.into_iter().find(|d| d.join("index.html").is_file()).and_then(|d| d.canonicalize().ok())
}

fn config_text(redis: u16, clickhouse: u16, dashboard: Option<&Path>) -> String {
    // A TOML basic string: the path's backslashes and quotes escaped.
    let dashboard =
        dashboard.map_or(String::new(), |d| d.display().to_string().replace('\\', "\\\\").replace('"', "\\\""));
    format!(
        "# Written by `croupier demo`; `croupier run --config` this file while the demo's servers run.\n\
         [server]\nlisten = \"127.0.0.1:0\"\nshards = 2\npin = false\n\n\
         [redis]\naddr = \"127.0.0.1:{redis}\"\n\n\
         [clickhouse]\naddr = \"127.0.0.1:{clickhouse}\"\n\n\
         [worker]\nshards = 1\nconsumer = \"demo\"\n\n\
         [control]\nlisten = \"127.0.0.1:0\"\ndashboard_dir = \"{dashboard}\"\n\n\
         [api]\njwt_secret = \"{JWT_SECRET}\"\n\n\
         [otlp]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n\n\
         [log]\nlevel = \"info\"\n\n\
         [games.{GAME}]\nsecret = \"{SECRET}\"\n"
    )
}

/// Writes a week-long Analytics API token (role `viewer`, the demo's game) to
/// `DIR/api-token`, for `curl -H "Authorization: Bearer $(cat DIR/api-token)"`.
fn api_token(dir: &Path) -> Result<PathBuf, String> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 7 * 86_400;
    let claims = serde_json::json!({"sub": "demo", "roles": ["viewer"], "games": [GAME], "exp": exp});
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes()).map_err(|e| format!("API token: {e}"))?;
    let token = encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| format!("API token: {e}"))?;
    let path = dir.join("api-token");
    std::fs::write(&path, token).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn migrate(config: &Config) -> Result<(), String> {
    let opts = crate::worker::clickhouse_options(config);
    let driver = crate::runtime::resolve(config.server.driver)?;
    crate::runtime::block_on(driver, async move {
        let mut conn = crate::clickhouse::connection::Connection::connect(&opts).await?;
        crate::clickhouse::schema::migrate(&mut conn).await
    })
    .map_err(|e| format!("runtime: {e}"))?
    .map_err(|e| e.to_string())
}

fn wait_ready(data: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_client::get(data, "/readyz", Duration::from_secs(1)).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("http://{data}/readyz not ready after 30 s; see croupier.log"))
}

fn run(o: &Options) -> Result<(), String> {
    for (program, package) in [("redis-server", "redis-server"), ("clickhouse-server", "clickhouse-server")] {
        if servers::find(program).is_none() {
            return Err(format!(
                "{program} is neither on the PATH nor in /usr/sbin: install it (Debian: apt-get install {package}, or scripts/setup.sh)"
            ));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    // SIGHUP too (unless ignored, as under `nohup`): a closed terminal stops the demo in
    // order, servers included. First the screen goes to /dev/null — a write to the closed
    // terminal would fail (and `println!` panic) while the demo stops its servers — then
    // the stop is flagged (the actions run in the order registered).
    if !crate::signals::ignored(libc::SIGHUP) {
        let devnull =
            std::fs::OpenOptions::new().write(true).open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        let devnull = std::os::fd::IntoRawFd::into_raw_fd(devnull);
        // SAFETY: the action only calls dup2, which is async-signal-safe, on a descriptor
        // that stays open for the life of the process (its ownership was released).
        unsafe {
            signal_hook::low_level::register(signal_hook::consts::SIGHUP, move || {
                libc::dup2(devnull, 1);
            })
        }
        .map_err(|e| format!("signal handler: {e}"))?;
        signal_hook::flag::register(signal_hook::consts::SIGHUP, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal handler: {e}"))?;
    }
    let _lock = lock_dir(&o.dir)?;
    let dir = prepare_dir(o)?;
    log_to(&dir.join("croupier.log"))?;
    say(&format!("Croupier demo: data in {}{}\n", dir.display(), if o.fresh { " (fresh)" } else { "" }));

    let (redis_port, ch_tcp, ch_http) = (servers::free_port()?, servers::free_port()?, servers::free_port()?);
    let mut redis =
        step(&format!("redis-server on 127.0.0.1:{redis_port}"), || servers::redis(&dir.join("redis"), redis_port))?;
    let mut clickhouse = step(&format!("clickhouse-server on 127.0.0.1:{ch_tcp} (HTTP {ch_http})"), || {
        servers::clickhouse(&dir.join("clickhouse"), ch_tcp, ch_http)
    })?;
    let dashboard = dashboard_dir();
    let text = config_text(redis_port, ch_tcp, dashboard.as_deref());
    let config_path = dir.join("croupier.toml");
    std::fs::write(&config_path, &text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    croupier_control::logging::init(&config.log)?;
    step("migrate (analytics schema)", || migrate(&config))?;
    let stack = step("croupier: ingest, worker, control port", || crate::stack::Stack::start(config, true, true))?;
    let (Some(data), Some(control)) = (stack.data_addr(), stack.control_addr()) else {
        stack.shutdown();
        return Err("the data plane has no data or control port".into());
    };
    step("warm-up (/readyz)", || wait_ready(data))?;

    let redis_addr = SocketAddr::from(([127, 0, 0, 1], redis_port));
    let ch_addr = SocketAddr::from(([127, 0, 0, 1], ch_http));
    let run_no = next_run(&dir)?;
    let token = api_token(&dir)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(run_no);
    let plan = load::Plan {
        addr: data,
        game: GAME.into(),
        secret: SECRET.into(),
        rate: o.rate,
        players: o.players,
        first_player: 1 + run_no * 10_000_000,
        day: o.day,
        seed,
    };
    say(&format!(
        "  players: {} over a day of {} s, {} events/s (run {})\n",
        o.players,
        o.day.as_secs(),
        o.rate,
        run_no + 1
    ));
    say(&format!("  ingest:  http://{data}/api/ingest/events (game {GAME}, secret {SECRET}); /healthz /readyz\n"));
    say(&format!("  metrics: http://{control}/metrics; /healthz /readyz\n"));
    say(&format!(
        "  API:     curl -H \"Authorization: Bearer $(cat {})\" 'http://{control}/api/analytics/realtime?game_id={GAME}&env=prod'\n",
        screen::shell_quoted(&token.display().to_string())
    ));
    match &dashboard {
        Some(_) => {
            let jwt = std::fs::read_to_string(&token).unwrap_or_default();
            say(&format!("  dashboard: http://{control}/login#token={}\n", jwt.trim()));
        }
        None => say("  dashboard: not built (scripts/build-dashboard.sh builds dashboard/dist)\n"),
    }
    let players = load::Load::start(plan)?;
    let endpoints = Endpoints {
        data: data.to_string(),
        control: control.to_string(),
        dir: dir.display().to_string(),
        token: token.display().to_string(),
        dashboard: dashboard.as_ref().map(|d| d.display().to_string()),
    };
    let started = Instant::now();
    // The last reading of the counters (none until one succeeds) and the rates shown.
    let mut last: Option<(Metrics, Instant)> = figures::metrics(control).ok().map(|m| (m, Instant::now()));
    let mut rates = (0.0, 0.0);
    let mut stored = Stored::default();
    // Since when ClickHouse's and Redis's figures could not be read, if they cannot.
    let (mut ch_failing, mut redis_failing): (Option<Instant>, Option<Instant>) = (None, None);
    let live = !o.plain;
    if live {
        // The frames draw from the top of the terminal: the start-up lines (the dashboard's
        // login link among them) are first scrolled up into the terminal's scrollback
        // rather than drawn over.
        say(&"\n".repeat(terminal_size().0));
        say("\x1b[?25l");
    }
    let mut tick = 0u64;
    loop {
        tick += 1;
        let next = started + Duration::from_secs(tick);
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let done = stop.load(Ordering::Relaxed)
            || OUTPUT_GONE.load(Ordering::Relaxed)
            || o.duration.is_some_and(|d| started.elapsed() >= d);
        // The rates are the counters' differences over the time between their readings (a
        // reading that failed is skipped: the next difference spans both seconds).
        // A reading that fails keeps the rates shown; the next difference spans both seconds.
        let m = match (figures::metrics(control), last) {
            (Ok(m), Some((before, at))) => {
                let secs = at.elapsed().as_secs_f64();
                if secs > 0.0 {
                    let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                    rates = (per_sec(m.accepted, before.accepted), per_sec(m.refused, before.refused));
                }
                last = Some((m, Instant::now()));
                m
            }
            (Ok(m), None) => {
                last = Some((m, Instant::now()));
                m
            }
            (Err(_), Some((before, _))) => before,
            (Err(_), None) => Metrics::default(),
        };
        // Each server read on its own: one that fails leaves the other's figures live,
        // and the screen says which figures are old and why.
        let mut unreadable = Vec::new();
        for (failing, read) in [
            (&mut ch_failing, figures::tables(ch_addr, &mut stored)),
            (&mut redis_failing, figures::sketches(redis_addr, &mut stored)),
        ] {
            match read {
                Ok(()) => *failing = None,
                Err(e) => {
                    let since = *failing.get_or_insert_with(Instant::now);
                    unreadable.push(format!("{e} (for {} s; its figures are that old)", since.elapsed().as_secs()));
                }
            }
        }
        let (stats, mut recent) = players.take_recent();
        let view = View {
            elapsed: started.elapsed(),
            duration: o.duration,
            accepted_per_sec: rates.0,
            refused_per_sec: rates.1,
            metrics: m,
            stored: stored.clone(),
            ack_ms: load::percentiles(&mut recent),
            joined: (stats.joined, o.players),
            day_part: (started.elapsed().as_secs_f64() / o.day.as_secs_f64()).min(1.0),
            endpoints: endpoints.clone(),
            unreadable,
        };
        if live {
            // One write that draws over the last frame (each line cleared to its end, the
            // rest below cleared after it): the screen is never blank, and never half drawn
            // for long, however the terminal is read.
            let (rows, columns) = terminal_size();
            say(&screen::frame(&screen::live(&view), columns, rows));
        } else if tick.is_multiple_of(5) || done {
            // A server that cannot be read: a line of its own before the figures' line,
            // whose format stays.
            for e in &view.unreadable {
                say(&format!("! {e}\n"));
            }
            say(&format!("{}\n", screen::line(&view)));
        }
        if done {
            break;
        }
    }
    if live {
        say("\x1b[?25h");
    }
    let elapsed = started.elapsed();
    let (stats, mut all) = players.stop();
    say("\nstopping: players stopped; draining the streams into ClickHouse ...\n");
    let drained = drain(control);
    stack.shutdown();
    // Each server read on its own: what one holds is told when the other is down.
    let mut stored = Stored::default();
    let unread: Vec<String> =
        [figures::tables(ch_addr, &mut stored).err(), figures::sketches(redis_addr, &mut stored).err()]
            .into_iter()
            .flatten()
            .collect();
    let totals = RunTotals {
        events: stats.accepted_events,
        payments: stats.accepted_payments,
        refused: stats.refused,
        ack_ms: load::percentiles(&mut all),
        elapsed,
    };
    // This run's figures are told even when a server is down (they need neither).
    let shown = dir.display().to_string();
    let tables_read = !unread.iter().any(|e| e.starts_with("ClickHouse"));
    if unread.is_empty() {
        say(&screen::summary(&totals, &stored, &shown));
    } else {
        say(&screen::unread_summary(&totals, &shown, &unread.join("; "), tables_read.then_some(&stored)));
    }
    if let Err(e) = &drained {
        say(&format!("warning: {e}\n"));
    }
    clickhouse.stop();
    redis.stop();
    say("servers stopped; run again to continue on the same data (--fresh to start over)\n");
    drained?;
    if unread.is_empty() {
        Ok(())
    } else {
        Err("what the servers hold could not be read (the summary says why)".into())
    }
}

/// The terminal's size (standard output's), rows and columns: 50 rows and no limit on
/// columns when it cannot be read. Read at every frame: a resized terminal is drawn to
/// its new width.
fn terminal_size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills the `winsize` it is given, on standard output.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    let rows = if read && ws.ws_row > 0 { usize::from(ws.ws_row) } else { 50 };
    let columns = if read && ws.ws_col > 0 { usize::from(ws.ws_col) } else { usize::MAX };
    (rows, columns)
}

/// Waits until every accepted record is in ClickHouse and the streams hold no backlog;
/// gives up after [`DRAIN`], or [`STALLED`] without progress (a server down).
fn drain(control: SocketAddr) -> Result<Metrics, String> {
    let started = Instant::now();
    let mut m = Metrics::default();
    let mut progress = (Instant::now(), None);
    while started.elapsed() < DRAIN && progress.0.elapsed() < STALLED {
        m = figures::metrics(control)?;
        if m.backlog == 0 && m.inserted >= m.accepted {
            return Ok(m);
        }
        if progress.1 != Some((m.inserted, m.backlog)) {
            progress = (Instant::now(), Some((m.inserted, m.backlog)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "not drained after {:?}: {} accepted, {} inserted, backlog {}",
        started.elapsed(),
        m.accepted,
        m.inserted,
        m.backlog
    ))
}
