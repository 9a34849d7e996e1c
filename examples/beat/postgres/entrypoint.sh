#!/bin/sh
# Initialise $PGDATA on first start (the superuser `postgres`, password from $POSTGRES_PASSWORD,
# required from any address; no password over the local socket, for `kubectl exec ... psql`), then
# run the server in the foreground as PID 1, so a pod's SIGTERM stops it (smart shutdown).
set -eu
: "${PGDATA:?PGDATA must name the data directory}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (the password of the user postgres)}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username=postgres --pwfile="$password_file" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-instructions -D "$PGDATA" > /dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
# The socket goes to /tmp (a writable volume): the image's root file system may be read-only.
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
