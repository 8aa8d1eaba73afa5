//! Hot reload: the part of the configuration that can change while serving, swapped whole.
//!
//! What a Check reads from the configuration is one [`Live`] value: the rules, the identity
//! sources (with their cache), the responder and the shadow rules. `run` keeps it in an
//! [`ArcSwap`]; the Check service loads it once per Check (a pointer load, no lock), so every
//! Check sees the old configuration or the new one, never a mix.
//!
//! A reload reads and validates everything the start did (`Config::load`, the identity sources,
//! the rules' source names) before one `store` replaces the value. An invalid configuration
//! changes nothing: every problem is logged with its file, line and column, the last good
//! configuration keeps serving and readiness stays up. Settings that only a restart applies
//! (addresses, TLS and limits of the gRPC port, workers, ...) are logged when they differ from
//! the running ones. The identity sources are rebuilt only when their settings changed;
//! otherwise the running ones, their cache and their background key refreshes are kept.
//!
//! Triggers: a change in the folder of a configuration file (watched with `notify`; a
//! Kubernetes ConfigMap update swaps a `..data` symlink in that folder), `SIGHUP`, and an
//! optional polling interval. Folder events and polls reload only when a file's contents
//! changed; `SIGHUP` always reloads.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::check::Checker;
use crate::config::{ConfigErrors, Settings, env};
use crate::identity::Resolver;
use crate::response::Responder;
use crate::rules::{Config, RuleSet};
use crate::telemetry::Metrics;

/// Everything a Check reads from the configuration, replaced as one.
pub struct Live {
    pub checker: Arc<Checker>,
    pub responder: Arc<Responder>,
    /// Rules evaluated on the same identity for every Check and never enforced.
    pub shadow: Option<Arc<RuleSet>>,
}

/// The current [`Live`] configuration, shared by the Check service, the status routes and the
/// reloader.
pub type Shared = Arc<ArcSwap<Live>>;

/// The responder the settings ask for.
pub fn responder(settings: &Settings) -> Responder {
    Responder::new(settings.strict_mode, &settings.user_headers)
        .with_dynamic_metadata(settings.dynamic_metadata)
        .with_decision_id_upstream(settings.decision_id_upstream)
        .with_basic_realms(&crate::config::sources::basic_realms(&settings.sources))
        .with_roles_header(
            settings
                .rbac
                .as_ref()
                .and_then(|r| r.roles_header.as_deref()),
        )
}

/// Every rule of `rules` that names an identity source not in `names`, as a problem naming the
/// file, the rule and the source.
pub fn unknown_sources(rules: &RuleSet, names: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, method, rule) in rules.table.iter() {
        for wanted in rule.identity.iter().flatten() {
            if !names.contains(&wanted.as_str()) {
                problems.push(format!(
                    "{}: rule \"{path}\" {method}: identity: unknown source \"{wanted}\" (configured: {})",
                    rules.file.display(),
                    names.join(", ")
                ));
            }
        }
    }
    problems
}

/// How long a reload waits for rebuilt identity sources to become ready (a JWT source's first
/// key fetch) before it gives up and keeps the running configuration.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// After a folder event, how long the folder must stay quiet before the reload (an editor or a
/// ConfigMap update writes in several steps), and the most a reload is put off by a folder that
/// keeps changing.
const DEBOUNCE: Duration = Duration::from_millis(100);
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// What asked for a reload: the log's `trigger` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Watch,
    Signal,
    Poll,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "file_change",
            Trigger::Signal => "SIGHUP",
            Trigger::Poll => "poll",
        }
    }
}

/// Reloads the configuration on its triggers. Owned by the task [`spawn`] starts.
pub struct Reloader {
    env: HashMap<String, String>,
    live: Shared,
    metrics: Arc<Metrics>,
    /// The settings `run` started with: what a restart-only setting is compared to.
    started: Settings,
    /// The settings the running identity sources were built from.
    identity: Settings,
    /// The configuration files, and their contents when they were last loaded.
    files: Vec<PathBuf>,
    fingerprint: u64,
}

impl Reloader {
    /// `settings` are those the running configuration `live` was built from, `env` the
    /// variables it was loaded with.
    pub fn new(
        env: HashMap<String, String>,
        settings: Settings,
        live: Shared,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let files = files(&env, &settings);
        let fingerprint = fingerprint(&files);
        Reloader {
            files,
            env,
            live,
            metrics,
            started: settings.clone(),
            identity: settings,
            fingerprint,
        }
    }

    /// Loads, validates and, when everything is right, installs the configuration the files
    /// hold now. On failure the running configuration stays and every problem is returned.
    pub async fn reload(&mut self) -> Result<(), ConfigErrors> {
        let result = self.try_reload().await;
        self.metrics.record_reload(result.is_ok());
        result
    }

    async fn try_reload(&mut self) -> Result<(), ConfigErrors> {
        // Taken before reading: a change that lands during the load is seen by the next event.
        self.fingerprint = fingerprint(&self.files);
        let config = Config::load(&self.env)?;
        let now = files(&self.env, &config.settings);
        if now != self.files {
            self.fingerprint = fingerprint(&now);
            self.files = now;
        }
        let settings = config.settings;
        for name in restart_only_changes(&self.started, &settings) {
            tracing::warn!(
                setting = name,
                "this setting changed but takes effect only at the next restart; the running value is kept"
            );
        }
        let current = self.live.load_full();
        let kept = same_identity(&self.identity, &settings);
        let identity = if kept {
            current.checker.identity.clone()
        } else {
            let mut built = Resolver::build(&settings, &self.env).map_err(ConfigErrors::new)?;
            built.continue_stats(&current.checker.identity);
            Arc::new(built)
        };
        let names: Vec<&str> = identity.names().collect();
        let mut problems = unknown_sources(&config.rules, &names);
        if let Some(shadow) = &config.shadow {
            problems.extend(unknown_sources(shadow, &names));
        }
        if !problems.is_empty() {
            return Err(ConfigErrors::new(problems));
        }
        if !kept {
            let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
            while !identity.ready() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ConfigErrors::new(vec![format!(
                        "the new identity sources were not ready after {}s (a JWT source's keys could not be fetched?)",
                        READY_TIMEOUT.as_secs()
                    )]));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let rules = config.rules.table.len();
        self.live.store(Arc::new(Live {
            checker: Arc::new(Checker {
                rules: config.rules,
                identity,
                request_headers: settings.request_headers.clone(),
                rbac: config.rbac,
                login_redirect: settings.login_redirect.clone(),
            }),
            responder: Arc::new(responder(&settings)),
            shadow: config.shadow.map(Arc::new),
        }));
        tracing::info!(
            rules,
            identity = if kept { "kept" } else { "rebuilt" },
            "configuration reloaded"
        );
        if !kept {
            self.identity = settings;
        }
        Ok(())
    }

    /// Whether the configuration files' contents differ from those last loaded.
    fn changed(&self) -> bool {
        fingerprint(&self.files) != self.fingerprint
    }

    async fn run(mut self, mut events: tokio::sync::mpsc::Receiver<()>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let poll = self.started.reload.poll_interval;
        let mut tick = (!poll.is_zero()).then(|| {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            let trigger = tokio::select! {
                Some(()) = events.recv() => {
                    // Quiet for DEBOUNCE, or DEBOUNCE_MAX at most.
                    let until = tokio::time::Instant::now() + DEBOUNCE_MAX;
                    while let Ok(Some(())) =
                        tokio::time::timeout_at(until.min(tokio::time::Instant::now() + DEBOUNCE), events.recv()).await
                    {}
                    Trigger::Watch
                }
                Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Signal,
                _ = async { match &mut tick { Some(t) => t.tick().await, None => std::future::pending().await } } => Trigger::Poll,
            };
            if trigger != Trigger::Signal && !self.changed() {
                continue;
            }
            tracing::info!(trigger = trigger.as_str(), "reloading the configuration");
            if let Err(errors) = self.reload().await {
                for problem in &errors.problems {
                    tracing::error!(trigger = trigger.as_str(), problem = %problem, "invalid configuration");
                }
                tracing::error!(
                    trigger = trigger.as_str(),
                    problems = errors.problems.len(),
                    "reload failed: the last good configuration keeps serving"
                );
            }
        }
    }
}

/// Starts reloading on the triggers the settings ask for; aborting the task stops it (and the
/// folder watch with it).
pub fn spawn(reloader: Reloader) -> tokio::task::JoinHandle<()> {
    let (send, events) = tokio::sync::mpsc::channel(1);
    let watcher = if reloader.started.reload.watch {
        watch(&reloader.files, send)
    } else {
        None
    };
    tokio::spawn(async move {
        // Lives as long as the task.
        let _watcher = watcher;
        reloader.run(events).await;
    })
}

/// Watches the folders of `files` (not the files: a ConfigMap update replaces a symlink in the
/// folder and never writes the file). Any event there is sent on; the reloader compares
/// contents.
fn watch(
    files: &[PathBuf],
    send: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // Full: a reload is already due, which reads the files afresh.
            let _ = send.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the configuration files; reload with SIGHUP or a poll interval");
            return None;
        }
    };
    let mut folders: Vec<PathBuf> = files.iter().map(|f| folder(f)).collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        if let Err(error) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %folder.display(), %error, "cannot watch this folder; reload with SIGHUP or a poll interval");
        }
    }
    Some(watcher)
}

fn folder(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The files the configuration is read from: the native file, the rule file, the shadow rule
/// file, the RBAC file or Rönd's two collections (inline rules and inline roles have no file of
/// their own: they are in the native file).
fn files(vars: &HashMap<String, String>, settings: &Settings) -> Vec<PathBuf> {
    let native = vars
        .get(env::CHECKPOINT_CONFIG)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let rules =
        (native.is_none() || settings.rules_file.is_file()).then(|| settings.rules_file.clone());
    native
        .into_iter()
        .chain(rules)
        .chain(settings.shadow_rules_file.clone())
        .chain(rbac_files(settings))
        .collect()
}

fn rbac_files(settings: &Settings) -> Vec<PathBuf> {
    use crate::config::rbac::RbacSource;
    match settings.rbac.as_ref().map(|r| &r.source) {
        Some(RbacSource::File(path)) => vec![path.clone()],
        Some(RbacSource::Rond { roles, bindings }) => vec![roles.clone(), bindings.clone()],
        Some(RbacSource::Inline { .. }) | None => Vec::new(),
    }
}

/// A digest of the files' contents (a missing file counts as its own content).
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        match std::fs::read(file) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// Whether the identity sources built from `old` serve `new` as they are: same sources, same
/// cache settings, same user headers (the trusted-headers source reads them).
fn same_identity(old: &Settings, new: &Settings) -> bool {
    old.sources == new.sources
        && old.identity_cache == new.identity_cache
        && old.user_headers.user_id == new.user_headers.user_id
        && old.user_headers.groups == new.user_headers.groups
        && old.user_headers.properties == new.user_headers.properties
}

/// The settings that differ between `running` and `new` and that only a restart applies.
fn restart_only_changes(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("grpc_addr", running.grpc_addr != new.grpc_addr);
    check(
        "grpc_socket_mode",
        running.grpc_socket_mode != new.grpc_socket_mode,
    );
    // The port's connection limits, keepalives, age and TLS files.
    check(
        "grpc (connections, tls)",
        format!("{:?}", running.grpc) != format!("{:?}", new.grpc),
    );
    check(
        "worker_threads",
        running.worker_threads != new.worker_threads,
    );
    check("http_addr", running.http_addr != new.http_addr);
    check(
        "service_version",
        running.service_version != new.service_version,
    );
    check("log_level", running.log_level != new.log_level);
    check(
        "shutdown_delay",
        running.shutdown_delay != new.shutdown_delay,
    );
    check("drain_timeout", running.drain_timeout != new.drain_timeout);
    check("reload", running.reload != new.reload);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> (tempfile::TempDir, HashMap<String, String>, Settings) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("checkpoint.yaml");
        std::fs::write(&path, yaml).expect("write");
        let env: HashMap<String, String> =
            [("CHECKPOINT_CONFIG".to_owned(), path.display().to_string())].into();
        let loaded = crate::config::load(&env).expect("settings");
        (dir, env, loaded.settings)
    }

    const BASE: &str =
        "version: 1\nrules: { inline: {} }\nidentity: { sources: [ { type: anonymous } ] }\n";

    #[test]
    fn restart_only_settings_are_named_when_they_change() {
        let (_a, _, running) = settings(BASE);
        let (_b, _, same) = settings(BASE);
        assert_eq!(restart_only_changes(&running, &same), Vec::<&str>::new());
        let (_c, _, moved) = settings(&format!(
            "{BASE}server: {{ grpc_addr: 127.0.0.1:1, worker_threads: 3, log_level: debug }}\nresponses: {{ strict_mode: false }}\n"
        ));
        assert_eq!(
            restart_only_changes(&running, &moved),
            ["grpc_addr", "worker_threads", "log_level"]
        );
    }

    #[test]
    fn identity_is_kept_unless_its_settings_change() {
        let (_a, _, running) = settings(BASE);
        let (_b, _, responses) = settings(&format!("{BASE}responses: {{ strict_mode: false }}\n"));
        assert!(same_identity(&running, &responses));
        let (_c, _, cache) = settings(
            "version: 1\nrules: { inline: {} }\nidentity: { sources: [ { type: anonymous } ], cache: { ttl: 5s } }\n",
        );
        assert!(!same_identity(&running, &cache));
        let (_d, _, sources) = settings(
            "version: 1\nrules: { inline: {} }\nidentity: { sources: [ { type: trusted_headers } ] }\n",
        );
        assert!(!same_identity(&running, &sources));
    }

    #[test]
    fn the_fingerprint_follows_contents_not_times() {
        let (dir, env, running) = settings(BASE);
        let watched = files(&env, &running);
        assert_eq!(watched, [dir.path().join("checkpoint.yaml")]);
        let before = fingerprint(&watched);
        std::fs::write(&watched[0], BASE).expect("rewrite");
        assert_eq!(
            fingerprint(&watched),
            before,
            "same bytes, same fingerprint"
        );
        std::fs::write(&watched[0], format!("{BASE}\n")).expect("rewrite");
        assert_ne!(fingerprint(&watched), before);
        assert_eq!(folder(Path::new("auth.json")), PathBuf::from("."));
    }

    /// A change to the RBAC file or to Rönd's collections reloads, as one to the rule file does.
    #[test]
    fn the_rbac_files_are_watched() {
        let (dir, env, running) = settings(&format!("{BASE}rbac: {{ file: rbac.yaml }}\n"));
        assert_eq!(
            files(&env, &running),
            [
                dir.path().join("checkpoint.yaml"),
                dir.path().join("rbac.yaml")
            ]
        );
        let (dir, env, running) = settings(&format!(
            "{BASE}rbac: {{ rond: {{ roles: r/roles.json, bindings: r/bindings.json }} }}\n"
        ));
        assert_eq!(
            files(&env, &running),
            [
                dir.path().join("checkpoint.yaml"),
                dir.path().join("r/roles.json"),
                dir.path().join("r/bindings.json")
            ]
        );
        let (_, env, running) = settings(&format!(
            "{BASE}rbac: {{ roles: [ {{ id: r }} ], bindings: [] }}\n"
        ));
        assert_eq!(files(&env, &running).len(), 1, "inline: the native file");
    }
}
