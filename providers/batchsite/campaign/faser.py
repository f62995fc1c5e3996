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

Two payloads, chosen by config.json:

* the group's own chain (``paths.src_dir`` and the four environment paths set): every reco
  unit is the group's ``templates/runAlignment.sh`` and the fan-in their
  ``templates/runMillepede.sh``, run unchanged with the positional arguments and submit
  settings of their contract (issue 12). Convergence is computed from their constants
  files (``iterNN/1reco/inputforalign.txt`` applied, ``iterNN/inputforalign.txt`` written);
  pede's chi2 is read from ``3millepede/millepede.res`` / ``millepede.log``;
* otherwise the reference payload (``include/faser_reference``), which writes
  ``alignment.json`` itself.
"""

from __future__ import annotations

import json
import math
import re
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchsite.campaign.common import (
    SAFE_TOKEN, CampaignConfigError, CampaignSetup, check_site_path, check_token, explain_validation, render_argv,
    schema_pattern, short,
)
from batchsite.rounds import RescuePolicy, ResourceRequest, RoundRequest

MAX_ITERATIONS = 10
MAX_FILES = 2000
#: FILE is 5 digits in the group's runAlignment.sh
MAX_GROUP_FILE = 99_999
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
    #: the group's chain (issue 12): their checkout, Calypso's asetup file and setup.sh,
    #: Millepede-II's directory (holding ``pede``), ROOT's ``thisroot.sh``
    src_dir: str | None = None
    calypso_asetup: str | None = None
    calypso_setup: str | None = None
    env_pede: str | None = None
    env_root: str | None = None
    #: iteration 1's constants; default ``<src_dir>/templates/inputforalign.txt``
    initial_constants: str | None = None
    #: main.py's keys (the seed's config.json): fallbacks of calypso_setup
    #: (``<calypso_install>/setup.sh``) and env_pede; env_script is refused (see _cross)
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

    @field_validator("env_script")
    @classmethod
    def _no_env_script(cls, v):
        # a field validator (not the cross check) so the refusal is reported with every other
        # field error of the same config
        if v is not None:
            raise ValueError(
                "env_script is main.py's environment script; batchsite runs your templates/runAlignment.sh, "
                "which sets up ATLAS and Calypso itself from paths.calypso_asetup and paths.calypso_setup: "
                "remove paths.env_script (a site-wide environment goes in the connection's env_script)")
        return v


class GroupPaths(BaseModel):
    """The paths of the group's chain, fallbacks resolved (``FaserConfig.group_paths``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    src_dir: str
    calypso_asetup: str
    calypso_setup: str
    env_pede: str
    env_root: str
    initial_constants: str

    @property
    def reco_script(self) -> str:
        return f"{self.src_dir}/templates/runAlignment.sh"

    @property
    def millepede_script(self) -> str:
        return f"{self.src_dir}/templates/runMillepede.sh"

    def on_site(self) -> dict[str, str]:
        """config key -> the site path that must exist for the chain to run."""
        return {"paths.src_dir (templates/runAlignment.sh)": self.reco_script,
                "paths.src_dir (templates/runMillepede.sh)": self.millepede_script,
                "paths.calypso_asetup": self.calypso_asetup, "paths.calypso_setup": self.calypso_setup,
                "paths.env_pede (pede)": f"{self.env_pede}/pede", "paths.env_root": self.env_root,
                "paths.initial_constants": self.initial_constants}


class HTCondorConfig(_Section):
    """Overrides of the reconstruction jobs' submit settings; a key left out keeps the
    payload's default (``GROUP_RECO_JOB``: the group's contract, or ``REFERENCE_JOB``)."""

    job_flavour: Literal["espresso", "microcentury", "longlunch", "workday", "tomorrow", "testmatch",
                         "nextweek"] | None = None
    request_cpus: int | None = Field(default=None, ge=1, le=64)
    request_memory_mb: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MB)
    request_disk_mb: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MB)
    max_retries: int | None = Field(default=None, ge=0, le=20)
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
        paths = self.paths
        if self.storage.use_eos_for_output and not paths.eos_output_dir:
            raise ValueError("storage.use_eos_for_output is true but paths.eos_output_dir is not set")
        resolved = self._group_values()
        if any(resolved.values()) or paths.initial_constants:
            missing = [f"paths.{k}" for k, v in resolved.items() if not v]
            if missing:
                raise ValueError(
                    f"to run the group's chain set {', '.join(missing)} too (all of paths.src_dir, calypso_asetup, "
                    "calypso_setup, env_pede and env_root; calypso_install/pede_install stand in for "
                    "calypso_setup/env_pede); leave them all out for the reference payload")
        return self

    def _group_values(self) -> dict[str, str | None]:
        paths = self.paths
        return {"src_dir": paths.src_dir, "calypso_asetup": paths.calypso_asetup,
                "calypso_setup": paths.calypso_setup or (paths.calypso_install and f"{paths.calypso_install}/setup.sh"),
                "env_pede": paths.env_pede or paths.pede_install, "env_root": paths.env_root}

    @property
    def uses_group_chain(self) -> bool:
        return bool(self.paths.src_dir)

    @property
    def group_paths(self) -> GroupPaths:
        if not self.uses_group_chain:
            raise CampaignConfigError("config.json: paths.src_dir is not set (the reference payload runs)")
        values = self._group_values()
        initial = self.paths.initial_constants or f"{values['src_dir']}/templates/inputforalign.txt"
        return GroupPaths(**values, initial_constants=initial)


class JobSettings(BaseModel):
    """Submit settings of one kind of job (HTCondor names; Slurm/local take what applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: int
    mem_mb: int | None
    disk_mb: int | None
    flavour: str
    retries: int
    requirements: str | None

    def request(self) -> ResourceRequest:
        return ResourceRequest(cpus=self.cpus, mem_mb=self.mem_mb, disk_mb=self.disk_mb, job_flavour=self.flavour,
                               requirements=self.requirements)


#: the group's reco.sub / mille.sub settings (issue 12)
GROUP_REQUIREMENTS = '(Machine =!= LastRemoteHost) && (OpSysAndVer =?= "AlmaLinux9")'
GROUP_RECO_JOB = JobSettings(cpus=2, mem_mb=4096, disk_mb=8192, flavour="workday", retries=3,
                             requirements=GROUP_REQUIREMENTS)
GROUP_MILLEPEDE_JOB = JobSettings(cpus=1, mem_mb=2048, disk_mb=2048, flavour="workday", retries=2, requirements=None)
#: the reference payload's defaults (the seed's config.json htcondor section)
REFERENCE_JOB = JobSettings(cpus=1, mem_mb=None, disk_mb=None, flavour="longlunch", retries=3, requirements=None)


def reco_job(cfg: FaserConfig) -> JobSettings:
    """The reco units' settings: the payload's defaults, with config.json's htcondor keys over them."""
    h = cfg.htcondor
    base = GROUP_RECO_JOB if cfg.uses_group_chain else REFERENCE_JOB
    asked = {"cpus": h.request_cpus, "mem_mb": h.request_memory_mb, "disk_mb": h.request_disk_mb,
             "flavour": h.job_flavour, "retries": h.max_retries, "requirements": h.requirements}
    return base.model_copy(update={k: v for k, v in asked.items() if v is not None})


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

#: raw files: N, START-END or START:END (END exclusive); a run number: 1-6 digits
FILES_PATTERN = re.compile(r"^([0-9]{1,6})(?:([-:])([0-9]{1,6}))?$")
RUN_PATTERN = re.compile(r"^[0-9]{1,6}$")


def parse_files(spec: str) -> list[int]:
    """``400`` / ``400-450`` / ``400:450`` -> raw file numbers (end-exclusive)."""
    s = str(spec).strip()
    m = FILES_PATTERN.fullmatch(s)
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
    if not RUN_PATTERN.fullmatch(s):
        raise ValueError(f"run={short(run)}: a run number has 1-6 digits (it is zero-padded to 6: 11705 -> 011705)")
    return s.zfill(6)


class FaserParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    year: int = Field(default=2023, ge=2022, le=2040)
    run: str = Field(default="011705", **schema_pattern(RUN_PATTERN))
    files: str = Field(default="400-406", **schema_pattern(FILES_PATTERN))
    iterations: int = Field(default=10, ge=1, le=MAX_ITERATIONS)
    fourst: bool = False
    threest: bool = False
    tolerance: float = Field(default=0.001, gt=0, le=1)
    site_conn_id: str = Field(default="local", **schema_pattern(SAFE_TOKEN))
    config: dict[str, Any] = Field(default_factory=dict)
    max_rescues: int = Field(default=2, ge=0, le=10)
    #: restart from this iteration (campaign/restart.py): iteration start_iteration - 1's constants
    #: must be on the site; nothing before it is submitted. None: a fresh campaign from iteration 1
    start_iteration: int | None = Field(default=None, ge=1, le=MAX_ITERATIONS,
                                        description="restart at this iteration; the previous iteration's "
                                                    "constants must be on the site (1..iterations)")

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
        if self.start_iteration is not None and self.start_iteration > self.iterations:
            raise ValueError(f"start_iteration={self.start_iteration} is after the last iteration "
                             f"(iterations={self.iterations}, which counts from iteration 1): give a start_iteration "
                             f"in 1..{self.iterations}, or raise iterations")
        if self.cfg.uses_group_chain and self.file_numbers[-1] > MAX_GROUP_FILE:
            raise ValueError(f"files={short(self.files)}: the group's runAlignment.sh takes FILE as 5 digits "
                             f"(at most {MAX_GROUP_FILE})")
        return self

    @property
    def stations(self) -> int:
        return 4 if self.fourst else 3

    @property
    def begin_iteration(self) -> int:
        """The iteration this run submits first: ``start_iteration`` when restarting, else 1."""
        return self.start_iteration or 1

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

def tree_name(params: FaserParams) -> str:
    """``Y<YEAR>_R<RUN>_F<first>-<last>_ST<3|4>``, the group's generator's name: the station
    tag keeps a 3- and a 4-station pass over the same files in different trees."""
    return f"Y{params.year}_R{params.run}_F{params.range_tag}_ST{params.stations}"


def base_dir(params: FaserParams, remote_root: str) -> str:
    work = params.cfg.paths.work_dir or f"{remote_root}/faser"
    return f"{work}/{tree_name(params)}"


def iter_dir(params: FaserParams, remote_root: str, iteration: int) -> str:
    """batchsite's files of an iteration (DAG, submit files, logs under ``1reco/<round key>/``)."""
    return f"{base_dir(params, remote_root)}/iter{iteration:02d}"


def data_tree_dir(params: FaserParams, remote_root: str) -> str:
    """Where the iterations' data lives: the work dir's tree, or the EOS-style output dir's."""
    cfg = params.cfg
    if cfg.storage.use_eos_for_output:
        return f"{cfg.paths.eos_output_dir}/{tree_name(params)}"
    return base_dir(params, remote_root)


def data_iter_dir(params: FaserParams, remote_root: str, iteration: int) -> str:
    """Where an iteration's data lives (under ``data_tree_dir``)."""
    return f"{data_tree_dir(params, remote_root)}/iter{iteration:02d}"


def reco_output_dir(params: FaserParams, remote_root: str, iteration: int) -> str:
    """``2kfalignment`` (KFALIGN_DIR of the group's scripts)."""
    return f"{data_iter_dir(params, remote_root, iteration)}/2kfalignment"


REFERENCE_COMMANDS = {
    "reco": ["{python}", "-m", "faser_reference.reco", "--raw-file", "{file}", "--year", "{year}", "--run", "{run}",
             "--out", "{kf_dir}", "--constants={constants}", "--tracks", "{tracks}", "{fourst}"],
    "millepede": ["{python}", "-m", "faser_reference.millepede", "-i", "{kf_dir}", "--out", "{mp_dir}",
                  "--constants={constants}", "{fourst}"],
}
#: the group's job scripts, their positional arguments (issue 12); {next_reco_dir} is None
#: (dropped) when TO_NEXT_ITER is False
GROUP_COMMANDS = {
    "reco": ["bash", "{reco_script}", "{year}", "{run}", "{stations}", "{file5}", "{reco_dir}", "{kf_dir}",
             "{src_dir}", "{calypso_asetup}", "{calypso_setup}"],
    "millepede": ["bash", "{millepede_script}", "{to_next_iter}", "{src_dir}", "{kf_dir}", "{next_reco_dir}",
                  "{env_pede}", "{env_root}"],
}


class FaserOutputs(BaseModel):
    """Where one iteration leaves its results; only the campaign's collect step reads it.

    ``constants_in``: the constants reconstruction applied (the group: ``1reco/inputforalign.txt``;
    the reference: the previous iteration's output, None at iteration 1); ``constants_out``:
    what Millepede wrote; ``summary``: the reference payload's ``alignment.json`` (None for
    the group's chain, whose convergence batchsite computes from the constants files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: Literal["reference", "group"]
    iteration: int
    kf_dir: str
    mp_dir: str
    constants_in: str | None
    constants_out: str
    summary: str | None


class FaserRoundRequest(RoundRequest):
    collect: FaserOutputs


def group_outputs(params: FaserParams, remote_root: str, iteration: int) -> FaserOutputs:
    """The group's layout of one iteration: ``1reco/inputforalign.txt`` in, ``2kfalignment/``,
    ``3millepede/`` and ``inputforalign.txt`` (KFALIGN_DIR/..) out, as their millepede.py."""
    data = data_iter_dir(params, remote_root, iteration)
    return FaserOutputs(chain="group", iteration=iteration, kf_dir=f"{data}/2kfalignment",
                        mp_dir=f"{data}/3millepede", constants_in=f"{data}/1reco/inputforalign.txt",
                        constants_out=f"{data}/inputforalign.txt", summary=None)


def group_tree_dirs(params: FaserParams, remote_root: str) -> list[str]:
    """Every iteration's data dirs, made before the first iteration this run submits, as
    dag_manager.py does: Millepede k copies its constants into iteration k+1's ``1reco/``
    (NEXT_RECO_DIR must exist)."""
    return [f"{data_iter_dir(params, remote_root, it)}/{sub}"
            for it in range(params.begin_iteration, params.iterations + 1)
            for sub in ("1reco", "2kfalignment", "3millepede")]


def group_start_constants(params: FaserParams, remote_root: str) -> str:
    """The constants the first iteration this run submits applies: the group's initial file,
    or, restarting at iteration k, those iteration k-1's Millepede wrote."""
    begin = params.begin_iteration
    if begin == 1:
        return params.cfg.group_paths.initial_constants
    return group_outputs(params, remote_root, begin - 1).constants_out


def _group_round(params: FaserParams, iteration: int, files: list[int], remote_root: str) -> FaserRoundRequest:
    cfg = params.cfg
    paths = cfg.group_paths
    out = group_outputs(params, remote_root, iteration)
    to_next = iteration < params.iterations
    values = {
        "reco_script": paths.reco_script, "millepede_script": paths.millepede_script, "year": params.year,
        "run": params.run, "stations": params.stations,
        "reco_dir": f"{data_iter_dir(params, remote_root, iteration)}/1reco",
        "kf_dir": out.kf_dir, "src_dir": paths.src_dir, "calypso_asetup": paths.calypso_asetup,
        "calypso_setup": paths.calypso_setup, "to_next_iter": "True" if to_next else "False",
        "next_reco_dir": f"{data_iter_dir(params, remote_root, iteration + 1)}/1reco" if to_next else None,
        "env_pede": paths.env_pede, "env_root": paths.env_root,
    }
    reco, millepede = reco_job(cfg), GROUP_MILLEPEDE_JOB
    units = [{"index": f, "name": f"reco_{f:05d}",
              "argv": render_argv(GROUP_COMMANDS["reco"], {**values, "file5": f"{f:05d}"})} for f in files]
    return FaserRoundRequest(
        units=units,
        fanin=render_argv(GROUP_COMMANDS["millepede"], values),
        label=f"iter{iteration:02d}",
        workdir=f"{iter_dir(params, remote_root, iteration)}/1reco",
        # cwd: the round's own directory (the group's script then works in $_CONDOR_SCRATCH_DIR)
        retries_in_job=reco.retries,
        fanin_retries_in_job=millepede.retries,
        resources=reco.request(),
        fanin_resources=millepede.request(),
        submit_options={"maxidle": cfg.htcondor.maxidle},
        rescue=RescuePolicy(max_rescues=params.max_rescues),
        collect=out,
    )


def _reference_round(params: FaserParams, iteration: int, files: list[int], remote_root: str,
                     python: str) -> FaserRoundRequest:
    cfg = params.cfg
    it = iter_dir(params, remote_root, iteration)
    kf = reco_output_dir(params, remote_root, iteration)
    mp = f"{it}/3millepede"
    prev = f"{iter_dir(params, remote_root, iteration - 1)}/3millepede/inputforalign.txt" if iteration > 1 else None
    values = {
        "python": python, "year": params.year, "run": params.run, "kf_dir": kf, "mp_dir": mp, "constants": prev,
        "tracks": cfg.alignment.tracks_per_file, "fourst": "--fourst" if params.fourst else None,
    }
    job = reco_job(cfg)
    units = [{"index": f, "name": f"reco_{f:05d}",
              "argv": render_argv(REFERENCE_COMMANDS["reco"], {**values, "file": f})} for f in files]
    return FaserRoundRequest(
        units=units,
        fanin=render_argv(REFERENCE_COMMANDS["millepede"], values),
        label=f"iter{iteration:02d}",
        workdir=f"{it}/1reco",
        cwd=f"{remote_root}/code",  # where the reference payload is staged (python -m faser_reference...)
        retries_in_job=job.retries,
        resources=job.request(),
        submit_options={"maxidle": cfg.htcondor.maxidle},
        rescue=RescuePolicy(max_rescues=params.max_rescues),
        collect=FaserOutputs(chain="reference", iteration=iteration, kf_dir=kf, mp_dir=mp, constants_in=prev,
                             constants_out=f"{mp}/inputforalign.txt", summary=f"{mp}/alignment.json"),
    )


def round_request(params: FaserParams, iteration: int, files: list[int], *, remote_root: str,
                  python: str) -> FaserRoundRequest:
    if params.cfg.uses_group_chain:
        return _group_round(params, iteration, files, remote_root)
    return _reference_round(params, iteration, files, remote_root, python)


def first_round(params: FaserParams) -> list[dict[str, Any]]:
    """Partitions of the first iteration this run submits (1, or ``start_iteration``): one
    (every file in one DAG / array)."""
    return [{"iteration": params.begin_iteration, "files": params.file_numbers, "history": []}]


#: what an iteration's result carries into the history (and the report prints)
RESULT_KEYS = ("iteration", "max_rel_change", "max_rel_change_id", "chi2", "ndf", "chi2_ndf", "residual_to_truth",
               "n_tracks", "n_kfalignment")


def replan(params: FaserParams, results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Next iteration's partitions (empty = stop) from this iteration's measured change."""
    (r,) = results  # one partition per iteration
    it = r["iteration"]
    if not r.get("done"):
        raise CampaignConfigError(
            f"iter{it:02d}: Millepede left no result ({r.get('why') or 'round failed'}); "
            f"see the logs under {r.get('workdir', 'the iteration directory')}")
    history = [*r.get("history", []), {k: r.get(k) for k in RESULT_KEYS}]
    change = r.get("max_rel_change")
    if change is not None and math.isfinite(change) and change < params.tolerance:
        return [], f"iter{it:02d}: converged (largest relative change {change:.2e} < {params.tolerance:.2e})"
    if it >= params.iterations:
        return [], f"iter{it:02d}: {params.iterations} iterations done (largest relative change {change})"
    nxt = {"iteration": it + 1, "files": params.file_numbers, "history": history}
    return [nxt], f"iter{it:02d}: largest relative change {change:.2e} >= {params.tolerance:.2e}: next iteration"


def missing_site_paths(params: FaserParams, exists: set[str]) -> list[str]:
    """The config keys whose paths the site does not have (``exists``: paths found there)."""
    wanted = params.cfg.group_paths.on_site()
    return [f"{k}={v!r} does not exist on the site" for k, v in wanted.items() if v not in exists]


# ---------------------------------------------------------------------------- the group's outputs

#: floors of the relative change (so parameters near zero do not blow it up): dx, dy, dz in
#: mm, rx, ry, rz in rad; the same as the reference payload's (0.01 mm, 0.05 mrad)
REL_FLOOR = (0.01, 0.01, 0.01, 5e-5, 5e-5, 5e-5)
PARAM_NAMES = ("dx", "dy", "dz", "rx", "ry", "rz")
_ENTRY = re.compile(r'"([^"]*)"\s*:\s*\[([^\]]*)\]')
_CHI2 = re.compile(r"Sum\(Chi\^2\)/Sum\(Ndf\)\s*=\s*(\S+)\s*/\s*(\S+)\s*=\s*(\S+)")

Constants = dict[str, list[float]]


def parse_constants(text: str, where: str) -> Constants:
    """The group's constants file: a comma-separated list of ``"<id>": [dx, dy, dz, rx, ry, rz]``
    entries (empty: all zero). Raises CampaignConfigError naming the file and the entry."""
    body = text.strip().rstrip(",")
    if not body:
        return {}
    try:
        raw = json.loads("{" + body + "}", object_pairs_hook=lambda pairs: pairs)
    except json.JSONDecodeError as e:
        raise CampaignConfigError(f'{where}: not a comma-separated list of "<id>": [dx, dy, dz, rx, ry, rz] '
                                  f"entries ({e})") from None
    out: Constants = {}
    for ident, values in raw:
        if ident in out:
            raise CampaignConfigError(f"{where}: id {ident!r} appears twice")
        ok = isinstance(values, list) and len(values) == 6 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not ok:
            raise CampaignConfigError(f"{where}: id {ident!r}: expected 6 finite numbers [dx, dy, dz, rx, ry, rz], "
                                      f"got {short(values)}")
        out[ident] = [float(v) for v in values]
    return out


def max_relative_change(before: Constants, after: Constants) -> tuple[float, str | None]:
    """max over entries and parameters of ``|after - before| / max(|after|, floor)`` (an entry
    missing on one side is zero there), and where it is (``"<id> <param>"``)."""
    best, where = 0.0, None
    for ident in sorted(set(before) | set(after)):
        old, new = before.get(ident, [0.0] * 6), after.get(ident, [0.0] * 6)
        for k in range(6):
            rel = abs(new[k] - old[k]) / max(abs(new[k]), REL_FLOOR[k])
            if rel > best:
                best, where = rel, f"{ident} {PARAM_NAMES[k]}"
    return best, where


def _fortran_float(s: str) -> float:
    return float(s.replace("D", "E").replace("d", "e"))


def parse_chi2(text: str) -> dict[str, float] | None:
    """pede's last ``Sum(Chi^2)/Sum(Ndf) = X / N = r`` line (from millepede.res or millepede.log)."""
    found = None
    for m in _CHI2.finditer(text):
        try:
            found = {"chi2": _fortran_float(m.group(1)), "ndf": _fortran_float(m.group(2)),
                     "chi2_ndf": _fortran_float(m.group(3))}
        except ValueError:
            continue
    return found


def group_iteration_result(outputs: FaserOutputs, applied: str | None, written: str | None, chi2_text: str,
                           kfalignment: list[str]) -> dict[str, Any]:
    """One iteration of the group's chain, measured from its files: ``done`` when Millepede
    wrote the constants; the largest relative change against the constants reco applied."""
    out: dict[str, Any] = {"done": False, "n_kfalignment": len(kfalignment), "constants_out": outputs.constants_out}
    if applied is None:
        out["why"] = f"no {outputs.constants_in}"
        return out
    if written is None:
        out["why"] = f"no {outputs.constants_out}"
        return out
    change, where = max_relative_change(parse_constants(applied, outputs.constants_in),
                                        parse_constants(written, outputs.constants_out))
    out.update({"done": True, "max_rel_change": change, "max_rel_change_id": where,
                "chi2": None, "ndf": None, "chi2_ndf": None, **(parse_chi2(chi2_text) or {})})
    return out
