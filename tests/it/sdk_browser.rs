//! The JavaScript SDK (sdk/js, built by scripts/setup.sh) in Debian's headless Chromium
//! against the running stack: `sdk/js/e2e/run.mjs` drives a page that loads the
//! script-tag bundle from its own origin (in the game's `allowed_origins`, so every fetch
//! is a CORS request with a preflight) and sends to the data port; the rows are then read
//! from ClickHouse. Also runs the SDK's unit tests (`node --test`) and its bundle-size
//! check (`build.mjs`, at most 6 KB gzipped).

use std::path::PathBuf;
use std::process::Command;

use croupier_it::free_port;

use crate::fixture::GAME;
use crate::pipeline::Pipeline;

const KEY: &str = "pk_browser_test_key_0001";

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk/js")
}

fn node(args: &[&str]) -> std::process::Output {
    let out = Command::new("node").args(args).current_dir(sdk_dir()).output().expect("run node");
    assert!(
        out.status.success(),
        "node {args:?} failed (is sdk/js set up? scripts/setup.sh): {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn sdk_js_unit_tests_and_bundle_size() {
    let built = node(&["build.mjs"]);
    let text = String::from_utf8_lossy(&built.stdout);
    assert!(text.contains("croupier.min.js") && text.contains("limit 6144"), "{text}");
    let out = node(&["--test", "test/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# fail 0") && text.contains("# pass 47"), "{text}");
}

#[test]
fn sdk_js_in_chromium_session_offline_queue_and_beacon() {
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let mut p = Pipeline::start_with(&[], |c| {
        let g = c.games.get_mut(GAME).expect("g1");
        g.write_keys = vec![KEY.into()];
        g.allowed_origins = vec![origin.clone()];
        g.public_payments = true;
    });
    p.start_worker(&[]);
    let run = format!(
        "b{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let ingest = format!("http://{}", p.ingest.addr);
    let out = node(&["e2e/run.mjs", &ingest, KEY, GAME, &run, &page_port.to_string()]);
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    // Offline, the five events waited in the queue and in localStorage.
    assert_eq!(
        (seen["o"]["queuedOffline"].as_u64(), seen["o"]["storedOffline"].as_u64()),
        (Some(5), Some(5)),
        "{seen}"
    );
    assert_eq!(seen["c"]["queuedAtClose"].as_u64(), Some(7), "{seen}");
    // The one record over the server's props limit refused alone, and told.
    assert_eq!(seen["b"]["errors"], serde_json::json!([["refused", 400, 1]]), "{seen}");
    assert_eq!(seen["b"]["refusedByBrowser"], 0, "requests the browser refused to send: {seen}");

    let count = |user: &str, event: &str| {
        p.scalar(&format!(
            "SELECT count() FROM analytics.events WHERE user_id = '{run}-{user}' AND event = '{event}' AND game_id = '{GAME}' AND env = 'prod' AND app_version = '9.9.9' AND platform = 'web'"
        ))
    };
    // Each page's events, every one once: rows = distinct event ids.
    let fixed: u64 = 4 + 1 + (1 + 5 + 1) + (1 + 7 + 1) + (1 + 19 + 20 + 1 + 1);
    p.wait_for(1, "the session's payment", |p| {
        p.scalar(&format!(
            "SELECT count() FROM analytics.payments WHERE order_id = '{run}-order' AND user_id = '{run}-s' AND amount_cents = 499 AND currency = 'USD' AND product_id = 'gems_100'"
        ))
    });
    p.wait_for(fixed, "the pages' events (heartbeats aside)", |p| {
        p.scalar(&format!("SELECT count() FROM analytics.events WHERE user_id LIKE '{run}-%' AND event != 'heartbeat'"))
    });
    for (user, event, n) in [
        ("s", "session_start", 1),
        ("s", "level_start", 1),
        ("s", "level_complete", 1),
        ("s", "purchase", 1),
        ("s", "session_end", 1),
        ("o", "session_start", 1),
        ("o", "level_start", 5),
        ("o", "session_end", 1),
        ("c", "session_start", 1),
        ("c", "level_fail", 7),
        ("c", "session_end", 1),
        ("b", "session_start", 1),
        ("b", "level_start", 19),
        ("b", "level_up", 20),
        ("b", "level_fail", 0),
        ("b", "nick_set", 1),
        ("b", "session_end", 1),
    ] {
        assert_eq!(count(user, event), n, "{user} {event}");
    }
    assert!(count("s", "heartbeat") >= 1, "no heartbeat");
    // The name cut inside an emoji: its lone surrogate sent as U+FFFD.
    let nick = p.scalar(&format!(
        "SELECT count() FROM analytics.events WHERE user_id = '{run}-b' AND event = 'nick_set' AND props_json = '{{\"nick\":\"Ace\u{fffd}\"}}'"
    ));
    assert_eq!(nick, 1, "the nick stored with U+FFFD");
    // A score past 2^64, as JavaScript writes it (`18446744073709552000`), stored as that
    // double: the batch it came in was not refused.
    let big = p.scalar(&format!(
        "SELECT count() FROM analytics.events WHERE user_id = '{run}-s' AND event = 'level_complete' AND props_json = '{{\"level\":1,\"score\":1.8446744073709552e19}}'"
    ));
    assert_eq!(big, 1, "the score past 2^64 stored as a double");
    let total = p.scalar(&format!("SELECT count() FROM analytics.events WHERE user_id LIKE '{run}-%'"));
    let distinct = p.scalar(&format!("SELECT uniqExact(event_id) FROM analytics.events WHERE user_id LIKE '{run}-%'"));
    assert_eq!(total, distinct, "an event stored twice");
    // One session id per page, as the page saw it.
    let session = seen["s"]["session"].as_str().unwrap_or_default();
    assert_eq!(
        p.scalar(&format!(
            "SELECT count() FROM analytics.events WHERE user_id = '{run}-s' AND session_id = '{session}'"
        )),
        p.scalar(&format!("SELECT count() FROM analytics.events WHERE user_id = '{run}-s'"))
    );
}
