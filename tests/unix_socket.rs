//! The real binary serving gRPC on a Unix domain socket (`CHECKPOINT_GRPC_ADDR=unix:...`), as
//! beside an Envoy in the same pod: Checks answered through it, the socket's permissions, a
//! stale socket replaced, a live one or a plain file left alone, the file removed at exit. Also
//! the single-threaded scheduler (`CHECKPOINT_WORKER_THREADS=1`) and dynamic metadata on demand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use support::{answer, request};

const RULES: &str = r#"{
  "/api": { "GET": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts the binary with the rules above, trusting Mia's user headers (no user-info needed),
/// gRPC on `socket`; `extra` adds or overrides variables.
fn spawn(dir: &Path, socket: &Path, http: u16, extra: &[(&str, &str)]) -> Child {
    std::fs::write(dir.join("auth.json"), RULES).expect("write rules");
    Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .env_clear()
        .env("CONFIGURATION_PATH", dir)
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("TRUST_MIA_USER_HEADERS", "true")
        .env("CHECKPOINT_GRPC_ADDR", format!("unix:{}", socket.display()))
        .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("DELAY_SHUTDOWN_SECONDS", "0")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn checkpoint")
}

async fn wait_ready(http: u16, child: &mut Child) {
    let url = format!("http://127.0.0.1:{http}/-/ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            return;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("checkpoint exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "checkpoint never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tonic client whose every connection is to the Unix socket at `path`.
async fn unix_client(path: PathBuf) -> AuthorizationClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://checkpoint.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect over the Unix socket");
    AuthorizationClient::new(channel)
}

fn stop(mut child: Child) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    let mut logs = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut logs)
        .expect("read logs");
    (exit.code(), logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_answered_on_a_unix_socket_which_is_removed_at_exit() {
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("grpc.sock");
    // A socket file left behind by a process that is gone: replaced, not an error.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let http = free_port();
    let mut child = spawn(
        dir.path(),
        &socket,
        http,
        &[
            ("CHECKPOINT_GRPC_SOCKET_MODE", "0600"),
            ("CHECKPOINT_WORKER_THREADS", "1"),
            ("CHECKPOINT_DYNAMIC_METADATA", "true"),
        ],
    );
    wait_ready(http, &mut child).await;

    let meta = std::fs::metadata(&socket).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut client = unix_client(socket.clone()).await;
    let allowed = client
        .check(request(
            "GET",
            "/api",
            &[("miauserid", "alice"), ("miausergroups", "admin")],
        ))
        .await
        .expect("Check over the Unix socket")
        .into_inner();
    let a = answer(&allowed);
    assert_eq!((a.http_status, a.grpc_code), (200, 0), "{a:?}");
    assert_eq!(
        a.headers.get("miauserid").map(String::as_str),
        Some("alice")
    );
    let metadata = allowed
        .dynamic_metadata
        .expect("asked for dynamic metadata");
    let field = |name: &str| match metadata.fields.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(field("decision"), "allow");
    assert_eq!(field("user_id"), "alice");

    let denied = client
        .check(request("GET", "/api", &[("miauserid", "bob")]))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(answer(&denied).http_status, 403);
    let anonymous = client
        .check(request("GET", "/api", &[]))
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(answer(&anonymous).http_status, 401);
    drop(client);

    let (code, logs) = stop(child);
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("\"scheduler\":\"current_thread\"") && logs.contains("\"workers\":1"),
        "one worker runs the single-threaded scheduler: {logs}"
    );
    assert!(
        logs.contains(&format!("unix:{}", socket.display())),
        "the listening line names the socket: {logs}"
    );
    assert!(!socket.exists(), "the socket file is removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_or_a_plain_file_in_the_way_is_never_removed() {
    let dir = tempfile::tempdir().expect("dir");

    // Another process serves on the socket: checkpoint must not steal it.
    let live = dir.path().join("live.sock");
    let holder = std::os::unix::net::UnixListener::bind(&live).expect("live socket");
    let out = spawn(dir.path(), &live, free_port(), &[])
        .wait_with_output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.contains("binding the gRPC address unix:")
            && logs.contains("another process is serving on this socket"),
        "{logs}"
    );
    assert!(live.exists());
    // Still the holder's socket: a client still reaches it.
    std::os::unix::net::UnixStream::connect(&live).expect("the holder still serves");
    drop(holder);

    // A plain file where the socket should go: left as it is.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").expect("write");
    let out = spawn(dir.path(), &file, free_port(), &[])
        .wait_with_output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("is not a socket"), "{logs}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
}

#[test]
fn bad_socket_settings_are_configuration_errors() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("auth.json"), RULES).expect("write rules");
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("check-config")
        .env_clear()
        .env("CONFIGURATION_PATH", dir.path())
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("TRUST_MIA_USER_HEADERS", "true")
        .env("CHECKPOINT_GRPC_ADDR", "unix:")
        .env("CHECKPOINT_GRPC_SOCKET_MODE", "0999")
        .env("CHECKPOINT_WORKER_THREADS", "many")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("CHECKPOINT_GRPC_ADDR: \"unix:\" names no socket path"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CHECKPOINT_GRPC_SOCKET_MODE: \"0999\" is not an octal file mode"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CHECKPOINT_WORKER_THREADS: \"many\" is not a whole number"),
        "{stderr}"
    );
}
