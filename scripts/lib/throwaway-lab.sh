# Sourced, not run: a stage in a throwaway lab (own state folder, own loopback network), for the
# scripts that test a stage from outside (scripts/realworld-stage.sh, scripts/schemathesis-stage.sh).
#
#   throwaway_lab_up STAGE NET   brings STAGE up on 127.NET.x.y; sets $endpoint and $lab_state;
#                                brings it down and removes the folder when the script exits
#   print_host_warnings          every warning and error the stage's app hosts, gateway and
#                                edges logged (colours stripped), for a failure's report

throwaway_lab_up() {
  local stage="$1"
  # Globals, not locals: the exit trap runs after this function has returned.
  lab_net="$2"
  lab_profile="${ARCHLAB_PROFILE:-debug}"
  lab_state="$(mktemp -d /tmp/archlab-throwaway.XXXXXX)"
  chmod 755 "$lab_state"   # PostgreSQL runs as the postgres user when we are root
  lab_archlab() { "target/$lab_profile/archlab" --state-dir "$lab_state" --net "$lab_net" "$@"; }
  trap 'lab_archlab down >/dev/null 2>&1 || true; rm -rf "$lab_state"' EXIT
  local up_output
  # Not `tee /dev/stderr`: reopening stderr truncates it when it is a log file.
  up_output="$(lab_archlab up "$stage")"
  printf '%s\n' "$up_output" >&2
  endpoint="$(printf '%s\n' "$up_output" | sed -n 's/^endpoint: //p' | tail -n1)"
  [ -n "$endpoint" ] || { echo "stage $stage did not come up" >&2; exit 1; }
}

print_host_warnings() {
  echo "--- warnings and errors logged by the stage's hosts ---" >&2
  find "$lab_state" \( -name app.log -o -name gateway.log -o -name edge.log \) -print0 |
    while IFS= read -r -d '' log; do
      sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E ' (WARN|ERROR) ' | tail -n 40 |
        sed "s|^|${log#"$lab_state"/}: |" >&2 || true
    done
}
