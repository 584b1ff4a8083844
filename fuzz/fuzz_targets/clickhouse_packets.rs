//! Fuzz target `clickhouse_packets`: runs `croupier_protocol::fuzzing::clickhouse_packets` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_protocol::fuzzing::clickhouse_packets(data));
