"""Rounds of 10,000+ units (issue 15): Slurm arrays split under the site's MaxArraySize, the
node status file read ad by ad, O(1)-sized payloads for Airflow.

Parsers are checked on the outputs captured from the real test site (tests/data/); the
rendered submit.sh runs under sh with stand-in ``sbatch``/``scancel`` that hand out
increasing job ids, as slurmctld does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import classad2
import pytest

from batchsite.backends import common, htcondor, htcondor_parse, slurm, slurm_parse
from batchsite.backends.slurm_parse import SlurmLimits
from batchsite.model import (
    JobState, RoundDigest, RoundSpec, RoundStatus, Submission, TaskStatus, UnitTemplate, WorkUnit, expand_ranges,
    index_ranges,
)
from batchsite.rounds import RoundRequest

from .test_slurm import _run_submit, _stub

DATA = Path(__file__).resolve().parents[2] / "data"


def fixture(path: str) -> str:
    lines = (DATA / path).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def spec(n: int, **kw) -> RoundSpec:
    base = dict(key="bs-big-1", label="big", workdir="/w/bs-big-1",
                units=[WorkUnit(index=i, argv=["true", str(i)]) for i in range(n)])
    base.update(kw)
    return RoundSpec(**base)


# ---------------------------------------------------------------------------- Slurm limits and arrays

def test_limits_come_from_the_sites_scontrol_show_config():
    text = fixture("slurm/probe_config.txt")
    assert slurm_parse.parse_limits(text) == SlurmLimits(max_array_size=1001, max_array_tasks=None,
                                                         max_script_size=4 * 1024 * 1024)
    assert slurm_parse.parse_probe(text) is True  # the accounting answer is still read
    tuned = text.replace("SchedulerParameters     = batch_sched_delay=0",
                         "SchedulerParameters     = batch_sched_delay=0,max_array_tasks=300,max_script_size=65536")
    tuned = tuned.replace("MaxArraySize            = 1001", "MaxArraySize            = 40001")
    assert tuned != text
    limits = slurm_parse.parse_limits(tuned)
    assert (limits.max_array_size, limits.max_array_tasks, limits.max_script_size, limits.window) == \
        (40001, 300, 65536, 300)
    # no config section (an old probe, slurmctld down): Slurm's defaults
    assert slurm_parse.parse_limits(fixture("slurm/probe_accounting.txt")) == SlurmLimits()


def test_backend_renders_with_the_probed_limits():
    b = slurm.SlurmBackend()
    assert len(b.render_round(spec(2500)).files["arrays.txt"].splitlines()) == 3  # defaults before a probe
    b.apply_probe(fixture("slurm/probe_config.txt").replace("MaxArraySize            = 1001",
                                                           "MaxArraySize            = 501"))
    assert [ln.split()[0] for ln in b.render_round(spec(2500)).files["arrays.txt"].splitlines()] == \
        ["0", "501", "1002", "1503", "2004"]


@pytest.mark.parametrize("n", [1001, 1002, 10_000, 50_000])
def test_every_array_stays_under_max_array_size_and_covers_each_unit_once(n):
    r = slurm.render_round(spec(n, fanin=["true"], throttle=8))
    rows = [ln.split() for ln in r.files["arrays.txt"].splitlines()]
    covered = []
    for offset, array in rows:
        tasks = slurm_parse.expand_indices(array)
        assert array.endswith("%8") and max(tasks) <= 1000 and len(tasks) <= 1001
        covered += [int(offset) + t for t in tasks]
    assert covered == list(range(n))
    assert len(rows) == -(-n // 1001)
    # unit.sh does not grow with the units: far under max_script_size at 50,000
    assert len(r.files["unit.sh"]) < 4096 and r.files["units.tab"].count("\n") == n


def test_sparse_rescue_keeps_one_array_per_window():
    chunks = slurm.array_chunks([5, 3000, 3001, 7007], SlurmLimits())
    assert chunks == [(0, [5]), (2002, [998, 999]), (7007, [0])]
    assert slurm.array_chunks(range(10), SlurmLimits(max_array_tasks=4)) == [(0, [0, 1, 2, 3]), (4, [0, 1, 2, 3]),
                                                                             (8, [0, 1])]


def test_unit_script_over_max_script_size_is_refused_naming_the_cause():
    with pytest.raises(ValueError, match="max_script_size"):
        slurm.render_round(spec(3, env={"BIG": "x" * 5000}), SlurmLimits(max_script_size=4096))


# ---------------------------------------------------------------------------- submit.sh with several arrays

@pytest.fixture
def slurmctld(tmp_path):
    """sbatch hands out 200, 201, ... (FAIL_AT=<k>: the k-th call fails); calls.log has every argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    _stub(bindir, "sbatch", f"""n=$(cat {tmp_path}/n 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {tmp_path}/n
echo "sbatch $*" >> {log}
[ "$n" = "${{FAIL_AT:-0}}" ] && {{ echo "sbatch: error: Batch job submission failed" >&2; exit 1; }}
echo "$((199 + n));cluster"
""")
    _stub(bindir, "scancel", f'echo "scancel $*" >> {log}\n')
    return tmp_path, {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}, log


def test_submit_splits_the_round_and_the_fanin_waits_for_every_array(slurmctld):
    tmp_path, env, log = slurmctld
    r = _run_submit(tmp_path, env, spec(2500, fanin=["true"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "array=200,201@1001,202@2002 fanin=203\n"
    assert log.read_text().splitlines() == [
        "sbatch --parsable --array=0-1000 unit.sh 0",
        "sbatch --parsable --array=0-1000 unit.sh 1001",
        "sbatch --parsable --array=0-497 unit.sh 2002",
        "sbatch --parsable --dependency=afterok:200:201:202 fanin.sh",
    ]
    ids = slurm_parse.parse_submit(r.stdout)
    assert ids == slurm_parse.SubmitIds("200,201@1001,202@2002", "203")
    assert slurm_parse.arrays_of(ids.fanout_id) == [("200", 0), ("201", 1001), ("202", 2002)]
    sub = Submission(key="bs-big-1", scheduler="slurm", workdir="/w", indices=list(range(2500)),
                     fanout_id=ids.fanout_id, fanin_id=ids.fanin_id)
    assert slurm_parse.job_ids([sub]) == ["200", "201", "202", "203"]
    assert slurm.render_cancel_script([sub]).startswith("scancel 200 201 202 203")


def test_a_throttled_round_runs_its_arrays_one_after_the_other(slurmctld):
    tmp_path, env, log = slurmctld
    r = _run_submit(tmp_path, env, spec(2100, throttle=4))
    assert r.stdout == "array=200,201@1001,202@2002\n"
    assert log.read_text().splitlines() == [
        "sbatch --parsable --array=0-1000%4 unit.sh 0",
        "sbatch --parsable --array=0-1000%4 --dependency=afterany:200 unit.sh 1001",
        "sbatch --parsable --array=0-97%4 --dependency=afterany:201 unit.sh 2002",
    ]


@pytest.mark.parametrize("fail_at, rc", [(3, 1), (4, 2)])
def test_a_failed_sbatch_cancels_every_array_already_submitted(slurmctld, fail_at, rc):
    tmp_path, env, log = slurmctld
    r = _run_submit(tmp_path, env, spec(2500, fanin=["true"]), FAIL_AT=str(fail_at))
    assert r.returncode == rc and "array=" not in r.stdout
    submitted = [str(199 + k) for k in range(1, fail_at)]
    assert log.read_text().splitlines()[-1] == f"scancel {' '.join(submitted)}"
    assert [ln for ln in r.stderr.splitlines() if "cancelling array" in ln] == \
        [f"batchsite: cancelling array {a}" for a in submitted]
    # the find script's reading of this failed attempt: none of its arrays is the round's
    squeue = "".join(f"{a}_0|CANCELLED|None|bs-big-1\n" for a in submitted)
    text = (f"@@BATCHSITE squeue -\n{squeue}!rc 0\n@@BATCHSITE failed -\nsubmit.sh exited {rc} at 1\n"
            + r.stderr)
    assert slurm_parse.parse_find_by_name(text, [0, 1001, 2002]) is None


def test_unit_sh_turns_task_id_and_offset_into_the_unit_index(tmp_path):
    s = spec(2500, workdir=str(tmp_path))
    r = slurm.render_round(s)
    for name in ("unit.sh", "units.tab"):
        (tmp_path / name).write_text(r.files[name])
    run = subprocess.run(["bash", "unit.sh", "2002"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "SLURM_ARRAY_TASK_ID": "497"}, timeout=30)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "status" / "2499.exit").read_text() == "0\n"


# ---------------------------------------------------------------------------- status and find with several arrays

def _status_lines(arrays, failed=()):
    q, a = [], []
    for array_id, offset, n in arrays:
        for t in range(n):
            st = "FAILED" if offset + t in failed else "COMPLETED"
            q.append(f"{array_id}_{t}|{st}|None|bs-big-1")
            a.append(f"{array_id}_{t}|{st}|{'3:0' if offset + t in failed else '0:0'}|None|bs-big-1")
    return q, a


def test_status_maps_each_arrays_tasks_back_to_unit_indices():
    q, a = _status_lines([("200", 0, 1001), ("201", 1001, 1001), ("202", 2002, 498)], failed={5, 1006, 2499})
    text = "\n".join(["@@BATCHSITE squeue -", *q[:1500], "203|PENDING|DependencyNeverSatisfied|bs-big-1", "!rc 0",
                      "@@BATCHSITE sacct -", *a, "203|PENDING|0:0|DependencyNeverSatisfied|bs-big-1", "!rc 0"])
    sub = Submission(key="bs-big-1", scheduler="slurm", workdir="/w", indices=list(range(2500)),
                     fanout_id="200,201@1001,202@2002", fanin_id="203")
    st = slurm_parse.parse_status(text, [sub])["bs-big-1"]
    assert st.scheduler_ok and len(st.units) == 2500
    assert st.failed_indices == [5, 1006, 2499]
    assert st.counts()["done"] == 2497 and st.finished and not st.succeeded
    assert st.units[1006].exit_code == 3


def test_find_assigns_the_offsets_in_submission_order_and_refuses_half_a_submission():
    s = spec(2500, fanin=["true"])
    b = slurm.SlurmBackend()
    squeue = "".join(f"{a}_0|RUNNING|None|bs-big-1\n" for a in ("202", "200", "201")) + "203|PENDING|Dependency|bs-big-1\n"
    text = f"@@BATCHSITE squeue -\n{squeue}!rc 0\n"
    assert b.parse_find(text, s) == slurm_parse.SubmitIds("200,201@1001,202@2002", "203")
    assert b.parse_submit(b.format_submit(b.parse_find(text, s))) == b.parse_find(text, s)
    with pytest.raises(ValueError, match="only 2 of the round's 3 job arrays"):
        b.parse_find("@@BATCHSITE squeue -\n200_0|RUNNING|None|k\n201_0|RUNNING|None|k\n!rc 0\n", s)
    with pytest.raises(ValueError, match="no fan-in job"):
        b.parse_find("@@BATCHSITE squeue -\n200_0|RUNNING|None|k\n201_0|RUNNING|None|k\n202_0|RUNNING|None|k\n!rc 0\n", s)


# ---------------------------------------------------------------------------- HTCondor node status file

def _captured_node_status_files() -> list[tuple[str, str]]:
    out = []
    for f in sorted((DATA / "htcondor").glob("*.txt")):
        if f.name in ("nodes_done.txt", "nodes_throttled.txt"):
            out.append((f.name, fixture(f"htcondor/{f.name}")))
            continue
        for (name, _key), body in common.split_sections(fixture(f"htcondor/{f.name}")).items():
            if name == "nodes" and body.strip():
                out.append((f.name, common.parse_run_section(body).stdout))
    return out


def test_node_status_reader_agrees_with_classad2_on_every_captured_file():
    files = _captured_node_status_files()
    assert len(files) >= 15
    for name, text in files:
        reference = [{k: v for k, v in dict(ad).items()
                      if isinstance(v, (int, str, float, bool)) or (isinstance(v, list) and all(isinstance(x, str) for x in v))}
                     for ad in classad2.parseAds(text, classad2.ParserType.New)]
        assert htcondor_parse.parse_node_status_ads(text) == reference, name


def test_a_node_status_file_cut_anywhere_is_incomplete_never_wrong():
    text = fixture("htcondor/nodes_done.txt")
    assert htcondor_parse.parse_node_status(text).final
    for cut in range(0, len(text) - 2, 7):
        nsf = htcondor_parse.parse_node_status(text[:cut])
        assert nsf is None, cut  # DAGMan rewrites it in place: only a whole file counts


def test_status_of_a_50000_node_dag():
    n = 50_000
    ads = [f'[\n  Type = "NodeStatus";\n  Node = "unit{i}";\n  NodeStatus = {6 if i % 1000 == 3 else 5}; /* "x" */\n'
           f'  StatusDetails = "{"Job proc (9.0.0) failed with status 2" if i % 1000 == 3 else ""}";\n'
           '  RetryCount = 0;\n  JobProcsQueued = 0;\n  JobProcsHeld = 0;\n]' for i in range(n)]
    ads.append('[\n  Type = "StatusEnd";\n  EndTime = 1;\n  NextUpdate = 0; /* "none" */\n]')
    text = "\n".join(["@@BATCHSITE condor_q -", "!rc 0", "@@BATCHSITE condor_history -", "[", "]", "!rc 0",
                      "@@BATCHSITE nodes bs-big-1", *ads, "!rc 0"])
    sub = Submission(key="bs-big-1", scheduler="htcondor", workdir="/w", indices=list(range(n)), fanout_id="9")
    st = htcondor_parse.parse_status(text, [sub])["bs-big-1"]
    assert st.failed_indices == list(range(3, n, 1000)) and st.units[3].exit_code == 2
    assert st.counts()["done"] == n - 50


def _history_constraint(cluster: str, node_status_text: str | None, tmp_path) -> str:
    path = tmp_path / f"dag{cluster}.status"
    if node_status_text is not None:
        path.write_text(node_status_text)
    script = htcondor.HISTORY_HELPER + f'\nbs_history_constraint {cluster} "{path}"\n'
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return r.stdout


def test_a_finished_dags_history_is_asked_for_the_dagman_job_and_the_nodes_not_done(tmp_path):
    """The history of a DAG that left the queue: its DAGMan job and the node jobs the node status
    file does not call STATUS_DONE; the 10,000 done nodes' ads (5 MB of JSON) stay on the site."""
    assert _history_constraint("77", fixture("htcondor/nodes_done.txt"), tmp_path) == "ClusterId == 77"
    failed = common.split_sections(fixture("htcondor/status_failed.txt"))
    nodes = failed[("nodes", next(k for t, k in failed if t == "nodes"))]
    assert _history_constraint("78", nodes, tmp_path) == \
        'ClusterId == 78 || (DAGManJobId == 78 && member(DAGNodeName, {"unit1","unit3","fanin"}))'
    # no node status file (the DAG died before writing one), or an empty one: every job, as before
    assert _history_constraint("79", None, tmp_path) == "ClusterId == 79 || DAGManJobId == 79"
    assert _history_constraint("81", "", tmp_path) == "ClusterId == 81 || DAGManJobId == 81"
    # more than 1000 nodes left: one plain constraint instead of a huge member() list
    many = "".join(f'[\n  Type = "NodeStatus";\n  Node = "unit{i}";\n  NodeStatus = 6;\n]\n' for i in range(1001))
    assert _history_constraint("80", many, tmp_path) == "ClusterId == 80 || DAGManJobId == 80"


def test_the_status_script_asks_the_history_with_the_constraint_made_on_the_site():
    subs = [Submission(key=f"bs-h-{i}", scheduler="htcondor", fanout_id=str(70 + i), workdir=f"/w/bs-h-{i}",
                       indices=[0, 1], submitted_at=1.0) for i in range(2)]
    script = htcondor.render_status_script(subs)
    assert 'bs_hist="$(bs_history_constraint 70 /w/bs-h-0/bs-h-0.status) || ' \
           '$(bs_history_constraint 71 /w/bs-h-1/bs-h-1.status)"' in script.replace("'", "")
    assert 'condor_history -json -constraint "$bs_hist"' in script


# ---------------------------------------------------------------------------- Airflow payloads

def test_index_ranges_round_trip():
    for idx in ([], [0], list(range(32)) + [40] + list(range(77, 81)), list(range(0, 1000, 3))):
        assert expand_ranges(index_ranges(idx)) == idx
    assert index_ranges(list(range(32)) + [40, 77, 78, 79, 80]) == "0-31,40,77-80"
    with pytest.raises(ValueError, match="not an index range"):
        expand_ranges("1-x")


def test_trigger_event_digest_is_small_and_gives_back_every_units_state():
    n = 10_000
    units = {i: TaskStatus(state=JobState.DONE, native="COMPLETED", exit_code=0) for i in range(n)}
    for i in range(7, n, 100):
        units[i] = TaskStatus(state=JobState.FAILED, native="TIMEOUT" if i == 7 else "FAILED", exit_code=3,
                              reason="NonZeroExitCode", timed_out=i == 7)
    status = RoundStatus(key="k", units=units, fanin=TaskStatus(state=JobState.WAITING, reason="DependencyNeverSatisfied"))
    digest = RoundDigest.of(status)
    wire = json.dumps(digest.model_dump(mode="json"))
    assert len(wire) < 8 * 1024
    back = RoundDigest.model_validate(json.loads(wire)).status(range(n))
    assert back.counts() == status.counts() and back.failed_indices == status.failed_indices
    assert [i for i, s in back.units.items() if s.timed_out] == [7] and back.fanin == status.fanin
    assert back.units[7] == units[7] and back.units[107] == units[107]  # the first failures in full


def test_unit_template_describes_10000_units_in_a_few_hundred_bytes():
    template = {"argv": ["python3", "-m", "reco", "--file={index:05d}", "--seed", "{index}", "{literal}"],
                "indices": "400-10399", "name": "reco_{index:05d}"}
    request = RoundRequest(unit_template=template)
    assert len(request.model_dump_json()) < 1024
    units = UnitTemplate(**template).units()
    assert len(units) == 10_000 and units[0].index == 400 and units[0].name == "reco_00400"
    assert units[-1].argv == ["python3", "-m", "reco", "--file=10399", "--seed", "10399", "{literal}"]
    # a request giving units either way replaces both ways of the constructor's
    constructor = RoundRequest(units=[["true"]])
    assert request.over(constructor).units is None and request.over(constructor).unit_template is not None
    with pytest.raises(ValueError, match="at least one index"):
        UnitTemplate(argv=["true"], indices=",")
