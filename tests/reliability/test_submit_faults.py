"""Submission faults on the REAL test site (issue 13): no fault during a submission may lead
to a second submission of the same round, nor lose the one that was made.

* a flapping slurmctld: a per-test PATH shim (``sbatch`` of the fan-in and ``scancel`` fail as
  against an unreachable slurmctld; the array itself goes to the real Slurm, held so it stays
  PENDING) put first on PATH by a test-local ``env_script``, which the connection names and
  every remote command sources;
* fault 1 in its real window: the test-local ``env_script`` sets submit_once.sh's test hook
  (``BATCHSITE_TEST_PAUSE_AFTER_ACCEPT``), so the submission stops right after the scheduler
  accepted the jobs and before the record is written; the test SIGKILLs the task AND the
  remote submitting shell there, and runs the task again: the jobs are found by name;
* HTCondor re-attach (defect 7): a DAG that finished and left the queue is found in the
  history; the ``schedd`` extra reaches every condor command (seen by a logging shim) and a
  wrong one fails naming the extra;
* defect 2 at the operator: a fresh execute after a narrowed rescue re-attaches to the rescue
  and keeps the units the first attempt finished DONE.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid

import pytest

from batchsite.config import site_config_from_connection
from batchsite.hooks.site import site_for_conn
from batchsite.model import RoundSpec, WorkUnit
from batchsite.site import SiteCommandError

from ..airflow_runs import TaskOutput, dagman_jobs, slurm_jobs_named, start_task, task_process
from ..conftest import on_site, site_conn
from .counting import round_count

CTLD_DOWN = "Unable to contact slurm controller (connect failure)"

#: name -> body of the shim tools (POSIX sh); {real} is the real tool's path on the site
SHIMS = {
    # the array is accepted (held: it stays PENDING); the fan-in (afterok) is refused
    "sbatch": f"""case " $* " in *" --dependency="*)
  echo "sbatch: error: Batch job submission failed: {CTLD_DOWN}" >&2; exit 1 ;;
esac
exec {{real}} --hold "$@"
""",
    "scancel": f"""echo "scancel: error: Kill job error on job id $1: {CTLD_DOWN}" >&2
exit 1
""",
}


def install_flapping_slurm(info: dict, base: str) -> str:
    """The shim tools under ``base``/shim and the env script that puts them first on PATH."""
    lines = [f"mkdir -p {shlex.quote(base)}/shim"]
    for name, body in SHIMS.items():
        real = on_site(info, f"command -v {name}").stdout.strip()
        assert real.startswith("/"), f"no {name} on the site"
        path = f"{base}/shim/{name}"
        lines.append(f"printf '%s' {shlex.quote('#!/bin/sh' + chr(10) + body.replace('{real}', real))} > {path}")
        lines.append(f"chmod 755 {path}")
    env = f". {shlex.quote(info['env_script'])}\nexport PATH={shlex.quote(base)}/shim:$PATH\n"
    lines.append(f"printf '%s' {shlex.quote(env)} > {base}/env.sh")
    r = on_site(info, " && ".join(lines))
    assert r.returncode == 0, r.stderr
    return f"{base}/env.sh"


@pytest.fixture
def flapping_slurm_site(site_info, monkeypatch):
    base = f"{site_info['remote_root']}/test/flap{uuid.uuid4().hex[:8]}"
    conn = site_conn(site_info, "slurm", env_script=install_flapping_slurm(site_info, base))
    monkeypatch.setenv("AIRFLOW_CONN_FLAPPING_SLURM", json.dumps(conn))
    cfg = site_config_from_connection("flapping_slurm", conn["host"], conn["port"], conn["login"], conn["extra"])
    site = site_for_conn(cfg)
    site.lock_wait_seconds = 5
    yield site, cfg, base
    site.close()


def test_a_failed_cancel_never_leads_to_a_second_submission(site_info, flapping_slurm_site):
    """Defect 1: the fan-in sbatch fails, and so does submit.sh's scancel of the array. The
    array is still PENDING: the next attempt must not treat it as gone and submit again."""
    site, cfg, base = flapping_slurm_site
    key = f"bs-flap-{uuid.uuid4().hex[:8]}"
    spec = RoundSpec(key=key, label="flap", workdir=f"{base}/{key}", env_script=cfg.env_script,
                     units=[WorkUnit(index=i, argv=["true"]) for i in range(2)], fanin=["true"])
    try:
        with pytest.raises(SiteCommandError, match="sbatch fanin.sh failed") as first:
            site.submit(spec)
        assert CTLD_DOWN in str(first.value)
        arrays = slurm_jobs_named(site_info, key)
        assert len(arrays) == 1, arrays
        state = on_site(site_info, f"squeue -h -a -t all --name={key} -o %T").stdout.split()
        assert state and set(state) == {"PENDING"}, state  # the cancel did not happen

        # the next attempt (a task retry): finds the array by name, sees it is not CANCELLED,
        # and stops with a clear error instead of submitting the round a second time
        with pytest.raises(SiteCommandError, match="did not take effect") as second:
            site.submit(spec)
        assert f"scancel {arrays[0]}" in str(second.value) and "Nothing is submitted again" in str(second.value)
        assert slurm_jobs_named(site_info, key) == arrays  # exactly one array, no fan-in, ever
    finally:
        on_site(site_info, f"scancel --name={key}")  # the real scancel: the shim is only in env.sh


# ---------------------------------------------------------------------------- fault 1's real window

def wait_on_site(info: dict, command: str, what: str, timeout: float = 120) -> str:
    """Poll ``command`` on the site until it prints something; its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = on_site(info, command).stdout.strip()
        if out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"{what}: nothing after {timeout} s ({command})")


def install_pause_hook(info: dict, base: str) -> tuple[str, str]:
    """A test-local env_script that sets submit_once.sh's test hook: every submission made
    through it stops after the scheduler accepted it, before the record is written, until
    ``<base>/release`` exists. Returns (env_script, release file)."""
    release = f"{base}/release"
    env = f". {shlex.quote(info['env_script'])}\nexport BATCHSITE_TEST_PAUSE_AFTER_ACCEPT={shlex.quote(release)}\n"
    r = on_site(info, f"mkdir -p {shlex.quote(base)} && printf '%s' {shlex.quote(env)} > {shlex.quote(base)}/env.sh")
    assert r.returncode == 0, r.stderr
    return f"{base}/env.sh", release


def kill_in_the_window(info: dict, release: str, workdirs: str) -> tuple[str, str]:
    """Wait until a submission is paused in the window, SIGKILL its remote shell (its record
    can now never be written); returns (round key, remote pid). ``workdirs``: a glob of the
    round directories the submission may use."""
    pid = wait_on_site(info, f"cat {release}.accepted 2>/dev/null", "the submission never reached the window")
    lock = wait_on_site(info, f"ls -d {workdirs}/.batchsite/lock 2>/dev/null", "no lock")
    key = lock.split()[0].split("/")[-3]
    r = on_site(info, f"kill -9 {int(pid)} && ! test -e {lock.split()[0]}/../submitted && echo killed")
    assert r.stdout.strip() == "killed", (r.stdout, r.stderr)
    return key, pid


def run_to_end(p: subprocess.Popen, timeout: float) -> str:
    """The task process's whole output; on timeout it is SIGKILLed and the test fails with its tail."""
    out = TaskOutput(p)
    try:
        return out.finish(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out.finish(timeout=30)
        raise AssertionError(f"the task did not end within {timeout} s:\n{out.text[-5000:]}") from None


def scheduler_jobs(info: dict, scheduler: str, key: str) -> list[str]:
    """What the scheduler holds of round ``key``: Slurm jobs (arrays + fan-in) or DAGMan jobs."""
    return slurm_jobs_named(info, key) if scheduler == "slurm" else dagman_jobs(info, key)


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_fault1_killed_between_acceptance_and_record_reattaches_by_name(site_info, airflow_home, condor_pool,
                                                                        scheduler, fault_record):
    """Fault 1 in the real window: the scheduler accepted the round, the record is not written,
    the task (operator process) and the remote submitting shell are SIGKILLed. The task run
    again with the same key must find the jobs by name, record them and watch them: exactly
    one array + one fan-in (Slurm) or one DAGMan job (HTCondor) on the scheduler."""
    row = fault_record(1, f"{scheduler}, killed after the scheduler accepted, before the record")
    base = f"{site_info['remote_root']}/test/win{uuid.uuid4().hex[:8]}"
    env_script, release = install_pause_hook(site_info, base)
    conn = site_conn(site_info, scheduler, env_script=env_script)
    task = "deferred" if scheduler == "slurm" else "deferred_any"
    tag, run_id, p = start_task(airflow_home, task, {"sleep": 4, "site": "the_site"}, the_site=conn)
    first = TaskOutput(p)
    key, pid = kill_in_the_window(site_info, release, f"{site_info['remote_root']}/test/{tag}/*")
    os.killpg(p.pid, signal.SIGKILL)
    first.finish(timeout=60)
    assert "submitted round" not in first.text and "re-attached" not in first.text, first.text[-3000:]
    accepted = scheduler_jobs(site_info, scheduler, key)
    expected = 2 if scheduler == "slurm" else 1  # array + afterok fan-in / one DAGMan job
    assert len(accepted) == expected, accepted  # the scheduler has the round; the site has no record

    on_site(site_info, f"touch {release}")  # a (wrong) second submission would not hang in the hook
    out = run_to_end(task_process(airflow_home, task, run_id, the_site=conn), 400)
    assert "Task failed" not in out and "ERROR" not in out, out[-5000:]
    assert re.search(rf"re-attached to existing round {key} .* as job {re.escape(accepted[0])}", out), out[-5000:]
    record = on_site(site_info, f"cat {site_info['remote_root']}/test/{tag}/{key}/.batchsite/submitted").stdout
    assert "found by scheduler name" in record, record

    jobs = scheduler_jobs(site_info, scheduler, key)
    counted = round_count(site_info, scheduler, key, 4)
    row.jobs_lost, row.double_submissions = counted.lost, counted.double
    kind = "Slurm jobs (array + fan-in)" if scheduler == "slurm" else "DAGMan job(s)"
    row.measured = (f"task + remote submit shell (pid {pid}) SIGKILLed with no record on the site; rerun found "
                    f"{len(accepted)} {kind} by name and re-attached; {len(jobs)} {kind} afterwards")
    assert jobs == accepted and counted.double == 0 and counted.lost == 0, counted.states


# ---------------------------------------------------------------------------- HTCondor re-attach, schedd

def condor_site(info: dict, monkeypatch, **extra):
    """A Site on the pool through the Airflow connection ``condor_faults`` made of ``extra``."""
    conn = site_conn(info, "htcondor", **extra)
    monkeypatch.setenv("AIRFLOW_CONN_CONDOR_FAULTS", json.dumps(conn))
    cfg = site_config_from_connection("condor_faults", conn["host"], conn["port"], conn["login"], conn["extra"])
    site = site_for_conn(cfg)
    site.lock_wait_seconds = 5
    return site, cfg


def small_round(base: str, env_script: str, tag: str) -> RoundSpec:
    key = f"bs-{tag}-{uuid.uuid4().hex[:8]}"
    return RoundSpec(key=key, label=tag, workdir=f"{base}/{key}", env_script=env_script,
                     units=[WorkUnit(index=i, argv=["true"]) for i in range(2)], fanin=["true"])


def test_htcondor_dag_that_left_the_queue_is_reattached_from_history(site_info, condor_pool, monkeypatch):
    """The submission is killed in the window, and its DAG runs to the end and leaves the queue
    before anyone looks: the next submit finds it in condor_history by batch name and adopts
    it (1 DAGMan job in condor_q + condor_history), instead of failing or submitting again."""
    base = f"{site_info['remote_root']}/test/hist{uuid.uuid4().hex[:8]}"
    env_script, release = install_pause_hook(site_info, base)
    site, cfg = condor_site(site_info, monkeypatch, env_script=env_script)
    spec = small_round(base, env_script, "hist")
    errors: list[BaseException] = []

    def first_submit() -> None:
        try:
            site.submit(spec)
        except BaseException as e:  # noqa: BLE001 - the killed submission's error is expected
            errors.append(e)

    t = threading.Thread(target=first_submit, daemon=True)
    t.start()
    try:
        key, _ = kill_in_the_window(site_info, release, spec.workdir)
        t.join(timeout=60)
        assert errors, "the killed submission returned normally"
        (cluster,) = dagman_jobs(site_info, key)
        c = shlex.quote(f'JobBatchName == "{key}" && JobUniverse == 7')
        # DAGMan finishes the round and leaves the queue: only the history knows it now
        wait_on_site(site_info, f"test -z \"$(condor_q -constraint {c} -af ClusterId)\" && "
                                f"condor_history -constraint {c} -af ClusterId", "the DAG never left the queue", 180)
        on_site(site_info, f"touch {release}")
        again, _ = condor_site(site_info, monkeypatch, env_script=env_script)
        sub = again.submit(spec)
        assert sub.adopted and sub.fanout_id == cluster and sub.schedd, sub
        assert dagman_jobs(site_info, key) == [cluster]  # condor_q + condor_history: exactly one
        status = again.status([sub])[key]
        assert status.succeeded, status.progress_line(key)
        again.close()
    finally:
        on_site(site_info, f"touch {release}")
        site.close()


SCHEDD_LOG_SHIM = """#!/bin/sh
printf '%s %s %s\\n' "${_CONDOR_SCHEDD_HOST:--}" "${0##*/}" "$*" >> {log}
exec {real} "$@"
"""


def install_condor_log_shim(info: dict, base: str) -> tuple[str, str]:
    """condor_submit_dag, condor_q, condor_history, condor_rm and condor_release wrapped on
    PATH (by a test-local env_script) to log `<_CONDOR_SCHEDD_HOST or -> <tool> <argv>` to a file."""
    log = f"{base}/condor.log"
    lines = [f"mkdir -p {shlex.quote(base)}/shim"]
    for tool in ("condor_submit_dag", "condor_q", "condor_history", "condor_rm", "condor_release"):
        real = on_site(info, f"command -v {tool}").stdout.strip()
        assert real.startswith("/"), f"no {tool} on the site"
        body = SCHEDD_LOG_SHIM.replace("{log}", shlex.quote(log)).replace("{real}", shlex.quote(real))
        lines += [f"printf '%s' {shlex.quote(body)} > {base}/shim/{tool}", f"chmod 755 {base}/shim/{tool}"]
    env = f". {shlex.quote(info['env_script'])}\nexport PATH={shlex.quote(base)}/shim:$PATH\n"
    lines.append(f"printf '%s' {shlex.quote(env)} > {base}/env.sh")
    r = on_site(info, " && ".join(lines))
    assert r.returncode == 0, r.stderr
    return f"{base}/env.sh", log


def test_schedd_extra_reaches_every_condor_command_and_works(site_info, condor_pool, monkeypatch):
    """The `schedd` extra set to the pool's schedd: the submission goes through
    _CONDOR_SCHEDD_HOST, and condor_q / condor_history / condor_rm / condor_release of the
    round (a record without a schedd name too) all carry -name <schedd>; the round runs."""
    schedd = on_site(site_info, "condor_status -schedd -af Name").stdout.split()[0]
    base = f"{site_info['remote_root']}/test/schedd{uuid.uuid4().hex[:8]}"
    env_script, log = install_condor_log_shim(site_info, base)
    site, cfg = condor_site(site_info, monkeypatch, env_script=env_script, schedd=schedd)
    assert cfg.schedd == schedd and site.backend.schedd == schedd
    spec = small_round(base, env_script, "schedd")
    try:
        sub = site.submit(spec)
        assert sub.schedd == schedd
        deadline = time.monotonic() + 180
        while not (status := site.status([sub])[spec.key]).finished:
            assert time.monotonic() < deadline, status.progress_line(spec.key)
            time.sleep(1)
        assert status.succeeded, status.progress_line(spec.key)
        # a record that names no schedd is asked on the configured one
        unnamed = sub.model_copy(update={"schedd": None})
        assert site.status([unnamed])[spec.key].succeeded
        site.release([unnamed])
        site.cancel([unnamed])
        calls = on_site(site_info, f"cat {log}").stdout.splitlines()
    finally:
        site.close()
    tools = {line.split()[1]: line for line in calls}
    assert set(tools) == {"condor_submit_dag", "condor_q", "condor_history", "condor_rm", "condor_release"}, calls
    submit = [line for line in calls if line.split()[1] == "condor_submit_dag"]
    assert len(submit) == 1 and submit[0].startswith(f"{schedd} "), submit
    for line in calls:
        tool = line.split()[1]
        if tool == "condor_submit_dag" or (tool == "condor_q" and line.split()[2].isdigit()):
            continue  # submit.sh's own queries run under _CONDOR_SCHEDD_HOST
        assert f" -name {schedd} " in line, line


def test_wrong_schedd_extra_fails_clearly_naming_it(site_info, condor_pool, monkeypatch):
    """A `schedd` extra that names no schedd of the pool: the submission fails with an error
    naming the extra and the name, nothing is submitted, and a retry fails the same way."""
    base = f"{site_info['remote_root']}/test/noschedd{uuid.uuid4().hex[:8]}"
    site, cfg = condor_site(site_info, monkeypatch, schedd="nosuch@vm")
    spec = small_round(base, cfg.env_script, "noschedd")
    try:
        for attempt in ("submit", "retry (the failed lock is looked up by name)"):
            with pytest.raises(SiteCommandError) as e:
                site.submit(spec)
            assert "`schedd` extra" in str(e.value) and "'nosuch@vm'" in str(e.value), (attempt, str(e.value))
        assert dagman_jobs(site_info, spec.key) == []
    finally:
        site.close()


# ---------------------------------------------------------------------------- defect 2 at the operator

@pytest.mark.parametrize("scheduler", ["local", "slurm"])
def test_fresh_execute_after_a_narrowed_rescue_keeps_done_units_done(site_info, airflow_home, scheduler, tmp_path,
                                                                     monkeypatch):
    """The `flaky` round (units 1 and 4 fail once) is rescued by an array of [1, 4] only; the
    task is then run again with the same key (a retry or a clear): a fresh BatchRoundOperator
    execute. It must re-attach to the rescue attempt, report all 8 units DONE (the 6 the first
    attempt finished included) and submit nothing."""
    if scheduler == "local":
        monkeypatch.setenv("BATCHSITE_LOCAL_ROOT", str(tmp_path / "site"))
        conns: dict = {}
        site_name, root = "local", str(tmp_path / "site")

        def sh(command: str) -> str:
            return subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout
    else:
        conns = {"the_site": site_conn(site_info, "slurm")}
        site_name, root = "the_site", site_info["remote_root"]

        def sh(command: str) -> str:
            return on_site(site_info, command).stdout
    tag, run_id, p = start_task(airflow_home, "flaky", {"site": site_name}, **conns)
    out = run_to_end(p, 600)
    assert "Task failed" not in out and "rescue round submitted" in out, out[-5000:]
    key = re.search(r"round (bs-flaky-[0-9a-f]+)", out).group(1)
    wd = f"{root}/test/{tag}/{key}"
    header = sh(f"head -n 1 {wd}/.batchsite/submitted").split()
    assert "attempt=2" in header and "indices=1,4" in header, header

    def unit_runs() -> list[int]:
        text = sh(f"cd {wd} && for i in 0 1 2 3 4 5 6 7; do printf '%s ' $(wc -l < runs_$i.log); done")
        return [int(x) for x in text.split()]

    runs_before = unit_runs()
    jobs_before = slurm_jobs_named(site_info, key) if scheduler == "slurm" else None
    again = run_to_end(task_process(airflow_home, "flaky", run_id, **conns), 400)
    assert "Task failed" not in again, again[-5000:]
    assert f"re-attached to existing round {key}" in again, again[-5000:]
    assert re.search(r"flaky: 8/8 done; fan-in done", again), again[-5000:]
    assert "rescue round submitted" not in again
    assert unit_runs() == runs_before == [1, 2, 1, 1, 2, 1, 1, 1]
    assert sh(f"ls {wd}/.batchsite").split().count("submitted.1") == 1
    assert not sh(f"ls {wd}/.batchsite/submitted.2 2>/dev/null").strip()
    if scheduler == "slurm":
        assert slurm_jobs_named(site_info, key) == jobs_before and len(jobs_before) == 4  # 2 arrays + 2 fan-ins
