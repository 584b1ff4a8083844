//! The checks the fuzz targets run (`fuzz/`), and the corpus replay test with them: each
//! takes arbitrary bytes, feeds them to a decoder of bytes from the network, and panics
//! when the decoder panics or breaks one of its promises (say, a reply measured as
//! complete that does not decode). Not an API: `docs/fuzzing.md`.

use crate::clickhouse::scan::{PacketScan, Scanned};
use crate::clickhouse::{packet, unframe};
use crate::clickhouse::{rev, CLIENT_REVISION};
use crate::envelope::{text, EventBatch, PaymentBatch};
use crate::hll::{redis_string, Sketch, REGISTERS};
use crate::otlp::{self, Context, Format, Signal, Sink, SpanEvents};
use crate::resp;
use crate::validate::{self, BodyError, JsonBuffers, Limits};

/// Where prefixes of a complete frame are tried: every one for short frames, else a
/// sample (the start, the end and evenly spaced ones between), to keep a run fast.
fn prefix_lengths(n: usize) -> impl Iterator<Item = usize> {
    let step = (n / 64).max(1);
    (0..n).filter(move |&i| n <= 256 || i < 16 || i + 16 >= n || i % step == 0)
}

/// RESP replies, as the Redis connection reads them: one after another from one buffer.
/// `frame_len` and `decode_reply` must agree: complete with the same length, or not
/// complete (or complete, and an error for what it holds); a complete reply must decode
/// from exactly its bytes, and no strict prefix of it may be an error (a reply split
/// across reads is not malformed). The reply interpreters get every decoded frame.
pub fn resp_replies(data: &[u8]) {
    let mut buf = data;
    loop {
        let measured = resp::frame_len(buf);
        let decoded = resp::decode_reply(buf);
        let (frame, used) = match (&measured, decoded) {
            (Ok(Some(n)), Ok(Some((frame, used)))) => {
                assert_eq!(*n, used, "frame_len and decode_reply disagree on the length");
                (frame, used)
            }
            // Measured complete but its content does not decode (a bad integer, a simple
            // string that is not UTF-8): a protocol error, and the connection fails
            // cleanly. What must not happen is a wait for more bytes or another length
            // (replies would be handed to the wrong callers).
            (Ok(Some(_)), Err(_)) => return,
            (Ok(Some(n)), other) => {
                unreachable!("frame_len says complete ({n} bytes) but decode_reply gives {other:?}")
            }
            (m, Ok(Some((_, used)))) => {
                unreachable!("decode_reply took {used} bytes but frame_len gives {m:?}")
            }
            _ => return,
        };
        assert!(used > 0 && used <= buf.len(), "reply length {used} of {}", buf.len());
        let again = resp::decode_reply(&buf[..used]);
        assert!(matches!(&again, Ok(Some((f, u))) if *u == used && *f == frame), "reply alone: {again:?}");
        for i in prefix_lengths(used) {
            let part = &buf[..i];
            assert_eq!(resp::frame_len(part), Ok(None), "frame_len of a {i}-byte prefix of a {used}-byte reply");
            let d = resp::decode_reply(part);
            assert!(matches!(d, Ok(None)), "decode_reply of a {i}-byte prefix of a {used}-byte reply: {d:?}");
        }
        let _ = resp::group_info(&frame, "analytics-workers");
        const ENTRY: [resp::EntryMeta<'static>; 1] = [resp::EntryMeta { stream: "s" }];
        let mark = crate::batch::Marks::new(0).next();
        let member = resp::Member { nonce_key: "n", digest: &[0; 32], entries: &ENTRY, mark };
        let _ = resp::ingest_reply(vec![frame], &[member]);
        buf = &buf[used..];
    }
}

/// Negotiated revisions the ClickHouse target decodes with: the first byte of an input
/// picks one (low three bits), whether the query asked for compression (bit 3), and
/// whether the rest is a compressed frame to be sealed with a correct checksum (bit 4,
/// see [`sealed_data_packet`]).
const REVISIONS: [u64; 8] = [
    0,
    rev::TOTAL_ROWS_IN_PROGRESS,
    rev::BLOCK_INFO,
    rev::CLIENT_INFO,
    rev::SERVER_TIMEZONE,
    rev::SERVER_DISPLAY_NAME,
    rev::VERSION_PATCH,
    CLIENT_REVISION,
];

/// A Data packet around `frame` (method, sizes, payload) with the CityHash128 the
/// server would have written, so that a fuzzer reaches LZ4 and the block reader instead
/// of stopping at the checksum. The checksum covers the frame's declared length.
fn sealed_data_packet(frame: &[u8]) -> Vec<u8> {
    let declared = frame.get(1..5).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let covered = &frame[..declared.min(frame.len())];
    let h = cityhash_rs::cityhash_102_128(covered);
    let mut out = vec![packet::server::DATA as u8, 0];
    out.extend_from_slice(&((h >> 64) as u64).to_le_bytes());
    out.extend_from_slice(&(h as u64).to_le_bytes());
    out.extend_from_slice(frame);
    out
}

/// ClickHouse server packets, as the connection reads them: one after another from one
/// buffer. A decoded packet must decode the same from exactly its bytes, and no strict
/// prefix of it may be an error.
pub fn clickhouse_packets(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else { return };
    let revision = REVISIONS[usize::from(select & 7)];
    let compressed = select & 8 != 0;
    let sealed;
    let mut buf = if select & 16 != 0 {
        sealed = sealed_data_packet(rest);
        &sealed[..]
    } else {
        rest
    };
    loop {
        // A block packet of a compressed answer: its frames taken one at a time, as the
        // connection takes them — another only while the scan of the uncompressed bytes
        // says the block goes on — then decoded; where the scan ends, the decoder ends.
        if compressed && unframe::is_framed(buf) == Some(true) {
            let mut u = unframe::Unframe::default();
            let mut scan = PacketScan::default();
            let mut at = 0;
            let whole = loop {
                let Ok(Some(n)) = u.take_frame(&buf[at..]) else { break false };
                assert!(n > 0 && at + n <= buf.len(), "frame of {n} bytes at {at} of {}", buf.len());
                at += n;
                let found = scan.resume(u.plain(), revision);
                if found == Scanned::Incomplete {
                    continue;
                }
                match packet::decode(u.plain(), revision) {
                    Ok(Some((_, used))) => {
                        assert!(used <= u.plain().len(), "packet length {used} of {}", u.plain().len());
                        if let Scanned::Ends(end) = found {
                            assert_eq!(end, used, "the scan ends where the decoder does");
                        }
                        break used == u.plain().len();
                    }
                    Ok(None) => assert!(!matches!(found, Scanned::Ends(_)), "the scan ended, the decoder wants more"),
                    Err(_) => break false,
                }
            };
            if !whole {
                return;
            }
            buf = &buf[at..];
            continue;
        }
        let Ok(Some((p, used))) = packet::decode(buf, revision) else { return };
        assert!(used > 0 && used <= buf.len(), "packet length {used} of {}", buf.len());
        let again = packet::decode(&buf[..used], revision);
        assert!(matches!(&again, Ok(Some((q, u))) if *u == used && *q == p), "packet alone: {again:?}");
        for i in prefix_lengths(used) {
            let d = packet::decode(&buf[..i], revision);
            assert!(matches!(d, Ok(None)), "a {i}-byte prefix of a {used}-byte packet: {d:?}");
        }
        buf = &buf[used..];
    }
}

/// Fixed event ids, so that two parses of one body are comparable.
fn counter() -> impl FnMut() -> [u8; 16] {
    let mut n = 0u8;
    move || {
        n = n.wrapping_add(1);
        [n; 16]
    }
}

/// What a stored event's text must look like whatever the body was: the checks the
/// validator promises (lengths, country, props an object that parses again).
fn check_stored(batch: &EventBatch, limits: &Limits) {
    for i in 0..batch.len() {
        let event = batch.field(i, text::EVENT);
        assert!(!event.is_empty() && event.len() <= 128, "event name {event:?}");
        for f in [text::GAME_ID, text::ENV] {
            let v = batch.field(i, f);
            assert!(!v.is_empty() && v.len() <= limits.max_field_bytes, "field {f}: {v:?}");
        }
        let country = batch.field(i, text::COUNTRY);
        assert!(country.is_empty() || (country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())));
        let props = batch.field(i, text::PROPS);
        assert!(props.len() <= limits.max_props_bytes);
        let mut again = props.as_bytes().to_vec();
        let parsed = simd_json::to_borrowed_value(&mut again);
        assert!(
            matches!(parsed, Ok(simd_json::BorrowedValue::Object(_))),
            "stored props do not parse as an object: {props:?}"
        );
    }
}

/// A body that fills every field, parsed before the fuzzed one into reused buffers and
/// batches, so that anything a request leaves behind would show in the next.
const WARM: &[u8] = br#"[{"ts":1795617749,"game_id":"g1","env":"prod-prod-prod","event":"login","user_id":"u-long-1",
"session_id":"s-long-1","device_id":"d-long-1","channel":"appstore","platform":"ios","country":"us",
"app_version":"1.2.3-long","event_id":"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03","props":{"k":[1,2,3]},
"order_id":"o-long-1","amount_cents":12345,"currency":"EUR","status":"refunded","region":"BY","city":"Munich",
"product_id":"gems-long","reason":"chargeback"}]"#;

/// A parse's result and the two batches it filled (standard and custom events).
type Parsed = (Result<(), BodyError>, EventBatch, EventBatch);

/// Events of one body parsed with `bufs` into `batches`, cleared first as a shard does.
fn events_with(bufs: &mut JsonBuffers, body: &[u8], limits: &Limits, batches: &mut (EventBatch, EventBatch)) -> Parsed {
    let (events, custom) = batches;
    events.clear();
    custom.clear();
    let mut body = body.to_vec();
    let res = validate::parse_events_in(bufs, &mut body, "g1", limits, &mut counter(), events, custom);
    (res, events.clone(), custom.clone())
}

/// The JSON envelope validator. The first byte picks what the rest is: a request body of
/// events (parsed with fresh buffers, and with buffers and batches a fuller body used before,
/// which must agree),
/// a request body of payments (likewise), one event object or one payment object (stream entries
/// in the Croupier format). What it accepts must keep the envelope's promises.
pub fn json_envelope(data: &[u8]) {
    let Some((&select, body)) = data.split_first() else { return };
    let limits = Limits::default();
    match select % 4 {
        0 => {
            let fresh = events_with(&mut JsonBuffers::default(), body, &limits, &mut Default::default());
            // As a shard does: buffers and batches kept from request to request.
            let mut bufs = JsonBuffers::default();
            let mut batches = Default::default();
            let _ = events_with(&mut bufs, WARM, &limits, &mut batches);
            let reused = events_with(&mut bufs, body, &limits, &mut batches);
            assert_eq!(fresh, reused, "fresh and reused buffers disagree");
            if fresh.0.is_ok() {
                let n = fresh.1.len() + fresh.2.len();
                assert!(n > 0 && n <= limits.max_records, "{n} records accepted");
                check_stored(&fresh.1, &limits);
                check_stored(&fresh.2, &limits);
            }
        }
        1 => {
            let mut out = Vec::new();
            let fresh = validate::parse_payments(&mut body.to_vec(), "g1", &limits, &mut out);
            let mut bufs = JsonBuffers::default();
            let mut batch = PaymentBatch::default();
            let _ = validate::parse_payments_in(&mut bufs, &mut WARM.to_vec(), "g1", &limits, &mut batch);
            batch.clear();
            let reused = validate::parse_payments_in(&mut bufs, &mut body.to_vec(), "g1", &limits, &mut batch);
            assert_eq!(fresh, reused, "fresh and reused buffers disagree");
            if fresh.is_ok() {
                assert_eq!(out.as_slice(), batch.as_slice(), "a reused batch keeps something of the last request");
                assert!(!out.is_empty() && out.len() <= limits.max_records);
                for p in &out {
                    assert!(p.amount_cents > 0 && p.currency.len() == 3 && p.game_id == "g1");
                }
            }
        }
        2 => {
            if let Ok(e) = validate::parse_event_object(&mut body.to_vec(), &limits, [9; 16]) {
                let mut one = EventBatch::default();
                assert!(one.push(&e).is_ok(), "a validated event does not fit a batch");
                check_stored(&one, &limits);
            }
        }
        _ => {
            if let Ok(p) = validate::parse_payment_object(&mut body.to_vec(), &limits) {
                assert!(p.amount_cents > 0 && p.currency.len() == 3);
            }
        }
    }
}

/// A Redis HyperLogLog string (a `GET` of a sketch key: any producer may have written it),
/// read as [`Sketch::from_redis`] and `merge_redis` read it. A malformed string leaves
/// the destination untouched; a valid one gives registers that the dense and the sparse
/// encoders write back to the same registers, and merging it is the register-wise
/// maximum.
pub fn hll_redis_string(data: &[u8]) {
    let mut registers = [7u8; REGISTERS];
    let decoded = redis_string::decode(data, &mut registers);
    let sketch = Sketch::from_redis(data);
    assert_eq!(decoded.is_ok(), sketch.is_ok(), "decode and from_redis disagree");
    let mut base = [0u8; REGISTERS];
    base.iter_mut().enumerate().for_each(|(i, r)| *r = (i % 40) as u8);
    let mut merged = Sketch::from_registers(&base);
    let merge = merged.merge_redis(data);
    assert_eq!(merge.is_ok(), decoded.is_ok(), "merge_redis and decode disagree");
    let Ok(sketch) = sketch else {
        assert!(registers.iter().all(|&r| r == 7), "a refused string changed the registers");
        assert_eq!(merged, Sketch::from_registers(&base), "a refused string changed the sketch");
        return;
    };
    assert!(registers.iter().all(|&r| r <= 63), "a register above 63");
    assert_eq!(sketch, Sketch::from_registers(&registers));
    let _ = sketch.count();
    let mut max = base;
    max.iter_mut().zip(&registers).for_each(|(m, r)| *m = (*m).max(*r));
    assert_eq!(merged, Sketch::from_registers(&max), "merge is not the register-wise maximum");
    for again in
        [Some(sketch.to_redis_dense()), sketch.to_redis_sparse(), Some(sketch.to_redis())].into_iter().flatten()
    {
        assert_eq!(Sketch::from_redis(&again).ok(), Some(sketch.clone()), "written back, read differently");
    }
}

/// Decodes an OTLP request into fresh batches and into batches and buffers reused after
/// a fuller request; returns the summary and what was stored.
fn otlp_with(
    signal: Signal,
    format: Format,
    body: &[u8],
    bufs: &mut JsonBuffers,
    batches: &mut (EventBatch, EventBatch, PaymentBatch, otlp::props::Props, otlp::occurrence::Occurrences),
) -> (Result<otlp::Summary, otlp::DecodeError>, Vec<crate::envelope::Event>, Vec<crate::envelope::Payment>) {
    let limits = Limits::default();
    let patterns = ["boss.*".to_owned()];
    let ctx = Context { game: "g1", limits: &limits, spans: SpanEvents { patterns: &patterns } };
    let (e, c, p, props, seen) = batches;
    e.clear();
    c.clear();
    p.clear();
    let mut sink = Sink { events: e, custom: c, payments: p, props, seen };
    let r = otlp::decode(signal, format, &mut body.to_vec(), &ctx, bufs, &mut || [7; 16], &mut sink);
    let mut events = e.to_events();
    events.extend(c.to_events());
    (r, events, p.as_slice().to_vec())
}

/// OTLP requests (`otlp::decode`): byte 0 picks logs or traces (bit 0) and protobuf or
/// OTLP/JSON (bit 1), the rest is the body. Fresh and reused buffers give the same
/// result; a decoded request accounts for every record (accepted + rejected + skipped),
/// stores one event or payment per accepted record, and what it stores keeps the
/// envelope's promises (as for `json_envelope`), for the token's game only.
pub fn otlp_request(data: &[u8]) {
    let Some((&select, body)) = data.split_first() else { return };
    let signal = if select & 1 == 0 { Signal::Logs } else { Signal::Traces };
    let format = if select & 2 == 0 { Format::Protobuf } else { Format::Json };
    let fresh = otlp_with(signal, format, body, &mut JsonBuffers::default(), &mut Default::default());
    let mut bufs = JsonBuffers::default();
    let mut batches = Default::default();
    let _ = otlp_with(signal, format, OTLP_WARM, &mut bufs, &mut batches);
    let reused = otlp_with(signal, format, body, &mut bufs, &mut batches);
    assert_eq!(fresh, reused, "fresh and reused buffers disagree");
    let (Ok(summary), events, payments) = fresh else { return };
    assert_eq!(summary.records, summary.accepted + summary.rejected + summary.skipped, "{summary:?}");
    assert_eq!(events.len() + payments.len(), summary.accepted, "{summary:?}");
    assert_eq!(summary.first_rejection.is_some(), summary.rejected > 0);
    let limits = Limits::default();
    let mut batch = EventBatch::default();
    for e in &events {
        assert_eq!(e.game_id, "g1");
        assert!(batch.push(e).is_ok());
    }
    check_stored(&batch, &limits);
    for p in &payments {
        assert!(p.game_id == "g1" && p.amount_cents > 0 && p.currency.len() == 3 && !p.order_id.is_empty());
    }
}

/// An OTLP/JSON logs request that fills every field, decoded before the fuzzed one.
const OTLP_WARM: &[u8] = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"deployment.environment","value":{"stringValue":"prod-prod"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"1795617749000000000","eventName":"user.login","attributes":[{"key":"game.user_id","value":{"stringValue":"u-long-user"}},{"key":"game.country","value":{"stringValue":"de"}},{"key":"k","value":{"arrayValue":{"values":[{"intValue":"1"}]}}}]}]}]}]}"#;
