//! The browser login redirect: whether a request that needs a login and has none is a browser
//! navigation, and the `Location` that sends it to the configured login page.
//!
//! Called by `check` only when the answer would be a 401 (no credential, or one the identity
//! source refused) and a redirect is configured; never for a 403 or a 503. Pure: reads the
//! request view and the validated settings.
//!
//! Must never take the redirect's target from the request. The `Location` is always the
//! configured login URL with one query parameter added; the request only supplies that
//! parameter's value, the original URL, percent-encoded, and only from what Envoy reports
//! (`:scheme`, `:authority`, the normalised path and the query).

use crate::config::login_redirect::LoginRedirect;
use crate::policy::{self, Facts, Verdict};
use crate::request::{Request, path};
use crate::route::Method;
use crate::rules::RuleSet;

/// Past this, the original URL is carried without its query, and past it again not at all:
/// Envoy and browsers bound the headers and URLs they take, and the login page needs only
/// enough to send the user back.
pub const MAX_ORIGINAL_URL: usize = 4096;

/// How many elements of an `Accept` list are read; a browser sends about ten.
const MAX_ACCEPT_ELEMENTS: usize = 64;

/// The request headers the redirect reads (Envoy's ext_authz `allowed_headers` must pass them).
pub const HEADERS_READ: [&str; 2] = ["accept", "sec-fetch-mode"];

/// Where to send this request, when it is a browser navigation; `None` for every other client,
/// which keeps the 401 and its JSON body.
pub fn location(settings: &LoginRedirect, request: &Request) -> Option<String> {
    if !is_navigation(request) {
        return None;
    }
    let original = original_url(settings, request);
    let mut url = settings.url.clone();
    if let Some(original) = original {
        url.query_pairs_mut()
            .append_pair(&settings.param, &original);
    }
    Some(url.into())
}

/// `check-config`'s warning when the login page's own path is behind a rule of `rules` that an
/// anonymous browser does not pass: served through this gateway, a browser sent there would be
/// sent there again. Only a warning: another gateway may serve the login page under that path.
pub fn loop_warning(settings: &LoginRedirect, rules: &RuleSet) -> Option<String> {
    let login_path = path::normalize(settings.url.path()).ok()?;
    let found = rules.table.find(&login_path, Some(Method::Get))?;
    let anonymous = Facts {
        groups: &[],
        permissions: &[],
        roles: &[],
        client_type: "",
        is_backoffice: false,
    };
    match policy::evaluate(found.rule.policy(false), false, &anonymous) {
        Verdict::Allow => None,
        Verdict::LoginRequired | Verdict::Forbidden => Some(format!(
            "login redirect: the login page's path {login_path} matches rule \"{}\" {}, which needs a login: a browser sent there through this gateway would be sent there again",
            found.path,
            found.method.as_str()
        )),
    }
}

/// A browser loading a page: `GET` or `HEAD` (a redirected `POST` would lose its body and
/// come back as a `GET`), not a script's `fetch` (`Sec-Fetch-Mode` other than `navigate`,
/// when the browser sends it), and an `Accept` that prefers HTML.
pub fn is_navigation(request: &Request) -> bool {
    if !matches!(request.method, Some(Method::Get | Method::Head)) {
        return false;
    }
    if let Some(mode) = request.header("sec-fetch-mode")
        && !mode.trim().eq_ignore_ascii_case("navigate")
    {
        return false;
    }
    request.header("accept").is_some_and(prefers_html)
}

/// Whether an `Accept` list prefers `text/html` to JSON: `text/html` is listed by name with a
/// quality above zero, at least the quality the list gives `application/json` (through its
/// most specific matching range, `*/*` included). `*/*` alone, `application/json, */*` or an
/// HTML listed below JSON are API clients.
pub fn prefers_html(accept: &str) -> bool {
    // (quality, specificity) of the best range for each type: 3 = type/subtype, 2 = type/*,
    // 1 = */*.
    let mut html: Option<f32> = None;
    let mut json: (f32, u8) = (0.0, 0);
    for element in split_list(accept).take(MAX_ACCEPT_ELEMENTS) {
        let Ok(range) = element.trim().parse::<mime::Mime>() else {
            continue;
        };
        let Some(quality) = quality(&range) else {
            continue;
        };
        let (kind, sub) = (range.type_(), range.subtype());
        if kind == "text" && sub == "html" {
            html = Some(html.map_or(quality, |q| q.max(quality)));
        }
        let specificity = match (kind.as_str(), sub.as_str()) {
            ("application", "json") => 3,
            ("application", "*") => 2,
            ("*", "*") => 1,
            _ => 0,
        };
        if specificity > json.1 || (specificity == json.1 && specificity > 0 && quality > json.0) {
            json = (quality, specificity);
        }
    }
    html.is_some_and(|html| html > 0.0 && html >= json.0)
}

/// The weight of a media range: `q` (RFC 9110: 0 to 1, at most three decimals), 1 when absent;
/// `None` for a malformed weight, whose element is then ignored.
fn quality(range: &mime::Mime) -> Option<f32> {
    let Some(q) = range.get_param("q") else {
        return Some(1.0);
    };
    let text = q.as_str();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let valid = fraction.len() <= 3
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && match whole {
            "0" => true,
            "1" => fraction.bytes().all(|b| b == b'0'),
            _ => false,
        };
    if !valid {
        return None;
    }
    text.parse().ok()
}

/// The elements of a comma-separated header list, commas inside quoted strings kept.
fn split_list(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in current.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = current.get(i + 1..);
                    return current.get(..i);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

/// The URL the user was going to: `scheme://host/path?query` when Envoy reports an http(s)
/// scheme and a host that is a plain host (and an allowed one, when a list is configured);
/// otherwise `/path?query`. The path is the normalised one (never `//host`, which a login page
/// would read as another site). `None` when even the path is too long to carry.
fn original_url(settings: &LoginRedirect, request: &Request) -> Option<String> {
    let path = request.path.as_deref().ok()?;
    let query = request
        .header(":path")
        .and_then(|target| target.split_once('?'))
        .map(|(_, query)| query.split('#').next().unwrap_or_default())
        .filter(|query| !query.is_empty());
    let origin = origin(settings, request);
    let build = |query: Option<&str>| {
        let mut url = String::with_capacity(
            origin.as_ref().map_or(0, String::len) + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        if let Some(origin) = &origin {
            url.push_str(origin);
        }
        url.push_str(path);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        url
    };
    [build(query), build(None)]
        .into_iter()
        .find(|url| url.len() <= MAX_ORIGINAL_URL)
}

/// `scheme://host` of the request, when it may be carried.
fn origin(settings: &LoginRedirect, request: &Request) -> Option<String> {
    let scheme = request.header(":scheme")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let host = request
        .header(":authority")
        .or_else(|| request.header("host"))?
        .to_ascii_lowercase();
    // Security: `Host` is the client's; it may be carried only as what it claims to be, a host
    // and a port, nothing that would change where the URL points (`evil@`, `/`, `?`, `#`).
    let parsed = reqwest::Url::parse(&format!("{scheme}://{host}/")).ok()?;
    let clean = parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !clean {
        return None;
    }
    let written = match parsed.port() {
        Some(port) => format!("{}:{port}", parsed.host_str()?),
        None => parsed.host_str()?.to_owned(),
    };
    if let Some(allowed) = &settings.allowed_hosts
        && !allowed.contains(&host)
        && !allowed.contains(&written)
    {
        return None;
    }
    Some(format!("{scheme}://{written}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::login_redirect::{Raw, validate};
    use crate::request::Headers;

    fn settings(url: &str, allowed: Option<&[&str]>) -> LoginRedirect {
        validate(&Raw {
            url: Some(url.to_owned()),
            param: None,
            allowed_hosts: allowed.map(|hosts| hosts.iter().map(|h| (*h).to_owned()).collect()),
        })
        .expect("valid")
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        let headers = Headers::from_pairs(headers.iter().copied());
        Request::finish(
            headers,
            method,
            target,
            "app.example.com",
            "https",
            "",
            String::new(),
            String::new(),
            None,
        )
    }

    const CHROME: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
    const FIREFOX: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    #[test]
    fn accept_lists_that_prefer_html() {
        for (accept, browser) in [
            (CHROME, true),
            (FIREFOX, true),
            ("text/html", true),
            ("TEXT/HTML", true),
            ("application/json, text/html", true),
            ("text/html;q=0.5, application/json;q=0.5", true),
            ("application/json;q=0.4, text/html;q=0.5", true),
            ("text/html;level=1;q=0.9, */*;q=0.8", true),
            ("text/html;q=0.9, */*;q=0.8", true),
            ("text/html;q=0.9, application/*;q=1", false),
            ("text/html;q=0.3, application/json", false),
            ("text/html;q=0.5, application/json;q=0.8, */*;q=1", false),
            ("text/html;q=0.9, application/json;q=0.1, */*", true),
            ("*/*", false),
            ("text/*", false),
            ("application/json", false),
            ("application/json, text/plain, */*", false),
            ("text/html;q=0", false),
            ("text/html;q=1.5", false),
            ("text/html;q=abc", false),
            ("text/html;q=0.1234", false),
            ("", false),
            (",,,", false),
            ("text/html \"unterminated, */*", false),
            ("application/json;x=\"a,text/html\"", false),
        ] {
            assert_eq!(prefers_html(accept), browser, "{accept:?}");
        }
    }

    #[test]
    fn only_browser_navigations_are_redirected() {
        let login = settings("https://login.example.com/web-login", None);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("GET", &[("accept", CHROME)], true),
            ("HEAD", &[("accept", FIREFOX)], true),
            (
                "GET",
                &[("accept", CHROME), ("sec-fetch-mode", "navigate")],
                true,
            ),
            (
                "GET",
                &[("accept", CHROME), ("sec-fetch-mode", "cors")],
                false,
            ),
            ("POST", &[("accept", CHROME)], false),
            ("GET", &[("accept", "application/json")], false),
            ("GET", &[], false),
        ];
        for (method, headers, redirected) in cases {
            let request = request(method, "/orders", headers);
            assert_eq!(
                location(&login, &request).is_some(),
                *redirected,
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn the_location_is_the_login_url_with_the_original_url_encoded() {
        let browser = [("accept", CHROME)];
        let at = |login: &LoginRedirect, target: &str, headers: &[(&str, &str)]| {
            let mut all = browser.to_vec();
            all.extend_from_slice(headers);
            location(login, &request("GET", target, &all)).expect("redirected")
        };
        let login = settings("https://login.example.com/web-login", None);
        assert_eq!(
            at(&login, "/orders/7?tab=items&x=a%20b", &[]),
            "https://login.example.com/web-login?redirect=https%3A%2F%2Fapp.example.com%2Forders%2F7%3Ftab%3Ditems%26x%3Da%2520b"
        );
        // A login URL with a query: appended with `&`.
        let login = settings("https://login.example.com/login?app=shop", None);
        assert_eq!(
            at(&login, "/", &[]),
            "https://login.example.com/login?app=shop&redirect=https%3A%2F%2Fapp.example.com%2F"
        );
        // The path is the normalised one: never `//host` that a login page would follow.
        let login = settings("https://login.example.com/web-login", Some(&[]));
        assert_eq!(
            at(&login, "//evil.example/%2e%2e/x", &[]),
            "https://login.example.com/web-login?redirect=%2Fx"
        );
    }

    #[test]
    fn a_forged_host_is_never_a_target_and_is_carried_only_when_allowed() {
        let browser = |host: &str| {
            let headers = [("accept", CHROME), (":authority", host)];
            Request::finish(
                Headers::from_pairs(headers),
                "GET",
                "/orders",
                "",
                "https",
                "",
                String::new(),
                String::new(),
                None,
            )
        };
        let open = settings("https://login.example.com/web-login", None);
        let listed = settings(
            "https://login.example.com/web-login",
            Some(&["app.example.com", "admin.example.com:8443"]),
        );
        for (host, open_carries, listed_carries) in [
            (
                "app.example.com",
                Some("https://app.example.com/orders"),
                Some("https://app.example.com/orders"),
            ),
            (
                "APP.example.com",
                Some("https://app.example.com/orders"),
                Some("https://app.example.com/orders"),
            ),
            (
                "admin.example.com:8443",
                Some("https://admin.example.com:8443/orders"),
                Some("https://admin.example.com:8443/orders"),
            ),
            ("evil.example", Some("https://evil.example/orders"), None),
            ("evil.example/x?", None, None),
            ("app.example.com@evil.example", None, None),
            ("evil.example#", None, None),
            ("evil.example\\x", None, None),
            ("", None, None),
        ] {
            for (login, carries) in [(&open, open_carries), (&listed, listed_carries)] {
                let sent = location(login, &browser(host)).expect("redirected");
                // Security: whatever the host, the target is the configured login page.
                assert!(
                    sent.starts_with("https://login.example.com/web-login?redirect="),
                    "{host}: {sent}"
                );
                let carried = reqwest::Url::parse(&sent)
                    .expect("a URL")
                    .query_pairs()
                    .find(|(name, _)| name == "redirect")
                    .map(|(_, value)| value.into_owned())
                    .expect("the parameter");
                assert_eq!(carried, carries.unwrap_or("/orders"), "{host}");
            }
        }
    }

    #[test]
    fn a_login_page_behind_a_private_rule_is_warned_about() {
        let rules = |text: &str| {
            RuleSet::from_source(&crate::config::RulesSource::Inline {
                label: "auth.json".into(),
                text: text.into(),
            })
            .expect("rules")
        };
        let login = settings("https://app.example.com/web-login?app=a", None);
        let private =
            rules(r#"{"/": {"ALL": {"authorization": {"expression": "true", "public": false}}}}"#);
        let warning = loop_warning(&login, &private).expect("warned");
        assert!(
            warning.contains("/web-login matches rule \"/\" ALL"),
            "{warning}"
        );
        let public = rules(
            r#"{"/": {"ALL": {"authorization": {"expression": "true", "public": false}}},
                "/web-login": {"GET": {"authorization": {"expression": "true", "public": true}}}}"#,
        );
        assert_eq!(loop_warning(&login, &public), None);
        assert_eq!(loop_warning(&login, &rules("{}")), None);
    }

    #[test]
    fn long_original_urls_lose_their_query_then_the_parameter() {
        let login = settings("https://login.example.com/web-login", None);
        let headers = [("accept", CHROME)];
        let long_query = format!("/a?{}", "q".repeat(MAX_ORIGINAL_URL));
        let short = location(&login, &request("GET", &long_query, &headers)).expect("sent");
        assert!(
            short.ends_with("redirect=https%3A%2F%2Fapp.example.com%2Fa"),
            "{short}"
        );
        let long_path = format!("/{}", "p".repeat(MAX_ORIGINAL_URL));
        let bare = location(&login, &request("GET", &long_path, &headers)).expect("sent");
        assert_eq!(bare, "https://login.example.com/web-login");
    }
}
