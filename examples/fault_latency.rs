//! Latency of warm callers while the identity provider misbehaves (issue 15, item 2): the bench
//! half of tests/faults.rs, which shows that every fault fails closed but times nothing.
//!
//! Usage: `fault_latency [--bin PATH] [--rate R] [--fault-rate F] [--seconds S]`
//!
//! Starts the faulty authentication manager of tests/faults_support/mod.rs and the checkpoint
//! binary (`--bin`, by default `../checkpoint` next to this example, i.e. target/release), warms
//! one identity, then runs phases of S seconds (5): a baseline, and one phase per fault. In every
//! phase a warm client sends Checks for its cached identity at R per second (500) on its own
//! channel and records each latency; in the fault phases another client sends F Checks per
//! second (100), each for a new credential the manager answers with the fault (slow tail past the
//! 1 s timeout, flapping, reset mid-body, 2 MiB bodies without Content-Length, invalid UTF-8, JSON
//! nested 10,000 deep), each in its own task, so that up to F x 1 s calls are in flight at once.
//!
//! Prints, per phase: the warm client's answers, p50, p99 and p99 against the baseline's (the
//! issue's target: within 2x); the faulty Checks' answers by HTTP status; checkpoint's resident
//! memory at the end of the phase and its peak. Exits 1 if a warm Check was not allowed or a
//! faulty Check on the private rule was allowed (correctness, which the test command also checks);
//! the latency ratio is reported, not asserted.

#[path = "../tests/faults_support/mod.rs"]
mod faults_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use support::{answer, request};
use tonic::transport::Channel;

const USAGE: &str = "usage: fault_latency [--bin PATH] [--rate R] [--fault-rate F] [--seconds S]";

/// The phases after the baseline: a name and the manager's token kind (tests/faults_support).
const FAULTS: [(&str, &str); 6] = [
    ("slow tail (10 s, 1 s timeout)", "tail"),
    ("manager answers 500 (flapping)", "flap"),
    ("reset mid-body", "reset"),
    ("2 MiB body, no Content-Length", "big-x"),
    ("invalid UTF-8", "badutf8"),
    ("JSON nested 10,000 deep", "deep"),
];

struct Options {
    bin: PathBuf,
    rate: f64,
    fault_rate: f64,
    phase: Duration,
}

/// The checkpoint process, killed when dropped.
struct Checkpoint(Child);

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn options() -> anyhow::Result<Options> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut options = Options {
        bin: exe
            .parent()
            .and_then(|examples| examples.parent())
            .context("the example's folder")?
            .join("checkpoint"),
        rate: 500.0,
        fault_rate: 100.0,
        phase: Duration::from_secs(5),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().context(USAGE)?;
        match flag.as_str() {
            "--bin" => options.bin = value.into(),
            "--rate" => options.rate = value.parse().context("--rate")?,
            "--fault-rate" => options.fault_rate = value.parse().context("--fault-rate")?,
            "--seconds" => options.phase = Duration::from_secs(value.parse().context("--seconds")?),
            _ => bail!("{USAGE}"),
        }
    }
    if !(options.rate > 0.0 && options.fault_rate > 0.0) || options.phase.is_zero() {
        bail!("rates and seconds must be positive; {USAGE}");
    }
    Ok(options)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts checkpoint on Mia's variables with the fault tests' rules, and waits until it is ready.
async fn start_checkpoint(
    options: &Options,
    manager: std::net::SocketAddr,
    dir: &std::path::Path,
) -> anyhow::Result<(Checkpoint, u16)> {
    std::fs::write(dir.join("auth.json"), faults_support::RULES)?;
    let (grpc, http) = (free_port()?, free_port()?);
    let child = Command::new(&options.bin)
        .env_clear()
        .env("CONFIGURATION_PATH", dir)
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("USERINFO_URL", format!("http://{manager}/userinfo"))
        .env("CHECKPOINT_USERINFO_TIMEOUT", "1s")
        .env("CHECKPOINT_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("DELAY_SHUTDOWN_SECONDS", "0")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", options.bin.display()))?;
    let mut checkpoint = Checkpoint(child);
    let ready = format!("http://127.0.0.1:{http}/-/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&ready).await
            && r.status() == 200
        {
            return Ok((checkpoint, grpc));
        }
        if let Some(status) = checkpoint.0.try_wait()? {
            bail!("checkpoint exited: {status}");
        }
        if Instant::now() > deadline {
            bail!("checkpoint not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The warm client: Checks for `alice` (cached) at `rate` per second until `stop`; returns each
/// latency in µs and the number of answers that were not an allow.
async fn warm_client(
    mut client: AuthorizationClient<Channel>,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> (Vec<u32>, usize) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut latencies, mut wrong) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let started = Instant::now();
        let status = match client
            .check(request(
                "GET",
                "/private",
                &[("authorization", "Bearer alice")],
            ))
            .await
        {
            Ok(response) => answer(&response.into_inner()).http_status,
            Err(_) => 0,
        };
        latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        if status != 200 {
            wrong += 1;
        }
    }
    (latencies, wrong)
}

/// The faulty client: at `rate` per second until `stop`, one task per Check with a credential of
/// `kind` never seen before; returns how many Checks got each HTTP status (0: a transport error).
async fn fault_client(
    client: AuthorizationClient<Channel>,
    kind: &'static str,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> std::collections::BTreeMap<u16, usize> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut calls = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        n += 1;
        let mut client = client.clone();
        let bearer = format!("Bearer {kind}#{n}");
        calls.spawn(async move {
            match client
                .check(request("GET", "/private", &[("authorization", &bearer)]))
                .await
            {
                Ok(response) => answer(&response.into_inner()).http_status,
                Err(_) => 0,
            }
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(status) = calls.join_next().await {
        *statuses.entry(status.unwrap_or(0)).or_insert(0) += 1;
    }
    statuses
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let (_manager, manager_addr) = faults_support::Manager::start().await;
    let dir = tempfile::tempdir()?;
    let (checkpoint, grpc) = start_checkpoint(&options, manager_addr, dir.path()).await?;
    let pid = checkpoint.0.id();
    let url = format!("http://127.0.0.1:{grpc}");
    let warm = AuthorizationClient::connect(url.clone()).await?;
    let faulty = AuthorizationClient::connect(url).await?;
    // Warm the identity and the paths of a Check.
    let (latencies, wrong) = {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(warm_client(warm.clone(), options.rate, stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        task.await?
    };
    if latencies.is_empty() || wrong > 0 {
        bail!(
            "the warm identity is not allowed ({wrong} of {})",
            latencies.len()
        );
    }

    println!(
        "warm client {} Checks/s, faulty client {} Checks/s, {} s per phase, checkpoint pid {pid}",
        options.rate,
        options.fault_rate,
        options.phase.as_secs()
    );
    println!(
        "{:<34} {:>7} {:>7} {:>8} {:>8} {:>9}  {:<26} {:>9} {:>9}",
        "phase",
        "warm",
        "wrong",
        "p50 µs",
        "p99 µs",
        "p99/base",
        "faulty Checks by status",
        "RSS KiB",
        "peak KiB"
    );
    let mut baseline_p99 = 0;
    let mut failed = false;
    for (name, kind) in std::iter::once(("baseline (no fault)", "")).chain(FAULTS) {
        let stop = Arc::new(AtomicBool::new(false));
        let warm_task = tokio::spawn(warm_client(warm.clone(), options.rate, stop.clone()));
        let fault_task = (!kind.is_empty()).then(|| {
            tokio::spawn(fault_client(
                faulty.clone(),
                kind,
                options.fault_rate,
                stop.clone(),
            ))
        });
        tokio::time::sleep(options.phase).await;
        stop.store(true, Ordering::Relaxed);
        let (mut latencies, wrong) = warm_task.await?;
        let statuses = match fault_task {
            Some(task) => task.await?,
            None => Default::default(),
        };
        latencies.sort_unstable();
        let p99 = percentile(&latencies, 99.0);
        if kind.is_empty() {
            baseline_p99 = p99.max(1);
        }
        let allowed = statuses.get(&200).copied().unwrap_or(0);
        failed |= wrong > 0 || allowed > 0;
        let (rss, peak) = memory(pid);
        let by_status = statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<34} {:>7} {:>7} {:>8} {:>8} {:>9.2}  {:<26} {:>9} {:>9}",
            name,
            latencies.len(),
            wrong,
            percentile(&latencies, 50.0),
            p99,
            f64::from(p99) / f64::from(baseline_p99),
            if by_status.is_empty() {
                "-".to_owned()
            } else {
                by_status
            },
            rss,
            peak
        );
    }
    if failed {
        bail!("a warm Check was not allowed, or a faulty Check on the private rule was allowed");
    }
    Ok(())
}
