//! The `envoy_metadata` source: a payload that Envoy's `jwt_authn` filter already verified.
//!
//! With `payload_in_metadata: <key>` on a jwt_authn provider, Envoy verifies the JWT itself and
//! puts its payload at `metadata_context.filter_metadata["envoy.filters.http.jwt_authn"][<key>]`
//! of the Check. This source reads the object at `[namespace][key]` of
//! [`Request::metadata`] and maps it through the claim mapping
//! ([`claims::user_from_claims`]).
//!
//! - No object there: [`Resolution::NoCredential`] (jwt_authn found no token, or the route has
//!   no provider).
//! - A payload without a user id: [`Resolution::Invalid`] (`envoy_metadata_no_subject`).
//! - Something other than an object there, or claims that cannot become a user: Envoy or our
//!   settings are misconfigured, not the caller: [`Resolution::Unavailable`].
//!
//! Called by the [`Resolver`](super::Resolver). No I/O; never cached.

use std::sync::Arc;

use serde_json::Value;

use super::{BoxFuture, Context, Failure, Resolution, Source, claims};
use crate::config::sources::{ClaimMapping, EnvoyMetadataSource};
use crate::request::Request;

pub struct EnvoyMetadata {
    namespace: String,
    key: String,
    claims: ClaimMapping,
}

impl EnvoyMetadata {
    /// Validates the settings; every problem is reported, joined with `; `, each naming its
    /// field.
    pub fn new(settings: &EnvoyMetadataSource) -> Result<EnvoyMetadata, Vec<String>> {
        let mut errors = Vec::new();
        if settings.namespace.is_empty() {
            errors.push("envoy_metadata.namespace: must not be empty");
        }
        if settings.key.is_empty() {
            errors.push("envoy_metadata.key: must not be empty");
        }
        if settings.claims.user_id.is_empty() {
            errors.push("envoy_metadata.claims.user_id: must not be empty");
        }
        if !errors.is_empty() {
            return Err(errors.into_iter().map(str::to_owned).collect());
        }
        Ok(EnvoyMetadata {
            namespace: settings.namespace.clone(),
            key: settings.key.clone(),
            claims: settings.claims.clone(),
        })
    }

    fn read(&self, request: &Request) -> Resolution {
        // Security: the payload is trusted as verified only because Envoy's jwt_authn filter
        // checked the token's signature, issuer, audience and lifetime before writing it, and
        // because clients cannot set `metadata_context`: it is Envoy's own dynamic metadata,
        // never built from request headers. This holds only when jwt_authn runs before ext_authz
        // in the filter chain and the namespace is the one jwt_authn writes; README says so.
        let Some(payload) = request
            .metadata
            .as_ref()
            .and_then(|m| m.get(&self.namespace))
            .and_then(|ns| ns.get(&self.key))
        else {
            return Resolution::NoCredential;
        };
        let Value::Object(payload) = payload else {
            return Resolution::Unavailable(Failure::new(
                "envoy_metadata_malformed",
                format!("metadata {}.{} is not an object", self.namespace, self.key),
            ));
        };
        match claims::user_from_claims(payload, &self.claims) {
            Ok(Some(user)) => Resolution::User(Arc::new(user)),
            Ok(None) => Resolution::Invalid(Failure::new(
                "envoy_metadata_no_subject",
                format!("the verified payload has no \"{}\"", self.claims.user_id),
            )),
            Err(e) => Resolution::Unavailable(Failure::new("envoy_metadata_malformed", e)),
        }
    }
}

impl Source for EnvoyMetadata {
    fn name(&self) -> &'static str {
        "envoy_metadata"
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        _context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(std::future::ready(self.read(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructor_errors_name_the_field() {
        let Err(e) = EnvoyMetadata::new(&EnvoyMetadataSource {
            name: None,
            namespace: String::new(),
            key: String::new(),
            claims: ClaimMapping::default(),
        }) else {
            panic!("invalid settings accepted")
        };
        assert_eq!(
            e,
            [
                "envoy_metadata.namespace: must not be empty",
                "envoy_metadata.key: must not be empty"
            ]
        );
    }
}
