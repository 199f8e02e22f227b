#!/usr/bin/env bash
# The test command: installs what is missing, starts the local cluster (primary + 2 streaming
# replicas), and runs every test of the workspace against it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
scripts/cluster.sh up
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
