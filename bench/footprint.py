#!/usr/bin/env python3
"""The code one Check walks: distinct 64-byte lines of instructions, from a callgrind profile.

    bench/footprint.py CALLGRIND_OUT CHECKS [TOP] [--hot-functions OUT BINARY]

CALLGRIND_OUT is written with `--dump-instr=yes` (scripts/bench-load.sh --profile does so for
the servers) over CHECKS Checks. A line counts when its instructions ran at least 0.9 times per
Check: the code every Check walks, not what runs once a second. Prints the total (and the
4 KiB pages those lines are on: each is an entry of the instruction TLB) and, by
function (the function a line's first counted instruction belongs to), the TOP (15) that
walk the most lines.

Why lines and not instructions: behind Envoy the gateway's core runs about 230,000 of
Envoy's instructions between two Checks, which evicts the server's code from the first-level
caches; every line a Check walks is then fetched again. checkpoint runs about as many
instructions per Check as the no-op floor but walks more lines, and that, not its
instruction count, is what its Check costs in time there (bench/RESULTS.md).

With --hot-functions, also writes OUT: the code symbols of BINARY (the profiled executable) that
hold a walked line, the most lines first, one per line as `symbol<TAB>demangled name` (`nm`, `nm
-C`). That is bench/hot-functions.txt, which scripts/build-release.sh has the linker place
together.
"""

import bisect
import collections
import os
import re
import subprocess
import sys

LINE = 64
PAGE = 4096
NAMED = re.compile(r"(fn|cfn|ob|cob)=\((\d+)\)(?: (.*))?")


def position(text, last):
    """One position column of the callgrind format: absolute, relative (+n, -n) or `*`."""
    if text == "*":
        return last
    if text[0] == "+":
        return last + int(text[1:], 0)
    if text[0] == "-":
        return last - int(text[1:], 0)
    return int(text, 0)


def executions(path):
    """Ir per (object, instruction address), and the function each address belongs to."""
    names, objects = {}, {}
    function = obj = None
    cost = collections.Counter()
    owner = {}
    positions = 1
    last = [0, 0]
    after_calls = False
    with open(path, encoding="utf-8", errors="replace") as lines:
        for text in lines:
            first = text[:1]
            if first and (first.isdigit() or first in "+-*"):
                fields = text.split()
                for i in range(positions):
                    last[i] = position(fields[i], last[i])
                if after_calls:
                    # The inclusive cost of a call: not this function's own instructions.
                    after_calls = False
                    continue
                if len(fields) > positions:
                    key = (obj, last[0])
                    cost[key] += int(fields[positions])
                    owner[key] = function
                continue
            if text.startswith("positions:"):
                positions = len(text.split()) - 1
                if text.split()[1] != "instr":
                    sys.exit(f"{path}: written without --dump-instr=yes")
                continue
            match = NAMED.match(text)
            if match:
                kind, index, name = match.groups()
                table = names if kind in ("fn", "cfn") else objects
                if name:
                    table[index] = name.strip()
                if kind == "fn":
                    function = table.get(index)
                elif kind == "ob":
                    obj = table.get(index)
                continue
            if text.startswith("calls="):
                after_calls = True
    return cost, owner


HOT_HEADER = """\
# The code a Check runs behind Envoy, the symbols holding the most 64-byte lines walked per Check
# first: what scripts/build-release.sh has the linker place together, in this order. One symbol
# per line, a tab, its demangled name (the build script falls back on the name, for functions of
# which the build has at most a few instances, when a symbol's hash changed with the build).
# Written by `bench/footprint.py PROFILE CHECKS 0 --hot-functions bench/hot-functions.txt BINARY`
# from `BENCH_KEEP=1 BENCH_PROFILE_TARGETS=checkpoint-envoy scripts/bench-load.sh --profile`.
"""


def code_symbols(binary):
    """(address, symbol, demangled name) of BINARY's code symbols, by address."""
    def listing(*flags):
        out = subprocess.run(
            ["nm", "--defined-only", "-p", *flags, binary],
            capture_output=True, text=True, check=True,
        ).stdout
        return [line.split(" ", 2) for line in out.splitlines()]
    raw, demangled = listing(), listing("-C")
    symbols = [
        (int(r[0], 16), r[2], d[2])
        for r, d in zip(raw, demangled)
        if len(r) == 3 and len(d) == 3 and r[1] in "tTwW"
    ]
    return sorted(symbols)


def hot_symbols(cost, checks, binary):
    """BINARY's symbols with the lines a Check walks in them, the most lines first."""
    symbols = code_symbols(binary)
    starts = [s[0] for s in symbols]
    name = os.path.basename(binary)
    lines = collections.defaultdict(set)
    for (obj, address), ir in cost.items():
        if ir < 0.9 * checks or not obj or os.path.basename(obj) != name:
            continue
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0:
            lines[symbols[i][1:]].add(address // LINE)
    return sorted(lines, key=lambda s: (-len(lines[s]), s))


def main():
    args = sys.argv[1:]
    hot_out = None
    if "--hot-functions" in args:
        i = args.index("--hot-functions")
        if i + 2 >= len(args):
            sys.exit(__doc__)
        hot_out, binary = args[i + 1], args[i + 2]
        del args[i : i + 3]
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    path, checks = args[0], int(args[1])
    top = int(args[2]) if len(args) == 3 else 15
    cost, owner = executions(path)
    walked = {}
    for (obj, address), ir in sorted(cost.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        if ir >= 0.9 * checks:
            walked.setdefault((obj, address // LINE), owner[(obj, address)])
    pages = {(obj, line * LINE // PAGE) for obj, line in walked}
    print(
        f"  code walked per Check: {len(walked)} lines of {LINE} bytes ({len(walked) * LINE // 1024} KiB)"
        f" on {len(pages)} pages of {PAGE // 1024} KiB"
    )
    by_function = collections.Counter(walked.values())
    for name, count in by_function.most_common(top):
        print(f"  {count:6d}  {(name or '?')[:150]}")
    if hot_out:
        with open(hot_out, "w", encoding="utf-8") as out:
            out.write(HOT_HEADER)
            for symbol, demangled in hot_symbols(cost, checks, binary):
                out.write(f"{symbol}\t{demangled}\n")


if __name__ == "__main__":
    main()
