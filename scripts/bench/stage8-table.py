#!/usr/bin/env python3
"""The table of one set of stage 8 drills (scripts/bench/stage8-drills.sh), in Markdown, from its
result files: one row per drill, its trials summed or given as a range.

    python3 scripts/bench/stage8-table.py stages/08-consensus/results/set-772a6f9 [FOR_DIR]

Links are relative to FOR_DIR, the folder of the page the table goes in (default: the stage's
folder, two above the set's).

Times are from the fault (each file's `drill.injected_at_s`). "Without writes" is the drill's own
`failover.writes_unavailable_s`: from the fault to the probe's first acknowledged write.
"""

import glob
import json
import os
import re
import sys

# What each drill of the set is, in the order the script runs them.
DRILLS = [
    ("crash-etcd-async", "primary's host crashed", "etcd", "async"),
    ("crash-zookeeper-async", "primary's host crashed", "ZooKeeper", "async"),
    ("crash-etcd-sync", "primary's host crashed", "etcd", "sync"),
    ("crash-etcd-sync-strict-three-hosts", "primary's host crashed, three database hosts", "etcd", "sync strict"),
    ("freeze-etcd-async", "primary frozen", "etcd", "async"),
    ("isolate-etcd-async", "primary isolated", "etcd", "async"),
    ("partition-etcd-async", "primary partitioned", "etcd", "async"),
    ("partition-etcd-sync", "primary partitioned", "etcd", "sync"),
    ("partition-etcd-sync-strict", "primary partitioned", "etcd", "sync strict"),
    ("partition-zookeeper-async", "primary partitioned", "ZooKeeper", "async"),
    ("switchover-etcd", "planned switchover", "etcd", "async"),
    ("store-leader-kill-etcd", "the store's leader killed", "etcd", "async"),
    ("store-leader-kill-zookeeper", "the store's leader killed", "ZooKeeper", "async"),
]


def since_fault(value, fault):
    return None if value is None else value - fault


def span(values, unit=" s"):
    """`a` or `a to b`, one decimal; `none` when no trial had it."""
    values = [v for v in values if v is not None]
    if not values:
        return "none"
    low, high = min(values), max(values)
    if abs(high - low) < 0.05:
        return f"{low:.1f}{unit}"
    return f"{low:.1f} to {high:.1f}{unit}"


def row(folder, base, name, what, store, mode):
    files = sorted(
        f
        for f in glob.glob(os.path.join(folder, f"{name}*.json"))
        if re.fullmatch(rf"{re.escape(name)}(-\d\d)?\.json", os.path.basename(f))
    )
    if not files:
        return None
    keys, gaps, lost, acked, failed, unknown, sent = [], [], 0, 0, 0, 0, 0
    registers = [0, 0, 0]
    timelines = set()
    for path in files:
        with open(path) as f:
            report = json.load(f)
        drill = report["drill"]
        failover = drill.get("failover") or {}
        fault = drill["injected_at_s"]
        keys.append(since_fault(failover.get("leader_key_at_s"), fault))
        gaps.append(failover.get("writes_unavailable_s"))
        checks = report.get("checks") or {}
        lost += checks.get("lost_writes", 0)
        acked += checks.get("acknowledged_writes", 0)
        counts = report["counts"]
        failed += counts["failed"]
        unknown += counts["unknown"]
        sent += counts["sent"]
        lin = failover.get("linearizability") or {}
        registers[0] += lin.get("linearizable_keys", 0)
        registers[1] += lin.get("violating_keys", 0)
        registers[2] += lin.get("undecided_keys", 0)
        timelines.add(f"{failover.get('timeline_before')} -> {failover.get('timeline_after')}")
    target = files[0] if len(files) == 1 else os.path.join(folder, f"{name}-trials.md")
    link = os.path.relpath(target, base)
    trials = len(files)
    return (
        f"| [{what}]({link}) | {store} | {mode} | {trials} | {span(keys)} | {span(gaps)} "
        f"| {failed:,} / {unknown:,} of {sent:,} | **{lost}** of {acked:,} "
        f"| {registers[0]} / {registers[1]} / {registers[2]} | {', '.join(sorted(timelines))} |"
    )


def main():
    folder = sys.argv[1]
    base = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.dirname(os.path.normpath(folder)))
    print(
        "| drill | store | replication | trials | key taken | without writes "
        "| failed / unknown of sent | acknowledged writes lost "
        "| registers linearizable / not / undecided | timeline |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for drill in DRILLS:
        line = row(folder, base, *drill)
        if line:
            print(line)


if __name__ == "__main__":
    main()
