#!/usr/bin/env bash
# The test command: installs what the tests need (Debian, as root), then runs
# the formatting and lint gates and the whole suite against real servers.
# It installs servers and lets 127.0.0.1 reach PostgreSQL as postgres without
# a password (install-deps.sh --throwaway-machine): run it on a machine made
# for tests (CI, a VM), never on the Korrigo host.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --throwaway-machine

echo "==> shellcheck"
shellcheck scripts/*.sh deploy/scripts/*.sh .ci/run
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked
echo "==> the compose deployment on a real Docker engine (scripts/compose-test.sh)"
bash scripts/compose-test.sh
echo "==> cargo test"
cargo test --workspace --locked
