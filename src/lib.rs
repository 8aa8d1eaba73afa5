//! checkpoint: an Envoy external-authorization (ext_authz) gRPC server that reproduces the
//! Mia-Platform authorization flow.
//!
//! A `Check` walks one road, one module per stage:
//!
//! - [`request`]: the boundary in. `CheckRequest` becomes our own [`request::Request`]: one
//!   case-insensitive header view, the method, and the path normalised the way upstreams read it.
//! - [`route`]: stage 1. Finds the `auth.json` rule for the path and method.
//! - [`identity`]: stage 2. Finds out who the caller is through an identity source (the
//!   authentication manager's user-info endpoint, or trusted user headers).
//! - [`policy`]: stage 3. Evaluates the rule's compiled expression; pure functions.
//! - [`response`]: stage 4, the boundary out. Turns the outcome into a `CheckResponse`; holds the
//!   one table from outcome to gRPC code, HTTP status and body.
//!
//! Around the road:
//!
//! - [`check`]: runs the stages in order for one request and produces the [`check::Outcome`].
//! - [`config`]: process settings (Mia-Platform's environment variables mapped onto one native
//!   model) and the rule file loader, which reports every problem at once.
//! - [`service`]: the gRPC boundary: `Authorization/Check`, gRPC health and reflection.
//! - [`grpc`]: checkpoint's own HTTP/2 server, which runs Check on the frames it reads and hands
//!   every other RPC to tonic's services.
//! - [`status`]: the HTTP status routes `/-/healthz`, `/-/ready`, `/-/check-up`, and
//!   Prometheus' `/metrics`.
//! - [`telemetry`]: structured logs, the Prometheus metrics and the decision id.
//! - [`run`]: starts everything on already-bound listeners and shuts down gracefully.

pub mod check;
pub mod config;
pub mod envoy;
pub mod identity;
pub mod policy;
pub mod request;
pub mod response;
pub mod route;
pub mod status;
pub mod telemetry;
pub mod transport;

mod server;

pub use server::{App, GrpcListener, Listeners, RunError, run};
