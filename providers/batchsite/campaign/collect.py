"""What the campaigns read back from a site: one remote command per call (no Airflow).

The shell lives in ``collect.sh`` beside this module (package data); each call runs it
through the site's transport with its arguments as argv, never pasted into the text.
``collect_round`` returns the measurements the RG ``replan`` needs: DONE.json present,
batches without READY, z mean/std and the L1 distance to the previous step's histogram
(with its noise floor).
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

from batchsite.backends.common import split_sections
from batchsite.campaign.rg import RGOutputs, coarsen, hist_l1, noise_floor
from batchsite.model import CommandResult
from batchsite.shellscripts import load
from batchsite.site import Site


def _run(site: Site, command: str, *args: str, timeout: float = 120) -> CommandResult:
    return site.transport.sh(load("batchsite.campaign", "collect.sh"), command, *args, timeout=timeout, check=True,
                             what=f"collect.sh {command} on site {site.name}")


def _load(b64: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not b64.strip():
        return None
    with np.load(io.BytesIO(base64.b64decode(b64))) as z:
        return np.asarray(z["histval"], float), np.asarray(z["binedges"], float)


def collect_round(site: Site, outputs: RGOutputs, prev_hist: str | None, batches: list[int]) -> dict[str, Any]:
    r = _run(site, "round", outputs.done_json, outputs.batch_root, outputs.hist, prev_hist or "", timeout=300)
    sec = split_sections(r.out)
    done_text = sec.get(("done", "-"), "").strip()
    ready = {int(n.split("_")[1]) for n in sec.get(("ready", "-"), "").split() if n.startswith("batch_")}
    missing = [b for b in batches if b not in ready]
    out: dict[str, Any] = {"done": False, "missing": missing, "z_mean": None, "z_std": None,
                           "samples": None, "distance": None, "noise": None}
    if not done_text or missing:
        return out
    try:
        stats = json.loads(done_text)
    except json.JSONDecodeError:
        return out
    cur = _load(sec.get(("cur", "-"), ""))
    prev = _load(sec.get(("prev", "-"), ""))
    cur = coarsen(*cur) if cur is not None else None
    prev = coarsen(*prev) if prev is not None else None
    out.update(done=True, z_mean=stats.get("z_mean"), z_std=stats.get("z_std"), samples=stats.get("samples"))
    if cur is not None and prev is not None:
        out["distance"] = hist_l1(cur[0], cur[1], prev[0], prev[1])
        out["noise"] = noise_floor(cur[0], cur[1], int(stats.get("samples") or 1))
    return out


def step_stats(site: Site, out: str) -> list[dict[str, Any]]:
    """Every ``stats/DONE_RG*.json`` under an output dir, sorted by step."""
    rows = [json.loads(line) for line in _run(site, "step-stats", out).out.splitlines() if line.strip()]
    return sorted(rows, key=lambda s: s.get("step", 0))


def format_stats(out: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"{out}/hist"]
    for s in rows:
        lines.append(f"  RG step {s['step']}: z mean {s['z_mean']:+.4f}  z std {s['z_std']:.4f}  "
                     f"samples {s['samples']}")
    return "\n".join(lines)


def read_json(site: Site, path: str) -> dict[str, Any] | None:
    """A JSON file on the site, or None when it does not exist (or is not JSON yet)."""
    text = _run(site, "read-json", path).out.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def latest_fp_step(site: Site, sym_z_dir: str) -> int | None:
    """The last RG step whose symmetrised FP histogram is in ``sym_z_dir`` (``rg.fp_hist_dir``)."""
    prefix, suffix = "sym_z_hist_RG", ".npz"
    names = _run(site, "fp-steps", sym_z_dir).out.split()
    steps = [int(n[len(prefix):-len(suffix)]) for n in names if n[len(prefix):-len(suffix)].isdigit()]
    return max(steps) if steps else None


def existing_paths(site: Site, paths: list[str]) -> set[str]:
    """Those of ``paths`` that exist on the site."""
    if not paths:
        return set()
    return set(_run(site, "existing", *paths).out.splitlines())
