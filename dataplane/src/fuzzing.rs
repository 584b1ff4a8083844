//! The checks the fuzz targets run (`fuzz/`), and the corpus replay test with them, for
//! the decoders of this crate: HTTP request heads, chunked bodies (and gzip), and the batch archives
//! a worker reads from stream entries. Each panics when the decoder panics or breaks one
//! of its promises. The protocol crate's decoders have theirs in
//! `croupier_protocol::fuzzing`. Not an API: `docs/fuzzing.md`.

use croupier_protocol::batch::{self, ArchivedRecords, BatchBuf};
use croupier_protocol::clickhouse::block::write_block;
use croupier_protocol::clickhouse::CLIENT_REVISION;

use crate::clickhouse::rows::{ArchivedEventRef, EventRows, PaymentRows};
use crate::data_port::{CONTENT_ENCODING, FIELDS};
use crate::http::body::{self, Encoding};
use crate::http::chunked::{decode_chunks, wire_limit, ChunkedDecoder, Chunks, MAX_CHUNK_LINE, MAX_TRAILERS};
use crate::http::request::{self, BodyFraming, MAX_HEAD_BYTES};

/// Body limit of the HTTP checks (the default `server.max_body_bytes` is larger; a small
/// one lets the fuzzer reach the limit).
const BODY_LIMIT: usize = 64 << 10;

/// What a chunked body came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Complete after this many bytes, with this body.
    Done(usize, Vec<u8>),
    /// Incomplete: this many bytes were consumed, giving this much body.
    More(usize, Vec<u8>),
    /// Refused with this status (the message may differ with how the bytes were split:
    /// an overlong line that is also malformed is refused as either).
    Error(u16),
}

/// Decodes `input` as `body::read` does with bytes arriving `step` at a time: the decoder
/// is handed what it has not consumed yet, and the connection keeps only that (at most a
/// partial chunk line or trailer line), within the limit on the body as sent.
fn chunks_arriving(input: &[u8], limit: usize, step: usize) -> Outcome {
    let mut decoder = ChunkedDecoder::new(limit);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut have = step.min(input.len());
    loop {
        match decoder.decode(&input[consumed..have], &mut |d| out.extend_from_slice(d)) {
            Ok(Chunks::Done(used)) => {
                assert!(used <= have - consumed, "done after {used} of {} bytes", have - consumed);
                return Outcome::Done(consumed + used, out);
            }
            Ok(Chunks::More(used)) => {
                assert!(used <= have - consumed, "consumed {used} of {} bytes", have - consumed);
                consumed += used;
            }
            Err(e) => return Outcome::Error(e.status()),
        }
        assert!(have - consumed <= MAX_TRAILERS.max(MAX_CHUNK_LINE), "{} bytes kept", have - consumed);
        assert!(consumed <= wire_limit(limit), "{consumed} bytes taken for a {limit}-byte limit");
        assert!(out.len() == decoder.decoded() && out.len() <= limit, "{} body bytes, limit {limit}", out.len());
        if have == input.len() {
            return Outcome::More(consumed, out);
        }
        have = (have + step).min(input.len());
    }
}

/// Decodes a chunked body at once and as it would arrive in pieces of `step` bytes,
/// which must agree; the body stays within `limit`.
fn check_chunks(input: &[u8], limit: usize, step: usize) -> Outcome {
    let whole = chunks_arriving(input, limit, input.len().max(1));
    let mut out = Vec::new();
    let one_shot = match decode_chunks(input, limit, &mut out) {
        Ok(Chunks::Done(used)) => Outcome::Done(used, out),
        Ok(Chunks::More(used)) => Outcome::More(used, out),
        Err(e) => Outcome::Error(e.status()),
    };
    assert_eq!(whole, one_shot, "decode_chunks and the decoder disagree");
    if let Outcome::Done(used, body) = &whole {
        assert!(body.len() <= limit && body.len() <= *used, "{} body bytes from {used}, limit {limit}", body.len());
    }
    // At least a 64th of the input per read: a partial line is searched again on each read
    // (as on a connection), and byte-sized reads of a 4 KiB line would make runs slow.
    let step = step.max(input.len() / 64).max(1);
    let pieces = chunks_arriving(input, limit, step);
    assert_eq!(whole, pieces, "decoded at once and in pieces of {step} bytes");
    whole
}

/// The chunked body decoder. The first byte picks the body limit, the second how many
/// bytes arrive per read; the rest is the body as sent.
pub fn http_chunks(data: &[u8]) {
    let [pick_limit, step, input @ ..] = data else { return };
    let limit = match pick_limit % 4 {
        0 => usize::from(*pick_limit),
        1 => BODY_LIMIT,
        2 => usize::MAX,
        _ => 0,
    };
    check_chunks(input, limit, usize::from(*step));
}

/// A request as it arrives: the head parser on the whole input, then the body by its
/// framing (chunked bodies also in pieces), then gzip if the head says so. A head must
/// parse the same from exactly its bytes, and a strict prefix of it must wait for more
/// bytes, not be refused.
pub fn http_request(data: &[u8]) {
    let head = match request::parse(data, &FIELDS) {
        Ok(Some(h)) => h,
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD_BYTES, "a {}-byte partial head waits for more", data.len());
            return;
        }
        Err(_) => return,
    };
    assert!(head.len > 0 && head.len <= data.len(), "head length {} of {}", head.len, data.len());
    assert!(!head.path().contains('?'), "path keeps its query: {:?}", head.path());
    let alone = request::parse(&data[..head.len], &FIELDS);
    assert_eq!(alone, Ok(Some(head.clone())), "the head alone parses differently");
    let step = (head.len / 7).max(1);
    for i in (0..head.len).step_by(step) {
        assert_eq!(request::parse(&data[..i], &FIELDS), Ok(None), "a {i}-byte prefix of a {}-byte head", head.len);
    }
    let rest = &data[head.len..];
    let body = match head.framing {
        BodyFraming::None => Vec::new(),
        BodyFraming::Length(n) => {
            assert!(n > 0);
            match rest.get(..n) {
                Some(b) => b.to_vec(),
                None => return,
            }
        }
        BodyFraming::Chunked => match check_chunks(rest, BODY_LIMIT, 1 + rest.len() / 5) {
            Outcome::Done(_, b) => b,
            _ => return,
        },
    };
    if let Ok(Encoding::Gzip) = Encoding::parse(head.field(CONTENT_ENCODING)) {
        let mut out = Vec::new();
        if body::gunzip(&body, BODY_LIMIT, &mut out).is_ok() {
            assert!(out.len() <= BODY_LIMIT, "{} bytes inflated past the limit", out.len());
        }
    }
}

/// A batch archive from a stream entry (`batch` field), read as the worker reads it:
/// validated in place, every record put into ClickHouse rows and the block encoded. An
/// archive that validates must also deserialise, and what it holds must round-trip.
pub fn batch_entry(data: &[u8]) {
    let mut buf = BatchBuf::default();
    let Ok(archived) = buf.load(data) else { return };
    let accepted = archived.accepted_at_ms.to_native();
    let mut block = Vec::new();
    match &archived.records {
        ArchivedRecords::Events(b) => {
            let mut rows = EventRows::new();
            for index in 0..b.len() {
                rows.push(&ArchivedEventRef { batch: b, index }, accepted);
            }
            write_block(&mut block, CLIENT_REVISION, &rows.columns, rows.rows);
        }
        ArchivedRecords::Payments(v) => {
            let mut rows = PaymentRows::new();
            v.iter().for_each(|p| rows.push(p, accepted));
            write_block(&mut block, CLIENT_REVISION, &rows.columns, rows.rows);
        }
    }
    let owned = batch::to_owned(archived);
    assert!(owned.is_ok(), "a validated archive does not deserialise: {owned:?}");
    if let Ok(owned) = owned {
        let again = batch::encode(&owned).map(|bytes| batch::access(&bytes).and_then(batch::to_owned).ok());
        assert!(matches!(&again, Ok(Some(b)) if *b == owned), "re-encoded batch differs: {again:?}");
    }
}
