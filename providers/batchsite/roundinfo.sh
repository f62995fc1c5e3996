#!/bin/sh
# roundinfo.sh: what the review and the rescue of a finished round read from the site, in
# ONE remote command each (batchsite.roundinfo). Run as `sh -c <this text> batchsite MODE ...`:
#
#   tails LOGDIR LINES NAME GLOB [NAME GLOB ...]
#       for each NAME, the newest file in LOGDIR matching GLOB (a rescue under the same key
#       leaves one file per attempt), as a section `@@BATCHSITE tail NAME` with its last
#       LINES lines; a NAME without a matching file gets an empty section.
#   condor-limits [condor_q/condor_history options...]
#       the same query of the history, then of the queue (a node may still be listed there);
#       a failing tool prints nothing (the caller then uses the round's own limits).
set -u
mode=${1:-}; shift
case "$mode" in
  tails)
    logdir=$1; lines=$2; shift 2
    while [ "$#" -ge 2 ]; do
      name=$1; pattern=$2; shift 2
      echo "@@BATCHSITE tail $name"
      # shellcheck disable=SC2086,SC2012 # the glob must expand; ls -t sorts our own log names (letters, digits, _.-)
      newest=$(cd "$logdir" 2>/dev/null && ls -t -- $pattern 2>/dev/null | head -n 1)
      if [ -n "$newest" ] && [ -f "$logdir/$newest" ]; then
        tail -n "$lines" -- "$logdir/$newest" 2>/dev/null
      fi
    done
    ;;
  condor-limits)
    condor_history "$@" 2>/dev/null
    condor_q "$@" 2>/dev/null
    ;;
  *) echo "roundinfo.sh: unknown mode '$mode'" >&2; exit 64 ;;
esac
exit 0
