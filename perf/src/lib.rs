//! Load generation and measurement for Croupier: the traffic model ([`model`]) and the
//! load generators ([`loadgen`]; [`otlp_load`] for OTLP/HTTP and OTLP/gRPC), used by the `croupier-loadgen` and `croupier-perf`
//! binaries, and the counting allocator ([`alloc_count`]) of the allocation figures.

pub mod alloc_count;
pub mod loadgen;
pub mod otlp_load;
/// The traffic model, shared with `croupier demo` (it lives in the data plane, which this
/// crate depends on).
pub use croupier_dataplane::demo::model;
