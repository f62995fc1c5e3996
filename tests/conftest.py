"""Shared fixtures: the REAL test site (sshd + Slurm [+ HTCondor]) and an Airflow home.

The site is started by ``tests/site/site.sh`` (idempotent; < 2 s when already up). If it
cannot start, every test that needs it ERRORS with the script's output: nothing is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE_SH = REPO / "tests" / "site" / "site.sh"
STATE = Path(os.environ.get("BATCHSITE_SITE_DIR", REPO / ".state" / "site"))
VENV_BIN = Path(sys.executable).parent


def _site_cmd(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SITE_SH), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def site_info() -> dict:
    r = _site_cmd("start")
    if r.returncode != 0:
        pytest.fail(
            "the real test site (tests/site/site.sh start) could not start:\n"
            f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}",
            pytrace=False,
        )
    return json.loads((STATE / "site.json").read_text())


def site_conn(info: dict, scheduler: str = "slurm", **extra) -> dict:
    """The Airflow connection (as AIRFLOW_CONN_* JSON) of the real test site."""
    ex = {
        "scheduler": scheduler,
        "remote_root": info["remote_root"],
        "env_script": info["env_script"],
        "key_file": info["key_file"],
        "known_hosts": info["known_hosts"],
        "python": "/usr/bin/python3",
        "poll_interval": 1,
        "vanish_grace": 20,
    }
    ex.update(extra)
    return {"conn_type": "batchsite", "host": info["host"], "port": int(info["port"]),
            "login": info["user"], "extra": ex}


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env(home)
    r = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return home


def airflow_env(home: Path, **conns: dict) -> dict:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
    })
    for name, conn in conns.items():
        env[f"AIRFLOW_CONN_{name.upper()}"] = json.dumps(conn)
    return env


def dags_test(home: Path, dag_id: str, conf: dict, timeout: int = 900, **conns) -> subprocess.CompletedProcess:
    """``airflow dags test`` in a subprocess; SIGKILL on timeout (dags test ignores SIGTERM)."""
    env = airflow_env(home, **conns)
    cmd = ["timeout", "-s", "KILL", str(timeout), str(VENV_BIN / "airflow"), "dags", "test", dag_id,
           "-c", json.dumps(conf)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def clone_airflow_home(src: Path, dst: Path) -> Path:
    """Another AIRFLOW_HOME holding a consistent copy of ``src``'s migrated SQLite DB (backup
    API), so that several ``dags test`` runs can go at once without a ``db migrate`` each."""
    import sqlite3

    dst.mkdir(parents=True)
    with sqlite3.connect(src / "airflow.db") as a, sqlite3.connect(dst / "airflow.db") as b:
        a.backup(b)
    return dst


def dags_tests_in_parallel(home: Path, runs: list[tuple[str, dict, dict]], timeout: int = 300,
                           workers: int = 3) -> list[subprocess.CompletedProcess]:
    """``dags_test`` for each ``(dag_id, conf, conns)``, each on its own copy of ``home``."""
    import shutil
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    def one(arg):
        i, (dag_id, conf, conns) = arg
        mine = clone_airflow_home(home, home.parent / f"{home.name}-par{i}-{uuid.uuid4().hex[:6]}")
        try:
            return dags_test(mine, dag_id, conf, timeout=timeout, **conns)
        finally:
            shutil.rmtree(mine, ignore_errors=True)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, enumerate(runs)))


def ssh_argv(info: dict, command: str) -> list[str]:
    """The system ssh client to the site, for test assertions (squeue counts, files)."""
    return ["ssh", "-i", info["key_file"], "-o", f"UserKnownHostsFile={info['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(info["port"]),
            f"{info['user']}@{info['host']}", command]


def on_site(info: dict, command: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_argv(info, f". {info['env_script']} && {command}"), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def condor_pool(site_info) -> dict:
    """The real HTCondor personal pool, run as the SSH test user."""
    r = _site_cmd("start-condor")
    if r.returncode != 0:
        pytest.fail(f"the HTCondor pool (tests/site/site.sh start-condor) could not start:\n{r.stdout[-4000:]}\n"
                    f"{r.stderr[-4000:]}", pytrace=False)
    return json.loads((STATE / "site.json").read_text())


# ----------------------------------------------------------------------------- reliability ledger
# Fault-injection and hostile-input tests record what they tried and counted; the test's own
# outcome decides "survived". At session end the rows of the tests that RAN go, with the
# commit and the time, to .state/reliability/results-<run>.json (untracked); the README table
# is made from it by `python -m tests.reliability.ledger --readme`.
_LEDGER_ROWS: list = []


@pytest.fixture
def fault_record(request):
    """``row = fault_record(2, "slurm")`` at the start of a fault test, then fill in the counts
    (``involves_jobs=False`` for faults without jobs: their cells read "n/a")."""
    from tests.reliability.ledger import FaultRow

    rows = request.node.__dict__.setdefault("_ledger_rows", [])

    def record(fault: int, case: str, **kw) -> FaultRow:
        row = FaultRow(fault=fault, case=case, test=request.node.nodeid.split("::", 1)[-1], **kw)
        rows.append(row)
        return row

    return record


@pytest.fixture
def hostile_record(request):
    from tests.reliability.ledger import HostileRow

    rows = request.node.__dict__.setdefault("_ledger_rows", [])

    def record(target: str, **kw) -> HostileRow:
        row = HostileRow(target=target, test=request.node.nodeid.split("::", 1)[-1], **kw)
        rows.append(row)
        return row

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    rows = item.__dict__.get("_ledger_rows")
    if not rows or rep.when != "call":
        return
    from tests.reliability.ledger import FaultRow, utc_now

    for row in rows:
        if isinstance(row, FaultRow):
            row.survived = rep.passed
        else:
            row.passed = rep.passed
        row.recorded_at = utc_now()
    _LEDGER_ROWS.extend(rows)


def pytest_sessionstart(session):
    from tests.reliability.ledger import new_run

    session.config._ledger_run = new_run()  # the commit as the session found it


def pytest_sessionfinish(session, exitstatus):
    if not _LEDGER_ROWS:
        return
    from tests.reliability import ledger

    run = session.config._ledger_run
    for row in _LEDGER_ROWS:
        row.commit = run.commit
    path = ledger.write_results(run, _LEDGER_ROWS)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"reliability ledger: {len(_LEDGER_ROWS)} rows -> {path.relative_to(REPO)}; "
                            f"README table: {ledger.COMMAND}")
