//! checkpoint's own gRPC server: HTTP/2 over cleartext with prior knowledge (h2c), which is how
//! Envoy, Istio and every gRPC client call an ext_authz server.
//!
//! Why not tonic's server: behind Envoy, checkpoint's decision costs about 17,000 instructions
//! per Check and tonic, hyper, h2 and tokio around it another 50,000 (bench/RESULTS.md). This
//! server reads `Authorization/Check` straight off the HTTP/2 frames into the request view
//! ([`crate::request::wire`]), runs the Check in the connection's own task, and writes constant
//! header blocks around the encoded answer. Every other RPC (gRPC health, reflection) is still
//! tonic's service, called through [`conn`]'s routed streams, so those behave exactly as before.
//!
//! - [`frame`]: the frame header, types, flags, error codes, and frame writers.
//! - [`hpack`]: header compression: the decoder (static and dynamic tables, Huffman) and a
//!   stateless encoder of literals (`conn` adds the answers' two fixed fields to the peer's
//!   table itself).
//! - [`conn`]: one connection: streams, flow control, Check, routed RPCs, GOAWAY.
//! - [`head`]: header blocks of a call: the request head's checks, the unary message's prefix,
//!   the answers' header blocks.
//!
//! What it does not do: TLS (Envoy or the mesh's sidecar terminates it), HTTP/1.1 (answered
//! with 505), server push, priorities (ignored, as RFC 9113 allows), compressed messages
//! (UNIMPLEMENTED; nothing is advertised in `grpc-accept-encoding`).

pub mod conn;
pub mod frame;
pub mod head;
pub mod hpack;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::service::AuthorizationService;

pub use tonic::Code;

/// What every connection of one server shares.
pub struct Shared {
    /// Answers Check.
    pub service: Arc<AuthorizationService>,
    /// Every other RPC: gRPC health, reflection, and UNIMPLEMENTED for unknown methods.
    pub routes: tonic::service::Routes,
}

/// A listening socket to serve on.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Accepts connections until `shutdown` turns true, then lets every connection finish: each
/// sends GOAWAY, answers the Checks it has in flight, and closes. Returns once all are closed.
pub async fn serve(listener: Listener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(Accepted::Tcp(socket)) => {
                    // Answers are written whole; Nagle's algorithm would only delay them.
                    let _ = socket.set_nodelay(true);
                    connections.spawn(conn::serve(socket, shared.clone(), shutdown.clone()));
                }
                Ok(Accepted::Unix(socket)) => {
                    connections.spawn(conn::serve(socket, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener is fine, try again soon.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => log_panic(ended),
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    while let Some(ended) = connections.join_next().await {
        log_panic(ended);
    }
}

/// A connection task that panicked lost only its own connection; say so.
fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!(error = %e, "a gRPC connection task panicked");
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
