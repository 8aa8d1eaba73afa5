#![no_main]
//! `checkpoint::fuzz::userinfo_payload` on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checkpoint::fuzz::userinfo_payload(data);
});
