#!/usr/bin/env python3
"""What an overload leaves behind: the same rate before and after a spell above capacity, on one
stage that stays up, with each phase's latency, database CPU per request, CPU throttling and the
database sessions opened.

Why: stage 7's capacity sweeps failed late the rates they had passed early (four shards: 200
req/s met at p99 70 ms first, missed at 152 and 292 ms after the overloaded steps;
stages/07-distributed/README.md). So the question is what the overloaded steps change that
outlives them.

    scripts/bench/after_overload.py --stage 7 --shards 4 --budget db=0.1 --budget app=0.3 \\
        --without edge --phases 200:90,320:30,200:90,200:90 --out RESULT.json

(on a machine 1.4 to 2 times slower, 2026-12-07: 100 and 190 or 300 req/s; stage 7's walkthrough)

What it does, in order, with the release binaries, on its own state folder and network:
  1. `archlab bench STAGE ... --rate R1 --duration 10s --keep-up` (fresh, seeded, budgets applied:
     the stage as a capacity run measures it), left up;
  2. for each phase `RATE:SECONDS`, one run of the harness (`loadtest`, open loop, the same
     workload and users; writes not read back). It first reads the data set and logs its users
     in; the phase's figures count from the moment it announces its open loop to its end:
     the harness's latency and errors; each database host's CPU (its processes' time on a CPU,
     reaped children included, as `archlab` reads it), its CPU group's throttled periods, and
     PostgreSQL's `pg_stat_database` counters (sessions opened, commits, rollbacks) on each;
     the app hosts' CPU too;
  3. `archlab down`, and a JSON result plus a table.

Nothing else should run meanwhile: a phase's figures are the machine's as much as the stage's.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

from common import (ROOT, git_state, group_cpu_seconds, host_group, pg_bin, psql, run,
                    run_harness, version, write_result)


def group_throttled(group):
    """(periods, throttled periods) of the group's CPU budget so far."""
    stat = {}
    try:
        for line in open(os.path.join(group, "cpu.stat")):
            key, value = line.split()
            stat[key] = int(value)
    except OSError:
        pass
    return stat.get("nr_periods", 0), stat.get("nr_throttled", 0)


def front(services):
    """Where the harness sends its requests: the first edge PoP that answers, else the gateway,
    else an app host, the order the lab's `Stage::endpoint` picks in. Not the `endpoint` that
    `archlab status` reports: status reads the stage as its layout records it, which does not
    say that the bench left a role out (`--without edge`)."""
    for role in ("edge", "gateway", "app"):
        for s in services:
            if s["role"] == role and s["healthy"]:
                return f"http://{s['address']}:{s['port']}"
    sys.exit("no edge, gateway or app host answers: nothing to load")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="7")
    ap.add_argument("--shards", type=int, default=None, help="stage 7 on: database shards")
    ap.add_argument("--budget", action="append", default=[], help="as `archlab bench --budget`, repeatable")
    ap.add_argument("--without", action="append", default=[], help="as `archlab bench --without`, repeatable")
    ap.add_argument("--workload", default="write-heavy")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--phases", default="200:90,320:30,200:90,200:90",
                    help="RATE:SECONDS,... one harness run each (default: 90 s below the knee, 30 s above "
                         "it, then twice 90 s at the first rate)")
    ap.add_argument("--net", default="62", help="second octet of the lab's loopback network (default 62)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    phases = [(float(r), int(s)) for r, s in (p.split(":") for p in args.phases.split(","))]

    archlab_bin = os.path.join(ROOT, "target/release/archlab")
    loadtest_bin = os.path.join(ROOT, "target/release/loadtest")
    for b in (archlab_bin, loadtest_bin):
        if not os.path.exists(b):
            sys.exit("build first: cargo build --release --locked")
    checkout = git_state()
    state = tempfile.mkdtemp(prefix="archlab-overload-")
    os.chmod(state, 0o755)  # PostgreSQL runs as the postgres user when we are root

    def archlab(*a):
        return run([archlab_bin, "--state-dir", state, "--net", args.net, *a])

    bench = ["bench", args.stage, "--workload", args.workload, "--users", str(args.users),
             "--rate", str(phases[0][0]), "--duration", "10s", "--keep-up",
             "--out", os.path.join(state, "bench.json")]
    if args.shards:
        bench += ["--shards", str(args.shards)]
    for b in args.budget:
        bench += ["--budget", b]
    for w in args.without:
        bench += ["--without", w]
    results = []
    try:
        print(f"bringing stage {args.stage} up with `archlab {' '.join(bench)}` ...", flush=True)
        archlab(*bench)
        services = json.loads(archlab("status", "--json"))["services"]
        endpoint = front(services)
        databases = [s for s in services if s["role"] == "database"]
        apps = [s for s in services if s["role"] == "app"]

        def counters():
            out = {}
            for s in databases + apps:
                group = host_group(s["address"])
                entry = {"cpu_s": group_cpu_seconds(group) if group else 0.0}
                entry["periods"], entry["throttled"] = group_throttled(group) if group else (0, 0)
                if s["role"] == "database":
                    row = psql(s, "SELECT sessions, xact_commit, xact_rollback, sessions_abandoned "
                                 "FROM pg_stat_database WHERE datname = 'conduit'").split("|")
                    entry.update(zip(("sessions", "commits", "rollbacks", "abandoned"), map(int, row)))
                out[s["host"]] = entry
            return out

        for n, (rate, seconds) in enumerate(phases, 1):
            out = os.path.join(state, f"phase-{n}.json")
            cmd = [loadtest_bin, "--target", endpoint, "--workload", args.workload, "--rate", str(rate),
                   "--users", str(args.users), "--duration", f"{seconds}s", "--warmup", "0s",
                   "--no-verify", "--out", out]
            print(f"phase {n}: {rate:g} req/s for {seconds} s ...", flush=True)
            start = {}
            run_harness(cmd, when_loading=lambda: start.update(counters()))
            end = counters()
            report = json.load(open(out))
            ok = report["counts"]["ok"]
            delta = {h: {k: end[h][k] - start[h][k] for k in end[h]} for h in end}
            db_cpu = sum(delta[d["host"]]["cpu_s"] for d in databases)
            results.append({
                "phase": n,
                "rate_rps": rate,
                "seconds": seconds,
                "throughput_rps": report["throughput_rps"],
                "ok": ok,
                "failed": report["counts"]["failed"],
                "unknown": report["counts"]["unknown"],
                "p50_ms": report["latency_ms"]["corrected"]["p50"],
                "p99_ms": report["latency_ms"]["corrected"]["p99"],
                "database_cpu_ms_per_ok_request": round(1000 * db_cpu / ok, 3) if ok else None,
                "hosts": {h: {**{k: v for k, v in d.items() if k not in ("periods", "throttled", "cpu_s")},
                              "cpu_s": round(d["cpu_s"], 2),
                              "throttled_share": round(d["throttled"] / d["periods"], 3) if d["periods"] else None}
                          for h, d in delta.items()},
            })
            r = results[-1]
            print(f"  {r['throughput_rps']:.0f} ok/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, failed {r['failed']}, "
                  f"unknown {r['unknown']}; database CPU {r['database_cpu_ms_per_ok_request']} ms a request; "
                  f"sessions opened {sum(r['hosts'][d['host']]['sessions'] for d in databases)}, "
                  f"rollbacks {sum(r['hosts'][d['host']]['rollbacks'] for d in databases)}", flush=True)
    finally:
        subprocess.run([archlab_bin, "--state-dir", state, "--net", args.net, "down"], capture_output=True)
        subprocess.run(["rm", "-rf", state])

    result = {
        "benchmark": f"stage {args.stage}: the same rate before and after an overload ({args.workload} mix, open loop)",
        "stage": int(args.stage),
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["scripts/bench/after_overload.py"] + sys.argv[1:]),
        "settings": {"phases": args.phases, "workload": args.workload, "users": args.users,
                     "shards": args.shards, "budgets": args.budget, "without": args.without},
        "phases": results,
        "provenance": {**checkout, "loadtest": version([loadtest_bin, "--version"]),
                       "postgres": version([pg_bin("postgres"), "--version"])},
    }
    write_result(args.out, result)
    print("| phase | rate | ok/s | p50 ms | p99 ms | failed / unknown | db CPU ms/request | sessions opened | rollbacks |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        dbs = [h for h in r["hosts"] if "sessions" in r["hosts"][h]]
        print(f"| {r['phase']} | {r['rate_rps']:g} | {r['throughput_rps']:.0f} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['failed']} / {r['unknown']} | {r['database_cpu_ms_per_ok_request']} | "
              f"{sum(r['hosts'][h]['sessions'] for h in dbs)} | {sum(r['hosts'][h]['rollbacks'] for h in dbs)} |")


if __name__ == "__main__":
    main()
