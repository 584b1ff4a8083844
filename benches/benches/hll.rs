//! The HyperLogLog sketch: adds per second on pre-hashed input for each register layout
//! (plain bytes, atomic bytes, atomic words, Redis's packed 6-bit dense layout), the hash
//! apart, merge, estimate, and Redis string import/export. Read with `benches/README.md`
//! and docs/aggregation.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use croupier_protocol::hll::{hash_element, index_and_rank, murmur_hash64a, Sketch, SketchWriter, REGISTERS, SEED};

/// Hashes added per iteration of the add benchmarks.
const ADDS: usize = 1 << 20;

/// `n` well-mixed 64-bit hashes (SplitMix64 of a counter: distinct and uniform).
fn hashes(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| {
            let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

/// Registers packed eight to an `AtomicU64` word (the alternative to one `AtomicU8` per
/// register), updated by a single writer.
struct AtomicWords(Box<[AtomicU64]>);

impl AtomicWords {
    fn new() -> Self {
        AtomicWords((0..REGISTERS / 8).map(|_| AtomicU64::new(0)).collect())
    }

    #[inline(always)]
    fn add_hash(&mut self, hash: u64) -> bool {
        let (index, rank) = index_and_rank(hash);
        let word = &self.0[index / 8];
        let shift = (index % 8) * 8;
        let w = word.load(Relaxed);
        if u64::from(rank) > (w >> shift) & 0xff {
            word.store((w & !(0xff << shift)) | u64::from(rank) << shift, Relaxed);
            true
        } else {
            false
        }
    }
}

/// Redis's own in-memory layout: 6-bit registers packed in 12,288 bytes (+1 so the last
/// register's two-byte access stays in bounds).
struct Packed6(Box<[u8; REGISTERS * 6 / 8 + 1]>);

impl Packed6 {
    #[inline(always)]
    fn add_hash(&mut self, hash: u64) -> bool {
        let (index, rank) = index_and_rank(hash);
        let (byte, bit) = (index * 6 / 8, (index * 6) % 8);
        let pair = u16::from(self.0[byte]) | u16::from(self.0[byte + 1]) << 8;
        if u16::from(rank) > (pair >> bit) & 63 {
            let pair = (pair & !(63 << bit)) | u16::from(rank) << bit;
            self.0[byte] = pair as u8;
            self.0[byte + 1] = (pair >> 8) as u8;
            true
        } else {
            false
        }
    }
}

fn add(c: &mut Criterion) {
    let hs = hashes(ADDS);
    let mut g = c.benchmark_group("hll_add_prehashed_1m");
    g.throughput(Throughput::Elements(ADDS as u64));
    // Each iteration adds the same 2^20 hashes to a new, empty sketch (made outside the
    // timing).
    g.bench_function("plain_u8", |b| {
        b.iter_batched_ref(
            Sketch::new,
            |s| {
                for &h in &hs {
                    s.add_hash(h);
                }
            },
            BatchSize::LargeInput,
        )
    });
    // The same without the comparison's branch: always store the maximum.
    g.bench_function("plain_u8_branchless", |b| {
        b.iter_batched_ref(
            || Box::new([0u8; REGISTERS]),
            |regs| {
                for &h in &hs {
                    let (i, rank) = index_and_rank(h);
                    regs[i] = regs[i].max(rank);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("atomic_u8", |b| {
        b.iter_batched_ref(
            SketchWriter::new,
            |w| {
                for &h in &hs {
                    w.add_hash(h);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("atomic_u64_words", |b| {
        b.iter_batched_ref(
            AtomicWords::new,
            |w| {
                for &h in &hs {
                    w.add_hash(h);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("packed_6bit_redis_layout", |b| {
        b.iter_batched_ref(
            || Packed6(Box::new([0; REGISTERS * 6 / 8 + 1])),
            |w| {
                for &h in &hs {
                    w.add_hash(h);
                }
            },
            BatchSize::LargeInput,
        )
    });
    // The shared sketch while another thread estimates from it without pause (the worst
    // case of a metrics endpoint: it normally reads every few seconds).
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = SketchWriter::new();
    let reader = writer.reader();
    let reading = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Relaxed) {
                black_box(reader.count());
                reads += 1;
            }
            reads
        })
    };
    g.bench_function("atomic_u8_while_read", |b| {
        b.iter(|| {
            for &h in &hs {
                writer.add_hash(h);
            }
        })
    });
    stop.store(true, Relaxed);
    let _ = reading.join();
    // Steady state of a large set: the registers already hold these hashes (no store).
    let mut full = Sketch::new();
    for &h in &hs {
        full.add_hash(h);
    }
    g.bench_function("plain_u8_no_change", |b| {
        b.iter(|| {
            for &h in &hs {
                full.add_hash(h);
            }
        })
    });
    g.finish();
}

/// Typical user ids: the project's test ids, a numeric id, a UUID.
fn user_ids(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!("user-{i:06}").into_bytes(),
            1 => format!("{}", 100_000_000 + i * 7).into_bytes(),
            _ => format!("{:08x}-1f2e-4d3c-8b4a-{:012x}", i * 2_654_435_761, i).into_bytes(),
        })
        .collect()
}

fn hash(c: &mut Criterion) {
    let ids = user_ids(4096);
    let mean_len = ids.iter().map(Vec::len).sum::<usize>() / ids.len();
    eprintln!("user ids: mean length {mean_len} bytes");
    let mut g = c.benchmark_group("hll_hash");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("murmur64a_user_ids", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(murmur_hash64a(black_box(id), SEED));
            }
        })
    });
    let mut s = Sketch::new();
    g.bench_function("hash_and_add_user_ids", |b| {
        b.iter(|| {
            for id in &ids {
                s.add(black_box(id));
            }
        })
    });
    g.finish();
}

fn whole_sketch(c: &mut Criterion) {
    // Two sketches of a million distinct elements each.
    let (mut a, mut b) = (Sketch::new(), Sketch::new());
    let mut e = Vec::new();
    for i in 0..1_000_000u64 {
        e.clear();
        write!(e, "user-a-{i}").unwrap();
        a.add(&e);
        e.clear();
        write!(e, "user-b-{i}").unwrap();
        b.add(&e);
    }
    let mut small = Sketch::new();
    for i in 0..1_000u64 {
        small.add(&hash_element(&i.to_le_bytes()).to_le_bytes());
    }
    let mut g = c.benchmark_group("hll_sketch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("merge_plain", |bch| {
        bch.iter_batched_ref(|| a.clone(), |x| x.merge(black_box(&b)), BatchSize::SmallInput)
    });
    let mut shared = SketchWriter::new();
    shared.merge(&a);
    g.bench_function("merge_into_atomic", |bch| bch.iter(|| shared.merge(black_box(&b))));
    g.bench_function("estimate_plain_1m", |bch| bch.iter(|| black_box(&a).count()));
    g.bench_function("estimate_plain_1k", |bch| bch.iter(|| black_box(&small).count()));
    let reader = shared.reader();
    g.bench_function("estimate_atomic_reader_1m", |bch| bch.iter(|| reader.count()));
    g.bench_function("snapshot_atomic_reader", |bch| bch.iter(|| reader.snapshot()));

    let dense = a.to_redis_dense();
    let sparse = small.to_redis_sparse().unwrap();
    eprintln!("sparse string of 1,000 elements: {} bytes", sparse.len());
    g.bench_function("import_dense", |bch| bch.iter(|| Sketch::from_redis(black_box(&dense)).unwrap()));
    g.bench_function("merge_redis_dense", |bch| {
        bch.iter_batched_ref(|| b.clone(), |x| x.merge_redis(black_box(&dense)).unwrap(), BatchSize::SmallInput)
    });
    g.bench_function("import_sparse_1k", |bch| bch.iter(|| Sketch::from_redis(black_box(&sparse)).unwrap()));
    let mut out = Vec::with_capacity(dense.len());
    g.bench_function("export_dense", |bch| {
        bch.iter(|| {
            out.clear();
            a.write_redis_dense(&mut out);
        })
    });
    g.bench_function("export_sparse_1k", |bch| bch.iter(|| black_box(&small).to_redis_sparse()));
    g.bench_function("export_compact_1m", |bch| bch.iter(|| black_box(&a).to_redis()));
    g.finish();
}

criterion_group!(benches, add, hash, whole_sketch);
criterion_main!(benches);
