#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moongate_fuzz::re_options(data));
