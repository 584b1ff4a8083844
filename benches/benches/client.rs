//! Client ingest beside signed ingest, on one thread: what each route does to a request
//! before its round trip to Redis, for the same 100 events. Signed (`/api/ingest/events`):
//! the body's SHA-256, the HMAC of the signature, and `parse_events_in`. Client
//! (`/api/analytics/ingest`): the SHA-256 of the body and its header scope, the write
//! key's look-up, and `parse_events_scoped` with the game's filters (an allow-list of
//! the five names sent, and sampling at 100 % and at 50 %). Both derive event ids from
//! the digest, as the routes do. The HTTP, the rate cells, the archive and Redis are the
//! same code on both routes and are not in these figures. Records per CPU second; figures
//! in `perf/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use criterion::{black_box, BatchSize, Criterion, Throughput};
use croupier_control::config::{EventIds, FilteredEvents};
use croupier_dataplane::client::filters::FilterView;
use croupier_dataplane::event_id::IdDeriver;
use croupier_protocol::envelope::EventBatch;
use croupier_protocol::signature;
use croupier_protocol::validate::{self, JsonBuffers, Limits, RecordView, Scope};
use sha2::{Digest, Sha256};

const NAMES: [&str; 5] = ["level_start", "level_complete", "economy_earn", "heartbeat", "login"];
const SECRET: &[u8] = b"secret-one";

/// 100 events as the SDK sends them (every column, a UUID event id is left out so both
/// routes derive ids the same way).
fn body(game_field: bool) -> Vec<u8> {
    let items: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"ts":{},{}"env":"prod","event":"{}","user_id":"user-{:06}","session_id":"sess-{:08x}","device_id":"dev-{:08x}","platform":"web","app_version":"3.14.2","props":{{"level":{},"mode":"ranked"}}}}"#,
                1_795_617_749_000u64 + i as u64,
                if game_field { r#""game_id":"g1","# } else { "" },
                NAMES[i % NAMES.len()],
                i * 7919 % 1_000_000,
                i * 31,
                i * 17,
                i % 60
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

#[derive(Default)]
struct Kept {
    json: JsonBuffers,
    events: EventBatch,
    custom: EventBatch,
    body: Vec<u8>,
}

fn signed(k: &mut Kept, wire: &[u8], sig: &str, ids: EventIds) -> usize {
    let sha = signature::body_sha256(wire);
    assert!(signature::verify_sha256(SECRET, "1795617749", "nonce-1", &sha, sig));
    k.body.clear();
    k.body.extend_from_slice(wire);
    k.events.clear();
    k.custom.clear();
    let mut ids = IdDeriver::new(&sha, ids);
    let mut new_id = || ids.next_id();
    let limits = Limits::default();
    validate::parse_events_in(&mut k.json, &mut k.body, "g1", &limits, &mut new_id, &mut k.events, &mut k.custom)
        .unwrap();
    k.events.len() + k.custom.len()
}

fn client(k: &mut Kept, wire: &[u8], keys: &HashMap<String, String>, filters: &FilterView) -> usize {
    let game = keys.get("pk_live_bench_key_0001").unwrap();
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"")
        .chain_update(b"\n")
        .chain_update(b"prod\n")
        .chain_update(wire)
        .finalize()
        .into();
    k.body.clear();
    k.body.extend_from_slice(wire);
    k.events.clear();
    k.custom.clear();
    let mut ids = IdDeriver::new(&digest, EventIds::default());
    let mut new_id = |_: Option<&str>| ids.next_id();
    let mut keep = |r: &RecordView<'_>| filters.event(r, FilteredEvents::Drop);
    let scope = Scope { game: Some(game), fill_game: true, env: Some("prod") };
    let limits = Limits::default();
    validate::parse_events_scoped(
        &mut k.json,
        &mut k.body,
        &scope,
        &limits,
        &mut new_id,
        &mut keep,
        &mut k.events,
        &mut k.custom,
    )
    .unwrap();
    k.events.len() + k.custom.len()
}

fn filters(sample: u32) -> FilterView {
    let dir = std::env::temp_dir().join(format!("croupier-bench-client-{}-{sample}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("filters.json");
    let names: Vec<String> = NAMES.iter().map(|n| format!("{n:?}")).collect();
    let text =
        format!(r#"{{"g1|prod":{{"events":[{}],"payments_enabled":true,"sample_global":{sample}}}}}"#, names.join(","));
    std::fs::write(&path, text).unwrap();
    FilterView::new(Some(path), Duration::from_secs(3600), Default::default())
}

fn main() {
    let (signed_body, client_body) = (body(true), body(false));
    let sig = signature::sign(SECRET, "1795617749", "nonce-1", &signed_body);
    let keys: HashMap<String, String> = HashMap::from([("pk_live_bench_key_0001".into(), "g1".into())]);
    let (all, half) = (filters(100), filters(50));
    let mut k = Kept::default();
    assert_eq!(client(&mut k, &client_body, &keys, &all), 100);
    let kept = client(&mut k, &client_body, &keys, &half);
    println!("sampling at 50 %: {kept} of 100 kept");

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("prepare_100_events");
    g.throughput(Throughput::Elements(100));
    g.bench_function("signed_ingest", |b| {
        b.iter_batched_ref(
            || (),
            |_| black_box(signed(&mut k, &signed_body, &sig, EventIds::Siphash)),
            BatchSize::SmallInput,
        )
    });
    // The same with the ids of earlier versions (`server.event_ids = "sha256"`).
    g.bench_function("signed_ingest_sha256_ids", |b| {
        b.iter_batched_ref(
            || (),
            |_| black_box(signed(&mut k, &signed_body, &sig, EventIds::Sha256)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("client_ingest_filters_all_kept", |b| {
        b.iter_batched_ref(|| (), |_| black_box(client(&mut k, &client_body, &keys, &all)), BatchSize::SmallInput)
    });
    g.bench_function("client_ingest_sampled_50", |b| {
        b.iter_batched_ref(|| (), |_| black_box(client(&mut k, &client_body, &keys, &half)), BatchSize::SmallInput)
    });
    g.finish();
    c.final_summary();
}
