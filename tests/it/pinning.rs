//! Shards pinned inside a cpuset: in a Guaranteed Kubernetes pod under the static CPU
//! manager policy (deploy/k8s/), or `docker run --cpuset-cpus`, the process may run only on
//! the CPUs it was given, and `server.cores` unset means those CPUs in order.

use std::time::Duration;

use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::redis::RedisServer;

use crate::fixture::{GAME, SECRET};
use crate::pipeline::CROUPIER;

/// Pinning in a cpuset (a Guaranteed pod under the static CPU manager, `docker run
/// --cpuset-cpus`): a process allowed only CPU 1 pins its shard to CPU 1 (the first CPU it
/// may run on), not to CPU 0, which it may not use.
#[test]
fn pinning_takes_the_cpus_of_the_process_cpuset() {
    let ncpu = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    assert!(ncpu >= 2, "needs two CPUs");
    let redis = RedisServer::start();
    let clickhouse = ClickHouseServer::start();
    let mut env = crate::pipeline::env(&redis, &clickhouse);
    env.push((format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET.to_owned()));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("croupier.log");
    let data = croupier_it::free_port();
    let mut child = std::process::Command::new(croupier_it::require_binary("taskset", "util-linux"))
        .args(["-c", "1", CROUPIER, "ingest"])
        .envs(env.iter().cloned())
        .env("CROUPIER_SERVER__SHARDS", "1")
        .env("CROUPIER_SERVER__PIN", "true")
        .env("CROUPIER_SERVER__LISTEN", format!("127.0.0.1:{data}"))
        .env("CROUPIER_OTLP__LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    croupier_it::wait_until_ready(&mut child, "croupier", &log, Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ingest listening"))
    });
    // The shard thread's affinity, from /proc.
    let pid = child.id();
    let mut shard_cpus = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with("croupier-shard") {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            shard_cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_owned());
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!text.contains("could not pin"), "{text}");
    assert_eq!(shard_cpus.as_deref(), Some("1"), "{text}");
}
