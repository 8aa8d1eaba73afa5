//! The training load of the release build's profile-guided optimisation
//! (`scripts/build-release.sh`): runs the checkpoint binary it is given, an instrumented build,
//! and sends it the Checks a gateway sends, so that the profile the binary writes at exit says
//! which code a production Check runs.
//!
//! Usage: `pgo_training CHECKPOINT [--checks N]`
//!
//! Three runs of the binary, N Checks each (30,000 by default): over TCP with one runtime worker
//! (the single-threaded scheduler, a pod with one CPU), over TCP with two (the multi-threaded
//! one), and over a Unix socket with one (a sidecar). Each run: checkpoint with the bench's rule
//! file (`bench/auth.json`) and a user-info server of this process, 32 Checks at a time over 4
//! HTTP/2 connections, then SIGTERM, so that it stops the way it does in production and writes
//! its profile.
//!
//! The Checks are Envoy's `CheckRequest` for `GET /api/users/42` with one cached user (the load
//! bench's request), and a few of the other roads in the proportions a gateway sees them: a new
//! user every 50 Checks (a cache miss, so a user-info call), and one Check in 100 of each of an
//! anonymous request (401), a user that user-info refuses (401) and a forbidden method (403).
//! Every answer is compared with the one its kind must get; any other answer, or a run that does
//! not stop cleanly, fails the training (exit status 1), so a broken setup cannot teach the
//! compiler that the error path is the hot one.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use tonic::transport::{Channel, Endpoint, Uri};

#[path = "shared/envoy_request.rs"]
mod envoy_request;
use envoy_request::check_request;

const USAGE: &str = "usage: pgo_training CHECKPOINT [--checks N]";
const CONNECTIONS: usize = 4;
const CONCURRENCY: usize = 32;

/// What a Check of each kind must get back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Allowed,
    Denied(i32),
}

/// The kind of the `i`-th Check: its method, path and token, and the answer it must get.
fn kind(i: usize) -> (&'static str, &'static str, String, Answer) {
    const PATH: &str = "/api/users/42?view=full";
    match i % 100 {
        7 => ("GET", PATH, String::new(), Answer::Denied(401)),
        29 => ("GET", PATH, format!("reject-{i}"), Answer::Denied(401)),
        61 => (
            "POST",
            "/api/users",
            "bench-token".into(),
            Answer::Denied(403),
        ),
        n if n % 50 == 3 => ("GET", PATH, format!("train-{i}"), Answer::Allowed),
        _ => ("GET", PATH, "bench-token".into(), Answer::Allowed),
    }
}

fn answer(response: &CheckResponse) -> Option<Answer> {
    match (response.status.as_ref()?.code, &response.http_response) {
        (0, Some(HttpResponse::OkResponse(_))) => Some(Answer::Allowed),
        (_, Some(HttpResponse::DeniedResponse(denied))) => {
            Some(Answer::Denied(denied.status.as_ref()?.code))
        }
        _ => None,
    }
}

/// The user-info endpoint: alice for any bearer token but `reject-*`, 401 without one.
async fn userinfo(headers: HeaderMap) -> (StatusCode, &'static str) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if !t.starts_with("reject-") => (
            StatusCode::OK,
            r#"{"sub":"alice","groups":["admin"],"permissions":["api.users.get"]}"#,
        ),
        _ => (StatusCode::UNAUTHORIZED, "{}"),
    }
}

enum Transport {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

struct Run {
    name: &'static str,
    workers: &'static str,
    transport: Transport,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = PathBuf::from(args.next().context(USAGE)?);
    let mut checks = 30_000;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--checks" => checks = args.next().context(USAGE)?.parse().context("--checks")?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(train(&binary, checks))
}

async fn train(binary: &Path, checks: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let userinfo_url = format!("http://{}/userinfo", listener.local_addr()?);
    tokio::spawn(async move {
        let app = Router::new().route("/userinfo", get(userinfo));
        axum::serve(listener, app).await
    });
    let runs = [
        Run {
            name: "TCP, one worker",
            workers: "1",
            transport: Transport::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
        },
        Run {
            name: "TCP, two workers",
            workers: "2",
            transport: Transport::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
        },
        Run {
            name: "Unix socket, one worker",
            workers: "1",
            transport: Transport::Unix(dir.path().join("checkpoint.sock")),
        },
    ];
    for run in &runs {
        let started = Instant::now();
        let mut child = start(binary, run, &userinfo_url, dir.path())
            .await
            .with_context(|| format!("{}: starting {}", run.name, binary.display()))?;
        let load = load(&run.transport, checks).await;
        let stopped = stop(&mut child).await;
        let counts = load.with_context(|| format!("{}: the load", run.name))?;
        stopped.with_context(|| format!("{}: stopping checkpoint", run.name))?;
        println!(
            "pgo_training: {}: {checks} Checks ({} allowed, {} denied) in {} ms",
            run.name,
            counts.0,
            counts.1,
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

async fn start(binary: &Path, run: &Run, userinfo_url: &str, dir: &Path) -> anyhow::Result<Child> {
    let http_port = free_port()?;
    let grpc = match &run.transport {
        Transport::Tcp(addr) => addr.to_string(),
        Transport::Unix(path) => format!("unix:{}", path.display()),
    };
    let stderr = std::fs::File::create(dir.join("checkpoint.err"))?;
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "CONFIGURATION_PATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/bench"),
        )
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("USERINFO_URL", userinfo_url)
        .env("CUSTOM_PERMISSIONS_KEY", "permissions")
        .env("CHECKPOINT_GRPC_ADDR", grpc)
        .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("CHECKPOINT_WORKER_THREADS", run.workers)
        .env("DELAY_SHUTDOWN_SECONDS", "0")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    let ready = format!("http://127.0.0.1:{http_port}/-/ready");
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(dir.join("checkpoint.err")).unwrap_or_default();
            bail!("checkpoint exited ({status}): {err}");
        }
        if let Ok(response) = client.get(&ready).send().await
            && response.status().is_success()
        {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    bail!("checkpoint is not ready after 60 s")
}

async fn channel(transport: &Transport) -> anyhow::Result<Channel> {
    Ok(match transport {
        Transport::Tcp(addr) => {
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?
        }
        Transport::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://checkpoint.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await?
        }
    })
}

/// Sends `checks` Checks; returns how many were allowed and denied, each as its kind must be.
async fn load(transport: &Transport, checks: usize) -> anyhow::Result<(usize, usize)> {
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(AuthorizationClient::new(channel(transport).await?));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let mut client = clients[worker % CONNECTIONS].clone();
        let next = next.clone();
        tasks.spawn(async move {
            let (mut allowed, mut denied) = (0, 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= checks {
                    return Ok::<_, anyhow::Error>((allowed, denied));
                }
                let (method, path, token, expected) = kind(i);
                let response = client
                    .check(check_request(method, path, &token, "web"))
                    .await
                    .with_context(|| format!("Check {i}"))?
                    .into_inner();
                match answer(&response) {
                    Some(got) if got == expected => match got {
                        Answer::Allowed => allowed += 1,
                        Answer::Denied(_) => denied += 1,
                    },
                    got => bail!("Check {i} ({method} {path}): expected {expected:?}, got {got:?}"),
                }
            }
        });
    }
    let (mut allowed, mut denied) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (a, d) = result??;
        allowed += a;
        denied += d;
    }
    Ok((allowed, denied))
}

/// SIGTERM, then up to 30 s for a clean exit (the profile is written at exit).
async fn stop(child: &mut Child) -> anyhow::Result<()> {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .context("running kill")?;
    if !killed.success() {
        bail!("kill -TERM failed");
    }
    for _ in 0..300 {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("checkpoint exited with {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    bail!("checkpoint did not stop within 30 s of SIGTERM")
}
