#!/bin/bash
# Stand-in of the FASER group's templates/runAlignment.sh: reconstruction of ONE raw file of
# one iteration. Written from the contract in issue 12 (not from the group's code).
#
# Usage (HTCondor `arguments`, positional, exactly 9 or 10):
#   runAlignment.sh YEAR RUN STATIONS FILE RECO_DIR KFALIGN_DIR SRC_DIR CALYPSO_ASETUP CALYPSO_SETUP [VERBOSITY]
#
# Contract checked (any difference: "STANDIN CONTRACT VIOLATION ..." on stderr, exit 64):
#   YEAR 4 digits; RUN exactly 6 digits (already zero-padded: 008023); STATIONS 3 or 4;
#   FILE exactly 5 digits (00000); RECO_DIR = the iteration's 1reco/ holding inputforalign.txt;
#   KFALIGN_DIR absolute; SRC_DIR = the group's checkout (faser_reco_alignment.py, templates/);
#   CALYPSO_ASETUP / CALYPSO_SETUP existing files; VERBOSITY (default INFO) one of
#   VERBOSE DEBUG INFO WARNING ERROR FATAL; $_CONDOR_SCRATCH_DIR set (HTCondor sets it).
# What it does:
#   ATLAS setup: ATLAS_LOCAL_ROOT_BASE=/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase,
#   source atlasLocalSetup.sh, asetup --input=CALYPSO_ASETUP Athena,24.0.41, source CALYPSO_SETUP;
#   work dir $_CONDOR_SCRATCH_DIR/work_<RUN>_<FILE>; ATLAS_POOLCOND_PATH=<work>/data,
#   EOS_MGM_URL=root://eosuser.cern.ch; copy ALLP200.db from
#   /cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/; aligndb_copy.sh =
#   head template + `python WriteAlignmentConfig_Faser04.py 'AlignDbTool.AlignmentConstants={<RECO_DIR/inputforalign.txt>}'`
#   + tail template; reco `python SRC_DIR/faser_reco_alignment.py <raw> --alignment --noBackward
#   [--noIFT iff STATIONS=3] --output_level VERBOSITY`; copy Faser-Physics-*kfalignment.root to
#   KFALIGN_DIR/kfalignment_<RUN>_<FILE>.root; drop the xAOD.
# Stand-in only: /cvmfs and /eos are looked up under $BATCHSITE_STANDIN_PREFIX (default /), and
# BATCHSITE_STANDIN_CALLS (default KFALIGN_DIR/calls.log) / BATCHSITE_STANDIN_STATIONS are
# exported for the stand-in programs. Neither is part of the group's contract.
set -euo pipefail

violation() { echo "STANDIN CONTRACT VIOLATION in runAlignment.sh: $*" >&2; exit 64; }

[ $# -eq 9 ] || [ $# -eq 10 ] || violation "expected 9 or 10 arguments (YEAR RUN STATIONS FILE RECO_DIR" \
  "KFALIGN_DIR SRC_DIR CALYPSO_ASETUP CALYPSO_SETUP [VERBOSITY]), got $#: $*"
YEAR=$1 RUN=$2 STATIONS=$3 FILE=$4 RECO_DIR=$5 KFALIGN_DIR=$6 SRC_DIR=$7 CALYPSO_ASETUP=$8 CALYPSO_SETUP=$9
VERBOSITY=${10:-INFO}

[[ $YEAR =~ ^[0-9]{4}$ ]] || violation "YEAR='$YEAR': expected 4 digits"
[[ $RUN =~ ^[0-9]{6}$ ]] || violation "RUN='$RUN': expected the 6-digit zero-padded run (e.g. 008023)"
[[ $STATIONS =~ ^[34]$ ]] || violation "STATIONS='$STATIONS': expected 3 or 4"
[[ $FILE =~ ^[0-9]{5}$ ]] || violation "FILE='$FILE': expected the 5-digit zero-padded file (e.g. 00003)"
[ -f "$RECO_DIR/inputforalign.txt" ] || violation "RECO_DIR='$RECO_DIR': no inputforalign.txt there" \
  "(RECO_DIR is the iteration's 1reco/ holding the constants to apply)"
[[ $KFALIGN_DIR == /* ]] || violation "KFALIGN_DIR='$KFALIGN_DIR': expected an absolute path"
[ -f "$SRC_DIR/faser_reco_alignment.py" ] || violation "SRC_DIR='$SRC_DIR': no faser_reco_alignment.py there"
[ -d "$SRC_DIR/templates" ] || violation "SRC_DIR='$SRC_DIR': no templates/ there"
[ -f "$CALYPSO_ASETUP" ] || violation "CALYPSO_ASETUP='$CALYPSO_ASETUP': no such file"
[ -f "$CALYPSO_SETUP" ] || violation "CALYPSO_SETUP='$CALYPSO_SETUP': no such file"
case "$VERBOSITY" in VERBOSE|DEBUG|INFO|WARNING|ERROR|FATAL) ;; *)
  violation "VERBOSITY='$VERBOSITY': expected VERBOSE, DEBUG, INFO, WARNING, ERROR or FATAL" ;; esac
[ -n "${_CONDOR_SCRATCH_DIR:-}" ] || violation "_CONDOR_SCRATCH_DIR is not set (the job works in" \
  "\$_CONDOR_SCRATCH_DIR/work_<RUN>_<FILE>)"
ALIGN_TEXT=$(cat "$RECO_DIR/inputforalign.txt")
[[ $ALIGN_TEXT != *"'"* ]] || violation "$RECO_DIR/inputforalign.txt contains a single quote"

STANDIN_ROOT=${BATCHSITE_STANDIN_PREFIX:-/}
STANDIN_ROOT=${STANDIN_ROOT%/}
export BATCHSITE_STANDIN_CALLS="${BATCHSITE_STANDIN_CALLS:-$KFALIGN_DIR/calls.log}"
export BATCHSITE_STANDIN_STATIONS="$STATIONS"
mkdir -p "$KFALIGN_DIR"
echo "runAlignment.sh: year $YEAR run $RUN file $FILE stations $STATIONS reco_dir $RECO_DIR kfalign_dir $KFALIGN_DIR"

# ATLAS + Calypso environment
export ATLAS_LOCAL_ROOT_BASE=/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase
# shellcheck disable=SC1090,SC1091
source "${STANDIN_ROOT}${ATLAS_LOCAL_ROOT_BASE}/user/atlasLocalSetup.sh"
asetup --input="$CALYPSO_ASETUP" Athena,24.0.41
# shellcheck disable=SC1090
source "$CALYPSO_SETUP"

# work on the execute node's scratch disk
WORK_DIR="$_CONDOR_SCRATCH_DIR/work_${RUN}_${FILE}"
mkdir -p "$WORK_DIR"
cd "$WORK_DIR"
export ATLAS_POOLCOND_PATH="$WORK_DIR/data"
export EOS_MGM_URL=root://eosuser.cern.ch

# templates and the conditions db
cp "$SRC_DIR/templates/aligndb_copy.sh" "$SRC_DIR/templates/aligndb_template_head.sh" \
   "$SRC_DIR/templates/aligndb_template_tail.sh" ./
cp "$SRC_DIR"/templates/WriteAlignment* ./
rm -rf data
mkdir -p data/sqlite200 data/poolcond
cp "${STANDIN_ROOT}/cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/ALLP200.db" data/sqlite200/

# constants of this iteration between the aligndb head and tail templates
cat aligndb_template_head.sh > aligndb_copy.sh
echo "python WriteAlignmentConfig_Faser04.py 'AlignDbTool.AlignmentConstants={$ALIGN_TEXT}' >& writeAlignment_Faser04.log" \
  >> aligndb_copy.sh
cat aligndb_template_tail.sh >> aligndb_copy.sh
chmod 755 aligndb_copy.sh
./aligndb_copy.sh >& aligndb_copy.log || { cat aligndb_copy.log writeAlignment_Faser04.log >&2 || true; exit 1; }

# reconstruction
RAW="/eos/experiment/faser/raw/${YEAR}/${RUN}/Faser-Physics-${RUN}-${FILE}.raw"
reco=(python "$SRC_DIR/faser_reco_alignment.py" "$RAW" --alignment --noBackward)
[ "$STATIONS" = 3 ] && reco+=(--noIFT)
reco+=(--output_level "$VERBOSITY")
echo "runAlignment.sh: ${reco[*]}"
"${reco[@]}"

# the kfalignment output, under its own per-file name; the xAOD is dropped
shopt -s nullglob
outputs=(Faser-Physics-*kfalignment.root)
[ ${#outputs[@]} -eq 1 ] || { echo "runAlignment.sh: expected one Faser-Physics-*kfalignment.root, found ${#outputs[@]}" >&2; exit 1; }
cp "${outputs[0]}" "$KFALIGN_DIR/.kfalignment_${RUN}_${FILE}.root.tmp.$$"
mv -f "$KFALIGN_DIR/.kfalignment_${RUN}_${FILE}.root.tmp.$$" "$KFALIGN_DIR/kfalignment_${RUN}_${FILE}.root"
rm -f Faser-Physics-*-xAOD.root
cd /
rm -rf "$WORK_DIR"
echo "runAlignment.sh: wrote $KFALIGN_DIR/kfalignment_${RUN}_${FILE}.root"
