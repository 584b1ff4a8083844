//! Fuzz target `json_envelope`: runs `croupier_protocol::fuzzing::json_envelope` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_protocol::fuzzing::json_envelope(data));
