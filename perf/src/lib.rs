//! Load generation and measurement for Croupier: the traffic model ([`model`]) and the
//! load generator ([`loadgen`]), used by the `croupier-loadgen` and `croupier-perf`
//! binaries, and the counting allocator ([`alloc_count`]) of the allocation figures.

pub mod alloc_count;
pub mod loadgen;
pub mod model;
