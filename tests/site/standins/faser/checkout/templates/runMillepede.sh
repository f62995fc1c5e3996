#!/bin/bash
# Stand-in of the FASER group's templates/runMillepede.sh: the Millepede step of one
# iteration, after all its reconstruction jobs. Written from the contract in issue 12.
#
# Usage (positional; NEXT_RECO_DIR present only when TO_NEXT_ITER is True):
#   runMillepede.sh True  SRC_DIR KFALIGN_DIR NEXT_RECO_DIR ENV_PEDE ENV_ROOT     (6 arguments)
#   runMillepede.sh False SRC_DIR KFALIGN_DIR ENV_PEDE ENV_ROOT                   (5 arguments)
#
# Contract checked (any difference: "STANDIN CONTRACT VIOLATION ..." on stderr, exit 64):
#   TO_NEXT_ITER is exactly True or False and the argument count matches it;
#   SRC_DIR has millepede/bin/millepede.py; KFALIGN_DIR is a directory; NEXT_RECO_DIR (True)
#   is a directory; ENV_PEDE is a directory with an executable pede; ENV_ROOT is a file.
# What it does: PATH=ENV_PEDE:$PATH, source ENV_ROOT, python3 SRC_DIR/millepede/bin/millepede.py
#   -i KFALIGN_DIR (writes KFALIGN_DIR/../inputforalign.txt and 3millepede/millepede.res ...);
#   with True, copies KFALIGN_DIR/../inputforalign.txt into NEXT_RECO_DIR.
# Stand-in only: BATCHSITE_STANDIN_CALLS defaults to KFALIGN_DIR/../3millepede/calls.log.
set -euo pipefail

violation() { echo "STANDIN CONTRACT VIOLATION in runMillepede.sh: $*" >&2; exit 64; }

[ $# -ge 1 ] || violation "no arguments (expected TO_NEXT_ITER SRC_DIR KFALIGN_DIR [NEXT_RECO_DIR] ENV_PEDE ENV_ROOT)"
TO_NEXT_ITER=$1
case "$TO_NEXT_ITER" in
  True)
    [ $# -eq 6 ] || violation "TO_NEXT_ITER=True: expected 6 arguments (True SRC_DIR KFALIGN_DIR NEXT_RECO_DIR" \
      "ENV_PEDE ENV_ROOT), got $#: $*"
    SRC_DIR=$2 KFALIGN_DIR=$3 NEXT_RECO_DIR=$4 ENV_PEDE=$5 ENV_ROOT=$6 ;;
  False)
    [ $# -eq 5 ] || violation "TO_NEXT_ITER=False: expected 5 arguments (False SRC_DIR KFALIGN_DIR ENV_PEDE" \
      "ENV_ROOT; no NEXT_RECO_DIR), got $#: $*"
    SRC_DIR=$2 KFALIGN_DIR=$3 NEXT_RECO_DIR="" ENV_PEDE=$4 ENV_ROOT=$5 ;;
  *) violation "TO_NEXT_ITER='$TO_NEXT_ITER': expected True or False" ;;
esac
[ -f "$SRC_DIR/millepede/bin/millepede.py" ] || violation "SRC_DIR='$SRC_DIR': no millepede/bin/millepede.py there"
[ -d "$KFALIGN_DIR" ] || violation "KFALIGN_DIR='$KFALIGN_DIR': not a directory"
if [ "$TO_NEXT_ITER" = True ]; then
  [ -d "$NEXT_RECO_DIR" ] || violation "NEXT_RECO_DIR='$NEXT_RECO_DIR': not a directory (the next iteration's 1reco/)"
fi
{ [ -d "$ENV_PEDE" ] && [ -x "$ENV_PEDE/pede" ]; } || violation "ENV_PEDE='$ENV_PEDE': expected a directory with an executable pede"
[ -f "$ENV_ROOT" ] || violation "ENV_ROOT='$ENV_ROOT': no such file (ROOT's thisroot.sh)"

export BATCHSITE_STANDIN_CALLS="${BATCHSITE_STANDIN_CALLS:-$KFALIGN_DIR/../3millepede/calls.log}"
mkdir -p "$KFALIGN_DIR/../3millepede"

echo "runMillepede.sh: setting up environment"
export PATH="$ENV_PEDE:$PATH"
# shellcheck disable=SC1090
source "$ENV_ROOT"

echo "runMillepede.sh: python3 $SRC_DIR/millepede/bin/millepede.py -i $KFALIGN_DIR"
python3 "$SRC_DIR/millepede/bin/millepede.py" -i "$KFALIGN_DIR"

if [ "$TO_NEXT_ITER" = True ]; then
  cp "$KFALIGN_DIR/../inputforalign.txt" "$NEXT_RECO_DIR/"
  echo "runMillepede.sh: constants copied to $NEXT_RECO_DIR/inputforalign.txt"
fi
