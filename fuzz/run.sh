#!/usr/bin/env bash
# Runs the cargo-fuzz targets of this folder for a bounded time each, on corpora seeded from the
# project's test tables, and says which target found a crash. Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`); see README.md here.
#
#   fuzz/run.sh                        # every target, 300 s each, one at a time
#   FUZZ_SECONDS=60 fuzz/run.sh path   # one target, a minute
#   FUZZ_JOBS=2 fuzz/run.sh            # two targets at a time (one core each)
#
# Builds with debug assertions (`-a`), so an arithmetic overflow is a crash too. Corpora grow in
# fuzz/corpus/<target>, crashes land in fuzz/artifacts/<target>, logs in fuzz/logs/<target>.log
# (all three ignored by git). Exit status: 0 when no target crashed, 1 otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$here"

seconds=${FUZZ_SECONDS:-300}
jobs=${FUZZ_JOBS:-1}
rss_mb=${FUZZ_RSS_MB:-2048}
case "$seconds$jobs$rss_mb" in
*[!0-9]*) echo "fuzz/run.sh: FUZZ_SECONDS, FUZZ_JOBS and FUZZ_RSS_MB are whole numbers" >&2; exit 2 ;;
esac
[ "$jobs" -ge 1 ] || jobs=1

command -v jq >/dev/null || { echo "fuzz/run.sh: needs jq (to seed the corpora)" >&2; exit 2; }
cargo +nightly fuzz --version >/dev/null 2>&1 ||
  { echo "fuzz/run.sh: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2; exit 2; }

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One file per line of a jq query over a table, into an empty corpus only.
seed_lines() { # corpus table query
  local dir=corpus/$1 n=0 line
  [ -z "$(ls -A "$dir" 2>/dev/null)" ] || return 0
  mkdir -p "$dir"
  while IFS= read -r line; do
    n=$((n + 1))
    printf '%s' "$line" >"$dir/seed-$n"
  done < <(jq -r "$3" "$root/tests/cases/$2")
}
seed_files() { # corpus file...
  local dir=corpus/$1 n=0 file
  [ -z "$(ls -A "$dir" 2>/dev/null)" ] || return 0
  mkdir -p "$dir"
  shift
  for file in "$@"; do
    n=$((n + 1))
    cp "$root/$file" "$dir/seed-$n"
  done
}
seed_lines path paths.json '.[].raw'
seed_lines expression expressions.json '.. | objects | select(has("expr")) | .expr'
seed_files rule_file bench/auth.json envoy/demo/auth.json
seed_files native_file schema/checkpoint.example.yaml scripts/demo/checkpoint.yaml
seed_lines jwks jwt-keys.json '.[] | objects | select(has("public")) | {keys: [.public]} | tojson'

mkdir -p logs
echo "fuzz/run.sh: building the targets (release, debug assertions)"
cargo +nightly fuzz build -O -a >logs/build.log 2>&1 ||
  { echo "fuzz/run.sh: the build failed, see fuzz/logs/build.log" >&2; tail -20 logs/build.log >&2; exit 1; }

run_one() {
  local target=$1 status=0
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run -O -a "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=10 -print_final_stats=1 \
    >"logs/$target.log" 2>&1 || status=$?
  local runs
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' || true)
  if [ "$status" = 0 ]; then
    echo "$target: no crash in ${seconds}s, ${runs:-?} inputs, corpus $(ls "corpus/$target" | wc -l) files"
  else
    echo "$target: FAILED (exit $status), see fuzz/logs/$target.log and fuzz/artifacts/$target/"
    return 1
  fi
}

failed=0
running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
