#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moongate_fuzz::timer_record(data));
