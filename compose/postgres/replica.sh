#!/bin/sh
# pg-us: a streaming replica (hot standby) of pg-eu, the domain's one database.  On first start it
# clones the primary with pg_basebackup (-R writes standby.signal and primary_conninfo); later
# starts resume streaming.  Promote it with `pg_ctl promote` (see compose/README.md) if eu is lost.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup --host=pg-eu --username=replicator \
            --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream --checkpoint=fast; do
        echo "waiting for the primary pg-eu…" >&2
        rm -rf "${PGDATA:?}"/*
        sleep 2
    done
    chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on
