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
//! Every (re)connect starts with `AUTH` when `redis.password` is set ([`super::auth`]);
//! a refusal fails the connection (logged, shown by `/readyz`) and the back-off applies.
//!
//! With `redis.sentinels`, the address is asked of the sentinels on every (re)connect,
//! the server is checked to be a primary, and a `READONLY` or `NOREPLICAS` error reply
//! (the server was demoted, or cut off from its replicas) closes the connection so that
//! the next one asks again ([`super::sentinel`]). Before each round the connection also
//! looks whether the sentinels named another primary at a higher configuration epoch
//! (one atomic load of the process's [`sentinel::Watch`]); if so it refuses that round
//! and what is queued (as a reconnect does: a request's commands never span two
//! primaries) and connects there. A connection that went to the recorded primary rather
//! than the server its sentinel named at a lower epoch, and cannot use it (unreachable,
//! not a primary, refusing writes), tells the watch ([`sentinel::recorded_failed`]): the
//! sentinels' epochs may have started again.
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

use croupier_protocol::cluster::Partitions;
use croupier_protocol::resp::{self, Frame};
use croupier_protocol::stream::CONSUMER_GROUP;
use local_sync::mpsc::{unbounded, TryRecvError};
use local_sync::oneshot;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::auth::{self, Credentials, Role};
use super::cluster::Cluster;
use super::overdue::Overdue;
use super::sentinel::{self, Sentinels};
use crate::io::{read_more, write_all_vectored};

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

/// A reply and, for a replicated command, how many replicas confirmed it (0 otherwise),
/// and the command itself when it was asked back (to send it again elsewhere after a
/// cluster's redirection, without a copy of it made in advance).
pub(super) struct Answer {
    pub(super) frame: Frame,
    pub(super) replicas: u32,
    pub(super) cmd: Option<Vec<u8>>,
}

type Waiter = oneshot::Sender<Result<Answer, RedisError>>;

/// How a command is sent: the replies it is owed (more than one for a group of commands
/// sent as one, answered as an array of them) and the bytes of a command that will follow
/// its answer, which the queue bound counts already (so a full queue refuses the first
/// at once rather than the second after a round trip).
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub(super) replies: usize,
    pub(super) reserve: usize,
}

impl Group {
    /// One command, nothing following.
    pub(super) const ONE: Group = Group { replies: 1, reserve: 0 };
}

/// A command waiting to be sent.
struct Pending {
    cmd: Vec<u8>,
    /// Time the reply may take beyond the reply timeout (a blocking read's block).
    allowance: Duration,
    /// Answered only after the round's `WAIT`.
    replicated: bool,
    /// The command is handed back with its reply.
    keep: bool,
    /// Replies it is owed: more than one for a group of commands sent as one
    /// ([`RedisClient::call_group`]), answered as an array of them.
    replies: usize,
    reply: Waiter,
}

/// A command sent, waiting for its reply; `reply: None` is the round's `WAIT`.
struct InFlight {
    allowance: Duration,
    replicated: bool,
    keep: bool,
    /// Replies owed (see [`Pending::replies`]).
    replies: usize,
    /// The command, when it is to be handed back (after the write).
    cmd: Option<Vec<u8>>,
    reply: Option<Waiter>,
}

/// State shared by the handles and the connection task.
struct Shared {
    up: Cell<bool>,
    /// Connections made so far: a reading taken on an earlier one is stale. (A cluster's
    /// primaries share one.)
    epoch: Epoch,
    /// This task's connections made so far: which one a command was queued for
    /// ([`Placement`]).
    connections: Cell<u64>,
    /// Bytes of the commands in the channel.
    queued_bytes: Cell<usize>,
    max_queued_bytes: usize,
    reply_timeout: Duration,
    /// `WAIT <replicas> <timeout>`, encoded, and the timeout (`None`: not asked for).
    wait: Option<(Vec<u8>, Duration)>,
    /// The primary is found through sentinels: a `READONLY` or `NOREPLICAS` reply replaces the connection.
    follow: bool,
    /// The primary the sentinels name at the highest epoch heard of, with sentinels.
    watch: Option<Arc<sentinel::Watch>>,
    /// When a refusal for want of replicas was last logged.
    warned: Cell<Option<Instant>>,
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
    /// What each connection sends `AUTH` with first (`redis.username`, `redis.password`);
    /// `None`: no `AUTH`. Every node of a cluster gets the same.
    pub auth: Option<Credentials>,
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
    /// Seed nodes of a Redis Cluster (`redis.cluster`); empty: not a cluster.
    pub cluster: Vec<String>,
    /// How often a cluster's slot map is read again anyway.
    pub cluster_refresh: Duration,
    /// Partitions of each stream (`streams.partitions`): the consumer group is made on
    /// each partition's streams.
    pub partitions: u16,
}

impl RedisOptions {
    /// The options of the configuration's `[redis]` and `streams.partitions`.
    pub fn from_config(config: &croupier_control::config::Config) -> RedisOptions {
        let c = &config.redis;
        RedisOptions {
            addr: c.addr.clone(),
            sentinels: (!c.sentinels.is_empty()).then(|| Sentinels {
                addrs: c.sentinels.clone(),
                master_name: c.master_name.clone(),
                auth: Credentials::sentinel(c),
            }),
            auth: Credentials::redis(c),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            reply_timeout: Duration::from_millis(c.reply_timeout_ms),
            max_queued_bytes: c.max_queued_bytes,
            wait_replicas: c.wait_replicas,
            wait_timeout: Duration::from_millis(c.wait_timeout_ms),
            overdue: None,
            cluster: c.cluster.clone(),
            cluster_refresh: Duration::from_millis(c.cluster_refresh_ms.max(1)),
            partitions: config.streams.partitions.max(1),
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

/// Handle to the shard's Redis connection (one server, or every primary of a cluster);
/// cheap to clone within the shard.
#[derive(Clone)]
pub struct RedisClient {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Node(Node),
    Cluster(Rc<Cluster>),
}

/// Where a command ran: one connection of a server's connection task. A command queued
/// while the task is up runs on its current connection or is refused (a failed
/// connection refuses its round and its queue before the next is made), so a later
/// command sent [`RedisClient::call_group_on`] the placement runs on the same connection
/// — the same server, no restart or failover in between — or not at all.
#[derive(Clone)]
pub struct Placement {
    node: Node,
    connection: u64,
}

/// One pipelined connection to one server.
#[derive(Clone)]
pub(super) struct Node {
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
            auth: None,
            connect_timeout,
            reply_timeout,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            wait_replicas: 0,
            wait_timeout: Duration::ZERO,
            overdue: None,
            cluster: Vec::new(),
            cluster_refresh: Duration::from_secs(2),
            partitions: 1,
        })
    }

    /// Starts the connection task on the current shard (with `options.cluster`, the
    /// cluster's: one connection per primary).
    pub fn start(options: RedisOptions) -> RedisClient {
        if options.cluster.is_empty() {
            RedisClient { inner: Inner::Node(Node::start(options, Epoch::default())) }
        } else {
            RedisClient { inner: Inner::Cluster(Cluster::start(options)) }
        }
    }

    /// Whether this is a Redis Cluster's client (`redis.cluster`): commands of several
    /// keys must keep to one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Whether the connection is established (in a cluster: the slot map is known and
    /// a primary is connected).
    pub fn is_up(&self) -> bool {
        match &self.inner {
            Inner::Node(n) => n.is_up(),
            Inner::Cluster(c) => c.is_up(),
        }
    }

    /// How long a reply has been owed, when that is past a quarter of the reply timeout
    /// (in a cluster: the longest of the primaries' connections).
    pub fn overdue(&self) -> Option<Duration> {
        match &self.inner {
            Inner::Node(n) => n.overdue(),
            Inner::Cluster(c) => c.overdue(),
        }
    }

    /// The connection count, shared: it moves on every (re)connect (in a cluster: of any
    /// primary, and on every change of the slot map).
    pub fn epoch(&self) -> Epoch {
        match &self.inner {
            Inner::Node(n) => n.shared.epoch.clone(),
            Inner::Cluster(c) => c.epoch(),
        }
    }

    /// Sends one encoded command and waits for its reply. An error reply is a
    /// `Ok(Frame::Error)`: only transport failures are `Err`. In a cluster the command
    /// goes to the primary of its key's slot ([`croupier_protocol::cluster::command_key`]).
    pub async fn call(&self, cmd: Vec<u8>) -> Result<Frame, RedisError> {
        self.call_blocking(cmd, Duration::ZERO).await
    }

    /// [`RedisClient::call`] for a command that may block in Redis for up to `block`
    /// (`XREADGROUP ... BLOCK ms`): its reply may take that much longer.
    pub async fn call_blocking(&self, cmd: Vec<u8>, block: Duration) -> Result<Frame, RedisError> {
        match &self.inner {
            Inner::Node(n) => n.send(cmd, block, false, false).await.map(|a| a.frame),
            Inner::Cluster(c) => c.send(cmd, block, false).await.map(|a| a.frame),
        }
    }

    /// [`RedisClient::call`] for a write that must reach `redis.wait_replicas` replicas:
    /// the reply comes after the `WAIT` that ends its round, with the number of replicas
    /// that confirmed every write of the connection so far (0 when no `WAIT` is asked
    /// for, or `WAIT` failed). In a cluster, the `WAIT` of the connection to the key's
    /// primary.
    pub async fn call_replicated(&self, cmd: Vec<u8>) -> Result<(Frame, u32), RedisError> {
        let a = match &self.inner {
            Inner::Node(n) => n.send_replicated(cmd).await?,
            Inner::Cluster(c) => {
                let Some(wait) = c.wait() else { return self.call(cmd).await.map(|f| (f, 0)) };
                c.send(cmd, wait, true).await?
            }
        };
        Ok((a.frame, a.replicas))
    }
}

impl RedisClient {
    /// Sends `cmd`, a group of `replies` commands encoded back to back (a `MULTI` ...
    /// `EXEC` transaction), and waits for all their replies, which nothing else on the
    /// connection comes between. In a cluster the group goes to the primary of
    /// `route_key`'s slot (every key of the group must be in that slot), and a
    /// redirection of any of its commands sends the whole group again. With
    /// `replicated`, as [`RedisClient::call_replicated`]: the number of replicas that
    /// confirmed it comes with the replies. `reserve`: the bytes of a command the caller
    /// will send after this answer, which the queue bound (`redis.max_queued_bytes`)
    /// counts with this one when it is queued. The replies come with the connection the
    /// group ran on (in a cluster, the one a redirection led to), for commands that must
    /// follow it there ([`RedisClient::call_group_on`]).
    pub async fn call_group(
        &self,
        cmd: Vec<u8>,
        replies: usize,
        reserve: usize,
        route_key: &str,
        replicated: bool,
    ) -> Result<(Vec<Frame>, u32, Placement), RedisError> {
        let group = Group { replies: replies.max(1), reserve };
        let (block, replicated) = self.replication(replicated);
        let (a, at) = match &self.inner {
            Inner::Node(n) => n.clone().send_placed(cmd, block, replicated, false, group).await?,
            Inner::Cluster(c) => c.send_group(cmd, block, replicated, group, route_key).await?,
        };
        Ok((group_frames(a.frame, group.replies), a.replicas, at))
    }

    /// Sends a group of commands (`replies` owed) on the connection `at` an earlier one
    /// ran on, only while it is still the one its server's task holds: `Unavailable` once
    /// it was replaced (Redis restarted, the connection failed, the sentinels announced
    /// another primary), and, in a cluster, a redirection is not followed — its error
    /// reply is returned. So a request's commands run on one server or not at all (the
    /// lease protocol's append after its lease, docs/ingest.md).
    pub async fn call_group_on(
        &self,
        at: &Placement,
        cmd: Vec<u8>,
        replies: usize,
        replicated: bool,
    ) -> Result<(Vec<Frame>, u32), RedisError> {
        let node = &at.node;
        if node.shared.connections.get() != at.connection {
            return Err(RedisError::Unavailable);
        }
        let group = Group { replies: replies.max(1), reserve: 0 };
        let (block, replicated) = self.replication(replicated);
        let a = node.send_group(cmd, block, replicated, false, group).await?;
        if let Inner::Cluster(c) = &self.inner {
            c.saw(&a.frame, group.replies);
        }
        Ok((group_frames(a.frame, group.replies), a.replicas))
    }

    /// How a group asked to be `replicated` is sent: the `WAIT` timeout its reply may
    /// take beyond the reply timeout, and whether it is answered after the round's
    /// `WAIT` (only with `redis.wait_replicas`).
    fn replication(&self, replicated: bool) -> (Duration, bool) {
        let wait = match &self.inner {
            Inner::Node(n) => n.shared.wait.as_ref().map(|(_, w)| *w),
            Inner::Cluster(c) => c.wait(),
        }
        .filter(|_| replicated);
        (wait.unwrap_or(Duration::ZERO), wait.is_some())
    }
}

/// A group's replies: the array of them, or the one reply (also an error that stood for
/// the whole group).
fn group_frames(frame: Frame, replies: usize) -> Vec<Frame> {
    match frame {
        Frame::Array(items) if replies > 1 => items,
        f => vec![f],
    }
}

impl Node {
    /// Starts the connection task on the current shard; every (re)connect advances `epoch`.
    pub(super) fn start(options: RedisOptions, epoch: Epoch) -> Node {
        let (tx, rx) = unbounded::channel();
        let shared = Rc::new(Shared {
            up: Cell::new(false),
            epoch,
            connections: Cell::new(0),
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
            watch: options
                .sentinels
                .as_ref()
                .map(|s| sentinel::watch(s, options.connect_timeout.max(options.reply_timeout))),
            warned: Cell::new(None),
            overdue: options.overdue.clone().unwrap_or_else(|| Arc::new(Overdue::new(options.reply_timeout))),
        });
        monoio::spawn(run(options, rx, shared.clone()));
        Node { tx, shared }
    }

    /// Whether the connection is established.
    pub(super) fn is_up(&self) -> bool {
        self.shared.up.get()
    }

    /// How long a reply has been owed, when that is past a quarter of the reply timeout.
    /// This connection's stamp.
    pub(super) fn stamp(&self) -> &Overdue {
        &self.shared.overdue
    }

    pub(super) fn overdue(&self) -> Option<Duration> {
        self.shared.overdue.late_by()
    }

    /// A replicated command's `send`: after the round's `WAIT` when one is asked for.
    pub(super) async fn send_replicated(&self, cmd: Vec<u8>) -> Result<Answer, RedisError> {
        match &self.shared.wait {
            Some((_, wait)) => self.send(cmd, *wait, true, false).await,
            None => self.send(cmd, Duration::ZERO, false, false).await,
        }
    }

    /// Queues `cmd` and waits for its answer (`keep`: with the command handed back).
    pub(super) async fn send(
        &self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        keep: bool,
    ) -> Result<Answer, RedisError> {
        self.send_group(cmd, block, replicated, keep, Group::ONE).await
    }

    /// [`Node::send`] of a group of commands, answered as an array of their replies (one
    /// command: its reply).
    pub(super) async fn send_group(
        &self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        keep: bool,
        group: Group,
    ) -> Result<Answer, RedisError> {
        let rx = self.queue(cmd, block, replicated, keep, group)?;
        self.answer(rx, block).await
    }

    /// [`Node::send_group`], with the connection it ran on (this handle and which of its
    /// connections).
    pub(super) async fn send_placed(
        self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        keep: bool,
        group: Group,
    ) -> Result<(Answer, Placement), RedisError> {
        // Read when queued: the connection the command runs on, if it runs.
        let connection = self.shared.connections.get();
        let rx = self.queue(cmd, block, replicated, keep, group)?;
        let a = self.answer(rx, block).await?;
        Ok((a, Placement { node: self, connection }))
    }

    /// `ASKING`, then `cmd` right after it on the connection (a cluster's `ASK`
    /// redirection): both are queued before anything else can be.
    pub(super) async fn send_asking(
        self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        group: Group,
    ) -> Result<(Answer, Placement), RedisError> {
        let mut asking = Vec::with_capacity(16);
        resp::command(&mut asking, &[b"ASKING"]);
        let connection = self.shared.connections.get();
        // Kept open until the command's answer, so `ASKING` is not skipped as abandoned.
        let _asking = self.queue(asking, Duration::ZERO, false, false, Group::ONE)?;
        let rx = self.queue(cmd, block, replicated, true, group)?;
        let a = self.answer(rx, block).await?;
        Ok((a, Placement { node: self, connection }))
    }

    fn queue(
        &self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        keep: bool,
        group: Group,
    ) -> Result<oneshot::Receiver<Result<Answer, RedisError>>, RedisError> {
        let s = &self.shared;
        if !s.up.get() {
            return Err(RedisError::Unavailable);
        }
        let queued = s.queued_bytes.get();
        // A command that alone exceeds the bound still goes through an empty queue.
        if queued > 0 && queued.saturating_add(cmd.len()).saturating_add(group.reserve) > s.max_queued_bytes {
            return Err(RedisError::QueueFull);
        }
        let len = cmd.len();
        let (reply, rx) = oneshot::channel();
        // A replicated command's own reply is due as any other; its `WAIT` has the block.
        let allowance = if replicated { Duration::ZERO } else { block };
        self.tx
            .send(Pending { cmd, allowance, replicated, keep, replies: group.replies.max(1), reply })
            .map_err(|_| RedisError::Unavailable)?;
        s.queued_bytes.set(queued.saturating_add(len));
        Ok(rx)
    }

    async fn answer(
        &self,
        rx: oneshot::Receiver<Result<Answer, RedisError>>,
        block: Duration,
    ) -> Result<Answer, RedisError> {
        match monoio::time::timeout(self.shared.reply_timeout.saturating_add(block), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RedisError::Unavailable),
            Err(_) => Err(RedisError::Timeout),
        }
    }
}

/// The address to connect to: the configured one, or the primary the sentinels name
/// (never one at a lower epoch than the primary `watch` recorded).
async fn target(options: &RedisOptions, watch: Option<&sentinel::Watch>) -> Option<sentinel::Target> {
    match &options.sentinels {
        None => Some(sentinel::Target::plain(options.addr.clone())),
        Some(s) => s.primary(options.connect_timeout.max(options.reply_timeout), watch).await,
    }
}

/// Makes the connection to `addr` ready: authenticated (with `auth`), a primary, when
/// found through sentinels, and the consumer groups there (on every partition's streams).
/// A refusal (`NOAUTH` to a connection with no password, `NOPERM` for a command the ACL
/// user may not run) is recorded and logged as such.
async fn prepare(
    stream: &mut TcpStream,
    auth: Option<&Credentials>,
    addr: &str,
    follow: bool,
    partitions: &Partitions,
) -> Result<(), RedisError> {
    auth::authenticate(stream, auth, Role::Redis, addr).await?;
    let noted = |command: &'static str, e: RedisError| {
        if let RedisError::Protocol(reply) = &e {
            auth::note(Role::Redis, addr, command, reply);
        }
        e
    };
    if follow && !sentinel::is_primary(stream).await.map_err(|e| noted("ROLE", e))? {
        return Err(RedisError::Protocol(sentinel::NOT_A_PRIMARY.into()));
    }
    ensure_groups(stream, addr, partitions).await.map_err(|e| noted("XGROUP CREATE", e))?;
    may_take_back(stream, addr, partitions).await.map_err(|e| noted("XREVRANGE and XDEL", e))
}

/// Checks that the connection's user may run what the ingest script runs to take back a
/// duplicate's or a replay's append (`XREVRANGE`, `XDEL`: see
/// `croupier_protocol::resp::INGEST_SCRIPT`). Without them the script would fail after
/// its `XADD`s had run, and a replay's entries would stay: the connection is refused
/// instead, with `NOPERM`. Each stream key is tried by a script of its own that runs both
/// commands without effect (Redis checks a script's commands against the ACL when it runs
/// them, on every version), so a cluster node answers for the keys it serves; `MOVED`,
/// `ASK` and `CLUSTERDOWN` are passed over, as for the groups.
async fn may_take_back(stream: &mut TcpStream, addr: &str, partitions: &Partitions) -> Result<(), RedisError> {
    let script = TAKE_BACK_ALLOWED.as_bytes();
    on_each_stream(stream, addr, partitions, |key| vec![b"EVAL".as_slice(), script, b"1", key], &[]).await
}

/// The script of [`may_take_back`]: `XREVRANGE … COUNT 1` and `XDEL` of the id `0-0`,
/// which no entry has. On a stream key (or none) either can only fail by the ACL (whose
/// error text differs between Redis versions): that is the reply, as `NOPERM`; a key of
/// another type (`WRONGTYPE`) is not this check's.
const TAKE_BACK_ALLOWED: &str = "\
for _, r in ipairs({redis.pcall('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1), redis.pcall('XDEL', KEYS[1], '0-0')}) do \
if type(r) == 'table' and r['err'] and not string.find(r['err'], 'WRONGTYPE', 1, true) then \
return redis.error_reply('NOPERM the ingest script may not run XREVRANGE or XDEL (' .. r['err'] .. ')') end \
end \
return 1";

/// How [`serve`] ended.
enum Served {
    /// Every handle is gone.
    Closed,
    /// The connection failed.
    Failed,
    /// Its server is no longer the primary to write to (`READONLY`, `NOREPLICAS`).
    Demoted,
    /// The sentinels announced another primary, at this address (the watch's count when
    /// it was read): the round taken off the queue was not sent (it is refused).
    Moved(String, u64),
}

async fn run(options: RedisOptions, mut rx: unbounded::Rx<Pending>, shared: Rc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let (connect_timeout, reply_timeout) = (options.connect_timeout, shared.reply_timeout);
    let partitions = Partitions::new(options.partitions);
    // Commands taken off the queue for a round that was not sent (the primary changed).
    let mut round: Vec<Pending> = Vec::with_capacity(64);
    // The primary the sentinels just announced: the next connection goes there.
    let mut announced: Option<(String, u64)> = None;
    loop {
        let (target, seen) = match announced.take() {
            Some((a, seen)) => (Some(sentinel::Target::plain(a)), seen),
            None => {
                // Read before the sentinels are asked, so an announcement made meanwhile is seen.
                let seen = shared.watch.as_ref().map_or(0, |w| w.changes());
                (target(&options, shared.watch.as_deref()).await, seen)
            }
        };
        let addr = target.as_ref().map(|t| t.addr.clone());
        // Whether the server could not be used as the primary (unreachable, not a primary,
        // refusing writes): when it is the recorded primary, chosen over what the sentinel
        // named, the watch is told.
        let mut unusable = true;
        let connected = match &addr {
            Some(addr) => monoio::time::timeout(connect_timeout, TcpStream::connect(addr.as_str())).await.ok(),
            None => None,
        };
        // A server that cannot be reached is said, at most every 10 s per server and error.
        let unreached = match (&addr, &connected) {
            (Some(a), None) => {
                Some((a, format!("no connection within redis.connect_timeout_ms ({connect_timeout:?})")))
            }
            (Some(a), Some(Err(e))) => Some((a, e.to_string())),
            _ => None,
        };
        if let Some((addr, why)) = unreached {
            if !auth::recently_logged(format!("{addr} {why}")) {
                tracing::warn!(server = %addr, error = %why, "cannot connect to Redis: tried again with back-off");
            }
        }
        if let (Some(addr), Some(Ok(mut stream))) = (addr, connected) {
            let _ = stream.set_nodelay(true);
            set_keepalive(&stream, reply_timeout);
            let prepared = monoio::time::timeout(
                reply_timeout,
                prepare(&mut stream, options.auth.as_ref(), &addr, shared.follow, &partitions),
            )
            .await;
            if let Some(why) = unprepared(&prepared) {
                // A refusal was logged as one already; anything else is said here, at
                // most every 10 s per server and error.
                if !recorded(&why) && !auth::recently_logged(format!("{addr} {why}")) {
                    tracing::warn!(server = %addr, error = %why, "cannot use the Redis connection: tried again with back-off");
                }
            }
            unusable = match &prepared {
                Ok(Ok(())) => false,
                Ok(Err(RedisError::Protocol(e))) => e == sentinel::NOT_A_PRIMARY,
                Ok(Err(_)) | Err(_) => true,
            };
            if let Ok(Ok(())) = prepared {
                backoff = Duration::from_millis(50);
                shared.epoch.advance();
                shared.connections.set(shared.connections.get().wrapping_add(1));
                shared.up.set(true);
                let served = serve(&mut stream, &mut rx, &shared, &mut round, &addr, seen).await;
                shared.up.set(false);
                if !matches!(served, Served::Closed) {
                    // What the kernel still holds of the rounds written is dropped, not
                    // delivered late: their callers were answered 503 (or are about to be)
                    // and a retry may be appended by then.
                    reset_on_close(&stream);
                }
                shared.overdue.settled();
                // Not serving until the shard's next backlog reading on a new connection.
                shared.overdue.set_serving(None);
                match served {
                    Served::Closed => return,
                    Served::Failed => {}
                    Served::Demoted => unusable = true,
                    Served::Moved(to, seen) => {
                        tracing::debug!(from = %addr, to = %to, "moving to the primary the sentinels announced");
                        // Nothing taken for the old primary goes to the new one: a
                        // request's later commands (its append after its nonce's lease)
                        // must run where its first ran, or a retry leasing the nonce on
                        // the new primary and this append would both be answered 202. So
                        // the round and what is queued are refused, as on any reconnect
                        // (the clients are told to retry), and the next connection goes
                        // to the announced primary without asking the sentinels.
                        for p in round.drain(..) {
                            let _ = p.reply.send(Err(RedisError::Unavailable));
                        }
                        if refuse_queued(&mut rx, &shared) {
                            return;
                        }
                        announced = Some((to, seen));
                        continue;
                    }
                }
            }
        }
        if let (true, Some(w), Some(sentinel::Target { addr, instead_of: Some(named) })) =
            (unusable, &shared.watch, &target)
        {
            sentinel::recorded_failed(w, addr, named);
        }
        for p in round.drain(..) {
            let _ = p.reply.send(Err(RedisError::Unavailable));
        }
        if refuse_queued(&mut rx, &shared) {
            return;
        }
        monoio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Why a connection could not be made ready (`None`: it was).
fn unprepared(prepared: &Result<Result<(), RedisError>, monoio::time::error::Elapsed>) -> Option<String> {
    match prepared {
        Ok(Ok(())) => None,
        Ok(Err(RedisError::Protocol(e))) => Some(e.clone()),
        Ok(Err(e)) => Some(format!("{e:?}")),
        Err(_) => Some("no answer in time".into()),
    }
}

/// Whether a preparation error is a refusal [`auth`] logs itself.
fn recorded(why: &str) -> bool {
    why.starts_with("authentication failed") || auth::is_refusal(why) || auth::is_noperm(why)
}

/// Answers everything queued `Unavailable` while not connected; `true` once every handle
/// is gone (a cluster dropped the node: the task ends instead of reconnecting for ever).
fn refuse_queued(rx: &mut unbounded::Rx<Pending>, shared: &Shared) -> bool {
    loop {
        match rx.try_recv() {
            Ok(p) => {
                shared.dequeued(&p);
                let _ = p.reply.send(Err(RedisError::Unavailable));
            }
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => return true,
        }
    }
}

/// The descriptor of `stream`, borrowed to set socket options on it.
fn descriptor(stream: &TcpStream) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `stream`, which outlives the borrow; socket2 only
    // sets options on it and does not close it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// TCP keepalive (probes after 5 s idle, every second, 3 of them) and
/// `TCP_USER_TIMEOUT` (unacknowledged data for longer than the reply timeout, at least
/// a second, drops the connection): the kernel notices a peer that is gone. Best effort.
fn set_keepalive(stream: &TcpStream, reply_timeout: Duration) {
    let fd = descriptor(stream);
    let sock = socket2::SockRef::from(&fd);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(reply_timeout.max(Duration::from_secs(1))));
}

/// Closes the connection with a reset (`SO_LINGER` 0) when it is dropped: bytes written
/// and not yet taken by the server are discarded, not sent on after the connection was
/// given up (a partition healing). Best effort.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(&descriptor(stream)).set_linger(Some(Duration::ZERO));
}

/// Creates the consumer group on each stream of each partition (with the stream) unless
/// it exists. In a cluster, a stream whose slot another primary serves is that
/// connection's to create (`MOVED`, `ASK` and `CLUSTERDOWN` are passed over).
async fn ensure_groups(stream: &mut TcpStream, addr: &str, partitions: &Partitions) -> Result<(), RedisError> {
    let group = CONSUMER_GROUP.as_bytes();
    on_each_stream(
        stream,
        addr,
        partitions,
        |key| vec![b"XGROUP".as_slice(), b"CREATE", key, group, b"0", b"MKSTREAM"],
        &["BUSYGROUP"],
    )
    .await
}

/// Sends `command(key)` for each stream of each partition, pipelined, and reads every
/// reply: the first error is the answer, save those starting with one of `passed` and a
/// cluster's `MOVED`, `ASK` and `CLUSTERDOWN` (that stream's slot is another node's).
async fn on_each_stream<'k>(
    stream: &mut TcpStream,
    addr: &str,
    partitions: &'k Partitions,
    command: impl Fn(&'k [u8]) -> Vec<&'k [u8]>,
    passed: &[&str],
) -> Result<(), RedisError> {
    let mut out = Vec::new();
    for key in partitions.all_streams() {
        resp::command(&mut out, &command(key.as_bytes()));
    }
    let (res, _) = stream.write_all(out).await;
    res.map_err(|_| RedisError::Unavailable)?;
    let mut rbuf = Vec::with_capacity(1024);
    let mut failed = None;
    for key in partitions.all_streams() {
        match read_frame(stream, &mut rbuf).await? {
            // A key of another type where a stream belongs fails the requests that append
            // to it (refused at admission, its backlog unreadable: 503), not the
            // connection: the others go on. It is named in the log, at most every 10 s.
            Frame::Error(e) if e.starts_with("WRONGTYPE") => warn_not_a_stream(key, Some(addr)),
            Frame::Error(e) if !["MOVED", "ASK", "CLUSTERDOWN"].iter().chain(passed).any(|p| e.starts_with(p)) => {
                failed.get_or_insert(format!("{e} (key {key})"));
            }
            _ => {}
        }
    }
    failed.map_or(Ok(()), |e| Err(RedisError::Protocol(e)))
}

/// Logs (at most every 10 s per key, whoever finds it) that `key`, where a stream belongs,
/// holds another type: found making a connection ready (`server`), by a backlog reading,
/// or by the lease protocol's check.
pub(crate) fn warn_not_a_stream(key: &str, server: Option<&str>) {
    const WHAT: &str = "a stream key holds another type: ingest refuses the requests appending to it (503) and \
                        workers cannot read it until it is deleted or renamed";
    if auth::recently_logged(format!("wrongtype {key}")) {
        return;
    }
    match server {
        Some(server) => tracing::warn!(server = %server, key = %key, "{WHAT}"),
        None => tracing::warn!(key = %key, "{WHAT}"),
    }
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

/// Serves commands on the connection to `addr` until it fails, every client is gone, or
/// the sentinels announce another primary (the watch's count is no longer `seen`): then
/// the round taken off the queue is left in `round`, unsent, for the caller to refuse.
async fn serve(
    stream: &mut TcpStream,
    rx: &mut unbounded::Rx<Pending>,
    shared: &Shared,
    round: &mut Vec<Pending>,
    addr: &str,
    mut seen: u64,
) -> Served {
    let reply_timeout = shared.reply_timeout;
    let mut cmds: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    // Replies of replicated commands, until the round's `WAIT` answers (dropped, and so
    // `Unavailable`, if the connection fails first).
    let mut held: Vec<(Waiter, Frame, Option<Vec<u8>>)> = Vec::new();
    loop {
        // The round: the first command queued, then what else is queued.
        if round.is_empty() {
            let Some(first) = rx.recv().await else { return Served::Closed };
            shared.dequeued(&first);
            round.push(first);
        }
        while round.len() < MAX_ROUND {
            let Ok(p) = rx.try_recv() else { break };
            shared.dequeued(&p);
            // A caller that gave up has answered its client already: sending the
            // command now would store what was refused.
            if !p.reply.is_closed() {
                round.push(p);
            }
        }
        // Nothing is in flight between rounds: a move refuses only this round.
        if let Some(watch) = &shared.watch {
            let changes = watch.changes();
            if changes != seen {
                seen = changes;
                if let Some(primary) = watch.primary().filter(|p| p != addr) {
                    return Served::Moved(primary, changes);
                }
            }
        }
        let mut replicated = false;
        for p in round.drain(..) {
            if !p.reply.is_closed() {
                cmds.push(p.cmd);
                replicated |= p.replicated;
                inflight.push_back(InFlight {
                    allowance: p.allowance,
                    replicated: p.replicated,
                    keep: p.keep,
                    replies: p.replies,
                    cmd: None,
                    reply: Some(p.reply),
                });
            }
        }
        if cmds.is_empty() {
            continue;
        }
        if let (true, Some((wait, timeout))) = (replicated, &shared.wait) {
            cmds.push(wait.clone());
            inflight.push_back(InFlight {
                allowance: *timeout,
                replicated: false,
                keep: false,
                replies: 1,
                cmd: None,
                reply: None,
            });
        }
        // Every command goes out from its own buffer, in one `writev`: a batch entry's
        // archive is not copied once more into a write buffer.
        let write = async {
            if let [_] = cmds.as_slice() {
                let cmd = cmds.pop().unwrap_or_default();
                let (res, cmd) = stream.write_all(cmd).await;
                cmds.push(cmd);
                res
            } else {
                write_all_vectored(stream, &mut cmds).await.map(|()| 0)
            }
        };
        shared.overdue.owed(inflight.front().map_or(Duration::ZERO, |c| c.allowance));
        let written = monoio::time::timeout(reply_timeout, write).await;
        if !matches!(written, Ok(Ok(_))) {
            let cause = if written.is_err() { Cause::WriteTimeout } else { Cause::Closed };
            warn_failed(addr, cause, reply_timeout, inflight.len());
            cmds.clear();
            fail_all(&mut inflight, RedisError::Unavailable);
            return Served::Failed;
        }
        // Commands asked back go with their replies (a cluster may send them elsewhere).
        for (w, cmd) in inflight.iter_mut().zip(cmds.drain(..)) {
            if w.keep {
                w.cmd = Some(cmd);
            }
        }
        while let Some(head) = inflight.pop_front() {
            // Each reply is due within the timeout of the previous one (or of the write):
            // a server that stops answering fails the connection.
            let due = Instant::now() + reply_timeout.saturating_add(head.allowance);
            let mut res = match monoio::time::timeout_at(due, read_frame(stream, &mut rbuf)).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::Timeout),
            };
            // A group's replies follow one another, each due within the timeout of the
            // previous one.
            if let (true, Ok(first)) = (head.replies > 1, &mut res) {
                let mut frames = Vec::with_capacity(head.replies);
                frames.push(std::mem::replace(first, Frame::Null));
                while frames.len() < head.replies {
                    let due = Instant::now() + reply_timeout.saturating_add(head.allowance);
                    match monoio::time::timeout_at(due, read_frame(stream, &mut rbuf)).await {
                        Ok(Ok(f)) => frames.push(f),
                        Ok(Err(e)) => {
                            res = Err(e);
                            break;
                        }
                        Err(_) => {
                            res = Err(RedisError::Timeout);
                            break;
                        }
                    }
                }
                if res.is_ok() {
                    res = Ok(Frame::Array(frames));
                }
            }
            // A reply read after the sentinels announced another primary confirms nothing:
            // this server may be a frozen old primary that took the round before it was
            // replaced, whose demotion throws the round away. The round's callers are told
            // 503 (their retries carry the same nonces: appended once wherever they land).
            if res.is_ok() {
                if let Some((to, changes)) = replaced(shared, addr, seen) {
                    if let Some(reply) = head.reply {
                        let _ = reply.send(Err(RedisError::Unavailable));
                    }
                    fail_all(&mut inflight, RedisError::Unavailable);
                    return Served::Moved(to, changes);
                }
            }
            if let Ok(f) = &res {
                warn_refused(shared, addr, f, head.replies);
            }
            // The server was demoted (or refuses writes for want of replicas): answer,
            // then connect to the primary the sentinels name now (what follows in the round was sent to a replica: unknown).
            let demoted = shared.follow
                && res.as_ref().is_ok_and(|f| match f {
                    Frame::Array(items) if head.replies > 1 => items.iter().any(sentinel::is_demoted),
                    f => sentinel::is_demoted(f),
                });
            // An ingest transaction whose take-back Redis refused (an ACL changed since the
            // connection's set-up checked `XREVRANGE` and `XDEL`): answered, then the
            // connection is made again, and its check refuses it while the user lacks them.
            let refused = head.replies > 1 && res.as_ref().is_ok_and(refused_permission);
            let cmd = head.cmd;
            match (res, head.reply) {
                (Ok(frame), Some(reply)) if refused => {
                    let _ = reply.send(Ok(Answer { frame, replicas: 0, cmd }));
                    if !auth::recently_logged(format!("{addr} noperm in a transaction")) {
                        tracing::error!(
                            server = %addr,
                            "Redis refused the ingest script a take-back (NOPERM: the ACL user's permissions changed): \
                             its requests are answered 503 and the connection is made again"
                        );
                    }
                    fail_all(&mut inflight, RedisError::Unavailable);
                    return Served::Failed;
                }
                (Ok(frame), Some(reply)) if demoted => {
                    let _ = reply.send(Ok(Answer { frame, replicas: 0, cmd }));
                    fail_all(&mut inflight, RedisError::Unavailable);
                    return Served::Demoted;
                }
                (Ok(frame), Some(reply)) if head.replicated => held.push((reply, frame, cmd)),
                (Ok(frame), Some(reply)) => {
                    let _ = reply.send(Ok(Answer { frame, replicas: 0, cmd }));
                }
                (Ok(frame), None) => {
                    // An error reply (say, the server is now a replica) confirms nothing.
                    let replicas = match frame {
                        Frame::Integer(n) => u32::try_from(n.max(0)).unwrap_or(u32::MAX),
                        _ => 0,
                    };
                    for (reply, frame, cmd) in held.drain(..) {
                        let _ = reply.send(Ok(Answer { frame, replicas, cmd }));
                    }
                }
                (Err(e), reply) => {
                    warn_failed(addr, Cause::of(&e), reply_timeout, inflight.len() + 1);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    fail_all(&mut inflight, RedisError::Unavailable);
                    return Served::Failed;
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

/// The primary the sentinels announced since `seen`, with their count of changes, when it
/// is not `addr` (one atomic load while nothing changed).
fn replaced(shared: &Shared, addr: &str, seen: u64) -> Option<(String, u64)> {
    let watch = shared.watch.as_ref()?;
    let changes = watch.changes();
    if changes == seen {
        return None;
    }
    watch.primary().filter(|p| p != addr).map(|p| (p, changes))
}

/// Whether a transaction's `EXEC` (its replies' last) holds the ingest script's error
/// for a take-back Redis refused ([`resp::TAKE_BACK_REFUSED`]): only that, which the
/// connection's set-up checks, so that the connection made again is refused by the check
/// rather than meeting the same refusal on every transaction.
fn refused_permission(f: &Frame) -> bool {
    let Frame::Array(frames) = f else { return false };
    matches!(frames.last(), Some(Frame::Array(items)) if items.iter().any(
        |i| matches!(i, Frame::Error(e) if e.starts_with(resp::TAKE_BACK_REFUSED))
    ))
}

/// How often at most a connection logs that its primary refuses writes.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Logs (once per [`WARN_EVERY`] per connection) that the server refused a write
/// `NOREPLICAS` (`min-replicas-to-write`, its replicas away): the requests it refuses are
/// answered 503 until its replicas are back (or, with sentinels, another primary is named).
/// Only error replies are looked into.
fn warn_refused(shared: &Shared, addr: &str, frame: &Frame, replies: usize) {
    let noreplicas = match frame {
        Frame::Error(_) => sentinel::is_noreplicas(frame),
        Frame::Array(items) if replies > 1 => items.iter().any(sentinel::is_noreplicas),
        _ => false,
    };
    if !noreplicas || shared.warned.get().is_some_and(|t| t.elapsed() < WARN_EVERY) {
        return;
    }
    shared.warned.set(Some(Instant::now()));
    if shared.follow {
        tracing::warn!(
            server = %addr,
            "Redis refuses writes for want of replicas (NOREPLICAS, min-replicas-to-write): requests are \
             answered 503 while it does; the sentinels are asked for the primary again"
        );
    } else {
        tracing::warn!(
            server = %addr,
            "Redis refuses writes for want of replicas (NOREPLICAS, min-replicas-to-write): requests are \
             answered 503 until its replicas are back"
        );
    }
}

/// Why a connection in use failed.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// No reply within the reply timeout.
    ReplyTimeout,
    /// The commands could not be written within the reply timeout.
    WriteTimeout,
    /// Closed or reset.
    Closed,
    /// A reply that is not RESP.
    NotResp,
}

impl Cause {
    fn of(e: &RedisError) -> Cause {
        match e {
            RedisError::Timeout => Cause::ReplyTimeout,
            RedisError::Protocol(_) => Cause::NotResp,
            RedisError::Unavailable | RedisError::QueueFull => Cause::Closed,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Cause::ReplyTimeout => "no reply within redis.reply_timeout_ms",
            Cause::WriteTimeout => "commands not written within redis.reply_timeout_ms",
            Cause::Closed => "closed or reset",
            Cause::NotResp => "a reply that is not RESP",
        }
    }
}

/// Logs (at most every 10 s per server and cause) that a connection in use failed: Redis
/// did not answer within the reply timeout (a server frozen, paused or overloaded, or a
/// network that drops packets), did not take the commands, closed it (a restart, a
/// sentinel's `CLIENT KILL` in a failover), or sent what is not RESP. The `in_flight`
/// commands fail (an ingest request among them is answered 503) and a new connection is
/// made.
fn warn_failed(addr: &str, cause: Cause, reply_timeout: Duration, in_flight: usize) {
    let cause = cause.words();
    if auth::recently_logged(format!("{addr} failed {cause}")) {
        return;
    }
    tracing::warn!(
        server = %addr,
        cause,
        reply_timeout_ms = reply_timeout.as_millis() as u64,
        in_flight,
        "a Redis connection failed: the commands in flight on it fail (ingest requests are answered 503) and a \
         new one is made"
    );
}

fn fail_all(inflight: &mut VecDeque<InFlight>, e: RedisError) {
    for w in inflight.drain(..) {
        if let Some(reply) = w.reply {
            let _ = reply.send(Err(e.clone()));
        }
    }
}
