"""Call log and loud failure shared by every Python stand-in (FASER and RG).

Every stand-in program appends ONE JSON line per call to a calls log:

* ``$BATCHSITE_STANDIN_CALLS`` if set (the stand-in job scripts set it to a ``calls.log``
  in their job's output directory), else
* ``~/.batchsite-standins/calls.log``.

A line holds ``program``, ``argv``, ``cwd``, ``time``, ``ok`` and whatever the program adds
(e.g. the constants reconstruction applied). The line is written with a single ``write`` on
a file opened with ``O_APPEND``, so concurrent jobs do not interleave lines.

A contract violation ends the program through :func:`contract_error`: the message names the
argument or variable and what was expected, is printed on stderr prefixed with
``STANDIN CONTRACT VIOLATION``, is logged (``ok: false``) and the exit code is 64.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, NoReturn

CONTRACT_EXIT = 64


def calls_log_path() -> str:
    explicit = os.environ.get("BATCHSITE_STANDIN_CALLS")
    if explicit:
        return explicit
    return os.path.join(os.path.expanduser("~"), ".batchsite-standins", "calls.log")


def log_call(program: str, ok: bool, **extra: Any) -> None:
    record: dict[str, Any] = {
        "program": program,
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "ok": ok,
    }
    record.update(extra)
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    path = calls_log_path()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def contract_error(program: str, message: str) -> NoReturn:
    print(f"STANDIN CONTRACT VIOLATION in {program}: {message}", file=sys.stderr)
    try:
        log_call(program, False, error=message)
    except OSError as exc:  # the message above is what counts
        print(f"{program}: could not write the calls log: {exc}", file=sys.stderr)
    sys.exit(CONTRACT_EXIT)


def standin_prefix() -> str:
    """Root under which the stand-in /cvmfs and /eos trees live ('' means '/')."""
    return os.environ.get("BATCHSITE_STANDIN_PREFIX", "/").rstrip("/")


def under_prefix(absolute_path: str) -> str:
    """``/eos/...`` -> ``<prefix>/eos/...`` (unchanged when the prefix is '/')."""
    if not absolute_path.startswith("/"):
        raise ValueError(f"{absolute_path!r} is not absolute")
    return standin_prefix() + absolute_path
