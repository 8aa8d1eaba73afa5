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
    pub identity: IdentitySettings,
    /// How long identity answers are reused; a zero TTL turns the cache off.
    pub identity_cache: crate::identity::CacheSettings,
    pub user_headers: UserHeaders,
    pub request_headers: RequestHeaders,
}

/// Where the caller's identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySettings {
    /// Ask the customer's authentication manager (Mia's default flow).
    UserInfo(Box<UserInfoSettings>),
    /// Mia's trust mode: take the user from the request's user headers.
    TrustedHeaders,
}

impl IdentitySettings {
    /// The short name used in logs and in `check-config`.
    pub fn source_name(&self) -> &'static str {
        match self {
            IdentitySettings::UserInfo(_) => "userinfo",
            IdentitySettings::TrustedHeaders => "trusted_headers",
        }
    }
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

/// The headers checkpoint writes upstream for an allowed request.
#[derive(Debug, Clone)]
pub struct UserHeaders {
    /// Lower-case header names.
    pub user_id: String,
    pub groups: String,
    pub properties: String,
    /// User fields JSON-encoded into the properties header.
    pub properties_to_proxy: Vec<String>,
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
        let settings = env::settings_from(vars);
        let rules_file = match &settings {
            Ok(s) => Some(s.rules_file.clone()),
            Err(_) => env::rules_file(vars),
        };
        let rules = rules_file.map(|file| RuleSet::load(&file));
        match (settings, rules) {
            (Ok(settings), Some(Ok(rules))) => Ok(Config { settings, rules }),
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
