//! Metrics: per-shard counters with no lock and no shared cache line on the hot path,
//! summed by the control thread when `/metrics` is scraped, in the Prometheus text format.
//!
//! - [`cells`]: a shard's own counter block (cache-line aligned, one writer).
//! - [`labels`]: the bounded label sets (routes, statuses, games, reasons, tables).
//! - [`histogram`]: fixed `le` buckets.
//! - [`events`]: one type per thing counted, emitted by the shards.
//! - [`registry`]: the layout of a block, the shards' blocks, the sum and its families.
//! - [`encode`]: the text exposition format.
//! - [`process`]: `croupier_build_info` and `process_*`.
//!
//! The names and their meaning: `docs/metrics.md`.

pub mod cells;
pub mod encode;
pub mod events;
pub mod histogram;
pub mod labels;
pub mod process;
pub mod registry;

pub use encode::{Encoder, Kind, CONTENT_TYPE};
pub use events::{
    DeadLettered, Event, EventsAccepted, EventsDelayed, EventsRefused, IngestTransactionSent, InsertFailed,
    RequestServed, RowsInserted,
};
pub use labels::{DeadReason, Table};
pub use registry::{GameIx, Layout, Registry, RouteIx, ShardWriter, Source};
