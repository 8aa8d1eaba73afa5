//! Turning a verified payload (JWT claims, an introspection answer, Envoy's jwt_authn metadata,
//! a directory entry after a successful bind) into a [`User`], and finding a token in a request.
//!
//! Called by the `jwt`, `introspection`, `envoy_metadata` and `ldap` sources after verification;
//! never sees unverified data as a user.

use serde_json::{Map, Value};

use super::{User, ascii_json};
use crate::config::sources::{ClaimMapping, TokenLocation};
use crate::request::Request;

/// The value at a dotted path (`realm_access.roles`); a key that itself holds dots is found
/// first as a whole.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    match claims.get(head)? {
        Value::Object(inner) => lookup(inner, rest),
        _ => None,
    }
}

/// A list of names: an array of strings, or one string split on spaces and commas.
fn names(value: Option<&Value>, path: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("\"{path}\" holds a value that is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("\"{path}\" is neither a list nor a string")),
    }
}

/// The user the claims describe. `Ok(None)` when there is no user id.
pub fn user_from_claims(
    claims: &Map<String, Value>,
    mapping: &ClaimMapping,
) -> Result<Option<User>, String> {
    let id = match lookup(claims, &mapping.user_id) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(format!(
                "\"{}\" is neither a string nor a number",
                mapping.user_id
            ));
        }
    };
    let groups = names(lookup(claims, &mapping.groups), &mapping.groups)?;
    let permissions = names(lookup(claims, &mapping.permissions), &mapping.permissions)?;
    let properties: Map<String, Value> = mapping
        .properties
        .iter()
        .filter_map(|key| lookup(claims, key).map(|v| (key.clone(), v.clone())))
        .collect();
    let mut user = User::new(
        id,
        groups,
        permissions,
        ascii_json(&Value::Object(properties)),
    )
    .map_err(|e| e.to_string())?;
    user.expires_at = claims
        .get("exp")
        .and_then(Value::as_f64)
        .filter(|e| *e >= 0.0)
        .map(|e| e as u64);
    Ok(Some(user))
}

/// The token at `location`, if the request carries one.
pub fn token<'r>(request: &'r Request, location: &TokenLocation) -> Option<&'r str> {
    let token = match location {
        TokenLocation::Bearer => {
            let value = request.header("authorization")?.trim();
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())?
        }
        TokenLocation::Header(name) => request.header(&name.to_ascii_lowercase())?.trim(),
        TokenLocation::Cookie(name) => cookie(request, name)?,
    };
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` in the request's `cookie` header(s).
pub fn cookie<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request
        .header("cookie")?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;
    use serde_json::json;

    fn mapping(groups: &str, permissions: &str) -> ClaimMapping {
        ClaimMapping {
            groups: groups.into(),
            permissions: permissions.into(),
            properties: vec!["email".into(), "org.tenant".into()],
            ..ClaimMapping::default()
        }
    }

    #[test]
    fn claims_map_onto_a_user() {
        let claims = json!({"sub": "alice", "exp": 1700000000, "realm_access": {"roles": ["admin", "dev"]},
            "scope": "read write", "email": "a@x", "org": {"tenant": "acme"}});
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        let user = user_from_claims(&claims, &mapping("realm_access.roles", "scope"))
            .expect("ok")
            .expect("user");
        assert_eq!(user.id, "alice");
        assert_eq!(user.groups, ["admin", "dev"]);
        assert_eq!(user.permissions, ["read", "write"]);
        assert_eq!(
            user.properties_header,
            r#"{"email":"a@x","org.tenant":"acme"}"#
        );
        assert_eq!(user.expires_at, Some(1_700_000_000));
        let Value::Object(comma) = json!({"sub": "b", "groups": "a, b"}) else {
            unreachable!()
        };
        let user = user_from_claims(&comma, &ClaimMapping::default())
            .expect("ok")
            .expect("user");
        assert_eq!(user.groups, ["a", "b"]);
        let Value::Object(none) = json!({"groups": ["a"]}) else {
            unreachable!()
        };
        assert_eq!(user_from_claims(&none, &ClaimMapping::default()), Ok(None));
        let Value::Object(bad) = json!({"sub": "b", "groups": 3}) else {
            unreachable!()
        };
        assert!(user_from_claims(&bad, &ClaimMapping::default()).is_err());
    }

    #[test]
    fn tokens_are_found_where_configured() {
        let request = Request {
            method: None,
            path: Ok("/".into()),
            headers: Headers::from_pairs([
                ("authorization", "Bearer abc".to_owned()),
                ("x-token", " def ".to_owned()),
                ("cookie", "a=1; session=\"ghi\"; z=2".to_owned()),
            ]),
            principal: String::new(),
            request_id: String::new(),
            certificate: String::new(),
            metadata: None,
        };
        assert_eq!(token(&request, &TokenLocation::Bearer), Some("abc"));
        assert_eq!(
            token(&request, &TokenLocation::Header("X-Token".into())),
            Some("def")
        );
        assert_eq!(
            token(&request, &TokenLocation::Cookie("session".into())),
            Some("ghi")
        );
        assert_eq!(token(&request, &TokenLocation::Cookie("nope".into())), None);
    }
}
