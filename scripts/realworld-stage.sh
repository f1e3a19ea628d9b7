#!/usr/bin/env bash
# Brings stage N up in a throwaway lab (own state folder, own loopback network), runs the
# RealWorld project's API suite against its endpoint, and brings it down again.
#
#   scripts/realworld-stage.sh 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stage="${1:?usage: scripts/realworld-stage.sh STAGE}"
. scripts/lib/throwaway-lab.sh

throwaway_lab_up "$stage" 240
# On a failure, what the hosts said about it, so a CI log shows why a request got, say, a 503.
if ! bash scripts/realworld-api-tests.sh "$endpoint"; then
  print_host_warnings
  exit 1
fi
