#!/usr/bin/env python3
"""The code one Check walks: distinct 64-byte lines of instructions, from a callgrind profile.

    bench/footprint.py CALLGRIND_OUT CHECKS [TOP]

CALLGRIND_OUT is written with `--dump-instr=yes` (scripts/bench-load.sh --profile does so for
the servers) over CHECKS Checks. A line counts when its instructions ran at least 0.9 times per
Check: the code every Check walks, not what runs once a second. Prints the total and, by
function (the function a line's first counted instruction belongs to), the TOP (15) that
walk the most lines.

Why lines and not instructions: behind Envoy the gateway's core runs about 230,000 of
Envoy's instructions between two Checks, which evicts the server's code from the first-level
caches; every line a Check walks is then fetched again. checkpoint runs about as many
instructions per Check as the no-op floor but walks more lines, and that, not its
instruction count, is what its Check costs in time there (bench/RESULTS.md).
"""

import collections
import re
import sys

LINE = 64
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


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, checks = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) == 4 else 15
    cost, owner = executions(path)
    walked = {}
    for (obj, address), ir in sorted(cost.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        if ir >= 0.9 * checks:
            walked.setdefault((obj, address // LINE), owner[(obj, address)])
    print(f"  code walked per Check: {len(walked)} lines of {LINE} bytes ({len(walked) * LINE // 1024} KiB)")
    by_function = collections.Counter(walked.values())
    for name, count in by_function.most_common(top):
        print(f"  {count:6d}  {(name or '?')[:150]}")


if __name__ == "__main__":
    main()
