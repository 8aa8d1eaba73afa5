//! Header blocks in and out of a gRPC call: the request head of a new stream, checked as RFC
//! 9113 section 8 says (pseudo-headers first and once, lower-case names, no connection-specific
//! fields) and read for what gRPC needs (`:path`, `content-type`, `grpc-timeout`,
//! `grpc-encoding`); the unary request message inside its 5-octet prefix; and the answers'
//! header blocks, whose two fixed fields live in the peer's HPACK table.

use std::time::Duration;

use super::Code;
use super::conn::{CHECK_PATH, MAX_HEADER_LIST, MAX_MESSAGE};
use super::hpack;

/// The decoded request head of a new stream. One per connection, cleared for every header
/// block, so its strings keep their buffers.
#[derive(Default)]
pub(super) struct RequestHead {
    pub(super) method: Option<http::Method>,
    pub(super) scheme: String,
    pub(super) authority: String,
    pub(super) path: String,
    /// Which of `:scheme`, `:authority`, `:path` were present (bits 0, 1, 2).
    pub(super) seen: u8,
    pub(super) is_check: bool,
    pub(super) grpc_content_type: bool,
    pub(super) timeout: Option<Duration>,
    /// `grpc-encoding` other than identity.
    pub(super) compressed: bool,
    /// Regular headers, kept only for routed RPCs.
    pub(super) headers: http::HeaderMap,
    pub(super) regular_seen: bool,
    pub(super) list_size: usize,
    pub(super) malformed: Option<&'static str>,
}

pub(super) const SEEN_SCHEME: u8 = 1;
pub(super) const SEEN_AUTHORITY: u8 = 2;
pub(super) const SEEN_PATH: u8 = 4;

impl RequestHead {
    pub(super) fn clear(&mut self) {
        self.method = None;
        self.scheme.clear();
        self.authority.clear();
        self.path.clear();
        self.seen = 0;
        self.is_check = false;
        self.grpc_content_type = false;
        self.timeout = None;
        self.compressed = false;
        if !self.headers.is_empty() {
            self.headers.clear();
        }
        self.regular_seen = false;
        self.list_size = 0;
        self.malformed = None;
    }

    pub(super) fn has(&self, seen: u8) -> bool {
        self.seen & seen != 0
    }

    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        self.list_size += name.len() + value.len() + 32;
        // Past the limit nothing is kept (the block is still decoded to keep the table in step):
        // indexed references of a few octets each must not make the server copy megabytes.
        if self.malformed.is_some() || self.list_size > MAX_HEADER_LIST {
            return;
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            self.malformed = Some("an upper-case header name");
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                self.malformed = Some("a pseudo-header after a regular header");
                return;
            }
            let (slot, seen) = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        self.malformed = Some("two :method pseudo-headers");
                    }
                    match http::Method::from_bytes(value) {
                        Ok(m) => self.method = Some(m),
                        Err(_) => self.malformed = Some("an invalid :method"),
                    }
                    return;
                }
                b"scheme" => (&mut self.scheme, SEEN_SCHEME),
                b"authority" => (&mut self.authority, SEEN_AUTHORITY),
                b"path" => {
                    self.is_check = value == CHECK_PATH;
                    (&mut self.path, SEEN_PATH)
                }
                _ => {
                    self.malformed = Some("an unknown pseudo-header");
                    return;
                }
            };
            if self.seen & seen != 0 {
                self.malformed = Some("a repeated pseudo-header");
            }
            self.seen |= seen;
            slot.push_str(&String::from_utf8_lossy(value));
            return;
        }
        self.regular_seen = true;
        match name {
            b"content-type" => {
                self.grpc_content_type = value == b"application/grpc"
                    || value.starts_with(b"application/grpc+")
                    || value.starts_with(b"application/grpc;");
            }
            b"grpc-timeout" => {
                self.timeout = std::str::from_utf8(value)
                    .ok()
                    .and_then(crate::service::parse_grpc_timeout);
            }
            b"grpc-encoding" => self.compressed = value != b"identity",
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => {
                self.malformed = Some("a connection-specific header");
                return;
            }
            b"te" if value != b"trailers" => {
                self.malformed = Some("te other than trailers");
                return;
            }
            _ => {}
        }
        if !self.is_check {
            match (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                (Ok(name), Ok(value)) => {
                    self.headers.append(name, value);
                }
                _ => self.malformed = Some("an invalid header"),
            }
        }
    }
}

/// The two fields every Check answer repeats, `content-type: application/grpc` and
/// `grpc-status: 0`, are added to the peer's HPACK table by the first answer and referred to by
/// index after that: the next answers' header blocks are two octets and one. Nothing else ever
/// enters the table, so the entries never move (62 is the newest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AnswerTable {
    /// The table size the peer allows (SETTINGS_HEADER_TABLE_SIZE; 4096 until it says less).
    pub(super) max: usize,
    /// 0: nothing added; 1: `content-type` at 62; 2: `grpc-status: 0` at 62, `content-type` at 63.
    added: u8,
}

/// What the two entries take in the peer's table (RFC 7541 section 4.1).
const ANSWER_ENTRIES_SIZE: usize = (12 + 16 + 32) + (11 + 1 + 32);

impl AnswerTable {
    pub(super) const fn new() -> AnswerTable {
        AnswerTable {
            max: 4096,
            added: 0,
        }
    }

    /// The table holds both entries only if it is large enough; otherwise literals only.
    fn indexing(&self) -> bool {
        self.max >= ANSWER_ENTRIES_SIZE
    }

    /// `:status 200` and `content-type`.
    pub(super) fn head(&mut self) -> &'static [u8] {
        // 0x88: `:status 200` (static 8). 0x5f: literal with incremental indexing, name static 31;
        // 0x0f 0x10: literal without indexing, name static 31.
        const INDEXING: &[u8] = b"\x88\x5f\x10application/grpc";
        const LITERAL: &[u8] = b"\x88\x0f\x10\x10application/grpc";
        if !self.indexing() {
            return LITERAL;
        }
        match self.added {
            0 => {
                self.added = 1;
                INDEXING
            }
            1 => &[0x88, 0x80 | 62],
            _ => &[0x88, 0x80 | 63],
        }
    }

    /// `grpc-status: 0`.
    pub(super) fn trailers(&mut self) -> &'static [u8] {
        // 0x40: literal with incremental indexing, new name; 0x00: without indexing.
        const INDEXING: &[u8] = b"\x40\x0bgrpc-status\x010";
        const LITERAL: &[u8] = b"\x00\x0bgrpc-status\x010";
        if !self.indexing() {
            return LITERAL;
        }
        match self.added {
            0 => LITERAL,
            1 => {
                self.added = 2;
                INDEXING
            }
            _ => &[0x80 | 62],
        }
    }
}

/// The request message of a unary call: exactly one uncompressed length-prefixed message.
pub(super) fn grpc_message(body: &[u8]) -> Result<&[u8], (Code, &'static str)> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err((Code::Internal, "missing request message"));
    };
    let Some((len, message)) = rest.split_first_chunk::<4>() else {
        return Err((Code::Internal, "truncated gRPC message prefix"));
    };
    if flag != 0 {
        // The call said no `grpc-encoding` (or identity): a compressed message is a protocol
        // error of the client's (INTERNAL, as the gRPC spec says).
        return Err((Code::Internal, "compressed message without grpc-encoding"));
    }
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_MESSAGE {
        return Err((
            Code::ResourceExhausted,
            "request message larger than 4194304 octets",
        ));
    }
    match message.len().cmp(&len) {
        std::cmp::Ordering::Less => Err((Code::Internal, "truncated request message")),
        std::cmp::Ordering::Greater => Err((
            Code::Unimplemented,
            "more than one request message in a unary call",
        )),
        std::cmp::Ordering::Equal => Ok(message),
    }
}

/// `grpc-status` and, when there is one, the percent-encoded `grpc-message`.
pub(super) fn status_trailers(block: &mut Vec<u8>, code: Code, message: &str) {
    let code = (code as i32).to_string();
    hpack::encode_field(block, b"grpc-status", code.as_bytes());
    if !message.is_empty() {
        let mut encoded = Vec::with_capacity(message.len());
        for &b in message.as_bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                encoded.push(b);
            } else {
                encoded.extend_from_slice(format!("%{b:02X}").as_bytes());
            }
        }
        hpack::encode_field(block, b"grpc-message", &encoded);
    }
}

pub(super) fn encode_headers(block: &mut Vec<u8>, headers: &http::HeaderMap) {
    for (name, value) in headers {
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            continue;
        }
        hpack::encode_field(block, name.as_str().as_bytes(), value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn a_unary_request_is_one_plain_message() {
        assert_eq!(grpc_message(&[0, 0, 0, 0, 2, 8, 1]), Ok(&[8u8, 1][..]));
        assert_eq!(grpc_message(&[0, 0, 0, 0, 0]), Ok(&[][..]));
        assert_eq!(grpc_message(&[]).map_err(|e| e.0), Err(Code::Internal));
        assert_eq!(
            grpc_message(&[0, 0, 0]).map_err(|e| e.0),
            Err(Code::Internal)
        );
        assert_eq!(
            grpc_message(&[0, 0, 0, 0, 3, 1]).map_err(|e| e.0),
            Err(Code::Internal)
        );
        assert_eq!(
            grpc_message(&[1, 0, 0, 0, 1, 1]).map_err(|e| e.0),
            Err(Code::Internal)
        );
        assert_eq!(
            grpc_message(&[0, 0, 0, 0, 1, 1, 0]).map_err(|e| e.0),
            Err(Code::Unimplemented)
        );
        assert_eq!(
            grpc_message(&[0, 0x7f, 0, 0, 0]).map_err(|e| e.0),
            Err(Code::ResourceExhausted)
        );
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let mut block = Vec::new();
        status_trailers(&mut block, Code::InvalidArgument, "bad 100% \u{e9}\n");
        let mut fields = Vec::new();
        let mut decoder = hpack::Decoder::new(4096);
        let decoded = decoder.decode(&block, |n, v| {
            fields.push((n.to_vec(), v.to_vec()));
            Ok::<(), Infallible>(())
        });
        assert!(decoded.is_ok());
        assert_eq!(
            fields,
            vec![
                (b"grpc-status".to_vec(), b"3".to_vec()),
                (b"grpc-message".to_vec(), b"bad 100%25 %C3%A9%0A".to_vec()),
            ]
        );
    }
}
