//! Finding the primary through Redis Sentinel, and following its failovers.
//!
//! With `redis.sentinels` set, a connection asks the sentinels, in the configured order,
//! `SENTINEL get-master-addr-by-name <redis.master_name>` (and `SENTINEL MASTER` for its
//! epoch) before every (re)connect, and takes the first answer, unless it is at a lower
//! epoch than the primary the process recorded (below). After connecting it checks with
//! `ROLE` that the server is a primary (a sentinel may still name a demoted one for a
//! moment after a failover).
//!
//! A failover is followed as the sentinels announce it: two threads per process
//! ([`watch`]) record in a [`Watch`] the primary together with the sentinels'
//! configuration epoch for it, moved only for a strictly higher epoch, from any sentinel
//! (the highest of each round). One holds a subscription to `+switch-master` on one
//! sentinel (the next one, with back-off, when it is lost); the other asks every sentinel
//! for the primary and its epoch (`SENTINEL MASTER`, `SENTINEL get-master-addr-by-name`)
//! when a subscription is made, at once after a message, and every second, each
//! connection made on a thread of its own so that no sentinel holds up another: a failover
//! the subscribed sentinel did not announce (frozen, or cut off from the others) is
//! followed as soon as another names the new primary, and one that has not heard of a
//! failover (a lower or equal epoch) never moves the connections back. Sentinels whose
//! epochs started again (deployed afresh) are followed when a majority of them names an
//! older configuration for [`REBASE_ROUNDS`] rounds in a row, or at once when the
//! recorded primary cannot be used ([`recorded_failed`]). Every connection of the process
//! reads the watch's change count (one atomic load) before each round it sends, and when
//! the primary moved it refuses that round and what is queued (503, the clients retry:
//! nothing taken for the old primary goes to the new one) and connects to the new
//! primary. A connection that gets a `READONLY` error (its server was demoted while it
//! stayed connected) or a `NOREPLICAS` one (an old primary cut off from its replicas,
//! still a primary) is closed and made again, asking the sentinels again: that still
//! follows a failover the watch did not see (docs/redis-topologies.md).

use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use croupier_protocol::resp::{self, Frame};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::auth::{self, Credentials, Role};
use super::connection::{read_frame, RedisError};

/// The channel on which a sentinel announces a new primary:
/// `<master-name> <old-ip> <old-port> <new-ip> <new-port>`.
pub const SWITCH_MASTER: &str = "+switch-master";

/// First pause before subscribing again after the subscription is lost (doubling).
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts to subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A subscription that held this long starts the back-off afresh when lost.
const HELD: Duration = Duration::from_secs(10);
/// A quiet subscription is pinged this often...
const PING_EVERY: Duration = Duration::from_secs(1);
/// How often the subscribing thread looks up from its subscription (the subscription
/// socket's read timeout) to see whether a ping is due or the watch is gone.
const TICK: Duration = Duration::from_millis(100);
/// Every sentinel is asked for the primary and its epoch this often.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// How long a round of questions waits for the answers before the thread goes back to
/// its subscription (an answer that comes later is read in the next round).
const ASK_WAIT: Duration = Duration::from_millis(100);
/// Longest pause before connecting again to a sentinel that could not be reached.
const MAX_ASK_BACKOFF: Duration = Duration::from_secs(8);
/// ...and given up when nothing at all came for this long (the sentinel is gone).
const SILENT_LIMIT: Duration = Duration::from_secs(3);
/// Most bytes of a reply not yet complete: a sentinel's messages are small.
const MAX_BUFFERED: usize = 1 << 20;

/// Where to find the primary: sentinels and the primary's name there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of each sentinel, asked in this order.
    pub addrs: Vec<String>,
    /// The primary's name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// What each connection to a sentinel sends `AUTH` with first; `None`: no `AUTH`.
    pub auth: Option<Credentials>,
}

impl Sentinels {
    /// Where to connect: the primary's `host:port` as the first sentinel that answers
    /// names it; when none does (within `timeout` each, connect and reply), the primary
    /// `watch` recorded, or `None` without one. When
    /// that sentinel holds it at a lower epoch than the primary `watch` recorded (it has
    /// not heard of the last failover yet), the recorded primary instead: a connection
    /// made again never goes back to a primary the sentinels replaced. When that one cannot
    /// be used, the connection says so ([`recorded_failed`]).
    pub async fn primary(&self, timeout: Duration, watch: Option<&Watch>) -> Option<Target> {
        for addr in &self.addrs {
            if let Ok(Some((primary, epoch))) =
                monoio::time::timeout(timeout, ask(addr, &self.master_name, self.auth.as_ref())).await
            {
                let chosen = to_connect(primary.clone(), epoch, watch.and_then(Watch::named));
                if chosen == primary {
                    return Some(Target { addr: chosen, instead_of: None });
                }
                tracing::debug!(
                    sentinel = %addr,
                    named = %primary,
                    recorded = %chosen,
                    "a sentinel names the primary at an older epoch: connecting to the recorded one"
                );
                let instead_of = epoch.map(|epoch| Named { addr: primary, epoch });
                return Some(Target { addr: chosen, instead_of });
            }
        }
        // No sentinel answers (all down or unreachable): the primary the watch recorded,
        // rather than no connection at all. It is checked like any other (`ROLE`), so a
        // server demoted meanwhile is not written to.
        let recorded = watch.and_then(Watch::named)?;
        tracing::debug!(recorded = %recorded.addr, "no sentinel answers: connecting to the recorded primary");
        Some(Target::plain(recorded.addr))
    }
}

/// Where a connection goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// What the sentinel asked named, when the recorded primary was chosen over it.
    pub instead_of: Option<Named>,
}

impl Target {
    /// A target that is what it is: the configured address, or one a sentinel named.
    pub fn plain(addr: String) -> Target {
        Target { addr, instead_of: None }
    }
}

/// Where a connection goes when a sentinel names `primary` at `epoch` (`None`: it did not
/// say) and the watch recorded `recorded`: the recorded primary when its epoch is higher
/// (the sentinel has not heard of the last failover yet), else the sentinel's answer (an
/// equal epoch too: a server the sentinels were told to monitor afresh under the name).
fn to_connect(primary: String, epoch: Option<u64>, recorded: Option<Named>) -> String {
    match (epoch, recorded) {
        (Some(epoch), Some(r)) if newer(epoch, r.epoch) => r.addr,
        _ => primary,
    }
}

/// The reply that [`is_primary`]'s `false` makes the preparation of a connection fail with.
pub const NOT_A_PRIMARY: &str = "not a primary";

/// A connection chose the recorded primary `failed` over what its sentinel named
/// (`instead_of`) and could not use it: it refused or dropped the connection, did not
/// answer in time, is not a primary (`ROLE`), or refuses writes (`READONLY`,
/// `NOREPLICAS`). When no sentinel answering still names it at the recorded epoch or a
/// higher one, the sentinels' answer is recorded instead, whatever its epoch (their
/// epochs started again: they were set up afresh), with a warning, so that the next
/// (re)connects go there ([`Watch::failed`]).
pub fn recorded_failed(watch: &Watch, failed: &str, instead_of: &Named) {
    if let Some((before, now)) = watch.failed(failed, instead_of) {
        tracing::warn!(
            failed = %before.addr,
            recorded_epoch = before.epoch,
            primary = %now.addr,
            epoch = now.epoch,
            "the recorded Redis primary cannot be used and the sentinels name another at an older \
             configuration epoch (their epochs started again): following the sentinels"
        );
    }
}

/// What `sentinel` names: the primary's address and, unless the sentinel refuses
/// `SENTINEL MASTER`, its epoch for it.
async fn ask(sentinel: &str, name: &str, credentials: Option<&Credentials>) -> Option<(String, Option<u64>)> {
    let mut stream = TcpStream::connect(sentinel).await.ok()?;
    auth::authenticate(&mut stream, credentials, Role::Sentinel, sentinel).await.ok()?;
    let mut cmd = Vec::with_capacity(128);
    question(&mut cmd, name);
    let (res, _) = stream.write_all(cmd).await;
    res.ok()?;
    let mut rbuf = Vec::with_capacity(1024);
    let master = read_frame(&mut stream, &mut rbuf).await.ok()?;
    let addr = read_frame(&mut stream, &mut rbuf).await.ok()?;
    if let Frame::Error(e) = &addr {
        // `NOAUTH` (no `redis.sentinel_password`) or `NOPERM`: logged and shown by `/readyz`.
        auth::note(Role::Sentinel, sentinel, "SENTINEL GET-MASTER-ADDR-BY-NAME", e);
    }
    Some((primary_addr(&addr)?, config_epoch(&master)))
}

/// The `host:port` of a `SENTINEL get-master-addr-by-name` reply (`None`: the sentinel
/// does not know the name, or the reply is not an address).
fn primary_addr(frame: &Frame) -> Option<String> {
    let Frame::Array(parts) = frame else { return None };
    let [Frame::BulkString(host), Frame::BulkString(port)] = parts.as_slice() else { return None };
    host_port(std::str::from_utf8(host).ok()?, std::str::from_utf8(port).ok()?)
}

/// The primary as one sentinel names it, with the configuration epoch it holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// `host:port` of the primary.
    pub addr: String,
    /// The sentinel's `config-epoch` for the primary: the epoch of the failover that made
    /// it the primary (0 until the first). Every sentinel names the same primary for one
    /// epoch, and a newer configuration has a higher one.
    pub epoch: u64,
}

/// Appends the question that [`named`] reads the answers of: `SENTINEL MASTER <name>`,
/// then `SENTINEL get-master-addr-by-name <name>`. The address is taken from the second:
/// while the sentinel that ran a failover reconfigures the replicas, it already holds the
/// new epoch but `SENTINEL MASTER` still gives the old address, which
/// `get-master-addr-by-name` does not. Asked in this order, the epoch is never newer than
/// the address (a failover recorded between the two only makes the epoch older, so the
/// answer is ignored once and taken in the next round).
fn question(out: &mut Vec<u8>, name: &str) {
    resp::command(out, &[b"SENTINEL", b"MASTER", name.as_bytes()]);
    resp::command(out, &[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()]);
}

/// What a sentinel's answers to [`question`] say, `None` unless both are as expected (an
/// error for a name it does not monitor, or for want of `AUTH`, a malformed reply).
fn named(master: &Frame, addr: &Frame) -> Option<Named> {
    Some(Named { epoch: config_epoch(master)?, addr: primary_addr(addr)? })
}

/// The `config-epoch` field of a `SENTINEL MASTER <name>` reply (RESP2: a flat array of
/// field names and values, each a bulk string); `None` for an error reply, a missing or
/// malformed field, or a reply that is not field/value pairs.
fn config_epoch(frame: &Frame) -> Option<u64> {
    let Frame::Array(fields) = frame else { return None };
    if fields.len() % 2 != 0 {
        return None;
    }
    let value = fields.chunks_exact(2).find_map(|pair| match pair {
        [Frame::BulkString(k) | Frame::SimpleString(k), v] if k.as_slice() == b"config-epoch" => Some(v),
        _ => None,
    })?;
    match value {
        Frame::BulkString(v) | Frame::SimpleString(v) => std::str::from_utf8(v).ok()?.parse().ok(),
        Frame::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// `host:port`, with an IPv6 address in brackets; `None` for an empty host or a port
/// that is not one.
fn host_port(host: &str, port: &str) -> Option<String> {
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// Whether the server behind `stream` is a primary (`ROLE` answers `master`). An error
/// reply (`NOAUTH`, `NOPERM`, ...) is an error, with the reply's text.
pub async fn is_primary(stream: &mut TcpStream) -> Result<bool, RedisError> {
    let mut cmd = Vec::with_capacity(16);
    resp::command(&mut cmd, &[b"ROLE"]);
    let (res, _) = stream.write_all(cmd).await;
    res.map_err(|_| RedisError::Unavailable)?;
    let mut rbuf = Vec::with_capacity(256);
    match read_frame(stream, &mut rbuf).await? {
        Frame::Error(e) => Err(RedisError::Protocol(e)),
        Frame::Array(p) => {
            Ok(matches!(p.first(), Some(Frame::BulkString(r) | Frame::SimpleString(r)) if r == b"master"))
        }
        _ => Ok(false),
    }
}

/// Whether an error reply says the server is not the primary to write to: `READONLY`
/// (it is a replica now) or `NOREPLICAS` (an old primary cut off from its replicas, with
/// `min-replicas-to-write`, stays a primary and refuses every write). Either way the
/// connection is made again, asking the sentinels; if they still name the same server
/// (a primary whose replicas are away for a moment) it is the same server again.
pub fn is_demoted(frame: &Frame) -> bool {
    matches!(frame, Frame::Error(e) if e.contains("READONLY") || e.starts_with("NOREPLICAS"))
}

/// Whether an error reply is `NOREPLICAS` (the primary refuses writes for want of
/// replicas, `min-replicas-to-write`).
pub fn is_noreplicas(frame: &Frame) -> bool {
    matches!(frame, Frame::Error(e) if e.starts_with("NOREPLICAS"))
}

/// The new primary's `host:port` in a `+switch-master` message's payload,
/// `<master-name> <old-ip> <old-port> <new-ip> <new-port>`, when it is about `name`;
/// `None` for another name or anything malformed.
pub fn switch_master(payload: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let (master, _old_ip, _old_port, ip, port) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if master != name || parts.next().is_some() {
        return None;
    }
    host_port(ip, port)
}

/// What a subscription frame says: the payload of a `message` on [`SWITCH_MASTER`].
fn message_payload(frame: &Frame) -> Option<&[u8]> {
    let Frame::Array(parts) = frame else { return None };
    match parts.as_slice() {
        [Frame::BulkString(kind), Frame::BulkString(channel), Frame::BulkString(payload)]
            if kind.eq_ignore_ascii_case(b"message") && channel == SWITCH_MASTER.as_bytes() =>
        {
            Some(payload.as_slice())
        }
        _ => None,
    }
}

/// The primary as the sentinels last named it, with their configuration epoch for it,
/// shared by every connection of the process that finds the primary through the same
/// sentinels. Written by the thread that asks the sentinels (and by a connection that
/// cannot use the recorded primary, [`recorded_failed`]); a connection reads
/// [`Watch::changes`] (one atomic load) before each round and the address only when the
/// count moved.
#[derive(Debug, Default)]
pub struct Watch {
    changes: AtomicU64,
    state: Mutex<State>,
}

/// What a [`Watch`] holds behind its lock.
#[derive(Debug, Default)]
struct State {
    /// The recorded primary.
    primary: Option<Named>,
    /// The answers of the last round that had any, and when it ended.
    last: Option<(Instant, Vec<Named>)>,
    /// What a majority of the sentinels named at an epoch no higher than the recorded one
    /// (another primary, or the same at a lower epoch), and in how many rounds in a row.
    behind: Option<(Named, u32)>,
    /// How many sentinels there are (as the last round said).
    configured: usize,
}

/// What [`Watch::offer`] or [`Watch::heard`] did with what the sentinels said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// The first primary heard of: recorded, the count moved.
    First,
    /// A higher epoch naming another primary: recorded, the count moved (the primary
    /// recorded before is given).
    Moved(String),
    /// A higher epoch naming the same primary: the epoch recorded, the count unmoved.
    Newer,
    /// An epoch no higher than the recorded one: ignored, whatever the address.
    Stale,
    /// A majority of the sentinels named, in [`REBASE_ROUNDS`] rounds in a row and with no
    /// sentinel naming a newer configuration, another primary at an epoch no higher than
    /// the recorded one, or the same primary at a lower epoch (their epochs started
    /// again): recorded (what was recorded before is given), the count moved when the
    /// primary changed.
    Rebased(Named),
    /// Nothing was answered.
    Nothing,
}

/// Rounds in a row in which a majority of the sentinels name an older configuration
/// before it is taken ([`Offer::Rebased`]): about 5 s, more than two of the sentinels'
/// hello periods (2 s), in which a failover's configuration reaches every sentinel that
/// can hear the others.
pub const REBASE_ROUNDS: u32 = 5;

/// Answers of a round older than this are not used by [`Watch::failed`].
const FRESH: Duration = Duration::from_secs(3);

impl Watch {
    /// How many times the recorded primary changed.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The recorded primary's `host:port`, if any was heard of yet.
    pub fn primary(&self) -> Option<String> {
        lock(&self.state).primary.as_ref().map(|n| n.addr.clone())
    }

    /// The recorded primary and its epoch, if any was heard of yet.
    pub fn named(&self) -> Option<Named> {
        lock(&self.state).primary.clone()
    }

    /// Records what a sentinel names when it is the first heard of or its epoch is
    /// strictly higher than the recorded one ([`newer`]); the count moves when the
    /// primary changes.
    pub fn offer(&self, named: Named) -> Offer {
        let mut st = lock(&self.state);
        self.offer_locked(&mut st, named)
    }

    fn offer_locked(&self, st: &mut State, named: Named) -> Offer {
        let offer = match st.primary.as_ref() {
            None => Offer::First,
            Some(r) if !newer(r.epoch, named.epoch) => return Offer::Stale,
            Some(r) if r.addr == named.addr => Offer::Newer,
            Some(r) => Offer::Moved(r.addr.clone()),
        };
        self.set(st, named);
        offer
    }

    /// Records `named`, moving the count when the address changes.
    fn set(&self, st: &mut State, named: Named) {
        let moved = st.primary.as_ref().is_none_or(|r| r.addr != named.addr);
        st.primary = Some(named);
        st.behind = None;
        if moved {
            self.changes.fetch_add(1, Ordering::Release);
        }
    }

    /// What one round of asking the sentinels heard (`answers`, one per sentinel that
    /// answered; `configured`: how many sentinels there are). Only the highest epoch of
    /// the round is offered ([`Watch::offer`]). When that moves nothing, and a majority of
    /// the configured sentinels name one configuration that is not the recorded one, at
    /// an epoch no higher, with no sentinel naming a newer one or another primary at that
    /// epoch, for [`REBASE_ROUNDS`] rounds in a row, it is recorded
    /// ([`Offer::Rebased`]): the sentinels started their epochs again (set up afresh, or
    /// told to monitor another server under the name). A single sentinel, or any
    /// minority, never does that.
    pub fn heard(&self, answers: Vec<Named>, configured: usize) -> Offer {
        let mut st = lock(&self.state);
        st.configured = configured;
        let Some(top) = highest(&answers).cloned() else {
            st.behind = None;
            return Offer::Nothing;
        };
        let offer = self.offer_locked(&mut st, top.clone());
        let behind = match (&offer, st.primary.clone(), majority(&answers, configured)) {
            (Offer::Stale, Some(recorded), Some(m))
                if *m != recorded
                    && m.epoch <= recorded.epoch
                    && answers.iter().all(|a| a == m || a.epoch < m.epoch) =>
            {
                Some(m.clone())
            }
            _ => None,
        };
        st.last = Some((Instant::now(), answers));
        let Some(m) = behind else {
            st.behind = None;
            return offer;
        };
        let rounds = match st.behind.take() {
            Some((b, n)) if b == m => n + 1,
            _ => 1,
        };
        if rounds < REBASE_ROUNDS {
            st.behind = Some((m, rounds));
            return offer;
        }
        let before = st.primary.clone().unwrap_or_else(|| m.clone());
        self.set(&mut st, m);
        Offer::Rebased(before)
    }

    /// A connection could not use the recorded primary `failed`, chosen over `instead_of`
    /// (what its sentinel named at a lower epoch). Unless a sentinel of the last round
    /// (within [`FRESH`]; else `instead_of` alone) still names `failed` at the recorded
    /// epoch or a higher one, the sentinels' answer is recorded ([`instead`]): returns what
    /// was recorded before and now.
    pub fn failed(&self, failed: &str, instead_of: &Named) -> Option<(Named, Named)> {
        let mut st = lock(&self.state);
        let recorded = st.primary.clone().filter(|r| r.addr == failed)?;
        let answers = match &st.last {
            Some((at, a)) if at.elapsed() < FRESH && !a.is_empty() => a.clone(),
            _ => vec![instead_of.clone()],
        };
        let now = instead(&recorded, &answers, st.configured.max(answers.len()))?;
        self.set(&mut st, now.clone());
        Some((recorded, now))
    }
}

/// The highest epoch among `answers`; at one epoch, the address most of them name (the
/// first of those named as often).
fn highest(answers: &[Named]) -> Option<&Named> {
    let top = answers.iter().map(|a| a.epoch).max()?;
    let at_top = || answers.iter().filter(move |a| a.epoch == top);
    let votes = |n: &Named| answers.iter().filter(|a| *a == n).count();
    let most = at_top().map(votes).max()?;
    at_top().find(|a| votes(a) == most)
}

/// What more than half of `configured` sentinels name alike, if anything.
fn majority(answers: &[Named], configured: usize) -> Option<&Named> {
    answers.iter().find(|n| answers.iter().filter(|a| a == n).count() * 2 > configured)
}

/// What to record instead of `recorded`, which a connection could not use, from the
/// sentinels' `answers`: nothing while any still names it at its epoch or a higher one;
/// else what a majority of them names, or the highest epoch naming another server.
fn instead(recorded: &Named, answers: &[Named], configured: usize) -> Option<Named> {
    if answers.iter().any(|a| a.addr == recorded.addr && a.epoch >= recorded.epoch) {
        return None;
    }
    let others: Vec<Named> = answers.iter().filter(|a| a.addr != recorded.addr).cloned().collect();
    majority(&others, configured).or_else(|| highest(&others)).cloned()
}

/// Whether a sentinel's answer at `offered` may replace the primary recorded at
/// `recorded`: only for a strictly higher epoch. A sentinel that has not heard of the
/// last failover yet (the news takes about two seconds to spread), or one cut off in a
/// minority, names the old primary at the old epoch; taking its answer would move every
/// connection back there. Sentinels whose epochs started again (set up afresh, or told to
/// monitor another server under the name with `SENTINEL REMOVE` and `MONITOR`) are
/// followed otherwise: by a majority of them ([`Watch::heard`]), or at once when the
/// recorded primary cannot be used ([`Watch::failed`]).
pub fn newer(recorded: u64, offered: u64) -> bool {
    offered > recorded
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The watches of the process, one per set of sentinels, each with its threads.
static WATCHES: Mutex<Vec<(Sentinels, Weak<Watch>)>> = Mutex::new(Vec::new());

/// The process's [`Watch`] of `sentinels`, with the threads that follow them started on
/// first use (`timeout`: to connect to a sentinel): one holds a subscription to
/// `+switch-master`, the other asks each sentinel for the primary and its epoch, every
/// second and at once when the first says so. They end once no connection holds the
/// watch any more.
pub fn watch(sentinels: &Sentinels, timeout: Duration) -> Arc<Watch> {
    let mut all = lock(&WATCHES);
    all.retain(|(_, w)| w.strong_count() > 0);
    if let Some(w) = all.iter().find(|(s, _)| s == sentinels).and_then(|(_, w)| w.upgrade()) {
        return w;
    }
    let w = Arc::new(Watch::default());
    let timeout = timeout.max(Duration::from_millis(100));
    // A round at once when asked (coalesced: one pending is enough).
    let (poke, poked) = mpsc::sync_channel::<()>(1);
    let (s, weak) = (sentinels.clone(), Arc::downgrade(&w));
    let asking = std::thread::Builder::new()
        .name("croupier-sentinel-ask".into())
        .spawn(move || ask_every_second(&s, &weak, timeout, &poked));
    if let Err(e) = asking {
        tracing::warn!(error = %e, "cannot ask the sentinels for the primary's epoch: a failover is followed on errors only");
    }
    let (s, weak) = (sentinels.clone(), Arc::downgrade(&w));
    let started =
        std::thread::Builder::new().name("croupier-sentinel".into()).spawn(move || follow(&s, &weak, timeout, &poke));
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot subscribe to +switch-master: a failover is followed as the sentinels answer");
    }
    all.push((sentinels.clone(), Arc::downgrade(&w)));
    w
}

/// Why a subscription ended.
enum End {
    /// No connection holds the watch any more.
    Gone,
    /// The subscription was lost (or never made).
    Lost(String),
}

/// Holds a subscription to `+switch-master` on one sentinel after another, until the
/// watch is dropped, and has the sentinels asked at once (`poke`) when one is made and
/// on every announcement. A lost subscription is made again on the next sentinel after a
/// pause (50 ms doubling to 1 s; afresh after one that held 10 s). Nothing else runs on
/// this thread: a sentinel that holds a connect or `AUTH` here only delays the
/// subscription, never the asking.
fn follow(sentinels: &Sentinels, watch: &Weak<Watch>, timeout: Duration, poke: &SyncSender<()>) {
    let mut backoff = MIN_BACKOFF;
    let mut next = 0usize;
    // Subscriptions lost in a row without one holding `HELD`, and whether that was said.
    let (mut failed, mut warned) = (0usize, false);
    loop {
        let Some(addr) = sentinels.addrs.get(next % sentinels.addrs.len().max(1)) else { return };
        let started = Instant::now();
        match listen(addr, &sentinels.master_name, sentinels.auth.as_ref(), watch, timeout, poke) {
            End::Gone => return,
            End::Lost(why) => {
                tracing::debug!(sentinel = %addr, reason = %why, "+switch-master subscription lost");
                failed = if started.elapsed() >= HELD { 0 } else { failed + 1 };
                // Every sentinel in turn (down, refusing `SUBSCRIBE` for want of `AUTH`, ...):
                // said once, until one holds again.
                if failed >= sentinels.addrs.len().max(1) && !warned {
                    warned = true;
                    tracing::warn!(
                        reason = %why,
                        "no sentinel keeps a +switch-master subscription: failovers are followed as \
                         the sentinels answer (every second) or on errors"
                    );
                }
            }
        }
        if started.elapsed() >= HELD {
            backoff = MIN_BACKOFF;
            warned = false;
        }
        next = next.wrapping_add(1);
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if watch.strong_count() == 0 {
                return;
            }
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(TICK));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects to `addr` within `timeout`, trying every address the name resolves to in turn
/// (a name may give an IPv6 address first to a sentinel that listens on IPv4 only).
fn connect(addr: &str, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
    let mut connected = Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address"));
    for sock in addr.to_socket_addrs()? {
        connected = std::net::TcpStream::connect_timeout(&sock, timeout);
        if connected.is_ok() {
            break;
        }
    }
    let stream = connected?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One subscription: subscribes, has the sentinels asked at once (a failover missed while
/// the previous subscription did not hear it is followed then), and again on every
/// `+switch-master` about our primary, until the connection fails or goes silent.
fn listen(
    addr: &str,
    name: &str,
    credentials: Option<&Credentials>,
    watch: &Weak<Watch>,
    timeout: Duration,
    poke: &SyncSender<()>,
) -> End {
    let lost = |what: &str, e: &dyn std::fmt::Display| End::Lost(format!("{what}: {e}"));
    let mut stream = match connect(addr, timeout) {
        Ok(s) => s,
        Err(e) => return lost("connect", &e),
    };
    if let Err(e) = stream.set_read_timeout(Some(TICK)).and_then(|()| stream.set_write_timeout(Some(timeout))) {
        return lost("socket", &e);
    }
    if let Err(e) = auth::authenticate_blocking(&mut stream, credentials, Role::Sentinel, addr, timeout) {
        return lost("AUTH", &e);
    }
    let mut out = Vec::with_capacity(64);
    resp::command(&mut out, &[b"SUBSCRIBE", SWITCH_MASTER.as_bytes()]);
    if let Err(e) = stream.write_all(&out) {
        return lost("write", &e);
    }
    let mut sub = Subscription { stream, buf: Vec::with_capacity(1024), heard: Instant::now(), pinged: Instant::now() };
    // The subscription's confirmation (a sentinel that refuses it, say for want of
    // `AUTH`, is left for the next), then the messages.
    match sub.next(watch) {
        Ok(Frame::Error(e)) => {
            auth::note(Role::Sentinel, addr, "SUBSCRIBE", &e);
            return End::Lost(format!("SUBSCRIBE refused: {e}"));
        }
        Ok(_) => {
            let _ = poke.try_send(());
        }
        Err(end) => return end,
    }
    loop {
        let frame = match sub.next(watch) {
            Ok(f) => f,
            Err(end) => return end,
        };
        if let Some(payload) = message_payload(&frame) {
            match switch_master(payload, name) {
                // The message carries no epoch: the sentinels are asked for it now (the
                // one that announced answers with the new one).
                Some(primary) => {
                    tracing::debug!(sentinel = %addr, %primary, "+switch-master: asking the sentinels for its epoch");
                    let _ = poke.try_send(());
                }
                None => tracing::debug!(
                    sentinel = %addr,
                    message = %String::from_utf8_lossy(payload),
                    "+switch-master about another primary, or malformed: ignored"
                ),
            }
        }
    }
}

/// Gives one round's answers to the watch and logs what it did (`false`: the watch is
/// gone).
fn record(watch: &Weak<Watch>, answers: Vec<Named>, configured: usize) -> bool {
    let Some(w) = watch.upgrade() else { return false };
    let heard: Vec<String> = answers.iter().map(|n| format!("{}@{}", n.addr, n.epoch)).collect();
    let offer = w.heard(answers, configured);
    let Some(now) = w.named() else { return true };
    let (primary, epoch) = (now.addr, now.epoch);
    match offer {
        Offer::Moved(old) => {
            tracing::info!(%old, new = %primary, epoch, "the sentinels name a new Redis primary");
        }
        Offer::Rebased(before) => tracing::warn!(
            recorded = %before.addr,
            recorded_epoch = before.epoch,
            primary = %primary,
            epoch,
            rounds = REBASE_ROUNDS,
            "most sentinels name the Redis primary at an older configuration epoch than the recorded one, \
             round after round (their epochs started again): following them"
        ),
        Offer::First => tracing::debug!(%primary, epoch, "Redis primary as the sentinels name it"),
        Offer::Newer => tracing::debug!(%primary, epoch, "the sentinels' epoch for the Redis primary"),
        Offer::Stale => {
            if heard.iter().any(|h| !h.starts_with(&format!("{primary}@"))) {
                tracing::debug!(
                    answers = ?heard,
                    recorded = %primary,
                    epoch,
                    "a sentinel names another primary at an epoch no higher than the recorded one: ignored"
                );
            }
        }
        Offer::Nothing => {}
    }
    true
}

/// Asks every sentinel for the primary and its epoch ([`question`]), each on a connection
/// of its own kept open: a round every [`ASK_EVERY`], and one at once when `poked` (a
/// subscription made, a `+switch-master`), until the watch is dropped.
fn ask_every_second(sentinels: &Sentinels, watch: &Weak<Watch>, timeout: Duration, poked: &Receiver<()>) {
    let mut askers = Askers::new(sentinels, timeout);
    let mut subscribed = true;
    loop {
        if !askers.round(watch) {
            return;
        }
        let due = Instant::now() + ASK_EVERY;
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if subscribed {
                match poked.recv_timeout(left) {
                    Ok(()) => break,
                    Err(RecvTimeoutError::Timeout) => break,
                    // The subscribing thread is gone (or never started): every second only.
                    Err(RecvTimeoutError::Disconnected) => subscribed = false,
                }
            } else {
                std::thread::sleep(left);
            }
        }
    }
}

/// The sentinels, each asked for the primary and its epoch ([`question`]) on a connection
/// of its own, kept open, by the thread that asks them.
struct Askers {
    peers: Vec<Peer>,
    question: Vec<u8>,
    /// What each connection sends `AUTH` with first.
    credentials: Option<Credentials>,
    /// To connect to a sentinel.
    timeout: Duration,
}

/// One sentinel as [`Askers`] asks it.
struct Peer {
    addr: String,
    /// Non-blocking, once connected.
    stream: Option<std::net::TcpStream>,
    /// A connection being made (connect, `AUTH`) on a thread of its own, so that a
    /// sentinel that holds it (its packets dropped, or frozen with a password to check)
    /// delays no other sentinel's answer.
    connecting: Option<Receiver<Result<std::net::TcpStream, String>>>,
    buf: Vec<u8>,
    /// When the question still unanswered was sent, and the first of its two answers if
    /// it came.
    owed: Option<(Instant, Option<Frame>)>,
    /// No connection is tried before this (after a failed one)...
    retry_at: Instant,
    /// ...and the pause after the next failure (from [`ASK_EVERY`], doubling).
    retry: Duration,
}

impl Askers {
    fn new(sentinels: &Sentinels, timeout: Duration) -> Askers {
        let now = Instant::now();
        let peers = sentinels
            .addrs
            .iter()
            .map(|addr| Peer {
                addr: addr.clone(),
                stream: None,
                connecting: None,
                buf: Vec::new(),
                owed: None,
                retry_at: now,
                retry: ASK_EVERY,
            })
            .collect();
        let mut q = Vec::with_capacity(128);
        question(&mut q, &sentinels.master_name);
        Askers { peers, question: q, credentials: sentinels.auth.clone(), timeout }
    }

    /// Asks every sentinel (one that still owes an answer is not asked again; one being
    /// connected to is asked once connected) and gives the watch the answers that come
    /// within [`ASK_WAIT`] (`false`: the watch is gone).
    fn round(&mut self, watch: &Weak<Watch>) -> bool {
        for peer in &mut self.peers {
            peer.ask(&self.question, self.credentials.as_ref(), self.timeout);
        }
        let deadline = Instant::now() + ASK_WAIT;
        let mut answers = Vec::with_capacity(self.peers.len());
        loop {
            let mut waiting = false;
            for peer in &mut self.peers {
                if peer.connected() {
                    peer.ask(&self.question, self.credentials.as_ref(), self.timeout);
                }
                if let Some(named) = peer.answer() {
                    answers.push(named);
                }
                waiting |= peer.owed.is_some() || peer.connecting.is_some();
            }
            if !waiting || Instant::now() >= deadline {
                return record(watch, answers, self.peers.len());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Peer {
    /// Whether a connection being made is ready now (`true`: it is, and no question was
    /// sent on it yet). A failed one is tried again after the pause.
    fn connected(&mut self) -> bool {
        let Some(rx) = &self.connecting else { return false };
        let made = match rx.try_recv() {
            Err(TryRecvError::Empty) => return false,
            Ok(made) => made,
            Err(TryRecvError::Disconnected) => Err("the connecting thread ended".to_string()),
        };
        self.connecting = None;
        match made {
            Ok(s) => {
                self.stream = Some(s);
                self.retry = ASK_EVERY;
                true
            }
            Err(e) => {
                tracing::debug!(sentinel = %self.addr, error = %e, "cannot connect to ask the sentinel");
                self.retry_at = Instant::now() + self.retry;
                self.retry = (self.retry * 2).min(MAX_ASK_BACKOFF);
                false
            }
        }
    }

    /// Sends the question unless an answer is still owed; starts connecting first if need
    /// be (asked once connected). A sentinel that owes one for [`SILENT_LIMIT`] (frozen, or
    /// gone without a word) is given up and connected to again.
    fn ask(&mut self, question: &[u8], credentials: Option<&Credentials>, timeout: Duration) {
        if let Some((asked, _)) = &self.owed {
            if asked.elapsed() < SILENT_LIMIT {
                return;
            }
            self.close("no answer");
        }
        if self.stream.is_none() {
            if self.connecting.is_none() && Instant::now() >= self.retry_at {
                self.start_connecting(credentials, timeout);
            }
            return;
        }
        let Some(stream) = self.stream.as_mut() else { return };
        // A few dozen bytes on a connection with nothing else unsent: written whole.
        match stream.write(question) {
            Ok(n) if n == question.len() => self.owed = Some((Instant::now(), None)),
            Ok(_) => self.close("write: partial"),
            Err(e) => self.close(&format!("write: {e}")),
        }
    }

    /// Connects and authenticates on a thread of its own (ended within about twice
    /// `timeout`), the result read by [`Peer::connected`].
    fn start_connecting(&mut self, credentials: Option<&Credentials>, timeout: Duration) {
        let (tx, rx) = mpsc::sync_channel(1);
        let (addr, credentials) = (self.addr.clone(), credentials.cloned());
        let spawned = std::thread::Builder::new().name("croupier-sentinel-connect".into()).spawn(move || {
            let made = connect(&addr, timeout).map_err(|e| e.to_string()).and_then(|mut s| {
                // `AUTH` blocking (its reads time out every tick), then non-blocking.
                s.set_read_timeout(Some(TICK))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| e.to_string())?;
                auth::authenticate_blocking(&mut s, credentials.as_ref(), Role::Sentinel, &addr, timeout)?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(s)
            });
            let _ = tx.send(made);
        });
        match spawned {
            Ok(_) => self.connecting = Some(rx),
            Err(e) => {
                tracing::debug!(sentinel = %self.addr, error = %e, "cannot start connecting to the sentinel");
                self.retry_at = Instant::now() + self.retry;
                self.retry = (self.retry * 2).min(MAX_ASK_BACKOFF);
            }
        }
    }

    /// Reads what came, without waiting; what the sentinel names once both answers are in.
    fn answer(&mut self) -> Option<Named> {
        let stream = self.stream.as_mut()?;
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    self.close("closed by the sentinel");
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(&format!("read: {e}"));
                    return None;
                }
            }
            if self.buf.len() > MAX_BUFFERED {
                self.close("reply too large");
                return None;
            }
        }
        loop {
            let (frame, used) = match resp::decode_reply(&self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    self.close(&format!("not RESP: {e}"));
                    return None;
                }
            };
            self.buf.drain(..used);
            match self.owed.take() {
                Some((asked, None)) => self.owed = Some((asked, Some(frame))),
                Some((_, Some(master))) => {
                    let n = named(&master, &frame);
                    match (&n, &master) {
                        // A name it does not monitor: logged, and shown by `/readyz` while
                        // the primary is not connected, as a refused password is.
                        (None, Frame::Error(e)) if e.contains("No such master") => auth::note_unnamed(&self.addr, e),
                        (None, _) => {
                            tracing::debug!(sentinel = %self.addr, "the sentinel does not name the primary with its epoch")
                        }
                        _ => {}
                    }
                    return n;
                }
                None => {
                    self.close("a reply to no question");
                    return None;
                }
            }
        }
    }

    fn close(&mut self, why: &str) {
        tracing::debug!(sentinel = %self.addr, reason = why, "connection to ask the sentinel closed");
        self.stream = None;
        self.buf.clear();
        self.owed = None;
    }
}

/// A sentinel connection in subscribed mode (blocking, on the subscribing thread).
struct Subscription {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    /// When the sentinel last sent anything.
    heard: Instant,
    /// When it was last pinged.
    pinged: Instant,
}

impl Subscription {
    /// The next frame; a quiet sentinel is pinged every [`PING_EVERY`] and given up after
    /// [`SILENT_LIMIT`] without a byte.
    fn next(&mut self, watch: &Weak<Watch>) -> Result<Frame, End> {
        let mut chunk = [0u8; 4096];
        loop {
            match resp::decode_reply(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) if self.buf.len() > MAX_BUFFERED => return Err(End::Lost("reply too large".into())),
                Ok(None) => {}
                Err(e) => return Err(End::Lost(format!("not RESP: {e}"))),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(End::Lost("closed by the sentinel".into())),
                Ok(n) => {
                    self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    self.heard = Instant::now();
                    continue;
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(End::Lost(format!("read: {e}"))),
            }
            if watch.strong_count() == 0 {
                return Err(End::Gone);
            }
            if self.heard.elapsed() >= SILENT_LIMIT {
                return Err(End::Lost("silent".into()));
            }
            if self.heard.elapsed() >= PING_EVERY && self.pinged.elapsed() >= PING_EVERY {
                self.pinged = Instant::now();
                let mut ping = Vec::with_capacity(16);
                resp::command(&mut ping, &[b"PING"]);
                if let Err(e) = self.stream.write_all(&ping) {
                    return Err(End::Lost(format!("write: {e}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_gives_the_new_primary_of_our_name() {
        let m = b"croupier 127.0.0.1 6379 127.0.0.1 6380";
        assert_eq!(switch_master(m, "croupier"), Some("127.0.0.1:6380".into()));
        assert_eq!(switch_master(b"croupier ::1 6379 ::1 6380", "croupier"), Some("[::1]:6380".into()));
        assert_eq!(switch_master(b"other 127.0.0.1 6379 127.0.0.1 6380", "croupier"), None);
    }

    #[test]
    fn malformed_switch_master_is_ignored() {
        for m in [
            &b""[..],
            b"croupier",
            b"croupier 127.0.0.1 6379 127.0.0.1",
            b"croupier 127.0.0.1 6379 127.0.0.1 6380 extra",
            b"croupier 127.0.0.1 6379 127.0.0.1 notaport",
            b"croupier 127.0.0.1 6379 127.0.0.1 70000",
            b"croupier 127.0.0.1 6379 127.0.0.1 0",
            b"croupier 127.0.0.1 6379 127.0.0.1 -1",
            b"croupier \xff\xfe 6379 \xff 6380",
        ] {
            assert_eq!(switch_master(m, "croupier"), None, "{:?}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn only_switch_master_messages_are_read() {
        let bulk = |s: &str| Frame::BulkString(s.as_bytes().to_vec());
        let msg = Frame::Array(vec![bulk("message"), bulk(SWITCH_MASTER), bulk("croupier a 1 b 2")]);
        assert_eq!(message_payload(&msg), Some(&b"croupier a 1 b 2"[..]));
        let confirm = Frame::Array(vec![bulk("subscribe"), bulk(SWITCH_MASTER), Frame::Integer(1)]);
        assert_eq!(message_payload(&confirm), None);
        let other = Frame::Array(vec![bulk("message"), bulk("+sdown"), bulk("croupier a 1 b 2")]);
        assert_eq!(message_payload(&other), None);
        assert_eq!(message_payload(&Frame::Array(vec![bulk("pong"), bulk("")])), None);
        assert_eq!(message_payload(&Frame::Integer(3)), None);
    }

    #[test]
    fn primary_addr_reads_the_sentinels_reply() {
        let bulk = |s: &str| Frame::BulkString(s.as_bytes().to_vec());
        assert_eq!(primary_addr(&Frame::Array(vec![bulk("10.0.0.1"), bulk("6379")])), Some("10.0.0.1:6379".into()));
        assert_eq!(primary_addr(&Frame::Null), None);
        assert_eq!(primary_addr(&Frame::Array(vec![bulk("10.0.0.1"), bulk("x")])), None);
        assert_eq!(primary_addr(&Frame::Array(vec![bulk(""), bulk("6379")])), None);
    }

    fn n(addr: &str, epoch: u64) -> Named {
        Named { addr: addr.into(), epoch }
    }

    #[test]
    fn the_watch_counts_changes_of_primary_only() {
        let w = Watch::default();
        assert_eq!((w.changes(), w.primary()), (0, None));
        assert_eq!(w.offer(n("a:1", 0)), Offer::First);
        assert_eq!(w.offer(n("a:1", 1)), Offer::Newer);
        assert_eq!(w.offer(n("b:2", 2)), Offer::Moved("a:1".into()));
        assert_eq!((w.changes(), w.primary()), (2, Some("b:2".into())));
        assert_eq!(w.named(), Some(n("b:2", 2)));
    }

    #[test]
    fn the_first_primary_is_taken_at_any_epoch() {
        let w = Watch::default();
        assert_eq!(w.offer(n("a:1", 7)), Offer::First);
        assert_eq!((w.changes(), w.named()), (1, Some(n("a:1", 7))));
    }

    #[test]
    fn a_lower_or_equal_epoch_never_moves_the_primary() {
        let w = Watch::default();
        assert_eq!(w.offer(n("new:2", 5)), Offer::First);
        // A sentinel that has not heard of the failover names the old primary at its epoch.
        assert_eq!(w.offer(n("old:1", 4)), Offer::Stale);
        assert_eq!(w.offer(n("old:1", 0)), Offer::Stale);
        // Another primary at the same epoch (a sentinel told to monitor another server).
        assert_eq!(w.offer(n("other:3", 5)), Offer::Stale);
        assert_eq!(w.offer(n("new:2", 5)), Offer::Stale);
        assert_eq!((w.changes(), w.named()), (1, Some(n("new:2", 5))));
        // A higher epoch, from any sentinel, moves it.
        assert_eq!(w.offer(n("old:1", 6)), Offer::Moved("new:2".into()));
        assert_eq!((w.changes(), w.named()), (2, Some(n("old:1", 6))));
    }

    #[test]
    fn a_reconnect_never_takes_a_primary_at_an_older_epoch() {
        let rec = Some(n("new:2", 5));
        assert_eq!(to_connect("old:1".into(), Some(4), rec.clone()), "new:2");
        assert_eq!(to_connect("old:1".into(), Some(0), rec.clone()), "new:2");
        // The same epoch: the sentinel's answer (told to monitor another server).
        assert_eq!(to_connect("other:3".into(), Some(5), rec.clone()), "other:3");
        assert_eq!(to_connect("next:4".into(), Some(6), rec.clone()), "next:4");
        // No epoch said, or none recorded: the sentinel's answer, as before.
        assert_eq!(to_connect("old:1".into(), None, rec), "old:1");
        assert_eq!(to_connect("old:1".into(), Some(0), None), "old:1");
    }

    #[test]
    fn a_round_offers_only_its_highest_epoch() {
        let w = Watch::default();
        // A stale sentinel answering before a fresh one at start: only the newer is taken.
        assert_eq!(w.heard(vec![n("a:1", 4), n("b:2", 5)], 3), Offer::First);
        assert_eq!((w.changes(), w.named()), (1, Some(n("b:2", 5))));
        assert_eq!(w.heard(vec![n("a:1", 4), n("c:3", 6), n("c:3", 6)], 3), Offer::Moved("b:2".into()));
        assert_eq!(w.heard(vec![], 3), Offer::Nothing);
        assert_eq!((w.changes(), w.named()), (2, Some(n("c:3", 6))));
    }

    #[test]
    fn a_majority_at_an_older_epoch_is_taken_after_rounds_in_a_row() {
        let w = Watch::default();
        assert_eq!(w.heard(vec![n("r:1", 3)], 3), Offer::First);
        // Every sentinel set up afresh names another server at epoch 0.
        for _ in 1..REBASE_ROUNDS {
            assert_eq!(w.heard(vec![n("s:2", 0), n("s:2", 0), n("s:2", 0)], 3), Offer::Stale);
        }
        assert_eq!(w.named(), Some(n("r:1", 3)));
        assert_eq!(w.heard(vec![n("s:2", 0), n("s:2", 0)], 3), Offer::Rebased(n("r:1", 3)));
        assert_eq!((w.changes(), w.named()), (2, Some(n("s:2", 0))));
        // Then a failover at their epoch 1 is followed as any.
        assert_eq!(w.heard(vec![n("t:3", 1)], 3), Offer::Moved("s:2".into()));
    }

    #[test]
    fn the_same_primary_at_an_older_epoch_lowers_the_epoch_only() {
        let w = Watch::default();
        assert_eq!(w.heard(vec![n("r:1", 3)], 3), Offer::First);
        for _ in 1..REBASE_ROUNDS {
            assert_eq!(w.heard(vec![n("r:1", 0), n("r:1", 0)], 3), Offer::Stale);
        }
        assert_eq!(w.heard(vec![n("r:1", 0), n("r:1", 0)], 3), Offer::Rebased(n("r:1", 3)));
        assert_eq!((w.changes(), w.named()), (1, Some(n("r:1", 0))));
    }

    #[test]
    fn a_minority_or_an_interrupted_majority_never_takes_an_older_epoch() {
        let w = Watch::default();
        assert_eq!(w.heard(vec![n("new:2", 5)], 3), Offer::First);
        // One stale sentinel of three, however long.
        for _ in 0..3 * REBASE_ROUNDS {
            assert_eq!(w.heard(vec![n("old:1", 4)], 3), Offer::Stale);
            assert_eq!(w.heard(vec![n("old:1", 0), n("new:2", 5)], 3), Offer::Stale);
        }
        // Two of five.
        for _ in 0..3 * REBASE_ROUNDS {
            assert_eq!(w.heard(vec![n("old:1", 0), n("old:1", 0)], 5), Offer::Stale);
        }
        // A majority, but a sentinel still names the recorded configuration.
        for _ in 0..3 * REBASE_ROUNDS {
            assert_eq!(w.heard(vec![n("old:1", 4), n("old:1", 4), n("new:2", 5)], 3), Offer::Stale);
        }
        // A majority, interrupted before enough rounds in a row.
        for _ in 0..3 {
            for _ in 1..REBASE_ROUNDS {
                assert_eq!(w.heard(vec![n("old:1", 0), n("old:1", 0)], 3), Offer::Stale);
            }
            assert_eq!(w.heard(vec![n("old:1", 0), n("new:2", 5)], 3), Offer::Stale);
        }
        assert_eq!((w.changes(), w.named()), (1, Some(n("new:2", 5))));
    }

    #[test]
    fn a_recorded_primary_that_fails_gives_way_to_the_sentinels_answer() {
        let w = Watch::default();
        assert_eq!(w.heard(vec![n("r:1", 3)], 3), Offer::First);
        // Another server's failure is not the recorded one's.
        assert_eq!(w.failed("x:9", &n("s:2", 0)), None);
        // The last round: every sentinel names s at epoch 0.
        assert_eq!(w.heard(vec![n("s:2", 0), n("s:2", 0), n("s:2", 0)], 3), Offer::Stale);
        assert_eq!(w.failed("r:1", &n("s:2", 0)), Some((n("r:1", 3), n("s:2", 0))));
        assert_eq!((w.changes(), w.named()), (2, Some(n("s:2", 0))));
        // Told again by another connection: already done.
        assert_eq!(w.failed("r:1", &n("s:2", 0)), None);
    }

    #[test]
    fn a_recorded_primary_that_fails_stays_while_a_sentinel_names_it_at_its_epoch() {
        let w = Watch::default();
        assert_eq!(w.heard(vec![n("r:1", 3)], 3), Offer::First);
        // A stale sentinel first in order, the others still name r: r merely blinked.
        assert_eq!(w.heard(vec![n("old:0", 0), n("r:1", 3), n("r:1", 3)], 3), Offer::Stale);
        assert_eq!(w.failed("r:1", &n("old:0", 0)), None);
        assert_eq!((w.changes(), w.named()), (1, Some(n("r:1", 3))));
    }

    #[test]
    fn what_replaces_a_failed_recorded_primary() {
        let r = n("r:1", 3);
        // A majority, else the highest epoch naming another server.
        assert_eq!(instead(&r, &[n("s:2", 0), n("s:2", 0), n("b:3", 1)], 3), Some(n("s:2", 0)));
        assert_eq!(instead(&r, &[n("s:2", 0), n("b:3", 1)], 3), Some(n("b:3", 1)));
        assert_eq!(instead(&r, &[n("r:1", 0), n("b:3", 1)], 3), Some(n("b:3", 1)));
        assert_eq!(instead(&r, &[n("r:1", 3), n("b:3", 1)], 3), None);
        assert_eq!(instead(&r, &[n("r:1", 0)], 3), None);
        assert_eq!(instead(&r, &[], 3), None);
    }

    #[test]
    fn only_a_strictly_higher_epoch_is_newer() {
        assert!(newer(0, 1));
        assert!(newer(4, u64::MAX));
        assert!(!newer(3, 3));
        assert!(!newer(3, 2));
        assert!(!newer(u64::MAX, 0));
    }

    /// A `SENTINEL MASTER` reply as redis-server 7 sends it over RESP2 (abridged values).
    fn sentinel_master(epoch: &str) -> Frame {
        let bulk = |s: &str| Frame::BulkString(s.as_bytes().to_vec());
        let fields = [
            ("name", "croupier"),
            ("ip", "127.0.0.1"),
            ("port", "6379"),
            ("runid", "6a1c7b1e0e8b"),
            ("flags", "master"),
            ("link-pending-commands", "0"),
            ("role-reported", "master"),
            ("config-epoch", epoch),
            ("num-slaves", "1"),
            ("num-other-sentinels", "2"),
            ("quorum", "2"),
            ("failover-timeout", "3000"),
            ("parallel-syncs", "1"),
        ];
        Frame::Array(fields.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())
    }

    #[test]
    fn config_epoch_is_read_from_the_sentinel_master_reply() {
        assert_eq!(config_epoch(&sentinel_master("0")), Some(0));
        assert_eq!(config_epoch(&sentinel_master("12")), Some(12));
        assert_eq!(config_epoch(&sentinel_master("18446744073709551615")), Some(u64::MAX));
        let bulk = |s: &str| Frame::BulkString(s.as_bytes().to_vec());
        // As an integer, should a server send one.
        assert_eq!(config_epoch(&Frame::Array(vec![bulk("config-epoch"), Frame::Integer(3)])), Some(3));
    }

    #[test]
    fn a_malformed_sentinel_master_reply_has_no_epoch() {
        let bulk = |s: &str| Frame::BulkString(s.as_bytes().to_vec());
        for epoch in ["", "-1", "x", "1.5", " 2", "18446744073709551616"] {
            assert_eq!(config_epoch(&sentinel_master(epoch)), None, "{epoch:?}");
        }
        for f in [
            Frame::Error("ERR No such master with that name".into()),
            Frame::Null,
            Frame::Integer(3),
            Frame::Array(vec![]),
            // Not field/value pairs.
            Frame::Array(vec![bulk("config-epoch"), bulk("3"), bulk("num-slaves")]),
            Frame::Array(vec![bulk("num-slaves"), bulk("config-epoch"), bulk("3")]),
            Frame::Array(vec![bulk("config-epoch"), Frame::Integer(-1)]),
            Frame::Array(vec![bulk("config-epoch"), Frame::Null]),
            Frame::Array(vec![bulk("config-epoch"), Frame::Array(vec![bulk("3")])]),
            Frame::Array(vec![bulk("config-epoch"), Frame::BulkString(vec![0xff, b'1'])]),
        ] {
            assert_eq!(config_epoch(&f), None, "{f:?}");
        }
    }

    #[test]
    fn the_epoch_comes_with_the_address_get_master_addr_by_name_gives() {
        let bulk = |s: &str| Frame::BulkString(s.as_bytes().to_vec());
        // `SENTINEL MASTER` may still give the old address with the new epoch: not used.
        let addr = Frame::Array(vec![bulk("127.0.0.1"), bulk("6380")]);
        assert_eq!(named(&sentinel_master("4"), &addr), Some(n("127.0.0.1:6380", 4)));
        assert_eq!(named(&sentinel_master("x"), &addr), None);
        assert_eq!(named(&sentinel_master("4"), &Frame::Null), None);
        assert_eq!(named(&Frame::Error("NOAUTH Authentication required.".into()), &addr), None);
    }

    #[test]
    fn one_watch_per_set_of_sentinels_while_held() {
        // Sentinels that do not exist: the thread retries with back-off and ends with the watch.
        let s = Sentinels { addrs: vec!["127.0.0.1:1".into()], master_name: "m".into(), auth: None };
        let other = Sentinels { addrs: vec!["127.0.0.1:1".into()], master_name: "n".into(), auth: None };
        let a = watch(&s, Duration::from_millis(100));
        let b = watch(&s, Duration::from_millis(100));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &watch(&other, Duration::from_millis(100))));
    }
}
