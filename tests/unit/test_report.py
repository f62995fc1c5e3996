"""Campaign reports (``batchsite.report``): the plots (figure data, not pixels), the report
JSON, the convergence metric recomputed from the histograms on a real ``local`` site, the
Asset URI against Airflow's own sanitiser, and writing / reading / fetching on the site."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from batchsite.campaign.collect import StepHistograms, step_change
from batchsite.campaign.faser import parse_params as parse_faser
from batchsite.campaign.rg import parse_params as parse_rg
from batchsite.report.faser import build_faser_report
from batchsite.report.model import CampaignReport, RunRef, asset_uri, describe_asset_event
from batchsite.report.plots import png_bytes
from batchsite.report.publish import ReportNotFound, fetch_report, read_report, write_report
from batchsite.report.rg import build_rg_report, rg_outputs_dir, rg_report, rg_xcom

from .local_rounds import local_root, local_site  # noqa: F401 - fixtures

RUN = RunRef(dag_id="rg_campaign", run_id="manual__t1", site_conn_id="local")
NOW = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
EDGES = np.linspace(-25.0, 25.0, 1001)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def density(std: float, seed: int, n: int = 20000, mean: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A z histogram as the reference payload writes it (a density on 1000 bins)."""
    z = np.random.default_rng(seed).normal(mean, std, n)
    vals, edges = np.histogram(z, bins=EDGES, density=True)
    return vals, edges


def steps_of(stds: dict[int, float], n: int = 20000, mean: float = 0.0) -> list[StepHistograms]:
    out = []
    for k, s in stds.items():
        h = density(s, seed=k, n=n, mean=mean)
        out.append(StepHistograms(step=k, samples=n, z=h, compared=h))
    return out


def lines(fig) -> dict[str, tuple[list[float], list[float]]]:
    (ax,) = fig.axes
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


# ---------------------------------------------------------------------------- RG

def test_rg_fp_report_plots_every_step_and_stops_at_convergence():
    # std moves 2.0 -> 2.3 -> 2.31 -> 2.31: step 3 changes little; step 4 is an earlier run's
    params = parse_rg({"version": "v1", "steps": 4, "tolerance": 0.05})
    d = "/site/job_outputs/v1/FP"
    per_dir = {d: steps_of({0: 1.0, 1: 2.0, 2: 2.3, 3: 2.31, 4: 2.31, 5: 3.0})}
    report, figures = build_rg_report(params, RUN, d, per_dir, now=NOW)

    kept = [s.step for s in report.rg_steps]
    # step 0 is not a step of this campaign (reference steps are 1..4); it stops where L1 < tolerance
    first_below = next(s.step for s in report.rg_steps if s.distance is not None and s.distance < 0.05)
    assert kept == list(range(1, first_below + 1)) and first_below in (2, 3)
    assert report.converged is True and report.converged_at == first_below
    assert report.stop.startswith(f"converged at RG step {first_below} (L1 ")
    # the metric is the one the replan computes from the same two histograms
    by_step = {h.step: h for h in per_dir[d]}
    for s in report.rg_steps[1:]:
        assert (s.distance, s.noise) == step_change(by_step[s.step].compared, by_step[s.step - 1].compared, 20000)
    assert report.rg_steps[0].distance is None  # step 1: step 0 is not this campaign's

    assert sorted(figures) == report.plots == ["convergence.png", "z_histograms.png", "z_std.png"]
    hist_lines = lines(figures["z_histograms.png"])
    assert list(hist_lines) == [f"RG step {k}" for k in kept]
    for (xs, ys) in hist_lines.values():  # each overlaid density has unit mass on the plotted bins
        assert abs(sum(ys) * (xs[1] - xs[0]) - 1.0) < 1e-6
    std = lines(figures["z_std.png"])
    assert list(std) == ["FP"] and std["FP"] == (kept, [s.z_std for s in report.rg_steps])
    conv = lines(figures["convergence.png"])
    assert set(conv) == {"FP L1", "FP noise", "tolerance"}
    assert conv["FP L1"] == (kept[1:], [s.distance for s in report.rg_steps[1:]])
    assert conv["tolerance"][1] == [0.05, 0.05]
    assert figures["convergence.png"].axes[0].get_yscale() == "log"

    assert report.final == {"FP": {"step": first_below, "z_mean": report.rg_steps[-1].z_mean,
                                   "z_std": report.rg_steps[-1].z_std, "z_peak": report.rg_steps[-1].z_peak,
                                   "samples": 20000, "distance": report.rg_steps[-1].distance,
                                   "noise": report.rg_steps[-1].noise}}
    assert f"RG step {first_below}: z mean" in report.text and "RG step 4: z mean" not in report.text
    assert rg_xcom(report)["outputs"][d][0]["step"] == 1


def test_rg_fp_report_not_converged_says_so():
    params = parse_rg({"version": "v1", "steps": 2, "tolerance": 1e-9})
    d = "/site/job_outputs/v1/FP"
    report, figures = build_rg_report(params, RUN, d, {d: steps_of({1: 2.0, 2: 2.1})}, now=NOW)
    assert (report.converged, report.converged_at) == (False, None)
    assert report.stop.startswith("all 2 steps done, not converged (last L1 ")
    assert len(lines(figures["z_histograms.png"])) == 2


def test_rg_exp_report_one_histogram_plot_per_shift_and_no_tolerance_line():
    params = parse_rg({"type": "EXP", "version": "e1", "steps": 3, "shifts": [0.0, 0.5]})
    dirs = ["/site/job_outputs/e1/EXP/shift0", "/site/job_outputs/e1/EXP/shift1"]
    per_dir = {dirs[0]: steps_of({1: 2.0, 2: 2.1, 3: 2.2}),
               dirs[1]: steps_of({1: 2.0, 2: 2.1}, mean=1.0)}
    report, figures = build_rg_report(params, RUN, "/site/job_outputs/e1/EXP", per_dir, now=NOW)
    assert report.converged is None and "no convergence test" in report.stop
    assert report.plots == ["convergence.png", "z_histograms_shift0.png", "z_histograms_shift1.png", "z_std.png"]
    assert len(lines(figures["z_histograms_shift0.png"])) == 3 and len(lines(figures["z_histograms_shift1.png"])) == 2
    assert set(lines(figures["z_std.png"])) == {"shift 0", "shift 0.5"}
    assert set(lines(figures["convergence.png"])) == {"shift 0 L1", "shift 0 noise", "shift 0.5 L1",
                                                      "shift 0.5 noise"}
    # nu from the steps both shifts reached (1 and 2), the last one in the final statistics
    assert [row["step"] for row in report.nu] == [1, 2] and report.final["nu"]["n"] == 2
    assert set(report.final) == {"shift 0", "shift 0.5", "nu"}


def test_rg_report_without_a_finished_step_has_no_plots():
    params = parse_rg({"version": "v1", "steps": 2})
    report, figures = build_rg_report(params, RUN, "/site/o", {"/site/o": []}, now=NOW)
    assert report.empty and figures == {} and report.plots == []
    assert report.stop == "no RG step finished" and report.converged is False


def test_report_json_round_trips_and_the_asset_metadata_is_strict_json():
    params = parse_rg({"version": "v1", "steps": 2, "tolerance": 1e-9})
    d = "/site/job_outputs/v1/FP"
    report, _ = build_rg_report(params, RUN, d, {d: steps_of({1: 2.0, 2: 2.1})}, now=NOW)
    back = CampaignReport.model_validate_json(report.model_dump_json())
    assert back == report and back.report_dir == f"{d}/report"
    extra = report.asset_extra()
    json.dumps(extra, allow_nan=False)  # Airflow stores it as JSON
    assert extra["report"] == f"{d}/report/report.json" and extra["run_id"] == "manual__t1"
    assert extra["plots"] == [f"{d}/report/{name}" for name in report.plots]
    text = describe_asset_event(report.asset_uri, extra)
    assert text.splitlines()[0].startswith("RG FP v1 (rg_campaign / manual__t1): not converged; all 2 steps done")
    assert f"z_std {report.rg_steps[-1].z_std:.6g}" in text
    with pytest.raises(ValueError):
        CampaignReport.model_validate({**json.loads(report.model_dump_json()), "unknown": 1})


def test_png_is_a_png():
    params = parse_rg({"version": "v1", "steps": 2})
    report, figures = build_rg_report(params, RUN, "/s/o", {"/s/o": steps_of({1: 2.0, 2: 2.1})}, now=NOW)
    for fig in figures.values():
        data = png_bytes(fig)
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


# ---------------------------------------------------------------------------- FASER

def faser_rows(changes: list[float | None]) -> list[dict]:
    return [{"iteration": i + 1, "max_rel_change": c, "max_rel_change_id": "11 dx", "chi2": 100.0 / (i + 1),
             "ndf": 50.0, "chi2_ndf": 2.0 / (i + 1), "done": True} for i, c in enumerate(changes)]


def test_faser_report_plots_change_and_chi2_per_iteration():
    params = parse_faser({"files": "400-403", "iterations": 6, "tolerance": 0.001})
    rows = faser_rows([0.5, 0.02, None, 0.0004, 0.0001])  # iteration 5 is an earlier run's
    report, figures = build_faser_report(params, RunRef(dag_id="faser_alignment", run_id="r", site_conn_id="local"),
                                         "/site/faser/Y2023_R011705_F400-402_ST3", rows, now=NOW)
    assert (report.converged, report.converged_at) == (True, 4)
    assert [r.iteration for r in report.faser_iterations] == [1, 2, 3, 4]
    assert report.stop == "converged at iter04 (largest relative change 4.00e-04 < 1.00e-03)"
    assert report.plots == ["chi2_ndf.png", "max_rel_change.png"]
    change = lines(figures["max_rel_change.png"])
    # iteration 3 has no value: left out of the line, not plotted as 0
    assert change["largest relative change"] == ([1, 2, 4], [0.5, 0.02, 0.0004])
    assert change["tolerance"][1] == [0.001, 0.001]
    assert lines(figures["chi2_ndf.png"])["chi2/ndf"] == ([1, 2, 3, 4], [2.0, 1.0, 2.0 / 3, 0.5])
    assert report.final["alignment"] == {"iteration": 4, "max_rel_change": 0.0004, "max_rel_change_id": "11 dx",
                                         "chi2_ndf": 0.5}
    assert "iter04: max rel change 4.000e-04 (11 dx)  chi2 25 / ndf 50 = 0.5" in report.text
    assert "iter05" not in report.text


def test_faser_report_not_converged_from_the_reference_payloads_rows():
    params = parse_faser({"files": "400-403", "iterations": 2})
    # alignment.json of the reference payload: an integer label, residuals to the truth as a dict
    rows = [{"iteration": i + 1, "max_rel_change": c, "max_rel_change_label": 101 + i, "chi2_ndf": 1.5,
             "residual_to_truth": {"translation_mm": 0.01, "rotation_mrad": 0.2}, "n_tracks": 900}
            for i, c in enumerate([0.5, 0.1])]
    report, _ = build_faser_report(params, RunRef(dag_id="faser_alignment", run_id="r", site_conn_id="local"),
                                   "/o", rows, now=NOW)
    assert report.converged is False and report.stop.startswith("2 of 2 iteration(s) done, not converged")
    assert [r.max_rel_change_id for r in report.faser_iterations] == ["101", "102"]
    assert "iter02: max rel change 1.000e-01 (102)  chi2/ndf 1.5  residual to truth" in report.text


# ---------------------------------------------------------------------------- Asset URI

def test_asset_uri_is_left_unchanged_by_airflows_sanitiser():
    from airflow.sdk import Asset

    for conn, path in (("local", "/home/u/batchsite-local/job_outputs/v1/FP"), ("lx.plus_2", "/eos/a+b/x=1,y@z"),
                       ("Taskfarm", "/tmp/with space/o")):
        uri = asset_uri(conn, path)
        assert Asset(uri).uri == uri, uri
    assert asset_uri("Taskfarm", "/tmp/with space/o") == "batchsite://Taskfarm/tmp/with%20space/o"
    for conn, path in (("bad conn", "/x"), ("", "/x"), ("user:pw@host", "/x"), ("ok", "rel/x"), ("ok", "/x/")):
        with pytest.raises(ValueError):
            asset_uri(conn, path)


# ---------------------------------------------------------------------------- on a real local site

def write_reference_step(out: Path, k: int, std: float, n: int = 20000) -> None:
    """One finished step of the reference payload: DONE json, z and sym_z histograms."""
    for kind in ("z", "sym_z"):
        vals, edges = density(std * (1.0 if kind == "z" else 1.01), seed=10 * k + len(kind), n=n)
        (out / "hist" / kind).mkdir(parents=True, exist_ok=True)
        np.savez(out / "hist" / kind / f"{kind}_hist_RG{k}.npz", histval=vals, binedges=edges)
    (out / "stats").mkdir(parents=True, exist_ok=True)
    (out / "stats" / f"DONE_RG{k}.json").write_text(json.dumps({"samples": n, "step": k}))


def test_rg_report_on_the_local_site_reads_sym_z_and_writes_reads_fetches(local_site, local_root, tmp_path):
    params = parse_rg({"version": "v1", "steps": 3, "tolerance": 1e-9})
    out = local_root / "job_outputs" / "v1" / "FP"
    for k, std in ((1, 2.0), (2, 2.2), (3, 2.25)):
        write_reference_step(out, k, std)
    report, figures = rg_report(local_site, params, RUN)
    assert report.outputs_dir == rg_outputs_dir(params, str(local_root)) == str(out)
    # the metric compares the sym_z histograms (FP), not the z ones
    with np.load(out / "hist/sym_z/sym_z_hist_RG3.npz") as a, np.load(out / "hist/sym_z/sym_z_hist_RG2.npz") as b:
        expected = step_change((a["histval"], a["binedges"]), (b["histval"], b["binedges"]), 20000)
    assert (report.rg_steps[-1].distance, report.rg_steps[-1].noise) == expected

    written = write_report(local_site.transport, report, figures)
    assert written == report.files and [Path(p).name for p in written] == ["report.json", *report.plots]
    for p in written[1:]:
        assert Path(p).read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in (out / "report").iterdir() if p.name.startswith(".")]  # no temp file left
    assert read_report(local_site.transport, str(out)) == report

    pulled = fetch_report(local_site.transport, report, tmp_path / "here")
    assert sorted(pulled.received) == sorted(["report.json", *report.plots])
    assert (tmp_path / "here" / "z_std.png").read_bytes() == (out / "report" / "z_std.png").read_bytes()

    with pytest.raises(ReportNotFound, match=f"no report at {local_root}/job_outputs/v2/FP/report/report.json"):
        read_report(local_site.transport, f"{local_root}/job_outputs/v2/FP")


def test_write_report_refuses_figures_that_are_not_the_reports_plots(local_site, local_root):
    params = parse_rg({"version": "v1", "steps": 2})
    report, figures = build_rg_report(params, RUN, f"{local_root}/o", {"x": steps_of({1: 2.0})}, now=NOW)
    figures.pop("z_std.png")
    with pytest.raises(ValueError, match="not the report's plots"):
        write_report(local_site.transport, report, figures)
    assert not (local_root / "o").exists()


def test_the_nightly_campaign_is_scheduled_with_params_rg_campaign_accepts():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "dags" / "rg_nightly_check.py"
    spec = importlib.util.spec_from_file_location("rg_nightly_check_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = parse_rg(module.NIGHTLY_CONF)  # what rg_campaign's first task will check
    assert (params.site_conn_id, params.type, params.version) == ("local", "FP", "nightly")
    (trigger,) = module.rg_nightly_check().tasks
    assert trigger.trigger_dag_id == "rg_campaign" and trigger.conf == module.NIGHTLY_CONF
    assert trigger.wait_for_completion and trigger.deferrable
