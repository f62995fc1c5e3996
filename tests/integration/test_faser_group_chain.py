"""The FASER group's own chain, run unchanged by ``airflow dags test faser_alignment`` over real
SSH on the real HTCondor pool: their ``templates/runAlignment.sh`` per raw file and their
``runMillepede.sh`` per iteration, here the contract-checking stand-ins installed by
``tests/site/site.sh`` (tests/site/standins/README.md), which exit 64 on any difference from
the contract of issue 12.

A 3-station campaign over 4 raw files (2022, run 008023, files 0-4 end-exclusive) must
converge; the constants Millepede wrote in iteration k must be the ones every reconstruction
of iteration k+1 applied (read from the stand-ins' calls.log files); a 4-station pass over one
file gets its own tree and no ``--noIFT``. Both campaigns run at once (the pool has 4 CPUs).
"""

from __future__ import annotations

import json
import re
import uuid

import htcondor2
import pytest

from batchsite.campaign.faser import parse_constants

from ..conftest import dags_tests_in_parallel, on_site, site_conn

SRC_DIR = "/home/bsite/standins/faser-alignment-script"
OPT = "/opt/batchsite-standins"
STANDIN_PATHS = {
    "src_dir": SRC_DIR,
    "calypso_asetup": f"{OPT}/calypso/asetup.faser",
    "calypso_setup": f"{OPT}/calypso/setup.sh",
    "env_pede": f"{OPT}/pede",
    "env_root": f"{OPT}/root/bin/thisroot.sh",
}
RECO = "faser_reco_alignment.py"


def _calls(site_info: dict, path: str) -> list[dict]:
    r = on_site(site_info, f"cat {path}")
    assert r.returncode == 0, f"no calls log {path}: {r.stderr}"
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _constants(site_info: dict, path: str) -> dict:
    r = on_site(site_info, f"cat {path}")
    assert r.returncode == 0, f"{path}: {r.stderr}"
    return parse_constants(r.stdout, path)


def _report_rows(out: str) -> list[tuple[int, float, float, float, float]]:
    """(iteration, max relative change, chi2, ndf, chi2/ndf) from the report task's table."""
    rows = re.findall(r"iter(\d\d): max rel change (\S+) \(.*?\)\s+chi2 (\S+) / ndf (\S+) = (\S+)", out)
    return [(int(i), *(float(x) for x in rest)) for i, *rest in rows]


@pytest.fixture(scope="module")
def pool_requirements(site_info, condor_pool) -> str:
    """The group's requirements, with the OS of this pool (Debian) instead of AlmaLinux9: the
    one submit setting a site that is not lxplus overrides in config.json."""
    r = on_site(site_info, "condor_status -af OpSysAndVer | sort -u")
    osv = r.stdout.split()
    assert r.returncode == 0 and len(osv) == 1, r.stdout + r.stderr
    return f'(Machine =!= LastRemoteHost) && (OpSysAndVer =?= "{osv[0]}")'


def test_group_chain_converges_on_htcondor_and_passes_constants_on(site_info, condor_pool, airflow_home,
                                                                    pool_requirements, capsys):
    work = f"{site_info['remote_root']}/faser-group-{uuid.uuid4().hex[:6]}"
    config = {"paths": {**STANDIN_PATHS, "work_dir": work}, "htcondor": {"requirements": pool_requirements}}
    three = {"site_conn_id": "the_site", "year": 2022, "run": "008023", "files": "0-4", "iterations": 4,
             "config": config}
    # the 4-station pass over the same run, from the group's all-zero 4-station set
    four_cfg = {**config, "paths": {**config["paths"],
                                    "initial_constants": f"{SRC_DIR}/templates/align_2022_4ST_local.txt"}}
    four = {**three, "files": "0", "iterations": 1, "fourst": True, "config": four_cfg}
    conns = {"the_site": site_conn(site_info, "htcondor")}
    r3, r4 = dags_tests_in_parallel(airflow_home, [("faser_alignment", three, conns),
                                                   ("faser_alignment", four, conns)], timeout=900, workers=2)
    out3, out4 = r3.stdout + r3.stderr, r4.stdout + r4.stderr
    assert r3.returncode == 0 and "state=success" in out3, out3[-8000:]
    assert r4.returncode == 0 and "state=success" in out4, out4[-8000:]
    assert "4 raw files (0..3, end exclusive)" in out3 and "payload: the group chain" in out3
    assert "converged (largest relative change" in out3

    base = f"{work}/Y2022_R008023_F0-4_ST3"
    rows = _report_rows(out3)
    assert rows, out3[-6000:]
    iters = [row[0] for row in rows]
    assert iters == list(range(1, len(rows) + 1)) and len(rows) >= 2
    assert rows[-1][1] < 1e-3 and all(row[1] >= 1e-3 for row in rows[:-1])
    assert all(chi2 > 0 and ndf > 0 for _, _, chi2, ndf, _ in rows)
    with capsys.disabled():
        print(f"\nFASER group chain on the HTCondor pool over SSH ({base}): {len(rows)} iterations")
        for i, change, chi2, ndf, chi2_ndf in rows:
            print(f"  iter{i:02d}: max relative change {change:.3e}  chi2 {chi2:.6g} / ndf {ndf:.0f} = {chi2_ndf:.4f}")

    # the submit settings of the group's reco.sub / mille.sub, as DAGMan ran them
    sub_dir = on_site(site_info, f"ls -d {base}/iter01/1reco/*/").stdout.split()
    assert len(sub_dir) == 1, sub_dir
    unit = htcondor2.Submit(on_site(site_info, f"cat {sub_dir[0]}unit.sub").stdout)
    fanin = htcondor2.Submit(on_site(site_info, f"cat {sub_dir[0]}fanin.sub").stdout)
    assert (unit["request_cpus"], unit["request_memory"], unit["request_disk"], unit["MY.JobFlavour"]) == \
        ("2", "4096MB", "8192MB", '"workday"')
    assert unit["requirements"] == pool_requirements
    assert (fanin["request_cpus"], fanin["request_memory"], fanin["request_disk"], fanin["MY.JobFlavour"]) == \
        ("1", "2048MB", "2048MB", '"workday"')
    dag = on_site(site_info, f"cat {sub_dir[0]}*.dag").stdout
    assert re.search(r"^RETRY reco_00000 3 UNLESS-EXIT", dag, re.M) and re.search(r"^RETRY fanin 2 UNLESS-EXIT", dag,
                                                                                   re.M), dag

    # iteration 1 applied the group's initial constants; iteration k+1 applied what
    # Millepede wrote in iteration k; every reco ran the 3-station options
    initial = _constants(site_info, f"{SRC_DIR}/templates/inputforalign.txt")
    for i in iters:
        applied_by_reco = [c for c in _calls(site_info, f"{base}/iter{i:02d}/2kfalignment/calls.log")
                           if c["program"] == RECO]
        assert sorted({c["file"] for c in applied_by_reco}) == ["00000", "00001", "00002", "00003"], applied_by_reco
        expected = initial if i == 1 else _constants(site_info, f"{base}/iter{i - 1:02d}/inputforalign.txt")
        for call in applied_by_reco:
            assert call["applied_constants"] == expected, (i, call["file"])
            assert call["ift_included"] is False and "--noIFT" in call["argv"]
        mille = [c for c in _calls(site_info, f"{base}/iter{i:02d}/3millepede/calls.log")
                 if c["program"] == "millepede.py"]
        assert mille and mille[-1]["ok"], mille
    # constants change between iterations: the chain did not run the same geometry twice
    assert _constants(site_info, f"{base}/iter01/inputforalign.txt") != initial

    # the 4-station pass: its own tree, IFT included, no --noIFT
    assert "1 raw files (0..0, end exclusive)" in out4 and "4-station" in out4
    base4 = f"{work}/Y2022_R008023_F0_ST4"
    reco4 = [c for c in _calls(site_info, f"{base4}/iter01/2kfalignment/calls.log") if c["program"] == RECO]
    assert len(reco4) == 1 and reco4[0]["ift_included"] is True and "--noIFT" not in reco4[0]["argv"]
    kf3 = on_site(site_info, f"ls {base}/iter01/2kfalignment").stdout.split()
    kf4 = on_site(site_info, f"ls {base4}/iter01/2kfalignment").stdout.split()
    assert [n for n in kf3 if n.endswith(".root")] == [f"kfalignment_008023_{f:05d}.root" for f in range(4)]
    assert [n for n in kf4 if n.endswith(".root")] == ["kfalignment_008023_00000.root"]
    assert on_site(site_info, f"test -s {base4}/iter01/inputforalign.txt").returncode == 0
