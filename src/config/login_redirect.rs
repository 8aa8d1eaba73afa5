//! The browser login redirect (off unless configured): where a browser that needs a login and
//! has none is sent, and which original URLs it may carry. The native file's `login_redirect`
//! section and the `CHECKPOINT_LOGIN_REDIRECT_*` variables give the same [`Raw`] settings, and
//! [`validate`] is the one check both front ends go through.
//!
//! Called by `config::env` and `config::file`; `crate::login` (the stage helper `check` calls)
//! reads the validated [`LoginRedirect`]. Must never take anything from a request: the target
//! of the redirect is the configured URL only.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// The login page (absolute http or https URL, no fragment): setting it turns the redirect on.
pub const CHECKPOINT_LOGIN_REDIRECT_URL: &str = "CHECKPOINT_LOGIN_REDIRECT_URL";
/// The query parameter of the login URL that carries the original URL.
pub const CHECKPOINT_LOGIN_REDIRECT_PARAM: &str = "CHECKPOINT_LOGIN_REDIRECT_PARAM";
pub const DEFAULT_CHECKPOINT_LOGIN_REDIRECT_PARAM: &str = "redirect";
/// Comma-separated hosts (`app.example.com`, `app.example.com:8443`) whose URLs the redirect
/// may carry whole; for any other host it carries the path only. Unset: every host.
pub const CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS: &str = "CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS";

/// Every variable this module reads.
pub const ALL: &[&str] = &[
    CHECKPOINT_LOGIN_REDIRECT_URL,
    CHECKPOINT_LOGIN_REDIRECT_PARAM,
    CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS,
];

/// The native file's `login_redirect` section: its presence turns the redirect on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRedirectSection {
    /// The login page, an absolute http or https URL without a fragment; it may have a query
    /// (the original URL is then appended with `&`).
    pub url: String,
    /// The query parameter that carries the original URL. Default `redirect`.
    pub param: Option<String>,
    /// Hosts (`app.example.com`, or with a port, `app.example.com:8443`) whose URLs are carried
    /// whole; for a request to any other host only its path and query are carried. Left out:
    /// every host. `[]`: always the path only.
    pub allowed_hosts: Option<Vec<String>>,
}

/// What either front end read, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Raw {
    pub url: Option<String>,
    pub param: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
}

impl From<&LoginRedirectSection> for Raw {
    fn from(section: &LoginRedirectSection) -> Raw {
        Raw {
            url: Some(section.url.clone()),
            param: section.param.clone(),
            allowed_hosts: section.allowed_hosts.clone(),
        }
    }
}

/// The setting a problem is about, named as each front end names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Url,
    Param,
    AllowedHosts,
}

impl Field {
    pub fn variable(self) -> &'static str {
        match self {
            Field::Url => CHECKPOINT_LOGIN_REDIRECT_URL,
            Field::Param => CHECKPOINT_LOGIN_REDIRECT_PARAM,
            Field::AllowedHosts => CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS,
        }
    }

    /// The field's key in the native file's `login_redirect` section.
    pub fn key(self) -> &'static str {
        match self {
            Field::Url => "url",
            Field::Param => "param",
            Field::AllowedHosts => "allowed_hosts",
        }
    }
}

/// The validated redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRedirect {
    /// The login page; the Location of every redirect starts with it.
    pub url: reqwest::Url,
    /// The query parameter carrying the original URL: unreserved characters only.
    pub param: String,
    /// Lower-case `host` or `host:port` entries; `None`: every host is carried.
    pub allowed_hosts: Option<Vec<String>>,
}

/// Reads the variables (the environment front end). `None` when the redirect is off and no
/// variable of it is set.
pub fn from_env(vars: &HashMap<String, String>) -> Option<Raw> {
    let get = |name: &str| {
        vars.get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let raw = Raw {
        url: get(CHECKPOINT_LOGIN_REDIRECT_URL),
        param: get(CHECKPOINT_LOGIN_REDIRECT_PARAM),
        allowed_hosts: get(CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS).map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect()
        }),
    };
    (raw != Raw::default()).then_some(raw)
}

/// The one validator: every problem at once, each with the setting it is about.
pub fn validate(raw: &Raw) -> Result<LoginRedirect, Vec<(Field, String)>> {
    // Listed in the order of the section's fields.
    let mut problems = Vec::new();
    let param = raw
        .param
        .clone()
        .unwrap_or_else(|| DEFAULT_CHECKPOINT_LOGIN_REDIRECT_PARAM.to_owned());
    let param_problem = (param.is_empty()
        || !param
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)))
    .then(|| {
        (
            Field::Param,
            format!("\"{param}\" is not a query parameter name (letters, digits, `-._~`)"),
        )
    });
    let url = match raw.url.as_deref() {
        None => {
            problems.push((
                Field::Url,
                "is required when the login redirect is configured".to_owned(),
            ));
            None
        }
        Some(text) => match login_url(text, &param) {
            Ok(url) => Some(url),
            Err(message) => {
                problems.push((Field::Url, message));
                None
            }
        },
    };
    problems.extend(param_problem);
    let allowed_hosts = raw.allowed_hosts.as_ref().map(|hosts| {
        let mut kept = Vec::new();
        for host in hosts {
            match allowed_host(host) {
                Ok(host) if !kept.contains(&host) => kept.push(host),
                Ok(_) => {}
                Err(message) => problems.push((Field::AllowedHosts, message)),
            }
        }
        kept
    });
    match url {
        Some(url) if problems.is_empty() => Ok(LoginRedirect {
            url,
            param,
            allowed_hosts,
        }),
        _ => Err(problems),
    }
}

/// The login URL: absolute http(s) with a host, no fragment (the original URL goes into the
/// query, which a fragment would follow), no credentials, not already carrying `param`.
fn login_url(text: &str, param: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!("\"{text}\" is not an absolute http or https URL"));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "\"{text}\" has a fragment: the original URL is added to the query, which comes before it"
        ));
    }
    // Security: the Location goes to browsers as it is written.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("\"{text}\" carries credentials"));
    }
    if url.query_pairs().any(|(name, _)| name == param) {
        return Err(format!(
            "\"{text}\" already has a `{param}` query parameter, which carries the original URL"
        ));
    }
    Ok(url)
}

/// An allowed host: `name` or `name:port`, as a request's `Host` would carry it; lower-cased.
fn allowed_host(text: &str) -> Result<String, String> {
    let host = text.trim().to_ascii_lowercase();
    let refused =
        || format!("\"{text}\" is not a host name such as app.example.com or app.example.com:8443");
    if host.is_empty() || host.contains(['/', '?', '#', '@', '\\', ' ']) {
        return Err(refused());
    }
    let url = reqwest::Url::parse(&format!("http://{host}/")).map_err(|_| refused())?;
    // The URL parser must read back exactly what was written, or the entry would not match the
    // `Host` it is meant for (an IDN, a default port the parser drops).
    let read = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    if read != host {
        return Err(refused());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> Raw {
        Raw {
            url: Some(url.to_owned()),
            ..Raw::default()
        }
    }

    #[test]
    fn a_login_url_with_defaults() {
        let valid = validate(&raw("https://login.example.com/web-login")).expect("valid");
        assert_eq!(valid.url.as_str(), "https://login.example.com/web-login");
        assert_eq!(valid.param, "redirect");
        assert_eq!(valid.allowed_hosts, None);
        let valid = validate(&Raw {
            url: Some("http://127.0.0.1:8080/login?app=shop".into()),
            param: Some("return_to".into()),
            allowed_hosts: Some(vec![
                "App.Example.com".into(),
                "app.example.com:8443".into(),
            ]),
        })
        .expect("valid");
        assert_eq!(valid.param, "return_to");
        assert_eq!(
            valid.allowed_hosts,
            Some(vec![
                "app.example.com".to_owned(),
                "app.example.com:8443".to_owned()
            ])
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        for (bad, says) in [
            ("/web-login", "is not a URL"),
            (
                "ftp://login.example.com/",
                "not an absolute http or https URL",
            ),
            ("https://login.example.com/#top", "has a fragment"),
            ("https://login.example.com/#", "has a fragment"),
            ("https://user:pw@login.example.com/", "carries credentials"),
            (
                "https://login.example.com/?redirect=/x",
                "already has a `redirect` query parameter",
            ),
        ] {
            let problems = validate(&raw(bad)).expect_err(bad);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].0, Field::Url, "{bad}");
            assert!(problems[0].1.contains(says), "{bad}: {problems:?}");
        }
        let problems = validate(&Raw {
            url: None,
            param: Some("re direct".into()),
            allowed_hosts: Some(vec![
                "good.example".into(),
                "evil.example/path".into(),
                "a@b".into(),
                "".into(),
                "host:99999".into(),
            ]),
        })
        .expect_err("invalid");
        let fields: Vec<Field> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                Field::Url,
                Field::Param,
                Field::AllowedHosts,
                Field::AllowedHosts,
                Field::AllowedHosts,
                Field::AllowedHosts
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn the_environment_turns_it_on_with_any_of_its_variables() {
        let vars = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(from_env(&vars(&[])), None);
        assert_eq!(
            from_env(&vars(&[(CHECKPOINT_LOGIN_REDIRECT_URL, " ")])),
            None
        );
        let raw = from_env(&vars(&[(CHECKPOINT_LOGIN_REDIRECT_PARAM, "next")])).expect("set");
        let problems = validate(&raw).expect_err("no url");
        assert_eq!(problems[0].0.variable(), CHECKPOINT_LOGIN_REDIRECT_URL);
        let raw = from_env(&vars(&[
            (CHECKPOINT_LOGIN_REDIRECT_URL, "https://login.example/"),
            (
                CHECKPOINT_LOGIN_REDIRECT_ALLOWED_HOSTS,
                "a.example, b.example:8443,",
            ),
        ]))
        .expect("set");
        let valid = validate(&raw).expect("valid");
        assert_eq!(
            valid.allowed_hosts,
            Some(vec!["a.example".to_owned(), "b.example:8443".to_owned()])
        );
    }
}
