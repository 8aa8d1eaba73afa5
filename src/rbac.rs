//! RBAC (issue 13): roles, bindings and resource scopes that add to the caller's permissions.
//!
//! [`Rbac::load`] reads the roles and bindings where the configuration says
//! ([`RbacSource`]: the native file inline, a file of the same structure, or Rönd's exported
//! collections), validates them all at once (every problem with its file, line and column) and
//! compiles them: each role's inherited roles and permissions are expanded once, here.
//!
//! On a Check, [`Rbac::effective`] gives the caller's effective permissions and roles on the
//! rule's resource: the identity provider's permissions plus those of every binding that
//! applies to the caller (by user id, group, verified client type or mTLS principal) and has no
//! resource or the rule's. The answer is memoised on the cached [`User`] (per resource, client
//! and principal), so a warm-cache Check only looks it up; callers with no user share a memo
//! here. Additive only: a deny is written as an expression.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::config::keys::{Position, Segment, yaml_position};
use crate::config::rbac::{BindingDoc, RbacDoc, RbacSettings, RbacSource, ResourceDoc, RoleDoc};
use crate::identity::{MAX_USER_HEADER_BYTES, User};

/// The compiled roles and bindings.
#[derive(Debug)]
pub struct Rbac {
    /// Role id -> the role itself and every role it inherits (sorted) and their permissions.
    roles: HashMap<String, Expanded>,
    bindings: Vec<Binding>,
    /// Distinguishes this compilation in the memos of users that outlive a reload.
    generation: u64,
    /// The upstream header with the effective roles, when configured.
    pub roles_header: Option<String>,
    /// Where the roles and bindings came from, for `check-config`.
    pub origin: String,
    /// Memo of the callers with no user (a client or a principal alone).
    anonymous: Memo,
}

#[derive(Debug, Clone, Default)]
struct Expanded {
    roles: Vec<String>,
    permissions: Vec<String>,
}

#[derive(Debug)]
struct Binding {
    id: String,
    subjects: Vec<String>,
    groups: Vec<String>,
    clients: Vec<String>,
    principals: Vec<String>,
    resource: Option<(String, String)>,
    /// Roles granted, inherited ones included.
    roles: Vec<String>,
    /// Direct permissions and those of `roles`.
    permissions: Vec<String>,
}

/// Who is asking, as far as bindings care.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub user: Option<&'a User>,
    /// The client type of a verified API key; `""` when none.
    pub client: &'a str,
    /// The mTLS principal Envoy reports; `""` when none.
    pub principal: &'a str,
}

/// The caller's effective permissions and roles on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// The identity provider's permissions, then those the bindings add.
    pub permissions: Vec<String>,
    /// Effective roles, inherited ones included, sorted.
    pub roles: Vec<String>,
    /// The ids of the bindings that applied, for `checkpoint explain`.
    pub bindings: Vec<String>,
    /// `roles` joined with `,`: the roles header's value.
    pub roles_header: String,
    /// With the roles header configured: whether the user headers and this one together pass
    /// [`MAX_USER_HEADER_BYTES`]; `check` then treats the identity as unavailable, as it does a
    /// profile too large for the user headers.
    pub too_large: bool,
}

/// Answers of [`Rbac::effective`] kept with an identity: at most [`MEMO_ENTRIES`], the oldest
/// dropped first (the resource id comes from the request path, so the caller chooses it).
#[derive(Debug, Default)]
pub struct Memo(Mutex<Vec<(MemoKey, Arc<Effective>)>>);

/// A memo is never copied or compared with its identity: a clone starts empty.
impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Memo {}

const MEMO_ENTRIES: usize = 32;

#[derive(Debug)]
struct MemoKey {
    generation: u64,
    client: Box<str>,
    principal: Box<str>,
    resource: Option<(Box<str>, Box<str>)>,
}

impl MemoKey {
    fn is(&self, generation: u64, caller: &Caller<'_>, resource: Option<(&str, &str)>) -> bool {
        self.generation == generation
            && *self.client == *caller.client
            && *self.principal == *caller.principal
            && match (&self.resource, resource) {
                (None, None) => true,
                (Some((t, i)), Some((rt, ri))) => **t == *rt && **i == *ri,
                _ => false,
            }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One problem of the roles and bindings: `FILE:LINE:COLUMN: message` (no position when the
/// place cannot be told).
pub type Problem = String;

/// A role or binding as read, with where it is.
struct Placed<T> {
    item: T,
    /// Index into `Loader::docs`.
    doc: usize,
    /// The path of the item in its document.
    path: Vec<Segment>,
}

/// One document read: its label, text (for positions) and the names of the fields it spells
/// differently (Rönd's `roleId`, `bindingId`).
struct Doc {
    label: String,
    text: String,
    /// Maps positions in `text` to the file as written (the native file's `${VAR}`).
    shifts: crate::config::expand::Shifts,
    rond: bool,
    /// How the document spells an item's id: `id`, Rönd's `roleId` or `bindingId`.
    id_field: &'static str,
}

#[derive(Default)]
struct Loader {
    docs: Vec<Doc>,
    roles: Vec<Placed<RoleDoc>>,
    bindings: Vec<Placed<BindingDoc>>,
    problems: Vec<(Option<Position>, usize, Problem)>,
}

impl Loader {
    /// Records `message` at `field` (dotted, in the native spelling) of the item at `path` in
    /// document `doc`, or at the item's id when the field is not found.
    fn problem(&mut self, doc: usize, path: &[Segment], field: Option<&str>, message: String) {
        let Some(d) = self.docs.get(doc) else {
            return;
        };
        let spelled = |f: &str| -> Vec<Segment> {
            let f = match (d.rond, f) {
                (_, "id") => d.id_field,
                (true, "resource.type") => "resource.resourceType",
                (_, f) => f,
            };
            let mut full = path.to_vec();
            full.extend(f.split('.').map(|k| Segment::Key(k.to_owned())));
            full
        };
        let position = field
            .and_then(|f| yaml_position(&d.text, &spelled(f)))
            .or_else(|| yaml_position(&d.text, &spelled("id")))
            .map(|p| d.shifts.original(p));
        let place = match position {
            Some((line, column)) => format!("{}:{line}:{column}", d.label),
            None => d.label.clone(),
        };
        let item = crate::config::keys::dotted(path);
        let item = if item.is_empty() {
            String::new()
        } else {
            format!(" {item}:")
        };
        self.problems
            .push((position, doc, format!("{place}:{item} {message}")));
    }
}

/// Rönd's role document (other fields, Mongo's `_id` among them, are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RondRole {
    role_id: String,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(rename = "__STATE__")]
    state: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RondBinding {
    binding_id: String,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    resource: Option<RondResource>,
    #[serde(rename = "__STATE__")]
    state: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RondResource {
    resource_type: String,
    resource_id: String,
}

/// Rönd ignores documents whose `__STATE__` is present and not `PUBLIC` (drafts, trash).
fn rond_public(state: &Option<String>) -> bool {
    state.as_deref().is_none_or(|s| s == "PUBLIC")
}

fn parse_error(label: &str, error: &serde_yaml_ng::Error) -> Problem {
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    match error.location() {
        Some(l) => format!("{label}:{}:{}: {message}", l.line(), l.column()),
        None => format!("{label}: {message}"),
    }
}

fn read(path: &std::path::Path) -> Result<String, Vec<Problem>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "{}: cannot read the RBAC file: {e}",
            path.display()
        )]
    })
}

impl Rbac {
    /// Reads, validates and compiles the roles and bindings. Every problem is listed, each with
    /// its file, line and column.
    pub fn load(settings: &RbacSettings) -> Result<Rbac, Vec<Problem>> {
        let mut loader = Loader::default();
        let origin;
        match &settings.source {
            RbacSource::Inline {
                label,
                text,
                shifts,
                doc,
            } => {
                origin = format!("{label} (rbac inline)");
                loader.docs.push(Doc {
                    label: label.clone(),
                    text: text.clone(),
                    shifts: shifts.clone(),
                    rond: false,
                    id_field: "id",
                });
                add_native(&mut loader, 0, doc, &[Segment::Key("rbac".into())]);
            }
            RbacSource::File(path) => {
                origin = path.display().to_string();
                let text = read(path)?;
                let label = path.display().to_string();
                let doc: RbacDoc =
                    serde_yaml_ng::from_str(&text).map_err(|e| vec![parse_error(&label, &e)])?;
                loader.docs.push(Doc {
                    label,
                    text,
                    shifts: Default::default(),
                    rond: false,
                    id_field: "id",
                });
                add_native(&mut loader, 0, &doc, &[]);
            }
            RbacSource::Rond { roles, bindings } => {
                origin = format!("{} and {} (Rönd)", roles.display(), bindings.display());
                let (roles_text, bindings_text) = (read(roles), read(bindings));
                let mut problems = Vec::new();
                let roles_text = roles_text.map_err(|e| problems.extend(e));
                let bindings_text = bindings_text.map_err(|e| problems.extend(e));
                let (Ok(roles_text), Ok(bindings_text)) = (roles_text, bindings_text) else {
                    return Err(problems);
                };
                let roles_label = roles.display().to_string();
                let bindings_label = bindings.display().to_string();
                let role_docs: Result<Vec<RondRole>, _> = serde_yaml_ng::from_str(&roles_text)
                    .map_err(|e| problems.push(parse_error(&roles_label, &e)));
                let binding_docs: Result<Vec<RondBinding>, _> =
                    serde_yaml_ng::from_str(&bindings_text)
                        .map_err(|e| problems.push(parse_error(&bindings_label, &e)));
                let (Ok(role_docs), Ok(binding_docs)) = (role_docs, binding_docs) else {
                    return Err(problems);
                };
                loader.docs.push(Doc {
                    label: roles_label,
                    text: roles_text,
                    shifts: Default::default(),
                    rond: true,
                    id_field: "roleId",
                });
                loader.docs.push(Doc {
                    label: bindings_label,
                    text: bindings_text,
                    shifts: Default::default(),
                    rond: true,
                    id_field: "bindingId",
                });
                for (i, role) in role_docs.into_iter().enumerate() {
                    if rond_public(&role.state) {
                        loader.roles.push(Placed {
                            item: RoleDoc {
                                id: role.role_id,
                                permissions: role.permissions,
                                inherits: Vec::new(),
                            },
                            doc: 0,
                            path: vec![Segment::Index(i)],
                        });
                    }
                }
                for (i, b) in binding_docs.into_iter().enumerate() {
                    if rond_public(&b.state) {
                        loader.bindings.push(Placed {
                            item: BindingDoc {
                                id: b.binding_id,
                                subjects: b.subjects,
                                groups: b.groups,
                                clients: Vec::new(),
                                principals: Vec::new(),
                                roles: b.roles,
                                permissions: b.permissions,
                                resource: b.resource.map(|r| ResourceDoc {
                                    kind: r.resource_type,
                                    id: r.resource_id,
                                }),
                            },
                            doc: 1,
                            path: vec![Segment::Index(i)],
                        });
                    }
                }
            }
        }
        compile(loader, settings.roles_header.clone(), origin)
    }

    /// Every permission a role or a binding grants, for the rule loader's warning about
    /// permissions no role grants.
    pub fn granted(&self) -> HashSet<&str> {
        self.roles
            .values()
            .flat_map(|e| e.permissions.iter())
            .chain(self.bindings.iter().flat_map(|b| b.permissions.iter()))
            .map(String::as_str)
            .collect()
    }

    /// Of the bindings that applied (`Effective::bindings`), those that grant `permission`, for
    /// `checkpoint explain`.
    pub fn granting_permission(&self, applied: &[String], permission: &str) -> Vec<String> {
        self.applied(applied)
            .filter(|b| b.permissions.iter().any(|p| p == permission))
            .map(|b| b.id.clone())
            .collect()
    }

    /// Of the bindings that applied, those that grant `role` (directly or by inheritance), for
    /// `checkpoint explain`.
    pub fn granting_role(&self, applied: &[String], role: &str) -> Vec<String> {
        self.applied(applied)
            .filter(|b| b.roles.iter().any(|r| r == role))
            .map(|b| b.id.clone())
            .collect()
    }

    fn applied<'a>(&'a self, applied: &'a [String]) -> impl Iterator<Item = &'a Binding> {
        self.bindings.iter().filter(|b| applied.contains(&b.id))
    }

    /// Number of roles and bindings, for `check-config`.
    pub fn counts(&self) -> (usize, usize) {
        (self.roles.len(), self.bindings.len())
    }

    /// The caller's effective permissions and roles on `resource` (type, id), memoised with
    /// the caller's identity.
    pub fn effective(&self, caller: &Caller<'_>, resource: Option<(&str, &str)>) -> Arc<Effective> {
        let memo = caller.user.map_or(&self.anonymous, |u| &u.rbac);
        // A poisoned memo only means another Check panicked mid-update: compute afresh.
        if let Ok(entries) = memo.0.lock()
            && let Some((_, found)) = entries
                .iter()
                .find(|(key, _)| key.is(self.generation, caller, resource))
        {
            return Arc::clone(found);
        }
        let computed = Arc::new(self.compute(caller, resource));
        if let Ok(mut entries) = memo.0.lock() {
            if entries.len() >= MEMO_ENTRIES {
                entries.remove(0);
            }
            entries.push((
                MemoKey {
                    generation: self.generation,
                    client: caller.client.into(),
                    principal: caller.principal.into(),
                    resource: resource.map(|(t, i)| (t.into(), i.into())),
                },
                Arc::clone(&computed),
            ));
        }
        computed
    }

    /// [`Rbac::effective`] without the memo.
    fn compute(&self, caller: &Caller<'_>, resource: Option<(&str, &str)>) -> Effective {
        let mut permissions: Vec<String> = caller
            .user
            .map(|u| u.permissions.clone())
            .unwrap_or_default();
        let mut roles: Vec<String> = Vec::new();
        let mut bindings = Vec::new();
        for binding in &self.bindings {
            let scoped = match (&binding.resource, resource) {
                (None, _) => true,
                (Some((t, i)), Some((rt, ri))) => t == rt && i == ri,
                (Some(_), None) => false,
            };
            if !scoped || !applies(binding, caller) {
                continue;
            }
            bindings.push(binding.id.clone());
            for p in &binding.permissions {
                if !permissions.contains(p) {
                    permissions.push(p.clone());
                }
            }
            for r in &binding.roles {
                if !roles.contains(r) {
                    roles.push(r.clone());
                }
            }
        }
        roles.sort();
        let roles_header = roles.join(",");
        // Security: the roles header counts in the user headers' budget, so that bindings
        // cannot push the upstream request past Envoy's header limit either.
        let user_bytes = caller.user.map_or(0, |u| {
            u.id.len() + u.groups_header.len() + u.properties_header.len()
        });
        let too_large =
            self.roles_header.is_some() && user_bytes + roles_header.len() > MAX_USER_HEADER_BYTES;
        Effective {
            permissions,
            roles,
            bindings,
            roles_header,
            too_large,
        }
    }
}

fn applies(binding: &Binding, caller: &Caller<'_>) -> bool {
    let user = caller.user.is_some_and(|u| {
        binding.subjects.contains(&u.id) || binding.groups.iter().any(|g| u.groups.contains(g))
    });
    // Security: `client` is only ever a verified API key's client type, never the header.
    let client = !caller.client.is_empty() && binding.clients.iter().any(|c| c == caller.client);
    let principal =
        !caller.principal.is_empty() && binding.principals.iter().any(|p| p == caller.principal);
    user || client || principal
}

fn add_native(loader: &mut Loader, doc: usize, rbac: &RbacDoc, base: &[Segment]) {
    for (i, role) in rbac.roles.iter().enumerate() {
        let mut path = base.to_vec();
        path.extend([Segment::Key("roles".into()), Segment::Index(i)]);
        loader.roles.push(Placed {
            item: role.clone(),
            doc,
            path,
        });
    }
    for (i, binding) in rbac.bindings.iter().enumerate() {
        let mut path = base.to_vec();
        path.extend([Segment::Key("bindings".into()), Segment::Index(i)]);
        loader.bindings.push(Placed {
            item: binding.clone(),
            doc,
            path,
        });
    }
}

fn compile(
    mut loader: Loader,
    roles_header: Option<String>,
    origin: String,
) -> Result<Rbac, Vec<Problem>> {
    let roles = std::mem::take(&mut loader.roles);
    let bindings = std::mem::take(&mut loader.bindings);
    // Role ids, and the first place of each.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, role) in roles.iter().enumerate() {
        if role.item.id.is_empty() {
            loader.problem(
                role.doc,
                &role.path,
                Some("id"),
                "the role id is empty".into(),
            );
            continue;
        }
        if let Some(&j) = first.get(role.item.id.as_str()) {
            let other = crate::config::keys::dotted(&roles[j].path);
            loader.problem(
                role.doc,
                &role.path,
                Some("id"),
                format!(
                    "role \"{}\" is defined twice (first at {other})",
                    role.item.id
                ),
            );
            continue;
        }
        first.insert(&role.item.id, i);
        // The roles header is comma-joined, as the groups header: an id must read as one.
        if roles_header.is_some()
            && (role.item.id.contains(',') || role.item.id.chars().any(char::is_control))
        {
            loader.problem(
                role.doc,
                &role.path,
                Some("id"),
                format!(
                    "role \"{}\" cannot be sent in the roles header: it holds a comma or a control character",
                    role.item.id.escape_debug()
                ),
            );
        }
        for parent in &role.item.inherits {
            if !roles.iter().any(|r| r.item.id == *parent) {
                loader.problem(
                    role.doc,
                    &role.path,
                    Some("inherits"),
                    format!("inherits the unknown role \"{parent}\""),
                );
            }
        }
    }
    // Expand inheritance; a cycle is reported once, at each role on it.
    let mut expanded: HashMap<String, Expanded> = HashMap::new();
    for (id, &i) in &first {
        let mut seen = vec![i];
        let mut stack = vec![i];
        let mut cyclic = false;
        while let Some(k) = stack.pop() {
            for parent in &roles[k].item.inherits {
                let Some(&p) = first.get(parent.as_str()) else {
                    continue;
                };
                if p == i {
                    cyclic = true;
                }
                if !seen.contains(&p) {
                    seen.push(p);
                    stack.push(p);
                }
            }
        }
        if cyclic {
            let role = &roles[i];
            loader.problem(
                role.doc,
                &role.path,
                Some("inherits"),
                format!("role \"{id}\" inherits itself through a cycle of `inherits`"),
            );
        }
        let mut e = Expanded::default();
        for k in seen {
            let r = &roles[k].item;
            e.roles.push(r.id.clone());
            for p in &r.permissions {
                if !e.permissions.contains(p) {
                    e.permissions.push(p.clone());
                }
            }
        }
        e.roles.sort();
        expanded.insert(id.to_string(), e);
    }
    let mut compiled = Vec::new();
    let mut binding_ids: HashMap<&str, usize> = HashMap::new();
    for (i, placed) in bindings.iter().enumerate() {
        let b = &placed.item;
        let (doc, path) = (placed.doc, &placed.path);
        if b.id.is_empty() {
            loader.problem(doc, path, Some("id"), "the binding id is empty".into());
        } else if let Some(&j) = binding_ids.get(b.id.as_str()) {
            let other = crate::config::keys::dotted(&bindings[j].path);
            loader.problem(
                doc,
                path,
                Some("id"),
                format!("binding \"{}\" is defined twice (first at {other})", b.id),
            );
        } else {
            binding_ids.insert(&b.id, i);
        }
        if b.subjects.is_empty()
            && b.groups.is_empty()
            && b.clients.is_empty()
            && b.principals.is_empty()
        {
            loader.problem(
                doc,
                path,
                Some("id"),
                format!(
                    "binding \"{}\" applies to nobody (give subjects, groups, clients or principals)",
                    b.id
                ),
            );
        }
        if b.roles.is_empty() && b.permissions.is_empty() {
            loader.problem(
                doc,
                path,
                Some("id"),
                format!(
                    "binding \"{}\" grants nothing (give roles or permissions)",
                    b.id
                ),
            );
        }
        for role in &b.roles {
            if !first.contains_key(role.as_str()) {
                loader.problem(
                    doc,
                    path,
                    Some("roles"),
                    format!("binding \"{}\" grants the unknown role \"{role}\"", b.id),
                );
            }
        }
        if let Some(r) = &b.resource
            && (r.kind.is_empty() || r.id.is_empty())
        {
            loader.problem(
                doc,
                path,
                Some("resource.type"),
                "resource: type and id must not be empty".into(),
            );
        }
        let mut roles = Vec::new();
        let mut permissions = b.permissions.clone();
        for role in &b.roles {
            if let Some(e) = expanded.get(role) {
                for r in &e.roles {
                    if !roles.contains(r) {
                        roles.push(r.clone());
                    }
                }
                for p in &e.permissions {
                    if !permissions.contains(p) {
                        permissions.push(p.clone());
                    }
                }
            }
        }
        compiled.push(Binding {
            id: b.id.clone(),
            subjects: b.subjects.clone(),
            groups: b.groups.clone(),
            clients: b.clients.clone(),
            principals: b.principals.clone(),
            resource: b.resource.as_ref().map(|r| (r.kind.clone(), r.id.clone())),
            roles,
            permissions,
        });
    }
    if !loader.problems.is_empty() {
        let mut problems = loader.problems;
        problems.sort_by_key(|(position, doc, _)| (*doc, position.unwrap_or((usize::MAX, 0))));
        return Err(problems.into_iter().map(|(_, _, p)| p).collect());
    }
    Ok(Rbac {
        roles: expanded,
        bindings: compiled,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        roles_header,
        origin,
        anonymous: Memo::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_yaml(text: &str) -> Result<Rbac, Vec<Problem>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rbac.yaml");
        std::fs::write(&path, text).expect("write");
        let result = Rbac::load(&RbacSettings {
            source: RbacSource::File(path.clone()),
            roles_header: None,
        });
        // Problems name the file by its path; the tests read them by the name alone.
        result.map_err(|problems| {
            let prefix = format!("{}", path.display());
            problems
                .into_iter()
                .map(|p| p.replacen(&prefix, "rbac.yaml", 1))
                .collect()
        })
    }

    fn user(id: &str, groups: &[&str], permissions: &[&str]) -> User {
        User::new(
            id.into(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
            permissions.iter().map(|p| (*p).to_owned()).collect(),
            "{}".into(),
        )
        .expect("user")
    }

    #[test]
    fn every_problem_with_its_position() {
        let text = "\
roles:
  - id: reader
    permissions: [orders.read]
  - id: reader
    permissions: [x]
  - id: a
    inherits: [b]
  - id: b
    inherits: [a]
  - id: c
    inherits: [ghost]
bindings:
  - id: b1
    subjects: [alice]
    roles: [nope]
  - id: b1
    groups: [g]
    permissions: [p]
  - id: nobody
    roles: [reader]
  - id: nothing
    subjects: [bob]
";
        let problems = load_yaml(text).expect_err("invalid");
        assert_eq!(
            problems,
            [
                "rbac.yaml:4:5: roles[1]: role \"reader\" is defined twice (first at roles[0])",
                "rbac.yaml:7:5: roles[2]: role \"a\" inherits itself through a cycle of `inherits`",
                "rbac.yaml:9:5: roles[3]: role \"b\" inherits itself through a cycle of `inherits`",
                "rbac.yaml:11:5: roles[4]: inherits the unknown role \"ghost\"",
                "rbac.yaml:15:5: bindings[0]: binding \"b1\" grants the unknown role \"nope\"",
                "rbac.yaml:16:5: bindings[1]: binding \"b1\" is defined twice (first at bindings[0])",
                "rbac.yaml:19:5: bindings[2]: binding \"nobody\" applies to nobody (give subjects, groups, clients or principals)",
                "rbac.yaml:21:5: bindings[3]: binding \"nothing\" grants nothing (give roles or permissions)",
            ]
        );
    }

    #[test]
    fn structure_errors_name_their_place() {
        let problems = load_yaml("roles:\n  - id: r\n    perms: [x]\n").expect_err("unknown");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("rbac.yaml:3:5: roles[0]: unknown field `perms`"),
            "{problems:?}"
        );
    }

    #[test]
    fn inheritance_scopes_and_memo() {
        let rbac = load_yaml(
            "\
roles:
  - {id: viewer, permissions: [orders.read]}
  - {id: editor, permissions: [orders.write], inherits: [viewer]}
  - {id: owner, permissions: [orders.delete], inherits: [editor]}
bindings:
  - {id: g, groups: [staff], roles: [viewer]}
  - {id: t, subjects: [alice], roles: [owner], resource: {type: tenant, id: acme}}
  - {id: k, clients: [billing], permissions: [invoices.read]}
  - {id: m, principals: ['spiffe://cluster/ns/a/sa/b'], roles: [editor]}
",
        )
        .expect("valid");
        let alice = user("alice", &["staff"], &["idp.perm"]);
        let caller = Caller {
            user: Some(&alice),
            ..Caller::default()
        };
        let acme = rbac.effective(&caller, Some(("tenant", "acme")));
        assert_eq!(acme.roles, ["editor", "owner", "viewer"]);
        assert_eq!(
            acme.permissions,
            ["idp.perm", "orders.read", "orders.delete", "orders.write"]
        );
        assert_eq!(acme.roles_header, "editor,owner,viewer");
        let other = rbac.effective(&caller, Some(("tenant", "other")));
        assert_eq!(other.roles, ["viewer"]);
        let global = rbac.effective(&caller, None);
        assert_eq!(global.bindings, ["g"]);
        // The second answer for the same resource is the memoised one.
        assert!(Arc::ptr_eq(
            &acme,
            &rbac.effective(&caller, Some(("tenant", "acme")))
        ));
        let client = rbac.effective(
            &Caller {
                client: "billing",
                ..Caller::default()
            },
            None,
        );
        assert_eq!(client.permissions, ["invoices.read"]);
        let principal = rbac.effective(
            &Caller {
                principal: "spiffe://cluster/ns/a/sa/b",
                ..Caller::default()
            },
            None,
        );
        assert_eq!(principal.roles, ["editor", "viewer"]);
        assert!(rbac.effective(&Caller::default(), None).roles.is_empty());
    }

    /// With the roles header configured, a role id must read as one item of a comma-joined
    /// header, and the header counts in the user headers' 16 KiB budget.
    #[test]
    fn the_roles_header_needs_header_safe_ids_and_fits_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rbac.yaml");
        let load = |text: &str, header: Option<&str>| {
            std::fs::write(&path, text).expect("write");
            Rbac::load(&RbacSettings {
                source: RbacSource::File(path.clone()),
                roles_header: header.map(str::to_owned),
            })
        };
        let commas = "roles:\n  - { id: 'a,b', permissions: [x] }\nbindings:\n  - { id: k, subjects: [u], roles: ['a,b'] }\n";
        assert!(load(commas, None).is_ok(), "no header, no constraint");
        let problems = load(commas, Some("x-roles")).expect_err("a comma");
        assert_eq!(
            problems,
            [format!(
                "{}:2:7: roles[0]: role \"a,b\" cannot be sent in the roles header: it holds a comma or a control character",
                path.display()
            )]
        );
        let long = "r".repeat(6000);
        let text = format!(
            "roles:\n  - {{ id: {long}a }}\n  - {{ id: {long}b }}\n  - {{ id: {long}c }}\nbindings:\n  - {{ id: k, subjects: [big], roles: [{long}a, {long}b, {long}c] }}\n  - {{ id: s, subjects: [small], roles: [{long}a] }}\n"
        );
        for (header, too_large) in [(None, false), (Some("x-roles"), true)] {
            let rbac = load(&text, header).expect("valid");
            let big = user("big", &[], &[]);
            let effective = rbac.effective(
                &Caller {
                    user: Some(&big),
                    ..Caller::default()
                },
                None,
            );
            assert_eq!(effective.roles.len(), 3);
            assert_eq!(effective.too_large, too_large, "{header:?}");
            let small = user("small", &[], &[]);
            let effective = rbac.effective(
                &Caller {
                    user: Some(&small),
                    ..Caller::default()
                },
                None,
            );
            assert!(!effective.too_large);
        }
    }

    /// The native file's inline section is placed in the file as written, also on lines where a
    /// `${VAR}` reference expanded to a value of another length before the problem.
    #[test]
    fn inline_problems_are_placed_in_the_file_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("checkpoint.yaml");
        std::fs::write(
            &path,
            r#"version: 1
rules: { inline: {} }
identity: { sources: [ { type: anonymous } ] }
rbac:
  roles:
    - { id: "${ROLE_NAME}", inherits: [ghost] }
  bindings:
    - { id: "${B}", subjects: [alice], roles: [nope] }
"#,
        )
        .expect("write");
        let vars: std::collections::HashMap<String, String> = [
            ("CHECKPOINT_CONFIG", path.display().to_string()),
            (
                "ROLE_NAME",
                "a-role-name-much-longer-than-its-reference".into(),
            ),
            ("B", "b".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let problems = crate::Config::load(&vars).expect_err("invalid").problems;
        let file = path.display();
        assert_eq!(
            problems,
            [
                format!("{file}:6:29: rbac.roles[0]: inherits the unknown role \"ghost\""),
                format!(
                    "{file}:8:40: rbac.bindings[0]: binding \"b\" grants the unknown role \"nope\""
                ),
            ]
        );
    }

    #[test]
    fn rond_collections_skip_documents_that_are_not_public() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roles = dir.path().join("roles.json");
        let bindings = dir.path().join("bindings.json");
        std::fs::write(
            &roles,
            r#"[{"_id":{"$oid":"1"},"roleId":"reader","name":"Reader","permissions":["orders.read"],"__STATE__":"PUBLIC"},
 {"roleId":"draft","permissions":["orders.delete"],"__STATE__":"DRAFT"}]"#,
        )
        .expect("write");
        std::fs::write(
            &bindings,
            r#"[{"bindingId":"b1","subjects":["alice"],"roles":["reader"],"resource":{"resourceType":"tenant","resourceId":"acme"}},
 {"bindingId":"b2","subjects":["alice"],"permissions":["orders.delete"],"__STATE__":"TRASH"}]"#,
        )
        .expect("write");
        let settings = RbacSettings {
            source: RbacSource::Rond {
                roles: roles.clone(),
                bindings: bindings.clone(),
            },
            roles_header: None,
        };
        let rbac = Rbac::load(&settings).expect("valid");
        assert_eq!(rbac.counts(), (1, 1));
        let alice = user("alice", &[], &[]);
        let caller = Caller {
            user: Some(&alice),
            ..Caller::default()
        };
        let on = rbac.effective(&caller, Some(("tenant", "acme")));
        assert_eq!(on.permissions, ["orders.read"]);
        assert!(rbac.effective(&caller, None).permissions.is_empty());
        // A binding that names a role only a draft defines is an error, placed in its file.
        std::fs::write(
            &bindings,
            "[\n {\"bindingId\":\"b1\",\"subjects\":[\"alice\"],\"roles\":[\"draft\"]}\n]",
        )
        .expect("write");
        let problems = Rbac::load(&settings).expect_err("unknown role");
        assert_eq!(
            problems,
            [format!(
                "{}:2:41: [0]: binding \"b1\" grants the unknown role \"draft\"",
                bindings.display()
            )]
        );
    }
}
