//! The `croupier` binary's configuration from the environment, as an operator meets it.

use crate::pipeline::croupier;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn env_croupier_url_set_for_a_client_does_not_stop_the_server() {
    let (ok, out) =
        croupier(&["check"], &env(&[("CROUPIER_URL", "http://127.0.0.1:8080"), ("CROUPIER_SERVER__SHARDS", "2")]));
    assert!(ok, "croupier check with CROUPIER_URL set: {out}");
    assert!(out.contains("configuration ok: 2 shard(s)"), "{out}");
}

#[test]
fn env_a_bad_override_names_the_variable() {
    let (ok, out) = croupier(&["check"], &env(&[("CROUPIER_SERVER__SHARDS", "two")]));
    assert!(!ok, "a bad value must stop the process: {out}");
    assert!(out.contains("CROUPIER_SERVER__SHARDS") && out.contains("server.shards"), "{out}");
}

/// What `ingest` and `run` refuse at start, `check` refuses too (with the exit code of a
/// configuration error, 2, not a crashed thread's 70 after every listener was bound).
#[test]
fn check_refuses_what_a_start_would_refuse() {
    let out = |vars: &[(&str, &str)], cmd: &str| {
        let o = std::process::Command::new(crate::pipeline::CROUPIER)
            .args(cmd.split(' '))
            .env_clear()
            .envs(env(vars))
            .output()
            .expect("run croupier");
        (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (code, text) =
        out(&[("CROUPIER_SERVER__LISTEN", "127.0.0.1:9100"), ("CROUPIER_CONTROL__LISTEN", "127.0.0.1:9100")], "check");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("control.listen") && text.contains("CROUPIER_CONTROL__LISTEN"), "{text}");
    // A worker binds no ingest listener: checked as a worker, the same file is fine.
    let (code, text) = out(
        &[("CROUPIER_SERVER__LISTEN", "127.0.0.1:9100"), ("CROUPIER_CONTROL__LISTEN", "127.0.0.1:9100")],
        "check --for worker",
    );
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = out(&[], "check --for everything");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--for needs one of ingest, worker, run"), "{text}");
    for cmd in ["check", "ingest", "worker"] {
        let (code, text) = out(&[("CROUPIER_API__JWKS_FILE", "/nonexistent/jwks.json")], cmd);
        assert_eq!(code, Some(2), "{cmd}: {text}");
        assert!(text.contains("api.jwks_file"), "{cmd}: {text}");
    }
    // A device named by mistake is refused, not read for ever.
    let (code, text) = out(&[("CROUPIER_API__JWKS_FILE", "/dev/zero")], "check");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("not a regular file"), "{text}");
    let (code, text) = out(&[("CROUPIER_WORKER__CLAIM_INTERVAL_MS", "0")], "check");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("worker.claim_interval_ms"), "{text}");
    // Without a file: said, not silent.
    let (code, text) = out(&[], "check");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no configuration file"), "{text}");
    let (code, text) = out(&[], "--version");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("croupier "), "{text}");
}

/// `croupier --help` prints the usage and nothing else: no configuration is read, so no
/// warning about a missing one follows the usage (a black-box finding).
#[test]
fn help_prints_the_usage_alone() {
    for flag in ["--help", "-h", "help"] {
        let o = std::process::Command::new(crate::pipeline::CROUPIER)
            .arg(flag)
            .env_remove("CROUPIER_CONFIG")
            .output()
            .expect("run croupier");
        assert!(o.status.success(), "{flag}");
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("usage: croupier <command>"), "{flag}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "", "{flag}");
    }
}

/// Each command's `--help` is its own usage; output that cannot be written (a reader gone,
/// a full disk) is dropped, not a crash: the exit code stays the command's.
#[test]
fn command_help_and_output_nobody_reads() {
    let run = |args: &[&str], vars: &[(&str, &str)], stdout: std::process::Stdio, stderr: std::process::Stdio| {
        let o = std::process::Command::new(crate::pipeline::CROUPIER)
            .args(args)
            .env_clear()
            .envs(env(vars))
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .expect("run croupier");
        (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let piped = std::process::Stdio::piped;
    for (cmd, says) in [
        ("ingest", "--config FILE"),
        ("worker", "worker.shards"),
        ("run", "croupier ingest --help"),
        ("migrate", "--drop-user-days-view"),
        ("check", "--for ingest|worker|run"),
    ] {
        let (code, text) = run(&[cmd, "--help"], &[], piped(), piped());
        assert_eq!(code, Some(0), "{cmd}: {text}");
        assert!(text.starts_with(&format!("usage: croupier {cmd} ")) && text.contains(says), "{cmd}: {text}");
    }
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full").into();
    // Output that cannot be written (a full disk) is said, and a command that succeeded
    // exits 1: what it printed is lost (`migrate`'s ALTER statements would be).
    let (code, text) = run(&["version"], &[], full(), piped());
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(text, "croupier: cannot write standard output: No space left on device (os error 28)\n", "no panic");
    let (code, text) = run(&["check"], &[("CROUPIER_WORKER__SHARDS", "0")], piped(), full());
    assert_eq!((code, text.as_str()), (Some(2), ""), "a refused configuration is exit 2, written or not");
    // A reader that went away: standard output a pipe whose reading end is closed.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let (code, _) = run(&["--help"], &[], writer.into(), piped());
    assert_eq!(code, Some(0));
    // An unknown command: the usage, and no word about the configuration.
    let (code, text) = run(&["bogus"], &[], piped(), piped());
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.starts_with("croupier: unknown command bogus\nusage:") && !text.contains("no configuration file"),
        "{text}"
    );
    // A data port taken is named by its key, as the control port's is.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let vars =
        [("CROUPIER_SERVER__LISTEN", addr.as_str()), ("CROUPIER_CONTROL__LISTEN", ""), ("CROUPIER_OTLP__LISTEN", "")];
    let (code, text) =
        run(&["ingest"], &[vars[0], vars[1], vars[2], ("CROUPIER_OTLP__GRPC_LISTEN", "")], piped(), piped());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("server.listen: cannot listen on {addr}")), "{text}");
}
