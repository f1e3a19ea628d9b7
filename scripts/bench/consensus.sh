#!/usr/bin/env bash
# The model checker's runs behind services/consensus/README.md's table of state counts: each
# `consensus check` configuration there, its full output (states, depth, seconds, every verdict
# and counterexample), in services/consensus/results/checks.txt, with the commit, machine and
# build it ran on. Small configurations run in the debug build (what `cargo test` uses), the
# bigger ones in the release build; each line of the table names its build.
#
#   bash scripts/bench/consensus.sh            # about two minutes once built
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build -q -p consensus
cargo build -q --release -p consensus
out=services/consensus/results/checks.txt
{
    echo "# consensus check runs: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- services/consensus ':!services/consensus/results' || echo ' (dirty)'), $(date -u +%FT%TZ)"
    echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(rustc --version)"
    run() {
        local build="$1"; shift
        echo
        echo "## $build: consensus check $*"
        "target/$build/consensus" check "$@" 2>&1 || true
    }
    run debug paxos
    run release paxos --readers 2
    run debug paxos --bug acceptor-forgets-accepted
    run debug paxos --bug acceptor-accepts-below-promise
    run debug paxos --bug proposer-ignores-promised-value
    run debug 2pc
    run debug 2pc --no-crash
    run release 2pc --rms 4
    run debug 2pc --bug coordinator-commits-on-missing-vote
    run debug 2pc --bug prepared-rm-gives-up
    run debug 3pc
    run debug 3pc --rms 2 --no-crash --partitions
    run debug 3pc --rms 2 --no-crash --partitions --exhaustive
    run debug 3pc --bug backup-commits-unless-aborted
    run debug paxos-commit --crash acceptor
    run debug paxos-commit --rms 1 --crash any-one
    run release paxos-commit --crash nobody
    run release paxos-commit
    run release paxos-commit --crash nobody --partitions
    run release paxos-commit --crash any-one
    run release paxos-commit --bug backup-ignores-accepted-votes
    run debug paxos-commit --acceptors 1 --bug backup-ignores-accepted-votes
    run debug multi-paxos
    run debug multi-paxos --no-crash
    run release multi-paxos --unordered
    run release multi-paxos --clients 2 --no-crash
    run debug multi-paxos --bug new-leader-ignores-promises
    run debug multi-paxos --bug acceptor-forgets-on-restart
    run debug multi-paxos --bug leader-reads-locally
    run debug zab --exhaustive --trace "commit carried by a follower"
    run debug zab --no-suspicions --exhaustive
    run debug zab --no-crash --exhaustive
    run release zab --writes 2 --exhaustive
    run release zab --candidates 3 --epochs 3 --exhaustive
    run debug zab --bug new-leader-skips-synchronisation
    run debug zab --bug leader-commits-without-quorum
} >"$out"
echo "written: $out"
