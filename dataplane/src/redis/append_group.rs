//! Ingest appends grouped into shared transactions (`redis.ingest_protocol = "script"`).
//!
//! Every request's append is a `MULTI`, its `XADD`s, an `EVAL` of the ingest script and
//! `EXEC` (`croupier_protocol::resp::{ingest_begin, xadd, ingest_end}`). Redis's cost of a
//! transaction is mostly per transaction, not per byte: the script's set-up and the hash
//! of its text, and the `MULTI`/`EXEC` around it. So the requests a shard has waiting for
//! Redis at the same moment, on the same partition, share transactions: every request's
//! `XADD`s in order, then one `EVAL` that judges each request on its own (its nonce, its
//! entries, its verdict), then `EXEC`. Nothing waits to fill a group: a request queues its
//! append, and the partition's sender takes everything queued when it runs — after the
//! request handlers that were ready with it, and then again each time the transactions
//! before come back — and sends it at once as one round of transactions of at most
//! `redis.ingest_group_max` requests each (the connection writes them in one `writev`, as
//! it did the requests' own transactions). Under a light load a transaction is one request.
//!
//! What each request is told is what it would be told alone: its own entry ids, or
//! `DUPLICATE`, `REPLAY`, its own error, or the transaction's failure (the connection lost
//! or no reply in time: not known to be appended, like a request alone). A request whose
//! handler has given up before its transaction is queued is left out of it.
//!
//! Admission counts a request's entries while they wait here ([`Backlog::stage`], from
//! when the request queues its append, right after its admission, to when its
//! transaction is queued), so requests waiting here count against the high-water mark; the
//! entries are counted for the backlog's readings (`Backlog::count_added`) when their
//! transaction is queued on the connection, as a request alone counts them when it queues
//! its own; the `MINID` each `XADD` carries was read when the request was staged
//! (`Backlog::trim_point`), which stays safe to send later. The appends waiting here are
//! bounded by `redis.max_queued_bytes` (one always fits when none waits): past it a
//! request is refused at once.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use croupier_control::config::Config;
use croupier_control::metrics::{IngestTransactionSent, ShardWriter};
use croupier_protocol::batch::Mark;
use croupier_protocol::resp::{self, EntryMeta, IngestReply, Member, RespError, INGEST_SCRIPT};
use croupier_protocol::stream::StreamKind;
use local_sync::oneshot;

use super::backlog::Backlog;
use super::connection::{RedisClient, RedisError};

/// Most bytes of `XADD`s one transaction carries, unless `redis.max_queued_bytes` is
/// smaller ([`AppendGroups::group_bytes`]; a request larger than this goes alone).
const GROUP_BYTES: usize = 4 << 20;

/// One request's append, staged: its `XADD`s and what the script needs to judge it.
#[derive(Debug)]
pub struct Append {
    /// `MULTI` (`resp::ingest_begin`), then the request's `XADD`s (`resp::xadd`), from
    /// [`Append::xadds_at`] on: the first request of a transaction lends its buffer to
    /// the whole transaction, so a request alone is not copied again.
    pub cmd: Vec<u8>,
    /// Where the `XADD`s start in `cmd`.
    pub xadds_at: usize,
    /// Each entry's stream and record count, in the order of the `XADD`s (the first
    /// [`Append::len`]).
    pub entries: [(StreamKind, usize); 3],
    /// How many entries.
    pub len: usize,
    /// The nonce key (tagged with its partition), handed back with the answer.
    pub nonce_key: String,
    /// The body's digest, the nonce's value.
    pub digest: [u8; 32],
    /// The mark its entries carry.
    pub mark: Mark,
}

impl Append {
    /// The request's `XADD`s.
    fn xadds(&self) -> &[u8] {
        self.cmd.get(self.xadds_at..).unwrap_or_default()
    }

    /// Each entry's stream and record count.
    fn entries(&self) -> &[(StreamKind, usize)] {
        self.entries.get(..self.len).unwrap_or_default()
    }
}

/// What became of one request's append: the script's verdict on it (or why it could not
/// be read) and the replicas that confirmed the transaction; `Err` when the transaction's
/// fate is not known.
pub type Appended = Result<(Result<IngestReply, RespError>, u32), RedisError>;

/// A request waiting for its transaction.
struct Waiting {
    append: Append,
    /// The answer, and the nonce key handed back (to give the nonce back after an append
    /// that failed when run).
    reply: oneshot::Sender<(Appended, String)>,
}

/// The appends waiting on one partition, and whether its sender is running.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    sending: bool,
}

/// The shard's grouped appends: one queue and one sender per partition.
pub struct AppendGroups {
    redis: RedisClient,
    backlog: Rc<Backlog>,
    /// The shard's counters (requests per transaction).
    metrics: Rc<ShardWriter>,
    /// The nonces' TTL, seconds.
    ttl_secs: u64,
    /// Whether a `WAIT` must confirm each transaction (`redis.wait_replicas`).
    replicated: bool,
    /// Most requests per transaction (`redis.ingest_group_max`).
    max_members: usize,
    /// Most bytes of appends waiting here, every partition's together
    /// (`redis.max_queued_bytes`: they are commands waiting to be sent).
    max_queued: usize,
    /// Bytes of appends waiting here.
    queued: Cell<usize>,
    queues: Vec<RefCell<Queue>>,
}

impl AppendGroups {
    /// Groups for the partitions of `backlog`, sent on `redis`.
    pub fn new(
        redis: RedisClient,
        backlog: Rc<Backlog>,
        metrics: Rc<ShardWriter>,
        config: &Config,
    ) -> Rc<AppendGroups> {
        let partitions = backlog.partitions().len();
        Rc::new(AppendGroups {
            redis,
            backlog,
            metrics,
            ttl_secs: crate::ingest::nonce_ttl_secs(config),
            replicated: config.redis.wait_replicas > 0,
            max_members: config.redis.ingest_group_max.max(1),
            max_queued: config.redis.max_queued_bytes,
            queued: Cell::new(0),
            queues: (0..partitions).map(|_| RefCell::new(Queue::default())).collect(),
        })
    }

    /// Most bytes of `XADD`s one transaction carries: at most half of what a connection
    /// may hold waiting, so that a transaction fits beside what is queued there already (a
    /// request larger than this goes alone).
    fn group_bytes(&self) -> usize {
        GROUP_BYTES.min(self.max_queued / 2)
    }

    /// Appends `a` to partition `p` in the next round of transactions sent there, and
    /// waits for it; hands `a`'s nonce key back with the answer. Fails at once with
    /// [`RedisError::QueueFull`] when the appends waiting here would go past
    /// `redis.max_queued_bytes` (one append always fits when none waits).
    pub async fn append(self: &Rc<Self>, p: usize, a: Append) -> (Appended, String) {
        let Some(queue) = self.queues.get(p) else { return (Err(RedisError::Unavailable), a.nonce_key) };
        let queued = self.queued.get();
        if queued > 0 && queued.saturating_add(a.cmd.len()) > self.max_queued {
            return (Err(RedisError::QueueFull), a.nonce_key);
        }
        self.queued.set(queued + a.cmd.len());
        for &(kind, _) in a.entries() {
            self.backlog.stage(p, kind);
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = queue.borrow_mut();
            q.waiting.push_back(Waiting { append: a, reply });
            !std::mem::replace(&mut q.sending, true)
        };
        if start {
            monoio::spawn(self.clone().send_all(p));
        }
        // The sender answers every append it takes; were it gone, the key went with it.
        answer.await.unwrap_or_else(|_| (Err(RedisError::Unavailable), String::new()))
    }

    /// Sends partition `p`'s queued appends, a round at a time, until none is left.
    async fn send_all(self: Rc<Self>, p: usize) {
        loop {
            let groups = self.take(p);
            if groups.is_empty() {
                // Nothing left waiting (`take` leaves nothing behind): the next append
                // starts a sender again.
                if let Some(q) = self.queues.get(p) {
                    q.borrow_mut().sending = false;
                }
                return;
            }
            // Every transaction of the round is queued on the connection before any
            // answer is awaited: the first here, at once (no further wait behind the
            // handlers that became ready meanwhile), the others by tasks of their own,
            // which run as soon as this one waits.
            let mut groups = groups.into_iter();
            let first = groups.next();
            let others: Vec<_> = groups.map(|g| monoio::spawn(self.clone().send(p, g))).collect();
            if let Some(g) = first {
                self.clone().send(p, g).await;
            }
            for s in others {
                s.await;
            }
        }
    }

    /// Everything waiting on partition `p`, as transactions of at most `max_members`
    /// requests and [`AppendGroups::group_bytes`] of `XADD`s, in order, without the
    /// requests whose handler has given up.
    fn take(&self, p: usize) -> Vec<Vec<Waiting>> {
        let Some(q) = self.queues.get(p) else { return Vec::new() };
        let mut q = q.borrow_mut();
        let mut groups: Vec<Vec<Waiting>> = Vec::new();
        let mut bytes = 0;
        while let Some(w) = q.waiting.pop_front() {
            self.queued.set(self.queued.get().saturating_sub(w.append.cmd.len()));
            // Queued on the connection next (counted by `count_added` then), or dropped.
            for &(kind, _) in w.append.entries() {
                self.backlog.unstage(p, kind);
            }
            if w.reply.is_closed() {
                continue;
            }
            let len = w.append.xadds().len();
            match groups.last_mut() {
                Some(g) if g.len() < self.max_members && bytes + len <= self.group_bytes() => {
                    bytes += len;
                    g.push(w);
                }
                _ => {
                    bytes = len;
                    groups.push(vec![w]);
                }
            }
        }
        groups
    }

    /// Sends one transaction of `group` and answers each of its requests.
    async fn send(self: Rc<Self>, p: usize, mut group: Vec<Waiting>) {
        // The first request's `MULTI` and `XADD`s, then the others' `XADD`s.
        let mut cmd = match group.first_mut() {
            Some(w) => std::mem::take(&mut w.append.cmd),
            None => return,
        };
        let keys = group.iter().map(|w| w.append.nonce_key.len() + 24 * w.append.len).sum::<usize>();
        let rest = group.iter().skip(1).map(|w| w.append.xadds().len()).sum::<usize>();
        cmd.reserve(rest + INGEST_SCRIPT.len() + 64 + 2 * keys + 120 * group.len());
        for w in group.iter().skip(1) {
            cmd.extend_from_slice(w.append.xadds());
        }
        let partitions = self.backlog.partitions();
        let metas: Vec<EntryMeta<'_>> = group
            .iter()
            .flat_map(|w| w.append.entries())
            .map(|&(kind, _)| EntryMeta { stream: partitions.stream(p, kind) })
            .collect();
        let mut at = 0;
        let members: Vec<Member<'_>> = group
            .iter()
            .map(|w| {
                let entries = metas.get(at..at + w.append.len).unwrap_or_default();
                at += w.append.len;
                Member { nonce_key: &w.append.nonce_key, digest: &w.append.digest, entries, mark: w.append.mark }
            })
            .collect();
        let replies = resp::ingest_end(&mut cmd, self.ttl_secs, &members);
        // Counted as queued: nothing awaits between here and the call's queueing.
        for &(kind, count) in group.iter().flat_map(|w| w.append.entries()) {
            self.backlog.count_added(p, kind, count);
        }
        self.metrics.emit(IngestTransactionSent { requests: members.len() as u64 });
        let route = members.first().map(|m| m.nonce_key).unwrap_or_default();
        let answers: Vec<Appended> = match self.redis.call_group(cmd, replies, 0, route, self.replicated).await {
            Err(e) => members.iter().map(|_| Err(e.clone())).collect(),
            Ok((frames, replicas, _)) => match resp::ingest_reply(frames, &members) {
                Ok(verdicts) => verdicts.into_iter().map(|v| Ok((v, replicas))).collect(),
                Err(e) => {
                    if crate::ingest::first_failure_in_a_while(&e.0) {
                        tracing::warn!(
                            requests = members.len(),
                            error = %e,
                            "an ingest transaction failed as a whole (logged at most every 10 s per error code)"
                        );
                    }
                    members.iter().map(|_| Ok((Err(e.clone()), replicas))).collect()
                }
            },
        };
        drop(members);
        for (w, a) in group.into_iter().zip(answers) {
            // A handler that gave up in the meantime is not told.
            let _ = w.reply.send((a, w.append.nonce_key));
        }
    }
}
