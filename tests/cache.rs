//! The identity cache through the real server: one user-info call per credential, not per
//! request; errors never cached; concurrent misses coalesced. (TTL expiry is tested with paused
//! time in `src/identity/cache.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use support::userinfo::UserInfoServer;
use support::{Server, answer, request};

const RULES: &str = r#"{
  "/": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/private": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

async fn start(extra: &[(&str, &str)]) -> (UserInfoServer, Server) {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let mut vars = vec![("USERINFO_URL", url.as_str())];
    vars.extend_from_slice(extra);
    (userinfo.clone(), Server::start(RULES, &vars).await)
}

async fn status(server: &Server, path: &str, token: &str) -> u16 {
    answer(
        &server
            .check(request("GET", path, &[("authorization", token)]))
            .await,
    )
    .http_status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_per_credential_and_never_shared_between_credentials() {
    let (userinfo, server) = start(&[]).await;
    for _ in 0..5 {
        assert_eq!(status(&server, "/private", "Bearer alice").await, 200);
    }
    assert_eq!(userinfo.count(), 1);
    assert_eq!(status(&server, "/private", "Bearer bob").await, 403);
    assert_eq!(status(&server, "/private", "Bearer bob").await, 403);
    assert_eq!(
        userinfo.count(),
        2,
        "bob must not reuse alice's entry, nor call twice"
    );
    // Any proxied header is part of the key: the same token with another cookie is another entry.
    let with_cookie = answer(
        &server
            .check(request(
                "GET",
                "/private",
                &[("authorization", "Bearer alice"), ("cookie", "s=1")],
            ))
            .await,
    );
    assert_eq!(with_cookie.http_status, 200);
    assert_eq!(userinfo.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_answers_are_cached_errors_are_not() {
    let (userinfo, server) = start(&[]).await;
    assert_eq!(status(&server, "/private", "Bearer status-401").await, 401);
    assert_eq!(status(&server, "/private", "Bearer status-401").await, 401);
    assert_eq!(
        userinfo.count(),
        1,
        "a 4xx answer is kept for the negative TTL"
    );
    assert_eq!(status(&server, "/private", "Bearer status-500").await, 503);
    assert_eq!(status(&server, "/private", "Bearer status-500").await, 503);
    assert_eq!(userinfo.count(), 3, "a 5xx answer is never kept");
    assert_eq!(status(&server, "/private", "Bearer notjson").await, 503);
    assert_eq!(status(&server, "/private", "Bearer notjson").await, 503);
    assert_eq!(userinfo.count(), 5, "an unreadable answer is never kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_turns_the_cache_off_and_negative_ttl_zero_keeps_no_anonymous() {
    let (userinfo, server) = start(&[("CHECKPOINT_IDENTITY_CACHE_TTL", "0")]).await;
    for _ in 0..3 {
        assert_eq!(status(&server, "/private", "Bearer alice").await, 200);
    }
    assert_eq!(userinfo.count(), 3);

    let (userinfo, server) = start(&[("CHECKPOINT_NEGATIVE_CACHE_TTL", "0")]).await;
    assert_eq!(status(&server, "/private", "Bearer status-401").await, 401);
    assert_eq!(status(&server, "/private", "Bearer status-401").await, 401);
    assert_eq!(userinfo.count(), 2);
    assert_eq!(status(&server, "/private", "Bearer alice").await, 200);
    assert_eq!(status(&server, "/private", "Bearer alice").await, 200);
    assert_eq!(userinfo.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_checks_with_one_new_credential_make_one_call() {
    let (userinfo, server) = start(&[]).await;
    let client = server.client().await;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .check(request(
                    "GET",
                    "/private",
                    &[("authorization", "Bearer slow-300")],
                ))
                .await
                .map(|r| answer(&r.into_inner()).http_status)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("answered"), 200);
    }
    assert_eq!(userinfo.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_ids_do_not_split_the_cache() {
    // Envoy sets a fresh x-request-id (and trace context) on every request; the default
    // HEADERS_TO_PROXY sends it to user-info, but the cache must still hit.
    let (userinfo, server) = start(&[]).await;
    for i in 0..5 {
        let id = format!("req-{i}");
        let trace = format!("00-{i:032x}-{i:016x}-01");
        let a = answer(
            &server
                .check(request(
                    "GET",
                    "/private",
                    &[
                        ("authorization", "Bearer alice"),
                        ("x-request-id", &id),
                        ("traceparent", &trace),
                    ],
                ))
                .await,
        );
        assert_eq!(a.http_status, 200);
    }
    assert_eq!(userinfo.count(), 1);
    // ...while every call that is made still carries the request's own id.
    assert_eq!(
        userinfo.calls()[0]
            .headers
            .get("x-request-id")
            .map(String::as_str),
        Some("req-0")
    );
}
