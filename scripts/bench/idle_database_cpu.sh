#!/usr/bin/env bash
# The database hosts' CPU on an idle stage 7 (no load at all), with four shards and with one:
# what the timers cost by the second (each app host asks each shard's primary its WAL position
# four times a second, db/watch.rs; the two-phase recovery worker scans each shard). The CPU of
# every process in each database host's CPU group (utime + stime from /proc/PID/stat, 10 ms
# ticks), 60 s apart, 20 s after the stage is up. Release binaries; own state folder and network.
#
#   scripts/bench/idle_database_cpu.sh > stages/07-distributed/results/idle-database-cpu.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "# scripts/bench/idle_database_cpu.sh at $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores"
for n in 4 1; do
  state="$(mktemp -d -t archlab-idle-XXXXXX)"
  chmod 755 "$state"  # PostgreSQL runs as `postgres`, which must enter it
  echo "== shards $n: target/release/archlab --state-dir $state --net 61 up 7 --shards $n --fresh"
  target/release/archlab --state-dir "$state" --net 61 up 7 --shards "$n" --fresh >"$state.log" 2>&1 ||
    { tail "$state.log" >&2; exit 1; }
  sleep 20
  python3 - <<'PY'
import glob, os, time
tick = os.sysconf("SC_CLK_TCK")
def cpu(group):
    total = 0
    for pid in open(group + "/cgroup.procs").read().split():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / tick
groups = sorted(glob.glob("/sys/fs/cgroup/cpu/archlab/host-127-61-7-5*"))
before = {g: cpu(g) for g in groups}; t0 = time.time()
time.sleep(60)
after = {g: cpu(g) for g in groups}; t1 = time.time()
for g in groups:
    print("  %s: %.1f ms of CPU a second" % (os.path.basename(g), (after[g] - before[g]) * 1000 / (t1 - t0)))
PY
  target/release/archlab --state-dir "$state" --net 61 down >/dev/null 2>&1
  rm -rf "$state" "$state.log"
done
