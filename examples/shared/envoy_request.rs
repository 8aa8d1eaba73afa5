//! The `CheckRequest` Envoy sends, shared by the examples that load checkpoint
//! (`check_request_frame`, `pgo_training`) as a `#[path]` module: an example cannot import
//! another, and both must send the same message.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// A `CheckRequest` as Envoy 1.40 sends it for an HTTP/1.1 request through a plain listener.
pub fn check_request(method: &str, path: &str, token: &str, client_type: &str) -> CheckRequest {
    let request_id = "6f1c2b1e-3d0a-4c8e-9a51-0c3f6a7b8d90";
    let authorization = format!("Bearer {token}");
    let headers: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("authorization", authorization.as_str()),
        ("client-type", client_type),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
        ("x-forwarded-for", "10.0.0.7"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", request_id),
        ("x-envoy-expected-rq-timeout-ms", "30000"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .into_iter()
    // An empty token means an anonymous request: no authorization header at all.
    .filter(|(k, _)| !(token.is_empty() && *k == "authorization"))
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let address = |port: u32| {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(address(40512)),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(address(10000)),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: request_id.into(),
                    method: method.into(),
                    headers,
                    path: path.into(),
                    host: "api.example.com".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
