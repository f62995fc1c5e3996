#!/bin/sh
# submit.sh of a Slurm round (rendered by batchsite.backends.slurm.render_submit_script).
#
# Runs with cwd = the round's workdir, which holds unit.sh (the array, its #SBATCH header
# says which indices) and, with a fan-in, fanin.sh. Input: $fanin, 1 to submit fanin.sh
# with --dependency=afterok on the array, else 0 (the rendered copy sets it below this
# header; run alone: `fanin=1 sh slurm_submit.sh`).
#
# Prints `array=<id>` or `array=<id> fanin=<id>` (parse_submit reads it). Exits 1 when the
# array could not be submitted, 2 when the fan-in could not: then the array is cancelled
# first, so a failed submission leaves nothing behind in the queue.
set -u
: "${fanin:?set fanin=1 (submit fanin.sh after the array) or fanin=0}"
mkdir -p logs || exit 1
# sbatch --parsable prints <id> or <id>;<cluster>: the first number on its last line
jobid() { printf '%s\n' "$1" | sed -n '$s/^[^0-9]*\([0-9][0-9]*\).*$/\1/p'; }
out=$(sbatch --parsable unit.sh) || { echo 'batchsite: sbatch unit.sh failed' >&2; exit 1; }
array_id=$(jobid "$out")
case "$array_id" in ""|*[!0-9]*) echo "batchsite: no job id in the output of sbatch: $out" >&2; exit 1 ;; esac
if [ "$fanin" != 1 ]; then
  echo "array=$array_id"
  exit 0
fi
if ! out=$(sbatch --parsable --dependency=afterok:"$array_id" fanin.sh); then
  echo "batchsite: sbatch fanin.sh failed; cancelling array $array_id" >&2
  scancel "$array_id"; exit 2
fi
fanin_id=$(jobid "$out")
case "$fanin_id" in ""|*[!0-9]*)
  echo "batchsite: no job id in the output of sbatch: $out; cancelling array $array_id" >&2
  scancel "$array_id"; exit 2 ;;
esac
echo "array=$array_id fanin=$fanin_id"
