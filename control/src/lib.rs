//! The control plane of the Croupier data plane.
//!
//! - [`config`]: the TOML configuration with `CROUPIER_*` environment overrides.
//! - [`metrics`]: per-shard counters, their registry and the Prometheus text format.
//! - [`logging`]: structured logs, text or JSON, off the threads that log.

pub mod config;
pub mod logging;
pub mod metrics;
