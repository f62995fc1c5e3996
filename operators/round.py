"""Submit one round (fan-out units + optional fan-in) to a batch site, then watch it deferred.

``BatchRoundOperator`` works on any site; ``SlurmArrayOperator`` (operators/slurm.py) and
``CondorDagOperator`` are the same operator pinned to one scheduler, so a campaign DAG can
use this one and move between sites by changing only the connection.

Idempotent: the job key comes from (dag, run, task, map index, round), never from the try
number. A retried or restarted task finds the submission record on the site and re-attaches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from batchsite.hooks.site import BatchSiteHook
from batchsite.keys import job_key
from batchsite.model import JobState, Resources, RoundSpec, RoundStatus, Submission, WorkUnit
from batchsite.polling import apply_vanish_grace
from batchsite.site import Site
from batchsite.triggers.round import BatchRoundTrigger


def _units(raw: Sequence[Any]) -> list[WorkUnit]:
    out = []
    for pos, u in enumerate(raw):
        if isinstance(u, dict):
            out.append(WorkUnit.model_validate({"index": u.get("index", pos), **{k: v for k, v in u.items() if k != "index"}}))
        else:
            out.append(WorkUnit(index=pos, argv=list(u)))
    return out


class BatchRoundOperator(BaseOperator):
    """Submit a round of work units (+ fan-in) to the site named by ``site_conn_id``.

    :param units: list of argv lists (index = position) or dicts ``{"index", "argv"}``
    :param fanin: argv of the fan-in step (Slurm: ``afterok`` job; HTCondor: child node)
    :param round_def: a dict with any of the fields above (typically the XCom of a planning
        task); its values override the constructor's.
    :param fail_on_failure: raise when units failed (default). Campaign DAGs set False and let
        their replan task decide (re-run only the failed units).
    """

    template_fields: Sequence[str] = ("site_conn_id", "round_label", "units", "fanin", "workdir", "env", "round_def")
    ui_color = "#cfe8ff"
    expected_scheduler: str | None = None

    def __init__(
        self,
        *,
        site_conn_id: str = "local",
        units: Sequence[Any] | None = None,
        fanin: Sequence[str] | None = None,
        round_label: str | None = None,
        workdir: str | None = None,
        cwd: str | None = None,
        throttle: int | None = None,
        retries_in_job: int = 0,
        resources: dict[str, Any] | None = None,
        fanin_resources: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        round_index: int = 0,
        round_def: dict[str, Any] | None = None,
        deferrable: bool = True,
        fail_on_failure: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.site_conn_id = site_conn_id
        self.units = units
        self.fanin = fanin
        self.round_label = round_label
        self.workdir = workdir
        self.cwd = cwd
        self.throttle = throttle
        self.retries_in_job = retries_in_job
        self.resources = resources
        self.fanin_resources = fanin_resources
        self.env = env
        self.round_index = round_index
        self.round_def = round_def
        self.deferrable = deferrable
        self.fail_on_failure = fail_on_failure
        self._hook: BatchSiteHook | None = None
        self._submission: Submission | None = None

    # ------------------------------------------------------------------ building the spec
    def _field(self, name: str, default: Any = None) -> Any:
        rd = self.round_def or {}
        if name in rd and rd[name] is not None:
            return rd[name]
        v = getattr(self, name, None)
        return default if v is None else v

    def build_spec(self, context: Any, site: Site, hook: BatchSiteHook) -> RoundSpec:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        round_index = int(self._field("round_index", 0))
        key = job_key(ti.dag_id, ti.run_id, ti.task_id, map_index, round_index)
        units = self._field("units")
        if not units:
            raise AirflowException(f"{self.task_id}: `units` is empty: a round needs at least one work unit")
        workdir = self._field("workdir") or f".batchsite/rounds/{key}"
        workdir = workdir if workdir.startswith("/") else site.path(workdir)
        if not workdir.rstrip("/").endswith(key):
            workdir = f"{workdir.rstrip('/')}/{key}"
        cfg = hook.config
        defaults = cfg.default_resources().model_dump()
        res = {**defaults, **{k: v for k, v in (self._field("resources") or {}).items() if v is not None}}
        fres = self._field("fanin_resources")
        label = self._field("label") or self.round_label or self.task_id
        return RoundSpec(
            key=key,
            label=str(label),
            workdir=workdir,
            units=_units(units),
            fanin=list(self._field("fanin")) if self._field("fanin") else None,
            throttle=self._field("throttle"),
            retries=int(self._field("retries_in_job", 0)),
            resources=Resources.model_validate(res),
            fanin_resources=Resources.model_validate({**defaults, **fres}) if fres else None,
            cwd=self._field("cwd"),
            env={"BATCHSITE_PYTHON": cfg.python, **(self._field("env") or {})},
            env_script=cfg.env_script,
        )

    # ------------------------------------------------------------------ execution
    def execute(self, context: Any) -> dict[str, Any]:
        self._hook = hook = BatchSiteHook(self.site_conn_id)
        cfg = hook.config
        if self.expected_scheduler and cfg.scheduler != self.expected_scheduler:
            raise AirflowException(
                f"{type(self).__name__} needs a {self.expected_scheduler} site, but connection "
                f"{self.site_conn_id!r} says scheduler={cfg.scheduler!r}; use BatchRoundOperator "
                "to run on any site"
            )
        site = hook.get_site()
        try:
            spec = self.build_spec(context, site, hook)
            sub = site.submit(spec)
            self._submission = sub
            verb = "re-attached to existing" if sub.adopted else "submitted"
            self.log.info("%s: %s round %s on site %s as job %s (workdir %s)", spec.label, verb,
                          sub.key, site.name, ",".join(sub.job_ids), sub.workdir)
            status = site.status([sub])[sub.key]
            self.log.info("%s", status.progress_line(spec.label))
            if status.finished:
                return self._complete(site, sub, status, spec.label)
            if not self.deferrable:
                return self._watch_blocking(site, sub, spec.label, cfg.poll_interval, cfg.vanish_grace)
        finally:
            hook.close()
        self.defer(
            trigger=BatchRoundTrigger(cfg.public_dict(), sub.model_dump(mode="json"), spec.label),
            method_name="execute_complete",
        )

    def _watch_blocking(self, site: Site, sub: Submission, label: str, interval: float, grace: float):
        first_seen: dict = {}
        last = ""
        while True:
            time.sleep(interval)
            st = site.status([sub])[sub.key]
            st = apply_vanish_grace(st, first_seen, time.monotonic(), grace)
            line = st.progress_line(label)
            if line != last:
                self.log.info("%s", line)
                last = line
            if st.finished:
                return self._complete(site, sub, st, label)

    def execute_complete(self, context: Any, event: dict[str, Any]):
        # the event carries the submission: nothing depends on operator state across deferral
        sub = Submission.model_validate(event["submission"])
        label = event.get("label") or sub.key
        self._submission = sub
        if event.get("status") != "finished":
            raise AirflowException(f"{label}: watching round {sub.key} stopped: {event.get('message')}")
        status = RoundStatus.model_validate(event["round"])
        self._hook = hook = BatchSiteHook(self.site_conn_id)
        try:
            return self._complete(hook.get_site(), sub, status, label)
        finally:
            hook.close()

    def _complete(self, site: Site, sub: Submission, status: RoundStatus, label: str) -> dict[str, Any]:
        failed = status.failed_indices
        msg = ""
        if status.fanin is not None and not status.fanin.state.terminal and failed:
            # afterok can never be satisfied: without this the fan-in stays PENDING forever
            why = status.fanin.reason or "a parent failed"
            site.cancel([sub.model_copy(update={"fanout_id": sub.fanin_id or sub.fanout_id, "fanin_id": None})])
            msg = f"fan-in {sub.fanin_id or '(in the local runner)'} cancelled: it could never start ({why}). "
            status = status.model_copy(update={"fanin": status.fanin.model_copy(
                update={"state": JobState.FAILED, "native": "CANCELLED", "reason": why})})
        result = {
            "key": sub.key,
            "job_id": sub.fanout_id,
            "fanin_id": sub.fanin_id,
            "site": site.name,
            "workdir": sub.workdir,
            "adopted": sub.adopted,
            "states": {str(i): s.state.value for i, s in sorted(status.units.items())},
            "timed_out": sorted(i for i, s in status.units.items() if s.timed_out),
            "counts": status.counts(),
            "failed_indices": failed,
            "fanin_state": status.fanin.state.value if status.fanin else None,
            "succeeded": status.succeeded,
        }
        self.log.info("%s", status.progress_line(label))
        if not status.succeeded:
            where = f"{sub.workdir}/logs/"
            detail = "; ".join(
                f"index {i}: {status.units[i].native or 'failed'}"
                + (f" exit {status.units[i].exit_code}" if status.units[i].exit_code is not None else "")
                + (f" ({status.units[i].reason})" if status.units[i].reason else "")
                for i in failed[:20]
            )
            text = (f"{label}: {msg}{len(failed)} of {len(status.units)} units failed: {failed} "
                    f"[{detail}]; logs under {where} (files *_<index>.out/.err)")
            if status.fanin is not None and status.fanin.state is JobState.FAILED and not failed:
                text = f"{label}: fan-in failed ({status.fanin.native}, exit {status.fanin.exit_code}); logs under {where}"
            if self.fail_on_failure:
                raise AirflowException(text)
            self.log.error("%s", text)
        return result

    def on_kill(self) -> None:
        """Task killed while running on a worker: cancel what it submitted."""
        if self._submission is None:
            return
        hook = BatchSiteHook(self.site_conn_id)
        try:
            out = hook.get_site().cancel([self._submission])
            self.log.info("cancelled %s: %s", self._submission.job_ids, out[:500])
        finally:
            hook.close()
