"""The RG campaign as plain Python: parameters, remote layout, rounds, replan, convergence.

A *round* runs one RG step for one or more partitions (FP: one; EXP: one per shift). Each
partition is a Slurm array / DAG of generation batches plus the aggregation fan-in. After
each round ``replan`` reads what the aggregation wrote (DONE.json, histograms) and decides:

* some batches missing (failed, timed out, vanished) -> repair round for the SAME step with
  only those batches; the others' outputs stay where they are;
* FP and the z-histogram moved less than ``tolerance`` (L1) since the previous step ->
  converged: stop; later rounds are skipped;
* the move is within the statistical noise of the histograms -> double the samples;
* otherwise the next step, until ``steps``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchsite.campaign.common import (
    SAFE_PATH, CampaignConfigError, CampaignSetup, check_argv_template, check_token, explain_validation, render_argv,
    short,
)
from batchsite.rounds import ResourceRequest, RoundRequest

#: rounds unrolled in the Airflow DAG (steps + repairs); replan fails clearly beyond it
MAX_ROUNDS = 12
MAX_STEPS = 10
MAX_SAMPLES = 10**10
#: numpy's legacy ``np.random.seed`` (a group's own payload may use it) takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1
MAX_MEMORY_MB = 4 * 1024 * 1024  # 4 TiB
MAX_BATCHES = 1000

DEFAULT_COMMANDS: dict[str, list[str]] = {
    # the reference payload (include/rg_reference, staged to <remote_root>/code/source)
    "generate": ["{python}", "-m", "source.generate", "--out-dir", "{batch_root}", "--step", "{step}",
                 "--batch", "{batch}", "--samples", "{samples}", "--seed", "{seed}",
                 "--input-hist={input_hist}", "--shift={shift}"],
    "aggregate": ["{python}", "-m", "source.aggregate", "--in-dir", "{batch_root}", "--out-dir", "{out_dir}",
                  "--step", "{step}", "--batches", "{batches}", "--type", "{type}"],
}


#: the placeholders a command template may use (the values round_request renders)
PLACEHOLDERS = frozenset({"python", "batch_root", "out_dir", "step", "seed", "samples", "input_hist", "shift", "type",
                          "batches", "version", "method", "remote_root", "initial", "batch"})


class RGParams(BaseModel):
    """Everything a run of the RG campaign is told (the DAG's Params, validated again here)."""

    # strict: "3" is not an integer; the UI form and the REST API both send JSON types
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["FP", "EXP"] = "FP"
    version: str = "v1"
    steps: int = Field(default=4, ge=1, le=MAX_STEPS)
    samples: int = Field(default=100_000, ge=100, le=MAX_SAMPLES, description="samples per RG step")
    batches: int = Field(default=32, ge=1, le=MAX_BATCHES)
    throttle: int = Field(default=4, ge=1, le=MAX_BATCHES)
    seed: int = Field(default=1, ge=0, le=MAX_SEED)
    method: Literal["analytic", "numerical"] = "analytic"
    site_conn_id: str = "local"
    shifts: list[float] = Field(default_factory=list, max_length=64)
    tolerance: float = Field(default=0.02, gt=0, le=2)
    fp_version: str | None = None
    max_samples: int = Field(default=10**8, ge=100, le=MAX_SAMPLES)
    max_repairs: int = Field(default=2, ge=0, le=5)
    time_minutes: int | None = Field(default=None, gt=0, le=60 * 24 * 7)
    mem_mb: int | None = Field(default=None, gt=0, le=MAX_MEMORY_MB)
    code_dir: str | None = None  # local dir of the group's own `source/` package (default: reference)
    commands: dict[str, list[str]] | None = None

    @field_validator("version", "fp_version", "site_conn_id")
    @classmethod
    def _token(cls, v, info):
        return v if v is None else check_token(info.field_name, v)

    @field_validator("code_dir")
    @classmethod
    def _code_dir(cls, v):
        import os

        if v is None:
            return v
        what = ("must be the absolute path of a local package directory (with __init__.py), staged as "
                "<remote_root>/code/source")
        if len(v) > 1024 or not os.path.isabs(v):
            raise ValueError(f"code_dir={short(v)} {what}")
        if not SAFE_PATH.fullmatch(v):
            raise ValueError(f"code_dir={short(v)}: use a directory whose path has only letters, digits and "
                             "'/._+@=,-' (no blanks, quotes or shell characters)")
        if {".", ".."} & set(v.split("/")):
            raise ValueError(f"code_dir={short(v)} must not contain '.' or '..' components: give the real directory")
        if not os.path.isfile(os.path.join(v, "__init__.py")):
            raise ValueError(f"code_dir={short(v)} {what}; there is no {os.path.join(v, '__init__.py')}")
        return os.path.normpath(v)

    @field_validator("shifts")
    @classmethod
    def _shifts(cls, v):
        for i, s in enumerate(v):
            if not math.isfinite(s) or abs(s) > 50:
                raise ValueError(f"shifts[{i}]={short(s)} must be a finite number with |shift| <= 50")
        return v

    @field_validator("commands")
    @classmethod
    def _commands(cls, v):
        if v is None:
            return v
        unknown = set(v) - set(DEFAULT_COMMANDS)
        if unknown:
            names = sorted(unknown)
            shown = ", ".join(short(n, 40) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ValueError(f"unknown command(s) {shown}; known: {sorted(DEFAULT_COMMANDS)}")
        for name, argv in v.items():
            check_argv_template(f"commands.{name}", argv, PLACEHOLDERS)
        return v

    @model_validator(mode="after")
    def _cross(self) -> RGParams:
        if self.throttle > self.batches:
            raise ValueError(f"throttle={self.throttle} is larger than batches={self.batches}: "
                             f"set throttle <= batches")
        if self.samples < self.batches:
            raise ValueError(f"samples={self.samples} must be at least batches={self.batches}")
        if self.type == "EXP" and not self.shifts:
            raise ValueError("type=EXP needs at least one value in shifts, e.g. [0.05, 0.1]")
        if self.type == "FP" and self.shifts:
            raise ValueError("shifts are only used with type=EXP; leave shifts empty for FP")
        if self.max_samples < self.samples:
            raise ValueError("max_samples must be >= samples")
        return self


class RGSetup(CampaignSetup):
    params: RGParams


def parse_params(raw: dict[str, Any]) -> RGParams:
    try:
        return RGParams.model_validate(raw)
    except ValidationError as e:
        raise CampaignConfigError(explain_validation("RG campaign params", e)) from None


# ---------------------------------------------------------------------------- layout

def out_dir(root: str, params: RGParams, shift_index: int | None) -> str:
    base = f"{root}/job_outputs/{params.version}/{params.type}"
    return base if shift_index is None else f"{base}/shift{shift_index}"


def output_dirs(root: str, params: RGParams) -> list[str]:
    if params.type == "FP":
        return [out_dir(root, params, None)]
    return [out_dir(root, params, i) for i in range(len(params.shifts))]


def log_dir(root: str, params: RGParams, shift_index: int | None, step: int) -> str:
    base = f"{root}/job_logs/{params.version}/{params.type}"
    if shift_index is not None:
        base += f"/shift{shift_index}"
    return f"{base}/RG{step}"


def hist_path(out: str, params: RGParams, step: int) -> str:
    """The histogram the NEXT step samples from: symmetrised for FP, plain z for EXP."""
    if params.type == "FP":
        return f"{out}/hist/sym_z/sym_z_hist_RG{step}.npz"
    return f"{out}/hist/z/z_hist_RG{step}.npz"


def fp_seed_hist(root: str, params: RGParams, fp_step: int) -> str:
    return f"{fp_hist_dir(root, params)}/sym_z_hist_RG{fp_step}.npz"


def fp_hist_dir(root: str, params: RGParams) -> str:
    """Where the FP run that seeds an EXP run keeps its symmetrised histograms."""
    return f"{root}/job_outputs/{params.fp_version or params.version}/FP/hist/sym_z"


# ---------------------------------------------------------------------------- rounds

def initial_partitions(params: RGParams, fp_step: int | None = None) -> list[dict[str, Any]]:
    per_batch = math.ceil(params.samples / params.batches)
    shifts: list[tuple[int | None, float | None]] = (
        [(None, None)] if params.type == "FP" else list(enumerate(params.shifts))
    )
    parts = []
    for si, s in shifts:
        parts.append({
            "step": 1, "shift_index": si, "shift": s, "batches": list(range(params.batches)),
            "samples_per_batch": per_batch, "repair": 0, "input_step": fp_step if params.type == "EXP" else None,
            "history": [],
        })
    return parts


class RGOutputs(BaseModel):
    """Where one partition's round leaves its results; only the campaign's collect step reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dir: str
    batch_root: str
    done_json: str  # stats/DONE_RG{step}.json, written by the aggregation last
    hist: str  # the histogram the next step samples from


class RGRoundRequest(RoundRequest):
    collect: RGOutputs


def round_request(params: RGParams, part: dict[str, Any], *, remote_root: str, python: str) -> RGRoundRequest:
    """What the round operator submits for one partition (units + aggregation fan-in)."""
    si, step = part["shift_index"], part["step"]
    out = out_dir(remote_root, params, si)
    batch_root = f"{out}/batches/RG{step}"
    if step > 1:
        input_hist = hist_path(out, params, step - 1)
    elif params.type == "EXP":
        input_hist = fp_seed_hist(remote_root, params, part["input_step"] or 1)
    else:
        input_hist = None
    cmds = {**DEFAULT_COMMANDS, **(params.commands or {})}
    common = {"python": python, "batch_root": batch_root, "out_dir": out, "step": step, "seed": params.seed,
              "samples": part["samples_per_batch"], "input_hist": input_hist,
              "shift": part["shift"] if step == 1 else None,  # shift the FP once, then let it flow
              "type": params.type, "batches": params.batches, "version": params.version,
              "method": params.method, "remote_root": remote_root,
              "initial": 1 if input_hist is None else 0}  # the group's data_generation INITIAL flag
    units = [{"index": b, "argv": render_argv(cmds["generate"], {**common, "batch": b})}
             for b in part["batches"]]
    label = f"RG step {step}" + (f" shift {part['shift']}" if si is not None else "")
    if part["repair"]:
        label += f" (repair {part['repair']}: batches {part['batches']})"
    return RGRoundRequest(
        units=units,
        fanin=render_argv(cmds["aggregate"], {**common, "batch": None}),
        label=label,
        workdir=log_dir(remote_root, params, si, step),
        cwd=f"{remote_root}/code",
        throttle=min(params.throttle, len(part["batches"])),
        resources=ResourceRequest(time_minutes=params.time_minutes, mem_mb=params.mem_mb),
        collect=RGOutputs(out_dir=out, batch_root=batch_root, done_json=f"{out}/stats/DONE_RG{step}.json",
                          hist=hist_path(out, params, step)),
    )


# ---------------------------------------------------------------------------- convergence

def hist_l1(a_vals: np.ndarray, a_edges: np.ndarray, b_vals: np.ndarray, b_edges: np.ndarray) -> float:
    """L1 distance between two densities, re-binned onto the union of their edges."""
    edges = np.union1d(a_edges, b_edges)
    mids = 0.5 * (edges[:-1] + edges[1:])
    width = np.diff(edges)

    def at(vals, e):
        idx = np.searchsorted(e, mids, side="right") - 1
        inside = (idx >= 0) & (idx < len(vals))
        out = np.zeros_like(mids)
        out[inside] = vals[idx[inside]]
        return out

    return float(np.sum(np.abs(at(a_vals, a_edges) - at(b_vals, b_edges)) * width))


def coarsen(vals: np.ndarray, edges: np.ndarray, target_bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Merge neighbouring bins so that about ``target_bins`` remain: the convergence test
    compares shapes, and 1000 fine bins would drown any change in sampling noise."""
    factor = max(1, len(vals) // target_bins)
    n = (len(vals) // factor) * factor
    width = np.diff(edges)[:n]
    mass = (vals[:n] * width).reshape(-1, factor).sum(axis=1)
    new_edges = edges[: n + 1 : factor]
    return mass / np.diff(new_edges), new_edges


def noise_floor(vals: np.ndarray, edges: np.ndarray, n_samples: int) -> float:
    """Expected L1 distance between two independent histograms of ``n_samples`` each drawn
    from this density: sum_i E|p_i - q_i| ~ 2/sqrt(pi N) * sum_i sqrt(P_i)."""
    prob = np.clip(vals * np.diff(edges), 0, None)
    return float(2.0 / math.sqrt(math.pi * max(n_samples, 1)) * np.sum(np.sqrt(prob)))


def replan(params: RGParams, results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Next round's partitions (empty = stop) and the reason, from this round's results.

    Each result is a partition dict plus what ``collect`` measured: ``done`` (DONE.json
    present), ``missing`` (batches without READY), ``z_mean``, ``z_std``, ``samples``,
    ``distance`` (L1 to the previous step, or None) and ``noise``.
    """
    nxt: list[dict[str, Any]] = []
    reasons = []
    for r in sorted(results, key=lambda r: (r["shift_index"] is not None, r["shift_index"] or 0)):
        tag = "FP" if r["shift_index"] is None else f"shift {r['shift']}"
        base = {k: r[k] for k in ("step", "shift_index", "shift", "samples_per_batch", "input_step")}
        history = list(r.get("history", []))
        if not r["done"]:
            missing = r["missing"] or r["batches"]
            if r["repair"] >= params.max_repairs:
                raise CampaignConfigError(
                    f"{tag} RG step {r['step']}: batches {missing} still missing after {r['repair']} "
                    f"repair round(s) (max_repairs={params.max_repairs}); see the logs of those batches")
            nxt.append({**base, "batches": missing, "repair": r["repair"] + 1, "history": history})
            reasons.append(f"{tag} RG step {r['step']}: {len(missing)} batch(es) missing -> repair {missing}")
            continue
        history.append({"step": r["step"], "z_mean": r["z_mean"], "z_std": r["z_std"],
                        "samples": r["samples"], "distance": r["distance"], "noise": r["noise"]})
        if r["step"] >= params.steps:
            reasons.append(f"{tag}: all {params.steps} steps done")
            continue
        d, noise = r["distance"], r["noise"]
        if params.type == "FP" and d is not None and d < params.tolerance:
            reasons.append(f"{tag}: converged at RG step {r['step']} (L1 {d:.4f} < tolerance {params.tolerance})")
            continue
        per_batch = r["samples_per_batch"]
        why = "next step"
        room = per_batch * 2 * params.batches <= params.max_samples
        if d is not None and noise is not None and d < 1.5 * noise and room:
            per_batch *= 2
            why = f"L1 {d:.4f} within noise {noise:.4f}: samples doubled to {per_batch * params.batches}"
        nxt.append({**base, "step": r["step"] + 1, "batches": list(range(params.batches)), "repair": 0,
                    "samples_per_batch": per_batch, "history": history})
        reasons.append(f"{tag}: RG step {r['step']} done ({why})")
    return nxt, "; ".join(reasons)
