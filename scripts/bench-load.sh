#!/usr/bin/env bash
# Load benchmark of checkpoint against its floor and against Envoy's own authorization (issue 4).
#
#   scripts/bench-load.sh                 the load scenarios, alternated, ROUNDS times (about 3 min)
#   scripts/bench-load.sh --cache-memory  resident memory of checkpoint with 100,000 distinct identities
#   scripts/bench-load.sh --coalesce      user-info calls for 1,000 concurrent Checks with one new credential
#   scripts/bench-load.sh --all           all three
#   scripts/bench-load.sh --profile       callgrind of the noop server, of checkpoint (scenario b) and of
#                                         checkpoint with a local jwt source (scenario bj),
#                                         BENCH_PROFILE_CHECKS Checks each (20000, about 3 min):
#                                         instructions per Check, and for the servers the code
#                                         a Check walks (bench/footprint.py);
#                                         BENCH_PROFILE_TARGETS adds noop-envoy, checkpoint-envoy
#                                         (the server under callgrind behind Envoy, as in d0 and d;
#                                         noop-envoy-unix, checkpoint-envoy-unix as in d0u and du)
#                                         and envoy-noop, envoy-noop-identity, envoy-noop-headers,
#                                         envoy-checkpoint, envoy-jwt (Envoy itself under callgrind:
#                                         what Envoy spends per request with each answer, and in e),
#                                         and envoy-noop-unix, envoy-noop-headers-unix,
#                                         envoy-checkpoint-unix (the same over the Unix socket)
#
# Scenarios, each driven by h2load (Debian's nghttp2-client, installed if missing):
#   a    the no-op ext_authz server (examples/noop_authz.rs), gRPC Check direct: the floor
#   b    checkpoint, gRPC Check direct, warm identity cache, a three-clause expression
#   c    Envoy, no authorization, in front of a direct_response route
#   d0   Envoy + the no-op server as ext_authz (gRPC)
#   d    Envoy + checkpoint as ext_authz (gRPC)
#   d0u, du   d0 and d with Envoy dialing the ext_authz server's Unix socket instead of TCP (the
#        sidecar pod of envoy/kubernetes/sidecar.yaml)
#   e    Envoy jwt_authn (RS256, inline JWKS, no token cache) + rbac on the groups claim
#   a@1k, b@1k   a and b at a fixed 1,000 requests/s (h2load --rps, one connection), for p99
#   bj   (not in the default list) checkpoint with a local `jwt` source (CHECKPOINT_CONFIG, keys
#        from the bench's JWKS), gRPC direct, the same RS256 token: a cached verification
#   d0h  (not in the default list) Envoy + the no-op server answering with a copy of checkpoint's
#        default allow (three identity headers set, one header removed; no dynamic metadata):
#        what Envoy spends applying checkpoint's answer, apart from what checkpoint spends
#        computing it
#   d0+d, d0u+du   (not in the default list) a pair run together: both gateways loaded in the
#        same seconds on core 0 (two h2loads on core 1), reported as d0p/dp and d0up/dup with the
#        ratio of their CPU per request (also d0+d0h and d0h+d, reported as d0hp: what Envoy
#        spends applying checkpoint's answer, and what checkpoint spends computing it). On a
#        host whose speed drifts from one second to the next, two runs made one after the other
#        differ by more than the 5% the targets are about; run together, both see the same drift. Each gateway gets part of the core (lower req/s, less
#        batching, shared caches), so the CPU per request is higher than in d0 and d.
#
# Before loading anything, the script proves that the exact bytes it sends get an allow: the gRPC
# body is posted once with curl and the CheckResponse decoded (status 0 and, for checkpoint, the
# miauserid header); through Envoy the direct_response route echoes the miauserid it received as
# x-seen-user (when the request asks with x-bench-echo, as the checks do and the load does not).
# A request without a credential must be denied where authorization is on. During
# the load, every non-2xx answer is counted and reported.
#
# Pinning: the server under test on core 0 (taskset -c 0), h2load on core 1. In d and d0 Envoy and
# the ext_authz server share core 0, so the figures are "one core for the whole gateway"; the
# user-info server (bench/userinfo.js) runs on core 1 with the load generator, out of the
# measured CPU. CPU per request is utime+stime of the server processes (/proc/PID/stat) over
# the run divided by the requests h2load completed; behind Envoy it is also split into Envoy's
# share and the ext_authz server's. The "foreign CPU" column is the CPU time,
# in % of one core, that both cores spent during the run on anything but the bench's own
# processes (servers, h2load, user-info): when it is large, something else was running on the
# machine and the run is noisy.
#
# Settings (environment): BENCH_ROUNDS (2), BENCH_DURATION seconds per run (8), BENCH_CONNECTIONS
# (4) and BENCH_STREAMS per connection (8) for the saturated runs, BENCH_FRESH (1: every Envoy is
# started again before each round after the first; 0 keeps the same Envoys), BENCH_RATE (1000),
# BENCH_SCENARIOS (a subset and order of "a b c d0 d d0u du e a@1k b@1k", plus "bj", "d0h",
# "d0+d", "d0u+du", "d0+d0h" and "d0h+d"),
# BENCH_LOG_LEVEL for checkpoint (info, its default: the decision log line is written for every
# Check, to /dev/null), BENCH_PORT_BASE (47100), BENCH_KEEP=1 keeps the work folder, BENCH_BUILD=0
# skips the build (`cargo build --release --examples` and scripts/build-release.sh; uses
# target/dist/checkpoint and target/release/examples as they are), BENCH_BIN a folder laid out like
# target/release (checkpoint, examples/noop_authz, ...) to measure instead, e.g. a saved copy of
# an earlier build for a before/after comparison (implies BENCH_BUILD=0), BENCH_PROFILE_TARGETS
# (among "noop checkpoint checkpoint-jwt noop-envoy checkpoint-envoy noop-envoy-unix
# checkpoint-envoy-unix envoy-noop envoy-noop-identity envoy-noop-headers envoy-checkpoint
# envoy-jwt envoy-noop-unix envoy-noop-headers-unix envoy-checkpoint-unix") for --profile.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode_load=0 mode_memory=0 mode_coalesce=0 mode_profile=0
case "${1:-}" in
  "") mode_load=1 ;;
  --cache-memory) mode_memory=1 ;;
  --coalesce) mode_coalesce=1 ;;
  --all) mode_load=1 mode_memory=1 mode_coalesce=1 ;;
  --profile) mode_profile=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--cache-memory | --coalesce | --all | --profile | --help]" >&2; exit 2 ;;
esac

ROUNDS="${BENCH_ROUNDS:-2}"
DURATION="${BENCH_DURATION:-8}"
CONNECTIONS="${BENCH_CONNECTIONS:-4}"
STREAMS="${BENCH_STREAMS:-8}"
RATE="${BENCH_RATE:-1000}"
SCENARIOS="${BENCH_SCENARIOS:-a b c d0 d d0u du e a@1k b@1k}"
# Every scenario named, a pair ("d0+d") counting as its two: what has to be started.
SCENARIO_NAMES="${SCENARIOS//+/ }"
LOG_LEVEL_CHECKPOINT="${BENCH_LOG_LEVEL:-info}"
FRESH="${BENCH_FRESH:-1}"
PORT_BASE="${BENCH_PORT_BASE:-47100}"

P_USERINFO=$((PORT_BASE + 0))
P_NOOP=$((PORT_BASE + 1))
P_CHECKPOINT=$((PORT_BASE + 2))
P_CHECKPOINT_HTTP=$((PORT_BASE + 3))
P_CHECKPOINT_JWT=$((PORT_BASE + 4))
P_CHECKPOINT_JWT_HTTP=$((PORT_BASE + 5))
P_NOOP_H=$((PORT_BASE + 6))
P_ENVOY_C=$((PORT_BASE + 10)) P_ADMIN_C=$((PORT_BASE + 11))
P_ENVOY_D0=$((PORT_BASE + 12)) P_ADMIN_D0=$((PORT_BASE + 13))
P_ENVOY_D=$((PORT_BASE + 14)) P_ADMIN_D=$((PORT_BASE + 15))
P_ENVOY_E=$((PORT_BASE + 16)) P_ADMIN_E=$((PORT_BASE + 17))
P_ENVOY_D0H=$((PORT_BASE + 18)) P_ADMIN_D0H=$((PORT_BASE + 19))
P_ENVOY_D0U=$((PORT_BASE + 20)) P_ADMIN_D0U=$((PORT_BASE + 21))
P_ENVOY_DU=$((PORT_BASE + 22)) P_ADMIN_DU=$((PORT_BASE + 23))
P_CHECKPOINT_UNIX_HTTP=$((PORT_BASE + 7))

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

work="$(mktemp -d /tmp/checkpoint-bench.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then say "work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools ------------------------------------------------------------------------------------------
if ! command -v h2load >/dev/null 2>&1; then
  say "installing nghttp2-client (h2load)"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nghttp2-client
fi
for tool in taskset curl openssl node python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup.sh installs most of them)"
done
if [ "$mode_load" = 1 ] && [ ! -x .venv/bin/envoy ]; then
  say "no .venv/bin/envoy: running scripts/setup.sh"
  bash scripts/setup.sh
fi
if [ "$(nproc)" -lt 2 ]; then die "needs two cores: one for the server, one for the load generator"; fi

bin="${BENCH_BIN:-target/release}"
# checkpoint as the image ships it: scripts/build-release.sh's target/dist/checkpoint.
checkpoint_bin="${BENCH_BIN:+$BENCH_BIN/checkpoint}"
checkpoint_bin="${checkpoint_bin:-${CARGO_TARGET_DIR:-target}/dist/checkpoint}"
if [ "${BENCH_BUILD:-1}" = 1 ] && [ -z "${BENCH_BIN:-}" ]; then
  # checkpoint as the image ships it (profile-guided, its hot code linked together), the no-op
  # floor and the tools as cargo builds them.
  say "cargo build --release --locked --examples; scripts/build-release.sh"
  cargo build --quiet --release --locked --examples
  scripts/build-release.sh
fi
for b in "$checkpoint_bin" "$bin/examples/noop_authz" "$bin/examples/check_request_frame" \
  "$bin/examples/distinct_identities"; do
  [ -x "$b" ] || die "$b is missing: build with cargo build --release --locked --examples and scripts/build-release.sh"
done

# ---- helpers ----------------------------------------------------------------------------------------
# Waits until something accepts TCP connections on 127.0.0.1:$1; $2 names it. With a pid and a
# log file ($3, $4), stops early when that process exits and shows the end of its log.
wait_port() { wait_port_for 10 "$@"; }
# The same, for a server slowed down by valgrind.
wait_port_slow() { wait_port_for 60 "$@"; }
wait_port_for() {
  local seconds="$1" port="$2" what="$3" pid="${4:-}" log="${5:-}" i
  for i in $(seq 1 $((seconds * 10))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      die "$what exited before listening on 127.0.0.1:$port: $(tail -20 "$log" 2>/dev/null)"
    fi
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$port after $seconds s ($what)"
}

# Starts a process in the background, pinned to core $1; its pid goes to $last_pid and pids.
start() {
  local core="$1" log="$2"
  shift 2
  taskset -c "$core" "$@" >"$log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}

# utime+stime, in clock ticks, of the processes given (all their threads).
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    # The command name (field 2) may hold spaces: cut after its closing parenthesis; utime and
    # stime (fields 14 and 15 of the full line) are then fields 12 and 13.
    total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

# Context switches (voluntary and not) of the processes given, all their threads: behind Envoy,
# how often Envoy and the ext_authz server hand the core to each other.
context_switches() {
  local pid
  for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null; done |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

# Busy ticks of cores 0 and 1 (everything but idle and iowait), to see what else ran meanwhile.
machine_busy() { awk '$1 == "cpu0" || $1 == "cpu1" { s += $2 + $3 + $4 + $7 + $8 + $9 } END { print s }' /proc/stat; }

# Clock ticks from the children line of bash's `times` ("0m1.230s 0m0.450s").
times_to_ticks() {
  awk -v hz="$(getconf CLK_TCK)" 'END {
    total = 0
    for (i = 1; i <= 2; i++) { split($i, t, "m"); sub("s", "", t[2]); total += t[1] * 60 + t[2] }
    printf "%d\n", total * hz + 0.5
  }'
}

userinfo_calls() { curl -fsS "http://127.0.0.1:$P_USERINFO/__count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])'; }

start_userinfo() {
  local jwks=()
  [ -f "$work/jwks.json" ] && jwks=(--jwks "$work/jwks.json")
  start 1 "$work/userinfo.log" node bench/userinfo.js "$P_USERINFO" "${jwks[@]}" "$@"
  userinfo_pid=$last_pid
  wait_port "$P_USERINFO" user-info "$userinfo_pid" "$work/userinfo.log"
}

# checkpoint with the rule file bench/auth.json and the user-info server above, gRPC on $1 (an
# address or unix:PATH), status routes on port $2, stderr to $work/$3.err; the remaining
# arguments, if any, are a command that wraps it (valgrind). Waits until /-/ready answers 200;
# the pid goes to $last_pid.
start_checkpoint_at() {
  local grpc="$1" http="$2" name="$3" out=/dev/null var passthrough=() i
  shift 3
  [ "${BENCH_KEEP:-0}" = 1 ] && out="$work/$name.log"
  # The knobs worth varying between runs are passed on from the caller's environment.
  for var in CHECKPOINT_IDENTITY_CACHE_TTL CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES \
    CHECKPOINT_NEGATIVE_CACHE_TTL HEADERS_TO_PROXY AUTHORIZATION_HEADERS_TO_PROXY \
    CHECKPOINT_WORKER_THREADS CHECKPOINT_DYNAMIC_METADATA CHECKPOINT_GRPC_KEEPALIVE_INTERVAL; do
    if [ -n "${!var:-}" ]; then passthrough+=("$var=${!var}"); fi
  done
  # Security of the bench itself: env -i, so no variable of the caller's shell changes the run.
  taskset -c 0 env -i PATH="$PATH" \
    CONFIGURATION_PATH="$root/bench" CONFIGURATION_FILE_NAME=auth \
    USERINFO_URL="http://127.0.0.1:$P_USERINFO/userinfo" \
    CUSTOM_PERMISSIONS_KEY=permissions \
    CHECKPOINT_GRPC_ADDR="$grpc" \
    CHECKPOINT_HTTP_ADDR="127.0.0.1:$http" \
    LOG_LEVEL="$LOG_LEVEL_CHECKPOINT" DELAY_SHUTDOWN_SECONDS=0 \
    "${passthrough[@]}" \
    "$@" "$checkpoint_bin" >"$out" 2>"$work/$name.err" &
  last_pid=$!
  pids+=("$last_pid")
  for i in $(seq 1 600); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$http/-/ready" 2>/dev/null; then return 0; fi
    kill -0 "$last_pid" 2>/dev/null || die "checkpoint ($name) exited: $(tail -5 "$work/$name.err")"
    sleep 0.1
  done
  die "checkpoint ($name) is not ready after 60 s: $(tail -5 "$work/$name.err")"
}

start_checkpoint() {
  start_checkpoint_at "127.0.0.1:$P_CHECKPOINT" "$P_CHECKPOINT_HTTP" checkpoint "$@"
  checkpoint_pid=$last_pid
}

# checkpoint with a local `jwt` source instead of user-info (native configuration file), the
# same rules; waits until it is ready (its keys fetched from the bench's JWKS).
start_checkpoint_jwt() {
  local out=/dev/null i
  [ "${BENCH_KEEP:-0}" = 1 ] && out="$work/checkpoint-jwt.log"
  cat >"$work/checkpoint-jwt.yaml" <<YAML
version: 1
server:
  grpc_addr: "127.0.0.1:$P_CHECKPOINT_JWT"
  http_addr: "127.0.0.1:$P_CHECKPOINT_JWT_HTTP"
  log_level: "$LOG_LEVEL_CHECKPOINT"
  shutdown_delay: 0s
rules: { file: "$root/bench/auth.json" }
identity:
  sources:
  - type: jwt
    issuer: "https://issuer.bench.test"
    jwks_uri: "http://127.0.0.1:$P_USERINFO/jwks"
    algorithms: [RS256]
YAML
  taskset -c 0 env -i PATH="$PATH" CHECKPOINT_CONFIG="$work/checkpoint-jwt.yaml" \
    "$@" "$checkpoint_bin" >"$out" 2>"$work/checkpoint-jwt.err" &
  checkpoint_jwt_pid=$!
  pids+=("$checkpoint_jwt_pid")
  for i in $(seq 1 600); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$P_CHECKPOINT_JWT_HTTP/-/ready" 2>/dev/null; then return 0; fi
    kill -0 "$checkpoint_jwt_pid" 2>/dev/null ||
      die "checkpoint (jwt) exited: $(tail -5 "$work/checkpoint-jwt.err")"
    sleep 0.1
  done
  die "checkpoint (jwt) is not ready after 60 s: $(tail -5 "$work/checkpoint-jwt.err")"
}

# Posts a gRPC body with curl; prints the decoded CheckResponse (see check_request_frame decode).
grpc_post() {
  local port="$1" frame="$2" out="$work/grpc.$RANDOM"
  curl -sS --http2-prior-knowledge -X POST \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary "@$frame" -D "$out.headers" -o "$out.body" \
    "http://127.0.0.1:$port/envoy.service.auth.v3.Authorization/Check"
  grep -qi '^grpc-status: *0' "$out.headers" || die "port $port: no grpc-status 0 in $(tr -d '\r' <"$out.headers")"
  "$bin/examples/check_request_frame" decode "$out.body"
}

# Asserts that a decoded CheckResponse ($1) holds every line given.
expect_lines() {
  local what="$1" text="$2" line
  shift 2
  for line in "$@"; do
    grep -qxF "$line" <<<"$text" || die "$what: expected \"$line\" in the answer, got: $(tr '\n' ' ' <<<"$text")"
  done
}

# HTTP status and x-seen-user of one request through Envoy, as "STATUS USER" (x-bench-echo asks
# the route for the echo; the measured load does not send it).
envoy_get() {
  local port="$1"
  shift
  curl -sS -o /dev/null -D - -H 'x-bench-echo: 1' "$@" "http://127.0.0.1:$port/api/users/42" | tr -d '\r' |
    awk 'NR == 1 { status = $2 } tolower($1) == "x-seen-user:" { user = $2 } END { print status, user }'
}

start_envoy() {
  local name="$1" template="$2" listen="$3" admin="$4" i
  envoy_args[$name]="$(printf '%q ' "$@")"
  shift 4
  env LISTEN_PORT="$listen" ADMIN_PORT="$admin" "$@" bash scripts/render-envoy.sh "$template" "$work/envoy-$name.yaml" >&2
  start 0 "$work/envoy-$name.log" "${envoy_wrap[@]}" "$envoy_bin" -c "$work/envoy-$name.yaml" \
    --concurrency 1 --disable-hot-restart -l warning
  envoy_pid[$name]=$last_pid
  # Under valgrind (envoy_wrap) Envoy takes a while to start.
  for i in $(seq 1 $((${#envoy_wrap[@]} > 0 ? 600 : 100))); do
    if [ "$(curl -fsS "http://127.0.0.1:$admin/ready" 2>/dev/null)" = LIVE ]; then return 0; fi
    kill -0 "$last_pid" 2>/dev/null || die "envoy $name exited: $(tail -5 "$work/envoy-$name.log")"
    sleep 0.1
  done
  die "envoy $name is not ready: $(tail -5 "$work/envoy-$name.log")"
}
# A command that wraps Envoy in start_envoy (valgrind for the envoy-* profile targets).
envoy_wrap=()
declare -A envoy_args=()

# Stops the Envoys of the scenarios in $SCENARIOS and starts each again with the same settings.
# How fast one Envoy process runs stays with it for its life: two identical Envoys measured side
# by side differed by 10-15% in CPU per request, round after round (bench/RESULTS.md, "Eleventh
# round"). A new process for every round makes the rounds independent draws, so that the median
# of the per-round ratios measures the ext_authz servers, not which Envoy was the luckier one.
restart_envoys() {
  local name
  for name in "${!envoy_pid[@]}"; do
    case " $SCENARIO_NAMES " in *" $name "*) ;; *) continue ;; esac
    kill "${envoy_pid[$name]}" 2>/dev/null || true
    wait "${envoy_pid[$name]}" 2>/dev/null || true
    eval "start_envoy ${envoy_args[$name]}"
  done
}

base64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# The ext_authz server's endpoint in bench/envoy-ext-authz.yaml: TCP on loopback, or a Unix socket.
tcp_endpoint() { printf 'socket_address: { address: 127.0.0.1, port_value: %s }' "$1"; }
pipe_endpoint() { printf 'pipe: { path: "%s" }' "$1"; }

# Waits until the Unix socket $1 exists; $2 names its server, whose pid and log are $3 and $4;
# $5 is how many tries of 0.1 s (100; more for a server under valgrind).
wait_socket() {
  local i tries="${5:-100}"
  for i in $(seq 1 "$tries"); do
    [ -S "$1" ] && return 0
    kill -0 "$3" 2>/dev/null || die "$2 exited: $(tail -5 "$4")"
    sleep 0.1
  done
  die "$2: no socket at $1 after $((tries / 10)) s"
}

# What `checkpoint allowed-headers` prints for the bench's checkpoint (the same variables as
# start_checkpoint_at): ${ALLOWED_HEADERS} of bench/envoy-ext-authz.yaml, for d and d0 alike.
bench_allowed_headers() {
  local var passthrough=()
  for var in HEADERS_TO_PROXY AUTHORIZATION_HEADERS_TO_PROXY; do
    if [ -n "${!var:-}" ]; then passthrough+=("$var=${!var}"); fi
  done
  env -i PATH="$PATH" CONFIGURATION_PATH="$root/bench" CONFIGURATION_FILE_NAME=auth \
    USERINFO_URL="http://127.0.0.1:$P_USERINFO/userinfo" CUSTOM_PERMISSIONS_KEY=permissions \
    "${passthrough[@]}" "$checkpoint_bin" allowed-headers
}
ALLOWED_HEADERS="$(bench_allowed_headers)" || die "checkpoint allowed-headers failed"
export ALLOWED_HEADERS

passthrough_note=""
for name in CHECKPOINT_IDENTITY_CACHE_TTL CHECKPOINT_IDENTITY_CACHE_MAX_ENTRIES \
  CHECKPOINT_NEGATIVE_CACHE_TTL HEADERS_TO_PROXY AUTHORIZATION_HEADERS_TO_PROXY \
  CHECKPOINT_WORKER_THREADS CHECKPOINT_DYNAMIC_METADATA CHECKPOINT_GRPC_KEEPALIVE_INTERVAL; do
  if [ -n "${!name:-}" ]; then passthrough_note+="${passthrough_note:+ }$name=${!name}"; fi
done

# An RS256 key, its JWKS ($work/jwks.json, served by user-info with --jwks) and one token ($jwt).
# The token is the credential of every scenario, so the requests are the same size everywhere;
# checkpoint passes it to user-info (b, d), verifies it itself (bj), Envoy verifies it (e).
make_jwt() {
  local modulus now header payload signature
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/jwt.key" 2>/dev/null
  modulus="$(openssl rsa -in "$work/jwt.key" -noout -modulus | cut -d= -f2)"
  jwks="$(python3 -c '
import base64, json, sys
n = base64.urlsafe_b64encode(bytes.fromhex(sys.argv[1])).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench", "n": n, "e": "AQAB"}]}, separators=(",", ":")))
' "$modulus")"
  printf '%s\n' "$jwks" >"$work/jwks.json"
  now="$(date +%s)"
  header="$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | base64url)"
  payload="$(printf '{"iss":"https://issuer.bench.test","sub":"alice","groups":["admin"],"permissions":["api.users.get"],"iat":%d,"exp":%d}' "$now" "$((now + 3600))" | base64url)"
  signature="$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$work/jwt.key" -binary | base64url)"
  jwt="$header.$payload.$signature"
}

# ---- the load scenarios -----------------------------------------------------------------------------
find_envoy() {
  # The real Envoy binary, not the Python launcher, so that its pid is the one doing the work.
  envoy_bin="$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
  [ -x "$envoy_bin" ] || die "no Envoy binary at $envoy_bin"
  declare -gA envoy_pid=()
}

load_scenarios() {
  find_envoy

  make_jwt

  "$bin/examples/check_request_frame" encode "$work/check.bin" --token "$jwt" --path '/api/users/42?view=full'
  "$bin/examples/check_request_frame" encode "$work/anonymous.bin" --token '' --path '/api/users/42?view=full'

  say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine skews every figure)"
  say "starting user-info, noop, checkpoint and four Envoys"
  start_userinfo
  start 0 "$work/noop.log" "$bin/examples/noop_authz" "127.0.0.1:$P_NOOP"
  noop_pid=$last_pid
  wait_port "$P_NOOP" noop_authz "$noop_pid" "$work/noop.log"
  start_checkpoint
  case " $SCENARIO_NAMES " in *" bj "*) start_checkpoint_jwt ;; esac
  case " $SCENARIO_NAMES " in
    *" d0h "*)
      start 0 "$work/noop-h.log" "$bin/examples/noop_authz" "127.0.0.1:$P_NOOP_H" --identity-headers
      noop_h_pid=$last_pid
      wait_port "$P_NOOP_H" "noop_authz --identity-headers" "$noop_h_pid" "$work/noop-h.log"
      start_envoy d0h bench/envoy-ext-authz.yaml "$P_ENVOY_D0H" "$P_ADMIN_D0H" AUTHZ_ADDRESS="$(tcp_endpoint "$P_NOOP_H")"
      ;;
  esac
  start_envoy c bench/envoy-plain.yaml "$P_ENVOY_C" "$P_ADMIN_C"
  start_envoy d0 bench/envoy-ext-authz.yaml "$P_ENVOY_D0" "$P_ADMIN_D0" AUTHZ_ADDRESS="$(tcp_endpoint "$P_NOOP")"
  start_envoy d bench/envoy-ext-authz.yaml "$P_ENVOY_D" "$P_ADMIN_D" AUTHZ_ADDRESS="$(tcp_endpoint "$P_CHECKPOINT")"
  case " $SCENARIO_NAMES " in
    *" d0u "* | *" du "*)
      start 0 "$work/noop-unix.log" "$bin/examples/noop_authz" "unix:$work/noop.sock"
      noop_unix_pid=$last_pid
      wait_socket "$work/noop.sock" "noop_authz (Unix socket)" "$noop_unix_pid" "$work/noop-unix.log"
      start_checkpoint_at "unix:$work/checkpoint.sock" "$P_CHECKPOINT_UNIX_HTTP" checkpoint-unix
      checkpoint_unix_pid=$last_pid
      start_envoy d0u bench/envoy-ext-authz.yaml "$P_ENVOY_D0U" "$P_ADMIN_D0U" AUTHZ_ADDRESS="$(pipe_endpoint "$work/noop.sock")"
      start_envoy du bench/envoy-ext-authz.yaml "$P_ENVOY_DU" "$P_ADMIN_DU" AUTHZ_ADDRESS="$(pipe_endpoint "$work/checkpoint.sock")"
      ;;
  esac
  start_envoy e bench/envoy-jwt.yaml "$P_ENVOY_E" "$P_ADMIN_E" JWKS_JSON="$jwks"

  say "verifying that every scenario answers with the expected decision"
  local answer
  answer="$(grpc_post "$P_NOOP" "$work/check.bin")"
  expect_lines "a (noop)" "$answer" "status 0"
  answer="$(grpc_post "$P_CHECKPOINT" "$work/check.bin")"
  expect_lines "b (checkpoint)" "$answer" "status 0" "header miauserid=alice" "header miausergroups=admin"
  answer="$(grpc_post "$P_CHECKPOINT" "$work/anonymous.bin")"
  expect_lines "b (checkpoint, no credential)" "$answer" "status 16" "denied 401"
  if [ -n "${checkpoint_jwt_pid:-}" ]; then
    answer="$(grpc_post "$P_CHECKPOINT_JWT" "$work/check.bin")"
    expect_lines "bj (checkpoint, jwt source)" "$answer" "status 0" "header miauserid=alice" "header miausergroups=admin"
    answer="$(grpc_post "$P_CHECKPOINT_JWT" "$work/anonymous.bin")"
    expect_lines "bj (checkpoint, jwt source, no credential)" "$answer" "status 16" "denied 401"
  fi
  [ "$(envoy_get "$P_ENVOY_C")" = "200 " ] || die "c: expected 200, got $(envoy_get "$P_ENVOY_C")"
  [ "$(envoy_get "$P_ENVOY_D0" -H "authorization: Bearer $jwt")" = "200 " ] || die "d0: expected 200"
  local verified_unix=""
  if [ -n "${noop_unix_pid:-}" ]; then
    [ "$(envoy_get "$P_ENVOY_D0U" -H "authorization: Bearer $jwt")" = "200 " ] || die "d0u: expected 200"
    verified_unix=" du"
  fi
  if [ -n "${noop_h_pid:-}" ]; then
    [ "$(envoy_get "$P_ENVOY_D0H" -H "authorization: Bearer $jwt")" = "200 alice" ] ||
      die "d0h: expected 200 with miauserid alice upstream"
  fi
  for s in d e$verified_unix; do
    local port_var="P_ENVOY_${s^^}" got
    got="$(envoy_get "${!port_var}" -H "authorization: Bearer $jwt")"
    [ "$got" = "200 alice" ] || die "$s: expected 200 with miauserid alice upstream, got '$got'"
    got="$(envoy_get "${!port_var}")"
    [ "$got" = "401 " ] || die "$s: expected 401 without a credential, got '$got'"
  done
  say "verified: a, b allow (b with miauserid=alice, 401 without credential); c, d0${verified_unix:+, d0u} 200; d, e${verified_unix:+, du} 200 with miauserid=alice upstream, 401 without credential"

  local results="$work/results.jsonl" round
  : >"$results"
  for round in $(seq 1 "$ROUNDS"); do
    if [ "$FRESH" = 1 ] && [ "$round" -gt 1 ]; then restart_envoys; fi
    for s in $SCENARIOS; do
      case "$s" in
        *+*) run_pair "${s%+*}p" "${s#*+}p" "$round" "$results" ;;
        *) run_scenario "$s" "$round" "$results" ;;
      esac
    done
  done
  echo
  echo "checkpoint at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty')${BENCH_BIN:+ (binaries from $BENCH_BIN)}, settings: ${passthrough_note:-defaults}, LOG_LEVEL=$LOG_LEVEL_CHECKPOINT, $ROUNDS rounds of ${DURATION}s$([ "$FRESH" = 1 ] && echo ' (new Envoys each round)'), saturated runs: $CONNECTIONS connections x $STREAMS streams, h2load on core 1, servers on core 0"
  python3 bench/stats.py report "$results"
  local total_calls
  total_calls="$(userinfo_calls)"
  echo
  echo "user-info calls during the whole load run (verification and warm-up included): $total_calls"
}

# What scenario $1 loads: sets url, servers (Envoy first, then the ext_authz server) and args.
# d0p, d0hp, dp, d0up, dup are d0, d0h, d, d0u, du when run together (run_pair).
scenario_of() {
  local grpc=(-H 'content-type: application/grpc' -H 'te: trailers' -d "$work/check.bin")
  local rest=(-H "authorization: Bearer $jwt")
  local saturate=(-c "$CONNECTIONS" -m "$STREAMS")
  local paced=(-c 1 -m 1 --rps "$RATE")
  case "$1" in
    a) url="http://127.0.0.1:$P_NOOP/envoy.service.auth.v3.Authorization/Check" servers=("$noop_pid") args=("${grpc[@]}" "${saturate[@]}") ;;
    b) url="http://127.0.0.1:$P_CHECKPOINT/envoy.service.auth.v3.Authorization/Check" servers=("$checkpoint_pid") args=("${grpc[@]}" "${saturate[@]}") ;;
    bj) url="http://127.0.0.1:$P_CHECKPOINT_JWT/envoy.service.auth.v3.Authorization/Check" servers=("$checkpoint_jwt_pid") args=("${grpc[@]}" "${saturate[@]}") ;;
    a@1k) url="http://127.0.0.1:$P_NOOP/envoy.service.auth.v3.Authorization/Check" servers=("$noop_pid") args=("${grpc[@]}" "${paced[@]}") ;;
    b@1k) url="http://127.0.0.1:$P_CHECKPOINT/envoy.service.auth.v3.Authorization/Check" servers=("$checkpoint_pid") args=("${grpc[@]}" "${paced[@]}") ;;
    c) url="http://127.0.0.1:$P_ENVOY_C/api/users/42" servers=("${envoy_pid[c]}") args=("${rest[@]}" "${saturate[@]}") ;;
    d0 | d0p) url="http://127.0.0.1:$P_ENVOY_D0/api/users/42" servers=("${envoy_pid[d0]}" "$noop_pid") args=("${rest[@]}" "${saturate[@]}") ;;
    d0h | d0hp) url="http://127.0.0.1:$P_ENVOY_D0H/api/users/42" servers=("${envoy_pid[d0h]}" "$noop_h_pid") args=("${rest[@]}" "${saturate[@]}") ;;
    d | dp) url="http://127.0.0.1:$P_ENVOY_D/api/users/42" servers=("${envoy_pid[d]}" "$checkpoint_pid") args=("${rest[@]}" "${saturate[@]}") ;;
    d0u | d0up) url="http://127.0.0.1:$P_ENVOY_D0U/api/users/42" servers=("${envoy_pid[d0u]}" "$noop_unix_pid") args=("${rest[@]}" "${saturate[@]}") ;;
    du | dup) url="http://127.0.0.1:$P_ENVOY_DU/api/users/42" servers=("${envoy_pid[du]}" "$checkpoint_unix_pid") args=("${rest[@]}" "${saturate[@]}") ;;
    e) url="http://127.0.0.1:$P_ENVOY_E/api/users/42" servers=("${envoy_pid[e]}") args=("${rest[@]}" "${saturate[@]}") ;;
    *) die "unknown scenario $1" ;;
  esac
}

# One h2load run: a short unmeasured warm-up, then a timed run with CPU accounting.
run_scenario() {
  local s="$1" round="$2" results="$3" url servers=() args=()
  scenario_of "$s"
  local tag="${s/@/_}.$round"
  local warmup=2000
  case "$s" in *@1k) warmup=300 ;; esac
  taskset -c 1 h2load -n "$warmup" "${args[@]}" "$url" >"$work/$tag.warmup" 2>&1 ||
    die "$s: warm-up failed: $(tail -3 "$work/$tag.warmup")"
  local calls0 ticks0 calls1 ticks1 busy0 busy1 ui0 ui1 h2load_times authz0 authz1 switches0 switches1
  calls0="$(userinfo_calls)"
  switches0="$(context_switches "${servers[@]}")"
  ticks0="$(cpu_ticks "${servers[@]}")"
  authz0="$(cpu_ticks "${servers[@]:1}")"
  ui0="$(cpu_ticks "$userinfo_pid")"
  busy0="$(machine_busy)"
  # In a subshell, so that `times` reports h2load's own CPU time as the children's.
  h2load_times="$(
    taskset -c 1 h2load -D "$DURATION" "${args[@]}" --log-file "$work/$tag.log" "$url" >"$work/$tag.out" 2>&1 ||
      echo failed
    times
  )"
  case "$h2load_times" in failed*) die "$s: h2load failed: $(tail -3 "$work/$tag.out")" ;; esac
  busy1="$(machine_busy)"
  ticks1="$(cpu_ticks "${servers[@]}")"
  switches1="$(context_switches "${servers[@]}")"
  authz1="$(cpu_ticks "${servers[@]:1}")"
  ui1="$(cpu_ticks "$userinfo_pid")"
  calls1="$(userinfo_calls)"
  local foreign=$((busy1 - busy0 - (ticks1 - ticks0) - (ui1 - ui0) - $(times_to_ticks <<<"$h2load_times")))
  python3 bench/stats.py run "$s" "$round" "$work/$tag.out" "$work/$tag.log" "$((ticks1 - ticks0))" \
    "$((calls1 - calls0))" "$foreign" "$((authz1 - authz0))" "$((switches1 - switches0))" >>"$results"
}

# Two gateways loaded at the same time ("d0+d", "d0u+du"): both share core 0 for the same
# seconds, so a host whose speed drifts from one second to the next slows both alike, and the
# ratio of their CPU per request is free of that drift. Each gets part of the core, so their
# req/s are not a saturated gateway's; their CPU per request is what the target compares.
run_pair() {
  local first="$1" second="$2" round="$3" results="$4" url servers=() args=()
  local s i
  local -a urls=() args_of=() server_sets=() tags=()
  for s in "$first" "$second"; do
    scenario_of "$s"
    tags+=("$s.$round")
    taskset -c 1 h2load -n 2000 "${args[@]}" "$url" >"$work/$s.$round.warmup" 2>&1 ||
      die "$s: warm-up failed: $(tail -3 "$work/$s.$round.warmup")"
    urls+=("$url")
    args_of+=("$(printf '%q ' "${args[@]}")")
    server_sets+=("${servers[*]}")
  done
  local -a ticks0=() authz0=() switches0=() ticks1=() authz1=() switches1=() pids=()
  local calls0 calls1 ui0 ui1 busy0 busy1 set
  calls0="$(userinfo_calls)"
  ui0="$(cpu_ticks "$userinfo_pid")"
  for i in 0 1; do
    read -ra set <<<"${server_sets[i]}"
    ticks0+=("$(cpu_ticks "${set[@]}")") authz0+=("$(cpu_ticks "${set[@]:1}")")
    switches0+=("$(context_switches "${set[@]}")")
  done
  busy0="$(machine_busy)"
  # The two h2loads' CPU: this shell's own and its waited-for children's (utime, stime, cutime,
  # cstime), as for cpu_ticks, the command name cut off first.
  local h2ticks0 h2ticks1
  h2ticks0="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' /proc/$$/stat)"
  for i in 0 1; do
    eval "local -a run_args=(${args_of[i]})"
    taskset -c 1 h2load -D "$DURATION" "${run_args[@]}" --log-file "$work/${tags[i]}.log" "${urls[i]}" \
      >"$work/${tags[i]}.out" 2>&1 &
    pids+=("$!")
  done
  for i in 0 1; do wait "${pids[i]}" || die "${tags[i]}: h2load failed: $(tail -3 "$work/${tags[i]}.out")"; done
  busy1="$(machine_busy)"
  h2ticks1="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' /proc/$$/stat)"
  for i in 0 1; do
    read -ra set <<<"${server_sets[i]}"
    ticks1+=("$(cpu_ticks "${set[@]}")") authz1+=("$(cpu_ticks "${set[@]:1}")")
    switches1+=("$(context_switches "${set[@]}")")
  done
  ui1="$(cpu_ticks "$userinfo_pid")"
  calls1="$(userinfo_calls)"
  local foreign=$((busy1 - busy0 - (ticks1[0] - ticks0[0]) - (ticks1[1] - ticks0[1]) - (ui1 - ui0) - (h2ticks1 - h2ticks0)))
  for i in 0 1; do
    s="${tags[i]%.*}"
    BENCH_PAIR="${first%p}+${second%p}" python3 bench/stats.py run "$s" "$round" "$work/${tags[i]}.out" "$work/${tags[i]}.log" \
      "$((ticks1[i] - ticks0[i]))" "$((i == 0 ? calls1 - calls0 : 0))" "$foreign" \
      "$((authz1[i] - authz0[i]))" "$((switches1[i] - switches0[i]))" >>"$results"
  done
}

# ---- resident memory with 100,000 distinct identities --------------------------------------------------
cache_memory() {
  local n="${BENCH_IDENTITIES:-100000}" rss0 rss1 hwm calls replay
  say "cache memory: $n distinct credentials through checkpoint (user-info answers a distinct sub for each)"
  start_userinfo --echo
  start_checkpoint
  "$bin/examples/check_request_frame" encode "$work/check.bin" --token warm-up
  grpc_post "$P_CHECKPOINT" "$work/check.bin" >/dev/null
  rss0="$(awk '/^VmRSS/ { print $2 }' "/proc/$checkpoint_pid/status")"
  taskset -c 1 "$bin/examples/distinct_identities" "127.0.0.1:$P_CHECKPOINT" "$n" --concurrency 64 --connections 4 --prefix id
  calls="$(userinfo_calls)"
  sleep 1
  rss1="$(awk '/^VmRSS/ { print $2 }' "/proc/$checkpoint_pid/status")"
  hwm="$(awk '/^VmHWM/ { print $2 }' "/proc/$checkpoint_pid/status")"
  # The first 1,000 credentials again: with a cache holding all of them, no new user-info call.
  taskset -c 1 "$bin/examples/distinct_identities" "127.0.0.1:$P_CHECKPOINT" 1000 --concurrency 16 --connections 1 --prefix id >/dev/null
  replay=$(($(userinfo_calls) - calls))
  echo
  echo "cache memory: $n distinct identities, $calls user-info calls"
  echo "  checkpoint VmRSS before: $((rss0 / 1024)) MiB, after: $((rss1 / 1024)) MiB ($rss1 KiB), peak VmHWM: $((hwm / 1024)) MiB   target <= 128 MiB"
  echo "  replaying 1,000 of those credentials: $replay user-info calls (0 when they are all still cached)"
  kill "$checkpoint_pid" "$userinfo_pid" 2>/dev/null || true
  wait "$checkpoint_pid" "$userinfo_pid" 2>/dev/null || true
}

# ---- coalescing: 1,000 concurrent Checks, one new credential, a slow user-info ---------------------------
coalesce() {
  say "coalesce: 1,000 concurrent Checks with one new credential, user-info answers after 200 ms"
  start_userinfo --delay-ms 200
  start_checkpoint
  local calls0 calls1 calls2
  calls0="$(userinfo_calls)"
  # As Envoy sends them: one credential, but every request with its own x-request-id.
  taskset -c 1 "$bin/examples/distinct_identities" "127.0.0.1:$P_CHECKPOINT" 1000 --concurrency 1000 \
    --connections 10 --same-token "coalesce-a-$RANDOM$RANDOM"
  calls1="$(userinfo_calls)"
  # The same, with identical requests (one x-request-id for all): coalescing alone.
  taskset -c 1 "$bin/examples/distinct_identities" "127.0.0.1:$P_CHECKPOINT" 1000 --concurrency 1000 \
    --connections 10 --same-token "coalesce-b-$RANDOM$RANDOM" --fixed-request-id
  calls2="$(userinfo_calls)"
  echo
  echo "coalesce: user-info calls for 1,000 concurrent Checks with one new credential (target exactly 1):"
  echo "  each request with its own x-request-id, as behind Envoy: $((calls1 - calls0))"
  echo "  identical requests (same x-request-id):                $((calls2 - calls1))"
  kill "$checkpoint_pid" "$userinfo_pid" 2>/dev/null || true
  wait "$checkpoint_pid" "$userinfo_pid" 2>/dev/null || true
}

# ---- where the time goes: callgrind, a bounded number of Checks, noop then checkpoint -------------------
profile() {
  command -v valgrind >/dev/null 2>&1 || die "valgrind is missing (apt-get install valgrind)"
  local n="${BENCH_PROFILE_CHECKS:-20000}" which pid port out total frame
  "$bin/examples/check_request_frame" encode "$work/check.bin" --token profile-token --path '/api/users/42?view=full'
  make_jwt
  "$bin/examples/check_request_frame" encode "$work/jwt.bin" --token "$jwt" --path '/api/users/42?view=full'
  start_userinfo
  local targets="${BENCH_PROFILE_TARGETS:-noop checkpoint checkpoint-jwt}"
  case " $targets " in *envoy*) find_envoy ;; esac
  for which in $targets; do
    out="$work/callgrind.$which"
    frame="$work/check.bin"
    local via_envoy=0 token=profile-token helper="" noop_flag=()
    case "$which" in
      noop)
        start 0 "$work/noop.log" valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out" \
          "$bin/examples/noop_authz" "127.0.0.1:$P_NOOP"
        pid=$last_pid
        wait_port_slow "$P_NOOP" "noop under valgrind"
        port=$P_NOOP
        ;;
      checkpoint)
        start_checkpoint valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out"
        pid=$checkpoint_pid
        port=$P_CHECKPOINT
        ;;
      checkpoint-jwt)
        start_checkpoint_jwt valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out"
        pid=$checkpoint_jwt_pid
        port=$P_CHECKPOINT_JWT
        frame="$work/jwt.bin"
        expect_lines "checkpoint-jwt" "$(grpc_post "$port" "$frame")" "status 0" "header miauserid=alice"
        ;;
      noop-envoy)
        start 0 "$work/noop.log" valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out" \
          "$bin/examples/noop_authz" "127.0.0.1:$P_NOOP"
        pid=$last_pid
        wait_port_slow "$P_NOOP" "noop under valgrind"
        start_envoy d0 bench/envoy-ext-authz.yaml "$P_ENVOY_D0" "$P_ADMIN_D0" AUTHZ_ADDRESS="$(tcp_endpoint "$P_NOOP")"
        port=$P_ENVOY_D0 via_envoy=1
        ;;
      noop-envoy-unix)
        rm -f "$work/noop.sock"
        start 0 "$work/noop.log" valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out" \
          "$bin/examples/noop_authz" "unix:$work/noop.sock"
        pid=$last_pid
        wait_socket "$work/noop.sock" "noop under valgrind (Unix socket)" "$pid" "$work/noop.log" 600
        start_envoy d0u bench/envoy-ext-authz.yaml "$P_ENVOY_D0U" "$P_ADMIN_D0U" AUTHZ_ADDRESS="$(pipe_endpoint "$work/noop.sock")"
        port=$P_ENVOY_D0U via_envoy=1
        ;;
      checkpoint-envoy-unix)
        rm -f "$work/checkpoint.sock"
        start_checkpoint_at "unix:$work/checkpoint.sock" "$P_CHECKPOINT_UNIX_HTTP" checkpoint-unix valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out"
        pid=$last_pid
        start_envoy du bench/envoy-ext-authz.yaml "$P_ENVOY_DU" "$P_ADMIN_DU" AUTHZ_ADDRESS="$(pipe_endpoint "$work/checkpoint.sock")"
        port=$P_ENVOY_DU via_envoy=1
        ;;
      checkpoint-envoy)
        start_checkpoint valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out"
        pid=$checkpoint_pid
        start_envoy d bench/envoy-ext-authz.yaml "$P_ENVOY_D" "$P_ADMIN_D" AUTHZ_ADDRESS="$(tcp_endpoint "$P_CHECKPOINT")"
        port=$P_ENVOY_D via_envoy=1
        ;;
      # Envoy itself under callgrind, the ext_authz server (or jwt_authn) running normally.
      envoy-noop | envoy-noop-identity | envoy-noop-headers | envoy-noop-unix | envoy-noop-headers-unix)
        case "$which" in
          envoy-noop-identity) noop_flag=(--identity) ;;
          envoy-noop-headers*) noop_flag=(--identity-headers) ;;
        esac
        local endpoint
        case "$which" in
          *-unix)
            rm -f "$work/noop.sock"
            start 0 "$work/noop.log" "$bin/examples/noop_authz" "unix:$work/noop.sock" "${noop_flag[@]}"
            helper=$last_pid
            wait_socket "$work/noop.sock" "noop_authz (Unix socket)" "$helper" "$work/noop.log"
            endpoint="$(pipe_endpoint "$work/noop.sock")"
            ;;
          *)
            start 0 "$work/noop.log" "$bin/examples/noop_authz" "127.0.0.1:$P_NOOP" "${noop_flag[@]}"
            helper=$last_pid
            wait_port "$P_NOOP" noop_authz "$helper" "$work/noop.log"
            endpoint="$(tcp_endpoint "$P_NOOP")"
            ;;
        esac
        envoy_wrap=(valgrind --tool=callgrind --callgrind-out-file="$out")
        start_envoy d0 bench/envoy-ext-authz.yaml "$P_ENVOY_D0" "$P_ADMIN_D0" AUTHZ_ADDRESS="$endpoint"
        envoy_wrap=()
        pid=${envoy_pid[d0]} port=$P_ENVOY_D0 via_envoy=1
        ;;
      envoy-checkpoint)
        start_checkpoint
        helper=$checkpoint_pid
        envoy_wrap=(valgrind --tool=callgrind --callgrind-out-file="$out")
        start_envoy d bench/envoy-ext-authz.yaml "$P_ENVOY_D" "$P_ADMIN_D" AUTHZ_ADDRESS="$(tcp_endpoint "$P_CHECKPOINT")"
        envoy_wrap=()
        pid=${envoy_pid[d]} port=$P_ENVOY_D via_envoy=1
        ;;
      envoy-checkpoint-unix)
        rm -f "$work/checkpoint.sock"
        start_checkpoint_at "unix:$work/checkpoint.sock" "$P_CHECKPOINT_UNIX_HTTP" checkpoint-unix
        helper=$last_pid
        envoy_wrap=(valgrind --tool=callgrind --callgrind-out-file="$out")
        start_envoy du bench/envoy-ext-authz.yaml "$P_ENVOY_DU" "$P_ADMIN_DU" AUTHZ_ADDRESS="$(pipe_endpoint "$work/checkpoint.sock")"
        envoy_wrap=()
        pid=${envoy_pid[du]} port=$P_ENVOY_DU via_envoy=1
        ;;
      envoy-jwt)
        envoy_wrap=(valgrind --tool=callgrind --callgrind-out-file="$out")
        start_envoy e bench/envoy-jwt.yaml "$P_ENVOY_E" "$P_ADMIN_E" JWKS_JSON="$jwks"
        envoy_wrap=()
        pid=${envoy_pid[e]} port=$P_ENVOY_E via_envoy=1 token=$jwt
        ;;
      *) die "BENCH_PROFILE_TARGETS: unknown target $which (noop, checkpoint, checkpoint-jwt, noop-envoy, checkpoint-envoy, noop-envoy-unix, checkpoint-envoy-unix, envoy-noop, envoy-noop-identity, envoy-noop-headers, envoy-checkpoint, envoy-jwt, envoy-noop-unix, envoy-noop-headers-unix, envoy-checkpoint-unix)" ;;
    esac
    local load=(-H 'content-type: application/grpc' -H 'te: trailers' -d "$frame" -c 1 -m 8)
    local url="http://127.0.0.1:$port/envoy.service.auth.v3.Authorization/Check"
    if [ "$via_envoy" = 1 ]; then
      # Through Envoy: what Envoy really sends the ext_authz server for a plain GET.
      load=(-H "authorization: Bearer $token" -c 1 -m 8)
      url="http://127.0.0.1:$port/api/users/42?view=full"
    fi
    # Warm-up (connections, caches, the identity cache entry), then zero the counters.
    taskset -c 1 h2load -n 200 "${load[@]}" "$url" >/dev/null
    callgrind_control --zero "$pid" >/dev/null
    taskset -c 1 h2load -n "$n" "${load[@]}" "$url" >"$work/profile.$which.out"
    grep -q "status codes: $n 2xx" "$work/profile.$which.out" || die "$which: not all $n Checks answered 200"
    callgrind_control --dump "$pid" >/dev/null
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$via_envoy" = 1 ]; then
      local e
      for e in "${!envoy_pid[@]}"; do kill "${envoy_pid[$e]}" 2>/dev/null || true; wait "${envoy_pid[$e]}" 2>/dev/null || true; done
      envoy_pid=()
    fi
    if [ -n "$helper" ]; then kill "$helper" 2>/dev/null || true; wait "$helper" 2>/dev/null || true; fi
    total="$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')"
    case "$which" in
      envoy-*)
        # Envoy's binary carries no symbols: the total is what there is to say.
        echo
        echo "$which: $((total / n)) Envoy instructions per request ($n requests)"
        continue
        ;;
    esac
    echo
    echo "$which: $((total / n)) instructions per Check ($n Checks, LOG_LEVEL=$LOG_LEVEL_CHECKPOINT for checkpoint)"
    # The code a Check walks (bench/footprint.py says why it matters behind Envoy).
    python3 bench/footprint.py "$out.1" "$n" 12
    echo "  top functions by inclusive cost, below the runtime's own frames (per Check):"
    callgrind_annotate --inclusive=yes --threshold=100 "$out.1" 2>/dev/null |
      awk -v n="$n" -v total="$total" '
        /^ *[0-9,]+ +\( *[0-9.]+%\) +/ {
          ir = $1; gsub(",", "", ir)
          if (ir / total > 0.97) next
          name = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +(\?\?\?:)?/, "", name); sub(/ \[[^]]*\]$/, "", name)
          if (name ~ /^<(hyper|tonic|tower|axum|hyper_util)::|^tokio::|^<core::future|^core::ops::function/) next
          # No early exit: under pipefail, a closed pipe would fail the script.
          if (shown++ < 15) printf "  %6.1f%%  %7d  %s\n", 100 * ir / total, ir / n, substr(name, 1, 150)
        }'
    if [ "${which%-envoy}" != noop ]; then
      echo "  checkpoint's own functions (inclusive, per Check):"
      callgrind_annotate --inclusive=yes --threshold=100 "$out.1" 2>/dev/null |
        awk -v n="$n" -v total="$total" '
          /checkpoint::|moka::future::base_cache::BaseCache<K,V,S>::get_with_hash|tracing_core::event::Event::dispatch|prost::message::Message::(en|de)code|jsonwebtoken::|aws_lc/ {
            ir = $1; gsub(",", "", ir)
            name = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +(\?\?\?:)?/, "", name); sub(/ \[[^]]*\]$/, "", name)
            if (shown++ < 20) printf "  %6.1f%%  %7d  %s\n", 100 * ir / total, ir / n, substr(name, 1, 150)
          }'
    fi
  done
  echo
  echo "user-info calls during the profile (warm-ups included): $(userinfo_calls)"
}

started_at=$SECONDS
if [ "$mode_load" = 1 ]; then load_scenarios; fi
if [ "$mode_memory" = 1 ] || [ "$mode_coalesce" = 1 ]; then
  if [ "$mode_load" = 1 ]; then
    # The later modes start their own checkpoint and user-info on the same ports.
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
  fi
fi
if [ "$mode_memory" = 1 ]; then cache_memory; fi
if [ "$mode_coalesce" = 1 ]; then coalesce; fi
if [ "$mode_profile" = 1 ]; then profile; fi
say "done in $((SECONDS - started_at)) s"
