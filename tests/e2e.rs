//! The whole flow for real: a client talks TLS to Envoy, Envoy asks checkpoint (gRPC Check),
//! checkpoint asks the test IdP's user-info endpoint, and allowed requests reach the echo
//! upstream, which answers with the headers it received. All processes run on 127.0.0.1.
//!
//! The rules are `envoy/demo/auth.json`: `GET /` and `GET /public` are public, `/api` needs a
//! login, `/api/admin` needs the group `admins`, `/api/orders` needs permissions. Users (from
//! `tests/idp/fixtures.json`): alice (admins, engineering) and bob (viewers).
//!
//! Each test starts its own stack ([`e2e_support::Stack`]); needs `scripts/setup.sh` (Envoy in
//! `.venv`, the IdP's `node_modules`) and `openssl`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{Options, Reply, Stack};
use serde_json::{Value, json};

const IDENTITY_HEADERS: [&str; 3] = ["miauserid", "miausergroups", "miauserproperties"];

async fn get(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&stack.client, stack, "GET", path, headers).await
}

async fn send(
    client: &reqwest::Client,
    stack: &Stack,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method.clone(), stack.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
    Reply::from(response).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The echo upstream answered, saw the request as sent, and got none of the identity headers.
fn assert_anonymous_upstream(reply: &Reply, path: &str, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
    assert!(
        reply.reached_upstream(),
        "{what}: not the upstream's answer: {}",
        reply.text
    );
    assert_eq!(reply.json["path"], path, "{what}: upstream path");
    for name in IDENTITY_HEADERS {
        assert_eq!(
            reply.upstream_header(name),
            None,
            "{what}: upstream got {name}"
        );
    }
}

/// A denial from checkpoint: the status, the JSON body, and nothing reached the upstream.
fn assert_denied(reply: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert!(
        !reply.reached_upstream(),
        "{what}: the upstream answered: {}",
        reply.text
    );
    assert_eq!(
        reply.json["statusCode"], status,
        "{what}: body {}",
        reply.text
    );
    assert_eq!(reply.json["error"], error, "{what}: body {}", reply.text);
    assert!(
        reply.json["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: body {}",
        reply.text
    );
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: content-type {:?}",
        reply.header("content-type")
    );
}

/// Cases 1 to 5 and 7: public and private routes, groups, spoofed identity headers, no rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_decisions_and_upstream_headers() {
    let stack = Stack::start(Options::default()).await;
    let alice = stack.token("alice").await;
    let bob = stack.token("bob").await;

    // 1. Anonymous on a public route: through, with no identity headers.
    let reply = get(&stack, "/public?x=1", &[]).await;
    assert_anonymous_upstream(&reply, "/public?x=1", "anonymous GET /public");
    assert_eq!(reply.json["method"], "GET");
    let reply = get(&stack, "/", &[]).await;
    assert_anonymous_upstream(&reply, "/", "anonymous GET /");

    // 2. Anonymous on a private route: 401 with the JSON body and a challenge.
    let reply = get(&stack, "/api/hello", &[]).await;
    assert_denied(&reply, 401, "Unauthorized", "anonymous GET /api/hello");
    assert!(
        reply.header("www-authenticate").is_some(),
        "401 without www-authenticate: {reply:?}"
    );
    // A token the IdP does not know is the same as none.
    let reply = get(
        &stack,
        "/api/hello",
        &[("authorization", "Bearer not-a-real-token")],
    )
    .await;
    assert_denied(
        &reply,
        401,
        "Unauthorized",
        "unknown token on GET /api/hello",
    );

    // 3. alice (admins) on the admin route: through, with her identity.
    let auth = bearer(&alice);
    let reply = get(&stack, "/api/admin/users", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "alice GET /api/admin/users: {reply:?}");
    assert!(reply.reached_upstream(), "{}", reply.text);
    assert_eq!(reply.json["path"], "/api/admin/users");
    assert_eq!(reply.upstream_header("miauserid"), Some("alice"));
    let groups = reply
        .upstream_header("miausergroups")
        .expect("miausergroups for alice");
    let groups: Vec<&str> = groups.split(',').collect();
    assert!(groups.contains(&"admins"), "alice's groups: {groups:?}");
    assert!(
        groups.contains(&"engineering"),
        "alice's groups: {groups:?}"
    );
    let properties: Value = serde_json::from_str(
        reply
            .upstream_header("miauserproperties")
            .expect("miauserproperties"),
    )
    .expect("miauserproperties is JSON");
    assert_eq!(
        properties,
        json!({
            "email": "alice@example.test",
            "preferred_username": "alice",
            "properties": { "department": "R&D", "tenant": "acme", "employee_id": "E-1001" }
        }),
        "only the USER_PROPERTIES_TO_PROXY fields, with their values"
    );
    // Permissions come from CUSTOM_PERMISSIONS_KEY: alice may write orders, bob may not.
    let reply = send(
        &stack.client,
        &stack,
        "POST",
        "/api/orders",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 200, "alice POST /api/orders: {reply:?}");
    assert_eq!(reply.json["method"], "POST");

    // 4. bob (viewers) on the admin route: 403; on a plain private route: through as bob.
    let auth = bearer(&bob);
    let reply = get(&stack, "/api/admin/users", &[("authorization", &auth)]).await;
    assert_denied(&reply, 403, "Forbidden", "bob GET /api/admin/users");
    let reply = send(
        &stack.client,
        &stack,
        "POST",
        "/api/orders",
        &[("authorization", &auth)],
    )
    .await;
    assert_denied(&reply, 403, "Forbidden", "bob POST /api/orders");
    let reply = get(&stack, "/api/orders", &[("authorization", &auth)]).await;
    assert_eq!(
        reply.status, 200,
        "bob GET /api/orders (orders:read): {reply:?}"
    );
    assert_eq!(reply.upstream_header("miauserid"), Some("bob"));

    // 5. Spoofed identity headers never reach the upstream.
    let spoofed = [
        ("miauserid", "admin"),
        ("miausergroups", "admins"),
        ("miauserproperties", "{\"email\":\"admin@example.test\"}"),
    ];
    let reply = get(&stack, "/public", &spoofed).await;
    assert_anonymous_upstream(
        &reply,
        "/public",
        "anonymous GET /public with spoofed headers",
    );
    let mut with_bob = spoofed.to_vec();
    with_bob.push(("authorization", &auth));
    let reply = get(&stack, "/api/hello", &with_bob).await;
    assert_eq!(
        reply.status, 200,
        "bob GET /api/hello with spoofed headers: {reply:?}"
    );
    assert_eq!(
        reply.upstream_header("miauserid"),
        Some("bob"),
        "{}",
        reply.text
    );
    assert_eq!(
        reply.upstream_header("miausergroups"),
        Some("viewers"),
        "{}",
        reply.text
    );
    let properties: Value = serde_json::from_str(
        reply
            .upstream_header("miauserproperties")
            .expect("bob's properties"),
    )
    .expect("JSON");
    assert_eq!(properties["email"], "bob@example.test", "{properties}");
    // A spoofed group does not open the admin route either.
    let reply = get(&stack, "/api/admin/users", &with_bob).await;
    assert_denied(
        &reply,
        403,
        "Forbidden",
        "bob GET /api/admin/users claiming admins",
    );

    // 7. No rule for the path, or for the method on a known path: 404 with the JSON body.
    let reply = send(&stack.client, &stack, "DELETE", "/nowhere", &[]).await;
    assert_denied(&reply, 404, "Not Found", "anonymous DELETE /nowhere");
    let reply = send(&stack.client, &stack, "POST", "/public", &[]).await;
    assert_denied(&reply, 404, "Not Found", "anonymous POST /public");
    let auth = bearer(&alice);
    let reply = send(
        &stack.client,
        &stack,
        "DELETE",
        "/api/orders/1",
        &[("authorization", &auth)],
    )
    .await;
    assert_denied(
        &reply,
        404,
        "Not Found",
        "alice DELETE /api/orders/1 (only GET and POST)",
    );
}

/// Case 6: an access token past its expiry is refused with 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_401() {
    const TTL: u64 = 3;
    let stack = Stack::start(Options {
        token_ttl_seconds: Some(TTL as u32),
        ..Options::default()
    })
    .await;
    let issued = Instant::now();
    let fresh = stack.token("alice").await;
    let unused = stack.token("alice").await;

    // While valid, a short-lived token works end to end (so the 401 below is about expiry).
    let reply = get(&stack, "/api/hello", &[("authorization", &bearer(&fresh))]).await;
    assert!(
        issued.elapsed() < Duration::from_secs(TTL),
        "too slow to use the token while valid"
    );
    assert_eq!(reply.status, 200, "alice with a fresh token: {reply:?}");
    assert_eq!(reply.upstream_header("miauserid"), Some("alice"));

    // A token checkpoint has never seen, used 1.5 s past its expiry.
    tokio::time::sleep(
        (issued + Duration::from_millis(TTL * 1000 + 1500))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let reply = get(&stack, "/api/hello", &[("authorization", &bearer(&unused))]).await;
    assert_denied(&reply, 401, "Unauthorized", "alice with an expired token");
    assert!(reply.header("www-authenticate").is_some(), "{reply:?}");
}

/// Case 8: with the IdP down, a request that needs the user gets 503 (never 401, never 200);
/// a public route still answers, as anonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_outage_is_503() {
    let mut stack = Stack::start(Options::default()).await;
    let used = stack.token("alice").await;
    // A token checkpoint has never seen: a cache cannot answer for it.
    let unseen = stack.token("alice").await;
    let reply = get(
        &stack,
        "/api/admin/users",
        &[("authorization", &bearer(&used))],
    )
    .await;
    assert_eq!(reply.status, 200, "alice before the outage: {reply:?}");

    stack.idp.stop();

    let auth = bearer(&unseen);
    let reply = get(&stack, "/api/admin/users", &[("authorization", &auth)]).await;
    assert_denied(
        &reply,
        503,
        "Service Unavailable",
        "alice GET /api/admin/users, IdP down",
    );
    let reply = get(&stack, "/api/hello", &[("authorization", &auth)]).await;
    assert_denied(
        &reply,
        503,
        "Service Unavailable",
        "alice GET /api/hello, IdP down",
    );
    // docs/mia-compatibility.md: where the outcome does not depend on the user, the request goes on as anonymous.
    let reply = get(&stack, "/public", &[("authorization", &auth)]).await;
    assert_anonymous_upstream(&reply, "/public", "alice GET /public, IdP down");
    assert_eq!(reply.upstream_header("authorization"), Some(auth.as_str()));
    // checkpoint is still up and ready: the outage is the IdP's, not its own.
    stack.checkpoint.assert_running();
}

/// Output of `openssl s_client` against Envoy's TLS listener (stdin closed, bounded).
async fn s_client(stack: &Stack, args: &[&str]) -> (bool, String) {
    let ca = stack.tls.join("ca.crt");
    let mut command = tokio::process::Command::new("openssl");
    command
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", stack.https_port))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&ca)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("openssl s_client did not finish within 10 s")
        .expect("run openssl (installed by scripts/setup.sh)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Cases 9, 10 and 11: the TLS policy, the HTTP redirect, and the optional client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_policy_redirect_and_client_certificate() {
    let stack = Stack::start(Options::default()).await;

    // 9. TLS 1.2 with an ECDHE + AEAD suite works and verifies against the test CA...
    let (ok, text) = s_client(
        &stack,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    .await;
    assert!(ok, "TLS 1.2 handshake failed:\n{text}");
    assert!(
        text.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{text}"
    );
    assert!(text.contains("Protocol  : TLSv1.2"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    // ... TLS 1.3 too ...
    let (ok, text) = s_client(&stack, &["-tls1_3"]).await;
    assert!(
        ok && text.contains("TLSv1.3"),
        "TLS 1.3 handshake failed:\n{text}"
    );
    // ... a TLS 1.2 suite without ECDHE or without AEAD is refused ...
    for cipher in ["ECDHE-ECDSA-AES128-SHA", "AES128-GCM-SHA256"] {
        let (ok, text) = s_client(&stack, &["-tls1_2", "-cipher", cipher]).await;
        assert!(
            !ok && !text.contains(&format!("Cipher is {cipher}")),
            "{cipher} was accepted:\n{text}"
        );
        assert!(
            text.contains("alert"),
            "{cipher}: expected a handshake alert from Envoy:\n{text}"
        );
    }
    // ... and TLS 1.1 is refused by Envoy: the client offers it, Envoy answers with a
    // protocol_version alert. (openssl prints "Protocol  : TLSv1.1" for the attempted session
    // even then; "Cipher is (NONE)" is what says no session was made.)
    let (ok, text) = s_client(&stack, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await;
    assert!(!ok, "TLS 1.1 handshake: openssl exited 0:\n{text}");
    assert!(
        text.contains("Cipher is (NONE)"),
        "TLS 1.1 was negotiated:\n{text}"
    );
    assert!(
        !text.contains("Cipher is ECDHE"),
        "TLS 1.1 was negotiated:\n{text}"
    );
    assert!(
        text.contains("alert protocol version"),
        "TLS 1.1: no protocol_version alert from Envoy:\n{text}"
    );

    // 10. Plain HTTP only redirects, to the same path on the HTTPS port; nothing is checked or proxied.
    let response = stack
        .plain
        .get(format!(
            "http://127.0.0.1:{}/api/hello?x=1",
            stack.http_port
        ))
        .send()
        .await
        .expect("plain HTTP request");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert!(status == 301 || status == 308, "HTTP answered {status}");
    assert_eq!(
        location.as_deref(),
        Some(format!("https://127.0.0.1:{}/api/hello?x=1", stack.https_port).as_str()),
        "redirect location"
    );

    // 11. The optional client certificate is accepted, and Envoy verified it: its access log
    // names the certificate's SPIFFE id for this request.
    let request_id = format!("e2e-client-certificate-{}", std::process::id());
    let reply = send(
        &stack.client_with_certificate(),
        &stack,
        "GET",
        "/public",
        &[("x-request-id", &request_id)],
    )
    .await;
    assert_anonymous_upstream(&reply, "/public", "GET /public with a client certificate");
    assert_eq!(
        reply.upstream_header("x-request-id"),
        Some(request_id.as_str())
    );
    let expected = format!("id={request_id} peer=spiffe://checkpoint.test/ns/default/sa/client");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.envoy.stdout().contains(&expected) {
        assert!(
            Instant::now() < deadline,
            "Envoy's access log has no {expected:?}:\n{}",
            stack.envoy.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without a certificate the same log has no peer.
    let reply = get(&stack, "/public", &[("x-request-id", "e2e-no-certificate")]).await;
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack
        .envoy
        .stdout()
        .contains("id=e2e-no-certificate peer=-")
    {
        assert!(
            Instant::now() < deadline,
            "no access log line for e2e-no-certificate:\n{}",
            stack.envoy.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The checkpoint cluster's `idle_timeout` in envoy/envoy.yaml (tests/manifests.rs holds the files
/// to it).
const SHIPPED_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// More Checks in flight than Envoy's default circuit breaker allows (1,024) are all asked of
/// checkpoint and all answered by it: envoy/envoy.yaml raises the `checkpoint` cluster's
/// `max_requests` to checkpoint's own bound. Past Envoy's default, Envoy would answer 503 itself
/// without asking checkpoint (`upstream_rq_active_overflow`), which is what the soak's failures at
/// high rates were. The connections to checkpoint are cold, so this also holds the cluster's
/// `max_concurrent_streams` (checkpoint's 256): without it Envoy puts the waiting Checks on a new
/// connection before checkpoint's SETTINGS arrive, and checkpoint refuses those past 256.
///
/// An authentication manager written here holds every user-info call until all of them have
/// arrived, so that all the Checks are in flight at once; the deadline is raised from 0.5 s to
/// 8 s so that a slow machine still gets them all in.
///
/// Afterwards the cluster's `idle_timeout` closes every connection the burst opened (this waits
/// for it: about 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_checks_in_flight_than_envoys_default_breaker_are_answered_by_checkpoint() {
    // Envoy allows 100 streams per downstream connection (envoy/envoy.yaml): 12 connections.
    const CLIENTS: usize = 12;
    const PER_CLIENT: usize = 100;
    const HELD: usize = CLIENTS * PER_CLIENT;
    const ENVOY_DEFAULT: usize = 1024;
    const HOLD_AT_MOST: Duration = Duration::from_secs(6);
    const _: () = assert!(
        HELD > ENVOY_DEFAULT,
        "more Checks than Envoy's default breaker"
    );

    let (arrived, arrivals) = tokio::sync::watch::channel(0usize);
    let arrived = std::sync::Arc::new(arrived);
    let app = axum::Router::new().route(
        "/userinfo",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let arrived = arrived.clone();
            let mut arrivals = arrivals.clone();
            async move {
                arrived.send_modify(|n| *n += 1);
                // Every caller waits for the last one (or gives up after HOLD_AT_MOST).
                let _ = tokio::time::timeout(HOLD_AT_MOST, arrivals.wait_for(|n| *n >= HELD)).await;
                let user = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_owned();
                axum::Json(json!({ "sub": user, "groups": ["held"] }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let manager = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stack = Stack::start(Options {
        userinfo_url: Some(format!("http://{manager}/userinfo")),
        check_deadline: Some(Duration::from_secs(8)),
        ..Options::default()
    })
    .await;

    // One connection per client, opened (and its TLS handshake done) before the burst.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = stack.new_client();
        // Envoy's own health route: no Check, so the authentication manager sees nothing yet.
        let warm = client
            .get(stack.url("/-/healthz"))
            .send()
            .await
            .expect("warm-up request");
        assert_eq!(warm.status(), 200, "warm-up on Envoy's health route");
        clients.push(client);
    }

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for i in 0..PER_CLIENT {
            let request = client
                .get(stack.url("/api/held"))
                .header("authorization", format!("Bearer held-{c}-{i}"))
                .timeout(Duration::from_secs(20));
            calls.spawn(async move {
                let reply = Reply::from(request.send().await.expect("an answer")).await;
                (format!("held-{c}-{i}"), reply)
            });
        }
    }
    // Released together, the held requests also reach the upstream together, past the upstream
    // cluster's own default breaker: Envoy's router answers those 503 with x-envoy-overloaded.
    // They were let through by checkpoint all the same, which the counters below show.
    let mut wrong = Vec::new();
    let mut through = 0;
    while let Some(call) = calls.join_next().await {
        let (user, reply) = call.expect("request task");
        if reply.status == 200 && reply.upstream_header("miauserid") == Some(user.as_str()) {
            through += 1;
        } else if !(reply.status == 503 && reply.header("x-envoy-overloaded").is_some()) {
            wrong.push(format!("{user}: {} {:?}", reply.status, reply.headers));
        }
    }
    let elapsed = started.elapsed();
    let counters = stack
        .envoy_stats("ext_authz\\.(ok|error|denied)$|cluster\\.checkpoint\\.upstream_(rq_(active_overflow|pending_overflow|timeout|5xx)|cx_overflow)$")
        .await;
    assert!(
        wrong.is_empty(),
        "{} of {HELD} held requests got an answer that is neither their user let through nor the \
         upstream's overflow, e.g. {}; Envoy's counters:\n{counters}",
        wrong.len(),
        wrong[0]
    );
    assert!(
        through > 0,
        "some requests reached the upstream as their user"
    );
    assert_eq!(
        stack.envoy_stat("http.https.ext_authz.ok").await,
        HELD as u64,
        "every held Check answered OK by checkpoint; Envoy's counters:\n{counters}"
    );
    assert_eq!(
        stack.envoy_stat("http.https.ext_authz.error").await,
        0,
        "no Check failed on Envoy's side; Envoy's counters:\n{counters}"
    );
    assert!(
        elapsed < HOLD_AT_MOST,
        "the user-info calls were released by the last arrival, not by the hold's timeout, so \
         all {HELD} Checks were in flight at once (took {elapsed:?})"
    );
    assert_eq!(
        stack
            .envoy_stat("cluster.checkpoint.upstream_rq_active_overflow")
            .await,
        0,
        "Envoy's circuit breaker refused no Check"
    );

    // The burst needed several connections (256 streams each); now they are idle, and the
    // cluster's idle_timeout closes every one of them, so that checkpoint gives back the HTTP/2
    // state it kept for each. Without the setting, Envoy keeps them for an hour.
    let opened = stack
        .envoy_stat("cluster.checkpoint.upstream_cx_total")
        .await;
    assert!(
        opened >= HELD.div_ceil(256) as u64,
        "the burst opened {opened} connections to checkpoint"
    );
    let deadline = Instant::now() + SHIPPED_IDLE_TIMEOUT + Duration::from_secs(20);
    loop {
        let active = stack
            .envoy_stat("cluster.checkpoint.upstream_cx_active")
            .await;
        if active == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{active} of {opened} connections to checkpoint still open {:?} after the burst",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        stack
            .envoy_stat("cluster.checkpoint.upstream_cx_idle_timeout")
            .await,
        opened,
        "every connection was closed for being idle"
    );
}
