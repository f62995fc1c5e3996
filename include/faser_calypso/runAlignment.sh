#!/bin/bash
# Reconstruction of one raw file for the real FASER chain, as the group's README runs it:
# source the env script, copy the alignment DB, run faser_reco_alignment.py.
# Used instead of the reference payload when config.json names calypso_install, pede_install
# and env_script. Arguments (rendered by batchsite.campaign.faser):
#   ENV_SCRIPT YEAR RUN FILE ITERATION OUT_DIR CONSTANTS(or "") STATIONS(3|4)
set -euo pipefail
# shellcheck disable=SC2034 # ITERATION keeps the argument order of the group's README; reconstruction does not use it
env_script=$1 year=$2 run=$3 file=$4 iteration=$5 out_dir=$6 constants=$7 stations=$8
# shellcheck disable=SC1090
source "$env_script"
work=$(mktemp -d "${TMPDIR:-/tmp}/faser_reco.XXXXXX")   # execute-node scratch, not AFS
trap 'rm -rf "$work"' EXIT
cd "$work"
aligndb_copy.sh                                         # the ~100 MB alignment DB to local disk
[ -n "$constants" ] && cp "$constants" inputforalign.txt
raw=$(printf '/eos/experiment/faser/raw/%s/%06d/Faser-Physics-%06d-%05d.raw' "$year" "$run" "$run" "$file")
opts=()
[ "$stations" = 4 ] && opts+=(--fourst)
faser_reco_alignment.py "$raw" "${opts[@]}"
mkdir -p "$out_dir"
for f in *.root; do cp "$f" "$out_dir/.${f}.tmp" && mv -f "$out_dir/.${f}.tmp" "$out_dir/kfalignment_$(printf %05d "$file").root"; done
