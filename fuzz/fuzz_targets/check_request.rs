#![no_main]
//! `checkpoint::fuzz::check_request` on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checkpoint::fuzz::check_request(data);
});
