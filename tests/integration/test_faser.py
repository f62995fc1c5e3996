"""``airflow dags test faser_alignment`` over real SSH on the real HTCondor pool and on the real
Slurm: 3-station, 6 raw files, iterations until the constants converge."""

import json
import uuid

import pytest

from ..conftest import dags_test, on_site, site_conn


@pytest.mark.parametrize("scheduler", ["htcondor", "slurm"])
def test_faser_alignment_converges(site_info, condor_pool, airflow_home, scheduler):
    work = f"{site_info['remote_root']}/faser-{scheduler}-{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "the_site", "year": 2023, "run": "11705", "files": "400-406", "iterations": 6,
            "config": {"paths": {"work_dir": work}, "htcondor": {"job_flavour": "microcentury", "max_retries": 1}}}
    r = dags_test(airflow_home, "faser_alignment", conf, the_site=site_conn(site_info, scheduler))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-6000:]
    assert "6 raw files (400..405, end exclusive)" in out
    assert "converged (largest relative change" in out
    base = f"{work}/Y2023_R011705_F400-406_ST3"
    ls = on_site(site_info, f"cd {base} && ls -d iter*/1reco iter*/2kfalignment iter*/3millepede").stdout.split()
    iters = sorted({p.split("/")[0] for p in ls})
    assert iters[:2] == ["iter01", "iter02"] and len(ls) == 3 * len(iters)
    last = json.loads(on_site(site_info, f"cat {base}/{iters[-1]}/3millepede/alignment.json").stdout)
    assert last["max_rel_change"] < 1e-3
    # the injected misalignment is recovered to the statistical error
    assert last["residual_to_truth"]["translation_mm"] < 3 * last["stat_error"]["translation_mm"]
    kf = on_site(site_info, f"ls {base}/iter01/2kfalignment").stdout.split()
    assert kf == [f"kfalignment_{n:05d}.npz" for n in range(400, 406)]
    if scheduler == "htcondor":
        dags = on_site(site_info, f"ls {base}/iter01/1reco/*/*.dag").stdout.split()
        assert len(dags) == 1  # one DAGMan DAG per iteration


def test_faser_alignment_on_the_embedded_local_site(airflow_home, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHSITE_LOCAL_ROOT", str(tmp_path / "site"))
    r = dags_test(airflow_home, "faser_alignment", {"site_conn_id": "local", "files": "400:403", "iterations": 4})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-6000:]
    assert "3 raw files (400..402, end exclusive)" in out
    base = tmp_path / "site/faser/Y2023_R011705_F400-403_ST3"
    assert (base / "iter01/3millepede/inputforalign.txt").stat().st_size > 0
    assert (base / "iter02/3millepede/millepede.res").exists()


def test_rg_campaign_on_htcondor(site_info, condor_pool, airflow_home):
    version = f"cnd{uuid.uuid4().hex[:6]}"
    conf = {"site_conn_id": "the_site", "version": version, "steps": 2, "samples": 8000, "batches": 4,
            "throttle": 2}
    r = dags_test(airflow_home, "rg_campaign", conf, the_site=site_conn(site_info, "htcondor"))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-6000:]
    dags = on_site(site_info, f"ls {site_info['remote_root']}/job_logs/{version}/FP/RG*/*/*.dag").stdout.split()
    assert len(dags) == 2  # one DAGMan DAG per RG step
