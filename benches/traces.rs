//! What tracing adds to a Check: the Check span with tracing off (the default: no endpoint), and
//! with tracing on at 100% sampling (span made with its parent read from the call's metadata,
//! the outcome recorded, entered and left once as a Check's future is, ended and queued for
//! export).
//!
//! Run: `cargo bench --bench traces`. The exporter sends to a closed loopback port, so its
//! batches fail and are dropped on the export thread: the Check's side is what is measured.
#![allow(clippy::panic)] // Benchmarks: a broken fixture should stop the run loudly.

use std::hint::black_box;
use std::time::Duration;

use checkpoint::config::telemetry::TraceSettings;
use checkpoint::telemetry::traces;
use checkpoint::testing as envoy;
use checkpoint::testing::{Decision, MethodKey, Outcome, Reason};
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message;
use tracing_subscriber::layer::SubscriberExt as _;

const ID: &str = "6f1c2b1e-3d0a-4c8e-9a51-0c3f6a7b8d90";

fn bench_traces(c: &mut Criterion) {
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/v1/users/42".into(),
                    headers: [
                        ("authorization".to_owned(), "Bearer token".to_owned()),
                        ("x-request-id".to_owned(), ID.to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let request = envoy::decode(&check.encode_to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "traceparent",
        tonic::metadata::MetadataValue::from_static(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    );
    let outcome = Outcome {
        decision: Decision::Allow,
        reason: Reason::Allowed,
        rule: Some(("/api/v1/users/", MethodKey::All)),
        user: None,
        identity_source: "userinfo",
        failure: None,
        identity_cache: None,
        identity_latency: None,
        rbac: None,
        location: None,
    };
    // What a Check does with its span (envoy::CheckCall).
    let one_check = |metadata: &tonic::metadata::MetadataMap| {
        let span = traces::check_span(black_box(metadata), black_box(&request));
        if !span.is_none() {
            traces::record_outcome(&span, &outcome, ID);
            let _entered = span.enter();
        }
        span
    };

    let mut group = c.benchmark_group("trace");
    assert!(!traces::enabled());
    group.bench_function("check_span_off", |b| b.iter(|| one_check(&metadata)));

    let settings = TraceSettings {
        endpoint: Some("http://127.0.0.1:1".to_owned()),
        ..TraceSettings::default()
    };
    let (layer, exporter) = traces::layer(&settings)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("tracing is configured"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("check_span_on_with_parent", |b| {
            b.iter(|| one_check(&metadata))
        });
        let empty = tonic::metadata::MetadataMap::new();
        group.bench_function("check_span_on_new_trace", |b| b.iter(|| one_check(&empty)));
    });
    group.finish();
    exporter.shutdown();
    println!("spans dropped on export: {}", traces::dropped_spans());
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = trace;
    config = config();
    targets = bench_traces
}
criterion_main!(trace);
