//! The client side of ClickHouse's native TCP protocol, sans I/O.
//!
//! - [`wire`]: varints, strings, fixed-width integers; a reader that reports "need more".
//! - [`compress`]: LZ4 frames with CityHash128 checksums.
//! - [`block`]: column encoders and the block layout.
//! - [`order`]: the order of a block's rows by a table's sort key, as the server sorts.
//! - [`result`]: the rows of a `SELECT`, decoded into values.
//! - [`scan`]: where a block packet arriving in pieces ends, found as its bytes come.
//! - [`unframe`]: a compressed block packet made whole, frame by frame, as it arrives.
//! - [`packet`]: client packets (hello, query, data, ping) and server packets (hello,
//!   data, exception, progress, profile info, table columns, end of stream, ...).
//!
//! Revisions: the client announces [`CLIENT_REVISION`]; both sides then speak the lower
//! of the two revisions, and every revision-dependent field is written or read by that
//! negotiated revision. Features of the server (what SQL it accepts) are decided by the
//! server's own revision from its hello. Why this is written here rather than taken from
//! a crate: `docs/clickhouse.md`.

pub mod block;
pub mod compress;
pub mod order;
pub mod packet;
pub mod result;
pub mod scan;
pub mod unframe;
pub mod wire;

/// The protocol revision this client speaks (ClickHouse 18.16's, the oldest server we
/// support; newer servers speak it too).
pub const CLIENT_REVISION: u64 = 54412;

/// Revisions at which fields appeared (names as in ClickHouse's sources).
pub mod rev {
    /// Block info in data packets.
    pub const BLOCK_INFO: u64 = 51903;
    /// `total_rows` in progress packets.
    pub const TOTAL_ROWS_IN_PROGRESS: u64 = 51554;
    /// Client info in query packets.
    pub const CLIENT_INFO: u64 = 54032;
    /// Server timezone in hello.
    pub const SERVER_TIMEZONE: u64 = 54058;
    /// Quota key in client info.
    pub const QUOTA_KEY_IN_CLIENT_INFO: u64 = 54060;
    /// Server display name in hello.
    pub const SERVER_DISPLAY_NAME: u64 = 54372;
    /// Version patch in hello and client info.
    pub const VERSION_PATCH: u64 = 54401;
    /// Written rows/bytes in progress packets.
    pub const WRITTEN_IN_PROGRESS: u64 = 54420;
    /// Settings serialized as strings (else binary, by type).
    pub const SETTINGS_AS_STRINGS: u64 = 54429;
    /// `insert_deduplication_token` is understood by servers from this revision (22.2).
    pub const INSERT_DEDUPLICATION_TOKEN: u64 = 54455;
}
