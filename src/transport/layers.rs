//! The tower layer in front of the gRPC services (see the parent module), and [`Capped`], the
//! bound on one service's calls. [`GateLayer`] does, per call and in one pass: the answers in
//! words for what is not gRPC over HTTP/2, the bound on calls in flight over the port, the call
//! activity for its connection's idle timer, and the request byte budget. One layer rather than
//! four because each layer costs a call a boxed future and each body wrapper a boxed body: with
//! four, they were about a tenth of a warm Check's CPU (bench/RESULTS.md, "Eighth round"). None
//! of it parses HTTP/2.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Semaphore;

use super::{ConnInfo, ConnState};

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// A response body that holds something of its call's (a [`CallGuard`], a [`Capped`] slot)
/// until it is dropped.
struct GuardedBody<G> {
    inner: tonic::body::Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC service with a bound on its calls in flight, over every connection and every service
/// that shares its [`Semaphore`]: past it a call gets RESOURCE_EXHAUSTED at once. A call holds its
/// slot until its response body is dropped (a stream whose answers a client does not read holds
/// it for as long as the client keeps the stream open).
#[derive(Debug, Clone)]
pub struct Capped<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S> Capped<S> {
    pub fn new(inner: S, slots: Arc<Semaphore>) -> Capped<S> {
        Capped { inner, slots }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Capped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<HttpRequest> for Capped<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let status = tonic::Status::resource_exhausted(format!(
                "{} has too many calls in flight; try again",
                request.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(GuardedBody {
                    inner: body,
                    _guard: slot,
                })
            }))
        })
    }
}

#[derive(Debug)]
struct Budget {
    left: AtomicUsize,
}

impl Budget {
    fn take(&self, n: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}

/// A request body whose bytes count against the [`Budget`] while it lives.
struct BudgetedBody {
    inner: tonic::body::Body,
    shared: Arc<Shared>,
    /// Taken from the budget: the most this call's buffer in tonic holds.
    held: usize,
    framing: Framing,
}

impl http_body::Body for BudgetedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            // Security: counted before tonic sees the bytes, so before it reserves a buffer of
            // the announced length.
            let max_message_size = this.shared.max_message_size;
            match this.framing.need(data, max_message_size) {
                Err(len) => {
                    return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                        "a request message of {len} bytes is more than the limit of {max_message_size}"
                    )))));
                }
                Ok(need) if need > this.held => {
                    if !this.shared.budget.take(need - this.held) {
                        return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                            "the server is holding too many request bytes; try again",
                        ))));
                    }
                    this.held = need;
                }
                Ok(_) => {}
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for BudgetedBody {
    fn drop(&mut self) {
        self.shared.budget.give_back(self.held);
    }
}

/// Where a request body is in gRPC's framing: each message is a 5-byte prefix (compression flag,
/// big-endian length) and that many bytes.
#[derive(Debug, Default)]
struct Framing {
    /// The current message's prefix, as far as it has arrived.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message, prefix included, received so far.
    received: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
}

impl Framing {
    /// Walks `data` through the framing. `Ok`: the buffer tonic needs once `data` is added to it
    /// (what it holds of the current message plus `data`, or a whole message a prefix in `data`
    /// announces, whichever is larger); `Err`: the length a prefix announces over `max_message`.
    fn need(&mut self, mut data: &[u8], max_message: usize) -> Result<usize, usize> {
        let mut need = self.received + data.len();
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                self.received += n;
                data = &data[n..];
                if self.body_left == 0 {
                    self.received = 0;
                }
                continue;
            }
            let n = (self.prefix.len() - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            self.received += n;
            data = &data[n..];
            if self.prefix_len == self.prefix.len() {
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > max_message {
                    return Err(len);
                }
                need = need.max(self.prefix.len() + len);
                self.prefix_len = 0;
                self.body_left = len;
                if len == 0 {
                    self.received = 0;
                }
            }
        }
        Ok(need)
    }
}

/// The tower layer in front of every gRPC service of the port. Per call, in this order:
///
/// 1. What hyper lets through but a gRPC client must hear about as gRPC, or at least in words:
///    a request that is not HTTP/2 (HTTP/1.1 on the port: a misconfigured cluster or a curl)
///    gets `505 HTTP Version Not Supported` with a one-line explanation; a call whose header
///    list is larger than `max_header_list_size` gets RESOURCE_EXHAUSTED (h2's own limit, set
///    higher as a backstop, would answer a bare HTTP 431).
/// 2. Activity: the call counts as in flight on its connection, for the idle timer, until its
///    response body is done or dropped (a health `Watch` stream keeps its connection busy).
/// 3. The bound on calls in flight over every connection and every service: past it a call gets
///    RESOURCE_EXHAUSTED at once. A call holds its slot until its response body is dropped.
/// 4. The request byte budget over every connection. tonic reserves a message's whole buffer as
///    soon as its 5-byte length prefix arrives, and keeps a call's buffer (reused for each next
///    message) until the call's request body is dropped. So a call takes from one budget, before
///    tonic sees the bytes, the most its buffer will hold: the largest message it has announced
///    (prefix included), or what it sent of an unfinished one; and it gives that back when its
///    body is dropped (for a unary call, once its message is decoded). A message longer than
///    `max_message_size`, or one the budget cannot hold, fails the call with RESOURCE_EXHAUSTED
///    before tonic reserves anything. With `max_concurrent_streams` this is what bounds the
///    memory a client can make the server hold by announcing large messages or sending them
///    slowly.
#[derive(Debug, Clone)]
pub struct GateLayer {
    shared: Arc<Shared>,
}

/// What every connection's [`Gate`] shares.
#[derive(Debug)]
struct Shared {
    max_header_list_size: usize,
    max_calls: usize,
    calls: AtomicUsize,
    budget: Budget,
    max_message_size: usize,
}

impl GateLayer {
    pub fn new(
        max_header_list_size: usize,
        max_calls_in_flight: usize,
        max_request_bytes_in_flight: usize,
        max_message_size: usize,
    ) -> GateLayer {
        GateLayer {
            shared: Arc::new(Shared {
                max_header_list_size,
                max_calls: max_calls_in_flight,
                calls: AtomicUsize::new(0),
                budget: Budget {
                    left: AtomicUsize::new(max_request_bytes_in_flight),
                },
                max_message_size,
            }),
        }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What a client that is not speaking gRPC over HTTP/2 reads.
const NOT_HTTP2: &str = "this port serves gRPC over HTTP/2 only (Envoy: an ext_authz grpc_service cluster with http2_protocol_options)\n";

impl<S> tower::Service<HttpRequest> for Gate<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if request.version() != http::Version::HTTP_2 {
            let mut response = http::Response::new(tonic::body::Body::new(one_chunk(NOT_HTTP2)));
            *response.status_mut() = http::StatusCode::HTTP_VERSION_NOT_SUPPORTED;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            return Box::pin(async move { Ok(response) });
        }
        // RFC 9113 section 6.5.2: each field counts its name, its value and 32 octets.
        let size: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        if size > self.shared.max_header_list_size {
            let status = tonic::Status::resource_exhausted(format!(
                "the call's header list is {size} bytes, more than {}",
                self.shared.max_header_list_size
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let mut guard = CallGuard {
            conn: request
                .extensions()
                .get::<ConnInfo>()
                .map(|info| CallGuard::enter(&info.0)),
            shared: None,
        };
        // Security: the slot is taken before the call reaches any service.
        if self.shared.calls.fetch_add(1, Ordering::AcqRel) >= self.shared.max_calls {
            self.shared.calls.fetch_sub(1, Ordering::AcqRel);
            let status = tonic::Status::resource_exhausted(format!(
                "{} has too many calls in flight; try again",
                request.uri().path()
            ));
            let response = guard.hold(status.into_http());
            return Box::pin(async move { Ok(response) });
        }
        guard.shared = Some(self.shared.clone());
        let shared = self.shared.clone();
        let future = self.inner.call(request.map(|body| {
            tonic::body::Body::new(BudgetedBody {
                inner: body,
                shared,
                held: 0,
                framing: Framing::default(),
            })
        }));
        Box::pin(async move {
            let response = future.await?;
            Ok(guard.hold(response))
        })
    }
}

/// One call's hold on its connection's activity and on its slot, released when dropped.
struct CallGuard {
    conn: Option<Arc<ConnState>>,
    /// Set once the call has its slot.
    shared: Option<Arc<Shared>>,
}

impl CallGuard {
    fn enter(conn: &Arc<ConnState>) -> Arc<ConnState> {
        // No clock read here: while a call is in flight the idle timer does not look at the last
        // activity, and the call's end records it.
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.clone()
    }

    /// The response, its body holding this guard until the body is dropped.
    fn hold(self, response: HttpResponse) -> HttpResponse {
        response.map(|body| {
            tonic::body::Body::new(GuardedBody {
                inner: body,
                _guard: self,
            })
        })
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.calls.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(conn) = &self.conn {
            conn.touch();
            conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A body of one static chunk.
fn one_chunk(
    text: &'static str,
) -> impl http_body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + 'static {
    OneChunk(Some(bytes::Bytes::from_static(text.as_bytes())))
}

struct OneChunk(Option<bytes::Bytes>);

impl http_body::Body for OneChunk {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .take()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&(len as u32).to_be_bytes());
        framed.resize(5 + len, 7);
        framed
    }

    #[test]
    fn a_prefix_takes_its_whole_message_at_once() {
        let mut framing = Framing::default();
        let framed = message(1000);
        assert_eq!(framing.need(&framed[..5], 4096), Ok(1005));
        assert_eq!(framing.need(&framed[5..600], 4096), Ok(600));
        assert_eq!(framing.need(&framed[600..], 4096), Ok(1005));
    }

    #[test]
    fn a_prefix_split_over_chunks_is_read_whole() {
        let mut framing = Framing::default();
        let framed = message(3000);
        assert_eq!(framing.need(&framed[..2], 4096), Ok(2));
        assert_eq!(framing.need(&framed[2..4], 4096), Ok(4));
        assert_eq!(framing.need(&framed[4..6], 4096), Ok(3005));
    }

    #[test]
    fn messages_one_after_another_need_the_largest_not_the_sum() {
        let mut framing = Framing::default();
        for len in [100, 2000, 0, 50] {
            assert_eq!(framing.need(&message(len), 4096), Ok(5 + len));
        }
        let mut two = message(10);
        two.extend(message(20));
        assert_eq!(framing.need(&two, 4096), Ok(40));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_its_prefix() {
        let mut framing = Framing::default();
        assert_eq!(framing.need(&message(4097)[..5], 4096), Err(4097));
        let mut framing = Framing::default();
        let mut two = message(10);
        two.extend(&message(5000)[..5]);
        assert_eq!(framing.need(&two, 4096), Err(5000));
    }
}
