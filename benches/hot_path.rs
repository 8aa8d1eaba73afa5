//! Micro-benchmarks of the per-Check hot path, one group per pipeline stage: route matching,
//! expression evaluation, request normalisation, response building and encoding, the decision
//! log line, the per-Check metrics and decision id, and the identity cache's key.
//!
//! Run: `cargo bench --bench hot_path` (about a minute; each bench measures for 2 s). The load
//! benchmark of the whole server is `scripts/bench-load.sh`.
#![allow(clippy::panic)] // Benchmarks: a broken fixture should stop the run loudly.

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use checkpoint::config::UserHeaders;
use checkpoint::telemetry::{self, DecisionId, Metrics};
use checkpoint::testing as envoy;
use checkpoint::testing::Responder;
use checkpoint::testing::identity::User;
use checkpoint::testing::path;
use checkpoint::testing::{Decision, Denial, Outcome, Reason};
use checkpoint::testing::{Expression, Facts};
use checkpoint::testing::{Method, MethodKey, RouteTable};
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message;

/// About fifty rules shaped like a real API gateway's rule file: the benches' shared shape (a few
/// top-level keys, resource collections with per-method rules) and deeper keys under some of them.
fn route_table() -> RouteTable<usize> {
    let mut table = RouteTable::new();
    let mut n = 0;
    let mut add = |path: &str, method: MethodKey| {
        let key = path::normalize(path).unwrap_or_else(|e| panic!("rule key {path}: {e}"));
        table
            .insert(&key, method, n)
            .unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    };
    for (path, method) in support::fifty_rule_entries() {
        let method = match method {
            "GET" => MethodKey::Exact(Method::Get),
            "POST" => MethodKey::Exact(Method::Post),
            _ => MethodKey::All,
        };
        add(&path, method);
    }
    for path in [
        "/api/v1/users/me/settings",
        "/api/v1/orders/archive/2024",
        "/admin",
        "/admin/audit",
    ] {
        add(path, MethodKey::All);
    }
    table
}

fn bench_route(c: &mut Criterion) {
    let table = route_table();
    assert!(table.len() >= 45, "only {} rules", table.len());
    let mut group = c.benchmark_group("route");
    let cases = [
        ("exact_shallow", "/health", Method::Get),
        ("exact_collection", "/api/v1/orders", Method::Post),
        (
            "prefix_deep",
            "/api/v1/orders/1234/items/7/history",
            Method::Get,
        ),
        ("exact_deep", "/api/v1/users/me/settings", Method::Put),
        ("miss", "/nothing/here/at/all", Method::Get),
    ];
    for (name, path, method) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                table
                    .find(black_box(path), black_box(Some(method)))
                    .is_some()
            })
        });
    }
    group.finish();
}

fn bench_expression(c: &mut Criterion) {
    let source = r#"groups.admin && (permissions.api.users.get || clientType == "mobile")"#;
    let expression = Expression::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
    let groups = ["users".to_owned(), "devops".to_owned(), "admin".to_owned()];
    let permissions = [
        "api.orders.get".to_owned(),
        "api.orders.list".to_owned(),
        "api.users.get".to_owned(),
    ];
    let allowed = Facts {
        groups: &groups,
        permissions: &permissions,
        roles: &[],
        client_type: "web",
        is_backoffice: false,
    };
    let refused = Facts {
        groups: &groups[..2],
        ..allowed
    };
    assert!(expression.evaluate(&allowed));
    assert!(!expression.evaluate(&refused));
    let mut group = c.benchmark_group("expression");
    group.bench_function("three_clauses_true", |b| {
        b.iter(|| expression.evaluate(black_box(&allowed)))
    });
    group.bench_function("three_clauses_false", |b| {
        b.iter(|| expression.evaluate(black_box(&refused)))
    });
    group.bench_function("compile", |b| {
        b.iter(|| Expression::compile(black_box(source)).is_ok())
    });
    group.finish();
}

/// Fifteen headers as Envoy forwards them for a browser request, pseudo-headers included.
const HEADERS: [(&str, &str); 15] = [
    (":authority", "api.example.com"),
    (":method", "GET"),
    (":path", "/api/v1/users/42/profile?view=full"),
    (":scheme", "https"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-GB,en;q=0.9"),
    (
        "authorization",
        "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz",
    ),
    ("client-type", "web"),
    ("cookie", "sid=0123456789abcdef; theme=dark"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
    ("x-forwarded-for", "10.0.0.7"),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "6f1c2b1e-3d0a-4c8e-9a51-0c3f6a7b8d90"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
];

fn check_request(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn bench_request(c: &mut Criterion) {
    let map_form = check_request(HttpRequest {
        id: "6f1c2b1e-3d0a-4c8e-9a51-0c3f6a7b8d90".into(),
        method: "GET".into(),
        path: "/api/v1/users/42/profile?view=full".into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        protocol: "HTTP/2".into(),
        headers: HEADERS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    });
    // The proxyless-gRPC shape (gRFC A92): pairs only, raw bytes, no method/path/host fields.
    let pair_form = check_request(HttpRequest {
        header_map: Some(HeaderMap {
            headers: HEADERS
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    });
    let map_bytes = map_form.encode_to_vec();
    let pair_bytes = pair_form.encode_to_vec();
    for bytes in [&map_bytes, &pair_bytes] {
        let request = envoy::decode(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.method, Some(Method::Get));
        assert_eq!(request.path.as_deref(), Ok("/api/v1/users/42/profile"));
    }
    let mut group = c.benchmark_group("request");
    // What the codec does: the bytes on the wire straight into the view (`envoy::decode`), in
    // both header forms; against the generated decoding alone, for scale.
    group.bench_function("decode_and_view_wire_map_form", |b| {
        b.iter(|| envoy::decode(black_box(map_bytes.as_slice())).unwrap_or_else(|e| panic!("{e}")))
    });
    group.bench_function("decode_and_view_wire_header_map_form", |b| {
        b.iter(|| envoy::decode(black_box(pair_bytes.as_slice())).unwrap_or_else(|e| panic!("{e}")))
    });
    group.bench_function("decode_generated_only", |b| {
        b.iter(|| {
            CheckRequest::decode(black_box(map_bytes.as_slice())).unwrap_or_else(|e| panic!("{e}"))
        })
    });
    group.bench_function("normalize_clean", |b| {
        b.iter(|| path::normalize(black_box("/api/v1/users/42/profile?view=full")))
    });
    group.bench_function("normalize_dots_and_escapes", |b| {
        b.iter(|| {
            path::normalize(black_box(
                "/api/v1//users/41/../42/./pro%66ile%3a?view=full",
            ))
        })
    });
    group.finish();
}

fn bench_response(c: &mut Criterion) {
    let headers = UserHeaders {
        user_id: "miauserid".into(),
        groups: "miausergroups".into(),
        properties: "miauserproperties".into(),
    };
    let responder = Responder::new(true, &headers);
    let user = User::new(
        "alice".into(),
        vec!["admin".into(), "users".into()],
        vec!["api.users.get".into()],
        r#"{"email":"alice@example.com"}"#.into(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let allow = Outcome {
        decision: Decision::Allow,
        reason: Reason::Allowed,
        rule: Some(("/api/v1/users/", MethodKey::All)),
        user: Some(Arc::new(user)),
        identity_source: "userinfo",
        failure: None,
        identity_cache: None,
        identity_latency: None,
        rbac: None,
        location: None,
    };
    let deny = Outcome {
        decision: Decision::Deny(Denial::Forbidden),
        reason: Reason::ExpressionFalse,
        rule: Some(("/api/v1/users/", MethodKey::All)),
        user: None,
        identity_source: "userinfo",
        failure: None,
        identity_cache: None,
        identity_latency: None,
        rbac: None,
        location: None,
    };
    let mut group = c.benchmark_group("response");
    // The plain answer (pure), then the answer encoded as the codec writes it.
    group.bench_function("allow_with_user", |b| {
        b.iter(|| responder.answer(black_box(&allow), ID).verdict)
    });
    group.bench_function("deny_forbidden", |b| {
        b.iter(|| responder.answer(black_box(&deny), ID).verdict)
    });
    group.bench_function("allow_with_user_encoded", |b| {
        b.iter(|| {
            envoy::encode(&responder.answer(black_box(&allow), ID))
                .0
                .len()
        })
    });
    group.finish();
}

/// A request's x-request-id, as Envoy generates them.
const ID: &str = "6f1c2b1e-3d0a-4c8e-9a51-0c3f6a7b8d90";

fn bench_decision_line(c: &mut Criterion) {
    let line = telemetry::Decision {
        request_id: ID,
        decision_id: ID,
        rule: "/api/users",
        method: "GET",
        request_method: None,
        path: None,
        decision: "allow",
        reason: "allowed",
        identity_source: "userinfo",
        identity_cache: Some("hit"),
        identity_latency_us: None,
        identity_failure: None,
        detail: None,
        user_id: Some("alice"),
        latency_us: 42,
        shadow_decision: None,
        shadow_reason: None,
    };
    let mut buffer = Vec::with_capacity(512);
    let mut group = c.benchmark_group("log");
    group.bench_function("decision_line", |b| {
        b.iter(|| {
            buffer.clear();
            telemetry::write_decision(&mut buffer, SystemTime::now(), black_box(&line));
            buffer.len()
        })
    });
    group.finish();
}

/// What the boundary adds to every Check for observability: the metrics update (a cache hit:
/// the Check's counter and histogram; a user-info call: also the source's counter and call
/// histogram), and the decision id (the request's x-request-id, or a random one).
fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::new([("jwt", false), ("userinfo", true)])
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    let outcome = |latency: Option<Duration>| Outcome {
        decision: Decision::Allow,
        reason: Reason::Allowed,
        rule: Some(("/api/v1/users/", MethodKey::All)),
        user: None,
        identity_source: "userinfo",
        failure: None,
        identity_cache: None,
        identity_latency: latency,
        rbac: None,
        location: None,
    };
    let hit = outcome(None);
    let call = outcome(Some(Duration::from_millis(3)));
    let took = Duration::from_micros(35);
    let mut group = c.benchmark_group("metrics");
    group.bench_function("record_check_cache_hit", |b| {
        b.iter(|| metrics.record_check(black_box(&hit), black_box(took)))
    });
    group.bench_function("record_check_userinfo_call", |b| {
        b.iter(|| metrics.record_check(black_box(&call), black_box(took)))
    });
    group.bench_function("decision_id_from_request", |b| {
        b.iter(|| DecisionId::for_request(black_box(Some(ID))).as_str().len())
    });
    group.bench_function("decision_id_random", |b| {
        b.iter(|| DecisionId::for_request(black_box(None)).as_str().len())
    });
    group.finish();
}

/// The rule file of the `check` group: the same shape as [`route_table`], each rule a
/// three-clause expression.
fn rules_json(expression: &str) -> String {
    let rule =
        serde_json::json!({ "authorization": { "expression": expression, "public": false } });
    let rules = support::fifty_rules(&rule);
    serde_json::Value::Object(rules).to_string()
}

/// A warm Check's decision as the Check service makes it, from the request bytes to the encoded
/// answer and the metrics: the configuration loaded from its `ArcSwap` (what reloading costs a
/// Check), the route, the identity (trusted headers: no I/O, as a cache hit), the expression,
/// the answer. Without shadow rules, and with shadow rules (the same fifty rules, tightened) that
/// disagree on every Check (the worst case: the disagreement is counted too).
fn bench_check(c: &mut Criterion) {
    use checkpoint::testing::Live;
    let dir = std::env::temp_dir().join(format!("checkpoint-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("auth.json"),
        rules_json(r#"groups.admin && (permissions.api.users.get || clientType == "web")"#),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("shadow.json"),
        rules_json(r#"groups.admin && (permissions.api.users.get || clientType == "mobile")"#),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let env: HashMap<String, String> = [
        ("CONFIGURATION_PATH", dir.display().to_string()),
        ("CONFIGURATION_FILE_NAME", "auth".to_owned()),
        ("SHADOW_CONFIGURATION_FILE_NAME", "shadow".to_owned()),
        ("TRUST_MIA_USER_HEADERS", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let _guard = runtime.enter();
    let config = checkpoint::Config::load(&env).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let app = checkpoint::App::new(config, &env).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let _ = std::fs::remove_dir_all(&dir);
    let metrics =
        Metrics::new(app.checker.identity.user_sources()).unwrap_or_else(|e| panic!("{e}"));
    let responder = Arc::new(Responder::new(true, &app.settings.user_headers));
    let shadow = app.shadow.map(Arc::new);
    let checker = Arc::new(app.checker);
    let live = |shadow: Option<Arc<checkpoint::testing::RuleSet>>| {
        arc_swap::ArcSwap::from_pointee(Live {
            checker: checker.clone(),
            responder: responder.clone(),
            shadow,
        })
    };
    let plain = live(None);
    let shadowed = live(shadow);
    let mut headers: HashMap<String, String> = HEADERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    headers.insert("miauserid".into(), "alice".into());
    headers.insert("miausergroups".into(), "admin,users".into());
    headers.insert("client-type".into(), "web".into());
    let bytes = check_request(HttpRequest {
        id: ID.into(),
        method: "GET".into(),
        path: "/api/v1/users/42/profile?view=full".into(),
        host: "api.example.com".into(),
        headers,
        ..Default::default()
    })
    .encode_to_vec();
    // The Check service's own steps; its future completes at once (no I/O), polled once.
    let decide = |live: &arc_swap::ArcSwap<Live>| {
        let view = envoy::decode(black_box(bytes.as_slice())).unwrap_or_else(|e| panic!("{e}"));
        let live = live.load();
        let future = live
            .checker
            .check_shadowed(&view, None, live.shadow.as_deref());
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready((outcome, shadow)) = future.as_mut().poll(&mut context) else {
            panic!("a trusted-headers Check does not wait");
        };
        let encoded = envoy::encode(&live.responder.answer(&outcome, ID));
        metrics.record_check(&outcome, Duration::from_micros(20));
        if let Some(reason) = shadow
            && reason.allows() != outcome.reason.allows()
        {
            metrics.record_shadow_disagreement(outcome.reason.allows());
        }
        (outcome.reason, shadow, encoded.0.len())
    };
    assert_eq!(decide(&plain).0, Reason::Allowed);
    assert_eq!(decide(&plain).1, None);
    assert_eq!(decide(&shadowed).1, Some(Reason::ExpressionFalse));
    let mut group = c.benchmark_group("check");
    group.bench_function("config_load", |b| {
        b.iter(|| black_box(plain.load()).shadow.is_some())
    });
    group.bench_function("decide_warm", |b| b.iter(|| decide(&plain)));
    group.bench_function("decide_warm_shadow", |b| b.iter(|| decide(&shadowed)));
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// The identity cache's key of a Check carrying a bearer JWT, as the user-info source writes it:
/// the URL, then each proxied header's name and value (an RS256 token of some 600 bytes). Every
/// Check with a credential pays this, hit or miss.
fn bench_cache_key(c: &mut Criterion) {
    use checkpoint::config::CacheSettings;
    use checkpoint::testing::identity::IdentityCache;
    let cache = IdentityCache::new(CacheSettings {
        ttl: Duration::from_secs(30),
        negative_ttl: Duration::from_secs(5),
        max_entries: 1000,
        stale_if_error: Duration::ZERO,
    })
    .unwrap_or_else(|| panic!("a cache with a TTL"));
    // A header, a payload and a 2048-bit RSA signature, base64url: the size of the load bench's token.
    let token = format!(
        "Bearer {}.{}.{}",
        "e".repeat(36),
        "p".repeat(150),
        "s".repeat(342)
    );
    let fields: [(&str, &str); 3] = [
        ("authorization", token.as_str()),
        ("cookie", ""),
        ("client-type", "web"),
    ];
    let mut group = c.benchmark_group("identity");
    group.bench_function("cache_key_bearer_jwt", |b| {
        b.iter(|| {
            let mut key = cache.key_hasher();
            key.field(black_box(b"http://127.0.0.1:3000/userinfo"));
            for (name, value) in black_box(&fields) {
                key.field(name.as_bytes());
                key.field(value.as_bytes());
            }
            IdentityCache::key(&key)
        })
    });
    group.finish();
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = bench_route, bench_expression, bench_request, bench_response, bench_decision_line,
        bench_metrics, bench_check, bench_cache_key
}
criterion_main!(hot_path);
