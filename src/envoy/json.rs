//! `CheckRequest` and `CheckResponse` in protobuf's JSON mapping (proto3 JSON: what grpcurl
//! reads and prints, and what a capture of Envoy's calls holds), for `checkpoint explain` and
//! `checkpoint test`. Not on the request path.
//!
//! The mapping is prost-reflect's, over the descriptor set reflection serves
//! ([`super::DESCRIPTOR_SET`]). A JSON request is turned into the message's bytes and read by
//! the one decoder ([`super::decode`]), and an answer is the one encoder's bytes
//! ([`super::encode`]) shown as JSON: what is explained is exactly what the server reads and
//! sends.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::{Encoded, decode};
use crate::request::Request;

const CHECK_REQUEST: &str = "envoy.service.auth.v3.CheckRequest";
const CHECK_RESPONSE: &str = "envoy.service.auth.v3.CheckResponse";

/// Why a JSON document is not a `CheckRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CheckRequest in protobuf's JSON mapping: {0}")]
pub struct JsonError(String);

fn pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(super::DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| JsonError(format!("the built-in descriptor set: {e}")))
}

fn descriptor(name: &str) -> Result<MessageDescriptor, JsonError> {
    pool()?
        .get_message_by_name(name)
        .ok_or_else(|| JsonError(format!("{name} is not in the built-in descriptor set")))
}

/// Reads a `CheckRequest` written as JSON text; errors name the line and column.
pub fn request_from_str(text: &str) -> Result<Request, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(descriptor(CHECK_REQUEST)?, &mut deserializer)
        .and_then(|m| deserializer.end().map(|()| m))
        .map_err(|e| JsonError(e.to_string()))?;
    to_request(&message)
}

/// Reads a `CheckRequest` already parsed as JSON (a case of a test file).
pub fn request_from_value(value: &serde_json::Value) -> Result<Request, JsonError> {
    let message = DynamicMessage::deserialize(descriptor(CHECK_REQUEST)?, value)
        .map_err(|e| JsonError(e.to_string()))?;
    to_request(&message)
}

fn to_request(message: &DynamicMessage) -> Result<Request, JsonError> {
    decode(&message.encode_to_vec()).map_err(|e| JsonError(e.to_string()))
}

/// The encoded answer as JSON, fields with default values left out (as grpcurl prints it).
pub fn response_to_value(encoded: &Encoded) -> Result<serde_json::Value, JsonError> {
    let message = DynamicMessage::decode(descriptor(CHECK_RESPONSE)?, encoded.0.as_slice())
        .map_err(|e| JsonError(format!("the encoded CheckResponse: {e}")))?;
    serde_json::to_value(&message).map_err(|e| JsonError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Method;

    #[test]
    fn grpcurl_json_is_read_by_the_one_decoder() {
        let request = request_from_str(
            r#"{"attributes":{"request":{"http":{"method":"GET","path":"/a/../b?x=1",
               "headers":{"authorization":"Bearer t","x-request-id":"r1"}}},
               "source":{"principal":"spiffe://x"}}}"#,
        )
        .expect("a CheckRequest");
        assert_eq!(request.method, Some(Method::Get));
        assert_eq!(request.path.as_deref(), Ok("/b"));
        assert_eq!(request.header("authorization"), Some("Bearer t"));
        assert_eq!(request.request_id, "r1");
        assert_eq!(request.principal, "spiffe://x");

        // The pair form, as Envoy sends it with encode_raw_headers (raw_value is base64).
        let request = request_from_value(&serde_json::json!({"attributes":{"request":{"http":{
            "method":"POST","path":"/p",
            "headerMap":{"headers":[{"key":"x-a","rawValue":"b25l"},{"key":"X-A","value":"two"}]}}}}}))
        .expect("a CheckRequest");
        assert_eq!(request.header("x-a"), Some("one,two"));
    }

    #[test]
    fn what_is_not_a_check_request_says_where() {
        let err = request_from_str("{\"attributes\": {\"request\": {\"htp\": {}}}}").unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
        let err = request_from_str("{\n \"attributes\": 3\n}").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
