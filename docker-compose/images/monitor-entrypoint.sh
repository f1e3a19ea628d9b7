#!/bin/sh
# monitor-entrypoint: the monitoring host's programs, from Debian's packages.
#
#   monitor-entrypoint prometheus          Prometheus, scraping what MONITOR_SCRAPE names
#   monitor-entrypoint postgres-exporter   the PostgreSQL exporter (DATA_SOURCE_NAME)
#   monitor-entrypoint redis-exporter      the Redis exporter (REDIS_ADDR)
#   monitor-entrypoint host-metrics        every container's CPU against its budget (container-metrics)
#
# MONITOR_SCRAPE: space-separated `job=name:port[/path]` pairs (path default /metrics). Each name
# is looked up in the stage network's DNS on every refresh (Prometheus's dns_sd_configs), so every
# replica of a scaled service (`app` in stage 4) is a target of its own.
# The dashboard (stages/lab/monitor/archlab.html, copied to /etc/archlab/consoles) is served by
# Prometheus itself at /consoles/archlab.html, beside the API it queries.
set -eu

# One thread per Go program: bursts on every core spend a small CPU quota in a fraction of a
# period (the native lab does the same).
export GOMAXPROCS="${GOMAXPROCS:-1}"

program="${1:-prometheus}"
[ $# -gt 0 ] && shift

case "$program" in
prometheus)
    : "${MONITOR_SCRAPE:?set MONITOR_SCRAPE to the job=name:port pairs to scrape}"
    config=/var/lib/prometheus/prometheus.yml
    {
        echo "# written by monitor-entrypoint from MONITOR_SCRAPE"
        echo "global:"
        # Every 2 s, as in the native lab (stages/lab/src/monitor.rs, SCRAPE_INTERVAL, which says
        # why not every second).
        echo "  scrape_interval: 2s"
        echo "  evaluation_interval: 2s"
        echo "scrape_configs:"
        for pair in $MONITOR_SCRAPE; do
            job="${pair%%=*}"
            target="${pair#*=}"
            path=/metrics
            case "$target" in */*) path="/${target#*/}"; target="${target%%/*}" ;; esac
            echo "  - job_name: $job"
            echo "    metrics_path: $path"
            echo "    dns_sd_configs:"
            echo "      - names: [\"${target%%:*}\"]"
            echo "        type: A"
            echo "        port: ${target##*:}"
            # A replica started by `up --scale` is scraped within 5 s; a lookup is one DNS query.
            echo "        refresh_interval: 5s"
        done
    } > "$config"
    # A day of samples: longer than any tour, and small on disk (stages/lab/src/monitor.rs).
    exec prometheus --config.file="$config" --storage.tsdb.path=/var/lib/prometheus/data \
        --storage.tsdb.retention.time=1d --web.listen-address=0.0.0.0:9090 \
        --web.console.templates=/etc/archlab/consoles \
        --web.console.libraries=/etc/prometheus/console_libraries "$@"
    ;;
postgres-exporter)
    : "${DATA_SOURCE_NAME:?set DATA_SOURCE_NAME to the database URL}"
    exec prometheus-postgres-exporter --web.listen-address=0.0.0.0:9187 "$@"
    ;;
redis-exporter)
    : "${REDIS_ADDR:?set REDIS_ADDR to redis://name:port}"
    exec prometheus-redis-exporter -web.listen-address=0.0.0.0:9121 -redis.addr="$REDIS_ADDR" "$@"
    ;;
host-metrics)
    exec python3 /usr/local/bin/container-metrics "$@"
    ;;
*)
    echo "monitor-entrypoint: unknown program '$program' (prometheus, postgres-exporter, redis-exporter, host-metrics)" >&2
    exit 2
    ;;
esac
