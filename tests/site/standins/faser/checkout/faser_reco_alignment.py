#!/usr/bin/env python3
"""Stand-in of the group's ``faser_reco_alignment.py`` (reconstruction of one raw file).

Contract checked (issue 12), every difference exits 64 with a message naming it:

    python <SRC_DIR>/faser_reco_alignment.py <raw> --alignment --noBackward [--noIFT] --output_level <LEVEL>

* ``<raw>`` is exactly ``/eos/experiment/faser/raw/<YEAR>/<RUN>/Faser-Physics-<RUN>-<FILE>.raw``
  (RUN 6 digits, FILE 5 digits) and exists (under ``$BATCHSITE_STANDIN_PREFIX``);
* ``--alignment`` and ``--noBackward`` are given; any other option (e.g. ``--fourst``) is
  rejected; ``--output_level`` is one of VERBOSE DEBUG INFO WARNING ERROR FATAL;
* ``--noIFT`` iff the pass is 3-station, when ``$BATCHSITE_STANDIN_STATIONS`` says (the
  stand-in runAlignment.sh sets it from STATIONS);
* the ATLAS/Calypso environment: ``asetup ... Athena,24.0.41`` ran (``AtlasProject``,
  ``AtlasVersion``), the Calypso setup was sourced (``CALYPSO_STANDIN_INSTALL``);
* ``ATLAS_POOLCOND_PATH`` is ``<cwd>/data`` and holds ``sqlite200/ALLP200.db`` with the
  constants WriteAlignmentConfig_Faser04.py wrote; ``EOS_MGM_URL=root://eosuser.cern.ch``;
* when ``_CONDOR_SCRATCH_DIR`` is set, the cwd is ``$_CONDOR_SCRATCH_DIR/work_<RUN>_<FILE>``.

Output in the cwd: ``Faser-Physics-<RUN>-<FILE>-standin-kfalignment.root`` (npz content: the
reconstructed hits, straight-line residuals and the applied constants) and
``Faser-Physics-<RUN>-<FILE>-standin-xAOD.root`` (a dummy the job script must drop). The
residuals shrink as the applied constants approach the hidden truth of the raw file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import faser_toy as toy  # noqa: E402
from standin_calls import contract_error, log_call, under_prefix  # noqa: E402

PROGRAM = "faser_reco_alignment.py"
LEVELS = ("VERBOSE", "DEBUG", "INFO", "WARNING", "ERROR", "FATAL")


class ContractParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        contract_error(PROGRAM, f"arguments: {message} (expected <raw> --alignment --noBackward [--noIFT] "
                                "--output_level LEVEL)")


def read_applied_constants(poolcond: str) -> toy.Constants:
    db = os.path.join(poolcond, "sqlite200", "ALLP200.db")
    if not os.path.isfile(db):
        contract_error(PROGRAM, f"ATLAS_POOLCOND_PATH: {db} missing (the job must copy ALLP200.db from "
                                "/cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/)")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT constants_json FROM standin_alignment WHERE folder='/Tracker/Align' "
                              "ORDER BY rowid DESC LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        contract_error(PROGRAM, f"{db}: no alignment folder written ({exc}); "
                                "aligndb_copy.sh (WriteAlignmentConfig_Faser04.py) did not run")
    if row is None:
        contract_error(PROGRAM, f"{db}: /Tracker/Align is empty; WriteAlignmentConfig_Faser04.py did not write it")
    return json.loads(row[0])


def main() -> int:
    parser = ContractParser(prog=PROGRAM, add_help=False)
    parser.add_argument("raw")
    parser.add_argument("--alignment", action="store_true")
    parser.add_argument("--noBackward", action="store_true")
    parser.add_argument("--noIFT", action="store_true")
    parser.add_argument("--output_level")
    args = parser.parse_args()

    m = toy.RAW_NAME.match(args.raw)
    if not m or m.group(2) != m.group(3):
        contract_error(PROGRAM, f"raw file {args.raw!r}: expected "
                                "/eos/experiment/faser/raw/<YEAR>/<RUN 6 digits>/Faser-Physics-<RUN>-<FILE 5 digits>.raw")
    year, run, file = m.group(1), m.group(2), m.group(4)
    if not args.alignment:
        contract_error(PROGRAM, "--alignment missing")
    if not args.noBackward:
        contract_error(PROGRAM, "--noBackward missing")
    if args.output_level is None:
        contract_error(PROGRAM, "--output_level missing (the job passes VERBOSITY, default INFO)")
    if args.output_level not in LEVELS:
        contract_error(PROGRAM, f"--output_level {args.output_level!r}: expected one of {', '.join(LEVELS)}")
    stations = os.environ.get("BATCHSITE_STANDIN_STATIONS")
    if stations == "3" and not args.noIFT:
        contract_error(PROGRAM, "--noIFT missing for a 3-station pass (STATIONS=3)")
    if stations == "4" and args.noIFT:
        contract_error(PROGRAM, "--noIFT given for a 4-station pass (STATIONS=4)")
    if os.environ.get("AtlasProject") != "Athena" or os.environ.get("AtlasVersion") != "24.0.41":
        contract_error(PROGRAM, "asetup --input=<CALYPSO_ASETUP> Athena,24.0.41 did not run "
                                "(AtlasProject/AtlasVersion not set)")
    if not os.environ.get("CALYPSO_STANDIN_INSTALL"):
        contract_error(PROGRAM, "CALYPSO_SETUP was not sourced (CALYPSO_STANDIN_INSTALL not set)")
    if os.environ.get("EOS_MGM_URL") != "root://eosuser.cern.ch":
        contract_error(PROGRAM, f"EOS_MGM_URL={os.environ.get('EOS_MGM_URL')!r}: expected root://eosuser.cern.ch")
    cwd = os.path.realpath(os.getcwd())
    poolcond = os.environ.get("ATLAS_POOLCOND_PATH")
    if not poolcond or os.path.realpath(poolcond) != os.path.join(cwd, "data"):
        contract_error(PROGRAM, f"ATLAS_POOLCOND_PATH={poolcond!r}: expected <work dir>/data = {cwd}/data")
    scratch = os.environ.get("_CONDOR_SCRATCH_DIR")
    if scratch and cwd != os.path.realpath(os.path.join(scratch, f"work_{run}_{file}")):
        contract_error(PROGRAM, f"working directory {cwd}: expected $_CONDOR_SCRATCH_DIR/work_{run}_{file}")
    raw_path = under_prefix(args.raw)
    if not os.path.isfile(raw_path):
        contract_error(PROGRAM, f"raw file {args.raw} does not exist (looked at {raw_path})")

    applied = read_applied_constants(poolcond)
    with np.load(raw_path, allow_pickle=False) as raw:
        all_planes = [tuple(int(v) for v in p) for p in raw["planes"]]
        local_all = raw["local"]
        sigma = float(raw["sigma"])
    stations_used = toy.STATIONS_3 if args.noIFT else toy.STATIONS_4
    planes = toy.planes_of(stations_used)
    cols = [all_planes.index(p) for p in planes]
    local = local_all[:, cols, :]
    z = toy.plane_z(planes)
    applied_planes = toy.plane_constants(applied, planes)
    hits = toy.reconstruct(local, applied_planes)
    residual = toy.line_fit_residuals(hits, z)
    mean_abs = float(np.mean(np.abs(residual)))

    stem = f"Faser-Physics-{run}-{file}-standin"
    buf = io.BytesIO()
    np.savez(buf, year=int(year), run=int(run), raw_file=int(file), planes=np.array(planes), z=z, hits=hits,
             residual=residual, sigma=sigma, applied_json=json.dumps(applied, sort_keys=True),
             mean_abs_residual_mm=mean_abs)
    with open(f"{stem}-kfalignment.root", "wb") as f:
        f.write(buf.getvalue())
    with open(f"{stem}-xAOD.root", "wb") as f:
        f.write(b"stand-in xAOD: the alignment job drops this file\n")
    log_call(PROGRAM, True, run=run, file=file, year=year, ift_included=not args.noIFT,
             output_level=args.output_level, applied_constants=applied, mean_abs_residual_mm=mean_abs)
    print(json.dumps({"run": run, "file": file, "tracks": int(hits.shape[0]), "planes": len(planes),
                      "mean_abs_residual_mm": mean_abs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
