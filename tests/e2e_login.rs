//! Single sign-on end to end, through real Envoy (TLS) and the real IdP, from the native
//! configuration file:
//!
//! - the browser login redirect: Envoy really answers a browser's page load with checkpoint's
//!   302 and `Location`, and an API client with the 401 and its JSON body; a forged `Host` does
//!   not move the redirect off the configured login page;
//! - a SAML login bridged through an OIDC broker: the IdP's user `sam` gets access tokens shaped
//!   like a broker's after a SAML login (the SAML group attribute as `saml_groups`, the upstream
//!   identity provider as `idp`, `amr`); the `jwt` source validates them against the IdP's keys
//!   and its `claims` mapping turns the attribute into checkpoint's groups. No SAML is spoken
//!   here: the IdP issues the tokens a broker would (see README, "SAML").
//!
//! Needs `scripts/setup.sh` (Envoy in `.venv`, the IdP's `node_modules`) and `openssl`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;

use std::net::SocketAddr;
use std::time::Duration;

use e2e_support::{NativeAddrs, NativeStack, Reply};

/// The IdP's resource server (fixtures.json `resource`): tokens for it are JWTs.
const API: &str = "urn:authz-test:api";
const LOGIN: &str = "https://login.example.test/web-login";
/// Firefox's `Accept` on a page load.
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

fn config(addrs: &NativeAddrs) -> String {
    let issuer = &addrs.issuer;
    let head = addrs.head();
    format!(
        r#"
{head}
rules:
  inline:
    /finance:
      ALL: {{ authorization: {{ expression: "groups.finance", public: false }} }}
    /api:
      ALL: {{ authorization: {{ expression: "true", public: false }} }}
identity:
  sources:
    - type: jwt
      issuer: "{issuer}"
      audiences: ["{API}"]
      typ: at+jwt
      # What a SAML-brokering IdP puts in its tokens: the SAML group attribute, and where the
      # user logged in.
      claims: {{ groups: saml_groups, properties: [idp, amr] }}
login_redirect:
  url: "{LOGIN}"
"#
    )
}

/// A JWT access token for `user`, for the API.
async fn jwt_for(stack: &NativeStack, user: &str) -> String {
    let response = stack.token_response(user, "openid", Some(API)).await;
    response["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// An HTTPS client on HTTP/1.1 (so that a `Host` header can be forged) that trusts only the test
/// CA and follows no redirect.
fn http1_client(stack: &NativeStack) -> reqwest::Client {
    let ca = std::fs::read(stack.tls.join("ca.crt")).expect("read ca.crt");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA")])
        .resolve(
            "localhost",
            SocketAddr::from(([127, 0, 0, 1], stack.https_port)),
        )
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::from(
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}")),
    )
    .await
}

fn carried(location: &str) -> String {
    reqwest::Url::parse(location)
        .expect("the Location is a URL")
        .query_pairs()
        .find(|(name, _)| name == "redirect")
        .map(|(_, value)| value.into_owned())
        .expect("the redirect parameter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_redirected_through_envoy_and_saml_brokered_tokens_map_their_groups() {
    let stack = NativeStack::start(config).await;
    let client = http1_client(&stack);
    let origin = format!("https://localhost:{}", stack.https_port);

    // A page load without a session: Envoy sends checkpoint's 302 to the browser.
    let page = get(
        &client,
        &stack.url("/finance/reports?year=2026"),
        &[("accept", BROWSER)],
    )
    .await;
    assert_eq!(page.status, 302, "{page:?}");
    assert!(!page.reached_upstream());
    let location = page.header("location").expect("location").to_owned();
    assert_eq!(
        location,
        format!(
            "{LOGIN}?redirect={}",
            e2e_support::form_encode(&format!("{origin}/finance/reports?year=2026"))
        )
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(page.header("x-checkpoint-decision-id").is_some());

    // An API client: the 401 with its JSON body, no Location.
    let api = get(
        &client,
        &stack.url("/api/orders"),
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(api.status, 401, "{api:?}");
    assert_eq!(api.json["statusCode"], 401, "{api:?}");
    assert!(api.header("location").is_none());

    // A forged Host reaches checkpoint (Envoy routes every domain here) and changes nothing
    // but the carried value: the browser still goes to the configured login page.
    let forged = get(
        &client,
        &stack.url("/api/orders"),
        &[("accept", BROWSER), ("host", "evil.example")],
    )
    .await;
    assert_eq!(forged.status, 302, "{forged:?}");
    let target = forged.header("location").expect("location");
    let parsed = reqwest::Url::parse(target).expect("URL");
    assert_eq!(parsed.host_str(), Some("login.example.test"), "{target}");
    assert!(
        target.starts_with(&format!("{LOGIN}?redirect=")),
        "{target}"
    );
    assert_eq!(carried(target), "https://evil.example/api/orders");

    // A broker's token after a SAML login: the SAML groups attribute became checkpoint's groups,
    // and the upstream sees where the user logged in.
    let sam = jwt_for(&stack, "sam").await;
    let bearer = format!("Bearer {sam}");
    let allowed = get(
        &client,
        &stack.url("/finance/reports"),
        &[("accept", BROWSER), ("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert!(allowed.reached_upstream());
    assert_eq!(allowed.upstream_header("miauserid"), Some("sam"));
    assert_eq!(
        allowed.upstream_header("miausergroups"),
        Some("finance,approvers")
    );
    let properties: serde_json::Value = serde_json::from_str(
        allowed
            .upstream_header("miauserproperties")
            .expect("properties"),
    )
    .expect("JSON properties");
    assert_eq!(properties["idp"], "corp-saml", "{properties}");
    assert_eq!(
        properties["amr"],
        serde_json::json!(["ext"]),
        "{properties}"
    );

    // A user whose token carries no SAML groups is logged in but not allowed: 403, never a
    // redirect.
    let alice = jwt_for(&stack, "alice").await;
    let bearer = format!("Bearer {alice}");
    let refused = get(
        &client,
        &stack.url("/finance/reports"),
        &[("accept", BROWSER), ("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.header("location").is_none());

    // A token that does not verify (here: cut short) from a browser: sent to log in again.
    let broken = format!("Bearer {}", &sam[..sam.len() - 4]);
    let again = get(
        &client,
        &stack.url("/finance/reports"),
        &[("accept", BROWSER), ("authorization", broken.as_str())],
    )
    .await;
    assert_eq!(again.status, 302, "{again:?}");
    assert_eq!(
        carried(again.header("location").expect("location")),
        format!("{origin}/finance/reports")
    );
}
