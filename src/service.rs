//! The gRPC boundary: `envoy.service.auth.v3.Authorization/Check`, plus the descriptor set that
//! reflection serves (built by build.rs from the files envoy-types ships).
//!
//! Called by tonic for every Check. Turns the request into our own [`Request`], honours the
//! call's `grpc-timeout`, runs the [`Checker`], writes the decision log line and returns the
//! answer. A deny is `Ok(CheckResponse)`; this module never returns `Err(Status)` for a policy
//! outcome.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::check::{Checker, Decision};
use crate::request::Request;
use crate::response::Responder;

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
        let outcome = self.checker.check(&view, deadline).await;
        let response = self.responder.build(&outcome);
        let (rule, method) = match outcome.rule {
            Some((path, method)) => (path, method.as_str()),
            None => ("", ""),
        };
        tracing::info!(
            target: "checkpoint::decision",
            request_id = %view.request_id,
            rule,
            method,
            decision = match outcome.decision { Decision::Allow => "allow", Decision::Deny(_) => "deny" },
            reason = outcome.reason,
            identity_source = outcome.identity_source,
            identity_cache = outcome.identity_cache.map(|l| l.as_str()),
            identity_latency_us = outcome.identity_latency.map(|d| d.as_micros() as u64),
            identity_failure = outcome.failure.as_ref().map(|f| f.reason),
            detail = outcome.failure.as_ref().map(|f| f.detail.as_str()),
            user_id = outcome.user.as_ref().map(|u| u.id.as_str()),
            latency_us = started.elapsed().as_micros() as u64,
            "decision"
        );
        Ok(tonic::Response::new(response))
    }
}

/// The call's deadline from the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
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
        ];
        for (text, want) in cases {
            let mut metadata = MetadataMap::new();
            if let Ok(value) = text.parse() {
                metadata.insert("grpc-timeout", value);
            }
            assert_eq!(grpc_timeout(&metadata), want, "{text:?}");
        }
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
