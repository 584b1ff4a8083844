//! Finding the primary through Redis Sentinel, and following its failovers.
//!
//! With `redis.sentinels` set, a connection asks the sentinels, in the configured order,
//! `SENTINEL get-master-addr-by-name <redis.master_name>` before every (re)connect, and
//! takes the first answer. After connecting it checks with `ROLE` that the server is a
//! primary (a sentinel may still name a demoted one for a moment after a failover).
//!
//! A failover is followed as the sentinels announce it: one thread per process
//! ([`watch`]) holds a subscription to `+switch-master` on one sentinel (the next one, with
//! back-off, when it is lost) and records the announced primary in a [`Watch`]. Every
//! connection of the process reads the watch's change count (one atomic load) before each
//! round it sends, and when the primary changed moves there before sending: what it had
//! queued goes to the new primary, nothing is refused. A connection that gets a
//! `READONLY` error (its server was demoted while it stayed connected) or a `NOREPLICAS`
//! one (an old primary cut off from its replicas, still a primary) is closed and made
//! again, asking the sentinels again: that still follows a failover whose announcement
//! was missed (docs/redis-topologies.md).

use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The primary's `host:port` as the first sentinel that answers names it, or `None`
    /// when none does (within `timeout` each, connect and reply).
    pub async fn primary(&self, timeout: Duration) -> Option<String> {
        for addr in &self.addrs {
            if let Ok(Some(primary)) =
                monoio::time::timeout(timeout, ask(addr, &self.master_name, self.auth.as_ref())).await
            {
                return Some(primary);
            }
        }
        None
    }
}

async fn ask(sentinel: &str, name: &str, credentials: Option<&Credentials>) -> Option<String> {
    let mut stream = TcpStream::connect(sentinel).await.ok()?;
    auth::authenticate(&mut stream, credentials, Role::Sentinel, sentinel).await.ok()?;
    let mut cmd = Vec::with_capacity(64);
    resp::command(&mut cmd, &[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()]);
    let (res, _) = stream.write_all(cmd).await;
    res.ok()?;
    let mut rbuf = Vec::with_capacity(256);
    primary_addr(&read_frame(&mut stream, &mut rbuf).await.ok()?)
}

/// The `host:port` of a `SENTINEL get-master-addr-by-name` reply (`None`: the sentinel
/// does not know the name, or the reply is not an address).
fn primary_addr(frame: &Frame) -> Option<String> {
    let Frame::Array(parts) = frame else { return None };
    let [Frame::BulkString(host), Frame::BulkString(port)] = parts.as_slice() else { return None };
    host_port(std::str::from_utf8(host).ok()?, std::str::from_utf8(port).ok()?)
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

/// Whether the server behind `stream` is a primary (`ROLE` answers `master`).
pub async fn is_primary(stream: &mut TcpStream) -> Result<bool, RedisError> {
    let mut cmd = Vec::with_capacity(16);
    resp::command(&mut cmd, &[b"ROLE"]);
    let (res, _) = stream.write_all(cmd).await;
    res.map_err(|_| RedisError::Unavailable)?;
    let mut rbuf = Vec::with_capacity(256);
    Ok(matches!(read_frame(stream, &mut rbuf).await?, Frame::Array(p)
        if matches!(p.first(), Some(Frame::BulkString(r) | Frame::SimpleString(r)) if r == b"master")))
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

/// The primary as the sentinels last announced it, shared by every connection of the
/// process that finds the primary through the same sentinels. Written by the thread that
/// holds the subscription; a connection reads [`Watch::changes`] (one atomic load) before
/// each round and the address only when the count moved.
#[derive(Debug, Default)]
pub struct Watch {
    changes: AtomicU64,
    primary: Mutex<Option<String>>,
}

impl Watch {
    /// How many times the announced primary changed.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The announced primary's `host:port`, if any was heard of yet.
    pub fn primary(&self) -> Option<String> {
        lock(&self.primary).clone()
    }

    /// Records `addr` as the primary; `true` (and the count moves) when it is another
    /// than the one recorded.
    pub fn set(&self, addr: String) -> bool {
        let mut p = lock(&self.primary);
        if p.as_deref() == Some(addr.as_str()) {
            return false;
        }
        *p = Some(addr);
        self.changes.fetch_add(1, Ordering::Release);
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The watches of the process, one per set of sentinels, each with its thread.
static WATCHES: Mutex<Vec<(Sentinels, Weak<Watch>)>> = Mutex::new(Vec::new());

/// The process's [`Watch`] of `sentinels`, with the thread that subscribes to
/// `+switch-master` started on first use (`timeout`: to connect to a sentinel). The
/// thread ends once no connection holds the watch any more.
pub fn watch(sentinels: &Sentinels, timeout: Duration) -> Arc<Watch> {
    let mut all = lock(&WATCHES);
    all.retain(|(_, w)| w.strong_count() > 0);
    if let Some(w) = all.iter().find(|(s, _)| s == sentinels).and_then(|(_, w)| w.upgrade()) {
        return w;
    }
    let w = Arc::new(Watch::default());
    let (s, weak) = (sentinels.clone(), Arc::downgrade(&w));
    let started = std::thread::Builder::new()
        .name("croupier-sentinel".into())
        .spawn(move || follow(&s, &weak, timeout.max(Duration::from_millis(100))));
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot subscribe to +switch-master: a failover is followed on errors only");
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
/// watch is dropped. A lost subscription is made again on the next sentinel after a
/// pause (50 ms doubling to 1 s; afresh after one that held 10 s).
fn follow(sentinels: &Sentinels, watch: &Weak<Watch>, timeout: Duration) {
    let mut backoff = MIN_BACKOFF;
    let mut next = 0usize;
    // Subscriptions lost in a row without one holding `HELD`, and whether that was said.
    let (mut failed, mut warned) = (0usize, false);
    loop {
        let Some(addr) = sentinels.addrs.get(next % sentinels.addrs.len().max(1)) else { return };
        let started = Instant::now();
        match listen(addr, &sentinels.master_name, sentinels.auth.as_ref(), watch, timeout) {
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
                        "no sentinel keeps a +switch-master subscription: failovers are followed on errors only"
                    );
                }
            }
        }
        if started.elapsed() >= HELD {
            backoff = MIN_BACKOFF;
            warned = false;
        }
        next = next.wrapping_add(1);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if watch.strong_count() == 0 {
            return;
        }
    }
}

/// One subscription: asks the sentinel for the primary (recorded when none was yet),
/// subscribes, and records every
/// `+switch-master` about our primary until the connection fails or goes silent.
fn listen(addr: &str, name: &str, credentials: Option<&Credentials>, watch: &Weak<Watch>, timeout: Duration) -> End {
    let lost = |what: &str, e: &dyn std::fmt::Display| End::Lost(format!("{what}: {e}"));
    let socks: Vec<std::net::SocketAddr> = match addr.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return lost("resolve", &e),
    };
    // Every address the name resolves to, in turn (a name may give an IPv6 address first
    // to a sentinel that listens on IPv4 only).
    let mut connected = Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address"));
    for sock in &socks {
        connected = std::net::TcpStream::connect_timeout(sock, timeout);
        if connected.is_ok() {
            break;
        }
    }
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => return lost("connect", &e),
    };
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_read_timeout(Some(PING_EVERY)).and_then(|()| stream.set_write_timeout(Some(timeout))) {
        return lost("socket", &e);
    }
    if let Err(e) = auth::authenticate_blocking(&mut stream, credentials, Role::Sentinel, addr, timeout) {
        return lost("AUTH", &e);
    }
    let mut out = Vec::with_capacity(128);
    resp::command(&mut out, &[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()]);
    resp::command(&mut out, &[b"SUBSCRIBE", SWITCH_MASTER.as_bytes()]);
    if let Err(e) = stream.write_all(&out) {
        return lost("write", &e);
    }
    let mut sub = Subscription { stream, buf: Vec::with_capacity(1024), heard: Instant::now(), pinged: Instant::now() };
    // The primary now: recorded only when none was heard of yet. A sentinel that has not
    // yet learnt of a failover another announced (its peers' news takes about two
    // seconds to reach it), or one cut off in a minority, still names the old primary;
    // taking its answer over an announcement would move every connection back there.
    // Only `+switch-master` (sent for a newer configuration) moves the recorded primary;
    // an announcement missed while no subscription held is followed on the next error.
    match sub.next(watch) {
        Ok(f) => {
            let Some(w) = watch.upgrade() else { return End::Gone };
            if let Some(primary) = primary_addr(&f).filter(|_| w.primary().is_none()) {
                if !record(watch, primary, addr) {
                    return End::Gone;
                }
            }
        }
        Err(end) => return end,
    }
    // The subscription's confirmation (a sentinel that refuses it, say for want of
    // `AUTH`, is left for the next), then the messages.
    match sub.next(watch) {
        Ok(Frame::Error(e)) => return End::Lost(format!("SUBSCRIBE refused: {e}")),
        Ok(_) => {}
        Err(end) => return end,
    }
    loop {
        let frame = match sub.next(watch) {
            Ok(f) => f,
            Err(end) => return end,
        };
        if let Some(payload) = message_payload(&frame) {
            match switch_master(payload, name) {
                Some(primary) => {
                    if !record(watch, primary, addr) {
                        return End::Gone;
                    }
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

/// Records `primary` in the watch (`false`: the watch is gone).
fn record(watch: &Weak<Watch>, primary: String, sentinel: &str) -> bool {
    let Some(w) = watch.upgrade() else { return false };
    let before = w.primary();
    if w.set(primary.clone()) {
        match before {
            Some(old) => tracing::info!(sentinel, %old, new = %primary, "the sentinels announce a new Redis primary"),
            None => tracing::debug!(sentinel, %primary, "Redis primary as the sentinels name it"),
        }
    }
    true
}

/// A sentinel connection in subscribed mode (blocking, on the watch's thread).
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

    #[test]
    fn the_watch_counts_changes_of_primary_only() {
        let w = Watch::default();
        assert_eq!((w.changes(), w.primary()), (0, None));
        assert!(w.set("a:1".into()));
        assert!(!w.set("a:1".into()));
        assert!(w.set("b:2".into()));
        assert_eq!((w.changes(), w.primary()), (2, Some("b:2".into())));
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
