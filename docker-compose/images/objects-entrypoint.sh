#!/bin/sh
# objects-entrypoint: one Garage node of stage 7's object store.
#
# What: writes the node's configuration from the environment (the same settings as the native
# lab's nodes, stages/lab/src/objects.rs, except that the node listens on its container's
# interface and its peers find it by service name), publishes its node id to the volume the
# stage's nodes share, and runs `garage server` in the foreground. The node named by
# FORMS_CLUSTER (the first) also forms the cluster once, in the background, as the lab's
# `ObjectCluster::form` does:
#   1. waits for every node's id in the shared volume (OBJECTS_NODES names them);
#   2. connects to each, gives each a role (zone `lab`, equal capacity) and applies the layout;
#   3. imports the app's key, makes the `media` bucket, allows the key on it and switches on the
#      bucket's anonymous web reads;
#   4. leaves a marker in its own volume, so a restart does not form it again.
# Until then no node has a quorum, so every node's health check (`GET /health` on the admin
# port: 200 once the node sees a quorum for every partition) stays red and nothing that depends
# on the store starts early. A failed forming is logged; `scripts/compose.sh down 7` (which
# deletes the volumes) and `up 7` start over.
#
# Environment: OBJECTS_NODE (this node's service name), OBJECTS_NODES (every node's, first
# first), FORMS_CLUSTER (set on the first), GARAGE_RPC_SECRET (64 hex digits, shared by the
# nodes), GARAGE_ADMIN_TOKEN, S3_KEY_ID and S3_KEY_SECRET (the app's key, imported at forming).
set -eu
: "${OBJECTS_NODE:?set OBJECTS_NODE (this node service name)}"
: "${OBJECTS_NODES:?set OBJECTS_NODES (every node service name)}"
: "${GARAGE_RPC_SECRET:?set GARAGE_RPC_SECRET (64 hex digits, the same on every node)}"
: "${GARAGE_ADMIN_TOKEN:?set GARAGE_ADMIN_TOKEN}"

root=/var/lib/garage
shared=/run/archlab-objects
config="$root/garage.toml"
mkdir -p "$root/meta" "$root/data"

# The lab's settings (objects.rs says why each), on the container's interface. The secret is in
# the file, so the file is the owner's only.
umask 077
cat >"$config" <<EOF
# Written by objects-entrypoint at every start: one node of the object store.
metadata_dir = "$root/meta"
data_dir = "$root/data"
db_engine = "lmdb"
replication_factor = 3
compression_level = "none"
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "0.0.0.0:3901"
rpc_public_addr = "$OBJECTS_NODE:3901"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
api_bind_addr = "0.0.0.0:3900"
s3_region = "garage"

[s3_web]
bind_addr = "0.0.0.0:3902"
root_domain = ".web.archlab"

[admin]
api_bind_addr = "0.0.0.0:3903"
admin_token = "$GARAGE_ADMIN_TOKEN"
EOF
umask 022
export RUST_LOG="${RUST_LOG:-garage=warn}"

cli() { garage -c "$config" "$@"; }
say() { echo "objects-entrypoint: $*" >&2; }

# Polls `$@` every half second until it succeeds, at most $1 seconds; 1 if it never did.
within() {
    limit="$1"; shift
    tries=$((limit * 2))
    while [ "$tries" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        tries=$((tries - 1))
        sleep 0.5
    done
    return 1
}

# This node's id (`<public key>@<service>:3901`), once its server has made its key, into the
# shared volume for the forming node. A minute: the server makes its key within a second.
publish_id() {
    within 60 cli node id -q || { say "no node id after 60 s"; return 1; }
    cli node id -q >"$shared/$OBJECTS_NODE.id.new"
    mv "$shared/$OBJECTS_NODE.id.new" "$shared/$OBJECTS_NODE.id"
}

form() {
    marker="$root/formed"
    [ -f "$marker" ] && return 0
    # Two minutes for every node's id: the nodes start together, each within seconds.
    for node in $OBJECTS_NODES; do
        within 120 test -s "$shared/$node.id" || { say "no id from $node after 120 s"; return 1; }
    done
    # The server answers RPC a moment after it writes its key.
    within 60 cli status || { say "this node's server does not answer"; return 1; }
    for node in $OBJECTS_NODES; do
        [ "$node" = "$OBJECTS_NODE" ] || cli node connect "$(cat "$shared/$node.id")"
    done
    for node in $OBJECTS_NODES; do
        id="$(cat "$shared/$node.id")"
        cli layout assign -z lab -c 1GB "${id%%@*}"
    done
    cli layout apply --version 1
    cli key import --yes -n app "${S3_KEY_ID:?set S3_KEY_ID}" "${S3_KEY_SECRET:?set S3_KEY_SECRET}"
    cli bucket create media
    cli bucket allow --read --write --owner media --key app
    cli bucket website --allow media
    touch "$marker"
    say "cluster formed: $OBJECTS_NODES"
}

publish_id &
if [ -n "${FORMS_CLUSTER:-}" ]; then
    ( form || say "forming the cluster failed (see above); down -v and up start over" ) &
fi
exec garage -c "$config" server
