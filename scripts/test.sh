#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), checks formatting and
# lints, then runs every test: unit, component (real server on loopback), end-to-end (real
# Envoy, real OpenID provider, TLS). Used by developers and by .ci/run.
#   scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
# The Dockerfile's build step, so that the image build is exercised here too.
cargo build --release --locked
