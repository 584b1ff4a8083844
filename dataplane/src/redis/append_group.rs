//! Ingest appends grouped into shared transactions (`redis.ingest_protocol = "script"`).
//!
//! Every request's append is one `MULTI`, its `XADD`s, an `EVAL` of the ingest script and
//! `EXEC` (`croupier_protocol::resp::ingest`). Redis's cost of a transaction is mostly
//! per transaction, not per byte: the script's set-up and the hash of its text, and the
//! `MULTI`/`EXEC` around it. So the requests a shard has waiting for Redis at the same
//! moment, on the same partition, go in one transaction: every request's `XADD`s in
//! order, then one `EVAL` that judges each request on its own (its nonce, its entries, its
//! verdict), then `EXEC`. Nothing waits to fill a group: a request queues its append, and
//! the partition's sender takes whatever is queued when it runs — after the request
//! handlers that were ready with it, and then again each time the transaction before comes
//! back. Under a light load a group is one request.
//!
//! What each request is told is what it would be told alone: its own entry ids, or
//! `DUPLICATE`, `REPLAY`, its own error, or the group's failure (the connection lost or no
//! reply in time: not known to be appended, like a request alone). A request whose
//! handler has given up before its group is sent is left out of it.
//!
//! The entries are counted for the backlog (`Backlog::count_added`) when the group is
//! queued on the connection, as a request alone counts them when it queues its own
//! transaction; the `MINID` each `XADD` carries was read when the request was staged
//! (`Backlog::trim_point`), which stays safe to send later.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use croupier_control::config::Config;
use croupier_protocol::resp::{self, EntryMeta, IngestReply, Member, RespError};
use croupier_protocol::stream::StreamKind;
use local_sync::oneshot;

use super::backlog::Backlog;
use super::connection::{RedisClient, RedisError};

/// Most bytes of `XADD`s one transaction carries, unless `redis.max_queued_bytes` is
/// smaller (a request larger than this goes alone).
const GROUP_BYTES: usize = 4 << 20;

/// One request's append, staged: its `XADD`s and what the script needs to judge it.
#[derive(Debug)]
pub struct Append {
    /// `MULTI` (`resp::ingest_begin`), then the request's `XADD`s (`resp::xadd`), from
    /// [`Append::xadds_at`] on: the first request of a group lends its buffer to the
    /// whole transaction, so a request alone is not copied again.
    pub cmd: Vec<u8>,
    /// Where the `XADD`s start in `cmd`.
    pub xadds_at: usize,
    /// Each entry's stream, record count and archive length, in the order of `xadds`.
    pub entries: Vec<(StreamKind, usize, usize)>,
    /// The nonce key (tagged with its partition).
    pub nonce_key: String,
    /// The body's digest, the nonce's value.
    pub digest: [u8; 32],
}

/// What became of one request's append: the script's verdict on it (or why it could not
/// be read) and the replicas that confirmed the transaction; `Err` when the transaction's
/// fate is not known.
pub type Appended = Result<(Result<IngestReply, RespError>, u32), RedisError>;

/// A request waiting for its group.
struct Waiting {
    append: Append,
    reply: oneshot::Sender<Appended>,
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

impl Append {
    /// The request's `XADD`s.
    fn xadds(&self) -> &[u8] {
        self.cmd.get(self.xadds_at..).unwrap_or_default()
    }
}

impl AppendGroups {
    /// Groups for the partitions of `backlog`, sent on `redis`.
    pub fn new(redis: RedisClient, backlog: Rc<Backlog>, config: &Config) -> Rc<AppendGroups> {
        let partitions = backlog.partitions().len();
        Rc::new(AppendGroups {
            redis,
            backlog,
            ttl_secs: crate::ingest::nonce_ttl_secs(config),
            replicated: config.redis.wait_replicas > 0,
            max_members: config.redis.ingest_group_max.max(1),
            max_queued: config.redis.max_queued_bytes,
            queued: Cell::new(0),
            queues: (0..partitions).map(|_| RefCell::new(Queue::default())).collect(),
        })
    }

    /// Most bytes of `XADD`s one transaction carries: at most half of what a connection
    /// may hold waiting, so that a group fits beside what is queued there already (a
    /// request larger than this goes alone).
    fn group_bytes(&self) -> usize {
        GROUP_BYTES.min(self.max_queued / 2)
    }

    /// Appends `a` to partition `p` in the next transaction sent there, and waits for it.
    /// Fails at once with [`RedisError::QueueFull`] when the appends waiting here would go
    /// past `redis.max_queued_bytes` (one append always fits when none waits).
    pub async fn append(self: &Rc<Self>, p: usize, a: Append) -> Appended {
        let Some(queue) = self.queues.get(p) else { return Err(RedisError::Unavailable) };
        let queued = self.queued.get();
        if queued > 0 && queued.saturating_add(a.cmd.len()) > self.max_queued {
            return Err(RedisError::QueueFull);
        }
        self.queued.set(queued + a.cmd.len());
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = queue.borrow_mut();
            q.waiting.push_back(Waiting { append: a, reply });
            !std::mem::replace(&mut q.sending, true)
        };
        if start {
            monoio::spawn(self.clone().send_all(p));
        }
        answer.await.unwrap_or(Err(RedisError::Unavailable))
    }

    /// Sends partition `p`'s queued appends, a group at a time, until none is left.
    async fn send_all(self: Rc<Self>, p: usize) {
        loop {
            let group = self.take(p);
            if group.is_empty() {
                // Nothing left waiting (`take` leaves nothing behind when it takes
                // nothing): the next append starts a sender again.
                if let Some(q) = self.queues.get(p) {
                    q.borrow_mut().sending = false;
                }
                return;
            }
            self.send(p, group).await;
        }
    }

    /// The next group of partition `p`: the oldest waiting appends, up to the limits,
    /// without those whose handler has given up.
    fn take(&self, p: usize) -> Vec<Waiting> {
        let Some(q) = self.queues.get(p) else { return Vec::new() };
        let mut q = q.borrow_mut();
        let mut group = Vec::new();
        let mut bytes = 0;
        while group.len() < self.max_members {
            let Some(next) = q.waiting.front() else { break };
            if !group.is_empty() && bytes + next.append.xadds().len() > self.group_bytes() {
                break;
            }
            let Some(w) = q.waiting.pop_front() else { break };
            self.queued.set(self.queued.get().saturating_sub(w.append.cmd.len()));
            if w.reply.is_closed() {
                continue;
            }
            bytes += w.append.xadds().len();
            group.push(w);
        }
        group
    }

    /// Sends one group as a transaction and answers each of its requests.
    async fn send(&self, p: usize, mut group: Vec<Waiting>) {
        // The first request's `MULTI` and `XADD`s, then the others' `XADD`s.
        let mut cmd = match group.first_mut() {
            Some(w) => std::mem::take(&mut w.append.cmd),
            None => return,
        };
        let rest = group.iter().skip(1).map(|w| w.append.xadds().len()).sum::<usize>();
        cmd.reserve(rest + 1024 + 160 * group.len());
        for w in group.iter().skip(1) {
            cmd.extend_from_slice(w.append.xadds());
        }
        let partitions = self.backlog.partitions();
        let metas: Vec<Vec<EntryMeta<'_>>> = group
            .iter()
            .map(|w| {
                w.append
                    .entries
                    .iter()
                    .map(|&(kind, count, archive_len)| EntryMeta {
                        stream: partitions.stream(p, kind),
                        count,
                        archive_len,
                    })
                    .collect()
            })
            .collect();
        let members: Vec<Member<'_>> = group
            .iter()
            .zip(&metas)
            .map(|(w, entries)| Member { nonce_key: &w.append.nonce_key, digest: &w.append.digest, entries })
            .collect();
        let replies = resp::ingest_end(&mut cmd, self.ttl_secs, &members);
        let counts: Vec<usize> = metas.iter().map(Vec::len).collect();
        drop(members);
        drop(metas);
        let route = group.first().map(|w| w.append.nonce_key.as_str()).unwrap_or_default();
        // Counted as queued: nothing awaits between here and the call's queueing.
        for w in &group {
            for &(kind, count, _) in &w.append.entries {
                self.backlog.count_added(p, kind, count);
            }
        }
        let answers: Vec<Appended> = match self.redis.call_group(cmd, replies, 0, route, self.replicated).await {
            Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
            Ok((frames, replicas)) => match resp::ingest_reply(frames, &counts) {
                Ok(verdicts) => verdicts.into_iter().map(|v| Ok((v, replicas))).collect(),
                Err(e) => group.iter().map(|_| Ok((Err(e.clone()), replicas))).collect(),
            },
        };
        for (w, a) in group.into_iter().zip(answers) {
            // A handler that gave up in the meantime is not told.
            let _ = w.reply.send(a);
        }
    }
}
