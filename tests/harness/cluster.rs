//! A real Redis Cluster for one test: `redis-server --cluster-enabled yes` processes on
//! free loopback ports, joined by `redis-cli --cluster create` (Debian's redis-tools),
//! with short failure detection.
//!
//! Each node's cluster bus port is a free port of its own (`--cluster-port`), not Redis's
//! default of the client port + 10000: that one may be taken by another process, or be
//! past 65535 for a client port above 55535, and the node would not start.

use std::process::Command;
use std::time::{Duration, Instant};

use croupier_protocol::cluster::key_slot;
use croupier_protocol::resp::Frame;

use crate::redis::RedisServer;
use crate::{require_binary, run};

/// Cluster options of every node: a node is failed after 1 s without an answer, and the
/// slots of the others are served while some are not.
const NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--cluster-require-full-coverage",
    "no",
    "--appendonly",
    "no",
];

/// Starts one node with [`NODE_ARGS`] and a cluster bus port of its own (and, with a
/// `password`, `requirepass` and `masterauth` set to it).
fn start_node(password: Option<&str>) -> RedisServer {
    let bus = crate::free_port().to_string();
    let mut args = NODE_ARGS.to_vec();
    args.extend(["--cluster-port", &bus]);
    if let Some(pw) = password {
        args.extend(["--requirepass", pw, "--masterauth", pw]);
    }
    RedisServer::start_with(&args)
}

/// The cluster bus port `node` was started with.
fn bus_port(node: &RedisServer) -> u16 {
    match node.client().cmd(&["CONFIG", "GET", "cluster-port"]) {
        Frame::Array(a) => match a.get(1) {
            Some(Frame::BulkString(b)) => String::from_utf8_lossy(b).parse().expect("a port number"),
            other => panic!("CONFIG GET cluster-port: {other:?}"),
        },
        other => panic!("CONFIG GET cluster-port: {other:?}"),
    }
}

/// The nodes of a cluster (primaries first, as created).
pub struct RedisCluster {
    /// Every node; `nodes[..primaries]` were created primaries, the rest their replicas.
    pub nodes: Vec<RedisServer>,
    /// How many primaries it was created with.
    pub primaries: usize,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until every
    /// node says the cluster is `ok` and every replica is in sync.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        Self::start_with_password(primaries, replicas, None)
    }

    /// [`RedisCluster::start`] with `requirepass` and `masterauth` set to `password` on
    /// every node, when given.
    pub fn start_with_password(primaries: usize, replicas: usize, password: Option<&str>) -> RedisCluster {
        let cli = require_binary("redis-cli", "redis-tools");
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas)).map(|_| start_node(password)).collect();
        let mut create = Command::new(cli);
        if let Some(pw) = password {
            create.args(["-a", pw, "--no-auth-warning"]);
        }
        create.arg("--cluster").arg("create");
        create.args(nodes.iter().map(RedisServer::addr));
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        run(&mut create);
        let c = RedisCluster { nodes, primaries };
        c.wait_ok(Duration::from_secs(20));
        for n in &c.nodes[primaries..] {
            n.wait_synced();
        }
        c
    }

    /// Starts `primaries` primaries without replicas, any count from 1 (`redis-cli
    /// --cluster create` wants 3 at least): each takes an equal range of the slots
    /// (`CLUSTER ADDSLOTSRANGE`) and meets the first (`CLUSTER MEET`).
    pub fn primaries_only(primaries: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..primaries).map(|_| start_node(None)).collect();
        let n = primaries.max(1);
        for (i, node) in nodes.iter().enumerate() {
            let (lo, hi) = (i * 16384 / n, (i + 1) * 16384 / n - 1);
            let reply = node.client().cmd(&["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()]);
            assert_eq!(reply, Frame::SimpleString(b"OK".to_vec()), "ADDSLOTSRANGE on node {i}");
            if i > 0 {
                let (port, bus) = (nodes[0].port.to_string(), bus_port(&nodes[0]).to_string());
                let reply = node.client().cmd(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
                assert_eq!(reply, Frame::SimpleString(b"OK".to_vec()), "MEET from node {i}");
            }
        }
        let c = RedisCluster { nodes, primaries };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Every node knows every other before the state is trusted.
        while !c.nodes.iter().all(|n| {
            matches!(n.client().cmd(&["CLUSTER", "INFO"]), Frame::BulkString(b)
                if String::from_utf8_lossy(&b).contains(&format!("cluster_known_nodes:{primaries}")))
        }) {
            assert!(Instant::now() < deadline, "the nodes did not meet within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        c.wait_ok(Duration::from_secs(20));
        c
    }

    /// `host:port` of every node (seeds for `redis.cluster`).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on one
    /// primary per slot range.
    pub fn wait_ok(&self, timeout: Duration) {
        self.wait_every_node(timeout, "the cluster is not ok", |c| {
            matches!(c.try_cmd(&["CLUSTER", "INFO"]), Ok(Frame::BulkString(b))
                if String::from_utf8_lossy(&b).contains("cluster_state:ok"))
        });
    }

    /// Waits until `holds` is true of a connection to every running node (at most
    /// `timeout`; panics with `what` after it).
    fn wait_every_node(&self, timeout: Duration, what: &str, holds: impl Fn(&mut crate::redis::RedisClient) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self
                .nodes
                .iter()
                .filter(|n| n.pid().is_some())
                .all(|n| crate::redis::RedisClient::connect(n.port).is_ok_and(|mut c| holds(&mut c)));
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "{what} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node serving `key`'s slot as a primary, as the running nodes see it.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let slot = i64::from(key_slot(key.as_bytes()));
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(mut c) = crate::redis::RedisClient::connect(n.port) else { continue };
            let Ok(Frame::Array(ranges)) = c.try_cmd(&["CLUSTER", "SLOTS"]) else { continue };
            for r in ranges {
                let Frame::Array(r) = r else { continue };
                let (Some(Frame::Integer(a)), Some(Frame::Integer(b)), Some(Frame::Array(p))) =
                    (r.first(), r.get(1), r.get(2))
                else {
                    continue;
                };
                if (*a..=*b).contains(&slot) {
                    if let Some(Frame::Integer(port)) = p.get(1) {
                        return self.nodes.iter().position(|n| i64::from(n.port) == *port);
                    }
                }
            }
        }
        None
    }

    /// Waits until every running node flags node `gone` as failed (`fail`, agreed, not
    /// `fail?`): from then on the slot maps they give leave its slots unserved.
    pub fn wait_failed(&self, gone: usize, timeout: Duration) {
        let port = format!(":{}@", self.nodes[gone].port);
        self.wait_every_node(timeout, &format!("node {gone} not flagged failed"), |c| {
            let Ok(Frame::BulkString(text)) = c.try_cmd(&["CLUSTER", "NODES"]) else { return false };
            String::from_utf8_lossy(&text).lines().any(|l| {
                let mut cols = l.split(' ');
                let (addr, flags) = (cols.nth(1).unwrap_or(""), cols.next().unwrap_or(""));
                addr.contains(&port) && flags.split(',').any(|f| f == "fail")
            })
        });
    }

    /// `XLEN key` on the node serving it.
    pub fn xlen(&self, key: &str) -> i64 {
        let n = self.primary_of(key).expect("a primary for the key");
        match self.nodes[n].client().cmd(&["XLEN", key]) {
            Frame::Integer(x) => x,
            other => panic!("XLEN {key}: {other:?}"),
        }
    }

    /// Entries pending in the consumer group `analytics-workers` on `key`.
    pub fn pending(&self, key: &str) -> i64 {
        let n = self.primary_of(key).expect("a primary for the key");
        match self.nodes[n].client().cmd(&["XPENDING", key, "analytics-workers"]) {
            Frame::Array(a) => match a.first() {
                Some(Frame::Integer(x)) => *x,
                _ => 0,
            },
            _ => 0,
        }
    }
}
