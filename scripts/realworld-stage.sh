#!/usr/bin/env bash
# Brings stage N up in a throwaway lab (own state folder, own loopback network), runs the
# RealWorld project's API suite against its endpoint, and brings it down again.
#
#   scripts/realworld-stage.sh 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stage="${1:?usage: scripts/realworld-stage.sh STAGE}"
profile="${ARCHLAB_PROFILE:-debug}"

state="$(mktemp -d /tmp/archlab-realworld.XXXXXX)"
chmod 755 "$state"   # PostgreSQL runs as the postgres user when we are root
archlab() { "target/$profile/archlab" --state-dir "$state" --net 240 "$@"; }
cleanup() { archlab down >/dev/null 2>&1 || true; rm -rf "$state"; }
trap cleanup EXIT

# Not `tee /dev/stderr`: reopening stderr truncates it when it is a log file.
up_output="$(archlab up "$stage")"
printf '%s\n' "$up_output" >&2
endpoint="$(printf '%s\n' "$up_output" | sed -n 's/^endpoint: //p' | tail -n1)"
[ -n "$endpoint" ] || { echo "stage $stage did not come up" >&2; exit 1; }
# On a failure, what the hosts said about it: every warning and error the app hosts and the
# gateway logged (colours stripped), so a CI log shows why a request got, say, a 503.
if ! bash scripts/realworld-api-tests.sh "$endpoint"; then
  echo "--- warnings and errors logged by the stage's hosts ---" >&2
  find "$state" \( -name app.log -o -name gateway.log -o -name edge.log \) -print0 |
    while IFS= read -r -d '' log; do
      sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E ' (WARN|ERROR) ' | tail -n 40 |
        sed "s|^|${log#"$state"/}: |" >&2 || true
    done
  exit 1
fi
