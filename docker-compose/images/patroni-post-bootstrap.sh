#!/bin/sh
# patroni-post-bootstrap: run by Patroni once, on the host that made the cluster, after initdb
# and before it takes the leader key; its first argument is a connection string to the new
# server as the superuser. It makes what the app needs, as the database image's entrypoint does
# for stages 1 to 7 (docker-compose/images/database-entrypoint.sh): the app's login role with
# the stage's password, allowed to read the server's statistics (pg_monitor, for the exporter),
# its database, and pg_stat_statements in it. Replicas copy all of it. A failure here fails the
# bootstrap, so no half-made cluster ever takes the leader key.
set -eu
: "${POSTGRES_USER:?set POSTGRES_USER (the app role)}"
: "${POSTGRES_DB:?set POSTGRES_DB (the app database)}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
# psql's variables quote the identifiers and the password (:"name", :'value').
psql --quiet --no-psqlrc --set ON_ERROR_STOP=1 --dbname "$1" \
    --set role="$POSTGRES_USER" --set db="$POSTGRES_DB" --set pw="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
GRANT pg_monitor TO :"role";
CREATE DATABASE :"db" OWNER :"role";
\connect :"db"
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
echo "patroni-post-bootstrap: role $POSTGRES_USER and database $POSTGRES_DB made"
