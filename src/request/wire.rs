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

use super::{Headers, Request, metadata_json};

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
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            1 => fields.attributes(reader.message(wire_type)?)?,
            _ => reader.skip(field, wire_type)?,
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
    /// `HttpRequest.headers`, the map form: (key, value), in arrival order.
    map: Vec<(&'a str, &'a str)>,
    /// `HttpRequest.header_map.headers`, the pair form: (key, raw value or else value).
    pairs: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Fields<'a> {
    /// `AttributeContext`.
    fn attributes(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                1 => self.peer(reader.message(wire_type)?)?,
                4 => self.attribute_request(reader.message(wire_type)?)?,
                11 => self.metadata.push(reader.message(wire_type)?),
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(())
    }

    /// `AttributeContext.Peer` (the source).
    fn peer(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                4 => self.principal = reader.string(wire_type)?,
                5 => self.certificate = reader.string(wire_type)?,
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(())
    }

    /// `AttributeContext.Request`.
    fn attribute_request(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                2 => {
                    self.has_http = true;
                    self.http(reader.message(wire_type)?)?
                }
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(())
    }

    /// `AttributeContext.HttpRequest`.
    fn http(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                1 => self.id = reader.string(wire_type)?,
                2 => self.method = reader.string(wire_type)?,
                3 => {
                    let mut entry = reader.message(wire_type)?;
                    let (mut key, mut value) = ("", "");
                    while let Some((field, wire_type)) = entry.key()? {
                        match field {
                            1 => key = entry.string(wire_type)?,
                            2 => value = entry.string(wire_type)?,
                            _ => entry.skip(field, wire_type)?,
                        }
                    }
                    if self.map.is_empty() {
                        // Envoy sends a dozen or two: one allocation, not four.
                        self.map.reserve(32);
                    }
                    self.map.push((key, value));
                }
                4 => self.path = reader.string(wire_type)?,
                13 => {
                    let mut map = reader.message(wire_type)?;
                    while let Some((field, wire_type)) = map.key()? {
                        match field {
                            1 => self.header_value(map.message(wire_type)?)?,
                            _ => map.skip(field, wire_type)?,
                        }
                    }
                }
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(())
    }

    /// `config.core.v3.HeaderValue`: `raw_value` when set, `value` otherwise.
    fn header_value(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        let (mut key, mut value, mut raw): (&str, &str, &[u8]) = ("", "", &[]);
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                1 => key = reader.string(wire_type)?,
                2 => value = reader.string(wire_type)?,
                3 => raw = reader.bytes(wire_type)?,
                _ => reader.skip(field, wire_type)?,
            }
        }
        let value = if raw.is_empty() {
            value.as_bytes()
        } else {
            raw
        };
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
        // Envoy fills one form or the other; the pair form wins when it has entries.
        let headers = match self.pairs.is_empty() {
            false => pair_headers(&self.pairs),
            true => map_headers(&self.map),
        };
        Ok(Request::finish(
            headers,
            self.method,
            self.path,
            self.id,
            principal,
            certificate,
            metadata,
        ))
    }
}

/// The pair form: names lower-cased, repeated names joined, raw bytes that are not UTF-8 as
/// U+FFFD.
fn pair_headers(pairs: &[(&str, &[u8])]) -> Headers {
    let bytes = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut headers = Headers::with_capacity(bytes, pairs.len());
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
fn map_headers(map: &[(&str, &str)]) -> Headers {
    let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut headers = Headers::with_capacity(bytes, map.len());
    let mut collided = false;
    for (key, value) in map {
        collided |= headers.append(key, value);
    }
    if !collided {
        return headers;
    }
    let mut headers = Headers::with_capacity(bytes, map.len());
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

    /// A length-delimited field's bytes.
    fn bytes(&mut self, wire_type: u8) -> Result<&'a [u8], DecodeError> {
        if wire_type != LEN {
            return Err(self.error("wire type is not length-delimited where it must be"));
        }
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

    fn string(&mut self, wire_type: u8) -> Result<&'a str, DecodeError> {
        let at = *self;
        let bytes = self.bytes(wire_type)?;
        std::str::from_utf8(bytes).map_err(|_| at.error("string field is not UTF-8"))
    }

    /// An embedded message, as a reader of its own.
    fn message(&mut self, wire_type: u8) -> Result<Reader<'a>, DecodeError> {
        let bytes = self.bytes(wire_type)?;
        let start = self.start + self.position - bytes.len();
        Ok(Reader::new(bytes, start))
    }

    /// Skips a field this decoding does not read.
    fn skip(&mut self, field: u32, wire_type: u8) -> Result<(), DecodeError> {
        self.skip_at_depth(field, wire_type, 0)
    }

    fn skip_at_depth(&mut self, field: u32, wire_type: u8, depth: u32) -> Result<(), DecodeError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.advance(8),
            LEN => self.bytes(LEN).map(drop),
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
