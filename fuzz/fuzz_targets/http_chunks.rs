//! Fuzz target `http_chunks`: runs `croupier_dataplane::fuzzing::http_chunks` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_dataplane::fuzzing::http_chunks(data));
