#!/usr/bin/env bash
# Makes deploy/secrets/ for compose.yaml. Run it from anywhere, as root (or
# with sudo), after writing deploy/.env; safe to run again: existing secrets
# are kept, and every run checks them all and puts their owner and mode back.
#
#   - one random NATS password per service and for the operator, and
#     nats/auth.conf (root's, 0600) that gives each its permissions;
#   - backup_reader_password: the password of the read-only role the dumper
#     connects as (create the role with it, see the setup guide);
#   - scratch_db_password and verify_database_url: the verifier's scratch
#     server (the `scratch-db` service), unless VERIFY_DATABASE_URL is set;
#   - sftp_key (+ .pub): an ed25519 key for the SFTP account;
#   - sftp_known_hosts: the SFTP server's host key, read with ssh-keyscan from
#     SFTP_HOST/SFTP_PORT (deploy/.env or the environment); compare its
#     fingerprint with the one your provider publishes (empty when S3_BUCKET
#     is set without SFTP_HOST: backups go to S3 only);
#   - s3_secret_access_key from S3_SECRET_ACCESS_KEY, required when S3_BUCKET
#     is set, and prune_s3_secret_access_key from PRUNE_S3_SECRET_ACCESS_KEY
#     (the pruner's own key, optional);
#   - smtp_url from SMTP_URL (required), and the optional channels, keys and
#     the restore target (TELEGRAM_BOT_TOKEN, SLACK_WEBHOOK_URL,
#     HEALTHCHECK_URL, AGE_IDENTITY, RESTORE_TARGET_URL) from the environment,
#     rewritten whenever the variable is set; an empty file leaves that
#     setting off.
#
# The services run as uid 10001 (the image's `pg-backup` user) and compose
# mounts file secrets as they are on the host, so every secret is owned by
# SECRETS_UID (default 10001) with mode 0400: readable by the services and
# by root, by nobody else. Exits 1, naming each problem and its fix, while a
# required secret is missing or unusable.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
secrets=$here/secrets
owner=${SECRETS_UID:-10001}
umask 077
mkdir -p "$secrets"
chmod 700 "$secrets"

problems=0
problem() { # problem MESSAGE: one line, every run, until fixed
  echo "init-secrets: $*" >&2
  problems=$((problems + 1))
}

# Settings from deploy/.env (plain KEY=VALUE lines; never sourced), unless
# already in the environment.
setting() { # setting NAME DEFAULT
  local name=$1 value=${!1:-}
  if [[ -z $value && -f $here/.env ]]; then
    value=$(sed -n "s/^$name=//p" "$here/.env" | tail -n 1)
  fi
  printf '%s' "${value:-$2}"
}

random_secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }

write_once() { # write_once NAME VALUE
  [[ -e $secrets/$1 ]] || printf '%s\n' "$2" >"$secrets/$1"
}

for user in dumper shipper verifier pruner notifier operator; do
  write_once "nats_${user}_password" "$(random_secret)"
done
bash "$here/scripts/nats-auth.sh" "$secrets" >"$here/nats/auth.conf"
chmod 600 "$here/nats/auth.conf"

write_once backup_reader_password "$(random_secret)"
write_once scratch_db_password "$(random_secret)"
if [[ -n ${VERIFY_DATABASE_URL:-} ]]; then
  write_once verify_database_url "$VERIFY_DATABASE_URL"
else
  write_once verify_database_url \
    "postgresql://postgres:$(tr -d '\n' <"$secrets/scratch_db_password")@scratch-db:5432/postgres"
fi

if [[ ! -e $secrets/sftp_key ]]; then
  ssh-keygen -q -t ed25519 -N '' -C korrigo-backup -f "$secrets/sftp_key"
  echo "Add this public key to the SFTP account's authorized_keys (also in secrets/sftp_key.pub):" >&2
  cat "$secrets/sftp_key.pub" >&2
fi

sftp_host=$(setting SFTP_HOST '')
sftp_port=$(setting SFTP_PORT 22)
s3_bucket=$(setting S3_BUCKET '')
pin=$secrets/sftp_known_hosts
if [[ -z $sftp_host && -n $s3_bucket ]]; then
  # S3 only: compose mounts the file, no service reads it.
  [[ -s $pin ]] || write_once sftp_known_hosts ""
elif [[ ! -s $pin ]]; then
  rm -f "$pin"
  if [[ -z $sftp_host ]]; then
    problem "secrets/sftp_known_hosts: set SFTP_HOST (and SFTP_PORT) in deploy/.env and run again, or write the host key line your provider publishes into it"
  else
    scanned=$(ssh-keyscan -T 10 -p "$sftp_port" -t ed25519,rsa "$sftp_host" 2>/dev/null || true)
    if [[ -z $scanned ]]; then
      problem "secrets/sftp_known_hosts: no host key from $sftp_host port $sftp_port (SFTP_HOST, SFTP_PORT): check that this machine reaches it and run again, or write the host key line your provider publishes into it"
    else
      printf '%s\n' "$scanned" >"$pin"
      echo "Pinned the host key of $sftp_host; compare this fingerprint with your provider's before going on:" >&2
      ssh-keygen -lf "$pin" >&2
    fi
  fi
elif ! ssh-keygen -lf "$pin" >/dev/null 2>&1; then
  problem "secrets/sftp_known_hosts is not a known_hosts file: remove it and run again, or write the host key line your provider publishes into it"
fi

if [[ -n ${SMTP_URL:-} ]]; then
  write_once smtp_url "$SMTP_URL"
fi
if [[ ! -s $secrets/smtp_url ]]; then
  rm -f "$secrets/smtp_url"
  problem "secrets/smtp_url: run again with SMTP_URL set (for example SMTP_URL=smtp://mail.example.org), see the setup guide's email section"
fi
# Optional settings: written whenever their variable is set (so a run with
# RESTORE_TARGET_URL set points restores elsewhere), empty until then.
for optional in telegram_bot_token slack_webhook_url healthcheck_url age_identity restore_target_url s3_secret_access_key prune_s3_secret_access_key; do
  upper=$(tr '[:lower:]' '[:upper:]' <<<"$optional")
  if [[ -n ${!upper:-} ]]; then
    rm -f "$secrets/$optional"
    printf '%s\n' "${!upper}" >"$secrets/$optional"
  else
    write_once "$optional" ""
  fi
done

if [[ -n $s3_bucket && -z $(tr -d '\n' <"$secrets/s3_secret_access_key") ]]; then
  problem "secrets/s3_secret_access_key: S3_BUCKET is set; run again with S3_SECRET_ACCESS_KEY set to the secret of S3_ACCESS_KEY_ID"
fi

# Ownership and modes, every run: a copied or restored secret gets them back.
for file in "$secrets"/*; do
  chown "$owner:$owner" "$file"
  case $file in
    *.pub) chmod 0444 "$file" ;;
    *) chmod 0400 "$file" ;;
  esac
done

if ((problems)); then
  echo "init-secrets: $problems problem(s) left; the stack cannot back up until they are fixed" >&2
  exit 1
fi
echo "init-secrets: secrets complete in $secrets (owner uid $owner, mode 0400)" >&2
