#!/usr/bin/env bash
# Write docker/.env (read by `docker compose`) with generated secrets, once: an existing .env is
# kept. The admin's password for the web UI is AIRFLOW_ADMIN_PASSWORD there.
set -euo pipefail
env_file=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.env
if [ -e "$env_file" ]; then echo "$env_file exists: kept"; exit 0; fi
secret() { head -c 24 /dev/urandom | base64 | tr -d '/+='; }
fernet() { head -c 32 /dev/urandom | base64 | tr '/+' '_-'; }   # urlsafe base64 of 32 bytes
tmp=$(mktemp "$env_file.XXXXXX")
chmod 600 "$tmp"
cat > "$tmp" <<ENV
AIRFLOW_DB_PASSWORD=$(secret)
BATCHSITE_LEDGER_PASSWORD=$(secret)
AIRFLOW_ADMIN_PASSWORD=$(secret)
AIRFLOW_FERNET_KEY=$(fernet)
AIRFLOW_JWT_SECRET=$(secret)
AIRFLOW_API_SECRET_KEY=$(secret)
ENV
mv -f "$tmp" "$env_file"
echo "wrote $env_file (mode 600)"
