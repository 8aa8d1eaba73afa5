//! Support for tests/tls.rs: checkpoint started with TLS on its gRPC port, a rustls client and a
//! tonic client over it, `openssl s_client` bounded and read, and the mutual-TLS variant of
//! Envoy's `checkpoint` cluster (envoy/checkpoint-cluster-mtls.yaml) put into a rendered
//! envoy/envoy.yaml (tests/manifests.rs validates the same result).
//!
//! Needs `mod e2e_support;` beside it. Every wait is bounded; every child is a [`Proc`], killed
//! on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a failed set-up should stop the test loudly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::e2e_support::{
    Proc, READY_TIMEOUT, allowed_headers, free_ports, plain_client, wait_for_status,
};

/// Bound of one connection, handshake or call made by these helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The DNS name in checkpoint's certificate (scripts/make-certs.sh: `DIR/checkpoint.crt`),
/// which clients verify and send as SNI.
pub const CHECKPOINT_TLS_NAME: &str = "checkpoint";

/// The rules every checkpoint here serves: `/api` needs the `admin` group. Identity comes from
/// Mia's user headers (trust mode), so no identity provider is needed and a request chooses its
/// own outcome.
pub const RULES: &str = r#"{
  "/api": { "GET": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

/// Panics unless the openssl command runs: CI installs it (scripts/setup.sh), so never a skip.
pub fn require_openssl() {
    let ran = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ran,
        "the openssl command is missing or broken: run scripts/setup.sh first"
    );
}

/// checkpoint's TLS files, as the three variables name them.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A running checkpoint binary (trust mode, [`RULES`]).
pub struct Checkpoint {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub status_url: String,
    /// The folder of its auth.json.
    rules: PathBuf,
}

impl Checkpoint {
    /// Starts the binary with gRPC on a free loopback port, TLS on it when `tls` is given, and
    /// its stdout/stderr in `dir/<name>.out|err`; returns once `/-/ready` answers 200.
    pub async fn start(dir: &Path, name: &'static str, tls: Option<&TlsFiles>) -> Checkpoint {
        let rules = dir.join(format!("{name}-rules"));
        std::fs::create_dir_all(&rules).expect("mkdir rules");
        std::fs::write(rules.join("auth.json"), RULES).expect("write auth.json");
        let [grpc_port, status_port] = free_ports::<2>();
        let mut env: Vec<(&str, String)> = vec![
            ("CONFIGURATION_PATH", rules.display().to_string()),
            ("CONFIGURATION_FILE_NAME", "auth".into()),
            ("TRUST_MIA_USER_HEADERS", "true".into()),
            ("CHECKPOINT_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
            ("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{status_port}")),
            ("DELAY_SHUTDOWN_SECONDS", "0".into()),
            ("LOG_LEVEL", "info".into()),
        ];
        if let Some(tls) = tls {
            env.push(("CHECKPOINT_GRPC_TLS_CERT", tls.cert.display().to_string()));
            env.push(("CHECKPOINT_GRPC_TLS_KEY", tls.key.display().to_string()));
            if let Some(ca) = &tls.client_ca {
                env.push(("CHECKPOINT_GRPC_TLS_CLIENT_CA", ca.display().to_string()));
            }
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_checkpoint"));
        command
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut proc = Proc::spawn(name, command, dir);
        let status_url = format!("http://127.0.0.1:{status_port}");
        wait_for_status(
            &plain_client(),
            &format!("{status_url}/-/ready"),
            200,
            &mut proc,
            READY_TIMEOUT,
        )
        .await;
        Checkpoint {
            proc,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            status_url,
            rules,
        }
    }

    /// What `checkpoint allowed-headers` prints for this checkpoint's configuration: Envoy's
    /// `${ALLOWED_HEADERS}`.
    pub fn allowed_headers(&self) -> String {
        allowed_headers(&[
            ("CONFIGURATION_PATH", self.rules.display().to_string()),
            ("CONFIGURATION_FILE_NAME", "auth".into()),
            ("TRUST_MIA_USER_HEADERS", "true".into()),
        ])
    }

    /// Its stdout lines (JSON log lines) that contain `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        self.proc
            .stdout()
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

/// The certificates of a PEM file.
pub fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A rustls client configuration (rustls' defaults: TLS 1.2 and 1.3) that trusts only `ca`,
/// offers ALPN h2 and, with `identity` (certificate, key), presents a client certificate.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(ca) {
        roots.add(cert).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
            builder
                .with_client_auth_cert(pem_certs(cert), key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS handshake with `addr` as [`CHECKPOINT_TLS_NAME`], bounded by [`IO_TIMEOUT`].
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(CHECKPOINT_TLS_NAME).expect("server name");
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    match tokio::time::timeout(IO_TIMEOUT, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {IO_TIMEOUT:?}")),
    }
}

/// The leaf certificate the server presented on `stream`.
pub fn peer_leaf(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
}

/// The certificates servers presented, one per connection, in order.
pub type Seen = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// A tonic client whose connections are TLS with `config` (made here with rustls: tonic's own
/// TLS features are not built); every connection it opens records the server's leaf
/// certificate in the returned [`Seen`], so a test can tell whether a call reused a connection.
/// The connection is opened now; its handshake or HTTP/2 set-up failing is the error.
pub async fn tls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(AuthorizationClient<Channel>, Seen), String> {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (config, record) = (config.clone(), record.clone());
        async move {
            let stream = handshake(addr, config)
                .await
                .map_err(std::io::Error::other)?;
            record.lock().expect("seen").push(peer_leaf(&stream));
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The scheme is http: TLS is the connector's business, not tonic's.
    let endpoint = Endpoint::from_shared(format!("http://{CHECKPOINT_TLS_NAME}:{}", addr.port()))
        .expect("endpoint")
        .connect_timeout(IO_TIMEOUT)
        .timeout(IO_TIMEOUT);
    let channel = tokio::time::timeout(IO_TIMEOUT, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| format!("no connection within {IO_TIMEOUT:?}"))?
        .map_err(|e| error_chain(&e))?;
    Ok((AuthorizationClient::new(channel), seen))
}

/// An error and its sources, on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What `openssl s_client` made of one connection.
#[derive(Debug)]
pub struct SClient {
    /// Exited 0 with a negotiated cipher and no alert.
    pub ok: bool,
    /// e.g. `TLSv1.2`, from the `New, TLSv1.2, Cipher is ...` line.
    pub protocol: Option<String>,
    /// e.g. `ECDHE-ECDSA-AES128-GCM-SHA256`; `None` when nothing was negotiated.
    pub cipher: Option<String>,
    /// The alert the peer sent, e.g. `handshake failure` (openssl's `... alert NAME:` error).
    pub alert: Option<String>,
    /// Everything it printed, for failure messages.
    pub text: String,
}

/// `openssl s_client -connect addr ARGS` with stdin closed (it handshakes, then exits),
/// bounded by [`IO_TIMEOUT`] (killed past it).
pub async fn s_client(addr: SocketAddr, args: &[&str]) -> SClient {
    let mut command = tokio::process::Command::new("openssl");
    command
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(IO_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("openssl s_client {args:?} did not exit within {IO_TIMEOUT:?}"))
        .expect("run openssl s_client (scripts/setup.sh installs it)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let negotiated = text
        .lines()
        .find_map(|l| l.strip_prefix("New, "))
        .and_then(|l| l.split_once(", Cipher is "))
        .map(|(p, c)| (p.trim().to_owned(), c.trim().to_owned()));
    let (protocol, cipher) = match negotiated {
        Some((p, c)) if c != "(NONE)" => (Some(p), Some(c)),
        _ => (None, None),
    };
    // e.g. "...:ssl3_read_bytes:sslv3 alert handshake failure:../ssl/record/rec_layer_s3.c:..."
    let alert = text
        .lines()
        .filter(|l| l.contains(":error:"))
        .find_map(|l| l.split_once(" alert "))
        .map(|(_, rest)| rest.split(':').next().unwrap_or_default().to_owned());
    SClient {
        ok: output.status.success() && cipher.is_some() && alert.is_none(),
        protocol,
        cipher,
        alert,
        text,
    }
}

/// `envoy` (a rendered envoy/envoy.yaml) with its `checkpoint` cluster replaced by `cluster` (a
/// rendered envoy/checkpoint-cluster-mtls.yaml), as that file tells operators to do.
pub fn with_mtls_cluster(envoy: &str, cluster: &str) -> String {
    let mut config: Value = serde_yaml_ng::from_str(envoy).expect("rendered envoy.yaml");
    let cluster: Value = serde_yaml_ng::from_str(cluster).expect("rendered cluster");
    assert_eq!(
        cluster["name"], "checkpoint",
        "the variant is the checkpoint cluster"
    );
    let clusters = config["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    let slot = clusters
        .iter_mut()
        .find(|c| c["name"] == "checkpoint")
        .expect("the checkpoint cluster");
    *slot = cluster;
    serde_yaml_ng::to_string(&config).expect("envoy.yaml")
}
