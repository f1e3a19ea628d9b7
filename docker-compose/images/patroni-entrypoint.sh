#!/bin/sh
# patroni-entrypoint: a stage 8 database host, Patroni (PyPI's) running PostgreSQL (Debian's).
#
# What: hands the data volume to the `postgres` user, fills in what only this host knows (the
# addresses the others reach it at, from its name; the roles' passwords, from the secret), and
# runs Patroni in the foreground as `postgres` with the shared settings
# (docker-compose/images/patroni.yml). Patroni does the rest: the first host to take the
# store's initialize key runs initdb and the post-bootstrap script (the app's role and
# database); every other host copies the primary with pg_basebackup and follows it.
# Environment: PATRONI_NAME (the host's service name, which the others resolve), PATRONI_ETCD3_HOSTS,
# POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, POSTGRES_USER and POSTGRES_DB (the app's role
# and database, for the post-bootstrap script).
set -eu

: "${PATRONI_NAME:?set PATRONI_NAME (the host name the other hosts reach this one at)}"
: "${PATRONI_ETCD3_HOSTS:?set PATRONI_ETCD3_HOSTS (the consensus store members, host:port,...)}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
fi
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}"
export POSTGRES_PASSWORD

export PATRONI_RESTAPI_CONNECT_ADDRESS="$PATRONI_NAME:8008"
export PATRONI_POSTGRESQL_CONNECT_ADDRESS="$PATRONI_NAME:5432"
# One password for the superuser, replication and rewind roles, as for the app's: the stage's
# network is its own, and one generated secret is one thing to rotate.
export PATRONI_SUPERUSER_PASSWORD="$POSTGRES_PASSWORD"
export PATRONI_REPLICATION_PASSWORD="$POSTGRES_PASSWORD"
export PATRONI_REWIND_PASSWORD="$POSTGRES_PASSWORD"

# A new named volume is owned by root: hand it to the server's user (0700, as PostgreSQL wants).
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"

exec setpriv --reuid=postgres --regid=postgres --init-groups patroni /etc/archlab/patroni.yml
