#!/bin/sh
# Restart a campaign from round k (campaign/restart.py), in ONE remote command.
# Usage: restart.sh STAMP; the instructions come on stdin, one per line (paths never inside this text):
#
#   need <path>          round k-1's output: a file must be non-empty, a directory must hold an entry
#   aside <base> <rel>   an output of a round >= k of an earlier run: when <base>/<rel> exists it is
#                        moved to <base>/set_aside/STAMP/<rel>, so the new rounds never mix with it
#
# Every `need` is checked first. When one is not met, the script prints `missing <path>` for each
# and moves nothing. Otherwise it does the moves (mkdir -p of the target's parent, then one `mv`,
# a rename within <base>), printing `moved <base>/<rel> <target>` for each, and finally `ok`.
# A failed move prints `failed <base>/<rel>` and the script exits 1 after trying the others.
set -u
stamp=$1
: "${stamp:?restart.sh needs a STAMP}"
instructions=$(cat)
missing=0
while read -r verb a _; do
  [ "$verb" = need ] || continue
  if [ -d "$a" ]; then
    [ -n "$(ls -A "$a" 2>/dev/null)" ] && continue
  elif [ -s "$a" ]; then
    continue
  fi
  echo "missing $a"
  missing=1
done <<EOF
$instructions
EOF
[ "$missing" = 0 ] || exit 0
rc=0
while read -r verb a b; do
  [ "$verb" = aside ] || continue
  src="$a/$b"
  [ -e "$src" ] || [ -L "$src" ] || continue
  dst="$a/set_aside/$stamp/$b"
  if mkdir -p "${dst%/*}" && mv "$src" "$dst"; then
    echo "moved $src $dst"
  else
    echo "failed $src"
    rc=1
  fi
done <<EOF
$instructions
EOF
echo ok
exit $rc
