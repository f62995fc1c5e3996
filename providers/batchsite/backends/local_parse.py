"""Local backend, the reading half: what the status script's ``local`` sections (runner
liveness, state files) and exit files say, turned into ``RoundStatus``; submit.sh's
``local=<host>:<pid>`` turned into ``SubmitIds``. Pure functions; ``local.py`` renders the
scripts (with ``local_jobs.sh``) whose output this reads.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence

from batchsite.backends import common
from batchsite.backends.base import SubmitIds
from batchsite.measure import RoundUsage, UnitMeasure
from batchsite.model import JobState, RoundStatus, Submission, TaskStatus

SECTION = "local"
#: what ``submit.sh`` prints: ``local=<host>:<pid>``
_SUBMIT_LINE = re.compile(r"local=([A-Za-z0-9][A-Za-z0-9._-]*):(\d+)")


def job_id(host: str, pid: int | str) -> str:
    return f"{host}:{pid}"


def split_job_id(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*):(\d+)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a local job id (<host>:<pid>)")
    return m.group(1), int(m.group(2))



def parse_submit(stdout: str) -> SubmitIds:
    found = _SUBMIT_LINE.findall(stdout or "")
    if not found:
        raise ValueError(f"no local job id (local=<host>:<pid>) in the output of submit.sh: {stdout!r}")
    host, pid = found[-1]
    return SubmitIds(fanout_id=job_id(host, pid))



# ---------------------------------------------------------------------------- status parsing

class _LocalSection:
    """What the ``local`` section of one round says."""

    def __init__(self, text: str | None):
        self.present = text is not None
        self.nostate = False
        self.host = ""
        self.runner_pid = ""
        self.runner_host = ""
        self.runner = "missing"  # alive | dead | done | elsewhere | missing
        self.done = ""
        self.has_fanin = False
        self.states: dict[str, tuple[str, str]] = {}
        self.job_alive: dict[str, bool] = {}
        for line in (text or "").splitlines():
            parts = line.split()
            if not parts:
                continue
            word, rest = parts[0], parts[1:]
            if word == "nostate":
                self.nostate = True
            elif word == "host" and rest:
                self.host = rest[0]
            elif word == "runner":
                self.runner_pid = rest[0] if rest else ""
                self.runner_host = rest[1] if len(rest) > 1 else ""
            elif word == "done":
                self.runner = "done"
                self.done = " ".join(rest)
            elif word == "alive" and rest:
                self.runner = {"yes": "alive", "no": "dead", "elsewhere": "elsewhere"}.get(rest[0], "missing")
            elif word == "has-fanin":
                self.has_fanin = True
            elif word == "state" and rest:
                self.states[rest[0]] = (rest[1] if len(rest) > 1 else "", " ".join(rest[2:]))
            elif word == "job-alive" and len(rest) == 2:
                self.job_alive[rest[0]] = rest[1] == "yes"

    @property
    def runner_id(self) -> str:
        return job_id(self.runner_host or "?", self.runner_pid or "?")

    @property
    def runner_gone(self) -> bool:
        """Nothing will start any more jobs of this round."""
        return self.runner in ("dead", "done", "missing")


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _int(text: str) -> int | None:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def observed(name: str, word: str, arg: str, section: _LocalSection) -> TaskStatus | None:
    """One state file (+ liveness) -> the "queue" witness for ``merge_observation``.
    None means "not in the queue": the exit file decides, else VANISHED."""
    if word == "exited":
        rc = _int(arg)
        if rc is None:
            return TaskStatus(state=JobState.UNKNOWN, native="exited", reason=f"bad state file: exited {arg!r}")
        return TaskStatus(state=JobState.DONE if rc == 0 else JobState.FAILED, native="exited", exit_code=rc)
    if word == "signalled":
        sig = _int(arg) or 0
        return TaskStatus(state=JobState.FAILED, native="SIGNALLED", exit_code=128 + sig,
                          reason=f"killed by {_signal_name(sig)}")
    if word == "timeout":
        return TaskStatus(state=JobState.FAILED, native="TIMEOUT", reason="time limit reached", timed_out=True)
    if word == "cancelled":
        return TaskStatus(state=JobState.FAILED, native="CANCELLED", reason="cancelled")
    if word == "dependency-never-satisfied":
        return TaskStatus(state=JobState.WAITING, native=word, reason="DependencyNeverSatisfied")
    if word not in ("queued", "waiting", "running"):
        return TaskStatus(state=JobState.UNKNOWN, native=word or "empty",
                          reason=f"unknown local runner state {word!r}")
    # a live state: believe it only as far as the runner (or the job itself) is alive
    if section.runner == "elsewhere":
        return TaskStatus(state=JobState.UNKNOWN, native=word,
                          reason=f"runner {section.runner_id} is on another host than {section.host}")
    if section.runner == "alive":
        if word == "running":
            return TaskStatus(state=JobState.RUNNING, native="running")
        return TaskStatus(state=JobState.WAITING, native=word, reason="Dependency" if word == "waiting" else "")
    if word == "running":
        if section.job_alive.get(name):
            return TaskStatus(state=JobState.RUNNING, native="running",
                              reason=f"runner {section.runner_id} is gone; the job itself still runs")
        return None
    if word == "waiting":
        return None  # the fan-in: decided by parse_status, which knows the units
    return TaskStatus(state=JobState.FAILED, native="RUNNER-LOST",
                      reason=f"runner {section.runner_id} is gone; the unit never started")


def parse_status(text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
    sections = common.split_sections(text or "")
    out: dict[str, RoundStatus] = {}
    for s in subs:
        raw = sections.get((SECTION, s.key))
        section = _LocalSection(raw)
        exits = common.parse_exit_files(sections.get(("exit", s.key), ""))
        notes: list[str] = []
        ok = True
        if raw is None:
            ok = False
            notes.append("no local status section in the output of the status command")
        elif section.nostate:
            notes.append(f"no local runner state in {s.workdir}")
        elif section.runner == "elsewhere":
            ok = False
            notes.append(f"the local runner {section.runner_id} runs on {section.runner_host}, "
                         f"but the status was read on {section.host}")
        elif section.runner in ("dead", "missing"):
            notes.append(f"the local runner {section.runner_id} is gone (not running, never finished)")

        def merge(name: str) -> TaskStatus:
            rc = exits.get(name)
            if not ok:
                # the query could not see the runner: no witness is not evidence
                if rc is not None:
                    return common.status_from_exit(rc)
                st = section.states.get(name)
                return TaskStatus(state=JobState.UNKNOWN, native=st[0] if st else "unobserved",
                                  reason=notes[0])
            st = section.states.get(name)
            if st is None:
                queue = (TaskStatus(state=JobState.WAITING, native="queued")
                         if section.runner == "alive" else None)
            else:
                queue = observed(name, st[0], st[1], section)
            return common.merge_observation(queue, None, rc)

        units = {i: merge(str(i)) for i in s.indices}
        fanin = None
        if section.has_fanin or common.FANIN in section.states:
            fanin = merge(common.FANIN)
            word = section.states.get(common.FANIN, ("", ""))[0]
            if ok and word == "waiting" and section.runner_gone and exits.get(common.FANIN) is None:
                # (a unit failure seen by the runner would have made it dependency-never-satisfied)
                fanin = TaskStatus(state=JobState.FAILED, native="RUNNER-LOST",
                                   reason=f"runner {section.runner_id} is gone; the fan-in never started")
        out[s.key] = RoundStatus(key=s.key, units=units, fanin=fanin, scheduler_ok=ok, note="; ".join(notes))
    return out



# ---------------------------------------------------------------------------- measured usage

def parse_usage(text: str) -> RoundUsage:
    """``usage.sh local``: the runner's ``state/runner.usage`` lines (``<index|fanin> <wall s>
    <cpu s> <peak RSS KB>``, wait4's rusage of each job) -> the measured usage; a job reaped
    twice (never: one runner per workdir) keeps its last line."""
    units: dict[int, UnitMeasure] = {}
    fanin = None
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        try:
            wall, cpu, rss_kb = float(parts[1]), float(parts[2]), float(parts[3])
        except ValueError:
            continue
        measure = UnitMeasure(state="exited", wall_seconds=wall, cpu_seconds=cpu, max_rss_mb=rss_kb / 1024 or None,
                              source="rusage")
        if parts[0] == common.FANIN:
            fanin = measure
        elif parts[0].isdigit():
            units[int(parts[0])] = measure
    return RoundUsage(units=units, fanin=fanin)
