"""Data that crosses layer boundaries: what a round is, what a submission is, what a status is.

No I/O and no Airflow here. Every model is JSON-serialisable (pydantic), so the same
objects travel through XCom, trigger ``serialize()`` and the submission record on the site.
"""

from __future__ import annotations

import enum
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: a remote path or a file name that we put into shell commands and scheduler directives
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobState(str, enum.Enum):
    """Backend-independent state of one work unit (array index, DAG node) or fan-in job."""

    WAITING = "waiting"  # queued, idle, pending a dependency
    RUNNING = "running"
    HELD = "held"  # HTCondor hold / Slurm "held": not progressing, needs a decision
    DONE = "done"  # finished with exit code 0
    FAILED = "failed"  # finished unsuccessfully (exit != 0, timeout, cancelled, OOM, ...)
    VANISHED = "vanished"  # left the queue, outcome not (yet) confirmed by exit file/accounting
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


class TaskStatus(Frozen):
    """State of one unit as observed in one poll."""

    state: JobState
    native: str = ""  # the scheduler's own word, e.g. "TIMEOUT", "5" (JobStatus)
    exit_code: int | None = None
    reason: str = ""  # e.g. "DependencyNeverSatisfied", a HoldReason
    timed_out: bool = False  # killed at its time limit: the next try escalates resources


class Resources(Frozen):
    """What one job asks for. Each backend renders the fields it understands."""

    time_minutes: int | None = Field(default=None, gt=0, le=60 * 24 * 14)
    mem_mb: int | None = Field(default=None, gt=0, le=4 * 1024 * 1024)
    cpus: int = Field(default=1, gt=0, le=1024)
    partition: str | None = None
    account: str | None = None
    job_flavour: str | None = None  # lxplus +JobFlavour
    requirements: str | None = None  # HTCondor requirements expression
    disk_mb: int | None = Field(default=None, gt=0)

    @field_validator("partition", "account", "job_flavour")
    @classmethod
    def _safe(cls, v: str | None, info) -> str | None:
        if v is not None and not SAFE_NAME.match(v):
            raise ValueError(
                f"{info.field_name}={v!r}: use letters, digits, '.', '_' or '-' only"
            )
        return v


class WorkUnit(Frozen):
    """One fan-out unit: an array index (Slurm, local) or a DAG node (HTCondor)."""

    index: int = Field(ge=0)
    argv: list[str] = Field(min_length=1)
    name: str | None = None  # DAG node name; defaults to f"unit{index}"


class RoundSpec(Frozen):
    """A round of work, as the campaign layer decides it and a backend renders it.

    ``workdir`` is an absolute path on the site; everything the round writes about itself
    (scripts, scheduler logs, exit-code files, the submission record) lives under it.
    Commands run with ``cwd`` as their working directory (default: ``workdir``).
    """

    key: str
    label: str
    workdir: str
    units: list[WorkUnit] = Field(min_length=1)
    fanin: list[str] | None = None  # argv of the fan-in step, run after every unit succeeded
    throttle: int | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0, le=20)
    resources: Resources = Resources()
    fanin_resources: Resources | None = None
    cwd: str | None = None
    env: dict[str, str] = {}
    env_script: str | None = None  # sourced by every job before its command
    #: scheduler-level submit options; HTCondor: ``maxidle``/``maxjobs`` -> condor_submit_dag
    submit_options: dict[Literal["maxidle", "maxjobs"], int] = {}

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not SAFE_NAME.match(v):
            raise ValueError(f"key={v!r} is not a safe job name")
        return v

    @field_validator("workdir", "cwd", "env_script")
    @classmethod
    def _abs(cls, v: str | None, info) -> str | None:
        if v is not None and (not v.startswith("/") or "\n" in v or "\x00" in v):
            raise ValueError(f"{info.field_name}={v!r} must be an absolute path on the site")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"env key {k!r} is not a valid variable name")
        return v

    @model_validator(mode="after")
    def _unique_indices(self) -> RoundSpec:
        idx = [u.index for u in self.units]
        if len(set(idx)) != len(idx):
            raise ValueError("units: indices must be unique")
        return self

    @property
    def indices(self) -> list[int]:
        return sorted(u.index for u in self.units)


class Submission(Frozen):
    """What the site recorded when a round was accepted. Enough to watch, cancel and re-attach."""

    key: str
    scheduler: Literal["slurm", "htcondor", "local"]
    workdir: str
    indices: list[int]
    fanout_id: str  # Slurm array job id / DAGMan cluster id / local job id
    #: the fan-in step, if the round has one. Slurm: the ``afterok`` job id. HTCondor: the
    #: fan-in NODE name ``"fanin"`` (not a job id: DAGMan runs it inside ``fanout_id``; the
    #: HTCondor backend's submit, find and status parsers rely on this value). Local: None
    #: (the runner runs the fan-in itself).
    fanin_id: str | None = None
    schedd: str | None = None  # HTCondor: the schedd the DAG went to
    script_hash: str = ""
    submitted_at: float = 0.0
    adopted: bool = False  # True when this task found an existing submission instead of submitting

    @property
    def job_ids(self) -> list[str]:
        return [i for i in (self.fanout_id, self.fanin_id) if i]


class RoundStatus(Frozen):
    """One observation of a whole round."""

    key: str
    units: dict[int, TaskStatus]
    fanin: TaskStatus | None = None
    scheduler_ok: bool = True  # False when the query itself failed (site down)
    note: str = ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {s.value: 0 for s in JobState}
        for st in self.units.values():
            out[st.state.value] += 1
        return out

    @property
    def failed_indices(self) -> list[int]:
        return sorted(i for i, s in self.units.items() if s.state is JobState.FAILED)

    @property
    def units_terminal(self) -> bool:
        return all(s.state.terminal for s in self.units.values())

    @property
    def finished(self) -> bool:
        """Nothing more will happen without our intervention."""
        if not self.units_terminal:
            return False
        if self.fanin is None:
            return True
        if self.fanin.state.terminal:
            return True
        # a fan-in that can never start because a parent failed
        return bool(self.failed_indices)

    @property
    def succeeded(self) -> bool:
        return (
            self.units_terminal
            and not self.failed_indices
            and (self.fanin is None or self.fanin.state is JobState.DONE)
        )

    def progress_line(self, label: str) -> str:
        c = self.counts()
        n = len(self.units)
        parts = [f"{label}: {c['done']}/{n} done"]
        for word, k in (("running", "running"), ("waiting", "waiting"), ("held", "held"),
                        ("failed", "failed"), ("vanished", "vanished"), ("unknown", "unknown")):
            if c[k]:
                parts.append(f"{c[k]} {word}")
        line = ", ".join(parts)
        held = [s.reason for s in self.units.values() if s.state is JobState.HELD and s.reason]
        if held:
            line += f" (HoldReason: {held[0]})"
        if self.fanin is not None:
            line += f"; fan-in {self.fanin.state.value}"
            if self.fanin.reason:
                line += f" ({self.fanin.reason})"
        return line


class CommandResult(Frozen):
    argv: list[str]
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")
