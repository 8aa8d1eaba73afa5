//! Faults of the identity provider, with real servers: an authentication manager written here
//! that misbehaves on demand (slow tails, flapping, resets mid-body, oversized and invalid bodies,
//! JSON nested 10,000 deep), key set endpoints that answer garbage or no keys, and a host name
//! that does not resolve. For each: never an allow the rule would not give an anonymous caller,
//! 503 where identity is needed, nothing cached, other callers still answered; and the memory of
//! many oversized answers in flight stays within the stated bound per call.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod e2e_support;
mod faults_support;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_support::spawn_checkpoint_ready;
use faults_support::{Manager, RULES, TAIL};
use serde_json::json;
use support::{Server, answer, request};

async fn start_checkpoint(manager: SocketAddr) -> Server {
    Server::start(
        RULES,
        &[
            ("USERINFO_URL", &format!("http://{manager}/userinfo")),
            ("CHECKPOINT_USERINFO_TIMEOUT", "1s"),
        ],
    )
    .await
}

/// Asks for `/private` and `/public` with `token` and checks the fail-closed answers: 503 where
/// identity is needed, an anonymous allow (no user headers) where the rule lets anyone in.
async fn assert_fails_closed(server: &Server, token: &str) {
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let private = answer(&server.check(request("GET", "/private", &headers)).await);
    assert_eq!(private.http_status, 503, "{token}: /private {private:?}");
    let public = answer(&server.check(request("GET", "/public", &headers)).await);
    assert_eq!(public.http_status, 200, "{token}: /public {public:?}");
    assert!(
        !public.headers.contains_key("miauserid"),
        "{token}: an anonymous allow carries no user: {public:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_fails_closed_and_nothing_is_cached() {
    let (manager, addr) = Manager::start().await;
    let server = start_checkpoint(addr).await;
    for token in ["reset", "big-1", "big-cl", "badutf8", "deep", "deep-field"] {
        assert_fails_closed(&server, token).await;
        // Nothing was cached: each of the two Checks asked the manager.
        assert_eq!(manager.calls(token), 2, "{token}");
        assert_fails_closed(&server, token).await;
        assert_eq!(manager.calls(token), 4, "{token}: a fault was cached");
    }
    // The server is still whole: a good token is allowed.
    let ok = answer(
        &server
            .check(request(
                "GET",
                "/private",
                &[("authorization", "Bearer alice")],
            ))
            .await,
    );
    assert_eq!(ok.http_status, 200);
    assert_eq!(ok.headers["miauserid"], "alice");
}

/// A manager whose answers take ten times the timeout: every Check that needs it is a 503 within
/// the timeout, the late answer is never cached, and another caller's warm Checks are answered
/// all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tail_is_cut_at_the_timeout_and_others_keep_being_answered() {
    let (manager, addr) = Manager::start().await;
    let server = Arc::new(start_checkpoint(addr).await);
    let warm = [("authorization", "Bearer alice")];
    assert_eq!(
        answer(&server.check(request("GET", "/private", &warm)).await).http_status,
        200
    );

    // Another client's warm Checks, while the slow calls are pending.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = server.client().await;
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let response = client
                    .check(request("GET", "/private", &warm))
                    .await
                    .expect("Check")
                    .into_inner();
                assert_eq!(answer(&response).http_status, 200);
                answered += 1;
            }
            answered
        })
    };
    let started = Instant::now();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                answer(
                    &server
                        .check(request(
                            "GET",
                            "/private",
                            &[("authorization", "Bearer tail")],
                        ))
                        .await,
                )
                .http_status
            })
        })
        .collect();
    for call in slow {
        assert_eq!(call.await.expect("join"), 503);
    }
    // Cut at the timeout, long before the tail: a bound, not a latency measurement.
    assert!(started.elapsed() < TAIL, "{:?}", started.elapsed());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answered = others.await.expect("others");
    assert!(answered > 0, "the warm client was answered");
    // The 20 concurrent Checks for one credential shared one call; a new Check asks again.
    let before = manager.calls("tail");
    assert!((1..=20).contains(&before), "{before}");
    assert_fails_closed(&server, "tail").await;
    assert!(
        manager.calls("tail") > before,
        "a timed-out answer was cached"
    );
}

/// Every other call fails: each failure is a 503 (or an anonymous allow on the public rule) and
/// is retried on the next Check; the first success is served and then cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_manager_is_retried_and_only_its_successes_are_cached() {
    let (manager, addr) = Manager::start().await;
    let server = start_checkpoint(addr).await;
    let headers = [("authorization", "Bearer flap")];
    let first = answer(&server.check(request("GET", "/private", &headers)).await);
    assert_eq!(first.http_status, 503);
    assert_eq!(manager.calls("flap"), 1);
    let second = answer(&server.check(request("GET", "/private", &headers)).await);
    assert_eq!(second.http_status, 200, "the failure was not cached");
    assert_eq!(manager.calls("flap"), 2);
    for _ in 0..5 {
        let cached = answer(&server.check(request("GET", "/private", &headers)).await);
        assert_eq!(cached.http_status, 200);
    }
    assert_eq!(manager.calls("flap"), 2, "the success is cached");
}

/// `stale_if_error` with a manager that answers each token once and then fails: past the TTL, a
/// user it answered is still served (and asked for again each time, and counted); without the
/// option the same outage is a 503; a credential refused after it was answered is never served
/// stale; a bearer JWT is never served stale past its `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_a_user_through_an_outage_only() {
    use base64::Engine;
    let (manager, addr) = Manager::start().await;
    let url = format!("http://{addr}/userinfo");
    let common = [
        ("USERINFO_URL", url.as_str()),
        ("CHECKPOINT_USERINFO_TIMEOUT", "1s"),
        ("CHECKPOINT_IDENTITY_CACHE_TTL", "300ms"),
        ("CHECKPOINT_NEGATIVE_CACHE_TTL", "0"),
    ];
    let stale = Server::start(
        RULES,
        &[&common[..], &[("CHECKPOINT_IDENTITY_STALE_IF_ERROR", "1h")]].concat(),
    )
    .await;
    let plain = Server::start(RULES, &common).await;
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let exp = unix_now() + 3;
    let part = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let jwt = format!(
        "{}.{}.c2ln",
        part(json!({ "alg": "RS256" })),
        part(json!({ "sub": "alice", "exp": exp }))
    );
    let alice = (200, Some("alice".to_owned()));
    for token in ["once-stale", "once-then-refused", jwt.as_str()] {
        assert_eq!(status(&stale, token).await, alice, "{token}: fresh");
    }
    assert_eq!(status(&plain, "once-plain").await, alice);
    // Past the TTL; the manager now fails every token.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..2 {
        assert_eq!(status(&stale, "once-stale").await, alice, "stale");
    }
    assert_eq!(
        manager.calls("once-stale"),
        3,
        "each stale answer asked first"
    );
    assert_eq!(
        status(&plain, "once-plain").await,
        (503, None),
        "without stale_if_error an outage is a 503"
    );
    // Refused (401), then down: the refusal dropped the stale copy.
    assert_eq!(status(&stale, "once-then-refused").await.0, 401);
    assert_eq!(status(&stale, "once-then-refused").await, (503, None));
    // A JWT before its exp is served stale; past it, never.
    assert_eq!(status(&stale, &jwt).await, alice, "before exp");
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&stale, &jwt).await, (503, None), "past exp");
    assert_eq!(manager.calls(&jwt), 3);

    let metrics = reqwest::get(format!("http://{}/metrics", stale.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // Three stale answers; five unavailable answers of the manager (the three bridged, the two
    // 503s).
    for line in [
        "checkpoint_identity_stale_answers_total{source=\"userinfo\"} 3",
        "checkpoint_identity_requests_total{outcome=\"unavailable\",source=\"userinfo\"} 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

/// The status of a Check for `/private` with `token`, and the user id it sends upstream.
async fn status(server: &Server, token: &str) -> (u16, Option<String>) {
    let bearer = format!("Bearer {token}");
    let response = answer(
        &server
            .check(request("GET", "/private", &[("authorization", &bearer)]))
            .await,
    );
    (
        response.http_status,
        response.headers.get("miauserid").cloned(),
    )
}

/// A user-info host name that does not resolve: 503 where identity is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve_is_unavailable() {
    let server = Server::start(
        RULES,
        &[
            // RFC 6761: `.invalid` never resolves.
            (
                "USERINFO_URL",
                "http://checkpoint-userinfo.invalid/userinfo",
            ),
            ("CHECKPOINT_USERINFO_TIMEOUT", "1s"),
        ],
    )
    .await;
    assert_fails_closed(&server, "alice").await;
}

/// A JWT-shaped token whose signature nobody checks unless keys are loaded: its key id is not in
/// any key set.
fn unverifiable_jwt() -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(json!({ "alg": "ES256", "kid": "k1", "typ": "at+jwt" })),
        part(json!({ "sub": "alice", "groups": ["admin"], "iss": "x", "exp": 4_000_000_000u64 })),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

/// A key set endpoint that answers garbage, or a key set without keys: the source is never
/// ready, and a token is a 503 where identity is needed, never an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_of_garbage_or_of_no_keys_is_unavailable() {
    let (_manager, addr) = Manager::start().await;
    for endpoint in ["jwks-garbage", "jwks-empty"] {
        let server = Server::start_native_unready(&format!(
            "version: 1\nserver: {{ shutdown_delay: 0 }}\nrules:\n  inline: {RULES}\n\
             identity:\n  sources:\n    - type: jwt\n      issuer: http://{addr}\n      \
             jwks_uri: http://{addr}/{endpoint}\n      typ: at+jwt\n      \
             min_refresh_interval: 100ms\n      timeout: 1s\n"
        ))
        .await;
        // Given time for several fetches, the source never becomes ready.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ready = reqwest::get(format!("http://{}/-/ready", server.http))
            .await
            .expect("ready");
        assert_eq!(ready.status(), 503, "{endpoint}: ready without keys");
        assert_fails_closed(&server, &unverifiable_jwt()).await;
    }
}

/// The bound per in-flight identity call, as README states it: the body limit (1 MiB) plus the
/// HTTP client's buffers. A hundred concurrent answers of 2 MiB, sent without a Content-Length,
/// all refused, raise the real binary's peak resident memory by less than a hundred times that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_in_flight_hold_bounded_memory() {
    /// The stated bound per in-flight user-info call (README, "Configuration reference").
    const PER_CALL: u64 = 2 * 1024 * 1024;
    const CALLS: usize = 100;

    let (manager, addr) = Manager::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("auth.json"), RULES).expect("write rules");
    let (mut checkpoint, grpc, _) = spawn_checkpoint_ready(
        dir.path(),
        &[
            ("USERINFO_URL", format!("http://{addr}/userinfo")),
            ("CHECKPOINT_USERINFO_TIMEOUT", "10s".to_owned()),
            ("LOG_LEVEL", "warn".to_owned()),
        ],
    )
    .await;
    let client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await
    .expect("connect");
    // Warm up the paths a Check takes, then take the baseline.
    for token in ["alice", "big-warmup"] {
        let bearer = format!("Bearer {token}");
        client
            .clone()
            .check(request("GET", "/private", &[("authorization", &bearer)]))
            .await
            .expect("Check");
    }
    let pid = checkpoint.pid();
    let baseline = peak_rss(pid);
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let bearer = format!("Bearer big-{i}");
                let response = client
                    .check(request("GET", "/private", &[("authorization", &bearer)]))
                    .await
                    .expect("Check")
                    .into_inner();
                answer(&response).http_status
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join"), 503);
    }
    assert!(manager.calls("big-99") == 1 && manager.calls("big-0") == 1);
    let peak = peak_rss(pid);
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "peak resident memory: {} KiB before, {} KiB after {CALLS} oversized answers ({} KiB per call)",
        baseline / 1024,
        peak / 1024,
        grown / 1024 / CALLS as u64
    );
    assert!(
        grown < PER_CALL * CALLS as u64,
        "grew {} KiB for {CALLS} calls, over {} KiB each",
        grown / 1024,
        PER_CALL / 1024
    );
    checkpoint.stop();
}

/// The peak resident set (`VmHWM`) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("VmHWM")
}
