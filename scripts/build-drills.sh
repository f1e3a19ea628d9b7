#!/usr/bin/env bash
# Builds the app with its fault injection points (the `drills` feature of services/conduit) as
# `target/<profile>/conduit-drills`, beside the plain `conduit`, which stays as it was: only
# `archlab drill ... coordinator-crash` starts the drills build, so no other run can be made
# to crash on purpose.
#
#   scripts/build-drills.sh            # debug, as scripts/test builds
#   scripts/build-drills.sh --release  # for committed drill results
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=debug
flags=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  flags=(--release)
fi
# The whole workspace, so every other crate's features resolve as in the plain build and only
# the app is compiled again (nothing else depends on it).
cargo build --workspace --locked "${flags[@]}" --features conduit/drills
cp "target/$profile/conduit" "target/$profile/conduit-drills.tmp"
mv "target/$profile/conduit-drills.tmp" "target/$profile/conduit-drills"
# The plain app back in place (its artifacts are cached: a relink).
cargo build --workspace --locked "${flags[@]}"
echo "built target/$profile/conduit-drills"
