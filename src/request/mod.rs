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
pub mod wire;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

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
    fn with_capacity(bytes: usize, entries: usize) -> Headers {
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

    /// Envoy's map form as the generated types hold it. The names are unique and, from Envoy,
    /// already lower-case; names that collide once lower-cased are joined as in
    /// [`Headers::from_pairs`].
    fn from_map(map: &std::collections::HashMap<String, String>) -> Headers {
        let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut headers = Headers::with_capacity(bytes, map.len());
        for (name, value) in map {
            headers.append(name, value);
        }
        headers
    }

    /// Envoy's pair form (`header_map`) as the generated types hold it: `raw_value` when it is
    /// set (bytes that are not UTF-8 become U+FFFD), `value` otherwise.
    fn from_header_values(pairs: &[HeaderValue]) -> Headers {
        let bytes = pairs
            .iter()
            .map(|p| p.key.len() + p.value.len().max(p.raw_value.len()))
            .sum();
        let mut headers = Headers::with_capacity(bytes, pairs.len());
        for pair in pairs {
            if pair.raw_value.is_empty() {
                headers.append(&pair.key, &pair.value);
            } else {
                headers.append(&pair.key, &String::from_utf8_lossy(&pair.raw_value));
            }
        }
        headers
    }

    /// Adds a header, its name lower-cased, joining its value to an earlier header of the same
    /// name (`; ` for cookies, `,` otherwise). Returns whether it was joined.
    fn append(&mut self, name: &str, value: &str) -> bool {
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
    /// Reads what the stages need from Envoy's `CheckRequest` as envoy-types decodes it. The
    /// server decodes the bytes itself instead ([`wire::decode`]); both give the same
    /// `Request`.
    pub fn from_check(check: &CheckRequest) -> Request {
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let (principal, certificate) = attributes
            .and_then(|a| a.source.as_ref())
            .map(|s| (s.principal.clone(), s.certificate.clone()))
            .unwrap_or_default();
        let metadata = metadata_json(attributes.and_then(|a| a.metadata_context.as_ref()));
        let Some(http) = http else {
            return Request::without_http(principal, certificate, metadata);
        };
        let headers = match &http.header_map {
            // Envoy fills one form or the other; `header_map` wins when it has entries.
            Some(map) if !map.headers.is_empty() => Headers::from_header_values(&map.headers),
            _ => Headers::from_map(&http.headers),
        };
        Request::finish(
            headers,
            &http.method,
            &http.path,
            &http.id,
            principal,
            certificate,
            metadata,
        )
    }

    /// A Check without HTTP attributes: a request no rule can match.
    fn without_http(
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

    /// What both decodings share once the headers are read.
    fn finish(
        headers: Headers,
        method: &str,
        path: &str,
        id: &str,
        principal: String,
        certificate: String,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Request {
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

/// `metadata_context.filter_metadata` as JSON (namespace -> object), when Envoy sends any.
fn metadata_json(
    context: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    context.filter(|m| !m.filter_metadata.is_empty()).map(|m| {
        m.filter_metadata
            .iter()
            .map(|(k, v)| (k.clone(), struct_to_json(v)))
            .collect()
    })
}

/// A protobuf `Struct` as JSON.
fn struct_to_json(value: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
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
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };

    fn check_with(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(http),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn map_form_is_read() {
        let mut http = HttpRequest {
            method: "GET".into(),
            path: "/users//42?x=1".into(),
            id: "req-1".into(),
            ..Default::default()
        };
        http.headers
            .insert("authorization".into(), "Bearer t".into());
        let req = Request::from_check(&check_with(http));
        assert_eq!(req.method, Some(Method::Get));
        assert_eq!(req.path.as_deref(), Ok("/users/42"));
        assert_eq!(req.header("authorization"), Some("Bearer t"));
        assert_eq!(req.request_id, "req-1");
    }

    #[test]
    fn pair_form_is_read_with_pseudo_headers_and_duplicates() {
        let pair = |k: &str, v: &[u8]| HeaderValue {
            key: k.into(),
            raw_value: v.to_vec(),
            ..Default::default()
        };
        let http = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    pair(":method", b"POST"),
                    pair(":path", b"/orders?id=3"),
                    pair(":authority", b"api.example"),
                    pair("X-Tag", b"a"),
                    pair("x-tag", b"b"),
                    pair("cookie", b"a=1"),
                    pair("Cookie", b"b=2"),
                    pair("x-bin", &[0xff, 0xfe, b'o', b'k']),
                ],
            }),
            ..Default::default()
        };
        let req = Request::from_check(&check_with(http));
        assert_eq!(req.method, Some(Method::Post));
        assert_eq!(req.path.as_deref(), Ok("/orders"));
        assert_eq!(req.header(":authority"), Some("api.example"));
        assert_eq!(req.header("x-tag"), Some("a,b"));
        assert_eq!(req.header("cookie"), Some("a=1; b=2"));
        assert_eq!(req.header("x-bin"), Some("\u{fffd}\u{fffd}ok"));
    }

    #[test]
    fn an_empty_check_request_is_a_request_that_cannot_match() {
        let req = Request::from_check(&CheckRequest::default());
        assert_eq!(req.method, None);
        assert!(req.path.is_err());
        assert!(req.headers.is_empty());
    }

    /// The two decodings of the same bytes give the same view (map-form headers compared as
    /// sets: a hash map has no order).
    fn assert_same_view(check: &CheckRequest) {
        use prost::Message;
        let bytes = check.encode_to_vec();
        let stock = Request::from_check(&CheckRequest::decode(bytes.as_slice()).expect("stock"));
        let lean = wire::decode(&bytes).expect("wire");
        assert_eq!(lean.method, stock.method);
        assert_eq!(lean.path, stock.path);
        assert_eq!(lean.principal, stock.principal);
        assert_eq!(lean.request_id, stock.request_id);
        assert_eq!(lean.certificate, stock.certificate);
        assert_eq!(lean.metadata, stock.metadata);
        let sorted = |r: &Request| {
            let mut h: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            h.sort();
            h
        };
        assert_eq!(sorted(&lean), sorted(&stock));
    }

    #[test]
    fn the_wire_decoding_reads_what_the_generated_one_reads() {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
        use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

        assert_same_view(&CheckRequest::default());
        let mut http = HttpRequest {
            id: "stream-7".into(),
            method: "GET".into(),
            path: "/api//users/./42?x=1".into(),
            host: "api.example".into(),
            scheme: "https".into(),
            protocol: "HTTP/2".into(),
            body: "ignored".into(),
            ..Default::default()
        };
        for (k, v) in [
            (":authority", "api.example"),
            ("authorization", "Bearer t"),
            ("cookie", "a=1; b=2"),
            ("x-request-id", "req-9"),
            ("x-empty", ""),
        ] {
            http.headers.insert(k.into(), v.into());
        }
        let mut check = check_with(http.clone());
        assert_same_view(&check);

        // Source, certificate, metadata, and fields the lean decoding skips.
        let attributes = check.attributes.as_mut().expect("attributes");
        attributes.source = Some(Peer {
            principal: "spiffe://cluster.local/ns/a/sa/b".into(),
            certificate: "-----BEGIN%20CERTIFICATE-----".into(),
            service: "skipped".into(),
            ..Default::default()
        });
        attributes.destination = Some(Peer {
            principal: "skipped".into(),
            ..Default::default()
        });
        attributes
            .context_extensions
            .insert("skipped".into(), "yes".into());
        let payload = Struct {
            fields: [(
                "sub".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("alice".into())),
                },
            )]
            .into(),
        };
        attributes.metadata_context = Some(Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), payload)].into(),
            ..Default::default()
        });
        assert_same_view(&check);

        // No x-request-id: Envoy's id; no method or path fields: the pseudo-headers.
        let mut bare = http.clone();
        bare.headers.remove("x-request-id");
        bare.method.clear();
        bare.path.clear();
        bare.headers.insert(":method".into(), "POST".into());
        bare.headers.insert(":path".into(), "/orders?id=3".into());
        assert_same_view(&check_with(bare));

        // Names that are not lower-case (never from Envoy), colliding once lower-cased.
        let mut shouting = http.clone();
        shouting.headers.insert("X-Tag".into(), "a".into());
        shouting.headers.insert("x-tag".into(), "a".into());
        assert_same_view(&check_with(shouting));

        // The pair form wins over the map form.
        let pair = |k: &str, v: &[u8]| HeaderValue {
            key: k.into(),
            raw_value: v.to_vec(),
            ..Default::default()
        };
        let mut pairs = http;
        pairs.header_map = Some(HeaderMap {
            headers: vec![
                pair(":method", b"PUT"),
                pair(":path", b"/a/b"),
                pair("X-Tag", b"a"),
                pair("x-tag", b"b"),
                pair("cookie", b"a=1"),
                pair("Cookie", b"b=2"),
                pair("x-bin", &[0xff, b'o', b'k']),
                HeaderValue {
                    key: "x-text".into(),
                    value: "plain".into(),
                    ..Default::default()
                },
            ],
        });
        assert_same_view(&check_with(pairs));
    }

    /// The message shapes of `CheckRequest` down to the map form's entries, as they are on the
    /// wire: what the generated types cannot encode (a map key twice, fields in any order).
    mod shapes {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Check {
            #[prost(message, repeated, tag = "1")]
            pub attributes: Vec<Attributes>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Attributes {
            #[prost(message, optional, tag = "4")]
            pub request: Option<Req>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Req {
            #[prost(message, optional, tag = "2")]
            pub http: Option<Http>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Http {
            #[prost(string, tag = "2")]
            pub method: String,
            #[prost(message, repeated, tag = "3")]
            pub headers: Vec<Entry>,
            #[prost(string, tag = "4")]
            pub path: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Entry {
            #[prost(string, tag = "1")]
            pub key: String,
            #[prost(string, tag = "2")]
            pub value: String,
        }
    }

    fn shaped(messages: Vec<shapes::Http>) -> Vec<u8> {
        use prost::Message;
        shapes::Check {
            attributes: messages
                .into_iter()
                .map(|http| shapes::Attributes {
                    request: Some(shapes::Req { http: Some(http) }),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    fn entry(key: &str, value: &str) -> shapes::Entry {
        shapes::Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_repeated_map_key_on_the_wire_keeps_the_last_value_as_the_map_does() {
        use prost::Message;
        let bytes = shaped(vec![shapes::Http {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![entry("x-a", "1"), entry("x-b", "2"), entry("x-a", "3")],
        }]);
        let stock = CheckRequest::decode(bytes.as_slice()).expect("stock decodes");
        assert_same_view(&stock);
        let view = wire::decode(&bytes).expect("wire decodes");
        assert_eq!(view.header("x-a"), Some("3"));
        assert_eq!(view.header("x-b"), Some("2"));
        assert_eq!(view.headers.len(), 2);

        // The same with names that collide only once lower-cased: joined, the repeated key
        // still keeping its last value.
        let bytes = shaped(vec![shapes::Http {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![entry("x-a", "1"), entry("X-A", "2"), entry("x-a", "3")],
        }]);
        let view = wire::decode(&bytes).expect("wire decodes");
        let joined = view.header("x-a").expect("x-a");
        assert!(joined == "2,3" || joined == "3,2", "{joined}");
        assert_eq!(view.headers.len(), 1);
    }

    /// A message field seen twice is merged, as protobuf says: headers from both, the last
    /// method and path.
    #[test]
    fn a_message_seen_twice_on_the_wire_is_merged() {
        use prost::Message;
        let bytes = shaped(vec![
            shapes::Http {
                method: "GET".into(),
                path: "/first".into(),
                headers: vec![entry("x-a", "1")],
            },
            shapes::Http {
                method: "POST".into(),
                path: String::new(),
                headers: vec![entry("x-b", "2")],
            },
        ]);
        let stock = CheckRequest::decode(bytes.as_slice()).expect("stock decodes");
        assert_same_view(&stock);
        let view = wire::decode(&bytes).expect("wire decodes");
        assert_eq!(view.method, Some(Method::Post));
        assert_eq!(view.path.as_deref(), Ok("/first"));
        assert_eq!(view.header("x-a"), Some("1"));
        assert_eq!(view.header("x-b"), Some("2"));
    }

    /// Whatever the bytes, the decoding answers without panicking, and every message prost
    /// accepts it accepts too, with the same view: every prefix and many one-byte corruptions
    /// of a real request.
    #[test]
    fn malformed_messages_are_errors_never_panics() {
        use prost::Message;
        let mut http = HttpRequest {
            id: "1".into(),
            method: "GET".into(),
            path: "/api/users/42".into(),
            ..Default::default()
        };
        http.headers
            .insert("authorization".into(), "Bearer t".into());
        http.headers.insert("x-request-id".into(), "r".into());
        let bytes = check_with(http).encode_to_vec();
        // prost also reads the fields checkpoint skips, so it refuses some messages the lean
        // decoding accepts (a broken field nobody reads); never the other way round.
        let agree = |candidate: &[u8]| {
            let lean = wire::decode(candidate);
            if let Ok(stock) = CheckRequest::decode(candidate) {
                let lean =
                    lean.unwrap_or_else(|e| panic!("{candidate:?}: prost accepts, wire {e}"));
                let view = Request::from_check(&stock);
                assert_eq!(lean.method, view.method);
                assert_eq!(lean.path, view.path);
                let sorted = |h: &Headers| {
                    let mut pairs: Vec<(String, String)> =
                        h.iter().map(|(k, v)| (k.into(), v.into())).collect();
                    pairs.sort();
                    pairs
                };
                assert_eq!(sorted(&lean.headers), sorted(&view.headers));
            }
        };
        for end in 0..bytes.len() {
            agree(&bytes[..end]);
        }
        for i in 0..bytes.len() {
            for b in [0x00, 0x01, 0x07, 0x0a, 0x7f, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[i] = b;
                agree(&corrupt);
            }
        }
        // Unknown fields of every wire type, groups among them, are skipped.
        let mut extra = bytes;
        extra.extend_from_slice(&[0x10, 0x01]); // field 2, varint
        extra.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8]); // field 3, fixed64
        extra.extend_from_slice(&[0x25, 1, 2, 3, 4]); // field 4, fixed32
        extra.extend_from_slice(&[0x2b, 0x08, 0x01, 0x2c]); // field 5, a group holding a varint
        agree(&extra);
        assert!(wire::decode(&extra).is_ok());
        let error = wire::decode(&[0x0a, 0x05, 0x01]).expect_err("truncated");
        assert_eq!(
            error.to_string(),
            "length beyond the end of the message at byte 1"
        );
    }

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
