//! Reading a `SELECT`'s answer: one block of 20,000 rows (~3 MB) arriving in pieces, as
//! the Analytics API's connection to ClickHouse receives it, decoded from its start after
//! each piece against scanned as it comes and decoded once; and the same block
//! compressed, as a query asking for compression receives it (its frames taken, checked
//! and decompressed one at a time, then scanned and decoded). Read with
//! `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use croupier_protocol::clickhouse::block::{write_block, Column, ColumnData};
use croupier_protocol::clickhouse::compress::compress_into;
use croupier_protocol::clickhouse::packet::{self, server, ServerPacket};
use croupier_protocol::clickhouse::scan::{PacketScan, Scanned};
use croupier_protocol::clickhouse::unframe::Unframe;
use croupier_protocol::clickhouse::wire::{put_str, put_varint};
use croupier_protocol::clickhouse::CLIENT_REVISION;

const ROWS: usize = 20_000;

/// A `Data` packet as the server sends a result's block: a user id, an event name, a
/// count and a text of ~120 bytes per row.
fn result_packet() -> Vec<u8> {
    let mut ids = ColumnData::fixed(8);
    let mut users = ColumnData::String(Default::default());
    let mut events = ColumnData::String(Default::default());
    let mut texts = ColumnData::String(Default::default());
    for i in 0..ROWS {
        ids.push_fixed(&(i as u64).to_le_bytes());
        users.push_str(format!("user-{i:08}").as_bytes());
        events.push_str(["level_start", "level_complete", "economy_earn"][i % 3].as_bytes());
        texts.push_str(format!("{i}-{}", "x".repeat(112)).as_bytes());
    }
    let columns = [
        Column::new("n", "UInt64", ids),
        Column::new("user_id", "String", users),
        Column::new("event", "String", events),
        Column::new("text", "String", texts),
    ];
    let mut out = Vec::new();
    put_varint(&mut out, server::DATA);
    put_str(&mut out, b"");
    write_block(&mut out, CLIENT_REVISION, &columns, ROWS);
    out
}

/// `packet` as it comes in the answer to a query that asked for compression: its code and
/// table name, then its block in LZ4 frames of at most 1 MiB, as ClickHouse writes them.
fn compressed(packet: &[u8]) -> Vec<u8> {
    let head = 2; // the code and an empty table name
    let mut out = packet[..head].to_vec();
    compress_into(&packet[head..], 1 << 20, &mut out);
    out
}

/// Takes `wire`'s frames as `piece` bytes at a time arrive, each once whole, scanning the
/// packet's uncompressed bytes after each; decodes the packet once the scan ends.
fn unframed_in_pieces(wire: &[u8], piece: usize) -> usize {
    let mut u = Unframe::default();
    let mut scan = PacketScan::default();
    let (mut taken, mut held) = (0, 0);
    while taken < wire.len() {
        held = (held + piece).min(wire.len());
        while let Ok(Some(n)) = u.take_frame(&wire[taken..held]) {
            taken += n;
            if let Scanned::Ends(n) = scan.resume(u.plain(), CLIENT_REVISION) {
                return rows(&u.plain()[..n]);
            }
        }
    }
    0
}

fn rows(bytes: &[u8]) -> usize {
    match packet::decode(bytes, CLIENT_REVISION) {
        Ok(Some((ServerPacket::Rows(b), _))) => b.rows,
        _ => 0,
    }
}

fn block_in_pieces(c: &mut Criterion) {
    let bytes = result_packet();
    assert_eq!(rows(&bytes), ROWS);
    let mut g = c.benchmark_group("result_block_20k_rows");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.sample_size(10);
    g.bench_function("decode_whole", |b| b.iter(|| rows(black_box(&bytes))));
    g.bench_function("scan_whole", |b| {
        b.iter(|| PacketScan::default().resume(black_box(&bytes), CLIENT_REVISION));
    });
    for piece in [64 << 10, 16 << 10] {
        g.bench_function(format!("in_{}k_pieces_decoded_after_each", piece >> 10), |b| {
            b.iter(|| {
                let mut held = 0;
                loop {
                    held = (held + piece).min(bytes.len());
                    if let Ok(Some((ServerPacket::Rows(r), _))) = packet::decode(&bytes[..held], CLIENT_REVISION) {
                        return r.rows;
                    }
                }
            });
        });
        g.bench_function(format!("in_{}k_pieces_scanned_then_decoded", piece >> 10), |b| {
            b.iter(|| {
                let mut scan = PacketScan::default();
                let mut held = 0;
                loop {
                    held = (held + piece).min(bytes.len());
                    if let Scanned::Ends(n) = scan.resume(&bytes[..held], CLIENT_REVISION) {
                        return rows(&bytes[..n]);
                    }
                }
            });
        });
    }
    let wire = compressed(&bytes);
    assert_eq!(unframed_in_pieces(&wire, 16 << 10), ROWS);
    g.bench_function("compressed_in_16k_pieces_unframed_scanned_then_decoded", |b| {
        b.iter(|| unframed_in_pieces(black_box(&wire), 16 << 10));
    });
    g.finish();
}

criterion_group!(benches, block_in_pieces);
criterion_main!(benches);
