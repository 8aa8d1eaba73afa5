//! The server's own decoding of `CheckRequest`: the message's bytes straight into a
//! [`Request`], without the generated types.
//!
//! The generated decoding allocates a string for every header name and value (and a hash map
//! for the map form) only for [`Request`] to copy or move them again. This walks the protobuf
//! wire format once, keeps the few fields a `Request` reads as slices of the message, and
//! copies the headers into the one string of [`Headers`]. Field numbers are those of
//! `envoy/service/auth/v3/attribute_context.proto` and `envoy/config/core/v3/base.proto`; every
//! other field is skipped unread. The semantics are protobuf's, so that the result is the one
//! [`Request::from_check`] gives for the same bytes (a test holds them equal): a message field
//! seen twice is merged, a scalar seen twice keeps the last value, repeated fields append, a
//! map key seen twice keeps the last value, `string` fields must be UTF-8.
//!
//! Never panics: a truncated or malformed message is a [`DecodeError`] saying where.

use std::fmt;

use envoy_types::pb::envoy::config::core::v3::Metadata;

use crate::request::{Headers, Request};

/// Why the bytes are not a `CheckRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    what: &'static str,
    offset: usize,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// How deep groups (a deprecated wire type nobody sends, skipped like any unknown field) may
/// nest; prost's limit.
const GROUP_DEPTH: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Decodes one `CheckRequest` message.
pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
    let mut fields = Fields::default();
    let mut reader = Reader::new(bytes, 0);
    while let Some(field) = reader.next()? {
        if field.number == 1 {
            fields.attributes(field.message()?)?;
        }
    }
    fields.into_request()
}

/// What a `Request` is built from, as slices of the message.
#[derive(Default)]
struct Fields<'a> {
    principal: &'a str,
    certificate: &'a str,
    metadata: Vec<Reader<'a>>,
    has_http: bool,
    id: &'a str,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    scheme: &'a str,
    /// `HttpRequest.headers`, the map form: (key, value), in arrival order.
    map: Vec<(&'a str, &'a str)>,
    /// `HttpRequest.header_map.headers`, the pair form: (key, raw value or else value).
    pairs: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Fields<'a> {
    /// `AttributeContext`.
    fn attributes(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some(field) = reader.next()? {
            match field.number {
                1 => self.peer(field.message()?)?,
                4 => self.attribute_request(field.message()?)?,
                11 => self.metadata.push(field.message()?),
                _ => {}
            }
        }
        Ok(())
    }

    /// `AttributeContext.Peer` (the source).
    fn peer(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some(field) = reader.next()? {
            match field.number {
                4 => self.principal = field.string()?,
                5 => self.certificate = field.string()?,
                _ => {}
            }
        }
        Ok(())
    }

    /// `AttributeContext.Request`.
    fn attribute_request(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some(field) = reader.next()? {
            if field.number == 2 {
                let http = field.message()?;
                self.has_http = true;
                self.http(http)?;
            }
        }
        Ok(())
    }

    /// `AttributeContext.HttpRequest`.
    fn http(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some(field) = reader.next()? {
            match field.number {
                1 => self.id = field.string()?,
                2 => self.method = field.string()?,
                3 => {
                    let mut entry = field.message()?;
                    let (mut key, mut value) = ("", "");
                    while let Some(field) = entry.next()? {
                        match field.number {
                            1 => key = field.string()?,
                            2 => value = field.string()?,
                            _ => {}
                        }
                    }
                    if self.map.is_empty() {
                        // Envoy sends a dozen or two: one allocation, not four.
                        self.map.reserve(32);
                    }
                    self.map.push((key, value));
                }
                4 => self.path = field.string()?,
                5 => self.host = field.string()?,
                6 => self.scheme = field.string()?,
                13 => {
                    let mut map = field.message()?;
                    while let Some(field) = map.next()? {
                        if field.number == 1 {
                            self.header_value(field.message()?)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `config.core.v3.HeaderValue`: `raw_value` when set, `value` otherwise.
    fn header_value(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        let (mut key, mut value, mut raw): (&str, &str, &[u8]) = ("", "", &[]);
        while let Some(field) = reader.next()? {
            match field.number {
                1 => key = field.string()?,
                2 => value = field.string()?,
                3 => raw = field.bytes()?,
                _ => {}
            }
        }
        let value = if raw.is_empty() {
            value.as_bytes()
        } else {
            raw
        };
        if self.pairs.is_empty() {
            // As for the map form: one allocation for the usual number of headers.
            self.pairs.reserve(32);
        }
        self.pairs.push((key, value));
        Ok(())
    }

    fn into_request(self) -> Result<Request, DecodeError> {
        let metadata = match self.metadata.is_empty() {
            true => None,
            false => {
                let mut merged = Metadata::default();
                for reader in &self.metadata {
                    prost::Message::merge(&mut merged, reader.rest()).map_err(|_| DecodeError {
                        what: "metadata_context is not a valid Metadata message",
                        offset: reader.start,
                    })?;
                }
                metadata_json(Some(&merged))
            }
        };
        let (principal, certificate) = (self.principal.to_owned(), self.certificate.to_owned());
        if !self.has_http {
            return Ok(Request::without_http(principal, certificate, metadata));
        }
        // Room for the pseudo-headers `Request::finish` may add from the fields.
        let extra =
            Request::PSEUDO_HEADER_BYTES + self.host.len() + self.scheme.len() + self.path.len();
        // Envoy fills one form or the other; the pair form wins when it has entries.
        let headers = match self.pairs.is_empty() {
            false => pair_headers(&self.pairs, extra),
            true => map_headers(&self.map, extra),
        };
        Ok(Request::finish(
            headers,
            self.method,
            self.path,
            self.host,
            self.scheme,
            self.id,
            principal,
            certificate,
            metadata,
        ))
    }
}

/// The pair form: names lower-cased, repeated names joined, raw bytes that are not UTF-8 as
/// U+FFFD.
fn pair_headers(pairs: &[(&str, &[u8])], extra: usize) -> Headers {
    let bytes = pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + extra;
    let mut headers = Headers::with_capacity(bytes, pairs.len() + 3);
    for (key, value) in pairs {
        // Nearly always valid: the plain check is several times cheaper than the lossy walk.
        match std::str::from_utf8(value) {
            Ok(text) => headers.append(key, text),
            Err(_) => headers.append(key, &String::from_utf8_lossy(value)),
        };
    }
    headers
}

/// The map form: a key seen twice keeps its last value (a map), names lower-cased and those
/// that then collide joined. From Envoy every key is unique and lower-case, so nothing
/// collides and one pass does; the rare other case is built again by the map's rules.
fn map_headers(map: &[(&str, &str)], extra: usize) -> Headers {
    let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + extra;
    let mut headers = Headers::with_capacity(bytes, map.len() + 3);
    let mut collided = false;
    for (key, value) in map {
        collided |= headers.append(key, value);
    }
    if !collided {
        return headers;
    }
    let mut headers = Headers::with_capacity(bytes, map.len() + 3);
    for (i, (key, value)) in map.iter().enumerate() {
        let replaced_later = map
            .get(i + 1..)
            .is_some_and(|rest| rest.iter().any(|(k, _)| k == key));
        if !replaced_later {
            headers.append(key, value);
        }
    }
    headers
}

/// One field of a message, as [`Reader::next`] read it.
#[derive(Clone, Copy)]
struct Field<'a> {
    number: u32,
    /// A length-delimited field's bytes; `None` for the other wire types (already skipped).
    payload: Option<&'a [u8]>,
    /// Where the field's value (its length, for a length-delimited one) starts in the whole
    /// message, for errors.
    at: usize,
    /// Where `payload` starts in the whole message.
    start: usize,
}

impl<'a> Field<'a> {
    fn error(&self, what: &'static str) -> DecodeError {
        DecodeError {
            what,
            offset: self.at,
        }
    }

    fn bytes(&self) -> Result<&'a [u8], DecodeError> {
        self.payload
            .ok_or_else(|| self.error("wire type is not length-delimited where it must be"))
    }

    fn string(&self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| self.error("string field is not UTF-8"))
    }

    /// An embedded message, as a reader of its own.
    fn message(&self) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.bytes()?, self.start))
    }
}

/// A cursor over one message's bytes; `base` is where they start in the whole message, for
/// error offsets.
#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    start: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], start: usize) -> Reader<'a> {
        Reader {
            bytes,
            position: 0,
            start,
        }
    }

    fn error(&self, what: &'static str) -> DecodeError {
        DecodeError {
            what,
            offset: self.start + self.position,
        }
    }

    /// The unread bytes.
    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.position..).unwrap_or_default()
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // Keys and lengths below 128, nearly all of them: one byte.
        if let Some(byte) = self.bytes.get(self.position)
            && byte & 0x80 == 0
        {
            self.position += 1;
            return Ok(u64::from(*byte));
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for (i, byte) in self.rest().iter().take(10).enumerate() {
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && *byte > 1 {
                return Err(self.error("varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.position += i + 1;
                return Ok(value);
            }
        }
        Err(self.error("truncated varint"))
    }

    /// The next field, or `None` at the end of the message. A field that is not
    /// length-delimited is skipped here, so that each message's loop only matches numbers: one
    /// copy of the wire format's code, not one inlined at every field a message reads (the code
    /// a Check walks is what it costs behind Envoy, bench/RESULTS.md).
    #[inline(never)]
    fn next(&mut self) -> Result<Option<Field<'a>>, DecodeError> {
        let Some((number, wire_type)) = self.key()? else {
            return Ok(None);
        };
        let at = self.start + self.position;
        if wire_type != LEN {
            self.skip_at_depth(number, wire_type, 0)?;
            return Ok(Some(Field {
                number,
                payload: None,
                at,
                start: at,
            }));
        }
        let payload = self.bytes()?;
        Ok(Some(Field {
            number,
            payload: Some(payload),
            at,
            start: self.start + self.position - payload.len(),
        }))
    }

    /// The next field's number and wire type, or `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.position >= self.bytes.len() {
            return Ok(None);
        }
        let at = *self;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(at.error("invalid field number"));
        }
        Ok(Some((field as u32, (key & 7) as u8)))
    }

    /// A length-delimited field's bytes, its length first.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = *self;
        let len = self.varint()?;
        let start = self.position;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| at.error("length beyond the end of the message"))?;
        self.position = end;
        Ok(self.bytes.get(start..end).unwrap_or_default())
    }

    fn skip_at_depth(&mut self, field: u32, wire_type: u8, depth: u32) -> Result<(), DecodeError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.advance(8),
            LEN => self.bytes().map(drop),
            FIXED32 => self.advance(4),
            START_GROUP => {
                if depth >= GROUP_DEPTH {
                    return Err(self.error("groups nested too deep"));
                }
                loop {
                    let Some((inner, inner_type)) = self.key()? else {
                        return Err(self.error("group without its end"));
                    };
                    if inner_type == END_GROUP {
                        if inner != field {
                            return Err(self.error("group ends with another field's number"));
                        }
                        return Ok(());
                    }
                    self.skip_at_depth(inner, inner_type, depth + 1)?;
                }
            }
            END_GROUP => Err(self.error("end of a group that was not started")),
            _ => Err(self.error("invalid wire type")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.bytes.len().saturating_sub(self.position) < n {
            return Err(self.error("truncated fixed-size field"));
        }
        self.position += n;
        Ok(())
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

/// The reference decoding: what the stages need from a `CheckRequest` as envoy-types decodes
/// it, built the straightforward way. Only tests use it, to hold [`decode`] to protobuf's rules.
#[cfg(any(test, fuzzing))]
pub(crate) mod reference {
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

    use super::metadata_json;
    use crate::request::{Headers, Request};

    pub fn request(check: &CheckRequest) -> Request {
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
            Some(map) if !map.headers.is_empty() => from_header_values(&map.headers),
            _ => from_map(&http.headers),
        };
        Request::finish(
            headers,
            &http.method,
            &http.path,
            &http.host,
            &http.scheme,
            &http.id,
            principal,
            certificate,
            metadata,
        )
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
}

#[cfg(test)]
mod tests {
    use super::reference::request as from_check;
    use super::*;
    use crate::route::Method;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

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
        let req = from_check(&check_with(http));
        assert_eq!(req.method, Some(Method::Get));
        assert_eq!(req.path.as_deref(), Ok("/users/42"));
        assert_eq!(req.header("authorization"), Some("Bearer t"));
        assert_eq!(req.request_id, "req-1");
    }

    /// `host`, `scheme` and `path` become pseudo-headers when the headers lack them; a header
    /// already there is kept as it is, never joined with the field.
    #[test]
    fn the_url_fields_become_pseudo_headers_when_missing() {
        use prost::Message;
        let mut http = HttpRequest {
            method: "GET".into(),
            path: "/a?b=1".into(),
            host: "app.example".into(),
            scheme: "https".into(),
            ..Default::default()
        };
        let bytes = check_with(http.clone()).encode_to_vec();
        let req = decode(&bytes).expect("decodes");
        assert_eq!(req.header(":authority"), Some("app.example"));
        assert_eq!(req.header(":scheme"), Some("https"));
        assert_eq!(req.header(":path"), Some("/a?b=1"));
        http.headers
            .insert(":authority".into(), "other.example".into());
        let bytes = check_with(http).encode_to_vec();
        let req = decode(&bytes).expect("decodes");
        assert_eq!(req.header(":authority"), Some("other.example"));
        assert_eq!(req.header(":scheme"), Some("https"));
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
        let req = from_check(&check_with(http));
        assert_eq!(req.method, Some(Method::Post));
        assert_eq!(req.path.as_deref(), Ok("/orders"));
        assert_eq!(req.header(":authority"), Some("api.example"));
        assert_eq!(req.header("x-tag"), Some("a,b"));
        assert_eq!(req.header("cookie"), Some("a=1; b=2"));
        assert_eq!(req.header("x-bin"), Some("\u{fffd}\u{fffd}ok"));
    }

    #[test]
    fn an_empty_check_request_is_a_request_that_cannot_match() {
        let req = from_check(&CheckRequest::default());
        assert_eq!(req.method, None);
        assert!(req.path.is_err());
        assert!(req.headers.is_empty());
    }

    /// The two decodings of the same bytes give the same view (map-form headers compared as
    /// sets: a hash map has no order).
    fn assert_same_view(check: &CheckRequest) {
        use prost::Message;
        let bytes = check.encode_to_vec();
        let stock = from_check(&CheckRequest::decode(bytes.as_slice()).expect("stock"));
        let lean = decode(&bytes).expect("wire");
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
        let view = decode(&bytes).expect("wire decodes");
        assert_eq!(view.header("x-a"), Some("3"));
        assert_eq!(view.header("x-b"), Some("2"));
        // Besides `:path`, which the path field adds.
        assert_eq!(view.headers.len(), 3);
        assert_eq!(view.header(":path"), Some("/"));

        // The same with names that collide only once lower-cased: joined, the repeated key
        // still keeping its last value.
        let bytes = shaped(vec![shapes::Http {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![entry("x-a", "1"), entry("X-A", "2"), entry("x-a", "3")],
        }]);
        let view = decode(&bytes).expect("wire decodes");
        let joined = view.header("x-a").expect("x-a");
        assert!(joined == "2,3" || joined == "3,2", "{joined}");
        assert_eq!(view.headers.len(), 2);
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
        let view = decode(&bytes).expect("wire decodes");
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
            let lean = decode(candidate);
            if let Ok(stock) = CheckRequest::decode(candidate) {
                let lean =
                    lean.unwrap_or_else(|e| panic!("{candidate:?}: prost accepts, wire {e}"));
                let view = from_check(&stock);
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
        assert!(decode(&extra).is_ok());
        let error = decode(&[0x0a, 0x05, 0x01]).expect_err("truncated");
        assert_eq!(
            error.to_string(),
            "length beyond the end of the message at byte 1"
        );
    }
}
