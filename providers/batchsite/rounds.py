"""Round-level decisions shared by operators and the CLI (no Airflow, no I/O).

* ``RoundRequest``: what a round should run, as a campaign or a DAG author asks for it (the
  typed seam between campaigns and ``BatchRoundOperator``, one documented precedence);
  ``spec_from_request`` turns it + the site's defaults into a ``RoundSpec``;
* ``classify_failures``: WMS2's error handler (seed 002), applied to the units that failed
  for a reason of their own: failure ratio below ``auto_below`` -> rescue automatically;
  below ``review_below`` -> review (a person chooses: the campaign round loop's review task);
  otherwise abort. Units killed at their time limit or for lack of memory do not count
  there: whatever their number, their rescue asks for more (``escalate``, ``grow_memory``).
  A failed fan-in whose units all succeeded is a rescue of the fan-in alone.
  ``max_rescues`` bounds the loop;
* ``rescue_plan``: what the rescue round runs: only the failed units (DAGMan's rescue DAG
  does that itself, other backends get a narrowed spec; the fan-in alone when only it
  failed), with strictly more wall time than the limit the units were killed at (read from
  the scheduler) and twice the memory for units killed out of memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchsite.backends.slurm import compact_indices
from batchsite.backends.slurm_parse import expand_indices
from batchsite.config import SiteConfig
from batchsite.measure import OUT_OF_MEMORY
from batchsite.model import (
    JobState, Resources, RoundDigest, RoundLabel, RoundSpec, RoundStatus, Submission, TaskStatus, UnitTemplate, WorkUnit,
    expand_ranges,
)

#: lxplus +JobFlavour ladder (max wall time 20 min, 1 h, 2 h, 8 h, 1 d, 3 d, 1 w)
FLAVOURS = ("espresso", "microcentury", "longlunch", "workday", "tomorrow", "testmatch", "nextweek")
FLAVOUR_MINUTES = dict(zip(FLAVOURS, (20, 60, 120, 480, 1440, 4320, 10080)))
#: the longest wall time a rescue asks for (``Resources.time_minutes``' bound: 14 days)
MAX_TIME_MINUTES = 60 * 24 * 14
#: memory growth stops here (64 GiB: beyond it a unit needs another design, not a rescue)
MEM_CAP_MB = 64 * 1024
#: what a unit is assumed to have had when neither the round nor the scheduler says (Slurm's
#: and HTCondor's usual per-core default is 2 GB)
ASSUMED_MEM_MB = 2048


def next_flavour(flavour: str | None) -> str | None:
    """One step up the ladder; None when already at the top (nothing left to escalate)."""
    current = flavour or "espresso"  # lxplus default when none is given
    i = FLAVOURS.index(current) if current in FLAVOURS else 0
    return FLAVOURS[i + 1] if i + 1 < len(FLAVOURS) else None


def effective_minutes(res: Resources, scheduler: str) -> float | None:
    """The wall-time limit ``res`` gives when the scheduler says nothing else: an explicit
    time wins (HTCondor: ``+MaxRuntime`` over the flavour); HTCondor without one: the
    flavour's (espresso when none); Slurm/local without one: unknown (partition default /
    no limit)."""
    if res.time_minutes:
        return float(res.time_minutes)
    if scheduler == "htcondor":
        return float(FLAVOUR_MINUTES.get(res.job_flavour or "espresso", FLAVOUR_MINUTES["espresso"]))
    return None


def escalate(res: Resources, scheduler: str, ran_seconds: float | None = None) -> Resources | None:
    """Resources whose wall-time limit is strictly longer than the one a unit was killed at,
    or None when no longer one can be given (top of the ladder, 14 days, limit unknown).

    ``ran_seconds``: the limit the unit actually ran with, as the scheduler reports it (sacct
    ``Timelimit``; the job ad's ``MaxRuntime``, which on lxplus the schedd derives from the
    flavour); None: taken from ``res`` (``effective_minutes``).

    HTCondor: the first flavour above the current one whose limit exceeds what the unit ran
    with; an explicit ``time_minutes`` (rendered as ``+MaxRuntime``, which wins over the
    flavour) becomes exactly that flavour's limit, so the two never contradict each other.
    Slurm and local: twice the limit.
    """
    ran = ran_seconds / 60.0 if ran_seconds else effective_minutes(res, scheduler)
    if ran is None:
        return None
    if scheduler == "htcondor":
        current = FLAVOURS.index(res.job_flavour) if res.job_flavour in FLAVOURS else 0
        for flavour in FLAVOURS[current + 1:]:
            if FLAVOUR_MINUTES[flavour] > ran:
                return res.model_copy(update={
                    "job_flavour": flavour, "time_minutes": FLAVOUR_MINUTES[flavour] if res.time_minutes else None})
        return None
    if ran >= MAX_TIME_MINUTES:
        return None
    return res.model_copy(update={"time_minutes": min(max(math.ceil(2 * ran), math.floor(ran) + 1),
                                                      MAX_TIME_MINUTES)})


def grow_memory(mem_mb: int | None, *, factor: float = 2.0, cap_mb: int = MEM_CAP_MB,
                assumed_mb: int = ASSUMED_MEM_MB) -> int | None:
    """The memory to ask for after a unit ran out of ``mem_mb`` (None: not known, taken as
    ``assumed_mb``): ``factor`` times more, at most ``cap_mb``; None when already at the cap.
    Kept small and pure: adaptive right-sizing can call it with a measured peak instead."""
    base = mem_mb or assumed_mb
    if base >= cap_mb:
        return None
    return min(max(int(math.ceil(base * factor)), base + 1), cap_mb)


def out_of_memory(st: TaskStatus) -> bool:
    return st.native == OUT_OF_MEMORY


def needs_more(st: TaskStatus) -> bool:
    """Failed for lack of a resource (time, memory): rerun with more, not judged by ratio."""
    return st.state is JobState.FAILED and (st.timed_out or out_of_memory(st))


class RescuePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_below: float = Field(default=0.05, ge=0, le=1)
    review_below: float = Field(default=0.30, ge=0, le=1)
    max_rescues: int = Field(default=2, ge=0, le=20)


DecisionAction = Literal["success", "rescue", "review", "abort", "exhausted", "accepted"]


class Decision(BaseModel):
    action: DecisionAction
    message: str
    ratio: float = 0.0


def classify_failures(status: RoundStatus, policy: RescuePolicy, rescues_done: int, label: str) -> Decision:
    """What to do with a finished round (see the module docstring)."""
    if status.succeeded:
        return Decision(action="success", message=f"{label}: all units done")
    n = len(status.units) or 1
    failed = status.failed_indices
    starved = [i for i in failed if needs_more(status.units[i])]
    own = [i for i in failed if i not in starved]
    ratio = len(own) / n
    parts = []
    if own:
        parts.append(f"{len(own)}/{n} units failed ({ratio:.0%}): {own[:20]}")
    if starved:
        parts.append(f"{len(starved)} unit(s) killed at their time or memory limit: {starved[:20]} (rerun with more)")
    if not failed:
        parts.append("only the fan-in failed (every unit is done)")
    what = "; ".join(parts)
    if ratio >= policy.review_below:
        return Decision(action="abort", ratio=ratio,
                        message=f"{label}: {what}; >= {policy.review_below:.0%}: aborting (a systematic problem, "
                                "not bad luck: fix it and run the campaign again)")
    if ratio >= policy.auto_below:
        return Decision(action="review", ratio=ratio,
                        message=f"{label}: {what}; between {policy.auto_below:.0%} and {policy.review_below:.0%}: "
                                "needs a review (rescue the failed units, accept the round, or abort)")
    if rescues_done >= policy.max_rescues:
        return Decision(action="exhausted", ratio=ratio,
                        message=f"{label}: {what} after {rescues_done} rescue round(s) (max_rescues="
                                f"{policy.max_rescues})")
    return Decision(action="rescue", ratio=ratio, message=f"{label}: {what}; rescue {rescues_done + 1}")


class CannotEscalate(ValueError):
    """Units were killed at a limit and no larger one can be asked for."""


class RanWith(BaseModel):
    """The limits the units and the fan-in of an ended attempt actually ran with, as the
    scheduler reports them (None: it did not say; the spec's value is used)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_seconds: float | None = None
    fanin_seconds: float | None = None
    unit_mem_mb: int | None = None
    fanin_mem_mb: int | None = None


class RescuePlan(BaseModel):
    """What a rescue submits (``spec``), the round's resources after escalation (what the
    next rescue starts from), and whether the spec is the fan-in run alone as a one-job round
    (a round needs a unit: the fan-in's argv becomes the unit ``fanin_only_index``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: RoundSpec
    resources: Resources
    fanin_resources: Resources | None
    fanin_only: bool = False
    notes: list[str] = []


def _more(res: Resources, st_list: list[TaskStatus], what: str, scheduler: str, ran_seconds: float | None,
          ran_mem_mb: int | None, notes: list[str]) -> Resources:
    if any(s.timed_out for s in st_list):
        new = escalate(res, scheduler, ran_seconds)
        ran = f"{ran_seconds / 60:g} min" if ran_seconds else f"{effective_minutes(res, scheduler)} min"
        if new is None:
            raise CannotEscalate(f"{what} hit the time limit it ran with ({ran}) and no longer one can be given "
                                 f"({scheduler}, JobFlavour {res.job_flavour}, time {res.time_minutes} min): "
                                 "split the work into shorter units")
        # HTCondor rounds usually set only a JobFlavour: no "time None -> None" in the note
        time_change = (f", time {res.time_minutes} -> {new.time_minutes} min"
                       if res.time_minutes is not None or new.time_minutes is not None else "")
        notes.append(f"{what} hit their time limit ({ran}): JobFlavour {res.job_flavour or '-'} -> "
                     f"{new.job_flavour or '-'}{time_change}")
        res = new
    if any(out_of_memory(s) for s in st_list):
        had = ran_mem_mb or res.mem_mb
        mem = grow_memory(had)
        if mem is None:
            raise CannotEscalate(f"{what} ran out of memory at {had} MB, the cap ({MEM_CAP_MB} MB): "
                                 "reduce the units' memory use")
        notes.append(f"{what} ran out of memory ({had or 'the default'} MB): memory -> {mem} MB")
        res = res.model_copy(update={"mem_mb": mem})
    return res


def fanin_only_index(spec: RoundSpec) -> int:
    """The index a fan-in-only rescue of ``spec`` runs the fan-in under: one no unit of the
    round has, so that the submission record (all a retried task finds when it re-attaches)
    tells a fan-in-only rescue from a rescue of one unit, and its logs never replace a unit's."""
    return max(spec.indices) + 1


def rescue_plan(spec: RoundSpec, status: RoundStatus, *, scheduler: str, narrow: bool,
                ran: RanWith = RanWith(), exclude_hosts: Sequence[str] = ()) -> RescuePlan:
    """The rescue round of ``spec`` after ``status`` (the whole round: earlier attempts merged).

    ``narrow``: submit only what failed (Slurm, local; HTCondor when the rescue is a new
    DAG). Not narrowed, HTCondor's rescue DAG reruns only the failed nodes itself.
    ``exclude_hosts``: hosts the rescue must not run on (``sizing.blocked_hosts``), added to
    those the round already excludes.
    Raises CannotEscalate when units were killed at a limit that cannot grow.
    """
    notes: list[str] = []
    failed = status.failed_indices
    starved = [status.units[i] for i in failed if needs_more(status.units[i])]
    resources = _more(spec.resources, starved, f"units {[i for i in failed if needs_more(status.units[i])]}",
                      scheduler, ran.unit_seconds, ran.unit_mem_mb, notes) if starved else spec.resources
    new_hosts = sorted(set(exclude_hosts) - set(resources.exclude_hosts))
    if new_hosts:
        resources = resources.model_copy(update={"exclude_hosts": (*resources.exclude_hosts, *new_hosts)})
        resources = Resources.model_validate(resources.model_dump())  # sorted, checked
        notes.append(f"hosts {new_hosts} excluded: units failed there repeatedly")
    fanin_resources = spec.fanin_resources
    fanin_failed = status.fanin is not None and status.fanin.state is JobState.FAILED
    if fanin_failed and needs_more(status.fanin):
        fanin_resources = _more(spec.fanin_resources or spec.resources, [status.fanin], "the fan-in", scheduler,
                                ran.fanin_seconds, ran.fanin_mem_mb, notes)
    run = spec.model_copy(update={"resources": resources, "fanin_resources": fanin_resources})
    fanin_only = False
    if narrow and failed:
        keep = set(failed)
        run = run.model_copy(update={"units": [u for u in spec.units if u.index in keep]})
        notes.append(f"only units {failed} rerun; the others' outputs are kept")
    elif narrow and fanin_failed and spec.fanin:
        fanin_only = True
        run = run.model_copy(update={
            "units": [WorkUnit(index=fanin_only_index(spec), argv=list(spec.fanin))],
            "fanin": None, "resources": fanin_resources or resources, "fanin_resources": None})
        notes.append(f"only the fan-in reruns; the {len(spec.units)} units' outputs are kept")
    return RescuePlan(spec=run, resources=resources, fanin_resources=fanin_resources, fanin_only=fanin_only,
                      notes=notes)


class ResourceRequest(BaseModel):
    """Resources a round asks for; a field left None is not set here, the next source in
    ``RoundRequest``'s precedence decides it. Checked as ``Resources`` once merged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_minutes: int | None = None
    mem_mb: int | None = None
    cpus: int | None = None
    partition: str | None = None
    account: str | None = None
    job_flavour: str | None = None
    requirements: str | None = None
    disk_mb: int | None = None


class HoldPolicy(BaseModel):
    """Units held longer than ``after_seconds`` are released, up to ``max_releases`` times;
    then they are removed and the rescue policy takes over."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_seconds: float = Field(default=600.0, ge=0, le=7 * 86400)
    max_releases: int = Field(default=1, ge=0, le=20)


#: the two ways of giving the units: a request that sets either replaces both
_UNITS = ("units", "unit_template")
#: the fields taken key by key (see RoundRequest); every other field is taken whole
_MERGED_BY_KEY = ("resources", "fanin_resources")


class RoundRequest(BaseModel):
    """What one round should run, as a campaign's planning task or a DAG author asks for it.

    **Precedence, one rule for every field**: a field set (not None) in the round request
    wins over the operator's constructor argument of the same name, which wins over the
    site default (the connection's resources, ``python``, ``env_script``), which wins over
    the built-in default (label: the task id; workdir: ``.batchsite/rounds/<key>``; no
    throttle; 0 retries; ``RescuePolicy()``; ``HoldPolicy()``; fail on failure).
    ``resources`` and ``fanin_resources`` follow the rule key by key: a request asking only
    for ``mem_mb`` keeps the constructor's ``time_minutes`` and the site's ``partition``.
    Every other field is taken whole (a request's ``units`` replace the constructor's).

    It crosses XCom as ``model_dump(mode="json")`` and is validated again where it arrives.
    ``collect`` is opaque to the operator: what only the campaign's collect step reads
    (where the round's outputs land). A campaign types it in its own subclass
    (``RGRoundRequest``, ``FaserRoundRequest``).

    ``units`` items are argv lists (the index is the position) or ``WorkUnit`` dicts
    ``{"index", "argv", "name"}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    units: list[WorkUnit] | None = None
    #: the units in O(1) size (an argv template over an index range), instead of ``units``
    unit_template: UnitTemplate | None = None
    fanin: list[str] | None = None
    label: RoundLabel | None = None
    round_index: int | None = Field(default=None, ge=0)
    workdir: str | None = None
    cwd: str | None = None
    throttle: int | None = Field(default=None, gt=0)
    retries_in_job: int | None = Field(default=None, ge=0, le=20)
    #: retries of the fan-in step; None: ``retries_in_job``
    fanin_retries_in_job: int | None = Field(default=None, ge=0, le=20)
    resources: ResourceRequest | None = None
    fanin_resources: ResourceRequest | None = None
    env: dict[str, str] | None = None
    #: HTCondor ``maxidle`` / ``maxjobs`` for condor_submit_dag; None entries are dropped
    submit_options: dict[Literal["maxidle", "maxjobs"], int | None] | None = None
    rescue: RescuePolicy | None = None
    on_hold: HoldPolicy | None = None
    fail_on_failure: bool | None = None
    collect: dict[str, Any] | None = None

    @field_validator("units", mode="before")
    @classmethod
    def _positional_units(cls, raw: Any) -> Any:
        if not isinstance(raw, (list, tuple)):
            return raw
        out = []
        for pos, unit in enumerate(raw):
            if isinstance(unit, dict):
                out.append({"index": pos, **unit})
            elif isinstance(unit, (list, tuple)):
                out.append({"index": pos, "argv": list(unit)})
            else:
                out.append(unit)  # a WorkUnit, or garbage the field validation names
        return out

    def over(self, base: RoundRequest) -> RoundRequest:
        """This request, with ``base`` (the operator's constructor arguments) filling in the
        fields this one leaves unset."""
        merged: dict[str, Any] = {}
        for name in RoundRequest.model_fields:
            mine, theirs = getattr(self, name), getattr(base, name)
            if name in _UNITS and any(getattr(self, n) is not None for n in _UNITS):
                merged[name] = mine  # units and unit_template: one choice, taken whole
            elif mine is None:
                merged[name] = theirs
            elif name in _MERGED_BY_KEY and theirs is not None:
                merged[name] = theirs.model_copy(update=mine.model_dump(exclude_none=True))
            else:
                merged[name] = mine
        return self.model_copy(update=merged)


def spec_from_request(request: RoundRequest, *, key: str, cfg: SiteConfig,
                      site_path: Callable[[str], str]) -> RoundSpec:
    """The RoundSpec of a (merged) request: site defaults and built-in defaults fill the rest."""
    if request.units and request.unit_template:
        raise ValueError("units and unit_template: give the units one way, not both")
    units = request.units or (request.unit_template.units() if request.unit_template else None)
    if not units:
        raise ValueError("units: a round needs at least one work unit (units, or unit_template)")
    workdir = request.workdir or f".batchsite/rounds/{key}"
    workdir = workdir if workdir.startswith("/") else site_path(workdir)
    if not workdir.rstrip("/").endswith(key):
        workdir = f"{workdir.rstrip('/')}/{key}"  # one directory per key: records never collide
    defaults = cfg.default_resources().model_dump()

    def resources(asked: ResourceRequest | None) -> Resources:
        return Resources.model_validate({**defaults, **(asked.model_dump(exclude_none=True) if asked else {})})

    return RoundSpec(
        key=key,
        label=request.label or key,
        workdir=workdir,
        units=units,
        fanin=request.fanin or None,
        throttle=request.throttle,
        retries=request.retries_in_job or 0,
        fanin_retries=request.fanin_retries_in_job,
        resources=resources(request.resources),
        fanin_resources=resources(request.fanin_resources) if request.fanin_resources else None,
        cwd=request.cwd,
        env={"BATCHSITE_PYTHON": cfg.python, **(request.env or {})},
        env_script=cfg.env_script,
        submit_options={k: v for k, v in (request.submit_options or {}).items() if v},
    )


class RoundWatch(BaseModel):
    """What the triggerer needs to watch one submitted round: ids, paths and numbers only.

    These are ``BatchRoundTrigger``'s kwargs, flat like the SSH provider's trigger: the site
    is rebuilt from ``site_conn_id``, the submission from the ids below. The operator's own
    state across deferrals is a few counters here; what units finished in earlier attempts
    is not carried: the operator derives it from the round's units and ``indices``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    site_conn_id: str
    round_key: str
    workdir: str  # the round dir on the site, where its submission record is
    fanout_id: str
    fanin_id: str | None = None
    schedd: str | None = None
    adopted: bool = False  # the task re-attached to an earlier submission
    #: the units of this submission, in Slurm's array notation ("0-31", "1,4,7-9")
    indices: str
    label: RoundLabel
    hold_after_seconds: float = 600.0
    #: absolute, epoch seconds: the watch gives up after it; re-deferring never moves it
    deadline: float | None = None
    rescues: int = 0  # rescue rounds this task submitted for the round
    releases: int = 0  # held-unit releases so far
    #: this submission runs the fan-in alone, as its one unit (a fan-in-only rescue)
    fanin_only: bool = False
    #: what earlier rescues raised (None: the request's value): the resources this submission runs with
    unit_time_minutes: int | None = None
    unit_mem_mb: int | None = None
    unit_flavour: str | None = None
    fanin_time_minutes: int | None = None
    fanin_mem_mb: int | None = None
    fanin_flavour: str | None = None
    #: hosts earlier rescues excluded (comma-separated; ``sizing.blocked_hosts``)
    exclude_hosts: str | None = None

    def raised(self, spec: RoundSpec) -> RoundSpec:
        """``spec`` (the round as requested) with the resources earlier rescues raised."""
        hosts = tuple(h for h in (self.exclude_hosts or "").split(",") if h)

        def bump(res: Resources, time: int | None, mem: int | None, flavour: str | None) -> Resources:
            upd = {k: v for k, v in (("time_minutes", time), ("mem_mb", mem), ("job_flavour", flavour),
                                     ("exclude_hosts", tuple(sorted(set(res.exclude_hosts) | set(hosts))))) if v}
            return Resources.model_validate({**res.model_dump(), **upd}) if upd else res

        fanin = spec.fanin_resources or spec.resources
        raised_fanin = bump(fanin, self.fanin_time_minutes, self.fanin_mem_mb, self.fanin_flavour)
        return spec.model_copy(update={
            "resources": bump(spec.resources, self.unit_time_minutes, self.unit_mem_mb, self.unit_flavour),
            "fanin_resources": raised_fanin if (spec.fanin_resources or raised_fanin != fanin) else None})

    @staticmethod
    def raises(plan: RescuePlan) -> dict[str, Any]:
        """The fields that make ``raised`` give ``plan``'s resources."""
        fanin = plan.fanin_resources or plan.resources
        return {"unit_time_minutes": plan.resources.time_minutes, "unit_mem_mb": plan.resources.mem_mb,
                "unit_flavour": plan.resources.job_flavour, "fanin_time_minutes": fanin.time_minutes,
                "fanin_mem_mb": fanin.mem_mb, "fanin_flavour": fanin.job_flavour, "fanin_only": plan.fanin_only,
                "exclude_hosts": ",".join(plan.resources.exclude_hosts) or None}

    @classmethod
    def of(cls, sub: Submission, *, site_conn_id: str, label: str, **numbers: Any) -> RoundWatch:
        return cls(site_conn_id=site_conn_id, label=label, **_ids(sub), **numbers)

    def moved_to(self, sub: Submission, **numbers: Any) -> RoundWatch:
        """The same watch, now of ``sub`` (a rescue round of the same key)."""
        return self.model_copy(update={**_ids(sub), **numbers})

    def submission(self, scheduler: str) -> Submission:
        return Submission(key=self.round_key, scheduler=scheduler, workdir=self.workdir,  # type: ignore[arg-type]
                          indices=expand_indices(self.indices), fanout_id=self.fanout_id, fanin_id=self.fanin_id,
                          schedd=self.schedd, adopted=self.adopted)


def _ids(sub: Submission) -> dict[str, Any]:
    return {"round_key": sub.key, "workdir": sub.workdir, "fanout_id": sub.fanout_id, "fanin_id": sub.fanin_id,
            "schedd": sub.schedd, "indices": compact_indices(sub.indices), "adopted": sub.adopted}


class RoundWatchEvent(BaseModel):
    """What the trigger fires once: the watch it ran (so the operator can go on) and why it ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["finished", "held", "timeout", "error"]
    watch: RoundWatch
    round: RoundDigest | None = None  # the last observation ("finished", "held"), its size O(1) in the units
    message: str = ""

    def round_status(self) -> RoundStatus | None:
        """The last observation, every unit of the watched submission in its state."""
        return None if self.round is None else self.round.status(expand_ranges(self.watch.indices))


class RoundResult(BaseModel):
    """What ``BatchRoundOperator`` returns (its XCom): ids, per-unit states and the decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    job_id: str
    fanin_id: str | None
    site: str
    workdir: str
    adopted: bool
    rescues: int
    #: index ranges ("0-31,40"; model.index_ranges) of the units killed at their limit / failed,
    #: every attempt of the round merged; per-unit states stay on the site (O(1) XCom in the units)
    timed_out: str
    counts: dict[str, int]
    failed: str
    fanin_state: str | None
    succeeded: bool
    decision: DecisionAction
    #: why it was decided (the policy's words), shown to the reviewer
    message: str = ""
    #: failed unit index (first 50) -> what the scheduler said ("FAILED exit 3", "TIMEOUT (TimeLimit)")
    failures: dict[str, str] = {}
    fanin_failure: str | None = None
    oom: str = ""  # index ranges of the units killed out of memory
    fanin_native: str | None = None
    fanin_timed_out: bool = False
    #: the next round's requests from this round's measured usage (a ``sizing.SizingDecision``
    #: dump: O(1) in the units); None when nothing was measured
    sizing: dict[str, Any] | None = None

    def as_status(self, indices: list[int]) -> RoundStatus:
        """The round of units ``indices`` as this result saw it end (what a later rescue of
        it starts from): the failed ones FAILED (timed out, out of memory), the rest DONE."""
        failed, timed_out, oom = (set(expand_ranges(x)) for x in (self.failed, self.timed_out, self.oom))

        def unit(i: int) -> TaskStatus:
            if i not in failed:
                return TaskStatus(state=JobState.DONE, exit_code=0)
            native = OUT_OF_MEMORY if i in oom else ("TIMEOUT" if i in timed_out else "")
            return TaskStatus(state=JobState.FAILED, native=native, timed_out=i in timed_out)

        fanin = None
        if self.fanin_state is not None:
            fanin = TaskStatus(state=JobState(self.fanin_state), native=self.fanin_native or "",
                               timed_out=self.fanin_timed_out)
        return RoundStatus(key=self.key, units={i: unit(i) for i in indices}, fanin=fanin)

    @property
    def failed_indices(self) -> list[int]:
        return expand_ranges(self.failed)


def describe_failure(st: TaskStatus) -> str:
    """One failed unit in a few words: state, exit code, reason."""
    # "exited" (local runner) / "exit-file" say only that an exit code follows
    native = "" if st.native in ("exited", "exit-file") else st.native
    text = "out of memory" if out_of_memory(st) else (native or st.state.value)
    if st.exit_code is not None:
        text += f" exit {st.exit_code}"
    if st.reason and st.reason != text:
        text += f" ({st.reason})"
    return text


#: the reviewer's choices (HITL options), in the order shown
REVIEW_RESCUE = "Rescue the failed units"
REVIEW_ACCEPT = "Accept the round as it is"
REVIEW_ABORT = "Abort the campaign"
REVIEW_OPTIONS = (REVIEW_RESCUE, REVIEW_ACCEPT, REVIEW_ABORT)
#: at most this many failed units are shown with their log tails in a review
REVIEW_UNITS_SHOWN = 20


def review_subject(result: RoundResult, label: str) -> str:
    what = f"{len(result.failed_indices)} of {sum(result.counts.values())} units failed" if result.failed \
        else "the fan-in failed"
    return f"{label}: {what} - rescue, accept or abort?"


def review_body(result: RoundResult, tails: dict[str, str]) -> str:
    """The review's body (Markdown): the decision's words, each failed unit (at most
    ``REVIEW_UNITS_SHOWN``) with what the scheduler said and the last lines of its stderr
    (``tails``: unit index or "fanin" -> text), and what each choice does."""
    lines = [result.message or f"round {result.key}", "",
             f"Site `{result.site}`, round `{result.key}` (job {result.job_id}), logs under `{result.workdir}/logs/`.",
             ""]
    shown = result.failed_indices[:REVIEW_UNITS_SHOWN]
    names = [str(i) for i in shown] + (["fanin"] if result.fanin_failure else [])
    for name in names:
        what = result.fanin_failure if name == "fanin" else result.failures.get(name, "failed")
        lines.append(f"**{'fan-in' if name == 'fanin' else 'unit ' + name}**: {what}")
        tail = tails.get(name, "").rstrip()
        lines += ["```", tail or "(no stderr)", "```"]
    if len(result.failed_indices) > len(shown):
        lines.append(f"... and {len(result.failed_indices) - len(shown)} more failed units: "
                     f"{compact_indices(result.failed_indices[len(shown):])}")
    lines += ["", f"* **{REVIEW_RESCUE}**: only these units (and the fan-in) run again, as a new round;",
              f"* **{REVIEW_ACCEPT}**: the campaign goes on with what is done;",
              f"* **{REVIEW_ABORT}**: the campaign fails here."]
    return "\n".join(lines)
