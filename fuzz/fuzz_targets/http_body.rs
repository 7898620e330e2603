#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qm_fuzz_targets::http_body(data));
