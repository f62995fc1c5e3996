"""The trigger that watches one submitted round from the triggerer.

Thin by design: it registers its submission with the site's shared poller
(``batchsite.polling``), logs a progress line when the counts change and fires one
``RoundWatchEvent`` when the round is finished, its units stay held, the deadline passes or
the site stays unreachable beyond its grace period.

``serialize()`` is flat, like the SSH provider's trigger: ids, paths and numbers
(``batchsite.rounds.RoundWatch``), no secrets, no nested models. The site config is loaded
again from the connection id, the submission rebuilt from the ids.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from batchsite.config import SiteConfig
from batchsite.hooks.ledger import observe_round
from batchsite.hooks.site import async_transport_for_conn, load_site_config
from batchsite.model import JobState, RoundDigest, RoundStatus
from batchsite.polling import SiteOutage, poller_for, site_poller
from batchsite.rounds import RoundWatch, RoundWatchEvent
from batchsite.sitebuild import backend_for
from batchsite.transport.base import HostKeyError

#: seconds a cancel from on_kill may take (scancel / condor_rm / the local runner's stop)
CANCEL_TIMEOUT = 120


class BatchRoundTrigger(BaseTrigger):
    """Watch one round. Keyword arguments: the fields of ``batchsite.rounds.RoundWatch``."""

    def __init__(self, **watch: Any):
        super().__init__()
        self.watch = RoundWatch.model_validate(watch)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("batchsite.triggers.round.BatchRoundTrigger", self.watch.model_dump(mode="json"))

    def _event(self, status: str, round_status: RoundStatus | None = None, message: str = "") -> TriggerEvent:
        digest = RoundDigest.of(round_status) if round_status is not None else None  # O(1) in the units
        event = RoundWatchEvent(status=status, watch=self.watch, round=digest, message=message)
        return TriggerEvent(event.model_dump(mode="json"))

    async def _site_config(self) -> SiteConfig:
        # a connection lookup is a blocking call into the supervisor: never on the event loop
        return await asyncio.to_thread(load_site_config, self.watch.site_conn_id)

    def _remaining(self) -> float | None:
        return None if self.watch.deadline is None else self.watch.deadline - time.time()

    async def run(self):
        watch = self.watch
        updates = None
        try:
            cfg = await self._site_config()
            sub = watch.submission(cfg.scheduler)
            poller = poller_for(cfg.conn_id, lambda: site_poller(cfg, async_transport_for_conn(cfg)))
            updates = poller.watch(sub)
            last_line = None
            held_since: float | None = None
            while True:
                remaining = self._remaining()
                try:
                    if remaining is not None and remaining <= 0:
                        raise asyncio.TimeoutError
                    status = await asyncio.wait_for(updates.__anext__(), remaining)
                except asyncio.TimeoutError:
                    yield self._event("timeout", message=self._timeout_message())
                    return
                line = status.progress_line(watch.label)
                if line != last_line:
                    self.log.info("%s", line)
                    last_line = line
                    # the campaign ledger: one transition per change of the counts (blocking I/O)
                    await asyncio.to_thread(observe_round, watch.round_key, status)
                if any(s.state is JobState.HELD for s in status.units.values()):
                    held_since = held_since or time.monotonic()
                    if time.monotonic() - held_since >= watch.hold_after_seconds:
                        # lxplus removes jobs held for 24 h: the operator decides long before
                        yield self._event("held", status)
                        return
                else:
                    held_since = None
                if status.finished:
                    yield self._event("finished", status)
                    return
        except (SiteOutage, HostKeyError) as e:
            yield self._event("error", message=str(e))
        except Exception as e:  # noqa: BLE001 - the task must see why watching stopped
            yield self._event("error", message=f"{type(e).__name__}: {e}")
        finally:
            if updates is not None:
                await updates.aclose()  # leave the poller: it stops once nobody watches

    def _timeout_message(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.watch.deadline or 0))
        return (f"{self.watch.label}: round {self.watch.round_key} (job {self.watch.fanout_id}) not finished by "
                f"its deadline {when}; its jobs are left running (a retry of the task re-attaches)")

    async def on_kill(self) -> None:
        """The user cleared / marked the task while deferred: cancel this round's jobs.

        On a connection of its own: the site's poller and its connection go on serving the
        other rounds watched on this site (closing them here would fail those watches)."""
        cfg = await self._site_config()
        sub = self.watch.submission(cfg.scheduler)
        transport = async_transport_for_conn(cfg)
        try:
            r = await asyncio.wait_for(
                transport.sh(backend_for(cfg).render_cancel_script([sub]), timeout=CANCEL_TIMEOUT),
                CANCEL_TIMEOUT + 10)
            self.log.info("cancelled %s on %s: %s", sub.job_ids, cfg.conn_id, (r.out + r.err).strip()[:500])
        finally:
            await transport.close()
