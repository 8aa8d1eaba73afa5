//! The customer's authentication manager, as a small HTTP server on loopback port 0.
//!
//! What it answers is chosen by the bearer token, so one server serves a whole table of cases:
//! `alice`, `bob`, `carol` (no groups) are users; `status-NNN` answers that status; `empty`,
//! `noid`, `notjson`, `huge` (4 MiB, chunked), `huge-cl` (4 MiB with Content-Length), `crlf`,
//! `unicode`; `slow-MS` answers alice after MS milliseconds. Anything else is 401.
//! Every call's path and headers are recorded, and the slow answers that were written (a slow
//! call whose client went away is never finished).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Clone, Default)]
pub struct UserInfoServer {
    pub addr: Option<SocketAddr>,
    calls: Arc<Mutex<Vec<Call>>>,
    slow_finished: Arc<std::sync::atomic::AtomicUsize>,
}

impl UserInfoServer {
    pub async fn start() -> UserInfoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut server = UserInfoServer {
            addr: Some(listener.local_addr().expect("addr")),
            ..Default::default()
        };
        let calls = server.calls.clone();
        let slow_finished = server.slow_finished.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (calls, slow_finished) = (calls.clone(), slow_finished.clone());
            async move { answer(&calls, &slow_finished, uri, headers).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        server.addr = server.addr.take();
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("started"))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }

    /// Slow answers that ran to the end (their client was still there).
    pub fn slow_finished(&self) -> usize {
        self.slow_finished.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn answer(
    calls: &Mutex<Vec<Call>>,
    slow_finished: &std::sync::atomic::AtomicUsize,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let recorded: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    calls.lock().expect("lock").push(Call {
        path: uri.path().to_owned(),
        headers: recorded,
    });
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let alice = json!({
        "sub": "alice", "groups": ["admin", "users"], "permissions": ["api.users.get", "orders:read"],
        "email": "alice@example.test", "tenant": "acme", "name": "Alice"
    });
    if let Some(ms) = token.strip_prefix("slow-") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        slow_finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return axum::Json(alice).into_response();
    }
    if let Some(code) = token.strip_prefix("status-") {
        let code = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, [("location", "http://127.0.0.1:9/elsewhere")], "{}").into_response();
    }
    match token.as_str() {
        "alice" => axum::Json(alice).into_response(),
        "bob" => axum::Json(json!({"sub": "bob", "groups": ["viewers"], "tenant": "acme"}))
            .into_response(),
        "carol" => axum::Json(json!({"sub": "carol"})).into_response(),
        "empty" => (StatusCode::OK, "").into_response(),
        "noid" => axum::Json(json!({"name": "nobody"})).into_response(),
        "notjson" => (StatusCode::OK, "<html>oops</html>").into_response(),
        "crlf" => axum::Json(json!({"sub": "evil\r\nx-injected: 1"})).into_response(),
        "unicode" => axum::Json(json!({"sub": "zoë", "tenant": "Zürich 😀"})).into_response(),
        "huge" => {
            let chunk = vec![b' '; 64 * 1024];
            let stream =
                tokio_stream::iter((0..64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            Response::new(Body::from_stream(stream))
        }
        "huge-cl" => (StatusCode::OK, vec![b' '; 4 * 1024 * 1024]).into_response(),
        _ => (StatusCode::UNAUTHORIZED, "{\"error\":\"invalid_token\"}").into_response(),
    }
}
