#!/usr/bin/env bash
# Creates deploy/secrets/ (0700, files 0600) for compose.yaml:
#   - random NATS passwords for each service and the operator, and nats/auth.conf;
#   - postgres_password from Korrigo's .env (KORRIGO_ENV, default ../../korrigo/.env)
#     or from POSTGRES_PASSWORD in the environment;
#   - an ed25519 key for the SFTP account (add sftp_key.pub to its authorized_keys);
#   - sftp_known_hosts from ssh-keyscan, whose fingerprint you must compare out of band;
#   - verify_database_url and smtp_url from VERIFY_DATABASE_URL and SMTP_URL if set.
# Existing files are kept: run it again safely.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
secrets=$here/secrets
umask 077
mkdir -p "$secrets"
chmod 700 "$secrets"

write_once() { # write_once NAME VALUE
  [[ -e $secrets/$1 ]] || printf '%s\n' "$2" >"$secrets/$1"
}

for user in dumper shipper verifier pruner notifier operator; do
  write_once "nats_${user}_password" "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
done
bash "$here/scripts/nats-auth.sh" "$secrets" >"$here/nats/auth.conf"
chmod 600 "$here/nats/auth.conf"

if [[ ! -e $secrets/postgres_password ]]; then
  korrigo_env=${KORRIGO_ENV:-$here/../../korrigo/.env}
  password=${POSTGRES_PASSWORD:-}
  if [[ -z $password && -f $korrigo_env ]]; then
    password=$(sed -n 's/^POSTGRES_PASSWORD=//p' "$korrigo_env" | tail -n 1)
  fi
  if [[ -n $password ]]; then
    write_once postgres_password "$password"
  else
    echo "postgres_password: set POSTGRES_PASSWORD or KORRIGO_ENV and run again" >&2
  fi
fi

if [[ ! -e $secrets/sftp_key ]]; then
  ssh-keygen -q -t ed25519 -N '' -C korrigo-backup -f "$secrets/sftp_key"
  echo "Add this public key to the SFTP account's authorized_keys:" >&2
  cat "$secrets/sftp_key.pub" >&2
fi

if [[ ! -e $secrets/sftp_known_hosts && -n ${SFTP_HOST:-} ]]; then
  ssh-keyscan -p "${SFTP_PORT:-22}" -t ed25519,rsa "$SFTP_HOST" 2>/dev/null >"$secrets/sftp_known_hosts"
  echo "Pinned host keys; compare these fingerprints with the hosting provider's before going on:" >&2
  ssh-keygen -lf "$secrets/sftp_known_hosts" >&2
fi

[[ -n ${VERIFY_DATABASE_URL:-} ]] && write_once verify_database_url "$VERIFY_DATABASE_URL"
[[ -n ${SMTP_URL:-} ]] && write_once smtp_url "$SMTP_URL"
# Optional channels and keys: an empty file leaves the setting off.
for optional in telegram_bot_token slack_webhook_url healthcheck_url age_identity; do
  upper=$(tr '[:lower:]' '[:upper:]' <<<"$optional")
  write_once "$optional" "${!upper:-}"
done
for required in postgres_password sftp_known_hosts verify_database_url smtp_url; do
  [[ -e $secrets/$required ]] || echo "still missing: secrets/$required" >&2
done
