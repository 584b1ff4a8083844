//! The `croupier` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use croupier_control::config::{Config, ENV_CONFIG_PATH};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: croupier <command> [--config FILE]

commands:
  ingest    run the HTTP ingest data plane (events into Redis Streams)
  check     load and check the configuration, then exit

The config file may also be named by CROUPIER_CONFIG; every key can be overridden by a
CROUPIER_<SECTION>__<KEY> environment variable (see README).";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut config_path: Option<PathBuf> = std::env::var_os(ENV_CONFIG_PATH).map(PathBuf::from);
    while let Some(a) = args.next() {
        match a.as_str() {
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
    match command.as_str() {
        "check" => {
            println!("configuration ok: {} shard(s), {} game(s)", config.shard_count(), config.games.len());
            ExitCode::SUCCESS
        }
        "ingest" => run_ingest(config),
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("croupier: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run_ingest(config: Config) -> ExitCode {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("croupier: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shards = config.shard_count();
    let handle = match croupier_dataplane::start(config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("croupier: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "croupier: ingest listening on {} with {shards} shard(s), io driver {}",
        handle.local_addr(),
        handle.driver().name()
    );
    if let Some(sig) = signals.forever().next() {
        eprintln!("croupier: signal {sig}: draining and stopping");
    }
    handle.shutdown();
    ExitCode::SUCCESS
}
