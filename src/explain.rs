//! `checkpoint explain`: one request, the configuration, and why checkpoint decides what it
//! decides; `checkpoint test` ([`cases`]) runs tables of such requests against expectations.
//!
//! The decision is [`Checker::check`]'s, the answer [`Responder::answer`]'s encoded by the one
//! encoder: nothing here decides on its own. Around them, pure functions of the route table and
//! the compiled expression supply the details: the keys the chosen rule beat
//! ([`crate::route::RouteTable::matching`]) and every sub-expression's value
//! ([`crate::policy::Expression::explain`]). The caller's identity is either resolved for real
//! by the configured sources (user-info is called, as `serve` would) or given (`--user`): a
//! given user stands in for every source, API keys included.
//!
//! Not on the request path; never used by `serve`.

pub mod cases;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::App;
use crate::check::{Checker, Decision, Outcome, Reason};
use crate::config::sources::ClaimMapping;
use crate::envoy;
use crate::identity::{self, Entry, Named, Resolution, Resolver, Source, User};
use crate::policy::{self, Facts, Verdict, expr::Step};
use crate::request::{Request, is_truthy_flag};
use crate::response::{Responder, Verdict as AnswerVerdict};
use crate::route::MethodKey;
use crate::rules::Rule;
use crate::telemetry::DecisionId;

/// The request to explain: built from the command line or a test case, always through
/// protobuf's JSON mapping and the one decoder, as Envoy's would be.
pub fn request_from_parts(
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Request, String> {
    let pairs: Vec<Value> = headers
        .iter()
        .map(|(key, value)| serde_json::json!({ "key": key, "value": value }))
        .collect();
    let json = serde_json::json!({ "attributes": { "request": { "http": {
        "method": method, "path": path, "headerMap": { "headers": pairs } } } } });
    envoy::json::request_from_value(&json).map_err(|e| e.to_string())
}

/// A `-H` argument, `name: value`, as curl takes it.
pub fn header_argument(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("-H \"{text}\": expected \"name: value\"")),
    }
}

/// The user a `--user` argument (or a test case's `user`) describes: `sub` is the id, `groups`
/// and `permissions` lists of strings, every other field a property sent upstream.
pub fn given_user(json: &Value) -> Result<Arc<User>, String> {
    let Value::Object(claims) = json else {
        return Err(
            "the user must be a JSON object such as {\"sub\":\"bob\",\"groups\":[\"ops\"]}".into(),
        );
    };
    let mapping = ClaimMapping {
        properties: claims
            .keys()
            .filter(|k| !matches!(k.as_str(), "sub" | "groups" | "permissions"))
            .cloned()
            .collect(),
        ..ClaimMapping::default()
    };
    match identity::claims::user_from_claims(claims, &mapping)? {
        Some(user) => Ok(Arc::new(user)),
        None => Err("the user needs an id: \"sub\"".into()),
    }
}

/// A source that answers the given user whatever the request holds.
struct Given(Arc<User>);

impl Source for Given {
    fn name(&self) -> &'static str {
        "given"
    }

    fn resolve<'a>(
        &'a self,
        _request: &'a Request,
        _context: &'a identity::Context,
    ) -> identity::BoxFuture<'a, Resolution> {
        Box::pin(async move { Resolution::User(self.0.clone()) })
    }
}

/// The configuration, ready to explain requests.
pub struct Explainer {
    checker: Checker,
    responder: Responder,
}

impl Explainer {
    /// From the application exactly as `serve` builds it (sources, rules, responses).
    pub fn new(app: App) -> Explainer {
        let settings = &app.settings;
        let responder = crate::reload::responder(settings);
        Explainer {
            checker: app.checker,
            responder,
        }
    }

    /// Whether every identity source can answer (a JWT source has its keys).
    pub fn ready(&self) -> bool {
        self.checker.identity.ready()
    }

    /// Explains one request; with `user`, that user stands in for every identity source.
    pub async fn explain(&mut self, request: &Request, user: Option<Arc<User>>) -> Explanation {
        let Some(user) = user else {
            return explain_with(&self.checker, &self.responder, request, None).await;
        };
        // Every configured name answers the given user, so that a rule's `identity` list
        // still finds a source.
        let names: Vec<String> = self.checker.identity.names().map(str::to_owned).collect();
        let given = Arc::new(Resolver::new(
            names
                .into_iter()
                .map(|name| Named {
                    name,
                    source: Entry::User(Box::new(Given(user.clone()))),
                })
                .collect(),
            None,
        ));
        let real = std::mem::replace(&mut self.checker.identity, given);
        let explanation = explain_with(&self.checker, &self.responder, request, Some(&user)).await;
        self.checker.identity = real;
        explanation
    }
}

/// Everything `explain` says about one request; `--json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub method: Option<&'static str>,
    pub path: PathPart,
    pub route: Option<RoutePart>,
    pub identity: Option<IdentityPart>,
    pub policy: Option<PolicyPart>,
    /// The caller's RBAC bindings, roles and resource on this request, when RBAC is configured
    /// and the rule was judged on an identity.
    pub rbac: Option<RbacPart>,
    /// Each permission the expression asked for and the caller holds, with what granted it.
    pub permissions: Vec<Grant>,
    /// Each role the expression asked for and the caller holds, with the bindings that granted
    /// it.
    pub roles: Vec<RoleGrant>,
    pub decision: &'static str,
    pub reason: &'static str,
    /// The HTTP status the client gets (200 when the request goes upstream).
    pub status: u16,
    /// `CheckResponse.status.code` (google.rpc.Code).
    pub grpc_code: i32,
    /// The exact `CheckResponse`, in protobuf's JSON mapping.
    pub response: Value,
    /// The answer in plain terms.
    pub answer: AnswerPart,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathPart {
    /// The path as rules see it.
    pub normalised: Option<String>,
    /// Why it could not be normalised safely (a 400).
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutePart {
    /// The rule chosen, or none (a 404).
    pub chosen: Option<RuleRef>,
    /// The other rules whose key the path equals or continues, and why each lost.
    pub beaten: Vec<Beaten>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleRef {
    pub key: String,
    pub method: &'static str,
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Beaten {
    pub key: String,
    pub method: &'static str,
    pub why: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityPart {
    /// The source that decided, `none` when every source passed on, `--user` when given.
    pub source: String,
    /// `user`, `anonymous`, `invalid` or `unavailable`.
    pub outcome: &'static str,
    pub user: Option<UserPart>,
    /// How the identity cache answered, when it was asked.
    pub cache: Option<&'static str>,
    /// Why a credential was refused or identity was unavailable (never holds a credential).
    pub failure: Option<String>,
    /// The value of `clientType` the expression saw, and where it came from.
    pub client_type: String,
    pub client_type_from: &'static str,
    pub is_backoffice: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserPart {
    pub id: String,
    pub groups: Vec<String>,
    pub permissions: Vec<String>,
    /// The properties header's value (a JSON object).
    pub properties: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyPart {
    /// `authorization` or `backofficeAuthorization`.
    pub block: &'static str,
    pub expression: String,
    pub public: bool,
    /// Whether the facts were a logged-in user's.
    pub logged_in: bool,
    /// Every sub-expression with its value, the whole expression first.
    pub steps: Vec<Step>,
    /// `allow`, `login_required` or `forbidden`.
    pub verdict: &'static str,
    /// What the verdict meant when identity was unavailable.
    pub note: Option<&'static str>,
}

/// A permission the expression used and the caller holds.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub permission: String,
    /// Where the caller's permission came from: the identity source (or `--user`) when the
    /// identity provider granted it, else `rbac`.
    pub from: String,
    /// The RBAC bindings that applied to the caller on this request and grant it (directly or
    /// through a role); empty when only the identity provider did.
    pub rbac_bindings: Vec<String>,
}

/// A role the expression used and the caller holds on this request.
#[derive(Debug, Clone, Serialize)]
pub struct RoleGrant {
    pub role: String,
    /// The RBAC bindings that applied to the caller and grant it (directly or by inheritance).
    pub rbac_bindings: Vec<String>,
}

/// What RBAC made of the caller on this request.
#[derive(Debug, Clone, Serialize)]
pub struct RbacPart {
    /// The rule's resource (`rbac.resource`) for this path: type and id.
    pub resource: Option<(String, String)>,
    /// Every binding that applied (no resource, or this one).
    pub bindings: Vec<String>,
    /// The effective roles, inherited ones included.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnswerPart {
    /// Headers set upstream (allow) or on the response to the client (deny).
    pub set: Vec<(String, String)>,
    /// Headers removed from the upstream request (allow only).
    pub removed: Vec<String>,
    /// The body the client gets (deny only).
    pub body: Option<String>,
}

async fn explain_with(
    checker: &Checker,
    responder: &Responder,
    request: &Request,
    given: Option<&Arc<User>>,
) -> Explanation {
    let outcome = checker.check(request, None).await;
    let decision_id = DecisionId::for_request(request.header("x-request-id"));
    let answer = responder.answer(&outcome, decision_id.as_str());
    let response = envoy::json::response_to_value(&envoy::encode(&answer))
        .unwrap_or_else(|e| Value::from(e.to_string()));
    let (status, grpc_code, answer) = match &answer.verdict {
        AnswerVerdict::Allow { set, remove } => (
            200,
            0,
            AnswerPart {
                set: pairs(set.as_slice()),
                removed: remove.as_slice().iter().map(|s| (*s).to_owned()).collect(),
                body: None,
            },
        ),
        AnswerVerdict::Deny {
            code,
            status,
            headers,
            body,
            ..
        } => (
            *status,
            *code,
            AnswerPart {
                set: pairs(headers.as_slice()),
                removed: Vec::new(),
                body: Some((*body).to_owned()),
            },
        ),
    };
    let path = PathPart {
        normalised: request.path.as_ref().ok().cloned(),
        refused: request.path.as_ref().err().map(ToString::to_string),
    };
    let route = request
        .path
        .as_ref()
        .ok()
        .map(|path| route_part(checker, path, request));
    let found = request
        .path
        .as_ref()
        .ok()
        .and_then(|path| checker.rules.table.find(path, request.method));
    let (identity, policy) = match &found {
        Some(found) => {
            let (identity, policy) =
                identity_and_policy(checker, request, found.rule, &outcome, given);
            (Some(identity), policy)
        }
        None => (None, None),
    };
    let rbac = match (&checker.rbac, &outcome.rbac) {
        (Some(_), Some(effective)) => Some(RbacPart {
            resource: found
                .as_ref()
                .zip(request.path.as_ref().ok())
                .and_then(|(found, path)| found.rule.resource_of(path))
                .map(|(kind, id)| (kind.to_owned(), id.to_owned())),
            bindings: effective.bindings.clone(),
            roles: effective.roles.clone(),
        }),
        _ => None,
    };
    let (permissions, roles) = grants(
        policy.as_ref(),
        identity.as_ref(),
        checker.rbac.as_deref().zip(outcome.rbac.as_deref()),
    );
    Explanation {
        method: request.method.map(|m| m.as_str()),
        path,
        route,
        identity,
        policy,
        rbac,
        permissions,
        roles,
        decision: outcome.decision.as_str(),
        reason: outcome.reason.as_str(),
        status,
        grpc_code,
        response,
        answer,
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The chosen rule and every other rule the path could have reached, with why it lost.
fn route_part(checker: &Checker, path: &str, request: &Request) -> RoutePart {
    let table = &checker.rules.table;
    let found = table.find(path, request.method);
    let file = checker.rules.file.display().to_string();
    let chosen = found.as_ref().map(|f| RuleRef {
        key: f.path.to_owned(),
        method: f.method.as_str(),
        file: file.clone(),
        line: f.rule.position.map(|p| p.0),
        column: f.rule.position.map(|p| p.1),
    });
    let mut beaten = Vec::new();
    for (index, (key, rules)) in table.matching(path).into_iter().enumerate() {
        for (method, _) in rules {
            let is_chosen = found
                .as_ref()
                .is_some_and(|f| f.path == key && f.method == method);
            if is_chosen {
                continue;
            }
            let covers = match (method, request.method) {
                (MethodKey::All, Some(_)) => true,
                (MethodKey::Exact(m), Some(r)) => m == r,
                (_, None) => false,
            };
            let why = match (covers, index, &found) {
                (false, _, _) if request.method.is_none() => {
                    "the request's method is one no rule can name"
                }
                (false, _, _) => "another method",
                (true, 0, Some(_)) => "an exact method beats ALL",
                (true, 0, None) => "not chosen",
                (true, _, Some(_)) => "a longer key wins",
                // Security: the route stage never falls back to a shorter key.
                (true, _, None) => {
                    "shorter key: never a fallback when the longest key lacks the method"
                }
            };
            beaten.push(Beaten {
                key: key.to_owned(),
                method: method.as_str(),
                why,
            });
        }
    }
    RoutePart { chosen, beaten }
}

/// Who the caller was and how the rule's expression was evaluated, with the same facts
/// `Checker::check` used.
fn identity_and_policy(
    checker: &Checker,
    request: &Request,
    rule: &Rule,
    outcome: &Outcome<'_>,
    given: Option<&Arc<User>>,
) -> (IdentityPart, Option<PolicyPart>) {
    let headers = &checker.request_headers;
    let is_backoffice = is_truthy_flag(request.header(&headers.backoffice));
    let client = if given.is_some() {
        None
    } else {
        checker
            .identity
            .client_of(request, rule.identity.as_deref(), outcome.identity_source)
    };
    let (client_type, client_type_from) = if checker.identity.identifies_clients() {
        match &client {
            Some(c) => (c.client_type.clone(), "the API key"),
            None => (String::new(), "no known API key"),
        }
    } else {
        (
            request
                .header(&headers.client_type)
                .unwrap_or_default()
                .to_owned(),
            "the client-type header",
        )
    };
    let client_groups: Vec<String> = client.map(|c| c.groups).unwrap_or_default();
    let source = if given.is_some() {
        "--user".to_owned()
    } else {
        outcome.identity_source.to_owned()
    };
    let identity = IdentityPart {
        source,
        outcome: outcome.identity_answer().as_str(),
        user: outcome.user.as_ref().map(|u| UserPart {
            id: u.id.clone(),
            groups: u.groups.clone(),
            permissions: u.permissions.clone(),
            properties: u.properties_header.clone(),
        }),
        cache: outcome.identity_cache.map(|l| l.as_str()),
        failure: outcome
            .failure
            .as_ref()
            .map(|f| format!("{}: {}", f.reason, f.detail)),
        client_type: client_type.clone(),
        client_type_from,
        is_backoffice,
    };
    // An invalid credential is a 401 before any expression is looked at.
    if outcome.reason == Reason::InvalidCredential {
        return (identity, None);
    }
    let policy = rule.policy(is_backoffice);
    let block = if is_backoffice && rule.backoffice.is_some() {
        "backofficeAuthorization"
    } else {
        "authorization"
    };
    let user = outcome.user.as_deref();
    let groups: Vec<String> = match user {
        Some(u) => [u.groups.as_slice(), client_groups.as_slice()].concat(),
        None => client_groups,
    };
    let facts = Facts {
        groups: &groups,
        permissions: match (&outcome.rbac, user) {
            (Some(effective), _) => effective.permissions.as_slice(),
            (None, Some(u)) => u.permissions.as_slice(),
            (None, None) => &[],
        },
        roles: outcome
            .rbac
            .as_ref()
            .map(|e| e.roles.as_slice())
            .unwrap_or_default(),
        client_type: &client_type,
        is_backoffice,
    };
    let verdict = match policy::evaluate(policy, user.is_some(), &facts) {
        Verdict::Allow => "allow",
        Verdict::LoginRequired => "login_required",
        Verdict::Forbidden => "forbidden",
    };
    let part = PolicyPart {
        block,
        expression: policy.expression.source().to_owned(),
        public: policy.public,
        logged_in: user.is_some(),
        steps: policy.expression.explain(&facts),
        verdict,
        note: matches!(
            outcome.reason,
            Reason::IdentityUnavailable | Reason::AllowedIdentityUnavailable
        )
        .then_some(
            "identity is unavailable: evaluated for an anonymous caller, the request goes on only if one is allowed",
        ),
    };
    (identity, Some(part))
}

/// The permissions and roles the expression used and the caller holds, each with what granted
/// it: the identity provider, and the RBAC bindings that applied (`rbac`: the roles and
/// bindings, and the caller's effective answer).
fn grants(
    policy: Option<&PolicyPart>,
    identity: Option<&IdentityPart>,
    rbac: Option<(&crate::rbac::Rbac, &crate::rbac::Effective)>,
) -> (Vec<Grant>, Vec<RoleGrant>) {
    let (Some(policy), Some(identity)) = (policy, identity) else {
        return (Vec::new(), Vec::new());
    };
    let mut permissions: Vec<String> = Vec::new();
    let mut roles: Vec<String> = Vec::new();
    for step in &policy.steps {
        for (held, seen) in [
            (&step.permissions_held, &mut permissions),
            (&step.roles_held, &mut roles),
        ] {
            for name in held {
                if !seen.contains(name) {
                    seen.push(name.clone());
                }
            }
        }
    }
    let from_provider = |permission: &str| {
        identity
            .user
            .as_ref()
            .is_some_and(|u| u.permissions.iter().any(|p| p == permission))
    };
    let permissions = permissions
        .into_iter()
        .map(|permission| Grant {
            from: if from_provider(&permission) || rbac.is_none() {
                identity.source.clone()
            } else {
                "rbac".to_owned()
            },
            rbac_bindings: rbac
                .map(|(rbac, e)| rbac.granting_permission(&e.bindings, &permission))
                .unwrap_or_default(),
            permission,
        })
        .collect();
    let roles = roles
        .into_iter()
        .map(|role| RoleGrant {
            rbac_bindings: rbac
                .map(|(rbac, e)| rbac.granting_role(&e.bindings, &role))
                .unwrap_or_default(),
            role,
        })
        .collect();
    (permissions, roles)
}

impl Explanation {
    /// Whether the request goes upstream as allowed (`explain`'s exit status 0).
    pub fn allowed(&self) -> bool {
        self.decision == Decision::Allow.as_str()
    }

    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "method:      {}",
            self.method
                .unwrap_or("(one no rule can name: never matched)")
        ));
        match (&self.path.normalised, &self.path.refused) {
            (Some(path), _) => line(format!("path:        {path} (normalised)")),
            (None, Some(why)) => line(format!("path:        refused: {why}")),
            (None, None) => {}
        }
        if let Some(route) = &self.route {
            match &route.chosen {
                Some(rule) => {
                    let at = match (rule.line, rule.column) {
                        (Some(l), Some(c)) => format!("{}:{l}:{c}", rule.file),
                        _ => rule.file.clone(),
                    };
                    line(format!(
                        "rule:        \"{}\" {} ({at})",
                        rule.key, rule.method
                    ));
                }
                None => line("rule:        none".to_owned()),
            }
            for beaten in &route.beaten {
                line(format!(
                    "  other:     \"{}\" {}: {}",
                    beaten.key, beaten.method, beaten.why
                ));
            }
        }
        if let Some(identity) = &self.identity {
            let mut text = format!("identity:    {} from {}", identity.outcome, identity.source);
            if let Some(cache) = identity.cache {
                let _ = write!(text, " (cache {cache})");
            }
            line(text);
            if let Some(user) = &identity.user {
                line(format!("  user:      {}", user.id));
                line(format!("  groups:    {}", list(&user.groups)));
                line(format!("  permissions: {}", list(&user.permissions)));
                line(format!("  properties: {}", user.properties));
            }
            if let Some(failure) = &identity.failure {
                line(format!("  failure:   {failure}"));
            }
            line(format!(
                "  clientType: {} (from {})",
                Value::from(identity.client_type.as_str()),
                identity.client_type_from
            ));
            line(format!("  backoffice: {}", identity.is_backoffice));
        }
        if let Some(policy) = &self.policy {
            line(format!(
                "policy:      {} ({}; {} caller): {}",
                policy.block,
                if policy.public {
                    "public"
                } else {
                    "not public"
                },
                if policy.logged_in {
                    "logged-in"
                } else {
                    "anonymous"
                },
                policy.verdict
            ));
            if let Some(note) = policy.note {
                line(format!("  ({note})"));
            }
            for step in &policy.steps {
                line(format!(
                    "  {:<6} {}{}",
                    step.value.to_string(),
                    "  ".repeat(step.depth),
                    step.text
                ));
            }
        }
        if let Some(rbac) = &self.rbac {
            let resource = match &rbac.resource {
                Some((kind, id)) => format!("{kind} {}", Value::from(id.as_str())),
                None => "none".to_owned(),
            };
            line(format!(
                "rbac:        resource {resource}; bindings {}",
                list(&rbac.bindings)
            ));
            line(format!("  roles:     {}", list(&rbac.roles)));
        }
        for grant in &self.permissions {
            line(format!(
                "permission:  {} held, from {}; RBAC bindings: {}",
                grant.permission,
                grant.from,
                list(&grant.rbac_bindings)
            ));
        }
        for grant in &self.roles {
            line(format!(
                "role:        {} held; RBAC bindings: {}",
                grant.role,
                list(&grant.rbac_bindings)
            ));
        }
        line(format!(
            "decision:    {} ({}), HTTP {}, gRPC code {}",
            self.decision, self.reason, self.status, self.grpc_code
        ));
        // An answer with status 200 lets the request go upstream; any other goes to the client.
        let to = if self.status == 200 {
            "  upstream:  "
        } else {
            "  client:    "
        };
        for (name, value) in &self.answer.set {
            line(format!("{to}set {name}: {value}"));
        }
        for name in &self.answer.removed {
            line(format!("{to}remove {name}"));
        }
        if let Some(body) = &self.answer.body {
            line(format!("{to}body {body}"));
        }
        line(format!("response:    {}", self.response));
        out
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

/// What `explain` was asked.
#[derive(Debug, Default)]
pub struct ExplainArgs {
    pub method: Option<String>,
    pub path: Option<String>,
    pub headers: Vec<(String, String)>,
    pub user: Option<String>,
    pub check_request: Option<String>,
    pub json: bool,
}

impl ExplainArgs {
    /// Parses `explain`'s arguments (after the command's name).
    pub fn parse(args: &[&str]) -> Result<ExplainArgs, String> {
        let mut parsed = ExplainArgs::default();
        let mut rest = args.iter();
        while let Some(&arg) = rest.next() {
            let mut value = |name: &str| {
                rest.next()
                    .map(|v| (*v).to_owned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match arg {
                "--method" | "-X" => parsed.method = Some(value(arg)?),
                "--path" => parsed.path = Some(value(arg)?),
                "-H" | "--header" => parsed.headers.push(header_argument(&value(arg)?)?),
                "--user" => parsed.user = Some(value(arg)?),
                "--check-request" => parsed.check_request = Some(value(arg)?),
                "--json" => parsed.json = true,
                other => return Err(format!("unexpected argument \"{other}\"")),
            }
        }
        match (&parsed.check_request, &parsed.path) {
            (Some(_), Some(_)) => Err("give --check-request or --path, not both".into()),
            (Some(_), None) if parsed.method.is_some() || !parsed.headers.is_empty() => {
                Err("--method and -H go with --path, not with --check-request".into())
            }
            (None, None) => Err("--path (or --check-request FILE) is needed".into()),
            _ => Ok(parsed),
        }
    }

    /// The request and the given user, or why they are not valid.
    pub fn request(&self) -> Result<(Request, Option<Arc<User>>), String> {
        let request = match (&self.check_request, &self.path) {
            (Some(file), _) => {
                let text = if file == "-" {
                    std::io::read_to_string(std::io::stdin())
                        .map_err(|e| format!("cannot read the standard input: {e}"))?
                } else {
                    std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?
                };
                envoy::json::request_from_str(&text).map_err(|e| format!("{file}: {e}"))?
            }
            (None, Some(path)) => {
                request_from_parts(self.method.as_deref().unwrap_or("GET"), path, &self.headers)?
            }
            (None, None) => return Err("--path (or --check-request FILE) is needed".into()),
        };
        let user = match &self.user {
            Some(text) => {
                let json: Value = serde_json::from_str(text).map_err(|e| format!("--user: {e}"))?;
                Some(given_user(&json).map_err(|e| format!("--user: {e}"))?)
            }
            None => None,
        };
        Ok((request, user))
    }
}

/// What a command printed and how it ends.
#[derive(Debug, Default)]
pub struct Report {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Report {
    fn bad_input(message: String) -> Report {
        Report {
            stderr: format!("checkpoint: {message}\n"),
            code: 2,
            ..Report::default()
        }
    }
}

/// How long `explain` and `test` wait for the identity sources to be ready (a JWT source's
/// first key fetch) before resolving a caller for real.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Loads the configuration from `env` and builds the application as `serve` does, inside a
/// single-threaded runtime that then runs `work` (user-info is called for real).
pub fn with_app<F>(env: &HashMap<String, String>, work: F) -> Report
where
    F: AsyncFnOnce(Explainer) -> Report,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Report::bad_input(format!("cannot start the runtime: {e}")),
    };
    let config = match crate::Config::load(env) {
        Ok(config) => config,
        Err(errors) => return Report::bad_input(invalid(&errors)),
    };
    let app = {
        let _guard = runtime.enter();
        App::new(config, env)
    };
    match app {
        Ok(app) => runtime.block_on(work(Explainer::new(app))),
        Err(errors) => Report::bad_input(invalid(&errors)),
    }
}

fn invalid(errors: &crate::config::ConfigErrors) -> String {
    let mut text = format!(
        "invalid configuration ({} problem(s)):",
        errors.problems.len()
    );
    for problem in &errors.problems {
        let _ = write!(text, "\n  - {problem}");
    }
    text
}

/// Waits, boundedly, until every identity source can answer.
pub async fn wait_ready(explainer: &Explainer) {
    let until = tokio::time::Instant::now() + READY_WAIT;
    while !explainer.ready() && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `checkpoint explain ARGS`: exit 0 when allowed, 1 when denied, 2 on bad input.
pub fn explain_command(args: &[&str], env: &HashMap<String, String>) -> Report {
    let args = match ExplainArgs::parse(args) {
        Ok(args) => args,
        Err(e) => return Report::bad_input(format!("explain: {e}")),
    };
    let (request, user) = match args.request() {
        Ok(parts) => parts,
        Err(e) => return Report::bad_input(format!("explain: {e}")),
    };
    with_app(env, async move |mut explainer: Explainer| {
        if user.is_none() {
            wait_ready(&explainer).await;
        }
        let explanation = explainer.explain(&request, user).await;
        let stdout = if args.json {
            let mut text = serde_json::to_string_pretty(&explanation).unwrap_or_default();
            text.push('\n');
            text
        } else {
            explanation.render()
        };
        Report {
            stdout,
            stderr: String::new(),
            code: if explanation.allowed() { 0 } else { 1 },
        }
    })
}
