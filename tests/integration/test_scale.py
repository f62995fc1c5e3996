"""A 10,000-unit round end to end on the real test site (issue 15), on Slurm and on the HTCondor
pool side by side (payload `true`). On Slurm the round is bigger than the site's own
MaxArraySize (1001, Slurm's default, read by the probe): several arrays under one round key
with one fan-in. Each round is submitted, found again by name where the backend can lose its
record, watched with ONE status command per poll, and every unit's exit-code file is counted
on the site.

The test Slurm node advertises 32 CPUs on the 2-CPU runner (site.sh, `config_overrides`):
with 2 it starts ~2 array tasks a second (10,000 units: ~80 minutes), with 32 ~35 a second.
The personal pool runs ~30 DAG nodes a second. Both rounds run at once, as two campaigns on
two sites would; each round's time is measured by its own watcher.
The core is driven directly (openssh transport, no Airflow): what is measured is the scheduler
and batchsite's render / submit / status / parse, not the Airflow task machinery (its payloads
are O(1) in N: tests/unit/backends/test_scale.py, bench/scale_bench.py).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from batchsite.backends import slurm, slurm_parse
from batchsite.config import site_config_from_connection
from batchsite.model import RoundSpec, UnitTemplate
from batchsite.sitebuild import site_from_config

from ..conftest import on_site, site_conn

UNITS = 10_000
#: a round not finished by then fails the test (alone: Slurm ~5 min, HTCondor ~6 min; side by
#: side on 2 CPUs ~8 min)
DEADLINE_S = 1200
POLL_S = 5.0


def _site(site_info, tmp_path, scheduler: str):
    extra = {**site_conn(site_info, scheduler)["extra"], "transport": "openssh",
             "control_path": str(tmp_path / f"cm-{scheduler}")}
    cfg = site_config_from_connection(f"scale_{scheduler}", site_info["host"], site_info["port"], site_info["user"],
                                      extra)
    return site_from_config(cfg)


def _spec(site, key: str, n: int) -> RoundSpec:
    return RoundSpec(key=key, label=f"scale {n}", workdir=site.path(f"scale/{key}"),
                     units=UnitTemplate(argv=["true"], indices=f"0-{n - 1}").units(), fanin=["true"])


def _run_round(site, spec: RoundSpec) -> dict:
    """Submit, then poll until finished: what was measured."""
    site.probe()
    t0 = time.monotonic()
    sub = site.submit(spec)
    submit_s = time.monotonic() - t0
    polls, slowest_command, slowest_parse, most_parse_cpu, biggest = 0, 0.0, 0.0, 0.0, 0
    while True:
        # Site.status, with the remote command and the parse timed apart
        t = time.monotonic()
        answer = site.transport.sh(site.backend.render_status_script([sub]), timeout=120).out
        t_parse, cpu_parse = time.monotonic(), time.thread_time()
        st = site.backend.parse_status(answer, [sub])[sub.key]
        slowest_parse = max(slowest_parse, time.monotonic() - t_parse)
        # this thread's CPU time: the parse's own cost, without waiting for a CPU the
        # schedulers' daemons hold while 10,000 jobs run on 2 cores
        most_parse_cpu = max(most_parse_cpu, time.thread_time() - cpu_parse)
        slowest_command = max(slowest_command, t_parse - t)
        biggest = max(biggest, len(answer))
        polls += 1
        if st.finished:
            break
        assert time.monotonic() - t0 < DEADLINE_S, f"not finished after {DEADLINE_S}s: {st.progress_line('round')}"
        time.sleep(POLL_S)
    return {"sub": sub, "status": st, "submit_s": submit_s, "done_s": time.monotonic() - t0, "polls": polls,
            "slowest_command_s": slowest_command, "slowest_parse_s": slowest_parse, "most_parse_cpu_s": most_parse_cpu,
            "biggest_answer": biggest}


def test_10000_unit_rounds_on_slurm_and_htcondor_side_by_side(site_info, condor_pool, tmp_path, capsys):
    stamp = int(time.time())
    sites = {s: _site(site_info, tmp_path, s) for s in ("slurm", "htcondor")}
    specs = {s: _spec(sites[s], f"bs-scale-{s[:2]}-{stamp}", UNITS) for s in sites}
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {s: pool.submit(_run_round, sites[s], specs[s]) for s in sites}
            results = {s: f.result() for s, f in futures.items()}
        for scheduler, r in results.items():
            st = r["status"]
            assert st.succeeded, f"{scheduler}: {st.progress_line('scale')}"
            assert st.counts()["done"] == UNITS and st.fanin.state.value == "done", scheduler
            # every unit wrote its exit-code file once, and the fan-in its own
            files = on_site(site_info, f"ls {specs[scheduler].workdir}/status | wc -l")
            assert int(files.stdout) == UNITS + 1, (scheduler, files.stdout, files.stderr)

        # Slurm: the probe read the site's own MaxArraySize; the round is 10 arrays + 1 fan-in,
        # all named by the round key, and found again by that name if the record is lost
        slurm_site, slurm_spec, slurm_sub = sites["slurm"], specs["slurm"], results["slurm"]["sub"]
        max_array = slurm_site.backend.limits.max_array_size
        assert max_array == 1001
        arrays = slurm_parse.arrays_of(slurm_sub.fanout_id)
        assert [off for _, off in arrays] == list(range(0, UNITS, max_array)) and slurm_sub.fanin_id
        ids = ",".join([a for a, _ in arrays] + [slurm_sub.fanin_id])
        names = on_site(site_info, f"sacct -n -P -X -j {ids} -o JobName | sort -u")
        assert names.stdout.split() == [slurm_spec.key], names.stdout
        found = on_site(site_info, slurm_site.backend.render_find_script(slurm_spec))
        assert slurm_site.backend.parse_find(found.stdout, slurm_spec) == \
            slurm_parse.SubmitIds(slurm_sub.fanout_id, slurm_sub.fanin_id)
        # HTCondor: one DAGMan job ran the round
        c = f'JobBatchName == "{specs["htcondor"].key}" && JobUniverse == 7'
        dagmans = on_site(site_info, f"condor_history -constraint '{c}' -af ClusterId")
        assert len(dagmans.stdout.split()) == 1, dagmans.stdout

        for scheduler, r in results.items():
            layout = f"in {len(arrays)} arrays (MaxArraySize {max_array})" if scheduler == "slurm" else "as DAG nodes"
            with capsys.disabled():  # the measured figures belong in the CI log
                print(f"\n{scheduler}: {UNITS} units {layout}: submit {r['submit_s']:.1f}s, done after "
                      f"{r['done_s']:.0f}s ({UNITS / r['done_s']:.1f} units/s); {r['polls']} status commands, the "
                      f"slowest {r['slowest_command_s']:.2f}s, answers up to {r['biggest_answer'] / 1024:.0f} KB "
                      f"parsed in at most {r['slowest_parse_s'] * 1000:.0f} ms "
                      f"(at most {r['most_parse_cpu_s'] * 1000:.0f} ms of CPU)")
        # 10,000 exit-code files and scheduler logs per round: not kept for the rest of the run
        for s in sites:
            on_site(site_info, f"rm -rf {specs[s].workdir}", timeout=300)
    finally:
        on_site(site_info, f"scancel --name={specs['slurm'].key}")
        on_site(site_info, f"condor_rm -const 'JobBatchName == \"{specs['htcondor'].key}\"'")
        for site in sites.values():
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
