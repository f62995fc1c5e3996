"""The RG group's own Slurm chain, run unchanged by the RG campaign (issue 12), on the REAL
Slurm over the REAL sshd.

The group's Taskfarm scripts are the contract-checking stand-ins installed by ``site.sh start``
(``tests/site/standins``): each checks its arguments and environment against the contract
(CFG = RG_CONFIG with lowercase keys, the seven constants.py variables, PYTHONPATH, a
``module`` command, the venv, N divisible by SLURM_ARRAY_TASK_MAX + 1, SHIFT at every EXP
step, ...) and exits 64 on any difference, so a passing campaign proves the contract.

* FP (steps 0..2) then EXP (3 shifts: perturbed start + steps 0..1) through
  ``airflow dags test rg_campaign``: per-step z std and nu in the output, the group's layout
  and clean-up on the site, the sbatch geometry and resources of the contract;
* a rescue-sized array (``--array=0-1``) of a 4-batch step writes byte-identical batches to
  the full array's: the wrapper presents the full array geometry to the group's script.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from batchsite.campaign.collect import group_preflight
from batchsite.campaign.rg import (
    RGRoundRequest, group_wrapper_path, initial_partitions, parse_params, round_request,
)
from batchsite.campaign.rg_group import WRAPPER
from batchsite.config import site_config_from_connection
from batchsite.hooks.site import site_for_conn
from batchsite.rounds import spec_from_request
from batchsite.shellscripts import load
from batchsite.staging.transfer import put_text

from ..conftest import dags_test, on_site, site_conn

#: where site.sh start installs the stand-in of the group's repository and its environment
REPO = "/home/bsite/standins/PX402-RGCC"
RG_ENV = "/opt/batchsite-standins/rg-env.sh"
BATCHES, SAMPLES = 4, 8000


def group(**extra) -> dict:
    """The ``group`` Param exactly as a member writes it (README, "RG: run your own chain")."""
    return {"repo_root": REPO, "expr": "shaw", "env_script": RG_ENV,
            "config": {"engine": {"model": "iqhe", "resample": "i"},
                       "parameter_settings": {"z": {"bins": 1000, "range": [-25.0, 25.0]}}}, **extra}


@pytest.fixture(scope="module")
def slurm_conn(site_info):
    return site_conn(site_info, "slurm")


def _ok(r) -> str:
    out = r.stdout + r.stderr
    if r.returncode != 0 or "state=success" not in out:
        # the failed task's own lines first: the tail alone is the DAG run's bookkeeping
        errors = [ln for ln in out.splitlines()
                  if re.search(r"error|Traceback|Exception|failed|refused|CONTRACT", ln) and "graphviz" not in ln]
        raise AssertionError("\n".join(errors[-60:]) + "\n--- tail ---\n" + out[-3000:])
    return out


def test_group_chain_fp_then_exp_reports_z_std_and_nu(site_info, airflow_home, slurm_conn):
    version = f"g{uuid.uuid4().hex[:6]}"
    vs = f"{version}_analytic_shaw"
    fp = {"site_conn_id": "slurm_site", "type": "FP", "version": version, "steps": 3, "samples": SAMPLES,
          "batches": BATCHES, "throttle": 2, "seed": 7, "tolerance": 0.0001, "max_samples": SAMPLES,
          "group": group()}
    out = _ok(dags_test(airflow_home, "rg_campaign", fp, timeout=600, slurm_site=slurm_conn))
    fp_dir = f"{REPO}/job_outputs/{vs}/FP"
    stds = [float(x) for x in re.findall(r"RG step \d: z mean [-+.\d]+  z std ([.\d]+)", out)]
    assert len(stds) == 3 and all(1.0 < s < 4.0 for s in stds), out[-3000:]
    # the group's layout: hist/{t,z,sym_z,input_t}, DONE.json with their keys, N and batch count
    done = json.loads(on_site(site_info, f"cat {fp_dir}/data/RG2/DONE.json").stdout)
    assert set(done) == {"rg_step", "n_total", "num_batches", "batch_size", "job_id", "created", "config"}
    assert (done["rg_step"], done["n_total"], done["num_batches"], done["batch_size"]) == (2, SAMPLES, BATCHES, 2000)
    for kind in ("t", "z", "sym_z", "input_t"):
        assert on_site(site_info, f"test -s {fp_dir}/data/RG2/hist/{kind}/{kind}_hist_RG2.npz").returncode == 0
    # their aggregation of step k deleted step k-1's batches and laundered inputs; step 2's stay
    listing = on_site(site_info, f"cd {fp_dir}/data && ls -d RG*/batches RG*/laundered").stdout.split()
    assert listing == ["RG2/batches", "RG2/laundered"], listing
    # one distinct seed per batch: no two batches alike
    sums = on_site(site_info, f"sha256sum {fp_dir}/data/RG2/batches/batch_*/t_data_RG2_2000_samples.npy").stdout
    assert len({line.split()[0] for line in sums.splitlines()}) == BATCHES, sums
    # CFG: the campaign's updated_config.yaml, lowercase keys, the Params written into it
    cfg = on_site(site_info, f"cat {fp_dir}/config/updated_config.yaml").stdout
    assert 'type: "fp"' in cfg and "samples: 8000" in cfg and 'expr: "shaw"' in cfg and "seed: 7" in cfg
    # the contract's sbatch geometry and resources: --array=0-3%2, 1 h / 5 h, 3988 MB per CPU
    logs = f"{site_info['remote_root']}/job_logs/{vs}/FP/RG0"
    unit = on_site(site_info, f"cat {logs}/*/unit.sh").stdout
    fanin = on_site(site_info, f"cat {logs}/*/fanin.sh").stdout
    arrays = on_site(site_info, f"cat {logs}/*/arrays.txt").stdout.split()  # <offset> <--array spec>
    assert arrays == ["0", "0-3%2"] and "#SBATCH --time=0-01:00:00" in unit and "--mem=3988M" in unit
    assert "#SBATCH --time=0-05:00:00" in fanin and "rg_hist_manager.sh" in fanin

    exp = {**fp, "type": "EXP", "version": f"{version}x", "fp_version": version, "steps": 2,
           "shifts": [0.0, 0.5, 1.0]}
    out = _ok(dags_test(airflow_home, "rg_campaign", exp, timeout=600, slurm_site=slurm_conn))
    assert f"start from FP {version} RG step 2" in out
    exp_dir = f"{REPO}/job_outputs/{version}x_analytic_shaw/EXP"
    for s in ("0.0", "0.5", "1.0"):
        files = on_site(site_info, f"ls {exp_dir}/shift_{s}/data/Initial").stdout.split()
        assert files == [f"perturbed_t_shift_{s}_batch_{t}.npy" for t in range(BATCHES)], files
        assert on_site(site_info, f"test -s {exp_dir}/shift_{s}/data/RG1/DONE.json").returncode == 0
    nu = re.findall(r"RG step (\d) \(n=(\d)\): slope\(z peak\) ([-.\d]+) -> nu (\S+);  "
                    r"slope\(z mean\) ([-.\d]+) -> nu (\S+)", out)
    assert [(k, n) for k, n, *_ in nu] == [("0", "1"), ("1", "2")], out[-4000:]
    assert "published: 2.39" in out and "published: 2.51 +/- 0.11" in out
    for _k, _n, slope_peak, _nu_peak, slope_mean, nu_mean in nu:
        # a shift grows under the RG: slopes above 1, nu finite
        assert float(slope_mean) > 1.0 and float(slope_peak) > 1.0 and 0.5 < float(nu_mean) < 10.0
    print("\n".join(line for line in out.splitlines() if "nu" in line or "z std" in line))


def test_a_rescue_sized_array_sees_the_full_array_geometry(site_info, slurm_conn, monkeypatch):
    """Batches 0 and 1 of a 4-batch step, submitted alone as --array=0-1 (what a rescue or a
    repair round submits): Slurm sets SLURM_ARRAY_TASK_MAX=1, the group's script must still
    see 4 batches of N/4 with the full array's seeds: byte-identical to the full array's."""
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_SITE", json.dumps(slurm_conn))
    cfg = site_config_from_connection("slurm_site", slurm_conn["host"], slurm_conn["port"], slurm_conn["login"],
                                      slurm_conn["extra"])
    version = f"r{uuid.uuid4().hex[:6]}"
    params = parse_params({"site_conn_id": "slurm_site", "version": version, "steps": 1, "samples": SAMPLES,
                           "batches": BATCHES, "throttle": 4, "seed": 11, "group": group()})
    site = site_for_conn(cfg)
    batch_dir = f"{REPO}/job_outputs/{version}_analytic_shaw/FP/data/RG0/batches"

    def run(batches: list[int], tag: str) -> None:
        (part,) = initial_partitions(params)
        request = round_request(params, {**part, "batches": batches}, remote_root=cfg.remote_root, python="python3")
        request = RGRoundRequest.model_validate({**request.model_dump(), "fanin": None})  # generation only
        key = f"bs-rgeo-{tag}-{uuid.uuid4().hex[:6]}"
        sub = site.submit(spec_from_request(request, key=key, cfg=cfg, site_path=site.path))
        deadline = time.monotonic() + 180
        while not (st := site.status([sub])[key]).finished:
            assert time.monotonic() < deadline, st.progress_line(key)
            time.sleep(1)
        assert st.succeeded, on_site(site_info, f"cat {request.workdir}/{key}/logs/*.err").stdout[-3000:]

    try:
        group_preflight(site, params)
        put_text(site.transport, params.group_config_path(cfg.remote_root), params.group_config_text(),
                 remote_root=cfg.remote_root)
        put_text(site.transport, group_wrapper_path(cfg.remote_root), load("batchsite.campaign", WRAPPER),
                 remote_root=cfg.remote_root, mode=0o755)
        run(list(range(BATCHES)), "full")
        sums = "for b in 0 1; do sha256sum {d}/batch_$b/t_data_RG0_2000_samples.npy | cut -d' ' -f1; done"
        full = on_site(site_info, sums.format(d=batch_dir)).stdout.split()
        on_site(site_info, f"rm -rf {batch_dir}/batch_0 {batch_dir}/batch_1")
        run([0, 1], "rescue")
        again = on_site(site_info, sums.format(d=batch_dir)).stdout.split()
        assert len(full) == 2 and again == full  # same batch size (2000, not 4000) and the same seeds
    finally:
        site.close()
