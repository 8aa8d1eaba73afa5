//! The identity sources beyond user-info, each on its own: `introspection` against the real test
//! IdP (`tests/idp/idp.mjs`, started here as a process on loopback) and against small loopback
//! servers that misbehave on purpose; `api_key`, `mtls`, `envoy_metadata` and `anonymous` with
//! constructed requests.
//!
//! Needs the IdP's `node_modules` (`scripts/setup.sh`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use checkpoint::config::sources::{
    AnonymousSource, ApiKey, ApiKeySource, ClaimMapping, ClientAuth, EnvoyMetadataSource,
    IntrospectionSource, MtlsPrincipal, MtlsSource, Span, TokenLocation,
};
use checkpoint::testing::identity::Anonymous;
use checkpoint::testing::identity::EnvoyMetadata;
use checkpoint::testing::identity::Mtls;
use checkpoint::testing::identity::{ApiKeys, KeyMatch};
use checkpoint::testing::identity::{
    CacheSettings, Context, IdentityCache, Resolution, Source, User,
};
use checkpoint::testing::identity::{Introspection, introspection};
use checkpoint::testing::{Headers, Request};
use e2e_support::Proc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---- helpers ------------------------------------------------------------------------------

/// The test IdP as a process. Field order is drop order: the process goes before its folder.
struct Idp {
    process: Proc,
    issuer: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Idp {
    async fn start() -> Idp {
        let root = e2e_support::repo();
        assert!(
            root.join("tests/idp/node_modules/oidc-provider").exists(),
            "tests/idp/node_modules is missing: run scripts/setup.sh first"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = std::process::Command::new("node");
        command
            .arg(root.join("tests/idp/idp.mjs"))
            .env("IDP_PORT", "0")
            .env("IDP_HOST", "127.0.0.1");
        let mut process = Proc::spawn("idp", command, dir.path());
        let ready: Value =
            serde_json::from_str(&process.wait_line("IDP_READY ").await).expect("IDP_READY json");
        Idp {
            process,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client"),
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// POSTs a form to the IdP's `path` as `authz-service` (client_secret_basic).
    async fn post(&self, path: &str, form: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.issuer))
            .basic_auth("authz-service", Some("authz-service-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .expect("IdP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("IdP body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An opaque access token for `user` (password grant without `resource`), or a JWT access
    /// token when `resource` names the IdP's API.
    async fn user_token(&self, user: &str, resource: Option<&str>) -> String {
        let mut form = format!(
            "grant_type=password&username={user}&password={user}-password\
             &scope=openid%20profile%20email%20groups%20permissions%20properties"
        );
        if let Some(resource) = resource {
            form = format!(
                "grant_type=password&username={user}&password={user}-password\
                 &scope=api%3Aread&resource={}",
                introspection::form_encode(resource)
            );
        }
        let (status, json) = self.post("/token", &form).await;
        assert_eq!(status, 200, "token for {user}: {json}");
        json["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// A client-credentials token of `reporting-job` (client_secret_post).
    async fn service_token(&self) -> String {
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                "grant_type=client_credentials&client_id=reporting-job\
                 &client_secret=reporting-job-secret",
            )
            .send()
            .await
            .expect("token request");
        let json: Value = response.json().await.expect("token JSON");
        json["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    async fn revoke(&self, token: &str) {
        let (status, json) = self
            .post("/token/revocation", &format!("token={token}"))
            .await;
        assert_eq!(status, 200, "revocation: {json}");
    }
}

fn request(headers: &[(&str, &str)]) -> Request {
    Request {
        method: None,
        path: Ok("/".into()),
        headers: Headers::from_pairs(headers.iter().map(|(k, v)| (*k, (*v).to_owned()))),
        principal: String::new(),
        request_id: String::new(),
        certificate: String::new(),
        metadata: None,
    }
}

fn bearer(token: &str) -> Request {
    request(&[("authorization", &format!("Bearer {token}"))])
}

const NO_DEADLINE: Context = Context {
    deadline: None,
    is_backoffice: false,
};

fn introspection_settings(endpoint: &str, auth: ClientAuth) -> IntrospectionSource {
    let (client_id, secret) = match auth {
        ClientAuth::ClientSecretBasic => ("authz-service", "authz-service-secret"),
        ClientAuth::ClientSecretPost => ("reporting-job", "reporting-job-secret"),
    };
    IntrospectionSource {
        name: None,
        endpoint: endpoint.to_owned(),
        client_id: client_id.to_owned(),
        client_secret: Some(secret.to_owned()),
        client_secret_env: None,
        auth_method: auth,
        token: TokenLocation::Bearer,
        claims: ClaimMapping {
            properties: vec!["properties".into()],
            ..ClaimMapping::default()
        },
        timeout: Span(Duration::from_secs(2)),
    }
}

fn introspector(settings: &IntrospectionSource) -> Introspection {
    Introspection::new(
        settings,
        introspection::http_client().expect("client"),
        &HashMap::new(),
    )
    .expect("valid settings")
}

/// `invalid REASON` / `unavailable REASON: DETAIL` / `user ID` / `NoCredential` ...
fn outcome(resolution: &Resolution) -> String {
    match resolution {
        Resolution::User(user) => format!("user {}", user.id),
        Resolution::Invalid(f) => format!("invalid {}", f.reason),
        Resolution::Unavailable(f) => format!("unavailable {}: {}", f.reason, f.detail),
        other => format!("{other:?}"),
    }
}

fn user(resolution: Resolution) -> Arc<User> {
    match resolution {
        Resolution::User(user) => user,
        other => panic!("a user expected, got {other:?}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A loopback HTTP/1.1 server that answers every request with `response` (raw bytes) and sends
/// each request it read (head and body) to the returned channel.
async fn canned_server(
    response: Vec<u8>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/introspect", listener.local_addr().expect("addr"));
    let (sent, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            let _ = sent.send(text);
                            break;
                        }
                    }
                }
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, received)
}

fn http_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---- introspection against the real IdP ----------------------------------------------------

#[tokio::test]
async fn introspection_resolves_opaque_tokens_with_both_client_auth_methods() {
    let idp = Idp::start().await;
    let token = idp.user_token("alice", None).await;
    assert_eq!(token.split('.').count(), 1, "an opaque token expected");
    for auth in [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost] {
        let source = introspector(&introspection_settings(&idp.endpoint(), auth));
        let alice = user(source.resolve(&bearer(&token), &NO_DEADLINE).await);
        assert_eq!(alice.id, "alice", "{auth:?}");
        assert_eq!(alice.groups, ["admins", "engineering"]);
        assert_eq!(
            alice.permissions,
            ["orders:read", "orders:write", "users:admin"]
        );
        let properties: Value =
            serde_json::from_str(&alice.properties_header).expect("properties JSON");
        assert_eq!(properties["properties"]["tenant"], "acme");
        assert_eq!(properties["properties"]["department"], "R&D");
        // The identity cache never keeps the user past the token's own expiry.
        let exp = alice.expires_at.expect("exp from the answer");
        assert!(exp > unix_now() && exp <= unix_now() + 3600 + 5, "{exp}");
    }
    let bob = user(
        introspector(&introspection_settings(
            &idp.endpoint(),
            ClientAuth::ClientSecretBasic,
        ))
        .resolve(&bearer(&idp.user_token("bob", None).await), &NO_DEADLINE)
        .await,
    );
    assert_eq!(
        (bob.id.as_str(), bob.groups.as_slice()),
        ("bob", &["viewers".to_owned()][..])
    );
}

#[tokio::test]
async fn inactive_revoked_and_garbage_tokens_are_invalid() {
    let idp = Idp::start().await;
    let source = introspector(&introspection_settings(
        &idp.endpoint(),
        ClientAuth::ClientSecretBasic,
    ));
    let garbage = source
        .resolve(&bearer("not-a-token-the-idp-issued"), &NO_DEADLINE)
        .await;
    assert_eq!(outcome(&garbage), "invalid token_inactive");

    let token = idp.user_token("alice", None).await;
    assert_eq!(
        outcome(&source.resolve(&bearer(&token), &NO_DEADLINE).await),
        "user alice"
    );
    idp.revoke(&token).await;
    assert_eq!(
        outcome(&source.resolve(&bearer(&token), &NO_DEADLINE).await),
        "invalid token_inactive"
    );
}

#[tokio::test]
async fn a_client_credentials_token_is_the_client() {
    let idp = Idp::start().await;
    let token = idp.service_token().await;
    let source = introspector(&introspection_settings(
        &idp.endpoint(),
        ClientAuth::ClientSecretPost,
    ));
    let client = user(source.resolve(&bearer(&token), &NO_DEADLINE).await);
    assert_eq!(client.id, "reporting-job");
    assert_eq!(client.groups, ["services", "reporting"]);
    assert_eq!(client.permissions, ["orders:read"]);
}

#[tokio::test]
async fn the_client_secret_comes_from_the_given_environment() {
    let idp = Idp::start().await;
    let token = idp.user_token("alice", None).await;
    let settings = IntrospectionSource {
        client_secret: None,
        client_secret_env: Some("CHECKPOINT_TEST_INTROSPECTION_SECRET".into()),
        ..introspection_settings(&idp.endpoint(), ClientAuth::ClientSecretBasic)
    };
    let env = |secret: &str| {
        HashMap::from([(
            "CHECKPOINT_TEST_INTROSPECTION_SECRET".to_owned(),
            secret.to_owned(),
        )])
    };
    let client = || introspection::http_client().expect("client");

    let right = Introspection::new(&settings, client(), &env("authz-service-secret")).expect("ok");
    assert_eq!(
        outcome(&right.resolve(&bearer(&token), &NO_DEADLINE).await),
        "user alice"
    );
    // A wrong secret is our misconfiguration, not the caller's: 503, never 401.
    let wrong = Introspection::new(&settings, client(), &env("not-the-secret")).expect("ok");
    let answer = outcome(&wrong.resolve(&bearer(&token), &NO_DEADLINE).await);
    assert!(
        answer.starts_with("unavailable introspection_status: introspection answered 401"),
        "{answer}"
    );
    assert!(answer.contains("invalid_client"), "{answer}");
    assert!(!answer.contains(&token), "the token leaked into {answer}");

    let Err(missing) = Introspection::new(&settings, client(), &HashMap::new()) else {
        panic!("a missing variable was accepted")
    };
    let missing = missing.join("; ");
    assert!(
        missing.contains(
            "introspection.client_secret_env: the environment variable \
             CHECKPOINT_TEST_INTROSPECTION_SECRET is not set"
        ),
        "{missing}"
    );
}

#[tokio::test]
async fn a_token_type_the_endpoint_refuses_is_unavailable_and_no_token_passes_on() {
    let idp = Idp::start().await;
    let source = introspector(&introspection_settings(
        &idp.endpoint(),
        ClientAuth::ClientSecretBasic,
    ));
    // The IdP introspects only opaque tokens: a JWT access token is a 400.
    let jwt = idp.user_token("alice", Some("urn:authz-test:api")).await;
    assert_eq!(jwt.split('.').count(), 3, "a JWT expected");
    let answer = outcome(&source.resolve(&bearer(&jwt), &NO_DEADLINE).await);
    assert!(
        answer.starts_with("unavailable introspection_status: introspection answered 400"),
        "{answer}"
    );
    assert!(answer.contains("unsupported_token_type"), "{answer}");

    assert_eq!(
        source.resolve(&request(&[]), &NO_DEADLINE).await,
        Resolution::NoCredential
    );
    assert_eq!(
        source
            .resolve(&request(&[("authorization", "Basic dTpw")]), &NO_DEADLINE)
            .await,
        Resolution::NoCredential
    );
}

#[tokio::test]
async fn a_stopped_idp_is_unavailable() {
    let mut idp = Idp::start().await;
    let token = idp.user_token("alice", None).await;
    let source = introspector(&introspection_settings(
        &idp.endpoint(),
        ClientAuth::ClientSecretBasic,
    ));
    assert_eq!(
        outcome(&source.resolve(&bearer(&token), &NO_DEADLINE).await),
        "user alice"
    );
    idp.process.stop();
    let started = Instant::now();
    let answer = outcome(&source.resolve(&bearer(&token), &NO_DEADLINE).await);
    assert!(
        answer.starts_with("unavailable introspection_unreachable"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_token_elsewhere_than_the_bearer_is_read_where_configured() {
    let idp = Idp::start().await;
    let token = idp.user_token("alice", None).await;
    let source = introspector(&IntrospectionSource {
        token: TokenLocation::Cookie("session".into()),
        ..introspection_settings(&idp.endpoint(), ClientAuth::ClientSecretBasic)
    });
    let cookie = format!("theme=dark; session={token}");
    assert_eq!(
        outcome(
            &source
                .resolve(&request(&[("cookie", &cookie)]), &NO_DEADLINE)
                .await
        ),
        "user alice"
    );
    assert_eq!(
        source.resolve(&bearer(&token), &NO_DEADLINE).await,
        Resolution::NoCredential
    );
}

// ---- introspection against misbehaving endpoints ------------------------------------------

#[tokio::test]
async fn the_request_is_a_form_with_the_client_credentials() {
    let (url, mut requests) =
        canned_server(http_response("200 OK", r#"{"active":true,"sub":"u"}"#)).await;
    let token = "a b+c/=&%é";
    for auth in [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost] {
        let source = introspector(&introspection_settings(&url, auth));
        assert_eq!(
            outcome(&source.resolve(&bearer(token), &NO_DEADLINE).await),
            "user u"
        );
        let seen = requests.recv().await.expect("a request");
        let (head, body) = seen.split_once("\r\n\r\n").expect("head and body");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("post /introspect http/1.1"), "{head}");
        assert!(
            head.contains("content-type: application/x-www-form-urlencoded"),
            "{head}"
        );
        assert!(head.contains("accept: application/json"), "{head}");
        let expected_token = "token=a%20b%2Bc%2F%3D%26%25%C3%A9&token_type_hint=access_token";
        match auth {
            ClientAuth::ClientSecretBasic => {
                // base64("authz-service:authz-service-secret")
                assert!(
                    head.contains(
                        &"authorization: Basic YXV0aHotc2VydmljZTphdXRoei1zZXJ2aWNlLXNlY3JldA=="
                            .to_ascii_lowercase()
                    ),
                    "{head}"
                );
                assert_eq!(body, expected_token);
            }
            ClientAuth::ClientSecretPost => {
                assert!(!head.contains("authorization:"), "{head}");
                assert_eq!(
                    body,
                    format!(
                        "{expected_token}&client_id=reporting-job&client_secret=reporting-job-secret"
                    )
                );
            }
        }
    }
}

#[tokio::test]
async fn bad_answers_are_unavailable() {
    let big = format!(
        r#"{{"active":true,"sub":"u","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let cases = [
        (
            http_response("503 Service Unavailable", "{}"),
            "introspection_status: introspection answered 503",
        ),
        (
            http_response("302 Found", ""),
            "introspection_status: introspection answered 302",
        ),
        (http_response("200 OK", "<html>"), "introspection_not_json"),
        (
            http_response("200 OK", r#"{"sub":"u"}"#),
            "introspection_malformed",
        ),
        (http_response("200 OK", &big), "introspection_too_large"),
        // The same, without a Content-Length: refused while reading.
        (
            format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{big}").into_bytes(),
            "introspection_too_large",
        ),
    ];
    for (response, want) in cases {
        let (url, _requests) = canned_server(response).await;
        let source = introspector(&introspection_settings(&url, ClientAuth::ClientSecretBasic));
        let answer = outcome(&source.resolve(&bearer("t"), &NO_DEADLINE).await);
        assert!(
            answer.starts_with(&format!("unavailable {want}")),
            "{want}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_silent_or_closed_endpoint_is_bounded_by_the_timeout() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_url = format!("http://{}/introspect", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let source = introspector(&IntrospectionSource {
        timeout: Span(Duration::from_millis(300)),
        ..introspection_settings(&silent_url, ClientAuth::ClientSecretBasic)
    });
    let started = Instant::now();
    let answer = outcome(&source.resolve(&bearer("t"), &NO_DEADLINE).await);
    let took = started.elapsed();
    assert!(
        answer.starts_with("unavailable introspection_timeout"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    // The Check's own deadline cuts a longer timeout.
    let patient = introspector(&IntrospectionSource {
        timeout: Span(Duration::from_secs(10)),
        ..introspection_settings(&silent_url, ClientAuth::ClientSecretBasic)
    });
    let context = Context {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(200)),
        is_backoffice: false,
    };
    let started = Instant::now();
    let answer = outcome(&patient.resolve(&bearer("t"), &context).await);
    assert!(
        answer.starts_with("unavailable introspection_timeout"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    // No time left at all: no call.
    let past = Context {
        deadline: Some(tokio::time::Instant::now()),
        is_backoffice: false,
    };
    assert!(
        outcome(&patient.resolve(&bearer("t"), &past).await)
            .starts_with("unavailable deadline_exceeded")
    );
    held.abort();

    // Nothing listens: refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_url = format!("http://{}/introspect", closed.local_addr().expect("addr"));
    drop(closed);
    let source = introspector(&introspection_settings(
        &closed_url,
        ClientAuth::ClientSecretBasic,
    ));
    let answer = outcome(&source.resolve(&bearer("t"), &NO_DEADLINE).await);
    assert!(
        answer.starts_with("unavailable introspection_unreachable"),
        "{answer}"
    );
}

#[test]
fn introspection_cache_keys_follow_the_token() {
    let cache = IdentityCache::new(CacheSettings {
        ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        max_entries: 10,
        stale_if_error: Duration::ZERO,
    })
    .expect("cache on");
    let source = introspector(&introspection_settings(
        "http://127.0.0.1:9/introspect",
        ClientAuth::ClientSecretBasic,
    ));
    let key = |request: &Request| {
        let mut hasher = cache.key_hasher();
        source
            .cache_key(request, &NO_DEADLINE, &mut hasher)
            .then(|| IdentityCache::key(&hasher))
    };
    let a = key(&bearer("token-a")).expect("a key");
    assert_eq!(key(&bearer("token-a")), Some(a));
    assert_ne!(key(&bearer("token-b")), Some(a));
    assert_eq!(
        key(&request(&[
            ("authorization", "Bearer token-a"),
            ("x-other", "1")
        ])),
        Some(a),
        "other headers do not matter"
    );
    assert_eq!(key(&request(&[])), None);
}

// ---- api_key ------------------------------------------------------------------------------

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn api_keys() -> ApiKeys {
    ApiKeys::new(&ApiKeySource {
        name: None,
        headers: vec!["secret".into(), "client-key".into()],
        cookie: Some("mia_client_key".into()),
        keys: vec![
            ApiKey {
                sha256: sha256_hex("web-key-0123"),
                client_type: "web".into(),
                groups: vec!["storefront".into()],
            },
            ApiKey {
                sha256: sha256_hex("partner-key-4567"),
                client_type: "partner".into(),
                groups: vec![],
            },
        ],
    })
    .expect("valid settings")
}

#[tokio::test]
async fn api_keys_resolve_the_client_type_from_each_header_and_the_cookie() {
    let keys = api_keys();
    let web = KeyMatch::Known {
        client_type: "web".into(),
        groups: vec!["storefront".into()],
    };
    for headers in [
        vec![("secret", "web-key-0123")],
        vec![("client-key", "web-key-0123")],
        vec![("cookie", "a=b; mia_client_key=web-key-0123")],
        // The first header present wins over a later one and over the cookie.
        vec![
            ("client-key", "partner-key-4567"),
            ("secret", "web-key-0123"),
            ("cookie", "mia_client_key=partner-key-4567"),
        ],
    ] {
        let request = request(&headers);
        assert_eq!(keys.identify(&request), web, "{headers:?}");
        let user = user(keys.resolve(&request, &NO_DEADLINE).await);
        assert_eq!(user.id, "api-key:web");
        assert_eq!(user.groups, ["storefront"]);
        assert!(user.permissions.is_empty());
        assert_eq!(user.properties_header, "{}");
    }
    let partner = request(&[("cookie", "mia_client_key=partner-key-4567")]);
    assert_eq!(
        keys.identify(&partner),
        KeyMatch::Known {
            client_type: "partner".into(),
            groups: vec![]
        }
    );
    assert_eq!(
        outcome(&keys.resolve(&partner, &NO_DEADLINE).await),
        "user api-key:partner"
    );
    let mut hasher = IdentityCache::new(CacheSettings {
        ttl: Duration::from_secs(1),
        negative_ttl: Duration::ZERO,
        max_entries: 1,
        stale_if_error: Duration::ZERO,
    })
    .expect("cache")
    .key_hasher();
    assert!(
        !keys.cache_key(&partner, &NO_DEADLINE, &mut hasher),
        "never cached"
    );
}

#[tokio::test]
async fn unknown_api_keys_are_invalid_and_no_key_passes_on() {
    let keys = api_keys();
    let digest = sha256_hex("web-key-0123");
    for headers in [
        vec![("secret", "web-key-0124")],
        vec![("client-key", "WEB-KEY-0123")],
        vec![("cookie", "mia_client_key=nope")],
        // The digest itself is not a key.
        vec![("secret", digest.as_str())],
    ] {
        let request = request(&headers);
        assert_eq!(keys.identify(&request), KeyMatch::Unknown, "{headers:?}");
        assert_eq!(
            outcome(&keys.resolve(&request, &NO_DEADLINE).await),
            "invalid api_key_unknown"
        );
    }
    for headers in [
        vec![],
        vec![("authorization", "Bearer web-key-0123")],
        vec![("secret", "  ")],
        vec![("cookie", "other=web-key-0123")],
    ] {
        let request = request(&headers);
        assert_eq!(keys.identify(&request), KeyMatch::NoKey, "{headers:?}");
        assert_eq!(
            keys.resolve(&request, &NO_DEADLINE).await,
            Resolution::NoCredential
        );
    }
}

#[test]
fn api_key_settings_errors_name_the_key() {
    let key = |sha256: String| ApiKey {
        sha256,
        client_type: "web".into(),
        groups: vec![],
    };
    let settings = ApiKeySource {
        name: None,
        headers: vec!["secret".into()],
        cookie: None,
        keys: vec![
            key(sha256_hex("a")),
            key(sha256_hex("b")),
            key(sha256_hex("c").to_ascii_uppercase()),
            key("abc".into()),
        ],
    };
    let Err(e) = ApiKeys::new(&settings) else {
        panic!("invalid digests accepted")
    };
    let e = e.join("; ");
    assert!(
        e.contains("api_key.keys[2].sha256: expected 64 lower-case hex characters"),
        "{e}"
    );
    assert!(e.contains("api_key.keys[3].sha256"), "{e}");
    assert!(!e.contains("keys[0]") && !e.contains("keys[1]"), "{e}");
}

// ---- mtls ---------------------------------------------------------------------------------

#[tokio::test]
async fn mtls_principals_map_to_users() {
    const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
    const SUBJECT: &str = "CN=reporting,O=Acme";
    let settings = |allow_unlisted| MtlsSource {
        name: None,
        principals: vec![
            MtlsPrincipal {
                principal: ORDERS.into(),
                groups: vec!["services".into(), "orders".into()],
            },
            MtlsPrincipal {
                principal: SUBJECT.into(),
                groups: vec![],
            },
        ],
        allow_unlisted,
    };
    let strict = Mtls::new(&settings(false)).expect("valid");
    let open = Mtls::new(&settings(true)).expect("valid");
    let with = |principal: &str| Request {
        principal: principal.to_owned(),
        ..request(&[])
    };
    // (principal, allow_unlisted, outcome, groups)
    let cases: [(&str, bool, &str, &[&str]); 8] = [
        (
            ORDERS,
            false,
            "user spiffe://cluster.local/ns/shop/sa/orders",
            &["services", "orders"],
        ),
        (
            ORDERS,
            true,
            "user spiffe://cluster.local/ns/shop/sa/orders",
            &["services", "orders"],
        ),
        (SUBJECT, false, "user CN=reporting,O=Acme", &[]),
        (
            "spiffe://cluster.local/ns/shop/sa/other",
            false,
            "invalid mtls_unknown_principal",
            &[],
        ),
        (
            "spiffe://cluster.local/ns/shop/sa/other",
            true,
            "user spiffe://cluster.local/ns/shop/sa/other",
            &[],
        ),
        // Exact match only: no prefix, no case folding.
        (
            "spiffe://cluster.local/ns/shop/sa/orders/x",
            false,
            "invalid mtls_unknown_principal",
            &[],
        ),
        (
            "SPIFFE://cluster.local/ns/shop/sa/orders",
            false,
            "invalid mtls_unknown_principal",
            &[],
        ),
        ("", true, "NoCredential", &[]),
    ];
    for (principal, allow_unlisted, want, groups) in cases {
        let source = if allow_unlisted { &open } else { &strict };
        let resolution = source.resolve(&with(principal), &NO_DEADLINE).await;
        assert_eq!(outcome(&resolution), want, "{principal:?} {allow_unlisted}");
        if let Resolution::User(user) = resolution {
            assert_eq!(user.groups, groups, "{principal:?}");
        }
    }
    // A principal that cannot be a header value is refused even when unlisted ones are allowed.
    assert_eq!(
        outcome(
            &open
                .resolve(&with("spiffe://x/\nmiauserid: root"), &NO_DEADLINE)
                .await
        ),
        "invalid mtls_principal_invalid"
    );
    assert_eq!(
        outcome(&strict.resolve(&with(""), &NO_DEADLINE).await),
        "NoCredential"
    );
}

// ---- envoy_metadata -----------------------------------------------------------------------

#[tokio::test]
async fn envoy_metadata_payloads_map_to_users() {
    let default = EnvoyMetadata::new(&EnvoyMetadataSource {
        name: None,
        namespace: "envoy.filters.http.jwt_authn".into(),
        key: "payload".into(),
        claims: ClaimMapping {
            groups: "realm_access.roles".into(),
            permissions: "scope".into(),
            properties: vec!["email".into()],
            ..ClaimMapping::default()
        },
    })
    .expect("valid");
    let with = |metadata: Option<Value>| Request {
        metadata: metadata.map(|m| match m {
            Value::Object(m) => m,
            _ => panic!("metadata must be an object"),
        }),
        ..request(&[])
    };
    let payload = json!({"sub": "alice", "realm_access": {"roles": ["admins"]},
        "scope": "orders:read orders:write", "email": "alice@example.test", "exp": 1_900_000_000u64});
    let cases = [
        (None, "NoCredential"),
        (Some(json!({})), "NoCredential"),
        (
            Some(json!({"other.filter": {"payload": payload}})),
            "NoCredential",
        ),
        (
            Some(json!({"envoy.filters.http.jwt_authn": {}})),
            "NoCredential",
        ),
        (
            Some(json!({"envoy.filters.http.jwt_authn": {"other": payload}})),
            "NoCredential",
        ),
        (
            Some(json!({"envoy.filters.http.jwt_authn": {"payload": payload}})),
            "user alice",
        ),
        (
            Some(
                json!({"envoy.filters.http.jwt_authn": {"payload": {"iss": "x", "groups": ["a"]}}}),
            ),
            "invalid envoy_metadata_no_subject",
        ),
        (
            Some(json!({"envoy.filters.http.jwt_authn": {"payload": "eyJhbGciOi..."}})),
            "unavailable envoy_metadata_malformed: metadata envoy.filters.http.jwt_authn.payload is not an object",
        ),
        (
            Some(json!({"envoy.filters.http.jwt_authn": {"payload": {"sub": "a", "scope": 5}}})),
            "unavailable envoy_metadata_malformed: \"scope\" is neither a list nor a string",
        ),
    ];
    for (metadata, want) in cases {
        let label = format!("{metadata:?}");
        let resolution = default.resolve(&with(metadata), &NO_DEADLINE).await;
        assert_eq!(outcome(&resolution), want, "{label}");
        if let Resolution::User(user) = resolution {
            assert_eq!(user.groups, ["admins"]);
            assert_eq!(user.permissions, ["orders:read", "orders:write"]);
            assert_eq!(user.properties_header, r#"{"email":"alice@example.test"}"#);
            assert_eq!(user.expires_at, Some(1_900_000_000));
        }
    }

    // Another namespace and key, and another user id claim.
    let custom = EnvoyMetadata::new(&EnvoyMetadataSource {
        name: None,
        namespace: "acme.auth".into(),
        key: "claims".into(),
        claims: ClaimMapping {
            user_id: "preferred_username".into(),
            ..ClaimMapping::default()
        },
    })
    .expect("valid");
    let request = with(Some(
        json!({"acme.auth": {"claims": {"sub": "1", "preferred_username": "bob",
        "groups": "viewers"}}}),
    ));
    let bob = user(custom.resolve(&request, &NO_DEADLINE).await);
    assert_eq!(
        (bob.id.as_str(), bob.groups_header.as_str()),
        ("bob", "viewers")
    );
}

// ---- anonymous ----------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_is_always_anonymous() {
    let source = Anonymous::new(&AnonymousSource::default()).expect("valid");
    assert_eq!(source.name(), "anonymous");
    for request in [request(&[]), bearer("t"), request(&[("secret", "k")])] {
        assert_eq!(
            source.resolve(&request, &NO_DEADLINE).await,
            Resolution::Anonymous
        );
    }
}
