#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), checks formatting and
# lints, builds the release binary (the Dockerfile's build step), then runs every test in the
# same release profile: unit, component (real server on loopback), end-to-end (real Envoy, real
# OpenID provider, TLS). Used by developers and by .ci/run.
#   scripts/test.sh
#
# Two compilations, not three: clippy's check build, and the release profile shared by
# `cargo build --release` and `cargo test --release` (the tests find the binaries through
# CARGO_BIN_EXE_*, whatever the profile). The test build reuses every crate the release build
# compiled except those whose features the dev-dependencies change (tokio, serde_json, axum,
# reqwest, regex-automata, and the crates built on them), so it recompiles those and the tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Measured on a 2-core machine shared with other builds (load average about 5), from an empty
# target directory: setup 2.5 min (Envoy from PyPI, npm), clippy 5.5, release build 7, release
# test build 4.5, the tests 0.5.
echo "test.sh: a first run (empty target directory, nothing installed) takes about 20 minutes on" \
  "2 cores: setup 2.5, clippy 5.5, release build 7, test build 4.5, tests 0.5; later runs rebuild" \
  "only what changed."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The dependency tree against deny.toml: licenses, banned crates, sources (crates.io only), and
# duplicate versions reported. Offline: the advisories need the RustSec database from GitHub,
# which this command cannot reach; scripts/audit.sh checks them where the network is there.
PATH="$root/.venv/bin:$PATH" cargo deny --locked check --hide-inclusion-graph licenses bans sources
# The Dockerfile's build step, with the production features (no dev-dependency features):
# `cargo build --release --locked --bin checkpoint`, linked again with its hot code together.
scripts/build-release.sh
cargo test --release --locked --all-targets
