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
/// that many short keys beats hashing them all to build a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// Builds the view from name/value pairs; names are lower-cased and repeated names joined
    /// the way Envoy joins them in its map form (`; ` for cookies, `,` otherwise).
    pub fn from_pairs<I, K, V>(pairs: I) -> Headers
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut headers = Headers::default();
        for (name, value) in pairs {
            headers.append(name.as_ref().to_ascii_lowercase(), value.into());
        }
        headers
    }

    /// Envoy's map form, taking its strings rather than copying them. The names are unique
    /// and, from Envoy, already lower-case; any other name is lower-cased in place, and names
    /// that then collide are joined as in [`Headers::from_pairs`].
    fn from_map(map: std::collections::HashMap<String, String>) -> Headers {
        let mut entries = Vec::with_capacity(map.len());
        let mut renamed = false;
        for (mut name, value) in map {
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                name.make_ascii_lowercase();
                renamed = true;
            }
            entries.push((name, value));
        }
        if !renamed {
            return Headers { entries };
        }
        let mut headers = Headers {
            entries: Vec::with_capacity(entries.len()),
        };
        for (name, value) in entries {
            headers.append(name, value);
        }
        headers
    }

    /// Envoy's map form as [`wire`] decodes it, a list of entries in arrival order, with the
    /// map's own rule for a repeated key (the last one wins). Names are handled as in
    /// [`Headers::from_map`].
    fn from_map_entries(map: Vec<wire::MapEntry>) -> Headers {
        if map
            .iter()
            .any(|e| e.key.bytes().any(|b| b.is_ascii_uppercase()))
        {
            // Never from Envoy: exactly what the generic decoding would have built.
            return Headers::from_map(map.into_iter().map(|e| (e.key, e.value)).collect());
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(map.len());
        for wire::MapEntry { key, value } in map {
            match entries.iter_mut().find(|(n, _)| *n == key) {
                Some((_, existing)) => *existing = value,
                None => entries.push((key, value)),
            }
        }
        Headers { entries }
    }

    /// Envoy's pair form (`header_map`), taking its strings: raw bytes that are UTF-8 are
    /// moved, not copied; others become U+FFFD where they are not.
    fn from_header_values(pairs: Vec<HeaderValue>) -> Headers {
        let mut headers = Headers {
            entries: Vec::with_capacity(pairs.len()),
        };
        for pair in pairs {
            let HeaderValue {
                key: mut name,
                value,
                raw_value,
            } = pair;
            name.make_ascii_lowercase();
            let value = if raw_value.is_empty() {
                value
            } else {
                String::from_utf8(raw_value)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            };
            headers.append(name, value);
        }
        headers
    }

    /// Adds a header whose name is already lower-case, joining it to an earlier one of the
    /// same name.
    fn append(&mut self, name: String, value: String) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push_str(if name == "cookie" { "; " } else { "," });
                existing.push_str(&value);
            }
            None => self.entries.push((name, value)),
        }
    }

    /// The value of a header; `name` must be lower-case (configuration lower-cases every name).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Request {
    /// Reads what the stages need from Envoy's `CheckRequest`, copying what it keeps. The
    /// server takes the request instead ([`Request::from_check_owned`]); both give the same
    /// `Request`.
    pub fn from_check(check: &CheckRequest) -> Request {
        Request::from_check_owned(check.clone())
    }

    /// Reads what the stages need from Envoy's `CheckRequest`, moving its strings (the
    /// headers above all) instead of copying them: the Check's hot path.
    pub fn from_check_owned(check: CheckRequest) -> Request {
        let (http, source, metadata_context) = match check.attributes {
            Some(a) => (a.request.and_then(|r| r.http), a.source, a.metadata_context),
            None => (None, None, None),
        };
        let (principal, certificate) = source
            .map(|s| (s.principal, s.certificate))
            .unwrap_or_default();
        let metadata = metadata_json(metadata_context);
        let Some(http) = http else {
            return Request::without_http(principal, certificate, metadata);
        };
        let headers = match http.header_map {
            // Envoy fills one form or the other; `header_map` wins when it has entries.
            Some(map) if !map.headers.is_empty() => Headers::from_header_values(map.headers),
            _ => Headers::from_map(http.headers),
        };
        Request::finish(
            headers,
            &http.method,
            &http.path,
            http.id,
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

    /// The server's path: a `CheckRequest` decoded by [`wire`], its strings moved. Gives the
    /// `Request` [`Request::from_check`] gives for the same bytes.
    pub fn from_wire(check: wire::CheckRequest) -> Request {
        let (http, source, metadata_context) = match check.attributes {
            Some(a) => (a.request.and_then(|r| r.http), a.source, a.metadata_context),
            None => (None, None, None),
        };
        let (principal, certificate) = source
            .map(|s| (s.principal, s.certificate))
            .unwrap_or_default();
        let metadata = metadata_json(metadata_context);
        let Some(http) = http else {
            return Request::without_http(principal, certificate, metadata);
        };
        let headers = match http.header_map {
            Some(map) if !map.headers.is_empty() => Headers::from_header_values(map.headers),
            _ => Headers::from_map_entries(http.headers),
        };
        Request::finish(
            headers,
            &http.method,
            &http.path,
            http.id,
            principal,
            certificate,
            metadata,
        )
    }

    /// What both decodings share once the headers are read.
    fn finish(
        headers: Headers,
        method: &str,
        path: &str,
        id: String,
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
        let request_id = match headers.get("x-request-id") {
            Some(id) => id.to_owned(),
            None => id,
        };
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

/// `CheckRequest` as the server decodes it: the same wire format (field numbers from
/// `envoy/service/auth/v3/attribute_context.proto`), only the fields a [`Request`] reads; every
/// other field is skipped unread. The `headers` map is read as the list of entries it is on the
/// wire, which spares a hash map (hashing every name, growing the table) per Check; the
/// map's rule for a repeated key is applied when the view is built.
pub mod wire {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub attributes: Option<AttributeContext>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeContext {
        #[prost(message, optional, tag = "1")]
        pub source: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        pub request: Option<AttributeRequest>,
        #[prost(message, optional, tag = "11")]
        pub metadata_context: Option<Metadata>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Peer {
        #[prost(string, tag = "4")]
        pub principal: String,
        #[prost(string, tag = "5")]
        pub certificate: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeRequest {
        #[prost(message, optional, tag = "2")]
        pub http: Option<HttpRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpRequest {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub method: String,
        #[prost(message, repeated, tag = "3")]
        pub headers: Vec<MapEntry>,
        #[prost(string, tag = "4")]
        pub path: String,
        #[prost(message, optional, tag = "13")]
        pub header_map: Option<HeaderMap>,
    }

    /// One entry of a `map<string, string>`, as it is encoded.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MapEntry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// `metadata_context.filter_metadata` as JSON (namespace -> object), when Envoy sends any.
fn metadata_json(
    context: Option<envoy_types::pb::envoy::config::core::v3::Metadata>,
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
        let lean = Request::from_wire(wire::CheckRequest::decode(bytes.as_slice()).expect("wire"));
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

    #[test]
    fn a_repeated_map_key_on_the_wire_keeps_the_last_value_as_the_map_does() {
        use prost::Message;
        let entry = |k: &str, v: &str| wire::MapEntry {
            key: k.into(),
            value: v.into(),
        };
        let lean = wire::CheckRequest {
            attributes: Some(wire::AttributeContext {
                request: Some(wire::AttributeRequest {
                    http: Some(wire::HttpRequest {
                        method: "GET".into(),
                        path: "/".into(),
                        headers: vec![entry("x-a", "1"), entry("x-b", "2"), entry("x-a", "3")],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        };
        let bytes = lean.encode_to_vec();
        let stock = CheckRequest::decode(bytes.as_slice()).expect("stock decodes");
        assert_same_view(&stock);
        let view = Request::from_wire(lean);
        assert_eq!(view.header("x-a"), Some("3"));
        assert_eq!(view.headers.len(), 2);
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
