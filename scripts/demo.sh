#!/usr/bin/env bash
# The demo: sets up what is missing, builds pgsplit (release), starts a local primary with two
# streaming replicas — replica 2 applying WAL 2 s late on purpose — starts pgsplit and a small
# background workload, and prints the DATABASE_URL and the dashboard URL.
#   scripts/demo.sh        start (or restart) everything
#   scripts/demo.sh stop   stop the workload, pgsplit and the cluster
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=$ROOT/.demo
LISTEN=${PGSPLIT_DEMO_LISTEN:-127.0.0.1:6432}
ADMIN=${PGSPLIT_DEMO_ADMIN:-127.0.0.1:9930}
# The demo's cluster is its own (the tests use .cluster on 15432).
export PGCLUSTER_DIR=${PGCLUSTER_DIR:-$ROOT/.cluster-demo}
export PGCLUSTER_PORT=${PGCLUSTER_PORT:-25432}
PORT=$PGCLUSTER_PORT

stop_pid() {
  local f=$1
  if [ -f "$f" ]; then
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      pkill -P "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
  fi
}

if [ "${1:-}" = "stop" ]; then
  stop_pid "$STATE/workload.pid"
  stop_pid "$STATE/pgsplit.pid"
  scripts/cluster.sh down
  echo "demo stopped"
  exit 0
fi

scripts/setup.sh
echo "demo: building pgsplit (release)..." >&2
cargo build --release --quiet --bin pgsplit
stop_pid "$STATE/workload.pid"
stop_pid "$STATE/pgsplit.pid"
scripts/cluster.sh up --replicas 2 --lag-replica 2 --lag-delay 2s
mkdir -p "$STATE"
./target/release/pgsplit --listen "$LISTEN" --admin-listen "$ADMIN" \
  --primary "postgres://app:app@127.0.0.1:$PORT/app" \
  --replica "postgres://app:app@127.0.0.1:$((PORT + 1))/app" \
  --replica "postgres://app:app@127.0.0.1:$((PORT + 2))/app" \
  --max-lag 1s --admin-user app \
  >"$STATE/pgsplit.log" 2>&1 &
echo $! >"$STATE/pgsplit.pid"

URL="postgres://app:app@$LISTEN/app"
for _ in $(seq 100); do
  psql -X -q "$URL" -Atc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.1
done
psql -X -q "$URL" -Atc "SELECT 1" >/dev/null || { tail -20 "$STATE/pgsplit.log" >&2; echo "demo: pgsplit did not start" >&2; exit 1; }

# A small workload: one client writes rows and reads each back in the same session (its reads
# follow its writes to the primary until a replica has them); two read-only clients read
# aggregates, which replicas serve — with `global` consistency, so that they see every write
# made through pgsplit before their reads (the table they read included).
psql -X -q "$URL" -c "CREATE TABLE IF NOT EXISTS demo_events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), n int)"
cat >"$STATE/write.sql" <<'SQL'
\set n random(1, 1000)
INSERT INTO demo_events (n) VALUES (:n);
SELECT count(*) FROM demo_events WHERE n = :n;
SQL
cat >"$STATE/read.sql" <<'SQL'
\set n random(1, 1000)
SELECT count(*), max(at) FROM demo_events WHERE n = :n;
SQL
(
  PGPASSWORD=app pgbench -n -h "${LISTEN%:*}" -p "${LISTEN##*:}" -U app -c 1 -R 10 -T 86400 -f "$STATE/write.sql" app >"$STATE/write.log" 2>&1 &
  PGOPTIONS="-c pgsplit.consistency=global" PGPASSWORD=app pgbench -n -h "${LISTEN%:*}" -p "${LISTEN##*:}" -U app \
    -c 2 -R 40 -T 86400 -f "$STATE/read.sql" app >"$STATE/read.log" 2>&1 &
  wait
) >/dev/null 2>&1 &
echo $! >"$STATE/workload.pid"

echo "pgsplit is running (pid $(cat "$STATE/pgsplit.pid"), log $STATE/pgsplit.log); a workload writes and reads in the background"
echo "replica 127.0.0.1:$((PORT + 2)) applies WAL 2 s late, over the 1 s max lag: it gets no reads"
echo "dashboard:     http://$ADMIN/dashboard"
echo "admin console: psql postgres://app:app@$LISTEN/pgsplit -c 'SHOW REPLICAS'"
echo "DATABASE_URL=$URL"
