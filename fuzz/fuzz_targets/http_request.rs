//! Fuzz target `http_request`: runs `croupier_dataplane::fuzzing::http_request` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_dataplane::fuzzing::http_request(data));
