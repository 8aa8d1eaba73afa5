//! The `checkpoint` binary: parses the command line, loads and validates the configuration,
//! sets up logging, binds the sockets and hands over to [`checkpoint::run`].
//!
//! `checkpoint` or `checkpoint serve`: serve. `checkpoint check-config`: validate and summarise.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use checkpoint::config::{Config, ConfigErrors};
use checkpoint::{App, Listeners, run, telemetry};

const USAGE: &str = "usage: checkpoint [serve | check-config | schema | --help | --version]

  serve         serve Envoy's Authorization/Check (the default)
  check-config  load and validate the configuration and the rules, print a summary
  schema        print the JSON Schema of the native configuration file (CHECKPOINT_CONFIG)

Configuration comes from CHECKPOINT_CONFIG (a YAML or JSON file) or from Mia-Platform's
environment variables; see README.md for the reference.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    if args.len() > 1 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match command {
        "serve" => serve(),
        "check-config" => check_config(),
        "schema" => {
            print!("{}", checkpoint::config::file::schema());
            ExitCode::SUCCESS
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        "-V" | "--version" => {
            println!("checkpoint {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("checkpoint: unknown command \"{other}\"\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn environment() -> HashMap<String, String> {
    // Non-UTF-8 variables cannot be ours; skip them rather than panic.
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn load_from(env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
    let config = Config::load(env)?;
    telemetry::filter(&config.settings.log_level).map_err(|e| ConfigErrors {
        problems: vec![format!("LOG_LEVEL: {e}")],
    })?;
    Ok(config)
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

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("checkpoint: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Loads the configuration and builds the identity sources: everything that can be wrong
/// before a port is bound. Runs inside the runtime (sources may start background refreshes).
fn prepare(
    env: &HashMap<String, String>,
) -> Result<(App, String, Vec<&'static str>), ConfigErrors> {
    let config = load_from(env)?;
    let (origin, ignored) = (config.origin.clone(), config.ignored.clone());
    Ok((App::new(config, env)?, origin, ignored))
}

fn check_config() -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let env = environment();
    let _guard = rt.enter();
    match prepare(&env) {
        Ok((app, origin, ignored)) => {
            let s = &app.settings;
            let rules = &app.checker.rules;
            println!("configuration is valid");
            println!("  from:            {origin}");
            if !ignored.is_empty() {
                println!(
                    "  ignored:         {} (CHECKPOINT_CONFIG wins over environment variables)",
                    ignored.join(", ")
                );
            }
            println!("  rule file:       {}", rules.file.display());
            println!("  rules:           {}", rules.table.len());
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
                println!(
                    "    {method} {path}: {}{}{backoffice}{sources}",
                    rule.authorization.expression.source(),
                    if rule.authorization.public {
                        " [public]"
                    } else {
                        ""
                    },
                );
            }
            let names: Vec<&str> = app.checker.identity.names().collect();
            println!("  identity source: {}", names.join(", "));
            println!("  strict mode:     {}", s.strict_mode);
            println!("  grpc address:    {}", s.grpc_addr);
            println!("  status address:  {}", s.http_addr);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(&errors);
            ExitCode::FAILURE
        }
    }
}

fn serve() -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let env = environment();
    let prepared = {
        let _guard = rt.enter();
        prepare(&env)
    };
    let (app, origin, ignored) = match prepared {
        Ok(prepared) => prepared,
        Err(errors) => {
            report(&errors);
            return ExitCode::FAILURE;
        }
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
    tracing::info!(configuration = %origin, "configuration loaded");
    match rt.block_on(serve_async(app)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "checkpoint stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(app: App) -> anyhow::Result<()> {
    let grpc_addr = app.settings.grpc_addr;
    let http_addr = app.settings.http_addr;
    let listeners = Listeners {
        grpc: tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {grpc_addr}"))?,
        http: tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding the status address {http_addr}"))?,
    };
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening");
    run(app, listeners, termination()).await?;
    telemetry::flush();
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; falling back to Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
