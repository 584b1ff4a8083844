//! One HTTP/1.1 connection: the keep-alive request loop, for any [`Handler`].
//!
//! An idle connection is closed after `idle_timeout` (`read_timeout` before its first byte); a request whose head and body do
//! not arrive within `read_timeout` of its first byte gets 408 and the connection is
//! closed; a response not wholly written within `read_timeout` closes the connection (one
//! response is held at a time: the next request is read once it is written). With
//! `evict_idle` (the control port), at the connection cap the oldest idle connection
//! (between requests) is closed for a new one, or, none being idle, the oldest that has
//! not sent a whole request (head and body) or is writing an answer. Each request is routed by the handler's table (404/405 from the table), then
//! answered by the handler; a body it left unread is read past (or the connection
//! closed) before the answer goes out. After a refusal the connection stays open when
//! the request's body could be read past; otherwise the response says
//! `Connection: close`. At shutdown every answer is the connection's last (`server.rs`).

use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::error::HttpError;
use super::handler::{Handler, Request};
use super::request::{Head, Method};
use super::response::Response;
use crate::io::{ReadError, Socket};
use crate::server::{Server, Tier};

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

/// Serves requests on `stream` with `handler` until the peer closes, a timeout, a fatal
/// error, or the shard's drain.
pub async fn serve<H: Handler>(handler: Rc<H>, server: Rc<Server>, stream: TcpStream) {
    let read_timeout = server.limits.read_timeout;
    let idle_timeout = server.limits.idle_timeout;
    let fields = handler.router().fields();
    // Reads of a body count among incomplete heads (`evict_busy`), or after them.
    let mut sock = match (server.limits.evict_idle, server.limits.evict_busy) {
        (true, true) => Socket::evictable(stream, server.clone(), Tier::Head),
        (true, false) => Socket::evictable(stream, server.clone(), Tier::Body),
        (false, _) => Socket::new(stream),
    };
    let mut b = Buffers { input: Vec::with_capacity(INPUT_BYTES), ..Buffers::default() };
    let mut head = Head::default();
    let mut last_active = Instant::now();
    // A connection that has sent nothing yet gets the read timeout, not the idle one:
    // clients send at once, and silent sockets must not hold the shard's places.
    let mut idle_wait = read_timeout.min(idle_timeout);
    // No head read yet: at the cap it counts with the connections reading a head (closed
    // after the idle ones); one just accepted whose bytes are in already stays when
    // chosen, and says so, so that another is chosen for the waiting one.
    let mut fresh = true;
    loop {
        let mut started = (!b.input.is_empty()).then(Instant::now);
        loop {
            match head.parse_from(&b.input, fields) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    let path = head.has_request_line().then(|| head.path());
                    let resp = path.and_then(|_| handler.refused_head(&head, &e)).unwrap_or_else(|| e.response());
                    handler.served(path, resp.status, elapsed(started));
                    let _ = write(&mut sock, &mut b.output, resp, &server).await;
                    linger(&mut sock, &mut b.input).await;
                    return;
                }
            }
            let read =
                match started {
                    // At the connection cap (`evict_idle`), a connection whose head is still
                    // incomplete is closed for a new one when none is idle: clients that send
                    // part of a head and stop cannot hold every place until `read_timeout`.
                    Some(t) if server.limits.evict_idle => {
                        let place = server.idle.wait_head();
                        sock.read_in_place(&mut b.input, t + read_timeout, &place).await
                    }
                    Some(t) => sock.read(&mut b.input, t + read_timeout).await,
                    // Between requests: at shutdown, an idle connection is closed.
                    // At the connection cap (`evict_idle`), the oldest idle one is closed too.
                    None => {
                        let place = server.limits.evict_idle.then(|| {
                            if fresh {
                                server.idle.wait_head()
                            } else {
                                server.idle.wait()
                            }
                        });
                        let stop = async {
                            let evicted = crate::server::evicted(&place);
                            monoio::select! {
                                _ = server.drain.idle_past_grace(last_active) => {},
                                _ = evicted => {},
                            }
                        };
                        let read = sock.read_or_stop(&mut b.input, Instant::now() + idle_wait, stop).await;
                        if read.is_ok() && place.as_ref().is_some_and(|p| p.is_evicted()) {
                            // Chosen to close as its request came in: it stays to answer it,
                            // and says so, so that another is chosen for the waiting one.
                            server.idle.decline();
                        }
                        read
                    }
                };
            match read {
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(ReadError::Timeout) if started.is_some() => {
                    let resp = HttpError::RequestTimeout.response();
                    handler.served(None, resp.status, elapsed(started));
                    let _ = write(&mut sock, &mut b.output, resp, &server).await;
                    return;
                }
                Err(_) => return,
            }
        }
        idle_wait = idle_timeout;
        fresh = false;
        let deadline = started.unwrap_or_else(Instant::now) + read_timeout;
        // The head's bytes stay before the body's until the body is read: a body read
        // whole is handed over where it lies, not moved to the front.
        let buffers = (&mut b.input, &mut b.body, &mut b.scratch);
        let mut req = Request::new(&head, &mut sock, buffers, &server, deadline);
        let mut resp = match handler.router().find(head.method, head.path()) {
            Ok(route) => handler.handle(route, &mut req).await,
            Err(e) => handler.refused_head(&head, &e).unwrap_or_else(|| e.response()),
        };
        req.finish(&mut resp).await;
        let gone = req.client_gone();
        // Closed at the cap while its body was still arriving: no answer.
        if sock.evicted() {
            return;
        }
        // The client closed the connection before its answer: none is written.
        if gone {
            handler.served(Some(head.path()), resp.status, elapsed(started));
            return;
        }
        // At shutdown every response is the connection's last.
        resp.close |= !head.keep_alive || server.drain.is_started();
        resp.keep_alive = head.http10;
        resp.head_only = head.method == Method::Head;
        let close = resp.close;
        // Counted before it is written: a client that has its answer finds it counted.
        handler.served(Some(head.path()), resp.status, elapsed(started));
        b.trim();
        if write(&mut sock, &mut b.output, resp, &server).await.is_err() {
            return;
        }
        b.trim();
        if close {
            linger(&mut sock, &mut b.input).await;
            return;
        }
        last_active = Instant::now();
    }
}

/// Time since a request's first byte (zero when none had arrived).
fn elapsed(started: Option<Instant>) -> Duration {
    started.map_or(Duration::ZERO, |t| t.elapsed())
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

/// Writes `resp`, which must be wholly written within `read_timeout` (else the
/// connection is to close: a client that does not read cannot hold its place and its
/// answer). With `evict_busy`, while it is being written the connection counts among
/// those that have not sent a whole request: at the connection cap it may be chosen to
/// close. An error means the connection is to close.
async fn write(sock: &mut Socket, out: &mut Vec<u8>, resp: Response, server: &Server) -> std::io::Result<()> {
    out.clear();
    resp.encode(out);
    // One copy of the answer is held while it is written, not two.
    drop(resp);
    let deadline = Instant::now() + server.limits.read_timeout;
    let place = server.limits.evict_busy.then(|| server.idle.wait_head());
    let evicted = crate::server::evicted(&place);
    // Dropping an unfinished write cancels it; the connection then closes.
    let data = std::mem::take(out);
    monoio::select! {
        biased;
        (res, buf) = sock.stream().write_all(data) => {
            *out = buf;
            res.map(|_| ())
        }
        _ = monoio::time::sleep_until(deadline) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "response not written within read_timeout"))
        }
        _ = evicted => Err(std::io::Error::other("closed to make room for a new connection")),
    }
}
