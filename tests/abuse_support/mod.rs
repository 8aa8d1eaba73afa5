//! Support for tests/abuse.rs: the real binary as a child process and its memory, a
//! well-behaved client, and clients that misbehave on purpose: an `h2` client for flow-control
//! and stream abuse, and [`Raw`], which writes HTTP/2 frames and HPACK fields by hand for what
//! no library would send.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a failed set-up should stop the test loudly.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// `/` is public; `/admin` wants the `admin` group (identity from Mia's trusted headers).
const RULES: &str = r#"{
  "/": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/admin": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }
}"#;

pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
pub const REFLECTION_PATH: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// The checkpoint binary, serving on free loopback ports; killed and reaped on drop.
pub struct Checkpoint {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Checkpoint {
    /// Starts the binary with the rules above, `vars` on top of the few it needs, and waits
    /// until `/-/ready` answers 200.
    pub async fn start(vars: &[(&str, &str)]) -> Checkpoint {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("auth.json"), RULES).expect("write rules");
        let [grpc, http] = free_ports();
        let (grpc, http) = (
            SocketAddr::from(([127, 0, 0, 1], grpc)),
            SocketAddr::from(([127, 0, 0, 1], http)),
        );
        let out = std::fs::File::create(dir.path().join("out")).expect("stdout file");
        let err = std::fs::File::create(dir.path().join("err")).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
            .env_clear()
            .env("CONFIGURATION_PATH", dir.path())
            .env("CONFIGURATION_FILE_NAME", "auth")
            .env("TRUST_MIA_USER_HEADERS", "true")
            .env("CHECKPOINT_GRPC_ADDR", grpc.to_string())
            .env("CHECKPOINT_HTTP_ADDR", http.to_string())
            .env("CHECKPOINT_WORKER_THREADS", "2")
            .env("DELAY_SHUTDOWN_SECONDS", "0")
            .env("LOG_LEVEL", "warn")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start checkpoint");
        let mut server = Checkpoint {
            child,
            grpc,
            http,
            dir,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_get(self.http, "/-/ready")
                .await
                .starts_with("HTTP/1.1 200")
            {
                return;
            }
            self.assert_running();
            if Instant::now() > deadline {
                self.fail("did not become ready within 20s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics, with what the server printed, if it has exited (a crash, a panic, an abort).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.fail(&format!("exited ({status})"));
        }
    }

    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "checkpoint {why}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            tail(&self.read("err")),
            tail(&self.read("out"))
        );
    }

    /// What the server logged on stdout.
    pub fn logs(&self) -> String {
        self.read("out")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The server's resident memory now and at its peak, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Memory {
        let path = PathBuf::from(format!("/proc/{}/status", self.pid()));
        let status = std::fs::read_to_string(&path).expect("read /proc/<pid>/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
        };
        Memory {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Makes the next [`Checkpoint::memory`] report its peak from now on (not from startup):
    /// writing 5 to `/proc/<pid>/clear_refs` resets VmHWM.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("reset the peak RSS through /proc/<pid>/clear_refs");
    }

    /// The memory a scenario starts from: a few Checks served first (lazy buffers allocated),
    /// then the peak reset.
    pub async fn baseline(&mut self) -> Memory {
        self.assert_served().await;
        self.reset_peak();
        self.memory()
    }

    /// Panics unless the peak since `baseline` stayed under `baseline + bound_mib`; returns the
    /// growth in MiB for the report.
    pub fn assert_memory_bounded(&self, baseline: Memory, bound_mib: u64, what: &str) -> f64 {
        let now = self.memory();
        let growth = now.peak_kib.saturating_sub(baseline.rss_kib);
        eprintln!(
            "{what}: RSS baseline {:.1} MiB, peak {:.1} MiB (+{:.1} MiB), now {:.1} MiB",
            mib(baseline.rss_kib),
            mib(now.peak_kib),
            mib(growth),
            mib(now.rss_kib),
        );
        if growth > bound_mib * 1024 {
            self.fail(&format!(
                "{what}: resident memory grew {:.1} MiB over its baseline of {:.1} MiB; the bound is {bound_mib} MiB",
                mib(growth),
                mib(baseline.rss_kib)
            ));
        }
        mib(growth)
    }

    /// A well-behaved client on a fresh connection gets the right answers, promptly.
    pub async fn assert_served(&mut self) {
        self.assert_running();
        if let Err(why) = good_client(self.grpc).await {
            self.fail(&format!("did not serve the well-behaved client: {why}"));
        }
    }

    /// Retries the well-behaved client until it is served or `limit` passes; how long it took.
    pub async fn served_within(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            match good_client(self.grpc).await {
                Ok(()) => return started.elapsed(),
                Err(why) if started.elapsed() > limit => self.fail(&format!(
                    "did not serve the well-behaved client again within {limit:?}: {why}"
                )),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A channel for a well-behaved client (one connection, reconnected by tonic if it closes).
    pub async fn channel(&self) -> Channel {
        endpoint(self.grpc).connect().await.expect("connect")
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    /// VmHWM: the highest RSS since the process started or since [`Checkpoint::reset_peak`].
    pub peak_kib: u64,
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Free loopback ports: all bound at once (so they differ), then released for the child.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().expect("local addr").port();
    }
    ports
}

/// One HTTP/1.1 GET with `connection: close`: the whole answer as text ("" if none).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: checkpoint\r\nconnection: close\r\n\r\n");
    http1(addr, &request).await
}

/// Sends `request` as it is and reads the answer until the server closes (bounded: 5 s).
pub async fn http1(addr: SocketAddr, request: &str) -> String {
    let exchange = async {
        let mut socket = TcpStream::connect(addr).await.ok()?;
        socket.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// How long a well-behaved client waits for a connection or an answer.
pub const PATIENCE: Duration = Duration::from_secs(3);

pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(PATIENCE)
        .timeout(PATIENCE)
}

/// On a fresh connection: a public route is allowed, an admin route is allowed for an admin
/// and denied (403) for anyone else. `Err` says what went wrong.
pub async fn good_client(addr: SocketAddr) -> Result<(), String> {
    let channel = tokio::time::timeout(PATIENCE, endpoint(addr).connect())
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    good_checks(channel).await
}

/// The three Checks of [`good_client`] on `channel`.
pub async fn good_checks(channel: Channel) -> Result<(), String> {
    let mut client = AuthorizationClient::new(channel);
    let cases = [
        ("/", vec![], 200),
        (
            "/admin",
            vec![("miauserid", "alice"), ("miausergroups", "admin")],
            200,
        ),
        (
            "/admin",
            vec![("miauserid", "bob"), ("miausergroups", "users")],
            403,
        ),
    ];
    for (path, headers, want) in cases {
        let response = client
            .check(check_request("GET", path, &headers))
            .await
            .map_err(|status| format!("GET {path}: {status}"))?
            .into_inner();
        let got = http_status(&response);
        if got != want {
            return Err(format!("GET {path}: answered {got}, expected {want}"));
        }
    }
    Ok(())
}

/// 200 for an OK response, else the denied HTTP status (0 if neither).
pub fn http_status(response: &CheckResponse) -> u16 {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => denied
            .status
            .as_ref()
            .map_or(0, |s| u16::try_from(s.code).unwrap_or(0)),
        _ => 0,
    }
}

/// A Check request in Envoy's map form.
pub fn check_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut http = HttpRequest {
        method: method.into(),
        path: path.into(),
        host: "api.example".into(),
        ..Default::default()
    };
    for (k, v) in headers {
        http.headers.insert((*k).to_owned(), (*v).to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A public Check (`GET /`), framed as one gRPC message.
pub fn public_check_message() -> Bytes {
    grpc_message(&check_request("GET", "/", &[]).encode_to_vec())
}

/// A reflection request for the largest file the server describes (`validate/validate.proto`,
/// 43 KB): the largest answer this server gives.
pub fn reflection_message() -> Bytes {
    let file = b"validate/validate.proto";
    // ServerReflectionRequest field 3, file_by_filename.
    let mut message = vec![0x1a, file.len() as u8];
    message.extend_from_slice(file);
    grpc_message(&message)
}

/// A gRPC length-prefixed message (uncompressed).
pub fn grpc_message(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// The request head of a gRPC call on `path`, for an `h2` client.
pub fn grpc_head(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://checkpoint{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request head")
}

/// An `h2` client connection with `builder`'s settings; its connection task runs in the
/// background and reports how it ended.
pub async fn h2_connect(
    addr: SocketAddr,
    builder: &h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = builder.handshake(socket).await.expect("h2 handshake");
    (send, tokio::spawn(connection))
}

/// `grpc-status` of an answer: from the trailers-only head, else from its trailers.
pub async fn grpc_status(response: h2::client::ResponseFuture) -> Result<String, String> {
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("stream error: {e}"))?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Ok(status.to_str().unwrap_or("?").to_owned());
    }
    let mut body = response.into_body();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.data())
        .await
        .map_err(|_| "no body".to_owned())?
    {
        let chunk = chunk.map_err(|e| format!("body error: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = tokio::time::timeout(PATIENCE, body.trailers())
        .await
        .map_err(|_| "no trailers".to_owned())?
        .map_err(|e| format!("trailers error: {e}"))?
        .ok_or_else(|| "no trailers".to_owned())?;
    trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap_or("?").to_owned())
        .ok_or_else(|| "no grpc-status".to_owned())
}

// ---- HTTP/2 clients that misbehave ----

/// A complete public Check on a new stream of `send`: its `grpc-status`, or why no answer came.
pub async fn probe(send: &h2::client::SendRequest<Bytes>) -> Result<String, String> {
    let mut ready = tokio::time::timeout(PATIENCE, send.clone().ready())
        .await
        .map_err(|_| "no stream slot".to_owned())?
        .map_err(|e| format!("{e}"))?;
    let (response, mut body) = ready
        .send_request(grpc_head(CHECK_PATH), false)
        .map_err(|e| format!("{e}"))?;
    body.send_data(public_check_message(), true)
        .map_err(|e| format!("{e}"))?;
    grpc_status(response).await
}

/// A Check on `send` whose message announces `announced` bytes, of which only `sent` (prefix
/// included) are sent before it stalls; the stream stays open.
pub fn stalled_sender(
    send: &mut h2::client::SendRequest<Bytes>,
    announced: usize,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let (response, mut body) = send
        .send_request(grpc_head(CHECK_PATH), false)
        .expect("send");
    let mut data = Vec::with_capacity(sent.max(5));
    data.push(0);
    data.extend_from_slice(&(announced as u32).to_be_bytes());
    data.resize(sent.max(5), 0);
    body.send_data(data.into(), false).expect("data");
    (response, body)
}

/// `grpc-status` of an answer whose head has arrived within `wait` ("none" in a head without
/// it, which starts an answer); `None` while no head has arrived.
pub async fn refused_with(
    response: &mut h2::client::ResponseFuture,
    wait: Duration,
) -> Option<String> {
    let head = tokio::time::timeout(wait, response).await.ok()?;
    let head = head.expect("an answer, not a reset");
    Some(
        head.headers()
            .get("grpc-status")
            .map_or("none", |v| v.to_str().unwrap_or("?"))
            .to_owned(),
    )
}

pub const MIB: usize = 1024 * 1024;

/// Calls on one connection whose receive window is 0: the server can send their heads but none
/// of their messages, and the client never reads.
pub struct NeverReading {
    pub send: h2::client::SendRequest<Bytes>,
    _calls: Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
    _connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
    /// Calls whose answer started and is stuck: Checks, reflection calls.
    pub stuck: (usize, usize),
    /// Reflection calls refused (RESOURCE_EXHAUSTED).
    pub refused: usize,
}

/// Opens `calls` calls on a new never-reading connection: every `check_every`-th a Check, the
/// others reflection calls that ask twice for the largest answer (43 KB).
pub async fn never_reading(server: &Checkpoint, calls: usize, check_every: usize) -> NeverReading {
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let (send, connection) = h2_connect(server.grpc, &builder).await;
    let mut opened = Vec::new();
    for i in 0..calls {
        let ready = tokio::time::timeout(PATIENCE, send.clone().ready()).await;
        let mut ready = ready.expect("a stream slot").expect("ready");
        let check = i % check_every == 0;
        let (path, message) = if check {
            (CHECK_PATH, public_check_message())
        } else {
            let once = reflection_message();
            (REFLECTION_PATH, [once.clone(), once].concat().into())
        };
        let (response, mut body) = ready.send_request(grpc_head(path), false).expect("send");
        // A refused reflection call may be over (answered and reset) before its message goes.
        let _ = body.send_data(message, true);
        opened.push((check, response, body));
    }
    let (mut stuck, mut refused) = ((0, 0), 0);
    let mut kept = Vec::new();
    for (check, mut response, body) in opened {
        match refused_with(&mut response, Duration::from_millis(500))
            .await
            .as_deref()
        {
            Some("8") if !check => refused += 1,
            None | Some("none") if check => stuck.0 += 1,
            None | Some("none") => stuck.1 += 1,
            other => panic!("check {check}: unexpected answer {other:?}"),
        }
        kept.push((response, body));
    }
    NeverReading {
        send,
        _calls: kept,
        _connection: connection,
        stuck,
        refused,
    }
}

// ---- HTTP/2 by hand ----

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: the 9-byte header (24-bit length, type, flags, 31-bit stream id) and its payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first` (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded.
fn hpack_string(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

/// A literal header field without indexing, with a literal name (RFC 7541 section 6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// A literal header field with incremental indexing, with a literal name (section 6.2.1): the
/// field also enters the decoder's dynamic table, at index 62.
pub fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x40);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// An indexed header field (section 6.1).
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// The header block of a Check call.
pub fn check_block() -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", CHECK_PATH),
        (":authority", "checkpoint"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, name.as_bytes(), value.as_bytes());
    }
    block
}

/// What a hand-written client saw until the server closed the connection, or until it gave up.
#[derive(Debug, Default)]
pub struct Seen {
    /// When the server closed the connection (EOF or reset), from the start of the wait.
    pub closed_after: Option<Duration>,
    /// The error code of the last GOAWAY.
    pub goaway: Option<u32>,
    /// RST_STREAM frames received, by error code.
    pub resets: BTreeMap<u32, usize>,
    /// HEADERS frames (answers) received.
    pub headers: usize,
    pub frames: usize,
    /// When the last frame arrived, from the start of the wait.
    pub last_frame_after: Option<Duration>,
}

/// The client preface and an empty SETTINGS frame: all an HTTP/2 connection needs to start.
pub fn hello() -> Vec<u8> {
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello
}

/// Reads (and drops) whatever `socket` receives until the server closes it or `limit` passes:
/// the socket back, and when it was closed if it was.
pub async fn closed_within(
    mut socket: TcpStream,
    limit: Duration,
) -> (TcpStream, Option<Duration>) {
    let started = Instant::now();
    let mut chunk = vec![0u8; 16 * 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok();
    (socket, closed)
}

/// A client that writes HTTP/2 frames by hand.
pub struct Raw {
    pub socket: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and sends the preface and an empty SETTINGS frame (it never ACKs the server's).
    pub async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw {
            socket: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        };
        raw.socket.write_all(&hello()).await.expect("preface");
        raw
    }

    /// Writes `bytes`, giving up after `limit` (a server that stopped reading pushes back);
    /// returns how many bytes were written. A peer that closed ends the write early.
    pub async fn send_within(&mut self, bytes: &[u8], limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        let mut written = 0;
        while written < bytes.len() {
            let end = (written + 64 * 1024).min(bytes.len());
            match tokio::time::timeout_at(deadline, self.socket.write(&bytes[written..end])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => written += n,
            }
        }
        written
    }

    /// Reads and tallies frames until the server closes the connection or `limit` passes.
    pub async fn watch(&mut self, limit: Duration) -> Seen {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Seen::default();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() < 9 + len {
                    break;
                }
                let (kind, payload) = (self.buf[3], &self.buf[9..9 + len]);
                seen.frames += 1;
                seen.last_frame_after = Some(started.elapsed());
                let code = |at: usize| {
                    payload
                        .get(at..at + 4)
                        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                };
                match kind {
                    GOAWAY => seen.goaway = code(4),
                    RST_STREAM => *seen.resets.entry(code(0).unwrap_or(0)).or_default() += 1,
                    HEADERS => seen.headers += 1,
                    _ => {}
                }
                self.buf.drain(..9 + len);
            }
            match tokio::time::timeout_at(deadline, self.socket.read(&mut chunk)).await {
                Err(_) => return seen,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    seen.closed_after = Some(started.elapsed());
                    return seen;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
