//! The issuer's signing keys for the `jwt` source: found through OIDC discovery (or a configured
//! `jwks_uri`), fetched, kept, and refreshed.
//!
//! Called by [`jwt`](super::jwt) only. The live [`KeySet`] is an `Arc` behind a `RwLock`: a
//! verification clones the `Arc` (no lock held during the signature check) and a successful fetch
//! swaps in a whole new set. What it must never do:
//! - drop the keys it has because a fetch failed (the old set stays until a fetch succeeds; with
//!   `max_key_staleness` set, the `jwt` source stops trusting it once fetches have kept failing
//!   for longer than that: [`Keys::stale_at`]);
//! - fetch once per request: fetches happen on a timer and, for an unknown `kid`, at most once per
//!   `min_refresh_interval`, with concurrent misses sharing one fetch;
//! - keep a symmetric (`oct`) key or an encryption key: only asymmetric signature keys are loaded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Security: discovery documents and key sets are read up to this size, never buffered whole.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// The first retry after a failed fetch; doubled up to `min_refresh_interval`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms this key may verify: the JWK's own `alg` when it names one, otherwise every
    /// algorithm that fits its type (and curve).
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The keys of one fetch.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`), keeping the keys that can verify a signature
    /// with an asymmetric algorithm and skipping the others (encryption keys, `oct` keys, curves
    /// without a supported algorithm). A document with no usable key is an error, so that a
    /// broken answer never replaces working keys.
    pub fn parse(document: &[u8]) -> Result<KeySet, String> {
        let value: Value =
            serde_json::from_slice(document).map_err(|e| format!("key set is not JSON: {e}"))?;
        let Some(Value::Array(entries)) = value.get("keys") else {
            return Err("key set has no \"keys\" array".into());
        };
        let keys: Vec<Key> = entries
            .iter()
            .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
            .filter_map(|jwk| usable(&jwk))
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "key set holds no usable signature key ({} entries)",
                entries.len()
            ));
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect()
    }

    /// The key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may verify `alg`, for a token without a `kid`.
    pub fn for_algorithm(&self, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg))
    }
}

/// The key as we keep it, or `None` if it cannot verify signatures with an algorithm we support.
fn usable(jwk: &Jwk) -> Option<Key> {
    let common = &jwk.common;
    if let Some(usage) = &common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return None;
    }
    if let Some(ops) = &common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return None;
    }
    // What the key material allows.
    let fitting: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        // Security: a symmetric key in a key set is never used. Verifying with it would let
        // anyone who can read the (public) key set sign tokens.
        _ => return None,
    };
    // Security: when the key names its algorithm, that is the only one it verifies. This is what
    // defeats algorithm confusion: a token cannot pick how a key is used.
    let algorithms = match common.key_algorithm {
        None => fitting.to_vec(),
        Some(declared) => {
            let declared = key_algorithm(declared)?;
            if !fitting.contains(&declared) {
                return None;
            }
            vec![declared]
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: common.key_id.clone(),
        algorithms,
        decoding,
    })
}

/// A JWK `alg` as a signature algorithm; encryption and HMAC algorithms are not.
fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Where the keys come from and how fetches are bounded.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The configured issuer; discovery must report exactly this one.
    pub issuer: String,
    /// The configured key set URL; `None` means OIDC discovery.
    pub jwks_uri: Option<reqwest::Url>,
    /// Bound of one fetch (discovery and key set together).
    pub timeout: Duration,
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    /// How long fetches may keep failing before the keys last fetched are no longer trusted;
    /// zero: trusted for as long as fetches fail.
    pub max_staleness: Duration,
}

impl KeySource {
    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> Result<reqwest::Url, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        reqwest::Url::parse(&url).map_err(|e| format!("discovery URL {url:?}: {e}"))
    }
}

/// What a fetch prompted by an unknown key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// A newer key set is in place (fetched now, or by another request meanwhile).
    Newer,
    /// The keys were fetched successfully too recently to fetch again.
    RateLimited,
    /// The key set could not be fetched.
    Failed,
}

#[derive(Debug, Default)]
struct FetchState {
    /// When the last fetch started.
    last_attempt: Option<Instant>,
    last_failed: bool,
    /// The key set URL found by discovery; forgotten when fetching it fails, so that the next
    /// fetch discovers it again.
    discovered: Option<reqwest::Url>,
}

/// The live keys of one issuer.
pub struct Keys {
    current: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    /// Bumped by every successful fetch.
    generation: AtomicU64,
    /// Held for the whole of a fetch: concurrent fetches queue behind it and then find the keys
    /// already new.
    state: Arc<Mutex<FetchState>>,
    source: KeySource,
    client: reqwest::Client,
    /// Fetches since start that succeeded and that failed (timer and unknown-key fetches
    /// alike), for the `checkpoint_jwks_refreshes_total` metric.
    fetched: AtomicU64,
    failed: AtomicU64,
    /// When the first fetch that failed since the last success started; `None` after a success.
    failing_since: std::sync::Mutex<Option<Instant>>,
    /// Whether the refusal of stale keys was logged since the last success (logged once).
    stale_reported: AtomicBool,
}

/// Whether keys whose fetches have failed since `failing_since` are too stale to trust at
/// `now`, under `max_staleness` (zero: never).
pub fn too_stale(failing_since: Option<Instant>, now: Instant, max_staleness: Duration) -> bool {
    !max_staleness.is_zero()
        && failing_since.is_some_and(|since| now.saturating_duration_since(since) > max_staleness)
}

impl Keys {
    pub fn new(source: KeySource, client: reqwest::Client) -> Keys {
        Keys {
            current: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            state: Arc::new(Mutex::new(FetchState::default())),
            source,
            client,
            fetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failing_since: std::sync::Mutex::new(None),
            stale_reported: AtomicBool::new(false),
        }
    }

    /// When the fetches started failing (the first failure since the last success), if they are.
    pub fn failing_since(&self) -> Option<Instant> {
        *self
            .failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the keys may no longer be trusted at `now`: fetches have kept failing for longer
    /// than `max_staleness`. Always false when it is zero.
    pub fn stale_at(&self, now: Instant) -> bool {
        !self.source.max_staleness.is_zero()
            && too_stale(self.failing_since(), now, self.source.max_staleness)
    }

    /// Logs, once until the next successful fetch, that tokens are refused for stale keys.
    pub fn report_stale(&self, now: Instant) {
        if !self.stale_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                issuer = %self.source.issuer,
                failing_for = ?self.failing_since().map(|since| now.saturating_duration_since(since)),
                max_key_staleness = ?self.source.max_staleness,
                "jwt signing keys could not be refreshed for longer than max_key_staleness: \
                 tokens are answered 503 (jwks_stale) until a fetch succeeds"
            );
        }
    }

    fn set_failing_since(&self, failed: Option<Instant>) {
        let mut since = self
            .failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match failed {
            None => *since = None,
            Some(started) => {
                since.get_or_insert(started);
            }
        }
    }

    /// Fetches since start: (succeeded, failed).
    pub fn fetches(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// How many keys the current set holds (0 before the first successful fetch).
    pub fn key_count(&self) -> usize {
        self.snapshot().map_or(0, |(keys, _)| keys.len())
    }

    /// Whether a key set was fetched at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The current keys and their generation; `None` before the first successful fetch.
    pub fn snapshot(&self) -> Option<(Arc<KeySet>, u64)> {
        if !self.loaded() {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let keys = match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        Some((keys, generation))
    }

    fn install(&self, keys: KeySet) {
        let keys = Arc::new(keys);
        match self.current.write() {
            Ok(mut guard) => *guard = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.loaded.store(true, Ordering::Release);
    }

    /// Fetches now, whatever the rate limit (the timer's refresh). Keeps the old keys on failure.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut state = self.state.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// A token named a key we do not hold (`seen` is the generation it was checked against):
    /// fetches again unless another fetch already brought newer keys or the last successful
    /// fetch is more recent than `min_refresh_interval`. The fetch runs in its own task, so a
    /// request that gives up does not cancel it for the requests waiting on the same fetch.
    pub async fn refetch_for_unknown_key(self: &Arc<Self>, seen: u64) -> Refetch {
        let mut state = Arc::clone(&self.state).lock_owned().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Refetch::Newer;
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.source.min_refresh_interval
        {
            return if state.last_failed {
                Refetch::Failed
            } else {
                Refetch::RateLimited
            };
        }
        let keys = Arc::clone(self);
        // Traced under the Check that found the unknown key, when there is one.
        let fetch = tokio::spawn(tracing::Instrument::instrument(
            async move { keys.fetch_locked(&mut state).await },
            tracing::Span::current(),
        ));
        match fetch.await {
            Ok(Ok(())) => Refetch::Newer,
            Ok(Err(_)) | Err(_) => Refetch::Failed,
        }
    }

    async fn fetch_locked(&self, state: &mut FetchState) -> Result<(), String> {
        let started = Instant::now();
        state.last_attempt = Some(started);
        let result = match tokio::time::timeout(self.source.timeout, self.fetch(state)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "fetching the keys took longer than {:?}",
                self.source.timeout
            )),
        };
        state.last_failed = result.is_err();
        match result {
            Ok(keys) => {
                tracing::info!(
                    issuer = %self.source.issuer,
                    keys = keys.len(),
                    kids = ?keys.kids(),
                    "jwt signing keys loaded"
                );
                self.install(keys);
                self.set_failing_since(None);
                self.stale_reported.store(false, Ordering::Relaxed);
                self.fetched.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(
                    issuer = %self.source.issuer,
                    %error,
                    keeping = self.snapshot().map_or(0, |(k, _)| k.len()),
                    "jwt signing keys could not be fetched"
                );
                self.set_failing_since(Some(started));
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    async fn fetch(&self, state: &mut FetchState) -> Result<KeySet, String> {
        let url = match (&self.source.jwks_uri, &state.discovered) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) => {
                let url = self.discover().await?;
                state.discovered = Some(url.clone());
                url
            }
        };
        let fetched = get_document(&self.client, &url, "jwks")
            .await
            .and_then(|body| KeySet::parse(&body))
            .map_err(|e| format!("key set {url}: {e}"));
        if fetched.is_err() {
            state.discovered = None;
        }
        fetched
    }

    /// The `jwks_uri` of the issuer's discovery document, which must name the same issuer.
    async fn discover(&self) -> Result<reqwest::Url, String> {
        let url = self.source.discovery_url()?;
        let body = get_document(&self.client, &url, "discovery")
            .await
            .map_err(|e| format!("discovery {url}: {e}"))?;
        let document: Value =
            serde_json::from_slice(&body).map_err(|e| format!("discovery {url}: not JSON: {e}"))?;
        // Security: a discovery document for another issuer would make us trust its keys.
        match document.get("issuer").and_then(Value::as_str) {
            Some(issuer) if issuer == self.source.issuer => {}
            Some(issuer) => {
                return Err(format!(
                    "discovery {url}: names issuer {issuer:?}, expected {:?}",
                    self.source.issuer
                ));
            }
            None => return Err(format!("discovery {url}: no \"issuer\"")),
        }
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("discovery {url}: no \"jwks_uri\""))?;
        reqwest::Url::parse(jwks_uri).map_err(|e| format!("discovery {url}: jwks_uri: {e}"))
    }
}

/// GETs a JSON document, 2xx only, up to [`MAX_DOCUMENT_BYTES`].
async fn get_document(
    client: &reqwest::Client,
    url: &reqwest::Url,
    call: &'static str,
) -> Result<Vec<u8>, String> {
    use tracing::Instrument as _;
    let span = crate::telemetry::traces::client_span(call, "GET", url);
    get_document_in(client, url, &span)
        .instrument(span.clone())
        .await
}

async fn get_document_in(
    client: &reqwest::Client,
    url: &reqwest::Url,
    span: &tracing::Span,
) -> Result<Vec<u8>, String> {
    use crate::telemetry::traces;
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .headers(traces::propagation_headers(span))
        .send()
        .await
        .map_err(|e| {
            traces::record_error(span, super::http::error_type(&e));
            super::http::describe(&e)
        })?;
    let status = response.status();
    traces::record_status(span, status.as_u16());
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| super::http::describe(&e))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The timer: fetches at once, then every `refresh_interval`; after a failure, retries sooner
/// (from [`FIRST_RETRY`], doubling up to `min_refresh_interval`). Ends when the keys are dropped.
pub async fn refresh_loop(keys: Weak<Keys>) {
    let mut retry = FIRST_RETRY;
    loop {
        let delay = {
            let Some(keys) = keys.upgrade() else { return };
            match keys.refresh().await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    keys.source.refresh_interval
                }
                Err(_) => {
                    let delay = retry.min(keys.source.refresh_interval);
                    retry = (retry * 2).min(keys.source.min_refresh_interval.max(FIRST_RETRY));
                    delay
                }
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_asymmetric_signature_keys_are_kept() {
        let rsa = json!({"kty": "RSA", "kid": "r", "n": "sXch", "e": "AQAB"});
        let set = json!({"keys": [
            rsa,
            {"kty": "RSA", "kid": "r-pinned", "alg": "PS256", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "r-enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "r-oaep", "alg": "RSA-OAEP", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "r-es", "alg": "ES256", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "oct", "kid": "h2", "alg": "HS256", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "e521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "d", "crv": "Ed25519", "x": "AA"},
            {"kty": "XYZ", "kid": "x"},
            "not an object"
        ]});
        let keys = KeySet::parse(set.to_string().as_bytes()).expect("usable keys");
        assert_eq!(keys.kids(), ["r", "r-pinned", "e", "d"]);
        assert_eq!(
            keys.by_kid("r-pinned").map(|k| k.algorithms.clone()),
            Some(vec![Algorithm::PS256])
        );
        assert_eq!(
            keys.by_kid("e").map(|k| k.algorithms.clone()),
            Some(vec![Algorithm::ES256])
        );
        assert_eq!(keys.for_algorithm(Algorithm::RS256).count(), 1);
        assert_eq!(keys.for_algorithm(Algorithm::HS256).count(), 0);

        for broken in [
            &b"not json"[..],
            br#"{"keys": {}}"#,
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
        ] {
            assert!(
                KeySet::parse(broken).is_err(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    /// Keys are too stale once fetches have failed for longer than the bound, counted from the
    /// first failure since the last success; never with the bound at zero or while fetching works.
    #[test]
    fn keys_are_too_stale_only_after_failing_longer_than_the_bound() {
        let since = Instant::now();
        let max = Duration::from_secs(60);
        let at = |secs| since + Duration::from_secs(secs);
        assert!(!too_stale(None, at(3600), max), "fetches succeed");
        assert!(!too_stale(Some(since), at(0), max));
        assert!(!too_stale(Some(since), at(60), max), "exactly the bound");
        assert!(too_stale(Some(since), at(61), max));
        assert!(!too_stale(Some(since), at(86_400), Duration::ZERO), "off");
        // A clock read before the failure (a request that started earlier) is not stale.
        assert!(!too_stale(Some(at(10)), since, max));
    }

    #[test]
    fn discovery_url_follows_the_issuer() {
        let source = |issuer: &str| KeySource {
            issuer: issuer.into(),
            jwks_uri: None,
            timeout: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(60),
            min_refresh_interval: Duration::from_secs(1),
            max_staleness: Duration::ZERO,
        };
        for issuer in ["https://idp.test/realms/a", "https://idp.test/realms/a/"] {
            assert_eq!(
                source(issuer).discovery_url().map(|u| u.to_string()),
                Ok("https://idp.test/realms/a/.well-known/openid-configuration".to_owned())
            );
        }
    }
}
