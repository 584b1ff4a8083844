//! What the Analytics API counts for `/metrics`: its requests by route and status, and
//! the reads it gave up on (cancelled on ClickHouse, their connections held until the
//! server ends them: `db.rs`). Written by the control thread, read by a scrape on the same
//! thread or another: atomics, no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use croupier_control::metrics::{Encoder, Kind, Source};

use super::Route;

/// The statuses counted apart; any other is `other`.
const STATUSES: [u16; 14] = [200, 400, 401, 403, 404, 405, 408, 413, 499, 500, 502, 503, 504, 0];

/// The Analytics API's counters.
#[derive(Debug)]
pub struct ApiMetrics {
    /// Per route ([`Route::ALL`]'s order), per status ([`STATUSES`]'s order).
    requests: Vec<[AtomicU64; STATUSES.len()]>,
    /// Reads given up on (504): cancelled on ClickHouse.
    given_up: AtomicU64,
    /// Of those, the ones whose query ClickHouse has not ended yet.
    given_up_running: AtomicU64,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Route::ALL.iter().map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            given_up: AtomicU64::new(0),
            given_up_running: AtomicU64::new(0),
        }
    }
}

impl ApiMetrics {
    /// A request to `route` answered `status`.
    pub fn answered(&self, route: Route, status: u16) {
        let Some(r) = Route::ALL.iter().position(|(_, x)| *x == route) else { return };
        let s = STATUSES.iter().position(|x| *x == status).unwrap_or(STATUSES.len() - 1);
        if let Some(c) = self.requests.get(r).and_then(|row| row.get(s)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A read was given up on; its query may still run on the server.
    pub fn gave_up(&self) {
        self.given_up.fetch_add(1, Ordering::Relaxed);
        self.given_up_running.fetch_add(1, Ordering::Relaxed);
    }

    /// A read given up on ended on the server (or its connection was closed).
    pub fn given_up_ended(&self) {
        let _ = self.given_up_running.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

impl Source for ApiMetrics {
    fn encode(&self, enc: &mut Encoder) {
        enc.family(
            "croupier_api_requests_total",
            Kind::Counter,
            "Analytics API requests answered by the control port, by route and status.",
        );
        let codes: Vec<String> =
            STATUSES.iter().map(|s| if *s == 0 { "other".to_owned() } else { s.to_string() }).collect();
        for ((path, _), row) in Route::ALL.iter().zip(&self.requests) {
            for (code, c) in codes.iter().zip(row) {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    enc.sample("croupier_api_requests_total", &[("route", path), ("status", code)], v);
                }
            }
        }
        enc.family(
            "croupier_api_reads_given_up_total",
            Kind::Counter,
            "Analytics API reads given up on at their request's deadline (504), or with their request when its client closed its connection (499), and cancelled on ClickHouse.",
        );
        enc.sample("croupier_api_reads_given_up_total", &[], self.given_up.load(Ordering::Relaxed));
        enc.family(
            "croupier_api_reads_given_up_running",
            Kind::Gauge,
            "Reads given up on whose query ClickHouse has not ended yet: each holds one of api.max_queries_in_flight.",
        );
        enc.sample("croupier_api_reads_given_up_running", &[], self.given_up_running.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_by_route_and_status_and_reads_given_up() {
        let m = ApiMetrics::default();
        m.answered(Route::Overview, 200);
        m.answered(Route::Overview, 200);
        m.answered(Route::Ltv, 504);
        m.answered(Route::Ltv, 418);
        m.gave_up();
        m.gave_up();
        m.given_up_ended();
        let mut enc = Encoder::new();
        m.encode(&mut enc);
        let text = enc.finish();
        for line in [
            r#"croupier_api_requests_total{route="/api/analytics/overview",status="200"} 2"#,
            r#"croupier_api_requests_total{route="/api/analytics/ltv",status="504"} 1"#,
            r#"croupier_api_requests_total{route="/api/analytics/ltv",status="other"} 1"#,
            "croupier_api_reads_given_up_total 2",
            "croupier_api_reads_given_up_running 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        m.given_up_ended();
        m.given_up_ended();
        let mut enc = Encoder::new();
        m.encode(&mut enc);
        assert!(enc.finish().lines().any(|l| l == "croupier_api_reads_given_up_running 0"), "never below 0");
    }
}
