#!/usr/bin/env python3
"""What a lab database host's processes do, tenth of a second by tenth of a second: CPU time of
its autovacuum workers, of its client backends and of the rest, and how many backends wait on
a lock. Read from outside the host (`/proc` and the host's CPU group), so the host's budget
pays nothing; the machine pays about a tenth of a core (11.5 % of one by `ps`, noted in
stages/07-distributed/results/shards-4-write-heavy-200rps-passes-after.txt), so compare
latencies only between runs that both had it running.

    scripts/bench/db_processes.py --seconds 300 --out /tmp/db-processes.tsv

Run it beside a load run (`archlab bench ...`). It follows every lab host (`archlab/host-*`
CPU groups) that runs a `postgres` process, so it can start before the stage is up. Each line:

    time (UTC)  host group  autovacuum ms  backends ms  other ms  backends on CPU  waiting

CPU time is each process's time on a CPU (`/proc/PID/schedstat`, in nanoseconds: `stat`'s ticks
are 10 ms, too coarse for a tenth of a second). "Waiting" counts client backends whose process
title ends in ` waiting`, which PostgreSQL adds while a backend waits for a heavyweight lock
(`update_process_title`, on by default), such as the one `VACUUM` takes to truncate a table.

Why: stage 7's shards stalled in the seconds of their autovacuum passes
(stages/07-distributed/MEASUREMENTS.md, "What sets the knee"); this tells whether a stall is the pass
taking the host's CPU, the backends' own work growing after it, or backends waiting on a lock.
"""

import argparse
import glob
import os
import sys
import time

from common import LAB_CGROUP_ROOTS

# A sample every 20 ms, summed into lines of 100 ms: a stall of a few hundred milliseconds spans
# several lines, and 20 ms keeps a backend's short wait for a lock from falling between samples.
TICK_S = 0.02
LINE_S = 0.1
# Titles of PostgreSQL's own processes (`postgres: [cluster: ]checkpointer` and so on): every
# other `postgres:` process is a client backend.
AUXILIARY = ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
             "logical replication launcher", "walsender", "walreceiver", "startup",
             "archiver", "stats collector")


def kind(title):
    """'autovacuum', 'backend' or 'other' for a process title; None when not PostgreSQL's."""
    if not title.startswith("postgres:"):
        return None
    if "autovacuum worker" in title:
        return "autovacuum"
    rest = title[len("postgres:"):].strip()
    if any(rest.startswith(a) or (": " + a) in rest for a in AUXILIARY):
        return "other"
    return "backend"


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def sample(groups):
    """{group: [(pid, kind, cpu_ns, title)]} for every host group running PostgreSQL."""
    out = {}
    for group in groups:
        procs = read(os.path.join(group, "cgroup.procs"))
        if not procs:
            continue
        rows = []
        for pid in procs.split():
            cmd = read(f"/proc/{pid.decode()}/cmdline")
            sched = read(f"/proc/{pid.decode()}/schedstat")
            if cmd is None or sched is None:
                continue
            title = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
            # The postmaster keeps its command line (`/usr/lib/postgresql/15/bin/postgres -D ...`).
            if title.endswith("/postgres") or "/bin/postgres " in title:
                k = "other"
            else:
                k = kind(title)
            if k:
                rows.append((int(pid), k, int(sched.split()[0]), title))
        if rows:
            out[os.path.basename(group)] = rows
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, required=True, help="how long to sample")
    ap.add_argument("--out", required=True, help="the TSV file to write")
    args = ap.parse_args()
    deadline = time.monotonic() + args.seconds
    last = {}  # (group, pid) -> cpu_ns at the previous sample
    sums = {}  # group -> [autovacuum_ns, backend_ns, other_ns, {backends on CPU}, most waiting]
    primed = False  # the first sample only sets where every process's CPU time starts
    line_end = time.monotonic() + LINE_S
    with open(args.out, "w") as f:
        f.write("# time\thost group\tautovacuum ms\tbackends ms\tother ms\tbackends on CPU\twaiting\n")
        while time.monotonic() < deadline:
            groups = [g for root in LAB_CGROUP_ROOTS for g in glob.glob(os.path.join(root, "host-*"))]
            for group, rows in sample(groups).items():
                s = sums.setdefault(group, [0, 0, 0, set(), 0])
                waiting = 0
                for pid, k, ns, title in rows:
                    before = last.get((group, pid))
                    last[(group, pid)] = ns
                    # A process first seen now (a new backend, an autovacuum worker just
                    # forked) counts from its start: its whole CPU time is this line's.
                    delta = ns - before if before is not None else (ns if primed else 0)
                    s[{"autovacuum": 0, "backend": 1, "other": 2}[k]] += delta
                    if k == "backend" and delta > 0:
                        s[3].add(pid)
                    if k == "backend" and title.endswith(" waiting"):
                        waiting += 1
                s[4] = max(s[4], waiting)
            primed = True
            if time.monotonic() >= line_end:
                now = time.time()
                stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 10) % 10}"
                for group, s in sorted(sums.items()):
                    f.write(f"{stamp}\t{group}\t{s[0] / 1e6:.1f}\t{s[1] / 1e6:.1f}\t{s[2] / 1e6:.1f}"
                            f"\t{len(s[3])}\t{s[4]}\n")
                f.flush()
                sums = {}
                line_end += LINE_S
            time.sleep(TICK_S)
    print(f"written: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
