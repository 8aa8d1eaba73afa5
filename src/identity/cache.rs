//! The identity cache: one answer of an identity source per credential, reused until it expires.
//!
//! Called by the [`Resolver`](super::Resolver) around each source that can name the credential it
//! would use ([`Source::cache_key`](super::Source::cache_key)). What it must never do:
//! - keep a credential, or a plain digest of one, as a key: keys are a 128-bit keyed hash
//!   (SipHash-1-3 with its 128-bit output, under a random per-process key) of every proxied
//!   header and of the source's URL, so two different credentials never share an entry;
//! - store anything but a definitive answer: a user (for the TTL, never past a JWT's `exp`), an
//!   anonymous or invalid answer (for the negative TTL); outages, timeouts and errors are never
//!   stored;
//! - call the source twice for concurrent lookups of one key: they are coalesced onto one call;
//! - serve a stale answer except as `stale_if_error` allows: a user (never an anonymous or
//!   invalid answer) whose entry expired less than `stale_if_error` ago, only when the fresh
//!   lookup found the source *unavailable* (never when it refused the credential: a refusal
//!   drops the stale copy), never past the credential's `exp` or the source's `expires_at`, and
//!   never when the failure is the JWT source's refusal of stale keys (`jwks_stale`).
//!
//! Stale copies live in a second moka cache, written when a user is stored (off when
//! `stale_if_error` is zero), so that an expired entry can leave the main cache (and the lookup
//! coalesce as usual) while its copy waits for an outage.
//!
//! Entry lifetimes are checked against `tokio::time::Instant`, so tests drive them with
//! `tokio::time::pause()`; moka's own expiry only bounds memory: the main cache drops an entry
//! at the longest lifetime any answer may have (the TTL or the negative TTL), the stale cache
//! at each copy's own end.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::time::Instant;

use super::{CacheTtl, Resolution};
use crate::config::CacheSettings;
use crate::request::Request;

/// How one lookup went, for the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// Waited for another request's call for the same key.
    Coalesced,
    /// The source was unavailable and a user whose entry had expired less than
    /// `stale_if_error` ago was served.
    Stale,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
            Lookup::Stale => "stale",
        }
    }
}

/// Counters since start, for logs and the `checkpoint_identity_cache_requests_total` metric.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
}

impl CacheStats {
    /// (hits, misses, coalesced) since start.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.coalesced.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone)]
struct Entry {
    resolution: Resolution,
    expires: Instant,
}

/// The copy of a user kept for `stale_if_error`.
#[derive(Clone)]
struct StaleEntry {
    resolution: Resolution,
    /// Served stale only before this...
    until: Instant,
    /// ...and before the credential's expiry (seconds since the epoch), checked again when served.
    exp: Option<u64>,
    /// How long moka keeps it (until `until`).
    keep: Duration,
}

/// The stale cache keeps each copy until its own end (`StaleEntry::keep`).
struct StaleExpiry;

impl moka::Expiry<u128, StaleEntry> for StaleExpiry {
    fn expire_after_create(
        &self,
        _key: &u128,
        value: &StaleEntry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

pub struct IdentityCache {
    entries: moka::future::Cache<u128, Entry, Prehashed>,
    /// Users kept for `stale_if_error`; `None` when it is zero.
    stale: Option<moka::future::Cache<u128, StaleEntry, Prehashed>>,
    settings: CacheSettings,
    /// The secret key of [`KeyHasher`], drawn once per cache.
    secret: (u64, u64),
    pub stats: Arc<CacheStats>,
}

/// moka's hasher for the cache's keys. A key is already the output of a keyed hash
/// ([`KeyHasher`]), uniform and unknown to callers, so hashing it again (moka's default is
/// SipHash) would add instructions and nothing else: its two halves are folded into one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prehashed;

/// The [`Prehashed`] hasher's state.
#[derive(Debug, Default)]
pub struct Folded(u64);

impl BuildHasher for Prehashed {
    type Hasher = Folded;

    fn build_hasher(&self) -> Folded {
        Folded(0)
    }
}

impl Hasher for Folded {
    fn write_u128(&mut self, key: u128) {
        self.0 ^= (key as u64) ^ ((key >> 64) as u64);
    }

    /// Not reached by a `u128` key; mixes any other input eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds a cache key: feed it with [`Hasher::write`]; length-prefix variable fields.
///
/// One SipHash-1-3 state with a 128-bit output (the `siphasher` crate) under the cache's secret
/// key: a bearer JWT of several hundred bytes is read once per Check. Writes gather in a buffer
/// on the stack and reach the state in as few calls as possible (each call has a fixed cost; a
/// user-info key is some twenty short fields).
pub struct KeyHasher {
    state: SipHasher13,
    pending: [u8; KEY_BUFFER],
    len: usize,
}

const KEY_BUFFER: usize = 512;

impl KeyHasher {
    /// Writes a field so that no two sequences of fields produce the same bytes.
    pub fn field(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }

    fn flush(&mut self) {
        let pending = &self.pending[..self.len];
        self.state.write(pending);
        self.len = 0;
    }

    fn finish128(&self) -> u128 {
        let mut state = self.state;
        state.write(&self.pending[..self.len]);
        state.finish128().as_u128()
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > KEY_BUFFER {
            self.flush();
            if bytes.len() > KEY_BUFFER {
                self.state.write(bytes);
                return;
            }
        }
        self.pending[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn finish(&self) -> u64 {
        // The 128-bit key's first half.
        (self.finish128() >> 64) as u64
    }
}

/// A 128-bit key from the operating system's random source: std's `RandomState` draws its
/// SipHash keys from it, and two of its hashes of fixed inputs are two secret 64-bit words.
fn secret_key() -> (u64, u64) {
    let state = RandomState::new();
    (state.hash_one(0xa5u8), state.hash_one(0x5au8))
}

impl IdentityCache {
    /// `None` when the TTL is zero: the cache is off.
    pub fn new(settings: CacheSettings) -> Option<IdentityCache> {
        if settings.ttl.is_zero() {
            return None;
        }
        // One lifetime for every entry, the longest an answer may be kept: an entry's own,
        // shorter expiry is `Entry::expires`, checked on every hit. A per-entry moka expiry
        // would release memory sooner but costs every hit moka's clock conversions and timer
        // bookkeeping (bench/RESULTS.md, "Seventeenth round"); memory stays bounded by
        // `max_entries` either way.
        let longest = settings.ttl.max(settings.negative_ttl);
        let entries = moka::future::Cache::builder()
            .max_capacity(settings.max_entries)
            .time_to_live(longest)
            .build_with_hasher(Prehashed);
        let stale = (!settings.stale_if_error.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(StaleExpiry)
                .time_to_live(settings.ttl + settings.stale_if_error)
                .build_with_hasher(Prehashed)
        });
        Some(IdentityCache {
            entries,
            stale,
            settings,
            secret: secret_key(),
            stats: Arc::new(CacheStats::default()),
        })
    }

    /// A fresh key builder under this process's secret key.
    pub fn key_hasher(&self) -> KeyHasher {
        let (key0, key1) = self.secret;
        KeyHasher {
            state: SipHasher13::new_with_keys(key0, key1),
            pending: [0; KEY_BUFFER],
            len: 0,
        }
    }

    pub fn key(hasher: &KeyHasher) -> u128 {
        hasher.finish128()
    }

    /// The cached answer for `key`, or the answer of `resolve`, stored if definitive.
    /// Concurrent callers with the same key share one call of `resolve`.
    /// `ttl` is the source's own lifetimes ([`super::Source::cache_ttl`]): the shorter of them
    /// and the cache's settings apply.
    pub async fn get_or_resolve<F>(
        &self,
        key: u128,
        request: &Request,
        ttl: Option<CacheTtl>,
        resolve: F,
    ) -> (Resolution, Lookup)
    where
        F: Future<Output = Resolution> + Send,
    {
        let mut expired = false;
        if let Some(entry) = self.entries.get(&key).await {
            if entry.expires > Instant::now() {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return (entry.resolution, Lookup::Hit);
            }
            expired = true;
        }
        // The miss in an allocation of its own: what it keeps across its awaits (moka's loader,
        // the stale copy) is a few KB, which a Check answered from the cache, the common case,
        // should not hold while it is in flight (bench/RESULTS.md, "Session 11 runs").
        Box::pin(self.miss(key, expired, request, ttl, resolve)).await
    }

    /// [`IdentityCache::get_or_resolve`] when the cache holds no live answer for `key`; `expired`
    /// when it holds one past its lifetime.
    async fn miss<F>(
        &self,
        key: u128,
        expired: bool,
        request: &Request,
        ttl: Option<CacheTtl>,
        resolve: F,
    ) -> (Resolution, Lookup)
    where
        F: Future<Output = Resolution> + Send,
    {
        if expired {
            self.entries.invalidate(&key).await;
        }
        let ran = AtomicBool::new(false);
        let credential_exp = jwt_exp(request);
        let settings = match ttl {
            Some(own) => CacheSettings {
                ttl: self.settings.ttl.min(own.ttl),
                negative_ttl: self.settings.negative_ttl.min(own.negative_ttl),
                ..self.settings
            },
            None => self.settings,
        };
        let result = self
            .entries
            .try_get_with(key, async {
                ran.store(true, Ordering::Relaxed);
                let resolution = resolve.await;
                let unix_now = unix_seconds();
                self.keep_stale(key, &resolution, &settings, credential_exp, unix_now)
                    .await;
                match ttl_for(&resolution, &settings, credential_exp, unix_now) {
                    Some(ttl) => Ok(Entry {
                        resolution,
                        expires: Instant::now() + ttl,
                    }),
                    None => Err(resolution),
                }
            })
            .await;
        let lookup = if ran.load(Ordering::Relaxed) {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            Lookup::Miss
        } else {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            Lookup::Coalesced
        };
        let resolution = match result {
            Ok(entry) => entry.resolution,
            Err(uncached) => {
                let resolution = (*uncached).clone();
                if let Some(stale) = self.stale_answer(key, &resolution).await {
                    return (stale, Lookup::Stale);
                }
                resolution
            }
        };
        (resolution, lookup)
    }

    /// Keeps a copy of a user for `stale_if_error`, or drops the copy when the source gave
    /// another definitive answer (a refused credential is never served stale).
    async fn keep_stale(
        &self,
        key: u128,
        resolution: &Resolution,
        settings: &CacheSettings,
        credential_exp: Option<u64>,
        unix_now: u64,
    ) {
        let Some(stale) = &self.stale else { return };
        match resolution {
            Resolution::Unavailable(_) | Resolution::NoCredential => {}
            Resolution::User(_) => {
                match stale_keep(resolution, settings, credential_exp, unix_now) {
                    Some((keep, exp)) => {
                        let entry = StaleEntry {
                            resolution: resolution.clone(),
                            until: Instant::now() + keep,
                            exp,
                            keep,
                        };
                        stale.insert(key, entry).await;
                    }
                    None => stale.invalidate(&key).await,
                }
            }
            Resolution::Anonymous | Resolution::Invalid(_) => stale.invalidate(&key).await,
        }
    }

    /// The stale user to serve for `key` instead of `fresh`, if `fresh` is an outage that
    /// `stale_if_error` may bridge and a copy is still within its window.
    async fn stale_answer(&self, key: u128, fresh: &Resolution) -> Option<Resolution> {
        let stale = self.stale.as_ref()?;
        if !may_bridge(fresh) {
            return None;
        }
        let entry = stale.get(&key).await?;
        servable(entry.until, entry.exp, Instant::now(), unix_seconds()).then_some(entry.resolution)
    }

    /// Entries currently held (approximate until moka runs its pending tasks).
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs moka's pending maintenance, after which [`IdentityCache::len`] is exact.
    pub async fn settle(&self) {
        self.entries.run_pending_tasks().await;
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether a fresh answer is an outage a stale user may stand in for: the source was
/// unavailable, and not because the JWT source refuses keys it could not refresh for longer
/// than `max_key_staleness` (that bound would mean nothing if stale answers bridged it).
pub fn may_bridge(fresh: &Resolution) -> bool {
    matches!(fresh, Resolution::Unavailable(failure) if failure.reason != super::jwt::JWKS_STALE)
}

/// How long a user answered now may be served stale, counted from now (the TTL plus
/// `stale_if_error`, never past the credential's expiry), with that expiry: `None` when it may
/// not be served stale at all.
pub fn stale_keep(
    resolution: &Resolution,
    settings: &CacheSettings,
    credential_exp: Option<u64>,
    unix_now: u64,
) -> Option<(Duration, Option<u64>)> {
    let Resolution::User(user) = resolution else {
        return None;
    };
    if settings.stale_if_error.is_zero() {
        return None;
    }
    let exp = match (credential_exp, user.expires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let keep = settings.ttl + settings.stale_if_error;
    let keep = match exp {
        Some(exp) => keep.min(Duration::from_secs(exp.saturating_sub(unix_now))),
        None => keep,
    };
    (!keep.is_zero()).then_some((keep, exp))
}

/// Whether a stale copy kept until `until`, for a credential that expires at `exp`, may be
/// served at `now` (`unix_now` in seconds since the epoch).
pub fn servable(until: Instant, exp: Option<u64>, now: Instant, unix_now: u64) -> bool {
    now < until && exp.is_none_or(|exp| unix_now < exp)
}

/// How long an answer may be kept: `None` for answers that must not be stored. A user is kept
/// for the TTL but never past the credential's own expiry (`exp`, seconds since the epoch).
pub fn ttl_for(
    resolution: &Resolution,
    settings: &CacheSettings,
    credential_exp: Option<u64>,
    unix_now: u64,
) -> Option<Duration> {
    let ttl = match resolution {
        Resolution::User(_) => settings.ttl,
        Resolution::Anonymous | Resolution::Invalid(_) => settings.negative_ttl,
        Resolution::Unavailable(_) | Resolution::NoCredential => return None,
    };
    let exp = match resolution {
        // The earlier of what the credential says and what the source verified.
        Resolution::User(user) => match (credential_exp, user.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        _ => None,
    };
    let ttl = match exp {
        Some(exp) => ttl.min(Duration::from_secs(exp.saturating_sub(unix_now))),
        None => ttl,
    };
    (!ttl.is_zero()).then_some(ttl)
}

/// The `exp` claim of a bearer JWT in the `authorization` header, read without verification: it
/// only ever shortens how long an answer is kept.
pub fn jwt_exp(request: &Request) -> Option<u64> {
    let value = request.header("authorization")?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    claims
        .exp
        .filter(|e| e.is_finite() && *e >= 0.0)
        .map(|e| e as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Failure, User};
    use std::sync::atomic::AtomicUsize;

    fn settings() -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            max_entries: 1000,
            stale_if_error: Duration::ZERO,
        }
    }

    fn stale_settings() -> CacheSettings {
        CacheSettings {
            stale_if_error: Duration::from_secs(60),
            ..settings()
        }
    }

    fn down() -> Resolution {
        Resolution::Unavailable(Failure::new("userinfo_status", "503"))
    }

    fn user(id: &str) -> Resolution {
        Resolution::User(Arc::new(
            User::new(id.into(), vec![], vec![], "{}".into()).expect("valid"),
        ))
    }

    use crate::request::with_authorization as request;

    fn key_of(cache: &IdentityCache, credential: &str) -> u128 {
        let mut h = cache.key_hasher();
        h.field(b"userinfo");
        h.field(credential.as_bytes());
        IdentityCache::key(&h)
    }

    fn jwt(exp: u64) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "Bearer {}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(&format!(r#"{{"sub":"a","exp":{exp}}}"#))
        )
    }

    /// Keys depend on the fields and their boundaries, not on how the writes were cut up or on
    /// the buffer's size: short and long fields (longer than the buffer) alike.
    #[test]
    fn keys_follow_the_fields_not_the_buffering() {
        let cache = IdentityCache::new(settings()).expect("cache");
        let key = |fields: &[&[u8]]| {
            let mut hasher = cache.key_hasher();
            for field in fields {
                hasher.field(field);
            }
            IdentityCache::key(&hasher)
        };
        let long = vec![b'x'; 3 * KEY_BUFFER];
        let longer = [&long[..], b"y"].concat();
        let base = key(&[b"http://u/", b"authorization", &long, b"cookie", b"s=1"]);
        assert_eq!(
            base,
            key(&[b"http://u/", b"authorization", &long, b"cookie", b"s=1"])
        );
        assert_ne!(
            base,
            key(&[b"http://u/", b"authorization", &longer, b"cookie", b"s=1"])
        );
        assert_ne!(
            base,
            key(&[b"http://u/", b"authorization", &long, b"cookie", b"s=2"])
        );
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        // The same bytes written in pieces of every size give the same key.
        let bytes: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
        let whole = {
            let mut hasher = cache.key_hasher();
            hasher.write(&bytes);
            IdentityCache::key(&hasher)
        };
        for piece in [1, 7, 100, KEY_BUFFER - 1, KEY_BUFFER, KEY_BUFFER + 1, 1999] {
            let mut hasher = cache.key_hasher();
            for chunk in bytes.chunks(piece) {
                hasher.write(chunk);
            }
            assert_eq!(IdentityCache::key(&hasher), whole, "pieces of {piece}");
        }
        // A new cache has a new secret: the same fields, another key.
        let other = IdentityCache::new(settings()).expect("cache");
        let mut hasher = other.key_hasher();
        hasher.field(b"http://u/");
        assert_ne!(IdentityCache::key(&hasher), key(&[b"http://u/"]));
    }

    #[test]
    fn what_is_kept_and_for_how_long() {
        let s = settings();
        let unavailable = Resolution::Unavailable(Failure::new("userinfo_status", "500"));
        let invalid = Resolution::Invalid(Failure::new("x", "y"));
        assert_eq!(
            ttl_for(&user("a"), &s, None, 1000),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            ttl_for(&Resolution::Anonymous, &s, None, 1000),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            ttl_for(&invalid, &s, None, 1000),
            Some(Duration::from_secs(5))
        );
        assert_eq!(ttl_for(&unavailable, &s, None, 1000), None);
        assert_eq!(ttl_for(&Resolution::NoCredential, &s, None, 1000), None);
        // Never past the credential's own expiry; an expired credential is not kept at all.
        assert_eq!(
            ttl_for(&user("a"), &s, Some(1010), 1000),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            ttl_for(&user("a"), &s, Some(5000), 1000),
            Some(Duration::from_secs(30))
        );
        assert_eq!(ttl_for(&user("a"), &s, Some(999), 1000), None);
        let no_negative = CacheSettings {
            negative_ttl: Duration::ZERO,
            ..s
        };
        assert_eq!(
            ttl_for(&Resolution::Anonymous, &no_negative, None, 1000),
            None
        );
    }

    #[test]
    fn jwt_exp_is_read_from_bearer_tokens_only() {
        assert_eq!(jwt_exp(&request(&jwt(1_700_000_000))), Some(1_700_000_000));
        assert_eq!(jwt_exp(&request("Bearer opaque-token")), None);
        assert_eq!(jwt_exp(&request("Basic a.b.c")), None);
        assert_eq!(jwt_exp(&request("Bearer a.!!!.c")), None);
        assert_eq!(jwt_exp(&request("Bearer a.b.c.d")), None);
    }

    #[test]
    fn zero_ttl_turns_the_cache_off() {
        assert!(
            IdentityCache::new(CacheSettings {
                ttl: Duration::ZERO,
                ..settings()
            })
            .is_none()
        );
    }

    #[test]
    fn different_credentials_have_different_keys_and_fields_do_not_run_together() {
        let cache = IdentityCache::new(settings()).expect("on");
        assert_ne!(key_of(&cache, "Bearer a"), key_of(&cache, "Bearer b"));
        assert_eq!(key_of(&cache, "Bearer a"), key_of(&cache, "Bearer a"));
        let joined = |x: &[&str]| {
            let mut h = cache.key_hasher();
            for f in x {
                h.field(f.as_bytes());
            }
            IdentityCache::key(&h)
        };
        assert_ne!(joined(&["ab", "c"]), joined(&["a", "bc"]));
    }

    #[test]
    fn moka_hashes_a_key_by_folding_its_halves() {
        let key: u128 = (0x0123_4567_89ab_cdef_u128 << 64) | 0xfedc_ba98_7654_3210;
        assert_eq!(
            Prehashed.hash_one(key),
            0x0123_4567_89ab_cdef ^ 0xfedc_ba98_7654_3210
        );
        // A change in either half changes the hash.
        assert_ne!(Prehashed.hash_one(key ^ 1), Prehashed.hash_one(key));
        assert_ne!(
            Prehashed.hash_one(key ^ (1 << 100)),
            Prehashed.hash_one(key)
        );
        // Other input (never a key) is mixed, not folded: the order of the bytes counts.
        assert_ne!(Prehashed.hash_one([1u8, 2]), Prehashed.hash_one([2u8, 1]));
    }

    #[tokio::test]
    async fn many_credentials_each_get_their_own_user_back() {
        let cache = IdentityCache::new(settings()).expect("on");
        let credentials: Vec<String> = (0..500).map(|i| format!("Bearer token-{i}")).collect();
        for credential in &credentials {
            let k = key_of(&cache, credential);
            let (r, lookup) = cache
                .get_or_resolve(k, &request(credential), None, async { user(credential) })
                .await;
            assert_eq!((r, lookup), (user(credential), Lookup::Miss));
        }
        for credential in credentials.iter().rev() {
            let k = key_of(&cache, credential);
            let (r, lookup) = cache
                .get_or_resolve(k, &request(credential), None, async { user("wrong") })
                .await;
            assert_eq!((r, lookup), (user(credential), Lookup::Hit), "{credential}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn users_expire_after_the_ttl_and_anonymous_after_the_negative_ttl() {
        let cache = IdentityCache::new(settings()).expect("on");
        let calls = AtomicUsize::new(0);
        let req = request("Bearer alice");
        let ask = |answer: Resolution| {
            let calls = &calls;
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                answer
            }
        };
        let k = key_of(&cache, "Bearer alice");
        assert_eq!(
            cache
                .get_or_resolve(k, &req, None, ask(user("alice")))
                .await
                .1,
            Lookup::Miss
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        let (r, lookup) = cache
            .get_or_resolve(k, &req, None, ask(user("other")))
            .await;
        assert_eq!((r, lookup), (user("alice"), Lookup::Hit));
        tokio::time::advance(Duration::from_secs(2)).await;
        let (r, lookup) = cache
            .get_or_resolve(k, &req, None, ask(user("fresh")))
            .await;
        assert_eq!((r, lookup), (user("fresh"), Lookup::Miss));

        let anon = key_of(&cache, "Bearer bad");
        cache
            .get_or_resolve(anon, &req, None, ask(Resolution::Anonymous))
            .await;
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            cache
                .get_or_resolve(anon, &req, None, ask(user("x")))
                .await
                .1,
            Lookup::Hit
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            cache.get_or_resolve(anon, &req, None, ask(user("x"))).await,
            (user("x"), Lookup::Miss)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    /// A source's own lifetimes (the `ldap` source) shorten the cache's, never lengthen them.
    #[tokio::test(start_paused = true)]
    async fn a_source_may_shorten_the_lifetimes() {
        let cache = IdentityCache::new(settings()).expect("on");
        let req = request("Basic x");
        let short = Some(CacheTtl {
            ttl: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(1),
        });
        let long = Some(CacheTtl {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(300),
        });
        let refused = Resolution::Invalid(Failure::new("ldap_invalid_credentials", "no"));
        let (a, b, c) = (
            key_of(&cache, "a"),
            key_of(&cache, "b"),
            key_of(&cache, "c"),
        );
        cache
            .get_or_resolve(a, &req, short, std::future::ready(user("alice")))
            .await;
        cache
            .get_or_resolve(b, &req, short, std::future::ready(refused.clone()))
            .await;
        cache
            .get_or_resolve(c, &req, long, std::future::ready(user("carol")))
            .await;
        tokio::time::advance(Duration::from_millis(1500)).await;
        let again = |key, answer: Resolution| {
            let cache = &cache;
            let req = &req;
            async move {
                cache
                    .get_or_resolve(key, req, short, std::future::ready(answer))
                    .await
                    .1
            }
        };
        assert_eq!(again(a, user("new")).await, Lookup::Hit);
        assert_eq!(again(b, user("new")).await, Lookup::Miss);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(again(a, user("new")).await, Lookup::Miss);
        // The cache's own 30 s still bound a source asking for more.
        tokio::time::advance(Duration::from_secs(28)).await;
        assert_eq!(again(c, user("new")).await, Lookup::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_never_kept() {
        let cache = IdentityCache::new(settings()).expect("on");
        let req = request("Bearer alice");
        let k = key_of(&cache, "Bearer alice");
        let down = Resolution::Unavailable(Failure::new("userinfo_status", "503"));
        let (r, _) = cache
            .get_or_resolve(k, &req, None, std::future::ready(down.clone()))
            .await;
        assert_eq!(r, down);
        let (r, lookup) = cache
            .get_or_resolve(k, &req, None, std::future::ready(user("alice")))
            .await;
        assert_eq!((r, lookup), (user("alice"), Lookup::Miss));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_make_one_call() {
        let cache = Arc::new(IdentityCache::new(settings()).expect("on"));
        let calls = Arc::new(AtomicUsize::new(0));
        let k = key_of(&cache, "Bearer new");
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                let req = request("Bearer new");
                cache
                    .get_or_resolve(k, &req, None, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        user("new")
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task").0, user("new"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let stats = &cache.stats;
        assert_eq!(stats.misses.load(Ordering::SeqCst), 1);
        assert_eq!(
            stats.hits.load(Ordering::SeqCst) + stats.coalesced.load(Ordering::SeqCst),
            199
        );
    }

    /// With `stale_if_error`, a user whose entry expired is served while the source is
    /// unavailable, until the TTL plus `stale_if_error` has passed since it was answered; a
    /// source that answers again replaces it. Without it, an outage is an outage.
    #[tokio::test(start_paused = true)]
    async fn an_expired_user_is_served_while_the_source_is_unavailable() {
        let cache = IdentityCache::new(stale_settings()).expect("on");
        let req = request("Bearer alice");
        let k = key_of(&cache, "Bearer alice");
        let ask = |answer: Resolution| std::future::ready(answer);
        assert_eq!(
            cache
                .get_or_resolve(k, &req, None, ask(user("alice")))
                .await,
            (user("alice"), Lookup::Miss)
        );
        // Within the TTL: a hit, the source is not asked.
        assert_eq!(
            cache.get_or_resolve(k, &req, None, ask(down())).await,
            (user("alice"), Lookup::Hit)
        );
        // Past the TTL, within stale_if_error: the outage is bridged, each time it is met.
        tokio::time::advance(Duration::from_secs(31)).await;
        for _ in 0..2 {
            assert_eq!(
                cache.get_or_resolve(k, &req, None, ask(down())).await,
                (user("alice"), Lookup::Stale)
            );
        }
        // Past the TTL plus stale_if_error: the outage is the answer.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            cache.get_or_resolve(k, &req, None, ask(down())).await,
            (down(), Lookup::Miss)
        );
        // Off: the same sequence ends in the outage at once.
        let off = IdentityCache::new(settings()).expect("on");
        off.get_or_resolve(k, &req, None, ask(user("alice"))).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            off.get_or_resolve(k, &req, None, ask(down())).await,
            (down(), Lookup::Miss)
        );
    }

    /// A credential the source refused (anonymous or invalid), even once after a user, is never
    /// served stale; neither is a user when the failure is the JWT source's refusal of stale keys.
    #[tokio::test(start_paused = true)]
    async fn a_refused_credential_or_stale_keys_are_never_bridged() {
        for refusal in [
            Resolution::Anonymous,
            Resolution::Invalid(Failure::new("jwt_invalid", "revoked")),
        ] {
            let cache = IdentityCache::new(stale_settings()).expect("on");
            let req = request("Bearer alice");
            let k = key_of(&cache, "Bearer alice");
            cache
                .get_or_resolve(k, &req, None, std::future::ready(user("alice")))
                .await;
            tokio::time::advance(Duration::from_secs(31)).await;
            assert_eq!(
                cache
                    .get_or_resolve(k, &req, None, std::future::ready(refusal.clone()))
                    .await,
                (refusal.clone(), Lookup::Miss)
            );
            tokio::time::advance(Duration::from_secs(6)).await;
            assert_eq!(
                cache
                    .get_or_resolve(k, &req, None, std::future::ready(down()))
                    .await,
                (down(), Lookup::Miss),
                "after {refusal:?}"
            );
        }
        let cache = IdentityCache::new(stale_settings()).expect("on");
        let req = request("Bearer alice");
        let k = key_of(&cache, "Bearer alice");
        cache
            .get_or_resolve(k, &req, None, std::future::ready(user("alice")))
            .await;
        tokio::time::advance(Duration::from_secs(31)).await;
        let stale_keys =
            Resolution::Unavailable(Failure::new(crate::identity::jwt::JWKS_STALE, "x"));
        assert_eq!(
            cache
                .get_or_resolve(k, &req, None, std::future::ready(stale_keys.clone()))
                .await,
            (stale_keys, Lookup::Miss)
        );
        assert!(may_bridge(&down()));
        assert!(!may_bridge(&Resolution::Anonymous));
        assert!(!may_bridge(&Resolution::NoCredential));
    }

    /// A JWT is never served stale past its `exp`, nor a user past the `expires_at` its source
    /// reported: the window is cut when the copy is kept and the expiry checked again when served.
    #[tokio::test(start_paused = true)]
    async fn a_stale_user_is_never_served_past_the_credential_expiry() {
        let s = stale_settings();
        let unix_now = 1_000_000;
        assert_eq!(
            stale_keep(&user("a"), &s, None, unix_now),
            Some((Duration::from_secs(90), None))
        );
        assert_eq!(
            stale_keep(&user("a"), &s, Some(unix_now + 40), unix_now),
            Some((Duration::from_secs(40), Some(unix_now + 40)))
        );
        let mut reported = User::new("a".into(), vec![], vec![], "{}".into()).expect("valid");
        reported.expires_at = Some(unix_now + 10);
        assert_eq!(
            stale_keep(
                &Resolution::User(Arc::new(reported)),
                &s,
                Some(unix_now + 40),
                unix_now
            ),
            Some((Duration::from_secs(10), Some(unix_now + 10)))
        );
        assert_eq!(stale_keep(&user("a"), &s, Some(unix_now), unix_now), None);
        assert_eq!(stale_keep(&user("a"), &settings(), None, unix_now), None);
        assert_eq!(stale_keep(&Resolution::Anonymous, &s, None, unix_now), None);
        let now = Instant::now();
        let until = now + Duration::from_secs(5);
        assert!(servable(until, None, now, unix_now));
        assert!(servable(until, Some(unix_now + 1), now, unix_now));
        assert!(!servable(until, Some(unix_now), now, unix_now), "at exp");
        assert!(!servable(until, None, until, unix_now), "window over");

        // Through the cache: a JWT that expires 40s from now (real clock), TTL 30s, stale 60s.
        let cache = IdentityCache::new(s).expect("on");
        let exp = unix_seconds() + 40;
        let req = request(&jwt(exp));
        let k = key_of(&cache, "jwt");
        cache
            .get_or_resolve(k, &req, None, std::future::ready(user("a")))
            .await;
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            cache
                .get_or_resolve(k, &req, None, std::future::ready(down()))
                .await,
            (user("a"), Lookup::Stale)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            cache
                .get_or_resolve(k, &req, None, std::future::ready(down()))
                .await,
            (down(), Lookup::Miss),
            "past exp"
        );
    }

    /// Concurrent Checks that share one failed call are all answered with the stale user.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_failed_call_is_bridged_for_every_waiter() {
        let cache = Arc::new(
            IdentityCache::new(CacheSettings {
                ttl: Duration::from_millis(50),
                ..stale_settings()
            })
            .expect("on"),
        );
        let k = key_of(&cache, "Bearer alice");
        cache
            .get_or_resolve(
                k,
                &request("Bearer alice"),
                None,
                std::future::ready(user("alice")),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_resolve(k, &request("Bearer alice"), None, async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            down()
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let (resolution, lookup) = task.await.expect("task");
            assert_eq!((resolution, lookup), (user("alice"), Lookup::Stale));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
