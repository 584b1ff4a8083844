//! What a surface plugs into the connection loop: a [`Handler`] (its route table, the
//! answer to a routed request, and a hook that sees each answer), and the [`Request`] it
//! is handed, whose body is still on the connection.
//!
//! A handler reads the body only when it wants it ([`Request::read_body`], after
//! claiming it from the shard's budget with [`Request::claim_body`]). Whatever it leaves
//! unread is consumed by the connection loop after the handler returns: read past and
//! dropped, or the connection closed, so the body is never parsed as the next request.

use std::future::Future;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::time::Instant;

use super::body::{self, Input};
use super::error::HttpError;
use super::request::{BodyFraming, Head};
use super::response::{self, Response};
use crate::io::Socket;
use crate::router::Router;
use crate::server::{BodyBytes, Server};

/// A surface served on a listener.
pub trait Handler {
    /// What the route table maps a request to.
    type Route: Copy;

    /// The route table, and the header fields the handler reads.
    fn router(&self) -> &Router<Self::Route>;

    /// Answers a request routed to `route`.
    fn handle(&self, route: Self::Route, req: &mut Request<'_>) -> impl Future<Output = Response>;

    /// Sees each answer before it is written: the request's path (`None` when its
    /// request line could not be read), the status, and the time from the request's
    /// first byte.
    fn served(&self, path: Option<&str>, status: u16, duration: Duration);

    /// Sees a head refused after its request line was read (a header sent twice, a bad
    /// `Content-Length`, ...; or a path or method the route table does not take), before
    /// [`Handler::served`]: `head` holds its method, path and the fields read before the
    /// fault. Returns the answer in the route's own error
    /// contract, or `None` for the HTTP layer's (`HttpError::response`, the default).
    fn refused_head(&self, head: &Head, error: &HttpError) -> Option<Response> {
        let _ = (head, error);
        None
    }
}

/// Most bytes of a next request kept while [`Request::unless_closed`] watches the
/// connection.
pub const WATCH_BYTES: usize = 64 << 10;

/// Where a request's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Still on the connection, not asked for.
    Unread,
    /// Read (or failed while being read: the answer then closes the connection).
    Consumed,
}

/// A routed request as its handler sees it: the head, and the body still on the
/// connection; plus the connection's reusable buffers.
pub struct Request<'a> {
    head: &'a Head,
    sock: &'a mut Socket,
    /// The head's bytes (the first `head_len`, until the body is read or passed over)
    /// and bytes read past it.
    input: &'a mut Vec<u8>,
    /// How many of `input`'s first bytes are the head's.
    head_len: usize,
    /// Where [`Request::read_body`] puts the body, from `body_start` on.
    body: &'a mut Vec<u8>,
    body_start: usize,
    /// A spare buffer for the handler (trimmed after each request like the others).
    scratch: &'a mut Vec<u8>,
    server: &'a Server,
    /// When the head and body must be in.
    deadline: Instant,
    state: BodyState,
    /// [`Request::client_gone`].
    gone: bool,
}

impl<'a> Request<'a> {
    /// A request whose head, `head.len` bytes, is at the start of `buffers.0`.
    pub(super) fn new(
        head: &'a Head,
        sock: &'a mut Socket,
        buffers: (&'a mut Vec<u8>, &'a mut Vec<u8>, &'a mut Vec<u8>),
        server: &'a Server,
        deadline: Instant,
    ) -> Request<'a> {
        let (input, body, scratch) = buffers;
        let head_len = head.len;
        body.clear();
        Request {
            head,
            sock,
            input,
            head_len,
            body,
            body_start: 0,
            scratch,
            server,
            deadline,
            state: BodyState::Unread,
            gone: false,
        }
    }

    /// The head.
    pub fn head(&self) -> &'a Head {
        self.head
    }

    /// The address of the connection's peer (`None` if the socket no longer knows it).
    pub fn peer_ip(&mut self) -> Option<std::net::IpAddr> {
        self.sock.stream().peer_addr().ok().map(|a| a.ip())
    }

    /// Runs `work` (the answer being made) while watching the connection: `None` when the
    /// client closed it (or half-closed it: a client that waits for its answer keeps
    /// its side open, as browsers and HTTP libraries do) before `work` ended — `work` is
    /// dropped then, its own drop giving up what it was doing, and the connection is
    /// closed without an answer, to this request or any sent behind it
    /// ([`Request::client_gone`]). Bytes the client sends meanwhile (its next request)
    /// are kept for the connection, up to [`WATCH_BYTES`] and what the read that passes it
    /// brings; past that, or while the body is still unread on the connection (it is not
    /// read ahead of the handler), `work` runs unwatched. Work that ends when first run
    /// (an answer from memory, a refusal) is not watched.
    pub async fn unless_closed<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(out) = first {
            return Some(out);
        }
        let body_unread = self.state == BodyState::Unread && self.head.framing != BodyFraming::None;
        if body_unread {
            return Some(work.await);
        }
        let done = std::cell::Cell::new(None);
        // No deadline of its own: the work has its own.
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        loop {
            if self.input.len() >= WATCH_BYTES {
                return Some(work.await);
            }
            let stop = async { done.set(Some(work.as_mut().await)) };
            let read = self.sock.read_or_stop(self.input, far, stop).await;
            if let Some(out) = done.take() {
                return Some(out);
            }
            if read.is_err() {
                self.gone = true;
                return None;
            }
        }
    }

    /// The client closed the connection while [`Request::unless_closed`] watched it: the
    /// connection is closed without an answer.
    pub fn client_gone(&self) -> bool {
        self.gone
    }

    /// A claim on the shard's body budget for this request's body: the body is counted
    /// as its bytes arrive ([`Request::read_body`]), not as its head declares — a
    /// declared length costs the client nothing to send, and heads alone must not spend
    /// the budget of every other client. 503 `server_busy` when there is no room for
    /// what arrived. The claim holds until dropped.
    pub fn claim_body(&self) -> Result<BodyBytes<'a>, HttpError> {
        Ok(self.server.bodies.hold())
    }

    /// Reads the body into the connection's body buffer ([`Request::buffers`]), first
    /// answering `100 Continue` if the client waits for it, counting it in `held`. A
    /// declared length past the limit is refused before that: a client is not told to
    /// send a body that is refused already (the refusal closes the connection).
    pub async fn read_body(&mut self, held: &mut BodyBytes<'_>) -> Result<(), HttpError> {
        self.read_body_within(held, usize::MAX).await
    }

    /// [`Request::read_body`] held to `most` bytes of body (and their chunk framing's
    /// share of them) when that is less than the listener's limit: a route whose senders
    /// may send less (a public write key's) reads no more than that.
    pub async fn read_body_within(&mut self, held: &mut BodyBytes<'_>, most: usize) -> Result<(), HttpError> {
        self.state = BodyState::Consumed;
        let framing = self.head.framing;
        let limit = self.server.limits.max_body_bytes.min(most);
        // Whatever happens, the head's bytes leave the input.
        if matches!(framing, BodyFraming::Length(n) if n > limit) {
            self.drop_head();
            return Err(HttpError::PayloadTooLarge { limit });
        }
        if self.head.expect_continue && framing != BodyFraming::None {
            let (res, _) = self.sock.stream().write_all(response::CONTINUE).await;
            if res.is_err() {
                self.drop_head();
                return Err(HttpError::BadRequest("connection closed"));
            }
        }
        let head = std::mem::take(&mut self.head_len);
        self.body_start =
            body::read(self.sock, Input { buf: self.input, head }, framing, limit, self.deadline, self.body, held)
                .await?;
        Ok(())
    }

    /// Drops the head's bytes from the input (once: a body not read where it lies, or
    /// none).
    fn drop_head(&mut self) {
        let head = std::mem::take(&mut self.head_len);
        self.input.drain(..head.min(self.input.len()));
    }

    /// The body (once read; empty before) and the spare buffer.
    pub fn buffers(&mut self) -> (&mut [u8], &mut Vec<u8>) {
        let start = self.body_start.min(self.body.len());
        (&mut self.body[start..], self.scratch)
    }

    /// Consumes a body the handler left unread before `resp` goes out: read past and
    /// dropped; or, when the client waits for `100 Continue` and may never send it, the
    /// connection closes. A body that cannot be read past replaces `resp` with why.
    pub(super) async fn finish(&mut self, resp: &mut Response) {
        let framing = self.head.framing;
        if self.state == BodyState::Consumed {
            return;
        }
        self.state = BodyState::Consumed;
        self.drop_head();
        if framing == BodyFraming::None {
            return;
        }
        if self.head.expect_continue {
            resp.close = true;
            return;
        }
        // An answer that closes the connection lingers over the body instead.
        if resp.close {
            return;
        }
        let limit = self.server.limits.max_body_bytes;
        if let Err(e) = body::discard(self.sock, self.input, framing, limit, self.deadline).await {
            *resp = e.response();
            resp.close = true;
        }
    }
}
