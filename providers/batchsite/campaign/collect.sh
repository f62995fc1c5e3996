#!/bin/sh
# What the campaigns read back from a site, one remote command per call (campaign/collect.py).
# Usage: collect.sh <command> <args...>; paths come as arguments, never inside this text.
#
#   round <done.json> <batch root> <histogram> [<previous histogram>]
#       sections (@@BATCHSITE <name> -): done = the DONE json, ready = the batch_NNN dirs
#       holding READY, cur / prev = the histograms, base64
#   step-stats <output dir>    every stats/DONE_RG*.json, one per line
#   read-json <path>           the file when it exists and is not empty, else nothing
#   fp-steps <sym_z dir>       the names of the sym_z_hist_RG*.npz in it
#   existing <path>...         those of the paths that exist, one per line
set -u
cmd=$1; shift
case $cmd in
  round)
    done=$1; batches=$2; cur=$3; prev=${4:-}
    echo "@@BATCHSITE done -"; [ -s "$done" ] && cat "$done"
    echo "@@BATCHSITE ready -"; for d in "$batches"/batch_*; do [ -f "$d/READY" ] && basename "$d"; done
    echo "@@BATCHSITE cur -"; [ -s "$cur" ] && base64 "$cur"
    echo "@@BATCHSITE prev -"; [ -n "$prev" ] && [ -s "$prev" ] && base64 "$prev"
    ;;
  step-stats)
    for f in "$1"/stats/DONE_RG*.json; do [ -f "$f" ] && { cat "$f"; echo; }; done
    ;;
  read-json)
    [ -s "$1" ] && cat "$1"
    ;;
  fp-steps)
    for f in "$1"/sym_z_hist_RG*.npz; do [ -f "$f" ] && basename "$f"; done
    ;;
  existing)
    for f; do [ -e "$f" ] && printf '%s\n' "$f"; done
    ;;
  *)
    echo "collect.sh: unknown command $cmd" >&2; exit 2
    ;;
esac
# a missing file is an answer ("not there yet"), not an error
exit 0
