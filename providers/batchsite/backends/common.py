"""What every backend shares, written once.

* the unit script (one bash script for every work unit of a round, indexed by the
  scheduler's array index or a DAG VARS value) and the fan-in script; both write an
  exit-code file ``status/<index>.exit`` (or ``status/fanin.exit``) by temp name + rename;
* the sectioned status output: one remote command prints several sections
  (``@@BATCHSITE <section> <key>``), each parsed by its own pure function;
* ``merge_observation``: the rule that turns queue + accounting + exit file into one state.
  A unit that left the queue without an exit file or an accounting record is VANISHED,
  never DONE.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from batchsite.model import JobState, RoundSpec, Submission, TaskStatus

STATUS_DIR = "status"
FANIN = "fanin"
SECTION = "@@BATCHSITE"
#: exit code the unit script uses when it is asked for an index it does not have
NO_SUCH_UNIT = 97


def q(s: str) -> str:
    return shlex.quote(s)


def _prologue(spec: RoundSpec) -> list[str]:
    lines = [f"STATUS_DIR={q(spec.workdir + '/' + STATUS_DIR)}", 'mkdir -p "$STATUS_DIR"']
    if spec.env_script:
        lines.append(f". {q(spec.env_script)}")
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


def render_unit_script(
    spec: RoundSpec, index_expr: str, header: Iterable[str] = (), *, retries: int | None = None
) -> str:
    """Bash script that runs work unit ``$IDX`` (``index_expr`` gives it, e.g.
    ``${SLURM_ARRAY_TASK_ID}``), retrying in place ``retries`` times (default spec.retries;
    HTCondor passes 0 because DAGMan's RETRY does it)."""
    n = spec.retries if retries is None else retries
    lines = ["#!/bin/bash", *header, f"# batchsite round {spec.key}: {spec.label}"]
    lines.append(f"IDX={index_expr}")
    lines += _prologue(spec)
    lines.append("run_unit() {")
    lines.append('  case "$1" in')
    for u in sorted(spec.units, key=lambda u: u.index):
        lines.append(f"    {u.index}) {shlex.join(u.argv)} ;;")
    lines.append(f'    *) echo "batchsite: round {spec.key} has no work unit $1" >&2; return {NO_SUCH_UNIT} ;;')
    lines.append("  esac")
    lines.append("}")
    lines += _retry_loop('run_unit "$IDX"', "unit $IDX", n)
    lines += _epilogue("$IDX")
    return "\n".join(lines) + "\n"


def render_fanin_script(spec: RoundSpec, header: Iterable[str] = (), *, retries: int | None = None) -> str:
    if not spec.fanin:
        raise ValueError("round has no fan-in step")
    n = spec.retries if retries is None else retries
    lines = ["#!/bin/bash", *header, f"# batchsite round {spec.key}: {spec.label} (fan-in)"]
    lines += _prologue(spec)
    lines += _retry_loop(shlex.join(spec.fanin), "fan-in", n)
    lines += _epilogue(FANIN)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- sectioned status output

def section_header(section: str, key: str = "-") -> str:
    return f"echo {q(f'{SECTION} {section} {key}')}"


def split_sections(text: str) -> dict[tuple[str, str], str]:
    """``@@BATCHSITE <section> <key>`` lines split the output of one status command."""
    out: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(SECTION + " "):
            parts = line.split()
            sect = (parts[1], parts[2] if len(parts) > 2 else "-")
            current = out.setdefault(sect, [])
            continue
        if current is not None:
            current.append(line)
    return {k: "\n".join(v) for k, v in out.items()}


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
