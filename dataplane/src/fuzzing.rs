//! The checks the fuzz targets run (`fuzz/`), and the corpus replay test with them, for
//! the decoders of this crate: HTTP request heads, chunked bodies, and the batch archives
//! a worker reads from stream entries. Each panics when the decoder panics or breaks one
//! of its promises. The protocol crate's decoders have theirs in
//! `croupier_protocol::fuzzing`. Not an API: `docs/fuzzing.md`.

use croupier_protocol::batch::{self, ArchivedRecords, BatchBuf};
use croupier_protocol::clickhouse::block::write_block;
use croupier_protocol::clickhouse::CLIENT_REVISION;

use crate::clickhouse::rows::{ArchivedEventRef, EventRows, PaymentRows};
use crate::error::IngestError;
use crate::http::body::{self, decode_chunks, Chunks, Encoding};
use crate::http::request::{self, BodyFraming, MAX_HEAD_BYTES};

/// Body limit of the HTTP checks (the default `server.max_body_bytes` is larger; a small
/// one lets the fuzzer reach the limit).
const BODY_LIMIT: usize = 64 << 10;

/// What a chunked body came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Complete after this many bytes, with this body.
    Done(usize, Vec<u8>),
    /// Incomplete: this many bytes were whole chunks, giving this much body.
    More(usize, Vec<u8>),
    /// Refused.
    Error(std::mem::Discriminant<IngestError>),
}

/// Decodes `input` as `body::read` does with bytes arriving `step` at a time: whole
/// chunks are consumed, the rest waits for more bytes.
fn chunks_arriving(input: &[u8], room: usize, step: usize) -> Outcome {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut have = step.min(input.len());
    loop {
        match decode_chunks(&input[pos..have], room.saturating_sub(out.len()), &mut out) {
            Ok(Chunks::Done(used)) => return Outcome::Done(pos + used, out),
            Ok(Chunks::More(used)) => pos += used,
            Err(e) => return Outcome::Error(std::mem::discriminant(&e)),
        }
        assert!(pos <= have, "consumed {pos} of {have} bytes");
        if have == input.len() {
            return Outcome::More(pos, out);
        }
        have = (have + step).min(input.len());
    }
}

/// Decodes a chunked body at once and as it would arrive in pieces of `step` bytes,
/// which must agree; the body stays within `room`.
fn check_chunks(input: &[u8], room: usize, step: usize) -> Outcome {
    let whole = chunks_arriving(input, room, input.len().max(1));
    if let Outcome::Done(used, body) | Outcome::More(used, body) = &whole {
        assert!(*used <= input.len(), "consumed {used} of {} bytes", input.len());
        assert!(body.len() <= room && body.len() <= *used, "{} body bytes from {used}, room {room}", body.len());
    }
    let pieces = chunks_arriving(input, room, step.max(1));
    assert_eq!(whole, pieces, "decoded at once and in pieces of {step} bytes");
    whole
}

/// The chunked body decoder. The first byte picks the room left for the body, the
/// second how many bytes arrive per read; the rest is the body as sent.
pub fn http_chunks(data: &[u8]) {
    let [pick_room, step, input @ ..] = data else { return };
    let room = match pick_room % 4 {
        0 => usize::from(*pick_room),
        1 => BODY_LIMIT,
        2 => usize::MAX,
        _ => 0,
    };
    check_chunks(input, room, usize::from(*step));
}

/// A request as it arrives: the head parser on the whole input, then the body by its
/// framing (chunked bodies also in pieces), then gzip if the head says so. A head must
/// parse the same from exactly its bytes, and a strict prefix of it must wait for more
/// bytes, not be refused.
pub fn http_request(data: &[u8]) {
    let head = match request::parse(data) {
        Ok(Some(h)) => h,
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD_BYTES, "a {}-byte partial head waits for more", data.len());
            return;
        }
        Err(_) => return,
    };
    assert!(head.len > 0 && head.len <= data.len(), "head length {} of {}", head.len, data.len());
    assert!(!head.path.contains('?'), "path keeps its query: {:?}", head.path);
    let alone = request::parse(&data[..head.len]);
    assert_eq!(alone, Ok(Some(head.clone())), "the head alone parses differently");
    let step = (head.len / 7).max(1);
    for i in (0..head.len).step_by(step) {
        assert_eq!(request::parse(&data[..i]), Ok(None), "a {i}-byte prefix of a {}-byte head", head.len);
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
    if let Ok(Encoding::Gzip) = Encoding::parse(head.content_encoding.as_deref()) {
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
