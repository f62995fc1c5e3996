"""What a campaign report holds (``report.json``), where it lives, and its Asset URI.

The report lives in ``<outputs>/report/``: ``<outputs>`` is the directory holding everything a
campaign run produced (RG: ``job_outputs/<version>/<FP|EXP>`` of the reference payload, or the
group's ``job_outputs/<version>_<method>_<expr>/<FP|EXP>``; FASER: the data tree
``Y.._R.._F.._ST.``), so a pull of the outputs brings the report along. A later run on the same
outputs replaces it; ``report.json`` names the DAG run that wrote it.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_DIR = "report"
REPORT_JSON = "report.json"
#: the Asset URI scheme of a campaign's outputs: ``batchsite://<site conn id>/<path on the site>``
ASSET_SCHEME = "batchsite"
#: the Airflow AssetAlias names the report tasks emit their outputs' Asset events through (the
#: URI is known only at run time: the site and the output path come from the Params)
RG_OUTPUTS_ALIAS = "batchsite-rg-outputs"
FASER_OUTPUTS_ALIAS = "batchsite-faser-outputs"
#: the DAG ids whose runs ``batchsite report <run>`` knows how to find, and their campaign
CAMPAIGN_OF_DAG = {"rg_campaign": "rg", "faser_alignment": "faser"}

_CONN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: characters kept as they are in the URI's path; anything else is percent-encoded
_PATH_SAFE = "/._-+@=,~"


def asset_uri(site_conn_id: str, path: str) -> str:
    """``batchsite://<conn>/<path>``, already in the form Airflow's URI sanitiser leaves
    unchanged (lower-case scheme, no trailing slash, no query, no fragment, no user info),
    so the event's URI is exactly this text."""
    if not _CONN_ID.match(site_conn_id or ""):
        raise ValueError(f"site_conn_id={site_conn_id!r}: an Asset URI needs a connection id of letters, digits "
                         "and '._-' (at most 64)")
    if not path.startswith("/") or path.rstrip("/") != path or "//" in path:
        raise ValueError(f"path={path!r} must be an absolute, normalised path on the site (no trailing '/')")
    return f"{ASSET_SCHEME}://{site_conn_id}{urllib.parse.quote(path, safe=_PATH_SAFE)}"


def report_dir(outputs_dir: str) -> str:
    return f"{outputs_dir}/{REPORT_DIR}"


def finite(value: Any) -> Any:
    """JSON has no NaN/inf: such a number is reported as None ("n/a")."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunRef(BaseModel):
    """The DAG run a report belongs to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_id: str
    run_id: str
    site_conn_id: str


class RGStep(BaseModel):
    """One RG step of one output dir (FP, or one shift of EXP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str  # "FP" or "shift <s>"
    shift: float | None
    out_dir: str
    step: int
    samples: int | None
    z_mean: float
    z_std: float
    z_peak: float
    #: L1 distance of this step's compared histogram (sym_z for FP, z for EXP) to the previous
    #: step's, and its statistical noise floor; None for a first step
    distance: float | None = None
    noise: float | None = None


class FaserIteration(BaseModel):
    """One alignment iteration: the largest relative change of the constants and pede's chi2."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    iteration: int
    max_rel_change: float | None = None
    max_rel_change_id: str | None = None
    chi2: float | None = None
    ndf: float | None = None
    chi2_ndf: float | None = None
    #: the reference payload's RMS distance to the injected truth ({"translation_mm", "rotation_mrad"})
    residual_to_truth: dict[str, float | None] | float | None = None
    n_tracks: int | None = None


class CampaignReport(BaseModel):
    """``report.json``: the numbers behind the plots, the text the task logged, the files."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    campaign: Literal["rg", "faser"]
    dag_id: str
    run_id: str
    site_conn_id: str
    created_at: datetime
    title: str
    outputs_dir: str
    #: True/False for campaigns with a convergence test (RG FP, FASER); None for RG EXP, which
    #: runs every step of every shift
    converged: bool | None
    #: the RG step / FASER iteration where the convergence test passed
    converged_at: int | None = None
    #: the convergence test's threshold (RG: L1 distance of successive steps; FASER: the
    #: largest relative change of the constants)
    tolerance: float
    #: why the campaign ended, in one line
    stop: str
    #: the final statistics (also the Asset event's metadata)
    final: dict[str, Any]
    rg_steps: list[RGStep] = Field(default_factory=list)
    nu: list[dict[str, Any]] = Field(default_factory=list)
    faser_iterations: list[FaserIteration] = Field(default_factory=list)
    #: file names of the plots in ``report_dir``
    plots: list[str] = Field(default_factory=list)
    text: str

    @property
    def report_dir(self) -> str:
        return report_dir(self.outputs_dir)

    @property
    def files(self) -> list[str]:
        """Every file of the report on the site, ``report.json`` first."""
        return [f"{self.report_dir}/{REPORT_JSON}", *(f"{self.report_dir}/{name}" for name in self.plots)]

    @property
    def empty(self) -> bool:
        """Nothing finished: no statistics to report, no Asset event."""
        return not (self.rg_steps or self.faser_iterations)

    @property
    def asset_uri(self) -> str:
        return asset_uri(self.site_conn_id, self.outputs_dir)

    def asset_extra(self) -> dict[str, Any]:
        """The Asset event's metadata: which run, whether and where it converged, the final
        statistics and where the report is (small: O(output dirs))."""
        return {"dag_id": self.dag_id, "run_id": self.run_id, "campaign": self.campaign, "title": self.title,
                "converged": self.converged, "converged_at": self.converged_at, "tolerance": self.tolerance,
                "stop": self.stop,
                "final": self.final, "report": self.files[0], "plots": self.files[1:]}


def describe_asset_event(uri: str, extra: dict[str, Any]) -> str:
    """What the downstream DAG prints of one outputs event: one header line, then the final
    statistics, one line per output (RG) or the last iteration (FASER)."""
    converged = {True: "converged", False: "not converged", None: "no convergence test"}[extra.get("converged")]
    at = extra.get("converged_at")
    lines = [f"{extra.get('title')} ({extra.get('dag_id')} / {extra.get('run_id')}): {converged}"
             f"{'' if at is None else f' at {at}'}; {extra.get('stop')}", f"  outputs {uri}"]
    for name, stats in sorted((extra.get("final") or {}).items()):
        shown = ", ".join(f"{k} {_num(v)}" for k, v in stats.items()) if isinstance(stats, dict) else _num(stats)
        lines.append(f"  {name}: {shown}")
    lines.append(f"  report {extra.get('report')}")
    return "\n".join(lines)


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.6g}" if isinstance(v, float) else str(v)
