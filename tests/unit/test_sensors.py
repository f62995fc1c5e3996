"""BatchJobSensor and its scheduler-pinned variants on the local site (real processes)."""

from __future__ import annotations

import asyncio

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from batchsite.rounds import RoundWatch
from batchsite.sensors.job import BatchJobSensor, SlurmJobSensor
from tests.unit.local_rounds import submit, wait_finished


def event_of(trigger) -> dict:
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(first(), 60))


def test_deferred_sensor_waits_for_a_round_submitted_elsewhere(local_site):
    sub = submit(local_site, ["sh", "-c", "sleep 1"], ["true"])
    sensor = BatchJobSensor(task_id="wait", site_conn_id="local", submission=sub.model_dump(mode="json"), timeout=300)
    with pytest.raises(TaskDeferred) as e:
        sensor.execute({})
    watch = RoundWatch.model_validate(e.value.trigger.serialize()[1])
    assert watch.round_key == sub.key and watch.deadline is not None  # the sensor's timeout, absolute
    result = sensor.execute_complete({}, event_of(e.value.trigger))
    assert result["counts"]["done"] == 2 and result["failed"] == ""


def test_poke_reports_a_failed_round(local_site):
    sub = submit(local_site, ["true"], ["sh", "-c", "exit 4"])
    wait_finished(local_site, sub)
    sensor = BatchJobSensor(task_id="wait", site_conn_id="local", submission=sub.model_dump(mode="json"),
                            deferrable=False)
    with pytest.raises(AirflowException, match=r"failed indices \[1\]"):
        sensor.poke({})


def test_a_round_given_by_job_id_and_indices(local_site):
    sub = submit(local_site, ["true"])
    wait_finished(local_site, sub)
    sensor = BatchJobSensor(task_id="wait", site_conn_id="local", job_id=sub.fanout_id, indices=[0],
                            workdir=sub.workdir)
    assert sensor.poke({}) is True


def test_scheduler_pinned_sensor_refuses_another_site(local_site):
    sub = submit(local_site, ["true"])
    sensor = SlurmJobSensor(task_id="wait", site_conn_id="local", submission=sub.model_dump(mode="json"))
    with pytest.raises(AirflowException, match="needs a slurm site"):
        sensor.execute({})


def test_a_held_event_names_the_held_units_and_their_reason(local_site):
    """The trigger's held event has no message: the sensor said "held: None" before."""
    from batchsite.model import JobState, RoundDigest, RoundStatus, TaskStatus
    from batchsite.rounds import RoundWatchEvent

    sub = submit(local_site, ["true"], ["true"], ["true"])
    wait_finished(local_site, sub)
    held = TaskStatus(state=JobState.HELD, native="5", reason="via condor_hold (by user bsite)")
    status = RoundStatus(key=sub.key, units={0: held, 1: held, 2: TaskStatus(state=JobState.DONE)})
    event = RoundWatchEvent(status="held", watch=RoundWatch.of(sub, site_conn_id="local", label="wait"),
                            round=RoundDigest.of(status))
    sensor = BatchJobSensor(task_id="wait", site_conn_id="local", submission=sub.model_dump(mode="json"))
    with pytest.raises(AirflowException) as e:
        sensor.execute_complete({}, event.model_dump(mode="json"))
    text = str(e.value)
    assert "units 0-1 of job" in text and "via condor_hold (by user bsite)" in text and "None" not in text, text
