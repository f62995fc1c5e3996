#!/bin/sh
# roundinfo.sh: what the review and the rescue of a finished round read from the site, in
# ONE remote command each (batchsite.roundinfo). Run as `sh -c <this text> batchsite MODE ...`:
#
#   tails LOGDIR LINES BYTES NAME GLOB [NAME GLOB ...]
#       for each NAME, the newest file in LOGDIR matching GLOB (a rescue under the same key
#       leaves one file per attempt), as a section `@@BATCHSITE tail NAME` with its last
#       LINES lines, of which at most the last BYTES bytes; when those lines are longer, a
#       section `@@BATCHSITE cut NAME` first, holding their size in bytes. A NAME without a
#       matching file gets an empty tail section.
set -u
mode=${1:-}; shift
case "$mode" in
  tails)
    logdir=$1; lines=$2; bytes=$3; shift 3
    while [ "$#" -ge 2 ]; do
      name=$1; pattern=$2; shift 2
      # shellcheck disable=SC2086,SC2012 # the glob must expand; ls -t sorts our own log names (letters, digits, _.-)
      newest=$(cd "$logdir" 2>/dev/null && ls -t -- $pattern 2>/dev/null | head -n 1)
      if [ -n "$newest" ] && [ -f "$logdir/$newest" ]; then
        size=$(tail -n "$lines" -- "$logdir/$newest" 2>/dev/null | wc -c)
        if [ "$((size))" -gt "$bytes" ]; then
          echo "@@BATCHSITE cut $name"
          echo "$((size))"
        fi
        echo "@@BATCHSITE tail $name"
        tail -n "$lines" -- "$logdir/$newest" 2>/dev/null | tail -c "$bytes"
      else
        echo "@@BATCHSITE tail $name"
      fi
    done
    ;;
  *) echo "roundinfo.sh: unknown mode '$mode'" >&2; exit 64 ;;
esac
exit 0
