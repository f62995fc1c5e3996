# shellcheck shell=bash
# Checks shared by the RG Taskfarm stand-ins (sourced; not part of the group's repository).
#
# rg_check_environment CFG: RG_CONFIG points at CFG (same file), CFG is a non-empty YAML
# file with lowercase top-level keys; PYTHONPATH is set; `module` exists as a command
# (a no-op function is fine off-cluster); the seven variables constants.py requires
# (DATA_DIR LOCAL_DIR ROOT_DIR TASKFARM_DIR HOST REMOTE_DIR CONFIG_FILE) are set; the repo
# root (parent of Taskfarm/) has source/, constants.py and Taskfarm/; a venv at the remote
# root (the repo root: .venv/bin/activate). Any difference: "STANDIN CONTRACT VIOLATION"
# on stderr and exit 64.

violation() { echo "STANDIN CONTRACT VIOLATION in $(basename "$0"): $*" >&2; exit 64; }

rg_check_environment() {
  local cfg=$1 var
  [ -n "${RG_CONFIG:-}" ] || violation "RG_CONFIG is not set (it must point at CFG=$cfg)"
  [ -f "$cfg" ] || violation "CFG='$cfg': no such file (the campaign's updated_config.yaml)"
  [ -s "$cfg" ] || violation "CFG='$cfg' is empty"
  [ "$(readlink -f "$RG_CONFIG")" = "$(readlink -f "$cfg")" ] ||
    violation "RG_CONFIG='$RG_CONFIG' does not point at CFG='$cfg'"
  if grep -qE '^[^#[:space:]][^:]*[A-Z][^:]*:' "$cfg"; then
    violation "CFG='$cfg': top-level keys must be lowercase ($(grep -m1 -E '^[^#[:space:]][^:]*[A-Z][^:]*:' "$cfg"))"
  fi
  [ -n "${PYTHONPATH:-}" ] || violation "PYTHONPATH is not set"
  type module >/dev/null 2>&1 || violation "no 'module' command (define a no-op module function off-cluster)"
  for var in DATA_DIR LOCAL_DIR ROOT_DIR TASKFARM_DIR HOST REMOTE_DIR CONFIG_FILE; do
    [ -n "${!var+set}" ] || violation "environment variable $var is not set (constants.py requires DATA_DIR" \
      "LOCAL_DIR ROOT_DIR TASKFARM_DIR HOST REMOTE_DIR CONFIG_FILE)"
  done
  [ -d "$REPO_ROOT/source" ] || violation "repository root $REPO_ROOT has no source/"
  [ -f "$REPO_ROOT/constants.py" ] || violation "repository root $REPO_ROOT has no constants.py"
  [ -d "$REPO_ROOT/Taskfarm" ] || violation "repository root $REPO_ROOT has no Taskfarm/"
  [ -f "$REPO_ROOT/.venv/bin/activate" ] || violation "no venv at the remote root ($REPO_ROOT/.venv/bin/activate)"
}

rg_check_uint() {  # NAME VALUE
  [[ $2 =~ ^[0-9]+$ ]] || violation "$1='$2': expected a non-negative integer"
}

rg_check_token() {  # NAME VALUE
  [[ $2 =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || violation "$1='$2': expected letters, digits, . _ + -"
}

rg_check_shift() {  # VALUE
  [[ $1 =~ ^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$ ]] || violation "SHIFT='$1': expected a number (e.g. 0.003)"
}

rg_array_geometry() {  # N -> sets NUM_BATCHES BATCH_SIZE TASK_ID
  [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || violation "SLURM_ARRAY_TASK_ID is not set (this script is an array job)"
  [ -n "${SLURM_ARRAY_TASK_MAX:-}" ] || violation "SLURM_ARRAY_TASK_MAX is not set (the batch count is" \
    "SLURM_ARRAY_TASK_MAX + 1, so a rescue array must present the full array geometry)"
  rg_check_uint SLURM_ARRAY_TASK_ID "$SLURM_ARRAY_TASK_ID"
  rg_check_uint SLURM_ARRAY_TASK_MAX "$SLURM_ARRAY_TASK_MAX"
  NUM_BATCHES=$(( SLURM_ARRAY_TASK_MAX + 1 ))
  TASK_ID=$SLURM_ARRAY_TASK_ID
  (( TASK_ID < NUM_BATCHES )) || violation "SLURM_ARRAY_TASK_ID=$TASK_ID is beyond SLURM_ARRAY_TASK_MAX=$SLURM_ARRAY_TASK_MAX"
  (( $1 % NUM_BATCHES == 0 )) || violation "N=$1 is not divisible by the batch count $NUM_BATCHES (SLURM_ARRAY_TASK_MAX + 1)"
  BATCH_SIZE=$(( $1 / NUM_BATCHES ))
  (( BATCH_SIZE > 0 )) || violation "N=$1 gives empty batches"
}

rg_python() {  # run the stand-in physics in the venv, from the repo root
  ( cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT:$PYTHONPATH" python -m source.standin_rg "$@" )
}
