"""Slurm backend, the reading half: what ``squeue``, ``sacct`` and ``scontrol`` print (and
submit.sh's and the find script's output) turned into ``RoundStatus`` / ``SubmitIds``.
Pure functions; ``slurm.py`` renders the commands whose output this reads. The fixtures
they are tested against are in ``tests/data/slurm/`` (the README there says how each file
was captured on a real Slurm 22.05).

Witnesses, freshest first, for one array task: ``squeue`` (the live queue, with its pending
reason), then ``sacct`` (accounting) or, without accounting, ``scontrol -o show job``, then
the exit file the unit script wrote (``common.merge_observation``). A query that failed
never turns into FAILED or VANISHED: what only it could tell becomes UNKNOWN and
``scheduler_ok`` is False.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from batchsite.backends import common
from batchsite.backends.base import SubmitIds
from batchsite.measure import OUT_OF_MEMORY, RoundUsage, UnitMeasure, killed_for_memory
from batchsite.model import JobState, RoundSpec, RoundStatus, Submission, TaskStatus


# ---------------------------------------------------------------------------- states

#: every Slurm job state (``squeue %T``, ``sacct State``, ``scontrol JobState``) -> JobState.
#: ``squeue -t all`` / sacct manual pages, "JOB STATE CODES", Slurm 22.05.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.WAITING,
    "CONFIGURING": JobState.WAITING,  # resources allocated, nodes booting: not started yet
    "REQUEUED": JobState.WAITING,  # being requeued; will be PENDING again
    "REQUEUE_FED": JobState.WAITING,  # requeued by the federation
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,  # script done, epilog still running: not final yet
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,  # holds its allocation; resumed by gang scheduling/admin
    "STOPPED": JobState.RUNNING,  # SIGSTOP'ed, keeps its allocation
    "COMPLETED": JobState.DONE,
    "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "CANCELLED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "REQUEUE_HOLD": JobState.HELD,  # requeued and held: needs `scontrol release`
    "SPECIAL_EXIT": JobState.HELD,  # requeued in a held state by site policy
    "RESV_DEL_HOLD": JobState.HELD,  # its reservation was deleted; held
    # a federation sibling that was revoked because another cluster runs the job: we cannot
    # tell success or failure from here, so neither DONE nor FAILED
    "REVOKED": JobState.UNKNOWN,
}

#: ``squeue %t`` compact codes, in case a site's squeue alias prints those
COMPACT_STATES: dict[str, str] = {
    "PD": "PENDING", "CF": "CONFIGURING", "RQ": "REQUEUED", "RF": "REQUEUE_FED",
    "R": "RUNNING", "CG": "COMPLETING", "RS": "RESIZING", "SI": "SIGNALING",
    "SO": "STAGE_OUT", "S": "SUSPENDED", "ST": "STOPPED", "CD": "COMPLETED",
    "F": "FAILED", "TO": "TIMEOUT", "CA": "CANCELLED", "OOM": "OUT_OF_MEMORY",
    "NF": "NODE_FAIL", "PR": "PREEMPTED", "BF": "BOOT_FAIL", "DL": "DEADLINE",
    "RH": "REQUEUE_HOLD", "SE": "SPECIAL_EXIT", "RD": "RESV_DEL_HOLD", "RV": "REVOKED",
}

#: pending reasons that mean "held": nothing happens until someone releases the job
#: (squeue ``%r`` / scontrol ``Reason=``). "launch failed requeued held": the batch launch failed on
#: a node (prolog, unwritable output, node trouble) and slurmctld requeued the job with
#: priority 0 (state PENDING, needs `scontrol release`); "job requeued in held state": requeued
#: by `scontrol requeuehold` or a SPECIAL_EXIT. Slurm's own state_desc texts (slurmctld
#: job_mgr.c); not captured here: on the shared test Slurm the launch never came before the
#: queue drained, so these two are written from Slurm's documented texts.
HELD_REASONS = ("JobHeldUser", "JobHeldAdmin", "launch failed requeued held", "job requeued in held state")

#: stderr that means "no such job (any more)", not "the query failed"
_NO_SUCH_JOB = re.compile(r"Invalid job id specified", re.I)
_ACCOUNTING_DISABLED = re.compile(r"accounting storage is disabled", re.I)


def _empty_reason(r: str) -> str:
    r = r.strip()
    return "" if r in ("", "None", "(null)", "none") else r


def parse_exit_code(text: str) -> tuple[int, int] | None:
    """``3:0`` -> (3, 0); ``0:9`` -> (0, 9); anything else -> None."""
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


#: reasons a job had while it waited; Slurm keeps showing them after the job ended
#: (sacct: COMPLETED with Reason=JobArrayTaskLimit; squeue: CANCELLED with Reason=Resources),
#: where they would only mislead
STALE_REASONS = frozenset({
    "Dependency", "JobArrayTaskLimit", "Resources", "Priority", "BeginTime", "None",
})


@functools.lru_cache(maxsize=4096)
def task_status(state_text: str, reason: str = "", exit_code: str = "") -> TaskStatus:
    """One Slurm observation -> TaskStatus. Never raises: an unknown word gives UNKNOWN.
    Cached: the tasks of a big array share a handful of (state, reason, exit code) triples,
    and a TaskStatus is immutable."""
    raw = (state_text or "").strip()
    # sacct: "CANCELLED by 1001"; fixed-width output truncates with "+"
    word = raw.split()[0].rstrip("+").upper() if raw else ""
    word = COMPACT_STATES.get(word, word)
    state = SLURM_STATES.get(word, JobState.UNKNOWN)
    reason = _empty_reason(reason)
    if state is JobState.WAITING and word == "PENDING" and any(h in reason for h in HELD_REASONS):
        state = JobState.HELD
    if state.terminal and reason in STALE_REASONS:
        reason = ""
    code: int | None = None
    ec = parse_exit_code(exit_code)
    if ec is not None:
        rc, sig = ec
        if word == "OUT_OF_MEMORY":
            # sacct says 0:125: not a signal, and nothing about the payload (killed for its memory use)
            code = rc or None
            reason = reason or "out of memory: the job used more than its memory request"
        elif sig:
            code = 128 + sig
            if state.terminal:
                reason = f"{reason} (signal {sig})" if reason else f"signal {sig}"
        elif rc or state is JobState.DONE:
            code = rc
        # 0:0 on a cancelled, timed-out or never-started job says nothing about the payload
    if state is JobState.UNKNOWN:
        reason = reason or (f"unknown Slurm state {raw!r}" if raw else "no Slurm state")
        return TaskStatus(state=state, native=raw, exit_code=code, reason=reason)
    return TaskStatus(
        state=state, native=word, exit_code=code, reason=reason, timed_out=word == "TIMEOUT"
    )


def expand_indices(expr: str) -> list[int]:
    """Slurm's array task expression -> indices: "5-31%4", "[1,3,5-7]", "0-15:4", "7".

    A truncated expression (ending in "...", when SLURM_BITSTR_LEN was too small) yields
    the indices that are complete.
    """
    expr = expr.strip().strip("[]")
    expr = expr.split("%", 1)[0]
    out: list[int] = []
    for part in expr.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            continue
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        step = int(m.group(3)) if m.group(3) else 1
        out.extend(range(a, b + 1, max(step, 1)))
    return out


_JOBID = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]?.*))?(?:\+\d+)?$")


def split_job_id(text: str) -> tuple[str, list[int] | None] | None:
    """``123_4`` -> ("123", [4]); ``123_[5-7%2]`` -> ("123", [5, 6, 7]); ``123`` -> ("123", None)."""
    base, sep, task = text.strip().partition("_")
    if sep and base.isdigit() and task.isdigit():  # one array task: most lines of a big round
        return base, [int(task)]
    m = _JOBID.match(text.strip())
    if not m:
        return None
    if m.group(2) is None:
        return m.group(1), None
    return m.group(1), expand_indices(m.group(2))



# ---------------------------------------------------------------------------- arrays of a round

#: Slurm's defaults (slurm.conf(5), 22.05): task ids below MaxArraySize; a batch script of
#: at most max_script_size bytes (SchedulerParameters)
DEFAULT_MAX_ARRAY_SIZE = 1001
DEFAULT_MAX_SCRIPT_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class SlurmLimits:
    """What bounds one job array and one batch script on this site (``scontrol show config``)."""

    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_array_tasks: int | None = None  # SchedulerParameters=max_array_tasks=N
    max_script_size: int = DEFAULT_MAX_SCRIPT_SIZE

    @property
    def window(self) -> int:
        """Unit indices per array: task ids 0..window-1 are valid and at most that many tasks."""
        return max(1, min(self.max_array_size, self.max_array_tasks or self.max_array_size))


def parse_limits(text: str) -> SlurmLimits:
    """The ``config`` section of the probe (``scontrol show config``): MaxArraySize and the
    ``max_array_tasks`` / ``max_script_size`` SchedulerParameters; Slurm's defaults for what
    is absent (the section missing, an older probe, slurmctld down)."""
    config = common.parse_run_section(common.split_sections(text or "").get(("config", "-")))
    values: dict[str, str] = {}
    for line in config.lines:
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    params = dict(p.partition("=")[::2] for p in values.get("SchedulerParameters", "").split(",") if "=" in p)

    def number(text: str | None) -> int | None:
        m = re.match(r"\s*(\d+)", text or "")
        return int(m.group(1)) if m else None

    return SlurmLimits(
        max_array_size=number(values.get("MaxArraySize")) or DEFAULT_MAX_ARRAY_SIZE,
        max_array_tasks=number(params.get("max_array_tasks")),
        max_script_size=number(params.get("max_script_size")) or DEFAULT_MAX_SCRIPT_SIZE,
    )


def format_arrays(arrays: Sequence[tuple[str, int]]) -> str:
    """[("123", 0), ("124", 1001)] -> "123,124@1001": ``Submission.fanout_id`` of a Slurm round."""
    return ",".join(a if off == 0 else f"{a}@{off}" for a, off in arrays)


_ARRAY_ENTRY = re.compile(r"(\d+)(?:@(\d+))?")


def arrays_of(fanout_id: str) -> list[tuple[str, int]]:
    """``format_arrays`` read back: (array job id, offset) per array; ValueError on garbage."""
    out = []
    for part in fanout_id.split(","):
        m = _ARRAY_ENTRY.fullmatch(part.strip())
        if not m:
            raise ValueError(f"{fanout_id!r} is not a Slurm array list (<id>[@<offset>],...)")
        out.append((m.group(1), int(m.group(2) or 0)))
    return out


_SUBMIT_LINE = re.compile(r"array=(\d+(?:@\d+)?(?:,\d+(?:@\d+)?)*)(?:;\S*)?(?:\s+fanin=(\d+))?")


def parse_submit(stdout: str) -> SubmitIds:
    found = _SUBMIT_LINE.findall(stdout or "")
    if not found:
        raise ValueError(f"no Slurm job id in the output of submit.sh: {stdout!r}")
    arrays, fanin_id = found[-1]
    return SubmitIds(fanout_id=arrays, fanin_id=fanin_id or None)


def job_ids(subs: Sequence[Submission], *, strict: bool = True) -> list[str]:
    """Every Slurm job id of these rounds (each array, each fan-in), each once."""
    out: list[str] = []
    for s in subs:
        try:
            ids = [a for a, _ in arrays_of(s.fanout_id)] + ([s.fanin_id] if s.fanin_id else [])
        except ValueError:
            ids = s.job_ids  # checked one by one below
        for i in ids:
            if not re.fullmatch(r"\d+", i):
                if strict:
                    raise ValueError(f"{s.key}: {i!r} is not a Slurm job id")
                continue
            if i not in out:
                out.append(i)
    return out


# ---------------------------------------------------------------------------- status parsing

def _query_ok(cmd: common.RunSection) -> bool:
    """The query ran: exit 0, or its only complaint is about ids Slurm no longer knows."""
    if not cmd.present or cmd.rc is None:
        return False
    if cmd.rc == 0:
        return True
    return bool(cmd.err_lines) and all(_NO_SUCH_JOB.search(e) for e in cmd.err_lines if e.strip())


def _accounting_disabled(cmd: common.RunSection) -> bool:
    return any(_ACCOUNTING_DISABLED.search(e) for e in cmd.err_lines)


class _Observed:
    """Per job id: array tasks index -> TaskStatus, plain job -> TaskStatus."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[int, TaskStatus]] = {}
        self.jobs: dict[str, TaskStatus] = {}

    def add(self, job_text: str, st: TaskStatus) -> None:
        parsed = split_job_id(job_text)
        if parsed is None:
            return
        base, idx = parsed
        if idx is None:
            self.jobs[base] = st
        else:
            t = self.tasks.setdefault(base, {})
            for i in idx:
                t[i] = st


def parse_squeue_lines(lines: Iterable[str]) -> _Observed:
    obs = _Observed()
    for line in lines:
        parts = line.split("|")
        if len(parts) < 2:
            continue
        reason = parts[2] if len(parts) > 2 else ""
        obs.add(parts[0], task_status(parts[1], reason))
    return obs


def parse_sacct_lines(lines: Iterable[str], obs: _Observed | None = None) -> _Observed:
    obs = obs or _Observed()
    for line in lines:
        parts = line.split("|")
        if len(parts) < 3 or "." in parts[0]:  # job steps (without -X) are not units
            continue
        reason = parts[3] if len(parts) > 3 else ""
        obs.add(parts[0], task_status(parts[1], reason, parts[2]))
    return obs


_KV = re.compile(r"(?:^|\s)(\w+)=(\S*)")


def parse_scontrol_lines(lines: Iterable[str], obs: _Observed | None = None) -> _Observed:
    """``scontrol -o show job``: one line per job record; array records carry
    ArrayJobId/ArrayTaskId (a pending remainder has ArrayTaskId=5-7%2)."""
    obs = obs or _Observed()
    for line in lines:
        kv = dict(_KV.findall(line))
        if "JobId" not in kv or "JobState" not in kv:
            continue
        st = task_status(kv["JobState"], kv.get("Reason", ""), kv.get("ExitCode", ""))
        if kv.get("ArrayJobId") and kv.get("ArrayTaskId") not in (None, "", "(null)", "N/A"):
            obs.add(f"{kv['ArrayJobId']}_[{kv['ArrayTaskId']}]", st)
        else:
            obs.add(kv["JobId"], st)
    return obs


def parse_status(text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
    """The output of ``render_status_script(subs)`` -> one RoundStatus per submission.

    Never raises on odd text. A query that failed (slurmctld down, sacct broken and no
    scontrol answer) gives ``scheduler_ok=False``, and units nobody saw are UNKNOWN, not
    VANISHED.
    """
    sections = common.split_sections(text or "")
    squeue = common.parse_run_section(sections.get(("squeue", "-")))
    squeue_ok = _query_ok(squeue)
    queue = parse_squeue_lines(squeue.lines) if squeue_ok else _Observed()

    notes: list[str] = []
    if not squeue_ok:
        notes.append(f"squeue failed: {squeue.error_text()}")

    sacct = common.parse_run_section(sections.get(("sacct", "-")))
    acct = _Observed()
    acct_ok = False
    if sacct.present and _query_ok(sacct):
        acct_ok = True
        parse_sacct_lines(sacct.lines, acct)
    else:
        if sacct.present and not _accounting_disabled(sacct):
            notes.append(f"sacct failed: {sacct.error_text()}")
        keys = [("scontrol", i) for i in job_ids(subs, strict=False)] + [("scontrol", "-")]
        scontrols = [common.parse_run_section(sections[k]) for k in keys if k in sections]
        if scontrols:
            acct_ok = all(_query_ok(c) for c in scontrols)
            for c in scontrols:
                parse_scontrol_lines(c.lines, acct)
            bad = [c for c in scontrols if not _query_ok(c)]
            if bad:
                notes.append(f"scontrol failed: {bad[0].error_text()}")
        elif not sacct.present:
            notes.append("no accounting section in the status output")

    scheduler_ok = squeue_ok and acct_ok
    note = "; ".join(notes)
    out: dict[str, RoundStatus] = {}
    for s in subs:
        exits = common.parse_exit_files(sections.get(("exit", s.key), ""))
        q_tasks: dict[int, TaskStatus] = {}
        a_tasks: dict[int, TaskStatus] = {}
        for array_id, offset in arrays_of(s.fanout_id):
            q_tasks.update((offset + t, st) for t, st in queue.tasks.get(array_id, {}).items())
            a_tasks.update((offset + t, st) for t, st in acct.tasks.get(array_id, {}).items())
        units = {
            i: _merge(q_tasks.get(i), a_tasks.get(i), exits.get(str(i)), scheduler_ok)
            for i in s.indices
        }
        fanin = None
        if s.fanin_id:
            fanin = _merge(
                queue.jobs.get(s.fanin_id), acct.jobs.get(s.fanin_id), exits.get(common.FANIN),
                scheduler_ok,
            )
        out[s.key] = RoundStatus(
            key=s.key, units=units, fanin=fanin, scheduler_ok=scheduler_ok, note=note
        )
    return out


def _merge(queue: TaskStatus | None, acct: TaskStatus | None, rc: int | None, ok: bool) -> TaskStatus:
    st = common.merge_observation(queue, acct, rc)
    if st.state is JobState.VANISHED and not ok:
        # a query failed: "not seen" is no evidence that the job left the queue
        return TaskStatus(state=JobState.UNKNOWN, native="unobserved", reason="scheduler query failed")
    # sacct has no live reason (Reason=None for FAILED, "Dependency" for a fan-in that squeue
    # already reports as DependencyNeverSatisfied): take squeue's when it saw the same state
    if queue is not None and queue.reason and st.state is queue.state and queue.reason not in st.reason:
        reason = f"{queue.reason} ({st.reason})" if st.reason.startswith("signal ") else (st.reason or queue.reason)
        st = st.model_copy(update={"reason": reason})
    return st


def parse_probe(text: str) -> bool | None:
    """True: sacct works; False: accounting storage is disabled; None: could not tell
    (slurmdbd down, sacct missing): the status script then tries sacct and falls back."""
    sacct = common.parse_run_section(common.split_sections(text or "").get(("sacct", "-")))
    if not sacct.present:
        return None
    if _accounting_disabled(sacct):
        return False
    return True if sacct.rc == 0 else None



_LOG_NAME = re.compile(r"^(?:(\d+)_\d+|fanin_(\d+))\.out$")
_CANCELLED_BY_SUBMIT = re.compile(r"cancelling array (\d+)")


def parse_find_by_name(text: str, offsets: Sequence[int] = (0,)) -> SubmitIds | None:
    """The arrays and the fan-in job named after a round key, or None if there is none.
    ``offsets``: those of the round's arrays (``slurm.array_chunks``); submit.sh submits
    them in that order, so the arrays found, sorted by job id, get them in turn.

    Raises ValueError when the scheduler could not be asked (so "nothing found" is never
    confused with "could not look"), when more arrays carry the name than the round has,
    or fewer (submit.sh stopped between two sbatch calls). Jobs of earlier records
    (``record`` sections) do not count, nor does an array a failed submit.sh cancelled
    itself (``failed`` section), but only once Slurm confirms the cancel
    (``_cancel_confirmed``): "cancelling array N" is submit.sh's intent, and its scancel
    may fail as the sbatch before it did.
    """
    sections = common.split_sections(text or "")
    squeue = common.parse_run_section(sections.get(("squeue", "-")))
    sacct = common.parse_run_section(sections.get(("sacct", "-")))
    if not _query_ok(squeue) and not (sacct.present and _query_ok(sacct)):
        raise ValueError(f"could not look up jobs by name: squeue: {squeue.error_text()}")
    arrays: set[str] = set()
    plain: set[str] = set()
    for cmd in (squeue, sacct):
        if not _query_ok(cmd):
            continue
        for line in cmd.lines:
            parsed = split_job_id(line.split("|", 1)[0])
            if parsed is None:
                continue
            (arrays if parsed[1] is not None else plain).add(parsed[0])
    for line in sections.get(("logs", "-"), "").splitlines():
        if m := _LOG_NAME.match(line.strip()):
            (arrays if m.group(1) else plain).add(m.group(1) or m.group(2))
    for ids in common.earlier_submissions(text, parse_submit):
        arrays.difference_update(a for a, _ in arrays_of(ids.fanout_id))
        plain.discard(ids.fanin_id or "")
    for cancelled in set(_CANCELLED_BY_SUBMIT.findall(common.failed_attempts(text))) & arrays:
        if _cancel_confirmed(cancelled, squeue, sacct):
            arrays.discard(cancelled)
    if not arrays:
        return None
    found = sorted(arrays, key=int)
    if len(found) > len(offsets):
        raise ValueError(f"more job arrays carry this name than the round has ({len(offsets)}): {found}")
    if len(found) < len(offsets):
        raise ValueError(
            f"only {len(found)} of the round's {len(offsets)} job arrays carry its name ({found}): the submission "
            f"stopped between two sbatch calls. Cancel them (scancel {' '.join(found)}) and remove the round's "
            f"{common.RECORD_DIR}/lock to submit it again")
    later = sorted((p for p in plain if int(p) > int(found[-1])), key=int)
    return SubmitIds(fanout_id=format_arrays(list(zip(found, offsets))), fanin_id=later[0] if later else None)


def _cancel_confirmed(array_id: str, squeue: common.RunSection, sacct: common.RunSection) -> bool:
    """The array is over: squeue / sacct show every task of it CANCELLED, or it left the
    queue (squeue answered without it) and accounting has its final record. Anything else
    (still PENDING, a query that failed, no record at all) is no proof."""
    def states(cmd: common.RunSection) -> list[TaskStatus]:
        out = []
        for line in cmd.lines if cmd.present and _query_ok(cmd) else []:
            parts = line.split("|")
            parsed = split_job_id(parts[0])
            if parsed is not None and parsed[0] == array_id and parsed[1] is not None and len(parts) > 1:
                out.append(task_status(parts[1]))
        return out

    in_queue, accounted = states(squeue), states(sacct)
    seen = in_queue + accounted
    if seen and all(s.native == "CANCELLED" for s in seen):
        return True
    return _query_ok(squeue) and not in_queue and bool(accounted) and all(s.state.terminal for s in accounted)


def parse_find(text: str, spec: RoundSpec, offsets: Sequence[int] = (0,)) -> SubmitIds | None:
    """``parse_find_by_name`` for ``spec``: arrays without the fan-in the round needs are
    half a submission (submit.sh stopped between its sbatch calls): ValueError."""
    ids = parse_find_by_name(text, offsets)
    if ids is not None and spec.fanin and ids.fanin_id is None:
        found = " ".join(a for a, _ in arrays_of(ids.fanout_id))
        uncancelled = set(found.split()) & set(_CANCELLED_BY_SUBMIT.findall(common.failed_attempts(text)))
        raise ValueError(
            f"job array(s) {found} are named {spec.key} but no fan-in job is: the submission stopped "
            f"before its last sbatch call"
            + (f"; its scancel of {' '.join(sorted(uncancelled))} did not take effect (Slurm does not show it "
               "CANCELLED)" if uncancelled else "")
            + f". Nothing is submitted again while they may run: cancel them (scancel {found}), check that "
            f"squeue shows them CANCELLED or gone, and remove {spec.workdir}/{common.RECORD_DIR}/lock to submit "
            f"the round again"
        )
    return ids


# ---------------------------------------------------------------------------- diagnose

#: (pattern, hint) in the order they are tried; texts Slurm's tools print (sbatch_ctld_down.txt,
#: squeue_ctld_down.txt, submit_fanin_rejected.txt in tests/data/slurm)
SLURM_ERRORS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Unable to contact slurm controller", re.I),
     "slurmctld is not answering (down, restarting, or not reachable from this login node): usually "
     "transient, the next attempt asks again; if it persists, check `scontrol ping` and tell the site admins"),
    (re.compile(r"Invalid account or account/partition combination", re.I),
     "the account (resources.account) may not use this partition (resources.partition): list yours with "
     "`sacctmgr -n show assoc user=$USER format=account,partition`"),
    (re.compile(r"invalid partition", re.I),
     "the partition (resources.partition) does not exist on this cluster: list them with `sinfo -s`"),
]


def diagnose(text: str) -> str | None:
    """A hint for a known Slurm error in ``text`` (a tool's stderr), else None."""
    for pat, msg in SLURM_ERRORS:
        if pat.search(text or ""):
            return msg
    return None



# ---------------------------------------------------------------------------- measured usage

#: what ``slurm.usage_command`` asks sacct for, in this order (no ``-X``: the ``.batch`` step
#: carries MaxRSS, the allocation line the state, the request and the limits)
USAGE_FIELDS = ("JobID", "State", "ExitCode", "ElapsedRaw", "TotalCPU", "MaxRSS", "ReqMem", "TimelimitRaw",
                "NodeList", "AllocCPUS")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)[cn]?")
_SIZE_MB = {"": 1 / (1024 * 1024), "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


def parse_size_mb(text: str, bare_unit: str = "M") -> float | None:
    """sacct sizes -> MB: ``64448K``, ``300M``, ``4G``, ``2000Mc`` / ``1000Mn`` (ReqMem per cpu /
    node); a bare number is in ``bare_unit`` (ReqMem: MB; MaxRSS: bytes, unit ""). None: empty."""
    m = _SIZE.fullmatch((text or "").strip())
    if not m:
        return None
    return float(m.group(1)) * _SIZE_MB[m.group(2) or bare_unit]


def parse_cpu_time(text: str) -> float | None:
    """sacct ``TotalCPU`` -> seconds: ``MM:SS.mmm``, ``HH:MM:SS``, ``D-HH:MM:SS``."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", (text or "").strip())
    if not m:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _number(text: str) -> float | None:
    return float(text) if re.fullmatch(r"\d+(?:\.\d+)?", (text or "").strip()) else None


def parse_usage(text: str, sub: Submission) -> RoundUsage:
    """What ``usage.sh slurm`` printed (``slurm.usage_command``) -> the measured usage of every
    unit and fan-in of the round, every attempt: a unit rerun by a rescue is measured by its
    newest job (highest job id). The array ids and offsets come from ``sub`` and the earlier
    submission records. The allocation line gives state, elapsed time, request, limit, node
    and cpus; its steps (``.batch``, ``.extern``, ``.0``) the peak RSS. TotalCPU is kept only
    where some step reported a MaxRSS: without ``jobacct_gather`` Slurm prints 0 for both
    (``usage_no_gather.txt``), which is no measurement."""
    sections = common.split_sections(text or "")
    sacct = sections.get(("sacct", "-"), "")
    earlier = [ids for ids in common.earlier_submissions(text, parse_submit)]
    offsets = dict(arrays_of(sub.fanout_id))
    fanins = {sub.fanin_id} - {None}
    for ids in earlier:
        offsets.update((a, off) for a, off in arrays_of(ids.fanout_id) if a not in offsets)
        fanins |= {ids.fanin_id} - {None}
    alloc: dict[str, list[str]] = {}
    rss: dict[str, float] = {}
    failed = ""
    for line in sacct.splitlines():
        if line.startswith("!rc "):
            failed = f"sacct exited {line[4:].strip()}"
        parts = line.split("|")
        if len(parts) < len(USAGE_FIELDS):
            continue
        job, _, step = parts[0].partition(".")
        if step:
            peak = parse_size_mb(parts[5], bare_unit="")
            if peak is not None:
                rss[job] = max(rss.get(job, 0.0), peak)
        else:
            alloc[job] = parts
    newest: dict[int, tuple[int, UnitMeasure]] = {}
    fanin: tuple[int, UnitMeasure] | None = None
    for job, parts in alloc.items():
        base, task = split_job_id(job) or ("", None)
        if not base:
            continue
        measure = _usage_measure(parts, rss.get(job))
        if task is not None and base in offsets and len(task) == 1:
            index = offsets[base] + task[0]
            if index not in newest or int(base) > newest[index][0]:
                newest[index] = (int(base), measure)
        elif task is None and base in fanins and (fanin is None or int(base) > fanin[0]):
            fanin = (int(base), measure)
    return RoundUsage(units={i: m for i, (_, m) in sorted(newest.items())}, fanin=fanin[1] if fanin else None,
                      note=failed)


def _usage_measure(parts: list[str], peak: float | None) -> UnitMeasure:
    """One allocation line of ``USAGE_FIELDS`` and its steps' peak RSS (MB)."""
    ec = parse_exit_code(parts[2])
    req = parse_size_mb(parts[6])
    word = task_status(parts[1]).native
    limit = _number(parts[7])
    return UnitMeasure(
        state=word, wall_seconds=_number(parts[3]), cpu_seconds=parse_cpu_time(parts[4]) if peak else None,
        max_rss_mb=peak, req_mem_mb=int(req) if req else None, time_limit_seconds=limit * 60 if limit else None,
        cpus=int(parts[9]) if parts[9].isdigit() else None,
        host=parts[8] if parts[8] and parts[8] != "None assigned" else None,
        out_of_memory=word == OUT_OF_MEMORY or killed_for_memory(ec is not None and ec[1] == 9, peak, req),
        source="sacct")
