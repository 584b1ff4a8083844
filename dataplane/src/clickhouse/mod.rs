//! The shard's ClickHouse side: a native-protocol connection on monoio ([`connection`]),
//! the schema and its migration ([`schema`]), and column blocks built from stream
//! batches ([`rows`]).

pub mod connection;
pub mod rows;
pub mod schema;
