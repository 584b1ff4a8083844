//! The OTLP/HTTP receiver (`POST /v1/logs`, `/v1/traces`; `/v1/metrics` answered as
//! unsupported): a bearer token names the game, the body (protobuf or OTLP/JSON, gzip or
//! not) is decoded and mapped by `croupier_protocol::otlp`, and the records that pass
//! are appended as JSON ingest appends them — one `EVAL` per request, answered only once
//! Redis has them (`docs/otlp.md`). OTLP/gRPC (`otlp_grpc.rs`) shares [`export`] and
//! [`refusal_status`].

use croupier_control::metrics::EventsRefused;
use croupier_protocol::otlp::response::{self, Code};
use croupier_protocol::otlp::{self, Context, Format, Signal, SpanEvents, Summary};
use croupier_protocol::signature;
use croupier_protocol::validate::BodyError;
use subtle::ConstantTimeEq;

use crate::data_port::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use crate::error::IngestError;
use crate::event_id::IdDeriver;
use crate::http::body::{self, Encoding};
use crate::http::error::HttpError;
use crate::http::handler::Request;
use crate::http::request::Head;
use crate::http::response::Response;
use crate::ingest::{self, Prepared, Refusal};
use crate::shard::Shard;

/// What an OTLP/HTTP request is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpRoute {
    /// A supported signal.
    Export(Signal),
    /// `/v1/metrics`: not a signal this receiver takes.
    Metrics,
}

/// The game whose OTLP token is `Authorization: Bearer <token>`, compared in constant
/// time with each configured token.
pub fn bearer_game<'s>(shard: &'s Shard, authorization: Option<&str>) -> Option<&'s str> {
    let token = crate::http::request::bearer_token(authorization)?;
    let mut found = None;
    for (id, g) in &shard.games {
        if let Some(t) = &g.otlp_token {
            if bool::from(t.as_slice().ct_eq(token.as_bytes())) {
                found = Some(id.as_str());
            }
        }
    }
    found
}

/// The message of a refusal for a missing or unknown token.
pub const UNAUTHENTICATED: &str = "a valid Authorization: Bearer token is required";
/// The message of a refusal of metrics.
pub const METRICS_UNIMPLEMENTED: &str = "metrics are not accepted: export logs and traces";

/// A refusal as OTLP states it, whatever the transport: the `google.rpc.Code`, the
/// message, and the `Retry-After` of the ingest contract (seconds) when the exporter is
/// to retry later. OTLP/HTTP and OTLP/gRPC map refusals through this one function.
pub fn refusal_status(e: &IngestError) -> (Code, String, Option<u64>) {
    let r = e.response();
    let code = match r.status {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 => Code::ResourceExhausted,
        408 | 503 => Code::Unavailable,
        _ => Code::Internal,
    };
    let message = match e {
        // What the OTLP decoder said (`prepare`).
        IngestError::Body(BodyError::Malformed(m)) => m.clone(),
        IngestError::Body(b) => b.to_string(),
        IngestError::Http(h) => h.message(),
        IngestError::MissingCredentials(_) => UNAUTHENTICATED.to_owned(),
        _ => e.tag().to_owned(),
    };
    (code, message, r.retry_after)
}

/// A refusal as OTLP/HTTP answers it: the status, `Retry-After` and connection handling
/// of the ingest contract, with a `google.rpc.Status` body in the request's encoding.
fn refusal(format: Format, e: &IngestError) -> Response {
    let mut r = e.response();
    // A body not in within the read timeout is answered 504, not the data port's 408:
    // OTLP/HTTP exporters retry 429, 502, 503 and 504 only (the spec's list; the Collector
    // and the Go exporter drop a batch answered 408), and OTLP/gRPC answers `UNAVAILABLE`.
    // Not 503, which the drop-rate alert counts as the server's refusal: a slow client is
    // not.
    if r.status == 408 {
        r.status = 504;
    }
    let (code, message, _) = refusal_status(e);
    r.body.clear();
    response::status(&mut r.body, format, code, &message);
    r.content_type = format.content_type();
    r
}

/// Answers a head the HTTP layer refused on an OTLP/HTTP route (a header sent twice, a
/// bad `Content-Length`, ...) as the route's other refusals: a `google.rpc.Status` in
/// the encoding the `Content-Type` read before the fault names (JSON when none was read),
/// with the ingest contract's status. An export counts as one refused record of the
/// bearer token's game.
pub fn refused_head(shard: &Shard, route: OtlpRoute, head: &Head, error: &HttpError) -> Response {
    let e = IngestError::Http(error.clone());
    if let OtlpRoute::Export(_) = route {
        ingest::count_refused(shard, bearer_game(shard, head.field(AUTHORIZATION)).unwrap_or(""), &e, 1);
    }
    let format = head.field(CONTENT_TYPE).and_then(Format::from_content_type).unwrap_or(Format::Json);
    refusal(format, &e)
}

/// Answers an OTLP/HTTP request. A request refused before its records were counted
/// (headers, token, body) counts as one refused event, as on the data port.
pub async fn handle(shard: &Shard, route: OtlpRoute, req: &mut Request<'_>) -> Response {
    let head = req.head();
    let refuse = |format: Format, game: &str, e: IngestError| {
        ingest::count_refused(shard, game, &e, 1);
        refusal(format, &e)
    };
    let Some(format) = head.field(CONTENT_TYPE).and_then(Format::from_content_type) else {
        // 415 with a `google.rpc.Status` as every other refusal of the route, in JSON (the
        // request's encoding is what is unknown).
        let e = HttpError::UnsupportedMediaType("Content-Type (use application/x-protobuf or application/json)");
        let game = bearer_game(shard, head.field(AUTHORIZATION)).unwrap_or("");
        return refuse(Format::Json, game, e.into());
    };
    let signal = match route {
        OtlpRoute::Export(s) => s,
        OtlpRoute::Metrics => {
            let mut body = Vec::new();
            response::status(&mut body, format, Code::Unimplemented, METRICS_UNIMPLEMENTED);
            return Response::bytes(404, format.content_type(), body);
        }
    };
    let game = bearer_game(shard, head.field(AUTHORIZATION));
    let encoding = match Encoding::parse(head.field(CONTENT_ENCODING)) {
        Ok(e) => e,
        Err(e) => return refuse(format, game.unwrap_or(""), e.into()),
    };
    let Some(game) = game else {
        return refuse(format, "", IngestError::MissingCredentials("Authorization"));
    };
    let retry_after = shard.config.redis.retry_after_secs;
    if !shard.redis.is_up() {
        return refuse(format, game, IngestError::RedisUnavailable { retry_after });
    }
    let mut held = match req.claim_body() {
        Ok(held) => held,
        Err(e) => return refuse(format, game, e.into()),
    };
    if let Err(e) = req.read_body(&mut held).await {
        return refuse(format, game, e.into());
    }
    let (wire, scratch) = req.buffers();
    match export(shard, signal, format, encoding, game, wire, scratch, crate::http::body::INFLATED_KEEP).await {
        Ok(Exported { rejected, message }) => {
            let mut out = Vec::new();
            response::export(&mut out, signal, format, rejected, &message);
            Response::bytes(200, format.content_type(), out)
        }
        Err(e) => refusal(format, &e),
    }
}

/// What an export of records came to: how many were rejected, and the message naming
/// the first (empty when none was), for `partial_success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Records rejected.
    pub rejected: u64,
    /// `partial_success.error_message`.
    pub message: String,
}

/// An export request whose body (as sent, `encoding` says whether gzip) is in `wire`,
/// from `game` (its token checked): decoded, mapped, and its events appended, answered
/// once Redis has them; or why not. The one path of OTLP/HTTP and OTLP/gRPC alike.
/// `scratch` is the buffer for the inflated body, of which `keep` bytes of capacity stay
/// across the wait for Redis (for the connection's next request; 0 where the caller drops
/// it after this one).
#[allow(clippy::too_many_arguments)]
pub async fn export(
    shard: &Shard,
    signal: Signal,
    format: Format,
    encoding: Encoding,
    game: &str,
    wire: &mut [u8],
    scratch: &mut Vec<u8>,
    keep: usize,
) -> Result<Exported, IngestError> {
    let prepared = prepare(shard, signal, format, encoding, game, wire, scratch);
    // The inflated body is done with (its events are staged).
    crate::http::body::release_inflated(scratch, keep);
    let (prepared, summary) = prepared.map_err(|r| r.counted(shard, game))?;
    if let Some(p) = prepared {
        ingest::append(shard, game, p).await?;
    }
    let message = match summary.first_rejection {
        None => String::new(),
        Some((index, reason)) => {
            let what = match signal {
                Signal::Logs => "log record",
                Signal::Traces => "span",
            };
            let attribute = summary.first_attribute;
            let sep = if attribute.is_empty() { "" } else { ": " };
            format!(
                "{} of {} rejected; the first, {what} {index}: {attribute}{sep}{reason}",
                summary.rejected, summary.records
            )
        }
    };
    Ok(Exported { rejected: summary.rejected as u64, message })
}

/// A gzip body that does not inflate is an undecodable payload, which OTLP answers 400 /
/// `INVALID_ARGUMENT` (JSON ingest keeps its own 415); one that inflates past the limit
/// stays 413.
fn gzip_refusal(e: HttpError) -> IngestError {
    match e {
        HttpError::UnsupportedMediaType(_) => {
            IngestError::Body(BodyError::Malformed("the gzip body does not inflate (corrupt)".to_owned()))
        }
        e => e.into(),
    }
}

/// Inflates and decodes the body, maps its records, and stages their append (`None`
/// when no record is to be stored). Nothing here awaits.
fn prepare<'s>(
    shard: &'s Shard,
    signal: Signal,
    format: Format,
    encoding: Encoding,
    game_id: &str,
    wire: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(Option<Prepared<'s>>, Summary), Refusal> {
    let game = shard.games.get(game_id).ok_or(IngestError::UnknownGame)?;
    // The request's identity: a retry of the same bytes is recognised by Redis and
    // answered without appending again, and its records get the same ids. OTLP/JSON
    // records' ids come from it and their position: for a compressed JSON body it is the
    // digest of the body as decoded, so that the same JSON sent compressed or not (a proxy
    // or a Collector hop that compresses again) is one request with the same ids.
    // (Protobuf records' ids come from their own bytes, whatever the encoding.)
    let (body, digest): (&mut [u8], [u8; 32]) = match encoding {
        Encoding::Identity => {
            let d = signature::body_sha256(wire);
            (wire, d)
        }
        Encoding::Gzip => {
            let sent = (format == Format::Protobuf).then(|| signature::body_sha256(wire));
            body::gunzip(wire, shard.config.server.max_decompressed_bytes, scratch).map_err(gzip_refusal)?;
            let d = sent.unwrap_or_else(|| signature::body_sha256(scratch));
            (scratch, d)
        }
    };
    let mut bufs = shard.batches.borrow_mut();
    let b = &mut *bufs;
    let ctx = Context {
        game: game_id,
        limits: &shard.limits,
        spans: SpanEvents { patterns: &shard.config.otlp.span_events },
    };
    let mut ids = IdDeriver::new(&digest, shard.config.server.event_ids);
    let mut new_id = || ids.next_id();
    let summary = {
        let mut json = shard.json.borrow_mut();
        otlp::decode(signal, format, body, &ctx, &mut json, &mut new_id, &mut b.otlp_sink())
            .map_err(|e| IngestError::Body(BodyError::Malformed(e.to_string())))?
    };
    let (parts, n) = b.parts();
    if n == 0 {
        // Nothing to append: the rejections are counted now (the request leaves no nonce
        // behind, so a retry of it counts them again).
        let m = &shard.metrics;
        if summary.rejected > 0 && m.enabled() {
            m.emit(EventsRefused { game: game.metrics, reason: "invalid_field", count: summary.rejected as u64 });
        }
        return Ok((None, summary));
    }
    // The signal is part of the key for traces (logs keep the key they always had): the
    // same bytes exported as logs and then as traces (a body both decode) are two
    // requests, not a retry answered 200 with nothing appended.
    let nonce_key = match signal {
        Signal::Logs => format!("croupier:otlp:{game_id}:{}", hex::encode(digest)),
        Signal::Traces => format!("croupier:otlp:{game_id}:traces:{}", hex::encode(digest)),
    };
    let prepared = ingest::stage(shard, b, game, &nonce_key, &digest, parts, n)?.with_rejected(summary.rejected);
    Ok((Some(prepared), summary))
}
