//! The command line of `croupier demo`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// What `croupier demo --help` prints.
pub const USAGE: &str = "\
usage: croupier demo [--dir DIR] [--fresh] [--duration SECS] [--rate EVENTS_PER_SEC]
                     [--players N] [--day SECS] [--plain]

Starts redis-server and clickhouse-server (found on the PATH) with their data in DIR,
creates the schema, runs the data plane (ingest, worker, control port) in this process,
and drives it with simulated players, showing a live screen every second. Ctrl-C stops
everything cleanly; the data stays in DIR for the next run.

  --dir DIR         where the servers keep their data and logs (default: croupier-demo)
  --fresh           delete DIR's data first
  --duration SECS   stop after this long (default, or 0: run until Ctrl-C)
  --rate N          events per second sent (default: 1000)
  --players N       simulated players (default: 5000)
  --day SECS        length of the compressed day over which players join (default: 600)
  --plain           no live screen: a progress line every 5 s and a final summary (the
                    default when standard output is not a terminal)";

/// The demo's options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the servers keep data and logs.
    pub dir: PathBuf,
    /// Delete the directory's data first.
    pub fresh: bool,
    /// Stop after this long; `None` runs until a signal.
    pub duration: Option<Duration>,
    /// Events per second.
    pub rate: u32,
    /// Simulated players.
    pub players: usize,
    /// Length of the compressed day.
    pub day: Duration,
    /// Plain output: no live screen.
    pub plain: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these options.
    Run(Options),
    /// Print the usage.
    Help,
}

/// Parses the arguments after `demo`.
pub fn parse(args: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut o = Options {
        dir: PathBuf::from("croupier-demo"),
        fresh: false,
        duration: None,
        rate: 1000,
        players: 5000,
        day: Duration::from_secs(600),
        plain: !std::io::stdout().is_terminal(),
    };
    let mut args = args;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--dir" => o.dir = PathBuf::from(value("--dir")?),
            "--fresh" => o.fresh = true,
            "--plain" => o.plain = true,
            "--duration" => {
                let secs = number("--duration", &value("--duration")?)?;
                o.duration = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--rate" => {
                o.rate = u32::try_from(number("--rate", &value("--rate")?)?)
                    .ok()
                    .filter(|r| *r > 0)
                    .ok_or("--rate must be from 1 to 4294967295")?;
            }
            "--players" => {
                o.players = usize::try_from(number("--players", &value("--players")?)?)
                    .ok()
                    .filter(|n| (1..=10_000_000).contains(n))
                    .ok_or("--players must be from 1 to 10000000")?;
            }
            "--day" => {
                let secs = number("--day", &value("--day")?)?;
                if secs == 0 {
                    return Err("--day must be at least 1".into());
                }
                o.day = Duration::from_secs(secs);
            }
            "--help" | "-h" => return Ok(Parsed::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Parsed::Run(o))
}

fn number(name: &str, v: &str) -> Result<u64, String> {
    v.parse().map_err(|_| format!("{name}: {v:?} is not a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(String::from)
    }

    #[test]
    fn parses_every_option() {
        let Ok(Parsed::Run(o)) =
            parse(args("--dir /tmp/d --fresh --duration 20 --rate 300 --players 40 --day 60 --plain"))
        else {
            panic!("parses")
        };
        assert_eq!(o.dir, PathBuf::from("/tmp/d"));
        assert!(o.fresh && o.plain);
        assert_eq!(o.duration, Some(Duration::from_secs(20)));
        assert_eq!((o.rate, o.players, o.day), (300, 40, Duration::from_secs(60)));
    }

    #[test]
    fn refuses_bad_values() {
        assert!(parse(args("--rate 0")).is_err());
        assert!(parse(args("--rate x")).is_err());
        assert!(parse(args("--duration")).is_err());
        assert!(parse(args("--bogus")).is_err());
        assert!(matches!(parse(args("--help")), Ok(Parsed::Help)));
    }
}
