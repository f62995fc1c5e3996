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

Right-sizing (WMS2's adaptive rounds): each round's result carries the sizing measured from
its units (``RoundResult.sizing``); the loop hands the most demanding one to the next round's
partitions under ``SIZING_KEY`` (the campaign's own collect, replan and prepare never see
that key), and the next prepare fills it into the unit resources the campaign left unset,
as far as the site's ``right_size`` extra allows (``off`` by default, ``memory``, ``all``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context, task, task_group

from batchsite.hooks.connection import load_site_config
from batchsite.hooks.ledger import record_campaign_failed, record_replan
from batchsite.operators.review import ReviewedRoundOperator, RoundReviewOperator
from batchsite.operators.round import BatchRoundOperator
from batchsite.rounds import REVIEW_ACCEPT, ResourceRequest
from batchsite.sizing import SizingDecision, fill_unset, most_demanding

#: the partition / result key under which the loop carries a round's measured sizing (a
#: ``SizingDecision`` dump) to the next round
SIZING_KEY = "_batchsite_sizing"


#: what a campaign's replan returns: the next partitions, or them and the reason (which the
#: campaign ledger records with the decision's inputs)
Replanned = list[dict] | tuple[list[dict], str]


def split_sizing(item: dict) -> tuple[dict, SizingDecision | None]:
    """A partition or collected result without the loop's sizing key, and the sizing it carried."""
    sizing = item.get(SIZING_KEY)
    rest = {k: v for k, v in item.items() if k != SIZING_KEY}
    return rest, SizingDecision.model_validate(sizing) if sizing else None


def sized_request(request: dict, decision: SizingDecision | None, scope: str) -> dict:
    """The campaign's round request with the previous round's measured sizing in the unit
    resources it left unset (``sizing.fill_unset``); unchanged for scope ``off`` or nothing measured."""
    if decision is None or scope == "off":
        return request
    asked = request.get("resources")
    filled = fill_unset(ResourceRequest.model_validate(asked) if asked else None, decision, scope)
    return {**request, "resources": filled.model_dump(mode="json")}


def carry_sizing(planned: list[dict], decision: SizingDecision | None) -> list[dict]:
    """The next partitions, carrying this round's most demanding sizing (if any was measured)."""
    if decision is None:
        return planned
    return [{**p, SIZING_KEY: decision.model_dump(mode="json")} for p in planned]


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
    @task(task_id="prepare")
    def prepare_t(partition: dict, setup: dict) -> dict:
        partition, decision = split_sizing(partition)
        request = prepare(partition, setup)
        if decision is None:
            return request
        context = get_current_context()
        scope = load_site_config(context["task"].render_template(site_conn_id, context)).right_size
        sized = sized_request(request, decision, scope)
        print(f"right-sizing ({scope}) from the previous round's measured usage: {'; '.join(decision.notes)}; "
              f"this round's unit resources: {sized.get('resources')}")
        return sized
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
        outcome = reviewed or submitted
        result = collect(split_sizing(partition)[0], round_request, outcome, setup)
        sizing = (outcome or {}).get("sizing")
        return {**result, SIZING_KEY: sizing} if sizing else result

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
        split = [split_sizing(r) for r in results]
        results = [r for r, _ in split]  # what the campaign's replan sees: its own results
        try:
            planned = replan(results, setup, round_no)
        except Exception as e:
            record_campaign_failed(f"replan after round {round_no}: {e}")
            raise
        nxt, reason = planned if isinstance(planned, tuple) else (planned, "")
        nxt = carry_sizing(nxt, most_demanding([d for _, d in split]))
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
