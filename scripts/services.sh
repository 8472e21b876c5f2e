#!/usr/bin/env bash
# Install (Debian packages, first time only) and start the services the backend's tests and
# scale-out mode use: PostgreSQL and Redis on loopback. Idempotent: a second run only checks.
# Prints `export ...` lines for the URLs; use as:  eval "$(scripts/services.sh)"
set -euo pipefail
log() { echo "services: $*" >&2; }
SUDO=""; ASPG="runuser -u postgres --"
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; ASPG="sudo -u postgres"; fi

need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "${R3MES_WITH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (apt-get)"
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >&2
fi

PGVER=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$PGVER main"; then
  $SUDO pg_createcluster "$PGVER" main >&2
fi
if ! pg_lsclusters -h | grep "^$PGVER main" | grep -q online; then
  log "starting PostgreSQL $PGVER"
  $SUDO pg_ctlcluster "$PGVER" main start >&2
fi
PGPORT=$(pg_lsclusters -h | awk -v v="$PGVER" '$1==v && $2=="main" {print $3}')
for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.2; done
$ASPG psql -q -p "$PGPORT" -tc "SELECT 1 FROM pg_roles WHERE rolname='r3mes'" \
  | grep -q 1 || $ASPG psql -q -p "$PGPORT" \
  -c "CREATE ROLE r3mes LOGIN SUPERUSER PASSWORD 'r3mes'" >&2

REDIS_PORT=${R3MES_REDIS_PORT:-6379}
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting Redis on $REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save '' \
    --appendonly no >&2
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "export R3MES_TEST_POSTGRES_URL=postgresql://r3mes:r3mes@127.0.0.1:$PGPORT/postgres"
echo "export R3MES_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
