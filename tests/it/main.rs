//! Integration tests: the data plane against real `redis-server` processes started by
//! the harness (`croupier_it`), over real TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aggregate;
mod analytics;
mod api_hardening;
mod append_groups;
mod body;
mod ch_cluster;
mod clickhouse;
mod client_ingest;
mod clients;
mod config;
mod control;
mod dashboard;
mod demo;
mod fixture;
mod framing;
mod fuzz_corpus;
mod grafana;
mod haproxy;
mod hll;
mod ingest;
mod limits;
mod load;
mod logging;
mod metrics;
mod nginx;
mod otlp;
mod pinning;
mod pipeline;
mod redis_auth;
mod redis_cluster;
mod redis_faults;
mod refusals;
mod replication;
mod retries;
mod sdk_browser;
mod sentinel;
mod shutdown;
mod trimming;
mod user_days;
mod worker;
