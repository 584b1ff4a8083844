//! The registry: where each shard's counter block is, what each counter means, and the
//! sum over the shards that a scrape encodes.
//!
//! A shard takes a [`ShardWriter`] when it starts: a block of counters of its own
//! ([`Cells`]) laid out by the process-wide [`Layout`]. It writes only to that block; the
//! control thread reads every block and adds them up when `/metrics` is scraped. The
//! list of blocks is behind a mutex that only registration (at start) and scrapes take,
//! never a request.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use croupier_protocol::stream::StreamKind;

use super::cells::Cells;
use super::encode::{Encoder, Kind};
use super::events::Event;
use super::histogram::{Buckets, DELAY_SECONDS, INSERT_SECONDS, REQUEST_SECONDS, TRANSACTION_REQUESTS};
use super::labels::{self, DeadReason, Table, REASONS, STATUSES, STATUS_MIN, UNKNOWN_GAME};

/// A route of the data port, as its requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteIx(pub(crate) usize);

/// A game, as its events are counted (a configured game, or [`UNKNOWN_GAME`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GameIx(pub(crate) usize);

/// Where each counter is in a shard's block.
#[derive(Debug)]
pub struct Layout {
    /// Route labels: the data port's routes, then `unmatched`.
    routes: Vec<String>,
    /// Game labels: the configured games, sorted, then [`UNKNOWN_GAME`].
    games: Vec<String>,
    requests: usize,
    request_seconds: usize,
    accepted: usize,
    refused: usize,
    /// The histogram of requests per ingest transaction.
    pub(crate) transaction_requests: usize,
    rows: usize,
    insert_failures: usize,
    insert_seconds: usize,
    delay: usize,
    dead: usize,
    len: usize,
}

/// Label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl Layout {
    fn new(routes: &[&str], games: &[&str]) -> Layout {
        let routes: Vec<String> = routes.iter().map(|r| (*r).to_owned()).chain([UNMATCHED_ROUTE.to_owned()]).collect();
        let mut g: Vec<String> = games.iter().map(|g| (*g).to_owned()).collect();
        g.sort();
        g.dedup();
        g.push(UNKNOWN_GAME.to_owned());
        let (r, n) = (routes.len(), g.len());
        let mut at = 0;
        let mut take = |cells: usize| {
            let start = at;
            at += cells;
            start
        };
        let requests = take(r * STATUSES);
        let request_seconds = take(r * REQUEST_SECONDS.cells());
        let accepted = take(n * StreamKind::ALL.len());
        let refused = take(n * REASONS.len());
        let transaction_requests = take(TRANSACTION_REQUESTS.cells());
        let rows = take(Table::ALL.len());
        let insert_failures = take(Table::ALL.len());
        let insert_seconds = take(Table::ALL.len() * INSERT_SECONDS.cells());
        let delay = take(Table::ALL.len() * DELAY_SECONDS.cells());
        let dead = take(StreamKind::ALL.len() * DeadReason::ALL.len());
        Layout {
            routes,
            games: g,
            requests,
            request_seconds,
            accepted,
            refused,
            transaction_requests,
            rows,
            insert_failures,
            insert_seconds,
            delay,
            dead,
            len: at,
        }
    }

    /// The route called `name` (`unmatched` when the data port has no such route).
    pub fn route(&self, name: &str) -> RouteIx {
        let r = &self.routes;
        RouteIx(r.iter().position(|x| x == name).unwrap_or(r.len() - 1))
    }

    /// The route of requests that matched none.
    pub fn unmatched(&self) -> RouteIx {
        RouteIx(self.routes.len() - 1)
    }

    /// The game `id` (the unknown game when it is not configured).
    pub fn game(&self, id: &str) -> GameIx {
        let known = &self.games[..self.games.len() - 1];
        GameIx(known.binary_search_by(|x| x.as_str().cmp(id)).unwrap_or(known.len()))
    }

    /// Counter of requests to `route` answered `status`.
    pub(crate) fn request(&self, route: RouteIx, status: u16) -> usize {
        self.requests + route.0 * STATUSES + labels::status_index(status)
    }

    /// First counter of `route`'s duration histogram.
    pub(crate) fn request_seconds(&self, route: RouteIx) -> usize {
        self.request_seconds + route.0 * REQUEST_SECONDS.cells()
    }

    pub(crate) fn accepted(&self, game: GameIx, stream: StreamKind) -> usize {
        self.accepted + game.0 * StreamKind::ALL.len() + stream.index()
    }

    pub(crate) fn refused(&self, game: GameIx, reason: usize) -> usize {
        self.refused + game.0 * REASONS.len() + reason
    }

    pub(crate) fn rows(&self, t: Table) -> usize {
        self.rows + t.index()
    }

    pub(crate) fn insert_failures(&self, t: Table) -> usize {
        self.insert_failures + t.index()
    }

    pub(crate) fn insert_seconds(&self, t: Table) -> usize {
        self.insert_seconds + t.index() * INSERT_SECONDS.cells()
    }

    pub(crate) fn delay(&self, t: Table) -> usize {
        self.delay + t.index() * DELAY_SECONDS.cells()
    }

    pub(crate) fn dead(&self, s: StreamKind, r: DeadReason) -> usize {
        self.dead + s.index() * DeadReason::ALL.len() + r.index()
    }
}

/// Adds one observation of `v` integer units, `weight` times, to the histogram whose
/// counters start at `at`.
#[inline]
pub(crate) fn observe(cells: &Cells, at: usize, b: &Buckets, v: u64, weight: u64) {
    cells.add(at + b.bucket(v), weight);
    cells.add(at + b.ticks.len() + 1, v.saturating_mul(weight));
}

/// Something else a scrape encodes (stream gauges, real-time figures): called by the
/// control thread, after the registry's own families.
pub trait Source: Send + Sync {
    /// Writes whole families.
    fn encode(&self, enc: &mut Encoder);
}

/// The process's metrics: each shard's block, and the sources of the rest.
pub struct Registry {
    layout: Arc<Layout>,
    enabled: bool,
    shards: Mutex<Vec<Arc<Cells>>>,
    sources: Mutex<Vec<Arc<dyn Source>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("layout", &self.layout).field("enabled", &self.enabled).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A scrape that panicked leaves nothing half-written (blocks are only added).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// A registry for a data port with `routes` and the configured `games`. When
    /// `enabled` is false the shards count nothing (their writers are inert).
    pub fn new(routes: &[&str], games: &[&str], enabled: bool) -> Arc<Registry> {
        Arc::new(Registry {
            layout: Arc::new(Layout::new(routes, games)),
            enabled,
            shards: Mutex::new(Vec::new()),
            sources: Mutex::new(Vec::new()),
        })
    }

    /// Whether shards count.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A new shard's writer, with a block of its own (none when disabled).
    pub fn writer(&self) -> ShardWriter {
        let cells = self.enabled.then(|| {
            let c = Arc::new(Cells::new(self.layout.len));
            lock(&self.shards).push(c.clone());
            c
        });
        ShardWriter { cells, layout: self.layout.clone(), _owner: PhantomData }
    }

    /// The labels of the data port's routes and games.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Adds a source of more families (the control plane's gauges, real-time figures).
    pub fn add_source(&self, s: Arc<dyn Source>) {
        lock(&self.sources).push(s);
    }

    /// Every shard's counters added up, in layout order.
    fn totals(&self) -> Vec<u64> {
        let mut t = vec![0u64; self.layout.len];
        for cells in lock(&self.shards).iter() {
            for (i, v) in t.iter_mut().enumerate() {
                *v = v.wrapping_add(cells.get(i));
            }
        }
        t
    }

    /// Per table ([`Table::ALL`]'s order), rows inserted into ClickHouse and failed
    /// inserts, every worker shard added up: what the control thread's readiness watches
    /// for a table whose every insert fails while ClickHouse answers pings (0 when
    /// metrics are off).
    pub fn insert_totals(&self) -> [(u64, u64); Table::ALL.len()] {
        let t = self.totals();
        let l = &*self.layout;
        let at = |i: usize| t.get(i).copied().unwrap_or(0);
        Table::ALL.map(|tb| (at(l.rows(tb)), at(l.insert_failures(tb))))
    }

    /// Encodes the shards' counters summed, then the sources.
    pub fn encode(&self, enc: &mut Encoder) {
        let t = self.totals();
        let l = &*self.layout;
        let hist = |at: usize, b: &Buckets| -> (&[u64], u64) {
            let counts = t.get(at..at + b.ticks.len() + 1).unwrap_or(&[]);
            (counts, t.get(at + b.ticks.len() + 1).copied().unwrap_or(0))
        };

        enc.family(
            "croupier_http_requests_total",
            Kind::Counter,
            "HTTP requests answered by the data port, by route and status.",
        );
        for (r, route) in l.routes.iter().enumerate() {
            for s in 0..STATUSES {
                let v = t[l.requests + r * STATUSES + s];
                if v > 0 {
                    let status = (STATUS_MIN + s as u16).to_string();
                    enc.sample("croupier_http_requests_total", &[("route", route), ("status", &status)], v);
                }
            }
        }
        enc.family(
            "croupier_http_request_duration_seconds",
            Kind::Histogram,
            "Time from a request's first byte to its response, by route of the data port.",
        );
        for (r, route) in l.routes.iter().enumerate() {
            let (counts, sum) = hist(l.request_seconds(RouteIx(r)), &REQUEST_SECONDS);
            if counts.iter().any(|c| *c > 0) {
                enc.histogram(
                    "croupier_http_request_duration_seconds",
                    &[("route", route)],
                    &REQUEST_SECONDS,
                    counts,
                    sum,
                );
            }
        }
        enc.family(
            "croupier_events_accepted_total",
            Kind::Counter,
            "Events (and payments) acknowledged with 202 after Redis confirmed the append, by game and stream.",
        );
        for (g, game) in l.games.iter().enumerate() {
            for s in StreamKind::ALL {
                let v = t[l.accepted(GameIx(g), s)];
                if v > 0 {
                    enc.sample("croupier_events_accepted_total", &[("game", game), ("stream", labels::stream(s))], v);
                }
            }
        }
        enc.family(
            "croupier_events_refused_total",
            Kind::Counter,
            "Events in refused batches, by game and reason (the error tag); a batch refused before its records \
             were counted counts as one.",
        );
        for (g, game) in l.games.iter().enumerate() {
            for (ri, reason) in REASONS.iter().enumerate() {
                let v = t[l.refused(GameIx(g), ri)];
                if v > 0 {
                    enc.sample("croupier_events_refused_total", &[("game", game), ("reason", reason)], v);
                }
            }
        }
        enc.family(
            "croupier_ingest_transaction_requests",
            Kind::Histogram,
            "Ingest requests per Redis transaction (redis.ingest_protocol script): the requests a shard has \
             waiting at once on a partition share one, up to redis.ingest_group_max.",
        );
        let (counts, sum) = hist(l.transaction_requests, &TRANSACTION_REQUESTS);
        enc.histogram("croupier_ingest_transaction_requests", &[], &TRANSACTION_REQUESTS, counts, sum);
        enc.family("croupier_worker_rows_inserted_total", Kind::Counter, "Rows inserted into ClickHouse, by table.");
        for tb in Table::ALL {
            enc.sample("croupier_worker_rows_inserted_total", &[("table", tb.label())], t[l.rows(tb)]);
        }
        enc.family(
            "croupier_worker_insert_failures_total",
            Kind::Counter,
            "Insert attempts into ClickHouse that failed (the batch stays pending and is retried), by table.",
        );
        for tb in Table::ALL {
            enc.sample("croupier_worker_insert_failures_total", &[("table", tb.label())], t[l.insert_failures(tb)]);
        }
        enc.family(
            "croupier_worker_insert_duration_seconds",
            Kind::Histogram,
            "Duration of successful inserts into ClickHouse (query to end of stream), by table.",
        );
        for tb in Table::ALL {
            let (counts, sum) = hist(l.insert_seconds(tb), &INSERT_SECONDS);
            enc.histogram(
                "croupier_worker_insert_duration_seconds",
                &[("table", tb.label())],
                &INSERT_SECONDS,
                counts,
                sum,
            );
        }
        enc.family(
            "croupier_worker_event_delay_seconds",
            Kind::Histogram,
            "Delay of each inserted event from its acceptance by ingest to ClickHouse's confirmation, by table.",
        );
        for tb in Table::ALL {
            let (counts, sum) = hist(l.delay(tb), &DELAY_SECONDS);
            enc.histogram("croupier_worker_event_delay_seconds", &[("table", tb.label())], &DELAY_SECONDS, counts, sum);
        }
        enc.family(
            "croupier_dead_letters_total",
            Kind::Counter,
            "Entries moved to their stream's dead-letter stream (<stream>:dead), by stream and reason.",
        );
        for s in StreamKind::ALL {
            for r in DeadReason::ALL {
                // Every series from the start, at 0: an alert's `increase()` then sees the
                // first dead letter of a process too.
                let v = t[l.dead(s, r)];
                enc.sample("croupier_dead_letters_total", &[("stream", labels::stream(s)), ("reason", r.label())], v);
            }
        }
        let sources: Vec<Arc<dyn Source>> = lock(&self.sources).clone();
        for s in sources {
            s.encode(enc);
        }
    }
}

/// A shard's handle on its own counters. Neither `Clone` nor `Sync`: one thread writes
/// a block (share it on that thread through `Rc`).
pub struct ShardWriter {
    cells: Option<Arc<Cells>>,
    layout: Arc<Layout>,
    _owner: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter").field("enabled", &self.cells.is_some()).finish()
    }
}

impl ShardWriter {
    /// A writer that counts nothing (metrics disabled, or a shard without a registry).
    pub fn disabled() -> ShardWriter {
        ShardWriter { cells: None, layout: Arc::new(Layout::new(&[], &[])), _owner: PhantomData }
    }

    /// The labels of the data port's routes and games.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether this writer counts (skip measuring what it would not count).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.cells.is_some()
    }

    /// Counts `event`.
    #[inline]
    pub fn emit(&self, event: impl Event) {
        if let Some(c) = &self.cells {
            event.record(&self.layout, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::events::*;
    use super::*;

    #[test]
    fn shards_count_apart_and_a_scrape_adds_them_up() {
        let reg = Registry::new(&["/api/ingest/events", "/healthz"], &["zeta", "alpha"], true);
        let shards: Vec<_> = (0..3)
            .map(|_| {
                let w = reg.writer();
                std::thread::spawn(move || {
                    let l = w.layout();
                    let (route, game) = (l.route("/api/ingest/events"), l.game("alpha"));
                    for _ in 0..1000 {
                        w.emit(RequestServed { route, status: 202, duration: Duration::from_millis(3) });
                        w.emit(EventsAccepted { game, stream: StreamKind::Events, count: 5 });
                    }
                    w.emit(RequestServed { route: l.unmatched(), status: 404, duration: Duration::ZERO });
                    w.emit(EventsRefused { game: l.game("nope"), reason: "unknown_game", count: 1 });
                    w.emit(RowsInserted { table: Table::Payments, rows: 7, duration: Duration::from_millis(20) });
                    w.emit(EventsDelayed { table: Table::Payments, delay_ms: 45_000, count: 7 });
                    w.emit(InsertFailed { table: Table::Events });
                    w.emit(DeadLettered { stream: StreamKind::Custom, reason: DeadReason::Rejected });
                })
            })
            .collect();
        for s in shards {
            s.join().unwrap();
        }
        let mut enc = Encoder::new();
        reg.encode(&mut enc);
        let out = enc.finish();
        for line in [
            "croupier_http_requests_total{route=\"/api/ingest/events\",status=\"202\"} 3000\n",
            "croupier_http_requests_total{route=\"unmatched\",status=\"404\"} 3\n",
            "croupier_http_request_duration_seconds_bucket{route=\"/api/ingest/events\",le=\"0.0025\"} 0\n",
            "croupier_http_request_duration_seconds_bucket{route=\"/api/ingest/events\",le=\"0.005\"} 3000\n",
            "croupier_http_request_duration_seconds_sum{route=\"/api/ingest/events\"} 9\n",
            "croupier_events_accepted_total{game=\"alpha\",stream=\"events\"} 15000\n",
            "croupier_events_refused_total{game=\"(unknown)\",reason=\"unknown_game\"} 3\n",
            "croupier_worker_rows_inserted_total{table=\"payments\"} 21\n",
            "croupier_worker_rows_inserted_total{table=\"events\"} 0\n",
            "croupier_worker_insert_failures_total{table=\"events\"} 3\n",
            "croupier_worker_insert_duration_seconds_count{table=\"payments\"} 3\n",
            "croupier_worker_event_delay_seconds_bucket{table=\"payments\",le=\"30\"} 0\n",
            "croupier_worker_event_delay_seconds_bucket{table=\"payments\",le=\"60\"} 21\n",
            "croupier_worker_event_delay_seconds_sum{table=\"payments\"} 945\n",
            "croupier_dead_letters_total{stream=\"custom\",reason=\"rejected\"} 3\n",
            // Every stream and reason from the start, at 0.
            "croupier_dead_letters_total{stream=\"events\",reason=\"max_deliveries\"} 0\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains("game=\"zeta\""), "series appear once counted");
        assert!(!out.contains("route=\"/healthz\""));
    }

    #[test]
    fn disabled_writers_count_nothing() {
        let reg = Registry::new(&[], &["g"], false);
        let w = reg.writer();
        assert!(!w.enabled());
        w.emit(EventsAccepted { game: w.layout().game("g"), stream: StreamKind::Payments, count: 1 });
        let mut enc = Encoder::new();
        reg.encode(&mut enc);
        assert!(!enc.finish().contains("croupier_events_accepted_total{"));
    }
}
