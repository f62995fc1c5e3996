"""What a finished round's review and rescue need from the site, one remote command each.

* ``read_log_tails``: the last lines of the stderr of the failed units (and fan-in), capped
  in bytes; ``failure_tails`` is what the task log of a round that ended with failures
  shows of them (rendered and parsed by pure functions: ``tails_args``, ``parse_tails``,
  ``tails_text``);
* ``read_ran_with``: the wall-time limit (and memory) the units actually ran with, as the
  scheduler reports it (``batchsite.usage``: Slurm ``sacct`` ``TimelimitRaw``/``ReqMem``,
  HTCondor the node jobs' ``MaxRuntime`` (on lxplus derived by the schedd from ``JobFlavour``)
  and ``RequestMemory``). A rescue of units
  killed at their limit must ask for strictly more than that (``rounds.escalate``).

The log file names are the backends' (``--output``/``error`` of ``slurm.py`` and
``htcondor.py``, the runner's in ``localsched.py``): ``log_glob`` knows them.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchsite.backends import common
from batchsite.model import JobState, RoundStatus, Submission
from batchsite.rounds import RanWith, describe_failure
from batchsite.shellscripts import load
from batchsite.site import Site
from batchsite.usage import ran_with, read_usage

#: the remote side (mode ``tails``)
SCRIPT = load("batchsite", "roundinfo.sh")
LOG_DIR = "logs"
#: what the task log of a round that ended with failures shows: the stderr of at most
#: ``FAILED_SHOWN`` failed units (and the fan-in), each its last ``TAIL_LINES`` lines and at
#: most ``TAIL_BYTES`` bytes of them (a unit printing a megabyte line must not flood the log)
FAILED_SHOWN = 5
TAIL_LINES = 20
TAIL_BYTES = 2048
#: a unit whose scheduler state is this never ran (a fan-in cancelled because a unit failed)
CANCELLED = "CANCELLED"


def log_glob(scheduler: str, key: str, name: str) -> str:
    """The stderr file(s) of unit ``name`` (an index, or "fanin") of round ``key``."""
    if scheduler == "slurm":  # logs/%x_%A_%a.err, logs/%x_fanin_%j.err
        return f"{key}_fanin_*.err" if name == common.FANIN else f"{key}_*_{name}.err"
    if scheduler == "htcondor":  # logs/<key>_$(idx)_$(ClusterId).err, logs/<key>_fanin_$(ClusterId).err
        return f"{key}_{name}_*.err"
    return f"{key}_{name}.err"  # local: logs/<key>_<index>.err, logs/<key>_fanin.err


def tails_args(scheduler: str, sub: Submission, names: Sequence[str], lines: int, max_bytes: int) -> list[str]:
    """The arguments of ``roundinfo.sh tails`` reading the stderr tails of ``names`` (unit
    indices, or "fanin") of the round ``sub``: one remote command for all of them."""
    if lines < 1:
        raise ValueError(f"lines={lines}: read at least 1 line of each stderr")
    if max_bytes < 1:
        raise ValueError(f"max_bytes={max_bytes}: show at least 1 byte of each stderr")
    args = ["tails", f"{sub.workdir}/{LOG_DIR}", str(int(lines)), str(int(max_bytes))]
    for name in names:
        args += [name, log_glob(scheduler, sub.key, name)]
    return args


def parse_tails(out: str, names: Sequence[str]) -> dict[str, str]:
    """name -> its tail ('' when it has no stderr file) from the output of ``tails``; a tail
    the script cut to its byte cap starts with a note saying so."""
    sections = common.split_sections(out)
    tails = {}
    for name in names:
        text = sections.get(("tail", name), "")
        size = sections.get(("cut", name), "").strip()
        tails[name] = (f"[these last lines hold {size} bytes: only their end is shown]\n"
                       if size.isdigit() else "") + text
    return tails


def read_log_tails(site: Site, sub: Submission, names: Sequence[str], lines: int = 8,
                   max_bytes: int = TAIL_BYTES) -> dict[str, str]:
    """name -> the last ``lines`` lines of its stderr, at most ``max_bytes`` of them ('' when
    there is none), ONE command."""
    if not names:
        return {}
    r = site.transport.sh(SCRIPT, *tails_args(site.backend.name, sub, names, lines, max_bytes), timeout=120)
    return parse_tails(r.out, names)


def failed_logs(status: RoundStatus, *, shown: int = FAILED_SHOWN, fanin_log: str = common.FANIN) -> dict[str, str]:
    """The stderr files worth showing of a finished round: log name -> what it is ("unit 3:
    FAILED exit 3"). At most ``shown`` failed units, and the fan-in when it ran and failed
    (a fan-in cancelled because a unit failed has nothing to say). ``fanin_log``: the fan-in's
    log name (a fan-in-only rescue runs it as a unit of its own index)."""
    logs = {str(i): f"unit {i}: {describe_failure(status.units[i])}" for i in status.failed_indices[:shown]}
    fanin = status.fanin
    if fanin is not None and fanin.state is JobState.FAILED and fanin.native != CANCELLED:
        logs[fanin_log] = f"fan-in: {describe_failure(fanin)}"
    return logs


def tails_text(label: str, logs: dict[str, str], tails: dict[str, str], *, units_shown: int, failed: int) -> str:
    """The task log's block: a header saying how many of the ``failed`` units are shown,
    then each log's title (``failed_logs``) and its stderr tail, indented."""
    lines = [f"{label}: stderr of {units_shown} of {failed} failed unit(s)"
             + (" and of the fan-in" if len(logs) > units_shown else "") + ", last lines:"]
    for name, title in logs.items():
        tail = tails.get(name, "").rstrip("\n")
        lines.append(f"--- {title}")
        lines += [f"    {line}" for line in tail.splitlines()] if tail else ["    (no stderr)"]
    return "\n".join(lines)


def failure_tails(site: Site, sub: Submission, status: RoundStatus, label: str, *, fanin_log: str = common.FANIN,
                  shown: int = FAILED_SHOWN, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """The stderr tails of a finished round's failed units (``failed_logs``), read in ONE
    remote command, as ``tails_text``; '' when nothing failed."""
    logs = failed_logs(status, shown=shown, fanin_log=fanin_log)
    if not logs:
        return ""
    tails = read_log_tails(site, sub, list(logs), lines=lines, max_bytes=max_bytes)
    failed = len(status.failed_indices)
    return tails_text(label, logs, tails, units_shown=min(failed, shown), failed=failed)


# ---------------------------------------------------------------------------- limits

def read_ran_with(site: Site, sub: Submission) -> RanWith:
    """The limits the round's jobs ran with, from the scheduler's usage records (the same ONE
    command as the measured usage, ``batchsite.usage``); empty when the scheduler cannot say
    (local: the spec's own limit is exact)."""
    return ran_with(read_usage(site, sub))
