//! The `jwt` source: local validation of JWT access or ID tokens against the issuer's keys, with
//! no call to the issuer per request.
//!
//! Called by the [`Resolver`](super::Resolver) like every [`Source`]. The keys come from
//! [`jwks`](super::jwks) (OIDC discovery or a configured `jwks_uri`, refreshed on a timer and on
//! an unknown `kid`). A token is checked by [`verify`], a pure function of the token, the keys,
//! the [`Policy`] and `now`: algorithm allow-list, key choice by `kid`, the key's own algorithm,
//! signature, `iss`, `aud`, `exp` (required), `nbf`, and optionally the `typ` header. The claims of
//! a valid token become a user through [`claims::user_from_claims`](super::claims).
//!
//! How answers map: no token, or a token that is not a JWT (an opaque token for introspection),
//! passes on ([`Resolution::NoCredential`]); a JWT that fails any check is
//! [`Resolution::Invalid`] (`jwt_invalid`); keys not loaded yet, or an unknown `kid` while the
//! key set cannot be fetched, is [`Resolution::Unavailable`] (`jwks_unavailable`); with
//! `max_key_staleness` set, a token checked while key fetches have kept failing for longer than
//! that is [`Resolution::Unavailable`] too ([`JWKS_STALE`]), never verified with the old keys.
//!
//! What it must never do: log or echo a token (reasons name the check, never the token); accept
//! `none` or an HMAC algorithm, whatever the configuration says; read the clock inside
//! verification.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use super::jwks::{KeySet, KeySource, Keys, Refetch};
use super::{BoxFuture, Context, Failure, KeyHasher, Resolution, Source, claims};
use crate::config::sources::{ClaimMapping, JwtSource, TokenLocation};
use crate::request::Request;

/// Security: a token longer than this is refused before any decoding (Envoy's own header limit
/// is about 60 KiB).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// The failure reason of a token refused because the keys could not be refreshed for longer
/// than `max_key_staleness`. The identity cache never serves a stale user for it.
pub const JWKS_STALE: &str = "jwks_stale";

/// Attacker-chosen header and claim values are cut to this many characters in reasons.
const MAX_ECHO_CHARS: usize = 64;

/// What a token is checked against, from [`JwtSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub issuer: String,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Asymmetric algorithms only ([`Policy::from_settings`] refuses the others).
    pub algorithms: Vec<Algorithm>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    /// The required `typ` header, if any.
    pub typ: Option<String>,
}

impl Policy {
    /// The policy the settings describe, or every problem with the field it is in.
    pub fn from_settings(settings: &JwtSource) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = http_url(&settings.issuer) {
            problems.push(format!("issuer: {e}"));
        }
        if settings.audiences.iter().any(String::is_empty) {
            problems.push("audiences: an audience is empty".to_owned());
        }
        if settings.algorithms.is_empty() {
            problems.push("algorithms: the list is empty".to_owned());
        }
        let mut algorithms = Vec::new();
        for name in &settings.algorithms {
            match allowed_algorithm(name) {
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(e) => problems.push(format!("algorithms: {e}")),
            }
        }
        if settings.typ.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push("typ: empty".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            issuer: settings.issuer.clone(),
            audiences: settings.audiences.clone(),
            algorithms,
            leeway: settings.leeway.0.as_secs(),
            typ: settings.typ.clone(),
        })
    }
}

/// A configured algorithm name, if it may be configured at all.
fn allowed_algorithm(name: &str) -> Result<Algorithm, String> {
    if let Some(refused) = never_accepted(name) {
        return Err(refused);
    }
    match name.parse::<Algorithm>() {
        Ok(alg) if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac => Ok(alg),
        _ => Err(format!(
            "unknown algorithm \"{name}\" (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, \
             ES384 or EdDSA)"
        )),
    }
}

/// Why `alg` is refused whatever the configuration says, if it is.
fn never_accepted(alg: &str) -> Option<String> {
    // Security: `none` means no signature, and an HMAC over a public key (the key set is public)
    // is a signature anyone can make.
    if alg.eq_ignore_ascii_case("none") {
        return Some("\"none\" (unsigned tokens) is never accepted".to_owned());
    }
    // Bytes, not a string slice: `alg` is the caller's, and its second byte may fall inside a
    // character (found by cargo-fuzz; `tests/cases/jwt-tokens.json` keeps it).
    if alg
        .as_bytes()
        .get(..2)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"hs"))
    {
        return Some(format!(
            "\"{}\" (HMAC) is never accepted: only asymmetric algorithms",
            echo(alg)
        ));
    }
    None
}

fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("\"{text}\" is not an http or https URL"));
    }
    Ok(url)
}

/// Why a token was refused. Never holds the token; attacker-chosen values are cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("algorithm {0}")]
    ForbiddenAlgorithm(String),
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("critical header parameters are not supported")]
    CriticalHeader,
    #[error("type {found:?} is not {expected:?}")]
    WrongType {
        found: Option<String>,
        expected: String,
    },
    #[error("no signing key with id {0:?}")]
    UnknownKey(String),
    #[error("no signing key for {0:?} (the token names no key id)")]
    NoKeyForAlgorithm(String),
    #[error("key {kid:?} is not a key for {alg:?}")]
    KeyMismatch { kid: String, alg: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("issuer {0:?} is not the configured issuer")]
    WrongIssuer(String),
    #[error("audience is not one of the configured audiences")]
    WrongAudience,
    #[error("no \"exp\" claim")]
    MissingExpiry,
    #[error("claim \"{0}\" is not a number")]
    MalformedTime(&'static str),
    #[error("expired at {0}")]
    Expired(u64),
    #[error("not valid before {0}")]
    NotYetValid(u64),
}

impl Rejection {
    /// Whether fetching the keys again could change the answer.
    fn is_unknown_key(&self) -> bool {
        matches!(
            self,
            Rejection::UnknownKey(_) | Rejection::NoKeyForAlgorithm(_)
        )
    }
}

/// An attacker-chosen value as it may appear in a reason.
fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHO_CHARS).collect()
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// The three parts of a compact JWS, if `token` has that shape: base64url header and payload,
/// a base64url (possibly empty) signature.
///
/// One pass over the bytes with a table: it runs on every Check that carries a token.
fn parts(token: &str) -> Option<(&str, &str, &str)> {
    let bytes = token.as_bytes();
    let mut dots = [0usize; 2];
    let mut n_dots = 0;
    for (i, b) in bytes.iter().enumerate() {
        if BASE64URL[usize::from(*b)] {
            continue;
        }
        if *b != b'.' || n_dots == 2 {
            return None;
        }
        dots[n_dots] = i;
        n_dots += 1;
    }
    if n_dots != 2 {
        return None;
    }
    let header = token.get(..dots[0])?;
    let payload = token.get(dots[0] + 1..dots[1])?;
    let signature = token.get(dots[1] + 1..)?;
    (!header.is_empty() && !payload.is_empty()).then_some((header, payload, signature))
}

/// The bytes of the base64url alphabet.
const BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// Whether `token` is a JWT at all: three base64url parts and a header that is a JSON object.
/// Anything else is somebody else's token (an opaque one for introspection).
///
/// Asked on every Check, cache hits included (it decides the cache key), so it allocates
/// nothing for an ordinary header: decoded on the stack, checked as JSON without building it.
pub fn is_jwt(token: &str) -> bool {
    let Some((header, _, _)) = parts(token) else {
        return false;
    };
    if token.len() > MAX_TOKEN_BYTES {
        // Shaped like a JWT but too large to decode: ours to refuse.
        return true;
    }
    let mut buffer = [0u8; 1024];
    match URL_SAFE_NO_PAD.decode_slice(header, &mut buffer) {
        Ok(len) => is_json_object(buffer.get(..len).unwrap_or_default()),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => URL_SAFE_NO_PAD
            .decode(header)
            .is_ok_and(|bytes| is_json_object(&bytes)),
        Err(base64::DecodeSliceError::DecodeError(_)) => false,
    }
}

/// Whether `bytes` are one JSON object (and nothing else), without building it.
fn is_json_object(bytes: &[u8]) -> bool {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    first == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Checks `token` against `keys` and `policy` at `now` (seconds since the epoch) and returns its
/// claims. Order: shape, algorithm, header, key, signature, then the claims (which are not read
/// before the signature verifies).
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    now: u64,
) -> Result<Map<String, Value>, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::TooLarge);
    }
    let (header_b64, payload_b64, signature_b64) =
        parts(token).ok_or(Rejection::Malformed("not three base64url parts"))?;
    let header: Header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Rejection::Malformed("header"))?;

    if let Some(refused) = never_accepted(&header.alg) {
        return Err(Rejection::ForbiddenAlgorithm(refused));
    }
    let alg = header
        .alg
        .parse::<Algorithm>()
        .ok()
        .filter(|alg| policy.algorithms.contains(alg))
        .ok_or_else(|| Rejection::AlgorithmNotAllowed(echo(&header.alg)))?;
    // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
    if header.crit.is_some() {
        return Err(Rejection::CriticalHeader);
    }
    if let Some(expected) = &policy.typ {
        let matches = header
            .typ
            .as_deref()
            .is_some_and(|found| media_type(found) == media_type(expected));
        if !matches {
            return Err(Rejection::WrongType {
                found: header.typ.as_deref().map(echo),
                expected: expected.clone(),
            });
        }
    }

    let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let verifies = |key: &super::jwks::Key| {
        jsonwebtoken::crypto::verify(signature_b64, message, &key.decoding, alg).unwrap_or(false)
    };
    match header.kid.as_deref() {
        Some(kid) => {
            let key = keys
                .by_kid(kid)
                .ok_or_else(|| Rejection::UnknownKey(echo(kid)))?;
            // Security: the key's own algorithm decides, not the token's header.
            if !key.algorithms.contains(&alg) {
                return Err(Rejection::KeyMismatch {
                    kid: echo(kid),
                    alg: header.alg.clone(),
                });
            }
            if !verifies(key) {
                return Err(Rejection::BadSignature);
            }
        }
        None => {
            let mut candidates = keys.for_algorithm(alg).peekable();
            if candidates.peek().is_none() {
                return Err(Rejection::NoKeyForAlgorithm(header.alg.clone()));
            }
            if !candidates.any(verifies) {
                return Err(Rejection::BadSignature);
            }
        }
    }

    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Rejection::Malformed("payload is not a JSON object"))?;
    check_claims(&claims, policy, now)?;
    Ok(claims)
}

/// `iss`, `aud`, `exp` and `nbf` of verified claims.
fn check_claims(claims: &Map<String, Value>, policy: &Policy, now: u64) -> Result<(), Rejection> {
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == policy.issuer => {}
        Some(Value::String(iss)) => return Err(Rejection::WrongIssuer(echo(iss))),
        Some(_) | None => return Err(Rejection::WrongIssuer(String::new())),
    }
    if !policy.audiences.is_empty() {
        let named = |aud: &str| policy.audiences.iter().any(|a| a == aud);
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => named(aud),
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(named),
            _ => false,
        };
        if !ok {
            return Err(Rejection::WrongAudience);
        }
    }
    let leeway = policy.leeway as f64;
    let now = now as f64;
    let exp = match claims.get("exp") {
        None | Some(Value::Null) => return Err(Rejection::MissingExpiry),
        Some(value) => value.as_f64().ok_or(Rejection::MalformedTime("exp"))?,
    };
    // Valid while now < exp (RFC 7519 §4.1.4), give or take the leeway.
    if now >= exp + leeway {
        return Err(Rejection::Expired(exp.max(0.0) as u64));
    }
    if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
        let nbf = nbf.as_f64().ok_or(Rejection::MalformedTime("nbf"))?;
        if now + leeway < nbf {
            return Err(Rejection::NotYetValid(nbf.max(0.0) as u64));
        }
    }
    Ok(())
}

/// A `typ` value compared as RFC 7515 §4.1.9 says: case-insensitively, `application/` optional.
fn media_type(typ: &str) -> String {
    let typ = typ.trim().to_ascii_lowercase();
    match typ.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => typ,
    }
}

/// The `jwt` identity source.
pub struct Jwt {
    policy: Policy,
    token: TokenLocation,
    mapping: ClaimMapping,
    keys: Arc<Keys>,
    /// Bound of a key fetch a request waits for.
    timeout: Duration,
    refresher: JoinHandle<()>,
}

/// The least `min_refresh_interval` accepted: ten fetches a second at most. Below one second
/// `check-config` warns (`config::warnings`).
const MIN_REFRESH_FLOOR: Duration = Duration::from_millis(100);

/// The policy and key set URL the settings describe, or every problem.
fn checked(settings: &JwtSource) -> Result<(Policy, Option<reqwest::Url>), Vec<String>> {
    let policy = Policy::from_settings(settings);
    let mut problems = policy.as_ref().err().cloned().unwrap_or_default();
    let jwks_uri = match settings.jwks_uri.as_deref().map(http_url).transpose() {
        Ok(url) => url,
        Err(e) => {
            problems.push(format!("jwks_uri: {e}"));
            None
        }
    };
    for (field, span) in [
        ("refresh_interval", settings.refresh_interval),
        ("timeout", settings.timeout),
    ] {
        if span.0.is_zero() {
            problems.push(format!("{field}: must be more than zero"));
        }
    }
    // Security: the interval is the only bound on key fetches that tokens with unknown key
    // ids cause; without it every forged `kid` would be a call to the identity provider.
    if settings.min_refresh_interval.0 < MIN_REFRESH_FLOOR {
        problems.push(format!(
            "min_refresh_interval: must be at least {}ms: it is the least time between two key \
             fetches caused by tokens with an unknown key id, the bound on what forged tokens can \
             make checkpoint ask of the identity provider",
            MIN_REFRESH_FLOOR.as_millis()
        ));
    }
    match policy {
        Ok(policy) if problems.is_empty() => Ok((policy, jwks_uri)),
        _ => Err(problems),
    }
}

impl Jwt {
    /// Checks the settings (every problem, each naming its field, joined with `; `) and starts
    /// fetching the keys in a background task: call inside a tokio runtime. [`Source::ready`] is
    /// false until the first fetch succeeds.
    pub fn new(settings: &JwtSource, client: reqwest::Client) -> Result<Jwt, Vec<String>> {
        let (policy, jwks_uri) = checked(settings)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            vec!["the jwt source must be created inside a tokio runtime".to_owned()]
        })?;
        let keys = Arc::new(Keys::new(
            KeySource {
                issuer: settings.issuer.clone(),
                jwks_uri,
                timeout: settings.timeout.0,
                refresh_interval: settings.refresh_interval.0,
                min_refresh_interval: settings.min_refresh_interval.0,
                max_staleness: settings.max_key_staleness.0,
            },
            client,
        ));
        let refresher = runtime.spawn(super::jwks::refresh_loop(Arc::downgrade(&keys)));
        Ok(Jwt {
            policy,
            token: settings.token.clone(),
            mapping: settings.claims.clone(),
            keys,
            timeout: settings.timeout.0,
            refresher,
        })
    }

    /// The issuer's current keys (for diagnostics and tests).
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    async fn call(&self, request: &Request, context: &Context) -> Resolution {
        let Some(token) = claims::token(request, &self.token) else {
            return Resolution::NoCredential;
        };
        if !is_jwt(token) {
            return Resolution::NoCredential;
        }
        let Some((keys, generation)) = self.keys.snapshot() else {
            return unavailable("the issuer's signing keys are not loaded yet".to_owned());
        };
        let checked_at = tokio::time::Instant::now();
        if self.keys.stale_at(checked_at) {
            self.keys.report_stale(checked_at);
            return Resolution::Unavailable(Failure::new(
                JWKS_STALE,
                "the signing keys could not be refreshed for longer than max_key_staleness",
            ));
        }
        let now = unix_now();
        let verified = match verify(token, &keys, &self.policy, now) {
            Err(rejection) if rejection.is_unknown_key() => {
                let budget = context.budget(self.timeout);
                let refetch = self.keys.refetch_for_unknown_key(generation);
                match tokio::time::timeout(budget, refetch).await {
                    Err(_) => {
                        return unavailable(format!(
                            "{rejection}, and the key set was not refetched within {budget:?}"
                        ));
                    }
                    Ok(Refetch::Failed) => {
                        return unavailable(format!(
                            "{rejection}, and the key set cannot be fetched"
                        ));
                    }
                    Ok(Refetch::RateLimited) => Err(rejection),
                    Ok(Refetch::Newer) => match self.keys.snapshot() {
                        Some((keys, _)) => verify(token, &keys, &self.policy, now),
                        None => Err(rejection),
                    },
                }
            }
            other => other,
        };
        match verified {
            Err(rejection) => invalid(rejection.to_string()),
            Ok(claims) => match claims::user_from_claims(&claims, &self.mapping) {
                Ok(Some(user)) => Resolution::User(Arc::new(user)),
                Ok(None) => invalid(format!("no user id at \"{}\"", self.mapping.user_id)),
                Err(e) => invalid(format!("claims: {e}")),
            },
        }
    }
}

impl Drop for Jwt {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

fn invalid(detail: String) -> Resolution {
    Resolution::Invalid(Failure::new("jwt_invalid", detail))
}

fn unavailable(detail: String) -> Resolution {
    Resolution::Unavailable(Failure::new("jwks_unavailable", detail))
}

/// The boundary where verification gets its `now`.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Source for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(self.call(request, context))
    }

    /// The answer depends on the token and on which issuer checks it; a verified token is then
    /// answered from the cache (never past its `exp`) without a signature check.
    fn cache_key(&self, request: &Request, _context: &Context, key: &mut KeyHasher) -> bool {
        let Some(token) = claims::token(request, &self.token) else {
            return false;
        };
        if !is_jwt(token) {
            return false;
        }
        key.field(self.policy.issuer.as_bytes());
        key.field(token.as_bytes());
        true
    }

    fn ready(&self) -> bool {
        self.keys.loaded()
    }

    fn key_set(&self) -> Option<&Keys> {
        Some(&self.keys)
    }

    fn request_headers(&self) -> Vec<String> {
        vec![super::token_header(&self.token)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sources::Span;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const ISSUER: &str = "https://idp.test";

    fn test_keys() -> Value {
        serde_json::from_str(include_str!("../../tests/cases/jwt-keys.json")).expect("keys")
    }

    /// The public keys as an issuer would publish them: kids `rsa`, `ec`, `ec384`, `ed`.
    fn key_set(keys: &Value) -> KeySet {
        let published: Vec<Value> = ["rsa", "ec", "ec384", "ed"]
            .iter()
            .map(|name| {
                let mut jwk = keys[name]["public"].clone();
                jwk["kid"] = json!(name);
                jwk
            })
            .collect();
        KeySet::parse(json!({ "keys": published }).to_string().as_bytes()).expect("key set")
    }

    fn settings() -> JwtSource {
        serde_json::from_value(json!({
            "issuer": ISSUER,
            "audiences": ["api"],
            "algorithms": ["RS256", "ES256", "ES384", "EdDSA", "PS256"],
        }))
        .expect("settings")
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn der(keys: &Value, name: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(keys[name]["private_der"].as_str().expect("der"))
            .expect("base64")
    }

    /// Builds a token by hand, so that any header (even `alg: none`) can be made.
    fn sign(keys: &Value, header: &Value, claims: &Value, with: &str) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match with {
            "none" => String::new(),
            "hs256-public-pem" => {
                let pem = keys["rsa_public_pem"].as_str().expect("pem");
                jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(pem.as_bytes()),
                    Algorithm::HS256,
                )
                .expect("hmac")
            }
            "hs256-public-jwk" => {
                let jwk = keys["rsa"]["public"].to_string();
                jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(jwk.as_bytes()),
                    Algorithm::HS256,
                )
                .expect("hmac")
            }
            name => {
                let (key, alg) = match name {
                    "rsa" => (
                        EncodingKey::from_rsa_der(&der(keys, "rsa")),
                        Algorithm::RS256,
                    ),
                    "rsa-ps256" => (
                        EncodingKey::from_rsa_der(&der(keys, "rsa")),
                        Algorithm::PS256,
                    ),
                    "rsa-rs384" => (
                        EncodingKey::from_rsa_der(&der(keys, "rsa")),
                        Algorithm::RS384,
                    ),
                    "ec" => (EncodingKey::from_ec_der(&der(keys, "ec")), Algorithm::ES256),
                    "ec384" => (
                        EncodingKey::from_ec_der(&der(keys, "ec384")),
                        Algorithm::ES384,
                    ),
                    "ed" => (EncodingKey::from_ed_der(&der(keys, "ed")), Algorithm::EdDSA),
                    other => panic!("unknown signer {other}"),
                };
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("sign")
            }
        };
        format!("{message}.{signature}")
    }

    /// Merges `patch` into `base`; a `null` in the patch removes the key.
    fn merged(base: Value, patch: &Value) -> Value {
        let Value::Object(mut base) = base else {
            unreachable!("an object")
        };
        for (k, v) in patch.as_object().into_iter().flatten() {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
        Value::Object(base)
    }

    /// One line of `tests/cases/jwt-tokens.json`: a token built from the default header and
    /// claims with the case's changes, checked at `now` with the case's settings.
    fn check_case(case: &Value, keys: &Value, set: &KeySet) {
        let name = case["name"].as_str().expect("name");
        let signer = case["sign"].as_str().unwrap_or("rsa");
        let default_alg = match signer {
            "ec" => "ES256",
            "ec384" => "ES384",
            "ed" => "EdDSA",
            "rsa-ps256" => "PS256",
            "rsa-rs384" => "RS384",
            _ => "RS256",
        };
        let default_kid = match signer {
            "ec" | "ec384" | "ed" => signer,
            _ => "rsa",
        };
        let header = merged(
            json!({"alg": default_alg, "kid": default_kid, "typ": "at+jwt"}),
            &case["header"],
        );
        let claims = merged(
            json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": NOW + 300,
                   "iat": NOW - 10, "groups": ["admins"], "scope": "read write"}),
            &case["claims"],
        );
        let mut token = sign(keys, &header, &claims, signer);
        if let Some(tamper) = case["tamper"].as_object() {
            // Swap the payload for another one, keeping the header and signature.
            let other = merged(claims.clone(), &Value::Object(tamper.clone()));
            let parts: Vec<&str> = token.split('.').collect();
            token = format!(
                "{}.{}.{}",
                parts[0],
                b64(other.to_string().as_bytes()),
                parts[2]
            );
        }
        let settings: JwtSource = serde_json::from_value(merged(
            json!({
                "issuer": ISSUER, "audiences": ["api"],
                "algorithms": ["RS256", "ES256", "ES384", "EdDSA", "PS256"],
            }),
            &case["settings"],
        ))
        .expect("settings");
        let policy = Policy::from_settings(&settings).expect("policy");
        let now = case["now"].as_u64().unwrap_or(NOW);
        let result = verify(&token, set, &policy, now);
        match case["expect"].as_str().expect("expect") {
            "valid" => {
                let claims = result.unwrap_or_else(|e| panic!("{name}: refused: {e}"));
                assert_eq!(claims["sub"], "alice", "{name}");
            }
            reason => {
                let rejection = result
                    .err()
                    .unwrap_or_else(|| panic!("{name}: accepted, expected {reason:?}"));
                let text = rejection.to_string();
                assert!(
                    text.contains(reason),
                    "{name}: refused with {text:?}, expected {reason:?}"
                );
                assert!(
                    !text.contains(&token),
                    "{name}: the reason echoes the token"
                );
            }
        }
    }

    #[test]
    fn token_cases() {
        let keys = test_keys();
        let set = key_set(&keys);
        let cases: Vec<Value> =
            serde_json::from_str(include_str!("../../tests/cases/jwt-tokens.json"))
                .expect("jwt-tokens.json");
        assert!(cases.len() > 20);
        for case in &cases {
            check_case(case, &keys, &set);
        }
    }

    #[test]
    fn settings_problems_name_their_field() {
        let mut bad = settings();
        bad.issuer = "not a url".into();
        bad.algorithms = vec![
            "HS256".into(),
            "none".into(),
            "RS999".into(),
            "RS256".into(),
        ];
        bad.audiences = vec![String::new()];
        bad.jwks_uri = Some("ftp://x".into());
        bad.timeout = Span(Duration::ZERO);
        bad.min_refresh_interval = Span(Duration::ZERO);
        let error = Jwt::new(&bad, reqwest::Client::new())
            .err()
            .expect("refused")
            .join("; ");
        for expected in [
            "issuer: \"not a url\"",
            "algorithms: \"HS256\" (HMAC) is never accepted",
            "algorithms: \"none\"",
            "algorithms: unknown algorithm \"RS999\"",
            "audiences: an audience is empty",
            "jwks_uri: \"ftp://x\" is not an http or https URL",
            "timeout: must be more than zero",
            "min_refresh_interval: must be at least 100ms",
        ] {
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        let problems = |s: &JwtSource| checked(s).err().unwrap_or_default();
        assert_eq!(problems(&bad).len(), 8, "{:?}", problems(&bad));
        assert_eq!(problems(&settings()), Vec::<String>::new());
        // The floor itself is accepted.
        let mut floor = settings();
        floor.min_refresh_interval = Span(Duration::from_millis(100));
        assert_eq!(problems(&floor), Vec::<String>::new());
        let mut hs = settings();
        hs.algorithms = vec!["RS256".into(), "hs512".into()];
        assert!(Policy::from_settings(&hs).is_err());
        assert_eq!(
            Policy::from_settings(&settings()).map(|p| p.algorithms.len()),
            Ok(5)
        );
    }

    #[test]
    fn construction_needs_a_runtime() {
        let error = Jwt::new(&settings(), reqwest::Client::new())
            .err()
            .expect("no runtime")
            .join("; ");
        assert!(error.contains("tokio runtime"), "{error}");
    }

    #[test]
    fn the_compact_shape_is_three_base64url_parts() {
        assert_eq!(parts("a.b.c"), Some(("a", "b", "c")));
        assert_eq!(parts("aZ09-_.b."), Some(("aZ09-_", "b", "")));
        for token in [
            "", ".", "..", "a.b", ".b.c", "a..c", "a.b.c.d", "a.b.c.", "a b.c.d", "a.b=.c",
            "a.b.c+", "a/.b.c", "é.b.c",
        ] {
            assert_eq!(parts(token), None, "{token:?}");
        }
    }

    #[test]
    fn only_jwts_are_ours() {
        for token in [
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
            // `alg: none` has an empty signature and is still a JWT (to refuse).
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
            // Whitespace around the header object is still JSON.
            "IHsiYWxnIjoiUlMyNTYifSA.eyJzdWIiOiJhIn0.c2ln",
        ] {
            assert!(is_jwt(token), "{token}");
        }
        // A header larger than the stack buffer is decoded on the heap, same answer.
        let long = format!("{{\"alg\":\"RS256\",\"x\":\"{}\"}}", "a".repeat(2000));
        let token = format!("{}.eyJzdWIiOiJhIn0.c2ln", URL_SAFE_NO_PAD.encode(long));
        assert!(is_jwt(&token));
        let long = format!("[\"{}\"]", "a".repeat(2000));
        let token = format!("{}.eyJzdWIiOiJhIn0.c2ln", URL_SAFE_NO_PAD.encode(long));
        assert!(!is_jwt(&token));
        for token in [
            "opaque-token",
            "a.b",
            "abc.def.ghi",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln.more",
            "eyJhbGciOiJSUzI1NiJ9..c2ln",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0=.c2ln",
            "WyJhIl0.eyJzdWIiOiJhIn0.c2ln", // header `["a"]`: JSON but not an object
            "eyJhIjoxfX0.eyJzdWIiOiJhIn0.c2ln", // header `{"a":1}}`: an object, then more
            "eyJhIjox.eyJzdWIiOiJhIn0.c2ln", // header `{"a":1`: cut short
        ] {
            assert!(!is_jwt(token), "{token}");
        }
    }

    #[test]
    fn typ_compares_as_a_media_type() {
        assert_eq!(media_type("application/AT+JWT"), "at+jwt");
        assert_eq!(media_type("at+jwt"), media_type("Application/at+jwt"));
        assert_ne!(media_type("jwt"), media_type("at+jwt"));
    }

    use crate::request::with_authorization as request;

    #[tokio::test]
    async fn before_the_first_key_fetch_nothing_is_decided() {
        let mut unreachable = settings();
        // Port 9 (discard) on loopback: nothing answers.
        unreachable.jwks_uri = Some("http://127.0.0.1:9/jwks".into());
        let source = Jwt::new(&unreachable, reqwest::Client::new()).expect("source");
        assert!(!source.ready());
        let context = Context {
            deadline: None,
            is_backoffice: false,
        };
        let keys = test_keys();
        let token = sign(
            &keys,
            &json!({"alg": "RS256", "kid": "rsa"}),
            &json!({"iss": ISSUER, "sub": "a", "aud": "api", "exp": unix_now() + 60}),
            "rsa",
        );
        let resolution = source
            .resolve(&request(&format!("Bearer {token}")), &context)
            .await;
        assert!(
            matches!(&resolution, Resolution::Unavailable(f) if f.reason == "jwks_unavailable"),
            "{resolution:?}"
        );
        // Not ours: passed on, and never cached.
        for other in ["", "Bearer opaque", "Basic YTpi"] {
            let request = request(other);
            assert_eq!(
                source.resolve(&request, &context).await,
                Resolution::NoCredential
            );
            let cache = crate::identity::IdentityCache::new(crate::identity::CacheSettings {
                ttl: Duration::from_secs(1),
                negative_ttl: Duration::from_secs(1),
                max_entries: 10,
                stale_if_error: Duration::ZERO,
            })
            .expect("cache");
            assert!(!source.cache_key(&request, &context, &mut cache.key_hasher()));
        }
    }
}
