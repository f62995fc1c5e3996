"""The shared site poller, against a counting transport over the real local site.

``CountingTransport`` is the local transport that records every command it runs (and when),
and can be told to fail: it stands for a site that drops off the network.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from batchsite.backends.base import get_backend
from batchsite.model import JobState, Submission
from batchsite.polling import SiteOutage, SitePoller
from batchsite.transport.base import TransportError
from batchsite.transport.local import AsyncLocalTransport
from tests.unit.local_rounds import submit


class CountingTransport(AsyncLocalTransport):
    def __init__(self, fail_first: int = 0, fail_always: bool = False):
        super().__init__()
        self.commands: list[tuple[float, str]] = []  # (monotonic time, the script run)
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.closed = 0  # close() calls: each ends a connection a later command reopens

    async def close(self) -> None:
        self.closed += 1
        await super().close()

    async def _exec(self, line, stdin, timeout):
        self.commands.append((time.monotonic(), line))
        if self.fail_always or len(self.commands) <= self.fail_first:
            raise TransportError("connection refused (simulated outage)")
        return await super()._exec(line, stdin, timeout)

    def status_commands(self, keys: list[str]) -> list[str]:
        return [line for _, line in self.commands if any(k in line for k in keys)]


def poller(transport: CountingTransport, **kw) -> SitePoller:
    return SitePoller("local", transport, get_backend("local"), **{"interval": 0.1, **kw})


async def watch_until_finished(p: SitePoller, sub: Submission):
    async for status in p.watch(sub):
        if status.finished:
            return status


def test_k_rounds_cost_one_status_command_per_cycle(local_site):
    subs = [submit(local_site, ["sh", "-c", f"sleep {0.3 * (i + 1)}"]) for i in range(4)]
    transport = CountingTransport()
    p = poller(transport)

    async def all_of_them():
        return await asyncio.gather(*(watch_until_finished(p, s) for s in subs))

    statuses = asyncio.run(asyncio.wait_for(all_of_them(), 60))
    assert all(s.succeeded for s in statuses)
    keys = [s.key for s in subs]
    status_cmds = transport.status_commands(keys)
    assert len(status_cmds) == p.cycles  # one command per cycle, whatever the number of rounds
    assert len(transport.commands) == p.cycles + 1  # + the scheduler probe, once
    # the first cycle already asked for every round, in that one command
    assert all(k in status_cmds[0] for k in keys)


def test_a_failing_site_is_retried_with_growing_delays():
    sub = Submission(key="bs-t-backoff", scheduler="local", workdir="/nonexistent/bs-t-backoff", indices=[0],
                     fanout_id="h:1")
    transport = CountingTransport(fail_first=4)
    p = poller(transport, interval=0.2, max_backoff=5)

    async def first_status():
        async for status in p.watch(sub):
            return status

    status = asyncio.run(asyncio.wait_for(first_status(), 30))
    assert status.key == sub.key  # reached the site once it answered again
    times = [t for t, _ in transport.commands[:5]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(later > 1.5 * earlier for earlier, later in zip(gaps, gaps[1:])), gaps  # exponential


def test_an_outage_longer_than_the_grace_fails_every_watcher():
    subs = [Submission(key=f"bs-t-out{i}", scheduler="local", workdir=f"/x/bs-t-out{i}", indices=[0],
                       fanout_id="h:1") for i in range(2)]
    p = poller(CountingTransport(fail_always=True), outage_grace=0.5, max_backoff=0.2)

    async def one(sub):
        with pytest.raises(SiteOutage, match="unreachable for"):
            async for _ in p.watch(sub):
                pass

    async def both():
        await asyncio.gather(*(one(s) for s in subs))

    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(both(), 30))
    assert 0.5 <= time.monotonic() - t0 < 5


def test_a_unit_gone_without_witness_is_vanished_then_failed_after_the_grace(local_root):
    # what a runner killed with SIGKILL leaves: unit 0 recorded running, neither the runner
    # nor the unit alive, no exit file
    workdir = local_root / "rounds" / "bs-t-vanish"
    (workdir / "state").mkdir(parents=True)
    dead_pid = 4194303  # above pid_max's default: never alive
    (workdir / "state" / "runner.pid").write_text(f"{dead_pid} {socket.gethostname()}\n")
    (workdir / "state" / "0").write_text(f"running {dead_pid}\n")
    sub = Submission(key="bs-t-vanish", scheduler="local", workdir=str(workdir), indices=[0],
                     fanout_id=f"{socket.gethostname()}:{dead_pid}")
    p = poller(CountingTransport(), vanish_grace=0.6)

    async def states():
        seen = []
        async for status in p.watch(sub):
            seen.append((time.monotonic(), status.units[0]))
            if status.finished:
                return seen

    seen = asyncio.run(asyncio.wait_for(states(), 30))
    assert seen[0][1].state is JobState.VANISHED
    t_vanished, last = seen[0][0], seen[-1]
    assert last[1].state is JobState.FAILED and last[1].native == "VANISHED"
    assert last[0] - t_vanished >= 0.6 - 0.15  # not before the grace (one interval of slack)


class HangingTransport(CountingTransport):
    """The local site, until ``hang()``: from then on every command hangs (a real sleep), as
    over dropped traffic, where an established connection neither answers nor breaks."""

    def __init__(self, hang_for: float):
        super().__init__()
        self.hang_for = hang_for
        self.hanging_since: float | None = None
        self.answered: list[float] = []  # when each command's answer came back

    def hang(self) -> None:
        self.hanging_since = time.monotonic()

    async def _exec(self, line, stdin, timeout):
        self.commands.append((time.monotonic(), line))
        if self.hanging_since is not None:
            await asyncio.sleep(self.hang_for)
        result = await AsyncLocalTransport._exec(self, line, stdin, timeout)
        self.answered.append(time.monotonic())
        return result


def test_a_hung_status_command_counts_as_down_from_the_last_contact(local_site):
    """The outage clock starts at the last answer, not when a hung command finally times out:
    status_timeout 60 s, outage_grace 1.5 s -> the watchers fail ~1.5 s after the last answer."""
    sub = submit(local_site, ["sh", "-c", "sleep 8"])
    transport = HangingTransport(hang_for=60)
    p = poller(transport, interval=0.2, outage_grace=1.5, status_timeout=60, max_backoff=0.5)

    async def watch_then_hang():
        async for _ in p.watch(sub):
            if transport.hanging_since is None and len(transport.answered) >= 3:
                transport.hang()

    with pytest.raises(SiteOutage, match=r"site local unreachable for \ds \(> outage_grace 1.5s\)") as err:
        asyncio.run(asyncio.wait_for(watch_then_hang(), 20))
    failed = time.monotonic()
    last_answer = transport.answered[-1]
    assert transport.hanging_since is not None
    # measured from the last answer: the grace, plus the slack of one poll cycle
    assert 1.5 <= failed - last_answer < 1.5 + 1.0, (failed - last_answer, str(err.value))


def test_a_slow_site_that_answers_within_the_grace_is_not_down(local_site):
    """Commands that each take 0.6 s, a grace of 1.5 s: slow is not down; the round finishes."""
    sub = submit(local_site, ["sh", "-c", "sleep 1.5"])
    transport = HangingTransport(hang_for=0.6)
    transport.hang()
    p = poller(transport, interval=0.2, outage_grace=1.5, status_timeout=60)
    status = asyncio.run(asyncio.wait_for(watch_until_finished(p, sub), 30))
    assert status.succeeded
    assert len(transport.answered) >= 3  # several slow answers, none counted as an outage


def test_a_round_watched_within_the_linger_reuses_the_connection(local_site):
    """A campaign's next round comes after its collect and replan tasks: the registered poller
    keeps its transport open for ``idle_linger`` and the next round is watched by the same loop
    (no second probe, no close); only after a linger with nothing watched is it let go."""
    from batchsite.polling import _POLLERS, poller_for

    first = submit(local_site, ["sh", "-c", "sleep 0.3"])
    second = submit(local_site, ["sh", "-c", "sleep 0.3"])
    transport = CountingTransport()

    async def two_rounds_with_a_pause():
        p = poller_for("local-linger", lambda: poller(transport, idle_linger=1.5))
        assert (await watch_until_finished(p, first)).succeeded
        loop_task = p._task
        await asyncio.sleep(0.6)  # the collect and replan tasks of a campaign
        assert transport.closed == 0 and not loop_task.done(), "the idle poller let go within its linger"
        again = poller_for("local-linger", lambda: poller(transport, idle_linger=1.5))
        assert again is p
        assert (await watch_until_finished(p, second)).succeeded
        assert p._task is loop_task  # the same loop watched both rounds
        await asyncio.wait_for(loop_task, 10)  # nothing watched for the linger: it ends
        return p

    p = asyncio.run(asyncio.wait_for(two_rounds_with_a_pause(), 60))
    assert transport.closed == 1  # closed once, after the last linger
    assert not [k for k in _POLLERS if k[0] == "local-linger"]
    probes = [line for _, line in transport.commands if first.key not in line and second.key not in line]
    assert len(probes) == 1, probes  # the scheduler probe ran once for both rounds
    assert p.cycles == len(transport.commands) - 1


def test_without_a_linger_the_idle_poller_closes_at_once(local_site):
    from batchsite.polling import poller_for

    sub = submit(local_site, ["sh", "-c", "sleep 0.2"])
    transport = CountingTransport()

    async def one_round():
        p = poller_for("local-no-linger", lambda: poller(transport, idle_linger=0))
        assert (await watch_until_finished(p, sub)).succeeded
        await asyncio.wait_for(p._task, 5)

    asyncio.run(asyncio.wait_for(one_round(), 30))
    assert transport.closed == 1
