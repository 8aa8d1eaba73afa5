//! The decision id: one id per Check, the same in the decision log line (`decision_id`), on
//! every deny (the client gets it as `x-checkpoint-decision-id`) and, when configured, on the
//! request going upstream. A client who quotes it can be matched with the line.
//!
//! It is the request's `x-request-id` when that is safe to send back as a header value, else a
//! new random id (128 bits from the operating system's generator, as 32 hex digits). Never
//! Envoy's internal stream id (`attributes.request.http.id` on Envoy 1.40), which appears nowhere
//! else. Computed by the boundary (`envoy`) per Check; `response` takes it as an input.

use std::cell::RefCell;

/// The header that carries the decision id to the client (denies) and upstream (when configured).
pub const HEADER: &str = "x-checkpoint-decision-id";

/// Longest `x-request-id` used as it is; a longer one gets a random id instead.
pub const MAX_LEN: usize = 128;

/// One Check's decision id: borrowed from the request, or random. No allocation either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionId<'a> {
    /// The request's own `x-request-id`.
    Request(&'a str),
    /// 32 lower-case hex digits.
    Random([u8; 32]),
}

impl<'a> DecisionId<'a> {
    /// The id for a request whose `x-request-id` header is `request_id`.
    ///
    /// Security: the value goes back to the client and upstream as a header, and Envoy rejects
    /// (or, without `validate_mutations`, may pass on) invalid values; so only 1 to
    /// [`MAX_LEN`] bytes of visible ASCII (`!` to `~`) are used as they are. Anything else (a
    /// control character, a space, non-ASCII, too long, empty, absent) gets a random id.
    pub fn for_request(request_id: Option<&'a str>) -> DecisionId<'a> {
        match request_id {
            Some(id) if is_header_safe(id) => DecisionId::Request(id),
            _ => DecisionId::random(),
        }
    }

    /// A new random id.
    pub fn random() -> DecisionId<'static> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = random_128();
        let mut text = [0u8; 32];
        for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        DecisionId::Random(text)
    }

    pub fn as_str(&self) -> &str {
        match self {
            DecisionId::Request(id) => id,
            // Hex digits are ASCII: never the empty fallback.
            DecisionId::Random(text) => std::str::from_utf8(text).unwrap_or_default(),
        }
    }
}

/// 1 to [`MAX_LEN`] bytes, each visible ASCII.
fn is_header_safe(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Random bytes drawn from the operating system a block at a time: one `getrandom` call per 32
/// ids rather than one per id.
struct Pool {
    bytes: [u8; 512],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; 512], used: 512 }) };
}

fn random_128() -> [u8; 16] {
    let mut out = [0u8; 16];
    let drawn = POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return false;
        };
        if pool.used + out.len() > pool.bytes.len() {
            if getrandom::fill(&mut pool.bytes).is_err() {
                return false;
            }
            pool.used = 0;
        }
        let at = pool.used;
        out.copy_from_slice(&pool.bytes[at..at + 16]);
        pool.used += 16;
        true
    });
    if !drawn {
        out = fallback_128();
    }
    out
}

/// Should the operating system's generator fail: SipHash under std's randomly keyed state of a
/// process-wide counter and the clock. Unique and unguessable enough for a correlation id.
fn fallback_128() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let state = std::collections::hash_map::RandomState::new();
    let half = |domain: u8| {
        let mut h = state.build_hasher();
        h.write_u8(domain);
        h.write_u64(n);
        h.write_u128(nanos);
        h.finish()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(1).to_le_bytes());
    out[8..].copy_from_slice(&half(2).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_request_id_is_the_decision_id() {
        for id in ["6f1c2b1e-3d0a-4c8e", "a", "a,b", &"x".repeat(MAX_LEN)] {
            assert_eq!(
                DecisionId::for_request(Some(id)),
                DecisionId::Request(id),
                "{id}"
            );
        }
    }

    #[test]
    fn anything_else_gets_a_fresh_random_id() {
        let too_long = "x".repeat(MAX_LEN + 1);
        let cases = [
            None,
            Some(""),
            Some("a\r\nx-injected: 1"),
            Some("a\u{0}b"),
            Some("tab\there"),
            Some("with space"),
            Some("zoë"),
            Some("\u{fffd}"),
            Some(too_long.as_str()),
        ];
        let mut seen = std::collections::HashSet::new();
        for case in cases {
            let id = DecisionId::for_request(case);
            let text = id.as_str().to_owned();
            assert!(matches!(id, DecisionId::Random(_)), "{case:?}");
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{text}"
            );
            assert!(seen.insert(text), "ids repeat");
        }
        // Past one block of the pool and across threads: still no repeats.
        for _ in 0..1000 {
            assert!(seen.insert(DecisionId::random().as_str().to_owned()));
        }
        let other = std::thread::spawn(|| DecisionId::random().as_str().to_owned())
            .join()
            .expect("thread");
        assert!(seen.insert(other));
        assert_ne!(fallback_128(), fallback_128());
    }
}
