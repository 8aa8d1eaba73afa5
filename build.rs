//! Builds the protobuf descriptor set that gRPC reflection serves, so that `grpcurl` and `ghz`
//! can call `envoy.service.auth.v3.Authorization/Check` without any `.proto` file of their own.
//!
//! The `.proto` files are the ones the `envoy-types` dependency ships in its source package; we
//! find that package through `cargo metadata` and compile them with protox (pure Rust, no
//! `protoc`). Nothing from Envoy is copied into this repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use prost::Message;

/// The service whose schema reflection must describe, and its file.
const ENTRY_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";
/// Folders of the envoy-types package that hold the include roots.
const INCLUDE_ROOTS: &[&str] = &[
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec",
    "opentelemetry-proto",
    "client_model",
];

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let proto_root = envoy_types_dir()?.join("proto");
    let includes: Vec<PathBuf> = INCLUDE_ROOTS
        .iter()
        .map(|r| proto_root.join(r))
        .filter(|p| p.is_dir())
        .collect();
    if includes.is_empty() {
        bail!("no proto folders under {}", proto_root.display());
    }
    let descriptors = protox::compile([ENTRY_PROTO], &includes)
        .with_context(|| format!("compiling {ENTRY_PROTO} from {}", proto_root.display()))?;
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);
    std::fs::write(
        out.join("ext_authz_descriptor.bin"),
        descriptors.encode_to_vec(),
    )
    .context("writing the descriptor set")?;
    Ok(())
}

/// The folder of the `envoy-types` package: first in cargo's registry cache, at the version
/// Cargo.lock pins (no subprocess), else wherever `cargo metadata` says it is (vendored sources,
/// other registries).
fn envoy_types_dir() -> Result<PathBuf> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    if let Some(dir) = from_registry_cache(&manifest_dir) {
        return Ok(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target = std::env::var("TARGET").context("TARGET is not set")?;
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &target,
        ])
        .current_dir(&manifest_dir)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let packages = meta["packages"]
        .as_array()
        .context("no packages in metadata")?;
    let manifest = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .context("envoy-types is not among the dependencies")?;
    Ok(Path::new(manifest)
        .parent()
        .context("manifest path has no parent")?
        .to_path_buf())
}

/// `$CARGO_HOME/registry/src/*/envoy-types-<version from Cargo.lock>`, if it is there.
fn from_registry_cache(manifest_dir: &Path) -> Option<PathBuf> {
    let lock = std::fs::read_to_string(manifest_dir.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    lines.find(|l| l.trim() == "name = \"envoy-types\"")?;
    let version = lines
        .next()?
        .trim()
        .strip_prefix("version = \"")?
        .strip_suffix('"')?
        .to_owned();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let wanted = format!("envoy-types-{version}");
    std::fs::read_dir(cargo_home.join("registry").join("src"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join(&wanted))
        .find(|dir| dir.join("proto").is_dir())
}
