"""Adaptive right-sizing on the real schedulers (issue 15): measured usage, OOM escalation, and
the next round's memory request from the measured peak RSS.

``BatchRoundOperator`` driven as the task runner drives it (``test_decision_paths.drive``).
Each unit is a Python one-liner that allocates (and touches) a known number of MB and burns a
known CPU time. Round 1: three units within the 300 MB request and one over it: the scheduler
kills it (Slurm ``OverMemoryKill``; the HTCondor pool: unit.sub's ``periodic_remove`` on
``MemoryUsage > RequestMemory``), the operator reads the usage (ONE command), marks it out of
memory and the rescue reruns it alone with twice the memory, where it succeeds. The round's
result carries the sizing decision: memory = p95 of the measured peak RSS x 1.2. Round 2 asks
for that, and the scheduler's own record of round 2 shows the request; its units fit in it.
Every figure printed is measured in this run.
"""

from __future__ import annotations

import json
import math
import shlex
import time
import uuid
from typing import Any

import pytest

from batchsite.ledger.store import SqliteLedger
from batchsite.operators.round import BatchRoundOperator
from batchsite.sizing import SizingDecision

from ..conftest import on_site, site_conn
from ..unit.test_operator_round import context
from .test_decision_paths import drive, site_runs

#: MB each unit allocates in round 1 (unit 3 is over the request) and the request
ALLOCATE_MB = (40, 80, 120, 400)
REQUEST_MB = 300
CPU_SECONDS = 1.0
WATCH_S = 300
#: seconds a unit holds its memory: on every run (``EVERY``), so that the scheduler measures the
#: peak, and on the first run of an over-budget unit (``FIRST``), so that it is killed for it.
#: Slurm samples every second (JobAcctGatherFrequency=task=1) and kills within a second. The
#: HTCondor pool's starter reports a job's RSS from a process snapshot taken every
#: PID_SNAPSHOT_INTERVAL (15 s there): a unit that ends sooner is measured at a few MB, and
#: the periodic_remove sees the peak only after a snapshot (``PID_SNAPSHOT_INTERVAL = 1`` in the
#: pool's config would bring both down to 2 s)
HOLD_EVERY_S = {"slurm": 0, "htcondor": 16}
HOLD_FIRST_S = {"slurm": 3, "htcondor": 20}
#: (the line a site needs, the ``scontrol show config`` value that shows it): without them the
#: test Slurm measures no RSS and CPU (``JobAcctGatherType=jobacct_gather/none``) and kills nothing
SLURM_NEEDS = (("JobAcctGatherType=jobacct_gather/linux", "jobacct_gather/linux"),
               ("JobAcctGatherFrequency=task=1", "task=1"),
               ("JobAcctGatherParams=OverMemoryKill", "OverMemoryKill"),
               ("SelectTypeParameters=CR_Core_Memory", "CR_CORE_MEMORY"),
               ("DefMemPerCPU=2048", "2048"))

#: log the run, allocate argv[1] MB (touched), burn argv[2] s of CPU, hold the memory argv[3] s,
#: on the first run of a unit (no marker argv[5]) argv[4] s
PAYLOAD = """import os, sys, time
mb, cpu, marker = int(sys.argv[1]), float(sys.argv[2]), sys.argv[5]
every, first = float(sys.argv[3]), float(sys.argv[4])
with open(marker + ".runs", "a") as log:
    log.write("run\\n")
block = b"\\x01" * (mb * 1024 * 1024)
start = time.process_time()
while time.process_time() - start < cpu:
    pass
if not os.path.exists(marker):
    open(marker, "w").close()
    every = max(every, first)
time.sleep(every)
print(len(block))
"""


@pytest.fixture(autouse=True)
def _ledger_in_a_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHSITE_LEDGER_PATH", str(tmp_path / "ledger.sqlite"))


def slurm_config_missing(info: dict) -> list[str]:
    r = on_site(info, "scontrol show config")
    assert r.returncode == 0, r.stderr
    values = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in r.stdout.splitlines())}
    got = " ".join(values.get(k, "") for k in ("JobAcctGatherType", "JobAcctGatherFrequency", "JobAcctGatherParams",
                                                 "SelectTypeParameters", "DefMemPerCPU"))
    return [line for line, shows in SLURM_NEEDS if shows not in got]


def units(d: str, mbs: tuple[int, ...], scheduler: str, stem: str) -> list[list[str]]:
    """The units allocating ``mbs``; those over ``REQUEST_MB`` hold their memory longer on their
    first run."""
    return [["/usr/bin/python3", "-c", PAYLOAD, str(mb), str(CPU_SECONDS), str(HOLD_EVERY_S[scheduler]),
             str(HOLD_FIRST_S[scheduler] if mb > REQUEST_MB else 0), f"{d}/{stem}{i}"] for i, mb in enumerate(mbs)]


def requested_mb(info: dict, scheduler: str, key: str) -> list[int]:
    """The memory each unit of round ``key`` ran with, in the scheduler's own record."""
    if scheduler == "slurm":
        deadline = time.monotonic() + 60
        while True:  # slurmdbd records with a lag
            r = on_site(info, f"sacct -n -P -X --name={key} --starttime=now-1days -o JobID,ReqMem")
            assert r.returncode == 0, r.stderr
            rows = [ln.split("|") for ln in r.stdout.split() if "_" in ln.split("|")[0]]
            if len(rows) >= len(ALLOCATE_MB) or time.monotonic() > deadline:
                return sorted(int(mem.rstrip("Mcn")) for _, mem in rows)
            time.sleep(1)
    c = shlex.quote(f'JobBatchName == "{key}" && BatchsiteIndex >= 0')
    r = on_site(info, f"condor_history -constraint {c} -af RequestMemory")
    assert r.returncode == 0, r.stderr
    return sorted(int(x) for x in r.stdout.split())


def run_round(scheduler: str, conn_id: str, task_id: str, tag: str, d: str, stem: str,
              resources: dict[str, Any]) -> dict[str, Any]:
    op = BatchRoundOperator(task_id=task_id, site_conn_id=conn_id, workdir=f"test/{tag}/{task_id}",
                            units=units(d, ALLOCATE_MB, scheduler, stem), job_resources=resources,
                            watch_timeout=WATCH_S)
    result, _ = drive(op, context(task_id=task_id, run_id=f"manual__{tag}"), WATCH_S + 30)
    return result


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_oom_escalation_and_next_round_sized_from_measured_rss(scheduler, site_info, request, monkeypatch, tmp_path):
    if scheduler == "htcondor":
        request.getfixturevalue("condor_pool")
    else:
        missing = slurm_config_missing(site_info)
        if missing:
            pytest.fail("the test Slurm measures no memory and kills no unit over its --mem: slurm.conf "
                        f"(tests/site/site.sh slurm_conf_content) needs {missing} (jobacct_gather/none gives "
                        "no MaxRSS, TotalCPU 0; without CR_Core_Memory no job memory limit is enforced)",
                        pytrace=False)
    conn_id = f"rs_{scheduler}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(site_conn(site_info, scheduler)))
    tag = f"rs{uuid.uuid4().hex[:8]}"
    d = f"{site_info['remote_root']}/test/{tag}"
    assert on_site(site_info, f"mkdir -p {shlex.quote(d)}").returncode == 0
    # an explicit time: the pool's default flavour (espresso) is scaled to 5 s there
    first = {"mem_mb": REQUEST_MB, "time_minutes": 5}

    t0 = time.monotonic()
    r1 = run_round(scheduler, conn_id, "round_1", tag, d, "r1_", first)
    took1 = time.monotonic() - t0
    assert r1["succeeded"] and r1["rescues"] == 1, r1
    runs = site_runs(site_info, d, [f"r1_{i}.runs" for i in range(len(ALLOCATE_MB))])
    assert runs == [1, 1, 1, 2], runs  # only the over-budget unit reran
    assert requested_mb(site_info, scheduler, r1["key"])[-1] >= 2 * REQUEST_MB  # its rerun had twice the memory

    sizing = SizingDecision.model_validate(r1["sizing"])
    peak = sizing.inputs.peak_rss_mb
    # p95 of 4 units is the largest: the over-budget unit's successful rerun, about its 400 MB
    assert ALLOCATE_MB[-1] < peak < ALLOCATE_MB[-1] + 60, sizing
    assert sizing.mem_mb == math.ceil(peak * 1.2) and sizing.inputs.measured_units == len(ALLOCATE_MB)

    # the ledger: each unit's measured usage, and the sizing decision with its inputs
    view = SqliteLedger(str(tmp_path / "ledger.sqlite")).campaign(f"manual__{tag}")
    round_1 = [u for u in view.units if u.round_key == r1["key"]]
    assert len(round_1) == len(ALLOCATE_MB)
    assert all(u.max_rss_mb and u.wall_seconds and u.usage_source for u in round_1), round_1
    sized = [x for x in view.decisions if x.kind == "sizing" and x.round_key == r1["key"]]
    assert len(sized) == 1 and sized[0].inputs["inputs"]["peak_rss_mb"] == peak, sized

    # round 2 asks for what round 1 measured; the scheduler's record shows it, and the units fit
    t0 = time.monotonic()
    r2 = run_round(scheduler, conn_id, "round_2", tag, d, "r2_",
                   {**first, **sizing.request().model_dump(exclude_none=True)})
    took2 = time.monotonic() - t0
    assert r2["succeeded"] and r2["rescues"] == 0, r2
    asked = requested_mb(site_info, scheduler, r2["key"])
    # HTCondor rounds RequestMemory up to its 128 MB quantum (MODIFY_REQUEST_EXPR_REQUESTMEMORY)
    quantum = 128 if scheduler == "htcondor" else 1
    assert all(sizing.mem_mb <= mb < sizing.mem_mb + quantum for mb in asked), (asked, sizing)
    peak2 = SizingDecision.model_validate(r2["sizing"]).inputs.peak_rss_mb
    assert peak2 <= sizing.mem_mb
    print(f"\n{scheduler} right-sizing: round 1 asked {REQUEST_MB} MB for units allocating {list(ALLOCATE_MB)} MB; "
          f"unit 3 killed for memory, rerun with {requested_mb(site_info, scheduler, r1['key'])[-1]} MB "
          f"({took1:.0f} s); measured p95 peak RSS {peak:.1f} MB -> round 2 asked {sizing.mem_mb} MB "
          f"(scheduler record {sorted(set(asked))} MB), its peak {peak2:.1f} MB ({took2:.0f} s); "
          f"{sizing.message()}")
