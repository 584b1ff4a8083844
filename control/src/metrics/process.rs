//! The process's own metrics: `croupier_build_info` and the standard `process_*` set
//! that Prometheus client libraries export (CPU, memory, file descriptors, start time),
//! read from `/proc/self` at scrape time.

use super::encode::{Encoder, Kind};

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes `croupier_build_info{version,io_driver} 1`.
pub fn encode_build_info(enc: &mut Encoder, io_driver: &str) {
    enc.family(
        "croupier_build_info",
        Kind::Gauge,
        "Always 1; the labels say which build runs and on which io driver (io_uring or epoll).",
    );
    enc.sample("croupier_build_info", &[("version", VERSION), ("io_driver", io_driver)], 1);
}

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: u64,
    max_fds: Option<u64>,
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a system constant; it has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Fields of `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses, hence the last `)`), numbered from field 3 (`state`) as index 0.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

fn parse(stat: &str, boot_time: u64, ticks: u64, page: u64) -> Option<(f64, u64, u64, f64)> {
    let f = stat_fields(stat)?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu = (num(11)?.saturating_add(num(12)?)) as f64 / ticks as f64;
    let start = boot_time as f64 + num(19)? as f64 / ticks as f64;
    Some((cpu, num(21)?.saturating_mul(page), num(20)?, start))
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn usage() -> Option<Usage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let (cpu_seconds, resident_bytes, virtual_bytes, start_time_seconds) =
        parse(&stat, boot, sysconf(libc::_SC_CLK_TCK)?, sysconf(libc::_SC_PAGESIZE)?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files);
    Some(Usage { cpu_seconds, resident_bytes, virtual_bytes, start_time_seconds, open_fds, max_fds })
}

/// Writes the `process_*` families (nothing where `/proc` cannot be read).
pub fn encode_process(enc: &mut Encoder) {
    let Some(u) = usage() else { return };
    enc.family("process_cpu_seconds_total", Kind::Counter, "Total user and system CPU time spent in seconds.");
    enc.sample_f64("process_cpu_seconds_total", &[], u.cpu_seconds);
    enc.family("process_resident_memory_bytes", Kind::Gauge, "Resident memory size in bytes.");
    enc.sample("process_resident_memory_bytes", &[], u.resident_bytes);
    enc.family("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size in bytes.");
    enc.sample("process_virtual_memory_bytes", &[], u.virtual_bytes);
    enc.family("process_start_time_seconds", Kind::Gauge, "Start time of the process since unix epoch in seconds.");
    enc.sample_f64("process_start_time_seconds", &[], u.start_time_seconds);
    enc.family("process_open_fds", Kind::Gauge, "Number of open file descriptors.");
    enc.sample("process_open_fds", &[], u.open_fds);
    if let Some(m) = u.max_fds {
        enc.family("process_max_fds", Kind::Gauge, "Maximum number of open file descriptors.");
        enc.sample("process_max_fds", &[], m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stat_with_a_strange_command_name() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1000 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        let (cpu, rss, vsize, start) = parse(stat, 1_700_000_000, 100, 4096).unwrap();
        assert_eq!((cpu, rss, vsize, start), (3.0, 2560 * 4096, 104_857_600, 1_700_000_010.0));
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_is_read() {
        let u = usage().unwrap();
        assert!(u.resident_bytes > 0 && u.open_fds > 0 && u.start_time_seconds > 1.6e9, "{u:?}");
    }
}
