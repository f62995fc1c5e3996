"""Watch a round that is already submitted (by batchsite or by hand), deferred."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException
from pydantic import ValidationError

from batchsite.campaign.common import explain_validation
from batchsite.hooks.site import BatchSiteHook
from batchsite.model import JobState, RoundStatus, Submission, index_ranges
from batchsite.rounds import RoundWatch, RoundWatchEvent
from batchsite.triggers.round import BatchRoundTrigger


class BatchJobSensor(BaseSensorOperator):
    """Wait until a submitted round is finished.

    Give either ``submission`` (the ``submission`` dict an operator returned, or its XCom) or
    ``job_id`` + ``indices`` (+ ``workdir`` where exit files are written, if any) for an array
    someone submitted by hand, e.g. with the group's own ``run_rg.sh``. Deferred, the watch
    ends at the sensor's ``timeout`` (an absolute deadline set when it first defers).
    """

    template_fields: Sequence[str] = ("site_conn_id", "job_id", "submission", "workdir")
    expected_scheduler: str | None = None

    def __init__(self, *, site_conn_id: str, job_id: str | None = None, indices: Sequence[int] | None = None,
                 fanin_id: str | None = None, workdir: str | None = None,
                 submission: dict[str, Any] | None = None, deferrable: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.site_conn_id, self.job_id, self.indices = site_conn_id, job_id, indices
        self.fanin_id, self.workdir, self.submission = fanin_id, workdir, submission
        self.deferrable = deferrable

    def _submission_of(self, hook: BatchSiteHook) -> Submission:
        if self.submission:
            return Submission.model_validate(self.submission)
        if not self.job_id or not self.indices:
            raise AirflowException(f"{self.task_id}: give `submission`, or `job_id` and `indices`")
        cfg = hook.config
        try:
            return Submission(key=f"job-{self.job_id}", scheduler=cfg.scheduler, indices=list(self.indices),
                              workdir=self.workdir or f"{cfg.remote_root}/.batchsite/none",
                              fanout_id=str(self.job_id), fanin_id=self.fanin_id)
        except ValidationError as e:
            # the sensor's own field names (job_id, fanin_id), not the model's (fanout_id)
            raise AirflowException(explain_validation(f"{self.task_id}: job_id / fanin_id / workdir", e)) from None

    def _check_scheduler(self, hook: BatchSiteHook) -> None:
        if self.expected_scheduler and hook.config.scheduler != self.expected_scheduler:
            raise AirflowException(f"{type(self).__name__} needs a {self.expected_scheduler} site, but connection "
                                   f"{self.site_conn_id!r} says scheduler={hook.config.scheduler!r}")

    def poke(self, context: Any) -> bool:
        hook = BatchSiteHook(self.site_conn_id)
        try:
            self._check_scheduler(hook)
            submission = self._submission_of(hook)
            status = hook.get_site().status([submission])[submission.key]
            self.log.info("%s", status.progress_line(self.task_id))
            self._raise_if_failed(status, submission.fanout_id)
            return status.finished
        finally:
            hook.close()

    def _raise_if_failed(self, status: RoundStatus, job_id: str) -> None:
        if status.finished and not status.succeeded:
            raise AirflowException(f"{self.task_id}: job {job_id} failed indices {status.failed_indices}")

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        hook = BatchSiteHook(self.site_conn_id)
        try:
            watch_state = RoundWatch.of(self._submission_of(hook), site_conn_id=self.site_conn_id,
                                        label=self.task_id, deadline=time.time() + float(self.timeout))
        finally:
            hook.close()
        self.defer(trigger=BatchRoundTrigger(**watch_state.model_dump(mode="json")), method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event:  # resumed without an event: look again
            return self.execute(context)
        try:
            watch_event = RoundWatchEvent.model_validate(event)
        except ValidationError as e:
            raise AirflowException(explain_validation(f"{self.task_id}: trigger event", e)) from None
        if watch_event.status == "held" and watch_event.round is not None:
            raise AirflowException(self._held_text(watch_event))
        if watch_event.status != "finished" or watch_event.round is None:
            raise AirflowException(f"{self.task_id}: {watch_event.status}: {watch_event.message or 'no detail'}")
        status = watch_event.round_status()
        self._raise_if_failed(status, watch_event.watch.fanout_id)
        return {"counts": status.counts(), "failed": index_ranges(status.failed_indices)}


    def _held_text(self, watch_event: RoundWatchEvent) -> str:
        """Which units are held, why (HoldReason / Slurm's reason) and what to do: the
        trigger's held event carries the status, not a message."""
        status = watch_event.round_status()
        held = {i: s for i, s in status.units.items() if s.state is JobState.HELD}
        reasons = sorted({s.reason for s in held.values() if s.reason})
        watch = watch_event.watch
        return (f"{self.task_id}: units {index_ranges(held)} of job {watch.fanout_id} held for more than "
                f"{watch.hold_after_seconds:g} s (reason: {'; '.join(reasons) or 'not given by the scheduler'}); "
                "fix the cause and release them (condor_release / scontrol release), or remove them")


class SlurmJobSensor(BatchJobSensor):
    expected_scheduler = "slurm"


class CondorDagSensor(BatchJobSensor):
    """Wait for a DAGMan DAG (``job_id`` = the DAGMan cluster id, ``fanin_id`` = "fanin" if the
    DAG has a fan-in node, ``workdir`` = the DAG directory)."""

    expected_scheduler = "htcondor"
