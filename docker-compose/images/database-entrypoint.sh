#!/bin/sh
# database-entrypoint: PostgreSQL from Debian's package as a container's one server.
#
# What: on first start (an empty data volume) it runs initdb and creates the app's login role
# and database, the same shape as the native lab (stages/lab/src/postgres.rs, ensure_database):
# `postgres` is the superuser, reachable only inside the container; the app's role
# ($POSTGRES_USER) owns its database ($POSTGRES_DB), logs in over the network with a password
# (scram-sha-256), and may read the server's statistics (pg_monitor) for the exporter on the
# monitoring host. `pg_stat_statements` is preloaded and created, as in the lab. Then it runs
# the server in the foreground as the `postgres` user, every `-c` argument passed on.
# Why a script of our own: the image is Debian's PostgreSQL, not the official `postgres` image,
# so both ways of running a stage run the same server build; this is the part of the official
# image's entrypoint a stage needs, and no more.
# Environment: POSTGRES_USER, POSTGRES_DB, and POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (a
# Docker secret); PGDATA (set by the image).
#
# A replica (stage 5): with REPLICA_OF=<primary host> and REPLICA_NAME=<name>, first start copies
# the primary with pg_basebackup (as the `replicator` role, same password) and starts as its hot
# standby, streaming its WAL. Unlike the native lab it uses no replication slot: containers are
# disposable, and a slot left by a removed container would make the primary keep WAL for ever;
# the primary keeps `wal_keep_size` of WAL instead (stage 5's compose file), enough for a
# replica restarted within minutes.
set -eu

: "${POSTGRES_USER:?set POSTGRES_USER (the app role)}"
: "${POSTGRES_DB:?set POSTGRES_DB (the app database)}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
fi
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}"

# A new named volume is owned by root: hand it to the server's user.
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ -n "${REPLICA_OF:-}" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${REPLICA_NAME:?set REPLICA_NAME (the replica's application_name on the primary)}"
    echo "database-entrypoint: copying $REPLICA_OF as replica $REPLICA_NAME"
    conninfo="host=$REPLICA_OF user=replicator password=$POSTGRES_PASSWORD application_name=$REPLICA_NAME"
    as_postgres pg_basebackup --pgdata="$PGDATA" --wal-method=stream --checkpoint=fast \
        --dbname="$conninfo"
    # Starts as a standby of the primary: what `pg_basebackup -R` would write, spelled out.
    as_postgres sh -c "echo \"primary_conninfo = '$conninfo'\" >> '$PGDATA/postgresql.auto.conf'"
    as_postgres touch "$PGDATA/standby.signal"
    echo "database-entrypoint: replica ready"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "database-entrypoint: initialising $PGDATA"
    as_postgres initdb --pgdata="$PGDATA" --username=postgres --auth-local=peer \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    # Every container of the stage's network may connect, with a password (the network is the
    # stage's own; nothing is published), replicas too. initdb's default only allows loopback.
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # The role and database through a server that listens only on its socket, so nothing can
    # connect before they exist (a health check over TCP stays red until the real start).
    as_postgres pg_ctl --pgdata="$PGDATA" --silent --wait \
        -o "-c listen_addresses='' -c shared_preload_libraries=pg_stat_statements" start
    # psql's variables quote the identifiers and the password (:"name", :'value').
    as_postgres psql --quiet --no-psqlrc --set ON_ERROR_STOP=1 --dbname postgres \
        --set role="$POSTGRES_USER" --set db="$POSTGRES_DB" --set pw="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
CREATE ROLE replicator REPLICATION LOGIN PASSWORD :'pw';
GRANT pg_monitor TO :"role";
CREATE DATABASE :"db" OWNER :"role";
\connect :"db"
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
    as_postgres pg_ctl --pgdata="$PGDATA" --silent --wait --mode=fast stop
    echo "database-entrypoint: initialised"
fi

# The same base settings as the native lab (postgres.rs, BASE_SETTINGS), plus the network.
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" \
    -c listen_addresses='*' \
    -c shared_preload_libraries=pg_stat_statements \
    -c pg_stat_statements.track=top \
    -c pg_stat_statements.track_utility=off \
    -c max_prepared_transactions=64 \
    -c log_autovacuum_min_duration=0 \
    -c random_page_cost=1.1 \
    "$@"
