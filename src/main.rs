//! The `checkpoint` binary: parses the command line, loads and validates the configuration,
//! sets up logging, binds the sockets and hands over to [`checkpoint::run`].
//!
//! `checkpoint` or `checkpoint serve`: serve. `checkpoint check-config`: validate and summarise.
//! `checkpoint explain`, `checkpoint test`: run by [`checkpoint::explain`].

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use checkpoint::Config;
use checkpoint::config::ConfigErrors;
use checkpoint::{App, GrpcListener, Listeners, cli, run, telemetry};

/// jemalloc instead of the system allocator. A Check allocates and frees a few dozen small blocks
/// (h2 frames, tonic's buffers, the request view, the answer), which glibc's malloc serves
/// measurably slower (bench/RESULTS.md, third round). And after a burst of Checks, jemalloc gives
/// the freed pages back to the kernel within seconds: glibc's malloc and mimalloc kept 2-3 MB of
/// a burst's memory resident for good, with the live heap back at its level (bench/RESULTS.md,
/// "Session 12 runs").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Turns transparent huge pages off for this process (Linux), before the server allocates.
///
/// checkpoint's live heap is a few MB. With huge pages (the allocator used before, mimalloc, asked
/// for them on its arenas) resident memory was about twice as large for the same throughput, and
/// grew in 2 MiB steps, since a huge page stays whole while any part of it is in use
/// (bench/RESULTS.md, "Ninth round"). jemalloc does not ask for them by default; the `prctl` also
/// keeps them off where the host's setting is `always`. A failure is logged and harmless: only
/// more memory.
fn no_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => serve(),
        ["check-config"] => check_config(),
        ["allowed-headers"] => allowed_headers(),
        ["schema"] => emit(&checkpoint::config::file::schema()),
        ["-h" | "--help" | "help"] => emit(cli::USAGE),
        ["-V" | "--version"] => emit(&format!("checkpoint {}\n", env!("CARGO_PKG_VERSION"))),
        ["help", command] | [command, "-h" | "--help"] => {
            match cli::COMMANDS.iter().find(|(name, _)| name == command) {
                Some((name, text)) => emit(&format!(
                    "usage: checkpoint {name}\n\n{text}\n\n{}\n",
                    cli::CONFIGURATION
                )),
                None => usage_error(&format!("unknown command \"{command}\"")),
            }
        }
        ["explain", args @ ..] => {
            finish(checkpoint::explain::explain_command(args, &environment()))
        }
        ["test", files @ ..] => finish(checkpoint::explain::cases::test_command(
            files,
            &environment(),
        )),
        [command, extra, ..] if cli::COMMANDS.iter().any(|(name, _)| name == command) => {
            usage_error(&format!("unexpected argument \"{extra}\" after {command}"))
        }
        [other, ..] => usage_error(&format!("unknown command \"{other}\"")),
    }
}

/// Prints what `explain` or `test` reported and exits with its status.
fn finish(report: checkpoint::explain::Report) -> ExitCode {
    eprint!("{}", report.stderr);
    match emit(&report.stdout) {
        ExitCode::SUCCESS => ExitCode::from(report.code),
        failed => failed,
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("checkpoint: {message}\n\n{}", cli::USAGE);
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
            emit(&checkpoint::cli::allowed_headers(&app))
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
            emit(&checkpoint::cli::summary(&app, &origin, &ignored, workers))
        }
        Err(code) => code,
    }
}

fn serve() -> ExitCode {
    let huge_pages = no_huge_pages();
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
    let traces = match telemetry::init_with_traces(&app.settings.log_level, &app.settings.telemetry)
    {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("checkpoint: cannot set up logging and traces: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = huge_pages {
        tracing::warn!(error = %e, "transparent huge pages stay on: resident memory will be higher");
    }
    for warning in checkpoint::config::warnings::warnings(&app.settings) {
        tracing::warn!(warning, "a protection is weakened by the configuration");
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
        traces = app.settings.telemetry.endpoint.as_deref().unwrap_or("off"),
        scheduler = if workers == 1 { "current_thread" } else { "multi_thread" },
        "configuration loaded"
    );
    let served = runtime.block_on(serve_async(app));
    // The last spans, sent within a bound (the exporter runs on a thread of its own).
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match served {
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

/// Completes on SIGTERM or SIGINT. SIGHUP reloads the configuration (`checkpoint::reload`,
/// which listens for it). The handlers are installed when this is called, not when the future
/// is first polled.
fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::warn!("cannot install signal handlers; falling back to Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    }
}
