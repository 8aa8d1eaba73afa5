//! The HTTP status routes on `HTTP_PORT`, as Mia-Platform services expose them:
//! `GET /-/healthz` (the process is alive), `GET /-/ready` (rules are loaded and the server is
//! not shutting down), `GET /-/check-up` (same as ready: checkpoint has no dependency whose
//! outage should take it out of rotation, since an identity outage is answered per request).
//!
//! Each answers `{"status":"OK","name":...,"version":...}`, or 503 with `"status":"KO"`.
//! Called by kubelet probes, never by user traffic.
//!
//! `GET /metrics`: the Prometheus text exposition ([`crate::telemetry::metrics`]), for a
//! Prometheus server's scrapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::reload::Shared;
use crate::telemetry::{Metrics, metrics};

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

/// What the status routes read: readiness, and for `/metrics` the registry and the checker
/// whose cache and key sets are read at scrape time.
#[derive(Clone)]
struct Status {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    live: Shared,
}

/// The router of the status routes and `/metrics`.
pub fn router(readiness: Arc<Readiness>, metrics: Arc<Metrics>, live: Shared) -> Router {
    Router::new()
        .route("/-/healthz", get(healthz))
        .route("/-/ready", get(ready))
        .route("/-/check-up", get(ready))
        .route("/metrics", get(scrape))
        .with_state(Status {
            readiness,
            metrics,
            live,
        })
}

async fn healthz(State(s): State<Status>) -> impl IntoResponse {
    s.readiness.body(true)
}

async fn ready(State(s): State<Status>) -> impl IntoResponse {
    s.readiness.body(s.readiness.is_ready())
}

async fn scrape(State(s): State<Status>) -> impl IntoResponse {
    let identity = s.live.load_full().checker.identity.clone();
    let text = s.metrics.render(&identity).await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}
