#!/usr/bin/env bash
# Soak of checkpoint behind Envoy (issue 15): mixed traffic at a steady rate for a long while,
# every answer checked, checkpoint's resident memory and the latency watched over time.
#
#   scripts/soak.sh                        10 minutes at 80% of the peak measured first
#   SOAK_DURATION=60 SOAK_RATE=500 scripts/soak.sh
#
# The gateway is the load benchmark's scenario d (scripts/bench-load.sh): Envoy with
# bench/envoy-ext-authz.yaml in front of a direct_response route, checkpoint as its ext_authz
# server with bench/auth.json, the user-info server bench/userinfo.js in --soak mode. Envoy and
# checkpoint share core 0 ("one core for the whole gateway"), the load generator and user-info
# run on core 1.
#
# The load generator (examples/soak_load.rs; the mix and the checks are tests/soak_support/mod.rs)
# sends, in every hundred requests: 88 from warm identities (100 of them; 200 with the right user
# upstream), one cold credential never seen before (200), ten denies (four 403 for a path the
# identity may not use, three 401 without a credential, three 401 for a credential user-info
# rejects) and one identity-provider error (user-info answers 500; checkpoint 503). Each answer is
# checked (status, the user Envoy's route saw, checkpoint's decision id on a deny); anything else,
# a transport error or no answer within 10 s is "unexpected". checkpoint's VmRSS is read every
# second; latency (from each request's scheduled time: open loop) is reported per window.
#
# Pass: zero unexpected answers, and VmRSS at the end (mean of the last 10 s) less than 5% above
# VmRSS right after the warm-up (mean of the 10 s after it). p99 stability is reported (each
# window's p99), not judged. The test command runs the same checks for 60 s (tests/soak.rs).
# Also reported, never judged: the host's steal time and a probe of the machine's speed (the CPU
# time of a fixed piece of work, once a second, on the generator's core), per window; at the end,
# the probe's median when the peak was measured against during the soak; and for the slowest
# seconds and per minute, who had the gateway's core (bench/cpu_seconds.py: busy, idle and steal
# shares, Envoy's and checkpoint's CPU, and the core's speed: the CPU time of a fixed piece of
# work, about a millisecond, on that core), which tells a core that was full from a process that
# stalled, and a core that ran slower from one that had more to do.
#
# The rate. The issue asks for "80% of the measured peak". A paced source does not get the batching
# a closed loop gets (when every wake-up finds a batch of work, each request costs less): on the
# 2-core virtual machines this was written on, the gateway's core was already 85-90% busy at half
# the closed-loop figure, and 80% of the rate at which a ramp read it 95% busy kept it 80-96% busy
# for ten minutes, every run at 89% or more failing (bench/RESULTS.md, "Soak", runs 8-24). The peak
# of a one-core gateway under paced traffic is the core itself, so by default (SOAK_PEAK=core) the
# soak runs at the paced rate that keeps the gateway's core 80% busy. A closed loop
# (SOAK_PEAK_SECONDS of load with 4 connections x 8 streams always in flight) sets the scale; a ramp
# of paced runs follows (SOAK_RAMP_SECONDS each, from 20% of the closed-loop figure up in steps of
# 10% of it), reading the CPU time Envoy and checkpoint spend (/proc/PID/task/*/schedstat). The ramp
# stops at the first step at which their core is 80% busy or more (or that has an unexpected answer,
# or that the generator cannot keep up with); the rate is the 80% point interpolated between that
# step and the one before (scaled from the step when it is the first; the step before when it failed
# below 80% busy). SOAK_PEAK=paced is the previous definition (runs 17-24): the same ramp from 40%
# up to the step at which the core is 95% busy, the peak the 95% point, the soak at 80% of it.
# SOAK_PEAK=closed is the first one (runs 1-7): 80% of the closed-loop figure.
#
# Settings (environment): SOAK_DURATION seconds (600), SOAK_RATE requests/s (default: the rate
# above), SOAK_PEAK (core, paced or closed), SOAK_PEAK_SECONDS (15), SOAK_RAMP_SECONDS (20 for core,
# 10 for paced), SOAK_WARMUP seconds (a fifth of the duration), SOAK_WINDOW seconds per latency
# window (60, or a tenth of a shorter run), SOAK_PORT_BASE (47300), SOAK_BUILD=0 skips `cargo
# build`, SOAK_BIN a folder laid out like target/release (checkpoint, examples/soak_load),
# SOAK_KEEP=1 keeps the work folder (the JSON report is soak.json there), SOAK_LOG_LEVEL for
# checkpoint (info: the decision line of every Check is written, to /dev/null).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--help] (settings are environment variables)" >&2; exit 2 ;;
esac

DURATION="${SOAK_DURATION:-600}"
WARMUP="${SOAK_WARMUP:-$((DURATION / 5))}"
WINDOW="${SOAK_WINDOW:-$((DURATION >= 600 ? 60 : (DURATION / 10 > 0 ? DURATION / 10 : 1)))}"
PEAK_SECONDS="${SOAK_PEAK_SECONDS:-15}"
PEAK_MODE="${SOAK_PEAK:-core}"
RAMP_SECONDS="${SOAK_RAMP_SECONDS:-$([ "$PEAK_MODE" = core ] && echo 20 || echo 10)}"
PORT_BASE="${SOAK_PORT_BASE:-47300}"
LOG_LEVEL_CHECKPOINT="${SOAK_LOG_LEVEL:-info}"
P_USERINFO=$((PORT_BASE + 0))
P_CHECKPOINT=$((PORT_BASE + 1))
P_CHECKPOINT_HTTP=$((PORT_BASE + 2))
P_ENVOY=$((PORT_BASE + 3))
P_ADMIN=$((PORT_BASE + 4))

say() { printf 'soak: %s\n' "$*" >&2; }
# CPU time, in ns, of the processes given, all their threads (precise, unlike /proc/PID/stat's ticks).
cpu_ns() {
  local pid
  for pid in "$@"; do cat "/proc/$pid"/task/*/schedstat 2>/dev/null; done | awk '{ s += $1 } END { printf "%.0f", s }'
}
die() { printf 'soak: error: %s\n' "$*" >&2; exit 1; }

case "$PEAK_MODE" in core | paced | closed) ;; *) die "SOAK_PEAK must be core, paced or closed, not $PEAK_MODE" ;; esac

[ "$DURATION" -ge $((WARMUP + 20)) ] ||
  die "SOAK_DURATION ($DURATION) must be at least SOAK_WARMUP ($WARMUP) + 20 s to judge memory"

work="$(mktemp -d /tmp/checkpoint-soak.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${SOAK_KEEP:-0}" = 1 ]; then say "work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in taskset curl node python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup.sh installs most of them)"
done
[ -x .venv/bin/python ] || die "no .venv: run scripts/setup.sh"
if [ "$(nproc)" -lt 2 ]; then die "needs two cores: one for the gateway, one for the load generator"; fi

bin="${SOAK_BIN:-target/release}"
if [ -z "${SOAK_BIN:-}" ] && [ -n "${CARGO_TARGET_DIR:-}" ]; then bin="$CARGO_TARGET_DIR/release"; fi
if [ "${SOAK_BUILD:-1}" = 1 ] && [ -z "${SOAK_BIN:-}" ]; then
  say "cargo build --release --locked --bin checkpoint --example soak_load"
  cargo build --quiet --release --locked --bin checkpoint --example soak_load
fi
for b in "$bin/checkpoint" "$bin/examples/soak_load"; do
  [ -x "$b" ] || die "$b is missing: cargo build --release --locked --bin checkpoint --example soak_load"
done
# The real Envoy binary, not the Python launcher, so that its pid is the one doing the work.
envoy_bin="$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
[ -x "$envoy_bin" ] || die "no Envoy binary at $envoy_bin"

wait_http() {
  local url="$1" what="$2" pid="$3" log="$4" expect="${5:-}" i body
  for i in $(seq 1 200); do
    if body="$(curl -fsS "$url" 2>/dev/null)" && { [ -z "$expect" ] || [ "$body" = "$expect" ]; }; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited: $(tail -5 "$log")"
    sleep 0.1
  done
  die "$what is not ready after 20 s: $(tail -5 "$log")"
}

checkpoint_env=(env -i PATH="$PATH"
  CONFIGURATION_PATH="$root/bench" CONFIGURATION_FILE_NAME=auth
  USERINFO_URL="http://127.0.0.1:$P_USERINFO/userinfo"
  CUSTOM_PERMISSIONS_KEY=permissions
  CHECKPOINT_GRPC_ADDR="127.0.0.1:$P_CHECKPOINT"
  CHECKPOINT_HTTP_ADDR="127.0.0.1:$P_CHECKPOINT_HTTP"
  LOG_LEVEL="$LOG_LEVEL_CHECKPOINT" DELAY_SHUTDOWN_SECONDS=0)

say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine skews the timings)"
taskset -c 1 node bench/userinfo.js "$P_USERINFO" --soak >"$work/userinfo.log" 2>&1 &
userinfo_pid=$!
pids+=("$userinfo_pid")
wait_http "http://127.0.0.1:$P_USERINFO/__count" user-info "$userinfo_pid" "$work/userinfo.log"

taskset -c 0 "${checkpoint_env[@]}" "$bin/checkpoint" >/dev/null 2>"$work/checkpoint.err" &
checkpoint_pid=$!
pids+=("$checkpoint_pid")
wait_http "http://127.0.0.1:$P_CHECKPOINT_HTTP/-/ready" checkpoint "$checkpoint_pid" "$work/checkpoint.err"

ALLOWED_HEADERS="$("${checkpoint_env[@]}" "$bin/checkpoint" allowed-headers)" || die "checkpoint allowed-headers failed"
LISTEN_PORT="$P_ENVOY" ADMIN_PORT="$P_ADMIN" ALLOWED_HEADERS="$ALLOWED_HEADERS" \
  AUTHZ_ADDRESS="socket_address: { address: 127.0.0.1, port_value: $P_CHECKPOINT }" \
  bash scripts/render-envoy.sh bench/envoy-ext-authz.yaml "$work/envoy.yaml" >&2
taskset -c 0 "$envoy_bin" -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning \
  >"$work/envoy.log" 2>&1 &
envoy_pid=$!
pids+=("$envoy_pid")
wait_http "http://127.0.0.1:$P_ADMIN/ready" envoy "$envoy_pid" "$work/envoy.log" LIVE

load=(taskset -c 1 "$bin/examples/soak_load" "127.0.0.1:$P_ENVOY")
rate="${SOAK_RATE:-}"
if [ -z "$rate" ]; then
  say "peak: ${PEAK_SECONDS} s closed loop (4 connections x 8 streams), the same mix, answers checked"
  "${load[@]}" --rate 0 --duration "$PEAK_SECONDS" --warmup 0 --window "$PEAK_SECONDS" \
    --run peak --json "$work/peak.json" >"$work/peak.txt" 2>&1 || {
    cat "$work/peak.txt" >&2
    die "the peak run had unexpected answers"
  }
  peak="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["rate"]))' "$work/peak.json")"
  peak_json="$work/peak.json"
  say "closed loop: $peak req/s"
  if [ "$PEAK_MODE" != closed ]; then
    [ "$(cpu_ns "$checkpoint_pid")" -gt 0 ] ||
      die "no CPU time in /proc/$checkpoint_pid/task/*/schedstat on this kernel: use SOAK_PEAK=closed or SOAK_RATE"
    closed="$peak"
    if [ "$PEAK_MODE" = core ]; then target=80 steps="20 30 40 50 60 70 80 90 100"; else target=95 steps="40 50 60 70 80 90 100"; fi
    point=""
    for pct in $steps; do
      step=$((closed * pct / 100))
      before="$(cpu_ns "$envoy_pid" "$checkpoint_pid")"
      started="$(date +%s%N)"
      # A step that overloads the gateway may have unexpected answers: that ends the ramp.
      "${load[@]}" --rate "$step" --duration "$RAMP_SECONDS" --warmup 0 --window "$RAMP_SECONDS" \
        --run "ramp$pct" --json "$work/ramp$pct.json" >"$work/ramp$pct.txt" 2>&1 || true
      busy=$((($(cpu_ns "$envoy_pid" "$checkpoint_pid") - before) * 100 / ($(date +%s%N) - started)))
      read -r got unexpected p99 probe < <(python3 -c 'import json,sys; r = json.load(open(sys.argv[1])); print(round(r["rate"]), r["unexpected"], r["p99_us"], r.get("probe_median_us"))' "$work/ramp$pct.json")
      say "paced $step req/s: answered $got req/s, gateway core $busy% busy, p99 $p99 µs, unexpected $unexpected, probe $probe µs"
      if [ "$busy" -ge "$target" ] || [ "$unexpected" -gt 0 ] || [ $((got * 100)) -lt $((step * 98)) ]; then
        point="$step"
        peak_json="$work/ramp$pct.json"
        # Steps are 10% of the closed-loop figure apart, and the busy share climbs slowly near the
        # top: a step can land well past the target (94% then 97%). The point is then the rate at
        # the target, interpolated between this step and the one before, not the step. A step that
        # failed (an unexpected answer, the generator behind) below the target was more than the
        # gateway carries: the point is the step before it.
        if [ "$busy" -gt "$target" ] && [ -n "${prev_step:-}" ]; then
          point=$((prev_step + (step - prev_step) * (target - prev_busy) / (busy - prev_busy)))
          say "the step passed $target% busy: the $target% point between $prev_step ($prev_busy%) and $step ($busy%) is $point req/s"
        elif [ "$busy" -gt "$target" ]; then
          point=$((step * target / busy))
          say "the first step passed $target% busy: the $target% point, scaled from it, is $point req/s"
        elif [ "$busy" -lt "$target" ] && [ -n "${prev_step:-}" ]; then
          point="$prev_step"
          say "the step failed below $target% busy: the point is the step before, $point req/s"
        fi
        break
      fi
      prev_step="$step"
      prev_busy="$busy"
      sleep 2
    done
    # No step reached the target: the last step, which the gateway carried.
    [ -n "$point" ] || point="$step"
    # What the ramp queued drains, and the connections Envoy opened for its queue close (the bench
    # configuration's idle timeout is 30 s), before the soak starts: a soak that begins on them
    # pays for the ramp's last step (run 20: 1,206 unexpected answers in its first minute).
    sleep 35
    if [ "$PEAK_MODE" = core ]; then
      peak=$((point * 100 / 80))
      rate="$point"
      say "the core is the peak: soaking at the rate that keeps it 80% busy, $rate req/s (the core's peak, scaled, $peak req/s; closed loop $closed req/s)"
    else
      peak="$point"
      say "peak (paced): $peak req/s"
    fi
  fi
  if [ -z "$rate" ]; then
    rate=$((peak * 8 / 10))
    say "peak $peak req/s: soaking at 80%, $rate req/s"
  fi
fi

say "soak: $DURATION s at $rate req/s, warm-up $WARMUP s, windows of $WINDOW s; checkpoint pid $checkpoint_pid"
# Envoy's counters printed at the end are the soak's own, not the peak runs'.
curl -fsS -X POST "http://127.0.0.1:$P_ADMIN/reset_counters" >/dev/null || die "Envoy's admin did not reset its counters"
ticks_before="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$checkpoint_pid/stat")"
envoy_ticks_before="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$envoy_pid/stat")"
# Who had the gateway's core, every second (bench/cpu_seconds.py): printed for the slowest seconds.
python3 "$root/bench/cpu_seconds.py" sample "$work/cpu.tsv" 0 \
  envoy="$envoy_pid" checkpoint="$checkpoint_pid" &
sampler_pid=$!
pids+=("$sampler_pid")
soak_started="$(date +%s.%N)"
status=0
"${load[@]}" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" --window "$WINDOW" \
  --pid "$checkpoint_pid" --run soak --json "$work/soak.json" || status=$?
kill "$sampler_pid" 2>/dev/null || true
kill -0 "$checkpoint_pid" 2>/dev/null || die "checkpoint exited during the soak: $(tail -5 "$work/checkpoint.err")"
hz="$(getconf CLK_TCK)"
ticks_after="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$checkpoint_pid/stat")"
envoy_ticks_after="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$envoy_pid/stat")"
echo "CPU over the soak, % of one core: checkpoint $(((ticks_after - ticks_before) * 100 / hz / DURATION)), Envoy $(((envoy_ticks_after - envoy_ticks_before) * 100 / hz / DURATION))"
# Envoy's side during the soak: ext_authz calls that failed, timed out or overflowed the authz
# cluster's circuit breakers (its own 503s, "unexpected" above), and its connections to checkpoint
# (opened, open at the end, closed for idleness): each one open holds h2 state in checkpoint's
# memory. upstream_cx_active is a gauge, not reset.
echo "Envoy ext_authz: $(curl -fsS "http://127.0.0.1:$P_ADMIN/stats?filter=ext_authz\.(ok|denied|error|failure_mode_allowed)$|cluster\.authz\.upstream_(rq_(timeout|5xx|total|pending_overflow|active_overflow)|cx_(overflow|active|total|idle_timeout))$" | tr '\n' ' ')"
# The machine's speed when the peak was measured and during the soak (the load generator's probe,
# examples/soak_load.rs): on a shared virtual machine it moves, and a rate fixed from the peak is
# then a different share of what the core can do. Printed, not judged.
if [ -n "${peak_json:-}" ] && [ -f "$peak_json" ] && [ -f "$work/soak.json" ]; then
  python3 - "$peak_json" "$work/soak.json" <<'PY' || say "could not compare the machine's speed"
import json, sys
peak, soak = (json.load(open(p)).get("probe_median_us") for p in sys.argv[1:3])
if peak and soak:
    change = (soak - peak) * 100 / peak
    line = f"machine speed (probe median, µs of CPU time; higher is slower): {peak} when the peak was measured, {soak} during the soak ({change:+.0f}%)"
    if change > 10:
        line += ": the machine was slower than when the peak was measured, so the rate was more than 80% of what the core could do"
    elif change < -10:
        line += ": the machine was faster than when the peak was measured, so the rate was less than 80% of what the core could do"
    print(line)
PY
fi
[ -f "$work/soak.json" ] && python3 "$root/bench/cpu_seconds.py" slowest "$work/cpu.tsv" "$work/soak.json" "$soak_started" 8 ||
  say "no per-second CPU of the core"
python3 "$root/bench/cpu_seconds.py" minutes "$work/cpu.tsv" || say "no per-minute CPU of the core"
echo "user-info: $(curl -fsS "http://127.0.0.1:$P_USERINFO/__count") (peak run included)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$status" = 0 ]; then say "PASS: zero unexpected answers, memory flat after the warm-up"; else say "FAIL (see above)"; fi
exit "$status"
