"""The round loop every campaign DAG shares: the task ids and wiring it builds."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow.providers.standard.operators.hitl import HITLOperator

from batchsite.operators.round import BatchRoundOperator
from batchsite.operators.round_loop import round_loop
from batchsite.rounds import REVIEW_ACCEPT, REVIEW_OPTIONS


def prepare(partition: dict, setup: dict) -> dict:
    return {"units": [["true"]]}


def collect(partition: dict, round_request: dict, submitted: dict, setup: dict) -> dict:
    return partition


def replan(results: list[dict], setup: dict, round_no: int) -> list[dict]:
    return []


def build(max_rounds: int = 2, **kw) -> DAG:
    with DAG("loop_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        @task
        def setup() -> dict:
            return {}

        @task
        def first(setup: dict) -> list[dict]:
            return [{"step": 1}]

        s = setup()
        round_loop(setup=s, first=first(s), prepare=prepare, collect=collect, replan=replan,
                   max_rounds=max_rounds, **kw)
    return dag


def test_two_rounds_build_the_expected_tasks():
    dag = build()
    per_round = ["prepare", "submit", "review", "after_review", "collect"]
    rounds = {f"round_{r:02d}.{t}" for r in (1, 2) for t in per_round}
    expected = {"setup", "first", "replan_01", "replan_02"} | rounds
    assert set(dag.task_ids) == expected
    submit = dag.get_task("round_02.submit")
    assert isinstance(submit, BatchRoundOperator) and submit.fail_on_failure is False
    # each round is prepared from the previous replan, and its request is the prepare task's XCom
    assert dag.get_task("round_02.prepare").upstream_task_ids >= {"replan_01"}
    assert "round_02.prepare" in submit.upstream_task_ids
    assert dag.get_task("replan_02").upstream_task_ids == {"round_02.collect", "setup"}
    # the review: a human-in-the-loop task on submit's result; its outcome reaches collect,
    # which runs whether or not a review happened (skipped) but not after an abort (failed)
    review, after = dag.get_task("round_02.review"), dag.get_task("round_02.after_review")
    assert isinstance(review, HITLOperator) and review.options == list(REVIEW_OPTIONS)
    assert review.defaults == [REVIEW_ACCEPT] and review.response_timeout is not None
    assert review.upstream_task_ids == {"round_02.submit"}
    assert after.upstream_task_ids >= {"round_02.review", "round_02.submit"} and after.fail_on_failure is False
    collect = dag.get_task("round_02.collect")
    assert collect.trigger_rule == "none_failed" and "round_02.after_review" in collect.upstream_task_ids


def test_group_names_follow_the_campaign():
    dag = build(group_name=lambda r: f"iter{r:02d}")
    assert {"iter01.submit", "iter02.collect"} <= set(dag.task_ids)


def test_the_loop_carries_a_rounds_sizing_to_the_next_prepare_and_hides_it_from_the_campaign():
    from batchsite.operators.round_loop import SIZING_KEY, carry_sizing, sized_request, split_sizing
    from batchsite.sizing import SizingDecision, SizingInputs

    decision = SizingDecision(inputs=SizingInputs(measured_units=4, percentile=95, peak_rss_mb=413.0, requested_cpus=1),
                              mem_mb=496, time_minutes=1, notes=["memory 300 -> 496 MB"])
    nxt = carry_sizing([{"step": 2}, {"step": 2, "shift": 0.3}], decision)
    assert all(p[SIZING_KEY]["mem_mb"] == 496 for p in nxt)
    assert carry_sizing([{"step": 2}], None) == [{"step": 2}]  # nothing measured: nothing carried
    partition, carried = split_sizing(nxt[1])
    assert partition == {"step": 2, "shift": 0.3} and carried == decision
    request = {"units": [["true"]], "resources": {"mem_mb": None, "time_minutes": 30}}
    assert sized_request(request, carried, "off") is request
    sized = sized_request(request, carried, "memory")
    assert sized["resources"]["mem_mb"] == 496 and sized["resources"]["time_minutes"] == 30
    assert sized_request({"units": [["true"]]}, carried, "all")["resources"]["time_minutes"] == 1
