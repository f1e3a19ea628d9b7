#!/usr/bin/env bash
# Installs what archlab's native lab, benchmarks and tests need, and nothing that is already there.
#
#   scripts/setup.sh                   # as root, or as a user with sudo
#   scripts/setup.sh --without-garage  # all but Garage (scripts/install-garage.sh, ~7 min of build)
#
# Debian 12 / Ubuntu 22.04+: installs the OS packages below with apt-get (one `apt-get update`,
# only when something is missing). Elsewhere it names what to install and stops.
# The Rust toolchain itself is expected (https://rustup.rs); this script does not install it.
set -euo pipefail
without_garage=no
case "${1:-}" in
  --without-garage) without_garage=yes ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--without-garage]" >&2; exit 2 ;;
esac

# package -> why archlab needs it
declare -A WHY=(
  [postgresql]="the database of every stage (server binaries under /usr/lib/postgresql)"
  [redis-server]="the cache host of stage 3 onwards (run by the lab as a child process)"
  [cmake]="building the gateway: pingora's zlib-ng needs it (libz-ng-sys)"
  [haproxy]="the gateway's cost comparison in stage 4 (HAProxy as the same round-robin proxy)"
  [varnish]="the edge's cost comparison in stage 6 (Varnish caching the same responses; scripts/bench/edge.py)"
  [wrk]="HTTP load for the stage benchmarks until the bundled harness replaces it"
  [strace]="system calls per request in scripts/bench/gateway.py"
  [docker-compose]="the Docker Compose way to run a stage (scripts/compose.sh; compose v1, 1.29)"
  [docker.io]="the Docker engine scripts/compose.sh starts when none runs (skipped when a dockerd exists, e.g. Docker CE)"
  [debootstrap]="a Debian base image made from the apt mirror when no image registry is reachable"
  [prometheus]="the monitoring host of \`archlab up N --monitor\` (and of the compose files' images)"
  [prometheus-postgres-exporter]="the database's metrics for the monitoring host"
  [prometheus-redis-exporter]="the cache's metrics for the monitoring host"
  [curl]="the walkthroughs' curl sessions and the API test runner's download"
  [ca-certificates]="HTTPS for package downloads"
  [nginx]="a trivial fixed-response server for calibrating the harness (and the file host of stage 2)"
  [chromium]="headless check that the HTML report renders (tests)"
  [python3]="the benchmark scripts (scripts/bench/*.py) and the hostile-client runs"
  [etcd-server]="the consensus store of stage 8 (three members, Raft), which Patroni decides failover through"
  [etcd-client]="etcdctl: the stage 8 drills read the etcd leader and term with it; tests write keys with it"
  [zookeeper]="stage 8's other consensus store (ZAB), started as a plain JVM process"
  [iptables]="stage 8's isolate and partition drills cut one database host off the loopback network by its processes' owner"
  [python3-venv]="private Python environments: Patroni's (below) and schemathesis's, the API fuzzer (scripts/schemathesis-stage.sh)"
)
PACKAGES=(postgresql redis-server cmake haproxy varnish nginx wrk strace docker-compose docker.io debootstrap
  prometheus prometheus-postgres-exporter prometheus-redis-exporter curl ca-certificates python3 python3-venv chromium
  etcd-server etcd-client zookeeper iptables)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${PACKAGES[@]}"; do
    # Another Docker engine (Docker CE's docker-ce) conflicts with Debian's docker.io: keep it.
    if [ "$p" = docker.io ] && command -v dockerd >/dev/null 2>&1; then continue; fi
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
else
  echo "This is not a Debian/Ubuntu system. Install the equivalents of:" >&2
  for p in "${PACKAGES[@]}"; do echo "  - $p: ${WHY[$p]}" >&2; done
  echo "then set ARCHLAB_PG_BIN to the folder holding PostgreSQL's 'postgres' and 'initdb'." >&2
  exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: every system package archlab needs is installed"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "setup: installing ${missing[*]}"
  for p in "${missing[@]}"; do echo "  - $p: ${WHY[$p]}"; done
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Garage, the object store of stages 7 and 8: built from its crate (scripts/install-garage.sh says
# more), unless the caller builds it later itself (scripts/test does, beside its first tests).
if [ "$without_garage" = no ]; then
  bash "$(dirname "$0")/install-garage.sh"
fi
# Patroni, stage 8's failover manager: PyPI's release in a Python environment of its own, every
# library pinned (scripts/patroni-requirements.txt), not Debian 12's 3.0.2, which can give a
# primary frozen past its TTL the leader key back and so lose acknowledged writes
# (stages/lab/src/installed.rs says more; the lab looks for it there, `PATRONI`). About 10 s.
PATRONI_VERSION=3.1.2
if [ "$(id -u)" -eq 0 ]; then
  PATRONI_ROOT="/opt/archlab/patroni-$PATRONI_VERSION"
else
  PATRONI_ROOT="${XDG_DATA_HOME:-$HOME/.local/share}/archlab/patroni-$PATRONI_VERSION"
fi
REQUIREMENTS="$(dirname "$0")/patroni-requirements.txt"
if [ -n "${ARCHLAB_PATRONI_BIN:-}" ] && [ -x "$ARCHLAB_PATRONI_BIN" ]; then
  echo "setup: patroni is $ARCHLAB_PATRONI_BIN"
elif [ -x "$PATRONI_ROOT/bin/patroni" ] && cmp -s "$REQUIREMENTS" "$PATRONI_ROOT/requirements.txt"; then
  echo "setup: patroni $PATRONI_VERSION is installed ($PATRONI_ROOT/bin/patroni)"
else
  echo "setup: installing patroni $PATRONI_VERSION into $PATRONI_ROOT (stage 8's failover manager, from PyPI)"
  # The copy of the requirements goes in last: without it (a failed install) the next run starts
  # over. (A Python environment cannot be made elsewhere and moved: its programs name their
  # folder.) Debian's Python, which the database hosts' users can run.
  rm -rf "$PATRONI_ROOT"
  /usr/bin/python3 -m venv "$PATRONI_ROOT"
  "$PATRONI_ROOT/bin/pip" install --quiet --disable-pip-version-check --use-pep517 -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$PATRONI_ROOT/requirements.txt"
fi
echo "setup: done"
