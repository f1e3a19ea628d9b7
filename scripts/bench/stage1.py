#!/usr/bin/env python3
"""Stage 1 read benchmark: the app against PostgreSQL's own ceiling, measured in one run.

    scripts/bench/stage1.py [--duration 15] [--connections 64] [--out FILE]
    scripts/bench/stage1.py --out stages/01-monolith/results/read-baseline.json   # refresh the committed result

What it does, in order, on a fresh lab (own state folder, own loopback network):
  1. `archlab up 1 --fresh` with the release binaries, then `archlab seed` (1,000 users, 10,000 articles);
  2. wrk, 64 connections, 2 threads: GET /api/articles/{slug} over every seeded slug (uniform);
  3. wrk, same settings: GET /api/articles?limit=20 (the global list, first page);
  4. pgbench -S (select-only, scale 10) with 64 clients against the same PostgreSQL server;
  5. writes a JSON result with provenance (commit, machine, versions, settings) and prints a table.

This compares software with software, so nothing runs in a CPU budget: the lab is started with
ARCHLAB_BUDGETS=off (the box would otherwise get its 0.2-core size while pgbench had the whole
machine), and wrk, the app, PostgreSQL and pgbench share this machine's two cores; the result
says so. wrk is the load generator here (closed loop, latency not coordinated-omission
corrected): the ratio needs the highest throughput, not a latency at a rate.
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile

from common import ROOT, git_state, run, version, write_result, pg_bin

NET = "230"  # a loopback network of its own, so a developer's lab on the default net is untouched



def parse_wrk(text):
    """Requests/s and latency percentiles (ms) from `wrk --latency` output."""
    def ms(value):
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    out = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    for p in ("50", "90", "99"):
        out[f"latency_p{p}_ms"] = ms(re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", text, re.M).group(1))
    out["requests"] = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["non_2xx"] = int(errors.group(1)) if errors else 0
    out["socket_errors"] = sum(int(g) for g in socket.groups()) if socket else 0
    return out


def wrk(url, args, env=None, script=None):
    cmd = ["wrk", "--latency", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s"]
    if script:
        cmd += ["-s", script]
    text = run(cmd + [url], env={**os.environ, **(env or {})})
    result = parse_wrk(text)
    if result["non_2xx"] or result["socket_errors"]:
        sys.exit(f"errors during the run against {url}:\n{text}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=15, help="seconds per measurement (default 15)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections and pgbench clients (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads and pgbench threads (default 2)")
    ap.add_argument("--out", default=os.path.join(ROOT, "report/01-monolith-read-baseline.json"),
                    help="result file (the committed one is stages/01-monolith/results/read-baseline.json)")
    args = ap.parse_args()

    archlab_bin = os.path.join(ROOT, "target/release/archlab")
    if not os.path.exists(archlab_bin):
        sys.exit("build first: cargo build --release")
    state = tempfile.mkdtemp(prefix="archlab-bench-")
    os.chmod(state, 0o755)  # PostgreSQL runs as the postgres user when we are root

    def archlab(*a):
        return run([archlab_bin, "--state-dir", state, "--net", NET, *a],
                   env={**os.environ, "ARCHLAB_BUDGETS": "off"})

    try:
        print("bringing stage 1 up (fresh) ...", flush=True)
        up = archlab("up", "1", "--fresh")
        endpoint = up.strip().splitlines()[-1].removeprefix("endpoint: ")
        print("seeding ...", flush=True)
        seed = archlab("seed", "1")
        db_host = endpoint.split("//")[1].split(":")[0]
        psql = [pg_bin("psql"), "-h", db_host, "-p", "5432", "-U", "postgres", "-At"]
        slugs = run(psql + ["-d", "conduit", "-c", "SELECT '/api/articles/' || slug FROM articles"]).split()
        counts = run(psql + ["-d", "conduit", "-c", "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM articles)"]).split()
        paths_file = os.path.join(state, "article-paths.txt")
        with open(paths_file, "w") as f:
            f.write("\n".join(slugs) + "\n")

        # Warm both paths (caches, prepared statements, pool) before measuring.
        warm = argparse.Namespace(**{**vars(args), "duration": 3})
        wrk(endpoint, warm, {"PATHS_FILE": paths_file}, os.path.join(ROOT, "scripts/bench/random_path.lua"))
        wrk(f"{endpoint}/api/articles?limit=20", warm)

        print(f"wrk: GET /api/articles/{{slug}} ({len(slugs)} slugs) ...", flush=True)
        single = wrk(endpoint, args, {"PATHS_FILE": paths_file}, os.path.join(ROOT, "scripts/bench/random_path.lua"))
        print("wrk: GET /api/articles?limit=20 ...", flush=True)
        page = wrk(f"{endpoint}/api/articles?limit=20", args)

        print("pgbench -S ...", flush=True)
        pgbench = [pg_bin("pgbench"), "-h", db_host, "-p", "5432", "-U", "postgres"]
        run(psql + ["-d", "postgres", "-c", "DROP DATABASE IF EXISTS pgbench"])
        run(psql + ["-d", "postgres", "-c", "CREATE DATABASE pgbench"])
        run(pgbench + ["-i", "-s", "10", "-q", "pgbench"])
        pg_text = run(pgbench + ["-S", "-c", str(args.connections), "-j", str(args.threads), "-T", str(args.duration), "pgbench"])
        tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", pg_text).group(1))
        pg_latency = float(re.search(r"latency average = ([\d.]+) ms", pg_text).group(1))
        run(psql + ["-d", "postgres", "-c", "DROP DATABASE pgbench"])
    finally:
        subprocess.run([archlab_bin, "--state-dir", state, "--net", NET, "down"], capture_output=True)
        subprocess.run(["rm", "-rf", state])

    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    result = {
        "benchmark": "stage 1 read baseline: app vs pgbench -S on the same PostgreSQL",
        "stage": 1,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "scripts/bench/stage1.py " + " ".join(sys.argv[1:]),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "load_generator": "wrk (closed loop; latency not coordinated-omission corrected)",
            "data_set": {"users": int(counts[0]), "articles": int(counts[1]), "seed": 42},
            "pgbench": "select-only (-S), scale 10, simple protocol",
        },
        "results": {
            "get_article": single,
            "list_articles_limit_20": page,
            "pgbench_select_only": {"tps": tps, "latency_avg_ms": pg_latency},
            "ratio_get_article_to_pgbench": round(single["requests_per_s"] / tps, 3),
            "ratio_list_to_pgbench": round(page["requests_per_s"] / tps, 3),
        },
        "queries_per_request": {"get_article": 1, "list_articles": 2},
        "provenance": {
            **git_state(),
            "cpu_model": cpu_model,
            "cores": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}",
            "distribution": next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME=")), "unknown"),
            "postgres": version([pg_bin("postgres"), "--version"]),
            "wrk": version(["wrk", "-v"]),
            "app_build": "cargo --release",
            "cpu_budgets_enforced": False,
            "note": "ARCHLAB_BUDGETS=off: app, PostgreSQL, wrk and pgbench share all cores, none in a CPU budget",
        },
    }
    write_result(args.out, result)

    r = result["results"]
    print()
    print(f"| measurement (64 connections, {args.duration} s) | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    print(f"| GET /api/articles/{{slug}} | {single['requests_per_s']:.0f} | {single['latency_p50_ms']:.2f} | {single['latency_p99_ms']:.2f} |")
    print(f"| GET /api/articles?limit=20 | {page['requests_per_s']:.0f} | {page['latency_p50_ms']:.2f} | {page['latency_p99_ms']:.2f} |")
    print(f"| pgbench -S (tps) | {tps:.0f} | | |")
    print(f"single-article read / pgbench -S = {r['ratio_get_article_to_pgbench']}")


if __name__ == "__main__":
    main()
