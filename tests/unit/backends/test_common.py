"""The shared unit/fan-in scripts, run for real under bash, and the merge rule."""

import json
import os
import subprocess
import time

import pytest

from batchsite.backends.common import (
    UNIT_TABLE, merge_observation, parse_exit_files, render_fanin_script, render_unit_script, render_unit_table,
    split_sections,
)
from batchsite.model import JobState, RoundSpec, TaskStatus, WorkUnit


def spec(tmp_path, **kw):
    base = dict(key="bs-test-1", label="t", workdir=str(tmp_path),
                units=[WorkUnit(index=0, argv=["sh", "-c", "echo zero > out0"]),
                       WorkUnit(index=1, argv=["sh", "-c", "exit 3"]),
                       WorkUnit(index=2, argv=["echo", "$(touch pwned)", "`touch pwned2`; touch pwned3"])],
                fanin=["sh", "-c", "ls out0 > fanin.txt"])
    base.update(kw)
    return RoundSpec(**base)


def run(script_path, idx=None, cwd=None):
    env = dict(os.environ)
    if idx is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(idx)
    return subprocess.run(["bash", str(script_path)], env=env, cwd=cwd, capture_output=True, text=True)


def write_unit(tmp_path, s, index_expr, header=()):
    """unit.sh and the unit table it reads, as every backend ships them in the workdir."""
    (tmp_path / UNIT_TABLE).write_text(render_unit_table(s))
    p = tmp_path / "unit.sh"
    p.write_text(render_unit_script(s, index_expr, header))
    return p


def test_unit_script_runs_the_indexed_command_and_writes_exit_file(tmp_path):
    s = spec(tmp_path)
    p = write_unit(tmp_path, s, '"${SLURM_ARRAY_TASK_ID}"', ["#SBATCH --job-name=x"])
    assert run(p, 0).returncode == 0
    assert (tmp_path / "out0").read_text() == "zero\n"
    assert (tmp_path / "status" / "0.exit").read_text() == "0\n"
    assert run(p, 1).returncode == 3
    assert (tmp_path / "status" / "1.exit").read_text() == "3\n"
    assert run(p, 7).returncode == 97  # no such unit
    # hostile argv is data, never executed
    r = run(p, 2)
    assert r.returncode == 0
    assert not any((tmp_path / n).exists() for n in ("pwned", "pwned2", "pwned3"))
    assert not list((tmp_path / "status").glob(".*"))  # no temp files left behind


def test_in_job_retries(tmp_path):
    s = spec(tmp_path, retries=2, units=[WorkUnit(index=0, argv=["sh", "-c", "echo x >> tries; exit 4"])])
    p = write_unit(tmp_path, s, "0")
    assert run(p).returncode == 4
    assert (tmp_path / "tries").read_text().count("x") == 3


def test_unit_table_keeps_every_argv_item_one_word_on_one_line(tmp_path):
    """Line breaks, tabs, quotes, backslashes and $'...' look-alikes reach the command byte
    for byte: the table quotes them as bash words that never span two lines."""
    odd = ["a\nb", "tab\there", "it's", "back\\slash", "$'x'", "cr\rlf", "", "  spaces  ", "\x7f", "*"]
    s = spec(tmp_path, units=[WorkUnit(index=5, argv=["python3", "-c",
                                                      "import sys, json; print(json.dumps(sys.argv[1:]))", *odd])])
    table = render_unit_table(s)
    assert table.count("\n") == 1 and table.startswith("5 ")
    p = write_unit(tmp_path, s, '"${SLURM_ARRAY_TASK_ID}"')
    r = run(p, 5, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = r.stdout.strip().splitlines()[-1]
    assert json.loads(log) == odd


def test_unit_script_size_and_start_up_do_not_grow_with_the_number_of_units(tmp_path):
    """10,000 units: unit.sh is as large as for 1, and unit 9,999 starts as fast as unit 0
    of a 1-unit round (the old N-branch `case` took ~0.2 s CPU here)."""
    small = spec(tmp_path, units=[WorkUnit(index=0, argv=["true"])])
    big = spec(tmp_path, units=[WorkUnit(index=i, argv=["true", f"--input=/data/file_{i:06d}.root"])
                                for i in range(10_000)])
    assert render_unit_script(big, "0") == render_unit_script(small, "0")
    p = write_unit(tmp_path, big, '"${SLURM_ARRAY_TASK_ID}"')
    t0 = time.perf_counter()
    for _ in range(5):
        assert run(p, 9_999).returncode == 0
    per_unit = (time.perf_counter() - t0) / 5
    assert (tmp_path / "status" / "9999.exit").read_text() == "0\n"
    assert per_unit < 0.1, per_unit


def test_fanin_script(tmp_path):
    s = spec(tmp_path)
    (tmp_path / "out0").write_text("x")
    p = tmp_path / "fanin.sh"
    p.write_text(render_fanin_script(s))
    assert run(p).returncode == 0
    assert (tmp_path / "status" / "fanin.exit").read_text() == "0\n"
    with pytest.raises(ValueError):
        render_fanin_script(spec(tmp_path, fanin=None))


def test_sections_and_exit_files():
    text = "junk\n@@BATCHSITE exit k1\n0 0\n1 3\nfanin 1\nbad line here\n@@BATCHSITE exit k2\n"
    sec = split_sections(text)
    assert parse_exit_files(sec[("exit", "k1")]) == {"0": 0, "1": 3, "fanin": 1}
    assert sec[("exit", "k2")] == ""


def test_merge_rule():
    running = TaskStatus(state=JobState.RUNNING, native="RUNNING")
    done = TaskStatus(state=JobState.DONE, native="COMPLETED", exit_code=0)
    assert merge_observation(running, None, None) is running
    # accounting says COMPLETED, the payload's exit file says 2: failed
    m = merge_observation(None, done, 2)
    assert m.state is JobState.FAILED and m.exit_code == 2
    assert merge_observation(None, None, 0).state is JobState.DONE
    assert merge_observation(None, None, 1).state is JobState.FAILED
    # no witness at all: vanished, never done
    assert merge_observation(None, None, None).state is JobState.VANISHED


# ---------------------------------------------------------------------------- bs_run

def _bs_run(tmp_path, command: str, shell: str = "sh") -> subprocess.CompletedProcess:
    from batchsite.backends.common import RUN_HELPER

    script = RUN_HELPER + f"\necho '@@BATCHSITE t -'\nbs_run {command}\necho \"after $? $bs_rc\"\n"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_run_helper_records_stdout_stderr_and_exit_code(tmp_path, shell):
    from batchsite.backends.common import parse_run_section

    p = _bs_run(tmp_path, "sh -c 'echo out1; printf out2; echo err1 >&2; printf err2 >&2; exit 3'", shell)
    assert p.returncode == 0 and p.stderr == ""
    # stdout without a final newline still ends its line; stderr after it, then the exit code
    assert p.stdout.splitlines() == ["@@BATCHSITE t -", "out1", "out2", "!err err1", "!err err2", "!rc 3", "after 3 3"]
    sec = parse_run_section(split_sections(p.stdout)[("t", "-")])
    assert (sec.lines, sec.err_lines, sec.rc, sec.ok, sec.present) == (["out1", "out2", "after 3 3"], ["err1", "err2"], 3, False, True)
    assert sec.error_text() == "err1"
    assert list(tmp_path.iterdir()) == []  # no temp files


def test_run_helper_empty_and_missing_command(tmp_path):
    p = _bs_run(tmp_path, "true")
    assert p.stdout.splitlines() == ["@@BATCHSITE t -", "!rc 0", "after 0 0"]
    p = _bs_run(tmp_path, "no-such-command-batchsite")
    lines = p.stdout.splitlines()
    assert lines[1].startswith("!err ") and "not found" in lines[1] and lines[2] == "!rc 127"


def test_run_helper_streams_stdout(tmp_path):
    """A big output (condor_q -json of a large DAG) reaches the reader while the command
    still runs: it is passed on through a pipe buffer, never held whole."""
    from batchsite.backends.common import RUN_HELPER

    script = RUN_HELPER + "\nbs_run sh -c 'yes 0123456789abcdef | head -c 1000000; echo; sleep 3; echo second'\n"
    t0 = time.monotonic()
    p = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
    got = 0
    while got < 900_000:
        chunk = p.stdout.read1(65536)
        assert chunk, "output ended early"
        got += len(chunk)
    assert time.monotonic() - t0 < 2.5
    assert p.stdout.read().decode().splitlines()[-2:] == ["second", "!rc 0"]
    p.wait()


def test_parse_run_section_skipped_and_missing():
    from batchsite.backends.common import parse_run_section

    s = parse_run_section("!skipped")
    assert s.skipped and s.rc is None and not s.ok
    s = parse_run_section(None)
    assert not s.present and s.error_text() == "no output"
    assert parse_run_section("x\n!rc zz").rc == -1
    assert parse_run_section("!rc 0").error_text() == "exit code 0"
    assert parse_run_section("x").error_text() == "the command did not finish"


def test_history_sections(tmp_path):
    from batchsite.backends.common import earlier_submissions, failed_attempts, render_history_sections

    meta = tmp_path / ".batchsite"
    meta.mkdir()
    (meta / "submitted.1").write_text("h\n1\narray=5\n")
    (meta / "submitted.2").write_text("h\n2\narray=9 fanin=10\n")
    (meta / "submitted.tmp.123").write_text("h\n3\narray=77\n")  # a record being written
    (meta / "failed.log").write_text("submit.sh exited 2 at 3\ncancelling array 11\n")
    p = subprocess.run(["sh", "-c", render_history_sections(str(tmp_path))], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == ""
    ids = earlier_submissions(p.stdout, lambda t: t.strip().splitlines()[-1])
    assert sorted(ids) == ["array=5", "array=9 fanin=10"]
    assert "cancelling array 11" in failed_attempts(p.stdout)
    empty = subprocess.run(["sh", "-c", render_history_sections(str(tmp_path / "none"))], capture_output=True, text=True)
    assert empty.stdout == "@@BATCHSITE failed -\n" and earlier_submissions(empty.stdout, str) == []
