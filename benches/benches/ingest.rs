//! The ingest hot path: a realistic signed batch of 100 events (~300 B each) parsed and
//! validated from the request buffer, encoded as an rkyv batch entry, and wrapped in the
//! Redis command that appends it. Read with `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use croupier_protocol::batch::{self, AlignedVec, Batch, Records};
use croupier_protocol::envelope::EventBatch;
use croupier_protocol::resp::{self, EntryArgs, EntryMeta, Member};
use croupier_protocol::stream::StreamId;
use croupier_protocol::validate::{self, JsonBuffers, Limits};
use simd_json::prelude::*;

/// A batch of `n` game events of about 300 bytes each, as an SDK would send them.
fn batch_json(n: usize) -> Vec<u8> {
    let names = ["level_start", "level_complete", "economy_earn", "heartbeat", "boss_killed"];
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":1795617749{:03},"game_id":"g1","env":"prod","event":"{}","user_id":"user-{:06}","session_id":"sess-{:08x}","device_id":"dev-{:08x}","platform":"android","country":"BR","app_version":"3.14.2","event_id":"6f1c2b9e-0d3a-4c1e-9a57-{:012x}","props":{{"level":{},"coins":{},"mode":"ranked"}}}}"#,
                i % 1000,
                names[i % names.len()],
                i * 7919 % 1_000_000,
                i * 31,
                i * 17,
                i,
                i % 60,
                i * 13
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn parse_validate_encode(c: &mut Criterion) {
    let body = batch_json(100);
    let limits = Limits::default();
    let mut g = c.benchmark_group("ingest_batch_100");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_validate", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |buf| {
                let (mut e, mut cu) = (EventBatch::with_capacity(100, 320), EventBatch::default());
                validate::parse_events(buf, "g1", &limits, &mut || [0; 16], &mut e, &mut cu).unwrap();
                black_box((e, cu))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_validate_encode", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |buf| {
                let (mut e, mut cu) = (EventBatch::with_capacity(100, 320), EventBatch::default());
                validate::parse_events(buf, "g1", &limits, &mut || [0; 16], &mut e, &mut cu).unwrap();
                let a = batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(e) }).unwrap();
                let b2 = batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(cu) }).unwrap();
                black_box((a, b2))
            },
            BatchSize::SmallInput,
        )
    });
    let mut reused = JsonBuffers::default();
    g.bench_function("parse_validate_encode_reused_buffers", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |buf| {
                let (mut e, mut cu) = (EventBatch::with_capacity(100, 320), EventBatch::default());
                validate::parse_events_in(&mut reused, buf, "g1", &limits, &mut || [0; 16], &mut e, &mut cu).unwrap();
                let a = batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(e) }).unwrap();
                let b2 = batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(cu) }).unwrap();
                black_box((a, b2))
            },
            BatchSize::SmallInput,
        )
    });
    // As the shard runs it: the record batches and archive buffers are kept and reused too.
    let (mut e, mut cu) = (EventBatch::default(), EventBatch::default());
    let mut archives = [AlignedVec::new(), AlignedVec::new()];
    g.bench_function("parse_validate_encode_all_reused", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |buf| {
                e.clear();
                cu.clear();
                validate::parse_events_in(&mut reused, buf, "g1", &limits, &mut || [0; 16], &mut e, &mut cu).unwrap();
                for (records, archive) in [&mut e, &mut cu].into_iter().zip(archives.iter_mut()) {
                    let batch = Batch { accepted_at_ms: 1, records: Records::Events(std::mem::take(records)) };
                    *archive = batch::encode_into(&batch, std::mem::take(archive)).unwrap();
                    if let Records::Events(r) = batch.records {
                        *records = r;
                    }
                }
                black_box(archives[0].len() + archives[1].len())
            },
            BatchSize::SmallInput,
        )
    });
    // What runs on the raw bytes before the parse (lone surrogate escapes; the record count
    // does not run on a body this size): its share of `parse_validate_encode_all_reused`.
    g.bench_function("prescan_only", |b| {
        b.iter(|| {
            let body = black_box(body.as_slice());
            black_box(croupier_protocol::prescan::lone_surrogate(body));
            black_box(croupier_protocol::prescan::records_may_exceed(body, limits.max_records))
        })
    });
    g.bench_function("simd_json_parse_only", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |buf| black_box(simd_json::to_borrowed_value(buf).unwrap().as_array().map(|a| a.len())),
            BatchSize::SmallInput,
        )
    });
    let mut buffers = simd_json::Buffers::default();
    g.bench_function("simd_json_tape_parse_only", |b| {
        b.iter_batched_ref(
            || body.clone(),
            |buf| black_box(simd_json::to_tape_with_buffers(buf, &mut buffers).unwrap().0.len()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    eprintln!("ingest_batch_100: body {} bytes, {} bytes/event", body.len(), body.len() / 100);
}

fn xadd_encoding(c: &mut Criterion) {
    let mut body = batch_json(100);
    let (mut e, mut cu) = (EventBatch::default(), EventBatch::default());
    validate::parse_events(&mut body, "g1", &Limits::default(), &mut || [0; 16], &mut e, &mut cu).unwrap();
    let archive = batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(e) }).unwrap();
    let mut g = c.benchmark_group("xadd_command");
    g.throughput(Throughput::Bytes(archive.len() as u64));
    let mut out = Vec::with_capacity(archive.len() + 1024);
    let marks = batch::Marks::new(7);
    g.bench_function("ingest_eval_one_entry", |b| {
        b.iter(|| {
            out.clear();
            let entry = EntryArgs {
                stream: "analytics:events",
                minid: StreamId { ms: 1_795_617_749_000, seq: 0 },
                count: 80,
                archive: &archive,
                mark: marks.next(),
            };
            resp::ingest_begin(&mut out);
            resp::xadd(&mut out, &entry);
            let meta = [EntryMeta::of(&entry)];
            let member = Member {
                nonce_key: "croupier:nonce:g1:abcdef0123456789",
                digest: &[7; 32],
                entries: &meta,
                mark: entry.mark,
            };
            resp::ingest_end(&mut out, 602, &[member]);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse_validate_encode, xadd_encoding);
criterion_main!(benches);
