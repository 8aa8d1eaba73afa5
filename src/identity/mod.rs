//! Stage 2: identity. Finds out who the caller is.
//!
//! Identity sources sit behind one interface, [`Source`], and are tried in order by the
//! [`Resolver`]: the first source that finds a credential it understands decides; a source that
//! finds none passes on ([`Resolution::NoCredential`]); when every source passes on, the caller
//! is anonymous. The sources: the authentication manager's user-info endpoint ([`userinfo`]),
//! local JWT validation ([`jwt`], keys in [`jwks`]), token introspection ([`introspection`]),
//! API keys that identify the calling application ([`api_key`]), an LDAP directory checking
//! HTTP Basic credentials ([`ldap`]), mTLS principals ([`mtls`]),
//! Envoy's jwt_authn metadata ([`envoy_metadata`]), Mia's trust mode ([`trusted`]) and
//! [`anonymous`]. Answers a source can key by credential go through the identity [`cache`].
//!
//! Called by the pipeline (`check`) after a rule was found. Must never log a credential, and
//! never turn a failure into a user: a timeout, an unreadable answer or an outage is
//! [`Resolution::Unavailable`], and the policy stage decides what that means.

pub mod anonymous;
pub mod api_key;
pub mod cache;
pub mod claims;
pub mod envoy_metadata;
pub mod http;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod ldap;
pub mod mtls;
pub mod trusted;
pub mod userinfo;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

pub use crate::config::CacheSettings;
pub use cache::{CacheStats, IdentityCache, KeyHasher, Lookup};

use crate::config::Settings;
use crate::request::Request;

/// A known, logged-in caller. Built once per identity answer, with the values that go upstream
/// already encoded, so that each allowed request only copies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub groups: Vec<String>,
    pub permissions: Vec<String>,
    /// `groups` joined with `,`: the groups header's value.
    pub groups_header: String,
    /// A JSON object, ASCII only: the properties header's value.
    pub properties_header: String,
    /// When the credential stops being valid (seconds since the epoch), if it says: the identity
    /// cache never keeps the user longer.
    pub expires_at: Option<u64>,
    /// The user's effective RBAC permissions and roles, per resource, computed on first use
    /// and kept as long as the user is (`crate::rbac::Rbac::effective`). Never compared.
    pub rbac: crate::rbac::Memo,
}

/// Why an identity answer was refused as a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("empty user id")]
    EmptyId,
    #[error("a value holds a control character")]
    ControlCharacter,
    #[error("a group name holds a comma")]
    CommaInGroup,
    #[error("the user headers would exceed {MAX_USER_HEADER_BYTES} bytes")]
    TooLarge,
}

/// Security: identity headers are bounded so that one user's profile cannot push the upstream
/// request past Envoy's header limit (about 60 KiB).
pub const MAX_USER_HEADER_BYTES: usize = 16 * 1024;

impl User {
    /// Validates the values so that they are safe as header values: no CR, LF or other control
    /// characters (Envoy rejects them, or worse, they split headers), no comma inside a group
    /// (the groups header is comma-joined).
    pub fn new(
        id: String,
        groups: Vec<String>,
        permissions: Vec<String>,
        properties_header: String,
    ) -> Result<User, UserError> {
        if id.is_empty() {
            return Err(UserError::EmptyId);
        }
        let has_control = |s: &str| s.chars().any(char::is_control);
        if has_control(&id)
            || groups.iter().any(|g| has_control(g))
            || has_control(&properties_header)
        {
            return Err(UserError::ControlCharacter);
        }
        if groups.iter().any(|g| g.contains(',')) {
            return Err(UserError::CommaInGroup);
        }
        let groups_header = groups.join(",");
        if id.len() + groups_header.len() + properties_header.len() > MAX_USER_HEADER_BYTES {
            return Err(UserError::TooLarge);
        }
        Ok(User {
            id,
            groups,
            permissions,
            groups_header,
            properties_header,
            expires_at: None,
            rbac: crate::rbac::Memo::default(),
        })
    }
}

/// A failure that is logged with a fixed, low-cardinality reason and a free-form detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// For logs and metrics: `userinfo_timeout`, `userinfo_status`, ...
    pub reason: &'static str,
    /// For logs only; never holds a credential.
    pub detail: String,
}

impl Failure {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// What one source, or the whole resolver, concludes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A logged-in user.
    User(Arc<User>),
    /// The source looked and the caller is definitely nobody (user-info answered 4xx, an empty
    /// body, or no id).
    Anonymous,
    /// The source found no credential it understands; the next source is asked.
    NoCredential,
    /// A credential was presented and is invalid: always 401, even on public routes.
    Invalid(Failure),
    /// Identity could not be established (outage, timeout, unreadable answer).
    Unavailable(Failure),
}

/// What a source may know about the Check beyond the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// When the Check's caller gives up (from `grpc-timeout`); outbound calls must end sooner.
    pub deadline: Option<Instant>,
    pub is_backoffice: bool,
}

impl Context {
    /// The time an outbound call may take: its own bound, cut to the Check's deadline less a
    /// margin, so that our "unavailable" answer reaches Envoy before Envoy gives up on us.
    pub fn budget(&self, bound: std::time::Duration) -> std::time::Duration {
        match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let margin = (left / 20).max(DEADLINE_MARGIN);
                bound.min(left.saturating_sub(margin))
            }
            None => bound,
        }
    }
}

/// The least time kept back from the Check's deadline to send the answer.
pub const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(5);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One way of finding out who the caller is.
pub trait Source: Send + Sync {
    /// The name used in logs, `check-config` and (later) per-rule source lists.
    fn name(&self) -> &'static str;

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        context: &'a Context,
    ) -> BoxFuture<'a, Resolution>;

    /// Feeds everything that identifies the caller's credential for this source into `key`
    /// (length-prefixed fields), so that its answers can be cached. Returns false when the
    /// answer must not be cached or the request carries no credential for this source.
    fn cache_key(&self, _request: &Request, _context: &Context, _key: &mut KeyHasher) -> bool {
        false
    }

    /// The source's own lifetimes for its cached answers, when it has them (the `ldap` source:
    /// a changed password or group must take effect soon). The cache keeps an answer for the
    /// shorter of these and its own settings.
    fn cache_ttl(&self) -> Option<CacheTtl> {
        None
    }

    /// Whether the source can answer yet (a JWT source before its first key fetch cannot);
    /// `/-/ready` and gRPC health report not ready until every source is.
    fn ready(&self) -> bool {
        true
    }

    /// The request headers this source reads (lower-case names; `cookie` for a cookie), so
    /// that Envoy can be told to send no others (`check-config`, ext_authz `allowed_headers`).
    fn request_headers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether asking this source is a call over the network (user-info, introspection): only
    /// those calls are timed in `checkpoint_identity_request_duration_seconds`.
    fn outbound(&self) -> bool {
        false
    }

    /// The signing keys this source keeps fresh, for the JWKS metrics.
    fn key_set(&self) -> Option<&jwks::Keys> {
        None
    }
}

/// How long one source's answers may be cached: users, and refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl {
    pub ttl: std::time::Duration,
    pub negative_ttl: std::time::Duration,
}

/// The header a token location reads.
pub fn token_header(location: &crate::config::sources::TokenLocation) -> String {
    use crate::config::sources::TokenLocation;
    match location {
        TokenLocation::Bearer => "authorization".to_owned(),
        TokenLocation::Header(name) => name.to_ascii_lowercase(),
        TokenLocation::Cookie(_) => "cookie".to_owned(),
    }
}

/// The identity sources, in order, and the cache of their answers.
pub struct Resolver {
    sources: Vec<Named>,
    cache: Option<IdentityCache>,
}

/// A source with the name rules choose it by.
pub struct Named {
    pub name: String,
    pub source: Entry,
}

/// What a source identifies: the user, or (API keys) the calling application.
pub enum Entry {
    User(Box<dyn Source>),
    /// Identifies the client application, not the user: a known key sets `clientType` and adds
    /// its groups, and the sources after it still look for the user.
    Client(api_key::ApiKeys),
}

impl Entry {
    fn ready(&self) -> bool {
        match self {
            Entry::User(source) => source.ready(),
            Entry::Client(_) => true,
        }
    }

    fn request_headers(&self) -> Vec<String> {
        match self {
            Entry::User(source) => source.request_headers(),
            Entry::Client(keys) => keys.request_headers(),
        }
    }
}

/// The calling application, as an API key identified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_type: String,
    pub groups: Vec<String>,
}

fn build_source(
    settings: &crate::config::sources::SourceSettings,
    all: &Settings,
    env: &std::collections::HashMap<String, String>,
) -> Result<Entry, Vec<String>> {
    use crate::config::sources::SourceSettings as S;
    let client = || {
        introspection::http_client().map_err(|e| vec![format!("cannot build the HTTP client: {e}")])
    };
    let user = |source: Box<dyn Source>| Ok(Entry::User(source));
    match settings {
        S::Userinfo(source) => {
            let validated = crate::config::UserInfoSettings::from_source(source)?;
            user(Box::new(
                userinfo::UserInfo::new(validated, source.properties.clone())
                    .map_err(|e| vec![format!("cannot build the HTTP client: {e}")])?,
            ))
        }
        S::Jwt(source) => user(Box::new(jwt::Jwt::new(source, client()?)?)),
        S::Introspection(source) => user(Box::new(introspection::Introspection::new(
            source,
            client()?,
            env,
        )?)),
        S::ApiKey(source) => Ok(Entry::Client(api_key::ApiKeys::new(source)?)),
        S::Mtls(source) => user(Box::new(mtls::Mtls::new(source)?)),
        S::EnvoyMetadata(source) => user(Box::new(envoy_metadata::EnvoyMetadata::new(source)?)),
        S::TrustedHeaders(_) => user(Box::new(trusted::TrustedHeaders::new(
            all.user_headers.clone(),
        ))),
        S::Ldap(source) => user(Box::new(ldap::Ldap::new(source, env)?)),
        S::Anonymous(source) => user(Box::new(anonymous::Anonymous::new(source)?)),
    }
}

/// The resolver's answer, with what the decision log wants to know about how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub resolution: Resolution,
    /// The source that decided (`none` when every source passed on).
    pub source: &'a str,
    /// How the cache answered, when the deciding source was looked up in it.
    pub cache: Option<Lookup>,
    /// How long the source itself took, when it was called (not on a cache hit).
    pub latency: Option<std::time::Duration>,
    /// The client application, when an API key identified it.
    pub client: Option<Client>,
}

impl Resolver {
    pub fn new(sources: Vec<Named>, cache: Option<IdentityCache>) -> Resolver {
        Resolver { sources, cache }
    }

    /// Whether an API key source is configured: then `clientType` comes only from a key, never
    /// from the spoofable client-type header.
    pub fn identifies_clients(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.source, Entry::Client(_)))
    }

    /// Whether every source can answer.
    pub fn ready(&self) -> bool {
        self.sources.iter().all(|s| s.source.ready())
    }

    /// The cache's counters, when the cache is on.
    pub fn cache_stats(&self) -> Option<&CacheStats> {
        self.cache.as_ref().map(|c| &*c.stats)
    }

    /// Counts this cache's lookups in `old`'s counters, so that the totals a scrape reads go on
    /// growing when a reload replaces the identity sources (and with them the cache).
    pub fn continue_stats(&mut self, old: &Resolver) {
        if let (Some(new), Some(old)) = (&mut self.cache, &old.cache) {
            new.stats = old.stats.clone();
        }
    }

    /// Entries the identity cache holds now (0 when it is off).
    pub fn cache_entries(&self) -> u64 {
        self.cache.as_ref().map_or(0, IdentityCache::len)
    }

    /// Lets the cache finish its pending bookkeeping, so that [`Resolver::cache_entries`] is
    /// exact (a scrape calls this first).
    pub async fn settle_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.settle().await;
        }
    }

    /// Each source that identifies users: its name and whether asking it is an outbound call.
    /// Bounded by the configuration: the metrics' `source` label values.
    pub fn user_sources(&self) -> impl Iterator<Item = (&str, bool)> {
        self.sources.iter().filter_map(|s| match &s.source {
            Entry::User(source) => Some((s.name.as_str(), source.outbound())),
            Entry::Client(_) => None,
        })
    }

    /// The key sets of the sources that keep one (JWT), by source name.
    pub fn key_sets(&self) -> impl Iterator<Item = (&str, &jwks::Keys)> {
        self.sources.iter().filter_map(|s| match &s.source {
            Entry::User(source) => source.key_set().map(|keys| (s.name.as_str(), keys)),
            Entry::Client(_) => None,
        })
    }

    /// Builds the sources the settings name, in order. Must run inside a tokio runtime (some
    /// sources keep keys fresh in the background). Every problem is reported, each naming the
    /// source by its position and name.
    pub fn build(
        settings: &Settings,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Resolver, Vec<String>> {
        let mut problems = Vec::new();
        let mut sources = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, source) in settings.sources.iter().enumerate() {
            let name = source.name().to_owned();
            let at = format!("identity.sources[{index}] ({name})");
            if !seen.insert(name.clone()) {
                problems.push(format!(
                    "{at}: another source has the same name; set `name` on one of them"
                ));
                continue;
            }
            match build_source(source, settings, env) {
                Ok(built) => sources.push(Named {
                    name,
                    source: built,
                }),
                Err(errors) => problems.extend(errors.into_iter().map(|e| format!("{at}: {e}"))),
            }
        }
        if sources.is_empty() && problems.is_empty() {
            problems.push(
                "identity.sources: at least one source is needed (use `anonymous` for none)".into(),
            );
        }
        if problems.is_empty() {
            Ok(Resolver::new(
                sources,
                IdentityCache::new(settings.identity_cache),
            ))
        } else {
            Err(problems)
        }
    }

    /// The client application an API key identified for `request`, as [`Resolver::resolve`]
    /// saw it when `decided_by` answered: the key sources the rule allows, before that source.
    /// For `checkpoint explain`, which shows the facts an expression was evaluated with; pure.
    pub fn client_of(
        &self,
        request: &Request,
        allowed: Option<&[String]>,
        decided_by: &str,
    ) -> Option<Client> {
        let mut client = None;
        for Named { name, source } in &self.sources {
            if allowed.is_some_and(|allowed| !allowed.iter().any(|a| a == name)) {
                continue;
            }
            if name == decided_by {
                break;
            }
            if let Entry::Client(keys) = source
                && let api_key::KeyMatch::Known {
                    client_type,
                    groups,
                } = keys.identify(request)
            {
                client = Some(Client {
                    client_type,
                    groups,
                });
            }
        }
        client
    }

    /// The names of the sources, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.name.as_str())
    }

    /// Every request header some source reads (lower-case, sorted, once each).
    pub fn request_headers(&self) -> std::collections::BTreeSet<String> {
        self.sources
            .iter()
            .flat_map(|s| s.source.request_headers())
            .collect()
    }

    /// Asks each source in turn, through the cache where the source can name its credential;
    /// the first that does not pass on decides.
    pub async fn resolve(
        &self,
        request: &Request,
        context: &Context,
        allowed: Option<&[String]>,
    ) -> Resolved<'_> {
        let mut client = None;
        for Named { name, source } in &self.sources {
            if let Some(allowed) = allowed
                && !allowed.iter().any(|a| a == name)
            {
                continue;
            }
            let source = match source {
                Entry::User(source) => source,
                Entry::Client(keys) => {
                    match keys.identify(request) {
                        api_key::KeyMatch::NoKey => {}
                        api_key::KeyMatch::Unknown => {
                            return Resolved {
                                resolution: Resolution::Invalid(Failure::new(
                                    "api_key_unknown",
                                    "the client key matches no configured key",
                                )),
                                source: name,
                                cache: None,
                                latency: None,
                                client: None,
                            };
                        }
                        api_key::KeyMatch::Known {
                            client_type,
                            groups,
                        } => {
                            client = Some(Client {
                                client_type,
                                groups,
                            });
                        }
                    }
                    continue;
                }
            };
            let timed = async {
                let started = Instant::now();
                let resolution = source.resolve(request, context).await;
                (resolution, started.elapsed())
            };
            // The key is hashed here, not in this async fn: the hasher's buffer would otherwise
            // be part of every Check's future.
            let key = self
                .cache
                .as_ref()
                .and_then(|cache| cache_key(cache, name, &**source, request, context));
            let (resolution, cache, latency) = match (&self.cache, key) {
                (Some(cache), Some(key)) => {
                    // How long the call took and, when it failed, why (for the log line
                    // of a stale answer).
                    let called = std::sync::Mutex::new(None);
                    let call = async {
                        let (resolution, took) = timed.await;
                        let failure = match &resolution {
                            Resolution::Unavailable(failure) => Some(failure.clone()),
                            _ => None,
                        };
                        if let Ok(mut slot) = called.lock() {
                            *slot = Some((took, failure));
                        }
                        resolution
                    };
                    let (resolution, lookup) = cache
                        .get_or_resolve(key, request, source.cache_ttl(), call)
                        .await;
                    let (took, failure) = called
                        .lock()
                        .ok()
                        .and_then(|mut slot| slot.take())
                        .map_or((None, None), |(took, failure)| (Some(took), failure));
                    if lookup == Lookup::Stale {
                        log_stale_answer(name, &resolution, failure.as_ref());
                    }
                    (resolution, Some(lookup), took)
                }
                _ => {
                    let (resolution, took) = timed.await;
                    (resolution, None, Some(took))
                }
            };
            if resolution != Resolution::NoCredential {
                return Resolved {
                    resolution,
                    source: name,
                    cache,
                    latency,
                    client,
                };
            }
        }
        Resolved {
            resolution: Resolution::Anonymous,
            source: "none",
            cache: None,
            latency: None,
            client,
        }
    }
}

/// The cache key of `source`'s answer for `request`, when the source can name the credential.
fn cache_key(
    cache: &IdentityCache,
    name: &str,
    source: &dyn Source,
    request: &Request,
    context: &Context,
) -> Option<u128> {
    let mut key = cache.key_hasher();
    key.field(name.as_bytes());
    source
        .cache_key(request, context, &mut key)
        .then(|| IdentityCache::key(&key))
}

/// The log line of a stale answer (`stale_if_error`): the source was unavailable and a user
/// it had answered before was served. `failure` is the call's, when this Check made it (not when
/// it waited for another Check's call).
fn log_stale_answer(source: &str, resolution: &Resolution, failure: Option<&Failure>) {
    let user = match resolution {
        Resolution::User(user) => user.id.as_str(),
        _ => "",
    };
    tracing::warn!(
        source,
        user_id = user,
        failure = failure.map_or("shared call", |f| f.reason),
        detail = failure.map_or("", |f| f.detail.as_str()),
        "identity source unavailable: serving the user it answered before (stale_if_error)"
    );
}

/// Encodes a JSON value as ASCII-only JSON (non-ASCII characters as `\u` escapes), so that the
/// result is a safe header value whatever the user's profile holds.
pub fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut units = [0u16; 2];
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn users_with_unsafe_values_are_refused() {
        let user = |id: &str, groups: &[&str]| {
            User::new(
                id.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
                vec![],
                "{}".to_owned(),
            )
        };
        assert!(user("alice", &["a", "b"]).is_ok());
        assert_eq!(user("", &[]), Err(UserError::EmptyId));
        assert_eq!(user("al\r\nice", &[]), Err(UserError::ControlCharacter));
        assert_eq!(user("alice", &["a\nb"]), Err(UserError::ControlCharacter));
        assert_eq!(user("alice", &["a,b"]), Err(UserError::CommaInGroup));
        assert_eq!(
            user(&"x".repeat(MAX_USER_HEADER_BYTES + 1), &[]),
            Err(UserError::TooLarge)
        );
        assert_eq!(
            user("alice", &["a", "b"]).map(|u| u.groups_header),
            Ok("a,b".to_owned())
        );
    }

    #[test]
    fn json_for_headers_is_ascii() {
        let value = json!({"name": "Zoë 😀", "line": "a\nb"});
        let text = ascii_json(&value);
        assert!(text.is_ascii(), "{text}");
        assert!(!text.contains('\n'));
        let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back, value);
    }
}
