//! What RBAC costs a warm Check (issue 13's target: at most 10% more than a plain groups
//! expression). The same request and the same user, answered by the user-info source from the
//! identity cache (a local user-info server answers the first, cold Check), decided as the
//! Check service decides (decode, configuration load, `Checker::check`, answer, encode,
//! metrics) under three configurations with the same fifty other rules:
//!
//! - `groups`: `/tenants/acme/orders` GET, `groups.staff`, no RBAC;
//! - `rbac`: `/tenants/{tenant}/orders` GET, `permissions.orders.read`, the resource the tenant,
//!   twenty roles and fifty bindings, the permission granted by a binding of the user's group
//!   on that tenant;
//! - `rbac_roles_header`: `rbac` with the roles header sent upstream.
//!
//! Run: `cargo bench --bench rbac` (criterion). For instruction counts, the binary runs a given
//! number of Checks of one configuration without criterion when `RBAC_BENCH_CHECKS=NAME:COUNT`
//! is set, under callgrind (README, "Performance"; bench/RESULTS.md).
#![allow(clippy::panic)] // Benchmarks: a broken fixture should stop the run loudly.

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use checkpoint::telemetry::Metrics;
use checkpoint::testing::{Live, Reason, Responder, decode, encode};
use criterion::Criterion;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message;

const ID: &str = "6f1c2b1e-3d0a-4c8e-9a51-0c3f6a7b8d90";

/// The fifty rules every configuration shares (the shape of `hot_path`'s rule file).
fn other_rules() -> serde_json::Map<String, serde_json::Value> {
    support::fifty_rules(&serde_json::json!({ "authorization": { "expression": "groups.admin" } }))
}

/// Twenty roles (chains of inherits four deep) and fifty bindings, one of which (group
/// `staff` on the tenant `acme`) grants `orders.read`.
fn rbac_section() -> serde_json::Value {
    let mut roles = Vec::new();
    for i in 0..20 {
        let mut role = serde_json::json!({
            "id": format!("role-{i}"),
            "permissions": [format!("area{i}.read"), format!("area{i}.write")],
        });
        if i % 4 != 0 {
            role["inherits"] = serde_json::json!([format!("role-{}", i - 1)]);
        }
        roles.push(role);
    }
    roles.push(serde_json::json!({ "id": "viewer", "permissions": ["orders.read"] }));
    let mut bindings = Vec::new();
    for i in 0..49 {
        bindings.push(serde_json::json!({
            "id": format!("binding-{i}"),
            "subjects": [format!("user-{i}")],
            "groups": [format!("team-{i}")],
            "roles": [format!("role-{}", i % 20)],
            "resource": { "type": "tenant", "id": format!("tenant-{i}") },
        }));
    }
    bindings.push(serde_json::json!({
        "id": "staff-acme", "groups": ["staff"], "roles": ["viewer"],
        "resource": { "type": "tenant", "id": "acme" },
    }));
    serde_json::json!({ "roles": roles, "bindings": bindings })
}

/// One configuration, ready to decide: its live configuration and the encoded request.
struct Setup {
    live: Live,
    metrics: Metrics,
    bytes: Vec<u8>,
}

fn setup(name: &str, userinfo: &str, runtime: &tokio::runtime::Runtime) -> Setup {
    let mut rules = other_rules();
    let mut config = serde_json::json!({
        "version": 1,
        "identity": {
            "cache": { "ttl": "3600s" },
            "sources": [{ "type": "userinfo", "url": userinfo }],
        },
    });
    match name {
        "groups" => {
            rules.insert(
                "/tenants/acme/orders".into(),
                serde_json::json!({ "GET": { "authorization": { "expression": "groups.staff" } } }),
            );
        }
        "rbac" | "rbac_roles_header" => {
            rules.insert(
                "/tenants/{tenant}/orders".into(),
                serde_json::json!({ "GET": {
                    "authorization": { "expression": "permissions.orders.read" },
                    "rbac": { "resource": { "type": "tenant", "id": "{tenant}" } },
                } }),
            );
            let mut rbac = rbac_section();
            if name == "rbac_roles_header" {
                rbac["roles_header"] = "x-checkpoint-roles".into();
            }
            config["rbac"] = rbac;
        }
        other => panic!("unknown configuration {other}"),
    }
    config["rules"] = serde_json::json!({ "inline": rules });
    let dir = std::env::temp_dir().join(format!("checkpoint-rbac-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let env: HashMap<String, String> =
        [("CHECKPOINT_CONFIG".to_owned(), file.display().to_string())]
            .into_iter()
            .collect();
    let _guard = runtime.enter();
    let loaded = checkpoint::Config::load(&env).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let app = checkpoint::App::new(loaded, &env).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let _ = std::fs::remove_dir_all(&dir);
    let metrics =
        Metrics::new(app.checker.identity.user_sources()).unwrap_or_else(|e| panic!("{e}"));
    let roles_header = app
        .settings
        .rbac
        .as_ref()
        .and_then(|r| r.roles_header.clone());
    let responder =
        Responder::new(true, &app.settings.user_headers).with_roles_header(roles_header.as_deref());
    let live = Live {
        checker: Arc::new(app.checker),
        responder: Arc::new(responder),
        shadow: None,
    };
    let headers: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/tenants/acme/orders/42?view=full"),
        ("accept", "application/json"),
        ("authorization", "Bearer bench-token-of-bob"),
        ("cookie", "sid=0123456789abcdef; theme=dark"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
        ("x-forwarded-for", "10.0.0.7"),
        ("x-request-id", ID),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let bytes = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: ID.into(),
                    method: "GET".into(),
                    path: "/tenants/acme/orders/42?view=full".into(),
                    host: "api.example.com".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    Setup {
        live,
        metrics,
        bytes,
    }
}

/// One Check as the Check service makes it, from the request bytes to the encoded answer and
/// the metrics.
async fn decide(setup: &Setup) -> (Reason, usize) {
    let view = decode(black_box(setup.bytes.as_slice())).unwrap_or_else(|e| panic!("{e}"));
    let live = &setup.live;
    let outcome = live.checker.check(&view, None).await;
    let encoded = encode(&live.responder.answer(&outcome, ID));
    setup
        .metrics
        .record_check(&outcome, Duration::from_micros(20));
    (outcome.reason, encoded.0.len())
}

/// The user-info server standing in for the authentication manager: bob, in group `staff`.
fn start_userinfo(runtime: &tokio::runtime::Runtime) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = axum::Router::new().fallback(|| async {
        axum::Json(serde_json::json!({ "sub": "bob", "groups": ["staff", "users"] }))
    });
    runtime.spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/userinfo")
}

const NAMES: [&str; 3] = ["groups", "rbac", "rbac_roles_header"];

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let userinfo = start_userinfo(&runtime);
    // Instruction counts: COUNT warm Checks of one configuration, nothing else.
    if let Ok(spec) = std::env::var("RBAC_BENCH_CHECKS") {
        let (name, count) = spec
            .split_once(':')
            .unwrap_or_else(|| panic!("RBAC_BENCH_CHECKS=NAME:COUNT, not {spec}"));
        let count: usize = count.parse().unwrap_or_else(|e| panic!("{count}: {e}"));
        let setup = setup(name, &userinfo, &runtime);
        // The cold Check: user-info is called once, then the cache answers.
        assert_eq!(runtime.block_on(decide(&setup)).0, Reason::Allowed);
        for _ in 0..count {
            black_box(runtime.block_on(decide(&setup)));
        }
        return;
    }
    let setups: Vec<(&str, Setup)> = NAMES
        .iter()
        .map(|name| (*name, setup(name, &userinfo, &runtime)))
        .collect();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("rbac");
    for (name, setup) in &setups {
        let (reason, _) = runtime.block_on(decide(setup));
        assert_eq!(reason, Reason::Allowed, "{name}");
        group.bench_function(format!("check_warm_{name}"), |b| {
            b.iter(|| runtime.block_on(decide(setup)))
        });
    }
    group.finish();
    criterion.final_summary();
}
