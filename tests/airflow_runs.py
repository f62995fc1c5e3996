"""Driving single tasks of the test DAG (tests/dags/batchsite_test_jobs.py) and counting what
exists on the real site: the shared helpers of the integration and fault-injection tests."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import time
import uuid

from .conftest import REPO, VENV_BIN, airflow_env, on_site

TEST_DAGS = REPO / "tests" / "dags"


def trigger_run(home, run_id: str, conf: dict, **conns) -> None:
    """A DAG run of batchsite_test_jobs with ``run_id``: its tasks are then run by `tasks test`."""
    env = airflow_env(home, **conns)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(TEST_DAGS)
    subprocess.run([str(VENV_BIN / "airflow"), "dags", "reserialize"], env=env, capture_output=True, timeout=300)
    r = subprocess.run([str(VENV_BIN / "airflow"), "dags", "trigger", "batchsite_test_jobs", "-r", run_id,
                        "-c", json.dumps(conf)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def task_process(home, task_id: str, run_id: str, **conns) -> subprocess.Popen:
    """`airflow tasks test` of one task in its own process group (so a test can SIGKILL it)."""
    env = airflow_env(home, **conns)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(TEST_DAGS)
    return subprocess.Popen([str(VENV_BIN / "airflow"), "tasks", "test", "batchsite_test_jobs", task_id, run_id],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def start_task(home, task_id: str, conf: dict, **conns) -> tuple[str, str, subprocess.Popen]:
    """A fresh DAG run (its own ``tag``, hence its own directory on the site) and the task's
    process: ``(tag, run_id, process)``."""
    tag = f"{re.sub('[^a-z]', '', task_id)[:6]}{uuid.uuid4().hex[:6]}"
    run_id = f"{task_id}_{tag}"
    trigger_run(home, run_id, {**conf, "tag": tag}, **conns)
    return tag, run_id, task_process(home, task_id, run_id, **conns)


class TaskOutput:
    """Collects a task process's output in the background (so a test can wait for a line)."""

    def __init__(self, p: subprocess.Popen):
        self.p, self.lines = p, []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, x) for x in self.lines):
            assert self.p.poll() is None or self._t.is_alive(), f"task ended before {pattern!r}:\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout}s:\n{self.text[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float) -> str:
        self.p.wait(timeout=timeout)
        self._t.join(timeout=10)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def wait_for_record(info, tag: str, timeout: float = 120) -> str:
    """The round key, once the submission record of the round under test/<tag> exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = on_site(info, f"ls -d {info['remote_root']}/test/{tag}/*/.batchsite/submitted 2>/dev/null")
        if r.stdout.strip():
            return r.stdout.split()[0].split("/")[-3]
        time.sleep(0.2)
    raise AssertionError(f"no submission record appeared for tag {tag}")


def slurm_jobs_named(info, name: str) -> list[str]:
    """Distinct Slurm jobs (array parents and plain jobs) named ``name``: squeue (live, incl.
    just-submitted) and sacct (finished) together, since slurmdbd records with a lag."""
    r = on_site(info, f"squeue -h -a -t all -n {name} -o %F; "
                      f"sacct -n -P -X --name={name} --starttime=now-1days -o JobID")
    assert r.returncode == 0, r.stderr
    return sorted({line.split("_")[0] for line in r.stdout.split() if line.strip()})


def slurm_states(info, name: str, timeout: float = 60, min_entries: int = 1) -> dict[str, str]:
    """Final accounting state of every array task and job named ``name`` (waits for sacct).

    slurmdbd records jobs a moment after they end: wait until at least ``min_entries`` lines
    are there (the units the test knows ran) as well as none of them pending or running."""
    deadline = time.monotonic() + timeout
    while True:
        r = on_site(info, f"sacct -n -P -X --name={name} --starttime=now-1days -o JobID,State")
        states = dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)
        if len(states) >= max(1, min_entries) and all(
                s not in ("PENDING", "RUNNING", "REQUEUED") for s in states.values()):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(1)


def squeue_named(info, name: str) -> list[str]:
    return on_site(info, f"squeue -h -n {name} -o %i").stdout.split()


def dagman_jobs(info, key: str) -> list[str]:
    """DAGMan jobs (scheduler universe) of round ``key``, queued or in the history."""
    c = shlex.quote(f'JobBatchName == "{key}" && JobUniverse == 7')
    r = on_site(info, f"condor_q -constraint {c} -af ClusterId; condor_history -constraint {c} -af ClusterId")
    return sorted(set(r.stdout.split()))


def live_jobs(info, scheduler: str, key: str) -> list[str]:
    if scheduler == "slurm":
        return squeue_named(info, key)
    c = shlex.quote(f'JobBatchName == "{key}"')
    return on_site(info, f"condor_q -constraint {c} -af ClusterId").stdout.split()
