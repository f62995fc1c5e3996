"""What a finished round's review and rescue need from the site, one remote command each.

* ``read_log_tails``: the last lines of the stderr of the failed units (and fan-in);
* ``read_ran_with``: the wall-time limit (and memory) the units actually ran with, as the
  scheduler reports it: Slurm ``sacct`` ``Timelimit``/``ReqMem``, HTCondor the node jobs' ads
  ``MaxRuntime`` (on lxplus derived by the schedd from ``JobFlavour``). A rescue of units
  killed at their limit must ask for strictly more than that (``rounds.escalate``).

The log file names are the backends' (``--output``/``error`` of ``slurm.py`` and
``htcondor.py``, the runner's in ``localsched.py``): ``log_glob`` knows them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from batchsite.backends import common
from batchsite.model import Submission
from batchsite.rounds import RanWith
from batchsite.shellscripts import load
from batchsite.site import Site

#: the remote side (modes ``tails`` and ``condor-limits``)
SCRIPT = load("batchsite", "roundinfo.sh")
LOG_DIR = "logs"


def log_glob(scheduler: str, key: str, name: str) -> str:
    """The stderr file(s) of unit ``name`` (an index, or "fanin") of round ``key``."""
    if scheduler == "slurm":  # logs/%x_%A_%a.err, logs/%x_fanin_%j.err
        return f"{key}_fanin_*.err" if name == common.FANIN else f"{key}_*_{name}.err"
    if scheduler == "htcondor":  # logs/<key>_$(idx)_$(ClusterId).err, logs/<key>_fanin_$(ClusterId).err
        return f"{key}_{name}_*.err"
    return f"{key}_{name}.err"  # local: logs/<key>_<index>.err, logs/<key>_fanin.err


def read_log_tails(site: Site, sub: Submission, names: Sequence[str], lines: int = 8) -> dict[str, str]:
    """name -> the last ``lines`` lines of its stderr ('' when there is none), ONE command."""
    if not names:
        return {}
    args: list[str] = []
    for name in names:
        args += [name, log_glob(site.backend.name, sub.key, name)]
    r = site.transport.sh(SCRIPT, "tails", f"{sub.workdir}/{LOG_DIR}", str(int(lines)), *args, timeout=120)
    sections = common.split_sections(r.out)
    return {name: sections.get(("tail", name), "") for name in names}


# ---------------------------------------------------------------------------- limits

def parse_slurm_timelimit(text: str) -> float | None:
    """sacct ``Timelimit`` -> seconds: ``[days-]hh:mm:ss``, ``mm:ss``, ``mm``; None for
    ``UNLIMITED``, ``Partition_Limit`` and anything else."""
    t = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        return None
    days = int(m.group(1) or 0)
    parts = [int(x) for x in m.group(2, 3, 4) if x is not None]
    if m.group(1) is not None:  # d-h[:m[:s]]
        h, mi, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, mi, s = parts
    elif len(parts) == 2:
        h, mi, s = 0, parts[0], parts[1]
    else:
        h, mi, s = 0, parts[0], 0
    return float(((days * 24 + h) * 60 + mi) * 60 + s)


def parse_slurm_reqmem(text: str) -> int | None:
    """sacct ``ReqMem`` (``100M``, ``4G``, ``2000Mc``, ``1000Mn``) -> MB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])[cn]?", text.strip())
    if not m:
        return None
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(float(m.group(1)) * scale)


def parse_slurm_limits(text: str, sub: Submission) -> RanWith:
    """``sacct -n -P -X -j <array>,<fan-in> -o JobID,Timelimit,ReqMem``: the largest limit
    among the array's tasks and the fan-in's."""
    unit_s: list[float] = []
    unit_mb: list[int] = []
    fanin_s = fanin_mb = None
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        job = parts[0].split("_")[0]
        secs, mb = parse_slurm_timelimit(parts[1]), parse_slurm_reqmem(parts[2])
        if job == sub.fanout_id:
            unit_s += [secs] if secs else []
            unit_mb += [mb] if mb else []
        elif sub.fanin_id and job == sub.fanin_id:
            fanin_s, fanin_mb = secs, mb
    return RanWith(unit_seconds=max(unit_s, default=None), unit_mem_mb=max(unit_mb, default=None),
                   fanin_seconds=fanin_s, fanin_mem_mb=fanin_mb)


def parse_condor_limits(text: str) -> RanWith:
    """``condor_history/condor_q -af DAGNodeName MaxRuntime RequestMemory`` of the DAG's node
    jobs: the largest MaxRuntime of the unit nodes, the fan-in node's."""
    unit_s: list[float] = []
    unit_mb: list[int] = []
    fanin_s = fanin_mb = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        node, runtime, mem = parts[0], parts[1], parts[2]
        secs = float(runtime) if re.fullmatch(r"\d+(\.\d+)?", runtime) else None
        mb = int(mem) if mem.isdigit() else None
        if node == common.FANIN:
            fanin_s, fanin_mb = secs, mb
        else:
            unit_s += [secs] if secs else []
            unit_mb += [mb] if mb else []
    return RanWith(unit_seconds=max(unit_s, default=None), unit_mem_mb=max(unit_mb, default=None),
                   fanin_seconds=fanin_s, fanin_mem_mb=fanin_mb)


def read_ran_with(site: Site, sub: Submission) -> RanWith:
    """The limits the round's jobs ran with, from the scheduler (one command); empty when
    the scheduler cannot say (local: the spec's own limit is exact)."""
    scheduler = site.backend.name
    if scheduler == "slurm":
        ids = ",".join(i for i in (sub.fanout_id, sub.fanin_id) if i)
        r = site.transport.run(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,Timelimit,ReqMem"], timeout=120)
        return parse_slurm_limits(r.out, sub) if r.returncode == 0 else RanWith()
    if scheduler == "htcondor":
        where = ["-name", sub.schedd] if sub.schedd else []
        constraint = f"DAGManJobId == {int(sub.fanout_id)}"
        fields = ["-af", "DAGNodeName", "MaxRuntime", "RequestMemory"]
        r = site.transport.sh(SCRIPT, "condor-limits", *where, "-constraint", constraint, *fields, timeout=120)
        return parse_condor_limits(r.out)
    return RanWith()


