#!/usr/bin/env python3
"""What the edge buys a far reader: stage 5 seen from far against stage 6's far PoP.

    scripts/bench/distance.py [--rate 50] [--out stages/06-edge/results/far-clients.json]

What: one anonymous article read, again and again (the harness's `url` workload, open loop at
`--rate` for 20 s after 5 s of warm-up), by clients far from the origin:
- stage 5 (`archlab up 5`): the clients at the gateway, 85 ms away (`--pop GATEWAY=85ms`): 5 ms
  to where the far PoP would stand plus 80 ms from there to the origin, stage 6's distances;
- stage 6 (`archlab up 6 --distance`): the same clients at the far PoP, 5 ms away (`--pop FAR=5ms`), whose
  store holds the article after its first read.
Both stages at their stage files' sizes, seeded alike, measured back to back in one run.

Why: the edge's promise to a far reader is latency, not capacity: a cached page costs the
distance to the PoP, not to the origin. The target: the far clients' p50 at least 5x lower.
"""

import argparse, datetime, json, os, platform, subprocess, sys, tempfile, urllib.request

from common import ROOT, git_state, write_result

ARCHLAB = os.path.join(ROOT, "target/release/archlab")
LOADTEST = os.path.join(ROOT, "target/release/loadtest")
NET = "99"


def measure(stage, pop, delay_ms, rate, state):
    lab = [ARCHLAB, "--state-dir", state, "--net", NET]
    # Stage 6 with its distances: the far PoP 80 ms from the origin (stage 5 has none to emulate).
    distance = ["--distance"] if stage == "6" else []
    try:
        subprocess.run(lab + ["up", stage, *distance], check=True, capture_output=True)
        subprocess.run(lab + ["seed", stage, "--users", "100", "--articles", "1000", "--images", "100"],
                       check=True, capture_output=True)
        entry = f"http://{pop}"
        with urllib.request.urlopen(f"{entry}/api/articles?limit=1", timeout=10) as r:
            slug = json.loads(r.read())["articles"][0]["slug"]
        out = os.path.join(state, f"stage{stage}.json")
        subprocess.run([LOADTEST, "--target", f"{entry}/api/articles/{slug}", "--workload", "url",
                        "--rate", str(rate), "--duration", "20s", "--warmup", "5s",
                        "--pop", f"{pop}={delay_ms}ms", "--no-verify", "--out", out],
                       check=True, capture_output=True)
        with open(out) as f:
            report = json.load(f)
    finally:
        subprocess.run(lab + ["down"], capture_output=True)
    latency = report["latency_ms"]["corrected"]
    return {
        "stage": int(stage),
        "clients_at": pop,
        "client_distance_ms": delay_ms,
        "url": f"/api/articles/{slug}",
        "rate_rps": rate,
        "throughput_rps": report["throughput_rps"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "errors": report["counts"].get("failed", 0) + report["counts"].get("unknown", 0),
        "edge": report["cache"].get("edge"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "stages/06-edge/results/far-clients.json"))
    args = ap.parse_args()
    for binary in (ARCHLAB, LOADTEST):
        if not os.path.exists(binary):
            sys.exit(f"{binary} missing: cargo build --release --workspace")
    state = tempfile.mkdtemp(prefix="archlab-distance-")
    os.chmod(state, 0o755)
    stage5 = measure("5", f"127.{NET}.5.1:8080", 85, args.rate, state)
    print(json.dumps(stage5), flush=True)
    stage6 = measure("6", f"127.{NET}.6.32:8080", 5, args.rate, state)
    print(json.dumps(stage6), flush=True)
    ratio = stage5["p50_ms"] / stage6["p50_ms"] if stage6["p50_ms"] else None
    write_result(args.out, {
        "what": "p50 of an anonymous article read by clients far from the origin: stage 5 at 85 ms from "
                "its gateway, against stage 6 at 5 ms from its far PoP (80 ms from the origin)",
        "runs": [stage5, stage6],
        "p50_stage5_over_stage6": round(ratio, 2) if ratio else None,
        "targets": {"at_least_5x_lower": bool(ratio and ratio >= 5)},
        "provenance": {
            **git_state(),
            "command": " ".join(["scripts/bench/distance.py", *sys.argv[1:]]),
            "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "stages": "archlab up 5 and up 6 at their stage files' sizes, each seeded with 100 users, "
                      "1,000 articles, 100 images; the harness unbudgeted (a light load)",
        },
    })


if __name__ == "__main__":
    main()
