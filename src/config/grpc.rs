//! Settings of the gRPC port's connections: limits, keepalives, connection age, TLS.
//!
//! Both front ends go through one validator: the native file's `server.connections` and
//! `server.tls` sections are deserialised into [`ConnectionsSection`] and [`TlsSection`], and the
//! environment variables below are read into the same two sections; [`validate`] then turns
//! them into [`GrpcSettings`] or lists every problem.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::duration;
use super::sources::Span;

pub const CHECKPOINT_GRPC_MAX_CONNECTIONS: &str = "CHECKPOINT_GRPC_MAX_CONNECTIONS";
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
pub const CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT: &str = "CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT";
pub const DEFAULT_MAX_CALLS_IN_FLIGHT: u64 = 2048;
pub const CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS: &str = "CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS";
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u64 = 256;
pub const CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE: &str = "CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE";
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u64 = 16 * 1024;
pub const CHECKPOINT_GRPC_MAX_MESSAGE_SIZE: &str = "CHECKPOINT_GRPC_MAX_MESSAGE_SIZE";
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 4 * 1024 * 1024;
pub const CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT: &str =
    "CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT";
pub const DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;
pub const CHECKPOINT_GRPC_KEEPALIVE_INTERVAL: &str = "CHECKPOINT_GRPC_KEEPALIVE_INTERVAL";
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT: &str = "CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT";
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
pub const CHECKPOINT_GRPC_TCP_KEEPALIVE: &str = "CHECKPOINT_GRPC_TCP_KEEPALIVE";
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
pub const CHECKPOINT_GRPC_TCP_NODELAY: &str = "CHECKPOINT_GRPC_TCP_NODELAY";
pub const DEFAULT_TCP_NODELAY: bool = true;
pub const CHECKPOINT_GRPC_IDLE_TIMEOUT: &str = "CHECKPOINT_GRPC_IDLE_TIMEOUT";
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const CHECKPOINT_GRPC_MAX_CONNECTION_AGE: &str = "CHECKPOINT_GRPC_MAX_CONNECTION_AGE";
pub const CHECKPOINT_GRPC_MAX_CONNECTION_AGE_GRACE: &str =
    "CHECKPOINT_GRPC_MAX_CONNECTION_AGE_GRACE";
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
pub const CHECKPOINT_GRPC_TLS_HANDSHAKE_TIMEOUT: &str = "CHECKPOINT_GRPC_TLS_HANDSHAKE_TIMEOUT";
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const CHECKPOINT_GRPC_TLS_CERT: &str = "CHECKPOINT_GRPC_TLS_CERT";
pub const CHECKPOINT_GRPC_TLS_KEY: &str = "CHECKPOINT_GRPC_TLS_KEY";
pub const CHECKPOINT_GRPC_TLS_CLIENT_CA: &str = "CHECKPOINT_GRPC_TLS_CLIENT_CA";

/// Every variable this module reads.
pub const ALL: &[&str] = &[
    CHECKPOINT_GRPC_MAX_CONNECTIONS,
    CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT,
    CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS,
    CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE,
    CHECKPOINT_GRPC_MAX_MESSAGE_SIZE,
    CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT,
    CHECKPOINT_GRPC_KEEPALIVE_INTERVAL,
    CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT,
    CHECKPOINT_GRPC_TCP_KEEPALIVE,
    CHECKPOINT_GRPC_TCP_NODELAY,
    CHECKPOINT_GRPC_IDLE_TIMEOUT,
    CHECKPOINT_GRPC_MAX_CONNECTION_AGE,
    CHECKPOINT_GRPC_MAX_CONNECTION_AGE_GRACE,
    CHECKPOINT_GRPC_TLS_HANDSHAKE_TIMEOUT,
    CHECKPOINT_GRPC_TLS_CERT,
    CHECKPOINT_GRPC_TLS_KEY,
    CHECKPOINT_GRPC_TLS_CLIENT_CA,
];

/// Validated connection settings of the gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcSettings {
    /// Past this many open connections a new one is closed at once.
    pub max_connections: usize,
    /// Calls in flight over every connection (a call holds its slot until its response is
    /// sent or dropped); past it a call gets RESOURCE_EXHAUSTED at once.
    pub max_calls_in_flight: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: the gRPC call's own headers (the request's HTTP
    /// headers travel inside the message).
    pub max_header_list_size: u32,
    /// Largest request message; larger is RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// Request message bytes held at once across every connection; past it a call is
    /// RESOURCE_EXHAUSTED. With the two limits above this bounds request memory.
    pub max_request_bytes_in_flight: usize,
    /// HTTP/2 PING interval; `None` disables it.
    pub keepalive_interval: Option<Duration>,
    /// A PING not answered within this closes the connection.
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time and interval; `None` disables it.
    pub tcp_keepalive: Option<Duration>,
    pub tcp_nodelay: bool,
    /// A connection without a call for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// After this age a connection gets GOAWAY, so clients reconnect (and spread over new
    /// replicas); `None`: connections never age.
    pub max_connection_age: Option<Duration>,
    /// How long an aged connection may finish its calls before it is closed.
    pub max_connection_age_grace: Duration,
    pub tls_handshake_timeout: Duration,
    pub tls: Option<TlsSettings>,
}

impl Default for GrpcSettings {
    fn default() -> GrpcSettings {
        match validate(
            &ConnectionsSection::default(),
            &TlsSection::default(),
            false,
        ) {
            Ok(settings) => settings,
            // The defaults are valid (a test holds them so); this arm is never taken.
            Err(_) => GrpcSettings {
                max_connections: DEFAULT_MAX_CONNECTIONS as usize,
                max_calls_in_flight: DEFAULT_MAX_CALLS_IN_FLIGHT as usize,
                max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS as u32,
                max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE as u32,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE as usize,
                max_request_bytes_in_flight: DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT as usize,
                keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
                tcp_nodelay: DEFAULT_TCP_NODELAY,
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                max_connection_age: None,
                max_connection_age_grace: DEFAULT_MAX_CONNECTION_AGE_GRACE,
                tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
                tls: None,
            },
        }
    }
}

/// TLS on the gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// `server.connections` in the native file; the environment variables map onto it.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// Open connections at most; past it a new connection is closed at once. Default 1024.
    pub max_connections: u64,
    /// Calls in flight over every connection; past it RESOURCE_EXHAUSTED. Default 2048.
    pub max_calls_in_flight: u64,
    /// HTTP/2 concurrent streams per connection. Default 256.
    pub max_concurrent_streams: u64,
    /// HTTP/2 header list size of a call, in bytes. Default 16384.
    pub max_header_list_size: u64,
    /// Largest CheckRequest message, in bytes. Default 4194304 (4 MiB).
    pub max_message_size: u64,
    /// Request message bytes held at once over all connections. Default 67108864 (64 MiB).
    pub max_request_bytes_in_flight: u64,
    /// HTTP/2 PING interval; 0 disables. Default 60s.
    pub keepalive_interval: Span,
    /// A PING unanswered this long closes the connection. Default 20s.
    pub keepalive_timeout: Span,
    /// TCP keepalive; 0 disables. Default 60s.
    pub tcp_keepalive: Span,
    /// TCP_NODELAY on accepted connections. Default true.
    #[serde(deserialize_with = "super::boolean::deserialize")]
    #[schemars(schema_with = "super::boolean::schema")]
    pub tcp_nodelay: bool,
    /// Close a connection without a call for this long; 0: never. Default 10m.
    pub idle_timeout: Span,
    /// GOAWAY after this age so that clients reconnect; 0: never. Default 0.
    pub max_connection_age: Span,
    /// Time an aged connection gets to finish its calls. Default 30s.
    pub max_connection_age_grace: Span,
    /// Bound of a TLS handshake. Default 10s.
    pub tls_handshake_timeout: Span,
}

impl Default for ConnectionsSection {
    fn default() -> ConnectionsSection {
        ConnectionsSection {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_calls_in_flight: DEFAULT_MAX_CALLS_IN_FLIGHT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_request_bytes_in_flight: DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT,
            keepalive_interval: Span(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: Span(DEFAULT_KEEPALIVE_TIMEOUT),
            tcp_keepalive: Span(DEFAULT_TCP_KEEPALIVE),
            tcp_nodelay: DEFAULT_TCP_NODELAY,
            idle_timeout: Span(DEFAULT_IDLE_TIMEOUT),
            max_connection_age: Span(Duration::ZERO),
            max_connection_age_grace: Span(DEFAULT_MAX_CONNECTION_AGE_GRACE),
            tls_handshake_timeout: Span(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
        }
    }
}

/// `server.tls` in the native file: all three optional; `cert` and `key` go together.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain of the gRPC port; with `key`, the port speaks TLS only.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it issued (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The one validator of both front ends. Field names in problems are the native file's; the
/// environment path names its variables instead (see [`from_env`]).
///
/// `on_unix_socket`: the gRPC address is a Unix socket, where TLS does not apply (the socket's
/// file permissions are its access control); TLS settings there are refused rather than
/// silently ignored.
pub fn validate(
    connections: &ConnectionsSection,
    tls: &TlsSection,
    on_unix_socket: bool,
) -> Result<GrpcSettings, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    if on_unix_socket {
        for (field, set) in [
            ("tls.cert", tls.cert.is_some()),
            ("tls.key", tls.key.is_some()),
            ("tls.client_ca", tls.client_ca.is_some()),
        ] {
            if set {
                problems.push((
                    field,
                    "TLS does not apply to a Unix socket gRPC address (its file mode is the access control): remove it or serve on TCP".to_owned(),
                ));
            }
        }
    }
    let mut range = |field: &'static str, value: u64, min: u64, max: u64| -> u64 {
        if value < min || value > max {
            problems.push((field, format!("{value} is not between {min} and {max}")));
        }
        value.clamp(min, max)
    };
    let max_connections = range("max_connections", connections.max_connections, 1, 1 << 20);
    let max_calls_in_flight = range(
        "max_calls_in_flight",
        connections.max_calls_in_flight,
        1,
        1 << 20,
    );
    let max_concurrent_streams = range(
        "max_concurrent_streams",
        connections.max_concurrent_streams,
        1,
        u64::from(u32::MAX),
    );
    let max_header_list_size = range(
        "max_header_list_size",
        connections.max_header_list_size,
        1024,
        1 << 24,
    );
    let max_message_size = range(
        "max_message_size",
        connections.max_message_size,
        1024,
        1 << 30,
    );
    let max_request_bytes_in_flight = range(
        "max_request_bytes_in_flight",
        connections.max_request_bytes_in_flight,
        1024,
        1 << 40,
    );
    if max_request_bytes_in_flight < max_message_size {
        problems.push((
            "max_request_bytes_in_flight",
            format!(
                "{max_request_bytes_in_flight} is less than max_message_size ({max_message_size}): no message that size could ever be read"
            ),
        ));
    }
    let nonzero = |span: &Span| (!span.0.is_zero()).then_some(span.0);
    if connections.keepalive_timeout.0.is_zero() {
        problems.push(("keepalive_timeout", "must be more than 0".to_owned()));
    }
    if connections.tls_handshake_timeout.0.is_zero() {
        problems.push(("tls_handshake_timeout", "must be more than 0".to_owned()));
    }
    let tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: tls.client_ca.clone(),
        }),
        (None, None) => {
            if tls.client_ca.is_some() {
                problems.push((
                    "tls.client_ca",
                    "needs tls.cert and tls.key: client certificates are only asked for over TLS"
                        .to_owned(),
                ));
            }
            None
        }
        (Some(_), None) => {
            problems.push(("tls.key", "missing: tls.cert needs its key".to_owned()));
            None
        }
        (None, Some(_)) => {
            problems.push((
                "tls.cert",
                "missing: tls.key needs its certificate".to_owned(),
            ));
            None
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(GrpcSettings {
        max_connections: max_connections as usize,
        max_calls_in_flight: max_calls_in_flight as usize,
        max_concurrent_streams: max_concurrent_streams as u32,
        max_header_list_size: max_header_list_size as u32,
        max_message_size: max_message_size as usize,
        max_request_bytes_in_flight: max_request_bytes_in_flight as usize,
        keepalive_interval: nonzero(&connections.keepalive_interval),
        keepalive_timeout: connections.keepalive_timeout.0,
        tcp_keepalive: nonzero(&connections.tcp_keepalive),
        tcp_nodelay: connections.tcp_nodelay,
        idle_timeout: nonzero(&connections.idle_timeout),
        max_connection_age: nonzero(&connections.max_connection_age),
        max_connection_age_grace: connections.max_connection_age_grace.0,
        tls_handshake_timeout: connections.tls_handshake_timeout.0,
        tls,
    })
}

/// The environment variable of a native-file field, for problems found on the environment path.
fn variable(field: &str) -> &'static str {
    match field {
        "max_connections" => CHECKPOINT_GRPC_MAX_CONNECTIONS,
        "max_calls_in_flight" => CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT,
        "max_concurrent_streams" => CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS,
        "max_header_list_size" => CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE,
        "max_message_size" => CHECKPOINT_GRPC_MAX_MESSAGE_SIZE,
        "max_request_bytes_in_flight" => CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT,
        "keepalive_interval" => CHECKPOINT_GRPC_KEEPALIVE_INTERVAL,
        "keepalive_timeout" => CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT,
        "tcp_keepalive" => CHECKPOINT_GRPC_TCP_KEEPALIVE,
        "tcp_nodelay" => CHECKPOINT_GRPC_TCP_NODELAY,
        "idle_timeout" => CHECKPOINT_GRPC_IDLE_TIMEOUT,
        "max_connection_age" => CHECKPOINT_GRPC_MAX_CONNECTION_AGE,
        "max_connection_age_grace" => CHECKPOINT_GRPC_MAX_CONNECTION_AGE_GRACE,
        "tls_handshake_timeout" => CHECKPOINT_GRPC_TLS_HANDSHAKE_TIMEOUT,
        "tls.cert" => CHECKPOINT_GRPC_TLS_CERT,
        "tls.key" => CHECKPOINT_GRPC_TLS_KEY,
        _ => CHECKPOINT_GRPC_TLS_CLIENT_CA,
    }
}

/// Reads the variables into the two sections and validates them; problems are
/// `(variable, message)`.
pub fn from_env(
    vars: &HashMap<String, String>,
    on_unix_socket: bool,
) -> Result<GrpcSettings, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    let get = |name: &str| {
        vars.get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut connections = ConnectionsSection::default();
    let mut number = |name: &'static str, slot: &mut u64| {
        if let Some(text) = get(name) {
            match text.parse() {
                Ok(value) => *slot = value,
                Err(_) => problems.push((name, format!("\"{text}\" is not a whole number"))),
            }
        }
    };
    number(
        CHECKPOINT_GRPC_MAX_CONNECTIONS,
        &mut connections.max_connections,
    );
    number(
        CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT,
        &mut connections.max_calls_in_flight,
    );
    number(
        CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS,
        &mut connections.max_concurrent_streams,
    );
    number(
        CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE,
        &mut connections.max_header_list_size,
    );
    number(
        CHECKPOINT_GRPC_MAX_MESSAGE_SIZE,
        &mut connections.max_message_size,
    );
    number(
        CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT,
        &mut connections.max_request_bytes_in_flight,
    );
    let mut span = |name: &'static str, slot: &mut Span| {
        if let Some(text) = get(name) {
            match duration::parse(&text) {
                Ok(value) => *slot = Span(value),
                Err(message) => problems.push((name, message)),
            }
        }
    };
    span(
        CHECKPOINT_GRPC_KEEPALIVE_INTERVAL,
        &mut connections.keepalive_interval,
    );
    span(
        CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT,
        &mut connections.keepalive_timeout,
    );
    span(
        CHECKPOINT_GRPC_TCP_KEEPALIVE,
        &mut connections.tcp_keepalive,
    );
    span(CHECKPOINT_GRPC_IDLE_TIMEOUT, &mut connections.idle_timeout);
    span(
        CHECKPOINT_GRPC_MAX_CONNECTION_AGE,
        &mut connections.max_connection_age,
    );
    span(
        CHECKPOINT_GRPC_MAX_CONNECTION_AGE_GRACE,
        &mut connections.max_connection_age_grace,
    );
    span(
        CHECKPOINT_GRPC_TLS_HANDSHAKE_TIMEOUT,
        &mut connections.tls_handshake_timeout,
    );
    if let Some(text) = get(CHECKPOINT_GRPC_TCP_NODELAY) {
        match super::boolean::parse(&text) {
            Ok(value) => connections.tcp_nodelay = value,
            Err(message) => problems.push((CHECKPOINT_GRPC_TCP_NODELAY, message)),
        }
    }
    let tls = TlsSection {
        cert: get(CHECKPOINT_GRPC_TLS_CERT).map(PathBuf::from),
        key: get(CHECKPOINT_GRPC_TLS_KEY).map(PathBuf::from),
        client_ca: get(CHECKPOINT_GRPC_TLS_CLIENT_CA).map(PathBuf::from),
    };
    match validate(&connections, &tls, on_unix_socket) {
        Ok(settings) if problems.is_empty() => Ok(settings),
        Ok(_) => Err(problems),
        Err(found) => {
            problems.extend(found.into_iter().map(|(field, m)| (variable(field), m)));
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        let settings = validate(
            &ConnectionsSection::default(),
            &TlsSection::default(),
            false,
        )
        .expect("valid defaults");
        assert_eq!(settings, GrpcSettings::default());
        assert_eq!(settings.max_concurrent_streams, 256);
        assert_eq!(settings.max_connection_age, None);
        assert_eq!(from_env(&HashMap::new(), false), Ok(settings));
    }

    #[test]
    fn both_front_ends_refuse_the_same_values() {
        let env: HashMap<String, String> = [
            (CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS, "0"),
            (CHECKPOINT_GRPC_MAX_MESSAGE_SIZE, "2048"),
            (CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT, "1024"),
            (CHECKPOINT_GRPC_TLS_CLIENT_CA, "ca.pem"),
            (CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT, "0s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let from_env = from_env(&env, false).expect_err("invalid");
        let connections = ConnectionsSection {
            max_concurrent_streams: 0,
            max_message_size: 2048,
            max_request_bytes_in_flight: 1024,
            keepalive_timeout: Span(Duration::ZERO),
            ..ConnectionsSection::default()
        };
        let tls = TlsSection {
            client_ca: Some("ca.pem".into()),
            ..TlsSection::default()
        };
        let from_file = validate(&connections, &tls, false).expect_err("invalid");
        let fields: Vec<&str> = from_file.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "max_concurrent_streams",
                "max_request_bytes_in_flight",
                "keepalive_timeout",
                "tls.client_ca"
            ]
        );
        let variables: Vec<&str> = from_env.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            variables,
            [
                CHECKPOINT_GRPC_MAX_CONCURRENT_STREAMS,
                CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT,
                CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT,
                CHECKPOINT_GRPC_TLS_CLIENT_CA
            ]
        );
        let messages = |p: &[(&str, String)]| p.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>();
        assert_eq!(messages(&from_env), messages(&from_file));
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let tls = TlsSection {
            cert: Some("cert.pem".into()),
            ..TlsSection::default()
        };
        let problems = validate(&ConnectionsSection::default(), &tls, false).expect_err("invalid");
        assert_eq!(problems[0].0, "tls.key");
    }

    #[test]
    fn tls_on_a_unix_socket_is_refused_not_ignored() {
        let tls = TlsSection {
            cert: Some("cert.pem".into()),
            key: Some("key.pem".into()),
            client_ca: Some("ca.pem".into()),
        };
        assert!(validate(&ConnectionsSection::default(), &tls, false).is_ok());
        let problems = validate(&ConnectionsSection::default(), &tls, true).expect_err("refused");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["tls.cert", "tls.key", "tls.client_ca"]);
        let env: HashMap<String, String> = [(CHECKPOINT_GRPC_TLS_CLIENT_CA, "ca.pem")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let problems = from_env(&env, true).expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|(v, m)| *v == CHECKPOINT_GRPC_TLS_CLIENT_CA && m.contains("Unix socket"))
        );
    }
}
