//! The partition counts ingest has written with (`croupier_protocol::cluster::LAYOUTS`),
//! as workers and the control port read them: the counts besides the configured one, and
//! whether a partition of one holds entries.

use croupier_control::config::MAX_PARTITIONS;
use croupier_protocol::cluster::{self, Partitions};
use croupier_protocol::resp::{self, Frame};
use croupier_protocol::stream::StreamKind;

use super::connection::RedisClient;

/// The partition counts ingest has written with besides `configured`: a count the
/// configuration could not hold is passed over (1 too on a Redis Cluster, `cluster`: its
/// plain keys span slots). None when Redis refuses (an ACL without `ZRANGEBYSCORE` on
/// `croupier:*`, logged); `None` when it cannot be reached.
pub async fn recorded(redis: &RedisClient, configured: u16, cluster: bool) -> Option<Vec<u16>> {
    if !redis.is_up() {
        return None;
    }
    let mut cmd = Vec::with_capacity(64);
    cluster::read_layouts(&mut cmd);
    let lowest = if cluster { 2 } else { 1 };
    match redis.call(cmd).await {
        Ok(Frame::Error(e)) => {
            if !super::auth::recently_logged("partitions not read".to_owned()) {
                tracing::warn!(
                    key = cluster::LAYOUTS,
                    error = %e,
                    "the partition counts ingest wrote with could not be read: only streams.partitions' \
                     streams are read (logged at most every 10 s)"
                );
            }
            Some(Vec::new())
        }
        Ok(reply) => Some(
            cluster::layouts(&reply)
                .into_iter()
                .filter(|n| *n != configured && (lowest..=MAX_PARTITIONS).contains(n))
                .collect(),
        ),
        Err(_) => None,
    }
}

/// Whether any of partition `p`'s three streams holds entries (`XLEN`: one request may
/// have gone to its payments or custom stream only). An unreachable Redis: no (looked at
/// again later); an error reply, a key of another type among them: no, logged.
pub async fn holds_entries(redis: &RedisClient, parts: &Partitions, p: usize) -> bool {
    for kind in StreamKind::ALL {
        let key = parts.stream(p, kind);
        let mut cmd = Vec::with_capacity(key.len() + 24);
        resp::command(&mut cmd, &[b"XLEN", key.as_bytes()]);
        match redis.call(cmd).await {
            Ok(Frame::Integer(n)) if n > 0 => return true,
            Ok(Frame::Error(e)) if !super::auth::recently_logged("partitions not looked at".to_owned()) => {
                tracing::warn!(
                    key,
                    error = %e,
                    "a stream of another partition count could not be looked at: not read (logged at most every 10 s)"
                );
            }
            _ => {}
        }
    }
    false
}
