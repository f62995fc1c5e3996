#!/usr/bin/env bash
# The main demo: the RG campaign on the embedded local site (no daemons, no root, SQLite).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/bootstrap.sh
export AIRFLOW_HOME=${AIRFLOW_HOME:-$repo/.airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$repo/dags AIRFLOW__CORE__LOAD_EXAMPLES=false
export AIRFLOW__CORE__PARALLELISM=4 AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-WARNING}
export BATCHSITE_LOCAL_ROOT=${BATCHSITE_LOCAL_ROOT:-$repo/.state/demo-site}
mkdir -p "$repo/.state"
conf=${1:-'{"site_conn_id": "local", "version": "demo", "steps": 5, "samples": 80000, "batches": 8, "throttle": 4, "tolerance": 0.01}'}
.venv/bin/airflow db migrate >/dev/null
echo "running: airflow dags test rg_campaign -c '$conf'  (site root $BATCHSITE_LOCAL_ROOT)"
.venv/bin/airflow dags test rg_campaign -c "$conf" > "$repo/.state/demo-dags-test.log" 2>&1 || {
  tail -40 "$repo/.state/demo-dags-test.log"; echo "demo FAILED (full log: .state/demo-dags-test.log)"; exit 1; }
.venv/bin/batchsite rg-summary --conf "$conf"
