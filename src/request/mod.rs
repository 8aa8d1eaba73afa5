//! The boundary in: `CheckRequest` becomes our own [`Request`].
//!
//! Envoy sends the request's headers either as a map (`headers`, lower-case keys, repeated
//! headers joined) or as pairs (`header_map`, with `encode_raw_headers: true`, and from
//! proxyless gRPC clients, which also leave `host`, `path` and `method` empty). Both become one
//! case-insensitive [`Headers`] view, built once. The path is normalised here (see [`path`]), so
//! every later stage sees the path the upstream will act on.
//!
//! Called by `service` for every Check. Only this module and `response` touch protobuf types.
//! Must never panic on any input: non-UTF-8 header bytes become U+FFFD, never an error.

pub mod path;

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
        let mut entries: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let name = name.as_ref().to_ascii_lowercase();
            let value = value.into();
            match entries.iter_mut().find(|(n, _)| *n == name) {
                Some((_, existing)) => {
                    existing.push_str(if name == "cookie" { "; " } else { "," });
                    existing.push_str(&value);
                }
                None => entries.push((name, value)),
            }
        }
        Headers { entries }
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
    /// Reads what the stages need from Envoy's `CheckRequest`.
    pub fn from_check(check: &CheckRequest) -> Request {
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let source = attributes.and_then(|a| a.source.as_ref());
        let principal = source.map(|s| s.principal.clone()).unwrap_or_default();
        let certificate = source.map(|s| s.certificate.clone()).unwrap_or_default();
        let metadata = attributes
            .and_then(|a| a.metadata_context.as_ref())
            .filter(|m| !m.filter_metadata.is_empty())
            .map(|m| {
                m.filter_metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), struct_to_json(v)))
                    .collect()
            });
        let Some(http) = http else {
            return Request {
                method: None,
                path: Err(path::PathError::NotOriginForm),
                headers: Headers::default(),
                principal,
                request_id: String::new(),
                certificate,
                metadata,
            };
        };
        let headers = match &http.header_map {
            // Envoy fills one form or the other; `header_map` wins when it has entries.
            Some(map) if !map.headers.is_empty() => {
                Headers::from_pairs(map.headers.iter().map(|h| {
                    let value = if h.raw_value.is_empty() {
                        h.value.clone()
                    } else {
                        String::from_utf8_lossy(&h.raw_value).into_owned()
                    };
                    (h.key.as_str(), value)
                }))
            }
            _ => Headers::from_pairs(http.headers.iter().map(|(k, v)| (k.as_str(), v.clone()))),
        };
        let method_text = non_empty(&http.method).or_else(|| headers.get(":method"));
        let raw_path = non_empty(&http.path).or_else(|| headers.get(":path"));
        // Envoy 1.40 fills `id` with its internal stream id, which appears nowhere else; the
        // x-request-id header is what access logs and upstreams see.
        let request_id = headers
            .get("x-request-id")
            .or_else(|| non_empty(&http.id))
            .unwrap_or_default()
            .to_owned();
        Request {
            method: method_text.and_then(Method::parse),
            path: raw_path
                .map(path::normalize)
                .unwrap_or(Err(path::PathError::NotOriginForm)),
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
