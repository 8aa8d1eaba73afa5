//! The native configuration file through the real server: ordered identity sources (API keys,
//! mTLS, user-info), per-rule source lists, and clientType from verified keys only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use sha2::{Digest, Sha256};
use support::userinfo::UserInfoServer;
use support::{Server, answer, request, request_from_peer};

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn start() -> (UserInfoServer, Server) {
    let userinfo = UserInfoServer::start().await;
    let yaml = format!(
        r#"
version: 1
server: {{ shutdown_delay: 0 }}
rules:
  inline:
    /mobile:
      GET: {{ authorization: {{ expression: "clientType == 'mobile'", public: true }} }}
    /mobile-admin:
      GET: {{ authorization: {{ expression: "clientType == 'mobile' && groups.admin", public: false }} }}
    /apps:
      GET: {{ authorization: {{ expression: "groups.apps", public: true }} }}
    /mesh-admin:
      ALL:
        authorization: {{ expression: "groups.platform", public: false }}
        identity: [mtls]
    /private:
      ALL: {{ authorization: {{ expression: "groups.admin", public: false }} }}
identity:
  sources:
    - type: api_key
      keys:
        - {{ sha256: "{mobile}", client_type: mobile, groups: [apps] }}
        - {{ sha256: "{web}", client_type: web }}
    - type: mtls
      principals:
        - {{ principal: "spiffe://mesh.test/ns/ops/sa/deployer", groups: [platform] }}
    - type: userinfo
      url: {url}
"#,
        mobile = digest("k-mobile"),
        web = digest("k-web"),
        url = userinfo.url("/userinfo"),
    );
    let server = Server::start_native(&yaml).await;
    (userinfo, server)
}

async fn status(server: &Server, path: &str, headers: &[(&str, &str)]) -> u16 {
    answer(&server.check(request("GET", path, headers)).await).http_status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_resolve_the_client_type() {
    let (_userinfo, server) = start().await;
    assert_eq!(
        status(&server, "/mobile", &[("secret", "k-mobile")]).await,
        200
    );
    assert_eq!(
        status(&server, "/mobile", &[("client-key", "k-mobile")]).await,
        200
    );
    assert_eq!(
        status(
            &server,
            "/mobile",
            &[("cookie", "a=1; mia_client_key=k-mobile")]
        )
        .await,
        200
    );
    assert_eq!(
        status(&server, "/mobile", &[("secret", "k-web")]).await,
        401
    );
    // The header is the caller's own claim: with API keys configured it is not trusted.
    assert_eq!(
        status(&server, "/mobile", &[("client-type", "mobile")]).await,
        401
    );
    // An unknown key is a 401 even on a public route.
    assert_eq!(
        status(&server, "/mobile", &[("secret", "guess")]).await,
        401
    );
    assert_eq!(status(&server, "/apps", &[("secret", "guess")]).await, 401);
    // A key's groups count in expressions.
    assert_eq!(
        status(&server, "/apps", &[("secret", "k-mobile")]).await,
        200
    );
    assert_eq!(status(&server, "/apps", &[("secret", "k-web")]).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_and_a_user_together() {
    let (userinfo, server) = start().await;
    let both = [("secret", "k-mobile"), ("authorization", "Bearer alice")];
    let a = answer(&server.check(request("GET", "/mobile-admin", &both)).await);
    assert_eq!(a.http_status, 200);
    assert_eq!(
        a.headers.get("miauserid").map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        status(
            &server,
            "/mobile-admin",
            &[("secret", "k-web"), ("authorization", "Bearer alice")]
        )
        .await,
        403
    );
    assert_eq!(
        status(
            &server,
            "/mobile-admin",
            &[("authorization", "Bearer alice")]
        )
        .await,
        403
    );
    assert!(userinfo.count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_can_accept_only_mtls() {
    let (userinfo, server) = start().await;
    let deployer = "spiffe://mesh.test/ns/ops/sa/deployer";
    let a = answer(
        &server
            .check(request_from_peer(
                "POST",
                "/mesh-admin/deploy",
                deployer,
                &[],
            ))
            .await,
    );
    assert_eq!(a.http_status, 200);
    assert_eq!(
        a.headers.get("miauserid").map(String::as_str),
        Some(deployer)
    );
    assert_eq!(
        a.headers.get("miausergroups").map(String::as_str),
        Some("platform")
    );
    // An unknown peer is an invalid credential; a user token is not asked for on this rule.
    let stranger = answer(
        &server
            .check(request_from_peer(
                "POST",
                "/mesh-admin/x",
                "spiffe://mesh.test/ns/x/sa/y",
                &[],
            ))
            .await,
    );
    assert_eq!(stranger.http_status, 401);
    let calls = userinfo.count();
    assert_eq!(
        status(&server, "/mesh-admin", &[("authorization", "Bearer alice")]).await,
        401
    );
    assert_eq!(
        userinfo.count(),
        calls,
        "user-info must not be asked on an mTLS-only rule"
    );
    // Elsewhere the chain goes on to user-info.
    assert_eq!(
        status(&server, "/private", &[("authorization", "Bearer alice")]).await,
        200
    );
}
