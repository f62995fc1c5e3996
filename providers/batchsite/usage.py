"""Measured usage of a finished round, read from the site in ONE command (issue 15).

The backend renders the command (Slurm ``sacct`` with steps, HTCondor ``condor_history`` of
the DAG's node jobs) and parses its output into ``measure.RoundUsage``; this module runs it,
gives the ledger its unit rows' usage columns, and the rescue the limits the jobs really ran
with (``rounds.RanWith``: the largest wall-time limit and memory request of the units and
of the fan-in), so one command serves the sizing, the ledger and the escalation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from batchsite.ledger.model import UnitUsage
from batchsite.measure import OUT_OF_MEMORY, RoundUsage, UnitMeasure
from batchsite.model import JobState, RoundStatus, Submission, TaskStatus
from batchsite.rounds import RanWith
from batchsite.site import Site

USAGE_TIMEOUT = 120
SETTLE_STEP = 1.0
#: native words of units that ended without running (nothing to measure)
NEVER_RAN = frozenset({"CANCELLED", "STATUS_FUTILE", "DONE", "RUNNER-LOST"})


def read_usage(site: Site, sub: Submission, expect: Collection[int] = (), *, settle_seconds: float = 8.0,
               sleep: Callable[[float], None] = time.sleep) -> RoundUsage:
    """The measured usage of every job of the round of ``sub`` (one remote command); a site
    that cannot measure, or a command that failed, gives an empty ``RoundUsage`` whose note
    says why. ``expect``: units known to have run; while one of them is not in the answer yet
    the command is asked again, for at most ``settle_seconds`` (slurmctld hands a finished
    job to slurmdbd a few seconds after squeue shows it ended: measured on the test site)."""
    argv = site.backend.usage_command(sub)
    if argv is None:
        return RoundUsage(note=f"{site.backend.name}: this site reports no usage")
    waited = 0.0
    while True:
        try:
            r = site.transport.run(argv, timeout=USAGE_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a measurement, never the round's failure
            return RoundUsage(note=f"the usage command failed: {type(e).__name__}: {e}")
        if r.returncode != 0:
            return RoundUsage(note=f"{argv[0]} exited {r.returncode}: {(r.err or r.out).strip()[:300]}")
        usage = site.backend.parse_usage(r.out, sub)
        if set(expect) <= set(usage.units) or waited >= settle_seconds:
            return usage
        sleep(SETTLE_STEP)
        waited += SETTLE_STEP


def ran_units(status: RoundStatus) -> list[int]:
    """The units of an observation that ran to an end (what the usage command must report)."""
    return [i for i, st in status.units.items() if st.state in (JobState.DONE, JobState.FAILED) and st.native
            not in NEVER_RAN]


def mark_out_of_memory(status: RoundStatus, usage: RoundUsage) -> RoundStatus:
    """``status`` with the failed units the usage shows killed for their memory marked so
    (native ``OUT_OF_MEMORY``: the rescue asks for more memory, ``rounds.out_of_memory``). A
    Slurm with ``OverMemoryKill`` reports them FAILED 0:9, not OUT_OF_MEMORY."""
    def marked(st: TaskStatus, m: UnitMeasure | None) -> TaskStatus:
        if m is None or not m.out_of_memory or st.state is not JobState.FAILED or st.native == OUT_OF_MEMORY:
            return st
        return st.model_copy(update={"native": OUT_OF_MEMORY, "reason": (
            f"killed for its memory: peak RSS {m.max_rss_mb:.0f} MB, request {m.req_mem_mb} MB"
            if m.max_rss_mb and m.req_mem_mb else st.reason or "killed for its memory")})

    units = {i: marked(st, usage.units.get(i)) for i, st in status.units.items()}
    fanin = marked(status.fanin, usage.fanin) if status.fanin is not None else None
    return status.model_copy(update={"units": units, "fanin": fanin})


def ledger_usage(usage: RoundUsage) -> dict[int, UnitUsage]:
    """The ledger's unit usage columns, per unit index."""
    return {i: UnitUsage(wall_seconds=m.wall_seconds, cpu_seconds=m.cpu_seconds, max_rss_mb=m.max_rss_mb,
                         usage_source=m.source) for i, m in usage.units.items()}


def _largest(values: list[float | int | None]) -> float | None:
    return max((v for v in values if v), default=None)


def ran_with(usage: RoundUsage) -> RanWith:
    """The limits the round's jobs ran with, as the scheduler reports them (None where not)."""
    units: list[UnitMeasure] = list(usage.units.values())
    mem = _largest([m.req_mem_mb for m in units])
    fanin = usage.fanin
    return RanWith(unit_seconds=_largest([m.time_limit_seconds for m in units]),
                   unit_mem_mb=int(mem) if mem else None,
                   fanin_seconds=fanin.time_limit_seconds if fanin else None,
                   fanin_mem_mb=fanin.req_mem_mb if fanin else None)


def summary_line(usage: RoundUsage) -> str:
    """Measured usage in one line for the task log."""
    units = list(usage.units.values())
    if not units:
        return f"measured usage: none ({usage.note or 'nothing reported'})"
    rss = [m.max_rss_mb for m in units if m.max_rss_mb]
    wall = [m.wall_seconds for m in units if m.wall_seconds]
    oom = sum(m.out_of_memory for m in units)
    parts = [f"{len(units)} units measured ({units[0].source})"]
    if rss:
        parts.append(f"peak RSS {min(rss):.0f}-{max(rss):.0f} MB")
    if wall:
        parts.append(f"wall {min(wall):.0f}-{max(wall):.0f} s")
    if oom:
        parts.append(f"{oom} killed for memory")
    return "measured usage: " + ", ".join(parts)
