"""Local backend: a round runs as detached processes on the site itself, no daemons, no root.

The embedded default (laptops, the demo, single machines reached over SSH). It runs THE
SAME unit and fan-in scripts as Slurm (``common.render_unit_script`` with
``BATCHSITE_INDEX`` as the array index), with Slurm's array semantics:

* a throttle (``spec.throttle``; default: CPUs of the site // ``resources.cpus``);
* an ``afterok`` fan-in: it starts only when every unit exited 0; when a unit fails the
  fan-in is ``DependencyNeverSatisfied`` (reported WAITING with that reason, like a Slurm
  job pending on a failed afterok dependency) and never runs;
* a time limit (``resources.time_minutes``): SIGTERM, then SIGKILL, reported TIMEOUT with
  ``timed_out=True`` so the next try can escalate.

The scheduler is ``include/localsched.py`` (stdlib only, Python >= 3.9), shipped into the
workdir with the round, so a site needs nothing installed but ``python3`` (or
``$BATCHSITE_PYTHON``, or the ``BATCHSITE_PYTHON`` of ``spec.env``) and ``bash``. One
runner per round, started by ``submit.sh`` with ``nohup ... &`` (it calls ``setsid()``
itself: no ``setsid`` binary needed, as on macOS). Its protocol (state files, states) is
documented at the top of ``localsched.py``.

Job id: ``<hostname>:<runner pid>`` (hostname = ``uname -n`` = Python's
``socket.gethostname()``). Status and cancel check that they run on that host: behind a
round-robin login alias the runner may be on another node, and then its liveness cannot be
seen; such a round reports UNKNOWN with ``scheduler_ok=False`` instead of guessing.

Status is ONE sh script for every submission: per round a section ``local`` with the
runner's liveness (``kill -0`` plus its command line, so a recycled pid is not mistaken for
the runner; zombies count as dead) and the state files, then the shared exit-file
sections. A runner that died (SIGKILL, reboot) never leaves a round RUNNING forever:
its queued units become FAILED (``RUNNER-LOST``), a unit recorded as running is RUNNING
only while its own process still lives, and otherwise is judged by its exit file (or is
VANISHED, which the poller turns into FAILED after ``vanish_grace``).

No search by name (``render_find_script`` is None): the runner's lock file
(``state/runner.lock``, O_EXCL) already makes a second runner for a workdir impossible, so
``Site.submit`` may retry a failed submission without looking first.
"""

from __future__ import annotations

import json
import posixpath
import re
import signal
from collections.abc import Sequence
from importlib import resources
from typing import ClassVar

from batchsite.backends import common
from batchsite.backends.base import Backend, RenderedRound, SubmitIds, register
from batchsite.model import JobState, RoundSpec, RoundStatus, Submission, TaskStatus

q = common.q

UNIT_SCRIPT = "unit.sh"
FANIN_SCRIPT = "fanin.sh"
RUNNER = "localsched.py"
CONFIG = "local.json"
LOG_DIR = "logs"
STATE_DIR = "state"
SECTION = "local"
#: what ``submit.sh`` prints: ``local=<host>:<pid>``
_SUBMIT_LINE = re.compile(r"local=([A-Za-z0-9][A-Za-z0-9._-]*):(\d+)")
#: seconds ``submit.sh`` waits for the runner's pid file
START_TIMEOUT = 30
#: tenths of a second the cancel script waits for a runner after SIGTERM (the runner
#: itself gives its jobs 2 s between SIGTERM and SIGKILL)
CANCEL_WAIT_TENTHS = 60


def runner_source() -> str:
    """The text of ``include/localsched.py`` (package data of ``batchsite.include``)."""
    return resources.files("batchsite.include").joinpath(RUNNER).read_text(encoding="utf-8")


def _wd(path: str) -> str:
    # the runner uses os.path.abspath (= normpath for an absolute path): the same string
    # must appear in its command line and in the patterns the status/cancel scripts match
    return posixpath.normpath(path)


def job_id(host: str, pid: int | str) -> str:
    return f"{host}:{pid}"


def split_job_id(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*):(\d+)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a local job id (<host>:<pid>)")
    return m.group(1), int(m.group(2))


# ---------------------------------------------------------------------------- rendering

def local_config(spec: RoundSpec) -> dict:
    fres = spec.fanin_resources or spec.resources
    return {
        "version": 1,
        "key": spec.key,
        "indices": spec.indices,
        "throttle": spec.throttle,
        "has_fanin": bool(spec.fanin),
        "cpus_per_unit": spec.resources.cpus,
        "time_limit_s": spec.resources.time_minutes * 60 if spec.resources.time_minutes else None,
        "fanin_time_limit_s": fres.time_minutes * 60 if fres.time_minutes else None,
    }


def render_submit_script(spec: RoundSpec) -> str:
    """POSIX sh, run with cwd = workdir. Starts the runner detached, waits for its pid file
    (so the id printed is real) and prints ``local=<host>:<pid>``. On failure the runner is
    killed and its state removed, so a later submission can start afresh. A runner that
    was started once blocks every later start (``state/runner.lock``), unless it finished
    and an earlier record names it (``Site.resubmit``): then its state goes to ``state.<n>``."""
    wd = _wd(spec.workdir)
    py = spec.env.get("BATCHSITE_PYTHON") or "python3"
    tenths = START_TIMEOUT * 10
    return "\n".join([
        "#!/bin/sh",
        f"# batchsite round {spec.key}: submit (local runner)",
        "set -u",
        f"wd={q(wd)}",
        'cd "$wd" || exit 1',
        f"if [ -e {STATE_DIR}/runner.lock ]; then",
        "  # a resubmission (Site.resubmit kept the last record as submitted.<n>): the finished",
        "  # runner that record names goes aside, with the exit files of its run",
        f"  r=; rh=; [ -s {STATE_DIR}/runner.pid ] && read -r r rh < {STATE_DIR}/runner.pid",
        f'  if [ -f {STATE_DIR}/runner.done ] && [ -n "$r" ] && grep -qsxF "local=$rh:$r" {common.RECORD_DIR}/submitted.*; then',
        f'    n=1; while [ -e "{STATE_DIR}.$n" ]; do n=$((n + 1)); done',
        f'    mv {STATE_DIR} "{STATE_DIR}.$n" || exit 1',
        f'    [ -d {common.STATUS_DIR} ] && {{ mv {common.STATUS_DIR} "{STATE_DIR}.$n/{common.STATUS_DIR}" || exit 1; }}',
        "  else",
        f'    echo "batchsite: a local runner was already started in $wd ({STATE_DIR}/runner.lock exists);'
        f' remove $wd/{STATE_DIR} to run this round again" >&2',
        "    exit 1",
        "  fi",
        "fi",
        f"mkdir -p {LOG_DIR} {STATE_DIR} {common.STATUS_DIR} || exit 1",
        f"PY=${{BATCHSITE_PYTHON:-{q(py)}}}",
        'command -v "$PY" >/dev/null 2>&1 || { echo "batchsite: no $PY on this machine: the local runner needs python3 >= 3.9 (set BATCHSITE_PYTHON)" >&2; exit 1; }',
        "# the runner calls setsid() itself; nohup + redirections: it outlives this shell and",
        "# an SSH session, and holds none of the pipes the caller reads",
        f'nohup "$PY" "$wd/{RUNNER}" run "$wd" </dev/null >>{LOG_DIR}/localsched.log 2>&1 &',
        "bg=$!",
        "bs_running() {  # the runner process still exists (and is not a zombie)",
        '  if [ -r "/proc/$bg/stat" ]; then st=; read -r st < "/proc/$bg/stat"; st=${st##*") "}; st=${st%% *}',
        '  else st=$(ps -o stat= -p "$bg" 2>/dev/null); fi',
        '  case "$st" in ""|Z*|X*) return 1 ;; esac',
        "  return 0",
        "}",
        "i=0",
        f"while [ ! -s {STATE_DIR}/runner.pid ]; do",
        f'  if [ "$i" -ge {tenths} ] || ! bs_running; then',
        f"    [ -s {STATE_DIR}/runner.pid ] && break",
        '    kill -s KILL "$bg" 2>/dev/null',
        f'    echo "batchsite: the local runner ($PY {RUNNER}) did not start in $wd; its log:" >&2',
        f"    tail -n 20 {LOG_DIR}/localsched.log >&2",
        f"    bs_running || rm -rf {STATE_DIR}",
        "    exit 1",
        "  fi",
        "  sleep 0.1; i=$((i + 1))",
        "done",
        f"read -r rpid rhost < {STATE_DIR}/runner.pid",
        'echo "local=$rhost:$rpid"',
    ]) + "\n"


def render_round(spec: RoundSpec) -> RenderedRound:
    files = {
        UNIT_SCRIPT: common.render_unit_script(spec, '"${BATCHSITE_INDEX}"'),
        CONFIG: json.dumps(local_config(spec), indent=1, sort_keys=True) + "\n",
        RUNNER: runner_source(),
    }
    if spec.fanin:
        files[FANIN_SCRIPT] = common.render_fanin_script(spec)
    return RenderedRound(
        files=files,
        submit_script=render_submit_script(spec),
        executable=frozenset({UNIT_SCRIPT, FANIN_SCRIPT, RUNNER} & set(files)),
    )


def parse_submit(stdout: str) -> SubmitIds:
    found = _SUBMIT_LINE.findall(stdout or "")
    if not found:
        raise ValueError(f"no local job id (local=<host>:<pid>) in the output of submit.sh: {stdout!r}")
    host, pid = found[-1]
    return SubmitIds(fanout_id=job_id(host, pid))


# ---------------------------------------------------------------------------- shell helpers

#: POSIX sh (dash, bash --posix, busybox). ``bs_alive <pid> <pattern>``: the process exists,
#: is ours, is not a zombie, and its command line contains the pattern (a recycled pid is
#: not the runner). ``kill -s 0 -- -<pgid>`` is the spelling dash accepts.
_HELPERS = r"""bs_cmd() {
  if [ -r "/proc/$1/cmdline" ]; then tr '\000' ' ' < "/proc/$1/cmdline" 2>/dev/null
  else ps -o args= -p "$1" 2>/dev/null; fi
}
bs_alive() {
  case "$1" in ''|*[!0-9]*|0|1) return 1 ;; esac
  kill -s 0 "$1" 2>/dev/null || return 1
  case "$(bs_cmd "$1")" in *"$2"*) return 0 ;; esac
  return 1
}"""

_STATUS_FN = r"""bs_local() {
  wd=$1
  if [ ! -d "$wd/state" ]; then echo "nostate"; return 0; fi
  here=$(uname -n)
  echo "host $here"
  r=; rhost=
  [ -s "$wd/state/runner.pid" ] && read -r r rhost < "$wd/state/runner.pid"
  echo "runner $r $rhost"
  runner=dead
  if [ -f "$wd/state/runner.done" ]; then
    d=; read -r d < "$wd/state/runner.done"; echo "done $d"; runner=done
  elif [ -n "$rhost" ] && [ "$rhost" != "$here" ]; then
    echo "alive elsewhere"; runner=elsewhere
  elif bs_alive "$r" "localsched.py run $wd"; then
    echo "alive yes"; runner=alive
  else
    echo "alive no"
  fi
  [ -f "$wd/fanin.sh" ] && echo "has-fanin"
  for f in "$wd"/state/*; do
    [ -f "$f" ] || continue
    n=${f##*/}
    case "$n" in runner.*) continue ;; esac
    s=; p=; read -r s p < "$f"
    echo "state $n $s $p"
    if [ "$s" = running ] && { [ "$runner" = dead ] || [ "$runner" = done ]; }; then
      script=unit.sh; [ "$n" = fanin ] && script=fanin.sh
      if bs_alive "$p" "$wd/$script"; then echo "job-alive $n yes"; else echo "job-alive $n no"; fi
    fi
  done
}"""

_CANCEL_FNS = r"""bs_wait() {  # bs_wait <tenths> <command...>: wait while the command succeeds
  n=$1; shift
  while [ "$n" -gt 0 ] && "$@"; do sleep 0.1; n=$((n - 1)); done
}
bs_set() {
  t="${1%/*}/.${1##*/}.tmp.$$"
  printf '%s\n' "$2" > "$t" && mv -f "$t" "$1"
}
bs_group_ours() {  # <pgid> <script path> <workdir>: a live process group of this round
  case "$1" in ''|*[!0-9]*|0|1) return 1 ;; esac
  kill -s 0 -- "-$1" 2>/dev/null || return 1
  bs_alive "$1" "$2" && return 0
  # the leader is gone; a member carrying the round's BATCHSITE_WORKDIR is still ours
  for m in $(pgrep -g "$1" 2>/dev/null); do
    [ -r "/proc/$m/environ" ] || continue
    tr '\000' '\n' < "/proc/$m/environ" 2>/dev/null | grep -qxF "BATCHSITE_WORKDIR=$3" && return 0
  done
  return 1
}
bs_any_group() {  # <workdir> <pgid...>: some of these groups still live
  w=$1; shift
  for g in "$@"; do bs_group_ours "$g" "$w/" "$w" && return 0; done
  return 1
}
bs_runner() {  # <workdir>: sets r, rhost, here
  r=; rhost=; here=$(uname -n)
  [ -s "$1/state/runner.pid" ] && read -r r rhost < "$1/state/runner.pid"
}
bs_term() {  # <key> <workdir>: phase 1, SIGTERM the runner (it cancels its own jobs)
  [ -d "$2/state" ] || return 0
  bs_runner "$2"
  [ -n "$rhost" ] && [ "$rhost" != "$here" ] && return 0
  if bs_alive "$r" "localsched.py run $2"; then
    kill -s TERM -- "-$r" 2>/dev/null || kill -s TERM "$r" 2>/dev/null
  fi
  return 0
}
bs_finish() {  # <key> <workdir>: phase 2, make sure nothing of the round is left
  key=$1; wd=$2
  if [ ! -d "$wd/state" ]; then echo "$key: nothing to cancel in $wd (no local runner state)"; return 0; fi
  bs_runner "$wd"
  if [ -n "$rhost" ] && [ "$rhost" != "$here" ]; then
    echo "$key: its local runner $rhost:$r runs on host $rhost, this is $here: cancel it there"
    return 1
  fi
  pat="localsched.py run $wd"
  if bs_alive "$r" "$pat"; then
    bs_wait CANCEL_WAIT_TENTHS bs_alive "$r" "$pat"
    if bs_alive "$r" "$pat"; then
      kill -s KILL -- "-$r" 2>/dev/null || kill -s KILL "$r" 2>/dev/null
      bs_wait 20 bs_alive "$r" "$pat"
      echo "$key: runner $r did not stop on SIGTERM: killed"
    else
      echo "$key: runner $r stopped"
    fi
  fi
  if bs_alive "$r" "$pat"; then echo "$key: runner $r is still alive"; return 1; fi
  # the runner is gone: nothing else writes these files now
  groups=
  for f in "$wd"/state/*; do
    [ -f "$f" ] || continue
    n=${f##*/}
    case "$n" in runner.*) continue ;; esac
    s=; p=; read -r s p < "$f"
    case "$s" in
      running)
        script=unit.sh; [ "$n" = fanin ] && script=fanin.sh
        if bs_group_ours "$p" "$wd/$script" "$wd"; then
          kill -s TERM -- "-$p" 2>/dev/null; groups="$groups $p"
          bs_set "$f" "cancelled $p"
        elif [ ! -f "$wd/status/$n.exit" ]; then
          bs_set "$f" "cancelled $p"
        fi ;;
      queued|waiting) bs_set "$f" cancelled ;;
    esac
  done
  if [ -n "$groups" ]; then
    bs_wait 30 bs_any_group "$wd" $groups
    for g in $groups; do
      bs_group_ours "$g" "$wd/" "$wd" && kill -s KILL -- "-$g" 2>/dev/null
    done
    echo "$key: stopped the process groups$groups"
  fi
  [ -f "$wd/state/runner.done" ] || bs_set "$wd/state/runner.done" cancelled
  echo "$key: cancelled"
  return 0
}""".replace("CANCEL_WAIT_TENTHS", str(CANCEL_WAIT_TENTHS))


def render_status_script(subs: Sequence[Submission]) -> str:
    """ONE script for every submission: a ``local`` section per round (runner liveness
    first, then the state files), then the exit files. The order matters: a state read
    after the liveness check, and an exit file read after the state, is never older."""
    if not subs:
        return "true\n"
    lines = [_HELPERS, _STATUS_FN]
    for s in subs:
        lines.append(common.section_header(SECTION, s.key))
        lines.append(f"bs_local {q(_wd(s.workdir))}")
    lines.append(common.render_exit_files_section(subs))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def render_cancel_script(subs: Sequence[Submission]) -> str:
    """SIGTERM every runner (its process group) first, then per round: wait for it,
    SIGKILL it if still alive, then kill every process group the state files record as
    running (checked to be the round's own: leader's command line, or a member's
    ``BATCHSITE_WORKDIR``), and mark what never ran ``cancelled``. Works when the runner
    is long gone too. Exit 1 only if some round could not be cancelled from here."""
    if not subs:
        return "true\n"
    lines = [_HELPERS, _CANCEL_FNS, "rc=0"]
    for s in subs:
        lines.append(f"bs_term {q(s.key)} {q(_wd(s.workdir))}")
    for s in subs:
        lines.append(f"bs_finish {q(s.key)} {q(_wd(s.workdir))} || rc=1")
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- status parsing

class _Round:
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


def observed(name: str, word: str, arg: str, rnd: _Round) -> TaskStatus | None:
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
    if rnd.runner == "elsewhere":
        return TaskStatus(state=JobState.UNKNOWN, native=word,
                          reason=f"runner {rnd.runner_id} is on another host than {rnd.host}")
    if rnd.runner == "alive":
        if word == "running":
            return TaskStatus(state=JobState.RUNNING, native="running")
        return TaskStatus(state=JobState.WAITING, native=word, reason="Dependency" if word == "waiting" else "")
    if word == "running":
        if rnd.job_alive.get(name):
            return TaskStatus(state=JobState.RUNNING, native="running",
                              reason=f"runner {rnd.runner_id} is gone; the job itself still runs")
        return None
    if word == "waiting":
        return None  # the fan-in: decided by parse_status, which knows the units
    return TaskStatus(state=JobState.FAILED, native="RUNNER-LOST",
                      reason=f"runner {rnd.runner_id} is gone; the unit never started")


def parse_status(text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
    sections = common.split_sections(text or "")
    out: dict[str, RoundStatus] = {}
    for s in subs:
        raw = sections.get((SECTION, s.key))
        rnd = _Round(raw)
        exits = common.parse_exit_files(sections.get(("exit", s.key), ""))
        notes: list[str] = []
        ok = True
        if raw is None:
            ok = False
            notes.append("no local status section in the output of the status command")
        elif rnd.nostate:
            notes.append(f"no local runner state in {s.workdir}")
        elif rnd.runner == "elsewhere":
            ok = False
            notes.append(f"the local runner {rnd.runner_id} runs on {rnd.runner_host}, "
                         f"but the status was read on {rnd.host}")
        elif rnd.runner in ("dead", "missing"):
            notes.append(f"the local runner {rnd.runner_id} is gone (not running, never finished)")

        def merge(name: str) -> TaskStatus:
            rc = exits.get(name)
            if not ok:
                # the query could not see the runner: no witness is not evidence
                if rc is not None:
                    return common.status_from_exit(rc)
                st = rnd.states.get(name)
                return TaskStatus(state=JobState.UNKNOWN, native=st[0] if st else "unobserved",
                                  reason=notes[0])
            st = rnd.states.get(name)
            if st is None:
                queue = (TaskStatus(state=JobState.WAITING, native="queued")
                         if rnd.runner == "alive" else None)
            else:
                queue = observed(name, st[0], st[1], rnd)
            return common.merge_observation(queue, None, rc)

        units = {i: merge(str(i)) for i in s.indices}
        fanin = None
        if rnd.has_fanin or common.FANIN in rnd.states:
            fanin = merge(common.FANIN)
            word = rnd.states.get(common.FANIN, ("", ""))[0]
            if ok and word == "waiting" and rnd.runner_gone and exits.get(common.FANIN) is None:
                # (a unit failure seen by the runner would have made it dependency-never-satisfied)
                fanin = TaskStatus(state=JobState.FAILED, native="RUNNER-LOST",
                                   reason=f"runner {rnd.runner_id} is gone; the fan-in never started")
        out[s.key] = RoundStatus(key=s.key, units=units, fanin=fanin, scheduler_ok=ok, note="; ".join(notes))
    return out


# ---------------------------------------------------------------------------- the Backend

@register
class LocalBackend(Backend):
    name: ClassVar[str] = "local"

    def render_round(self, spec: RoundSpec) -> RenderedRound:
        return render_round(spec)

    def parse_submit(self, stdout: str) -> SubmitIds:
        return parse_submit(stdout)

    def render_status_script(self, subs: Sequence[Submission]) -> str:
        return render_status_script(subs)

    def parse_status(self, text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
        return parse_status(text, subs)

    def render_cancel_script(self, subs: Sequence[Submission]) -> str:
        return render_cancel_script(subs)
