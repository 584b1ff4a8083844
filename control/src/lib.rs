//! The control plane of the Croupier data plane.
//!
//! - [`config`]: the TOML configuration with `CROUPIER_*` environment overrides.
//! - [`metrics`]: per-shard counters, their registry and the Prometheus text format.

pub mod config;
pub mod metrics;
