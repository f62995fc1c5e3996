"""Once without accounting (``sacct`` disabled, as on clusters without slurmdbd): the backend
detects it at connect time and reads finished jobs from ``scontrol show job`` instead.
Runs last in the integration suite; the module restores accounting afterwards."""

import json
import time
import uuid

import pytest

from batchsite.config import site_config_from_connection
from batchsite.hooks.site import site_for_conn
from batchsite.model import JobState, RoundSpec, WorkUnit

from ..conftest import _site_cmd, site_conn


@pytest.fixture(scope="module")
def no_accounting_site(site_info):
    r = _site_cmd("start", "--no-accounting")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    yield json.loads((__import__("tests.conftest", fromlist=["STATE"]).STATE / "site.json").read_text())
    r = _site_cmd("start")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_round_without_accounting_uses_scontrol(no_accounting_site, monkeypatch):
    info = no_accounting_site
    assert info["accounting"] is False
    conn = site_conn(info)
    monkeypatch.setenv("AIRFLOW_CONN_NOACCT", json.dumps(conn))
    cfg = site_config_from_connection("noacct", conn["host"], conn["port"], conn["login"], conn["extra"])
    site = site_for_conn(cfg)
    key = f"bs-noacct-{uuid.uuid4().hex[:8]}"
    spec = RoundSpec(key=key, label="noacct", workdir=f"{cfg.remote_root}/test/{key}", env_script=cfg.env_script,
                     units=[WorkUnit(index=i, argv=["sh", "-c", f"exit {4 if i == 1 else 0}"]) for i in range(4)],
                     fanin=["true"], throttle=2)
    try:
        sub = site.submit(spec)
        deadline = time.monotonic() + 120
        while True:
            st = site.status([sub])[key]
            if st.finished:
                break
            assert time.monotonic() < deadline, st.progress_line("noacct")
            time.sleep(1)
        assert site.backend.accounting is False
        assert st.failed_indices == [1]
        assert st.units[1].exit_code == 4
        assert [st.units[i].state for i in (0, 2, 3)] == [JobState.DONE] * 3
        # the round is over as soon as a parent failed: slurmctld may not yet have turned
        # "Dependency" into "DependencyNeverSatisfied"; either way the fan-in never runs
        assert st.fanin.state is JobState.WAITING and st.fanin.reason.startswith("Dependency")
    finally:
        site.cancel([sub])
        site.close()
