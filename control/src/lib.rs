//! The control plane of the Croupier data plane.
//!
//! - [`config`]: the TOML configuration with `CROUPIER_*` environment overrides.

pub mod config;
