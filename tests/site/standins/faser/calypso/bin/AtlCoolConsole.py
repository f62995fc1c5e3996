#!/usr/bin/env python3
"""Stand-in of ``AtlCoolConsole.py`` (the COOL console the aligndb tail template runs).

Contract checked (exit 64 naming the difference):

    AtlCoolConsole.py 'sqlite://;schema=<db file>;dbname=<DBNAME>'   (commands on stdin)

* exactly one argument of that form; the schema file exists;
* commands: ``ls``, ``more <folder>`` (the folder must hold data), ``exit``; anything else
  is refused.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from standin_calls import contract_error, log_call  # noqa: E402

PROGRAM = "AtlCoolConsole.py"


def main() -> int:
    if len(sys.argv) != 2:
        contract_error(PROGRAM, f"expected 1 argument 'sqlite://;schema=<file>;dbname=<NAME>', got {len(sys.argv) - 1}")
    m = re.fullmatch(r"sqlite://;schema=([^;]+);dbname=([A-Z0-9]+)", sys.argv[1])
    if not m:
        contract_error(PROGRAM, f"connect string {sys.argv[1]!r}: expected 'sqlite://;schema=<file>;dbname=<NAME>'")
    schema = m.group(1)
    if not os.path.isfile(schema):
        contract_error(PROGRAM, f"schema {schema} does not exist")
    con = sqlite3.connect(schema)
    done = []
    try:
        for raw in sys.stdin:
            cmd = raw.strip()
            if not cmd:
                continue
            if cmd == "exit":
                break
            if cmd == "ls":
                rows = con.execute("SELECT DISTINCT folder FROM standin_alignment").fetchall()
                print("\n".join(r[0] for r in rows))
            elif cmd.startswith("more "):
                folder = cmd[5:].strip()
                try:
                    rows = con.execute("SELECT tag, constants_json FROM standin_alignment WHERE folder=? "
                                       "ORDER BY rowid DESC LIMIT 1", (folder,)).fetchall()
                except sqlite3.Error:
                    rows = []
                if not rows:
                    contract_error(PROGRAM, f"folder {folder} holds no data in {schema}")
                print(f"{folder} [{rows[0][0]}]: {rows[0][1]}")
            else:
                contract_error(PROGRAM, f"command {cmd!r}: the stand-in knows ls, more <folder>, exit")
            done.append(cmd)
    finally:
        con.close()
    log_call(PROGRAM, True, commands=done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
