"""Watch a round that is already submitted (by batchsite or by hand), deferred."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException

from batchsite.hooks.site import BatchSiteHook
from batchsite.model import RoundStatus, Submission
from batchsite.triggers.round import BatchRoundTrigger


class BatchJobSensor(BaseSensorOperator):
    """Wait until a submitted round is finished.

    Give either ``submission`` (the ``submission`` dict an operator returned, or its XCom) or
    ``job_id`` + ``indices`` (+ ``workdir`` where exit files are written, if any) for an array
    someone submitted by hand, e.g. with the group's own ``run_rg.sh``.
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

    def _sub(self, hook: BatchSiteHook) -> Submission:
        if self.submission:
            return Submission.model_validate(self.submission)
        if not self.job_id or not self.indices:
            raise AirflowException(f"{self.task_id}: give `submission`, or `job_id` and `indices`")
        cfg = hook.config
        return Submission(key=f"job-{self.job_id}", scheduler=cfg.scheduler, indices=list(self.indices),
                          workdir=self.workdir or f"{cfg.remote_root}/.batchsite/none",
                          fanout_id=str(self.job_id), fanin_id=self.fanin_id)

    def poke(self, context: Any) -> bool:
        hook = BatchSiteHook(self.site_conn_id)
        try:
            sub = self._sub(hook)
            st = hook.get_site().status([sub])[sub.key]
            self.log.info("%s", st.progress_line(self.task_id))
            if st.finished and not st.succeeded:
                raise AirflowException(f"{self.task_id}: job {sub.fanout_id} failed indices {st.failed_indices}")
            return st.finished
        finally:
            hook.close()

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        hook = BatchSiteHook(self.site_conn_id)
        cfg, sub = hook.config, self._sub(hook)
        if self.expected_scheduler and cfg.scheduler != self.expected_scheduler:
            raise AirflowException(f"{type(self).__name__} needs a {self.expected_scheduler} site")
        self.defer(trigger=BatchRoundTrigger(cfg.public_dict(), sub.model_dump(mode="json"), self.task_id),
                   method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event:  # resumed without an event: look again
            return self.execute(context)
        if event.get("status") != "finished":
            raise AirflowException(f"{self.task_id}: {event.get('message')}")
        st = RoundStatus.model_validate(event["round"])
        if not st.succeeded:
            raise AirflowException(f"{self.task_id}: failed indices {st.failed_indices}")
        return {"counts": st.counts(), "states": {str(i): s.state.value for i, s in st.units.items()}}


class SlurmJobSensor(BatchJobSensor):
    expected_scheduler = "slurm"


class CondorDagSensor(BatchJobSensor):
    """Wait for a DAGMan DAG (``job_id`` = the DAGMan cluster id, ``fanin_id`` = "fanin" if the
    DAG has a fan-in node, ``workdir`` = the DAG directory)."""

    expected_scheduler = "htcondor"
