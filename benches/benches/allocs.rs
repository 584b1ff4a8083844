//! Allocations per ingest request, step by step, with a counting allocator: the steps a
//! shard runs for one request between reading it and writing the answer (HTTP head,
//! credentials, signature, validation, archives, the Redis command, the `202`), with its
//! buffers reused as the shard reuses them. The round trip to Redis itself (reply
//! channel, timer) is not counted. Read with `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use croupier_control::config::EventIds;
use croupier_dataplane::auth;
use croupier_dataplane::data_port::{self, FIELDS};
use croupier_dataplane::event_id::IdDeriver;
use croupier_dataplane::http::request::Head;
use croupier_dataplane::http::response::Response;
use croupier_perf::alloc_count::{self, Counting};
use croupier_protocol::batch::{self, AlignedVec, Batch, Records};
use croupier_protocol::envelope::{EventBatch, PaymentBatch};
use croupier_protocol::resp::{self, EntryArgs, EntryMeta, Member};
use croupier_protocol::signature;
use croupier_protocol::stream::StreamId;
use croupier_protocol::validate::{self, JsonBuffers, Limits};

#[global_allocator]
static GLOBAL: Counting = Counting;

const GAME: &str = "g1";
const SECRET: &str = "bench-secret";
const TS: i64 = 1_795_617_749;

/// `n` game events of about 300 bytes, as an SDK sends them.
fn events_body(n: usize) -> Vec<u8> {
    let names = ["level_start", "level_complete", "economy_earn", "heartbeat", "boss_killed"];
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":{TS},"game_id":"{GAME}","env":"prod","event":"{}","user_id":"user-{:06}","session_id":"sess-{:08x}","device_id":"dev-{:08x}","platform":"android","country":"BR","app_version":"3.14.2","props":{{"level":{},"mode":"ranked"}}}}"#,
                names[i % names.len()],
                i * 7919 % 1_000_000,
                i * 31,
                i * 17,
                i % 60,
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

/// `n` payments with every optional field set.
fn payments_body(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":{TS},"game_id":"{GAME}","env":"prod","user_id":"user-{i:06}","order_id":"order-{i:08}","amount_cents":{},"currency":"USD","status":"success","channel":"appstore","platform":"ios","country":"US","region":"CA","city":"SF","product_id":"gems_500","reason":""}}"#,
                99 + i
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn head(path: &str, body: &[u8]) -> Vec<u8> {
    let ts = TS.to_string();
    let nonce = "0123456789abcdef0123456789abcdef";
    let sig = signature::sign(SECRET.as_bytes(), &ts, nonce, body);
    format!(
        "POST {path} HTTP/1.1\r\nHost: ingest.example\r\nUser-Agent: sdk/1.0\r\nAccept: */*\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Game-Id: {GAME}\r\nX-Timestamp: {ts}\r\n\
         X-Nonce: {nonce}\r\nX-Signature: {sig}\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

const STEPS: [&str; 7] =
    ["HTTP head parse", "credentials", "signature", "parse + validate", "archives", "Redis command", "202 answer"];

/// What a shard keeps between requests.
#[derive(Default)]
struct Kept {
    head: Head,
    json: JsonBuffers,
    events: EventBatch,
    custom: EventBatch,
    payments: PaymentBatch,
    archives: [AlignedVec; 2],
    body: Vec<u8>,
    out: Vec<u8>,
}

/// One request; adds each step's allocations to `counts`.
fn request(k: &mut Kept, raw_head: &[u8], body: &[u8], payments: bool, counts: &mut [u64; 7]) {
    let limits = Limits::default();
    let mut at = alloc_count::count();
    let mut step = |i: usize, counts: &mut [u64; 7]| {
        let now = alloc_count::count();
        counts[i] += now - at;
        at = now;
    };
    assert!(k.head.parse_from(raw_head, &FIELDS).unwrap());
    step(0, counts);
    let h = data_port::ingest_head(&k.head);
    let cred = auth::check_headers(&h.credentials, |g| g == GAME, TS, 300).unwrap();
    step(1, counts);
    k.body.clear();
    k.body.extend_from_slice(body);
    let digest = auth::signed_digest(SECRET.as_bytes(), &cred, &k.body).unwrap();
    step(2, counts);
    let mut parts: [(&str, usize); 2] = [("", 0); 2];
    let n = if payments {
        k.payments.clear();
        validate::parse_payments_in(&mut k.json, &mut k.body, GAME, &limits, &mut k.payments).unwrap();
        parts[0] = ("analytics:payments", k.payments.len());
        1
    } else {
        k.events.clear();
        k.custom.clear();
        let mut ids = IdDeriver::new(&digest, EventIds::default());
        let mut new_id = || ids.next_id();
        validate::parse_events_in(&mut k.json, &mut k.body, GAME, &limits, &mut new_id, &mut k.events, &mut k.custom)
            .unwrap();
        parts = [("analytics:events", k.events.len()), ("analytics:custom", k.custom.len())];
        2
    };
    step(3, counts);
    for i in 0..n {
        let records = if payments {
            Records::Payments(k.payments.take())
        } else if i == 0 {
            Records::Events(std::mem::take(&mut k.events))
        } else {
            Records::Events(std::mem::take(&mut k.custom))
        };
        let b = Batch { accepted_at_ms: 1, records };
        k.archives[i] = batch::encode_into(&b, std::mem::take(&mut k.archives[i])).unwrap();
        match (payments, i, b.records) {
            (true, _, Records::Payments(r)) => k.payments.put_back(r),
            (false, 0, Records::Events(r)) => k.events = r,
            (false, _, Records::Events(r)) => k.custom = r,
            _ => unreachable!(),
        }
    }
    step(4, counts);
    let mark = croupier_protocol::batch::Marks::new(7).next();
    let entries: Vec<EntryArgs<'_>> = parts[..n]
        .iter()
        .zip(&k.archives)
        .map(|((stream, count), archive)| EntryArgs {
            stream,
            minid: StreamId { ms: 1_795_617_000_000, seq: 3 },
            count: *count,
            archive,
            mark,
        })
        .collect();
    // The request's `MULTI` and `XADD`s, then the end of its transaction (a group of one).
    let mut cmd = Vec::with_capacity(entries.iter().map(|e| e.archive.len() + 64).sum::<usize>() + 1024);
    resp::ingest_begin(&mut cmd);
    for e in &entries {
        resp::xadd(&mut cmd, e);
    }
    let meta: Vec<EntryMeta<'_>> = entries.iter().map(EntryMeta::of).collect();
    let nonce_key = auth::nonce_key(cred.game, cred.nonce);
    let member = Member { nonce_key: &nonce_key, digest: &digest, entries: &meta, mark };
    resp::ingest_end(&mut cmd, 602, &[member]);
    std::hint::black_box(&cmd);
    drop(cmd);
    step(5, counts);
    let records: usize = parts[..n].iter().map(|(_, c)| c).sum();
    let r = Response::json(202, format!(r#"{{"accepted":{records}}}"#));
    k.out.clear();
    r.encode(&mut k.out);
    step(6, counts);
}

fn report(name: &str, path: &str, body: &[u8], payments: bool, records: usize) {
    let raw_head = head(path, body);
    let mut k = Kept::default();
    k.body.reserve(body.len());
    k.out.reserve(4096);
    let mut counts = [0u64; 7];
    for _ in 0..20 {
        request(&mut k, &raw_head, body, payments, &mut counts);
    }
    let iters = 1_000;
    let mut counts = [0u64; 7];
    for _ in 0..iters {
        request(&mut k, &raw_head, body, payments, &mut counts);
    }
    let total: u64 = counts.iter().sum();
    println!(
        "{name}: {records} records, {} body bytes: {:.1} allocations per request, {:.3} per record",
        body.len(),
        total as f64 / iters as f64,
        total as f64 / iters as f64 / records as f64
    );
    for (step, c) in STEPS.iter().zip(counts) {
        println!("  {step:<18} {:>6.1}", c as f64 / iters as f64);
    }
}

fn main() {
    // Criterion's flags (`--bench`) are accepted and ignored: this is a count, not a timing.
    report("events request", "/api/ingest/events", &events_body(100), false, 100);
    report("payments request", "/api/ingest/payments", &payments_body(10), true, 10);
}
