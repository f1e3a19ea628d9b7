#!/usr/bin/env python3
"""Benchmarks of the harness itself, against nginx answering a fixed 200 on loopback.

    scripts/bench/harness.py [--out loadtest/results/harness.json]

1. capacity: closed loop, 2 threads, 64 connections, 10 s: `wrk` and `loadtest` alternately, twice
   each, in the same run (both share the machine with nginx, one worker process);
2. open-loop precision: `loadtest` at 20,000 req/s for 10 s; the send-time error (how late each
   request left compared with its schedule) must stay under 1 ms at p99;
3. memory: one closed-loop `loadtest` run of at least 10 million requests; its RSS when 100,000
   were done and at the end (constant memory: the ratio should be near 1, at most 2).
"""

import argparse, datetime, json, os, platform, re, subprocess, sys, tempfile

from common import ROOT, git_state, run, start_fixed_nginx, version, write_result

ADDR = "127.0.99.1:8099"
LOADTEST = os.path.join(ROOT, "target/release/loadtest")


def wrk_rps():
    text = run(["wrk", "-t2", "-c64", "-d10s", f"http://{ADDR}/"])
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))


def loadtest(args, out):
    subprocess.run([LOADTEST, "--target", f"http://{ADDR}/", "--workload", "url", "--no-verify",
                    "--threads", "2", "--out", out, *args], check=True, capture_output=True)
    with open(out) as f:
        return json.load(f)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_run(tmp, target_requests, rate_estimate):
    """Closed loop until at least `target_requests`; RSS at 100k done and at the end."""
    duration = int(target_requests / rate_estimate * 1.15) + 5
    out = os.path.join(tmp, "memory.json")
    proc = subprocess.Popen([LOADTEST, "--target", f"http://{ADDR}/", "--workload", "url", "--no-verify",
                             "--closed", "--threads", "2", "--connections", "64", "--warmup", "0s",
                             "--duration", f"{duration}s", "--out", out],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    rss_100k = rss_end = None
    done = 0
    for line in proc.stderr:
        m = re.match(r"\s*(\d+) s\s+(\d+) req/s\s+(\d+) done", line)
        if not m:
            continue
        done = int(m.group(3))
        if rss_100k is None and done >= 100_000:
            rss_100k = rss_kib(proc.pid)
        if done >= target_requests:
            rss_end = rss_kib(proc.pid)
        elif rss_end is None:
            pass
    proc.wait()
    with open(out) as f:
        report = json.load(f)
    return {"requests": report["counts"]["sent"], "duration_s": duration, "rss_kib_at_100k": rss_100k,
            "rss_kib_at_end": rss_end, "ratio": round(rss_end / rss_100k, 3) if rss_100k and rss_end else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest/results/harness.json"))
    ap.add_argument("--memory-requests", type=int, default=10_000_000)
    args = ap.parse_args()
    if not os.path.exists(LOADTEST):
        sys.exit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="archlab-harness-")
    nginx = start_fixed_nginx(tmp, ADDR)
    try:
        print("capacity: wrk and loadtest, closed loop, 2 threads, 64 connections, 10 s each, twice", flush=True)
        wrk_runs, lt_runs = [], []
        for i in range(2):
            wrk_runs.append(wrk_rps())
            r = loadtest(["--closed", "--connections", "64", "--duration", "10s", "--warmup", "1s"], os.path.join(tmp, f"closed{i}.json"))
            lt_runs.append(r["throughput_rps"])
            print(f"  round {i + 1}: wrk {wrk_runs[-1]:.0f} req/s, loadtest {lt_runs[-1]:.0f} req/s", flush=True)
        print("open loop: 20,000 req/s for 10 s", flush=True)
        o = loadtest(["--rate", "20000", "--connections", "64", "--duration", "10s", "--warmup", "2s"], os.path.join(tmp, "open.json"))
        print(f"  send lag p99 {o['send_lag_ms']['p99']} ms, throughput {o['throughput_rps']}", flush=True)
        print(f"memory: {args.memory_requests:,} requests, closed loop", flush=True)
        mem = memory_run(tmp, args.memory_requests, max(lt_runs))
        print(f"  RSS {mem['rss_kib_at_100k']} KiB at 100k, {mem['rss_kib_at_end']} KiB at {mem['requests']:,}", flush=True)
    finally:
        nginx.terminate()
        nginx.wait()

    result = {
        "benchmark": "the harness itself, against nginx returning a fixed 200",
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "scripts/bench/harness.py " + " ".join(sys.argv[1:]),
        "capacity_closed_loop": {
            "threads": 2, "connections": 64, "duration_s": 10,
            "wrk_rps": wrk_runs, "loadtest_rps": lt_runs,
            "loadtest_over_wrk_best": round(max(lt_runs) / max(wrk_runs), 3),
        },
        "open_loop_20k": {
            "rate_rps": 20000, "throughput_rps": o["throughput_rps"], "send_lag_ms": o["send_lag_ms"],
            "behind_schedule": o["counts"]["behind_schedule"], "scheduled": o["counts"]["scheduled"],
            "dropped": o["counts"]["dropped"], "latency_ms": o["latency_ms"],
        },
        "memory": mem,
        "provenance": {
            **git_state(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown"),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "nginx": version(["nginx", "-v"]), "wrk": version(["wrk", "-v"]),
            "note": "nginx (1 worker), the load generator and the kernel share the machine's cores",
        },
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
