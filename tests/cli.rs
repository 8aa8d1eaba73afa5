//! The binary's `check-config`: every problem listed with where it is, non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Tests: a failed step should stop the test loudly.

use std::process::Command;

fn check_config(vars: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run checkpoint");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_configuration_is_summarised() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{ "/users": { "GET": { "authorization": { "expression": "groups.admin", "public": false } } } }"#,
    )
    .expect("write");
    let path = dir.path().display().to_string();
    let (code, stdout, stderr) = check_config(&[
        ("CONFIGURATION_PATH", &path),
        ("CONFIGURATION_FILE_NAME", "auth"),
        ("USERINFO_URL", "http://auth-manager:8080/userinfo"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("rules:           1"), "{stdout}");
    assert!(stdout.contains("GET /users: groups.admin"), "{stdout}");
    assert!(stdout.contains("identity source: userinfo"), "{stdout}");
}

#[test]
fn every_problem_is_listed_settings_and_rules_together() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("auth.json"),
        "{\n  \"/a\": { \"GET\": { \"authorization\": { \"expression\": \"groups.x &&\" } } },\n  \"/b\": { \"FETCH\": { \"authorization\": { \"expression\": \"true\" } } }\n}",
    )
    .expect("write");
    let path = dir.path().display().to_string();
    let (code, _, stderr) = check_config(&[
        ("CONFIGURATION_PATH", &path),
        ("CONFIGURATION_FILE_NAME", "auth"),
        ("USERINFO_URL", "not a url"),
        ("CHECKPOINT_USERINFO_TIMEOUT", "fast"),
        ("LOG_LEVEL", "info"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("USERINFO_URL: \"not a url\" is not a URL"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CHECKPOINT_USERINFO_TIMEOUT: invalid duration \"fast\""),
        "{stderr}"
    );
    assert!(stderr.contains("auth.json:2:11: rule \"/a\" GET: authorization.expression \"groups.x &&\": invalid expression at column"), "{stderr}");
    assert!(
        stderr.contains("auth.json:3:11: rule \"/b\" FETCH: unknown method \"FETCH\""),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_to_start_on_a_bad_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .env_clear()
        .env("CONFIGURATION_FILE_NAME", "missing")
        .env("CONFIGURATION_PATH", "/nonexistent")
        .env("USERINFO_URL", "http://x/")
        .env("HTTP_PORT", "0")
        .env("CHECKPOINT_GRPC_ADDR", "127.0.0.1:0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read the rule file"), "{stderr}");
}

#[test]
fn unknown_commands_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("launch")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
