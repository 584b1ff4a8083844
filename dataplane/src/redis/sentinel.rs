//! Finding the primary through Redis Sentinel.
//!
//! With `redis.sentinels` set, a connection asks the sentinels, in the configured order,
//! `SENTINEL get-master-addr-by-name <redis.master_name>` before every (re)connect, and
//! takes the first answer. After connecting it checks with `ROLE` that the server is a
//! primary (a sentinel may still name a demoted one for a moment after a failover), and a
//! connection that gets a `READONLY` error (its server was demoted while it stayed
//! connected) or a `NOREPLICAS` one (an old primary cut off from its replicas, still a
//! primary) is closed and made again, asking the sentinels again. So a failover is
//! followed on the next error, not announced: a shard does not subscribe to
//! `+switch-master` (docs/redis-topologies.md says why).

use std::time::Duration;

use croupier_protocol::resp::{self, Frame};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::connection::{read_frame, RedisError};

/// Where to find the primary: sentinels and the primary's name there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of each sentinel, asked in this order.
    pub addrs: Vec<String>,
    /// The primary's name (`sentinel monitor <name> ...`).
    pub master_name: String,
}

impl Sentinels {
    /// The primary's `host:port` as the first sentinel that answers names it, or `None`
    /// when none does (within `timeout` each, connect and reply).
    pub async fn primary(&self, timeout: Duration) -> Option<String> {
        for addr in &self.addrs {
            if let Ok(Some(primary)) = monoio::time::timeout(timeout, ask(addr, &self.master_name)).await {
                return Some(primary);
            }
        }
        None
    }
}

async fn ask(sentinel: &str, name: &str) -> Option<String> {
    let mut stream = TcpStream::connect(sentinel).await.ok()?;
    let mut cmd = Vec::with_capacity(64);
    resp::command(&mut cmd, &[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()]);
    let (res, _) = stream.write_all(cmd).await;
    res.ok()?;
    let mut rbuf = Vec::with_capacity(256);
    let Frame::Array(parts) = read_frame(&mut stream, &mut rbuf).await.ok()? else { return None };
    let [Frame::BulkString(host), Frame::BulkString(port)] = parts.as_slice() else { return None };
    let (host, port) = (std::str::from_utf8(host).ok()?, std::str::from_utf8(port).ok()?.parse::<u16>().ok()?);
    // An IPv6 address is written in brackets to be joined with its port.
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
