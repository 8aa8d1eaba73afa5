//! End-to-end test support: the whole gateway as real processes on loopback.
//!
//! [`Stack::start`] runs the test IdP (`tests/idp/idp.mjs`), the echo upstream
//! (`tests/upstream/echo.mjs`), the checkpoint binary and Envoy with `envoy/envoy.yaml` rendered
//! here, over certificates made by `scripts/make-certs.sh`. Every child's stdout and stderr go to
//! files in the stack's temporary folder, so a failed start panics with what the child said.
//! Each child is killed and reaped when its [`Proc`] is dropped, also when a test panics.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a failed set-up should stop the test loudly.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one child may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.venv/bin/envoy`, or a panic that says how to get it: CI installs it, so never a skip.
pub fn envoy_bin() -> PathBuf {
    let envoy = repo().join(".venv/bin/envoy");
    assert!(
        envoy.exists(),
        "{} is missing: run scripts/setup.sh first",
        envoy.display()
    );
    envoy
}

fn require_idp_modules() {
    let modules = repo().join("tests/idp/node_modules/oidc-provider");
    assert!(
        modules.exists(),
        "{} is missing: run scripts/setup.sh first",
        modules.display()
    );
}

/// Runs `scripts/make-certs.sh dir` (test CA, server and client certificates, SDS files).
pub fn make_certs(dir: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/make-certs.sh"))
        .arg(dir)
        .output()
        .expect("run scripts/make-certs.sh");
    assert!(
        out.status.success(),
        "make-certs.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces every `${NAME}` placeholder (`NAME` in UPPER_SNAKE case, as scripts/render-envoy.sh
/// reads them) in `template` with `values[NAME]`; panics if a placeholder has no value, and checks
/// that none is left. Other `${` text (the template's comments say `${...}`) stays as it is.
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}').map(|end| &after[..end]) {
            Some(name) if is_placeholder(name) => {
                let value = values
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("no value for placeholder ${{{name}}}"));
                out.push_str(value);
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    assert_eq!(
        placeholders(&out),
        Vec::<String>::new(),
        "placeholders left in the rendered file"
    );
    out
}

/// The `${NAME}` placeholders in `text`, in order.
pub fn placeholders(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
        .filter(|name| is_placeholder(name))
        .map(str::to_owned)
        .collect()
}

fn is_placeholder(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Free loopback ports: all bound at once (so they differ), then released for the children.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().expect("local addr").port();
    }
    ports
}

/// A child process whose output goes to files; killed and reaped on drop.
pub struct Proc {
    pub name: &'static str,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `command` with its stdout and stderr in `dir/name.out` and `dir/name.err`.
    pub fn spawn(name: &'static str, mut command: Command, dir: &Path) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("create stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name,
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The process id (0 once the child is reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics, with what the child printed, if it has exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("child already stopped");
        if let Some(status) = child.try_wait().expect("try_wait") {
            self.fail(&format!("exited early ({status})"));
        }
    }

    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{} {why}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.name,
            tail(&self.stderr()),
            tail(&self.stdout())
        );
    }

    /// Waits (bounded) for a stdout line starting with `prefix` and returns the rest of it.
    pub async fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(line) = self.stdout().lines().find_map(|l| l.strip_prefix(prefix)) {
                return line.trim().to_owned();
            }
            self.assert_running();
            if Instant::now() > deadline {
                self.fail(&format!(
                    "printed no {prefix:?} line within {READY_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Knobs that differ between stacks.
#[derive(Default)]
pub struct Options {
    /// `IDP_ACCESS_TOKEN_TTL` in seconds (the IdP's default is one hour).
    pub token_ttl_seconds: Option<u32>,
    /// checkpoint's `USERINFO_URL`, instead of the IdP's `/me`.
    pub userinfo_url: Option<String>,
    /// Envoy's ext_authz deadline, instead of the template's 0.5 s; checkpoint's user-info
    /// timeout follows it (100 ms below) instead of 400 ms.
    pub check_deadline: Option<Duration>,
}

/// The running gateway. Field order is drop order: the processes go before their folder.
pub struct Stack {
    pub envoy: Proc,
    pub checkpoint: Proc,
    pub upstream: Proc,
    pub idp: Proc,
    /// The issuer URL, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub issuer: String,
    /// Envoy's TLS listener.
    pub https_port: u16,
    /// Envoy's plain-HTTP (redirect) listener.
    pub http_port: u16,
    pub admin_port: u16,
    /// The folder made by make-certs.sh (`ca.crt`, `client.crt`, `client.key`, ...).
    pub tls: PathBuf,
    /// An HTTPS client that trusts only the test CA; `localhost` resolves to 127.0.0.1.
    pub client: reqwest::Client,
    /// A plain client for the IdP and the status routes (no redirects followed).
    pub plain: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: Options) -> Stack {
        let envoy_bin = envoy_bin();
        require_idp_modules();
        let root = repo();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = dir.path().join("tls");
        make_certs(&tls);
        let plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("plain client");

        // IdP and echo pick their own ports and print them.
        let mut idp_cmd = Command::new("node");
        idp_cmd
            .arg(root.join("tests/idp/idp.mjs"))
            .env("IDP_PORT", "0")
            .env("IDP_HOST", "127.0.0.1");
        if let Some(ttl) = options.token_ttl_seconds {
            idp_cmd.env("IDP_ACCESS_TOKEN_TTL", ttl.to_string());
        }
        let mut idp = Proc::spawn("idp", idp_cmd, dir.path());
        let mut echo_cmd = Command::new("node");
        echo_cmd
            .arg(root.join("tests/upstream/echo.mjs"))
            .env("ECHO_PORT", "0");
        let mut upstream = Proc::spawn("upstream", echo_cmd, dir.path());

        let ready: Value =
            serde_json::from_str(&idp.wait_line("IDP_READY ").await).expect("IDP_READY json");
        let issuer = ready["issuer"].as_str().expect("issuer").to_owned();
        let ready: Value = serde_json::from_str(&upstream.wait_line("ECHO_READY ").await)
            .expect("ECHO_READY json");
        let upstream_port = ready["port"].as_u64().expect("echo port");

        let [grpc_port, status_port, https_port, http_port, admin_port] = free_ports::<5>();

        // checkpoint with exactly the environment below: nothing leaks in from the test runner's.
        let cp_env = [
            (
                "CONFIGURATION_PATH",
                root.join("envoy/demo").display().to_string(),
            ),
            ("CONFIGURATION_FILE_NAME", "auth".into()),
            (
                "USERINFO_URL",
                options
                    .userinfo_url
                    .clone()
                    .unwrap_or_else(|| format!("{issuer}/me")),
            ),
            (
                "HEADERS_TO_PROXY",
                "authorization,cookie,x-request-id".into(),
            ),
            ("CUSTOM_PERMISSIONS_KEY", "permissions".into()),
            (
                "USER_PROPERTIES_TO_PROXY",
                "email,preferred_username,properties".into(),
            ),
            ("CHECKPOINT_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
            ("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{status_port}")),
            (
                "CHECKPOINT_USERINFO_TIMEOUT",
                options.check_deadline.map_or("400ms".into(), |deadline| {
                    format!("{}ms", deadline.as_millis().saturating_sub(100))
                }),
            ),
            ("DELAY_SHUTDOWN_SECONDS", "0".into()),
            ("LOG_LEVEL", "info".into()),
        ];
        let mut cp_cmd = Command::new(env!("CARGO_BIN_EXE_checkpoint"));
        cp_cmd
            .env_clear()
            .envs(cp_env.iter().map(|(k, v)| (*k, v.as_str())));
        let allowed = allowed_headers(&cp_env);
        let mut checkpoint = Proc::spawn("checkpoint", cp_cmd, dir.path());

        let template =
            std::fs::read_to_string(root.join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
        let rendered = render(
            &template,
            &[
                ("LISTEN_ADDRESS", "127.0.0.1".into()),
                ("HTTPS_PORT", https_port.to_string()),
                ("HTTP_PORT", http_port.to_string()),
                ("ADMIN_PORT", admin_port.to_string()),
                ("CHECKPOINT_ADDRESS", "127.0.0.1".into()),
                ("CHECKPOINT_PORT", grpc_port.to_string()),
                ("UPSTREAM_ADDRESS", "127.0.0.1".into()),
                ("UPSTREAM_PORT", upstream_port.to_string()),
                ("TLS_DIR", tls.display().to_string()),
                ("ALLOWED_HEADERS", allowed),
            ],
        );
        let rendered = match options.check_deadline {
            None => rendered,
            Some(deadline) => {
                let shipped = "                timeout: 0.5s\n";
                assert_eq!(
                    rendered.matches(shipped).count(),
                    1,
                    "envoy/envoy.yaml's ext_authz deadline moved"
                );
                rendered.replace(
                    shipped,
                    &format!("                timeout: {}s\n", deadline.as_secs_f64()),
                )
            }
        };
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, rendered).expect("write rendered envoy.yaml");
        let mut envoy_cmd = Command::new(envoy_bin);
        envoy_cmd
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            // The access log (stdout) is flushed every 10 s by default; the client-certificate test
            // reads it.
            .args(["--file-flush-interval-msec", "100"]);
        let mut envoy = Proc::spawn("envoy", envoy_cmd, dir.path());

        let ca = std::fs::read(tls.join("ca.crt")).expect("read ca.crt");
        let client = https_client(&ca, https_port, None);

        // checkpoint: its readiness route.
        let ready_url = format!("http://127.0.0.1:{status_port}/-/ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = plain.get(&ready_url).send().await
                && r.status() == 200
            {
                break;
            }
            checkpoint.assert_running();
            if Instant::now() > deadline {
                checkpoint.fail(&format!("{ready_url} was not 200 within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Envoy: its own /-/healthz route over TLS (listener up, certificate loaded from SDS).
        let healthz = format!("https://localhost:{https_port}/-/healthz");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = client.get(&healthz).send().await
                && r.status() == 200
            {
                break;
            }
            envoy.assert_running();
            if Instant::now() > deadline {
                envoy.fail(&format!("{healthz} was not 200 within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        Stack {
            envoy,
            checkpoint,
            upstream,
            idp,
            issuer,
            https_port,
            http_port,
            admin_port,
            tls,
            client,
            plain,
            dir,
        }
    }

    /// Another HTTPS client like [`Stack::client`], with its own connections.
    pub fn new_client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.tls.join("ca.crt")).expect("read ca.crt");
        https_client(&ca, self.https_port, None)
    }

    /// Envoy's counters and gauges whose names match `filter` (a regular expression), one
    /// `name: value` per line, from its admin interface.
    pub async fn envoy_stats(&self, filter: &str) -> String {
        let url = format!(
            "http://127.0.0.1:{}/stats?filter={}",
            self.admin_port,
            form_encode(filter)
        );
        self.plain
            .get(&url)
            .send()
            .await
            .expect("Envoy's admin interface")
            .text()
            .await
            .expect("stats")
    }

    /// One of Envoy's counters or gauges, from its admin interface.
    pub async fn envoy_stat(&self, name: &str) -> u64 {
        let text = self
            .envoy_stats(&format!("^{}$", name.replace('.', "\\.")))
            .await;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("Envoy has no stat {name}: {text}"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// `https://localhost:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }

    /// An HTTPS client that presents the test client certificate (`client.crt` + `client.key`).
    pub fn client_with_certificate(&self) -> reqwest::Client {
        let ca = std::fs::read(self.tls.join("ca.crt")).expect("read ca.crt");
        let mut pem = std::fs::read(self.tls.join("client.crt")).expect("read client.crt");
        pem.extend(std::fs::read(self.tls.join("client.key")).expect("read client.key"));
        let identity = reqwest::Identity::from_pem(&pem).expect("client identity");
        https_client(&ca, self.https_port, Some(identity))
    }

    /// An access token for `user` (password `<user>-password`) from the IdP's password grant.
    pub async fn token(&self, user: &str) -> String {
        // reqwest's `form` feature is not enabled: the body is encoded by hand (no reserved
        // characters in these values; the scope's spaces become %20).
        let body = format!(
            "grant_type=password&username={user}&password={user}-password\
             &scope=openid%20profile%20email%20groups%20permissions%20properties"
        );
        let response = self
            .plain
            .post(format!("{}/token", self.issuer))
            .basic_auth("authz-service", Some("authz-service-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let json: Value = response.json().await.expect("token response is JSON");
        assert_eq!(status, 200, "token for {user}: {json}");
        json["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

fn https_client(
    ca: &[u8],
    https_port: u16,
    identity: Option<reqwest::Identity>,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca).expect("CA certificate");
    let mut builder = reqwest::Client::builder()
        // Only the test CA: no built-in roots.
        .tls_certs_only([ca])
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], https_port)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().expect("https client")
}

/// What came back through the gateway: status, headers and body (JSON if it parses).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// A header the echo upstream received (lower-case name), if the request reached it.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.json["headers"][name].as_str()
    }

    /// Whether this is the echo upstream's answer (the request got through).
    pub fn reached_upstream(&self) -> bool {
        self.json["headers"].is_object() && self.json["method"].is_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// ---- Stacks whose checkpoint reads a native configuration file (`CHECKPOINT_CONFIG`) ------------
// Added for tests/e2e_sources.rs; [`Stack::start`] above is unchanged.

/// Starts the test IdP on `127.0.0.1:port` (`0`: a port it picks and prints). With `log`, it
/// writes one stderr line per request (`IDP_LOG=1`), read back by [`idp_requests`].
pub fn spawn_idp(dir: &Path, port: u16, log: bool) -> Proc {
    require_idp_modules();
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/idp/idp.mjs"))
        .env("IDP_PORT", port.to_string())
        .env("IDP_HOST", "127.0.0.1");
    if log {
        command.env("IDP_LOG", "1");
    }
    Proc::spawn("idp", command, dir)
}

/// Waits (bounded) for the IdP's `IDP_READY` line and returns its issuer (no trailing slash).
pub async fn idp_issuer(idp: &mut Proc) -> String {
    let ready: Value =
        serde_json::from_str(&idp.wait_line("IDP_READY ").await).expect("IDP_READY json");
    ready["issuer"].as_str().expect("issuer").to_owned()
}

/// The requests an IdP started with `log` has answered so far, in order, each as
/// `METHOD PATH -> STATUS` (the timing is left out). The IdP writes a line before it sends the
/// response, so a request the caller has seen answered is always in the list.
pub fn idp_requests(idp: &Proc) -> Vec<String> {
    idp.stderr()
        .lines()
        .filter_map(|line| line.strip_prefix("[idp] "))
        .map(|line| match line.rfind(" (") {
            Some(end) => line[..end].to_owned(),
            None => line.to_owned(),
        })
        .collect()
}

/// What `checkpoint allowed-headers` prints with exactly the environment `env`: the
/// `${ALLOWED_HEADERS}` of envoy/envoy.yaml, generated from checkpoint's own configuration as a
/// deployment generates it, so that every end-to-end test also proves the list is enough.
pub fn allowed_headers(env: &[(&str, String)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .arg("allowed-headers")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run checkpoint allowed-headers");
    assert!(
        output.status.success(),
        "checkpoint allowed-headers: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// [`allowed_headers`] for the native configuration file [`spawn_checkpoint_native`] wrote in
/// `dir`.
pub fn allowed_headers_native(dir: &Path) -> String {
    let config = dir.join("checkpoint.yaml");
    allowed_headers(&[("CHECKPOINT_CONFIG", config.display().to_string())])
}

/// Starts checkpoint with `yaml` written to `dir/checkpoint.yaml` and `CHECKPOINT_CONFIG`
/// naming it: no other variable (the test runner's environment does not leak in).
pub fn spawn_checkpoint_native(dir: &Path, yaml: &str) -> Proc {
    let config = dir.join("checkpoint.yaml");
    std::fs::write(&config, yaml).expect("write checkpoint.yaml");
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkpoint"));
    command
        .env_clear()
        .env("CHECKPOINT_CONFIG", config.display().to_string());
    Proc::spawn("checkpoint", command, dir)
}

/// The checkpoint binary configured by Mia's variables: `dir/auth.json` (written by the caller)
/// as its rules, gRPC and status routes on free loopback ports, no shutdown delay, and `vars` on
/// top, with nothing else in its environment. Returns once `/-/ready` answers 200, with its
/// gRPC and status ports.
pub async fn spawn_checkpoint_ready(dir: &Path, vars: &[(&str, String)]) -> (Proc, u16, u16) {
    let [grpc, http] = free_ports::<2>();
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkpoint"));
    command
        .env_clear()
        .env("CONFIGURATION_PATH", dir)
        .env("CONFIGURATION_FILE_NAME", "auth")
        .env("CHECKPOINT_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("DELAY_SHUTDOWN_SECONDS", "0")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    let mut checkpoint = Proc::spawn("checkpoint", command, dir);
    let url = format!("http://127.0.0.1:{http}/-/ready");
    wait_for_status(
        &plain_client(),
        &url,
        200,
        &mut checkpoint,
        Duration::from_secs(30),
    )
    .await;
    (checkpoint, grpc, http)
}

/// Polls `url` (a plain-HTTP GET) until it answers `status`; panics, with what `owner` printed,
/// if it does not within `timeout` or if `owner` exits.
pub async fn wait_for_status(
    plain: &reqwest::Client,
    url: &str,
    status: u16,
    owner: &mut Proc,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = plain.get(url).send().await
            && r.status() == status
        {
            return;
        }
        owner.assert_running();
        if Instant::now() > deadline {
            owner.fail(&format!("{url} did not answer {status} within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client for plain-HTTP calls on loopback (no redirects followed, 5 s per request).
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("plain client")
}

/// A rendered `envoy/envoy.yaml` whose `checkpoint` cluster dials the Unix socket `socket`
/// instead of a TCP address: a STATIC cluster with a `pipe` endpoint, the change
/// envoy/kubernetes/sidecar.yaml makes.
pub fn checkpoint_over_unix_socket(rendered: &str, socket: &Path) -> String {
    let mut config: Value = serde_yaml_ng::from_str(rendered).expect("rendered envoy.yaml");
    let clusters = config["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    let cluster = clusters
        .iter_mut()
        .find(|c| c["name"] == "checkpoint")
        .expect("the checkpoint cluster")
        .as_object_mut()
        .expect("cluster object");
    cluster.insert("type".into(), Value::from("STATIC"));
    cluster.remove("dns_lookup_family");
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
        serde_json::json!({ "pipe": { "path": socket.display().to_string() } });
    serde_yaml_ng::to_string(&config).expect("envoy.yaml")
}

/// The addresses a native configuration is written with.
pub struct NativeAddrs {
    /// The IdP's issuer URL (no trailing slash).
    pub issuer: String,
    /// For `server.grpc_addr`: Envoy's ext_authz cluster points there.
    pub grpc_addr: String,
    /// For `server.http_addr`: the status routes.
    pub http_addr: String,
}

impl NativeAddrs {
    /// The first lines of every native file under test: the version and the `server` section
    /// (these addresses, no shutdown delay).
    pub fn head(&self) -> String {
        format!(
            "version: 1\nserver: {{ grpc_addr: \"{}\", http_addr: \"{}\", shutdown_delay: 0 }}",
            self.grpc_addr, self.http_addr
        )
    }
}

/// A [`Stack`] whose checkpoint reads a native configuration file and whose IdP logs every
/// request (see [`idp_requests`]). Derefs to the [`Stack`].
pub struct NativeStack {
    pub stack: Stack,
    /// `http://127.0.0.1:PORT` of checkpoint's status routes.
    pub status_url: String,
    /// [`idp_requests`] as they were the moment `/-/ready` first answered 200.
    pub idp_requests_at_ready: Vec<String>,
}

impl std::ops::Deref for NativeStack {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl NativeStack {
    /// Starts the IdP (logging its requests), the echo upstream, checkpoint with the file that
    /// `config` writes for the given addresses, and Envoy with `envoy/envoy.yaml`; returns once
    /// checkpoint's `/-/ready` and Envoy's `/-/healthz` answer 200.
    pub async fn start(config: impl FnOnce(&NativeAddrs) -> String) -> NativeStack {
        let envoy_bin = envoy_bin();
        let root = repo();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = dir.path().join("tls");
        make_certs(&tls);
        let plain = plain_client();

        let mut idp = spawn_idp(dir.path(), 0, true);
        let mut echo_cmd = Command::new("node");
        echo_cmd
            .arg(root.join("tests/upstream/echo.mjs"))
            .env("ECHO_PORT", "0");
        let mut upstream = Proc::spawn("upstream", echo_cmd, dir.path());
        let issuer = idp_issuer(&mut idp).await;
        let ready: Value = serde_json::from_str(&upstream.wait_line("ECHO_READY ").await)
            .expect("ECHO_READY json");
        let upstream_port = ready["port"].as_u64().expect("echo port");

        let [grpc_port, status_port, https_port, http_port, admin_port] = free_ports::<5>();
        // checkpoint serves gRPC on a Unix socket and Envoy dials it, as in
        // envoy/kubernetes/sidecar.yaml (tests/e2e.rs covers the TCP hop).
        let socket = dir.path().join("grpc.sock");
        let yaml = config(&NativeAddrs {
            issuer: issuer.clone(),
            grpc_addr: format!("unix:{}", socket.display()),
            http_addr: format!("127.0.0.1:{status_port}"),
        });
        let mut checkpoint = spawn_checkpoint_native(dir.path(), &yaml);

        let template =
            std::fs::read_to_string(root.join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
        let rendered = render(
            &template,
            &[
                ("LISTEN_ADDRESS", "127.0.0.1".into()),
                ("HTTPS_PORT", https_port.to_string()),
                ("HTTP_PORT", http_port.to_string()),
                ("ADMIN_PORT", admin_port.to_string()),
                ("CHECKPOINT_ADDRESS", "127.0.0.1".into()),
                ("CHECKPOINT_PORT", grpc_port.to_string()),
                ("UPSTREAM_ADDRESS", "127.0.0.1".into()),
                ("UPSTREAM_PORT", upstream_port.to_string()),
                ("TLS_DIR", tls.display().to_string()),
                ("ALLOWED_HEADERS", allowed_headers_native(dir.path())),
            ],
        );
        let rendered = checkpoint_over_unix_socket(&rendered, &socket);
        let envoy_config = dir.path().join("envoy.yaml");
        std::fs::write(&envoy_config, rendered).expect("write rendered envoy.yaml");
        let mut envoy_cmd = Command::new(envoy_bin);
        envoy_cmd.arg("-c").arg(&envoy_config).args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            "--file-flush-interval-msec",
            "100",
        ]);
        let mut envoy = Proc::spawn("envoy", envoy_cmd, dir.path());

        let ca = std::fs::read(tls.join("ca.crt")).expect("read ca.crt");
        let client = https_client(&ca, https_port, None);

        let status_url = format!("http://127.0.0.1:{status_port}");
        wait_for_status(
            &plain,
            &format!("{status_url}/-/ready"),
            200,
            &mut checkpoint,
            READY_TIMEOUT,
        )
        .await;
        let idp_requests_at_ready = idp_requests(&idp);
        wait_for_status(
            &client,
            &format!("https://localhost:{https_port}/-/healthz"),
            200,
            &mut envoy,
            READY_TIMEOUT,
        )
        .await;

        NativeStack {
            stack: Stack {
                envoy,
                checkpoint,
                upstream,
                idp,
                issuer,
                https_port,
                http_port,
                admin_port,
                tls,
                client,
                plain,
                dir,
            },
            status_url,
            idp_requests_at_ready,
        }
    }
}

impl Stack {
    /// The IdP's whole token response for `user`'s password grant with `scope` (space-separated)
    /// and, when given, a `resource` indicator: then the access token is a JWT (`typ: at+jwt`)
    /// for that audience; without one it is opaque (for user-info). Panics unless 200.
    pub async fn token_response(&self, user: &str, scope: &str, resource: Option<&str>) -> Value {
        let mut body = format!(
            "grant_type=password&username={}&password={}&scope={}",
            form_encode(user),
            form_encode(&format!("{user}-password")),
            form_encode(scope)
        );
        if let Some(resource) = resource {
            body.push_str("&resource=");
            body.push_str(&form_encode(resource));
        }
        let response = self
            .plain
            .post(format!("{}/token", self.issuer))
            .basic_auth("authz-service", Some("authz-service-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let json: Value = response.json().await.expect("token response is JSON");
        assert_eq!(status, 200, "token for {user}: {json}");
        json
    }
}

/// `application/x-www-form-urlencoded` value: everything but RFC 3986 unreserved characters is
/// percent-encoded.
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
