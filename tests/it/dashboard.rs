//! The web dashboard served by a real `croupier run` (real redis-server and
//! clickhouse-server, a generated game history in ClickHouse): the control listener's
//! static files (Content-Type, cache headers, page paths, no path traversal), then every
//! page in Debian's headless Chromium driven by `dashboard/tests/pages.mjs`
//! (`playwright-core`), which compares the figures shown with the API's answers, checks
//! the console, writes screenshots under the target directory, and watches the realtime
//! page's online figure change while this test sends signed events.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use croupier_it::clickhouse::ClickHouseServer;
use croupier_it::http::{clear_of_day_turn, now_secs, HttpClient};
use croupier_it::monitoring::Croupier;
use croupier_it::redis::RedisServer;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::analytics::mix;
use crate::fixture::{post_signed, GAME, SECRET};
use crate::pipeline::{croupier, CROUPIER};

const DAY: i64 = 86_400;
const JWT_SECRET: &str = "dashboard-jwt-secret";
const PLAYERS: u64 = 300;
const DAYS: i64 = 40;

/// The repository's `dashboard/` directory.
fn dashboard_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard")
}

/// A game history of `PLAYERS` players over `DAYS` days up to now (sessions, levels with
/// episodes and maps, payments over channels, platforms, places and products), inserted
/// into ClickHouse as TabSeparated rows.
fn insert_history(ch: &ClickHouseServer, now: i64) {
    let today = now.div_euclid(DAY);
    let (mut events, mut payments) = (Vec::new(), Vec::new());
    let mut id = 0u64;
    let channels = ["appstore", "google", "web"];
    let countries = [("US", "CA", "SF"), ("DE", "BE", "Berlin"), ("JP", "13", "Tokyo")];
    for p in 0..PLAYERS {
        let reg = today - DAYS + (mix(&[p, 1]) % DAYS as u64) as i64;
        let channel = channels[(p % 3) as usize];
        let platform = if p.is_multiple_of(2) { "ios" } else { "android" };
        let (country, region, city) = countries[(mix(&[p, 9]) % 3) as usize];
        for d in reg..=today {
            if d != reg && mix(&[p, d as u64, 2]) % 100 >= 30 + p % 50 {
                continue;
            }
            // Today's events stay before now.
            let span = if d == today { (now - today * DAY - 400).max(1) as u64 } else { DAY as u64 - 7200 };
            let base = d * DAY + (mix(&[p, d as u64, 3]) % span) as i64;
            let session = format!("s{p}-{d}");
            let mut ev = |t: i64, name: &str, props: String| {
                id += 1;
                events.push(format!(
                    "{t}\t{GAME}\tprod\tu{p}\t{session}\t{name}\t{channel}\t{platform}\t{country}\t1.0\t\
                     00000000-0000-4000-8000-{id:012x}\t{props}"
                ));
            };
            if d == reg {
                ev(base, "register", "{}".into());
            }
            ev(base + 1, "login", "{}".into());
            ev(base + 2, "session_start", "{}".into());
            let level = 1 + mix(&[p, d as u64, 4]) % 6;
            let (episode, map) = (format!("e{}", 1 + level / 3), ["forest", "cave"][(level % 2) as usize]);
            let place = format!(r#""level":"{level}","episode":"{episode}","map":"{map}""#);
            ev(base + 60, "level_start", format!("{{{place}}}"));
            let outcome = if mix(&[p, d as u64, 5]) % (2 + level) < 2 { "level_clear" } else { "level_fail" };
            ev(
                base + 120,
                outcome,
                format!(r#"{{{place},"duration_sec":{},"retries":{}}}"#, 20 + level * 7, level % 3),
            );
            if mix(&[p, d as u64, 6]).is_multiple_of(8) {
                let amount = 99 + mix(&[p, d as u64, 7]) % 4000;
                let status = if mix(&[p, d as u64, 8]).is_multiple_of(5) { "failed" } else { "success" };
                let product = ["gems", "pass", "skin"][(amount % 3) as usize];
                let reason = if status == "failed" { "card_declined" } else { "" };
                payments.push(format!(
                    "{}\t{GAME}\tprod\tu{p}\to{p}-{d}\t{amount}\tUSD\t{status}\t{channel}\t{platform}\t{country}\t\
                     {region}\t{city}\t{product}\t{reason}",
                    base + 300
                ));
            }
        }
    }
    for (table, cols, rows) in [
        (
            "events",
            "event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, \
             props_json",
            &events,
        ),
        (
            "payments",
            "time, game_id, env, user_id, order_id, amount_cents, currency, status, channel, platform, country, region, \
             city, product_id, reason",
            &payments,
        ),
    ] {
        for chunk in rows.chunks(20_000) {
            ch.query(&format!("INSERT INTO analytics.{table} ({cols}) FORMAT TabSeparated\n{}\n", chunk.join("\n")));
        }
    }
    // Online minutes of the last days (the daily peaks of the overview and realtime).
    let minutes: Vec<String> =
        (1..6).map(|i| format!("({}, '{GAME}', 'prod', {})", (today - i) * DAY + 3600 * i, 10 + i * 3)).collect();
    ch.query(&format!("INSERT INTO analytics.minute_online (m, game_id, env, online) VALUES {}", minutes.join(", ")));
}

fn date(day: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(day * DAY).unwrap();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// A raw request (target as is, no body) on the control port, read to the close:
/// (status, header lines in lower case, body).
fn raw(addr: std::net::SocketAddr, method: &str, target: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let lines = head.lines().skip(1).map(|l| format!("{l}\n")).collect();
    (status, lines, bytes[end + 4..].to_vec())
}

/// The dashboard's files as the control listener serves them.
fn check_static_files(addr: std::net::SocketAddr, dist: &Path) {
    let index = std::fs::read(dist.join("index.html")).unwrap();
    for page in ["/", "/overview", "/realtime", "/operations", "/login"] {
        let (status, head, body) = raw(addr, "GET", page);
        assert_eq!(status, 200, "{page}");
        assert!(head.contains("content-type: text/html; charset=utf-8\n"), "{page}: {head}");
        assert!(head.contains("cache-control: no-cache\n"), "{page}: {head}");
        assert_eq!(body, index, "{page}");
    }
    let mut assets = 0;
    for entry in std::fs::read_dir(dist.join("assets")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let want = if name.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if name.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            continue;
        };
        let (status, head, body) = raw(addr, "GET", &format!("/assets/{name}"));
        assert_eq!(status, 200, "{name}");
        assert!(head.contains(&format!("content-type: {want}\n")), "{name}: {head}");
        assert!(head.contains("cache-control: public, max-age=31536000, immutable\n"), "{name}: {head}");
        assert!(head.contains("x-content-type-options: nosniff\n"), "{name}: {head}");
        assert_eq!(body, std::fs::read(dist.join("assets").join(&name)).unwrap(), "{name}");
        let (status, head, body) = raw(addr, "HEAD", &format!("/assets/{name}"));
        assert_eq!(status, 200);
        assert!(head.contains(&format!(
            "content-length: {}\n",
            std::fs::metadata(dist.join("assets").join(&name)).unwrap().len()
        )));
        assert!(body.is_empty());
        assets += 1;
    }
    assert!(assets >= 2, "a script and a style sheet");
    // Nothing outside the build, however the path is spelt; unknown assets are 404s, not the page.
    for target in [
        "/assets/../index.html",
        "/assets/../../Cargo.toml",
        "/assets/..%2f..%2fCargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/assets/.gitignore",
        "/assets/missing-0000.js",
        "/../Cargo.toml",
        "/package.json",
        "/index.html",
        "/api/analytics/unknown",
    ] {
        let (status, _, body) = raw(addr, "GET", target);
        assert_eq!(status, 404, "{target}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(raw(addr, "POST", "/overview").0, 405);
}

#[test]
fn dashboard_pages_show_the_api_figures_in_headless_chromium() {
    let dash = dashboard_dir();
    let dist = dash.join("dist");
    assert!(
        dist.join("index.html").is_file() && dash.join("node_modules/playwright-core").is_dir(),
        "the dashboard is not built in {}: run scripts/setup.sh (npm ci && npm run build in dashboard/)",
        dash.display()
    );
    let chromium = croupier_it::require_binary("chromium", "chromium");

    let mut redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let mut env = crate::pipeline::env(&redis, &ch);
    env.extend([
        (format!("CROUPIER_GAMES__{GAME}__SECRET"), SECRET.to_owned()),
        ("CROUPIER_SERVER__SHARDS".into(), "1".into()),
        ("CROUPIER_API__JWT_SECRET".into(), JWT_SECRET.into()),
        ("CROUPIER_AGGREGATE__FLUSH_MS".into(), "200".into()),
        ("CROUPIER_AGGREGATE__WRITE_MS".into(), "200".into()),
        // Costs of two channels of three (attribution's CPI and ROAS; the third is null).
        ("CROUPIER_API__CPI_CENTS__appstore".into(), "150".into()),
        ("CROUPIER_API__CPI_CENTS__google".into(), "90".into()),
        ("CROUPIER_CONTROL__DASHBOARD_DIR".into(), dist.display().to_string()),
    ]);
    let (ok, out) = croupier(&["migrate"], &env);
    assert!(ok, "croupier migrate: {out}");
    // The pages and the API read the same UTC day ("today" and its complete days).
    let now = clear_of_day_turn(180, 0);
    insert_history(&ch, now);
    let c = Croupier::start(CROUPIER, "run", &env);
    c.wait_data_ready();
    check_static_files(c.control, &dist);

    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "dash-José", "roles": ["viewer"], "games": [GAME], "exp": now + 3600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let today = now.div_euclid(DAY);
    let mut node = Command::new("node")
        .arg(dash.join("tests/pages.mjs"))
        .current_dir(&dash)
        .env("BASE", format!("http://{}", c.control))
        .env("TOKEN", &token)
        .env("GAME", GAME)
        .env("ENV", "prod")
        .env("START", date(today - 13))
        .env("END", date(today))
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    // Signed events while the script asks for traffic: players coming online.
    let flowing = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (flowing, done, data) = (flowing.clone(), done.clone(), c.data);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                if flowing.load(Ordering::Relaxed) {
                    let batch: Vec<String> = (0..5)
                        .map(|i| {
                            format!(
                                r#"{{"ts":{},"game_id":"{GAME}","env":"prod","event":"session_start","user_id":"live{}","session_id":"live-s{}"}}"#,
                                now_secs(),
                                n * 5 + i,
                                n * 5 + i
                            )
                        })
                        .collect();
                    let body = format!("[{}]", batch.join(","));
                    // A connection per batch: one kept idle until now would have been closed.
                    let mut client = HttpClient::connect(data);
                    let r = post_signed(&mut client, "/api/ingest/events", GAME, SECRET, body.as_bytes());
                    assert_eq!(r.status, 202, "{}", r.text());
                    n += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            n * 5
        })
    };
    let mut output = String::new();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("{line}");
        match line.as_str() {
            "TRAFFIC start" => flowing.store(true, Ordering::Relaxed),
            "TRAFFIC stop" => flowing.store(false, Ordering::Relaxed),
            "REDIS stop" => redis.stop(),
            _ => {}
        }
        output.push_str(&line);
        output.push('\n');
    }
    let status = node.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    println!("screenshots: {}", shots.display());
    assert!(status.success(), "the browser test failed:\n{output}\n{}", c.log());
    assert!(sent > 0, "no traffic was sent");
    assert!(output.contains("operations with Redis stopped: "), "Redis stopped not checked");
    for page in
        ["overview", "retention", "behavior", "payments", "levels", "ltv", "attribution", "operations", "realtime"]
    {
        assert!(shots.join(format!("{page}.png")).is_file(), "{page}.png");
        assert!(output.contains(&format!("page {page}: ")), "{page} not checked");
    }
}
