#!/usr/bin/env bash
# Create .venv (if missing) and install batchsite with its test extras into it. Idempotent.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BATCHSITE_VENV:-$repo/.venv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
stamp="$venv/.batchsite-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "apache-airflow==3.3.2" "apache-airflow-providers-ssh==7.0.1" \
    "apache-airflow-providers-postgres" "apache-airflow-providers-standard" \
    "htcondor==25.13.2" -e "$repo[test]"
  touch "$stamp"
fi
