#!/usr/bin/env python3
"""Write the stand-in conditions db and raw files (called by install.sh).

    python3 make_raw.py --root ROOT [--year 2022] [--run 008023] [--files 0-4] [--tracks 400]

* ``ROOT/cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/ALLP200.db``: an
  sqlite file (the jobs copy it and WriteAlignmentConfig_Faser04.py writes into the copy);
* ``ROOT/eos/experiment/faser/raw/<YEAR>/<RUN>/Faser-Physics-<RUN>-<FILE>.raw`` for each FILE
  of the END-EXCLUSIVE range: npz bytes with the sensor readings of ``tracks`` straight tracks
  through a detector misaligned by the hidden truth (faser_toy.hidden_truth()).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faser_toy as toy  # noqa: E402

DB_REL = "cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/ALLP200.db"


def write_db(root: str) -> str:
    path = os.path.join(root, DB_REL)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp.{os.getpid()}"
    con = sqlite3.connect(tmp)
    try:
        con.execute("CREATE TABLE standin_dbrelease (name TEXT, note TEXT)")
        con.execute("INSERT INTO standin_dbrelease VALUES ('ALLP200', 'batchsite stand-in of the FASER DBRelease')")
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def write_raw(root: str, year: int, run: str, files: list[int], tracks: int) -> list[str]:
    out_dir = os.path.join(root, "eos/experiment/faser/raw", str(year), run)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for f in files:
        path = os.path.join(out_dir, f"Faser-Physics-{run}-{f:05d}.raw")
        tmp = path + f".tmp.{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(toy.make_raw_bytes(year, int(run), f, tracks))
        os.replace(tmp, path)
        written.append(path)
    return written


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--year", type=int, default=2022)
    p.add_argument("--run", default="008023")
    p.add_argument("--files", default="0-4", help="START-END, END exclusive")
    p.add_argument("--tracks", type=int, default=400)
    a = p.parse_args()
    if len(a.run) != 6 or not a.run.isdigit():
        p.error("--run: 6 digits")
    start, _, end = a.files.partition("-")
    files = list(range(int(start), int(end) if end else int(start) + 1))
    print(write_db(a.root))
    for path in write_raw(a.root, a.year, a.run, files, a.tracks):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
