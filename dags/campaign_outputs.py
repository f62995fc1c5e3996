"""Downstream of the campaigns: runs when a campaign's report task announces new outputs.

Each ``report`` task of ``rg_campaign`` / ``faser_alignment`` emits an Asset event for the
run's outputs, ``batchsite://<site conn id>/<outputs dir on the site>``, through the AssetAlias
``batchsite-rg-outputs`` / ``batchsite-faser-outputs`` (the URI depends on the Params, so it
is only known at run time). This DAG is scheduled on either alias; the event's metadata holds
whether and where the campaign converged, its final statistics and where the report is. Here
they are printed and returned (XCom) for whatever comes next: a publication step, a check of
the fixed-point std against a reference, a notification.

Triggered by hand it reads the latest event of each alias instead.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetAlias, dag, task

from batchsite.report.model import FASER_OUTPUTS_ALIAS, RG_OUTPUTS_ALIAS, describe_asset_event

ALIASES = (AssetAlias(RG_OUTPUTS_ALIAS), AssetAlias(FASER_OUTPUTS_ALIAS))


@dag(
    dag_id="campaign_outputs",
    schedule=ALIASES[0] | ALIASES[1],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["batchsite", "assets"],
    doc_md=__doc__,
)
def campaign_outputs():
    @task(inlets=list(ALIASES))
    def final_statistics(*, triggering_asset_events=None, inlet_events=None) -> list[dict]:
        """The final statistics of every campaign output event that triggered this run."""
        events = [e for alias in ALIASES for e in (triggering_asset_events or {}).get(alias, [])]
        if not events:  # triggered by hand: the latest event of each alias
            events = [evs[0] for alias in ALIASES if (evs := inlet_events[alias].ascending(False).limit(1))]
        for e in events:
            print(describe_asset_event(e.asset.uri, e.extra))
        if not events:
            print("no campaign has reported outputs yet")
        return [{"uri": e.asset.uri, **e.extra} for e in events]

    final_statistics()


campaign_outputs()
