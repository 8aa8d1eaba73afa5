//! Stage 4, the boundary out: an [`Outcome`] becomes Envoy's `CheckResponse`.
//!
//! The one table from outcome to gRPC code, HTTP status and body lives here ([`status_of`]).
//! Called by `service` for every Check.
//!
//! Envoy contract details this module keeps (ENVOY.md):
//! - a deny is `Ok(CheckResponse)` with a non-OK status inside, never a gRPC error, which Envoy
//!   would treat as a failure of the authorization service;
//! - every injected header says `OVERWRITE_IF_EXISTS_OR_ADD`, because the enum's default appends;
//! - `headers_to_remove` is applied after the added headers, so it never names a header we set.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::check::{Decision, Denial, Outcome};
use crate::config::UserHeaders;
use crate::identity::User;

/// Mia's marker for non-strict mode: `1` allowed, `0` not allowed but let through.
pub const MIA_ALLOWED: &str = "mia-allowed";

/// gRPC status codes used in `CheckResponse.status` (google.rpc.Code).
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The status table: gRPC code, HTTP status, HTTP reason phrase, and the message of the body.
pub fn status_of(denial: Denial) -> (i32, u16, &'static str, &'static str) {
    match denial {
        Denial::BadRequest => (
            code::INVALID_ARGUMENT,
            400,
            "Bad Request",
            "the request path cannot be safely interpreted",
        ),
        Denial::NotFound => (
            code::NOT_FOUND,
            404,
            "Not Found",
            "no route matches this path and method",
        ),
        Denial::Unauthenticated => (
            code::UNAUTHENTICATED,
            401,
            "Unauthorized",
            "a valid login is required",
        ),
        Denial::Forbidden => (
            code::PERMISSION_DENIED,
            403,
            "Forbidden",
            "the caller is not allowed to do this",
        ),
        Denial::Unavailable => (
            code::UNAVAILABLE,
            503,
            "Service Unavailable",
            "the caller's identity cannot be verified right now",
        ),
    }
}

/// How answers are written: settled at start-up.
#[derive(Debug, Clone)]
pub struct Responder {
    strict: bool,
    user_id: String,
    groups: String,
    properties: String,
    /// The JSON body of each denial, built once.
    bodies: [String; 5],
}

const DENIALS: [Denial; 5] = [
    Denial::BadRequest,
    Denial::NotFound,
    Denial::Unauthenticated,
    Denial::Forbidden,
    Denial::Unavailable,
];

fn index(denial: Denial) -> usize {
    match denial {
        Denial::BadRequest => 0,
        Denial::NotFound => 1,
        Denial::Unauthenticated => 2,
        Denial::Forbidden => 3,
        Denial::Unavailable => 4,
    }
}

impl Responder {
    pub fn new(strict: bool, headers: &UserHeaders) -> Responder {
        let bodies = DENIALS.map(|denial| {
            let (_, http, error, message) = status_of(denial);
            serde_json::json!({ "statusCode": http, "error": error, "message": message })
                .to_string()
        });
        Responder {
            strict,
            user_id: headers.user_id.clone(),
            groups: headers.groups.clone(),
            properties: headers.properties.clone(),
            bodies,
        }
    }

    /// Envoy's answer for an outcome.
    pub fn build(&self, outcome: &Outcome<'_>) -> CheckResponse {
        let mut response = match outcome.decision {
            Decision::Allow => self.allow(outcome.user.as_deref(), true),
            Decision::Deny(
                denial @ (Denial::NotFound | Denial::Unauthenticated | Denial::Forbidden),
            ) if !self.strict => {
                // Non-strict mode: Mia's gateway lets the request through marked not allowed,
                // with the user headers of whoever was identified.
                let _ = denial;
                self.allow(outcome.user.as_deref(), false)
            }
            Decision::Deny(denial) => self.deny(denial),
        };
        response.dynamic_metadata = Some(metadata(outcome));
        response
    }

    fn allow(&self, user: Option<&User>, allowed: bool) -> CheckResponse {
        let mut headers = Vec::with_capacity(4);
        let mut remove = Vec::with_capacity(4);
        match user {
            Some(user) => {
                headers.push(overwrite(&self.user_id, &user.id));
                if user.groups_header.is_empty() {
                    remove.push(self.groups.clone());
                } else {
                    headers.push(overwrite(&self.groups, &user.groups_header));
                }
                headers.push(overwrite(&self.properties, &user.properties_header));
            }
            // Security: a caller must never choose its own identity headers.
            None => remove.extend([
                self.user_id.clone(),
                self.groups.clone(),
                self.properties.clone(),
            ]),
        }
        if self.strict {
            // Security: upstreams of a non-strict deployment may trust this marker.
            remove.push(MIA_ALLOWED.to_owned());
        } else {
            headers.push(overwrite(MIA_ALLOWED, if allowed { "1" } else { "0" }));
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: code::OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove: remove,
                ..Default::default()
            })),
            dynamic_metadata: None,
        }
    }

    fn deny(&self, denial: Denial) -> CheckResponse {
        let (grpc, http, _, message) = status_of(denial);
        let mut headers = vec![overwrite("content-type", "application/json")];
        if denial == Denial::Unauthenticated {
            headers.push(overwrite("www-authenticate", "Bearer"));
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: grpc,
                message: message.to_owned(),
                details: Vec::new(),
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(http),
                }),
                headers,
                body: self.bodies[index(denial)].clone(),
            })),
            dynamic_metadata: None,
        }
    }
}

fn overwrite(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Stored by Envoy under `envoy.filters.http.ext_authz`, for access logs and later filters.
fn metadata(outcome: &Outcome<'_>) -> Struct {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut fields = std::collections::HashMap::with_capacity(3);
    let decision = match outcome.decision {
        Decision::Allow => "allow",
        Decision::Deny(_) => "deny",
    };
    fields.insert("decision".to_owned(), string(decision));
    fields.insert("reason".to_owned(), string(outcome.reason));
    if let Some(user) = &outcome.user {
        fields.insert("user_id".to_owned(), string(&user.id));
    }
    Struct { fields }
}
