# shellcheck shell=bash
# Stand-in of /cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase/user/atlasLocalSetup.sh (sourced).
#
# Contract checked (issue 12): ATLAS_LOCAL_ROOT_BASE is exactly
# /cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase when this file is sourced. It defines the
# shell function `asetup`, which checks that it is called as
#     asetup --input=<CALYPSO_ASETUP file> Athena,24.0.41
# (the --input file exists, the release is Athena,24.0.41, no other argument) and exports
# AtlasProject=Athena AtlasVersion=24.0.41 AtlasSetupInput=<file>. Any difference prints
# "STANDIN CONTRACT VIOLATION ..." and returns 64 (a `set -e` job stops there).
if [ "${ATLAS_LOCAL_ROOT_BASE:-}" != "/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase" ]; then
  echo "STANDIN CONTRACT VIOLATION in atlasLocalSetup.sh: ATLAS_LOCAL_ROOT_BASE='${ATLAS_LOCAL_ROOT_BASE:-}'," \
       "expected /cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase" >&2
  # shellcheck disable=SC2317
  return 64 2>/dev/null || exit 64
fi

asetup() {
  local input="" release="" arg
  for arg in "$@"; do
    case "$arg" in
      --input=*) input="${arg#--input=}" ;;
      Athena,*) release="$arg" ;;
      *) echo "STANDIN CONTRACT VIOLATION in asetup: unexpected argument '$arg'" \
              "(expected --input=<file> Athena,24.0.41)" >&2; return 64 ;;
    esac
  done
  if [ -z "$input" ]; then
    echo "STANDIN CONTRACT VIOLATION in asetup: --input=<CALYPSO_ASETUP> missing" >&2; return 64
  fi
  if [ ! -f "$input" ]; then
    echo "STANDIN CONTRACT VIOLATION in asetup: --input file '$input' does not exist" >&2; return 64
  fi
  if [ "$release" != "Athena,24.0.41" ]; then
    echo "STANDIN CONTRACT VIOLATION in asetup: release '${release}', expected Athena,24.0.41" >&2; return 64
  fi
  export AtlasProject=Athena AtlasVersion=24.0.41 AtlasSetupInput="$input"
  echo "asetup (stand-in): Athena,24.0.41 from $input"
}
