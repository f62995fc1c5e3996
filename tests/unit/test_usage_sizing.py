"""Measured usage (issue 15): the backends' usage parsers on outputs captured on the real test
site (tests/data/{slurm,htcondor}/usage_*.txt), and the sizing decisions made from them."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import pytest

from batchsite.backends import htcondor, htcondor_parse, local_parse, slurm, slurm_parse
from batchsite.measure import OUT_OF_MEMORY, RoundUsage, UnitMeasure
from batchsite.model import JobState, Resources, RoundSpec, RoundStatus, Submission, TaskStatus, WorkUnit
from batchsite.rounds import FLAVOUR_MINUTES, RanWith, rescue_plan
from batchsite.sizing import SizingPolicy, flavour_for, percentile, right_size
from batchsite.usage import ledger_usage, mark_out_of_memory, ran_units, ran_with, read_usage

from .local_rounds import local_root, local_site, submit, wait_finished  # noqa: F401 - fixtures: the local site

DATA = Path(__file__).resolve().parents[1] / "data"


def captured(path: str) -> tuple[str, str]:
    """(the command in the ``# command:`` header, the output without the header)."""
    lines = (DATA / path).read_text().splitlines(keepends=True)
    assert lines[0].startswith("# command: ")
    body = [ln for ln in lines if not ln.startswith("# ")]
    return lines[0][len("# command: "):].strip(), "".join(body)


def slurm_sub(key: str, array: str, fanin: str, indices: list[int]) -> Submission:
    return Submission(key=key, scheduler="slurm", workdir=f"/home/bsite/batchsite/h1/{key}", indices=indices,
                      fanout_id=array, fanin_id=fanin)


RESCUED = slurm_sub("h1-slurm-10ab01", "30", "31", [3])  # usage_oom_rescue.txt: the rescue's submission


def shown(argv: list[str]) -> str:
    """An argv as the fixture headers show it (the usage.sh text as ``<usage.sh>``)."""
    return shlex.join(argv[:2] + ["<usage.sh>"] + argv[3:]) if argv[0] == "sh" else shlex.join(argv)


def test_slurm_usage_command_is_the_captured_one():
    cmd, _ = captured("slurm/usage_oom_rescue.txt")
    argv = slurm.usage_command(RESCUED)
    assert argv[2] == slurm.USAGE_SCRIPT and shown(argv) == cmd


def test_slurm_usage_every_attempt_newest_job_per_unit():
    """Units 0-2 from the first attempt (array 25), unit 3 from its rescue (array 30, 600M);
    the array ids of earlier attempts come from the submission record the site kept."""
    _, text = captured("slurm/usage_oom_rescue.txt")
    usage = slurm_parse.parse_usage(text, RESCUED)
    assert sorted(usage.units) == [0, 1, 2, 3] and usage.note == ""
    # the payloads allocated 50 / 100 / 200 / 400 MB (+ the interpreter): MaxRSS of the .batch steps
    assert [round(usage.units[i].max_rss_mb) for i in range(4)] == [63, 113, 213, 413]
    assert [usage.units[i].req_mem_mb for i in range(4)] == [300, 300, 300, 600]
    assert [usage.units[i].cpu_seconds for i in range(3)] == [2.042, 2.095, 2.167]
    assert [usage.units[i].wall_seconds for i in range(4)] == [12, 13, 12, 11]
    assert not any(m.out_of_memory for m in usage.units.values())
    u = usage.units[0]
    assert (u.time_limit_seconds, u.cpus, u.host, u.state) == (300, 1, "vm", "COMPLETED")
    assert usage.fanin is not None and usage.fanin.state == "COMPLETED" and usage.fanin.req_mem_mb == 600
    assert ran_with(usage) == RanWith(unit_seconds=300, unit_mem_mb=600, fanin_seconds=300, fanin_mem_mb=600)


def test_slurm_overmemorykill_is_out_of_memory_and_marks_the_status():
    """OverMemoryKill reports FAILED 0:9 (not OUT_OF_MEMORY): SIGKILL at a peak >= the request is."""
    _, text = captured("slurm/usage_oom_first_attempt.txt")
    sub = slurm_sub("h1-slurm-790df8", "32", "33", [0, 1])
    usage = slurm_parse.parse_usage(text, sub)
    assert [usage.units[i].out_of_memory for i in range(2)] == [False, True]
    assert usage.units[1].max_rss_mb > usage.units[1].req_mem_mb == 300
    status = RoundStatus(key=sub.key, units={0: TaskStatus(state=JobState.DONE, native="COMPLETED", exit_code=0),
                                             1: TaskStatus(state=JobState.FAILED, native="FAILED", exit_code=137)})
    marked = mark_out_of_memory(status, usage)
    assert marked.units[1].native == OUT_OF_MEMORY and "peak RSS 413 MB, request 300 MB" in marked.units[1].reason
    assert marked.units[0] == status.units[0]
    # the rescue of the marked round asks for more memory (the old status: no escalation)
    spec = RoundSpec(key=sub.key, label="r", workdir=sub.workdir, resources=Resources(mem_mb=300),
                     units=[WorkUnit(index=i, argv=["true"]) for i in range(2)])
    assert rescue_plan(spec, marked, scheduler="slurm", narrow=True, ran=ran_with(usage)).resources.mem_mb == 600
    assert rescue_plan(spec, status, scheduler="slurm", narrow=True).resources.mem_mb == 300


def test_slurm_without_gathering_measures_nothing():
    """jobacct_gather/none (the test site as site.sh writes it): no MaxRSS and TotalCPU 00:00:00
    although the units burnt 2 s: no measurement, no sizing of memory or cpus."""
    _, text = captured("slurm/usage_no_gather.txt")
    usage = slurm_parse.parse_usage(text, slurm_sub("h1-slurm-bd1294", "3777", "3778", [0, 1]))
    assert sorted(usage.units) == [0, 1]
    assert all(m.max_rss_mb is None and m.cpu_seconds is None for m in usage.units.values())
    d = right_size(usage, Resources(mem_mb=300, time_minutes=5), "slurm")
    assert d.mem_mb is None and d.cpus is None and d.time_minutes == 1


def test_slurm_size_units():
    assert slurm_parse.parse_size_mb("64448K", bare_unit="") == 64448 / 1024
    assert slurm_parse.parse_size_mb("2000Mc") == 2000 and slurm_parse.parse_size_mb("4G") == 4096
    assert slurm_parse.parse_size_mb("") is None
    assert slurm_parse.parse_cpu_time("00:01.041") == 1.041
    assert slurm_parse.parse_cpu_time("1-02:03:04") == 93784 and slurm_parse.parse_cpu_time("") is None


def condor_sub() -> Submission:
    # usage_oom_rescue.txt: -completedsince = submitted_at - 3 days
    return Submission(key="h1-htcondor-dd0d01", scheduler="htcondor", workdir="/w", indices=[0, 1, 2, 3],
                      fanout_id="9193", fanin_id="fanin", schedd="bsite@vm",
                      submitted_at=1796294487 + htcondor.USAGE_HISTORY_SECONDS)


def test_htcondor_usage_command_is_the_captured_one():
    cmd, _ = captured("htcondor/usage_oom_rescue.txt")
    assert shlex.join(htcondor.usage_command(condor_sub())) == cmd


def test_htcondor_usage_raw_rss_every_attempt():
    _, text = captured("htcondor/usage_oom_rescue.txt")
    usage = htcondor_parse.parse_usage(text)
    assert sorted(usage.units) == [0, 1, 2, 3]
    # ResidentSetSize_RAW, not the schedd's rounded ResidentSetSize (64172 KB, not 75000)
    assert [round(usage.units[i].max_rss_mb) for i in range(4)] == [63, 113, 213, 412]
    # unit 3: the rescue's job (9194, 600 MB, done), not the one removed for its memory (9192)
    assert usage.units[3].req_mem_mb == 600 and not usage.units[3].out_of_memory
    assert (usage.units[0].host, usage.units[0].req_mem_mb, usage.units[0].time_limit_seconds) == ("vm", 300, 300)
    assert usage.fanin is not None and usage.fanin.state == "Completed"


def test_htcondor_removed_for_memory():
    _, text = captured("htcondor/usage_oom_rescue.txt")
    first = "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith(("9194", "9195")))
    usage = htcondor_parse.parse_usage(first)  # the first attempt's jobs only
    assert [usage.units[i].out_of_memory for i in range(4)] == [False, False, False, True]
    assert usage.units[3].state == OUT_OF_MEMORY and usage.units[0].state == "Completed"
    assert ran_with(usage) == RanWith(unit_seconds=300, unit_mem_mb=300)


def test_htcondor_status_of_a_memory_removal():
    ad = {"JobStatus": 3, "RemoveReason": "The job attribute PeriodicRemove expression 'MemoryUsage =!= undefined "
                                          "&& MemoryUsage > RequestMemory' evaluated to TRUE"}
    assert htcondor_parse.history_job_status(ad).native == OUT_OF_MEMORY
    assert htcondor_parse.is_out_of_memory({"LastHoldReasonCode": 34})
    assert not htcondor_parse.is_out_of_memory({"JobStatus": 3, "RemoveReason": "via condor_rm"})


def test_htcondor_submit_removes_over_memory_units():
    spec = RoundSpec(key="k", label="k", workdir="/w", units=[WorkUnit(index=0, argv=["true"])],
                     resources=Resources(mem_mb=300))
    assert htcondor.submit_description(spec, fanin=False)["periodic_remove"] == htcondor.MEMORY_REMOVE
    assert "periodic_remove" not in htcondor.submit_description(spec.model_copy(update={"resources": Resources()}),
                                                                 fanin=False)


def test_sizing_from_the_captured_slurm_round():
    _, text = captured("slurm/usage_oom_rescue.txt")
    usage = slurm_parse.parse_usage(text, RESCUED)
    d = right_size(usage, Resources(mem_mb=600, time_minutes=5), "slurm")
    peak = max(m.max_rss_mb for m in usage.units.values())  # p95 of 4 units: the largest
    assert d.inputs.peak_rss_mb == peak and d.mem_mb == math.ceil(peak * 1.2)
    assert d.time_minutes == 1  # 13 s x 1.5 -> 1 min
    assert d.cpus == 1 and 0 < d.inputs.cpu_efficiency < 1
    assert d.request().mem_mb == d.mem_mb and "memory 600 -> " in d.message()


def test_sizing_skips_oom_units_and_clamps():
    _, text = captured("htcondor/usage_oom_rescue.txt")
    usage = htcondor_parse.parse_usage("".join(ln + "\n" for ln in text.splitlines()
                                               if not ln.startswith(("9194", "9195"))))
    d = right_size(usage, Resources(mem_mb=300, job_flavour="espresso"), "htcondor")
    assert d.inputs.measured_units == 3 and d.inputs.peak_rss_mb == usage.units[2].max_rss_mb
    assert d.job_flavour == "espresso" and d.time_minutes is None  # 18 s x 1.5: within espresso
    clamped = right_size(usage, Resources(mem_mb=300), "htcondor", SizingPolicy(max_mem_mb=200))
    assert clamped.mem_mb == 200 and "clamped" in clamped.message()


def test_percentile_and_flavours():
    assert percentile([float(v) for v in range(1, 101)], 95) == 95
    assert percentile([3.0], 95) == 3.0
    assert flavour_for(21) == "microcentury" and flavour_for(FLAVOUR_MINUTES["nextweek"] + 1) is None


def test_ledger_usage_columns():
    usage = RoundUsage(units={2: UnitMeasure(wall_seconds=4, cpu_seconds=1.5, max_rss_mb=63.0, source="sacct")})
    row = ledger_usage(usage)[2]
    assert (row.wall_seconds, row.cpu_seconds, row.max_rss_mb, row.usage_source) == (4, 1.5, 63.0, "sacct")


@pytest.mark.parametrize("bad", ["", "garbage\n", "1|2|3\n", "@@BATCHSITE sacct -\n!rc 1\n"])
def test_parsers_never_raise_on_odd_text(bad):
    assert slurm_parse.parse_usage(bad, slurm_sub("k", "1", "2", [0])).units == {}
    assert htcondor_parse.parse_usage(bad).units == {}


# ---------------------------------------------------------------------------- the local runner (real processes)

def test_local_runner_records_rusage(local_site):
    """The local runner reaps each job with wait4: its wall time, CPU seconds and peak RSS
    (bash and the Python it waited for) are what the usage command reads."""
    burn = ("import sys, time\nb = b'x' * (int(sys.argv[1]) * 1024 * 1024)\nt = time.process_time()\n"
            "while time.process_time() - t < 0.5: pass\n")
    sub = submit(local_site, [sys.executable, "-c", burn, "60"], [sys.executable, "-c", burn, "120"],
                 fanin=["true"])
    status = wait_finished(local_site, sub)
    usage = read_usage(local_site, sub, expect=ran_units(status))
    assert sorted(usage.units) == [0, 1] and usage.fanin is not None
    for i, mb in ((0, 60), (1, 120)):
        m = usage.units[i]
        assert mb < m.max_rss_mb < mb + 60, m  # the interpreter's own ~10-30 MB on top
        assert 0.45 <= m.cpu_seconds and m.wall_seconds >= m.cpu_seconds * 0.5 and m.source == "rusage", m
    d = right_size(usage, Resources(), "local")
    assert d.mem_mb == math.ceil(usage.units[1].max_rss_mb * 1.2)


def test_local_usage_parser():
    usage = local_parse.parse_usage("0 1.500 0.700 65536\nfanin 0.010 0.005 3000\nbad line\nx 1 2 3\n")
    assert usage.units[0].max_rss_mb == 64 and usage.units[0].cpu_seconds == 0.7 and usage.fanin.wall_seconds == 0.01
    assert list(usage.units) == [0]


# ---------------------------------------------------------------------------- host blocklist

def _round(hosts_and_states: list[tuple[str, JobState, str]]) -> tuple[RoundUsage, RoundStatus]:
    usage = RoundUsage(units={i: UnitMeasure(host=h, source="sacct") for i, (h, _, _) in enumerate(hosts_and_states)})
    status = RoundStatus(key="k", units={i: TaskStatus(state=st, native=native)
                                         for i, (_, st, native) in enumerate(hosts_and_states)})
    return usage, status


def test_blocked_hosts_where_units_fail_repeatedly():
    from batchsite.sizing import blocked_hosts
    ok, bad = (JobState.DONE, "COMPLETED"), (JobState.FAILED, "FAILED")
    usage, status = _round([("n1", *bad), ("n1", *bad), ("n1", *ok), ("n2", *ok), ("n2", *ok), ("n3", *bad)])
    assert blocked_hosts(usage, status) == ["n1"]  # n3 failed once only
    # nowhere healthy to go: nothing blocked (a single-host site never blocks its only host)
    usage, status = _round([("vm", *bad), ("vm", *bad), ("vm", *ok)])
    assert blocked_hosts(usage, status) == []
    # killed at a limit: more memory / time, not another host
    oom = (JobState.FAILED, OUT_OF_MEMORY)
    usage, status = _round([("n1", *oom), ("n1", *oom), ("n2", *ok)])
    assert blocked_hosts(usage, status) == []


def test_rescue_excludes_blocked_hosts_on_both_schedulers():
    spec = RoundSpec(key="k", label="k", workdir="/w", units=[WorkUnit(index=i, argv=["true"]) for i in range(3)],
                     resources=Resources(mem_mb=100, requirements='OpSys == "LINUX"'))
    status = RoundStatus(key="k", units={0: TaskStatus(state=JobState.FAILED, native="FAILED", exit_code=1),
                                         1: TaskStatus(state=JobState.DONE, exit_code=0),
                                         2: TaskStatus(state=JobState.DONE, exit_code=0)})
    plan = rescue_plan(spec, status, scheduler="slurm", narrow=True, exclude_hosts=["n7", "n1"])
    assert plan.resources.exclude_hosts == ("n1", "n7") and any("excluded" in n for n in plan.notes)
    assert "#SBATCH --exclude=n1,n7" in slurm.render_round(plan.spec).files["unit.sh"]
    sub = htcondor.submit_description(plan.spec, fanin=False)
    assert sub["requirements"] == '(OpSys == "LINUX") && (Machine =!= "n1") && (Machine =!= "n7")'
    # carried across deferrals by the watch (flat kwargs), applied to the next rescue's spec
    from batchsite.rounds import RoundWatch
    watch = RoundWatch(site_conn_id="c", round_key="k", workdir="/w", fanout_id="1", indices="0", label="k",
                       **{k: v for k, v in RoundWatch.raises(plan).items() if k == "exclude_hosts"})
    assert watch.raised(spec).resources.exclude_hosts == ("n1", "n7")
    with pytest.raises(ValueError, match="exclude_hosts"):
        Resources(exclude_hosts=("bad host",))


def test_sizing_cpus_from_efficiency_and_flavour_from_wall_time():
    units = {i: UnitMeasure(wall_seconds=1000.0 + i, cpu_seconds=1200.0, max_rss_mb=900.0, cpus=4, source="sacct")
             for i in range(20)}
    d = right_size(RoundUsage(units=units), Resources(cpus=4, job_flavour="espresso", time_minutes=20), "htcondor")
    # efficiency 1200 / (1018 x 4) = 0.29 at p95 -> ceil(0.29 x 4 x 1.2) = 2 cpus
    assert d.cpus == 2 and "cpus 4 -> 2" in d.message()
    # p95 wall 1018 s x 1.5 = 26 min: microcentury (60 min); +MaxRuntime kept in step with it
    assert (d.job_flavour, d.time_minutes) == ("microcentury", FLAVOUR_MINUTES["microcentury"])
    slurm_d = right_size(RoundUsage(units=units), Resources(cpus=4, time_minutes=20), "slurm")
    assert slurm_d.time_minutes == 26 and slurm_d.job_flavour is None and slurm_d.mem_mb == 1080


def _decision(mem: int | None, minutes: int | None = None, flavour: str | None = None, cpus: int | None = None):
    from batchsite.sizing import SizingDecision, SizingInputs

    inputs = SizingInputs(measured_units=3, percentile=95, peak_rss_mb=(mem or 0) / 1.2, requested_cpus=1)
    return SizingDecision(inputs=inputs, mem_mb=mem, time_minutes=minutes, job_flavour=flavour, cpus=cpus,
                          notes=[f"memory -> {mem} MB"])


def test_the_most_demanding_of_the_partitions_decisions():
    from batchsite.sizing import most_demanding

    assert most_demanding([None, None]) is None
    one = _decision(500)
    assert most_demanding([one, None]) == one
    combined = most_demanding([_decision(500, 10, "espresso", 1), _decision(900, 5, "longlunch"), None])
    assert (combined.mem_mb, combined.time_minutes, combined.job_flavour, combined.cpus) == (900, 10, "longlunch", 1)
    assert combined.notes[0] == "the largest of 2 partitions' decisions"


def test_measured_sizing_fills_only_what_the_campaign_left_unset():
    from batchsite.rounds import ResourceRequest
    from batchsite.sizing import fill_unset

    decision = _decision(496, 2, "espresso", 1)
    assert fill_unset(None, decision, "off") == ResourceRequest()
    assert fill_unset(None, decision, "memory") == ResourceRequest(mem_mb=496)
    assert fill_unset(None, decision, "all") == ResourceRequest(mem_mb=496, time_minutes=2, job_flavour="espresso",
                                                                cpus=1)
    # an explicit request (a mem_mb Param, the group's own --mem) wins over the measurement
    explicit = ResourceRequest(mem_mb=3988, time_minutes=60)
    assert fill_unset(explicit, decision, "all") == ResourceRequest(mem_mb=3988, time_minutes=60,
                                                                    job_flavour="espresso", cpus=1)
    with pytest.raises(ValueError, match="right_size='always': one of off, memory, all"):
        fill_unset(None, decision, "always")
