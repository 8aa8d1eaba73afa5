"""Who had the gateway's core, second by second, during a soak (scripts/soak.sh).

    cpu_seconds.py sample OUT CORE NAME=PID...   one line a second until killed
    cpu_seconds.py slowest OUT SOAK_JSON START N  the N slowest seconds of the soak, with the
                                                 core's second and the one before
    cpu_seconds.py minutes OUT                   the same columns, averaged per minute

`sample` writes, every second: the wall-clock time, then the core's busy, idle and steal shares
(from /proc/stat), then each process's CPU share (utime + stime from /proc/PID/stat), all in % of
one core, and last the core's speed: `sample` runs on that core, and once a second times a fixed
piece of work (about a millisecond, a tenth of a percent of the core) in CPU time, µs. Waiting for
the core does not count in it; a core that runs slower does (the host's other tenants on the same
physical core, its clock), which steal does not show. `slowest` reads the soak's per-second
answers (`seconds` in the load generator's JSON report: answers, unexpected, slowest answer in
µs), takes the N seconds with the slowest answer, and prints each next to what the core did in
that second and the one before. START is the wall-clock time the load generator started; the two
clocks line up to about a second.

It tells a stall of the core (busy with something, or taken by the host: steal) from a stall of
a process (the core idle while answers wait).
"""

import json
import os
import sys
import time


def core_jiffies(core):
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:9]]
                user, nice, system, idle, iowait, irq, softirq, steal = v
                busy = user + nice + system + irq + softirq
                return busy, idle + iowait, steal
    raise SystemExit(f"no cpu{core} in /proc/stat")


def process_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def probe_us():
    """CPU time of a fixed piece of work, µs."""
    before = time.thread_time_ns()
    x = 0x9E3779B9
    for _ in range(8000):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return (time.thread_time_ns() - before) // 1000


def sample(out, core, named):
    hz = os.sysconf("SC_CLK_TCK")
    names = [n for n, _ in named]
    os.sched_setaffinity(0, {core})
    with open(out, "w", buffering=1) as f:
        f.write("time\tbusy\tidle\tsteal\t" + "\t".join(names) + "\tprobe_us\n")
        last = core_jiffies(core)
        last_p = [process_ticks(p) for _, p in named]
        last_t = time.monotonic()
        while True:
            time.sleep(1)
            now_t = time.monotonic()
            now = core_jiffies(core)
            now_p = [process_ticks(p) for _, p in named]
            scale = 100 / (hz * (now_t - last_t))
            shares = [(a - b) * scale for a, b in zip(now, last)]
            procs = [(a - b) * scale for a, b in zip(now_p, last_p)]
            probe = probe_us()
            f.write(
                f"{time.time():.1f}\t"
                + "\t".join(f"{x:.0f}" for x in shares + procs)
                + f"\t{probe}\n"
            )
            last, last_p, last_t = now, now_p, now_t


def slowest(out, soak_json, start, n):
    with open(soak_json) as f:
        seconds = json.load(f).get("seconds") or []
    rows = []
    with open(out) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == len(header):
                rows.append((float(parts[0]), parts[1:]))
    if not seconds or not rows:
        print("no per-second CPU samples")
        return

    def at(t):
        # The sample that covers wall-clock second [t, t+1): the first taken after t + 1, if it
        # was taken about then (samples come a little more than a second apart).
        for when, values in rows:
            if when >= t + 1:
                return values if when < t + 2.2 else None
        return None

    worst = sorted(range(len(seconds)), key=lambda i: seconds[i][2], reverse=True)[:n]
    print(
        f"the {len(worst)} slowest seconds of the soak, and the gateway's core in that second "
        f"and the one before (% of the core: {', '.join(header[1:])}):"
    )
    for i in sorted(worst):
        answers, unexpected, max_us = seconds[i]
        cells = []
        for t in (start + i - 1, start + i):
            values = at(t)
            cells.append("/".join(values) if values else "-")
        print(
            f"  second {i}: slowest answer {max_us / 1000:.0f} ms, {answers} answers, "
            f"{unexpected} unexpected; core before {cells[0]}, during {cells[1]}"
        )


def minutes(out):
    with open(out) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f]
    rows = [[float(x) for x in r[1:]] for r in rows if len(r) == len(header)]
    if not rows:
        print("no per-second CPU samples")
        return
    print(f"the gateway's core per minute, means of the seconds ({', '.join(header[1:])}):")
    for m in range(0, len(rows), 60):
        chunk = rows[m : m + 60]
        means = [sum(col) / len(chunk) for col in zip(*chunk)]
        print(f"  {m // 60:>2}: " + "/".join(f"{x:.0f}" for x in means))


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "sample":
        named = []
        for arg in sys.argv[4:]:
            name, _, pid = arg.partition("=")
            named.append((name, int(pid)))
        sample(sys.argv[2], int(sys.argv[3]), named)
    elif len(sys.argv) == 3 and sys.argv[1] == "minutes":
        minutes(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "slowest":
        slowest(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
