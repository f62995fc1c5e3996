"""Every decision a finished round can take, each taken on purpose and counted (issue 13).

``BatchRoundOperator`` driven as the task runner drives it (execute -> TaskDeferred ->
the trigger's own run() -> execute_complete, as often as it defers), on real schedulers:

* the ``local`` site (temporary root): one test per branch of ``classify_failures`` under
  the DEFAULT thresholds (auto rescue, review, abort), with unit counts (1 of 40, 4 of 20,
  8 of 20) checked against ``RescuePolicy()``'s bands; ``max_rescues=0`` observed (defect 8),
  also through the FASER DAG's ``max_rescues`` Param as Airflow's DagBag builds the DAG; a
  retried task re-attached to a fan-in-only rescue reads it as the fan-in's and counts on;
* the HTCondor pool: units killed at their (scaled) JobFlavour limit are rescued with a
  strictly larger limit, read from the node jobs' ads (defect 4), even when most of the
  round timed out (not "abort");
* Slurm: a fan-in failing once after every unit succeeded reruns the fan-in alone (defect 6),
  counted in sacct by the round's name.

Units fail on their first run only (a marker file per unit) and log every run of theirs
(``runs_<index>.log``): a rescue that reran a unit it should not have shows in the counts.
Submissions are counted where the site keeps them: the submission records of the round
(``submitted`` + one ``submitted.<n>`` per attempt set aside by a rescue) on the local
site, the schedulers' own accounting on the real site.
"""

from __future__ import annotations

import copy
import json
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from batchsite.operators.round import BatchRoundOperator
from batchsite.rounds import FLAVOURS, RescuePolicy

from ..conftest import REPO, on_site, site_conn
from ..unit.local_rounds import local_root  # noqa: F401 - fixture: the local site on a temporary root
from ..unit.test_operator_round import context, event_of

DEFAULT = RescuePolicy()


@pytest.fixture(autouse=True)
def _ledger_in_a_temporary_file(tmp_path, monkeypatch):
    """The operator records into the campaign ledger: a throwaway SQLite file, not $AIRFLOW_HOME's."""
    monkeypatch.setenv("BATCHSITE_LEDGER_PATH", str(tmp_path / "ledger.sqlite"))


# ----------------------------------------------------------------------------- helpers

def flaky_units(run_dir: str, n: int, failing: set[int], *, broken: set[int] = frozenset()) -> list[list[str]]:
    """``n`` units logging each run to ``run_dir/runs_<i>.log``; those in ``failing`` exit 3
    on their first run only (marker ``ok_<i>``), those in ``broken`` on every run."""
    d = shlex.quote(run_dir)
    script = (f'echo run >> {d}/runs_$0.log; [ "$1" = broken ] && exit 3; '
              f'if [ "$1" = fail ] && [ ! -e {d}/ok_$0 ]; then touch {d}/ok_$0; '
              'echo "unit $0: fails on its first run" >&2; exit 3; fi')
    mode = {**{i: "fail" for i in failing}, **{i: "broken" for i in broken}}
    return [["sh", "-c", script, str(i), mode.get(i, "ok")] for i in range(n)]


def drive(op: BatchRoundOperator, ctx: dict, event_timeout: float = 60) -> tuple[dict[str, Any], int]:
    """Run the task to its end as the task runner does: ``(its return value, deferrals)``.
    A round that is finished at the operator's first look returns without deferring."""
    call = lambda: op.execute(ctx)  # noqa: E731
    deferrals = 0
    while True:
        try:
            return call(), deferrals
        except TaskDeferred as deferred:
            assert deferred.method_name == "execute_complete"
            deferrals += 1
            event = event_of(deferred.trigger, event_timeout)
            call = lambda event=event: op.execute_complete(ctx, event)  # noqa: E731


def local_runs(run_dir: Path, n: int) -> list[int]:
    """Runs of each unit, from its own run log (0: it never ran)."""
    logs = [run_dir / f"runs_{i}.log" for i in range(n)]
    return [len(p.read_text().split()) if p.exists() else 0 for p in logs]


def local_submissions(workdir: str) -> int:
    """Submissions of the round on the local site: the current record + the ones set aside."""
    return len(list((Path(workdir) / ".batchsite").glob("submitted*")))


def run_local_round(tmp_path: Path, task_id: str, n: int, failing: set[int], **op_kwargs: Any):
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    op = BatchRoundOperator(task_id=task_id, site_conn_id="local", units=flaky_units(str(run_dir), n, failing),
                            **op_kwargs)
    result, deferrals = drive(op, context(task_id=task_id))
    return result, deferrals, local_runs(run_dir, n)


# ----------------------------------------------------------------------------- local site: the branches

def test_default_policy_auto_rescue_reruns_only_the_failed_unit(local_root, tmp_path):
    n, k = 40, 1
    assert 0 < k / n < DEFAULT.auto_below  # the branch this test is about
    failing = {7}
    t0 = time.monotonic()
    result, deferrals, runs = run_local_round(tmp_path, "auto", n, failing)
    took = time.monotonic() - t0
    assert result["decision"] == "success" and result["succeeded"] and result["rescues"] == 1, result
    assert result["counts"]["done"] == n and result["failed"] == ""
    assert runs == [2 if i in failing else 1 for i in range(n)], runs  # only the failed unit reran
    assert local_submissions(result["workdir"]) == 2  # the round + one rescue, nothing else
    print(f"\nauto: {k}/{n} failed; unit runs total {sum(runs)} (rerun {[i for i, r in enumerate(runs) if r > 1]}); "
          f"{local_submissions(result['workdir'])} submissions, {deferrals} deferrals, {took:.1f} s")


def test_default_policy_review_resubmits_nothing(local_root, tmp_path):
    n, k = 20, 4
    assert DEFAULT.auto_below <= k / n < DEFAULT.review_below
    failing = set(range(1, 1 + 2 * k, 2))
    # the campaign's way (round_loop): report the decision, the review task asks a person
    result, deferrals, runs = run_local_round(tmp_path, "review", n, failing, fail_on_failure=False)
    assert result["decision"] == "review" and not result["succeeded"] and result["rescues"] == 0, result
    failed = sorted(int(i) for i in result["failures"])
    assert failed == sorted(failing) and all("exit 3" in result["failures"][str(i)] for i in failing)
    assert runs == [1] * n, runs  # nothing reran
    assert local_submissions(result["workdir"]) == 1
    print(f"\nreview: {len(failed)}/{n} failed ({len(failed) / n:.0%}); unit runs total {sum(runs)}; "
          f"{local_submissions(result['workdir'])} submission, {deferrals} deferrals")


def test_default_policy_abort_resubmits_nothing_and_fails_the_task(local_root, tmp_path):
    n, k = 20, 8
    assert k / n >= DEFAULT.review_below
    failing = set(range(0, 2 * k, 2))
    result, deferrals, runs = run_local_round(tmp_path, "abort", n, failing, fail_on_failure=False)
    assert result["decision"] == "abort" and not result["succeeded"] and result["rescues"] == 0, result
    assert sorted(int(i) for i in result["failures"]) == sorted(failing)
    assert runs == [1] * n, runs
    assert local_submissions(result["workdir"]) == 1
    # a task that fails on failure (the default) fails, saying it aborts
    run_dir = tmp_path / "runs2"
    run_dir.mkdir()
    op = BatchRoundOperator(task_id="abort2", site_conn_id="local", units=flaky_units(str(run_dir), n, failing))
    with pytest.raises(AirflowException, match=r"aborting"):
        drive(op, context(task_id="abort2"))
    assert local_runs(run_dir, n) == [1] * n
    print(f"\nabort: {k}/{n} failed ({k / n:.0%}); unit runs total {sum(runs)}; "
          f"{local_submissions(result['workdir'])} submission, {deferrals} deferrals")


def test_max_rescues_zero_resubmits_nothing(local_root, tmp_path):
    """Defect 8: max_rescues=0 with one failing unit under auto_below: "exhausted", nothing resubmitted."""
    n = 40
    result, deferrals, runs = run_local_round(tmp_path, "norescue", n, {5}, fail_on_failure=False,
                                              rescue={"max_rescues": 0})
    assert 1 / n < DEFAULT.auto_below  # the default policy would have rescued it
    assert result["decision"] == "exhausted" and result["rescues"] == 0 and result["failed"] == "5", result
    assert runs == [1] * n, runs
    assert local_submissions(result["workdir"]) == 1
    print(f"\nmax_rescues=0: unit runs total {sum(runs)}; {local_submissions(result['workdir'])} submission")


@pytest.mark.parametrize("max_rescues", [1, 2])
def test_a_retried_task_reattached_to_a_fanin_only_rescue_goes_on_from_it(local_root, tmp_path, max_rescues):
    """The task dies after submitting a fan-in-only rescue; its retry re-attaches to it (the
    record is all it has). The fan-in fails twice: the rescue's outcome is the fan-in's (not
    unit 0's: no unit reruns), and the rescues count on from the record, so max_rescues
    bounds the round across tries of the task."""
    n = 8
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    d = shlex.quote(str(run_dir))
    # the sleep: the operator's first look at each submission finds the fan-in still running
    fanin = (f"sleep 1; echo run >> {d}/fanin_runs.log; [ $(wc -l < {d}/fanin_runs.log) -gt 2 ] && exit 0; "
             "echo 'fan-in: fails on its first two runs' >&2; exit 2")

    def task() -> BatchRoundOperator:
        return BatchRoundOperator(task_id="merge", site_conn_id="local", units=flaky_units(str(run_dir), n, set()),
                                  fanin=["sh", "-c", fanin], fail_on_failure=False,
                                  rescue={"max_rescues": max_rescues})

    ctx = context(task_id="merge")
    first = task()
    try:
        first.execute(ctx)
        pytest.fail("the round ended before the operator's first look: the fan-in should still run")
    except TaskDeferred as deferred:
        event = event_of(deferred.trigger)
    with pytest.raises(TaskDeferred):  # the fan-in-only rescue submitted; the task dies here
        first.execute_complete(ctx, event)
    result, _ = drive(task(), ctx)  # its retry
    runs = local_runs(run_dir, n)
    fanin_runs = len((run_dir / "fanin_runs.log").read_text().split())
    submissions = local_submissions(result["workdir"])
    assert result["failed"] == "" and runs == [1] * n, (result, runs)
    assert result["rescues"] == max_rescues and submissions == 1 + max_rescues, (result, submissions)
    assert fanin_runs == 1 + max_rescues
    if max_rescues >= 2:  # the retry submitted the second rescue itself; the fan-in's third run succeeds
        assert result["decision"] == "success" and result["fanin_state"] == "done" and not result["adopted"], result
    else:  # the retry ended on the rescue it re-attached to
        assert result["decision"] == "exhausted" and result["fanin_state"] == "failed" and result["adopted"], result
    print(f"\nre-attach after a fan-in-only rescue, max_rescues={max_rescues}: decision {result['decision']}, "
          f"unit runs {runs}, fan-in runs {fanin_runs}, {submissions} submissions")


def test_faser_max_rescues_param_reaches_the_operator(local_root, tmp_path, monkeypatch):
    """Defect 8, through the DAG: the faser_alignment DAG as Airflow's DagBag builds it, its
    own ``validate`` and ``prepare`` callables with ``max_rescues=0`` given as a Param, and its
    own ``iter01.submit`` operator given what ``prepare`` returned (its XCom): the request
    carries max_rescues=0, and a round of it with one failing unit is not rescued."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time.context import set_current_context

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    bag = DagBag(dag_folder=str(REPO / "dags" / "faser_alignment.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["faser_alignment"]

    def prepared(**given: Any) -> tuple[dict, dict]:
        """What the DAG's ``iter01.prepare`` returns for a run given ``given`` as its conf, and
        the run's params."""
        params = copy.deepcopy(dag.params)
        for name, value in given.items():  # as a run's conf: each checked by its Param's schema
            params[name] = value
        resolved = params.validate()
        with set_current_context({"params": resolved}):
            setup = dag.get_task("validate").python_callable()
        first = dag.get_task("first_round").python_callable(setup)
        return dag.get_task("iter01.prepare").python_callable(first[0], setup), resolved

    submit = dag.get_task("iter01.submit")
    default = dag.params["max_rescues"]
    submit.round_request, _ = prepared(files="400-402")
    assert submit.effective_request().rescue.max_rescues == default
    request, params = prepared(files="400-402", max_rescues=0)
    submit.round_request = request
    assert submit.effective_request().rescue.max_rescues == 0

    # the same operator, its prepared request with the payload swapped for 40 tiny units (one
    # always fails: the request retries reco units in the job), rendered as the task runner
    # renders it (site_conn_id is "{{ params.site_conn_id }}")
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    n = 40
    in_job = 1 + (request["retries_in_job"] or 0)  # runs of a failing unit in one submission
    submit.round_request = {**request, "units": flaky_units(str(run_dir), n, set(), broken={3}), "fanin": None,
                            "cwd": None}
    ctx = {**context(dag_id="faser_alignment", task_id="iter01.submit", map_index=0), "params": params}
    submit.render_template_fields(ctx)
    assert submit.site_conn_id == "local" and submit.effective_request().rescue.max_rescues == 0
    result, _ = drive(submit, ctx)
    runs = local_runs(run_dir, n)
    assert result["decision"] == "exhausted" and result["rescues"] == 0 and result["failed"] == "3", result
    assert runs == [in_job if i == 3 else 1 for i in range(n)], runs
    assert local_submissions(result["workdir"]) == 1
    print(f"\nfaser max_rescues: Param default {default}, given 0 -> request max_rescues "
          f"{submit.effective_request().rescue.max_rescues}; decision {result['decision']}, unit 3 ran {runs[3]} "
          f"time(s) (in-job retries {in_job - 1}), unit runs total {sum(runs)}, "
          f"{local_submissions(result['workdir'])} submission")


# ----------------------------------------------------------------------------- the real site

@pytest.fixture
def site_dir(site_info):
    """A fresh directory of the test's own on the site (run logs, markers, the round's workdir)."""
    tag = f"dp{uuid.uuid4().hex[:8]}"
    d = f"{site_info['remote_root']}/test/{tag}"
    r = on_site(site_info, f"mkdir -p {d}")
    assert r.returncode == 0, r.stderr
    return tag, d


def site_runs(info: dict, d: str, names: list[str]) -> list[int]:
    r = on_site(info, "for f in " + " ".join(f"{d}/{name}" for name in names)
                + '; do if [ -e "$f" ]; then wc -l < "$f"; else echo 0; fi; done')
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


#: how long a real-site round may be watched: its trigger then fires "timeout" (the task fails)
WATCH_S = 240
CONDOR_ATTRS = "DAGNodeName,ClusterId,JobStatus,LastJobStatus,JobFlavour,MaxRuntime,RemoveReason"


def condor_node_ads(info: dict, key: str) -> list[dict]:
    """Every node job of round ``key`` (queue and history), oldest cluster first."""
    c = shlex.quote(f'JobBatchName == "{key}" && JobUniverse == 5')
    r = on_site(info, f"condor_q -constraint {c} -json -attributes {CONDOR_ATTRS}; echo '#####'; "
                      f"condor_history -constraint {c} -json -attributes {CONDOR_ATTRS}")
    assert r.returncode == 0, r.stderr
    ads = {ad["ClusterId"]: ad for part in r.stdout.split("#####") if part.strip() for ad in json.loads(part)}
    return [ads[c] for c in sorted(ads)]


def test_condor_time_limit_rescue_gets_a_strictly_larger_limit(site_info, condor_pool, site_dir, monkeypatch):
    """Defect 4 on the HTCondor pool: units 0 and 2 of 3 run past espresso's (scaled) limit on
    their first run and the pool removes them. 2 of 3 is above the abort threshold, but units
    killed at their limit are not judged by ratio: they are rescued, with a JobFlavour higher
    on the ladder whose MaxRuntime (the pool's, in the node's job ad) is strictly larger than
    the one they were killed at. Unit 1 runs once."""
    tag, d = site_dir
    monkeypatch.setenv("AIRFLOW_CONN_DP_CONDOR", json.dumps(site_conn(site_info, "htcondor")))
    qd = shlex.quote(d)
    slow = (f'echo run >> {qd}/runs_$0.log; '
            f'if [ "$1" = slow ] && [ ! -e {qd}/ok_$0 ]; then touch {qd}/ok_$0; sleep 120; fi')
    n, slow_units = 3, {0, 2}
    op = BatchRoundOperator(task_id="condor_limit", site_conn_id="dp_condor", workdir=f"test/{tag}",
                            units=[["sh", "-c", slow, str(i), "slow" if i in slow_units else "quick"]
                                   for i in range(n)],
                            job_resources={"job_flavour": "espresso"}, watch_timeout=WATCH_S)
    t0 = time.monotonic()
    result, deferrals = drive(op, context(task_id="condor_limit", run_id=f"manual__{tag}"), WATCH_S + 30)
    took = time.monotonic() - t0
    assert result["succeeded"] and result["rescues"] == 1, result
    runs = site_runs(site_info, d, [f"runs_{i}.log" for i in range(n)])
    assert runs == [2 if i in slow_units else 1 for i in range(n)], runs

    ads = condor_node_ads(site_info, result["key"])
    by_node: dict[str, list[dict]] = {}
    for ad in ads:
        by_node.setdefault(ad["DAGNodeName"], []).append(ad)
    assert sorted(len(v) for v in by_node.values()) == sorted(2 if i in slow_units else 1 for i in range(n)), ads
    limits = {}
    for node, (first, *rest) in by_node.items():
        if not rest:
            continue
        (rescue,) = rest
        # the first run: removed while running, at the limit the pool derived from its flavour
        assert first["JobStatus"] == 3 and first["LastJobStatus"] == 2, first
        assert "wall time exceeded" in first["RemoveReason"], first
        assert rescue["JobStatus"] == 4, rescue
        assert rescue["MaxRuntime"] > first["MaxRuntime"], (first, rescue)
        assert FLAVOURS.index(rescue["JobFlavour"]) > FLAVOURS.index(first["JobFlavour"]), (first, rescue)
        limits[node] = (first["JobFlavour"], first["MaxRuntime"], rescue["JobFlavour"], rescue["MaxRuntime"])
    assert len(limits) == len(slow_units), by_node
    # the rescue's submit file asks for the flavour the ad shows, and no MaxRuntime that would override it
    sub = on_site(site_info, f"grep -h -i -E 'JobFlavour|MaxRuntime' {result['workdir']}/*.sub").stdout
    rescue_flavours = {v[2] for v in limits.values()}
    assert all(f'"{f}"' in sub for f in rescue_flavours) and "maxruntime" not in sub.lower(), sub
    print(f"\ncondor limits (node: first flavour, MaxRuntime s -> rescue flavour, MaxRuntime s): {limits}; "
          f"unit runs {runs}; {deferrals} deferrals; {took:.1f} s")


def test_slurm_failed_fanin_alone_is_rerun_alone(site_info, site_dir, monkeypatch):
    """Defect 6 on Slurm: every unit succeeds, the fan-in fails once. The rescue runs the
    fan-in alone: each unit ran once (its run log), and sacct lists, by the round's name,
    the first array's tasks, the first fan-in job and exactly one more job of one task."""
    tag, d = site_dir
    monkeypatch.setenv("AIRFLOW_CONN_DP_SLURM", json.dumps(site_conn(site_info, "slurm")))
    qd = shlex.quote(d)
    n = 6
    unit = f"echo run >> {qd}/runs_$0.log"
    fanin = (f"echo run >> {qd}/fanin_runs.log; [ -e {qd}/fanin_ok ] && exit 0; touch {qd}/fanin_ok; "
             "echo 'fan-in: fails on its first run' >&2; exit 2")
    op = BatchRoundOperator(task_id="fanin_once", site_conn_id="dp_slurm", workdir=f"test/{tag}",
                            units=[["sh", "-c", unit, str(i)] for i in range(n)], fanin=["sh", "-c", fanin],
                            watch_timeout=WATCH_S)
    t0 = time.monotonic()
    result, deferrals = drive(op, context(task_id="fanin_once", run_id=f"manual__{tag}"), WATCH_S + 30)
    took = time.monotonic() - t0
    assert result["succeeded"] and result["rescues"] == 1 and result["fanin_state"] == "done", result
    assert result["counts"]["done"] == n
    runs = site_runs(site_info, d, [f"runs_{i}.log" for i in range(n)] + ["fanin_runs.log"])
    assert runs == [1] * n + [2], runs  # no unit reran; the fan-in ran twice

    key = result["key"]
    deadline = time.monotonic() + 60
    while True:  # slurmdbd records with a lag: wait until every job of the round is there and ended
        r = on_site(site_info, f"sacct -n -P -X --name={key} --starttime=now-1days -o JobID,State")
        assert r.returncode == 0, r.stderr
        records = dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)
        ended = all(s.split()[0] not in ("PENDING", "RUNNING", "REQUEUED") for s in records.values())
        if (len(records) >= n + 2 and ended) or time.monotonic() > deadline:
            break
        time.sleep(1)
    jobs: dict[str, list[str]] = {}
    for job_id in records:
        jobs.setdefault(job_id.split("_")[0], []).append(job_id)
    assert len(jobs) == 3, records  # the array, its fan-in, one rescue job
    first_array, first_fanin, rescue = (jobs[j] for j in sorted(jobs, key=int))
    assert len(first_array) == n and first_fanin == [first_fanin[0]] and "_" not in first_fanin[0], records
    assert len(rescue) == 1, records  # the rescue ran one task: the fan-in, no unit
    assert records[rescue[0]].startswith("COMPLETED") and records[first_fanin[0]].startswith("FAILED"), records
    print(f"\nslurm fan-in once: unit runs {runs[:n]}, fan-in runs {runs[n]}; sacct: {len(first_array)} array tasks, "
          f"fan-in {first_fanin[0]} {records[first_fanin[0]]}, rescue {rescue[0]} {records[rescue[0]]}; "
          f"{deferrals} deferrals; {took:.1f} s")
