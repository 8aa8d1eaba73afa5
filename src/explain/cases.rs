//! `checkpoint test FILE...`: tables of requests and what checkpoint must answer, run against
//! the configuration the way `opa test` runs a policy's tests, so that rules go under CI.
//!
//! A file (YAML, or JSON, which is YAML) holds `cases`; each has a `name`, a `request`
//! (`method`, `path`, `headers`, or `check_request`: a CheckRequest in protobuf's JSON mapping),
//! optionally a `user` (as `explain --user`; without it the caller is resolved for real) and an
//! `expect`: the HTTP `status`, and optionally the gRPC code `grpc`, the headers `set` (upstream
//! on an allow, to the client on a deny), the headers `removed` and the `body`. The project's
//! own decision table (tests/cases/decisions.json) has the same `request` and `expect`.
//!
//! Each case is explained ([`super::Explainer::explain`]); a failed case prints what differs
//! and the explanation. A file that cannot be read as cases is an error naming its line and
//! column.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

use super::{Explainer, Explanation, Report, given_user, request_from_parts, wait_ready};
use crate::envoy;
use crate::request::Request;

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    /// As `explain --user`: `sub`, `groups`, `permissions`, other fields are properties.
    #[serde(default)]
    pub user: Option<Value>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A whole CheckRequest in protobuf's JSON mapping (as grpcurl takes it).
    #[serde(default)]
    pub check_request: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The HTTP status the client gets; 200 when the request goes upstream.
    pub status: u16,
    /// `CheckResponse.status.code`.
    #[serde(default)]
    pub grpc: Option<i32>,
    /// Headers that must be set, with these values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers that must be removed from the upstream request.
    #[serde(default)]
    pub removed: Vec<String>,
    /// The client's body: a JSON value compared as JSON, or a string compared as text.
    #[serde(default)]
    pub body: Option<Value>,
}

/// Reads a test file; errors name the file, line and column.
pub fn parse(label: &str, text: &str) -> Result<File, String> {
    serde_yaml_ng::from_str::<File>(text).map_err(|e| {
        let message = e.to_string();
        // The position is given in front, as for every configuration error.
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        match e.location() {
            Some(at) => format!("{label}:{}:{}: {message}", at.line(), at.column()),
            None => format!("{label}: {message}"),
        }
    })
}

impl Case {
    fn request(&self) -> Result<Request, String> {
        let request = &self.request;
        match (&request.check_request, &request.path) {
            (Some(_), Some(_)) => Err("request: give check_request or path, not both".into()),
            (Some(json), None) => {
                if request.method.is_some() || !request.headers.is_empty() {
                    return Err(
                        "request: method and headers go with path, not check_request".into(),
                    );
                }
                envoy::json::request_from_value(json).map_err(|e| format!("request: {e}"))
            }
            (None, Some(path)) => {
                let headers: Vec<(String, String)> = request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                request_from_parts(request.method.as_deref().unwrap_or("GET"), path, &headers)
                    .map_err(|e| format!("request: {e}"))
            }
            (None, None) => Err("request: path (or check_request) is needed".into()),
        }
    }
}

/// Every way `got` differs from `expect`; empty when the case passes.
pub fn differences(expect: &Expect, got: &Explanation) -> Vec<String> {
    let mut problems = Vec::new();
    if got.status != expect.status {
        problems.push(format!(
            "status {} ({}, {}), expected {}",
            got.status, got.decision, got.reason, expect.status
        ));
    }
    if let Some(grpc) = expect.grpc
        && grpc != got.grpc_code
    {
        problems.push(format!("gRPC code {}, expected {grpc}", got.grpc_code));
    }
    for (name, value) in &expect.set {
        let name = name.to_ascii_lowercase();
        match got.answer.set.iter().find(|(n, _)| *n == name) {
            Some((_, v)) if v == value => {}
            Some((_, v)) => problems.push(format!("header {name} is {v:?}, expected {value:?}")),
            None => problems.push(format!("header {name} is not set, expected {value:?}")),
        }
    }
    for name in &expect.removed {
        let name = name.to_ascii_lowercase();
        if !got.answer.removed.contains(&name) {
            problems.push(format!("header {name} is not removed"));
        }
    }
    if let Some(body) = &expect.body {
        let text = got.answer.body.as_deref().unwrap_or_default();
        let same = match body {
            Value::String(want) => text == want,
            want => serde_json::from_str::<Value>(text).is_ok_and(|got| &got == want),
        };
        if !same {
            problems.push(format!("body {text:?}, expected {body}"));
        }
    }
    problems
}

/// `checkpoint test FILE...`: exit 0 when every case passes, 1 when one fails, 2 when a file
/// (or the configuration) cannot be read.
pub fn test_command(files: &[&str], env: &std::collections::HashMap<String, String>) -> Report {
    if files.is_empty() {
        return Report::bad_input("test: at least one FILE is needed".into());
    }
    let mut loaded = Vec::new();
    for &file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => return Report::bad_input(format!("test: {file}: {e}")),
        };
        match parse(file, &text) {
            Ok(parsed) => loaded.push((file.to_owned(), parsed)),
            Err(e) => return Report::bad_input(format!("test: {e}")),
        }
    }
    // Users and requests are checked before anything runs: a bad case is bad input.
    let mut prepared = Vec::new();
    for (file, parsed) in &loaded {
        for (index, case) in parsed.cases.iter().enumerate() {
            let at = format!("{file}: cases[{index}] {:?}", case.name);
            let request = match case.request() {
                Ok(request) => request,
                Err(e) => return Report::bad_input(format!("test: {at}: {e}")),
            };
            let user = match &case.user {
                Some(json) => match given_user(json) {
                    Ok(user) => Some(user),
                    Err(e) => return Report::bad_input(format!("test: {at}: user: {e}")),
                },
                None => None,
            };
            prepared.push((file.as_str(), case, request, user));
        }
    }
    super::with_app(env, async move |mut explainer: Explainer| {
        if prepared.iter().any(|(_, _, _, user)| user.is_none()) {
            wait_ready(&explainer).await;
        }
        let (mut passed, mut failed) = (0, 0);
        let mut out = String::new();
        for (file, case, request, user) in prepared {
            let explanation = explainer.explain(&request, user).await;
            let problems = differences(&case.expect, &explanation);
            if problems.is_empty() {
                passed += 1;
                let _ = writeln!(out, "PASS  {file}: {}", case.name);
            } else {
                failed += 1;
                let _ = writeln!(out, "FAIL  {file}: {}", case.name);
                for problem in problems {
                    let _ = writeln!(out, "      {problem}");
                }
                for line in explanation.render().lines() {
                    let _ = writeln!(out, "      | {line}");
                }
            }
        }
        let _ = writeln!(out, "{passed} passed, {failed} failed");
        Report {
            stdout: out,
            stderr: String::new(),
            code: u8::from(failed > 0),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_file_names_line_and_column() {
        let text = "cases:\n  - name: a\n    request: { path: /x }\n    expect: { status: \"two hundred\" }\n";
        let err = parse("rules.test.yaml", text).unwrap_err();
        assert!(err.starts_with("rules.test.yaml:4:"), "{err}");
        assert!(err.contains("status"), "{err}");

        let err = parse("t.yaml", "cases:\n  - name: a\n    requets: {}\n").unwrap_err();
        assert!(err.starts_with("t.yaml:3:"), "{err}");
        assert!(err.contains("unknown field `requets`"), "{err}");

        let err = parse("t.yaml", "cases: [\n").unwrap_err();
        assert!(err.starts_with("t.yaml:"), "{err}");
    }
}
