"""The RG campaign as plain Python: parameters, remote layout, rounds, replan, convergence, nu.

A *round* runs one RG step for one or more partitions (FP: one; EXP: one per shift). Each
partition is a Slurm array / DAG of generation batches plus the aggregation fan-in. After
each round ``replan`` reads what the aggregation wrote (DONE.json, histograms) and decides:

* some batches missing (failed, timed out, vanished) -> repair round for the SAME step with
  only those batches; the others' outputs stay where they are; all batches there but no
  aggregation -> a round of the aggregation alone;
* FP and the z-histogram moved less than ``tolerance`` (L1) since the previous step ->
  converged: stop; later rounds are skipped;
* the move is within the statistical noise of the histograms -> double the samples;
* otherwise the next step, until ``steps``.

Two payloads run this way: batchsite's reference payload (``include/rg_reference``, steps
1..steps, or the member's own ``code_dir`` + ``commands``), and the group's own Taskfarm
chain unchanged (Params ``group``, see ``rg_group``: steps 0..steps-1, an EXP run starting
with the perturbed-data array). Histograms are compared as densities normalised to unit
mass, whether a payload writes densities (the reference) or raw counts (the group).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchsite.campaign.common import (
    SAFE_PATH, SAFE_TOKEN, CampaignConfigError, CampaignSetup, check_argv_template, check_token, explain_validation,
    render_argv, schema_pattern, short,
)
from batchsite.campaign.rg_group import (
    GEN_SCRIPT, HIST_SCRIPT, PERTURB_SCRIPT, WRAPPER, RGGroupChain, geometry, job_argv, to_yaml, updated_config,
)
from batchsite.campaign.rg_layout import (
    PERTURBED_STEP, group_hist, group_laundered_dir, group_perturbed_dir, group_run_dir, group_step_dir, shift_text,
    version_string,
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
    version: str = Field(default="v1", **schema_pattern(SAFE_TOKEN))
    steps: int = Field(default=4, ge=1, le=MAX_STEPS)
    samples: int = Field(default=100_000, ge=100, le=MAX_SAMPLES, description="samples per RG step")
    batches: int = Field(default=32, ge=1, le=MAX_BATCHES)
    throttle: int = Field(default=4, ge=1, le=MAX_BATCHES)
    seed: int = Field(default=1, ge=0, le=MAX_SEED)
    method: Literal["analytic", "numerical"] = "analytic"
    site_conn_id: str = Field(default="local", **schema_pattern(SAFE_TOKEN))
    shifts: list[float] = Field(default_factory=list, max_length=64)
    tolerance: float = Field(default=0.02, gt=0, le=2)
    fp_version: str | None = Field(default=None, **schema_pattern(SAFE_TOKEN))
    max_samples: int = Field(default=10**8, ge=100, le=MAX_SAMPLES)
    max_repairs: int = Field(default=2, ge=0, le=5)
    time_minutes: int | None = Field(default=None, gt=0, le=60 * 24 * 7)
    mem_mb: int | None = Field(default=None, gt=0, le=MAX_MEMORY_MB)
    code_dir: str | None = None  # local dir of the group's own `source/` package (default: reference)
    commands: dict[str, list[str]] | None = None
    group: RGGroupChain | None = None  # the group's own Taskfarm chain, run unchanged (see rg_group)
    #: restart from this RG step (campaign/restart.py): step start_step - 1 must be complete on
    #: the site; nothing before start_step is submitted. None: a fresh campaign from the first step
    start_step: int | None = Field(default=None, ge=0, le=MAX_STEPS,
                                   description="restart at this RG step; the previous step's outputs must be on "
                                               "the site (1..steps; the group's chain: 0..steps-1)")

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
        if self.group is not None:
            if self.code_dir is not None or self.commands is not None:
                raise ValueError("group runs the group's own Taskfarm scripts: leave code_dir and commands unset "
                                 "(they replace the reference payload's commands, which group mode does not use)")
            if self.samples % self.batches:
                raise ValueError(f"samples={self.samples} must be divisible by batches={self.batches}: the group's "
                                 "scripts make batches of N / (SLURM_ARRAY_TASK_MAX + 1) samples")
            if self.type == "EXP" and self.group.symmetrise == 1:
                raise ValueError("group.symmetrise=1 with type=EXP would symmetrise the shift away; use 0 (default)")
        if self.start_step is not None and not self.first_step <= self.start_step <= self.last_step:
            counts = "the group's chain counts from 0" if self.group is not None else "the reference payload from 1"
            raise ValueError(f"start_step={self.start_step} is not a step of this campaign: with steps={self.steps} "
                             f"its steps are {self.first_step}..{self.last_step} ({counts}; steps counts from the "
                             f"first step, so a restart runs start_step..{self.last_step}); give a start_step in "
                             f"{self.first_step}..{self.last_step}, or raise steps")
        return self

    @property
    def first_step(self) -> int:
        """The group's steps start at 0 (step 0 already applies the RG unit once); the
        reference payload's at 1 (its step 0 would be the starting distribution)."""
        return 0 if self.group is not None else 1

    @property
    def last_step(self) -> int:
        return self.first_step + self.steps - 1

    @property
    def begin_step(self) -> int:
        """The step this run submits first: ``start_step`` when restarting, else ``first_step``."""
        return self.first_step if self.start_step is None else self.start_step

    def rg_applications(self, step: int) -> int:
        """How many times the RG unit has been applied to the shifted distribution after
        ``step``: the n of nu = ln(2^n) / ln|slope_n|."""
        return step - self.first_step + 1

    @property
    def versionstr(self) -> str:
        """The group's VERSIONSTR ({version}_{method}_{expr}); group mode only."""
        return version_string(self.version, self.method, self._chain.expr)

    @property
    def fp_versionstr(self) -> str:
        return version_string(self.fp_version or self.version, self.method, self._chain.expr)

    @property
    def symmetrise(self) -> int:
        chain = self._chain
        return chain.symmetrise if chain.symmetrise is not None else int(self.type == "FP")

    @property
    def _chain(self) -> RGGroupChain:
        if self.group is None:
            raise CampaignConfigError("this needs the group's chain (Params group)")
        return self.group

    def group_config_path(self, remote_root: str) -> str:
        """Where the campaign writes CFG (``updated_config.yaml``; RG_CONFIG points at it)."""
        return f"{remote_root}/job_configs/{self.versionstr}/{self.type}/updated_config.yaml"

    def group_config_text(self) -> str:
        """CFG: the member's ``group.config`` with this run's Params written into it."""
        chain = self._chain
        run: dict[tuple[str, str], Any] = {
            ("main", "version"): self.version, ("main", "type"): self.type.lower(),
            ("engine", "method"): self.method, ("engine", "expr"): chain.expr, ("engine", "symmetrise"): self.symmetrise,
            ("rg_settings", "seed"): self.seed, ("rg_settings", "steps"): self.steps,
            ("rg_settings", "samples"): self.samples,
        }
        if self.type == "EXP":
            run[("data_settings", "shifts")] = list(self.shifts)
        return to_yaml(updated_config(chain.config, run))


class RGSetup(CampaignSetup):
    params: RGParams


def parse_params(raw: dict[str, Any]) -> RGParams:
    try:
        return RGParams.model_validate(raw)
    except ValidationError as e:
        raise CampaignConfigError(explain_validation("RG campaign params", e)) from None


# ---------------------------------------------------------------------------- layout

def out_dir(root: str, params: RGParams, shift_index: int | None) -> str:
    """One partition's output dir: the reference layout under ``root``, or the group's own
    (``job_outputs/{version}_{method}_{expr}/{FP|EXP/shift_<value>}`` under their repository)."""
    if params.group is not None:
        shift = None if shift_index is None else params.shifts[shift_index]
        return group_run_dir(params.group.repo_root, params.versionstr, params.type, shift)
    base = f"{root}/job_outputs/{params.version}/{params.type}"
    return base if shift_index is None else f"{base}/shift{shift_index}"


def output_dirs(root: str, params: RGParams) -> list[str]:
    if params.type == "FP":
        return [out_dir(root, params, None)]
    return [out_dir(root, params, i) for i in range(len(params.shifts))]


def output_shifts(params: RGParams) -> list[float | None]:
    """The shift of each of ``output_dirs`` (None for FP)."""
    return [None] if params.type == "FP" else list(params.shifts)


def log_dir(root: str, params: RGParams, shift_index: int | None, step: int | str) -> str:
    """Where a round's scripts, scheduler logs and exit files go (always under ``root``)."""
    if params.group is not None:
        base = f"{root}/job_logs/{params.versionstr}/{params.type}"
        if shift_index is not None:
            base += f"/shift_{shift_text(params.shifts[shift_index])}"
    else:
        base = f"{root}/job_logs/{params.version}/{params.type}"
        if shift_index is not None:
            base += f"/shift{shift_index}"
    return f"{base}/{step if isinstance(step, str) else f'RG{step}'}"


def hist_path(out: str, params: RGParams, step: int) -> str:
    """The histogram the convergence test compares: the one the NEXT step samples from
    (symmetrised for FP, plain z for EXP)."""
    kind = "sym_z" if params.type == "FP" else "z"
    if params.group is not None:
        return group_hist(out, step, kind)
    return f"{out}/hist/{kind}/{kind}_hist_RG{step}.npz"


def z_hist_path(out: str, params: RGParams, step: int) -> str:
    """The plain z histogram of a step (z mean, std and peak are read from it)."""
    return group_hist(out, step, "z") if params.group is not None else f"{out}/hist/z/z_hist_RG{step}.npz"


def fp_seed_hist(root: str, params: RGParams, fp_step: int) -> str:
    return f"{fp_hist_dir(root, params)}/sym_z_hist_RG{fp_step}.npz"


def fp_hist_dir(root: str, params: RGParams) -> str:
    """Where the FP run that seeds an EXP run keeps its symmetrised histograms (reference
    layout; in the group's layout, the FP run dir: one ``data/RG{k}/hist/sym_z`` per step)."""
    if params.group is not None:
        return group_run_dir(params.group.repo_root, params.fp_versionstr, "FP", None)
    return f"{root}/job_outputs/{params.fp_version or params.version}/FP/hist/sym_z"


# ---------------------------------------------------------------------------- rounds

def initial_partitions(params: RGParams, fp_step: int | None = None) -> list[dict[str, Any]]:
    per_batch = math.ceil(params.samples / params.batches)
    shifts: list[tuple[int | None, float | None]] = (
        [(None, None)] if params.type == "FP" else list(enumerate(params.shifts))
    )
    # the group's EXP run starts with the array that writes the shifted FP samples (data/Initial);
    # a restart at a later step reads step k-1's laundered output instead
    begin = params.begin_step
    phase = "perturb" if params.group is not None and params.type == "EXP" and begin == params.first_step else "rg"
    parts = []
    for si, s in shifts:
        parts.append({
            "phase": phase, "step": begin, "shift_index": si, "shift": s,
            "batches": list(range(params.batches)), "samples_per_batch": per_batch, "repair": 0,
            "input_step": fp_step if params.type == "EXP" else None, "history": [],
        })
    return parts


class RGOutputs(BaseModel):
    """Where one partition's round leaves its results; only the campaign's collect step reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["reference", "group"] = "reference"
    phase: Literal["rg", "perturb"] = "rg"
    out_dir: str
    batch_root: str  # the batch_* dirs (perturb: the dir of the perturbed_t files)
    done_json: str  # reference: stats/DONE_RG{step}.json; group: data/RG{step}/DONE.json; written last
    hist: str  # the histogram the convergence test compares (the next step samples from it)
    z_hist: str | None = None  # the plain z histogram: z mean, std and peak
    n_total: int | None = None  # samples of the step (the group's DONE.json must say the same)


class RGRoundRequest(RoundRequest):
    collect: RGOutputs


def round_request(params: RGParams, part: dict[str, Any], *, remote_root: str, python: str) -> RGRoundRequest:
    """What the round operator submits for one partition (units + aggregation fan-in); a
    partition with no batches left runs the aggregation alone (its batches are all there)."""
    if params.group is not None:
        return group_round_request(params, part, remote_root=remote_root)
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
    aggregate = render_argv(cmds["aggregate"], {**common, "batch": None})
    resources = ResourceRequest(time_minutes=params.time_minutes, mem_mb=params.mem_mb)
    return RGRoundRequest(
        **_units_and_fanin(units, aggregate, resources, None),
        label=_label(params, part),
        workdir=log_dir(remote_root, params, si, step),
        cwd=f"{remote_root}/code",
        throttle=min(params.throttle, max(1, len(part["batches"]))),
        collect=RGOutputs(out_dir=out, batch_root=batch_root, done_json=f"{out}/stats/DONE_RG{step}.json",
                          hist=hist_path(out, params, step), z_hist=z_hist_path(out, params, step)),
    )


def _label(params: RGParams, part: dict[str, Any]) -> str:
    what = "perturbed start (gen_shifted_data)" if part.get("phase") == "perturb" else f"RG step {part['step']}"
    label = what + (f" shift {part['shift']}" if part["shift_index"] is not None else "")
    if part["repair"]:
        label += (f" (repair {part['repair']}: batches {part['batches']})" if part["batches"]
                  else f" (repair {part['repair']}: aggregation only)")
    return label


def _units_and_fanin(units: list[dict[str, Any]], aggregate: list[str], unit_res: ResourceRequest,
                     aggregate_res: ResourceRequest | None) -> dict[str, Any]:
    """Generation units with the aggregation as fan-in, or, when no batch is left to generate,
    the aggregation alone as the round's one unit. ``aggregate_res`` None: as the units."""
    if units:
        return {"units": units, "fanin": aggregate, "resources": unit_res, "fanin_resources": aggregate_res}
    return {"units": [{"index": 0, "argv": aggregate}], "fanin": None, "resources": aggregate_res or unit_res}


def group_round_request(params: RGParams, part: dict[str, Any], *, remote_root: str) -> RGRoundRequest:
    """The group's scripts for one partition: the gen_shifted_data array (phase perturb), or
    step k's rg_gen_batch array + afterok rg_hist_manager (phase rg). Each job through the
    wrapper, which presents the full array geometry (batch t of 0..batches-1)."""
    chain = params.group
    assert chain is not None
    si, k, nb = part["shift_index"], part["step"], params.batches
    run = out_dir(remote_root, params, si)
    n_total = part["samples_per_batch"] * nb
    cfg = params.group_config_path(remote_root)
    wrapper = group_wrapper_path(remote_root)
    shift_arg = [shift_text(part["shift"])] if params.type == "EXP" else []
    common = {"label": _label(params, part), "cwd": chain.scripts, "env": {**chain.job_env, "RG_CONFIG": cfg},
              "throttle": min(params.throttle, max(1, len(part["batches"])))}
    gen_res = ResourceRequest(time_minutes=chain.gen_time_minutes, mem_mb=chain.mem_per_cpu_mb)
    if part["phase"] == "perturb":
        fp_hist = group_hist(fp_hist_dir(remote_root, params), part["input_step"], "sym_z")
        args = [cfg, params.versionstr, str(n_total), fp_hist, PERTURBED_STEP, str(params.seed), *shift_arg]
        units = [{"index": t, "argv": job_argv(chain, wrapper, geometry(t, nb), PERTURB_SCRIPT, args)}
                 for t in part["batches"]]
        res = ResourceRequest(time_minutes=chain.perturb_time_minutes, mem_mb=chain.mem_per_cpu_mb)
        return RGRoundRequest(
            units=units, resources=res, workdir=log_dir(remote_root, params, si, PERTURBED_STEP), **common,
            collect=RGOutputs(layout="group", phase="perturb", out_dir=run, batch_root=group_perturbed_dir(run),
                              done_json="", hist=fp_hist, n_total=n_total))
    initial = int(params.type == "FP" and k == 0)
    existing = "" if initial else (group_perturbed_dir(run) if k == 0 else group_laundered_dir(run, k - 1))
    gen_args = [cfg, params.type, params.versionstr, str(n_total), str(k), str(params.seed), params.method,
                chain.expr, str(initial), existing, *shift_arg]
    hist_args = [cfg, params.type, params.versionstr, str(n_total), str(k), str(params.seed),
                 str(params.symmetrise), *shift_arg]
    units = [{"index": t, "argv": job_argv(chain, wrapper, geometry(t, nb), GEN_SCRIPT, gen_args)}
             for t in part["batches"]]
    hist_res = ResourceRequest(time_minutes=chain.hist_time_minutes, mem_mb=chain.mem_per_cpu_mb)
    return RGRoundRequest(
        **_units_and_fanin(units, job_argv(chain, wrapper, "-", HIST_SCRIPT, hist_args), gen_res, hist_res),
        workdir=log_dir(remote_root, params, si, k), **common,
        collect=RGOutputs(layout="group", out_dir=run, batch_root=f"{group_step_dir(run, k)}/batches",
                          done_json=f"{group_step_dir(run, k)}/DONE.json", hist=hist_path(run, params, k),
                          z_hist=z_hist_path(run, params, k), n_total=n_total))


def group_wrapper_path(remote_root: str) -> str:
    """Where the stage task puts ``rg_group_job.sh`` on the site."""
    return f"{remote_root}/code/batchsite/{WRAPPER}"


# ---------------------------------------------------------------------------- convergence

def normalised(vals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The density of a histogram with unit mass, whether ``vals`` are raw counts (the group's
    ``histval``) or already a density (the reference payload's): every comparison, noise
    floor and moment below reads densities. Raw counts read as densities made the L1 metric
    ~158 instead of ~0.04."""
    vals = np.asarray(vals, dtype=float)
    width = np.diff(np.asarray(edges, dtype=float))
    if vals.ndim != 1 or width.shape != vals.shape or np.any(width <= 0):
        raise ValueError(f"a histogram needs len(binedges) = len(histval) + 1 increasing edges "
                         f"(got {vals.shape} values, {len(edges)} edges)")
    mass = float(np.sum(vals * width))
    if not math.isfinite(mass) or mass <= 0 or np.any(vals < 0):
        raise ValueError("a histogram with no (or negative) mass cannot be normalised")
    return vals / mass


def z_moments(vals: np.ndarray, edges: np.ndarray, peak_fraction: float = 0.05) -> dict[str, float]:
    """z mean, std and peak of a z histogram (counts or density).

    The peak is the height-weighted centre of the highest ``peak_fraction`` of the bins, as
    the group locates it (they fit a Gaussian to samples of those bins): robust to the noise
    of single bins, and on a smooth unimodal density it sits at the mode."""
    edges = np.asarray(edges, dtype=float)
    dens = normalised(vals, edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    prob = dens * np.diff(edges)
    mean = float(np.sum(prob * centres))
    std = float(math.sqrt(max(0.0, float(np.sum(prob * (centres - mean) ** 2)))))
    top = np.argsort(dens)[-max(3, int(peak_fraction * len(dens))):]
    peak = float(np.sum(dens[top] * centres[top]) / np.sum(dens[top]))
    return {"z_mean": mean, "z_std": std, "z_peak": peak}

def hist_l1(a_vals: np.ndarray, a_edges: np.ndarray, b_vals: np.ndarray, b_edges: np.ndarray) -> float:
    """L1 distance between two histograms (counts or densities), each normalised to unit mass
    and re-binned onto the union of their edges: 0 for equal shapes, at most 2."""
    a_vals, b_vals = normalised(a_vals, a_edges), normalised(b_vals, b_edges)
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
    from this histogram's law (counts or density): sum_i E|p_i - q_i| ~ 2/sqrt(pi N) * sum_i sqrt(P_i)."""
    prob = np.clip(normalised(vals, edges) * np.diff(edges), 0, None)
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
        phase = r.get("phase", "rg")
        base = {k: r[k] for k in ("step", "shift_index", "shift", "samples_per_batch", "input_step")}
        base["phase"] = phase
        what = f"{tag} perturbed start" if phase == "perturb" else f"{tag} RG step {r['step']}"
        history = list(r.get("history", []))
        if not r["done"]:
            # only the missing batches; none missing: the aggregation alone (the batches are there,
            # and the group's aggregation of step k deletes step k-1's inputs only once it succeeded)
            missing = r["missing"]
            if r["repair"] >= params.max_repairs:
                raise CampaignConfigError(
                    f"{what}: {f'batches {missing} still missing' if missing else 'aggregation still failing'} "
                    f"after {r['repair']} repair round(s) (max_repairs={params.max_repairs}); see the logs of "
                    "that round")
            nxt.append({**base, "batches": missing, "repair": r["repair"] + 1, "history": history})
            reasons.append(f"{what}: {len(missing)} batch(es) missing -> repair {missing}" if missing
                           else f"{what}: batches complete, aggregation missing -> rerun the aggregation only")
            continue
        if phase == "perturb":
            nxt.append({**base, "phase": "rg", "step": params.first_step, "batches": list(range(params.batches)),
                        "repair": 0, "history": history})
            reasons.append(f"{what} done -> RG step {params.first_step}")
            continue
        history.append({"step": r["step"], "z_mean": r["z_mean"], "z_std": r["z_std"], "z_peak": r.get("z_peak"),
                        "samples": r["samples"], "distance": r["distance"], "noise": r["noise"]})
        if r["step"] >= params.last_step:
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


# ---------------------------------------------------------------------------- the critical exponent

#: published values of nu for the Chalker-Coddington network, next to which the report prints ours
PUBLISHED_NU: tuple[tuple[str, float, float | None], ...] = (
    ("small-cell RG (Galstyan & Raikh 1997; Cain, Roemer & Raikh 2003)", 2.39, None),
    ("Shaw & Roemer 2024 (arXiv:2404.00660)", 2.51, 0.11),
)
#: the RG unit doubles the length scale: after n steps a shift z0 has grown to z0 * (2^n)^(1/nu)
LENGTH_FACTOR = 2.0


class NuRow(BaseModel):
    """nu after ``n`` applications of the RG unit, from the z peak and from the z mean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    n: int
    shifts: list[float]
    slope_peak: float
    slope_mean: float
    nu_peak: float | None  # None when |slope| <= 1: the shift did not grow, nu is undefined
    nu_mean: float | None


def nu_from_slope(slope: float, n: int) -> float | None:
    """nu = ln(2^n) / ln|slope_n|; None when |slope| <= 1 (no growth: no finite nu)."""
    if not math.isfinite(slope) or abs(slope) <= 1.0 or n < 1:
        return None
    return n * math.log(LENGTH_FACTOR) / math.log(abs(slope))


def critical_exponent(params: RGParams, per_shift: dict[float, dict[int, dict[str, float]]]) -> list[NuRow]:
    """nu for every step that all shifts reached, both ways the group computes it.

    ``per_shift[shift][step]`` holds ``z_peak`` and ``z_mean`` of that step's z histogram.
    slope_n is the linear-fit slope of the z peak (z mean) after n RG steps against the
    applied shift, each value taken relative to the shift-0 run when there is one (its drift
    is not the shift's doing). At least two distinct shifts are needed."""
    shifts = sorted(per_shift)
    if len(shifts) < 2:
        return []
    common = set.intersection(*(set(per_shift[s]) for s in shifts))
    rows = []
    for step in sorted(common):
        x = np.array(shifts, dtype=float)
        slopes = {}
        for key in ("z_peak", "z_mean"):
            y = np.array([per_shift[s][step][key] for s in shifts], dtype=float)
            if 0.0 in per_shift:
                y = y - per_shift[0.0][step][key]
            slopes[key] = float(np.polyfit(x, y, 1)[0])
        n = params.rg_applications(step)
        rows.append(NuRow(step=step, n=n, shifts=shifts, slope_peak=slopes["z_peak"], slope_mean=slopes["z_mean"],
                          nu_peak=nu_from_slope(slopes["z_peak"], n), nu_mean=nu_from_slope(slopes["z_mean"], n)))
    return rows


def format_nu(rows: list[NuRow]) -> str:
    """The nu report: one line per n, then the published values."""
    if not rows:
        return "critical exponent nu: n/a (needs an EXP run with at least two shifts and a finished step)"

    def show(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else "n/a (|slope| <= 1)"

    lines = [f"critical exponent nu = ln(2^n) / ln|slope_n|, shifts {rows[0].shifts}:"]
    for r in rows:
        lines.append(f"  RG step {r.step} (n={r.n}): slope(z peak) {r.slope_peak:.4f} -> nu {show(r.nu_peak)};  "
                     f"slope(z mean) {r.slope_mean:.4f} -> nu {show(r.nu_mean)}")
    for name, value, err in PUBLISHED_NU:
        lines.append(f"  published: {value}{f' +/- {err}' if err is not None else ''}  ({name})")
    return "\n".join(lines)
