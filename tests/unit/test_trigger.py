"""BatchRoundTrigger: flat serialize() round trip, a deadline, run() and on_kill on the local site."""

from __future__ import annotations

import asyncio
import json
import time

from batchsite.config import local_site_config
from batchsite.model import JobState, Submission
from batchsite.polling import poller_for, site_poller
from batchsite.rounds import RoundWatch, RoundWatchEvent
from batchsite.triggers.round import BatchRoundTrigger
from tests.unit.local_rounds import submit, wait_finished
from tests.unit.test_polling import CountingTransport

SCALARS = (str, int, float, bool, type(None))


def trigger_for(sub: Submission, **numbers) -> BatchRoundTrigger:
    watch = RoundWatch.of(sub, site_conn_id="local", label=sub.key, **numbers)
    return BatchRoundTrigger(**watch.model_dump(mode="json"))


def big_submission(n: int = 2000) -> Submission:
    return Submission(key="bs-big-0123456789ab", scheduler="htcondor", workdir="/r/faser/iter01/1reco/bs-big",
                      indices=list(range(400, 400 + n)), fanout_id="4242", fanin_id="fanin", schedd="schedd.cern.ch")


def test_serialize_round_trips():
    t = trigger_for(big_submission(), rescues=1, releases=1, deadline=time.time() + 3600, hold_after_seconds=2)
    classpath, kwargs = t.serialize()
    assert classpath == "batchsite.triggers.round.BatchRoundTrigger"
    assert BatchRoundTrigger(**t.serialize()[1]).serialize() == t.serialize()


def test_kwargs_are_flat_and_small():
    _, kwargs = trigger_for(big_submission(2000), deadline=time.time() + 60).serialize()
    for name, value in kwargs.items():
        items = value if isinstance(value, list) else [value]
        assert all(isinstance(v, SCALARS) for v in items), (name, value)
    # ids, paths and numbers: a 2000-unit round costs no more than a 1-unit one
    assert len(json.dumps(kwargs)) < 600, kwargs
    assert kwargs["indices"] == "400-2399"
    assert {"site_conn_id", "round_key", "workdir", "fanout_id", "deadline"} <= set(kwargs)


def run_until_event(trigger: BatchRoundTrigger, timeout: float = 60) -> RoundWatchEvent:
    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout))
    return RoundWatchEvent.model_validate(event.payload)


def test_run_fires_finished_for_a_real_round(local_site):
    sub = submit(local_site, ["true"], ["sh", "-c", "sleep 0.5"], fanin=["true"])
    event = run_until_event(trigger_for(sub))
    assert event.status == "finished" and event.round_status().succeeded
    # the submission is rebuilt from the flat ids (the record's hash and time are not needed to watch)
    record_only = {"script_hash", "submitted_at"}
    assert event.watch.submission("local").model_dump(exclude=record_only) == sub.model_dump(exclude=record_only)


def test_the_deadline_fires_a_timeout_event(local_site):
    sub = submit(local_site, ["sleep", "30"])
    t0 = time.monotonic()
    event = run_until_event(trigger_for(sub, deadline=time.time() + 1.0))
    assert event.status == "timeout" and "deadline" in event.message
    assert time.monotonic() - t0 < 10
    # a deadline already past fires at once, without waiting for a status
    assert run_until_event(trigger_for(sub, deadline=time.time() - 5)).status == "timeout"
    local_site.cancel([sub])


def test_on_kill_cancels_its_round_and_leaves_the_shared_poller_to_the_others(local_site):
    killed = submit(local_site, ["sleep", "60"], ["sleep", "60"])
    other = submit(local_site, ["sh", "-c", "sleep 3"])

    async def scenario():
        shared = CountingTransport()
        poller = poller_for("local", lambda: site_poller(local_site_config(), shared))
        doomed, survivor = trigger_for(killed), trigger_for(other)
        doomed_run = asyncio.ensure_future(survivor_first(doomed))
        survivor_run = asyncio.ensure_future(survivor_first(survivor))
        while len(poller._watches) < 2 or poller.cycles < 2:  # both watched through the shared poller
            await asyncio.sleep(0.05)
        # what the triggerer does when the task is cleared: cancel the run, then on_kill
        doomed_run.cancel()
        await doomed.on_kill()
        assert shared.closed == 0, "on_kill closed the connection other watchers share"
        event = await asyncio.wait_for(survivor_run, 60)
        return event, shared

    async def survivor_first(trigger):
        async for event in trigger.run():
            return RoundWatchEvent.model_validate(event.payload)

    event, shared = asyncio.run(scenario())
    assert event.status == "finished" and event.round_status().succeeded  # the other round was watched to its end
    status = wait_finished(local_site, killed, timeout=20)
    assert {s.state for s in status.units.values()} == {JobState.FAILED}
    assert {s.native for s in status.units.values()} <= {"CANCELLED", "SIGNALLED"}, status
