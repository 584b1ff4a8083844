//! Sans-I/O codecs of the Croupier data plane.
//!
//! Nothing in this crate performs I/O or depends on a runtime: it turns bytes into
//! validated values and values into bytes, so every codec is testable on byte slices and
//! usable from any executor.
//!
//! - [`envelope`]: the event and payment records, as stored in stream batches.
//! - [`validate`]: request bodies (JSON) into records, with field-level errors.
//! - `compact_json`: a parsed `props` object written back as compact text.
//! - [`prescan`]: what is checked of a body before it is parsed.
//! - [`batch`]: the rkyv batch entry a worker reads without deserialising.
//! - [`stream`]: stream names and which stream a record goes to.
//! - [`resp`]: the Redis commands the data plane sends, and reply parsing.
//! - [`signature`]: the per-game HMAC request signature.
//! - [`hll`]: HyperLogLog sketches bit-compatible with Redis's `PFADD`/`PFCOUNT`.
//! - [`otlp`]: OTLP logs and traces (protobuf and OTLP/JSON) into records.

pub mod batch;
pub mod clickhouse;
pub mod cluster;
mod compact_json;
pub mod country;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod hll;
pub mod lease;
pub mod otlp;
pub mod prescan;
pub mod resp;
pub mod signature;
pub mod stream;
pub mod timestamp;
pub mod validate;
