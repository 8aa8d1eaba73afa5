//! Structured logs through `tracing`: JSON lines on stdout, filtered by `LOG_LEVEL`.
//!
//! Called once by `main`. The decision log line is written by `service`; no module logs a
//! token, a cookie or a whole header map.

use tracing_subscriber::EnvFilter;

/// Checks a `LOG_LEVEL` value (`info`, `debug`, or full `tracing` directives).
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("invalid log level \"{level}\": {e}"))
}

/// Installs the JSON subscriber. Fails if one is already installed.
pub fn init(level: &str) -> Result<(), String> {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter(level)?)
        .try_init()
        .map_err(|e| e.to_string())
}
