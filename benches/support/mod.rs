//! What the benches share: the shape of the rule file they route through.

/// The entries of the fifty-rule shape, as (path, method) with the method `GET`, `POST` or
/// `ALL`: six top-level paths (GET) and, for eight resources, `/api/v1/{resource}` (GET, POST),
/// its `/` prefix (ALL), `/search` (POST) and `/export` (ALL).
pub fn fifty_rule_entries() -> Vec<(String, &'static str)> {
    let mut entries: Vec<(String, &'static str)> =
        ["/", "/health", "/metrics", "/public", "/login", "/logout"]
            .into_iter()
            .map(|path| (path.to_owned(), "GET"))
            .collect();
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
        entries.push((format!("/api/v1/{resource}"), "GET"));
        entries.push((format!("/api/v1/{resource}"), "POST"));
        entries.push((format!("/api/v1/{resource}/"), "ALL"));
        entries.push((format!("/api/v1/{resource}/search"), "POST"));
        entries.push((format!("/api/v1/{resource}/export"), "ALL"));
    }
    entries
}

/// The rule file of [`fifty_rule_entries`], each entry with `rule` as its method entry.
pub fn fifty_rules(rule: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut rules = serde_json::Map::new();
    for (path, method) in fifty_rule_entries() {
        let methods = rules
            .entry(path)
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let serde_json::Value::Object(methods) = methods {
            methods.insert(method.to_owned(), rule.clone());
        }
    }
    rules
}
