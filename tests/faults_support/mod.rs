//! The authentication manager of the fault tests (tests/faults.rs) and of the fault latency
//! bench (examples/fault_latency.rs): a user-info server that misbehaves on demand, plus key-set
//! endpoints that answer garbage or no keys.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a failed set-up should stop the test loudly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `/private` needs a logged-in admin; `/public` lets anyone through.
pub const RULES: &str = r#"{
  "/private": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } },
  "/public": { "GET": { "authorization": { "expression": "true", "public": true } } }
}"#;

/// How long the slow tail waits: ten times checkpoint's user-info timeout in these tests.
pub const TAIL: Duration = Duration::from_secs(10);

/// Bytes of the oversized answers: twice checkpoint's 1 MiB limit.
pub const BIG: usize = 2 * 1024 * 1024;

/// The authentication manager, misbehaving by token (`Authorization: Bearer TOKEN`):
/// `alice` (an admin), `tail` (alice after [`TAIL`]), `flap` (every other call a 500, the
/// others alice), `reset` (half a body, then the connection is cut), `big-N` ([`BIG`] bytes,
/// chunked), `big-cl` ([`BIG`] bytes with Content-Length), `badutf8`, `deep` (an array nested
/// 10,000 deep), `deep-field` (alice with such an array in a field), `once-then-refused…`
/// (alice, then a 401, then 503s), `once…` and JWT-shaped tokens (alice, then 503s). It counts
/// calls per token. A token may carry a `#suffix` (`tail#3`): it misbehaves as the part before
/// the `#` and is counted on its own, so that concurrent calls are not coalesced into one.
#[derive(Clone, Default)]
pub struct Manager {
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Manager {
    pub async fn start() -> (Manager, SocketAddr) {
        let manager = Manager::default();
        let state = manager.clone();
        let app = axum::Router::new()
            .route(
                "/userinfo",
                axum::routing::get(move |headers: HeaderMap| {
                    let state = state.clone();
                    async move { state.answer(&headers).await }
                }),
            )
            .route(
                "/jwks-garbage",
                axum::routing::get(|| async { (StatusCode::OK, "{\"keys\": [ not json") }),
            )
            .route(
                "/jwks-empty",
                axum::routing::get(|| async { axum::Json(json!({ "keys": [] })) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (manager, addr)
    }

    pub fn calls(&self, token: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    async fn answer(&self, headers: &HeaderMap) -> Response {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let call = {
            let mut calls = self.calls.lock().expect("calls");
            let count = calls.entry(token.clone()).or_insert(0);
            *count += 1;
            *count
        };
        let alice = json!({ "sub": "alice", "groups": ["admin"] });
        match token.split('#').next().unwrap_or_default() {
            "alice" => axum::Json(alice).into_response(),
            t if t.starts_with("once-then-refused") => match call {
                1 => axum::Json(alice).into_response(),
                2 => (StatusCode::UNAUTHORIZED, "{}").into_response(),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
            },
            t if t.starts_with("once") || t.starts_with("eyJ") => match call {
                1 => axum::Json(alice).into_response(),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
            },
            "tail" => {
                tokio::time::sleep(TAIL).await;
                axum::Json(alice).into_response()
            }
            "flap" if call % 2 == 1 => {
                (StatusCode::INTERNAL_SERVER_ERROR, "flapping").into_response()
            }
            "flap" => axum::Json(alice).into_response(),
            "reset" => {
                let parts: Vec<Result<&'static [u8], std::io::Error>> = vec![
                    Ok(b"{\"sub\": \"alice\", \"groups\": [\"ad"),
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "cut mid-body",
                    )),
                ];
                Response::new(Body::from_stream(tokio_stream::iter(parts)))
            }
            t if t.starts_with("big-") && t != "big-cl" => {
                let chunk = vec![b' '; 64 * 1024];
                let chunks = BIG / chunk.len();
                let stream = tokio_stream::iter(
                    (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                Response::new(Body::from_stream(stream))
            }
            "big-cl" => (StatusCode::OK, vec![b' '; BIG]).into_response(),
            "badutf8" => (StatusCode::OK, b"{\"sub\": \"al\xff\xfeice\"}".to_vec()).into_response(),
            "deep" => (
                StatusCode::OK,
                format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            )
                .into_response(),
            "deep-field" => (
                StatusCode::OK,
                format!(
                    "{{\"sub\": \"alice\", \"groups\": [\"admin\"], \"x\": {}{}}}",
                    "[".repeat(10_000),
                    "]".repeat(10_000)
                ),
            )
                .into_response(),
            _ => (StatusCode::UNAUTHORIZED, "{}").into_response(),
        }
    }
}
