//! One HTTP/1.1 connection: keep-alive request loop, routing, timeouts.
//!
//! An idle connection is closed after `idle_timeout_ms`; a request whose head and body do
//! not arrive within `read_timeout_ms` of its first byte gets 408 and the connection is
//! closed. After a refusal the connection stays open when the request's body could be
//! read past (it is read and discarded); otherwise the response says `Connection: close`.

use std::rc::Rc;
use std::time::Duration;

use croupier_control::metrics::{EventsRefused, RequestServed};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::body;
use super::request::{self, BodyFraming, Head, Method};
use super::response::{self, Response};
use crate::error::IngestError;
use crate::ingest::{self, Endpoint};
use crate::io::{ReadError, Socket};
use crate::server::Server;
use crate::shard::Shard;

/// Buffers reused across the requests of one connection.
#[derive(Default)]
struct Buffers {
    input: Vec<u8>,
    body: Vec<u8>,
    scratch: Vec<u8>,
    output: Vec<u8>,
}

/// Capacity of a new connection's input buffer.
const INPUT_BYTES: usize = 16 << 10;
/// Most capacity a buffer keeps between requests: a typical request (a batch of 100
/// events is ~30 KB) reuses its buffers, a large one gives them back.
const KEEP_BYTES: usize = 64 << 10;

impl Buffers {
    /// Lets go of what a large request grew, keeping bytes already read past it.
    fn trim(&mut self) {
        if self.input.capacity() > KEEP_BYTES {
            self.input.shrink_to(self.input.len().max(INPUT_BYTES));
        }
        for b in [&mut self.body, &mut self.scratch, &mut self.output] {
            if b.capacity() > KEEP_BYTES {
                *b = Vec::new();
            }
        }
    }
}

/// Serves requests on `stream` until the peer closes, a timeout, a fatal error, or the
/// shard's drain (`server.rs`).
pub async fn serve(shard: Rc<Shard>, server: Rc<Server>, stream: TcpStream) {
    let read_timeout = Duration::from_millis(shard.config.server.read_timeout_ms);
    let idle_timeout = Duration::from_millis(shard.config.server.idle_timeout_ms);
    let mut sock = Socket::new(stream);
    let mut b = Buffers { input: Vec::with_capacity(INPUT_BYTES), ..Buffers::default() };
    let mut last_active = Instant::now();
    loop {
        let mut started = (!b.input.is_empty()).then(Instant::now);
        let head = loop {
            match request::parse(&b.input) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let resp = error_response(&e, true);
                    count(&shard, None, resp.status, started);
                    let _ = write(&mut sock, &mut b.output, resp).await;
                    linger(&mut sock, &mut b.input).await;
                    return;
                }
            }
            let read = match started {
                Some(t) => sock.read(&mut b.input, t + read_timeout).await,
                // Between requests: at shutdown, an idle connection is closed.
                None => {
                    let stop = server.drain.idle_past_grace(last_active);
                    sock.read_or_stop(&mut b.input, Instant::now() + idle_timeout, stop).await
                }
            };
            match read {
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(ReadError::Timeout) if started.is_some() => {
                    let resp = error_response(&IngestError::RequestTimeout, true);
                    count(&shard, None, resp.status, started);
                    let _ = write(&mut sock, &mut b.output, resp).await;
                    return;
                }
                Err(_) => return,
            }
        };
        let deadline = started.unwrap_or_else(Instant::now) + read_timeout;
        b.input.drain(..head.len);
        let mut resp = respond(&shard, &server, &head, &mut sock, &mut b, deadline).await;
        b.trim();
        // At shutdown every response is the connection's last.
        resp.close |= !head.keep_alive || server.drain.is_started();
        resp.keep_alive = head.http10;
        resp.head_only = head.method == Method::Head;
        let close = resp.close;
        // Counted before it is written: a client that has its answer finds it counted.
        count(&shard, Some(&head.path), resp.status, started);
        if write(&mut sock, &mut b.output, resp).await.is_err() {
            return;
        }
        if close {
            linger(&mut sock, &mut b.input).await;
            return;
        }
        last_active = Instant::now();
    }
}

/// Counts a request answered with `status` (`path` when its head was read), timed from
/// its first byte to its response ready to write.
fn count(shard: &Shard, path: Option<&str>, status: u16, started: Option<Instant>) {
    let m = &shard.metrics;
    if m.enabled() {
        let route = path.map_or_else(|| m.layout().unmatched(), |p| m.layout().route(p));
        let duration = started.map_or(Duration::ZERO, |t| t.elapsed());
        m.emit(RequestServed { route, status, duration });
    }
}

/// Counts a refused batch on an ingest route whose records were not counted.
fn refused(shard: &Shard, head: &Head, e: &IngestError) {
    let m = &shard.metrics;
    if m.enabled() {
        let game = m.layout().game(head.game_id.as_deref().unwrap_or(""));
        m.emit(EventsRefused { game, reason: e.tag(), count: 1 });
    }
}

/// Closes after a final response: shuts down the sending side, then reads and discards
/// what the client still sends (a refused body) for a short while, so the kernel does
/// not answer it with a reset that could destroy the response before the client reads it.
async fn linger(sock: &mut Socket, scratch: &mut Vec<u8>) {
    let _ = sock.stream().shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut drained = 0usize;
    while drained < LINGER_BYTES {
        scratch.clear();
        match sock.read(scratch, deadline).await {
            Ok(n) => drained += n,
            Err(_) => return,
        }
    }
}

/// Most bytes read and discarded while closing.
const LINGER_BYTES: usize = 32 << 20;

async fn write(sock: &mut Socket, out: &mut Vec<u8>, resp: Response) -> std::io::Result<()> {
    out.clear();
    resp.encode(out);
    let (res, buf) = sock.stream().write_all(std::mem::take(out)).await;
    *out = buf;
    res.map(|_| ())
}

fn error_response(e: &IngestError, close: bool) -> Response {
    let mut r = Response::json(e.status(), e.body());
    r.retry_after = e.retry_after();
    if let IngestError::MethodNotAllowed { allow } = e {
        r.allow = Some(allow);
    }
    r.close = close || e.closes_connection();
    r
}

/// The data port's routes, as its requests are counted (`croupier_http_requests_total`).
pub const ROUTES: [&str; 4] = ["/api/ingest/events", "/api/ingest/payments", "/healthz", "/readyz"];

/// What a path leads to.
enum Route {
    Ingest(Endpoint),
    Health,
    Ready,
}

fn route(head: &Head) -> Result<Route, IngestError> {
    let (route, allow) = match head.path.as_str() {
        "/api/ingest/events" => (Route::Ingest(Endpoint::Events), "POST"),
        "/api/ingest/payments" => (Route::Ingest(Endpoint::Payments), "POST"),
        "/healthz" => (Route::Health, "GET, HEAD"),
        "/readyz" => (Route::Ready, "GET, HEAD"),
        _ => return Err(IngestError::NotFound),
    };
    let ok = match route {
        Route::Ingest(_) => head.method == Method::Post,
        Route::Health | Route::Ready => matches!(head.method, Method::Get | Method::Head),
    };
    if ok {
        Ok(route)
    } else {
        Err(IngestError::MethodNotAllowed { allow })
    }
}

async fn respond(
    shard: &Shard,
    server: &Server,
    head: &Head,
    sock: &mut Socket,
    b: &mut Buffers,
    deadline: Instant,
) -> Response {
    let limit = shard.config.server.max_body_bytes;
    let refuse = |e: IngestError| error_response(&e, false);
    let route = match route(head) {
        Ok(r) => r,
        Err(e) => return finish_refusal(sock, head, b, limit, deadline, e).await,
    };
    if matches!(route, Route::Health | Route::Ready) {
        // Answered without a body: whatever was sent with the request is read past.
        if let Err(e) = body::discard(sock, &mut b.input, head.framing, limit, deadline).await {
            return error_response(&e, true);
        }
    }
    match route {
        Route::Health => Response::json(200, r#"{"status":"ok"}"#.into()),
        Route::Ready => {
            if !shard.redis.is_up() || !shard.backlog.all_known() {
                let mut r = Response::json(503, r#"{"error":"redis_unavailable","ready":false}"#.into());
                r.retry_after = Some(shard.config.redis.retry_after_secs);
                r
            } else if !shard.backlog.all_admit() {
                let mut r = Response::json(503, r#"{"error":"backlog_full","ready":false}"#.into());
                r.retry_after = Some(shard.config.redis.retry_after_secs);
                r
            } else {
                Response::json(200, r#"{"status":"ready","ready":true}"#.into())
            }
        }
        Route::Ingest(endpoint) => {
            let (cred, encoding) = match ingest::precheck(shard, head) {
                Ok(c) => c,
                Err(e) => {
                    refused(shard, head, &e);
                    return finish_refusal(sock, head, b, limit, deadline, e).await;
                }
            };
            // The body counts against the shard's budget from before it is read (and
            // before `100 Continue` invites it) until the request has been handled.
            let mut held = server.bodies.hold();
            if let BodyFraming::Length(n) = head.framing {
                if n <= limit && !held.grow_to(n) {
                    let busy = IngestError::ServerBusy { retry_after: held.retry_after_secs() };
                    refused(shard, head, &busy);
                    return finish_refusal(sock, head, b, limit, deadline, busy).await;
                }
            }
            if head.expect_continue && head.framing != BodyFraming::None {
                let (res, _) = sock.stream().write_all(response::CONTINUE).await;
                if res.is_err() {
                    let e = IngestError::BadRequest("connection closed");
                    refused(shard, head, &e);
                    let mut r = refuse(e);
                    r.close = true;
                    return r;
                }
            }
            if let Err(e) = body::read(sock, &mut b.input, head.framing, limit, deadline, &mut b.body, &mut held).await
            {
                refused(shard, head, &e);
                return refuse(e);
            }
            match ingest::handle(shard, endpoint, &cred, encoding, &mut b.body, &mut b.scratch).await {
                Ok(n) => Response::json(202, format!(r#"{{"accepted":{n}}}"#)),
                Err(e) => refuse(e),
            }
        }
    }
}

/// Answers `e` to a request whose body has not been read: reads past the body without
/// keeping it when it can (keeping the connection), else closes.
async fn finish_refusal(
    sock: &mut Socket,
    head: &Head,
    b: &mut Buffers,
    limit: usize,
    deadline: Instant,
    e: IngestError,
) -> Response {
    // A client waiting for `100 Continue` may never send the body: close instead.
    let must_close = head.expect_continue && head.framing != BodyFraming::None;
    // A refusal that closes anyway need not read the body (the close lingers over it).
    let must_close = must_close || e.closes_connection();
    if !must_close {
        if let Err(body_err) = body::discard(sock, &mut b.input, head.framing, limit, deadline).await {
            return error_response(&body_err, true);
        }
    }
    error_response(&e, must_close)
}
