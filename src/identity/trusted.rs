//! Mia's trust mode (`TRUST_MIA_USER_HEADERS=true`): the user comes from the request's own user
//! headers, set by a gateway in front that already authenticated the caller. No call is made.
//!
//! Security: only for deployments where nothing but that gateway can reach Envoy; otherwise any
//! client chooses its own `miauserid`. README says so.

use std::sync::Arc;

use super::{BoxFuture, Context, Failure, Resolution, Source, User, ascii_json};
use crate::config::UserHeaders;
use crate::request::Request;

pub struct TrustedHeaders {
    headers: UserHeaders,
}

impl TrustedHeaders {
    pub fn new(headers: UserHeaders) -> TrustedHeaders {
        TrustedHeaders { headers }
    }

    fn read(&self, request: &Request) -> Resolution {
        let Some(id) = request
            .header(&self.headers.user_id)
            .map(str::trim)
            .filter(|id| !id.is_empty())
        else {
            return Resolution::NoCredential;
        };
        let groups: Vec<String> = request
            .header(&self.headers.groups)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        let properties = match request.header(&self.headers.properties).map(str::trim) {
            None | Some("") => "{}".to_owned(),
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value @ serde_json::Value::Object(_)) => ascii_json(&value),
                _ => {
                    return Resolution::Invalid(Failure::new(
                        "trusted_properties_invalid",
                        format!("{} is not a JSON object", self.headers.properties),
                    ));
                }
            },
        };
        match User::new(id.to_owned(), groups, Vec::new(), properties) {
            Ok(user) => Resolution::User(Arc::new(user)),
            Err(e) => Resolution::Invalid(Failure::new("trusted_headers_invalid", e.to_string())),
        }
    }
}

impl Source for TrustedHeaders {
    fn name(&self) -> &'static str {
        "trusted_headers"
    }

    fn request_headers(&self) -> Vec<String> {
        vec![
            self.headers.user_id.clone(),
            self.headers.groups.clone(),
            self.headers.properties.clone(),
        ]
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        _context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        let resolution = self.read(request);
        Box::pin(std::future::ready(resolution))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;

    fn source() -> TrustedHeaders {
        TrustedHeaders::new(UserHeaders {
            user_id: "miauserid".into(),
            groups: "miausergroups".into(),
            properties: "miauserproperties".into(),
        })
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
    fn reads_the_user_headers() {
        let r = source().read(&request(&[
            ("miauserid", "alice"),
            ("miausergroups", "admin, users,"),
            ("miauserproperties", r#"{"tenant":"acme"}"#),
        ]));
        let Resolution::User(user) = r else {
            panic!("user expected, got {r:?}")
        };
        assert_eq!(user.id, "alice");
        assert_eq!(user.groups, ["admin", "users"]);
        assert_eq!(user.properties_header, r#"{"tenant":"acme"}"#);
    }

    #[test]
    fn no_user_id_passes_on_and_bad_properties_are_invalid() {
        assert_eq!(source().read(&request(&[])), Resolution::NoCredential);
        assert_eq!(
            source().read(&request(&[("miauserid", "  ")])),
            Resolution::NoCredential
        );
        assert!(matches!(
            source().read(&request(&[
                ("miauserid", "a"),
                ("miauserproperties", "[1]")
            ])),
            Resolution::Invalid(_)
        ));
    }
}
