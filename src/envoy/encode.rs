//! The one encoder: a [`crate::response::Answer`] becomes the protobuf bytes of Envoy's
//! `CheckResponse`, written directly (no string copies, no generated structs). The generated
//! types are the reference in this module's tests: `CheckResponse::decode` of these bytes equals
//! the `CheckResponse` built field by field from the same answer.

use crate::response::{Answer, Verdict};

/// A `CheckResponse` already encoded: what the codec writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded(pub Vec<u8>);

/// Encodes `answer`.
pub fn encode(answer: &Answer<'_>) -> Encoded {
    let mut out = Vec::with_capacity(256);
    match &answer.verdict {
        Verdict::Allow { set, remove } => {
            // CheckResponse.status (1): OK, a Status whose fields are all default.
            wire::message(&mut out, 1, 0);
            // OkHttpResponse (3): headers (2), headers_to_remove (5).
            let (set, remove) = (set.as_slice(), remove.as_slice());
            let ok_len: usize = set
                .iter()
                .map(|(k, v)| wire::field_len(1, wire::option_len(k, v)))
                .sum::<usize>()
                + remove
                    .iter()
                    .map(|r| wire::field_len(1, r.len()))
                    .sum::<usize>();
            wire::message(&mut out, 3, ok_len);
            for (key, value) in set {
                wire::header_option(&mut out, 2, key, value);
            }
            for name in remove {
                wire::string(&mut out, 5, name);
            }
        }
        Verdict::Deny {
            code,
            message,
            status,
            headers,
            body,
        } => {
            let code = *code as u64;
            // CheckResponse.status (1): code (1), message (2).
            wire::message(
                &mut out,
                1,
                wire::varint_field_len(code) + wire::string_len(message),
            );
            wire::varint_field(&mut out, 1, code);
            wire::string(&mut out, 2, message);
            // DeniedHttpResponse (2): status (1) { code (1) }, headers (2), body (3).
            let headers = headers.as_slice();
            let status = u64::from(*status);
            let status_len = wire::varint_field_len(status);
            let denied_len = wire::field_len(1, status_len)
                + headers
                    .iter()
                    .map(|(k, v)| wire::field_len(1, wire::option_len(k, v)))
                    .sum::<usize>()
                + wire::string_len(body);
            wire::message(&mut out, 2, denied_len);
            wire::message(&mut out, 1, status_len);
            wire::varint_field(&mut out, 1, status);
            for (key, value) in headers {
                wire::header_option(&mut out, 2, key, value);
            }
            wire::string(&mut out, 3, body);
        }
    }
    if let Some(entries) = &answer.metadata {
        // CheckResponse.dynamic_metadata (4): a Struct of string values.
        let entries = entries.as_slice();
        let struct_len: usize = entries
            .iter()
            .map(|(k, v)| wire::field_len(1, wire::struct_entry_len(k, v)))
            .sum();
        wire::message(&mut out, 4, struct_len);
        for (key, value) in entries {
            wire::struct_entry(&mut out, key, value);
        }
    }
    Encoded(out)
}

/// Protobuf encoding of the few shapes a CheckResponse needs. Like prost, fields holding their
/// default value (empty string, zero) are left out, except inside a oneof.
mod wire {
    use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;

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

    const OVERWRITE: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as u64;

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

/// The reference encoding: the same answer built with the generated types, field by field.
/// Only tests use it.
#[cfg(test)]
pub(crate) mod reference {
    use super::*;

    use envoy_types::pb::envoy::config::core::v3::{
        HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
    };
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use envoy_types::pb::google::rpc;

    /// gRPC code OK, the status of every allow.
    const OK: i32 = 0;

    /// The reference: the same answer built with the generated types, field by field.
    pub fn build(answer: &Answer<'_>) -> CheckResponse {
        let overwrite = |name: &str, value: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: name.to_owned(),
                value: value.to_owned(),
                raw_value: Vec::new(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        };
        let (status, http_response) = match &answer.verdict {
            Verdict::Allow { set, remove } => (
                rpc::Status {
                    code: OK,
                    ..Default::default()
                },
                HttpResponse::OkResponse(OkHttpResponse {
                    headers: set
                        .as_slice()
                        .iter()
                        .map(|(k, v)| overwrite(k, v))
                        .collect(),
                    headers_to_remove: remove.as_slice().iter().map(|r| (*r).to_owned()).collect(),
                    ..Default::default()
                }),
            ),
            Verdict::Deny {
                code,
                message,
                status,
                headers,
                body,
            } => (
                rpc::Status {
                    code: *code,
                    message: (*message).to_owned(),
                    details: Vec::new(),
                },
                HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(*status),
                    }),
                    headers: headers
                        .as_slice()
                        .iter()
                        .map(|(k, v)| overwrite(k, v))
                        .collect(),
                    body: (*body).to_owned(),
                }),
            ),
        };
        let dynamic_metadata = answer.metadata.as_ref().map(|entries| Struct {
            fields: entries
                .as_slice()
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(Kind::StringValue((*v).to_owned())),
                        },
                    )
                })
                .collect(),
        });
        CheckResponse {
            status: Some(status),
            http_response: Some(http_response),
            dynamic_metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
    use prost::Message;

    use super::reference::build;
    use crate::check::{Decision, Denial, Outcome};
    use crate::config::UserHeaders;
    use crate::identity::User;
    use crate::response::Responder;

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

    #[test]
    fn the_encoded_answer_decodes_to_the_reference() {
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
        let decisions = [
            Decision::Allow,
            Decision::Deny(Denial::BadRequest),
            Decision::Deny(Denial::NotFound),
            Decision::Deny(Denial::Unauthenticated),
            Decision::Deny(Denial::Forbidden),
            Decision::Deny(Denial::Unavailable),
            Decision::Deny(Denial::LoginRedirect),
        ];
        let mut checked = 0;
        for (strict, metadata) in [(true, true), (false, true), (true, false), (false, false)] {
            // The decision id upstream too, in half of the cases: five headers set.
            let responder = Responder::new(strict, &headers)
                .with_dynamic_metadata(metadata)
                .with_decision_id_upstream(metadata);
            for decision in &decisions {
                for user in &users {
                    let outcome = Outcome {
                        decision: decision.clone(),
                        reason: crate::check::Reason::ExpressionFalse,
                        rule: None,
                        user: user.clone(),
                        identity_source: "none",
                        failure: None,
                        identity_cache: None,
                        identity_latency: None,
                        rbac: None,
                        location: (*decision == Decision::Deny(Denial::LoginRedirect))
                            .then(|| "https://login.example/?redirect=%2F".to_owned()),
                    };
                    let answer = responder.answer(&outcome, "6f1c2b1e-3d0a");
                    let want = build(&answer);
                    let encoded = encode(&answer);
                    assert_eq!(encoded.0.len(), want.encoded_len(), "{answer:?}");
                    let decoded = CheckResponse::decode(encoded.0.as_slice()).expect("decodes");
                    assert_eq!(decoded, want, "{answer:?}");
                    assert_eq!(decoded.dynamic_metadata.is_some(), metadata);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 4 * 7 * 4);
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
