//! The shard's ClickHouse side: a native-protocol connection on monoio ([`connection`]),
//! the schema and its migration ([`schema`]), column blocks built from stream batches
//! ([`rows`]), grouped so that no block spans too many partitions ([`partitions`]), and
//! the aggregate tables' rows ([`aggregates`]).

pub mod aggregates;
pub mod connection;
pub mod partitions;
pub mod relayout;
pub mod rows;
pub mod schema;
