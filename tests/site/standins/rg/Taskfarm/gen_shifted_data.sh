#!/bin/bash
# Stand-in of the RG group's Taskfarm gen_shifted_data.sh: the start of an EXP run, one array
# task per batch: samples of the FP's z distribution shifted by SHIFT. From the contract in
# issue 12 and the group's script interface (argument order and seed formula).
#
# Usage (Slurm array; exactly 7 arguments):
#   gen_shifted_data.sh CFG VERSIONSTR N INPUT_HIST STEP SEED SHIFT
#
# Contract checked ("STANDIN CONTRACT VIOLATION ..." on stderr, exit 64), besides the
# environment checks of standin_checks.sh: N, SEED integers; INPUT_HIST an existing .npz with
# histval/binedges/bincenters (the FP's last sym_z histogram, raw counts); STEP a token (the
# group uses "Initial"); SHIFT a number; SLURM_ARRAY_TASK_ID/MAX set and the batch count
# SLURM_ARRAY_TASK_MAX + 1 divides N. Seed: SEED + 123456 + 1000 t + 4.
# Output: job_outputs/VERSIONSTR/EXP/shift_<SHIFT>/data/<STEP>/perturbed_t_shift_<SHIFT>_batch_<t>.npy
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO_ROOT/Taskfarm/standin_checks.sh"

[ $# -eq 7 ] || violation "expected 7 arguments: CFG VERSIONSTR N INPUT_HIST STEP SEED SHIFT, got $#: $*"
CFG=$1 VERSIONSTR=$2 N=$3 INPUT_HIST=$4 STEP=$5 SEED=$6 SHIFT=$7
rg_check_token VERSIONSTR "$VERSIONSTR"
rg_check_uint N "$N"; rg_check_uint SEED "$SEED"; rg_check_token STEP "$STEP"; rg_check_shift "$SHIFT"
{ [[ $INPUT_HIST == *.npz ]] && [ -f "$INPUT_HIST" ]; } || violation "INPUT_HIST='$INPUT_HIST': expected an existing .npz histogram"
rg_check_environment "$CFG"
rg_array_geometry "$N"
JOB_SEED=$(( SEED + 123456 + 1000 * TASK_ID + 4 ))

module purge
module load GCC/13.3.0 SciPy-bundle/2024.05
# shellcheck disable=SC1091
source "$REPO_ROOT/.venv/bin/activate"
outputdir="$REPO_ROOT/job_outputs/$VERSIONSTR/EXP/shift_${SHIFT}"
mkdir -p "$outputdir/config" "$outputdir/data/$STEP"
# the array's tasks start together: copy under a temp name, then rename (a plain cp raced:
# "cannot create regular file ... File exists")
[ -f "$outputdir/config/updated_config.yaml" ] || {
  cp "$CFG" "$outputdir/config/.updated_config.yaml.$$" &&
    mv -f "$outputdir/config/.updated_config.yaml.$$" "$outputdir/config/updated_config.yaml"
}
echo "gen_shifted_data.sh: shift $SHIFT batch $TASK_ID/$NUM_BATCHES size $BATCH_SIZE seed $JOB_SEED"
rg_python shift "$outputdir/data/$STEP/perturbed_t_shift_${SHIFT}_batch_${TASK_ID}.npy" "$BATCH_SIZE" \
  "$(readlink -f "$INPUT_HIST")" "$JOB_SEED" "$SHIFT"
