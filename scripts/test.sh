#!/usr/bin/env bash
# The test command (README, .ci/run): venv + install, start the REAL test site (sshd on
# 127.0.0.1, Slurm + slurmdbd, HTCondor personal pool), run pytest, stop the site.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/bootstrap.sh
trap 'bash tests/site/site.sh stop >/dev/null 2>&1 || true' EXIT
bash tests/site/site.sh start
export BATCHSITE_REQUIRE_SITE=1   # a site that cannot start fails the run; nothing is skipped
.venv/bin/python -m pytest tests -q -p no:cacheprovider --durations=25 "$@"
