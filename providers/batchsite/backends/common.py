"""What every backend shares, written once.

* the unit script (one bash script for every work unit of a round, indexed by the
  scheduler's array index or a DAG VARS value) and the fan-in script; both write an
  exit-code file ``status/<index>.exit`` (or ``status/fanin.exit``) by temp name + rename.
  The unit script is the same few lines whatever the number of units: each unit looks its
  command up in the round's unit table (``units.tab``, one line per unit; ``unit_table.sh``);
* the sectioned status output: one remote command prints several sections
  (``@@BATCHSITE <section> <key>``), each parsed by its own pure function;
* ``RUN_HELPER`` (the ``bs_run`` shell function) and ``parse_run_section``: one scheduler
  command per section, its stdout streamed, its stderr and exit code recorded;
* the sections every re-attach (find) script adds: earlier submission records of the
  workdir (``Site.resubmit`` keeps them as ``submitted.<n>``) and the log of failed
  submission attempts, so a finder never mistakes an old or a cancelled job for the one
  it looks for;
* ``merge_observation``: the rule that turns queue + accounting + exit file into one state.
  A unit that left the queue without an exit file or an accounting record is VANISHED,
  never DONE.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from batchsite import shellscripts
from batchsite.model import JobState, RoundSpec, Submission, TaskStatus

STATUS_DIR = "status"
#: the round's unit table in its workdir: one line per unit, ``<index> <argv as shell words>``
UNIT_TABLE = "units.tab"
FANIN = "fanin"
SECTION = "@@BATCHSITE"
#: exit code the unit script uses when it is asked for an index it does not have (unit_table.sh)
NO_SUCH_UNIT = 97
#: ``bs_unit <table> <index>``: the lookup every unit script inlines (unit_table.sh beside this module)
UNIT_LOOKUP = shellscripts.load("batchsite.backends", "unit_table.sh")
#: per workdir: the submission record, its lock and the failure markers (see site.py)
RECORD_DIR = ".batchsite"
#: under remote_root: credential files the jobs use (mode 0600 in a 0700 directory, see site.py)
CREDENTIALS_DIR = f"{RECORD_DIR}/credentials"
#: the one variable through which jobs find the site's copy of the X509 proxy
X509_PROXY_ENV = "X509_USER_PROXY"


def q(s: str) -> str:
    return shlex.quote(s)


def with_x509_proxy(spec: RoundSpec, remote_path: str) -> RoundSpec:
    """The spec whose jobs get ``X509_USER_PROXY=<remote_path>`` (the site's 0600 copy).

    Environment passthrough is explicit, never blanket: this one variable is added to the
    round's env, which every backend's unit and fan-in scripts export by name after the
    site's env_script (so a stale X509_USER_PROXY set there cannot win)."""
    own = spec.env.get(X509_PROXY_ENV)
    if own is not None and own != remote_path:
        raise ValueError(
            f"the round sets env {X509_PROXY_ENV}={own!r}, but the site connection's x509_proxy extra "
            f"manages it ({remote_path}); remove {X509_PROXY_ENV} from the round's env")
    return spec.model_copy(update={"env": {**spec.env, X509_PROXY_ENV: remote_path}})


def _prologue(spec: RoundSpec) -> list[str]:
    lines = [f"STATUS_DIR={q(spec.workdir + '/' + STATUS_DIR)}", 'mkdir -p "$STATUS_DIR"']
    if spec.env_script:
        lines.append(f". {q(spec.env_script)}")
    # explicit passthrough: only these names (values are paths and settings, never secrets:
    # a credential travels as a 0600 file whose path is exported, e.g. X509_USER_PROXY)
    for k, v in sorted(spec.env.items()):
        lines.append(f"export {k}={q(v)}")
    lines.append(f"cd {q(spec.cwd or spec.workdir)} || exit 96")
    return lines


def _retry_loop(call: str, name_expr: str, retries: int) -> list[str]:
    return [
        "attempt=0",
        "while :; do",
        f"  ( {call} ); rc=$?",
        '  [ "$rc" -eq 0 ] && break',
        f'  [ "$attempt" -ge {retries} ] && break',
        "  attempt=$((attempt + 1))",
        f'  echo "batchsite: {name_expr} exited $rc; retry $attempt of {retries}" >&2',
        "done",
    ]


def _epilogue(name_expr: str) -> list[str]:
    # temp name + rename: a reader never sees a half-written exit code
    return [
        f'tmp="$STATUS_DIR/.{name_expr}.exit.$$"',
        f'printf \'%s\\n\' "$rc" > "$tmp" && mv -f "$tmp" "$STATUS_DIR/{name_expr}.exit"',
        'exit "$rc"',
    ]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bash_word(arg: str) -> str:
    """One argv item as ONE bash word on ONE line: ``shlex.quote``, or ``$'...'`` (bash's
    ANSI-C quoting) when it holds a control character such as a line break."""
    if not _CONTROL.search(arg):
        return shlex.quote(arg)
    out = []
    for c in arg:
        if c in "\\'":
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "$'" + "".join(out) + "'"


def render_unit_table(spec: RoundSpec) -> str:
    """The round's unit table (``UNIT_TABLE``): ``<index> <argv as bash words>`` per unit."""
    return "".join(f"{u.index} {' '.join(bash_word(a) for a in u.argv)}\n"
                   for u in sorted(spec.units, key=lambda u: u.index))


def unit_table_path(spec: RoundSpec) -> str:
    return f"{spec.workdir}/{UNIT_TABLE}"


def render_unit_script(
    spec: RoundSpec, index_expr: str, header: Iterable[str] = (), *, retries: int | None = None
) -> str:
    """Bash script that runs work unit ``$IDX`` (``index_expr`` gives it, e.g.
    ``${SLURM_ARRAY_TASK_ID}``), retrying in place ``retries`` times (default spec.retries;
    HTCondor passes 0 because DAGMan's RETRY does it). Its size does not depend on the
    number of units: the command comes from the unit table (``render_unit_table``), which
    every backend ships beside it."""
    n = spec.retries if retries is None else retries
    lines = ["#!/bin/bash", *header, f"# batchsite round {spec.key}: {spec.label}"]
    lines.append(f"IDX={index_expr}")
    lines += _prologue(spec)
    lines.append("# bs_unit: unit_table.sh (batchsite.backends)")
    lines += [ln for ln in UNIT_LOOKUP.splitlines() if ln and not ln.startswith("#")]
    lines += _retry_loop(f'bs_unit {q(unit_table_path(spec))} "$IDX"', "unit $IDX", n)
    lines += _epilogue("$IDX")
    return "\n".join(lines) + "\n"


def render_fanin_script(spec: RoundSpec, header: Iterable[str] = (), *, retries: int | None = None) -> str:
    if not spec.fanin:
        raise ValueError("round has no fan-in step")
    own = spec.retries if spec.fanin_retries is None else spec.fanin_retries
    n = own if retries is None else retries
    lines = ["#!/bin/bash", *header, f"# batchsite round {spec.key}: {spec.label} (fan-in)"]
    lines += _prologue(spec)
    lines += _retry_loop(shlex.join(spec.fanin), "fan-in", n)
    lines += _epilogue(FANIN)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- sectioned status output

def section_header(section: str, key: str = "-") -> str:
    return f"echo {q(f'{SECTION} {section} {key}')}"


_SECTION_LINE = re.compile(rf"^{SECTION} ([^\n]*)$", re.M)


def split_sections(text: str) -> dict[tuple[str, str], str]:
    """``@@BATCHSITE <section> <key>`` lines split the output of one status command."""
    # one regex split (in C) instead of a Python step per line: a round of 10,000 units
    # prints tens of thousands of lines
    pieces = _SECTION_LINE.split(text)
    out: dict[tuple[str, str], list[str]] = {}
    for k in range(1, len(pieces) - 1, 2):
        parts = pieces[k].split()
        sect = (parts[0], parts[1] if len(parts) > 1 else "-") if parts else ("", "-")
        body = pieces[k + 1].removeprefix("\n").removesuffix("\n")
        out.setdefault(sect, []).append(body)
    return {k: "\n".join(v) for k, v in out.items()}


# ---------------------------------------------------------------- one command per section

#: ``bs_run <command...>``: the command's stdout streamed, then its stderr as ``!err`` lines
#: and ``!rc <exit code>`` (``run_helper.sh`` beside this module; its header says how)
RUN_HELPER = shellscripts.load("batchsite.backends", "run_helper.sh")


@dataclass
class RunSection:
    """A section written by ``bs_run``: stdout lines, ``!err`` lines, ``!rc``; ``!skipped``
    when the script decided not to run the command. ``present`` is False when the section
    is missing from the output altogether."""

    lines: list[str] = field(default_factory=list)
    err_lines: list[str] = field(default_factory=list)
    rc: int | None = None
    skipped: bool = False
    present: bool = True

    @property
    def ok(self) -> bool:
        return self.present and self.rc == 0

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def error_text(self) -> str:
        """The first line of the error (HTCondor's tools follow it with "Extra Info" prose)."""
        errs = [e.strip() for e in self.err_lines if e.strip()]
        if errs:
            return errs[0][:300]
        if not self.present:
            return "no output"
        if self.rc is None:
            return "the command did not finish"
        return f"exit code {self.rc}"


def parse_run_section(text: str | None) -> RunSection:
    """The text of one section (``split_sections(...).get(...)``; None: section missing)."""
    out = RunSection(present=text is not None)
    lines = (text or "").splitlines()
    if not any(line[:1] == "!" for line in lines[:-1]):  # the common case: stdout, then only "!rc"
        if lines and lines[-1][:1] == "!":
            lines, last = lines[:-1], lines[-1:]
        else:
            last = []
        out.lines = lines
        lines = last
    for line in lines:
        if line.startswith("!err "):
            out.err_lines.append(line[5:])
        elif line.startswith("!rc "):
            try:
                out.rc = int(line[4:].strip())
            except ValueError:
                out.rc = -1
        elif line.strip() == "!skipped":
            out.skipped = True
        else:
            out.lines.append(line)
    return out


# ---------------------------------------------------------------- re-attach (find) scripts

def render_history_sections(workdir: str) -> str:
    """Sections ``record <n>`` (each ``submitted.<n>`` kept by ``Site.resubmit``) and
    ``failed`` (every failed submission attempt: submit.sh's stderr and stdout)."""
    d = q(f"{workdir}/{RECORD_DIR}")
    return "\n".join([
        f"for f in {d}/submitted.*; do",
        f'  [ -f "$f" ] || continue; n=${{f##*/submitted.}}',
        '  case "$n" in ""|*[!0-9]*) continue ;; esac',
        f'  echo "{SECTION} record $n"; cat "$f"; echo',
        "done",
        section_header("failed"),
        f"[ -f {d}/failed.log ] && cat {d}/failed.log",
    ])


def earlier_submissions(text: str, parse_submit: Callable[[str], object]) -> list:
    """The ids (``parse_submit`` of each) of the records ``render_history_sections`` printed."""
    out = []
    for (name, _n), body in split_sections(text or "").items():
        if name != "record":
            continue
        try:
            out.append(parse_submit(body))
        except ValueError:
            continue
    return out


def failed_attempts(text: str) -> str:
    """What the failed submission attempts printed (``failed`` section), '' if none."""
    return split_sections(text or "").get(("failed", "-"), "")


def render_exit_files_section(subs: Sequence[Submission]) -> str:
    """Print ``<name> <rc>`` for every exit file of every round, one section per round."""
    parts = []
    for s in subs:
        d = q(f"{s.workdir}/{STATUS_DIR}")
        parts.append(section_header("exit", s.key))
        parts.append(
            # shell built-ins only: rounds of thousands of units must not fork per file
            f"for f in {d}/*.exit; do [ -f \"$f\" ] || continue; n=${{f##*/}}; "
            f"read -r rc < \"$f\"; printf '%s %s\\n' \"${{n%.exit}}\" \"$rc\"; done"
        )
    return "\n".join(parts)


def parse_exit_files(text: str) -> dict[str, int]:
    """``3 0`` / ``fanin 1`` lines -> {"3": 0, "fanin": 1}. Garbage lines are ignored."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def status_from_exit(rc: int) -> TaskStatus:
    return TaskStatus(
        state=JobState.DONE if rc == 0 else JobState.FAILED, native="exit-file", exit_code=rc
    )


def merge_observation(
    queue: TaskStatus | None, accounting: TaskStatus | None, exit_rc: int | None
) -> TaskStatus:
    """One state from three witnesses.

    * the live queue wins while the job is in it;
    * then accounting (sacct / scontrol / condor_history), corrected by the exit file when
      the two disagree (sacct has reported COMPLETED for jobs whose payload failed);
    * then the exit file alone;
    * no witness at all: VANISHED (the poller turns that into FAILED after a grace period).
    """
    if queue is not None and not queue.state.terminal and queue.state is not JobState.VANISHED:
        return queue
    if queue is not None and queue.state.terminal:
        accounting = accounting or queue
    if accounting is not None and accounting.state.terminal:
        if exit_rc is not None and accounting.state is JobState.DONE and exit_rc != 0:
            return TaskStatus(state=JobState.FAILED, native=accounting.native, exit_code=exit_rc,
                              reason="exit file disagrees with accounting")
        if accounting.exit_code is None and exit_rc is not None:
            return accounting.model_copy(update={"exit_code": exit_rc})
        return accounting
    if exit_rc is not None:
        return status_from_exit(exit_rc)
    if accounting is not None:
        return accounting
    return TaskStatus(state=JobState.VANISHED, native="absent", reason="not in queue, no exit file yet")
