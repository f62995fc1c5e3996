#!/usr/bin/env bash
# The whole test suite in lanes, for scripts/test.sh (which installs, and stops the site after).
#
# Most site tests spend their time waiting on schedulers, not on the CPU (a serial run used
# ~33% of 2 cores), so two lanes run side by side:
#   lane A: tests/unit (needs no site: starts before the site is up), then the Airflow
#           deployment tests, the reliability tests that share the site, and the FASER
#           and right-sizing integration files (moved over to balance the lanes);
#   lane B: the other integration tests.
# Then, alone and in this order, what takes the whole site and would break or starve a test
# running beside it (ALONE below): daemons stopped or killed, every CPU held by a blocking job,
# the two 10,000-unit rounds, and the Slurm restart without accounting (last).
# Every test file is in exactly one lane: lane A and B take whole directories minus the files
# named here, so a new test file runs without being listed.
#
# Each lane is one pytest session; its output goes to .state/test-lanes/<run>/<lane>.log and is
# printed when the lane ends, then a summary of every lane (seconds from this script's clock,
# pytest's own result line). Exit status: 0 only if the site started and every lane passed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1

ALONE=(
  tests/deployment/test_concurrency.py            # a blocking job holds every CPU of both sites
  tests/reliability/test_watch_faults.py          # sshd stopped, traffic dropped, slurmctld stopped
  tests/reliability/test_scheduler_faults.py      # the pool's schedd killed
  tests/integration/test_scale.py                 # 10,000-unit rounds: every slot for minutes
  tests/integration/test_zz_slurm_no_accounting.py  # restarts Slurm without accounting: last
)
MOVED_TO_A=(tests/integration/test_faser.py tests/integration/test_faser_group_chain.py
            tests/integration/test_right_sizing.py)

ignore_args() { local f; for f; do printf -- '--ignore=%s\n' "$f"; done; }
mapfile -t IGNORE_ALONE < <(ignore_args "${ALONE[@]}")
mapfile -t IGNORE_MOVED < <(ignore_args "${MOVED_TO_A[@]}")

BATCHSITE_TEST_SUITE="suite-$(date -u +%Y%m%dT%H%M%SZ)-$$"
export BATCHSITE_TEST_SUITE
out=.state/test-lanes/$BATCHSITE_TEST_SUITE
mkdir -p "$out"
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15)
T0=$EPOCHSECONDS

# run_lane NAME PYTEST-ARGS...: one pytest session, output to $out/NAME.log; writes NAME.rc and
# NAME.seconds when it ends
run_lane() {
  local name=$1 start=$EPOCHSECONDS rc=0
  shift
  "${PYTEST[@]}" "$@" > "$out/$name.log" 2>&1 || rc=$?
  echo $((EPOCHSECONDS - start)) > "$out/$name.seconds"
  echo "$rc" > "$out/$name.rc"
}

show_lane() {
  printf '\n======== lane %s (%s s, exit %s): %s\n' "$1" "$(cat "$out/$1.seconds")" "$(cat "$out/$1.rc")" "$out/$1.log"
  cat "$out/$1.log"
}

echo "test lanes: logs in $out"
run_lane A tests/unit tests/deployment tests/reliability "${MOVED_TO_A[@]}" "${IGNORE_ALONE[@]}" &
lane_a=$!

site_rc=0
bash tests/site/site.sh start || site_rc=$?
[ "$site_rc" = 0 ] && { bash tests/site/site.sh start-condor || site_rc=$?; }
# with the site down the lanes still run: each site test fails loudly with the reason
run_lane B tests/integration "${IGNORE_MOVED[@]}" "${IGNORE_ALONE[@]}" &
lane_b=$!

wait "$lane_a"; show_lane A
wait "$lane_b"; show_lane B
run_lane ALONE "${ALONE[@]}"; show_lane ALONE

status=$site_rc
printf '\n======== summary (%s s in all; site start exit %s)\n' "$((EPOCHSECONDS - T0))" "$site_rc"
for lane in A B ALONE; do
  rc=$(cat "$out/$lane.rc")
  [ "$rc" = 0 ] || status=1
  printf 'lane %-5s %5s s  exit %s  %s\n' "$lane" "$(cat "$out/$lane.seconds")" "$rc" \
    "$(grep -E '(passed|failed|error).* in [0-9.]+s' "$out/$lane.log" | tail -1 | tr -d '=')"
done
exit "$status"
