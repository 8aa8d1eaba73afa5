//! Test support: the real checkpoint server on loopback port 0, a real tonic client, and a
//! user-info server standing in for the customer's authentication manager.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a failed set-up should stop the test loudly.

pub mod userinfo;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use checkpoint::Config;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running checkpoint.
pub struct Server {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), checkpoint::RunError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts checkpoint with `rules` as its auth.json and `vars` as its environment
    /// (CONFIGURATION_PATH and CONFIGURATION_FILE_NAME are filled in).
    pub async fn start(rules: &str, vars: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("auth.json"), rules).expect("write rules");
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.insert(
            "CONFIGURATION_PATH".into(),
            dir.path().display().to_string(),
        );
        env.insert("CONFIGURATION_FILE_NAME".into(), "auth".into());
        env.entry("DELAY_SHUTDOWN_SECONDS".into())
            .or_insert_with(|| "0".into());
        let config = Config::load(&env).unwrap_or_else(|e| panic!("config: {:?}", e.problems));
        let app = checkpoint::App::new(config, &env)
            .unwrap_or_else(|e| panic!("sources: {:?}", e.problems));
        Server::serve(app, dir).await
    }

    /// Starts checkpoint from a native configuration file (`CHECKPOINT_CONFIG`) with `yaml` as
    /// its content; rules are inline in it.
    pub async fn start_native(yaml: &str) -> Server {
        let server = Server::start_native_unready(yaml).await;
        server.wait_ready().await;
        server
    }

    /// [`Server::start_native`] without waiting for readiness (for what happens before it).
    pub async fn start_native_unready(yaml: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("checkpoint.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("CHECKPOINT_CONFIG".into(), path.display().to_string());
        let config = Config::load(&env).unwrap_or_else(|e| panic!("config: {:?}", e.problems));
        let app = checkpoint::App::new(config, &env)
            .unwrap_or_else(|e| panic!("sources: {:?}", e.problems));
        Server::serve_unready(app, dir).await
    }

    async fn serve(app: checkpoint::App, dir: tempfile::TempDir) -> Server {
        let server = Server::serve_unready(app, dir).await;
        server.wait_ready().await;
        server
    }

    async fn serve_unready(app: checkpoint::App, dir: tempfile::TempDir) -> Server {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(checkpoint::run(
            app,
            checkpoint::Listeners {
                grpc: grpc.into(),
                http,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            grpc: grpc_addr,
            http: http_addr,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/-/ready", self.http);
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("checkpoint did not become ready");
    }

    /// The folder of the configuration files (`CONFIGURATION_PATH`, or the native file's).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect")
    }

    /// Sends one Check with the given deadline (None: no grpc-timeout).
    pub async fn check_with_deadline(
        &self,
        request: CheckRequest,
        deadline: Option<Duration>,
    ) -> CheckResponse {
        let mut request = tonic::Request::new(request);
        if let Some(d) = deadline {
            request.set_timeout(d);
        }
        self.client()
            .await
            .check(request)
            .await
            .expect("Check must not fail at the gRPC level")
            .into_inner()
    }

    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        self.check_with_deadline(request, None).await
    }

    /// Asks for shutdown (as SIGTERM would).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A request from a peer whose certificate Envoy verified: `source.principal` is set.
pub fn request_from_peer(
    method: &str,
    path: &str,
    principal: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    let mut check = request(method, path, headers);
    if let Some(attributes) = check.attributes.as_mut() {
        attributes.source = Some(
            envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer {
                principal: principal.to_owned(),
                ..Default::default()
            },
        );
    }
    check
}

/// A Check request in Envoy's map form (`headers`).
pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut http = HttpRequest {
        method: method.into(),
        path: path.into(),
        host: "api.example".into(),
        ..Default::default()
    };
    for (k, v) in headers {
        http.headers.insert((*k).to_owned(), (*v).to_owned());
    }
    wrap(http)
}

/// The same request in the pair form (`header_map`), as with `encode_raw_headers: true` or a
/// proxyless gRPC client: method and path only as pseudo-headers.
pub fn request_pairs(method: &str, path: &str, headers: &[(&str, &[u8])]) -> CheckRequest {
    let mut pairs = vec![
        HeaderValue {
            key: ":method".into(),
            raw_value: method.as_bytes().to_vec(),
            ..Default::default()
        },
        HeaderValue {
            key: ":path".into(),
            raw_value: path.as_bytes().to_vec(),
            ..Default::default()
        },
    ];
    pairs.extend(headers.iter().map(|(k, v)| HeaderValue {
        key: (*k).to_owned(),
        raw_value: v.to_vec(),
        ..Default::default()
    }));
    wrap(HttpRequest {
        header_map: Some(HeaderMap { headers: pairs }),
        ..Default::default()
    })
}

fn wrap(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// What a response says, flattened for assertions.
#[derive(Debug, Default)]
pub struct Answer {
    /// 200 for an OK response, else the denied HTTP status.
    pub http_status: u16,
    pub grpc_code: i32,
    pub headers: HashMap<String, String>,
    pub removed: Vec<String>,
    pub body: String,
}

pub fn answer(response: &CheckResponse) -> Answer {
    let grpc_code = response.status.as_ref().map(|s| s.code).unwrap_or_default();
    let mut a = Answer {
        grpc_code,
        ..Default::default()
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            a.http_status = 200;
            for h in &ok.headers {
                let hv = h.header.as_ref().unwrap();
                assert_eq!(
                    h.append_action, 2,
                    "every injected header overwrites: {}",
                    hv.key
                );
                a.headers.insert(hv.key.clone(), hv.value.clone());
            }
            a.removed = ok.headers_to_remove.clone();
            for removed in &a.removed {
                assert!(
                    !a.headers.contains_key(removed),
                    "{removed} is both set and removed"
                );
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            a.http_status = denied
                .status
                .as_ref()
                .map(|s| s.code as u16)
                .unwrap_or_default();
            for h in &denied.headers {
                let hv = h.header.as_ref().unwrap();
                a.headers.insert(hv.key.clone(), hv.value.clone());
            }
            a.body = denied.body.clone();
        }
        other => panic!("unexpected http_response {other:?}"),
    }
    a
}
