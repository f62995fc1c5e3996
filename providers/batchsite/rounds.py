"""Round-level decisions shared by operators and the CLI (no Airflow, no I/O).

* ``spec_from_round_def``: a campaign's round definition + the site's defaults -> RoundSpec;
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

from pydantic import BaseModel, ConfigDict, Field

from batchsite.config import SiteConfig
from batchsite.model import Resources, RoundSpec, RoundStatus, WorkUnit

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


def _units(raw: list[Any]) -> list[WorkUnit]:
    out = []
    for pos, u in enumerate(raw):
        if isinstance(u, dict):
            out.append(WorkUnit.model_validate({"index": u.get("index", pos), **{k: v for k, v in u.items() if k != "index"}}))
        else:
            out.append(WorkUnit(index=pos, argv=list(u)))
    return out


def spec_from_round_def(rd: dict[str, Any], *, key: str, cfg: SiteConfig, site_path: Callable[[str], str]) -> RoundSpec:
    """A RoundSpec from a round definition (units, fanin, workdir, resources, ...)."""
    units = rd.get("units")
    if not units:
        raise ValueError("units: a round needs at least one work unit")
    workdir = rd.get("workdir") or f".batchsite/rounds/{key}"
    workdir = workdir if workdir.startswith("/") else site_path(workdir)
    if not workdir.rstrip("/").endswith(key):
        workdir = f"{workdir.rstrip('/')}/{key}"  # one directory per key: records never collide
    defaults = cfg.default_resources().model_dump()
    res = {**defaults, **{k: v for k, v in (rd.get("resources") or {}).items() if v is not None}}
    fres = rd.get("fanin_resources")
    return RoundSpec(
        key=key,
        label=str(rd.get("label") or key),
        workdir=workdir,
        units=_units(units),
        fanin=list(rd["fanin"]) if rd.get("fanin") else None,
        throttle=rd.get("throttle"),
        retries=int(rd.get("retries_in_job") or 0),
        resources=Resources.model_validate(res),
        fanin_resources=Resources.model_validate({**defaults, **fres}) if fres else None,
        cwd=rd.get("cwd"),
        env={"BATCHSITE_PYTHON": cfg.python, **(rd.get("env") or {})},
        env_script=cfg.env_script,
        submit_options={k: v for k, v in (rd.get("submit_options") or {}).items() if v},
    )
