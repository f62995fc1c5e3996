"""Airflow end to end on the REAL Slurm over the REAL sshd (and the embedded local site).

* ``airflow dags test rg_campaign`` on Slurm and on the local site;
* re-attach: the task process is SIGKILLed right after the submission, the task is run
  again for the same DAG run: exactly one Slurm array exists and the task re-attaches;
* on_kill: SIGTERM to a running task cancels its jobs (squeue shows none);
* the trigger's on_kill (task cleared while deferred) cancels too;
* failed indices are named with their log paths; the stuck afterok fan-in is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import time
import uuid

import pytest

from ..airflow_runs import (dagman_jobs, live_jobs, slurm_jobs_named, slurm_states, squeue_named, start_task,
                            task_process, wait_for_record)
from ..conftest import dags_test, on_site, site_conn
from ..reliability.counting import (CONDOR_COMPLETED, SLURM_STOPPED, condor_node_jobs, condor_round, round_count,
                                    slurm_round)


@pytest.fixture(scope="module")
def slurm_conn(site_info):
    return site_conn(site_info, "slurm")


def test_rg_campaign_end_to_end_on_slurm_over_ssh(site_info, airflow_home, slurm_conn):
    version = f"it{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "slurm_site", "version": version, "steps": 3, "samples": 80000, "batches": 8,
            "throttle": 4, "tolerance": 0.0001}
    r = dags_test(airflow_home, "rg_campaign", conf, slurm_site=slurm_conn)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-5000:]
    # the progress lines of the triggers reached the task log
    assert re.search(r"RG step 2: 8/8 done; fan-in done", out)
    stats = on_site(site_info, f"cat {site_info['remote_root']}/job_outputs/{version}/FP/stats/DONE_RG*.json")
    rows = sorted((json.loads(x) for x in stats.stdout.splitlines() if x.strip()), key=lambda s: s["step"])
    assert [s["step"] for s in rows] == [1, 2, 3]
    for s in rows:
        assert s["samples"] == 80000 and abs(s["z_mean"]) < 0.05 and 1.9 < s["z_std"] < 2.3
    for k in (1, 2, 3):
        for kind in ("t/t", "z/z", "sym_z/sym_z"):
            p = f"{site_info['remote_root']}/job_outputs/{version}/FP/hist/{kind}_hist_RG{k}.npz"
            assert on_site(site_info, f"test -s {p}").returncode == 0, p
    # every round ran as ONE array + ONE afterok job, named by its key
    keys = on_site(site_info, f"ls {site_info['remote_root']}/job_logs/{version}/FP/RG1").stdout.split()
    assert len(keys) == 1 and len(slurm_jobs_named(site_info, keys[0])) == 2


def test_rg_campaign_on_the_embedded_local_site_fp_then_exp(airflow_home, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHSITE_LOCAL_ROOT", str(tmp_path / "site"))
    conf = {"site_conn_id": "local", "version": "loc", "steps": 2, "samples": 8000, "batches": 4, "throttle": 2}
    r = dags_test(airflow_home, "rg_campaign", conf)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-5000:]
    assert (tmp_path / "site/job_outputs/loc/FP/hist/sym_z/sym_z_hist_RG2.npz").stat().st_size > 0
    # EXP: the shifts run as parallel partitions, seeded from the FP run's last histogram
    exp = {**conf, "type": "EXP", "version": "locexp", "fp_version": "loc", "shifts": [0.2, 0.4]}
    r = dags_test(airflow_home, "rg_campaign", exp)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-5000:]
    assert "start from FP loc RG step 2" in out
    means = {}
    for s in (0, 1):
        rows = [json.loads((tmp_path / f"site/job_outputs/locexp/EXP/shift{s}/stats/DONE_RG{k}.json").read_text())
                for k in (1, 2)]
        means[s] = [row["z_mean"] for row in rows]
    # a shifted distribution flows away from the fixed point, the larger shift further
    assert 0 < means[0][0] < means[0][1] and 0 < means[1][0] < means[1][1] and means[1][1] > means[0][1]


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_task_killed_after_submit_reattaches_instead_of_resubmitting(site_info, airflow_home, scheduler,
                                                                      condor_pool, fault_record):
    row = fault_record(1, scheduler)
    conn = site_conn(site_info, scheduler)
    task = "deferred" if scheduler == "slurm" else "deferred_any"
    tag, run_id, p = start_task(airflow_home, task, {"sleep": 4, "site": "the_site"}, the_site=conn)
    key = wait_for_record(site_info, tag)
    os.killpg(p.pid, signal.SIGKILL)  # before anything reached XCom
    p.wait()
    count = (lambda: len(slurm_jobs_named(site_info, key))) if scheduler == "slurm" else \
        (lambda: len(dagman_jobs(site_info, key)))
    expected = 2 if scheduler == "slurm" else 1  # array + afterok job / one DAGMan job
    assert count() == expected

    p2 = task_process(airflow_home, task, run_id, the_site=conn)
    out, _ = p2.communicate(timeout=300)
    assert "Task failed" not in out, out[-4000:]
    # either execute() found the record ("re-attached") or the task resumed its recorded
    # deferral; in both cases the same round is watched and nothing is submitted again
    assert key in out and "submitted round" not in out
    n = count()
    counted = round_count(site_info, scheduler, key, 4)
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    row.measured = f"SIGKILL after the record was written; {n} {'Slurm jobs (array + fan-in)' if scheduler == 'slurm' else 'DAGMan job'} afterwards"
    assert counted.lost == 0, counted.states
    assert n == expected


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_on_kill_cancels_the_remote_jobs(site_info, airflow_home, scheduler, condor_pool, fault_record):
    row = fault_record(10, f"{scheduler}, task killed on a worker")
    conn = site_conn(site_info, scheduler)
    tag, run_id, p = start_task(airflow_home, "blocking", {"sleep": 100, "site": "the_site"}, the_site=conn)
    key = wait_for_record(site_info, tag)
    deadline = time.monotonic() + 60
    while not live_jobs(site_info, scheduler, key):
        assert time.monotonic() < deadline, "jobs never appeared"
        time.sleep(0.5)
    time.sleep(3)  # let the node / array jobs start
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while live_jobs(site_info, scheduler, key):
        assert time.monotonic() < deadline, f"jobs still queued after on_kill:\n{out[-3000:]}"
        time.sleep(0.5)
    emptied = time.monotonic() - t0
    assert "cancelled" in out
    # cancelling is the intent: lost = jobs that ended otherwise than cancelled or completed
    counted = round_count(site_info, scheduler, key, 4, cancelled=True)
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    row.measured = f"queue empty {emptied:.1f} s after SIGTERM"
    assert (counted.lost, counted.double) == (0, 0), counted.states


def test_trigger_on_kill_cancels_a_deferred_round(site_info, slurm_conn, monkeypatch, fault_record):
    row = fault_record(10, "slurm, task cleared while deferred")
    from batchsite.config import site_config_from_connection
    from batchsite.hooks.site import site_for_conn
    from batchsite.model import RoundSpec, WorkUnit
    from batchsite.rounds import RoundWatch
    from batchsite.triggers.round import BatchRoundTrigger

    monkeypatch.setenv("AIRFLOW_CONN_SLURM_SITE", json.dumps(slurm_conn))
    cfg = site_config_from_connection("slurm_site", slurm_conn["host"], slurm_conn["port"], slurm_conn["login"],
                                      slurm_conn["extra"])
    key = f"bs-trig-{uuid.uuid4().hex[:8]}"
    spec = RoundSpec(key=key, label="t", workdir=f"{cfg.remote_root}/test/{key}", env_script=cfg.env_script,
                     units=[WorkUnit(index=i, argv=["sleep", "120"]) for i in range(3)], fanin=["true"])
    site = site_for_conn(cfg)
    sub = site.submit(spec)
    site.close()
    assert squeue_named(site_info, key)
    trig = BatchRoundTrigger(**RoundWatch.of(sub, site_conn_id="slurm_site", label="t").model_dump(mode="json"))
    t0 = time.monotonic()
    asyncio.run(trig.on_kill())
    deadline = time.monotonic() + 30
    while squeue_named(site_info, key):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    emptied = time.monotonic() - t0
    counted = slurm_round(site_info, key, 3, expected=SLURM_STOPPED)
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    row.measured = f"trigger on_kill: queue empty after {emptied:.1f} s"
    assert (counted.lost, counted.double) == (0, 0), counted.states


def test_failed_indices_are_named_and_the_stuck_fanin_is_cancelled(site_info, airflow_home, slurm_conn,
                                                                   fault_record):
    row = fault_record(5, "slurm, no rescue: indices reported")
    tag, run_id, p = start_task(airflow_home, "failing", {"sleep": 1}, slurm_site=slurm_conn)
    out, _ = p.communicate(timeout=300)
    assert "Task failed with exception" in out  # `tasks test` exits 0 even then
    assert "2 of 8 units failed: [2, 5]" in out, out[-4000:]
    # slurmctld says Dependency until it re-evaluates, then DependencyNeverSatisfied: either way
    # the fan-in can never start and must not be left pending
    assert "cancelled: it could never start (Dependency" in out
    assert f"{site_info['remote_root']}/test/{tag}/" in out  # where the logs are
    key = re.search(r"round (bs-failing-[0-9a-f]+)", out).group(1)
    assert squeue_named(site_info, key) == []  # nothing left pending forever
    states = slurm_states(site_info, key, min_entries=8)  # the 8 units ran; the fan-in never started
    failed = sorted(int(j.split("_")[1]) for j, s in states.items() if "_" in j and s == "FAILED")
    completed = sum(1 for j, s in states.items() if "_" in j and s == "COMPLETED")
    # expected: 6 units COMPLETED, units 2 and 5 FAILED (their own exit 3), the fan-in CANCELLED
    row.jobs_lost = (8 - completed - len(failed)) + sum(1 for i in failed if i not in (2, 5))
    row.double_submissions = len(slurm_jobs_named(site_info, key)) - 2
    row.measured = (f"failure names exactly {failed} (sacct FAILED) and the logs dir; never-startable fan-in "
                    f"{next((s for j, s in states.items() if '_' not in j), 'absent')}")
    assert row.jobs_lost == 0, states
    assert row.double_submissions == 0


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_rescue_reruns_only_the_failed_units(site_info, airflow_home, scheduler, condor_pool, fault_record):
    row = fault_record(5, f"{scheduler}, rescue")
    conn = site_conn(site_info, scheduler)
    tag, run_id, p = start_task(airflow_home, "flaky", {"site": "the_site"}, the_site=conn)
    out, _ = p.communicate(timeout=600)
    assert "Task failed" not in out, out[-5000:]
    assert "rescue 1" in out and "rescue round submitted" in out
    key = re.search(r"round (bs-flaky-[0-9a-f]+)", out).group(1)
    wd = f"{site_info['remote_root']}/test/{tag}/{key}"
    runs = on_site(site_info, f"cd {wd} && for i in 0 1 2 3 4 5 6 7; do printf '%s ' $(wc -l < runs_$i.log); done")
    counts = [int(x) for x in runs.stdout.split()]
    row.double_submissions = sum(max(0, c - (2 if i in (1, 4) else 1)) for i, c in enumerate(counts))
    row.jobs_lost = sum(1 for c in counts if c == 0)
    row.measured = f"unit runs {counts}: only 1 and 4 reran; fan-in once"
    assert counts == [1, 2, 1, 1, 2, 1, 1, 1], runs.stdout  # only 1 and 4 reran
    assert on_site(site_info, f"cat {wd}/fanin_runs.txt").stdout.strip() == "10"  # fan-in ran once, after all


def test_time_limit_removal_escalates_the_job_flavour(site_info, airflow_home, condor_pool, fault_record):
    row = fault_record(6, "htcondor, periodic removal")
    conn = site_conn(site_info, "htcondor")
    tag, run_id, p = start_task(airflow_home, "slow", {"site": "the_site"}, the_site=conn)
    out, _ = p.communicate(timeout=600)
    assert "Task failed" not in out, out[-5000:]
    assert re.search(r"hit their time limit \([^)]*\): JobFlavour espresso -> microcentury", out), out[-5000:]
    key = re.search(r"round (bs-slow-[0-9a-f]+)", out).group(1)
    sub = on_site(site_info, f"grep -h JobFlavour {site_info['remote_root']}/test/{tag}/{key}/*.sub")
    assert "microcentury" in sub.stdout  # the rescue round ran with the next flavour
    # the rescue is the same DAG submitted again (DAGMan reads its rescue file): 2 DAGMan jobs
    nodes = condor_node_jobs(site_info, key)
    done = {name for name, status, code in nodes if status == CONDOR_COMPLETED and code == "0"}
    row.jobs_lost = 4 - len(done)  # 3 units + the fan-in node
    row.double_submissions = len(dagman_jobs(site_info, key)) - 2
    row.measured = "removed at espresso's limit -> rescue of that node with JobFlavour microcentury"
    assert row.double_submissions == 0


def test_held_node_is_reported_and_released(site_info, airflow_home, condor_pool, fault_record):
    row = fault_record(7, "htcondor, condor_hold")
    conn = site_conn(site_info, "htcondor")
    tag, run_id, p = start_task(airflow_home, "holdme", {"site": "the_site"}, the_site=conn)
    key = wait_for_record(site_info, tag)
    node = f'JobBatchName == "{key}" && JobUniverse == 5 && JobStatus == 2'
    deadline = time.monotonic() + 60
    while True:
        r = on_site(site_info, f"condor_q -constraint {shlex.quote(node)} -af ClusterId")
        if r.stdout.strip():
            break
        assert time.monotonic() < deadline, "the node job never ran"
        time.sleep(0.5)
    cluster = r.stdout.split()[0]
    assert on_site(site_info, f"condor_hold {cluster}").returncode == 0  # a real hold
    held_at = time.monotonic()
    while on_site(site_info, f"condor_q {cluster} -af JobStatus").stdout.strip() == "5":  # 5 = held
        assert time.monotonic() - held_at < 120, "the held node was never released"
        time.sleep(0.5)
    held_for = time.monotonic() - held_at
    out, _ = p.communicate(timeout=300)
    assert "Task failed" not in out, out[-5000:]
    assert "HoldReason: via condor_hold (by user bsite)" in out
    assert "released" in out
    counted = condor_round(site_info, key, 2)  # the unit + the fan-in node
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    row.measured = f"HoldReason in the task log; released by policy {held_for:.0f} s after condor_hold; round succeeded"
    assert counted.lost == 0, counted.states
    assert row.double_submissions == 0
