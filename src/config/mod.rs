//! Configuration: the process settings, and where the rules are.
//!
//! Mia-Platform's environment variables (see README) are read by [`env`], and the native file by
//! [`file`]; both map onto the one native model below, [`Settings`], and then go through the
//! same cross-field validator ([`cross_check`]). Nothing else in the crate reads the
//! environment. Every problem is collected before failing, so that an operator fixes a bad
//! deployment in one round. The rules themselves are compiled by `crate::rules`, from the
//! [`RulesSource`] found here.
//!
//! Called by `crate::Config::load` (and so by `main` and the tests) before any port is bound.
//! Must never read the process environment itself: callers pass the variables in as a map.
//! Imports no stage of the road (route, identity, policy): the stages import it.

pub mod boolean;
pub mod duration;
pub mod env;
pub mod expand;
pub mod file;
pub mod grpc;
pub mod keys;
pub mod login_redirect;
pub mod rbac;
pub mod sources;
pub mod telemetry;
pub mod warnings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything checkpoint needs to start, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `Authorization/Check`, health and reflection are served: TCP or a Unix socket.
    pub grpc_addr: ListenAddr,
    /// Permissions of the Unix socket file (`grpc_addr` = `unix:...`), e.g. `0o660`.
    pub grpc_socket_mode: u32,
    /// Connection limits, keepalives, connection age and TLS of the gRPC port.
    pub grpc: grpc::GrpcSettings,
    /// Runtime worker threads; 0 = one per CPU the process may use. One worker runs the
    /// single-threaded scheduler (see `main`).
    pub worker_threads: usize,
    /// Where the HTTP status routes are served.
    pub http_addr: SocketAddr,
    /// Reported by the status routes.
    pub service_name: String,
    pub service_version: String,
    /// A `tracing` filter directive (`info`, `debug`, `checkpoint=trace`).
    pub log_level: String,
    /// How long to keep serving after SIGTERM while reporting not ready.
    pub shutdown_delay: Duration,
    /// The upper bound on draining in-flight Checks once serving stops.
    pub drain_timeout: Duration,
    /// Strict mode denies; non-strict mode answers OK with `mia-allowed: 0` (see `response`).
    pub strict_mode: bool,
    /// Whether answers carry the decision as dynamic metadata (Envoy's access logs, later
    /// filters); off by default because Envoy spends measurably on every Struct it merges.
    pub dynamic_metadata: bool,
    /// Whether allowed requests carry the decision id upstream (`x-checkpoint-decision-id`).
    pub decision_id_upstream: bool,
    /// The rule file (`<CONFIGURATION_PATH>/<CONFIGURATION_FILE_NAME>.json`).
    pub rules_file: PathBuf,
    /// The shadow rule file, evaluated for every Check and never enforced
    /// (`<CONFIGURATION_PATH>/<SHADOW_CONFIGURATION_FILE_NAME>.json`, `rules.shadow`).
    pub shadow_rules_file: Option<PathBuf>,
    /// What makes checkpoint reload its configuration besides `SIGHUP` (`crate::reload`).
    pub reload: ReloadSettings,
    /// The identity sources, in the order they are asked.
    pub sources: Vec<sources::SourceSettings>,
    /// How long identity answers are reused; a zero TTL turns the cache off.
    pub identity_cache: CacheSettings,
    pub user_headers: UserHeaders,
    pub request_headers: RequestHeaders,
    /// Where trace spans go, if anywhere, and which are kept.
    pub telemetry: telemetry::TraceSettings,
    /// The RBAC roles and bindings, when configured (`crate::rbac`).
    pub rbac: Option<rbac::RbacSettings>,
    /// Where a browser without a login is sent instead of a 401, when configured
    /// (`crate::login`).
    pub login_redirect: Option<login_redirect::LoginRedirect>,
}

#[derive(Debug, Clone)]
pub struct UserInfoSettings {
    pub url: reqwest::Url,
    /// Used instead of `url` for backoffice requests.
    pub backoffice_url: Option<reqwest::Url>,
    /// Lower-case names of the request headers copied onto the user-info call; no other header
    /// is sent.
    pub headers_to_proxy: Vec<String>,
    /// When non-empty and the request carries none of these, the call is skipped and the caller
    /// is anonymous.
    pub authorization_headers: Vec<String>,
    /// Upper bound of one user-info call, body included; the Check's own deadline may be sooner.
    pub timeout: Duration,
    pub user_id_key: String,
    pub permissions_key: Option<String>,
    /// Security: a user-info answer larger than this is refused, never buffered whole.
    pub max_body_bytes: usize,
}

impl UserInfoSettings {
    /// Validates a `userinfo` source's settings: URLs and header names.
    pub fn from_source(source: &sources::UserinfoSource) -> Result<UserInfoSettings, Vec<String>> {
        let mut problems = Vec::new();
        let url =
            |field: &str, text: &str, problems: &mut Vec<String>| match reqwest::Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
                Ok(_) => {
                    problems.push(format!("{field}: \"{text}\" is not an http or https URL"));
                    None
                }
                Err(e) => {
                    problems.push(format!("{field}: \"{text}\" is not a URL: {e}"));
                    None
                }
            };
        let main = url("url", &source.url, &mut problems);
        let backoffice = source
            .backoffice_url
            .as_deref()
            .and_then(|u| url("backoffice_url", u, &mut problems));
        let mut names = |field: &str, list: &[String]| -> Vec<String> {
            list.iter()
                .filter_map(|n| {
                    if env::is_header_name(n) {
                        Some(n.to_ascii_lowercase())
                    } else {
                        problems.push(format!("{field}: \"{n}\" is not a valid header name"));
                        None
                    }
                })
                .collect()
        };
        let headers_to_proxy = names("headers_to_proxy", &source.headers_to_proxy);
        let authorization_headers = names("authorization_headers", &source.authorization_headers);
        for name in &authorization_headers {
            if !headers_to_proxy.contains(name) {
                problems.push(format!(
                    "authorization_headers: \"{name}\" is not in headers_to_proxy, so it would never reach the user-info endpoint"
                ));
            }
        }
        match main {
            Some(url) if problems.is_empty() => Ok(UserInfoSettings {
                url,
                backoffice_url: backoffice,
                headers_to_proxy,
                authorization_headers,
                timeout: source.timeout.0,
                user_id_key: source.user_id_key.clone(),
                permissions_key: source.permissions_key.clone(),
                max_body_bytes: env::USERINFO_MAX_BODY_BYTES,
            }),
            _ => Err(problems),
        }
    }
}

/// A problem that involves several settings, with the name each front end gives the setting
/// it is reported on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossProblem {
    /// The environment variable.
    pub variable: &'static str,
    /// The native file's field.
    pub field: &'static str,
    pub message: String,
}

/// Headers checkpoint writes upstream besides the user headers: Mia's `mia-allowed` marker
/// (`response::MIA_ALLOWED`) and the decision id (`telemetry::decision_id::HEADER`). Written
/// out here because `config` imports no stage; a test in `response` keeps them equal.
pub const RESERVED_UPSTREAM_HEADERS: [&str; 2] = ["mia-allowed", "x-checkpoint-decision-id"];

/// Every rule that relates several settings, checked once for both front ends (the environment
/// and the native file build the same `Settings` first).
pub fn cross_check(settings: &Settings) -> Vec<CrossProblem> {
    let mut problems = Vec::new();
    let h = &settings.user_headers;
    let r = &settings.request_headers;
    // Security: one header holding two identity fields would let a value written for one be
    // read as the other upstream.
    if h.user_id == h.groups || h.user_id == h.properties || h.groups == h.properties {
        problems.push(CrossProblem {
            variable: env::USERID_HEADER_KEY,
            field: "user_headers",
            message: format!(
                "the user id, groups and properties headers must have three different names (got {}, {}, {})",
                h.user_id, h.groups, h.properties
            ),
        });
    }
    // A request header that marks backoffice or carries the client type cannot also be an
    // identity header checkpoint writes upstream.
    for (variable, field, name) in [
        (
            env::BACKOFFICE_HEADER_KEY,
            "request_headers.backoffice",
            &r.backoffice,
        ),
        (
            env::CLIENT_TYPE_HEADER_KEY,
            "request_headers.client_type",
            &r.client_type,
        ),
    ] {
        if [&h.user_id, &h.groups, &h.properties].contains(&name) {
            problems.push(CrossProblem {
                variable,
                field,
                message: format!("\"{name}\" is also one of the user headers checkpoint writes"),
            });
        }
    }
    // The roles header is written upstream like the user headers and removed from the client's
    // request: a name shared with a header checkpoint reads or writes would make one read as
    // the other.
    if let Some(name) = settings
        .rbac
        .as_ref()
        .and_then(|r| r.roles_header.as_deref())
    {
        let problem = |message: String| CrossProblem {
            variable: rbac::CHECKPOINT_RBAC_ROLES_HEADER,
            field: "rbac.roles_header",
            message,
        };
        if !env::is_header_name(name) {
            problems.push(problem(format!("\"{name}\" is not a valid header name")));
        } else if [&h.user_id, &h.groups, &h.properties].contains(&&name.to_owned()) {
            problems.push(problem(format!(
                "\"{name}\" is also one of the user headers checkpoint writes"
            )));
        } else if [&r.backoffice, &r.client_type].contains(&&name.to_owned()) {
            problems.push(problem(format!(
                "\"{name}\" is also a request header checkpoint reads (backoffice or client type)"
            )));
        } else if RESERVED_UPSTREAM_HEADERS.contains(&name) {
            problems.push(problem(format!(
                "\"{name}\" is a header checkpoint already writes upstream"
            )));
        }
    }
    // Stale answers are kept by the identity cache: without it there is nothing to serve.
    let cache = &settings.identity_cache;
    if !cache.stale_if_error.is_zero() && cache.ttl.is_zero() {
        problems.push(CrossProblem {
            variable: env::CHECKPOINT_IDENTITY_STALE_IF_ERROR,
            field: "identity.cache.stale_if_error",
            message: format!(
                "{:?} needs the identity cache, which a zero TTL turns off",
                cache.stale_if_error
            ),
        });
    }
    // A redirect replaces a 401 deny; with strict mode off there is none to replace (the
    // request goes on with `mia-allowed: 0`), so the setting would silently do nothing.
    if settings.login_redirect.is_some() && !settings.strict_mode {
        problems.push(CrossProblem {
            variable: login_redirect::CHECKPOINT_LOGIN_REDIRECT_URL,
            field: "login_redirect",
            message: "the login redirect needs strict mode: with strict mode off, a request without a login goes on with mia-allowed: 0".to_owned(),
        });
    }
    problems
}

/// What triggers a reload besides `SIGHUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Watch the folders of the configuration files (ConfigMap symlink swaps included).
    pub watch: bool,
    /// Compare the files' contents this often as a fallback; zero turns polling off.
    pub poll_interval: Duration,
}

/// How long identity answers are kept (the identity cache's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// For users; zero turns the cache off.
    pub ttl: Duration,
    /// For anonymous and invalid answers; zero stores none.
    pub negative_ttl: Duration,
    pub max_entries: u64,
    /// How long past its TTL a user may still be served when the fresh lookup finds the
    /// identity provider unavailable (never past the credential's expiry); zero turns it off.
    pub stale_if_error: Duration,
}

/// A listening address: `host:port`, or `unix:PATH` (also `unix://` + absolute path) for a
/// Unix domain socket, for an Envoy on the same host or in the same pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenAddr, String> {
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('\0') {
                return Err(format!(
                    "\"{text}\" names no socket path (unix:/run/checkpoint/grpc.sock)"
                ));
            }
            if rest.starts_with("//") && !path.starts_with('/') {
                return Err(format!(
                    "\"{text}\": after unix:// the path must be absolute"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("\"{text}\" is not an address such as 0.0.0.0:50051 or unix:/run/checkpoint/grpc.sock")
        })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Parses a Unix file mode written in octal (`660`, `0660`, `0o660`); at most `0o777`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!("\"{text}\" is not an octal file mode such as 0660")),
    }
}

/// The levels a log filter may name.
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// Checks a log filter (`LOG_LEVEL`, `server.log_level`): a level, or comma-separated `tracing`
/// directives (`checkpoint=debug,info`) whose level parts are all known levels. `tracing` itself
/// reads a bare unknown word such as `warning` as a target name, which turns every other log
/// line off: here it is a configuration error.
pub fn log_level(text: &str) -> Result<(), String> {
    let known = |level: &str| LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level));
    let usage =
        "use error, warn, info, debug, trace or off, or directives such as checkpoint=debug,info";
    if text.trim().is_empty() {
        return Err(format!("\"{text}\" is empty: {usage}"));
    }
    for directive in split_outside_brackets(text, ',') {
        let directive = directive.trim();
        let parts = split_outside_brackets(directive, '=');
        let level = parts.last().copied().unwrap_or(directive);
        if !known(level.trim()) {
            let what = if level.len() == directive.len() {
                format!("\"{text}\" is not a log level")
            } else {
                format!(
                    "\"{text}\": \"{}\" is not a log level in \"{directive}\"",
                    level.trim()
                )
            };
            return Err(format!("{what}: {usage}"));
        }
    }
    // tracing-subscriber's own parser has the last word (the same one telemetry installs).
    tracing_subscriber::EnvFilter::try_new(text)
        .map(drop)
        .map_err(|e| format!("invalid log level \"{text}\": {e}"))
}

/// Splits at `separator` where it is outside `[...]` and `{...}` (a directive's span filter may
/// hold commas and equals signs).
fn split_outside_brackets(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            c if c == separator && depth == 0 => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// The headers checkpoint writes upstream for an allowed request.
#[derive(Debug, Clone)]
pub struct UserHeaders {
    /// Lower-case header names.
    pub user_id: String,
    pub groups: String,
    pub properties: String,
}

/// Request headers that carry facts for the expressions.
#[derive(Debug, Clone)]
pub struct RequestHeaders {
    /// Lower-case; present and not `0`/`false`/empty marks a backoffice request.
    pub backoffice: String,
    /// Lower-case; its value is `clientType` in expressions.
    pub client_type: String,
}

/// One problem with the process settings, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct SettingError {
    pub variable: &'static str,
    pub message: String,
}

/// Where the rules come from: the rule file, or the native file's inline rules (as JSON text,
/// with the label their problems are reported under).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesSource {
    File(PathBuf),
    Inline { label: String, text: String },
}

/// What [`load`] found: the settings, where the rules are, and how it was configured.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub rules: RulesSource,
    /// Where the configuration came from, for `check-config` and the start-up log.
    pub origin: String,
    /// Mia variables that were set but ignored because the native file wins.
    pub ignored: Vec<&'static str>,
}

/// Every problem found while loading, settings and rules together.
#[derive(Debug, Default, thiserror::Error)]
#[error("{} configuration problem(s)", .problems.len())]
pub struct ConfigErrors {
    pub problems: Vec<String>,
    /// Where the rules are, when that could be told despite the problems, so that the rules'
    /// own problems are listed in the same run.
    pub rules: Option<RulesSource>,
}

impl ConfigErrors {
    pub fn new(problems: Vec<String>) -> ConfigErrors {
        ConfigErrors {
            problems,
            rules: None,
        }
    }
}

/// Reads the settings from `vars` (or the native file `CHECKPOINT_CONFIG` names) and finds the
/// rules. Reports every problem of the settings.
pub fn load(vars: &std::collections::HashMap<String, String>) -> Result<Loaded, ConfigErrors> {
    if let Some(path) = vars
        .get(env::CHECKPOINT_CONFIG)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        let loaded = file::load(std::path::Path::new(path), vars)?;
        // A variable the file refers to (`${CHECKPOINT_GRPC_ADDR}`) is used, not ignored.
        let ignored = env::ALL
            .iter()
            .chain(grpc::ALL)
            .chain(login_redirect::ALL)
            .copied()
            .filter(|name| {
                *name != env::CHECKPOINT_CONFIG
                    && vars.contains_key(*name)
                    && !loaded.referenced.iter().any(|r| r == name)
            })
            .collect();
        return Ok(Loaded {
            settings: loaded.settings,
            rules: loaded.rules,
            origin: format!("{path} ({})", env::CHECKPOINT_CONFIG),
            ignored,
        });
    }
    match env::settings_from(vars) {
        Ok(settings) => Ok(Loaded {
            rules: RulesSource::File(settings.rules_file.clone()),
            settings,
            origin: "environment variables".to_owned(),
            ignored: Vec::new(),
        }),
        Err(errors) => Err(ConfigErrors {
            problems: errors.iter().map(ToString::to_string).collect(),
            rules: env::rules_file(vars).map(RulesSource::File),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_tcp_or_unix() {
        let ok: &[(&str, ListenAddr)] = &[
            (
                "127.0.0.1:50051",
                ListenAddr::Tcp("127.0.0.1:50051".parse().expect("addr")),
            ),
            ("[::]:1", ListenAddr::Tcp("[::]:1".parse().expect("addr"))),
            (
                "unix:/run/checkpoint/grpc.sock",
                ListenAddr::Unix("/run/checkpoint/grpc.sock".into()),
            ),
            (
                "unix:///run/grpc.sock",
                ListenAddr::Unix("/run/grpc.sock".into()),
            ),
            ("unix:grpc.sock", ListenAddr::Unix("grpc.sock".into())),
        ];
        for (text, want) in ok {
            assert_eq!(text.parse::<ListenAddr>().as_ref(), Ok(want), "{text}");
        }
        assert_eq!(
            ListenAddr::Unix("/run/grpc.sock".into()).to_string(),
            "unix:/run/grpc.sock"
        );
        for bad in [
            "unix:",
            "unix://",
            "unix://relative",
            "localhost:50051",
            "50051",
            "",
        ] {
            assert!(
                bad.parse::<ListenAddr>().is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn log_levels_are_known_levels_or_directives_with_known_levels() {
        for ok in [
            "info",
            "WARN",
            "off",
            "checkpoint=debug,info",
            " trace ",
            "info,checkpoint::decision=off",
            "checkpoint[check]=debug",
        ] {
            assert_eq!(log_level(ok), Ok(()), "{ok:?}");
        }
        for (bad, says) in [
            ("warning", "\"warning\" is not a log level"),
            ("verbose", "\"verbose\" is not a log level"),
            ("checkpoint", "\"checkpoint\" is not a log level"),
            (
                "info,checkpoint=loud",
                "\"loud\" is not a log level in \"checkpoint=loud\"",
            ),
            ("", "is empty"),
            ("5", "\"5\" is not a log level"),
        ] {
            let message = log_level(bad).expect_err(bad);
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }

    #[test]
    fn file_modes_are_octal() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        for bad in ["", "0o", "888", "1777", "rw-rw----", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
