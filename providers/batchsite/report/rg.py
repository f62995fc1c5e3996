"""The RG campaign's report, from the histograms its aggregation jobs left on the site.

Per output dir (FP, or each shift of EXP) and RG step: the z moments of the normalised z
histogram, and the convergence metric the replan used, the L1 distance between the step's
compared histogram (sym_z for FP, z for EXP) and the previous step's with its noise floor,
recomputed from the same files with the same functions (``collect.step_change``). Only the
steps of this campaign count: ``first_step .. last_step`` of the Params, and for FP none after
the step where the distance fell below ``tolerance`` (the campaign stopped there; a later step
on the site is an earlier run's).
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Any

from matplotlib.figure import Figure

from batchsite.campaign.collect import StepHistograms, step_change, step_histograms, step_row, summarise
from batchsite.campaign.rg import RGParams, output_dirs, output_shifts
from batchsite.report.model import CampaignReport, RGStep, RunRef, finite
from batchsite.report.plots import Histogram, rg_figures
from batchsite.site import Site


def rg_outputs_dir(params: RGParams, remote_root: str) -> str:
    """The dir holding all of a run's output dirs: the FP dir, or the EXP dir above the shifts."""
    dirs = output_dirs(remote_root, params)
    return dirs[0] if params.type == "FP" else posixpath.dirname(dirs[0])


def _label(shift: float | None) -> str:
    return "FP" if shift is None else f"shift {shift:g}"


def campaign_steps(params: RGParams, per_dir: dict[str, list[StepHistograms]]) -> list[tuple[RGStep, Histogram]]:
    """This campaign's steps of every output dir (in ``output_dirs`` order), each with its z
    histogram, and the convergence metric of each step."""
    out = []
    for (d, hists), shift in zip(per_dir.items(), output_shifts(params)):
        by_step = {h.step: h for h in hists if params.first_step <= h.step <= params.last_step}
        for k in sorted(by_step):
            h, prev = by_step[k], by_step.get(k - 1)
            distance = noise = None
            if h.compared is not None and prev is not None and prev.compared is not None:
                distance, noise = step_change(h.compared, prev.compared, h.samples or 0)
            row = step_row(h)
            out.append((RGStep(label=_label(shift), shift=shift, out_dir=d, step=k, samples=row["samples"],
                               z_mean=row["z_mean"], z_std=row["z_std"], z_peak=row["z_peak"],
                               distance=finite(distance), noise=finite(noise)), h.z))
            if params.type == "FP" and distance is not None and distance < params.tolerance:
                break
    return out


def _stop(params: RGParams, steps: list[RGStep]) -> tuple[bool | None, int | None, str]:
    """(converged, converged at step, why the campaign ended)."""
    if not steps:
        return (None if params.type == "EXP" else False), None, "no RG step finished"
    if params.type == "EXP":
        shifts = len({s.label for s in steps})
        return None, None, (f"RG steps {min(s.step for s in steps)}..{max(s.step for s in steps)} done for "
                            f"{shifts} shift(s) (EXP runs every step: no convergence test)")
    last = steps[-1]
    if last.distance is not None and last.distance < params.tolerance:
        return True, last.step, (f"converged at RG step {last.step} (L1 {last.distance:.4g} < tolerance "
                                 f"{params.tolerance:g})")
    change = "n/a" if last.distance is None else f"{last.distance:.4g}"
    if last.step >= params.last_step:
        return False, None, f"all {params.steps} steps done, not converged (last L1 {change}, tolerance " \
                            f"{params.tolerance:g})"
    return False, None, f"stopped after RG step {last.step} of {params.first_step}..{params.last_step} (L1 {change})"


def _final(steps: list[RGStep], nu: list[dict[str, Any]]) -> dict[str, Any]:
    """Per output dir its last step's statistics; EXP: the nu of the most RG applications."""
    final: dict[str, Any] = {}
    for s in steps:
        final[s.label] = {"step": s.step, "z_mean": s.z_mean, "z_std": s.z_std, "z_peak": s.z_peak,
                          "samples": s.samples, "distance": s.distance, "noise": s.noise}
    if nu:
        last = nu[-1]
        final["nu"] = {"n": last["n"], "nu_mean": last["nu_mean"], "nu_peak": last["nu_peak"]}
    return final


def _convergence_text(params: RGParams, steps: list[RGStep]) -> str:
    kind = "sym_z" if params.type == "FP" else "z"
    lines = [f"convergence (L1 distance between successive {kind} histograms"
             + (f"; tolerance {params.tolerance:g}):" if params.type == "FP" else "):")]
    for s in steps:
        if s.distance is not None:
            lines.append(f"  {s.label} RG step {s.step}: L1 {s.distance:.4g} (noise {s.noise:.4g})")
    if len(lines) == 1:
        lines.append("  n/a (no step with a previous step to compare with)")
    return "\n".join(lines)


def build_rg_report(params: RGParams, run: RunRef, outputs_dir: str, per_dir: dict[str, list[StepHistograms]],
                    *, now: datetime | None = None) -> tuple[CampaignReport, dict[str, Figure]]:
    """The report and its figures, from the histograms read from the site (``per_dir``: output
    dir -> its steps, in ``output_dirs`` order)."""
    kept = campaign_steps(params, per_dir)
    steps = [s for s, _ in kept]
    text, summary = summarise(params, _rows_per_dir(steps, list(per_dir)))
    converged, at, stop = _stop(params, steps)
    title = f"RG {params.type} {params.versionstr if params.group is not None else params.version}"
    report = CampaignReport(
        campaign="rg", dag_id=run.dag_id, run_id=run.run_id, site_conn_id=run.site_conn_id,
        created_at=now or datetime.now(timezone.utc), title=title, outputs_dir=outputs_dir, converged=converged,
        converged_at=at, tolerance=params.tolerance, stop=stop, final=_final(steps, summary["nu"]), rg_steps=steps,
        nu=summary["nu"], text=f"{text}\n{_convergence_text(params, steps)}\n{title}: {stop}")
    hists: dict[str, list[tuple[int, Histogram]]] = {}
    for s, z in kept:
        hists.setdefault(s.label, []).append((s.step, z))
    figures = {} if report.empty else rg_figures(report, hists)
    report.plots = sorted(figures)
    return report, figures


def _rows_per_dir(steps: list[RGStep], dirs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``collect.step_row``'s rows of each output dir (the shape ``summarise`` reads)."""
    return {d: [s.model_dump(include={"step", "samples", "z_mean", "z_std", "z_peak"}) for s in steps
                if s.out_dir == d] for d in dirs}


def rg_xcom(report: CampaignReport) -> dict[str, Any]:
    """The report task's XCom: ``{"outputs": {dir: rows}, "nu": [rows]}`` (steps x shifts)."""
    return {"outputs": _rows_per_dir(report.rg_steps, list(dict.fromkeys(s.out_dir for s in report.rg_steps))),
            "nu": report.nu}


def rg_report(site: Site, params: RGParams, run: RunRef) -> tuple[CampaignReport, dict[str, Figure]]:
    """``build_rg_report`` from the site: one remote command per output dir."""
    per_dir = {d: step_histograms(site, params, d, compared=True) for d in output_dirs(site.remote_root, params)}
    return build_rg_report(params, run, rg_outputs_dir(params, site.remote_root), per_dir)
