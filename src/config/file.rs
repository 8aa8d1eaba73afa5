//! The native configuration file (`CHECKPOINT_CONFIG`): YAML, or JSON when the name ends in
//! `.json`. It maps onto the same [`Settings`] as Mia's environment variables; when both are
//! given, the file wins and `check-config` lists the variables it ignored.
//!
//! Called by `Config::load`. Structure errors come from serde with their line and column
//! (`deny_unknown_fields` everywhere); the rules it names or holds inline are then compiled by
//! `config::rules`, which lists every problem. The JSON Schema of this format is generated from
//! these types (`checkpoint schema`) and shipped as `schema/checkpoint.schema.json`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::CacheSettings;
use super::keys::{Duplicate, Position};
use super::sources::{SourceSettings, Span};
use super::{ConfigErrors, ListenAddr, RequestHeaders, RulesSource, Settings, UserHeaders, env};

/// The only version this build reads.
pub const VERSION: u32 = 1;

/// checkpoint's native configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The format's version: 1.
    pub version: u32,
    #[serde(default)]
    pub server: ServerSection,
    pub rules: RulesSection,
    pub identity: IdentitySection,
    #[serde(default)]
    pub user_headers: UserHeadersSection,
    #[serde(default)]
    pub request_headers: RequestHeadersSection,
    #[serde(default)]
    pub responses: ResponsesSection,
    #[serde(default)]
    pub reload: ReloadSection,
    /// Traces (OpenTelemetry, OTLP over gRPC). Each field left out is read from its standard
    /// `OTEL_*` variable; with no endpoint, tracing is off.
    #[serde(default)]
    pub telemetry: super::telemetry::TelemetrySection,
    /// Roles and bindings (RBAC): inline, in a file, or Rönd's exported collections.
    pub rbac: Option<super::rbac::RbacSection>,
    /// Send a browser that needs a login and has none to this login page (302) instead of
    /// answering 401; API clients still get the 401. Off when left out; needs strict mode.
    pub login_redirect: Option<super::login_redirect::LoginRedirectSection>,
}

/// What makes checkpoint reload this file and the rule files besides `SIGHUP`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSection {
    /// Watch the folders of this file and the rule files (Kubernetes ConfigMap updates
    /// included). Default true.
    #[serde(deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub watch: bool,
    /// Also compare the files' contents this often, as a fallback; `0s` (the default): never.
    pub poll_interval: Span,
}

impl Default for ReloadSection {
    fn default() -> Self {
        ReloadSection {
            watch: env::DEFAULT_CHECKPOINT_RELOAD_WATCH,
            poll_interval: Span(env::DEFAULT_CHECKPOINT_RELOAD_POLL_INTERVAL),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// gRPC address (Check, health, reflection): `host:port`, or `unix:PATH` for a Unix domain
    /// socket shared with an Envoy on the same host or in the same pod. Default `0.0.0.0:50051`.
    pub grpc_addr: String,
    /// Permissions of the Unix socket file, in octal. Default `0660`.
    pub grpc_socket_mode: String,
    /// Runtime worker threads; 0 = one per CPU the process may use (CPU affinity and cgroup
    /// quota count). With one, checkpoint runs tokio's single-threaded scheduler. Default 0.
    pub worker_threads: u64,
    /// Status routes address. Default `0.0.0.0:3000`.
    pub http_addr: String,
    /// `tracing` filter. Default `info`.
    pub log_level: String,
    /// Serving goes on this long after SIGTERM while reporting not ready. Default 10s.
    pub shutdown_delay: Span,
    /// Bound of the drain of in-flight Checks. Default 30s.
    pub drain_timeout: Span,
    /// Reported by the status routes. Default: the crate version.
    pub service_version: Option<String>,
    /// Limits, keepalives and age of the gRPC port's connections.
    pub connections: super::grpc::ConnectionsSection,
    /// TLS on the gRPC port (optional; mutual TLS with `client_ca`).
    pub tls: super::grpc::TlsSection,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            grpc_addr: env::DEFAULT_CHECKPOINT_GRPC_ADDR.to_string(),
            grpc_socket_mode: format!("{:04o}", env::DEFAULT_CHECKPOINT_GRPC_SOCKET_MODE),
            worker_threads: 0,
            http_addr: format!("0.0.0.0:{}", env::DEFAULT_HTTP_PORT),
            log_level: env::DEFAULT_LOG_LEVEL.into(),
            shutdown_delay: Span(env::DEFAULT_DELAY_SHUTDOWN_SECONDS),
            drain_timeout: Span(env::DEFAULT_CHECKPOINT_DRAIN_TIMEOUT),
            service_version: None,
            connections: super::grpc::ConnectionsSection::default(),
            tls: super::grpc::TlsSection::default(),
        }
    }
}

/// The `auth.json` rules: a file, or the same structure inline; exactly one of the two.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    /// Path of an `auth.json` file, relative to this configuration file.
    pub file: Option<String>,
    /// The `auth.json` structure itself: paths, then methods, then `authorization`,
    /// `backofficeAuthorization` and `identity` (the source names the rule accepts).
    pub inline: Option<serde_json::Map<String, serde_json::Value>>,
    /// Path of a shadow rule file (the `auth.json` format), relative to this configuration
    /// file: evaluated for every Check on the same identity, never enforced; disagreements are
    /// logged and counted.
    pub shadow: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Asked in order: the first that finds a credential it understands decides; one that finds
    /// none passes on; an invalid credential is a 401.
    pub sources: Vec<SourceSettings>,
    #[serde(default)]
    pub cache: CacheSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// How long a user is reused (never past the credential's expiry); 0 turns the cache off.
    pub ttl: Span,
    /// How long an anonymous or invalid answer is reused.
    pub negative_ttl: Span,
    pub max_entries: u64,
    /// How long past its TTL a user is still served while the identity provider is unavailable
    /// (never past the credential's expiry, never after a refusal); 0 (the default) turns it off.
    pub stale_if_error: Span,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            ttl: Span(env::DEFAULT_CHECKPOINT_IDENTITY_CACHE_TTL),
            negative_ttl: Span(env::DEFAULT_CHECKPOINT_NEGATIVE_CACHE_TTL),
            max_entries: env::DEFAULT_CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES,
            stale_if_error: Span(env::DEFAULT_CHECKPOINT_IDENTITY_STALE_IF_ERROR),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UserHeadersSection {
    pub user_id: String,
    pub groups: String,
    pub properties: String,
}

impl Default for UserHeadersSection {
    fn default() -> Self {
        UserHeadersSection {
            user_id: env::DEFAULT_USERID_HEADER_KEY.into(),
            groups: env::DEFAULT_GROUPS_HEADER_KEY.into(),
            properties: env::DEFAULT_USER_PROPERTIES_HEADER_KEY.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestHeadersSection {
    pub backoffice: String,
    pub client_type: String,
}

impl Default for RequestHeadersSection {
    fn default() -> Self {
        RequestHeadersSection {
            backoffice: env::DEFAULT_BACKOFFICE_HEADER_KEY.into(),
            client_type: env::DEFAULT_CLIENT_TYPE_HEADER_KEY.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesSection {
    /// Strict mode denies; off, 401/403/404 become OK with `mia-allowed: 0`.
    #[serde(deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub strict_mode: bool,
    /// Add `decision`, `reason` and `user_id` to every answer as dynamic metadata under
    /// `envoy.filters.http.ext_authz` (for access logs and later filters). Default false: Envoy
    /// spends measurably on every Struct it merges (bench/RESULTS.md).
    #[serde(deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub dynamic_metadata: bool,
    /// Send the decision id upstream on allowed requests as `x-checkpoint-decision-id`
    /// (overwriting). Default false; denies always give it to the client.
    pub decision_id_upstream: bool,
}

impl Default for ResponsesSection {
    fn default() -> Self {
        ResponsesSection {
            strict_mode: true,
            dynamic_metadata: env::DEFAULT_CHECKPOINT_DYNAMIC_METADATA,
            decision_id_upstream: env::DEFAULT_CHECKPOINT_DECISION_ID_HEADER_UPSTREAM,
        }
    }
}

/// The JSON Schema of the file, pretty-printed.
pub fn schema() -> String {
    let schema = schemars::schema_for!(FileConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// A loaded native file.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub rules: RulesSource,
    /// The environment variables its `${...}` references named.
    pub referenced: Vec<String>,
}

/// Reads the file at `path` into settings and rules, after expanding its `${VAR}` references
/// from `vars` (see `config::expand`); every problem names the file and, for references,
/// structure errors and duplicate keys, the line and column in the file as written.
pub fn load(path: &Path, vars: &HashMap<String, String>) -> Result<Loaded, ConfigErrors> {
    let label = path.display().to_string();
    let written = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::new(vec![format!(
            "{label}: cannot read the configuration file: {e}"
        )])
    })?;
    let json = label.ends_with(".json");
    let expanded =
        super::expand::expand(&written, vars, &label, !json).map_err(ConfigErrors::new)?;
    let text = &expanded.text;
    let place = |(line, column): Position| {
        let (line, column) = expanded.original((line, column));
        format!("{label}:{line}:{column}")
    };
    let mut problems = duplicates(text, json)
        .iter()
        .map(|d| {
            format!(
                "{}: {}",
                place(d.second),
                d.describe(&place(d.first), &d.path)
            )
        })
        .collect::<Vec<_>>();
    let parsed: Result<FileConfig, (String, Option<Position>)> = if json {
        serde_json::from_str(text).map_err(|e| (e.to_string(), Some((e.line(), e.column()))))
    } else {
        serde_yaml_ng::from_str(text)
            .map_err(|e| (e.to_string(), e.location().map(|l| (l.line(), l.column()))))
    };
    match parsed {
        Ok(file) => match (
            super::telemetry::resolve(&file.telemetry, vars).map_err(|found| {
                found
                    .into_iter()
                    .map(|(at, message)| match at {
                        super::telemetry::Where::Field(field) => {
                            format!("{label}: telemetry.{field}: {message}")
                        }
                        super::telemetry::Where::Variable(variable) => {
                            format!("{label}: telemetry: {variable}: {message}")
                        }
                    })
                    .collect::<Vec<_>>()
            }),
            from_file(
                file,
                &label,
                path.parent().unwrap_or(Path::new(".")),
                &|keys: &[&str]| {
                    let path: Vec<super::keys::Segment> = keys
                        .iter()
                        .map(|k| super::keys::Segment::Key((*k).to_owned()))
                        .collect();
                    super::keys::yaml_position(text, &path).map_or_else(|| label.clone(), place)
                },
            ),
        ) {
            (Ok(traces), Ok((mut settings, rules))) if problems.is_empty() => {
                settings.telemetry = traces;
                // Inline roles and bindings are placed by the file's own text, and their
                // positions mapped back over the `${VAR}` references to the file as written.
                if let Some(super::rbac::RbacSettings {
                    source:
                        super::rbac::RbacSource::Inline {
                            text: inline,
                            shifts,
                            ..
                        },
                    ..
                }) = &mut settings.rbac
                {
                    inline.clone_from(text);
                    shifts.clone_from(&expanded.shifts);
                }
                Ok(Loaded {
                    settings,
                    rules,
                    referenced: expanded.referenced,
                })
            }
            (Err(more), Ok((_, rules))) => {
                problems.extend(more);
                Err(ConfigErrors {
                    problems,
                    rules: Some(rules),
                })
            }
            (Err(more), Err((rest, rules))) => {
                problems.extend(more);
                problems.extend(rest);
                Err(ConfigErrors { problems, rules })
            }
            (Ok(_), Ok((_, rules))) => Err(ConfigErrors {
                problems,
                rules: Some(rules),
            }),
            (Ok(_), Err((more, rules))) => {
                problems.extend(more);
                Err(ConfigErrors { problems, rules })
            }
        },
        Err((message, position)) => {
            // serde's own "duplicate field" (no first position) is already listed, with both.
            if problems.is_empty() || !message.contains("duplicate field `") {
                let place = position.map_or_else(|| label.clone(), place);
                problems.push(format!("{place}: {}", strip_position(&message)));
            }
            Err(ConfigErrors::new(problems))
        }
    }
}

/// Every duplicate key of the file, in file order. serde keeps the last of two equal keys in a
/// map (inline rules, claims), so these must be found apart.
fn duplicates(text: &str, json: bool) -> Vec<Duplicate> {
    let found = if json {
        // The scanner reads only what serde_json accepts; a syntax error is reported by the load.
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => super::keys::JsonKeys::scan(text).duplicates,
            Err(_) => Vec::new(),
        }
    } else {
        super::keys::yaml_duplicates(text)
    };
    let mut found = found;
    found.sort_by_key(|d| d.second);
    found
}

fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

/// Where a key path of the file is, for a problem's message: `file:line:column`, or the file's
/// label when the key is not in the file.
pub type Locate<'a> = &'a dyn Fn(&[&str]) -> String;

/// Validates a parsed file; `dir` is where relative paths start; `locate` places the problems
/// that have a key. On failure, where the rules are when that could be told, so that their
/// problems are listed too.
pub fn from_file(
    file: FileConfig,
    label: &str,
    dir: &Path,
    locate: Locate<'_>,
) -> Result<(Settings, RulesSource), (Vec<String>, Option<RulesSource>)> {
    let mut problems = Vec::new();
    if file.version != VERSION {
        problems.push(format!(
            "{label}: version: {} is not supported (this build reads version {VERSION})",
            file.version
        ));
    }
    let addr = |field: &str, text: &str, problems: &mut Vec<String>| {
        text.parse::<SocketAddr>().map_err(|_| {
            problems.push(format!(
                "{label}: server.{field}: \"{text}\" is not an address such as 0.0.0.0:50051"
            ));
        })
    };
    let grpc_addr = file
        .server
        .grpc_addr
        .parse::<ListenAddr>()
        .map_err(|message| problems.push(format!("{label}: server.grpc_addr: {message}")));
    let grpc_socket_mode = super::parse_mode(&file.server.grpc_socket_mode)
        .map_err(|message| problems.push(format!("{label}: server.grpc_socket_mode: {message}")));
    if file.server.worker_threads > env::MAX_WORKER_THREADS {
        problems.push(format!(
            "{label}: server.worker_threads: {} is more than {}",
            file.server.worker_threads,
            env::MAX_WORKER_THREADS
        ));
    }
    let http_addr = addr("http_addr", &file.server.http_addr, &mut problems);
    if let Err(message) = super::log_level(&file.server.log_level) {
        problems.push(format!("{label}: server.log_level: {message}"));
    }
    for (field, name) in [
        ("user_headers.user_id", &file.user_headers.user_id),
        ("user_headers.groups", &file.user_headers.groups),
        ("user_headers.properties", &file.user_headers.properties),
        (
            "request_headers.backoffice",
            &file.request_headers.backoffice,
        ),
        (
            "request_headers.client_type",
            &file.request_headers.client_type,
        ),
    ] {
        if !env::is_header_name(name) {
            problems.push(format!(
                "{label}: {field}: \"{name}\" is not a valid header name"
            ));
        }
    }
    let rules = match (&file.rules.file, &file.rules.inline) {
        (Some(name), None) => Some(RulesSource::File(dir.join(name))),
        (None, Some(map)) => Some(RulesSource::Inline {
            label: format!("{label}#rules.inline"),
            text: serde_json::Value::Object(map.clone()).to_string(),
        }),
        _ => {
            problems.push(format!(
                "{label}: rules: give exactly one of `file` and `inline`"
            ));
            None
        }
    };
    let rules_file = match &rules {
        Some(RulesSource::File(path)) => path.clone(),
        Some(RulesSource::Inline { label, .. }) => PathBuf::from(label),
        None => PathBuf::new(),
    };
    let rbac = file
        .rbac
        .as_ref()
        .map(|section| super::rbac::from_section(section, label, dir))
        .transpose()
        .map_err(|found| problems.extend(found));
    let login_redirect = file
        .login_redirect
        .as_ref()
        .map(|section| {
            super::login_redirect::validate(&section.into()).map_err(|found| {
                for (field, message) in found {
                    problems.push(format!(
                        "{}: login_redirect.{}: {message}",
                        locate(&["login_redirect", field.key()][..]),
                        field.key()
                    ));
                }
            })
        })
        .transpose();
    let on_unix_socket = matches!(grpc_addr, Ok(ListenAddr::Unix(_)));
    let grpc = super::grpc::validate(&file.server.connections, &file.server.tls, on_unix_socket)
        .map_err(|found| {
            for (field, message) in found {
                let section = if field.starts_with("tls.") {
                    ""
                } else {
                    "connections."
                };
                problems.push(format!("{label}: server.{section}{field}: {message}"));
            }
        });
    let (
        Ok(grpc_addr),
        Ok(grpc_socket_mode),
        Ok(http_addr),
        Some(rules),
        Ok(grpc),
        Ok(rbac),
        Ok(login_redirect),
    ) = (
        grpc_addr,
        grpc_socket_mode,
        http_addr,
        rules.clone(),
        grpc,
        rbac,
        login_redirect,
    )
    else {
        return Err((problems, rules));
    };
    if !problems.is_empty() {
        return Err((problems, Some(rules)));
    }
    let lower = |s: &str| s.to_ascii_lowercase();
    let mut grpc = grpc;
    if let Some(tls) = &mut grpc.tls {
        // Relative to the configuration file, like the rule file.
        tls.cert = dir.join(&tls.cert);
        tls.key = dir.join(&tls.key);
        tls.client_ca = tls.client_ca.as_ref().map(|ca| dir.join(ca));
    }
    let settings = Settings {
        grpc_addr,
        grpc_socket_mode,
        grpc,
        worker_threads: file.server.worker_threads as usize,
        http_addr,
        service_name: env::SERVICE_NAME.into(),
        service_version: file
            .server
            .service_version
            .clone()
            .unwrap_or_else(|| env::DEFAULT_SERVICE_VERSION.into()),
        log_level: file.server.log_level.clone(),
        shutdown_delay: file.server.shutdown_delay.0,
        drain_timeout: file.server.drain_timeout.0,
        strict_mode: file.responses.strict_mode,
        dynamic_metadata: file.responses.dynamic_metadata,
        decision_id_upstream: file.responses.decision_id_upstream,
        rules_file,
        shadow_rules_file: file.rules.shadow.as_ref().map(|name| dir.join(name)),
        reload: super::ReloadSettings {
            watch: file.reload.watch,
            poll_interval: file.reload.poll_interval.0,
        },
        sources: file
            .identity
            .sources
            .iter()
            .cloned()
            .map(|mut source| {
                // Relative to the configuration file, like the TLS files.
                if let SourceSettings::Ldap(ldap) = &mut source {
                    ldap.ca_file = ldap
                        .ca_file
                        .as_ref()
                        .map(|ca| dir.join(ca).display().to_string());
                }
                source
            })
            .collect(),
        identity_cache: CacheSettings {
            ttl: file.identity.cache.ttl.0,
            negative_ttl: file.identity.cache.negative_ttl.0,
            max_entries: file.identity.cache.max_entries,
            stale_if_error: file.identity.cache.stale_if_error.0,
        },
        user_headers: UserHeaders {
            user_id: lower(&file.user_headers.user_id),
            groups: lower(&file.user_headers.groups),
            properties: lower(&file.user_headers.properties),
        },
        request_headers: RequestHeaders {
            backoffice: lower(&file.request_headers.backoffice),
            client_type: lower(&file.request_headers.client_type),
        },
        // Resolved with the variables by `load`.
        telemetry: Default::default(),
        rbac,
        login_redirect,
    };
    let crossed = super::cross_check(&settings);
    if !crossed.is_empty() {
        let problems = crossed
            .into_iter()
            .map(|p| {
                let keys: Vec<&str> = p.field.split('.').collect();
                format!("{}: {}: {}", locate(&keys[..]), p.field, p.message)
            })
            .collect();
        return Err((problems, Some(rules)));
    }
    Ok((settings, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rules::RuleSet;

    /// The settings and, as `Config::load` does, the compiled rules, every problem together.
    fn parse(yaml: &str) -> Result<(Settings, RuleSet), Vec<String>> {
        let file = serde_yaml_ng::from_str::<FileConfig>(yaml).map_err(|e| vec![e.to_string()])?;
        let strings =
            |e: Vec<crate::rules::RuleError>| e.iter().map(ToString::to_string).collect::<Vec<_>>();
        match from_file(file, "checkpoint.yaml", Path::new("."), &|_| {
            "checkpoint.yaml".to_owned()
        }) {
            Ok((settings, source)) => {
                Ok((settings, RuleSet::from_source(&source).map_err(strings)?))
            }
            Err((mut problems, source)) => {
                if let Some(Err(more)) = source.as_ref().map(RuleSet::from_source) {
                    problems.extend(strings(more));
                }
                Err(problems)
            }
        }
    }

    #[test]
    fn a_full_file_maps_onto_settings() {
        let (settings, rules) = parse(
            r#"
version: 1
server: { grpc_addr: "127.0.0.1:50051", http_addr: "127.0.0.1:3000", shutdown_delay: 2s }
rules:
  inline:
    /admin:
      ALL:
        authorization: { expression: "groups.admin", public: false }
        identity: [mtls]
identity:
  cache: { ttl: 1m, negative_ttl: 0 }
  sources:
    - type: mtls
      principals: [{ principal: "spiffe://x/ns/a/sa/b", groups: [admin] }]
    - type: userinfo
      url: http://auth/userinfo
      properties: [email]
user_headers: { user_id: X-User }
responses: { strict_mode: false }
"#,
        )
        .expect("valid");
        assert_eq!(settings.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(settings.shutdown_delay, std::time::Duration::from_secs(2));
        assert_eq!(
            settings.identity_cache.ttl,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(settings.sources.len(), 2);
        assert_eq!(settings.sources[0].name(), "mtls");
        assert_eq!(settings.user_headers.user_id, "x-user");
        assert!(!settings.strict_mode);
        let found = rules
            .table
            .find("/admin/x", Some(crate::route::Method::Get))
            .expect("rule");
        assert_eq!(
            found.rule.identity.as_deref(),
            Some(&["mtls".to_owned()][..])
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_with_their_place() {
        let errors =
            parse("version: 1\nrules: { inline: {} }\nidentity: { sources: [] }\nextra: 1\n")
                .expect_err("unknown field");
        assert!(errors[0].contains("unknown field `extra`"), "{errors:?}");
        let errors = parse(
            "version: 2\nserver: { grpc_addr: nowhere }\nrules: { inline: { /a: { GET: { authorization: { expression: \"groups.\" } } } } }\nidentity: { sources: [] }\n",
        )
        .expect_err("bad values");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("version: 2 is not supported"))
        );
        assert!(errors.iter().any(|e| e.contains("server.grpc_addr")));
        assert!(
            errors.iter().any(
                |e| e.contains("checkpoint.yaml#rules.inline") && e.contains("rule \"/a\" GET")
            )
        );
        let errors =
            parse("version: 1\nrules: { inline: {} }\nidentity: { sources: [ { type: jwt } ] }\n")
                .expect_err("missing issuer");
        assert!(errors[0].contains("issuer"), "{errors:?}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/checkpoint.example.yaml");
        let loaded = load(&example, &HashMap::new()).expect("valid");
        assert_eq!(loaded.settings.sources.len(), 6);
        let rules = RuleSet::from_source(&loaded.rules).expect("rules compile");
        assert_eq!(rules.table.len(), 5);
    }

    /// The cross-field rules are one validator: the native file refuses what the environment
    /// refuses.
    #[test]
    fn the_native_file_refuses_what_the_environment_refuses() {
        let errors = parse(
            "version: 1\nrules: { inline: {} }\nidentity: { sources: [ { type: anonymous } ] }\nuser_headers: { user_id: x-user, groups: X-User }\nrequest_headers: { client_type: miauserproperties }\n",
        )
        .expect_err("refused");
        assert!(
            errors.iter().any(|e| e.contains("user_headers: the user id, groups and properties headers must have three different names")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains(
                "request_headers.client_type: \"miauserproperties\" is also one of the user headers"
            )),
            "{errors:?}"
        );
        let vars: std::collections::HashMap<String, String> = [
            ("CONFIGURATION_FILE_NAME", "auth"),
            ("TRUST_MIA_USER_HEADERS", "true"),
            ("USERID_HEADER_KEY", "x-user"),
            ("GROUPS_HEADER_KEY", "X-User"),
            ("CLIENT_TYPE_HEADER_KEY", "miauserproperties"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let errors = env::settings_from(&vars).expect_err("refused");
        let text: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.variable, e.message))
            .collect();
        assert!(
            text.iter().any(|e| e.contains("USERID_HEADER_KEY: the user id, groups and properties headers must have three different names")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains(
                "CLIENT_TYPE_HEADER_KEY: \"miauserproperties\" is also one of the user headers"
            )),
            "{text:?}"
        );
    }

    /// The roles header: off by default; set, a valid name that is no other header checkpoint
    /// reads or writes, refused the same way by the native file and by the variables.
    #[test]
    fn the_roles_header_is_checked_by_the_one_validator() {
        let file = |header: &str| {
            parse(&format!(
                "version: 1\nrules: {{ inline: {{}} }}\nidentity: {{ sources: [ {{ type: anonymous }} ] }}\nrbac: {{ file: rbac.yaml{header} }}\n"
            ))
        };
        let (settings, _) = file("").expect("valid");
        assert_eq!(
            settings.rbac.expect("rbac").roles_header,
            None,
            "off by default"
        );
        let (settings, _) = file(", roles_header: X-Roles").expect("valid");
        assert_eq!(
            settings.rbac.expect("rbac").roles_header.as_deref(),
            Some("x-roles")
        );
        let env_vars = |header: &str, file: bool| {
            let mut vars: HashMap<String, String> = [
                ("CONFIGURATION_FILE_NAME", "auth"),
                ("TRUST_MIA_USER_HEADERS", "true"),
                ("CHECKPOINT_RBAC_ROLES_HEADER", header),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            if file {
                vars.insert("CHECKPOINT_RBAC_FILE".into(), "/etc/rbac.yaml".into());
            }
            env::settings_from(&vars).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.variable, e.message))
                    .collect::<Vec<_>>()
            })
        };
        let settings = env_vars("X-Roles", true).expect("valid");
        assert_eq!(
            settings.rbac.expect("rbac").roles_header.as_deref(),
            Some("x-roles")
        );
        assert_eq!(
            env_vars("x-roles", false).expect_err("no roles"),
            [
                "CHECKPOINT_RBAC_ROLES_HEADER: needs CHECKPOINT_RBAC_FILE: without roles there are no roles to send"
            ]
        );
        for (name, says) in [
            ("bad header", "\"bad header\" is not a valid header name"),
            (
                "MiaUserGroups",
                "\"miausergroups\" is also one of the user headers checkpoint writes",
            ),
            (
                "client-type",
                "\"client-type\" is also a request header checkpoint reads (backoffice or client type)",
            ),
            (
                "mia-allowed",
                "\"mia-allowed\" is a header checkpoint already writes upstream",
            ),
            (
                "x-checkpoint-decision-id",
                "\"x-checkpoint-decision-id\" is a header checkpoint already writes upstream",
            ),
        ] {
            let errors = file(&format!(", roles_header: \"{name}\"")).expect_err(name);
            assert_eq!(
                errors,
                [format!("checkpoint.yaml: rbac.roles_header: {says}")]
            );
            let errors = env_vars(name, true).expect_err(name);
            assert_eq!(errors, [format!("CHECKPOINT_RBAC_ROLES_HEADER: {says}")]);
        }
    }

    /// `stale_if_error` and `max_key_staleness` are off by default; set, they are read; a
    /// `stale_if_error` without the cache is refused by the one validator, named as each front end
    /// names it.
    #[test]
    fn resilience_options_are_off_by_default_and_need_the_cache() {
        use std::time::Duration;
        let jwt = "{ type: jwt, issuer: https://idp.example }";
        let (settings, _) = parse(&format!(
            "version: 1\nrules: {{ inline: {{}} }}\nidentity: {{ sources: [ {jwt} ] }}\n"
        ))
        .expect("valid");
        assert_eq!(settings.identity_cache.stale_if_error, Duration::ZERO);
        let [crate::config::sources::SourceSettings::Jwt(source)] = settings.sources.as_slice()
        else {
            panic!("jwt expected")
        };
        assert_eq!(source.max_key_staleness.0, Duration::ZERO);
        let (settings, _) = parse(
            "version: 1\nrules: { inline: {} }\nidentity:\n  cache: { stale_if_error: 5m }\n  \
             sources: [ { type: jwt, issuer: https://idp.example, max_key_staleness: 1h } ]\n",
        )
        .expect("valid");
        assert_eq!(
            settings.identity_cache.stale_if_error,
            Duration::from_secs(300)
        );
        let [crate::config::sources::SourceSettings::Jwt(source)] = settings.sources.as_slice()
        else {
            panic!("jwt expected")
        };
        assert_eq!(source.max_key_staleness.0, Duration::from_secs(3600));

        let errors = parse(
            "version: 1\nrules: { inline: {} }\nidentity:\n  cache: { ttl: 0, stale_if_error: 5m }\n  \
             sources: [ { type: anonymous } ]\n",
        )
        .expect_err("refused");
        assert!(
            errors.iter().any(|e| e.contains(
                "identity.cache.stale_if_error: 300s needs the identity cache, which a zero TTL turns off"
            )),
            "{errors:?}"
        );
        let vars: std::collections::HashMap<String, String> = [
            ("CONFIGURATION_FILE_NAME", "auth"),
            ("USERINFO_URL", "http://auth/userinfo"),
            ("CHECKPOINT_IDENTITY_CACHE_TTL", "0"),
            ("CHECKPOINT_IDENTITY_STALE_IF_ERROR", "5m"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let errors = env::settings_from(&vars).expect_err("refused");
        assert!(
            errors
                .iter()
                .any(|e| e.variable == "CHECKPOINT_IDENTITY_STALE_IF_ERROR"
                    && e.message.contains("needs the identity cache")),
            "{errors:?}"
        );
        let vars: std::collections::HashMap<String, String> = [
            ("CONFIGURATION_FILE_NAME", "auth"),
            ("USERINFO_URL", "http://auth/userinfo"),
            ("CHECKPOINT_IDENTITY_STALE_IF_ERROR", "2m"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings = env::settings_from(&vars).expect("valid");
        assert_eq!(
            settings.identity_cache.stale_if_error,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_shipped_schema_is_the_generated_one() {
        let shipped = include_str!("../../schema/checkpoint.schema.json");
        assert_eq!(
            shipped,
            schema(),
            "run `checkpoint schema > schema/checkpoint.schema.json`"
        );
    }
}
