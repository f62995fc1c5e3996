"""A round that ends with failures shows the last lines of its failed units' stderr in the
task log, read in ONE remote command (``roundinfo.sh tails``), capped in units, lines and bytes.

Render/parse are pure; the script runs on its own over real files; the operator runs real
rounds on the ``local`` site (temporary root) and its logged output is read back.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import structlog
from airflow.sdk.exceptions import AirflowException

from batchsite.model import JobState, RoundStatus, Submission, TaskStatus
from batchsite.operators.round import BatchRoundOperator
from batchsite.roundinfo import (
    SCRIPT, TAIL_BYTES, failed_logs, parse_tails, tails_args, tails_text,
)
from tests.integration.test_decision_paths import drive
from tests.unit.test_operator_round import context

KEY = "bs-0123456789abcdef"


def _sub(workdir: str, scheduler: str = "local") -> Submission:
    return Submission(key=KEY, scheduler=scheduler, workdir=workdir, indices=[0, 1, 2], fanout_id="1")


def _failed(code: int) -> TaskStatus:
    return TaskStatus(state=JobState.FAILED, native="FAILED", exit_code=code)


DONE = TaskStatus(state=JobState.DONE, exit_code=0)


# ----------------------------------------------------------------------------- render / parse

@pytest.mark.parametrize(("scheduler", "unit_glob", "fanin_glob"), [
    ("slurm", f"{KEY}_*_3.err", f"{KEY}_fanin_*.err"),
    ("htcondor", f"{KEY}_3_*.err", f"{KEY}_fanin_*.err"),
    ("local", f"{KEY}_3.err", f"{KEY}_fanin.err"),
])
def test_one_command_names_every_failed_log(scheduler, unit_glob, fanin_glob):
    args = tails_args(scheduler, _sub("/w/r", scheduler), ["3", "fanin"], lines=20, max_bytes=100)
    assert args == ["tails", "/w/r/logs", "20", "100", "3", unit_glob, "fanin", fanin_glob]


def test_bad_limits_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="lines=0"):
        tails_args("local", _sub("/w"), ["0"], lines=0, max_bytes=10)
    with pytest.raises(ValueError, match="max_bytes=0"):
        tails_args("local", _sub("/w"), ["0"], lines=5, max_bytes=0)


def test_parse_splits_the_sections_and_notes_a_cut_tail():
    out = ("@@BATCHSITE tail 3\nline a\nline b\n@@BATCHSITE tail 7\n"
           "@@BATCHSITE cut fanin\n5000\n@@BATCHSITE tail fanin\nxxxx\n")
    tails = parse_tails(out, ["3", "7", "fanin", "9"])
    assert tails == {"3": "line a\nline b", "7": "", "9": "",
                     "fanin": "[these last lines hold 5000 bytes: only their end is shown]\nxxxx"}


def test_failed_logs_caps_the_units_and_skips_a_cancelled_fanin():
    units = {i: (_failed(i) if i % 2 else DONE) for i in range(20)}
    status = RoundStatus(key=KEY, units=units, fanin=TaskStatus(state=JobState.FAILED, native="CANCELLED"))
    logs = failed_logs(status, shown=3)
    assert logs == {"1": "unit 1: FAILED exit 1", "3": "unit 3: FAILED exit 3", "5": "unit 5: FAILED exit 5"}
    ran = status.model_copy(update={"fanin": _failed(2)})
    assert failed_logs(ran, shown=1, fanin_log="20") == {"1": "unit 1: FAILED exit 1", "20": "fan-in: FAILED exit 2"}
    text = tails_text("rg", failed_logs(ran, shown=1), {"1": "boom\n", "fanin": ""}, units_shown=1, failed=10)
    assert text.splitlines() == ["rg: stderr of 1 of 10 failed unit(s) and of the fan-in, last lines:",
                                 "--- unit 1: FAILED exit 1", "    boom", "--- fan-in: FAILED exit 2",
                                 "    (no stderr)"]


def test_the_script_reads_the_newest_attempt_capped_in_lines_and_bytes(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    old, new = logs / f"{KEY}_11_4.err", logs / f"{KEY}_12_4.err"  # Slurm names: <key>_<array job>_<index>.err
    old.write_text("first attempt\n")
    new.write_text("".join(f"line {n}\n" for n in range(100)))
    subprocess.run(["touch", "-d", "1 hour ago", str(old)], check=True)
    (logs / f"{KEY}_12_5.err").write_text("y" * 5000 + "\n")
    args = tails_args("slurm", _sub(str(tmp_path), "slurm"), ["4", "5", "6"], lines=3, max_bytes=TAIL_BYTES)
    r = subprocess.run(["sh", "-c", SCRIPT, "batchsite", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    tails = parse_tails(r.stdout, ["4", "5", "6"])
    assert tails["4"] == "line 97\nline 98\nline 99"
    # the byte cap includes the line's newline, which the section split drops
    assert tails["5"] == "[these last lines hold 5001 bytes: only their end is shown]\n" + "y" * (TAIL_BYTES - 1)
    assert tails["6"] == ""


# ----------------------------------------------------------------------------- the task log

def _units(failing: dict[int, int]) -> list[list[str]]:
    """Units 0..n-1; those in ``failing`` write two lines to stderr and exit with the given code."""
    n = max(failing) + 2
    return [["sh", "-c", f"echo 'unit {i} starts' >&2; echo 'KNOWN-{i}: no such calibration file' >&2; exit {code}"]
            if (code := failing.get(i)) else ["true"] for i in range(n)]


def test_a_failed_rounds_task_log_shows_each_failed_units_stderr(local_root):
    failing = {1: 3, 4: 5}
    op = BatchRoundOperator(task_id="tails", site_conn_id="local", units=_units(failing), fanin=["true"])
    with structlog.testing.capture_logs() as logged, pytest.raises(AirflowException, match="2 of 6 units failed"):
        drive(op, context(task_id="tails"))
    errors = "\n".join(e["event"] for e in logged if e["log_level"] == "error")
    assert "tails: stderr of 2 of 2 failed unit(s), last lines:" in errors, errors
    for i, code in failing.items():
        assert f"--- unit {i}: failed exit {code}\n    unit {i} starts\n    KNOWN-{i}: no such calibration file" \
            in errors, errors
    assert "fan-in" not in errors.split("last lines:")[1]  # never ran: nothing to show


def test_at_most_five_failed_units_are_shown(local_root):
    failing = {i: 2 for i in range(7)}
    op = BatchRoundOperator(task_id="many", site_conn_id="local", units=_units(failing), fail_on_failure=False,
                            rescue={"max_rescues": 0})
    with structlog.testing.capture_logs() as logged:
        result, _ = drive(op, context(task_id="many"))
    assert result["decision"] == "abort"
    errors = "\n".join(e["event"] for e in logged if e["log_level"] == "error")
    assert "many: stderr of 5 of 7 failed unit(s)" in errors
    assert [i for i in failing if f"KNOWN-{i}:" in errors] == [0, 1, 2, 3, 4]


def test_the_failed_fanins_stderr_is_shown(local_root, tmp_path):
    fanin = f"echo 'merge: {shlex.quote(str(tmp_path))} is empty' >&2; exit 4"
    op = BatchRoundOperator(task_id="merge", site_conn_id="local", units=[["true"]] * 2, fanin=["sh", "-c", fanin],
                            fail_on_failure=False, rescue={"max_rescues": 0})
    with structlog.testing.capture_logs() as logged:
        result, _ = drive(op, context(task_id="merge"))
    assert not result["succeeded"]
    errors = "\n".join(e["event"] for e in logged if e["log_level"] == "error")
    assert "merge: stderr of 0 of 0 failed unit(s) and of the fan-in" in errors, errors
    assert f"--- fan-in: failed exit 4\n    merge: {tmp_path} is empty" in errors, errors
