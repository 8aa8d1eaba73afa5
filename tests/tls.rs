//! TLS on the gRPC port, with real parts only: the checkpoint binary, real Envoy 1.40
//! (`.venv/bin/envoy`), certificates made by openssl (`scripts/make-certs.sh` and a few
//! `openssl req` here), `openssl s_client`, and a tonic client over rustls. Everything on
//! loopback; every wait bounded; every child killed on drop. A missing openssl or Envoy fails
//! the test with a pointer to scripts/setup.sh, never a skip.
//!
//! - Envoy's ext_authz cluster with envoy/checkpoint-cluster-mtls.yaml calls Check over mutual
//!   TLS and the rules decide; a cluster expecting another name in checkpoint's certificate gets
//!   nothing through.
//! - With a client CA, a client without a certificate, with one from another CA or with one made
//!   for servers only, is refused; ALPN is h2 or nothing.
//! - TLS 1.0 and 1.1, non-ECDHE and CBC suites and a TLS 1.3 suite outside the three are refused.
//! - A renewed certificate is served without a restart; open connections keep theirs; a garbage
//!   file leaves the last good certificate serving, and the log says so.
//! - Plaintext gRPC to the TLS port and TLS to a plaintext port both fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod e2e_support;
mod support;
mod tls_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::{Proc, Reply, envoy_bin, free_ports, make_certs, plain_client, render, repo};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use support::{answer, request};
use tls_support::{
    CHECKPOINT_TLS_NAME, Checkpoint, IO_TIMEOUT, TlsFiles, client_config, handshake, peer_leaf,
    pem_certs, require_openssl, s_client, tls_client, with_mtls_cluster,
};
use tonic::transport::Channel;

/// How long a changed certificate file may take to be served: checkpoint looks every 5 s
/// (`RELOAD_INTERVAL`); twice that leaves room for a loaded machine.
const RELOAD_WITHIN: Duration = Duration::from_secs(11);

/// The files checkpoint serves with in most tests: make-certs.sh's `checkpoint.crt` (ECDSA
/// P-256, SAN `checkpoint`), and its CA as the client CA when `mtls`.
fn checkpoint_files(tls: &Path, mtls: bool) -> TlsFiles {
    TlsFiles {
        cert: tls.join("checkpoint.crt"),
        key: tls.join("checkpoint.key"),
        client_ca: mtls.then(|| tls.join("ca.crt")),
    }
}

/// Envoy's client certificate toward checkpoint (make-certs.sh's `gateway.crt`).
fn gateway_identity(tls: &Path) -> (PathBuf, PathBuf) {
    (tls.join("gateway.crt"), tls.join("gateway.key"))
}

/// A Check that `RULES` allows (the caller is in `admin`), or denies with `admin` false.
async fn check_admin(
    client: &mut AuthorizationClient<Channel>,
    admin: bool,
) -> Result<u16, String> {
    let groups = if admin { "admin" } else { "dev" };
    let call = client.check(request(
        "GET",
        "/api",
        &[("miauserid", "alice"), ("miausergroups", groups)],
    ));
    match tokio::time::timeout(IO_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(answer(&response.into_inner()).http_status),
        Ok(Err(status)) => Err(format!("{status:?}")),
        Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
    }
}

/// Connects with `config` and makes an allowed Check: the HTTP status checkpoint answered, or
/// why the connection or the call failed.
async fn check_with(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<u16, String> {
    let (mut client, _) = tls_client(addr, config).await?;
    check_admin(&mut client, true).await
}

// ---- Envoy -> checkpoint over mutual TLS -----------------------------------------------------

/// A running Envoy: envoy/envoy.yaml with envoy/checkpoint-cluster-mtls.yaml as its checkpoint
/// cluster.
struct Gateway {
    proc: Proc,
    https_port: u16,
    admin_port: u16,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(
        dir: &Path,
        name: &'static str,
        tls: &Path,
        checkpoint: &Checkpoint,
        tls_name: &str,
        upstream_port: u16,
    ) -> Gateway {
        let [https_port, http_port, admin_port] = free_ports::<3>();
        let root = repo();
        let template =
            std::fs::read_to_string(root.join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
        let envoy = render(
            &template,
            &[
                ("LISTEN_ADDRESS", "127.0.0.1".into()),
                ("HTTPS_PORT", https_port.to_string()),
                ("HTTP_PORT", http_port.to_string()),
                ("ADMIN_PORT", admin_port.to_string()),
                ("CHECKPOINT_ADDRESS", "127.0.0.1".into()),
                ("CHECKPOINT_PORT", checkpoint.grpc.port().to_string()),
                ("UPSTREAM_ADDRESS", "127.0.0.1".into()),
                ("UPSTREAM_PORT", upstream_port.to_string()),
                ("TLS_DIR", tls.display().to_string()),
                ("ALLOWED_HEADERS", checkpoint.allowed_headers()),
            ],
        );
        let variant = std::fs::read_to_string(root.join("envoy/checkpoint-cluster-mtls.yaml"))
            .expect("read envoy/checkpoint-cluster-mtls.yaml");
        let cluster = render(
            &variant,
            &[
                ("CHECKPOINT_ADDRESS", "127.0.0.1".into()),
                ("CHECKPOINT_PORT", checkpoint.grpc.port().to_string()),
                ("CHECKPOINT_TLS_NAME", tls_name.into()),
                ("TLS_DIR", tls.display().to_string()),
            ],
        );
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, with_mtls_cluster(&envoy, &cluster)).expect("write envoy config");
        let mut command = Command::new(envoy_bin());
        command.arg("-c").arg(&config).args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ]);
        let mut proc = Proc::spawn(name, command, dir);

        let ca = reqwest::Certificate::from_pem(&std::fs::read(tls.join("ca.crt")).expect("ca"))
            .expect("CA certificate");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], https_port)))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(IO_TIMEOUT)
            .build()
            .expect("https client");
        e2e_support::wait_for_status(
            &client,
            &format!("https://localhost:{https_port}/-/healthz"),
            200,
            &mut proc,
            e2e_support::READY_TIMEOUT,
        )
        .await;
        Gateway {
            proc,
            https_port,
            admin_port,
            client,
        }
    }

    /// `GET /api` through Envoy as alice, in `groups`.
    async fn get_api(&self, groups: &str) -> Reply {
        let response = self
            .client
            .get(format!("https://localhost:{}/api", self.https_port))
            .header("miauserid", "alice")
            .header("miausergroups", groups)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api through {}: {e}", self.proc.name));
        Reply::from(response).await
    }

    /// Envoy's counters for the checkpoint cluster's TLS (`cluster.checkpoint.ssl.*`), by the
    /// part of the name after `ssl.`.
    async fn ssl_stats(&self) -> HashMap<String, u64> {
        let url = format!(
            "http://127.0.0.1:{}/stats?filter=^cluster\\.checkpoint\\.ssl\\.",
            self.admin_port
        );
        let text = plain_client()
            .get(&url)
            .send()
            .await
            .expect("admin /stats")
            .text()
            .await
            .expect("stats body");
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(name, value)| {
                let name = name.strip_prefix("cluster.checkpoint.ssl.")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

/// The echo upstream (tests/upstream/echo.mjs) and its port.
async fn start_upstream(dir: &Path) -> (Proc, u16) {
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/upstream/echo.mjs"))
        .env("ECHO_PORT", "0");
    let mut upstream = Proc::spawn("upstream", command, dir);
    let ready: serde_json::Value =
        serde_json::from_str(&upstream.wait_line("ECHO_READY ").await).expect("ECHO_READY json");
    let port = ready["port"].as_u64().expect("echo port") as u16;
    (upstream, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_calls_checkpoint_over_mutual_tls() {
    envoy_bin();
    require_openssl();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let mut checkpoint = Checkpoint::start(
        dir.path(),
        "checkpoint",
        Some(&checkpoint_files(&tls, true)),
    )
    .await;
    let (_upstream, upstream_port) = start_upstream(dir.path()).await;

    let gateway = Gateway::start(
        dir.path(),
        "envoy",
        &tls,
        &checkpoint,
        CHECKPOINT_TLS_NAME,
        upstream_port,
    )
    .await;
    let allowed = gateway.get_api("admin").await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert!(allowed.reached_upstream(), "{}", allowed.text);
    assert_eq!(allowed.upstream_header("miauserid"), Some("alice"));
    // checkpoint's own deny (403 with its JSON body), not Envoy's status_on_error (503): the
    // Check was answered.
    let denied = gateway.get_api("dev").await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert!(!denied.reached_upstream(), "{}", denied.text);
    assert!(
        denied.json.is_object(),
        "checkpoint's JSON body: {}",
        denied.text
    );
    // The decision log is written in batches: wait (bounded) for both lines.
    let start = Instant::now();
    while checkpoint.log_lines("checkpoint::decision").len() < 2 {
        assert!(
            start.elapsed() < IO_TIMEOUT,
            "checkpoint logged no decision for each request: {:?}",
            checkpoint.log_lines("checkpoint::decision")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The Checks crossed TLS 1.3 (Envoy's client side stops at 1.2 unless the variant says so),
    // with checkpoint's certificate verified.
    let stats = gateway.ssl_stats().await;
    let stat = |name: &str| stats.get(name).copied().unwrap_or_default();
    assert!(stat("handshake") >= 1, "{stats:?}");
    assert!(stat("versions.TLSv1.3") >= 1, "{stats:?}");
    assert_eq!(stat("versions.TLSv1.2"), 0, "{stats:?}");
    assert_eq!(stat("connection_error"), 0, "{stats:?}");
    assert_eq!(stat("fail_verify_san"), 0, "{stats:?}");

    // The same CA, the same checkpoint, but the cluster expects another name in checkpoint's
    // certificate: Envoy refuses the handshake and fails closed.
    let wrong = Gateway::start(
        dir.path(),
        "envoy-wrong-name",
        &tls,
        &checkpoint,
        "not-checkpoint.example",
        upstream_port,
    )
    .await;
    let refused = wrong.get_api("admin").await;
    assert_eq!(refused.status, 503, "status_on_error: {}", refused.text);
    assert!(!refused.reached_upstream(), "{}", refused.text);
    let stats = wrong.ssl_stats().await;
    assert!(
        stats.get("fail_verify_san").copied().unwrap_or_default() >= 1,
        "{stats:?}"
    );
    checkpoint.proc.assert_running();
}

// ---- client certificates ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_its_certificates_may_call() {
    require_openssl();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    // Another CA, with a client certificate of its own.
    let other = dir.path().join("other");
    make_certs(&other);
    let mut checkpoint = Checkpoint::start(
        dir.path(),
        "checkpoint",
        Some(&checkpoint_files(&tls, true)),
    )
    .await;
    let ca = tls.join("ca.crt");
    let (cert, key) = gateway_identity(&tls);

    // With the certificate: TLS 1.3, ALPN h2, and the Check is answered.
    let trusted = client_config(&ca, Some((&cert, &key)));
    let stream = handshake(checkpoint.grpc, trusted.clone())
        .await
        .expect("handshake with a client certificate");
    let (_, connection) = stream.get_ref();
    assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        connection.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(check_with(checkpoint.grpc, trusted.clone()).await, Ok(200));

    // Without one: the handshake or the call fails, never an answer.
    let anonymous = check_with(checkpoint.grpc, client_config(&ca, None)).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    // With one from another CA: the same.
    let (other_cert, other_key) = gateway_identity(&other);
    let stranger = check_with(
        checkpoint.grpc,
        client_config(&ca, Some((&other_cert, &other_key))),
    )
    .await;
    assert!(stranger.is_err(), "another CA's certificate: {stranger:?}");

    // The same with openssl, whose errors name the server's alert.
    let verify = [
        "-CAfile",
        ca.to_str().expect("path"),
        "-verify_return_error",
        "-verify_hostname",
        CHECKPOINT_TLS_NAME,
        "-servername",
        CHECKPOINT_TLS_NAME,
    ];
    let with_cert = [
        "-cert",
        cert.to_str().expect("path"),
        "-key",
        key.to_str().expect("path"),
    ];
    let other_args = [
        "-cert",
        other_cert.to_str().expect("path"),
        "-key",
        other_key.to_str().expect("path"),
    ];
    for version in ["-tls1_2", "-tls1_3"] {
        let ok = s_client(
            checkpoint.grpc,
            &[&verify[..], &with_cert, &[version]].concat(),
        )
        .await;
        assert!(ok.ok, "{version} with the certificate:\n{}", ok.text);
        if version == "-tls1_3" {
            // In TLS 1.3 the server judges the client's certificate after the client is done;
            // s_client, with nothing to send, may leave before the alert arrives. The rustls
            // client above covers 1.3.
            continue;
        }
        let none = s_client(checkpoint.grpc, &[&verify[..], &[version]].concat()).await;
        assert!(
            !none.ok && none.alert.is_some(),
            "{version} without a certificate:\n{}",
            none.text
        );
        let stranger = s_client(
            checkpoint.grpc,
            &[&verify[..], &other_args, &[version]].concat(),
        )
        .await;
        assert!(
            !stranger.ok && stranger.alert.is_some(),
            "{version} with another CA's certificate:\n{}",
            stranger.text
        );
    }

    // A certificate from the right CA but made for servers only (extended key usage serverAuth):
    // refused too.
    let (server_cert, server_key) = (tls.join("server.crt"), tls.join("server.key"));
    let server_only = [
        "-cert",
        server_cert.to_str().expect("path"),
        "-key",
        server_key.to_str().expect("path"),
        "-tls1_2",
    ];
    let wrong_usage = s_client(checkpoint.grpc, &[&verify[..], &server_only].concat()).await;
    assert!(
        !wrong_usage.ok && wrong_usage.alert.is_some(),
        "a serverAuth-only certificate:\n{}",
        wrong_usage.text
    );

    // ALPN: h2 is chosen; a client offering only http/1.1 is refused in the handshake.
    let h2 = s_client(
        checkpoint.grpc,
        &[&verify[..], &with_cert, &["-alpn", "h2"]].concat(),
    )
    .await;
    assert!(
        h2.ok && h2.text.contains("ALPN protocol: h2"),
        "ALPN h2:\n{}",
        h2.text
    );
    let http1 = s_client(
        checkpoint.grpc,
        &[&verify[..], &with_cert, &["-alpn", "http/1.1"]].concat(),
    )
    .await;
    assert!(
        !http1.ok && http1.alert.is_some(),
        "ALPN http/1.1 only:\n{}",
        http1.text
    );

    // Plaintext gRPC (h2c) to the TLS port fails, quickly.
    let plaintext = async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", checkpoint.grpc))
                .expect("endpoint")
                .connect_timeout(IO_TIMEOUT)
                .timeout(IO_TIMEOUT)
                .connect()
                .await
                .map_err(|e| tls_support::error_chain(&e))?;
        check_admin(&mut AuthorizationClient::new(channel), true).await
    };
    let plaintext = tokio::time::timeout(IO_TIMEOUT * 2, plaintext)
        .await
        .expect("plaintext gRPC to the TLS port neither failed nor succeeded in time");
    assert!(
        plaintext.is_err(),
        "plaintext gRPC to the TLS port: {plaintext:?}"
    );

    // None of that hurt the server.
    assert_eq!(check_with(checkpoint.grpc, trusted).await, Ok(200));
    checkpoint.proc.assert_running();
}

// ---- versions and suites ---------------------------------------------------------------------

/// A self-signed RSA certificate for `checkpoint` (RSA so that suites with RSA key exchange
/// could be chosen at all: refusing them is then the policy, not the key type).
fn rsa_certificate(dir: &Path) -> TlsFiles {
    let (cert, key) = (dir.join("rsa.crt"), dir.join("rsa.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=checkpoint",
            "-addext",
            "subjectAltName=DNS:checkpoint",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TlsFiles {
        cert,
        key,
        client_ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_cipher_suites_follow_the_policy() {
    require_openssl();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let ecdsa = Checkpoint::start(
        dir.path(),
        "checkpoint-ecdsa",
        Some(&checkpoint_files(&tls, false)),
    )
    .await;
    let rsa = Checkpoint::start(
        dir.path(),
        "checkpoint-rsa",
        Some(&rsa_certificate(dir.path())),
    )
    .await;

    // Without a client CA no client certificate is asked for: these clients present none.
    for (server, kx) in [(&ecdsa, "ECDSA"), (&rsa, "RSA")] {
        let accepted: Vec<String> = [
            "AES128-GCM-SHA256",
            "AES256-GCM-SHA384",
            "CHACHA20-POLY1305",
        ]
        .iter()
        .map(|s| format!("ECDHE-{kx}-{s}"))
        .collect();
        let refused: &[&str] = if kx == "RSA" {
            // Static RSA key exchange (CBC and GCM), finite-field DHE, ECDHE with CBC.
            &[
                "AES128-SHA",
                "AES128-GCM-SHA256",
                "AES256-GCM-SHA384",
                "DHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-SHA",
                "ECDHE-RSA-AES256-SHA384",
            ]
        } else {
            &["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"]
        };

        // TLS 1.0 and 1.1 (offered with the client's floor lowered, so that it really offers
        // them): the server answers with an alert, nothing is negotiated.
        for old in ["-tls1", "-tls1_1"] {
            let hello = s_client(server.grpc, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
            assert!(
                !hello.ok && hello.cipher.is_none() && hello.alert.is_some(),
                "{kx} {old} must be refused by the server:\n{}",
                hello.text
            );
        }

        // TLS 1.2, default offer: an ECDHE AEAD suite.
        let tls12 = s_client(server.grpc, &["-tls1_2"]).await;
        assert!(tls12.ok, "{kx} -tls1_2:\n{}", tls12.text);
        assert_eq!(tls12.protocol.as_deref(), Some("TLSv1.2"));
        let cipher = tls12.cipher.clone().expect("cipher");
        assert!(
            accepted.contains(&cipher),
            "{kx} TLS 1.2 negotiated {cipher}"
        );
        // Each allowed suite on its own.
        for suite in &accepted {
            let one = s_client(server.grpc, &["-tls1_2", "-cipher", suite]).await;
            assert!(one.ok, "{kx} {suite}:\n{}", one.text);
            assert_eq!(one.cipher.as_deref(), Some(suite.as_str()));
        }
        // Non-ECDHE or CBC offers: refused by the server.
        for suite in refused {
            let one = s_client(server.grpc, &["-tls1_2", "-cipher", suite]).await;
            assert!(
                !one.ok && one.alert.is_some(),
                "{kx} {suite} must be refused by the server:\n{}",
                one.text
            );
        }

        // TLS 1.3: the three suites, each on its own; CCM is refused.
        for suite in [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
        ] {
            let one = s_client(server.grpc, &["-tls1_3", "-ciphersuites", suite]).await;
            assert!(one.ok, "{kx} {suite}:\n{}", one.text);
            assert_eq!(one.protocol.as_deref(), Some("TLSv1.3"));
            assert_eq!(one.cipher.as_deref(), Some(suite));
        }
        let ccm = s_client(
            server.grpc,
            &["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"],
        )
        .await;
        assert!(
            !ccm.ok && ccm.alert.is_some(),
            "{kx} TLS_AES_128_CCM_SHA256 must be refused:\n{}",
            ccm.text
        );
    }
}

// ---- plaintext and TLS do not mix ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plaintext_port_fails() {
    require_openssl();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let plain = Checkpoint::start(dir.path(), "checkpoint-plain", None).await;
    let ca = tls.join("ca.crt");
    let (cert, key) = gateway_identity(&tls);
    let config = client_config(&ca, Some((&cert, &key)));

    let hello = handshake(plain.grpc, config.clone()).await;
    assert!(
        hello.is_err(),
        "a TLS handshake with a plaintext port succeeded"
    );
    let call = check_with(plain.grpc, config).await;
    assert!(
        call.is_err(),
        "a Check over TLS to a plaintext port: {call:?}"
    );
    let s = s_client(plain.grpc, &[]).await;
    assert!(!s.ok && s.cipher.is_none(), "{}", s.text);

    // The port itself is fine: plaintext gRPC is answered.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", plain.grpc))
        .expect("endpoint")
        .timeout(IO_TIMEOUT)
        .connect()
        .await
        .expect("plaintext connection");
    assert_eq!(
        check_admin(&mut AuthorizationClient::new(channel), true).await,
        Ok(200)
    );
}

// ---- renewal ---------------------------------------------------------------------------------

/// A folder laid out as the kubelet mounts a Secret: `tls.crt` and `tls.key` are symlinks into
/// `..data`, itself a symlink to the current generation; a renewal swaps `..data` at once.
struct SecretVolume {
    root: PathBuf,
    generations: u32,
}

impl SecretVolume {
    fn new(root: PathBuf, cert: &Path, key: &Path) -> SecretVolume {
        std::fs::create_dir_all(&root).expect("mkdir volume");
        let mut volume = SecretVolume {
            root,
            generations: 0,
        };
        volume.publish(cert, key);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.root.join(name))
                .expect("symlink");
        }
        volume
    }

    /// Copies `cert` and `key` into a new generation and points `..data` at it (one rename).
    fn publish(&mut self, cert: &Path, key: &Path) {
        self.generations += 1;
        let generation = format!("..gen{}", self.generations);
        let folder = self.root.join(&generation);
        std::fs::create_dir(&folder).expect("mkdir generation");
        std::fs::copy(cert, folder.join("tls.crt")).expect("copy cert");
        std::fs::copy(key, folder.join("tls.key")).expect("copy key");
        let link = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&generation, &link).expect("symlink ..data_tmp");
        std::fs::rename(&link, self.root.join("..data")).expect("swap ..data");
    }

    fn files(&self, client_ca: &Path) -> TlsFiles {
        TlsFiles {
            cert: self.root.join("tls.crt"),
            key: self.root.join("tls.key"),
            client_ca: Some(client_ca.to_owned()),
        }
    }
}

/// Handshakes until the server presents `wanted`; the time it took, or a panic past `limit`.
async fn until_served(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    wanted: &rustls::pki_types::CertificateDer<'static>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let stream = handshake(addr, config.clone())
            .await
            .expect("handshake while the certificate changes");
        if &peer_leaf(&stream) == wanted {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the new certificate was not served within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    require_openssl();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let ca = tls.join("ca.crt");
    let mut volume = SecretVolume::new(
        dir.path().join("volume"),
        &tls.join("checkpoint.crt"),
        &tls.join("checkpoint.key"),
    );
    let mut checkpoint =
        Checkpoint::start(dir.path(), "checkpoint", Some(&volume.files(&ca))).await;
    let (cert, key) = gateway_identity(&tls);
    let config = client_config(&ca, Some((&cert, &key)));
    let first = pem_certs(&tls.join("checkpoint.crt")).remove(0);

    // A gRPC connection opened before the renewal.
    let (mut early, early_seen) = tls_client(checkpoint.grpc, config.clone())
        .await
        .expect("connect");
    assert_eq!(check_admin(&mut early, true).await, Ok(200));
    assert_eq!(*early_seen.lock().expect("seen"), vec![first.clone()]);

    // Renewal: make-certs.sh issues a new checkpoint certificate (new key, new serial) from the
    // same CA, and the volume swaps to it in one rename.
    make_certs(&tls);
    let renewed = pem_certs(&tls.join("checkpoint.crt")).remove(0);
    assert_ne!(renewed, first, "make-certs.sh issued a new certificate");
    volume.publish(&tls.join("checkpoint.crt"), &tls.join("checkpoint.key"));
    let took = until_served(checkpoint.grpc, config.clone(), &renewed, RELOAD_WITHIN).await;
    eprintln!("the renewed certificate was served after {took:?}");
    assert_eq!(checkpoint.log_lines("TLS certificate reloaded").len(), 1);

    // The connection opened before goes on with its certificate: the Check is answered on it,
    // and the client opened no other connection.
    assert_eq!(check_admin(&mut early, false).await, Ok(403));
    assert_eq!(
        *early_seen.lock().expect("seen"),
        vec![first.clone()],
        "the early connection was kept, not replaced"
    );
    // A new gRPC connection sees the renewed certificate.
    let (mut late, late_seen) = tls_client(checkpoint.grpc, config.clone())
        .await
        .expect("connect after the renewal");
    assert_eq!(check_admin(&mut late, true).await, Ok(200));
    assert_eq!(*late_seen.lock().expect("seen"), vec![renewed.clone()]);

    // A broken file (here written in place, through the volume's symlinks): the renewed
    // certificate keeps serving, and the log says why.
    std::fs::write(volume.root.join("tls.crt"), "not a certificate\n").expect("write garbage");
    let start = Instant::now();
    let complaint = loop {
        let lines = checkpoint.log_lines("the last good certificate stays");
        if let Some(line) = lines.first() {
            break line.clone();
        }
        checkpoint.proc.assert_running();
        assert!(
            start.elapsed() < RELOAD_WITHIN,
            "no complaint about the broken file within {RELOAD_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(complaint.contains("tls.crt"), "names the file: {complaint}");
    assert!(complaint.contains("\"ERROR\""), "{complaint}");
    let stream = handshake(checkpoint.grpc, config.clone())
        .await
        .expect("handshake with a broken file on disk");
    assert_eq!(peer_leaf(&stream), renewed, "the last good certificate");
    assert_eq!(check_with(checkpoint.grpc, config).await, Ok(200));
    assert_eq!(check_admin(&mut early, true).await, Ok(200));

    // One process throughout: started once, still running.
    checkpoint.proc.assert_running();
    assert_eq!(checkpoint.log_lines("\"listening\"").len(), 1);
}
