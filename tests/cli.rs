//! The binary's `check-config`: every problem listed with where it is, non-zero exit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

use std::process::Command;

fn check_config(vars: &[(&str, &str)]) -> (i32, String, String) {
    checkpoint("check-config", vars)
}

/// Runs `checkpoint COMMAND` with exactly `vars` as its environment: exit code, stdout, stderr.
fn checkpoint(command: &str, vars: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg(command)
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

/// `checkpoint serve` on free loopback ports with a one-rule file; its stdout (JSON logs) piped.
struct Serving {
    child: std::process::Child,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Serving {
    fn start() -> Serving {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("auth.json"),
            r#"{ "/": { "GET": { "authorization": { "expression": "true", "public": true } } } }"#,
        )
        .expect("write");
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port()
        };
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
            .env_clear()
            .env("CONFIGURATION_PATH", dir.path())
            .env("CONFIGURATION_FILE_NAME", "auth")
            .env("USERINFO_URL", "http://127.0.0.1:9/userinfo")
            .env("CHECKPOINT_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("DELAY_SHUTDOWN_SECONDS", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let serving = Serving {
            child,
            http,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !serving.ready_answers("HTTP/1.1 200") {
            assert!(std::time::Instant::now() < deadline, "never ready");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        serving
    }

    /// Whether `GET /-/ready` answers with a status line starting with `want`.
    fn ready_answers(&self, want: &str) -> bool {
        use std::io::Read;
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else {
            return false;
        };
        let mut text = String::new();
        std::io::Write::write_all(
            &mut stream,
            b"GET /-/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .is_ok()
            && stream.read_to_string(&mut text).is_ok()
            && text.starts_with(want)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit; the exit code and the logs.
    fn wait(mut self) -> (Option<i32>, String) {
        use std::io::Read;
        let exit = self.child.wait().expect("wait");
        let mut logs = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut logs)
            .expect("read");
        (exit.code(), logs)
    }
}

#[test]
fn sigterm_turns_not_ready_then_exits_zero() {
    let serving = Serving::start();
    serving.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        serving.ready_answers("HTTP/1.1 503"),
        "/-/ready must answer 503 during the shutdown delay"
    );
    let (code, logs) = serving.wait();
    assert_eq!(code, Some(0));
    assert!(logs.contains("\"signal\":\"SIGTERM\""), "{logs}");
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "JSON lines only: {logs}"
    );
}

/// The server turns transparent huge pages off for itself (src/main.rs): the kernel reports
/// the flag in /proc/PID/status, and where huge pages are only given on request (`madvise`,
/// this machine's and Debian's default) none is in use, since the allocator does not ask for them.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let serving = Serving::start();
    let pid = serving.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let flag = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps");
    let huge_kb = smaps
        .lines()
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    serving.signal("TERM");
    let (code, _) = serving.wait();
    assert_eq!(code, Some(0));
    // The field exists since Linux 5.0; an older kernel cannot report the flag.
    if let Some(flag) = flag {
        assert_eq!(flag, "0", "THP_enabled in /proc/{pid}/status");
    }
    if !mode.contains("[always]") {
        assert_eq!(huge_kb, Some(0), "AnonHugePages with THP mode {mode:?}");
    }
}

/// SIGHUP (what `kill -HUP` or a closing terminal sends) reloads the configuration: serving
/// and readiness go on (it used to kill the process without a drain), and SIGTERM still shuts
/// down cleanly. Reloading itself is tested under load in tests/reload.rs.
#[test]
fn sighup_reloads_and_keeps_serving() {
    let serving = Serving::start();
    serving.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        serving.ready_answers("HTTP/1.1 200"),
        "still serving and ready after SIGHUP"
    );
    serving.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(serving.ready_answers("HTTP/1.1 200"), "a second SIGHUP too");
    serving.signal("TERM");
    let (code, logs) = serving.wait();
    assert_eq!(code, Some(0), "{logs}");
    let reloaded = logs
        .lines()
        .filter(|l| l.contains("configuration reloaded"))
        .count();
    assert_eq!(reloaded, 2, "{logs}");
}

/// Every problem of an `ldap` source at once, each with the source's position and the field;
/// a misspelt field with its line and column; plain `ldap://` as a warning when allowed.
#[test]
fn ldap_source_problems_are_listed_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("checkpoint.yaml");
    let path = config.display().to_string();
    std::fs::write(
        &config,
        "version: 1\nrules: { inline: {} }\nidentity:\n  sources:\n    - type: anonymous\n      name: first\n    - type: ldap\n      url: ldap://127.0.0.1:389\n      ca_file: missing-ca.pem\n      bind_dn: cn=checkpoint,dc=example,dc=org\n      user_search: { base: \"ou=people,dc=example,dc=org\", filter: \"(uid={user})\" }\n      user_dn_template: \"uid={username},dc=example,dc=org\"\n      groups: { attribute: \"member of\" }\n",
    )
    .expect("write");
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "identity.sources[1] (ldap): ldap.url: ldap:// sends passwords in clear",
        "identity.sources[1] (ldap): ldap.ca_file: only used with ldaps:// or StartTLS",
        "identity.sources[1] (ldap): ldap.bind_password: bind_dn needs bind_password",
        "identity.sources[1] (ldap): ldap.user_search: give user_search or user_dn_template, not both",
        "identity.sources[1] (ldap): ldap.user_search.filter: \"(uid={user})\" holds a placeholder",
        "identity.sources[1] (ldap): ldap.groups.attribute: \"member of\" is not an attribute name",
    ] {
        assert!(stderr.contains(expected), "{expected}\nin:\n{stderr}");
    }

    std::fs::write(
        &config,
        "version: 1\nrules: { inline: {} }\nidentity:\n  sources:\n    - type: ldap\n      url: ldap://127.0.0.1:389\n      user_dn_template: \"uid={username},dc=example,dc=org\"\n      bind_passwd: x\n",
    )
    .expect("write");
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("checkpoint.yaml:"), "{stderr}");
    assert!(stderr.contains("bind_passwd"), "{stderr}");

    std::fs::write(
        &config,
        "version: 1\nrules: { inline: {} }\nidentity:\n  sources:\n    - type: ldap\n      url: ldap://127.0.0.1:389\n      allow_plaintext: true\n      user_dn_template: \"uid={username},dc=example,dc=org\"\n",
    )
    .expect("write");
    let (code, stdout, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.lines().any(|l| l.contains("warning:")
            && l.contains("ldap source \"ldap\": allow_plaintext sends every password")),
        "{stdout}{stderr}"
    );
}

#[test]
fn the_native_file_wins_and_check_config_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("checkpoint.yaml");
    std::fs::write(
        &config,
        "version: 1\nrules: { inline: { /: { GET: { authorization: { expression: \"true\", public: true } } } } }\nidentity: { sources: [ { type: anonymous } ] }\n",
    )
    .expect("write");
    let path = config.display().to_string();
    let (code, stdout, stderr) = check_config(&[
        ("CHECKPOINT_CONFIG", &path),
        ("USERINFO_URL", "http://ignored/"),
        ("CONFIGURATION_FILE_NAME", "ignored"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(CHECKPOINT_CONFIG)"), "{stdout}");
    assert!(
        stdout.contains("ignored:         CONFIGURATION_FILE_NAME, USERINFO_URL"),
        "{stdout}"
    );
    assert!(stdout.contains("identity source: anonymous"), "{stdout}");

    std::fs::write(&config, "version: 1\nrules: { file: missing.json }\nidentity:\n  sources:\n    - type: jwt\n      issuer: x\n      algorithms: [HS256]\n    - type: userinfo\n      url: ftp://x\n").expect("write");
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("missing.json: cannot read the rule file"),
        "{stderr}"
    );

    std::fs::write(&config, "version: 1\nrules: { inline: {} }\nidentity:\n  sources:\n    - type: jwt\n      issuer: http://127.0.0.1:9\n      algorithms: [HS256]\n    - type: userinfo\n      url: ftp://x\n").expect("write");
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("identity.sources[0] (jwt)"), "{stderr}");
    assert!(
        stderr.contains(
            "identity.sources[1] (userinfo): url: \"ftp://x\" is not an http or https URL"
        ),
        "{stderr}"
    );

    std::fs::write(&config, "version: 1\nrules: { inline: {} }\nidentity:\n  sources:\n    - type: anonymous\n      colour: red\n").expect("write");
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("checkpoint.yaml:"), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
}

/// `allowed-headers`: exactly the headers the configuration reads, from every kind of source,
/// as the YAML value of Envoy's ext_authz `allowed_headers`; a bad configuration is an error.
#[test]
fn allowed_headers_lists_what_every_source_reads() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("checkpoint.yaml");
    std::fs::write(
        &config,
        r#"
version: 1
rules:
  inline:
    /api: { ALL: { authorization: { expression: "true", public: false } } }
identity:
  sources:
    - type: api_key
      headers: [Secret, client-key]
      cookie: app_key
      keys:
        - sha256: "0e6b3e5e1a4c1c7e0f4c7b1d7d0b7e1f7d9b8c4a1f2e3d4c5b6a798877665544"
          client_type: mobile
    - type: jwt
      issuer: https://idp.example.com
      jwks_uri: https://idp.example.com/jwks
      token: { header: X-Token }
    - type: userinfo
      url: http://auth-manager/userinfo
      headers_to_proxy: [authorization, x-forwarded-host, host]
    - type: trusted_headers
request_headers: { backoffice: x-backoffice, client_type: x-client }
"#,
    )
    .expect("write");
    let path = config.display().to_string();
    let run = || checkpoint("allowed-headers", &[("CHECKPOINT_CONFIG", &path)]);
    let (code, stdout, stderr) = run();
    assert_eq!(code, 0, "{stderr}");
    // Behind Envoy the host arrives as `:authority`: proxying `host` needs both.
    let names = [
        ":authority",
        "authorization",
        "client-key",
        "cookie",
        "host",
        "miausergroups",
        "miauserid",
        "miauserproperties",
        "secret",
        "x-backoffice",
        "x-client",
        "x-forwarded-host",
        "x-request-id",
        "x-token",
    ];
    let patterns: Vec<String> = names
        .iter()
        .map(|n| format!("{{ exact: \"{n}\" }}"))
        .collect();
    assert_eq!(
        stdout,
        format!("{{ patterns: [{}] }}\n", patterns.join(", "))
    );
    // The line is YAML Envoy reads: a mapping with a list of exact matchers.
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&stdout).expect("YAML");
    assert_eq!(
        parsed["patterns"].as_sequence().map(Vec::len),
        Some(names.len())
    );

    std::fs::write(
        &config,
        "version: 1\nrules: { inline: {} }\nidentity: { sources: [{ type: userinfo }] }\n",
    )
    .expect("write");
    let (code, stdout, stderr) = run();
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("checkpoint.yaml"), "{stderr}");
}

/// A mistyped `LOG_LEVEL` (`warning`, `verbose`) would turn every log line off: it is a
/// configuration problem, listed with the others in the same run, from the environment and from
/// the native file alike.
#[test]
fn an_unknown_log_level_is_listed_with_the_other_problems() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{ "/": { "GET": { "authorization": { "expression": "true", "public": true } } } }"#,
    )
    .expect("write");
    let path = dir.path().display().to_string();
    for (level, valid) in [
        ("warning", false),
        ("verbose", false),
        ("checkpoint=verbose,info", false),
        ("checkpoint", false),
        ("warn", true),
        ("OFF", true),
        ("checkpoint=debug,info", true),
        ("info,checkpoint::decision=off", true),
    ] {
        let (code, _, stderr) = check_config(&[
            ("CONFIGURATION_PATH", &path),
            ("CONFIGURATION_FILE_NAME", "auth"),
            ("USERINFO_URL", "http://auth-manager/userinfo"),
            (
                "CHECKPOINT_USERINFO_TIMEOUT",
                if valid { "1s" } else { "fast" },
            ),
            ("LOG_LEVEL", level),
        ]);
        if valid {
            assert_eq!(code, 0, "{level}: {stderr}");
            continue;
        }
        assert_eq!(code, 1, "{level}: {stderr}");
        assert!(stderr.contains("2 problem(s)"), "{level}: {stderr}");
        assert!(
            stderr.contains(&format!("LOG_LEVEL: \"{level}\"")),
            "{level}: {stderr}"
        );
        assert!(stderr.contains("CHECKPOINT_USERINFO_TIMEOUT"), "{stderr}");
    }

    let config = dir.path().join("checkpoint.yaml");
    std::fs::write(
        &config,
        "version: 1\nserver: { log_level: warning, grpc_addr: nowhere }\nrules: { file: auth.json }\nidentity: { sources: [ { type: anonymous } ] }\n",
    )
    .expect("write");
    let path = config.display().to_string();
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(stderr.contains("server.log_level: \"warning\""), "{stderr}");
}

/// Booleans read alike everywhere: true/false/1/0/yes/no/on/off in any case, from the
/// environment and from the native file; anything else names the setting and the value.
#[test]
fn booleans_accept_the_usual_spellings_everywhere() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{ "/": { "GET": { "authorization": { "expression": "true", "public": true } } } }"#,
    )
    .expect("write");
    let path = dir.path().display().to_string();
    let env = |strict: &'static str, metadata: &'static str, trust: &'static str| {
        let path = path.clone();
        move || {
            check_config(&[
                ("CONFIGURATION_PATH", &path),
                ("CONFIGURATION_FILE_NAME", "auth"),
                ("USERINFO_URL", "http://auth-manager/userinfo"),
                ("AUTHORIZATION_STRICT_MODE_ENABLED", strict),
                ("CHECKPOINT_DYNAMIC_METADATA", metadata),
                ("TRUST_MIA_USER_HEADERS", trust),
            ])
        }
    };
    for (strict, metadata, trust, want_strict, want_metadata, want_source) in [
        ("Off", "YES", "on", false, true, "trusted_headers"),
        ("ON", "no", "0", true, false, "userinfo"),
        ("1", "True", "FALSE", true, true, "userinfo"),
    ] {
        let (code, stdout, stderr) = env(strict, metadata, trust)();
        assert_eq!(code, 0, "{strict} {metadata} {trust}: {stderr}");
        assert!(
            stdout.contains(&format!("strict mode:     {want_strict}")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("dynamic metadata: {want_metadata}")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("identity source: {want_source}")),
            "{stdout}"
        );
    }
    let (code, _, stderr) = env("maybe", "2", "y")();
    assert_eq!(code, 1);
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    for (variable, value) in [
        ("AUTHORIZATION_STRICT_MODE_ENABLED", "maybe"),
        ("CHECKPOINT_DYNAMIC_METADATA", "2"),
        ("TRUST_MIA_USER_HEADERS", "y"),
    ] {
        assert!(
            stderr.contains(&format!("{variable}: \"{value}\" is not a boolean")),
            "{stderr}"
        );
    }

    let config = dir.path().join("checkpoint.yaml");
    let native = |responses: &str| {
        std::fs::write(
            &config,
            format!("version: 1\nrules: {{ file: auth.json }}\nidentity:\n  sources:\n    - {{ type: mtls, allow_unlisted: On }}\nresponses: {responses}\n"),
        )
        .expect("write");
        check_config(&[("CHECKPOINT_CONFIG", &config.display().to_string())])
    };
    let (code, stdout, stderr) = native("{ strict_mode: off, dynamic_metadata: \"Yes\" }");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("strict mode:     false"), "{stdout}");
    assert!(stdout.contains("dynamic metadata: true"), "{stdout}");
    let (code, stdout, stderr) = native("{ strict_mode: 1, dynamic_metadata: false }");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("strict mode:     true"), "{stdout}");
    let (code, _, stderr) = native("{ strict_mode: maybe }");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("checkpoint.yaml:6:27: responses.strict_mode: \"maybe\" is not a boolean"),
        "{stderr}"
    );
}

/// Every subcommand has its own `--help` (exit 0, that command's usage on stdout), and an
/// unknown option is a usage error.
#[test]
fn each_subcommand_has_its_help() {
    for command in ["serve", "check-config", "allowed-headers", "schema"] {
        for flag in ["--help", "-h"] {
            let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
                .args([command, flag])
                .env_clear()
                .output()
                .expect("run");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{command} {flag}: {stdout}");
            assert!(
                stdout.starts_with(&format!("usage: checkpoint {command}")),
                "{command} {flag}: {stdout}"
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args(["check-config", "--verbose"])
        .env_clear()
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--verbose"), "{stderr}");
}

/// `checkpoint --help | head -1` and `checkpoint schema | head -1` close the pipe before
/// checkpoint has written everything: it stops quietly (no panic, no "Broken pipe").
#[test]
fn a_closed_stdout_is_not_a_crash() {
    for args in [&["--help"][..], &["schema"], &["check-config", "--help"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // The reading end is closed before checkpoint writes anything: every write fails with
        // EPIPE, as it would once `head` has exited.
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
            .args(args)
            .env_clear()
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// The same key twice, at any level of the rule file or of the native file (YAML block or
/// flow style, inline rules, JSON), is an error naming both places; problems come in file order.
#[test]
fn duplicate_keys_are_refused_with_both_positions() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().display().to_string();
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{
  "/z": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/a": { "GET": { "authorization": { "expression": "groups.x &&" } } },
  "/z": { "POST": { "authorization": { "expression": "true" }, "authorization": { "expression": "false" } } }
}"#,
    )
    .expect("write");
    let (code, _, stderr) = check_config(&[
        ("CONFIGURATION_PATH", &path),
        ("CONFIGURATION_FILE_NAME", "auth"),
        ("USERINFO_URL", "http://auth-manager/userinfo"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    let file = format!("{path}/auth.json");
    let problems: Vec<&str> = stderr.lines().skip(1).collect();
    assert_eq!(problems.len(), 3, "{stderr}");
    assert!(
        problems[0].starts_with(&format!(
            "  - {file}:3:11: rule \"/a\" GET: authorization.expression"
        )),
        "{stderr}"
    );
    assert_eq!(
        problems[1],
        format!("  - {file}:4:3: rule \"/z\": duplicate key \"/z\" (first at {file}:2:3)")
    );
    assert_eq!(
        problems[2],
        format!(
            "  - {file}:4:64: rule \"/z\" POST: duplicate key \"authorization\" (first at {file}:4:21)"
        )
    );

    let yaml = dir.path().join("checkpoint.yaml");
    let check = |text: &str| {
        std::fs::write(&yaml, text).expect("write");
        check_config(&[("CHECKPOINT_CONFIG", &yaml.display().to_string())])
    };
    let label = yaml.display().to_string();
    for (text, want) in [
        (
            "version: 1\nrules: { file: auth.json }\nversion: 1\nidentity: { sources: [ { type: anonymous } ] }\n",
            format!("{label}:3:1: duplicate key \"version\" (first at {label}:1:1)"),
        ),
        (
            "version: 1\nrules:\n  inline:\n    /a:\n      GET: { authorization: { expression: \"true\", public: true } }\n    /a:\n      POST: { authorization: { expression: \"true\" } }\nidentity: { sources: [ { type: anonymous } ] }\n",
            format!("{label}:6:5: duplicate key \"rules.inline./a\" (first at {label}:4:5)"),
        ),
        (
            "version: 1\nrules: { inline: { /a: { GET: { authorization: { expression: \"true\", expression: \"false\" } } } } }\nidentity: { sources: [ { type: anonymous } ] }\n",
            format!(
                "{label}:2:70: duplicate key \"rules.inline./a.GET.authorization.expression\" (first at {label}:2:50)"
            ),
        ),
        (
            "version: 1\nrules: { inline: {} }\nidentity:\n  sources:\n    - type: mtls\n      principals: [{ principal: a, principal: b }]\n",
            format!(
                "{label}:6:36: duplicate key \"identity.sources[0].principals[0].principal\" (first at {label}:6:22)"
            ),
        ),
    ] {
        let (code, _, stderr) = check(text);
        assert_eq!(code, 1, "{text}");
        assert!(
            stderr.contains(&format!("  - {want}\n")),
            "{want}\n{stderr}"
        );
    }

    let json = dir.path().join("checkpoint.json");
    std::fs::write(
        &json,
        "{\"version\": 1, \"rules\": {\"inline\": {\"/a\": {\"GET\": {\"authorization\": {\"expression\": \"true\"}}},\n  \"/a\": {}}},\n \"identity\": {\"sources\": [{\"type\": \"anonymous\"}]}, \"version\": 1}",
    )
    .expect("write");
    let label = json.display().to_string();
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &label)]);
    assert_eq!(code, 1, "{stderr}");
    for want in [
        format!("  - {label}:2:3: duplicate key \"rules.inline./a\" (first at {label}:1:37)\n"),
        format!("  - {label}:3:52: duplicate key \"version\" (first at {label}:1:2)\n"),
    ] {
        assert!(stderr.contains(&want), "{want}\n{stderr}");
    }
}

/// `${VAR}` in the native file: expanded from the environment checkpoint was given, with
/// `${VAR:-default}`, `$${` for a literal `${`, and an unset variable named with its place.
#[test]
fn the_native_file_expands_variable_references() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("checkpoint.yaml");
    let label = config.display().to_string();
    let check = |text: &str, vars: &[(&str, &str)]| {
        std::fs::write(&config, text).expect("write");
        let mut all = vec![("CHECKPOINT_CONFIG", label.as_str())];
        all.extend_from_slice(vars);
        check_config(&all)
    };
    let text = r#"version: 1
server:
  grpc_addr: ${CHECKPOINT_GRPC_ADDR:-127.0.0.1:50051}
  http_addr: "${STATUS_ADDR}"
  # a comment may mention ${UNSET} freely
rules:
  inline:
    /: { GET: { authorization: { expression: "clientType == '$${literal}'", public: true } } }
identity:
  sources:
    - type: introspection
      endpoint: http://${IDP_HOST:-127.0.0.1:9}/introspect
      client_id: checkpoint
      client_secret: "${SECRET}"
"#;
    let (code, stdout, stderr) = check(
        text,
        &[
            ("STATUS_ADDR", "127.0.0.1:3999"),
            ("SECRET", "a \"quoted\" # secret\\"),
            ("CHECKPOINT_GRPC_ADDR", "127.0.0.1:50999"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("grpc address:    127.0.0.1:50999"),
        "{stdout}"
    );
    assert!(
        stdout.contains("status address:  127.0.0.1:3999"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /: clientType == '${literal}'"),
        "{stdout}"
    );
    // A variable the file refers to is not ignored.
    assert!(!stdout.contains("ignored:"), "{stdout}");
    let (code, stdout, stderr) = check(text, &[("STATUS_ADDR", "127.0.0.1:3999"), ("SECRET", "s")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("grpc address:    127.0.0.1:50051"),
        "{stdout}"
    );

    // Every problem at once, each with its place and variable.
    let (code, _, stderr) = check(text, &[("SECRET", "s"), ("IDP_HOST", "idp #1")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{label}:4:15: ${{STATUS_ADDR}}: the variable STATUS_ADDR is not set"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{label}:12:24: ${{IDP_HOST:-127.0.0.1:9}}: the value of IDP_HOST has characters"
        )),
        "{stderr}"
    );
    let (code, _, stderr) = check(
        text,
        &[("STATUS_ADDR", "127.0.0.1:1\nextra: 1"), ("SECRET", "s")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{label}:4:15: ${{STATUS_ADDR}}: the value of STATUS_ADDR has a line break"
        )),
        "{stderr}"
    );

    // Positions after a reference still point into the file as written.
    let (code, _, stderr) = check(
        "version: 1\nserver: { grpc_addr: \"${A}\", colour: red }\nrules: { inline: {} }\nidentity: { sources: [] }\n",
        &[("A", "127.0.0.1:1")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("{label}:2:30: ")), "{stderr}");
}

/// The shipped example passes `check-config` as it is, and its addresses follow the
/// environment without editing the file.
#[test]
fn the_shipped_example_passes_check_config() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/checkpoint.example.yaml"
    );
    let (code, stdout, stderr) = check_config(&[("CHECKPOINT_CONFIG", example)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("grpc address:    0.0.0.0:50051"),
        "{stdout}"
    );
    let (code, stdout, stderr) = check_config(&[
        ("CHECKPOINT_CONFIG", example),
        ("CHECKPOINT_GRPC_ADDR", "127.0.0.1:50051"),
        ("CHECKPOINT_HTTP_ADDR", "127.0.0.1:3000"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("grpc address:    127.0.0.1:50051"),
        "{stdout}"
    );
    assert!(
        stdout.contains("status address:  127.0.0.1:3000"),
        "{stdout}"
    );
}

/// The gRPC port's TLS files are read and checked with the rest of the configuration, before
/// any port is bound: a certificate that is not one fails `check-config`, naming the file; TLS
/// with a Unix-socket address is refused rather than ignored.
#[test]
fn tls_files_are_checked_before_serving() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{ "/": { "GET": { "authorization": { "expression": "true", "public": true } } } }"#,
    )
    .expect("write");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, "not a certificate\n").expect("write");
    std::fs::write(&key, "not a key\n").expect("write");
    let path = dir.path().display().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let base = [
        ("CONFIGURATION_PATH", path.as_str()),
        ("CONFIGURATION_FILE_NAME", "auth"),
        ("TRUST_MIA_USER_HEADERS", "true"),
        ("CHECKPOINT_GRPC_TLS_CERT", cert.as_str()),
        ("CHECKPOINT_GRPC_TLS_KEY", key.as_str()),
    ];
    let (code, _, stderr) = check_config(&base);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("gRPC TLS: {cert}: no PEM certificate in it")),
        "{stderr}"
    );
    let mut on_socket = base.to_vec();
    on_socket.push(("CHECKPOINT_GRPC_ADDR", "unix:/tmp/checkpoint-test.sock"));
    let (code, _, stderr) = check_config(&on_socket);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("CHECKPOINT_GRPC_TLS_CERT: TLS does not apply to a Unix socket"),
        "{stderr}"
    );
}

/// The demo says why it failed: with checkpoint's gRPC port already taken, it stops everything
/// and prints checkpoint's own error (which checkpoint logs on stdout), not an empty stderr file.
#[test]
fn the_demo_prints_the_real_cause_of_a_failed_start() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
            .to_string()
    };
    // Held for the whole run: the demo's checkpoint cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port().to_string();
    let state = tempfile::tempdir().expect("dir");
    let mut child = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .current_dir(root)
        .env("DEMO_SKIP_BUILD", "1")
        .env("CHECKPOINT_BIN", env!("CARGO_BIN_EXE_checkpoint"))
        .env("DEMO_NO_WAIT", "1")
        .env("DEMO_GRPC_PORT", &taken_port)
        .env("DEMO_HTTPS_PORT", free())
        .env("DEMO_HTTP_PORT", free())
        .env("DEMO_ADMIN_PORT", free())
        .env("DEMO_STATUS_PORT", free())
        .env("DEMO_UPSTREAM_PORT", free())
        .env("DEMO_IDP_PORT", free())
        .env("DEMO_LDAP_PORT", free())
        .env("TMPDIR", state.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the demo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop on its own");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    drop(taken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("binding the gRPC address 127.0.0.1:{taken_port}")),
        "{stderr}"
    );
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

/// A setting that removes a protection is refused; one that weakens it is accepted, and
/// `check-config` says what it weakens.
#[test]
fn weakened_protections_are_warned_and_a_removed_one_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("checkpoint.yaml");
    let write = |interval: &str| {
        std::fs::write(
            &config,
            format!(
                "version: 1\nrules:\n  inline:\n    /api: {{ GET: {{ authorization: {{ expression: \"true\", public: false }} }} }}\nidentity:\n  sources:\n    - type: jwt\n      name: idp\n      issuer: https://idp.example.com\n      jwks_uri: https://idp.example.com/jwks\n      min_refresh_interval: {interval}\n"
            ),
        )
        .expect("write");
    };
    let path = config.display().to_string();

    write("200ms");
    let (code, stdout, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 0, "{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].contains("\"idp\"") && warnings[0].contains("min_refresh_interval 200ms"),
        "{stdout}"
    );
    assert!(warnings[1].contains("requires no `typ` header"), "{stdout}");

    write("0s");
    let (code, _, stderr) = check_config(&[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("identity.sources[0] (idp): min_refresh_interval: must be at least 100ms"),
        "{stderr}"
    );
}

/// With tracing configured, `allowed-headers` adds the trace context headers (W3C and B3) and
/// `check-config` names the endpoint; a collector endpoint checkpoint cannot use is refused with
/// the variable named.
#[test]
fn tracing_adds_the_trace_context_headers() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("checkpoint.yaml");
    std::fs::write(
        &config,
        "version: 1\nrules: { inline: {} }\nidentity:\n  sources: [ { type: trusted_headers } ]\n",
    )
    .expect("write");
    let path = config.display().to_string();
    let (code, off, stderr) = checkpoint("allowed-headers", &[("CHECKPOINT_CONFIG", &path)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!off.contains("traceparent"), "{off}");
    let traced = [
        ("CHECKPOINT_CONFIG", path.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
    ];
    let (code, on, stderr) = checkpoint("allowed-headers", &traced);
    assert_eq!(code, 0, "{stderr}");
    for name in [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert!(on.contains(&format!("{{ exact: \"{name}\" }}")), "{on}");
    }
    let (code, summary, stderr) = checkpoint("check-config", &traced);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        summary.contains("traces:          http://127.0.0.1:4317 (service checkpoint)"),
        "{summary}"
    );

    let (code, _, stderr) = checkpoint(
        "check-config",
        &[
            ("CHECKPOINT_CONFIG", &path),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("telemetry: OTEL_EXPORTER_OTLP_ENDPOINT: \"https://collector:4317\": TLS to the collector is not supported"),
        "{stderr}"
    );
    assert!(
        stderr.contains("telemetry: OTEL_TRACES_SAMPLER: \"sometimes\" is not a sampler"),
        "{stderr}"
    );
}
