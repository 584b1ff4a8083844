//! The demo's output: the live screen (redrawn every second on a terminal), the plain
//! progress line (logs, CI), and the final summary.

use std::fmt::Write;
use std::time::Duration;

use super::figures::{Metrics, Stored};

/// One second's view.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Time since the load started.
    pub elapsed: Duration,
    /// The run's length, if bounded.
    pub duration: Option<Duration>,
    /// Events (and payments) accepted per second, from `/metrics`.
    pub accepted_per_sec: f64,
    /// Records refused per second, from `/metrics`.
    pub refused_per_sec: f64,
    /// `/metrics` totals.
    pub metrics: Metrics,
    /// What ClickHouse and Redis hold.
    pub stored: Stored,
    /// Acknowledgement p50 and p99 over the last second, in ms (client side).
    pub ack_ms: Option<(f64, f64)>,
    /// Players in the game so far, of all.
    pub joined: (usize, usize),
    /// The part of the compressed day gone by (0 to 1).
    pub day_part: f64,
    /// Where things are.
    pub endpoints: Endpoints,
    /// The servers whose figures could not be read this second, and why.
    pub unreadable: Vec<String>,
}

/// The addresses a user can open while the demo runs.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// Data port (ingest, `/healthz`, `/readyz`).
    pub data: String,
    /// Control port (`/metrics`, `/healthz`, `/readyz`).
    pub control: String,
    /// Where the data lives.
    pub dir: String,
    /// The file holding an Analytics API token.
    pub token: String,
    /// The web dashboard's directory when it is built (`None`: not built).
    pub dashboard: Option<String>,
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn money(cents: u64) -> String {
    format!("${}.{:02}", thousands(cents / 100), cents % 100)
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `text` as a frame drawn over the previous one: from the top left, each line cleared
/// to its end, everything below the last cleared. The frame stays inside `columns` ×
/// `rows`: a line is cut short of the last column (its last shown character `>`; a
/// character written in the last column may be erased by the clear that follows it, on
/// some terminals), and lines past the last row but one are left out. A frame the terminal
/// wrapped or scrolled would push the start-up lines (the dashboard's login link) out of
/// the scrollback at each redraw.
pub fn frame(text: &str, columns: usize, rows: usize) -> String {
    let width = columns.saturating_sub(1).max(1);
    let mut out = String::with_capacity(text.len() + 8 * text.lines().count() + 8);
    out.push_str("\x1b[H");
    for line in text.lines().take(rows.saturating_sub(1).max(1)) {
        match line.char_indices().nth(width - 1) {
            Some((cut, _)) if line.chars().count() > width => {
                out.push_str(&line[..cut]);
                out.push('>');
            }
            _ => out.push_str(line),
        }
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// The live screen's text (without the escape codes that clear the terminal).
pub fn live(v: &View) -> String {
    let mut o = String::new();
    let s = &v.stored;
    let of = v.duration.map(|d| format!(" / {}", clock(d))).unwrap_or_default();
    let sim = (v.day_part * 24.0 * 60.0) as u64;
    let _ = writeln!(
        o,
        "Croupier demo  {}{of}   simulated day {:02}:{:02}   Ctrl-C stops (data kept)",
        clock(v.elapsed),
        sim / 60,
        sim % 60
    );
    for e in &v.unreadable {
        let _ = writeln!(o, "  ! {e}");
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  ingest     accepted {:>9} ev/s   refused {:>6} ev/s   total {} accepted, {} refused",
        thousands(v.accepted_per_sec.round() as u64),
        thousands(v.refused_per_sec.round() as u64),
        thousands(v.metrics.accepted),
        thousands(v.metrics.refused)
    );
    let ack = v.ack_ms.map(|(a, b)| format!("p50 {a:.1} ms   p99 {b:.1} ms")).unwrap_or_else(|| "p50 -   p99 -".into());
    let _ = writeln!(o, "  ack        {ack}");
    let fresh = s.freshness_secs.map(|f| format!("{f} s")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        o,
        "  pipeline   backlog {} events   rows in ClickHouse {} events, {} payments   freshness {fresh}",
        thousands(v.metrics.backlog),
        thousands(s.event_rows),
        thousands(s.payment_rows)
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  today ({})  {} of {} players have joined",
        s.day,
        thousands(v.joined.0 as u64),
        thousands(v.joined.1 as u64)
    );
    let _ =
        writeln!(o, "  online now {:>9} exact   {:>9} sketch", thousands(s.online_exact), thousands(s.online_sketch));
    let _ = writeln!(o, "  DAU        {:>9} exact   {:>9} sketch", thousands(s.dau_exact), thousands(s.dau_sketch));
    let _ = writeln!(o, "  new users  {:>9} exact   {:>9} sketch", thousands(s.new_exact), thousands(s.new_sketch));
    let _ = writeln!(
        o,
        "  revenue    {:>9}   {} payments by {} payers   conversion {:.1}%",
        money(s.revenue_cents),
        thousands(s.payments_ok),
        thousands(s.payers),
        s.conversion_pct()
    );
    let _ = writeln!(
        o,
        "  levels     pass rate {:.1}% ({} passed, {} failed)",
        s.pass_rate_pct(),
        thousands(s.level_complete),
        thousands(s.level_fail)
    );
    let _ = writeln!(o);
    let e = &v.endpoints;
    let _ = writeln!(o, "  ingest     http://{}/api/ingest/events   /healthz /readyz", e.data);
    let _ = writeln!(o, "  metrics    http://{}/metrics   /healthz /readyz", e.control);
    let _ = writeln!(o, "  API        http://{}/api/analytics/realtime?game_id=demo-game&env=prod", e.control);
    let _ = writeln!(o, "             (Authorization: Bearer $(cat {}))", shell_quoted(&e.token));
    match &e.dashboard {
        Some(_) => {
            let _ = writeln!(o, "  dashboard  http://{}/", e.control);
            let _ = writeln!(o, "             log in with the token in {} (or the login link above)", e.token);
        }
        None => {
            let _ = writeln!(o, "  dashboard  not built: scripts/build-dashboard.sh, then run the demo again");
        }
    }
    let _ = writeln!(o, "  data       {} (croupier.log, redis/, clickhouse/)", e.dir);
    o
}

/// One line for plain output.
pub fn line(v: &View) -> String {
    let s = &v.stored;
    format!(
        "{} accepted {:.0} ev/s refused {:.0} ev/s backlog {} rows {} events {} payments dau {} (sketch {}) new {} (sketch {}) revenue {}",
        clock(v.elapsed),
        v.accepted_per_sec,
        v.refused_per_sec,
        v.metrics.backlog,
        s.event_rows,
        s.payment_rows,
        s.dau_exact,
        s.dau_sketch,
        s.new_exact,
        s.new_sketch,
        money(s.revenue_cents)
    )
}

/// What this run did, beside what is stored.
#[derive(Debug, Clone, Default)]
pub struct RunTotals {
    /// Events accepted in this run (client side, 202s).
    pub events: u64,
    /// Payments accepted in this run.
    pub payments: u64,
    /// Records refused in this run.
    pub refused: u64,
    /// Acknowledgement p50 and p99 over the run, in ms.
    pub ack_ms: Option<(f64, f64)>,
    /// How long the players played.
    pub elapsed: Duration,
}

/// The final summary: a table for people, then one `summary:` line of `key=value`
/// figures for scripts and tests (what ClickHouse and Redis hold after the drain).
pub fn summary(run: &RunTotals, s: &Stored, dir: &str) -> String {
    let mut o = run_summary(run, dir);
    let _ = writeln!(
        o,
        "  ClickHouse     {} events, {} payments (all runs)",
        thousands(s.event_rows),
        thousands(s.payment_rows)
    );
    let _ = writeln!(o, "  DAU {}  {} exact, {} sketch", s.day, thousands(s.dau_exact), thousands(s.dau_sketch));
    let _ = writeln!(o, "  new users      {} exact, {} sketch", thousands(s.new_exact), thousands(s.new_sketch));
    let _ = writeln!(
        o,
        "  revenue        {} from {} payments by {} payers (conversion {:.1}%); level pass rate {:.1}%",
        money(s.revenue_cents),
        thousands(s.payments_ok),
        thousands(s.payers),
        s.conversion_pct(),
        s.pass_rate_pct()
    );
    let _ = writeln!(
        o,
        "summary: day={} run_events={} run_payments={} run_refused={} event_rows={} payment_rows={} dau_exact={} dau_sketch={} new_exact={} new_sketch={} revenue_cents={} payments_ok={} payers={}",
        s.day,
        run.events,
        run.payments,
        run.refused,
        s.event_rows,
        s.payment_rows,
        s.dau_exact,
        s.dau_sketch,
        s.new_exact,
        s.new_sketch,
        s.revenue_cents,
        s.payments_ok,
        s.payers
    );
    o
}

/// `text` as one word of a POSIX shell command line: as it is when it holds only
/// characters no shell treats apart, else in single quotes (a `--dir` with a space
/// printed into `$(cat …)` split into three words).
pub fn shell_quoted(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%=".contains(&b)) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The summary's head: what this run did, which needs neither server.
fn run_summary(run: &RunTotals, dir: &str) -> String {
    let mut o = String::new();
    let ack = run.ack_ms.map(|(a, b)| format!("p50 {a:.1} ms, p99 {b:.1} ms")).unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "Summary ({} of play; data in {dir})", clock(run.elapsed));
    let _ = writeln!(
        o,
        "  this run       {} events and {} payments accepted, {} refused; ack {ack}",
        thousands(run.events),
        thousands(run.payments),
        thousands(run.refused)
    );
    o
}

/// The summary when what the servers hold could not be read (`error`, one of them down):
/// this run's figures, ClickHouse's rows when `tables` were read, and where the accepted
/// events are.
pub fn unread_summary(run: &RunTotals, dir: &str, error: &str, tables: Option<&Stored>) -> String {
    let mut o = run_summary(run, dir);
    if let Some(s) = tables {
        let _ = writeln!(
            o,
            "  ClickHouse     {} events, {} payments (all runs)",
            thousands(s.event_rows),
            thousands(s.payment_rows)
        );
    }
    let _ = writeln!(o, "  stored figures not read: {error}");
    let _ = writeln!(
        o,
        "  nothing accepted is lost: Redis wrote each accepted record to {dir}/redis before its 202 \
         (append-only, fsync always); what ClickHouse does not hold yet goes in at the next run"
    );
    let _ = writeln!(
        o,
        "summary: run_events={} run_payments={} run_refused={} stored=unread",
        run.events, run.payments, run.refused
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_when_they_need_it() {
        assert_eq!(shell_quoted("/tmp/croupier-demo/api-token"), "/tmp/croupier-demo/api-token");
        assert_eq!(shell_quoted("/tmp/my demo/api-token"), "'/tmp/my demo/api-token'");
        assert_eq!(shell_quoted("/tmp/it's/t"), r"'/tmp/it'\''s/t'");
        assert_eq!(shell_quoted("/tmp/$x`y`"), "'/tmp/$x`y`'");
        // What a shell makes of them: the path itself.
        for path in ["/tmp/my demo/t", "/tmp/it's/t", "/tmp/$HOME/t", "/tmp/a\"b/t"] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_quoted(path))])
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), path);
        }
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(money(123456), "$1,234.56");
        assert_eq!(clock(Duration::from_secs(3725)), "01:02:05");
    }

    #[test]
    fn a_frame_draws_over_the_last_without_clearing_the_screen_first() {
        let f = frame("a\nbc\n", 80, 24);
        assert_eq!(f, "\x1b[Ha\x1b[K\nbc\x1b[K\n\x1b[J");
        assert!(!f.contains("\x1b[2J"), "a cleared screen shows blank until redrawn");
        // Lines as wide as the terminal are cut short of its last column, not wrapped
        // (whatever their characters); lines past the last row but one are left out.
        assert_eq!(frame("abcdef\nabc\nab\n", 4, 24), "\x1b[Hab>\x1b[K\nabc\x1b[K\nab\x1b[K\n\x1b[J");
        assert_eq!(frame("éééé\n", 4, 24), "\x1b[Hé\u{e9}>\x1b[K\n\x1b[J");
        assert_eq!(frame("a\nb\nc\nd\n", 80, 3), "\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J");
        assert_eq!(frame("abc\n", 0, 0), "\x1b[H>\x1b[K\n\x1b[J");
    }

    #[test]
    fn the_screen_names_every_figure() {
        let text = live(&View::default());
        for f in [
            "accepted",
            "refused",
            "backlog",
            "rows in ClickHouse",
            "freshness",
            "online now",
            "DAU",
            "new users",
            "revenue",
            "conversion",
            "pass rate",
            "p50",
            "/metrics",
        ] {
            assert!(text.contains(f), "{f} missing:\n{text}");
        }
    }
}
