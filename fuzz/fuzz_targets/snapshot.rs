#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moongate_fuzz::snapshot(data));
