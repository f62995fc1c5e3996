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
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from pydantic import ValidationError

from batchsite.backends.common import FANIN
from batchsite.campaign.common import explain_validation
from batchsite.hooks.ledger import ledger_for_task
from batchsite.hooks.site import BatchSiteHook
from batchsite.keys import job_key
from batchsite.model import JobState, RoundSpec, RoundStatus, Submission, TaskStatus, index_ranges
from batchsite.polling import apply_vanish_grace
from batchsite.roundinfo import failure_tails, read_ran_with
from batchsite.rounds import (
    CannotEscalate, Decision, HoldPolicy, RanWith, RescuePolicy, RoundRequest, RoundResult, RoundWatch, RoundWatchEvent,
    classify_failures, describe_failure, fanin_only_index, needs_more, out_of_memory, rescue_plan, spec_from_request,
)
from batchsite.site import Site
from batchsite.sizing import blocked_hosts, right_size
from batchsite.triggers.round import BatchRoundTrigger
from batchsite.usage import ledger_usage, mark_out_of_memory, ran_units, ran_with, read_usage, summary_line

#: how a unit that succeeded in an earlier attempt of the round (before a narrowed rescue) shows
DONE_EARLIER = TaskStatus(state=JobState.DONE, native="DONE", exit_code=0,
                          reason="done in an earlier attempt of this round")


class BatchRoundOperator(BaseOperator):
    """Submit a round of work units (+ fan-in) to the site named by ``site_conn_id``.

    :param units: list of argv lists (index = position) or dicts ``{"index", "argv", "name"}``
    :param fanin: argv of the fan-in step (Slurm: ``afterok`` job; HTCondor: child node)
    :param round_request: a ``batchsite.rounds.RoundRequest`` or its JSON dump (typically the
        XCom of a planning task). Precedence, see ``RoundRequest``: a field set in the round
        request wins over the constructor argument, which wins over the site default.
    :param fail_on_failure: raise when units failed (default). Campaign DAGs set False and let
        their replan task decide (re-run only the failed units).
    :param watch_timeout: give up watching this long after ``execute`` submitted (or
        re-attached): an absolute deadline the trigger carries, not reset by re-deferring.
    """

    template_fields: Sequence[str] = ("site_conn_id", "round_label", "units", "fanin", "workdir", "env",
                                      "round_request")
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
        round_request: RoundRequest | dict[str, Any] | None = None,
        deferrable: bool = True,
        fail_on_failure: bool = True,
        rescue: dict[str, Any] | None = None,
        on_hold: dict[str, Any] | None = None,
        watch_timeout: timedelta | float | None = None,
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
        self.round_request = round_request
        self.deferrable = deferrable
        self.fail_on_failure = fail_on_failure
        self.rescue = rescue
        self.on_hold = on_hold
        self.watch_timeout = watch_timeout.total_seconds() if isinstance(watch_timeout, timedelta) else watch_timeout
        self._submission: Submission | None = None

    # ------------------------------------------------------------------ the round asked for
    def effective_request(self) -> RoundRequest:
        """The round request merged over the constructor arguments (validated here, in
        ``execute``: templated values are text until rendered)."""
        try:
            constructor = RoundRequest(
                units=self.units, fanin=self.fanin, label=self.round_label, round_index=self.round_index,
                workdir=self.workdir, cwd=self.cwd, throttle=self.throttle, retries_in_job=self.retries_in_job,
                resources=self.job_resources, fanin_resources=self.fanin_resources, env=self.env,
                rescue=self.rescue, on_hold=self.on_hold, fail_on_failure=self.fail_on_failure,
            )
            asked = RoundRequest.model_validate(self.round_request or {})
        except ValidationError as e:
            raise AirflowException(explain_validation(f"{self.task_id}: round request", e)) from None
        merged = asked.over(constructor)
        return merged if merged.label else merged.model_copy(update={"label": self.task_id})

    def build_spec(self, context: Any, site: Site, hook: BatchSiteHook, request: RoundRequest) -> RoundSpec:
        ti = context["ti"]
        key = job_key(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), request.round_index or 0)
        try:
            return spec_from_request(request, key=key, cfg=hook.config, site_path=site.path)
        except (ValueError, ValidationError) as e:
            raise AirflowException(f"{self.task_id}: {e}") from None

    def first_spec(self, context: Any, site: Site, hook: BatchSiteHook,
                   request: RoundRequest) -> tuple[RoundSpec, dict[str, Any]]:
        """What ``execute`` submits, and the ``RoundWatch`` numbers it starts with: the round
        as requested (a subclass submits a rescue of another task's round instead)."""
        return self.build_spec(context, site, hook, request), {}

    # ------------------------------------------------------------------ execution
    def execute(self, context: Any) -> dict[str, Any]:
        hook = BatchSiteHook(self.site_conn_id)
        cfg = hook.config
        if self.expected_scheduler and cfg.scheduler != self.expected_scheduler:
            raise AirflowException(
                f"{type(self).__name__} needs a {self.expected_scheduler} site, but connection "
                f"{self.site_conn_id!r} says scheduler={cfg.scheduler!r}; use BatchRoundOperator "
                "to run on any site"
            )
        request = self.effective_request()
        site = hook.get_site()
        try:
            spec, numbers = self.first_spec(context, site, hook, request)
            submission = site.submit(spec)
            self._submission = submission
            if submission.adopted and submission.attempt > 1:
                # a retried task found a rescue submitted before it: count on from it (max_rescues
                # bounds the round, not one try of the task), and know a fan-in-only rescue by its
                # index, which no unit has: its outcome is the fan-in's, never a unit's
                numbers = {**numbers, "rescues": numbers.get("rescues", 0) + submission.attempt - 1}
                if spec.fanin and submission.indices == [fanin_only_index(spec)]:
                    numbers["fanin_only"] = True
            verb = "re-attached to existing" if submission.adopted else "submitted"
            self.log.info("%s: %s round %s on site %s as job %s (workdir %s)", spec.label, verb,
                          submission.key, site.name, ",".join(submission.job_ids), submission.workdir)
            watch_state = RoundWatch.of(
                submission, site_conn_id=self.site_conn_id, label=spec.label,
                hold_after_seconds=(request.on_hold or HoldPolicy()).after_seconds,
                deadline=None if self.watch_timeout is None else time.time() + self.watch_timeout, **numbers)
            ledger_for_task(context, self.site_conn_id).submitted(spec, submission, attempt=watch_state.rescues)
            return self._watch(context, site, hook, request, submission, watch_state)
        finally:
            hook.close()

    def _watch(self, context: Any, site: Site, hook: BatchSiteHook, request: RoundRequest, submission: Submission,
               watch_state: RoundWatch) -> dict[str, Any]:
        """Check once; finish now, watch blocking, or defer to the triggerer."""
        status = site.status([submission])[submission.key]
        self.log.info("%s", status.progress_line(watch_state.label))
        ledger = ledger_for_task(context, self.site_conn_id)
        ledger.observed(submission.key, status)
        if status.finished:
            return self._finish(context, site, hook, request, submission, status, watch_state)
        if not self.deferrable:
            cfg = hook.config
            first_seen: dict = {}
            last_line = ""
            while not status.finished:
                time.sleep(cfg.poll_interval)
                status = apply_vanish_grace(site.status([submission])[submission.key], first_seen, time.monotonic(),
                                            cfg.vanish_grace)
                line = status.progress_line(watch_state.label)
                if line != last_line:
                    self.log.info("%s", line)
                    last_line = line
                    ledger.observed(submission.key, status)
            return self._finish(context, site, hook, request, submission, status, watch_state)
        self.defer(trigger=BatchRoundTrigger(**watch_state.model_dump(mode="json")), method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event:
            # resumed without a trigger event (e.g. a restarted task found itself "deferred"):
            # start over; execute() finds the submission record and re-attaches
            self.log.info("resumed without a trigger event: re-attaching through the submission record")
            return self.execute(context)
        try:
            watch_event = RoundWatchEvent.model_validate(event)
        except ValidationError as e:
            raise AirflowException(explain_validation(f"{self.task_id}: trigger event", e)) from None
        watch_state = watch_event.watch
        if watch_event.status in ("timeout", "error") or watch_event.round is None:
            raise AirflowException(f"{watch_state.label}: watching round {watch_state.round_key} stopped: "
                                   f"{watch_event.message}")
        hook = BatchSiteHook(self.site_conn_id)
        try:
            site = hook.get_site()
            submission = watch_state.submission(hook.config.scheduler)
            self._submission = submission
            request = self.effective_request()
            if watch_event.status == "held":
                return self._held(context, site, hook, request, submission, watch_event.round_status(), watch_state)
            return self._finish(context, site, hook, request, submission, watch_event.round_status(), watch_state)
        finally:
            hook.close()

    def _held(self, context: Any, site: Site, hook: BatchSiteHook, request: RoundRequest, submission: Submission,
              status: RoundStatus, watch_state: RoundWatch) -> dict[str, Any]:
        """Units held longer than on_hold.after_seconds: release them (up to max_releases
        times), then give up on them: the task fails with their HoldReason."""
        policy = request.on_hold or HoldPolicy()
        reasons = sorted({s.reason for s in status.units.values() if s.state is JobState.HELD and s.reason})
        held = sorted(i for i, s in status.units.items() if s.state is JobState.HELD)
        if watch_state.releases < policy.max_releases:
            out = site.release([submission])
            self.log.warning("%s: units %s held (HoldReason: %s): released (%s)", watch_state.label, held,
                             "; ".join(reasons) or "?", (out or "").strip()[:300])
            return self._watch(context, site, hook, request, submission,
                               watch_state.model_copy(update={"releases": watch_state.releases + 1}))
        raise AirflowException(
            f"{watch_state.label}: units {held} stay held (HoldReason: {'; '.join(reasons) or '?'}) after "
            f"{policy.max_releases} release(s); fix the cause and release them (condor_release / "
            f"scontrol release) or clear this task")

    def _finish(self, context: Any, site: Site, hook: BatchSiteHook, request: RoundRequest, submission: Submission,
                status: RoundStatus, watch_state: RoundWatch) -> dict[str, Any]:
        label = watch_state.label
        spec = self.build_spec(context, site, hook, request)
        if watch_state.fanin_only:
            # this attempt ran the fan-in alone, as its one unit: every unit was done before it
            ran = next(iter(status.units.values()))
            status = status.model_copy(update={"units": {i: DONE_EARLIER for i in spec.indices}, "fanin": ran})
        failed = status.failed_indices
        fanin_note = ""
        if status.fanin is not None and not status.fanin.state.terminal and failed:
            # afterok can never be satisfied: without this the fan-in stays PENDING forever
            why = status.fanin.reason or "a parent failed"
            fanin_only = submission.model_copy(
                update={"fanout_id": submission.fanin_id or submission.fanout_id, "fanin_id": None})
            try:
                site.cancel([fanin_only])
            except Exception as e:  # noqa: BLE001 - reporting the failure matters more
                self.log.warning("could not cancel the fan-in of %s: %s", submission.key, e)
            fanin_note = (f"fan-in {submission.fanin_id or '(in the local runner)'} cancelled: it could never start "
                          f"({why}). ")
            status = status.model_copy(update={"fanin": status.fanin.model_copy(
                update={"state": JobState.FAILED, "native": "CANCELLED", "reason": why})})
        # a narrowed rescue submits only the failed units: the others succeeded before it
        this_attempt = set(submission.indices) if not watch_state.fanin_only else set()
        done_earlier = {i: DONE_EARLIER for i in spec.indices if i not in this_attempt}
        # ONE usage command per round: sizing, ledger, the limits a rescue escalates from, and
        # units killed for their memory that the scheduler reports only as FAILED (OverMemoryKill)
        usage = read_usage(site, submission, expect=ran_units(status))
        status = mark_out_of_memory(status, usage)
        whole = status.model_copy(update={"units": {**done_earlier, **status.units}})
        decision = classify_failures(whole, request.rescue or RescuePolicy(), watch_state.rescues, label)
        ledger = ledger_for_task(context, self.site_conn_id)
        if decision.action != "success":
            ledger.decided(submission.key, decision.action, decision.message, decision.ratio)
        if decision.action == "rescue":
            try:
                return self._rescue(context, site, hook, request, spec, submission, status, whole, watch_state,
                                    decision.message, ran=ran_with(usage),
                                    exclude_hosts=blocked_hosts(usage, status))
            except CannotEscalate as e:
                decision = Decision(action="exhausted", ratio=decision.ratio, message=f"{label}: {e}")
                ledger.decided(submission.key, decision.action, decision.message, decision.ratio)
        result = self.round_result(site, submission, whole, watch_state, decision)
        sizing = right_size(usage, watch_state.raised(spec).resources, site.backend.name)
        self.log.info("%s: %s; %s", label, summary_line(usage), sizing.message())
        if usage.units:
            result = result.model_copy(update={"sizing": sizing.model_dump(mode="json")})
            ledger.sized(submission.key, sizing.message(), sizing.model_dump(mode="json"))
        ledger.finished(site, submission, whole, decision.action, usage=ledger_usage(usage))
        self.log.info("%s", whole.progress_line(label))
        if not whole.succeeded:
            self._log_failure_tails(site, submission, whole, label,
                                    str(fanin_only_index(spec)) if watch_state.fanin_only else FANIN)
            text = self._failure_text(label, submission, status, whole, fanin_note, decision.message)
            if request.fail_on_failure is not False:
                raise AirflowException(text)
            self.log.error("%s", text)
        return result.model_dump(mode="json")

    @staticmethod
    def round_result(site: Site, submission: Submission, whole: RoundStatus, watch_state: RoundWatch,
                     decision: Decision) -> RoundResult:
        fanin = whole.fanin
        return RoundResult(
            key=submission.key, job_id=submission.fanout_id, fanin_id=submission.fanin_id, site=site.name,
            workdir=submission.workdir, adopted=submission.adopted, rescues=watch_state.rescues,
            timed_out=index_ranges(i for i, s in whole.units.items() if s.timed_out),
            counts=whole.counts(), failed=index_ranges(whole.failed_indices),
            fanin_state=fanin.state.value if fanin else None,
            succeeded=whole.succeeded, decision=decision.action, message=decision.message,
            failures={str(i): describe_failure(whole.units[i]) for i in whole.failed_indices[:50]},
            fanin_failure=describe_failure(fanin) if fanin is not None and fanin.state is JobState.FAILED else None,
            oom=index_ranges(i for i in whole.failed_indices if out_of_memory(whole.units[i])),
            fanin_native=fanin.native if fanin else None, fanin_timed_out=bool(fanin and fanin.timed_out),
        )

    def _log_failure_tails(self, site: Site, submission: Submission, whole: RoundStatus, label: str,
                           fanin_log: str) -> None:
        """The last lines of the failed units' stderr, in the task log (ONE remote command)."""
        try:
            text = failure_tails(site, submission, whole, label, fanin_log=fanin_log)
        except Exception as e:  # noqa: BLE001 - the round's failure is reported below either way
            self.log.warning("%s: could not read the failed units' stderr on the site: %s", label, e)
            return
        if text:
            self.log.error("%s", text)

    @staticmethod
    def _failure_text(label: str, submission: Submission, status: RoundStatus, whole: RoundStatus,
                      fanin_note: str, decision_message: str) -> str:
        failed = whole.failed_indices
        where = f"{submission.workdir}/logs/"
        if status.fanin is not None and status.fanin.state is JobState.FAILED and not failed:
            return (f"{label}: fan-in failed ({describe_failure(status.fanin)}); logs under {where}. "
                    f"{decision_message}")
        detail = "; ".join(f"index {i}: {describe_failure(whole.units[i])}" for i in failed[:20])
        return (f"{label}: {fanin_note}{len(failed)} of {len(whole.units)} units failed: {failed} "
                f"[{detail}]; logs under {where} (files *_<index>.out/.err). {decision_message}")

    def _rescue(self, context: Any, site: Site, hook: BatchSiteHook, request: RoundRequest, spec: RoundSpec,
                submission: Submission, status: RoundStatus, whole: RoundStatus, watch_state: RoundWatch,
                why: str, ran: RanWith | None = None, exclude_hosts: Sequence[str] = ()) -> dict[str, Any]:
        """``ran``: the limits the attempt's jobs ran with, as the scheduler reported them (the
        round's usage command); None: read them now. ``exclude_hosts``: where the rescue must
        not run (``sizing.blocked_hosts``)."""
        # from the resources the attempt that just ended ran with: the request's, as earlier rescues raised them
        current = watch_state.raised(spec)
        starved = any(needs_more(s) for s in [*whole.units.values(), *([whole.fanin] if whole.fanin else [])])
        if ran is None and starved:
            ran = read_ran_with(site, submission)
        # DAGMan's rescue DAG reruns only the failed nodes of the same DAG itself
        narrow = site.backend.name != "htcondor"
        plan = rescue_plan(current, whole, scheduler=site.backend.name, narrow=narrow, exclude_hosts=exclude_hosts,
                           **({"ran": ran} if ran is not None else {}))
        reason = "; ".join([why, *plan.notes])
        self.log.warning("%s", reason)
        new_submission = site.resubmit(plan.spec, status, reason=reason)
        self._submission = new_submission
        ledger_for_task(context, self.site_conn_id).submitted(plan.spec, new_submission,
                                                              attempt=watch_state.rescues + 1, reason=reason)
        self.log.info("%s: rescue round submitted as job %s", watch_state.label, ",".join(new_submission.job_ids))
        new_state = watch_state.moved_to(new_submission, rescues=watch_state.rescues + 1, **RoundWatch.raises(plan))
        return self._watch(context, site, hook, request, new_submission, new_state)

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

