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
//!
//! Two forms of the same answer: [`Responder::build`], the `CheckResponse` struct, and
//! [`Responder::encode`], its protobuf bytes written directly (no string copies, no hash map),
//! which the server sends ([`Encoded`]). A test holds them equal for every kind of outcome.

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
    /// Whether answers carry the decision as `dynamic_metadata` (off unless configured).
    dynamic_metadata: bool,
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
            dynamic_metadata: false,
            user_id: headers.user_id.clone(),
            groups: headers.groups.clone(),
            properties: headers.properties.clone(),
            bodies,
        }
    }

    /// Answers also carry `decision`, `reason` and `user_id` as dynamic metadata, which Envoy
    /// stores under `envoy.filters.http.ext_authz`. Off by default: merging that Struct costs
    /// Envoy about 14,000 instructions per request (callgrind, Envoy 1.40), about 6% of what
    /// Envoy spends on a request with ext_authz.
    pub fn with_dynamic_metadata(mut self, on: bool) -> Responder {
        self.dynamic_metadata = on;
        self
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
        if self.dynamic_metadata {
            response.dynamic_metadata = Some(metadata(outcome));
        }
        response
    }

    /// The same answer as [`Responder::build`], as protobuf bytes.
    pub fn encode(&self, outcome: &Outcome<'_>) -> Encoded {
        let mut out = Vec::with_capacity(256);
        match outcome.decision {
            Decision::Allow => self.encode_allow(&mut out, outcome.user.as_deref(), true),
            Decision::Deny(Denial::NotFound | Denial::Unauthenticated | Denial::Forbidden)
                if !self.strict =>
            {
                self.encode_allow(&mut out, outcome.user.as_deref(), false)
            }
            Decision::Deny(denial) => self.encode_deny(&mut out, denial),
        }
        if self.dynamic_metadata {
            encode_metadata(&mut out, outcome);
        }
        Encoded(out)
    }

    fn encode_allow(&self, out: &mut Vec<u8>, user: Option<&User>, allowed: bool) {
        // CheckResponse.status (1): OK, a Status whose fields are all default.
        wire::message(out, 1, 0);
        let mia_allowed = if allowed { "1" } else { "0" };
        let mut set: [(&str, &str); 4] = [("", ""); 4];
        let mut n_set = 0;
        let mut removed: [&str; 4] = [""; 4];
        let mut n_removed = 0;
        match user {
            Some(user) => {
                set[n_set] = (&self.user_id, &user.id);
                n_set += 1;
                if user.groups_header.is_empty() {
                    removed[n_removed] = &self.groups;
                    n_removed += 1;
                } else {
                    set[n_set] = (&self.groups, &user.groups_header);
                    n_set += 1;
                }
                set[n_set] = (&self.properties, &user.properties_header);
                n_set += 1;
            }
            None => {
                removed = [&self.user_id, &self.groups, &self.properties, ""];
                n_removed = 3;
            }
        }
        if self.strict {
            removed[n_removed] = MIA_ALLOWED;
            n_removed += 1;
        } else {
            set[n_set] = (MIA_ALLOWED, mia_allowed);
            n_set += 1;
        }
        let (set, removed) = (&set[..n_set], &removed[..n_removed]);
        // OkHttpResponse: headers (2), headers_to_remove (5).
        let ok_len: usize = set
            .iter()
            .map(|(k, v)| wire::field_len(1, wire::option_len(k, v)))
            .sum::<usize>()
            + removed
                .iter()
                .map(|r| wire::field_len(1, r.len()))
                .sum::<usize>();
        wire::message(out, 3, ok_len);
        for (key, value) in set {
            wire::header_option(out, 2, key, value);
        }
        for name in removed {
            wire::string(out, 5, name);
        }
    }

    fn encode_deny(&self, out: &mut Vec<u8>, denial: Denial) {
        let (grpc, http, _, message) = status_of(denial);
        // CheckResponse.status (1): code (1), message (2).
        wire::message(
            out,
            1,
            wire::varint_field_len(grpc as u64) + wire::string_len(message),
        );
        wire::varint_field(out, 1, grpc as u64);
        wire::string(out, 2, message);
        // DeniedHttpResponse (2): status (1) { code (1) }, headers (2), body (3).
        let mut headers: [(&str, &str); 2] = [("content-type", "application/json"); 2];
        let mut n = 1;
        if denial == Denial::Unauthenticated {
            headers[1] = ("www-authenticate", "Bearer");
            n = 2;
        }
        let headers = &headers[..n];
        let body = &self.bodies[index(denial)];
        let status_len = wire::varint_field_len(u64::from(http));
        let denied_len = wire::field_len(1, status_len)
            + headers
                .iter()
                .map(|(k, v)| wire::field_len(1, wire::option_len(k, v)))
                .sum::<usize>()
            + wire::string_len(body);
        wire::message(out, 2, denied_len);
        wire::message(out, 1, status_len);
        wire::varint_field(out, 1, u64::from(http));
        for (key, value) in headers {
            wire::header_option(out, 2, key, value);
        }
        wire::string(out, 3, body);
    }

    fn allow(&self, user: Option<&User>, allowed: bool) -> CheckResponse {
        let mut headers = Vec::with_capacity(4);
        // Often left empty (a user with groups, non-strict mode): allocated on first use.
        let mut remove = Vec::new();
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

/// `CheckResponse.dynamic_metadata` (4), the same Struct as [`metadata`].
fn encode_metadata(out: &mut Vec<u8>, outcome: &Outcome<'_>) {
    let decision = match outcome.decision {
        Decision::Allow => "allow",
        Decision::Deny(_) => "deny",
    };
    let user_id = outcome.user.as_ref().map(|u| u.id.as_str());
    let entries = [
        Some(("decision", decision)),
        Some(("reason", outcome.reason)),
        user_id.map(|id| ("user_id", id)),
    ];
    let struct_len: usize = entries
        .iter()
        .flatten()
        .map(|(k, v)| wire::field_len(1, wire::struct_entry_len(k, v)))
        .sum();
    wire::message(out, 4, struct_len);
    for (key, value) in entries.iter().flatten() {
        wire::struct_entry(out, key, value);
    }
}

/// A `CheckResponse` already encoded ([`Responder::encode`]): what the server's codec writes.
/// Encode-only: decoding one reads nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded(pub Vec<u8>);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Protobuf encoding of the few shapes a CheckResponse needs. Like prost, fields holding their
/// default value (empty string, zero) are left out, except inside a oneof.
mod wire {
    const LEN: u64 = 2;
    const VARINT: u64 = 0;

    pub fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    pub fn varint_len(value: u64) -> usize {
        // One byte per started group of seven bits.
        (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
    }

    fn key(out: &mut Vec<u8>, field: u32, wire_type: u64) {
        varint(out, (u64::from(field) << 3) | wire_type);
    }

    /// Key and length prefix of a length-delimited field holding `len` bytes; all our field
    /// numbers are below 16, so the key is one byte.
    pub fn field_len(_field: u32, len: usize) -> usize {
        1 + varint_len(len as u64) + len
    }

    pub fn message(out: &mut Vec<u8>, field: u32, len: usize) {
        key(out, field, LEN);
        varint(out, len as u64);
    }

    pub fn string_len(value: &str) -> usize {
        if value.is_empty() {
            0
        } else {
            field_len(1, value.len())
        }
    }

    pub fn string(out: &mut Vec<u8>, field: u32, value: &str) {
        if !value.is_empty() {
            message(out, field, value.len());
            out.extend_from_slice(value.as_bytes());
        }
    }

    pub fn varint_field_len(value: u64) -> usize {
        if value == 0 { 0 } else { 1 + varint_len(value) }
    }

    pub fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
        if value != 0 {
            key(out, field, VARINT);
            varint(out, value);
        }
    }

    /// HeaderValue { key (1), value (2) }.
    fn header_value_len(key: &str, value: &str) -> usize {
        string_len(key) + string_len(value)
    }

    /// HeaderValueOption { header (1), append_action (3) = OVERWRITE_IF_EXISTS_OR_ADD }.
    pub fn option_len(key: &str, value: &str) -> usize {
        field_len(1, header_value_len(key, value)) + varint_field_len(OVERWRITE)
    }

    const OVERWRITE: u64 = super::HeaderAppendAction::OverwriteIfExistsOrAdd as u64;

    pub fn header_option(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
        message(out, field, option_len(key, value));
        message(out, 1, header_value_len(key, value));
        string(out, 1, key);
        string(out, 2, value);
        varint_field(out, 3, OVERWRITE);
    }

    /// Value { string_value (3) }: a oneof member, written even when empty.
    fn string_value_len(value: &str) -> usize {
        field_len(3, value.len())
    }

    /// One entry of `Struct.fields` (1): { key (1), value (2) }.
    pub fn struct_entry_len(key: &str, value: &str) -> usize {
        string_len(key) + field_len(2, string_value_len(value))
    }

    pub fn struct_entry(out: &mut Vec<u8>, key: &str, value: &str) {
        message(out, 1, struct_entry_len(key, value));
        string(out, 1, key);
        message(out, 2, string_value_len(value));
        message(out, 3, value.len());
        out.extend_from_slice(value.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::sync::Arc;

    fn user(id: &str, groups: &[&str], properties: &str) -> Arc<User> {
        let mut user = User::new(
            id.into(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
            vec!["api.read".into()],
            properties.into(),
        )
        .expect("a valid user");
        user.expires_at = None;
        Arc::new(user)
    }

    fn outcome(
        decision: Decision,
        reason: &'static str,
        user: Option<Arc<User>>,
    ) -> Outcome<'static> {
        Outcome {
            decision,
            reason,
            rule: None,
            user,
            identity_source: "none",
            failure: None,
            identity_cache: None,
            identity_latency: None,
        }
    }

    #[test]
    fn the_encoded_answer_is_the_built_one() {
        let headers = UserHeaders {
            user_id: "miauserid".into(),
            groups: "miausergroups".into(),
            properties: "miauserproperties".into(),
        };
        let long_id = "u".repeat(300);
        let users = [
            None,
            Some(user(
                "alice",
                &["admin", "users"],
                r#"{"email":"a@example.com"}"#,
            )),
            Some(user("bob", &[], "{}")),
            Some(user(&long_id, &["g"; 40], "")),
        ];
        let mut decisions = vec![Decision::Allow];
        decisions.extend(DENIALS.map(Decision::Deny));
        let mut checked = 0;
        for (strict, metadata) in [(true, true), (false, true), (true, false), (false, false)] {
            let responder = Responder::new(strict, &headers).with_dynamic_metadata(metadata);
            for decision in &decisions {
                for user in &users {
                    let outcome = outcome(decision.clone(), "some_reason", user.clone());
                    let built = responder.build(&outcome);
                    let encoded = responder.encode(&outcome);
                    assert_eq!(
                        encoded.0.len(),
                        built.encoded_len(),
                        "length, {decision:?} strict={strict} {user:?}"
                    );
                    let decoded = CheckResponse::decode(encoded.0.as_slice()).expect("decodes");
                    assert_eq!(decoded, built, "{decision:?} strict={strict} {user:?}");
                    assert_eq!(
                        decoded.dynamic_metadata.is_some(),
                        metadata,
                        "dynamic metadata only when asked for"
                    );
                    // What the codec writes is those bytes.
                    assert_eq!(encoded.encode_to_vec(), encoded.0);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 4 * 6 * 4);
    }

    #[test]
    fn varint_lengths() {
        for value in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            wire::varint(&mut out, value);
            assert_eq!(out.len(), wire::varint_len(value), "{value}");
            assert_eq!(
                out.len(),
                prost::encoding::encoded_len_varint(value),
                "{value}"
            );
        }
    }
}
