#!/usr/bin/env python3
"""Database cost per operation: what PostgreSQL spends on each request of a mix, statement by
statement and database host by database host, from `pg_stat_statements`.

    scripts/bench/db_cost.py [--rate 100] [--duration 60] [--net 240] [--out FILE]
    ARCHLAB_CONDUIT_BIN=/tmp/before/conduit scripts/bench/db_cost.py --out stages/02-split/results/db-cost-before.json
    scripts/bench/db_cost.py --out stages/02-split/results/db-cost-after.json
    scripts/bench/db_cost.py --stage 7 --up-arg=--shards=2 --workload write-heavy --rate 60 \
        --out stages/07-distributed/results/db-cost-2-shards.json     # per shard

What it does, in order, on a fresh lab (own state folder, own loopback network):
  1. `archlab up STAGE --fresh` with the release binaries (by default stage 2: app host and
     database host, no cache, so every read reaches the database; `--up-arg` adds options such as
     stage 7's `--shards`), then `archlab seed` (1,000 users, 10,000 articles);
  2. a warm-up run of the harness (`loadtest`, open loop, read-heavy, same rate; writes verified),
     so the pool, prepared statements and PostgreSQL's buffers are warm;
  3. `pg_stat_statements_reset()` on every database host (a primary, or each shard's), then the
     measured run (open loop at a fixed rate, so the
     "before" and "after" apps get the same requests; no warm-up and no read-back inside it).
     The harness first reads the data set through the API and logs its users in, which is not
     the load: the statements are counted from the moment it announces its open loop (a snapshot
     of `pg_stat_statements` then, subtracted from the one at the end), so every statement
     counted was caused by a request counted, or by the app's own timers (below);
  4. reads `pg_stat_statements` for the app's database and role on each database host, and
     writes a JSON result: database execution time per request served (in all, and per host),
     each database host's CPU per request over the same window (its CPU group's processes, the
     backends the postmaster reaped included: `common.group_cpu_seconds`), and the top statements
     with their host, calls per request, mean and total execution time, and share of the total.
     Execution is what each statement costs inside PostgreSQL; the host's CPU is everything the
     host spends (parsing, planning, the protocol, commits, its background processes), which is
     what its budget limits.

`ARCHLAB_CONDUIT_BIN` picks the app binary (the lab's default: `target/release/conduit`), so a
"before" run can measure an older build; `--app-commit` records which commit that build is. The
lab takes the gateway and the edge from the same folder, so copy this build's beside it
(`cp target/release/{conduit,gateway,edge} /tmp/before/` before rebuilding).

What is left out, and why: the harness's start (reading the data set, 100 articles a page up to
20,000, and logging its users in) is not counted; until 2026-12-07 it was, which put about 4,000
login statements (`--users 1000`) and the data set's deep pages in the figures, the latter dearer
on a sharded stage (each shard reads `offset + limit` keys). What is in, and is not a request's:
the app's timers, whose statements count per second rather than per request (a shard's watch
polls its primary's WAL position four times a second from each app host; the two-phase commit's
recovery worker scans for prepared transactions): the result lists them with the rest, so read
their calls per request at the run's rate only. `pg_stat_statements` counts execution time only
(not planning, parsing or network time). Requests served counts every answered request, errors included; the
result also records the failures, which should be none.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from common import (ROOT, git_state, group_cpu_seconds, host_group, psql, run, run_harness, users_at_home,
                    version, write_result, pg_bin)




def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0,
                    help="offered requests/s, open loop (default 100: about a third of what stage 2's database "
                         "host, 0.2 core, serves with the app of issue 10's start, so statements are timed "
                         "at work rather than queued behind a throttled CPU)")
    ap.add_argument("--duration", type=int, default=60, help="measured seconds (default 60)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up seconds before the reset (default 10)")
    ap.add_argument("--net", default="240", help="second octet of the lab's loopback network (default 240)")
    ap.add_argument("--workload", default="read-heavy", help="harness workload (default read-heavy)")
    ap.add_argument("--stage", default="2", help="stage to measure (default 2: no cache, every read reaches the database)")
    ap.add_argument("--up-arg", action="append", default=[],
                    help="an option for `archlab up`, repeatable (`--up-arg=--shards=4`; `archlab up` takes no budgets: the stage runs at its stage file's sizes)")
    ap.add_argument("--app-commit", default=None,
                    help="commit the app binary was built from (default: this checkout's, when ARCHLAB_CONDUIT_BIN is unset)")
    ap.add_argument("--users", type=int, default=32,
                    help="seeded users the harness logs in as and writes for (default 32, the harness's own "
                         "default; more spread a sharded stage's writes more evenly)")
    ap.add_argument("--top", type=int, default=15,
                    help="statements listed in the result (default 15: the read-heavy mix runs about 25 distinct "
                         "ones; a sharded stage runs each on every shard)")
    ap.add_argument("--out", default=os.path.join(ROOT, "report/02-split-db-cost.json"), help="result file")
    args = ap.parse_args()

    archlab_bin = os.path.join(ROOT, "target/release/archlab")
    loadtest_bin = os.path.join(ROOT, "target/release/loadtest")
    for b in (archlab_bin, loadtest_bin):
        if not os.path.exists(b):
            sys.exit("build first: cargo build --release --workspace")
    app_bin = os.environ.get("ARCHLAB_CONDUIT_BIN", os.path.join(ROOT, "target/release/conduit"))
    # The checkout as the run starts: what the binaries were built from (a commit landing during
    # the run must not be recorded as the one measured).
    checkout = git_state()
    app_commit = args.app_commit
    if app_commit is None:
        if "ARCHLAB_CONDUIT_BIN" in os.environ:
            sys.exit("ARCHLAB_CONDUIT_BIN is set: say which commit it was built from with --app-commit")
        app_commit = checkout["git_commit"]

    state = tempfile.mkdtemp(prefix="archlab-dbcost-")
    os.chmod(state, 0o755)  # PostgreSQL runs as the postgres user when we are root

    def archlab(*a):
        return run([archlab_bin, "--state-dir", state, "--net", args.net, *a])

    def harness(endpoint, seconds, out, verify, when_loading=None):
        """The harness at the run's rate (`common.run_harness`: `when_loading` at its open loop)."""
        cmd = [loadtest_bin, "--target", endpoint, "--workload", args.workload, "--rate", str(args.rate), "--users", str(args.users),
               "--duration", f"{seconds}s", "--warmup", "0s", "--out", out]
        if not verify:
            cmd.append("--no-verify")
        run_harness(cmd, when_loading)
        with open(out) as f:
            return json.load(f)

    try:
        print(f"bringing stage {args.stage} up (fresh) with {app_bin} ...", flush=True)
        up = archlab("up", args.stage, "--fresh", *args.up_arg)
        endpoint = up.strip().splitlines()[-1].removeprefix("endpoint: ")
        print("seeding ...", flush=True)
        archlab("seed", args.stage)
        status = json.loads(archlab("status", "--json"))
        databases = [s for s in status["services"] if s["role"] == "database"]


        for db in databases:
            # The lab creates the extension with the database; this covers a lab from before that.
            psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            if "pg_stat_statements" not in psql(db, "SHOW shared_preload_libraries"):
                sys.exit("pg_stat_statements is not loaded: the lab's PostgreSQL must preload it")
        counts = [0, 0]
        at_home = users_at_home(len(databases))
        for db in databases:
            on_host = psql(db, f"SELECT (SELECT count(*) FROM users {at_home}) || ' ' || (SELECT count(*) FROM articles)").split()
            counts = [c + int(n) for c, n in zip(counts, on_host)]

        print(f"warm-up: {args.workload} at {args.rate:g}/s for {args.warmup} s ...", flush=True)
        warm = harness(endpoint, args.warmup, os.path.join(state, "warmup.json"), verify=True)
        if warm["checks"]["lost_writes"]:
            sys.exit(f"the warm-up lost writes: {warm['checks']}")

        def counters():
            """Every statement's counters on every database host, by (host, queryid)."""
            found = {}
            for db in databases:
                rows = psql(db, """
                    SELECT json_agg(s) FROM (
                        SELECT queryid, regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, rows,
                               total_exec_time, shared_blks_hit, shared_blks_read
                        FROM pg_stat_statements
                        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'conduit')
                          AND userid = (SELECT oid FROM pg_roles WHERE rolname = 'conduit')
                    ) s""")
                for s in json.loads(rows) or []:
                    found[(db["host"], s["queryid"])] = {**s, "host": db["host"]}
            return found

        for db in databases:
            psql(db, "SELECT pg_stat_statements_reset()")
        print(f"measuring: {args.workload} at {args.rate:g}/s for {args.duration} s ...", flush=True)
        # Each database host's CPU over the same window, read from its CPU group: what the host
        # spends in all (its backends' parsing, planning, execution and commits, and its own
        # background processes), where `pg_stat_statements` sees execution only. Read after the
        # statements at the start and before them at the end, so the reads' own psql sessions
        # fall outside it.
        groups = {db["host"]: host_group(db["address"]) for db in databases}
        at_start, cpu_at_start = {}, {}

        def at_open_loop():
            at_start.update(counters())
            cpu_at_start.update({h: group_cpu_seconds(g) for h, g in groups.items() if g})
            cpu_at_start["at"] = time.monotonic()

        measured = harness(endpoint, args.duration, os.path.join(state, "measured.json"), verify=False,
                           when_loading=at_open_loop)
        cpu_used = {h: group_cpu_seconds(g) - cpu_at_start[h] for h, g in groups.items() if g}
        window_s = time.monotonic() - cpu_at_start["at"]
        statements = []
        for key, end in counters().items():
            start = at_start.get(key, {})
            s = {**end, **{k: end[k] - start.get(k, 0) for k in
                           ("calls", "rows", "total_exec_time", "shared_blks_hit", "shared_blks_read")}}
            if s["calls"] > 0:
                s["mean_exec_time"] = s["total_exec_time"] / s["calls"]
                statements.append(s)
        statements.sort(key=lambda s: s["total_exec_time"], reverse=True)
    finally:
        subprocess.run([archlab_bin, "--state-dir", state, "--net", args.net, "down"], capture_output=True)
        subprocess.run(["rm", "-rf", state])

    c = measured["counts"]
    served = c["ok"] + c["failed"]
    kept_up = measured["throughput_rps"] >= 0.95 * args.rate
    if not kept_up:
        print(f"warning: served {measured['throughput_rps']:.0f}/s of {args.rate:g}/s offered: the stage was "
              "overloaded, so execution times include waiting for the database host's CPU", file=sys.stderr)
    total_ms = sum(s["total_exec_time"] for s in statements)
    per_database = {
        db["host"]: {
            "db_calls_per_request": round(sum(s["calls"] for s in statements if s["host"] == db["host"]) / served, 3),
            "db_exec_ms_per_request": round(
                sum(s["total_exec_time"] for s in statements if s["host"] == db["host"]) / served, 4),
            **({"host_cpu_ms_per_request": round(cpu_used[db["host"]] * 1000 / served, 3),
                "host_cores": round(cpu_used[db["host"]] / window_s, 4)} if db["host"] in cpu_used else {}),
        }
        for db in databases
    }
    top = [{
        "host": s["host"],
        "query": s["query"].strip(),
        "calls": s["calls"],
        "calls_per_request": round(s["calls"] / served, 4),
        "rows_per_call": round(s["rows"] / s["calls"], 2) if s["calls"] else 0,
        "mean_exec_ms": round(s["mean_exec_time"], 4),
        "total_exec_ms": round(s["total_exec_time"], 1),
        "exec_ms_per_request": round(s["total_exec_time"] / served, 4),
        "share_of_total": round(s["total_exec_time"] / total_ms, 4) if total_ms else 0,
        "shared_blocks_hit_per_call": round(s["shared_blks_hit"] / s["calls"], 1) if s["calls"] else 0,
        "shared_blocks_read": s["shared_blks_read"],
    } for s in statements[:args.top]]

    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    result = {
        "benchmark": f"database cost per request (pg_stat_statements), stage {args.stage}, {args.workload} mix, open loop",
        "stage": int(args.stage),
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ([f"ARCHLAB_CONDUIT_BIN={os.environ['ARCHLAB_CONDUIT_BIN']}"] if "ARCHLAB_CONDUIT_BIN" in os.environ else [])
            + ["scripts/bench/db_cost.py"] + sys.argv[1:]),
        "settings": {
            "workload": args.workload,
            "harness_users": args.users,
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "load_generator": "loadtest (open loop, coordinated-omission corrected), 64 connections",
            "data_set": {"users": counts[0], "articles": counts[1], "seed": 42},
            "up_options": args.up_arg,
            "pg_stat_statements": "track = top; reset after seeding and warm-up, counted from the harness's open loop to its end (its data set read and logins left out); execution time only (no planning)",
        },
        "results": {
            "requests_served": served,
            "requests_ok": c["ok"],
            "requests_failed": c["failed"],
            "requests_unknown": c["unknown"],
            "throughput_rps": measured["throughput_rps"],
            "kept_up_with_offered_rate": kept_up,
            "latency_p50_ms": measured["latency_ms"]["corrected"]["p50"],
            "latency_p99_ms": measured["latency_ms"]["corrected"]["p99"],
            "statements_total": len(statements),
            "db_calls_per_request": round(sum(s["calls"] for s in statements) / served, 3),
            "db_exec_ms_total": round(total_ms, 1),
            "db_exec_ms_per_request": round(total_ms / served, 4),
            "db_host_cpu_ms_per_request": (round(sum(cpu_used.values()) * 1000 / served, 3)
                                           if len(cpu_used) == len(databases) else None),
            "cpu_window_s": round(window_s, 1),
            "per_database": per_database,
            "top_statements": top,
        },
        "provenance": {
            **checkout,
            "app_binary": app_bin,
            "app_commit": app_commit,
            "cpu_model": cpu_model,
            "cores": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}",
            "distribution": next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME=")), "unknown"),
            "postgres": version([pg_bin("postgres"), "--version"]),
            "loadtest": version([loadtest_bin, "--version"]),
            "app_build": "cargo --release",
        },
    }
    write_result(args.out, result)

    r = result["results"]
    print()
    print(f"{r['requests_served']} requests served, {r['db_exec_ms_per_request']:.3f} ms of database execution per request, "
          f"{r['db_calls_per_request']:.2f} statements per request")
    if r["db_host_cpu_ms_per_request"] is not None:
        print(f"{r['db_host_cpu_ms_per_request']:.3f} ms of the database hosts' CPU per request, in all")
    for host, cost in per_database.items():
        print(f"  {host}: {cost['db_exec_ms_per_request']:.3f} ms, {cost['db_calls_per_request']:.2f} statements per request"
              + (f", {cost['host_cpu_ms_per_request']:.3f} ms of host CPU ({cost['host_cores']:.3f} core)"
                 if "host_cpu_ms_per_request" in cost else ""))
    print("| share | host | calls/req | mean ms | statement |")
    print("|---:|---|---:|---:|---|")
    for s in top[:8]:
        print(f"| {s['share_of_total']:.1%} | {s['host']} | {s['calls_per_request']:.3f} | {s['mean_exec_ms']:.3f} | {s['query'][:100]} |")


if __name__ == "__main__":
    main()
