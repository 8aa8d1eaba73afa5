//! Identity sources end to end, from the native configuration file (`CHECKPOINT_CONFIG`): a client
//! talks TLS to real Envoy, Envoy asks checkpoint, checkpoint asks its sources in order — `mtls`
//! (the client certificate's SPIFFE id), `jwt` (local validation against the real IdP's keys),
//! `userinfo` (the IdP's `/me`, for opaque tokens) — and allowed requests reach the echo upstream.
//!
//! The IdP runs with `IDP_LOG=1`, so each test can see exactly which requests reached it
//! ([`e2e_support::idp_requests`]). Users (from `tests/idp/fixtures.json`): alice (admins,
//! engineering) and bob (viewers). Needs `scripts/setup.sh` (Envoy in `.venv`, the IdP's
//! `node_modules`) and `openssl`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use e2e_support::{NativeAddrs, NativeStack, Proc, Reply, Stack, idp_requests};
use serde_json::Value;

/// The client certificate's URI SAN (scripts/make-certs.sh).
const CLIENT_SPIFFE_ID: &str = "spiffe://checkpoint.test/ns/default/sa/client";
/// The IdP's resource server (fixtures.json `resource`): tokens for it are JWTs.
const API: &str = "urn:authz-test:api";

const DISCOVERY: &str = "GET /.well-known/openid-configuration -> 200";
const JWKS: &str = "GET /jwks -> 200";
const USERINFO: &str = "GET /me -> 200";

/// The native configuration under test: sources `mtls`, `jwt`, `userinfo` in this order.
fn config(addrs: &NativeAddrs) -> String {
    let issuer = &addrs.issuer;
    let head = addrs.head();
    format!(
        r#"
{head}
rules:
  inline:
    /mesh:
      ALL:
        authorization: {{ expression: "groups.platform", public: false }}
        identity: [mtls]
    /api/admin:
      ALL: {{ authorization: {{ expression: "groups.admins", public: false }} }}
    /api:
      ALL: {{ authorization: {{ expression: "true", public: false }} }}
    /public:
      GET: {{ authorization: {{ expression: "true", public: true }} }}
identity:
  sources:
    - type: mtls
      principals:
        - {{ principal: "{CLIENT_SPIFFE_ID}", groups: [platform] }}
    - type: jwt
      issuer: "{issuer}"
      audiences: ["{API}"]
      typ: at+jwt
      claims: {{ groups: groups, permissions: permissions, properties: [email] }}
    - type: userinfo
      url: "{issuer}/me"
"#
    )
}

async fn start() -> NativeStack {
    NativeStack::start(config).await
}

async fn get(client: &reqwest::Client, stack: &Stack, path: &str, token: Option<&str>) -> Reply {
    let mut request = client.get(stack.url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    Reply::from(response).await
}

/// A JWT access token for `user` (RFC 9068, `typ: at+jwt`, audience [`API`]).
async fn jwt_for(stack: &Stack, user: &str) -> String {
    let json = stack.token_response(user, "api:read", Some(API)).await;
    json["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// An opaque access token for `user` (no resource indicator: good for the IdP's `/me`).
async fn opaque_for(stack: &Stack, user: &str) -> String {
    let token = stack.token(user).await;
    assert_eq!(
        token.split('.').count(),
        1,
        "expected an opaque token: {token}"
    );
    token
}

/// The decoded JSON of one part (0: header, 1: payload) of a compact JWT.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON part")
}

/// The request reached the upstream as `user_id` with exactly these identity headers.
fn assert_upstream_user(
    reply: &Reply,
    user_id: &str,
    groups: Option<&str>,
    properties: Option<&str>,
    what: &str,
) {
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
    assert!(
        reply.reached_upstream(),
        "{what}: not the upstream's answer: {}",
        reply.text
    );
    assert_eq!(
        reply.upstream_header("miauserid"),
        Some(user_id),
        "{what}: {}",
        reply.text
    );
    assert_eq!(
        reply.upstream_header("miausergroups"),
        groups,
        "{what}: {}",
        reply.text
    );
    assert_eq!(
        reply.upstream_header("miauserproperties"),
        properties,
        "{what}: {}",
        reply.text
    );
}

/// A denial from checkpoint with its JSON body; nothing reached the upstream.
fn assert_denied(reply: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert!(
        !reply.reached_upstream(),
        "{what}: the upstream answered: {}",
        reply.text
    );
    assert_eq!(reply.json["statusCode"], status, "{what}: {}", reply.text);
    assert_eq!(reply.json["error"], error, "{what}: {}", reply.text);
    if status == 401 {
        assert!(
            reply.header("www-authenticate").is_some(),
            "{what}: 401 without www-authenticate: {reply:?}"
        );
    }
}

/// The IdP's requests other than the test's own token requests.
fn idp_calls_by_checkpoint(idp: &Proc) -> Vec<String> {
    idp_requests(idp)
        .into_iter()
        .filter(|r| !r.starts_with("POST /token "))
        .collect()
}

/// The client certificate is the caller on an mTLS-only rule; nothing else opens that rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_principal_through_envoy_and_an_mtls_only_rule() {
    let stack = start().await;
    let with_certificate = stack.client_with_certificate();

    let reply = get(&with_certificate, &stack, "/mesh/deploy", None).await;
    assert_upstream_user(
        &reply,
        CLIENT_SPIFFE_ID,
        Some("platform"),
        Some("{}"),
        "client certificate on /mesh/deploy",
    );
    assert_eq!(reply.json["path"], "/mesh/deploy");

    let reply = get(&stack.client, &stack, "/mesh/deploy", None).await;
    assert_denied(
        &reply,
        401,
        "Unauthorized",
        "no certificate on /mesh/deploy",
    );

    // alice's tokens do not count on an mTLS-only rule: neither her JWT (checked locally) nor her
    // opaque token (user-info is not even asked).
    let jwt = jwt_for(&stack, "alice").await;
    let opaque = opaque_for(&stack, "alice").await;
    let before = idp_calls_by_checkpoint(&stack.idp);
    let reply = get(&stack.client, &stack, "/mesh", Some(&jwt)).await;
    assert_denied(&reply, 401, "Unauthorized", "alice's JWT on /mesh");
    let reply = get(&stack.client, &stack, "/mesh/deploy", Some(&opaque)).await;
    assert_denied(&reply, 401, "Unauthorized", "alice's opaque token on /mesh");
    assert_eq!(
        idp_calls_by_checkpoint(&stack.idp),
        before,
        "the IdP was asked about a token on an mTLS-only rule"
    );
    // ... and they open the other rules (so the 401s above are about the rule's sources).
    let reply = get(&stack.client, &stack, "/api/admin", Some(&jwt)).await;
    assert_eq!(reply.status, 200, "alice's JWT on /api/admin: {reply:?}");

    // Sources are asked in order and the first with a credential decides: with a certificate,
    // the caller is the workload, whatever token comes along.
    let reply = get(&with_certificate, &stack, "/api/admin", Some(&jwt)).await;
    assert_denied(
        &reply,
        403,
        "Forbidden",
        "certificate + alice's JWT on /api/admin",
    );
}

/// JWT access tokens are verified with the keys fetched at start-up: no request to the IdP per
/// Check, whether the token was seen before or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_access_tokens_are_verified_without_calling_the_idp() {
    let stack = start().await;
    // Ready only once discovery and the key set were fetched, and nothing else was asked.
    assert_eq!(stack.idp_requests_at_ready, [DISCOVERY, JWKS]);

    let alice = jwt_for(&stack, "alice").await;
    let header = jwt_part(&alice, 0);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    let claims = jwt_part(&alice, 1);
    assert_eq!(claims["aud"], API, "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    // What extraTokenClaims puts in the token: no `email`, so `properties: [email]` maps nothing.
    assert_eq!(claims.get("email"), None, "{claims}");
    let mut bobs = Vec::new();
    for _ in 0..5 {
        bobs.push(jwt_for(&stack, "bob").await);
    }
    let before = idp_requests(&stack.idp);
    assert_eq!(
        idp_calls_by_checkpoint(&stack.idp),
        [DISCOVERY, JWKS],
        "before the first Check"
    );

    let reply = get(&stack.client, &stack, "/api/admin/users", Some(&alice)).await;
    assert_upstream_user(
        &reply,
        "alice",
        Some("admins,engineering"),
        Some("{}"),
        "alice's JWT on /api/admin/users",
    );
    for i in 0..20 {
        let reply = get(&stack.client, &stack, "/api/admin", Some(&alice)).await;
        assert_eq!(reply.status, 200, "alice's JWT, request {i}: {reply:?}");
        assert_eq!(reply.upstream_header("miauserid"), Some("alice"));
    }
    for (i, bob) in bobs.iter().enumerate() {
        let reply = get(&stack.client, &stack, "/api/admin", Some(bob)).await;
        assert_denied(&reply, 403, "Forbidden", &format!("bob's JWT #{i}"));
    }
    // bob is a user (a 403, not a 401): on /api he gets through as himself.
    let reply = get(&stack.client, &stack, "/api/orders", Some(&bobs[0])).await;
    assert_upstream_user(
        &reply,
        "bob",
        Some("viewers"),
        Some("{}"),
        "bob's JWT on /api/orders",
    );

    assert_eq!(
        idp_requests(&stack.idp),
        before,
        "27 Checks with JWTs made requests to the IdP"
    );
}

/// A JWT that fails verification is a 401 (never a pass-on to user-info); a token that is not a
/// JWT at all passes on to user-info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_jwt_is_401_and_opaque_tokens_go_to_userinfo() {
    let stack = start().await;
    let alice = jwt_for(&stack, "alice").await;
    let opaque = opaque_for(&stack, "alice").await;

    // Flip one character in the middle of the payload (still base64url, still a JWT shape).
    let parts: Vec<&str> = alice.split('.').collect();
    let mut payload: Vec<u8> = parts[1].as_bytes().to_vec();
    let at = payload.len() / 2;
    payload[at] = if payload[at] == b'A' { b'B' } else { b'A' };
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        String::from_utf8(payload).expect("ascii"),
        parts[2]
    );
    assert_ne!(tampered, alice);

    let before = idp_calls_by_checkpoint(&stack.idp);
    for path in ["/api/hello", "/api/admin", "/public"] {
        let reply = get(&stack.client, &stack, path, Some(&tampered)).await;
        assert_denied(
            &reply,
            401,
            "Unauthorized",
            &format!("tampered JWT on {path}"),
        );
    }
    // A header whose `alg` has a character across its second byte (found by cargo-fuzz: it
    // panicked the Check's task, and Envoy answered its own 503): a 401 with checkpoint's body.
    let hostile_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"R\u0302S256","typ":"at+jwt"}"#);
    let hostile = format!("{hostile_header}.{}.{}", parts[1], parts[2]);
    for path in ["/api/hello", "/public"] {
        let reply = get(&stack.client, &stack, path, Some(&hostile)).await;
        assert_denied(
            &reply,
            401,
            "Unauthorized",
            &format!("a JWT with a multi-byte alg on {path}"),
        );
    }
    assert_eq!(
        idp_calls_by_checkpoint(&stack.idp),
        before,
        "a tampered JWT made checkpoint call the IdP (user-info or a key refetch)"
    );
    // The untouched token works (so the 401 is about the flipped character).
    let reply = get(&stack.client, &stack, "/api/hello", Some(&alice)).await;
    assert_eq!(reply.status, 200, "alice's JWT: {reply:?}");

    // The opaque token: the jwt source passes on, user-info answers (once: then it is cached).
    let reply = get(&stack.client, &stack, "/api/hello", Some(&opaque)).await;
    assert_upstream_user(
        &reply,
        "alice",
        Some("admins,engineering"),
        Some("{}"),
        "alice's opaque token on /api/hello",
    );
    let reply = get(&stack.client, &stack, "/api/admin", Some(&opaque)).await;
    assert_eq!(
        reply.status, 200,
        "alice's opaque token on /api/admin: {reply:?}"
    );
    let mut expected = before.clone();
    expected.push(USERINFO.to_owned());
    assert_eq!(idp_calls_by_checkpoint(&stack.idp), expected);

    // Anonymous on the public route: through, with no identity.
    let reply = get(&stack.client, &stack, "/public", None).await;
    assert_eq!(reply.status, 200, "anonymous /public: {reply:?}");
    assert_eq!(reply.upstream_header("miauserid"), None, "{}", reply.text);
}

/// `/-/ready` waits for the first key fetch: with the issuer unreachable it stays 503 (the
/// process is alive: `/-/healthz` is 200); once the IdP comes up on that address, it turns 200
/// and by then discovery and the key set have been fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_signing_keys_are_fetched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = e2e_support::plain_client();
    // A closed loopback port (bound, then released): nothing listens there yet.
    let [idp_port, grpc_port, status_port] = e2e_support::free_ports::<3>();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let yaml = format!(
        r#"
version: 1
server: {{ grpc_addr: "127.0.0.1:{grpc_port}", http_addr: "127.0.0.1:{status_port}", shutdown_delay: 0 }}
rules:
  inline:
    /api:
      ALL: {{ authorization: {{ expression: "true", public: false }} }}
identity:
  sources:
    - type: jwt
      issuer: "{issuer}"
      audiences: ["{API}"]
      min_refresh_interval: 1s
"#
    );
    let mut checkpoint = e2e_support::spawn_checkpoint_native(dir.path(), &yaml);
    let status = format!("http://127.0.0.1:{status_port}");
    let healthz = format!("{status}/-/healthz");
    let ready = format!("{status}/-/ready");
    e2e_support::wait_for_status(
        &plain,
        &healthz,
        200,
        &mut checkpoint,
        e2e_support::READY_TIMEOUT,
    )
    .await;

    let until = Instant::now() + Duration::from_secs(2);
    let mut polls = 0;
    while Instant::now() < until {
        let answer = plain.get(&ready).send().await.expect("GET /-/ready");
        assert_eq!(
            answer.status(),
            503,
            "ready with the issuer unreachable (after {polls} polls)"
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polls >= 10, "only {polls} polls of /-/ready in 2 s");
    let answer = plain.get(&healthz).send().await.expect("GET /-/healthz");
    assert_eq!(answer.status(), 200, "healthz while not ready");
    checkpoint.assert_running();
    assert!(
        checkpoint
            .stdout()
            .contains("jwt signing keys could not be fetched"),
        "no log line about the failed fetch:\n{}",
        checkpoint.stdout()
    );

    // The IdP comes up on the issuer's address: checkpoint's retries find it.
    let mut idp = e2e_support::spawn_idp(dir.path(), idp_port, true);
    assert_eq!(e2e_support::idp_issuer(&mut idp).await, issuer);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = plain.get(&ready).send().await.expect("GET /-/ready");
        if answer.status() == 200 {
            break;
        }
        assert_eq!(answer.status(), 503);
        checkpoint.assert_running();
        if Instant::now() > deadline {
            checkpoint.fail("not ready 5 s after the IdP came up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idp_requests(&idp), [DISCOVERY, JWKS]);
}
