#!/usr/bin/env bash
# The checkpoint demo, all on 127.0.0.1:
#
#   curl --> Envoy :8443 (TLS; :8080 redirects) --Check--> checkpoint :50051 --GET /me--> test IdP :4444
#                 |                                                  \--bind/search (ldaps)--> slapd :3636
#                 \--> echo upstream :3001 (answers with the headers it received: miauserid, miausergroups, ...)
#
#   checkpoint reads scripts/demo/checkpoint.yaml: Basic credentials go to the LDAP directory (OpenLDAP's slapd,
#   seeded from scripts/demo/directory.ldif), bearer tokens to the IdP's user-info endpoint.
#
#   scripts/demo.sh            installs what is missing (scripts/setup.sh), builds checkpoint, starts everything,
#                              prints curl commands to try, and runs until Ctrl-C, which stops all it started.
#
# Environment (all optional):
#   DEMO_HTTPS_PORT (8443)  DEMO_HTTP_PORT (8080)  DEMO_ADMIN_PORT (9901)     Envoy
#   DEMO_GRPC_PORT (50051)  DEMO_STATUS_PORT (3000)                           checkpoint (gRPC, status routes)
#   DEMO_UPSTREAM_PORT (3001)  DEMO_IDP_PORT (4444)                           echo upstream, test IdP
#   DEMO_LDAP_PORT (3636)                                                      slapd (ldaps)
#   DEMO_SKIP_BUILD=1       do not run cargo build (use an existing binary)
#   CHECKPOINT_BIN          the checkpoint binary (default target/release/checkpoint)
#   DEMO_NO_WAIT=1          stop everything right after the self-check instead of waiting for Ctrl-C
# State (certificates, rendered Envoy config, logs) goes to .demo/ in the repository root.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

https_port="${DEMO_HTTPS_PORT:-8443}"
http_port="${DEMO_HTTP_PORT:-8080}"
admin_port="${DEMO_ADMIN_PORT:-9901}"
grpc_port="${DEMO_GRPC_PORT:-50051}"
status_port="${DEMO_STATUS_PORT:-3000}"
upstream_port="${DEMO_UPSTREAM_PORT:-3001}"
idp_port="${DEMO_IDP_PORT:-4444}"
ldap_port="${DEMO_LDAP_PORT:-3636}"
checkpoint_bin="${CHECKPOINT_BIN:-$root/target/release/checkpoint}"
ready_timeout=15

state="$root/.demo"
logs="$state/logs"
tls="$state/tls"

say() { printf 'demo: %s\n' "$*"; }

# ---- processes we start, and their clean stop --------------------------------------------------------------
names=()
pids=()
stopped=0
stop_all() {
  [ "$stopped" -eq 1 ] && return
  stopped=1
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    if kill -0 "$pid" 2>/dev/null; then
      say "stopping ${names[$i]} (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    for _ in $(seq 1 50); do # up to 5 s each
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "${names[$i]} (pid $pid) ignored SIGTERM for 5 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}
trap 'stop_all' EXIT
trap 'echo; stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

start() { # name command...   (stdout -> .demo/logs/name.out, stderr -> .demo/logs/name.err)
  local name="$1"
  shift
  "$@" >"$logs/$name.out" 2>"$logs/$name.err" &
  names+=("$name")
  pids+=("$!")
  say "started $name (pid $!)"
}

fail_with_log() { # name message   (prints the cause: checkpoint logs JSON lines, its fatal error included, on stdout)
  local name="$1" file shown=0
  say "$2" >&2
  if grep -q '"level":"ERROR"' "$logs/$name.out" 2>/dev/null; then
    say "errors $name logged:" >&2
    grep '"level":"ERROR"' "$logs/$name.out" | tail -n 5 >&2
  fi
  for file in "$logs/$name.err" "$logs/$name.out"; do
    if [ -s "$file" ]; then
      say "last lines of $file:" >&2
      tail -n 20 "$file" >&2
      shown=1
    fi
  done
  [ "$shown" -eq 1 ] || say "$name wrote nothing (to $logs/$name.out or $logs/$name.err)" >&2
  exit 1
}

wait_ready() { # name check-command...   (bounded: $ready_timeout seconds)
  local name="$1" pid="${pids[${#pids[@]} - 1]}" deadline=$((SECONDS + ready_timeout))
  shift
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail_with_log "$name" "$name exited before it was ready"
    [ "$SECONDS" -lt "$deadline" ] || fail_with_log "$name" "$name not ready after ${ready_timeout} s"
    sleep 0.1
  done
  say "$name is ready"
}

# ---- install and build -----------------------------------------------------------------------------------
bash "$root/scripts/setup.sh"
if [ "${DEMO_SKIP_BUILD:-0}" != "1" ]; then
  say "cargo build --release --locked"
  cargo build --release --locked
fi
[ -x "$checkpoint_bin" ] || { say "no checkpoint binary at $checkpoint_bin" >&2; exit 1; }

mkdir -p "$logs"
bash "$root/scripts/make-certs.sh" "$tls"

# ---- the test IdP (authentication manager) ---------------------------------------------------------------
start idp env IDP_PORT="$idp_port" node "$root/tests/idp/idp.mjs"
wait_ready idp grep -q '^IDP_READY ' "$logs/idp.out"
issuer="http://127.0.0.1:$idp_port"

# ---- the upstream that shows the headers it received ------------------------------------------------------
start upstream env ECHO_PORT="$upstream_port" node "$root/tests/upstream/echo.mjs"
wait_ready upstream grep -q '^ECHO_READY ' "$logs/upstream.out"

# ---- the LDAP directory (OpenLDAP's slapd, from scripts/setup.sh) ----------------------------------------
# A fresh database each run, seeded from scripts/demo/directory.ldif; ldaps with the demo's server certificate.
sbin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }
ldap="$state/ldap"
rm -rf "$ldap"
mkdir -p "$ldap/db"
cat >"$ldap/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $ldap/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile $tls/ca.crt
TLSCertificateFile $tls/server.crt
TLSCertificateKeyFile $tls/server.key
database mdb
maxsize 16777216
suffix "dc=demo,dc=test"
directory $ldap/db
access to attrs=userPassword
  by * auth
access to *
  by * read
CONF
"$(sbin slapadd)" -f "$ldap/slapd.conf" -l "$root/scripts/demo/directory.ldif" >"$logs/slapadd.out" 2>&1 ||
  fail_with_log slapadd "slapadd could not seed the demo directory"
start ldap "$(sbin slapd)" -f "$ldap/slapd.conf" -h "ldaps://127.0.0.1:$ldap_port/" -d 0
wait_ready ldap env LDAPTLS_CACERT="$tls/ca.crt" ldapwhoami -x -H "ldaps://127.0.0.1:$ldap_port" \
  -D cn=checkpoint,dc=demo,dc=test -w checkpoint-secret

# ---- checkpoint ------------------------------------------------------------------------------------------
# scripts/demo/checkpoint.yaml: the IdP's /me answers {"sub","name","preferred_username","email","email_verified",
# "groups","permissions","properties":{"department","tenant","employee_id"}}: the user properties proxied are
# top-level fields; Basic credentials are checked against the directory above.
demo_env=(
  CHECKPOINT_CONFIG="$root/scripts/demo/checkpoint.yaml"
  DEMO_GRPC_ADDR="127.0.0.1:$grpc_port"
  DEMO_STATUS_ADDR="127.0.0.1:$status_port"
  DEMO_IDP_URL="$issuer"
  DEMO_LDAP_URL="ldaps://127.0.0.1:$ldap_port"
  DEMO_LDAP_CA="$tls/ca.crt"
  LOG_LEVEL="${LOG_LEVEL:-info}"
)
start checkpoint env "${demo_env[@]}" "$checkpoint_bin"
wait_ready checkpoint curl -sf "http://127.0.0.1:$status_port/-/ready"

# ---- Envoy -------------------------------------------------------------------------------------------------
# The headers Envoy sends on each Check: what checkpoint says its configuration (the same file) reads.
allowed_headers="$(env -i "${demo_env[@]}" "$checkpoint_bin" allowed-headers)"
LISTEN_ADDRESS=127.0.0.1 HTTPS_PORT="$https_port" HTTP_PORT="$http_port" ADMIN_PORT="$admin_port" \
  CHECKPOINT_ADDRESS=127.0.0.1 CHECKPOINT_PORT="$grpc_port" \
  UPSTREAM_ADDRESS=127.0.0.1 UPSTREAM_PORT="$upstream_port" TLS_DIR="$tls" ALLOWED_HEADERS="$allowed_headers" \
  bash "$root/scripts/render-envoy.sh" "$root/envoy/envoy.yaml" "$state/envoy.yaml"
start envoy "$root/.venv/bin/envoy" -c "$state/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warn
wait_ready envoy curl -sf --cacert "$tls/ca.crt" "https://127.0.0.1:$https_port/-/healthz"

# ---- what to try -------------------------------------------------------------------------------------------
gw="https://127.0.0.1:$https_port"
ca="$tls/ca.crt"
token_cmd() { # user
  printf "curl -s -u authz-service:authz-service-secret -d grant_type=password -d username=%s -d password=%s-password %s/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'" "$1" "$1" "$issuer"
}

cat <<EOF

checkpoint demo is running (logs in $logs):
  Envoy        $gw  (http://127.0.0.1:$http_port redirects; admin http://127.0.0.1:$admin_port)
  checkpoint   gRPC 127.0.0.1:$grpc_port, status http://127.0.0.1:$status_port/-/ready
  IdP          $issuer  (users alice/alice-password: admins, engineering; bob/bob-password: viewers)
  LDAP         ldaps://127.0.0.1:$ldap_port  (users carol/carol-password: admins, staff; dave/dave-password: staff)
  upstream     http://127.0.0.1:$upstream_port  (echoes the headers it receives)
  rules        $root/envoy/demo/auth.json

Try (copy and paste):

# anonymous caller on a route that needs a login -> 401
curl -s -i --cacert $ca $gw/api/hello

# public route, no token -> 200, no user headers upstream
curl -s --cacert $ca $gw/public

# alice's token (password grant), then a 200: the echoed headers show miauserid, miausergroups, miauserproperties
ALICE=\$($(token_cmd alice))
curl -s --cacert $ca -H "Authorization: Bearer \$ALICE" $gw/api/admin/users | python3 -m json.tool

# bob is not in the admins group -> 403 on the admin route (his plain /api calls get 200)
BOB=\$($(token_cmd bob))
curl -s -i --cacert $ca -H "Authorization: Bearer \$BOB" $gw/api/admin/users

# an LDAP login with HTTP Basic: carol is in the directory's admins group -> 200 (a browser asks for it too:
# a 401 says WWW-Authenticate: Basic realm="checkpoint demo")
curl -s --cacert $ca -u carol:carol-password $gw/api/admin/users | python3 -m json.tool

# dave is not an admin -> 403; a wrong password -> 401
curl -s -i --cacert $ca -u dave:dave-password $gw/api/admin/users
curl -s -i --cacert $ca -u carol:wrong $gw/api/hello

# a path and method with no rule -> 404 ("/" only has GET)
curl -s -i --cacert $ca -X DELETE $gw/nowhere

# plain HTTP -> 301 to https
curl -s -i http://127.0.0.1:$http_port/api/hello

EOF

# ---- self-check: the same requests, statuses only ----------------------------------------------------------
code() { curl -s -o /dev/null -w '%{http_code}' --cacert "$ca" "$@" || true; }
token() {
  curl -s -u authz-service:authz-service-secret -d grant_type=password -d "username=$1" -d "password=$1-password" \
    "$issuer/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
alice="$(token alice)"
bob="$(token bob)"
ok=0
bad=0
expect() { # expected description curl-args...
  local want="$1" what="$2" got r
  shift 2
  got="$(code "$@")"
  if [ "$got" = "$want" ]; then ok=$((ok + 1)); r=ok; else bad=$((bad + 1)); r=UNEXPECTED; fi
  printf '  %-10s %s -> %s (expected %s)\n' "$r" "$what" "$got" "$want"
}
say "self-check:"
expect 401 "anonymous GET /api/hello" "$gw/api/hello"
expect 200 "anonymous GET /public" "$gw/public"
expect 200 "alice GET /api/admin/users" -H "Authorization: Bearer $alice" "$gw/api/admin/users"
expect 403 "bob GET /api/admin/users" -H "Authorization: Bearer $bob" "$gw/api/admin/users"
expect 200 "bob GET /api/hello" -H "Authorization: Bearer $bob" "$gw/api/hello"
expect 403 "bob POST /api/orders" -X POST -H "Authorization: Bearer $bob" "$gw/api/orders"
expect 404 "anonymous DELETE /nowhere" -X DELETE "$gw/nowhere"
expect 200 "LDAP carol GET /api/admin/users" -u carol:carol-password "$gw/api/admin/users"
expect 403 "LDAP dave GET /api/admin/users" -u dave:dave-password "$gw/api/admin/users"
expect 401 "LDAP carol, wrong password" -u carol:wrong "$gw/api/hello"
expect 301 "http GET /api/hello" "http://127.0.0.1:$http_port/api/hello"
headers="$(curl -s --cacert "$ca" -H "Authorization: Bearer $alice" "$gw/api/admin/users" |
  python3 -c 'import json,sys; h=json.load(sys.stdin)["headers"]; print(" ".join(f"{k}={h.get(k)!r}" for k in ("miauserid","miausergroups","miauserproperties")))' 2>/dev/null ||
  echo "(no echo JSON: the request did not reach the upstream)")"
printf '  upstream saw for alice: %s\n' "$headers"
headers="$(curl -s --cacert "$ca" -u carol:carol-password "$gw/api/admin/users" |
  python3 -c 'import json,sys; h=json.load(sys.stdin)["headers"]; print(" ".join(f"{k}={h.get(k)!r}" for k in ("miauserid","miausergroups","miauserproperties")))' 2>/dev/null ||
  echo "(no echo JSON: the request did not reach the upstream)")"
printf '  upstream saw for carol (LDAP): %s\n' "$headers"
say "self-check: $ok passed, $bad unexpected"

if [ "${DEMO_NO_WAIT:-0}" = "1" ]; then
  [ "$bad" -eq 0 ]
  exit
fi

say "running; press Ctrl-C to stop everything"
set +e
wait -n "${pids[@]}"
set -e
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    fail_with_log "${names[$i]}" "${names[$i]} stopped on its own"
  fi
done
