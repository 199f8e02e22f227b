#!/bin/bash
# A streaming replica: the first start copies the primary with pg_basebackup, later starts resume.
set -euo pipefail
: "${PRIMARY_HOST:=primary}" "${SLOT:?}" "${REPLICATION_PASSWORD:=replicator}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$PRIMARY_HOST" -p 5432 -U replicator -q; do sleep 1; done
  rm -rf "${PGDATA:?}"/*
  PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator \
    -D "$PGDATA" -R -X stream -S "$SLOT" -d "application_name=$SLOT"
  chmod 700 "$PGDATA"
  if [ -n "${RECOVERY_MIN_APPLY_DELAY:-}" ]; then
    echo "recovery_min_apply_delay = '$RECOVERY_MIN_APPLY_DELAY'" >> "$PGDATA/postgresql.auto.conf"
  fi
fi
exec postgres -c hot_standby=on -c hot_standby_feedback=on
