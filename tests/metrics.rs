//! Observability with real parts: checkpoint's `/metrics` through `promtool check metrics` and a
//! real Prometheus server scraping the status port; the counters of decisions, identity answers,
//! the identity cache and the JWKS against what the test did (the test user-info server, a JWKS
//! served here); the decision id on denies, in the decision log line of the real binary, and
//! upstream only when configured; the Grafana dashboard's queries against what checkpoint
//! exposes and against Prometheus.
//!
//! promtool and prometheus come from the Debian package `prometheus` (scripts/setup.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod e2e_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use e2e_support::{Proc, free_ports, repo, spawn_checkpoint_ready};
use serde_json::{Value, json};
use support::userinfo::UserInfoServer;
use support::{Server, answer, request};

/// Bound of every wait on a process or a scrape.
const WAIT: Duration = Duration::from_secs(30);

const DECISION_ID: &str = "x-checkpoint-decision-id";

const RULES: &str = r#"{
  "/public": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/private": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

// ---- reading the exposition ---------------------------------------------------------------

/// One sample line: its name, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a text exposition (label values here hold no `,`, `"` or `}`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// The value of the one sample named `name` with exactly `labels` (other labels than `le`).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text)
        .into_iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
}

/// Whether a sample named `name` with exactly `labels` exists.
fn has(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text)
        .iter()
        .any(|(n, l, _)| n == name && *l == want)
}

/// Every sample name a scrape may show: the `# TYPE` names, with a histogram's series.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("name and type");
        if kind == "histogram" {
            for suffix in ["_bucket", "_count", "_sum"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

async fn scrape(server: &Server) -> String {
    let response = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("body")
}

// ---- the servers --------------------------------------------------------------------------

/// A JWKS document with two signing keys (the test keys of `tests/cases/jwt-keys.json`), served
/// on loopback. Returns its URL.
async fn serve_jwks() -> String {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/cases/jwt-keys.json")).expect("keys file"),
    )
    .expect("keys JSON");
    let key = |name: &str, kid: &str, alg: &str| {
        let mut jwk = cases[name]["public"].clone();
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        jwk
    };
    let document = json!({ "keys": [key("rsa", "rs", "RS256"), key("ec", "es", "ES256")] });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks")
}

/// checkpoint with a JWT source (keys from [`serve_jwks`]) before the user-info source, and the
/// identity cache on (its defaults).
async fn start_with_identity() -> (UserInfoServer, Server) {
    let userinfo = UserInfoServer::start().await;
    let jwks = serve_jwks().await;
    let yaml = format!(
        r#"
version: 1
server: {{ shutdown_delay: 0 }}
rules:
  inline: {RULES}
identity:
  sources:
    - {{ type: jwt, issuer: "https://issuer.test", jwks_uri: "{jwks}" }}
    - {{ type: userinfo, url: "{url}" }}
"#,
        url = userinfo.url("/userinfo"),
    );
    let server = Server::start_native(&yaml).await;
    (userinfo, server)
}

/// A JWT-shaped token naming the served RSA key, with a signature that does not verify.
fn forged_jwt() -> String {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(json!({"alg": "RS256", "kid": "rs", "typ": "JWT"})),
        part(json!({"sub": "mallory", "iss": "https://issuer.test", "exp": 4_102_444_800u64})),
        URL_SAFE_NO_PAD.encode([7u8; 256])
    )
}

async fn status(server: &Server, path: &str, headers: &[(&str, &str)]) -> u16 {
    answer(&server.check(request("GET", path, headers)).await).http_status
}

// ---- the tests ----------------------------------------------------------------------------

/// Decisions, identity answers, the cache and the JWKS, counted as the test made them: a user
/// (one user-info call, then cache hits), an anonymous answer (401 from user-info, cached), an
/// outage (500, never cached), a forged JWT (invalid, cached), a request without credential
/// (user-info is still asked, as in Mia's flow: anonymous) and a request no rule matches (no
/// identity request at all). Only outbound calls are timed: user-info's, not the JWT source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_the_checks_the_cache_and_the_identity_answers() {
    let (userinfo, server) = start_with_identity().await;
    let forged = format!("Bearer {}", forged_jwt());
    let cases: [(&str, u16, usize); 5] = [
        ("Bearer alice", 200, 3),
        ("Bearer status-401", 401, 2),
        ("Bearer status-500", 503, 2),
        (forged.as_str(), 401, 2),
        ("", 401, 1),
    ];
    for (token, want, times) in cases {
        for _ in 0..times {
            let headers: &[(&str, &str)] = if token.is_empty() {
                &[]
            } else {
                &[("authorization", token)]
            };
            assert_eq!(status(&server, "/private", headers).await, want, "{token}");
        }
    }
    assert_eq!(status(&server, "/nowhere", &[]).await, 404);
    let text = scrape(&server).await;
    let checks = |decision, reason| {
        value(
            &text,
            "checkpoint_checks_total",
            &[("decision", decision), ("reason", reason)],
        )
    };
    assert_eq!(checks("allow", "allowed"), 3.0);
    assert_eq!(checks("deny", "login_required"), 3.0);
    assert_eq!(checks("deny", "identity_unavailable"), 2.0);
    assert_eq!(checks("deny", "invalid_credential"), 2.0);
    assert_eq!(checks("deny", "no_rule"), 1.0);
    assert_eq!(checks("deny", "invalid_path"), 0.0);
    let duration_count = |decision| {
        value(
            &text,
            "checkpoint_check_duration_seconds_count",
            &[("decision", decision)],
        )
    };
    assert_eq!(duration_count("allow"), 3.0);
    assert_eq!(duration_count("deny"), 8.0);

    let identity = |source, outcome| {
        value(
            &text,
            "checkpoint_identity_requests_total",
            &[("source", source), ("outcome", outcome)],
        )
    };
    assert_eq!(identity("userinfo", "user"), 1.0);
    assert_eq!(identity("userinfo", "anonymous"), 2.0);
    assert_eq!(identity("userinfo", "unavailable"), 2.0);
    assert_eq!(identity("userinfo", "invalid"), 0.0);
    assert_eq!(identity("jwt", "invalid"), 1.0);
    assert_eq!(identity("jwt", "user"), 0.0);
    let calls = value(
        &text,
        "checkpoint_identity_request_duration_seconds_count",
        &[("source", "userinfo")],
    );
    assert_eq!(calls, 5.0);
    assert_eq!(userinfo.count(), 5, "one histogram sample per real call");
    assert!(
        !has(
            &text,
            "checkpoint_identity_request_duration_seconds_count",
            &[("source", "jwt")]
        ),
        "local verification is not an outbound call"
    );

    let cache = |result| {
        value(
            &text,
            "checkpoint_identity_cache_requests_total",
            &[("result", result)],
        )
    };
    assert_eq!(
        (cache("hit"), cache("miss"), cache("coalesced")),
        (4.0, 6.0, 0.0)
    );
    // alice, the 401 answer, the forged token and the anonymous caller; outages are never kept.
    assert_eq!(value(&text, "checkpoint_identity_cache_entries", &[]), 4.0);

    assert_eq!(
        value(
            &text,
            "checkpoint_jwks_refreshes_total",
            &[("source", "jwt"), ("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "checkpoint_jwks_refreshes_total",
            &[("source", "jwt"), ("result", "failure")]
        ),
        0.0
    );
    assert_eq!(
        value(&text, "checkpoint_jwks_keys", &[("source", "jwt")]),
        2.0
    );
    assert_eq!(
        value(&text, "checkpoint_decision_log_dropped_total", &[]),
        0.0
    );
    assert_eq!(
        value(&text, "checkpoint_trace_spans_dropped_total", &[]),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "checkpoint_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Nothing from the request in any label.
    for secret in ["alice", "mallory", "/private", "status-"] {
        assert!(!text.contains(secret), "{secret} in the exposition");
    }
}

/// `promtool check metrics` (the exposition parses and follows Prometheus' naming rules) on a
/// scrape where every family has data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    let (_userinfo, server) = start_with_identity().await;
    status(&server, "/private", &[("authorization", "Bearer alice")]).await;
    status(&server, "/private", &[("authorization", "Bearer alice")]).await;
    status(&server, "/nowhere", &[]).await;
    let text = scrape(&server).await;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus: run scripts/setup.sh)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool: {said}");
}

/// A real Prometheus (scrape interval 1s) scraping the status port answers, through its HTTP
/// API, the numbers of Checks the test made by decision and reason; and every query of the
/// Grafana dashboard is one it accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_checks_by_decision_and_reason() {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let server = Server::start(RULES, &[("USERINFO_URL", url.as_str())]).await;
    let counts = [
        ("/public", 200, 7),
        ("/private", 401, 3),
        ("/nowhere", 404, 2),
    ];
    for (path, want, times) in counts {
        for _ in 0..times {
            assert_eq!(status(&server, path, &[]).await, want, "{path}");
        }
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let [port] = free_ports::<1>();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: checkpoint\n    static_configs:\n      - targets: [\"{}\"]\n",
            server.http
        ),
    )
    .expect("write prometheus.yml");
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn");
    let mut prometheus = Proc::spawn("prometheus", command, dir.path());
    let api = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(format!("{api}/-/ready")).send().await
            && r.status() == 200
        {
            break;
        }
        prometheus.assert_running();
        if Instant::now() > deadline {
            prometheus.fail("was not ready in time");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let query = |expr: String| {
        let client = client.clone();
        let api = api.clone();
        async move {
            let url = reqwest::Url::parse_with_params(
                &format!("{api}/api/v1/query"),
                &[("query", expr.as_str())],
            )
            .expect("query URL");
            let response = client.get(url).send().await.expect("query");
            let body: Value = response.json().await.expect("JSON answer");
            body
        }
    };
    let want: BTreeMap<(String, String), f64> = [
        (("allow", "allowed"), 7.0),
        (("deny", "login_required"), 3.0),
        (("deny", "no_rule"), 2.0),
    ]
    .into_iter()
    .map(|((d, r), v)| ((d.to_owned(), r.to_owned()), v))
    .collect();
    let deadline = Instant::now() + WAIT;
    let mut got = BTreeMap::new();
    while got != want {
        prometheus.assert_running();
        assert!(
            Instant::now() < deadline,
            "Prometheus answered {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = query("checkpoint_checks_total{job=\"checkpoint\"} > 0".into()).await;
        assert_eq!(body["status"], "success", "{body}");
        got = body["data"]["result"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|series| {
                let label = |name: &str| series["metric"][name].as_str().unwrap_or("").to_owned();
                let value: f64 = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("sample value");
                ((label("decision"), label("reason")), value)
            })
            .collect();
    }
    // Every reason's series exists from the start, at 0 until it happens.
    let body = query("count(checkpoint_checks_total)".into()).await;
    assert_eq!(body["data"]["result"][0]["value"][1], "10", "{body}");

    // Every dashboard query is valid PromQL over what was scraped; the decisions panel shows
    // data once two scrapes are in.
    for expr in dashboard_queries() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$job", "checkpoint");
        let body = query(expr.clone()).await;
        assert_eq!(body["status"], "success", "{expr}: {body}");
    }
    let decisions = dashboard_queries()
        .into_iter()
        .find(|e| e.contains("rate(checkpoint_checks_total"))
        .expect("a decisions-by-reason panel")
        .replace("$__rate_interval", "1m")
        .replace("$job", "checkpoint");
    let deadline = Instant::now() + WAIT;
    loop {
        let body = query(decisions.clone()).await;
        if body["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break;
        }
        assert!(Instant::now() < deadline, "{decisions}: no data: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    prometheus.stop();
}

/// The dashboard: valid JSON, the panels the operators asked for, and only metric names that a
/// real scrape shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_what_checkpoint_exposes() {
    let (_userinfo, server) = start_with_identity().await;
    status(&server, "/private", &[("authorization", "Bearer alice")]).await;
    let exposed = exposed_names(&scrape(&server).await);
    let queries = dashboard_queries();
    let mut used = BTreeSet::new();
    for expr in &queries {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("checkpoint_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            assert!(exposed.contains(&name), "{name} (in {expr}) is not exposed");
            used.insert(name);
        }
    }
    for name in [
        "checkpoint_checks_total",
        "checkpoint_check_duration_seconds_bucket",
        "checkpoint_identity_request_duration_seconds_bucket",
        "checkpoint_identity_requests_total",
        "checkpoint_identity_cache_requests_total",
        "checkpoint_decision_log_dropped_total",
    ] {
        assert!(used.contains(name), "no panel uses {name}");
    }
    assert!(
        queries
            .iter()
            .any(|q| q.contains("histogram_quantile") && q.contains("check_duration")),
        "Check latency percentiles"
    );
}

/// The decision id, with the real binary and its real decision log on stdout: a deny carries
/// the request's x-request-id; without one (or with one unsafe as a header value) a fresh random
/// id, different for every deny, never Envoy's stream id; the log line names the same id; an
/// allow does not send it upstream unless configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denies_carry_the_decision_id_and_the_log_line_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("auth.json"), RULES).expect("write rules");
    let (mut checkpoint, grpc, _) = spawn_checkpoint_ready(
        dir.path(),
        &[
            ("USERINFO_URL", "http://127.0.0.1:9/userinfo".to_owned()),
            ("LOG_LEVEL", "info".to_owned()),
        ],
    )
    .await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await
    .expect("connect");
    let mut check = async |path: &str, request_id: Option<&str>| {
        let mut headers = vec![];
        if let Some(id) = request_id {
            headers.push(("x-request-id", id));
        }
        let mut call = request("GET", path, &headers);
        // Envoy's stream id: never the decision id.
        if let Some(http) = call
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.id = "9876543210".into();
        }
        answer(&client.check(call).await.expect("Check").into_inner())
    };
    let is_random = |id: &str| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };

    let longest = "r".repeat(128);
    let too_long = "r".repeat(129);
    let mut ids = Vec::new();
    let given = check("/nowhere//x?token=s3cret", Some("req-7f3a")).await;
    assert_eq!(given.http_status, 404);
    assert_eq!(given.headers[DECISION_ID], "req-7f3a");
    ids.push(given.headers[DECISION_ID].clone());
    // The user-info URL answers nothing: identity unavailable, a 503 deny.
    let first = check("/private", None).await;
    let second = check("/private", None).await;
    assert_eq!((first.http_status, second.http_status), (503, 503));
    let (a, b) = (&first.headers[DECISION_ID], &second.headers[DECISION_ID]);
    assert!(is_random(a) && is_random(b), "{a} {b}");
    assert_ne!(a, b, "two denies without x-request-id share an id");
    ids.push(a.clone());
    ids.push(b.clone());
    let unsafe_id = check("/nowhere", Some("evil\r\nx-injected: 1")).await;
    assert!(is_random(&unsafe_id.headers[DECISION_ID]));
    ids.push(unsafe_id.headers[DECISION_ID].clone());
    let long = check("/nowhere", Some(&too_long)).await;
    assert!(is_random(&long.headers[DECISION_ID]));
    ids.push(long.headers[DECISION_ID].clone());
    let kept = check("/nowhere", Some(&longest)).await;
    assert_eq!(kept.headers[DECISION_ID], longest);
    ids.push(longest.clone());
    let allowed = check("/public", Some("req-allow")).await;
    assert_eq!(allowed.http_status, 200);
    assert!(
        !allowed.headers.contains_key(DECISION_ID),
        "not sent upstream unless configured: {:?}",
        allowed.headers
    );
    ids.push("req-allow".to_owned());

    // The decision lines, in order, name the same ids (the writer thread batches them).
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let lines: Vec<Value> = checkpoint
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "decision")
            .collect();
        if lines.len() >= ids.len() {
            break lines;
        }
        checkpoint.assert_running();
        if Instant::now() > deadline {
            checkpoint.fail(&format!("wrote {} decision lines", lines.len()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logged: Vec<&str> = lines
        .iter()
        .map(|l| l["decision_id"].as_str().expect("decision_id"))
        .collect();
    assert_eq!(logged, ids);
    assert!(!logged.contains(&"9876543210"));
    // A request no rule matched: its method and normalised path are logged (a 404 can be
    // understood), never the query string, which may hold credentials.
    assert_eq!(lines[0]["reason"], "no_rule");
    assert_eq!(lines[0]["request_method"], "GET");
    assert_eq!(lines[0]["path"], "/nowhere/x");
    assert!(!lines[0].to_string().contains("s3cret"), "{}", lines[0]);
    // A request that matched a rule names the rule instead.
    assert!(
        lines
            .last()
            .is_some_and(|l| l.get("path").is_none() && l["rule"] != "")
    );
    checkpoint.stop();
}

/// Configured (environment or native file), allowed requests carry the decision id upstream,
/// overwriting a client's copy (support::answer checks every upstream header overwrites).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_id_goes_upstream_when_configured() {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let from_env = Server::start(
        RULES,
        &[
            ("USERINFO_URL", url.as_str()),
            ("CHECKPOINT_DECISION_ID_HEADER_UPSTREAM", "true"),
        ],
    )
    .await;
    let from_file = Server::start_native(&format!(
        "version: 1\nserver: {{ shutdown_delay: 0 }}\nrules:\n  inline: {RULES}\n\
         identity: {{ sources: [ {{ type: userinfo, url: \"{url}\" }} ] }}\n\
         responses: {{ decision_id_upstream: true }}\n"
    ))
    .await;
    for server in [&from_env, &from_file] {
        let given = answer(
            &server
                .check(request(
                    "GET",
                    "/public",
                    &[("x-request-id", "req-up"), (DECISION_ID, "forged")],
                ))
                .await,
        );
        assert_eq!(given.http_status, 200);
        assert_eq!(given.headers[DECISION_ID], "req-up");
        assert!(!given.removed.iter().any(|r| r == DECISION_ID));
        let random = answer(&server.check(request("GET", "/public", &[])).await);
        assert_eq!(random.headers[DECISION_ID].len(), 32);
        let denied = answer(
            &server
                .check(request("GET", "/private", &[("x-request-id", "req-no")]))
                .await,
        );
        assert_eq!(denied.http_status, 401);
        assert_eq!(denied.headers[DECISION_ID], "req-no");
    }
}

/// The `expr` of every target of every panel of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = repo().join("envoy/grafana/checkpoint-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string());
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        // Rows hold their own panels when collapsed.
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(queries.len() >= 8, "{queries:?}");
    queries
}

/// Security: no credential reaches the logs, at any level. The real binary at `LOG_LEVEL=trace`
/// (every crate's events) answers Checks carrying a bearer token the authentication manager
/// refuses, one it cannot answer for, a session cookie and a token in the query string; then
/// neither stdout nor stderr holds any of them, while the decision lines for those Checks are
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_logs() {
    let userinfo = UserInfoServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("auth.json"), RULES).expect("write rules");
    let (mut checkpoint, grpc, _) = spawn_checkpoint_ready(
        dir.path(),
        &[
            ("USERINFO_URL", userinfo.url("/userinfo").to_string()),
            ("HEADERS_TO_PROXY", "cookie,authorization".to_owned()),
            ("LOG_LEVEL", "trace".to_owned()),
        ],
    )
    .await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await
    .expect("connect");

    let secrets = [
        "refused-t0ken-4a7c",
        "notjson",
        "s3ssion-c00kie-91be",
        "qu3ry-t0ken-5d20",
    ];
    // (path, headers, expected HTTP status)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case; 4] = [
        // The authentication manager answers 401: an invalid credential.
        (
            "/private",
            &[("authorization", "Bearer refused-t0ken-4a7c")],
            401,
        ),
        // It answers a page that is not JSON: identity unavailable.
        ("/private", &[("authorization", "Bearer notjson")], 503),
        // A session cookie, proxied to the authentication manager, which refuses it.
        (
            "/private",
            &[("cookie", "sid=s3ssion-c00kie-91be; theme=dark")],
            401,
        ),
        // A token in the query string of a path no rule matches.
        ("/nowhere?access_token=qu3ry-t0ken-5d20", &[], 404),
    ];
    for (path, headers, status) in cases {
        let got = answer(
            &client
                .check(request("GET", path, headers))
                .await
                .expect("Check")
                .into_inner(),
        );
        assert_eq!(got.http_status, status, "{path} {headers:?}");
    }
    assert!(
        userinfo.count() >= 3,
        "the authentication manager was asked"
    );

    // Every decision line is written before the process is stopped.
    let deadline = Instant::now() + WAIT;
    while checkpoint
        .stdout()
        .lines()
        .filter(|l| l.contains("\"message\":\"decision\""))
        .count()
        < cases.len()
    {
        checkpoint.assert_running();
        if Instant::now() > deadline {
            checkpoint.fail("did not write a decision line for every Check");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    checkpoint.stop();
    let (stdout, stderr) = (checkpoint.stdout(), checkpoint.stderr());
    assert!(
        stdout.lines().count() > cases.len(),
        "trace level logs more than the decision lines"
    );
    for secret in secrets {
        for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{secret} is in checkpoint's {name}: {line}");
            }
        }
    }
}
