#!/usr/bin/env python3
"""idle_database_cpu.py: the database hosts' CPU on an idle stage 7 (no load at all), with four
shards and with one: what the timers cost by the second.

    python3 scripts/bench/idle_database_cpu.py > stages/07-distributed/results/idle-database-cpu.txt

What: for each shard count, `archlab up 7 --shards N --fresh` with the release binaries (own
state folder, network 127.61.x.x), 20 s to settle, then the CPU of every process in each
database host's CPU group, reaped children included (`common.group_cpu_seconds`), 60 s apart;
then `archlab down`.
Why: each app host asks each shard's primary its WAL position four times a second
(services/conduit/src/db/watch.rs) and the two-phase recovery worker scans each shard, a cost
by the second rather than by the request; the shard sweeps' database CPU a request includes it.
"""
import os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, group_cpu_seconds, host_group, own_stage, run

NET = "61"
SETTLE_S = 20
WINDOW_S = 60


def main():
    commit = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).strip()
    print(f"# scripts/bench/idle_database_cpu.py at {commit}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} cores", flush=True)
    for shards in (4, 1):
        print(f"== shards {shards}: archlab --net {NET} up 7 --shards {shards} --fresh", flush=True)
        with own_stage(7, ["--shards", str(shards)], NET, "archlab-idle-") as (_, databases):
            time.sleep(SETTLE_S)
            groups = {s["host"]: host_group(s["address"]) for s in databases}
            before = {h: group_cpu_seconds(g) for h, g in groups.items()}
            start = time.monotonic()
            time.sleep(WINDOW_S)
            seconds = time.monotonic() - start
            for host, group in groups.items():
                used = group_cpu_seconds(group) - before[host]
                print(f"  {host}: {used * 1000 / seconds:.1f} ms of CPU a second", flush=True)


if __name__ == "__main__":
    main()
