"""What a finished unit really used, as the scheduler measured it (issue 15, adaptive right-sizing).

Leaf module (pydantic only): the backends' parsers build these, ``batchsite.usage`` reads them
from the site in ONE command per round, ``batchsite.sizing`` turns them into the next round's
requests, the ledger stores them (``ledger.model.UnitUsage``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: the native word of a unit killed for its memory use (Slurm's own state word; HTCondor nodes
#: removed/held for memory are given the same word by ``htcondor_parse``)
OUT_OF_MEMORY = "OUT_OF_MEMORY"
#: a unit killed by SIGKILL whose measured peak reached this share of its request was killed for
#: its memory (Slurm's ``JobAcctGatherParams=OverMemoryKill`` reports FAILED 0:9, not OUT_OF_MEMORY)
OOM_PEAK_SHARE = 0.95


class UnitMeasure(BaseModel):
    """One job of a round (a unit or the fan-in) as the scheduler's accounting saw it; None
    where it said nothing (e.g. Slurm with ``JobAcctGatherType=jobacct_gather/none``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: str = ""
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    max_rss_mb: float | None = None
    #: what the job ran with (the scheduler's word, not the spec's)
    req_mem_mb: int | None = None
    time_limit_seconds: float | None = None
    cpus: int | None = None
    host: str | None = None
    out_of_memory: bool = False
    #: which command measured it: sacct, condor_history, rusage
    source: str


class RoundUsage(BaseModel):
    """Every measured job of one submission: units by index, and the fan-in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    units: dict[int, UnitMeasure] = {}
    fanin: UnitMeasure | None = None
    #: why nothing (or less than everything) was measured; "" when the command worked
    note: str = ""


def killed_for_memory(sigkill: bool, max_rss_mb: float | None, req_mem_mb: int | None) -> bool:
    """A SIGKILLed job whose peak reached its memory request: killed for its memory."""
    return bool(sigkill and max_rss_mb and req_mem_mb and max_rss_mb >= OOM_PEAK_SHARE * req_mem_mb)
