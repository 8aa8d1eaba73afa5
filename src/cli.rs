//! The command line's words: the usage and each command's help, `check-config`'s summary and
//! `allowed-headers`' line. Text only; `main` runs the commands.

use crate::App;

pub const USAGE: &str = "usage: checkpoint [serve | check-config | explain | test | allowed-headers | schema | --help | --version]

  serve            serve Envoy's Authorization/Check (the default)
  check-config     load and validate the configuration and the rules, print a summary
  explain          explain the decision on one request: rule, identity, expression, answer
  test             run YAML tables of requests and expected answers against the rules
  allowed-headers  print, for Envoy's ext_authz `allowed_headers`, the request headers this
                   configuration reads (Envoy then sends no others on the Check call)
  schema           print the JSON Schema of the native configuration file (CHECKPOINT_CONFIG)

`checkpoint COMMAND --help` describes one command. Configuration comes from CHECKPOINT_CONFIG
(a YAML or JSON file) or from Mia-Platform's environment variables; see README.md for the
reference.
";

pub const CONFIGURATION: &str =
    "Configuration comes from CHECKPOINT_CONFIG (a YAML or JSON file) or from Mia-Platform's
environment variables (see README.md).";

/// Each command and its `--help`.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "serve",
        "Loads and validates the configuration and the rules, then serves Envoy's
Authorization/Check (gRPC, with health and reflection) and the status routes. SIGTERM or SIGINT:
report not ready, keep serving DELAY_SHUTDOWN_SECONDS, drain, exit 0. SIGHUP is ignored. An
invalid configuration lists every problem and exits 1. The default command.",
    ),
    (
        "check-config",
        "Loads and validates the configuration and the rules without binding a port or contacting
anyone, then prints a summary (rules, identity sources, addresses, the request headers read).
An invalid configuration lists every problem, with where it is, and exits 1.",
    ),
    (
        "explain",
        "checkpoint explain --path PATH [--method METHOD] [-H 'name: value']... [--user JSON] [--json]
checkpoint explain --check-request FILE [--user JSON] [--json]

Explains the decision on one request under this configuration: the normalised path (or why it
is refused), the rule chosen (key, method, file:line:column) and the rules it beat, the identity
source and its answer, every part of the rule's expression with its value, the permissions used,
the decision, reason and status, and the exact CheckResponse (protobuf's JSON mapping, as
grpcurl prints it). --check-request reads a CheckRequest in that mapping (FILE, or - for the
standard input), as grpcurl sends it or a capture holds it. The caller is resolved for real by
the configured identity sources (user-info is called) unless --user gives it as JSON:
{\"sub\":\"bob\",\"groups\":[\"ops\"],\"permissions\":[\"orders:read\"]} (other fields are
properties); a given user stands in for every source, API keys included. --json prints the same
for tools. Exit status: 0 allowed, 1 denied, 2 bad input or invalid configuration.",
    ),
    (
        "test",
        "checkpoint test FILE...

Runs tables of cases (YAML or JSON) against this configuration and prints PASS or FAIL for each,
with what differs and the explanation of each failure (as explain prints it), then
\"N passed, M failed\". A file holds:

cases:
  - name: ops may read orders
    request: { method: GET, path: /orders/1, headers: { authorization: Bearer TOKEN } }
    user: { sub: bob, groups: [ops] }      # optional; without it the caller is resolved for real
    expect:
      status: 200                          # the HTTP status; 200 when the request goes upstream
      set: { miauserid: bob }              # optional: headers set (upstream, or to the client)
      removed: [mia-allowed]               # optional: headers removed upstream
      # also optional: grpc (the CheckResponse code) and body (the client's body)

A request may instead be check_request: a CheckRequest in protobuf's JSON mapping.
Exit status: 0 every case passed, 1 one failed, 2 a file or the configuration cannot be read
(with its line and column).",
    ),
    (
        "allowed-headers",
        "Prints, as one line of YAML, the value of Envoy's ext_authz `allowed_headers` for this
configuration: the request headers checkpoint reads (Envoy then sends no others on the Check
call). An invalid configuration is reported as by check-config.",
    ),
    (
        "schema",
        "Prints the JSON Schema of the native configuration file (CHECKPOINT_CONFIG).",
    ),
];

/// `check-config`'s summary of a valid configuration.
pub fn summary(app: &App, origin: &str, ignored: &[&'static str], workers: usize) -> String {
    let s = &app.settings;
    let rules = &app.checker.rules;
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line("configuration is valid".to_owned());
    line(format!("  from:            {origin}"));
    if !ignored.is_empty() {
        line(format!(
            "  ignored:         {} (CHECKPOINT_CONFIG wins over environment variables)",
            ignored.join(", ")
        ));
    }
    line(format!("  rule file:       {}", rules.file.display()));
    line(format!("  rules:           {}", rules.table.len()));
    for (path, method, rule) in rules.table.iter() {
        let backoffice = if rule.backoffice.is_some() {
            " (+backoffice)"
        } else {
            ""
        };
        let sources = rule
            .identity
            .as_ref()
            .map(|names| format!(" (identity: {})", names.join(", ")))
            .unwrap_or_default();
        line(format!(
            "    {method} {path}: {}{}{backoffice}{sources}",
            rule.authorization.expression.source(),
            if rule.authorization.public {
                " [public]"
            } else {
                ""
            },
        ));
    }
    let names: Vec<&str> = app.checker.identity.names().collect();
    line(format!("  identity source: {}", names.join(", ")));
    line(format!("  strict mode:     {}", s.strict_mode));
    if let Some(redirect) = &s.login_redirect {
        line(format!(
            "  login redirect:  {} (parameter {}, {})",
            redirect.url,
            redirect.param,
            match &redirect.allowed_hosts {
                None => "every host carried".to_owned(),
                Some(hosts) if hosts.is_empty() => "path only".to_owned(),
                Some(hosts) => format!("hosts carried: {}", hosts.join(", ")),
            }
        ));
    }
    line(format!("  grpc address:    {}", s.grpc_addr));
    line(format!("  status address:  {}", s.http_addr));
    line(format!(
        "  workers:         {workers} ({})",
        if workers == 1 {
            "single-threaded scheduler"
        } else {
            "multi-threaded scheduler"
        }
    ));
    line(format!("  dynamic metadata: {}", s.dynamic_metadata));
    line(format!(
        "  traces:          {}",
        match &s.telemetry.endpoint {
            None => "off".to_owned(),
            Some(endpoint) => format!("{endpoint} (service {})", s.telemetry.service_name),
        }
    ));
    let headers = app.checker.headers_read();
    let names: Vec<&str> = headers.iter().map(String::as_str).collect();
    line(format!("  request headers: {}", names.join(", ")));
    if let Some(rbac) = &app.checker.rbac {
        let (roles, bindings) = rbac.counts();
        line(format!(
            "  rbac:            {roles} roles, {bindings} bindings from {}",
            rbac.origin
        ));
        line(format!(
            "  roles header:    {}",
            rbac.roles_header.as_deref().unwrap_or("off")
        ));
    }
    for warning in crate::config::warnings::warnings(s) {
        line(format!("  warning:         {warning}"));
    }
    for warning in crate::rules::rbac_warnings(&app.checker.rules, app.checker.rbac.as_deref()) {
        line(format!("  warning:         {warning}"));
    }
    if let Some(warning) = app
        .checker
        .login_redirect
        .as_ref()
        .and_then(|redirect| crate::login::loop_warning(redirect, &app.checker.rules))
    {
        line(format!("  warning:         {warning}"));
    }
    line(format!(
        "  grpc tls:        {}",
        match &s.grpc.tls {
            None => "off".to_owned(),
            Some(tls) if tls.client_ca.is_some() => format!("mutual TLS ({})", tls.cert.display()),
            Some(tls) => format!("on ({})", tls.cert.display()),
        }
    ));
    out
}

/// The value of Envoy's ext_authz `allowed_headers` for this configuration, as one line of YAML
/// (flow style), for scripts/render-envoy.sh's `${ALLOWED_HEADERS}`.
pub fn allowed_headers(app: &App) -> String {
    let mut names = app.checker.headers_read();
    // With tracing, the client's trace context joins the Check's span when Envoy's own tracer
    // does not set one on the call.
    if app.settings.telemetry.enabled() {
        names.extend(
            crate::telemetry::traces::PROPAGATION_HEADERS
                .iter()
                .map(|name| (*name).to_owned()),
        );
    }
    let patterns: Vec<String> = names
        .iter()
        // A JSON string is a YAML double-quoted scalar: any name stays one value.
        .map(|name| format!("{{ exact: {} }}", serde_json::Value::from(name.as_str())))
        .collect();
    format!("{{ patterns: [{}] }}\n", patterns.join(", "))
}
