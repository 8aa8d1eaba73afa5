//! The `checkpoint` binary: parses the command line, loads and validates the configuration,
//! sets up logging, binds the sockets and hands over to [`checkpoint::run`].
//!
//! `checkpoint` or `checkpoint serve`: serve. `checkpoint check-config`: validate and summarise.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use checkpoint::Config;
use checkpoint::config::ConfigErrors;
use checkpoint::{App, GrpcListener, Listeners, run, telemetry};

/// mimalloc instead of the system allocator: a Check allocates and frees a few dozen small
/// blocks (h2 frames, tonic's buffers, the request view, the answer), which glibc's malloc
/// serves measurably slower (bench/RESULTS.md, third round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: checkpoint [serve | check-config | allowed-headers | schema | --help | --version]

  serve            serve Envoy's Authorization/Check (the default)
  check-config     load and validate the configuration and the rules, print a summary
  allowed-headers  print, for Envoy's ext_authz `allowed_headers`, the request headers this
                   configuration reads (Envoy then sends no others on the Check call)
  schema           print the JSON Schema of the native configuration file (CHECKPOINT_CONFIG)

`checkpoint COMMAND --help` describes one command. Configuration comes from CHECKPOINT_CONFIG
(a YAML or JSON file) or from Mia-Platform's environment variables; see README.md for the
reference.
";

const CONFIGURATION: &str =
    "Configuration comes from CHECKPOINT_CONFIG (a YAML or JSON file) or from Mia-Platform's
environment variables (see README.md).";

/// Each command and its `--help`.
const COMMANDS: &[(&str, &str)] = &[
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => serve(),
        ["check-config"] => check_config(),
        ["allowed-headers"] => allowed_headers(),
        ["schema"] => emit(&checkpoint::config::file::schema()),
        ["-h" | "--help" | "help"] => emit(USAGE),
        ["-V" | "--version"] => emit(&format!("checkpoint {}\n", env!("CARGO_PKG_VERSION"))),
        ["help", command] | [command, "-h" | "--help"] => {
            match COMMANDS.iter().find(|(name, _)| name == command) {
                Some((name, text)) => emit(&format!(
                    "usage: checkpoint {name}\n\n{text}\n\n{CONFIGURATION}\n"
                )),
                None => usage_error(&format!("unknown command \"{command}\"")),
            }
        }
        [command, extra, ..] if COMMANDS.iter().any(|(name, _)| name == command) => {
            usage_error(&format!("unexpected argument \"{extra}\" after {command}"))
        }
        [other, ..] => usage_error(&format!("unknown command \"{other}\"")),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("checkpoint: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Writes `text` to stdout. A reader that stopped early (`checkpoint schema | head -1`) is not
/// an error: the rest of the output is simply not wanted.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("checkpoint: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn environment() -> HashMap<String, String> {
    // Non-UTF-8 variables cannot be ours; skip them rather than panic.
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn report(errors: &ConfigErrors) {
    eprintln!(
        "checkpoint: invalid configuration ({} problem(s)):",
        errors.problems.len()
    );
    for problem in &errors.problems {
        eprintln!("  - {problem}");
    }
}

/// The tokio runtime for `worker_threads` workers (0: one per CPU this process may use, which
/// counts CPU affinity and cgroup quotas). With one worker it is the single-threaded scheduler:
/// measured on a gRPC Check with one core, it spends a third less CPU per Check than the
/// multi-threaded scheduler with one worker (a third of the system calls: no cross-thread
/// wake-ups). Returns the runtime and the number of workers it runs.
fn runtime(
    worker_threads: usize,
    purpose: Purpose,
) -> Result<(tokio::runtime::Runtime, usize), ExitCode> {
    let workers = match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    // To inspect the configuration, a runtime nothing drives: the sources' background tasks
    // (a JWKS fetch) never run, so check-config and allowed-headers contact nobody.
    let built = if workers == 1 || purpose == Purpose::Inspect {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    built.map(|rt| (rt, workers)).map_err(|e| {
        eprintln!("checkpoint: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Loads the configuration, then builds the runtime it asks for and, inside it, the identity
/// sources (they may start background refreshes): everything that can be wrong before a port
/// is bound.
fn prepare(env: &HashMap<String, String>, purpose: Purpose) -> Result<Prepared, ExitCode> {
    let config = Config::load(env).map_err(|errors| {
        report(&errors);
        ExitCode::FAILURE
    })?;
    let (runtime, workers) = runtime(config.settings.worker_threads, purpose)?;
    let (origin, ignored) = (config.origin.clone(), config.ignored.clone());
    let app = {
        let _guard = runtime.enter();
        App::new(config, env)
    }
    .map_err(|errors| {
        report(&errors);
        ExitCode::FAILURE
    })?;
    Ok(Prepared {
        runtime,
        workers,
        app,
        origin,
        ignored,
    })
}

/// What the prepared application is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Serve,
    /// `check-config`, `allowed-headers`: built, validated, never run.
    Inspect,
}

struct Prepared {
    runtime: tokio::runtime::Runtime,
    workers: usize,
    app: App,
    origin: String,
    ignored: Vec<&'static str>,
}

/// `checkpoint allowed-headers`: the value of ext_authz `allowed_headers` for this
/// configuration, as one line of YAML (flow style), for scripts/render-envoy.sh's
/// `${ALLOWED_HEADERS}`. A bad configuration is reported as by `check-config`.
fn allowed_headers() -> ExitCode {
    let env = environment();
    match prepare(&env, Purpose::Inspect) {
        Ok(Prepared { runtime, app, .. }) => {
            let _guard = runtime.enter();
            let patterns: Vec<String> = app
                .checker
                .headers_read()
                .iter()
                // A JSON string is a YAML double-quoted scalar: any name stays one value.
                .map(|name| format!("{{ exact: {} }}", serde_json::Value::from(name.as_str())))
                .collect();
            emit(&format!("{{ patterns: [{}] }}\n", patterns.join(", ")))
        }
        Err(code) => code,
    }
}

fn check_config() -> ExitCode {
    let env = environment();
    match prepare(&env, Purpose::Inspect) {
        Ok(Prepared {
            runtime,
            workers,
            app,
            origin,
            ignored,
        }) => {
            let _guard = runtime.enter();
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
            let headers = app.checker.headers_read();
            let names: Vec<&str> = headers.iter().map(String::as_str).collect();
            line(format!("  request headers: {}", names.join(", ")));
            emit(&out)
        }
        Err(code) => code,
    }
}

fn serve() -> ExitCode {
    let env = environment();
    let Prepared {
        runtime,
        workers,
        app,
        origin,
        ignored,
    } = match prepare(&env, Purpose::Serve) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if let Err(e) = telemetry::init(&app.settings.log_level) {
        eprintln!("checkpoint: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    if !ignored.is_empty() {
        tracing::warn!(
            ignored = ignored.join(","),
            "CHECKPOINT_CONFIG wins: these variables are ignored"
        );
    }
    tracing::info!(
        configuration = %origin,
        workers,
        scheduler = if workers == 1 { "current_thread" } else { "multi_thread" },
        "configuration loaded"
    );
    match runtime.block_on(serve_async(app)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "checkpoint stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(app: App) -> anyhow::Result<()> {
    let shutdown = termination();
    let grpc_addr = app.settings.grpc_addr.clone();
    let http_addr = app.settings.http_addr;
    let listeners = Listeners {
        grpc: GrpcListener::bind(&grpc_addr, app.settings.grpc_socket_mode)
            .await
            .with_context(|| format!("binding the gRPC address {grpc_addr}"))?,
        http: tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding the status address {http_addr}"))?,
    };
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening");
    run(app, listeners, shutdown).await?;
    telemetry::flush();
    Ok(())
}

/// Completes on SIGTERM or SIGINT. SIGHUP, which would otherwise end the process at once (no
/// readiness flip, no drain), is ignored with a log line until reloading exists. The handlers
/// are installed when this is called, not when the future is first polled.
fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
            tracing::warn!("cannot install signal handlers; falling back to Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!(signal = "SIGTERM", "signal received");
                    return;
                }
                _ = int.recv() => {
                    tracing::info!(signal = "SIGINT", "signal received");
                    return;
                }
                _ = hup.recv() => tracing::warn!(
                    signal = "SIGHUP",
                    "signal received, ignored: reloading is not supported yet"
                ),
            }
        }
    }
}
