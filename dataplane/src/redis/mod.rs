//! The shard's Redis side: one pipelined connection ([`connection`]), found through
//! Sentinel where configured ([`sentinel`]), or one per primary of a Redis Cluster
//! ([`cluster`]), and the consumer group's backlog as this shard sees it ([`backlog`]);
//! whether a reply is overdue, for `/readyz` ([`overdue`]); the ingest appends of requests
//! waiting at once, sent as one transaction ([`append_group`]); the partition counts
//! ingest has written with ([`partition_counts`]). Every connection, to Redis
//! or to a sentinel, starts with the same handshake ([`auth`]).

pub mod append_group;
pub mod auth;
pub mod backlog;
pub mod cluster;
pub mod connection;
pub mod overdue;
pub mod partition_counts;
pub mod sentinel;
