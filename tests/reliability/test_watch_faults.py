"""Faults while a round is being watched, against the REAL site: sshd killed, all traffic to the
site dropped, slurmctld stopped. (The triggerer killed while a round is deferred, fault 11, is
tests/deployment/test_deployment.py: a real `airflow triggerer`.)

Every test runs real ``airflow tasks test`` processes of tests/dags/batchsite_test_jobs.py (the
trigger runs inline in that process, as in ``dags test``) and counts the jobs on the scheduler
afterwards (tests/reliability/counting.py): lost = units that did not end COMPLETED, double
submissions = jobs beyond the one array + one fan-in job of the round.
"""

from __future__ import annotations

import re
import time

import pytest

from ..airflow_runs import TaskOutput, start_task, task_process, wait_for_record
from ..conftest import _site_cmd, site_conn
from .counting import slurm_round


def _fault(cmd: str) -> None:
    r = _site_cmd(cmd, timeout=120)
    assert r.returncode == 0, f"site.sh {cmd} failed:\n{r.stdout}\n{r.stderr}"


def _start(home, info, task: str, scheduler: str = "slurm", sleep: int = 20, **extra):
    conn = site_conn(info, scheduler, **extra)
    tag, run_id, p = start_task(home, task, {"sleep": sleep, "site": "the_site"}, the_site=conn)
    return tag, run_id, conn, TaskOutput(p)


# fast reconnection for the tests; production defaults are 120 s / 20 s / 60 s
FAST = {"status_timeout": 8, "connect_timeout": 4, "max_backoff": 8}


#: seconds each outage lasts: sshd stopped / every packet to and from its port dropped
OUTAGE = {"sshd": 15, "traffic": 30}
SHORT_GRACE = 5


@pytest.mark.parametrize("fault", ["sshd", "traffic"])
def test_site_unreachable_while_watching(site_info, airflow_home, fault, fault_record):
    """2: sshd killed (sessions too) / 3: every packet to and from the sshd port dropped (hung
    connections, unanswered SYNs). A task whose outage_grace covers the outage finishes normally;
    a second task with a 5 s grace fails clearly WHILE the site is still down (the outage counts
    from the last answer, not from when a hung command times out), and running it again
    re-attaches to its jobs."""
    row = fault_record(2 if fault == "sshd" else 3, "slurm")
    # units sleep past the outage's start; 4 units, throttle 2 -> the array runs across the outage
    tag_a, run_a, conn_a, a = _start(airflow_home, site_info, "deferred", outage_grace=600, sleep=12, **FAST)
    tag_b, run_b, conn_b, b = _start(airflow_home, site_info, "deferred", outage_grace=SHORT_GRACE, sleep=12,
                                     **FAST)
    key_a, key_b = wait_for_record(site_info, tag_a), wait_for_record(site_info, tag_b)
    a.wait_for(r"\d+/4 done", 120)
    b.wait_for(r"\d+/4 done", 120)  # both are being watched by their triggers

    _fault("stop-sshd" if fault == "sshd" else "drop-traffic")
    dropped = time.monotonic()
    b_failed: float | None = None
    try:
        while time.monotonic() - dropped < OUTAGE[fault]:
            if b_failed is None and "Task failed with exception" in b.text:
                b_failed = time.monotonic()
            time.sleep(0.2)
    finally:
        _fault("start-sshd" if fault == "sshd" else "restore-traffic")
    restored = time.monotonic()

    out_b = b.finish(timeout=300)
    assert "Task failed with exception" in out_b, out_b[-4000:]
    m = re.search(rf"site the_site unreachable for (\d+)s \(> outage_grace {SHORT_GRACE}s\)", out_b)
    assert m, out_b[-4000:]
    # failed during the outage, soon after the grace ran out (not at a status_timeout's end)
    assert b_failed is not None, f"the {SHORT_GRACE} s-grace task had not failed when the site came back " \
                                 f"after {restored - dropped:.0f} s:\n{out_b[-4000:]}"
    # the task that gave up left its jobs running: running it again re-attaches, no resubmission
    b_again = TaskOutput(task_process(airflow_home, "deferred", run_b, the_site=conn_b))

    out_a = a.finish(timeout=300)
    resumed = time.monotonic()
    assert "Task failed" not in out_a, out_a[-5000:]
    retries = len(re.findall(r"site the_site unreachable \(.*\); retrying in", out_a))
    assert retries >= 1, out_a[-4000:]  # the outage was seen, and survived
    count_a = slurm_round(site_info, key_a, 4)

    again = b_again.finish(timeout=300)
    assert "Task failed" not in again and key_b in again and "submitted round" not in again, again[-4000:]
    count_b = slurm_round(site_info, key_b, 4)

    row.jobs_lost = count_a.lost + count_b.lost
    row.double_submissions = count_a.double + count_b.double
    row.measured = (f"{restored - dropped:.0f} s outage, {retries} reconnect attempts (backoff capped at "
                    f"{FAST['max_backoff']} s), round done {resumed - restored:.0f} s after restore; "
                    f"grace-{SHORT_GRACE} s task failed {b_failed - dropped:.1f} s after the fault began "
                    f"(down {m.group(1)} s since its last answer) and re-attached on rerun")
    print(f"\n{fault}: {row.measured}")
    assert row.jobs_lost == 0, (count_a.states, count_b.states)
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
    stopped = time.monotonic()
    try:
        time.sleep(30)
    finally:
        _fault("start-slurmctld")
    down = time.monotonic() - stopped
    out = a.finish(timeout=300)
    assert "Task failed" not in out, out[-5000:]
    assert "scheduler on site the_site not answering; job states UNKNOWN" in out, out[-4000:]  # seen as such
    counted = slurm_round(site_info, key, 4)
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    row.measured = f"{down:.0f} s without slurmctld; final sacct states {sorted(set(counted.states.values()))}"
    assert counted.lost == 0, counted.states
    assert counted.double == 0
