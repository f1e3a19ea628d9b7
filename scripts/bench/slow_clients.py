#!/usr/bin/env python3
"""Hostile clients for a front door: N connections that each send a request head one header line
at a time, slowly, and never finish it (slowloris), reopened when the server closes them.

    python3 scripts/bench/slow_clients.py 127.63.1.1:8080 --connections 1000 --interval 5 \
        --duration 120 --out /tmp/slow.json

Every bound is explicit: N connections at most, one line per connection every --interval
seconds, for --duration seconds; then every connection is closed and a summary written: how many
were opened, how many the server closed (and how long they had lived), how many were open at the
end. Run it beside `archlab bench` at a fixed rate to see what the slow clients cost the normal
ones (scripts/bench/slow-clients.sh does).
"""

import argparse
import asyncio
import json
import signal
import statistics
import time


async def slow_client(host, port, interval, until, stats):
    """One slow client: connect, dribble header lines until the server closes or time is up;
    reconnect after a close (a short pause, so a server refusing at accept is not hammered)."""
    while time.monotonic() < until["deadline"]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=5
            )
        except (OSError, asyncio.TimeoutError):
            stats["connect_failures"] += 1
            await asyncio.sleep(1)
            continue
        stats["opened"] += 1
        stats["open"] += 1
        opened = time.monotonic()
        closed_by_server = False
        try:
            writer.write(b"GET /api/tags HTTP/1.1\r\nHost: slow\r\n")
            await writer.drain()
            line = 0
            while time.monotonic() < until["deadline"]:
                # The server closing shows as end of file (or an answer, e.g. 408) on a read.
                try:
                    data = await asyncio.wait_for(reader.read(1024), timeout=interval)
                    closed_by_server = True
                    if data:
                        stats["answered"] += 1
                    break
                except asyncio.TimeoutError:
                    pass
                writer.write(b"X-Slow-%d: x\r\n" % line)
                line += 1
                await writer.drain()
        except (OSError, ConnectionError):
            closed_by_server = True
        finally:
            stats["open"] -= 1
            writer.close()
        if closed_by_server:
            stats["closed_by_server"] += 1
            stats["lifetimes"].append(time.monotonic() - opened)
            await asyncio.sleep(0.5)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="host:port of the front door")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between header lines on each connection")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--out", help="where to write the JSON summary")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    stats = {"opened": 0, "open": 0, "closed_by_server": 0, "answered": 0,
             "connect_failures": 0, "lifetimes": []}
    # SIGINT or SIGTERM ends the run early, summary and all (how slow-clients.sh stops it).
    until = {"deadline": time.monotonic() + args.duration}
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: until.update(deadline=time.monotonic()))
    open_series = []

    async def sample():
        while time.monotonic() < until["deadline"]:
            open_series.append(stats["open"])
            await asyncio.sleep(1)

    started = time.time()
    await asyncio.gather(
        sample(),
        *(slow_client(host, int(port), args.interval, until, stats)
          for _ in range(args.connections)),
    )
    lifetimes = stats.pop("lifetimes")
    summary = {
        "target": args.target,
        "connections": args.connections,
        "interval_s": args.interval,
        "duration_s": round(time.time() - started, 1),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        **{k: v for k, v in stats.items() if k != "open"},
        "open_per_second": open_series,
        "open_min_after_first_10s": min(open_series[10:], default=None),
        "server_closed_after_s": {
            "p50": round(statistics.median(lifetimes), 1) if lifetimes else None,
            "max": round(max(lifetimes), 1) if lifetimes else None,
        },
    }
    text = json.dumps(summary, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "open_per_second"}))


if __name__ == "__main__":
    asyncio.run(main())
