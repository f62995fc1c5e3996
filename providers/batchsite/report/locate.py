"""Where a campaign's report is, from its Params (as the DAG run got them, e.g. from the
campaign ledger) and the site's remote_root: ``<outputs>/report/report.json``."""

from __future__ import annotations

from typing import Any, Literal

from batchsite.campaign.faser import FaserParams
from batchsite.campaign.faser import parse_params as parse_faser
from batchsite.campaign.rg import RGParams
from batchsite.campaign.rg import parse_params as parse_rg
from batchsite.report.faser import faser_outputs_dir
from batchsite.report.rg import rg_outputs_dir

Campaign = Literal["rg", "faser"]
#: Params that say what runs, not where the outputs go, and that can only be checked where
#: the DAG ran (``code_dir`` must be a local directory there): not needed to find a report
_RUN_ONLY = ("code_dir",)


def campaign_params(campaign: Campaign, raw: dict[str, Any]) -> RGParams | FaserParams:
    """The campaign's Params, validated as its DAG does (CampaignConfigError names the field)."""
    if campaign == "rg":
        return parse_rg({k: v for k, v in raw.items() if k not in _RUN_ONLY})
    return parse_faser(raw)


def outputs_dir(params: RGParams | FaserParams, remote_root: str) -> str:
    if isinstance(params, RGParams):
        return rg_outputs_dir(params, remote_root)
    return faser_outputs_dir(params, remote_root)
