//! Traces with real parts: a real Envoy with its own OpenTelemetry tracer and the checkpoint
//! binary both export to one OTLP/gRPC receiver started here (no collector is installable, so
//! the receiver is a small server on the generated `opentelemetry-proto` service that stores
//! what it receives). Requests go through Envoy with and without a client `traceparent`; the
//! test user-info server (tests/support/userinfo.rs) records what checkpoint sends it.
//!
//! Then the receiver is stopped: Checks keep their answers and
//! `checkpoint_trace_spans_dropped_total` rises.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod e2e_support;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::{Proc, free_ports, plain_client, render, wait_for_status};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::userinfo::UserInfoServer;

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(30);

const CHECK_SPAN: &str = "envoy.service.auth.v3.Authorization/Check";

/// One stored span with the service that sent it.
#[derive(Debug, Clone)]
struct Stored {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Stored {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Stored>>>);

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(AnyValue::StringValue(s)) => s.clone(),
            Some(AnyValue::IntValue(i)) => i.to_string(),
            Some(AnyValue::BoolValue(b)) => b.to_string(),
            Some(AnyValue::DoubleValue(d)) => d.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let mut stored = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    stored.push(Stored {
                        service: service.clone(),
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The OTLP/gRPC receiver, on a runtime of its own so that stopping it closes every connection.
struct Receiver {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    store: Store,
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let store = Store::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(store.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        Receiver {
            runtime: Some(runtime),
            addr,
            store,
        }
    }

    fn spans(&self) -> Vec<Stored> {
        self.store.0.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Envoy with the OpenTelemetry tracer on its HTTP connection manager (every request traced),
/// ext_authz to checkpoint, and a direct answer behind it: what an allowed request reaches.
const ENVOY: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: ${ADMIN_PORT} } }
layered_runtime:
  layers:
  - name: static
    static_layer:
      # Export each span at once rather than every 5 s.
      tracing.opentelemetry.flush_interval_ms: 100
      tracing.opentelemetry.min_flush_spans: 1
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: ${HTTP_PORT} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service:
                  envoy_grpc: { cluster_name: otlp }
                  timeout: 1s
                service_name: envoy
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: { cluster_name: checkpoint }
                timeout: 2s
              failure_mode_allow: false
              allowed_headers: ${ALLOWED_HEADERS}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: / }
                direct_response: { status: 200, body: { inline_string: "allowed\n" } }
  clusters:
  - name: checkpoint
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: checkpoint
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${CHECKPOINT_PORT} } } }
  - name: otlp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: otlp
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${OTLP_PORT} } } }
"#;

/// The metric's value in a text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls until `found` finds what it looks for in the stored spans, or fails with them.
async fn wait_for<T>(receiver: &Receiver, what: &str, found: impl Fn(&[Stored]) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = receiver.spans();
        if let Some(value) = found(&spans) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {WAIT:?}; received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_spans_join_envoys_trace_and_continue_into_user_info() {
    let envoy_bin = e2e_support::envoy_bin();
    let mut receiver = Receiver::start();
    let userinfo = UserInfoServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let [grpc_port, status_port, http_port, admin_port] = free_ports::<4>();
    let yaml = format!(
        r#"
version: 1
server:
  grpc_addr: 127.0.0.1:{grpc_port}
  http_addr: 127.0.0.1:{status_port}
  shutdown_delay: 0s
rules:
  inline:
    /private: {{ GET: {{ authorization: {{ expression: "groups.admin", public: false }} }} }}
identity:
  sources:
    - type: userinfo
      url: {userinfo}
      headers_to_proxy: [authorization]
  cache: {{ ttl: 0s }}
telemetry:
  endpoint: http://{otlp}
  service_name: checkpoint-under-test
"#,
        userinfo = userinfo.url("/userinfo"),
        otlp = receiver.addr,
    );
    let mut checkpoint = e2e_support::spawn_checkpoint_native(dir.path(), &yaml);
    let allowed = e2e_support::allowed_headers_native(dir.path());
    for name in ["traceparent", "tracestate", "b3", "x-b3-traceid"] {
        assert!(
            allowed.contains(&format!("\"{name}\"")),
            "allowed-headers names {name} with tracing on: {allowed}"
        );
    }
    let envoy_yaml = render(
        ENVOY,
        &[
            ("ADMIN_PORT", admin_port.to_string()),
            ("HTTP_PORT", http_port.to_string()),
            ("CHECKPOINT_PORT", grpc_port.to_string()),
            ("OTLP_PORT", receiver.addr.port().to_string()),
            ("ALLOWED_HEADERS", allowed),
        ],
    );
    let envoy_config = dir.path().join("envoy.yaml");
    std::fs::write(&envoy_config, envoy_yaml).expect("write envoy.yaml");
    let mut command = Command::new(envoy_bin);
    command.arg("-c").arg(&envoy_config).args([
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "warn",
    ]);
    let mut envoy = Proc::spawn("envoy", command, dir.path());

    let plain = plain_client();
    let status = format!("http://127.0.0.1:{status_port}");
    wait_for_status(
        &plain,
        &format!("{status}/-/ready"),
        200,
        &mut checkpoint,
        WAIT,
    )
    .await;
    wait_for_status(
        &plain,
        &format!("http://127.0.0.1:{admin_port}/ready"),
        200,
        &mut envoy,
        WAIT,
    )
    .await;
    let url = format!("http://127.0.0.1:{http_port}/private");

    // Without a client traceparent: Envoy starts the trace.
    let response = plain
        .get(&url)
        .header("authorization", "Bearer alice")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "alice is an admin");
    // With one: Envoy continues the client's trace, and so does checkpoint.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = plain
        .get(&url)
        .header("authorization", "Bearer alice")
        .header(
            "traceparent",
            format!("00-{client_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let response = plain
        .get(&url)
        .header("authorization", "Bearer bob")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403, "bob is not an admin");

    let checks = wait_for(&receiver, "three Check spans", |spans| {
        let checks: Vec<Stored> = spans
            .iter()
            .filter(|s| s.service == "checkpoint-under-test" && s.name == CHECK_SPAN)
            .cloned()
            .collect();
        (checks.len() == 3).then_some(checks)
    })
    .await;
    for check in &checks {
        assert_eq!(check.kind, SpanKind::Server as i32, "{check:?}");
        assert_eq!(check.attribute("rpc.system"), Some("grpc"));
        assert_eq!(
            check.attribute("rpc.service"),
            Some("envoy.service.auth.v3.Authorization")
        );
        assert_eq!(check.attribute("rpc.method"), Some("Check"));
        assert_eq!(check.attribute("checkpoint.rule"), Some("/private"));
        assert_eq!(
            check.attribute("checkpoint.identity.source"),
            Some("userinfo")
        );
        assert!(
            check.attribute("checkpoint.decision_id").is_some(),
            "{check:?}"
        );

        // Its parent is Envoy's span of the ext_authz call, in the same trace.
        let parent = wait_for(&receiver, "Envoy's span of the Check call", |spans| {
            spans
                .iter()
                .find(|s| s.service == "envoy" && s.span_id == check.parent_span_id)
                .cloned()
        })
        .await;
        assert_eq!(parent.trace_id, check.trace_id, "{parent:?} {check:?}");
        assert_eq!(parent.kind, SpanKind::Client as i32, "{parent:?}");
        assert!(
            parent.name.contains("Authorization"),
            "Envoy's span is the ext_authz call: {parent:?}"
        );

        // The user-info call's span is a child of the Check's span.
        let call = wait_for(&receiver, "the user-info call's span", |spans| {
            spans
                .iter()
                .find(|s| {
                    s.service == "checkpoint-under-test"
                        && s.parent_span_id == check.span_id
                        && s.attribute("checkpoint.call") == Some("userinfo")
                })
                .cloned()
        })
        .await;
        assert_eq!(call.trace_id, check.trace_id);
        assert_eq!(call.kind, SpanKind::Client as i32);
        assert_eq!(call.name, "GET");
        assert_eq!(call.attribute("http.request.method"), Some("GET"));
        assert_eq!(call.attribute("http.response.status_code"), Some("200"));
        assert_eq!(call.attribute("server.address"), Some("127.0.0.1"));
        // The user-info server received that span's traceparent.
        let traceparent = format!("00-{}-{}-01", call.trace_id, call.span_id);
        assert!(
            userinfo
                .calls()
                .iter()
                .any(|c| c.headers.get("traceparent") == Some(&traceparent)),
            "the user-info server got {traceparent}: {:?}",
            userinfo.calls()
        );
    }
    let decisions: Vec<_> = checks
        .iter()
        .map(|c| {
            (
                c.attribute("checkpoint.decision").unwrap_or_default(),
                c.attribute("checkpoint.reason").unwrap_or_default(),
            )
        })
        .collect();
    assert!(decisions.contains(&("allow", "allowed")), "{decisions:?}");
    assert!(
        decisions.contains(&("deny", "expression_false")),
        "{decisions:?}"
    );
    assert!(
        checks.iter().any(|c| c.trace_id == client_trace),
        "the client's trace continues through Envoy into checkpoint: {checks:?}"
    );
    assert!(
        checks.iter().any(|c| c.trace_id != client_trace),
        "without a client traceparent, Envoy's own trace: {checks:?}"
    );

    // Security: no attribute of any span holds the bearer token.
    for span in receiver.spans() {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains("alice") && !value.contains("Bearer"),
                "{key}={value} in {span:?}"
            );
        }
    }

    // The collector goes away: Checks keep their answers, and the lost spans are counted.
    receiver.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        for (token, want) in [("alice", 200), ("bob", 403)] {
            let response = plain
                .get(&url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .expect("request");
            assert_eq!(
                response.status(),
                want,
                "{token} with the collector stopped"
            );
        }
        let text = plain
            .get(format!("{status}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics");
        let dropped = metric(&text, "checkpoint_trace_spans_dropped_total").expect("the metric");
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no span counted as dropped within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    checkpoint.assert_running();
}
