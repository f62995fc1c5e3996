#!/bin/bash
# rg_group_job.sh: runs ONE of the RG group's Taskfarm scripts unchanged, with the arguments
# and environment their own sbatch chain gives it (batchsite.campaign.rg_group renders the argv;
# the stage task writes this file to <remote_root>/code/batchsite/rg_group_job.sh).
#
# Usage: rg_group_job.sh ENV_SCRIPT SUBMIT_DIR GEOMETRY SCRIPT [ARGS...]
#   ENV_SCRIPT  the campaign's own environment script (group.env_script), sourced first; - for none
#   SUBMIT_DIR  the directory the group submits from (their Taskfarm scripts directory): the cwd,
#               exported as SLURM_SUBMIT_DIR as their own sbatch would
#   GEOMETRY    T/B for array task T of the full array 0..B-1; - for a plain (non-array) job
#   SCRIPT      the group's script, run with bash and ARGS exactly as given
#
# Why GEOMETRY: the group's scripts take the batch count from SLURM_ARRAY_TASK_MAX + 1 and each
# batch's seed from SLURM_ARRAY_TASK_ID. A rescue array of only the failed indices
# (--array=3,7) makes Slurm set SLURM_ARRAY_TASK_MAX=7 and SLURM_ARRAY_TASK_COUNT=2, so the
# scripts would compute another batch size and write another layout. The round's full size
# travels in the argv instead, and the array variables are set to the full array 0..B-1 here.
# Slurm's own values stay visible as BATCHSITE_SCHED_ARRAY_TASK_{ID,MIN,MAX,COUNT}. Off Slurm
# (local site, HTCondor) the same variables are set, so the scripts run there unchanged too.
# Exit code: the script's; 2 for a bad call of this wrapper.
set -o pipefail  # no -u: the sourced group.env_script may read unset variables
die() { echo "rg_group_job.sh: $*" >&2; exit 2; }
[ $# -ge 4 ] || die "usage: rg_group_job.sh ENV_SCRIPT SUBMIT_DIR GEOMETRY SCRIPT [ARGS...] (got $# arguments)"
env_script=$1 submit_dir=$2 geometry=$3 script=$4
shift 4
if [ "$env_script" != - ]; then
  [ -f "$env_script" ] || die "ENV_SCRIPT=$env_script does not exist (the campaign's group.env_script)"
  # shellcheck disable=SC1090
  . "$env_script" || die "sourcing ENV_SCRIPT=$env_script failed"
fi
[ -f "$script" ] || die "SCRIPT=$script does not exist (group.scripts_dir holds the group's Taskfarm scripts)"
cd "$submit_dir" || die "cannot cd into SUBMIT_DIR=$submit_dir"
export SLURM_SUBMIT_DIR="$submit_dir"
case $geometry in
  -)
    unset SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_MIN SLURM_ARRAY_TASK_MAX SLURM_ARRAY_TASK_COUNT SLURM_ARRAY_TASK_STEP
    ;;
  */*)
    task=${geometry%%/*} size=${geometry#*/}
    case $task$size in ""|*[!0-9]*) die "GEOMETRY=$geometry: expected T/B with non-negative integers" ;; esac
    [ "$task" -lt "$size" ] || die "GEOMETRY=$geometry: task $task is outside the array 0..$((size - 1))"
    # T, not Slurm's index, is the batch: a round split into several arrays (MaxArraySize) runs
    # unit offset + SLURM_ARRAY_TASK_ID, and batchsite's unit table picked this unit for it
    export BATCHSITE_SCHED_ARRAY_TASK_ID="${SLURM_ARRAY_TASK_ID:-}"
    export BATCHSITE_SCHED_ARRAY_TASK_MIN="${SLURM_ARRAY_TASK_MIN:-}" BATCHSITE_SCHED_ARRAY_TASK_MAX="${SLURM_ARRAY_TASK_MAX:-}"
    export BATCHSITE_SCHED_ARRAY_TASK_COUNT="${SLURM_ARRAY_TASK_COUNT:-}"
    export SLURM_ARRAY_TASK_ID="$task" SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=$((size - 1))
    export SLURM_ARRAY_TASK_COUNT="$size" SLURM_ARRAY_TASK_STEP=1
    ;;
  *) die "GEOMETRY=$geometry: expected T/B (array task T of 0..B-1) or - (a plain job)" ;;
esac
exec bash "$script" "$@"
