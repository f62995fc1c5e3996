#!/usr/bin/env bash
# The airflow-init service (docker/compose.yaml), run to completion before the other Airflow
# services start: the metadata DB schema (`airflow db migrate`), the admin's password for
# SimpleAuthManager, and the connections, stored in the metadata DB (so the UI lists them):
#   slurm_site, condor_site  the batch site container over SSH (type batchsite)
#   batchsite_ledger         the campaign ledger in the postgres container (type postgres)
# Idempotent: a second run migrates nothing and overwrites the three connections.
set -euo pipefail
: "${BATCHSITE_LEDGER_PASSWORD:?set in docker/.env (docker/make-env.sh writes it)}"
: "${AIRFLOW_ADMIN_PASSWORD:?set in docker/.env (docker/make-env.sh writes it)}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
keys=/opt/batchsite/keys

airflow db migrate

# temp name, then rename
passwords=$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE
printf '{"admin": "%s"}\n' "$AIRFLOW_ADMIN_PASSWORD" > "$passwords.tmp"
mv -f "$passwords.tmp" "$passwords"

site_extra() {  # SCHEDULER
  printf '{"scheduler": "%s", "remote_root": "/home/bsite/batchsite", "env_script": "/home/bsite/site-env.sh", "python": "/usr/bin/python3", "key_file": "%s/id_ed25519", "known_hosts": "%s/known_hosts"}' \
    "$1" "$keys" "$keys"
}
connections=$(mktemp --suffix=.json)
cat > "$connections" <<JSON
{
  "slurm_site": {"conn_type": "batchsite", "host": "site", "port": 22, "login": "bsite",
                 "extra_dejson": $(site_extra slurm)},
  "condor_site": {"conn_type": "batchsite", "host": "site", "port": 22, "login": "bsite",
                  "extra_dejson": $(site_extra htcondor)},
  "batchsite_ledger": {"conn_type": "postgres", "host": "postgres", "port": 5432, "login": "batchsite_ledger",
                       "password": "$BATCHSITE_LEDGER_PASSWORD", "schema": "batchsite_ledger"}
}
JSON
airflow connections import --overwrite "$connections"
rm -f "$connections"
