#!/usr/bin/env python3
"""Numbers of the load benchmark (scripts/bench-load.sh).

  stats.py run NAME ROUND H2LOAD_STDOUT LOG_FILE CPU_TICKS USERINFO_CALLS FOREIGN_TICKS AUTHZ_TICKS SWITCHES
      one JSON line (stdout) and one progress line (stderr) for one h2load run: requests/s (h2load's), p50/p99 from h2load's per-request
      log (--log-file: start time, status, duration in microseconds), CPU microseconds per
      request from the server processes' utime+stime ticks (and, behind Envoy, the ext_authz
      server's share of them, AUTHZ_TICKS), the server processes' context switches per request
      (SWITCHES), non-2xx and failed counts, and the CPU time (in % of one core) that went to
      processes outside the bench during the run.
  stats.py report RESULTS_JSONL
      the table of every run, the per-scenario means, and the ratios the targets of issue 4 need,
      each two ways: the ratio of the means, and the median of the per-round ratios (the
      scenarios alternate, so each round pairs runs made seconds apart; the median is what one
      disturbed run cannot move).
"""
import json
import os
import re
import sys

SCENARIOS = {
    "a": "noop ext_authz, gRPC direct (floor)",
    "b": "checkpoint, gRPC direct, warm cache",
    "bj": "checkpoint, jwt source, gRPC direct",
    "c": "Envoy, no authorization",
    "d0": "Envoy + noop ext_authz",
    "d0h": "Envoy + noop answering as checkpoint",
    "d": "Envoy + checkpoint ext_authz",
    "d0u": "Envoy + noop, Unix socket",
    "du": "Envoy + checkpoint, Unix socket",
    "e": "Envoy jwt_authn (no cache) + rbac",
    "d0p": "d0, run together with dp",
    "d0hp": "d0h, run together with d0p or dp",
    "dp": "d, run together with d0p",
    "d0up": "d0u, run together with dup",
    "dup": "du, run together with d0up",
    "a@1k": "noop, fixed 1,000 req/s",
    "b@1k": "checkpoint, fixed 1,000 req/s",
}


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    # Nearest rank: the smallest value with at least q of the samples at or below it.
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def run(name, round_, stdout_file, log_file, ticks, userinfo_calls, other_ticks, authz_ticks, switches):
    text = open(stdout_file, encoding="utf-8", errors="replace").read()
    rps = re.search(r"finished in ([0-9.]+)(m?s), ([0-9.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (rps and req and codes):
        sys.exit(f"stats.py: cannot read h2load's summary in {stdout_file}:\n{text}")
    elapsed = float(rps.group(1)) / (1000 if rps.group(2) == "ms" else 1)
    done = int(req.group(3))
    ok = int(codes.group(1))
    durations = []
    with open(log_file, encoding="utf-8") as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                durations.append(int(parts[2]))
    durations.sort()
    clk_tck = os.sysconf("SC_CLK_TCK")
    cpu_us = int(ticks) * 1_000_000 / clk_tck
    row = {
        "scenario": name,
        "round": int(round_),
        "rps": float(rps.group(3)),
        "requests": done,
        "non_2xx": done - ok,
        "failed": int(req.group(5)) + int(req.group(6)),
        "p50_us": percentile(durations, 50),
        "p99_us": percentile(durations, 99),
        "cpu_us_per_request": cpu_us / done if done else float("nan"),
        # Only behind Envoy (two processes) is there an ext_authz server's share.
        "authz_cpu_us_per_request": (int(authz_ticks) * 1_000_000 / clk_tck / done
                                     if name.startswith("d") and done else None),
        "switches_per_request": int(switches) / done if done else float("nan"),
        "userinfo_calls": int(userinfo_calls),
        # Clamped at 0: ticks are sampled, so the difference can come out slightly negative.
        "foreign_cpu_pct": max(0.0, 100 * int(other_ticks) / clk_tck / elapsed) if elapsed else 0.0,
    }
    # Set by bench-load.sh for the two runs of a pair loaded together ("d0+d").
    if os.environ.get("BENCH_PAIR"):
        row["pair"] = os.environ["BENCH_PAIR"]
    print(json.dumps(row))
    print(f"bench: {name:>5} round {round_}: {row['rps']:8.0f} req/s  p50 {row['p50_us']} µs  "
          f"p99 {row['p99_us']} µs  CPU {row['cpu_us_per_request']:.1f} µs/req  "
          f"switches {row['switches_per_request']:.3f}/req  "
          f"non-2xx {row['non_2xx'] + row['failed']}  user-info {row['userinfo_calls']}  "
          f"foreign CPU {row['foreign_cpu_pct']:.0f}%", file=sys.stderr)


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def median(values):
    values = sorted(values)
    if not values:
        return float("nan")
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def report(results_file):
    rows = [json.loads(line) for line in open(results_file, encoding="utf-8") if line.strip()]
    header = (f"{'scenario':<6} {'what':<38} {'round':>5} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} "
              f"{'CPU µs/req':>10} {'switches/req':>12} {'non-2xx':>8} {'user-info':>9} {'foreign CPU':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['scenario']:<6} {SCENARIOS.get(r['scenario'], ''):<38} {r['round']:>5} {r['rps']:>9.0f} "
              f"{r['p50_us']:>8} {r['p99_us']:>8} {r['cpu_us_per_request']:>10.1f} "
              f"{r.get('switches_per_request', float('nan')):>12.3f} "
              f"{r['non_2xx'] + r['failed']:>8} {r['userinfo_calls']:>9} {r['foreign_cpu_pct']:>10.0f}%")
    print()
    print("means over rounds")
    print(header)
    print("-" * len(header))
    means = {}
    for name in SCENARIOS:
        runs = [r for r in rows if r["scenario"] == name]
        if not runs:
            continue
        m = {k: mean(r.get(k, float("nan")) for r in runs)
             for k in ("rps", "p50_us", "p99_us", "cpu_us_per_request", "switches_per_request", "foreign_cpu_pct")}
        m["bad"] = sum(r["non_2xx"] + r["failed"] for r in runs)
        m["userinfo_calls"] = sum(r["userinfo_calls"] for r in runs)
        means[name] = m
        print(f"{name:<6} {SCENARIOS[name]:<38} {len(runs):>5} {m['rps']:>9.0f} {m['p50_us']:>8.0f} "
              f"{m['p99_us']:>8.0f} {m['cpu_us_per_request']:>10.1f} {m['switches_per_request']:>12.3f} {m['bad']:>8} {m['userinfo_calls']:>9} "
              f"{m['foreign_cpu_pct']:>10.0f}%")
    print()
    print("ratios (issue 11 targets): ratio of the means | median of the per-round ratios (lowest-highest)")

    def ratio(label, num, den, key, target, higher_is_better):
        if num not in means or den not in means:
            return
        value = means[num][key] / means[den][key]
        by_round = {r["round"]: r[key] for r in rows if r["scenario"] == num}
        paired = [by_round[r["round"]] / r[key] for r in rows if r["scenario"] == den and r["round"] in by_round]
        middle = median(paired)
        sign = ">=" if higher_is_better else "<="

        def verdict(v):
            return "met" if (v >= target if higher_is_better else v <= target) else "NOT MET"

        print(f"  {label:<52} {value:6.2f} {verdict(value):<7} | {middle:5.2f} ({min(paired):.2f}-{max(paired):.2f}) "
              f"{verdict(middle):<7}  target {sign} {target}")

    ratio("b/a throughput (checkpoint direct vs floor)", "b", "a", "rps", 0.95, True)
    ratio("b/a p99 at 1,000 req/s", "b@1k", "a@1k", "p99_us", 1.5, False)
    ratio("d/d0 throughput (Envoy+checkpoint vs Envoy+noop)", "d", "d0", "rps", 0.95, True)
    ratio("du/d0u throughput (the same over a Unix socket)", "du", "d0u", "rps", 0.95, True)
    # Pairs run together (BENCH_SCENARIOS "d0+d", "d0u+du", ...): in the same seconds, so the
    # ratio of CPU per request is what a saturated core's throughput ratio would be, without the
    # drift of the host's speed between two runs made one after the other. The first of a pair
    # is the reference: the ratio is its CPU per request over the second's.
    for pair in sorted({r["pair"] for r in rows if r.get("pair")}):
        first, second = (name + "p" for name in pair.split("+"))
        cpu = {(r["scenario"], r["round"]): r["cpu_us_per_request"] for r in rows if r.get("pair") == pair}
        rounds = sorted({round_ for _, round_ in cpu})
        by_round = [cpu[(first, n)] / cpu[(second, n)] for n in rounds if (first, n) in cpu and (second, n) in cpu]
        if not by_round:
            continue
        firsts = [cpu[(first, n)] for n in rounds if (first, n) in cpu]
        seconds = [cpu[(second, n)] for n in rounds if (second, n) in cpu]
        value = mean(firsts) / mean(seconds)
        target = pair in ("d0+d", "d0u+du")
        mark = (lambda v: ("met" if v >= 0.95 else "NOT MET")) if target else (lambda v: "")
        label = f"{pair} run together: CPU/req of {first} over {second}"
        print(f"  {label:<52} {value:6.2f} {mark(value):<7} | {median(by_round):5.2f} "
              f"({min(by_round):.2f}-{max(by_round):.2f}) {mark(median(by_round)):<7}"
              f"{'  target >= 0.95' if target else '  (information)'}")
    print()
    print("other ratios")
    # Envoy's own jwt_authn + rbac (e) is information, not a target (issue 11).
    for num, den in (("bj", "a"), ("bj", "b"), ("d0", "c"), ("d", "c"), ("e", "c"), ("d", "e"),
                     ("du", "e"), ("du", "d"), ("d0u", "d0")):
        if num in means and den in means:
            print(f"  {num}/{den} throughput {means[num]['rps'] / means[den]['rps']:6.2f}")
    if "a" in means and "b" in means:
        extra = means["b"]["cpu_us_per_request"] - means["a"]["cpu_us_per_request"]
        print(f"  checkpoint's CPU above the floor: {extra:.1f} µs per Check "
              f"({means['b']['cpu_us_per_request']:.1f} vs {means['a']['cpu_us_per_request']:.1f})")
    if "d" in means and "d0" in means:
        extra = means["d"]["cpu_us_per_request"] - means["d0"]["cpu_us_per_request"]
        print(f"  Envoy+checkpoint CPU above Envoy+noop: {extra:.1f} µs per request")
    split = [(name, [r for r in rows if r["scenario"] == name and r.get("authz_cpu_us_per_request") is not None])
             for name in ("d0", "d0h", "d", "d0u", "du", "d0p", "d0hp", "dp", "d0up", "dup")]
    split = [(name, runs) for name, runs in split if runs]
    if split:
        print()
        print("CPU per request behind Envoy, split (µs): Envoy + ext_authz server = total")
        for name, runs in split:
            authz = mean(r["authz_cpu_us_per_request"] for r in runs)
            total = mean(r["cpu_us_per_request"] for r in runs)
            print(f"  {name:<4} {SCENARIOS[name]:<38} {total - authz:6.1f} + {authz:5.1f} = {total:6.1f}")
    noisy = [r for r in rows if r["foreign_cpu_pct"] > 15]
    if noisy:
        print(f"\nWARNING: in {len(noisy)} runs more than 15% of a core went to processes outside the bench: "
              "the machine was not quiet, rerun for figures to rely on")
    bad = sum(m["bad"] for m in means.values())
    if bad:
        print(f"\nWARNING: {bad} requests were not 2xx or failed: the figures above are not all allow decisions")


def main():
    if len(sys.argv) == 11 and sys.argv[1] == "run":
        run(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
