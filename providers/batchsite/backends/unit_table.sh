#!/bin/bash
# unit_table.sh: `bs_unit <table> <index>` runs work unit <index> of a round, its command
# looked up in the round's unit table (batchsite.backends.common.render_unit_table).
#
# The table has one line per unit: `<index> <argv as shell words>`, each word quoted by
# Python's shlex.quote, or as $'...' when it holds a control character (a line break would
# split the line). grep stops at the unit's own line (and reads the file at memory speed),
# so a unit's start-up does not depend on the number of units (a `case` with one branch
# per unit made bash parse all N of them in every job: 0.2 s CPU and 46 MiB at 10,000
# units). Returns the command's exit code, or 97 (common.NO_SUCH_UNIT) when the index is
# not a number or the table has no line for it.
#
# common.render_unit_script inlines this function into every unit.sh; it reads no input
# of its own.
bs_unit() {
  case "$2" in
    ''|*[!0-9]*) bs_line= ;;
    *) bs_line=$(LC_ALL=C grep -m 1 -e "^$2 " "$1") ;;
  esac
  if [ -z "$bs_line" ]; then
    echo "batchsite: no work unit $2 in $1" >&2
    return 97
  fi
  eval "${bs_line#"$2 "}"
}
