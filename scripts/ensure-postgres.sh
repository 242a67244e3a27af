#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, postgres, pg_ctl) are on this machine, installing
# Debian's postgresql package when they are missing and we may (root, apt-get present).
set -euo pipefail
have() {
  for d in "${STRATA_PG_BIN:-}" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null) /usr/local/pgsql/bin; do
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_ctl" ] && return 0
  done
  command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null
}
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "ensure-postgres: installing PostgreSQL server binaries with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  have && exit 0
fi
echo "ensure-postgres: PostgreSQL server binaries not found; install PostgreSQL 14-17 (apt-get install postgresql) or set STRATA_PG_BIN" >&2
exit 1
