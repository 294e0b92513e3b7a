#!/usr/bin/env bash
# Runs the whole pipeline once on local defaults: a private NATS with
# JetStream, a local OpenSSH SFTP target with a pinned host key, a small
# Korrigo-like database, the five services, then `backupctl trigger --wait`,
# `backupctl list` and `backupctl doctor`. Its files live under .demo/ (or
# $DEMO_DIR).
#
# It changes the machine (install-deps.sh --throwaway-machine: servers
# installed, PostgreSQL trusting 127.0.0.1; a local account pgbackup-demo):
# run it on a throw-away machine, never on the Korrigo host.
#
# On exit, whether it succeeded, failed or was interrupted, it stops what it
# started and removes the demo database, the pgbackup-demo account and the
# demo directory (after a failure only the logs stay, in .demo/logs).
# DEMO_KEEP_RUNNING=1 leaves everything up after a success;
# `bash scripts/demo.sh --clean` removes it later.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/target/debug
demo=${DEMO_DIR:-$root/.demo}
user=pgbackup-demo
db=${DEMO_DATABASE:-korrigo_demo}
# Set on the demo database, so that the demo never drops a database it did
# not create.
marker='created by scripts/demo.sh'

log() { printf '==> %s\n' "$*"; }
fail() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}

[[ $db =~ ^[a-z_][a-z0-9_]*$ ]] || fail "DEMO_DATABASE \"$db\" must be a plain lower-case identifier"
# The demo directory is removed on exit: refuse one that is not the demo's.
if [[ -e $demo && ! -e $demo/.pgbackup-demo && ! -e $demo/env ]] && [[ -n $(ls -A "$demo" 2>/dev/null) ]]; then
  fail "DEMO_DIR $demo exists and is not a demo directory; choose an empty or new one"
fi

# Warnings and errors only: `DROP DATABASE IF EXISTS` would print a NOTICE.
psql_admin() {
  PGOPTIONS='-c client_min_messages=warning' \
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres "$@"
}

# Processes listed in $demo/pids whose command line (servers) or spool
# setting (services) names the demo directory: a stale file never makes the
# demo kill an unrelated process.
demo_pids() {
  [[ -f $demo/pids ]] || return 0
  local pid
  while read -r pid; do
    [[ $pid =~ ^[0-9]+$ ]] || continue
    # A process already gone (and reaped) has no /proc entry.
    if tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$demo" ||
      tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "BACKUP_SPOOL_DIR=$demo/spool"; then
      echo "$pid"
    fi
  done <"$demo/pids"
}

# What clean_all did, for the last line the operator reads.
cleaned=()

stop_processes() {
  local pids
  mapfile -t pids < <(demo_pids)
  if ((${#pids[@]})); then
    cleaned+=("stopped ${#pids[@]} server and service process(es)")
    kill "${pids[@]}" 2>/dev/null || true
    # The services finish or release their work within SHUTDOWN_GRACE (5s).
    for _ in $(seq 1 60); do
      mapfile -t pids < <(demo_pids)
      ((${#pids[@]})) || break
      sleep 0.2
    done
    if ((${#pids[@]})); then
      kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
  fi
  rm -f "$demo/pids"
}

demo_database_exists() {
  [[ $(psql_admin -d postgres -Atc "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '$db'" 2>/dev/null) == "$marker" ]]
}

# Everything the demo creates outside its directory, then the directory.
clean_all() { # clean_all <keep logs: 0|1>
  stop_processes
  if demo_database_exists && psql_admin -d postgres -c "DROP DATABASE $db WITH (FORCE)"; then
    cleaned+=("dropped database $db")
  fi
  if id "$user" >/dev/null 2>&1 && userdel "$user"; then
    cleaned+=("removed user $user")
  fi
  if [[ -d $demo ]]; then
    if (($1)); then
      # The marker stays with the logs, so that the next run may remove them.
      find "$demo" -mindepth 1 -maxdepth 1 ! -name logs ! -name .pgbackup-demo -exec rm -rf {} +
      cleaned+=("removed $demo except its logs")
    else
      rm -rf "$demo"
      cleaned+=("removed $demo")
    fi
  fi
}

report_cleaned() {
  if ((${#cleaned[@]})); then
    local IFS=';'
    echo "Cleaned up:${cleaned[*]/#/ }."
  else
    echo "Nothing to clean up."
  fi
}

if [[ ${1:-} == --clean ]]; then
  clean_all 0
  report_cleaned
  exit 0
elif [[ $# -gt 0 ]]; then
  fail "unknown argument $1; usage: demo.sh [--clean]"
fi

on_exit() {
  local status=$?
  trap - EXIT INT TERM
  if ((status == 0)) && [[ ${DEMO_KEEP_RUNNING:-0} == 1 ]]; then
    echo
    echo "Everything keeps running. Settings in $demo/env, logs in $demo/logs; for example:"
    echo "  (set -a; . $demo/env; $bin/backupctl status)"
    echo "Stop and remove it all (servers, services, database $db, user $user, $demo):"
    echo "  bash scripts/demo.sh --clean"
    exit 0
  fi
  echo
  if ((status == 0)); then
    clean_all 0
    echo "Demo finished in ${SECONDS}s: the backup above was dumped, shipped over SFTP, read back"
    echo "and restored into a scratch database with matching row counts."
    report_cleaned
    echo "To keep them and explore (backupctl status, list, restore): DEMO_KEEP_RUNNING=1 bash scripts/demo.sh"
  else
    clean_all 1
    local what=FAILED
    if ((status == 130 || status == 143)); then
      what=interrupted
    fi
    echo "Demo $what (exit status $status) after ${SECONDS}s."
    report_cleaned
    if [[ -d $demo/logs ]]; then
      echo "Logs kept in $demo/logs (bash scripts/demo.sh --clean removes them)."
    fi
  fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash scripts/install-deps.sh --throwaway-machine
log "building the binaries (a first build takes several minutes)"
cargo build --workspace --bins --locked

# A previous run's leftovers, if it was kept running or killed.
clean_all 0
if ((${#cleaned[@]})); then
  log "an earlier demo was left behind; $(report_cleaned)"
  cleaned=()
fi
mkdir -p "$demo"/{nats,spool,logs,etc}
: >"$demo/.pgbackup-demo"
# The SFTP account must traverse to its home and authorized_keys; private
# keys stay 0600 and owned by root.
chmod 711 "$demo" "$demo/etc"
: >"$demo/pids"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "starting a private NATS server"
nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$demo/nats" -l "$demo/logs/nats.log" &
echo $! >>"$demo/pids"

log "starting an SFTP target (account $user, sshd on loopback)"
home=$demo/remote-home
mkdir -p "$home/backups"
useradd -M -d "$home" -s /usr/sbin/nologin -p '*' "$user"
chown "$user:$user" "$home/backups"
chmod 700 "$home/backups"
ssh-keygen -q -t ed25519 -N '' -f "$demo/etc/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$demo/etc/client_key"
cp "$demo/etc/client_key.pub" "$demo/etc/authorized_keys"
chmod 644 "$demo/etc/authorized_keys"
sftp_port=$(free_port)
cat >"$demo/etc/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $sftp_port
HostKey $demo/etc/host_key
PidFile $demo/etc/sshd.pid
AuthorizedKeysFile $demo/etc/authorized_keys
# The demo tree lives in the checkout, whose parents we do not control.
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers $user
Subsystem sftp internal-sftp
CONF
/usr/sbin/sshd -D -e -f "$demo/etc/sshd_config" 2>"$demo/logs/sshd.log" &
echo $! >>"$demo/pids"
# Pin the host key from the file, not from the network: no trust on first use.
echo "[127.0.0.1]:$sftp_port $(cut -d' ' -f1,2 "$demo/etc/host_key.pub")" >"$demo/etc/known_hosts"

log "creating database $db"
if [[ -n $(psql_admin -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
  fail "database $db already exists and was not made by this demo; drop it if an older demo left it (dropdb -h 127.0.0.1 -U postgres $db), or set DEMO_DATABASE to another name"
fi
psql_admin -d postgres -c "CREATE DATABASE $db" -c "COMMENT ON DATABASE $db IS '$marker'"
psql_admin -d "$db" <<'SQL'
CREATE TABLE exam (id bigserial PRIMARY KEY, title text NOT NULL, held_on date NOT NULL);
CREATE TABLE copy (id bigserial PRIMARY KEY, exam_id bigint REFERENCES exam(id), student_ref text, score numeric(4,2));
CREATE TABLE annotation (id bigserial PRIMARY KEY, copy_id bigint REFERENCES copy(id), body jsonb);
INSERT INTO exam(title, held_on) SELECT 'Devoir surveillé n°' || i, date '2025-09-01' + i FROM generate_series(1, 200) i;
INSERT INTO copy(exam_id, student_ref, score) SELECT 1 + i % 200, 'ELV-' || lpad(i::text, 8, '0'), (i % 20)::numeric FROM generate_series(1, 20000) i;
INSERT INTO annotation(copy_id, body) SELECT 1 + i % 20000, jsonb_build_object('page', i % 8, 'text', md5(i::text)) FROM generate_series(1, 60000) i;
SQL

cat >"$demo/env" <<ENV
NATS_URL=nats://127.0.0.1:$nats_port
PGHOST=127.0.0.1
PGPORT=5432
PGUSER=postgres
BACKUP_DATABASES=$db
BACKUP_SPOOL_DIR=$demo/spool
BACKUP_SCHEDULE=off
SFTP_HOST=127.0.0.1
SFTP_PORT=$sftp_port
SFTP_USER=$user
SFTP_DIR=$home/backups
SFTP_KEY_FILE=$demo/etc/client_key
SFTP_KNOWN_HOSTS=$demo/etc/known_hosts
VERIFY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
SHUTDOWN_GRACE=5s
ENV
set -a
# shellcheck disable=SC1091
source "$demo/env"
set +a

log "starting dumper, shipper, verifier, pruner and notifier"
for service in dumper shipper verifier pruner notifier; do
  "$bin/$service" >"$demo/logs/$service.log" 2>&1 &
  echo $! >>"$demo/pids"
done
for service in dumper shipper verifier pruner notifier; do
  for _ in $(seq 1 150); do
    grep -q "waiting for work" "$demo/logs/$service.log" && continue 2
    sleep 0.2
  done
  fail "$service did not report \"waiting for work\" within 30 s; see $demo/logs/$service.log"
done

# backupctl runs as a background job that the script waits for: Ctrl-C then
# interrupts `wait` and reaches the clean-up at once, and the clean-up stops
# backupctl with the rest (`backupctl trigger --wait` does not end on
# SIGINT by itself).
backupctl() {
  "$bin/backupctl" "$@" &
  local child=$!
  echo "$child" >>"$demo/pids"
  wait "$child"
}
log "backupctl trigger --wait"
backupctl trigger --database "$db" --reason "demo" --wait --timeout 10m
log "backupctl list"
backupctl list --database "$db"
log "backupctl doctor (every piece of the set-up, checked)"
backupctl doctor
log "on the SFTP target ($home/backups/$db)"
ls -l "$home/backups/$db"
