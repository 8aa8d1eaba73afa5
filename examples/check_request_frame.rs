//! Helper of the load benchmark (`scripts/bench-load.sh`): writes the body h2load sends and reads
//! the body it gets back.
//!
//! - `check_request_frame encode OUT [--token T] [--path P] [--method M] [--client-type C]`
//!   writes one gRPC message (5-byte frame header + protobuf `CheckRequest`) shaped like what
//!   Envoy sends by default: the `headers` map, pseudo-headers included, fifteen headers. An
//!   empty token means an anonymous request, without an `authorization` header.
//! - `check_request_frame decode FILE` reads a gRPC-framed `CheckResponse` (the body `curl`
//!   saved) and prints one line per fact: `status 0`, `header miauserid=alice`,
//!   `remove miausergroups`, `denied 401`. The script greps these lines to prove that the
//!   bytes it loads the server with really get an allow.

use anyhow::{Context, bail};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message;

#[path = "shared/envoy_request.rs"]
mod envoy_request;
use envoy_request::check_request;

const USAGE: &str = "usage: check_request_frame encode OUT [--token T] [--path P] [--method M] \
                     [--client-type C]\n       check_request_frame decode FILE";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("encode") => encode(&args[1..]),
        Some("decode") => decode(args.get(1).context(USAGE)?),
        _ => bail!("{USAGE}"),
    }
}

fn encode(args: &[String]) -> anyhow::Result<()> {
    let out = args.first().context(USAGE)?;
    let mut token = String::from("bench-token");
    let mut path = String::from("/api/users/42?view=full");
    let mut method = String::from("GET");
    let mut client_type = String::from("web");
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--token" => token.clone_from(value),
            "--path" => path.clone_from(value),
            "--method" => method.clone_from(value),
            "--client-type" => client_type.clone_from(value),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    let message = check_request(&method, &path, &token, &client_type);
    std::fs::write(out, frame(&message)).with_context(|| format!("writing {out}"))?;
    Ok(())
}

/// The gRPC length-prefixed message: flag byte 0 (not compressed), big-endian length, message.
fn frame(message: &CheckRequest) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode(file: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    if bytes.len() < 5 {
        bail!("{file}: {} bytes, not a gRPC message", bytes.len());
    }
    if bytes[0] != 0 {
        bail!("{file}: compressed gRPC message");
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let body = bytes
        .get(5..5 + len)
        .with_context(|| format!("{file}: truncated gRPC message"))?;
    let response = CheckResponse::decode(body).context("not a CheckResponse")?;
    let code = response.status.as_ref().map_or(0, |s| s.code);
    println!("status {code}");
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            for option in ok.headers {
                if let Some(h) = option.header {
                    println!("header {}={}", h.key, h.value);
                }
            }
            for name in ok.headers_to_remove {
                println!("remove {name}");
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            println!("denied {}", denied.status.map_or(0, |s| s.code));
        }
        Some(HttpResponse::ErrorResponse(error)) => {
            println!("error {}", error.status.map_or(0, |s| s.code));
        }
        None => {}
    }
    Ok(())
}
