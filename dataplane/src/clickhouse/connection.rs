//! One native-protocol connection to ClickHouse, driven on the shard's runtime.
//!
//! Inserts stream: [`Connection::insert_start`] sends the query and reads the table's
//! header block, [`Connection::insert_block`] writes each block as it fills, and
//! [`Connection::insert_end`] sends the closing empty block and waits for EndOfStream —
//! the server's confirmation that the rows are written. After any error the connection
//! must be dropped.

use std::time::Duration;

use croupier_control::config::Secret;
use croupier_protocol::clickhouse::block::{BlockHeader, Column};
use croupier_protocol::clickhouse::packet::{self, ProtocolError, ServerException, ServerHello, ServerPacket, Setting};
use croupier_protocol::clickhouse::result::Value;
use croupier_protocol::clickhouse::scan::{PacketScan, Scanned};
use croupier_protocol::clickhouse::unframe::{self, Unframe};
use croupier_protocol::clickhouse::CLIENT_REVISION;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::io::read_more;

/// A ClickHouse operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChError {
    /// Could not connect, or the connection broke.
    Io(String),
    /// No answer within the timeout.
    Timeout,
    /// The server sent bytes this client cannot read.
    Protocol(ProtocolError),
    /// The server refused: the exception it sent.
    Server(ServerException),
    /// The server answered out of turn.
    Unexpected(String),
    /// The table's columns are not what this client writes (schema drift): a fault of the
    /// whole stream, never of its rows.
    SchemaMismatch(String),
}

impl ChError {
    /// Whether the server refused the data itself (bad values), as opposed to being
    /// unreachable or failing: such rows are isolated instead of retried.
    pub fn is_bad_data(&self) -> bool {
        // 6 CANNOT_PARSE_TEXT, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED, 32 ATTEMPT_TO_READ_AFTER_EOF,
        // 33 CANNOT_READ_ALL_DATA, 41/42 date/time parse, 53 TYPE_MISMATCH, 69 ARGUMENT_OUT_OF_BOUND,
        // 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA, 131 TOO_LARGE_STRING_SIZE,
        // 252 TOO_MANY_PARTS is not bad data.
        matches!(self, ChError::Server(e) if [6, 27, 32, 33, 41, 42, 53, 69, 70, 72, 117, 131].contains(&e.code))
    }

    /// Whether the server refused for its own state, whatever the rows: 60 UNKNOWN_TABLE,
    /// 81 UNKNOWN_DATABASE, 164 READONLY, 202 TOO_MANY_SIMULTANEOUS_QUERIES,
    /// 203 NO_FREE_CONNECTION, 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR, 225 NO_ZOOKEEPER,
    /// 242 TABLE_IS_READ_ONLY, 243 NOT_ENOUGH_SPACE, 252 TOO_MANY_PARTS,
    /// 319 UNKNOWN_STATUS_OF_INSERT, 452 SETTING_CONSTRAINT_VIOLATION (a profile that pins
    /// the settings an insert of several blocks sends, `worker/sink.rs` `BLOCKS_AS_SENT`),
    /// 497 ACCESS_DENIED, 516 AUTHENTICATION_FAILED, 999 KEEPER_EXCEPTION. A memory or size
    /// limit, a timeout or a view's exception is not: it may be the batch's.
    pub fn is_server_state(&self) -> bool {
        matches!(self, ChError::Server(e)
            if [60, 81, 164, 202, 203, 209, 210, 225, 242, 243, 252, 319, 452, 497, 516, 999].contains(&e.code))
    }

    /// Whether the server refused with an exception a row raised on purpose: `throwIf`'s
    /// 395 (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO), as an operator's materialized view on
    /// the table raises it for rows it will not take. Such a batch is retried as it is,
    /// then bisected like bad data. Other refusals that may be the batch's (a memory limit,
    /// a query timeout) are as likely the server's load, and are only retried.
    pub fn is_raised_by_rows(&self) -> bool {
        matches!(self, ChError::Server(e) if e.code == 395)
    }

    /// Whether the server refused a block for spanning more partitions than its
    /// `max_partitions_per_insert_block` (ClickHouse 19 and later), and the limit it named
    /// if it did. Same code (252) as "too many parts", which is backpressure: told apart by
    /// the message.
    pub fn too_many_partitions(&self) -> Option<Option<usize>> {
        let ChError::Server(e) = self else { return None };
        if e.code != 252 || !e.message.contains("partitions for single INSERT block") {
            return None;
        }
        let limit = e.message.split("more than ").nth(1).and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        Some(limit)
    }
}

impl std::fmt::Display for ChError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChError::Io(e) => write!(f, "ClickHouse connection: {e}"),
            ChError::Timeout => f.write_str("ClickHouse did not answer in time"),
            ChError::Protocol(e) => write!(f, "ClickHouse protocol: {e}"),
            ChError::Server(e) => write!(f, "{e}"),
            ChError::Unexpected(e) => write!(f, "ClickHouse answered out of turn: {e}"),
            ChError::SchemaMismatch(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChError {}

/// The answer to a `SELECT`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selected {
    /// Column names.
    pub columns: Vec<String>,
    /// The rows, each a value per column.
    pub rows: Vec<Vec<Value>>,
    /// Rows the server read to answer (summed from its progress packets).
    pub read_rows: u64,
}

/// How to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct ChOptions {
    /// `host:port` of the native TCP port; several, comma-separated (replicas of one
    /// shard, nodes of a cluster): a connection tries them in turn.
    pub addr: String,
    /// Database to start in.
    pub database: String,
    /// User.
    pub user: String,
    /// Password (redacted in `Debug`, as is every copy of these options).
    pub password: Secret,
    /// LZ4 frames with checksums: inserts, and the blocks of query answers.
    pub compression: bool,
    /// Connect and per-reply timeout.
    pub timeout: Duration,
}

/// An open connection after the hello exchange.
pub struct Connection {
    stream: TcpStream,
    rbuf: Vec<u8>,
    /// Where a read goes while `rbuf` holds part of a packet ([`Connection::next_packet`]).
    spare: Vec<u8>,
    /// The walk of a block packet begun, which finds where it ends as its bytes come in
    /// ([`Connection::next_packet`]); kept once it refused the packet (it then always
    /// does), which is then decoded after each read.
    scan: Option<PacketScan>,
    /// A framed (compressed) block packet begun: its frames taken so far, decompressed,
    /// which the scan then walks ([`Connection::next_packet`]).
    unframe: Option<Unframe>,
    /// Whether the query in progress asked for compression: its block packets then come
    /// in frames.
    query_compressed: bool,
    /// [`Connection::rows_read`].
    rows_read: u64,
    wbuf: Vec<u8>,
    scratch: Vec<u8>,
    server: ServerHello,
    revision: u64,
    compression: bool,
    timeout: Duration,
    /// Random per connection, so query ids never collide between connections.
    id: u64,
    queries: u64,
    /// Packets read from the server so far (hello included).
    packets: u64,
    /// Bytes received from the server, and bytes the packet decoder and scan went over.
    received: u64,
    decoded: u64,
    /// Bytes of frames taken, and the bytes they decompressed to.
    framed: u64,
    unframed: u64,
}

const CLIENT_NAME: &str = "croupier";

/// Room kept by the read buffer once it is empty: a large result's block is not held by
/// a connection waiting in a pool.
const READ_KEPT: usize = 4 << 20;

/// Room kept by the spare buffer between packets.
const SPARE_KEPT: usize = 1 << 20;

impl ChOptions {
    /// The addresses [`ChOptions::addr`] lists.
    pub fn addrs(&self) -> Vec<&str> {
        self.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).collect()
    }
}

impl Connection {
    /// Connects to the first address of `opts` that answers, in order, and exchanges
    /// hellos.
    pub async fn connect(opts: &ChOptions) -> Result<Connection, ChError> {
        Self::connect_from(opts, 0).await.map(|(c, _)| c)
    }

    /// Connects to the first address of `opts` that answers, trying them in turn from
    /// the `start`-th (modulo their number): the connection and the index of the address.
    /// The error of the last address tried when none answers.
    pub async fn connect_from(opts: &ChOptions, start: usize) -> Result<(Connection, usize), ChError> {
        let addrs = opts.addrs();
        let mut last = ChError::Io(format!("no ClickHouse address in {:?}", opts.addr));
        for k in 0..addrs.len() {
            let i = (start + k) % addrs.len();
            match Self::connect_one(opts, addrs[i]).await {
                Ok(c) => return Ok((c, i)),
                Err(e) => {
                    if addrs.len() > 1 {
                        tracing::debug!(addr = addrs[i], error = %e, "ClickHouse server not reachable; trying the next");
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn connect_one(opts: &ChOptions, addr: &str) -> Result<Connection, ChError> {
        let stream = match monoio::time::timeout(opts.timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ChError::Timeout),
            Ok(Err(e)) => return Err(ChError::Io(format!("{addr}: {e}"))),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            spare: Vec::new(),
            scan: None,
            unframe: None,
            query_compressed: false,
            rows_read: 0,
            wbuf: Vec::with_capacity(256 * 1024),
            scratch: Vec::new(),
            server: ServerHello {
                name: String::new(),
                major: 0,
                minor: 0,
                revision: 0,
                timezone: String::new(),
                display_name: String::new(),
                patch: 0,
            },
            revision: CLIENT_REVISION,
            compression: opts.compression,
            timeout: opts.timeout,
            id: fastrand::u64(..),
            queries: 0,
            packets: 0,
            received: 0,
            decoded: 0,
            framed: 0,
            unframed: 0,
        };
        packet::hello(&mut c.wbuf, CLIENT_NAME, &opts.database, &opts.user, opts.password.expose());
        c.flush().await?;
        match c.next_packet().await? {
            ServerPacket::Hello(h) => {
                c.revision = h.negotiated_revision();
                c.server = h;
                Ok(c)
            }
            ServerPacket::Exception(e) => Err(ChError::Server(e)),
            other => Err(ChError::Unexpected(format!("{other:?} instead of hello"))),
        }
    }

    /// The server's hello (version, revision, timezone).
    pub fn server(&self) -> &ServerHello {
        &self.server
    }

    /// Packets read from the server so far: unchanged across a failed call, nothing of
    /// its answer was read (a pooled connection the server had closed).
    pub fn packets_received(&self) -> u64 {
        self.packets
    }

    /// Bytes the packet decoder and scan went over per byte received so far: 1 when every
    /// uncompressed packet came in one read; about 2 for uncompressed block packets that
    /// came in pieces (scanned as they come, decoded once whole), however many; about 3
    /// for compressed ones (a framed packet counts as the bytes it decompressed to, and
    /// its frames, each checked and decompressed once, as one pass); more for other
    /// packets in pieces, which are decoded from their start after each.
    pub fn decode_passes(&self) -> f64 {
        let plain = self.received.saturating_sub(self.framed).saturating_add(self.unframed);
        self.decoded.saturating_add(self.unframed) as f64 / plain.max(1) as f64
    }

    async fn flush(&mut self) -> Result<(), ChError> {
        let buf = std::mem::take(&mut self.wbuf);
        let (res, mut buf) = match monoio::time::timeout(self.timeout, self.stream.write_all(buf)).await {
            Ok(r) => r,
            Err(_) => return Err(ChError::Timeout),
        };
        buf.clear();
        self.wbuf = buf;
        res.map(|_| ()).map_err(|e| ChError::Io(e.to_string()))
    }

    /// Whether the packet begun in `buf` may be whole: always, but for a block packet
    /// being scanned, until its scan reaches its end (or refuses it).
    fn may_be_whole(scan: &mut Option<PacketScan>, buf: &[u8], revision: u64, decoded: &mut u64) -> bool {
        let Some(s) = scan.as_mut() else { return true };
        let from = s.position();
        let found = s.resume(buf, revision);
        *decoded = decoded.saturating_add(s.position().saturating_sub(from) as u64);
        match found {
            Scanned::Incomplete => false,
            Scanned::Ends(_) => {
                *scan = None;
                true
            }
            Scanned::Unsupported => true,
        }
    }

    /// Takes the frames of the framed packet begun in `rbuf`, one at a time while its
    /// block goes on; once the block is whole, the packet, decoded from its uncompressed
    /// bytes.
    fn unframed_packet(&mut self) -> Result<Option<ServerPacket>, ChError> {
        let Some(u) = self.unframe.as_mut() else { return Ok(None) };
        loop {
            let before = u.plain().len();
            let Some(taken) = u.take_frame(&self.rbuf).map_err(ChError::Protocol)? else {
                return Ok(None);
            };
            self.rbuf.drain(..taken);
            self.framed = self.framed.saturating_add(taken as u64);
            self.unframed = self.unframed.saturating_add(u.plain().len().saturating_sub(before) as u64);
            self.scan.get_or_insert_with(PacketScan::default);
            if !Self::may_be_whole(&mut self.scan, u.plain(), self.revision, &mut self.decoded) {
                continue;
            }
            let plain = u.plain();
            let decoded = packet::decode(plain, self.revision).map_err(ChError::Protocol)?;
            self.decoded = self.decoded.saturating_add(decoded.as_ref().map_or(plain.len(), |(_, used)| *used) as u64);
            match decoded {
                // The server ends a block with its frame: a block that ends within one is
                // not one this client can read.
                Some((p, used)) if used == plain.len() => {
                    self.unframe = None;
                    self.scan = None;
                    self.packets += 1;
                    return Ok(Some(p));
                }
                Some(_) => {
                    return Err(ChError::Protocol(ProtocolError::Frame(
                        "a block ends within a compressed frame".into(),
                    )))
                }
                // A block the scan does not follow, decoded after each frame.
                None => {}
            }
        }
    }

    async fn next_packet(&mut self) -> Result<ServerPacket, ChError> {
        loop {
            // A block packet of a query that asked for compression comes in frames: each
            // is checked and decompressed once whole, and the packet's uncompressed bytes
            // are then walked and decoded as those of an uncompressed one.
            if self.unframe.is_none()
                && self.query_compressed
                && self.scan.is_none()
                && unframe::is_framed(&self.rbuf) == Some(true)
            {
                self.unframe = Some(Unframe::default());
            }
            if self.unframe.is_some() {
                if let Some(p) = self.unframed_packet()? {
                    self.trim_buffers();
                    return Ok(p);
                }
            // A block arriving in pieces is walked as its bytes come (each once) and decoded
            // once whole: decoding it from its start after every read would cost its size
            // per read, hundreds of times over a link slower than the decoder.
            } else if Self::may_be_whole(&mut self.scan, &self.rbuf, self.revision, &mut self.decoded) {
                let decoded = packet::decode(&self.rbuf, self.revision).map_err(ChError::Protocol)?;
                // What the decoder went over: the packet, or all that is held of one begun.
                let over = decoded.as_ref().map_or(self.rbuf.len(), |(_, used)| *used);
                self.decoded = self.decoded.saturating_add(over as u64);
                if let Some((p, used)) = decoded {
                    self.rbuf.drain(..used);
                    self.scan = None;
                    self.trim_buffers();
                    self.packets += 1;
                    return Ok(p);
                }
                if self.scan.is_none() && !self.rbuf.is_empty() {
                    self.scan = Some(PacketScan::default());
                }
            }
            // A read hands its buffer to the kernel until it completes, and a read given up
            // on (a timeout, a request gone) loses it: the bytes of a packet begun are
            // read into a spare buffer, so that what came before stays and a cancel can
            // read the query's end after them.
            //
            // The reads grow with the packet: each may take as many bytes as are held (at
            // least 64 KiB), so a packet that is not scanned, decoded from its start after
            // every read, costs O(n) decoding in all on a fast link rather than one pass
            // per 4 KiB read (O(n²): a 60 MB result took minutes).
            let into = if self.rbuf.is_empty() {
                &mut self.rbuf
            } else {
                self.spare.reserve(self.rbuf.len().max(64 * 1024));
                &mut self.spare
            };
            match monoio::time::timeout(self.timeout, read_more(&mut self.stream, into)).await {
                Err(_) => return Err(ChError::Timeout),
                Ok(Err(_)) => return Err(ChError::Io("connection closed by server".into())),
                Ok(Ok(n)) => {
                    self.received = self.received.saturating_add(n as u64);
                    if !self.spare.is_empty() {
                        self.rbuf.extend_from_slice(&self.spare);
                        self.spare.clear();
                    }
                }
            }
        }
    }

    /// Once a packet is decoded: a connection kept in a pool does not hold its largest
    /// packet's room, nor the spare buffer past 1 MiB (kept while the packet came in, so
    /// that its many reads over a slow link do not each allocate it anew).
    fn trim_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_KEPT {
            self.rbuf = Vec::with_capacity(64 * 1024);
        }
        if self.spare.capacity() > SPARE_KEPT {
            self.spare = Vec::new();
        }
    }

    fn start_query(&mut self, sql: &str, settings: &[(&str, Setting<'_>)], compression: bool) {
        self.queries += 1;
        self.query_compressed = compression;
        // Nothing of an earlier query's packets is carried over (a query is started on a
        // connection whose last one ended, or that is dropped after an error).
        self.unframe = None;
        self.scan = None;
        let id = format!("croupier-{:016x}-{}", self.id, self.queries);
        if compression {
            // The server compresses what it sends by the user's `network_compression_method`
            // (which a profile may set to ZSTD): LZ4 is what this client reads.
            let mut with_method = settings.to_vec();
            with_method.push(("network_compression_method", Setting::Str("lz4")));
            packet::query(&mut self.wbuf, self.revision, CLIENT_NAME, &id, sql, &with_method, compression);
        } else {
            packet::query(&mut self.wbuf, self.revision, CLIENT_NAME, &id, sql, settings, compression);
        }
    }

    /// Runs a statement that returns no rows (DDL), until EndOfStream.
    pub async fn execute(&mut self, sql: &str, settings: &[(&str, Setting<'_>)]) -> Result<(), ChError> {
        self.start_query(sql, settings, false);
        self.flush().await?;
        self.wait_for(|p| matches!(p, ServerPacket::EndOfStream)).await.map(|_| ())
    }

    /// Reads packets until one `is_end` accepts (returned) or an exception (its error);
    /// progress, profile and log packets in between are skipped.
    async fn wait_for(&mut self, is_end: impl Fn(&ServerPacket) -> bool) -> Result<ServerPacket, ChError> {
        loop {
            match self.next_packet().await? {
                ServerPacket::Exception(e) => return Err(ChError::Server(e)),
                p if is_end(&p) => return Ok(p),
                _ => {}
            }
        }
    }

    /// Sends an `INSERT ... VALUES` query and returns the table's header block.
    pub async fn insert_start(&mut self, sql: &str, settings: &[(&str, Setting<'_>)]) -> Result<BlockHeader, ChError> {
        let compression = self.compression;
        self.start_query(sql, settings, compression);
        self.flush().await?;
        match self.wait_for(|p| matches!(p, ServerPacket::Data(_) | ServerPacket::EndOfStream)).await? {
            ServerPacket::Data(h) => Ok(h),
            _ => Err(ChError::Unexpected("end of stream before the header".into())),
        }
    }

    /// Writes one block of an insert started with [`Connection::insert_start`].
    pub async fn insert_block(&mut self, columns: &[Column], rows: usize) -> Result<(), ChError> {
        self.insert_block_in_order(columns, rows, None).await
    }

    /// [`Connection::insert_block`] with the rows in `order`
    /// (`croupier_protocol::clickhouse::order::sort_order`).
    pub async fn insert_block_in_order(
        &mut self,
        columns: &[Column],
        rows: usize,
        order: Option<&[u32]>,
    ) -> Result<(), ChError> {
        packet::data_in_order(
            &mut self.wbuf,
            self.revision,
            self.compression,
            (columns, rows, order),
            &mut self.scratch,
        );
        self.flush().await
    }

    /// Ends the insert and waits for EndOfStream: the rows are then written.
    pub async fn insert_end(&mut self) -> Result<(), ChError> {
        packet::data(&mut self.wbuf, self.revision, self.compression, &[], 0, &mut self.scratch);
        self.flush().await?;
        self.wait_for(|p| matches!(p, ServerPacket::EndOfStream)).await.map(|_| ())
    }

    /// Runs a `SELECT` and returns its rows, and the rows the server read for it (from its
    /// progress packets; so far: [`Connection::rows_read`]). With
    /// [`ChOptions::compression`], its blocks come compressed, each frame checked.
    pub async fn select(&mut self, sql: &str, settings: &[(&str, Setting<'_>)]) -> Result<Selected, ChError> {
        self.rows_read = 0;
        let compression = self.compression;
        self.start_query(sql, settings, compression);
        self.flush().await?;
        let mut out = Selected::default();
        // The rows the server says it sent (its profile info, sent once the rows are).
        let mut counted: Option<u64> = None;
        loop {
            match self.next_packet().await? {
                ServerPacket::Exception(e) => return Err(ChError::Server(e)),
                ServerPacket::Rows(b) => {
                    if out.columns.is_empty() {
                        out.columns = b.columns.iter().map(|(n, _)| n.clone()).collect();
                    }
                    let mut cols: Vec<_> = b.values.into_iter().map(Vec::into_iter).collect();
                    for _ in 0..b.rows {
                        out.rows.push(cols.iter_mut().map(|c| c.next().unwrap_or(Value::Null)).collect());
                    }
                }
                ServerPacket::Progress { rows, .. } => self.rows_read = self.rows_read.saturating_add(rows),
                ServerPacket::ProfileInfo { rows, .. } => counted = Some(rows),
                ServerPacket::EndOfStream => {
                    // A server sends a select's profile info, counting the rows it sent,
                    // before its end. Packet codes are outside every checksum: a block's
                    // code changed into the end's (or into totals') would end or shorten
                    // the answer unseen — a wrong figure — and leave the rest of it on
                    // the connection.
                    let received = out.rows.len() as u64;
                    if counted != Some(received) {
                        return Err(ChError::Unexpected(match counted {
                            Some(n) => format!("{received} rows received where the server sent {n}"),
                            None => format!("the answer ended after {received} rows without the server's count"),
                        }));
                    }
                    out.read_rows = self.rows_read;
                    return Ok(out);
                }
                _ => {}
            }
        }
    }

    /// The rows the server said it read for the last `SELECT` so far (its progress
    /// packets): of one given up on, what it had read by then.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Sets the per-reply timeout (a probe waits less than an insert).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The per-reply timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Cancels the query in progress (a reader that gave up on it) and reads what the
    /// server still sends until it ends the query (end of stream, or an exception), for
    /// at most `within`: true when it did. A server may finish the step it is in first
    /// (ClickHouse 18.16 checks a cancel, as `max_execution_time`, between blocks read),
    /// so until this returns the query may still be running.
    pub async fn cancel(&mut self, within: Duration) -> bool {
        packet::cancel(&mut self.wbuf);
        let timeout = std::mem::replace(&mut self.timeout, within);
        let ended = async {
            self.flush().await?;
            loop {
                if let ServerPacket::EndOfStream | ServerPacket::Exception(_) = self.next_packet().await? {
                    return Ok::<(), ChError>(());
                }
            }
        };
        let ended = matches!(monoio::time::timeout(within, ended).await, Ok(Ok(())));
        self.timeout = timeout;
        ended
    }

    /// Pings the server.
    pub async fn ping(&mut self) -> Result<(), ChError> {
        packet::ping(&mut self.wbuf);
        self.flush().await?;
        self.wait_for(|p| matches!(p, ServerPacket::Pong)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: i32, message: &str) -> ChError {
        ChError::Server(ServerException {
            code,
            name: "DB::Exception".into(),
            message: message.into(),
            stack_trace: String::new(),
            nested: None,
        })
    }

    #[test]
    fn c3_partitions_per_block_is_told_apart_from_too_many_parts() {
        let partitions = server(
            252,
            // As ClickHouse 26.9 (chdb-core) words it.
            "Too many partitions for single INSERT block (more than 100). The limit is controlled by \
             'max_partitions_per_insert_block' setting. Large number of partitions is a common misconception. \
             It will lead to severe negative performance impact, including slow server startup, slow INSERT \
             queries and slow SELECT queries.",
        );
        assert_eq!(partitions.too_many_partitions(), Some(Some(100)));
        assert!(!partitions.is_bad_data());
        let unnamed = server(252, "Too many partitions for single INSERT block.");
        assert_eq!(unnamed.too_many_partitions(), Some(None));
        // Too many parts is backpressure: retried as it is, neither split nor bad data.
        let parts = server(
            252,
            "Too many parts (300 with average size of 1.20 MiB) in table 'analytics.events'. Merges are \
             processing significantly slower than inserts",
        );
        assert_eq!(parts.too_many_partitions(), None);
        assert!(!parts.is_bad_data());
        assert_eq!(server(60, "Table analytics.nowhere doesn't exist").too_many_partitions(), None);
    }

    /// Review finding: a profile pinning `min_insert_block_size_rows` refuses an insert of
    /// several blocks (452) whatever its rows: the stream is held, not its entries
    /// dead-lettered one by one.
    #[test]
    fn a_settings_constraint_is_the_servers_state_not_bad_data() {
        let pinned =
            server(452, "Setting min_insert_block_size_rows should not be changed. (SETTING_CONSTRAINT_VIOLATION)");
        assert!(pinned.is_server_state());
        assert!(!pinned.is_bad_data() && !pinned.is_raised_by_rows());
        assert!(!server(241, "Memory limit (for query) exceeded").is_server_state());
    }
}
