//! Traces: OpenTelemetry spans for each Check and each outbound identity call, exported over
//! OTLP/gRPC (`opentelemetry-otlp` on the tonic already in the tree).
//!
//! Spans are `tracing` spans of the target [`TARGET`], turned into OpenTelemetry spans by the
//! `tracing-opentelemetry` layer that [`layer`] builds; the log formatter never sees them. With
//! no endpoint configured there is no layer and [`enabled`] is false: the Check path then makes
//! no span at all ([`tracing::Span::none`]), one relaxed atomic load per Check.
//!
//! - The Check span ([`check_span`]) is a server span named
//!   `envoy.service.auth.v3.Authorization/Check`; its parent is, in this order, the W3C
//!   `traceparent` (and `tracestate`) or B3 headers of the Check call's own gRPC metadata (what
//!   Envoy's tracer sets on the ext_authz call), then the same headers among the request's HTTP
//!   headers, else none (a new trace). [`record_outcome`] adds the decision.
//! - A client span per outbound call ([`client_span`]): user-info, introspection, discovery,
//!   JWKS; its `traceparent` goes on the request ([`propagation_headers`]) so that the called
//!   service's trace continues.
//!
//! Security: no attribute holds a credential, a cookie or a header value: the attributes are
//! the RPC's names, the rule's key, the decision, the reason, the identity source's name, the
//! cache result, the decision id, and for outbound calls the method, host, port, the URL without
//! its query and user info, and the status code.
//!
//! Export never slows a Check: a finished span goes into a bounded queue ([`QueueProcessor`])
//! with a non-blocking send; a thread of its own, with its own small runtime, sends batches to
//! the collector. When the queue is full (a slow collector) or a batch cannot be delivered (a
//! stopped one), the spans are dropped and counted ([`dropped_spans`],
//! `checkpoint_trace_spans_dropped_total`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::check::Outcome;
use crate::config::telemetry::{Root, TraceSettings};
use crate::request::Request;

/// The `tracing` target of every span that becomes an OpenTelemetry span.
pub const TARGET: &str = "checkpoint::trace";

/// The name of the Check span: the gRPC method, as the RPC conventions name server spans.
pub const CHECK_SPAN: &str = "envoy.service.auth.v3.Authorization/Check";

/// The request headers that carry a trace context: W3C Trace Context, then B3 (single and
/// multi). `allowed-headers` adds them when tracing is configured.
pub const PROPAGATION_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The most spans sent to the collector in one export.
const MAX_BATCH: usize = 512;
/// How long a finished span may wait for more before its batch is sent.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Bound of the last export at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Whether spans are made: a layer is installed ([`layer`]).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Spans dropped before export since start: the queue was full or the collector could not
/// take them.
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The running exporter; [`Traces::shutdown`] sends what is queued (bounded in time).
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    pub fn shutdown(&self) {
        ENABLED.store(false, Ordering::Relaxed);
        drop(self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
    }
}

/// The layer that turns the spans of [`TARGET`] into OpenTelemetry spans, and the exporter
/// behind it, for `settings`; `None` when tracing is off. Starts the export thread and turns
/// [`enabled`] on. Fails if the exporter cannot be built (an endpoint tonic refuses).
pub fn layer<S>(
    settings: &TraceSettings,
) -> Result<Option<(impl tracing_subscriber::Layer<S> + use<S>, Traces)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let Some(endpoint) = &settings.endpoint else {
        return Ok(None);
    };
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attributes(
            settings
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    let processor = QueueProcessor::start(endpoint, settings.queue_size, resource.clone())?;
    let root = match settings.sampler.root {
        Root::AlwaysOn => Sampler::AlwaysOn,
        Root::AlwaysOff => Sampler::AlwaysOff,
        Root::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    let sampler = if settings.sampler.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    };
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("checkpoint");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_error_events_to_status(false)
        .with_error_events_to_exceptions(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        );
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((layer, Traces { provider })))
}

/// The span of one Check, its parent read from the call's metadata, then the request's headers;
/// [`Span::none`] when tracing is off.
#[inline]
pub fn check_span(metadata: &tonic::metadata::MetadataMap, request: &Request) -> Span {
    if !enabled() {
        return Span::none();
    }
    traced_check_span(metadata, request)
}

fn traced_check_span(metadata: &tonic::metadata::MetadataMap, request: &Request) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        CHECK_SPAN,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = crate::envoy::SERVICE_NAME,
        rpc.method = "Check",
        rpc.grpc.status_code = 0i64,
        checkpoint.rule = Empty,
        checkpoint.rule.method = Empty,
        checkpoint.decision = Empty,
        checkpoint.reason = Empty,
        checkpoint.identity.source = Empty,
        checkpoint.identity.cache = Empty,
        checkpoint.decision_id = Empty,
    );
    if let Some(parent) = remote_parent(&|name| metadata.get(name).and_then(|v| v.to_str().ok()))
        .or_else(|| remote_parent(&|name| request.header(name)))
    {
        // Only fails for a span already started or disabled: neither can be the case here.
        drop(span.set_parent(parent));
    }
    span
}

/// Adds the Check's outcome to its span.
pub fn record_outcome(span: &Span, outcome: &Outcome<'_>, decision_id: &str) {
    if let Some((path, method)) = outcome.rule {
        span.record("checkpoint.rule", path);
        span.record("checkpoint.rule.method", method.as_str());
    }
    span.record("checkpoint.decision", outcome.decision.as_str());
    span.record("checkpoint.reason", outcome.reason.as_str());
    span.record("checkpoint.identity.source", outcome.identity_source);
    if let Some(cache) = outcome.identity_cache {
        span.record("checkpoint.identity.cache", cache.as_str());
    }
    span.record("checkpoint.decision_id", decision_id);
}

/// The span of one outbound call (`call`: `userinfo`, `introspection`, `discovery`, `jwks`),
/// a child of the current Check's span when there is one; [`Span::none`] when tracing is off.
pub fn client_span(call: &'static str, method: &'static str, url: &reqwest::Url) -> Span {
    if !enabled() {
        return Span::none();
    }
    // Security: the URL without its query and user info, which may hold a secret.
    let mut full = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        full.push_str(&format!(":{port}"));
    }
    full.push_str(url.path());
    tracing::info_span!(
        target: TARGET,
        "HTTP",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().map(i64::from),
        url.full = full,
        checkpoint.call = call,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// The headers that carry `span`'s context to the called service (`traceparent`, and
/// `tracestate` when there is one); none when tracing is off. Set them last on the request, so
/// that they replace any the client sent.
pub fn propagation_headers(span: &Span) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if span.is_none() {
        return headers;
    }
    struct Headers<'a>(&'a mut http::HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut Headers(&mut headers));
    headers
}

/// Records the answer's status code on a client span; 5xx marks it an error.
pub fn record_status(span: &Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("error.type", status.to_string());
        span.record("otel.status_code", "ERROR");
    }
}

/// Marks a client span failed: `kind` is a fixed word (`timeout`, `connection`), never a
/// message that could quote the request.
pub fn record_error(span: &Span, kind: &'static str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
}

/// The remote parent in one carrier of headers (`get` takes a lower-case name): W3C Trace
/// Context first, then B3 single, then B3 multi.
fn parent<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Option<Context> {
    struct Carrier<'a, 'b>(&'b dyn Fn(&str) -> Option<&'a str>);
    impl Extractor for Carrier<'_, '_> {
        fn get(&self, key: &str) -> Option<&str> {
            (self.0)(key)
        }
        fn keys(&self) -> Vec<&str> {
            Vec::new()
        }
    }
    get("traceparent")?;
    let context = TraceContextPropagator::new().extract(&Carrier(get));
    if context.span().span_context().is_valid() {
        return Some(context);
    }
    None
}

/// The remote parent in one carrier, any format; see [`parent`] and [`b3`].
fn remote_parent<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Option<Context> {
    if get("traceparent").is_some()
        && let Some(context) = parent(get)
    {
        return Some(context);
    }
    b3(get).map(|span| Context::new().with_remote_span_context(span))
}

/// A B3 context: the single `b3` header (`{trace}-{span}[-{sampled}[-{parent}]]`), else the
/// multi headers (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`). A 64-bit trace
/// id is widened with leading zeros. No sampling decision ("deferred") counts as sampled.
pub fn b3<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Option<SpanContext> {
    let (trace, span, sampled) = match get("b3") {
        Some(single) => {
            let mut parts = single.trim().split('-');
            let trace = parts.next()?;
            let span = parts.next()?;
            let sampled = parts.next();
            (trace, span, sampled)
        }
        None => {
            let sampled = match get("x-b3-flags").map(str::trim) {
                Some("1") => Some("d"),
                _ => get("x-b3-sampled"),
            };
            (get("x-b3-traceid")?, get("x-b3-spanid")?, sampled)
        }
    };
    let hex = |text: &str, lens: &[usize]| {
        lens.contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b.to_ascii_lowercase()))
    };
    let (trace, span) = (trace.trim(), span.trim());
    if !hex(trace, &[16, 32]) || !hex(span, &[16]) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = match sampled.map(str::trim) {
        None | Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        Some("0" | "false") => TraceFlags::default(),
        Some(_) => return None,
    };
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// A finished span on its way to the export thread, or an order for it.
enum Message {
    Flush(std::sync::mpsc::Sender<()>),
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// Hands finished spans to the export thread through a bounded queue without ever waiting;
/// counts what it drops.
#[derive(Debug)]
struct QueueProcessor {
    spans: tokio::sync::mpsc::Sender<SpanData>,
    orders: tokio::sync::mpsc::UnboundedSender<Message>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Flush(_) => "Flush",
            Message::Shutdown(_) => "Shutdown",
        })
    }
}

impl QueueProcessor {
    /// Builds the exporter on the export thread's runtime and starts the thread.
    fn start(endpoint: &str, queue_size: usize, resource: Resource) -> Result<Self, String> {
        let (spans, mut queue) = tokio::sync::mpsc::channel::<SpanData>(queue_size);
        let (orders, mut inbox) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (built, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let endpoint = endpoint.to_owned();
        let worker = std::thread::Builder::new()
            .name("checkpoint-traces".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        drop(built.send(Err(format!("cannot start the trace exporter: {e}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    use opentelemetry_otlp::WithExportConfig as _;
                    let exporter = opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint.clone())
                        .build();
                    let mut exporter = match exporter {
                        Ok(exporter) => {
                            drop(built.send(Ok(())));
                            exporter
                        }
                        Err(e) => {
                            drop(built.send(Err(format!("trace endpoint \"{endpoint}\": {e}"))));
                            return;
                        }
                    };
                    exporter.set_resource(&resource);
                    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
                    let mut due = tokio::time::Instant::now() + BATCH_DELAY;
                    loop {
                        tokio::select! {
                            biased;
                            order = inbox.recv() => {
                                while let Ok(span) = queue.try_recv() {
                                    batch.push(span);
                                    if batch.len() >= MAX_BATCH {
                                        export(&exporter, &mut batch).await;
                                    }
                                }
                                export(&exporter, &mut batch).await;
                                match order {
                                    Some(Message::Flush(done)) => {
                                        let _ = done.send(());
                                    },
                                    Some(Message::Shutdown(done)) => {
                                        drop(exporter.shutdown());
                                        {
                                        let _ = done.send(());
                                    };
                                        return;
                                    }
                                    None => return,
                                }
                            }
                            span = queue.recv() => match span {
                                Some(span) => {
                                    if batch.is_empty() {
                                        due = tokio::time::Instant::now() + BATCH_DELAY;
                                    }
                                    batch.push(span);
                                    if batch.len() >= MAX_BATCH {
                                        export(&exporter, &mut batch).await;
                                    }
                                }
                                None => {
                                    export(&exporter, &mut batch).await;
                                    return;
                                }
                            },
                            () = tokio::time::sleep_until(due), if !batch.is_empty() => {
                                export(&exporter, &mut batch).await;
                            }
                        }
                    }
                });
            })
            .map_err(|e| format!("cannot start the trace exporter: {e}"))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(QueueProcessor {
                spans,
                orders,
                worker: Mutex::new(Some(worker)),
            }),
            Ok(Err(message)) => Err(message),
            Err(_) => Err("the trace exporter stopped while starting".to_owned()),
        }
    }

    /// Sends an order to the export thread and waits for it to be carried out, up to `timeout`.
    fn order(
        &self,
        make: fn(std::sync::mpsc::Sender<()>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = std::sync::mpsc::channel();
        self.orders
            .send(make(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

/// Sends a batch; a batch the collector did not take is counted as dropped.
async fn export(exporter: &opentelemetry_otlp::SpanExporter, batch: &mut Vec<SpanData>) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
    let count = spans.len() as u64;
    if exporter.export(spans).await.is_err() {
        DROPPED.fetch_add(count, Ordering::Relaxed);
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.order(Message::Flush, SHUTDOWN_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.order(Message::Shutdown, timeout);
        if result.is_ok()
            && let Some(worker) = self
                .worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        {
            drop(worker.join());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carrier<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn b3_single_and_multi() {
        let single = b3(&carrier(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .expect("single");
        assert_eq!(
            single.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(single.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(single.is_sampled() && single.is_remote());

        let multi = b3(&carrier(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .expect("multi");
        assert_eq!(
            multi.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(!multi.is_sampled());
        let debug = b3(&carrier(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]))
        .expect("debug");
        assert!(debug.is_sampled(), "debug implies sampled");

        for bad in [
            "1",
            "0",
            "d",
            "xyz-e457b5a2e4d86bd1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
        ] {
            assert_eq!(b3(&carrier(&[("b3", bad)])), None, "{bad}");
        }
        assert_eq!(b3(&carrier(&[("x-b3-traceid", "64fe8b2a57d3eff7")])), None);
    }

    #[test]
    fn w3c_first_then_b3() {
        let both = [
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ];
        let context = remote_parent(&carrier(&both)).expect("parent");
        let span = context.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(span.span_id().to_string(), "b7ad6b7169203331");
        assert!(span.is_remote());

        let broken_w3c = [("traceparent", "garbage"), both[1]];
        let context = remote_parent(&carrier(&broken_w3c)).expect("b3 parent");
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(remote_parent(&carrier(&[("traceparent", "garbage")])).is_none());
        assert!(remote_parent(&carrier(&[])).is_none());
    }
}
