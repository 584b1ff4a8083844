//! The HyperLogLog sketch against Redis as the oracle: the same elements `PFADD`ed into a
//! real `redis-server` and added to a [`Sketch`] give the same registers, byte for byte,
//! and the same `PFCOUNT`; Redis's sparse and dense strings import; our dense and sparse
//! strings are accepted by `PFCOUNT` and `PFMERGE`; malformed strings are refused by both.
//!
//! The 10-million-element set runs with the others (about ten seconds); alone:
//! `cargo nextest run -p croupier-it -E 'test(/hll_registers_and_count_equal_redis_at_10_million/)'`.

use std::io::Write;

use croupier_it::redis::{RedisClient, RedisServer};
use croupier_protocol::hll::{redis_string, Encoding, HllError, Sketch, SketchWriter, REGISTERS};
use croupier_protocol::resp::Frame;

/// Elements per `PFADD`, and `PFADD`s per pipelined write.
const PER_PFADD: u64 = 2_000;
const PFADDS_PER_WRITE: usize = 32;

/// Element `i` of the test sets: lengths vary from 8 to 24 bytes, so every tail length of
/// the hash (0 to 7 bytes after the 8-byte blocks) and one to three blocks are exercised.
fn player(i: u64, out: &mut Vec<u8>) {
    write!(out, "player:{i}").unwrap();
    out.extend(std::iter::repeat_n(b'x', (i % 11) as usize));
}

/// Appends one RESP bulk string.
fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    write!(out, "${}\r\n", b.len()).unwrap();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `PFADD`s `n` elements, written by `element(i, buf)`, into `key` (pipelined, in
/// batches, Redis working on one batch while the next is built) and adds them to `sketch`.
fn pfadd_both(c: &mut RedisClient, key: &str, sketch: &mut Sketch, n: u64, mut element: impl FnMut(u64, &mut Vec<u8>)) {
    let (mut out, mut e) = (Vec::new(), Vec::new());
    let (mut i, mut in_flight) = (0, 0);
    while i < n || in_flight > 0 {
        out.clear();
        let mut commands = 0;
        while commands < PFADDS_PER_WRITE && i < n {
            let batch = (n - i).min(PER_PFADD);
            write!(out, "*{}\r\n", batch + 2).unwrap();
            bulk(&mut out, b"PFADD");
            bulk(&mut out, key.as_bytes());
            for _ in 0..batch {
                e.clear();
                element(i, &mut e);
                bulk(&mut out, &e);
                sketch.add(&e);
                i += 1;
            }
            commands += 1;
        }
        for reply in c.replies(in_flight).unwrap() {
            assert!(matches!(reply, Frame::Integer(0 | 1)), "PFADD replied {reply:?}");
        }
        c.send(&out).unwrap();
        in_flight = commands;
    }
}

fn get(c: &mut RedisClient, key: &str) -> Vec<u8> {
    match c.cmd(&["GET", key]) {
        Frame::BulkString(b) => b,
        other => panic!("GET {key}: {other:?}"),
    }
}

fn status(c: &mut RedisClient, args: &[&[u8]]) -> String {
    match c.cmd(args) {
        Frame::SimpleString(s) => String::from_utf8(s).unwrap(),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(args[0])),
    }
}

/// Redis's registers by `PFDEBUG GETREG`.
fn getreg(c: &mut RedisClient, key: &str) -> Vec<u8> {
    let Frame::Array(regs) = c.cmd(&["PFDEBUG", "GETREG", key]) else { panic!("PFDEBUG GETREG {key}") };
    regs.iter()
        .map(|r| match r {
            Frame::Integer(v) => u8::try_from(*v).unwrap(),
            other => panic!("register {other:?}"),
        })
        .collect()
}

/// What one set size showed.
#[derive(Debug)]
struct Checked {
    encoding_before_todense: String,
    compact_encoding: String,
    count: u64,
}

/// `n` elements into Redis and a sketch; everything that must agree, agrees.
fn check_set_against_redis(c: &mut RedisClient, n: u64) -> Checked {
    let key = format!("hll:oracle:{n}");
    let mut ours = Sketch::new();
    pfadd_both(c, &key, &mut ours, n, player);

    // The string as Redis keeps it (sparse for small sets) imports to our registers.
    let encoding_before_todense = status(c, &[b"PFDEBUG", b"ENCODING", key.as_bytes()]);
    let stored = get(c, &key);
    assert_eq!(Sketch::from_redis(&stored).unwrap(), ours, "n={n}: import of Redis's {encoding_before_todense} string");
    let mut merged = Sketch::new();
    merged.merge_redis(&stored).unwrap();
    assert_eq!(merged, ours, "n={n}: merge of Redis's {encoding_before_todense} string");

    // Same estimate.
    let count = ours.count();
    assert_eq!(c.int(&["PFCOUNT", &key]), count as i64, "n={n}: PFCOUNT");

    // Same registers, and byte for byte the same dense string (header with the cached
    // count included) once Redis has made the key dense and cached its count.
    assert_eq!(getreg(c, &key), ours.registers().to_vec(), "n={n}: PFDEBUG GETREG");
    let _ = c.int(&["PFDEBUG", "TODENSE", &key]);
    assert_eq!(c.int(&["PFCOUNT", &key]), count as i64);
    let dense = get(c, &key);
    assert_eq!(redis_string::header(&dense).unwrap().encoding, Encoding::Dense);
    assert!(dense == ours.to_redis_dense_counted(), "n={n}: dense strings differ");
    assert_eq!(Sketch::from_redis(&dense).unwrap(), ours);

    // Our dense string (count cache marked stale) is a HyperLogLog to Redis: PFCOUNT
    // computes the same, PFMERGE into Redis's key changes nothing, PFMERGE into an
    // empty key gives Redis's string.
    let exported = format!("hll:exported:{n}");
    assert_eq!(status(c, &[b"SET", exported.as_bytes(), &ours.to_redis_dense()]), "OK");
    assert_eq!(c.int(&["PFCOUNT", &exported]), count as i64, "n={n}: PFCOUNT of our string");
    assert_eq!(status(c, &[b"PFMERGE", key.as_bytes(), exported.as_bytes()]), "OK");
    assert_eq!(c.int(&["PFCOUNT", &key]), count as i64, "n={n}: merging the same set changes nothing");
    let union = format!("hll:union:{n}");
    assert_eq!(status(c, &[b"PFMERGE", union.as_bytes(), exported.as_bytes()]), "OK");
    assert_eq!(c.int(&["PFCOUNT", &union]), count as i64);
    assert!(get(c, &union) == ours.to_redis_dense_counted(), "n={n}: PFMERGE of our string");

    // Our compact string (sparse while Redis would keep it sparse) is accepted too, and
    // PFMERGE into an empty key keeps Redis's choice of encoding.
    let compact = ours.to_redis();
    let compact_key = format!("hll:compact:{n}");
    let merged_key = format!("hll:compact-merged:{n}");
    assert_eq!(status(c, &[b"SET", compact_key.as_bytes(), &compact]), "OK");
    let compact_encoding = status(c, &[b"PFDEBUG", b"ENCODING", compact_key.as_bytes()]);
    assert_eq!(status(c, &[b"PFMERGE", merged_key.as_bytes(), compact_key.as_bytes()]), "OK");
    assert_eq!(status(c, &[b"PFDEBUG", b"ENCODING", merged_key.as_bytes()]), compact_encoding, "n={n}");
    for k in [&compact_key, &merged_key] {
        assert_eq!(c.int(&["PFCOUNT", k]), count as i64, "n={n}: PFCOUNT of {k}");
        assert_eq!(getreg(c, k), ours.registers().to_vec(), "n={n}: registers of {k}");
    }
    let _ = c.cmd(&["DEL", &key, &exported, &union, &compact_key, &merged_key]);
    Checked { encoding_before_todense, compact_encoding, count }
}

#[test]
fn hll_registers_and_count_equal_redis_on_small_sets_stored_sparse() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    for n in [1, 2, 3, 10, 100, 1_000] {
        let checked = check_set_against_redis(&mut c, n);
        assert_eq!(checked.encoding_before_todense, "sparse", "n={n}: Redis keeps small sets sparse");
        assert_eq!(checked.compact_encoding, "sparse", "n={n}: so do we");
        eprintln!("n={n}: identical ({checked:?})");
    }
}

#[test]
fn hll_registers_and_count_equal_redis_on_large_sets_stored_dense() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    for n in [5_000, 20_000, 100_000, 1_000_000] {
        let checked = check_set_against_redis(&mut c, n);
        assert_eq!(checked.encoding_before_todense, "dense", "n={n}");
        assert_eq!(checked.compact_encoding, "dense", "n={n}");
        let error = (checked.count as f64 - n as f64).abs() / n as f64;
        assert!(error < 0.0081 * 4.0, "n={n}: relative error {error}");
        eprintln!("n={n}: identical ({checked:?})");
    }
}

#[test]
fn hll_registers_and_count_equal_redis_at_10_million() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    let n = 10_000_000;
    let checked = check_set_against_redis(&mut c, n);
    let error = (checked.count as f64 - n as f64).abs() / n as f64;
    assert!(error < 0.0081 * 4.0, "n={n}: relative error {error}");
    eprintln!("n={n}: identical ({checked:?})");
}

#[test]
fn hll_binary_and_empty_elements_land_in_redis_registers() {
    // Every length from 0 to 40 bytes, bytes above 0x7f included (the tail is read as
    // unsigned bytes).
    let redis = RedisServer::start();
    let mut c = redis.client();
    let fills = [0x00u8, 0x7f, 0x80, 0xff];
    let element = |i: u64, out: &mut Vec<u8>| {
        let (len, fill) = ((i / 4) as u8, fills[(i % 4) as usize]);
        out.extend((0..len).map(|k| if k % 3 == 0 { fill } else { fill.wrapping_add(k.wrapping_mul(37)) }));
    };
    let mut ours = Sketch::new();
    pfadd_both(&mut c, "hll:binary", &mut ours, 41 * 4, element);
    assert_eq!(getreg(&mut c, "hll:binary"), ours.registers().to_vec());
    assert_eq!(c.int(&["PFCOUNT", "hll:binary"]), ours.count() as i64);
}

#[test]
fn hll_merge_of_sketches_equals_pfmerge_and_multi_key_pfcount() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    // Two overlapping sets: 0..30,000 and 20,000..50,000 of the same names.
    let (mut a, mut b) = (Sketch::new(), Sketch::new());
    pfadd_both(&mut c, "hll:a", &mut a, 30_000, player);
    pfadd_both(&mut c, "hll:b", &mut b, 30_000, |i, out| player(i + 20_000, out));
    // A shared sketch takes the same merges (from a sketch and from Redis's string).
    let mut shared = SketchWriter::new();
    let reader = shared.reader();
    shared.merge(&a);
    shared.merge_redis(&get(&mut c, "hll:b")).unwrap();
    let mut union = a.clone();
    union.merge(&b);
    assert_eq!(c.int(&["PFCOUNT", "hll:a", "hll:b"]), union.count() as i64);
    assert_eq!(reader.count(), union.count());
    assert_eq!(reader.snapshot(), union);
    assert_eq!(status(&mut c, &[b"PFMERGE", b"hll:ab", b"hll:a", b"hll:b"]), "OK");
    assert_eq!(c.int(&["PFCOUNT", "hll:ab"]), union.count() as i64);
    assert!(get(&mut c, "hll:ab") == union.to_redis_dense_counted());
    let error = (union.count() as f64 - 50_000.0).abs() / 50_000.0;
    assert!(error < 0.0081 * 4.0, "relative error {error}");
}

/// A dense string with every register set by `value(i)`.
fn dense_with(value: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut regs = [0u8; REGISTERS];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = value(i);
    }
    let mut out = Vec::new();
    redis_string::encode_dense(&regs, None, &mut out);
    out
}

/// A sparse string of `ops`, its count cache stale (so Redis checks the opcodes).
fn sparse_of(ops: &[u8]) -> Vec<u8> {
    let mut s = b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\x80".to_vec();
    s.extend_from_slice(ops);
    s
}

#[test]
fn hll_malformed_strings_are_refused_by_redis_and_by_the_sketch() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    let mut short_dense = dense_with(|_| 1);
    short_dense.pop();
    let refused: Vec<(&str, Vec<u8>, HllError)> = vec![
        ("too short", b"HYLL\x01".to_vec(), HllError::TooShort { len: 5 }),
        ("bad magic", b"HYLX\x01\0\0\0\0\0\0\0\0\0\0\x80\x7f\xff".to_vec(), HllError::BadMagic),
        ("encoding 2", b"HYLL\x02\0\0\0\0\0\0\0\0\0\0\x80\x7f\xff".to_vec(), HllError::UnknownEncoding(2)),
        ("dense one byte short", short_dense, HllError::DenseLength { len: redis_string::DENSE_LEN - 1 }),
        ("sparse covering nothing", sparse_of(&[]), HllError::SparseIncomplete { covered: 0 }),
        ("sparse one register short", sparse_of(&[0x7f, 0xfe]), HllError::SparseIncomplete { covered: 16_383 }),
        ("sparse running past the end", sparse_of(&[0x7f, 0xff, 0x80]), HllError::SparseOverflow { offset: 18 }),
    ];
    for (what, bytes, error) in refused {
        assert_eq!(status(&mut c, &[b"SET", b"hll:bad", &bytes]), "OK");
        let reply = c.cmd(&["PFCOUNT", "hll:bad"]);
        assert!(
            matches!(&reply, Frame::Error(e) if e.contains("WRONGTYPE") || e.contains("INVALIDOBJ")),
            "{what}: Redis said {reply:?}"
        );
        assert_eq!(Sketch::from_redis(&bytes), Err(error), "{what}");
    }

    // An XZERO cut off by the end of the string: Redis reads its string's terminating NUL
    // as the missing byte and accepts it (PFADD never writes one); we refuse it.
    let cut = sparse_of(&[0x7f, 0xfe, 0x40]);
    assert_eq!(status(&mut c, &[b"SET", b"hll:cut", &cut]), "OK");
    assert_eq!(c.int(&["PFCOUNT", "hll:cut"]), 0);
    assert_eq!(Sketch::from_redis(&cut), Err(HllError::SparseTruncated { offset: 18 }));

    // What Redis accepts, the sketch accepts and counts the same: registers above 51
    // (which PFADD never writes), every register at the maximum, a valid sparse string
    // ending in runs of every opcode.
    let accepted: Vec<(&str, Vec<u8>)> = vec![
        ("registers 0..63", dense_with(|i| (i % 64) as u8)),
        ("every register 51", dense_with(|_| 51)),
        ("every register 1", dense_with(|_| 1)),
        ("sparse VAL runs and ZEROs", sparse_of(&[0xff, 0x83, 0x3f, 0x7f, 0xb7])),
    ];
    for (what, bytes) in accepted {
        assert_eq!(status(&mut c, &[b"SET", b"hll:edge", &bytes]), "OK");
        let ours = Sketch::from_redis(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c.int(&["PFCOUNT", "hll:edge"]), ours.count() as i64, "{what}");
        assert_eq!(getreg(&mut c, "hll:edge"), ours.registers().to_vec(), "{what}");
    }
}
