"""The FASER alignment campaign's report: per iteration the largest relative change of the
constants and pede's chi2/ndf (the group's chain: from their constants files and
millepede.res/.log; the reference payload: from its ``alignment.json``)."""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Any

from matplotlib.figure import Figure

from batchsite.campaign.collect import read_json
from batchsite.campaign.faser import FaserParams, data_iter_dir, group_outputs, iter_dir, tree_name
from batchsite.campaign.faser_site import read_iteration
from batchsite.report.model import CampaignReport, FaserIteration, RunRef, finite
from batchsite.report.plots import faser_figures
from batchsite.site import Site


def faser_outputs_dir(params: FaserParams, remote_root: str) -> str:
    """The data tree ``Y.._R.._F.._ST.`` (under ``paths.eos_output_dir`` when the data goes to EOS)."""
    return posixpath.dirname(data_iter_dir(params, remote_root, 1))


def iteration_rows(site: Site, params: FaserParams, remote_root: str) -> list[dict[str, Any]]:
    """Every finished iteration from 1 on, until the first without a Millepede result."""
    rows = []
    for it in range(1, params.iterations + 1):
        if params.cfg.uses_group_chain:
            summary = read_iteration(site, group_outputs(params, remote_root, it))
            summary = summary if summary["done"] else None
        else:
            summary = read_json(site, f"{iter_dir(params, remote_root, it)}/3millepede/alignment.json")
        if summary is None:
            break
        rows.append({"iteration": it, **summary})
    return rows


def where_of(row: dict[str, Any]) -> str | None:
    """Which constant changed most: the group's ``"<id> <param>"``, or the reference payload's
    integer ``max_rel_change_label``."""
    where = row.get("max_rel_change_id")
    where = row.get("max_rel_change_label") if where is None else where
    return None if where is None else str(where)


def iterations_text(params: FaserParams, rows: list[dict[str, Any]]) -> str:
    """The convergence table the report task logs (one line per iteration)."""
    lines = [f"FASER alignment {tree_name(params)}: {len(rows)} iteration(s)"]
    for r in rows:
        chi2 = (f"chi2 {r['chi2']:.6g} / ndf {r['ndf']:.0f} = {r['chi2_ndf']:.6g}" if r.get("chi2") is not None
                else f"chi2/ndf {r.get('chi2_ndf')}")
        change = r.get("max_rel_change")
        lines.append(f"  iter{r['iteration']:02d}: max rel change {'n/a' if change is None else format(change, '.3e')} "
                     f"({where_of(r)})  {chi2}"
                     + (f"  residual to truth {r['residual_to_truth']}" if r.get("residual_to_truth") else ""))
    return "\n".join(lines)


def build_faser_report(params: FaserParams, run: RunRef, outputs_dir: str, rows: list[dict[str, Any]], *,
                       now: datetime | None = None) -> tuple[CampaignReport, dict[str, Figure]]:
    """The report and its figures from the iterations read from the site."""
    its = [FaserIteration.model_validate({**{k: finite(v) for k, v in r.items()}, "max_rel_change_id": where_of(r)})
           for r in rows]
    converged_at = next((r.iteration for r in its
                         if r.max_rel_change is not None and r.max_rel_change < params.tolerance), None)
    if converged_at is not None:
        its = [r for r in its if r.iteration <= converged_at]  # later ones on the site are an earlier run's
        stop = (f"converged at iter{converged_at:02d} (largest relative change {its[-1].max_rel_change:.2e} < "
                f"{params.tolerance:.2e})")
    elif not its:
        stop = "no iteration finished"
    else:
        change = its[-1].max_rel_change
        stop = (f"{len(its)} of {params.iterations} iteration(s) done, not converged (largest relative change "
                f"{'n/a' if change is None else format(change, '.2e')}, tolerance {params.tolerance:.2e})")
    final: dict[str, Any] = {}
    if its:
        last = its[-1]
        final["alignment"] = {"iteration": last.iteration, "max_rel_change": last.max_rel_change,
                              "max_rel_change_id": last.max_rel_change_id, "chi2_ndf": last.chi2_ndf}
    title = f"FASER {tree_name(params)}"
    kept = rows[:len(its)]
    report = CampaignReport(
        campaign="faser", dag_id=run.dag_id, run_id=run.run_id, site_conn_id=run.site_conn_id,
        created_at=now or datetime.now(timezone.utc), title=title, outputs_dir=outputs_dir,
        converged=converged_at is not None, converged_at=converged_at, tolerance=params.tolerance, stop=stop,
        final=final, faser_iterations=its, text=f"{iterations_text(params, kept)}\n{title}: {stop}")
    figures = {} if report.empty else faser_figures(report)
    report.plots = sorted(figures)
    return report, figures


def faser_report(site: Site, params: FaserParams, remote_root: str, run: RunRef
                 ) -> tuple[CampaignReport, dict[str, Figure]]:
    """``build_faser_report`` from the site."""
    return build_faser_report(params, run, faser_outputs_dir(params, remote_root),
                              iteration_rows(site, params, remote_root))


def faser_xcom(report: CampaignReport) -> dict[str, Any]:
    """The report task's XCom: ``{"iterations": [rows]}``."""
    return {"iterations": [it.model_dump(mode="json") for it in report.faser_iterations]}
