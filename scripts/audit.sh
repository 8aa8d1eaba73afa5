#!/usr/bin/env bash
# Security advisories of checkpoint's dependencies: `cargo deny check advisories` against the
# RustSec advisory database (https://github.com/rustsec/advisory-db), which cargo-deny fetches
# (git) into ~/.cargo/advisory-dbs. Needs the network, so the test command (scripts/test.sh),
# which runs the offline checks of deny.toml (licenses, bans, sources), cannot run it: run this
# where GitHub is reachable, before a release and regularly (a new advisory can concern an
# unchanged Cargo.lock).
#   scripts/audit.sh
# Exits non-zero on any advisory (vulnerability, unmaintained, unsound, yanked) not ignored in
# deny.toml with its reason. Installs cargo-deny through scripts/setup.sh when missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# setup.sh puts cargo-deny in .venv/bin (or, without a prebuilt one, in ~/.cargo/bin).
export PATH="$root/.venv/bin:$PATH"
if ! cargo deny --version >/dev/null 2>&1; then
  echo "audit: cargo-deny missing: running scripts/setup.sh" >&2
  bash scripts/setup.sh
fi
cargo deny --locked check advisories
