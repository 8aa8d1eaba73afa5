//! `checkpoint explain` and `checkpoint test`, run as the binary: the README's examples, a
//! caller resolved for real by the test user-info server, tests that fail, and bad input (exit
//! status 2, with where the problem is).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use serde_json::Value;
use support::userinfo::UserInfoServer;

/// The rule file of README.md, "The rule file (`auth.json`)", as it is written there.
fn readme_rules() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## The rule file (`auth.json`)")
        .expect("the section");
    let block = readme[start..]
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the example");
    block.to_owned()
}

struct Setup {
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

fn setup(rules: &str, userinfo_url: &str) -> Setup {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("auth.json"), rules).expect("rules");
    let vars = vec![
        (
            "CONFIGURATION_PATH".into(),
            dir.path().display().to_string(),
        ),
        ("CONFIGURATION_FILE_NAME".into(), "auth".into()),
        ("USERINFO_URL".into(), userinfo_url.into()),
    ];
    Setup { dir, vars }
}

/// Runs the binary with exactly `vars` as its environment: exit code, stdout, stderr.
async fn checkpoint(args: &[&str], vars: &[(String, String)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args(args)
        .env_clear()
        .envs(vars.iter().cloned())
        .output()
        .await
        .expect("run checkpoint");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Nobody listens there: these tests give the user or need none.
const NOBODY: &str = "http://127.0.0.1:9/userinfo";

#[tokio::test]
async fn explain_a_readme_example_in_words() {
    let s = setup(&readme_rules(), NOBODY);
    let (code, stdout, stderr) = checkpoint(
        &[
            "explain",
            "--method",
            "DELETE",
            "--path",
            "/users/./1?x=y",
            "-H",
            "isbackoffice: true",
            "-H",
            "x-request-id: readme-1",
            "--user",
            r#"{"sub":"bob","groups":["admin"],"email":"bob@example.test"}"#,
        ],
        &s.vars,
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let file = s.dir.path().join("auth.json").display().to_string();
    for want in [
        "path:        /users/1 (normalised)".to_owned(),
        format!("rule:        \"/users\" ALL ({file}:4:15)"),
        "  other:     \"/\" GET: another method".to_owned(),
        "identity:    user from --user".to_owned(),
        "  backoffice: true".to_owned(),
        "policy:      backofficeAuthorization (not public; logged-in caller): allow".to_owned(),
        "  true   groups.admin && isBackoffice".to_owned(),
        "  true     groups.admin".to_owned(),
        "  true     isBackoffice".to_owned(),
        "decision:    allow (allowed), HTTP 200, gRPC code 0".to_owned(),
        "  upstream:  set miauserid: bob".to_owned(),
        "  upstream:  set miauserproperties: {\"email\":\"bob@example.test\"}".to_owned(),
        "  upstream:  remove mia-allowed".to_owned(),
    ] {
        assert!(stdout.contains(&want), "{want:?} not in:\n{stdout}");
    }
}

#[tokio::test]
async fn explain_json_for_tools_and_a_denial() {
    let s = setup(&readme_rules(), NOBODY);
    let (code, stdout, stderr) = checkpoint(
        &[
            "explain",
            "--method",
            "GET",
            "--path",
            "/users",
            "-H",
            "x-request-id: readme-2",
            "--user",
            r#"{"sub":"eve","groups":["ops"]}"#,
            "--json",
        ],
        &s.vars,
    )
    .await;
    assert_eq!(code, 1, "denied: {stdout}{stderr}");
    let json: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["reason"], "expression_false");
    assert_eq!(json["status"], 403);
    assert_eq!(json["route"]["chosen"]["key"], "/users");
    assert_eq!(json["route"]["chosen"]["line"], 4);
    assert_eq!(json["policy"]["block"], "authorization");
    assert_eq!(json["policy"]["steps"][0]["text"], "groups.admin");
    assert_eq!(json["policy"]["steps"][0]["value"], false);
    // The exact CheckResponse, in protobuf's JSON mapping.
    let denied = &json["response"]["deniedResponse"];
    assert_eq!(json["response"]["status"]["code"], 7);
    assert_eq!(denied["status"]["code"], "Forbidden");
    assert_eq!(
        denied["headers"][1]["header"],
        serde_json::json!({"key": "x-checkpoint-decision-id", "value": "readme-2"})
    );
    let body: Value = serde_json::from_str(denied["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(body["statusCode"], 403);
}

/// A CheckRequest as grpcurl sends it (README, "Quick start"), from a file.
#[tokio::test]
async fn explain_a_check_request_as_grpcurl_sends_it() {
    let s = setup(&readme_rules(), NOBODY);
    let file = s.dir.path().join("check.json");
    std::fs::write(
        &file,
        r#"{"attributes":{"request":{"http":{"method":"GET","path":"/users/7/../../public"}}}}"#,
    )
    .expect("write");
    let file = file.display().to_string();
    let (code, stdout, stderr) = checkpoint(&["explain", "--check-request", &file], &s.vars).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for want in [
        "path:        /public (normalised)",
        "rule:        \"/\" GET (",
        "  other:     \"/\" POST: another method",
        // Nobody answers at USERINFO_URL: the public rule lets an anonymous caller through.
        "identity:    unavailable from userinfo",
        "  (identity is unavailable: evaluated for an anonymous caller",
        "decision:    allow (allowed_identity_unavailable), HTTP 200, gRPC code 0",
        "response:    {\"okResponse\":",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
}

/// The caller resolved for real: user-info is called with the request's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_resolves_the_caller_for_real() {
    let userinfo = UserInfoServer::start().await;
    let s = setup(&readme_rules(), &userinfo.url("/userinfo"));
    let (code, stdout, stderr) = checkpoint(
        &[
            "explain",
            "--path",
            "/users/1",
            "-H",
            "authorization: Bearer alice",
        ],
        &s.vars,
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("identity:    user from userinfo (cache miss)"),
        "{stdout}"
    );
    assert!(stdout.contains("  user:      alice"), "{stdout}");
    assert_eq!(userinfo.count(), 1);
    // An unknown token: user-info says 401, the caller is anonymous, the rule needs a login.
    let (code, stdout, _) = checkpoint(
        &[
            "explain",
            "--path",
            "/users",
            "-H",
            "authorization: Bearer who",
        ],
        &s.vars,
    )
    .await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("identity:    anonymous from userinfo"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decision:    deny (login_required), HTTP 401"),
        "{stdout}"
    );
}

#[tokio::test]
async fn test_prints_pass_fail_and_the_explanation_of_each_failure() {
    let s = setup(&readme_rules(), NOBODY);
    let cases = s.dir.path().join("rules.test.yaml");
    std::fs::write(
        &cases,
        r#"cases:
  - name: anyone may read the home page
    request: { method: GET, path: / }
    expect: { status: 200, removed: [miauserid] }
  - name: admins manage users
    request: { method: DELETE, path: /users/1 }
    user: { sub: ann, groups: [admin] }
    expect: { status: 200, set: { miauserid: ann, miausergroups: admin } }
  - name: a wrong expectation
    request: { method: GET, path: /users }
    user: { sub: eve, groups: [ops] }
    expect: { status: 200 }
"#,
    )
    .expect("write");
    let cases = cases.display().to_string();
    let (code, stdout, stderr) = checkpoint(&["test", &cases], &s.vars).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("PASS  {cases}: anyone may read the home page")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("PASS  {cases}: admins manage users")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("FAIL  {cases}: a wrong expectation")),
        "{stdout}"
    );
    assert!(
        stdout.contains("      status 403 (deny, expression_false), expected 200"),
        "{stdout}"
    );
    assert!(stdout.contains("      |   false  groups.admin"), "{stdout}");
    assert!(stdout.ends_with("2 passed, 1 failed\n"), "{stdout}");
}

#[tokio::test]
async fn bad_input_exits_2_and_says_where() {
    let s = setup(&readme_rules(), NOBODY);
    // A malformed case: its line and column.
    let cases = s.dir.path().join("bad.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: x\n    request: { path: / }\n    expect: { status: ok }\n",
    )
    .expect("write");
    let cases = cases.display().to_string();
    let (code, stdout, stderr) = checkpoint(&["test", &cases], &s.vars).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.starts_with(&format!("checkpoint: test: {cases}:4:")),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    // An unknown rule file.
    let mut vars = s.vars.clone();
    vars[1].1 = "nope".into();
    let missing = format!(
        "{}: cannot read the rule file",
        s.dir.path().join("nope.json").display()
    );
    let good = s.dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "cases:\n  - { name: x, request: { path: / }, expect: { status: 200 } }\n",
    )
    .expect("write");
    let good = good.display().to_string();
    for args in [vec!["explain", "--path", "/"], vec!["test", good.as_str()]] {
        let (code, _, stderr) = checkpoint(&args, &vars).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(&missing), "{args:?}: {stderr}");
    }

    // Arguments and requests that are not valid.
    for (args, says) in [
        (
            vec!["explain"],
            "--path (or --check-request FILE) is needed",
        ),
        (
            vec!["explain", "--path", "/", "-H", "novalue"],
            "expected \"name: value\"",
        ),
        (
            vec!["explain", "--path", "/", "--user", "{\"groups\":[]}"],
            "needs an id",
        ),
        (vec!["explain", "--path", "/", "--user", "bob"], "--user:"),
        (
            vec!["explain", "--check-request", "/nonexistent.json"],
            "/nonexistent.json",
        ),
        (vec!["test"], "at least one FILE"),
    ] {
        let (code, _, stderr) = checkpoint(&args, &s.vars).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let bad = s.dir.path().join("bad-check.json");
    std::fs::write(
        &bad,
        "{\"attributes\": {\"request\": {\"http\": {\"methd\": \"GET\"}}}}",
    )
    .expect("write");
    let bad = bad.display().to_string();
    let (code, _, stderr) = checkpoint(&["explain", "--check-request", &bad], &s.vars).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("methd"), "{stderr}");
}

#[tokio::test]
async fn help_lists_the_new_commands() {
    let (code, stdout, _) = checkpoint(&["--help"], &[]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("  explain  "), "{stdout}");
    assert!(stdout.contains("  test  "), "{stdout}");
    for command in ["explain", "test"] {
        let (code, stdout, _) = checkpoint(&[command, "--help"], &[]).await;
        assert_eq!(code, 0, "{command}");
        assert!(stdout.contains("Exit status"), "{command}: {stdout}");
    }
}

/// The text block that follows `heading` in README.md after `skip` other blocks.
fn readme_block(heading: &str, skip: usize) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find(heading).expect("the heading");
    readme[start..]
        .split("\n```")
        .nth(1 + 2 * skip)
        .map(|block| {
            block
                .split_once('\n')
                .map_or("", |(_, text)| text)
                .to_owned()
                + "\n"
        })
        .expect("the block")
}

/// README's "Explain a decision" example prints what README shows, run where README runs it.
#[tokio::test]
async fn the_readme_explain_example_is_what_explain_prints() {
    let s = setup(&readme_rules(), NOBODY);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args([
            "explain",
            "--method",
            "DELETE",
            "--path",
            "/users/42",
            "-H",
            "isbackoffice: 1",
            "-H",
            "x-request-id: doc-3",
            "--user",
            r#"{"sub":"ann","groups":["admin"],"email":"ann@example.test"}"#,
        ])
        .current_dir(s.dir.path())
        .env_clear()
        .envs([
            ("CONFIGURATION_FILE_NAME", "auth"),
            ("USERINFO_URL", NOBODY),
        ])
        .output()
        .await
        .expect("run checkpoint");
    let command = readme_block("### Explain a decision", 0);
    assert!(
        command.contains("--path /users/42 -H 'isbackoffice: 1' -H 'x-request-id: doc-3'"),
        "{command}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        readme_block("### Explain a decision", 1)
    );
    assert_eq!(out.status.code(), Some(0));
}

/// The demo's test file (README, "Test your rules") passes with the Quick start's variables,
/// and prints what README shows.
#[tokio::test]
async fn the_demo_rules_pass_their_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args(["test", "tests/cases/demo-rules.yaml"])
        .current_dir(root)
        .env_clear()
        .envs([
            ("CONFIGURATION_PATH", "./envoy/demo"),
            ("CONFIGURATION_FILE_NAME", "auth"),
            ("USERINFO_URL", NOBODY),
        ])
        .output()
        .await
        .expect("run checkpoint");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout, readme_block("### Test your rules", 1));
}

/// README's `checkpoint explain` example for the worked example prints what README shows, the
/// bindings that granted alice's role named.
#[tokio::test]
async fn the_readme_rbac_explain_example_is_what_explain_prints() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("auth.json"), readme_block("## RBAC", 0)).expect("rules");
    std::fs::write(
        dir.path().join("checkpoint.yaml"),
        format!(
            "version: 1\nrules: {{ file: auth.json }}\nidentity: {{ sources: [ {{ type: userinfo, url: \"http://127.0.0.1:9/userinfo\" }} ] }}\n{}",
            readme_block("## RBAC", 1)
        ),
    )
    .expect("config");
    let command = readme_block("## RBAC", 2);
    let args = [
        "explain",
        "--method",
        "DELETE",
        "--path",
        "/tenants/acme/orders",
        "--user",
        r#"{"sub":"alice"}"#,
    ];
    assert!(
        command.contains(&args[1..6].join(" ")) && command.contains(r#"--user '{"sub":"alice"}'"#),
        "{command}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("CHECKPOINT_CONFIG", "checkpoint.yaml")
        .output()
        .await
        .expect("run checkpoint");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        readme_block("## RBAC", 3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

/// `explain` names the RBAC bindings behind a permission and a role, says which permissions the
/// identity provider granted, and gives the rule's resource for the path (README's example).
#[tokio::test]
async fn explain_names_the_rbac_bindings_that_granted_permissions_and_roles() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("auth.json"), readme_block("## RBAC", 0)).expect("rules");
    let config = dir.path().join("checkpoint.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nrules: {{ file: auth.json }}\nidentity: {{ sources: [ {{ type: userinfo, url: \"{NOBODY}\" }} ] }}\n{}",
            readme_block("## RBAC", 1)
        ),
    )
    .expect("config");
    let vars = vec![("CHECKPOINT_CONFIG".to_owned(), config.display().to_string())];
    let explain = async |method: &str, path: &str, user: &str| {
        let (code, stdout, stderr) = checkpoint(
            &[
                "explain", "--method", method, "--path", path, "--user", user, "--json",
            ],
            &vars,
        )
        .await;
        let json: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
        (code, json)
    };
    // bob reads globex's orders through the global binding of his group.
    let (code, json) = explain(
        "GET",
        "/tenants/globex/orders",
        r#"{"sub":"bob","groups":["staff"]}"#,
    )
    .await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        json["rbac"]["resource"],
        serde_json::json!(["tenant", "globex"])
    );
    assert_eq!(json["rbac"]["bindings"], serde_json::json!(["staff-read"]));
    assert_eq!(json["rbac"]["roles"], serde_json::json!(["viewer"]));
    assert_eq!(
        json["permissions"],
        serde_json::json!([{ "permission": "orders.read", "from": "rbac", "rbac_bindings": ["staff-read"] }])
    );
    // alice deletes on acme: the role comes from her scoped binding (owner, inheriting viewer).
    let (code, json) = explain("DELETE", "/tenants/acme/orders", r#"{"sub":"alice"}"#).await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["rbac"]["bindings"], serde_json::json!(["alice-acme"]));
    assert_eq!(
        json["rbac"]["roles"],
        serde_json::json!(["owner", "viewer"])
    );
    assert_eq!(
        json["roles"],
        serde_json::json!([{ "role": "owner", "rbac_bindings": ["alice-acme"] }])
    );
    let set = &json["answer"]["set"];
    assert!(
        set.as_array()
            .expect("set")
            .contains(&serde_json::json!(["x-checkpoint-roles", "owner,viewer"])),
        "{set}"
    );
    // On globex no binding applies to alice: denied, nothing named.
    let (code, json) = explain("DELETE", "/tenants/globex/orders", r#"{"sub":"alice"}"#).await;
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["rbac"]["bindings"], serde_json::json!([]));
    assert_eq!(json["roles"], serde_json::json!([]));
    // carol's own identity provider grants the permission: no binding to name.
    let (code, json) = explain(
        "GET",
        "/tenants/acme/orders",
        r#"{"sub":"carol","permissions":["orders.read"]}"#,
    )
    .await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        json["permissions"],
        serde_json::json!([{ "permission": "orders.read", "from": "--user", "rbac_bindings": [] }])
    );
}
