"""The round loop every campaign DAG shares, written once.

Airflow DAGs have no cycles, so an iterative campaign is unrolled into ``max_rounds`` task
groups. Group N is mapped over the partitions that ``replan_(N-1)`` emitted:

    prepare(partition) -> submit (BatchRoundOperator, deferred) ---------------> collect(partition)
                              \\-> review (human in the loop) -> after_review --/

and ``replan_N`` turns the collected results into the next partitions; an empty list stops
the campaign, and every later group is skipped (mapped over nothing).

A round whose failure ratio asks for a person (``decision="review"``, see
``batchsite.rounds.classify_failures``) is not failed: ``review`` asks "rescue / accept /
abort" (``operators/review.py``) and ``after_review`` does it; ``collect`` then reads the
rescue's result, or the round as it was. For every other round ``review`` skips itself at
once (no request, no remote command) and ``after_review`` is skipped with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import task, task_group

from batchsite.hooks.ledger import record_campaign_failed, record_replan
from batchsite.operators.review import ReviewedRoundOperator, RoundReviewOperator
from batchsite.operators.round import BatchRoundOperator
from batchsite.rounds import REVIEW_ACCEPT


#: what a campaign's replan returns: the next partitions, or them and the reason (which the
#: campaign ledger records with the decision's inputs)
Replanned = list[dict] | tuple[list[dict], str]


def round_loop(
    *,
    setup: Any,
    first: Any,
    prepare: Callable[[dict, dict], dict],
    collect: Callable[[dict, dict, dict, dict], dict],
    replan: Callable[[list[dict], dict, int], Replanned],
    max_rounds: int,
    group_name: Callable[[int], str] = lambda r: f"round_{r:02d}",
    site_conn_id: str = "{{ params.site_conn_id }}",
    operator_kwargs: dict[str, Any] | None = None,
    review_timeout: timedelta | None = timedelta(hours=24),
    review_default: str = REVIEW_ACCEPT,
) -> list[Any]:
    """Build the unrolled loop; returns the replan outputs (for the final report's upstream).

    ``review_timeout`` / ``review_default``: how long a review waits for an answer, and the
    choice taken then (default: accept the round, so the campaign's own replan decides what
    the missing units mean, as it would for any partial round).
    """
    prepare_t = task(task_id="prepare")(prepare)
    round_kwargs: dict[str, Any] = {
        "site_conn_id": site_conn_id,
        "fail_on_failure": False,  # the campaign's replan decides what a failed unit means
        "retries": 2,
        "retry_delay": timedelta(seconds=5),  # a retry re-attaches; it never resubmits
        **(operator_kwargs or {}),
    }

    @task(task_id="collect", trigger_rule="none_failed")
    def collect_t(partition: dict, round_request: dict, submitted: dict, reviewed: dict | None, setup: dict) -> dict:
        # after a review, its outcome (the rescue's result, or the round accepted) is the round's
        return collect(partition, round_request, reviewed or submitted, setup)

    @task_group
    def run_partition(partition: dict, setup: dict):
        round_request = prepare_t(partition, setup)
        submit = BatchRoundOperator(task_id="submit", round_request=round_request, **round_kwargs)
        review = RoundReviewOperator(task_id="review", site_conn_id=site_conn_id, round_result=submit.output,
                                     default=review_default, response_timeout=review_timeout)
        after = ReviewedRoundOperator(task_id="after_review", round_request=round_request, submitted=submit.output,
                                      review=review.output, **round_kwargs)
        return collect_t(partition, round_request, submit.output, after.output, setup)

    @task
    def replan_t(results: Any, setup: dict, round_no: int) -> list[dict]:
        # a mapped group with one instance hands over the bare value, not a list
        results = [results] if isinstance(results, dict) else list(results)
        try:
            planned = replan(results, setup, round_no)
        except Exception as e:
            record_campaign_failed(f"replan after round {round_no}: {e}")
            raise
        nxt, reason = planned if isinstance(planned, tuple) else (planned, "")
        record_replan(round_no=round_no, submit_task_id=f"{group_name(round_no)}.submit", results=results,
                      next_partitions=nxt, reason=reason)
        if nxt and round_no >= max_rounds:
            raise RuntimeError(f"the campaign needs more than the {max_rounds} rounds this DAG unrolls")
        return nxt

    parts = first
    replans = []
    for r in range(1, max_rounds + 1):
        done = run_partition.override(group_id=group_name(r)).partial(setup=setup).expand(partition=parts)
        parts = replan_t.override(task_id=f"replan_{r:02d}")(done, setup, r)
        replans.append(parts)
    return replans
