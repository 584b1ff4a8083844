//! Fuzz target `batch_entry`: runs `croupier_dataplane::fuzzing::batch_entry` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| croupier_dataplane::fuzzing::batch_entry(data));
