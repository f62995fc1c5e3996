#!/bin/bash
# Stand-in of the RG group's Taskfarm rg_gen_batch.sh: ONE generation batch (array task) of RG
# step k. Written from the contract in issue 12 (not from the group's code).
#
# Usage (Slurm array, default --array=0-31%4; 10 arguments for FP, 11 for EXP):
#   rg_gen_batch.sh CFG TYPE VERSIONSTR N k SEED METHOD EXPR INITIAL EXISTING_T [SHIFT]
#
# Contract checked ("STANDIN CONTRACT VIOLATION ..." on stderr, exit 64), besides the
# environment checks of standin_checks.sh (RG_CONFIG = CFG, PYTHONPATH, module, the seven
# constants.py variables, repo layout, venv):
#   TYPE FP (10 args) or EXP (11 args, SHIFT a number); VERSIONSTR ends with _METHOD_EXPR
#   (the group's {version}_{method}_{expr}); N, k, SEED integers; METHOD analytic|numerical;
#   INITIAL 0|1; INITIAL=1 only at k=0 with EXISTING_T "" or None; INITIAL=0: EXISTING_T is a
#   file, or a directory holding t_laundered_RG{k-1}_batch_{t}.npy (EXP k=0:
#   perturbed_t_shift_{SHIFT}_batch_{t}.npy); SLURM_ARRAY_TASK_ID/MAX set, batch count
#   SLURM_ARRAY_TASK_MAX + 1 divides N.
# Per-batch seed (t = SLURM_ARRAY_TASK_ID): FP S + 1000000 k + 1000 t + 1,
#                                          EXP S + 1000000 k + 10000 t + 1.
# Output under <repo root>/job_outputs/VERSIONSTR/{FP | EXP/shift_<SHIFT>}/:
#   config/updated_config.yaml (copy of CFG), data/RG{k}/batches/batch_{t}/
#   {t_data_RG{k}_{batch size}_samples.npy, z_data_RG{k}_batch_{t}.npy, READY ("OK", last)}.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO_ROOT/Taskfarm/standin_checks.sh"

[ $# -eq 10 ] || [ $# -eq 11 ] || violation "expected 10 (FP) or 11 (EXP) arguments: CFG TYPE VERSIONSTR N k SEED" \
  "METHOD EXPR INITIAL EXISTING_T [SHIFT], got $#: $*"
CFG=$1 TYPE=$2 VERSIONSTR=$3 N=$4 RG_STEP=$5 SEED=$6 METHOD=$7 EXPR=$8 INITIAL=$9 EXISTING_T=${10} SHIFT=${11-}
case "$TYPE" in
  FP) [ $# -eq 10 ] || violation "TYPE=FP takes no SHIFT (got 11 arguments)" ;;
  EXP) [ $# -eq 11 ] || violation "TYPE=EXP needs SHIFT as 11th argument (at every step)"; rg_check_shift "$SHIFT" ;;
  *) violation "TYPE='$TYPE': expected FP or EXP" ;;
esac
rg_check_token VERSIONSTR "$VERSIONSTR"
rg_check_uint N "$N"; rg_check_uint k "$RG_STEP"; rg_check_uint SEED "$SEED"
case "$METHOD" in analytic|numerical) ;; *) violation "METHOD='$METHOD': expected analytic or numerical" ;; esac
rg_check_token EXPR "$EXPR"
[[ $VERSIONSTR == *"_${METHOD}_${EXPR}" ]] || violation "VERSIONSTR='$VERSIONSTR': expected {version}_${METHOD}_${EXPR}"
case "$INITIAL" in 0|1) ;; *) violation "INITIAL='$INITIAL': expected 0 or 1" ;; esac
rg_check_environment "$CFG"
rg_array_geometry "$N"

if [ "$TYPE" = FP ]; then JOB_SEED=$(( SEED + 1000000 * RG_STEP + 1000 * TASK_ID + 1 ))
else JOB_SEED=$(( SEED + 1000000 * RG_STEP + 10000 * TASK_ID + 1 )); fi

T_INPUT=-
if [ "$INITIAL" = 1 ]; then
  [ "$RG_STEP" = 0 ] || violation "INITIAL=1 at k=$RG_STEP: the initial distribution starts step 0 only"
  [ -z "$EXISTING_T" ] || [ "$EXISTING_T" = None ] || violation "INITIAL=1 with EXISTING_T='$EXISTING_T' (expected '' or None)"
elif [ -d "$EXISTING_T" ]; then
  if [ "$TYPE" = EXP ] && [ "$RG_STEP" = 0 ]; then T_INPUT="$EXISTING_T/perturbed_t_shift_${SHIFT}_batch_${TASK_ID}.npy"
  else
    [ "$RG_STEP" -ge 1 ] || violation "INITIAL=0 at FP k=0 needs EXISTING_T to be a file"
    T_INPUT="$EXISTING_T/t_laundered_RG$(( RG_STEP - 1 ))_batch_${TASK_ID}.npy"
  fi
  [ -f "$T_INPUT" ] || violation "EXISTING_T='$EXISTING_T': $(basename "$T_INPUT") missing there"
elif [ -f "$EXISTING_T" ]; then T_INPUT=$EXISTING_T
else violation "INITIAL=0 and EXISTING_T='$EXISTING_T' is neither a file nor a directory"
fi

module purge
module load GCC/13.3.0 SciPy-bundle/2024.05
# shellcheck disable=SC1091
source "$REPO_ROOT/.venv/bin/activate"

if [ "$TYPE" = EXP ]; then outputdir="$REPO_ROOT/job_outputs/$VERSIONSTR/EXP/shift_${SHIFT}"
else outputdir="$REPO_ROOT/job_outputs/$VERSIONSTR/FP"; fi
batchdir="$outputdir/data/RG${RG_STEP}/batches/batch_${TASK_ID}"
tempbatchdir="${TMPDIR:-/tmp}/rg_gen_${SLURM_ARRAY_JOB_ID:-nojob}_${TASK_ID}_$$/RG${RG_STEP}/batch_${TASK_ID}"
mkdir -p "$outputdir/config" "$tempbatchdir"
trap 'rm -rf "$(dirname "$(dirname "$tempbatchdir")")"' EXIT
# the array's tasks start together: copy under a temp name, then rename (a plain cp raced:
# "cannot create regular file ... File exists")
[ -f "$outputdir/config/updated_config.yaml" ] || {
  cp "$CFG" "$outputdir/config/.updated_config.yaml.$$" &&
    mv -f "$outputdir/config/.updated_config.yaml.$$" "$outputdir/config/updated_config.yaml"
}

echo "rg_gen_batch.sh: $TYPE RG$RG_STEP batch $TASK_ID/$NUM_BATCHES size $BATCH_SIZE seed $JOB_SEED input $T_INPUT"
rg_python gen "$tempbatchdir" "$RG_STEP" "$BATCH_SIZE" "$JOB_SEED" "$TASK_ID" "$INITIAL" "$T_INPUT"

rm -rf "$batchdir"
mkdir -p "$batchdir"
cp "$tempbatchdir"/*.npy "$batchdir/"
printf 'OK' > "$batchdir/.READY.tmp"
mv -f "$batchdir/.READY.tmp" "$batchdir/READY"
echo "rg_gen_batch.sh: wrote $batchdir"
