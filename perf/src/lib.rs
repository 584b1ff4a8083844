//! Load generation and measurement for Croupier: the traffic model ([`model`]) and the
//! load generator ([`loadgen`]), used by the `croupier-loadgen` and `croupier-perf`
//! binaries.

pub mod loadgen;
pub mod model;
