//! The `api_key` source: Mia-Platform's client keys.
//!
//! The key is read from the first of the configured headers the request carries (default
//! `secret`, then `client-key`), else from the configured cookie (default `mia_client_key`). Keys
//! are configured only as lower-case hex SHA-256 digests; the presented key is hashed and its
//! digest compared with every configured digest in constant time.
//!
//! A key identifies a client (an application), not a person: it resolves to a client type (the
//! `clientType` of Mia expressions) and optionally groups. [`ApiKeys::identify`] gives exactly
//! that, for the pipeline to take `clientType` from; as a [`Source`] a known key is a user named
//! `api-key:<client_type>` with the key's groups, so that rules that need a login accept it.
//! An unknown key is [`Resolution::Invalid`]: a 401 even on public routes, never anonymous.
//!
//! Called by the [`Resolver`](super::Resolver). Never caches (hashing a key is cheaper than a
//! cache lookup) and never logs a key.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::{BoxFuture, Context, Failure, Resolution, Source, User, claims};
use crate::config::sources::ApiKeySource;
use crate::request::Request;

/// What a request's API key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMatch {
    /// The request carries no key where this source looks.
    NoKey,
    /// A key that matches no configured digest.
    Unknown,
    /// A configured key.
    Known {
        client_type: String,
        groups: Vec<String>,
    },
}

struct Key {
    digest: [u8; 32],
    client_type: String,
    groups: Vec<String>,
    /// The user a known key resolves to, built once.
    user: Arc<User>,
}

pub struct ApiKeys {
    /// Lower-case header names, in the order they are looked at.
    headers: Vec<String>,
    cookie: Option<String>,
    keys: Vec<Key>,
}

impl ApiKeys {
    /// Validates the settings; every problem is reported, joined with `; `, each naming its
    /// field (`api_key.keys[2].sha256: ...`).
    pub fn new(settings: &ApiKeySource) -> Result<ApiKeys, Vec<String>> {
        let mut errors = Vec::new();
        let headers: Vec<String> = settings
            .headers
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for (i, header) in headers.iter().enumerate() {
            if header.is_empty() || !header.bytes().all(is_token_byte) {
                errors.push(format!(
                    "api_key.headers[{i}]: {:?} is not a header name",
                    settings.headers[i]
                ));
            }
        }
        let cookie = settings.cookie.as_ref().map(|c| c.trim().to_owned());
        if let Some(cookie) = &cookie
            && (cookie.is_empty() || !cookie.bytes().all(is_token_byte))
        {
            errors.push(format!("api_key.cookie: {cookie:?} is not a cookie name"));
        }
        if headers.is_empty() && cookie.is_none() {
            errors.push("api_key.headers: no header and no cookie to read the key from".into());
        }
        if settings.keys.is_empty() {
            errors.push("api_key.keys: at least one key is required".into());
        }
        let mut keys: Vec<Key> = Vec::with_capacity(settings.keys.len());
        for (i, key) in settings.keys.iter().enumerate() {
            let digest = match parse_digest(&key.sha256) {
                Ok(digest) => digest,
                Err(e) => {
                    errors.push(format!("api_key.keys[{i}].sha256: {e}"));
                    continue;
                }
            };
            if let Some(first) = settings.keys[..i]
                .iter()
                .position(|k| k.sha256 == key.sha256)
            {
                errors.push(format!(
                    "api_key.keys[{i}].sha256: the same key as keys[{first}]"
                ));
                continue;
            }
            let mut ok = true;
            if key.client_type.is_empty() || key.client_type.chars().any(char::is_control) {
                errors.push(format!(
                    "api_key.keys[{i}].client_type: must be non-empty, without control characters"
                ));
                ok = false;
            }
            for (g, group) in key.groups.iter().enumerate() {
                if group.is_empty() || group.contains(',') || group.chars().any(char::is_control) {
                    errors.push(format!(
                        "api_key.keys[{i}].groups[{g}]: must be non-empty, without commas or control characters"
                    ));
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            match User::new(
                format!("api-key:{}", key.client_type),
                key.groups.clone(),
                Vec::new(),
                "{}".to_owned(),
            ) {
                Ok(user) => keys.push(Key {
                    digest,
                    client_type: key.client_type.clone(),
                    groups: key.groups.clone(),
                    user: Arc::new(user),
                }),
                Err(e) => errors.push(format!("api_key.keys[{i}]: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ApiKeys {
            headers,
            cookie,
            keys,
        })
    }

    /// The key the request presents: the first configured header present with a non-empty
    /// value, else the cookie.
    fn presented<'r>(&self, request: &'r Request) -> Option<&'r str> {
        self.headers
            .iter()
            .filter_map(|name| request.header(name))
            .map(str::trim)
            .find(|value| !value.is_empty())
            .or_else(|| {
                let cookie = self.cookie.as_deref()?;
                claims::cookie(request, cookie).filter(|value| !value.is_empty())
            })
    }

    /// The index of the configured key whose digest is `digest`. Every digest is compared, in
    /// constant time, whatever matches: the time taken says nothing about which key, or how
    /// much of one, matched.
    fn find(&self, digest: &[u8; 32]) -> Option<usize> {
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let equal = key.digest.ct_eq(digest);
            // Keys are few (validated at start-up); an index past u32 cannot occur.
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index.conditional_assign(&i, equal);
            found |= equal;
        }
        bool::from(found).then_some(index as usize)
    }

    fn matched(&self, request: &Request) -> Result<&Key, KeyMatch> {
        let Some(presented) = self.presented(request) else {
            return Err(KeyMatch::NoKey);
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.find(&digest)
            .and_then(|i| self.keys.get(i))
            .ok_or(KeyMatch::Unknown)
    }

    /// What the request's key is: for the pipeline, which takes `clientType` (and the groups)
    /// from a known key.
    pub fn identify(&self, request: &Request) -> KeyMatch {
        match self.matched(request) {
            Ok(key) => KeyMatch::Known {
                client_type: key.client_type.clone(),
                groups: key.groups.clone(),
            },
            Err(other) => other,
        }
    }

    fn read(&self, request: &Request) -> Resolution {
        match self.matched(request) {
            Ok(key) => Resolution::User(Arc::clone(&key.user)),
            Err(KeyMatch::NoKey) => Resolution::NoCredential,
            Err(_) => Resolution::Invalid(Failure::new(
                "api_key_unknown",
                "the API key matches no configured key",
            )),
        }
    }
}

/// A lower-case hex SHA-256 digest.
fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let bytes = text.as_bytes();
    let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if bytes.len() != 64 || !bytes.iter().all(lower_hex) {
        return Err("expected 64 lower-case hex characters (a SHA-256 digest)".into());
    }
    let nibble = |b: u8| {
        if b.is_ascii_digit() {
            b - b'0'
        } else {
            b - b'a' + 10
        }
    };
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Ok(digest)
}

/// An RFC 9110 token character (header and cookie names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Source for ApiKeys {
    fn name(&self) -> &'static str {
        "api_key"
    }

    fn request_headers(&self) -> Vec<String> {
        let cookie = self.cookie.as_ref().map(|_| "cookie".to_owned());
        self.headers.iter().cloned().chain(cookie).collect()
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        _context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(std::future::ready(self.read(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sources::ApiKey;
    use crate::request::Headers;

    fn hex(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn settings(keys: &[(&str, &str, &[&str])]) -> ApiKeySource {
        ApiKeySource {
            name: None,
            headers: vec!["secret".into(), "Client-Key".into()],
            cookie: Some("mia_client_key".into()),
            keys: keys
                .iter()
                .map(|(key, client_type, groups)| ApiKey {
                    sha256: hex(key),
                    client_type: (*client_type).into(),
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                })
                .collect(),
        }
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: None,
            path: Ok("/".into()),
            headers: Headers::from_pairs(headers.iter().map(|(k, v)| (*k, (*v).to_owned()))),
            principal: String::new(),
            request_id: String::new(),
            certificate: String::new(),
            metadata: None,
        }
    }

    #[test]
    fn digests_parse_only_as_lower_case_hex() {
        assert_eq!(parse_digest(&"0f".repeat(32)), Ok([0x0f; 32]));
        assert!(parse_digest(&"0F".repeat(32)).is_err());
        assert!(parse_digest(&"0f".repeat(31)).is_err());
        assert!(parse_digest(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn the_first_present_header_wins_then_the_cookie() {
        let keys =
            ApiKeys::new(&settings(&[("k1", "web", &["a"]), ("k2", "cli", &[])])).expect("valid");
        let known = |t: &str| KeyMatch::Known {
            client_type: t.into(),
            groups: if t == "web" { vec!["a".into()] } else { vec![] },
        };
        assert_eq!(keys.identify(&request(&[("secret", "k1")])), known("web"));
        assert_eq!(
            keys.identify(&request(&[("client-key", "k2"), ("secret", "k1")])),
            known("web")
        );
        assert_eq!(
            keys.identify(&request(&[("secret", ""), ("client-key", "k2")])),
            known("cli")
        );
        assert_eq!(
            keys.identify(&request(&[("cookie", "x=1; mia_client_key=k2")])),
            known("cli")
        );
        assert_eq!(
            keys.identify(&request(&[
                ("secret", "nope"),
                ("cookie", "mia_client_key=k2")
            ])),
            KeyMatch::Unknown
        );
        assert_eq!(keys.identify(&request(&[])), KeyMatch::NoKey);
    }

    #[test]
    fn constructor_errors_name_the_field() {
        let mut s = settings(&[("k1", "web", &[]), ("k1", "web", &[]), ("k3", "", &["a,b"])]);
        s.keys.push(ApiKey {
            sha256: "ABC".into(),
            client_type: "x".into(),
            groups: vec![],
        });
        s.headers.push("bad header".into());
        let Err(e) = ApiKeys::new(&s) else {
            panic!("invalid settings accepted")
        };
        let e = e.join("; ");
        for part in [
            "api_key.keys[1].sha256: the same key as keys[0]",
            "api_key.keys[2].client_type",
            "api_key.keys[2].groups[0]",
            "api_key.keys[3].sha256: expected 64 lower-case hex characters",
            "api_key.headers[2]",
        ] {
            assert!(e.contains(part), "{part:?} in {e}");
        }
        let none = ApiKeySource {
            headers: vec![],
            cookie: None,
            keys: vec![],
            name: None,
        };
        let Err(e) = ApiKeys::new(&none) else {
            panic!("invalid settings accepted")
        };
        let e = e.join("; ");
        assert!(e.contains("api_key.keys: at least one key"), "{e}");
        assert!(e.contains("no header and no cookie"), "{e}");
    }
}
