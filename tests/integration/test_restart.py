"""Restart a campaign from round k with ``airflow dags test`` over real SSH, on the real Slurm
and the real HTCondor pool (campaign/restart.py).

Phase 1 (two runs at once): RG, 2 steps on Slurm; FASER (reference payload), 2 iterations on
HTCondor. Phase 2 (five runs at once, each on outputs of phase 1):

* RG restart from step 3 on Slurm: only step 3 is submitted, steps 1-2 untouched;
* RG rerun from step 2 with a corrected payload (``code_dir``) on HTCondor, on a copy of the
  outputs under another remote_root (its code/source is its own): the corrected code is pushed,
  step 2 rerun by it, the earlier step 2 set aside;
* RG restart from step 3 on a copy whose step 2 lost a histogram: refused, naming it; nothing
  submitted;
* FASER restart at iteration 3 on HTCondor, and a refused one on a copy whose iteration 2 lost
  alignment.json.

Every "nothing earlier was submitted" is counted twice: the round records (one directory per
round key) and the scheduler's own jobs named by those keys. Each run has its own remote_root
or version, so the five runs at once do not share a file.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
import uuid
from pathlib import Path

import pytest

from batchsite.staging import payload_dir

from ..conftest import dags_tests_in_parallel, on_site, site_conn

RG_RECORDS = "RG*/*/.batchsite/submitted"  # job_logs/<version>/FP/RG<k>/<key>/
FASER_RECORDS = "iter*/1reco/*/.batchsite/submitted"  # <tree>/iterNN/1reco/<key>/
#: small rounds: 2 batches of 2000 samples, the samples never doubled (max_samples = samples) and
#: never converged (tolerance), so each run does exactly the steps asked for
RG_BASE = {"site_conn_id": "the_site", "samples": 4000, "max_samples": 4000, "batches": 2, "throttle": 2,
           "tolerance": 1e-9, "seed": 7}
FASER_BASE = {"site_conn_id": "the_site", "files": "400-402", "tolerance": 1e-12,
              "config": {"htcondor": {"job_flavour": "microcentury", "max_retries": 1},
                         "alignment": {"tracks_per_file": 500}}}
FASER_TREE = "Y2023_R011705_F400-402_ST3"


def _log(r) -> str:
    return r.stdout + r.stderr


def _ok(r, what: str) -> str:
    out = _log(r)
    assert r.returncode == 0 and "state=success" in out, f"{what}:\n{out[-6000:]}"
    return out


def _refused(r, what: str, message: str) -> str:
    out = _log(r)
    assert r.returncode != 0 or "state=failed" in out, f"{what} was not refused:\n{out[-4000:]}"
    assert message in out, f"{what}:\n{out[-4000:]}"
    return out


def _tasks_run(log: str) -> list[str]:
    """The tasks ``dags test`` started, in order."""
    return re.findall(r"\[DAG TEST\] starting task_id=(\S+)", log)


def _keys_by_round(info, where: str, records: str) -> dict[str, set[str]]:
    """Round dir (RG<k>, iterNN) -> the round keys recorded under ``where`` (one dir per
    submitted round)."""
    r = on_site(info, f"cd {shlex.quote(where)} 2>/dev/null && ls -d {records} 2>/dev/null; true")
    out: dict[str, set[str]] = {}
    for line in r.stdout.split():
        parts = line.split("/")
        out.setdefault(parts[0], set()).add(parts[-3])
    return out


def _new_keys(after: dict[str, set[str]], before: dict[str, set[str]]) -> dict[str, set[str]]:
    return {r: k - before.get(r, set()) for r, k in after.items() if k - before.get(r, set())}


def _scheduler_jobs_since(info, scheduler: str, since: float, keys: set[str]) -> dict[str, int]:
    """Jobs submitted at or after ``since`` whose name is one of ``keys`` (other tests share the
    scheduler): key -> number of jobs (Slurm: arrays and plain jobs; HTCondor: DAGMan + nodes)."""
    if scheduler == "slurm":
        # squeue -t all also lists jobs that ended minutes ago: keep those submitted since
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))
        r = on_site(info, f"sacct -n -P -X -S {start} -o JobIDRaw,JobName,Submit; squeue -h -a -t all -o '%A|%j|%V'")
        rows = {(job, name) for job, name, submitted in (line.split("|") for line in r.stdout.split()
                                                         if line.count("|") == 2) if submitted >= start}
    else:
        cons = shlex.quote(f"QDate >= {int(since) - 1}")
        r = on_site(info, f"condor_q -allusers -constraint {cons} -af ClusterId ProcId JobBatchName; "
                          f"condor_history -constraint {cons} -af ClusterId ProcId JobBatchName")
        rows = {(f"{a}.{b}", name) for a, b, name in (line.split() for line in r.stdout.splitlines()
                                                      if len(line.split()) == 3)}
    counts: dict[str, int] = {}
    for _, name in rows:
        if name in keys:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _sha(info, paths: list[str]) -> dict[str, str]:
    r = on_site(info, "sha256sum " + " ".join(map(shlex.quote, paths)))
    assert r.returncode == 0, r.stderr
    return {p: h for h, p in (line.split() for line in r.stdout.splitlines())}


def _json(info, path: str) -> dict:
    return json.loads(on_site(info, f"cat {shlex.quote(path)}").stdout)


def _fixed_payload(tmp_path: Path) -> Path:
    """The reference RG payload with one correction: its DONE json says ``"payload": "fixed"``."""
    fixed = tmp_path / "source_fixed"
    shutil.copytree(payload_dir("rg_reference"), fixed, ignore=shutil.ignore_patterns("__pycache__"))
    agg = fixed / "aggregate.py"
    text = agg.read_text()
    assert text.count('"paths_relative_to": "out_dir",') == 1
    agg.write_text(text.replace('"paths_relative_to": "out_dir",',
                                '"paths_relative_to": "out_dir", "payload": "fixed",'))
    return fixed


@pytest.fixture
def roots(site_info):
    """Three remote_roots of this test alone (removed after it)."""
    tag = uuid.uuid4().hex[:8]
    made = [f"{site_info['remote_root']}/restart-{tag}-{name}" for name in ("rg", "rgfix", "faser")]
    yield made
    on_site(site_info, "rm -rf " + " ".join(map(shlex.quote, made)))


def test_restart_from_round_k_on_slurm_and_htcondor(site_info, condor_pool, airflow_home, roots, tmp_path):
    info = site_info
    rg_root, fix_root, faser_root = roots
    version, broken = f"rs{uuid.uuid4().hex[:6]}", f"rb{uuid.uuid4().hex[:6]}"
    slurm = site_conn(info, "slurm", remote_root=rg_root)
    fix_condor = site_conn(info, "htcondor", remote_root=fix_root)
    faser_condor = site_conn(info, "htcondor", remote_root=faser_root)
    out, logs = f"{rg_root}/job_outputs/{version}/FP", f"{rg_root}/job_logs/{version}/FP"
    fix_out, fix_logs = f"{fix_root}/job_outputs/{version}/FP", f"{fix_root}/job_logs/{version}/FP"
    broken_out = f"{rg_root}/job_outputs/{broken}/FP"
    tree, tree2 = f"{faser_root}/faser/{FASER_TREE}", f"{faser_root}/faser2/{FASER_TREE}"
    rg = {**RG_BASE, "version": version}
    faser2 = {**FASER_BASE, "config": {**FASER_BASE["config"], "paths": {"work_dir": f"{faser_root}/faser2"}}}
    started = time.monotonic()

    # ---- phase 1: the earlier runs
    rg_first, faser_first = dags_tests_in_parallel(airflow_home, [
        ("rg_campaign", {**rg, "steps": 2}, {"the_site": slurm}),
        ("faser_alignment", {**FASER_BASE, "iterations": 2}, {"the_site": faser_condor}),
    ], timeout=600, workers=2)
    _ok(rg_first, "RG: 2 steps on Slurm")
    _ok(faser_first, "FASER: 2 iterations on HTCondor")
    phase1 = time.monotonic() - started
    rg_keys = _keys_by_round(info, logs, RG_RECORDS)
    assert {r: len(k) for r, k in rg_keys.items()} == {"RG1": 1, "RG2": 1}
    faser_keys = _keys_by_round(info, tree, FASER_RECORDS)
    assert {r: len(k) for r, k in faser_keys.items()} == {"iter01": 1, "iter02": 1}
    step_files = [f"{out}/stats/DONE_RG{k}.json" for k in (1, 2)] + [
        f"{out}/hist/{kind}/{kind}_hist_RG{k}.npz" for k in (1, 2) for kind in ("t", "z", "sym_z")]
    rg_sha = _sha(info, step_files)
    faser_files = [f"{tree}/iter0{i}/3millepede/{f}" for i in (1, 2) for f in ("inputforalign.txt", "alignment.json")]
    faser_sha = _sha(info, faser_files)
    # the copies phase 2 works on: the outputs under the corrected payload's own remote_root, a
    # version whose step 2 lost a histogram, a FASER tree whose iteration 2 lost alignment.json
    lost, lost_faser = f"{broken_out}/hist/sym_z/sym_z_hist_RG2.npz", f"{tree2}/iter02/3millepede/alignment.json"
    r = on_site(info, f"mkdir -p {fix_root}/job_outputs {broken_out} {faser_root}/faser2 && "
                      f"cp -a {rg_root}/job_outputs/{version} {fix_root}/job_outputs/ && cp -a {out}/. {broken_out}/ "
                      f"&& rm {lost} && cp -a {tree} {faser_root}/faser2/ && rm {lost_faser}")
    assert r.returncode == 0, r.stderr
    fixed = _fixed_payload(tmp_path)

    # ---- phase 2: the restarts, all at once
    since = time.time()
    rg_restart, rg_fixed, rg_refused, faser_restart, faser_refused = dags_tests_in_parallel(airflow_home, [
        ("rg_campaign", {**rg, "steps": 3, "start_step": 3}, {"the_site": slurm}),
        ("rg_campaign", {**rg, "steps": 2, "start_step": 2, "code_dir": str(fixed)}, {"the_site": fix_condor}),
        ("rg_campaign", {**rg, "version": broken, "steps": 3, "start_step": 3}, {"the_site": slurm}),
        ("faser_alignment", {**FASER_BASE, "iterations": 3, "start_iteration": 3}, {"the_site": faser_condor}),
        ("faser_alignment", {**faser2, "iterations": 3, "start_iteration": 3}, {"the_site": faser_condor}),
    ], timeout=600, workers=5)
    phase2 = time.monotonic() - started - phase1

    # RG restart from step 3 on Slurm: one round, for step 3; steps 1-2 neither recomputed nor touched
    log = _ok(rg_restart, "RG restart from step 3")
    assert f"start_step=3: RG step 2 of FP version '{version}' is complete; nothing of later rounds to set aside" in log
    assert "restart: RG steps 3..3; steps 1..2 are read from the site, never submitted" in log
    keys = _keys_by_round(info, logs, RG_RECORDS)
    new = _new_keys(keys, rg_keys)
    assert {r: len(k) for r, k in new.items()} == {"RG3": 1}
    jobs = _scheduler_jobs_since(info, "slurm", since, set().union(*keys.values()))
    assert set(jobs) == new["RG3"], jobs
    assert _sha(info, step_files) == rg_sha
    # the numbers continue: step 3 sampled step 2's histogram and its L1 distance to it was measured
    step3_line = log[log.index("RG step 3: done=True missing=[]"):].splitlines()[0]
    assert "L1=None" not in step3_line and "noise=None" not in step3_line, step3_line
    step2, step3 = _json(info, f"{out}/stats/DONE_RG2.json"), _json(info, f"{out}/stats/DONE_RG3.json")
    assert step3["samples"] == 4000 and abs(step3["z_std"] - step2["z_std"]) < 0.5 * step2["z_std"]

    # RG rerun from step 2 with the corrected payload on HTCondor: the earlier step 2 set aside
    log = _ok(rg_fixed, "RG rerun from step 2 with the corrected payload")
    assert f"start_step=2: RG step 1 of FP version '{version}' is complete; set aside 5 path(s)" in log
    (stamp,) = on_site(info, f"ls {fix_out}/set_aside").stdout.split()
    aside = f"{fix_out}/set_aside/{stamp}"
    assert _sha(info, [f"{aside}/stats/DONE_RG2.json", f"{aside}/hist/sym_z/sym_z_hist_RG2.npz"]) == {
        f"{aside}/stats/DONE_RG2.json": rg_sha[f"{out}/stats/DONE_RG2.json"],
        f"{aside}/hist/sym_z/sym_z_hist_RG2.npz": rg_sha[f"{out}/hist/sym_z/sym_z_hist_RG2.npz"]}
    fix_keys = _keys_by_round(info, fix_logs, RG_RECORDS)
    assert {r: len(k) for r, k in fix_keys.items()} == {"RG2": 1}  # nothing for step 1
    jobs = _scheduler_jobs_since(info, "htcondor", since, set().union(*fix_keys.values()))
    assert set(jobs) == fix_keys["RG2"], jobs
    assert _sha(info, [f"{fix_out}/stats/DONE_RG1.json"])[f"{fix_out}/stats/DONE_RG1.json"] == \
        rg_sha[f"{out}/stats/DONE_RG1.json"]
    new2, old2 = _json(info, f"{fix_out}/stats/DONE_RG2.json"), _json(info, f"{aside}/stats/DONE_RG2.json")
    assert new2["payload"] == "fixed" and "payload" not in old2  # the corrected code made step 2
    # same seed, same input (step 1's histogram): the corrected payload reproduces step 2's numbers
    assert (new2["z_mean"], new2["z_std"]) == (old2["z_mean"], old2["z_std"])

    # RG restart whose step 2 lost a histogram: refused before anything was staged or submitted
    log = _refused(rg_refused, "RG restart after a lost histogram", (
        f"start_step=3: RG step 2 of FP version '{broken}' is not complete on site the_site: missing {lost}. "
        "Nothing was submitted or moved. Restart from a step whose previous step is complete (start_step=2 "
        "reruns step 2), or leave start_step unset to run from step 1."))
    assert _tasks_run(log) == ["validate"] and "staged " not in log
    assert _keys_by_round(info, f"{rg_root}/job_logs/{broken}/FP", RG_RECORDS) == {}
    assert "set_aside" not in on_site(info, f"ls {broken_out}").stdout.split()  # nothing set aside

    # FASER restart at iteration 3: one round, iteration 3, from iteration 2's constants
    log = _ok(faser_restart, "FASER restart at iteration 3")
    assert f"start_iteration=3: iteration 2 of {FASER_TREE} is complete" in log
    keys = _keys_by_round(info, tree, FASER_RECORDS)
    assert {r: len(k) for r, k in _new_keys(keys, faser_keys).items()} == {"iter03": 1}
    jobs = _scheduler_jobs_since(info, "htcondor", since, set().union(*keys.values()))
    assert set(jobs) == keys["iter03"], jobs
    assert _sha(info, faser_files) == faser_sha
    it2, it3 = (_json(info, f"{tree}/iter0{i}/3millepede/alignment.json") for i in (2, 3))
    assert it3["residual_to_truth_before"] == it2["residual_to_truth"]  # computed from iteration 2's constants

    log = _refused(faser_refused, "FASER restart after a lost alignment.json", (
        f"start_iteration=3: iteration 2 of {FASER_TREE} is not complete on site the_site: missing {lost_faser}. "
        "Nothing was submitted or moved."))
    assert _tasks_run(log) == ["validate"]
    assert not [k for r, k in _keys_by_round(info, tree2, FASER_RECORDS).items() if r == "iter03"]
    print(f"restart from round k: phase 1 (2 runs) {phase1:.0f} s, phase 2 (5 runs) {phase2:.0f} s")
