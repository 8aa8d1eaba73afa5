//! checkpoint: an Envoy external-authorization (ext_authz) gRPC server that reproduces the
//! Mia-Platform authorization flow.
//!
//! A `Check` walks one road, one module per stage:
//!
//! - [`envoy`]: the boundary with Envoy, the only module that names protobuf and tonic's codec:
//!   the `Authorization/Check` service, the one decoder (`CheckRequest` bytes -> our own
//!   [`request::Request`]) and the one encoder ([`response::Answer`] -> `CheckResponse` bytes).
//! - [`request`]: the request view: one case-insensitive header view, the method, and the path
//!   normalised the way upstreams read it.
//! - [`route`]: stage 1. Finds the `auth.json` rule for the path and method.
//! - [`identity`]: stage 2. Finds out who the caller is through the configured identity sources
//!   (user-info, JWT, introspection, API keys, mTLS, Envoy metadata, trusted headers), with the
//!   identity cache.
//! - [`policy`]: stage 3. Evaluates the rule's compiled expression; pure functions.
//! - [`response`]: stage 4. Turns the outcome into a plain answer; holds the one table from
//!   outcome to gRPC code, HTTP status and body. Pure.
//!
//! Around the road:
//!
//! - [`check`]: runs the stages in order for one request and produces the [`check::Outcome`].
//! - [`config`]: process settings (Mia-Platform's environment variables and the native file
//!   mapped onto one model, one cross-field validator); imports no stage.
//! - [`rules`]: the rule file: load, validate, compile; and [`Config`], settings and rules
//!   together, every problem reported at once.
//! - [`transport`]: the connections tonic serves: limits, idle timeout, TLS.
//! - [`status`]: the HTTP status routes `/-/healthz`, `/-/ready`, `/-/check-up`, and
//!   Prometheus' `/metrics`.
//! - [`telemetry`]: structured logs and the decision line, the Prometheus metrics and the
//!   decision id.
//! - [`cli`]: the command line's words (help, `check-config`'s summary).
//! - [`reload`]: the configuration that can change while serving, swapped whole on a file
//!   change, `SIGHUP` or a poll.
//! - [`run`]: starts everything on already-bound listeners and shuts down gracefully.

pub mod check;
pub mod cli;
pub mod config;
pub mod envoy;
pub mod identity;
pub mod policy;
pub mod reload;
pub mod request;
pub mod response;
pub mod route;
pub mod rules;
pub mod status;
pub mod telemetry;
pub mod transport;

mod server;

pub use rules::Config;
pub use server::{App, GrpcListener, Listeners, RunError, run};
