"""Slurm backend: a round is one job array (``--array``) plus an optional ``afterok`` fan-in job.

Everything here is pure text in, text out; ``SlurmBackend`` only binds the functions to the
``Backend`` ABC. This file renders (sbatch headers, ``submit.sh`` from ``slurm_submit.sh``
beside it, the status / find / cancel scripts); ``slurm_parse.py`` reads what the real
Slurm 22.05 prints (the fixtures it is tested against are in ``tests/data/slurm/``; the
README there says how each file was captured).

Choices, each checked against a real slurmctld (see the fixtures):

* the job name is the round key (``--job-name``), for the array AND the fan-in, so a round
  can be found again by name when its submission record is lost;
* log paths are relative (``logs/%x_%A_%a.out``): sbatch runs in the workdir, and a relative
  path needs no quoting and no ``%`` escaping whatever the workdir is called;
* ``--open-mode=append``: a requeued task (node failure, preemption) appends to its log
  instead of truncating the evidence of the first attempt;
* no ``--kill-on-invalid-dep``: a fan-in whose parent failed stays PENDING with
  ``DependencyNeverSatisfied``; we report that reason and ``RoundStatus.finished`` sees it;
* status: ONE script, one ``squeue`` for all job ids, then ``sacct -P`` (accounting) or
  ``scontrol -o show job`` per id (no accounting, or sacct failing at run time), then the
  exit files. Every command's stderr and exit code are captured into its section, so one
  bad id or a down daemon never hides the rest, and a down controller is never read as
  "the jobs vanished".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from batchsite import shellscripts
from batchsite.backends import common, slurm_parse
from batchsite.backends.base import Backend, RenderedRound, SubmitIds, register
from batchsite.backends.slurm_parse import job_ids
from batchsite.model import SAFE_NAME, Resources, RoundSpec, RoundStatus, Submission

q = common.q

UNIT_SCRIPT = "unit.sh"
FANIN_SCRIPT = "fanin.sh"
LOG_DIR = "logs"
#: submit.sh of every round (its header says what it does); rendered with ``fanin`` set
SUBMIT_SCRIPT = shellscripts.load("batchsite.backends", "slurm_submit.sh")


# ---------------------------------------------------------------------------- arrays

def compact_indices(indices: Iterable[int]) -> str:
    """[0..31] -> "0-31"; [3, 7, 9, 10, 11, 12] -> "3,7,9-12"."""
    idx = sorted(set(indices))
    if not idx:
        raise ValueError("no array indices")
    parts: list[str] = []
    start = prev = idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def array_spec(indices: Iterable[int], throttle: int | None = None) -> str:
    s = compact_indices(indices)
    return f"{s}%{throttle}" if throttle else s


# ---------------------------------------------------------------------------- rendering

def format_time(minutes: int) -> str:
    """Slurm --time: "45" (minutes) below an hour, else "D-HH:MM:SS"."""
    if minutes < 60:
        return str(minutes)
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00"


def _resource_lines(r: Resources) -> list[str]:
    lines = []
    if r.time_minutes:
        lines.append(f"--time={format_time(r.time_minutes)}")
    if r.mem_mb:
        lines.append(f"--mem={r.mem_mb}M")
    lines.append(f"--cpus-per-task={r.cpus}")
    if r.disk_mb:
        lines.append(f"--tmp={r.disk_mb}M")
    if r.partition:
        lines.append(f"--partition={r.partition}")
    if r.account:
        lines.append(f"--account={r.account}")
    return lines


def sbatch_header(spec: RoundSpec, *, fanin: bool = False) -> list[str]:
    opts = [f"--job-name={spec.key}"]
    if fanin:
        opts += _resource_lines(spec.fanin_resources or spec.resources)
        opts += [f"--output={LOG_DIR}/%x_fanin_%j.out", f"--error={LOG_DIR}/%x_fanin_%j.err"]
    else:
        opts.append(f"--array={array_spec(spec.indices, spec.throttle)}")
        opts += _resource_lines(spec.resources)
        opts += [f"--output={LOG_DIR}/%x_%A_%a.out", f"--error={LOG_DIR}/%x_%A_%a.err"]
    opts.append("--open-mode=append")
    return [f"#SBATCH {o}" for o in opts]


def render_submit_script(spec: RoundSpec) -> str:
    """``slurm_submit.sh`` with ``fanin`` set: POSIX sh, run with cwd = workdir; prints
    ``array=<id>`` or ``array=<id> fanin=<id>``. If the fan-in cannot be submitted the
    array is cancelled before exiting non-zero."""
    return shellscripts.with_values(SUBMIT_SCRIPT, fanin=1 if spec.fanin else 0)


def render_round(spec: RoundSpec) -> RenderedRound:
    files = {
        UNIT_SCRIPT: common.render_unit_script(
            spec, '"${SLURM_ARRAY_TASK_ID}"', header=sbatch_header(spec)
        )
    }
    if spec.fanin:
        files[FANIN_SCRIPT] = common.render_fanin_script(spec, header=sbatch_header(spec, fanin=True))
    return RenderedRound(
        files=files, submit_script=render_submit_script(spec), executable=frozenset(files)
    )


# ---------------------------------------------------------------------------- status script

#: before every script that prints job ids: the full array task list, never cut at 64 bytes
_ENV = "export SLURM_BITSTR_LEN=0"

#: after the squeue call: did it reach slurmctld? (exit 0, or only "Invalid job id" for a
#: single purged id). When it did not, scontrol is skipped: each call would wait another
#: MessageTimeout (9-18 s measured) for the same answer.
_CTLD_OK = r"""bs_sq_rc=$bs_rc; bs_sq_err=$bs_err
bs_ctld_ok() {
  [ "$bs_sq_rc" -eq 0 ] && return 0
  case "$bs_sq_err" in *"Invalid job id specified"*) return 0 ;; esac
  return 1
}"""
SKIPPED = "skipped: squeue could not reach slurmctld"

SQUEUE_FORMAT = "%i|%T|%r|%j"
SACCT_FIELDS = "JobID,State,ExitCode,Reason,JobName"


def squeue_command(ids: Sequence[str]) -> str:
    # --jobs=<one id> makes squeue ask slurmctld for that job only and fail with
    # "Invalid job id specified" once it is purged; with several ids it loads all jobs and
    # filters locally (see tests/data/slurm/README.md)
    return f"squeue -h -a -t all --jobs={','.join(ids)} -o {q(SQUEUE_FORMAT)}"


def sacct_command(ids: Sequence[str]) -> str:
    return f"sacct -n -P -X --jobs={','.join(ids)} -o {SACCT_FIELDS}"


def scontrol_command(job_id: str) -> str:
    return f"scontrol -o show job {job_id}"


def render_status_script(subs: Sequence[Submission], accounting: bool | None = None) -> str:
    """One script for every submission given.

    ``accounting``: True/None -> ``sacct`` (falling back to ``scontrol`` per job id when
    sacct fails at run time, e.g. slurmdbd down); False -> ``scontrol`` only.
    """
    if not subs:
        return "true\n"
    ids = job_ids(subs)
    lines = [common.RUN_HELPER, _ENV, common.section_header("squeue"), f"bs_run {squeue_command(ids)}", _CTLD_OK]
    scontrol = ["if bs_ctld_ok; then"]
    for i in ids:
        scontrol += [f"  {common.section_header('scontrol', i)}", f"  bs_run {scontrol_command(i)}"]
    scontrol += [
        "else",
        f"  {common.section_header('scontrol', '-')}",
        f"  echo {q('!err ' + SKIPPED)}; echo '!rc 1'",
        "fi",
    ]
    if accounting is False:
        lines += scontrol
    else:
        lines.append(common.section_header("sacct"))
        lines.append(f"if ! bs_run {sacct_command(ids)}; then")
        lines += ["  " + ln for ln in scontrol]
        lines.append("fi")
    lines.append(common.render_exit_files_section(subs))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- probe / cancel / find (re-attach)

def probe_script() -> str:
    """Is accounting (sacct) usable? Prints a section the same way status scripts do."""
    return "\n".join([
        common.RUN_HELPER,
        common.section_header("version"),
        "bs_run squeue --version",
        common.section_header("sacct"),
        "bs_run sacct -n -P -X -S now -E now -o JobID",
        "exit 0",
    ]) + "\n"


def render_cancel_script(subs: Sequence[Submission]) -> str:
    """``scancel`` every job of every round in one command. Exit 0 even when some jobs had
    finished already (scancel complains about those and still cancels the rest)."""
    ids = job_ids(subs)
    if not ids:
        return "true\n"
    return f"scancel {' '.join(ids)} 2>&1\necho \"scancel exit $?\"\nexit 0\n"


def render_release_script(subs: Sequence[Submission]) -> str:
    """``scontrol release`` of held (JobHeldUser/JobHeldAdmin) jobs of these rounds."""
    ids = job_ids(subs)
    if not ids:
        return "true\n"
    return f"scontrol release {','.join(ids)} 2>&1\necho \"scontrol release exit $?\"\nexit 0\n"


def render_find_by_name_script(key: str, accounting: bool | None = None, workdir: str | None = None) -> str:
    """The jobs named ``key`` (array and fan-in carry the round key as ``--job-name``):
    ``squeue -t all`` (the live queue and recently ended jobs) and, with accounting,
    ``sacct`` over 30 days. With ``workdir``: also the log file names of the round (a job
    that ran left ``logs/<key>_<array id>_<index>.out`` even when slurmctld forgot it) and
    the earlier records and failed attempts (``common.render_history_sections``)."""
    if not SAFE_NAME.match(key):
        raise ValueError(f"key={key!r} is not a safe job name")
    lines = [
        common.RUN_HELPER,
        _ENV,
        common.section_header("squeue"),
        f"bs_run squeue -h -a -t all --name={key} -o {q(SQUEUE_FORMAT)}",
    ]
    if accounting is not False:
        lines += [
            common.section_header("sacct"),
            f"bs_run sacct -n -P -X --name={key} --starttime=now-30days -o {SACCT_FIELDS}",
        ]
    if workdir is not None:
        # one name per array (the glob is sorted: an array's files are contiguous), every fan-in
        logs = q(f"{workdir}/{LOG_DIR}")
        lines += [
            common.section_header("logs"),
            f"last=; for f in {logs}/{key}_*.out; do",
            f'  [ -f "$f" ] || continue; n=${{f##*/{key}_}}; a=${{n%%_*}}',
            '  [ "$a" != fanin ] && [ "$a" = "$last" ] && continue',
            '  last=$a; echo "$n"',
            "done",
            common.render_history_sections(workdir),
        ]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def format_submit(ids: SubmitIds) -> str:
    """What submit.sh prints for these ids (``parse_submit`` reads it back)."""
    return f"array={ids.fanout_id}" + (f" fanin={ids.fanin_id}" if ids.fanin_id else "")


# ---------------------------------------------------------------------------- the Backend

@register
class SlurmBackend(Backend):
    name: ClassVar[str] = "slurm"

    def __init__(self) -> None:
        self.accounting: bool | None = None  # learnt by apply_probe

    def render_round(self, spec: RoundSpec) -> RenderedRound:
        return render_round(spec)

    def parse_submit(self, stdout: str) -> SubmitIds:
        return slurm_parse.parse_submit(stdout)

    def render_status_script(self, subs: Sequence[Submission]) -> str:
        return render_status_script(subs, self.accounting)

    def parse_status(self, text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
        return slurm_parse.parse_status(text, subs)

    def render_cancel_script(self, subs: Sequence[Submission]) -> str:
        return render_cancel_script(subs)

    def render_release_script(self, subs: Sequence[Submission]) -> str:
        return render_release_script(subs)

    def probe_script(self) -> str:
        return probe_script()

    def apply_probe(self, text: str) -> None:
        self.accounting = slurm_parse.parse_probe(text)

    def render_find_script(self, spec: RoundSpec) -> str:
        return render_find_by_name_script(spec.key, self.accounting, spec.workdir)

    def parse_find(self, text: str, spec: RoundSpec) -> SubmitIds | None:
        return slurm_parse.parse_find(text, spec)

    def format_submit(self, ids: SubmitIds) -> str:
        return format_submit(ids)

    def diagnose(self, text: str) -> str | None:
        return slurm_parse.diagnose(text)
