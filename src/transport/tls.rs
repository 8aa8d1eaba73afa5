//! TLS on the gRPC port, with rustls (the crypto of aws-lc-rs, already in the tree).
//!
//! Policy (the platform's baseline): TLS 1.2 minimum; TLS 1.3 with TLS_AES_128_GCM_SHA256,
//! TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256; TLS 1.2 with ECDHE key exchange and
//! AEAD suites only. ALPN offers `h2` only. With a client CA bundle, a client must present a
//! certificate that chains to it, so that only the gateway can call Check.
//!
//! Certificates are renewed on disk (cert-manager, a Kubernetes Secret's symlink swap): the
//! files are read again every [`RELOAD_INTERVAL`], and when they changed and still make a valid
//! configuration, new handshakes use it; established connections keep theirs. A bad new file
//! is logged and the last good configuration stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

/// How often the certificate files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Where the server's certificate, key and (optionally) the client CA bundle are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate issued by one of these; `None`: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS configuration could not be built; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a PEM certificate list: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{}: no PEM private key in it: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("{}: client CA bundle: {detail}", path.display())]
    BadClientCa { path: PathBuf, detail: String },
    #[error("certificate {} and key {} do not make a TLS configuration: {detail}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Accepts TLS connections with the current configuration.
pub struct Acceptor {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

/// A configuration and the file contents it was built from.
struct Loaded {
    config: Arc<ServerConfig>,
    contents: Vec<Vec<u8>>,
}

impl Acceptor {
    /// Loads the files once; an error here stops the start-up.
    pub fn load(files: TlsFiles) -> Result<Acceptor, TlsError> {
        let contents = read_all(&files)?;
        let config = build(&files, &contents)?;
        Ok(Acceptor {
            files,
            current: RwLock::new(Loaded { config, contents }),
        })
    }

    /// The handshake with the configuration current at this moment.
    pub async fn accept(
        &self,
        socket: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let config = match self.current.read() {
            Ok(loaded) => loaded.config.clone(),
            Err(poisoned) => poisoned.into_inner().config.clone(),
        };
        tokio_rustls::TlsAcceptor::from(config).accept(socket).await
    }

    /// Reads the files again; when they changed, builds and installs the new configuration.
    /// Returns whether a new configuration was installed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        let unchanged = match self.current.read() {
            Ok(loaded) => loaded.contents == contents,
            Err(poisoned) => poisoned.into_inner().contents == contents,
        };
        if unchanged {
            return Ok(false);
        }
        let config = build(&self.files, &contents)?;
        let mut loaded = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *loaded = Loaded { config, contents };
        Ok(true)
    }

    /// Checks the files every `interval` until the process ends.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut failing = false;
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    Ok(false) => failing = false,
                    Err(e) => {
                        // Once per failing spell: a file half-written by a renewal is normal.
                        if !failing {
                            tracing::error!(error = %e, "TLS files changed but cannot be used; the last good certificate stays");
                        }
                        failing = true;
                    }
                }
            }
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut contents = vec![read(&files.cert)?, read(&files.key)?];
    if let Some(ca) = &files.client_ca {
        contents.push(read(ca)?);
    }
    Ok(contents)
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The provider with exactly the suites of the policy above.
fn provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    provider
}

fn build(files: &TlsFiles, contents: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    let empty = Vec::new();
    let part = |i: usize| contents.get(i).unwrap_or(&empty);
    let certs = certificates(&files.cert, part(0))?;
    let key = PrivateKeyDer::from_pem_slice(part(1)).map_err(|e| TlsError::BadKey {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(provider());
    let config_error = |e: rustls::Error| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(config_error)?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let bad = |detail: String| TlsError::BadClientCa {
                path: ca.clone(),
                detail,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca, part(2))? {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
