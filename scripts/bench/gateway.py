#!/usr/bin/env python3
"""What the gateway costs: stage 4's pingora gateway against nginx and HAProxy as the same proxy.

    scripts/bench/gateway.py [--budget 0.5] [--out stages/04-cluster/results/gateway-cost.json]

Three upstreams (nginx answering a fixed 200, one worker each, no budget) stand in for the app
hosts, so the proxy in front of them is the only thing being measured. Each proxy in turn listens
on the same address, inside the same CPU budget (a cgroup, 10 ms period, as the lab's hosts):

- `gateway`: `target/release/gateway serve`, round robin, health checks on, access log off;
- `pingora-floor`: `services/gateway/examples/pingora_floor.rs`, round robin on `pingora-proxy`
  and nothing else (pingora's sample load balancer shape): what pingora itself costs, so the
  gateway's gap splits into pingora's part and the part its own features add;
- `nginx`: one worker, an `upstream` block with `keepalive 64` (HTTP/1.1 to the upstreams);
- `haproxy`: one thread, `balance roundrobin`, `http-reuse always`.

Measured for each, in one run:
1. throughput: `wrk -t2 -c64 -d10s` through the proxy (closed loop: as fast as the budget allows),
   three runs after a 5 s warm-up, the median kept; and the proxy's CPU seconds over the three
   runs divided by their requests (CPU per request), split into user and kernel time;
2. added latency: `loadtest` open loop at 1,000 req/s for 10 s, p50 through the proxy minus p50
   straight to one upstream (the same requests, the same client), each measured three times,
   direct and through the proxy in turn, and the medians taken: one run's p50 moves by a tenth
   of a millisecond with the machine's scheduling, as much as the difference being measured.
3. system calls per request, by name (`strace -c` on the proxy's threads under a light load).
No access logs anywhere (nginx `access_log off`, HAProxy without `option httplog`, the gateway's
`GATEWAY_ACCESS_LOG=false`), so all four do the same work per request.
"""

import argparse, datetime, json, os, platform, re, shutil, subprocess, sys, tempfile, time

from common import ROOT, git_state, run, start_fixed_nginx, version, wait_http, write_result

PROXY = "127.0.97.1:8080"
UPSTREAMS = [f"127.0.97.{n}:8080" for n in (11, 12, 13)]
LOADTEST = os.path.join(ROOT, "target/release/loadtest")
GATEWAY = os.path.join(ROOT, "target/release/gateway")
FLOOR = os.path.join(ROOT, "target/release/examples/pingora_floor")
LATENCY_ROUNDS = 3
THROUGHPUT_ROUNDS = 3
CGROUP_V1 = "/sys/fs/cgroup/cpu"
PERIOD_US = 10_000


class Budget:
    """A CPU group with `cores` of quota; processes join it before exec, as the lab's hosts do."""

    def __init__(self, name, cores):
        # As the lab's budget.rs: the kernel's smallest quota is 1 ms, so a budget under 0.1
        # core gets a longer period rather than a larger quota.
        quota = round(cores * PERIOD_US)
        period = PERIOD_US if quota >= 1000 else round(1000 / cores)
        quota = max(quota, 1000)
        if os.path.isdir(CGROUP_V1):
            self.path = os.path.join(CGROUP_V1, "archlab", name)
            os.makedirs(self.path, exist_ok=True)
            self._write("cpu.cfs_period_us", period)
            self._write("cpu.cfs_quota_us", quota)
        else:
            self.path = os.path.join("/sys/fs/cgroup", "archlab", name)
            os.makedirs(self.path, exist_ok=True)
            self._write("cpu.max", f"{quota} {period}")

    def _write(self, file, value):
        with open(os.path.join(self.path, file), "w") as f:
            f.write(str(value))

    def wrap(self, argv):
        return ["/bin/sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "sh", *argv]

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def process_tree(root):
    """`root` and its descendants (nginx's workers), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sorted(tree)


def cpu_seconds(root):
    """(user, system) CPU seconds of `root` and its descendants, from /proc."""
    user = system = 0
    for pid in process_tree(root):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def syscalls_per_request(root):
    """System calls per proxied request, by name: `strace -c` on every thread of the proxy while
    a light load passes (one wrk thread, four connections, 3 s). strace slows the proxy down, so
    this counts calls; it does not time anything. The count runs about 4.5 s (attach, load,
    detach), so calls a proxy makes with no load at all (pingora's timer thread, the gateway's
    health checks) are in it too, spread over the requests: up to a tenth per request."""
    out = os.path.join(tempfile.gettempdir(), f"archlab-strace-{root}.txt")
    argv = ["strace", "-c", "-f", "-o", out]
    for pid in process_tree(root):
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        text = run(["wrk", "-t1", "-c4", "-d3s", f"http://{PROXY}/"])
        requests = int(re.search(r"(\d+) requests in", text).group(1))
        time.sleep(0.5)
    finally:
        tracer.send_signal(2)
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
    calls = {}
    for line in open(out):
        cols = line.split()
        # "% time seconds usecs/call calls [errors] syscall"
        if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
            calls[cols[-1]] = int(cols[3])
    os.remove(out)
    per = {name: round(n / requests, 2) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
           if n / requests >= 0.01}
    return {"requests": requests, "per_request": per,
            "total_per_request": round(sum(calls.values()) / requests, 2)}


def start_upstreams(tmp):
    return [start_fixed_nginx(os.path.join(tmp, f"up{i}"), addr) for i, addr in enumerate(UPSTREAMS)]


def gateway_argv(tmp):
    env = {
        "GATEWAY_LISTEN": PROXY,
        "GATEWAY_UPSTREAMS": "[" + ",".join(f'"{u}"' for u in UPSTREAMS) + "]",
        "GATEWAY_HEALTH__PATH": "/",
        "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_SHUTDOWN_GRACE_SECS": "0",
    }
    return [GATEWAY, "serve"], env


def floor_argv(tmp):
    return [FLOOR, PROXY, *UPSTREAMS], {}


def nginx_argv(tmp):
    prefix = os.path.join(tmp, "nginx-proxy")
    os.makedirs(prefix)
    conf = os.path.join(prefix, "nginx.conf")
    servers = "".join(f"server {u};" for u in UPSTREAMS)
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; error_log stderr error; pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; upstream app {{ {servers} keepalive 64; }}
  server {{ listen {PROXY}; keepalive_requests 100000000;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    return ["nginx", "-p", prefix, "-c", conf], {}


def haproxy_argv(tmp):
    conf = os.path.join(tmp, "haproxy.cfg")
    servers = "\n".join(f"    server u{i} {u}" for i, u in enumerate(UPSTREAMS))
    with open(conf, "w") as f:
        f.write(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend front
    bind {PROXY}
    default_backend app
backend app
    balance roundrobin
{servers}
""")
    return ["haproxy", "-db", "-f", conf], {}


def wrk(url, duration="10s"):
    text = run(["wrk", "-t2", "-c64", f"-d{duration}", url])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    return rps, total


def p50(url, tmp, name):
    out = os.path.join(tmp, f"{name}-latency.json")
    subprocess.run([LOADTEST, "--target", url, "--workload", "url", "--no-verify", "--rate", "1000",
                    "--duration", "10s", "--warmup", "2s", "--out", out], check=True,
                   capture_output=True)
    with open(out) as f:
        report = json.load(f)
    return report["latency_ms"]["corrected"]["p50"], report["latency_ms"]["corrected"]["p99"]


def median(values):
    return sorted(values)[len(values) // 2]


def measure(name, argv_env, budget_cores, tmp):
    budget = Budget(f"gateway-cost-{name}", budget_cores)
    argv, env = argv_env
    proc = subprocess.Popen(budget.wrap(argv), env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://{PROXY}/", proc)
        time.sleep(1.5)  # health checks settle, pools warm
        wrk(f"http://{PROXY}/", "5s")  # warm-up run, not counted
        user0, sys0 = cpu_seconds(proc.pid)
        runs = [wrk(f"http://{PROXY}/") for _ in range(THROUGHPUT_ROUNDS)]
        user1, sys1 = cpu_seconds(proc.pid)
        user, system = user1 - user0, sys1 - sys0
        rps, total = median([r for r, _ in runs]), sum(n for _, n in runs)
        rounds = []
        for _ in range(LATENCY_ROUNDS):
            direct, _ = p50(f"http://{UPSTREAMS[0]}/", tmp, "direct")
            through, through99 = p50(f"http://{PROXY}/", tmp, name)
            rounds.append({"direct_p50_ms": direct, "p50_ms": through, "p99_ms": through99})
        syscalls = syscalls_per_request(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        budget.remove()
    result = {
        "proxy": name,
        "throughput_rps": round(rps),
        "throughput_rounds_rps": [round(r) for r, _ in runs],
        "cpu_seconds": round(user + system, 3),
        "cpu_us_per_request": round((user + system) / total * 1e6, 1),
        "user_us_per_request": round(user / total * 1e6, 1),
        "system_us_per_request": round(system / total * 1e6, 1),
        "syscalls": syscalls,
        "direct_p50_ms_at_1000_rps": median([r["direct_p50_ms"] for r in rounds]),
        "p50_ms_at_1000_rps": median([r["p50_ms"] for r in rounds]),
        "p99_ms_at_1000_rps": median([r["p99_ms"] for r in rounds]),
        "latency_rounds": rounds,
    }
    result["added_p50_ms"] = round(result["p50_ms_at_1000_rps"] - result["direct_p50_ms_at_1000_rps"], 3)
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=0.5, help="CPU budget of each proxy (cores)")
    ap.add_argument("--out", default=os.path.join(ROOT, "stages/04-cluster/results/gateway-cost.json"))
    args = ap.parse_args()
    for tool in ("wrk", "strace", "nginx", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing: bash scripts/setup.sh")
    for binary in (LOADTEST, GATEWAY):
        if not os.path.exists(binary):
            sys.exit(f"{binary} missing: cargo build --release --workspace")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "gateway", "--example", "pingora_floor"],
                   cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="archlab-gateway-cost") as tmp:
        upstreams = start_upstreams(tmp)
        try:
            results = [
                measure("gateway", gateway_argv(tmp), args.budget, tmp),
                measure("pingora-floor", floor_argv(tmp), args.budget, tmp),
                measure("nginx", nginx_argv(tmp), args.budget, tmp),
                measure("haproxy", haproxy_argv(tmp), args.budget, tmp),
            ]
        finally:
            for p in upstreams:
                p.terminate()
    by = {r["proxy"]: r for r in results}
    report = {
        "what": "the gateway's cost against pingora's floor (round robin on pingora-proxy, nothing else), "
                "nginx and HAProxy as the same round-robin proxy",
        "budget_cores_each": args.budget,
        "upstreams": UPSTREAMS,
        "results": results,
        "ratios": {
            "gateway_vs_nginx_throughput": round(by["gateway"]["throughput_rps"] / by["nginx"]["throughput_rps"], 2),
            "gateway_vs_haproxy_throughput": round(by["gateway"]["throughput_rps"] / by["haproxy"]["throughput_rps"], 2),
            "gateway_vs_pingora_floor_throughput": round(by["gateway"]["throughput_rps"] / by["pingora-floor"]["throughput_rps"], 2),
            "pingora_floor_vs_nginx_throughput": round(by["pingora-floor"]["throughput_rps"] / by["nginx"]["throughput_rps"], 2),
            "pingora_floor_vs_haproxy_throughput": round(by["pingora-floor"]["throughput_rps"] / by["haproxy"]["throughput_rps"], 2),
        },
        "targets": {
            "added_p50_under_0.2_ms": by["gateway"]["added_p50_ms"] < 0.2,
            "at_least_nginx": by["gateway"]["throughput_rps"] >= by["nginx"]["throughput_rps"],
            "at_least_0.8x_haproxy": by["gateway"]["throughput_rps"] >= 0.8 * by["haproxy"]["throughput_rps"],
        },
        "provenance": {
            **git_state(),
            "command": " ".join(["scripts/bench/gateway.py", *sys.argv[1:]]),
            "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "versions": {"nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"]),
                         "wrk": version(["wrk", "-v"]), "strace": version(["strace", "-V"])},
            "tools": f"throughput: wrk -t2 -c64 -d10s, median of {THROUGHPUT_ROUNDS}; latency: loadtest open loop 1000 req/s 10 s, "
                     f"{LATENCY_ROUNDS} rounds (direct, then through the proxy), medians",
        },
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
