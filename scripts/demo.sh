#!/usr/bin/env bash
# Runs the whole pipeline once on local defaults: a private NATS with
# JetStream, a local OpenSSH SFTP target with a pinned host key, a small
# Korrigo-like database, the five services, then `backupctl trigger --wait`,
# `backupctl list` and `backupctl doctor`. Everything lives under .demo/
# (or $DEMO_DIR).
# Set DEMO_KEEP_RUNNING=1 to leave the servers and services up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash scripts/install-deps.sh
echo "==> building"
cargo build --workspace --bins --locked --quiet
bin=$root/target/debug

demo=${DEMO_DIR:-$root/.demo}
user=pgbackup-demo
db=${DEMO_DATABASE:-korrigo_demo}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A previous run's servers, if it was kept running.
if [[ -f $demo/pids ]]; then
  xargs -r kill <"$demo/pids" 2>/dev/null || true
  sleep 1
fi
rm -rf "$demo"
mkdir -p "$demo"/{nats,spool,logs,etc}
# The SFTP account must traverse to its home and authorized_keys; private
# keys stay 0600 and owned by root.
chmod 711 "$demo" "$demo/etc"
: >"$demo/pids"

cleanup() {
  if [[ ${DEMO_KEEP_RUNNING:-0} != 1 ]]; then
    xargs -r kill <"$demo/pids" 2>/dev/null || true
    rm -f "$demo/pids"
  fi
}
trap cleanup EXIT

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$demo/nats" -l "$demo/logs/nats.log" &
echo $! >>"$demo/pids"

# SFTP target: a dedicated local account whose home holds the remote tree.
home=$demo/remote-home
mkdir -p "$home/backups"
if ! id "$user" >/dev/null 2>&1; then
  useradd -M -d "$home" -s /usr/sbin/nologin -p '*' "$user"
else
  usermod -d "$home" -p '*' "$user"
fi
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

echo "==> creating database $db"
psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d "$db" <<'SQL'
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

for service in dumper shipper verifier pruner notifier; do
  "$bin/$service" >"$demo/logs/$service.log" 2>&1 &
  echo $! >>"$demo/pids"
done
for service in dumper shipper verifier pruner notifier; do
  for _ in $(seq 1 100); do
    grep -q "waiting for work" "$demo/logs/$service.log" && break
    sleep 0.2
  done
done

echo "==> backupctl trigger --wait"
"$bin/backupctl" trigger --database "$db" --reason "demo" --wait --timeout 10m
echo "==> backupctl list"
"$bin/backupctl" list --database "$db"
echo "==> backupctl doctor (every piece of the set-up, checked)"
"$bin/backupctl" doctor
echo "==> on the SFTP target ($home/backups/$db)"
ls -l "$home/backups/$db"
echo
echo "Demo files: $demo (settings in $demo/env, logs in $demo/logs)."
if [[ ${DEMO_KEEP_RUNNING:-0} == 1 ]]; then
  echo "Servers and services keep running; stop them with: xargs kill < $demo/pids"
fi
