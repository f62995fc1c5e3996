"""HTCondor (DAGMan) backend: rendering checked by htcondor2 itself, and the parsers run on
outputs captured from a real HTCondor 25.13.2 pool (tests/data/htcondor, see its README).
No pool is needed here; the shell scripts run under sh/bash with fake condor_* tools."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import htcondor2
import pytest

from batchsite.backends import common, get_backend
from batchsite.backends import htcondor, htcondor_parse
from batchsite.model import JobState, Resources, RoundSpec, Submission, WorkUnit

DATA = Path(__file__).resolve().parents[2] / "data" / "htcondor"


def _header_len(lines: list[str]) -> int:
    n = 2
    while n < len(lines) and lines[n].startswith("# submission: "):
        n += 1
    return n


def fixture(name: str) -> str:
    """The captured text without its ``# command:`` / ``# captured:`` / ``# submission:`` header."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    assert lines[0].startswith("# command: ") and lines[1].startswith("# captured: "), name
    assert "HTCondor 25.13.2 personal pool" in lines[1]
    return "".join(lines[_header_len(lines):])


def fixture_submissions(name: str) -> list[Submission]:
    lines = (DATA / name).read_text().splitlines()
    subs = [Submission.model_validate_json(ln[len("# submission: "):]) for ln in lines[2:_header_len(lines)]]
    assert subs, name
    return subs


def fixture_submission(name: str) -> Submission:
    return fixture_submissions(name)[0]


def parse_fixture(name: str):
    sub = fixture_submission(name)
    return htcondor_parse.parse_status(fixture(name), [sub])[sub.key]


def spec(tmp="/home/bsite/rounds/r1", **kw) -> RoundSpec:
    base = dict(
        key="bs-r1", label="reco iter01", workdir=str(tmp),
        units=[WorkUnit(index=i, argv=["reco.sh", f"{400 + i}"]) for i in range(4)],
        fanin=["millepede.sh", "iter01"], throttle=2, retries=3,
        resources=Resources(mem_mb=2000, cpus=2, disk_mb=1000, time_minutes=90, job_flavour="longlunch",
                            requirements='(OpSysAndVer =?= "AlmaLinux9")'),
    )
    base.update(kw)
    return RoundSpec(**base)


def dag_lines(rendered) -> list[str]:
    return rendered.files["bs-r1.dag"].splitlines()


# ---------------------------------------------------------------------------- rendering

def test_registered():
    b = get_backend("htcondor")
    assert isinstance(b, htcondor.HTCondorBackend) and b.name == "htcondor"


def test_dag_lines():
    r = htcondor.render_round(spec())
    lines = dag_lines(r)
    for want in [
        "CONFIG dagman.config",
        "NODE_STATUS_FILE bs-r1.status 30",
        'SET_JOB_ATTR BatchsiteKey = "bs-r1"',
        "MAXJOBS units 2",
        "JOB unit0 unit.sub", 'VARS unit0 idx="0"', "RETRY unit0 3 UNLESS-EXIT 2", "CATEGORY unit0 units",
        "JOB unit3 unit.sub", 'VARS unit3 idx="3"', "RETRY unit3 3 UNLESS-EXIT 2", "CATEGORY unit3 units",
        "PARENT unit0 unit1 unit2 unit3 CHILD fanin",
        "JOB fanin fanin.sub", "RETRY fanin 3 UNLESS-EXIT 2",
    ]:
        assert want in lines, want
    # the fan-in is not throttled with the units, and the library's wrong line is gone
    assert "CATEGORY fanin units" not in lines
    assert "CATEGORY units 2" not in lines
    assert sum(ln.startswith("JOB ") for ln in lines) == 5
    assert r.files["dagman.config"] == "DAGMAN_QUEUE_UPDATE_INTERVAL = 60\n"
    assert set(r.files) == {"unit.sh", "units.tab", "unit.sub", "fanin.sh", "fanin.sub", "bs-r1.dag", "dagman.config"}
    assert r.executable == frozenset({"unit.sh", "fanin.sh"})


def test_htcondor2_dags_maxjobs_bug_is_patched():
    """htcondor2.dags 25.13.2 writes CATEGORY <cat> <n> for max_jobs_by_category (should be
    MAXJOBS). If this test fails because the library is fixed, fix_maxjobs is a no-op."""
    from htcondor2 import dags

    d = dags.DAG(max_jobs_by_category={"units": 2})
    d.layer(name="u", submit_description=htcondor2.Submit({"executable": "x"}), category="units")
    raw = list(dags.writer.DAGWriter(d).yield_dag_file_lines())
    assert "CATEGORY units 2" in raw
    fixed = htcondor.fix_maxjobs(raw, {"units": 2})
    assert "MAXJOBS units 2" in fixed and "CATEGORY units 2" not in fixed
    assert "CATEGORY u:0 units" in fixed  # the node's own CATEGORY line stays
    assert htcondor.fix_maxjobs(fixed, {"units": 2}) == fixed


def test_submit_descriptions_pass_htcondor2_and_queue_once():
    r = htcondor.render_round(spec())
    for name in ("unit.sub", "fanin.sub"):
        text = r.files[name]
        sub = htcondor2.Submit(text)
        assert [ln for ln in text.splitlines() if ln.startswith("queue")] == ["queue"], name
        assert sub["universe"] == "vanilla"
        assert sub["request_cpus"] == "2"
        assert sub["request_memory"] == "2000MB"
        assert sub["request_disk"] == "1000MB"
        assert sub["MY.MaxRuntime"] == "5400"
        assert sub["MY.JobFlavour"] == '"longlunch"'
        assert sub["requirements"] == '(OpSysAndVer =?= "AlmaLinux9")'
        assert sub["should_transfer_files"] == "IF_NEEDED"
        assert sub["when_to_transfer_output"] == "ON_EXIT"
        assert sub["MY.BatchsiteKey"] == '"bs-r1"'
        assert sub["log"] == "logs/bs-r1.log"
    unit = htcondor2.Submit(r.files["unit.sub"])
    assert unit["executable"] == "unit.sh" and unit["arguments"] == "$(idx)"
    assert unit["output"] == "logs/bs-r1_$(idx)_$(ClusterId).out"
    fan = htcondor2.Submit(r.files["fanin.sub"])
    assert fan["executable"] == "fanin.sh" and "arguments" not in fan.keys()


def test_htcondor2_str_submit_already_has_queue():
    """Why we do not use DAGWriter.write_submit_files_for_layers: it appends a second
    ``queue`` to str(Submit), which already ends with one (every node would run twice)."""
    assert str(htcondor2.Submit({"executable": "x"})).rstrip().endswith("queue")


def test_rendered_dag_passes_condor_submit_dag_checks_offline(tmp_path, monkeypatch):
    r = htcondor.render_round(spec(tmp_path))
    for name, text in r.files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    sub = htcondor2.Submit.from_dag("bs-r1.dag", {"dagman": "/bin/true", "batch-name": "bs-r1"})
    assert sub["My.JobBatchName"] == '"bs-r1"'
    assert "-AutoRescue 1" in sub["arguments"]
    assert "-force" not in sub["arguments"]  # resubmission picks up the rescue DAG
    assert f"_CONDOR_DAGMAN_CONFIG_FILE={tmp_path}/dagman.config" in sub["environment"]


@pytest.mark.parametrize("resources, key", [
    (Resources(requirements='x == 1\nexecutable = /bin/evil'), "requirements"),
    (Resources(requirements="((("), "requirements"),
])
def test_bad_submit_values_are_refused(resources, key):
    with pytest.raises(ValueError, match=key):
        htcondor.render_round(spec(resources=resources))


def test_validate_submit_names_the_offending_key():
    with pytest.raises(ValueError, match="offending key 'this'"):
        htcondor.validate_submit("executable = x\nthis is not a command\nqueue\n", {"executable": "x"})
    with pytest.raises(ValueError, match="request_memory"):
        htcondor.validate_submit("executable = x\nqueue\n", {"executable": "x", "request_memory": "1MB"})
    with pytest.raises(ValueError, match="2 queue statements"):
        htcondor.validate_submit("executable = x\nqueue\nqueue\n", {"executable": "x"})


def test_options_and_minimal_round():
    s = spec(throttle=None, retries=0, fanin=None, resources=Resources())
    r = htcondor.render_round(s, htcondor.Options(status_update_seconds=5, max_idle=50, abort_dag_on_exit=3))
    lines = dag_lines(r)
    assert "NODE_STATUS_FILE bs-r1.status 5" in lines
    assert not [ln for ln in lines if ln.startswith(("RETRY", "CATEGORY", "MAXJOBS", "PARENT"))]
    assert "ABORT-DAG-ON unit2 3" in lines
    assert "fanin.sub" not in r.files and "JOB fanin fanin.sub" not in lines
    assert "DAGMAN_MAX_JOBS_IDLE = 50" in r.files["dagman.config"]
    unit = htcondor2.Submit(r.files["unit.sub"])
    assert "request_memory" not in unit.keys() and "MY.JobFlavour" not in unit.keys()
    assert "\nfanin_node=''\n" in r.submit_script  # no fan-in node to report


def test_named_nodes_write_a_map():
    units = [WorkUnit(index=i, name=f"reco_{400 + i:05d}", argv=["true"]) for i in range(2)]
    r = htcondor.render_round(spec(units=units))
    lines = dag_lines(r)
    assert "JOB reco_00400 unit.sub" in lines and 'VARS reco_00401 idx="1"' in lines
    assert "PARENT reco_00400 reco_00401 CHILD fanin" in lines
    assert r.files["bs-r1.nodes"] == "0 reco_00400\n1 reco_00401\n"


@pytest.mark.parametrize("names", [["a.b", "c"], ["fanin", "c"], ["PARENT", "c"], ["x", "x"], ["a b", "c"]])
def test_bad_node_names(names):
    units = [WorkUnit(index=i, name=n, argv=["true"]) for i, n in enumerate(names)]
    with pytest.raises(ValueError):
        htcondor.render_round(spec(units=units))


def test_unit_script_runs_under_bash(tmp_path):
    s = spec(tmp_path, units=[WorkUnit(index=0, argv=["sh", "-c", "echo zero > out0"]),
                              WorkUnit(index=5, argv=["sh", "-c", "exit 3"])])
    r = htcondor.render_round(s)
    (tmp_path / "unit.sh").write_text(r.files["unit.sh"])
    (tmp_path / "units.tab").write_text(r.files["units.tab"])
    # DAGMan runs "unit.sh $(idx)" with arguments = $(idx) from VARS
    assert subprocess.run(["bash", "unit.sh", "0"], cwd=tmp_path).returncode == 0
    assert (tmp_path / "out0").read_text() == "zero\n"
    assert subprocess.run(["bash", "unit.sh", "5"], cwd=tmp_path).returncode == 3
    # no in-job retries: DAGMan's RETRY does them
    assert "retry 1 of" not in r.files["unit.sh"]
    assert common.parse_exit_files(
        "\n".join(f"{p.stem} {p.read_text().strip()}" for p in (tmp_path / "status").glob("*.exit"))
    ) == {"0": 0, "5": 3}


def _fake_tools(tmp_path: Path, tools: dict[str, str]) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in tools.items():
        p = bindir / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def test_submit_script_with_fake_condor(tmp_path):
    s = spec(tmp_path)
    r = htcondor.render_round(s)
    assert "\nkey=bs-r1\ndag=bs-r1.dag\n" in r.submit_script  # the args are checked below, as run
    csd = [ln for ln in r.submit_script.splitlines() if "condor_submit_dag" in ln and "$(" in ln]
    assert len(csd) == 1 and " -f " not in csd[0] and "-force" not in csd[0]
    (tmp_path / "submit.sh").write_text(r.submit_script)
    (tmp_path / "bs-r1.status").write_text("old run")
    captured = fixture("submit_fanin.txt").replace("dagman=38 schedd=bsite@vm fanin=fanin\n", "")
    (tmp_path / "csd.out").write_text(captured)
    env = _fake_tools(tmp_path, {
        "condor_submit_dag": f'echo "$@" > {tmp_path}/csd.args; cat {tmp_path}/csd.out\n',
        "condor_q": 'echo "bsite@vm#$1.0#1795437964"\n',
    })
    p = subprocess.run(["sh", "./submit.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "csd.args").read_text() == "-batch-name bs-r1 bs-r1.dag\n"
    assert p.stdout.splitlines()[-1] == "dagman=38 schedd=bsite@vm fanin=fanin"
    ids = htcondor.parse_submit(p.stdout)
    assert (ids.fanout_id, ids.schedd, ids.fanin_id) == ("38", "bsite@vm", "fanin")
    # the previous run's node status file is moved aside; logs/ and status/ exist
    assert (tmp_path / "bs-r1.status.prev").read_text() == "old run"
    assert not (tmp_path / "bs-r1.status").exists()
    assert (tmp_path / "logs").is_dir() and (tmp_path / "status").is_dir()


def test_submit_script_fails_loudly(tmp_path):
    r = htcondor.render_round(spec(tmp_path))
    (tmp_path / "submit.sh").write_text(r.submit_script)
    env = _fake_tools(tmp_path, {"condor_submit_dag": 'echo "ERROR: condor_submit failed; aborting." >&2; exit 1\n'})
    p = subprocess.run(["sh", "./submit.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "condor_submit_dag exited 1" in p.stderr


def test_parse_submit_on_captured_outputs():
    ids = htcondor.parse_submit(fixture("submit_fanin.txt"))
    assert (ids.fanout_id, ids.schedd, ids.fanin_id) == ("38", "bsite@vm", "fanin")
    ids = htcondor.parse_submit(fixture("submit_rescue.txt"))
    assert (ids.fanout_id, ids.schedd, ids.fanin_id) == ("24", "bsite@vm", None)
    assert "Running rescue DAG 1" in fixture("submit_rescue.txt")
    # without our summary line: condor_submit's own line
    raw = fixture("submit_fanin.txt").replace("dagman=38 schedd=bsite@vm fanin=fanin\n", "")
    assert htcondor.parse_submit(raw).fanout_id == "38"
    with pytest.raises(ValueError):
        htcondor.parse_submit("ERROR: no dag file specified; aborting.\n")


# ---------------------------------------------------------------------------- status script

def sub(key="bs-r1", cluster="11", workdir="/home/bsite/bsdag/r1", schedd="bsite@vm", **kw) -> Submission:
    return Submission(key=key, scheduler="htcondor", workdir=workdir, indices=[0, 1, 2, 3], fanout_id=cluster,
                      schedd=schedd, fanin_id="fanin", submitted_at=1795437620.0, **kw)


def test_status_script_commands():
    text = htcondor.render_status_script([sub(), sub(key="bs-r2", cluster="17", workdir="/w/r2"),
                                   sub(key="bs-r3", cluster="40", schedd="bigbird17.cern.ch")])
    assert text.count("bs_run condor_q ") == 2  # one per schedd
    assert ("condor_q -name bsite@vm -json -constraint "
            "'ClusterId == 11 || DAGManJobId == 11 || ClusterId == 17 || DAGManJobId == 17' -attributes ") in text
    assert "condor_q -name bigbird17.cern.ch -json -constraint 'ClusterId == 40 || DAGManJobId == 40'" in text
    assert "-completedsince 1795434020 -limit 120" in text
    assert "bs_run cat /w/r2/bs-r2.status" in text
    assert "@@BATCHSITE exit bs-r3" in text and "/w/r2/status/*.exit" in text
    for attr in ("JobStatus", "HoldReason", "HoldReasonCode", "RemoveReason", "DAGNodeName", "DAG_Status"):
        assert attr in text
    with pytest.raises(ValueError):
        htcondor.render_status_script([sub(cluster="11; rm -rf ~")])
    with pytest.raises(ValueError):
        htcondor.render_status_script([sub(schedd="a b")])


def _history_json() -> str:
    text = fixture("status_failed.txt")
    return text.split("@@BATCHSITE condor_history bsite@vm\n")[1].split("!rc")[0]


def test_status_script_runs_and_asks_history_only_when_needed(tmp_path):
    wd = tmp_path / "r1"
    (wd / "status").mkdir(parents=True)
    (wd / "status" / "0.exit").write_text("0\n")
    (wd / "bs-r1.status").write_text(fixture("nodes_throttled.txt"))
    q = fixture("condor_q_running.txt")  # DAGMan 11 is in the queue
    (tmp_path / "q.json").write_text(q)
    (tmp_path / "htcondor.json").write_text(_history_json())
    env = _fake_tools(tmp_path, {
        "condor_q": f'echo "$@" >> {tmp_path}/q.args; cat {tmp_path}/q.json\n',
        "condor_history": f'echo "$@" >> {tmp_path}/htcondor.args; cat {tmp_path}/htcondor.json\n',
    })
    s = sub(workdir=str(wd))
    script = htcondor.render_status_script([s])
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sec = common.split_sections(out.stdout)
    assert sec[("condor_history", "bsite@vm")].strip() == "!skipped"
    assert not (tmp_path / "htcondor.args").exists()
    st = htcondor_parse.parse_status(out.stdout, [s])["bs-r1"]
    assert {i: u.state for i, u in st.units.items()} == {
        0: JobState.RUNNING, 1: JobState.RUNNING, 2: JobState.WAITING, 3: JobState.WAITING}

    # the DAGMan job left the queue: history is asked (bounded), and says how it ended
    (tmp_path / "q.json").write_text("")
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert "-completedsince 1795434020" in (tmp_path / "htcondor.args").read_text()
    assert "!skipped" not in common.split_sections(out.stdout)[("condor_history", "bsite@vm")]

    # condor_q fails: its stderr and exit code land in its section, the rest still runs
    env2 = _fake_tools(tmp_path, {"condor_q": 'echo "Error: Collector has no record of schedd/submitter" >&2; exit 1\n'})
    out = subprocess.run(["sh", "-c", script], env=env2, capture_output=True, text=True)
    sec = common.split_sections(out.stdout)
    assert sec[("condor_q", "bsite@vm")].splitlines() == [
        "!err Error: Collector has no record of schedd/submitter", "!rc 1"]
    st = htcondor_parse.parse_status(out.stdout, [s])["bs-r1"]
    assert not st.scheduler_ok
    assert st.units[0].state is JobState.DONE  # the exit file is a fact
    assert st.units[1].state is JobState.DONE  # DAGMan's own decision, in its node file
    assert st.units[2].state is JobState.UNKNOWN  # READY: only the queue could say more
    assert "schedd could not be located" in st.note


# ---------------------------------------------------------------------------- parsing captured outputs

def states(st) -> dict[int, tuple]:
    return {i: (u.state, u.exit_code, u.timed_out) for i, u in st.units.items()}


def test_starting_no_node_status_file_yet():
    st = parse_fixture("status_starting.txt")
    assert st.scheduler_ok and st.note == "DAGMan 17 running; no node status file yet"
    assert all(u.state is JobState.WAITING for u in st.units.values())
    assert not st.finished


def test_running_with_stale_node_file_trusts_exit_files():
    """Node file (updated every 2 s) still says SUBMITTED; the jobs left the queue and wrote
    exit codes: 0 is DONE, 1 waits for DAGMan's retry decision (RETRY 1)."""
    st = parse_fixture("status_running.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.WAITING, None, False),
                          2: (JobState.DONE, 0, False), 3: (JobState.WAITING, None, False)}
    assert st.units[1].reason == "attempt exited 1; DAGMan decides about a retry"
    assert st.fanin.state is JobState.WAITING


def test_retrying():
    st = parse_fixture("status_retrying.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.RUNNING, None, False),
                          2: (JobState.DONE, 0, False), 3: (JobState.RUNNING, None, False)}


def test_two_of_four_failed_fanin_futile_rescue_written():
    st = parse_fixture("status_failed.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.FAILED, 1, False),
                          2: (JobState.DONE, 0, False), 3: (JobState.FAILED, 1, False)}
    assert st.units[1].reason == "Job proc (22.0.0) failed with status 1 (after 1 node retries)"
    assert st.units[1].native == "STATUS_ERROR"
    assert (st.fanin.state, st.fanin.reason, st.fanin.native) == (JobState.FAILED, "ancestor failed", "STATUS_FUTILE")
    assert st.note == "DAGMan 17 exited 1 (DAG status 2: node failed); rescue DAG bs-fail-1.dag.rescue001"
    assert st.finished and not st.succeeded and st.failed_indices == [1, 3]


def test_rescue_dag_reruns_only_failed_nodes():
    st = parse_fixture("status_rescue_running.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.RUNNING, None, False),
                          2: (JobState.DONE, 0, False), 3: (JobState.RUNNING, None, False)}
    text = fixture("status_rescue_running.txt")
    # only unit1 and unit3 have jobs in the queue of DAGMan 24
    nodes = [a["DAGNodeName"] for a in htcondor_parse.parse_json_ads(common.parse_run_section(common.split_sections(text)[("condor_q", "bsite@vm")]).stdout)
             if "DAGNodeName" in a]
    assert sorted(nodes) == ["unit1", "unit3"]
    st = parse_fixture("status_rescue_done.txt")
    assert all(u.state is JobState.DONE for u in st.units.values())
    assert st.fanin.state is JobState.DONE and st.succeeded
    assert st.note == "DAGMan 24 exited 0 (DAG status 0: ok)"
    dm = htcondor_parse.parse_dagman_out(common.split_sections(fixture("status_rescue_done.txt"))[("dagman", "bs-fail-1")])
    assert (dm.exit_status, dm.rescue_used, dm.rescue_written) == (0, "bs-fail-1.dag.rescue001", None)


def test_held_node():
    st = parse_fixture("status_node_held.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.HELD, None, False),
                          2: (JobState.RUNNING, None, False)}
    assert st.units[1].reason == "via condor_hold (by user bsite) (HoldReasonCode 1)"
    assert "HoldReason: via condor_hold" in st.progress_line("iter01")
    nsf = htcondor_parse.parse_node_status(common.parse_run_section(common.split_sections(fixture("status_node_held.txt"))[("nodes", "bs-hold-1")]).stdout)
    assert nsf.nodes["unit1"]["JobProcsHeld"] == 1 and nsf.nodes["unit1"]["StatusDetails"] == "idle"
    # from the node file alone (condor_q not showing the job) it is HELD as well
    assert htcondor_parse.node_file_status(nsf.nodes["unit1"]).state is JobState.HELD


def test_removed_dag():
    st = parse_fixture("status_removed.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.FAILED, None, False),
                          2: (JobState.FAILED, None, False)}
    assert st.units[1].reason == ("Was STATUS_SUBMITTED: DAG Removed: User removed scheduler job from queue. "
                                  "(by user bsite)")
    assert st.fanin.state is JobState.FAILED
    assert st.fanin.reason == "DAG removed: cancelled by batchsite (by user bsite)"
    assert st.note == ("DAGMan 28 removed (cancelled by batchsite (by user bsite)); "
                       "rescue DAG bs-hold-1.dag.rescue001")
    assert st.finished


def test_time_limit():
    st = parse_fixture("status_timeout_retrying.txt")
    assert states(st) == {0: (JobState.RUNNING, None, False), 1: (JobState.FAILED, 2, False),
                          2: (JobState.DONE, 0, False)}
    st = parse_fixture("status_timeout_failed.txt")
    # RETRY 2: three attempts each removed by SYSTEM_PERIODIC_REMOVE at MaxRuntime;
    # unit1 exited 2 = RETRY ... UNLESS-EXIT 2: not retried
    assert states(st) == {0: (JobState.FAILED, None, True), 1: (JobState.FAILED, 2, False),
                          2: (JobState.DONE, 0, False)}
    assert st.units[0].reason == ("HTCondor reported ULOG_JOB_ABORTED event for job proc (37.0.0) "
                                  "(after 2 node retries): Job exceeded its MaxRuntime of 60 seconds")
    assert st.fanin.reason == "ancestor failed"


def test_dag_held_and_released():
    st = parse_fixture("status_dag_held.txt")
    assert states(st) == {0: (JobState.RUNNING, None, False), 1: (JobState.RUNNING, None, False),
                          2: (JobState.RUNNING, None, False)}
    assert st.fanin.state is JobState.HELD
    assert st.fanin.reason == "DAGMan job held: via condor_hold (by user bsite)"
    assert st.note.startswith("DAGMan 38 held (via condor_hold (by user bsite))")
    # released, DAGMan idle: the node file is the held dump, the nodes' exit files say done
    st = parse_fixture("status_dag_released.txt")
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.DONE, 0, False),
                          2: (JobState.DONE, 0, False)}
    assert st.fanin.state is JobState.WAITING and not st.finished
    assert st.note == "DAGMan 38 idle (released; restarts in recovery mode)"


def test_schedd_down_is_never_failed_or_vanished():
    st = parse_fixture("status_schedd_down.txt")
    assert not st.scheduler_ok
    assert st.note.startswith("schedd not answering (condor_q failed: Error: Couldn't contact the condor_collector")
    assert "collector (central manager) is not answering" in st.note
    # exit files (0) are facts; nothing else is concluded
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.DONE, 0, False),
                          2: (JobState.DONE, 0, False)}
    assert st.fanin.state is JobState.UNKNOWN and not st.finished
    # with no exit files at all: UNKNOWN, never VANISHED/FAILED
    text = fixture("status_schedd_down.txt").split("@@BATCHSITE exit")[0]
    s = fixture_submission("status_schedd_down.txt")
    st = htcondor_parse.parse_status(text, [s])[s.key]
    assert {u.state for u in st.units.values()} == {JobState.UNKNOWN}


def test_empty_output_is_unknown():
    s = fixture_submission("status_failed.txt")
    st = htcondor_parse.parse_status("", [s])[s.key]
    assert not st.scheduler_ok and {u.state for u in st.units.values()} == {JobState.UNKNOWN}


def test_dag_gone_without_any_record_is_vanished():
    s = sub()
    text = "@@BATCHSITE condor_q bsite@vm\n!rc 0\n@@BATCHSITE condor_history bsite@vm\n[\n]\n!rc 0\n"
    st = htcondor_parse.parse_status(text, [s])["bs-r1"]
    assert st.scheduler_ok and {u.state for u in st.units.values()} == {JobState.VANISHED}
    assert "not in the queue" in st.note


def test_node_status_file_format():
    nsf = htcondor_parse.parse_node_status(fixture("nodes_throttled.txt"))
    assert not nsf.final and nsf.dag["DagStatus"] == 3 and nsf.dag["DagFiles"] == ["bs-ok-1.dag"]
    assert {n: a["NodeStatus"] for n, a in nsf.nodes.items()} == {
        "unit0": 5, "unit1": 5, "unit2": 1, "unit3": 1, "fanin": 0}
    assert htcondor_parse.node_file_status(nsf.nodes["unit2"]).reason == "ready (throttled or waiting to be submitted)"
    done = htcondor_parse.parse_node_status(fixture("nodes_done.txt"))
    assert done.final and done.end["NextUpdate"] == 0
    assert {a["NodeStatus"] for a in done.nodes.values()} == {5}
    # partial / truncated files are ignored, never half-read
    text = fixture("nodes_done.txt")
    assert htcondor_parse.parse_node_status(text[: len(text) // 2]) is None
    assert htcondor_parse.parse_node_status(text[: text.index('Type = "StatusEnd"')]) is None
    assert htcondor_parse.parse_node_status("") is None


def test_condor_q_json():
    ads = htcondor_parse.parse_json_ads(fixture("condor_q_running.txt"))
    dag = [a for a in ads if a.get("JobUniverse") == 7]
    assert len(dag) == 1 and dag[0]["ClusterId"] == 11 and dag[0]["JobBatchName"] == "bs-ok-1"
    nodes = {a["DAGNodeName"]: a for a in ads if a.get("DAGManJobId") == 11}
    assert set(nodes) == {"unit0", "unit1"} and nodes["unit0"]["BatchsiteIndex"] == 0
    assert htcondor_parse.queue_job_status(nodes["unit0"]).state is JobState.RUNNING
    assert htcondor_parse.parse_json_ads("") == [] and htcondor_parse.parse_json_ads("[\n]\n") == []
    assert htcondor_parse.parse_json_ads('[\n{\n  "ClusterId": 1') is None


def test_job_ads():
    held = {"JobStatus": 5, "HoldReason": "Job exceeded allowed job duration", "HoldReasonCode": 46,
            "HoldReasonSubCode": 0}
    st = htcondor_parse.queue_job_status(held)
    assert st.state is JobState.HELD and st.timed_out
    lxplus = {"JobStatus": 3, "LastJobStatus": 2,
              "RemoveReason": "Job removed by SYSTEM_PERIODIC_REMOVE due to wall time exceeded allowed max."}
    st = htcondor_parse.history_job_status(lxplus)
    assert st.state is JobState.FAILED and st.timed_out
    stale_hold = {"JobStatus": 3, "LastJobStatus": 5, "RemoveReason": "Job was held for more than 86400 seconds"}
    assert not htcondor_parse.history_job_status(stale_hold).timed_out
    assert htcondor_parse.history_job_status({"JobStatus": 4, "ExitCode": 0}).state is JobState.DONE
    st = htcondor_parse.history_job_status({"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9})
    assert (st.state, st.exit_code) == (JobState.FAILED, 137)


def test_metrics_and_dagman_out():
    sec = common.split_sections(fixture("status_failed.txt"))
    m = htcondor_parse.parse_metrics(sec[("metrics", "bs-fail-1")], "17")
    assert (m["exitcode"], m["DagStatus"], m["nodes_failed"], m["dagman_id"]) == (1, 2, 2, "17")
    assert m["jobs_failed"] == 0  # counts nothing useful: failures come from nodes
    assert htcondor_parse.parse_metrics(sec[("metrics", "bs-fail-1")], "99") is None  # another run's file
    dm = htcondor_parse.parse_dagman_out(sec[("dagman", "bs-fail-1")])
    assert (dm.exit_status, dm.rescue_written, dm.dag_status) == (1, "bs-fail-1.dag.rescue001", "2 (DAG_STATUS_NODE_FAILED)")
    assert fixture("rescue001.txt").splitlines()[-2:] == ["DONE unit0", "DONE unit2"]
    assert "#   unit1,unit3,<ENDLIST>" in fixture("rescue001.txt")


def test_two_rounds_one_poll():
    """Two rounds on one schedd, one status script, one output (captured)."""
    subs = fixture_submissions("status_two_rounds.txt")
    out = htcondor_parse.parse_status(fixture("status_two_rounds.txt"), subs)
    assert set(out) == {s.key for s in subs}
    a, b = (out[s.key] for s in subs)
    assert a.scheduler_ok and b.scheduler_ok
    assert states(a) == {0: (JobState.DONE, 0, False), 1: (JobState.DONE, 0, False), 2: (JobState.DONE, 0, False)}
    assert a.fanin.state is JobState.WAITING
    assert states(b) == {0: (JobState.DONE, 0, False), 1: (JobState.RUNNING, None, False)}
    assert b.fanin is None  # bs-two-2 has no fan-in
    out = htcondor_parse.parse_status(fixture("status_two_rounds_final.txt"), subs)
    a, b = (out[s.key] for s in subs)
    assert a.succeeded and a.note == "DAGMan 47 exited 0 (DAG status 0: ok)"
    assert states(b) == {0: (JobState.DONE, 0, False), 1: (JobState.FAILED, 1, False)}
    assert b.finished and b.note == "DAGMan 48 exited 1 (DAG status 2: node failed); rescue DAG bs-two-2.dag.rescue001"


def test_named_nodes_map_back_to_indices():
    s = sub(key="bs-n", cluster="5")
    s = s.model_copy(update={"indices": [0, 1]})
    nodes = "\n".join([
        "[", ' Type = "DagStatus"; DagStatus = 3;', "]",
        "[", ' Type = "NodeStatus"; Node = "reco_00400"; NodeStatus = 5; StatusDetails = ""; RetryCount = 0;'
             " JobProcsQueued = 0; JobProcsHeld = 0;", "]",
        "[", ' Type = "NodeStatus"; Node = "reco_00401"; NodeStatus = 6;'
             ' StatusDetails = "Job proc (7.0.0) failed with status 4"; RetryCount = 0; JobProcsQueued = 0;'
             " JobProcsHeld = 0;", "]",
        "[", ' Type = "StatusEnd"; EndTime = 1; NextUpdate = 0;', "]",
    ])
    text = "\n".join([
        "@@BATCHSITE condor_q bsite@vm", "!rc 0", "@@BATCHSITE condor_history bsite@vm", "[", "]", "!rc 0",
        "@@BATCHSITE nodes bs-n", nodes, "!rc 0", "@@BATCHSITE map bs-n", "0 reco_00400", "1 reco_00401",
    ])
    st = htcondor_parse.parse_status(text, [s])["bs-n"]
    assert states(st) == {0: (JobState.DONE, 0, False), 1: (JobState.FAILED, 4, False)}


# ---------------------------------------------------------------------------- cancel / find / probe

def test_cancel_script(tmp_path):
    text = htcondor.render_cancel_script([sub(cluster="28"), sub(key="b", cluster="30"),
                                   sub(key="c", cluster="40", schedd=None)])
    assert "condor_rm -name bsite@vm -reason 'cancelled by batchsite' 28 30 2>&1" in text
    assert "condor_rm -reason 'cancelled by batchsite' 40 2>&1" in text
    gone = fixture("cancel_gone.txt")
    assert "Couldn't find/remove all jobs in cluster 28" in gone and "condor_rm exit 1" in gone
    env = _fake_tools(tmp_path, {"condor_rm": "echo; echo \"Couldn't find/remove all jobs in cluster 28\" >&2; exit 1\n"})
    p = subprocess.run(["sh", "-c", htcondor.render_cancel_script([sub(cluster="28")])], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "condor_rm exit 1" in p.stdout
    assert "All jobs in cluster 28 have been marked for removal" in fixture("cancel.txt")
    assert htcondor.render_cancel_script([]) == "true\n"


def test_find_script_asks_queue_and_history_of_the_schedd(tmp_path):
    """The find script: condor_q AND condor_history by batch name, both with -name of the
    configured schedd; the history bounded by -completedsince (the lock's epoch less 1 h)."""
    wd = tmp_path / "find2"
    (wd / ".batchsite" / "lock").mkdir(parents=True)
    (wd / ".batchsite" / "lock" / "owner").write_text("vm 4242 1796543000\n")
    b = htcondor.HTCondorBackend(schedd="bsite@vm")
    s = spec(wd, key="bs-find-2")
    script = b.render_find_script(s)
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    log = tmp_path / "args"
    env = _fake_tools(tmp_path, {tool: f'echo "{tool} $*" >> {log}\n' for tool in ("condor_q", "condor_history")})
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    c = 'JobBatchName == "bs-find-2" && JobUniverse == 7'
    assert log.read_text().splitlines() == [
        f"condor_q -name bsite@vm -constraint {c} -af ClusterId GlobalJobId",
        f"condor_history -name bsite@vm -constraint {c} -completedsince 1796539400 -af ClusterId GlobalJobId"]
    # no lock to date the submission: 30 days of history; the default schedd: no -name
    (wd / ".batchsite" / "lock" / "owner").unlink()
    log.unlink()
    subprocess.run(["sh", "-c", htcondor.HTCondorBackend().render_find_script(s)], env=env, check=True,
                   capture_output=True)
    hist = log.read_text().splitlines()[1].split()
    assert "-name" not in hist and abs(int(hist[hist.index("-completedsince") + 1]) - (time.time() - 30 * 86400)) < 60
    with pytest.raises(ValueError):
        htcondor.render_find_by_batch_name_script("x'; rm -rf ~")
    with pytest.raises(ValueError, match="not a schedd name"):
        htcondor.render_find_by_batch_name_script("bs-r1", "a b")


def test_parse_find_on_captured_outputs():
    b = htcondor.HTCondorBackend(schedd="bsite@vm")
    ids = b.parse_find(fixture("find_by_batch_name.txt"), spec(key="bs-find-2"))  # queued
    assert (ids.fanout_id, ids.schedd, ids.fanin_id) == ("152", "bsite@vm", "fanin")
    assert b.parse_find(fixture("find_by_batch_name.txt"), spec(key="bs-find-2", fanin=None)).fanin_id is None
    assert b.parse_find(fixture("find_by_batch_name_none.txt"), spec(key="bs-nosuch-1")) is None
    # finished and left the queue: the history has it (the old lookup asked condor_q only)
    ids = b.parse_find(fixture("find_in_history.txt"), spec(key="bs-hist-8783d1a1"))
    assert (ids.fanout_id, ids.schedd) == ("140", "bsite@vm")
    # a rescued round: DAGMan 11 is record 1's, so the lost submission is DAGMan 20
    assert b.parse_find(fixture("find_earlier_record.txt"), spec(key="bs-flaky-a7990b8af804")).fanout_id == "20"
    # the record reads back the same
    assert htcondor.parse_submit(b.format_submit(ids)) == ids
    assert htcondor.parse_submit(b.format_submit(htcondor.SubmitIds("5"))) == htcondor.SubmitIds("5")


def test_parse_find_never_guesses():
    key = "bs-flaky-a7990b8af804"
    # without record 1, DAGMan 11 and 20 both carry the name
    two = fixture("find_earlier_record.txt").split("@@BATCHSITE record 1")[0]
    with pytest.raises(ValueError, match=r"more than one DAGMan job carries the batch name .*\['11', '20'\]"):
        htcondor_parse.parse_find_by_batch_name(two, key)
    # DAGMan 140 ran in the directory (Workflow batch-id), no record names it, neither the queue
    # nor the (bounded) history has it: an error naming the `schedd` extra, never a second submission
    with pytest.raises(ValueError, match=r"DAGMan job 140 ran in the round's directory.*`schedd` extra"):
        htcondor_parse.parse_find_by_batch_name(fixture("find_unrecorded_run.txt"), "bs-hist-8783d1a1")
    # the same with an older DAGMan that writes no batch-id line: one start, no record
    old = fixture("find_unrecorded_run.txt").replace("batch-id 140\n", "")
    with pytest.raises(ValueError, match="a DAGMan job ran in the round's directory"):
        htcondor_parse.parse_find_by_batch_name(old, "bs-hist-8783d1a1")
    # a failing condor_q or condor_history is "could not look", with the hint
    with pytest.raises(ValueError, match=r"could not look up .*\(condor_q\): Error: Collector has no record"):
        htcondor_parse.parse_find_by_batch_name(fixture("find_no_such_schedd.txt"), "bs-hist-8783d1a1")
    hist_down = fixture("find_in_history.txt").replace(
        "140 bsite@vm#140.0#1796543408\n!rc 0", "!err Unable to locate remote schedd (name=nosuch@vm, pool=).\n!rc 1")
    with pytest.raises(ValueError, match=r"\(condor_history\): Unable to locate remote schedd"):
        htcondor_parse.parse_find_by_batch_name(hist_down, "bs-hist-8783d1a1")
    # a section missing altogether (the script was cut short) is not "none" either
    with pytest.raises(ValueError, match="could not look up"):
        htcondor_parse.parse_find_by_batch_name(fixture("find_by_batch_name_none.txt").split("@@BATCHSITE findhist")[0],
                                                "bs-nosuch-1")


def test_configured_schedd_groups_records_without_a_name(tmp_path):
    """The connection's schedd: a record that names none is asked there, in the same ONE
    condor_q as the rounds whose records name it; other schedds get their own."""
    subs = [sub(cluster="11"), sub(key="bs-r2", cluster="12", schedd=None),
            sub(key="bs-r3", cluster="40", schedd="bigbird17.cern.ch")]
    b = htcondor.HTCondorBackend(schedd="bsite@vm")
    text = b.render_status_script(subs)
    assert text.count("bs_run condor_q ") == 2
    assert "condor_q -name bsite@vm -json -constraint 'ClusterId == 11 || DAGManJobId == 11 || ClusterId == 12" in text
    assert "condor_q -name bigbird17.cern.ch " in text and "bs_run condor_q -json" not in text
    assert "condor_rm -name bsite@vm -reason 'cancelled by batchsite' 11 12 2>&1" in b.render_cancel_script(subs)
    assert "condor_release -name bsite@vm " in b.render_release_script(subs[1:2])
    # and the answer is read from that section
    unnamed = [x.model_copy(update={"schedd": None}) for x in fixture_submissions("status_two_rounds.txt")]
    named = htcondor_parse.parse_status(fixture("status_two_rounds.txt"), fixture_submissions("status_two_rounds.txt"))
    assert b.parse_status(fixture("status_two_rounds.txt"), unnamed) == named
    # the configured schedd submits through _CONDOR_SCHEDD_HOST (condor_submit_dag has no -name)
    assert "\nschedd=bsite@vm\n" in b.render_round(spec(tmp_path)).submit_script
    assert "\nschedd=''\n" in htcondor.HTCondorBackend().render_round(spec(tmp_path)).submit_script


def test_submit_script_exports_the_configured_schedd(tmp_path):
    r = htcondor.HTCondorBackend(schedd="bsite@vm").render_round(spec(tmp_path))
    (tmp_path / "submit.sh").write_text(r.submit_script)
    env = _fake_tools(tmp_path, {
        "condor_submit_dag": f'echo "$_CONDOR_SCHEDD_HOST $*" > {tmp_path}/csd.args; echo "1 job(s) submitted to cluster 7."\n',
        "condor_q": f'echo "$_CONDOR_SCHEDD_HOST $*" > {tmp_path}/q.args; echo "bsite@vm#7.0#1795437964"\n',
    })
    p = subprocess.run(["sh", "./submit.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "csd.args").read_text() == "bsite@vm -batch-name bs-r1 bs-r1.dag\n"
    assert (tmp_path / "q.args").read_text() == "bsite@vm 7 -af GlobalJobId\n"
    assert p.stdout.splitlines()[-1] == "dagman=7 schedd=bsite@vm fanin=fanin"


def test_schedd_extra_is_validated_and_reaches_the_backend():
    from batchsite.config import SiteConfigError, site_config_from_connection
    from batchsite.get_provider_info import connection_fields
    from batchsite.sitebuild import backend_for

    extra = {"scheduler": "htcondor", "remote_root": "/home/u/bs", "schedd": "bigbird17.cern.ch"}
    cfg = site_config_from_connection("c", "lxplus.cern.ch", 22, "u", extra)
    assert backend_for(cfg).schedd == "bigbird17.cern.ch"
    with pytest.raises(SiteConfigError, match=r"schedd: .*'a b; x' is not a schedd name"):
        site_config_from_connection("c", "h", 22, "u", {**extra, "schedd": "a b; x"})
    with pytest.raises(SiteConfigError, match="schedd='bigbird17.cern.ch' is an HTCondor extra but scheduler='slurm'"):
        site_config_from_connection("c", "h", 22, "u", {**extra, "scheduler": "slurm"})
    # spool is gone: refused as an unknown extra, and not in the connection form
    with pytest.raises(SiteConfigError, match="spool: unknown extra"):
        site_config_from_connection("c", "h", 22, "u", {**extra, "spool": True})
    fields, _ = connection_fields()
    assert "spool" not in fields and "_CONDOR_SCHEDD_HOST" in fields["schedd"]["description"]


def test_probe():
    text = "@@BATCHSITE version -\n$CondorVersion: 25.13.2 2026-11-23 $\n$CondorPlatform: X86_64-Debian_12 $\n!rc 0\n" \
           "@@BATCHSITE klist -\n!rc 1\n"
    assert htcondor_parse.parse_probe(text) == ("25.13.2", False)
    assert htcondor_parse.parse_probe("@@BATCHSITE klist -\n!skipped\n") == (None, None)
    b = htcondor.HTCondorBackend()
    b.apply_probe(text)
    assert b.version == "25.13.2" and b.kerberos_ok is False
    assert "klist -s" in b.probe_script()


# ---------------------------------------------------------------------------- Kerberos / AFS

# These texts cannot be produced on the test pool (FS authentication, no Kerberos, no AFS).
# Sources: tests/data/htcondor/README.md ("Kerberos / AFS texts").
@pytest.mark.parametrize("text, words", [
    ("-- Failed to fetch ads from: <188.184.0.1:9618?addrs=...> : bigbird17.cern.ch\n"
     "AUTHENTICATE:1003:Failed to authenticate with any method\n"
     "AUTHENTICATE:1004:Failed to authenticate using KERBEROS", "no valid Kerberos ticket"),
    ("AUTHENTICATE:1003:Failed to authenticate with any method", "no valid Kerberos ticket"),
    ("GSSAPI continuation error: No Kerberos credentials available (default cache: FILE:/tmp/krb5cc_1000)",
     "no valid Kerberos ticket"),
    ("klist: No credentials cache found (filename: /tmp/krb5cc_12345)", "no valid Kerberos ticket"),
    ("Failed to process job credential requests (1): 'ERROR: store_cred of Kerberos credential failed - "
     "The credmon did not process credentials within the timeout period'; BAILING OUT.", "credmon timeout"),
    ("aklog: Couldn't get cern.ch AFS tickets:\naklog: unknown RPC error (-1765328377) while getting AFS tickets",
     "no AFS token"),
    ("mkdir: cannot create directory '/afs/cern.ch/user/b/bsite/rounds': Permission denied", "no AFS token"),
    ("\nERROR: Can't find address of local schedd", "usually means an expired Kerberos ticket"),
    ("Error: \n\nExtra Info: You probably saw this error because the condor_schedd is not \n"
     "running on the machine you are trying to query.", "usually means an expired Kerberos ticket"),
    ("-- Failed to fetch ads from: <137.138.120.116:9618?...> : bigbird11.cern.ch\n"
     "SECMAN:2007:Failed to end classad message.", "transient"),
])
def test_diagnose_credentials(text, words):
    msg = htcondor_parse.diagnose_credentials(text)
    assert msg is not None and words in msg
    if "Kerberos" in words or "AFS" in words:
        assert "25 h" in msg and "kinit -kt" in msg


@pytest.mark.parametrize("name", ["condor_q_no_such_schedd.txt", "condor_q_unknown_schedd_host.txt",
                                  "condor_history_no_such_schedd.txt"])
def test_diagnose_captured_schedd_errors(name):
    assert "schedd could not be located" in htcondor_parse.diagnose_credentials(fixture(name))


def test_diagnose_nothing_known():
    assert htcondor_parse.diagnose_credentials("ERROR: no dag file specified; aborting.") is None
    assert htcondor.HTCondorBackend().diagnose("") is None
    assert "Kerberos" in htcondor.HTCondorBackend().diagnose("AUTHENTICATE:1003:Failed to authenticate with any method")


@pytest.mark.parametrize("name", ["condor_q_no_such_schedd.txt", "condor_history_no_such_schedd.txt"])
def test_diagnose_a_configured_schedd_names_the_extra(name):
    hint = htcondor.HTCondorBackend(schedd="nosuch@vm").diagnose(fixture(name))
    assert "'nosuch@vm' named by the site connection's `schedd` extra could not be located" in hint
    assert "the schedd recorded" not in hint
    # without the extra: the general hint
    assert "schedd could not be located" in htcondor.HTCondorBackend().diagnose(fixture(name))


def test_fixture_headers():
    for p in sorted(DATA.glob("*.txt")):
        lines = p.read_text().splitlines()
        assert lines[0].startswith("# command: "), p.name
        assert re.fullmatch(r"# captured: 2026-1[12]-\d\d HTCondor 25.13.2 personal pool", lines[1]), p.name
    assert json.loads((DATA / "status_failed.txt").read_text().splitlines()[2][len("# submission: "):])["fanout_id"] == "17"
