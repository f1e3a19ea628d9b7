#!/usr/bin/env bash
# Garage, the object store of stage 7 (and of stage 8, which keeps stage 7's front): no Debian
# package, so built from its crate once and kept (about 7 minutes on 2 cores). AGPL: archlab runs
# its binary and never links it. The lab looks for it in the same place
# (stages/lab/src/installed.rs, `GARAGE`), or at $ARCHLAB_GARAGE_BIN.
#
#   scripts/install-garage.sh     # scripts/setup.sh calls it; scripts/test runs it beside the tests
#
# Two runs at once build it once: the second waits for the first (a lock beside the install).
set -euo pipefail

GARAGE_VERSION=2.5.0
if [ "$(id -u)" -eq 0 ]; then
  GARAGE_ROOT="/opt/archlab/garage-$GARAGE_VERSION"
else
  GARAGE_ROOT="${XDG_DATA_HOME:-$HOME/.local/share}/archlab/garage-$GARAGE_VERSION"
fi
if [ -n "${ARCHLAB_GARAGE_BIN:-}" ] && [ -x "$ARCHLAB_GARAGE_BIN" ]; then
  echo "setup: garage is $ARCHLAB_GARAGE_BIN"
  exit 0
fi
mkdir -p "$(dirname "$GARAGE_ROOT")"
exec 9>"$GARAGE_ROOT.lock"
flock 9
if [ -x "$GARAGE_ROOT/bin/garage" ]; then
  echo "setup: garage $GARAGE_VERSION is installed ($GARAGE_ROOT/bin/garage)"
  exit 0
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is needed to build garage (https://rustup.rs)" >&2; exit 1; }
echo "setup: building garage $GARAGE_VERSION into $GARAGE_ROOT (the object store of stage 7; once, about 7 minutes)"
started=$SECONDS
# Its own target folder, so a failed build leaves nothing half-installed in $GARAGE_ROOT.
cargo install garage --locked --quiet --version "$GARAGE_VERSION" --root "$GARAGE_ROOT" \
  --target-dir "${TMPDIR:-/tmp}/archlab-garage-build"
rm -rf "${TMPDIR:-/tmp}/archlab-garage-build"
echo "setup: garage $GARAGE_VERSION built in $((SECONDS - started)) s"
