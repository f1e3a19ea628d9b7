#!/usr/bin/env bash
# realworld-api-tests.sh - run the RealWorld project's own API test suite against a running server.
#
# What: runs the upstream RealWorld "Conduit" API acceptance suite (Hurl files, vendored unchanged
#   under tests/realworld-api/specs/api/hurl/, see tests/realworld-api/README.md for the exact
#   source) against a server that is already running, and exits non-zero if any assertion fails.
# Why: every stage of this project must serve exactly the RealWorld API (shared/realworld/openapi.yml);
#   the project's own tests are not enough, the RealWorld project's suite is the external judge.
# How:
#   scripts/realworld-api-tests.sh http://127.0.0.1:8080            # whole suite (13 files)
#   scripts/realworld-api-tests.sh http://127.0.0.1:8080 auth feed  # a subset (file names, .hurl optional)
#   scripts/realworld-api-tests.sh --install-only                   # only make sure the runner is there
#   The argument is the server's origin: the suite itself calls {{host}}/api/... .
#   The runner (Hurl, pinned) is installed once, only if missing, into .tools/hurl/ at the repository
#   root (keep .tools/ out of git). It is built from crates.io with `cargo install --locked`; its
#   build needs pkg-config, libxml2-dev, libclang-dev and libssl-dev, which this script installs
#   with apt-get when it runs as root and they are missing. A Hurl already on PATH (or HURL=/path)
#   is used instead when its version is the pinned one.
#   Every run uses a fresh suffix (UID_VAL, default: epoch seconds + PID) in all usernames, emails,
#   titles and tags, so it can run again and again against the same database.
# Environment (all optional):
#   UID_VAL             suffix for this run's users/articles (letters and digits only)
#   HURL                path of a hurl binary to use as is
#   HURL_VERSION        version to install (default 8.0.1; needs rustc >= 1.95)
#   TOOLS_DIR           where to install (default <repo>/.tools)
#   HURL_REPORT_DIR     if set, also write JUnit (junit.xml) and HTML reports there
#   REALWORLD_WAIT_SECS seconds to wait for the server to accept connections (default 0)
# Exit status: 0 all files passed; 1 some assertion failed (or hurl error); 2 usage or setup error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE_DIR="$ROOT/tests/realworld-api/specs/api/hurl"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
HURL_VERSION="${HURL_VERSION:-8.0.1}"
HURL_ROOT="$TOOLS_DIR/hurl"
LOCAL_HURL="$HURL_ROOT/bin/hurl"

die() { echo "realworld-api-tests: $*" >&2; exit 2; }
log() { echo "realworld-api-tests: $*" >&2; }

usage() {
  sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

hurl_version_of() { "$1" --version 2>/dev/null | head -n1 | awk '{print $2}'; }

# Debian packages the hurl crate needs at build time (libxml2 via pkg-config, bindgen needs libclang,
# the bundled libcurl needs OpenSSL headers).
build_deps_missing() {
  local missing=() p
  command -v dpkg-query >/dev/null 2>&1 || return 0
  for p in pkg-config libxml2-dev libclang-dev libssl-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[*]:-}"
}

install_hurl() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: cannot build hurl $HURL_VERSION (or set HURL=/path/to/hurl)"
  local missing
  missing="$(build_deps_missing)"
  if [[ -n "$missing" ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "installing build dependencies: $missing"
      local pkgs
      read -r -a pkgs <<<"$missing"
      export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
      apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1; } \
        || die "apt-get install $missing failed"
    else
      die "missing build dependencies (install them first): $missing"
    fi
  fi
  log "building hurl $HURL_VERSION from crates.io into $HURL_ROOT (one-time, a few minutes)"
  mkdir -p "$HURL_ROOT"
  local start=$SECONDS
  cargo install hurl --version "$HURL_VERSION" --locked --root "$HURL_ROOT" --quiet \
    || die "cargo install hurl $HURL_VERSION failed"
  log "hurl $HURL_VERSION installed in $((SECONDS - start)) s"
}

# Sets HURL_BIN: $HURL if given, else a pinned-version hurl already present (local, then PATH),
# else builds it. Installation is serialised with a lock so parallel callers build it once.
ensure_hurl() {
  if [[ -n "${HURL:-}" ]]; then
    [[ -x "$HURL" ]] || die "HURL=$HURL is not executable"
    HURL_BIN="$HURL"; return
  fi
  if [[ -x "$LOCAL_HURL" && "$(hurl_version_of "$LOCAL_HURL")" == "$HURL_VERSION" ]]; then
    HURL_BIN="$LOCAL_HURL"; return
  fi
  if command -v hurl >/dev/null 2>&1 && [[ "$(hurl_version_of "$(command -v hurl)")" == "$HURL_VERSION" ]]; then
    HURL_BIN="$(command -v hurl)"; return
  fi
  mkdir -p "$TOOLS_DIR"
  exec 9>"$TOOLS_DIR/.hurl-install.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if ! [[ -x "$LOCAL_HURL" && "$(hurl_version_of "$LOCAL_HURL")" == "$HURL_VERSION" ]]; then
    install_hurl
  fi
  exec 9>&-
  [[ "$(hurl_version_of "$LOCAL_HURL")" == "$HURL_VERSION" ]] || die "hurl $HURL_VERSION not usable at $LOCAL_HURL"
  HURL_BIN="$LOCAL_HURL"
}

[[ $# -ge 1 ]] || usage
case "$1" in
  -h|--help) usage ;;
  --install-only)
    ensure_hurl
    echo "$HURL_BIN ($("$HURL_BIN" --version | head -n1))"
    exit 0 ;;
esac

BASE="${1%/}"; shift
[[ "$BASE" =~ ^https?://[^/]+$ ]] || die "expected the server origin like http://127.0.0.1:8080 (no path; the suite adds /api), got: $BASE"
[[ -d "$SUITE_DIR" ]] || die "suite not found at $SUITE_DIR"

UID_VAL="${UID_VAL:-$(date +%s)$$}"
[[ "$UID_VAL" =~ ^[A-Za-z0-9]+$ ]] || die "UID_VAL must be letters and digits only, got: $UID_VAL"

FILES=()
if [[ $# -eq 0 ]]; then
  FILES=("$SUITE_DIR"/*.hurl)
else
  for name in "$@"; do
    f="$SUITE_DIR/${name%.hurl}.hurl"
    [[ -f "$f" ]] || die "no such suite file: $f"
    FILES+=("$f")
  done
fi

ensure_hurl

wait_secs="${REALWORLD_WAIT_SECS:-0}"
deadline=$((SECONDS + wait_secs))
while ! curl -s -o /dev/null --max-time 5 "$BASE/api/tags"; do
  if (( SECONDS >= deadline )); then
    log "warning: nothing answers at $BASE (hurl will report the connection errors)"
    break
  fi
  sleep 1
done

REPORT_ARGS=()
if [[ -n "${HURL_REPORT_DIR:-}" ]]; then
  mkdir -p "$HURL_REPORT_DIR"
  REPORT_ARGS=(--report-junit "$HURL_REPORT_DIR/junit.xml" --report-html "$HURL_REPORT_DIR/html")
fi

log "hurl $("$HURL_BIN" --version | head -n1 | awk '{print $2}') against $BASE with uid=$UID_VAL (${#FILES[@]} file(s))"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
set +e
# Same options as upstream specs/api/run-api-tests-hurl.sh: test mode, one file at a time.
# Plus --error-format long: a failed assertion shows the response's headers and body (the error
# body says which limit or fault answered).
"$HURL_BIN" --test --jobs 1 --error-format long \
  --variable "host=$BASE" \
  --variable "uid=$UID_VAL" \
  ${REPORT_ARGS[@]+"${REPORT_ARGS[@]}"} \
  "${FILES[@]}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e

# One plain closing line that CI can read: files that passed and failed.
plain="$(sed 's/\x1b\[[0-9;]*m//g' "$out")"
passed="$(grep -c '^Success ' <<<"$plain" || true)"
failed="$(grep -c '^Failure ' <<<"$plain" || true)"
if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=$(( ${#FILES[@]} - passed )); fi
echo "realworld-api: $passed passed, $failed failed"
exit $(( status == 0 ? 0 : 1 ))
