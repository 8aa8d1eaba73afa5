//! Component tests: the real server on loopback port 0, a real tonic client, and the test
//! user-info server. What the decision table cannot say: what user-info receives, deadlines,
//! both header forms, health, reflection, status routes, shutdown, hostile input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use support::userinfo::UserInfoServer;
use support::{Server, answer, request, request_pairs};

const RULES: &str = r#"{
  "/": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/private": { "ALL": { "authorization": { "expression": "true", "public": false } } },
  "/admin": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

async fn channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

async fn with_userinfo(extra: &[(&str, &str)]) -> (UserInfoServer, Server) {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let mut vars = vec![("USERINFO_URL", url.as_str())];
    vars.extend_from_slice(extra);
    let server = Server::start(RULES, &vars).await;
    (userinfo, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_info_receives_exactly_the_proxied_headers() {
    let (userinfo, server) =
        with_userinfo(&[("HEADERS_TO_PROXY", "authorization,cookie,x-request-id,host")]).await;
    let response = server
        .check(request(
            "GET",
            "/admin",
            &[
                (":authority", "api.example"),
                ("authorization", "Bearer alice"),
                ("cookie", "sid=1"),
                ("x-request-id", "req-42"),
                ("x-secret", "must-not-leak"),
                ("x-forwarded-for", "10.0.0.1"),
                ("miauserid", "spoof"),
            ],
        ))
        .await;
    assert_eq!(answer(&response).http_status, 200);
    assert_eq!(
        response.dynamic_metadata, None,
        "no dynamic metadata unless CHECKPOINT_DYNAMIC_METADATA asks for it"
    );
    let calls = userinfo.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.path, "/userinfo");
    assert_eq!(
        call.headers.get("authorization").map(String::as_str),
        Some("Bearer alice")
    );
    assert_eq!(
        call.headers.get("cookie").map(String::as_str),
        Some("sid=1")
    );
    assert_eq!(
        call.headers.get("x-request-id").map(String::as_str),
        Some("req-42")
    );
    // Behind Envoy an HTTP/1 Host arrives as :authority; Mia's default list proxies "host".
    assert_eq!(
        call.headers.get("host").map(String::as_str),
        Some("api.example")
    );
    for never in ["x-secret", "x-forwarded-for", "miauserid", ":authority"] {
        assert!(
            !call.headers.contains_key(never),
            "{never} reached user-info: {:?}",
            call.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authorization_header_means_no_user_info_call() {
    let (userinfo, server) =
        with_userinfo(&[("AUTHORIZATION_HEADERS_TO_PROXY", "authorization,cookie")]).await;
    let public = answer(&server.check(request("GET", "/", &[("x-other", "1")])).await);
    let private = answer(&server.check(request("GET", "/private", &[])).await);
    assert_eq!((public.http_status, private.http_status), (200, 401));
    assert_eq!(
        userinfo.count(),
        0,
        "user-info must not be called without a credential"
    );
    let with_cookie = answer(
        &server
            .check(request(
                "GET",
                "/private",
                &[("cookie", "x"), ("authorization", "Bearer alice")],
            ))
            .await,
    );
    assert_eq!(with_cookie.http_status, 200);
    assert_eq!(userinfo.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_info_timeout_is_unavailable() {
    let (_userinfo, server) = with_userinfo(&[("CHECKPOINT_USERINFO_TIMEOUT", "200ms")]).await;
    let started = Instant::now();
    let private = answer(
        &server
            .check(request(
                "GET",
                "/private",
                &[("authorization", "Bearer slow-3000")],
            ))
            .await,
    );
    assert_eq!(private.http_status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the timeout was not applied"
    );
    // On a public route the outcome does not depend on the user: anonymous goes on.
    let public = answer(
        &server
            .check(request(
                "GET",
                "/",
                &[("authorization", "Bearer slow-3000")],
            ))
            .await,
    );
    assert_eq!(public.http_status, 200);
    assert!(!public.headers.contains_key("miauserid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_deadline_cuts_the_user_info_call_short() {
    let (_userinfo, server) = with_userinfo(&[("CHECKPOINT_USERINFO_TIMEOUT", "5s")]).await;
    // Set grpc-timeout by hand, without a client-side timer, to see what the server answers.
    let mut call = tonic::Request::new(request(
        "GET",
        "/private",
        &[("authorization", "Bearer slow-3000")],
    ));
    call.metadata_mut()
        .insert("grpc-timeout", "300m".parse().expect("ascii"));
    let started = Instant::now();
    let response = server
        .client()
        .await
        .check(call)
        .await
        .expect("answered")
        .into_inner();
    let elapsed = started.elapsed();
    assert_eq!(answer(&response).http_status, 503);
    assert!(
        elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}: the deadline was ignored"
    );
    // With a generous deadline the same slow user-info answers in time.
    let mut call = tonic::Request::new(request(
        "GET",
        "/private",
        &[("authorization", "Bearer slow-100")],
    ));
    call.metadata_mut()
        .insert("grpc-timeout", "5S".parse().expect("ascii"));
    let response = server
        .client()
        .await
        .check(call)
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer(&response).http_status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_header_forms_decide_alike() {
    let (_userinfo, server) = with_userinfo(&[]).await;
    let cases: [(&str, &str, &[u8], u16); 4] = [
        ("GET", "/admin", b"Bearer alice", 200),
        ("GET", "/admin", b"Bearer bob", 403),
        ("GET", "/private", b"Bearer nobody", 401),
        ("POST", "/nope", b"Bearer alice", 404),
    ];
    for (method, path, token, want) in cases {
        let token_text = String::from_utf8_lossy(token).into_owned();
        // The same x-request-id, so that denies carry the same decision id.
        let map = answer(
            &server
                .check(request(
                    method,
                    path,
                    &[("authorization", &token_text), ("x-request-id", "r-1")],
                ))
                .await,
        );
        let pairs = answer(
            &server
                .check(request_pairs(
                    method,
                    path,
                    &[("Authorization", token), ("X-Request-Id", b"r-1")],
                ))
                .await,
        );
        assert_eq!(
            (map.http_status, pairs.http_status),
            (want, want),
            "{method} {path} {token_text}"
        );
        assert_eq!(map.headers, pairs.headers);
        assert_eq!(map.removed, pairs.removed);
    }
    // Non-UTF-8 bytes in any header neither crash nor log anyone in.
    let odd = answer(
        &server
            .check(request_pairs(
                "GET",
                "/private",
                &[
                    ("authorization", &[0xff, 0xfe, b'x']),
                    ("x-bin", &[0x80, 0x00, 0xc3]),
                ],
            ))
            .await,
    );
    assert_eq!(odd.http_status, 401);
    // Spoofed identity headers in the pair form, repeated, are removed too.
    let spoof = answer(
        &server
            .check(request_pairs(
                "GET",
                "/",
                &[("miauserid", b"a"), ("MiaUserId", b"b")],
            ))
            .await,
    );
    assert_eq!(spoof.http_status, 200);
    assert!(spoof.removed.contains(&"miauserid".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_denied_never_allowed_and_never_crash() {
    let (_userinfo, server) = with_userinfo(&[]).await;
    let mut client = server.client().await;
    // A small deterministic generator: enough variety to hit every branch of the request stage.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "/", "private", "admin", "..", ".", "%2e", "%2F", "%00", ";", "\\", "//", "%", "%zz", "?",
        "#", "é", "\u{0}", "\r\n", "*",
    ];
    let methods = [
        "GET", "get", "POST", "TRACE", "", "CONNECT", "G\u{0}ET", "OPTIONS",
    ];
    for _ in 0..400 {
        let mut path = String::new();
        for _ in 0..(next() % 8) {
            path.push_str(pieces[(next() % pieces.len() as u64) as usize]);
        }
        let method = methods[(next() % methods.len() as u64) as usize];
        let response = client
            .check(request(method, &path, &[("x-junk", "\u{1}\u{7f}")]))
            .await
            .expect("a hostile request is answered, not failed")
            .into_inner();
        let a = answer(&response);
        // Without a credential, only the public "/" rule may allow, and only for GET.
        if a.http_status == 200 {
            assert_eq!(method, "GET", "allowed {method} {path:?}");
            let normalized =
                checkpoint::testing::path::normalize(&path).expect("allowed paths normalise");
            assert!(
                !normalized.starts_with("/private") && !normalized.starts_with("/admin"),
                "allowed {path:?} -> {normalized}"
            );
        }
    }
    let empty = answer(
        &client
            .check(CheckRequest::default())
            .await
            .expect("answered")
            .into_inner(),
    );
    assert_eq!(empty.http_status, 400);
}

/// Bytes that are not a `CheckRequest` get INVALID_ARGUMENT (Envoy then answers its
/// `status_on_error`), never an allow, and the connection and the server go on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_check_messages_are_refused_and_the_server_goes_on() {
    let (_userinfo, server) = with_userinfo(&[]).await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let url = format!(
        "http://{}/envoy.service.auth.v3.Authorization/Check",
        server.grpc
    );
    let frame = |message: &[u8]| {
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    };
    let malformed: [&[u8]; 4] = [
        // attributes: a length beyond the end of the message
        &[0x0a, 0x05, 0x01],
        // attributes.request.http.path (a string) that is not UTF-8
        &[0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x22, 0x01, 0xff],
        // a varint of eleven bytes
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        // wire type 7 does not exist
        &[0x0f],
    ];
    for message in malformed {
        let response = http
            .post(&url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(frame(message))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "{message:?}");
        assert_eq!(
            response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some("3"),
            "{message:?}: {:?}",
            response.headers()
        );
    }
    // The same server answers a good Check right after, on a new and on the same connection.
    let mut client = server.client().await;
    let allowed = answer(
        &client
            .check(request("GET", "/", &[]))
            .await
            .expect("answered")
            .into_inner(),
    );
    assert_eq!(allowed.http_status, 200);
    let mut good = Vec::new();
    prost::Message::encode(&request("GET", "/", &[]), &mut good).expect("encode");
    let response = http
        .post(&url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame(&good))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    let body = response.bytes().await.expect("body");
    assert!(body.len() > 5, "a CheckResponse message: {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_routes_health_and_reflection() {
    let (_userinfo, server) = with_userinfo(&[("SERVICE_VERSION", "9.9.9")]).await;
    for route in ["/-/healthz", "/-/ready", "/-/check-up"] {
        let r = reqwest::get(format!("http://{}{route}", server.http))
            .await
            .expect("status route");
        assert_eq!(r.status(), 200, "{route}");
        let body: serde_json::Value = r.json().await.expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"status": "OK", "name": "checkpoint", "version": "9.9.9"})
        );
    }

    assert_health(&server, ServingStatus::Serving).await;

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let asks = vec![
        ServerReflectionRequest {
            message_request: Some(MessageRequest::ListServices(String::new())),
            ..Default::default()
        },
        ServerReflectionRequest {
            message_request: Some(MessageRequest::FileContainingSymbol(
                "envoy.service.auth.v3.Authorization".into(),
            )),
            ..Default::default()
        },
    ];
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(asks))
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(first)) = tokio_stream::StreamExt::next(&mut answers).await else {
        panic!("no list answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization"),
        "{names:?}"
    );
    let Some(Ok(second)) = tokio_stream::StreamExt::next(&mut answers).await else {
        panic!("no file answer")
    };
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("{second:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_checks() {
    let userinfo = UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let mut server = Server::start(
        RULES,
        &[
            ("USERINFO_URL", url.as_str()),
            ("DELAY_SHUTDOWN_SECONDS", "500ms"),
        ],
    )
    .await;
    let client = server.client().await;
    let mut in_flight_client = client.clone();
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .check(request(
                "GET",
                "/admin",
                &[("authorization", "Bearer slow-1000")],
            ))
            .await
            .map(|r| answer(&r.into_inner()).http_status)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // At once: not ready, health NOT_SERVING, but still answering.
    let ready = reqwest::get(format!("http://{}/-/ready", server.http))
        .await
        .expect("still listening");
    assert_eq!(ready.status(), 503);
    let live = reqwest::get(format!("http://{}/-/healthz", server.http))
        .await
        .expect("still listening");
    assert_eq!(live.status(), 200);
    assert_health(&server, ServingStatus::NotServing).await;
    let during_delay = answer(
        &client
            .clone()
            .check(request("GET", "/", &[]))
            .await
            .expect("served during the delay")
            .into_inner(),
    );
    assert_eq!(during_delay.http_status, 200);

    assert_eq!(
        in_flight
            .await
            .expect("task")
            .expect("the in-flight Check completed"),
        200
    );
    let result = tokio::time::timeout(Duration::from_secs(10), &mut server.task).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "run() did not return cleanly: {result:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(server.grpc).await.is_err(),
        "still accepting after shutdown"
    );
}

/// A Check the client cancels (it resets the stream, as Envoy does when its own timeout fires)
/// drops its user-info call: the authentication manager's slow answer is never finished, and
/// nothing is cached, so the next Check asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_check_cancels_its_user_info_call() {
    let (userinfo, server) = with_userinfo(&[("CHECKPOINT_USERINFO_TIMEOUT", "5s")]).await;
    let mut client = server.client().await;
    let call = client.check(request(
        "GET",
        "/private",
        &[("authorization", "Bearer slow-1500")],
    ));
    // No grpc-timeout: the client gives up on its own and drops the call.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err(),
        "answered before the client gave up"
    );
    // Long enough for the slow answer to have finished, had its caller waited for it.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(userinfo.count(), 1, "user-info was called once");
    assert_eq!(
        userinfo.slow_finished(),
        0,
        "the user-info call outlived the cancelled Check"
    );
    // Nothing was cached: the same credential is looked up again.
    let again = answer(
        &client
            .check(request(
                "GET",
                "/private",
                &[("authorization", "Bearer slow-10")],
            ))
            .await
            .expect("answered")
            .into_inner(),
    );
    assert_eq!(again.http_status, 200);
    assert_eq!(userinfo.count(), 2);
    assert_eq!(userinfo.slow_finished(), 1);
}

/// gRPC health follows readiness for both names: while an identity source is not ready (a JWT
/// source whose keys cannot be fetched), `/-/ready` answers 503 and both `""` and
/// `envoy.service.auth.v3.Authorization` say NOT_SERVING; health itself is described by
/// reflection, so grpcurl needs no `.proto` for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_ready_for_both_names() {
    let server = Server::start_native_unready(
        r#"
version: 1
rules:
  inline:
    /: { GET: { authorization: { expression: "true", public: true } } }
identity:
  sources:
    - type: jwt
      jwks_uri: http://127.0.0.1:9/jwks.json
      issuer: http://127.0.0.1:9
      algorithms: [RS256]
"#,
    )
    .await;
    // Time for a first key fetch to fail and for readiness to be looked at more than once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(format!("http://{}/-/ready", server.http))
        .await
        .expect("listening");
    assert_eq!(ready.status(), 503);
    assert_health(&server, ServingStatus::NotServing).await;
}

/// gRPC health says `want` for the overall `""` and for the Authorization service.
async fn assert_health(server: &Server, want: ServingStatus) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel(server).await);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, want as i32, "{service:?}");
    }
}
