//! [`run`]: serves Check, gRPC health, reflection and the status routes (with `/metrics`) on
//! listeners the caller bound, until `shutdown` completes; then shuts down in the order
//! Kubernetes expects. Each `run` has its own metrics registry.
//!
//! Shutdown: the moment `shutdown` resolves, gRPC health turns NOT_SERVING and `/-/ready` 503,
//! so load balancers stop sending; serving goes on for `shutdown_delay` (Envoy and kube-proxy
//! take a while to notice); then the servers stop accepting, in-flight Checks finish (bounded by
//! `drain_timeout`), and `run` returns.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tonic_health::ServingStatus;

use std::collections::HashMap;

use arc_swap::ArcSwap;

use crate::check::Checker;
use crate::config::{ConfigErrors, ListenAddr, Settings};
use crate::envoy::{self, CheckService};
use crate::identity::Resolver;
use crate::reload;
use crate::rules::{Config, RuleSet};
use crate::status::{self, Readiness};
use crate::telemetry::Metrics;
use crate::transport::{self, tls};

/// The sockets `run` serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub grpc: GrpcListener,
    pub http: TcpListener,
}

/// Where gRPC is served: a TCP socket, or a Unix domain socket for an Envoy on the same host or
/// in the same pod (no TCP/IP stack between the two: less kernel time per Check).
pub enum GrpcListener {
    Tcp(TcpListener),
    /// `path` is removed when `run` returns.
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl From<TcpListener> for GrpcListener {
    fn from(listener: TcpListener) -> GrpcListener {
        GrpcListener::Tcp(listener)
    }
}

impl GrpcListener {
    /// Binds `addr`. A Unix socket gets the permissions `mode`; a socket file left behind by a
    /// process that is gone is replaced, but a socket somebody still serves on, or any other
    /// kind of file, is an error (never deleted).
    pub async fn bind(addr: &ListenAddr, mode: u32) -> std::io::Result<GrpcListener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(GrpcListener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(GrpcListener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
        }
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(Error::new(
                    ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                )),
                Err(_) => std::fs::remove_file(path),
            }
        }
        Ok(_) => Err(Error::new(
            ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way (not removed)",
        )),
    }
}

/// Removes the Unix socket file when `run` ends, however it ends.
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the {0} server stopped on its own")]
    Stopped(&'static str),
    #[error("the status server failed: {0}")]
    Status(std::io::Error),
    #[error("a server task ended unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How often the identity cache's counters are logged.
const CACHE_STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Reflection calls in flight at most, over every connection: reflection serves tools (grpcurl,
/// a client's first look at the API), never the Check path, and each call can hold two answers of
/// up to 43 KB for as long as its client does not read them.
const MAX_REFLECTION_CALLS: usize = 32;

/// The gRPC service name whose health is reported, besides the overall `""`.
const AUTHORIZATION_SERVICE: &str = envoy::SERVICE_NAME;

/// Everything `run` serves, built and validated before any port is bound.
pub struct App {
    pub settings: Settings,
    pub checker: Checker,
    /// The shadow rules, when configured: evaluated for every Check, never enforced.
    pub shadow: Option<RuleSet>,
    /// The gRPC port's TLS, its files already read and checked.
    tls: Option<Arc<tls::Acceptor>>,
    /// The variables the configuration was loaded from: a reload loads it from them again.
    env: HashMap<String, String>,
}

impl App {
    /// Builds the identity sources, checks that every rule names only sources that exist, and
    /// reads the gRPC port's TLS files. Must run inside a tokio runtime. `env` provides secrets
    /// that sources read by name.
    pub fn new(config: Config, env: &HashMap<String, String>) -> Result<App, ConfigErrors> {
        let mut problems = Vec::new();
        let tls = match &config.settings.grpc.tls {
            Some(files) => match tls::Acceptor::load(tls::TlsFiles {
                cert: files.cert.clone(),
                key: files.key.clone(),
                client_ca: files.client_ca.clone(),
            }) {
                Ok(acceptor) => Some(Arc::new(acceptor)),
                Err(e) => {
                    problems.push(format!("gRPC TLS: {e}"));
                    None
                }
            },
            None => None,
        };
        let identity = match Resolver::build(&config.settings, env) {
            Ok(identity) => identity,
            Err(found) => {
                problems.extend(found);
                return Err(ConfigErrors::new(problems));
            }
        };
        let names: Vec<&str> = identity.names().collect();
        problems.extend(reload::unknown_sources(&config.rules, &names));
        if let Some(shadow) = &config.shadow {
            problems.extend(reload::unknown_sources(shadow, &names));
        }
        if !problems.is_empty() {
            return Err(ConfigErrors::new(problems));
        }
        Ok(App {
            checker: Checker {
                rules: config.rules,
                identity: Arc::new(identity),
                request_headers: config.settings.request_headers.clone(),
                rbac: config.rbac,
                login_redirect: config.settings.login_redirect.clone(),
            },
            shadow: config.shadow,
            settings: config.settings,
            tls,
            env: env.clone(),
        })
    }
}

/// Serves until `shutdown` completes, then drains and returns.
pub async fn run(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let settings = app.settings;
    let metrics = Arc::new(Metrics::new(app.checker.identity.user_sources())?);
    // The identity sources stay the same for the readiness wait below, whatever reloads do.
    let identity = app.checker.identity.clone();
    let live: reload::Shared = Arc::new(ArcSwap::from_pointee(reload::Live {
        checker: Arc::new(app.checker),
        responder: Arc::new(reload::responder(&settings)),
        shadow: app.shadow.map(Arc::new),
    }));
    let reloader = reload::spawn(reload::Reloader::new(
        app.env,
        settings.clone(),
        live.clone(),
        metrics.clone(),
    ));
    let readiness = Readiness::new(&settings.service_name, &settings.service_version);

    // Health says NOT_SERVING for both names until every identity source is ready, and again
    // from the moment shutdown starts.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(AUTHORIZATION_SERVICE, ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Reflection describes every service the port serves.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(envoy::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Security: a reflection answer is up to 43 KB, and one a client does not read stays in
    // memory for as long as it keeps the stream open; bounded over every connection.
    let reflection_slots = Arc::new(tokio::sync::Semaphore::new(MAX_REFLECTION_CALLS));
    let reflection_v1 = transport::Capped::new(reflection().build_v1()?, reflection_slots.clone());
    let reflection_v1alpha =
        transport::Capped::new(reflection().build_v1alpha()?, reflection_slots);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let grpc = &settings.grpc;
    let tls = app.tls;
    let tls_watch = tls
        .as_ref()
        .map(|acceptor| acceptor.clone().watch(tls::RELOAD_INTERVAL));
    let (listener, _socket_file) = match listeners.grpc {
        GrpcListener::Tcp(listener) => (transport::Listener::Tcp(listener), SocketFile(None)),
        GrpcListener::Unix { listener, path } => {
            (transport::Listener::Unix(listener), SocketFile(Some(path)))
        }
    };
    let counters = Arc::new(transport::Counters::default());
    let incoming = transport::incoming(
        listener,
        transport::Limits {
            max_connections: grpc.max_connections,
            idle_timeout: grpc.idle_timeout,
            max_lifetime: grpc
                .max_connection_age
                .map(|age| age.saturating_add(grpc.max_connection_age_grace)),
            tcp_nodelay: grpc.tcp_nodelay,
            tcp_keepalive: grpc.tcp_keepalive,
            handshake_timeout: grpc.tls_handshake_timeout,
        },
        tls,
        counters,
        stop_rx.clone(),
    );
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(grpc.max_concurrent_streams)
        // h2's own limit answers a bare HTTP 431; it stays as a backstop above the limit that
        // GateLayer answers with RESOURCE_EXHAUSTED.
        .http2_max_header_list_size(grpc.max_header_list_size.saturating_mul(4))
        // HTTP/1.1 is accepted only to be told, in words, that this port is gRPC.
        .accept_http1(true)
        .http2_keepalive_interval(grpc.keepalive_interval)
        .http2_keepalive_timeout(Some(grpc.keepalive_timeout))
        // A client that resets streams faster than it opens them (rapid reset) is closed.
        .http2_max_pending_accept_reset_streams(Some(grpc.max_concurrent_streams as usize));
    // tonic sends GOAWAY at max_connection_age; the transport closes what is still open after
    // the grace (`Limits::max_lifetime`). Not tonic's own max_connection_age_grace: with it,
    // tonic 0.14 sends no GOAWAY at all and only closes the connection, calls in flight or not,
    // at age + grace.
    if let Some(age) = grpc.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let router = builder
        .layer(transport::GateLayer::new(
            grpc.max_header_list_size as usize,
            grpc.max_calls_in_flight,
            grpc.max_request_bytes_in_flight,
            grpc.max_message_size,
        ))
        .layer(envoy::CheckRoute::new(
            CheckService::live(live.clone(), metrics.clone())
                .max_message_size(grpc.max_message_size),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut grpc_task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));

    let status_routes = status::router(readiness.clone(), metrics, live.clone());
    let http = axum::serve(listeners.http, status_routes).with_graceful_shutdown(stopped(stop_rx));
    let mut http_task = tokio::spawn(async move { http.await.map_err(RunError::Status) });

    // Ready once every identity source can answer (a JWT source after its first key fetch).
    let ready_identity = identity;
    let ready_health = health.clone();
    let ready_flag = readiness.clone();
    let version = settings.service_version.clone();
    // The identity cache's counters, once a minute when they moved (per-decision fields say
    // hit/miss/coalesced for each Check; this is the aggregate).
    let stats_live = live.clone();
    let stats_task = tokio::spawn(async move {
        let mut last = (0, 0, 0);
        let mut tick = tokio::time::interval(CACHE_STATS_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let identity = stats_live.load_full().checker.identity.clone();
            let Some(stats) = identity.cache_stats() else {
                return;
            };
            let now = stats.snapshot();
            if now != last {
                tracing::info!(
                    target: "checkpoint::identity_cache",
                    hits = now.0,
                    misses = now.1,
                    coalesced = now.2,
                    entries = identity.cache_entries(),
                    "identity cache"
                );
                last = now;
            }
        }
    });
    let mut readiness_task = tokio::spawn(async move {
        while !ready_identity.ready() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        ready_health
            .set_service_status(AUTHORIZATION_SERVICE, ServingStatus::Serving)
            .await;
        ready_health
            .set_service_status("", ServingStatus::Serving)
            .await;
        ready_flag.set_ready(true);
        tracing::info!(version = %version, "ready");
    });

    // A server that ends before shutdown was asked for is an error worth exiting on.
    tokio::select! {
        () = shutdown => {}
        result = &mut grpc_task => {
            result??;
            return Err(RunError::Stopped("gRPC"));
        }
        result = &mut http_task => return result?,
    }

    readiness_task.abort();
    stats_task.abort();
    reloader.abort();
    if let Some(task) = &tls_watch {
        task.abort();
    }
    let _ = (&mut readiness_task).await;
    readiness.set_ready(false);
    health
        .set_service_status(AUTHORIZATION_SERVICE, ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tracing::info!(
        delay_ms = settings.shutdown_delay.as_millis() as u64,
        "shutdown requested: reporting not ready, still serving"
    );
    tokio::time::sleep(settings.shutdown_delay).await;
    let _ = stop_tx.send(true);
    tracing::info!("draining in-flight checks");
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        (grpc, http)
    })
    .await;
    match drained {
        Ok((grpc, http)) => {
            grpc??;
            http??;
            tracing::info!("stopped");
        }
        Err(_) => tracing::warn!(
            timeout_ms = settings.drain_timeout.as_millis() as u64,
            "drain timed out; exiting with checks still in flight"
        ),
    }
    Ok(())
}
