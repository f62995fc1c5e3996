"""A REAL Airflow 3 deployment for the tests, as users run one.

``airflow db migrate`` on PostgreSQL (the test site's cluster: a throwaway database per test
session, so two sessions never share a metadata DB), then ``api-server``, ``scheduler
--skip-serve-logs``, ``dag-processor`` and ``triggerer --skip-serve-logs`` as separate
processes: LocalExecutor with a small parallelism, SimpleAuthManager with a generated admin
password, its own AIRFLOW_HOME, the repository's ``dags/`` plus ``tests/dags/``, and the
batchsite connections of the test site (``slurm_site``, ``condor_site``; ``local`` needs none).

Health is polled (``/api/v2/monitor/health`` until the scheduler, triggerer and DAG processor
report healthy, then until the DAGs are parsed); every process is stopped by its PID at the
end. A component that cannot start FAILS the tests with the tail of its log; nothing is skipped.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2
import pytest

from ..conftest import REPO, VENV_BIN, on_site, site_conn
from .client import AirflowClient

ADMIN = "admin"
#: the DAGs every deployment test needs parsed before it starts
REQUIRED_DAGS = ("rg_campaign", "batchsite_headline", "campaign_outputs")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

#: the slow-poll connections' env script (on the site, beside the site's own) sources the site's
#: and then holds every batch job (Slurm or HTCondor) of their rounds while GATE_HOLD exists, at
#: most 300 s: a fault test kills the triggerer while the round surely still runs, however fast
#: the site is, and lets the jobs go after the new triggerer is up
GATED_ENV = "fault-gate/env.sh"
GATE_HOLD = "fault-gate/hold"
_GATED_ENV_SCRIPT = """. {site_env}
if [ -n "${{SLURM_JOB_ID:-}}${{_CONDOR_JOB_AD:-}}" ]; then
  bs_gate_ticks=0
  while [ -e {hold} ] && [ "$bs_gate_ticks" -lt 3000 ]; do sleep 0.1; bs_gate_ticks=$((bs_gate_ticks + 1)); done
fi
"""


def site_home_path(info: dict, relative: str) -> str:
    """A path beside the site's env script (the site user's home)."""
    return f"{os.path.dirname(info['env_script'])}/{relative}"


def install_gated_env(info: dict) -> str:
    path, hold = site_home_path(info, GATED_ENV), site_home_path(info, GATE_HOLD)
    text = _GATED_ENV_SCRIPT.format(site_env=info["env_script"], hold=hold)
    r = on_site(info, f"mkdir -p {os.path.dirname(path)} && rm -f {hold} && printf '%s' {shlex.quote(text)} > {path}.tmp"
                      f" && mv {path}.tmp {path}")
    if r.returncode != 0:
        pytest.fail(f"could not write {path} on the site: {r.stderr}", pytrace=False)
    return path


START_TIMEOUT = float(os.environ.get("BATCHSITE_DEPLOYMENT_START_TIMEOUT", "180"))
STOP_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_database(uri: str, database: str, driver: str = "postgresql") -> str:
    parts = urlsplit(uri)
    return urlunsplit((driver, parts.netloc, f"/{database}", "", ""))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Deployment:
    home: Path
    base_url: str
    env: dict[str, str]
    admin_password: str
    site: dict
    local_root: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    log_files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def command(self, component: str) -> list[str]:
        port = urlsplit(self.base_url).port
        args = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            # without --skip-serve-logs it would bind 0.0.0.0:8794; the API reads logs from disk
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }[component]
        return [str(VENV_BIN / "airflow"), *args]

    def start(self, component: str) -> subprocess.Popen:
        """Start one component in its own process group (so it and its children stop together)."""
        n = sum(1 for k in self.log_files if k.startswith(component))
        log = self.home / "logs" / f"{component}{'' if n == 0 else f'.{n}'}.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            p = subprocess.Popen(self.command(component), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.home)
        self.processes[component] = p
        self.log_files[f"{component}{'' if n == 0 else f'.{n}'}"] = log
        return p

    def log_of(self, component: str) -> Path:
        return [v for k, v in self.log_files.items() if k.split(".")[0] == component][-1]

    def fail_if_dead(self) -> None:
        for name, p in self.processes.items():
            if p.poll() is not None:
                pytest.fail(f"airflow {name} (pid {p.pid}) exited with {p.returncode}; last lines of "
                            f"{self.log_of(name)}:\n{_tail(self.log_of(name))}", pytrace=False)

    def stop(self, component: str, sig: int = signal.SIGTERM) -> None:
        """Stop one component by its PID (the process group it leads), SIGKILL after a grace."""
        p = self.processes.pop(component, None)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        # children that outlived their leader (executor workers, trigger runner)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        # the API server last: the others may still report through it while they shut down
        for name in ("triggerer", "scheduler", "dag-processor", "api-server"):
            self.stop(name)

    def health(self) -> dict:
        r = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
        r.raise_for_status()
        return r.json()

    def client(self) -> AirflowClient:
        return AirflowClient(self.base_url, ADMIN, self.admin_password)

    def wait_healthy(self, components: tuple[str, ...] = ("metadatabase", "scheduler", "triggerer",
                                                           "dag_processor"), timeout: float = START_TIMEOUT) -> float:
        """Poll the health endpoint until every named component is healthy; seconds waited."""
        t0 = time.monotonic()
        last: object = None
        while time.monotonic() - t0 < timeout:
            self.fail_if_dead()
            try:
                last = h = self.health()
                if all(h.get(c, {}).get("status") == "healthy" for c in components):
                    return time.monotonic() - t0
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.5)
        logs = "\n".join(f"--- {k}\n{_tail(v, 20)}" for k, v in self.log_files.items())
        pytest.fail(f"deployment not healthy after {timeout:.0f}s (last answer: {last}):\n{logs}", pytrace=False)

    def wait_for_dags(self, client: AirflowClient, dag_ids: tuple[str, ...], timeout: float = START_TIMEOUT) -> None:
        t0 = time.monotonic()
        missing = list(dag_ids)
        while time.monotonic() - t0 < timeout:
            self.fail_if_dead()
            missing = [d for d in dag_ids if not _dag_exists(client, d)]
            if not missing:
                return
            time.sleep(0.5)
        pytest.fail(f"DAGs {missing} not parsed after {timeout:.0f}s; import errors: {client.import_errors()}\n"
                    f"--- dag-processor\n{_tail(self.log_of('dag-processor'))}", pytrace=False)


def _dag_exists(client: AirflowClient, dag_id: str) -> bool:
    try:
        client.dag(dag_id)
        return True
    except AssertionError:
        return False


def _admin_sql(uri: str, sql: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE refuse to run in one)."""
    conn = psycopg2.connect(uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def deployment(site_info, condor_pool, tmp_path_factory) -> Iterator[Deployment]:
    pg = condor_pool.get("postgres")
    if not pg:
        pytest.fail("the test site runs no PostgreSQL (site.json has no 'postgres'): tests/site/site.sh start "
                    "starts it", pytrace=False)
    home = tmp_path_factory.mktemp("airflow_deployment")
    # DAGs: the repository's dags/ and tests/dags/, through one folder of links (the DAG
    # processor follows symlinks; [core] dags_folder is a single directory)
    dags = home / "dags"
    dags.mkdir()
    (dags / "repo").symlink_to(REPO / "dags", target_is_directory=True)
    (dags / "tests").symlink_to(REPO / "tests" / "dags", target_is_directory=True)
    local_root = home / "local-site"
    admin_password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({ADMIN: admin_password}))
    database = f"airflow_test_{uuid.uuid4().hex[:10]}"
    admin_uri = pg["airflow_uri"]  # the airflow role's own database; CREATEDB lets it add ours
    _admin_sql(admin_uri, f'CREATE DATABASE "{database}"')

    gated_env = install_gated_env(condor_pool)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _with_database(admin_uri, database, "postgresql+psycopg2"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        # workers reach the Execution API of OUR api-server, not the default localhost:8080
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        # one secret for the scheduler (it signs the task tokens) and the api-server (it checks them)
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        # a killed triggerer's triggers move to a live one after this (default 30 s)
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "BATCHSITE_LOCAL_ROOT": str(local_root),
        "AIRFLOW_CONN_SLURM_SITE": json.dumps(site_conn(condor_pool, "slurm")),
        "AIRFLOW_CONN_CONDOR_SITE": json.dumps(site_conn(condor_pool, "htcondor")),
        # the same sites polled every 10 s, their jobs held while the gate is closed: a trigger
        # that is still watching when a test kills the triggerer
        # (test_triggerer_killed_while_a_round_is_deferred)
        "AIRFLOW_CONN_SLURM_SITE_SLOW_POLL": json.dumps(site_conn(condor_pool, "slurm", poll_interval=10,
                                                                  env_script=gated_env)),
        "AIRFLOW_CONN_CONDOR_SITE_SLOW_POLL": json.dumps(site_conn(condor_pool, "htcondor", poll_interval=10,
                                                                   env_script=gated_env)),
    })
    dep = Deployment(home=home, base_url=base_url, env=env, admin_password=admin_password, site=condor_pool,
                     local_root=local_root)
    try:
        t0 = time.monotonic()
        r = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, cwd=home, capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"airflow db migrate on PostgreSQL failed:\n{(r.stdout + r.stderr)[-4000:]}", pytrace=False)
        dep.timings["db_migrate"] = time.monotonic() - t0
        t1 = time.monotonic()
        for component in COMPONENTS:
            dep.start(component)
        dep.wait_healthy()
        dep.timings["healthy"] = time.monotonic() - t1
        client = dep.client()
        dep.wait_for_dags(client, REQUIRED_DAGS)
        client.close()
        dep.timings["dags_parsed"] = time.monotonic() - t1
        dep.timings["startup_total"] = time.monotonic() - t0
        print(f"\nAirflow deployment at {base_url} (AIRFLOW_HOME={home}, database {database}): "
              + ", ".join(f"{k} {v:.1f}s" for k, v in dep.timings.items()))
        yield dep
    finally:
        dep.stop_all()
        _admin_sql(admin_uri, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
