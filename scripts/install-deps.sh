#!/usr/bin/env bash
# Installs, on Debian, the servers and tools the pipeline's demo and tests
# run against, and makes sure a local PostgreSQL accepts connections on
# 127.0.0.1:5432 as the postgres role. Safe to run again: it installs only
# what is missing. Needs root (apt-get).
#
# Usage: install-deps.sh [--throwaway-machine]
#
# Without the flag it installs client tools only and changes nothing that
# affects the machine's security: it refuses (exit 1, naming the flag) when
# a server package is missing or when the local PostgreSQL needs its
# authentication relaxed. With --throwaway-machine it also installs the
# servers the tests start (openssh-server, postgresql, nats-server) and, if 127.0.0.1:5432 refuses the postgres role
# without a password, adds `host all all 127.0.0.1/32 trust` to pg_hba.conf,
# and makes the Django virtual environment of the rollback test
# (BACKUP_TEST_DJANGO_VENV, default /opt/backup-test/django-venv) and the
# moto virtual environment of the S3 tests (BACKUP_TEST_MOTO_VENV, default
# /opt/backup-test/moto-venv).
# scripts/test.sh and scripts/demo.sh pass the flag: run them only on a
# machine made for the purpose, never on the Korrigo host.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

throwaway=0
for arg in "$@"; do
  case $arg in
    --throwaway-machine) throwaway=1 ;;
    *)
      log "unknown argument $arg; usage: install-deps.sh [--throwaway-machine]"
      exit 2
      ;;
  esac
done

missing=()
missing_servers=()
need() { # need <package> <test command...>
  local package=$1
  shift
  if ! "$@" >/dev/null 2>&1; then
    missing+=("$package")
  fi
}
# A package that runs a network service or a root-equivalent daemon once
# installed (Debian starts them): only with --throwaway-machine.
need_server() { # need_server <package> <test command...>
  local package=$1
  shift
  if ! "$@" >/dev/null 2>&1; then
    missing_servers+=("$package")
  fi
}

need_server nats-server command -v nats-server
need_server openssh-server test -x /usr/sbin/sshd
need_server postgresql command -v pg_ctlcluster
# The compose test (scripts/compose-test.sh) starts its own dockerd on
# private paths; the package's own service is not started here.
need_server docker.io command -v dockerd
need debootstrap command -v debootstrap
need openssh-client command -v ssh-keygen
need python3-aiosmtpd /usr/bin/python3 -c 'import aiosmtpd'
need postgresql-client command -v psql
need gzip command -v gzip
need zstd command -v zstd
need age command -v age-keygen
need jq command -v jq
need docker-compose command -v docker-compose
need systemd command -v systemd-analyze
need shellcheck command -v shellcheck
need sudo command -v sudo
# The emulated WAN of the shipper's tests and benchmarks
# (crates/test-support/src/wan.rs): namespaces, veth and tc from iproute2,
# packet loss from nftables; rclone is a yardstick of the benchmark (and of the S3 one).
need iproute2 command -v tc
need nftables command -v nft
need rclone command -v rclone

if ((${#missing_servers[@]})) && ((!throwaway)); then
  log "missing server packages: ${missing_servers[*]}. Installing them starts network services;" \
    "run scripts/install-deps.sh --throwaway-machine (as scripts/test.sh and scripts/demo.sh do)" \
    "only on a machine made for tests, never on the Korrigo host"
  exit 1
fi
missing+=("${missing_servers[@]}")

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing packages: ${missing[*]}; run this script as root (it uses apt-get)"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# sshd refuses to start without its privilege-separation directory.
if ((throwaway)); then
  mkdir -p /run/sshd
fi

pg_ready() { psql -X -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; }

if ! pg_ready; then
  if ((!throwaway)); then
    log "PostgreSQL does not accept connections on 127.0.0.1:5432 as postgres without a password;" \
      "the tests need that, which only a throw-away machine should allow:" \
      "run scripts/install-deps.sh --throwaway-machine there"
    exit 1
  fi
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $version ]]; then
    log "PostgreSQL is installed but has no cluster; creating one"
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    pg_createcluster "$version" main >/dev/null
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
  if ! pg_ready; then
    # A fresh Debian cluster asks for passwords on TCP; the tests connect
    # as postgres from 127.0.0.1 without one, so trust that one address.
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if [[ -f $hba ]] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      log "throw-away machine: allowing local TCP connections without password in $hba"
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
  fi
  pg_ready || { log "PostgreSQL does not accept connections on 127.0.0.1:5432 as postgres"; exit 1; }
fi

# The Django round trip (crates/backupctl/tests/backupctl/django.rs) runs a
# small Django project from a virtual environment of Debian's Python (the
# `python3` on PATH may be another one) with Django and psycopg from PyPI.
# Made once; a second run only checks that it imports.
if ((throwaway)); then
  venv=${BACKUP_TEST_DJANGO_VENV:-/opt/backup-test/django-venv}
  if ! "$venv/bin/python" -c 'import django, psycopg' >/dev/null 2>&1; then
    if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      log "installing python3-venv"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    log "making the Django test environment in $venv (Django and psycopg from PyPI)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'Django>=5.2,<6' 'psycopg[binary]>=3.1,<4'
  fi
fi

# The S3 tests (crates/remote-s3, the shipper's S3 destination) run moto's
# S3 server (`moto_server`, PyPI moto[server]) from its own virtual
# environment of Debian's Python. Made once; a second run only checks it.
if ((throwaway)); then
  venv=${BACKUP_TEST_MOTO_VENV:-/opt/backup-test/moto-venv}
  if ! "$venv/bin/python" -c 'import moto.server, boto3' >/dev/null 2>&1; then
    if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      log "installing python3-venv"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    log "making the S3 test environment in $venv (moto[server] from PyPI)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1,<6'
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is missing: install Rust (rustup) first"
  exit 1
fi
