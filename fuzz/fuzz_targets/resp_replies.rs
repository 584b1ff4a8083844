//! Fuzz target `resp_replies`: runs `croupier_protocol::fuzzing::resp_replies` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_protocol::fuzzing::resp_replies(data));
