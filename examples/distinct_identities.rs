//! Helper of the load benchmark (`scripts/bench-load.sh --cache-memory` and `--coalesce`): sends
//! N Checks over a few HTTP/2 connections and counts the answers.
//!
//! Usage: `distinct_identities ADDR N [--concurrency C] [--connections K] [--same-token T]
//!         [--prefix P] [--fixed-request-id]`
//!
//! By default request `i` carries the credential `Bearer <prefix>-<i>`, so N Checks are N
//! distinct identities (the cache-memory run). `--same-token T` gives every request the same
//! credential instead, and with `--concurrency N` all of them start together after a barrier (the
//! coalescing run). Every request carries its own `x-request-id`, as behind Envoy, unless
//! `--fixed-request-id` gives them all the same one. Prints one summary line: `sent allowed denied errors elapsed_ms rate`; exits
//! non-zero when any Check was not an allow.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "usage: distinct_identities ADDR N [--concurrency C] [--connections K] \
                     [--same-token T] [--prefix P] [--fixed-request-id]";

struct Options {
    addr: String,
    total: usize,
    concurrency: usize,
    connections: usize,
    same_token: Option<String>,
    prefix: String,
    fixed_request_id: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().context(USAGE)?;
    let total = args.next().context(USAGE)?.parse().context("N")?;
    let mut o = Options {
        addr,
        total,
        concurrency: 64,
        connections: 4,
        same_token: None,
        prefix: "distinct".to_owned(),
        fixed_request_id: false,
    };
    while let Some(flag) = args.next() {
        if flag == "--fixed-request-id" {
            o.fixed_request_id = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--concurrency" => o.concurrency = value.parse().context("--concurrency")?,
            "--connections" => o.connections = value.parse().context("--connections")?,
            "--same-token" => o.same_token = Some(value),
            "--prefix" => o.prefix = value,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if o.concurrency == 0 || o.connections == 0 {
        bail!("--concurrency and --connections must be positive");
    }
    Ok(o)
}

fn check_request(token: &str, request_id: String) -> CheckRequest {
    let path = "/api/users/42";
    let headers: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", path),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("authorization", &format!("Bearer {token}")),
        ("client-type", "web"),
        ("user-agent", "bench/1.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", &request_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: request_id.clone(),
                    method: "GET".into(),
                    headers,
                    path: path.into(),
                    host: "api.example.com".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[derive(Default)]
struct Counts {
    allowed: AtomicUsize,
    denied: AtomicUsize,
    errors: AtomicUsize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let mut channels: Vec<Channel> = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        // One `connect` per channel: each is its own TCP connection.
        let channel = Endpoint::from_shared(format!("http://{}", o.addr))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", o.addr))?;
        channels.push(channel);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Counts::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(o.concurrency + 1));
    let same_token = o.same_token.map(Arc::<str>::from);
    let prefix: Arc<str> = o.prefix.into();
    let mut tasks = Vec::with_capacity(o.concurrency);
    for worker in 0..o.concurrency {
        let mut client = AuthorizationClient::new(channels[worker % channels.len()].clone());
        let (next, counts, barrier) = (next.clone(), counts.clone(), barrier.clone());
        let (same_token, prefix, total) = (same_token.clone(), prefix.clone(), o.total);
        let fixed_request_id = o.fixed_request_id;
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let token = match &same_token {
                    Some(t) => t.to_string(),
                    None => format!("{prefix}-{i}"),
                };
                let request_id = if fixed_request_id {
                    "bench-fixed".to_owned()
                } else {
                    format!("bench-{i}")
                };
                match client.check(check_request(&token, request_id)).await {
                    Ok(response) => {
                        let code = response.get_ref().status.as_ref().map_or(0, |s| s.code);
                        let counter = if code == 0 {
                            &counts.allowed
                        } else {
                            &counts.denied
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    barrier.wait().await;
    let started = std::time::Instant::now();
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let (allowed, denied, errors) = (
        counts.allowed.load(Ordering::Relaxed),
        counts.denied.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    println!(
        "sent {} allowed {allowed} denied {denied} errors {errors} elapsed_ms {} rate {:.0}",
        o.total,
        elapsed.as_millis(),
        o.total as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if allowed != o.total {
        bail!(
            "{} of {} Checks were not allowed",
            o.total - allowed,
            o.total
        );
    }
    Ok(())
}
