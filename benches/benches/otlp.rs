//! OTLP decoding beside JSON ingest: 100 log records as the OpenTelemetry SDKs export
//! them (protobuf, and OTLP/JSON) decoded and mapped into event batches, against the JSON
//! path parsing and validating 100 events of the same content, on one thread (records per
//! CPU second). Then allocations per request and per record, with buffers reused as a
//! shard reuses them (a counting allocator, which both sides pay alike). Read with
//! `benches/README.md`; figures in `perf/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, BatchSize, Criterion, Throughput};
use croupier_perf::alloc_count::{self, Counting};
use croupier_protocol::envelope::{EventBatch, PaymentBatch};
use croupier_protocol::otlp::{self, Context, Format, Signal, Sink, SpanEvents};
use croupier_protocol::validate::{self, JsonBuffers, Limits};

#[global_allocator]
static GLOBAL: Counting = Counting;

const T: u64 = 1_795_617_749_000_000_000;
const NAMES: [&str; 5] =
    ["progression.start", "progression.complete", "economy.earn", "session.heartbeat", "boss_killed"];

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, n: u32, bytes: &[u8]) {
    varint(out, u64::from(n) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn fixed64(out: &mut Vec<u8>, n: u32, v: u64) {
    varint(out, u64::from(n) << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn kv_str(out: &mut Vec<u8>, n: u32, key: &str, value: &str) {
    let mut any = Vec::new();
    field(&mut any, 1, value.as_bytes());
    let mut kv = Vec::new();
    field(&mut kv, 1, key.as_bytes());
    field(&mut kv, 2, &any);
    field(out, n, &kv);
}

fn kv_int(out: &mut Vec<u8>, n: u32, key: &str, value: u64) {
    let mut any = Vec::new();
    varint(&mut any, 3 << 3);
    varint(&mut any, value);
    let mut kv = Vec::new();
    field(&mut kv, 1, key.as_bytes());
    field(&mut kv, 2, &any);
    field(out, n, &kv);
}

/// What each record carries (the fields of the JSON path's events).
fn record_fields(i: usize) -> [(&'static str, String); 5] {
    [
        ("game.user_id", format!("user-{:06}", i * 7919 % 1_000_000)),
        ("game.session_id", format!("sess-{:08x}", i * 31)),
        ("game.device_id", format!("dev-{:08x}", i * 17)),
        ("game.platform", "android".into()),
        ("game.country", "BR".into()),
    ]
}

/// `n` log records in one ExportLogsServiceRequest, as an SDK exports them.
fn pb_logs(n: usize) -> Vec<u8> {
    let mut scope = Vec::new();
    for i in 0..n {
        let mut r = Vec::new();
        fixed64(&mut r, 1, T + i as u64);
        for (k, v) in record_fields(i) {
            kv_str(&mut r, 6, k, &v);
        }
        kv_int(&mut r, 6, "level", (i % 60) as u64);
        kv_str(&mut r, 6, "mode", "ranked");
        field(&mut r, 9, &[0x5b; 16]);
        field(&mut r, 10, &[0xee; 8]);
        fixed64(&mut r, 11, T + i as u64);
        field(&mut r, 12, NAMES[i % NAMES.len()].as_bytes());
        field(&mut scope, 2, &r);
    }
    let mut resource = Vec::new();
    kv_str(&mut resource, 1, "game.id", "g1");
    kv_str(&mut resource, 1, "deployment.environment.name", "prod");
    kv_str(&mut resource, 1, "service.version", "3.14.2");
    let mut rl = Vec::new();
    field(&mut rl, 1, &resource);
    field(&mut rl, 2, &scope);
    let mut out = Vec::new();
    field(&mut out, 1, &rl);
    out
}

fn json_kv(key: &str, v: &str) -> String {
    format!(r#"{{"key":"{key}","value":{{"stringValue":"{v}"}}}}"#)
}

/// The same records in OTLP/JSON.
fn json_logs(n: usize) -> Vec<u8> {
    let recs: Vec<String> = (0..n)
        .map(|i| {
            let mut attrs: Vec<String> = record_fields(i).iter().map(|(k, v)| json_kv(k, v)).collect();
            attrs.push(format!(r#"{{"key":"level","value":{{"intValue":"{}"}}}}"#, i % 60));
            attrs.push(json_kv("mode", "ranked"));
            format!(
                r#"{{"timeUnixNano":"{}","observedTimeUnixNano":"{}","eventName":"{}","traceId":"{}","spanId":"{}","attributes":[{}]}}"#,
                T + i as u64,
                T + i as u64,
                NAMES[i % NAMES.len()],
                "5b".repeat(16),
                "ee".repeat(8),
                attrs.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{},{},{}]}},"scopeLogs":[{{"logRecords":[{}]}}]}}]}}"#,
        json_kv("game.id", "g1"),
        json_kv("deployment.environment.name", "prod"),
        json_kv("service.version", "3.14.2"),
        recs.join(",")
    )
    .into_bytes()
}

/// The JSON path's batch of the same events.
fn json_events(n: usize) -> Vec<u8> {
    let names = ["level_start", "level_complete", "economy_earn", "heartbeat", "boss_killed"];
    let items: Vec<String> = (0..n)
        .map(|i| {
            let f = record_fields(i);
            format!(
                r#"{{"ts":{},"game_id":"g1","env":"prod","event":"{}","user_id":"{}","session_id":"{}","device_id":"{}","platform":"android","country":"BR","app_version":"3.14.2","props":{{"level":{},"mode":"ranked"}}}}"#,
                (T / 1_000_000) + i as u64,
                names[i % names.len()],
                f[0].1,
                f[1].1,
                f[2].1,
                i % 60
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

/// A shard's reused buffers.
#[derive(Default)]
struct Kept {
    json: JsonBuffers,
    events: EventBatch,
    custom: EventBatch,
    payments: PaymentBatch,
    props: croupier_protocol::otlp::props::Props,
    seen: croupier_protocol::otlp::occurrence::Occurrences,
    body: Vec<u8>,
}

fn decode_otlp(k: &mut Kept, format: Format, body: &[u8]) -> usize {
    let limits = Limits::default();
    let ctx = Context { game: "g1", limits: &limits, spans: SpanEvents::default() };
    k.body.clear();
    k.body.extend_from_slice(body);
    k.events.clear();
    k.custom.clear();
    k.payments.clear();
    let mut sink = Sink {
        events: &mut k.events,
        custom: &mut k.custom,
        payments: &mut k.payments,
        props: &mut k.props,
        seen: &mut k.seen,
    };
    let mut n = 0u8;
    let mut new_id = || {
        n = n.wrapping_add(1);
        [n; 16]
    };
    let s = otlp::decode(Signal::Logs, format, &mut k.body, &ctx, &mut k.json, &mut new_id, &mut sink).unwrap();
    assert_eq!(s.accepted, 100);
    s.accepted
}

fn parse_json(k: &mut Kept, body: &[u8]) -> usize {
    let limits = Limits::default();
    k.body.clear();
    k.body.extend_from_slice(body);
    k.events.clear();
    k.custom.clear();
    let mut n = 0u8;
    let mut new_id = || {
        n = n.wrapping_add(1);
        [n; 16]
    };
    validate::parse_events_in(&mut k.json, &mut k.body, "g1", &limits, &mut new_id, &mut k.events, &mut k.custom)
        .unwrap();
    k.events.len() + k.custom.len()
}

fn allocations(name: &str, body: &[u8], mut run: impl FnMut(&mut Kept, &[u8]) -> usize) {
    let mut k = Kept::default();
    for _ in 0..20 {
        run(&mut k, body);
    }
    let iters = 1_000u64;
    let before = alloc_count::count();
    let mut records = 0;
    for _ in 0..iters {
        records += run(&mut k, body);
    }
    let allocs = alloc_count::count() - before;
    println!(
        "{name}: {} body bytes, {:.2} allocations per request, {:.4} per record",
        body.len(),
        allocs as f64 / iters as f64,
        allocs as f64 / records as f64
    );
}

fn main() {
    let (pb, oj, js) = (pb_logs(100), json_logs(100), json_events(100));
    allocations("otlp protobuf logs x100", &pb, |k, b| decode_otlp(k, Format::Protobuf, b));
    allocations("otlp json logs x100", &oj, |k, b| decode_otlp(k, Format::Json, b));
    allocations("json ingest events x100", &js, parse_json);

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("decode_100_records");
    g.throughput(Throughput::Elements(100));
    let mut k = Kept::default();
    g.bench_function("otlp_protobuf_logs", |b| {
        b.iter_batched_ref(|| (), |_| black_box(decode_otlp(&mut k, Format::Protobuf, &pb)), BatchSize::SmallInput)
    });
    g.bench_function("otlp_json_logs", |b| {
        b.iter_batched_ref(|| (), |_| black_box(decode_otlp(&mut k, Format::Json, &oj)), BatchSize::SmallInput)
    });
    g.bench_function("json_ingest_events", |b| {
        b.iter_batched_ref(|| (), |_| black_box(parse_json(&mut k, &js)), BatchSize::SmallInput)
    });
    g.finish();
    c.final_summary();
}
