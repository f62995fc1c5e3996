"""Scheduler-side faults, on the REAL Slurm and HTCondor pool over SSH.

12: condor_schedd SIGKILLed (condor_master restarts it) while a round runs;
13: the round's condor_dagman process SIGKILLed.
Both must end with the same DAGMan job (no fresh DAG) and no node that had finished before
the fault running again, counted from the units' own run logs (``runs_<i>.log``).
6 (Slurm): a unit killed at its --time. It spends most of its ~110 s waiting for slurmctld's
time-limit sweep, so it runs alongside 12 and 13, which touch neither Slurm nor sshd.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from ..airflow_runs import TaskOutput, dagman_jobs, slurm_states, start_task, wait_for_record
from ..conftest import _site_cmd, on_site, site_conn
from .test_watch_faults import _start


@pytest.fixture(scope="module", autouse=True)
def slurm_timeout_run(site_info, airflow_home):
    """The Slurm TIMEOUT case, started before the HTCondor tests of this module and checked last."""
    tag, _, _, reader = _start(airflow_home, site_info, "slow_slurm")
    yield {"tag": tag, "reader": reader}
    if reader.p.poll() is None:
        os.killpg(reader.p.pid, signal.SIGKILL)

UNITS = 6


def _finished_nodes(info, wd: str) -> set[int]:
    r = on_site(info, f"cat {wd}/*.dagman.out 2>/dev/null")
    return {int(n) for n in re.findall(r"Node unit(\d+) job proc \([\d.]+\) completed successfully", r.stdout)}


def _runs(info, wd: str) -> list[int]:
    r = on_site(info, f"cd {wd} && for i in $(seq 0 {UNITS - 1}); do "
                      "if [ -e runs_$i.log ]; then wc -l < runs_$i.log; else echo 0; fi; done")
    return [int(x) for x in r.stdout.split()]


@pytest.mark.parametrize("fault", ["schedd", "dagman"])
def test_condor_daemon_killed_during_a_round(site_info, airflow_home, condor_pool, fault, fault_record):
    row = fault_record(12 if fault == "schedd" else 13, "htcondor")
    conn = site_conn(site_info, "htcondor", outage_grace=300, status_timeout=30, connect_timeout=4, max_backoff=8)
    tag, _, p = start_task(airflow_home, "counted", {"sleep": 4, "site": "the_site"}, the_site=conn)
    a = TaskOutput(p)
    key = wait_for_record(site_info, tag)
    wd = f"{site_info['remote_root']}/test/{tag}/{key}"

    deadline = time.monotonic() + 180
    while len(_finished_nodes(site_info, wd)) < 2:  # throttle 2: kill after the first wave
        assert time.monotonic() < deadline, f"no node finished:\n{a.text[-3000:]}"
        time.sleep(0.3)
    before = _finished_nodes(site_info, wd)
    if fault == "schedd":
        r = _site_cmd("kill-schedd", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        pids = on_site(site_info, f"pgrep -u $(id -u) -f 'condor_dagman.*{key}'").stdout.split()
        assert len(pids) == 1, pids
        assert on_site(site_info, f"kill -KILL {pids[0]}").returncode == 0
    t_fault = time.monotonic()

    out = a.finish(timeout=600)
    assert "Task failed" not in out, out[-5000:]
    runs = _runs(site_info, wd)
    dagmans = dagman_jobs(site_info, key)
    log = on_site(site_info, f"cat {wd}/*.dagman.out").stdout
    rerun_finished = [i for i in before if runs[i] != 1]
    row.jobs_lost = sum(1 for c in runs if c == 0)
    row.double_submissions = (len(dagmans) - 1) + len(rerun_finished)
    row.measured = (f"nodes {sorted(before)} done before the kill ran once; unit runs {runs}; "
                    f"{len(dagmans)} DAGMan job; round done {time.monotonic() - t_fault:.0f} s after the kill"
                    + ("; DAGMan restarted in recovery mode" if "Running in RECOVERY mode" in log else ""))
    assert rerun_finished == [], (before, runs)
    assert len(dagmans) == 1, dagmans  # recovered in place, never a fresh DAG
    assert row.jobs_lost == 0, runs
    assert on_site(site_info, f"cat {wd}/fanin_runs.txt").stdout.strip() == str(sum(runs))
    if fault == "dagman":
        assert "Running in RECOVERY mode" in log or "USING RESCUE DAG" in log, log[-3000:]


def test_slurm_time_limit_reruns_with_a_longer_limit(site_info, slurm_timeout_run, fault_record):
    """6 (Slurm): a unit killed at its --time (TIMEOUT) is detected as such and rerun alone with
    twice the limit; the others are not rerun."""
    row = fault_record(6, "slurm, TIMEOUT")
    tag, a = slurm_timeout_run["tag"], slurm_timeout_run["reader"]
    out = a.finish(timeout=600)
    assert "Task failed" not in out, out[-5000:]
    assert re.search(r"units \[0\] hit their time limit \(1 min\): .* time 1 -> 2 min", out), out[-4000:]
    key = re.search(r"round (bs-slowslurm-[0-9a-f]+)", out).group(1)
    wd = f"{site_info['remote_root']}/test/{tag}/{key}"
    counts = [int(x) for x in on_site(site_info, f"cd {wd} && cat runs_0.log | wc -l; cat runs_1.log | wc -l; "
                                                 "cat runs_2.log | wc -l").stdout.split()]
    states = slurm_states(site_info, key)
    assert "TIMEOUT" in states.values(), states
    # the limit each attempt actually ran with, as Slurm enforced it: the rescue's is larger
    limits = on_site(site_info, f"sacct -n -P -X --name={key} --starttime=now-1days -o JobID,Timelimit").stdout
    by_array: dict[str, set[str]] = {}
    for line in limits.split():
        job, limit = line.split("|")
        if "_" in job:
            by_array.setdefault(job.split("_")[0], set()).add(limit)
    first, rescue = (by_array[a] for a in sorted(by_array, key=int))
    assert (first, rescue) == ({"00:01:00"}, {"00:02:00"}), by_array
    row.jobs_lost = sum(1 for c in counts if c == 0)
    row.double_submissions = (counts[0] - 2) + (counts[1] - 1) + (counts[2] - 1)
    row.measured = f"TIMEOUT at --time=1 -> rerun of unit 0 only with 2 min; unit runs {counts}"
    assert counts == [2, 1, 1]
