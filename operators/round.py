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
from batchsite.model import JobState, Resources, RoundSpec, RoundStatus, Submission, TaskStatus
from batchsite.polling import apply_vanish_grace
from batchsite.rounds import RescuePolicy, classify_failures, rescue_spec, spec_from_round_def
from batchsite.site import Site
from batchsite.triggers.round import BatchRoundTrigger


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
        job_resources: dict[str, Any] | None = None,
        fanin_resources: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        round_index: int = 0,
        round_def: dict[str, Any] | None = None,
        deferrable: bool = True,
        fail_on_failure: bool = True,
        rescue: dict[str, Any] | None = None,
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
        self.job_resources = job_resources  # not `resources`: BaseOperator owns that name
        self.fanin_resources = fanin_resources
        self.env = env
        self.round_index = round_index
        self.round_def = round_def
        self.deferrable = deferrable
        self.fail_on_failure = fail_on_failure
        self.rescue = rescue
        self._hook: BatchSiteHook | None = None
        self._submission: Submission | None = None

    # ------------------------------------------------------------------ building the spec
    def _field(self, name: str, default: Any = None) -> Any:
        rd = self.round_def or {}
        if name in rd and rd[name] is not None:
            return rd[name]
        v = getattr(self, name, None)
        return default if v is None else v

    def _round_def(self) -> dict[str, Any]:
        keys = ("units", "fanin", "workdir", "cwd", "throttle", "retries_in_job", "fanin_resources", "env")
        rd = {k: getattr(self, k) for k in keys if getattr(self, k, None) is not None}
        if self.job_resources:
            rd["resources"] = self.job_resources
        rd["label"] = self.round_label or self.task_id
        rd.update({k: v for k, v in (self.round_def or {}).items() if v is not None})
        return rd

    def build_spec(self, context: Any, site: Site, hook: BatchSiteHook) -> RoundSpec:
        ti = context["ti"]
        rd = self._round_def()
        key = job_key(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), int(rd.get("round_index") or 0))
        try:
            return spec_from_round_def(rd, key=key, cfg=hook.config, site_path=site.path)
        except ValueError as e:
            raise AirflowException(f"{self.task_id}: {e}") from None

    def _policy(self) -> RescuePolicy:
        raw = {**(self.rescue or {}), **(self._round_def().get("rescue") or {})}
        return RescuePolicy.model_validate(raw)

    def _fail_on_failure(self) -> bool:
        v = self._round_def().get("fail_on_failure")
        return self.fail_on_failure if v is None else bool(v)

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
            return self._watch(context, site, sub, spec.label,
                               {"rescues": 0, "done_before": {}, "on_hold": self._round_def().get("on_hold")})
        finally:
            hook.close()

    def _watch(self, context: Any, site: Site, sub: Submission, label: str, ctx: dict[str, Any]):
        """Check once; finish now, watch blocking, or defer to the triggerer."""
        status = site.status([sub])[sub.key]
        self.log.info("%s", status.progress_line(label))
        if status.finished:
            return self._finish(context, site, sub, status, label, ctx)
        cfg = site_cfg = self._hook.config if self._hook else None
        if not self.deferrable:
            first_seen: dict = {}
            last = ""
            while not status.finished:
                time.sleep(cfg.poll_interval)
                status = apply_vanish_grace(site.status([sub])[sub.key], first_seen, time.monotonic(),
                                            cfg.vanish_grace)
                line = status.progress_line(label)
                if line != last:
                    self.log.info("%s", line)
                    last = line
            return self._finish(context, site, sub, status, label, ctx)
        self.defer(
            trigger=BatchRoundTrigger(site_cfg.public_dict(), sub.model_dump(mode="json"), label, ctx),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None):
        if not event:
            # resumed without a trigger event (e.g. a restarted task found itself "deferred"):
            # start over; execute() finds the submission record and re-attaches
            self.log.info("resumed without a trigger event: re-attaching through the submission record")
            return self.execute(context)
        # the event carries the submission and our state: nothing is kept in the operator object
        sub = Submission.model_validate(event["submission"])
        label = event.get("label") or sub.key
        ctx = event.get("context") or {"rescues": 0, "done_before": {}}
        self._submission = sub
        if event.get("status") not in ("finished", "held"):
            raise AirflowException(f"{label}: watching round {sub.key} stopped: {event.get('message')}")
        status = RoundStatus.model_validate(event["round"])
        self._hook = hook = BatchSiteHook(self.site_conn_id)
        try:
            if event["status"] == "held":
                return self._held(context, hook.get_site(), sub, status, label, ctx)
            return self._finish(context, hook.get_site(), sub, status, label, ctx)
        finally:
            hook.close()

    def _held(self, context: Any, site: Site, sub: Submission, status: RoundStatus, label: str,
              ctx: dict[str, Any]):
        """Units held longer than on_hold.after_seconds: release them (up to max_releases
        times), then give up on them: remove the round's held jobs so they fail and the
        rescue policy (with escalation) takes over."""
        policy = {"after_seconds": 600, "max_releases": 1, **(ctx.get("on_hold") or {})}
        reasons = sorted({s.reason for s in status.units.values() if s.state is JobState.HELD and s.reason})
        held = sorted(i for i, s in status.units.items() if s.state is JobState.HELD)
        if int(ctx.get("releases", 0)) < int(policy["max_releases"]):
            out = site.release([sub])
            self.log.warning("%s: units %s held (HoldReason: %s): released (%s)", label, held,
                             "; ".join(reasons) or "?", (out or "").strip()[:300])
            return self._watch(context, site, sub, label, {**ctx, "releases": int(ctx.get("releases", 0)) + 1})
        raise AirflowException(
            f"{label}: units {held} stay held (HoldReason: {'; '.join(reasons) or '?'}) after "
            f"{policy['max_releases']} release(s); fix the cause and release them (condor_release / "
            f"scontrol release) or clear this task")

    def _finish(self, context: Any, site: Site, sub: Submission, status: RoundStatus, label: str,
                ctx: dict[str, Any]) -> dict[str, Any]:
        failed = status.failed_indices
        msg = ""
        if status.fanin is not None and not status.fanin.state.terminal and failed:
            # afterok can never be satisfied: without this the fan-in stays PENDING forever
            why = status.fanin.reason or "a parent failed"
            try:
                site.cancel([sub.model_copy(update={"fanout_id": sub.fanin_id or sub.fanout_id, "fanin_id": None})])
            except Exception as e:  # noqa: BLE001 - reporting the failure matters more
                self.log.warning("could not cancel the fan-in of %s: %s", sub.key, e)
            msg = f"fan-in {sub.fanin_id or '(in the local runner)'} cancelled: it could never start ({why}). "
            status = status.model_copy(update={"fanin": status.fanin.model_copy(
                update={"state": JobState.FAILED, "native": "CANCELLED", "reason": why})})
        # units that succeeded in earlier attempts of this round (narrowed rescues)
        before = {int(i): TaskStatus.model_validate(s) for i, s in (ctx.get("done_before") or {}).items()}
        whole = status.model_copy(update={"units": {**before, **status.units}})
        decision = classify_failures(whole, self._policy(), int(ctx.get("rescues", 0)), label)
        if decision.action == "rescue":
            return self._rescue(context, site, sub, status, whole, label, ctx, decision.message)
        result = {
            "key": sub.key,
            "job_id": sub.fanout_id,
            "fanin_id": sub.fanin_id,
            "site": site.name,
            "workdir": sub.workdir,
            "adopted": sub.adopted,
            "rescues": int(ctx.get("rescues", 0)),
            "states": {str(i): s.state.value for i, s in sorted(whole.units.items())},
            "timed_out": sorted(i for i, s in whole.units.items() if s.timed_out),
            "counts": whole.counts(),
            "failed_indices": whole.failed_indices,
            "fanin_state": status.fanin.state.value if status.fanin else None,
            "succeeded": whole.succeeded,
            "decision": decision.action,
        }
        self.log.info("%s", whole.progress_line(label))
        if not whole.succeeded:
            failed = whole.failed_indices
            where = f"{sub.workdir}/logs/"
            detail = "; ".join(
                f"index {i}: {whole.units[i].native or 'failed'}"
                + (f" exit {whole.units[i].exit_code}" if whole.units[i].exit_code is not None else "")
                + (f" ({whole.units[i].reason})" if whole.units[i].reason else "")
                for i in failed[:20]
            )
            text = (f"{label}: {msg}{len(failed)} of {len(whole.units)} units failed: {failed} "
                    f"[{detail}]; logs under {where} (files *_<index>.out/.err). {decision.message}")
            if status.fanin is not None and status.fanin.state is JobState.FAILED and not failed:
                text = (f"{label}: fan-in failed ({status.fanin.native}, exit {status.fanin.exit_code}); "
                        f"logs under {where}")
            if self._fail_on_failure():
                raise AirflowException(text)
            self.log.error("%s", text)
        return result

    def _rescue(self, context: Any, site: Site, sub: Submission, status: RoundStatus, whole: RoundStatus,
                label: str, ctx: dict[str, Any], why: str):
        spec = self.build_spec(context, site, self._hook)
        if ctx.get("resources"):
            spec = spec.model_copy(update={"resources": Resources.model_validate(ctx["resources"])})
        narrow = site.backend.name != "htcondor"  # DAGMan's rescue DAG reruns only failed nodes itself
        new_spec, notes = rescue_spec(spec, whole, narrow=narrow)
        reason = "; ".join([why, *notes])
        self.log.warning("%s", reason)
        new_sub = site.resubmit(new_spec, status, reason=reason)
        self._submission = new_sub
        self.log.info("%s: rescue round submitted as job %s", label, ",".join(new_sub.job_ids))
        done = {str(i): s.model_dump(mode="json") for i, s in whole.units.items() if s.state is JobState.DONE}
        new_ctx = {**ctx, "rescues": int(ctx.get("rescues", 0)) + 1,
                   "done_before": done if narrow else {},
                   "resources": new_spec.resources.model_dump(mode="json")}
        return self._watch(context, site, new_sub, label, new_ctx)

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
