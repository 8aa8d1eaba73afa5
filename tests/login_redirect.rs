//! The browser login redirect through the real server: a browser navigation that needs a login
//! and has none (or a refused one) gets a 302 to the configured login page; API clients keep the
//! 401 and its JSON body; a 403 or a 503 is never a redirect; a forged `Host` never changes
//! where the redirect points. Configured once by Mia's variables and once by the native file,
//! and refused with every problem by `check-config`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use std::process::Command;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use support::userinfo::UserInfoServer;
use support::{Answer, Server, answer, request, request_pairs};

const RULES: &str = r#"{
  "/": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/orders": { "ALL": { "authorization": { "expression": "true", "public": false } } },
  "/admin": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

const LOGIN: &str = "https://login.example.test/web-login";
/// Chrome's `Accept` on a page load.
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";

/// A Check as Envoy sends it for an https request to `host`.
fn https(method: &str, target: &str, host: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut check = request(method, target, headers);
    let http = check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("http request");
    http.scheme = "https".into();
    http.host = host.into();
    http.headers.insert(":authority".into(), host.into());
    http.headers.insert(":path".into(), target.into());
    check
}

fn location(answer: &Answer) -> &str {
    answer
        .headers
        .get("location")
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no location in {answer:?}"))
}

/// What the login page would read back from the Location's `redirect` parameter.
fn carried(location: &str, param: &str) -> Option<String> {
    reqwest::Url::parse(location)
        .expect("the Location is a URL")
        .query_pairs()
        .find(|(name, _)| name == param)
        .map(|(_, value)| value.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_sent_to_log_in_and_api_clients_keep_the_401() {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let server = Server::start(
        RULES,
        &[
            ("USERINFO_URL", url.as_str()),
            ("CHECKPOINT_LOGIN_REDIRECT_URL", LOGIN),
        ],
    )
    .await;
    let host = "app.example.test";

    // A page load without a session: 302 to the login page with the original URL.
    let redirected = answer(
        &server
            .check(https(
                "GET",
                "/orders/7?tab=items",
                host,
                &[("accept", BROWSER), ("sec-fetch-mode", "navigate")],
            ))
            .await,
    );
    assert_eq!(redirected.http_status, 302, "{redirected:?}");
    assert_eq!(
        redirected.grpc_code, 16,
        "the Check itself is UNAUTHENTICATED"
    );
    assert_eq!(
        location(&redirected),
        "https://login.example.test/web-login?redirect=https%3A%2F%2Fapp.example.test%2Forders%2F7%3Ftab%3Ditems"
    );
    assert_eq!(
        redirected.headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    assert!(!redirected.headers.contains_key("www-authenticate"));
    assert!(redirected.headers.contains_key("x-checkpoint-decision-id"));
    assert_eq!(redirected.body, "");

    // An expired or revoked session (the authentication manager answers 401): also sent to
    // log in, since logging in again is what helps.
    let expired = answer(
        &server
            .check(https(
                "GET",
                "/orders",
                host,
                &[("accept", BROWSER), ("authorization", "Bearer expired")],
            ))
            .await,
    );
    assert_eq!(expired.http_status, 302, "{expired:?}");
    assert_eq!(
        carried(location(&expired), "redirect").as_deref(),
        Some("https://app.example.test/orders")
    );

    // Everything else keeps its answer.
    for (what, method, path, headers, status) in [
        (
            "an API client",
            "GET",
            "/orders",
            vec![("accept", "application/json")],
            401,
        ),
        (
            "fetch's default",
            "GET",
            "/orders",
            vec![("accept", "*/*")],
            401,
        ),
        ("no Accept", "GET", "/orders", vec![], 401),
        (
            "HTML below JSON",
            "GET",
            "/orders",
            vec![("accept", "text/html;q=0.5, application/json")],
            401,
        ),
        (
            "a script in a page",
            "GET",
            "/orders",
            vec![("accept", BROWSER), ("sec-fetch-mode", "cors")],
            401,
        ),
        (
            "a form post",
            "POST",
            "/orders",
            vec![("accept", BROWSER)],
            401,
        ),
        (
            "logged in, not allowed",
            "GET",
            "/admin",
            vec![("accept", BROWSER), ("authorization", "Bearer bob")],
            403,
        ),
        (
            "identity provider down",
            "GET",
            "/orders",
            vec![("accept", BROWSER), ("authorization", "Bearer status-503")],
            503,
        ),
        (
            "logged in",
            "GET",
            "/orders",
            vec![("accept", BROWSER), ("authorization", "Bearer alice")],
            200,
        ),
        ("public", "GET", "/", vec![("accept", BROWSER)], 200),
    ] {
        let got = answer(&server.check(https(method, path, host, &headers)).await);
        assert_eq!(got.http_status, status, "{what}: {got:?}");
        assert!(!got.headers.contains_key("location"), "{what}: {got:?}");
        if status == 401 {
            let body: serde_json::Value = serde_json::from_str(&got.body).expect("JSON body");
            assert_eq!(body["statusCode"], 401, "{what}");
            assert_eq!(
                got.headers.get("www-authenticate").map(String::as_str),
                Some("Bearer")
            );
        }
    }

    // Security: a forged Host is carried only as a parameter value, never as the target.
    for forged in [
        "evil.example",
        "evil.example/phish?",
        "app.example.test@evil.example",
        "evil.example#",
    ] {
        let got = answer(
            &server
                .check(https("GET", "/orders", forged, &[("accept", BROWSER)]))
                .await,
        );
        assert_eq!(got.http_status, 302, "{forged}");
        let target = location(&got);
        assert!(
            target.starts_with("https://login.example.test/web-login?redirect="),
            "{forged}: {target}"
        );
        let parsed = reqwest::Url::parse(target).expect("URL");
        assert_eq!(parsed.host_str(), Some("login.example.test"), "{forged}");
        let back = carried(target, "redirect").expect("the parameter");
        // A host that is not a plain host is dropped: only the path goes.
        if forged == "evil.example" {
            assert_eq!(back, "https://evil.example/orders");
        } else {
            assert_eq!(back, "/orders", "{forged}");
        }
    }

    // A proxyless client's Check (pairs, no scheme or host fields): the path only.
    let pairs = answer(
        &server
            .check(request_pairs(
                "GET",
                "/orders?x=1",
                &[
                    (":authority", "app.example.test".as_bytes()),
                    ("accept", BROWSER.as_bytes()),
                ],
            ))
            .await,
    );
    assert_eq!(pairs.http_status, 302, "{pairs:?}");
    assert_eq!(
        carried(location(&pairs), "redirect").as_deref(),
        Some("/orders?x=1")
    );

    // The 302s are counted under their own reason.
    let metrics = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("checkpoint_checks_total{decision=\"deny\",reason=\"login_redirect\"} 7"),
        "{metrics}"
    );
}

/// The native file's section, with an allowed-hosts list: a host on the list is carried whole,
/// any other only as its path; the login URL's own query is kept and the parameter is the
/// configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_file_configures_the_redirect_with_allowed_hosts() {
    let server = Server::start_native(
        r#"
version: 1
server: { shutdown_delay: 0 }
rules:
  inline:
    /orders:
      ALL: { authorization: { expression: "true", public: false } }
identity:
  sources:
    - type: anonymous
login_redirect:
  url: "https://login.example.test/login?app=shop"
  param: return_to
  allowed_hosts: [app.example.test, "admin.example.test:8443"]
"#,
    )
    .await;
    for (host, back) in [
        ("app.example.test", "https://app.example.test/orders?id=1"),
        (
            "ADMIN.example.test:8443",
            "https://admin.example.test:8443/orders?id=1",
        ),
        ("evil.example", "/orders?id=1"),
        ("admin.example.test", "/orders?id=1"),
    ] {
        let got = answer(
            &server
                .check(https("GET", "/orders?id=1", host, &[("accept", BROWSER)]))
                .await,
        );
        assert_eq!(got.http_status, 302, "{host}: {got:?}");
        let target = location(&got);
        assert!(
            target.starts_with("https://login.example.test/login?app=shop&return_to="),
            "{host}: {target}"
        );
        assert_eq!(
            carried(target, "return_to").as_deref(),
            Some(back),
            "{host}"
        );
    }
}

/// `check-config` lists every problem of the redirect at once: the native file's with their
/// line and column, the variables' by name; strict mode off is refused, not ignored.
#[test]
fn check_config_lists_every_problem_of_the_redirect_with_its_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("checkpoint.yaml");
    std::fs::write(
        &config,
        "version: 1\n\
         rules: { inline: {} }\n\
         identity: { sources: [ { type: anonymous } ] }\n\
         responses: { strict_mode: false }\n\
         login_redirect:\n  \
           url: \"https://login.example.test/web-login#top\"\n  \
           param: \"re direct\"\n  \
           allowed_hosts: [ \"evil.example/x\" ]\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .env("CHECKPOINT_CONFIG", &config)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}{stderr}");
    let label = config.display().to_string();
    for expected in [
        format!(
            "{label}:6:3: login_redirect.url: \"https://login.example.test/web-login#top\" has a fragment"
        ),
        format!("{label}:7:3: login_redirect.param: \"re direct\" is not a query parameter name"),
        format!("{label}:8:3: login_redirect.allowed_hosts: \"evil.example/x\" is not a host name"),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nin\n{stderr}");
    }

    // Valid otherwise, strict mode off: the one cross-field validator refuses it.
    std::fs::write(
        &config,
        "version: 1\n\
         rules: { inline: {} }\n\
         identity: { sources: [ { type: anonymous } ] }\n\
         responses: { strict_mode: false }\n\
         login_redirect: { url: \"https://login.example.test/web-login\" }\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .env("CHECKPOINT_CONFIG", &config)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{label}:5:1: login_redirect: the login redirect needs strict mode"
        )),
        "{stderr}"
    );

    // The same problems by Mia's variables, each named.
    std::fs::write(dir.path().join("auth.json"), "{}").expect("write rules");
    let output = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .env("CONFIGURATION_PATH", dir.path())
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("TRUST_MIA_USER_HEADERS", "true")
        .env("AUTHORIZATION_STRICT_MODE_ENABLED", "false")
        .env("CHECKPOINT_LOGIN_REDIRECT_URL", "/web-login")
        .env("CHECKPOINT_LOGIN_REDIRECT_PARAM", "a&b")
        .env(
            "CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS",
            "ok.example, bad host",
        )
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for expected in [
        "CHECKPOINT_LOGIN_REDIRECT_URL: \"/web-login\" is not a URL",
        "CHECKPOINT_LOGIN_REDIRECT_PARAM: \"a&b\" is not a query parameter name",
        "CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS: \"bad host\" is not a host name",
    ] {
        assert!(stderr.contains(expected), "{expected}\nin\n{stderr}");
    }

    // Configured: check-config says so, and lists the headers the redirect reads for Envoy.
    let output = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .env("CONFIGURATION_PATH", dir.path())
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("TRUST_MIA_USER_HEADERS", "true")
        .env("CHECKPOINT_LOGIN_REDIRECT_URL", LOGIN)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("login redirect:  https://login.example.test/web-login (parameter redirect, every host carried)"),
        "{stdout}"
    );
    let headers = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("request headers:"))
        .expect("request headers line");
    assert!(
        headers.contains("accept") && headers.contains("sec-fetch-mode"),
        "{headers}"
    );
    assert!(!stdout.contains("warning:"), "{stdout}");

    // A login page behind a rule that needs a login here would loop: a warning, not an error
    // (another gateway may serve it).
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{"/": {"ALL": {"authorization": {"expression": "true", "public": false}}}}"#,
    )
    .expect("write rules");
    let output = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .env("CONFIGURATION_PATH", dir.path())
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("TRUST_MIA_USER_HEADERS", "true")
        .env("CHECKPOINT_LOGIN_REDIRECT_URL", LOGIN)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning:         login redirect: the login page's path /web-login matches rule \"/\" ALL, which needs a login"),
        "{stdout}"
    );
}
