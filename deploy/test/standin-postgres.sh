#!/bin/sh
# A PostgreSQL 15 server run the way the official postgres image runs one:
# a cluster owned by POSTGRES_USER (default postgres) with the password from
# POSTGRES_PASSWORD_FILE, the database POSTGRES_DB, data in PGDATA, password
# authentication from the network. As root it runs the server as `postgres`;
# as any other user (the scratch server runs as uid 10001), as that user.
set -eu
data=${PGDATA:-/var/lib/postgresql/data}
bin=/usr/lib/postgresql/15/bin
user=${POSTGRES_USER:-postgres}
as_server() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}
if [ "$(id -u)" = 0 ]; then
  install -d -o postgres -g postgres -m 0700 "$data"
  install -d -o postgres -g postgres /run/postgresql
else
  mkdir -p "$data" && chmod 0700 "$data"
fi
if [ ! -s "$data/PG_VERSION" ]; then
  password_file=$(mktemp)
  cat "$POSTGRES_PASSWORD_FILE" >"$password_file"
  [ "$(id -u)" = 0 ] && chown postgres "$password_file"
  as_server "$bin/initdb -D '$data' -U '$user' --pwfile='$password_file' --auth-local=trust --auth-host=scram-sha-256" >/dev/null
  rm -f "$password_file"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$user\";" |
      as_server "$bin/postgres --single -D '$data' postgres" >/dev/null
  fi
fi
exec_server="exec $bin/postgres -D '$data' -c listen_addresses='*' -c unix_socket_directories=/run/postgresql"
if [ "$(id -u)" = 0 ]; then
  exec su postgres -s /bin/sh -c "$exec_server"
fi
exec sh -c "$exec_server"
