#!/usr/bin/env bash
# Stage 8's drills, the whole set behind its walkthrough's tables (stages/08-consensus/README.md,
# "The set from one build"), from one release build, one drill at a time, each on a fresh stage:
# every mode and store under a crash, the primary frozen, isolated and partitioned, a planned
# switchover, the store's leader killed. Each file's provenance names the commit and the
# versions of PostgreSQL, Patroni, etcd and ZooKeeper it ran with.
#
#   bash scripts/bench/stage8-drills.sh [OUT_DIR [NAME...]]   # all: about 2 hours on 2 cores
#
# OUT_DIR defaults to stages/08-consensus/results/set-<commit>; NAMEs (the `run` lines below)
# run only those. Each run brings the stage up fresh and seeds it (about 3 of its 4.5 minutes).
# The load is the write-heavy mix at 50 req/s (the rate the later drills of the walkthrough use:
# the stage's 0.2-core database hosts carry it with room, so what a drill shows is the fault, not
# an overload), 60 s measured, the fault 10 s after the stage first answers, 20 s long. Nothing
# else should run meanwhile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- stages/lab services loadtest Cargo.toml Cargo.lock \
    || { echo "stage8-drills: the code has changes: commit first, so the files name what ran" >&2; exit 1; }
out="${1:-stages/08-consensus/results/set-$commit}"
shift || true
only=("$@")
state="${TMPDIR:-/tmp}/archlab-stage8-set"
mkdir -p "$out"
cargo build --release --locked -q
archlab=target/release/archlab

load=(--workload write-heavy --rate 50 --duration 60s --outage 20s)
# One drill (or its trials): `run NAME ARGS...` writes $out/NAME.json (or NAME-01.json, ... and
# NAME-trials.md), then takes the stage down; skipped unless named, when NAMEs are given.
run() {
    local name="$1"; shift
    if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then return; fi
    echo "== $(date -u +%T) $name: archlab drill 8 $*" >&2
    "$archlab" --state-dir "$state" drill 8 "$@" "${load[@]}" --out "$out/$name.json"
    "$archlab" --state-dir "$state" down 8 >/dev/null
}

# The primary's host crashes (Patroni and PostgreSQL killed): the 12 s target, each mode.
run crash-etcd-async kill --service patroni --trials 5
run crash-zookeeper-async kill --service patroni --dcs zookeeper --trials 3
run crash-etcd-sync kill --service patroni --replication sync
run crash-etcd-sync-strict-three-hosts kill --service patroni --replication sync-strict --replicas 2 --trials 3
# The primary alive but cut off: where split brain and lost writes live.
run freeze-etcd-async freeze --service patroni --trials 3
run isolate-etcd-async isolate --service patroni
run partition-etcd-async partition --service patroni
run partition-etcd-sync partition --service patroni --replication sync
run partition-etcd-sync-strict partition --service patroni --replication sync-strict
run partition-zookeeper-async partition --service patroni --dcs zookeeper
# Planned: the 5 s target with nothing lost.
run switchover-etcd switchover --service patroni --trials 3
# The consensus store's own leader: its term or epoch changes, the database's leader need not.
run store-leader-kill-etcd kill --service consensus
run store-leader-kill-zookeeper kill --service consensus --dcs zookeeper
echo "stage8-drills: done, files in $out" >&2
