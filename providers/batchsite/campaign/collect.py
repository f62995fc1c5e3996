"""What the campaigns read back from a site: one remote command per call (no Airflow).

The shell lives in ``collect.sh`` beside this module (package data); each call runs it
through the site's transport with its arguments as argv, never pasted into the text.
``collect_round`` returns the measurements the RG ``replan`` needs: aggregation done, batches
without READY, z mean/std/peak and the L1 distance to the previous step's histogram (with its
noise floor), read from whatever the payload wrote: the reference payload's densities or the
group's raw counts, both normalised first. ``rg_summary`` is the end-of-campaign report: the
per-step z statistics of every output dir and, for EXP, the critical exponent nu.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchsite.backends.common import split_sections
from batchsite.campaign.common import CampaignConfigError
from batchsite.campaign.rg import (
    RGOutputs, RGParams, coarsen, critical_exponent, format_nu, hist_l1, noise_floor, output_dirs, output_shifts,
    z_moments,
)
from batchsite.campaign.rg_group import PREFLIGHT, REQUIRED_JOB_ENV
from batchsite.campaign.rg_layout import group_perturbed_file
from batchsite.model import CommandResult
from batchsite.shellscripts import load
from batchsite.site import Site

#: the keys the group's rg_hist_manager.sh writes into DONE.json
GROUP_DONE_KEYS = frozenset({"rg_step", "n_total", "num_batches", "batch_size", "job_id", "created", "config"})


def _run(site: Site, command: str, *args: str, timeout: float = 120) -> CommandResult:
    return site.transport.sh(load("batchsite.campaign", "collect.sh"), command, *args, timeout=timeout, check=True,
                             what=f"collect.sh {command} on site {site.name}")


def _load(b64: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not b64.strip():
        return None
    with np.load(io.BytesIO(base64.b64decode(b64))) as z:
        return np.asarray(z["histval"], float), np.asarray(z["binedges"], float)


def _json(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _group_done_ok(doc: dict[str, Any], outputs: RGOutputs, batches: int) -> bool:
    """The group's DONE.json of THIS step's aggregation: all its keys, our N and batch count."""
    return (GROUP_DONE_KEYS <= set(doc) and doc.get("n_total") == outputs.n_total
            and doc.get("num_batches") == batches)


def collect_round(site: Site, outputs: RGOutputs, prev_hist: str | None, batches: list[int], *,
                  all_batches: int | None = None) -> dict[str, Any]:
    """Measure one finished round of one partition (``batches``: the indices to look for).

    ``all_batches`` is the full batch count of the step (the group's DONE.json must name it)."""
    if outputs.phase == "perturb":
        return collect_perturbed(site, outputs, batches)
    r = _run(site, "round", outputs.done_json, outputs.batch_root, outputs.hist, prev_hist or "",
             outputs.z_hist or "", timeout=300)
    sec = split_sections(r.out)
    done_doc = _json(sec.get(("done", "-"), "").strip() or "null")
    ready = {int(n.split("_")[1]) for n in sec.get(("ready", "-"), "").split()
             if n.startswith("batch_") and n.split("_")[1].isdigit()}
    out: dict[str, Any] = {"done": False, "missing": [], "z_mean": None, "z_std": None, "z_peak": None,
                           "samples": None, "distance": None, "noise": None}
    # a step's batches stay until the NEXT step's aggregation: a DONE without them is stale
    out["missing"] = [b for b in batches if b not in ready]
    if out["missing"] or done_doc is None or (
            outputs.layout == "group" and not _group_done_ok(done_doc, outputs, all_batches or len(batches))):
        return out  # missing batches are repaired; none missing -> the aggregation alone reruns
    samples = int(done_doc["n_total"] if outputs.layout == "group" else done_doc.get("samples") or 0)
    zhist = _load(sec.get(("zhist", "-"), ""))
    if zhist is None:
        return {**out, "missing": []}  # DONE without its histogram: rerun the aggregation
    out.update(done=True, samples=samples, **z_moments(*zhist))
    cur, prev = _load(sec.get(("cur", "-"), "")), _load(sec.get(("prev", "-"), ""))
    if cur is not None and prev is not None:
        out["distance"], out["noise"] = step_change(cur, prev, samples)
    return out


def step_change(cur: tuple[np.ndarray, np.ndarray], prev: tuple[np.ndarray, np.ndarray],
                samples: int) -> tuple[float, float]:
    """The convergence metric of a step: the L1 distance between its histogram and the previous
    step's (both coarsened), and the noise floor of that distance for ``samples`` samples."""
    cur_c, prev_c = coarsen(*cur), coarsen(*prev)
    return hist_l1(cur_c[0], cur_c[1], prev_c[0], prev_c[1]), noise_floor(cur_c[0], cur_c[1], samples)


def collect_perturbed(site: Site, outputs: RGOutputs, batches: list[int]) -> dict[str, Any]:
    """The gen_shifted_data round of an EXP run: which perturbed_t files are there."""
    shift = float(outputs.out_dir.rsplit("/shift_", 1)[1])
    want = {b: group_perturbed_file(outputs.out_dir, shift, b) for b in batches}
    have = existing_paths(site, list(want.values()))
    missing = [b for b, path in want.items() if path not in have]
    return {"done": not missing, "missing": missing, "z_mean": None, "z_std": None, "z_peak": None,
            "samples": outputs.n_total, "distance": None, "noise": None}


@dataclass(frozen=True)
class StepHistograms:
    """One finished step of an output dir as the site holds it (raw values, not normalised)."""

    step: int
    samples: int | None
    z: tuple[np.ndarray, np.ndarray]
    #: the histogram the convergence test compares (``rg.hist_path``: sym_z for FP, z for EXP)
    compared: tuple[np.ndarray, np.ndarray] | None


def step_histograms(site: Site, params: RGParams, run_dir: str, *, compared: bool = False) -> list[StepHistograms]:
    """Every finished step of one output dir, sorted by step; with ``compared`` also the
    histogram the convergence test compares (read only when it is not the z histogram)."""
    layout = "group" if params.group is not None else "reference"
    kind = "sym_z" if compared and params.type == "FP" else None
    sec = split_sections(_run(site, "step-hists", layout, run_dir, *([kind] if kind else []), timeout=300).out)
    steps = []
    for (name, key), body in sec.items():
        if name != "zhist" or not key.isdigit():
            continue
        hist = _load(body)
        doc = _json(sec.get(("done", key), "").strip() or "null") or {}
        if hist is None:
            continue
        samples = doc.get("n_total") if layout == "group" else doc.get("samples")
        if kind:
            cmp = _load(sec.get(("cmp", key), ""))
        else:
            cmp = hist if compared else None  # EXP compares the z histogram itself
        steps.append(StepHistograms(step=int(key), samples=samples, z=hist, compared=cmp))
    return sorted(steps, key=lambda s: s.step)


def step_row(hists: StepHistograms) -> dict[str, Any]:
    """z mean, std, peak (from the normalised z histogram) and the samples of one step."""
    return {"step": hists.step, "samples": hists.samples, **z_moments(*hists.z)}


def step_rows(site: Site, params: RGParams, run_dir: str) -> list[dict[str, Any]]:
    """Per finished step of one output dir: ``step_row``, sorted by step."""
    return [step_row(h) for h in step_histograms(site, params, run_dir)]


def format_rows(hist_dir: str, rows: list[dict[str, Any]]) -> str:
    """``hist_dir`` (where the histograms are), then one line per step."""
    lines = [hist_dir]
    for s in rows:
        lines.append(f"  RG step {s['step']}: z mean {s['z_mean']:+.4f}  z std {s['z_std']:.4f}  "
                     f"z peak {s['z_peak']:+.4f}  samples {s['samples']}")
    return "\n".join(lines)


def rg_summary(site: Site, params: RGParams) -> tuple[str, dict[str, Any]]:
    """The campaign's report: per-step z statistics of every output dir and, for EXP, nu.

    Returns the text and ``{"outputs": {dir: rows}, "nu": [rows]}`` (XCom-sized: steps x shifts)."""
    return summarise(params, {d: step_rows(site, params, d) for d in output_dirs(site.remote_root, params)})


def summarise(params: RGParams, per_dir: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """``rg_summary`` of the rows already read (``step_row`` per step of each output dir)."""
    where = "data/RG<k>/hist" if params.group is not None else "hist"
    parts = [format_rows(f"{d}/{where}", rows) for d, rows in per_dir.items()]
    nu: list[dict[str, Any]] = []
    if params.type == "EXP":
        per_shift = {shift: {row["step"]: row for row in rows}
                     for shift, rows in zip(output_shifts(params), per_dir.values()) if shift is not None}
        nu_rows = critical_exponent(params, per_shift)
        parts.append(format_nu(nu_rows))
        nu = [row.model_dump(mode="json") for row in nu_rows]
    return "\n".join(parts), {"outputs": per_dir, "nu": nu}


def read_json(site: Site, path: str) -> dict[str, Any] | None:
    """A JSON file on the site, or None when it does not exist (or is not JSON yet)."""
    text = _run(site, "read-json", path).out.strip()
    return _json(text) if text else None


def latest_fp_step(site: Site, params: RGParams, fp_dir: str) -> int | None:
    """The last RG step of the FP run ``fp_dir`` (``rg.fp_hist_dir``) with its symmetrised histogram."""
    if params.group is not None:
        steps = [int(k) for k in _run(site, "group-fp-steps", fp_dir).out.split() if k.isdigit()]
        return max(steps) if steps else None
    prefix, suffix = "sym_z_hist_RG", ".npz"
    names = _run(site, "fp-steps", fp_dir).out.split()
    steps = [int(n[len(prefix):-len(suffix)]) for n in names if n[len(prefix):-len(suffix)].isdigit()]
    return max(steps) if steps else None


def existing_paths(site: Site, paths: list[str]) -> set[str]:
    """Those of ``paths`` that exist on the site."""
    if not paths:
        return set()
    return set(_run(site, "existing", *paths).out.splitlines())


def group_preflight(site: Site, params: RGParams) -> None:
    """Before anything is submitted: the group's repository, scripts, venv, ``module`` and the
    environment its jobs need, checked on the site with the same env scripts the jobs source.
    Raises CampaignConfigError naming everything missing."""
    chain = params.group
    if chain is None:
        return
    need = [v for v in REQUIRED_JOB_ENV if v not in chain.job_env]
    argv = ["bash", "-c", load("batchsite.campaign", PREFLIGHT), "batchsite", chain.env_script or "-",
            chain.repo_root, chain.scripts, *need]
    r = site.transport.run(argv, timeout=120, check=True, what=f"{PREFLIGHT} on site {site.name}")
    problems = [line.removeprefix("missing: ") for line in r.out.splitlines() if line.startswith("missing: ")]
    if problems:
        raise CampaignConfigError(f"group (the RG group's own chain) on site {site.name}: " + "; ".join(problems))
