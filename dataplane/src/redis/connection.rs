//! One pipelined Redis connection per shard.
//!
//! Request handlers queue encoded commands on a local channel; the connection task
//! writes everything queued in one `writev`, then reads the replies in order and hands
//! each to its waiter. While it waits for replies, new commands queue up and go out in the
//! next round, so the pipeline depth follows the load.
//!
//! When the connection drops, every command in flight or queued gets
//! [`RedisError::Unavailable`] (its effect is unknown to the caller, which answers 503),
//! and the task reconnects with back-off. On every (re)connect it makes sure the consumer
//! group exists on each stream.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use croupier_protocol::resp::{self, Frame};
use croupier_protocol::stream::{StreamKind, CONSUMER_GROUP};
use local_sync::{mpsc::unbounded, oneshot};
use monoio::buf::VecBuf;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::http::read::read_more;

/// A command could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisError {
    /// Not connected, or the connection dropped before the reply.
    Unavailable,
    /// No reply within the timeout.
    Timeout,
    /// The server sent bytes that are not RESP.
    Protocol(String),
}

struct Pending {
    cmd: Vec<u8>,
    reply: oneshot::Sender<Result<Frame, RedisError>>,
}

/// Handle to the shard's Redis connection; cheap to clone within the shard.
#[derive(Clone)]
pub struct RedisClient {
    tx: unbounded::Tx<Pending>,
    up: Rc<Cell<bool>>,
    reply_timeout: Duration,
}

/// Most commands written in one pipeline round.
const MAX_ROUND: usize = 512;

impl RedisClient {
    /// Starts the connection task on the current shard.
    pub fn spawn(addr: String, connect_timeout: Duration, reply_timeout: Duration) -> RedisClient {
        let (tx, rx) = unbounded::channel();
        let up = Rc::new(Cell::new(false));
        monoio::spawn(run(addr, connect_timeout, rx, up.clone()));
        RedisClient { tx, up, reply_timeout }
    }

    /// Whether the connection is established.
    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Sends one encoded command and waits for its reply. An error reply is a
    /// `Ok(Frame::Error)`: only transport failures are `Err`.
    pub async fn call(&self, cmd: Vec<u8>) -> Result<Frame, RedisError> {
        if !self.up.get() {
            return Err(RedisError::Unavailable);
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { cmd, reply }).map_err(|_| RedisError::Unavailable)?;
        match monoio::time::timeout(self.reply_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RedisError::Unavailable),
            Err(_) => Err(RedisError::Timeout),
        }
    }
}

async fn run(addr: String, connect_timeout: Duration, mut rx: unbounded::Rx<Pending>, up: Rc<Cell<bool>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok(Ok(mut stream)) = monoio::time::timeout(connect_timeout, TcpStream::connect(addr.as_str())).await {
            let _ = stream.set_nodelay(true);
            if ensure_groups(&mut stream).await.is_ok() {
                backoff = Duration::from_millis(50);
                up.set(true);
                let closed = serve(&mut stream, &mut rx).await;
                up.set(false);
                if closed {
                    return;
                }
            }
        }
        while let Ok(p) = rx.try_recv() {
            let _ = p.reply.send(Err(RedisError::Unavailable));
        }
        monoio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Creates the consumer group on each stream (with the stream) unless it exists.
async fn ensure_groups(stream: &mut TcpStream) -> Result<(), RedisError> {
    let mut out = Vec::new();
    for s in StreamKind::ALL {
        resp::command(
            &mut out,
            &[b"XGROUP", b"CREATE", s.key().as_bytes(), CONSUMER_GROUP.as_bytes(), b"0", b"MKSTREAM"],
        );
    }
    let (res, _) = stream.write_all(out).await;
    res.map_err(|_| RedisError::Unavailable)?;
    let mut rbuf = Vec::with_capacity(1024);
    for _ in StreamKind::ALL {
        match read_frame(stream, &mut rbuf).await? {
            Frame::Error(e) if !e.starts_with("BUSYGROUP") => return Err(RedisError::Protocol(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Reads one reply, reading more bytes as needed; consumed bytes are removed from `rbuf`.
async fn read_frame(stream: &mut TcpStream, rbuf: &mut Vec<u8>) -> Result<Frame, RedisError> {
    loop {
        if let Some((frame, used)) = resp::decode_reply(rbuf).map_err(|e| RedisError::Protocol(e.0))? {
            rbuf.drain(..used);
            return Ok(frame);
        }
        // Skip the full parse until the reply is complete: measuring it skips bulk
        // payloads by their length, so a large reply is not re-parsed on every read.
        loop {
            read_more(stream, rbuf).await.map_err(|_| RedisError::Unavailable)?;
            if resp::frame_len(rbuf).map_err(|e| RedisError::Protocol(e.0))?.is_some() {
                break;
            }
        }
    }
}

/// Serves commands until the connection fails (`false`) or every client is gone (`true`).
async fn serve(stream: &mut TcpStream, rx: &mut unbounded::Rx<Pending>) -> bool {
    let mut cmds: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut inflight: VecDeque<oneshot::Sender<Result<Frame, RedisError>>> = VecDeque::new();
    loop {
        let Some(first) = rx.recv().await else { return true };
        cmds.push(first.cmd);
        inflight.push_back(first.reply);
        while inflight.len() < MAX_ROUND {
            let Ok(p) = rx.try_recv() else { break };
            cmds.push(p.cmd);
            inflight.push_back(p.reply);
        }
        // Every command goes out from its own buffer, in one `writev`: a batch entry's
        // archive is not copied once more into a write buffer.
        let res = if let [_] = cmds.as_slice() {
            let cmd = cmds.pop().unwrap_or_default();
            stream.write_all(cmd).await.0
        } else {
            let (res, buf) = stream.write_vectored_all(VecBuf::from(std::mem::take(&mut cmds))).await;
            cmds = buf.into();
            cmds.clear();
            res
        };
        if res.is_err() {
            fail_all(&mut inflight);
            return false;
        }
        while let Some(waiter) = inflight.pop_front() {
            match read_frame(stream, &mut rbuf).await {
                Ok(frame) => {
                    let _ = waiter.send(Ok(frame));
                }
                Err(e) => {
                    let _ = waiter.send(Err(e));
                    fail_all(&mut inflight);
                    return false;
                }
            }
        }
    }
}

fn fail_all(inflight: &mut VecDeque<oneshot::Sender<Result<Frame, RedisError>>>) {
    for w in inflight.drain(..) {
        let _ = w.send(Err(RedisError::Unavailable));
    }
}
