//! The `ldap` source: a user name and password from `Authorization: Basic`, checked against an
//! LDAP directory (OpenLDAP, Active Directory) by binding as the user's entry.
//!
//! One login, on one pooled connection (bound as the service account when one is configured):
//! 1. the user's DN: a search under `user_search.base` with `{username}` put into the filter
//!    escaped per RFC 4515 (exactly one entry must match), or `user_dn_template` with the user
//!    name escaped per RFC 4514;
//! 2. the password: a simple bind as that DN. Security: an empty password is refused before
//!    anything is sent, because a simple bind with a DN and no password is an *unauthenticated*
//!    bind (RFC 4513 section 5.1.2) that many directories answer with success;
//! 3. the connection binds back to the service account (without one, the next reads run as the
//!    user, and the connection goes back to anonymous after them); the entry's attributes are
//!    read (from the search, or a base search in template mode) and the groups found: the first
//!    RDN value of each DN in the `memberOf`-style attribute, or the `name_attribute` of every
//!    group entry a group search (`member`/`uniqueMember`) finds. A refused bind also puts the
//!    connection back in its state between logins;
//! 4. the attributes map onto a user as the token sources' `claims` do
//!    ([`claims::user_from_claims`]).
//!
//! How answers map: no `Authorization: Basic` header is [`Resolution::NoCredential`] (the next
//! source is asked); a malformed one, an empty user name or password, an unknown user or a
//! wrong password is [`Resolution::Invalid`] (a 401 with `WWW-Authenticate: Basic realm=...`);
//! a directory that cannot be reached, answers an error, times out, or holds an entry that maps
//! onto no valid user is [`Resolution::Unavailable`] (503 on a private rule), never a 401.
//!
//! Connections are pooled and bounded (`max_connections`); a login waits for one within its
//! budget, [`Context::budget`] of `timeout`. A connection taken from the pool that turns out to
//! be broken (the directory restarted) is replaced once by a fresh one. A connection whose state
//! is not known after a failure is closed, never reused. Answers are cached by the identity
//! cache under a keyed hash of the user name and password, for the source's own `cache_ttl` and
//! `negative_ttl` ([`Source::cache_ttl`]).
//!
//! Called by the [`Resolver`](super::Resolver). Must never log the password or put it in a
//! failure's detail, and never treat an error as a login.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ldap3::asn1::{PL, StructureTag};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, ResultEntry, Scope, SearchEntry};
use serde_json::{Map, Value};

use super::{BoxFuture, CacheTtl, Context, Failure, KeyHasher, Resolution, Source, claims};
use crate::config::sources::{ClaimMapping, LdapScope, LdapSource};
use crate::request::Request;

/// The longest user name accepted; longer ones are refused without asking the directory.
pub const MAX_USERNAME_BYTES: usize = 256;
/// The longest password accepted.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The most group entries one group search reads.
pub const MAX_GROUPS: i32 = 1000;

/// LDAP result code 49, `invalidCredentials` (RFC 4511): a wrong password or an unknown DN.
const INVALID_CREDENTIALS: u32 = 49;
/// LDAP result code 4, `sizeLimitExceeded`: the entries read so far are still returned.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// Where the groups of the user's entry are found, ready to use.
enum Groups {
    /// An attribute of the user's entry holding the DNs of its groups.
    Attribute(String),
    Search {
        base: String,
        filter: String,
        scope: Scope,
        name_attribute: String,
    },
}

/// How the user's entry is found.
enum UserLookup {
    Search {
        base: String,
        filter: String,
        scope: Scope,
    },
    Template(String),
}

/// The `ldap` source. Holds the service account's password: deliberately not `Debug`.
pub struct Ldap {
    url: String,
    connection: LdapConnSettings,
    /// The service account (DN, password).
    service: Option<(String, String)>,
    user: UserLookup,
    groups: Groups,
    /// The attributes read from the user's entry.
    wanted: Vec<String>,
    user_id: String,
    permissions: Option<String>,
    properties: Vec<String>,
    mapping: ClaimMapping,
    timeout: Duration,
    ttl: CacheTtl,
    pool: Pool,
}

/// The key under which the groups found are handed to the claims mapping: a space starts no
/// attribute name, so no attribute of the entry can stand in for them.
const GROUPS_KEY: &str = " groups";
/// The same for "no permissions attribute configured".
const NO_PERMISSIONS: &str = " permissions";

impl Ldap {
    /// Validates the settings and reads the CA file; `env` is the process environment, read only
    /// when `bind_password_env` names a variable. Every problem is reported, each naming its
    /// field (`ldap.url: ...`). Connects to nothing.
    pub fn new(settings: &LdapSource, env: &HashMap<String, String>) -> Result<Ldap, Vec<String>> {
        let mut errors = Vec::new();
        let url = match reqwest::Url::parse(&settings.url) {
            Ok(url) if url.host_str().is_none_or(|h| h.is_empty()) => {
                errors.push(format!("ldap.url: \"{}\" names no host", settings.url));
                None
            }
            Ok(url) if !matches!(url.scheme(), "ldap" | "ldaps") => {
                errors.push(format!(
                    "ldap.url: \"{}\" is not an ldap:// or ldaps:// URL",
                    settings.url
                ));
                None
            }
            Ok(url) if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() => {
                errors.push(format!(
                    "ldap.url: \"{}\": give the base DN and filter in user_search, not in the URL",
                    settings.url
                ));
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                errors.push(format!("ldap.url: \"{}\" is not a URL: {e}", settings.url));
                None
            }
        };
        let tls = match &url {
            Some(url) if url.scheme() == "ldaps" => {
                if settings.start_tls {
                    errors.push(
                        "ldap.start_tls: an ldaps:// URL is already TLS; StartTLS is for ldap://"
                            .to_owned(),
                    );
                }
                true
            }
            Some(_) if settings.start_tls => true,
            Some(_) => {
                if !settings.allow_plaintext {
                    // Security: a Basic password would cross the network in clear.
                    errors.push(
                        "ldap.url: ldap:// sends passwords in clear; use ldaps://, set \
                         start_tls: true, or set allow_plaintext: true for a local directory"
                            .to_owned(),
                    );
                }
                false
            }
            None => false,
        };
        let tls_config = match (&settings.ca_file, tls) {
            (Some(ca), true) => match client_config(ca) {
                Ok(config) => Some(config),
                Err(e) => {
                    errors.push(format!("ldap.ca_file: {e}"));
                    None
                }
            },
            (None, true) => {
                errors.push(
                    "ldap.ca_file: required with ldaps:// or StartTLS (the PEM file of the CA \
                     that signed the directory's certificate)"
                        .to_owned(),
                );
                None
            }
            (Some(_), false) => {
                errors.push("ldap.ca_file: only used with ldaps:// or StartTLS".to_owned());
                None
            }
            (None, false) => None,
        };
        if !realm_is_safe(&settings.realm) {
            errors.push(
                "ldap.realm: must be 1 to 128 printable ASCII characters without '\"' or '\\'"
                    .to_owned(),
            );
        }
        let password = match (&settings.bind_password, &settings.bind_password_env) {
            (Some(_), Some(_)) => {
                errors.push(
                    "ldap.bind_password: give bind_password or bind_password_env, not both"
                        .to_owned(),
                );
                None
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(name)) => match env.get(name) {
                Some(p) => Some(p.clone()),
                None => {
                    errors.push(format!(
                        "ldap.bind_password_env: the environment variable {name} is not set"
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        let service = match (&settings.bind_dn, password) {
            (Some(dn), _) if dn.is_empty() => {
                errors.push("ldap.bind_dn: must not be empty".to_owned());
                None
            }
            // Security: an empty password would make the service bind an unauthenticated one.
            (Some(_), Some(p)) if p.is_empty() => {
                errors.push("ldap.bind_password: must not be empty".to_owned());
                None
            }
            (Some(dn), Some(p)) => Some((dn.clone(), p)),
            (Some(_), None) => {
                if settings.bind_password_env.is_none() {
                    errors.push(
                        "ldap.bind_password: bind_dn needs bind_password or bind_password_env"
                            .to_owned(),
                    );
                }
                None
            }
            (None, Some(_)) => {
                errors.push("ldap.bind_dn: a bind password is given without bind_dn".to_owned());
                None
            }
            (None, None) => None,
        };
        if let Some(search) = &settings.user_search {
            if search.base.is_empty() {
                errors.push("ldap.user_search.base: must not be empty".to_owned());
            }
            check_filter(
                "ldap.user_search.filter",
                &search.filter,
                &["username"],
                &mut errors,
            );
        }
        if let Some(template) = &settings.user_dn_template
            && (!template.contains("{username}") || !template.contains('='))
        {
            errors.push(
                "ldap.user_dn_template: must be a DN holding {username} \
                 (uid={username},ou=people,dc=example,dc=org)"
                    .to_owned(),
            );
        }
        let user = match (&settings.user_search, &settings.user_dn_template) {
            (Some(search), None) => Some(UserLookup::Search {
                base: search.base.clone(),
                filter: search.filter.clone(),
                scope: scope(search.scope),
            }),
            (None, Some(template)) => Some(UserLookup::Template(template.clone())),
            (Some(_), Some(_)) => {
                errors.push(
                    "ldap.user_search: give user_search or user_dn_template, not both".to_owned(),
                );
                None
            }
            (None, None) => {
                errors.push(
                    "ldap.user_search: one of user_search or user_dn_template is required"
                        .to_owned(),
                );
                None
            }
        };
        let groups = match &settings.groups.search {
            Some(search) => {
                if search.base.is_empty() {
                    errors.push("ldap.groups.search.base: must not be empty".to_owned());
                }
                check_filter(
                    "ldap.groups.search.filter",
                    &search.filter,
                    &["dn", "username"],
                    &mut errors,
                );
                if !is_attribute(&settings.groups.name_attribute) {
                    errors.push(format!(
                        "ldap.groups.name_attribute: \"{}\" is not an attribute name",
                        settings.groups.name_attribute
                    ));
                }
                Groups::Search {
                    base: search.base.clone(),
                    filter: search.filter.clone(),
                    scope: scope(search.scope),
                    name_attribute: settings.groups.name_attribute.clone(),
                }
            }
            None => {
                if !is_attribute(&settings.groups.attribute) {
                    errors.push(format!(
                        "ldap.groups.attribute: \"{}\" is not an attribute name",
                        settings.groups.attribute
                    ));
                }
                Groups::Attribute(settings.groups.attribute.clone())
            }
        };
        let attributes = &settings.attributes;
        let mut check_attribute = |field: &str, name: &str| {
            if !is_attribute(name) {
                errors.push(format!(
                    "ldap.attributes.{field}: \"{name}\" is not an attribute name"
                ));
            }
        };
        check_attribute("user_id", &attributes.user_id);
        if let Some(permissions) = &attributes.permissions {
            check_attribute("permissions", permissions);
        }
        for (i, property) in attributes.properties.iter().enumerate() {
            check_attribute(&format!("properties[{i}]"), property);
        }
        if settings.timeout.0.is_zero() {
            errors.push("ldap.timeout: must be more than zero".to_owned());
        }
        if settings.max_connections == 0 || settings.max_connections > 1024 {
            errors.push("ldap.max_connections: must be between 1 and 1024".to_owned());
        }
        if settings.cache_ttl.0 < settings.negative_ttl.0 {
            errors.push(
                "ldap.negative_ttl: must not be longer than cache_ttl (a refusal would outlive \
                 a login)"
                    .to_owned(),
            );
        }
        let (Some(url), Some(user), true) = (url, user, errors.is_empty()) else {
            return Err(errors);
        };

        let mut wanted = vec![attributes.user_id.clone()];
        wanted.extend(attributes.permissions.iter().cloned());
        wanted.extend(attributes.properties.iter().cloned());
        if let Groups::Attribute(attribute) = &groups {
            wanted.push(attribute.clone());
        }
        wanted.sort_by_key(|a| a.to_ascii_lowercase());
        wanted.dedup_by_key(|a| a.to_ascii_lowercase());

        let mut connection = LdapConnSettings::new().set_starttls(settings.start_tls);
        if let Some(config) = tls_config {
            connection = connection.set_config(config);
        }
        Ok(Ldap {
            url: url.to_string(),
            connection,
            service,
            user,
            groups,
            wanted,
            user_id: attributes.user_id.clone(),
            permissions: attributes.permissions.clone(),
            properties: attributes.properties.clone(),
            mapping: ClaimMapping {
                user_id: attributes.user_id.clone(),
                groups: GROUPS_KEY.to_owned(),
                permissions: attributes
                    .permissions
                    .clone()
                    .unwrap_or_else(|| NO_PERMISSIONS.to_owned()),
                properties: attributes.properties.clone(),
            },
            timeout: settings.timeout.0,
            ttl: CacheTtl {
                ttl: settings.cache_ttl.0,
                negative_ttl: settings.negative_ttl.0,
            },
            pool: Pool {
                idle: std::sync::Mutex::new(Vec::new()),
                slots: tokio::sync::Semaphore::new(settings.max_connections),
            },
        })
    }

    async fn call(&self, request: &Request, context: &Context) -> Resolution {
        let credentials = match basic_credentials(request) {
            None => return Resolution::NoCredential,
            Some(Err(refused)) => return Resolution::Invalid(refused),
            Some(Ok(credentials)) => credentials,
        };
        let budget = context.budget(self.timeout);
        if budget.is_zero() {
            return Resolution::Unavailable(Failure::new(
                "deadline_exceeded",
                "no time left before the Check's deadline",
            ));
        }
        match tokio::time::timeout(budget, self.login(&credentials, budget)).await {
            Err(_) => Resolution::Unavailable(Failure::new(
                "ldap_timeout",
                format!("the directory did not answer within {budget:?}"),
            )),
            Ok(Err(broken)) => Resolution::Unavailable(broken.failure),
            Ok(Ok(Found::Refused(failure))) => Resolution::Invalid(failure),
            Ok(Ok(Found::User(claims))) => self.user(&claims),
        }
    }

    /// One login on a pooled connection; a reused connection that turns out broken is replaced
    /// once by a fresh one.
    async fn login(&self, credentials: &Credentials, budget: Duration) -> Result<Found, Broken> {
        let mut lease = self.pool.lease().await?;
        if lease.conn.is_none() {
            lease.conn = Some(self.connect(budget).await?);
        }
        let first = self.attempt(&mut lease, credentials).await;
        let found = match first {
            Err(Broken {
                transport: true, ..
            }) if lease.reused => {
                lease.reused = false;
                lease.conn = Some(self.connect(budget).await?);
                self.attempt(&mut lease, credentials).await
            }
            other => other,
        };
        if found.is_ok() {
            lease.keep();
        }
        found
    }

    /// A new connection, bound as the service account when one is configured.
    async fn connect(&self, budget: Duration) -> Result<ldap3::Ldap, Broken> {
        let settings = self.connection.clone().set_conn_timeout(budget);
        let (driver, mut conn) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| Broken::transport("ldap_unreachable", "connecting", &e))?;
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                tracing::debug!(error = %e, "ldap connection ended");
            }
        });
        if self.service.is_some() {
            self.reset(&mut conn).await?;
        }
        Ok(conn)
    }

    /// Binds `conn` as the service account, or anonymously without one: the state a connection
    /// is kept in between logins.
    async fn reset(&self, conn: &mut ldap3::Ldap) -> Result<(), Broken> {
        let (dn, password) = match &self.service {
            Some((dn, password)) => (dn.as_str(), password.as_str()),
            None => ("", ""),
        };
        let result = conn.simple_bind(dn, password).await.map_err(|e| {
            Broken::classify("ldap_service_bind", "binding as the service account", e)
        })?;
        if result.rc != 0 {
            return Err(Broken::answer(
                "ldap_service_bind",
                format!(
                    "the service account's bind was refused: {}",
                    describe_result(&result)
                ),
            ));
        }
        Ok(())
    }

    /// Steps 1 to 3 of the module doc on the lease's connection.
    async fn attempt(
        &self,
        lease: &mut Lease<'_>,
        credentials: &Credentials,
    ) -> Result<Found, Broken> {
        let Some(conn) = lease.conn.as_mut() else {
            return Err(Broken::answer(
                "ldap_unreachable",
                "no connection".to_owned(),
            ));
        };
        let (dn, mut entry) = match &self.user {
            UserLookup::Search {
                base,
                filter,
                scope,
            } => {
                let filter =
                    filter.replace("{username}", &ldap3::ldap_escape(credentials.user.as_str()));
                let mut entries =
                    search(conn, base, *scope, &filter, &self.wanted, 2, "user").await?;
                if entries.len() > 1 {
                    return Err(Broken::answer(
                        "ldap_ambiguous_user",
                        format!("more than one entry under \"{base}\" matches the user filter"),
                    ));
                }
                let Some(entry) = entries.pop() else {
                    return Ok(Found::Refused(Failure::new(
                        "ldap_unknown_user",
                        "no entry matches the user name",
                    )));
                };
                (entry.dn.clone(), Some(entry))
            }
            UserLookup::Template(template) => (
                template.replace("{username}", &ldap3::dn_escape(credentials.user.as_str())),
                None,
            ),
        };

        // Security: the password is checked by the directory, as the entry itself.
        let bind = conn.simple_bind(&dn, &credentials.password).await;
        let refused = match bind {
            Ok(result) if result.rc == 0 => false,
            Ok(result) if result.rc == INVALID_CREDENTIALS => true,
            Ok(result) => {
                return Err(Broken::answer(
                    "ldap_bind",
                    format!("the user's bind failed: {}", describe_result(&result)),
                ));
            }
            Err(e) => return Err(Broken::classify("ldap_bind", "binding as the user", e)),
        };
        if refused {
            // Security: a failed bind leaves the connection anonymous (RFC 4511 section 4.2.1);
            // it goes back to its usual state before being reused.
            self.reset(conn).await?;
            return Ok(Found::Refused(Failure::new(
                "ldap_invalid_credentials",
                "the directory refused the password",
            )));
        }
        // Template mode without a service account reads the entry as the user, before the
        // connection goes back to anonymous.
        if self.service.is_some() {
            self.reset(conn).await?;
        }
        if entry.is_none() {
            let mut entries = search(
                conn,
                &dn,
                Scope::Base,
                "(objectClass=*)",
                &self.wanted,
                1,
                "user",
            )
            .await?;
            entry = entries.pop();
        }
        let Some(entry) = entry else {
            return Err(Broken::answer(
                "ldap_entry_unreadable",
                "the user's entry cannot be read after the bind".to_owned(),
            ));
        };
        let groups = match &self.groups {
            Groups::Attribute(attribute) => values(&entry, attribute)
                .iter()
                .filter_map(|dn| first_rdn_value(dn))
                .collect::<Vec<_>>(),
            Groups::Search {
                base,
                filter,
                scope,
                name_attribute,
            } => {
                let filter = filter
                    .replace("{dn}", &ldap3::ldap_escape(dn.as_str()))
                    .replace("{username}", &ldap3::ldap_escape(credentials.user.as_str()));
                let found = search(
                    conn,
                    base,
                    *scope,
                    &filter,
                    std::slice::from_ref(name_attribute),
                    MAX_GROUPS,
                    "group",
                )
                .await?;
                found
                    .iter()
                    .filter_map(|group| values(group, name_attribute).first().cloned())
                    .collect()
            }
        };
        if self.service.is_none() {
            self.reset(conn).await?;
        }
        Ok(Found::User(self.claims(&entry, groups)))
    }

    /// The entry's attributes as the claims mapping reads them.
    fn claims(&self, entry: &SearchEntry, mut groups: Vec<String>) -> Map<String, Value> {
        let mut claims = Map::new();
        let mut put = |name: &str| {
            let found = values(entry, name);
            let value = match found {
                [] => return,
                [one] => Value::String(one.clone()),
                many => Value::Array(many.iter().cloned().map(Value::String).collect()),
            };
            claims.insert(name.to_owned(), value);
        };
        put(&self.user_id);
        if let Some(permissions) = &self.permissions {
            put(permissions);
        }
        for property in &self.properties {
            put(property);
        }
        groups.sort();
        groups.dedup();
        claims.insert(
            GROUPS_KEY.to_owned(),
            Value::Array(groups.into_iter().map(Value::String).collect()),
        );
        claims
    }

    fn user(&self, claims: &Map<String, Value>) -> Resolution {
        match claims::user_from_claims(claims, &self.mapping) {
            Ok(Some(user)) => Resolution::User(Arc::new(user)),
            Ok(None) => Resolution::Unavailable(Failure::new(
                "ldap_no_user_id",
                format!("the user's entry has no \"{}\"", self.user_id),
            )),
            Err(e) => Resolution::Unavailable(Failure::new("ldap_malformed", e)),
        }
    }
}

/// What a login found, when the directory answered.
enum Found {
    /// The claims of the user's entry, groups included.
    User(Map<String, Value>),
    /// The credentials are wrong: unknown user or wrong password.
    Refused(Failure),
}

/// Why a login could not be decided.
struct Broken {
    failure: Failure,
    /// The connection itself failed (closed, reset), rather than the directory answering an
    /// error: worth one more try on a fresh connection when this one came from the pool.
    transport: bool,
}

impl Broken {
    fn answer(reason: &'static str, detail: String) -> Broken {
        Broken {
            failure: Failure::new(reason, detail),
            transport: false,
        }
    }

    fn transport(reason: &'static str, doing: &str, error: &LdapError) -> Broken {
        Broken {
            failure: Failure::new(reason, format!("{doing}: {error}")),
            transport: true,
        }
    }

    /// An error of an operation: an LDAP result is the directory's answer, anything else (I/O,
    /// a closed connection) is the transport.
    fn classify(reason: &'static str, doing: &str, error: LdapError) -> Broken {
        match error {
            LdapError::LdapResult { result } => {
                Broken::answer(reason, format!("{doing}: {}", describe_result(&result)))
            }
            other => Broken::transport(reason, doing, &other),
        }
    }
}

/// A result's code and diagnostic text (never a password: binds carry none back).
fn describe_result(result: &ldap3::LdapResult) -> String {
    if result.text.is_empty() {
        format!("result code {}", result.rc)
    } else {
        format!("result code {} ({})", result.rc, result.text)
    }
}

/// A search that reads at most `limit` entries; more than `limit` is not an error (the caller
/// decides), any other non-success result is.
async fn search(
    conn: &mut ldap3::Ldap,
    base: &str,
    scope: Scope,
    filter: &str,
    attributes: &[String],
    limit: i32,
    what: &str,
) -> Result<Vec<SearchEntry>, Broken> {
    let doing = format!("searching for the {what}");
    let ldap3::SearchResult(entries, result) = conn
        .with_search_options(ldap3::SearchOptions::new().sizelimit(limit))
        .search(base, scope, filter, attributes)
        .await
        .map_err(|e| Broken::classify("ldap_search", &doing, e))?;
    if result.rc != 0 && result.rc != SIZE_LIMIT_EXCEEDED {
        return Err(Broken::answer(
            "ldap_search",
            format!("{doing}: {}", describe_result(&result)),
        ));
    }
    entries
        .into_iter()
        .map(|entry| {
            // Security: `SearchEntry::construct` panics on an entry of an unexpected shape; a
            // misbehaving directory must not panic the request path.
            if well_formed(&entry) {
                Ok(SearchEntry::construct(entry))
            } else {
                Err(Broken::answer(
                    "ldap_malformed",
                    format!("{doing}: the directory sent a malformed entry"),
                ))
            }
        })
        .collect()
}

/// Whether a search result entry has the shape `SearchEntry::construct` expects (RFC 4511
/// SearchResultEntry: a DN, then attributes, each a type and a set of values).
fn well_formed(entry: &ResultEntry) -> bool {
    fn text(tag: &StructureTag) -> bool {
        matches!(&tag.payload, PL::P(bytes) if std::str::from_utf8(bytes).is_ok())
    }
    let tag = &entry.0;
    let PL::C(parts) = &tag.payload else {
        return false;
    };
    let [dn, attributes, ..] = parts.as_slice() else {
        return false;
    };
    let PL::C(attributes) = &attributes.payload else {
        return false;
    };
    tag.id == 4
        && text(dn)
        && attributes.iter().all(|attribute| match &attribute.payload {
            PL::C(pair) => match pair.as_slice() {
                [kind, values, ..] => {
                    text(kind)
                        && matches!(&values.payload, PL::C(values)
                            if values.iter().all(|v| matches!(v.payload, PL::P(_))))
                }
                _ => false,
            },
            PL::P(_) => false,
        })
}

/// The text values of an attribute, its name compared without case (LDAP's rule).
fn values<'e>(entry: &'e SearchEntry, name: &str) -> &'e [String] {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or(&[], |(_, v)| v.as_slice())
}

/// The value of a DN's first RDN (`admins` for `cn=admins,ou=groups,dc=example,dc=org`), with
/// RFC 4514 escapes (`\,`, `\2C`) undone; the first value of a multi-valued RDN. `None` for a
/// string that is not a DN or a value in `#` (BER) form.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    let bytes = rest.as_bytes();
    if bytes.first() == Some(&b'#') {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b',' | b'+' | b';' => break,
            b'\\' => {
                let next = *bytes.get(i + 1)?;
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(next), bytes.get(i + 2).and_then(|&c| hex(c))) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(next);
                        i += 2;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    let value = String::from_utf8(out).ok()?;
    let value = value.trim_matches(' ');
    (!value.is_empty()).then(|| value.to_owned())
}

/// Whether `name` is an attribute description: a name (letters, digits, `-`) or an OID.
fn is_attribute(name: &str) -> bool {
    let descr = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !name.is_empty()
        && name
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    descr || oid
}

/// Whether a realm can go between the quotes of a challenge as it is.
fn realm_is_safe(realm: &str) -> bool {
    (1..=128).contains(&realm.len())
        && realm
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// Checks a filter template: parenthesised, only the given `{placeholders}`, and a valid RFC 4515
/// filter once they are filled in.
fn check_filter(field: &str, filter: &str, allowed: &[&str], errors: &mut Vec<String>) {
    let mut rest = filter;
    let mut filled = String::with_capacity(filter.len());
    while let Some((before, after)) = rest.split_once('{') {
        filled.push_str(before);
        match after.split_once('}') {
            Some((name, tail)) if allowed.contains(&name) => {
                filled.push('x');
                rest = tail;
            }
            _ => {
                errors.push(format!(
                    "{field}: \"{filter}\" holds a placeholder other than {}",
                    allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return;
            }
        }
    }
    filled.push_str(rest);
    let parenthesised = filled.starts_with('(') && filled.ends_with(')');
    if !parenthesised || ldap3::parse_filter(&filled).is_err() {
        errors.push(format!(
            "{field}: \"{filter}\" is not an LDAP filter (RFC 4515)"
        ));
    }
}

fn scope(scope: LdapScope) -> Scope {
    match scope {
        LdapScope::Sub => Scope::Subtree,
        LdapScope::One => Scope::OneLevel,
    }
}

/// The rustls client configuration that trusts exactly the certificates in `path`.
fn client_config(path: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A user name and password from `Authorization: Basic` (RFC 7617).
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// The request's Basic credentials: `None` without an `Authorization: Basic` header, an error
/// (a 401) when the header is malformed or a part is empty, too long or holds a control
/// character.
pub fn basic_credentials(request: &Request) -> Option<Result<Credentials, Failure>> {
    let value = request.header("authorization")?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let malformed = |detail: &str| Some(Err(Failure::new("ldap_malformed_credentials", detail)));
    let encoded = encoded.trim();
    if encoded.len() > 4 * (MAX_USERNAME_BYTES + MAX_PASSWORD_BYTES) {
        return malformed("the Basic credentials are too long");
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return malformed("the Basic credentials are not base64");
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return malformed("the Basic credentials are not UTF-8");
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return malformed("the Basic credentials hold no ':'");
    };
    if user.is_empty() {
        return malformed("the user name is empty");
    }
    // Security: a simple bind with an empty password is an unauthenticated bind, which
    // directories may answer with success; it never counts as a login.
    if password.is_empty() {
        return Some(Err(Failure::new(
            "ldap_empty_password",
            "the password is empty",
        )));
    }
    if user.len() > MAX_USERNAME_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return malformed("the user name or password is too long");
    }
    if user.chars().any(char::is_control) {
        return malformed("the user name holds a control character");
    }
    Some(Ok(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    }))
}

/// The bounded pool of connections, each bound as the service account (or anonymous) while idle.
struct Pool {
    idle: std::sync::Mutex<Vec<ldap3::Ldap>>,
    /// One permit per connection in use; idle connections are only ever taken by a permit
    /// holder and made only when none is idle, so open connections never exceed the permits.
    slots: tokio::sync::Semaphore,
}

impl Pool {
    /// A slot, with an idle connection when one is still open.
    async fn lease(&self) -> Result<Lease<'_>, Broken> {
        let slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Broken::answer("ldap_unreachable", "the pool is closed".to_owned()))?;
        let mut conn = None;
        if let Ok(mut idle) = self.idle.lock() {
            while let Some(mut candidate) = idle.pop() {
                if !candidate.is_closed() {
                    conn = Some(candidate);
                    break;
                }
            }
        }
        Ok(Lease {
            pool: self,
            reused: conn.is_some(),
            conn,
            _slot: slot,
        })
    }
}

/// A connection in use. Dropped without [`Lease::keep`] (an error, a timeout, a cancelled
/// Check), it is closed: its state is not known.
struct Lease<'p> {
    pool: &'p Pool,
    conn: Option<ldap3::Ldap>,
    /// Whether the connection came from the pool (then a transport error earns one retry).
    reused: bool,
    _slot: tokio::sync::SemaphorePermit<'p>,
}

impl Lease<'_> {
    /// Puts the connection back for the next login.
    fn keep(mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.idle.lock()) {
            idle.push(conn);
        }
    }
}

impl Source for Ldap {
    fn name(&self) -> &'static str {
        "ldap"
    }

    fn request_headers(&self) -> Vec<String> {
        vec!["authorization".to_owned()]
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

    /// The answer depends on the user name and the password. Security: the cache hashes them
    /// under a per-process key; it never stores them. Malformed credentials are refused without
    /// a call and not cached.
    fn cache_key(&self, request: &Request, _context: &Context, key: &mut KeyHasher) -> bool {
        let Some(Ok(credentials)) = basic_credentials(request) else {
            return false;
        };
        key.field(self.url.as_bytes());
        key.field(credentials.user.as_bytes());
        key.field(credentials.password.as_bytes());
        true
    }

    fn cache_ttl(&self) -> Option<CacheTtl> {
        Some(self.ttl)
    }
}

#[cfg(test)]
#[allow(clippy::string_slice)] // Tests: a slice out of bounds is a failed test.
mod tests {
    use super::*;
    use crate::config::sources::{LdapAttributes, LdapGroups, LdapSearch, Span};

    fn settings() -> LdapSource {
        LdapSource {
            name: None,
            url: "ldap://127.0.0.1:389".into(),
            start_tls: false,
            ca_file: None,
            allow_plaintext: true,
            realm: "checkpoint".into(),
            bind_dn: Some("cn=checkpoint,dc=example,dc=org".into()),
            bind_password: Some("secret".into()),
            bind_password_env: None,
            user_search: Some(LdapSearch {
                base: "ou=people,dc=example,dc=org".into(),
                filter: "(uid={username})".into(),
                scope: LdapScope::Sub,
            }),
            user_dn_template: None,
            groups: LdapGroups::default(),
            attributes: LdapAttributes::default(),
            timeout: Span(Duration::from_secs(5)),
            max_connections: 4,
            cache_ttl: Span(Duration::from_secs(60)),
            negative_ttl: Span(Duration::from_secs(5)),
        }
    }

    fn errors(settings: &LdapSource, env: &[(&str, &str)]) -> String {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match Ldap::new(settings, &env) {
            Ok(_) => String::new(),
            Err(e) => e.join("; "),
        }
    }

    use crate::request::with_authorization as request;

    fn basic(pair: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[test]
    fn valid_settings_build() {
        assert_eq!(errors(&settings(), &[]), "");
        let template = LdapSource {
            user_search: None,
            user_dn_template: Some("uid={username},ou=people,dc=example,dc=org".into()),
            bind_dn: None,
            bind_password: None,
            ..settings()
        };
        assert_eq!(errors(&template, &[]), "");
        let from_env = LdapSource {
            bind_password: None,
            bind_password_env: Some("LDAP_PASSWORD".into()),
            ..settings()
        };
        assert_eq!(errors(&from_env, &[("LDAP_PASSWORD", "x")]), "");
        assert!(errors(&from_env, &[]).contains("LDAP_PASSWORD is not set"));
    }

    #[test]
    fn every_settings_problem_is_reported_with_its_field() {
        let bad = LdapSource {
            url: "http://x".into(),
            realm: "a\"b".into(),
            bind_password: Some(String::new()),
            user_search: Some(LdapSearch {
                base: String::new(),
                filter: "(uid={user})".into(),
                scope: LdapScope::Sub,
            }),
            user_dn_template: Some("uid={username},dc=x".into()),
            attributes: LdapAttributes {
                user_id: "u id".into(),
                permissions: None,
                properties: vec!["ok".into(), "(bad)".into()],
            },
            timeout: Span(Duration::ZERO),
            max_connections: 0,
            negative_ttl: Span(Duration::from_secs(120)),
            ..settings()
        };
        let e = errors(&bad, &[]);
        for field in [
            "ldap.url: \"http://x\" is not an ldap:// or ldaps:// URL",
            "ldap.realm",
            "ldap.bind_password: must not be empty",
            "ldap.user_search: give user_search or user_dn_template, not both",
            "ldap.user_search.base",
            "ldap.user_search.filter",
            "ldap.attributes.user_id",
            "ldap.attributes.properties[1]",
            "ldap.timeout",
            "ldap.max_connections",
            "ldap.negative_ttl",
        ] {
            assert!(e.contains(field), "{field} in {e}");
        }
        assert!(!e.contains("properties[0]"), "{e}");
    }

    #[test]
    fn transport_security_is_explicit() {
        let plain = LdapSource {
            allow_plaintext: false,
            ..settings()
        };
        assert!(errors(&plain, &[]).contains("ldap:// sends passwords in clear"));
        let tls_without_ca = LdapSource {
            url: "ldaps://ldap.example".into(),
            allow_plaintext: false,
            ..settings()
        };
        assert!(errors(&tls_without_ca, &[]).contains("ldap.ca_file: required"));
        let starttls_missing_file = LdapSource {
            start_tls: true,
            allow_plaintext: false,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..settings()
        };
        assert!(errors(&starttls_missing_file, &[]).contains("ldap.ca_file: cannot read"));
        let both = LdapSource {
            url: "ldaps://ldap.example".into(),
            start_tls: true,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..settings()
        };
        assert!(errors(&both, &[]).contains("ldap.start_tls"));
        let in_url = LdapSource {
            url: "ldap://h/dc=x??sub?(uid=a)".into(),
            ..settings()
        };
        assert!(errors(&in_url, &[]).contains("not in the URL"));
    }

    #[test]
    fn basic_credentials_are_read_strictly() {
        let read = |value: &str| match basic_credentials(&request(value)) {
            None => "none".to_owned(),
            Some(Err(f)) => f.reason.to_owned(),
            Some(Ok(c)) => format!("{}|{}", c.user, c.password),
        };
        assert_eq!(read(&basic("alice:pa:ss")), "alice|pa:ss");
        assert_eq!(read(&format!("basic  {}", &basic("bob:x")[6..])), "bob|x");
        assert_eq!(read("Bearer abc"), "none");
        assert_eq!(read("Basic"), "none");
        assert_eq!(read(&basic("alice:")), "ldap_empty_password");
        assert_eq!(read(&basic(":pw")), "ldap_malformed_credentials");
        assert_eq!(read(&basic("alice")), "ldap_malformed_credentials");
        assert_eq!(read("Basic !!!"), "ldap_malformed_credentials");
        assert_eq!(read(&basic("a\nb:pw")), "ldap_malformed_credentials");
        let long = format!("{}:pw", "u".repeat(MAX_USERNAME_BYTES + 1));
        assert_eq!(read(&basic(&long)), "ldap_malformed_credentials");
    }

    #[test]
    fn group_names_are_the_first_rdn_value() {
        for (dn, want) in [
            ("cn=admins,ou=groups,dc=example,dc=org", Some("admins")),
            ("CN=Domain Admins,CN=Users,DC=corp", Some("Domain Admins")),
            (r"cn=R\2CD,ou=g", Some("R,D")),
            (r"cn=R\,D\+E,ou=g", Some("R,D+E")),
            ("cn=a+uid=b,ou=g", Some("a")),
            (r"cn=caf\C3\A9,ou=g", Some("café")),
            ("cn=#04024869,ou=g", None),
            ("no equals sign", None),
            ("cn=,ou=g", None),
            (r"cn=trailing\", None),
        ] {
            assert_eq!(first_rdn_value(dn).as_deref(), want, "{dn}");
        }
    }

    #[test]
    fn attribute_names_and_filters_are_checked() {
        for ok in ["uid", "memberOf", "sAMAccountName", "x-custom", "2.5.4.3"] {
            assert!(is_attribute(ok), "{ok}");
        }
        for bad in ["", "1abc", "u id", "a,b", "2..5", "(uid)"] {
            assert!(!is_attribute(bad), "{bad}");
        }
        let mut errors = Vec::new();
        check_filter("f", "(uid={username})", &["username"], &mut errors);
        check_filter(
            "f",
            "(&(member={dn})(cn=*))",
            &["dn", "username"],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        check_filter("f", "(uid={user})", &["username"], &mut errors);
        check_filter("f", "uid={username}", &["username"], &mut errors);
        check_filter("f", "(uid={username}", &["username"], &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn escaping_keeps_user_names_literal() {
        // The filter and DN escapes of ldap3, as the lookups use them.
        assert_eq!(ldap3::ldap_escape("*)(uid=*"), r"\2a\29\28uid=\2a");
        assert_eq!(ldap3::dn_escape("a,b=c"), r"a\2cb\3dc");
        assert_eq!(ldap3::dn_escape(" lead"), r"\20lead");
    }

    #[test]
    fn malformed_entries_are_caught_before_parsing() {
        use ldap3::asn1::TagClass;
        let tag = |id: u64, payload: PL| StructureTag {
            class: TagClass::Application,
            id,
            payload,
        };
        let text = |s: &str| tag(4, PL::P(s.as_bytes().to_vec()));
        let good = tag(
            4,
            PL::C(vec![
                text("uid=a,dc=x"),
                tag(
                    16,
                    PL::C(vec![tag(
                        16,
                        PL::C(vec![text("uid"), tag(17, PL::C(vec![text("a")]))]),
                    )]),
                ),
            ]),
        );
        assert!(well_formed(&ResultEntry::new(good.clone())));
        let entry = SearchEntry::construct(ResultEntry::new(good));
        assert_eq!(entry.attrs.get("uid"), Some(&vec!["a".to_owned()]));
        for bad in [
            tag(5, PL::C(vec![text("dn"), tag(16, PL::C(vec![]))])),
            tag(4, PL::P(vec![])),
            tag(4, PL::C(vec![text("dn")])),
            tag(
                4,
                PL::C(vec![tag(4, PL::P(vec![0xff])), tag(16, PL::C(vec![]))]),
            ),
            tag(4, PL::C(vec![text("dn"), tag(16, PL::C(vec![text("x")]))])),
            tag(
                4,
                PL::C(vec![
                    text("dn"),
                    tag(
                        16,
                        PL::C(vec![tag(16, PL::C(vec![text("uid"), text("v")]))]),
                    ),
                ]),
            ),
        ] {
            assert!(!well_formed(&ResultEntry::new(bad.clone())), "{bad:?}");
        }
    }

    #[test]
    fn realms_are_safe_header_text() {
        assert!(realm_is_safe("checkpoint"));
        assert!(realm_is_safe("Example Corp (staff)"));
        for bad in ["", "a\"b", "a\\b", "caf\u{e9}", "a\r\nb"] {
            assert!(!realm_is_safe(bad), "{bad:?}");
        }
    }
}
