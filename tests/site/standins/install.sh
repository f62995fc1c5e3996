#!/bin/bash
# Install the issue-12 stand-ins (see README.md next to this file).
#
#   tests/site/standins/install.sh ROOT_PREFIX SITE_USER
#
# ROOT_PREFIX "/" installs for real (needs root for /cvmfs, /eos, /opt); any other directory
# installs the same tree below it (no root needed; the stand-ins then need
# BATCHSITE_STANDIN_PREFIX=ROOT_PREFIX in the jobs' environment). SITE_USER owns the group
# checkouts (when run as root) and every file is readable by it.
#
# Installs (P = ROOT_PREFIX, O = $BATCHSITE_STANDIN_OPT or P/opt/batchsite-standins,
#           G = $BATCHSITE_STANDIN_GROUPS or P/home/SITE_USER/standins):
#   P/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase/user/atlasLocalSetup.sh   (asetup)
#   P/cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/ALLP200.db
#   P/eos/experiment/faser/raw/<YEAR>/<RUN>/Faser-Physics-<RUN>-<FILE>.raw
#       (YEAR/RUN/FILES: $BATCHSITE_STANDIN_YEAR 2022, _RUN 008023, _FILES 0-4 end-exclusive)
#   O/calypso/{asetup.faser,setup.sh,bin/}   CALYPSO_ASETUP, CALYPSO_SETUP, Calypso's programs
#   O/pede/pede                               ENV_PEDE
#   O/root/bin/thisroot.sh                    ENV_ROOT
#   O/bin/module                              a no-op `module` for the RG jobs' PATH
#   O/rg-env.sh                               example per-campaign environment of the RG jobs
#   G/faser-alignment-script/                 SRC_DIR (the FASER group's checkout)
#   G/PX402-RGCC/                             the RG group's repository (its remote root, .venv)
# The Python interpreter (must import numpy): $BATCHSITE_STANDIN_PYTHON, else /usr/bin/python3
# if it has numpy, else python3 on PATH.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 2; }
[ $# -eq 2 ] || die "usage: install.sh ROOT_PREFIX SITE_USER"
PREFIX_ARG=$1 SITE_USER=$2
[[ $PREFIX_ARG == /* ]] || die "ROOT_PREFIX='$PREFIX_ARG' must be absolute"
id "$SITE_USER" >/dev/null 2>&1 || die "SITE_USER='$SITE_USER' is not a user here"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
P=${PREFIX_ARG%/}
OPT=${BATCHSITE_STANDIN_OPT:-$P/opt/batchsite-standins}
GROUPS_DIR=${BATCHSITE_STANDIN_GROUPS:-$P/home/$SITE_USER/standins}
YEAR=${BATCHSITE_STANDIN_YEAR:-2022}
RUN=${BATCHSITE_STANDIN_RUN:-008023}
FILES=${BATCHSITE_STANDIN_FILES:-0-4}

if [ -n "${BATCHSITE_STANDIN_PYTHON:-}" ]; then PY=$BATCHSITE_STANDIN_PYTHON
elif /usr/bin/python3 -c 'import numpy' >/dev/null 2>&1; then PY=/usr/bin/python3
else PY=$(command -v python3) || die "no python3"; fi
"$PY" -c 'import numpy' >/dev/null 2>&1 || die "$PY cannot import numpy (set BATCHSITE_STANDIN_PYTHON)"
PY=$(command -v "$PY")

umask 022
inst() { install -D -m "$1" "$2" "$3"; }   # MODE SRC DEST
shim() {  # DEST: an executable that runs the chosen interpreter
  mkdir -p "$(dirname "$1")"
  printf '#!/bin/sh\nexec %q "$@"\n' "$PY" > "$1"
  chmod 755 "$1"
}
subst() {  # SRC DEST KEY VALUE
  mkdir -p "$(dirname "$2")"
  sed "s|@$3@|$4|g" "$1" > "$2"
  chmod 644 "$2"
}
LIBS=("$HERE/common/standin_calls.py" "$HERE/faser/faser_toy.py")

# ---- /cvmfs and /eos
inst 644 "$HERE/faser/cvmfs/atlasLocalSetup.sh" "$P/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase/user/atlasLocalSetup.sh"
"$PY" "$HERE/faser/make_raw.py" --root "${P:-/}" --year "$YEAR" --run "$RUN" --files "$FILES" >/dev/null
chmod -R a+rX "$P/cvmfs" "$P/eos"

# ---- Calypso, pede, ROOT stand-ins
C="$OPT/calypso"
mkdir -p "$C"
printf '# CALYPSO_ASETUP stand-in (asetup --input=<this file> Athena,24.0.41)\n' > "$C/asetup.faser"
subst "$HERE/faser/calypso/setup.sh.in" "$C/setup.sh" CALYPSO_DIR "$C"
for f in WriteAlignmentConfig_Faser04.py AtlCoolConsole.py; do inst 755 "$HERE/faser/calypso/bin/$f" "$C/bin/$f"; done
for f in "${LIBS[@]}"; do inst 644 "$f" "$C/bin/$(basename "$f")"; inst 644 "$f" "$C/python/$(basename "$f")"; done
shim "$C/bin/python"
inst 755 "$HERE/faser/pede/pede" "$OPT/pede/pede"
for f in "${LIBS[@]}"; do inst 644 "$f" "$OPT/pede/$(basename "$f")"; done
sed -i "1s|.*|#!$PY|" "$OPT/pede/pede"
subst "$HERE/faser/root/thisroot.sh.in" "$OPT/root/bin/thisroot.sh" ROOT_DIR "$OPT/root"
shim "$OPT/root/bin/python3"
mkdir -p "$OPT/bin"
printf '#!/bin/sh\n# no-op module command (off-cluster stand-in of Lmod/Environment Modules)\nexit 0\n' > "$OPT/bin/module"
chmod 755 "$OPT/bin/module"

# ---- FASER group checkout (SRC_DIR)
F="$GROUPS_DIR/faser-alignment-script"
rm -rf "$F"
inst 755 "$HERE/faser/checkout/faser_reco_alignment.py" "$F/faser_reco_alignment.py"
inst 755 "$HERE/faser/checkout/millepede/bin/millepede.py" "$F/millepede/bin/millepede.py"
for f in "${LIBS[@]}"; do
  inst 644 "$f" "$F/$(basename "$f")"
  inst 644 "$f" "$F/millepede/bin/$(basename "$f")"
done
for f in runAlignment.sh runMillepede.sh aligndb_copy.sh; do inst 755 "$HERE/faser/checkout/templates/$f" "$F/templates/$f"; done
for f in aligndb_template_head.sh aligndb_template_tail.sh; do inst 644 "$HERE/faser/checkout/templates/$f" "$F/templates/$f"; done
inst 644 "$HERE/faser/calypso/bin/WriteAlignmentConfig_Faser04.py" "$F/templates/WriteAlignmentConfig_Faser04.py"
"$PY" - "$F/templates" <<'PY'
import sys
sys.path.insert(0, sys.argv[1] + "/..")
import faser_toy as toy
d = sys.argv[1]
three = toy.format_constants(toy.zero_constants(toy.STATIONS_3))
four = toy.format_constants(toy.zero_constants(toy.STATIONS_4))
for name, text in (("inputforalign.txt", three), ("align_2022_3ST.txt", three), ("align_2022_4ST_local.txt", four)):
    with open(f"{d}/{name}", "w") as f:
        f.write(text)
PY

# ---- RG group repository (its remote root)
R="$GROUPS_DIR/PX402-RGCC"
rm -rf "$R/Taskfarm" "$R/source" "$R/constants.py" "$R/.venv"
for f in rg_gen_batch.sh rg_hist_manager.sh gen_shifted_data.sh; do inst 755 "$HERE/rg/Taskfarm/$f" "$R/Taskfarm/$f"; done
inst 644 "$HERE/rg/Taskfarm/standin_checks.sh" "$R/Taskfarm/standin_checks.sh"
inst 644 "$HERE/rg/constants.py" "$R/constants.py"
inst 644 "$HERE/rg/source/__init__.py" "$R/source/__init__.py"
inst 644 "$HERE/rg/source/standin_rg.py" "$R/source/standin_rg.py"
inst 644 "$REPO/include/rg_reference/rg_unit.py" "$R/source/rg_unit.py"
mkdir -p "$R/.venv/bin" "$R/job_outputs"
shim "$R/.venv/bin/python"
shim "$R/.venv/bin/python3"
cat > "$R/.venv/bin/activate" <<EOF
# minimal venv of the RG stand-in repository (interpreter: $PY)
export VIRTUAL_ENV="$R/.venv"
export PATH="$R/.venv/bin:\${PATH}"
EOF
cat > "$OPT/rg-env.sh" <<EOF
# Example per-campaign environment of the RG group's jobs (what batchsite must provide).
export PATH="$OPT/bin:\${PATH}"          # a no-op 'module'
export PYTHONPATH="$R\${PYTHONPATH:+:\${PYTHONPATH}}"
export DATA_DIR="$R/data" LOCAL_DIR="$R/local" ROOT_DIR="$R" TASKFARM_DIR="$R/Taskfarm"
export HOST=taskfarm REMOTE_DIR="$R" CONFIG_FILE=updated_config.yaml
# and per step: export RG_CONFIG=<the updated_config.yaml passed as CFG>
EOF
chmod 644 "$OPT/rg-env.sh"

chmod -R a+rX "$OPT" "$GROUPS_DIR"
[ -z "$P" ] || chmod a+rx "$P"   # a temp prefix (mktemp -d is 0700) must be traversable by SITE_USER
if [ "$(id -u)" = 0 ] && [ "$SITE_USER" != root ]; then
  chown -R "$SITE_USER:" "$GROUPS_DIR"
fi
cat <<EOF
stand-ins installed (prefix ${P:-/}):
  CALYPSO_ASETUP=$C/asetup.faser
  CALYPSO_SETUP=$C/setup.sh
  ENV_PEDE=$OPT/pede
  ENV_ROOT=$OPT/root/bin/thisroot.sh
  SRC_DIR=$F
  RG_REPO=$R
  RG_ENV=$OPT/rg-env.sh
  RAW=$P/eos/experiment/faser/raw/$YEAR/$RUN
EOF
