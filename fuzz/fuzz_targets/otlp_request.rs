//! Fuzz target `otlp_request`: runs `croupier_protocol::fuzzing::otlp_request` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_protocol::fuzzing::otlp_request(data));
