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
//!   (user-info, JWT, introspection, LDAP, API keys, mTLS, Envoy metadata, trusted headers), with the
//!   identity cache.
//! - [`policy`]: stage 3. Evaluates the rule's compiled expression; pure functions. With RBAC
//!   ([`rbac`]), the caller's permissions and roles on the rule's resource feed it.
//! - [`login`]: the browser login redirect: whether a request that needs a login is a browser
//!   navigation, and the `Location` to the configured login page (`check` asks it).
//! - [`response`]: stage 4. Turns the outcome into a plain answer; holds the one table from
//!   outcome to gRPC code, HTTP status and body. Pure.
//!
//! Around the road:
//!
//! - [`check`]: runs the stages in order for one request and produces the [`check::Outcome`].
//! - [`config`]: process settings (Mia-Platform's environment variables and the native file
//!   mapped onto one model, one cross-field validator); imports no stage.
//! - [`rbac`]: roles, bindings and resource scopes, loaded and checked once; the caller's
//!   effective permissions and roles on a resource, memoised with the cached identity.
//! - [`rules`]: the rule file: load, validate, compile; and [`Config`], settings and rules
//!   together, every problem reported at once.
//! - [`transport`]: the connections tonic serves: limits, idle timeout, TLS.
//! - [`status`]: the HTTP status routes `/-/healthz`, `/-/ready`, `/-/check-up`, and
//!   Prometheus' `/metrics`.
//! - [`telemetry`]: structured logs and the decision line, the Prometheus metrics and the
//!   decision id.
//! - [`cli`]: the command line's words (help, `check-config`'s summary).
//! - [`explain`]: `checkpoint explain` (why a request gets its answer) and `checkpoint test`
//!   (tables of requests and expected answers); never used by `serve`.
//! - [`reload`]: the configuration that can change while serving, swapped whole on a file
//!   change, `SIGHUP` or a poll.
//! - [`run`]: starts everything on already-bound listeners and shuts down gracefully.

// The library's API, for the binary and for embedders: [`Config`] (load and validate), [`App`]
// (build the stages), [`run`] (serve on bound listeners), the `config` model, the command line's
// words, `explain` and `test`, and telemetry's set-up. The stages are the crate's own.
pub mod cli;
pub mod config;
pub mod explain;
pub mod telemetry;

pub(crate) mod check;
pub(crate) mod envoy;
pub(crate) mod identity;
pub(crate) mod login;
pub(crate) mod policy;
pub(crate) mod rbac;
pub(crate) mod reload;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod route;
pub(crate) mod rules;
pub(crate) mod status;
pub(crate) mod transport;

mod server;

/// The properties of every parser of outside input, for the property tests and `fuzz/`.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;

pub use rules::Config;
pub use server::{App, GrpcListener, Listeners, RunError, run};

/// Not API: what the project's own criterion benches and its component tests of single identity
/// sources reach below [`run`]. No stability promise; may change with any commit.
#[doc(hidden)]
pub mod testing {
    pub use crate::check::{Decision, Denial, Outcome, Reason};
    pub use crate::envoy::{decode, encode};
    pub use crate::policy::{Expression, Facts};
    pub use crate::reload::Live;
    pub use crate::request::{Headers, Request, path};
    pub use crate::response::Responder;
    pub use crate::route::{Method, MethodKey, RouteTable};
    pub use crate::rules::RuleSet;

    /// Stage 2's sources, each testable against a real provider without a server around it.
    pub mod identity {
        pub use crate::identity::anonymous::Anonymous;
        pub use crate::identity::api_key::{ApiKeys, KeyMatch};
        pub use crate::identity::envoy_metadata::EnvoyMetadata;
        pub use crate::identity::introspection::{self, Introspection};
        pub use crate::identity::jwt::Jwt;
        pub use crate::identity::ldap::Ldap;
        pub use crate::identity::mtls::Mtls;
        pub use crate::identity::{
            CacheSettings, CacheTtl, Context, IdentityCache, Resolution, Source, User,
        };
    }
}
