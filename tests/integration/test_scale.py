"""Big rounds end to end on the real test site (issue 15): a Slurm round larger than the site's
own MaxArraySize (1001, Slurm's default) goes in as several arrays under one round key with
one fan-in, runs, and is watched, found by name and parsed like any round; an HTCondor DAG of
many nodes runs to the end.

The sizes are what the 2-CPU test site finishes within about 3 minutes each (payload `true`).
slurmctld starts about 2 array tasks a second there (one scheduling pass a second, 2 CPUs),
so the Slurm round runs with arrays of 101 tasks (a test mode of the backend's limits, the
site's MaxArraySize read by the probe stays 1001): 300 units in 3 arrays. HTCondor's personal
pool (4 slots) runs ~14 DAG nodes a second: 2,000 nodes.
The core is driven directly (openssh transport, no Airflow): what is measured is the scheduler
and batchsite's render / status / parse, not the Airflow task machinery (covered elsewhere).
"""

from __future__ import annotations

import time

import pytest

from batchsite.backends import slurm, slurm_parse
from batchsite.backends.slurm_parse import SlurmLimits
from batchsite.config import site_config_from_connection
from batchsite.model import RoundSpec, UnitTemplate
from batchsite.sitebuild import site_from_config

from ..conftest import on_site, site_conn

#: units per round; Slurm: 3 arrays of at most TEST_ARRAY_SIZE tasks
SLURM_UNITS = 300
TEST_ARRAY_SIZE = 101
CONDOR_UNITS = 2000
#: a round not finished by then fails the test (the queue may hold other tests' jobs too)
DEADLINE_S = 420


def _site(site_info, tmp_path, scheduler: str):
    extra = {**site_conn(site_info, scheduler)["extra"], "transport": "openssh",
             "control_path": str(tmp_path / "cm")}
    cfg = site_config_from_connection(f"scale_{scheduler}", site_info["host"], site_info["port"], site_info["user"],
                                      extra)
    return site_from_config(cfg)


def _spec(site, key: str, n: int) -> RoundSpec:
    return RoundSpec(key=key, label=f"scale {n}", workdir=site.path(f"scale/{key}"),
                     units=UnitTemplate(argv=["true"], indices=f"0-{n - 1}").units(), fanin=["true"])


def _watch(site, sub, poll: float = 2.0):
    """Poll until the round is finished: (last status, seconds, slowest status command)."""
    t0 = time.monotonic()
    slowest = 0.0
    while True:
        t = time.monotonic()
        st = site.status([sub])[sub.key]
        slowest = max(slowest, time.monotonic() - t)
        if st.finished:
            return st, time.monotonic() - t0, slowest
        assert time.monotonic() - t0 < DEADLINE_S, f"not finished after {DEADLINE_S}s: {st.progress_line('round')}"
        time.sleep(poll)


def test_slurm_round_larger_than_max_array_size(site_info, tmp_path):
    site = _site(site_info, tmp_path, "slurm")
    key = f"bs-scale-{int(time.time())}"
    spec = _spec(site, key, SLURM_UNITS)
    try:
        site.probe()
        # the limits come from the site's own scontrol show config at probe time
        assert site.backend.limits.max_array_size == 1001
        site.backend.limits = SlurmLimits(max_array_size=TEST_ARRAY_SIZE)  # test mode, see the module doc
        t0 = time.monotonic()
        sub = site.submit(spec)
        submit_s = time.monotonic() - t0
        arrays = slurm_parse.arrays_of(sub.fanout_id)
        assert [off for _, off in arrays] == [0, 101, 202] and sub.fanin_id
        names = on_site(site_info, f"squeue -h -t all -j {','.join(a for a, _ in arrays)},{sub.fanin_id} -o '%j %i'")
        assert {ln.split()[0] for ln in names.stdout.splitlines()} == {key}  # one round key for every job
        # the record lost: looking up the round's jobs by name gives back the same arrays and fan-in
        found = on_site(site_info, site.backend.render_find_script(spec))
        assert site.backend.parse_find(found.stdout, spec) == slurm_parse.SubmitIds(sub.fanout_id, sub.fanin_id)

        st, run_s, slowest = _watch(site, sub)
        assert st.succeeded, st.progress_line("scale")
        assert st.counts()["done"] == SLURM_UNITS and st.fanin.state.value == "done"
        exits = on_site(site_info, f"ls {spec.workdir}/status | wc -l")
        assert int(exits.stdout) == SLURM_UNITS + 1  # every unit (offset + task id) and the fan-in once
        print(f"slurm: {SLURM_UNITS} units in {len(arrays)} arrays: submit {submit_s:.1f}s, "
              f"done after {run_s:.0f}s, slowest status command + parse {slowest:.2f}s")
    finally:
        on_site(site_info, f"scancel --name={key}")
        site.close()


def test_htcondor_dag_of_many_nodes(site_info, condor_pool, tmp_path):
    site = _site(site_info, tmp_path, "htcondor")
    key = f"bs-scale-{int(time.time())}"
    spec = _spec(site, key, CONDOR_UNITS)
    try:
        sub = site.submit(spec)
        st, run_s, slowest = _watch(site, sub)
        assert st.succeeded, st.progress_line("scale")
        assert st.counts()["done"] == CONDOR_UNITS and st.fanin.state.value == "done"
        print(f"htcondor: {CONDOR_UNITS} DAG nodes done after {run_s:.0f}s, "
              f"slowest status command + parse {slowest:.2f}s")
    finally:
        on_site(site_info, f"condor_rm -const 'JobBatchName == \"{key}\"'")
        site.close()


@pytest.mark.parametrize("n", [10_000, 50_000])
def test_big_rounds_render_within_the_sites_limits(n):
    """The sizes the site cannot run within CI time: rendered against the same limits."""
    rendered = slurm.render_round(RoundSpec(key="bs-scale-r", label="r", workdir="/w/bs-scale-r",
                                            units=UnitTemplate(argv=["true"], indices=f"0-{n - 1}").units()))
    rows = rendered.files["arrays.txt"].splitlines()
    assert len(rows) == -(-n // 1001)
    assert all(max(slurm_parse.expand_indices(r.split()[1])) <= 1000 for r in rows)
    assert len(rendered.files["unit.sh"]) < 4 * 1024 * 1024
