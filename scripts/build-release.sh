#!/usr/bin/env bash
# The release binary as the container image ships it: target/release/checkpoint.
#
#   scripts/build-release.sh            cargo build --release --locked --bin checkpoint, then link
#                                       it again with the code a Check runs laid out together
#
# Why the second link: behind Envoy, the core that runs checkpoint runs about 230,000 of Envoy's
# instructions between two Checks, so every Check fetches its code again, line by line and page
# by page (bench/RESULTS.md, "Seventeenth round"). The linker places functions in the order
# their object files come, which scatters the ~170 KiB a Check runs over the binary's 17 MB of
# code. bench/hot-functions.txt lists those functions' symbols, hottest first (written from a
# callgrind profile by bench/footprint.py); this script links once more with lld's
# `--symbol-ordering-file`, which places them first and together. Nothing else changes: same
# compiler flags, same code, same tests.
#
# A listed symbol the build does not have (its hash changes when a dependency or the toolchain
# does) is looked up by its demangled name instead, when the build has at most four functions of
# that name (a generic function has one per instance, and which one is hot is not known); else
# skipped. With no list, or no `nm`, the first build is the result (a warning says so). Needs lld,
# the linker rustc uses by default on x86_64 Linux since 1.90: with another linker, build with
# plain `cargo build --release`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { echo "build-release: $*" >&2; }

cargo build --release --locked --bin checkpoint

list="$root/bench/hot-functions.txt"
bin="$root/target/release/checkpoint"
order="$root/target/release/checkpoint.symbol-order"
if [ ! -f "$list" ] || ! command -v nm >/dev/null 2>&1; then
  say "warning: no bench/hot-functions.txt or no nm: $bin keeps the linker's default layout"
  exit 0
fi

# One line per defined code symbol: the symbol, a tab, its demangled name. `nm` and `nm -C` list
# the same symbols in the same order (the symbol table's, unsorted).
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
  exit 0
fi
# The file's name carries its content's hash: cargo relinks when the flags change, and only then
# (it does not look into a file a flag names).
ordered="$order.$(sha256sum "$order" | cut -c1-16)"
mv "$order" "$ordered"
say "linking again with $(wc -l <"$ordered") symbols placed first ($ordered)"
# Only the binary's own crate is compiled again (the extra flags are its link arguments).
cargo rustc --release --locked --bin checkpoint -- \
  -C "link-arg=-Wl,--symbol-ordering-file=$ordered" \
  -C "link-arg=-Wl,--no-warn-symbol-ordering"
