//! The properties every parser of outside input keeps, each as a function of arbitrary input that
//! panics when a property breaks. Two drivers feed them:
//!
//! - the property tests below (`proptest`, in the test command): generated and mutated inputs,
//!   seeded from the project's test tables, a bounded number of cases each;
//! - the coverage-guided targets of `fuzz/` (cargo-fuzz, a nightly toolchain), for machines that
//!   can run them for hours.
//!
//! Compiled only for tests and for fuzzing builds (cargo-fuzz sets `--cfg fuzzing`). A crash any
//! of them finds becomes a case in the table of the parser it broke.
// A broken property must stop the fuzzer or the test loudly: panicking is this module's job.
#![allow(clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::config::UserInfoSettings;
use crate::identity::jwks::KeySet;
use crate::identity::jwt::{self, Policy};
use crate::identity::userinfo::UserInfo;
use crate::identity::{Resolution, User};
use crate::policy::{Expression, Facts};
use crate::request::Request;
use crate::request::path;
use crate::rules::RuleSet;

/// `request::path::normalize`: never panics; a normalised path starts with `/`, has no empty or
/// dot segment, none of the refused characters, only well-formed upper-case escapes of reserved
/// bytes (never `%2F`, `%5C`, `%00`, never an unreserved byte), and normalising it again changes
/// nothing.
pub fn path(raw: &str) {
    let Ok(normal) = path::normalize(raw) else {
        return;
    };
    assert!(normal.starts_with('/'), "{raw:?} -> {normal:?}");
    let segments: Vec<&str> = normal.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            !segment.is_empty() || last,
            "{raw:?} -> {normal:?}: empty segment"
        );
        assert!(
            *segment != "." && *segment != "..",
            "{raw:?} -> {normal:?}: dot segment"
        );
    }
    assert!(
        !normal
            .chars()
            .any(|c| c == '\\' || c == ';' || c == '?' || c == '#' || c.is_control()),
        "{raw:?} -> {normal:?}: refused character"
    );
    let bytes = normal.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'%' {
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
            "{raw:?} -> {normal:?}: escape at {i}"
        );
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or_default();
        let refused = matches!(value, b'/' | b'\\' | 0);
        let unreserved =
            value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~');
        assert!(
            !refused && !unreserved,
            "{raw:?} -> {normal:?}: %{value:02X} must be refused or decoded"
        );
    }
    assert_eq!(
        path::normalize(&normal).as_ref(),
        Ok(&normal),
        "{raw:?}: not a fixed point"
    );
}

/// `policy::Expression::compile`: never panics; an error names a column inside the text (or
/// just past it); a compiled expression evaluates without panicking on any facts, its source is
/// the text it was compiled from, and printing its tree and compiling that gives the same tree
/// (unless the printed form nests past the depth limit, which parentheses the source did not
/// need can cause, or is longer than the length limit: the printer writes every membership in
/// its list form, `["a"] in groups` for `groups.a`).
pub fn expression(source: &str) {
    match Expression::compile(source) {
        Ok(expression) => {
            assert_eq!(expression.source(), source);
            let printed = expression.reprint();
            match Expression::compile(&printed) {
                Ok(again) => assert!(
                    expression.same_tree(&again),
                    "{source:?} printed as {printed:?} compiles to another tree"
                ),
                Err(e) => assert!(
                    e.message.contains("nests deeper")
                        || (e.message.contains("longer than")
                            && printed.chars().count() > source.chars().count()),
                    "{source:?} printed as {printed:?} does not compile: {e}"
                ),
            }
            let groups = ["admin".to_owned(), "users".to_owned()];
            let permissions = ["orders.read".to_owned()];
            for facts in [
                Facts::default(),
                Facts {
                    groups: &groups,
                    permissions: &permissions,
                    roles: &groups,
                    client_type: "mobile",
                    is_backoffice: true,
                },
            ] {
                let _ = expression.evaluate(&facts);
            }
        }
        Err(error) => {
            let column = error.column;
            assert!(
                (1..=source.chars().count() + 1).contains(&column),
                "{source:?}: column {column} of {}",
                source.chars().count()
            );
        }
    }
}

/// `auth.json` (`RuleSet::parse`): never panics, and every problem is either under a rule (path
/// and method keys) or has a line and column.
pub fn rule_file(text: &str) {
    if let Err(errors) = RuleSet::parse("fuzz.json", text) {
        assert!(!errors.is_empty(), "{text:?}: an error without a problem");
        for error in &errors {
            assert!(
                error.position.is_some() || error.route.is_some(),
                "{text:?}: {error} has neither a position nor a rule"
            );
        }
    }
}

/// The native file (`config::file::load`, YAML): never panics, and every problem names the file.
pub fn native_file(text: &str) {
    let dir = std::env::temp_dir().join(format!("checkpoint-fuzz-{}", std::process::id()));
    // A file per thread: the property tests run in parallel.
    let file = dir.join(format!("{:?}.yaml", std::thread::current().id()).replace(['(', ')'], ""));
    if std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, text))
        .is_err()
    {
        return;
    }
    let label = file.display().to_string();
    if let Err(errors) = crate::config::file::load(&file, &HashMap::new()) {
        for problem in &errors.problems {
            assert!(
                problem.starts_with(&label),
                "{text:?}: the problem {problem:?} does not name the file"
            );
        }
    }
    let _ = std::fs::remove_file(&file);
}

/// `envoy::decode`: never panics, and agrees with envoy-types' generated decoding. The generated
/// decoding also reads the fields checkpoint skips, so it refuses some messages checkpoint
/// accepts (a broken field nobody reads); whatever it accepts, checkpoint accepts too and sees
/// the same request.
pub fn check_request(bytes: &[u8]) {
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
    use prost::Message;

    let lean = crate::envoy::decode(bytes);
    let Ok(stock) = CheckRequest::decode(bytes) else {
        return;
    };
    let lean = lean.unwrap_or_else(|e| panic!("{bytes:?}: prost accepts, checkpoint says {e}"));
    let view = crate::envoy::decode::reference::request(&stock);
    // Map keys that differ only in case (never from Envoy, which sends lower-case names) are
    // joined into one header: checkpoint in the order of the wire, the reference in its
    // HashMap's order, which is random. For those the parts are compared, not their order.
    let mut names: Vec<String> = stock
        .attributes
        .iter()
        .filter_map(|a| a.request.as_ref()?.http.as_ref())
        .flat_map(|http| http.headers.keys().map(|k| k.to_ascii_lowercase()))
        .collect();
    names.sort();
    let collide = names.windows(2).any(|w| w[0] == w[1]);
    assert_same_request(&lean, &view, bytes, collide);
}

fn assert_same_request(lean: &Request, view: &Request, bytes: &[u8], any_order: bool) {
    assert_eq!(lean.method, view.method, "{bytes:?}");
    assert_eq!(lean.path, view.path, "{bytes:?}");
    assert_eq!(lean.principal, view.principal, "{bytes:?}");
    assert_eq!(lean.request_id, view.request_id, "{bytes:?}");
    assert_eq!(lean.certificate, view.certificate, "{bytes:?}");
    assert_eq!(lean.metadata, view.metadata, "{bytes:?}");
    let sorted = |r: &Request| {
        let mut pairs: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| {
                if !any_order {
                    return (k.to_owned(), v.to_owned());
                }
                let mut parts: Vec<&str> = v.split(',').collect();
                parts.sort_unstable();
                (k.to_owned(), parts.join(","))
            })
            .collect();
        pairs.sort();
        pairs
    };
    assert_eq!(sorted(lean), sorted(view), "{bytes:?}");
}

/// A user-info answer (`UserInfo::interpret`): never panics; a user has a non-empty id, and
/// nothing in the three user headers could split a header or break out of its JSON.
pub fn userinfo_payload(body: &[u8]) {
    static SOURCE: OnceLock<Option<UserInfo>> = OnceLock::new();
    let source = SOURCE.get_or_init(|| {
        let settings = UserInfoSettings {
            url: reqwest::Url::parse("http://127.0.0.1:9/userinfo").ok()?,
            backoffice_url: None,
            headers_to_proxy: vec!["authorization".to_owned()],
            authorization_headers: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            user_id_key: "sub".to_owned(),
            permissions_key: Some("permissions".to_owned()),
            max_body_bytes: 1 << 20,
        };
        UserInfo::new(settings, vec!["email".to_owned(), "tenant".to_owned()]).ok()
    });
    let Some(source) = source else {
        panic!("the user-info source could not be built");
    };
    if let Resolution::User(user) = source.interpret(body) {
        assert_safe_user(&user, body);
    }
}

fn assert_safe_user(user: &Arc<User>, input: &[u8]) {
    assert!(!user.id.is_empty(), "{input:?}: empty id");
    for value in [&user.id, &user.groups_header, &user.properties_header] {
        assert!(
            !value.chars().any(char::is_control),
            "{input:?}: control character in {value:?}"
        );
    }
    assert!(user.properties_header.is_ascii(), "{input:?}");
    let properties: serde_json::Value = serde_json::from_str(&user.properties_header)
        .unwrap_or_else(|e| panic!("{input:?}: properties are not JSON: {e}"));
    assert!(properties.is_object(), "{input:?}");
}

/// A bearer token against real keys (`identity::jwt::verify`): never panics, and arbitrary text
/// never verifies (only the issuer's private keys can make a token that does).
pub fn jwt(token: &str) {
    let (keys, policy) = jwt_fixture();
    let now = 1_800_000_000;
    if let Ok(claims) = jwt::verify(token, keys, policy, now) {
        panic!("{token:?} verified without a signature: {claims:?}");
    }
    let _ = jwt::is_jwt(token);
}

/// A JWKS document (`KeySet::parse`): never panics, and every key kept verifies only asymmetric
/// algorithms.
pub fn jwks(document: &[u8]) {
    if let Ok(set) = KeySet::parse(document) {
        for kid in set.kids() {
            if let Some(key) = set.by_kid(kid) {
                assert!(
                    key.algorithms
                        .iter()
                        .all(|alg| alg.family() != jsonwebtoken::AlgorithmFamily::Hmac),
                    "{document:?}: kept a symmetric key"
                );
            }
        }
    }
}

/// The `ldap` source's readers of outside input: an `Authorization` value as Basic credentials
/// (`identity::ldap::basic_credentials`) and a group's DN as its name (`first_rdn_value`). Never
/// panic; accepted credentials have a non-empty user name without control characters and a
/// non-empty password, both within their bounds; a group name is never empty, never starts or
/// ends with a space.
pub fn ldap(text: &str) {
    use crate::identity::ldap::{MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES};
    let request = Request {
        method: None,
        path: Ok("/".into()),
        headers: crate::request::Headers::from_pairs([("authorization", text.to_owned())]),
        principal: String::new(),
        request_id: String::new(),
        certificate: String::new(),
        metadata: None,
    };
    if let Some(Ok(credentials)) = crate::identity::ldap::basic_credentials(&request) {
        assert!(
            !credentials.user.is_empty()
                && credentials.user.len() <= MAX_USERNAME_BYTES
                && !credentials.user.chars().any(char::is_control),
            "{text:?}: user {:?}",
            credentials.user
        );
        assert!(
            !credentials.password.is_empty() && credentials.password.len() <= MAX_PASSWORD_BYTES,
            "{text:?}: password"
        );
    }
    if let Some(name) = crate::identity::ldap::first_rdn_value(text) {
        assert!(
            !name.is_empty() && !name.starts_with(' ') && !name.ends_with(' '),
            "{text:?} -> {name:?}"
        );
    }
}

/// The project's test keys, published as an issuer would, and a policy that accepts them.
fn jwt_fixture() -> &'static (KeySet, Policy) {
    static FIXTURE: OnceLock<(KeySet, Policy)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys: serde_json::Value =
            serde_json::from_str(include_str!("../tests/cases/jwt-keys.json")).unwrap_or_default();
        let published: Vec<serde_json::Value> = ["rsa", "ec", "ec384", "ed"]
            .iter()
            .map(|name| {
                let mut jwk = keys[name]["public"].clone();
                jwk["kid"] = serde_json::json!(name);
                jwk
            })
            .collect();
        let document = serde_json::json!({ "keys": published }).to_string();
        let set = KeySet::parse(document.as_bytes())
            .unwrap_or_else(|e| panic!("the test keys do not parse: {e}"));
        let policy = Policy {
            issuer: "https://idp.example".to_owned(),
            audiences: Vec::new(),
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::ES384,
                jsonwebtoken::Algorithm::EdDSA,
                jsonwebtoken::Algorithm::PS256,
            ],
            leeway: 30,
            typ: None,
        };
        (set, policy)
    })
}

/// The login redirect (`login::location`) on a browser request with any `Accept`, `Host` and
/// path: never panics, and a Location, when there is one, is the configured login page with
/// only its parameter added, whose value is a path (never `//`, which a login page would follow
/// to another site) or an `http(s)://` URL of a plain host.
pub fn login_redirect(accept: &str, host: &str, target: &str) {
    use crate::config::login_redirect::{LoginRedirect, Raw, validate};
    static SETTINGS: OnceLock<Option<LoginRedirect>> = OnceLock::new();
    let Some(settings) = SETTINGS
        .get_or_init(|| {
            validate(&Raw {
                url: Some("https://login.example/web-login?app=a".to_owned()),
                ..Raw::default()
            })
            .ok()
        })
        .as_ref()
    else {
        panic!("the fixed login URL is valid");
    };
    let _ = crate::login::prefers_html(accept);
    let headers = crate::request::Headers::from_pairs([("accept", accept), (":authority", host)]);
    let request = Request::finish(
        headers,
        "GET",
        target,
        "",
        "https",
        "",
        String::new(),
        String::new(),
        None,
    );
    let Some(location) = crate::login::location(settings, &request) else {
        return;
    };
    let prefix = "https://login.example/web-login?app=a";
    assert!(
        location.starts_with(prefix),
        "{host:?} {target:?}: {location}"
    );
    let rest = location.strip_prefix(prefix).unwrap_or_default();
    assert!(
        rest.is_empty()
            || rest
                .strip_prefix("&redirect=")
                .is_some_and(|value| !value.contains('&')),
        "{host:?} {target:?}: {location}"
    );
    let parsed = reqwest::Url::parse(&location).unwrap_or_else(|e| panic!("{location}: {e}"));
    assert_eq!(parsed.host_str(), Some("login.example"), "{location}");
    if let Some((_, carried)) = parsed.query_pairs().find(|(name, _)| name == "redirect") {
        let path_only = carried.starts_with('/') && !carried.starts_with("//");
        let url = reqwest::Url::parse(&carried).is_ok_and(|url| {
            url.scheme() == "https" && url.username().is_empty() && url.password().is_none()
        });
        assert!(path_only || url, "{host:?} {target:?}: carried {carried:?}");
    }
}

#[cfg(test)]
#[allow(clippy::string_slice)] // Tests: a slice out of bounds is a failed test.
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Cases per property: bounded, so the whole module runs in seconds in the test command.
    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Strings over the characters that matter to `normalize`, with any character mixed in.
    fn path_like() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%".to_owned()),
            Just(";".to_owned()),
            Just("\\".to_owned()),
            Just("?".to_owned()),
            Just("#".to_owned()),
            "%[0-9a-fA-F]{2}",
            "[a-z0-9]{1,4}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(atoms, 0..24).prop_map(|parts| parts.concat())
    }

    /// The raw paths and keys of the project's tables.
    fn table_seeds() -> Vec<String> {
        let mut seeds = Vec::new();
        for (file, key) in [
            (include_str!("../tests/cases/paths.json"), "raw"),
            (include_str!("../tests/cases/routes.json"), "path"),
        ] {
            let value: serde_json::Value = serde_json::from_str(file).unwrap_or_default();
            collect_strings(&value, key, &mut seeds);
        }
        seeds
    }

    fn collect_strings(value: &serde_json::Value, key: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) if k == key => out.push(s.clone()),
                        other => collect_strings(other, key, out),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    collect_strings(item, key, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_table_paths_keep_every_property() {
        let seeds = table_seeds();
        assert!(seeds.len() >= 50, "{} seeds", seeds.len());
        for seed in &seeds {
            path(seed);
        }
    }

    proptest! {
        #![proptest_config(config(4000))]

        #[test]
        fn paths_keep_every_property(raw in path_like()) {
            path(&format!("/{raw}"));
            path(&raw);
        }

        #[test]
        fn mutated_table_paths_keep_every_property(
            index in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            insert in path_like(),
        ) {
            let seeds = table_seeds();
            let seed = &seeds[index.index(seeds.len())];
            let mut cut = at.index(seed.len() + 1);
            while !seed.is_char_boundary(cut) {
                cut -= 1;
            }
            path(&format!("{}{insert}{}", &seed[..cut], &seed[cut..]));
        }
    }

    /// Text over what matters to `Accept` lists, hosts and request targets.
    fn header_like() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("text/html".to_owned()),
                Just("application/json".to_owned()),
                Just("*/*".to_owned()),
                Just(";q=0.5".to_owned()),
                Just(";q=1".to_owned()),
                Just(",".to_owned()),
                Just("\"".to_owned()),
                Just("@".to_owned()),
                Just("//".to_owned()),
                Just("/".to_owned()),
                Just("?".to_owned()),
                Just("#".to_owned()),
                Just(":443".to_owned()),
                Just("evil.example".to_owned()),
                Just("%2e%2e".to_owned()),
                any::<char>().prop_map(String::from),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn login_redirects_point_only_at_the_login_page(
            accept in header_like(),
            host in header_like(),
            target in header_like(),
        ) {
            login_redirect(&accept, &host, &format!("/{target}"));
            login_redirect("text/html", &host, &format!("/{target}"));
            login_redirect(&accept, "app.example", &target);
        }
    }

    /// Tokens of the expression language, joined in any order.
    fn expression_like() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just("groups.admin".to_owned()),
            Just("groups[\"a b\"]".to_owned()),
            Just("permissions.orders.read".to_owned()),
            Just("\"x\" in groups".to_owned()),
            Just("[\"a\", \"b\"] in groups".to_owned()),
            Just("clientType".to_owned()),
            Just("isBackoffice".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("&&".to_owned()),
            Just("||".to_owned()),
            Just("!".to_owned()),
            Just("==".to_owned()),
            Just("!=".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just(" ".to_owned()),
            "\"[a-z\\\\\"]{0,4}\"",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(atoms, 0..16).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(config(4000))]

        #[test]
        fn expressions_compile_or_name_a_column(source in expression_like()) {
            expression(&source);
        }

        #[test]
        fn any_text_compiles_or_names_a_column(source in ".{0,40}") {
            expression(&source);
        }
    }

    /// Found by the property test below (2026-12-04, one run in a few): map keys `r-` and `R-`
    /// join into one header, checkpoint in wire order, the reference in its HashMap's random
    /// order. Every call builds the reference anew, in a new order: before the property compared
    /// such headers by their parts, 32 calls in a row passed about once in 2^31.
    #[test]
    fn map_keys_that_differ_only_in_case_keep_the_property() {
        let bytes: &[u8] = &[
            10, 67, 10, 0, 34, 63, 18, 61, 18, 6, 69, 74, 81, 111, 84, 107, 26, 7, 10, 2, 114, 45,
            18, 1, 41, 26, 29, 10, 2, 82, 45, 18, 23, 243, 175, 140, 161, 11, 60, 240, 155, 164,
            182, 37, 240, 175, 132, 178, 243, 190, 147, 172, 240, 153, 140, 180, 34, 11, 47, 59,
            92, 35, 92, 46, 46, 46, 35, 63, 35,
        ];
        for _ in 0..32 {
            check_request(bytes);
        }
    }

    /// Found by cargo-fuzz (the `expression` target, 2026-12-04): a source within the length
    /// limit whose printed form is not, because `groups.a` prints as `["a"] in groups`.
    #[test]
    fn an_expression_that_prints_longer_than_the_limit_keeps_the_property() {
        let source = vec!["groups.a"; 400].join("||");
        assert!(source.len() <= 4096, "{}", source.len());
        let compiled = Expression::compile(&source);
        assert!(compiled.is_ok(), "{compiled:?}");
        let printed = compiled.map(|e| e.reprint()).unwrap_or_default();
        assert!(printed.len() > 4096, "{}", printed.len());
        expression(&source);
        // The same through the exemption's other side: a source over the limit is refused
        // before anything is printed.
        expression(&vec!["groups.a"; 410].join("||"));
    }

    /// Rule files: the Mia example and the README's, mutated, and JSON built from rule parts.
    fn rule_like() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("/".to_owned()),
            Just("/api".to_owned()),
            Just("/api/".to_owned()),
            Just("/a/../b".to_owned()),
            Just("//x".to_owned()),
            Just("/%2F".to_owned()),
            Just("".to_owned()),
            "[a-z/.%]{0,8}",
        ];
        let method = prop_oneof![
            Just("GET"),
            Just("ALL"),
            Just("post"),
            Just("TRACE"),
            Just("")
        ];
        let expression = prop_oneof![
            Just("\"true\""),
            Just("\"groups.admin\""),
            Just("\"groups.\""),
            Just("true"),
            Just("null")
        ];
        let public = prop_oneof![Just("true"), Just("false"), Just("\"yes\""), Just("0")];
        let rule = (key, method, expression, public).prop_map(|(k, m, e, p)| {
            format!(
                "{}: {{ \"{m}\": {{ \"authorization\": {{ \"expression\": {e}, \"public\": {p} }} }} }}",
                serde_json::Value::from(k)
            )
        });
        prop::collection::vec(rule, 0..4).prop_map(|rules| format!("{{ {} }}", rules.join(", ")))
    }

    proptest! {
        #![proptest_config(config(1500))]

        #[test]
        fn rule_files_fail_with_a_place(text in rule_like()) {
            rule_file(&text);
        }

        #[test]
        fn any_text_as_a_rule_file_fails_with_a_place(text in ".{0,64}") {
            rule_file(&text);
        }

        #[test]
        fn cut_rule_files_fail_with_a_place(at in any::<prop::sample::Index>()) {
            let example = include_str!("../envoy/demo/auth.json");
            let mut cut = at.index(example.len() + 1);
            while !example.is_char_boundary(cut) {
                cut -= 1;
            }
            rule_file(&example[..cut]);
        }
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn cut_native_files_name_the_file(at in any::<prop::sample::Index>()) {
            let example = include_str!("../schema/checkpoint.example.yaml");
            let mut cut = at.index(example.len() + 1);
            while !example.is_char_boundary(cut) {
                cut -= 1;
            }
            native_file(&example[..cut]);
        }

        #[test]
        fn any_text_as_a_native_file_names_the_file(text in "(version: 1\n)?[a-z_:{}\\[\\], \n\"-]{0,64}") {
            native_file(&text);
        }
    }

    /// CheckRequests built from parts, then encoded; and the same bytes mutated.
    fn check_request_bytes() -> impl Strategy<Value = Vec<u8>> {
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
            HttpRequest, Peer, Request as AttributeRequest,
        };
        use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
        use prost::Message;

        let header = (
            prop_oneof![
                Just("authorization".to_owned()),
                Just(":path".to_owned()),
                Just("x-request-id".to_owned()),
                "[a-zA-Z:-]{0,6}"
            ],
            ".{0,12}",
        );
        (
            "[A-Za-z]{0,7}",
            path_like(),
            prop::collection::vec(header, 0..6),
            ".{0,8}",
            ".{0,10}",
        )
            .prop_map(|(method, path, headers, id, principal)| {
                let http = HttpRequest {
                    id,
                    method,
                    path: format!("/{path}"),
                    headers: headers.into_iter().collect(),
                    ..Default::default()
                };
                CheckRequest {
                    attributes: Some(AttributeContext {
                        source: Some(Peer {
                            principal,
                            ..Default::default()
                        }),
                        request: Some(AttributeRequest {
                            http: Some(http),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            })
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn built_check_requests_decode_as_prost_decodes_them(bytes in check_request_bytes()) {
            check_request(&bytes);
        }

        #[test]
        fn mutated_check_requests_decode_as_prost_decodes_them(
            bytes in check_request_bytes(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = bytes;
            if !bytes.is_empty() {
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                bytes.truncate(cut.index(bytes.len()) + 1);
            }
            check_request(&bytes);
        }

        #[test]
        fn arbitrary_bytes_decode_as_prost_decodes_them(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            check_request(&bytes);
        }
    }

    /// JSON values of any shape, a few levels deep, with the fields user-info answers use.
    fn json_like() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("sub".to_owned()),
                        Just("groups".to_owned()),
                        Just("permissions".to_owned()),
                        Just("email".to_owned()),
                        Just("tenant".to_owned()),
                        "[a-z]{0,4}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn user_info_answers_map_to_safe_users(value in json_like()) {
            userinfo_payload(value.to_string().as_bytes());
        }

        #[test]
        fn user_info_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..48)) {
            userinfo_payload(&body);
        }

        #[test]
        fn arbitrary_tokens_never_verify(
            header in json_like(),
            payload in json_like(),
            signature in "[A-Za-z0-9_-]{0,90}",
            raw in ".{0,40}",
            any_alg in ".{0,6}",
        ) {
            use base64::Engine;
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
            jwt(&format!("{}.{}.{signature}", b64(&header), b64(&payload)));
            for alg in ["RS256", "ES256", "EdDSA", "none", "HS256", any_alg.as_str()] {
                let header = serde_json::json!({ "alg": alg, "kid": "rsa", "typ": "JWT" });
                jwt(&format!("{}.{}.{signature}", b64(&header), b64(&payload)));
            }
            jwt(&raw);
        }

        #[test]
        fn key_sets_keep_only_asymmetric_keys(keys in prop::collection::vec(json_like(), 0..4)) {
            let document = serde_json::json!({ "keys": keys }).to_string();
            jwks(document.as_bytes());
        }
    }

    /// The real keys, one field changed at a time: still never an HMAC key.
    #[test]
    fn altered_test_keys_never_become_symmetric() {
        let keys: serde_json::Value =
            serde_json::from_str(include_str!("../tests/cases/jwt-keys.json")).expect("keys");
        for name in ["rsa", "ec", "ec384", "ed"] {
            let public = keys[name]["public"].clone();
            for (field, value) in [
                ("alg", serde_json::json!("HS256")),
                ("kty", serde_json::json!("oct")),
                ("use", serde_json::json!("enc")),
                ("alg", serde_json::json!("none")),
                ("k", serde_json::json!("c2VjcmV0")),
            ] {
                let mut jwk = public.clone();
                jwk[field] = value;
                jwks(serde_json::json!({ "keys": [jwk] }).to_string().as_bytes());
            }
        }
    }

    /// Basic credentials and DNs around the shapes the `ldap` source reads.
    fn ldap_like() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just("Basic ".to_owned()),
            Just("basic ".to_owned()),
            Just("YWxpY2U6cHc=".to_owned()),
            Just("Og==".to_owned()),
            Just("cn=".to_owned()),
            Just(",".to_owned()),
            Just("+".to_owned()),
            Just("\\".to_owned()),
            Just("\\2C".to_owned()),
            Just("#".to_owned()),
            Just(" ".to_owned()),
            "[A-Za-z0-9+/=]{0,12}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(atoms, 0..12).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(config(4000))]

        #[test]
        fn ldap_inputs_keep_every_property(text in ldap_like()) {
            ldap(&text);
        }

        #[test]
        fn any_basic_credentials_keep_every_property(user in ".{0,8}", password in ".{0,8}") {
            use base64::Engine;
            let pair = format!("{user}:{password}");
            ldap(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)));
        }
    }
}
