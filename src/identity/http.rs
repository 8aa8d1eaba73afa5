//! What the HTTP-based identity sources (user-info, introspection, the JWKS fetcher) share:
//! bounded body reads and error descriptions that never carry a request's credentials.

use super::Failure;

/// Reads a body chunk by chunk, refusing it as soon as it passes `limit` (and at once when the
/// announced length does): an answer is never buffered whole before its size is known.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    reasons: Reasons,
) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::new(
            reasons.too_large,
            format!("the answer is larger than {limit} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::new(reasons.unreachable, describe(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The failure reasons a source reports for an oversized and for an unreadable answer.
#[derive(Debug, Clone, Copy)]
pub struct Reasons {
    pub too_large: &'static str,
    pub unreachable: &'static str,
}

/// A failed call's kind in one fixed word, for a trace span's `error.type`.
pub fn error_type(error: &reqwest::Error) -> &'static str {
    if error.is_connect() {
        "connection"
    } else if error.is_timeout() {
        "timeout"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// An error's kind and causes, without the request itself (its URL or body may hold a secret).
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "connection failed"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_body() || error.is_decode() {
        "reading the body failed"
    } else {
        "request failed"
    };
    let mut text = String::from(kind);
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
