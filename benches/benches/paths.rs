//! The remaining per-request hot paths: HTTP head parsing, signature verification, gzip
//! decoding, and measuring a large Redis reply before parsing it. Read with
//! `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use croupier_dataplane::data_port::FIELDS;
use croupier_dataplane::http::body;
use croupier_dataplane::http::request::Head;
use croupier_protocol::{resp, signature};

fn head() -> Vec<u8> {
    b"POST /api/ingest/events HTTP/1.1\r\nHost: ingest.example.com\r\nUser-Agent: UnitySDK/3.1\r\n\
Content-Type: application/json\r\nContent-Length: 30935\r\nX-Game-Id: g1\r\nX-Timestamp: 1795617749\r\n\
X-Nonce: 5f2b1c9a0e7d4c3b\r\nX-Signature: JOx0CVjuKkoTi8E5nJK86bAjCuwgAh0osG3SQ+cSanI=\r\nAccept: */*\r\n\r\n"
        .to_vec()
}

fn body_bytes() -> Vec<u8> {
    let one = r#"{"ts":1795617749000,"game_id":"g1","env":"prod","event":"level_start","user_id":"user-000123","session_id":"sess-0000abcd","device_id":"dev-0000abcd","platform":"android","country":"BR","app_version":"3.14.2","props":{"level":7,"coins":1234,"mode":"ranked"}}"#;
    format!("[{}]", vec![one; 100].join(",")).into_bytes()
}

fn paths(c: &mut Criterion) {
    let h = head();
    let mut g = c.benchmark_group("request");
    g.throughput(criterion::Throughput::Elements(1));
    // Into a head reused from request to request, as a connection does.
    let mut head = Head::default();
    g.bench_function("http_head_parse", |b| {
        b.iter(|| assert!(head.parse_from(black_box(&h), &FIELDS).unwrap()));
    });
    let body = body_bytes();
    let sig = signature::sign(b"secret", "1795617749", "5f2b1c9a0e7d4c3b", &body);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("signature_verify_30k", |b| {
        b.iter(|| assert!(signature::verify(b"secret", "1795617749", "5f2b1c9a0e7d4c3b", black_box(&body), &sig)))
    });
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&body).unwrap();
    let gz = enc.finish().unwrap();
    let mut out = Vec::with_capacity(body.len());
    g.bench_function("gunzip_30k", |b| b.iter(|| body::gunzip(black_box(&gz), 10 << 20, &mut out).unwrap()));
    g.finish();

    // An XREADGROUP reply of 200 entries holding 30 KB archives.
    let mut reply = Vec::new();
    reply.extend_from_slice(b"*1\r\n*2\r\n$16\r\nanalytics:events\r\n*200\r\n");
    for i in 0..200 {
        let id = format!("1795617749000-{i}");
        reply.extend_from_slice(format!("*2\r\n${}\r\n{id}\r\n*6\r\n$3\r\nfmt\r\n$5\r\nrkyv1\r\n$1\r\nn\r\n$3\r\n100\r\n$5\r\nbatch\r\n$30000\r\n", id.len()).as_bytes());
        reply.extend(std::iter::repeat_n(b'x', 30_000));
        reply.extend_from_slice(b"\r\n");
    }
    let mut g = c.benchmark_group("redis_reply_6mb");
    g.throughput(Throughput::Bytes(reply.len() as u64));
    g.bench_function("frame_len", |b| {
        b.iter(|| assert_eq!(resp::frame_len(black_box(&reply)).unwrap(), Some(reply.len())))
    });
    g.bench_function("decode", |b| b.iter(|| black_box(resp::decode_reply(black_box(&reply)).unwrap())));
    g.finish();
}

criterion_group!(benches, paths);
criterion_main!(benches);
