//! Configuration: the process settings and the rule file.
//!
//! Mia-Platform's environment variables (see README) are read by [`env`] and mapped onto the one
//! native model below, [`Settings`]; nothing else in the crate reads the environment. The rule
//! file (`auth.json`) is loaded by [`rules`]. Both collect every problem before failing, so that
//! an operator fixes a bad deployment in one round.
//!
//! Called by `main` (and by tests) before any port is bound. Must never read the process
//! environment itself: callers pass the variables in as a map.

pub mod duration;
pub mod env;
pub mod file;
pub mod rules;
pub mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use rules::{Rule, RuleError, RuleSet};

/// Everything checkpoint needs to start, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `Authorization/Check`, health and reflection are served.
    pub grpc_addr: SocketAddr,
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
    /// The rule file (`<CONFIGURATION_PATH>/<CONFIGURATION_FILE_NAME>.json`).
    pub rules_file: PathBuf,
    /// The identity sources, in the order they are asked.
    pub sources: Vec<sources::SourceSettings>,
    /// How long identity answers are reused; a zero TTL turns the cache off.
    pub identity_cache: crate::identity::CacheSettings,
    pub user_headers: UserHeaders,
    pub request_headers: RequestHeaders,
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

/// Settings plus the loaded rule file: everything `run` needs.
#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    pub rules: RuleSet,
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
}

impl Config {
    /// Reads settings from `vars`, then the rule file they name. Reports every problem: those
    /// of the settings and those of the rule file together, whenever the file can be named.
    pub fn load(vars: &std::collections::HashMap<String, String>) -> Result<Config, ConfigErrors> {
        if let Some(path) = vars
            .get(env::CHECKPOINT_CONFIG)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            let (settings, rules) = file::load(std::path::Path::new(path))
                .map_err(|problems| ConfigErrors { problems })?;
            let ignored = env::ALL
                .iter()
                .copied()
                .filter(|name| *name != env::CHECKPOINT_CONFIG && vars.contains_key(*name))
                .collect();
            return Ok(Config {
                settings,
                rules,
                origin: format!("{path} ({})", env::CHECKPOINT_CONFIG),
                ignored,
            });
        }
        let settings = env::settings_from(vars);
        let rules_file = match &settings {
            Ok(s) => Some(s.rules_file.clone()),
            Err(_) => env::rules_file(vars),
        };
        let rules = rules_file.map(|file| RuleSet::load(&file));
        match (settings, rules) {
            (Ok(settings), Some(Ok(rules))) => Ok(Config {
                settings,
                rules,
                origin: "environment variables".to_owned(),
                ignored: Vec::new(),
            }),
            (settings, rules) => {
                let mut problems: Vec<String> = match settings {
                    Err(errors) => errors.iter().map(ToString::to_string).collect(),
                    Ok(_) => Vec::new(),
                };
                if let Some(Err(errors)) = rules {
                    problems.extend(errors.iter().map(ToString::to_string));
                }
                Err(ConfigErrors { problems })
            }
        }
    }
}
