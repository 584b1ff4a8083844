//! The shard's Redis side: one pipelined connection ([`connection`]), found through
//! Sentinel where configured ([`sentinel`]), and the consumer group's backlog as this
//! shard sees it ([`backlog`]).

pub mod backlog;
pub mod connection;
pub mod sentinel;
