//! Hot reload under load, with the real binary: several connections send Checks without pause
//! while the rule file is switched 50 times between two versions that decide one route
//! differently (a ConfigMap-style `..data` symlink swap, or an in-place replacement followed by
//! `SIGHUP`), with an invalid file in between now and then. Every answer is one that one of the
//! two versions gives, no Check fails, and after an invalid file the last good version still
//! decides and readiness stays up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Version A allows `/switch` to anyone, version B asks for a logged-in admin (an anonymous
/// caller gets 401). `/stable` is public in both.
const VERSION_A: &str = r#"{
  "/switch": { "GET": { "authorization": { "expression": "true", "public": true } } },
  "/stable": { "GET": { "authorization": { "expression": "true", "public": true } } }
}"#;
const VERSION_B: &str = r#"{
  "/switch": { "GET": { "authorization": { "expression": "groups.admin", "public": false } } },
  "/stable": { "GET": { "authorization": { "expression": "true", "public": true } } }
}"#;
/// Line 2, column 48: an expression that does not parse.
const INVALID: &str = r#"{
  "/switch": { "GET": { "authorization": { "expression": "groups.", "public": true } } }
}"#;

const SWITCHES: usize = 50;
/// An invalid file after every this many good switches.
const INVALID_EVERY: usize = 10;
/// The bound of every wait for the server to show a change.
const WAIT: Duration = Duration::from_secs(20);

struct Serving {
    child: Child,
    grpc: u16,
    http: u16,
    logs: Arc<Mutex<String>>,
}

impl Serving {
    fn start(dir: &Path, watch: bool) -> Serving {
        Serving::start_with(dir, watch, &[])
    }

    fn start_with(dir: &Path, watch: bool, vars: &[(&str, &str)]) -> Serving {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port()
        };
        let (grpc, http) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
            .env_clear()
            .env("CONFIGURATION_PATH", dir)
            .env("CONFIGURATION_FILE_NAME", "auth")
            .env("TRUST_MIA_USER_HEADERS", "true")
            .env("CHECKPOINT_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("CHECKPOINT_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("CHECKPOINT_RELOAD_WATCH", watch.to_string())
            .env("DELAY_SHUTDOWN_SECONDS", "0")
            // Thousands of decision lines a second are not what this test reads.
            .env("LOG_LEVEL", "info,checkpoint::decision=off")
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().expect("stdout");
        let sink = logs.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Serving {
            child,
            grpc,
            http,
            logs,
        }
    }

    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/metrics", self.http)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("http://127.0.0.1:{}/-/ready", self.http))
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    async fn client(&self) -> Client {
        client(self.grpc).await
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exit: {status:?}");
        // The reader thread ends with the pipe.
        std::thread::sleep(Duration::from_millis(100));
        self.logs.lock().unwrap().clone()
    }
}

type Client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
    tonic::transport::Channel,
>;

/// A client on its own connection.
async fn client(grpc: u16) -> Client {
    Client::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect")
}

/// The HTTP status the server answers for `GET path` (200 for OK).
async fn status_of(client: &mut Client, path: &str) -> Result<u16, tonic::Status> {
    let response = client
        .check(support::request("GET", path, &[]))
        .await?
        .into_inner();
    Ok(support::answer(&response).http_status)
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    checks: AtomicU64,
    errors: AtomicU64,
    /// Answers neither version gives.
    foreign: AtomicU64,
}

/// Connections sending Checks for `/switch` and `/stable` until `stop`.
async fn load(grpc: u16, connections: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut client = client(grpc).await;
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (path, allowed): (&str, &[u16]) = if n.is_multiple_of(2) {
                    ("/switch", &[200, 401])
                } else {
                    ("/stable", &[200])
                };
                match status_of(&mut client, path).await {
                    Ok(status) if allowed.contains(&status) => {}
                    Ok(status) => {
                        eprintln!("{path}: {status}");
                        tally.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        eprintln!("{path}: {status:?}");
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tally.checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("load task");
    }
}

/// Waits until `/switch` answers `want` (the version that should now decide).
async fn wait_for(serving: &Serving, want: u16) {
    let mut client = serving.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if status_of(&mut client, "/switch").await.expect("check") == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/switch never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a metric line that starts with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn wait_for_failures(serving: &Serving, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = serving.metrics().await;
        if metric(&text, "checkpoint_config_reloads_total{result=\"failure\"}") == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {want} failed reloads: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(serving: &Serving) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !serving.ready().await {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How one test puts a version of the rules in place.
trait Switch {
    fn put(&self, serving: &Serving, rules: &str);
}

/// A ConfigMap volume: `auth.json` -> `..data/auth.json`, `..data` -> a timestamped folder;
/// an update writes a new folder and renames a new `..data` symlink over the old one.
struct ConfigMap {
    dir: std::path::PathBuf,
    generation: std::cell::Cell<u32>,
}

impl ConfigMap {
    fn new(dir: &Path, rules: &str) -> ConfigMap {
        let map = ConfigMap {
            dir: dir.to_path_buf(),
            generation: std::cell::Cell::new(0),
        };
        map.swap(rules);
        std::os::unix::fs::symlink("..data/auth.json", dir.join("auth.json")).expect("symlink");
        map
    }

    fn swap(&self, rules: &str) {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let folder = format!("..2026_01_01_{generation:04}");
        std::fs::create_dir(self.dir.join(&folder)).expect("folder");
        std::fs::write(self.dir.join(&folder).join("auth.json"), rules).expect("write");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename");
    }
}

impl Switch for ConfigMap {
    fn put(&self, _serving: &Serving, rules: &str) {
        self.swap(rules);
    }
}

/// The file replaced in place (write and rename), then `SIGHUP`; nothing watches the folder.
struct Hangup {
    dir: std::path::PathBuf,
}

impl Hangup {
    fn write(&self, rules: &str) {
        let tmp = self.dir.join("auth.json.tmp");
        std::fs::write(&tmp, rules).expect("write");
        std::fs::rename(&tmp, self.dir.join("auth.json")).expect("rename");
    }
}

impl Switch for Hangup {
    fn put(&self, serving: &Serving, rules: &str) {
        self.write(rules);
        serving.signal("HUP");
    }
}

/// Switches 50 times under load; returns the logs.
async fn switch_under_load(serving: Serving, switch: &dyn Switch) -> String {
    wait_ready(&serving).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let loader = {
        let (stop, tally, grpc) = (stop.clone(), tally.clone(), serving.grpc);
        tokio::spawn(load(grpc, 4, stop, tally))
    };
    wait_for(&serving, 200).await;
    let mut failures = 0.0;
    for i in 1..=SWITCHES {
        let (rules, want) = if i % 2 == 1 {
            (VERSION_B, 401)
        } else {
            (VERSION_A, 200)
        };
        switch.put(&serving, rules);
        wait_for(&serving, want).await;
        if i.is_multiple_of(INVALID_EVERY) {
            switch.put(&serving, INVALID);
            failures += 1.0;
            wait_for_failures(&serving, failures).await;
            // The last good version still decides; readiness stays up.
            let mut client = serving.client().await;
            assert_eq!(
                status_of(&mut client, "/switch").await.expect("check"),
                want
            );
            assert!(serving.ready().await, "ready after an invalid file");
        }
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.expect("load");
    let checks = tally.checks.load(Ordering::Relaxed);
    eprintln!("{checks} Checks during {SWITCHES} switches");
    assert!(checks > SWITCHES as u64, "the load ran: {checks} Checks");
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "failed Checks");
    assert_eq!(
        tally.foreign.load(Ordering::Relaxed),
        0,
        "answers neither version gives"
    );
    let text = serving.metrics().await;
    let successes = metric(&text, "checkpoint_config_reloads_total{result=\"success\"}")
        .expect("success counter");
    assert!(successes >= SWITCHES as f64, "{text}");
    assert_eq!(
        metric(&text, "checkpoint_config_reloads_total{result=\"failure\"}"),
        Some(failures)
    );
    assert!(
        metric(
            &text,
            "checkpoint_config_last_reload_success_timestamp_seconds"
        )
        .is_some_and(|t| t > 1.0e9),
        "{text}"
    );
    serving.stop()
}

fn assert_invalid_logged(logs: &str, file: &Path) {
    let position = format!("{}:2:", file.display());
    assert!(
        logs.lines()
            .any(|l| l.contains("invalid configuration") && l.contains(&position)),
        "the problem names the file and position: {logs}"
    );
    assert!(
        logs.contains("reload failed: the last good configuration keeps serving"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swaps_under_load() {
    let dir = tempfile::tempdir().expect("dir");
    let map = ConfigMap::new(dir.path(), VERSION_A);
    let serving = Serving::start(dir.path(), true);
    let logs = switch_under_load(serving, &map).await;
    assert_invalid_logged(&logs, &dir.path().join("auth.json"));
    assert!(
        logs.contains("\"trigger\":\"file_change\""),
        "reloaded on folder events: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load() {
    let dir = tempfile::tempdir().expect("dir");
    let hangup = Hangup {
        dir: dir.path().to_path_buf(),
    };
    hangup.write(VERSION_A);
    let serving = Serving::start(dir.path(), false);
    let logs = switch_under_load(serving, &hangup).await;
    assert_invalid_logged(&logs, &dir.path().join("auth.json"));
    assert!(
        !logs.contains("\"trigger\":\"file_change\""),
        "nothing watched the folder: {logs}"
    );
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("\"trigger\":\"SIGHUP\"")
                && l.contains("reloading the configuration"))
            .count(),
        SWITCHES + SWITCHES / INVALID_EVERY,
        "{logs}"
    );
}

/// Shadow rules that tighten a route: the enforced answer stays, the disagreement is counted and
/// logged with the shadow's decision and reason; Checks where both agree add nothing. The
/// shadow file reloads like the main one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rules_count_disagreements_and_never_decide() {
    let dir = tempfile::tempdir().expect("dir");
    let hangup = Hangup {
        dir: dir.path().to_path_buf(),
    };
    hangup.write(VERSION_A);
    let write_shadow = |rules: &str| {
        let tmp = dir.path().join("shadow.json.tmp");
        std::fs::write(&tmp, rules).expect("write");
        std::fs::rename(&tmp, dir.path().join("shadow.json")).expect("rename");
    };
    write_shadow(VERSION_B);
    let serving = Serving::start_with(
        dir.path(),
        false,
        &[
            ("SHADOW_CONFIGURATION_FILE_NAME", "shadow"),
            ("LOG_LEVEL", "info"),
        ],
    );
    wait_ready(&serving).await;
    let mut client = serving.client().await;
    let check = |path: &str, headers: &[(&str, &str)]| support::request("GET", path, headers);
    let admin = [("miauserid", "alice"), ("miausergroups", "admin")];
    for i in 0..3 {
        let id = format!("anonymous-{i}");
        let response = client
            .check(check("/switch", &[("x-request-id", &id)]))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(support::answer(&response).http_status, 200, "enforced");
    }
    let mut with_id = admin.to_vec();
    with_id.push(("x-request-id", "admin"));
    let response = client
        .check(check("/switch", &with_id))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(support::answer(&response).http_status, 200);
    assert_eq!(status_of(&mut client, "/stable").await.expect("check"), 200);
    let disagreements = |text: &str, enforced: &str, shadow: &str| {
        metric(
            text,
            &format!(
                "checkpoint_shadow_disagreements_total{{enforced=\"{enforced}\",shadow=\"{shadow}\"}}"
            ),
        )
    };
    let text = serving.metrics().await;
    assert_eq!(disagreements(&text, "allow", "deny"), Some(3.0), "{text}");
    assert_eq!(disagreements(&text, "deny", "allow"), Some(0.0), "{text}");

    // The shadow file now agrees; SIGHUP reloads it.
    write_shadow(VERSION_A);
    serving.signal("HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(
        &serving.metrics().await,
        "checkpoint_config_reloads_total{result=\"success\"}",
    ) != Some(1.0)
    {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of(&mut client, "/switch").await.expect("check"), 200);
    let text = serving.metrics().await;
    assert_eq!(disagreements(&text, "allow", "deny"), Some(3.0), "{text}");

    let logs = serving.stop();
    let line = |id: &str| {
        logs.lines()
            .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
            .unwrap_or_else(|| panic!("no decision line for {id}: {logs}"))
            .to_owned()
    };
    for i in 0..3 {
        let line = line(&format!("anonymous-{i}"));
        assert!(line.contains("\"decision\":\"allow\""), "{line}");
        assert!(
            line.contains("\"shadow_decision\":\"deny\",\"shadow_reason\":\"login_required\""),
            "{line}"
        );
    }
    let agreed = line("admin");
    assert!(!agreed.contains("shadow_"), "{agreed}");
}

/// A reload that leaves the identity sources as they were keeps them, cache included: a
/// credential answered before the reload is not asked for again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_cache_survives_a_rules_reload() {
    let userinfo = support::userinfo::UserInfoServer::start().await;
    let url = userinfo.url("/userinfo");
    let private = r#""/private": { "ALL": { "authorization": { "expression": "groups.admin", "public": false } } }"#;
    let server =
        support::Server::start(&format!("{{ {private} }}"), &[("USERINFO_URL", &url)]).await;
    let status = |path: &'static str| {
        let server = &server;
        async move {
            support::answer(
                &server
                    .check(support::request(
                        "GET",
                        path,
                        &[("authorization", "Bearer alice")],
                    ))
                    .await,
            )
            .http_status
        }
    };
    assert_eq!(status("/private").await, 200);
    assert_eq!(userinfo.count(), 1);
    assert_eq!(status("/new").await, 404);
    let tmp = server.dir().join("auth.json.tmp");
    std::fs::write(
        &tmp,
        format!(
            r#"{{ {private}, "/new": {{ "GET": {{ "authorization": {{ "expression": "true", "public": true }} }} }} }}"#
        ),
    )
    .expect("write");
    std::fs::rename(&tmp, server.dir().join("auth.json")).expect("rename");
    let deadline = tokio::time::Instant::now() + WAIT;
    while status("/new").await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status("/private").await, 200);
    assert_eq!(
        userinfo.count(),
        1,
        "alice's answer came from the cache kept across the reload"
    );
}
