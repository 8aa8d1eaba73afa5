#![no_main]
//! `checkpoint::fuzz::jwks` on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checkpoint::fuzz::jwks(data);
});
