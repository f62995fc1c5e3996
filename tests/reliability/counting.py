"""Counting a round's jobs on the scheduler at the end of a fault test, for the ledger's
"Jobs lost" and "Double submissions" cells.

*Lost*: units (and the fan-in) the campaign expected to end one way that ended another, or
left no trace at all: COMPLETED (Slurm, sacct) / a node job that completed with exit code 0
(HTCondor, condor_q + condor_history) for a round that should finish; for a round the test
cancels on purpose, any end other than cancelled/removed or completed. *Double submissions*:
scheduler jobs of the round beyond the ones it submits once (array + fan-in on Slurm, one
DAGMan job on HTCondor).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ..airflow_runs import dagman_jobs, slurm_jobs_named, slurm_states
from ..conftest import on_site

SLURM_DONE = frozenset({"COMPLETED"})
SLURM_STOPPED = frozenset({"COMPLETED", "CANCELLED"})
#: HTCondor JobStatus: 3 removed, 4 completed
CONDOR_REMOVED, CONDOR_COMPLETED = 3, 4


@dataclass(frozen=True)
class RoundCount:
    lost: int
    double: int
    states: dict[str, str]  # what was counted, for assertion messages


def _array_size(job_id: str) -> int:
    """Units one sacct line stands for: ``12_3`` is one, a pending range ``12_[2-5%2]`` four."""
    m = re.search(r"_\[(.*?)(?:%\d+)?\]$", job_id)
    if not m:
        return 1
    n = 0
    for part in m.group(1).split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def slurm_round(info: dict, key: str, units: int, *, fanin: bool = True,
                expected: frozenset[str] = SLURM_DONE) -> RoundCount:
    """A Slurm round (one array of ``units`` + an afterok fan-in job) counted in sacct."""
    # a round that ran to its end has every unit (and the fan-in) in sacct; after a cancel,
    # jobs that never started may never appear there
    cancelled = "CANCELLED" in expected
    states = slurm_states(info, key, timeout=20 if cancelled else 60,
                          min_entries=1 if cancelled else units + int(fanin))
    if cancelled:
        # a cancel was the intent: a job lost is one that ended otherwise (FAILED, TIMEOUT, ...).
        # Jobs cancelled before they ever started may never reach sacct (slurmdbd records no
        # start), so an absent job is not a lost one here
        lost = sum(_array_size(j) if "_" in j else 1 for j, s in states.items() if s.split()[0] not in expected)
    else:
        array_ok = sum(_array_size(j) for j, s in states.items() if "_" in j and s.split()[0] in expected)
        fanin_ok = sum(1 for j, s in states.items() if "_" not in j and s.split()[0] in expected)
        lost = max(0, units - array_ok) + (max(0, 1 - fanin_ok) if fanin else 0)
    double = len(slurm_jobs_named(info, key)) - (2 if fanin else 1)
    return RoundCount(lost, double, states)


def condor_node_jobs(info: dict, key: str) -> list[tuple[str, int, str]]:
    """``(DAGNodeName, JobStatus, ExitCode)`` of every node job of round ``key``, queued or in
    the history."""
    c = shlex.quote(f'JobBatchName == "{key}" && JobUniverse == 5')
    r = on_site(info, f"condor_q -constraint {c} -af DAGNodeName JobStatus ExitCode; "
                      f"condor_history -constraint {c} -af DAGNodeName JobStatus ExitCode")
    assert r.returncode == 0, r.stderr
    return [(f[0], int(f[1]), f[2]) for f in (line.split() for line in r.stdout.splitlines()) if len(f) == 3]


def condor_round(info: dict, key: str, nodes: int, *, cancelled: bool = False) -> RoundCount:
    """An HTCondor round (``nodes`` node jobs, fan-in included, under ONE DAGMan job)."""
    jobs = condor_node_jobs(info, key)
    ok = {name for name, status, code in jobs if status == CONDOR_COMPLETED and code == "0"}
    if cancelled:
        # every node job that exists ended removed or completed; none left in another state
        lost = sum(1 for _, status, _ in jobs if status not in (CONDOR_REMOVED, CONDOR_COMPLETED))
    else:
        lost = max(0, nodes - len(ok))
    return RoundCount(lost, len(dagman_jobs(info, key)) - 1,
                      {f"{name}#{i}": f"{status}/{code}" for i, (name, status, code) in enumerate(jobs)})


def round_count(info: dict, scheduler: str, key: str, units: int, *, cancelled: bool = False) -> RoundCount:
    """The round with ``units`` units and one fan-in on either scheduler."""
    if scheduler == "slurm":
        return slurm_round(info, key, units, expected=SLURM_STOPPED if cancelled else SLURM_DONE)
    return condor_round(info, key, units + 1, cancelled=cancelled)
