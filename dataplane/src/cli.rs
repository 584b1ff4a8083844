//! The command line of the `croupier` binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use croupier_control::config::{Config, ENV_CONFIG_PATH};

const USAGE: &str = "\
usage: croupier <command> [--config FILE]

commands:
  ingest    run the HTTP ingest data plane (events into Redis Streams)
  worker    consume the streams into ClickHouse
  run       ingest and worker in one process
  migrate   create or upgrade the ClickHouse schema, then exit; with
            --drop-user-days-view, also drop the view earlier versions filled
            analytics.user_days with (once every worker runs this version: docs/deploy.md)
  check     load and check the configuration (with what ingest and run check at start:
            the listeners' ports apart, api.jwks_file readable), then exit; with
            --for worker|ingest|run, as that command checks it (a worker binds no
            ingest listener)
  version   print the version (also --version)
  demo      the whole pipeline on local redis-server and clickhouse-server, driven by
            simulated players, with a live screen (croupier demo --help)

The config file may also be named by CROUPIER_CONFIG; every key can be overridden by a
CROUPIER_<SECTION>__<KEY> environment variable (see README).";

/// One command's usage, for `croupier <command> --help`.
fn usage_of(command: &str) -> &'static str {
    match command {
        "ingest" => {
            "\
usage: croupier ingest [--config FILE]

Runs the ingest shards: the data port (server.listen: signed and client ingest), the OTLP
receivers (otlp.listen, otlp.grpc_listen) and the control port (control.listen: /metrics,
/healthz, /readyz, the Analytics API, the dashboard). SIGTERM, SIGINT and SIGHUP drain and
stop it (exit 0). Exit 2: the configuration is refused (the key is named); 1: it could not
start (a port taken, a runtime that failed)."
        }
        "worker" => {
            "\
usage: croupier worker [--config FILE]

Consumes the streams into ClickHouse (worker.shards threads, acknowledging each entry once
its rows are inserted) and merges the real-time sketches into Redis; the control port as
for ingest. Signals and exit codes as for ingest."
        }
        "run" => {
            "\
usage: croupier run [--config FILE]

Ingest and worker in one process (croupier ingest --help, croupier worker --help)."
        }
        "migrate" => {
            "\
usage: croupier migrate [--config FILE] [--drop-user-days-view]

Creates or upgrades the ClickHouse schema (every node of clickhouse.shards on a cluster),
then exits: 0 done, 1 ClickHouse refused or did not answer, 2 bad configuration. Tables
are created if missing and upgraded from earlier versions. A column of a table the worker
writes that was changed by hand is not changed back (a change of type may lose values):
each is printed with the ALTER TABLE that restores it, and the worker's inserts into its
table wait until it is run (exit 0 still: ingest goes on).
  --drop-user-days-view  also drop the view earlier versions filled analytics.user_days
                         with, once every worker runs this version (docs/deploy.md)"
        }
        "check" => {
            "\
usage: croupier check [--config FILE] [--for ingest|worker|run]

Loads and checks the configuration as the command named by --for (default run) checks it
at start, without binding or connecting: exit 0 and a summary line, or exit 2 and the
key refused."
        }
        _ => USAGE,
    }
}

/// Writes a line to standard output, never panicking. A reader gone (`croupier --help |
/// head -1`) drops the line; a write that fails otherwise (`> /dev/full`: the ALTER
/// statements `migrate` prints would be lost unseen) is said on standard error and makes a
/// command that succeeded exit 1 ([`main`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::line(&mut std::io::stdout(), format_args!($($arg)*), true)
    };
}

/// Writes a line to standard error (dropped if it cannot be written: there is nowhere
/// else to say so).
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::cli::line(&mut std::io::stderr(), format_args!($($arg)*), false)
    };
}
pub(crate) use {say, tell};

/// Whether a line meant for standard output could not be written (but for a reader gone).
static OUTPUT_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `args` and a newline to `to`; `output`: `to` is standard output, whose failures
/// are noted ([`OUTPUT_LOST`]) and said once on standard error.
pub(crate) fn line(to: &mut impl std::io::Write, args: std::fmt::Arguments<'_>, output: bool) {
    let written = to.write_fmt(args).and_then(|()| to.write_all(b"\n")).and_then(|()| to.flush());
    if let Err(e) = written {
        if output && e.kind() != std::io::ErrorKind::BrokenPipe {
            use std::sync::atomic::Ordering;
            if !OUTPUT_LOST.swap(true, Ordering::Relaxed) {
                let _ = writeln!(std::io::stderr(), "croupier: cannot write standard output: {e}");
            }
        }
    }
}

/// Runs the command line given in the process arguments.
pub fn main() -> ExitCode {
    let code = run();
    // Whatever is queued for the log is written before the process ends.
    croupier_control::logging::flush();
    if code == ExitCode::SUCCESS && OUTPUT_LOST.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(1);
    }
    code
}

fn run() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        tell!("{USAGE}");
        return ExitCode::from(2);
    };
    if command == "demo" {
        return crate::demo::main(args);
    }
    if matches!(command.as_str(), "--version" | "-V" | "version") {
        say!("croupier {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // The usage alone: no configuration is read (nor warned about).
    if matches!(command.as_str(), "--help" | "-h" | "help") {
        say!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    // An unknown command is said before any configuration is read (nor warned about).
    let Some(cmd) = Command::parse(&command) else {
        tell!("croupier: unknown command {command}\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut config_path: Option<PathBuf> = std::env::var_os(ENV_CONFIG_PATH).map(PathBuf::from);
    let mut drop_view = false;
    // The role `check` checks for: every role (`run`) unless told.
    let mut role = cmd;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--drop-user-days-view" if cmd == Command::Migrate => drop_view = true,
            "--for" if cmd == Command::Check => match args.next().as_deref().and_then(Command::parse) {
                Some(r @ (Command::Ingest | Command::Worker | Command::Run)) => role = r,
                _ => {
                    tell!("croupier: --for needs one of ingest, worker, run\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--config" | "-c" => match args.next() {
                Some(p) => config_path = Some(PathBuf::from(p)),
                None => {
                    tell!("croupier: --config needs a file\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                say!("{}", usage_of(&command));
                return ExitCode::SUCCESS;
            }
            other => {
                tell!("croupier: unknown argument {other}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            tell!("croupier: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = croupier_control::logging::init(&config.log) {
        tell!("croupier: log: {e}");
        return ExitCode::from(2);
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    if config_path.is_none() && cmd != Command::Migrate {
        tracing::warn!(
            "no configuration file (--config FILE or CROUPIER_CONFIG): the built-in defaults and CROUPIER_* \
             variables only, {} game(s)",
            config.games.len()
        );
    }
    // What a serving process would refuse at start, refused before it binds anything
    // (and by `check`, which checks for every role).
    if cmd != Command::Migrate {
        if let Err(e) = startable(&config, role != Command::Worker) {
            tell!("croupier: {e}");
            return ExitCode::from(2);
        }
    }
    match cmd {
        Command::Check => {
            say!("configuration ok: {} shard(s), {} game(s)", config.shard_count(), config.games.len());
            ExitCode::SUCCESS
        }
        Command::Ingest => serve(config, true, false),
        Command::Run => serve(config, true, true),
        Command::Worker => serve(config, false, true),
        Command::Migrate => migrate(&config, drop_view),
    }
}

/// A command that reads the configuration (`demo`, `version` and `help` do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Ingest,
    Worker,
    Run,
    Migrate,
    Check,
}

impl Command {
    fn parse(name: &str) -> Option<Command> {
        match name {
            "ingest" => Some(Command::Ingest),
            "worker" => Some(Command::Worker),
            "run" => Some(Command::Run),
            "migrate" => Some(Command::Migrate),
            "check" => Some(Command::Check),
            _ => None,
        }
    }
}

/// Checks made from files and the listeners, past what loading the configuration checks:
/// the listeners' ports apart (`ingest`, `run`), and the Analytics API's keys readable
/// (`api.jwks_file`), which a process with a control port or client ingest needs.
fn startable(config: &Config, ingest: bool) -> Result<(), String> {
    if ingest {
        config.listeners_apart().map_err(|e| e.to_string())?;
    }
    if ingest || !config.control.listen.is_empty() {
        crate::analytics::auth::Verifier::from_config(&config.api)?;
    }
    Ok(())
}

/// What `croupier migrate` did about `user_days_mv` on one server.
fn report_view(node: &str, dropped: Option<bool>, kept: bool) {
    match dropped {
        Some(true) => say!(
            "{node}analytics.user_days_mv dropped; user_days copied again from the events of the last {} s",
            crate::clickhouse::schema::USER_DAYS_CATCH_UP_SECONDS
        ),
        Some(false) => say!("{node}no analytics.user_days_mv to drop"),
        None if kept => say!(
            "{node}analytics.user_days_mv kept: workers of earlier versions need it; once every worker runs this \
             version, run `croupier migrate --drop-user-days-view` (docs/deploy.md)"
        ),
        None => {}
    }
}

fn migrate(config: &Config, drop_view: bool) -> ExitCode {
    let opts = crate::worker::clickhouse_options(config);
    let fsync = config.clickhouse.fsync_after_insert;
    let driver = match crate::runtime::resolve(config.server.driver) {
        Ok(d) => d,
        Err(e) => {
            tell!("croupier: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cluster = config.clickhouse.is_cluster().then(|| config.clickhouse.cluster.clone());
    let shards = config.clickhouse.shards.len();
    // Each node with the index of its shard in `clickhouse.shards`.
    let nodes: Vec<(usize, String)> =
        config.clickhouse.shards.iter().enumerate().flat_map(|(s, r)| r.iter().map(move |n| (s, n.clone()))).collect();
    let res = crate::runtime::block_on(driver, async move {
        use crate::clickhouse::connection::{ChError, Connection};
        use crate::clickhouse::schema;
        let Some(cluster) = cluster else {
            let mut conn = Connection::connect(&opts).await?;
            schema::migrate(&mut conn).await?;
            if drop_view {
                let dropped = schema::drop_user_days_view(&mut conn, &[], "").await?;
                report_view("", Some(dropped), false);
            } else {
                report_view("", None, schema::has_user_days_view(&mut conn).await?);
            }
            let fsync = if fsync { Some(schema::fsync_after_insert(&mut conn, false).await?) } else { None };
            let drift = schema::drift(&mut conn, "").await?;
            return Ok::<_, ChError>((conn.server().clone(), fsync, drift));
        };
        // Every node, one after the other: each gets its local and Distributed tables.
        let mut last = None;
        let mut drift = Vec::new();
        for (shard, node) in nodes {
            let node_opts = crate::clickhouse::connection::ChOptions { addr: node.clone(), ..opts.clone() };
            // Names the node (a refused statement does not), then the error as it is.
            let on = |e: ChError| {
                tell!("croupier: migrate: on {node}:");
                e
            };
            let mut conn = Connection::connect(&node_opts).await.map_err(on)?;
            crate::clickhouse::cluster::check_node(&mut conn, &node, shard, shards, &cluster).await.map_err(on)?;
            schema::migrate_cluster_node(&mut conn, &cluster).await.map_err(on)?;
            let at = format!("{node}: ");
            if drop_view {
                let dropped = schema::drop_user_days_view(&mut conn, &[], "_local").await.map_err(on)?;
                report_view(&at, Some(dropped), false);
            } else {
                report_view(&at, None, schema::has_user_days_view(&mut conn).await.map_err(on)?);
            }
            let fsync = if fsync { Some(schema::fsync_after_insert(&mut conn, true).await.map_err(on)?) } else { None };
            let differ = schema::drift(&mut conn, "_local").await.map_err(on)?;
            if differ.is_empty() {
                say!("{node}: cluster {cluster} schema up to date");
            }
            drift.extend(differ.into_iter().map(|d| format!("on {node}: {d}")));
            last = Some((conn.server().clone(), fsync));
        }
        let (server, fsync) = last.ok_or_else(|| ChError::Io("clickhouse.shards lists no server".into()))?;
        Ok((server, fsync, drift))
    });
    match res {
        Ok(Ok((server, fsync, drift))) => {
            let version =
                format!("ClickHouse {}.{}.{} (revision {})", server.major, server.minor, server.patch, server.revision);
            if drift.is_empty() {
                say!("schema up to date on {version}");
            } else {
                // Said, not failed: what waits on these tables is the worker's inserts
                // into them (their entries kept in Redis); ingest, which starts after
                // migrate (docker-compose.yml), goes on accepting.
                for d in &drift {
                    tell!("croupier: migrate: {d}");
                }
                say!(
                    "schema migrated on {version}, but {} column(s) differ from what croupier writes (above; changed \
                     by hand?): migrate does not change them back (a change of type may lose values), and the \
                     worker's inserts into those tables wait until the statements above are run",
                    drift.len()
                );
            }
            match fsync {
                Some(true) => say!("events and payments fsync each inserted part (fsync_after_insert)"),
                Some(false) => say!(
                    "this server has no fsync_after_insert: an insert is confirmed before its part is on disk \
                     (README, Durability)"
                ),
                None => {}
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            tell!("croupier: migrate: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tell!("croupier: migrate: runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, ingest: bool, worker: bool) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // SIGHUP drains too (its default would end the process at once, without the drain;
    // the configuration is read at start only, there is no reload to ask for), unless it
    // was ignored at start (`nohup`): such a process outlives its terminal.
    let hup = (!crate::signals::ignored(SIGHUP)).then_some(SIGHUP);
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM].into_iter().chain(hup)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let stack = match crate::stack::Stack::start(config, ingest, worker) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match signals.forever().next() {
        Some(SIGHUP) => tracing::warn!(
            signal = SIGHUP,
            "SIGHUP: the configuration is read at start only, there is no reload; draining and stopping (start again to apply a change)"
        ),
        Some(sig) => tracing::info!(signal = sig, "draining and stopping"),
        None => {}
    }
    stack.shutdown();
    ExitCode::SUCCESS
}
