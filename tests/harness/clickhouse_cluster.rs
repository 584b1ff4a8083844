//! A ClickHouse cluster for one test: shards × replicas of real `clickhouse-server`
//! processes on loopback and one ZooKeeper, with the configuration each node needs
//! (`zookeeper`, `macros` `{shard}`/`{replica}`, `remote_servers`, interserver port)
//! written by the harness.

use crate::clickhouse::ClickHouseServer;
use crate::free_port;
use crate::zookeeper::ZooKeeperServer;

/// The cluster's name in every node's `remote_servers`.
pub const CLUSTER: &str = "croupier";

/// The nodes (by shard, then replica) and their ZooKeeper.
pub struct ClickHouseCluster {
    /// `nodes[shard][replica]`.
    pub nodes: Vec<Vec<ClickHouseServer>>,
    /// Dropped after the nodes (fields drop in order).
    pub zookeeper: ZooKeeperServer,
}

impl ClickHouseCluster {
    /// Starts ZooKeeper, then `shards` × `replicas` servers side by side.
    pub fn start(shards: usize, replicas: usize) -> ClickHouseCluster {
        let zookeeper = ZooKeeperServer::start();
        let ports: Vec<Vec<(u16, u16, u16)>> =
            (0..shards).map(|_| (0..replicas).map(|_| (free_port(), free_port(), free_port())).collect()).collect();
        let mut remote = String::new();
        for shard in &ports {
            remote.push_str("<shard><internal_replication>true</internal_replication>");
            for (tcp, _, _) in shard {
                remote.push_str(&format!("<replica><host>127.0.0.1</host><port>{tcp}</port></replica>"));
            }
            remote.push_str("</shard>");
        }
        let zk = zookeeper.port;
        let nodes = std::thread::scope(|scope| {
            let started: Vec<Vec<_>> = ports
                .iter()
                .enumerate()
                .map(|(s, shard)| {
                    shard
                        .iter()
                        .enumerate()
                        .map(|(r, &(tcp, http, interserver))| {
                            let extra = format!(
                                "<interserver_http_port>{interserver}</interserver_http_port>\
                                 <interserver_http_host>127.0.0.1</interserver_http_host>\
                                 <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node>\
                                 <session_timeout_ms>10000</session_timeout_ms></zookeeper>\
                                 <macros><shard>{}</shard><replica>s{}r{}</replica></macros>\
                                 <remote_servers><{CLUSTER}>{remote}</{CLUSTER}></remote_servers>",
                                s + 1,
                                s + 1,
                                r + 1
                            );
                            scope.spawn(move || ClickHouseServer::start_node(tcp, http, extra, false, "UTC"))
                        })
                        .collect()
                })
                .collect();
            started
                .into_iter()
                .map(|shard| shard.into_iter().map(|h| h.join().expect("clickhouse-server starts")).collect())
                .collect()
        });
        ClickHouseCluster { nodes, zookeeper }
    }

    /// `clickhouse.shards` for croupier, as TOML: `[["host:port", ...], ...]`.
    pub fn shards_toml(&self) -> String {
        let shards: Vec<String> = self
            .nodes
            .iter()
            .map(|s| format!("[{}]", s.iter().map(|n| format!("\"{}\"", n.addr())).collect::<Vec<_>>().join(",")))
            .collect();
        format!("[{}]", shards.join(","))
    }

    /// Every node.
    pub fn all(&self) -> impl Iterator<Item = &ClickHouseServer> {
        self.nodes.iter().flatten()
    }
}
