#!/usr/bin/env bash
# Installs what building and testing pgsplit needs on a fresh Debian machine, skipping what is
# already there: PostgreSQL server binaries, libclang (for pg_query's bindings), a C compiler,
# and Chromium (the dashboard test). Tests run with cargo-nextest when present, else cargo test.
#   scripts/setup.sh           build + test dependencies
#   scripts/setup.sh --bench   also PgBouncer, Pgpool-II and perf for scripts/bench.sh
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
have_pkg libclang-dev || need+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
# the dashboard test loads the page in headless Chromium
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${1:-}" = "--bench" ]; then
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
  command -v pgpool >/dev/null 2>&1 || [ -x /usr/sbin/pgpool ] || need+=(pgpool2)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
