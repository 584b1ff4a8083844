//! Fuzz target `hll_redis_string`: runs `croupier_protocol::fuzzing::hll_redis_string` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_protocol::fuzzing::hll_redis_string(data));
