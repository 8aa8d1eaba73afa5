//! checkpoint's own HTTP/2 server seen from the wire: a client written here sends raw frames
//! (header blocks from an independent HPACK encoder, loona-hpack) and reads the raw answers.
//! What a well-behaved client like tonic's never does: split header blocks, padding, tiny
//! windows, protocol errors, resets, too many streams, random frames, HTTP/1.1 on the port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests: a failed step should stop the test loudly.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::Message;
use support::userinfo::UserInfoServer;
use support::{Server, answer, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = r#"{
  "/": { "GET": { "authorization": { "expression": "true", "public": true } } }
}"#;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A client that speaks HTTP/2 frame by frame.
struct Raw {
    socket: TcpStream,
    buf: Vec<u8>,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
}

impl Raw {
    /// Connects, sends the preface and `settings`, and reads the server's SETTINGS.
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let mut raw = Raw {
            socket: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
        };
        raw.socket.write_all(PREFACE).await.expect("preface");
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        raw.send(SETTINGS, 0, 0, &payload).await;
        let first = raw.next().await.expect("the server's SETTINGS");
        assert_eq!((first.kind, first.flags), (SETTINGS, 0), "{first:?}");
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut out = Vec::new();
        let len = (payload.len() as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        // A peer that already closed makes this fail; the reads say what happened.
        let _ = self.socket.write_all(&out).await;
    }

    /// The next frame, or None at the end of the connection or after a second of silence.
    async fn next(&mut self) -> Option<Frame> {
        self.next_within(Duration::from_secs(5)).await
    }

    async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(wait, self.socket.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame that is not connection housekeeping (SETTINGS, WINDOW_UPDATE, PING).
    async fn next_on_streams(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next().await?;
            if !matches!(frame.kind, SETTINGS | WINDOW_UPDATE | PING) {
                return Some(frame);
            }
        }
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.encoder
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn fields(&mut self, block: &[u8]) -> Vec<(String, String)> {
        self.decoder
            .decode(block)
            .expect("a valid header block")
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    /// The request headers of a Check.
    fn check_headers(&mut self) -> Vec<u8> {
        self.block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", CHECK_PATH),
            (":authority", "checkpoint"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ])
    }

    /// The next frame on `stream` or on no stream, skipping the NO_ERROR resets of earlier
    /// streams answered before their requests ended (RFC 9113 section 8.1).
    async fn next_for(&mut self, stream: u32) -> Option<Frame> {
        loop {
            let frame = self.next_on_streams().await?;
            if frame.kind == RST_STREAM && frame.stream < stream && frame.payload == [0; 4] {
                continue;
            }
            return Some(frame);
        }
    }

    /// Opens a reflection call on `stream` (HEADERS only) and returns one request for it,
    /// framed: "the file containing envoy.service.auth.v3.Authorization".
    async fn open_reflection(&mut self, stream: u32) -> Vec<u8> {
        let headers = self.block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (
                ":path",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]);
        self.send(HEADERS, END_HEADERS, stream, &headers).await;
        let symbol = b"envoy.service.auth.v3.Authorization";
        let mut message = vec![0x22, symbol.len() as u8];
        message.extend_from_slice(symbol);
        grpc_frame(&message)
    }

    /// Reads one whole gRPC answer on `stream`: its headers, message (if any) and trailers.
    async fn answer(&mut self, stream: u32) -> GrpcAnswer {
        let mut answer = GrpcAnswer::default();
        loop {
            let frame = self
                .next_for(stream)
                .await
                .unwrap_or_else(|| panic!("stream {stream}: the connection ended: {answer:?}"));
            assert_eq!(frame.stream, stream, "{frame:?}");
            match frame.kind {
                HEADERS => {
                    answer.blocks.push(frame.payload.clone());
                    let fields = self.fields(&frame.payload);
                    if answer.headers.is_empty() {
                        answer.headers = fields;
                    } else {
                        answer.trailers = fields;
                    }
                }
                DATA => answer.body.extend_from_slice(&frame.payload),
                other => panic!("stream {stream}: unexpected frame {other}: {frame:?}"),
            }
            if frame.flags & END_STREAM != 0 {
                return answer;
            }
        }
    }

    /// Frames until the connection ends; the GOAWAY among them, if any.
    async fn goaway(&mut self) -> Option<(u32, u32)> {
        let mut found = None;
        while let Some(frame) = self.next_within(Duration::from_secs(5)).await {
            if frame.kind == GOAWAY {
                let last = u32::from_be_bytes(frame.payload[0..4].try_into().unwrap());
                let code = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
                found = Some((last, code));
            }
        }
        found
    }
}

#[derive(Debug, Default)]
struct GrpcAnswer {
    /// The header blocks as they arrived (HPACK-encoded).
    blocks: Vec<Vec<u8>>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl GrpcAnswer {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .chain(&self.trailers)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn check_response(&self) -> CheckResponse {
        assert!(self.body.len() >= 5, "{self:?}");
        assert_eq!(self.body[0], 0, "uncompressed");
        let len = u32::from_be_bytes(self.body[1..5].try_into().unwrap()) as usize;
        assert_eq!(self.body.len(), 5 + len, "one message");
        CheckResponse::decode(&self.body[5..]).expect("a CheckResponse")
    }
}

/// A message in its gRPC frame: uncompressed, length-prefixed.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// The gRPC message of an allowed Check.
fn check_message() -> Vec<u8> {
    grpc_frame(&request("GET", "/", &[]).encode_to_vec())
}

fn assert_allowed(answer: &GrpcAnswer) {
    assert_eq!(answer.get(":status"), Some("200"), "{answer:?}");
    assert_eq!(answer.get("content-type"), Some("application/grpc"));
    assert_eq!(answer.trailers, vec![("grpc-status".into(), "0".into())]);
    assert_eq!(super_answer_status(&answer.check_response()), 200);
}

fn super_answer_status(response: &CheckResponse) -> u16 {
    answer(response).http_status
}

/// The rules need no identity; user-info is never called (nothing listens there).
async fn server() -> Server {
    Server::start(RULES, &[("USERINFO_URL", "http://127.0.0.1:9/userinfo")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_arrive_in_pieces_and_are_answered_whole() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    // The server acknowledges our SETTINGS.
    let ack = raw.next().await.expect("frames");
    let ack = if ack.kind == WINDOW_UPDATE {
        raw.next().await.expect("frames")
    } else {
        ack
    };
    assert_eq!((ack.kind, ack.flags), (SETTINGS, 1));

    // Stream 1: the message in three DATA frames, the second one padded.
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    let body = check_message();
    let (a, rest) = body.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    raw.send(DATA, 0, 1, a).await;
    let mut padded = vec![4u8];
    padded.extend_from_slice(b);
    padded.extend_from_slice(&[0; 4]);
    raw.send(DATA, PADDED, 1, &padded).await;
    raw.send(DATA, END_STREAM, 1, c).await;
    assert_allowed(&raw.answer(1).await);

    // Stream 3: the header block in a HEADERS and two CONTINUATION frames, the message whole.
    let headers = raw.check_headers();
    let (a, rest) = headers.split_at(2);
    let (b, c) = rest.split_at(1);
    raw.send(HEADERS, 0, 3, a).await;
    raw.send(CONTINUATION, 0, 3, b).await;
    raw.send(CONTINUATION, END_HEADERS, 3, c).await;
    raw.send(DATA, END_STREAM, 3, &body).await;
    assert_allowed(&raw.answer(3).await);

    // Streams 5 and 7 interleaved, answered each on its own stream.
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 5, &headers).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 7, &headers).await;
    raw.send(DATA, END_STREAM, 7, &body).await;
    assert_allowed(&raw.answer(7).await);
    raw.send(DATA, END_STREAM, 5, &body).await;
    assert_allowed(&raw.answer(5).await);

    // PING is answered with the same payload.
    raw.send(PING, 0, 0, b"12345678").await;
    loop {
        let frame = raw.next().await.expect("PING ACK");
        if frame.kind == PING {
            assert_eq!(
                (frame.flags, frame.payload.as_slice()),
                (1, &b"12345678"[..])
            );
            break;
        }
    }
}

/// The first answer adds `content-type` and `grpc-status: 0` to the client's HPACK table; the
/// next answers refer to them (two octets of headers, one of trailers). A client whose table is
/// too small is told so with a size update and gets literals only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_use_the_clients_header_table_as_far_as_it_allows() {
    let server = server().await;
    let body = check_message();
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let mut blocks = Vec::new();
    for stream in [1, 3, 5] {
        let headers = raw.check_headers();
        raw.send(HEADERS, END_HEADERS, stream, &headers).await;
        raw.send(DATA, END_STREAM, stream, &body).await;
        let answer = raw.answer(stream).await;
        assert_allowed(&answer);
        blocks.push(answer.blocks);
    }
    assert!(blocks[0][0].len() > 2, "{blocks:?}");
    assert_eq!(blocks[1], vec![vec![0x88, 0xbf], vec![0xbe]]);
    assert_eq!(blocks[2], blocks[1]);
    // The client shrinks its table below what both entries take: a size update to 64 opens
    // the next block, then literals.
    raw.send(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 64]).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 7, &headers).await;
    raw.send(DATA, END_STREAM, 7, &body).await;
    let answer = raw.answer(7).await;
    assert_allowed(&answer);
    assert_eq!(answer.blocks[0][..2], [0x3f, 0x21], "{:?}", answer.blocks);
    assert!(answer.blocks[1].len() > 1);
    // A table of 0 from the start: a size update to 0, never an index above the static table.
    let mut raw = Raw::connect(server.grpc, &[(1, 0)]).await;
    for stream in [1, 3] {
        let headers = raw.check_headers();
        raw.send(HEADERS, END_HEADERS, stream, &headers).await;
        raw.send(DATA, END_STREAM, stream, &body).await;
        let answer = raw.answer(stream).await;
        assert_allowed(&answer);
        if stream == 1 {
            assert_eq!(answer.blocks[0][0], 0x20, "{:?}", answer.blocks);
        }
        assert!(
            answer
                .blocks
                .iter()
                .flatten()
                .all(|&b| b != 0xbe && b != 0xbf),
            "{:?}",
            answer.blocks
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_waits_for_the_clients_window() {
    let server = server().await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 8: the answer's message has to wait for WINDOW_UPDATEs.
    let mut raw = Raw::connect(server.grpc, &[(4, 8)]).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    raw.send(DATA, END_STREAM, 1, &check_message()).await;
    let mut answer = GrpcAnswer::default();
    let first = raw.next_on_streams().await.expect("headers");
    assert_eq!(first.kind, HEADERS);
    answer.headers = raw.fields(&first.payload);
    let data = raw.next_on_streams().await.expect("the first 8 octets");
    assert_eq!((data.kind, data.payload.len(), data.flags), (DATA, 8, 0));
    answer.body.extend_from_slice(&data.payload);
    // Nothing more until the window opens.
    let quiet = raw.next_within(Duration::from_millis(300)).await;
    assert!(
        quiet.is_none() || quiet.as_ref().is_some_and(|f| f.kind == SETTINGS),
        "{quiet:?}"
    );
    raw.send(WINDOW_UPDATE, 0, 1, &100_000u32.to_be_bytes())
        .await;
    // The rest: DATA, then the trailers (the first header block `answer` sees).
    let rest = raw.answer(1).await;
    answer.body.extend_from_slice(&rest.body);
    answer.trailers = rest.headers;
    assert_allowed(&answer);
}

/// Reflection's answer (the file descriptors of the Authorization service, about 10 KB) through a
/// client whose window is 1 KiB and that gives back exactly what arrived: the routed path's
/// flow control pauses and resumes many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reflection_answer_follows_the_clients_window() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[(4, 1024)]).await;
    let body = raw.open_reflection(1).await;
    raw.send(DATA, END_STREAM, 1, &body).await;
    let mut received = 0usize;
    let mut trailers = None;
    while trailers.is_none() {
        let frame = raw.next_on_streams().await.expect("the answer goes on");
        match frame.kind {
            HEADERS if frame.flags & END_STREAM != 0 => {
                trailers = Some(raw.fields(&frame.payload));
            }
            HEADERS => {
                let fields = raw.fields(&frame.payload);
                assert!(
                    fields.contains(&(":status".into(), "200".into())),
                    "{fields:?}"
                );
            }
            DATA => {
                assert!(frame.payload.len() <= 1024, "{}", frame.payload.len());
                received += frame.payload.len();
                // Give back what arrived: stream and connection.
                let n = (frame.payload.len() as u32).to_be_bytes();
                if !frame.payload.is_empty() {
                    raw.send(WINDOW_UPDATE, 0, 1, &n).await;
                    raw.send(WINDOW_UPDATE, 0, 0, &n).await;
                }
                if frame.flags & END_STREAM != 0 {
                    trailers = Some(Vec::new());
                }
            }
            other => panic!("unexpected frame {other}"),
        }
    }
    assert!(received > 5 * 1024, "{received} octets of descriptors");
    assert_eq!(
        trailers,
        Some(vec![("grpc-status".to_owned(), "0".to_owned())])
    );
}

/// A client that keeps asking reflection on one stream but gives no window for the answers:
/// the server queues at most a bounded amount of answer for it, so it stops reading the
/// requests (their octets are not given back) instead of buffering answers without end; when
/// the window opens, every answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_call_that_is_not_read_stops_being_served() {
    let server = server().await;
    // No stream window at all for the server's answers.
    let mut raw = Raw::connect(server.grpc, &[(4, 0)]).await;
    let request = raw.open_reflection(1).await;
    let asked = 300;
    for _ in 0..asked {
        raw.send(DATA, 0, 1, &request).await;
    }
    // What the server gives back on stream 1 is what the service has read.
    let mut given_back = 0usize;
    while let Some(frame) = raw.next_within(Duration::from_millis(500)).await {
        if frame.kind == WINDOW_UPDATE && frame.stream == 1 {
            given_back += u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) as usize;
        }
        assert_ne!(frame.kind, DATA, "no window, no DATA");
    }
    assert!(
        given_back < asked * request.len() / 2,
        "the service went on reading: {given_back} of {} octets given back",
        asked * request.len()
    );
    // Open the windows: every answer comes.
    raw.send(WINDOW_UPDATE, 0, 1, &0x7000_0000u32.to_be_bytes())
        .await;
    raw.send(WINDOW_UPDATE, 0, 0, &0x7000_0000u32.to_be_bytes())
        .await;
    raw.send(DATA, END_STREAM, 1, &[]).await;
    let mut body = Vec::new();
    let mut ended = false;
    while !ended {
        let frame = raw.next().await.expect("the answers");
        match frame.kind {
            DATA if frame.stream == 1 => {
                body.extend_from_slice(&frame.payload);
                ended = frame.flags & END_STREAM != 0;
            }
            HEADERS if frame.stream == 1 => {
                raw.fields(&frame.payload);
                ended = frame.flags & END_STREAM != 0;
            }
            _ => {}
        }
    }
    // Count the gRPC messages in what arrived.
    let mut answers = 0;
    let mut rest = body.as_slice();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        rest = &rest[5 + len..];
        answers += 1;
    }
    assert_eq!(answers, asked);
}

/// Each of these is a connection error: GOAWAY with the code RFC 9113 names, then the end of the
/// connection. The server goes on serving new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_end_the_connection_with_goaway() {
    let server = server().await;
    type Setup = fn(&mut Raw) -> Vec<(u8, u8, u32, Vec<u8>)>;
    let cases: Vec<(&str, u32, Setup)> = vec![
        ("DATA on stream 0", 1, |_| vec![(DATA, 0, 0, vec![1, 2])]),
        ("a frame larger than 16384 octets", 6, |_| {
            vec![(DATA, 0, 1, vec![0; 16_385])]
        }),
        ("HEADERS on an even stream", 1, |raw| {
            vec![(HEADERS, END_HEADERS, 2, raw.check_headers())]
        }),
        ("CONTINUATION without HEADERS", 1, |raw| {
            vec![(CONTINUATION, END_HEADERS, 1, raw.check_headers())]
        }),
        ("a header block interrupted by PING", 1, |raw| {
            vec![
                (HEADERS, 0, 1, raw.check_headers()),
                (PING, 0, 0, vec![0; 8]),
            ]
        }),
        ("PING of 7 octets", 6, |_| vec![(PING, 0, 0, vec![0; 7])]),
        ("SETTINGS on a stream", 1, |_| {
            vec![(SETTINGS, 0, 1, vec![])]
        }),
        ("SETTINGS of 5 octets", 6, |_| {
            vec![(SETTINGS, 0, 0, vec![0; 5])]
        }),
        ("a window above 2^31-1", 3, |_| {
            vec![(SETTINGS, 0, 0, vec![0, 4, 0x80, 0, 0, 0])]
        }),
        ("a maximum frame size below 16384", 1, |_| {
            vec![(SETTINGS, 0, 0, vec![0, 5, 0, 0, 0, 100])]
        }),
        ("WINDOW_UPDATE of 0 on the connection", 1, |_| {
            vec![(WINDOW_UPDATE, 0, 0, vec![0; 4])]
        }),
        ("the connection window overflowing", 3, |_| {
            vec![(WINDOW_UPDATE, 0, 0, 0x7fff_ffffu32.to_be_bytes().to_vec())]
        }),
        ("a header block HPACK cannot decode (index 0)", 9, |_| {
            vec![(HEADERS, END_HEADERS, 1, vec![0x80])]
        }),
        ("a dynamic table index that does not exist", 9, |_| {
            vec![(HEADERS, END_HEADERS, 1, vec![0xff, 0x10])]
        }),
        ("PUSH_PROMISE from a client", 1, |_| {
            vec![(PUSH_PROMISE, END_HEADERS, 1, vec![0, 0, 0, 2])]
        }),
        ("RST_STREAM on an idle stream", 1, |_| {
            vec![(RST_STREAM, 0, 9, vec![0, 0, 0, 8])]
        }),
        ("DATA on an idle stream", 1, |_| {
            vec![(DATA, 0, 11, vec![1])]
        }),
        ("padding longer than the frame", 1, |raw| {
            let mut payload = vec![200u8];
            payload.extend_from_slice(&raw.check_headers());
            vec![(HEADERS, END_HEADERS | PADDED, 1, payload)]
        }),
    ];
    for (what, code, setup) in cases {
        let mut raw = Raw::connect(server.grpc, &[]).await;
        for (kind, flags, stream, payload) in setup(&mut raw) {
            raw.send(kind, flags, stream, &payload).await;
        }
        let goaway = raw.goaway().await;
        assert_eq!(goaway.map(|g| g.1), Some(code), "{what}: {goaway:?}");
    }
    let allowed = server.check(request("GET", "/", &[])).await;
    assert_eq!(answer(&allowed).http_status, 200);
}

/// Requests that are not proper gRPC calls get an HTTP or gRPC error on their own stream; the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn improper_requests_are_refused_on_their_stream() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let mut stream = 1;
    let base = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", CHECK_PATH),
        ("content-type", "application/grpc"),
    ];
    // The base fields with some replaced in place (an empty value removes one) or added.
    let with = |changes: &[(&'static str, &'static str)]| {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for (name, value) in base {
            match changes.iter().find(|(n, _)| *n == name) {
                Some((_, "")) => {}
                Some(change) => fields.push(*change),
                None => fields.push((name, value)),
            }
        }
        fields.extend(
            changes
                .iter()
                .filter(|(n, v)| !v.is_empty() && !base.iter().any(|(b, _)| b == n)),
        );
        fields
    };
    // (fields, the message's first byte, expected :status, expected grpc-status)
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Option<u8>,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (with(&[(":method", "GET")]), None, "405", None),
        (
            with(&[("content-type", "application/json")]),
            None,
            "415",
            None,
        ),
        (with(&[]), Some(1), "200", Some("13")),
        (
            with(&[("grpc-encoding", "gzip")]),
            Some(0),
            "200",
            Some("12"),
        ),
        (with(&[]), None, "200", Some("13")),
        // A grpc-timeout that is not ASCII is no timeout at all (and no panic).
        (
            with(&[("grpc-timeout", "1\u{e9}")]),
            Some(0),
            "200",
            Some("0"),
        ),
        (
            with(&[(":path", "/envoy.service.auth.v3.Authorization/Nope")]),
            Some(0),
            "200",
            Some("12"),
        ),
    ];
    for (fields, first_byte, status, grpc_status) in cases {
        let block = raw.block(&fields);
        match first_byte {
            None => {
                raw.send(HEADERS, END_HEADERS | END_STREAM, stream, &block)
                    .await
            }
            Some(flag) => {
                raw.send(HEADERS, END_HEADERS, stream, &block).await;
                let mut body = check_message();
                body[0] = flag;
                raw.send(DATA, END_STREAM, stream, &body).await;
            }
        }
        let answer = raw.answer(stream).await;
        assert_eq!(
            answer.get(":status"),
            Some(status),
            "{fields:?}: {answer:?}"
        );
        assert_eq!(
            answer.get("grpc-status"),
            grpc_status,
            "{fields:?}: {answer:?}"
        );
        stream += 2;
    }
    // Malformed requests: the stream is reset with PROTOCOL_ERROR.
    let malformed: Vec<Vec<(&str, &str)>> = vec![
        with(&[(":path", "")]),
        with(&[(":unknown", "x")]),
        vec![
            ("content-type", "application/grpc"),
            (":method", "POST"),
            (":scheme", "http"),
            (":path", CHECK_PATH),
        ],
        with(&[("connection", "keep-alive")]),
        with(&[("te", "gzip")]),
    ];
    for fields in malformed {
        let block = raw.block(&fields);
        raw.send(HEADERS, END_HEADERS | END_STREAM, stream, &block)
            .await;
        let frame = raw.next_for(stream).await.expect("a reset");
        assert_eq!(
            (frame.kind, frame.stream, frame.payload.as_slice()),
            (RST_STREAM, stream, &[0, 0, 0, 1][..]),
            "{fields:?}"
        );
        stream += 2;
    }
    // An upper-case name, which loona-hpack would send as it is.
    let block = raw.block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", CHECK_PATH),
        ("Content-Type", "application/grpc"),
    ]);
    raw.send(HEADERS, END_HEADERS | END_STREAM, stream, &block)
        .await;
    let frame = raw.next_for(stream).await.expect("a reset");
    assert_eq!((frame.kind, frame.stream), (RST_STREAM, stream));
    stream += 2;
    // And the connection still answers a good Check.
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, stream, &headers).await;
    raw.send(DATA, END_STREAM, stream, &check_message()).await;
    assert_allowed(&raw.answer(stream).await);
}

/// Trailers from the client end its message (the Check is answered); trailers carrying a
/// pseudo-header or an upper-case name, or not ending the stream, reset it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trailers_end_the_message_or_reset_the_stream() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let body = check_message();
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    raw.send(DATA, 0, 1, &body).await;
    let trailers = raw.block(&[("x-checksum", "abc")]);
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, &trailers)
        .await;
    assert_allowed(&raw.answer(1).await);
    let bad: [(&[(&str, &str)], u8); 3] = [
        (&[(":path", "/x")], END_HEADERS | END_STREAM),
        (&[("X-Checksum", "abc")], END_HEADERS | END_STREAM),
        (&[("x-checksum", "abc")], END_HEADERS),
    ];
    let mut stream = 3;
    for (fields, flags) in bad {
        let headers = raw.check_headers();
        raw.send(HEADERS, END_HEADERS, stream, &headers).await;
        raw.send(DATA, 0, stream, &body).await;
        let trailers = raw.block(fields);
        raw.send(HEADERS, flags, stream, &trailers).await;
        let frame = raw.next_for(stream).await.expect("a reset");
        assert_eq!(
            (frame.kind, frame.stream, frame.payload.as_slice()),
            (RST_STREAM, stream, &[0, 0, 0, 1][..]),
            "{fields:?}"
        );
        stream += 2;
    }
    // The connection (and its HPACK table) goes on.
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, stream, &headers).await;
    raw.send(DATA, END_STREAM, stream, &body).await;
    assert_allowed(&raw.answer(stream).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused_and_resets_are_honoured() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let headers = raw.check_headers();
    // 1024 streams open (their messages not sent yet), then one too many.
    let mut batch = Vec::new();
    for i in 0..1025u32 {
        let len = (headers.len() as u32).to_be_bytes();
        batch.extend_from_slice(&[len[1], len[2], len[3], HEADERS, END_HEADERS]);
        batch.extend_from_slice(&(2 * i + 1).to_be_bytes());
        batch.extend_from_slice(&headers);
    }
    raw.socket.write_all(&batch).await.expect("write");
    let refused = raw.next_on_streams().await.expect("a reset");
    assert_eq!(
        (refused.kind, refused.stream, refused.payload.as_slice()),
        (RST_STREAM, 2049, &[0, 0, 0, 7][..])
    );
    // Stream 1 is cancelled by the client: no answer for it; stream 3 is answered.
    let body = check_message();
    raw.send(DATA, 0, 1, &body[..4]).await;
    raw.send(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
    raw.send(DATA, END_STREAM, 3, &body).await;
    assert_allowed(&raw.answer(3).await);
    // Late DATA for the cancelled stream is dropped; the connection goes on.
    raw.send(DATA, END_STREAM, 1, &body[4..]).await;
    raw.send(DATA, END_STREAM, 5, &body).await;
    assert_allowed(&raw.answer(5).await);
}

/// Request octets of streams the client resets mid-message are given back to the connection
/// window: 24 MiB sent on a 16 MiB window without one answered stream, and no FLOW_CONTROL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_message_give_the_connection_window_back() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let chunk = vec![0u8; 16_384];
    // The protocol's 65,535 octets, then whatever the server's WINDOW_UPDATEs give (its first
    // one opens the window to 16 MiB).
    let mut window: i64 = 65_535;
    let mut stream = 1;
    let mut sent: i64 = 0;
    while sent < 24 << 20 {
        let headers = raw.check_headers();
        raw.send(HEADERS, END_HEADERS, stream, &headers).await;
        // 512 KiB of a message that never ends (half the stream window), then a reset.
        for _ in 0..32 {
            while window < chunk.len() as i64 {
                let frame = raw.next().await.expect("a WINDOW_UPDATE, not the end");
                assert_ne!(frame.kind, GOAWAY, "{frame:?}");
                if frame.kind == WINDOW_UPDATE && frame.stream == 0 {
                    window += i64::from(u32::from_be_bytes(frame.payload[..4].try_into().unwrap()));
                }
            }
            raw.send(DATA, 0, stream, &chunk).await;
            window -= chunk.len() as i64;
            sent += chunk.len() as i64;
        }
        raw.send(RST_STREAM, 0, stream, &8u32.to_be_bytes()).await;
        stream += 2;
    }
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, stream, &headers).await;
    raw.send(DATA, END_STREAM, stream, &check_message()).await;
    loop {
        let frame = raw.next_for(stream).await.expect("the answer");
        if frame.kind == HEADERS && frame.stream == stream {
            let fields = raw.fields(&frame.payload);
            assert!(
                fields.contains(&(":status".into(), "200".into())),
                "{fields:?}"
            );
            break;
        }
        assert_ne!(frame.kind, GOAWAY, "{frame:?}");
    }
}

/// A message over 4 MiB is refused with RESOURCE_EXHAUSTED once that much has arrived; the
/// client is asked to stop sending (RST_STREAM NO_ERROR) and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_resource_exhausted() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    let mut first = vec![0u8];
    first.extend_from_slice(&(5u32 << 20).to_be_bytes());
    first.resize(16_384, 0);
    raw.send(DATA, 0, 1, &first).await;
    // The stream window is 1 MiB, given back when less than half is left: send 528 KiB at a
    // time, each time after the server's WINDOW_UPDATE for the stream, until it answers.
    let chunk = vec![0u8; 16_384];
    let answer = 'send: loop {
        for _ in 0..33 {
            raw.send(DATA, 0, 1, &chunk).await;
        }
        loop {
            let frame = raw.next().await.expect("frames");
            match frame.kind {
                WINDOW_UPDATE if frame.stream == 1 => break,
                HEADERS if frame.stream == 1 => break 'send raw.fields(&frame.payload),
                GOAWAY => panic!("{frame:?}"),
                _ => {}
            }
        }
    };
    assert!(
        answer.contains(&("grpc-status".into(), "8".into())),
        "{answer:?}"
    );
    let reset = raw.next_on_streams().await.expect("a reset");
    assert_eq!(
        (reset.kind, reset.stream, reset.payload.as_slice()),
        (RST_STREAM, 1, &[0u8; 4][..])
    );
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 3, &headers).await;
    raw.send(DATA, END_STREAM, 3, &check_message()).await;
    assert_allowed(&raw.answer(3).await);
}

/// A Check waiting on user-info is cancelled when its stream is reset: nothing is cached from
/// the abandoned call, so the same credential asks user-info again. (Had the Check gone on, its
/// answer would have been cached and the second Check served from the cache.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_cancels_its_waiting_check() {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let server = Server::start(
        r#"{ "/private": { "ALL": { "authorization": { "expression": "true", "public": false } } } }"#,
        &[("USERINFO_URL", url.as_str())],
    )
    .await;
    let message =
        request("GET", "/private", &[("authorization", "Bearer slow-800")]).encode_to_vec();
    let body = grpc_frame(&message);
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    raw.send(DATA, END_STREAM, 1, &body).await;
    // The call has reached user-info; then the client gives up on the stream.
    for _ in 0..100 {
        if userinfo.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(userinfo.count(), 1);
    raw.send(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
    // Well past the moment user-info answers.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 3, &headers).await;
    raw.send(DATA, END_STREAM, 3, &body).await;
    assert_allowed(&raw.answer(3).await);
    assert_eq!(userinfo.count(), 2, "the cancelled Check cached nothing");
}

/// A header block that expands past 64 KiB (a few thousand one-octet references to a 4 KB
/// entry of the dynamic table) gets 431; the connection and the table stay usable. (Past the
/// limit the server stops keeping fields, so such a block costs it no 16 MB copy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_past_the_limit_is_431() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let big = "a".repeat(4000);
    let path = "/grpc.health.v1.Health/Check";
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        ("content-type", "application/grpc"),
        ("x-big", big.as_str()),
    ];
    // The first block puts x-big into the table (loona-hpack indexes every field), as the
    // newest entry: index 62.
    let first = raw.block(&fields);
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, &first).await;
    let answer = raw.answer(1).await;
    assert_eq!(answer.get(":status"), Some("200"), "{answer:?}");
    let mut second = raw.block(&fields[..4]);
    second.extend(std::iter::repeat_n(0xbe, 4000));
    raw.send(HEADERS, END_HEADERS | END_STREAM, 3, &second)
        .await;
    let answer = raw.answer(3).await;
    assert_eq!(answer.get(":status"), Some("431"), "{answer:?}");
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 5, &headers).await;
    raw.send(DATA, END_STREAM, 5, &check_message()).await;
    assert_allowed(&raw.answer(5).await);
}

/// Thirty Check messages of 600 KB, their DATA frames interleaved: 18 MB in flight at once,
/// more than the 16 MiB connection window. The octets are given back as they arrive, so all
/// thirty complete and are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_large_messages_do_not_stall_the_connection() {
    let server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let pad = "p".repeat(600_000);
    let body = grpc_frame(&request("GET", "/", &[("x-pad", pad.as_str())]).encode_to_vec());
    let streams: Vec<u32> = (0..30).map(|i| 2 * i + 1).collect();
    for &stream in &streams {
        let headers = raw.check_headers();
        raw.send(HEADERS, END_HEADERS, stream, &headers).await;
    }
    // The protocol's 65,535 octets, then the server's WINDOW_UPDATEs (the first opens 16 MiB).
    let mut window: i64 = 65_535;
    let chunks: Vec<&[u8]> = body.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        for &stream in &streams {
            while window < chunk.len() as i64 {
                let frame = raw.next().await.expect("a WINDOW_UPDATE, not a stall");
                assert_ne!(frame.kind, GOAWAY, "{frame:?}");
                if frame.kind == WINDOW_UPDATE && frame.stream == 0 {
                    window += i64::from(u32::from_be_bytes(frame.payload[..4].try_into().unwrap()));
                }
            }
            raw.send(DATA, if last { END_STREAM } else { 0 }, stream, chunk)
                .await;
            window -= chunk.len() as i64;
        }
    }
    let mut answered = 0;
    while answered < streams.len() {
        let frame = raw.next().await.expect("answers");
        assert_ne!(frame.kind, GOAWAY, "{frame:?}");
        if frame.kind == HEADERS && frame.flags & END_STREAM != 0 {
            let fields = raw.fields(&frame.payload);
            assert_eq!(fields, vec![("grpc-status".to_owned(), "0".to_owned())]);
            answered += 1;
        } else if frame.kind == HEADERS {
            raw.fields(&frame.payload);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_on_the_grpc_port_is_told_what_the_port_speaks() {
    let server = server().await;
    let mut socket = TcpStream::connect(server.grpc).await.expect("connect");
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut text))
        .await
        .expect("closed in time")
        .expect("read");
    assert!(text.starts_with("HTTP/1.1 505 "), "{text}");
    assert!(text.contains("HTTP/2"), "{text}");
}

/// Shutdown: GOAWAY names the last stream, the stream in flight is still answered, then the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_finishes_the_stream_in_flight() {
    let mut server = server().await;
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    // Let the server see the stream before it is asked to stop.
    raw.send(PING, 0, 0, b"stream-1").await;
    while raw.next().await.expect("PING ACK").kind != PING {}
    server.shutdown();
    let goaway = loop {
        let frame = raw.next().await.expect("GOAWAY");
        if frame.kind == GOAWAY {
            break frame;
        }
    };
    assert_eq!(goaway.payload[..8], [0, 0, 0, 1, 0, 0, 0, 0]);
    raw.send(DATA, END_STREAM, 1, &check_message()).await;
    assert_allowed(&raw.answer(1).await);
    assert!(raw.next().await.is_none(), "the connection closes");
}

/// Random frames (valid headers, random types, flags, lengths and payloads) on many
/// connections: whatever each connection ends with, the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_never_take_the_server_down() {
    let server = server().await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let body = check_message();
    for _ in 0..150 {
        let mut raw = Raw::connect(server.grpc, &[]).await;
        for _ in 0..(next() % 12) {
            let kind = (next() % 11) as u8;
            let flags = (next() % 64) as u8;
            let stream = (next() % 8) as u32;
            let payload: Vec<u8> = match next() % 4 {
                0 => raw.check_headers(),
                1 => body.clone(),
                _ => (0..next() % 40).map(|_| next() as u8).collect(),
            };
            raw.send(kind, flags, stream, &payload).await;
        }
        // Drain what the server says until it closes or goes quiet.
        while raw.next_within(Duration::from_millis(50)).await.is_some() {}
    }
    let allowed = server.check(request("GET", "/", &[])).await;
    assert_eq!(answer(&allowed).http_status, 200);
    // And a raw Check on a fresh connection too.
    let mut raw = Raw::connect(server.grpc, &[]).await;
    let headers = raw.check_headers();
    raw.send(HEADERS, END_HEADERS, 1, &headers).await;
    raw.send(DATA, END_STREAM, 1, &body).await;
    assert_allowed(&raw.answer(1).await);
    let _ = PRIORITY;
}
