#!/usr/bin/env python3
"""monitor-check.py: is a stage's monitoring really watching it?

    scripts/monitor-check.py PROMETHEUS_URL ENDPOINT

What: asks the stage's Prometheus (1) for its configured scrape jobs and waits until every job
has at least one target and every target is up; (2) sends 50 requests for /api/tags to
ENDPOINT and waits until the app hosts' counter for that route has moved by at least that many. Exit 0 when both hold, 1 otherwise.
Why: a dashboard that shows nothing, or a target silently down, is found here, not by a user.
Every wait is for a condition, bounded (WAIT_SECS, default 120) so a broken stage fails instead
of hanging; a busy machine only makes it slower.
"""
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

WAIT_SECS = float(os.environ.get("WAIT_SECS", "120"))
# Requests sent to move the counter: enough to tell from the health checks' own traffic.
REQUESTS = 50


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_for(what, check):
    deadline = time.monotonic() + WAIT_SECS
    last = None
    while time.monotonic() < deadline:
        try:
            ok, last = check()
            if ok:
                return last
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
    sys.exit(f"monitor-check: {what} not seen within {WAIT_SECS:.0f} s; last: {last}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    prom, endpoint = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")

    config = get_json(f"{prom}/api/v1/status/config")["data"]["yaml"]
    jobs = set(re.findall(r"job_name:\s*(\S+)", config))

    def targets_up():
        active = get_json(f"{prom}/api/v1/targets?state=active")["data"]["activeTargets"]
        per_job = {}
        for t in active:
            per_job[t["scrapePool"]] = per_job.get(t["scrapePool"], 0) + 1
        down = [f'{t["scrapePool"]} {t["scrapeUrl"]}: {t["health"]} {t["lastError"]}'
                for t in active if t["health"] != "up"]
        targets = ", ".join(f"{job} x{n}" for job, n in sorted(per_job.items()))
        return (set(per_job) == jobs and not down,
                f"jobs {sorted(jobs)}; targets {targets}; not up: {down or 'none'}")

    detail = wait_for("every target up", targets_up)
    print(f"monitor-check: {detail}")

    # One route's counter at the app hosts (behind the gateway too): health checks and scrapes
    # count under their own routes, so only the requests sent below can move it.
    counter = 'sum(http_requests_total{route="/api/tags"})'

    def value():
        q = urllib.parse.quote(counter)
        result = get_json(f"{prom}/api/v1/query?query={q}")["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    # No series before the route's first request: that is zero.
    before = value() or 0.0
    # Each a URL of its own: an edge in front (stage 6 on) would answer repeats from its store.
    nonce = int(time.time() * 1000)
    for i in range(REQUESTS):
        with urllib.request.urlopen(f"{endpoint}/api/tags?monitor-check={nonce}-{i}", timeout=10) as r:
            r.read()
    after = wait_for(f"{counter} up by {REQUESTS}",
                     lambda: ((v := value()) is not None and v >= before + REQUESTS, v))
    print(f"monitor-check: {counter} {before:.0f} -> {after:.0f} after {REQUESTS} requests")


if __name__ == "__main__":
    main()
