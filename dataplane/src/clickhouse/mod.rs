//! The shard's ClickHouse side: a native-protocol connection on monoio ([`connection`]),
//! the schema and its migration ([`schema`]), column blocks built from stream batches
//! ([`rows`]), grouped so that no block spans too many partitions ([`partitions`]), and
//! the aggregate tables' rows ([`aggregates`]), and the schema and shard choice of a
//! cluster of shards and replicas ([`cluster`]).

pub mod aggregates;
pub mod cluster;
pub mod connection;
pub mod partitions;
pub mod relayout;
pub mod rows;
pub mod schema;
