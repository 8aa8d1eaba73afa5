//! One HTTP/2 connection: the frames in, the streams' states, flow control both ways, and the
//! answers out.
//!
//! A connection is one tokio task. It reads whatever the socket has, handles every complete
//! frame in it, and writes everything those frames produced in one write. A Check whose message
//! is complete runs right there: on a warm identity cache its future is ready at the first poll,
//! so the answer goes out in the same write as the other answers of that read. A Check that
//! must wait (a user-info call) is kept in a `FuturesUnordered` the same task polls; nothing is
//! spawned per Check. Any other RPC (health, reflection) gets a task of its own that runs
//! tonic's service and sends the response's parts back to the connection through a channel.
//!
//! Errors follow RFC 9113 section 5.4: a connection error sends GOAWAY with the last stream
//! processed and closes; a stream error resets that stream only.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, Stream as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tonic::codegen::Service;

use super::frame::{self, Head, Reason};
use super::head::{
    AnswerTable, RequestHead, SEEN_AUTHORITY, SEEN_PATH, SEEN_SCHEME, encode_headers, grpc_message,
    status_trailers,
};
use super::hpack;
use super::{Code, Shared};
use crate::request::wire;
use crate::response::Encoded;

/// The path of the one RPC served without tonic.
pub const CHECK_PATH: &[u8] = b"/envoy.service.auth.v3.Authorization/Check";

/// Streams a client may have open at once (advertised; more are refused).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The window each stream starts with (advertised).
pub const STREAM_WINDOW: i64 = 1 << 20;
/// The connection's receive window, opened right after the preface.
pub const CONNECTION_WINDOW: i64 = 16 << 20;
/// The largest header list accepted (advertised; decoded size as RFC 9113 counts it).
pub const MAX_HEADER_LIST: usize = 64 << 10;
/// The largest request message, as tonic's default.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Request octets of unfinished Check messages one connection may hold in all.
pub const MAX_BUFFERED: usize = 32 << 20;
/// Response octets a routed RPC may have queued in the connection, waiting for the client's
/// windows, before its task waits too.
const ROUTED_CREDIT: usize = 64 << 10;
/// The HPACK dynamic table size we let the peer use (the protocol's default).
const HEADER_TABLE_SIZE: usize = 4096;
/// How long a new connection may take to send the client preface.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_BUFFER: usize = 64 << 10;

type CheckFuture = Pin<Box<dyn Future<Output = (u32, Answer)> + Send>>;

/// What a Check stream answers.
pub enum Answer {
    Message(Encoded),
    Status(Code, String),
}

/// A routed RPC's task tells the connection what to send.
pub enum Event {
    // (Data carries the credit its task took for it: see ROUTED_CREDIT.)
    /// The response's head; `true` when the body is already over (a trailers-only answer).
    Head(u32, http::response::Parts, bool),
    Data(u32, Bytes, usize),
    Trailers(u32, http::HeaderMap),
    /// The response body ended without trailers.
    End(u32),
    /// The service read this many octets of the request body: the peer may send more.
    Consumed(u32, usize),
    /// The response body failed: reset the stream.
    Failed(u32),
}

/// Why a connection ended early.
#[derive(Debug)]
pub struct ConnError {
    pub reason: Reason,
    pub detail: String,
}

fn conn_error(reason: Reason, detail: impl Into<String>) -> ConnError {
    ConnError {
        reason,
        detail: detail.into(),
    }
}

/// Serves one connection until the peer closes it, a connection error, or shutdown (GOAWAY,
/// then the streams in flight finish).
pub async fn serve<IO>(mut io: IO, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = vec![0u8; READ_BUFFER];
    let mut rlen = 0;
    match tokio::time::timeout(PREFACE_TIMEOUT, read_preface(&mut io, &mut rbuf, &mut rlen)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            // Most likely HTTP/1.1 on the gRPC port: say so in its own language, then close.
            if rbuf[..rlen].starts_with(b"PRI ") {
                let mut out = Vec::new();
                frame::goaway(
                    &mut out,
                    0,
                    Reason::ProtocolError,
                    "invalid connection preface",
                );
                let _ = io.write_all(&out).await;
            } else {
                let _ = io.write_all(HTTP1_REFUSAL).await;
            }
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut conn = Connection::new(shared, events_tx);
    let mut checks: FuturesUnordered<CheckFuture> = FuturesUnordered::new();
    let mut rpos = frame::PREFACE.len();
    let result: Result<(), ConnError> = async {
        loop {
            // Every complete frame read so far.
            while rlen - rpos >= frame::HEADER_LEN {
                let mut bytes = [0u8; frame::HEADER_LEN];
                bytes.copy_from_slice(&rbuf[rpos..rpos + frame::HEADER_LEN]);
                let head = Head::parse(&bytes);
                if head.len > frame::DEFAULT_MAX_FRAME {
                    return Err(conn_error(
                        Reason::FrameSizeError,
                        format!("a frame of {} octets (at most 16384)", head.len),
                    ));
                }
                let end = rpos + frame::HEADER_LEN + head.len;
                if end > rlen {
                    break;
                }
                conn.frame(head, &rbuf[rpos + frame::HEADER_LEN..end])?;
                rpos = end;
            }
            if rpos == rlen {
                rpos = 0;
                rlen = 0;
            } else if rbuf.len() - rlen < frame::DEFAULT_MAX_FRAME + frame::HEADER_LEN {
                rbuf.copy_within(rpos..rlen, 0);
                rlen -= rpos;
                rpos = 0;
            }
            checks.extend(conn.waiting.drain(..));
            // Checks and routed RPCs that finished meanwhile answer in this write too (and are
            // never starved by a peer that keeps the socket readable).
            while let Some((id, answer)) =
                std::future::poll_fn(|cx| poll_done(&mut checks, cx)).await
            {
                conn.answer(id, answer);
            }
            while let Ok(event) = events.try_recv() {
                conn.event(event);
            }
            conn.release_connection_window();
            if !conn.out.is_empty() {
                io.write_all(&conn.out)
                    .await
                    .map_err(|e| conn_error(Reason::NoError, format!("write: {e}")))?;
                conn.out.clear();
            }
            if conn.finished() {
                return Ok(());
            }
            tokio::select! {
                biased;
                read = io.read(&mut rbuf[rlen..]) => {
                    match read {
                        Ok(0) => return Ok(()),
                        Ok(n) => rlen += n,
                        Err(e) => return Err(conn_error(Reason::NoError, format!("read: {e}"))),
                    }
                }
                Some((id, answer)) = NextReady(&mut checks), if !checks.is_empty() => {
                    conn.answer(id, answer);
                }
                Some(event) = events.recv() => conn.event(event),
                changed = shutdown.changed(), if conn.goaway.is_none() => {
                    let stop = changed.is_err() || *shutdown.borrow();
                    if stop {
                        conn.go_away();
                    }
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        if error.reason != Reason::NoError {
            tracing::warn!(
                error = error.reason.as_str(),
                detail = %error.detail,
                "gRPC connection closed: HTTP/2 protocol error"
            );
            let mut out = std::mem::take(&mut conn.out);
            // Never a higher last stream than a GOAWAY sent before (RFC 9113 section 6.8).
            let last = conn.goaway.unwrap_or(conn.last_stream);
            frame::goaway(&mut out, last, error.reason, &error.detail);
            let _ = io.write_all(&out).await;
        } else {
            tracing::debug!(detail = %error.detail, "gRPC connection closed");
        }
    }
    let _ = io.shutdown().await;
}

/// A finished Check if there is one, without waiting (the task's waker stays registered).
fn poll_done(
    checks: &mut FuturesUnordered<CheckFuture>,
    cx: &mut Context<'_>,
) -> Poll<Option<(u32, Answer)>> {
    if checks.is_empty() {
        return Poll::Ready(None);
    }
    match Pin::new(checks).poll_next(cx) {
        Poll::Ready(done) => Poll::Ready(done),
        Poll::Pending => Poll::Ready(None),
    }
}

/// `FuturesUnordered::next` without the `StreamExt` future's `Unpin` bookkeeping.
struct NextReady<'a>(&'a mut FuturesUnordered<CheckFuture>);

impl Future for NextReady<'_> {
    type Output = Option<(u32, Answer)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut *self.0).poll_next(cx)
    }
}

const HTTP1_REFUSAL: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 45\r\n\r\nthis port serves gRPC over HTTP/2 (h2c) only\n";

/// Reads until the client preface can be judged: true when it is there.
async fn read_preface<IO: AsyncRead + Unpin>(
    io: &mut IO,
    rbuf: &mut [u8],
    rlen: &mut usize,
) -> std::io::Result<bool> {
    while *rlen < frame::PREFACE.len() {
        let n = io.read(&mut rbuf[*rlen..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *rlen += n;
        let seen = (*rlen).min(frame::PREFACE.len());
        if rbuf[..seen] != frame::PREFACE[..seen] {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Stream identifiers as hash keys: odd numbers counting up, mixed so the table spreads them.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // The high half folded in: the table picks buckets by the low bits, which a product
        // alone takes from the identifier's low bits only.
        let h = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

/// Output a stream's flow-control window holds back.
enum Pending {
    /// DATA, and the routed task's credit it holds.
    Data(Bytes, usize),
    /// The response's trailers, encoded: the stream's last frame.
    Trailers(Vec<u8>),
    /// A Check's `grpc-status: 0`, encoded when sent (it may refer to the peer's table).
    TrailersOk,
    /// The end of a response without trailers: an empty DATA frame with END_STREAM.
    End,
}

enum Kind {
    /// Check: the request message as it arrives, then the answer in flight.
    Check {
        body: Vec<u8>,
        timeout: Option<Duration>,
        /// Cancels the Check's future if it waits (a user-info call) and the stream goes.
        abort: Option<AbortHandle>,
    },
    /// Any other RPC, served by tonic's routes in a task of its own.
    Routed {
        body: Option<mpsc::UnboundedSender<Bytes>>,
        task: tokio::task::AbortHandle,
        /// Octets forwarded to the service and not yet read by it.
        unread: usize,
        /// What the task may still queue (permits are octets; given back as they are sent).
        credit: Arc<Semaphore>,
    },
}

struct Stream {
    /// What the peer may still send on this stream.
    recv_window: i64,
    /// What we may still send.
    send_window: i64,
    /// The peer ended its side (END_STREAM seen).
    remote_closed: bool,
    pending: VecDeque<Pending>,
    kind: Kind,
}

impl Drop for Stream {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Routed { task, .. } => task.abort(),
            Kind::Check {
                abort: Some(abort), ..
            } => abort.abort(),
            Kind::Check { .. } => {}
        }
    }
}

/// The protocol state of one connection (everything but the socket and the futures).
struct Connection {
    shared: Arc<Shared>,
    decoder: hpack::Decoder,
    /// Frames to write.
    out: Vec<u8>,
    streams: HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>,
    /// The highest stream the peer opened.
    last_stream: u32,
    /// A header block arriving in CONTINUATION frames: its stream and the HEADERS frame's
    /// END_STREAM flag.
    continuation: Option<(u32, bool)>,
    block: Vec<u8>,
    peer_max_frame: usize,
    peer_initial_window: i64,
    send_window: i64,
    recv_window: i64,
    /// Octets received and consumed, not yet given back to the peer.
    recv_released: i64,
    /// Octets of unfinished Check messages held (at most [`MAX_BUFFERED`]).
    buffered: usize,
    /// Sent GOAWAY naming this last stream.
    goaway: Option<u32>,
    /// The peer sent GOAWAY.
    peer_goaway: bool,
    events: mpsc::UnboundedSender<Event>,
    /// Checks whose futures were not ready at the first poll.
    waiting: Vec<CheckFuture>,
    /// The request head being decoded (its buffers reused block after block).
    head: RequestHead,
    /// What our answers keep in the peer's HPACK table.
    answers: AnswerTable,
    /// A dynamic table size update owed at the start of the next header block we send.
    size_update: Option<usize>,
}

impl Connection {
    fn new(shared: Arc<Shared>, events: mpsc::UnboundedSender<Event>) -> Connection {
        let mut out = Vec::with_capacity(16 << 10);
        frame::settings(
            &mut out,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    MAX_CONCURRENT_STREAMS,
                ),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
            ],
        );
        frame::window_update(
            &mut out,
            0,
            (CONNECTION_WINDOW - frame::DEFAULT_WINDOW) as u32,
        );
        Connection {
            shared,
            decoder: hpack::Decoder::new(HEADER_TABLE_SIZE),
            out,
            streams: HashMap::default(),
            last_stream: 0,
            continuation: None,
            block: Vec::new(),
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            peer_initial_window: frame::DEFAULT_WINDOW,
            send_window: frame::DEFAULT_WINDOW,
            recv_window: CONNECTION_WINDOW,
            recv_released: 0,
            buffered: 0,
            goaway: None,
            peer_goaway: false,
            events,
            waiting: Vec::new(),
            head: RequestHead::default(),
            answers: AnswerTable::new(),
            size_update: None,
        }
    }

    /// Nothing left to do: after either side's GOAWAY, once every stream is done.
    fn finished(&self) -> bool {
        (self.goaway.is_some() || self.peer_goaway) && self.streams.is_empty()
    }

    fn go_away(&mut self) {
        self.goaway = Some(self.last_stream);
        frame::goaway(&mut self.out, self.last_stream, Reason::NoError, "");
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if let Some((stream, _)) = self.continuation
            && (head.kind != frame::CONTINUATION || head.stream != stream)
        {
            return Err(conn_error(
                Reason::ProtocolError,
                "a header block interrupted before its END_HEADERS",
            ));
        }
        match head.kind {
            frame::DATA => self.data(head, payload),
            frame::HEADERS => self.headers(head, payload),
            frame::CONTINUATION => self.continuation(head, payload),
            frame::PRIORITY => {
                if head.stream == 0 {
                    return Err(conn_error(Reason::ProtocolError, "PRIORITY on stream 0"));
                }
                if payload.len() != 5 {
                    self.reset(head.stream, Reason::FrameSizeError);
                }
                Ok(())
            }
            frame::RST_STREAM => self.rst_stream(head, payload),
            frame::SETTINGS => self.settings(head, payload),
            frame::PUSH_PROMISE => Err(conn_error(
                Reason::ProtocolError,
                "PUSH_PROMISE from a client",
            )),
            frame::PING => {
                if head.stream != 0 {
                    return Err(conn_error(Reason::ProtocolError, "PING on a stream"));
                }
                let Ok(data) = <&[u8; 8]>::try_from(payload) else {
                    return Err(conn_error(Reason::FrameSizeError, "PING not 8 octets"));
                };
                if !head.has(frame::ACK) {
                    frame::ping_ack(&mut self.out, data);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(conn_error(Reason::ProtocolError, "GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(conn_error(Reason::FrameSizeError, "GOAWAY under 8 octets"));
                }
                self.peer_goaway = true;
                Ok(())
            }
            frame::WINDOW_UPDATE => self.window_update(head, payload),
            // Unknown frame types are ignored (RFC 9113 section 4.1).
            _ => Ok(()),
        }
    }

    /// Strips the padding of a DATA or HEADERS payload.
    fn unpad<'p>(head: &Head, payload: &'p [u8]) -> Result<&'p [u8], ConnError> {
        if !head.has(frame::PADDED) {
            return Ok(payload);
        }
        let Some((&pad, rest)) = payload.split_first() else {
            return Err(conn_error(
                Reason::FrameSizeError,
                "a padded frame without its pad length",
            ));
        };
        rest.len()
            .checked_sub(usize::from(pad))
            .map(|end| &rest[..end])
            .ok_or_else(|| conn_error(Reason::ProtocolError, "padding longer than the frame"))
    }

    fn data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::ProtocolError, "DATA on stream 0"));
        }
        let len = payload.len() as i64;
        self.recv_window -= len;
        if self.recv_window < 0 {
            return Err(conn_error(
                Reason::FlowControlError,
                "DATA beyond the connection window",
            ));
        }
        let data = Self::unpad(&head, payload)?;
        // Padding is consumed at once.
        self.recv_released += len - data.len() as i64;
        let end = head.has(frame::END_STREAM);
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(conn_error(Reason::ProtocolError, "DATA on an idle stream"));
            }
            // A stream we reset or answered already: its data is dropped.
            self.recv_released += data.len() as i64;
            return Ok(());
        };
        if stream.remote_closed {
            self.recv_released += data.len() as i64;
            self.reset(head.stream, Reason::StreamClosed);
            return Ok(());
        }
        stream.recv_window -= len;
        if stream.recv_window < 0 {
            self.recv_released += data.len() as i64;
            self.reset(head.stream, Reason::FlowControlError);
            return Ok(());
        }
        if end {
            stream.remote_closed = true;
        }
        match &mut stream.kind {
            Kind::Check { body, timeout, .. } => {
                let timeout = *timeout;
                // Check octets leave the connection window at once (a connection must not stall
                // on unfinished messages); what they take in memory is bounded by
                // MAX_MESSAGE per stream and MAX_BUFFERED per connection.
                self.recv_released += data.len() as i64;
                // The usual case, the whole message in one frame, is decoded where it lies.
                if end && body.is_empty() {
                    self.dispatch(head.stream, data, timeout);
                    return Ok(());
                }
                if body.len() + data.len() > MAX_MESSAGE + 5
                    || self.buffered + data.len() > MAX_BUFFERED
                {
                    let why = if body.len() + data.len() > MAX_MESSAGE + 5 {
                        format!("request message larger than {MAX_MESSAGE} octets")
                    } else {
                        format!("more than {MAX_BUFFERED} octets of unfinished requests")
                    };
                    self.answer(head.stream, Answer::Status(Code::ResourceExhausted, why));
                    return Ok(());
                }
                body.extend_from_slice(data);
                self.buffered += data.len();
                if end {
                    let body = std::mem::take(body);
                    self.buffered -= body.len();
                    self.dispatch(head.stream, &body, timeout);
                } else if stream.recv_window < STREAM_WINDOW / 2 {
                    let increment = STREAM_WINDOW - stream.recv_window;
                    stream.recv_window = STREAM_WINDOW;
                    frame::window_update(&mut self.out, head.stream, increment as u32);
                }
            }
            Kind::Routed { body, unread, .. } => {
                // Padding is nobody's to read: the stream gets it back at once.
                let padding = (len - data.len() as i64) as u32;
                if padding > 0 && !end {
                    stream.recv_window += i64::from(padding);
                    frame::window_update(&mut self.out, head.stream, padding);
                }
                let sent = match body {
                    Some(tx) if !data.is_empty() => tx.send(Bytes::copy_from_slice(data)).is_ok(),
                    _ => false,
                };
                if sent {
                    *unread += data.len();
                } else {
                    self.recv_released += data.len() as i64;
                }
                if end {
                    *body = None;
                }
            }
        }
        Ok(())
    }

    fn headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::ProtocolError, "HEADERS on stream 0"));
        }
        let mut fragment = Self::unpad(&head, payload)?;
        if head.has(frame::PRIORITY_FLAG) {
            fragment = fragment.get(5..).ok_or_else(|| {
                conn_error(Reason::FrameSizeError, "HEADERS too short for its priority")
            })?;
        }
        let end_stream = head.has(frame::END_STREAM);
        if head.has(frame::END_HEADERS) {
            self.header_block(head.stream, fragment, end_stream)
        } else {
            self.block.clear();
            self.block.extend_from_slice(fragment);
            self.continuation = Some((head.stream, end_stream));
            Ok(())
        }
    }

    fn continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some((stream, end_stream)) = self.continuation else {
            return Err(conn_error(
                Reason::ProtocolError,
                "CONTINUATION without a header block",
            ));
        };
        if self.block.len() + payload.len() > MAX_HEADER_LIST {
            return Err(conn_error(
                Reason::EnhanceYourCalm,
                format!("a header block larger than {MAX_HEADER_LIST} octets"),
            ));
        }
        self.block.extend_from_slice(payload);
        if head.has(frame::END_HEADERS) {
            self.continuation = None;
            let block = std::mem::take(&mut self.block);
            let result = self.header_block(stream, &block, end_stream);
            self.block = block;
            result
        } else {
            Ok(())
        }
    }

    /// A complete header block: a new request, or the trailers of one.
    fn header_block(&mut self, id: u32, block: &[u8], end_stream: bool) -> Result<(), ConnError> {
        let mut request = std::mem::take(&mut self.head);
        request.clear();
        let decoded = self.decoder.decode(block, |name, value| {
            request.field(name, value);
            Ok::<(), Infallible>(())
        });
        let result = match decoded {
            Ok(()) => self.request_head(id, &mut request, end_stream),
            Err(e) => Err(conn_error(Reason::CompressionError, e.to_string())),
        };
        self.head = request;
        result
    }

    /// What a decoded header block does: opens a stream, or ends one (trailers).
    fn request_head(
        &mut self,
        id: u32,
        request: &mut RequestHead,
        end_stream: bool,
    ) -> Result<(), ConnError> {
        if let Some(stream) = self.streams.get_mut(&id) {
            // Trailers of a request: they must end it, carry no pseudo-header, and be as
            // well-formed and as small as a request head.
            if stream.remote_closed
                || !end_stream
                || request.seen != 0
                || request.method.is_some()
                || request.malformed.is_some()
                || request.list_size > MAX_HEADER_LIST
            {
                self.reset(id, Reason::ProtocolError);
                return Ok(());
            }
            stream.remote_closed = true;
            match &mut stream.kind {
                Kind::Check { body, timeout, .. } => {
                    let (body, timeout) = (std::mem::take(body), *timeout);
                    self.buffered -= body.len();
                    self.dispatch(id, &body, timeout);
                }
                Kind::Routed { body, .. } => *body = None,
            }
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(conn_error(
                Reason::ProtocolError,
                "a client stream with an even identifier",
            ));
        }
        if id <= self.last_stream {
            if request.method.is_some() {
                return Err(conn_error(
                    Reason::ProtocolError,
                    "a new request on a stream identifier used before",
                ));
            }
            // Trailers on a stream that is closed (reset or answered): nothing to do.
            return Ok(());
        }
        self.last_stream = id;
        if self.goaway.is_some() {
            // Opened after our GOAWAY: ignored, the client retries it elsewhere.
            return Ok(());
        }
        if self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            frame::rst_stream(&mut self.out, id, Reason::RefusedStream);
            return Ok(());
        }
        if let Some(why) = request.malformed {
            tracing::debug!(stream = id, why, "malformed request");
            frame::rst_stream(&mut self.out, id, Reason::ProtocolError);
            return Ok(());
        }
        if request.list_size > MAX_HEADER_LIST {
            return self.http_error(id, 431, end_stream);
        }
        let Some(method) = &request.method else {
            frame::rst_stream(&mut self.out, id, Reason::ProtocolError);
            return Ok(());
        };
        if !request.has(SEEN_SCHEME) || !request.has(SEEN_PATH) || request.path.is_empty() {
            frame::rst_stream(&mut self.out, id, Reason::ProtocolError);
            return Ok(());
        }
        if *method != http::Method::POST {
            return self.http_error(id, 405, end_stream);
        }
        if !request.grpc_content_type {
            return self.http_error(id, 415, end_stream);
        }
        let stream = Stream {
            recv_window: STREAM_WINDOW,
            send_window: self.peer_initial_window,
            remote_closed: end_stream,
            pending: VecDeque::new(),
            kind: Kind::Check {
                body: Vec::new(),
                timeout: request.timeout,
                abort: None,
            },
        };
        if request.is_check {
            self.streams.insert(id, stream);
            if request.compressed {
                self.answer(
                    id,
                    Answer::Status(
                        Code::Unimplemented,
                        "compressed messages are not supported".into(),
                    ),
                );
            } else if end_stream {
                self.dispatch(id, &[], request.timeout);
            }
            return Ok(());
        }
        self.route(id, stream, request, end_stream);
        Ok(())
    }

    /// Hands an RPC other than Check to tonic's routes, in a task of its own.
    fn route(&mut self, id: u32, mut stream: Stream, request: &mut RequestHead, end_stream: bool) {
        let mut uri = http::Uri::builder();
        if request.has(SEEN_AUTHORITY) {
            uri = uri
                .scheme(request.scheme.as_str())
                .authority(request.authority.as_str());
        }
        let Ok(uri) = uri.path_and_query(request.path.as_str()).build() else {
            frame::rst_stream(&mut self.out, id, Reason::ProtocolError);
            return;
        };
        let (tx, rx) = if end_stream {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .version(http::Version::HTTP_2);
        if let Some(headers) = builder.headers_mut() {
            *headers = std::mem::take(&mut request.headers);
        }
        let body = RequestBody {
            rx,
            events: self.events.clone(),
            stream: id,
        };
        let Ok(http_request) = builder.body(body) else {
            frame::rst_stream(&mut self.out, id, Reason::ProtocolError);
            return;
        };
        let mut routes = self.shared.routes.clone();
        let events = self.events.clone();
        let credit = Arc::new(Semaphore::new(ROUTED_CREDIT));
        let permits = credit.clone();
        let task = tokio::spawn(async move {
            let response = match std::future::poll_fn(|cx| {
                Service::<http::Request<RequestBody>>::poll_ready(&mut routes, cx)
            })
            .await
            {
                Ok(()) => routes.call(http_request).await,
                Err(never) => Err(never),
            };
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, mut body) = response.into_parts();
            use http_body::Body as _;
            let end = body.is_end_stream();
            if events.send(Event::Head(id, parts, end)).is_err() || end {
                return;
            }
            use http_body_util::BodyExt;
            while let Some(frame) = body.frame().await {
                let event = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => {
                            // Wait while the client is not taking what is already queued.
                            let n = data.len().min(ROUTED_CREDIT);
                            match permits.acquire_many(n as u32).await {
                                Ok(taken) => taken.forget(),
                                Err(_) => return,
                            }
                            Event::Data(id, data, n)
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => Event::Trailers(id, trailers),
                            Err(_) => continue,
                        },
                    },
                    Err(_) => Event::Failed(id),
                };
                let last = matches!(event, Event::Trailers(..) | Event::Failed(_));
                if events.send(event).is_err() || last {
                    return;
                }
            }
            let _ = events.send(Event::End(id));
        });
        stream.kind = Kind::Routed {
            body: tx,
            task: task.abort_handle(),
            unread: 0,
            credit,
        };
        self.streams.insert(id, stream);
    }

    /// A plain HTTP answer (no gRPC status): for requests that are not gRPC at all.
    fn http_error(&mut self, id: u32, status: u16, end_stream: bool) -> Result<(), ConnError> {
        let mut block = Vec::new();
        hpack::encode_status(&mut block, status);
        self.write_headers(id, &block, true);
        if !end_stream {
            frame::rst_stream(&mut self.out, id, Reason::NoError);
        }
        Ok(())
    }

    /// The Check message of stream `id` is complete: decode it and run the Check.
    fn dispatch(&mut self, id: u32, body: &[u8], timeout: Option<Duration>) {
        let message = match grpc_message(body) {
            Ok(message) => message,
            Err((code, detail)) => {
                self.answer(id, Answer::Status(code, detail.into()));
                return;
            }
        };
        let started = Instant::now();
        let view = match wire::decode(message) {
            Ok(view) => view,
            Err(e) => {
                self.answer(
                    id,
                    Answer::Status(Code::InvalidArgument, format!("CheckRequest: {e}")),
                );
                return;
            }
        };
        let deadline = timeout.map(|t| started + t);
        let mut check = Box::pin(
            self.shared
                .service
                .clone()
                .check_encoded(view, started, deadline),
        );
        // A warm cache answers at the first poll. Otherwise the Check waits in
        // `FuturesUnordered`, polled with the connection's own waker, and only then gets a timer:
        // whatever the stages do with the deadline, the call ends at it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match check.as_mut().poll(&mut cx) {
            Poll::Ready(encoded) => self.answer(id, Answer::Message(encoded)),
            Poll::Pending => {
                // A reset stream cancels its Check (its user-info call with it), as a client
                // resetting streams must not grow the work in flight past the stream limit.
                let (abort, registration) = AbortHandle::new_pair();
                if let Some(Stream {
                    kind: Kind::Check { abort: slot, .. },
                    ..
                }) = self.streams.get_mut(&id)
                {
                    *slot = Some(abort);
                }
                let waiting = async move {
                    match deadline {
                        Some(deadline) => match tokio::time::timeout_at(deadline, check).await {
                            Ok(encoded) => Answer::Message(encoded),
                            Err(_) => {
                                Answer::Status(Code::DeadlineExceeded, "deadline exceeded".into())
                            }
                        },
                        None => Answer::Message(check.await),
                    }
                };
                self.waiting.push(Box::pin(async move {
                    let answer = Abortable::new(waiting, registration).await;
                    // Aborted: the stream is gone, so `answer` drops this.
                    (
                        id,
                        answer.unwrap_or(Answer::Status(Code::Cancelled, String::new())),
                    )
                }));
            }
        }
    }

    /// Writes a Check's answer (if its stream is still there).
    fn answer(&mut self, id: u32, answer: Answer) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        match answer {
            Answer::Message(Encoded(message)) => {
                let len = message.len() + 5;
                let fits = len as i64 <= stream.send_window.min(self.send_window)
                    && len <= self.peer_max_frame
                    && stream.pending.is_empty();
                let mut data = Vec::with_capacity(len);
                data.push(0);
                data.extend_from_slice(&(message.len() as u32).to_be_bytes());
                data.extend_from_slice(&message);
                let head = self.answers.head();
                self.write_headers(id, head, false);
                if fits {
                    if let Some(stream) = self.streams.get_mut(&id) {
                        stream.send_window -= len as i64;
                    }
                    self.send_window -= len as i64;
                    frame::data(&mut self.out, id, &data, false);
                    let trailers = self.answers.trailers();
                    self.write_headers(id, trailers, true);
                    self.close_local(id);
                } else if let Some(stream) = self.streams.get_mut(&id) {
                    stream
                        .pending
                        .push_back(Pending::Data(Bytes::from(data), 0));
                    stream.pending.push_back(Pending::TrailersOk);
                    self.flush_stream(id);
                }
            }
            Answer::Status(code, message) => {
                // Literal fields only: valid whatever the peer's table holds.
                let mut block = Vec::new();
                hpack::encode_status(&mut block, 200);
                hpack::encode_field(&mut block, b"content-type", b"application/grpc");
                status_trailers(&mut block, code, &message);
                self.write_headers(id, &block, true);
                self.close_local(id);
            }
        }
    }

    /// Writes a header block, opening it with the table size update we owe the peer, if any.
    fn write_headers(&mut self, id: u32, block: &[u8], end_stream: bool) {
        match self.size_update.take() {
            None => frame::headers(&mut self.out, id, block, end_stream, self.peer_max_frame),
            Some(size) => {
                let mut with_update = Vec::with_capacity(block.len() + 6);
                hpack::encode_size_update(&mut with_update, size);
                with_update.extend_from_slice(block);
                frame::headers(
                    &mut self.out,
                    id,
                    &with_update,
                    end_stream,
                    self.peer_max_frame,
                );
            }
        }
    }

    /// Our side of stream `id` is done: forget it, asking the peer to stop sending if it has
    /// not finished (RFC 9113 section 8.1).
    fn close_local(&mut self, id: u32) {
        if let Some(stream) = self.remove(id)
            && !stream.remote_closed
        {
            frame::rst_stream(&mut self.out, id, Reason::NoError);
        }
    }

    fn reset(&mut self, id: u32, reason: Reason) {
        self.remove(id);
        frame::rst_stream(&mut self.out, id, reason);
    }

    /// Forgets stream `id`, giving the peer back the connection window its unread request
    /// octets held (a routed task is aborted when the stream is dropped).
    fn remove(&mut self, id: u32) -> Option<Stream> {
        let stream = self.streams.remove(&id)?;
        match &stream.kind {
            Kind::Check { body, .. } => self.buffered -= body.len(),
            Kind::Routed { unread, .. } => self.recv_released += *unread as i64,
        }
        Some(stream)
    }

    /// Sends what the windows allow of stream `id`'s pending output.
    fn flush_stream(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        while let Some(next) = stream.pending.front_mut() {
            match next {
                Pending::Data(bytes, credit) => {
                    let n = bytes
                        .len()
                        .min(self.peer_max_frame)
                        .min(stream.send_window.min(self.send_window).max(0) as usize);
                    if n == 0 && !bytes.is_empty() {
                        return;
                    }
                    let chunk = bytes.split_to(n);
                    stream.send_window -= n as i64;
                    self.send_window -= n as i64;
                    frame::data(&mut self.out, id, &chunk, false);
                    if bytes.is_empty() {
                        let credit = *credit;
                        stream.pending.pop_front();
                        if let Kind::Routed {
                            credit: permits, ..
                        } = &stream.kind
                            && credit > 0
                        {
                            permits.add_permits(credit);
                        }
                    }
                }
                Pending::Trailers(block) => {
                    let block = std::mem::take(block);
                    self.write_headers(id, &block, true);
                    self.close_local(id);
                    return;
                }
                Pending::TrailersOk => {
                    let trailers = self.answers.trailers();
                    self.write_headers(id, trailers, true);
                    self.close_local(id);
                    return;
                }
                Pending::End => {
                    frame::data(&mut self.out, id, &[], true);
                    self.close_local(id);
                    return;
                }
            }
        }
    }

    fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(conn_error(Reason::ProtocolError, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(conn_error(
                Reason::FrameSizeError,
                "RST_STREAM not 4 octets",
            ));
        }
        if head.stream > self.last_stream {
            return Err(conn_error(
                Reason::ProtocolError,
                "RST_STREAM on an idle stream",
            ));
        }
        // A Check in flight finishes, and its answer is dropped; a routed task is aborted.
        self.remove(head.stream);
        Ok(())
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(conn_error(Reason::ProtocolError, "SETTINGS on a stream"));
        }
        if head.has(frame::ACK) {
            if !payload.is_empty() {
                return Err(conn_error(
                    Reason::FrameSizeError,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_error(
                Reason::FrameSizeError,
                "SETTINGS not a multiple of 6 octets",
            ));
        }
        let mut grown = false;
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(conn_error(
                        Reason::ProtocolError,
                        "SETTINGS_ENABLE_PUSH above 1",
                    ));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(conn_error(
                            Reason::FlowControlError,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(conn_error(
                                Reason::FlowControlError,
                                "a stream window above 2^31-1",
                            ));
                        }
                    }
                    grown |= delta > 0;
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(conn_error(
                            Reason::ProtocolError,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                frame::SETTINGS_HEADER_TABLE_SIZE => {
                    let size = value as usize;
                    if size < self.answers.max {
                        // The table the peer keeps for us shrinks: say so first thing in our
                        // next header block. Entries that no longer fit are evicted by the
                        // peer; ours both fit or we stop using the table.
                        self.size_update = Some(size);
                        self.answers.max = size;
                    }
                }
                _ => {}
            }
        }
        frame::settings_ack(&mut self.out);
        if grown {
            self.flush_all();
        }
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(conn_error(
                Reason::FrameSizeError,
                "WINDOW_UPDATE not 4 octets",
            ));
        };
        let increment = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(conn_error(Reason::ProtocolError, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(conn_error(
                    Reason::FlowControlError,
                    "connection window above 2^31-1",
                ));
            }
            self.flush_all();
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(conn_error(
                    Reason::ProtocolError,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            return Ok(());
        };
        if increment == 0 {
            self.reset(head.stream, Reason::ProtocolError);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            self.reset(head.stream, Reason::FlowControlError);
            return Ok(());
        }
        self.flush_stream(head.stream);
        Ok(())
    }

    fn flush_all(&mut self) {
        if self.send_window <= 0 {
            return;
        }
        let blocked: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in blocked {
            self.flush_stream(id);
        }
    }

    /// Gives consumed octets back to the peer once enough have gathered.
    fn release_connection_window(&mut self) {
        if self.recv_released >= CONNECTION_WINDOW / 4
            || (self.recv_released > 0 && self.recv_window < CONNECTION_WINDOW / 2)
        {
            frame::window_update(&mut self.out, 0, self.recv_released as u32);
            self.recv_window += self.recv_released;
            self.recv_released = 0;
        }
    }

    /// What a routed RPC's task produced.
    fn event(&mut self, event: Event) {
        match event {
            Event::Head(id, parts, end) => {
                if !self.streams.contains_key(&id) {
                    return;
                }
                let mut block = Vec::new();
                hpack::encode_status(&mut block, parts.status.as_u16());
                encode_headers(&mut block, &parts.headers);
                self.write_headers(id, &block, end);
                if end {
                    self.close_local(id);
                }
            }
            Event::Data(id, data, credit) => self.push(id, Pending::Data(data, credit)),
            Event::Trailers(id, trailers) => {
                let mut block = Vec::new();
                encode_headers(&mut block, &trailers);
                self.push(id, Pending::Trailers(block));
            }
            Event::End(id) => self.push(id, Pending::End),
            Event::Consumed(id, n) => {
                // A removed stream gave its unread octets back already.
                if let Some(stream) = self.streams.get_mut(&id) {
                    if let Kind::Routed { unread, .. } = &mut stream.kind {
                        *unread = unread.saturating_sub(n);
                    }
                    self.recv_released += n as i64;
                    if !stream.remote_closed {
                        stream.recv_window += n as i64;
                        frame::window_update(&mut self.out, id, n as u32);
                    }
                }
            }
            Event::Failed(id) => {
                if self.streams.contains_key(&id) {
                    self.reset(id, Reason::InternalError);
                }
            }
        }
    }

    fn push(&mut self, id: u32, pending: Pending) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.pending.push_back(pending);
            self.flush_stream(id);
        }
    }
}

/// A routed RPC's request body: the DATA the connection forwards, each chunk given back to the
/// peer's window once the service has taken it.
struct RequestBody {
    rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    events: mpsc::UnboundedSender<Event>,
    stream: u32,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(data)) => {
                let _ = self.events.send(Event::Consumed(self.stream, data.len()));
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }
}
