//! The road of one Check: request -> route -> identity -> policy, producing an [`Outcome`].
//!
//! Called by `service` for every `Authorization/Check`; `response` turns the outcome into Envoy's
//! answer. Works on the project's own types only, so it is tested without protobufs.
//!
//! What to do in an identity outage, which Mia-Platform's documentation leaves open
//! (docs/mia-compatibility.md), is decided here: when identity is unavailable, the request goes
//! on as anonymous only if the rule would let an anonymous caller through anyway; otherwise the
//! answer is "unavailable" (503), never an allow and never a 401.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::RequestHeaders;
use crate::config::login_redirect::LoginRedirect;
use crate::identity::{Context, Failure, Lookup, Resolution, Resolver, User};
use crate::login;
use crate::policy::{self, Facts, Verdict};
use crate::rbac::{Caller, Effective, Rbac};
use crate::request::{Request, is_truthy_flag};
use crate::route::MethodKey;
use crate::rules::{Rule, RuleSet};

/// How a Check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `Outcome::user` is who goes upstream (none for an anonymous caller).
    Allow,
    Deny(Denial),
}

impl Decision {
    /// `allow` or `deny`: the word in the decision log and the dynamic metadata.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Why a Check ended as it did: one word, the same in the decision log, the dynamic metadata
/// and the metrics' `reason` label. Low cardinality by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Allowed,
    /// Identity was unavailable, and the rule lets an anonymous caller through anyway.
    AllowedIdentityUnavailable,
    NoRule,
    InvalidPath,
    LoginRequired,
    ExpressionFalse,
    InvalidCredential,
    IdentityUnavailable,
    /// A login was needed (none, or an invalid credential) and the caller is a browser
    /// navigation: sent to the configured login page (302) instead of a 401.
    LoginRedirect,
    /// A stage panicked while deciding: a defect, answered 503 and never an allow (the
    /// boundary catches the panic, [`crate::envoy`]).
    InternalError,
}

impl Reason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 10] = [
        Reason::Allowed,
        Reason::AllowedIdentityUnavailable,
        Reason::NoRule,
        Reason::InvalidPath,
        Reason::LoginRequired,
        Reason::ExpressionFalse,
        Reason::InvalidCredential,
        Reason::IdentityUnavailable,
        Reason::LoginRedirect,
        Reason::InternalError,
    ];

    /// Whether a Check that ends for this reason is allowed: each reason belongs to one
    /// decision, so the metrics pair them once, at start-up.
    pub fn allows(self) -> bool {
        matches!(self, Reason::Allowed | Reason::AllowedIdentityUnavailable)
    }

    /// The decision this reason implies.
    pub fn decision(self) -> Decision {
        match self {
            Reason::Allowed | Reason::AllowedIdentityUnavailable => Decision::Allow,
            Reason::NoRule => Decision::Deny(Denial::NotFound),
            Reason::InvalidPath => Decision::Deny(Denial::BadRequest),
            Reason::LoginRequired | Reason::InvalidCredential => {
                Decision::Deny(Denial::Unauthenticated)
            }
            Reason::ExpressionFalse => Decision::Deny(Denial::Forbidden),
            Reason::IdentityUnavailable | Reason::InternalError => {
                Decision::Deny(Denial::Unavailable)
            }
            Reason::LoginRedirect => Decision::Deny(Denial::LoginRedirect),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::AllowedIdentityUnavailable => "allowed_identity_unavailable",
            Reason::NoRule => "no_rule",
            Reason::InvalidPath => "invalid_path",
            Reason::LoginRequired => "login_required",
            Reason::ExpressionFalse => "expression_false",
            Reason::InvalidCredential => "invalid_credential",
            Reason::IdentityUnavailable => "identity_unavailable",
            Reason::LoginRedirect => "login_redirect",
            Reason::InternalError => "internal_error",
        }
    }
}

/// What the deciding identity source answered: the metrics' `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityAnswer {
    User,
    Anonymous,
    Invalid,
    Unavailable,
}

impl IdentityAnswer {
    /// Every answer, in the order of their indices (`answer as usize`).
    pub const ALL: [IdentityAnswer; 4] = [
        IdentityAnswer::User,
        IdentityAnswer::Anonymous,
        IdentityAnswer::Invalid,
        IdentityAnswer::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityAnswer::User => "user",
            IdentityAnswer::Anonymous => "anonymous",
            IdentityAnswer::Invalid => "invalid",
            IdentityAnswer::Unavailable => "unavailable",
        }
    }
}

/// Why a Check was denied; `response` maps each to its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The path cannot be normalised safely: 400.
    BadRequest,
    /// No rule for the path and method: 404.
    NotFound,
    /// A logged-in user is needed, or a presented credential is invalid: 401.
    Unauthenticated,
    /// A logged-in user the rule does not allow: 403.
    Forbidden,
    /// Identity is needed and cannot be established: 503.
    Unavailable,
    /// A browser that needs a login is sent to the login page: 302 to `Outcome::location`.
    LoginRedirect,
}

/// Everything the response and the decision log need.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub decision: Decision,
    pub reason: Reason,
    /// The matched rule: its path key and method key.
    pub rule: Option<(&'a str, MethodKey)>,
    /// The logged-in caller, when one was identified.
    pub user: Option<Arc<User>>,
    /// Which identity source decided (`none` when the stage did not run).
    pub identity_source: &'a str,
    /// The identity stage's failure, for the log line.
    pub failure: Option<Failure>,
    /// How the identity cache answered, when it was asked.
    pub identity_cache: Option<Lookup>,
    /// How long the identity source took, when it was called.
    pub identity_latency: Option<std::time::Duration>,
    /// The caller's effective RBAC permissions and roles on the rule's resource, when RBAC is
    /// configured and the identity stage ran.
    pub rbac: Option<Arc<Effective>>,
    /// Where a browser is sent (`Denial::LoginRedirect`): the configured login URL with the
    /// original URL in its parameter.
    pub location: Option<String>,
}

impl Outcome<'_> {
    /// What the identity stage answered: a user whenever one was identified (allowed or not),
    /// otherwise read from the reason the stage's answer led to.
    pub fn identity_answer(&self) -> IdentityAnswer {
        if self.user.is_some() {
            return IdentityAnswer::User;
        }
        match self.reason {
            Reason::InvalidCredential => IdentityAnswer::Invalid,
            // Sent to log in after a refused credential, or with none.
            Reason::LoginRedirect if self.failure.is_some() => IdentityAnswer::Invalid,
            Reason::IdentityUnavailable | Reason::AllowedIdentityUnavailable => {
                IdentityAnswer::Unavailable
            }
            _ => IdentityAnswer::Anonymous,
        }
    }

    /// The answer when deciding panicked: 503, no rule, no user.
    pub fn internal_error() -> Outcome<'static> {
        Outcome::early(Denial::Unavailable, Reason::InternalError)
    }

    fn early(denial: Denial, reason: Reason) -> Outcome<'static> {
        Outcome {
            decision: Decision::Deny(denial),
            reason,
            rule: None,
            user: None,
            identity_source: "none",
            failure: None,
            identity_cache: None,
            identity_latency: None,
            rbac: None,
            location: None,
        }
    }
}

/// The loaded rules and identity sources: what a Check needs, shared by all requests.
pub struct Checker {
    pub rules: RuleSet,
    /// Shared with the next configuration when a reload leaves the identity sources as they
    /// were: the identity cache survives (`reload`).
    pub identity: Arc<Resolver>,
    pub request_headers: RequestHeaders,
    /// The RBAC roles and bindings, when configured.
    pub rbac: Option<Arc<Rbac>>,
    /// Where browsers that need a login are sent instead of a 401, when configured.
    pub login_redirect: Option<LoginRedirect>,
}

impl Checker {
    /// Every request header a Check may read: the identity sources' (credentials, proxied
    /// headers), the backoffice and client-type headers, `x-request-id` for the decision id,
    /// `authorization` for the identity cache's expiry cap. Envoy's ext_authz `allowed_headers`
    /// may list exactly these (`check-config` prints them); Envoy adds `host`, `:method` and
    /// `:path` on its own.
    pub fn headers_read(&self) -> std::collections::BTreeSet<String> {
        let mut names = self.identity.request_headers();
        names.insert(self.request_headers.backoffice.clone());
        names.insert(self.request_headers.client_type.clone());
        names.insert("x-request-id".to_owned());
        names.insert("authorization".to_owned());
        if self.login_redirect.is_some() {
            names.extend(login::HEADERS_READ.map(str::to_owned));
        }
        names.retain(|name| !name.is_empty());
        names
    }

    /// Runs the stages for one request. `deadline` is the Check call's own deadline.
    pub async fn check(&self, request: &Request, deadline: Option<Instant>) -> Outcome<'_> {
        self.check_shadowed(request, deadline, None).await.0
    }

    /// [`Checker::check`], and when `shadow` rules are given, what they decide for the same
    /// request on the same identity (no identity source is asked for them). When the enforced
    /// rules found no rule, identity was not asked: a shadow rule then judges the caller as one
    /// that presented no credential.
    pub async fn check_shadowed(
        &self,
        request: &Request,
        deadline: Option<Instant>,
        shadow: Option<&RuleSet>,
    ) -> (Outcome<'_>, Option<Reason>) {
        let path = match &request.path {
            Ok(path) => path,
            Err(_) => {
                return (
                    Outcome::early(Denial::BadRequest, Reason::InvalidPath),
                    shadow.map(|_| Reason::InvalidPath),
                );
            }
        };
        let is_backoffice = is_truthy_flag(request.header(&self.request_headers.backoffice));
        let Some(found) = self.rules.table.find(path, request.method) else {
            let shadow = shadow.map(|rules| match rules.table.find(path, request.method) {
                None => Reason::NoRule,
                Some(found) => {
                    let client_type = if self.identity.identifies_clients() {
                        ""
                    } else {
                        request
                            .header(&self.request_headers.client_type)
                            .unwrap_or_default()
                    };
                    let anonymous = Facts {
                        groups: &[],
                        permissions: &[],
                        roles: &[],
                        client_type,
                        is_backoffice,
                    };
                    judge(
                        found.rule.policy(is_backoffice),
                        &Resolution::NoCredential,
                        &anonymous,
                        None,
                    )
                }
            });
            return (Outcome::early(Denial::NotFound, Reason::NoRule), shadow);
        };
        let policy = found.rule.policy(is_backoffice);
        let context = Context {
            deadline,
            is_backoffice,
        };
        let resolved = self
            .identity
            .resolve(request, &context, found.rule.identity.as_deref())
            .await;

        // Security: with API keys configured, the client type comes only from a verified key;
        // the client-type header is the caller's own claim.
        let client = resolved.client.as_ref();
        let client_type = if self.identity.identifies_clients() {
            client.map(|c| c.client_type.as_str()).unwrap_or_default()
        } else {
            request
                .header(&self.request_headers.client_type)
                .unwrap_or_default()
        };
        let client_groups: &[String] = client.map(|c| c.groups.as_slice()).unwrap_or_default();
        // RBAC: the bindings that apply to this caller on the rule's resource, memoised with
        // the identity. Security: a client binding matches only a verified API key's type.
        let caller = Caller {
            user: match &resolved.resolution {
                Resolution::User(user) => Some(&**user),
                _ => None,
            },
            client: if self.identity.identifies_clients() {
                client_type
            } else {
                ""
            },
            principal: &request.principal,
        };
        let effective = |rule: &Rule| {
            let rbac = self.rbac.as_deref()?;
            Some(rbac.effective(&caller, rule.resource_of(path)))
        };
        let mut rbac = effective(found.rule);
        // Security: effective roles that do not fit beside the user headers in the upstream
        // header budget are treated as a profile too large to send: identity unavailable.
        let too_large = rbac.as_ref().is_some_and(|e| e.too_large).then(|| {
            Resolution::Unavailable(Failure::new(
                "rbac_roles_too_large",
                format!(
                    "the roles header and the user headers would exceed {} bytes",
                    crate::identity::MAX_USER_HEADER_BYTES
                ),
            ))
        });
        if too_large.is_some() {
            rbac = None;
        }
        let resolution = too_large.as_ref().unwrap_or(&resolved.resolution);
        fn facts<'a>(base: &Facts<'a>, rbac: Option<&'a Effective>) -> Facts<'a> {
            Facts {
                permissions: rbac.map(|e| e.permissions.as_slice()).unwrap_or_default(),
                roles: rbac.map(|e| e.roles.as_slice()).unwrap_or_default(),
                ..*base
            }
        }
        let base = Facts {
            groups: client_groups,
            permissions: &[],
            roles: &[],
            client_type,
            is_backoffice,
        };
        let mut reason = judge(
            policy,
            resolution,
            &facts(&base, rbac.as_deref()),
            rbac.as_deref(),
        );
        // A browser with no login, or an expired or refused one, is sent to log in; a 403
        // (logged in, not allowed) and a 503 never are: logging in again would not help.
        let mut location = None;
        if let (Reason::LoginRequired | Reason::InvalidCredential, Some(redirect)) =
            (reason, &self.login_redirect)
        {
            location = login::location(redirect, request);
            if location.is_some() {
                reason = Reason::LoginRedirect;
            }
        }
        let shadow = shadow.map(|rules| match rules.table.find(path, request.method) {
            None => Reason::NoRule,
            Some(found) => {
                let rbac = effective(found.rule).filter(|_| too_large.is_none());
                judge(
                    found.rule.policy(is_backoffice),
                    resolution,
                    &facts(&base, rbac.as_deref()),
                    rbac.as_deref(),
                )
            }
        });
        let mut outcome = Outcome {
            decision: reason.decision(),
            reason,
            rule: Some((found.path, found.method)),
            user: None,
            identity_source: resolved.source,
            failure: None,
            identity_cache: resolved.cache,
            identity_latency: resolved.latency,
            rbac,
            location,
        };
        match too_large.unwrap_or(resolved.resolution) {
            Resolution::User(user) => outcome.user = Some(user),
            Resolution::Invalid(failure) | Resolution::Unavailable(failure) => {
                outcome.failure = Some(failure);
            }
            Resolution::Anonymous | Resolution::NoCredential => {}
        }
        (outcome, shadow)
    }
}

/// What `policy` decides for the caller `resolution` found; `anonymous` holds the facts that do
/// not depend on the user (the client's groups and type, backoffice). `rbac`: the caller's
/// effective permissions and roles, when RBAC is configured (the user's own permissions are
/// among them).
fn judge(
    policy: &policy::Policy,
    resolution: &Resolution,
    anonymous: &Facts<'_>,
    rbac: Option<&Effective>,
) -> Reason {
    match resolution {
        Resolution::User(user) => {
            // A key's groups add to the user's; the common case (no key groups) borrows.
            let combined;
            let groups = if anonymous.groups.is_empty() {
                user.groups.as_slice()
            } else {
                combined = [user.groups.as_slice(), anonymous.groups].concat();
                combined.as_slice()
            };
            let facts = Facts {
                groups,
                permissions: rbac.map_or(user.permissions.as_slice(), |e| &e.permissions),
                ..*anonymous
            };
            match policy::evaluate(policy, true, &facts) {
                Verdict::Allow => Reason::Allowed,
                Verdict::Forbidden | Verdict::LoginRequired => Reason::ExpressionFalse,
            }
        }
        Resolution::Anonymous | Resolution::NoCredential => {
            match policy::evaluate(policy, false, anonymous) {
                Verdict::Allow => Reason::Allowed,
                Verdict::LoginRequired | Verdict::Forbidden => Reason::LoginRequired,
            }
        }
        Resolution::Invalid(_) => Reason::InvalidCredential,
        // The outcome does not depend on who the caller is only when an anonymous caller would
        // be allowed; then the request goes on as anonymous.
        Resolution::Unavailable(_) => match policy::evaluate(policy, false, anonymous) {
            Verdict::Allow => Reason::AllowedIdentityUnavailable,
            _ => Reason::IdentityUnavailable,
        },
    }
}
