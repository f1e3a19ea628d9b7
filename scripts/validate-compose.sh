#!/usr/bin/env bash
# Validate every Docker Compose file in docker-compose/ without a Docker engine.
#
# What: runs `config -q` (parse, interpolate, check against the Compose schema, print nothing) on
# each docker-compose/*.yml and prints one line per file and validator.
# Why: the compose path cannot be brought up on machines without a Docker daemon (CI included),
# but a file that does not even parse would only be found by a user. `config -q` needs no daemon.
# Which validator: `docker-compose` (the Debian package, 1.29.2; scripts/setup.sh installs it) and,
# where a working plugin exists, `docker compose` (v2). When both are present the files are checked
# with both, because the files promise to work with both.
#
# Usage, from any directory:   bash scripts/validate-compose.sh
# Exit status: 0 if every file is valid; 1 on the first invalid file or if no validator is found.
set -euo pipefail

# Work from the repository root, wherever the script is called from: the compose files use
# paths relative to their own folder, and the file list below is relative to the root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The validators found, each as a command line (docker-compose | docker compose).
validators=()
if command -v docker-compose >/dev/null 2>&1; then
    validators+=("docker-compose")
fi
# The docker CLI may exist without the compose plugin; only a plugin that answers counts.
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    validators+=("docker compose")
fi
if [ "${#validators[@]}" -eq 0 ]; then
    echo "validate-compose: neither docker-compose nor the docker compose plugin was found." >&2
    echo "  install it with scripts/setup.sh, or directly: apt-get install -y docker-compose" >&2
    exit 1
fi

shopt -s nullglob
files=(docker-compose/*.yml)
if [ "${#files[@]}" -eq 0 ]; then
    echo "validate-compose: no docker-compose/*.yml files to check" >&2
    exit 1
fi

for file in "${files[@]}"; do
    for validator in "${validators[@]}"; do
        # Word splitting of $validator is intended: "docker compose" is a command and a subcommand.
        # shellcheck disable=SC2086
        if output=$($validator -f "$file" config -q 2>&1); then
            echo "ok      $file  ($validator)"
        else
            echo "INVALID $file  ($validator)"
            printf '%s\n' "$output" | sed 's/^/    /'
            exit 1
        fi
    done
done
