#!/bin/sh
# The FASER group's tree on the site, for campaign/faser_site.py; one remote command per call.
# Usage: faser_site.sh <command> <args...>; paths come as arguments, never inside this text.
#
#   prepare <initial constants> <iter01/1reco/inputforalign.txt> <dir>...
#       make the dirs (every iteration's 1reco, 2kfalignment, 3millepede, as dag_manager.py),
#       then copy the group's initial constants into iteration 1 (temp name + rename)
#   iteration <constants applied> <constants written> <3millepede dir> <2kfalignment dir>
#       sections (@@BATCHSITE <name> -), each printed only when its file exists:
#       applied, written = the constants files; chi2 = pede's Sum(Chi^2)/Sum(Ndf) lines of
#       millepede.res and millepede.log; kfalignment = the kfalignment_*.root names
set -u
cmd=$1; shift
case $cmd in
  prepare)
    initial=$1 first=$2; shift 2
    [ -f "$initial" ] || { echo "faser_site.sh: the initial constants file $initial does not exist" >&2; exit 3; }
    mkdir -p "$@" || exit 1
    tmp="$first.tmp.$$"
    if ! { cp "$initial" "$tmp" && mv -f "$tmp" "$first"; }; then rm -f "$tmp"; exit 1; fi
    echo "$initial -> $first"
    ;;
  iteration)
    applied=$1 written=$2 mp=$3 kf=$4
    [ -f "$applied" ] && { echo "@@BATCHSITE applied -"; cat "$applied"; echo; }
    [ -f "$written" ] && { echo "@@BATCHSITE written -"; cat "$written"; echo; }
    echo "@@BATCHSITE chi2 -"
    for f in "$mp/millepede.res" "$mp/millepede.log"; do [ -f "$f" ] && grep -hF 'Sum(Chi^2)/Sum(Ndf)' "$f"; done
    echo "@@BATCHSITE kfalignment -"
    for f in "$kf"/kfalignment_*.root; do [ -f "$f" ] && basename "$f"; done
    ;;
  *)
    echo "faser_site.sh: unknown command $cmd" >&2; exit 2
    ;;
esac
exit 0
