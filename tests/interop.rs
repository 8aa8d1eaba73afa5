//! Interop with gRPC clients that are not tonic, against the real binary on loopback:
//! grpcurl (grpc-go) and Python's grpcio (gRPC's C core). Neither is given a `.proto` file: both
//! learn the services and messages from checkpoint's reflection service, as ghz and grpcurl do in
//! the field.
//!
//! Each test starts its own checkpoint (`env!("CARGO_BIN_EXE_checkpoint")`, exactly the
//! environment below, trust mode so that no user-info server is needed) and waits for `/-/ready`.
//! Every child is killed when the test ends (also on a panic), and every wait is bounded.
//! Needs `scripts/setup.sh`: `.venv/bin/grpcurl`, and grpcio, grpcio-reflection and protobuf in
//! `.venv`; a missing one fails the test with that advice (CI runs setup.sh, so never a skip).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use e2e_support::{Proc, READY_TIMEOUT, free_ports, plain_client, repo, wait_for_status};
use serde_json::{Value, json};

/// Bound of one run of a client (grpcurl, the Python script), start to exit.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The rules every test's checkpoint loads; nothing matches `/nothing`.
const RULES: &str = r#"{
  "/private": { "GET": { "authorization": { "expression": "true", "public": false } } },
  "/admin":   { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

const AUTHORIZATION: &str = "envoy.service.auth.v3.Authorization";

/// A running checkpoint. Field order is drop order: the process goes before its folder.
struct Checkpoint {
    process: Proc,
    /// `127.0.0.1:PORT` of the gRPC server.
    grpc: String,
    _dir: tempfile::TempDir,
}

impl Checkpoint {
    /// Starts checkpoint in trust mode with [`RULES`] and `extra` variables; returns once
    /// `/-/ready` answers 200 (identity sources ready, gRPC health set to SERVING).
    async fn start(extra: &[(&str, &str)]) -> Checkpoint {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("auth.json"), RULES).expect("write auth.json");
        let [grpc_port, status_port] = free_ports::<2>();
        let grpc = format!("127.0.0.1:{grpc_port}");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_checkpoint"));
        command
            .env_clear()
            .env("CONFIGURATION_PATH", dir.path())
            .env("CONFIGURATION_FILE_NAME", "auth")
            .env("TRUST_MIA_USER_HEADERS", "true")
            .env("CHECKPOINT_GRPC_ADDR", &grpc)
            .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{status_port}"))
            .env("DELAY_SHUTDOWN_SECONDS", "0")
            .env("LOG_LEVEL", "warn")
            .envs(extra.iter().copied());
        let mut process = Proc::spawn("checkpoint", command, dir.path());
        wait_for_status(
            &plain_client(),
            &format!("http://127.0.0.1:{status_port}/-/ready"),
            200,
            &mut process,
            READY_TIMEOUT,
        )
        .await;
        Checkpoint {
            process,
            grpc,
            _dir: dir,
        }
    }

    /// Panics with what checkpoint printed if it has exited.
    fn assert_running(&mut self) {
        self.process.assert_running();
    }
}

/// `.venv/bin/NAME`, or a failure that says how to get it.
fn venv_bin(name: &str) -> PathBuf {
    let path = repo().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh first (it installs the interop clients into .venv)",
        path.display()
    );
    path
}

/// What a finished client printed.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `program args`, killed if it has not exited within [`CLIENT_TIMEOUT`] (or when the test
/// panics first: the child is killed when its future is dropped).
async fn run(program: &Path, args: &[&str]) -> Ran {
    let mut command = tokio::process::Command::new(program);
    // Only PATH: no proxy variable from the runner's environment can route loopback calls.
    command
        .args(args)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLIENT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} did not finish within {CLIENT_TIMEOUT:?}",
                program.display()
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `grpcurl -plaintext [-d DATA] ADDRESS args...`: only reflection, no `.proto` file. Panics
/// unless it exits 0.
async fn grpcurl(checkpoint: &mut Checkpoint, data: Option<&str>, args: &[&str]) -> String {
    let address = checkpoint.grpc.clone();
    let mut all = vec!["-plaintext", "-connect-timeout", "10", "-max-time", "30"];
    if let Some(data) = data {
        all.extend(["-d", data]);
    }
    all.push(&address);
    all.extend(args);
    let ran = run(&venv_bin("grpcurl"), &all).await;
    checkpoint.assert_running();
    assert!(ran.success, "grpcurl {all:?} failed\n{ran}");
    ran.stdout
}

/// One Check through grpcurl with `http` as `attributes.request.http`; the answer as JSON
/// (proto3 JSON: lowerCamel names, enums by name, zero values left out).
async fn check(checkpoint: &mut Checkpoint, http: Value) -> Value {
    let request = json!({ "attributes": { "request": { "http": http } } }).to_string();
    let out = grpcurl(
        checkpoint,
        Some(&request),
        &[&format!("{AUTHORIZATION}/Check")],
    )
    .await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}): {out}"))
}

/// The value of header `name` in a list of `HeaderValueOption`s, with its append action.
fn header<'a>(options: &'a Value, name: &str) -> Option<(&'a str, &'a str)> {
    options.as_array()?.iter().find_map(|o| {
        (o["header"]["key"] == name).then(|| {
            (
                o["header"]["value"].as_str().unwrap_or_default(),
                o["appendAction"].as_str().unwrap_or_default(),
            )
        })
    })
}

/// The JSON body of a denied response.
fn denied_body(answer: &Value) -> Value {
    let body = answer["deniedResponse"]["body"].as_str().expect("a body");
    serde_json::from_str(body).expect("a JSON body")
}

#[tokio::test]
async fn grpcurl_lists_check_health_and_reflection() {
    let mut checkpoint = Checkpoint::start(&[]).await;
    let out = grpcurl(&mut checkpoint, None, &["list"]).await;
    let services: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        services.contains(&AUTHORIZATION),
        "no {AUTHORIZATION}:\n{out}"
    );
    // grpcurl 1.8.6 asks grpc.reflection.v1alpha, which lists itself.
    assert!(
        services
            .iter()
            .any(|s| s.starts_with("grpc.reflection.") && s.ends_with(".ServerReflection")),
        "no reflection service:\n{out}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health"),
        "no grpc.health.v1.Health:\n{out}"
    );
}

#[tokio::test]
async fn grpcurl_describes_check_through_reflection() {
    let mut checkpoint = Checkpoint::start(&[]).await;
    let out = grpcurl(&mut checkpoint, None, &["describe", AUTHORIZATION]).await;
    assert!(
        out.contains(&format!("{AUTHORIZATION} is a service:")),
        "{out}"
    );
    assert!(
        out.contains(
            "rpc Check ( .envoy.service.auth.v3.CheckRequest ) returns ( .envoy.service.auth.v3.CheckResponse );"
        ),
        "{out}"
    );
    // The messages are described too (their files and dependencies come through reflection).
    let out = grpcurl(
        &mut checkpoint,
        None,
        &["describe", "envoy.service.auth.v3.CheckRequest"],
    )
    .await;
    assert!(
        out.contains(".envoy.service.auth.v3.AttributeContext attributes = 1;"),
        "{out}"
    );
}

#[tokio::test]
async fn grpcurl_checks_get_the_documented_answers() {
    let mut checkpoint = Checkpoint::start(&[]).await;

    // A trusted user on a private rule: allowed, the user headers set upstream (overwriting).
    let allowed = check(
        &mut checkpoint,
        json!({ "method": "GET", "path": "/private?x=1",
                "headers": { "miauserid": "alice", "miausergroups": "staff,ops" } }),
    )
    .await;
    assert_eq!(
        allowed["status"]["code"].as_i64().unwrap_or(0),
        0,
        "{allowed}"
    );
    assert!(allowed.get("deniedResponse").is_none(), "{allowed}");
    let headers = &allowed["okResponse"]["headers"];
    assert_eq!(
        header(headers, "miauserid"),
        Some(("alice", "OVERWRITE_IF_EXISTS_OR_ADD")),
        "{allowed}"
    );
    assert_eq!(
        header(headers, "miausergroups"),
        Some(("staff,ops", "OVERWRITE_IF_EXISTS_OR_ADD")),
        "{allowed}"
    );

    // Anonymous on a private rule: UNAUTHENTICATED (16), HTTP 401 with WWW-Authenticate.
    let anonymous = check(
        &mut checkpoint,
        json!({ "method": "GET", "path": "/private", "headers": { "x-request-id": "r-1" } }),
    )
    .await;
    assert_eq!(anonymous["status"]["code"], 16, "{anonymous}");
    assert!(anonymous.get("okResponse").is_none(), "{anonymous}");
    // envoy.type.v3.HttpStatus is an enum: proto3 JSON names 401 `Unauthorized`.
    assert_eq!(
        anonymous["deniedResponse"]["status"]["code"], "Unauthorized",
        "{anonymous}"
    );
    assert_eq!(
        header(&anonymous["deniedResponse"]["headers"], "www-authenticate"),
        Some(("Bearer", "OVERWRITE_IF_EXISTS_OR_ADD")),
        "{anonymous}"
    );
    assert_eq!(denied_body(&anonymous)["statusCode"], 401, "{anonymous}");

    // A logged user whose groups do not satisfy the rule: PERMISSION_DENIED (7), HTTP 403.
    let forbidden = check(
        &mut checkpoint,
        json!({ "method": "DELETE", "path": "/admin/users",
                "headers": { "miauserid": "bob", "miausergroups": "staff" } }),
    )
    .await;
    assert_eq!(forbidden["status"]["code"], 7, "{forbidden}");
    assert_eq!(
        forbidden["deniedResponse"]["status"]["code"], "Forbidden",
        "{forbidden}"
    );
    assert_eq!(denied_body(&forbidden)["statusCode"], 403, "{forbidden}");

    // No rule for the path: NOT_FOUND (5), HTTP 404.
    let nowhere = check(
        &mut checkpoint,
        json!({ "method": "GET", "path": "/nothing/here",
                "headers": { "miauserid": "alice" } }),
    )
    .await;
    assert_eq!(nowhere["status"]["code"], 5, "{nowhere}");
    assert_eq!(
        nowhere["deniedResponse"]["status"]["code"], "NotFound",
        "{nowhere}"
    );
    assert_eq!(denied_body(&nowhere)["statusCode"], 404, "{nowhere}");
}

#[tokio::test]
async fn grpcurl_health_check_is_serving_once_ready() {
    let mut checkpoint = Checkpoint::start(&[]).await;
    for service in ["", AUTHORIZATION] {
        let request = json!({ "service": service }).to_string();
        let out = grpcurl(
            &mut checkpoint,
            Some(&request),
            &["grpc.health.v1.Health/Check"],
        )
        .await;
        let answer: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}): {out}"));
        assert_eq!(answer["status"], "SERVING", "service {service:?}: {out}");
    }
}

/// Runs tests/interop/grpcio_check.py against `checkpoint`.
async fn grpcio_check(checkpoint: &mut Checkpoint) -> Ran {
    let script = repo().join("tests/interop/grpcio_check.py");
    let script = script.to_str().expect("UTF-8 path");
    let ran = run(
        &venv_bin("python"),
        &[script, &checkpoint.grpc, "--checks", "200"],
    )
    .await;
    checkpoint.assert_running();
    ran
}

#[tokio::test]
async fn grpcio_makes_200_concurrent_checks_on_one_channel() {
    let mut checkpoint = Checkpoint::start(&[]).await;
    let ran = grpcio_check(&mut checkpoint).await;
    assert!(ran.success, "grpcio_check.py failed\n{ran}");
    assert!(
        ran.stdout.contains(
            ": 200 checks on one channel: allowed 50, unauthenticated 50, forbidden 50, not_found 50, mismatches 0"
        ),
        "{ran}"
    );
}

/// The script is not a test that cannot fail: with strict mode off, the denials become allows
/// (`mia-allowed: 0`), and it reports each of them.
#[tokio::test]
async fn grpcio_check_reports_answers_that_are_not_the_documented_ones() {
    let mut checkpoint = Checkpoint::start(&[("AUTHORIZATION_STRICT_MODE_ENABLED", "false")]).await;
    let ran = grpcio_check(&mut checkpoint).await;
    assert!(!ran.success, "{ran}");
    assert!(
        ran.stdout.contains(
            ": 200 checks on one channel: allowed 50, unauthenticated 0, forbidden 0, not_found 0, mismatches 150"
        ),
        "{ran}"
    );
    assert!(
        ran.stdout
            .contains("mismatch: check 1 (unauthenticated): status.code 0, want 16"),
        "{ran}"
    );
}
