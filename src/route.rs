//! Stage 1, route: find the rule that governs a request.
//!
//! The rule loader builds a [`RouteTable`] once, at start-up, from the keys and methods of the
//! rule file. For every `Check` the request stage normalises the path
//! ([`crate::request::path::normalize`]) and the pipeline then calls [`RouteTable::find`] with
//! that path and the parsed [`Method`]. The table is generic over the rule, so this stage knows
//! nothing of policy.
//!
//! It must never match a path it was not given normalised, never fall back to a shorter key when
//! the longest matching key lacks the method (that would let a rule for `/` silently govern
//! `/admin`), and never allocate or panic on the request path.

use std::collections::HashMap;
use std::fmt;

use rustc_hash::FxBuildHasher;

/// An HTTP method a request may carry and a rule may govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

impl Method {
    const ALL: [Method; 7] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Head,
        Method::Options,
    ];

    /// Parses the method of a request, exactly as sent.
    ///
    /// Methods are case-sensitive (RFC 9110 section 9.1): `get` is not `GET`. Anything unknown
    /// (`TRACE`, `CONNECT`, extension methods) is `None`, and no rule ever matches it.
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The method as it is spelled on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The methods a rule file may name under a path key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKey {
    Exact(Method),
    /// Every [`Method`], `OPTIONS` included.
    All,
}

impl MethodKey {
    /// Parses a method key of the rule file: `GET POST PUT PATCH DELETE HEAD` or `ALL`.
    ///
    /// `OPTIONS` cannot be named on its own, as in Mia-Platform's rule file: it is only reached
    /// through `ALL`. Lower-case spellings are refused rather than silently accepted.
    pub fn parse(s: &str) -> Option<MethodKey> {
        match s {
            "ALL" => Some(MethodKey::All),
            "OPTIONS" => None,
            s => Method::parse(s).map(MethodKey::Exact),
        }
    }

    /// The key as it is spelled in the rule file.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKey::Exact(method) => method.as_str(),
            MethodKey::All => "ALL",
        }
    }

    /// The slot of this key in [`Entry::rules`].
    fn slot(self) -> usize {
        match self {
            MethodKey::Exact(method) => method as usize,
            MethodKey::All => SLOT_ALL,
        }
    }

    fn from_slot(slot: usize) -> MethodKey {
        Method::ALL
            .get(slot)
            .map_or(MethodKey::All, |&m| MethodKey::Exact(m))
    }
}

impl fmt::Display for MethodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slot per [`Method`], then one for `ALL`.
const SLOTS: usize = Method::ALL.len() + 1;
const SLOT_ALL: usize = Method::ALL.len();

/// The same (path, method key) pair was inserted twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route \"{path}\" {method}: defined twice")]
pub struct DuplicateRoute {
    pub path: String,
    pub method: MethodKey,
}

/// The rules of the rule file, indexed by path key and method key.
#[derive(Debug)]
pub struct RouteTable<T> {
    /// Path key -> index in `entries`. Looked up by `&str`, so `find` never allocates. Template
    /// keys are indexed by their [`Template::canonical`] form, so that `/t/{a}` and `/t/{b}`
    /// are the same key. Hashed with Fx, not SipHash: only the rule file inserts keys, so a
    /// request path cannot lengthen a probe sequence, and a path's hash is a few instructions
    /// instead of a SipHash.
    index: HashMap<Box<str>, usize, FxBuildHasher>,
    /// Indices in `entries` of the keys with `{name}` segments; empty for a rule file without
    /// templates, and then `find` is exactly the literal lookup.
    templates: Vec<usize>,
    /// In insertion order, so that `iter` is deterministic.
    entries: Vec<Entry<T>>,
    /// Number of (path, method key) rules.
    len: usize,
}

#[derive(Debug)]
struct Entry<T> {
    path: Box<str>,
    /// The segments of a template key; `None` for a literal key.
    template: Option<Template>,
    /// For each non-empty segment of the key, whether it is literal ([`kinds`]): what keys are
    /// ranked by, computed once.
    rank: Box<[bool]>,
    /// Indexed by [`MethodKey::slot`]; a fixed array because there are only eight keys.
    rules: [Option<T>; SLOTS],
}

/// The rule that governs a request, with the key it was found under (for logs and spans).
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a, T> {
    /// The matched path key, as written in the rule file.
    pub path: &'a str,
    pub method: MethodKey,
    pub rule: &'a T,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            index: HashMap::default(),
            templates: Vec::new(),
            entries: Vec::new(),
            len: 0,
        }
    }
}

impl<T> RouteTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the rule for `path` and `method`. `path` must already be normalised
    /// ([`crate::request::path::normalize`]), or no request will ever reach it.
    ///
    /// # Errors
    ///
    /// [`DuplicateRoute`] when the pair is already present; the rule inserted first is kept.
    ///
    /// A key with braces is a template ([`Template::parse`]); the rule loader reports a
    /// malformed one before inserting it, and here it is taken literally.
    pub fn insert(&mut self, path: &str, method: MethodKey, rule: T) -> Result<(), DuplicateRoute> {
        let template = Template::parse(path).ok().flatten();
        let index_key = template
            .as_ref()
            .map_or_else(|| path.to_owned(), Template::canonical);
        let entry = match self.index.get(index_key.as_str()) {
            Some(&i) => &mut self.entries[i],
            None => {
                self.index.insert(index_key.into(), self.entries.len());
                if template.is_some() {
                    self.templates.push(self.entries.len());
                }
                let rank = kinds(path, template.as_ref()).collect();
                self.entries.push(Entry {
                    path: path.into(),
                    template,
                    rank,
                    rules: std::array::from_fn(|_| None),
                });
                let last = self.entries.len() - 1;
                &mut self.entries[last]
            }
        };
        let slot = &mut entry.rules[method.slot()];
        if slot.is_some() {
            return Err(DuplicateRoute {
                path: path.to_owned(),
                method,
            });
        }
        *slot = Some(rule);
        self.len += 1;
        Ok(())
    }

    /// Finds the rule for a normalised request path and its method (`None` when
    /// [`Method::parse`] refused it).
    ///
    /// The longest key that the path equals or continues at a segment boundary wins; on it an
    /// exact method beats `ALL`. If that key has neither, there is no rule.
    pub fn find(&self, path: &str, method: Option<Method>) -> Option<Found<'_, T>> {
        // Security: an unknown method (TRACE, CONNECT, `get`) is never covered by `ALL`.
        let method = method?;
        let entry = self.best_key(path)?;
        // Security: no fallback to a shorter key when the longest one lacks the method.
        [MethodKey::Exact(method), MethodKey::All]
            .into_iter()
            .find_map(|key| {
                let rule = entry.rules.get(key.slot())?.as_ref()?;
                Some(Found {
                    path: &entry.path,
                    method: key,
                    rule,
                })
            })
    }

    /// The entry of the key that governs `path`: the longest literal key, unless a template key
    /// that matches ranks above it ([`outranks`]).
    fn best_key(&self, path: &str) -> Option<&Entry<T>> {
        if self.templates.is_empty() {
            return self.longest_key(path, 0);
        }
        let mut template: Option<&Entry<T>> = None;
        for &i in &self.templates {
            let Some(entry) = self.entries.get(i) else {
                continue;
            };
            if !entry.template.as_ref().is_some_and(|t| t.matches(path)) {
                continue;
            }
            if template.is_none_or(|current| outranks(entry, current)) {
                template = Some(entry);
            }
        }
        // A literal key outranks a template with as many segments (a template has a variable
        // somewhere, the literal key none) and loses to one with more: only the literal keys
        // with at least the template's segments are looked up.
        let fewest = template.map_or(0, |t| t.rank.len());
        self.longest_key(path, fewest).or(template)
    }

    /// The entry of the longest key that `path` equals or continues at a segment boundary, if
    /// it has at least `fewest` non-empty segments.
    fn longest_key(&self, path: &str, fewest: usize) -> Option<&Entry<T>> {
        // A normalised path has no empty segment but a trailing one: every `/` of a prefix
        // without its trailing slash starts one segment.
        let mut slashes = if fewest == 0 {
            usize::MAX
        } else {
            let slashes = path.bytes().filter(|&b| b == b'/').count();
            if slashes - usize::from(path.ends_with('/')) < fewest {
                return None;
            }
            slashes
        };
        if let Some(entry) = self.entry(path) {
            return Some(entry);
        }
        // Candidates from longest to shortest: at each `/` from the right, the prefix with the
        // slash (key `/foo/` matches `/foo/x`) then without it (key `/foo` matches `/foo/x`, and
        // never `/foo-bar`, which has no `/` after `/foo`).
        let mut rest = path;
        while let Some(slash) = rest.rfind('/') {
            // Segments of the prefix before this slash: the slashes left of it.
            slashes = slashes.saturating_sub(1);
            if slashes < fewest {
                return None;
            }
            let with_slash = path.get(..=slash)?;
            // Equal to `path` only when the path ends with `/`: already looked up.
            if with_slash.len() < path.len()
                && let Some(entry) = self.entry(with_slash)
            {
                return Some(entry);
            }
            rest = path.get(..slash)?;
            if !rest.is_empty()
                && let Some(entry) = self.entry(rest)
            {
                return Some(entry);
            }
        }
        None
    }

    /// The entry of the key `key`. Out of line: [`RouteTable::longest_key`] looks up to three
    /// candidates per segment, and one copy of the lookup is less code for a Check to walk.
    #[inline(never)]
    fn entry(&self, key: &str) -> Option<&Entry<T>> {
        self.index.get(key).and_then(|&i| self.entries.get(i))
    }

    /// Every key that `path` equals or continues at a segment boundary, longest first, each
    /// with all its rules: what `checkpoint explain` shows beside the rule [`RouteTable::find`]
    /// chose (the keys it beat, and the shorter keys it never falls back to). Not on the
    /// request path: it allocates.
    pub fn matching(&self, path: &str) -> Vec<(&str, Vec<(MethodKey, &T)>)> {
        let mut keys = Vec::new();
        each_key_candidate(path, |key| {
            if let Some(entry) = self.entry(key) {
                let rules = entry
                    .rules
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, rule)| Some((MethodKey::from_slot(slot), rule.as_ref()?)))
                    .collect();
                keys.push((&*entry.path, rules));
            }
            true
        });
        let mut keys: Vec<_> = keys
            .into_iter()
            .filter_map(|(key, rules)| {
                // A literal key spelled like a template's canonical form is not a match.
                let entry = self.entry(key)?;
                entry.template.is_none().then_some((entry, rules))
            })
            .collect();
        for &i in &self.templates {
            if let Some(entry) = self.entries.get(i)
                && entry.template.as_ref().is_some_and(|t| t.matches(path))
            {
                let rules = entry
                    .rules
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, rule)| Some((MethodKey::from_slot(slot), rule.as_ref()?)))
                    .collect();
                keys.push((entry, rules));
            }
        }
        // Literal keys come longest first; a stable sort by rank keeps that order among them.
        keys.sort_by_cached_key(|(entry, _)| {
            std::cmp::Reverse((entry.rank.len(), entry.rank.clone()))
        });
        keys.into_iter()
            .map(|(entry, rules)| (&*entry.path, rules))
            .collect()
    }

    /// Number of (path, method key) rules.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every rule, by path key in insertion order, then by method key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, MethodKey, &T)> {
        self.entries.iter().flat_map(|entry| {
            entry.rules.iter().enumerate().filter_map(|(slot, rule)| {
                rule.as_ref()
                    .map(|rule| (&*entry.path, MethodKey::from_slot(slot), rule))
            })
        })
    }
}

/// One segment of a template key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `{name}`: exactly one non-empty path segment.
    Variable(Box<str>),
}

/// A rule key with `{name}` segments (`/tenants/{tenant}/orders`). It matches a normalised path
/// whose segments it equals one for one (a variable: any non-empty segment), the path going on
/// or not after them, as a literal key does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Box<[Segment]>,
    /// The key ends with `/`: the path must go on after the segments (as key `/docs/`).
    trailing_slash: bool,
}

impl Template {
    /// Parses a normalised key: `Ok(None)` when it has no braces (a literal key), the
    /// template otherwise.
    ///
    /// # Errors
    ///
    /// A message for a malformed template: a lone brace, `{}`, a variable that is not a
    /// whole segment (`{a}b`), a name other than letters, digits, `_` and `-`, or a name
    /// declared twice.
    pub fn parse(key: &str) -> Result<Option<Template>, String> {
        if !key.contains(['{', '}']) {
            return Ok(None);
        }
        let body = key.strip_prefix('/').unwrap_or(key);
        let trailing_slash = body.ends_with('/');
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        for segment in body.split('/') {
            if !segment.contains(['{', '}']) {
                segments.push(Segment::Literal(segment.into()));
                continue;
            }
            let name = segment
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|name| !name.contains(['{', '}']));
            let Some(name) = name else {
                return Err(format!(
                    "path template segment \"{segment}\": a variable is a whole segment, written {{name}}"
                ));
            };
            if name.is_empty() {
                return Err(format!(
                    "path template segment \"{segment}\": the variable has no name"
                ));
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "path template variable \"{name}\": use letters, digits, \"_\" and \"-\""
                ));
            }
            if segments
                .iter()
                .any(|s| matches!(s, Segment::Variable(v) if &**v == name))
            {
                return Err(format!(
                    "path template variable \"{name}\" is declared twice"
                ));
            }
            segments.push(Segment::Variable(name.into()));
        }
        Ok(Some(Template {
            segments: segments.into(),
            trailing_slash,
        }))
    }

    /// The key with every variable name left out: two keys that differ only in their variables'
    /// names are the same key. A nul byte marks a variable, so no normalised request path
    /// (which never holds one) can look a template up as a literal key.
    fn canonical(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Variable(_) => out.push('\0'),
            }
        }
        if self.trailing_slash || out.is_empty() {
            out.push('/');
        }
        out
    }

    /// Whether a normalised path equals or continues this key at a segment boundary.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match segment {
                Segment::Literal(text) => **text == *part,
                Segment::Variable(_) => !part.is_empty(),
            };
            if !ok {
                return false;
            }
        }
        !self.trailing_slash || parts.next().is_some()
    }

    /// The position of variable `name` among the segments (0 for the first after `/`).
    pub fn variable(&self, name: &str) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| matches!(s, Segment::Variable(v) if &**v == name))
    }
}

/// Segment `index` of a normalised path (0 for the first after `/`), borrowed.
pub fn segment(path: &str, index: usize) -> Option<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').nth(index)
}

/// For each non-empty segment of the key, whether it is literal: what keys are ranked by.
fn kinds<'a>(path: &'a str, template: Option<&'a Template>) -> impl Iterator<Item = bool> + 'a {
    let literal = template
        .is_none()
        .then(|| path.split('/').filter(|s| !s.is_empty()).map(|_| true));
    let template = template.map(|t| {
        t.segments
            .iter()
            .filter(|s| !matches!(s, Segment::Literal(text) if text.is_empty()))
            .map(|s| matches!(s, Segment::Literal(_)))
    });
    literal
        .into_iter()
        .flatten()
        .chain(template.into_iter().flatten())
}

/// Whether key `a` governs a path both match rather than `b`: more segments wins; at the same
/// number, at the first position where they differ a literal segment beats a variable.
fn outranks<T>(a: &Entry<T>, b: &Entry<T>) -> bool {
    // Lexicographic on the kinds, `true` (literal) above `false` (variable).
    (a.rank.len(), &*a.rank) > (b.rank.len(), &*b.rank)
}

/// Calls `visit` with every key `path` may match, from longest to shortest, until it returns
/// false. The same walk as `RouteTable::longest_key`, which keeps its own loop on the request
/// path (measured: the closure made exact lookups slower); `check_case` holds the two equal. The
/// keys: the path itself, then at each `/` from the right the prefix with the slash (key `/foo/`
/// matches `/foo/x`) and without it (key `/foo` matches `/foo/x`, and never `/foo-bar`, which has
/// no `/` after `/foo`).
fn each_key_candidate<'p>(path: &'p str, mut visit: impl FnMut(&'p str) -> bool) {
    if !visit(path) {
        return;
    }
    let mut rest = path;
    while let Some(slash) = rest.rfind('/') {
        let Some(with_slash) = path.get(..=slash) else {
            return;
        };
        // Equal to `path` only when the path ends with `/`: already visited.
        if with_slash.len() < path.len() && !visit(with_slash) {
            return;
        }
        let Some(without) = path.get(..slash) else {
            return;
        };
        rest = without;
        if !rest.is_empty() && !visit(rest) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::path::normalize;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cases {
        rules: Vec<(String, String)>,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        path: String,
        method: String,
        expect: Option<(String, String)>,
    }

    #[test]
    fn check_case() {
        let data: Cases =
            serde_json::from_str(include_str!("../tests/cases/routes.json")).expect("routes.json");
        assert!(data.cases.len() >= 30, "only {} cases", data.cases.len());
        let mut table = RouteTable::new();
        for (path, method) in &data.rules {
            let key = MethodKey::parse(method).expect("method key of a rule");
            // The rule is its own description, so a match can be checked against the data.
            table
                .insert(path, key, (path.clone(), method.clone()))
                .expect("no duplicate rules");
        }
        assert_eq!(table.len(), data.rules.len());
        let mut failures = Vec::new();
        for case in &data.cases {
            let found = table.find(&case.path, Method::parse(&case.method));
            // `matching` lists the key `find` chose first.
            if let Some(found) = &found {
                let matching = table.matching(&case.path);
                assert_eq!(
                    matching.first().map(|m| m.0),
                    Some(found.path),
                    "{}",
                    case.path
                );
            }
            let got = found.map(|f| {
                assert_eq!((f.path, f.method.as_str()), (&*f.rule.0, &*f.rule.1));
                f.rule.clone()
            });
            if got != case.expect {
                failures.push(format!(
                    "{} {}: got {got:?}, want {:?}",
                    case.method, case.path, case.expect
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The same checks as `check_case`, on a table with template keys (`{name}` segments).
    #[test]
    fn template_case() {
        let data: Cases = serde_json::from_str(include_str!("../tests/cases/route-templates.json"))
            .expect("route-templates.json");
        let mut table = RouteTable::new();
        for (path, method) in &data.rules {
            let key = MethodKey::parse(method).expect("method key of a rule");
            table
                .insert(path, key, (path.clone(), method.clone()))
                .expect("no duplicate rules");
        }
        let mut failures = Vec::new();
        for case in &data.cases {
            let found = table.find(&case.path, Method::parse(&case.method));
            let matching = table.matching(&case.path);
            if let Some(found) = &found {
                assert_eq!(
                    matching.first().map(|m| m.0),
                    Some(found.path),
                    "{}",
                    case.path
                );
            }
            let got = found.map(|f| f.rule.clone());
            if got != case.expect {
                failures.push(format!(
                    "{} {}: got {got:?}, want {:?}",
                    case.method, case.path, case.expect
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn malformed_templates_and_same_shaped_keys() {
        for (key, want) in [
            ("/a/{", "a variable is a whole segment"),
            ("/a/}", "a variable is a whole segment"),
            ("/a/{}", "the variable has no name"),
            ("/a/{a}b", "a variable is a whole segment"),
            ("/a/x{a}", "a variable is a whole segment"),
            ("/a/{{a}}", "a variable is a whole segment"),
            ("/a/{a.b}", "use letters, digits"),
            ("/{a}/x/{a}", "declared twice"),
        ] {
            let err = Template::parse(key).expect_err(key);
            assert!(err.contains(want), "{key}: {err}");
        }
        assert_eq!(Template::parse("/plain/key"), Ok(None));
        let t = Template::parse("/t/{tenant}/o/{order}")
            .expect("valid")
            .expect("a template");
        assert_eq!(t.variable("tenant"), Some(1));
        assert_eq!(t.variable("order"), Some(3));
        assert_eq!(segment("/t/acme/o/7/x", 3), Some("7"));
        let mut table = RouteTable::new();
        table.insert("/t/{a}", MethodKey::All, 1).expect("first");
        let err = table.insert("/t/{b}", MethodKey::All, 2).unwrap_err();
        assert_eq!(err.path, "/t/{b}");
        // A literal request path spelled like the key is a value of the variable, nothing more.
        let found = table.find("/t/{b}", Some(Method::Get)).expect("found");
        assert_eq!((found.path, *found.rule), ("/t/{a}", 1));
    }

    #[test]
    fn duplicate_insert_errors() {
        let mut table = RouteTable::new();
        table.insert("/users", MethodKey::All, 1).expect("first");
        table
            .insert("/users", MethodKey::Exact(Method::Get), 2)
            .expect("another method on the same key");
        let err = table.insert("/users", MethodKey::All, 3).unwrap_err();
        assert_eq!(
            err,
            DuplicateRoute {
                path: "/users".into(),
                method: MethodKey::All
            }
        );
        assert_eq!(err.to_string(), "route \"/users\" ALL: defined twice");
        // The first rule is kept.
        let found = table.find("/users", Some(Method::Post)).expect("found");
        assert_eq!(*found.rule, 1);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn iter_lists_every_rule() {
        let mut table = RouteTable::new();
        assert!(table.is_empty());
        table.insert("/b", MethodKey::All, 1).expect("insert");
        table
            .insert("/a", MethodKey::Exact(Method::Head), 2)
            .expect("insert");
        table
            .insert("/b", MethodKey::Exact(Method::Get), 3)
            .expect("insert");
        let rules: Vec<_> = table.iter().collect();
        assert_eq!(
            rules,
            [
                ("/b", MethodKey::Exact(Method::Get), &3),
                ("/b", MethodKey::All, &1),
                ("/a", MethodKey::Exact(Method::Head), &2),
            ]
        );
        assert_eq!(table.len(), 3);
        assert!(!table.is_empty());
    }

    #[test]
    fn method_parsing() {
        for (s, method, key) in [
            (
                "GET",
                Some(Method::Get),
                Some(MethodKey::Exact(Method::Get)),
            ),
            (
                "POST",
                Some(Method::Post),
                Some(MethodKey::Exact(Method::Post)),
            ),
            (
                "PUT",
                Some(Method::Put),
                Some(MethodKey::Exact(Method::Put)),
            ),
            (
                "PATCH",
                Some(Method::Patch),
                Some(MethodKey::Exact(Method::Patch)),
            ),
            (
                "DELETE",
                Some(Method::Delete),
                Some(MethodKey::Exact(Method::Delete)),
            ),
            (
                "HEAD",
                Some(Method::Head),
                Some(MethodKey::Exact(Method::Head)),
            ),
            ("OPTIONS", Some(Method::Options), None),
            ("ALL", None, Some(MethodKey::All)),
            ("get", None, None),
            ("All", None, None),
            ("TRACE", None, None),
            ("CONNECT", None, None),
            ("", None, None),
        ] {
            assert_eq!(Method::parse(s), method, "Method::parse({s:?})");
            assert_eq!(MethodKey::parse(s), key, "MethodKey::parse({s:?})");
        }
    }

    /// Security: however `/admin` is spelled, it is never governed by the `/public` rule.
    #[test]
    fn tricky_spellings_of_admin_never_reach_public() {
        #[derive(Debug, PartialEq)]
        enum Rule {
            Permissive,
            Strict,
        }
        let mut table = RouteTable::new();
        table
            .insert("/public", MethodKey::All, Rule::Permissive)
            .expect("insert");
        table
            .insert("/admin", MethodKey::All, Rule::Strict)
            .expect("insert");

        let spellings = [
            "/admin",
            "/admin/",
            "/admin?x=/public",
            "/public/../admin",
            "/public/../admin/",
            "/public/./../admin",
            "/public/x/../../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/%2e./admin",
            "/public/%2e%2e%2fadmin",
            "/public/..%2Fadmin",
            "/public/..%5cadmin",
            "/public/..\\admin",
            "/public\\..\\admin",
            "/public/..;/admin",
            "/public;/../admin",
            "/public/%2e%2e;/admin",
            "/public/..%00/admin",
            "/public/..%zz/admin",
            "/public/..\u{0}/admin",
            "/public/..\t/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/../admin",
            "/%61dmin",
            "/%61%64%6d%69%6e",
            "/public/../../../admin",
            "/public//../admin",
            "http://host/public/../admin",
        ];
        for spelling in spellings {
            // Refusing the spelling is safe; accepting it must lead to the /admin rule.
            if let Ok(path) = normalize(spelling) {
                let found = table
                    .find(&path, Some(Method::Get))
                    .map(|f| (f.path, f.rule));
                assert_eq!(
                    found,
                    Some(("/admin", &Rule::Strict)),
                    "{spelling:?} normalised to {path:?}"
                );
            }
        }
    }
}
