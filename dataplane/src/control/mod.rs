//! The control plane's side of the data plane: the control listener and what its thread
//! reads to answer `/metrics` and `/readyz`, with connections of its own (never a data
//! shard's).
//!
//! - [`listener`]: the control port's thread, routes and answers;
//! - [`dashboard`]: the web dashboard's built files, served at `/`;
//! - [`streams`]: each stream's backlog, length and oldest unacknowledged entry;
//! - [`ready`]: readiness per component (Redis, ClickHouse, the streams' marks).

pub mod dashboard;
pub mod listener;
pub mod ready;
pub mod streams;
