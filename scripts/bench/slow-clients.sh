#!/usr/bin/env bash
# What 1,000 slow clients (scripts/bench/slow_clients.py) cost the normal ones: stage N measured
# at a fixed rate by the harness while they hold connections to its front door, against the
# same run without them, one after the other on the same build.
#
#   scripts/bench/slow-clients.sh 1 127.63.1.1:8080 100     # stage 1, the app is the front door
#   scripts/bench/slow-clients.sh 4 127.63.4.1:8080 100     # stage 4, the gateway
#
# Writes stages/<stage>/results/slow-clients-{without,with}-<rate>rps.json (the harness's
# results) and slow-clients-<rate>rps-attack.json (what the slow clients saw). Release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
stage="${1:?usage: scripts/bench/slow-clients.sh STAGE FRONT_DOOR RATE}"
front_door="${2:?front door host:port, on --net 63}"
rate="${3:?rate}"
connections="${SLOW_CONNECTIONS:-1000}"
results="$(ls -d stages/0"$stage"-*/results)"
# 1,000 sockets on each side of the loopback, plus the stage's own: past the usual 1,024. As
# many as the hard limit allows (it must allow a few thousand).
ulimit -n "$(ulimit -Hn)"

bench() {
  target/release/archlab bench "$stage" --workload read-heavy --rate "$rate" --duration 60s \
    --net 63 --state-dir /tmp/slow-clients-state --out "$1"
}

echo "== without slow clients"
bench "$results/slow-clients-without-${rate}rps.json"

echo "== with $connections slow clients"
progress="$(mktemp)"
bench "$results/slow-clients-with-${rate}rps.json" > >(tee "$progress") 2>&1 &
bench_pid=$!
# The slow clients start when the harness starts sending (its first progress line), once the
# stage is seeded: asking the front door earlier would have an edge keep an empty page of the
# stage before its seed (the harness then read no tags from it), and stop (by their PID) when
# the run ends.
until grep -q "req/s" "$progress"; do
  kill -0 "$bench_pid" 2>/dev/null || { echo "the bench ended before it sent anything" >&2; exit 1; }
  sleep 1
done
python3 scripts/bench/slow_clients.py "$front_door" --connections "$connections" \
  --interval 5 --duration 600 --out "$results/slow-clients-${rate}rps-attack.json" &
attack_pid=$!
trap 'kill -INT "$attack_pid" 2>/dev/null || true' EXIT
wait "$bench_pid"
kill -INT "$attack_pid" 2>/dev/null || true
wait "$attack_pid" || true
