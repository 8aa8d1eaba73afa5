//! The gRPC boundary: `envoy.service.auth.v3.Authorization/Check`, plus the descriptor set that
//! reflection serves (built by build.rs from the files envoy-types ships).
//!
//! [`AuthorizationService::check_encoded`] is what checkpoint's HTTP/2 server ([`crate::grpc`])
//! calls for every Check: the request view in, the call's deadline honoured, the [`Checker`] run,
//! the decision log line ([`telemetry::decision`]) written and the answer's bytes out. The same
//! service also implements envoy-types' generated `Authorization` trait, for embedders who serve
//! it with tonic. A deny is an answer; this module never returns `Err(Status)` for a policy
//! outcome.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::check::{Checker, Decision, Outcome};
use crate::request::Request;
use crate::response::{Encoded, Responder};
use crate::telemetry;

/// The encoded `FileDescriptorSet` of `envoy/service/auth/v3/external_auth.proto` and its
/// imports.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));

/// Answers Envoy's Check calls.
pub struct AuthorizationService {
    checker: Arc<Checker>,
    responder: Arc<Responder>,
}

impl AuthorizationService {
    pub fn new(checker: Arc<Checker>, responder: Arc<Responder>) -> AuthorizationService {
        AuthorizationService { checker, responder }
    }

    /// One Check from its request view to the encoded answer, with the decision line: what
    /// checkpoint's own HTTP/2 server ([`crate::grpc`]) runs for every Check.
    pub async fn check_encoded(
        self: Arc<Self>,
        view: Request,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Encoded {
        self.decide(&view, started, deadline, Responder::encode)
            .await
    }

    /// One Check, from the request view to the answer (`answer` writes it: a `CheckResponse`
    /// or its bytes); writes the decision line.
    async fn decide<R>(
        &self,
        view: &Request,
        started: Instant,
        deadline: Option<Instant>,
        answer: impl FnOnce(&Responder, &Outcome<'_>) -> R,
    ) -> R {
        let outcome = self.checker.check(view, deadline).await;
        let response = answer(&self.responder, &outcome);
        if telemetry::decision_enabled() {
            let (rule, method) = match outcome.rule {
                Some((path, method)) => (path, method.as_str()),
                None => ("", ""),
            };
            telemetry::decision(&telemetry::Decision {
                request_id: &view.request_id,
                rule,
                method,
                decision: match outcome.decision {
                    Decision::Allow => "allow",
                    Decision::Deny(_) => "deny",
                },
                reason: outcome.reason,
                identity_source: outcome.identity_source,
                identity_cache: outcome.identity_cache.map(|l| l.as_str()),
                identity_latency_us: outcome.identity_latency.map(|d| d.as_micros() as u64),
                identity_failure: outcome.failure.as_ref().map(|f| f.reason),
                detail: outcome.failure.as_ref().map(|f| f.detail.as_str()),
                user_id: outcome.user.as_ref().map(|u| u.id.as_str()),
                latency_us: started.elapsed().as_micros() as u64,
            });
        }
        response
    }
}

/// The last Checks' decision lines may still be queued when the server stops serving: write them
/// before the process can exit (the server drops the service once in-flight Checks are done).
impl Drop for AuthorizationService {
    fn drop(&mut self) {
        telemetry::flush();
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let deadline = grpc_timeout(request.metadata()).map(|t| started + t);
        let view = Request::from_check(request.get_ref());
        let response = self
            .decide(&view, started, deadline, Responder::build)
            .await;
        Ok(tonic::Response::new(response))
    }
}

/// The call's deadline from the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H M S m u n); anything else is none.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    // ASCII first: the split below must not fall inside a character.
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let cases = [
            ("200m", Some(Duration::from_millis(200))),
            ("1S", Some(Duration::from_secs(1))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("500u", Some(Duration::from_micros(500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("", None),
            ("-1S", None),
            ("+5S", None),
            ("1\u{e9}", None),
            ("\u{e9}", None),
            ("5\u{e9}S", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_grpc_timeout(text), want, "{text:?}");
            let mut metadata = MetadataMap::new();
            if let Ok(value) = text.parse() {
                metadata.insert("grpc-timeout", value);
            }
            assert_eq!(grpc_timeout(&metadata), want, "{text:?}");
        }
    }

    /// Serves `service` with checkpoint's own HTTP/2 server until the test ends (no health or
    /// reflection: every other method is UNIMPLEMENTED).
    fn serve_own(listener: tokio::net::TcpListener, service: AuthorizationService) {
        let shared = Arc::new(crate::grpc::Shared {
            service: Arc::new(service),
            routes: tonic::service::Routes::default(),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _stop = stop;
            crate::grpc::serve(crate::grpc::Listener::Tcp(listener), shared, stopped).await;
        });
    }

    /// checkpoint's own server and envoy-types' generated tonic server, over real gRPC
    /// connections: the same answers for the same requests, allows and denies, map and pair
    /// header forms, an unknown method refused.
    #[tokio::test]
    async fn the_own_server_answers_as_the_generated_one() {
        use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
            HttpRequest, Request as AttrRequest,
        };
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("checkpoint.yaml");
        std::fs::write(
            &path,
            r#"
version: 1
rules:
  inline:
    /api: { GET: { authorization: { expression: "groups.admin", public: false } } }
    /public: { ALL: { authorization: { expression: "true", public: true } } }
identity:
  sources: [ { type: trusted_headers } ]
"#,
        )
        .expect("write config");
        let env: std::collections::HashMap<String, String> =
            [("CHECKPOINT_CONFIG".to_owned(), path.display().to_string())].into();
        let config = crate::config::Config::load(&env).expect("config");
        let app = crate::App::new(config, &env).expect("app");
        let responder = Arc::new(Responder::new(
            app.settings.strict_mode,
            &app.settings.user_headers,
        ));
        let checker = Arc::new(app.checker);
        let serve = |generated: bool| {
            let service = AuthorizationService::new(checker.clone(), responder.clone());
            async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                if generated {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    tokio::spawn(
                        tonic::transport::Server::builder()
                            .add_service(AuthorizationServer::new(service))
                            .serve_with_incoming(incoming),
                    );
                } else {
                    serve_own(listener, service);
                }
                AuthorizationClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect")
            }
        };
        let mut generated = serve(true).await;
        let mut lean = serve(false).await;

        let map_form = |path: &str, headers: &[(&str, &str)]| {
            let mut http = HttpRequest {
                method: "GET".into(),
                path: path.into(),
                id: "stream-1".into(),
                ..Default::default()
            };
            for (k, v) in headers {
                http.headers.insert((*k).into(), (*v).into());
            }
            http
        };
        let admin = [
            ("miauserid", "alice"),
            ("miausergroups", "admin,users"),
            ("x-request-id", "r-1"),
        ];
        let mut pair_form = map_form("", &[]);
        pair_form.method.clear();
        pair_form.header_map = Some(HeaderMap {
            headers: [
                (":method", "GET"),
                (":path", "/api/x"),
                ("MiaUserId", "bob"),
            ]
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).into(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
        });
        let cases = [
            map_form("/api/users", &admin),
            map_form("/api/users", &[("miauserid", "bob")]),
            map_form("/api/users", &[]),
            map_form("/public/page", &[]),
            map_form("/nowhere", &admin),
            map_form("api/not-origin-form", &admin),
            pair_form,
        ];
        let mut codes = Vec::new();
        for http in cases {
            let check = CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(AttrRequest {
                        http: Some(http),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            };
            let want = generated.check(check.clone()).await.expect("generated");
            let got = lean.check(check.clone()).await.expect("lean");
            let want = want.into_inner();
            codes.push(want.status.as_ref().map(|s| s.code).unwrap_or(-1));
            assert_eq!(got.into_inner(), want, "{check:?}");
        }
        // OK, UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT all occurred.
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes, [0, 3, 5, 7, 16]);
        assert!(
            lean.check(CheckRequest::default()).await.is_ok(),
            "an empty request is a deny, not an error"
        );

        // Any other method of the service: UNIMPLEMENTED, as the generated server answers.
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            serve_own(
                listener,
                AuthorizationService::new(checker.clone(), responder.clone()),
            );
            addr
        };
        let mut channel = tonic::client::Grpc::new(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
        channel.ready().await.expect("ready");
        let status = channel
            .unary::<CheckRequest, CheckResponse, _>(
                tonic::Request::new(CheckRequest::default()),
                "/envoy.service.auth.v3.Authorization/Other"
                    .parse()
                    .expect("path"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("unimplemented");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn the_descriptor_set_describes_the_authorization_service() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET).expect("decodes");
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
            .expect("external_auth.proto is in the set");
        assert!(file.service.iter().any(|s| s.name() == "Authorization"));
    }
}
