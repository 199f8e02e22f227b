#!/usr/bin/env bash
# Sets up what is missing, builds pgsplit (release), starts the local cluster and pgsplit, and
# prints the DATABASE_URL to use.
#   scripts/demo.sh        start (or restart) everything
#   scripts/demo.sh stop   stop pgsplit and the cluster
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=$ROOT/.demo
LISTEN=${PGSPLIT_DEMO_LISTEN:-127.0.0.1:6432}
ADMIN=${PGSPLIT_DEMO_ADMIN:-127.0.0.1:9930}
PORT=${PGCLUSTER_PORT:-15432}

stop_pgsplit() {
  if [ -f "$STATE/pgsplit.pid" ]; then
    pid=$(cat "$STATE/pgsplit.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$STATE/pgsplit.pid"
  fi
}

if [ "${1:-}" = "stop" ]; then
  stop_pgsplit
  scripts/cluster.sh down
  echo "demo stopped"
  exit 0
fi

scripts/setup.sh
echo "demo: building pgsplit (release)..." >&2
cargo build --release --quiet --bin pgsplit
scripts/cluster.sh up
mkdir -p "$STATE"
stop_pgsplit
./target/release/pgsplit --listen "$LISTEN" --admin-listen "$ADMIN" \
  --primary "postgres://app:app@127.0.0.1:$PORT/app" \
  --replica "postgres://app:app@127.0.0.1:$((PORT + 1))/app" \
  --replica "postgres://app:app@127.0.0.1:$((PORT + 2))/app" \
  >"$STATE/pgsplit.log" 2>&1 &
echo $! >"$STATE/pgsplit.pid"
for _ in $(seq 100); do
  if PGPASSWORD=app psql -X -q -h "${LISTEN%:*}" -p "${LISTEN##*:}" -U app -d app -Atc "SELECT 1" >/dev/null 2>&1; then
    break
  fi
  sleep 0.1
done
PGPASSWORD=app psql -X -q -h "${LISTEN%:*}" -p "${LISTEN##*:}" -U app -d app -Atc "SELECT 1" >/dev/null ||
  { tail -20 "$STATE/pgsplit.log" >&2; echo "demo: pgsplit did not start" >&2; exit 1; }
echo "pgsplit is running (pid $(cat "$STATE/pgsplit.pid"), log $STATE/pgsplit.log)"
echo "metrics:  http://$ADMIN/metrics"
echo "DATABASE_URL=postgres://app:app@$LISTEN/app"
