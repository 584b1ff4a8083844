//! Packets of the native protocol: what the client sends and what the server answers.

use super::block::{self, BlockError, BlockHeader, Column};
use super::compress;
use super::result::{self, ResultBlock};
use super::wire::{put_str, put_varint, Incomplete, Reader};
use super::{rev, CLIENT_REVISION};

/// Client packet codes.
pub mod client {
    /// Hello.
    pub const HELLO: u64 = 0;
    /// Query.
    pub const QUERY: u64 = 1;
    /// Data block.
    pub const DATA: u64 = 2;
    /// Cancel of the query in progress.
    pub const CANCEL: u64 = 3;
    /// Ping.
    pub const PING: u64 = 4;
}

/// Server packet codes.
pub mod server {
    /// Hello.
    pub const HELLO: u64 = 0;
    /// Data block.
    pub const DATA: u64 = 1;
    /// Exception.
    pub const EXCEPTION: u64 = 2;
    /// Progress.
    pub const PROGRESS: u64 = 3;
    /// Pong.
    pub const PONG: u64 = 4;
    /// End of stream.
    pub const END_OF_STREAM: u64 = 5;
    /// Profile info.
    pub const PROFILE_INFO: u64 = 6;
    /// Totals block.
    pub const TOTALS: u64 = 7;
    /// Extremes block.
    pub const EXTREMES: u64 = 8;
    /// Log block (never compressed).
    pub const LOG: u64 = 10;
    /// Table columns description (before an INSERT's header).
    pub const TABLE_COLUMNS: u64 = 11;
}

/// Version this client reports.
pub const CLIENT_VERSION: (u64, u64, u64) = (18, 16, 1);
/// Query processing stage "complete".
const STAGE_COMPLETE: u64 = 2;
/// Largest decompressed block accepted into one frame when sending.
pub const FRAME_CHUNK: usize = 1 << 20;

/// Appends the client hello.
pub fn hello(out: &mut Vec<u8>, client_name: &str, database: &str, user: &str, password: &str) {
    put_varint(out, client::HELLO);
    put_str(out, client_name.as_bytes());
    put_varint(out, CLIENT_VERSION.0);
    put_varint(out, CLIENT_VERSION.1);
    put_varint(out, CLIENT_REVISION);
    put_str(out, database.as_bytes());
    put_str(out, user.as_bytes());
    put_str(out, password.as_bytes());
}

/// A query-level setting value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<'a> {
    /// Numbers and booleans.
    UInt(u64),
    /// Strings.
    Str(&'a str),
}

/// Appends a query packet followed by the empty block that ends external tables.
pub fn query(
    out: &mut Vec<u8>,
    revision: u64,
    client_name: &str,
    query_id: &str,
    sql: &str,
    settings: &[(&str, Setting<'_>)],
    compression: bool,
) {
    put_varint(out, client::QUERY);
    put_str(out, query_id.as_bytes());
    if revision >= rev::CLIENT_INFO {
        out.push(1); // initial query
        put_str(out, b""); // initial user
        put_str(out, query_id.as_bytes()); // initial query id
        put_str(out, b"[::ffff:127.0.0.1]:0"); // initial address
        out.push(1); // interface: TCP
        put_str(out, b""); // os user
        put_str(out, b""); // client hostname
        put_str(out, client_name.as_bytes());
        put_varint(out, CLIENT_VERSION.0);
        put_varint(out, CLIENT_VERSION.1);
        put_varint(out, CLIENT_REVISION);
        if revision >= rev::QUOTA_KEY_IN_CLIENT_INFO {
            put_str(out, b"");
        }
        if revision >= rev::VERSION_PATCH {
            put_varint(out, CLIENT_VERSION.2);
        }
    }
    for (name, value) in settings {
        put_str(out, name.as_bytes());
        if revision >= rev::SETTINGS_AS_STRINGS {
            out.push(0); // flags: not important
            match value {
                Setting::UInt(v) => put_str(out, v.to_string().as_bytes()),
                Setting::Str(s) => put_str(out, s.as_bytes()),
            }
        } else {
            match value {
                Setting::UInt(v) => put_varint(out, *v),
                Setting::Str(s) => put_str(out, s.as_bytes()),
            }
        }
    }
    put_str(out, b""); // end of settings
    put_varint(out, STAGE_COMPLETE);
    put_varint(out, u64::from(compression));
    put_str(out, sql.as_bytes());
    data(out, revision, compression, &[], 0, &mut Vec::new());
}

/// Appends a data packet carrying a block; `scratch` is reused for compression.
pub fn data(
    out: &mut Vec<u8>,
    revision: u64,
    compression: bool,
    columns: &[Column],
    rows: usize,
    scratch: &mut Vec<u8>,
) {
    data_in_order(out, revision, compression, (columns, rows, None), scratch);
}

/// [`data`] with the block's rows in an order ([`block::write_block_in_order`]):
/// `(columns, rows, order)`.
pub fn data_in_order(
    out: &mut Vec<u8>,
    revision: u64,
    compression: bool,
    (columns, rows, order): (&[Column], usize, Option<&[u32]>),
    scratch: &mut Vec<u8>,
) {
    put_varint(out, client::DATA);
    put_str(out, b""); // temporary table name
    if compression {
        scratch.clear();
        block::write_block_in_order(scratch, revision, columns, rows, order);
        compress::compress_into(scratch, FRAME_CHUNK, out);
    } else {
        block::write_block_in_order(out, revision, columns, rows, order);
    }
}

/// Appends a ping.
pub fn ping(out: &mut Vec<u8>) {
    put_varint(out, client::PING);
}

/// Appends a cancel of the query in progress: the server stops it where it checks, and
/// ends its answer (end of stream, or an exception).
pub fn cancel(out: &mut Vec<u8>) {
    put_varint(out, client::CANCEL);
}

/// The server's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// Server name (`ClickHouse`).
    pub name: String,
    /// Version major.
    pub major: u64,
    /// Version minor.
    pub minor: u64,
    /// The server's own protocol revision.
    pub revision: u64,
    /// Server timezone.
    pub timezone: String,
    /// Display name.
    pub display_name: String,
    /// Version patch.
    pub patch: u64,
}

impl ServerHello {
    /// The revision both sides speak.
    pub fn negotiated_revision(&self) -> u64 {
        self.revision.min(CLIENT_REVISION)
    }
}

/// An exception the server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerException {
    /// ClickHouse error code (e.g. 60 = unknown table).
    pub code: i32,
    /// Exception class name.
    pub name: String,
    /// Message.
    pub message: String,
    /// Server-side stack trace.
    pub stack_trace: String,
    /// The exception that caused this one.
    pub nested: Option<Box<ServerException>>,
}

impl std::fmt::Display for ServerException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClickHouse error {} ({}): {}", self.code, self.name, self.message)
    }
}

impl std::error::Error for ServerException {}

/// One packet from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerPacket {
    /// Hello.
    Hello(ServerHello),
    /// A data block without rows (headers and empty results).
    Data(BlockHeader),
    /// A data block with rows (the result of a `SELECT`).
    Rows(ResultBlock),
    /// An exception: the query failed.
    Exception(ServerException),
    /// Progress counters.
    Progress {
        /// Rows processed.
        rows: u64,
        /// Bytes processed.
        bytes: u64,
        /// Total rows to process, if known.
        total_rows: u64,
    },
    /// Answer to ping.
    Pong,
    /// The query is complete.
    EndOfStream,
    /// Profile info.
    ProfileInfo {
        /// Rows.
        rows: u64,
        /// Blocks.
        blocks: u64,
        /// Bytes.
        bytes: u64,
    },
    /// Columns description of the table an INSERT goes to.
    TableColumns {
        /// Description text.
        description: String,
    },
    /// A log, totals or extremes block, skipped.
    Skipped(u64),
}

/// The server sent something this client cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Unknown packet code.
    UnknownPacket(u64),
    /// A compressed frame is corrupt.
    Frame(String),
    /// A data block carries rows.
    UnexpectedRows(u64),
    /// A result column of a type this client does not decode.
    UnsupportedType(String),
    /// An exception nests more than [`MAX_NESTED_EXCEPTIONS`] deep.
    NestedTooDeep,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::UnknownPacket(c) => write!(f, "unknown server packet {c}"),
            ProtocolError::Frame(e) => write!(f, "compressed frame: {e}"),
            ProtocolError::UnexpectedRows(n) => write!(f, "unexpected data block with {n} rows"),
            ProtocolError::UnsupportedType(t) => write!(f, "result column of unsupported type {t}"),
            ProtocolError::NestedTooDeep => {
                write!(f, "an exception nested more than {MAX_NESTED_EXCEPTIONS} deep")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

enum Step {
    Incomplete,
    Error(ProtocolError),
}

impl From<Incomplete> for Step {
    fn from(_: Incomplete) -> Self {
        Step::Incomplete
    }
}

impl From<BlockError> for Step {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::Incomplete => Step::Incomplete,
            BlockError::UnexpectedRows(n) => Step::Error(ProtocolError::UnexpectedRows(n)),
            BlockError::UnsupportedType(t) => Step::Error(ProtocolError::UnsupportedType(t)),
        }
    }
}

/// Most exceptions in one chain (an exception and those nested in it). Servers send a
/// few; a longer chain is refused, so that neither reading nor dropping it can exhaust
/// the stack.
pub const MAX_NESTED_EXCEPTIONS: usize = 32;

/// An exception and the chain nested in it, read in a loop (not recursively).
fn exception(r: &mut Reader<'_>) -> Result<ServerException, Step> {
    let mut chain = Vec::new();
    loop {
        if chain.len() == MAX_NESTED_EXCEPTIONS {
            return Err(Step::Error(ProtocolError::NestedTooDeep));
        }
        let code = r.i32()?;
        let name = r.string()?;
        let message = r.string()?;
        let stack_trace = r.string()?;
        let more = r.u8()? != 0;
        chain.push(ServerException { code, name, message, stack_trace, nested: None });
        if !more {
            break;
        }
    }
    let mut inner: Option<Box<ServerException>> = None;
    while let Some(mut e) = chain.pop() {
        e.nested = inner;
        inner = Some(Box::new(e));
    }
    match inner {
        Some(e) => Ok(*e),
        None => Err(Step::Error(ProtocolError::NestedTooDeep)),
    }
}

/// A block read whole, rows included, and set aside (totals, extremes, log lines).
fn skipped_block(r: &mut Reader<'_>, revision: u64) -> Result<(), Step> {
    r.str()?; // table name
    result::read_block(r, revision)?;
    Ok(())
}

/// A data packet: its header when it has no rows, else its rows. (A compressed one is
/// read from its frames first: [`super::unframe`].)
fn data_packet(r: &mut Reader<'_>, revision: u64) -> Result<ServerPacket, Step> {
    r.str()?; // table name
    let b = result::read_block(r, revision)?;
    Ok(if b.rows == 0 { ServerPacket::Data(b.header()) } else { ServerPacket::Rows(b) })
}

fn packet(r: &mut Reader<'_>, revision: u64) -> Result<ServerPacket, Step> {
    let code = r.varint()?;
    Ok(match code {
        server::HELLO => {
            let name = r.string()?;
            let major = r.varint()?;
            let minor = r.varint()?;
            let revision = r.varint()?;
            let speak = revision.min(CLIENT_REVISION);
            let timezone = if speak >= rev::SERVER_TIMEZONE { r.string()? } else { String::new() };
            let display_name = if speak >= rev::SERVER_DISPLAY_NAME { r.string()? } else { String::new() };
            let patch = if speak >= rev::VERSION_PATCH { r.varint()? } else { 0 };
            ServerPacket::Hello(ServerHello { name, major, minor, revision, timezone, display_name, patch })
        }
        server::DATA => data_packet(r, revision)?,
        server::TOTALS | server::EXTREMES => {
            skipped_block(r, revision)?;
            ServerPacket::Skipped(code)
        }
        // The server's log lines (`send_logs_level`), rows and all, never compressed.
        server::LOG => {
            skipped_block(r, revision)?;
            ServerPacket::Skipped(code)
        }
        server::EXCEPTION => ServerPacket::Exception(exception(r)?),
        server::PROGRESS => {
            let rows = r.varint()?;
            let bytes = r.varint()?;
            let total_rows = if revision >= rev::TOTAL_ROWS_IN_PROGRESS { r.varint()? } else { 0 };
            if revision >= rev::WRITTEN_IN_PROGRESS {
                r.varint()?;
                r.varint()?;
            }
            ServerPacket::Progress { rows, bytes, total_rows }
        }
        server::PONG => ServerPacket::Pong,
        server::END_OF_STREAM => ServerPacket::EndOfStream,
        server::PROFILE_INFO => {
            let rows = r.varint()?;
            let blocks = r.varint()?;
            let bytes = r.varint()?;
            r.u8()?; // applied limit
            r.varint()?; // rows before limit
            r.u8()?; // calculated rows before limit
            ServerPacket::ProfileInfo { rows, blocks, bytes }
        }
        server::TABLE_COLUMNS => {
            r.str()?; // external table name
            ServerPacket::TableColumns { description: r.string()? }
        }
        other => return Err(Step::Error(ProtocolError::UnknownPacket(other))),
    })
}

/// Decodes one server packet from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the packet and the bytes it took. `revision` is the negotiated revision
/// (any value before the hello). A block packet of a query that asked for compression is
/// decoded from its uncompressed bytes ([`super::unframe`]).
pub fn decode(buf: &[u8], revision: u64) -> Result<Option<(ServerPacket, usize)>, ProtocolError> {
    let mut r = Reader::new(buf);
    match packet(&mut r, revision) {
        Ok(p) => Ok(Some((p, r.position()))),
        Err(Step::Incomplete) => Ok(None),
        Err(Step::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exception packet whose chain of nested exceptions is `depth` long.
    fn nested_exception(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, server::EXCEPTION);
        for i in 0..depth {
            out.extend_from_slice(&60i32.to_le_bytes());
            put_str(&mut out, b"DB::Exception");
            put_str(&mut out, format!("level {i}").as_bytes());
            put_str(&mut out, b"");
            out.push(u8::from(i + 1 < depth));
        }
        out
    }

    #[test]
    fn nested_exceptions_decode_in_order() {
        let bytes = nested_exception(3);
        let Some((ServerPacket::Exception(e), used)) = decode(&bytes, CLIENT_REVISION).expect("decodes") else {
            panic!("an exception")
        };
        assert_eq!(used, bytes.len());
        assert_eq!(e.message, "level 0");
        let inner = e.nested.as_ref().expect("nested");
        assert_eq!(inner.message, "level 1");
        assert_eq!(inner.nested.as_ref().expect("nested").message, "level 2");
        assert!(inner.nested.as_ref().expect("nested").nested.is_none());
        // Cut short anywhere: more bytes needed, never an error.
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], CLIENT_REVISION), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn deeply_nested_exceptions_are_refused_not_a_stack_overflow() {
        let bytes = nested_exception(200_000);
        assert_eq!(decode(&bytes, CLIENT_REVISION), Err(ProtocolError::NestedTooDeep));
        let ok = nested_exception(MAX_NESTED_EXCEPTIONS);
        assert!(matches!(decode(&ok, CLIENT_REVISION), Ok(Some((ServerPacket::Exception(_), _)))));
        let over = nested_exception(MAX_NESTED_EXCEPTIONS + 1);
        assert_eq!(decode(&over, CLIENT_REVISION), Err(ProtocolError::NestedTooDeep));
    }

    /// A `Log` packet as a server sends it with `send_logs_level`: its block has rows
    /// (one line here: a time, a priority, a text), which are read and set aside.
    #[test]
    fn log_packets_with_rows_are_skipped_whole() {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, server::LOG);
        put_str(&mut bytes, b""); // table name
        bytes.extend_from_slice(&[1, 0, 2]); // block info: is_overflows 0, bucket_num -1
        bytes.extend_from_slice(&(-1i32).to_le_bytes());
        bytes.push(0);
        put_varint(&mut bytes, 3); // columns
        put_varint(&mut bytes, 1); // rows
        put_str(&mut bytes, b"event_time");
        put_str(&mut bytes, b"DateTime");
        bytes.extend_from_slice(&1_795_000_000u32.to_le_bytes());
        put_str(&mut bytes, b"priority");
        put_str(&mut bytes, b"Int8");
        bytes.push(7);
        put_str(&mut bytes, b"text");
        put_str(&mut bytes, b"String");
        put_str(&mut bytes, b"Renaming temporary part");
        let log = bytes.len();
        put_varint(&mut bytes, server::END_OF_STREAM);
        let Some((first, used)) = decode(&bytes, CLIENT_REVISION).expect("decodes") else { panic!("a packet") };
        assert_eq!((first, used), (ServerPacket::Skipped(server::LOG), log));
        assert_eq!(decode(&bytes[used..], CLIENT_REVISION), Ok(Some((ServerPacket::EndOfStream, 1))));
        for cut in 0..log {
            assert_eq!(decode(&bytes[..cut], CLIENT_REVISION), Ok(None), "cut at {cut}");
        }
    }
}
