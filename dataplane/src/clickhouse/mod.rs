//! The shard's ClickHouse side: a native-protocol connection on monoio ([`connection`]),
//! the schema and its migration ([`schema`]), column blocks built from stream batches
//! ([`rows`]), grouped so that no block spans too many partitions ([`partitions`]), and
//! the aggregate tables' rows ([`aggregates`]), the `user_days` rows folded from the
//! events inserted ([`user_days`]), and the schema and shard choice of a cluster of shards
//! and replicas ([`cluster`]).

pub mod aggregates;
pub mod cluster;
pub mod connection;
pub mod partitions;
pub mod relayout;
pub mod rows;
pub mod schema;
pub mod user_days;
