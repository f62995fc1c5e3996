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
  # the distribution was renamed from apache-airflow-providers-batchsite (a name Airflow reserves
  # for its own providers: its coherence check then drops our hook). pip does not know the two are
  # one package: remove the old one FIRST, because uninstalling it afterwards would also delete
  # the `batchsite` console script the new one just installed.
  if "$venv/bin/python" -c 'import importlib.metadata as m, sys; m.distribution(sys.argv[1])' \
      apache-airflow-providers-batchsite 2>/dev/null; then
    "$venv/bin/pip" uninstall -q -y --disable-pip-version-check apache-airflow-providers-batchsite
  fi
  # its setuptools build metadata in the repo root is found too whenever the root is on sys.path
  rm -rf "$repo/apache_airflow_providers_batchsite.egg-info"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "apache-airflow==3.3.2" "apache-airflow-providers-ssh==7.0.1" \
    "apache-airflow-providers-postgres" "apache-airflow-providers-standard" \
    "htcondor==25.13.2" -e "$repo[test]"
  touch "$stamp"
fi
