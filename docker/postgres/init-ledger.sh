#!/usr/bin/env bash
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d/):
# the campaign ledger's role and database next to Airflow's metadata DB, as on the test site
# (tests/site/site.sh: databases `airflow` and `batchsite_ledger`, each owned by its role).
set -euo pipefail
: "${BATCHSITE_LEDGER_PASSWORD:?set in docker/.env (docker/make-env.sh writes it)}"
psql -v ON_ERROR_STOP=1 -v pw="$BATCHSITE_LEDGER_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE batchsite_ledger LOGIN PASSWORD :'pw';
CREATE DATABASE batchsite_ledger OWNER batchsite_ledger ENCODING 'UTF8' TEMPLATE template0;
SQL
