#!/bin/sh
# usage.sh: the measured usage of every job of a round, every attempt, in ONE remote command
# (batchsite.usage.read_usage runs the argv a backend's usage_command renders; the backend's
# parse_usage reads the output). Run as `sh -c <this text> batchsite MODE ...`:
#
#   slurm KEY WORKDIR FIELDS
#       `@@BATCHSITE sacct -` then sacct (with steps) of every job named KEY in the last 30
#       days (the round's arrays and fan-ins of every attempt: --job-name is the round key),
#       then `@@BATCHSITE record N` + each earlier submission record the site kept
#       (submitted.N): its `array=<id>@<offset>` gives the unit index of an array task.
#   local WORKDIR
#       the local runner's usage lines (state/runner.usage: `<name> <wall s> <cpu s> <peak RSS KB>`).
set -u
mode=${1:-}; shift
case "$mode" in
  slurm)
    key=$1; workdir=$2; fields=$3
    echo "@@BATCHSITE sacct -"
    SLURM_BITSTR_LEN=0 sacct -n -P --name="$key" --starttime=now-30days -o "$fields" || echo "!rc $?"
    for f in "$workdir"/.batchsite/submitted.*; do
      [ -f "$f" ] || continue
      n=${f##*/submitted.}
      case "$n" in ""|*[!0-9]*) continue ;; esac
      echo "@@BATCHSITE record $n"; cat "$f"; echo
    done
    ;;
  local)
    [ -f "$1/state/runner.usage" ] && cat "$1/state/runner.usage"
    ;;
  *) echo "usage.sh: unknown mode '$mode'" >&2; exit 64 ;;
esac
exit 0
