#!/bin/bash
# Runs once in the primary container (docker-entrypoint-initdb.d): roles, database, replication.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD:-replicator}';
CREATE ROLE app LOGIN PASSWORD '${APP_PASSWORD:-app}';
GRANT pg_monitor TO app;
CREATE DATABASE app OWNER app;
SELECT pg_create_physical_replication_slot('replica1');
SELECT pg_create_physical_replication_slot('replica2');
SQL
cat >> "$PGDATA/pg_hba.conf" <<HBA
host replication replicator all scram-sha-256
host all all all scram-sha-256
HBA
