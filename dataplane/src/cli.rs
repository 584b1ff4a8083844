//! The command line of the `croupier` binary.

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

/// Runs the command line given in the process arguments.
pub fn main() -> ExitCode {
    let code = run();
    // Whatever is queued for the log is written before the process ends.
    croupier_control::logging::flush();
    code
}

fn run() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if command == "demo" {
        return crate::demo::main(args);
    }
    if matches!(command.as_str(), "--version" | "-V" | "version") {
        println!("croupier {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // The usage alone: no configuration is read (nor warned about).
    if matches!(command.as_str(), "--help" | "-h" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut config_path: Option<PathBuf> = std::env::var_os(ENV_CONFIG_PATH).map(PathBuf::from);
    let mut drop_view = false;
    // The role `check` checks for: every role (`run`) unless told.
    let mut role = command.clone();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--drop-user-days-view" if command == "migrate" => drop_view = true,
            "--for" if command == "check" => match args.next() {
                Some(r) if matches!(r.as_str(), "ingest" | "worker" | "run") => role = r,
                _ => {
                    eprintln!("croupier: --for needs one of ingest, worker, run\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--config" | "-c" => match args.next() {
                Some(p) => config_path = Some(PathBuf::from(p)),
                None => {
                    eprintln!("croupier: --config needs a file\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("croupier: unknown argument {other}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("croupier: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = croupier_control::logging::init(&config.log) {
        eprintln!("croupier: log: {e}");
        return ExitCode::from(2);
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    if config_path.is_none() && command != "migrate" {
        tracing::warn!(
            "no configuration file (--config FILE or CROUPIER_CONFIG): the built-in defaults and CROUPIER_* \
             variables only, {} game(s)",
            config.games.len()
        );
    }
    // What a serving process would refuse at start, refused before it binds anything
    // (and by `check`, which checks for every role).
    if matches!(command.as_str(), "check" | "ingest" | "run" | "worker") {
        if let Err(e) = startable(&config, role != "worker") {
            eprintln!("croupier: {e}");
            return ExitCode::from(2);
        }
    }
    match command.as_str() {
        "check" => {
            println!("configuration ok: {} shard(s), {} game(s)", config.shard_count(), config.games.len());
            ExitCode::SUCCESS
        }
        "ingest" | "run" => serve(config, true, command == "run"),
        "worker" => serve(config, false, true),
        "migrate" => migrate(&config, drop_view),
        other => {
            eprintln!("croupier: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
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
        Some(true) => println!(
            "{node}analytics.user_days_mv dropped; user_days copied again from the events of the last {} s",
            crate::clickhouse::schema::USER_DAYS_CATCH_UP_SECONDS
        ),
        Some(false) => println!("{node}no analytics.user_days_mv to drop"),
        None if kept => println!(
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
            eprintln!("croupier: {e}");
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
            return Ok::<_, ChError>((conn.server().clone(), fsync));
        };
        // Every node, one after the other: each gets its local and Distributed tables.
        let mut last = None;
        for (shard, node) in nodes {
            let node_opts = crate::clickhouse::connection::ChOptions { addr: node.clone(), ..opts.clone() };
            // Names the node (a refused statement does not), then the error as it is.
            let on = |e: ChError| {
                eprintln!("croupier: migrate: on {node}:");
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
            println!("{node}: cluster {cluster} schema up to date");
            last = Some((conn.server().clone(), fsync));
        }
        last.ok_or_else(|| ChError::Io("clickhouse.shards lists no server".into()))
    });
    match res {
        Ok(Ok((server, fsync))) => {
            println!(
                "schema up to date on ClickHouse {}.{}.{} (revision {})",
                server.major, server.minor, server.patch, server.revision
            );
            match fsync {
                Some(true) => println!("events and payments fsync each inserted part (fsync_after_insert)"),
                Some(false) => println!(
                    "this server has no fsync_after_insert: an insert is confirmed before its part is on disk \
                     (README, Durability)"
                ),
                None => {}
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("croupier: migrate: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("croupier: migrate: runtime: {e}");
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
