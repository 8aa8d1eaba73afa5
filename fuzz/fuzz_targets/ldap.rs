#![no_main]
//! `checkpoint::fuzz::ldap` on every input that is UTF-8.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        checkpoint::fuzz::ldap(text);
    }
});
