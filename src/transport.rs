//! The connections tonic serves: accepted here, bounded here, optionally wrapped in TLS here.
//! Never names Check, never parses a byte of HTTP/2: hyper and h2 (through tonic) do that.
//!
//! What this adds to tonic, each a thin piece around it:
//! - a bound on concurrent connections: past it, a new connection is closed at once (the client
//!   retries elsewhere rather than waiting in the backlog), counted and logged;
//! - an idle timeout: a connection with no call in flight for that long is closed (hyper's
//!   HTTP/2 server has none, and keepalive pings keep idle peers alive forever);
//! - the end of `max_connection_age`'s grace: a connection tonic sent GOAWAY on that is still
//!   open then is closed;
//! - TLS with rustls, with a bounded handshake and certificates reloaded from their files
//!   ([`tls`]);
//! - `TCP_NODELAY` and TCP keepalive on accepted sockets (tonic applies its own only to sockets
//!   it binds itself).
//!
//! Called by `server::run`, which hands [`incoming`] to tonic's `serve_with_incoming_shutdown`.

pub mod layers;
pub mod tls;

pub use layers::{Capped, GateLayer};

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

/// Connection-level settings, from the configuration's `server` section.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// `None`: connections are never closed for being idle.
    pub idle_timeout: Option<Duration>,
    /// A connection still open this long after it was accepted is closed, calls in flight or
    /// not: `max_connection_age` (when tonic sends GOAWAY) plus its grace. `None`: never.
    pub max_lifetime: Option<Duration>,
    pub tcp_nodelay: bool,
    pub tcp_keepalive: Option<Duration>,
    /// Bound of a TLS handshake, from accept to the first byte of HTTP/2.
    pub handshake_timeout: Duration,
}

/// A listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// What the transport has seen, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    /// Closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Closed after `idle_timeout` without a call.
    pub idle_closed: AtomicU64,
    /// Closed at the end of their `max_lifetime`.
    pub lifetime_closed: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failed: AtomicU64,
    pub open: AtomicUsize,
}

/// Accepts connections until `shutdown` turns true and yields them to tonic.
pub fn incoming(
    listener: Listener,
    limits: Limits,
    tls: Option<Arc<tls::Acceptor>>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let epoch = Instant::now();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                _ = shutdown.wait_for(|stop| *stop) => break,
                () = tx.closed() => break,
            };
            let io = match accepted {
                Ok(io) => io,
                Err(e) => {
                    // Out of file descriptors and the like: the listener is fine, try again soon.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let refused = counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per power of two: a flood does not flood the log.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        refused_total = refused,
                        "gRPC connection refused: too many open connections"
                    );
                }
                drop(io);
                continue;
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            if let Io::Tcp(socket) = &io {
                configure(socket, &limits);
            }
            let state = Arc::new(ConnState {
                epoch,
                in_flight: AtomicUsize::new(0),
                last_active_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            });
            match (&tls, io) {
                (Some(acceptor), Io::Tcp(socket)) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    let (limits, counters) = (limits.clone(), counters.clone());
                    tokio::spawn(async move {
                        let timeout = limits.handshake_timeout;
                        match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => {
                                let io = Io::Tls(Box::new(stream));
                                let conn = Conn::new(io, state, &limits, permit, counters);
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(e)) => handshake_failed(&counters, &e.to_string()),
                            Err(_) => handshake_failed(&counters, "timed out"),
                        }
                    });
                }
                (_, io) => {
                    let conn = Conn::new(io, state, &limits, permit, counters.clone());
                    if tx.send(Ok(conn)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Counts a failed TLS handshake and logs it, at warn for the first and then once per power of
/// two: an Envoy with the wrong client certificate shows in the log, a scan does not flood it.
fn handshake_failed(counters: &Counters, error: &str) {
    let failed = counters.handshake_failed.fetch_add(1, Ordering::Relaxed) + 1;
    if failed.is_power_of_two() {
        tracing::warn!(error, failed_total = failed, "gRPC TLS handshake failed");
    } else {
        tracing::debug!(error, "gRPC TLS handshake failed");
    }
}

async fn accept(listener: &Listener) -> io::Result<Io> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Io::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Io::Unix(s)),
    }
}

fn configure(socket: &TcpStream, limits: &Limits) {
    // Answers are written whole; Nagle's algorithm would only delay them.
    let _ = socket.set_nodelay(limits.tcp_nodelay);
    if let Some(idle) = limits.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle);
        let _ = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive);
    }
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Per-connection state shared with the [`GateLayer`], which sees the calls.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_active_ms: AtomicU64,
}

impl ConnState {
    fn touch(&self) {
        self.last_active_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = self.last_active_ms.load(Ordering::Relaxed);
        Some(self.epoch + Duration::from_millis(ms))
    }
}

/// What tonic puts in every request's extensions for this connection.
#[derive(Debug, Clone)]
pub struct ConnInfo(pub Arc<ConnState>);

/// One accepted connection: the socket (or TLS stream), its slot under `max_connections`, and
/// its idle timer.
pub struct Conn {
    io: Io,
    state: Arc<ConnState>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The end of `max_lifetime`, and whether it has come.
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
    counters: Arc<Counters>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        io: Io,
        state: Arc<ConnState>,
        limits: &Limits,
        slot: OwnedSemaphorePermit,
        counters: Arc<Counters>,
    ) -> Conn {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Conn {
            io,
            state,
            idle: limits
                .idle_timeout
                .map(|t| (t, Box::pin(tokio::time::sleep(t)))),
            deadline: limits.max_lifetime.map(|t| Box::pin(tokio::time::sleep(t))),
            expired: false,
            counters,
            _slot: slot,
        }
    }

    /// Whether the idle timer says this connection should close now; re-arms it otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((timeout, sleep)) = &mut self.idle else {
            return false;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            match self.state.idle_since() {
                Some(since) if since + *timeout <= Instant::now() => return true,
                Some(since) => sleep.as_mut().reset(since + *timeout),
                // A call in flight: look again a whole timeout later.
                None => sleep.as_mut().reset(Instant::now() + *timeout),
            }
        }
        false
    }

    /// Whether `max_lifetime` is over (and, if not, the task is woken when it will be).
    fn past_lifetime(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        let Some(deadline) = &mut self.deadline else {
            return false;
        };
        if deadline.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.expired = true;
        self.counters
            .lifetime_closed
            .fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo(self.state.clone())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.idle_expired(cx) {
            this.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
            // End of stream: hyper closes the connection; it had no call in flight.
            return Poll::Ready(Ok(()));
        }
        if this.past_lifetime(cx) {
            // End of stream: hyper closes the connection and drops the calls still in it.
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Also here: a peer that does not read keeps hyper writing, not reading.
        if this.past_lifetime(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        match &mut this.io {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.past_lifetime(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        match &mut this.io {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn lifetime_over() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the connection outlived max_connection_age and its grace",
    )
}
