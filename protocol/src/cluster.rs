//! Redis Cluster, sans I/O: which slot a key is in (the key-slot function of
//! `redis-protocol`), the slot map read from `CLUSTER SLOTS`, `MOVED`/`ASK` redirections,
//! and how streams are split into partitions whose keys share a slot with a request's
//! nonce.
//!
//! A partitioned stream is `<stream>:{<tag>}` (`analytics:events:{p0.5}`), the nonce of a
//! request appended to partition `p` is `<nonce key>:{<tag>}` and the mean entry size of
//! its streams is kept in `croupier:entry-events:{<tag>}`: every key of the ingest script
//! hashes on the same tag, so the script runs on one node, atomically, as it does on a
//! single Redis. One partition keeps Croupier's key names, without a tag. Partition `p`
//! of `n` has the first tag `p.i` (i = 0, 1, ...) whose slot is in the `p`-th of `n` equal
//! ranges of the 16384 slots, so that `n` partitions are spread evenly over primaries that
//! share the slots evenly (what `redis-cli --cluster create` does).

use redis_protocol::redis_keyslot;

use crate::resp::Frame;
use crate::stream::{StreamKind, ENTRY_EVENTS};

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of `key` (hash tags honoured).
pub fn key_slot(key: &[u8]) -> u16 {
    redis_keyslot(key)
}

/// The hash tag of partition `p` of `n` (`None` for a single partition: plain keys, and
/// for `p` not below `n`). `n` is at most [`SLOTS`].
pub fn partition_tag(p: u16, n: u16) -> Option<String> {
    if n <= 1 || p >= n || n > SLOTS {
        return None;
    }
    let (lo, hi) = (range_start(p, n), range_start(p + 1, n));
    // One slot in `n` ranges of at least one slot each: found within a few thousand tries.
    (0u32..).map(|i| format!("{p}.{i}")).find(|t| (lo..hi).contains(&key_slot(t.as_bytes())))
}

fn range_start(p: u16, n: u16) -> u16 {
    (u32::from(p.min(n)) * u32::from(SLOTS) / u32::from(n.max(1))) as u16
}

/// `key` in partition `tag` (`key` itself without one).
pub fn tagged(key: &str, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{key}:{{{t}}}"),
        None => key.to_owned(),
    }
}

/// The stream key of `kind` in partition `tag`.
pub fn stream_key(kind: StreamKind, tag: Option<&str>) -> String {
    tagged(kind.key(), tag)
}

/// The mean-entry-size hash of partition `tag`.
pub fn entry_events_key(tag: Option<&str>) -> String {
    tagged(ENTRY_EVENTS, tag)
}

/// The partition a request goes to, from its nonce key: the same request sent again
/// goes to the same partition, where its nonce is.
pub fn partition_of(nonce_key: &str, n: u16) -> u16 {
    if n <= 1 {
        0
    } else {
        key_slot(nonce_key.as_bytes()) % n
    }
}

/// A redirection in an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED <slot> <addr>`: the slot lives on `addr` now; refresh the slot map.
    Moved {
        /// The slot.
        slot: u16,
        /// `host:port` of its node.
        addr: String,
    },
    /// `ASK <slot> <addr>`: this key is being migrated; send `ASKING` then the command to
    /// `addr`, once, without changing the slot map.
    Ask {
        /// The slot.
        slot: u16,
        /// `host:port` of the importing node.
        addr: String,
    },
}

/// The redirection an error reply carries, if any.
pub fn redirect(frame: &Frame) -> Option<Redirect> {
    let Frame::Error(e) = frame else { return None };
    let mut parts = e.split(' ');
    let (kind, slot, addr) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let slot = slot.parse::<u16>().ok().filter(|s| *s < SLOTS)?;
    let addr = addr.to_owned();
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, addr }),
        "ASK" => Some(Redirect::Ask { slot, addr }),
        _ => None,
    }
}

/// Which primary serves each slot, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// `host:port` of each primary, in the order first seen.
    pub nodes: Vec<String>,
    /// Per slot, the index of its primary in `nodes` (`u16::MAX`: not served).
    owner: Vec<u16>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id...], replicas...]...]`.
    pub fn from_cluster_slots(frame: &Frame) -> Option<SlotMap> {
        let Frame::Array(ranges) = frame else { return None };
        let mut map = SlotMap { nodes: Vec::new(), owner: vec![u16::MAX; usize::from(SLOTS)] };
        for r in ranges {
            let Frame::Array(r) = r else { return None };
            let (Some(Frame::Integer(start)), Some(Frame::Integer(end)), Some(Frame::Array(primary))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return None;
            };
            let (Some(Frame::BulkString(host)), Some(Frame::Integer(port))) = (primary.first(), primary.get(1)) else {
                return None;
            };
            let (start, end) = (u16::try_from(*start).ok()?, u16::try_from(*end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            let addr = format!("{}:{port}", std::str::from_utf8(host).ok()?);
            let ix = match map.nodes.iter().position(|n| *n == addr) {
                Some(i) => i,
                None => {
                    map.nodes.push(addr);
                    map.nodes.len() - 1
                }
            };
            let ix = u16::try_from(ix).ok()?;
            map.owner[usize::from(start)..=usize::from(end)].fill(ix);
        }
        Some(map)
    }

    /// The primary serving `slot`, if one does.
    pub fn node(&self, slot: u16) -> Option<&str> {
        let ix = *self.owner.get(usize::from(slot))?;
        self.nodes.get(usize::from(ix)).map(String::as_str)
    }

    /// Whether every slot is served.
    pub fn complete(&self) -> bool {
        self.owner.iter().all(|o| *o != u16::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn key_slots_are_redis_clusters() {
        // `redis-cli cluster keyslot ...` on redis-server 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"analytics:events"), key_slot(b"analytics:events"));
    }

    #[test]
    fn one_partition_keeps_the_key_names() {
        assert_eq!(partition_tag(0, 1), None);
        assert_eq!(stream_key(StreamKind::Events, None), "analytics:events");
        assert_eq!(entry_events_key(None), ENTRY_EVENTS);
        assert_eq!(partition_of("croupier:nonce:g:n", 1), 0);
    }

    #[test]
    fn a_requests_keys_share_a_slot_and_partitions_spread_over_the_slots() {
        let n = 6;
        for p in 0..n {
            let tag = partition_tag(p, n).expect("a tag");
            let t = Some(tag.as_str());
            let slot = key_slot(stream_key(StreamKind::Events, t).as_bytes());
            for key in [
                stream_key(StreamKind::Custom, t),
                stream_key(StreamKind::Payments, t),
                entry_events_key(t),
                tagged("croupier:nonce:g1:abc", t),
            ] {
                assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
            }
            let range = u32::from(SLOTS) / u32::from(n);
            assert_eq!(u32::from(slot) / range, u32::from(p), "partition {p} ({tag}) in its sixth of the slots");
        }
    }

    #[test]
    fn no_tag_outside_the_partitions() {
        assert_eq!((partition_tag(3, 3), partition_tag(0, SLOTS + 1)), (None, None));
        assert!(partition_tag(SLOTS - 1, SLOTS).is_some(), "one slot per partition still has a tag");
    }

    #[test]
    fn a_retry_goes_to_the_same_partition() {
        let (a, b) = (partition_of("croupier:nonce:g1:n-1", 3), partition_of("croupier:nonce:g1:n-1", 3));
        assert_eq!(a, b);
        assert!(a < 3);
    }

    #[test]
    fn redirections() {
        assert_eq!(
            redirect(&Frame::Error("MOVED 3999 127.0.0.1:6381".into())),
            Some(Redirect::Moved { slot: 3999, addr: "127.0.0.1:6381".into() })
        );
        assert_eq!(
            redirect(&Frame::Error("ASK 3999 127.0.0.1:6381".into())),
            Some(Redirect::Ask { slot: 3999, addr: "127.0.0.1:6381".into() })
        );
        for other in ["MOVED 16384 a:1", "MOVED x a:1", "ERR wrong", "MOVED 1 a:1 extra"] {
            assert_eq!(redirect(&Frame::Error(other.into())), None, "{other}");
        }
        assert_eq!(redirect(&bulk("MOVED 1 a:1")), None);
    }

    #[test]
    fn slot_map_from_cluster_slots() {
        let range = |s: i64, e: i64, port: i64| {
            Frame::Array(vec![
                Frame::Integer(s),
                Frame::Integer(e),
                Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(port), bulk("id")]),
                Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(port + 3), bulk("replica")]),
            ])
        };
        let reply = Frame::Array(vec![range(0, 5460, 7000), range(5461, 10922, 7001), range(10923, 16383, 7002)]);
        let map = SlotMap::from_cluster_slots(&reply).expect("a map");
        assert!(map.complete());
        assert_eq!(map.nodes.len(), 3);
        assert_eq!(
            (map.node(0), map.node(5461), map.node(16383)),
            (Some("127.0.0.1:7000"), Some("127.0.0.1:7001"), Some("127.0.0.1:7002"))
        );
        assert_eq!(map.node(key_slot(b"foo")), Some("127.0.0.1:7002"));
        let partial = Frame::Array(vec![range(0, 5460, 7000)]);
        assert!(!SlotMap::from_cluster_slots(&partial).expect("a map").complete());
        assert_eq!(SlotMap::from_cluster_slots(&Frame::Array(vec![range(10, 5, 7000)])), None);
    }
}
