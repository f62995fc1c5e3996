"""Optional e-mail when a campaign fails or converges, through the smtp provider's ``SmtpNotifier``.

Off unless the Airflow connection ``batchsite_notify`` exists. It is an ``smtp`` connection
(host, port, login, password of the mail server; the smtp provider's extras: ``from_email``,
the sender, required here, and e.g. ``disable_ssl``, ``disable_tls``) with two extras of ours:

* ``notify_to``: the addresses, a list or a comma-separated string (required);
* ``notify_on``: which events, ``["failure", "converged"]`` (the default: both).

``notify_failure`` is the campaign DAGs' ``on_failure_callback`` (the run failed: which run,
the reason Airflow gives); ``notify_converged`` is called by the report task when the
convergence test passed (the report's text and where its files are). A notification that
cannot be sent is a warning in the log, never a change of the run's outcome.
"""

from __future__ import annotations

import html
import logging
from typing import Any, Literal

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchsite.report.model import CampaignReport

log = logging.getLogger(__name__)

NOTIFY_CONN_ID = "batchsite_notify"
Event = Literal["failure", "converged"]


class NotifySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: list[str] = Field(min_length=1)
    on: frozenset[Event] = frozenset({"failure", "converged"})
    #: the smtp provider's own ``from_email`` extra (the sender), required
    from_email: str = Field(min_length=3)


def notify_settings(conn_id: str = NOTIFY_CONN_ID) -> NotifySettings | None:
    """The settings, or None when the connection does not exist (notifications off)."""
    try:
        extra = BaseHook.get_connection(conn_id).extra_dejson
    except AirflowNotFoundException:
        return None
    to = extra.get("notify_to")
    if isinstance(to, str):
        to = [a.strip() for a in to.split(",") if a.strip()]
    try:
        return NotifySettings(to=to or [], on=extra.get("notify_on", ["failure", "converged"]),
                              from_email=extra.get("from_email") or "")
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"connection {conn_id!r}: {problems} (extra notify_to: the addresses, at least one; "
                         'notify_on: a list of "failure", "converged"; from_email: the sender)') from None


def _send(event: Event, subject: str, body: str, context: Any) -> bool:
    """Send one notification when the connection asks for ``event``; True when sent."""
    settings = notify_settings()
    if settings is None or event not in settings.on:
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    # notify() directly, every field given: subject and body are final text, not Jinja templates
    SmtpNotifier(to=settings.to, from_email=settings.from_email, subject=subject, html_content=body,
                 smtp_conn_id=NOTIFY_CONN_ID).notify(context)
    log.info("notified %s of %s: %s", ", ".join(settings.to), event, subject)
    return True


def _never_fails(event: Event, subject: str, body: str, context: Any) -> bool:
    try:
        return _send(event, subject, body, context)
    except Exception as e:  # noqa: BLE001 - a notification never changes the run's outcome
        log.warning("batchsite notification (%s) not sent: %s: %s", event, type(e).__name__, e)
        return False


def notify_failure(context: Any) -> None:
    """The campaign DAGs' ``on_failure_callback``."""
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    reason = context.get("reason") or "a task failed"
    _never_fails("failure", f"[batchsite] {dag_id} run {run_id} failed",
                 f"<p>The campaign <b>{html.escape(dag_id)}</b> run <code>{html.escape(run_id)}</code> failed: "
                 f"{html.escape(str(reason))}.</p><p>Its task logs say why; <code>batchsite campaigns show "
                 f"{html.escape(run_id)}</code> shows its rounds and decisions.</p>", context)


def notify_converged(report: CampaignReport, context: Any) -> bool:
    """Called by the report task when the campaign's convergence test passed."""
    files = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in report.files)
    return _never_fails("converged", f"[batchsite] {report.title}: {report.stop}",
                        f"<pre>{html.escape(report.text)}</pre><p>On site {html.escape(report.site_conn_id)}:</p>"
                        f"<ul>{files}</ul><p><code>batchsite report {html.escape(report.run_id)}</code></p>", context)
