#!/usr/bin/env python3
"""Each autovacuum pass of a run, what it cost and what stalled meanwhile: from the database
hosts' logs (`log_autovacuum_min_duration = 0`), the CPU samples of `db_processes.py` and the
gateway's access log, all left in the run's state folder.

    scripts/bench/autovacuum_passes.py --state /tmp/sb-state --samples /tmp/db-processes.tsv \
        --result stages/07-distributed/results/RUN.json [--from 02:27:40] [--to 02:30:40]

Prints one line per pass (a pass is one autovacuum worker process: the `[pid]` of its log
lines): host, when its first and last table were logged, the worker's CPU time (the host's
autovacuum CPU from 1.5 s before its first line, when the worker was started, to its last),
the requests the gateway timed over 300 ms that began in that window, and the tables. Then the
worker CPU per kind of table step, summed over the run, each step's share being the CPU since the
step before it in the same pass (so a pass's start-up is in its first step's share).

`--from`/`--to` keep the passes of the measured part (the run's load, not the seeding).
`--minutes` adds, per minute of the gateway's log, the count, p50 and p90 of each kind of
request: whether a run slows as it goes, and which requests most.
"""

import argparse
import collections
import datetime
import glob
import json
import re

SLOW_MS = 300
# The worker is forked by the launcher and connects (its start-up CPU) before its first table.
START_S = 1.5
LOG_LINE = re.compile(r"\S+ (\d\d:\d\d:\d\d\.\d+) UTC \[(\d+)\] LOG:  automatic (?:aggressive )?"
                      r"(vacuum|analyze) of table \"\w+\.\w+\.(\w+)\"")
ACCESS = re.compile(r"\S+T(\d\d:\d\d:\d\d\.\d+)Z .* ms=([0-9.]+)")
REQUEST = re.compile(r'method=([A-Z]+) path="([^"]+)"')
# Kinds of request for `--minutes`, by method and path (a slug or a username is any segment).
KINDS = [("GET", r"/api/articles/[^/]+/comments", "comment list"),
         ("GET", r"/api/articles", "article list"),
         ("GET", r"/api/articles/[^/]+", "article"),
         ("POST", r"/api/articles/[^/]+/comments", "comment"),
         ("POST", r"/api/articles/[^/]+/favorite", "favorite")]


def kind_of(method, path):
    return next((k for m, pattern, k in KINDS if m == method and re.fullmatch(pattern, path)), None)


def by_minute(paths):
    """Per minute of the gateway's log: each kind's count, p50 and p90 in ms."""
    times = collections.defaultdict(list)
    for path in paths:
        for line in open(path):
            m, r = ACCESS.match(line), REQUEST.search(line)
            kind = r and kind_of(r.group(1), r.group(2).split("?")[0])
            if m and kind:
                times[(m.group(1)[:5], kind)].append(float(m.group(2)))
    print("# per minute of the gateway's log: kind of request, count, p50 and p90 (ms)")
    for minute in sorted({t for t, _ in times}):
        cells = []
        for _, _, kind in KINDS:
            v = sorted(times.get((minute, kind), []))
            if v:
                cells.append(f"{kind} {len(v)} {v[len(v) // 2]:.1f} {v[int(len(v) * 0.9)]:.1f}")
        print(f"{minute}  " + "; ".join(cells))


def clock(s):
    return datetime.datetime.strptime(s[:15], "%H:%M:%S.%f")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", required=True, help="the run's state folder")
    ap.add_argument("--samples", help="db_processes.py's TSV of the run (without it, no CPU figures)")
    ap.add_argument("--result", required=True, help="the run's result file (host names)")
    ap.add_argument("--from", dest="start", default="00:00:00", help="first time kept (UTC, HH:MM:SS)")
    ap.add_argument("--to", dest="end", default="23:59:59", help="last time kept (UTC, HH:MM:SS)")
    ap.add_argument("--minutes", action="store_true", help="also each minute's latency by kind")
    args = ap.parse_args()
    start, end = clock(args.start + ".0"), clock(args.end + ".0")

    hosts = json.load(open(args.result))["provenance"]["hosts"]
    # A host's CPU group is named after its address, as the lab names it (`stages/lab/src/lab.rs`,
    # `host-127-60-7-51`), which is how db_processes.py's lines say which host they are.
    group_of = {h["name"]: "host-" + h["address"].replace(".", "-") for h in hosts}
    cpu = collections.defaultdict(list)  # group -> [(time, autovacuum ms)]
    for line in open(args.samples) if args.samples else []:
        if not line.startswith("#"):
            t, group, av = line.split("\t")[:3]
            cpu[group].append((clock(t), float(av)))
    slow = []  # start times of the requests over SLOW_MS
    gateway_logs = glob.glob(f"{args.state}/*/gateway/gateway/gateway.log")
    for path in gateway_logs:
        for line in open(path):
            m = ACCESS.match(line)
            if m and float(m.group(2)) > SLOW_MS:
                slow.append(clock(m.group(1)) - datetime.timedelta(milliseconds=float(m.group(2))))

    def worker_cpu(group, a, b):
        return sum(ms for t, ms in cpu[group] if a < t <= b + datetime.timedelta(seconds=0.1))

    passes = []
    steps = collections.defaultdict(lambda: [0, 0.0])  # "analyze articles" -> [count, ms]
    for path in sorted(glob.glob(f"{args.state}/*/db-*/postgres/postgres.log")):
        host = path.split("/")[-3]
        by_pid = collections.defaultdict(list)
        for line in open(path):
            m = LOG_LINE.match(line)
            if m:
                by_pid[m.group(2)].append((clock(m.group(1)), f"{m.group(3)} {m.group(4)}"))
        for events in by_pid.values():
            first, last = events[0][0], events[-1][0]
            if not start <= first <= end:
                continue
            opened = first - datetime.timedelta(seconds=START_S)
            group = group_of.get(host)
            since = opened
            for t, step in events:
                steps[step][0] += 1
                steps[step][1] += worker_cpu(group, since, t)
                since = t + datetime.timedelta(seconds=0.1)
            stalled = sum(1 for s in slow if opened <= s <= last)
            passes.append((first, host, last, worker_cpu(group, opened, last), stalled,
                           ", ".join(step for _, step in events)))

    print(f"# pass: host, first and last table logged, worker CPU, requests over {SLOW_MS} ms begun"
          " from the worker's start to its last table, the steps")
    for first, host, last, ms, stalled, what in sorted(passes):
        print(f"{host}  {first:%H:%M:%S.%f}"[:-5] + f"  {last:%H:%M:%S.%f}"[:-5]
              + f"  {ms:6.1f} ms  {stalled:4d} slow  {what}")
    if passes:
        total = sum(p[3] for p in passes)
        print(f"# {len(passes)} passes, worker CPU {total:.0f} ms in all, {total / len(passes):.1f} ms"
              f" a pass; {sum(p[4] for p in passes)} slow requests begun in their windows,"
              f" {sum(1 for s in slow if start <= s <= end)} in all from {args.start} to {args.end}")
    print("# worker CPU by step, over the run: step, times, ms in all, ms each")
    for step, (n, ms) in sorted(steps.items(), key=lambda x: -x[1][1])[:12]:
        print(f"{step:40s} {n:4d} {ms:8.1f} {ms / n:6.1f}")
    if args.minutes:
        by_minute(gateway_logs)


if __name__ == "__main__":
    main()
