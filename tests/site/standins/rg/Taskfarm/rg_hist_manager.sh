#!/bin/bash
# Stand-in of the RG group's Taskfarm rg_hist_manager.sh: aggregation of RG step k (runs
# afterok the generation array). Written from the contract in issue 12.
#
# Usage (7 arguments for FP, 8 for EXP):
#   rg_hist_manager.sh CFG TYPE VERSIONSTR N k SEED SYMMETRISE [SHIFT]
#
# Contract checked ("STANDIN CONTRACT VIOLATION ..." on stderr, exit 64), besides the
# environment checks of standin_checks.sh: TYPE FP (7 args) / EXP (8 args, SHIFT a number);
# N, k, SEED integers; SYMMETRISE 0|1; every batch batch_0 .. batch_{B-1} of step k is there
# with READY = "OK" and its data files, where B = N / (the batch size in the file names),
# all batches agree on the size and there is no extra batch.
# Output under job_outputs/VERSIONSTR/{FP | EXP/shift_<SHIFT>}/data/RG{k}/:
#   hist/{t,z,input_t}/*_hist_RG{k}.npz (+ hist/sym_z/ when SYMMETRISE=1), keys histval (RAW
#   counts), binedges, bincenters; laundered/t_laundered_RG{k}_batch_{b}.npy (next step's input,
#   from sym_z, else from t for EXP, else z); DONE.json (keys rg_step, n_total, num_batches,
#   batch_size, job_id, created, config) written last. Then step k-1's batches/ and laundered/
#   are deleted.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO_ROOT/Taskfarm/standin_checks.sh"

[ $# -eq 7 ] || [ $# -eq 8 ] || violation "expected 7 (FP) or 8 (EXP) arguments: CFG TYPE VERSIONSTR N k SEED" \
  "SYMMETRISE [SHIFT], got $#: $*"
CFG=$1 TYPE=$2 VERSIONSTR=$3 N=$4 RG_STEP=$5 SEED=$6 SYMMETRISE=$7 SHIFT=${8-}
case "$TYPE" in
  FP) [ $# -eq 7 ] || violation "TYPE=FP takes no SHIFT (got 8 arguments)" ;;
  EXP) [ $# -eq 8 ] || violation "TYPE=EXP needs SHIFT as 8th argument (at every step)"; rg_check_shift "$SHIFT" ;;
  *) violation "TYPE='$TYPE': expected FP or EXP" ;;
esac
rg_check_token VERSIONSTR "$VERSIONSTR"
rg_check_uint N "$N"; rg_check_uint k "$RG_STEP"; rg_check_uint SEED "$SEED"
case "$SYMMETRISE" in 0|1) ;; *) violation "SYMMETRISE='$SYMMETRISE': expected 0 or 1" ;; esac
rg_check_environment "$CFG"

if [ "$TYPE" = EXP ]; then outputdir="$REPO_ROOT/job_outputs/$VERSIONSTR/EXP/shift_${SHIFT}"
else outputdir="$REPO_ROOT/job_outputs/$VERSIONSTR/FP"; fi
stepdir="$outputdir/data/RG${RG_STEP}"
[ -d "$stepdir/batches" ] || violation "$stepdir/batches does not exist (no generation batch of RG$RG_STEP)"

shopt -s nullglob
first=("$stepdir"/batches/batch_0/t_data_RG"${RG_STEP}"_*_samples.npy)
[ ${#first[@]} -eq 1 ] || violation "$stepdir/batches/batch_0: expected one t_data_RG${RG_STEP}_<size>_samples.npy"
BATCH_SIZE=${first[0]##*_RG${RG_STEP}_}; BATCH_SIZE=${BATCH_SIZE%_samples.npy}
rg_check_uint "batch size" "$BATCH_SIZE"
(( BATCH_SIZE > 0 && N % BATCH_SIZE == 0 )) || violation "N=$N is not a multiple of the batch size $BATCH_SIZE"
NUM_BATCHES=$(( N / BATCH_SIZE ))
missing=()
for (( b = 0; b < NUM_BATCHES; b++ )); do
  d="$stepdir/batches/batch_$b"
  if [ "$(cat "$d/READY" 2>/dev/null || true)" != OK ] || [ ! -f "$d/t_data_RG${RG_STEP}_${BATCH_SIZE}_samples.npy" ] ||
     [ ! -f "$d/z_data_RG${RG_STEP}_batch_${b}.npy" ]; then missing+=("batch_$b"); fi
done
[ ${#missing[@]} -eq 0 ] || violation "RG$RG_STEP: ${#missing[@]} of $NUM_BATCHES batches missing or not READY: ${missing[*]}"
for d in "$stepdir"/batches/batch_*; do
  b=${d##*batch_}
  { [[ $b =~ ^[0-9]+$ ]] && (( b < NUM_BATCHES )); } || violation "$d: extra batch (N=$N / size $BATCH_SIZE = $NUM_BATCHES batches)"
done

module purge
module load GCC/13.3.0 SciPy-bundle/2024.05
# shellcheck disable=SC1091
source "$REPO_ROOT/.venv/bin/activate"
mkdir -p "$outputdir/config"
# the array's tasks start together: copy under a temp name, then rename (a plain cp raced:
# "cannot create regular file ... File exists")
[ -f "$outputdir/config/updated_config.yaml" ] || {
  cp "$CFG" "$outputdir/config/.updated_config.yaml.$$" &&
    mv -f "$outputdir/config/.updated_config.yaml.$$" "$outputdir/config/updated_config.yaml"
}
rm -f "$stepdir/DONE.json"
rm -rf "$stepdir/laundered"

echo "rg_hist_manager.sh: $TYPE RG$RG_STEP $NUM_BATCHES batches of $BATCH_SIZE"
rg_python hist "$stepdir" "$RG_STEP" "$N" "$NUM_BATCHES" "$BATCH_SIZE" "$SEED" "$TYPE" "$SYMMETRISE"

python3 - "$stepdir/DONE.json" "$RG_STEP" "$N" "$NUM_BATCHES" "$BATCH_SIZE" "${SLURM_JOB_ID:-local}" "$(readlink -f "$CFG")" <<'PY'
import datetime, json, os, sys
path, step, n, nb, bs, job, cfg = sys.argv[1:]
doc = {"rg_step": int(step), "n_total": int(n), "num_batches": int(nb), "batch_size": int(bs), "job_id": job,
       "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "config": cfg}
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, sort_keys=True)
    f.write("\n")
os.replace(tmp, path)
PY

if (( RG_STEP > 0 )); then
  rm -rf "$outputdir/data/RG$(( RG_STEP - 1 ))/batches" "$outputdir/data/RG$(( RG_STEP - 1 ))/laundered"
fi
echo "rg_hist_manager.sh: RG$RG_STEP done: $stepdir/DONE.json"
