#!/usr/bin/env bash
# Instructions pgsplit executes per transaction in user space, counted by valgrind's callgrind.
# CPU time on a shared host moves by ±30% from one run to the next; an instruction count moves
# by well under 1%, so this is the A/B measure for changes to the hot path (it does not see
# cache misses or the kernel: scripts/bench.sh is still the measure of speed).
#
#   scripts/instructions.sh [pgsplit binary ...]     (default: target/release/pgsplit)
#
# For each binary: starts it under callgrind against a local cluster (primary + 2 replicas),
# warms up with 300 transactions, zeroes the counters, runs INSN_TX transactions of
# `pgbench -b INSN_BUILTIN -M INSN_MODE` with INSN_CLIENTS clients, and prints instructions per
# transaction and the heaviest pgsplit functions (inclusive). Env: INSN_TX (2000), INSN_MODE
# (simple), INSN_BUILTIN (select-only; tpcb-like is the read/write script), INSN_CLIENTS (1),
# INSN_PORT (28432), INSN_TOP (12).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TX=${INSN_TX:-2000}
MODE=${INSN_MODE:-simple}
BUILTIN=${INSN_BUILTIN:-select-only}
CLIENTS=${INSN_CLIENTS:-1}
PORT=${INSN_PORT:-28432}
TOP=${INSN_TOP:-12}
SPLIT_PORT=$((PORT + 60))
WORK=$ROOT/.insn
export PGCLUSTER_DIR=$ROOT/.cluster-insn PGCLUSTER_PORT=$PORT PGCLUSTER_REPLICAS=2
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
log() { printf 'instructions: %s\n' "$*" >&2; }

command -v valgrind >/dev/null 2>&1 || {
  [ "$(id -u)" = 0 ] || { log "valgrind is required"; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
BINARIES=("$@")
if [ ${#BINARIES[@]} -eq 0 ]; then
  cargo build --release --quiet --bin pgsplit
  BINARIES=(target/release/pgsplit)
fi

VG_PID=""
cleanup() {
  [ -n "$VG_PID" ] && kill "$VG_PID" 2>/dev/null || true
  scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
scripts/cluster.sh down >/dev/null 2>&1 || true
scripts/cluster.sh up >/dev/null
PGPASSWORD=app "$BIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$PORT" -U app app >/dev/null 2>&1
for r in 1 2; do
  until [ "$(PGPASSWORD=postgres psql -X -Atq -h 127.0.0.1 -p $((PORT + r)) -U postgres -d app -c "SELECT count(*) FROM pgbench_branches" 2>/dev/null)" = 1 ]; do sleep 0.5; done
done

pgbench() { PGPASSWORD=app "$BIN/pgbench" -n -b "$BUILTIN" -M "$MODE" -c "$CLIENTS" -h 127.0.0.1 -p "$SPLIT_PORT" -U app app "$@"; }
n=0
for b in "${BINARIES[@]}"; do
  n=$((n + 1))
  out=$WORK/callgrind.$n.out
  # a long monitor interval: the lag monitor's queries are not part of a transaction's cost
  PGSPLIT_MONITOR__INTERVAL=5s setsid valgrind --tool=callgrind --callgrind-out-file="$out" "$b" \
    --listen "127.0.0.1:$SPLIT_PORT" --admin-listen "" --primary "postgres://app:app@127.0.0.1:$PORT/app" \
    --replica "127.0.0.1:$((PORT + 1))" --replica "127.0.0.1:$((PORT + 2))" --pool-size 20 --log-level warn \
    >"$WORK/pgsplit.$n.log" 2>&1 &
  VG_PID=$!
  for _ in $(seq 120); do
    PGPASSWORD=app psql -X -Atq -h 127.0.0.1 -p "$SPLIT_PORT" -U app app -c "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.5
  done
  pgbench -t 300 >/dev/null 2>&1
  callgrind_control -z "$VG_PID" >/dev/null 2>&1
  pgbench -t $((TX / CLIENTS)) >/dev/null 2>&1
  callgrind_control -d "$VG_PID" >/dev/null 2>&1
  sleep 1
  kill "$VG_PID"
  wait "$VG_PID" 2>/dev/null || true
  VG_PID=""
  # the dump after zeroing holds exactly the measured transactions
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  echo "$b: $((total / TX)) instructions per transaction ($total for $TX, -b $BUILTIN -M $MODE, $CLIENTS client(s))"
  # the heaviest functions of pgsplit's own source, inclusive (inlined code is listed under
  # the file it was written in, so only lines whose file is in this repository are kept)
  callgrind_annotate --inclusive=yes "$out.1" 2>/dev/null \
    | awk -v root="$ROOT/" -v tx="$TX" -v top="$TOP" '
        /^-- Auto-annotated/ { exit }
        index($0, " " root) && !/main\.rs:|handshake\.rs:|session\/mod\.rs:|Instrumented/ {
          n = $1; gsub(",", "", n)
          f = $0; sub(/.*\.rs:/, "", f); sub(/ \[.*/, "", f)
          if (!(f in seen)) { seen[f] = 1; printf "  %7d  %s\n", n / tx, f; if (++shown >= top) exit }
        }' || true
done
