#!/usr/bin/env python3
"""Stand-in of Calypso's ``WriteAlignmentConfig_Faser04.py``.

Contract checked (issue 12; exit 64 naming the difference):

    python WriteAlignmentConfig_Faser04.py 'AlignDbTool.AlignmentConstants={<inputforalign.txt>}'

* exactly one argument, starting with ``AlignDbTool.AlignmentConstants={`` and ending with
  ``}``; the body parses as ``"<id>": [dx, dy, dz, rx, ry, rz]`` entries (ids of Calypso's
  TrackerAlignDBTool: station / station+layer / station+layer+module);
* ``ATLAS_POOLCOND_PATH`` is ``<cwd>/data`` and the local copy ``data/sqlite200/ALLP200.db``
  exists (the job copies it from /cvmfs before).

Writes the constants into the local conditions db (table ``standin_alignment``, folder
``/Tracker/Align``) and a POOL-file stand-in ``Alignment_Faser04.pool.root`` in the cwd (the
aligndb tail template moves it to ``data/poolcond/``).
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faser_toy as toy  # noqa: E402
from standin_calls import contract_error, log_call  # noqa: E402

PROGRAM = "WriteAlignmentConfig_Faser04.py"
PREFIX = "AlignDbTool.AlignmentConstants={"


def main() -> int:
    if len(sys.argv) != 2:
        contract_error(PROGRAM, f"expected exactly 1 argument 'AlignDbTool.AlignmentConstants={{...}}', "
                                f"got {len(sys.argv) - 1}")
    arg = sys.argv[1]
    if not arg.startswith(PREFIX) or not arg.endswith("}"):
        contract_error(PROGRAM, f"argument {arg[:60]!r}...: expected 'AlignDbTool.AlignmentConstants={{...}}'")
    try:
        constants = toy.parse_constants(arg[len(PREFIX):-1], where="AlignDbTool.AlignmentConstants")
    except toy.ConstantsFormatError as exc:
        contract_error(PROGRAM, str(exc))
    cwd = os.path.realpath(os.getcwd())
    poolcond = os.environ.get("ATLAS_POOLCOND_PATH")
    if not poolcond or os.path.realpath(poolcond) != os.path.join(cwd, "data"):
        contract_error(PROGRAM, f"ATLAS_POOLCOND_PATH={poolcond!r}: expected {cwd}/data")
    db = os.path.join(poolcond, "sqlite200", "ALLP200.db")
    if not os.path.isfile(db):
        contract_error(PROGRAM, f"{db} missing: copy ALLP200.db from /cvmfs/faser.cern.ch/.../sqlite200/ first")
    text = json.dumps(constants, sort_keys=True)
    con = sqlite3.connect(db)
    try:
        con.execute("CREATE TABLE IF NOT EXISTS standin_alignment "
                    "(folder TEXT, tag TEXT, constants_json TEXT, written TEXT)")
        con.execute("INSERT INTO standin_alignment VALUES ('/Tracker/Align', 'TRACKER-ALIGN-STANDIN', ?, ?)",
                    (text, datetime.datetime.now(datetime.timezone.utc).isoformat()))
        con.commit()
    finally:
        con.close()
    with open("Alignment_Faser04.pool.root", "w") as f:
        f.write(text + "\n")
    log_call(PROGRAM, True, constants=constants)
    print(f"{PROGRAM}: wrote {len(constants)} alignment entries to {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
