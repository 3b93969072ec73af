#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanet::fuzz::hello(data));
