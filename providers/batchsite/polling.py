"""One poller per site per process: K watched rounds cost ONE remote command per cycle.

Triggers in the triggerer call ``watch(submission)`` and receive ``RoundStatus`` updates.
The poller holds one transport (one SSH connection), runs the backend's status script for
everything registered, and fans the parsed results out. When the site is unreachable it
retries with capped exponential backoff; only an outage longer than ``outage_grace`` fails
the watchers. The outage is counted from the last successful contact, and a status command
that has not answered by the end of the grace counts as down (a hung command is not waited
for until ``status_timeout``). A unit that left the queue without any witness of its outcome stays VANISHED
for ``vanish_grace`` seconds (time for sacct / exit files to catch up), then becomes FAILED.
When nothing is watched any more the poller keeps its connection for ``idle_linger`` seconds:
a campaign's next round is deferred again after its collect and replan tasks, and reuses it
(one SSH connection per site per triggerer, not one per stretch of watching).

No Airflow import: the benchmark and unit tests drive this directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from batchsite.backends.base import Backend
from batchsite.config import SiteConfig
from batchsite.model import CommandResult, JobState, RoundStatus, Submission, TaskStatus
from batchsite.sitebuild import backend_for
from batchsite.transport.base import AsyncTransport, HostKeyError, TransportError, backoff_delays

log = logging.getLogger(__name__)

#: seconds the scheduler probe (once per poller) may take at most
PROBE_TIMEOUT = 60.0
#: seconds any command gets to answer at least (a grace of 0 still lets the site say something)
MIN_ANSWER = 1.0


class SiteOutage(Exception):
    """The site (or its scheduler) stayed unreachable for longer than the grace period."""


def apply_vanish_grace(
    status: RoundStatus, first_seen: dict[tuple[str, str], float], now: float, grace: float
) -> RoundStatus:
    """Turn units VANISHED for longer than ``grace`` into FAILED (pure apart from ``first_seen``)."""

    def settle(name: str, st: TaskStatus) -> TaskStatus:
        k = (status.key, name)
        if st.state is not JobState.VANISHED:
            first_seen.pop(k, None)
            return st
        t0 = first_seen.setdefault(k, now)
        if now - t0 >= grace:
            return TaskStatus(state=JobState.FAILED, native="VANISHED",
                              reason=f"left the queue with no exit code or accounting record for {grace:.0f}s")
        return st

    units = {i: settle(str(i), s) for i, s in status.units.items()}
    fanin = settle("fanin", status.fanin) if status.fanin is not None else None
    return status.model_copy(update={"units": units, "fanin": fanin})


@dataclass
class _Watch:
    sub: Submission
    queues: list[asyncio.Queue] = field(default_factory=list)


class SitePoller:
    def __init__(
        self,
        name: str,
        transport: AsyncTransport,
        backend: Backend,
        *,
        interval: float = 10.0,
        outage_grace: float = 900.0,
        vanish_grace: float = 120.0,
        max_backoff: float = 60.0,
        status_timeout: float = 120.0,
        idle_linger: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.transport = transport
        self.backend = backend
        self.interval = interval
        self.outage_grace = outage_grace
        self.vanish_grace = vanish_grace
        self.max_backoff = max_backoff
        self.status_timeout = status_timeout
        self.idle_linger = idle_linger
        self.clock = clock
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task | None = None
        self._first_seen: dict[tuple[str, str], float] = {}
        self._probed = False
        self.cycles = 0  # status commands sent (what the benchmark counts)
        # called when the loop ends; True: the poller was let go, close its transport
        self.on_idle: Callable[[SitePoller], bool] | None = None
        self._new_watch = asyncio.Event()

    # ------------------------------------------------------------------ public
    async def watch(self, sub: Submission) -> AsyncIterator[RoundStatus]:
        q: asyncio.Queue = asyncio.Queue()
        self._watches.setdefault(sub.key, _Watch(sub)).queues.append(q)
        self._new_watch.set()  # wakes a lingering loop
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batchsite-poller-{self.name}")
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            w = self._watches.get(sub.key)
            if w is not None and q in w.queues:
                w.queues.remove(q)
                if not w.queues:
                    del self._watches[sub.key]

    # ------------------------------------------------------------------ loop
    def _broadcast(self, item) -> None:
        for w in list(self._watches.values()):
            for q in w.queues:
                q.put_nowait(item)

    async def _ask(self, script: str, limit: float) -> CommandResult:
        """One command on the site; no answer within ``limit`` seconds is a TransportError.

        The bound covers connecting too, and a command that outlives it leaves its connection
        possibly dead (dropped traffic answers nothing), so the connection is dropped."""
        try:
            async with asyncio.timeout(limit):
                return await self.transport.sh(script, timeout=limit)
        except TimeoutError as e:
            await self.transport.close()
            raise TransportError(f"no answer within {limit:.1f}s") from e

    async def _linger(self) -> bool:
        """Nothing is watched: wait up to ``idle_linger`` seconds for a new round, the transport
        (its connection) kept open. True when a round came. No await separates a False answer
        from the loop's end, so a round registered meanwhile starts a new loop."""
        self._new_watch.clear()
        if self.idle_linger <= 0:
            return bool(self._watches)
        try:
            async with asyncio.timeout(self.idle_linger):
                while not self._watches:
                    await self._new_watch.wait()
                    self._new_watch.clear()
        except TimeoutError:
            pass
        return bool(self._watches)

    async def _run(self) -> None:
        # An outage is measured from the LAST SUCCESSFUL CONTACT: a command still unanswered
        # when the grace runs out counts as down, however long status_timeout is.
        last_contact = self.clock()  # watching starts from a site taken as reachable
        problem: str | None = None  # why the latest cycle failed, while it is failing
        delays = backoff_delays(min(1.0, self.interval), self.max_backoff)
        # a command always gets this long to answer, even when our own poll interval already
        # used up the grace (interval >= outage_grace) or the grace ends as we retry
        least_answer = max(MIN_ANSWER, min(self.outage_grace, self.interval))
        try:
            while True:
                if not self._watches:
                    if not await self._linger():
                        return
                    last_contact = self.clock()  # watching again after a pause: reachable until it is not
                subs = [w.sub for w in self._watches.values()]
                limit = min(self.status_timeout,
                            max(last_contact + self.outage_grace - self.clock(), least_answer))
                try:
                    if not self._probed:
                        r = await self._ask(self.backend.probe_script(), min(limit, PROBE_TIMEOUT))
                        self.backend.apply_probe(r.out + r.err)
                        self._probed = True
                    self.cycles += 1
                    r = await self._ask(self.backend.render_status_script(subs), limit)
                    # a thread: parsing 10,000 units must not stall the triggerer's event loop
                    statuses = await asyncio.to_thread(self.backend.parse_status, r.out, subs)
                except HostKeyError as e:
                    self._broadcast(e)
                    return
                except TransportError as e:
                    problem = f"site {self.name} unreachable"
                    down = self.clock() - last_contact
                    left = self.outage_grace - down
                    if left <= 0:
                        self._broadcast(SiteOutage(
                            f"{problem} for {down:.0f}s (> outage_grace {self.outage_grace:g}s): {e}"))
                        return
                    wait = min(next(delays), left)
                    log.warning("site %s unreachable (%s); retrying in %.0fs (down %.0fs of %.0fs grace)",
                                self.name, e, wait, down, self.outage_grace)
                    await asyncio.sleep(wait)
                    continue
                wait = self.interval
                if any(not s.scheduler_ok for s in statuses.values()):
                    # the site answered, its scheduler did not: the same clock, another cause
                    problem = f"scheduler on site {self.name} not answering"
                    down = self.clock() - last_contact
                    if down > self.outage_grace:
                        self._broadcast(SiteOutage(
                            f"{problem} for {down:.0f}s (> outage_grace {self.outage_grace:g}s)"))
                        return
                    # a restarting controller is not helped by being asked every few seconds
                    wait = max(self.interval, min(next(delays), self.outage_grace - down))
                    log.warning("scheduler on site %s not answering; job states UNKNOWN, asking again in %.0fs "
                                "(down %.0fs of %.0fs grace)", self.name, wait, down, self.outage_grace)
                else:
                    last_contact = self.clock()
                    if problem is not None:
                        log.info("site %s answering again", self.name)
                    problem = None
                    delays = backoff_delays(min(1.0, self.interval), self.max_backoff)
                now = self.clock()
                for key, w in list(self._watches.items()):
                    st = statuses.get(key)
                    if st is None:
                        continue
                    if st.scheduler_ok:
                        st = apply_vanish_grace(st, self._first_seen, now, self.vanish_grace)
                    for q in w.queues:
                        q.put_nowait(st)
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a parser bug must reach the watchers, not die silently
            log.exception("poller for site %s failed", self.name)
            self._broadcast(e)
        finally:
            # awaited here, not scheduled: an event loop that is shutting down (``airflow dags
            # test`` runs each trigger in its own) would never run a scheduled close
            if self.on_idle is not None and self.on_idle(self):
                await self.transport.close()


def site_poller(cfg: SiteConfig, transport: AsyncTransport) -> SitePoller:
    """A poller with the site's own watching settings (poll_interval, outage_grace, ...)."""
    return SitePoller(
        cfg.conn_id, transport, backend_for(cfg),
        interval=cfg.poll_interval, outage_grace=cfg.outage_grace, vanish_grace=cfg.vanish_grace,
        max_backoff=cfg.max_backoff, status_timeout=cfg.status_timeout, idle_linger=cfg.idle_linger,
    )


# ---------------------------------------------------------------------- registry

_POLLERS: dict[tuple[str, int], SitePoller] = {}


def poller_for(site_key: str, factory: Callable[[], SitePoller]) -> SitePoller:
    """The shared poller of a site in this event loop (created on first use). Once no round
    has been watched for its ``idle_linger`` it leaves the registry and closes its transport."""
    registry_key = (site_key, id(asyncio.get_running_loop()))
    poller = _POLLERS.get(registry_key)
    if poller is None:
        poller = factory()

        def _forget(idle: SitePoller) -> bool:
            if _POLLERS.get(registry_key) is idle and not idle._watches:
                del _POLLERS[registry_key]
                return True
            return False

        poller.on_idle = _forget
        _POLLERS[registry_key] = poller
    return poller
