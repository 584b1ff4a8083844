//! What counting costs a request: the events an accepted ingest request emits (its
//! request with its duration, its accepted events on two streams), with the clock reads
//! around it, against a disabled writer. Read with `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use croupier_control::metrics::{Encoder, EventsAccepted, GameIx, Registry, RequestServed, ShardWriter};
use croupier_protocol::stream::StreamKind;

/// What an accepted request counts, as the shard does: the game's label was looked up
/// when the shard started, the route is looked up by path, the duration read from the
/// clock.
fn count_request(w: &ShardWriter, game: GameIx, started: Instant) {
    if w.enabled() {
        let l = w.layout();
        w.emit(EventsAccepted { game, stream: StreamKind::Events, count: 80 });
        w.emit(EventsAccepted { game, stream: StreamKind::Custom, count: 20 });
        let route = l.route(black_box("/api/ingest/events"));
        w.emit(RequestServed { route, status: 202, duration: started.elapsed() });
    }
}

fn metrics(c: &mut Criterion) {
    let routes = ["/api/ingest/events", "/api/ingest/payments", "/healthz", "/readyz"];
    let games: Vec<String> = (0..20).map(|i| format!("g{i}")).collect();
    let games: Vec<&str> = games.iter().map(String::as_str).collect();
    let on = Registry::new(&routes, &games, true);
    let off = Registry::new(&routes, &games, false);
    let (w_on, w_off) = (on.writer(), off.writer());
    let game = w_on.layout().game("g7");
    let mut g = c.benchmark_group("metrics");
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("accepted_request_counted", |b| b.iter(|| count_request(&w_on, game, Instant::now())));
    g.bench_function("accepted_request_disabled", |b| b.iter(|| count_request(&w_off, game, Instant::now())));
    // A scrape: 8 shards' blocks summed and encoded, with every counter of a busy day set.
    let scrape = Registry::new(&routes, &games, true);
    let writers: Vec<ShardWriter> = (0..8).map(|_| scrape.writer()).collect();
    for w in &writers {
        for _ in 0..3 {
            count_request(w, game, Instant::now() - Duration::from_millis(3));
        }
    }
    g.bench_function("scrape_8_shards", |b| {
        b.iter(|| {
            let mut enc = Encoder::new();
            scrape.encode(&mut enc);
            black_box(enc.finish())
        })
    });
    g.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
