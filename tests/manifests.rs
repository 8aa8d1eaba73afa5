//! The deployment files under `envoy/` and the Dockerfile, checked as data: every YAML file
//! parses, every Kubernetes object is well formed, the rule files inside ConfigMaps load through
//! checkpoint's own loader, the security settings the README promises are there, and the Envoy
//! configurations (the template, the sidecar's, the template with the mutual-TLS checkpoint
//! cluster) pass `envoy --mode validate` (needs `scripts/setup.sh`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;
mod tls_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use checkpoint::testing::RuleSet;
use e2e_support::{allowed_headers, envoy_bin, make_certs, placeholders, render, repo};
use serde_yaml_ng::Value;

/// The YAML files that must exist; a file added later is checked too, a file removed fails.
const EXPECTED_FILES: &[&str] = &[
    "envoy/checkpoint-cluster-mtls.yaml",
    "envoy/envoy.yaml",
    "envoy/istio/authorization-policy.yaml",
    "envoy/istio/checkpoint.yaml",
    "envoy/istio/mesh-config.yaml",
    "envoy/kubernetes/sidecar.yaml",
];

/// One YAML document and where it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn what(&self) -> String {
        format!("{}: {} {}", self.file, self.kind(), self.name())
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under `envoy/` (empty documents skipped).
fn documents() -> Vec<Doc> {
    let root = repo();
    let mut files = Vec::new();
    yaml_files(&root.join("envoy"), &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&root)
                .expect("under the repo")
                .display()
                .to_string()
        })
        .collect();
    for expected in EXPECTED_FILES {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is missing; found {names:?}"
        );
    }
    assert!(files.len() >= EXPECTED_FILES.len(), "{names:?}");
    let mut docs = Vec::new();
    for (path, name) in files.iter().zip(names) {
        let text = std::fs::read_to_string(path).expect("read YAML file");
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e: serde_yaml_ng::Error| panic!("{name}: document {i}: {e}"));
            if !matches!(value, Value::Null) {
                docs.push(Doc {
                    file: name.clone(),
                    value,
                });
            }
        }
    }
    docs
}

/// Envoy configuration that is not a whole bootstrap: pieces of envoy/envoy.yaml's.
const ENVOY_FRAGMENTS: &[&str] = &["envoy/checkpoint-cluster-mtls.yaml"];

fn kubernetes_documents() -> Vec<Doc> {
    // Envoy's files (the bootstrap envoy/envoy.yaml and its fragments) are the documents that are
    // not Kubernetes objects.
    documents()
        .into_iter()
        .filter(|d| {
            d.value.get("static_resources").is_none() && !ENVOY_FRAGMENTS.contains(&d.file.as_str())
        })
        .collect()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

#[test]
fn every_manifest_parses_and_every_rule_file_loads() {
    let docs = documents();
    let bootstraps: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.value.get("static_resources").is_some())
        .collect();
    assert_eq!(
        bootstraps.len(),
        1,
        "one Envoy bootstrap (envoy/envoy.yaml)"
    );
    assert_eq!(bootstraps[0].file, "envoy/envoy.yaml");

    let kube = kubernetes_documents();
    assert!(kube.len() >= 15, "only {} Kubernetes objects", kube.len());
    let mut rule_files = 0;
    for doc in &kube {
        for field in ["apiVersion", "kind"] {
            assert!(
                doc.value[field].as_str().is_some_and(|s| !s.is_empty()),
                "{}: a document without {field}",
                doc.file
            );
        }
        assert!(
            !doc.name().is_empty(),
            "{}: metadata.name missing",
            doc.what()
        );
        if doc.kind() != "ConfigMap" {
            continue;
        }
        let data = doc.value["data"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{}: no data", doc.what()));
        for (key, text) in data {
            let key = key.as_str().expect("data key");
            let text = text
                .as_str()
                .unwrap_or_else(|| panic!("{}: data.{key} is not a string", doc.what()));
            let label = format!("{} data.{key}", doc.what());
            if key.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(text)
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
            } else if key.ends_with(".yaml") || key.ends_with(".yml") {
                serde_yaml_ng::from_str::<Value>(text).unwrap_or_else(|e| panic!("{label}: {e}"));
            }
            if key == "auth.json" {
                let rules = RuleSet::parse(&label, text).unwrap_or_else(|errors| {
                    panic!(
                        "{}",
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                });
                assert!(
                    rules.table.len() >= 3,
                    "{label}: {} rules",
                    rules.table.len()
                );
                rule_files += 1;
            }
        }
    }
    assert_eq!(
        rule_files, 2,
        "auth.json in checkpoint.yaml and sidecar.yaml"
    );

    let demo = std::fs::read_to_string(repo().join("envoy/demo/auth.json"))
        .expect("read envoy/demo/auth.json");
    let rules = RuleSet::parse("envoy/demo/auth.json", &demo).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(
        rules.table.len() >= 5,
        "envoy/demo/auth.json: {} rules",
        rules.table.len()
    );
}

/// The port a probe targets, resolved through the container's named ports.
fn probe_port(container: &Value, probe: &Value) -> u64 {
    let port = &probe["httpGet"]["port"];
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("probe port");
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("probe port {name} is not a container port"))
}

#[test]
fn deployments_run_unprivileged_with_probes_and_requests() {
    let docs = kubernetes_documents();
    let deployments: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Deployment").collect();
    assert_eq!(deployments.len(), 2, "checkpoint.yaml and sidecar.yaml");
    let mut checkpoints = 0;
    for deployment in deployments {
        let pod = &deployment.value["spec"]["template"]["spec"];
        let pod_security = &pod["securityContext"];
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{}",
            deployment.what()
        );
        let containers = seq(&pod["containers"]);
        assert!(
            !containers.is_empty(),
            "{}: no containers",
            deployment.what()
        );
        for container in containers {
            let what = format!(
                "{} container {}",
                deployment.what(),
                container["name"].as_str().unwrap_or("?")
            );
            let security = &container["securityContext"];
            let non_root = security["runAsNonRoot"]
                .as_bool()
                .or(pod_security["runAsNonRoot"].as_bool());
            assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
            let user = security["runAsUser"]
                .as_u64()
                .or(pod_security["runAsUser"].as_u64());
            assert!(user.is_some_and(|u| u != 0), "{what}: runAsUser {user:?}");
            assert_eq!(
                security["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{what}"
            );
            assert_eq!(
                security["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{what}"
            );
            assert!(
                seq(&security["capabilities"]["drop"])
                    .iter()
                    .any(|c| c.as_str() == Some("ALL")),
                "{what}"
            );
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"]["requests"][resource].is_null(),
                    "{what}: no {resource} request"
                );
                assert!(
                    !container["resources"]["limits"][resource].is_null(),
                    "{what}: no {resource} limit"
                );
            }
            if container["name"].as_str() != Some("checkpoint") {
                continue;
            }
            checkpoints += 1;
            let readiness = &container["readinessProbe"];
            let liveness = &container["livenessProbe"];
            assert_eq!(
                readiness["httpGet"]["path"].as_str(),
                Some("/-/ready"),
                "{what}: readiness"
            );
            assert_eq!(
                liveness["httpGet"]["path"].as_str(),
                Some("/-/healthz"),
                "{what}: liveness"
            );
            assert_eq!(
                probe_port(container, readiness),
                3000,
                "{what}: readiness port"
            );
            assert_eq!(
                probe_port(container, liveness),
                3000,
                "{what}: liveness port"
            );
            // The probes reach the status routes only if checkpoint serves them on that port.
            let env = seq(&container["env"]);
            let var = |name: &str| {
                env.iter()
                    .find(|e| e["name"].as_str() == Some(name))
                    .and_then(|e| e["value"].as_str())
            };
            assert_eq!(var("HTTP_PORT"), Some("3000"), "{what}: HTTP_PORT");
            assert!(var("USERINFO_URL").is_some(), "{what}: USERINFO_URL");
            assert_eq!(var("CONFIGURATION_FILE_NAME"), Some("auth"), "{what}");
        }
    }
    assert_eq!(checkpoints, 2, "one checkpoint container per Deployment");
}

#[test]
fn istio_provider_fails_closed_and_policy_is_custom() {
    let docs = kubernetes_documents();
    let mesh = docs
        .iter()
        .find(|d| d.file == "envoy/istio/mesh-config.yaml")
        .expect("mesh config document");
    let providers = seq(&mesh.value["spec"]["meshConfig"]["extensionProviders"]);
    let provider = providers
        .iter()
        .find(|p| !p["envoyExtAuthzGrpc"].is_null())
        .expect("an envoyExtAuthzGrpc provider");
    let grpc = &provider["envoyExtAuthzGrpc"];
    // Security: explicitly false, not just absent.
    assert_eq!(grpc["failOpen"].as_bool(), Some(false), "failOpen");
    assert_eq!(grpc["statusOnError"].as_str(), Some("503"), "statusOnError");
    assert!(
        grpc["timeout"].as_str().is_some(),
        "a timeout (Istio's default is 600 s)"
    );

    // The provider points at checkpoint's Service and its gRPC port.
    let service = find(&docs, "Service", "checkpoint");
    let namespace = service.value["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    assert_eq!(
        grpc["service"].as_str(),
        Some(format!("checkpoint.{namespace}.svc.cluster.local").as_str())
    );
    let port = seq(&service.value["spec"]["ports"])
        .iter()
        .find(|p| p["port"].as_u64() == grpc["port"].as_u64())
        .expect("the provider's port is a Service port");
    assert_eq!(port["appProtocol"].as_str(), Some("grpc"));

    let policies: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "AuthorizationPolicy")
        .collect();
    assert!(!policies.is_empty(), "no AuthorizationPolicy");
    for policy in policies {
        assert_eq!(
            policy.value["spec"]["action"].as_str(),
            Some("CUSTOM"),
            "{}",
            policy.what()
        );
        assert_eq!(
            policy.value["spec"]["provider"]["name"],
            provider["name"],
            "{}: provider name",
            policy.what()
        );
    }
}

/// Every Envoy that calls checkpoint closes a connection that has carried no Check for a while,
/// with one value everywhere: the template (and so the sidecar's and the mutual-TLS cluster,
/// which the drift tests hold equal to it), the Istio DestinationRule of checkpoint's Service, and
/// the bench's gateway (what the soak measures). After a burst, Envoy keeps the extra connections
/// it opened, idle, and checkpoint keeps HTTP/2 state sized for the burst on each of them until it
/// is closed (README, "Envoy, Istio and Kubernetes"); `tests/e2e.rs` shows them closing.
#[test]
fn every_envoy_closes_idle_connections_to_checkpoint() {
    const IDLE: &str = "30s";
    const OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let idle_of = |file: &str, cluster: &str| -> Option<String> {
        let text = std::fs::read_to_string(repo().join(file)).expect("read an Envoy file");
        // Any value will do for the placeholders: only the cluster's options are read.
        let names = placeholders(&text);
        let values: Vec<(&str, String)> = names.iter().map(|n| (n.as_str(), "1".into())).collect();
        let mut config: Value = serde_yaml_ng::from_str(&render(&text, &values)).expect("YAML");
        let cluster = at(
            &mut config,
            &["static_resources", "clusters", &format!("name={cluster}")],
        );
        cluster["typed_extension_protocol_options"][OPTIONS]["common_http_protocol_options"]
            ["idle_timeout"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        idle_of("envoy/envoy.yaml", "checkpoint").as_deref(),
        Some(IDLE),
        "envoy/envoy.yaml: the checkpoint cluster's idle_timeout"
    );
    assert_eq!(
        idle_of("bench/envoy-ext-authz.yaml", "authz").as_deref(),
        Some(IDLE),
        "bench/envoy-ext-authz.yaml: the authz cluster's idle_timeout"
    );

    let docs = kubernetes_documents();
    let service = find(&docs, "Service", "checkpoint");
    let namespace = service.value["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let rule = find(&docs, "DestinationRule", "checkpoint");
    assert_eq!(
        rule.value["spec"]["host"].as_str(),
        Some(format!("checkpoint.{namespace}.svc.cluster.local").as_str()),
        "{}: the host is checkpoint's Service",
        rule.what()
    );
    assert_eq!(
        rule.value["spec"]["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"].as_str(),
        Some(IDLE),
        "{}: idleTimeout",
        rule.what()
    );
}

/// `envoy --mode validate -c config`: exits 0 and says OK.
fn envoy_validate(config: &Path) {
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "-c",
        ])
        .arg(config)
        .output()
        .expect("run envoy");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "envoy --mode validate {}:\n{text}",
        config.display()
    );
    assert!(
        text.contains(" OK"),
        "envoy --mode validate {}:\n{text}",
        config.display()
    );
}

#[test]
fn envoy_template_validates_when_rendered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let template =
        std::fs::read_to_string(repo().join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
    let mut names = placeholders(&template);
    names.sort();
    names.dedup();
    let values: Vec<(&str, String)> = vec![
        ("LISTEN_ADDRESS", "127.0.0.1".into()),
        ("HTTPS_PORT", "18443".into()),
        ("HTTP_PORT", "18080".into()),
        ("ADMIN_PORT", "19901".into()),
        ("CHECKPOINT_ADDRESS", "127.0.0.1".into()),
        ("CHECKPOINT_PORT", "50051".into()),
        ("UPSTREAM_ADDRESS", "127.0.0.1".into()),
        ("UPSTREAM_PORT", "3001".into()),
        ("TLS_DIR", tls.display().to_string()),
        ("ALLOWED_HEADERS", demo_allowed_headers()),
    ];
    let mut documented: Vec<String> = values.iter().map(|(k, _)| (*k).to_owned()).collect();
    documented.sort();
    assert_eq!(names, documented, "the template's placeholders");
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, render(&template, &values)).expect("write rendered config");
    envoy_validate(&config);
}

/// envoy/checkpoint-cluster-mtls.yaml is envoy/envoy.yaml's `checkpoint` cluster plus a
/// `transport_socket` with the TLS settings the README promises, and the template with it in
/// place of its cluster passes `envoy --mode validate` (tests/tls.rs runs it for real).
#[test]
fn mtls_cluster_is_the_template_cluster_with_tls_and_validates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let variant = std::fs::read_to_string(repo().join("envoy/checkpoint-cluster-mtls.yaml"))
        .expect("read envoy/checkpoint-cluster-mtls.yaml");
    let mut names = placeholders(&variant);
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "CHECKPOINT_ADDRESS",
            "CHECKPOINT_PORT",
            "CHECKPOINT_TLS_NAME",
            "TLS_DIR"
        ],
        "the variant's placeholders"
    );
    let values: Vec<(&str, String)> = vec![
        ("LISTEN_ADDRESS", "127.0.0.1".into()),
        ("HTTPS_PORT", "18443".into()),
        ("HTTP_PORT", "18080".into()),
        ("ADMIN_PORT", "19901".into()),
        (
            "CHECKPOINT_ADDRESS",
            "checkpoint.auth.svc.cluster.local".into(),
        ),
        ("CHECKPOINT_PORT", "50051".into()),
        ("CHECKPOINT_TLS_NAME", "checkpoint.auth.svc".into()),
        ("UPSTREAM_ADDRESS", "127.0.0.1".into()),
        ("UPSTREAM_PORT", "3001".into()),
        ("TLS_DIR", tls.display().to_string()),
        ("ALLOWED_HEADERS", demo_allowed_headers()),
    ];
    let template =
        std::fs::read_to_string(repo().join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
    let template_values: Vec<(&str, String)> = values
        .iter()
        .filter(|(k, _)| *k != "CHECKPOINT_TLS_NAME")
        .cloned()
        .collect();
    let envoy = render(&template, &template_values);
    let cluster = render(&variant, &values);

    // The same cluster as the template's, plus transport_socket: a change to one (a timeout, the
    // HTTP/2 options) cannot miss the other.
    let mut plain: Value = serde_yaml_ng::from_str(&cluster).expect("rendered variant");
    let socket = plain
        .as_mapping_mut()
        .expect("a mapping")
        .remove("transport_socket")
        .expect("transport_socket");
    let mut rendered: Value = serde_yaml_ng::from_str(&envoy).expect("rendered template");
    let original = at(
        &mut rendered,
        &["static_resources", "clusters", "name=checkpoint"],
    );
    let mut diffs = Vec::new();
    differences(original, &plain, String::new(), &mut diffs);
    assert!(
        diffs.is_empty(),
        "envoy/checkpoint-cluster-mtls.yaml drifted from envoy/envoy.yaml's cluster:\n{}",
        diffs.join("\n")
    );

    // What the README promises of it.
    assert_eq!(socket["name"].as_str(), Some("envoy.transport_sockets.tls"));
    let context = &socket["typed_config"];
    assert_eq!(
        context["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
    );
    assert_eq!(context["sni"].as_str(), Some("checkpoint.auth.svc"));
    let common = &context["common_tls_context"];
    let params = &common["tls_params"];
    assert_eq!(
        params["tls_minimum_protocol_version"].as_str(),
        Some("TLSv1_2")
    );
    assert_eq!(
        params["tls_maximum_protocol_version"].as_str(),
        Some("TLSv1_3")
    );
    let suites = seq(&params["cipher_suites"]);
    assert!(!suites.is_empty(), "TLS 1.2 suites are listed");
    for suite in suites {
        let suite = suite.as_str().expect("suite name");
        assert!(
            suite.starts_with("ECDHE-")
                && (suite.contains("-GCM-") || suite.ends_with("-CHACHA20-POLY1305")),
            "{suite} is not an ECDHE AEAD suite"
        );
    }
    assert_eq!(
        seq(&common["alpn_protocols"]),
        [Value::from("h2")],
        "ALPN h2 only"
    );
    assert_eq!(
        seq(&common["tls_certificate_sds_secret_configs"]).len(),
        1,
        "Envoy presents a client certificate"
    );
    let validation = &common["combined_validation_context"];
    let sans = seq(&validation["default_validation_context"]["match_typed_subject_alt_names"]);
    assert_eq!(sans.len(), 1, "{sans:?}");
    assert_eq!(sans[0]["san_type"].as_str(), Some("DNS"));
    assert_eq!(
        sans[0]["matcher"]["exact"].as_str(),
        Some("checkpoint.auth.svc")
    );
    assert!(
        validation["validation_context_sds_secret_config"]["name"]
            .as_str()
            .is_some(),
        "a CA to verify checkpoint's certificate against"
    );

    let config = dir.path().join("envoy-mtls.yaml");
    std::fs::write(&config, tls_support::with_mtls_cluster(&envoy, &cluster))
        .expect("write config");
    envoy_validate(&config);
}

/// The sidecar Deployment's files, laid out under `root` the way the kubelet would mount them,
/// with every `/etc/envoy/` path moved under `root`. Returns the Envoy config's path.
fn mount_sidecar_envoy(docs: &[Doc], root: &Path, tls: &Path) -> PathBuf {
    let deployment = find(docs, "Deployment", "checkpoint-gateway");
    let pod = &deployment.value["spec"]["template"]["spec"];
    let envoy = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("envoy"))
        .expect("envoy container");
    let args: Vec<&str> = seq(&envoy["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config-path" || w[0] == "-c")
        .map(|w| w[1])
        .expect("--config-path in the envoy args");
    let moved = |text: &str| text.replace("/etc/envoy/", &format!("{}/etc/envoy/", root.display()));
    let under_root = |path: &str| root.join(path.trim_start_matches('/'));
    for mount in seq(&envoy["volumeMounts"]) {
        let mount_path = mount["mountPath"].as_str().expect("mountPath");
        let volume = seq(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(map) = volume["configMap"]["name"].as_str() {
            let data = &find(docs, "ConfigMap", map).value["data"];
            for item in seq(&volume["configMap"]["items"]) {
                let key = item["key"].as_str().expect("item key");
                let text = data[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("ConfigMap {map} has no {key}"));
                files.push((
                    item["path"].as_str().expect("item path").to_owned(),
                    moved(text),
                ));
            }
        } else if volume["secret"]["secretName"].as_str() == Some("checkpoint-gateway-tls") {
            // The cert-manager Secret: a kubernetes.io/tls Secret with ca.crt.
            for (name, source) in [
                ("tls.crt", "server.crt"),
                ("tls.key", "server.key"),
                ("ca.crt", "ca.crt"),
            ] {
                files.push((
                    name.to_owned(),
                    std::fs::read_to_string(tls.join(source)).expect("read cert"),
                ));
            }
        } else if volume.get("emptyDir").is_some() {
            // Empty until a container writes to it (the checkpoint socket).
        } else {
            panic!("unexpected volume {:?}", volume["name"]);
        }
        match mount["subPath"].as_str() {
            Some(sub) => {
                let (_, text) = files.iter().find(|(p, _)| p == sub).expect("subPath item");
                let target = under_root(mount_path);
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                std::fs::write(target, text).expect("write mounted file");
            }
            None => {
                let target = under_root(mount_path);
                std::fs::create_dir_all(&target).expect("mkdir");
                for (name, text) in &files {
                    std::fs::write(target.join(name), text).expect("write mounted file");
                }
            }
        }
    }
    let config = under_root(config_path);
    assert!(config.exists(), "{config_path} is not mounted");
    config
}

#[test]
fn sidecar_envoy_config_validates() {
    let docs = kubernetes_documents();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    make_certs(&tls);
    let root = dir.path().join("pod");
    let config = mount_sidecar_envoy(&docs, &root, &tls);
    let text = std::fs::read_to_string(&config).expect("read mounted config");
    assert!(
        !text.contains(" /etc/envoy/"),
        "an /etc/envoy path was left unmoved"
    );
    for sds in [
        "tls/sds/server_cert.yaml",
        "tls/sds/validation_context.yaml",
        "tls/certs/tls.key",
    ] {
        assert!(
            root.join("etc/envoy").join(sds).exists(),
            "{sds} is not mounted"
        );
    }
    envoy_validate(&config);
}

/// Applies `change` to the mapping at `path` (keys, or `name=VALUE` to pick a list element).
fn at<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut v = value;
    for step in path {
        v = match step.split_once('=') {
            Some((key, wanted)) => v
                .as_sequence_mut()
                .expect("a list")
                .iter_mut()
                .find(|e| e[key].as_str() == Some(wanted))
                .unwrap_or_else(|| panic!("no element with {key}={wanted}")),
            None => v.get_mut(*step).unwrap_or_else(|| panic!("no {step}")),
        };
    }
    v
}

/// The differing paths between two YAML values, for a readable failure.
fn differences(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{}", k.as_str().unwrap_or("?"));
                match y.get(k) {
                    Some(w) => differences(v, w, p, out),
                    None => out.push(format!("{p}: only in the template")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!(
                    "{path}.{}: only in the sidecar",
                    k.as_str().unwrap_or("?")
                ));
            }
        }
        (Value::Sequence(x), Value::Sequence(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(v, w, format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a:?} != {b:?}")),
        _ => {}
    }
}

/// `checkpoint allowed-headers` for the demo's configuration (scripts/demo.sh's variables).
fn demo_allowed_headers() -> String {
    allowed_headers(&[
        (
            "CONFIGURATION_PATH",
            repo().join("envoy/demo").display().to_string(),
        ),
        ("CONFIGURATION_FILE_NAME", "auth".into()),
        ("USERINFO_URL", "http://127.0.0.1:9/me".into()),
        (
            "HEADERS_TO_PROXY",
            "authorization,cookie,x-request-id".into(),
        ),
    ])
}

/// `checkpoint allowed-headers` with the environment sidecar.yaml gives its checkpoint
/// container, the rules read from envoy/demo (the rules do not change the list).
fn sidecar_allowed_headers(docs: &[Doc]) -> String {
    let deployment = find(docs, "Deployment", "checkpoint-gateway");
    let container = seq(&deployment.value["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == "checkpoint")
        .expect("a checkpoint container");
    let mut env: Vec<(&str, String)> = seq(&container["env"])
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["value"].as_str()?.to_owned())))
        .filter(|(name, _)| *name != "CONFIGURATION_PATH")
        .collect();
    env.push((
        "CONFIGURATION_PATH",
        repo().join("envoy/demo").display().to_string(),
    ));
    allowed_headers(&env)
}

/// sidecar.yaml says its Envoy config is envoy/envoy.yaml rendered with given values plus three
/// changes: hold it to that, so a fix to one (a cipher, a timeout) cannot miss the other.
#[test]
fn sidecar_envoy_config_is_the_template_with_the_documented_changes() {
    let docs = kubernetes_documents();
    let embedded = find(&docs, "ConfigMap", "checkpoint-gateway-envoy").value["data"]["envoy.yaml"]
        .as_str()
        .expect("envoy.yaml in the ConfigMap");
    let embedded: Value = serde_yaml_ng::from_str(embedded).expect("embedded envoy.yaml");
    let template =
        std::fs::read_to_string(repo().join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
    let rendered = render(
        &template,
        &[
            ("LISTEN_ADDRESS", "0.0.0.0".into()),
            ("HTTPS_PORT", "8443".into()),
            ("HTTP_PORT", "8080".into()),
            ("ADMIN_PORT", "9901".into()),
            ("CHECKPOINT_ADDRESS", "127.0.0.1".into()),
            ("CHECKPOINT_PORT", "50051".into()),
            (
                "UPSTREAM_ADDRESS",
                "my-service.default.svc.cluster.local".into(),
            ),
            ("UPSTREAM_PORT", "80".into()),
            ("TLS_DIR", "/etc/envoy/tls".into()),
            // What checkpoint itself says it reads with the container's own variables.
            ("ALLOWED_HEADERS", sidecar_allowed_headers(&docs)),
        ],
    );
    let mut expected: Value = serde_yaml_ng::from_str(&rendered).expect("rendered envoy.yaml");
    // 1. The admin interface on loopback.
    *at(
        &mut expected,
        &["admin", "address", "socket_address", "address"],
    ) = Value::from("127.0.0.1");
    // 2. The redirect keeps the port (clients use 80/443 through the Service).
    let redirect =
        at(
            &mut expected,
            &[
                "static_resources",
                "listeners",
                "name=http_redirect",
                "filter_chains",
            ],
        )
        .as_sequence_mut()
        .expect("filter chains")[0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
            [0]["routes"][0]["redirect"]
            .as_mapping_mut()
            .expect("redirect");
    assert!(
        redirect.remove("port_redirect").is_some(),
        "the template redirects with port_redirect"
    );
    // 3. A STATIC checkpoint cluster whose endpoint is the Unix socket in the shared volume.
    let cluster = at(
        &mut expected,
        &["static_resources", "clusters", "name=checkpoint"],
    )
    .as_mapping_mut()
    .expect("checkpoint cluster");
    cluster.insert(Value::from("type"), Value::from("STATIC"));
    cluster.remove("dns_lookup_family");
    let address = &mut cluster.get_mut("load_assignment").expect("load_assignment")["endpoints"][0]
        ["lb_endpoints"][0]["endpoint"]["address"];
    *address = serde_yaml_ng::from_str("pipe: { path: /var/run/checkpoint/grpc.sock }")
        .expect("pipe address");

    let mut diffs = Vec::new();
    differences(&expected, &embedded, String::new(), &mut diffs);
    assert!(
        diffs.is_empty(),
        "sidecar.yaml's envoy.yaml drifted from envoy/envoy.yaml:\n{}",
        diffs.join("\n")
    );
}

/// The socket Envoy dials is the one checkpoint serves, in a volume both containers mount and
/// nothing else does.
#[test]
fn sidecar_envoy_and_checkpoint_share_the_unix_socket() {
    let docs = kubernetes_documents();
    let deployment = find(&docs, "Deployment", "checkpoint-gateway");
    let pod = &deployment.value["spec"]["template"]["spec"];
    let container = |name: &str| {
        seq(&pod["containers"])
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let checkpoint = container("checkpoint");
    let addr = seq(&checkpoint["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some("CHECKPOINT_GRPC_ADDR"))
        .and_then(|e| e["value"].as_str())
        .expect("CHECKPOINT_GRPC_ADDR");
    let path = addr.strip_prefix("unix:").expect("a unix: address");
    let embedded = find(&docs, "ConfigMap", "checkpoint-gateway-envoy").value["data"]["envoy.yaml"]
        .as_str()
        .expect("envoy.yaml in the ConfigMap");
    let mut envoy: Value = serde_yaml_ng::from_str(embedded).expect("embedded envoy.yaml");
    let cluster = at(
        &mut envoy,
        &["static_resources", "clusters", "name=checkpoint"],
    );
    assert_eq!(
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["pipe"]["path"]
            .as_str(),
        Some(path),
        "Envoy dials the socket checkpoint serves"
    );
    let dir = Path::new(path).parent().expect("socket folder");
    let volume_at = |c: &Value| {
        seq(&c["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
            .and_then(|m| m["name"].as_str())
            .map(str::to_owned)
    };
    let volume = volume_at(checkpoint).expect("checkpoint mounts the socket folder");
    assert_eq!(
        volume_at(container("envoy")),
        Some(volume.clone()),
        "Envoy mounts it too"
    );
    let declared = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(volume.as_str()))
        .expect("the volume is declared");
    assert!(
        declared.get("emptyDir").is_some(),
        "a pod-private emptyDir, not a host path: {declared:?}"
    );
    assert!(
        pod["securityContext"]["fsGroup"].as_u64().is_some(),
        "fsGroup owns the emptyDir, so the 0660 socket is reachable by both containers"
    );
}

/// The Dockerfile's instructions, with continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile");
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// An instruction's keyword, upper case.
fn dockerfile_keyword(instruction: &str) -> String {
    instruction
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Every base image is pinned by digest: `FROM name:tag@sha256:<64 hex>`, or
/// `FROM ${IMAGE}@${DIGEST}` where `DIGEST` is a build argument declared before the first FROM
/// with no default (so a build without the digest fails instead of taking whatever the tag
/// points at) and `IMAGE` is one with its tag as default. A FROM naming an earlier stage is
/// not a base image.
#[test]
fn dockerfile_base_images_are_pinned_by_digest() {
    let instructions = dockerfile_instructions();
    let mut args: Vec<(String, Option<String>)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut bases = 0;
    for instruction in &instructions {
        let words: Vec<&str> = instruction.split_whitespace().collect();
        match dockerfile_keyword(instruction).as_str() {
            "ARG" if bases == 0 => {
                let (name, default) = match words[1].split_once('=') {
                    Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                    None => (words[1].to_owned(), None),
                };
                args.push((name, default));
            }
            "FROM" => {
                let image = words
                    .iter()
                    .skip(1)
                    .find(|w| !w.starts_with("--"))
                    .expect("FROM image");
                let earlier_stage = stages.iter().any(|s| s == image);
                if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                    stages.push(words[i + 1].to_owned());
                }
                if earlier_stage {
                    continue;
                }
                bases += 1;
                let (name, digest) = image
                    .split_once('@')
                    .unwrap_or_else(|| panic!("FROM {image}: not pinned by digest (IMAGE@DIGEST)"));
                let arg = |reference: &str| {
                    reference
                        .strip_prefix("${")
                        .and_then(|r| r.strip_suffix('}'))
                        .map(|a| {
                            args.iter()
                                .find(|(n, _)| n == a)
                                .unwrap_or_else(|| panic!("FROM {image}: ARG {a} is not declared before the first FROM"))
                                .1
                                .clone()
                        })
                };
                match arg(digest) {
                    Some(default) => assert_eq!(
                        default, None,
                        "FROM {image}: the digest argument must have no default"
                    ),
                    None => assert!(
                        digest.strip_prefix("sha256:").is_some_and(
                            |h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())
                        ),
                        "FROM {image}: {digest} is not a sha256 digest"
                    ),
                }
                let tagged = arg(name).map_or(Some(name.to_owned()), |default| default);
                let tagged = tagged.unwrap_or_else(|| {
                    panic!("FROM {image}: the image argument needs its name:tag as default")
                });
                assert!(
                    tagged
                        .rsplit('/')
                        .next()
                        .is_some_and(|last| last.contains(':')),
                    "FROM {image}: {tagged} names no tag (keep the tag beside the digest, for readers)"
                );
            }
            _ => {}
        }
    }
    assert!(
        bases >= 2,
        "a build stage and a runtime stage: {instructions:?}"
    );
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let instructions = dockerfile_instructions();
    let keyword = |i: &String| dockerfile_keyword(i);
    // The image's binary is the release build script's: built with a profile of its training
    // load, then linked again with its hot code together, every cargo command locked.
    let builds: Vec<&String> = instructions
        .iter()
        .filter(|i| keyword(i) == "RUN" && (i.contains("cargo") || i.contains("build-release")))
        .collect();
    assert_eq!(builds.len(), 1, "one build: {builds:?}");
    let words: Vec<&str> = builds[0].split_whitespace().collect();
    assert!(
        words.contains(&"scripts/build-release.sh"),
        "the build runs scripts/build-release.sh: {}",
        builds[0]
    );
    assert!(
        words.contains(&"target/dist/checkpoint"),
        "the image gets the script's binary, target/dist/checkpoint: {}",
        builds[0]
    );
    let script = std::fs::read_to_string(repo().join("scripts/build-release.sh"))
        .expect("read scripts/build-release.sh");
    let cargo_lines: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo "))
        .collect();
    assert!(
        !cargo_lines.is_empty()
            && cargo_lines.iter().all(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.contains(&"--release") && words.contains(&"--locked")
            }),
        "every cargo command of the build script is --release --locked: {cargo_lines:?}"
    );

    // The final stage: after the last FROM.
    let last_from = instructions
        .iter()
        .rposition(|i| keyword(i) == "FROM")
        .expect("FROM");
    let stage = &instructions[last_from..];
    let user = stage
        .iter()
        .rev()
        .find(|i| keyword(i) == "USER")
        .expect("a USER in the final stage");
    let user = user.split_whitespace().nth(1).expect("USER value");
    let name = user.split(':').next().unwrap_or_default();
    assert!(!matches!(name, "" | "0" | "root"), "USER {user} is root");
    let exposed: Vec<&str> = stage
        .iter()
        .filter(|i| keyword(i) == "EXPOSE")
        .flat_map(|i| i.split_whitespace().skip(1))
        .map(|p| p.split('/').next().unwrap_or_default())
        .collect();
    for port in ["50051", "3000"] {
        assert!(exposed.contains(&port), "EXPOSE {port}: {exposed:?}");
    }
}

/// SECURITY.md names a test for every guarantee: each `file::test` it names (a file of `tests/`,
/// or a path under `src/`) is a test function that exists, so the page cannot point at a test
/// that was renamed or removed.
#[test]
fn every_test_security_md_names_exists() {
    let text = std::fs::read_to_string(repo().join("SECURITY.md")).expect("SECURITY.md");
    let mut named = 0;
    for quoted in text.split('`').skip(1).step_by(2) {
        let Some((file, test)) = quoted.rsplit_once("::") else {
            continue;
        };
        if !test
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let path = if file.starts_with("src/") {
            repo().join(file)
        } else if file.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            repo().join("tests").join(format!("{file}.rs"))
        } else {
            continue;
        };
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("SECURITY.md names {quoted}: {}: {e}", path.display()));
        let defined = [format!("fn {test}("), format!("fn {test}<")]
            .iter()
            .any(|f| source.contains(f.as_str()));
        assert!(
            defined,
            "SECURITY.md names {quoted}, which {} does not define",
            path.display()
        );
        named += 1;
    }
    assert!(named >= 40, "SECURITY.md names {named} tests");
}
