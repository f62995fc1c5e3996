"""The next round's requests from what the units of this one really used (WMS2's adaptive
rounds, seed 002): no Airflow, no I/O.

* memory: the ``percentile`` (default p95) of the measured peak RSS x ``mem_margin`` (1.2),
  kept inside ``[min_mem_mb, max_mem_mb]``;
* wall time: the ``percentile`` of the measured wall time x ``wall_margin``, in whole minutes;
  HTCondor: the first JobFlavour whose limit covers it;
* cpus: the CPU efficiency (CPU seconds / (wall seconds x cpus)) at the percentile, times the
  margin, rounded up, never more than the round had.

``blocked_hosts``: the hosts a rescue excludes, where units failed repeatedly.

Units killed for their memory are not sized from (their peak is where they were stopped): the
rescue escalates them (``rounds.rescue_plan``). Every decision carries its inputs
(``SizingDecision.inputs``), printed in the round's summary and recorded in the ledger.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from batchsite.measure import RoundUsage, UnitMeasure
from batchsite.model import JobState, Resources, RoundStatus
from batchsite.rounds import FLAVOUR_MINUTES, FLAVOURS, MAX_TIME_MINUTES, MEM_CAP_MB, ResourceRequest, needs_more


class SizingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    percentile: float = Field(default=95.0, gt=0, le=100)
    mem_margin: float = Field(default=1.2, ge=1.0, le=10)
    min_mem_mb: int = Field(default=128, gt=0)
    max_mem_mb: int = Field(default=MEM_CAP_MB, gt=0)
    wall_margin: float = Field(default=1.5, ge=1.0, le=10)
    cpu_margin: float = Field(default=1.2, ge=1.0, le=10)


class SizingInputs(BaseModel):
    """What a sizing decision was made from (each figure measured in the round)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measured_units: int
    percentile: float
    peak_rss_mb: float | None = None  # the percentile of the units' peak RSS
    wall_seconds: float | None = None  # the percentile of their wall time
    cpu_efficiency: float | None = None  # the percentile of CPU s / (wall s x cpus)
    requested_mem_mb: int | None = None
    requested_time_minutes: int | None = None
    requested_flavour: str | None = None
    requested_cpus: int


class SizingDecision(BaseModel):
    """The next round's requests (None: leave it as asked) and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: SizingInputs
    mem_mb: int | None = None
    time_minutes: int | None = None
    job_flavour: str | None = None
    cpus: int | None = None
    notes: list[str] = []

    def request(self) -> ResourceRequest:
        """As the next round's ``RoundRequest.resources`` (fields left None keep the request's)."""
        return ResourceRequest(mem_mb=self.mem_mb, time_minutes=self.time_minutes, job_flavour=self.job_flavour,
                               cpus=self.cpus)

    def message(self) -> str:
        return "right-sizing: " + ("; ".join(self.notes) or "nothing measured, requests unchanged")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (a value that was measured, never an interpolation)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def flavour_for(minutes: float) -> str | None:
    """The first JobFlavour whose limit covers ``minutes``; None: longer than any."""
    return next((f for f in FLAVOURS if FLAVOUR_MINUTES[f] >= minutes), None)


def right_size(usage: RoundUsage, ran: Resources, scheduler: str, policy: SizingPolicy = SizingPolicy()
               ) -> SizingDecision:
    """The next round's requests from ``usage`` of a round that ran with ``ran``."""
    sized: list[UnitMeasure] = [m for m in usage.units.values() if not m.out_of_memory]
    pct = policy.percentile
    rss = [m.max_rss_mb for m in sized if m.max_rss_mb]
    wall = [m.wall_seconds for m in sized if m.wall_seconds]
    eff = [m.cpu_seconds / (m.wall_seconds * (m.cpus or ran.cpus)) for m in sized
           if m.cpu_seconds is not None and m.wall_seconds]
    inputs = SizingInputs(
        measured_units=len(sized), percentile=pct, peak_rss_mb=percentile(rss, pct) if rss else None,
        wall_seconds=percentile(wall, pct) if wall else None, cpu_efficiency=percentile(eff, pct) if eff else None,
        requested_mem_mb=ran.mem_mb, requested_time_minutes=ran.time_minutes, requested_flavour=ran.job_flavour,
        requested_cpus=ran.cpus)
    out: dict = {}
    notes: list[str] = []
    if inputs.peak_rss_mb is not None:
        mem = math.ceil(inputs.peak_rss_mb * policy.mem_margin)
        out["mem_mb"] = min(max(mem, policy.min_mem_mb), policy.max_mem_mb)
        clamp = "" if out["mem_mb"] == mem else f", clamped into [{policy.min_mem_mb}, {policy.max_mem_mb}]"
        notes.append(f"memory {ran.mem_mb or 'default'} -> {out['mem_mb']} MB (p{pct:g} peak RSS "
                     f"{inputs.peak_rss_mb:.1f} MB x {policy.mem_margin:g}{clamp}, {len(rss)} units)")
    if inputs.wall_seconds is not None:
        minutes = max(1, min(math.ceil(inputs.wall_seconds * policy.wall_margin / 60), MAX_TIME_MINUTES))
        why = f"p{pct:g} wall {inputs.wall_seconds:.0f} s x {policy.wall_margin:g}"
        if scheduler == "htcondor":
            flavour = flavour_for(minutes)
            if flavour is not None:
                out["job_flavour"] = flavour
                # an explicit +MaxRuntime wins over the flavour: keep the two in step
                out["time_minutes"] = FLAVOUR_MINUTES[flavour] if ran.time_minutes else None
                was = ran.job_flavour or "espresso"
                notes.append(f"JobFlavour {was} {'kept' if flavour == was else '-> ' + flavour} "
                             f"({why} = {minutes} min)")
        else:
            out["time_minutes"] = minutes
            notes.append(f"time {ran.time_minutes or 'default'} -> {minutes} min ({why})")
    if inputs.cpu_efficiency is not None:
        cpus = max(1, min(ran.cpus, math.ceil(inputs.cpu_efficiency * ran.cpus * policy.cpu_margin)))
        out["cpus"] = cpus
        change = "kept" if cpus == ran.cpus else f"-> {cpus}"
        notes.append(f"cpus {ran.cpus} {change} (p{pct:g} CPU efficiency {inputs.cpu_efficiency:.2f})")
    return SizingDecision(inputs=inputs, notes=notes, **out)


# ---------------------------------------------------------------------------- host blocklist

#: a host is blocked when at least this many units failed there ...
BLOCK_MIN_FAILURES = 2
#: ... and at least this share of the units that ran there failed
BLOCK_MIN_SHARE = 0.5


def blocked_hosts(usage: RoundUsage, status: RoundStatus, *, min_failures: int = BLOCK_MIN_FAILURES,
                  min_share: float = BLOCK_MIN_SHARE) -> list[str]:
    """Hosts where units failed repeatedly (PocketCoffea's site blocklist): at least
    ``min_failures`` failed units and ``min_share`` of the units that ran there, while units
    succeeded on some other host. Units killed at their time or memory limit do not count
    (they get more, not another host). Never every host the round ran on: with nowhere else
    known to go, a blocklist would only stop the rescue from starting."""
    ran: dict[str, list[bool]] = {}
    for i, m in usage.units.items():
        st = status.units.get(i)
        if m.host and st is not None and st.state.terminal and not needs_more(st):
            ran.setdefault(m.host, []).append(st.state is JobState.FAILED)
    bad = sorted(h for h, failed in ran.items()
                 if sum(failed) >= min_failures and sum(failed) / len(failed) >= min_share)
    healthy = any(not all(failed) for h, failed in ran.items() if h not in bad)
    return bad if healthy else []


#: what a site lets the round loop carry from one campaign round to the next (``SiteConfig.right_size``)
SIZING_SCOPES = ("off", "memory", "all")


def most_demanding(decisions: list[SizingDecision | None]) -> SizingDecision | None:
    """One request for a campaign's next round from the decisions of this round's partitions
    (e.g. the EXP shifts): the largest of each measured figure, so no partition is starved.
    None when nothing was measured."""
    made = [d for d in decisions if d is not None]
    if not made:
        return None

    def largest(field: str) -> int | None:
        values = [getattr(d, field) for d in made if getattr(d, field) is not None]
        return max(values) if values else None

    flavours = [d.job_flavour for d in made if d.job_flavour is not None]
    flavour = max(flavours, key=lambda f: FLAVOUR_MINUTES[f]) if flavours else None
    first = max(made, key=lambda d: d.mem_mb or 0)  # whose inputs the combined decision shows
    notes = first.notes if len(made) == 1 else [f"the largest of {len(made)} partitions' decisions", *first.notes]
    return SizingDecision(inputs=first.inputs, mem_mb=largest("mem_mb"), time_minutes=largest("time_minutes"),
                          job_flavour=flavour, cpus=largest("cpus"), notes=notes)


def fill_unset(asked: ResourceRequest | None, decision: SizingDecision, scope: str) -> ResourceRequest:
    """A campaign round's unit resources with the previous round's measured sizing in the
    fields the campaign left unset: an explicit request (a ``mem_mb`` Param, the group's own
    ``--mem``) always wins. ``scope`` ``memory``: memory only; ``all``: also wall time, the
    JobFlavour and cpus."""
    if scope not in SIZING_SCOPES:
        raise ValueError(f"right_size={scope!r}: one of {', '.join(SIZING_SCOPES)}")
    asked = asked or ResourceRequest()
    if scope == "off":
        return asked
    measured = {"mem_mb": decision.mem_mb}
    if scope == "all":
        measured.update(time_minutes=decision.time_minutes, job_flavour=decision.job_flavour, cpus=decision.cpus)
    fill = {k: v for k, v in measured.items() if v is not None and getattr(asked, k) is None}
    return asked.model_copy(update=fill)
