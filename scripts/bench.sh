#!/usr/bin/env bash
# Side-by-side benchmark: pgsplit vs a direct connection vs PgBouncer vs Pgpool-II, in one run.
#
# Starts its own cluster (primary + 2 streaming replicas), pgsplit (release build), PgBouncer
# (transaction pooling, pointed at the primary) and Pgpool-II (streaming replication with load
# balancing), initialises pgbench, and runs interleaved rounds (A B C A B C ...) of each workload
# against each target. Prints median/min/max TPS, latency, ratios to direct and to PgBouncer,
# and the proxy's CPU microseconds per transaction (user+sys from /proc); checks that pgsplit's
# select-only reads went to replicas; writes the table into docs/benchmarks.md.
#
# Tunable by environment: BENCH_CLIENTS (16), BENCH_THREADS (2), BENCH_DURATION (10 s),
# BENCH_ROUNDS (3), BENCH_SCALE (10), BENCH_TARGETS ("direct pgsplit pgbouncer pgpool"),
# BENCH_WORKLOADS ("select-simple select-extended select-prepared tpcb select-connect
# select-1client"), BENCH_EXTRA=1 (also: 10,000 idle clients' RSS, 16 vs 1,000 clients, the
# 1,000 for twice the duration),
# BENCH_WRITE_DOC (1: update docs/benchmarks.md), BENCH_PORT (26432), BENCH_BACKEND (tcp, or
# unix: the proxies reach the servers over their Unix sockets, as a proxy on the database host
# can; clients still connect to every target over TCP).
# Two more targets can be named in BENCH_TARGETS: "replica" (a direct connection to the first
# replica: the baseline for reads that pgsplit routes there) and "pgsplit-primary" (a second
# pgsplit with routing.reads = primary: the same work as PgBouncer, one node). A third,
# "pgsplit-b", runs another pgsplit binary, BENCH_SPLIT_B, configured as "pgsplit": two builds
# side by side in one run (an A/B of a change).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CLIENTS=${BENCH_CLIENTS:-16}
THREADS=${BENCH_THREADS:-2}
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
SCALE=${BENCH_SCALE:-10}
TARGETS=${BENCH_TARGETS:-"direct pgsplit pgbouncer pgpool"}
WORKLOADS=${BENCH_WORKLOADS:-"select-simple select-extended select-prepared tpcb select-connect select-1client"}
WRITE_DOC=${BENCH_WRITE_DOC:-1}
PORT=${BENCH_PORT:-26432}
BACKEND=${BENCH_BACKEND:-tcp}
SPLIT_PORT=$((PORT + 60))
SPLIT_ADMIN=$((PORT + 61))
BOUNCER_PORT=$((PORT + 62))
POOL_PORT=$((PORT + 63))
WORK=$ROOT/.bench
export PGCLUSTER_DIR=$ROOT/.cluster-bench PGCLUSTER_PORT=$PORT PGCLUSTER_REPLICAS=2
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGBENCH=$BIN/pgbench
CLK_TCK=$(getconf CLK_TCK)
CMDLINE="BENCH_CLIENTS=$CLIENTS BENCH_THREADS=$THREADS BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_SCALE=$SCALE BENCH_EXTRA=${BENCH_EXTRA:-0} BENCH_BACKEND=$BACKEND BENCH_TARGETS=\"$TARGETS\" BENCH_WORKLOADS=\"$WORKLOADS\" ${BENCH_SPLIT_B:+BENCH_SPLIT_B=$BENCH_SPLIT_B }scripts/bench.sh"

log() { printf 'bench: %s\n' "$*" >&2; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/setup.sh --bench
log "building pgsplit (release)"
cargo build --release --quiet --bin pgsplit
rm -rf "$WORK"
mkdir -p "$WORK"
chmod 777 "$WORK"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

scripts/cluster.sh down >/dev/null 2>&1 || true
scripts/cluster.sh up >/dev/null
# where the proxies find the servers: TCP, or the cluster's socket directory
case "$BACKEND" in
  tcp) NODE_HOST=127.0.0.1 PRIMARY_URL="postgres://app:app@127.0.0.1:$PORT/app" ;;
  unix) NODE_HOST=$PGCLUSTER_DIR PRIMARY_URL="postgres://app:app@/app?host=$PGCLUSTER_DIR&port=$PORT" ;;
  *) log "BENCH_BACKEND must be tcp or unix"; exit 1 ;;
esac
REPLICAS=(--replica "$NODE_HOST:$((PORT + 1))" --replica "$NODE_HOST:$((PORT + 2))")
log "pgbench -i -s $SCALE"
PGPASSWORD=app "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U app app >/dev/null 2>&1
# let the replicas replay the initial load
for r in 1 2; do
  until [ "$(PGPASSWORD=postgres psql -X -Atq -h 127.0.0.1 -p $((PORT + r)) -U postgres -d app -c "SELECT count(*) FROM pgbench_branches")" = "$SCALE" ]; do sleep 0.5; done
done
VERIFIER=$(PGPASSWORD=postgres psql -X -Atq -h 127.0.0.1 -p "$PORT" -U postgres -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")

# --- pgsplit ---
./target/release/pgsplit --listen "127.0.0.1:$SPLIT_PORT" --admin-listen "127.0.0.1:$SPLIT_ADMIN" \
  --primary "$PRIMARY_URL" "${REPLICAS[@]}" \
  --pool-size 20 --log-level warn --admin-user app >"$WORK/pgsplit.log" 2>&1 &
SPLIT_PID=$!
PIDS+=("$SPLIT_PID")
SPLIT_PRIMARY_PORT=$((PORT + 65))
SPLIT_PRIMARY_PID=""
if [[ " $TARGETS " == *" pgsplit-primary "* ]]; then
  PGSPLIT_ROUTING__READS=primary ./target/release/pgsplit --listen "127.0.0.1:$SPLIT_PRIMARY_PORT" --admin-listen "" \
    --primary "$PRIMARY_URL" "${REPLICAS[@]}" \
    --pool-size 20 --log-level warn >"$WORK/pgsplit-primary.log" 2>&1 &
  SPLIT_PRIMARY_PID=$!
  PIDS+=("$SPLIT_PRIMARY_PID")
fi

SPLIT_B_PORT=$((PORT + 66))
SPLIT_B_PID=""
if [[ " $TARGETS " == *" pgsplit-b "* ]]; then
  [ -x "${BENCH_SPLIT_B:-}" ] || { log "the pgsplit-b target needs BENCH_SPLIT_B=<a pgsplit binary>"; exit 1; }
  "$BENCH_SPLIT_B" --listen "127.0.0.1:$SPLIT_B_PORT" --admin-listen "" \
    --primary "$PRIMARY_URL" "${REPLICAS[@]}" \
    --pool-size 20 --log-level warn >"$WORK/pgsplit-b.log" 2>&1 &
  SPLIT_B_PID=$!
  PIDS+=("$SPLIT_B_PID")
fi

# --- PgBouncer (transaction pooling, primary only; it refuses to run as root) ---
cat >"$WORK/userlist.txt" <<EOF
"app" "$VERIFIER"
EOF
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
app = host=$NODE_HOST port=$PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 12000
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
EOF
chmod 644 "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
if [ "$(id -u)" = 0 ]; then
  # runuser's PAM session lowers the soft open-files limit to 1024: raise it again for the
  # 1,000-client run
  runuser -u postgres -- sh -c 'ulimit -n "$(ulimit -Hn)"; exec pgbouncer "$0"' "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
else
  pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
fi
sleep 1
BOUNCER_PID=$(cat "$WORK/pgbouncer.pid" 2>/dev/null || pgrep -n -f "pgbouncer $WORK/pgbouncer.ini")
PIDS+=("$BOUNCER_PID")

# --- Pgpool-II (streaming replication, load balancing) ---
POOLCONF=$WORK/pgpool
mkdir -p "$POOLCONF"
cat >"$POOLCONF/pgpool.conf" <<EOF
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $POOL_PORT
socket_dir = '$POOLCONF'
pcp_listen_addresses = ''
pcp_port = $((POOL_PORT + 1000))
pcp_socket_dir = '$POOLCONF'
backend_hostname0 = '$NODE_HOST'
backend_port0 = $PORT
backend_weight0 = 0
backend_flag0 = 'ALLOW_TO_FAILOVER'
backend_hostname1 = '$NODE_HOST'
backend_port1 = $((PORT + 1))
backend_weight1 = 1
backend_hostname2 = '$NODE_HOST'
backend_port2 = $((PORT + 2))
backend_weight2 = 1
load_balance_mode = on
num_init_children = $((CLIENTS > 32 ? CLIENTS + 4 : 36))
max_pool = 2
enable_pool_hba = off
pool_passwd = '$POOLCONF/pool_passwd'
sr_check_period = 10
sr_check_user = 'app'
sr_check_password = 'app'
sr_check_database = 'app'
health_check_period = 0
pid_file_name = '$POOLCONF/pgpool.pid'
logdir = '$POOLCONF'
wd_ipc_socket_dir = '$POOLCONF'
use_watchdog = off
log_min_messages = warning
EOF
echo "app:TEXTapp" >"$POOLCONF/pool_passwd"
touch "$POOLCONF/pcp.conf"
pgpool -n -f "$POOLCONF/pgpool.conf" -F "$POOLCONF/pcp.conf" >"$POOLCONF/pgpool.log" 2>&1 &
POOL_PID=$!
PIDS+=("$POOL_PID")

port_of() {
  case "$1" in
    direct) echo "$PORT" ;;
    replica) echo "$((PORT + 1))" ;;
    pgsplit) echo "$SPLIT_PORT" ;;
    pgsplit-primary) echo "$SPLIT_PRIMARY_PORT" ;;
    pgsplit-b) echo "$SPLIT_B_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
    pgpool) echo "$POOL_PORT" ;;
  esac
}
pid_of() {
  case "$1" in
    pgsplit) echo "$SPLIT_PID" ;;
    pgsplit-primary) echo "$SPLIT_PRIMARY_PID" ;;
    pgsplit-b) echo "$SPLIT_B_PID" ;;
    pgbouncer) echo "$BOUNCER_PID" ;;
    pgpool) echo "$POOL_PID" ;;
    *) echo "" ;;
  esac
}
# CPU ticks of a process and its children (Pgpool-II works in child processes).
cpu_ticks() {
  local root=$1 total=0 p
  [ -z "$root" ] && { echo 0; return; }
  for p in $root $(pgrep -P "$root" 2>/dev/null); do
    if [ -r "/proc/$p/stat" ]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    fi
  done
  echo "$total"
}
wait_ready() {
  local port=$1
  for _ in $(seq 100); do
    PGPASSWORD=app psql -X -Atq -h 127.0.0.1 -p "$port" -U app -d app -c "SELECT 1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}
ACTIVE=""
for t in $TARGETS; do
  if wait_ready "$(port_of "$t")"; then ACTIVE="$ACTIVE $t"; else log "$t did not come up; left out"; fi
done
log "targets:$ACTIVE"

args_for() {
  case "$1" in
    select-simple) echo "-S -M simple -c $CLIENTS -j $THREADS" ;;
    select-extended) echo "-S -M extended -c $CLIENTS -j $THREADS" ;;
    select-prepared) echo "-S -M prepared -c $CLIENTS -j $THREADS" ;;
    tpcb) echo "-M simple -c $CLIENTS -j $THREADS" ;;
    select-connect) echo "-S -M simple -C -c $CLIENTS -j $THREADS" ;;
    select-1client) echo "-S -M simple -c 1 -j 1" ;;
    select-16clients) echo "-S -M simple -c 16 -j $THREADS" ;;
    select-1000clients) echo "-S -M simple -c 1000 -j $THREADS" ;;
  esac
}

# 1,000 clients log in (SCRAM) for about half of a 10 s run before the steady state begins
# (pgbench's tps leaves the login out); they get twice the duration.
duration_for() {
  case "$1" in
    select-1000clients) echo $((DURATION * 2)) ;;
    *) echo "$DURATION" ;;
  esac
}

replica_xacts() {
  local n=0 r
  for r in 1 2; do
    n=$((n + $(PGPASSWORD=postgres psql -X -Atq -h 127.0.0.1 -p $((PORT + r)) -U postgres -d postgres -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'")))
  done
  echo "$n"
}

# CPU ticks the whole machine spent busy (user, nice, system, irq, softirq).
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

RESULTS=$WORK/results.tsv
: >"$RESULTS"
run_one() {
  local w=$1 t=$2 round=$3 port pid before after out tps lat failed ticks_before ticks_after rep_before rep_after
  local busy_before busy_after bench_s
  port=$(port_of "$t")
  pid=$(pid_of "$t")
  rep_before=$(replica_xacts)
  ticks_before=$(cpu_ticks "$pid")
  busy_before=$(machine_ticks)
  # `times` in the subshell: the CPU pgbench used (its last line, children's user and sys)
  # shellcheck disable=SC2046
  out=$(
    PGPASSWORD=app "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U app -T "$(duration_for "$w")" $(args_for "$w") app 2>&1 || true
    times
  )
  busy_after=$(machine_ticks)
  ticks_after=$(cpu_ticks "$pid")
  rep_after=$(replica_xacts)
  bench_s=$(echo "$out" | tail -1 | awk '{ s = 0; for (i = 1; i <= NF; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }')
  tps=$(echo "$out" | awk '/^tps = /{print $3; exit}')
  lat=$(echo "$out" | awk '/^latency average = /{print $4; exit}')
  failed=$(echo "$out" | awk '/number of failed transactions/{print $5; exit}')
  xacts=$(echo "$out" | awk '/number of transactions actually processed/{split($6,a,"/"); print a[1]; exit}')
  [ -z "$tps" ] && { log "$w on $t failed: $(echo "$out" | tail -3 | tr '\n' ' ')"; tps=0; lat=0; xacts=0; }
  local cpu_us=0 servers_us=0
  if [ -n "$pid" ] && [ "${xacts:-0}" -gt 0 ]; then
    cpu_us=$(awk -v d=$((ticks_after - ticks_before)) -v hz="$CLK_TCK" -v x="$xacts" 'BEGIN{printf "%.1f", d * 1e6 / hz / x}')
  fi
  # what neither the proxy nor pgbench used: the PostgreSQL servers (and the kernel work
  # charged to them), per transaction
  if [ "${xacts:-0}" -gt 0 ]; then
    servers_us=$(awk -v m=$((busy_after - busy_before)) -v p=$((ticks_after - ticks_before)) -v b="$bench_s" \
      -v hz="$CLK_TCK" -v x="$xacts" 'BEGIN{v = ((m - p) / hz - b) * 1e6 / x; printf "%.1f", v < 0 ? 0 : v}')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$t" "$round" "$tps" "$lat" "$cpu_us" "${failed:-?}" "$((rep_after - rep_before))" "$servers_us" >>"$RESULTS"
  log "round $round $w $t: tps=$tps lat=${lat}ms cpu/tx=${cpu_us}us servers/tx=${servers_us}us failed=${failed:-?} replica-xacts=$((rep_after - rep_before))"
}

for round in $(seq "$ROUNDS"); do
  for w in $WORKLOADS; do
    for t in $ACTIVE; do
      run_one "$w" "$t" "$round"
    done
  done
done

EXTRA=""
if [ "${BENCH_EXTRA:-0}" = 1 ]; then
  log "extra: 16 vs 1000 clients through pgsplit and PgBouncer, and 10,000 idle clients"
  for round in $(seq "$ROUNDS"); do
    for t in pgsplit pgbouncer; do
      run_one select-16clients "$t" "x$round"
      run_one select-1000clients "$t" "x$round"
    done
  done
  # RSS of a pgsplit process before and with 10,000 idle clients logged in (SCRAM)
  idle_rss() {
    local port=$1 pid=$2 before with opened
    before=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
    rm -f "$WORK/idle.ready"
    python3 "$ROOT/scripts/idle_clients.py" 127.0.0.1 "$port" 10000 "$WORK/idle.ready" >"$WORK/idle.log" 2>&1 &
    local idle=$!
    PIDS+=("$idle")
    for _ in $(seq 600); do [ -f "$WORK/idle.ready" ] && break; sleep 0.5; done
    with=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
    opened=$(cat "$WORK/idle.ready" 2>/dev/null || echo 0)
    kill "$idle" 2>/dev/null || true
    sleep 2
    echo "$opened clients open: RSS $((before / 1024)) MiB before, $((with / 1024)) MiB with them"
  }
  after_load=$(idle_rss "$SPLIT_PORT" "$SPLIT_PID")
  # the same on a fresh process (the benchmarked one keeps the heap its 1,000-client peak grew)
  FRESH_PORT=$((PORT + 64))
  ./target/release/pgsplit --listen "127.0.0.1:$FRESH_PORT" --admin-listen "" \
    --primary "$PRIMARY_URL" "${REPLICAS[@]}" \
    --pool-size 20 --log-level warn >"$WORK/pgsplit-fresh.log" 2>&1 &
  FRESH_PID=$!
  PIDS+=("$FRESH_PID")
  sleep 1
  fresh=$(idle_rss "$FRESH_PORT" "$FRESH_PID")
  EXTRA="10,000 idle clients — fresh pgsplit: $fresh; the benchmarked pgsplit after its runs: $after_load"
  log "$EXTRA"
fi

REPORT=$WORK/report.md
python3 - "$RESULTS" "$REPORT" "$CMDLINE" "$EXTRA" <<'PY'
import sys, statistics, collections, datetime, platform, os, subprocess
res, out, cmd, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [l.rstrip("\n").split("\t") for l in open(res) if l.strip()]
data = collections.defaultdict(list)
for w, t, r, tps, lat, cpu, failed, rep, servers in rows:
    data[(w, t)].append((float(tps), float(lat or 0), float(cpu or 0), failed, int(rep), float(servers or 0)))
workloads = list(dict.fromkeys(w for w, *_ in rows))
targets = list(dict.fromkeys(t for _, t, *_ in rows))
def med(xs): return statistics.median(xs) if xs else 0
cpu_model = "unknown"
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu_model = l.split(":", 1)[1].strip(); break
except Exception: pass
lines = []
lines.append(f"Measured {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores ({cpu_model}), "
             f"PostgreSQL {subprocess.run(['psql','--version'],capture_output=True,text=True).stdout.split()[2]}, primary + 2 replicas on the same machine.")
lines.append("")
lines.append(f"Command: `{cmd}`")
lines.append("")
lines.append("| workload | target | TPS median | min | max | latency ms | × direct | × PgBouncer | proxy CPU µs/tx | servers CPU µs/tx | failed | replica xacts |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for w in workloads:
    direct = med([x[0] for x in data.get((w, "direct"), [])])
    bouncer = med([x[0] for x in data.get((w, "pgbouncer"), [])])
    for t in targets:
        xs = data.get((w, t))
        if not xs: continue
        tps = [x[0] for x in xs]
        m = med(tps)
        rd = f"{m/direct:.2f}" if direct else "–"
        rb = f"{m/bouncer:.2f}" if bouncer else "–"
        cpu = med([x[2] for x in xs]) if t not in ("direct", "replica") else None
        failed = ",".join(sorted(set(x[3] for x in xs)))
        rep = sum(x[4] for x in xs)
        servers = med([x[5] for x in xs])
        lines.append(f"| {w} | {t} | {m:,.0f} | {min(tps):,.0f} | {max(tps):,.0f} | {med([x[1] for x in xs]):.3f} | {rd} | {rb} | {'' if cpu is None else f'{cpu:.1f}'} | {servers:.1f} | {failed} | {rep:,} |")
# added latency at one client
d1 = med([x[1] for x in data.get(("select-1client", "direct"), [])])
if d1:
    lines.append("")
    lines.append("Added latency at 1 client (select-only, simple), median over rounds: " + ", ".join(
        f"{t} +{(med([x[1] for x in data[('select-1client', t)]]) - d1) * 1000:.0f} µs" for t in targets if t not in ("direct", "replica") and ("select-1client", t) in data))
# throughput from 16 to 1,000 clients
drops = []
for t in targets:
    a = med([x[0] for x in data.get(("select-16clients", t), [])])
    b = med([x[0] for x in data.get(("select-1000clients", t), [])])
    if a and b:
        drops.append(f"{t} {(b / a - 1) * 100:+.0f}%")
if drops:
    lines.append("")
    lines.append("Throughput from 16 to 1,000 clients (select-only, simple), medians: " + ", ".join(drops))
if extra:
    lines.append("")
    lines.append(extra)
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

if [ "$WRITE_DOC" = 1 ]; then
  python3 - "$ROOT/docs/benchmarks.md" "$REPORT" <<'PY'
import sys
doc, rep = sys.argv[1], sys.argv[2]
text = open(doc).read() if __import__("os").path.exists(doc) else "# Benchmarks\n\n<!-- bench:begin -->\n<!-- bench:end -->\n"
begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
new = open(rep).read()
if begin in text and end in text:
    a = text.index(begin) + len(begin); b = text.index(end)
    text = text[:a] + "\n" + new + text[b:]
else:
    text += f"\n{begin}\n{new}{end}\n"
open(doc, "w").write(text)
PY
  log "docs/benchmarks.md updated"
fi
