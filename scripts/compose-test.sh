#!/usr/bin/env bash
# The compose deployment, end to end, on a real Docker engine.
#
# Starts a private dockerd (its own data, exec root, socket and pid file
# under a temporary directory), builds a Debian base image with debootstrap,
# the stand-ins image (deploy/test/standins.Dockerfile) and the pipeline's
# image from deploy/Dockerfile with the binaries built on this host, then
# brings up:
#   - project `korrigo`: Korrigo's PostgreSQL with a Korrigo-like `viatique`
#     and its media volume (deploy/test/korrigo.compose.yaml);
#   - project `hosting`: the SFTP account and the mail relay
#     (deploy/test/hosting.compose.yaml);
#   - deploy/compose.yaml itself with deploy/test/compose.test.yaml, driven
#     by the shell blocks of docs/guides/docker-compose.md, run as written.
# Then checks from outside the containers: health, a verified backup of the
# database and the media, a restore with equal row counts readable by the
# application's role, a shipper restart mid-upload, `down` then `up`, a
# wrong host key (dump.failed and an email), doctor, and that no secret
# leaks into logs or `docker inspect`. The dockerd it started is stopped
# and its data removed on every exit.
#
# Needs root, dockerd (docker.io), docker-compose, debootstrap and the
# binaries of `cargo build --workspace --bins` (COMPOSE_TEST_PROFILE=release
# for a release build). COMPOSE_TEST_SCALE sets the dataset's scale (1:
# about 105 MB in PostgreSQL, the default). COMPOSE_TEST_KEEP=1 keeps the
# work directory (not the engine) for a look after a failure.
# COMPOSE_TEST_ENGINE=unix:///path/docker.sock uses a running engine instead
# of starting one (its images are reused; the test's projects are removed
# at the end, the engine is left running).
set -euo pipefail

# `producer | grep -q` fails under pipefail when grep stops reading at the
# first match and the producer dies of SIGPIPE: read the whole input.
contains() { grep "$@" >/dev/null; }
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${COMPOSE_TEST_PROFILE:-debug}
scale=${COMPOSE_TEST_SCALE:-1}
dataset=${KORRIGO_DATASET:-$root/../shared/bench/korrigo-dataset.sql}
guide=$root/docs/guides/docker-compose.md
started=$SECONDS

log() { printf '==> compose-test [%ss]: %s\n' "$((SECONDS - started))" "$*" >&2; }
fail() {
  printf 'compose-test: FAILED: %s\n' "$*" >&2
  exit 1
}

work=$(mktemp -d /tmp/compose-test.XXXXXX)
engine=$work/engine
dockerd_pid=
stack_up=0
remove_all() { # remove_all container|volume "IDS, one a line"
  local ids
  mapfile -t ids <<<"$2"
  [[ -n ${ids[0]} ]] || return 0
  command docker "$1" rm -f "${ids[@]}" >/dev/null 2>&1
}
cleanup() {
  local status=$?
  set +e
  if ((status != 0 && stack_up)); then
    printf '\n---- diagnostics ----\n' >&2
    (cd "$work/checkout/deploy" && docker compose ps && docker compose logs --no-color --tail=40) >&2 2>&1
  fi
  if [[ -n ${COMPOSE_TEST_ENGINE:-} ]]; then
    remove_all container "$(command docker ps -aq --filter label=com.docker.compose.project)"
    remove_all volume "$(command docker volume ls -q --filter label=com.docker.compose.project)"
    command docker network prune -f >/dev/null 2>&1
  fi
  if [[ -n $dockerd_pid ]]; then
    remove_all container "$(command docker ps -aq 2>/dev/null)"
    # Bridges outlive the engine's data: remove the networks first.
    command docker network prune -f >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 60); do
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
  fi
  # What the engine mounted below its directories (network namespaces,
  # container file systems), deepest first.
  grep -o " ${work}[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  if [[ ${COMPOSE_TEST_KEEP:-} == 1 ]]; then
    rm -rf "$engine"
    echo "compose-test: work directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
  if ((status == 0)); then
    echo "compose-test: passed in $((SECONDS - started)) s" >&2
  fi
  exit "$status"
}
trap cleanup EXIT

for tool in dockerd docker docker-compose debootstrap; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-deps.sh installs it)"
done
[[ -r $dataset ]] || fail "no dataset at $dataset (shared/bench/korrigo-dataset.sql beside the repository)"

# ---------------------------------------------------------------- the engine
if [[ -n ${COMPOSE_TEST_ENGINE:-} ]]; then
  export DOCKER_HOST=$COMPOSE_TEST_ENGINE
  log "using the engine at $DOCKER_HOST"
else
  # overlay2 where the kernel and file system allow it (far less disk and
  # time than vfs, which copies every layer and container), vfs otherwise.
  start_dockerd() { # start_dockerd DRIVER: 0 once it answers
    mkdir -p "$engine"
    dockerd --iptables=false --bridge=none --storage-driver="$1" \
      --data-root "$engine/data" --exec-root "$engine/exec" \
      -H "unix://$engine/docker.sock" --pidfile "$engine/docker.pid" \
      >"$work/dockerd-$1.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 120); do
      command docker info >/dev/null 2>&1 && return 0
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
    dockerd_pid=
    rm -rf "$engine"
    return 1
  }
  export DOCKER_HOST=unix://$engine/docker.sock
  driver=${COMPOSE_TEST_STORAGE_DRIVER:-overlay2}
  if ! start_dockerd "$driver"; then
    log "dockerd does not start with $driver: $(tail -n 1 "$work/dockerd-$driver.log"); trying vfs"
    driver=vfs
    start_dockerd vfs || fail "dockerd did not start: $(tail -n 5 "$work/dockerd-vfs.log")"
  fi
  log "private dockerd running (storage driver $driver)"
fi

# The guide is written for Compose v2 (`docker compose`); Debian ships v1.29
# (`docker-compose`), which reads the same files. Like v2, `run` and `exec`
# get no terminal when there is none.
docker() {
  if [[ ${1:-} != compose ]]; then
    command docker "$@"
    return
  fi
  shift
  local args=() seen=0
  for arg in "$@"; do
    args+=("$arg")
    if ((!seen)) && [[ $arg == run || $arg == exec ]]; then
      seen=1
      [[ -t 0 || " $* " == *" -T "* ]] || args+=(-T)
    fi
  done
  docker-compose "${args[@]}"
}
export -f docker

# ---------------------------------------------------------------- images
if ! command docker image inspect korrigo-test/debian:bookworm >/dev/null 2>&1; then
  log "building a Debian bookworm base image (debootstrap)"
  debootstrap --variant=minbase bookworm "$work/rootfs" >"$work/debootstrap.log" 2>&1 ||
    fail "debootstrap: $(tail -n 5 "$work/debootstrap.log")"
  tar -C "$work/rootfs" -c . | command docker import - korrigo-test/debian:bookworm >/dev/null
  rm -rf "$work/rootfs"
fi

log "building the stand-ins image"
command docker build -q --network host --build-arg BASE_IMAGE=korrigo-test/debian:bookworm \
  -t korrigo-test/standins -f "$root/deploy/test/standins.Dockerfile" "$root/deploy/test" \
  >"$work/standins-build.log" 2>&1 || fail "stand-ins image: $(tail -n 5 "$work/standins-build.log")"

# The operator's checkout: every file git knows or would add, no target/.
mkdir -p "$work/checkout"
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf -) 2>/dev/null | tar -C "$work/checkout" -xf -
mkdir -p "$work/checkout/prebuilt"
for bin in dumper shipper verifier pruner notifier backupctl; do
  [[ -x $root/target/$profile/$bin ]] || fail "target/$profile/$bin is missing: run cargo build --workspace --bins first"
  cp "$root/target/$profile/$bin" "$work/checkout/prebuilt/"
  strip "$work/checkout/prebuilt/$bin"
done
deploy=$work/checkout/deploy

# ---------------------------------------------------------------- stand-ins
log "Korrigo stand-in: PostgreSQL 15 with viatique at scale $scale, and the media volume"
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$deploy/test/korrigo_postgres_password"
korrigo_password=$(cat "$deploy/test/korrigo_postgres_password")
export KORRIGO_COMPOSE="docker compose -p korrigo -f $deploy/test/korrigo.compose.yaml"
$KORRIGO_COMPOSE up -d >"$work/korrigo-up.log" 2>&1 || fail "korrigo stand-in: $(tail -n 5 "$work/korrigo-up.log")"
korrigo_sql() { # korrigo_sql DATABASE [ROLE]: SQL on stdin, as psql -At
  $KORRIGO_COMPOSE exec -T db psql -X -q -At -v ON_ERROR_STOP=1 -U "${2:-viatique_user}" -d "$1"
}
for _ in $(seq 1 120); do
  echo 'SELECT 1' | korrigo_sql viatique >/dev/null 2>&1 && break
  sleep 0.5
done
$KORRIGO_COMPOSE exec -T db psql -X -q -v ON_ERROR_STOP=1 -v scale="$scale" -U viatique_user -d viatique \
  <"$dataset" >/dev/null
# The application's own role, which must still read its tables after a restore.
app_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
korrigo_sql viatique <<SQL
CREATE ROLE korrigo_app LOGIN PASSWORD '$app_password';
GRANT USAGE ON SCHEMA korrigo TO korrigo_app;
GRANT SELECT ON ALL TABLES IN SCHEMA korrigo TO korrigo_app;
SQL
copies=$(echo 'SELECT count(*) FROM korrigo.copy' | korrigo_sql viatique)
((copies > 0)) || fail "the dataset did not load"
command docker run --rm -v korrigo_media_volume:/media korrigo-test/standins sh -c '
  mkdir -p /media/copies/2026 && for i in 1 2 3 4 5; do
    head -c 300000 /dev/urandom >/media/copies/2026/copie_$i.pdf; done
  chmod -R a+rX /media' >/dev/null

log "hosting stand-in: SFTP account and mail relay"
hosting="docker compose -p hosting -f $deploy/test/hosting.compose.yaml"
$hosting up -d >"$work/hosting-up.log" 2>&1 || fail "hosting stand-in: $(tail -n 5 "$work/hosting-up.log")"
sftp_id=$($hosting ps -q sftp)
mail_id=$($hosting ps -q mail)
sftp_ip=$(command docker inspect -f '{{(index .NetworkSettings.Networks "hosting_default").IPAddress}}' "$sftp_id")
[[ -n $sftp_ip ]] || fail "the SFTP stand-in has no address"
for _ in $(seq 1 60); do
  command docker exec "$sftp_id" test -s /etc/ssh/keys/ssh_host_ed25519_key.pub && break
  sleep 0.5
done
sftp_ls() { command docker exec "$sftp_id" find /home/korrigo-backup/backups -type f -printf '%P\n' | sort; }
mail_count() { command docker exec "$mail_id" sh -c 'ls /srv/mail/new 2>/dev/null | wc -l'; }
mail_text() { command docker exec "$mail_id" sh -c 'cat /srv/mail/new/* 2>/dev/null'; }

# ---------------------------------------------------------------- the guide
# Runs the guide's block marked `step=NAME` in deploy/, as written.
guide_step() {
  local name=$1 block
  block=$(awk -v marker="step=$name " '
    index($0, "<!-- runs-in: scripts/compose-test.sh " marker) { want = 1; next }
    want && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }' "$guide")
  [[ -n $block ]] || fail "no block step=$name in $guide"
  log "guide step $name"
  if ! (cd "$deploy" && bash -euo pipefail -c "$block") >"$work/step-$name.log" 2>&1; then
    tail -n 40 "$work/step-$name.log" >&2
    fail "guide step $name"
  fi
  tail -n 12 "$work/step-$name.log" >&2
}
set_env() { # set_env KEY VALUE in deploy/.env
  if grep -q "^$1=" "$deploy/.env"; then
    sed -i "s|^$1=.*|$1=$2|" "$deploy/.env"
  else
    printf '%s=%s\n' "$1" "$2" >>"$deploy/.env"
  fi
}

guide_step env
# The operator's edits of .env, and what only a test changes.
set_env SFTP_HOST "$sftp_ip"
set_env SFTP_PORT 22
set_env SFTP_USER korrigo-backup
set_env SFTP_DIR /home/korrigo-backup/backups
set_env ALERT_EMAIL_FROM backups@korrigo.test
set_env ALERT_EMAIL_TO oncall@korrigo.test
set_env BACKUP_SCHEDULE off
set_env COMPOSE_FILE compose.yaml:test/compose.test.yaml
set_env BACKUP_IMAGE korrigo-backup:test
set_env BACKUP_BUILD_IMAGE korrigo-test/debian:bookworm
set_env BACKUP_RUNTIME_IMAGE korrigo-test/debian:bookworm
set_env BACKUP_PG_CLIENT_SOURCE debian
set_env BACKUP_PREBUILT_DIR prebuilt
set_env TEST_SHIP_BANDWIDTH_LIMIT 8MiB

guide_step secrets <<<"smtp://mail:1025"
for file in "$deploy"/secrets/*; do
  [[ $file == *.pub ]] && continue
  [[ $(stat -c '%u %a' "$file") == "10001 400" ]] || fail "$file is $(stat -c '%u %a' "$file"), not uid 10001 mode 0400"
done
# The provider's panel: the account accepts the new public key.
command docker exec -i "$sftp_id" sh -c 'cat >/home/korrigo-backup/.ssh/authorized_keys' <"$deploy/secrets/sftp_key.pub"

guide_step reader-role
guide_step build
log "image: $(command docker image inspect -f '{{.Size}}' korrigo-backup:test | numfmt --to=iec) (korrigo-backup:test)"
guide_step up
stack_up=1

# ---------------------------------------------------------------- checks
services=(dumper shipper verifier pruner notifier)
cid() { (cd "$deploy" && docker compose ps -q "$1"); }
wait_healthy() {
  local deadline=$((SECONDS + 240)) service state
  for service in "${services[@]}"; do
    while :; do
      state=$(command docker inspect -f '{{.State.Health.Status}}' "$(cid "$service")" 2>/dev/null || true)
      [[ $state == healthy ]] && break
      ((SECONDS < deadline)) || fail "$service is '$state', not healthy, 240 s after start"
      sleep 1
    done
  done
  log "every service is healthy (its own --health-probe)"
}
# wait_until DESCRIPTION SECONDS COMMAND...: polls an observable fact.
wait_until() {
  local what=$1 limit=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < deadline)) || fail "no $what within $limit s"
    sleep 0.5
  done
}
verified_count() { sftp_ls | grep -c '\.verified\.json$' || true; }
at_least_verified() { (($(verified_count) >= $1)); }
no_partials() { ! sftp_ls | contains '\.partial$'; }
backupctl() { (cd "$deploy" && docker compose run --rm backupctl "$@"); }
stack() { # stack COMMAND...: docker compose in deploy/, quiet unless it fails
  (cd "$deploy" && docker compose "$@") >"$work/compose.log" 2>&1 ||
    fail "docker compose $*: $(tail -n 5 "$work/compose.log")"
}
check_remote_is_complete() {
  local listing artifact
  listing=$(sftp_ls)
  no_partials || fail "a .partial file stayed on the remote: $listing"
  # Every artifact has its manifest and its verification record; nothing
  # but those three kinds of names.
  while IFS= read -r artifact; do
    grep -qxF "$artifact.manifest.json" <<<"$listing" || fail "$artifact has no manifest"
    grep -qxF "$artifact.verified.json" <<<"$listing" || fail "$artifact is not verified"
  done < <(grep -Ev '\.(manifest|verified)\.json$' <<<"$listing")
}
# Each artifact was verified once: the verifier logged one success per
# artifact name (its JSON lines carry the artifact).
# `down` removes the containers and their logs: keep them first.
keep_verifier_log() { (cd "$deploy" && docker compose logs --no-color verifier) >>"$work/verifier-before.log" 2>&1; }
check_verified_once() {
  local logs artifact times
  logs=$(cat "$work/verifier-before.log" 2>/dev/null; cd "$deploy" && docker compose logs --no-color verifier 2>/dev/null)
  while IFS= read -r artifact; do
    times=$(grep -F "\"$artifact\"" <<<"$logs" | grep -c '"verified"' || true)
    ((times == 1)) || fail "$artifact was verified $times times (verifier log)"
  done < <(sftp_ls | grep -Ev '\.(manifest|verified)\.json$' | xargs -rn1 basename)
}

wait_healthy
guide_step first-backup
per_trigger=$(verified_count)
sftp_ls | contains '^viatique/.*\.sql\.gz\.verified\.json$' || fail "no verified viatique dump: $(sftp_ls)"
sftp_ls | contains '\.tar\.gz\.verified\.json$' || fail "no verified media archive: $(sftp_ls)"
check_remote_is_complete
log "first backup verified from the SFTP stand-in: $per_trigger artifacts"

guide_step doctor

guide_step restore <<<"postgresql://viatique_user:$korrigo_password@db:5432/viatique_restore"
counts() { # counts DATABASE: every table of schema korrigo with its row count
  korrigo_sql "$1" <<'SQL'
SELECT string_agg(format('%s=%s', c.relname,
         (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM korrigo.%I', c.relname), false, true, '')))[1]::text),
       ' ' ORDER BY c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'korrigo' AND c.relkind = 'r';
SQL
}
source_counts=$(counts viatique)
restored_counts=$(counts viatique_restore)
[[ $source_counts == "$restored_counts" ]] || fail "row counts differ: viatique {$source_counts} restored {$restored_counts}"
echo 'SELECT count(*) FROM korrigo.copy' | korrigo_sql viatique_restore korrigo_app >/dev/null ||
  fail "the application's role cannot read its tables in the restored database"
log "restored into viatique_restore with equal row counts ($source_counts); korrigo_app reads it"

log "restarting the shipper in the middle of an upload"
backupctl trigger --reason "restart mid-upload" >/dev/null
partial_on_remote() { sftp_ls | contains '\.partial$'; }
wait_until "upload in progress" 300 partial_on_remote
stack restart shipper
wait_until "verification after the restart" 600 at_least_verified $((2 * per_trigger))
wait_until "remote without .partial" 120 no_partials
check_remote_is_complete

log "down, then up again, in the middle of a backup (volumes kept)"
backupctl trigger --reason "down and up" >/dev/null
wait_until "upload in progress" 300 partial_on_remote
keep_verifier_log
stack down
stack up -d
wait_healthy
wait_until "verification after down and up" 600 at_least_verified $((3 * per_trigger))
wait_until "remote without .partial" 120 no_partials
check_remote_is_complete
check_verified_once

log "a wrong SFTP host key: dump.failed and an email"
pin=$deploy/secrets/sftp_known_hosts
cp "$pin" "$work/good_known_hosts"
ssh-keygen -q -t ed25519 -N '' -f "$work/impostor"
# Written in place: compose mounts the file, not the directory.
printf '%s %s\n' "$sftp_ip" "$(cut -d' ' -f1,2 "$work/impostor.pub")" >"$pin"
mails_before=$(mail_count)
stack restart shipper
backupctl trigger --reason "wrong host key" >/dev/null
more_mail() { (($(mail_count) > mails_before)); }
wait_until "alert email" 300 more_mail
mail_text | contains -i 'ship' || fail "the alert email does not name the ship stage: $(mail_text | tail -n 20)"
(cd "$deploy" && docker compose logs --no-color shipper 2>/dev/null) | contains -i 'host key' ||
  fail "the shipper did not log the host key mismatch"
# A changed host key is not retried (it may be an attack): that backup
# failed for good and said so. Once the pin is right again, the next backup
# goes through, and the alert is resolved.
cat "$work/good_known_hosts" >"$pin"
stack restart shipper
mails_before=$(mail_count)
backupctl trigger --wait --reason "host key pinned again" >"$work/trigger-after-pin.log" 2>&1 ||
  fail "no verified backup once the pin was put back: $(tail -n 5 "$work/trigger-after-pin.log")"
resolved_mail() { (($(mail_count) > mails_before)) && mail_text | contains 'RESOLVED'; }
wait_until "RESOLVED email" 300 resolved_mail
wait_until "remote without .partial" 120 no_partials
check_remote_is_complete
log "wrong host key: an alert email; once the pin was put back, the next backup verified and a RESOLVED email"

log "doctor with a service's NATS user, and with a wrong SMTP relay"
if doctor_out=$(cd "$deploy" && docker compose exec dumper backupctl doctor 2>&1); then
  fail "doctor with the dumper's NATS user passed: $doctor_out"
fi
grep -q 'not visible to NATS user dumper (NATS refused .JS[.]API[.]CONSUMER[.]INFO[.]BACKUPS[.]shipper)' <<<"$doctor_out" ||
  fail "doctor did not name the NATS permission refusal: $doctor_out"
cp "$deploy/secrets/smtp_url" "$work/good_smtp_url"
echo "smtp://mail:2525" >"$deploy/secrets/smtp_url"
if doctor_out=$(backupctl doctor 2>&1); then
  fail "doctor passed with an SMTP relay that does not answer: $doctor_out"
fi
grep -q 'alert.email' <<<"$doctor_out" || fail "doctor did not name the email channel: $doctor_out"
cat "$work/good_smtp_url" >"$deploy/secrets/smtp_url"

log "no secret in the logs or in docker inspect"
leaks=$work/leaks
{
  (cd "$deploy" && docker compose logs --no-color 2>&1)
  mapfile -t containers < <(command docker ps -aq)
  command docker inspect "${containers[@]}"
} >"$leaks"
secret_values() {
  local file
  for file in "$deploy"/secrets/*; do
    [[ $file == *.pub || $file == */sftp_known_hosts ]] && continue
    # A private key: its longest base64 line; any other secret: its value.
    if grep -q 'PRIVATE KEY' "$file"; then
      sed -n 2p "$file"
    else
      tr -d '\n' <"$file"
      echo
    fi
  done
  echo "$korrigo_password"
  echo "$app_password"
}
while IFS= read -r value; do
  [[ ${#value} -ge 8 ]] || continue
  grep -qF -- "$value" "$leaks" && fail "a secret value appears in the logs or docker inspect"
done < <(secret_values)

log "peak memory of each container (cgroup memory.max_usage_in_bytes) against its limit"
printf '%-12s %12s %12s\n' container peak limit >&2
for service in "${services[@]}" nats scratch-db; do
  id=$(command docker inspect -f '{{.Id}}' "$(cid "$service")")
  limit=$(command docker inspect -f '{{.HostConfig.Memory}}' "$id")
  peak=$(cat "/sys/fs/cgroup/memory/docker/$id/memory.max_usage_in_bytes" 2>/dev/null || echo 0)
  printf '%-12s %12s %12s\n' "$service" "$(numfmt --to=iec "$peak")" "$(numfmt --to=iec "$limit")" >&2
done
