"""BatchRoundOperator at its seams: execute() defers with a flat trigger, execute_complete()
finishes, rescues (re-deferring with only small numbers carried) and fails clearly.

The ``local`` site on a temporary root, real processes; the trigger's own run() produces
the events.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from batchsite.operators.round import BatchRoundOperator
from batchsite.rounds import RoundWatch
from batchsite.triggers.round import BatchRoundTrigger


@dataclass
class TaskIdentity:
    """The fields of a task instance the operator reads (its job key comes from them)."""

    dag_id: str = "unit_dag"
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    task_id: str = "submit"
    map_index: int = -1


def context(**ti) -> dict:
    return {"ti": TaskIdentity(**ti)}


def deferred(call) -> BatchRoundTrigger:
    with pytest.raises(TaskDeferred) as e:
        call()
    assert e.value.method_name == "execute_complete"
    return e.value.trigger


def event_of(trigger: BatchRoundTrigger, timeout: float = 60) -> dict:
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(first(), timeout))


def test_defers_then_completes(local_root):
    op = BatchRoundOperator(task_id="submit", site_conn_id="local", units=[["sh", "-c", "sleep 0.5"]] * 2,
                            fanin=["true"], round_request={"label": "asked", "throttle": 1}, watch_timeout=600)
    trigger = deferred(lambda: op.execute(context()))
    watch = RoundWatch.model_validate(trigger.serialize()[1])
    assert watch.site_conn_id == "local" and watch.label == "asked"  # the request's label won
    assert watch.indices == "0-1" and watch.rescues == 0
    assert 590 < watch.deadline - time.time() <= 600
    result = op.execute_complete(context(), event_of(trigger))
    assert result["succeeded"] and result["decision"] == "success" and result["counts"]["done"] == 2
    assert result["failed"] == "" and result["timed_out"] == "" and "states" not in result
    assert result["key"] == watch.round_key and result["fanin_state"] == "done"


def test_a_rescue_redefers_with_only_the_failed_units(local_root, tmp_path):
    # units 1 and 3 fail on their first run only
    flaky = f'sleep 0.3; [ -e {tmp_path}/ok_$0 ] && exit 0; case $0 in 1|3) touch {tmp_path}/ok_$0; exit 3;; esac'
    op = BatchRoundOperator(task_id="flaky", site_conn_id="local",
                            units=[["sh", "-c", flaky, str(i)] for i in range(6)],
                            rescue={"auto_below": 0.5, "review_below": 0.9, "max_rescues": 1})
    first = deferred(lambda: op.execute(context(task_id="flaky")))
    rescue = deferred(lambda: op.execute_complete(context(task_id="flaky"), event_of(first)))
    watch = RoundWatch.model_validate(rescue.serialize()[1])
    assert watch.indices == "1,3" and watch.rescues == 1  # narrowed; the counter rides along
    result = op.execute_complete(context(task_id="flaky"), event_of(rescue))
    # the units done in the first attempt count as done: the operator derives them, the trigger never carried them
    assert result["succeeded"] and result["rescues"] == 1
    assert result["counts"]["done"] == 6 and result["failed"] == ""


def test_failed_units_are_named(local_root):
    op = BatchRoundOperator(task_id="failing", site_conn_id="local",
                            units=[["sh", "-c", f"sleep 0.5; exit {3 if i == 2 else 0}"] for i in range(3)],
                            rescue={"max_rescues": 0})
    trigger = deferred(lambda: op.execute(context(task_id="failing")))
    with pytest.raises(AirflowException, match=r"1 of 3 units failed: \[2\].*exit 3"):
        op.execute_complete(context(task_id="failing"), event_of(trigger))
    # the campaign's way: report, do not raise (the request's field wins over the constructor's True)
    op.round_request = {"fail_on_failure": False}
    assert op.execute_complete(context(task_id="failing"), event_of(trigger))["failed"] == "2"


def test_a_timeout_or_error_event_fails_the_task_with_its_message(local_root):
    op = BatchRoundOperator(task_id="slow", site_conn_id="local", units=[["sleep", "30"]], watch_timeout=0.5)
    trigger = deferred(lambda: op.execute(context(task_id="slow")))
    event = event_of(trigger)
    assert event["status"] == "timeout"
    with pytest.raises(AirflowException, match="deadline"):
        op.execute_complete(context(task_id="slow"), event)
    op.on_kill()  # the worker-side kill cancels what execute() submitted


def test_a_bad_round_request_names_the_field(local_root):
    op = BatchRoundOperator(task_id="bad", site_conn_id="local", units=[["true"]], round_request={"thrtle": 2})
    with pytest.raises(AirflowException, match="thrtle: unknown key"):
        op.execute(context(task_id="bad"))


def test_local_jobs_get_an_allow_listed_environment(local_root, tmp_path, monkeypatch):
    """A secret in the worker's environment never reaches a job of the local site: only the
    allow-list (transport/local.py ALLOWED_ENV) and the round's own env do."""
    monkeypatch.setenv("MY_CLOUD_TOKEN", "s3cr3t-token-value")
    monkeypatch.setenv("AIRFLOW_CONN_SOMESITE", "ssh://user:pw@host")
    monkeypatch.setenv("LC_TIME", "C")
    seen = tmp_path / "env_seen"
    op = BatchRoundOperator(task_id="envprobe", site_conn_id="local", units=[["sh", "-c", f"sleep 0.5; env > {seen}"]],
                            env={"ROUND_SETTING": "from-the-round"})
    trigger = deferred(lambda: op.execute(context(task_id="envprobe")))
    assert op.execute_complete(context(task_id="envprobe"), event_of(trigger))["succeeded"]
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert "s3cr3t-token-value" not in seen.read_text() and "AIRFLOW_CONN_SOMESITE" not in env
    assert "MY_CLOUD_TOKEN" not in env
    assert env["ROUND_SETTING"] == "from-the-round" and env["LC_TIME"] == "C"
    assert env["PATH"] and env["HOME"]


def test_a_failed_fanin_alone_reruns_only_the_fanin(local_root, tmp_path):
    """32 units done + a failed fan-in: the rescue runs the fan-in alone (it was a ratio of 1/32
    before, and the rescue reran all 32 units). Default thresholds."""
    d = tmp_path
    unit = f'sleep 0.3; echo run >> {d}/runs_$0.log'
    fanin = f'sleep 0.5; echo run >> {d}/fanin_runs.log; [ -e {d}/fanin_ok ] && exit 0; touch {d}/fanin_ok; exit 2'
    op = BatchRoundOperator(task_id="merge", site_conn_id="local", units=[["sh", "-c", unit, str(i)] for i in range(32)],
                            fanin=["sh", "-c", fanin], throttle=16)
    first = deferred(lambda: op.execute(context(task_id="merge")))
    rescue = deferred(lambda: op.execute_complete(context(task_id="merge"), event_of(first)))
    watch = RoundWatch.model_validate(rescue.serialize()[1])
    assert watch.fanin_only and watch.indices == "32" and watch.rescues == 1  # an index no unit has (0-31)
    result = op.execute_complete(context(task_id="merge"), event_of(rescue))
    assert result["succeeded"] and result["fanin_state"] == "done" and result["counts"]["done"] == 32
    assert [len((d / f"runs_{i}.log").read_text().split()) for i in range(32)] == [1] * 32  # no unit reran
    assert (d / "fanin_runs.log").read_text().split() == ["run", "run"]
