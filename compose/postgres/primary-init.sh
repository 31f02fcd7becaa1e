#!/bin/sh
# Runs once, when pg-eu initialises its data directory (docker-entrypoint-initdb.d): the role the
# replica in us streams WAL with, and the pg_hba line letting it connect for replication.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
