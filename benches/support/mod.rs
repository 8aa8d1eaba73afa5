//! What the benches share: the shape of the rule file they route through.

/// Fifty rules, each with `rule` as its method entry: six top-level paths and, for eight
/// resources, `/api/v1/{resource}` (GET, POST), its `/` prefix (ALL), `/search` (POST) and
/// `/export` (ALL).
pub fn fifty_rules(rule: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut rules = serde_json::Map::new();
    for path in ["/", "/health", "/metrics", "/public", "/login", "/logout"] {
        rules.insert(path.into(), serde_json::json!({ "GET": rule }));
    }
    for resource in [
        "users",
        "orders",
        "products",
        "invoices",
        "carts",
        "payments",
        "shipments",
        "reviews",
    ] {
        rules.insert(
            format!("/api/v1/{resource}"),
            serde_json::json!({ "GET": rule, "POST": rule }),
        );
        rules.insert(
            format!("/api/v1/{resource}/"),
            serde_json::json!({ "ALL": rule }),
        );
        rules.insert(
            format!("/api/v1/{resource}/search"),
            serde_json::json!({ "POST": rule }),
        );
        rules.insert(
            format!("/api/v1/{resource}/export"),
            serde_json::json!({ "ALL": rule }),
        );
    }
    rules
}
