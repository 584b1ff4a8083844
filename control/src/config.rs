//! Configuration: one TOML file plus `CROUPIER_*` environment overrides.
//!
//! An override names a key by its path, sections separated by a double underscore:
//! `CROUPIER_SERVER__LISTEN=0.0.0.0:9000`, `CROUPIER_GAMES__mygame__SECRET=...`. Section
//! and key names are case-insensitive; game ids are kept as written. The value is read
//! as a TOML value when it parses as one (`8`, `true`, `[0, 1]`), else as a string.
//! Only names of that form (a double underscore after the section) are overrides: any
//! other `CROUPIER_*` variable, such as a client's `CROUPIER_URL`, is none of the
//! server's business and is left alone (one that looks like a mistyped override,
//! `CROUPIER_SERVER_LISTEN`, is reported by [`Config::warnings`]).
//!
//! Unknown keys and bad values fail the load, naming the key's path and what was
//! expected, and the environment variable when the value came from one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "CROUPIER_";
/// Environment variable naming the config file (not an override).
pub const ENV_CONFIG_PATH: &str = "CROUPIER_CONFIG";

/// Sections of the file, for recognising a mistyped override (`CROUPIER_SERVER_LISTEN`).
const SECTIONS: [&str; 14] = [
    "server",
    "auth",
    "redis",
    "streams",
    "clickhouse",
    "worker",
    "aggregate",
    "games",
    "control",
    "metrics",
    "log",
    "api",
    "otlp",
    "client",
];

/// A configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the offending key (`server.listen`), or the file.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// The environment variable the offending value came from, if it came from one.
    pub variable: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variable {
            Some(v) => write!(f, "config `{}` (from environment variable {v}): {}", self.key, self.message),
            None => write!(f, "config `{}`: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A server's `host:port` spelled one way: the host's case, a trailing dot, an IP
/// address's form and the port's digits made the same (`LOCALHOST:09000` is
/// `localhost:9000`, `[0:0::1]:9000` is `::1:9000`).
fn server_id(addr: &str) -> String {
    let Some((host, port)) = addr.rsplit_once(':') else { return addr.to_ascii_lowercase() };
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    let host = host.parse::<std::net::IpAddr>().map(|ip| ip.to_string()).unwrap_or(host);
    let port = port.parse::<u16>().map_or_else(|_| port.to_owned(), |p| p.to_string());
    format!("{host}:{port}")
}

/// Whether `addr` is `host:port`: a host (a name, an IPv4 address, or an IPv6 one in
/// brackets) and a port from 1 to 65535.
fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into(), variable: None }
}

/// The keys set from the environment: each override's dotted path and its variable.
#[derive(Debug, Default, Clone)]
struct Overrides(Vec<(String, String)>);

impl Overrides {
    /// Names the variable behind `e` when its key is one an override set, lies inside
    /// one (a value that should have been a section), or holds one (a section that is
    /// wrong as a whole, or unknown). The most specific override wins.
    fn attribute(&self, mut e: ConfigError) -> ConfigError {
        let within = |outer: &str, inner: &str| {
            inner == outer || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'.'))
        };
        e.variable = self
            .0
            .iter()
            .filter(|(path, _)| within(path, &e.key) || within(&e.key, path))
            .max_by_key(|(path, _)| path.len())
            .map(|(_, var)| var.clone());
        e
    }
}

/// Which io driver the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// io_uring when the kernel (and seccomp) allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring; fails at start if unavailable.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Largest `server.max_body_bytes` and `server.max_decompressed_bytes`: 256 MiB. A
/// body's records become stream entries of about its size, which must stay below Redis's
/// `proto-max-bulk-len` (512 MB) and the 4 GiB that batch text offsets (`u32`) address.
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// `[server]`: the HTTP ingest listener and the shards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Listen address, shared by all shards with SO_REUSEPORT.
    pub listen: String,
    /// Number of data shards; 0 means one per available core.
    pub shards: usize,
    /// Cores to pin shards to, in shard order; empty means the CPUs the process may run
    /// on, in order (all of them on a whole machine; its cpuset in a container).
    pub cores: Vec<usize>,
    /// Pin shards to cores.
    pub pin: bool,
    /// io driver.
    pub driver: Driver,
    /// Largest request body as sent, in bytes.
    pub max_body_bytes: usize,
    /// Largest request body after gzip decompression, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most records in one request.
    pub max_records: usize,
    /// Time allowed to receive a request's head and body (408 past it), and to write a
    /// response (the connection closes past it), milliseconds.
    pub read_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this long, milliseconds.
    pub idle_timeout_ms: u64,
    /// Most connections open on one shard; at the cap the shard accepts no more until
    /// one closes (the rest wait in the listen backlog).
    pub max_connections: usize,
    /// Most bytes of request bodies one shard receives at once; a request that would go
    /// past it gets 503 `server_busy`. Never less than `max_body_bytes` in effect (see
    /// [`Server::body_budget`]).
    pub max_inflight_body_bytes: usize,
    /// On SIGTERM/SIGINT, how long the control port's `/readyz` answers 503 while the data
    /// port goes on serving, before the listener closes, milliseconds: the time a load
    /// balancer or Kubernetes needs to stop sending new requests (docs/deploy.md).
    pub drain_delay_ms: u64,
    /// How ids are derived for events sent without `event_id` (docs/ingest.md, "Event
    /// ids").
    pub event_ids: EventIds,
}

impl Server {
    /// Bytes of request bodies a shard receives at once: `max_inflight_body_bytes`, but
    /// never less than one body at `max_body_bytes`.
    pub fn body_budget(&self) -> usize {
        self.max_inflight_body_bytes.max(self.max_body_bytes)
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "0.0.0.0:8080".into(),
            shards: 0,
            cores: Vec::new(),
            pin: true,
            driver: Driver::Auto,
            max_body_bytes: 10 << 20,
            max_decompressed_bytes: 10 << 20,
            max_records: 10_000,
            read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 4096,
            max_inflight_body_bytes: 64 << 20,
            drain_delay_ms: 0,
            event_ids: EventIds::Siphash,
        }
    }
}

/// The largest `auth.max_skew_secs`: a day.
pub const MAX_SKEW_SECS: u64 = 86_400;

/// Most shards of a kind (`server.shards`, `worker.shards`): each is a thread with its own
/// connections, and more than the machine's cores only contend.
pub const MAX_SHARDS: usize = 256;

/// Most partitions of each stream (`streams.partitions`).
pub const MAX_PARTITIONS: u16 = 1024;

/// `[auth]`: request signatures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Largest accepted difference between `X-Timestamp` and the server's clock.
    pub max_skew_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { max_skew_secs: 300 }
    }
}

/// `[redis]`: the stream server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Redis {
    /// `host:port` of redis-server.
    pub addr: String,
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// A request waiting longer than this for Redis gets 503, milliseconds.
    pub reply_timeout_ms: u64,
    /// How often each shard reads the consumer group's backlog, milliseconds.
    pub backlog_poll_ms: u64,
    /// `Retry-After` sent with 503, seconds.
    pub retry_after_secs: u64,
    /// Bytes of commands a connection may hold waiting to be sent; a request that would
    /// go past it gets 503 at once (a single command always fits an empty queue).
    pub max_queued_bytes: usize,
    /// Replicas that must confirm an append before ingest answers 202 (`WAIT`); 0: the
    /// primary's reply is enough (no `WAIT` is sent).
    pub wait_replicas: u32,
    /// How long `WAIT` may take, milliseconds; fewer confirmations by then is a 503
    /// `not_replicated` (the events were appended: the same request again is answered as
    /// already accepted once replicated).
    pub wait_timeout_ms: u64,
    /// Sentinels (`host:port`) to ask for the primary named [`Redis::master_name`];
    /// empty: `addr` is the primary.
    pub sentinels: Vec<String>,
    /// The primary's name at the sentinels.
    pub master_name: String,
    /// Seed nodes (`host:port`) of a Redis Cluster; empty: not a cluster. The slot map is
    /// read from any of them (and from the primaries it names after that); `addr` and
    /// `sentinels` are not used.
    pub cluster: Vec<String>,
    /// How often the slot map is read again besides after a redirection or a failed
    /// connection, milliseconds.
    pub cluster_refresh_ms: u64,
    /// How ingest records a request's nonce and appends its entries (docs/ingest.md).
    pub ingest_protocol: IngestProtocol,
    /// How long a request's lease on its nonce lasts under the `lease` protocol,
    /// milliseconds: a retry that meets it is answered 503 `request_in_flight` until the
    /// request holding it finished or the lease ran out. 0: three times
    /// `reply_timeout_ms` plus 2 seconds (plus `wait_timeout_ms` when `wait_replicas` is
    /// set), which is also the least accepted (the append must reach Redis within the
    /// lease).
    pub ingest_lease_ms: u64,
    /// Most requests appended by one transaction under the `script` protocol: the
    /// requests a shard has waiting for Redis at once, on one partition, share one
    /// `MULTI`/`EXEC` and one `EVAL` (each keeps its own nonce, entries and answer;
    /// docs/ingest.md, "Requests appended together"). 1: one transaction per request.
    pub ingest_group_max: usize,
    /// ACL user every connection to a Redis server authenticates as
    /// (`AUTH <username> <password>`); none: `AUTH <password>` (the `default` user,
    /// `requirepass`). Needs a password.
    pub username: Option<String>,
    /// Password sent with `AUTH` first on every connection to a Redis server (each node
    /// of a cluster alike); none: no `AUTH`.
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// ACL user of the sentinels (`redis.sentinels`); none: `AUTH <password>`.
    pub sentinel_username: Option<String>,
    /// Password sent with `AUTH` first on every connection to a sentinel (their
    /// `requirepass`); none: no `AUTH`.
    pub sentinel_password: Option<Secret>,
    /// A file holding the sentinels' password (trailing newline ignored), instead of
    /// `sentinel_password`.
    pub sentinel_password_file: Option<PathBuf>,
}

/// A password: its `Debug` form is redacted, so a configuration printed or logged with
/// `{:?}` never shows it. [`Secret::expose`] gives the text to whatever sends it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// How an event sent without `event_id` gets its id, from the body's digest and its
/// index. Both are stable across retries of the same body; a batch sent again with a new
/// nonce must meet the same choice to get the same ids (docs/deploy.md, "Upgrading").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventIds {
    /// SipHash-1-3-128 keyed by the digest: a few nanoseconds per id (the default).
    #[default]
    Siphash,
    /// The first 16 bytes of SHA-256 of a tag, the digest and the index: the ids of
    /// earlier versions (two SHA-256 blocks per id).
    Sha256,
}

/// How ingest records a request's nonce and appends its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IngestProtocol {
    /// A lease on the nonce (`SET NX`), then the plain `XADD`s and the nonce marked done
    /// in one `MULTI`/`EXEC`: the archives never pass through Lua (less Redis CPU, two
    /// round trips per request).
    Lease,
    /// One `EVAL` that records the nonce and appends (the archives are script arguments):
    /// the default, one round trip per request.
    #[default]
    Script,
}

impl Redis {
    /// The nonce lease of the `lease` protocol, milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.ingest_lease_ms.max(self.min_lease_ms())
    }

    /// The shortest lease allowed: a request's append is queued within a reply timeout
    /// of its lease being asked for, taken into a pipeline round within another (its
    /// caller gives up then, and a command whose caller gave up is not sent) — plus, with
    /// `wait_replicas`, the `WAIT` of the round before, which the connection waits for
    /// before building the next —, and that round is written within a third (or the
    /// connection fails); the lease outlives that by 2 seconds.
    pub fn min_lease_ms(&self) -> u64 {
        self.lease_hold_ms().saturating_add(2_000)
    }

    /// How long the lease protocol's append keeps the lease after it ran: its reply comes
    /// within a reply timeout (after the round's `WAIT`, with `wait_replicas`), and what
    /// its holder then sends (the nonce pending again, when an `XADD` failed) is taken
    /// into a round within another and written within a third.
    pub fn lease_hold_ms(&self) -> u64 {
        let wait = if self.wait_replicas > 0 { self.wait_timeout_ms } else { 0 };
        self.reply_timeout_ms.saturating_mul(3).saturating_add(wait)
    }
}

/// The longest `server.drain_delay_ms` accepted: ten minutes.
pub const MAX_DRAIN_DELAY_MS: u64 = 600_000;

impl Default for Redis {
    fn default() -> Self {
        Redis {
            addr: "127.0.0.1:6379".into(),
            connect_timeout_ms: 1_000,
            reply_timeout_ms: 5_000,
            backlog_poll_ms: 100,
            retry_after_secs: 1,
            max_queued_bytes: 64 << 20,
            wait_replicas: 0,
            wait_timeout_ms: 1_000,
            sentinels: Vec::new(),
            master_name: "mymaster".into(),
            cluster: Vec::new(),
            cluster_refresh_ms: 2_000,
            ingest_protocol: IngestProtocol::Script,
            ingest_lease_ms: 0,
            ingest_group_max: 32,
            username: None,
            password: None,
            password_file: None,
            sentinel_username: None,
            sentinel_password: None,
            sentinel_password_file: None,
        }
    }
}

/// Retention and high-water mark of one stream, in events. A key left out keeps that
/// stream's default (so `CROUPIER_STREAMS__EVENTS__HIGH_WATER_EVENTS` alone is enough).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Events kept in the stream (`MAXLEN ~`, converted to entries).
    pub retention_events: u64,
    /// Ingest refuses (503) once the group's backlog reaches this many events.
    pub high_water_events: u64,
}

/// A stream's limits as written: either key may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamLimitsInput {
    retention_events: Option<u64>,
    high_water_events: Option<u64>,
}

impl StreamLimits {
    /// Reads the keys given, keeping `default`'s for the others.
    fn read<'de, D: serde::Deserializer<'de>>(d: D, default: StreamLimits) -> Result<StreamLimits, D::Error> {
        let i = StreamLimitsInput::deserialize(d)?;
        Ok(StreamLimits {
            retention_events: i.retention_events.unwrap_or(default.retention_events),
            high_water_events: i.high_water_events.unwrap_or(default.high_water_events),
        })
    }
}

fn events_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamLimits, D::Error> {
    StreamLimits::read(d, Streams::default().events)
}

fn custom_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamLimits, D::Error> {
    StreamLimits::read(d, Streams::default().custom)
}

fn payments_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamLimits, D::Error> {
    StreamLimits::read(d, Streams::default().payments)
}

/// `[streams]`: retention and backpressure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Streams {
    /// No longer used (entries are measured); accepted so older files still load, and
    /// reported by [`Config::warnings`].
    pub batch_events: Option<u64>,
    /// `analytics:events`.
    #[serde(deserialize_with = "events_limits")]
    pub events: StreamLimits,
    /// `analytics:custom`.
    #[serde(deserialize_with = "custom_limits")]
    pub custom: StreamLimits,
    /// `analytics:payments`.
    #[serde(deserialize_with = "payments_limits")]
    pub payments: StreamLimits,
    /// Partitions of each stream: 1 keeps the key names above; `n > 1` makes `n` streams
    /// of each (`analytics:events:{<tag>}`), spread over a Redis Cluster's slots. Each
    /// partition's retention and mark are the stream's divided by `n`.
    pub partitions: u16,
}

impl Streams {
    /// The limits of `events`, `custom` and `payments`, in that order.
    pub fn limits(&self) -> [StreamLimits; 3] {
        [self.events, self.custom, self.payments]
    }

    /// The limits of one partition: each stream's divided by the partitions (at least 2
    /// events retained and 1 for the mark), so that all partitions together keep and
    /// admit what the stream alone would.
    pub fn partition_limits(&self) -> [StreamLimits; 3] {
        let n = u64::from(self.partitions.max(1));
        self.limits().map(|l| StreamLimits {
            retention_events: (l.retention_events / n).max(2),
            high_water_events: (l.high_water_events / n).max(1),
        })
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            batch_events: None,
            events: StreamLimits { retention_events: 1_000_000, high_water_events: 800_000 },
            custom: StreamLimits { retention_events: 500_000, high_water_events: 400_000 },
            payments: StreamLimits { retention_events: 100_000, high_water_events: 80_000 },
            partitions: 1,
        }
    }
}

/// `[clickhouse]`: where workers insert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouse {
    /// `host:port` of the native TCP port.
    pub addr: String,
    /// Database the connection starts in (tables are always `analytics.*`).
    pub database: String,
    /// User.
    pub user: String,
    /// Password (redacted in `Debug`).
    pub password: Secret,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// LZ4 frames with checksums, for inserts and for query answers.
    pub compression: bool,
    /// Connect timeout and longest wait for any reply, milliseconds.
    pub timeout_ms: u64,
    /// Partitions (months of the time column) one INSERT block may span: the server's
    /// `max_partitions_per_insert_block` or less.
    pub max_partitions_per_block: usize,
    /// `croupier migrate` sets `fsync_after_insert` (and `fsync_part_directory`) on the
    /// tables the worker fills, where the server has those settings.
    pub fsync_after_insert: bool,
    /// A cluster instead of one server: its shards, each the `host:port` (native port)
    /// of its replicas. Empty: the one server at `addr`. See docs/clickhouse-cluster.md.
    pub shards: Vec<Vec<String>>,
    /// The cluster's name in the servers' `remote_servers` (the `Distributed` tables read
    /// through it); required with `shards`.
    pub cluster: String,
}

impl ClickHouse {
    /// Whether croupier writes to a cluster of shards and replicas.
    pub fn is_cluster(&self) -> bool {
        !self.shards.is_empty()
    }

    /// Every server croupier talks to: the replicas of every shard in order, or `addr`.
    pub fn nodes(&self) -> Vec<String> {
        if self.is_cluster() {
            self.shards.iter().flatten().cloned().collect()
        } else {
            vec![self.addr.clone()]
        }
    }
}

impl Default for ClickHouse {
    fn default() -> Self {
        ClickHouse {
            addr: "127.0.0.1:9000".into(),
            database: "default".into(),
            user: "default".into(),
            password: Secret::default(),
            password_file: None,
            compression: true,
            timeout_ms: 30_000,
            max_partitions_per_block: 100,
            fsync_after_insert: true,
            shards: Vec::new(),
            cluster: String::new(),
        }
    }
}

/// The longest `worker.insert_interval_ms` accepted: a minute. Under a heavy load a batch
/// gathers for the interval, its entries pending in Redis (and counted in ingest's
/// backlog) meanwhile, so a longer one would hold rows back from ClickHouse for longer
/// than any reader waits for them.
pub const MAX_INSERT_INTERVAL_MS: u64 = 60_000;

/// The longest `worker.linger_ms` accepted: a minute, as the interval. A batch's first
/// entries wait that long in Redis, pending, and ingest gives a pending entry that long
/// (with the interval and 2 s) before it counts the whole stream against its mark
/// (docs/ingest.md "Retention, trimming and the high-water mark").
pub const MAX_LINGER_MS: u64 = 60_000;

/// The longest `worker.claim_idle_ms`: the entries a dead worker held stay pending, undelivered
/// to the tables and counted in ingest's backlog, that long before another worker claims
/// them; a day is past any insert, and a value beyond what Redis takes as an idle time would
/// make every claim fail.
pub const MAX_CLAIM_IDLE_MS: u64 = 86_400_000;

/// `[worker]`: stream consumers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Worker {
    /// Worker shards (threads); each consumes all three streams.
    pub shards: usize,
    /// Consumer name prefix, stable across restarts; empty means the host name. Shard `i`
    /// consumes as `<prefix>-<i>`.
    pub consumer: String,
    /// Flush when this many rows are buffered.
    pub batch_rows: usize,
    /// Flush when the entries of a batch hold this many bytes; also bounds each read
    /// (docs/worker.md).
    pub batch_bytes: usize,
    /// Flush at most this long after the first buffered row, milliseconds; at most
    /// [`MAX_LINGER_MS`].
    pub linger_ms: u64,
    /// Under a heavy load (rows arriving for a table on a worker shard, over the consumers
    /// that write it, fast enough to fill a tenth of `batch_rows` in this time), each of
    /// those consumers closes its batches at least this long apart,
    /// milliseconds: fewer, larger inserts; a lighter load closes `linger_ms` after the
    /// first row. 0: only `linger_ms`; at most [`MAX_INSERT_INTERVAL_MS`] (docs/worker.md).
    pub insert_interval_ms: u64,
    /// Entries asked for per read (the events consumer, reading the custom stream too, asks
    /// each stream for half).
    pub read_count: usize,
    /// While a batch gathers, a read that returned fewer entries than it asked for is
    /// followed by this pause before the next, milliseconds (never past the batch's
    /// close): at moderate rates a consumer then reads a pause's worth of entries at a
    /// time instead of each entry as it is appended (docs/worker.md). 0: no pause; longer
    /// than the idle block (half `redis.reply_timeout_ms`, at most 1 s): the idle block.
    pub read_pause_ms: u64,
    /// Entries pending longer than this with another consumer are claimed, milliseconds.
    pub claim_idle_ms: u64,
    /// How often to look for entries to claim, milliseconds.
    pub claim_interval_ms: u64,
    /// An entry delivered this many times without being acknowledged is no longer read
    /// with others: each further delivery tries it in a batch of its own (inserted,
    /// counted and acknowledged like any entry, or dead-lettered if unreadable or refused
    /// by ClickHouse); delivered twice this many times, it goes to the dead-letter stream
    /// unread.
    pub max_deliveries: u64,
    /// Longest back-off between retries while ClickHouse fails, milliseconds.
    pub backoff_max_ms: u64,
    /// When ClickHouse refuses more than this many entries of one batch one by one, the
    /// stream stalls (retrying, logged) instead of dead-lettering them.
    pub max_refused_per_batch: usize,
    /// No longer used (dead-letter streams are never trimmed); accepted so older files
    /// still load, and reported by [`Config::warnings`].
    pub dead_letter_maxlen: Option<u64>,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            shards: 1,
            consumer: String::new(),
            batch_rows: 200_000,
            batch_bytes: 64 << 20,
            linger_ms: 200,
            insert_interval_ms: 600,
            read_count: 200,
            read_pause_ms: 25,
            claim_idle_ms: 60_000,
            claim_interval_ms: 5_000,
            max_deliveries: 5,
            backoff_max_ms: 5_000,
            max_refused_per_batch: 10,
            dead_letter_maxlen: None,
        }
    }
}

/// `[aggregate]`: the worker's real-time HyperLogLog figures (docs/aggregation.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aggregate {
    /// Worker shards count players (online, DAU, new, payers) in sketches, merge them
    /// into Croupier's `hll:*` keys and write the aggregate tables (off: rows only).
    pub enabled: bool,
    /// How often a worker shard merges its touched sketches into Redis and reads the
    /// merged figures back, milliseconds. A batch's sketches are also merged before its
    /// entries are acknowledged.
    pub flush_ms: u64,
    /// The aggregate tables are written at most this often per worker shard,
    /// milliseconds (one insert per table, only of figures that changed).
    pub write_ms: u64,
    /// Every sketch a worker shard holds is merged into Redis again this often,
    /// milliseconds (0: never), so that keys Redis lost (a restart without fsync, a
    /// failover) come back; merging again what Redis holds changes nothing.
    pub resend_ms: u64,
    /// The most sketches a worker shard holds at once (16 KiB each): events that would
    /// need another one (a new game/env pair, or a period nothing has counted yet) are
    /// not counted while the shard is at it, and a warning says so. Bounds the memory a
    /// client can make a worker spend by inventing `env` values or spreading timestamps.
    pub max_sketches: usize,
    /// The most sketches (and game/env pairs) one game holds on a worker shard at once:
    /// a game's client inventing `env` values exhausts this share, not the shard's, so
    /// other games' players go on being counted. Refused adds are counted per game
    /// (`croupier_realtime_adds_refused_total`) and logged. Taken as `max_sketches` when
    /// larger; keep it well below it (the default is an eighth).
    pub max_sketches_per_game: usize,
    /// The most environments of one game that have real-time keys in Redis: every
    /// worker's, over the 31 days the keys may live (`croupier:aggregate:envs:<game>`, a
    /// sorted set by the last day each was merged). An environment past it is not counted
    /// in the real-time figures (its sketches are dropped, counted in
    /// `croupier_realtime_adds_refused_total`) until one unseen for 31 days makes room.
    /// Bounds the keys a client inventing `env` values makes Redis keep for 30 days.
    pub max_envs_per_game: usize,
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate {
            enabled: true,
            flush_ms: 1_000,
            write_ms: 5_000,
            resend_ms: 60_000,
            max_sketches: 4_096,
            max_sketches_per_game: 512,
            max_envs_per_game: 32,
        }
    }
}

/// `[control]`: the control listener (`/metrics`, `/healthz`, `/readyz`, the Analytics
/// API and the web dashboard), on a thread of its own, never a data shard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Listen address; empty means no control listener.
    pub listen: String,
    /// Longest wait for Redis or ClickHouse when `/readyz` or `/metrics` asks them,
    /// milliseconds.
    pub probe_timeout_ms: u64,
    /// The built web dashboard (`dashboard/dist`: `index.html` and `assets/`), read at
    /// start and served at `/`; empty means no dashboard. A relative path is taken from
    /// the working directory.
    pub dashboard_dir: String,
    /// A bearer token `/metrics` requires (`Authorization: Bearer <token>`, as Prometheus
    /// sends its scrape job's `authorization: credentials`); unset: `/metrics` is open.
    pub metrics_token: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            listen: "0.0.0.0:8081".into(),
            probe_timeout_ms: 1_000,
            dashboard_dir: "dashboard/dist".into(),
            metrics_token: None,
        }
    }
}

/// `[api]`: the Analytics API (`/api/analytics/*` on the control listener): who may read
/// it (JWT), how its ClickHouse reads are bounded, and its audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// HS256 secret of bearer tokens (Croupier's `Auth.JWTSecret`); empty: HS256 tokens
    /// are refused.
    pub jwt_secret: String,
    /// A file holding the HS256 secret (trailing newline ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// A JWKS file (`{"keys":[...]}`) whose RSA keys verify RS256 tokens (by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Permissions of each role (`analytics:read`, `analytics:manage`,
    /// `analytics:export`); roles not listed grant nothing. `admin` and `super_admin`
    /// are given every permission unless listed here.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Longest a ClickHouse read may take, milliseconds (then 504).
    pub query_timeout_ms: u64,
    /// ClickHouse reads in flight at once (connections of the control thread), one
    /// request at most half of them (at least one); more wait up to `query_timeout_ms`,
    /// then 503.
    pub max_queries_in_flight: usize,
    /// Most memory one ClickHouse read may take on the server, bytes
    /// (`max_memory_usage`; 0: the server's own limit). A read past it is refused 400.
    pub max_query_memory_bytes: u64,
    /// Audit rows are written at least this often, milliseconds.
    pub audit_flush_ms: u64,
    /// Most audit rows held before the oldest are dropped (counted in the log).
    pub audit_max_pending: usize,
    /// Where `POST /api/analytics/filters` keeps its settings (JSON); unset: in memory.
    pub filters_file: Option<PathBuf>,
    /// Cost per install in cents by acquisition channel, for `/api/analytics/attribution`
    /// (CPI and ROAS): keys `"<channel>"`, or `"<game>/<channel>"` for one game (first).
    pub cpi_cents: BTreeMap<String, u64>,
    /// The token agents send as `X-Agent-Token` to read `GET /api/agent/analytics_filters`
    /// (Croupier's `AGENT_META_TOKEN`); unset: that route answers 503.
    pub agent_token: Option<String>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            jwt_secret: String::new(),
            jwt_secret_file: None,
            jwks_file: None,
            roles: BTreeMap::new(),
            query_timeout_ms: 10_000,
            max_queries_in_flight: 4,
            max_query_memory_bytes: 2 << 30,
            audit_flush_ms: 1_000,
            audit_max_pending: 100_000,
            filters_file: None,
            cpi_cents: BTreeMap::new(),
            agent_token: None,
        }
    }
}

/// `[otlp]`: the OTLP/HTTP and OTLP/gRPC receivers on the data shards (`docs/otlp.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Otlp {
    /// Listen address of OTLP/HTTP (`/v1/logs`, `/v1/traces`), a second listener on every
    /// shard (SO_REUSEPORT, as the data port); empty means none.
    pub listen: String,
    /// Listen address of OTLP/gRPC (`LogsService/Export`, `TraceService/Export`, HTTP/2
    /// without TLS), a third listener on every shard; empty means none.
    pub grpc_listen: String,
    /// Span names that are events besides Croupier's event types: exact names, or
    /// prefixes with a trailing `*` (`match.*`).
    pub span_events: Vec<String>,
}

impl Default for Otlp {
    fn default() -> Self {
        Otlp { listen: "0.0.0.0:4318".into(), grpc_listen: "0.0.0.0:4317".into(), span_events: Vec::new() }
    }
}

/// What client ingest does with an event outside a game's allow-list (`filters.events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FilteredEvents {
    /// Leave the event out and store the rest of the batch (`202`, counted as dropped).
    #[default]
    Drop,
    /// Refuse the whole batch (`403 not_allowed`, naming the record).
    Refuse,
}

/// `[client]`: client ingest (`/api/analytics/ingest`, `/api/analytics/payments/ingest`
/// on the data port): the limits of public write keys and how the games' filters apply
/// (`docs/sdk.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Client {
    /// Events per second one public write key may send (whole process); 0 is unlimited.
    pub key_rate_eps: u64,
    /// Events per second one client address may send with public write keys (whole
    /// process; addresses share a fixed table of cells by hash); 0 is unlimited.
    pub address_rate_eps: u64,
    /// `drop` or `refuse` an event outside the game's allow-list.
    pub filtered_events: FilteredEvents,
    /// How often a shard looks at `api.filters_file` for changes, milliseconds.
    pub filters_check_ms: u64,
    /// `Access-Control-Max-Age` of answers to CORS preflights, seconds.
    pub preflight_max_age_secs: u64,
    /// Proxies whose `X-Forwarded-For` names the client address (addresses or networks,
    /// `10.0.0.7`, `10.0.0.0/8`): a request from one of them is limited by the right-most
    /// address of that header not listed here. Empty: the TCP peer is the client.
    pub trusted_proxies: TrustedProxies,
    /// Longest body of a public write key's request, as sent and once decompressed,
    /// bytes (the server's limits apply too, `server.max_body_bytes` and
    /// `server.max_decompressed_bytes`): what a page's request may make a shard read,
    /// inflate and parse. The SDK's requests stay under 64 KiB.
    pub max_body_bytes: usize,
}

/// Whether `o` is an origin as a browser serialises it in `Origin` (what
/// `allowed_origins` is compared with, byte for byte): `scheme://host[:port]`, lower
/// case, no path, no default port of `http`/`https`; or `null` (sandboxed and `file:`
/// pages).
fn is_serialised_origin(o: &str) -> bool {
    if o == "null" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 host's colons are inside its brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.[]:".contains(&b))
        && (host.starts_with('[') == host.ends_with(']'));
    let port_ok = match port {
        None => true,
        Some(p) => {
            let default = matches!((scheme, p), ("http", "80") | ("https", "443"));
            !p.is_empty() && !p.starts_with('0') && p.parse::<u16>().is_ok() && !default
        }
    };
    scheme_ok && host_ok && port_ok
}

/// `client.trusted_proxies`: addresses and networks of the proxies in front of the data
/// port, read from `"10.0.0.7"` or `"10.0.0.0/8"` (IPv4 or IPv6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether none is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of them (an IPv4 address mapped into IPv6, `::ffff:a.b.c.d`,
    /// as its IPv4 form).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "expected an IP address or network (10.0.0.7, 10.0.0.0/8, fd00::/8), not {s:?}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl Default for Client {
    fn default() -> Self {
        Client {
            key_rate_eps: 200,
            address_rate_eps: 50,
            filtered_events: FilteredEvents::Drop,
            filters_check_ms: 1_000,
            preflight_max_age_secs: 600,
            trusted_proxies: TrustedProxies::default(),
            max_body_bytes: 1 << 20,
        }
    }
}

/// `[metrics]`: what the shards count.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Shards count requests, events and inserts (off: `/metrics` has only the gauges
    /// read at scrape time; for measuring what counting costs).
    pub enabled: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { enabled: true }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event, fields as `key=value`.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, fields).
    Json,
}

/// `[log]`: structured logs on standard error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A level (`error` … `trace`) or a filter (`info,croupier_dataplane::worker=debug`);
    /// `RUST_LOG` overrides it when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: LogFormat::Text }
    }
}

/// `[games.<id>]`: one game allowed to ingest.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Game {
    /// The HMAC secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the HMAC secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Events per second this game may send (whole process); 0 is unlimited.
    #[serde(default)]
    pub rate_limit_eps: u64,
    /// Also accept a gzip body whose signature covers the decompressed JSON. Off by
    /// default: such a body must be inflated before its signature can be checked, which
    /// lets anyone who knows the game id make the server decompress.
    #[serde(default)]
    pub gzip_signed_after: bool,
    /// The bearer token of OTLP exports for this game (`Authorization: Bearer ...`); none
    /// means the game cannot export OTLP.
    #[serde(default)]
    pub otlp_token: Option<String>,
    /// A file holding the OTLP bearer token (trailing newline ignored).
    #[serde(default)]
    pub otlp_token_file: Option<PathBuf>,
    /// Public write keys of client ingest (browsers, game clients): they can only append
    /// events of this game, within `[client]`'s rates and the game's filters.
    #[serde(default)]
    pub write_keys: Vec<String>,
    /// Write keys taken out of use: refused with `401 revoked_key`.
    #[serde(default)]
    pub revoked_write_keys: Vec<String>,
    /// Origins (`https://game.example`) whose pages may send with the game's write keys;
    /// empty: any origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Payments may be sent with a public write key (off: only with a bearer token).
    #[serde(default)]
    pub public_payments: bool,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener and shards.
    pub server: Server,
    /// Request signatures.
    pub auth: Auth,
    /// Redis.
    pub redis: Redis,
    /// Streams.
    pub streams: Streams,
    /// ClickHouse.
    pub clickhouse: ClickHouse,
    /// Stream consumers.
    pub worker: Worker,
    /// Real-time aggregation in the worker.
    pub aggregate: Aggregate,
    /// Games by id.
    pub games: BTreeMap<String, Game>,
    /// The control listener.
    pub control: Control,
    /// What the shards count.
    pub metrics: Metrics,
    /// The OTLP receiver.
    pub otlp: Otlp,
    /// Client ingest: write keys' limits and filters.
    pub client: Client,
    /// Logs.
    pub log: Log,
    /// The Analytics API.
    pub api: Api,
    /// `CROUPIER_*` variables that look like mistyped overrides (ignored, reported by
    /// [`Config::warnings`]).
    #[serde(skip)]
    pub ignored_variables: Vec<String>,
    /// The keys set from the environment, to name the variable in a later error.
    #[serde(skip)]
    overrides: Overrides,
}

impl Config {
    /// Settings that are accepted but have no effect, one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let r = &self.redis;
        let sentinel_keys = r.sentinel_username.is_some() || r.sentinel_password.is_some();
        if r.sentinels.is_empty() && (sentinel_keys || r.sentinel_password_file.is_some()) {
            w.push(
                "redis.sentinel_username / sentinel_password / sentinel_password_file are set but \
                 redis.sentinels is not: they are not used"
                    .to_owned(),
            );
        }
        if r.sentinels.is_empty() && r.master_name != Redis::default().master_name {
            w.push(format!("redis.master_name is {:?} but redis.sentinels is not set: it is not used", r.master_name));
        }
        if self.streams.batch_events.is_some() {
            w.push(
                "streams.batch_events is no longer used: each stream's events per entry are measured \
                 (docs/ingest.md); remove it"
                    .to_owned(),
            );
        }
        for name in &self.ignored_variables {
            let rest = name.strip_prefix(ENV_PREFIX).unwrap_or(name);
            let meant = match rest.split_once('_') {
                Some((section, key)) => format!("{ENV_PREFIX}{section}__{key}"),
                None => format!("{ENV_PREFIX}<SECTION>__<KEY>"),
            };
            w.push(format!(
                "environment variable {name} is ignored: overrides are {ENV_PREFIX}<SECTION>__<KEY>, with two \
                 underscores after the section ({meant}?)"
            ));
        }
        if self.worker.dead_letter_maxlen.is_some() {
            w.push(
                "worker.dead_letter_maxlen is no longer used: dead-letter streams are never trimmed \
                 (docs/worker.md); remove it"
                    .to_owned(),
            );
        }
        w
    }

    /// Loads `path` (or defaults when `None`), applies `CROUPIER_*` overrides from `env`,
    /// reads secret files and checks the result.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| err(p.display().to_string(), e.to_string()))?;
                text.parse::<toml::Table>().map_err(|e| err(p.display().to_string(), syntax_error(&text, &e)))?
            }
            None => toml::Table::new(),
        };
        let mut overrides = Overrides::default();
        // Each override's path and value as written.
        let mut raw_values: Vec<(String, String)> = Vec::new();
        let mut ignored = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if name == ENV_CONFIG_PATH {
                continue;
            }
            if !rest.contains("__") {
                // Not an override: another program's variable, unless it starts like one.
                let lower = rest.to_ascii_lowercase();
                if SECTIONS.iter().any(|s| lower.strip_prefix(s).is_some_and(|r| r.starts_with('_'))) {
                    ignored.push(name);
                }
                continue;
            }
            match apply_override(&mut root, rest, &value) {
                Ok(path) => {
                    raw_values.push((path.clone(), value));
                    overrides.0.push((path, name));
                }
                Err(mut e) => {
                    e.variable = Some(name);
                    return Err(e);
                }
            }
        }
        ignored.sort();
        let mut config = loop {
            match Self::from_table(root.clone()) {
                Ok(c) => break c,
                // A text key given digits or `true` from the environment (a consumer
                // named 7, a database 2024): the value as written, as text.
                Err(e) if e.message.contains("expected a string") => {
                    let raw = raw_values.iter().rev().find(|(path, _)| *path == e.key).map(|(_, v)| v.as_str());
                    match raw {
                        Some(raw) if set_text(&mut root, &e.key, raw) => continue,
                        _ => return Err(overrides.attribute(e)),
                    }
                }
                Err(e) => return Err(overrides.attribute(e)),
            }
        };
        config.ignored_variables = ignored;
        config.overrides = overrides;
        Ok(config)
    }

    /// Parses a TOML document (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let root = text.parse::<toml::Table>().map_err(|e| err("<toml>", syntax_error(text, &e)))?;
        Self::from_table(root)
    }

    /// Reads the merged document, its secret files, and checks the result.
    fn from_table(root: toml::Table) -> Result<Config, ConfigError> {
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
            let key = e.path().to_string();
            if is_secret(&key) {
                // The message would quote the value ("invalid type: integer `123456`").
                err(key, "must be text, in quotes (the value is not shown: it is a secret)")
            } else {
                err(key, out_of_range(e.inner().to_string()))
            }
        })?;
        config.resolve_secrets()?;
        config.check()?;
        // `0` (one shard per core) is resolved once, here: the ingest shards, their
        // readiness slots and the workers' consumer names beside them count the same.
        config.server.shards = config.shard_count();
        Ok(config)
    }

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = &self.clickhouse.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| err("clickhouse.password_file", format!("{}: {e}", file.display())))?;
            self.clickhouse.password = Secret::from(text.trim_end_matches(['\n', '\r']));
        }
        let r = &mut self.redis;
        resolve_password("redis.", &mut r.password, r.password_file.as_deref(), r.username.as_deref())?;
        resolve_password(
            "redis.sentinel_",
            &mut r.sentinel_password,
            r.sentinel_password_file.as_deref(),
            r.sentinel_username.as_deref(),
        )?;
        if let Some(file) = &self.api.jwt_secret_file {
            if !self.api.jwt_secret.is_empty() {
                return Err(err("api.jwt_secret_file", "set `jwt_secret` or `jwt_secret_file`, not both"));
            }
            let text = std::fs::read_to_string(file)
                .map_err(|e| err("api.jwt_secret_file", format!("{}: {e}", file.display())))?;
            self.api.jwt_secret = text.trim_end_matches(['\n', '\r']).to_owned();
        }
        for (key, token) in
            [("control.metrics_token", &self.control.metrics_token), ("api.agent_token", &self.api.agent_token)]
        {
            if token.as_deref().is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic())) {
                return Err(err(key, "expected at least 16 printable ASCII characters without spaces"));
            }
        }
        for (id, game) in &mut self.games {
            let key = format!("games.{id}");
            match (&game.secret, &game.secret_file) {
                (Some(_), Some(_)) => return Err(err(key, "set `secret` or `secret_file`, not both")),
                (None, None) => return Err(err(key, "needs `secret` or `secret_file`")),
                (None, Some(file)) => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| err(format!("{key}.secret_file"), format!("{}: {e}", file.display())))?;
                    game.secret = Some(text.trim_end_matches(['\n', '\r']).to_owned());
                }
                (Some(_), None) => {}
            }
            if game.secret.as_deref().is_some_and(str::is_empty) {
                return Err(err(format!("{key}.secret"), "must not be empty"));
            }
            match (&game.otlp_token, &game.otlp_token_file) {
                (Some(_), Some(_)) => return Err(err(key, "set `otlp_token` or `otlp_token_file`, not both")),
                (None, Some(file)) => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| err(format!("{key}.otlp_token_file"), format!("{}: {e}", file.display())))?;
                    game.otlp_token = Some(text.trim_end_matches(['\n', '\r']).to_owned());
                }
                _ => {}
            }
            if game.otlp_token.as_deref().is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic())) {
                return Err(err(
                    format!("{key}.otlp_token"),
                    "expected at least 16 printable ASCII characters without spaces",
                ));
            }
        }
        Ok(())
    }

    /// Refuses two listeners on one port of one address (or of every address): the second
    /// would fail to bind when the process starts, or, as the data and OTLP listeners bind
    /// with `SO_REUSEPORT`, silently share the port with the first. Checked by the roles
    /// that bind them all (`ingest`, `run`): a worker binds only `control.listen`.
    pub fn listeners_apart(&self) -> Result<(), ConfigError> {
        self.listeners_clash().map_err(|e| self.overrides.attribute(e))
    }

    fn listeners_clash(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("server.listen", &self.server.listen),
            ("control.listen", &self.control.listen),
            ("otlp.listen", &self.otlp.listen),
            ("otlp.grpc_listen", &self.otlp.grpc_listen),
        ];
        let addrs: Vec<(&str, std::net::SocketAddr)> =
            listeners.iter().filter_map(|(k, a)| Some((*k, a.parse::<std::net::SocketAddr>().ok()?))).collect();
        // `[::ffff:127.0.0.1]` is 127.0.0.1 (an IPv4-mapped address).
        let ip = |a: &std::net::SocketAddr| a.ip().to_canonical();
        for (i, (key, a)) in addrs.iter().enumerate() {
            // Port 0 is one the system picks, a new one per listener.
            let clash = addrs[..i].iter().find(|(_, b)| {
                a.port() != 0
                    && a.port() == b.port()
                    && (ip(a) == ip(b) || ip(a).is_unspecified() || ip(b).is_unspecified())
            });
            if let Some((other, _)) = clash {
                return Err(err(*key, format!("{a} is {other}'s port too: each listener needs a port of its own")));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err("server.listen", "expected an address like 0.0.0.0:8080"));
        }
        for (key, size) in [
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("server.max_decompressed_bytes", self.server.max_decompressed_bytes),
        ] {
            if size == 0 || size > MAX_BODY_BYTES {
                return Err(err(
                    key,
                    format!(
                        "expected a size from 1 to {MAX_BODY_BYTES} bytes (256 MiB: a body becomes stream entries \
                         of about its size, which Redis takes up to 512 MB)"
                    ),
                ));
            }
        }
        if self.auth.max_skew_secs == 0 {
            return Err(err(
                "auth.max_skew_secs",
                "expected 1 or more seconds (a request's timestamp is never exactly the server's clock)",
            ));
        }
        if self.auth.max_skew_secs > MAX_SKEW_SECS {
            return Err(err(
                "auth.max_skew_secs",
                format!("expected at most {MAX_SKEW_SECS} seconds (a day: a nonce is kept twice as long, plus 2 s)"),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(err("server.max_connections", "expected a count greater than 0 (connections per shard)"));
        }
        if self.server.max_inflight_body_bytes == 0 {
            return Err(err(
                "server.max_inflight_body_bytes",
                "expected bytes per shard greater than 0 (a shard always has room for one body at max_body_bytes)",
            ));
        }
        if !self.control.listen.is_empty() && self.control.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err("control.listen", "expected an address like 0.0.0.0:8081, or \"\" for none"));
        }
        if let Err(e) = crate::logging::filter(&self.log, None) {
            return Err(err(
                "log.level",
                format!("expected a level or a filter (info, warn, info,croupier_dataplane=debug): {e}"),
            ));
        }
        // Values 0 would mean nothing sensible: a timeout at once, a loop without pause, no room.
        let w = &self.worker;
        for (key, value, what) in [
            ("server.read_timeout_ms", self.server.read_timeout_ms, "a timeout"),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms, "a timeout"),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms, "a timeout"),
            ("redis.reply_timeout_ms", self.redis.reply_timeout_ms, "a timeout"),
            ("redis.backlog_poll_ms", self.redis.backlog_poll_ms, "an interval"),
            ("redis.retry_after_secs", self.redis.retry_after_secs, "a delay"),
            ("clickhouse.timeout_ms", self.clickhouse.timeout_ms, "a timeout"),
            ("worker.shards", w.shards as u64, "a count"),
            ("worker.batch_rows", w.batch_rows as u64, "a count"),
            ("worker.read_count", w.read_count as u64, "a count"),
            ("worker.claim_idle_ms", w.claim_idle_ms, "a time"),
            ("worker.claim_interval_ms", w.claim_interval_ms, "an interval"),
            ("worker.backoff_max_ms", w.backoff_max_ms, "a delay"),
            ("api.query_timeout_ms", self.api.query_timeout_ms, "a timeout"),
            ("api.max_queries_in_flight", self.api.max_queries_in_flight as u64, "a count"),
            ("api.audit_flush_ms", self.api.audit_flush_ms, "an interval"),
            ("api.audit_max_pending", self.api.audit_max_pending as u64, "a count"),
        ] {
            if value == 0 {
                return Err(err(key, format!("expected {what} greater than 0")));
            }
        }
        for (key, value) in [("server.shards", self.server.shards), ("worker.shards", w.shards)] {
            if value > MAX_SHARDS {
                return Err(err(
                    key,
                    format!("expected at most {MAX_SHARDS} shards (each is a thread; more than the machine's cores only contend)"),
                ));
            }
        }
        // `redis.addr` is unused with cluster seed nodes or sentinels; `clickhouse.addr` with shards.
        let direct = self.redis.cluster.is_empty() && self.redis.sentinels.is_empty();
        // One server each: ClickHouse's replicas are listed per shard (`clickhouse.shards`);
        // a list here would spread rows over servers that share nothing.
        for (key, addr, used) in [
            ("redis.addr", &self.redis.addr, direct),
            ("clickhouse.addr", &self.clickhouse.addr, !self.clickhouse.is_cluster()),
        ] {
            if used && addr.contains(',') {
                let instead = if key == "clickhouse.addr" {
                    "a server's replicas are listed in clickhouse.shards with clickhouse.cluster: \
                     docs/clickhouse-cluster.md"
                } else {
                    "several servers are redis.cluster seed nodes or redis.sentinels: docs/redis-topologies.md"
                };
                return Err(err(key, format!("expected one host:port, not the list {addr:?} ({instead})")));
            }
            // ClickHouse's client trims the address; Redis's takes it as given.
            let addr_as_read = if key == "clickhouse.addr" { addr.trim() } else { addr.as_str() };
            if used && !is_host_port(addr_as_read) {
                return Err(err(key, format!("expected host:port (a port from 1 to 65535), not {addr:?}")));
            }
        }
        for (key, list) in [("redis.cluster", &self.redis.cluster), ("redis.sentinels", &self.redis.sentinels)] {
            if let Some(bad) = list.iter().find(|a| !is_host_port(a)) {
                return Err(err(key, format!("expected host:port entries (a port from 1 to 65535), not {bad:?}")));
            }
            if let Some((i, twice)) = list.iter().enumerate().find(|(i, a)| list[..*i].contains(a)) {
                return Err(err(key, format!("entry {i}, {twice:?}, is listed twice: each server once")));
            }
        }
        for (role, perms) in &self.api.roles {
            if let Some(p) =
                perms.iter().find(|p| !matches!(p.as_str(), "analytics:read" | "analytics:manage" | "analytics:export"))
            {
                return Err(err(
                    format!("api.roles.{role}"),
                    format!("unknown permission {p:?}: expected analytics:read, analytics:manage or analytics:export"),
                ));
            }
        }
        let mut keys = std::collections::BTreeSet::new();
        for (id, g) in &self.games {
            for k in g.write_keys.iter().chain(&g.revoked_write_keys) {
                if k.len() < 16 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err(err(
                        format!("games.{id}.write_keys"),
                        "expected keys of at least 16 characters from A-Z a-z 0-9 _ - (they travel in URLs)",
                    ));
                }
                if !keys.insert(k.as_str()) {
                    return Err(err(format!("games.{id}.write_keys"), format!("key {k:?} is listed twice")));
                }
            }
        }
        // A write key ships in every page of its game: one that is also a secret — a
        // game's HMAC secret (the unfiltered signed routes), the API's JWT secret (bearer
        // tokens with any role), the agents' or metrics' token, a server's password, or an
        // OTLP token (checked below) — would publish it. (The secret is not named.)
        let mut secrets: Vec<(String, &str)> = self
            .games
            .iter()
            .filter_map(|(id, g)| Some((format!("the HMAC secret of games.{id}"), g.secret.as_deref()?)))
            .collect();
        secrets.push(("api.jwt_secret".into(), self.api.jwt_secret.as_str()));
        if let Some(t) = self.api.agent_token.as_deref() {
            secrets.push(("api.agent_token".into(), t));
        }
        if let Some(t) = self.control.metrics_token.as_deref() {
            secrets.push(("control.metrics_token".into(), t));
        }
        if let Some(p) = &self.redis.password {
            secrets.push(("redis.password".into(), p.expose()));
        }
        secrets.push(("clickhouse.password".into(), self.clickhouse.password.expose()));
        if let Some((what, secret)) = secrets.iter().find(|(_, s)| !s.is_empty() && keys.contains(s)) {
            let listed = self.games.iter().find_map(|(id, o)| {
                let list = if o.write_keys.iter().any(|k| k == secret) {
                    "write_keys"
                } else if o.revoked_write_keys.iter().any(|k| k == secret) {
                    "revoked_write_keys"
                } else {
                    return None;
                };
                Some(format!("games.{id}.{list}"))
            });
            return Err(err(
                listed.unwrap_or_else(|| "games.<id>.write_keys".into()),
                format!("a key is {what}: write keys are public, a secret must not be one"),
            ));
        }
        for (id, g) in &self.games {
            if let Some(bad) = g.allowed_origins.iter().find(|o| !is_serialised_origin(o)) {
                return Err(err(
                    format!("games.{id}.allowed_origins"),
                    format!(
                        "expected origins as browsers send them, scheme://host[:port] in lower case, without a path, \
                         a trailing slash or the scheme's default port (\"https://play.example.com\"), or \"null\"; not {bad:?}"
                    ),
                ));
            }
        }
        if self.client.max_body_bytes == 0 {
            return Err(err("client.max_body_bytes", "expected a size greater than 0"));
        }
        if self.client.filters_check_ms == 0 {
            return Err(err("client.filters_check_ms", "expected an interval greater than 0"));
        }
        if self.control.probe_timeout_ms == 0 {
            return Err(err("control.probe_timeout_ms", "expected a timeout greater than 0"));
        }
        if self.redis.max_queued_bytes == 0 {
            return Err(err("redis.max_queued_bytes", "expected a size greater than 0"));
        }
        if !(1..=1_000).contains(&self.redis.ingest_group_max) {
            return Err(err("redis.ingest_group_max", "expected 1 to 1000 requests"));
        }
        if self.redis.ingest_lease_ms != 0 && self.redis.ingest_lease_ms < self.redis.min_lease_ms() {
            return Err(err(
                "redis.ingest_lease_ms",
                format!(
                    "expected 0 (the default) or at least three times reply_timeout_ms plus 2000 ({})",
                    self.redis.min_lease_ms()
                ),
            ));
        }
        if self.redis.wait_replicas > 0 && self.redis.wait_timeout_ms == 0 {
            // `WAIT n 0` blocks for ever: a replica down would hold every request.
            return Err(err("redis.wait_timeout_ms", "expected a timeout greater than 0 when wait_replicas is set"));
        }
        if !self.redis.cluster.is_empty() && !self.redis.sentinels.is_empty() {
            return Err(err("redis.cluster", "expected either cluster seed nodes or sentinels, not both"));
        }
        if !self.redis.cluster.is_empty() && self.redis.cluster_refresh_ms == 0 {
            return Err(err("redis.cluster_refresh_ms", "expected an interval greater than 0"));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.streams.partitions) {
            return Err(err("streams.partitions", format!("expected 1 to {MAX_PARTITIONS} partitions")));
        }
        // One partition keeps Croupier's plain key names, whose slots differ: the ingest
        // script's keys would span slots (CROSSSLOT) and every request would be refused.
        if !self.redis.cluster.is_empty() && self.streams.partitions < 2 {
            return Err(err(
                "streams.partitions",
                "expected 2 or more partitions with redis.cluster (one partition keeps Croupier's key names, which span slots)",
            ));
        }
        if !self.redis.sentinels.is_empty() && self.redis.master_name.is_empty() {
            return Err(err("redis.master_name", "expected the primary's name at the sentinels"));
        }
        // A drain longer than any orchestrator's grace period is a typo (seconds written as
        // milliseconds twice over): the process would be killed while it still drains.
        if self.server.drain_delay_ms > MAX_DRAIN_DELAY_MS {
            return Err(err(
                "server.drain_delay_ms",
                format!("expected at most {MAX_DRAIN_DELAY_MS} (ten minutes), milliseconds"),
            ));
        }
        if self.server.max_records == 0 {
            return Err(err("server.max_records", "expected a count greater than 0"));
        }
        if self.server.max_records as f64 > croupier_protocol::stream::MAX_ENTRY_MEAN {
            return Err(err(
                "server.max_records",
                format!(
                    "expected at most {} (a stream's mean events per entry above it is taken for a damaged key)",
                    croupier_protocol::stream::MAX_ENTRY_MEAN
                ),
            ));
        }
        for (name, l) in
            [("events", self.streams.events), ("custom", self.streams.custom), ("payments", self.streams.payments)]
        {
            if l.retention_events < 2 {
                return Err(err(format!("streams.{name}.retention_events"), "expected 2 or more events"));
            }
            if l.high_water_events == 0 || l.high_water_events >= l.retention_events {
                return Err(err(
                    format!("streams.{name}.high_water_events"),
                    format!(
                        "expected a mark above 0 and below the retention ({} events), so trimming never \
                         deletes what the consumer group has not read",
                        l.retention_events
                    ),
                ));
            }
        }
        if self.aggregate.flush_ms == 0 {
            return Err(err("aggregate.flush_ms", "expected 1 or more"));
        }
        if self.aggregate.write_ms == 0 {
            return Err(err("aggregate.write_ms", "expected 1 or more"));
        }
        if self.aggregate.max_sketches < 16 {
            return Err(err("aggregate.max_sketches", "expected 16 or more"));
        }
        if self.aggregate.max_sketches_per_game < 16 {
            return Err(err("aggregate.max_sketches_per_game", "expected 16 or more"));
        }
        if !(1..=100_000).contains(&self.aggregate.max_envs_per_game) {
            return Err(err("aggregate.max_envs_per_game", "expected 1 to 100000"));
        }
        if self.clickhouse.max_partitions_per_block == 0 {
            return Err(err("clickhouse.max_partitions_per_block", "expected 1 or more"));
        }
        if !self.clickhouse.is_cluster() && !self.clickhouse.cluster.is_empty() {
            return Err(err(
                "clickhouse.cluster",
                "given without clickhouse.shards (the cluster's shards and their replicas): set both, or neither to \
                 write to clickhouse.addr",
            ));
        }
        if self.clickhouse.is_cluster() {
            let ch = &self.clickhouse;
            if ch.shards.iter().any(|s| s.is_empty() || s.iter().any(|a| !is_host_port(a.trim()))) {
                return Err(err("clickhouse.shards", "every shard lists one or more replicas, each one host:port"));
            }
            let nodes = ch.nodes();
            let ids: Vec<String> = nodes.iter().map(|a| server_id(a)).collect();
            if let Some(twice) = nodes.iter().enumerate().find_map(|(i, a)| ids[..i].contains(&ids[i]).then_some(a)) {
                return Err(err(
                    "clickhouse.shards",
                    format!("{twice} is listed twice: each server holds one replica of one shard"),
                ));
            }
            let name_ok = ch.cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ch.cluster.is_empty() || !name_ok {
                return Err(err(
                    "clickhouse.cluster",
                    "with clickhouse.shards: the cluster's name in remote_servers (letters, digits, _ and -)",
                ));
            }
        }
        if self.worker.batch_bytes < 1 << 20 {
            return Err(err("worker.batch_bytes", "expected at least 1048576 (1 MiB)"));
        }
        if self.worker.max_deliveries < 2 {
            return Err(err("worker.max_deliveries", "expected 2 or more"));
        }
        if self.worker.insert_interval_ms > MAX_INSERT_INTERVAL_MS {
            return Err(err(
                "worker.insert_interval_ms",
                format!(
                    "expected at most {MAX_INSERT_INTERVAL_MS} (ms): under a heavy load entries wait that long \
                     in Redis, pending, before their insert"
                ),
            ));
        }
        if self.worker.linger_ms > MAX_LINGER_MS {
            return Err(err(
                "worker.linger_ms",
                format!(
                    "expected at most {MAX_LINGER_MS} (ms): a batch's first entries wait that long in Redis, \
                     pending, before their insert"
                ),
            ));
        }
        if self.worker.claim_idle_ms > MAX_CLAIM_IDLE_MS {
            return Err(err(
                "worker.claim_idle_ms",
                format!(
                    "expected at most {MAX_CLAIM_IDLE_MS} (ms, a day): the entries a dead worker held stay \
                     pending that long before another worker claims them"
                ),
            ));
        }
        let held = self.worker.insert_interval_ms.saturating_add(self.worker.linger_ms);
        if held.saturating_mul(2) >= self.worker.claim_idle_ms {
            // Named after the larger of the two (the one likely set).
            let key = if self.worker.linger_ms > self.worker.insert_interval_ms {
                "worker.linger_ms"
            } else {
                "worker.insert_interval_ms"
            };
            return Err(err(
                key,
                format!(
                    "worker.insert_interval_ms + worker.linger_ms ({held} ms) must be less than half of \
                     worker.claim_idle_ms ({} ms): a batch's first entries stay pending that long before their \
                     insert, and another worker would claim them",
                    self.worker.claim_idle_ms
                ),
            ));
        }
        if self.worker.backoff_max_ms.saturating_mul(2) >= self.worker.claim_idle_ms {
            return Err(err(
                "worker.backoff_max_ms",
                format!(
                    "must be less than half of worker.claim_idle_ms ({} ms): a batch stalled by a fault every \
                     worker meets is kept between retries, and a longer wait lets other workers claim it, each \
                     claim counting a delivery, until it is dead-lettered",
                    self.worker.claim_idle_ms
                ),
            ));
        }
        for id in self.games.keys() {
            if id.is_empty() || id.len() > 64 {
                return Err(err(format!("games.{id}"), "game ids are 1 to 64 bytes"));
            }
            // Redis keys are `<prefix>:<game>:<…>` (nonces, sketches): a `:` would let two
            // games' keys meet; braces are Redis Cluster's hash tags, kept out of key parts.
            if !id.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'{' | b'}')) {
                return Err(err(
                    format!("games.{id}"),
                    "game ids are visible ASCII (no space) without ':', '{' or '}' (they are parts of Redis keys)",
                ));
            }
        }
        let mut tokens: Vec<(&str, &str)> =
            self.games.iter().filter_map(|(id, g)| Some((g.otlp_token.as_deref()?, id.as_str()))).collect();
        tokens.sort();
        if let Some(w) = tokens.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(err(format!("games.{}.otlp_token", w[1].1), format!("the same token as games.{}", w[0].1)));
        }
        // Write keys ship in web pages: one that is also an OTLP token would give every page
        // reader a server's credential (no origin check, no per-key rate, no filters).
        for (token, id) in &tokens {
            let public = |g: &Game| g.write_keys.iter().chain(&g.revoked_write_keys).any(|k| k == token);
            if let Some((other, _)) = self.games.iter().find(|(_, g)| public(g)) {
                return Err(err(
                    format!("games.{id}.otlp_token"),
                    format!("the same string as a write key of games.{other}: write keys are public, an OTLP token is a server's secret"),
                ));
            }
        }
        if !self.otlp.listen.is_empty() && self.otlp.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err("otlp.listen", "expected an address like 0.0.0.0:4318, or \"\" for none"));
        }
        if !self.otlp.grpc_listen.is_empty() && self.otlp.grpc_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err("otlp.grpc_listen", "expected an address like 0.0.0.0:4317, or \"\" for none"));
        }
        Ok(())
    }

    /// The worker's consumer name prefix: configured, else the host name.
    pub fn consumer_prefix(&self) -> String {
        if !self.worker.consumer.is_empty() {
            return self.worker.consumer.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "croupier".into())
    }

    /// Number of data shards, resolving 0 to the number of available cores.
    pub fn shard_count(&self) -> usize {
        if self.server.shards > 0 {
            self.server.shards
        } else {
            std::thread::available_parallelism().map(usize::from).unwrap_or(1).min(MAX_SHARDS)
        }
    }
}

/// Reads `<prefix>password_file` into `<prefix>password` (one or the other, not both;
/// trailing newline trimmed) and checks that a `<prefix>username` comes with a password.
fn resolve_password(
    prefix: &str,
    password: &mut Option<Secret>,
    file: Option<&Path>,
    username: Option<&str>,
) -> Result<(), ConfigError> {
    let (key, file_key, user_key) =
        (format!("{prefix}password"), format!("{prefix}password_file"), format!("{prefix}username"));
    match (&password, file) {
        (Some(_), Some(_)) => return Err(err(file_key.as_str(), format!("set `{key}` or `{file_key}`, not both"))),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| err(file_key.as_str(), format!("{}: {e}", file.display())))?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                return Err(err(file_key.as_str(), format!("{}: the file is empty", file.display())));
            }
            *password = Some(Secret::from(text));
        }
        (Some(p), None) if p.expose().is_empty() => {
            return Err(err(key, "must not be empty (leave it out when the server needs no AUTH)"));
        }
        _ => {}
    }
    match username {
        Some("") => Err(err(user_key, "must not be empty (leave it out for the `default` user)")),
        Some(_) if password.is_none() => Err(err(user_key.as_str(), format!("needs `{key}` or `{file_key}`"))),
        _ => Ok(()),
    }
}

/// Keys whose environment override is taken as written, never read as a TOML value: a
/// password such as `123456` or `true` stays that text, and so does a log level `5`. The secrets among them
/// ([`is_secret`]) are also never quoted by an error.
const VERBATIM: [&str; 3] = ["redis.username", "redis.sentinel_username", "log.level"];

/// Secret keys: their value is taken as text from the environment and never quoted by an
/// error (a TOML value of another type is refused naming the key only).
const SECRETS: [&str; 6] = [
    "redis.password",
    "redis.sentinel_password",
    "clickhouse.password",
    "api.jwt_secret",
    "api.agent_token",
    "control.metrics_token",
];

/// Whether the dotted `path` is a secret key: one of [`SECRETS`], or a game's `secret` or
/// `otlp_token` (`games.<id>.secret`).
fn is_secret(path: &str) -> bool {
    SECRETS.contains(&path)
        || path
            .strip_prefix("games.")
            .and_then(|r| r.rsplit_once('.'))
            .is_some_and(|(id, key)| !id.is_empty() && !id.contains('.') && matches!(key, "secret" | "otlp_token"))
}

/// A TOML syntax error without the excerpt of the document it quotes (a line may hold a
/// secret): the position and what is wrong.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {}", e.message().trim_end())
        }
        None => format!("TOML syntax error: {}", e.message().trim_end()),
    }
}

/// A number too large for TOML's integers (above `i64::MAX`) reaches a number key as
/// text: says so, instead of serde's `invalid type: string "…", expected u64`.
fn out_of_range(message: String) -> String {
    let digits = message
        .strip_prefix("invalid type: string \"")
        .and_then(|m| m.split_once('"'))
        .filter(|(n, rest)| {
            rest.starts_with(", expected ")
                && !n.is_empty()
                && n.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || c == '_')
                && n.chars().any(|c| c.is_ascii_digit())
        })
        .map(|(n, _)| n.to_owned());
    match digits {
        Some(n) => format!("number {n} is out of range (at most {})", i64::MAX),
        None => message,
    }
}

/// Sets the key that `rest` (a variable's name after the prefix) names to `raw`;
/// returns the key's dotted path.
/// Sets the value at dotted `path` to the text `raw`; false when it is text already (or
/// the path leads nowhere).
fn set_text(root: &mut toml::Table, path: &str, raw: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return false };
    let mut table = root;
    for p in parts {
        match table.get_mut(p).and_then(toml::Value::as_table_mut) {
            Some(t) => table = t,
            None => return false,
        }
    }
    match table.get_mut(last) {
        Some(v) if !v.is_str() => {
            *v = toml::Value::String(raw.to_owned());
            true
        }
        _ => false,
    }
}

fn apply_override(root: &mut toml::Table, rest: &str, raw: &str) -> Result<String, ConfigError> {
    let segments: Vec<&str> = rest.split("__").collect();
    let mut path: Vec<String> = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        if s.is_empty() {
            return Err(err(
                path.join("."),
                format!("empty key segment: overrides are {ENV_PREFIX}<SECTION>__<KEY>, e.g. CROUPIER_SERVER__LISTEN"),
            ));
        }
        let keep_case = i == 1 && path.first().is_some_and(|p| p == "games");
        path.push(if keep_case { (*s).to_owned() } else { s.to_ascii_lowercase() });
    }
    let dotted = path.join(".");
    let verbatim = VERBATIM.contains(&dotted.as_str()) || is_secret(&dotted);
    // Decimal digits with leading zeros (`01`) are a number to a shell user, not to TOML.
    let zero_led = raw.len() > 1 && raw.starts_with('0') && raw.bytes().all(|b| b.is_ascii_digit());
    let number = match raw.trim_start_matches('0') {
        "" if zero_led => "0",
        digits if zero_led => digits,
        _ => raw,
    };
    let value = format!("v = {number}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|_| !verbatim)
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let Some((last, parents)) = path.split_last() else {
        return Err(err("", "empty key"));
    };
    let mut table = root;
    for p in parents {
        let entry = table.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| err(path.join("."), format!("`{p}` is not a section")))?;
    }
    table.insert(last.clone(), value);
    Ok(path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn allowed_origins_are_written_as_browsers_send_them() {
        for good in
            ["https://play.example.com", "http://127.0.0.1:5555", "https://[::1]:8443", "capacitor://localhost", "null"]
        {
            assert!(is_serialised_origin(good), "{good}");
        }
        for bad in [
            "https://play.example.com/",
            "https://Play.example.com",
            "HTTPS://play.example.com",
            "https://play.example.com:443",
            "http://play.example.com:80",
            "https://play.example.com/game",
            "play.example.com",
            "https://",
            "https://a:0",
            "https://a:99999",
            "*",
        ] {
            assert!(!is_serialised_origin(bad), "{bad}");
        }
        let e = Config::load(
            None,
            env(&[
                ("CROUPIER_GAMES__g__SECRET", "s"),
                ("CROUPIER_GAMES__g__ALLOWED_ORIGINS", r#"["https://a.example/"]"#),
            ]),
        );
        let e = e.expect_err("a trailing slash");
        assert!(e.to_string().contains("games.g.allowed_origins"), "{e}");
    }

    #[test]
    fn shards_are_bounded_and_a_write_key_is_no_otlp_token_nor_secret() {
        for key in ["SERVER__SHARDS", "WORKER__SHARDS"] {
            let var = format!("CROUPIER_{key}");
            let e = Config::load(None, env(&[(&var, "257")])).expect_err("too many shards");
            let name = key.to_lowercase().replace("__", ".");
            assert!(e.to_string().contains(&name) && e.to_string().contains("at most 256"), "{e}");
            assert_eq!(
                if key.starts_with("SERVER") {
                    Config::load(None, env(&[(&var, "256")])).expect("256").server.shards
                } else {
                    Config::load(None, env(&[(&var, "256")])).expect("256").worker.shards
                },
                256
            );
        }
        let key = "pUbLiCwRiTeKeY-0123456789";
        let e = Config::load(
            None,
            env(&[
                ("CROUPIER_GAMES__a__SECRET", "s"),
                ("CROUPIER_GAMES__a__WRITE_KEYS", &format!("[\"{key}\"]")),
                ("CROUPIER_GAMES__b__SECRET", "s"),
                ("CROUPIER_GAMES__b__OTLP_TOKEN", key),
            ]),
        )
        .expect_err("a public key as a token");
        assert!(e.to_string().contains("games.b.otlp_token") && e.to_string().contains("games.a"), "{e}");
        let revoked = Config::load(
            None,
            env(&[
                ("CROUPIER_GAMES__a__SECRET", "s"),
                ("CROUPIER_GAMES__a__REVOKED_WRITE_KEYS", &format!("[\"{key}\"]")),
                ("CROUPIER_GAMES__a__OTLP_TOKEN", key),
            ]),
        );
        assert!(revoked.is_err(), "a revoked key is public too");
        // Nor is it a secret (named without the secret): game `a` lists the key in `list`,
        // `var` sets the secret to it.
        let listed_as_secret = |list: &str, var: &str| {
            let keys = format!("[\"{key}\"]");
            let listed = format!("CROUPIER_GAMES__a__{list}");
            let e = Config::load(None, env(&[("CROUPIER_GAMES__a__SECRET", "s"), (&listed, &keys), (var, key)]));
            e.expect_err("a public key as a secret").to_string()
        };
        let e = listed_as_secret("WRITE_KEYS", "CROUPIER_GAMES__b__SECRET");
        assert!(e.contains("games.a.write_keys") && e.contains("secret of games.b"), "{e}");
        assert!(!e.contains(key), "{e}");
        let e = listed_as_secret("WRITE_KEYS", "CROUPIER_API__JWT_SECRET");
        assert!(e.contains("games.a.write_keys") && e.contains("api.jwt_secret"), "{e}");
        let e = listed_as_secret("REVOKED_WRITE_KEYS", "CROUPIER_REDIS__PASSWORD");
        assert!(e.contains("games.a.revoked_write_keys") && e.contains("redis.password"), "{e}");
    }

    #[test]
    fn a_clickhouse_cluster_needs_its_name_and_replicas() {
        let c = Config::load(
            None,
            env(&[
                ("CROUPIER_CLICKHOUSE__SHARDS", r#"[["a:9000","b:9000"],["c:9000","d:9000"]]"#),
                ("CROUPIER_CLICKHOUSE__CLUSTER", "prod_cluster"),
            ]),
        )
        .expect("a cluster");
        assert!(c.clickhouse.is_cluster());
        assert_eq!(c.clickhouse.nodes(), ["a:9000", "b:9000", "c:9000", "d:9000"]);
        assert_eq!(Config::default().clickhouse.nodes(), ["127.0.0.1:9000"], "one server as before");
        let e = Config::load(None, env(&[("CROUPIER_CLICKHOUSE__SHARDS", r#"[["a:9000"]]"#)])).expect_err("no name");
        assert!(e.to_string().contains("clickhouse.cluster"), "{e}");
        let e = Config::load(
            None,
            env(&[("CROUPIER_CLICKHOUSE__SHARDS", r#"[["a:9000"],[]]"#), ("CROUPIER_CLICKHOUSE__CLUSTER", "x")]),
        )
        .expect_err("an empty shard");
        assert!(e.to_string().contains("clickhouse.shards"), "{e}");
        let e = Config::load(None, env(&[("CROUPIER_CLICKHOUSE__CLUSTER", "c")])).expect_err("a name, no shards");
        assert!(e.to_string().contains("clickhouse.cluster"), "{e}");
        for twice in [
            r#"[["a:9000"],["a:9000"]]"#,
            r#"[["a:9000","a:9000"]]"#,
            r#"[["a:9000"],["A.:09000"]]"#,
            r#"[["a:9000"],["[::1]:9000"],["[0:0::1]:9000"]]"#,
        ] {
            let e = Config::load(
                None,
                env(&[("CROUPIER_CLICKHOUSE__SHARDS", twice), ("CROUPIER_CLICKHOUSE__CLUSTER", "x")]),
            )
            .expect_err(twice);
            assert!(e.to_string().contains("is listed twice"), "{e}");
        }
    }

    #[test]
    fn the_claim_threshold_is_bounded() {
        let day = MAX_CLAIM_IDLE_MS.to_string();
        let c = Config::load(None, env(&[("CROUPIER_WORKER__CLAIM_IDLE_MS", day.as_str())])).expect("a day");
        assert_eq!(c.worker.claim_idle_ms, MAX_CLAIM_IDLE_MS);
        let e = Config::load(None, env(&[("CROUPIER_WORKER__CLAIM_IDLE_MS", "86400001")])).expect_err("past a day");
        assert!(e.to_string().contains("worker.claim_idle_ms") && e.to_string().contains("86400000"), "{e}");
        let e = Config::load(None, env(&[("CROUPIER_WORKER__CLAIM_IDLE_MS", "9223372036854775807")]))
            .expect_err("past what Redis takes");
        assert!(e.to_string().contains("worker.claim_idle_ms") && e.to_string().contains("86400000"), "{e}");
    }

    #[test]
    fn the_retry_backoff_is_below_half_the_claim_idle_time() {
        let e = Config::load(None, env(&[("CROUPIER_WORKER__CLAIM_IDLE_MS", "3000")])).expect_err("default 5 s");
        assert!(e.to_string().contains("worker.backoff_max_ms") && e.to_string().contains("3000"), "{e}");
        let e = Config::load(
            None,
            env(&[("CROUPIER_WORKER__CLAIM_IDLE_MS", "3000"), ("CROUPIER_WORKER__BACKOFF_MAX_MS", "1500")]),
        )
        .expect_err("half");
        assert!(e.to_string().contains("worker.backoff_max_ms"), "{e}");
        Config::load(
            None,
            env(&[("CROUPIER_WORKER__CLAIM_IDLE_MS", "3000"), ("CROUPIER_WORKER__BACKOFF_MAX_MS", "1499")]),
        )
        .expect("below half");
    }

    #[test]
    fn the_insert_interval_is_bounded() {
        let c = Config::load(
            None,
            env(&[("CROUPIER_WORKER__INSERT_INTERVAL_MS", "60000"), ("CROUPIER_WORKER__CLAIM_IDLE_MS", "130000")]),
        )
        .expect("a minute");
        assert_eq!(c.worker.insert_interval_ms, MAX_INSERT_INTERVAL_MS);
        // Entries held pending for half the claim threshold or more would be claimed.
        let e = Config::load(None, env(&[("CROUPIER_WORKER__INSERT_INTERVAL_MS", "29800")])).expect_err("claimed");
        assert!(e.to_string().contains("worker.claim_idle_ms"), "{e}");
        Config::load(None, env(&[("CROUPIER_WORKER__INSERT_INTERVAL_MS", "29799")])).expect("below half");
        let e = Config::load(None, env(&[("CROUPIER_WORKER__INSERT_INTERVAL_MS", "60001")])).expect_err("above");
        assert!(e.to_string().contains("worker.insert_interval_ms"), "{e}");
        assert!(e.to_string().contains("60000"), "{e}");
        let e = Config::load(None, env(&[("CROUPIER_WORKER__INSERT_INTERVAL_MS", "18446744073709551615")]))
            .expect_err("u64::MAX");
        assert!(e.to_string().contains("worker.insert_interval_ms"), "{e}");
        // Above what a TOML integer holds: said so.
        let e = Config::load(None, env(&[("CROUPIER_WORKER__INSERT_INTERVAL_MS", "9223372036854775808")]))
            .expect_err("above i64::MAX");
        assert!(e.to_string().contains("out of range (at most 9223372036854775807)"), "{e}");
        assert!(!e.to_string().contains("invalid type"), "{e}");
        // The linger likewise, whatever the claim threshold.
        let long_claims = ("CROUPIER_WORKER__CLAIM_IDLE_MS", "600000");
        let c = Config::load(None, env(&[("CROUPIER_WORKER__LINGER_MS", "60000"), long_claims])).expect("a minute");
        assert_eq!(c.worker.linger_ms, MAX_LINGER_MS);
        let e = Config::load(None, env(&[("CROUPIER_WORKER__LINGER_MS", "60001"), long_claims])).expect_err("above");
        assert!(e.to_string().contains("worker.linger_ms") && e.to_string().contains("60000"), "{e}");
        // A linger that alone breaks the claim rule is the variable named.
        let e = Config::load(None, env(&[("CROUPIER_WORKER__LINGER_MS", "30000")])).expect_err("claimed");
        assert!(e.to_string().contains("CROUPIER_WORKER__LINGER_MS"), "{e}");
        assert_eq!(Config::load(None, env(&[])).expect("defaults").worker.insert_interval_ms, 600);
    }

    #[test]
    fn a_redis_cluster_needs_partitioned_streams() {
        let e = Config::load(None, env(&[("CROUPIER_REDIS__CLUSTER", r#"["a:7000"]"#)])).expect_err("one partition");
        assert!(e.to_string().contains("streams.partitions"), "{e}");
        let c = Config::load(
            None,
            env(&[("CROUPIER_REDIS__CLUSTER", r#"["a:7000"]"#), ("CROUPIER_STREAMS__PARTITIONS", "2")]),
        )
        .expect("two partitions");
        assert_eq!(c.streams.partitions, 2);
    }

    #[test]
    fn a_server_listed_twice_a_drain_past_ten_minutes_and_an_unused_master_name_are_named() {
        for key in ["cluster", "sentinels"] {
            let toml = format!("[streams]\npartitions = 2\n[redis]\n{key} = [\"a:7000\", \"b:7000\", \"a:7000\"]\n");
            let e = Config::from_toml(&toml).expect_err("listed twice");
            assert_eq!(e.key, format!("redis.{key}"));
            assert!(e.message.contains("entry 2, \"a:7000\", is listed twice"), "{e}");
        }
        let e = Config::from_toml("[server]\ndrain_delay_ms = 600001\n").expect_err("past ten minutes");
        assert_eq!(e.key, "server.drain_delay_ms");
        let c = Config::from_toml("[server]\ndrain_delay_ms = 600000\n").expect("ten minutes");
        assert_eq!(c.server.drain_delay_ms, 600_000);
        let c = Config::from_toml("[redis]\nmaster_name = \"primary\"\n").expect("a warning, not an error");
        assert!(c.warnings().iter().any(|w| w.contains("redis.master_name is \"primary\"")), "{:?}", c.warnings());
        let c = Config::from_toml("[redis]\nsentinels = [\"s:26379\"]\nmaster_name = \"primary\"\n").expect("used");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::load(None, env(&[])).expect("defaults");
        assert_eq!(c.server.max_body_bytes, 10 << 20);
        assert_eq!((c.server.max_connections, c.server.max_inflight_body_bytes), (4096, 64 << 20));
        assert_eq!(c.auth.max_skew_secs, 300);
        let e = Config::load(None, [("CROUPIER_AUTH__MAX_SKEW_SECS".to_owned(), "86401".to_owned())])
            .expect_err("a skew above a day is refused");
        assert!(e.to_string().contains("auth.max_skew_secs"), "{e}");
        assert_eq!((c.streams.events.retention_events, c.streams.events.high_water_events), (1_000_000, 800_000));
        assert_eq!((c.streams.custom.retention_events, c.streams.custom.high_water_events), (500_000, 400_000));
        assert_eq!((c.streams.payments.retention_events, c.streams.payments.high_water_events), (100_000, 80_000));
        assert!(c.aggregate.enabled);
        assert_eq!(c.aggregate.flush_ms, 1_000);
    }

    #[test]
    fn aggregate_section_takes_overrides_like_the_others() {
        let c = Config::load(
            None,
            env(&[("CROUPIER_AGGREGATE__FLUSH_MS", "250"), ("CROUPIER_AGGREGATE__ENABLED", "false")]),
        )
        .expect("loads");
        assert_eq!((c.aggregate.flush_ms, c.aggregate.enabled), (250, false));
        assert!(c.ignored_variables.is_empty());
        let e = Config::load(None, env(&[("CROUPIER_AGGREGATE__FLUSH_MS", "0")])).expect_err("0 ms");
        assert_eq!(e.key, "aggregate.flush_ms");
    }

    #[test]
    fn event_ids_by_siphash_unless_the_earlier_derivation_is_asked_for() {
        assert_eq!(Config::default().server.event_ids, EventIds::Siphash);
        let c = Config::load(None, env(&[("CROUPIER_SERVER__EVENT_IDS", "sha256")])).expect("loads");
        assert_eq!(c.server.event_ids, EventIds::Sha256);
        let e = Config::load(None, env(&[("CROUPIER_SERVER__EVENT_IDS", "md5")])).expect_err("unknown");
        assert_eq!(e.key, "server.event_ids");
    }

    #[test]
    fn records_per_request_stay_below_the_largest_believed_entry_mean() {
        let c = Config::load(None, env(&[("CROUPIER_SERVER__MAX_RECORDS", "1000000")])).expect("loads");
        assert_eq!(c.server.max_records, 1_000_000);
        let e = Config::load(None, env(&[("CROUPIER_SERVER__MAX_RECORDS", "1000001")])).expect_err("too many");
        assert_eq!(e.key, "server.max_records");
    }

    #[test]
    fn ingest_protocol_and_its_lease() {
        let c = Config::default();
        assert_eq!((c.redis.ingest_protocol, c.redis.lease_ms()), (IngestProtocol::Script, 17_000));
        let c = Config::load(
            None,
            env(&[("CROUPIER_REDIS__INGEST_PROTOCOL", "lease"), ("CROUPIER_REDIS__INGEST_LEASE_MS", "30000")]),
        )
        .expect("loads");
        assert_eq!((c.redis.ingest_protocol, c.redis.lease_ms()), (IngestProtocol::Lease, 30_000));
        // Shorter than an append can take to reach Redis: refused, naming the key.
        let e = Config::load(None, env(&[("CROUPIER_REDIS__INGEST_LEASE_MS", "16999")])).expect_err("short");
        assert_eq!(e.key, "redis.ingest_lease_ms");
        // With replicated appends, the round before an append may wait for its `WAIT`.
        let c = Config::load(
            None,
            env(&[("CROUPIER_REDIS__WAIT_REPLICAS", "1"), ("CROUPIER_REDIS__WAIT_TIMEOUT_MS", "4000")]),
        )
        .expect("loads");
        assert_eq!(c.redis.lease_ms(), 21_000);
        let e = Config::load(
            None,
            env(&[
                ("CROUPIER_REDIS__WAIT_REPLICAS", "1"),
                ("CROUPIER_REDIS__WAIT_TIMEOUT_MS", "4000"),
                ("CROUPIER_REDIS__INGEST_LEASE_MS", "20999"),
            ]),
        )
        .expect_err("short for the wait");
        assert_eq!(e.key, "redis.ingest_lease_ms");
        let e = Config::load(None, env(&[("CROUPIER_REDIS__INGEST_PROTOCOL", "eval")])).expect_err("unknown");
        assert_eq!(e.key, "redis.ingest_protocol");
    }

    #[test]
    fn ingest_group_max_is_bounded() {
        assert_eq!(Config::default().redis.ingest_group_max, 32);
        let c = Config::load(None, env(&[("CROUPIER_REDIS__INGEST_GROUP_MAX", "1")])).expect("loads");
        assert_eq!(c.redis.ingest_group_max, 1);
        for bad in ["0", "1001"] {
            let e = Config::load(None, env(&[("CROUPIER_REDIS__INGEST_GROUP_MAX", bad)])).expect_err("out of range");
            assert_eq!(e.key, "redis.ingest_group_max", "{bad}");
        }
    }

    #[test]
    fn redis_credentials_from_keys_files_and_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pw, spw) = (dir.path().join("redis-password"), dir.path().join("sentinel-password"));
        std::fs::write(&pw, "s3cret pass\n").expect("write");
        std::fs::write(&spw, "watchtower-key\r\n").expect("write");
        let file = |p: &std::path::Path| format!("{:?}", p.display().to_string());

        // None by default: no AUTH.
        let c = Config::from_toml("").expect("defaults");
        assert_eq!((c.redis.username, c.redis.password, c.redis.sentinel_password), (None, None, None));

        // From files, trailing newline trimmed; a username with its password.
        let c = Config::from_toml(&format!(
            "[clickhouse]\npassword = \"ch-s3cret\"\n[redis]\nusername = \"croupier\"\npassword_file = {}\nsentinel_password_file = {}\n",
            file(&pw),
            file(&spw)
        ))
        .expect("loads");
        assert_eq!(c.redis.username.as_deref(), Some("croupier"));
        assert_eq!(c.redis.password.as_ref().map(Secret::expose), Some("s3cret pass"));
        assert_eq!(c.redis.sentinel_password.as_ref().map(Secret::expose), Some("watchtower-key"));
        // The configuration's Debug form never shows a password.
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret") && !debug.contains("watchtower-key"), "{debug}");
        assert_eq!(c.clickhouse.password.expose(), "ch-s3cret");
        assert!(debug.contains("<redacted>"), "{debug}");

        // Overrides as for any key; a password that reads as a TOML number stays its text.
        let c = Config::load(
            None,
            env(&[
                ("CROUPIER_REDIS__PASSWORD", "123456"),
                ("CROUPIER_REDIS__SENTINEL_USERNAME", "watcher"),
                ("CROUPIER_REDIS__SENTINEL_PASSWORD", "true"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.redis.password.as_ref().map(Secret::expose), Some("123456"));
        assert_eq!(c.redis.sentinel_username.as_deref(), Some("watcher"));
        assert_eq!(c.redis.sentinel_password.as_ref().map(Secret::expose), Some("true"));
        let c =
            Config::load(None, env(&[("CROUPIER_REDIS__PASSWORD_FILE", &pw.display().to_string())])).expect("loads");
        assert_eq!(c.redis.password.as_ref().map(Secret::expose), Some("s3cret pass"));

        // Both a password and its file: refused, naming the key (and the variable).
        let e = Config::from_toml(&format!("[redis]\npassword = \"x\"\npassword_file = {}\n", file(&pw)))
            .expect_err("both");
        assert_eq!(e.key, "redis.password_file");
        assert!(e.message.contains("not both"), "{e}");
        let e = Config::load(
            None,
            env(&[
                ("CROUPIER_REDIS__SENTINEL_PASSWORD", "x"),
                ("CROUPIER_REDIS__SENTINEL_PASSWORD_FILE", "/nonexistent"),
            ]),
        )
        .expect_err("both");
        assert_eq!(e.key, "redis.sentinel_password_file");
        assert!(e.variable.is_some(), "{e}");
        // A file that cannot be read, or is empty; an empty password; a user without one.
        let e = Config::from_toml("[redis]\npassword_file = \"/nonexistent/pw\"\n").expect_err("unreadable");
        assert_eq!(e.key, "redis.password_file");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let e = Config::from_toml(&format!("[redis]\npassword_file = {}\n", file(&empty))).expect_err("empty");
        assert_eq!(e.key, "redis.password_file");
        let e = Config::from_toml("[redis]\npassword = \"\"\n").expect_err("empty");
        assert_eq!(e.key, "redis.password");
        let e = Config::from_toml("[redis]\nusername = \"croupier\"\n").expect_err("no password");
        assert_eq!(e.key, "redis.username");
        let e = Config::from_toml("[redis]\nsentinel_username = \"w\"\n").expect_err("no password");
        assert_eq!(e.key, "redis.sentinel_username");
        // The password's text is in no error.
        let e = Config::from_toml("[redis]\npassword = \"hunter2\"\npassword_file = \"/x\"\n").expect_err("both");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn secrets_are_text_from_the_environment_and_never_quoted_by_an_error() {
        // A TOML value of another type than text: refused naming the key, not the value.
        for (doc, key, value) in [
            ("[redis]\npassword = 123456\n", "redis.password", "123456"),
            ("[redis]\nsentinel_password = 223344\n", "redis.sentinel_password", "223344"),
            ("[clickhouse]\npassword = 987654\n", "clickhouse.password", "987654"),
            ("[api]\njwt_secret = 31337\n", "api.jwt_secret", "31337"),
            ("[api]\nagent_token = 737373\n", "api.agent_token", "737373"),
            ("[control]\nmetrics_token = 424242\n", "control.metrics_token", "424242"),
            ("[games.Alpha]\nsecret = 555555\n", "games.Alpha.secret", "555555"),
            ("[games.Alpha]\nsecret = \"s\"\notlp_token = 8080808080\n", "games.Alpha.otlp_token", "8080808080"),
        ] {
            let e = Config::from_toml(doc).expect_err("not text");
            assert_eq!(e.key, key, "{e}");
            assert!(!e.to_string().contains(value), "{e}");
        }
        // A syntax error does not quote the line either.
        let e = Config::from_toml("[redis]\npassword = hunter2\n").expect_err("unquoted");
        assert!(!e.to_string().contains("hunter2") && e.to_string().contains("line 2"), "{e}");
        // From the environment every secret is text as written, digits or not.
        let c = Config::load(
            None,
            env(&[
                ("CROUPIER_CLICKHOUSE__PASSWORD", "987654"),
                ("CROUPIER_REDIS__PASSWORD", "123456"),
                ("CROUPIER_CONTROL__METRICS_TOKEN", "4242424242424242"),
                ("CROUPIER_API__AGENT_TOKEN", "7373737373737373"),
                ("CROUPIER_GAMES__Alpha__SECRET", "555555"),
                ("CROUPIER_GAMES__Alpha__OTLP_TOKEN", "1234567890123456"),
            ]),
        )
        .expect("numeric secrets from the environment");
        assert_eq!(c.clickhouse.password.expose(), "987654");
        assert_eq!(c.redis.password.as_ref().map(Secret::expose), Some("123456"));
        assert_eq!(c.control.metrics_token.as_deref(), Some("4242424242424242"));
        assert_eq!(c.api.agent_token.as_deref(), Some("7373737373737373"));
        assert_eq!(c.games["Alpha"].secret.as_deref(), Some("555555"));
        assert_eq!(c.games["Alpha"].otlp_token.as_deref(), Some("1234567890123456"));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let c = Config::load(None, env(&[("CROUPIER_REDIS__SENTINEL_PASSWORD", "x")])).expect("no sentinels");
        assert!(c.warnings().iter().any(|w| w.contains("redis.sentinels is not")), "{:?}", c.warnings());
        let c = Config::load(None, env(&[("CROUPIER_API__JWT_SECRET", "31337")])).expect("a numeric JWT secret");
        assert_eq!(c.api.jwt_secret, "31337");
        // A value with a trailing newline is taken as written (the `_file` variants trim).
        let c = Config::load(None, env(&[("CROUPIER_REDIS__PASSWORD", "pw\n")])).expect("as written");
        assert_eq!(c.redis.password.as_ref().map(Secret::expose), Some("pw\n"));
    }

    #[test]
    fn file_and_environment_combine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").expect("write");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:1\"\n[games.Alpha]\nsecret_file = {:?}\n",
                secret.display().to_string()
            ),
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[
                ("CROUPIER_SERVER__LISTEN", "127.0.0.1:9000"),
                ("CROUPIER_SERVER__SHARDS", "3"),
                ("CROUPIER_SERVER__DRIVER", "epoll"),
                ("CROUPIER_GAMES__Beta__SECRET", "b"),
                ("CROUPIER_CONFIG", "ignored"),
                ("OTHER", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.shard_count(), 3);
        assert_eq!(c.server.driver, Driver::Epoll);
        assert_eq!(c.games["Alpha"].secret.as_deref(), Some("from-file"));
        assert_eq!(c.games["Beta"].secret.as_deref(), Some("b"));
    }

    #[test]
    fn zero_shards_is_resolved_once_at_load() {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let c = Config::from_toml("[server]\nshards = 0\n").expect("loads");
        assert_eq!(c.server.shards, cores);
        assert_eq!(c.shard_count(), cores);
        let c = Config::from_toml("[server]\nshards = 5\n").expect("loads");
        assert_eq!(c.server.shards, 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::from_toml("[server]\nlisen = \"x\"\n").expect_err("unknown key");
        assert_eq!(e.key, "server.lisen");
        assert!(e.message.contains("lisen"), "{e}");
        let e = Config::from_toml("[server]\nshards = \"two\"\n").expect_err("bad type");
        assert_eq!(e.key, "server.shards");
        let e = Config::from_toml("[server]\ndriver = \"kqueue\"\n").expect_err("bad enum");
        assert_eq!(e.key, "server.driver");
        let e = Config::from_toml("[server]\nlisten = \"nowhere\"\n").expect_err("bad addr");
        assert_eq!(e.key, "server.listen");
        let e = Config::from_toml("[server]\nmax_connections = 0\n").expect_err("no connections");
        assert_eq!(e.key, "server.max_connections");
        let e = Config::from_toml("[server]\nmax_inflight_body_bytes = 0\n").expect_err("no body budget");
        assert_eq!(e.key, "server.max_inflight_body_bytes");
        let small = Config::from_toml("[server]\nmax_inflight_body_bytes = 1000\n").expect("a small budget loads");
        assert_eq!(small.server.body_budget(), 10 << 20, "room for one body at the limit");
        let e = Config::from_toml("[control]\nlisten = \"8081\"\n").expect_err("bad control addr");
        assert_eq!(e.key, "control.listen");
        assert!(Config::from_toml("[control]\nlisten = \"\"\n").is_ok(), "no control listener");
        let e = Config::from_toml("[otlp]\ngrpc_listen = \"4317\"\n").expect_err("bad gRPC addr");
        assert_eq!(e.key, "otlp.grpc_listen");
        assert!(Config::from_toml("[otlp]\ngrpc_listen = \"\"\n").is_ok(), "no gRPC listener");
        let c = Config::load(None, env(&[("CROUPIER_METRICS__ENABLED", "false")])).expect("metrics off");
        assert!(!c.metrics.enabled);
        let c = Config::from_toml("[log]\nformat = \"json\"\nlevel = \"debug\"\n").expect("json logs");
        assert_eq!((c.log.format, c.log.level.as_str()), (LogFormat::Json, "debug"));
        let e = Config::from_toml("[log]\nformat = \"xml\"\n").expect_err("bad format");
        assert_eq!(e.key, "log.format");
        let apart = |toml: &str| Config::from_toml(toml).expect("loads").listeners_apart();
        let e = apart("[control]\nlisten = \"127.0.0.1:8080\"\n").expect_err("the data port's");
        assert_eq!(e.key, "control.listen");
        let e = apart("[server]\nlisten = \"0.0.0.0:9100\"\n[otlp]\ngrpc_listen = \"127.0.0.1:9100\"\n")
            .expect_err("every address's port");
        assert_eq!(e.key, "otlp.grpc_listen");
        assert!(apart("[server]\nlisten = \"127.0.0.1:9100\"\n[control]\nlisten = \"127.0.0.2:9100\"\n").is_ok());
        let e = apart("[server]\nlisten = \"[::ffff:127.0.0.1]:9100\"\n[otlp]\nlisten = \"127.0.0.1:9100\"\n")
            .expect_err("an IPv4-mapped address is the IPv4 one");
        assert_eq!(e.key, "otlp.listen");
        assert!(apart("[server]\nlisten = \"127.0.0.1:0\"\n[control]\nlisten = \"127.0.0.1:0\"\n").is_ok());
        let e = Config::from_toml("[auth]\nmax_skew_secs = 0\n").expect_err("no skew at all");
        assert_eq!(e.key, "auth.max_skew_secs");
        // A level from the environment is text, a number too (0-5, as in the file).
        for level in ["5", "info", "warn,croupier_dataplane=debug"] {
            assert!(Config::load(None, env(&[("CROUPIER_LOG__LEVEL", level)])).is_ok(), "{level}");
        }
        let e = Config::from_toml("[log]\nlevel = \"worker=loudest\"\n").expect_err("bad level");
        assert_eq!(e.key, "log.level");
        // A bare word that is no level would be read as a target's name, every other line
        // then unlogged (errors included).
        for bad in ["warning", "verbose", "info,loud", "critical", "", " , "] {
            let e = Config::from_toml(&format!("[log]\nlevel = {bad:?}\n")).expect_err(bad);
            assert_eq!(e.key, "log.level", "{bad}");
        }
        for good in
            ["WARN", "info,croupier_dataplane=debug", "off", "warn,croupier_dataplane::worker=trace", " info", "info,"]
        {
            assert!(Config::from_toml(&format!("[log]\nlevel = {good:?}\n")).is_ok(), "{good}");
        }
        let old = Config::from_toml("[streams]\nbatch_events = 100\n").expect("an older file still loads");
        assert_eq!(old.warnings().len(), 1, "and says what to remove");
        let old = Config::from_toml("[worker]\ndead_letter_maxlen = 100000\n").expect("an older file still loads");
        assert_eq!(old.warnings().len(), 1, "and says what to remove");
        assert!(Config::from_toml("").expect("defaults").warnings().is_empty());
        let e = Config::from_toml("[streams.events]\nretention_events = 1000\nhigh_water_events = 1000\n")
            .expect_err("mark at retention");
        assert_eq!(e.key, "streams.events.high_water_events");
        for key in ["max_body_bytes", "max_decompressed_bytes"] {
            for bad in [0u64, 1 << 30, 5 << 30] {
                let e = Config::from_toml(&format!("[server]\n{key} = {bad}\n")).expect_err("out of range");
                assert_eq!(e.key, format!("server.{key}"), "{bad}");
            }
            let c = Config::from_toml(&format!("[server]\n{key} = {MAX_BODY_BYTES}\n")).expect("at the cap");
            assert!(c.server.max_body_bytes <= MAX_BODY_BYTES);
        }
        let e = Config::from_toml("[games.g]\n").expect_err("no secret");
        assert_eq!(e.key, "games.g");
        for id in ["g1:x", "a{b}", "sp ace"] {
            let e = Config::from_toml(&format!("[games.\"{id}\"]\nsecret = \"s\"\n")).expect_err(id);
            assert_eq!(e.key, format!("games.{id}"), "{e}");
            assert!(e.message.contains("without ':'"), "{e}");
        }
        assert!(Config::from_toml("[games.\"studio-1_game.x\"]\nsecret = \"s\"\n").is_ok());
        let e = Config::load(None, env(&[("CROUPIER_REDIS__ADR", "x")])).expect_err("unknown env key");
        assert!(e.message.contains("adr"), "{e}");
    }

    #[test]
    fn env_an_unrelated_croupier_variable_is_not_an_override() {
        // Set for a client (or by a platform) and not meant for the server: only
        // `CROUPIER_<SECTION>__<KEY>` names are overrides.
        let c = Config::load(
            None,
            env(&[
                ("CROUPIER_URL", "http://127.0.0.1:8080"),
                ("CROUPIER_TOKEN", "abc"),
                ("CROUPIER_", "x"),
                ("CROUPIER_SERVER__SHARDS", "2"),
            ]),
        )
        .expect("CROUPIER_URL must not stop the server");
        assert_eq!(c.server.shards, 2, "the real override still applies");
        assert!(c.warnings().is_empty(), "nothing to warn about: {:?}", c.warnings());
    }

    #[test]
    fn env_a_near_miss_override_is_reported_not_applied() {
        // One underscore where two were meant: not an override, but surely meant as one.
        let c = Config::load(None, env(&[("CROUPIER_SERVER_LISTEN", "127.0.0.1:1")])).expect("loads");
        assert_eq!(c.server.listen, Server::default().listen);
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("CROUPIER_SERVER_LISTEN") && w[0].contains("CROUPIER_SERVER__LISTEN"), "{w:?}");
    }

    #[test]
    fn env_errors_from_the_environment_name_the_variable() {
        for (name, value, key) in [
            ("CROUPIER_SERVER__SHARDS", "two", "server.shards"),
            ("CROUPIER_REDIS__ADR", "x", "redis.adr"),
            ("CROUPIER_SERVER__LISTEN", "nowhere", "server.listen"),
            ("CROUPIER_NOSUCH__KEY", "1", "nosuch"),
            ("CROUPIER_SERVER__", "1", ""),
            ("CROUPIER_STREAMS__EVENTS__HIGH_WATER_EVENTS", "0", "streams.events.high_water_events"),
            ("CROUPIER_STREAMS__EVENTS__HIGH_WATER", "1", "streams.events.high_water"),
            ("CROUPIER_SERVER__LISTEN__PORT", "1", "server.listen"),
        ] {
            let e = Config::load(None, env(&[(name, value)])).expect_err(name);
            assert!(e.to_string().contains(name), "the message names {name}: {e}");
            assert!(e.key.starts_with(key), "{name}: key {} (expected {key})", e.key);
        }
        // Each zero that would mean a timeout at once, a loop without pause or no room is
        // refused naming its own key and variable.
        for key in [
            "SERVER__READ_TIMEOUT_MS",
            "SERVER__IDLE_TIMEOUT_MS",
            "REDIS__CONNECT_TIMEOUT_MS",
            "REDIS__REPLY_TIMEOUT_MS",
            "REDIS__BACKLOG_POLL_MS",
            "REDIS__RETRY_AFTER_SECS",
            "CLICKHOUSE__TIMEOUT_MS",
            "WORKER__SHARDS",
            "WORKER__BATCH_ROWS",
            "WORKER__READ_COUNT",
            "WORKER__CLAIM_IDLE_MS",
            "WORKER__CLAIM_INTERVAL_MS",
            "WORKER__BACKOFF_MAX_MS",
            "API__QUERY_TIMEOUT_MS",
            "API__MAX_QUERIES_IN_FLIGHT",
            "API__AUDIT_FLUSH_MS",
            "API__AUDIT_MAX_PENDING",
            "STREAMS__EVENTS__RETENTION_EVENTS",
        ] {
            let name = format!("CROUPIER_{key}");
            let e = Config::load(None, env(&[(&name, "0")])).expect_err(&name);
            assert_eq!(e.key, key.to_ascii_lowercase().replace("__", "."), "{e}");
            assert!(e.to_string().contains(&name), "{e}");
        }
        // Addresses are host:port.
        for (name, value, key) in [
            ("CROUPIER_REDIS__ADDR", "", "redis.addr"),
            ("CROUPIER_REDIS__ADDR", "redis", "redis.addr"),
            ("CROUPIER_REDIS__ADDR", "redis:0", "redis.addr"),
            ("CROUPIER_CLICKHOUSE__ADDR", "nohostport", "clickhouse.addr"),
            ("CROUPIER_CLICKHOUSE__ADDR", ":9000", "clickhouse.addr"),
            ("CROUPIER_REDIS__SENTINELS", r#"["a:26379", ""]"#, "redis.sentinels"),
            ("CROUPIER_REDIS__CLUSTER", r#"["bad"]"#, "redis.cluster"),
        ] {
            let mut vars = vec![(name, value)];
            if name == "CROUPIER_REDIS__SENTINELS" {
                vars.push(("CROUPIER_REDIS__MASTER_NAME", "mymaster"));
            }
            if name == "CROUPIER_REDIS__CLUSTER" {
                vars.push(("CROUPIER_STREAMS__PARTITIONS", "2"));
            }
            let e = Config::load(None, env(&vars)).expect_err(value);
            assert_eq!(e.key, key, "{value}: {e}");
        }
        for good in ["redis:6379", "10.0.0.1:6379", "[::1]:6379", "my-redis.svc.cluster.local:6380"] {
            assert!(Config::load(None, env(&[("CROUPIER_REDIS__ADDR", good)])).is_ok(), "{good}");
        }
        // One server: a list would split the rows between servers that share nothing.
        for list in ["ch1:9000, ch2:9000", "ch1:9000,"] {
            let e = Config::load(None, env(&[("CROUPIER_CLICKHOUSE__ADDR", list)])).expect_err(list);
            assert!(e.key == "clickhouse.addr" && e.to_string().contains("clickhouse.shards"), "{e}");
        }
        assert!(Config::load(None, env(&[("CROUPIER_CLICKHOUSE__ADDR", " ch1:9000 ")])).is_ok());
        let e = Config::load(None, env(&[("CROUPIER_REDIS__ADDR", "a:6379,b:6379")])).expect_err("one Redis");
        assert!(e.key == "redis.addr" && e.to_string().contains("redis.sentinels"), "{e}");
        // Unused with cluster seed nodes.
        let cluster = [
            ("CROUPIER_REDIS__ADDR", ""),
            ("CROUPIER_REDIS__CLUSTER", r#"["a:7000"]"#),
            ("CROUPIER_STREAMS__PARTITIONS", "2"),
        ];
        assert!(Config::load(None, env(&cluster)).is_ok());
        // Text keys take digits or a word like `true` from the environment as text.
        let c = Config::load(
            None,
            env(&[
                ("CROUPIER_WORKER__CONSUMER", "7"),
                ("CROUPIER_CLICKHOUSE__DATABASE", "2024"),
                ("CROUPIER_CLICKHOUSE__USER", "true"),
            ]),
        )
        .expect("text keys");
        assert_eq!(
            (c.worker.consumer.as_str(), c.clickhouse.database.as_str(), c.clickhouse.user.as_str()),
            ("7", "2024", "true")
        );
        // Digits with leading zeros are a number for a number key, the text itself for a text key.
        let c = Config::load(
            None,
            env(&[
                ("CROUPIER_SERVER__SHARDS", "02"),
                ("CROUPIER_WORKER__SHARDS", "001"),
                ("CROUPIER_WORKER__CONSUMER", "007"),
            ]),
        )
        .expect("leading zeros");
        assert_eq!((c.server.shards, c.worker.shards, c.worker.consumer.as_str()), (2, 1, "007"));
        let e = Config::load(None, env(&[("CROUPIER_WORKER__SHARDS", "00")])).expect_err("zero");
        assert_eq!(e.key, "worker.shards", "{e}");
        // A clash of listeners from the environment names the variable.
        let c = Config::load(
            None,
            env(&[("CROUPIER_SERVER__LISTEN", "127.0.0.1:9100"), ("CROUPIER_CONTROL__LISTEN", "127.0.0.1:9100")]),
        )
        .expect("loads");
        let e = c.listeners_apart().expect_err("one port");
        assert!(e.to_string().contains("CROUPIER_CONTROL__LISTEN"), "{e}");
        // One key of a stream set alone keeps the stream's other default.
        let c = Config::load(None, env(&[("CROUPIER_STREAMS__PAYMENTS__HIGH_WATER_EVENTS", "1000")])).expect("loads");
        assert_eq!((c.streams.payments.retention_events, c.streams.payments.high_water_events), (100_000, 1000));
        // An error in the file names no variable.
        let e = Config::from_toml("[server]\nshards = \"two\"\n").expect_err("bad type");
        assert!(e.to_string().starts_with("config `server.shards`: invalid type: string \"two\""), "{e}");
        assert_eq!(e.variable, None);
    }
}
