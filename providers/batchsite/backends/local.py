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
runner per round, started by ``submit.sh`` (``local_submit.sh`` beside this module) with
``nohup ... &`` (it calls ``setsid()`` itself: no ``setsid`` binary needed, as on macOS). Its
protocol (state files, states) is documented at the top of ``localsched.py``. The shell
functions of the status and cancel scripts are in ``local_jobs.sh``; ``local_parse.py``
reads what they print.

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
from collections.abc import Sequence
from importlib import resources
from typing import ClassVar

from batchsite import shellscripts
from batchsite.backends import common, local_parse
from batchsite.backends.base import Backend, RenderedRound, SubmitIds, register
from batchsite.measure import RoundUsage
from batchsite.model import RoundSpec, RoundStatus, Submission

q = common.q

UNIT_SCRIPT = "unit.sh"
FANIN_SCRIPT = "fanin.sh"
RUNNER = "localsched.py"
CONFIG = "local.json"
#: submit.sh of every round (its header says what it does); rendered with ``wd`` and ``py`` set
SUBMIT_SCRIPT = shellscripts.load("batchsite.backends", "local_submit.sh")
#: the shell functions of the status and cancel scripts (``bs_local``, ``bs_term``, ``bs_finish``)
JOB_FUNCTIONS = shellscripts.load("batchsite.backends", "local_jobs.sh")
#: the remote side of the measured-usage command (mode ``local``: the runner's usage lines)
USAGE_SCRIPT = shellscripts.load("batchsite.backends", "usage.sh")


def runner_source() -> str:
    """The text of ``include/localsched.py`` (package data of ``batchsite.include``)."""
    return resources.files("batchsite.include").joinpath(RUNNER).read_text(encoding="utf-8")


def _wd(path: str) -> str:
    # the runner uses os.path.abspath (= normpath for an absolute path): the same string
    # must appear in its command line and in the patterns the status/cancel scripts match
    return posixpath.normpath(path)



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
    """``local_submit.sh`` with the round's workdir and python set: POSIX sh, run with
    cwd = workdir; starts the runner detached and prints ``local=<host>:<pid>``."""
    return shellscripts.with_values(SUBMIT_SCRIPT, wd=_wd(spec.workdir),
                                    py=spec.env.get("BATCHSITE_PYTHON") or "python3")


def render_round(spec: RoundSpec) -> RenderedRound:
    files = {
        UNIT_SCRIPT: common.render_unit_script(spec, '"${BATCHSITE_INDEX}"'),
        CONFIG: json.dumps(local_config(spec), indent=1, sort_keys=True) + "\n",
        RUNNER: runner_source(),
        common.UNIT_TABLE: common.render_unit_table(spec),
    }
    if spec.fanin:
        files[FANIN_SCRIPT] = common.render_fanin_script(spec)
    return RenderedRound(
        files=files,
        submit_script=render_submit_script(spec),
        executable=frozenset({UNIT_SCRIPT, FANIN_SCRIPT, RUNNER} & set(files)),
    )



def render_status_script(subs: Sequence[Submission]) -> str:
    """ONE script for every submission: a ``local`` section per round (runner liveness
    first, then the state files), then the exit files. The order matters: a state read
    after the liveness check, and an exit file read after the state, is never older."""
    if not subs:
        return "true\n"
    lines = [JOB_FUNCTIONS]
    for s in subs:
        lines.append(common.section_header(local_parse.SECTION, s.key))
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
    lines = [JOB_FUNCTIONS, "rc=0"]
    for s in subs:
        lines.append(f"bs_term {q(s.key)} {q(_wd(s.workdir))}")
    for s in subs:
        lines.append(f"bs_finish {q(s.key)} {q(_wd(s.workdir))} || rc=1")
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"



# ---------------------------------------------------------------------------- the Backend

@register
class LocalBackend(Backend):
    name: ClassVar[str] = "local"

    def render_round(self, spec: RoundSpec) -> RenderedRound:
        return render_round(spec)

    def parse_submit(self, stdout: str) -> SubmitIds:
        return local_parse.parse_submit(stdout)

    def render_status_script(self, subs: Sequence[Submission]) -> str:
        return render_status_script(subs)

    def parse_status(self, text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
        return local_parse.parse_status(text, subs)

    def render_cancel_script(self, subs: Sequence[Submission]) -> str:
        return render_cancel_script(subs)

    def usage_command(self, sub: Submission) -> list[str] | None:
        """``usage.sh local``: what the runner recorded of each job (wait4's rusage)."""
        return ["sh", "-c", USAGE_SCRIPT, "batchsite", "local", _wd(sub.workdir)]

    def parse_usage(self, text: str, sub: Submission) -> RoundUsage:
        return local_parse.parse_usage(text)
