"""The Slurm backend: rendering, and parsing of REAL Slurm 22.05 output.

Every ``tests/data/slurm/*.txt`` fixture was captured on the real test site (see
``tests/data/slurm/README.md``); its ``#`` header says the command and the date. The
rendered shell (unit.sh, submit.sh, the status script) is RUN here too: unit.sh under bash
as Slurm would run it, submit.sh and the status script under sh with stand-in
``sbatch``/``squeue``/``sacct``/``scontrol``/``scancel`` on PATH, so the plumbing (job id
extraction, cancel on a failed fan-in, stderr capture, fallbacks) is checked without a site.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from batchsite.backends import common, slurm, slurm_parse
from batchsite.backends.base import get_backend
from batchsite.model import JobState, Resources, RoundSpec, Submission, WorkUnit

DATA = Path(__file__).resolve().parents[2] / "data" / "slurm"
R = "/home/bsite/slurm-fixtures"  # where the fixtures' rounds lived on the site


def fixture(name: str) -> str:
    """A fixture without its ``#`` header lines."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def sub(key: str, indices, fanout: str, fanin: str | None = None, workdir: str | None = None) -> Submission:
    return Submission(key=key, scheduler="slurm", workdir=workdir or f"{R}/{key}",
                      indices=list(indices), fanout_id=fanout, fanin_id=fanin)


# the rounds as they were submitted when the fixtures were captured
OK8 = sub("fx-ok8", range(8), "8", "9")
FAIL8 = sub("fx-fail8", range(8), "19", "20")
TIMEOUT = sub("fx-timeout", [0], "18")
HELD = sub("fx-held", range(0, 120, 3), "31")
CANCEL = sub("fx-cancel", range(4), "28", "29")
NOACCT = sub("fx-noacct", range(6), "56", "57")
LAUNCHFAIL = sub("fx-launchfail", [0], "65")


def states(rs) -> dict[int, tuple]:
    return {i: (t.state, t.native, t.exit_code) for i, t in rs.units.items()}


def spec(**kw) -> RoundSpec:
    base = dict(key="r1", label="round 1", workdir="/work/site/r1",
                units=[WorkUnit(index=i, argv=["echo", str(i)]) for i in range(4)])
    base.update(kw)
    return RoundSpec(**base)


# ---------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("indices, expected", [
    (range(32), "0-31"),
    ([3, 7, 9, 10, 11, 12], "3,7,9-12"),
    ([5], "5"),
    ([2, 1, 0, 2], "0-2"),
    ([0, 2, 4], "0,2,4"),
    ([0, 1, 3, 4, 6], "0-1,3-4,6"),
])
def test_compact_indices(indices, expected):
    assert slurm.compact_indices(indices) == expected


def test_array_spec_throttle():
    assert slurm.array_spec(range(32), 4) == "0-31%4"
    assert slurm.array_spec([3, 7, 9, 10, 11, 12], 2) == "3,7,9-12%2"
    assert slurm.array_spec([1, 2], None) == "1-2"
    with pytest.raises(ValueError):
        slurm.compact_indices([])


@pytest.mark.parametrize("expr, expected", [
    ("5-31%4", list(range(5, 32))),
    ("[1,3,5-7]", [1, 3, 5, 6, 7]),
    ("[4-7%2]", [4, 5, 6, 7]),
    ("0-117:3%4", list(range(0, 118, 3))),  # Slurm prints sparse lists in step form
    ("7", [7]),
    ("[1-2,4-5,8,10-11,13,16-17,19", [1, 2, 4, 5, 8, 10, 11, 13, 16, 17, 19]),  # truncated
])
def test_expand_indices(expr, expected):
    assert slurm_parse.expand_indices(expr) == expected


def test_split_job_id():
    assert slurm_parse.split_job_id("123_4") == ("123", [4])
    assert slurm_parse.split_job_id("123_[5-7%2]") == ("123", [5, 6, 7])
    assert slurm_parse.split_job_id("123") == ("123", None)
    assert slurm_parse.split_job_id("123+1") == ("123", None)
    assert slurm_parse.split_job_id("19_2.batch") is None
    assert slurm_parse.split_job_id("JobID") is None


def test_compact_then_slurm_form_round_trip():
    """Whatever we send in --array comes back through Slurm's own forms."""
    idx = [i for i in range(200) if i % 3 and i % 7]
    assert slurm_parse.expand_indices(slurm.array_spec(idx, 4)) == idx


# ---------------------------------------------------------------------------- states

ALL_STATES = [
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "COMPLETED", "FAILED", "TIMEOUT",
    "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
    "REQUEUED", "RESIZING", "REVOKED", "SUSPENDED", "STOPPED", "SPECIAL_EXIT", "SIGNALING",
    "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
]


def test_every_slurm_state_is_mapped():
    assert set(ALL_STATES) == set(slurm_parse.SLURM_STATES)
    assert set(slurm_parse.COMPACT_STATES.values()) == set(slurm_parse.SLURM_STATES)


@pytest.mark.parametrize("word, reason, code, expected", [
    ("PENDING", "Priority", "", (JobState.WAITING, None, "Priority")),
    ("PENDING", "JobHeldUser", "", (JobState.HELD, None, "JobHeldUser")),
    ("PENDING", "JobHeldAdmin", "", (JobState.HELD, None, "JobHeldAdmin")),
    ("PENDING", "DependencyNeverSatisfied", "", (JobState.WAITING, None, "DependencyNeverSatisfied")),
    ("CONFIGURING", "None", "", (JobState.WAITING, None, "")),
    ("RUNNING", "None", "0:0", (JobState.RUNNING, None, "")),
    ("COMPLETING", "None", "0:0", (JobState.RUNNING, None, "")),
    ("SUSPENDED", "None", "", (JobState.RUNNING, None, "")),
    ("COMPLETED", "JobArrayTaskLimit", "0:0", (JobState.DONE, 0, "")),  # stale reason dropped
    ("FAILED", "None", "3:0", (JobState.FAILED, 3, "")),
    ("FAILED", "NonZeroExitCode", "3:0", (JobState.FAILED, 3, "NonZeroExitCode")),
    ("FAILED", "None", "0:9", (JobState.FAILED, 137, "signal 9")),
    ("CANCELLED by 1001", "None", "0:0", (JobState.FAILED, None, "")),
    ("CANCELLED", "Resources", "0:15", (JobState.FAILED, 143, "signal 15")),
    ("OUT_OF_MEMORY", "None", "0:125", (JobState.FAILED, None, "out of memory: the job used more than its memory request")),
    ("NODE_FAIL", "None", "0:0", (JobState.FAILED, None, "")),
    ("PREEMPTED", "None", "0:0", (JobState.FAILED, None, "")),
    ("REQUEUED", "None", "", (JobState.WAITING, None, "")),
    ("REQUEUE_HOLD", "JobHeldAdmin", "", (JobState.HELD, None, "JobHeldAdmin")),
    ("SPECIAL_EXIT", "None", "", (JobState.HELD, None, "")),
    ("CD", "None", "0:0", (JobState.DONE, 0, "")),  # compact codes too
    ("PD", "JobHeldUser", "", (JobState.HELD, None, "JobHeldUser")),
    ("CANCELLED+", "None", "", (JobState.FAILED, None, "")),  # fixed-width truncation mark
])
def test_task_status(word, reason, code, expected):
    st = slurm_parse.task_status(word, reason, code)
    assert (st.state, st.exit_code, st.reason) == expected


def test_timeout_sets_timed_out():
    st = slurm_parse.task_status("TIMEOUT", "TimeLimit", "0:0")
    assert st.state is JobState.FAILED and st.timed_out and st.reason == "TimeLimit"
    assert not slurm_parse.task_status("FAILED", "", "1:0").timed_out


def test_unknown_state_is_kept_never_raises():
    st = slurm_parse.task_status("WARP_DRIVE_ENGAGED extra words", "Whatever", "x:y")
    assert st.state is JobState.UNKNOWN
    assert st.native == "WARP_DRIVE_ENGAGED extra words"
    assert st.exit_code is None
    assert slurm_parse.task_status("", "", "").state is JobState.UNKNOWN
    assert slurm_parse.task_status("REVOKED", "", "").state is JobState.UNKNOWN


def test_parse_exit_code():
    assert slurm_parse.parse_exit_code("3:0") == (3, 0)
    assert slurm_parse.parse_exit_code("0:9") == (0, 9)
    assert slurm_parse.parse_exit_code("") is None
    assert slurm_parse.parse_exit_code("garbage") is None


# ---------------------------------------------------------------------------- rendering

def test_unit_script_sbatch_header_exact():
    s = spec(units=[WorkUnit(index=i, argv=["true"]) for i in (3, 7, 9, 10, 11, 12)], throttle=2,
             resources=Resources(time_minutes=90, mem_mb=2000, cpus=4, partition="short", account="phys"))
    unit = slurm.render_round(s).files["unit.sh"]
    header = [ln for ln in unit.splitlines() if ln.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=r1",
        "#SBATCH --time=0-01:30:00",
        "#SBATCH --mem=2000M",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=short",
        "#SBATCH --account=phys",
        "#SBATCH --output=logs/%x_%A_%a.out",
        "#SBATCH --error=logs/%x_%A_%a.err",
        "#SBATCH --open-mode=append",
    ]
    lines = unit.splitlines()
    assert lines[0] == "#!/bin/bash"
    # every #SBATCH line comes before the first command, or sbatch ignores it
    first_cmd = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")) < first_cmd
    assert f"IDX={slurm.UNIT_INDEX}" in lines
    assert "--kill-on-invalid-dep" not in unit
    # the array (task ids + throttle) is given on sbatch's command line, one line per array
    assert slurm.render_round(s).files["arrays.txt"] == "0 3,7,9-12%2\n"


def test_minimal_header_and_fanin_header():
    s = spec(fanin=["merge", "--all"], resources=Resources(time_minutes=30),
             fanin_resources=Resources(mem_mb=500, disk_mb=1000))
    r = slurm.render_round(s)
    unit_h = [ln for ln in r.files["unit.sh"].splitlines() if ln.startswith("#SBATCH")]
    assert unit_h == [
        "#SBATCH --job-name=r1", "#SBATCH --time=30",
        "#SBATCH --cpus-per-task=1", "#SBATCH --output=logs/%x_%A_%a.out",
        "#SBATCH --error=logs/%x_%A_%a.err", "#SBATCH --open-mode=append",
    ]
    fanin_h = [ln for ln in r.files["fanin.sh"].splitlines() if ln.startswith("#SBATCH")]
    assert fanin_h == [
        "#SBATCH --job-name=r1", "#SBATCH --mem=500M", "#SBATCH --cpus-per-task=1",
        "#SBATCH --tmp=1000M", "#SBATCH --output=logs/%x_fanin_%j.out",
        "#SBATCH --error=logs/%x_fanin_%j.err", "#SBATCH --open-mode=append",
    ]
    assert "--array" not in r.files["fanin.sh"]
    assert r.executable == frozenset({"unit.sh", "fanin.sh"})


def test_fanin_inherits_round_resources():
    r = slurm.render_round(spec(fanin=["true"], resources=Resources(time_minutes=2 * 24 * 60 + 5, mem_mb=64)))
    assert "#SBATCH --time=2-00:05:00" in r.files["fanin.sh"]
    assert "#SBATCH --mem=64M" in r.files["fanin.sh"]


@pytest.mark.parametrize("minutes, text", [(1, "1"), (59, "59"), (60, "0-01:00:00"),
                                           (24 * 60, "1-00:00:00"), (14 * 24 * 60, "14-00:00:00")])
def test_format_time(minutes, text):
    assert slurm.format_time(minutes) == text


def test_no_fanin_no_fanin_script(stubbed):
    r = slurm.render_round(spec())
    assert set(r.files) == {"unit.sh", "units.tab", "arrays.txt"}
    # submit.sh is slurm_submit.sh with the two values it reads set
    assert "\nfanin=0\nserial=0\n" in r.submit_script
    assert r.submit_script.replace("fanin=0\nserial=0\n", "", 1) == slurm.SUBMIT_SCRIPT
    tmp_path, env, log = stubbed
    run = _run_submit(tmp_path, env, spec())
    assert run.returncode == 0, run.stderr
    assert run.stdout == "array=123\n"
    assert log.read_text().splitlines() == ["sbatch --parsable --array=0-3 unit.sh 0"]


def test_hostile_argv_is_single_quoted():
    evil = "$(touch /tmp/pwned)"
    r = slurm.render_round(spec(units=[WorkUnit(index=0, argv=["echo", evil, "`id`", "a'b"])],
                                fanin=["echo", evil]))
    assert "0 echo '$(touch /tmp/pwned)' '`id`' 'a'\"'\"'b'\n" == r.files["units.tab"]
    assert evil not in r.files["unit.sh"]
    assert "echo '$(touch /tmp/pwned)'" in r.files["fanin.sh"]


def test_submit_script_shape():
    s = slurm.render_round(spec(fanin=["true"])).submit_script
    assert s.startswith("#!/bin/sh\n")
    assert "mkdir -p logs" in s
    assert 'sbatch --parsable --array="$spec" $dep unit.sh "$offset" </dev/null' in s
    assert 'sbatch --parsable --dependency=afterok:"$after" fanin.sh' in s
    assert "scancel $ids" in s
    assert 'echo "array=$listed fanin=$fanin_id"' in s
    assert "\nfanin=1\nserial=0\n" in s
    # the script is valid POSIX sh
    subprocess.run(["sh", "-n"], input=s, text=True, check=True)


# ---------------------------------------------------------------------------- running what we render

def _run_unit(tmp_path: Path, s: RoundSpec, index: str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "unit.sh"
    r = slurm.render_round(s)
    path.write_text(r.files["unit.sh"])
    Path(s.workdir).mkdir(parents=True, exist_ok=True)
    (Path(s.workdir) / "units.tab").write_text(r.files["units.tab"])
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": index}
    return subprocess.run(["bash", str(path), *args], env=env, capture_output=True, text=True, timeout=30)


def test_unit_script_runs_and_writes_exit_file(tmp_path):
    wd = tmp_path / "round"
    marker = tmp_path / "pwned"
    s = spec(workdir=str(wd), retries=1, units=[
        WorkUnit(index=0, argv=["sh", "-c", 'echo "unit $0 in $PWD"', "zero"]),
        WorkUnit(index=3, argv=["sh", "-c", "exit 5"]),
        WorkUnit(index=4, argv=["echo", f"$(touch {marker})"]),
    ])
    r = _run_unit(tmp_path, s, "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"unit zero in {wd}\n"
    assert (wd / "status" / "0.exit").read_text() == "0\n"

    r = _run_unit(tmp_path, s, "3")
    assert r.returncode == 5
    assert (wd / "status" / "3.exit").read_text() == "5\n"
    assert "retry 1 of 1" in r.stderr  # retried in place once

    r = _run_unit(tmp_path, s, "4")
    assert r.returncode == 0
    assert r.stdout == f"$(touch {marker})\n"
    assert not marker.exists()

    r = _run_unit(tmp_path, s, "9")  # an index the round does not have
    assert r.returncode == common.NO_SUCH_UNIT
    assert (wd / "status" / "9.exit").read_text() == f"{common.NO_SUCH_UNIT}\n"
    assert not list((wd / "status").glob(".*"))  # no temp files left behind


def test_fanin_script_runs(tmp_path):
    wd = tmp_path / "round"
    s = spec(workdir=str(wd), fanin=["sh", "-c", "exit 2"])
    path = tmp_path / "fanin.sh"
    path.write_text(slurm.render_round(s).files["fanin.sh"])
    r = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert (wd / "status" / "fanin.exit").read_text() == "2\n"


def _stub(bindir: Path, name: str, body: str) -> None:
    p = bindir / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)


@pytest.fixture
def stubbed(tmp_path):
    """A PATH whose sbatch/scancel record their argv in calls.log; behaviour via env."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    _stub(bindir, "sbatch", f"""echo "sbatch $*" >> {log}
case "$*" in
  *fanin.sh*) [ -n "${{FAIL_FANIN:-}}" ] && {{ echo "sbatch: error: invalid partition specified: nosuch" >&2; exit 1; }}
              echo "${{FANIN_OUT:-124}}" ;;
  *) [ -n "${{FAIL_ARRAY:-}}" ] && {{ echo "sbatch: error: Batch job submission failed" >&2; exit 1; }}
     echo "${{ARRAY_OUT:-123;cluster1}}" ;;
esac
""")
    _stub(bindir, "scancel", f'echo "scancel $*" >> {log}\n')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return tmp_path, env, log


def _run_submit(tmp_path, env, s, **extra):
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    r = slurm.render_round(s)
    for name, text in r.files.items():
        (wd / name).write_text(text)
    return subprocess.run(["sh", "-c", r.submit_script], cwd=wd, env={**env, **extra},
                          capture_output=True, text=True, timeout=30)


def test_submit_script_prints_ids_and_strips_cluster(stubbed):
    tmp_path, env, log = stubbed
    r = _run_submit(tmp_path, env, spec(fanin=["true"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "array=123 fanin=124\n"
    assert log.read_text().splitlines() == [
        "sbatch --parsable --array=0-3 unit.sh 0",
        "sbatch --parsable --dependency=afterok:123 fanin.sh",
    ]
    assert (tmp_path / "wd" / "logs").is_dir()
    assert slurm_parse.parse_submit(r.stdout) == slurm_parse.SubmitIds("123", "124")


def test_submit_script_cancels_array_when_fanin_rejected(stubbed):
    tmp_path, env, log = stubbed
    r = _run_submit(tmp_path, env, spec(fanin=["true"]), FAIL_FANIN="1")
    assert r.returncode == 2
    assert "array=" not in r.stdout
    assert "cancelling array 123" in r.stderr
    assert log.read_text().splitlines()[-1] == "scancel 123"


def test_submit_script_rejects_non_numeric_fanin_id(stubbed):
    tmp_path, env, log = stubbed
    r = _run_submit(tmp_path, env, spec(fanin=["true"]), FANIN_OUT="sbatch: surprise")
    assert r.returncode == 2
    assert log.read_text().splitlines()[-1] == "scancel 123"


def test_submit_script_takes_the_number_of_a_non_parsable_line(stubbed):
    tmp_path, env, log = stubbed
    r = _run_submit(tmp_path, env, spec(fanin=["true"]), ARRAY_OUT="Submitted batch job 555",
                    FANIN_OUT="556;other")
    assert r.stdout == "array=555 fanin=556\n"


def test_submit_script_array_rejected(stubbed):
    tmp_path, env, log = stubbed
    r = _run_submit(tmp_path, env, spec(fanin=["true"]), FAIL_ARRAY="1")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "scancel" not in log.read_text()


def test_submit_output_real():
    assert slurm_parse.parse_submit(fixture("submit_ok8.txt")) == slurm_parse.SubmitIds("8", "9")


def test_parse_submit():
    assert slurm_parse.parse_submit("array=77\n") == slurm_parse.SubmitIds("77", None)
    assert slurm_parse.parse_submit("noise\narray=77 fanin=78\n") == slurm_parse.SubmitIds("77", "78")
    with pytest.raises(ValueError, match="sbatch: error"):
        slurm_parse.parse_submit("sbatch: error: Batch job submission failed")
    with pytest.raises(ValueError):
        slurm_parse.parse_submit("")


# ---------------------------------------------------------------------------- raw Slurm output

def test_squeue_pending_and_running_throttled():
    obs = slurm_parse.parse_squeue_lines(fixture("squeue_ok8_pending.txt").splitlines())
    t = obs.tasks["8"]
    assert {i: t[i].state for i in t} == {0: JobState.RUNNING, 1: JobState.RUNNING,
                                          **{i: JobState.WAITING for i in range(2, 8)}}
    assert t[5].reason == "JobArrayTaskLimit"
    assert obs.jobs["9"].state is JobState.WAITING and obs.jobs["9"].reason == "Dependency"


def test_squeue_failed_indices_and_dependency_never_satisfied():
    obs = slurm_parse.parse_squeue_lines(fixture("squeue_fail8_done.txt").splitlines())
    t = obs.tasks["19"]
    assert sorted(i for i in t if t[i].state is JobState.FAILED) == [2, 5]
    assert t[2].reason == "NonZeroExitCode"
    assert sorted(i for i in t if t[i].state is JobState.DONE) == [0, 1, 3, 4, 6, 7]
    fanin = obs.jobs["20"]
    assert (fanin.state, fanin.reason) == (JobState.WAITING, "DependencyNeverSatisfied")


def test_squeue_pending_range_expanded():
    # without -r a pending array is one record; Slurm writes sparse lists in step form
    obs = slurm_parse.parse_squeue_lines(fixture("squeue_held_sparse_no_r.txt").splitlines())
    assert sorted(obs.tasks["31"]) == list(range(0, 118, 3))
    assert {s.state for s in obs.tasks["31"].values()} == {JobState.HELD}


def test_squeue_r_loses_the_last_index_of_a_step_range():
    """Why the status script does not pass -r: squeue 22.05.8 drops index 18 of 0-18:3."""
    with_r = slurm_parse.parse_squeue_lines(fixture("squeue_step_r_drops_last.txt").splitlines())
    without_r = slurm_parse.parse_squeue_lines(fixture("squeue_step_no_r.txt").splitlines())
    assert sorted(with_r.tasks["54"]) == [0, 3, 6, 9, 12, 15]
    assert sorted(without_r.tasks["54"]) == [0, 3, 6, 9, 12, 15, 18]


def test_squeue_bitstr_len():
    """SLURM_BITSTR_LEN=0 (set by the status script) gives the whole pending list."""
    idx = [i for i in range(200) if i % 3 and i % 7]
    full = slurm_parse.parse_squeue_lines(fixture("squeue_bitstr_full.txt").splitlines())
    assert sorted(full.tasks["53"]) == idx
    cut = slurm_parse.parse_squeue_lines(fixture("squeue_bitstr_truncated.txt").splitlines())
    assert len(cut.tasks["53"]) < len(idx)  # the default 64 bytes truncate
    assert "]" not in fixture("squeue_bitstr_truncated.txt").split("|")[0]


def test_squeue_cancelled_and_timeout():
    obs = slurm_parse.parse_squeue_lines(fixture("squeue_cancel_after.txt").splitlines())
    assert {i: s.native for i, s in obs.tasks["28"].items()} == {i: "CANCELLED" for i in range(4)}
    assert obs.tasks["28"][1].reason == ""  # stale "Resources" dropped
    assert obs.jobs["29"].state is JobState.FAILED
    t = slurm_parse.parse_squeue_lines(fixture("squeue_timeout.txt").splitlines()).tasks["18"][0]
    assert (t.state, t.timed_out, t.reason) == (JobState.FAILED, True, "TimeLimit")
    r = slurm_parse.parse_squeue_lines(fixture("squeue_timeout_running.txt").splitlines()).tasks["18"][0]
    assert r.state is JobState.RUNNING
    rej = slurm_parse.parse_squeue_lines(fixture("squeue_fanin_rejected.txt").splitlines())
    assert {i: s.state for i, s in rej.tasks["64"].items()} == {i: JobState.FAILED for i in range(3)}


def test_sacct_lines():
    obs = slurm_parse.parse_sacct_lines(fixture("sacct_fail8_done.txt").splitlines())
    assert {i: s.exit_code for i, s in obs.tasks["19"].items()} == {
        0: 0, 1: 0, 2: 3, 3: 0, 4: 0, 5: 1, 6: 0, 7: 0}
    # sacct's Reason lags: still "Dependency" where squeue says DependencyNeverSatisfied
    assert obs.jobs["20"].reason == "Dependency"

    run = slurm_parse.parse_sacct_lines(fixture("sacct_ok8_running.txt").splitlines()).tasks["8"]
    assert [run[i].state for i in range(8)] == [JobState.DONE] * 2 + [JobState.RUNNING] * 2 + [JobState.WAITING] * 4

    can = slurm_parse.parse_sacct_lines(fixture("sacct_cancel_after.txt").splitlines())
    assert {i: (s.state, s.native) for i, s in can.tasks["28"].items()} == {
        i: (JobState.FAILED, "CANCELLED") for i in range(4)}
    assert can.jobs["29"].native == "CANCELLED"

    to = slurm_parse.parse_sacct_lines(fixture("sacct_timeout.txt").splitlines()).tasks["18"][0]
    assert to.timed_out and to.exit_code is None

    steps = slurm_parse.parse_sacct_lines(fixture("sacct_timeout_steps.txt").splitlines())
    assert steps.tasks["18"][0].native == "TIMEOUT"  # the .batch step is not a unit

    lf = slurm_parse.parse_sacct_lines(fixture("sacct_launch_failure.txt").splitlines()).tasks["65"][0]
    assert (lf.state, lf.exit_code, lf.reason) == (JobState.FAILED, 128 + 53, "signal 53")

    held = slurm_parse.parse_sacct_lines(fixture("sacct_held_sparse.txt").splitlines())
    assert held.tasks == {}  # a freshly held array had no accounting record yet


def test_scontrol_lines():
    obs = slurm_parse.parse_scontrol_lines(fixture("scontrol_ok8_running.txt").splitlines())
    t = obs.tasks["8"]
    assert {i: t[i].state for i in t} == {0: JobState.DONE, 1: JobState.DONE, 2: JobState.RUNNING,
                                          3: JobState.RUNNING, **{i: JobState.WAITING for i in range(4, 8)}}
    fail = slurm_parse.parse_scontrol_lines(fixture("scontrol_fail8_array.txt").splitlines()).tasks["19"]
    assert {i: s.exit_code for i, s in fail.items()} == {0: 0, 1: 0, 2: 3, 3: 0, 4: 0, 5: 1, 6: 0, 7: 0}
    fanin = slurm_parse.parse_scontrol_lines(fixture("scontrol_fail8_fanin.txt").splitlines()).jobs["20"]
    assert (fanin.state, fanin.reason) == (JobState.WAITING, "DependencyNeverSatisfied")
    held = slurm_parse.parse_scontrol_lines(fixture("scontrol_held_noacct.txt").splitlines()).tasks["31"]
    assert sorted(held) == list(range(0, 118, 3))
    assert {s.state for s in held.values()} == {JobState.HELD}
    to = slurm_parse.parse_scontrol_lines(fixture("scontrol_timeout.txt").splitlines()).tasks["18"][0]
    assert (to.state, to.timed_out, to.exit_code) == (JobState.FAILED, True, 143)
    can = slurm_parse.parse_scontrol_lines(fixture("scontrol_cancel_array.txt").splitlines()).tasks["28"]
    assert sorted(can) == [0, 1, 2, 3] and {s.native for s in can.values()} == {"CANCELLED"}


# ---------------------------------------------------------------------------- full status output

def test_status_running_then_done():
    rs = slurm_parse.parse_status(fixture("status_ok8_running.txt"), [OK8])["fx-ok8"]
    assert rs.scheduler_ok and rs.note == ""
    assert [rs.units[i].state for i in range(8)] == (
        [JobState.DONE] * 2 + [JobState.RUNNING] * 2 + [JobState.WAITING] * 4)
    assert rs.units[6].reason == "JobArrayTaskLimit"
    assert rs.fanin.state is JobState.WAITING
    assert not rs.finished

    rs = slurm_parse.parse_status(fixture("status_ok8_done.txt"), [OK8])["fx-ok8"]
    assert rs.succeeded and rs.finished
    assert {i: (s.state, s.exit_code) for i, s in rs.units.items()} == {i: (JobState.DONE, 0) for i in range(8)}
    assert (rs.fanin.state, rs.fanin.exit_code, rs.fanin.reason) == (JobState.DONE, 0, "")


def test_status_three_rounds_in_one_output():
    out = slurm_parse.parse_status(fixture("status_three_rounds.txt"), [FAIL8, TIMEOUT, HELD])
    f = out["fx-fail8"]
    assert f.failed_indices == [2, 5]
    assert states(f)[2] == (JobState.FAILED, "FAILED", 3)
    assert states(f)[5] == (JobState.FAILED, "FAILED", 1)
    assert f.units[2].reason == "NonZeroExitCode"
    assert all(states(f)[i] == (JobState.DONE, "COMPLETED", 0) for i in (0, 1, 3, 4, 6, 7))
    assert (f.fanin.state, f.fanin.reason) == (JobState.WAITING, "DependencyNeverSatisfied")
    assert f.finished and not f.succeeded
    assert "fan-in waiting (DependencyNeverSatisfied)" in f.progress_line("fail8")

    t = out["fx-timeout"].units[0]
    assert (t.state, t.native, t.timed_out, t.reason) == (JobState.FAILED, "TIMEOUT", True, "TimeLimit")

    h = out["fx-held"]
    assert len(h.units) == 40
    assert {(s.state, s.reason) for s in h.units.values()} == {(JobState.HELD, "JobHeldUser")}
    assert "(HoldReason: JobHeldUser)" in h.progress_line("held")


def test_status_cancelled_round():
    rs = slurm_parse.parse_status(fixture("status_cancel_after.txt"), [CANCEL])["fx-cancel"]
    assert {i: (s.state, s.native) for i, s in rs.units.items()} == {
        i: (JobState.FAILED, "CANCELLED") for i in range(4)}
    assert (rs.fanin.state, rs.fanin.native) == (JobState.FAILED, "CANCELLED")
    assert rs.finished


def test_status_cancelled_stuck_fanin_and_held_array():
    out = slurm_parse.parse_status(fixture("status_stuck_and_held_cancelled.txt"), [FAIL8, HELD])
    assert (out["fx-fail8"].fanin.state, out["fx-fail8"].fanin.reason) == (
        JobState.FAILED, "DependencyNeverSatisfied")
    assert {s.native for s in out["fx-held"].units.values()} == {"CANCELLED"}


def test_status_launch_failure():
    u = slurm_parse.parse_status(fixture("status_launch_failure.txt"), [LAUNCHFAIL])["fx-launchfail"].units[0]
    assert (u.state, u.reason) == (JobState.FAILED, "JobLaunchFailure (signal 53)")


@pytest.mark.parametrize("name", ["status_noacct_running.txt", "status_noacct_done.txt",
                                  "status_noacct_fallback.txt"])
def test_status_without_accounting(name):
    rs = slurm_parse.parse_status(fixture(name), [NOACCT])["fx-noacct"]
    assert rs.scheduler_ok and rs.note == ""
    if name == "status_noacct_running.txt":
        assert [rs.units[i].state for i in range(6)] == [JobState.RUNNING] * 2 + [JobState.WAITING] * 4
        assert (rs.fanin.state, rs.fanin.reason) == (JobState.WAITING, "Dependency")
    else:
        assert states(rs) == {**{i: (JobState.DONE, "COMPLETED", 0) for i in (0, 1, 2, 3, 5)},
                              4: (JobState.FAILED, "FAILED", 2)}
        assert (rs.fanin.state, rs.fanin.reason) == (JobState.WAITING, "DependencyNeverSatisfied")
        assert rs.finished


def test_controller_down_is_never_vanished():
    # scontrol-only script: nothing but the exit files answers
    out = slurm_parse.parse_status(fixture("status_ctld_down_noacct_script.txt"), [FAIL8, TIMEOUT])
    for rs in out.values():
        assert not rs.scheduler_ok
        assert "Unable to contact slurm controller" in rs.note
    assert out["fx-timeout"].units[0].state is JobState.UNKNOWN
    assert out["fx-fail8"].fanin.state is JobState.UNKNOWN
    f = out["fx-fail8"]
    assert f.failed_indices == [2, 5]  # the exit files are still evidence
    assert {s.state for s in f.units.values()} <= {JobState.DONE, JobState.FAILED}
    assert not any(s.state is JobState.VANISHED for rs in out.values() for s in rs.units.values())

    # with accounting: sacct (slurmdbd) still answers, but scheduler_ok stays False
    out = slurm_parse.parse_status(fixture("status_ctld_down.txt"), [FAIL8, TIMEOUT])
    assert not out["fx-fail8"].scheduler_ok
    assert out["fx-fail8"].failed_indices == [2, 5]
    assert out["fx-timeout"].units[0].timed_out


def test_controller_down_built_from_raw_squeue_error():
    text = "\n".join([
        "@@BATCHSITE squeue -", *("!err " + ln for ln in fixture("squeue_ctld_down.txt").splitlines()), "!rc 1",
        "@@BATCHSITE sacct -", "!err Slurm accounting storage is disabled", "!rc 1",
        "@@BATCHSITE scontrol -", "!err " + slurm.SKIPPED, "!rc 1",
        "@@BATCHSITE exit fx-ok8",
    ])
    rs = slurm_parse.parse_status(text, [OK8])["fx-ok8"]
    assert not rs.scheduler_ok
    assert {s.state for s in rs.units.values()} == {JobState.UNKNOWN}
    assert rs.fanin.state is JobState.UNKNOWN


def test_unknown_job_id_is_not_a_failed_query():
    """A single purged id makes squeue exit 1 with "Invalid job id specified": not an outage."""
    for name in ("status_unknown_id_exit_files.txt", "status_unknown_id_exit_files_noacct_script.txt"):
        s = sub("fx-ok8", range(8), "999999")
        rs = slurm_parse.parse_status(fixture(name), [s])["fx-ok8"]
        assert rs.scheduler_ok, rs.note
        assert states(rs) == {i: (JobState.DONE, "exit-file", 0) for i in range(8)}
    # and with no exit files either: VANISHED (the poller's grace decides), not UNKNOWN
    text = ("@@BATCHSITE squeue -\n!err slurm_load_jobs error: Invalid job id specified\n!rc 1\n"
            "@@BATCHSITE sacct -\n!rc 0\n@@BATCHSITE exit gone\n")
    rs = slurm_parse.parse_status(text, [sub("gone", [0, 1], "999999")])["gone"]
    assert rs.scheduler_ok
    assert {s.state for s in rs.units.values()} == {JobState.VANISHED}


def test_exit_file_corrects_accounting():
    text = ("@@BATCHSITE squeue -\n!rc 0\n@@BATCHSITE sacct -\n5_0|COMPLETED|0:0|None|k\n!rc 0\n"
            "@@BATCHSITE exit k\n0 4\n")
    u = slurm_parse.parse_status(text, [sub("k", [0], "5")])["k"].units[0]
    assert (u.state, u.exit_code) == (JobState.FAILED, 4)


def test_garbage_never_raises():
    for text in ("", "garbage\n\x00|||\n", "@@BATCHSITE squeue -\n1_x|WEIRD\n|\n!rc zz\n"):
        out = slurm_parse.parse_status(text, [OK8])
        assert set(out["fx-ok8"].units) == set(range(8))
    out = slurm_parse.parse_status("@@BATCHSITE squeue -\n8_3|LEVITATING|None|fx-ok8\n!rc 0\n@@BATCHSITE sacct -\n!rc 0\n", [OK8])
    u = out["fx-ok8"].units[3]
    assert (u.state, u.native) == (JobState.UNKNOWN, "LEVITATING")


# ---------------------------------------------------------------------------- the status script, run

@pytest.fixture
def slurm_stubs(tmp_path):
    """squeue/sacct/scontrol stand-ins whose output comes from the real fixtures."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("squeue_fail8_done", "sacct_fail8_done", "sacct_accounting_disabled",
                 "scontrol_fail8_array", "scontrol_fail8_fanin", "squeue_ctld_down"):
        (tmp_path / f"{name}.txt").write_text(fixture(f"{name}.txt"))
    d = tmp_path
    _stub(bindir, "squeue", f"""echo "squeue $*" >> {d}/calls.log
[ -n "${{CTLD_DOWN:-}}" ] && {{ cat {d}/squeue_ctld_down.txt >&2; exit 1; }}
echo "SLURM_BITSTR_LEN=$SLURM_BITSTR_LEN" >> {d}/calls.log
cat {d}/squeue_fail8_done.txt
""")
    _stub(bindir, "sacct", f"""echo "sacct $*" >> {d}/calls.log
[ -n "${{NO_ACCOUNTING:-}}" ] && {{ cat {d}/sacct_accounting_disabled.txt >&2; exit 1; }}
cat {d}/sacct_fail8_done.txt
""")
    _stub(bindir, "scontrol", f"""echo "scontrol $*" >> {d}/calls.log
case "$*" in *19) cat {d}/scontrol_fail8_array.txt ;; *20) cat {d}/scontrol_fail8_fanin.txt ;;
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;; esac
""")
    wd = d / "fx-fail8"
    (wd / "status").mkdir(parents=True)
    for i in range(8):
        (wd / "status" / f"{i}.exit").write_text({2: "3\n", 5: "1\n"}.get(i, "0\n"))
    s = sub("fx-fail8", range(8), "19", "20", workdir=str(wd))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return d, env, s


def _run_status(d, env, subs, accounting, **extra):
    script = slurm.render_status_script(subs, accounting)
    r = subprocess.run(["sh", "-c", script], env={**env, **extra}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    calls = (d / "calls.log").read_text().splitlines()
    return r.stdout, calls


def _check_fail8(rs):
    assert rs.failed_indices == [2, 5]
    assert (rs.fanin.state, rs.fanin.reason) == (JobState.WAITING, "DependencyNeverSatisfied")
    assert rs.units[2].exit_code == 3


def test_status_script_with_accounting(slurm_stubs):
    d, env, s = slurm_stubs
    out, calls = _run_status(d, env, [s], True)
    assert calls == [
        "squeue -h -a -t all --jobs=19,20 -o %i|%T|%r|%j", "SLURM_BITSTR_LEN=0",
        "sacct -n -P -X --jobs=19,20 -o JobID,State,ExitCode,Reason,JobName",
    ]
    rs = slurm_parse.parse_status(out, [s])["fx-fail8"]
    assert rs.scheduler_ok
    _check_fail8(rs)


def test_status_script_falls_back_to_scontrol_when_sacct_fails(slurm_stubs):
    d, env, s = slurm_stubs
    out, calls = _run_status(d, env, [s], None, NO_ACCOUNTING="1")
    assert calls[-2:] == ["scontrol -o show job 19", "scontrol -o show job 20"]
    assert "!err Slurm accounting storage is disabled" in out
    rs = slurm_parse.parse_status(out, [s])["fx-fail8"]
    assert rs.scheduler_ok and rs.note == ""
    _check_fail8(rs)


def test_status_script_without_accounting_never_calls_sacct(slurm_stubs):
    d, env, s = slurm_stubs
    other = sub("purged", [0], "777", workdir=str(d / "purged"))
    out, calls = _run_status(d, env, [s, other], False)
    assert not any(c.startswith("sacct") for c in calls)
    assert calls[-3:] == ["scontrol -o show job 19", "scontrol -o show job 20", "scontrol -o show job 777"]
    out_p = slurm_parse.parse_status(out, [s, other])
    _check_fail8(out_p["fx-fail8"])
    assert out_p["purged"].scheduler_ok  # "Invalid job id specified" for 777 is no outage
    assert out_p["purged"].units[0].state is JobState.VANISHED


def test_status_script_skips_scontrol_when_controller_down(slurm_stubs):
    d, env, s = slurm_stubs
    out, calls = _run_status(d, env, [s], False, CTLD_DOWN="1")
    assert not any(c.startswith("scontrol") for c in calls)  # each would wait MessageTimeout
    rs = slurm_parse.parse_status(out, [s])["fx-fail8"]
    assert not rs.scheduler_ok
    assert rs.fanin.state is JobState.UNKNOWN
    assert rs.failed_indices == [2, 5]  # from the exit files


def test_status_script_empty():
    assert slurm.render_status_script([]) == "true\n"
    assert slurm_parse.parse_status("", []) == {}


# ---------------------------------------------------------------------------- cancel, probe, find

def test_cancel_script(tmp_path):
    script = slurm.render_cancel_script([FAIL8, TIMEOUT, OK8])
    assert script.splitlines()[0] == "scancel 19 20 18 8 9 2>&1"
    assert slurm.render_cancel_script([]) == "true\n"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _stub(bindir, "scancel", 'echo "scancel: error: Kill job error on job id 8" >&2; exit 1\n')
    r = subprocess.run(["sh", "-c", script], env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "Kill job error" in r.stdout and "scancel exit 1" in r.stdout
    # the real scancel 22.05 is silent (exit 0) on finished and unknown ids
    assert fixture("scancel_finished.txt") == "scancel exit 0\n"


def test_probe():
    assert slurm_parse.parse_probe(fixture("probe_accounting.txt")) is True
    assert slurm_parse.parse_probe(fixture("probe_no_accounting.txt")) is False
    assert slurm_parse.parse_probe("") is None
    assert slurm_parse.parse_probe("@@BATCHSITE sacct -\n!err slurm_persist_conn_open_without_init: failed\n!rc 1\n") is None
    assert "sacct" in slurm.probe_script()


def test_backend_binds_probe_to_status_script():
    b = get_backend("slurm")
    assert isinstance(b, slurm.SlurmBackend) and b.name == "slurm"
    assert b.accounting is None and "sacct" in b.render_status_script([OK8])
    b.apply_probe(fixture("probe_no_accounting.txt"))
    assert b.accounting is False and "sacct" not in b.render_status_script([OK8])
    b.apply_probe(fixture("probe_accounting.txt"))
    assert b.accounting is True and "sacct -n -P -X --jobs=8,9" in b.render_status_script([OK8])
    assert b.parse_status(fixture("status_ok8_done.txt"), [OK8])["fx-ok8"].succeeded
    assert b.parse_submit("array=1 fanin=2") == slurm_parse.SubmitIds("1", "2")


def test_find_by_name():
    assert slurm_parse.parse_find_by_name(fixture("find_by_name_accounting.txt")) == slurm_parse.SubmitIds("8", "9")
    assert slurm_parse.parse_find_by_name(fixture("find_by_name_noacct.txt")) == slurm_parse.SubmitIds("56", "57")
    assert slurm_parse.parse_find_by_name(fixture("find_by_name_none_accounting.txt")) is None
    assert slurm_parse.parse_find_by_name(fixture("find_by_name_none_noacct.txt")) is None
    with pytest.raises(ValueError, match="could not look up"):
        slurm_parse.parse_find_by_name("@@BATCHSITE squeue -\n!err slurm_load_jobs error: Unable to contact slurm controller\n!rc 1\n")
    with pytest.raises(ValueError, match="more job arrays carry this name than the round has"):
        slurm_parse.parse_find_by_name("@@BATCHSITE squeue -\n5_0|RUNNING|None|k\n6_0|PENDING|None|k\n!rc 0\n")
    script = slurm.render_find_by_name_script("fx-ok8", True)
    assert "--name=fx-ok8" in script and "sacct" in script
    assert "sacct" not in slurm.render_find_by_name_script("fx-ok8", False)
    with pytest.raises(ValueError):
        slurm.render_find_by_name_script("a;rm -rf /")


# ---------------------------------------------------------------------------- find (Backend API)

def _find_backend(accounting):
    b = slurm.SlurmBackend()
    b.accounting = accounting
    return b


@pytest.mark.parametrize("name, key, accounting, fanin, expected", [
    ("find_by_name_accounting.txt", "fx-ok8", True, True, slurm_parse.SubmitIds("8", "9")),
    ("find_by_name_noacct.txt", "fx-noacct", False, True, slurm_parse.SubmitIds("56", "57")),
    ("find_by_name_none_accounting.txt", "fx-nosuchkey", True, True, None),
    ("find_by_name_none_noacct.txt", "fx-nosuchkey", False, False, None),
])
def test_find_script_and_parse_find_on_captured_outputs(name, key, accounting, fanin, expected):
    b = _find_backend(accounting)
    s = spec(key=key, workdir=f"{R}/{key}", fanin=["true"] if fanin else None)
    script = b.render_find_script(s)
    assert f"--name={key}" in script and ("sacct" in script) is accounting
    assert "SLURM_BITSTR_LEN=0" in script
    assert f"{R}/{key}/logs/{key}_*.out" in script and f"{R}/{key}/.batchsite/submitted." in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert b.parse_find(fixture(name), s) == expected
    assert b.parse_submit(b.format_submit(slurm_parse.SubmitIds("8", "9"))) == slurm_parse.SubmitIds("8", "9")
    assert b.parse_submit(b.format_submit(slurm_parse.SubmitIds("8"))) == slurm_parse.SubmitIds("8")


def test_parse_find_array_without_the_fanin_is_half_a_submission():
    text = "@@BATCHSITE squeue -\n5_0|RUNNING|None|k\n!rc 0\n"
    assert slurm_parse.parse_find(text, spec(key="k")) == slurm_parse.SubmitIds("5")
    with pytest.raises(ValueError, match="no fan-in job"):
        slurm_parse.parse_find(text, spec(key="k", fanin=["true"]))
    # the failed attempt's scancel did not take: the error says so, and nothing is submitted
    failed = "@@BATCHSITE failed -\nbatchsite: sbatch fanin.sh failed; cancelling array 5\n"
    with pytest.raises(ValueError, match="scancel of 5 did not take effect"):
        slurm_parse.parse_find(text + failed, spec(key="k", fanin=["true"]))


def test_parse_find_ignores_earlier_records_and_arrays_a_failed_submit_cancelled():
    # after Site.resubmit: the old array 8 (+ fan-in 9) is recorded in submitted.1
    text = fixture("find_by_name_accounting.txt").replace("!rc 0\n@@BATCHSITE sacct", "12_0|PENDING|None|fx-ok8\n13|PENDING|Dependency|fx-ok8\n!rc 0\n@@BATCHSITE sacct", 1)
    with pytest.raises(ValueError, match="more job arrays carry this name"):
        slurm_parse.parse_find_by_name(text)
    text += "@@BATCHSITE record 1\nabc\n1795437000\narray=8 fanin=9\n\n@@BATCHSITE failed -\n"
    assert slurm_parse.parse_find_by_name(text) == slurm_parse.SubmitIds("12", "13")
    # submit.sh said it cancels array 12 (its fan-in was rejected), but squeue still shows it
    # PENDING: its scancel failed too, so it is still this round's submission
    failed = "submit.sh exited 2 at 1\n" + fixture("submit_fanin_rejected.txt").replace("64", "12")
    assert slurm_parse.parse_find_by_name(text + failed) == slurm_parse.SubmitIds("12", "13")
    # once squeue shows it CANCELLED (as squeue_fanin_rejected.txt did for array 64), it is not one
    cancelled = text.replace("12_0|PENDING|None|fx-ok8", "12_[0-2]|CANCELLED|None|fx-ok8")
    assert slurm_parse.parse_find_by_name(cancelled + failed) is None
    # gone from squeue, with its final accounting record: over, too
    gone = text.replace("12_0|PENDING|None|fx-ok8\n", "").replace(
        "@@BATCHSITE sacct -\n", "@@BATCHSITE sacct -\n12_0|CANCELLED by 1001|0:0|None|fx-ok8\n", 1)
    assert slurm_parse.parse_find_by_name(gone + failed) is None
    # gone from squeue WITHOUT an accounting record: no proof it is over, so it still counts
    no_record = text.replace("12_0|PENDING|None|fx-ok8\n", "") + "@@BATCHSITE logs -\n12_0.out\n"
    assert slurm_parse.parse_find_by_name(no_record + failed) == slurm_parse.SubmitIds("12", "13")


def test_parse_find_log_files_witness_what_slurmctld_forgot():
    """No accounting, the jobs ended more than MinJobAge ago: squeue no longer knows them,
    the log files the array wrote still name it."""
    text = fixture("find_by_name_none_noacct.txt") + "@@BATCHSITE logs -\n56_0.out\nfanin_57.out\n@@BATCHSITE failed -\n"
    assert slurm_parse.parse_find_by_name(text) == slurm_parse.SubmitIds("56", "57")
    # but logs alone never answer for a scheduler that could not be asked
    down = "@@BATCHSITE squeue -\n!err slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n!rc 1\n"
    with pytest.raises(ValueError, match="could not look up"):
        slurm_parse.parse_find_by_name(down + "@@BATCHSITE logs -\n56_0.out\n")


def test_find_script_runs(tmp_path):
    """The rendered find script under sh: squeue/sacct stand-ins print the captured output;
    the log names (one per array) and the earlier records come from the workdir."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    body = fixture("find_by_name_accounting.txt").split("@@BATCHSITE sacct -\n")
    (tmp_path / "sq.txt").write_text(body[0].split("\n", 1)[1].rsplit("!rc 0", 1)[0])
    (tmp_path / "sa.txt").write_text(body[1].rsplit("!rc 0", 1)[0])
    _stub(bindir, "squeue", f'echo "squeue $*" >> {tmp_path}/calls.log; cat {tmp_path}/sq.txt\n')
    _stub(bindir, "sacct", f'echo "sacct $*" >> {tmp_path}/calls.log; cat {tmp_path}/sa.txt\n')
    wd = tmp_path / "fx-ok8"
    (wd / "logs").mkdir(parents=True)
    for n in ("fx-ok8_8_0.out", "fx-ok8_8_1.out", "fx-ok8_8_10.out", "fx-ok8_fanin_9.out", "fx-ok8_8_0.err"):
        (wd / "logs" / n).write_text("")
    b = _find_backend(True)
    s = spec(key="fx-ok8", workdir=str(wd), fanin=["true"])
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(["sh", "-c", b.render_find_script(s)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    assert common.split_sections(r.stdout)[("logs", "-")].splitlines() == ["8_0.out", "fanin_9.out"]
    assert b.parse_find(r.stdout, s) == slurm_parse.SubmitIds("8", "9")
    assert (tmp_path / "calls.log").read_text().splitlines() == [
        "squeue -h -a -t all --name=fx-ok8 -o %i|%T|%r|%j",
        "sacct -n -P -X --name=fx-ok8 --starttime=now-30days -o JobID,State,ExitCode,Reason,JobName",
    ]
    # the same round after Site.resubmit kept its record: nothing else carries the name
    (wd / ".batchsite").mkdir()
    (wd / ".batchsite" / "submitted.1").write_text("abc\n1795437000\narray=8 fanin=9\n")
    r = subprocess.run(["sh", "-c", b.render_find_script(s)], env=env, capture_output=True, text=True, timeout=30)
    assert b.parse_find(r.stdout, s) is None


# ---------------------------------------------------------------------------- diagnose

@pytest.mark.parametrize("name, words", [
    ("sbatch_ctld_down.txt", "slurmctld is not answering"),
    ("squeue_ctld_down.txt", "slurmctld is not answering"),
    ("scontrol_ctld_down.txt", "slurmctld is not answering"),
    ("submit_fanin_rejected.txt", "does not exist on this cluster"),
])
def test_diagnose_captured_errors(name, words):
    assert words in slurm.SlurmBackend().diagnose(fixture(name))


def test_diagnose_account_and_nothing_known():
    # sbatch's text for an account not allowed on a partition, as public cluster docs quote it;
    # not producible on the single-account test site
    text = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    assert "sacctmgr" in slurm_parse.diagnose(text)
    assert slurm_parse.diagnose("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy") is None
    assert slurm_parse.diagnose("") is None


def test_every_fixture_has_a_header():
    files = sorted(DATA.glob("*.txt"))
    assert len(files) > 40
    for f in files:
        head = f.read_text().splitlines()[:2]
        assert head[0].startswith("# command: "), f.name
        assert head[1].startswith("# captured: ") and "slurm 22.05 (" in head[1], f.name
