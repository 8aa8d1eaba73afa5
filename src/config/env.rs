//! Environment variables: Mia-Platform's, kept with their names and defaults so that teams can
//! migrate without touching their deployments, plus checkpoint's own (`CHECKPOINT_*`).
//!
//! Every variable is a constant next to its default. [`settings_from`] reads them from a map
//! (tests never mutate the process environment) and returns every problem at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::sources::{SourceSettings, Span, TrustedHeadersSource, UserinfoSource};
use super::{ListenAddr, RequestHeaders, SettingError, Settings, UserHeaders, duration};

/// The native configuration file (YAML or JSON); when set it wins over every other variable.
pub const CHECKPOINT_CONFIG: &str = "CHECKPOINT_CONFIG";

pub const CONFIGURATION_PATH: &str = "CONFIGURATION_PATH";
pub const DEFAULT_CONFIGURATION_PATH: &str = "./";
/// Required: the rule file is `<CONFIGURATION_PATH>/<CONFIGURATION_FILE_NAME>.json`.
pub const CONFIGURATION_FILE_NAME: &str = "CONFIGURATION_FILE_NAME";
/// Optional: the shadow rule file, `<CONFIGURATION_PATH>/<SHADOW_CONFIGURATION_FILE_NAME>.json`,
/// evaluated for every Check and never enforced.
pub const SHADOW_CONFIGURATION_FILE_NAME: &str = "SHADOW_CONFIGURATION_FILE_NAME";
/// Whether the configuration files' folders are watched for changes (reload).
pub const CHECKPOINT_RELOAD_WATCH: &str = "CHECKPOINT_RELOAD_WATCH";
pub const DEFAULT_CHECKPOINT_RELOAD_WATCH: bool = true;
/// How often the configuration files are compared as a fallback to watching; 0 = never.
pub const CHECKPOINT_RELOAD_POLL_INTERVAL: &str = "CHECKPOINT_RELOAD_POLL_INTERVAL";
pub const DEFAULT_CHECKPOINT_RELOAD_POLL_INTERVAL: Duration = Duration::ZERO;

/// Required unless trust mode is on.
pub const USERINFO_URL: &str = "USERINFO_URL";
pub const BACKOFFICE_USERINFO_URL: &str = "BACKOFFICE_USERINFO_URL";
pub const HEADERS_TO_PROXY: &str = "HEADERS_TO_PROXY";
pub const DEFAULT_HEADERS_TO_PROXY: &str =
    "x-request-id,request-id,cookie,authorization,client-type,host,x-forwarded-host";
pub const AUTHORIZATION_HEADERS_TO_PROXY: &str = "AUTHORIZATION_HEADERS_TO_PROXY";
pub const CUSTOM_USER_ID_KEY: &str = "CUSTOM_USER_ID_KEY";
pub const DEFAULT_CUSTOM_USER_ID_KEY: &str = "sub";
pub const CUSTOM_PERMISSIONS_KEY: &str = "CUSTOM_PERMISSIONS_KEY";
pub const USER_PROPERTIES_TO_PROXY: &str = "USER_PROPERTIES_TO_PROXY";

pub const BACKOFFICE_HEADER_KEY: &str = "BACKOFFICE_HEADER_KEY";
pub const DEFAULT_BACKOFFICE_HEADER_KEY: &str = "isbackoffice";
pub const CLIENT_TYPE_HEADER_KEY: &str = "CLIENT_TYPE_HEADER_KEY";
pub const DEFAULT_CLIENT_TYPE_HEADER_KEY: &str = "client-type";

pub const AUTHORIZATION_STRICT_MODE_ENABLED: &str = "AUTHORIZATION_STRICT_MODE_ENABLED";
pub const DEFAULT_AUTHORIZATION_STRICT_MODE_ENABLED: bool = true;
pub const TRUST_MIA_USER_HEADERS: &str = "TRUST_MIA_USER_HEADERS";
pub const DEFAULT_TRUST_MIA_USER_HEADERS: bool = false;

pub const USERID_HEADER_KEY: &str = "USERID_HEADER_KEY";
pub const DEFAULT_USERID_HEADER_KEY: &str = "miauserid";
pub const GROUPS_HEADER_KEY: &str = "GROUPS_HEADER_KEY";
pub const DEFAULT_GROUPS_HEADER_KEY: &str = "miausergroups";
pub const USER_PROPERTIES_HEADER_KEY: &str = "USER_PROPERTIES_HEADER_KEY";
pub const DEFAULT_USER_PROPERTIES_HEADER_KEY: &str = "miauserproperties";

pub const HTTP_PORT: &str = "HTTP_PORT";
pub const DEFAULT_HTTP_PORT: u16 = 3000;
pub const SERVICE_VERSION: &str = "SERVICE_VERSION";
pub const DEFAULT_SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const LOG_LEVEL: &str = "LOG_LEVEL";
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DELAY_SHUTDOWN_SECONDS: &str = "DELAY_SHUTDOWN_SECONDS";
pub const DEFAULT_DELAY_SHUTDOWN_SECONDS: Duration = Duration::from_secs(10);

pub const CHECKPOINT_GRPC_ADDR: &str = "CHECKPOINT_GRPC_ADDR";
pub const DEFAULT_CHECKPOINT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 50051);
/// Overrides `HTTP_PORT` with a full address, e.g. `127.0.0.1:3000` to keep the status routes
/// off the network.
pub const CHECKPOINT_HTTP_ADDR: &str = "CHECKPOINT_HTTP_ADDR";
pub const CHECKPOINT_USERINFO_TIMEOUT: &str = "CHECKPOINT_USERINFO_TIMEOUT";
pub const DEFAULT_CHECKPOINT_USERINFO_TIMEOUT: Duration = Duration::from_secs(5);
pub const CHECKPOINT_IDENTITY_CACHE_TTL: &str = "CHECKPOINT_IDENTITY_CACHE_TTL";
pub const DEFAULT_CHECKPOINT_IDENTITY_CACHE_TTL: Duration = Duration::from_secs(30);
pub const CHECKPOINT_NEGATIVE_CACHE_TTL: &str = "CHECKPOINT_NEGATIVE_CACHE_TTL";
pub const DEFAULT_CHECKPOINT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(5);
pub const CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES: &str = "CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES";
pub const DEFAULT_CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES: u64 = 100_000;
/// How long past its TTL a cached user is still served while the identity provider is
/// unavailable; 0 (the default) = never.
pub const CHECKPOINT_IDENTITY_STALE_IF_ERROR: &str = "CHECKPOINT_IDENTITY_STALE_IF_ERROR";
pub const DEFAULT_CHECKPOINT_IDENTITY_STALE_IF_ERROR: Duration = Duration::ZERO;
pub const CHECKPOINT_DRAIN_TIMEOUT: &str = "CHECKPOINT_DRAIN_TIMEOUT";
pub const DEFAULT_CHECKPOINT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Permissions of the gRPC Unix socket (octal), when `CHECKPOINT_GRPC_ADDR` is `unix:...`.
pub const CHECKPOINT_GRPC_SOCKET_MODE: &str = "CHECKPOINT_GRPC_SOCKET_MODE";
pub const DEFAULT_CHECKPOINT_GRPC_SOCKET_MODE: u32 = 0o660;
/// Runtime worker threads; 0 (the default) = one per CPU the process may use.
pub const CHECKPOINT_WORKER_THREADS: &str = "CHECKPOINT_WORKER_THREADS";
/// Whether answers carry `decision`, `reason` and `user_id` as Envoy dynamic metadata.
pub const CHECKPOINT_DYNAMIC_METADATA: &str = "CHECKPOINT_DYNAMIC_METADATA";
pub const DEFAULT_CHECKPOINT_DYNAMIC_METADATA: bool = false;
/// Whether allowed requests carry the decision id upstream as `x-checkpoint-decision-id`.
pub const CHECKPOINT_DECISION_ID_HEADER_UPSTREAM: &str = "CHECKPOINT_DECISION_ID_HEADER_UPSTREAM";
pub const DEFAULT_CHECKPOINT_DECISION_ID_HEADER_UPSTREAM: bool = false;

/// Every variable this module reads (for "ignored because the file wins").
pub const ALL: &[&str] = &[
    CHECKPOINT_CONFIG,
    CONFIGURATION_PATH,
    CONFIGURATION_FILE_NAME,
    SHADOW_CONFIGURATION_FILE_NAME,
    CHECKPOINT_RELOAD_WATCH,
    CHECKPOINT_RELOAD_POLL_INTERVAL,
    USERINFO_URL,
    BACKOFFICE_USERINFO_URL,
    HEADERS_TO_PROXY,
    AUTHORIZATION_HEADERS_TO_PROXY,
    CUSTOM_USER_ID_KEY,
    CUSTOM_PERMISSIONS_KEY,
    USER_PROPERTIES_TO_PROXY,
    BACKOFFICE_HEADER_KEY,
    CLIENT_TYPE_HEADER_KEY,
    AUTHORIZATION_STRICT_MODE_ENABLED,
    TRUST_MIA_USER_HEADERS,
    USERID_HEADER_KEY,
    GROUPS_HEADER_KEY,
    USER_PROPERTIES_HEADER_KEY,
    HTTP_PORT,
    SERVICE_VERSION,
    LOG_LEVEL,
    DELAY_SHUTDOWN_SECONDS,
    CHECKPOINT_GRPC_ADDR,
    CHECKPOINT_HTTP_ADDR,
    CHECKPOINT_USERINFO_TIMEOUT,
    CHECKPOINT_IDENTITY_CACHE_TTL,
    CHECKPOINT_NEGATIVE_CACHE_TTL,
    CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES,
    CHECKPOINT_IDENTITY_STALE_IF_ERROR,
    CHECKPOINT_DRAIN_TIMEOUT,
    CHECKPOINT_GRPC_SOCKET_MODE,
    CHECKPOINT_WORKER_THREADS,
    CHECKPOINT_DYNAMIC_METADATA,
    CHECKPOINT_DECISION_ID_HEADER_UPSTREAM,
    super::rbac::CHECKPOINT_RBAC_FILE,
    super::rbac::CHECKPOINT_RBAC_ROLES_HEADER,
];

/// Upper bound of `CHECKPOINT_WORKER_THREADS` (and `server.worker_threads`).
pub const MAX_WORKER_THREADS: u64 = 1024;

/// Not a knob: an answer larger than this is not a user profile.
pub const USERINFO_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const SERVICE_NAME: &str = "checkpoint";

/// The rule file the variables name, if they name one.
pub fn rules_file(vars: &HashMap<String, String>) -> Option<PathBuf> {
    named_rules_file(vars, CONFIGURATION_FILE_NAME)
}

/// `<CONFIGURATION_PATH>/<value of variable>.json`, when the variable is set.
fn named_rules_file(vars: &HashMap<String, String>, variable: &str) -> Option<PathBuf> {
    let name = vars
        .get(variable)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())?;
    let dir = vars
        .get(CONFIGURATION_PATH)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_CONFIGURATION_PATH);
    Some(PathBuf::from(dir).join(format!("{name}.json")))
}

/// Reads and validates every variable; returns all the problems found, not just the first.
pub fn settings_from(vars: &HashMap<String, String>) -> Result<Settings, Vec<SettingError>> {
    let mut r = Reader {
        vars,
        errors: Vec::new(),
    };

    r.required(CONFIGURATION_FILE_NAME);
    let rules_file = rules_file(vars).unwrap_or_default();

    let trust = r.boolean(TRUST_MIA_USER_HEADERS, DEFAULT_TRUST_MIA_USER_HEADERS);
    let timeout = r.duration(
        CHECKPOINT_USERINFO_TIMEOUT,
        DEFAULT_CHECKPOINT_USERINFO_TIMEOUT,
    );
    let headers_to_proxy = r.list(HEADERS_TO_PROXY, DEFAULT_HEADERS_TO_PROXY, true);
    let authorization_headers = r.list(AUTHORIZATION_HEADERS_TO_PROXY, "", true);
    let user_id_key = r
        .string(CUSTOM_USER_ID_KEY)
        .unwrap_or_else(|| DEFAULT_CUSTOM_USER_ID_KEY.to_owned());
    let permissions_key = r.string(CUSTOM_PERMISSIONS_KEY);
    let sources = if trust {
        vec![SourceSettings::TrustedHeaders(
            TrustedHeadersSource::default(),
        )]
    } else {
        let url = r
            .required(USERINFO_URL)
            .and_then(|u| r.url(USERINFO_URL, &u));
        let backoffice_url = r
            .string(BACKOFFICE_USERINFO_URL)
            .and_then(|u| r.url(BACKOFFICE_USERINFO_URL, &u));
        for name in &authorization_headers {
            if !headers_to_proxy.contains(name) {
                r.error(
                    AUTHORIZATION_HEADERS_TO_PROXY,
                    format!("\"{name}\" is not in {HEADERS_TO_PROXY}, so it would never reach the user-info endpoint"),
                );
            }
        }
        vec![SourceSettings::Userinfo(UserinfoSource {
            name: None,
            url: url.map(|u| u.to_string()).unwrap_or_default(),
            backoffice_url: backoffice_url.map(|u| u.to_string()),
            headers_to_proxy,
            authorization_headers,
            timeout: Span(timeout),
            user_id_key,
            permissions_key,
            properties: r.list(USER_PROPERTIES_TO_PROXY, "", false),
        })]
    };

    let user_headers = UserHeaders {
        user_id: r.header_name(USERID_HEADER_KEY, DEFAULT_USERID_HEADER_KEY),
        groups: r.header_name(GROUPS_HEADER_KEY, DEFAULT_GROUPS_HEADER_KEY),
        properties: r.header_name(
            USER_PROPERTIES_HEADER_KEY,
            DEFAULT_USER_PROPERTIES_HEADER_KEY,
        ),
    };
    let request_headers = RequestHeaders {
        backoffice: r.header_name(BACKOFFICE_HEADER_KEY, DEFAULT_BACKOFFICE_HEADER_KEY),
        client_type: r.header_name(CLIENT_TYPE_HEADER_KEY, DEFAULT_CLIENT_TYPE_HEADER_KEY),
    };

    let http_port = r.port(HTTP_PORT, DEFAULT_HTTP_PORT);
    let http_addr = r.socket_addr(
        CHECKPOINT_HTTP_ADDR,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), http_port),
    );
    let grpc_addr = match r.string(CHECKPOINT_GRPC_ADDR) {
        None => ListenAddr::Tcp(DEFAULT_CHECKPOINT_GRPC_ADDR),
        Some(text) => text.parse().unwrap_or_else(|message| {
            r.error(CHECKPOINT_GRPC_ADDR, message);
            ListenAddr::Tcp(DEFAULT_CHECKPOINT_GRPC_ADDR)
        }),
    };
    let grpc_socket_mode = match r.string(CHECKPOINT_GRPC_SOCKET_MODE) {
        None => DEFAULT_CHECKPOINT_GRPC_SOCKET_MODE,
        Some(text) => super::parse_mode(&text).unwrap_or_else(|message| {
            r.error(CHECKPOINT_GRPC_SOCKET_MODE, message);
            DEFAULT_CHECKPOINT_GRPC_SOCKET_MODE
        }),
    };
    let worker_threads = r.count(CHECKPOINT_WORKER_THREADS, 0);
    if worker_threads > MAX_WORKER_THREADS {
        r.error(
            CHECKPOINT_WORKER_THREADS,
            format!("{worker_threads} is more than {MAX_WORKER_THREADS}"),
        );
    }
    let on_unix_socket = matches!(grpc_addr, ListenAddr::Unix(_));
    let grpc = super::grpc::from_env(vars, on_unix_socket).unwrap_or_else(|problems| {
        for (variable, message) in problems {
            r.error(variable, message);
        }
        super::grpc::GrpcSettings::default()
    });
    // The header's name is checked by `cross_check`, as the native file's `rbac.roles_header`.
    let roles_header = r
        .string(super::rbac::CHECKPOINT_RBAC_ROLES_HEADER)
        .or(super::rbac::DEFAULT_CHECKPOINT_RBAC_ROLES_HEADER.map(str::to_owned))
        .map(|name| name.to_ascii_lowercase());
    let rbac = match (r.string(super::rbac::CHECKPOINT_RBAC_FILE), roles_header) {
        (Some(path), roles_header) => Some(super::rbac::RbacSettings {
            source: super::rbac::RbacSource::File(path.into()),
            roles_header,
        }),
        (None, Some(_)) => {
            r.error(
                super::rbac::CHECKPOINT_RBAC_ROLES_HEADER,
                format!(
                    "needs {}: without roles there are no roles to send",
                    super::rbac::CHECKPOINT_RBAC_FILE
                ),
            );
            None
        }
        (None, None) => None,
    };
    let settings = Settings {
        grpc_addr,
        grpc_socket_mode,
        grpc,
        worker_threads: worker_threads.min(MAX_WORKER_THREADS) as usize,
        dynamic_metadata: r.boolean(
            CHECKPOINT_DYNAMIC_METADATA,
            DEFAULT_CHECKPOINT_DYNAMIC_METADATA,
        ),
        decision_id_upstream: r.boolean(
            CHECKPOINT_DECISION_ID_HEADER_UPSTREAM,
            DEFAULT_CHECKPOINT_DECISION_ID_HEADER_UPSTREAM,
        ),
        http_addr,
        service_name: SERVICE_NAME.to_owned(),
        service_version: r
            .string(SERVICE_VERSION)
            .unwrap_or_else(|| DEFAULT_SERVICE_VERSION.to_owned()),
        log_level: r.log_level(LOG_LEVEL, DEFAULT_LOG_LEVEL),
        shutdown_delay: r.duration(DELAY_SHUTDOWN_SECONDS, DEFAULT_DELAY_SHUTDOWN_SECONDS),
        drain_timeout: r.duration(CHECKPOINT_DRAIN_TIMEOUT, DEFAULT_CHECKPOINT_DRAIN_TIMEOUT),
        strict_mode: r.boolean(
            AUTHORIZATION_STRICT_MODE_ENABLED,
            DEFAULT_AUTHORIZATION_STRICT_MODE_ENABLED,
        ),
        rules_file,
        shadow_rules_file: named_rules_file(vars, SHADOW_CONFIGURATION_FILE_NAME),
        reload: super::ReloadSettings {
            watch: r.boolean(CHECKPOINT_RELOAD_WATCH, DEFAULT_CHECKPOINT_RELOAD_WATCH),
            poll_interval: r.duration(
                CHECKPOINT_RELOAD_POLL_INTERVAL,
                DEFAULT_CHECKPOINT_RELOAD_POLL_INTERVAL,
            ),
        },
        sources,
        identity_cache: super::CacheSettings {
            ttl: r.duration(
                CHECKPOINT_IDENTITY_CACHE_TTL,
                DEFAULT_CHECKPOINT_IDENTITY_CACHE_TTL,
            ),
            negative_ttl: r.duration(
                CHECKPOINT_NEGATIVE_CACHE_TTL,
                DEFAULT_CHECKPOINT_NEGATIVE_CACHE_TTL,
            ),
            max_entries: r.count(
                CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES,
                DEFAULT_CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES,
            ),
            stale_if_error: r.duration(
                CHECKPOINT_IDENTITY_STALE_IF_ERROR,
                DEFAULT_CHECKPOINT_IDENTITY_STALE_IF_ERROR,
            ),
        },
        user_headers,
        request_headers,
        rbac,
        login_redirect: None,
        telemetry: super::telemetry::resolve(&Default::default(), vars).unwrap_or_else(
            |problems| {
                for (at, message) in problems {
                    if let super::telemetry::Where::Variable(variable) = at {
                        r.error(variable, message);
                    }
                }
                Default::default()
            },
        ),
    };
    let mut settings = settings;
    if let Some(raw) = super::login_redirect::from_env(vars) {
        match super::login_redirect::validate(&raw) {
            Ok(redirect) => settings.login_redirect = Some(redirect),
            Err(problems) => {
                for (field, message) in problems {
                    r.error(field.variable(), message);
                }
            }
        }
    }
    for problem in super::cross_check(&settings) {
        r.error(problem.variable, problem.message);
    }
    if r.errors.is_empty() {
        Ok(settings)
    } else {
        Err(r.errors)
    }
}

/// Reads typed values and records what is wrong with them.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    errors: Vec<SettingError>,
}

impl Reader<'_> {
    fn error(&mut self, variable: &'static str, message: String) {
        self.errors.push(SettingError { variable, message });
    }

    /// The trimmed value; an empty value counts as unset.
    fn string(&self, name: &'static str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, name: &'static str) -> Option<String> {
        let value = self.string(name);
        if value.is_none() {
            self.error(name, "is required".to_owned());
        }
        value
    }

    fn boolean(&mut self, name: &'static str, default: bool) -> bool {
        match self.string(name) {
            None => default,
            Some(text) => super::boolean::parse(&text).unwrap_or_else(|message| {
                self.error(name, message);
                default
            }),
        }
    }

    fn log_level(&mut self, name: &'static str, default: &str) -> String {
        let level = self.string(name).unwrap_or_else(|| default.to_owned());
        if let Err(message) = super::log_level(&level) {
            self.error(name, message);
        }
        level
    }

    fn duration(&mut self, name: &'static str, default: Duration) -> Duration {
        match self.string(name) {
            None => default,
            Some(text) => duration::parse(&text).unwrap_or_else(|message| {
                self.error(name, message);
                default
            }),
        }
    }

    fn port(&mut self, name: &'static str, default: u16) -> u16 {
        match self.string(name) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.error(name, format!("\"{text}\" is not a port number (0-65535)"));
                default
            }),
        }
    }

    fn count(&mut self, name: &'static str, default: u64) -> u64 {
        match self.string(name) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.error(name, format!("\"{text}\" is not a whole number"));
                default
            }),
        }
    }

    fn socket_addr(&mut self, name: &'static str, default: SocketAddr) -> SocketAddr {
        match self.string(name) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.error(
                    name,
                    format!("\"{text}\" is not an address such as 0.0.0.0:50051 or [::]:50051"),
                );
                default
            }),
        }
    }

    fn url(&mut self, name: &'static str, text: &str) -> Option<reqwest::Url> {
        match reqwest::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                self.error(name, format!("\"{text}\" is not an http or https URL"));
                None
            }
            Err(e) => {
                self.error(name, format!("\"{text}\" is not a URL: {e}"));
                None
            }
        }
    }

    /// A comma-separated list; header names are lower-cased and checked.
    fn list(&mut self, name: &'static str, default: &str, header_names: bool) -> Vec<String> {
        let text = self.string(name).unwrap_or_else(|| default.to_owned());
        let mut items = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let item = if header_names {
                if !is_header_name(item) {
                    self.error(name, format!("\"{item}\" is not a valid header name"));
                    continue;
                }
                item.to_ascii_lowercase()
            } else {
                item.to_owned()
            };
            if !items.contains(&item) {
                items.push(item);
            }
        }
        items
    }

    fn header_name(&mut self, name: &'static str, default: &str) -> String {
        let value = self.string(name).unwrap_or_else(|| default.to_owned());
        if !is_header_name(&value) {
            self.error(name, format!("\"{value}\" is not a valid header name"));
        }
        value.to_ascii_lowercase()
    }
}

/// An HTTP token (RFC 9110 `tchar`s): what Envoy accepts as a header name.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_mia_documentation() {
        let s = settings_from(&vars(&[
            (CONFIGURATION_FILE_NAME, "auth"),
            (USERINFO_URL, "http://auth-manager/userinfo"),
        ]))
        .expect("valid");
        assert_eq!(s.rules_file, PathBuf::from("./auth.json"));
        assert_eq!(s.grpc_addr, "0.0.0.0:50051".parse().expect("addr"));
        assert_eq!(s.http_addr.port(), 3000);
        assert!(s.strict_mode);
        assert_eq!(s.shutdown_delay, Duration::from_secs(10));
        assert_eq!(s.user_headers.user_id, "miauserid");
        assert_eq!(s.user_headers.groups, "miausergroups");
        assert_eq!(s.user_headers.properties, "miauserproperties");
        assert_eq!(s.request_headers.backoffice, "isbackoffice");
        assert_eq!(s.request_headers.client_type, "client-type");
        assert_eq!(s.log_level, "info");
        let [SourceSettings::Userinfo(u)] = s.sources.as_slice() else {
            panic!("userinfo expected")
        };
        assert_eq!(u.user_id_key, "sub");
        assert_eq!(u.timeout, Span(Duration::from_secs(5)));
        assert_eq!(
            u.headers_to_proxy.join(","),
            "x-request-id,request-id,cookie,authorization,client-type,host,x-forwarded-host"
        );
        assert!(u.authorization_headers.is_empty());
        assert!(u.permissions_key.is_none());
        assert_eq!(s.identity_cache.stale_if_error, Duration::ZERO, "off");
    }

    #[test]
    fn every_problem_is_reported_with_its_variable() {
        let errors = settings_from(&vars(&[
            (USERINFO_URL, "ftp://x"),
            (HTTP_PORT, "70000"),
            (DELAY_SHUTDOWN_SECONDS, "soon"),
            (AUTHORIZATION_STRICT_MODE_ENABLED, "maybe"),
            (HEADERS_TO_PROXY, "authorization,bad header"),
            (AUTHORIZATION_HEADERS_TO_PROXY, "x-token"),
            (CHECKPOINT_GRPC_ADDR, "localhost"),
        ]))
        .expect_err("invalid");
        let variables: Vec<_> = errors.iter().map(|e| e.variable).collect();
        for expected in [
            CONFIGURATION_FILE_NAME,
            USERINFO_URL,
            HTTP_PORT,
            DELAY_SHUTDOWN_SECONDS,
            AUTHORIZATION_STRICT_MODE_ENABLED,
            HEADERS_TO_PROXY,
            AUTHORIZATION_HEADERS_TO_PROXY,
            CHECKPOINT_GRPC_ADDR,
        ] {
            assert!(
                variables.contains(&expected),
                "{expected} missing in {errors:?}"
            );
        }
    }

    #[test]
    fn trust_mode_needs_no_userinfo_url() {
        let s = settings_from(&vars(&[
            (CONFIGURATION_FILE_NAME, "auth"),
            (CONFIGURATION_PATH, "/etc/rules"),
            (TRUST_MIA_USER_HEADERS, "true"),
            (USERID_HEADER_KEY, "X-User"),
        ]))
        .expect("valid");
        assert!(matches!(
            s.sources.as_slice(),
            [SourceSettings::TrustedHeaders(_)]
        ));
        assert_eq!(s.user_headers.user_id, "x-user");
        assert_eq!(s.rules_file, PathBuf::from("/etc/rules/auth.json"));
    }

    #[test]
    fn user_header_names_must_differ() {
        let errors = settings_from(&vars(&[
            (CONFIGURATION_FILE_NAME, "auth"),
            (TRUST_MIA_USER_HEADERS, "true"),
            (GROUPS_HEADER_KEY, "miauserid"),
        ]))
        .expect_err("clash");
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
