//! The `checkpoint` binary: parses the command line, loads and validates the configuration,
//! sets up logging, binds the sockets and hands over to [`checkpoint::run`].
//!
//! `checkpoint` or `checkpoint serve`: serve. `checkpoint check-config`: validate and summarise.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use checkpoint::config::{Config, ConfigErrors, IdentitySettings};
use checkpoint::{Listeners, run, telemetry};

const USAGE: &str = "usage: checkpoint [serve | check-config | --help | --version]

  serve         serve Envoy's Authorization/Check (the default)
  check-config  load and validate the environment and the rule file, print a summary

Configuration comes from environment variables; see README.md for the reference.";

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

fn load() -> Result<Config, ConfigErrors> {
    let config = Config::load(&environment())?;
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

fn check_config() -> ExitCode {
    match load() {
        Ok(config) => {
            let s = &config.settings;
            println!("configuration is valid");
            println!("  rule file:       {}", config.rules.file.display());
            println!("  rules:           {}", config.rules.table.len());
            for (path, method, rule) in config.rules.table.iter() {
                let backoffice = if rule.backoffice.is_some() {
                    " (+backoffice)"
                } else {
                    ""
                };
                println!(
                    "    {method} {path}: {}{}{backoffice}",
                    rule.authorization.expression.source(),
                    if rule.authorization.public {
                        " [public]"
                    } else {
                        ""
                    },
                );
            }
            println!("  identity source: {}", s.identity.source_name());
            if let IdentitySettings::UserInfo(u) = &s.identity {
                println!("    url:            {}", u.url);
                if let Some(b) = &u.backoffice_url {
                    println!("    backoffice url: {b}");
                }
                println!("    proxied headers: {}", u.headers_to_proxy.join(","));
                println!("    timeout:        {:?}", u.timeout);
            }
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
    let config = match load() {
        Ok(config) => config,
        Err(errors) => {
            report(&errors);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = telemetry::init(&config.settings.log_level) {
        eprintln!("checkpoint: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("checkpoint: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_async(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "checkpoint stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(config: Config) -> anyhow::Result<()> {
    let grpc_addr = config.settings.grpc_addr;
    let http_addr = config.settings.http_addr;
    let listeners = Listeners {
        grpc: tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {grpc_addr}"))?,
        http: tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding the status address {http_addr}"))?,
    };
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening");
    run(config, listeners, termination()).await?;
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
