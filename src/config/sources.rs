//! The settings of each identity source, as the native configuration file writes them.
//!
//! Read by `config::file` (the native file) and built by `config::env` (Mia's variables map onto
//! a `userinfo` or `trusted_headers` source). Each source module in `identity/` takes its own
//! settings struct from here. Every struct refuses unknown fields.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::duration;

/// A duration written `500ms`, `5s`, `1m`, `1h`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Text(String),
            Number(f64),
        }
        let text = match Text::deserialize(deserializer)? {
            Text::Text(t) => t,
            Text::Number(n) => n.to_string(),
        };
        duration::parse(&text)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Span {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a duration: 500ms, 5s, 1m, 1h, or a number of seconds",
            "anyOf": [
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)?$" },
                { "type": "number", "minimum": 0 }
            ]
        })
    }
}

/// One identity source, in the order the sources are asked.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSettings {
    /// The authentication manager's user-info endpoint (Mia's default flow).
    Userinfo(UserinfoSource),
    /// Local validation of JWT access or ID tokens against the issuer's keys.
    Jwt(JwtSource),
    /// RFC 7662 token introspection.
    Introspection(IntrospectionSource),
    /// Mia's client keys, resolving to a client type.
    ApiKey(ApiKeySource),
    /// The caller's peer certificate identity (SPIFFE id or subject) as Envoy reports it.
    Mtls(MtlsSource),
    /// A payload that Envoy's jwt_authn filter already verified (`metadata_context`).
    EnvoyMetadata(EnvoyMetadataSource),
    /// Mia's trust mode: the user headers of the request.
    TrustedHeaders(TrustedHeadersSource),
    /// An LDAP directory (OpenLDAP, Active Directory): HTTP Basic credentials checked by binding.
    Ldap(LdapSource),
    /// Always answers "anonymous": ends the list explicitly.
    Anonymous(AnonymousSource),
}

impl SourceSettings {
    /// The name rules use to choose this source: `name`, or the type.
    pub fn name(&self) -> &str {
        let (name, kind) = match self {
            SourceSettings::Userinfo(s) => (&s.name, "userinfo"),
            SourceSettings::Jwt(s) => (&s.name, "jwt"),
            SourceSettings::Introspection(s) => (&s.name, "introspection"),
            SourceSettings::ApiKey(s) => (&s.name, "api_key"),
            SourceSettings::Mtls(s) => (&s.name, "mtls"),
            SourceSettings::EnvoyMetadata(s) => (&s.name, "envoy_metadata"),
            SourceSettings::TrustedHeaders(s) => (&s.name, "trusted_headers"),
            SourceSettings::Ldap(s) => (&s.name, "ldap"),
            SourceSettings::Anonymous(s) => (&s.name, "anonymous"),
        };
        name.as_deref().unwrap_or(kind)
    }
}

/// The (name, realm) of every `ldap` source, for the `WWW-Authenticate: Basic` challenges.
pub fn basic_realms(sources: &[SourceSettings]) -> Vec<(String, String)> {
    sources
        .iter()
        .filter_map(|source| match source {
            SourceSettings::Ldap(ldap) => Some((source.name().to_owned(), ldap.realm.clone())),
            _ => None,
        })
        .collect()
}

/// Where a token is read from: `bearer`, `{ header: NAME }` or `{ cookie: NAME }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenLocation {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The whole value of this request header.
    Header(String),
    /// The value of this cookie.
    Cookie(String),
}

/// How a verified payload (JWT claims, introspection answer, Envoy metadata) becomes a user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// Dotted path of the user id. Default `sub`.
    pub user_id: String,
    /// Dotted path of the groups: an array of strings, or a space/comma-separated string
    /// (e.g. `groups`, `realm_access.roles`). Default `groups`.
    pub groups: String,
    /// Dotted path of the permissions: an array, or a space-separated string such as `scope`.
    /// Default `permissions`.
    pub permissions: String,
    /// Claims copied into the properties header.
    pub properties: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            user_id: "sub".into(),
            groups: "groups".into(),
            permissions: "permissions".into(),
            properties: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserinfoSource {
    pub name: Option<String>,
    pub url: String,
    pub backoffice_url: Option<String>,
    /// Request headers copied onto the call (lower-cased); no other header is sent.
    #[serde(default = "default_headers_to_proxy")]
    pub headers_to_proxy: Vec<String>,
    /// If non-empty and the request carries none of these, the source passes on.
    #[serde(default)]
    pub authorization_headers: Vec<String>,
    #[serde(default = "default_userinfo_timeout")]
    pub timeout: Span,
    #[serde(default = "default_user_id_key")]
    pub user_id_key: String,
    pub permissions_key: Option<String>,
    /// User-info fields copied into the properties header.
    #[serde(default)]
    pub properties: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSource {
    pub name: Option<String>,
    /// The issuer (`iss`); its keys are found through OIDC discovery
    /// (`<issuer>/.well-known/openid-configuration`) unless `jwks_uri` is given.
    pub issuer: String,
    pub jwks_uri: Option<String>,
    /// Accepted audiences (`aud`); a token must name at least one. Empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted algorithms; default RS256, ES256. Only asymmetric algorithms are accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s.
    #[serde(default = "default_leeway")]
    pub leeway: Span,
    /// Required `typ` header (e.g. `at+jwt`), compared case-insensitively.
    pub typ: Option<String>,
    #[serde(
        default = "default_bearer",
        deserialize_with = "serde_yaml_ng::with::singleton_map::deserialize"
    )]
    pub token: TokenLocation,
    #[serde(default)]
    pub claims: ClaimMapping,
    /// How often the keys are refetched. Default 10m.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: Span,
    /// Least time between two fetches caused by an unknown `kid`. Default 10s.
    #[serde(default = "default_jwks_min_refresh")]
    pub min_refresh_interval: Span,
    /// Bound of discovery and key fetches. Default 5s.
    #[serde(default = "default_userinfo_timeout")]
    pub timeout: Span,
    /// How long key fetches may keep failing before tokens are answered 503 (`jwks_stale`)
    /// rather than verified with the keys last fetched. Default 0: the keys last fetched are
    /// used for as long as fetches fail.
    #[serde(default)]
    pub max_key_staleness: Span,
}

/// How the introspection client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSource {
    pub name: Option<String>,
    /// The RFC 7662 endpoint.
    pub endpoint: String,
    pub client_id: String,
    /// The client secret; `client_secret_env` names an environment variable holding it instead.
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    #[serde(default = "default_client_auth")]
    pub auth_method: ClientAuth,
    #[serde(
        default = "default_bearer",
        deserialize_with = "serde_yaml_ng::with::singleton_map::deserialize"
    )]
    pub token: TokenLocation,
    #[serde(default)]
    pub claims: ClaimMapping,
    #[serde(default = "default_userinfo_timeout")]
    pub timeout: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Lower-case hex SHA-256 digest of the key; the key itself is never configured.
    pub sha256: String,
    /// The `clientType` the key resolves to.
    pub client_type: String,
    /// Groups granted to callers presenting the key.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySource {
    pub name: Option<String>,
    /// Request headers that may carry the key. Default `secret`, `client-key`.
    #[serde(default = "default_api_key_headers")]
    pub headers: Vec<String>,
    /// Cookie that may carry the key. Default `mia_client_key`.
    #[serde(default = "default_api_key_cookie")]
    pub cookie: Option<String>,
    pub keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MtlsPrincipal {
    /// The principal exactly as Envoy reports it (`source.principal`: a SPIFFE URI or a subject).
    pub principal: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MtlsSource {
    pub name: Option<String>,
    /// Known principals and their groups. A principal not listed is a user with no groups
    /// when `allow_unlisted` is true, and an invalid credential otherwise.
    #[serde(default)]
    pub principals: Vec<MtlsPrincipal>,
    #[serde(default, deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub allow_unlisted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvoyMetadataSource {
    pub name: Option<String>,
    /// The filter metadata namespace. Default `envoy.filters.http.jwt_authn`.
    #[serde(default = "default_metadata_namespace")]
    pub namespace: String,
    /// The key under the namespace that holds the verified payload (jwt_authn's
    /// `payload_in_metadata`). Default `payload`.
    #[serde(default = "default_metadata_key")]
    pub key: String,
    #[serde(default)]
    pub claims: ClaimMapping,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedHeadersSource {
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnonymousSource {
    pub name: Option<String>,
}

/// The `ldap` source: `Authorization: Basic` credentials, checked by binding to the directory as
/// the user's entry. Validated by `identity::ldap` (every problem at once, each naming its field).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LdapSource {
    pub name: Option<String>,
    /// `ldaps://host[:636]`, or `ldap://host[:389]` with `start_tls` (or `allow_plaintext`).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent. Default false.
    #[serde(default, deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub start_tls: bool,
    /// PEM file of the certificate authorities trusted for the directory's certificate
    /// (`ldaps://`, StartTLS). Required with TLS: the system's store is never used.
    pub ca_file: Option<String>,
    /// Security: allow `ldap://` without StartTLS, passwords in clear on the wire. Default false;
    /// only for a directory on the same host or a test.
    #[serde(default, deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub allow_plaintext: bool,
    /// The realm of the `WWW-Authenticate: Basic realm="..."` challenge on this source's 401s.
    /// Default `checkpoint`.
    #[serde(default = "default_ldap_realm")]
    pub realm: String,
    /// The service account bound before searches; without one, searches are anonymous (search
    /// mode) or run as the user who just logged in (`user_dn_template`).
    pub bind_dn: Option<String>,
    /// The service account's password; `bind_password_env` names an environment variable
    /// holding it instead.
    pub bind_password: Option<String>,
    pub bind_password_env: Option<String>,
    /// How the user's entry is found: a search (`user_search`) or a DN template
    /// (`user_dn_template`); exactly one of the two.
    pub user_search: Option<LdapSearch>,
    /// The user's DN, with `{username}` replaced by the user name escaped per RFC 4514
    /// (`uid={username},ou=people,dc=example,dc=org`).
    pub user_dn_template: Option<String>,
    /// Where the user's groups come from. Default: the `memberOf` attribute.
    #[serde(default)]
    pub groups: LdapGroups,
    /// Which attributes of the user's entry become the user id, permissions and properties.
    #[serde(default)]
    pub attributes: LdapAttributes,
    /// Bound of one login (connection, binds and searches), cut to the Check's deadline.
    /// Default 5s.
    #[serde(default = "default_userinfo_timeout")]
    pub timeout: Span,
    /// Most connections open to the directory at once; a login waits for a free one (within
    /// its timeout). Default 8.
    #[serde(default = "default_ldap_pool_size")]
    pub max_connections: usize,
    /// How long a login is reused before the directory is asked again (a changed password or a
    /// removed group takes effect within it), never longer than `identity.cache.ttl`.
    /// Default 60s.
    #[serde(default = "default_ldap_cache_ttl")]
    pub cache_ttl: Span,
    /// How long a refused login (wrong password, unknown user) is remembered, never longer than
    /// `identity.cache.negative_ttl`. Default 5s.
    #[serde(default = "default_ldap_negative_ttl")]
    pub negative_ttl: Span,
}

/// A search for the user's entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LdapSearch {
    /// Where the search starts (`ou=people,dc=example,dc=org`).
    pub base: String,
    /// An RFC 4515 filter with `{username}`, replaced by the user name escaped per RFC 4515.
    /// Default `(uid={username})`.
    #[serde(default = "default_ldap_user_filter")]
    pub filter: String,
    /// `sub` (the whole subtree, the default) or `one` (the entries right below `base`).
    #[serde(default)]
    pub scope: LdapScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LdapScope {
    #[default]
    Sub,
    One,
}

/// A search for the groups that list the user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LdapGroupSearch {
    /// Where the search starts (`ou=groups,dc=example,dc=org`).
    pub base: String,
    /// An RFC 4515 filter with `{dn}` and `{username}`, each replaced escaped per RFC 4515.
    /// Default `(|(member={dn})(uniqueMember={dn}))`.
    #[serde(default = "default_ldap_group_filter")]
    pub filter: String,
    /// `sub` (the default) or `one`.
    #[serde(default)]
    pub scope: LdapScope,
}

/// Where groups come from: an attribute of the user's entry holding the groups' DNs
/// (`memberOf`), or a search for the groups that list the user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LdapGroups {
    /// The attribute of the user's entry holding the DNs of its groups; a group's name is the
    /// value of its DN's first component (`cn=admins,ou=groups,...` is `admins`). Default
    /// `memberOf`; ignored when `search` is given.
    #[serde(default = "default_ldap_member_of")]
    pub attribute: String,
    /// A search for group entries instead: its filter may use `{dn}` (the user's DN) and
    /// `{username}`, each escaped per RFC 4515. Default filter
    /// `(|(member={dn})(uniqueMember={dn}))`.
    pub search: Option<LdapGroupSearch>,
    /// The attribute of a group entry that is its name (with `search`). Default `cn`.
    #[serde(default = "default_ldap_group_name")]
    pub name_attribute: String,
}

impl Default for LdapGroups {
    fn default() -> Self {
        LdapGroups {
            attribute: default_ldap_member_of(),
            search: None,
            name_attribute: default_ldap_group_name(),
        }
    }
}

/// How the user's entry becomes a user, as `claims` does for the token sources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LdapAttributes {
    /// The attribute that is the user id (one value). Default `uid` (`sAMAccountName` on Active
    /// Directory).
    pub user_id: String,
    /// An attribute holding the user's permissions, if any.
    pub permissions: Option<String>,
    /// Attributes copied into the properties header (`mail`, `cn`, ...): one value as a string,
    /// several as a list.
    pub properties: Vec<String>,
}

impl Default for LdapAttributes {
    fn default() -> Self {
        LdapAttributes {
            user_id: "uid".into(),
            permissions: None,
            properties: Vec::new(),
        }
    }
}

fn default_ldap_realm() -> String {
    "checkpoint".into()
}
fn default_ldap_pool_size() -> usize {
    8
}
fn default_ldap_cache_ttl() -> Span {
    Span(Duration::from_secs(60))
}
fn default_ldap_negative_ttl() -> Span {
    Span(Duration::from_secs(5))
}
fn default_ldap_user_filter() -> String {
    "(uid={username})".into()
}
fn default_ldap_group_filter() -> String {
    "(|(member={dn})(uniqueMember={dn}))".into()
}
fn default_ldap_member_of() -> String {
    "memberOf".into()
}
fn default_ldap_group_name() -> String {
    "cn".into()
}
fn default_headers_to_proxy() -> Vec<String> {
    super::env::DEFAULT_HEADERS_TO_PROXY
        .split(',')
        .map(str::to_owned)
        .collect()
}
fn default_userinfo_timeout() -> Span {
    Span(super::env::DEFAULT_CHECKPOINT_USERINFO_TIMEOUT)
}
fn default_user_id_key() -> String {
    super::env::DEFAULT_CUSTOM_USER_ID_KEY.into()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> Span {
    Span(Duration::from_secs(30))
}
fn default_bearer() -> TokenLocation {
    TokenLocation::Bearer
}
fn default_jwks_refresh() -> Span {
    Span(Duration::from_secs(600))
}
fn default_jwks_min_refresh() -> Span {
    Span(Duration::from_secs(10))
}
fn default_client_auth() -> ClientAuth {
    ClientAuth::ClientSecretBasic
}
fn default_api_key_headers() -> Vec<String> {
    vec!["secret".into(), "client-key".into()]
}
fn default_api_key_cookie() -> Option<String> {
    Some("mia_client_key".into())
}
fn default_metadata_namespace() -> String {
    "envoy.filters.http.jwt_authn".into()
}
fn default_metadata_key() -> String {
    "payload".into()
}
