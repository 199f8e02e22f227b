#!/usr/bin/env bash
# A real PostgreSQL primary plus N streaming replicas on loopback ports, from the local
# PostgreSQL binaries. No Docker. postgres runs as the `postgres` OS user (or as the calling
# user when that is not root).
#
#   scripts/cluster.sh up [--replicas N] [--lag-replica I --lag-delay 2s]
#   scripts/cluster.sh status
#   scripts/cluster.sh set-delay I DELAY     # change recovery_min_apply_delay of replica I live
#   scripts/cluster.sh stop-node NAME        # stop one node (primary, replica1, ...)
#   scripts/cluster.sh start-node NAME
#   scripts/cluster.sh promote I             # pg_ctl promote replica I
#   scripts/cluster.sh env                   # print the connection settings as shell variables
#   scripts/cluster.sh down                  # stop everything and delete the data directory
#
# Environment (all optional):
#   PGCLUSTER_DIR   data directory       (default: <repo>/.cluster)
#   PGCLUSTER_PORT  primary port         (default: 15432; replica i gets PORT+i)
#   PGCLUSTER_REPLICAS      number of replicas   (default: 2)
#   PGCLUSTER_LAG_REPLICA / PGCLUSTER_LAG_DELAY    give replica I a recovery_min_apply_delay
#
# Roles created on the primary (passwords equal the names unless noted):
#   postgres   superuser (password "postgres")      app     SCRAM, owns database app
#   md5user    md5-hashed password                   pwuser  password auth (cleartext)
#   trustuser  trusted from 127.0.0.1                alice   SCRAM, not listed in pgsplit configs
#   replicator replication role                      pgsplit_auth  runs the auth_query function
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${PGCLUSTER_DIR:-$ROOT/.cluster}
PORT=${PGCLUSTER_PORT:-15432}
REPLICAS=${PGCLUSTER_REPLICAS:-2}
LAG_REPLICA=${PGCLUSTER_LAG_REPLICA:-}
LAG_DELAY=${PGCLUSTER_LAG_DELAY:-}

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
  for v in 17 16 15 14; do
    if [ -x "/usr/lib/postgresql/$v/bin/postgres" ]; then echo "/usr/lib/postgresql/$v/bin"; return; fi
  done
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/postgres" ]; then pg_config --bindir; return; fi
  echo ""
}

ensure_postgres() {
  BIN=$(find_bindir)
  if [ -z "$BIN" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL server binaries not found; install the 'postgresql' package"
    log "installing postgresql with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
    BIN=$(find_bindir)
    [ -n "$BIN" ] || die "postgresql installed but no server binaries found"
  fi
}

# Run a command as the OS user that owns the cluster.
if [ "$(id -u)" = 0 ]; then
  OSUSER=postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  OSUSER=$(id -un)
  as_pg() { "$@"; }
fi

node_names() {
  echo primary
  local i
  for ((i = 1; i <= REPLICAS; i++)); do echo "replica$i"; done
}
node_port() {
  case "$1" in
    primary) echo "$PORT" ;;
    replica*) echo $((PORT + ${1#replica})) ;;
    *) die "unknown node $1" ;;
  esac
}
node_running() { [ -f "$DIR/$1/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DIR/$1" status >/dev/null 2>&1; }

psql_primary() {
  PGPASSWORD=postgres psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "${2:-postgres}" -Atc "$1"
}
psql_node() {
  PGPASSWORD=postgres psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(node_port "$1")" -U postgres -d postgres -Atc "$2"
}

start_node() {
  local name=$1
  node_running "$name" && return 0
  as_pg "$BIN/pg_ctl" -D "$DIR/$name" -l "$DIR/$name.log" -w -t 60 start >/dev/null ||
    { tail -20 "$DIR/$name.log" >&2; die "could not start $name"; }
}

init_primary() {
  local d=$DIR/primary
  as_pg "$BIN/initdb" -D "$d" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$DIR/.pw" -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 ||
    { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  cat >>"$d/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 16
max_replication_slots = 16
hot_standby = on
hot_standby_feedback = on
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = on
full_page_writes = off
wal_keep_size = 256MB
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  cat >"$d/pg_hba.conf" <<EOF
local all all trust
host replication replicator 127.0.0.1/32 scram-sha-256
host all trustuser 127.0.0.1/32 trust
host all md5user 127.0.0.1/32 md5
host all pwuser 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
EOF
}

create_roles() {
  psql_primary "
    SET password_encryption = 'scram-sha-256';
    CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replicator';
    CREATE ROLE app LOGIN PASSWORD 'app';
    GRANT pg_monitor TO app;
    CREATE ROLE alice LOGIN PASSWORD 'alice';
    CREATE ROLE pwuser LOGIN PASSWORD 'pwuser';
    CREATE ROLE trustuser LOGIN;
    CREATE ROLE pgsplit_auth LOGIN PASSWORD 'pgsplit_auth';
    SET password_encryption = 'md5';
    CREATE ROLE md5user LOGIN PASSWORD 'md5user';
  "
  psql_primary "CREATE DATABASE app OWNER app"
  psql_primary "
    GRANT ALL ON DATABASE app TO alice, md5user, pwuser, trustuser;
    -- the auth_query function: pgsplit_auth may read one secret at a time, nothing else
    CREATE FUNCTION public.pgsplit_get_auth(p_user text, OUT usename name, OUT passwd text)
      RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
      \$\$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_user \$\$;
    REVOKE ALL ON FUNCTION public.pgsplit_get_auth(text) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION public.pgsplit_get_auth(text) TO pgsplit_auth;
  "
  psql_primary "GRANT ALL ON SCHEMA public TO alice, md5user, pwuser, trustuser;" app
}

init_replica() {
  local i=$1 name=replica$1 d=$DIR/replica$1
  as_pg env PGPASSWORD=replicator "$BIN/pg_basebackup" -d "host=127.0.0.1 port=$PORT user=replicator application_name=$name" \
    -D "$d" -R -X stream -c fast -S "slot_replica$i" -C >/dev/null 2>"$DIR/$name.basebackup.log" ||
    { cat "$DIR/$name.basebackup.log" >&2; die "pg_basebackup for $name failed"; }
  {
    echo "port = $(node_port "$name")"
    if [ "$LAG_REPLICA" = "$i" ] && [ -n "$LAG_DELAY" ]; then echo "recovery_min_apply_delay = '$LAG_DELAY'"; fi
  } | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
}

wait_streaming() {
  local want=$1 n=0 i
  for ((i = 0; i < 300; i++)); do
    n=$(psql_primary "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null || echo 0)
    [ "$n" -ge "$want" ] && return 0
    sleep 0.2
  done
  die "only $n of $want replicas are streaming"
}

cmd_up() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --replicas) REPLICAS=$2; shift 2 ;;
      --lag-replica) LAG_REPLICA=$2; shift 2 ;;
      --lag-delay) LAG_DELAY=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  ensure_postgres
  mkdir -p "$DIR"
  echo postgres >"$DIR/.pw"
  [ "$OSUSER" = postgres ] && chown postgres: "$DIR" "$DIR/.pw"
  chmod 700 "$DIR"
  if [ ! -f "$DIR/primary/PG_VERSION" ]; then
    log "initdb primary on port $PORT"
    init_primary
  fi
  start_node primary
  # also when an earlier `up` made the primary but stopped before its roles (its port was
  # taken, say): the replicas' pg_basebackup needs the replicator role
  if [ "$(psql_primary "SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'")" != 1 ]; then
    create_roles
  fi
  local i
  for ((i = 1; i <= REPLICAS; i++)); do
    if [ ! -f "$DIR/replica$i/PG_VERSION" ]; then
      log "pg_basebackup replica$i on port $((PORT + i))"
      init_replica "$i"
    fi
    start_node "replica$i"
  done
  echo "$REPLICAS" >"$DIR/replicas"
  wait_streaming "$REPLICAS"
  log "up: primary 127.0.0.1:$PORT, $REPLICAS streaming replica(s) on ports $((PORT + 1))..$((PORT + REPLICAS))"
}

load_replicas() { [ -f "$DIR/replicas" ] && REPLICAS=$(cat "$DIR/replicas") || true; }

cmd_status() {
  ensure_postgres
  load_replicas
  local name
  for name in $(node_names); do
    if node_running "$name"; then
      local rec delay
      rec=$(psql_node "$name" "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END" 2>/dev/null || echo '?')
      delay=$(psql_node "$name" "SHOW recovery_min_apply_delay" 2>/dev/null || echo '?')
      printf '%-10s port %-6s running  %-8s recovery_min_apply_delay=%s\n' "$name" "$(node_port "$name")" "$rec" "$delay"
    else
      printf '%-10s port %-6s stopped\n' "$name" "$(node_port "$name")"
    fi
  done
  if node_running primary; then
    psql_primary "SELECT application_name || ' ' || state || ' replay_lag=' || coalesce(replay_lag::text, '0') FROM pg_stat_replication" || true
  fi
}

cmd_set_delay() {
  local i=$1 delay=$2 d=$DIR/replica$1
  ensure_postgres
  [ -d "$d" ] || die "no replica$i"
  as_pg sed -i '/^recovery_min_apply_delay/d' "$d/postgresql.auto.conf"
  echo "recovery_min_apply_delay = '$delay'" | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
  as_pg "$BIN/pg_ctl" -D "$d" reload >/dev/null
  log "replica$i recovery_min_apply_delay = $delay"
}

cmd_down() {
  ensure_postgres
  load_replicas
  local name
  for d in "$DIR"/replica* "$DIR"/primary; do
    [ -d "$d" ] || continue
    name=$(basename "$d")
    if node_running "$name"; then as_pg "$BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null || true; fi
  done
  rm -rf "$DIR"
  log "down"
}

cmd_env() {
  load_replicas
  echo "PGCLUSTER_PRIMARY=127.0.0.1:$PORT"
  local i reps=""
  for ((i = 1; i <= REPLICAS; i++)); do reps="$reps${reps:+,}127.0.0.1:$((PORT + i))"; done
  echo "PGCLUSTER_REPLICAS=$reps"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  status) cmd_status ;;
  down) cmd_down ;;
  set-delay) [ $# -eq 3 ] || die "usage: set-delay I DELAY"; cmd_set_delay "$2" "$3" ;;
  stop-node) ensure_postgres; as_pg "$BIN/pg_ctl" -D "$DIR/$2" -m fast -w stop >/dev/null ;;
  start-node) ensure_postgres; start_node "$2" ;;
  promote) ensure_postgres; as_pg "$BIN/pg_ctl" -D "$DIR/replica$2" -w promote >/dev/null ;;
  env) cmd_env ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
