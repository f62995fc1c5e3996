"""The round loop every campaign DAG shares, written once.

Airflow DAGs have no cycles, so an iterative campaign is unrolled into ``max_rounds`` task
groups. Group N is mapped over the partitions that ``replan_(N-1)`` emitted:

    prepare(partition) -> submit (BatchRoundOperator, deferred) -> collect(partition)

and ``replan_N`` turns the collected results into the next partitions; an empty list stops
the campaign, and every later group is skipped (mapped over nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import task, task_group

from batchsite.operators.round import BatchRoundOperator


def round_loop(
    *,
    setup: Any,
    first: Any,
    prepare: Callable[[dict, dict], dict],
    collect: Callable[[dict, dict, dict, dict], dict],
    replan: Callable[[list[dict], dict, int], list[dict]],
    max_rounds: int,
    group_name: Callable[[int], str] = lambda r: f"round_{r:02d}",
    site_conn_id: str = "{{ params.site_conn_id }}",
    operator_kwargs: dict[str, Any] | None = None,
) -> list[Any]:
    """Build the unrolled loop; returns the replan outputs (for the final report's upstream)."""
    prepare_t = task(task_id="prepare")(prepare)
    collect_t = task(task_id="collect")(collect)

    @task_group
    def run_partition(partition: dict, setup: dict):
        round_request = prepare_t(partition, setup)
        submit = BatchRoundOperator(
            task_id="submit",
            site_conn_id=site_conn_id,
            round_request=round_request,
            fail_on_failure=False,  # the campaign's replan decides what a failed unit means
            retries=2,
            retry_delay=timedelta(seconds=5),  # a retry re-attaches; it never resubmits
            **(operator_kwargs or {}),
        )
        return collect_t(partition, round_request, submit.output, setup)

    @task
    def replan_t(results: Any, setup: dict, round_no: int) -> list[dict]:
        # a mapped group with one instance hands over the bare value, not a list
        results = [results] if isinstance(results, dict) else list(results)
        nxt = replan(results, setup, round_no)
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
