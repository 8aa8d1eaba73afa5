#![no_main]
//! `checkpoint::fuzz::login_redirect` on every input that is UTF-8: the text up to the first two
//! newlines is the `Accept` header and the `Host`, the rest the request's path.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut parts = text.splitn(3, '\n');
        let accept = parts.next().unwrap_or_default();
        let host = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        checkpoint::fuzz::login_redirect(accept, host, target);
    }
});
