//! Stage 4: an [`Outcome`] becomes the answer Envoy gets, as a plain value ([`Answer`]): the
//! headers to set and remove upstream, or a denial with its status, headers and body. Pure: no
//! I/O, no protobuf; the boundary ([`crate::envoy`]) encodes the answer.
//!
//! The one table from outcome to gRPC code, HTTP status and body lives here ([`status_of`]).
//!
//! Envoy contract details this module keeps (ENVOY.md in the project's notes, docs/ for users):
//! - a deny is an answer with a non-OK status inside, never a gRPC error, which Envoy would
//!   treat as a failure of the authorization service;
//! - every injected header overwrites (the boundary writes `OVERWRITE_IF_EXISTS_OR_ADD`, because
//!   the enum's default appends);
//! - `remove` is applied by Envoy after the added headers, so it never names a header we set.
//!
//! The decision id ([`crate::telemetry::DecisionId`]) is an input: every deny carries it to the
//! client as `x-checkpoint-decision-id`; an allow carries it upstream only when configured.

use crate::check::{Decision, Denial, Outcome};
use crate::config::UserHeaders;
use crate::identity::User;
use crate::rbac::Effective;
use crate::telemetry::decision_id;

/// Mia's marker for non-strict mode: `1` allowed, `0` not allowed but let through.
pub const MIA_ALLOWED: &str = "mia-allowed";

/// gRPC status codes used in `CheckResponse.status` (google.rpc.Code).
mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The status table: gRPC code, HTTP status, HTTP reason phrase, and the message of the body.
pub fn status_of(denial: Denial) -> (i32, u16, &'static str, &'static str) {
    match denial {
        Denial::BadRequest => (
            code::INVALID_ARGUMENT,
            400,
            "Bad Request",
            "the request path cannot be safely interpreted",
        ),
        Denial::NotFound => (
            code::NOT_FOUND,
            404,
            "Not Found",
            "no route matches this path and method",
        ),
        Denial::Unauthenticated => (
            code::UNAUTHENTICATED,
            401,
            "Unauthorized",
            "a valid login is required",
        ),
        Denial::Forbidden => (
            code::PERMISSION_DENIED,
            403,
            "Forbidden",
            "the caller is not allowed to do this",
        ),
        Denial::Unavailable => (
            code::UNAVAILABLE,
            503,
            "Service Unavailable",
            "the caller's identity cannot be verified right now",
        ),
        // The status of the Check is a 401's: the caller is not authenticated; what the
        // browser gets is the redirect.
        Denial::LoginRedirect => (
            code::UNAUTHENTICATED,
            302,
            "Found",
            "a login is required: redirected to the login page",
        ),
    }
}

/// A short list with its capacity fixed at compile time: an answer names at most six headers,
/// and building one must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> Default for List<T, N> {
    fn default() -> Self {
        List {
            items: [T::default(); N],
            len: 0,
        }
    }
}

impl<T: Copy + Default, const N: usize> List<T, N> {
    /// Adds `item`; the callers below never add more than `N`, and an extra one is dropped
    /// rather than panicking.
    fn push(&mut self, item: T) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = item;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

/// Envoy's answer to one Check, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<'a> {
    pub verdict: Verdict<'a>,
    /// `decision`, `reason` and `user_id`, for Envoy's dynamic metadata; only when configured.
    pub metadata: Option<List<(&'a str, &'a str), 3>>,
}

/// Let the request through, or answer the client instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// OK: headers set on the request going upstream (overwriting), and headers removed from it.
    Allow {
        set: List<(&'a str, &'a str), 6>,
        remove: List<&'a str, 5>,
    },
    /// A denial: the gRPC code of `CheckResponse.status` and its message, then what the client
    /// gets: HTTP status, headers and body.
    Deny {
        code: i32,
        message: &'static str,
        status: u16,
        headers: List<(&'static str, &'a str), 3>,
        body: &'a str,
    },
}

/// How answers are written: settled at start-up.
#[derive(Debug, Clone)]
pub struct Responder {
    strict: bool,
    /// Whether answers carry the decision as `dynamic_metadata` (off unless configured).
    dynamic_metadata: bool,
    /// Whether an allow sends the decision id upstream (off unless configured).
    decision_id_upstream: bool,
    user_id: String,
    groups: String,
    properties: String,
    /// The RBAC roles header, when configured (`rbac.roles_header`).
    roles: Option<String>,
    /// The JSON body of each denial, built once (the redirect has none).
    bodies: [String; 6],
    /// The `WWW-Authenticate` challenge of a 401 decided by each `ldap` source (by name):
    /// `Basic realm="..."`.
    basic: Vec<(String, String)>,
    /// The challenge of every other 401: `Bearer`, followed by the `ldap` sources' (so that a
    /// browser offers its login prompt when no credential was sent).
    challenge: String,
}

const DENIALS: [Denial; 6] = [
    Denial::BadRequest,
    Denial::NotFound,
    Denial::Unauthenticated,
    Denial::Forbidden,
    Denial::Unavailable,
    Denial::LoginRedirect,
];

fn index(denial: Denial) -> usize {
    match denial {
        Denial::BadRequest => 0,
        Denial::NotFound => 1,
        Denial::Unauthenticated => 2,
        Denial::Forbidden => 3,
        Denial::Unavailable => 4,
        Denial::LoginRedirect => 5,
    }
}

impl Responder {
    pub fn new(strict: bool, headers: &UserHeaders) -> Responder {
        let bodies = DENIALS.map(|denial| {
            if denial == Denial::LoginRedirect {
                return String::new();
            }
            let (_, http, error, message) = status_of(denial);
            serde_json::json!({ "statusCode": http, "error": error, "message": message })
                .to_string()
        });
        Responder {
            strict,
            dynamic_metadata: false,
            decision_id_upstream: false,
            user_id: headers.user_id.clone(),
            groups: headers.groups.clone(),
            properties: headers.properties.clone(),
            roles: None,
            bodies,
            basic: Vec::new(),
            challenge: "Bearer".to_owned(),
        }
    }

    /// 401s name the realm of the `ldap` sources, given as (source name, realm); realms are
    /// validated as safe quoted text by the source (`identity::ldap`).
    pub fn with_basic_realms(mut self, realms: &[(String, String)]) -> Responder {
        self.basic = realms
            .iter()
            .map(|(name, realm)| (name.clone(), format!("Basic realm=\"{realm}\"")))
            .collect();
        self.challenge = std::iter::once("Bearer")
            .chain(self.basic.iter().map(|(_, c)| c.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        self
    }

    /// The challenge of a 401 that `source` decided.
    fn challenge(&self, source: &str) -> &str {
        self.basic
            .iter()
            .find(|(name, _)| name == source)
            .map_or(self.challenge.as_str(), |(_, c)| c.as_str())
    }

    /// Answers also carry `decision`, `reason` and `user_id` as dynamic metadata, which Envoy
    /// stores under `envoy.filters.http.ext_authz`. Off by default: merging that Struct is the
    /// most expensive part of Envoy's applying an answer (bench/RESULTS.md).
    pub fn with_dynamic_metadata(mut self, on: bool) -> Responder {
        self.dynamic_metadata = on;
        self
    }

    /// Allowed requests also carry the decision id upstream, as `x-checkpoint-decision-id`
    /// (overwriting a client's copy). Off by default.
    pub fn with_decision_id_upstream(mut self, on: bool) -> Responder {
        self.decision_id_upstream = on;
        self
    }

    /// Allowed requests also carry the caller's effective RBAC roles on the request in this
    /// header (comma-joined, overwriting); a client's copy is always removed. Off by default.
    pub fn with_roles_header(mut self, name: Option<&str>) -> Responder {
        self.roles = name.map(str::to_owned);
        self
    }

    /// Envoy's answer for an outcome. `decision_id` must be a safe header value
    /// ([`crate::telemetry::DecisionId`] makes sure).
    pub fn answer<'a>(&'a self, outcome: &'a Outcome<'_>, decision_id: &'a str) -> Answer<'a> {
        let verdict = match outcome.decision {
            Decision::Allow => self.allow(
                outcome.user.as_deref(),
                outcome.rbac.as_deref(),
                true,
                decision_id,
            ),
            // Non-strict mode: Mia's gateway lets the request through marked not allowed, with
            // the user headers of whoever was identified.
            Decision::Deny(Denial::NotFound | Denial::Unauthenticated | Denial::Forbidden)
                if !self.strict =>
            {
                self.allow(
                    outcome.user.as_deref(),
                    outcome.rbac.as_deref(),
                    false,
                    decision_id,
                )
            }
            Decision::Deny(Denial::LoginRedirect) => match outcome.location.as_deref() {
                Some(location) => Self::redirect(location, decision_id),
                // Not built without a location; should one be, the client gets the 401.
                None => self.deny(
                    Denial::Unauthenticated,
                    outcome.identity_source,
                    decision_id,
                ),
            },
            Decision::Deny(denial) => self.deny(denial, outcome.identity_source, decision_id),
        };
        let metadata = self.dynamic_metadata.then(|| {
            let mut entries = List::default();
            entries.push(("decision", outcome.decision.as_str()));
            entries.push(("reason", outcome.reason.as_str()));
            if let Some(user) = &outcome.user {
                entries.push(("user_id", user.id.as_str()));
            }
            entries
        });
        Answer { verdict, metadata }
    }

    fn allow<'a>(
        &'a self,
        user: Option<&'a User>,
        rbac: Option<&'a Effective>,
        allowed: bool,
        decision_id: &'a str,
    ) -> Verdict<'a> {
        let mut set = List::default();
        let mut remove = List::default();
        match user {
            Some(user) => {
                set.push((self.user_id.as_str(), user.id.as_str()));
                if user.groups_header.is_empty() {
                    remove.push(self.groups.as_str());
                } else {
                    set.push((self.groups.as_str(), user.groups_header.as_str()));
                }
                set.push((self.properties.as_str(), user.properties_header.as_str()));
            }
            // Security: a caller must never choose its own identity headers.
            None => {
                remove.push(self.user_id.as_str());
                remove.push(self.groups.as_str());
                remove.push(self.properties.as_str());
            }
        }
        if let Some(name) = &self.roles {
            // Security: like the user headers, set by checkpoint or not at all.
            match rbac.filter(|e| !e.roles_header.is_empty()) {
                Some(effective) => set.push((name.as_str(), effective.roles_header.as_str())),
                None => remove.push(name.as_str()),
            }
        }
        if self.strict {
            // Security: upstreams of a non-strict deployment may trust this marker.
            remove.push(MIA_ALLOWED);
        } else {
            set.push((MIA_ALLOWED, if allowed { "1" } else { "0" }));
        }
        if self.decision_id_upstream {
            set.push((decision_id::HEADER, decision_id));
        }
        Verdict::Allow { set, remove }
    }

    /// The 302 to the login page. Security: `no-store`, so that no cache between the browser
    /// and Envoy keeps a redirect that was built for one request's URL.
    fn redirect<'a>(location: &'a str, decision_id: &'a str) -> Verdict<'a> {
        let (code, status, _, message) = status_of(Denial::LoginRedirect);
        let mut headers = List::default();
        headers.push(("location", location));
        headers.push(("cache-control", "no-store"));
        headers.push((decision_id::HEADER, decision_id));
        Verdict::Deny {
            code,
            message,
            status,
            headers,
            body: "",
        }
    }

    fn deny<'a>(&'a self, denial: Denial, source: &str, decision_id: &'a str) -> Verdict<'a> {
        let (code, status, _, message) = status_of(denial);
        let mut headers = List::default();
        headers.push(("content-type", "application/json"));
        if denial == Denial::Unauthenticated {
            headers.push(("www-authenticate", self.challenge(source)));
        }
        headers.push((decision_id::HEADER, decision_id));
        Verdict::Deny {
            code,
            message,
            status,
            headers,
            body: self.bodies.get(index(denial)).map_or("", String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn headers() -> UserHeaders {
        UserHeaders {
            user_id: "miauserid".into(),
            groups: "miausergroups".into(),
            properties: "miauserproperties".into(),
        }
    }

    fn outcome(decision: Decision, user: Option<Arc<User>>) -> Outcome<'static> {
        Outcome {
            decision,
            reason: crate::check::Reason::ExpressionFalse,
            rule: None,
            user,
            identity_source: "none",
            failure: None,
            identity_cache: None,
            identity_latency: None,
            rbac: None,
            location: None,
        }
    }

    fn user(id: &str, groups: &[&str]) -> Arc<User> {
        Arc::new(
            User::new(
                id.into(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
                Vec::new(),
                "{}".into(),
            )
            .expect("a valid user"),
        )
    }

    #[test]
    fn a_header_is_never_both_set_and_removed() {
        let users = [
            None,
            Some(user("alice", &["admin"])),
            Some(user("bob", &[])),
        ];
        for strict in [true, false] {
            let responder = Responder::new(strict, &headers());
            for user in &users {
                for decision in [Decision::Allow, Decision::Deny(Denial::Forbidden)] {
                    let outcome = outcome(decision, user.clone());
                    if let Verdict::Allow { set, remove } =
                        responder.answer(&outcome, "req-1").verdict
                    {
                        for (name, _) in set.as_slice() {
                            assert!(!remove.as_slice().contains(name), "{name} set and removed");
                        }
                        // Every identity header is either set or removed: none passes through.
                        for name in [
                            "miauserid",
                            "miausergroups",
                            "miauserproperties",
                            MIA_ALLOWED,
                        ] {
                            let set = set.as_slice().iter().any(|(n, _)| *n == name);
                            assert!(set || remove.as_slice().contains(&name), "{name}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn denials_follow_the_status_table_and_strict_mode() {
        let strict = Responder::new(true, &headers());
        let lax = Responder::new(false, &headers());
        for denial in DENIALS {
            let mut outcome = outcome(Decision::Deny(denial), None);
            if denial == Denial::LoginRedirect {
                outcome.location = Some("https://login.example/?redirect=%2F".into());
            }
            let (code, status, error, _) = status_of(denial);
            match strict.answer(&outcome, "req-1").verdict {
                Verdict::Deny {
                    code: c,
                    status: s,
                    headers,
                    body,
                    ..
                } => {
                    assert_eq!((c, s), (code, status));
                    if denial == Denial::LoginRedirect {
                        assert_eq!(body, "");
                    } else {
                        assert!(body.contains(error), "{body}");
                    }
                    let challenge = headers
                        .as_slice()
                        .iter()
                        .any(|(n, _)| *n == "www-authenticate");
                    assert_eq!(challenge, denial == Denial::Unauthenticated);
                }
                other => panic!("{denial:?}: {other:?}"),
            }
            let let_through = matches!(
                denial,
                Denial::NotFound | Denial::Unauthenticated | Denial::Forbidden
            );
            match lax.answer(&outcome, "req-1").verdict {
                Verdict::Allow { set, .. } => {
                    assert!(let_through, "{denial:?}");
                    assert!(set.as_slice().contains(&(MIA_ALLOWED, "0")));
                }
                Verdict::Deny { .. } => assert!(!let_through, "{denial:?}"),
            }
        }
    }

    /// A 401 decided by an `ldap` source challenges for Basic with its realm; any other 401
    /// offers Bearer and then each `ldap` realm.
    #[test]
    fn challenges_name_the_realm_of_the_deciding_source() {
        let challenge = |responder: &Responder, source: &'static str| {
            let outcome = Outcome {
                identity_source: source,
                ..outcome(Decision::Deny(Denial::Unauthenticated), None)
            };
            match responder.answer(&outcome, "req-1").verdict {
                Verdict::Deny { headers, .. } => headers
                    .as_slice()
                    .iter()
                    .find(|(n, _)| *n == "www-authenticate")
                    .map(|(_, v)| (*v).to_owned()),
                other => panic!("{other:?}"),
            }
        };
        let plain = Responder::new(true, &headers());
        assert_eq!(challenge(&plain, "none").as_deref(), Some("Bearer"));
        let realms = [
            ("ldap".to_owned(), "Staff".to_owned()),
            ("partners".to_owned(), "Partners".to_owned()),
        ];
        let with = Responder::new(true, &headers()).with_basic_realms(&realms);
        assert_eq!(
            challenge(&with, "ldap").as_deref(),
            Some(r#"Basic realm="Staff""#)
        );
        assert_eq!(
            challenge(&with, "partners").as_deref(),
            Some(r#"Basic realm="Partners""#)
        );
        assert_eq!(
            challenge(&with, "jwt").as_deref(),
            Some(r#"Bearer, Basic realm="Staff", Basic realm="Partners""#)
        );
    }

    /// Every deny carries the decision id to the client; an allow carries it upstream only when
    /// configured, overwriting, and never also removes it.
    #[test]
    fn the_decision_id_goes_to_the_client_on_denies_and_upstream_when_configured() {
        let id = "6f1c2b1e-3d0a";
        let has_id = |headers: &[(&str, &str)]| headers.contains(&(decision_id::HEADER, id));
        for upstream in [false, true] {
            for strict in [true, false] {
                let responder =
                    Responder::new(strict, &headers()).with_decision_id_upstream(upstream);
                for denial in DENIALS {
                    let outcome = outcome(Decision::Deny(denial), None);
                    match responder.answer(&outcome, id).verdict {
                        Verdict::Deny { headers, .. } => assert!(has_id(headers.as_slice())),
                        Verdict::Allow { set, .. } => {
                            assert_eq!(has_id(set.as_slice()), upstream, "{denial:?}")
                        }
                    }
                }
                for user in [
                    None,
                    Some(user("alice", &["admin"])),
                    Some(user("bob", &[])),
                ] {
                    let outcome = outcome(Decision::Allow, user);
                    match responder.answer(&outcome, id).verdict {
                        Verdict::Allow { set, remove } => {
                            assert_eq!(has_id(set.as_slice()), upstream);
                            assert!(!remove.as_slice().contains(&decision_id::HEADER));
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    /// The redirect: 302 with the outcome's location, `no-store`, the decision id, and neither
    /// a body nor a challenge; an outcome that lost its location still denies, with the 401.
    #[test]
    fn a_login_redirect_is_a_302_to_the_outcome_location() {
        let responder = Responder::new(true, &headers());
        let mut outcome = outcome(Decision::Deny(Denial::LoginRedirect), None);
        outcome.location = Some("https://login.example/web-login?redirect=%2Forders".into());
        match responder.answer(&outcome, "req-1").verdict {
            Verdict::Deny {
                code,
                status,
                headers,
                body,
                ..
            } => {
                assert_eq!((code, status), (code::UNAUTHENTICATED, 302));
                assert_eq!(
                    headers.as_slice(),
                    [
                        (
                            "location",
                            "https://login.example/web-login?redirect=%2Forders"
                        ),
                        ("cache-control", "no-store"),
                        (decision_id::HEADER, "req-1"),
                    ]
                );
                assert_eq!(body, "");
            }
            other => panic!("{other:?}"),
        }
        outcome.location = None;
        match responder.answer(&outcome, "req-1").verdict {
            Verdict::Deny { status, .. } => assert_eq!(status, 401),
            other => panic!("{other:?}"),
        }
    }

    /// The roles header: set (overwriting) with the effective roles on an allow, removed when
    /// there are none, never passed through from the client; nothing when not configured.
    #[test]
    fn the_roles_header_is_set_or_removed() {
        let effective = |roles: &[&str]| {
            let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
            Arc::new(Effective {
                roles_header: roles.join(","),
                roles,
                ..Effective::default()
            })
        };
        for strict in [true, false] {
            let responder = Responder::new(strict, &headers()).with_roles_header(Some("x-roles"));
            for (user, rbac, want) in [
                (
                    Some(user("alice", &[])),
                    Some(effective(&["owner", "viewer"])),
                    Some("owner,viewer"),
                ),
                (Some(user("bob", &[])), Some(effective(&[])), None),
                (None, Some(effective(&["reader"])), Some("reader")),
                (None, None, None),
            ] {
                let mut outcome = outcome(Decision::Allow, user);
                outcome.rbac = rbac;
                let Verdict::Allow { set, remove } = responder.answer(&outcome, "req-1").verdict
                else {
                    panic!("an allow")
                };
                let value = set
                    .as_slice()
                    .iter()
                    .find(|(n, _)| *n == "x-roles")
                    .map(|(_, v)| *v);
                assert_eq!(value, want);
                assert_eq!(remove.as_slice().contains(&"x-roles"), want.is_none());
            }
        }
        // Non-strict mode lets a 403 through with `mia-allowed: 0` and the caller's headers.
        let lax = Responder::new(false, &headers()).with_roles_header(Some("x-roles"));
        let mut forbidden = outcome(Decision::Deny(Denial::Forbidden), Some(user("bob", &[])));
        forbidden.rbac = Some(effective(&["viewer"]));
        let Verdict::Allow { set, .. } = lax.answer(&forbidden, "req-1").verdict else {
            panic!("let through")
        };
        assert!(set.as_slice().contains(&("x-roles", "viewer")));
        assert!(set.as_slice().contains(&(MIA_ALLOWED, "0")));
        let off = Responder::new(true, &headers());
        let mut outcome = outcome(Decision::Allow, Some(user("alice", &["staff"])));
        outcome.rbac = Some(effective(&["owner"]));
        let Verdict::Allow { set, remove } = off.answer(&outcome, "req-1").verdict else {
            panic!("an allow")
        };
        assert!(!set.as_slice().iter().any(|(_, v)| *v == "owner"));
        assert_eq!(remove.as_slice(), [MIA_ALLOWED]);
    }

    /// `config` cannot import this module: its copy of the headers an allow writes is checked
    /// here.
    #[test]
    fn config_knows_the_headers_an_allow_writes() {
        assert_eq!(
            crate::config::RESERVED_UPSTREAM_HEADERS,
            [MIA_ALLOWED, decision_id::HEADER]
        );
    }

    #[test]
    fn the_list_drops_what_does_not_fit() {
        let mut list: List<u8, 2> = List::default();
        list.push(1);
        list.push(2);
        list.push(3);
        assert_eq!(list.as_slice(), [1, 2]);
    }
}
