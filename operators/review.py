"""The review of a round whose failures need a person: an Airflow human-in-the-loop task, and
the task that does what was chosen.

In the campaign round loop (``round_loop``), after ``submit`` reports ``decision="review"``
(a failure ratio between ``auto_below`` and ``review_below``):

* ``review`` (``RoundReviewOperator``, the standard provider's ``HITLOperator``) is skipped
  at once for every other round (no request, no remote command); for this one it asks
  "rescue the failed units / accept the round as it is / abort the campaign", showing the
  failed units, what the scheduler said about each and the last lines of their stderr (read
  from the site in one command); without an answer within ``response_timeout`` its
  ``defaults`` are taken;
* ``after_review`` (``ReviewedRoundOperator``) then: accept -> hands the round on as it is;
  abort -> fails the campaign, naming who chose it; rescue -> submits ONLY the failed units
  (or the fan-in alone, when only it failed) as a round of its own: its own job key (from its
  own task id), so the finished submission of ``submit`` is never adopted again, and a retry
  of this task re-attaches to its rescue, never submits a second one. Units killed at their
  time or memory limit get more (``rounds.rescue_plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from pydantic import ValidationError

from batchsite.campaign.common import explain_validation
from batchsite.hooks.site import BatchSiteHook, site_from_conn_id
from batchsite.model import Submission
from batchsite.operators.round import BatchRoundOperator
from batchsite.roundinfo import read_log_tails, read_ran_with
from batchsite.rounds import (
    CannotEscalate, REVIEW_ABORT, REVIEW_ACCEPT, REVIEW_OPTIONS, REVIEW_UNITS_SHOWN, RoundRequest, RoundResult,
    RoundWatch, rescue_plan, review_body, review_subject,
)
from batchsite.site import Site


def _result(value: Any, task_id: str) -> RoundResult:
    try:
        return RoundResult.model_validate(value)
    except ValidationError as e:
        raise AirflowException(explain_validation(f"{task_id}: the reviewed round's result", e)) from None


def _reviewed_submission(result: RoundResult, scheduler: str) -> Submission:
    """Enough of the reviewed round's submission to read its logs and limits (not to watch it)."""
    return Submission(key=result.key, scheduler=scheduler, workdir=result.workdir,  # type: ignore[arg-type]
                      indices=result.failed_indices, fanout_id=result.job_id, fanin_id=result.fanin_id)


def round_label(context: Any) -> str:
    """``round_01[2]``: the task group of a mapped round and its map index."""
    ti = context["ti"]
    group = ti.task_id.rsplit(".", 1)[0]
    index = getattr(ti, "map_index", -1)
    return group if index is None or index < 0 else f"{group}[{index}]"


class RoundReviewOperator(HITLOperator):
    """Ask a person what to do with a round that stopped for review (see the module docstring).

    :param round_result: the ``RoundResult`` of the reviewed round (``submit.output``)
    :param default: the choice taken when nobody answers within ``response_timeout``
    """

    template_fields: Sequence[str] = (*HITLOperator.template_fields, "site_conn_id", "round_result")
    ui_color = "#ffe8b0"

    def __init__(self, *, site_conn_id: str, round_result: Any, default: str = REVIEW_ACCEPT,
                 response_timeout: timedelta | None = timedelta(hours=24), **kwargs: Any):
        if default not in REVIEW_OPTIONS:
            raise ValueError(f"default={default!r}: use one of {list(REVIEW_OPTIONS)}")
        super().__init__(subject="Review of a batch round", options=list(REVIEW_OPTIONS), defaults=[default],
                         response_timeout=response_timeout, **kwargs)
        self.site_conn_id = site_conn_id
        self.round_result = round_result

    def execute(self, context: Any) -> Any:
        result = _result(self.round_result, self.task_id)
        label = round_label(context)
        if result.decision != "review":
            # nothing to ask: no request is written, nothing is read from the site, and
            # after_review (all_success) is skipped with this task
            raise AirflowSkipException(f"{label}: round ended with decision {result.decision!r}: no review needed")
        names = [str(i) for i in result.failed_indices[:REVIEW_UNITS_SHOWN]]
        names += ["fanin"] if result.fanin_failure else []
        site = site_from_conn_id(self.site_conn_id)
        try:
            tails = read_log_tails(site, _reviewed_submission(result, site.backend.name), names)
        finally:
            site.close()
        self.subject = review_subject(result, label)
        self.body = review_body(result, tails)
        self.log.info("asking for a review: %s\n%s", self.subject, self.body)
        return super().execute(context)


def chosen(review: Any) -> tuple[str, str]:
    """(the option chosen, by whom) from the review task's XCom."""
    options = (review or {}).get("chosen_options") or []
    if len(options) != 1 or options[0] not in REVIEW_OPTIONS:
        raise AirflowException(f"the review answered {options!r}; expected one of {list(REVIEW_OPTIONS)}")
    user = (review or {}).get("responded_by_user")
    who = f"{user.get('name') or user.get('id')}" if isinstance(user, dict) else "nobody (the timeout's default)"
    return options[0], who


class ReviewedRoundOperator(BatchRoundOperator):
    """Do what the review chose (see the module docstring). Takes the operator arguments of the
    reviewed round's ``submit`` (``round_request`` and the rest) plus:

    :param submitted: the reviewed round's ``RoundResult`` (``submit.output``)
    :param review: the review task's answer (``review.output``)
    """

    template_fields: Sequence[str] = (*BatchRoundOperator.template_fields, "submitted", "review")

    def __init__(self, *, submitted: Any, review: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.submitted = submitted
        self.review = review

    def execute(self, context: Any) -> dict[str, Any]:
        result = _result(self.submitted, self.task_id)
        choice, who = chosen(self.review)
        label = round_label(context)
        if choice == REVIEW_ABORT:
            raise AirflowFailException(
                f"{label}: campaign aborted in review by {who}: {result.message or result.failed_indices}; "
                f"logs under {result.workdir}/logs/")
        if choice == REVIEW_ACCEPT:
            self.log.warning("%s: round accepted as it is by %s: units %s stay failed", label, who,
                             result.failed_indices)
            return result.model_copy(update={
                "decision": "accepted", "message": f"accepted in review by {who}: {result.message}"}
            ).model_dump(mode="json")
        self.log.warning("%s: rescue chosen in review by %s: units %s%s", label, who, result.failed_indices,
                         " and the fan-in" if result.fanin_failure else "")
        return super().execute(context)

    def first_spec(self, context: Any, site: Site, hook: BatchSiteHook,
                   request: RoundRequest) -> tuple[Any, dict[str, Any]]:
        """The rescue of the reviewed round, under this task's own key: only what failed."""
        result = _result(self.submitted, self.task_id)
        spec = self.build_spec(context, site, hook, request)
        ended = result.as_status(spec.indices).model_copy(update={"key": spec.key})
        starved = bool(result.timed_out or result.oom or result.fanin_timed_out
                       or result.fanin_native == "OUT_OF_MEMORY")
        ran = read_ran_with(site, _reviewed_submission(result, site.backend.name)) if starved else None
        try:
            plan = rescue_plan(spec, ended, scheduler=site.backend.name, narrow=True,
                               **({"ran": ran} if ran is not None else {}))
        except CannotEscalate as e:
            raise AirflowFailException(f"{round_label(context)}: rescue chosen in review, but {e}") from None
        self.log.warning("%s: %s", round_label(context), "; ".join(plan.notes))
        return plan.spec, {"rescues": result.rescues + 1, **RoundWatch.raises(plan)}
