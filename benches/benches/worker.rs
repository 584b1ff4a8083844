//! The worker's hot path: filling `analytics.events` column blocks from archived batch
//! records (read in place) and laying the block out in the native format, with and
//! without LZ4 frames; folding the events into `analytics.user_days` rows. Read with `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use croupier_dataplane::clickhouse::partitions::PartitionedRows;
use croupier_dataplane::clickhouse::rows::{unix_seconds, ArchivedEventRef, EventFields, EventRows, Events, Table};
use croupier_dataplane::clickhouse::user_days::UserDayFold;
use croupier_protocol::batch::{self, ArchivedRecords, Batch, Records};
use croupier_protocol::clickhouse::block::ColumnData;
use croupier_protocol::clickhouse::order::sort_order;
use croupier_protocol::clickhouse::packet;
use croupier_protocol::envelope::{text, Event, EventBatch};

const ROWS: usize = 10_000;

fn archive() -> rkyv::util::AlignedVec {
    let names = ["level_start", "level_complete", "economy_earn", "heartbeat", "session_start"];
    let events: Vec<Event> = (0..ROWS)
        .map(|i| Event {
            ts_ms: 1_795_617_749_000 + i as i64,
            game_id: "g1".into(),
            env: "prod".into(),
            event: names[i % names.len()].into(),
            user_id: format!("user-{:06}", i * 7919 % 1_000_000),
            session_id: format!("sess-{:08x}", i / 20),
            device_id: format!("dev-{:08x}", i / 20),
            channel: "gp".into(),
            platform: "android".into(),
            country: "BR".into(),
            app_version: "3.14.2".into(),
            event_id: (i as u128).to_le_bytes(),
            props: format!(r#"{{"level":{},"coins":{},"mode":"ranked"}}"#, i % 60, i * 13),
        })
        .collect();
    let mut b = EventBatch::default();
    events.iter().for_each(|e| b.push(e).unwrap());
    batch::encode(&Batch { accepted_at_ms: 1, records: Records::Events(b) }).unwrap()
}

fn block_encoding(c: &mut Criterion) {
    let bytes = archive();
    let archived = batch::access(&bytes).unwrap();
    let ArchivedRecords::Events(events) = &archived.records else { unreachable!("the archive holds events") };
    let mut rows = EventRows::new();
    let mut out = Vec::with_capacity(4 << 20);
    let mut scratch = Vec::with_capacity(4 << 20);
    let mut g = c.benchmark_group("events_block_10k_rows");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("fill_columns", |b| {
        b.iter(|| {
            rows.clear();
            for index in 0..events.len() {
                rows.push(&ArchivedEventRef { batch: events, index }, 1);
            }
            black_box(rows.rows)
        })
    });
    // As the worker's sink fills them: each row first goes to its partition's block.
    let mut by_partition: PartitionedRows<Events> = PartitionedRows::new(100, true);
    g.bench_function("fill_columns_by_partition", |b| {
        b.iter(|| {
            by_partition.clear();
            for index in 0..events.len() {
                let e = ArchivedEventRef { batch: events, index };
                by_partition.block(unix_seconds(e.ts_ms())).push(&e, 1);
            }
            black_box(by_partition.rows())
        })
    });
    for (name, lz4) in [("fill_and_encode_plain", false), ("fill_and_encode_lz4", true)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rows.clear();
                for index in 0..events.len() {
                    rows.push(&ArchivedEventRef { batch: events, index }, 1);
                }
                out.clear();
                packet::data(&mut out, 54412, lz4, &rows.columns, rows.rows, &mut scratch);
                black_box(out.len())
            })
        });
    }
    // As the worker sends them: in the table's sort-key order (the archive's events are in
    // time order with the event names interleaved, so the order is not the pushed one).
    g.bench_function("fill_sort_and_encode_lz4", |b| {
        b.iter(|| {
            rows.clear();
            for index in 0..events.len() {
                rows.push(&ArchivedEventRef { batch: events, index }, 1);
            }
            let order = sort_order(&rows.columns, rows.rows, Events::ORDER_BY);
            assert!(order.is_some(), "the rows need sorting");
            out.clear();
            packet::data_in_order(&mut out, 54412, true, (&rows.columns, rows.rows, order.as_deref()), &mut scratch);
            black_box(out.len())
        })
    });
    g.bench_function("sort_order_only", |b| {
        b.iter(|| black_box(sort_order(&rows.columns, rows.rows, Events::ORDER_BY).map(|o| o.len())))
    });
    // The archive's ids are made in sequence (a counter in 16 bits of one half, the rest
    // zero); ids assigned at ingest, or sent as UUID v4 or v7, are random in both halves.
    let random_ids = random_id_rows(events);
    g.bench_function("sort_order_only_random_ids", |b| {
        b.iter(|| black_box(sort_order(&random_ids.columns, random_ids.rows, Events::ORDER_BY).map(|o| o.len())))
    });
    g.finish();
    out.clear();
    packet::data(&mut out, 54412, false, &rows.columns, rows.rows, &mut scratch);
    let plain = out.len();
    out.clear();
    packet::data(&mut out, 54412, true, &rows.columns, rows.rows, &mut scratch);
    eprintln!("events_block_10k_rows: {plain} bytes plain, {} bytes LZ4", out.len());
}

/// The archive's rows with each `event_id` replaced by 16 pseudo-random bytes.
fn random_id_rows(events: &croupier_protocol::envelope::ArchivedEventBatch) -> EventRows {
    let mut rows = EventRows::new();
    for index in 0..events.len() {
        rows.push(&ArchivedEventRef { batch: events, index }, 1);
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in rows.columns.iter_mut().filter(|c| c.name == "event_id") {
        if let ColumnData::Fixed { bytes, .. } = &mut c.data {
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
    }
    rows
}

/// The `user_days` rows of 10,000 events as the worker's sink folds them
/// (`clickhouse::user_days`): one look-up per event, then the rows sorted into their block.
fn user_days_fold(c: &mut Criterion) {
    let bytes = archive();
    let archived = batch::access(&bytes).unwrap();
    let ArchivedRecords::Events(events) = &archived.records else { unreachable!("the archive holds events") };
    let mut fold = UserDayFold::default();
    let mut blocks = Vec::new();
    let fill = |fold: &mut UserDayFold| {
        fold.clear();
        for index in 0..events.len() {
            let f = |i| events.field(index, i);
            fold.add(
                unix_seconds(events.ts_ms(index)),
                f(text::GAME_ID),
                f(text::ENV),
                f(text::USER_ID),
                f(text::EVENT),
            );
        }
    };
    let mut g = c.benchmark_group("user_days_fold_10k_rows");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("fold", |b| {
        b.iter(|| {
            fill(&mut fold);
            black_box(fold.len())
        })
    });
    g.bench_function("fold_and_block", |b| {
        b.iter(|| {
            fill(&mut fold);
            fold.blocks(100, &mut blocks);
            black_box(blocks.len())
        })
    });
    g.finish();
    eprintln!("user_days_fold_10k_rows: {} rows of user_days", fold.len());
}

criterion_group!(benches, block_encoding, user_days_fold);
criterion_main!(benches);
