"""The RG group's own Slurm chain, run unchanged ("group contract" mode of the RG campaign).

For each RG step k = 0, 1, ... the campaign submits the group's Taskfarm scripts exactly as
their own master script does:

* an array of ``rg_gen_batch.sh CFG TYPE VERSIONSTR N k SEED METHOD EXPR INITIAL EXISTING_T [SHIFT]``
  (``--array=0-<batches-1>%<throttle>``, 1 h, 3988 MB per CPU by default),
* then, ``afterok``, ``rg_hist_manager.sh CFG TYPE VERSIONSTR N k SEED SYMMETRISE [SHIFT]`` (5 h);

an EXP run first runs the ``gen_shifted_data.sh CFG VERSIONSTR N INPUT_HIST Initial SEED SHIFT``
array (the FP's last ``sym_z`` histogram, shifted). CFG is the ``updated_config.yaml`` written
here from the campaign's Params; N is the TOTAL sample count; SHIFT is given at every step.

Each job runs through ``rg_group_job.sh`` (beside this module; staged once per campaign), which
sources the campaign's ``env_script``, sets ``SLURM_SUBMIT_DIR`` and presents the FULL array
geometry (``SLURM_ARRAY_TASK_MAX = batches - 1``) to the group's script whatever subset of
indices the scheduler runs: a rescue of batches 3 and 7 still makes 32 batches of N/32.
Plain Python (no Airflow, no I/O).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batchsite.campaign.common import CampaignConfigError, check_site_path, check_token, short

#: what the group's root ``constants.py`` requires (it raises on import without them)
REQUIRED_ENV = ("DATA_DIR", "LOCAL_DIR", "ROOT_DIR", "TASKFARM_DIR", "HOST", "REMOTE_DIR", "CONFIG_FILE")
#: the group's scripts also need their package importable
REQUIRED_JOB_ENV = (*REQUIRED_ENV, "PYTHONPATH")
#: the three Taskfarm scripts the chain runs
GEN_SCRIPT, HIST_SCRIPT, PERTURB_SCRIPT = "rg_gen_batch.sh", "rg_hist_manager.sh", "gen_shifted_data.sh"
#: batchsite's wrapper around each job (package data) and where the stage task puts it on the site
WRAPPER = "rg_group_job.sh"
PREFLIGHT = "rg_group_preflight.sh"
MAX_MINUTES = 60 * 24 * 14
#: set by batchsite itself: a job_env entry of these names would silently lose
_RESERVED_ENV = re.compile(r"^(RG_CONFIG|SLURM_.*|BATCHSITE_.*)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CONFIG_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_CONFIG_DEPTH = 6


class RGGroupChain(BaseModel):
    """Where the group's repository is on the site and how its jobs are run (Params ``group``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    repo_root: str = Field(description="the group's repository root on the site: Taskfarm/, source/, "
                                       "constants.py, .venv/; their job_outputs/ is written below it")
    scripts_dir: str | None = Field(default=None, description="the Taskfarm scripts (default <repo_root>/Taskfarm)")
    expr: str = Field(description="EXPR, the expression name (engine.expr of their config, e.g. shaw)")
    symmetrise: Literal[0, 1] | None = Field(default=None, description="SYMMETRISE (default 1 for FP, 0 for EXP)")
    env_script: str | None = Field(default=None, description="a site file every job sources first: module, "
                                                             "PATH, PYTHONPATH and the seven constants.py variables")
    job_env: dict[str, str] = Field(default_factory=dict, description="variables exported to every job, literally")
    config: dict[str, Any] = Field(default_factory=dict, description="the base of updated_config.yaml "
                                                                     "(lowercase keys, as the group's iqhe.yaml)")
    gen_time_minutes: int = Field(default=60, gt=0, le=MAX_MINUTES)
    hist_time_minutes: int = Field(default=300, gt=0, le=MAX_MINUTES)
    perturb_time_minutes: int = Field(default=60, gt=0, le=MAX_MINUTES)
    mem_per_cpu_mb: int = Field(default=3988, gt=0, le=4 * 1024 * 1024)

    @field_validator("repo_root", "scripts_dir", "env_script")
    @classmethod
    def _site_path(cls, v: str | None, info) -> str | None:
        return v if v is None else check_site_path(info.field_name, v.rstrip("/") or "/")

    @field_validator("expr")
    @classmethod
    def _expr(cls, v: str) -> str:
        return check_token("expr", v)

    @field_validator("job_env")
    @classmethod
    def _job_env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"job_env key {short(name, 40)} is not a variable name (letters, digits, '_')")
            if _RESERVED_ENV.fullmatch(name):
                raise ValueError(f"job_env key {name}: batchsite sets it for every job (RG_CONFIG points at the "
                                 "campaign's updated_config.yaml; SLURM_* and BATCHSITE_* come from the scheduler "
                                 "and batchsite); remove it")
            if len(value) > 4096 or "\n" in value or "\0" in value:
                raise ValueError(f"job_env[{name}]={short(value)}: one line of at most 4096 characters")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_config(v, "config", 0)
        return v

    @model_validator(mode="after")
    def _environment(self) -> RGGroupChain:
        if self.env_script is None:
            missing = [n for n in REQUIRED_JOB_ENV if n not in self.job_env]
            if missing:
                raise ValueError(
                    f"the group's jobs need {', '.join(missing)}: set them in job_env, or give env_script (a file on "
                    "the site that exports them and puts a 'module' command on PATH)")
        return self

    @property
    def scripts(self) -> str:
        return self.scripts_dir or f"{self.repo_root}/Taskfarm"


def _check_config(value: Any, where: str, depth: int) -> None:
    if depth > MAX_CONFIG_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str) or not _CONFIG_KEY.fullmatch(key):
                raise ValueError(f"{where}: key {short(key, 40)} must be lowercase letters, digits and '_' starting "
                                 "with a letter (the group's scripts read lowercase keys)")
            _check_config(sub, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)):
                raise ValueError(f"{where}[{i}]: lists hold numbers, strings or booleans only")
            _check_config(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}={short(value)}: not a finite number")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{where}={short(value)}: use numbers, strings, booleans, lists and mappings")


# ---------------------------------------------------------------------------- updated_config.yaml

def updated_config(base: Mapping[str, Any], run: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    """``base`` (the member's config) with the run's values (``{(section, key): value}``) set.

    A value the member also wrote in ``base`` must agree: two places for one setting would
    leave the scripts' arguments and their config telling different stories.
    """
    doc: dict[str, Any] = json.loads(json.dumps(base))  # a deep copy of plain JSON data
    for (section, key), value in run.items():
        part = doc.setdefault(section, {})
        if not isinstance(part, dict):
            raise CampaignConfigError(f"group.config.{section} must be a mapping (batchsite writes {section}.{key})")
        if key in part and part[key] != value:
            raise CampaignConfigError(
                f"group.config.{section}.{key}={short(part[key])} disagrees with the Params ({short(value)}); "
                f"leave it out of group.config: batchsite writes it from the Params")
        part[key] = value
    return doc


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        # YAML 1.1 readers (PyYAML) take 1e-05 for a string: give the mantissa a dot
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return json.dumps(value)  # ints, and strings double-quoted (a JSON string is a YAML string)


def to_yaml(doc: Mapping[str, Any], indent: int = 0) -> str:
    """Block mappings with flow scalars and lists: the subset the group's configs use, written
    so that every YAML reader (1.1 or 1.2) reads back the same values. Keys are checked tokens."""
    lines = []
    pad = " " * indent
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(value, indent + 2).rstrip("\n"))
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(value) if not isinstance(value, dict) else '{}'}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- job argv

def job_argv(chain: RGGroupChain, wrapper: str, geometry: str, script: str, args: list[str]) -> list[str]:
    """One job: ``bash rg_group_job.sh ENV_SCRIPT SUBMIT_DIR GEOMETRY <scripts>/SCRIPT ARGS...``.

    ``geometry`` is ``t/B`` for batch t of the full array 0..B-1 and ``-`` for a plain job."""
    return ["bash", wrapper, chain.env_script or "-", chain.scripts, geometry, f"{chain.scripts}/{script}", *args]


def geometry(batch: int, batches: int) -> str:
    return f"{batch}/{batches}"
