"""Data that crosses layer boundaries: what a round is, what a submission is, what a status is.

No I/O and no Airflow here. Every model is JSON-serialisable (pydantic), so the same
objects travel through XCom, trigger ``serialize()`` and the submission record on the site.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

#: a remote path or a file name that we put into shell commands and scheduler directives
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


#: a job id as the schedulers write it (see ``Submission.fanout_id``)
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@,:+-]{0,9999}")

#: what a round label may not hold: it is written into comment lines of the rendered scripts
#: (unit.sh, fanin.sh) and the logs, where a newline would start an executed line
_LABEL_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
LABEL_MAX = 200


def _check_label(value: str) -> str:
    bad = _LABEL_FORBIDDEN.search(value)
    if bad:
        raise ValueError(f"a round label is one line of printable text: character {bad.group()!r} at position "
                         f"{bad.start()} is not allowed (remove newlines and control characters)")
    if not value.strip():
        raise ValueError("a round label must not be empty: leave it unset to use the task id")
    if len(value) > LABEL_MAX:
        raise ValueError(f"a round label has at most {LABEL_MAX} characters (got {len(value)}): shorten it")
    return value


#: a human-readable round label (progress lines, script comments); validated wherever it enters
RoundLabel = Annotated[str, AfterValidator(_check_label)]


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
        return self is JobState.DONE or self is JobState.FAILED


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
    #: hosts the jobs must not run on (Slurm ``--exclude``, HTCondor ``Machine =!= ...``): the
    #: rescue's blocklist of hosts where units failed repeatedly (``sizing.blocked_hosts``)
    exclude_hosts: tuple[str, ...] = ()

    @field_validator("exclude_hosts")
    @classmethod
    def _host_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in v if not HOST_NAME.match(h)]
        if bad:
            raise ValueError(f"exclude_hosts: {bad} are not host names (letters, digits, '.', '-', '_')")
        return tuple(sorted(set(v)))

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


# ---------------------------------------------------------------------------- index ranges

def index_ranges(indices: Iterable[int]) -> str:
    """[0..31, 40, 77..80] -> "0-31,40,77-80" ("" for none): how sets of unit indices travel
    through Airflow (trigger kwargs and events, XComs), whatever the number of units."""
    idx = sorted(set(indices))
    parts: list[str] = []
    start = 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or idx[k] != idx[k - 1] + 1:
            a, b = idx[start], idx[k - 1]
            parts.append(str(a) if a == b else f"{a}-{b}")
            start = k
    return ",".join(parts)


_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def expand_ranges(text: str) -> list[int]:
    """``index_ranges`` read back; ValueError naming the bad part."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = _RANGE.fullmatch(part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{part!r} in {text[:80]!r} is not an index range (e.g. 0-31,40,77-80)")
        out.extend(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return out


_INDEX_FIELD = re.compile(r"\{index(?::([0-9<>^=+ -]*[0-9]*[dxXob]?))?\}")


def _with_index(template: str, index: int) -> str:
    return _INDEX_FIELD.sub(lambda m: format(index, m.group(1) or ""), template)


class UnitTemplate(Frozen):
    """Work units described in O(1) size: one argv template over an index range. In each
    argv item (and ``name``) ``{index}`` or ``{index:<format spec>}`` (``{index:05d}``)
    becomes the unit's index; nothing else in the text is touched. 10,000 units of a round
    cost the same few hundred bytes in an XCom as 10."""

    argv: list[str] = Field(min_length=1)
    indices: str = Field(min_length=1)  # index_ranges, e.g. "0-9999"
    name: str | None = None  # DAG node name template, e.g. "reco_{index:05d}"

    @field_validator("indices")
    @classmethod
    def _ranges(cls, v: str) -> str:
        if not expand_ranges(v):
            raise ValueError("indices: give at least one index, e.g. 0-9999")
        return v

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(index=i, argv=[_with_index(a, i) for a in self.argv],
                         name=_with_index(self.name, i) if self.name else None)
                for i in expand_ranges(self.indices)]


class RoundSpec(Frozen):
    """A round of work, as the campaign layer decides it and a backend renders it.

    ``workdir`` is an absolute path on the site; everything the round writes about itself
    (scripts, scheduler logs, exit-code files, the submission record) lives under it.
    Commands run with ``cwd`` as their working directory (default: ``workdir``).
    """

    key: str
    label: RoundLabel
    workdir: str
    units: list[WorkUnit] = Field(min_length=1)
    fanin: list[str] | None = None  # argv of the fan-in step, run after every unit succeeded
    throttle: int | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0, le=20)
    #: retries of the fan-in step; None: the same as ``retries``
    fanin_retries: int | None = Field(default=None, ge=0, le=20)
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
    #: Slurm: the round's job arrays, ``<id>[@<offset>]`` comma-separated (one array at offset
    #: 0 is just ``<id>``; slurm_parse.arrays_of) / DAGMan cluster id / local job id
    fanout_id: str
    #: the fan-in step, if the round has one. Slurm: the ``afterok`` job id. HTCondor: the
    #: fan-in NODE name ``"fanin"`` (not a job id: DAGMan runs it inside ``fanout_id``; the
    #: HTCondor backend's submit, find and status parsers rely on this value). Local: None
    #: (the runner runs the fan-in itself).
    fanin_id: str | None = None
    schedd: str | None = None  # HTCondor: the schedd the DAG went to
    script_hash: str = ""
    submitted_at: float = 0.0
    adopted: bool = False  # True when this task found an existing submission instead of submitting
    #: which submission of the round this is: 1, then 2, 3, ... for each rescue resubmission
    #: (the record's ``attempt``; a re-attaching task continues the rescue count from it)
    attempt: int = Field(default=1, ge=1)

    @field_validator("fanout_id", "fanin_id")
    @classmethod
    def _job_id(cls, value: str | None, info) -> str | None:
        # ids go into the status, cancel and release commands: only the characters the three
        # schedulers' ids use (Slurm "200,201@1001", HTCondor "123" / "fanin", local "host:pid")
        if value is not None and not JOB_ID.fullmatch(value):
            raise ValueError(f"{info.field_name} {value[:80]!r} is not a job id: letters, digits and . _ @ , : + - "
                             "only (a Slurm array id, an HTCondor cluster id, a local host:pid)")
        return value

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


class RoundDigest(Frozen):
    """A ``RoundStatus`` in a size that does not grow with the units that went well: what
    a trigger event carries through the Airflow database. The units of each state other
    than DONE as index ranges, the timed-out ones, and the full status of the first
    ``DETAILS`` failed and held units (their reasons and exit codes for the task's log);
    per-unit detail beyond that stays on the site."""

    DETAILS: ClassVar[int] = 20

    key: str
    states: dict[JobState, str] = {}  # state -> index_ranges, DONE left out
    timed_out: str = ""
    details: dict[int, TaskStatus] = {}
    fanin: TaskStatus | None = None
    scheduler_ok: bool = True
    note: str = ""

    @classmethod
    def of(cls, status: RoundStatus) -> RoundDigest:
        by_state: dict[JobState, list[int]] = {}
        for i, st in status.units.items():
            if st.state is not JobState.DONE:
                by_state.setdefault(st.state, []).append(i)
        details: dict[int, TaskStatus] = {}
        for state in (JobState.FAILED, JobState.HELD):
            for i in sorted(by_state.get(state, []))[:cls.DETAILS]:
                details[i] = status.units[i]
        return cls(key=status.key, states={s: index_ranges(v) for s, v in by_state.items()},
                   timed_out=index_ranges(i for i, st in status.units.items() if st.timed_out),
                   details=details, fanin=status.fanin, scheduler_ok=status.scheduler_ok, note=status.note)

    def status(self, indices: Iterable[int]) -> RoundStatus:
        """The RoundStatus of the round's ``indices`` back: every unit in its state; reasons
        and exit codes only for ``details``."""
        units = {i: _DONE for i in indices}
        timed_out = set(expand_ranges(self.timed_out))
        for state, ranges in self.states.items():
            for i in expand_ranges(ranges):
                units[i] = self.details.get(i) or TaskStatus(state=state, timed_out=i in timed_out)
        return RoundStatus(key=self.key, units=units, fanin=self.fanin, scheduler_ok=self.scheduler_ok,
                           note=self.note)


_DONE = TaskStatus(state=JobState.DONE)


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
