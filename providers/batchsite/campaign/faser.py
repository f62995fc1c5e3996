"""The FASER alignment campaign as plain Python: params, config.json, layout, rounds, replan.

One round = one alignment iteration: a reconstruction unit per raw file (fan-out) and one
Millepede job (fan-in) that writes ``millepede.res`` and ``inputforalign.txt``. After each
round ``replan`` reads ``alignment.json`` (the largest relative change of the constants)
and either stops (below ``tolerance``, 0.1% by default) or starts the next iteration with
the new ``inputforalign.txt``. Failed reconstruction nodes are recovered inside the round
(rescue DAG / repair of failed indices, see operators/round.py), not here.

File ranges behave as the seed's ``dag_manager.py``: END-EXCLUSIVE. ``400-450`` and
``400:450`` are the 50 files 400..449 (the seed's "50 files (400-450)"); ``400`` is one
file. (The seed's ``main.py`` text calls ranges inclusive; we follow dag_manager.py.)
"""

from __future__ import annotations

import math
import re
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchsite.campaign.common import (
    CampaignConfigError, CampaignSetup, check_site_path, check_token, explain_validation, render_argv, short,
)
from batchsite.rounds import RescuePolicy, ResourceRequest, RoundRequest

MAX_ITERATIONS = 10
MAX_FILES = 2000
FLAVOURS = ("espresso", "microcentury", "longlunch", "workday", "tomorrow", "testmatch", "nextweek")
#: HTCondor ``requirements``: one ClassAd expression, no submit-language macros (``$(...)``)
MAX_REQUIREMENTS_LEN = 2000
#: bounds of sizes in config.json (a typo of three zeros is refused, not submitted)
MAX_MEMORY_MB = 4 * 1024 * 1024  # 4 TiB
MAX_IDLE = 100_000
MAX_POLL_SECONDS = 24 * 3600


# ---------------------------------------------------------------------------- config.json

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PathsConfig(_Section):
    calypso_install: str | None = None
    pede_install: str | None = None
    env_script: str | None = None
    work_dir: str | None = None
    eos_output_dir: str | None = None

    @field_validator("*")
    @classmethod
    def _abs(cls, v, info):
        # absolute, normalised, safe characters, no '..': these paths end up in job scripts,
        # submit files and DAG files on the site
        return v if v is None else check_site_path(info.field_name, v)


class HTCondorConfig(_Section):
    job_flavour: Literal["espresso", "microcentury", "longlunch", "workday", "tomorrow", "testmatch",
                         "nextweek"] = "longlunch"
    request_cpus: int = Field(default=1, ge=1, le=64)
    request_memory_mb: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MB)
    max_retries: int = Field(default=3, ge=0, le=20)
    requirements: str | None = None
    spool: bool = False
    maxidle: int | None = Field(default=None, ge=1, le=MAX_IDLE)

    @field_validator("requirements")
    @classmethod
    def _req(cls, v):
        return v if v is None else check_requirements(v)


class AlignmentConfig(_Section):
    default_iterations: int = Field(default=10, ge=1, le=MAX_ITERATIONS)
    polling_interval_seconds: int = Field(default=300, ge=1, le=MAX_POLL_SECONDS)
    tracks_per_file: int = Field(default=2000, ge=10, le=10**7)


class StorageConfig(_Section):
    use_eos_for_output: bool = False
    keep_intermediate_root_files: bool = True
    cleanup_reco_temp_files: bool = True


class FaserConfig(_Section):
    """The seed's ``config.json``: sections paths / htcondor / alignment / storage."""

    paths: PathsConfig = PathsConfig()
    htcondor: HTCondorConfig = HTCondorConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _cross(self) -> FaserConfig:
        if self.storage.use_eos_for_output and not self.paths.eos_output_dir:
            raise ValueError("storage.use_eos_for_output is true but paths.eos_output_dir is not set")
        real = [self.paths.calypso_install, self.paths.pede_install, self.paths.env_script]
        if any(real) and not all(real):
            raise ValueError("to run the real Calypso + pede chain set all of paths.calypso_install, "
                             "paths.pede_install and paths.env_script (leave all three out for the "
                             "reference payload)")
        return self

    @property
    def uses_calypso(self) -> bool:
        return bool(self.paths.calypso_install)


def check_requirements(v: str) -> str:
    """``htcondor.requirements``: one ClassAd expression, e.g. ``(OpSysAndVer =?= "AlmaLinux9")``.

    It is written into the submit file as is, so newlines (a second submit command), ``$``
    (submit-language macros such as ``$(...)``), backticks and ``;`` are refused, and the text
    must parse as a ClassAd expression (``classad2``) before anything is submitted.
    """
    if len(v) > MAX_REQUIREMENTS_LEN:
        raise ValueError(f"requirements is {len(v)} characters long; at most {MAX_REQUIREMENTS_LEN}")
    bad = sorted({c for c in v if c in "\n\r\x00$`;\\" or not c.isprintable()})
    if bad:
        raise ValueError(f"requirements={short(v)}: one ClassAd expression on one line, without "
                         f"{', '.join(repr(c) for c in bad)} (e.g. '(OpSysAndVer =?= \"AlmaLinux9\")')")
    try:
        import classad2
    except ImportError:  # htcondor is a dependency; without it the submit step validates the file
        return v
    try:
        classad2.ExprTree(v)
    except Exception:  # classad2.ClassAdException, ValueError
        raise ValueError(f"requirements={short(v)} is not a ClassAd expression "
                         "(e.g. '(OpSysAndVer =?= \"AlmaLinux9\") && (Memory > 2000)')") from None
    return v


def parse_config(raw: dict[str, Any] | None) -> FaserConfig:
    try:
        return FaserConfig.model_validate(raw or {})
    except ValidationError as e:
        raise CampaignConfigError(explain_validation("config.json", e)) from None


# ---------------------------------------------------------------------------- params

def parse_files(spec: str) -> list[int]:
    """``400`` / ``400-450`` / ``400:450`` -> raw file numbers (end-exclusive)."""
    s = str(spec).strip()
    m = re.fullmatch(r"([0-9]{1,6})(?:([-:])([0-9]{1,6}))?", s)
    if not m:
        raise ValueError(f"files={short(spec)}: use N, START-END or START:END with digits only (END exclusive)")
    start = int(m.group(1))
    if m.group(3) is None:
        return [start]
    end = int(m.group(3))
    if end <= start:
        raise ValueError(f"files={short(spec)}: the range is empty or reversed (END is exclusive: 400-450 = 400..449)")
    if end - start > MAX_FILES:
        raise ValueError(f"files={short(spec)}: {end - start} files is more than {MAX_FILES}")
    return list(range(start, end))


def pad_run(run: str | int) -> str:
    ok = isinstance(run, str) or (isinstance(run, int) and not isinstance(run, bool) and 0 <= run < 10**6)
    s = str(run).strip() if ok else ""
    if not re.fullmatch(r"[0-9]{1,6}", s):
        raise ValueError(f"run={short(run)}: a run number has 1-6 digits (it is zero-padded to 6: 11705 -> 011705)")
    return s.zfill(6)


class FaserParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    year: int = Field(default=2023, ge=2022, le=2040)
    run: str = "011705"
    files: str = "400-406"
    iterations: int = Field(default=10, ge=1, le=MAX_ITERATIONS)
    fourst: bool = False
    threest: bool = False
    tolerance: float = Field(default=0.001, gt=0, le=1)
    site_conn_id: str = "local"
    config: dict[str, Any] = Field(default_factory=dict)
    max_rescues: int = Field(default=2, ge=0, le=10)

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, v):
        return pad_run(v)

    @field_validator("files")
    @classmethod
    def _files(cls, v):
        parse_files(v)
        return v.strip()

    @field_validator("site_conn_id")
    @classmethod
    def _conn(cls, v):
        return check_token("site_conn_id", v)

    @field_validator("config")
    @classmethod
    def _config(cls, v):
        # a field validator (not the cross check below), so a bad config.json key is reported
        # together with every other bad Param
        parse_config(v)
        return v

    @model_validator(mode="after")
    def _cross(self) -> FaserParams:
        if self.fourst and self.threest:
            raise ValueError("fourst and threest are exclusive: choose one (3-station is the default)")
        return self

    @property
    def file_numbers(self) -> list[int]:
        return parse_files(self.files)

    @property
    def range_tag(self) -> str:
        """``F{range}`` of the seed's layout: ``400-450`` for 400-450 and 400:450, ``400`` alone."""
        return self.files.replace(":", "-")

    @cached_property
    def cfg(self) -> FaserConfig:
        # config.json was validated with the params; parse it once per object, not per access
        return parse_config(self.config)


class FaserSetup(CampaignSetup):
    params: FaserParams
    scheduler: str


def parse_params(raw: dict[str, Any]) -> FaserParams:
    try:
        return FaserParams.model_validate(raw)
    except ValidationError as e:
        raise CampaignConfigError(explain_validation("FASER alignment params", e)) from None


# ---------------------------------------------------------------------------- layout

def base_dir(params: FaserParams, remote_root: str) -> str:
    work = params.cfg.paths.work_dir or f"{remote_root}/faser"
    return f"{work}/Y{params.year}_R{params.run}_F{params.range_tag}"


def iter_dir(params: FaserParams, remote_root: str, iteration: int) -> str:
    return f"{base_dir(params, remote_root)}/iter{iteration:02d}"


def reco_output_dir(params: FaserParams, remote_root: str, iteration: int) -> str:
    """2kfalignment on AFS-like work dir, or the EOS-style output dir when configured."""
    cfg = params.cfg
    if cfg.storage.use_eos_for_output:
        tag = f"Y{params.year}_R{params.run}_F{params.range_tag}"
        return f"{cfg.paths.eos_output_dir}/{tag}/iter{iteration:02d}/2kfalignment"
    return f"{iter_dir(params, remote_root, iteration)}/2kfalignment"


REFERENCE_COMMANDS = {
    "reco": ["{python}", "-m", "faser_reference.reco", "--raw-file", "{file}", "--year", "{year}", "--run", "{run}",
             "--out", "{kf_dir}", "--constants={constants}", "--tracks", "{tracks}", "{fourst}"],
    "millepede": ["{python}", "-m", "faser_reference.millepede", "-i", "{kf_dir}", "--out", "{mp_dir}",
                  "--constants={constants}", "{fourst}"],
}
#: the group's own chain, as the seed's README runs it (rendered, not runnable here)
CALYPSO_COMMANDS = {
    "reco": ["bash", "{scripts}/runAlignment.sh", "{env_script}", "{year}", "{run}", "{file}", "{iteration}",
             "{kf_dir}", "{constants_or_empty}", "{stations}"],
    "millepede": ["bash", "{scripts}/run_millepede.sh", "{env_script}", "{kf_dir}", "{mp_dir}", "{pede_install}"],
}


class FaserOutputs(BaseModel):
    """Where one iteration leaves its results; only the campaign's collect step reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iteration: int
    kf_dir: str
    mp_dir: str
    constants_in: str | None
    constants_out: str
    summary: str  # alignment.json, written by the Millepede fan-in


class FaserRoundRequest(RoundRequest):
    collect: FaserOutputs


def round_request(params: FaserParams, iteration: int, files: list[int], *, remote_root: str,
                  python: str) -> FaserRoundRequest:
    cfg = params.cfg
    it = iter_dir(params, remote_root, iteration)
    kf = reco_output_dir(params, remote_root, iteration)
    mp = f"{it}/3millepede"
    prev = f"{iter_dir(params, remote_root, iteration - 1)}/3millepede/inputforalign.txt" if iteration > 1 else None
    values = {
        "python": python, "year": params.year, "run": params.run, "kf_dir": kf, "mp_dir": mp, "constants": prev,
        "constants_or_empty": prev or "", "tracks": cfg.alignment.tracks_per_file,
        "fourst": "--fourst" if params.fourst else None, "stations": "4" if params.fourst else "3",
        "iteration": iteration, "scripts": f"{remote_root}/scripts", "env_script": cfg.paths.env_script,
        "pede_install": cfg.paths.pede_install, "remote_root": remote_root,
    }
    cmds = CALYPSO_COMMANDS if cfg.uses_calypso else REFERENCE_COMMANDS
    units = [{"index": f, "name": f"reco_{f:05d}", "argv": render_argv(cmds["reco"], {**values, "file": f})}
             for f in files]
    return FaserRoundRequest(
        units=units,
        fanin=render_argv(cmds["millepede"], {**values, "file": None}),
        label=f"iter{iteration:02d}",
        workdir=f"{it}/1reco",
        cwd=f"{remote_root}/code",
        retries_in_job=cfg.htcondor.max_retries,
        resources=ResourceRequest(cpus=cfg.htcondor.request_cpus, mem_mb=cfg.htcondor.request_memory_mb,
                                  job_flavour=cfg.htcondor.job_flavour, requirements=cfg.htcondor.requirements),
        submit_options={"maxidle": cfg.htcondor.maxidle},
        rescue=RescuePolicy(max_rescues=params.max_rescues),
        collect=FaserOutputs(iteration=iteration, kf_dir=kf, mp_dir=mp, constants_in=prev,
                             constants_out=f"{mp}/inputforalign.txt", summary=f"{mp}/alignment.json"),
    )


def first_round(params: FaserParams) -> list[dict[str, Any]]:
    """Partitions of iteration 1: one (every file in one DAG / array)."""
    return [{"iteration": 1, "files": params.file_numbers, "history": []}]


def replan(params: FaserParams, results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Next iteration's partitions (empty = stop) from this iteration's measured change."""
    (r,) = results  # one partition per iteration
    it = r["iteration"]
    if not r.get("done"):
        raise CampaignConfigError(
            f"iter{it:02d}: Millepede left no alignment.json ({r.get('why') or 'round failed'}); "
            f"see the logs under {r.get('workdir', 'the iteration directory')}")
    history = [*r.get("history", []), {k: r.get(k) for k in ("iteration", "max_rel_change", "residual_to_truth",
                                                             "chi2_ndf", "n_tracks")}]
    change = r.get("max_rel_change")
    if change is not None and math.isfinite(change) and change < params.tolerance:
        return [], f"iter{it:02d}: converged (largest relative change {change:.2e} < {params.tolerance:.2e})"
    if it >= params.iterations:
        return [], f"iter{it:02d}: {params.iterations} iterations done (largest relative change {change})"
    nxt = {"iteration": it + 1, "files": params.file_numbers, "history": history}
    return [nxt], f"iter{it:02d}: largest relative change {change:.2e} >= {params.tolerance:.2e}: next iteration"


def missing_site_paths(params: FaserParams, exists: set[str]) -> list[str]:
    """The config keys whose paths the site does not have (``exists``: paths found there)."""
    paths = params.cfg.paths
    wanted = {"paths.env_script": paths.env_script, "paths.calypso_install": paths.calypso_install,
              "paths.pede_install": paths.pede_install}
    return [f"{k}={v!r} does not exist on the site" for k, v in wanted.items() if v and v not in exists]
