#!/usr/bin/env bash
# The release binary as the container image ships it: target/dist/checkpoint.
#
#   scripts/build-release.sh            profile-guided build (below), then linked with its hot code
#                                       together
#   scripts/build-release.sh --no-pgo   cargo build --release --locked --bin checkpoint, then
#                                       linked with its hot code together
#
# Both steps change where the compiler and the linker put code, never what the code does: same
# source, same dependencies, same tests. Why they matter: behind Envoy, the core that runs
# checkpoint runs about 230,000 of Envoy's instructions between two Checks, so every Check fetches
# its code again, line by line and page by page (bench/RESULTS.md, "Seventeenth round" and
# "Eighteenth round"). The less code a Check walks, and the closer together, the less it costs.
#
# Profile-guided optimisation (PGO), in target/pgo-generate and target/pgo-use (CARGO_TARGET_DIR's
# folder when it is set), leaving target/release to cargo's ordinary builds:
#   1. the training load, examples/pgo_training.rs, built as usual (target/release/examples);
#   2. checkpoint built with `-Cprofile-generate` (RUSTFLAGS; every crate is instrumented);
#   3. the training: that binary started three times (TCP with one and two runtime workers, a
#      Unix socket), 30,000 Checks each, every answer checked, stopped with SIGTERM; each run
#      adds its counts to the raw profile at exit;
#   4. llvm-profdata (the rustup component llvm-tools, added here when missing) merges them;
#   5. checkpoint built again with `-Cprofile-use`: LLVM inlines, lays out branches and keeps
#      apart hot and cold code by what the training ran.
# Steps 3 and 4 run again only when the instrumented binary, the training load or the rule file
# changed (the profile's name carries a hash of the three). Without llvm-profdata (no rustup, no
# network) the script says so and builds without a profile, as --no-pgo does.
#
# The ordered link: the linker places functions in the order their object files come, which
# scatters the code a Check runs over the binary's 17 MB. bench/hot-functions.txt lists those
# functions' symbols, hottest first (written from a callgrind profile by bench/footprint.py); the
# binary is linked once more with lld's `--symbol-ordering-file`, which places them first and
# together. A listed symbol the build does not have (its hash changes when a dependency or the
# toolchain does, and a function PGO inlined everywhere is gone) is looked up by its demangled
# name instead, when the build has at most four functions of that name (a generic function has
# one per instance, and which one is hot is not known); else skipped. With no list, or no `nm`,
# the link stays as it was (a warning says so). Needs lld, the linker rustc uses by default on
# x86_64 Linux since 1.90.
#
# Last, the PGO build answers a short run of the training load (3,000 Checks per run), every
# answer checked: the binary that ships is the binary that was run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { echo "build-release: $*" >&2; }

pgo=1
case "${1:-}" in
  "") ;;
  --no-pgo) pgo=0 ;;
  *) echo "usage: $0 [--no-pgo]" >&2; exit 2 ;;
esac

target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
dist="$target/dist/checkpoint"

# Links the binary of the build in CARGO_TARGET_DIR (with the environment's RUSTFLAGS) again with
# the listed functions first.
link_ordered() {
  local dir="${CARGO_TARGET_DIR:-$target}"
  local bin="$dir/release/checkpoint" list="$root/bench/hot-functions.txt"
  local order="$dir/release/checkpoint.symbol-order"
  if [ ! -f "$list" ] || ! command -v nm >/dev/null 2>&1; then
    say "warning: no bench/hot-functions.txt or no nm: $bin keeps the linker's default layout"
    return 0
  fi
  # One line per defined code symbol: the symbol, a tab, its demangled name. `nm` and `nm -C`
  # list the same symbols in the same order (the symbol table's, unsorted).
  paste -d '\t' \
    <(nm --defined-only -p "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }') \
    <(nm --defined-only -p -C "$bin" | awk '$2 ~ /^[tTwW]$/ { sub(/^[^ ]+ [^ ]+ /, ""); print }') |
    awk -F '\t' -v list="$list" '
      { present[$1] = 1; count[$2]++; by_name[$2] = by_name[$2] $1 "\n" }
      END {
        while ((getline line < list) > 0) {
          if (line ~ /^#/ || line == "") continue
          split(line, field, "\t")
          listed++
          if (field[1] in present) { out = field[1] "\n"; exact++ }
          else if (count[field[2]] >= 1 && count[field[2]] <= 4) { out = by_name[field[2]]; named++ }
          else continue
          # Each symbol once, at its first (hottest) place.
          n = split(out, symbol, "\n")
          for (i = 1; i <= n; i++)
            if (symbol[i] != "" && !(symbol[i] in placed)) { placed[symbol[i]] = 1; print symbol[i] }
        }
        printf "build-release: of %d listed symbols, %d found as they are, %d by name\n", \
          listed, exact + 0, named + 0 > "/dev/stderr"
      }' >"$order"
  if [ ! -s "$order" ]; then
    say "warning: no listed function found in $bin: it keeps the linker's default layout"
    return 0
  fi
  # The file's name carries its content's hash: cargo relinks when the flags change, and only
  # then (it does not look into a file a flag names).
  local ordered
  ordered="$order.$(sha256sum "$order" | cut -c1-16)"
  mv "$order" "$ordered"
  say "linking again with $(wc -l <"$ordered") symbols placed first ($ordered)"
  # Only the binary's own crate is compiled again (the extra flags are its link arguments).
  cargo rustc --release --locked --bin checkpoint -- \
    -C "link-arg=-Wl,--symbol-ordering-file=$ordered" \
    -C "link-arg=-Wl,--no-warn-symbol-ordering"
}

if [ "$pgo" = 1 ]; then
  # RUSTFLAGS is split on whitespace, and the profile's paths go into it.
  case "$target" in
    *[[:space:]]*) say "error: $target has whitespace, which RUSTFLAGS cannot carry: use --no-pgo or another CARGO_TARGET_DIR"; exit 1 ;;
  esac
  host="$(rustc -vV | sed -n 's/^host: //p')"
  profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
  if [ ! -x "$profdata" ] && command -v rustup >/dev/null 2>&1; then
    say "adding the rustup component llvm-tools (llvm-profdata merges the training's profiles)"
    rustup component add llvm-tools >&2 || true
  fi
  if [ ! -x "$profdata" ]; then
    say "warning: no llvm-profdata ($profdata): building without a profile, as --no-pgo"
    pgo=0
  fi
fi

if [ "$pgo" = 0 ]; then
  cargo build --release --locked --bin checkpoint
  link_ordered
  install -D -m 0755 "$target/release/checkpoint" "$dist"
  say "$dist: no profile, hot code linked together"
  exit 0
fi

# 1. The training load, built as cargo builds the examples.
cargo build --release --locked --example pgo_training
train="$target/release/examples/pgo_training"

# 2. The instrumented build; the raw profiles go to $raw.
generate="$target/pgo-generate"
raw="$generate/profiles"
CARGO_TARGET_DIR="$generate" RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" \
  cargo build --release --locked --bin checkpoint

# 3 and 4. The training and the merged profile, unless this binary and this load made it already.
use="$target/pgo-use"
stamp="$(cat "$generate/release/checkpoint" "$train" "$root/bench/auth.json" | sha256sum | cut -c1-16)"
profile="$use/checkpoint.$stamp.profdata"
if [ -s "$profile" ]; then
  say "the profile of this instrumented binary and training load is there: $profile"
else
  rm -rf "$raw"
  mkdir -p "$raw" "$use"
  say "training: $train against the instrumented build"
  "$train" "$generate/release/checkpoint"
  shopt -s nullglob
  profiles=("$raw"/*.profraw)
  shopt -u nullglob
  # The runs of one binary merge their counts into one file at exit (the default name's %m).
  [ "${#profiles[@]}" -ge 1 ] || { say "error: the training wrote no raw profile to $raw"; exit 1; }
  rm -f "$use"/checkpoint.*.profdata
  "$profdata" merge -o "$profile.partial" "${profiles[@]}"
  mv "$profile.partial" "$profile"
  say "merged ${#profiles[@]} raw profiles into $profile ($(du -k "$profile" | cut -f1) KiB)"
fi

# 5. The optimised build, then the ordered link, in its own folder with its own flags.
export CARGO_TARGET_DIR="$use" RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile"
cargo build --release --locked --bin checkpoint
link_ordered

# The binary that ships answers the training load right.
"$train" "$use/release/checkpoint" --checks 3000
install -D -m 0755 "$use/release/checkpoint" "$dist"
say "$dist: profile-guided, hot code linked together"
