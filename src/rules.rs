//! The rule file (`auth.json`): loading, validation and compilation into the route table.
//!
//! Called once at start-up (and by `checkpoint check-config`). Every problem in the file is
//! collected and reported with the file, the line and column of the rule, the path and the
//! method, so that one run of `check-config` lists everything to fix. Expressions are compiled
//! here, never per request.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::keys::{JsonKeys, Position, Segment};

use crate::config::{ConfigErrors, RulesSource};
use crate::policy::{Expression, Policy};
use crate::request::path;
use crate::route::{MethodKey, RouteTable, Template};

/// The rule for one path and method key.
#[derive(Debug, Clone)]
pub struct Rule {
    pub authorization: Policy,
    /// Used for backoffice requests when present.
    pub backoffice: Option<Policy>,
    /// The identity sources asked for this rule, by name, in the configured order; `None`: all.
    pub identity: Option<Vec<String>>,
    /// Line and column of the method key in the rule file, when known: `checkpoint explain`
    /// names the rule it chose by it.
    pub position: Option<Position>,
    /// The resource the rule is about (`rbac.resource`): RBAC bindings scoped to it apply.
    pub resource: Option<Resource>,
}

/// A rule's `rbac.resource`: a type, and an id that is a constant or a path-template variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: String,
    pub id: ResourceId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceId {
    Constant(String),
    /// The path segment at this position (the key's `{name}`).
    Segment(usize),
}

impl Rule {
    /// The (type, id) of the resource this rule governs for the normalised request `path`,
    /// borrowed; `None` when the rule names none.
    pub fn resource_of<'a>(&'a self, path: &'a str) -> Option<(&'a str, &'a str)> {
        let resource = self.resource.as_ref()?;
        let id = match &resource.id {
            ResourceId::Constant(id) => id.as_str(),
            ResourceId::Segment(i) => crate::route::segment(path, *i)?,
        };
        Some((&resource.kind, id))
    }

    /// The policy that applies to a request.
    pub fn policy(&self, is_backoffice: bool) -> &Policy {
        match (&self.backoffice, is_backoffice) {
            (Some(backoffice), true) => backoffice,
            _ => &self.authorization,
        }
    }
}

/// The compiled rule file.
#[derive(Debug)]
pub struct RuleSet {
    pub file: PathBuf,
    pub table: RouteTable<Rule>,
}

/// One problem in the rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    /// 1-based line and column in the file, when known.
    pub position: Option<(usize, usize)>,
    /// The path key and method key the problem is under, when it is under one.
    pub route: Option<String>,
    pub method: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ":")?;
        if let Some(route) = &self.route {
            write!(f, " rule \"{route}\"")?;
            if let Some(method) = &self.method {
                write!(f, " {method}")?;
            }
            write!(f, ":")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for RuleError {}

impl RuleSet {
    /// Reads and compiles the rule file at `file`.
    pub fn load(file: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let label = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| {
            vec![RuleError {
                file: label.clone(),
                position: None,
                route: None,
                method: None,
                message: format!("cannot read the rule file: {e}"),
            }]
        })?;
        let table = compile(&label, &text)?;
        Ok(RuleSet {
            file: file.to_path_buf(),
            table,
        })
    }

    /// Compiles rules from text; `label` names the source in errors.
    pub fn parse(label: &str, text: &str) -> Result<RuleSet, Vec<RuleError>> {
        Ok(RuleSet {
            file: PathBuf::from(label),
            table: compile(label, text)?,
        })
    }

    /// Compiles the rules wherever the configuration found them.
    pub fn from_source(source: &RulesSource) -> Result<RuleSet, Vec<RuleError>> {
        match source {
            RulesSource::File(path) => RuleSet::load(path),
            RulesSource::Inline { label, text } => RuleSet::parse(label, text),
        }
    }
}

/// The whole configuration: the settings and the compiled rules.
#[derive(Debug)]
pub struct Config {
    pub settings: crate::config::Settings,
    pub rules: RuleSet,
    /// The shadow rules (`Settings::shadow_rules_file`): evaluated, never enforced.
    pub shadow: Option<RuleSet>,
    /// Where the configuration came from, for `check-config` and the start-up log.
    pub origin: String,
    /// Mia variables that were set but ignored because the native file wins.
    pub ignored: Vec<&'static str>,
    /// The RBAC roles and bindings, when configured.
    pub rbac: Option<std::sync::Arc<crate::rbac::Rbac>>,
}

impl Config {
    /// Reads the settings from `vars` ([`crate::config::load`]), then compiles the rules they
    /// name (and the shadow rules, when configured). Reports every problem: those of the
    /// settings and those of the rules together, whenever the rules can be found.
    pub fn load(vars: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        match crate::config::load(vars) {
            Ok(loaded) => {
                let rules = RuleSet::from_source(&loaded.rules);
                let shadow = loaded
                    .settings
                    .shadow_rules_file
                    .as_deref()
                    .map(RuleSet::load)
                    .transpose();
                let rbac = loaded
                    .settings
                    .rbac
                    .as_ref()
                    .map(crate::rbac::Rbac::load)
                    .transpose();
                match (rules, shadow, rbac) {
                    (Ok(rules), Ok(shadow), Ok(rbac)) => Ok(Config {
                        settings: loaded.settings,
                        rules,
                        shadow,
                        origin: loaded.origin,
                        ignored: loaded.ignored,
                        rbac: rbac.map(std::sync::Arc::new),
                    }),
                    (rules, shadow, rbac) => {
                        let mut problems: Vec<String> = rules
                            .err()
                            .into_iter()
                            .chain(shadow.err())
                            .flatten()
                            .map(|e| e.to_string())
                            .collect();
                        problems.extend(rbac.err().into_iter().flatten());
                        Err(ConfigErrors::new(problems))
                    }
                }
            }
            Err(mut errors) => {
                if let Some(Err(more)) = errors.rules.as_ref().map(RuleSet::from_source) {
                    errors.problems.extend(more.iter().map(ToString::to_string));
                }
                Err(errors)
            }
        }
    }
}

/// Permissions that a rule's expression asks for and that no RBAC role or binding grants:
/// warnings, not errors (the identity provider may grant them). Empty without RBAC.
pub fn rbac_warnings(rules: &RuleSet, rbac: Option<&crate::rbac::Rbac>) -> Vec<String> {
    let Some(rbac) = rbac else {
        return Vec::new();
    };
    let granted = rbac.granted();
    let mut warnings = Vec::new();
    for (path, method, rule) in rules.table.iter() {
        let policies = std::iter::once(&rule.authorization).chain(rule.backoffice.as_ref());
        for name in policies.flat_map(|p| p.expression.permissions_used()) {
            if !granted.contains(name) {
                let at = rule
                    .position
                    .map(|(l, c)| format!(":{l}:{c}"))
                    .unwrap_or_default();
                warnings.push(format!(
                    "{}{at}: rule \"{path}\" {method}: no RBAC role or binding grants permission \"{name}\" (only the identity provider can)",
                    rules.file.display()
                ));
            }
        }
    }
    warnings
}

const RULE_FIELDS: &[&str] = &[
    "authorization",
    "backofficeAuthorization",
    "identity",
    "rbac",
];
const POLICY_FIELDS: &[&str] = &["expression", "public"];

fn compile(label: &str, text: &str) -> Result<RouteTable<Rule>, Vec<RuleError>> {
    let mut errors = Vec::new();
    let error = |position, route: Option<&str>, method: Option<&str>, message: String| RuleError {
        file: label.to_owned(),
        position,
        route: route.map(str::to_owned),
        method: method.map(str::to_owned),
        message,
    };
    let document: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let message = e.to_string();
            // serde_json appends " at line L column C"; the position is given separately.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            return Err(vec![error(
                Some((e.line(), e.column())),
                None,
                None,
                format!("invalid JSON: {message}"),
            )]);
        }
    };
    let Value::Object(routes) = document else {
        return Err(vec![error(
            Some((1, 1)),
            None,
            None,
            "the rule file must be a JSON object whose keys are paths".to_owned(),
        )]);
    };
    let keys = JsonKeys::scan(text);
    for duplicate in &keys.duplicates {
        // Named by the rule it is in (path, method), then by the keys below the method.
        let name = |i: usize| match duplicate.path.get(i) {
            Some(Segment::Key(key)) => Some(key.as_str()),
            _ => None,
        };
        let below = match duplicate.path.get(2..) {
            Some(below) if !below.is_empty() => below,
            _ => duplicate
                .path
                .get(duplicate.path.len().saturating_sub(1)..)
                .unwrap_or_default(),
        };
        errors.push(error(
            Some(duplicate.second),
            name(0),
            name(1),
            duplicate.describe(
                &format!("{label}:{}:{}", duplicate.first.0, duplicate.first.1),
                below,
            ),
        ));
    }
    let mut table = RouteTable::new();
    // Normalised path and method -> the key that claimed them and where.
    let mut claimed: HashMap<(String, String), (String, Option<Position>)> = HashMap::new();
    for (route, methods) in &routes {
        let at = keys.position(&[route]);
        let normalized = match path::normalize(route) {
            Ok(p) if route.starts_with('/') => p,
            Ok(_) | Err(_) => {
                let reason = path::normalize(route)
                    .err()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                errors.push(error(
                    at,
                    Some(route),
                    None,
                    format!("the path must start with \"/\" and be a plain path{reason}"),
                ));
                continue;
            }
        };
        let template = match Template::parse(&normalized) {
            Ok(template) => template,
            Err(message) => {
                errors.push(error(at, Some(route), None, message));
                continue;
            }
        };
        let Value::Object(methods) = methods else {
            errors.push(error(
                at,
                Some(route),
                None,
                "must be an object whose keys are methods (GET, POST, PUT, PATCH, DELETE, HEAD, ALL)"
                    .to_owned(),
            ));
            continue;
        };
        for (method, body) in methods {
            let at = keys.position(&[route, method]).or(at);
            let Some(key) = MethodKey::parse(method) else {
                errors.push(error(
                    at,
                    Some(route),
                    Some(method),
                    format!("unknown method \"{method}\" (use GET, POST, PUT, PATCH, DELETE, HEAD or ALL)"),
                ));
                continue;
            };
            let mut problems = Vec::new();
            let rule = rule_from(body, template.as_ref(), &mut problems).map(|rule| Rule {
                position: at,
                ..rule
            });
            for message in problems {
                errors.push(error(at, Some(route), Some(method), message));
            }
            let Some(rule) = rule else { continue };
            if table.insert(&normalized, key, rule).is_ok() {
                claimed.insert((normalized.clone(), method.clone()), (route.clone(), at));
                continue;
            }
            let Some((other, other_at)) = claimed.get(&(normalized.clone(), method.clone())) else {
                continue;
            };
            // Reported at the later of the two keys, naming the earlier one and its place.
            let (first, first_at, second, second_at) = if other_at <= &at {
                (other.as_str(), *other_at, route.as_str(), at)
            } else {
                (route.as_str(), at, other.as_str(), *other_at)
            };
            let place = first_at
                .map(|(line, column)| format!(" ({label}:{line}:{column})"))
                .unwrap_or_default();
            errors.push(error(
                second_at,
                Some(second),
                Some(method),
                format!("\"{first}\"{place} and \"{second}\" both normalise to \"{normalized}\""),
            ));
        }
    }
    // serde_json's map is ordered by key: list the problems in the order of the file.
    errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, usize::MAX)));
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(errors)
    }
}

/// Compiles one method's block; records problems and returns `None` if there are any.
fn rule_from(
    body: &Value,
    template: Option<&Template>,
    problems: &mut Vec<String>,
) -> Option<Rule> {
    let Value::Object(fields) = body else {
        problems.push("must be an object with an \"authorization\" field".to_owned());
        return None;
    };
    for name in fields.keys() {
        if !RULE_FIELDS.contains(&name.as_str()) {
            problems.push(format!(
                "unknown field \"{name}\" (expected authorization, backofficeAuthorization, identity or rbac)"
            ));
        }
    }
    let before = problems.len();
    let authorization = match fields.get("authorization") {
        Some(value) => policy_from("authorization", value, problems),
        None => {
            problems.push("missing field \"authorization\"".to_owned());
            None
        }
    };
    let backoffice = fields
        .get("backofficeAuthorization")
        .and_then(|value| policy_from("backofficeAuthorization", value, problems));
    let identity = match fields.get("identity") {
        None => None,
        Some(Value::Array(items)) if !items.is_empty() => {
            let names: Vec<String> = items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect();
            if names.len() != items.len() {
                problems.push("identity: must be a list of source names".to_owned());
            }
            Some(names)
        }
        Some(_) => {
            problems.push("identity: must be a non-empty list of source names".to_owned());
            None
        }
    };
    let resource = fields
        .get("rbac")
        .and_then(|value| resource_from(value, template, problems));
    if problems.len() > before {
        return None;
    }
    Some(Rule {
        authorization: authorization?,
        backoffice,
        identity,
        position: None,
        resource,
    })
}

/// A method entry's `rbac`: `{"resource": {"type": "tenant", "id": "{tenant}"}}`, the id a
/// constant or a variable the key declares.
fn resource_from(
    value: &Value,
    template: Option<&Template>,
    problems: &mut Vec<String>,
) -> Option<Resource> {
    let shape = "rbac: must be {\"resource\": {\"type\": ..., \"id\": ...}}";
    let Some(Value::Object(fields)) = Some(value) else {
        problems.push(shape.to_owned());
        return None;
    };
    if fields.keys().any(|k| k != "resource") {
        problems.push(format!("{shape}; unknown field"));
        return None;
    }
    let Some(Value::Object(resource)) = fields.get("resource") else {
        problems.push(shape.to_owned());
        return None;
    };
    if resource.keys().any(|k| k != "type" && k != "id") {
        problems.push("rbac.resource: unknown field (expected type and id)".to_owned());
        return None;
    }
    let (Some(Value::String(kind)), Some(Value::String(id))) =
        (resource.get("type"), resource.get("id"))
    else {
        problems.push("rbac.resource: \"type\" and \"id\" must be strings".to_owned());
        return None;
    };
    if kind.is_empty() || id.is_empty() {
        problems.push("rbac.resource: \"type\" and \"id\" must not be empty".to_owned());
        return None;
    }
    let id = if id.contains(['{', '}']) {
        let name = id
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|n| !n.is_empty() && !n.contains(['{', '}']));
        let Some(name) = name else {
            problems.push(format!(
                "rbac.resource.id \"{id}\": a variable is written {{name}}, alone"
            ));
            return None;
        };
        match template.and_then(|t| t.variable(name)) {
            Some(i) => ResourceId::Segment(i),
            None => {
                problems.push(format!(
                    "rbac.resource.id: the key declares no variable \"{{{name}}}\""
                ));
                return None;
            }
        }
    } else {
        ResourceId::Constant(id.clone())
    };
    Some(Resource {
        kind: kind.clone(),
        id,
    })
}

fn policy_from(field: &str, value: &Value, problems: &mut Vec<String>) -> Option<Policy> {
    let Value::Object(fields) = value else {
        problems.push(format!(
            "{field}: must be an object with \"expression\" and \"public\""
        ));
        return None;
    };
    for name in fields.keys() {
        if !POLICY_FIELDS.contains(&name.as_str()) {
            problems.push(format!(
                "{field}: unknown field \"{name}\" (expected expression or public)"
            ));
        }
    }
    let public = match fields.get("public") {
        None => Some(false),
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            problems.push(format!(
                "{field}.public: must be true or false, not {other}"
            ));
            None
        }
    };
    let expression = match fields.get("expression") {
        Some(Value::String(source)) => match Expression::compile(source) {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(format!("{field}.expression \"{source}\": {e}"));
                None
            }
        },
        Some(other) => {
            problems.push(format!("{field}.expression: must be a string, not {other}"));
            None
        }
        None => {
            problems.push(format!("{field}: missing field \"expression\""));
            None
        }
    };
    Some(Policy {
        expression: expression?,
        public: public?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Facts;
    use crate::route::Method;

    const MIA_EXAMPLE: &str = r#"{
  "/":      { "GET":  { "authorization": { "expression": "true",  "public": true } },
              "POST": { "authorization": { "expression": "false", "public": false } } },
  "/users": { "ALL":  { "authorization":           { "expression": "groups.admin", "public": false },
                        "backofficeAuthorization": { "expression": "groups.admin && isBackoffice", "public": false } } }
}"#;

    #[test]
    fn the_mia_example_compiles() {
        let rules = RuleSet::parse("auth.json", MIA_EXAMPLE).expect("valid");
        assert_eq!(rules.table.len(), 3);
        let found = rules
            .table
            .find("/users/1", Some(Method::Delete))
            .expect("found");
        assert_eq!(found.path, "/users");
        assert_eq!(found.rule.position, Some((4, 15)));
        let admin = ["admin".to_owned()];
        let facts = Facts {
            groups: &admin,
            is_backoffice: true,
            ..Facts::default()
        };
        assert!(found.rule.policy(true).expression.evaluate(&facts));
        assert_eq!(
            found.rule.policy(true).expression.source(),
            "groups.admin && isBackoffice"
        );
        assert_eq!(found.rule.policy(false).expression.source(), "groups.admin");
    }

    #[test]
    fn every_problem_is_listed_with_file_rule_method_and_position() {
        let text = r#"{
  "/ok": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/bad-expr": { "GET": { "authorization": { "expression": "groups.admin &&", "public": false } } },
  "/bad-method": { "get": { "authorization": { "expression": "true" } } },
  "no-slash": { "GET": { "authorization": { "expression": "true" } } },
  "/missing": { "POST": { "backofficeAuthorization": { "expression": "true" } } },
  "/types": { "PUT": { "authorization": { "expression": 3, "public": "yes", "extra": 1 } } },
  "/dup": { "GET": { "authorization": { "expression": "true" } } },
  "/./dup": { "GET": { "authorization": { "expression": "true" } } }
}"#;
        let errors = RuleSet::parse("auth.json", text).expect_err("invalid");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            r#"auth.json:3:18: rule "/bad-expr" GET: authorization.expression "groups.admin &&": invalid expression at column"#,
            r#"auth.json:4:20: rule "/bad-method" get: unknown method "get""#,
            r#"auth.json:5:3: rule "no-slash": the path must start with "/""#,
            r#"auth.json:6:17: rule "/missing" POST: missing field "authorization""#,
            r#"auth.json:7:15: rule "/types" PUT: authorization: unknown field "extra""#,
            r#"auth.json:7:15: rule "/types" PUT: authorization.public: must be true or false"#,
            r#"auth.json:7:15: rule "/types" PUT: authorization.expression: must be a string"#,
            r#"auth.json:9:15: rule "/./dup" GET: "/dup" (auth.json:8:13) and "/./dup" both normalise to "/dup""#,
        ];
        // In file order, whatever the order of the keys.
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
        for (line, want) in lines.iter().zip(expect) {
            assert!(line.starts_with(want), "{want:?} expected, got {lines:#?}");
        }
    }

    /// serde_json keeps the last of two equal keys, so a rule file with the same path twice
    /// silently lost the first; every duplicate, at any depth, is an error naming both places.
    #[test]
    fn duplicate_keys_at_every_level_name_both_positions() {
        let text = r#"{
  "/a": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/b": {
    "GET": { "authorization": { "expression": "true" } },
    "GET": { "authorization": { "expression": "false" } }
  },
  "/c": { "POST": { "authorization": { "expression": "true", "expression": "false" },
                    "authorization": { "expression": "true" } } },
  "/a": { "PUT": { "authorization": { "expression": "true" } } }
}"#;
        let errors = RuleSet::parse("auth.json", text).expect_err("duplicates");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                r#"auth.json:5:5: rule "/b" GET: duplicate key "GET" (first at auth.json:4:5)"#,
                r#"auth.json:7:62: rule "/c" POST: duplicate key "authorization.expression" (first at auth.json:7:40)"#,
                r#"auth.json:8:21: rule "/c" POST: duplicate key "authorization" (first at auth.json:7:21)"#,
                r#"auth.json:9:3: rule "/a": duplicate key "/a" (first at auth.json:2:3)"#,
            ]
        );
    }

    #[test]
    fn keys_that_normalise_alike_name_both_keys_and_both_positions() {
        let text = "{\n  \"/a//b\": { \"GET\": { \"authorization\": { \"expression\": \"true\" } } },\n  \"/a/b\": { \"GET\": { \"authorization\": { \"expression\": \"true\" } } }\n}";
        let errors = RuleSet::parse("auth.json", text).expect_err("same path");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                r#"auth.json:3:13: rule "/a/b" GET: "/a//b" (auth.json:2:14) and "/a/b" both normalise to "/a/b""#
            ]
        );
    }

    #[test]
    fn templates_and_rbac_resources_are_checked_with_positions() {
        let text = r#"{
  "/t/{tenant}": { "GET": { "authorization": { "expression": "permissions.orders.read" },
                            "rbac": { "resource": { "type": "tenant", "id": "{tenant}" } } } },
  "/c": { "GET": { "authorization": { "expression": "true" },
                   "rbac": { "resource": { "type": "tenant", "id": "acme" } } } },
  "/u/{a}": { "GET": { "authorization": { "expression": "true" },
                       "rbac": { "resource": { "type": "tenant", "id": "{b}" } } } },
  "/x/{": { "GET": { "authorization": { "expression": "true" } } },
  "/y/{}": { "GET": { "authorization": { "expression": "true" } } },
  "/z/{a}b": { "GET": { "authorization": { "expression": "true" } } },
  "/w/{a}/{a}": { "GET": { "authorization": { "expression": "true" } } }
}"#;
        let errors = RuleSet::parse("auth.json", text).expect_err("invalid");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                r#"auth.json:6:15: rule "/u/{a}" GET: rbac.resource.id: the key declares no variable "{b}""#,
                r#"auth.json:8:3: rule "/x/{": path template segment "{": a variable is a whole segment, written {name}"#,
                r#"auth.json:9:3: rule "/y/{}": path template segment "{}": the variable has no name"#,
                r#"auth.json:10:3: rule "/z/{a}b": path template segment "{a}b": a variable is a whole segment, written {name}"#,
                r#"auth.json:11:3: rule "/w/{a}/{a}": path template variable "a" is declared twice"#,
            ]
        );
        let good: String = text.lines().take(5).collect::<Vec<_>>().join("\n");
        let good = good.trim_end_matches(',').to_owned() + "\n}";
        let rules = RuleSet::parse("auth.json", &good).expect("valid");
        let found = rules
            .table
            .find("/t/acme/orders", Some(Method::Get))
            .expect("found");
        assert_eq!(
            found.rule.resource_of("/t/acme/orders"),
            Some(("tenant", "acme"))
        );
        let found = rules.table.find("/c", Some(Method::Get)).expect("found");
        assert_eq!(found.rule.resource_of("/c"), Some(("tenant", "acme")));
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let errors = RuleSet::parse("auth.json", "{\n  \"/a\": { \"GET\": }\n}").expect_err("bad");
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(text.starts_with("auth.json:2:"), "{text}");
        assert!(text.contains("invalid JSON"), "{text}");
    }

    #[test]
    fn a_missing_file_is_reported() {
        let errors = RuleSet::load(Path::new("/nonexistent/auth.json")).expect_err("missing");
        assert!(errors[0].to_string().contains("cannot read the rule file"));
    }

    #[test]
    fn non_object_documents_are_refused() {
        for text in [
            "[]",
            "\"x\"",
            "null",
            "{\"/a\": []}",
            "{\"/a\": {\"GET\": 1}}",
        ] {
            assert!(RuleSet::parse("auth.json", text).is_err(), "{text}");
        }
    }
}
