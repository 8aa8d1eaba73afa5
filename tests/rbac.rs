//! RBAC (README.md, "RBAC") against the real server: the table `tests/cases/rbac.json` (callers,
//! roles and bindings, rules, requests -> decisions and the roles header upstream), the loader's
//! errors with their positions through `checkpoint check-config`, README's worked example, and
//! one end-to-end case through real Envoy.
//!
//! The authentication manager is a small user-info server here that answers the table's users
//! (`Authorization: Bearer NAME`); everything else is the real checkpoint, started through
//! `checkpoint::run` (the table) or as the binary (check-config, end to end).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod e2e_support;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;
use support::{Server, answer, request, request_from_peer};

const TABLE: &str = include_str!("cases/rbac.json");
const ROLES_HEADER: &str = "x-checkpoint-roles";

/// The customer's authentication manager for the table: `Bearer NAME` is the user NAME of
/// `users` (its `groups` and `permissions`); anything else is 401.
async fn user_info(users: Value) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let users = users.clone();
        async move {
            let name = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            match users.get(name) {
                Some(user) => axum::Json(serde_json::json!({
                    "sub": name,
                    "groups": user.get("groups").cloned().unwrap_or_else(|| Value::Array(vec![])),
                    "permissions": user.get("permissions").cloned().unwrap_or_else(|| Value::Array(vec![])),
                }))
                .into_response(),
                None => (StatusCode::UNAUTHORIZED, "{}").into_response(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Replaces `${USERINFO}` and `${DIR}` in every string of `value`.
fn substitute(value: &Value, userinfo: &str, dir: &str) -> Value {
    match value {
        Value::String(s) => {
            Value::String(s.replace("${USERINFO}", userinfo).replace("${DIR}", dir))
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute(v, userinfo, dir)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, userinfo, dir)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The native configuration file of one config of the table (JSON, which YAML reads), with its
/// Rönd files written to `dir`.
fn native_config(config: &Value, userinfo: &str, dir: &std::path::Path) -> String {
    let dir_text = dir.display().to_string();
    for (name, content) in config["files"].as_object().into_iter().flatten() {
        std::fs::write(dir.join(name), content.to_string()).expect("write a Rönd file");
    }
    let file = serde_json::json!({
        "version": 1,
        "server": { "shutdown_delay": "0s" },
        "rules": { "inline": config["rules"] },
        "identity": { "sources": config["sources"] },
        "rbac": config["rbac"],
    });
    substitute(&file, userinfo, &dir_text).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_table() {
    let table: Value = serde_json::from_str(TABLE).expect("valid JSON");
    let userinfo = format!(
        "http://{}/userinfo",
        user_info(table["users"].clone()).await
    );
    let files = tempfile::tempdir().expect("dir");
    let mut servers: HashMap<String, Server> = HashMap::new();
    let cases = table["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["config"].as_str().expect("config");
        if !servers.contains_key(name) {
            let config = &table["configs"][name];
            assert!(config.is_object(), "unknown config {name}");
            let yaml = native_config(config, &userinfo, files.path());
            servers.insert(name.to_owned(), Server::start_native(&yaml).await);
        }
        if let Err(e) = check_case(case, &servers[name]).await {
            failures.push(format!("{}: {e}", case["name"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Every config served, and the table is the size it says it is.
    assert_eq!(
        servers.len(),
        table["configs"].as_object().expect("configs").len()
    );
    assert!(cases.len() >= 40, "{} cases", cases.len());
}

async fn check_case(case: &Value, server: &Server) -> Result<(), String> {
    let caller = &case["caller"];
    let mut headers: Vec<(String, String)> = caller["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    if let Some(token) = caller["token"].as_str() {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let method = case["request"]["method"].as_str().ok_or("no method")?;
    let path = case["request"]["path"].as_str().ok_or("no path")?;
    let check = match caller["principal"].as_str() {
        Some(principal) => request_from_peer(method, path, principal, &headers),
        None => request(method, path, &headers),
    };
    let got = answer(&server.check(check).await);
    let expect = &case["expect"];
    let status = expect["status"].as_u64().ok_or("expect.status missing")?;
    if u64::from(got.http_status) != status {
        return Err(format!(
            "status {} instead of {status} ({got:?})",
            got.http_status
        ));
    }
    let set = got.headers.get(ROLES_HEADER).map(String::as_str);
    let removed = got.removed.iter().any(|r| r == ROLES_HEADER);
    match expect.get("roles") {
        None => {}
        Some(Value::Null) if set.is_some() || !removed => {
            return Err(format!("{ROLES_HEADER} must be removed, not set: {got:?}"));
        }
        Some(Value::Null) => {}
        Some(roles) if set != roles.as_str() => {
            return Err(format!(
                "{ROLES_HEADER} is {set:?}, expected {roles} ({got:?})"
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// The loader's errors through `checkpoint check-config` (the binary): every problem of one
/// configuration at once, each with its file, line and column, in the table's order; and a
/// permission no role grants as a warning of a valid configuration.
#[tokio::test]
async fn check_config_lists_every_rbac_problem_with_its_place() {
    let table: Value = serde_json::from_str(TABLE).expect("valid JSON");
    let entries = table["errors"].as_array().expect("errors");
    assert!(entries.len() >= 5);
    let mut failures = Vec::new();
    for entry in entries {
        let dir = tempfile::tempdir().expect("dir");
        let dir_text = dir.path().display().to_string();
        for (name, lines) in entry["files"].as_object().expect("files") {
            let lines: Vec<&str> = lines
                .as_array()
                .expect("a file is a list of lines")
                .iter()
                .map(|l| l.as_str().expect("a line"))
                .collect();
            std::fs::write(dir.path().join(name), lines.join("\n") + "\n").expect("write");
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"))
            .arg("check-config")
            .env_clear()
            .env("CHECKPOINT_CONFIG", dir.path().join("checkpoint.yaml"))
            .envs(
                entry["env"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())),
            )
            .output()
            .await
            .expect("run checkpoint check-config");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = |key: &str| -> Vec<String> {
            entry[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p.as_str().expect("a string").replace("${DIR}", &dir_text))
                .collect()
        };
        let (want_code, got, want) = if entry.get("warnings").is_some() {
            let got: Vec<String> = stdout
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("warning:"))
                .map(|l| l.trim().to_owned())
                .collect();
            (0, got, expected("warnings"))
        } else {
            let got: Vec<String> = stderr
                .lines()
                .filter_map(|l| l.strip_prefix("  - "))
                .map(str::to_owned)
                .collect();
            (1, got, expected("problems"))
        };
        if out.status.code() != Some(want_code) || got != want || want.is_empty() {
            failures.push(format!(
                "{}: exit {:?}, got:\n    {}\nexpected:\n    {}\n{stdout}{stderr}",
                entry["name"],
                out.status.code(),
                got.join("\n    "),
                want.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `n`-th fenced block of README.md's "RBAC" section, without its fences.
fn readme_rbac_block(n: usize) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find("\n## RBAC\n").expect("the RBAC section");
    readme[start..]
        .split("\n```")
        .nth(1 + 2 * n)
        .and_then(|block| block.split_once('\n'))
        .map(|(_, text)| text.to_owned() + "\n")
        .expect("the block")
}

/// README's worked example is the table's `readme` config, and its answers for the three users
/// are exactly the table's (which `rbac_table` checks against the server).
#[test]
fn the_readme_example_is_the_table() {
    let table: Value = serde_json::from_str(TABLE).expect("valid JSON");
    let config = &table["configs"]["readme"];
    let rules: Value = serde_json::from_str(&readme_rbac_block(0)).expect("README's rules");
    assert_eq!(rules, config["rules"]);
    let rbac: Value = serde_yaml_ng::from_str(&readme_rbac_block(1)).expect("README's rbac");
    assert_eq!(rbac["rbac"], config["rbac"]);
    // The answers table: a header of requests, a row per user.
    let readme = include_str!("../README.md");
    let start = readme.find("| caller |").expect("the answers table");
    let rows: Vec<Vec<String>> = readme[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    let requests: Vec<(String, String)> = rows[0][1..]
        .iter()
        .map(|c| {
            let (method, path) = c.split_once(' ').expect("METHOD PATH");
            (method.to_owned(), path.to_owned())
        })
        .collect();
    let cases = table["cases"].as_array().expect("cases");
    let mut checked = 0;
    for row in &rows[2..] {
        let user = &row[0];
        for ((method, path), cell) in requests.iter().zip(&row[1..]) {
            let (status, roles) = match cell.split_once(' ') {
                Some((status, roles)) => (status, Some(roles)),
                None => (cell.as_str(), None),
            };
            let case = cases
                .iter()
                .find(|c| {
                    c["config"] == "readme"
                        && c["caller"]["token"] == user.as_str()
                        && c["caller"]["headers"].is_null()
                        && c["request"]["method"] == method.as_str()
                        && c["request"]["path"] == path.as_str()
                })
                .unwrap_or_else(|| panic!("no case for {user} {method} {path}"));
            assert_eq!(
                case["expect"]["status"].to_string(),
                status,
                "{user} {method} {path}"
            );
            assert_eq!(
                case["expect"]["roles"].as_str(),
                roles,
                "{user} {method} {path}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12, "three users, four requests");
}

/// End to end: a client talks TLS to real Envoy, Envoy asks the checkpoint binary (native file,
/// user-info at the real test IdP), and the echo upstream shows what arrived. alice is an owner
/// on the tenant acme only: allowed there with her effective roles upstream (her own copy of
/// the header overwritten), refused (403) on globex, where nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_allowed_on_one_tenant_and_refused_on_another_through_envoy() {
    let stack = e2e_support::NativeStack::start(|addrs| {
        let issuer = &addrs.issuer;
        let head = addrs.head();
        format!(
            r#"
{head}
rules:
  inline:
    /tenants/{{tenant}}/orders:
      GET:
        authorization: {{ expression: "roles.owner && permissions.orders.read" }}
        rbac: {{ resource: {{ type: tenant, id: "{{tenant}}" }} }}
identity:
  sources:
    - type: userinfo
      url: "{issuer}/me"
rbac:
  roles:
    - {{ id: viewer, permissions: [orders.read] }}
    - {{ id: owner, inherits: [viewer] }}
  bindings:
    - {{ id: alice-acme, subjects: [alice], roles: [owner], resource: {{ type: tenant, id: acme }} }}
  roles_header: x-checkpoint-roles
"#
        )
    })
    .await;
    let token = stack.token("alice").await;
    let get = async |path: &str| {
        let response = stack
            .client
            .get(stack.url(path))
            .header("authorization", format!("Bearer {token}"))
            .header(ROLES_HEADER, "admin")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
        e2e_support::Reply::from(response).await
    };
    let acme = get("/tenants/acme/orders").await;
    assert_eq!(acme.status, 200, "{acme:?}");
    assert!(acme.reached_upstream(), "{acme:?}");
    assert_eq!(
        acme.upstream_header("miauserid"),
        Some("alice"),
        "{}",
        acme.text
    );
    assert_eq!(
        acme.upstream_header(ROLES_HEADER),
        Some("owner,viewer"),
        "{}",
        acme.text
    );
    let globex = get("/tenants/globex/orders").await;
    assert_eq!(globex.status, 403, "{globex:?}");
    assert!(!globex.reached_upstream(), "{globex:?}");
    assert_eq!(globex.json["statusCode"], 403, "{}", globex.text);
}

/// README's Rönd example (the worked example's roles and bindings as Rönd keeps them) gives
/// the answers of the table's `readme` cases, except that Rönd roles inherit nothing: alice's
/// roles on acme are `owner` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rond_example_answers_as_the_worked_example() {
    let table: Value = serde_json::from_str(TABLE).expect("valid JSON");
    let userinfo = format!(
        "http://{}/userinfo",
        user_info(table["users"].clone()).await
    );
    let command = readme_rbac_block(4);
    assert!(command.contains("--out roles.json") && command.contains("--out bindings.json"));
    let files = tempfile::tempdir().expect("dir");
    let roles: Value = serde_json::from_str(&readme_rbac_block(5)).expect("README's roles.json");
    let bindings: Value =
        serde_json::from_str(&readme_rbac_block(6)).expect("README's bindings.json");
    let mut config = table["configs"]["readme"].clone();
    config["rbac"] = serde_json::json!({
        "rond": { "roles": "${DIR}/roles.json", "bindings": "${DIR}/bindings.json" },
        "roles_header": ROLES_HEADER,
    });
    config["files"] = serde_json::json!({ "roles.json": roles, "bindings.json": bindings });
    let server = Server::start_native(&native_config(&config, &userinfo, files.path())).await;
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in table["cases"].as_array().expect("cases") {
        if case["config"] != "readme" {
            continue;
        }
        let mut case = case.clone();
        if case["expect"]["roles"] == "owner,viewer" {
            case["expect"]["roles"] = "owner".into();
        }
        if let Err(e) = check_case(&case, &server).await {
            failures.push(format!("{}: {e}", case["name"]));
        }
        ran += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(ran >= 12, "{ran}");
}

/// The roles header counts in the user headers' 16 KiB budget: a caller whose effective roles
/// would pass it is answered as when the identity provider is unavailable (503), never sent
/// upstream; the same roles without the header configured are no problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_past_the_header_budget_are_an_unavailable_identity() {
    let table: Value = serde_json::from_str(TABLE).expect("valid JSON");
    let userinfo = format!(
        "http://{}/userinfo",
        user_info(table["users"].clone()).await
    );
    let files = tempfile::tempdir().expect("dir");
    let long = |i: usize| format!("{}-{i}", "r".repeat(6000));
    let mut config = serde_json::json!({
        "sources": [{ "type": "userinfo", "url": "${USERINFO}" }],
        "rules": { "/docs": { "GET": { "authorization": { "expression": "permissions.docs.read" } } } },
        "rbac": {
            "roles": [
                { "id": long(1), "permissions": ["docs.read"] },
                { "id": long(2) },
                { "id": long(3) },
            ],
            "bindings": [
                { "id": "many", "subjects": ["alice"], "roles": [long(1), long(2), long(3)] },
                { "id": "one", "subjects": ["bob"], "roles": [long(1)] },
            ],
            "roles_header": ROLES_HEADER,
        },
    });
    let check = async |server: &Server, user: &str| {
        let authorization = format!("Bearer {user}");
        answer(
            &server
                .check(request(
                    "GET",
                    "/docs",
                    &[("authorization", authorization.as_str())],
                ))
                .await,
        )
    };
    let server = Server::start_native(&native_config(&config, &userinfo, files.path())).await;
    let alice = check(&server, "alice").await;
    assert_eq!(alice.http_status, 503, "{alice:?}");
    let bob = check(&server, "bob").await;
    assert_eq!(bob.http_status, 200, "{bob:?}");
    assert_eq!(bob.headers.get(ROLES_HEADER), Some(&long(1)));
    config["rbac"]
        .as_object_mut()
        .expect("rbac")
        .remove("roles_header");
    let server = Server::start_native(&native_config(&config, &userinfo, files.path())).await;
    let alice = check(&server, "alice").await;
    assert_eq!(alice.http_status, 200, "{alice:?}");
    assert!(!alice.headers.contains_key(ROLES_HEADER), "{alice:?}");
}
