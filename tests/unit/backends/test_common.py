"""The shared unit/fan-in scripts, run for real under bash, and the merge rule."""

import os
import subprocess

import pytest

from batchsite.backends.common import (
    merge_observation, parse_exit_files, render_fanin_script, render_unit_script, split_sections,
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


def test_unit_script_runs_the_indexed_command_and_writes_exit_file(tmp_path):
    s = spec(tmp_path)
    p = tmp_path / "unit.sh"
    p.write_text(render_unit_script(s, '"${SLURM_ARRAY_TASK_ID}"', ["#SBATCH --job-name=x"]))
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
    p = tmp_path / "unit.sh"
    p.write_text(render_unit_script(s, "0"))
    assert run(p).returncode == 4
    assert (tmp_path / "tries").read_text().count("x") == 3


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
