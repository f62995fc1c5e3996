"""Faults while a round is being watched, against the REAL site: sshd killed, all traffic to the
site dropped, slurmctld stopped, the task process killed while deferred, a Slurm TIMEOUT.

Every test runs real ``airflow tasks test`` processes of tests/dags/batchsite_test_jobs.py (the
trigger runs inline in that process, as in ``dags test``) and counts the jobs on the scheduler
afterwards: lost = units that did not end COMPLETED, double submissions = jobs beyond the one
array + one fan-in job of the round.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from ..airflow_runs import (TaskOutput, dagman_jobs, slurm_jobs_named, slurm_states, start_task, task_process,
                            wait_for_record)
from ..conftest import _site_cmd, on_site, site_conn


def _fault(cmd: str) -> None:
    r = _site_cmd(cmd, timeout=120)
    assert r.returncode == 0, f"site.sh {cmd} failed:\n{r.stdout}\n{r.stderr}"


def _count_slurm_round(info, key: str, units: int) -> tuple[int, int, dict]:
    states = slurm_states(info, key)
    array = {k: v for k, v in states.items() if "_" in k}
    done = sum(1 for v in array.values() if v == "COMPLETED")
    fanin_done = sum(1 for k, v in states.items() if "_" not in k and v == "COMPLETED")
    lost = (units - done) + (1 - fanin_done)
    double = len(slurm_jobs_named(info, key)) - 2
    return lost, double, states


def _start(home, info, task: str, scheduler: str = "slurm", sleep: int = 20, **extra):
    conn = site_conn(info, scheduler, **extra)
    tag, run_id, p = start_task(home, task, {"sleep": sleep, "site": "the_site"}, the_site=conn)
    return tag, run_id, conn, TaskOutput(p)


# fast reconnection for the tests; production defaults are 120 s / 20 s / 60 s
FAST = {"status_timeout": 8, "connect_timeout": 4, "max_backoff": 8}


@pytest.mark.parametrize("fault", ["sshd", "traffic"])
def test_site_unreachable_while_watching(site_info, airflow_home, fault, fault_record):
    """2: sshd killed (sessions too) for 15 s / 3: every packet to and from the sshd port dropped
    for 60 s. A task whose outage_grace covers the outage finishes normally; a second task with a
    short grace fails with a clear message, and running it again re-attaches to its jobs."""
    row = fault_record(2 if fault == "sshd" else 3, "slurm")
    outage = 15 if fault == "sshd" else 60
    # units sleep past the outage's start; 4 units, throttle 2 -> the array runs across the outage
    tag_a, run_a, conn_a, a = _start(airflow_home, site_info, "deferred", outage_grace=600, sleep=12, **FAST)
    tag_b, run_b, conn_b, b = _start(airflow_home, site_info, "deferred", outage_grace=5, sleep=12, **FAST)
    key_a, key_b = wait_for_record(site_info, tag_a), wait_for_record(site_info, tag_b)
    a.wait_for(r"\d+/4 done", 120)
    b.wait_for(r"\d+/4 done", 120)  # both are being watched by their triggers

    _fault("stop-sshd" if fault == "sshd" else "drop-traffic")
    try:
        time.sleep(outage)
    finally:
        _fault("start-sshd" if fault == "sshd" else "restore-traffic")
    restored = time.monotonic()

    out_b = b.finish(timeout=300)
    assert "Task failed with exception" in out_b, out_b[-4000:]
    m = re.search(r"site the_site unreachable for (\d+)s \(> outage_grace 5s\)", out_b)
    assert m, out_b[-4000:]
    # the task that gave up left its jobs running: running it again re-attaches, no resubmission
    b_again = TaskOutput(task_process(airflow_home, "deferred", run_b, the_site=conn_b))

    out_a = a.finish(timeout=300)
    resumed = time.monotonic()
    assert "Task failed" not in out_a, out_a[-5000:]
    retries = len(re.findall(r"site the_site unreachable \(.*\); retrying in", out_a))
    assert retries >= 1, out_a[-4000:]  # the outage was seen, and survived
    lost_a, double_a, states_a = _count_slurm_round(site_info, key_a, 4)

    again = b_again.finish(timeout=300)
    assert "Task failed" not in again and key_b in again and "submitted round" not in again, again[-4000:]
    lost_b, double_b, states_b = _count_slurm_round(site_info, key_b, 4)

    row.tried = 1
    row.jobs_lost = lost_a + lost_b
    row.double_submissions = double_a + double_b
    row.measured = (f"{outage} s outage, {retries} reconnect attempts (backoff capped at 8 s), round done "
                    f"{resumed - restored:.0f} s after restore; grace-5 s task failed clearly after "
                    f"{m.group(1)} s and re-attached on rerun")
    assert row.jobs_lost == 0, (states_a, states_b)
    assert row.double_submissions == 0


def test_slurmctld_stopped_while_watching(site_info, airflow_home, fault_record):
    """4: slurmctld down for 30 s while the array runs: states stay UNKNOWN (never "vanished"),
    watching resumes when it is back, every unit and the fan-in complete once."""
    row = fault_record(4, "slurm")
    # squeue waits for a down controller (MessageTimeout, retries): give it time to say so, so
    # that this is a scheduler outage seen over a working connection, not a hung command
    tag, run_id, conn, a = _start(airflow_home, site_info, "deferred", outage_grace=600, sleep=15,
                                  **{**FAST, "status_timeout": 90})
    key = wait_for_record(site_info, tag)
    a.wait_for(r"\d+/4 done", 120)
    _fault("stop-slurmctld")
    try:
        time.sleep(30)
    finally:
        _fault("start-slurmctld")
    out = a.finish(timeout=300)
    assert "Task failed" not in out, out[-5000:]
    assert "scheduler on site the_site not answering; job states UNKNOWN" in out, out[-4000:]  # seen as such
    lost, double, states = _count_slurm_round(site_info, key, 4)
    row.jobs_lost, row.double_submissions = lost, double
    row.measured = f"30 s without slurmctld; final sacct states {sorted(set(states.values()))}"
    assert lost == 0, states
    assert double == 0


def test_task_process_killed_while_deferred_resumes_watching(site_info, airflow_home, condor_pool, fault_record):
    """11: the process running the trigger (triggerer / `dags test`) is SIGKILLed while the round
    is deferred; started again it resumes from the recorded job ids and submits nothing. Slurm and
    HTCondor side by side (independent sites of the same sshd), so the case costs one wait."""
    cases = {}
    for scheduler, task in (("slurm", "deferred"), ("htcondor", "deferred_any")):
        tag, run_id, conn, a = _start(airflow_home, site_info, task, scheduler, sleep=8)
        cases[scheduler] = {"row": fault_record(11, scheduler), "task": task, "tag": tag, "run_id": run_id,
                            "conn": conn, "reader": a}
    for c in cases.values():
        c["key"] = wait_for_record(site_info, c["tag"])
        c["reader"].wait_for(r"\d+/4 done", 120)  # the trigger is watching
        os.killpg(c["reader"].p.pid, signal.SIGKILL)
        c["reader"].finish(timeout=60)
        c["again"] = TaskOutput(task_process(airflow_home, c["task"], c["run_id"], the_site=c["conn"]))
    for scheduler, c in cases.items():
        out, key, tag = c["again"].finish(timeout=300), c["key"], c["tag"]
        assert "Task failed" not in out, out[-5000:]
        assert key in out and "submitted round" not in out, out[-4000:]
        if scheduler == "slurm":
            lost, double, _ = _count_slurm_round(site_info, key, 4)
        else:
            double = len(dagman_jobs(site_info, key)) - 1
            done = on_site(site_info, f"grep -c 'completed successfully' {site_info['remote_root']}/test/{tag}/{key}/"
                                      "*.dagman.out").stdout.strip()
            lost = 5 - int(done or 0)  # 4 units + the fan-in node
        c["row"].jobs_lost, c["row"].double_submissions = lost, double
        c["row"].measured = "SIGKILL while deferred; rerun resumed the recorded round"
    for c in cases.values():
        assert c["row"].jobs_lost == 0 and c["row"].double_submissions == 0, c["row"]
