"""What a campaign DAG's ``report`` task does with its report, written once for both campaigns.

``publish_report``: write the report on the site (``batchsite.report.publish``: the plots,
then ``report.json``, each a temp name then a rename), log its text and every file written,
and emit the Airflow Asset event of the campaign's outputs through the task's AssetAlias
outlet: the Asset ``batchsite://<conn>/<outputs dir>`` (known only at run time, hence the
alias) with the report's metadata (converged, where, the final statistics, the report's
path). A campaign with no finished step writes its report (saying so) and emits no event.
A converged campaign is notified by e-mail when the ``batchsite_notify`` connection asks for
it (``batchsite.operators.notify``).
"""

from __future__ import annotations

from collections.abc import Callable

from airflow.sdk import Asset, AssetAlias, get_current_context
from matplotlib.figure import Figure

from batchsite.hooks.site import site_from_conn_id
from batchsite.operators.notify import notify_converged
from batchsite.report.model import CampaignReport, RunRef
from batchsite.report.publish import write_report
from batchsite.site import Site

def publish_report(site_conn_id: str, build: Callable[[Site, RunRef], tuple[CampaignReport, dict[str, Figure]]],
                   alias: str, outlet_events) -> CampaignReport:
    """``build(site, run)`` the report from the site, write it there, log it, emit the event."""
    context = get_current_context()
    run = RunRef(dag_id=context["dag"].dag_id, run_id=context["run_id"], site_conn_id=site_conn_id)
    site = site_from_conn_id(site_conn_id)
    try:
        report, figures = build(site, run)
        written = write_report(site.transport, report, figures)
    finally:
        site.close()
    print(report.text)
    print(f"report written on site {site_conn_id} ({len(written)} file(s)):")
    for path in written:
        print(f"  {path}")
    if report.empty:
        print("no Asset event: nothing finished")
    else:
        outlet_events[AssetAlias(alias)].add(Asset(report.asset_uri), extra=report.asset_extra())
        print(f"Asset event {report.asset_uri} (alias {alias}): {report.stop}")
    if report.converged and notify_converged(report, context):
        print("convergence notified (connection batchsite_notify)")
    return report
