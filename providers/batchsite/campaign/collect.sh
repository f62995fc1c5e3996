#!/bin/sh
# What the campaigns read back from a site, one remote command per call (campaign/collect.py).
# Usage: collect.sh <command> <args...>; paths come as arguments, never inside this text.
#
#   round <done.json> <batch root> <histogram> [<previous histogram> [<z histogram>]]
#       sections (@@BATCHSITE <name> -): done = the DONE json, ready = the batch_* dirs
#       holding READY, cur / prev / zhist = the histograms, base64
#   step-hists reference|group <run dir> [<kind>]
#       for every step with its DONE json and z histogram: sections `done <k>` (the json) and
#       `zhist <k>` (base64); reference: stats/DONE_RG<k>.json + hist/z/, group: data/RG<k>/;
#       with <kind> (sym_z) also `cmp <k>`: that step's <kind> histogram (the report's L1 metric)
#   group-fp-steps <FP run dir>  the k of every data/RG<k> with DONE.json and its sym_z histogram
#   read-json <path>           the file when it exists and is not empty, else nothing
#   fp-steps <sym_z dir>       the names of the sym_z_hist_RG*.npz in it
#   existing <path>...         those of the paths that exist, one per line
set -u
cmd=$1; shift
case $cmd in
  round)
    done=$1; batches=$2; cur=$3; prev=${4:-}; zhist=${5:-}
    # a DONE json written without a final newline must not swallow the next section marker
    echo "@@BATCHSITE done -"; [ -s "$done" ] && { cat "$done"; echo; }
    echo "@@BATCHSITE ready -"; for d in "$batches"/batch_*; do [ -f "$d/READY" ] && basename "$d"; done
    echo "@@BATCHSITE cur -"; [ -s "$cur" ] && base64 "$cur"
    echo "@@BATCHSITE prev -"; [ -n "$prev" ] && [ -s "$prev" ] && base64 "$prev"
    echo "@@BATCHSITE zhist -"; [ -n "$zhist" ] && [ -s "$zhist" ] && base64 "$zhist"
    ;;
  step-hists)
    mode=$1; run=$2; kind=${3:-}
    if [ "$mode" = group ]; then set -- "$run"/data/RG*; else set -- "$run"/stats/DONE_RG*.json; fi
    for f; do
      if [ "$mode" = group ]; then
        k=${f##*/RG}; done_json="$f/DONE.json"; hist="$f/hist"
      else
        k=${f##*/DONE_RG}; k=${k%.json}; done_json=$f; hist="$run/hist"
      fi
      z="$hist/z/z_hist_RG$k.npz"
      case $k in ""|*[!0-9]*) continue ;; esac
      { [ -s "$done_json" ] && [ -s "$z" ]; } || continue
      echo "@@BATCHSITE done $k"; cat "$done_json"; echo
      echo "@@BATCHSITE zhist $k"; base64 "$z"
      if [ -n "$kind" ] && [ -s "$hist/$kind/${kind}_hist_RG$k.npz" ]; then
        echo "@@BATCHSITE cmp $k"; base64 "$hist/$kind/${kind}_hist_RG$k.npz"
      fi
    done
    ;;
  group-fp-steps)
    for d in "$1"/data/RG*; do
      k=${d##*/RG}
      case $k in ""|*[!0-9]*) continue ;; esac
      [ -s "$d/DONE.json" ] && [ -s "$d/hist/sym_z/sym_z_hist_RG$k.npz" ] && echo "$k"
    done
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
