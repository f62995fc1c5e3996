"""Slurm backend: a round is one or more job arrays plus an optional ``afterok`` fan-in job.

Everything here is pure text in, text out; ``SlurmBackend`` only binds the functions to the
``Backend`` ABC. This file renders (sbatch headers, ``submit.sh`` from ``slurm_submit.sh``
beside it, the status / find / cancel scripts); ``slurm_parse.py`` reads what the real
Slurm 22.05 prints (the fixtures it is tested against are in ``tests/data/slurm/``; the
README there says how each file was captured).

Choices, each checked against a real slurmctld (see the fixtures):

* the job name is the round key (``--job-name``), for every array AND the fan-in, so a
  round can be found again by name when its submission record is lost;
* a round larger than the site's ``MaxArraySize`` (default 1001: task ids 0..1000) or
  ``max_array_tasks`` is split into several arrays (``array_chunks``): chunk ``c`` runs the
  units whose index is in ``[c*W, (c+1)*W)`` as task ids ``index - c*W`` and gets its offset
  ``c*W`` as unit.sh's argument; the fan-in depends ``afterok`` on all of them. The limits
  come from ``scontrol show config`` at probe time (``SlurmLimits``); unit.sh stays far
  below ``max_script_size`` because the commands live in the unit table, not in the script;
  the record lists every array as ``<id>@<offset>`` (``array=123``: one array, offset 0);
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
from batchsite.backends.slurm_parse import SlurmLimits, job_ids
from batchsite.measure import RoundUsage
from batchsite.model import SAFE_NAME, Resources, RoundSpec, RoundStatus, Submission, index_ranges

q = common.q

UNIT_SCRIPT = "unit.sh"
FANIN_SCRIPT = "fanin.sh"
LOG_DIR = "logs"
#: ``<offset> <array spec>`` per array of the round, in submission order (slurm_submit.sh reads it)
ARRAYS_FILE = "arrays.txt"
#: submit.sh of every round (its header says what it does); rendered with ``fanin`` and ``serial`` set
SUBMIT_SCRIPT = shellscripts.load("batchsite.backends", "slurm_submit.sh")
#: the remote side of the measured-usage command (modes ``slurm``, ``local``)
USAGE_SCRIPT = shellscripts.load("batchsite.backends", "usage.sh")


# ---------------------------------------------------------------------------- arrays

def compact_indices(indices: Iterable[int]) -> str:
    """[0..31] -> "0-31"; [3, 7, 9, 10, 11, 12] -> "3,7,9-12" (Slurm's --array form)."""
    text = index_ranges(indices)
    if not text:
        raise ValueError("no array indices")
    return text


def array_spec(indices: Iterable[int], throttle: int | None = None) -> str:
    s = compact_indices(indices)
    return f"{s}%{throttle}" if throttle else s


def array_chunks(indices: Iterable[int], limits: SlurmLimits) -> list[tuple[int, list[int]]]:
    """The arrays a round is split into: ``(offset, task ids)`` in offset order; unit
    ``offset + task id``. Windows of ``limits.window`` indices, so every task id stays below
    ``MaxArraySize`` and no array has more than ``max_array_tasks`` tasks. A round whose
    indices all fit is one array at offset 0 (task id = unit index)."""
    w = limits.window
    chunks: dict[int, list[int]] = {}
    for i in sorted(set(indices)):
        chunks.setdefault(i // w * w, []).append(i)
    return [(off, [i - off for i in idx]) for off, idx in sorted(chunks.items())]


def render_arrays_file(spec: RoundSpec, limits: SlurmLimits) -> str:
    return "".join(f"{off} {array_spec(tasks, spec.throttle)}\n" for off, tasks in array_chunks(spec.indices, limits))


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
    if r.exclude_hosts:
        lines.append(f"--exclude={','.join(r.exclude_hosts)}")
    return lines


def sbatch_header(spec: RoundSpec, *, fanin: bool = False) -> list[str]:
    opts = [f"--job-name={spec.key}"]
    if fanin:
        opts += _resource_lines(spec.fanin_resources or spec.resources)
        opts += [f"--output={LOG_DIR}/%x_fanin_%j.out", f"--error={LOG_DIR}/%x_fanin_%j.err"]
    else:
        # --array is given per chunk on sbatch's command line (slurm_submit.sh, arrays.txt)
        opts += _resource_lines(spec.resources)
        opts += [f"--output={LOG_DIR}/%x_%A_%a.out", f"--error={LOG_DIR}/%x_%A_%a.err"]
    opts.append("--open-mode=append")
    return [f"#SBATCH {o}" for o in opts]


def render_submit_script(spec: RoundSpec) -> str:
    """``slurm_submit.sh`` with ``fanin`` and ``serial`` set: POSIX sh, run with cwd =
    workdir; one ``sbatch`` per line of ``arrays.txt``, then the fan-in ``afterok`` on all
    of them; prints ``array=<id>[@<offset>],... [fanin=<id>]``. If any sbatch fails, the
    arrays already submitted are cancelled before exiting non-zero. ``serial``: a throttled
    round of several arrays runs them one after the other (``afterany``), so at most
    ``throttle`` units run at once."""
    return shellscripts.with_values(SUBMIT_SCRIPT, fanin=1 if spec.fanin else 0, serial=1 if spec.throttle else 0)


#: IDX of a unit: the array task id plus the chunk's offset (unit.sh's first argument)
UNIT_INDEX = '"$((${SLURM_ARRAY_TASK_ID:?not a Slurm array task} + ${1:-0}))"'


def render_round(spec: RoundSpec, limits: SlurmLimits | None = None) -> RenderedRound:
    limits = limits or SlurmLimits()
    files = {UNIT_SCRIPT: common.render_unit_script(spec, UNIT_INDEX, header=sbatch_header(spec))}
    if spec.fanin:
        files[FANIN_SCRIPT] = common.render_fanin_script(spec, header=sbatch_header(spec, fanin=True))
    for name, text in files.items():
        if len(text.encode()) > limits.max_script_size:
            raise ValueError(
                f"{name} of round {spec.key} is {len(text.encode())} bytes, over the site's max_script_size "
                f"({limits.max_script_size}, SchedulerParameters): the round's env values are too large")
    scripts = frozenset(files)
    files[common.UNIT_TABLE] = common.render_unit_table(spec)
    files[ARRAYS_FILE] = render_arrays_file(spec, limits)
    return RenderedRound(files=files, submit_script=render_submit_script(spec), executable=scripts)


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


def usage_command(sub: Submission) -> list[str]:
    """ONE command (``usage.sh slurm``): ``sacct`` with steps of every job named after the
    round (every attempt's arrays and fan-ins) and the earlier submission records, which give
    the arrays' offsets (``slurm_parse.parse_usage`` reads it)."""
    if not SAFE_NAME.match(sub.key):
        raise ValueError(f"key={sub.key!r} is not a safe job name")
    return ["sh", "-c", USAGE_SCRIPT, "batchsite", "slurm", sub.key, sub.workdir, ",".join(slurm_parse.USAGE_FIELDS)]


# ---------------------------------------------------------------------------- probe / cancel / find (re-attach)

def probe_script() -> str:
    """Is accounting (sacct) usable, and the array limits (``scontrol show config``)?
    Prints sections the same way status scripts do."""
    return "\n".join([
        common.RUN_HELPER,
        common.section_header("version"),
        "bs_run squeue --version",
        common.section_header("config"),
        "bs_run scontrol show config",
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
    """What submit.sh prints for these ids (``parse_submit`` reads it back); ``fanout_id``
    is already the array list (``format_arrays``)."""
    return f"array={ids.fanout_id}" + (f" fanin={ids.fanin_id}" if ids.fanin_id else "")


# ---------------------------------------------------------------------------- the Backend

@register
class SlurmBackend(Backend):
    name: ClassVar[str] = "slurm"

    def __init__(self) -> None:
        self.accounting: bool | None = None  # learnt by apply_probe
        self.limits = SlurmLimits()  # Slurm's defaults until apply_probe reads the site's

    def render_round(self, spec: RoundSpec) -> RenderedRound:
        return render_round(spec, self.limits)

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
        self.limits = slurm_parse.parse_limits(text)

    def render_find_script(self, spec: RoundSpec) -> str:
        return render_find_by_name_script(spec.key, self.accounting, spec.workdir)

    def parse_find(self, text: str, spec: RoundSpec) -> SubmitIds | None:
        return slurm_parse.parse_find(text, spec, [off for off, _ in array_chunks(spec.indices, self.limits)])

    def format_submit(self, ids: SubmitIds) -> str:
        return format_submit(ids)

    def usage_command(self, sub: Submission) -> list[str] | None:
        return usage_command(sub) if self.accounting is not False else None

    def parse_usage(self, text: str, sub: Submission) -> RoundUsage:
        return slurm_parse.parse_usage(text, sub)

    def diagnose(self, text: str) -> str | None:
        return slurm_parse.diagnose(text)
