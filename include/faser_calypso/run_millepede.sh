#!/bin/bash
# Millepede step of the real FASER chain: millepede/bin/millepede.py -i <2kfalignment dir>,
# with pede from pede_install. Arguments: ENV_SCRIPT KF_DIR OUT_DIR PEDE_INSTALL
set -euo pipefail
env_script=$1 kf_dir=$2 out_dir=$3 pede_install=$4
# shellcheck disable=SC1090
source "$env_script"
export PATH="$pede_install:$PATH" LD_LIBRARY_PATH="$pede_install:${LD_LIBRARY_PATH:-}"
mkdir -p "$out_dir"
cd "$out_dir"
millepede.py -i "$kf_dir"
test -s millepede.res && test -s inputforalign.txt
