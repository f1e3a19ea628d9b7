#!/usr/bin/env python3
"""What the edge costs per hit: stage 6's pingora edge against Varnish caching the same responses.

    scripts/bench/edge.py [--budget 0.5] [--out stages/06-edge/results/edge-cost.json]

One origin (nginx, one worker, no budget) answers every path with a 2 KiB JSON body marked
`Cache-Control: public, max-age=3600` and a `Surrogate-Key`, as the app marks an article. Each
cache in turn listens on the same address, in front of it, inside the same CPU budget (a cgroup,
as the lab's hosts):

- `edge`: `target/release/edge serve` (its store, access log off, the rate limit out of the way);
- `varnish`: Debian's `varnishd` with its built-in VCL (which caches the same responses: GET and
  HEAD without `Authorization` or `Cookie`, `public` with a lifetime, never `Set-Cookie`), a
  64 MiB `malloc` store, one thread pool.

Measured for each, in one run, on one URL already in the cache (every request a hit):
1. throughput: `wrk -t2 -c64 -d10s` (closed loop: as fast as the budget allows), three runs after
   a 5 s warm-up, the median kept;
2. CPU per hit: the cache's CPU seconds over the three runs divided by their requests, split into
   user and kernel time, so a gap says where it is (the gateway's cost was measured the same way,
   scripts/bench/gateway.py);
3. system calls per hit, by name (`strace -c` under a light load).
"""

import argparse, datetime, json, os, platform, shutil, subprocess, sys, tempfile, time

from common import ROOT, git_state, version, wait_http, write_result
from gateway import Budget, cpu_seconds, median, wrk
import gateway

CACHE = "127.0.98.1:8080"
ORIGIN = "127.0.98.11:8080"
EDGE = os.path.join(ROOT, "target/release/edge")
ROUNDS = 3
# An article's size in the app's JSON (a seeded article with its body is 1-3 KiB).
BODY_BYTES = 2048
# Ends with "/": the strace count (gateway.py) appends one to what it is given.
HIT_PATH = "/api/articles/an-article-1/"


def start_origin(prefix):
    """nginx answering every path with the same cacheable 2 KiB JSON body."""
    os.makedirs(prefix, exist_ok=True)
    body = '{"article":{"body":"' + "x" * (BODY_BYTES - 24) + '"}}'
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; error_log stderr error; pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen {ORIGIN}; keepalive_requests 100000000;
  location / {{ default_type application/json;
    add_header Cache-Control "public, max-age=3600";
    add_header Surrogate-Key "article:1 profile:jake";
    return 200 '{body}'; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stderr=subprocess.DEVNULL)
    wait_http(f"http://{ORIGIN}/", proc)
    return proc


def edge_argv(tmp):
    env = {
        "EDGE_LISTEN": CACHE,
        "EDGE_ORIGIN": ORIGIN,
        "EDGE_NAME": "bench",
        "EDGE_ACCESS_LOG": "false",
        "EDGE_RATE_PER_CLIENT": "100000000",
        "EDGE_RATE_BURST": "100000000",
        "EDGE_SHUTDOWN_GRACE_SECS": "0",
    }
    return [EDGE, "serve"], env


def varnish_argv(tmp):
    workdir = os.path.join(tmp, "varnish")
    os.makedirs(workdir)
    return ["varnishd", "-F", "-n", workdir, "-a", CACHE, "-b", ORIGIN, "-s", "malloc,64m",
            "-p", "thread_pools=1", "-p", "thread_pool_min=10"], {}


def measure(name, argv_env, budget_cores):
    budget = Budget(f"edge-cost-{name}", budget_cores)
    argv, env = argv_env
    proc = subprocess.Popen(budget.wrap(argv), env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{CACHE}{HIT_PATH}"
    try:
        wait_http(url, proc)
        headers = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", url],
                                 text=True, capture_output=True).stdout
        wrk(url, "5s")  # warm-up, not counted
        user0, sys0 = cpu_seconds(proc.pid)
        runs = [wrk(url) for _ in range(ROUNDS)]
        user1, sys1 = cpu_seconds(proc.pid)
        user, system = user1 - user0, sys1 - sys0
        rps, total = median([r for r, _ in runs]), sum(n for _, n in runs)
        syscalls = syscalls_per_hit(proc.pid, url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        budget.remove()
    result = {
        "cache": name,
        "hit_headers": [l for l in headers.splitlines() if l.lower().startswith(("x-cache", "age", "x-varnish", "via"))],
        "throughput_rps": round(rps),
        "throughput_rounds_rps": [round(r) for r, _ in runs],
        "cpu_seconds": round(user + system, 3),
        "cpu_us_per_request": round((user + system) / total * 1e6, 1),
        "user_us_per_request": round(user / total * 1e6, 1),
        "system_us_per_request": round(system / total * 1e6, 1),
        "syscalls": syscalls,
    }
    print(json.dumps(result), flush=True)
    return result


def syscalls_per_hit(root, url):
    """gateway.py's strace count, against the hit URL."""
    saved = gateway.PROXY
    gateway.PROXY = url.removeprefix("http://").removesuffix("/")
    try:
        return gateway.syscalls_per_request(root)
    finally:
        gateway.PROXY = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=0.5, help="CPU budget of each cache (cores)")
    ap.add_argument("--out", default=os.path.join(ROOT, "stages/06-edge/results/edge-cost.json"))
    args = ap.parse_args()
    for tool in ("wrk", "strace", "nginx", "varnishd", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing: bash scripts/setup.sh")
    if not os.path.exists(EDGE):
        sys.exit(f"{EDGE} missing: cargo build --release --workspace")
    with tempfile.TemporaryDirectory(prefix="archlab-edge-cost") as tmp:
        origin = start_origin(os.path.join(tmp, "origin"))
        try:
            results = [
                measure("edge", edge_argv(tmp), args.budget),
                measure("varnish", varnish_argv(tmp), args.budget),
            ]
        finally:
            origin.terminate()
    by = {r["cache"]: r for r in results}
    ratio = by["edge"]["throughput_rps"] / by["varnish"]["throughput_rps"]
    report = {
        "what": "hits per second and CPU per hit: archlab's edge (pingora-proxy + pingora-cache, "
                "its own store) against Varnish caching the same response, same budget, same client",
        "budget_cores_each": args.budget,
        "body_bytes": BODY_BYTES,
        "results": results,
        "ratios": {"edge_vs_varnish_throughput": round(ratio, 2)},
        "targets": {"at_least_0.8x_varnish": ratio >= 0.8},
        "provenance": {
            **git_state(),
            "command": " ".join(["scripts/bench/edge.py", *sys.argv[1:]]),
            "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "versions": {"varnish": version(["varnishd", "-V"]), "nginx": version(["nginx", "-v"]),
                         "wrk": version(["wrk", "-v"]), "strace": version(["strace", "-V"])},
            "tools": f"throughput: wrk -t2 -c64 -d10s on one cached URL, median of {ROUNDS}; CPU from /proc",
        },
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
