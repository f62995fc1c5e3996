"""Read what one round left on the site, in one remote command (no Airflow).

Returns the measurements ``replan`` needs: DONE.json present, batches without READY,
z mean/std and the L1 distance to the previous step's histogram (with its noise floor).
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

from batchsite.backends.common import split_sections
from batchsite.campaign.rg import coarsen, hist_l1, noise_floor
from batchsite.transport.base import Transport

_SCRIPT = r"""
done=$1; batches=$2; cur=$3; prev=$4
echo "@@BATCHSITE done -"; [ -s "$done" ] && cat "$done"
echo "@@BATCHSITE ready -"; for d in "$batches"/batch_*; do [ -f "$d/READY" ] && basename "$d"; done
echo "@@BATCHSITE cur -"; [ -s "$cur" ] && base64 "$cur"
echo "@@BATCHSITE prev -"; [ -n "$prev" ] && [ -s "$prev" ] && base64 "$prev"
true
"""


def _load(b64: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not b64.strip():
        return None
    with np.load(io.BytesIO(base64.b64decode(b64))) as z:
        return np.asarray(z["histval"], float), np.asarray(z["binedges"], float)


def collect_round(transport: Transport, rd: dict[str, Any], prev_hist: str | None,
                  batches: list[int]) -> dict[str, Any]:
    r = transport.sh(_SCRIPT, rd["done_json"], rd["batch_root"], rd["hist"], prev_hist or "", timeout=300)
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


def step_stats(transport: Transport, out: str) -> list[dict[str, Any]]:
    """Every ``stats/DONE_RG*.json`` under an output dir, sorted by step (one command)."""
    r = transport.sh('for f in "$1"/stats/DONE_RG*.json; do [ -f "$f" ] && { cat "$f"; echo; }; done; true', out)
    rows = [json.loads(line) for line in r.out.splitlines() if line.strip()]
    return sorted(rows, key=lambda s: s.get("step", 0))


def format_stats(out: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"{out}/hist"]
    for s in rows:
        lines.append(f"  RG step {s['step']}: z mean {s['z_mean']:+.4f}  z std {s['z_std']:.4f}  "
                     f"samples {s['samples']}")
    return "\n".join(lines)


def read_json(transport: Transport, path: str) -> dict[str, Any] | None:
    """A JSON file on the site, or None when it does not exist (one command)."""
    r = transport.sh('[ -s "$1" ] && cat "$1"; true', path)
    text = r.out.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
