"""Bad input is refused with an error naming the field, before anything remote happens."""

import json
import os
import uuid

import pytest

from batchsite.config import SiteConfigError
from batchsite.hooks.site import load_site_config

from ..conftest import dags_test, dags_tests_in_parallel, on_site, site_conn


def test_missing_connection_says_how_to_create_it():
    with pytest.raises(SiteConfigError, match="does not exist: create it.*AIRFLOW_CONN_NO_SUCH_SITE"):
        load_site_config("no_such_site")


def test_relative_remote_root_is_refused(site_info, monkeypatch):
    conn = site_conn(site_info)
    conn["extra"]["remote_root"] = "batchsite"
    monkeypatch.setenv("AIRFLOW_CONN_REL_SITE", json.dumps(conn))
    with pytest.raises(SiteConfigError, match="remote_root='batchsite' must be an absolute path"):
        load_site_config("rel_site")


RG_BAD = [
    ({"steps": 0}, "steps"),
    ({"samples": -5}, "samples"),
    ({"throttle": 64, "batches": 8}, "throttle"),
    ({"type": "XYZ"}, "type"),
    ({"version": "v1; touch /tmp/CANARY"}, "version"),
    ({"site_conn_id": "no_such_site"}, "no_such_site"),
]
FASER_BAD = [
    ({"files": "450-400"}, "files"),
    ({"run": "11a05"}, "run"),
    ({"fourst": True, "threest": True}, "fourst and threest are exclusive"),
    ({"config": {"htcondor": {"job_flavor": "espresso"}}}, "htcondor.job_flavor"),
]


def test_bad_params_fail_before_anything_remote(site_info, airflow_home):
    """Each bad value in its own real ``dags test`` run (three at a time, each on a copy of the
    Airflow DB): the run fails naming the field; nothing reached the site."""
    canary = f"/tmp/batchsite-canary-{uuid.uuid4().hex}"
    conns = {"slurm_site": site_conn(site_info)}
    runs, checks = [], []
    for override, needle in RG_BAD:
        version = f"bad{uuid.uuid4().hex[:6]}"
        conf = {"site_conn_id": "slurm_site", "version": version, "steps": 2, "samples": 1000, "batches": 8,
                "throttle": 2}
        conf.update({k: (v.replace("/tmp/CANARY", canary) if isinstance(v, str) else v) for k, v in override.items()})
        runs.append(("rg_campaign", conf, conns))
        checks.append((needle, [f"{site_info['remote_root']}/job_outputs/{version}",
                                f"{site_info['remote_root']}/job_logs/{version}"]))
    for override, needle in FASER_BAD:
        work = f"{site_info['remote_root']}/faser-bad-{uuid.uuid4().hex[:6]}"
        conf = {"site_conn_id": "slurm_site", "files": "400-402", "iterations": 2,
                "config": {"paths": {"work_dir": work}}}
        conf.update(override)
        runs.append(("faser_alignment", conf, conns))
        checks.append((needle, [work]))
    before = on_site(site_info, "squeue -h -o %i | wc -l").stdout.strip()
    results = dags_tests_in_parallel(airflow_home, runs)
    for (dag_id, conf, _), (needle, paths), r in zip(runs, checks, results):
        out = r.stdout + r.stderr
        assert "state=success" not in out, (dag_id, conf)
        assert needle in out, (dag_id, conf, out[-3000:])
        for path in paths:
            assert on_site(site_info, f"test -e {path}").returncode != 0, path
    assert not os.path.exists(canary)
    assert on_site(site_info, "squeue -h -o %i | wc -l").stdout.strip() == before


def test_faser_missing_group_chain_is_refused_before_submitting(site_info, airflow_home):
    work = f"{site_info['remote_root']}/faser-bad-{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "slurm_site", "files": "400-402", "iterations": 2,
            "config": {"paths": {"work_dir": work, "src_dir": "/nonexistent/faser-alignment-script",
                                 "calypso_asetup": "/nonexistent/asetup.faser",
                                 "calypso_setup": "/nonexistent/calypso/setup.sh",
                                 "env_pede": "/nonexistent/pede", "env_root": "/nonexistent/thisroot.sh"}}}
    r = dags_test(airflow_home, "faser_alignment", conf, timeout=300, slurm_site=site_conn(site_info))
    out = r.stdout + r.stderr
    assert "state=success" not in out
    assert ("paths.src_dir (templates/runAlignment.sh)='/nonexistent/faser-alignment-script/templates/"
            "runAlignment.sh' does not exist on the site") in out
    assert "paths.env_root='/nonexistent/thisroot.sh' does not exist on the site" in out
    assert on_site(site_info, f"test -e {work}").returncode != 0  # nothing written remotely
