#!/bin/sh
# submit.sh of a Slurm round (rendered by batchsite.backends.slurm.render_submit_script).
#
# Runs with cwd = the round's workdir, which holds unit.sh, arrays.txt (one line per job
# array of the round: `<offset> <array spec>`; a round larger than the site's MaxArraySize
# is split into several arrays, unit index = offset + array task id, the offset is unit.sh's
# argument) and, with a fan-in, fanin.sh. Inputs (the rendered copy sets them below this
# header; run alone: `fanin=1 serial=0 sh slurm_submit.sh`):
#   $fanin   1: submit fanin.sh with --dependency=afterok on every array, else 0;
#   $serial  1: each array waits for the previous one (afterany), so a throttled round
#            (`%N` in the array specs) never runs more than N units at once, else 0.
#
# Prints `array=<id>[@<offset>],... [fanin=<id>]` (`@<offset>` only when not 0; parse_submit
# reads it). Exits 1 when an array could not be submitted, 2 when the fan-in could not:
# then every array already submitted is cancelled first (one `cancelling array <id>` line
# each on stderr), so a failed submission leaves nothing behind in the queue.
set -u
: "${fanin:?set fanin=1 (submit fanin.sh after the arrays) or fanin=0}" "${serial:?set serial=1 or serial=0}"
mkdir -p logs || exit 1
[ -s arrays.txt ] || { echo 'batchsite: arrays.txt is missing or empty' >&2; exit 1; }
# sbatch --parsable prints <id> or <id>;<cluster>: the first number on its last line
jobid() { printf '%s\n' "$1" | sed -n '$s/^[^0-9]*\([0-9][0-9]*\).*$/\1/p'; }
ids=; listed=; prev=
cancel_all() {  # $1: why; cancels every array submitted so far and exits $2
  echo "batchsite: $1" >&2
  for a in $ids; do echo "batchsite: cancelling array $a" >&2; done
  # shellcheck disable=SC2086 # $ids is a list of numeric job ids, one argument each
  [ -n "$ids" ] && scancel $ids
  exit "$2"
}
while read -r offset spec; do
  [ -n "$offset" ] || continue
  dep=
  [ "$serial" = 1 ] && [ -n "$prev" ] && dep="--dependency=afterany:$prev"
  # shellcheck disable=SC2086 # $dep is empty or one option
  out=$(sbatch --parsable --array="$spec" $dep unit.sh "$offset" </dev/null) || cancel_all "sbatch unit.sh (array $spec, offset $offset) failed" 1
  id=$(jobid "$out")
  case "$id" in ""|*[!0-9]*) cancel_all "no job id in the output of sbatch: $out" 1 ;; esac
  ids="$ids $id"; prev=$id
  entry=$id; [ "$offset" = 0 ] || entry="$id@$offset"
  listed="${listed:+$listed,}$entry"
done < arrays.txt
[ -n "$ids" ] || { echo 'batchsite: arrays.txt listed no array' >&2; exit 1; }
if [ "$fanin" != 1 ]; then
  echo "array=$listed"
  exit 0
fi
after=$(printf '%s' "$ids" | sed 's/^ //; s/ /:/g')
out=$(sbatch --parsable --dependency=afterok:"$after" fanin.sh) || cancel_all "sbatch fanin.sh failed" 2
fanin_id=$(jobid "$out")
case "$fanin_id" in ""|*[!0-9]*) cancel_all "no job id in the output of sbatch: $out" 2 ;; esac
echo "array=$listed fanin=$fanin_id"
