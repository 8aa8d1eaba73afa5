//! The `introspection` source: RFC 7662 token introspection of opaque (or any) access tokens.
//!
//! The token is read where the settings say (`Authorization: Bearer` by default) and POSTed to
//! the authorization server's introspection endpoint as `token=<t>&token_type_hint=access_token`
//! (`application/x-www-form-urlencoded`), with our own client credentials either in an
//! `Authorization: Basic` header (`client_secret_basic`) or in the body (`client_secret_post`).
//! The call, body included, is bounded by the source's `timeout` and by the Check's deadline
//! ([`Context::budget`]); the body is read in chunks and refused past [`MAX_BODY_BYTES`].
//!
//! How answers map:
//! - no token at the configured location: [`Resolution::NoCredential`] (the next source is asked);
//! - `{"active": false}`: [`Resolution::Invalid`] (`token_inactive`, a 401);
//! - `{"active": true, ...}`: a user through [`claims::user_from_claims`]. A client-credentials
//!   token has no `sub`: when the configured user id claim is absent, the user id falls back to
//!   the answer's `client_id` (the calling service is the user). An active answer with neither is
//!   [`Resolution::Invalid`] (`introspection_no_subject`): the token names nobody;
//! - a 3xx, 4xx or 5xx status, a timeout, a refused connection, a body that is not a JSON object
//!   or lacks a boolean `active`, or malformed claims: [`Resolution::Unavailable`]. A 4xx means
//!   our own client is misconfigured (wrong secret) or the token type is not supported (the test
//!   IdP answers 400 `unsupported_token_type` for JWT access tokens): not the caller's fault, so
//!   never a 401.
//!
//! Answers are cached by the identity cache under the token ([`Source::cache_key`]); a user is
//! never kept past the `exp` the endpoint reports ([`super::User::expires_at`]).
//!
//! Called by the [`Resolver`](super::Resolver). Must never log the token or the client secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value};

use super::http::{self, Reasons};
use super::{BoxFuture, Context, Failure, KeyHasher, Resolution, Source, claims};
use crate::config::sources::{ClaimMapping, ClientAuth, IntrospectionSource, TokenLocation};
use crate::request::Request;
use crate::telemetry::traces;
use tracing::Instrument as _;

/// The largest introspection answer read; larger ones are refused (an answer is a few hundred
/// bytes; a bound keeps a misbehaving server from filling our memory).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An RFC 7662 introspection client. Holds the client secret: deliberately not `Debug`.
pub struct Introspection {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    token: TokenLocation,
    claims: ClaimMapping,
    /// `claims` with `client_id` as the user id: the fallback for client-credentials tokens.
    client_claims: ClaimMapping,
    timeout: Duration,
    /// `client_secret_basic`: the whole `Authorization` header value, built once.
    authorization: Option<HeaderValue>,
    /// `client_secret_post`: `&client_id=...&client_secret=...`, appended to every body.
    body_credentials: String,
}

const REASONS: Reasons = Reasons {
    too_large: "introspection_too_large",
    unreachable: "introspection_unreachable",
};

/// An HTTP client fit for introspection: no redirects (a redirect could carry the token and our
/// client credentials to another URL), pooled connections.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // Security: never follow a redirect with a token in the body.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

impl Introspection {
    /// Validates the settings. `client` should come from [`http_client`] (or follow no
    /// redirects); `env` is the process environment, read only when `client_secret_env` names a
    /// variable. Every problem is reported, joined with `; `, each naming its field.
    pub fn new(
        settings: &IntrospectionSource,
        client: reqwest::Client,
        env: &HashMap<String, String>,
    ) -> Result<Introspection, Vec<String>> {
        let mut errors = Vec::new();
        let endpoint = match reqwest::Url::parse(&settings.endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                errors.push("introspection.endpoint: expected an http or https URL".to_owned());
                None
            }
            Err(e) => {
                errors.push(format!("introspection.endpoint: {e}"));
                None
            }
        };
        if settings.client_id.is_empty() {
            errors.push("introspection.client_id: must not be empty".to_owned());
        }
        let secret = match (&settings.client_secret, &settings.client_secret_env) {
            (Some(_), Some(_)) => {
                errors.push(
                    "introspection.client_secret: give client_secret or client_secret_env, not both"
                        .to_owned(),
                );
                None
            }
            (None, None) => {
                errors.push(
                    "introspection.client_secret: one of client_secret or client_secret_env is required"
                        .to_owned(),
                );
                None
            }
            (Some(secret), None) if secret.is_empty() => {
                errors.push("introspection.client_secret: must not be empty".to_owned());
                None
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(name)) => match env.get(name) {
                Some(secret) if !secret.is_empty() => Some(secret.clone()),
                Some(_) => {
                    errors.push(format!(
                        "introspection.client_secret_env: the environment variable {name} is empty"
                    ));
                    None
                }
                None => {
                    errors.push(format!(
                        "introspection.client_secret_env: the environment variable {name} is not set"
                    ));
                    None
                }
            },
        };
        if settings.timeout.0.is_zero() {
            errors.push("introspection.timeout: must be more than zero".to_owned());
        }
        if settings.claims.user_id.is_empty() {
            errors.push("introspection.claims.user_id: must not be empty".to_owned());
        }
        let (Some(endpoint), Some(secret), true) = (endpoint, secret, errors.is_empty()) else {
            return Err(errors);
        };

        let (authorization, body_credentials) = match settings.auth_method {
            ClientAuth::ClientSecretBasic => {
                // RFC 6749 section 2.3.1: both parts are form-encoded before base64.
                let pair = format!(
                    "{}:{}",
                    form_encode(&settings.client_id),
                    form_encode(&secret)
                );
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let mut value = HeaderValue::from_str(&value).map_err(|e| {
                    vec![format!(
                        "introspection.client_secret: not usable in a header: {e}"
                    )]
                })?;
                value.set_sensitive(true);
                (Some(value), String::new())
            }
            ClientAuth::ClientSecretPost => (
                None,
                format!(
                    "&client_id={}&client_secret={}",
                    form_encode(&settings.client_id),
                    form_encode(&secret)
                ),
            ),
        };
        let client_claims = ClaimMapping {
            user_id: "client_id".to_owned(),
            ..settings.claims.clone()
        };
        Ok(Introspection {
            client,
            endpoint,
            token: settings.token.clone(),
            claims: settings.claims.clone(),
            client_claims,
            timeout: settings.timeout.0,
            authorization,
            body_credentials,
        })
    }

    async fn call(&self, request: &Request, context: &Context) -> Resolution {
        let Some(token) = claims::token(request, &self.token) else {
            return Resolution::NoCredential;
        };
        let budget = context.budget(self.timeout);
        if budget.is_zero() {
            return Resolution::Unavailable(Failure::new(
                "deadline_exceeded",
                "no time left before the Check's deadline",
            ));
        }
        let mut body = String::with_capacity(token.len() + 64 + self.body_credentials.len());
        body.push_str("token=");
        body.push_str(&form_encode(token));
        body.push_str("&token_type_hint=access_token");
        body.push_str(&self.body_credentials);

        let span = traces::client_span("introspection", "POST", &self.endpoint);
        let exchange = async {
            let mut call = self
                .client
                .post(self.endpoint.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(body);
            if let Some(authorization) = &self.authorization {
                call = call.header(AUTHORIZATION, authorization.clone());
            }
            let response = call
                .headers(traces::propagation_headers(&span))
                .send()
                .await
                .map_err(|e| {
                    traces::record_error(&span, http::error_type(&e));
                    Failure::new("introspection_unreachable", http::describe(&e))
                })?;
            let status = response.status();
            traces::record_status(&span, status.as_u16());
            let body = http::read_bounded(response, MAX_BODY_BYTES, REASONS).await;
            if !status.is_success() {
                // The OAuth error code (`invalid_client`, `unsupported_token_type`) says which
                // side is misconfigured; it is a fixed vocabulary, never a credential.
                let code = body
                    .ok()
                    .as_deref()
                    .and_then(oauth_error)
                    .unwrap_or_default();
                return Err(Failure::new(
                    "introspection_status",
                    format!("introspection answered {status}{code}"),
                ));
            }
            body
        };
        let answer = tokio::time::timeout(budget, exchange.instrument(span.clone())).await;
        match answer {
            Err(_) => Resolution::Unavailable({
                traces::record_error(&span, "timeout");
                Failure::new(
                    "introspection_timeout",
                    format!("no answer within {budget:?}"),
                )
            }),
            Ok(Err(failure)) => Resolution::Unavailable(failure),
            Ok(Ok(body)) => self.interpret(&body),
        }
    }

    /// Turns a 2xx introspection answer into a resolution.
    fn interpret(&self, body: &[u8]) -> Resolution {
        let answer: Map<String, Value> = match serde_json::from_slice(body) {
            Ok(Value::Object(answer)) => answer,
            Ok(_) => return malformed("the answer is not a JSON object".to_owned()),
            Err(e) => {
                return Resolution::Unavailable(Failure::new(
                    "introspection_not_json",
                    format!("the answer is not JSON: {e}"),
                ));
            }
        };
        match answer.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                return Resolution::Invalid(Failure::new(
                    "token_inactive",
                    "the introspection endpoint reports the token inactive",
                ));
            }
            _ => return malformed("\"active\" is missing or not a boolean".to_owned()),
        }
        let user = match claims::user_from_claims(&answer, &self.claims) {
            Ok(None) => claims::user_from_claims(&answer, &self.client_claims),
            found => found,
        };
        match user {
            Ok(Some(user)) => Resolution::User(Arc::new(user)),
            Ok(None) => Resolution::Invalid(Failure::new(
                "introspection_no_subject",
                format!(
                    "the active token has neither \"{}\" nor \"client_id\"",
                    self.claims.user_id
                ),
            )),
            Err(e) => malformed(e),
        }
    }
}

fn malformed(detail: String) -> Resolution {
    Resolution::Unavailable(Failure::new("introspection_malformed", detail))
}

/// ` (code)` for an OAuth error body whose `error` is a short, plain code.
fn oauth_error(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    let plain = code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then(|| format!(" ({code})"))
}

/// Percent-encodes everything but the unreserved characters (RFC 3986), a form encoding that
/// every form decoder reads back (a space becomes `%20`, never the ambiguous `+`).
pub fn form_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

impl Source for Introspection {
    fn name(&self) -> &'static str {
        "introspection"
    }

    fn request_headers(&self) -> Vec<String> {
        vec![super::token_header(&self.token)]
    }

    fn outbound(&self) -> bool {
        true
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(self.call(request, context))
    }

    /// The answer depends on the endpoint and the token, nothing else. The cache hashes the
    /// token under a per-process key; it never stores it.
    fn cache_key(&self, request: &Request, _context: &Context, key: &mut KeyHasher) -> bool {
        let Some(token) = claims::token(request, &self.token) else {
            return false;
        };
        key.field(self.endpoint.as_str().as_bytes());
        key.field(token.as_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sources::Span;
    use serde_json::json;

    fn settings() -> IntrospectionSource {
        IntrospectionSource {
            name: None,
            endpoint: "http://127.0.0.1:9/introspect".into(),
            client_id: "authz service".into(),
            client_secret: Some("s3cr:t/+".into()),
            client_secret_env: None,
            auth_method: ClientAuth::ClientSecretBasic,
            token: TokenLocation::Bearer,
            claims: ClaimMapping {
                properties: vec!["properties".into()],
                ..ClaimMapping::default()
            },
            timeout: Span(Duration::from_secs(1)),
        }
    }

    fn source(settings: &IntrospectionSource) -> Introspection {
        Introspection::new(settings, reqwest::Client::new(), &HashMap::new()).expect("valid")
    }

    #[test]
    fn form_encoding_keeps_only_unreserved_characters() {
        assert_eq!(form_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(form_encode("a b+c&d=e/%"), "a%20b%2Bc%26d%3De%2F%25");
        assert_eq!(form_encode("é"), "%C3%A9");
    }

    #[test]
    fn client_credentials_are_encoded_per_method() {
        let basic = source(&settings());
        let header = basic.authorization.as_ref().expect("basic header");
        assert!(header.is_sensitive());
        let encoded = header
            .to_str()
            .expect("ascii")
            .strip_prefix("Basic ")
            .expect("basic");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(decoded, b"authz%20service:s3cr%3At%2F%2B");
        assert!(basic.body_credentials.is_empty());

        let post = source(&IntrospectionSource {
            auth_method: ClientAuth::ClientSecretPost,
            ..settings()
        });
        assert!(post.authorization.is_none());
        assert_eq!(
            post.body_credentials,
            "&client_id=authz%20service&client_secret=s3cr%3At%2F%2B"
        );
    }

    #[test]
    fn settings_errors_name_their_field() {
        let err = |s: IntrospectionSource, env: &[(&str, &str)]| {
            let env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            match Introspection::new(&s, reqwest::Client::new(), &env) {
                Ok(_) => String::new(),
                Err(e) => e.join("; "),
            }
        };
        let e = err(
            IntrospectionSource {
                endpoint: "ftp://x/".into(),
                client_id: String::new(),
                client_secret: None,
                timeout: Span(Duration::ZERO),
                ..settings()
            },
            &[],
        );
        for field in [
            "introspection.endpoint",
            "introspection.client_id",
            "introspection.client_secret:",
            "introspection.timeout",
        ] {
            assert!(e.contains(field), "{field} in {e}");
        }
        let from_env = IntrospectionSource {
            client_secret: None,
            client_secret_env: Some("SECRET".into()),
            ..settings()
        };
        assert!(err(from_env.clone(), &[]).contains("SECRET is not set"));
        assert!(err(from_env.clone(), &[("SECRET", "")]).contains("SECRET is empty"));
        assert_eq!(err(from_env, &[("SECRET", "x")]), "");
        let both = IntrospectionSource {
            client_secret_env: Some("SECRET".into()),
            ..settings()
        };
        assert!(err(both, &[("SECRET", "x")]).contains("not both"));
    }

    #[test]
    fn answers_map_as_documented() {
        let s = source(&settings());
        let body = |v: Value| v.to_string().into_bytes();

        let user = s.interpret(&body(json!({"active": true, "sub": "alice",
            "groups": ["admins"], "permissions": ["orders:read"],
            "properties": {"tenant": "acme"}, "client_id": "web", "exp": 1_900_000_000u64})));
        let Resolution::User(user) = user else {
            panic!("user expected: {user:?}")
        };
        assert_eq!(user.id, "alice");
        assert_eq!(user.groups, ["admins"]);
        assert_eq!(user.permissions, ["orders:read"]);
        assert_eq!(
            user.properties_header,
            r#"{"properties":{"tenant":"acme"}}"#
        );
        assert_eq!(user.expires_at, Some(1_900_000_000));

        // Client credentials: no `sub`, the client is the user.
        let client = s.interpret(&body(
            json!({"active": true, "client_id": "reporting-job", "groups": ["services"]}),
        ));
        assert!(
            matches!(&client, Resolution::User(u) if u.id == "reporting-job" && u.groups == ["services"]),
            "{client:?}"
        );

        let reason = |r: Resolution| match r {
            Resolution::Invalid(f) => format!("invalid {}", f.reason),
            Resolution::Unavailable(f) => format!("unavailable {}", f.reason),
            other => format!("{other:?}"),
        };
        for (answer, want) in [
            (&br#"{"active":false}"#[..], "invalid token_inactive"),
            (br#"{"active":true}"#, "invalid introspection_no_subject"),
            (
                br#"{"active":"true","sub":"a"}"#,
                "unavailable introspection_malformed",
            ),
            (br#"{"sub":"a"}"#, "unavailable introspection_malformed"),
            (br#"[]"#, "unavailable introspection_malformed"),
            (
                br#"{"active":true,"sub":"a","groups":7}"#,
                "unavailable introspection_malformed",
            ),
            (b"<html>", "unavailable introspection_not_json"),
            (b"", "unavailable introspection_not_json"),
        ] {
            assert_eq!(
                reason(s.interpret(answer)),
                want,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn oauth_error_codes_are_reported_only_when_plain() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_client"}"#).as_deref(),
            Some(" (invalid_client)")
        );
        assert_eq!(oauth_error(br#"{"error":"a b\n"}"#), None);
        assert_eq!(oauth_error(b"nope"), None);
    }
}
