//! One pipelined Redis connection per shard.
//!
//! Request handlers queue encoded commands on a local channel; the connection task
//! writes everything queued in one `writev`, then reads the replies in order and hands
//! each to its waiter. While it waits for replies, new commands queue up and go out in the
//! next round, so the pipeline depth follows the load.
//!
//! A connection that stops answering is given up: when the reply at the head of the
//! pipeline has not come within the reply timeout (plus the command's own allowance, for
//! a blocking read) of the previous reply or of the write, or a write does not finish in
//! that time, or a reply is not RESP, the connection is closed and every command in
//! flight or queued gets [`RedisError::Unavailable`] (its effect is unknown to the
//! caller, which answers 503). The task then reconnects with back-off and, on every
//! (re)connect, makes sure the consumer group exists on each stream (within the reply
//! timeout too). TCP keepalive and `TCP_USER_TIMEOUT` let the kernel notice a dead peer
//! as well.
//!
//! With `redis.wait_replicas` set, a command sent with [`RedisClient::call_replicated`]
//! is answered only after a `WAIT` that follows it: a round that holds such commands ends
//! with one `WAIT n timeout`, which covers every write of the round (and every earlier
//! one on the connection), so the cost is one `WAIT` per round, not per command, and a
//! round's replies are held until its `WAIT` has answered. The caller gets the number of
//! replicas that confirmed. Rounds without such commands send no `WAIT`.
//!
//! With `redis.sentinels`, the address is asked of the sentinels on every (re)connect,
//! the server is checked to be a primary, and a `READONLY` error reply (the server was
//! demoted) closes the connection so that the next one asks again ([`super::sentinel`]).
//!
//! Before the reply timeout gives a connection up, a reply owed for a quarter of it
//! already makes `/readyz` fail ([`super::overdue`]).
//!
//! A command whose caller has already given up (timed out) is skipped rather than sent
//! late, and the commands waiting to be sent are bounded in bytes: past
//! `redis.max_queued_bytes`, [`RedisClient::call`] fails at once.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use croupier_protocol::resp::{self, Frame};
use croupier_protocol::stream::{StreamKind, CONSUMER_GROUP};
use local_sync::{mpsc::unbounded, oneshot};
use monoio::buf::VecBuf;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::overdue::Overdue;
use super::sentinel::{self, Sentinels};
use crate::io::read_more;

/// A command could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisError {
    /// Not connected, or the connection dropped before the reply.
    Unavailable,
    /// No reply within the timeout.
    Timeout,
    /// Too many bytes of commands are waiting to be sent; nothing was queued.
    QueueFull,
    /// The server sent bytes that are not RESP.
    Protocol(String),
}

/// A reply and, for a replicated command, how many replicas confirmed it (0 otherwise).
struct Answer {
    frame: Frame,
    replicas: u32,
}

type Waiter = oneshot::Sender<Result<Answer, RedisError>>;

/// A command waiting to be sent.
struct Pending {
    cmd: Vec<u8>,
    /// Time the reply may take beyond the reply timeout (a blocking read's block).
    allowance: Duration,
    /// Answered only after the round's `WAIT`.
    replicated: bool,
    reply: Waiter,
}

/// A command sent, waiting for its reply; `reply: None` is the round's `WAIT`.
struct InFlight {
    allowance: Duration,
    replicated: bool,
    reply: Option<Waiter>,
}

/// State shared by the handles and the connection task.
struct Shared {
    up: Cell<bool>,
    /// Connections made so far: a reading taken on an earlier one is stale.
    epoch: Epoch,
    /// Bytes of the commands in the channel.
    queued_bytes: Cell<usize>,
    max_queued_bytes: usize,
    reply_timeout: Duration,
    /// `WAIT <replicas> <timeout>`, encoded, and the timeout (`None`: not asked for).
    wait: Option<(Vec<u8>, Duration)>,
    /// The primary is found through sentinels: a `READONLY` reply replaces the connection.
    follow: bool,
    /// Since when a reply is owed, for `/readyz`.
    overdue: Arc<Overdue>,
}

impl Shared {
    /// Takes a command off the queue's byte count.
    fn dequeued(&self, p: &Pending) {
        self.queued_bytes.set(self.queued_bytes.get().saturating_sub(p.cmd.len()));
    }
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `host:port` (unused with `sentinels`).
    pub addr: String,
    /// Where to ask for the primary's address instead (`redis.sentinels`).
    pub sentinels: Option<Sentinels>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for a reply (and for a write) before the connection is given up.
    pub reply_timeout: Duration,
    /// Bytes of commands that may wait to be sent.
    pub max_queued_bytes: usize,
    /// Replicas a replicated command waits for (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// How long `WAIT` may block.
    pub wait_timeout: Duration,
    /// Where the connection stamps the replies it owes (an ingest shard's place in the
    /// process's [`super::overdue::RedisHealth`]); `None`: a stamp of its own.
    pub overdue: Option<Arc<Overdue>>,
}

impl RedisOptions {
    /// The options of the `[redis]` configuration.
    pub fn from_config(c: &croupier_control::config::Redis) -> RedisOptions {
        RedisOptions {
            addr: c.addr.clone(),
            sentinels: (!c.sentinels.is_empty())
                .then(|| Sentinels { addrs: c.sentinels.clone(), master_name: c.master_name.clone() }),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            reply_timeout: Duration::from_millis(c.reply_timeout_ms),
            max_queued_bytes: c.max_queued_bytes,
            wait_replicas: c.wait_replicas,
            wait_timeout: Duration::from_millis(c.wait_timeout_ms),
            overdue: None,
        }
    }
}

/// How many times the connection was (re)established. What was read from Redis on an
/// earlier connection may no longer hold (Redis may have restarted, or failed over), so
/// readers compare the epoch of their reading with the current one.
#[derive(Debug, Clone, Default)]
pub struct Epoch(Rc<Cell<u64>>);

impl Epoch {
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }

    /// Counts one more connection.
    pub(crate) fn advance(&self) {
        self.0.set(self.0.get().wrapping_add(1));
    }
}

/// Handle to the shard's Redis connection; cheap to clone within the shard.
#[derive(Clone)]
pub struct RedisClient {
    tx: unbounded::Tx<Pending>,
    shared: Rc<Shared>,
}

/// Most commands written in one pipeline round.
const MAX_ROUND: usize = 512;

/// Queue bound of [`RedisClient::spawn`].
const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;

impl RedisClient {
    /// Starts the connection task on the current shard, with the default queue bound.
    pub fn spawn(addr: String, connect_timeout: Duration, reply_timeout: Duration) -> RedisClient {
        Self::start(RedisOptions {
            addr,
            sentinels: None,
            connect_timeout,
            reply_timeout,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            wait_replicas: 0,
            wait_timeout: Duration::ZERO,
            overdue: None,
        })
    }

    /// Starts the connection task on the current shard.
    pub fn start(options: RedisOptions) -> RedisClient {
        let (tx, rx) = unbounded::channel();
        let shared = Rc::new(Shared {
            up: Cell::new(false),
            epoch: Epoch::default(),
            queued_bytes: Cell::new(0),
            max_queued_bytes: options.max_queued_bytes.max(1),
            reply_timeout: options.reply_timeout,
            wait: (options.wait_replicas > 0).then(|| {
                let mut cmd = Vec::with_capacity(48);
                let (n, ms) = (options.wait_replicas.to_string(), options.wait_timeout.as_millis().max(1).to_string());
                resp::command(&mut cmd, &[b"WAIT", n.as_bytes(), ms.as_bytes()]);
                (cmd, options.wait_timeout)
            }),
            follow: options.sentinels.is_some(),
            overdue: options.overdue.clone().unwrap_or_else(|| Arc::new(Overdue::new(options.reply_timeout))),
        });
        monoio::spawn(run(options, rx, shared.clone()));
        RedisClient { tx, shared }
    }

    /// Whether the connection is established.
    pub fn is_up(&self) -> bool {
        self.shared.up.get()
    }

    /// How long a reply has been owed, when that is past a quarter of the reply timeout.
    pub fn overdue(&self) -> Option<Duration> {
        self.shared.overdue.late_by()
    }

    /// The connection count, shared: it moves on every (re)connect.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch.clone()
    }

    /// Sends one encoded command and waits for its reply. An error reply is a
    /// `Ok(Frame::Error)`: only transport failures are `Err`.
    pub async fn call(&self, cmd: Vec<u8>) -> Result<Frame, RedisError> {
        self.call_blocking(cmd, Duration::ZERO).await
    }

    /// [`RedisClient::call`] for a command that may block in Redis for up to `block`
    /// (`XREADGROUP ... BLOCK ms`): its reply may take that much longer.
    pub async fn call_blocking(&self, cmd: Vec<u8>, block: Duration) -> Result<Frame, RedisError> {
        self.send(cmd, block, false).await.map(|a| a.frame)
    }

    /// [`RedisClient::call`] for a write that must reach `redis.wait_replicas` replicas:
    /// the reply comes after the `WAIT` that ends its round, with the number of replicas
    /// that confirmed every write of the connection so far (0 when no `WAIT` is asked
    /// for, or `WAIT` failed).
    pub async fn call_replicated(&self, cmd: Vec<u8>) -> Result<(Frame, u32), RedisError> {
        let Some((_, wait)) = &self.shared.wait else { return self.call(cmd).await.map(|f| (f, 0)) };
        self.send(cmd, *wait, true).await.map(|a| (a.frame, a.replicas))
    }

    async fn send(&self, cmd: Vec<u8>, block: Duration, replicated: bool) -> Result<Answer, RedisError> {
        let s = &self.shared;
        if !s.up.get() {
            return Err(RedisError::Unavailable);
        }
        let queued = s.queued_bytes.get();
        // A command that alone exceeds the bound still goes through an empty queue.
        if queued > 0 && queued.saturating_add(cmd.len()) > s.max_queued_bytes {
            return Err(RedisError::QueueFull);
        }
        let len = cmd.len();
        let (reply, rx) = oneshot::channel();
        // A replicated command's own reply is due as any other; its `WAIT` has the block.
        let allowance = if replicated { Duration::ZERO } else { block };
        self.tx.send(Pending { cmd, allowance, replicated, reply }).map_err(|_| RedisError::Unavailable)?;
        s.queued_bytes.set(queued.saturating_add(len));
        match monoio::time::timeout(s.reply_timeout.saturating_add(block), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RedisError::Unavailable),
            Err(_) => Err(RedisError::Timeout),
        }
    }
}

/// The address to connect to: the configured one, or the primary the sentinels name.
async fn target(options: &RedisOptions) -> Option<String> {
    match &options.sentinels {
        None => Some(options.addr.clone()),
        Some(s) => s.primary(options.connect_timeout.max(options.reply_timeout)).await,
    }
}

/// Makes the connection ready: a primary, when found through sentinels, and the
/// consumer groups there.
async fn prepare(stream: &mut TcpStream, follow: bool) -> Result<(), RedisError> {
    if follow && !sentinel::is_primary(stream).await? {
        return Err(RedisError::Protocol("not a primary".into()));
    }
    ensure_groups(stream).await
}

async fn run(options: RedisOptions, mut rx: unbounded::Rx<Pending>, shared: Rc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let (connect_timeout, reply_timeout) = (options.connect_timeout, shared.reply_timeout);
    loop {
        let Some(addr) = target(&options).await else {
            while let Ok(p) = rx.try_recv() {
                shared.dequeued(&p);
                let _ = p.reply.send(Err(RedisError::Unavailable));
            }
            monoio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        if let Ok(Ok(mut stream)) = monoio::time::timeout(connect_timeout, TcpStream::connect(addr.as_str())).await {
            let _ = stream.set_nodelay(true);
            set_keepalive(&stream, reply_timeout);
            if let Ok(Ok(())) = monoio::time::timeout(reply_timeout, prepare(&mut stream, shared.follow)).await {
                backoff = Duration::from_millis(50);
                shared.epoch.advance();
                shared.up.set(true);
                let closed = serve(&mut stream, &mut rx, &shared).await;
                shared.up.set(false);
                shared.overdue.settled();
                if closed {
                    return;
                }
            }
        }
        while let Ok(p) = rx.try_recv() {
            shared.dequeued(&p);
            let _ = p.reply.send(Err(RedisError::Unavailable));
        }
        monoio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// TCP keepalive (probes after 5 s idle, every second, 3 of them) and
/// `TCP_USER_TIMEOUT` (unacknowledged data for longer than the reply timeout, at least
/// a second, drops the connection): the kernel notices a peer that is gone. Best effort.
fn set_keepalive(stream: &TcpStream, reply_timeout: Duration) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow; socket2 only
    // sets options on it and does not close it.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let sock = socket2::SockRef::from(&fd);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(reply_timeout.max(Duration::from_secs(1))));
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
pub(super) async fn read_frame(stream: &mut TcpStream, rbuf: &mut Vec<u8>) -> Result<Frame, RedisError> {
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
async fn serve(stream: &mut TcpStream, rx: &mut unbounded::Rx<Pending>, shared: &Shared) -> bool {
    let reply_timeout = shared.reply_timeout;
    let mut cmds: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    // Replies of replicated commands, until the round's `WAIT` answers (dropped, and so
    // `Unavailable`, if the connection fails first).
    let mut held: Vec<(Waiter, Frame)> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { return true };
        let mut next = Some(first);
        let mut replicated = false;
        while let Some(p) = next.take() {
            shared.dequeued(&p);
            // A caller that gave up has answered its client already: sending the
            // command now would store what was refused.
            if !p.reply.is_closed() {
                cmds.push(p.cmd);
                replicated |= p.replicated;
                inflight.push_back(InFlight { allowance: p.allowance, replicated: p.replicated, reply: Some(p.reply) });
            }
            if inflight.len() < MAX_ROUND {
                next = rx.try_recv().ok();
            }
        }
        if cmds.is_empty() {
            continue;
        }
        if let (true, Some((wait, timeout))) = (replicated, &shared.wait) {
            cmds.push(wait.clone());
            inflight.push_back(InFlight { allowance: *timeout, replicated: false, reply: None });
        }
        // Every command goes out from its own buffer, in one `writev`: a batch entry's
        // archive is not copied once more into a write buffer.
        let write = async {
            if let [_] = cmds.as_slice() {
                let cmd = cmds.pop().unwrap_or_default();
                stream.write_all(cmd).await.0
            } else {
                let (res, buf) = stream.write_vectored_all(VecBuf::from(std::mem::take(&mut cmds))).await;
                cmds = buf.into();
                cmds.clear();
                res
            }
        };
        shared.overdue.owed(inflight.front().map_or(Duration::ZERO, |c| c.allowance));
        let written = monoio::time::timeout(reply_timeout, write).await;
        if !matches!(written, Ok(Ok(_))) {
            fail_all(&mut inflight, RedisError::Unavailable);
            return false;
        }
        while let Some(head) = inflight.pop_front() {
            // Each reply is due within the timeout of the previous one (or of the write):
            // a server that stops answering fails the connection.
            let due = Instant::now() + reply_timeout.saturating_add(head.allowance);
            let res = match monoio::time::timeout_at(due, read_frame(stream, &mut rbuf)).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::Timeout),
            };
            // The server was demoted: answer, then connect to the primary the sentinels
            // name now (what follows in the round was sent to a replica: unknown).
            let demoted = shared.follow && res.as_ref().is_ok_and(sentinel::is_readonly);
            match (res, head.reply) {
                (Ok(frame), Some(reply)) if demoted => {
                    let _ = reply.send(Ok(Answer { frame, replicas: 0 }));
                    fail_all(&mut inflight, RedisError::Unavailable);
                    return false;
                }
                (Ok(frame), Some(reply)) if head.replicated => held.push((reply, frame)),
                (Ok(frame), Some(reply)) => {
                    let _ = reply.send(Ok(Answer { frame, replicas: 0 }));
                }
                (Ok(frame), None) => {
                    // An error reply (say, the server is now a replica) confirms nothing.
                    let replicas = match frame {
                        Frame::Integer(n) => u32::try_from(n.max(0)).unwrap_or(u32::MAX),
                        _ => 0,
                    };
                    for (reply, frame) in held.drain(..) {
                        let _ = reply.send(Ok(Answer { frame, replicas }));
                    }
                }
                (Err(e), reply) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    fail_all(&mut inflight, RedisError::Unavailable);
                    return false;
                }
            }
            // Redis answered: the next reply is owed from now (as its deadline is).
            match inflight.front() {
                Some(next) => shared.overdue.owed(next.allowance),
                None => shared.overdue.settled(),
            }
        }
    }
}

fn fail_all(inflight: &mut VecDeque<InFlight>, e: RedisError) {
    for w in inflight.drain(..) {
        if let Some(reply) = w.reply {
            let _ = reply.send(Err(e.clone()));
        }
    }
}
