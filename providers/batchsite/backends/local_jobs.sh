#!/bin/sh
# local_jobs.sh: the shell functions of the local backend's status and cancel scripts
# (batchsite.backends.local). POSIX sh (dash, bash --posix, busybox).
#
# render_status_script / render_cancel_script send this text followed by one call per
# round (and the shared exit-file sections); run alone, the arguments name one function
# and its arguments:
#   sh local_jobs.sh bs_local WORKDIR         the `local` status section of one round
#   sh local_jobs.sh bs_term KEY WORKDIR      cancel, phase 1: SIGTERM the runner
#   sh local_jobs.sh bs_finish KEY WORKDIR    cancel, phase 2: make sure nothing is left
#
# Liveness: `bs_alive <pid> <pattern>`: the process exists, is ours, is not a zombie, and
# its command line contains the pattern (a recycled pid is not the runner).
# `kill -s 0 -- -<pgid>` is the spelling dash accepts. Exit codes: those of the function.

#: tenths of a second bs_finish waits for a runner after SIGTERM (the runner itself gives
#: its jobs 2 s between SIGTERM and SIGKILL)
cancel_wait_tenths=60

bs_cmd() {
  if [ -r "/proc/$1/cmdline" ]; then tr '\000' ' ' < "/proc/$1/cmdline" 2>/dev/null
  else ps -o args= -p "$1" 2>/dev/null; fi
}
bs_alive() {
  case "$1" in ''|*[!0-9]*|0|1) return 1 ;; esac
  kill -s 0 "$1" 2>/dev/null || return 1
  case "$(bs_cmd "$1")" in *"$2"*) return 0 ;; esac
  return 1
}

bs_local() {
  wd=$1
  if [ ! -d "$wd/state" ]; then echo "nostate"; return 0; fi
  here=$(uname -n)
  echo "host $here"
  runner_pid=; rhost=
  [ -s "$wd/state/runner.pid" ] && read -r runner_pid rhost < "$wd/state/runner.pid"
  echo "runner $runner_pid $rhost"
  runner=dead
  if [ -f "$wd/state/runner.done" ]; then
    done_text=; read -r done_text < "$wd/state/runner.done"; echo "done $done_text"; runner="done"
  elif [ -n "$rhost" ] && [ "$rhost" != "$here" ]; then
    echo "alive elsewhere"; runner=elsewhere
  elif bs_alive "$runner_pid" "localsched.py run $wd"; then
    echo "alive yes"; runner=alive
  else
    echo "alive no"
  fi
  # the round's own config says (local.json, rewritten by every submission): a fanin.sh left by
  # an earlier submission of the workdir (a fan-in-only rescue runs it as a unit) does not count
  grep -qs '"has_fanin": true' "$wd/local.json" && echo "has-fanin"
  for f in "$wd"/state/*; do
    [ -f "$f" ] || continue
    n=${f##*/}
    case "$n" in runner.*) continue ;; esac
    word=; job_pid=; read -r word job_pid < "$f"
    echo "state $n $word $job_pid"
    if [ "$word" = running ] && { [ "$runner" = dead ] || [ "$runner" = "done" ]; }; then
      script=unit.sh; [ "$n" = fanin ] && script=fanin.sh
      if bs_alive "$job_pid" "$wd/$script"; then echo "job-alive $n yes"; else echo "job-alive $n no"; fi
    fi
  done
}

bs_wait() {  # bs_wait <tenths> <command...>: wait while the command succeeds
  n=$1; shift
  while [ "$n" -gt 0 ] && "$@"; do sleep 0.1; n=$((n - 1)); done
}
bs_set() {
  t="${1%/*}/.${1##*/}.tmp.$$"
  printf '%s\n' "$2" > "$t" && mv -f "$t" "$1"
}
bs_group_ours() {  # <pgid> <script path> <workdir>: a live process group of this round
  case "$1" in ''|*[!0-9]*|0|1) return 1 ;; esac
  kill -s 0 -- "-$1" 2>/dev/null || return 1
  bs_alive "$1" "$2" && return 0
  # the leader is gone; a member carrying the round's BATCHSITE_WORKDIR is still ours
  for m in $(pgrep -g "$1" 2>/dev/null); do
    [ -r "/proc/$m/environ" ] || continue
    tr '\000' '\n' < "/proc/$m/environ" 2>/dev/null | grep -qxF "BATCHSITE_WORKDIR=$3" && return 0
  done
  return 1
}
bs_any_group() {  # <workdir> <pgid...>: some of these groups still live
  w=$1; shift
  for g in "$@"; do bs_group_ours "$g" "$w/" "$w" && return 0; done
  return 1
}
bs_runner() {  # <workdir>: sets runner_pid, rhost, here
  runner_pid=; rhost=; here=$(uname -n)
  [ -s "$1/state/runner.pid" ] && read -r runner_pid rhost < "$1/state/runner.pid"
}
bs_term() {  # <key> <workdir>: phase 1, SIGTERM the runner (it cancels its own jobs)
  [ -d "$2/state" ] || return 0
  bs_runner "$2"
  [ -n "$rhost" ] && [ "$rhost" != "$here" ] && return 0
  if bs_alive "$runner_pid" "localsched.py run $2"; then
    kill -s TERM -- "-$runner_pid" 2>/dev/null || kill -s TERM "$runner_pid" 2>/dev/null
  fi
  return 0
}
bs_finish() {  # <key> <workdir>: phase 2, make sure nothing of the round is left
  key=$1; wd=$2
  if [ ! -d "$wd/state" ]; then echo "$key: nothing to cancel in $wd (no local runner state)"; return 0; fi
  bs_runner "$wd"
  if [ -n "$rhost" ] && [ "$rhost" != "$here" ]; then
    echo "$key: its local runner $rhost:$runner_pid runs on host $rhost, this is $here: cancel it there"
    return 1
  fi
  pat="localsched.py run $wd"
  if bs_alive "$runner_pid" "$pat"; then
    bs_wait "$cancel_wait_tenths" bs_alive "$runner_pid" "$pat"
    if bs_alive "$runner_pid" "$pat"; then
      kill -s KILL -- "-$runner_pid" 2>/dev/null || kill -s KILL "$runner_pid" 2>/dev/null
      bs_wait 20 bs_alive "$runner_pid" "$pat"
      echo "$key: runner $runner_pid did not stop on SIGTERM: killed"
    else
      echo "$key: runner $runner_pid stopped"
    fi
  fi
  if bs_alive "$runner_pid" "$pat"; then echo "$key: runner $runner_pid is still alive"; return 1; fi
  # the runner is gone: nothing else writes these files now
  groups=
  for f in "$wd"/state/*; do
    [ -f "$f" ] || continue
    n=${f##*/}
    case "$n" in runner.*) continue ;; esac
    word=; job_pid=; read -r word job_pid < "$f"
    case "$word" in
      running)
        script=unit.sh; [ "$n" = fanin ] && script=fanin.sh
        if bs_group_ours "$job_pid" "$wd/$script" "$wd"; then
          kill -s TERM -- "-$job_pid" 2>/dev/null; groups="$groups $job_pid"
          bs_set "$f" "cancelled $job_pid"
        elif [ ! -f "$wd/status/$n.exit" ]; then
          bs_set "$f" "cancelled $job_pid"
        fi ;;
      queued|waiting) bs_set "$f" cancelled ;;
    esac
  done
  if [ -n "$groups" ]; then
    # shellcheck disable=SC2086 # $groups is a list of numeric pgids, one argument each
    bs_wait 30 bs_any_group "$wd" $groups
    for g in $groups; do
      bs_group_ours "$g" "$wd/" "$wd" && kill -s KILL -- "-$g" 2>/dev/null
    done
    echo "$key: stopped the process groups$groups"
  fi
  [ -f "$wd/state/runner.done" ] || bs_set "$wd/state/runner.done" cancelled
  echo "$key: cancelled"
  return 0
}

if [ $# -gt 0 ]; then "$@"; fi
