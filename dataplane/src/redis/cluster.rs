//! A Redis Cluster as one shard sees it: one pipelined connection ([`Node`]) per primary,
//! each command routed by its key's slot.
//!
//! The slot map is read with `CLUSTER SHARDS` (Redis 7; `CLUSTER SLOTS` where that is
//! unknown, Redis 6) from the primaries last known and the seed nodes (`redis.cluster`)
//! at once, and the complete map most of them give is followed. It is read at start,
//! every `redis.cluster_refresh_ms`, and soon (within [`STALE_CHECK`]) after a `MOVED`,
//! a `CLUSTERDOWN` or `TRYAGAIN`, or a failed or timed-out command; such readings that
//! keep finding the map unchanged are spaced out, up to [`MAX_STALE_PAUSE`]. A map that names
//! other primaries opens connections to them and closes those to nodes that no longer
//! serve slots; when it gives a slot a primary it did not have, it moves the [`Epoch`]
//! (readings of the backlog taken before it are stale; a primary gone with nothing in its
//! place leaves the others' readings standing).
//!
//! A command's key is found by [`command_key`] (the first key; a keyless command goes to
//! any primary). Its reply is passed on unless it redirects:
//! - `MOVED <slot> <addr>`: the map is out of date; the command is sent to `addr` and the
//!   map read again;
//! - `ASK <slot> <addr>`: the slot is being migrated; `ASKING` and the command go to
//!   `addr`, the map unchanged.
//!
//! A `CLUSTERDOWN` or `TRYAGAIN` reply is passed on and the map read again.
//!
//! At most [`MAX_REDIRECTS`] sends per command; the last redirection is the answer (an
//! error reply: ingest answers 503, the client retries). The command travels back with
//! a redirection from the connection that sent it, so it is not copied in advance. Each
//! connection keeps every guarantee of [`super::connection`]: reply deadlines, the queue
//! bound, abandoned commands skipped, one `WAIT` per round (a replicated append waits for
//! the replicas of the primary that took it).
//!
//! A failover is followed as the cluster announces it: while a primary is down, commands
//! for its slots fail (503, effect unknown: the client's retry is a duplicate or a new
//! append, never both), the map is read again every [`STALE_CHECK`], and once a replica
//! is promoted the map names it and the commands go there.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use croupier_protocol::cluster::{command_key, key_slot, redirect, Redirect, SlotMap};
use croupier_protocol::resp::{self, Frame};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::auth::{self, Credentials, Role};
use super::connection::{read_frame, Answer, Epoch, Group, Node, Placement, RedisError, RedisOptions};
use super::overdue::{Overdue, MIRROR_EVERY};

/// Sends of one command at most (the first and two redirections).
const MAX_REDIRECTS: usize = 3;

/// How soon a map known to be stale is read again (and at most how often).
const STALE_CHECK: Duration = Duration::from_millis(100);

/// The longest pause between readings of a map known to be stale that keep finding it
/// unchanged.
const MAX_STALE_PAUSE: Duration = Duration::from_millis(800);

/// One shard's view of a cluster and its connections to the primaries.
pub(super) struct Cluster {
    /// Options of each primary's connection (`addr` replaced).
    options: RedisOptions,
    map: RefCell<Option<Rc<SlotMap>>>,
    nodes: RefCell<HashMap<String, Node>>,
    epoch: Epoch,
    /// Something failed or redirected: read the map again.
    stale: Cell<bool>,
    /// The `WAIT` timeout when replicated appends are asked for.
    wait: Option<Duration>,
    /// The shard's stamp (in the process's `RedisHealth`), which the control thread's
    /// `/readyz` reads: the earliest of the primaries' stamps is copied into it.
    report: Option<Arc<Overdue>>,
}

impl Cluster {
    /// Starts reading the slot map (and keeping it) on the current shard.
    pub(super) fn start(options: RedisOptions) -> Rc<Cluster> {
        let wait = (options.wait_replicas > 0).then_some(options.wait_timeout);
        let report = options.overdue.clone();
        let c = Rc::new(Cluster {
            options,
            map: RefCell::new(None),
            nodes: RefCell::new(HashMap::new()),
            epoch: Epoch::default(),
            stale: Cell::new(true),
            wait,
            report,
        });
        monoio::spawn(maintain(Rc::downgrade(&c)));
        if c.report.is_some() {
            monoio::spawn(mirror(Rc::downgrade(&c)));
        }
        c
    }

    /// Whether the map is known and a primary connected.
    pub(super) fn is_up(&self) -> bool {
        self.map.borrow().is_some() && self.nodes.borrow().values().any(Node::is_up)
    }

    /// Moves on every connect of a primary's connection and every change of the map that
    /// gives a slot a primary it did not have ([`SlotMap::reassigns`]).
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch.clone()
    }

    /// The longest a primary's connection has owed a reply past its threshold.
    pub(super) fn overdue(&self) -> Option<Duration> {
        self.nodes.borrow().values().filter_map(Node::overdue).max()
    }

    /// The `WAIT` timeout, when replicated appends are asked for.
    pub(super) fn wait(&self) -> Option<Duration> {
        self.wait
    }

    /// The connection to `addr`, made if there is none (and whether it was just made).
    fn node(&self, addr: &str) -> (Node, bool) {
        if let Some(n) = self.nodes.borrow().get(addr) {
            return (n.clone(), false);
        }
        let mut options = self.options.clone();
        options.addr = addr.to_owned();
        options.cluster = Vec::new();
        options.sentinels = None;
        // A stamp of its own: a shared one would be cleared by one primary's connection
        // while another owes a reply.
        options.overdue = None;
        let n = Node::start(options, self.epoch.clone());
        self.nodes.borrow_mut().insert(addr.to_owned(), n.clone());
        (n, true)
    }

    /// Where a command for `slot` goes (`None`: any primary).
    fn route(&self, slot: Option<u16>) -> Option<String> {
        let map = self.map.borrow();
        let map = map.as_ref()?;
        match slot {
            Some(s) => map.node(s).map(str::to_owned),
            None => map.nodes.first().cloned(),
        }
    }

    /// Sends `cmd` to the primary of its key's slot, following redirections.
    pub(super) async fn send(&self, cmd: Vec<u8>, block: Duration, replicated: bool) -> Result<Answer, RedisError> {
        let slot = command_key(&cmd).map(key_slot);
        self.send_to(cmd, block, replicated, Group::ONE, slot).await.map(|(a, _)| a)
    }

    /// Sends `cmd`, a group of commands, to the primary of `route_key`'s slot,
    /// following a redirection of any of them with the whole group; with the connection
    /// it ran on.
    pub(super) async fn send_group(
        &self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        group: Group,
        route_key: &str,
    ) -> Result<(Answer, Placement), RedisError> {
        self.send_to(cmd, block, replicated, group, Some(key_slot(route_key.as_bytes()))).await
    }

    async fn send_to(
        &self,
        cmd: Vec<u8>,
        block: Duration,
        replicated: bool,
        group: Group,
        slot: Option<u16>,
    ) -> Result<(Answer, Placement), RedisError> {
        let Some(mut addr) = self.route(slot) else {
            self.stale.set(true);
            return Err(RedisError::Unavailable);
        };
        let (mut cmd, mut asking) = (cmd, false);
        for attempt in 1..=MAX_REDIRECTS {
            let (node, new) = self.node(&addr);
            if new {
                // Named by a redirection before the map: give it the time to connect.
                let deadline = Instant::now() + self.options.connect_timeout;
                while !node.is_up() && Instant::now() < deadline {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let keep = attempt < MAX_REDIRECTS;
            let sent = if asking {
                node.send_asking(cmd, block, replicated, group).await
            } else {
                node.send_placed(cmd, block, replicated, keep, group).await
            };
            let (a, at) = match sent {
                Ok(a) => a,
                Err(e) => {
                    if e != RedisError::QueueFull {
                        self.stale.set(true);
                    }
                    return Err(e);
                }
            };
            let Some(r) = group_redirect(&a.frame, group.replies) else {
                if unsettled(&a.frame) {
                    self.stale.set(true);
                }
                return Ok((a, at));
            };
            let Some(again) = a.cmd else { return Ok((a, at)) };
            cmd = again;
            (addr, asking) = match r {
                Redirect::Moved { addr, .. } => {
                    self.stale.set(true);
                    (addr, false)
                }
                Redirect::Ask { addr, .. } => (addr, true),
            };
        }
        Err(RedisError::Unavailable)
    }

    /// Notes a reply of a group sent to a node directly (not routed here): a redirection
    /// or a cluster changing under it has the map read again.
    pub(super) fn saw(&self, frame: &Frame, replies: usize) {
        if group_redirect(frame, replies).is_some() || unsettled(frame) {
            self.stale.set(true);
        }
    }

    /// Reads the map from the primaries known and the seeds, all at once; the complete
    /// map most of them give wins ([`SlotMap::agreed`]), so a node with a stale view is
    /// outvoted. Connections follow the map's primaries.
    async fn refresh(&self) -> bool {
        let mut candidates: Vec<String> = self.map.borrow().as_ref().map(|m| m.nodes.clone()).unwrap_or_default();
        for s in &self.options.cluster {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let timeout = self.options.connect_timeout.saturating_add(self.options.reply_timeout);
        // Read concurrently: a node that does not answer costs one timeout, not one each.
        let reads: Vec<_> = candidates
            .into_iter()
            .map(|addr| {
                let auth = self.options.auth.clone();
                monoio::spawn(async move {
                    monoio::time::timeout(timeout, read_map(&addr, auth.as_ref())).await.ok().flatten()
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(reads.len());
        for r in reads {
            if let Some(m) = r.await {
                answers.push(m);
            }
        }
        let maps = one_vote_each(answers);
        let found = SlotMap::agreed(&maps).cloned();
        let Some(map) = found else { return false };
        if self.map.borrow().as_deref() == Some(&map) {
            return false;
        }
        tracing::info!(primaries = ?map.nodes, complete = map.complete(), "Redis Cluster slot map");
        // A new epoch when a slot has a primary it did not have (its streams' readings,
        // made on another node, no longer stand). A primary gone with nothing in its
        // place leaves the other partitions' readings standing: a new epoch would make
        // every partition unknown, refusing every request and the node's readiness
        // until the next readings, when only the gone primary's partitions have to be.
        let reassigned = self.map.borrow().as_deref().is_none_or(|old| old.reassigns(&map));
        for addr in &map.nodes {
            self.node(addr);
        }
        self.nodes.borrow_mut().retain(|addr, _| map.nodes.contains(addr));
        *self.map.borrow_mut() = Some(Rc::new(map));
        if reassigned {
            self.epoch.advance();
        }
        true
    }
}

/// The redirection of a group of `replies` commands: the first of its replies that
/// redirects (a transaction's commands are refused when queued, and its `EXEC` aborts).
fn group_redirect(frame: &Frame, replies: usize) -> Option<Redirect> {
    match frame {
        Frame::Array(items) if replies > 1 => items.iter().find_map(redirect),
        f => redirect(f),
    }
}

/// Whether a reply (or one of a group's) says the cluster is changing under the command:
/// `CLUSTERDOWN` (a slot not served, no quorum) or `TRYAGAIN` (a slot half migrated).
/// The reply is passed on (503); the map is read again.
fn unsettled(frame: &Frame) -> bool {
    let says = |f: &Frame| matches!(f, Frame::Error(e) if e.starts_with("CLUSTERDOWN") || e.starts_with("TRYAGAIN"));
    match frame {
        Frame::Array(items) => items.iter().any(says),
        f => says(f),
    }
}

/// Keeps `cluster`'s map: read at once when stale, else every `cluster_refresh`; ends
/// with the cluster.
async fn maintain(cluster: Weak<Cluster>) {
    let mut last: Option<Instant> = None;
    // Reading every node's map costs a connection each: while readings asked for by
    // redirections or failures keep finding the map unchanged (a primary down and not yet
    // replaced, a slot half migrated), they are spaced out, doubling up to
    // [`MAX_STALE_PAUSE`]; a changed map brings the pace back to [`STALE_CHECK`].
    let mut pause = STALE_CHECK;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let stale = c.stale.get();
        let due = stale || last.is_none_or(|l| l.elapsed() >= c.options.cluster_refresh);
        if due {
            c.stale.set(false);
            let changed = c.refresh().await;
            last = Some(Instant::now());
            if c.map.borrow().as_ref().is_none_or(|m| !m.complete()) {
                c.stale.set(true);
            }
            pause = match (changed, stale) {
                (false, true) => pause.saturating_mul(2).min(MAX_STALE_PAUSE),
                _ => STALE_CHECK,
            };
        }
        drop(c);
        monoio::time::sleep(pause).await;
    }
}

/// Copies the earliest of the primaries' stamps into the shard's every [`MIRROR_EVERY`]
/// (apart from [`maintain`], whose reads of the map can wait on a frozen primary); ends
/// with the cluster.
async fn mirror(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if let Some(report) = &c.report {
            report.mirror(c.nodes.borrow().values().map(Node::stamp));
            // A primary reconnected or a slot got a new primary (or none is up): not serving until
            // the shard's next backlog reading in the new epoch (one made in it already,
            // between two mirrors, stands).
            if c.is_up() {
                report.epoch_began(c.epoch.get());
            } else {
                report.set_serving(None);
            }
        }
        drop(c);
        monoio::time::sleep(MIRROR_EVERY).await;
    }
}

/// The maps read, one per node: a node asked under two names (a seed given by host name
/// and the same node as the map names it, by address) answers twice and would vote
/// twice. Answers are told apart by the address connected to; the first of a node's is
/// kept, in order.
fn one_vote_each(answers: Vec<(Option<SocketAddr>, SlotMap)>) -> Vec<SlotMap> {
    let mut seen = HashSet::with_capacity(answers.len());
    answers.into_iter().filter(|(peer, _)| peer.is_none_or(|p| seen.insert(p))).map(|(_, map)| map).collect()
}

/// The slot map as `addr` sees it (`CLUSTER SHARDS`, else `CLUSTER SLOTS`), with the
/// address connected to (authenticated with `auth` first).
async fn read_map(addr: &str, auth: Option<&Credentials>) -> Option<(Option<SocketAddr>, SlotMap)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    auth::authenticate(&mut stream, auth, Role::Redis, addr).await.ok()?;
    let mut rbuf = Vec::with_capacity(4096);
    let shards = ask(&mut stream, &mut rbuf, b"SHARDS").await?;
    let mut map = match SlotMap::from_cluster_shards(&shards) {
        Some(m) => m,
        None => {
            let slots = ask(&mut stream, &mut rbuf, b"SLOTS").await?;
            // A refusal is reported when neither reading works (a user may be allowed
            // `CLUSTER SLOTS` only; Redis 6 does not know `CLUSTER SHARDS`).
            if let Frame::Error(e) = &slots {
                if !matches!(&shards, Frame::Error(s) if auth::note(Role::Redis, addr, "CLUSTER SHARDS", s)) {
                    auth::note(Role::Redis, addr, "CLUSTER SLOTS", e);
                }
            }
            SlotMap::from_cluster_slots(&slots)?
        }
    };
    // A node that has not talked to another yet does not know its own address and names
    // itself without a host (`:7000`): it is the host asked.
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    for n in &mut map.nodes {
        if n.starts_with(':') {
            *n = format!("{host}{n}");
        }
    }
    Some((peer, map.canonical()))
}

async fn ask(stream: &mut TcpStream, rbuf: &mut Vec<u8>, sub: &[u8]) -> Option<Frame> {
    let mut cmd = Vec::with_capacity(32);
    resp::command(&mut cmd, &[b"CLUSTER", sub]);
    let (res, _) = stream.write_all(cmd).await;
    res.ok()?;
    read_frame(stream, rbuf).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete map: every slot served by `port`'s node.
    fn all_on(port: i64) -> SlotMap {
        let node = Frame::Array(vec![Frame::BulkString(b"127.0.0.1".to_vec()), Frame::Integer(port)]);
        let range = Frame::Array(vec![Frame::Integer(0), Frame::Integer(16_383), node]);
        SlotMap::from_cluster_slots(&Frame::Array(vec![range])).expect("map").canonical()
    }

    #[test]
    fn a_node_asked_under_two_names_votes_once() {
        let (x, y, z): (SocketAddr, SocketAddr, SocketAddr) =
            ("127.0.0.1:7000".parse().unwrap(), "127.0.0.1:7001".parse().unwrap(), "127.0.0.1:7002".parse().unwrap());
        let (stale, current) = (all_on(7000), all_on(7001));
        // `x` asked as a seed by host name and by the address the map names: one vote.
        let answers = vec![
            (Some(x), stale.clone()),
            (Some(x), stale.clone()),
            (Some(y), current.clone()),
            (Some(z), current.clone()),
        ];
        let maps = one_vote_each(answers);
        assert_eq!(maps.len(), 3);
        assert_eq!(SlotMap::agreed(&maps), Some(&current));
        // Counted twice, the stale map would tie and win as the first read.
        assert_eq!(SlotMap::agreed(&[stale.clone(), stale.clone(), current.clone(), current]), Some(&stale));
        // An answer whose peer is unknown still counts.
        assert_eq!(one_vote_each(vec![(None, stale.clone()), (None, stale)]).len(), 2);
    }
}
