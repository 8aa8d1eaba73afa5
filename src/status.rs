//! The HTTP status routes on `HTTP_PORT`, as Mia-Platform services expose them:
//! `GET /-/healthz` (the process is alive), `GET /-/ready` (rules are loaded and the server is
//! not shutting down), `GET /-/check-up` (same as ready: checkpoint has no dependency whose
//! outage should take it out of rotation, since an identity outage is answered per request).
//!
//! Each answers `{"status":"OK","name":...,"version":...}`, or 503 with `"status":"KO"`.
//! Called by kubelet probes, never by user traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Shared between the status routes, the gRPC health service and the shutdown sequence.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    name: String,
    version: String,
}

impl Readiness {
    pub fn new(name: &str, version: &str) -> Arc<Readiness> {
        Arc::new(Readiness {
            ready: AtomicBool::new(false),
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn body(&self, ok: bool) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
        let body = serde_json::json!({
            "status": if ok { "OK" } else { "KO" },
            "name": self.name,
            "version": self.version,
        });
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
    }
}

/// The router of the status routes.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/-/healthz", get(healthz))
        .route("/-/ready", get(ready))
        .route("/-/check-up", get(ready))
        .with_state(readiness)
}

async fn healthz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    r.body(true)
}

async fn ready(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    r.body(r.is_ready())
}
