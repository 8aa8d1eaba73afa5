//! The boundary with Envoy: the only module that names `envoy_types`, `prost` or
//! `tonic::codec`.
//!
//! - [`CheckService`]: `envoy.service.auth.v3.Authorization` as a tonic service. tonic (hyper,
//!   h2) serves the transport; this service decides what the bytes mean.
//! - The codec: [`decode`] reads the `CheckRequest` bytes straight into our own
//!   [`Request`] (the one decoder), and [`encode`] writes the [`crate::response::Answer`] as
//!   `CheckResponse` bytes (the one encoder). The generated types are the reference in tests only.
//! - [`DESCRIPTOR_SET`]: what reflection serves (built by build.rs from the `.proto` files that
//!   the envoy-types crate ships; nothing is copied into the repository).
//!
//! Per Check: the call's `grpc-timeout` becomes the deadline, the [`Checker`] runs, the
//! decision id is chosen ([`DecisionId`]), the answer encoded, the metrics recorded
//! ([`Metrics::record_check`]) and the decision line written ([`telemetry::decision`]); with
//! tracing configured, the Check runs inside its span ([`traces::check_span`]). A deny
//! is an answer: this module never returns `Err(Status)` for a policy outcome; `Err` means
//! "could not decide" (a message that is not a `CheckRequest`: INVALID_ARGUMENT).

pub mod decode;
pub mod encode;
pub mod json;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

use tokio::time::Instant;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::metadata::MetadataMap;

pub use decode::decode;
pub use encode::{Encoded, encode};

use crate::check::{Outcome, Reason};
use crate::reload::Shared;
use crate::request::Request;
use crate::telemetry::{self, DecisionId, Metrics, traces};

/// The encoded `FileDescriptorSet` of `envoy/service/auth/v3/external_auth.proto` and its
/// imports.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));

/// The gRPC service name, as health and reflection report it.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The gRPC path of Check.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Answers Envoy's Check calls: the stages behind the codec.
struct Decider {
    /// The configuration, loaded once per Check: a reload swaps it whole.
    live: Shared,
    metrics: Arc<Metrics>,
}

impl Decider {
    /// One Check, from the request view to the encoded answer; records the metrics and writes
    /// the decision line.
    async fn decide(
        &self,
        view: &Request,
        started: Instant,
        deadline: Option<Instant>,
        span: &tracing::Span,
    ) -> Encoded {
        let live = self.live.load();
        let checked = AssertUnwindSafe(live.checker.check_shadowed(
            view,
            deadline,
            live.shadow.as_deref(),
        ))
        .catch_unwind()
        .await;
        // Security: a defect in a stage (a parser meeting input it was not written for) still
        // gets an answer, and never an allow: 503, reason `internal_error`. The panic's message
        // went to stderr through the panic hook. Unwinding dropped the stage's future, as a
        // panicking task's would: catching it shares nothing with this Check that the task's
        // panic did not leave to the next ones.
        let (outcome, shadow) = checked.unwrap_or_else(|_| {
            tracing::error!(
                request_id = view.request_id.as_str(),
                "a Check panicked while deciding; answered 503 (internal_error)"
            );
            (Outcome::internal_error(), None)
        });
        // The shadow rules' answer, when it is not the enforced decision.
        let disagreement = shadow.filter(|reason| reason.allows() != outcome.reason.allows());
        let decision_id = DecisionId::for_request(view.header("x-request-id"));
        if !span.is_none() {
            traces::record_outcome(span, &outcome, decision_id.as_str());
        }
        let encoded = encode(&live.responder.answer(&outcome, decision_id.as_str()));
        let took = started.elapsed();
        self.metrics.record_check(&outcome, took);
        if disagreement.is_some() {
            self.metrics
                .record_shadow_disagreement(outcome.reason.allows());
        }
        if telemetry::decision_enabled() {
            let (rule, method, request_method, path) = match outcome.rule {
                Some((path, method)) => (path, method.as_str(), None, None),
                // Security: the normalised path never holds the query string, which may carry
                // credentials.
                None => (
                    "",
                    "",
                    view.method.map(|m| m.as_str()),
                    view.path.as_deref().ok(),
                ),
            };
            telemetry::decision(&telemetry::Decision {
                request_id: &view.request_id,
                decision_id: decision_id.as_str(),
                rule,
                method,
                request_method,
                path,
                decision: outcome.decision.as_str(),
                reason: outcome.reason.as_str(),
                identity_source: outcome.identity_source,
                identity_cache: outcome.identity_cache.map(|l| l.as_str()),
                identity_latency_us: outcome.identity_latency.map(|d| d.as_micros() as u64),
                identity_failure: outcome.failure.as_ref().map(|f| f.reason),
                detail: outcome.failure.as_ref().map(|f| f.detail.as_str()),
                user_id: outcome.user.as_ref().map(|u| u.id.as_str()),
                latency_us: took.as_micros() as u64,
                shadow_decision: disagreement.map(|r| r.decision().as_str()),
                shadow_reason: disagreement.map(Reason::as_str),
            });
        }
        encoded
    }
}

/// The last Checks' decision lines may still be queued when the server stops serving: write them
/// before the process can exit (the server drops the service once in-flight Checks are done).
impl Drop for Decider {
    fn drop(&mut self) {
        telemetry::flush();
    }
}

/// `envoy.service.auth.v3.Authorization/Check` as a tower service of HTTP requests, served
/// through [`CheckRoute`], which sends it the calls to [`CHECK_PATH`] only. Messages are never
/// compressed; tonic's message size limits apply.
#[derive(Clone)]
pub struct CheckService {
    inner: Arc<Decider>,
    max_message_size: usize,
}

impl CheckService {
    /// A service over a configuration that never changes (the tests' servers).
    #[cfg(test)]
    pub fn new(
        checker: Arc<crate::check::Checker>,
        responder: Arc<crate::response::Responder>,
        metrics: Arc<Metrics>,
    ) -> CheckService {
        let live = crate::reload::Live {
            checker,
            responder,
            shadow: None,
        };
        CheckService::live(Arc::new(arc_swap::ArcSwap::from_pointee(live)), metrics)
    }

    /// Serves the configuration `live` holds at each Check (`reload` replaces it).
    pub fn live(live: Shared, metrics: Arc<Metrics>) -> CheckService {
        CheckService {
            inner: Arc::new(Decider { live, metrics }),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// The largest `CheckRequest` accepted; a larger one is RESOURCE_EXHAUSTED.
    pub fn max_message_size(mut self, bytes: usize) -> CheckService {
        self.max_message_size = bytes;
        self
    }
}

/// tonic's default bound on a decoded message.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

impl<B> Service<http::Request<B>> for CheckService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let limit = self.max_message_size;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Codec)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX);
            Ok(grpc.unary(CheckCall(inner), request).await)
        })
    }
}

/// Check's route, ahead of tonic's router: a call to [`CHECK_PATH`] goes straight to the
/// [`CheckService`]; every other call (health, reflection, unknown methods) to the router the
/// layer wraps. tonic's router is an axum router: per call it matches the path, inserts the
/// path parameters into the request (three allocations), clones the route's boxed service and
/// boxes the bodies again; on the one path that carries the traffic that is work for nothing.
/// Check is served here only: it is not in the router.
#[derive(Clone)]
pub struct CheckRoute {
    check: CheckService,
}

impl CheckRoute {
    pub fn new(check: CheckService) -> CheckRoute {
        CheckRoute { check }
    }
}

impl<S> tower::Layer<S> for CheckRoute {
    type Service = CheckFirst<S>;

    fn layer(&self, inner: S) -> CheckFirst<S> {
        CheckFirst {
            check: self.check.clone(),
            inner,
        }
    }
}

/// The service [`CheckRoute`] puts in front of the router `S`.
#[derive(Clone)]
pub struct CheckFirst<S> {
    check: CheckService,
    inner: S,
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S> Service<http::Request<tonic::body::Body>> for CheckFirst<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = HttpResponse,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == CHECK_PATH {
            self.check.call(request)
        } else {
            Box::pin(self.inner.call(request))
        }
    }
}

/// `CheckRequest` bytes into a [`Request`] ([`decode`]); an [`Encoded`] answer's bytes out as
/// they are.
struct Codec;

/// What tonic allocates per call for the request's bytes, before it knows their length. Its
/// default is 8 KiB; a CheckRequest from Envoy is mostly 1 to 3 KiB, and a longer one makes tonic
/// reserve its whole announced length at once (the request byte budget counts it first).
const REQUEST_BUFFER: usize = 4 << 10;

/// What tonic allocates per call for the answer's bytes (its default: 8 KiB). An answer is a
/// few hundred bytes; a larger one grows the buffer by this much at a time.
const ANSWER_BUFFER: usize = 1 << 10;

/// tonic's default; it only batches the messages of a stream, and Check is unary.
const YIELD_THRESHOLD: usize = 32 << 10;

impl tonic::codec::Codec for Codec {
    type Encode = Encoded;
    type Decode = Request;
    type Encoder = Codec;
    type Decoder = Codec;

    fn encoder(&mut self) -> Codec {
        Codec
    }

    fn decoder(&mut self) -> Codec {
        Codec
    }
}

impl tonic::codec::Encoder for Codec {
    type Item = Encoded;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Encoded,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item.0);
        Ok(())
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(ANSWER_BUFFER, YIELD_THRESHOLD)
    }
}

impl tonic::codec::Decoder for Codec {
    type Item = Request;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Request>, tonic::Status> {
        use prost::bytes::Buf;
        let len = src.remaining();
        // The message is one contiguous buffer in tonic; copied first should it ever not be.
        let decoded = if src.chunk().len() == len {
            let decoded = decode(src.chunk());
            src.advance(len);
            decoded
        } else {
            decode(&src.copy_to_bytes(len))
        };
        decoded
            .map(Some)
            .map_err(|e| tonic::Status::invalid_argument(format!("CheckRequest: {e}")))
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(REQUEST_BUFFER, YIELD_THRESHOLD)
    }
}

/// One Check call.
struct CheckCall(Arc<Decider>);

impl tonic::server::UnaryService<Request> for CheckCall {
    type Response = Encoded;
    type Future = BoxFuture<tonic::Response<Encoded>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Request>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let started = Instant::now();
            let deadline = grpc_timeout(request.metadata()).map(|t| started + t);
            // Tracing off: no span, one atomic load.
            let span = traces::check_span(request.metadata(), request.get_ref());
            let view = request.into_inner();
            let encoded = if span.is_none() {
                inner.decide(&view, started, deadline, &span).await
            } else {
                use tracing::Instrument as _;
                inner
                    .decide(&view, started, deadline, &span)
                    .instrument(span.clone())
                    .await
            };
            Ok(tonic::Response::new(encoded))
        })
    }
}

/// The call's deadline from the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    // The name as a `HeaderName` already: looked up by a `&str`, the map parses the name first
    // (about 360 instructions; tonic's own timeout layer has already paid that once per call).
    let headers: &http::HeaderMap = metadata.as_ref();
    parse_grpc_timeout(headers.get(&GRPC_TIMEOUT)?.to_str().ok()?)
}

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A `grpc-timeout` value: at most 8 digits and a unit (H M S m u n); anything else is none.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    // ASCII first: the split below must not fall inside a character.
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
        Authorization, AuthorizationServer,
    };
    use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

    use crate::check::Checker;
    use crate::response::Responder;

    #[test]
    fn grpc_timeout_units() {
        let cases = [
            ("200m", Some(Duration::from_millis(200))),
            ("1S", Some(Duration::from_secs(1))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("500u", Some(Duration::from_micros(500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("", None),
            ("-1S", None),
            ("+5S", None),
            ("1\u{e9}", None),
            ("\u{e9}", None),
            ("5\u{e9}S", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_grpc_timeout(text), want, "{text:?}");
            let mut metadata = MetadataMap::new();
            if let Ok(value) = text.parse() {
                metadata.insert("grpc-timeout", value);
            }
            assert_eq!(grpc_timeout(&metadata), want, "{text:?}");
        }
    }

    /// The stages a native configuration file builds (inside a tokio runtime).
    fn stages(file: &str) -> (Arc<Checker>, Arc<Responder>, Arc<Metrics>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("checkpoint.yaml");
        std::fs::write(&path, file).expect("write config");
        let env: std::collections::HashMap<String, String> =
            [("CHECKPOINT_CONFIG".to_owned(), path.display().to_string())].into();
        let config = crate::Config::load(&env).expect("config");
        let app = crate::App::new(config, &env).expect("app");
        let responder = Arc::new(Responder::new(
            app.settings.strict_mode,
            &app.settings.user_headers,
        ));
        let metrics = Arc::new(Metrics::new(app.checker.identity.user_sources()).expect("metrics"));
        (Arc::new(app.checker), responder, metrics)
    }

    /// The reference: envoy-types' generated server, decoding with the generated types and
    /// building the answer field by field.
    struct Reference {
        checker: Arc<Checker>,
        responder: Arc<Responder>,
    }

    #[tonic::async_trait]
    impl Authorization for Reference {
        async fn check(
            &self,
            request: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            let deadline = grpc_timeout(request.metadata()).map(|t| Instant::now() + t);
            let view = decode::reference::request(request.get_ref());
            let outcome = self.checker.check(&view, deadline).await;
            let id = DecisionId::for_request(view.header("x-request-id"));
            Ok(tonic::Response::new(encode::reference::build(
                &self.responder.answer(&outcome, id.as_str()),
            )))
        }
    }

    /// What a Check keeps while it is in flight, beyond tonic's and hyper's state per stream: the
    /// future `CheckCall` boxes. A Check waiting on an identity source (a miss, or another Check's
    /// call of the same credential) keeps it for as long as the source takes, so it stays small:
    /// the cache's miss path and the source's call are boxed apart, and allocated only when they
    /// run. With them inline it was about 7 KB (bench/RESULTS.md, "Session 11 runs").
    #[tokio::test]
    async fn a_check_in_flight_keeps_little_memory() {
        let (checker, responder, metrics) = stages(
            "version: 1\nrules:\n  inline:\n    /api: { GET: { authorization: { expression: \"groups.admin\" } } }\nidentity:\n  sources: [ { type: userinfo, url: \"http://127.0.0.1:9/userinfo\" } ]\n",
        );
        let service = CheckService::new(checker, responder, metrics);
        let view = crate::request::with_authorization("Bearer token");
        let span = tracing::Span::none();
        let decide = service.inner.decide(&view, Instant::now(), None, &span);
        let size = std::mem::size_of_val(&decide);
        assert!(size <= 3 << 10, "a Check's future is {size} bytes");
    }

    /// A stage that panics (here an identity source; in fe67668 the JWT header's parser did)
    /// still gets the Check an answer: 503 with checkpoint's body, never an allow, counted as
    /// `internal_error`; and the next Check is answered as usual.
    #[tokio::test]
    async fn a_panic_while_deciding_is_a_503_never_an_allow() {
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse as Http;
        use prost::Message as _;

        use crate::identity::{BoxFuture, Context, Entry, Named, Resolution, Resolver, Source};

        struct Panics;
        impl Source for Panics {
            fn name(&self) -> &'static str {
                "panics"
            }
            fn resolve<'a>(
                &'a self,
                request: &'a Request,
                _: &'a Context,
            ) -> BoxFuture<'a, Resolution> {
                Box::pin(async move {
                    assert!(request.header("authorization").is_none(), "a defect");
                    Resolution::NoCredential
                })
            }
        }

        let (checker, responder, metrics) = stages(
            "version: 1\nrules:\n  inline:\n    /api: { GET: { authorization: { expression: \"true\", public: true } } }\nidentity:\n  sources: [ { type: trusted_headers } ]\n",
        );
        let Ok(mut checker) = Arc::try_unwrap(checker) else {
            panic!("the checker is shared")
        };
        checker.identity = Arc::new(Resolver::new(
            vec![Named {
                name: "panics".to_owned(),
                source: Entry::User(Box::new(Panics)),
            }],
            None,
        ));
        let identity = checker.identity.clone();
        let service = CheckService::new(Arc::new(checker), responder, metrics.clone());
        let span = tracing::Span::none();
        let mut view = crate::request::with_authorization("Bearer token");
        view.method = Some(crate::route::Method::Get);
        view.path = Ok("/api".to_owned());

        let decide = async |view: &Request| {
            let encoded = service
                .inner
                .decide(view, Instant::now(), None, &span)
                .await;
            CheckResponse::decode(encoded.0.as_slice()).expect("a CheckResponse")
        };

        let answer = decide(&view).await;
        assert_eq!(
            answer.status.as_ref().map(|s| s.code),
            Some(14),
            "{answer:?}"
        );
        let Some(Http::DeniedResponse(denied)) = answer.http_response else {
            panic!("not a denial: {answer:?}")
        };
        assert_eq!(denied.status.map(|s| s.code), Some(503));
        let body: serde_json::Value = serde_json::from_str(&denied.body).expect("a JSON body");
        assert_eq!(body["statusCode"], 503, "{body}");

        // Without a credential the source does not panic: the public rule lets the caller in.
        view.headers = crate::request::Headers::default();
        let answer = decide(&view).await;
        assert_eq!(
            answer.status.as_ref().map(|s| s.code),
            Some(0),
            "{answer:?}"
        );

        let text = metrics.render(&identity).await;
        for (series, want) in [
            ("decision=\"deny\",reason=\"internal_error\"", 1),
            ("decision=\"allow\",reason=\"allowed\"", 1),
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with("checkpoint_checks_total{") && l.contains(series))
                .unwrap_or_else(|| panic!("no {series} in {text}"));
            assert!(line.ends_with(&format!(" {want}")), "{line}");
        }
    }

    /// checkpoint's service and envoy-types' generated server with the reference decoding and
    /// encoding, over real gRPC connections: the same answers for the same requests, allows and
    /// denies, map and pair header forms, an unknown method refused.
    #[tokio::test]
    async fn the_service_answers_as_the_generated_reference() {
        use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
            HttpRequest, Request as AttrRequest,
        };

        let (checker, responder, metrics) = stages(
            r#"
version: 1
rules:
  inline:
    /api: { GET: { authorization: { expression: "groups.admin", public: false } } }
    /public: { ALL: { authorization: { expression: "true", public: true } } }
identity:
  sources: [ { type: trusted_headers } ]
"#,
        );
        let serve = |reference: bool| {
            let (checker, responder, metrics) =
                (checker.clone(), responder.clone(), metrics.clone());
            async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if reference {
                    let router = tonic::transport::Server::builder()
                        .add_service(AuthorizationServer::new(Reference { checker, responder }));
                    tokio::spawn(router.serve_with_incoming(incoming));
                } else {
                    // As the server runs it: Check ahead of tonic's (here empty) router.
                    let router = tonic::transport::Server::builder()
                        .layer(CheckRoute::new(CheckService::new(
                            checker, responder, metrics,
                        )))
                        .add_routes(tonic::service::Routes::default());
                    tokio::spawn(router.serve_with_incoming(incoming));
                }
                AuthorizationClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect")
            }
        };
        let mut reference = serve(true).await;
        let mut ours = serve(false).await;

        // Every request names its x-request-id, so that both servers answer the same decision
        // id (a request without one gets a random id: tests/metrics.rs).
        let map_form = |path: &str, headers: &[(&str, &str)]| {
            let mut http = HttpRequest {
                method: "GET".into(),
                path: path.into(),
                id: "stream-1".into(),
                ..Default::default()
            };
            http.headers.insert("x-request-id".into(), "r-0".into());
            for (k, v) in headers {
                http.headers.insert((*k).into(), (*v).into());
            }
            http
        };
        let admin = [
            ("miauserid", "alice"),
            ("miausergroups", "admin,users"),
            ("x-request-id", "r-1"),
        ];
        let mut pair_form = map_form("", &[]);
        pair_form.method.clear();
        pair_form.header_map = Some(HeaderMap {
            headers: [
                (":method", "GET"),
                (":path", "/api/x"),
                ("MiaUserId", "bob"),
                ("X-Request-Id", "r-2"),
            ]
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).into(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
        });
        let cases = [
            map_form("/api/users", &admin),
            map_form("/api/users", &[("miauserid", "bob")]),
            map_form("/api/users", &[]),
            map_form("/public/page", &[]),
            map_form("/nowhere", &admin),
            map_form("api/not-origin-form", &admin),
            pair_form,
        ];
        let mut codes = Vec::new();
        for http in cases {
            let check = CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(AttrRequest {
                        http: Some(http),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            };
            let want = reference.check(check.clone()).await.expect("reference");
            let got = ours.check(check.clone()).await.expect("ours");
            let want = want.into_inner();
            codes.push(want.status.as_ref().map(|s| s.code).unwrap_or(-1));
            assert_eq!(got.into_inner(), want, "{check:?}");
        }
        // OK, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED all occurred.
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes, [0, 3, 5, 7, 16]);
        assert!(
            ours.check(CheckRequest::default()).await.is_ok(),
            "an empty request is a deny, not an error"
        );

        // Any other method of the service: UNIMPLEMENTED, as the generated server answers.
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .layer(CheckRoute::new(CheckService::new(
                        checker.clone(),
                        responder.clone(),
                        metrics.clone(),
                    )))
                    .add_routes(tonic::service::Routes::default())
                    .serve_with_incoming(incoming),
            );
            addr
        };
        let mut channel = tonic::client::Grpc::new(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
        channel.ready().await.expect("ready");
        let status = channel
            .unary::<CheckRequest, CheckResponse, _>(
                tonic::Request::new(CheckRequest::default()),
                "/envoy.service.auth.v3.Authorization/Other"
                    .parse()
                    .expect("path"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("unimplemented");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn the_descriptor_set_describes_the_authorization_service() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET).expect("decodes");
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
            .expect("external_auth.proto is in the set");
        assert!(file.service.iter().any(|s| s.name() == "Authorization"));
    }
}
