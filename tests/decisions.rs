//! The response table (README.md, "Responses"; docs/mia-compatibility.md), row by row, against the real server: each case in
//! `tests/cases/decisions.json` is one Check sent over gRPC to checkpoint, which asks the test
//! user-info server who the caller is.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::userinfo::UserInfoServer;
use support::{Server, answer, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_table() {
    let table: Value =
        serde_json::from_str(include_str!("cases/decisions.json")).expect("valid JSON");
    let userinfo = UserInfoServer::start().await;
    let base = format!("http://{}", userinfo.addr.expect("addr"));
    let rules = table["rules"].to_string();
    let mut servers: HashMap<String, Server> = HashMap::new();
    let mut failures = Vec::new();
    let cases = table["cases"].as_array().expect("cases");
    for case in cases {
        if let Err(e) = check_case(case, &table, &rules, &base, &userinfo, &mut servers).await {
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
}

async fn check_case(
    case: &Value,
    table: &Value,
    rules: &str,
    userinfo_base: &str,
    userinfo: &UserInfoServer,
    servers: &mut HashMap<String, Server>,
) -> Result<(), String> {
    let variant = case["settings"].as_str().ok_or("no settings")?;
    if !servers.contains_key(variant) {
        let vars: Vec<(String, String)> = table["settings"][variant]
            .as_object()
            .ok_or_else(|| format!("unknown settings {variant}"))?
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .unwrap_or_default()
                        .replace("${USERINFO}", userinfo_base),
                )
            })
            .collect();
        let borrowed: Vec<(&str, &str)> =
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        servers.insert(variant.to_owned(), Server::start(rules, &borrowed).await);
    }
    let server = &servers[variant];
    let req = &case["request"];
    let headers: Vec<(String, String)> = req["headers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let calls_before = userinfo.count();
    let response = server
        .check(request(
            req["method"].as_str().unwrap_or_default(),
            req["path"].as_str().unwrap_or_default(),
            &headers,
        ))
        .await;
    let got = answer(&response);
    let expect = &case["expect"];
    let status = expect["status"].as_u64().ok_or("expect.status missing")?;
    if u64::from(got.http_status) != status {
        return Err(format!(
            "status {} instead of {status} ({got:?})",
            got.http_status
        ));
    }
    if let Some(grpc) = expect["grpc"].as_i64()
        && i64::from(got.grpc_code) != grpc
    {
        return Err(format!("gRPC code {} instead of {grpc}", got.grpc_code));
    }
    if let Some(set) = expect["set"].as_object() {
        for (name, value) in set {
            if got.headers.get(name).map(String::as_str) != value.as_str() {
                return Err(format!(
                    "header {name} is {:?}, expected {value}",
                    got.headers.get(name)
                ));
            }
        }
        // An empty "set" on an allow means: no identity header at all.
        if set.is_empty() && got.http_status == 200 {
            for name in ["miauserid", "miausergroups", "miauserproperties"] {
                if got.headers.contains_key(name) {
                    return Err(format!("{name} set for an anonymous caller"));
                }
            }
        }
    }
    for name in expect["removed"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if !got.removed.iter().any(|r| r == name) {
            return Err(format!("{name} not in headers_to_remove {:?}", got.removed));
        }
    }
    if let Some(body) = expect.get("body") {
        let parsed: Value = serde_json::from_str(&got.body)
            .map_err(|e| format!("body {:?} is not JSON: {e}", got.body))?;
        if &parsed != body {
            return Err(format!("body {parsed} instead of {body}"));
        }
    }
    if let Some(path) = expect["userinfo_path"].as_str() {
        let calls = userinfo.calls();
        let last = calls
            .get(calls_before..)
            .and_then(|c| c.last())
            .ok_or("user-info was not called")?;
        if last.path != path {
            return Err(format!(
                "user-info called at {} instead of {path}",
                last.path
            ));
        }
    }
    Ok(())
}

/// The same table through `checkpoint test` (the binary, the real user-info calls): each
/// settings variant's cases, with their `request` and `expect` as they are, are a test file.
/// What the server answers and what `explain` says it answers cannot drift apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_table_through_checkpoint_test() {
    let table: Value =
        serde_json::from_str(include_str!("cases/decisions.json")).expect("valid JSON");
    let userinfo = UserInfoServer::start().await;
    let base = format!("http://{}", userinfo.addr.expect("addr"));
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("auth.json"), table["rules"].to_string()).expect("rules");
    let cases = table["cases"].as_array().expect("cases");
    let mut ran = 0;
    for (variant, settings) in table["settings"].as_object().expect("settings") {
        let of_variant: Vec<Value> = cases
            .iter()
            .filter(|case| case["settings"] == variant.as_str())
            .map(|case| {
                let mut case = case.clone();
                let object = case.as_object_mut().expect("a case is an object");
                object.remove("settings");
                // Which user-info URL was called is the server test's business.
                if let Some(expect) = object.get_mut("expect").and_then(Value::as_object_mut) {
                    expect.remove("userinfo_path");
                }
                case
            })
            .collect();
        if of_variant.is_empty() {
            continue;
        }
        ran += of_variant.len();
        let file = dir.path().join(format!("{variant}.yaml"));
        // JSON is YAML.
        std::fs::write(
            &file,
            serde_json::json!({ "cases": of_variant }).to_string(),
        )
        .expect("test file");
        let mut vars: Vec<(String, String)> = settings
            .as_object()
            .expect("variables")
            .iter()
            .map(|(k, v)| {
                let value = v.as_str().unwrap_or_default().replace("${USERINFO}", &base);
                (k.clone(), value)
            })
            .collect();
        vars.push((
            "CONFIGURATION_PATH".into(),
            dir.path().display().to_string(),
        ));
        vars.push(("CONFIGURATION_FILE_NAME".into(), "auth".into()));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"))
            .arg("test")
            .arg(&file)
            .env_clear()
            .envs(vars)
            .output()
            .await
            .expect("run checkpoint test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{variant}:\n{stdout}{stderr}");
        let summary = format!("{} passed, 0 failed", of_variant.len());
        assert!(stdout.contains(&summary), "{variant}: {stdout}");
    }
    assert_eq!(ran, cases.len(), "every case belongs to a settings variant");
}
