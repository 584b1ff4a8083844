//! The control plane's side of the data plane: what its thread reads to answer
//! `/metrics` and `/readyz` on the control port, with connections of its own (never a
//! data shard's).
//!
//! - [`streams`]: each stream's backlog, length and oldest unacknowledged entry;
//! - [`ready`]: readiness per component (Redis, ClickHouse, the streams' marks).

pub mod ready;
pub mod streams;
