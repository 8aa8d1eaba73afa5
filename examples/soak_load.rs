//! Load generator of the soak (`scripts/soak.sh`): mixed traffic through Envoy at a fixed rate,
//! every answer checked, checkpoint's resident memory sampled; the mix and the checks are in
//! tests/soak_support/mod.rs, shared with the test command's 60-second soak (tests/soak.rs).
//!
//! Usage: `soak_load ADDR [--rate R] [--duration S] [--warmup S] [--connections C]
//!         [--streams N] [--warm-users U] [--pid PID] [--window S] [--run ID] [--json FILE]
//!         [--max-growth PCT]`
//!
//! ADDR is Envoy's plain-HTTP listener. `--rate 0` is the closed loop (C x N requests in flight,
//! back to back): the peak. Prints a window per line and a summary; `--json FILE` writes the
//! whole report. Exits 1 when an answer was unexpected or checkpoint's VmRSS grew by PCT (5) or
//! more between the warm-up's end and the run's end.

#[path = "../tests/soak_support/mod.rs"]
mod soak_support;

use std::time::Duration;

use anyhow::{Context, bail};

const USAGE: &str = "usage: soak_load ADDR [--rate R] [--duration S] [--warmup S] [--connections C] \
                     [--streams N] [--warm-users U] [--pid PID] [--window S] [--run ID] \
                     [--json FILE] [--max-growth PCT]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = args.next().context(USAGE)?.parse().context("ADDR")?;
    let mut options = soak_support::Options {
        target,
        rate: 1000.0,
        duration: Duration::from_secs(600),
        warmup: Duration::from_secs(120),
        connections: 4,
        streams: 8,
        warm_users: 100,
        pid: None,
        window: Duration::from_secs(60),
        run: std::process::id().to_string(),
        progress: true,
    };
    let mut json = None;
    let mut max_growth = 5.0;
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        let seconds = || -> anyhow::Result<Duration> { Ok(Duration::from_secs(value.parse()?)) };
        match flag.as_str() {
            "--rate" => options.rate = value.parse()?,
            "--duration" => options.duration = seconds()?,
            "--warmup" => options.warmup = seconds()?,
            "--connections" => options.connections = value.parse()?,
            "--streams" => options.streams = value.parse()?,
            "--warm-users" => options.warm_users = value.parse()?,
            "--pid" => options.pid = Some(value.parse()?),
            "--window" => options.window = seconds()?,
            "--run" => options.run = value,
            "--json" => json = Some(value),
            "--max-growth" => max_growth = value.parse()?,
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(soak_support::run(options))?;
    print!("{}", report.text());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {path}"))?;
    }
    let failures = report.failures(max_growth);
    for f in &failures {
        println!("FAILED: {f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
