"""Round-level decisions shared by operators and the CLI (no Airflow, no I/O).

* ``RoundRequest``: what a round should run, as a campaign or a DAG author asks for it (the
  typed seam between campaigns and ``BatchRoundOperator``, one documented precedence);
  ``spec_from_request`` turns it + the site's defaults into a ``RoundSpec``;
* ``classify_failures``: WMS2's error handler (seed 002): failure ratio below ``auto_below``
  -> rescue automatically; below ``review_below`` -> stop for review with a summary;
  otherwise abort. Thresholds are configurable; ``max_rescues`` bounds the loop;
* ``rescue_spec``: what the rescue round runs: only the failed units (DAGMan's rescue DAG
  does that itself, other backends get a narrowed spec), with the time limit / JobFlavour
  escalated one step when units were killed at their limit (PocketCoffea's check-jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchsite.backends.slurm import compact_indices
from batchsite.backends.slurm_parse import expand_indices
from batchsite.config import SiteConfig
from batchsite.model import Resources, RoundSpec, RoundStatus, Submission, WorkUnit

#: lxplus +JobFlavour ladder (max wall time 20 min, 1 h, 2 h, 8 h, 1 d, 3 d, 1 w)
FLAVOURS = ("espresso", "microcentury", "longlunch", "workday", "tomorrow", "testmatch", "nextweek")
FLAVOUR_MINUTES = dict(zip(FLAVOURS, (20, 60, 120, 480, 1440, 4320, 10080)))


def next_flavour(flavour: str | None) -> str | None:
    """One step up the ladder; None when already at the top (nothing left to escalate)."""
    current = flavour or "espresso"  # lxplus default when none is given
    i = FLAVOURS.index(current) if current in FLAVOURS else 0
    return FLAVOURS[i + 1] if i + 1 < len(FLAVOURS) else None


def escalate(res: Resources) -> Resources:
    """Resources for a rerun of units killed at their time limit."""
    upd: dict[str, Any] = {}
    nf = next_flavour(res.job_flavour)
    if nf is not None:
        upd["job_flavour"] = nf
    upd["time_minutes"] = min((res.time_minutes or FLAVOUR_MINUTES.get(res.job_flavour or "", 60)) * 2, 60 * 24 * 14)
    return res.model_copy(update=upd)


class RescuePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_below: float = Field(default=0.05, ge=0, le=1)
    review_below: float = Field(default=0.30, ge=0, le=1)
    max_rescues: int = Field(default=2, ge=0, le=20)


class Decision(BaseModel):
    action: Literal["success", "rescue", "review", "abort", "exhausted"]
    message: str
    ratio: float = 0.0


def classify_failures(status: RoundStatus, policy: RescuePolicy, rescues_done: int, label: str) -> Decision:
    if status.succeeded:
        return Decision(action="success", message=f"{label}: all units done")
    n = len(status.units) or 1
    failed = status.failed_indices
    fanin_failed = not failed and status.fanin is not None and not status.succeeded
    ratio = (len(failed) / n) if failed else (1.0 / n if fanin_failed else 0.0)
    what = f"fan-in failed" if fanin_failed else f"{len(failed)}/{n} units failed ({ratio:.0%}): {failed[:20]}"
    if ratio >= policy.review_below:
        return Decision(action="abort", ratio=ratio,
                        message=f"{label}: {what}; >= {policy.review_below:.0%}: aborting (a systematic problem, "
                                "not bad luck: fix it and clear the task)")
    if ratio >= policy.auto_below:
        return Decision(action="review", ratio=ratio,
                        message=f"{label}: {what}; between {policy.auto_below:.0%} and {policy.review_below:.0%}: "
                                "stopped for review. Clear the task to rescue only the failed units.")
    if rescues_done >= policy.max_rescues:
        return Decision(action="exhausted", ratio=ratio,
                        message=f"{label}: {what} after {rescues_done} rescue round(s) (max_rescues="
                                f"{policy.max_rescues})")
    return Decision(action="rescue", ratio=ratio, message=f"{label}: {what}; rescue {rescues_done + 1}")


def rescue_spec(spec: RoundSpec, status: RoundStatus, *, narrow: bool) -> tuple[RoundSpec, list[str]]:
    """The spec of the rescue round and human-readable notes on what changed."""
    notes = []
    upd: dict[str, Any] = {}
    timed_out = sorted(i for i, s in status.units.items() if s.timed_out)
    if timed_out:
        new = escalate(spec.resources)
        upd["resources"] = new
        notes.append(f"units {timed_out} hit their time limit: JobFlavour {spec.resources.job_flavour or 'espresso'}"
                     f" -> {new.job_flavour}, time {spec.resources.time_minutes} -> {new.time_minutes} min")
    if status.fanin is not None and status.fanin.timed_out:
        base = spec.fanin_resources or spec.resources
        upd["fanin_resources"] = escalate(base)
        notes.append("fan-in hit its time limit: escalated")
    if narrow:
        failed = set(status.failed_indices)
        if failed:
            upd["units"] = [u for u in spec.units if u.index in failed]
            notes.append(f"only units {sorted(failed)} rerun; the others' outputs are kept")
    return spec.model_copy(update=upd), notes


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
    fanin: list[str] | None = None
    label: str | None = None
    round_index: int | None = Field(default=None, ge=0)
    workdir: str | None = None
    cwd: str | None = None
    throttle: int | None = Field(default=None, gt=0)
    retries_in_job: int | None = Field(default=None, ge=0, le=20)
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
            if mine is None:
                merged[name] = theirs
            elif name in _MERGED_BY_KEY and theirs is not None:
                merged[name] = theirs.model_copy(update=mine.model_dump(exclude_none=True))
            else:
                merged[name] = mine
        return self.model_copy(update=merged)


def spec_from_request(request: RoundRequest, *, key: str, cfg: SiteConfig,
                      site_path: Callable[[str], str]) -> RoundSpec:
    """The RoundSpec of a (merged) request: site defaults and built-in defaults fill the rest."""
    if not request.units:
        raise ValueError("units: a round needs at least one work unit")
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
        units=request.units,
        fanin=request.fanin or None,
        throttle=request.throttle,
        retries=request.retries_in_job or 0,
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
    label: str
    hold_after_seconds: float = 600.0
    #: absolute, epoch seconds: the watch gives up after it; re-deferring never moves it
    deadline: float | None = None
    rescues: int = 0  # rescue rounds this task submitted for the round
    releases: int = 0  # held-unit releases so far
    unit_escalations: int = 0  # time-limit escalations of the units' resources so far
    fanin_escalations: int = 0

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
    round: RoundStatus | None = None  # the last observation ("finished", "held")
    message: str = ""


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
    states: dict[str, str]  # unit index -> JobState value, every attempt of the round merged
    timed_out: list[int]
    counts: dict[str, int]
    failed_indices: list[int]
    fanin_state: str | None
    succeeded: bool
    decision: Literal["success", "rescue", "review", "abort", "exhausted"]
