#!/bin/sh
# submit.sh of a local round (rendered by batchsite.backends.local.render_submit_script).
#
# Starts the round's runner (localsched.py, shipped in the workdir) detached, waits up to
# 30 s for its pid file (so the id printed is real) and prints `local=<host>:<pid>`.
# Inputs (the rendered copy sets them below this header; run alone: `wd=... py=python3 sh
# local_submit.sh`): $wd, the round's workdir, normalised exactly as the runner's
# os.path.abspath (status and cancel match it in the runner's command line); $py, the
# interpreter for the runner unless $BATCHSITE_PYTHON is set.
#
# A runner that was started once blocks every later start (state/runner.lock), unless it
# finished and an earlier record names it (Site.resubmit kept it as submitted.<n>): then
# its state goes aside to state.<n>, with the exit files of its run. Exit 1 when the
# runner cannot start: it is killed and its state removed, so a later submission can
# start afresh.
set -u
: "${wd:?the round workdir}" "${py:?the python for the runner}"
cd "$wd" || exit 1
if [ -e state/runner.lock ]; then
  # a resubmission (Site.resubmit kept the last record as submitted.<n>): the finished
  # runner that record names goes aside, with the exit files of its run
  old_pid=; old_host=
  if [ -s state/runner.pid ]; then read -r old_pid old_host < state/runner.pid; fi
  if [ -f state/runner.done ] && [ -n "$old_pid" ] && grep -qsxF "local=$old_host:$old_pid" .batchsite/submitted.*; then
    n=1; while [ -e "state.$n" ]; do n=$((n + 1)); done
    mv state "state.$n" || exit 1
    if [ -d status ]; then mv status "state.$n/status" || exit 1; fi
  else
    echo "batchsite: a local runner was already started in $wd (state/runner.lock exists); remove $wd/state to run this round again" >&2
    exit 1
  fi
fi
mkdir -p logs state status || exit 1
PY=${BATCHSITE_PYTHON:-$py}
command -v "$PY" >/dev/null 2>&1 || { echo "batchsite: no $PY on this machine: the local runner needs python3 >= 3.9 (set BATCHSITE_PYTHON)" >&2; exit 1; }
# the runner calls setsid() itself; nohup + redirections: it outlives this shell and
# an SSH session, and holds none of the pipes the caller reads
nohup "$PY" "$wd/localsched.py" run "$wd" </dev/null >>logs/localsched.log 2>&1 &
bg=$!
bs_running() {  # the runner process still exists (and is not a zombie)
  if [ -r "/proc/$bg/stat" ]; then
    st=; read -r st < "/proc/$bg/stat"; st=${st##*") "}; st=${st%% *}
  else
    st=$(ps -o stat= -p "$bg" 2>/dev/null)
  fi
  case "$st" in ""|Z*|X*) return 1 ;; esac
  return 0
}
i=0
while [ ! -s state/runner.pid ]; do
  if [ "$i" -ge 300 ] || ! bs_running; then
    [ -s state/runner.pid ] && break
    kill -s KILL "$bg" 2>/dev/null
    echo "batchsite: the local runner ($PY localsched.py) did not start in $wd; its log:" >&2
    tail -n 20 logs/localsched.log >&2
    bs_running || rm -rf state
    exit 1
  fi
  sleep 0.1; i=$((i + 1))
done
read -r rpid rhost < state/runner.pid
echo "local=$rhost:$rpid"
