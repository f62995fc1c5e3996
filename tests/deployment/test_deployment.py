"""Campaigns in a REAL Airflow 3 deployment (api-server, scheduler, dag-processor, triggerer as
separate processes, LocalExecutor, PostgreSQL metadata DB), driven through the REST API exactly
as the web UI drives it: unpause, POST dagRuns with conf, watch the run, read task logs.

* the connection form's Test button (``POST /connections/test``) for the Slurm site;
* the RG campaign on the embedded ``local`` site and on the real Slurm site, triggered at once
  (as two users would; it also halves the wall time): the progress lines in a round's task log,
  every round watched by the ONE triggerer;
* the triggerer SIGKILLed while a round is deferred and a new one started: the run completes
  and the round was submitted once (one array + one fan-in job, counted on the site).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass

import pytest

from ..airflow_runs import dagman_jobs, slurm_jobs_named
from ..conftest import on_site, site_conn
from ..reliability.counting import round_count
from .client import AirflowClient
from .conftest import GATE_HOLD, site_home_path

DAG = "rg_campaign"


def _trigger(client: AirflowClient, conf: dict) -> str:
    client.unpause(DAG)
    return client.trigger(DAG, conf, run_id=f"{conf['version']}-{uuid.uuid4().hex[:6]}")


def _wait(deployment, client: AirflowClient, run_id: str, timeout: float = 300, on_poll=None) -> dict:
    """Wait for the run; a deployment process that dies meanwhile fails the test at once."""
    def poll(tis: list[dict]) -> None:
        deployment.fail_if_dead()
        if on_poll is not None:
            on_poll(tis)

    return client.wait_for_run(DAG, run_id, timeout=timeout, on_poll=poll, interval=0.5)


def _assert_success(client: AirflowClient, run_id: str, run: dict) -> None:
    assert run["state"] == "success", client.failure_report(DAG, run_id)


#: the DAG scheduled on the campaigns' output aliases (dags/campaign_outputs.py)
DOWNSTREAM = "campaign_outputs"


def _round_keys(site: dict, version: str, step: int) -> list[str]:
    r = on_site(site, f"ls {site['remote_root']}/job_logs/{version}/FP/RG{step}")
    return r.stdout.split()


def _trigger_starts(log: str, run_id: str, task_id: str) -> int:
    """How often a triggerer started the task's trigger: each logs "trigger <dag>/<run>/<task>/
    <map index>/<try> (ID n) starting" into the task instance's log."""
    return len(re.findall(rf"trigger {DAG}/{re.escape(run_id)}/{re.escape(task_id)}/0/\d+ \(ID \d+\) starting", log))


def _submit_logs(client: AirflowClient, run_id: str, task_id: str) -> str:
    """Every recorded try's log of a round's (map index 0) submit task, through the API, each
    headed by its try number and state (so an assertion message shows which tries there were)."""
    tries = client.task_tries(DAG, run_id, task_id, 0)
    assert tries, f"{task_id}: no recorded try"
    return "\n".join(f"=== try {t['try_number']} ({t['state']})\n" + client.task_log(DAG, run_id, task_id, 0, t["try_number"])
                     for t in tries)


def _trigger_log_owners(deployment, run_id: str, task_id: str) -> set[str]:
    """The triggerer job ids that wrote the task's trigger logs (``attempt=N.log.trigger.<job id>.log``)."""
    d = deployment.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / f"task_id={task_id}" / "map_index=0"
    return {f.name.rsplit(".", 2)[-2] for f in d.glob("attempt=*.log.trigger.*.log")}


def _slurm_conf(version: str, conn_id: str = "slurm_site", **over) -> dict:
    # the Slurm connection of tests/integration/test_slurm_airflow.py (poll_interval 1 s), in
    # the deployment's environment
    return {"site_conn_id": conn_id, "version": version, "steps": 2, "samples": 8000, "batches": 4,
            "throttle": 4, "tolerance": 0.0001, **over}


def _alive_triggerers(client: AirflowClient) -> list[dict]:
    return client.request("GET", "/jobs", params={"job_type": "TriggererJob", "is_alive": "true"})["jobs"]


@dataclass(frozen=True)
class TriggeredRun:
    version: str
    run_id: str
    triggered_at: float


def _local_conf(version: str) -> dict:
    return {"site_conn_id": "local", "version": version, "steps": 2, "samples": 8000, "batches": 4,
            "throttle": 2, "tolerance": 0.0001}


@pytest.fixture(scope="module")
def campaign_runs(deployment) -> dict[str, TriggeredRun]:
    """The local and the Slurm campaign, triggered one right after the other; each test waits
    for its own run."""
    client = deployment.client()
    # scheduled on the campaigns' output aliases: each run's report task should start it
    client.unpause(DOWNSTREAM)
    runs = {}
    for site, conf in (("local", _local_conf), ("slurm", _slurm_conf)):
        version = f"d{site[0]}{uuid.uuid4().hex[:6]}"
        runs[site] = TriggeredRun(version, _trigger(client, conf(version)), time.monotonic())
    client.close()
    return runs


def test_each_campaigns_outputs_asset_event_starts_the_downstream_dag(deployment, campaign_runs):
    """The report task emits its outputs' Asset event through the alias; the real scheduler
    starts ``campaign_outputs`` (scheduled on that alias) for it, which prints the final
    statistics of that run's outputs."""
    client = deployment.client()
    for triggered in campaign_runs.values():
        _assert_success(client, triggered.run_id, _wait(deployment, client, triggered.run_id))
    wanted = {f"RG FP {t.version} (rg_campaign / {t.run_id})" for t in campaign_runs.values()}
    found: set[str] = set()
    deadline = time.monotonic() + 180
    while found != wanted:
        deployment.fail_if_dead()
        runs = client.request("GET", f"/dags/{DOWNSTREAM}/dagRuns", params={"limit": 100})["dag_runs"]
        for run in runs:
            assert run["run_type"] == "asset_triggered" and run["state"] != "failed", run
            if run["state"] == "success":
                log = client.task_log(DOWNSTREAM, run["dag_run_id"], "final_statistics", -1, 1)
                found |= {w for w in wanted if w in log}
        assert time.monotonic() < deadline, f"asset-triggered {DOWNSTREAM} runs saw {found}, not {wanted}: {runs}"
        time.sleep(1)


def test_the_connection_forms_test_button_reaches_the_slurm_site(deployment):
    """What the UI's Test button sends for a batchsite connection filled in the form."""
    client = deployment.client()
    conn = site_conn(deployment.site, "slurm")
    body = {"connection_id": "form_test", "conn_type": "batchsite", "host": conn["host"], "port": conn["port"],
            "login": conn["login"], "extra": json.dumps(conn["extra"])}
    r = client.request("POST", "/connections/test", json=body)
    assert r["status"] is True, r


def test_rg_campaign_on_the_local_site_through_the_rest_api(deployment, campaign_runs):
    client = deployment.client()
    triggered = campaign_runs["local"]
    version, run_id, t0 = triggered.version, triggered.run_id, triggered.triggered_at
    run = _wait(deployment, client, run_id)
    _assert_success(client, run_id, run)
    print(f"\nlocal rg_campaign via REST: {time.monotonic() - t0:.1f}s after the trigger")
    tis = {(t["task_id"], t["map_index"]): t for t in client.task_instances(DAG, run_id)}
    assert tis[("round_02.collect", 0)]["state"] == "success"
    # the progress of round 2, read through the API like the UI's log view: the collect task's
    # summary and the trigger's progress lines in the deferred submit task's log
    collect_log = client.task_log(DAG, run_id, "round_02.collect", 0)
    assert re.search(r"RG step 2: done=True", collect_log), collect_log[-3000:]
    submit_log = _submit_logs(client, run_id, "round_02.submit")
    assert re.search(r"RG step 2: 4/4 done; fan-in done", submit_log), submit_log[-3000:]
    for k in (1, 2):
        assert (deployment.local_root / f"job_outputs/{version}/FP/hist/z/z_hist_RG{k}.npz").stat().st_size > 0


def test_rg_campaign_on_slurm_watched_by_one_triggerer(deployment, campaign_runs):
    client = deployment.client()
    site = deployment.site
    triggered = campaign_runs["slurm"]
    version, run_id, t0 = triggered.version, triggered.run_id, triggered.triggered_at
    run = _wait(deployment, client, run_id)
    _assert_success(client, run_id, run)
    print(f"\nSlurm rg_campaign via REST: {time.monotonic() - t0:.1f}s after the trigger")
    alive = _alive_triggerers(client)
    assert len(alive) == 1, alive
    for step in (1, 2):
        task_id = f"round_0{step}.submit"
        # the round was deferred and its trigger ran in THE triggerer
        log = _submit_logs(client, run_id, task_id)
        assert _trigger_starts(log, run_id, task_id) >= 1, log[-3000:]
        assert re.search(rf"RG step {step}: 4/4 done; fan-in done", log), log[-3000:]
        assert _trigger_log_owners(deployment, run_id, task_id) == {str(alive[0]["id"])}
        # and ran on Slurm as ONE array + ONE afterok fan-in, named by the round's key
        keys = _round_keys(site, version, step)
        assert len(keys) == 1, keys
        assert len(slurm_jobs_named(site, keys[0])) == 2


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_triggerer_killed_while_a_round_is_deferred(deployment, fault_record, scheduler):
    """Fault 11: SIGKILL the `airflow triggerer` while it watches round 1, start another: the new
    triggerer resumes the serialized trigger, the run succeeds, and the round ran as submitted
    once (Slurm: ONE array + ONE fan-in job; HTCondor: ONE DAGMan job), every unit completed
    (counted in sacct / condor_history)."""
    row = fault_record(11, f"{scheduler}, real `airflow triggerer`")
    client = deployment.client()
    site = deployment.site
    version = f"dk{uuid.uuid4().hex[:6]}"
    task_id = "round_01.submit"
    # the slow-poll connection (poll_interval 10 s, its jobs held while the gate is closed): the
    # round is still running, and being watched, when the kill comes
    hold = site_home_path(site, GATE_HOLD)
    conn_id = f"{'slurm' if scheduler == 'slurm' else 'condor'}_site_slow_poll"
    killed: dict[str, float] = {}

    def kill_once_watched(tis: list[dict]) -> None:
        if killed:
            return
        ti = next((t for t in tis if t["task_id"] == task_id), None)
        if ti is None or ti["state"] != "deferred":
            return
        log = client.task_log(DAG, run_id, task_id, 0, ti["try_number"])
        if not _trigger_starts(log, run_id, task_id) or "Trigger fired event" in log:
            return
        old = deployment.processes["triggerer"]
        os.kill(old.pid, signal.SIGKILL)  # the `airflow triggerer` process, no chance to clean up
        old.wait(timeout=30)
        killed.update(at=time.monotonic(), pid=old.pid)
        killed["new_pid"] = deployment.start("triggerer").pid
        on_site(site, f"rm -f {hold}")  # the jobs go on; the new triggerer sees the round through

    gate = on_site(site, f"touch {hold}")
    assert gate.returncode == 0, gate.stderr
    t0 = time.monotonic()
    try:
        run_id = _trigger(client, _slurm_conf(version, conn_id=conn_id, steps=1))
        run = _wait(deployment, client, run_id, on_poll=kill_once_watched)
    finally:
        on_site(site, f"rm -f {hold}")
    assert killed, f"{task_id} was never seen deferred and watched: {client.describe_tasks(DAG, run_id)}"
    done = time.monotonic()
    _assert_success(client, run_id, run)
    print(f"\ntriggerer pid {killed['pid']} SIGKILLed {killed['at'] - t0:.1f}s after the trigger request, "
          f"new triggerer pid {killed['new_pid']}; run finished {time.monotonic() - killed['at']:.1f}s after the kill")
    alive = _alive_triggerers(client)
    assert len(alive) == 1, alive
    # the old triggerer started the trigger, the new one started it again and saw it through
    log = _submit_logs(client, run_id, task_id)
    assert _trigger_starts(log, run_id, task_id) >= 2, log[-3000:]
    owners = _trigger_log_owners(deployment, run_id, task_id)
    assert str(alive[0]["id"]) in owners and len(owners) >= 2, owners
    # nothing resubmitted: one submission in the task's log, one array + one fan-in on Slurm,
    # one DAGMan job on HTCondor
    assert len(re.findall(r"RG step 1: submitted round", log)) == 1, log[-3000:]
    keys = _round_keys(site, version, 1)
    assert len(keys) == 1, keys
    counted = round_count(site, scheduler, keys[0], _slurm_conf(version)["batches"])
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    jobs = (f"{len(slurm_jobs_named(site, keys[0]))} Slurm jobs (array + fan-in)" if scheduler == "slurm"
            else f"{len(dagman_jobs(site, keys[0]))} DAGMan job(s)")
    row.measured = (f"SIGKILL {killed['at'] - t0:.0f} s after the trigger request, {_trigger_starts(log, run_id, task_id)} "
                    f"trigger starts by {len(owners)} triggerers; run done {done - killed['at']:.0f} s after the kill; "
                    f"{jobs}")
    assert (counted.lost, counted.double) == (0, 0), counted.states
