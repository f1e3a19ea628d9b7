#!/usr/bin/env python3
"""How soon a write is visible at both edge PoPs, under load (stage 6's purge drill).

    scripts/bench/purge.py [--writes 200] [--rate 300] [--out stages/06-edge/results/drill-purge-under-load.json]

What: brings stage 6 up in a lab of its own (`archlab up 6`, release binaries, the stage's sizes),
seeds it, and starts the harness on the read-heavy mix at a fixed rate, its clients spread over
both PoPs (`--pop near=5ms --pop far=5ms`). Meanwhile one writer, logged in, changes one article
`--writes` times. Before each change both PoPs hold the article (an anonymous read at each until
it says HIT); after the write is acknowledged, an anonymous reader polls each PoP every 5 ms until
the article shows the change. Visibility is the time from the write's acknowledgement to the
first answer showing it, per PoP.

Why: the app purges the keys a write changed at every PoP before it answers the write (see
services/conduit/src/edge.rs), so the first read after the acknowledgement should already show
it; this measures whether that holds under load, and what the tail is when it does not. Every
poll is bounded (5 s): a change never seen is counted, never waited for.
"""

import argparse, datetime, json, os, platform, subprocess, sys, tempfile, time, urllib.request

from common import ROOT, git_state, write_result

ARCHLAB = os.path.join(ROOT, "target/release/archlab")
LOADTEST = os.path.join(ROOT, "target/release/loadtest")
NET = "98"
POLL = 0.005
GIVE_UP = 5.0


def call(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Token {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), json.loads(r.read() or b"null")


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--rate", type=float, default=300.0, help="harness load, req/s")
    ap.add_argument("--out", default=os.path.join(ROOT, "stages/06-edge/results/drill-purge-under-load.json"))
    args = ap.parse_args()
    for binary in (ARCHLAB, LOADTEST):
        if not os.path.exists(binary):
            sys.exit(f"{binary} missing: cargo build --release --workspace")
    state = tempfile.mkdtemp(prefix="archlab-purge-")
    os.chmod(state, 0o755)
    lab = [ARCHLAB, "--state-dir", state, "--net", NET]
    near, far = f"http://127.{NET}.6.31:8080", f"http://127.{NET}.6.32:8080"
    load = None
    try:
        subprocess.run(lab + ["up", "6"], check=True, capture_output=True)
        subprocess.run(lab + ["seed", "6", "--users", "200", "--articles", "2000", "--images", "200"],
                       check=True, capture_output=True)
        out = os.path.join(state, "load.json")
        duration = max(30, int(args.writes * 0.3) + 20)
        load = subprocess.Popen([LOADTEST, "--target", near, "--workload", "read-heavy",
                                 "--rate", str(args.rate), "--duration", f"{duration}s", "--warmup", "5s",
                                 "--pop", f"127.{NET}.6.31:8080=5ms", "--pop", f"127.{NET}.6.32:8080=5ms",
                                 "--no-verify", "--out", out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)  # the harness's warm-up: the probe measures under the load, not before it
        _, _, user = call("POST", f"{near}/api/users", {"user": {
            "username": "purge-probe", "email": "purge-probe@example.com", "password": "purge-probe-pw"}})
        token = user["user"]["token"]
        _, _, created = call("POST", f"{near}/api/articles", {"article": {
            "title": "Purge probe", "description": "v0", "body": "b", "tagList": []}}, token)
        slug = created["article"]["slug"]
        seen = {"edge-near": [], "edge-far": []}
        never = {"edge-near": 0, "edge-far": 0}
        first_read_showed = {"edge-near": 0, "edge-far": 0}
        for i in range(1, args.writes + 1):
            for pop in (near, far):
                for _ in range(100):
                    _, headers, _ = call("GET", f"{pop}/api/articles/{slug}")
                    if headers.get("x-cache") == "HIT":
                        break
            call("PUT", f"{near}/api/articles/{slug}", {"article": {"description": f"v{i}"}}, token)
            acked = time.monotonic()
            for name, pop in (("edge-near", near), ("edge-far", far)):
                polls = 0
                while True:
                    _, _, body = call("GET", f"{pop}/api/articles/{slug}")
                    polls += 1
                    if body["article"]["description"] == f"v{i}":
                        seen[name].append(time.monotonic() - acked)
                        first_read_showed[name] += polls == 1
                        break
                    if time.monotonic() - acked > GIVE_UP:
                        never[name] += 1
                        break
                    time.sleep(POLL)
        load.wait(timeout=duration + 60)
        with open(out) as f:
            harness = json.load(f)
    finally:
        if load and load.poll() is None:
            load.kill()
        subprocess.run(lab + ["down"], capture_output=True)
    result = {
        "what": "time from a write's acknowledgement to the first anonymous read at each PoP that shows it, "
                "both PoPs holding the article before each write, under the read-heavy mix",
        "writes": args.writes,
        "pops": {name: {
            "visible_ms": {"p50": percentile(v, 50), "p99": percentile(v, 99), "max": percentile(v, 100)},
            "first_read_after_ack_showed_it": first_read_showed[name],
            "never_seen_within_5s": never[name],
        } for name, v in seen.items()},
        "load": {"workload": "read-heavy", "rate_rps": args.rate,
                 "throughput_rps": harness.get("throughput_rps"),
                 "p99_ms": harness["latency_ms"]["corrected"]["p99"],
                 "edge": harness["cache"].get("edge")},
        "provenance": {
            **git_state(),
            "command": " ".join(["scripts/bench/purge.py", *sys.argv[1:]]),
            "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "stage": "archlab up 6 (stage file sizes), seeded 200 users, 2,000 articles, 200 images",
            "poll": f"every {POLL * 1000:.0f} ms, given up after {GIVE_UP:.0f} s",
        },
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
