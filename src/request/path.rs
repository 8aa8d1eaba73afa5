//! Path normalisation: turns the `:path` Envoy reports into the path the upstream will act on,
//! so that a rule is matched against what will really be served.
//!
//! The request stage calls [`normalize`] on `attributes.request.http.path` (which still carries
//! the query string); the pipeline then hands the result to the route table. The rule loader
//! uses the same function on the keys of the rule file, so keys and requests are spelled alike.
//!
//! It must never guess: a spelling that two servers could read differently (an encoded slash,
//! a backslash, a `;` path parameter, a broken escape) is refused with a [`PathError`], never
//! repaired. It never decodes twice, never panics and never allocates more than the output.

/// Longest path, in bytes and without the query, that is accepted.
pub const MAX_PATH_LEN: usize = 8192;

/// Why a path cannot be normalised. The request is refused; the variant says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is not in origin form (it must start with \"/\")")]
    NotOriginForm,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a nul byte")]
    Nul,
    #[error("path contains a control character")]
    ControlCharacter,
    #[error("path contains a \"%\" that is not followed by two hex digits")]
    BadPercentEncoding,
    #[error("path contains a \";\" path parameter")]
    PathParameter,
}

/// Normalises a request path (query and fragment allowed, and ignored).
///
/// The result starts with `/`, has no empty or dot segments, keeps a trailing slash, has every
/// remaining escape in upper-case hex, and is a fixed point: `normalize(&normalize(x)?)` is
/// `normalize(x)`.
///
/// # Errors
///
/// The first [`PathError`] met, scanning left to right after the origin-form and length checks.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    // `?` and `#` are ASCII, so the index is a char boundary.
    let path = match raw.find(['?', '#']) {
        Some(end) => raw.get(..end).unwrap_or(raw),
        None => raw,
    };
    // Security: `*`, absolute-form (`http://host/admin`) and empty paths are not matched against
    // rules at all; a rule key is always origin-form.
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    // The common case, a path with nothing to decode, refuse or remove, is copied as it is.
    if is_plain(path) {
        return Ok(path.to_owned());
    }
    let decoded = decode(path)?;
    Ok(remove_dot_segments(&decoded))
}

/// True when `path` has nothing for [`decode`] or [`remove_dot_segments`] to change or refuse:
/// no `%`, `\`, `;`, control character (C1 ones included), empty segment (`//`) or segment starting with a dot
/// (`/.`, which covers `.` and `..`; `/.well-known` merely takes the full route).
fn is_plain(path: &str) -> bool {
    let mut previous = 0u8;
    for &b in path.as_bytes() {
        match b {
            // 0xC2 leads U+0080..U+00BF, among them the C1 control characters.
            b'%' | b'\\' | b';' | 0x7f | 0xc2 => return false,
            b if b < 0x20 => return false,
            b'/' | b'.' if previous == b'/' => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

/// Decodes the escapes of unreserved characters, upper-cases the others, and refuses the
/// characters that servers disagree on. Runs exactly once: its output is never decoded again.
fn decode(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let byte = match (hex_digit(chars.next()), hex_digit(chars.next())) {
                    (Some(high), Some(low)) => (high << 4) | low,
                    // Security: a stray `%` is read as a literal by some servers and as an error
                    // by others; refuse it rather than pick one.
                    _ => return Err(PathError::BadPercentEncoding),
                };
                match byte {
                    // Security: `/admin%2Fx` is one segment to us but two to a server that
                    // decodes before routing; refuse instead of guessing which one it is.
                    b'/' => return Err(PathError::EncodedSlash),
                    // Security: Windows and some Java servers treat `\` as `/`.
                    b'\\' => return Err(PathError::EncodedBackslash),
                    // Security: a NUL truncates the path in C-based servers.
                    0 => return Err(PathError::Nul),
                    b if is_unreserved(b) => out.push(char::from(b)),
                    // Everything else stays encoded, exactly as the upstream will receive it;
                    // `%25` stays `%25`, so `%252e` is never a dot (decode once only).
                    b => push_escape(&mut out, b),
                }
            }
            '\\' => return Err(PathError::Backslash),
            '\0' => return Err(PathError::Nul),
            // C0, DEL and the C1 controls (U+0080..U+009F), which some terminals act on when a
            // log line is shown.
            c if c.is_control() => return Err(PathError::ControlCharacter),
            // Security: Tomcat and Jetty strip `;params` from each segment, so `/public/..;/admin`
            // reaches `/admin` while it looks like it is under `/public`. An encoded `%3B` is not
            // split on by servers and is kept (above).
            ';' => return Err(PathError::PathParameter),
            // Everything else, non-ASCII included, passes through unchanged.
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Merges repeated slashes and removes `.` and `..` segments (RFC 3986 section 5.2.4), never
/// climbing above the root. `path` starts with `/` and has already been decoded.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    // Whether the output ends with a slash: after an empty segment (a trailing `/`) or after a
    // dot segment, as `/a/b/..` is `/a/`.
    let mut trailing_slash = false;
    // The first item is the empty string before the leading `/`.
    for segment in path.split('/').skip(1) {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                // `out` is `/seg/seg...`; drop the last `/seg`. At the root there is nothing to drop.
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                trailing_slash = true;
            }
            segment => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// RFC 3986 section 2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_digit(c: Option<char>) -> Option<u8> {
    // `to_digit(16)` is below 16, so the conversion never fails.
    c?.to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0f)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut for plain paths gives what the full road gives: every path of up to five
    /// characters from an alphabet of the characters that matter, after the leading `/`.
    #[test]
    fn plain_paths_take_a_shortcut_to_the_same_result() {
        let alphabet = ['/', '.', 'a', '%', '2', 'f', ';', '\\', '\u{1}', '\u{e9}'];
        let mut paths = vec![String::from("/")];
        let mut last = paths.clone();
        for _ in 0..5 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(next.iter().cloned());
            last = next;
        }
        assert!(paths.len() > 100_000);
        let mut plain = 0;
        for path in &paths {
            let full = decode(path).map(|d| remove_dot_segments(&d));
            assert_eq!(normalize(path), full, "{path:?}");
            plain += usize::from(is_plain(path));
        }
        assert!(plain > 1000, "the shortcut was taken {plain} times");
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        raw: String,
        #[serde(default)]
        normalized: Option<String>,
        #[serde(default)]
        error: Option<String>,
    }

    #[test]
    fn check_case() {
        let cases: Vec<Case> =
            serde_json::from_str(include_str!("../../tests/cases/paths.json")).expect("paths.json");
        assert!(cases.len() >= 50, "only {} cases", cases.len());
        let mut failures = Vec::new();
        for case in &cases {
            let got = normalize(&case.raw);
            let ok = match (&got, &case.normalized, &case.error) {
                (Ok(path), Some(want), None) => path == want,
                (Err(e), None, Some(want)) => format!("{e:?}") == *want,
                (_, None, None) | (_, Some(_), Some(_)) => {
                    panic!(
                        "case {:?}: give exactly one of normalized and error",
                        case.raw
                    )
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{:?}: got {got:?}, want {:?} / {:?}",
                    case.raw, case.normalized, case.error
                ));
            }
            if let Ok(path) = &got {
                let again = normalize(path);
                if again.as_ref() != Ok(path) {
                    failures.push(format!(
                        "{:?}: not idempotent: {path:?} -> {again:?}",
                        case.raw
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn too_long() {
        let at_limit = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        assert_eq!(normalize(&at_limit).as_deref(), Ok(at_limit.as_str()));
        let over = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(normalize(&over), Err(PathError::TooLong));
        // The query does not count.
        let with_query = format!("{at_limit}?{}", "q".repeat(MAX_PATH_LEN));
        assert_eq!(normalize(&with_query).as_deref(), Ok(at_limit.as_str()));
    }

    #[test]
    fn every_byte_escape_is_idempotent() {
        for byte in 0..=u8::MAX {
            let raw = format!("/a%{byte:02x}b/");
            if let Ok(path) = normalize(&raw) {
                assert_eq!(normalize(&path).as_ref(), Ok(&path), "{raw}");
            }
        }
    }
}
