//! Redis Cluster, sans I/O: which slot a key is in (the key-slot function of
//! `redis-protocol`), the slot map read from `CLUSTER SLOTS`, `MOVED`/`ASK` redirections,
//! and how streams are split into partitions whose keys share a slot with a request's
//! nonce.
//!
//! A partitioned stream is `<stream>:{<tag>}` (`analytics:events:{p0.5}`), the nonce of a
//! request appended to partition `p` is `<nonce key>:{<tag>}` and the mean entry size of
//! its streams is kept in `croupier:entry-events:{<tag>}`: every key of the ingest
//! transaction hashes on the same tag, so it runs on one node, atomically, as it does on a
//! single Redis (and the partition's merge of the mean runs on that node too). One partition keeps Croupier's key names, without a tag. Partition `p`
//! of `n` has the first tag `p.i` (i = 0, 1, ...) whose slot is in the `p`-th of `n` equal
//! ranges of the 16384 slots, so that `n` partitions are spread evenly over primaries that
//! share the slots evenly (what `redis-cli --cluster create` does).

use redis_protocol::redis_keyslot;

use crate::resp::Frame;
use crate::stream::{StreamKind, ENTRY_EVENTS};

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The partition counts ingest has written with (`streams.partitions`), a sorted set of
/// counts scored by when an ingest shard last said so (milliseconds): a worker reads
/// every layout listed, so that the streams of a count no longer configured (changed
/// while entries waited in them) are still drained.
pub const LAYOUTS: &str = "croupier:partitions";

/// `ZADD croupier:partitions <now_ms> <n>`: ingest writes with `n` partitions.
pub fn announce_layout(out: &mut Vec<u8>, n: u16, now_ms: u64) {
    crate::resp::command(
        out,
        &[b"ZADD", LAYOUTS.as_bytes(), now_ms.to_string().as_bytes(), n.max(1).to_string().as_bytes()],
    );
}

/// `ZRANGEBYSCORE croupier:partitions -inf +inf`: every layout ingest wrote with.
pub fn read_layouts(out: &mut Vec<u8>) {
    crate::resp::command(out, &[b"ZRANGEBYSCORE", LAYOUTS.as_bytes(), b"-inf", b"+inf"]);
}

/// The partition counts of a [`read_layouts`] reply (members that are no count left out).
pub fn layouts(reply: &Frame) -> Vec<u16> {
    let Frame::Array(items) = reply else { return Vec::new() };
    items
        .iter()
        .filter_map(|f| match f {
            Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b).ok()?.parse::<u16>().ok(),
            _ => None,
        })
        .filter(|n| (1..=SLOTS).contains(n))
        .collect()
}

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

/// The partitions of the streams, with every key name built once: partition `p`'s
/// stream keys, its mean-entry-size hash and the tag its nonce keys carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    tags: Vec<Option<String>>,
    streams: Vec<[String; 3]>,
    entry_events: Vec<String>,
}

impl Partitions {
    /// `n` partitions (0 counts as 1; at most [`SLOTS`]).
    pub fn new(n: u16) -> Partitions {
        let n = n.clamp(1, SLOTS);
        let tags: Vec<Option<String>> = (0..n).map(|p| partition_tag(p, n)).collect();
        let streams = tags.iter().map(|t| StreamKind::ALL.map(|k| stream_key(k, t.as_deref()))).collect();
        let entry_events = tags.iter().map(|t| entry_events_key(t.as_deref())).collect();
        Partitions { tags, streams, entry_events }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether there are none (never: at least one).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The stream key of `kind` in partition `p` (`p` beyond the last: the last's).
    pub fn stream(&self, p: usize, kind: StreamKind) -> &str {
        let p = p.min(self.len().saturating_sub(1));
        self.streams.get(p).map_or(kind.key(), |s| s[kind.index()].as_str())
    }

    /// The mean-entry-size hash of partition `p`.
    pub fn entry_events(&self, p: usize) -> &str {
        let p = p.min(self.len().saturating_sub(1));
        self.entry_events.get(p).map_or(ENTRY_EVENTS, String::as_str)
    }

    /// `HMGET` of partition `p`'s mean-entry-size hash for its three streams (in
    /// [`StreamKind::ALL`] order), read by [`crate::resp::entry_means`].
    pub fn entry_means_command(&self, p: usize) -> Vec<u8> {
        let mut cmd = Vec::with_capacity(128);
        let [a, b, c] = StreamKind::ALL.map(|k| self.stream(p, k).as_bytes());
        crate::resp::command(&mut cmd, &[b"HMGET", self.entry_events(p).as_bytes(), a, b, c]);
        cmd
    }

    /// The partition a request whose nonce key is `nonce_key` goes to, and the key that
    /// records its nonce there (tagged to share the partition's slot). A tagged key has
    /// its own `{`, `}` and `%` written as `%7B`, `%7D` and `%25` (a nonce may hold any
    /// printable character), so that Redis finds the partition's hash tag in it, not one
    /// made by the nonce; distinct nonces keep distinct keys.
    pub fn route(&self, nonce_key: &str) -> (usize, String) {
        let n = u16::try_from(self.len()).unwrap_or(SLOTS);
        let p = usize::from(partition_of(nonce_key, n));
        match self.tags.get(p).and_then(|t| t.as_deref()) {
            Some(tag) if nonce_key.contains(['{', '}', '%']) => {
                let escaped = nonce_key.replace('%', "%25").replace('{', "%7B").replace('}', "%7D");
                (p, tagged(&escaped, Some(tag)))
            }
            tag => (p, tagged(nonce_key, tag)),
        }
    }

    /// Every stream key of every partition.
    pub fn all_streams(&self) -> impl Iterator<Item = &str> {
        self.streams.iter().flat_map(|s| s.iter().map(String::as_str))
    }
}

/// The key a command (encoded as ingest and the worker encode them: an array of bulk
/// strings) is routed by in a cluster: the first key (`EVAL`/`EVALSHA`: `KEYS[1]`;
/// `XREAD`/`XREADGROUP`: the first stream after `STREAMS`; `XINFO`/`XGROUP`: the
/// argument after the subcommand; most others: the first argument). `None` for a command
/// without a key (`PING`, `WAIT`, `INFO`, ...), which any node can answer, and for bytes
/// that are not such an array. Hand-written: `redis-protocol` gives the slot of a key but
/// not which argument of a command is its key.
pub fn command_key(cmd: &[u8]) -> Option<&[u8]> {
    let mut args = Args::new(cmd)?;
    let name = args.next()?;
    let upper = |n: &[u8]| n.to_ascii_uppercase();
    match upper(name).as_slice() {
        b"PING" | b"WAIT" | b"INFO" | b"ROLE" | b"CLUSTER" | b"ASKING" | b"READONLY" | b"SCRIPT" | b"FLUSHALL"
        | b"DBSIZE" | b"CLIENT" | b"CONFIG" | b"MULTI" | b"EXEC" | b"HELLO" | b"AUTH" | b"SELECT" => None,
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" => {
            args.next()?;
            let numkeys = std::str::from_utf8(args.next()?).ok()?.parse::<u32>().ok()?;
            if numkeys == 0 {
                None
            } else {
                args.next()
            }
        }
        b"XREAD" | b"XREADGROUP" => {
            while let Some(a) = args.next() {
                if a.eq_ignore_ascii_case(b"STREAMS") {
                    return args.next();
                }
            }
            None
        }
        b"XINFO" | b"XGROUP" | b"OBJECT" | b"MEMORY" => {
            args.next()?;
            args.next()
        }
        _ => args.next(),
    }
}

/// The arguments of an encoded command, in order.
struct Args<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Args<'a> {
    fn new(cmd: &'a [u8]) -> Option<Args<'a>> {
        let (n, rest) = header(cmd, b'*')?;
        Some(Args { rest, left: n })
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let (len, rest) = header(self.rest, b'$')?;
        let arg = rest.get(..len)?;
        self.rest = rest.get(len.checked_add(2)?..)?;
        self.left -= 1;
        Some(arg)
    }
}

/// `<tag><number>\r\n` at the start of `b`: the number and what follows.
fn header(b: &[u8], tag: u8) -> Option<(usize, &[u8])> {
    let rest = b.strip_prefix(&[tag])?;
    let end = rest.iter().position(|c| *c == b'\r')?;
    let n = std::str::from_utf8(&rest[..end]).ok()?.parse::<usize>().ok()?;
    Some((n, rest.get(end + 2..)?))
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

/// Which primary serves each slot, from `CLUSTER SHARDS` or `CLUSTER SLOTS`.
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

    /// Reads a `CLUSTER SHARDS` reply (Redis 7): per shard `slots` (pairs of start and
    /// end) and `nodes`, each a map with `ip` (or `endpoint`), `port` (or `tls-port`),
    /// `role` and `health`; the shard's primary is the node whose role is `master` and
    /// whose health is `online` (`fail` once the cluster agrees it is down). A shard without slots or without such a node serves
    /// nothing.
    pub fn from_cluster_shards(frame: &Frame) -> Option<SlotMap> {
        let Frame::Array(shards) = frame else { return None };
        let mut map = SlotMap { nodes: Vec::new(), owner: vec![u16::MAX; usize::from(SLOTS)] };
        for shard in shards {
            let shard = pairs(shard)?;
            let Some(Frame::Array(slots)) = field(&shard, "slots") else { return None };
            let Some(Frame::Array(nodes)) = field(&shard, "nodes") else { return None };
            let mut primary = None;
            for node in nodes {
                let node = pairs(node)?;
                let text = |k: &str| match field(&node, k) {
                    Some(Frame::BulkString(v) | Frame::SimpleString(v)) => std::str::from_utf8(v).ok(),
                    _ => None,
                };
                let port = match field(&node, "port").or_else(|| field(&node, "tls-port")) {
                    Some(Frame::Integer(p)) => *p,
                    _ => continue,
                };
                let host = text("ip").filter(|h| !h.is_empty()).or_else(|| text("endpoint"));
                if text("role") == Some("master") && text("health").is_none_or(|h| h == "online") {
                    if let Some(h) = host {
                        primary = Some(if h.contains(':') { format!("[{h}]:{port}") } else { format!("{h}:{port}") });
                    }
                }
            }
            let Some(addr) = primary else { continue };
            let ix = match map.nodes.iter().position(|n| *n == addr) {
                Some(i) => i,
                None => {
                    map.nodes.push(addr);
                    map.nodes.len() - 1
                }
            };
            let ix = u16::try_from(ix).ok()?;
            for pair in slots.chunks(2) {
                let [Frame::Integer(start), Frame::Integer(end)] = pair else { return None };
                let (start, end) = (u16::try_from(*start).ok()?, u16::try_from(*end).ok()?);
                if start > end || end >= SLOTS {
                    return None;
                }
                map.owner[usize::from(start)..=usize::from(end)].fill(ix);
            }
        }
        Some(map)
    }

    /// The same map with its primaries in sorted order, so that two nodes that agree on
    /// every slot's owner give equal maps whatever order they list their shards in.
    pub fn canonical(self) -> SlotMap {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by(|a, b| self.nodes[*a].cmp(&self.nodes[*b]));
        // `rank[old index]` = new index.
        let mut rank = vec![u16::MAX; self.nodes.len()];
        for (new, old) in order.iter().enumerate() {
            rank[*old] = u16::try_from(new).unwrap_or(u16::MAX);
        }
        let owner = self.owner.iter().map(|o| rank.get(usize::from(*o)).copied().unwrap_or(u16::MAX)).collect();
        let mut nodes = self.nodes;
        nodes.sort();
        SlotMap { nodes, owner }
    }

    /// Of the maps read from several nodes (canonical, in the order read), the one to
    /// follow: the complete map the most nodes gave (ties: the first read), else the
    /// first. A node with a stale view (a restarted old primary, a partitioned minority)
    /// is outvoted instead of winning by being asked first.
    pub fn agreed(maps: &[SlotMap]) -> Option<&SlotMap> {
        let votes = |m: &SlotMap| maps.iter().filter(|x| *x == m).count();
        let mut best: Option<(&SlotMap, usize)> = None;
        for m in maps.iter().filter(|m| m.complete()) {
            let v = votes(m);
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((m, v));
            }
        }
        best.map(|(m, _)| m).or(maps.first())
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

    /// Whether going from `self` to `new` gives some slot a primary it did not have: a
    /// slot served by another node, or served again. A slot that only stops being served
    /// (its primary failed, none took over) is not: what was read from the other primaries
    /// still stands.
    pub fn reassigns(&self, new: &SlotMap) -> bool {
        // `was[new index]` = the same node's index in `self`.
        let was: Vec<Option<u16>> = new
            .nodes
            .iter()
            .map(|n| self.nodes.iter().position(|o| o == n).and_then(|i| u16::try_from(i).ok()))
            .collect();
        new.owner
            .iter()
            .zip(&self.owner)
            .any(|(now, before)| *now != u16::MAX && was.get(usize::from(*now)).copied().flatten() != Some(*before))
    }
}

/// A RESP2 flat list or a RESP3 map of name/value pairs.
fn pairs(frame: &Frame) -> Option<Vec<(&[u8], &Frame)>> {
    match frame {
        Frame::Array(items) => items
            .chunks(2)
            .map(|kv| match kv {
                [Frame::BulkString(k) | Frame::SimpleString(k), v] => Some((k.as_slice(), v)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn field<'a>(pairs: &[(&[u8], &'a Frame)], name: &str) -> Option<&'a Frame> {
    pairs.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_announced_and_read_back() {
        let mut cmd = Vec::new();
        announce_layout(&mut cmd, 3, 1_795_617_749_000);
        assert_eq!(cmd, b"*4\r\n$4\r\nZADD\r\n$19\r\ncroupier:partitions\r\n$13\r\n1795617749000\r\n$1\r\n3\r\n");
        let reply = Frame::Array(
            ["1", "3", "x", "0", "16385", "16384"].iter().map(|m| Frame::BulkString(m.as_bytes().to_vec())).collect(),
        );
        assert_eq!(layouts(&reply), [1, 3, 16384]);
        assert!(layouts(&Frame::Error("NOPERM".into())).is_empty());
    }

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

    /// A `CLUSTER SLOTS` range: slots `s..=e` served by 127.0.0.1:`port`, with a replica
    /// at `port + 3`.
    fn range(s: i64, e: i64, port: i64) -> Frame {
        Frame::Array(vec![
            Frame::Integer(s),
            Frame::Integer(e),
            Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(port), bulk("id")]),
            Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(port + 3), bulk("replica")]),
        ])
    }

    #[test]
    fn slot_map_from_cluster_slots() {
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

    #[test]
    fn the_map_most_nodes_agree_on_wins_over_the_first_read() {
        let read = |ranges: Vec<Frame>| SlotMap::from_cluster_slots(&Frame::Array(ranges)).expect("a map").canonical();
        // A restarted old primary still names itself for 0..=5460; two others name 7003.
        let stale = read(vec![range(0, 5460, 7000), range(5461, 16383, 7001)]);
        let current = read(vec![range(0, 5460, 7003), range(5461, 16383, 7001)]);
        // The same ownership listed in another order is the same map.
        let reordered = read(vec![range(5461, 16383, 7001), range(0, 5460, 7003)]);
        assert_eq!(current, reordered);
        assert_eq!(reordered.node(0), Some("127.0.0.1:7003"));
        assert_eq!(reordered.node(16383), Some("127.0.0.1:7001"));
        let maps = [stale.clone(), current.clone(), reordered];
        assert_eq!(SlotMap::agreed(&maps), Some(&current));
        // A tie goes to the first read; a complete map beats a partial one read first.
        assert_eq!(SlotMap::agreed(&[stale.clone(), current.clone()]), Some(&stale));
        let partial = read(vec![range(0, 100, 7003)]);
        assert_eq!(SlotMap::agreed(std::slice::from_ref(&partial)), Some(&partial));
        assert_eq!(SlotMap::agreed(&[partial, stale.clone()]), Some(&stale));
        assert_eq!(SlotMap::agreed(&[]), None);
    }

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::resp::command(&mut out, args);
        out
    }

    #[test]
    fn commands_are_routed_by_their_first_key() {
        let key = |args: &[&[u8]]| command_key(&cmd(args)).map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(key(&[b"EVAL", b"return 1", b"2", b"k1", b"k2", b"a"]), Some("k1".into()));
        assert_eq!(key(&[b"EVAL", b"return 1", b"0"]), None);
        assert_eq!(
            key(&[b"XREADGROUP", b"GROUP", b"g", b"c", b"COUNT", b"10", b"STREAMS", b"s1", b">"]),
            Some("s1".into())
        );
        assert_eq!(key(&[b"XINFO", b"GROUPS", b"s2"]), Some("s2".into()));
        assert_eq!(key(&[b"xgroup", b"CREATE", b"s3", b"g", b"0"]), Some("s3".into()));
        assert_eq!(key(&[b"XACK", b"s4", b"g", b"1-1"]), Some("s4".into()));
        assert_eq!((key(&[b"PING"]), key(&[b"WAIT", b"1", b"100"])), (None, None));
        assert_eq!(command_key(b"*2\r\n$4\r\nXLEN"), None, "cut short");
    }

    #[test]
    fn partitions_build_every_key_once() {
        let one = Partitions::new(1);
        assert_eq!((one.len(), one.stream(0, StreamKind::Custom)), (1, "analytics:custom"));
        assert_eq!(one.route("croupier:nonce:g:n"), (0, "croupier:nonce:g:n".into()));
        let three = Partitions::new(3);
        let (p, nonce) = three.route("croupier:nonce:g:n");
        assert_eq!(key_slot(nonce.as_bytes()), key_slot(three.stream(p, StreamKind::Payments).as_bytes()));
        assert_eq!(key_slot(nonce.as_bytes()), key_slot(three.entry_events(p).as_bytes()));
        assert_eq!(three.all_streams().count(), 9);
    }

    #[test]
    fn slot_map_from_cluster_shards() {
        let node = |port: i64, role: &str, health: &str| {
            Frame::Array(vec![
                bulk("id"),
                bulk("x"),
                bulk("port"),
                Frame::Integer(port),
                bulk("ip"),
                bulk("127.0.0.1"),
                bulk("role"),
                bulk(role),
                bulk("health"),
                bulk(health),
            ])
        };
        let shard = |s: i64, e: i64, nodes: Vec<Frame>| {
            Frame::Array(vec![
                bulk("slots"),
                Frame::Array(vec![Frame::Integer(s), Frame::Integer(e)]),
                bulk("nodes"),
                Frame::Array(nodes),
            ])
        };
        let reply = Frame::Array(vec![
            shard(0, 8191, vec![node(7003, "replica", "online"), node(7000, "master", "online")]),
            shard(8192, 16383, vec![node(7001, "master", "fail"), node(7004, "master", "online")]),
        ]);
        let map = SlotMap::from_cluster_shards(&reply).expect("a map");
        assert!(map.complete());
        assert_eq!((map.node(0), map.node(16383)), (Some("127.0.0.1:7000"), Some("127.0.0.1:7004")));
    }

    #[test]
    fn a_slot_reassigned_is_told_from_a_slot_no_longer_served() {
        let map = |ranges: Vec<Frame>| SlotMap::from_cluster_slots(&Frame::Array(ranges)).expect("a map");
        let three = map(vec![range(0, 5460, 7000), range(5461, 10922, 7001), range(10923, 16383, 7002)]);
        // The same owners, listed in another order.
        let reordered = map(vec![range(10923, 16383, 7002), range(0, 5460, 7000), range(5461, 10922, 7001)]);
        // 7001 failed and nothing took over.
        let gone = map(vec![range(0, 5460, 7000), range(10923, 16383, 7002)]);
        // Its replica took over; and one slot moved from 7002 to 7000.
        let replaced = map(vec![range(0, 5460, 7000), range(5461, 10922, 7004), range(10923, 16383, 7002)]);
        let moved = map(vec![
            range(0, 5460, 7000),
            range(5461, 10922, 7001),
            range(10923, 10923, 7000),
            range(10924, 16383, 7002),
        ]);
        assert!(!three.reassigns(&reordered));
        assert!(!three.reassigns(&gone), "a slot no longer served reassigns nothing");
        assert!(gone.reassigns(&three), "a slot served again");
        assert!(gone.reassigns(&replaced) && three.reassigns(&replaced));
        assert!(three.reassigns(&moved));
        assert!(!three.reassigns(&three));
    }

    #[test]
    fn a_nonce_with_braces_is_routed_to_its_partitions_slot() {
        let parts = Partitions::new(3);
        for nonce in ["a{b}", "{x}", "{", "}", "a}b{", "%7B", "{}{}", "plain"] {
            let key = format!("croupier:nonce:g1:{nonce}");
            let (p, tagged) = parts.route(&key);
            assert_eq!(
                key_slot(tagged.as_bytes()),
                key_slot(parts.stream(p, StreamKind::Events).as_bytes()),
                "{nonce}: {tagged}"
            );
        }
        // Distinct nonces, distinct keys.
        let a = parts.route("croupier:nonce:g1:%7B");
        let b = parts.route("croupier:nonce:g1:{");
        assert!(a.0 != b.0 || a.1 != b.1, "{a:?} {b:?}");
        // One partition keeps Croupier's key as it is.
        assert_eq!(Partitions::new(1).route("croupier:nonce:g1:a{b}").1, "croupier:nonce:g1:a{b}");
    }
}
