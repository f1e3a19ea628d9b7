#!/usr/bin/env bash
# Validate the Docker Compose files and the Grafana dashboard without starting anything.
#
# What: runs `config -q` (parse, resolve `extends:` from hosts.yml, interpolate, check against the
# Compose schema) on every stage file docker-compose/NN-name.yml, with placeholder secrets, and
# checks that the provisioned Grafana dashboard is what stages/lab/monitor/panels.json gives
# (scripts/monitor-dashboards.py --check). One line per check.
# Why: a file that does not parse, or a dashboard that drifted from the panels, is found in
# seconds here; scripts/compose.sh test then runs every stage for real.
# Which validator: `docker-compose` (the Debian package, 1.29.2; scripts/setup.sh installs it) and,
# where a working plugin exists, `docker compose` (v2): the files promise to work with both.
#
# Usage, from any directory:   bash scripts/validate-compose.sh
# Exit status: 0 if everything is valid; 1 on the first invalid file or if no validator is found.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

validators=()
command -v docker-compose >/dev/null 2>&1 && validators+=("docker-compose")
# The docker CLI may exist without the compose plugin; only a plugin that answers counts.
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    validators+=("docker compose")
fi
if [ "${#validators[@]}" -eq 0 ]; then
    echo "validate-compose: neither docker-compose nor the docker compose plugin was found." >&2
    echo "  install it with scripts/setup.sh, or directly: apt-get install -y docker-compose" >&2
    exit 1
fi

# Placeholders for the secrets scripts/compose.sh generates: the files refuse to load without them.
env_file="$(mktemp)"
trap 'rm -f "$env_file"' EXIT
printf 'JWT_SECRET=placeholder\nFILE_WRITE_KEY=placeholder\nDB_PASSWORD=placeholder\nPURGE_KEY=placeholder\n' >"$env_file"
printf 'GARAGE_RPC_SECRET=placeholder\nGARAGE_ADMIN_TOKEN=placeholder\nS3_KEY_ID=placeholder\nS3_KEY_SECRET=placeholder\n' >>"$env_file"

shopt -s nullglob
files=(docker-compose/[0-9][0-9]-*.yml)
[ "${#files[@]}" -gt 0 ] || { echo "validate-compose: no docker-compose/NN-name.yml files" >&2; exit 1; }
for file in "${files[@]}"; do
    for validator in "${validators[@]}"; do
        # Word splitting of $validator is intended: "docker compose" is a command and a subcommand.
        # shellcheck disable=SC2086
        if output=$($validator --env-file "$env_file" -f "$file" config -q 2>&1); then
            echo "ok      $file  ($validator)"
        else
            echo "INVALID $file  ($validator)"
            printf '%s\n' "$output" | sed 's/^/    /'
            exit 1
        fi
    done
done
python3 scripts/monitor-dashboards.py --check
