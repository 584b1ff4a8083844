//! The README's clients, run as a user would run them against a running croupier: the
//! curl example (signature computed with openssl), the Python and the JavaScript ones. Each
//! sends two events; the streams must hold exactly those six.

use std::path::Path;
use std::process::Command;

use croupier_control::config::{Driver, Game};

use crate::fixture::Fixture;

fn run(program: &str, script: &str, url: &str, secret: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(program)
        .arg(root.join("examples").join(script))
        .env("CROUPIER_URL", url)
        .env("CROUPIER_SECRET", secret)
        .output()
        .unwrap_or_else(|e| panic!("{program} {script}: {e}"));
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn events_in_streams(f: &Fixture) -> u64 {
    let mut n = 0;
    for stream in ["analytics:events", "analytics:custom"] {
        for e in croupier_it::redis::xrange(&mut f.redis.client(), stream) {
            n += std::str::from_utf8(e.get("n").unwrap()).unwrap().parse::<u64>().unwrap();
        }
    }
    n
}

#[test]
fn readme_clients_are_accepted() {
    let f = Fixture::start(Driver::Auto, |c| {
        c.games.insert("demo-game".into(), Game { secret: Some("change-me".into()), ..Game::default() });
    });
    let url = format!("http://{}", f.addr);
    let curl = run("sh", "curl.sh", &url, "change-me");
    assert!(curl.contains(r#"{"accepted":2}"#) && curl.ends_with("202"), "curl: {curl}");
    assert_eq!(run("python3", "client.py", &url, "change-me"), r#"202 {"accepted":2}"#);
    assert_eq!(run("node", "client.js", &url, "change-me"), r#"202 {"accepted":2}"#);
    assert_eq!(events_in_streams(&f), 6);
    // A wrong secret is refused, and said so.
    let refused = run("python3", "client.py", &url, "wrong");
    assert!(refused.starts_with(r#"401 {"error":"bad_signature""#), "{refused}");
    assert_eq!(events_in_streams(&f), 6);
}

#[test]
fn readme_shows_the_clients_as_they_are() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for f in ["curl.sh", "client.py", "client.js"] {
        let text = std::fs::read_to_string(root.join("examples").join(f)).unwrap();
        assert!(readme.contains(&text), "README's copy of examples/{f} differs from the file");
    }
}
