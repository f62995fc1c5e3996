"""The trigger that watches one submitted round from the triggerer.

Thin by design: it registers its submission with the site's shared poller
(``batchsite.polling``), logs a progress line when the counts change and fires one event
when the round is finished (or the site stays unreachable beyond its grace period).
``serialize()`` holds no secrets: the connection id, the public site config and the
submission record.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from batchsite.backends.base import get_backend
from batchsite.config import SiteConfig
from batchsite.model import Submission
from batchsite.polling import SiteOutage, SitePoller, poller_for
from batchsite.transport.base import HostKeyError


def _make_poller(cfg: SiteConfig) -> SitePoller:
    from batchsite.hooks.site import async_transport_for

    return SitePoller(
        cfg.conn_id, async_transport_for(cfg), get_backend(cfg.scheduler),
        interval=cfg.poll_interval, outage_grace=cfg.outage_grace, vanish_grace=cfg.vanish_grace,
        max_backoff=cfg.max_backoff, status_timeout=cfg.status_timeout,
    )


class BatchRoundTrigger(BaseTrigger):
    def __init__(self, site_config: dict[str, Any], submission: dict[str, Any], label: str,
                 context: dict[str, Any] | None = None):
        super().__init__()
        self.site_config = site_config
        self.submission = submission
        self.label = label
        self.context = context or {}  # the operator's state across deferrals (rescues done, ...)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "batchsite.triggers.round.BatchRoundTrigger",
            {"site_config": self.site_config, "submission": self.submission, "label": self.label,
             "context": self.context},
        )

    def _event(self, **payload: Any) -> TriggerEvent:
        return TriggerEvent({**payload, "submission": self.submission, "label": self.label,
                             "context": self.context})

    def _poller(self) -> SitePoller:
        cfg = SiteConfig.model_validate(self.site_config)
        return poller_for(cfg.conn_id, lambda: _make_poller(cfg))

    async def run(self):
        sub = Submission.model_validate(self.submission)
        last = None
        hold_after = float((self.context.get("on_hold") or {}).get("after_seconds", 600))
        held_since: float | None = None
        try:
            async for status in self._poller().watch(sub):
                line = status.progress_line(self.label)
                if line != last:
                    self.log.info("%s", line)
                    last = line
                held = [i for i, s in status.units.items() if s.state.value == "held"]
                if held:
                    held_since = held_since or time.monotonic()
                    if time.monotonic() - held_since >= hold_after:
                        # lxplus removes jobs held for 24 h: the operator decides long before
                        yield self._event(status="held", round=status.model_dump(mode="json"))
                        return
                else:
                    held_since = None
                if status.finished:
                    yield self._event(status="finished", round=status.model_dump(mode="json"))
                    return
        except (SiteOutage, HostKeyError) as e:
            yield self._event(status="error", message=str(e))
        except Exception as e:  # noqa: BLE001 - the task must see why watching stopped
            yield self._event(status="error", message=f"{type(e).__name__}: {e}")

    async def on_kill(self) -> None:
        """The user cleared / marked the task while deferred: cancel the remote jobs."""
        sub = Submission.model_validate(self.submission)
        poller = self._poller()
        try:
            out = await asyncio.wait_for(poller.run_script(poller.backend.render_cancel_script([sub])), 60)
            self.log.info("cancelled %s on %s: %s", sub.job_ids, poller.name, out.strip()[:500])
        finally:
            await poller.transport.close()
