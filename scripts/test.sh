#!/usr/bin/env bash
# The test command (README, .ci/run): venv + install, start the REAL test site (sshd on
# 127.0.0.1, Slurm + slurmdbd, HTCondor personal pool), run pytest, stop the site.
#
# With arguments: ONE pytest session with them (`scripts/test.sh tests/unit -k staging`).
# Without: the whole suite in lanes (scripts/test_lanes.sh), because most site tests wait on
# schedulers rather than use the CPU: the unit tests and the Airflow deployment tests run beside
# the integration tests; what takes the whole site (daemons stopped, every CPU held, the
# 10,000-unit rounds, the Slurm restart without accounting) runs alone afterwards.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/bootstrap.sh
trap 'bash tests/site/site.sh stop >/dev/null 2>&1 || true' EXIT
export BATCHSITE_REQUIRE_SITE=1   # a site that cannot start fails the run; nothing is skipped
if [ $# -gt 0 ]; then
  bash tests/site/site.sh start
  .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
else
  bash scripts/test_lanes.sh
fi
