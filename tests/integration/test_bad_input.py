"""Bad input is refused with an error naming the field, before anything remote happens."""

import json
import os
import uuid

import pytest

from batchsite.config import SiteConfigError
from batchsite.hooks.site import load_site_config

from ..conftest import dags_test, on_site, site_conn


def test_missing_connection_says_how_to_create_it():
    with pytest.raises(SiteConfigError, match="does not exist: create it.*AIRFLOW_CONN_NO_SUCH_SITE"):
        load_site_config("no_such_site")


def test_relative_remote_root_is_refused(site_info, monkeypatch):
    conn = site_conn(site_info)
    conn["extra"]["remote_root"] = "batchsite"
    monkeypatch.setenv("AIRFLOW_CONN_REL_SITE", json.dumps(conn))
    with pytest.raises(SiteConfigError, match="remote_root='batchsite' must be an absolute path"):
        load_site_config("rel_site")


@pytest.mark.parametrize("override,needle", [
    ({"steps": 0}, "steps"),
    ({"samples": -5}, "samples"),
    ({"throttle": 64, "batches": 8}, "throttle"),
    ({"type": "XYZ"}, "type"),
    ({"version": "v1; touch /tmp/CANARY"}, "version"),
    ({"site_conn_id": "no_such_site"}, "no_such_site"),
])
def test_bad_params_fail_before_anything_remote(site_info, airflow_home, override, needle):
    canary = f"/tmp/batchsite-canary-{uuid.uuid4().hex}"
    version = f"bad{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "slurm_site", "version": version, "steps": 2, "samples": 1000, "batches": 8,
            "throttle": 2}
    conf.update({k: (v.replace("/tmp/CANARY", canary) if isinstance(v, str) else v) for k, v in override.items()})
    before = on_site(site_info, "squeue -h -o %i | wc -l").stdout.strip()
    r = dags_test(airflow_home, "rg_campaign", conf, timeout=300, slurm_site=site_conn(site_info))
    out = r.stdout + r.stderr
    assert "state=success" not in out
    assert needle in out
    assert not os.path.exists(canary)
    assert on_site(site_info, f"test -e {site_info['remote_root']}/job_outputs/{version}").returncode != 0
    assert on_site(site_info, f"test -e {site_info['remote_root']}/job_logs/{version}").returncode != 0
    assert on_site(site_info, "squeue -h -o %i | wc -l").stdout.strip() == before


def test_faser_missing_env_script_is_refused_before_submitting(site_info, airflow_home):
    work = f"{site_info['remote_root']}/faser-bad-{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "slurm_site", "files": "400-402", "iterations": 2,
            "config": {"paths": {"work_dir": work, "env_script": "/nonexistent/reco_condor_env.sh",
                                 "calypso_install": "/nonexistent/calypso", "pede_install": "/nonexistent/pede"}}}
    r = dags_test(airflow_home, "faser_alignment", conf, timeout=300, slurm_site=site_conn(site_info))
    out = r.stdout + r.stderr
    assert "state=success" not in out
    assert "paths.env_script='/nonexistent/reco_condor_env.sh' does not exist on the site" in out
    assert on_site(site_info, f"test -e {work}").returncode != 0  # nothing written remotely


@pytest.mark.parametrize("override,needle", [
    ({"files": "450-400"}, "files"),
    ({"run": "11a05"}, "run"),
    ({"fourst": True, "threest": True}, "fourst and threest are exclusive"),
    ({"config": {"htcondor": {"job_flavor": "espresso"}}}, "htcondor.job_flavor"),
])
def test_faser_bad_params_fail_before_anything_remote(site_info, airflow_home, override, needle):
    work = f"{site_info['remote_root']}/faser-bad-{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "slurm_site", "files": "400-402", "iterations": 2,
            "config": {"paths": {"work_dir": work}}}
    conf.update(override)
    r = dags_test(airflow_home, "faser_alignment", conf, timeout=300, slurm_site=site_conn(site_info))
    out = r.stdout + r.stderr
    assert "state=success" not in out and needle in out
    assert on_site(site_info, f"test -e {work}").returncode != 0
