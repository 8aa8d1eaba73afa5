//! The boundary in: `CheckRequest` becomes our own [`Request`].
//!
//! Envoy sends the request's headers either as a map (`headers`, lower-case keys, repeated
//! headers joined) or as pairs (`header_map`, with `encode_raw_headers: true`, and from
//! proxyless gRPC clients, which also leave `host`, `path` and `method` empty). Both become one
//! case-insensitive [`Headers`] view, built once. The path is normalised here (see [`path`]), so
//! every later stage sees the path the upstream will act on.
//!
//! Called by `service` for every Check. Only this module, `service` and `response` touch
//! protobuf types. [`wire`] is the server's own, leaner decoding of `CheckRequest`: the same
//! bytes, only the fields a `Request` needs, the header map as a list (no hashing).
//! Must never panic on any input: non-UTF-8 header bytes become U+FFFD, never an error.

pub mod path;

use crate::route::Method;

/// What the stages need to know about one request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `None` for methods a rule file cannot name (TRACE, CONNECT, lower-case, empty).
    pub method: Option<Method>,
    /// The normalised path, or why it could not be normalised safely.
    pub path: Result<String, path::PathError>,
    pub headers: Headers,
    /// The peer's principal (a SPIFFE id under Istio mTLS), when Envoy sends one.
    pub principal: String,
    /// Envoy's request id (`x-request-id`), for logs.
    pub request_id: String,
    /// The peer certificate, URL-encoded PEM, when Envoy is set to include it.
    pub certificate: String,
    /// `metadata_context.filter_metadata` as JSON (namespace -> object), when Envoy sends it.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Request headers: lower-case names, in arrival order.
///
/// A small vector scanned linearly: requests carry a few dozen headers at most, and a scan of
/// that many short keys beats hashing them all to build a map. Names and values live back to
/// back in one string, so building the view costs two allocations however many headers there
/// are.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// Every name (lower-case) and value; `entries` point into it. A value replaced by a join
    /// stays behind, unreferenced.
    text: String,
    entries: Vec<Entry>,
}

/// One header: byte ranges of `Headers::text`, and the name's [`tag`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u32,
    name: (usize, usize),
    value: (usize, usize),
}

/// A name's length, first and last bytes in one number: two different names rarely share it,
/// so comparing tags first skips almost every string comparison of a lookup.
fn tag(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let first = bytes.first().copied().unwrap_or(0);
    let last = bytes.last().copied().unwrap_or(0);
    ((bytes.len() as u32) << 16) | (u32::from(first) << 8) | u32::from(last)
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl Headers {
    /// Room for `entries` headers whose names and values add up to `bytes`.
    pub(crate) fn with_capacity(bytes: usize, entries: usize) -> Headers {
        Headers {
            text: String::with_capacity(bytes),
            entries: Vec::with_capacity(entries),
        }
    }

    /// Builds the view from name/value pairs; names are lower-cased and repeated names joined
    /// the way Envoy joins them in its map form (`; ` for cookies, `,` otherwise).
    pub fn from_pairs<I, K, V>(pairs: I) -> Headers
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut headers = Headers::default();
        for (name, value) in pairs {
            headers.append(name.as_ref(), value.as_ref());
        }
        headers
    }

    /// Adds a header, its name lower-cased, joining its value to an earlier header of the same
    /// name (`; ` for cookies, `,` otherwise). Returns whether it was joined.
    pub(crate) fn append(&mut self, name: &str, value: &str) -> bool {
        let start = self.text.len();
        self.text.push_str(name);
        let end = self.text.len();
        if let Some(added) = self.text.get_mut(start..end) {
            added.make_ascii_lowercase();
        }
        let added = self.text.get(start..end).unwrap_or_default();
        let added_tag = tag(added);
        let existing = self
            .entries
            .iter()
            .position(|e| e.tag == added_tag && self.text.get(e.name.0..e.name.1) == Some(added));
        let Some(i) = existing else {
            self.text.push_str(value);
            self.entries.push(Entry {
                tag: added_tag,
                name: (start, end),
                value: (end, self.text.len()),
            });
            return false;
        };
        // The name is already there: forget the copy just made and join the values.
        self.text.truncate(start);
        let entry = self.entries[i];
        let separator = if self.text.get(entry.name.0..entry.name.1) == Some("cookie") {
            "; "
        } else {
            ","
        };
        let (old_start, old_end) = entry.value;
        if old_end != self.text.len() {
            // Not the last thing written: copy the old value to the end first.
            self.text.extend_from_within(old_start..old_end);
        }
        let joined_start = self.text.len() - (old_end - old_start);
        self.text.push_str(separator);
        self.text.push_str(value);
        self.entries[i].value = (joined_start, self.text.len());
        true
    }

    fn name(&self, entry: &Entry) -> &str {
        self.text
            .get(entry.name.0..entry.name.1)
            .unwrap_or_default()
    }

    fn value(&self, entry: &Entry) -> &str {
        self.text
            .get(entry.value.0..entry.value.1)
            .unwrap_or_default()
    }

    /// The value of a header; `name` must be lower-case (configuration lower-cases every name).
    pub fn get(&self, name: &str) -> Option<&str> {
        let wanted = tag(name);
        self.entries
            .iter()
            .find(|e| e.tag == wanted && self.name(e) == name)
            .map(|e| self.value(e))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|e| (self.name(e), self.value(e)))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Request {
    /// A Check without HTTP attributes: a request no rule can match.
    pub(crate) fn without_http(
        principal: String,
        certificate: String,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Request {
        Request {
            method: None,
            path: Err(path::PathError::NotOriginForm),
            headers: Headers::default(),
            principal,
            request_id: String::new(),
            certificate,
            metadata,
        }
    }

    /// The bytes of the pseudo-header names [`Request::finish`] may add.
    pub(crate) const PSEUDO_HEADER_BYTES: usize =
        ":authority".len() + ":scheme".len() + ":path".len();

    /// What both decodings share once the headers are read. `host`, `scheme` and `path` are
    /// `HttpRequest`'s fields: each becomes its pseudo-header (`:authority`, `:scheme`,
    /// `:path`) when the headers do not already carry it, so that every later stage reads the
    /// request's URL from one place whichever form Envoy (or a proxyless client) sent.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of one message, read once"
    )]
    pub(crate) fn finish(
        mut headers: Headers,
        method: &str,
        path: &str,
        host: &str,
        scheme: &str,
        id: &str,
        principal: String,
        certificate: String,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Request {
        for (name, value) in [(":authority", host), (":scheme", scheme), (":path", path)] {
            if !value.is_empty() && !headers.contains(name) {
                headers.append(name, value);
            }
        }
        let method_text = non_empty(method).or_else(|| headers.get(":method"));
        let method = method_text.and_then(Method::parse);
        let raw_path = non_empty(path).or_else(|| headers.get(":path"));
        let path = raw_path
            .map(path::normalize)
            .unwrap_or(Err(path::PathError::NotOriginForm));
        // Envoy 1.40 fills `id` with its internal stream id, which appears nowhere else; the
        // x-request-id header is what access logs and upstreams see.
        let request_id = headers.get("x-request-id").unwrap_or(id).to_owned();
        Request {
            method,
            path,
            principal,
            request_id,
            headers,
            certificate,
            metadata,
        }
    }

    /// The value of a lower-case header name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// A request for the tests of the identity stage: path `/` and one `authorization` header.
#[cfg(test)]
pub(crate) fn with_authorization(authorization: &str) -> Request {
    Request {
        method: None,
        path: Ok("/".into()),
        headers: Headers::from_pairs([("authorization", authorization.to_owned())]),
        principal: String::new(),
        request_id: String::new(),
        certificate: String::new(),
        metadata: None,
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Whether a backoffice marker value turns the flag on: present and not `0`, `false` or empty.
pub fn is_truthy_flag(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some(v) => !v.eq_ignore_ascii_case("false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffice_flag_values() {
        for (value, want) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("FALSE"), false),
            (Some("1"), true),
            (Some("true"), true),
            (Some("yes"), true),
        ] {
            assert_eq!(is_truthy_flag(value), want, "{value:?}");
        }
    }
}
