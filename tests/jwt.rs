//! The `jwt` identity source against the real test IdP (`tests/idp/idp.mjs`, oidc-provider):
//! discovery and key fetch, local verification of RS256 access tokens and ID tokens from the
//! IdP and of ES256 tokens signed with the IdP's own EC key, refusals, the IdP's request count
//! (no request per verification), key rotation (the IdP restarted with new keys on the same
//! port) and readiness before the first key fetch.
//!
//! The IdP runs with `IDP_KEYS_FILE` (keys made here with node:crypto, so that the test holds the
//! private keys) and `IDP_LOG=1` (one stderr line per request, counted here). The source is
//! driven directly; the through-Envoy tests live with the server's wiring.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use checkpoint::config::sources::JwtSource;
use checkpoint::testing::identity::Jwt;
use checkpoint::testing::identity::{Context, Resolution, Source};
use checkpoint::testing::{Headers, Request};
use e2e_support::{Proc, free_ports, repo};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

const AUDIENCE: &str = "urn:authz-test:api";
const CLIENT_ID: &str = "authz-service";
const CONTEXT: Context = Context {
    deadline: None,
    is_backoffice: false,
};

/// One signing key set of the IdP, with the private keys the test signs with.
struct IdpKeys {
    file: PathBuf,
    rsa_kid: String,
    ec_kid: String,
    /// PKCS#8 DER of the EC (P-256) private key.
    ec_der: Vec<u8>,
    /// The public RSA JWK as the IdP publishes it (what an HS256 forger would use as secret).
    rsa_public: Value,
}

/// `count` key sets (RSA 2048 + EC P-256), each written as an `IDP_KEYS_FILE` in `dir`.
fn make_keys(dir: &Path, count: usize) -> Vec<IdpKeys> {
    let script = r#"
        const c = require('node:crypto');
        const out = [];
        for (let i = 0; i < Number(process.argv[1]); i++) {
          const rsa = c.generateKeyPairSync('rsa', { modulusLength: 2048 });
          const ec = c.generateKeyPairSync('ec', { namedCurve: 'P-256' });
          out.push({
            rsa: rsa.privateKey.export({ format: 'jwk' }),
            rsa_public: rsa.publicKey.export({ format: 'jwk' }),
            ec: ec.privateKey.export({ format: 'jwk' }),
            ec_der: ec.privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
          });
        }
        process.stdout.write(JSON.stringify(out));
    "#;
    let output = Command::new("node")
        .args(["-e", script, &count.to_string()])
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "node: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sets: Vec<Value> = serde_json::from_slice(&output.stdout).expect("keys JSON");
    sets.into_iter()
        .enumerate()
        .map(|(i, set)| {
            let (rsa_kid, ec_kid) = (format!("rs256-test-{i}"), format!("es256-test-{i}"));
            let mut rsa = set["rsa"].clone();
            rsa["kid"] = json!(rsa_kid);
            rsa["alg"] = json!("RS256");
            rsa["use"] = json!("sig");
            let mut ec = set["ec"].clone();
            ec["kid"] = json!(ec_kid);
            ec["alg"] = json!("ES256");
            ec["use"] = json!("sig");
            let file = dir.join(format!("keys-{i}.json"));
            std::fs::write(&file, json!({ "keys": [rsa, ec] }).to_string()).expect("write keys");
            let mut rsa_public = set["rsa_public"].clone();
            rsa_public["kid"] = json!(rsa_kid);
            rsa_public["alg"] = json!("RS256");
            rsa_public["use"] = json!("sig");
            IdpKeys {
                file,
                rsa_kid,
                ec_kid,
                ec_der: STANDARD
                    .decode(set["ec_der"].as_str().expect("ec_der"))
                    .expect("base64"),
                rsa_public,
            }
        })
        .collect()
}

struct Idp {
    proc: Proc,
    issuer: String,
    client: reqwest::Client,
}

/// Starts the IdP on `port` (0: any) with `keys`, logging each request.
async fn start_idp(name: &'static str, dir: &Path, port: u16, keys: &IdpKeys) -> Idp {
    let modules = repo().join("tests/idp/node_modules/oidc-provider");
    assert!(
        modules.exists(),
        "{} is missing: run scripts/setup.sh first",
        modules.display()
    );
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/idp/idp.mjs"))
        .env("IDP_HOST", "127.0.0.1")
        .env("IDP_PORT", port.to_string())
        .env("IDP_KEYS_FILE", &keys.file)
        .env("IDP_LOG", "1");
    let mut proc = Proc::spawn(name, command, dir);
    let ready: Value =
        serde_json::from_str(&proc.wait_line("IDP_READY ").await).expect("IDP_READY JSON");
    let issuer = ready["issuer"].as_str().expect("issuer").to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    Idp {
        proc,
        issuer,
        client,
    }
}

impl Idp {
    /// The requests the IdP served, other than the tests' own token requests.
    fn requests(&self) -> Vec<String> {
        self.proc
            .stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("[idp] "))
            .filter(|l| !l.starts_with("POST /token "))
            .map(|l| l.split(" -> ").next().unwrap_or(l).to_owned())
            .collect()
    }

    /// The token answer of the password grant for `user`; with `resource`, the access token is
    /// a JWT for the API (RS256, `typ: at+jwt`), otherwise it is opaque.
    async fn tokens(&self, user: &str, resource: bool) -> Value {
        // reqwest's `form` feature is off: the body is encoded by hand.
        let mut body = format!(
            "grant_type=password&username={user}&password={user}-password\
             &scope=openid%20groups%20permissions%20properties%20api%3Aread"
        );
        if resource {
            body.push_str("&resource=urn%3Aauthz-test%3Aapi");
        }
        let response = self
            .client
            .post(format!("{}/token", self.issuer))
            .basic_auth(CLIENT_ID, Some("authz-service-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let json: Value = response.json().await.expect("token JSON");
        assert_eq!(status, 200, "token for {user}: {json}");
        json
    }

    async fn access_token(&self, user: &str) -> String {
        self.tokens(user, true).await["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

fn source_for(issuer: &str, extra: Value) -> Jwt {
    let mut settings = json!({ "issuer": issuer, "audiences": [AUDIENCE] });
    for (k, v) in extra.as_object().expect("object") {
        settings[k] = v.clone();
    }
    let settings: JwtSource = serde_json::from_value(settings).expect("settings");
    Jwt::new(&settings, reqwest::Client::new()).expect("jwt source")
}

async fn wait_ready(source: &Jwt, within: Duration) {
    let deadline = Instant::now() + within;
    while !source.ready() {
        assert!(
            Instant::now() < deadline,
            "the source was not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bearer(token: &str) -> Request {
    Request {
        method: None,
        path: Ok("/".into()),
        headers: Headers::from_pairs([("authorization", format!("Bearer {token}"))]),
        principal: String::new(),
        request_id: String::new(),
        certificate: String::new(),
        metadata: None,
    }
}

async fn resolve(source: &Jwt, token: &str) -> Resolution {
    source.resolve(&bearer(token), &CONTEXT).await
}

/// The id of the user `token` resolves to, or a panic that says what it resolved to.
async fn user_id(source: &Jwt, token: &str, what: &str) -> String {
    match resolve(source, token).await {
        Resolution::User(user) => user.id.clone(),
        other => panic!("{what}: expected a user, got {other:?}"),
    }
}

/// Asserts that `token` is refused as invalid, with a reason that contains `reason`.
async fn assert_invalid(source: &Jwt, token: &str, reason: &str, what: &str) {
    match resolve(source, token).await {
        Resolution::Invalid(failure) => {
            assert_eq!(failure.reason, "jwt_invalid", "{what}");
            assert!(
                failure.detail.contains(reason),
                "{what}: refused with {:?}, expected {reason:?}",
                failure.detail
            );
            assert!(!failure.detail.contains(token), "{what}: token in reason");
        }
        other => panic!("{what}: expected invalid ({reason}), got {other:?}"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// An ES256 token signed with the IdP's own EC key, as the IdP would sign it.
fn es256(keys: &IdpKeys, claims: Value) -> String {
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": keys.ec_kid});
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_ec_der(&keys.ec_der),
        Algorithm::ES256,
    )
    .expect("sign ES256");
    format!("{message}.{signature}")
}

fn claims_for(issuer: &str, sub: &str) -> Value {
    json!({"iss": issuer, "sub": sub, "aud": AUDIENCE, "iat": now(), "exp": now() + 600,
           "groups": ["viewers"], "permissions": ["orders:read"]})
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("payload part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn header(token: &str) -> Value {
    let part = token.split('.').next().expect("header part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn tokens_are_verified_locally_without_asking_the_idp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = make_keys(dir.path(), 1).remove(0);
    let idp = start_idp("idp", dir.path(), 0, &keys).await;
    let issuer = idp.issuer.as_str();
    // Access tokens for the API (typ at+jwt), and ID tokens (audience: the client).
    let access = source_for(
        issuer,
        json!({"typ": "at+jwt", "claims": {"properties": ["properties.tenant"]}}),
    );
    let id = source_for(issuer, json!({"audiences": [CLIENT_ID]}));
    wait_ready(&access, Duration::from_secs(10)).await;
    wait_ready(&id, Duration::from_secs(10)).await;
    let mut fetches = idp.requests();
    fetches.sort();
    assert_eq!(
        fetches,
        [
            "GET /.well-known/openid-configuration",
            "GET /.well-known/openid-configuration",
            "GET /jwks",
            "GET /jwks",
        ],
        "one discovery and one key fetch per source"
    );

    let alice = idp.tokens("alice", true).await;
    let alice_at = alice["access_token"].as_str().expect("access_token");
    let alice_id = alice["id_token"].as_str().expect("id_token");
    let bob_at = idp.access_token("bob").await;
    assert_eq!(header(alice_at)["alg"], "RS256");
    assert_eq!(header(alice_at)["typ"], "at+jwt");
    assert_eq!(header(alice_at)["kid"], keys.rsa_kid.as_str());
    let opaque = idp.tokens("alice", false).await["access_token"]
        .as_str()
        .expect("opaque token")
        .to_owned();
    let bob_es = es256(&keys, claims_for(issuer, "bob"));

    // RS256 from the IdP: the claims map onto the user.
    let Resolution::User(user) = resolve(&access, alice_at).await else {
        panic!("alice's access token was refused")
    };
    assert_eq!(user.id, "alice");
    assert_eq!(user.groups, ["admins", "engineering"]);
    assert_eq!(
        user.permissions,
        ["orders:read", "orders:write", "users:admin"]
    );
    assert_eq!(user.properties_header, r#"{"properties.tenant":"acme"}"#);
    assert_eq!(user.expires_at, payload(alice_at)["exp"].as_u64());
    assert_eq!(user_id(&access, &bob_at, "bob RS256").await, "bob");
    // ES256, signed with the IdP's EC key.
    assert_eq!(user_id(&access, &bob_es, "bob ES256").await, "bob");
    // The ID token where ID tokens are expected, and only there.
    assert_eq!(user_id(&id, alice_id, "alice ID token").await, "alice");
    assert_invalid(
        &access,
        alice_id,
        "type None is not \"at+jwt\"",
        "ID token as access token",
    )
    .await;
    assert_invalid(&id, alice_at, "audience", "access token as ID token").await;
    // Not a JWT: passed on (to introspection, say).
    assert_eq!(resolve(&access, &opaque).await, Resolution::NoCredential);

    // Forgeries and stale tokens, against the IdP's real keys.
    let real = payload(alice_at);
    let mut tampered = real.clone();
    tampered["groups"] = json!(["admins", "root"]);
    let parts: Vec<&str> = alice_at.split('.').collect();
    let forged = [
        (
            format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
            "signature does not verify",
            "tampered payload",
        ),
        (
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "at+jwt"})),
                parts[1]
            ),
            "\"none\" (unsigned tokens) is never accepted",
            "alg none",
        ),
        (
            {
                // HS256 keyed with the issuer's public RSA key, as published.
                let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": keys.rsa_kid});
                let message = format!("{}.{}", b64(&header), parts[1]);
                let secret = keys.rsa_public.to_string();
                let signature = jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
                .expect("hmac");
                format!("{message}.{signature}")
            },
            "\"HS256\" (HMAC) is never accepted",
            "HS256 with the public key",
        ),
        (
            es256(
                &keys,
                json!({"iss": issuer, "sub": "bob", "aud": AUDIENCE, "exp": now() - 120}),
            ),
            "expired at",
            "expired",
        ),
        (
            es256(
                &keys,
                json!({"iss": issuer, "sub": "bob", "aud": AUDIENCE, "exp": now() + 900,
                       "nbf": now() + 600}),
            ),
            "not valid before",
            "not yet valid",
        ),
        (
            es256(&keys, claims_for("http://127.0.0.1:1", "bob")),
            "is not the configured issuer",
            "wrong issuer",
        ),
        (
            es256(
                &keys,
                json!({"iss": issuer, "sub": "bob", "aud": "urn:other", "exp": now() + 600}),
            ),
            "audience",
            "wrong audience",
        ),
        (
            es256(
                &keys,
                json!({"iss": issuer, "aud": AUDIENCE, "exp": now() + 600}),
            ),
            "no user id at \"sub\"",
            "no subject",
        ),
    ];
    for (token, reason, what) in &forged {
        assert_invalid(&access, token, reason, what).await;
    }

    // Many verifications, of the same and of different tokens: no request to the IdP.
    let tokens = [alice_at, bob_at.as_str(), bob_es.as_str()];
    for round in 0..100 {
        let token = tokens[round % tokens.len()];
        let id = user_id(&access, token, "repeated").await;
        assert!(id == "alice" || id == "bob");
    }
    assert_eq!(
        idp.requests().len(),
        4,
        "verifications asked the IdP: {:?}",
        idp.requests()
    );
}

#[tokio::test]
async fn rotated_keys_are_fetched_on_an_unknown_kid_and_old_keys_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sets = make_keys(dir.path(), 2);
    let (old, new) = (sets.remove(0), sets.remove(0));
    let [port] = free_ports::<1>();
    let mut idp = start_idp("idp-old", dir.path(), port, &old).await;
    let issuer = idp.issuer.clone();
    let source = Arc::new(source_for(
        &issuer,
        json!({"min_refresh_interval": "1s", "refresh_interval": "10m"}),
    ));
    wait_ready(&source, Duration::from_secs(10)).await;
    let loaded_at = Instant::now();
    let old_at = idp.access_token("alice").await;
    let old_es = es256(&old, claims_for(&issuer, "bob"));
    assert_eq!(user_id(&source, &old_at, "old RS256").await, "alice");
    assert_eq!(user_id(&source, &old_es, "old ES256").await, "bob");

    // The IdP restarts on the same port with new keys.
    idp.proc.stop();
    let mut idp = start_idp("idp-new", dir.path(), port, &new).await;
    assert_eq!(idp.issuer, issuer);
    let new_at = idp.access_token("alice").await;
    let new_es = es256(&new, claims_for(&issuer, "bob"));
    assert_eq!(header(&new_at)["kid"], new.rsa_kid.as_str());
    // Past the rate limit of the first fetch, so that the unknown kid may refetch.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(loaded_at.elapsed())).await;

    // Concurrent misses on the new kids share one fetch.
    let mut checks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let source = Arc::clone(&source);
        let token = if i % 2 == 0 {
            new_at.clone()
        } else {
            new_es.clone()
        };
        checks.spawn(async move { source.resolve(&bearer(&token), &CONTEXT).await });
    }
    while let Some(resolution) = checks.join_next().await {
        let resolution = resolution.expect("task");
        assert!(
            matches!(resolution, Resolution::User(_)),
            "a token of the new keys: {resolution:?}"
        );
    }
    assert_eq!(
        idp.requests(),
        ["GET /jwks"],
        "one key fetch for all the misses (the key set URL is kept from discovery)"
    );

    // The old keys are gone: their tokens are refused, without another fetch (rate-limited).
    assert_invalid(&source, &old_at, "no signing key with id", "old RS256").await;
    assert_invalid(&source, &old_es, "no signing key with id", "old ES256").await;
    assert_eq!(idp.requests().len(), 1, "{:?}", idp.requests());
    assert_eq!(user_id(&source, &new_at, "new RS256 again").await, "alice");

    // Once the rate limit has passed, an unknown kid fetches again (once), and is still refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_invalid(
        &source,
        &old_at,
        "no signing key with id",
        "old RS256 later",
    )
    .await;
    assert_invalid(
        &source,
        &old_es,
        "no signing key with id",
        "old ES256 later",
    )
    .await;
    assert_eq!(idp.requests(), ["GET /jwks", "GET /jwks"]);

    // The IdP goes away: an unknown kid cannot be settled (unavailable, not invalid), and the
    // keys already held keep working.
    idp.proc.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match resolve(&source, &old_at).await {
        Resolution::Unavailable(failure) => assert_eq!(failure.reason, "jwks_unavailable"),
        other => panic!("unknown kid while the key set is unreachable: {other:?}"),
    }
    assert_eq!(
        user_id(&source, &new_at, "after a failed fetch").await,
        "alice"
    );
    assert_eq!(
        user_id(&source, &new_es, "after a failed fetch").await,
        "bob"
    );
    assert!(source.ready(), "a failed fetch keeps the source ready");
}

#[tokio::test]
async fn the_source_is_not_ready_before_its_first_key_fetch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = make_keys(dir.path(), 1).remove(0);
    // Nothing listens on this port yet.
    let [port] = free_ports::<1>();
    let issuer = format!("http://127.0.0.1:{port}");
    let source = source_for(&issuer, json!({"min_refresh_interval": "500ms"}));
    let token = es256(&keys, claims_for(&issuer, "bob"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!source.ready());
    match resolve(&source, &token).await {
        Resolution::Unavailable(failure) => assert_eq!(failure.reason, "jwks_unavailable"),
        other => panic!("expected unavailable before the first key fetch, got {other:?}"),
    }

    // The issuer comes up: the retries find it, and the same token is now verified.
    let idp = start_idp("idp", dir.path(), port, &keys).await;
    assert_eq!(idp.issuer, issuer);
    wait_ready(&source, Duration::from_secs(5)).await;
    assert_eq!(
        user_id(&source, &token, "after the first fetch").await,
        "bob"
    );

    // Discovery must name the configured issuer: `localhost` reaches the same IdP, which calls
    // itself `127.0.0.1`, so its keys are never trusted.
    let impostor = source_for(
        &issuer.replace("127.0.0.1", "localhost"),
        json!({"min_refresh_interval": "200ms"}),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!impostor.ready());
    let requests = idp.requests();
    let count = |path: &str| requests.iter().filter(|r| r.ends_with(path)).count();
    assert!(
        count("/.well-known/openid-configuration") >= 2,
        "{requests:?}"
    );
    assert_eq!(count("/jwks"), 1, "{requests:?}");
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `max_key_staleness`: once key refreshes fail, the keys held are still trusted for that long,
/// and then a token is unavailable (`jwks_stale`, a 503) rather than verified with them; the
/// source stays ready (an IdP outage must not take every replica out of service) and reports
/// the refusal through `Keys::stale_at` (the `checkpoint_jwks_stale` gauge). A successful fetch
/// ends it. Without the setting the old keys are trusted for as long as fetches fail.
#[tokio::test]
async fn keys_that_cannot_be_refreshed_past_max_key_staleness_are_not_trusted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = make_keys(dir.path(), 1).remove(0);
    let [port] = free_ports::<1>();
    let mut idp = start_idp("idp", dir.path(), port, &keys).await;
    let issuer = idp.issuer.clone();
    let timer = json!({"refresh_interval": "300ms", "min_refresh_interval": "200ms"});
    let mut bounded_settings = timer.clone();
    bounded_settings["max_key_staleness"] = json!("2s");
    let bounded = source_for(&issuer, bounded_settings);
    let unbounded = source_for(&issuer, timer);
    wait_ready(&bounded, Duration::from_secs(10)).await;
    wait_ready(&unbounded, Duration::from_secs(10)).await;
    let token = es256(&keys, claims_for(&issuer, "bob"));
    assert_eq!(user_id(&bounded, &token, "fresh keys").await, "bob");

    // The IdP goes away: refreshes fail; for the first two seconds the keys are still trusted.
    idp.proc.stop();
    let failed = bounded.keys().fetches().1;
    until("a failed refresh", Duration::from_secs(10), || {
        bounded.keys().fetches().1 > failed
    })
    .await;
    assert!(bounded.keys().failing_since().is_some());
    assert_eq!(user_id(&bounded, &token, "within staleness").await, "bob");

    // Past them: refused as unavailable, while the source without the bound still trusts them.
    until("stale keys", Duration::from_secs(10), || {
        bounded.keys().stale_at(tokio::time::Instant::now())
    })
    .await;
    match resolve(&bounded, &token).await {
        Resolution::Unavailable(failure) => assert_eq!(failure.reason, "jwks_stale"),
        other => panic!("stale keys: {other:?}"),
    }
    assert_eq!(user_id(&unbounded, &token, "no bound").await, "bob");
    assert!(!unbounded.keys().stale_at(tokio::time::Instant::now()));
    assert!(bounded.ready(), "stale keys keep the source ready");

    // The IdP is back: the next refresh makes the keys trusted again.
    let _idp = start_idp("idp-back", dir.path(), port, &keys).await;
    let fetched = bounded.keys().fetches().0;
    until("a successful refresh", Duration::from_secs(10), || {
        bounded.keys().fetches().0 > fetched
    })
    .await;
    assert!(!bounded.keys().stale_at(tokio::time::Instant::now()));
    assert_eq!(user_id(&bounded, &token, "refreshed").await, "bob");
}
