//! The OTLP/gRPC receiver: `LogsService/Export` and `TraceService/Export` over HTTP/2
//! without TLS (prior knowledge, as exporters' `insecure` channels speak it), on a
//! listener of its own on every shard. HTTP/2 is the `h2` crate's, over monoio's socket
//! through `monoio-compat` (tokio's I/O traits only: no tokio runtime, h2 has no timers);
//! each call is a task on the shard's runtime. A call is answered by the OTLP/HTTP path
//! ([`otlp::export`], [`otlp::refusal_status`]): the same token check, decoder, append and
//! refusals, as gRPC statuses (`docs/otlp.md`).

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use croupier_protocol::otlp::grpc::{self, Method};
use croupier_protocol::otlp::response::{self, Code};
use croupier_protocol::otlp::Format;
use croupier_protocol::validate::BodyError;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, StatusCode};
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;

use crate::error::IngestError;
use crate::http::body::Encoding;
use crate::http::error::HttpError;
use crate::otlp::{self, Exported};
use crate::server::{Server, Tier};
use crate::shard::Shard;

/// Calls in progress on one connection at most (`SETTINGS_MAX_CONCURRENT_STREAMS`).
const MAX_STREAMS: u32 = 64;
/// Largest request header block (metadata), bytes.
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Receive window of a call and of a connection, bytes: a typical export arrives
/// without waiting for window updates.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// What a call is answered with.
enum Answer {
    /// `grpc-status: 0` after this `Export*ServiceResponse`.
    Ok(Vec<u8>),
    /// A status that is not OK, with the seconds to wait when the exporter is to retry.
    Status(Code, String, Option<u64>),
    /// Not a gRPC call at all: a bare HTTP status.
    Http(StatusCode),
}

impl Answer {
    fn refusal(e: &IngestError) -> Answer {
        let (code, message, retry_after) = otlp::refusal_status(e);
        match (code, retry_after) {
            // The game's rate limit is backpressure: OTLP/gRPC signals that with
            // `UNAVAILABLE` and a `RetryInfo` (exporters drop data on a bare
            // `RESOURCE_EXHAUSTED`, which the spec makes retryable only with one).
            (Code::ResourceExhausted | Code::Unavailable, Some(secs)) => {
                Answer::Status(Code::Unavailable, message, Some(secs))
            }
            // Only a status that tells the exporter to come back carries a delay.
            (code, _) => Answer::Status(code, message, None),
        }
    }
}

/// How often a connection with calls in progress looks whether they ended, to be counted
/// idle again (at the connection cap, idle connections are closed for new ones).
const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// A call as the connection hands it over: its request and the way to answer it.
type Call = (http::Request<RecvStream>, SendResponse<Bytes>);

/// What the connection's loop waits for.
enum Next {
    /// The shard began to drain.
    Drain,
    /// Nothing came for the idle timeout.
    Idle,
    /// Closed to make room for a new connection at the cap (`evict_idle`).
    Evicted,
    /// Look again whether calls are in progress.
    Recheck,
    /// A call, the end of the connection, or its failure.
    Call(Option<Result<Box<Call>, h2::Error>>),
}

/// Serves one accepted connection: the HTTP/2 handshake within the read timeout, then
/// each call in a task of its own. The connection ends with a `GOAWAY` when the shard
/// drains or when it has had no call in progress for the idle timeout.
pub async fn serve(shard: Rc<Shard>, server: Rc<Server>, stream: TcpStream) {
    let limits = server.limits;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let handshake = builder.handshake::<_, Bytes>(StreamWrapper::new(stream));
    // At the connection cap (`evict_idle`), a connection still in its handshake is closed
    // for a new one when none is idle, as an incomplete HTTP/1 head is.
    let place = limits.evict_idle.then(|| server.idle.wait_head());
    let evicted = crate::server::evicted(&place);
    let shaken = monoio::select! {
        biased;
        _ = evicted => None,
        h = monoio::time::timeout(limits.read_timeout, handshake) => Some(h),
    };
    drop(place);
    let mut conn = match shaken {
        Some(Ok(Ok(conn))) => conn,
        // Not HTTP/2 with prior knowledge, too slow, or closed for another: nothing to answer.
        _ => return,
    };
    let calls = Rc::new(Cell::new(0usize));
    // Of those, the calls still receiving their message.
    let reading = Rc::new(Cell::new(0usize));
    let mut closing = false;
    loop {
        let draining = async {
            if closing {
                std::future::pending::<()>().await;
            }
            server.drain.started().await;
        };
        // Without a call in progress the connection is idle: at the cap (`evict_idle`) the
        // oldest idle connection is closed for a new one. With every call in progress
        // still receiving its message it is a connection whose body is arriving, closed
        // when none is idle nor in its handshake, as on HTTP/1 (calls trickling their
        // messages, one after another, held every place). With a call past its message
        // it is not, and it looks again shortly (calls run in tasks of their own).
        let tier = match (limits.evict_idle, calls.get()) {
            (false, _) => None,
            (true, 0) => Some(Tier::Idle),
            (true, n) if reading.get() == n => Some(Tier::Body),
            (true, _) => None,
        };
        let place = tier.map(|t| server.idle.register(t));
        let busy = limits.evict_idle && calls.get() > 0;
        let evicted = async {
            if busy {
                monoio::select! {
                    _ = crate::server::evicted(&place) => {},
                    _ = monoio::time::sleep(RECHECK) => {},
                }
            } else {
                crate::server::evicted(&place).await
            }
        };
        let next = monoio::select! {
            biased;
            _ = draining => Next::Drain,
            c = conn.accept() => Next::Call(c.map(|r| r.map(Box::new))),
            _ = monoio::time::sleep(limits.idle_timeout) => Next::Idle,
            _ = evicted => if place.as_ref().is_some_and(|p| p.is_evicted()) { Next::Evicted } else { Next::Recheck },
        };
        if !matches!(next, Next::Evicted) && place.as_ref().is_some_and(|p| p.is_evicted()) {
            // Chosen to close as a call came in: it stays to serve it, and says so, so
            // that another is chosen for the connection waiting at the cap.
            server.idle.decline();
        }
        drop(place);
        // A call may have read the rest of its message since the place was taken (no
        // wake-up then): it is past its message, and the connection stays.
        let next = match next {
            Next::Evicted if calls.get() > 0 && reading.get() < calls.get() => {
                server.idle.decline();
                Next::Recheck
            }
            next => next,
        };
        match next {
            Next::Evicted => {
                // No call in progress, or only calls still receiving their messages (they
                // end with the connection, unanswered, as an HTTP/1 body cut at the cap): a
                // GOAWAY first, so that a call the client is sending at this moment is
                // retried elsewhere rather than met by a bare close.
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                let flush = async { while conn.accept().await.is_some() {} };
                let _ = monoio::time::timeout(std::time::Duration::from_millis(200), flush).await;
                break;
            }
            Next::Recheck => {}
            Next::Drain => {
                closing = true;
                conn.graceful_shutdown();
            }
            Next::Idle if calls.get() > 0 => {}
            // Idle after the GOAWAY too: the peer has not closed; stop waiting for it.
            Next::Idle if closing => break,
            Next::Idle => {
                closing = true;
                conn.graceful_shutdown();
            }
            Next::Call(Some(Ok(c))) => {
                let (req, respond) = *c;
                calls.set(calls.get() + 1);
                let (shard, server, calls, reading) = (shard.clone(), server.clone(), calls.clone(), reading.clone());
                monoio::spawn(async move {
                    call(&shard, &server, req, respond, &reading).await;
                    calls.set(calls.get() - 1);
                });
            }
            Next::Call(None | Some(Err(_))) => break,
        }
    }
}

/// Counts a call among its connection's calls receiving their message while it lives.
struct Reading<'a>(&'a Cell<usize>);

impl<'a> Reading<'a> {
    fn new(count: &'a Cell<usize>) -> Reading<'a> {
        count.set(count.get() + 1);
        Reading(count)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Answers one call (`reading`: its connection's count of calls receiving their message).
async fn call(
    shard: &Shard,
    server: &Server,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    reading: &Cell<usize>,
) {
    let answer = answer(shard, server, req, reading).await;
    // A peer that reset the call or left does not hear the answer: nothing to do.
    let _ = send(&mut respond, answer);
}

/// What a call is answered: checks from its headers, then its message read and exported.
async fn answer(shard: &Shard, server: &Server, req: http::Request<RecvStream>, reading: &Cell<usize>) -> Answer {
    let (head, mut body) = req.into_parts();
    if head.method != http::Method::POST {
        return Answer::Http(StatusCode::METHOD_NOT_ALLOWED);
    }
    // A field that decides something, sent twice, is refused as on OTLP/HTTP: two readers
    // (a proxy, this server) would take different values.
    if let Some(name) = ["authorization", "content-type", "grpc-encoding"]
        .into_iter()
        .find(|name| head.headers.get_all(*name).iter().nth(1).is_some())
    {
        let e = IngestError::from(HttpError::DuplicateHeader(name));
        // The token's game when the token is not what was sent twice.
        let token = (name != "authorization").then(|| head.headers.get("authorization")).flatten();
        let game = otlp::bearer_game(shard, token.and_then(|v| v.to_str().ok())).unwrap_or("");
        crate::ingest::count_refused(shard, game, &e, 1);
        return Answer::refusal(&e);
    }
    let field = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    // A call refused for its headers counts as one refused event of the token's game (as
    // the data port and OTLP/HTTP count theirs), with the answer gRPC prescribes.
    let count_media = |what: &'static str| {
        let game = otlp::bearer_game(shard, field("authorization")).unwrap_or("");
        crate::ingest::count_refused(shard, game, &HttpError::UnsupportedMediaType(what).into(), 1);
    };
    if !field("content-type").is_some_and(grpc::is_grpc_content_type) {
        count_media("content-type (use application/grpc)");
        return Answer::Http(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let signal = match Method::from_path(head.uri.path()) {
        Method::Export(signal) => signal,
        Method::Metrics => return Answer::Status(Code::Unimplemented, otlp::METRICS_UNIMPLEMENTED.into(), None),
        Method::Unknown => {
            return Answer::Status(Code::Unimplemented, format!("unknown method {}", head.uri.path()), None);
        }
    };
    let gzip = match field("grpc-encoding").map(str::trim) {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            count_media("grpc-encoding (use gzip or identity)");
            let m = format!("grpc-encoding {other} is not supported (use gzip or identity)");
            return Answer::Status(Code::Unimplemented, m, None);
        }
    };
    // Refused before its records were counted (token, body): one refused event, as on the
    // data port.
    let refuse = |game: &str, e: IngestError| {
        crate::ingest::count_refused(shard, game, &e, 1);
        Answer::refusal(&e)
    };
    let Some(game) = otlp::bearer_game(shard, field("authorization")) else {
        return refuse("", IngestError::MissingCredentials("authorization"));
    };
    if !shard.redis.is_up() {
        return refuse(game, IngestError::RedisUnavailable { retry_after: shard.config.redis.retry_after_secs });
    }
    let max = server.limits.max_body_bytes;
    let mut wire = Vec::new();
    let mut held = server.bodies.hold();
    // The call's metadata, kept until it is answered, counts in the budget as its message
    // does (each field as HTTP/2 counts a header list: name, value and 32 bytes): calls
    // holding 16 KiB of it each, 64 a connection, on every connection, would be counted
    // by nothing.
    let metadata: usize = head.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum();
    if !held.grow_to(metadata) {
        return refuse(game, HttpError::ServerBusy { retry_after: held.retry_after_secs() }.into());
    }
    let read = read_message(&mut body, max, metadata, &mut wire, &mut held);
    let counted = Reading::new(reading);
    let read = monoio::time::timeout(server.limits.read_timeout, read).await;
    drop(counted);
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return refuse(game, e),
        Err(_) => return refuse(game, HttpError::RequestTimeout.into()),
    }
    let message = match grpc::message(&wire, max) {
        Ok(m) => m,
        Err(grpc::FrameError::TooLarge { .. }) => {
            return refuse(game, HttpError::PayloadTooLarge { limit: max }.into());
        }
        // `INVALID_ARGUMENT` with the framing's error, as the decoder's.
        Err(e) => return refuse(game, IngestError::Body(BodyError::Malformed(e.to_string()))),
    };
    if message.compressed && !gzip {
        count_media("compressed message without a grpc-encoding");
        return Answer::Status(Code::Internal, "compressed flag set without a grpc-encoding".into(), None);
    }
    wire.drain(..message.payload.start);
    let encoding = if message.compressed { Encoding::Gzip } else { Encoding::Identity };
    // A call's own inflate buffer: none of it is kept across the wait for Redis.
    let mut scratch = Vec::new();
    match otlp::export(shard, signal, Format::Protobuf, encoding, game, &mut wire, &mut scratch, 0).await {
        Ok(Exported { rejected, message }) => {
            let mut out = Vec::new();
            response::export(&mut out, signal, Format::Protobuf, rejected, &message);
            Answer::Ok(out)
        }
        Err(e) => Answer::refusal(&e),
    }
}

/// Reads a call's request body (one length-prefixed message) into `wire`, counted against
/// the shard's body budget after the `base` bytes `held` counts already (the call's
/// metadata); a message longer than `max` is refused from its prefix.
async fn read_message(
    body: &mut RecvStream,
    max: usize,
    base: usize,
    wire: &mut Vec<u8>,
    held: &mut crate::server::BodyBytes<'_>,
) -> Result<(), IngestError> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| HttpError::BadRequest("call reset mid-message"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let len = wire.len() + chunk.len();
        if len > max + grpc::PREFIX_LEN {
            return Err(HttpError::PayloadTooLarge { limit: max }.into());
        }
        // Room for the declared message at once (at most 256 KiB, and never past `max`),
        // counted in the shard's body budget as if it had arrived: a call that declares
        // a large message and sends a few bytes holds what it made the server allocate,
        // so calls in their thousands cannot hold memory past the budget.
        let room = if wire.is_empty() {
            let declared = grpc::declared_len(&chunk).unwrap_or(0).min(256 << 10).min(max as u64) as usize;
            grpc::PREFIX_LEN + declared
        } else {
            0
        };
        if !held.grow_to(base + len.max(room)) {
            return Err(HttpError::ServerBusy { retry_after: held.retry_after_secs() }.into());
        }
        wire.reserve(room.saturating_sub(wire.len()));
        wire.extend_from_slice(&chunk);
        if grpc::declared_len(wire).is_some_and(|n| n > max as u64) {
            return Err(HttpError::PayloadTooLarge { limit: max }.into());
        }
    }
    Ok(())
}

/// Sends `answer`: a message and `grpc-status: 0` in trailers, a status alone
/// (Trailers-Only: one `HEADERS` frame that ends the call), or a bare HTTP status.
fn send(respond: &mut SendResponse<Bytes>, answer: Answer) -> Result<(), h2::Error> {
    let grpc = |status| {
        let mut r = http::Response::new(());
        *r.status_mut() = status;
        r.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        r.headers_mut().insert("grpc-accept-encoding", HeaderValue::from_static("identity,gzip"));
        r
    };
    match answer {
        Answer::Ok(message) => {
            let mut out = Vec::with_capacity(grpc::PREFIX_LEN + message.len());
            grpc::put_message(&mut out, &message);
            let mut stream = respond.send_response(grpc(StatusCode::OK), false)?;
            stream.send_data(Bytes::from(out), false)?;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            stream.send_trailers(trailers)
        }
        Answer::Status(code, message, retry_after) => {
            let mut r = grpc(StatusCode::OK);
            for (name, value) in grpc::status_trailers(code, &message, retry_after) {
                // Percent- and base64-encoded: always a valid value.
                if let Ok(v) = HeaderValue::from_str(&value) {
                    r.headers_mut().insert(name, v);
                }
            }
            respond.send_response(r, true).map(drop)
        }
        Answer::Http(status) => {
            let mut r = http::Response::new(());
            *r.status_mut() = status;
            respond.send_response(r, true).map(drop)
        }
    }
}
