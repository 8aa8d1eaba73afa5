//! The user-info adapter: asks the customer's authentication manager who the caller is.
//!
//! A GET to `USERINFO_URL` (or `BACKOFFICE_USERINFO_URL` for backoffice requests) carrying only
//! the `HEADERS_TO_PROXY` headers of the request. One shared HTTP client (connection pooling,
//! rustls). The call, body included, is bounded by `CHECKPOINT_USERINFO_TIMEOUT` and by the
//! Check's own deadline, whichever is sooner; the body is read in chunks and refused past
//! `max_body_bytes`, never buffered whole. Redirects are not followed.
//!
//! How answers map (docs/mia-compatibility.md): 2xx JSON object with a non-empty id is a user; 4xx, an empty body or
//! an object without an id is anonymous; 5xx, 3xx, a timeout, a refused connection, a body that
//! is not JSON or too large, or malformed fields are [`Resolution::Unavailable`].

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::http::{self, Reasons};
use super::{BoxFuture, Context, Failure, KeyHasher, Resolution, Source, User, ascii_json};
use crate::config::UserInfoSettings;
use crate::request::Request;
use crate::telemetry::traces;
use tracing::Instrument as _;

/// Proxied headers left out of the cache key: they change with every request, not with the
/// caller. A user-info endpoint whose answer depends on them cannot be cached (TTL 0).
pub const PER_REQUEST_HEADERS: &[&str] = &[
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-cloud-trace-context",
    "x-amzn-trace-id",
];

const REASONS: Reasons = Reasons {
    too_large: "userinfo_too_large",
    unreachable: "userinfo_unreachable",
};

pub struct UserInfo {
    client: reqwest::Client,
    settings: UserInfoSettings,
    properties_to_proxy: Vec<String>,
}

impl UserInfo {
    pub fn new(
        settings: UserInfoSettings,
        properties_to_proxy: Vec<String>,
    ) -> Result<UserInfo, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Security: a redirect would carry the caller's credentials to another URL.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(UserInfo {
            client,
            settings,
            properties_to_proxy,
        })
    }

    /// The headers copied onto the call: only the configured ones the request carries.
    fn proxied_headers(&self, request: &Request) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in self.proxied(request) {
            // Names were validated at start-up; a value that is not a valid header value (it
            // cannot arrive through Envoy) is left out rather than failing the Check.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// The configured headers the request carries, with their values.
    fn proxied<'r>(&'r self, request: &'r Request) -> impl Iterator<Item = (&'r str, &'r str)> {
        self.settings.headers_to_proxy.iter().filter_map(|name| {
            // Behind Envoy an HTTP/1 `Host` arrives as the `:authority` pseudo-header.
            let value = match (name.as_str(), request.header(name)) {
                (_, Some(value)) => value,
                ("host", None) => request.header(":authority")?,
                (_, None) => return None,
            };
            Some((name.as_str(), value))
        })
    }

    /// Whether `AUTHORIZATION_HEADERS_TO_PROXY` lets the call happen at all.
    fn has_credential(&self, request: &Request) -> bool {
        self.settings.authorization_headers.is_empty()
            || self
                .settings
                .authorization_headers
                .iter()
                .any(|name| request.headers.contains(name))
    }

    fn url_for(&self, context: &Context) -> &reqwest::Url {
        match (&self.settings.backoffice_url, context.is_backoffice) {
            (Some(url), true) => url,
            _ => &self.settings.url,
        }
    }

    async fn call(&self, request: &Request, context: &Context) -> Resolution {
        if !self.has_credential(request) {
            return Resolution::NoCredential;
        }
        let url = self.url_for(context);
        let budget = context.budget(self.settings.timeout);
        if budget.is_zero() {
            return Resolution::Unavailable(Failure::new(
                "deadline_exceeded",
                "no time left before the Check's deadline",
            ));
        }
        let headers = self.proxied_headers(request);
        let span = traces::client_span("userinfo", "GET", url);
        let exchange = async {
            let response = self
                .client
                .get(url.clone())
                .headers(headers)
                .headers(traces::propagation_headers(&span))
                .send()
                .await
                .map_err(|e| {
                    traces::record_error(&span, http::error_type(&e));
                    Failure::new("userinfo_unreachable", http::describe(&e))
                })?;
            let status = response.status();
            traces::record_status(&span, status.as_u16());
            if status.is_client_error() {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(Failure::new(
                    "userinfo_status",
                    format!("user-info answered {status}"),
                ));
            }
            http::read_bounded(response, self.settings.max_body_bytes, REASONS)
                .await
                .map(Some)
        };
        let answer = tokio::time::timeout(budget, exchange.instrument(span.clone())).await;
        match answer {
            Err(_) => Resolution::Unavailable({
                traces::record_error(&span, "timeout");
                Failure::new("userinfo_timeout", format!("no answer within {budget:?}"))
            }),
            Ok(Err(failure)) => Resolution::Unavailable(failure),
            Ok(Ok(None)) => Resolution::Anonymous,
            Ok(Ok(Some(body))) => self.interpret(&body),
        }
    }

    /// Turns a 2xx body into a resolution.
    pub fn interpret(&self, body: &[u8]) -> Resolution {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Resolution::Anonymous;
        }
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Resolution::Unavailable(Failure::new(
                    "userinfo_not_json",
                    format!("user-info body is not JSON: {e}"),
                ));
            }
        };
        let Value::Object(fields) = value else {
            return Resolution::Anonymous;
        };
        let id = match fields.get(&self.settings.user_id_key) {
            None | Some(Value::Null) => return Resolution::Anonymous,
            Some(Value::String(s)) if s.is_empty() => return Resolution::Anonymous,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return malformed(format!(
                    "\"{}\" is neither a string nor a number",
                    self.settings.user_id_key
                ));
            }
        };
        let groups = match strings(&fields, "groups") {
            Ok(g) => g,
            Err(e) => return malformed(e),
        };
        let permissions = match &self.settings.permissions_key {
            Some(key) => match strings(&fields, key) {
                Ok(p) => p,
                Err(e) => return malformed(e),
            },
            None => Vec::new(),
        };
        let properties: Map<String, Value> = self
            .properties_to_proxy
            .iter()
            .filter_map(|key| fields.get(key).map(|v| (key.clone(), v.clone())))
            .collect();
        match User::new(
            id,
            groups,
            permissions,
            ascii_json(&Value::Object(properties)),
        ) {
            Ok(user) => Resolution::User(Arc::new(user)),
            Err(e) => malformed(e.to_string()),
        }
    }
}

fn malformed(detail: String) -> Resolution {
    Resolution::Unavailable(Failure::new("userinfo_malformed", detail))
}

/// An array of strings at `key`; missing or null means none.
fn strings(fields: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("\"{key}\" holds a value that is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("\"{key}\" is not an array of strings")),
    }
}

impl Source for UserInfo {
    fn name(&self) -> &'static str {
        "userinfo"
    }

    /// Every proxied header (the credential headers among them), and `:authority` with `host`:
    /// behind Envoy the host arrives as that pseudo-header ([`UserInfo::proxied`]).
    fn request_headers(&self) -> Vec<String> {
        let mut names = self.settings.headers_to_proxy.clone();
        if names.iter().any(|name| name == "host") {
            names.push(":authority".to_owned());
        }
        names
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(self.call(request, context))
    }

    fn outbound(&self) -> bool {
        true
    }

    /// The answer depends on the URL asked and on every header sent to it, nothing else.
    fn cache_key(&self, request: &Request, context: &Context, key: &mut KeyHasher) -> bool {
        if !self.has_credential(request) {
            return false;
        }
        key.field(self.url_for(context).as_str().as_bytes());
        for (name, value) in self.proxied(request) {
            // Per-request ids and trace context do not identify the caller: keyed on them, every
            // request behind Envoy (which sets a fresh x-request-id) would miss.
            if PER_REQUEST_HEADERS.contains(&name) || name.starts_with("x-b3-") {
                continue;
            }
            key.field(name.as_bytes());
            key.field(value.as_bytes());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn adapter(permissions_key: Option<&str>, properties: &[&str]) -> UserInfo {
        UserInfo::new(
            UserInfoSettings {
                url: reqwest::Url::parse("http://127.0.0.1:9/").expect("url"),
                backoffice_url: None,
                headers_to_proxy: vec!["authorization".into()],
                authorization_headers: vec![],
                timeout: Duration::from_secs(1),
                user_id_key: "sub".into(),
                permissions_key: permissions_key.map(str::to_owned),
                max_body_bytes: 1024,
            },
            properties.iter().map(|p| (*p).to_owned()).collect(),
        )
        .expect("client")
    }

    #[test]
    fn answers_map_as_documented() {
        let a = adapter(Some("perms"), &["email", "missing"]);
        let user = a.interpret(
            br#"{"sub":"alice","groups":["admin"],"perms":["p.1"],"email":"a@x","other":1}"#,
        );
        let Resolution::User(user) = user else {
            panic!("user expected: {user:?}")
        };
        assert_eq!(user.id, "alice");
        assert_eq!(user.groups, ["admin"]);
        assert_eq!(user.permissions, ["p.1"]);
        assert_eq!(user.properties_header, r#"{"email":"a@x"}"#);

        for anonymous in [
            &b""[..],
            b"  \n",
            b"{}",
            br#"{"sub":""}"#,
            br#"{"sub":null}"#,
            b"[]",
            b"null",
        ] {
            assert_eq!(
                a.interpret(anonymous),
                Resolution::Anonymous,
                "{anonymous:?}"
            );
        }
        let numeric = a.interpret(br#"{"sub":42}"#);
        assert!(matches!(numeric, Resolution::User(u) if u.id == "42"));
        for unavailable in [
            &b"<html>"[..],
            br#"{"sub":"a","groups":"admin"}"#,
            br#"{"sub":"a","groups":[1]}"#,
            br#"{"sub":"a","perms":{"x":1}}"#,
            br#"{"sub":true}"#,
            br#"{"sub":"a\nb"}"#,
        ] {
            assert!(
                matches!(a.interpret(unavailable), Resolution::Unavailable(_)),
                "{}",
                String::from_utf8_lossy(unavailable)
            );
        }
    }
}
