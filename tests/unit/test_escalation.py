"""Rescues that ask for more: wall time strictly above the limit a unit was killed at, on every
scheduler, memory for units killed out of memory, the fan-in alone when only it failed, and
rounds of many time-outs escalated rather than reviewed or aborted (pure functions)."""

import pytest

from batchsite.model import JobState, Resources, RoundSpec, RoundStatus, TaskStatus, WorkUnit
from batchsite.rounds import (
    FLAVOUR_MINUTES, FLAVOURS, MAX_TIME_MINUTES, MEM_CAP_MB, CannotEscalate, RanWith, RescuePolicy, RoundWatch,
    classify_failures, effective_minutes, escalate, grow_memory, rescue_plan,
)

DONE = TaskStatus(state=JobState.DONE, exit_code=0)
FAIL = TaskStatus(state=JobState.FAILED, exit_code=3)
TIMEOUT = TaskStatus(state=JobState.FAILED, native="TIMEOUT", timed_out=True)
OOM = TaskStatus(state=JobState.FAILED, native="OUT_OF_MEMORY", reason="out of memory")


def limit_seconds(res: Resources, scheduler: str) -> float:
    """What the scheduler enforces for ``res`` on lxplus / a plain Slurm (an explicit time wins)."""
    return effective_minutes(res, scheduler) * 60


@pytest.mark.parametrize("flavour", [None, *FLAVOURS[:-1]])
@pytest.mark.parametrize("time_minutes", [None, 1, 30, 200, 5000])
def test_htcondor_escalation_always_gives_strictly_more_and_never_contradicts_the_flavour(flavour, time_minutes):
    res = Resources(job_flavour=flavour, time_minutes=time_minutes)
    ran = limit_seconds(res, "htcondor")
    new = escalate(res, "htcondor", ran)
    if new is None:  # only when no flavour is longer than what it ran with
        assert all(FLAVOUR_MINUTES[f] * 60 <= ran for f in FLAVOURS[FLAVOURS.index(flavour or "espresso") + 1:])
        return
    assert limit_seconds(new, "htcondor") > ran
    # +MaxRuntime (time_minutes) wins over the flavour on lxplus: it must equal the flavour's limit
    assert new.time_minutes in (None, FLAVOUR_MINUTES[new.job_flavour])
    assert FLAVOURS.index(new.job_flavour) > FLAVOURS.index(flavour or "espresso")


def test_the_defect_two_steps_up_workday_never_comes_with_160_minutes():
    res = Resources(job_flavour="espresso", time_minutes=40)
    once = escalate(res, "htcondor", 40 * 60)
    twice = escalate(once, "htcondor", once.time_minutes * 60)
    assert (once.job_flavour, once.time_minutes) == ("microcentury", 60)
    assert (twice.job_flavour, twice.time_minutes) == ("longlunch", 120)
    # a unit that ran with a MaxRuntime above its flavour's (read from the job ad) skips flavours
    jump = escalate(Resources(job_flavour="espresso", time_minutes=200), "htcondor", 200 * 60)
    assert (jump.job_flavour, jump.time_minutes) == ("workday", 480)


def test_the_test_pools_scaled_limits_are_read_from_the_ad():
    # espresso is 5 s on the test pool: the next flavour's MaxRuntime (15 s there, 1 h on lxplus) is longer
    new = escalate(Resources(job_flavour="espresso"), "htcondor", 5)
    assert new.job_flavour == "microcentury" and new.time_minutes is None


@pytest.mark.parametrize("ran_min", [1, 2, 59, 120, 1441, MAX_TIME_MINUTES - 1])
def test_slurm_escalation_doubles_the_limit_it_ran_with(ran_min):
    # no --time asked: the partition default (read with sacct Timelimit) is what counts
    new = escalate(Resources(), "slurm", ran_min * 60)
    assert new.time_minutes > ran_min and new.time_minutes == min(2 * ran_min, MAX_TIME_MINUTES)


def test_slurm_escalation_uses_the_actual_limit_not_the_request():
    # the old code gave 120 min to a unit without --time whose partition default was 480
    assert escalate(Resources(), "slurm", 480 * 60).time_minutes == 960
    assert escalate(Resources(time_minutes=10), "slurm").time_minutes == 20  # local: the spec is exact
    assert escalate(Resources(), "slurm") is None  # the limit is unknown: no promise of more
    assert escalate(Resources(), "slurm", MAX_TIME_MINUTES * 60) is None
    assert escalate(Resources(job_flavour="nextweek"), "htcondor") is None


def test_grow_memory_doubles_up_to_a_cap():
    assert grow_memory(1000) == 2000
    assert grow_memory(None) == 4096  # nothing asked: the usual 2 GB default, doubled
    assert grow_memory(MEM_CAP_MB - 1) == MEM_CAP_MB
    assert grow_memory(MEM_CAP_MB) is None
    assert grow_memory(100, factor=1.5, cap_mb=1000) == 150


def status(n, failed=(), timed_out=(), oom=(), fanin=DONE):
    units = {i: TIMEOUT if i in timed_out else OOM if i in oom else FAIL if i in failed else DONE for i in range(n)}
    return RoundStatus(key="k", units=units, fanin=fanin)


@pytest.mark.parametrize("n,timed_out", [(10, range(10)), (10, range(5)), (100, range(40))])
def test_many_time_outs_escalate_instead_of_review_or_abort(n, timed_out):
    d = classify_failures(status(n, timed_out=set(timed_out)), RescuePolicy(), 0, "r")
    assert d.action == "rescue" and d.ratio == 0, d
    # with a plain failure above the review threshold the round still goes to review
    d = classify_failures(status(n, failed={n - 1}, timed_out=set(timed_out) - {n - 1}), RescuePolicy(
        auto_below=0.0, review_below=0.5), 0, "r")
    assert d.action == "review"


def test_oom_units_are_rerun_with_more_memory():
    spec = RoundSpec(key="k", label="k", workdir="/w/k", units=[WorkUnit(index=i, argv=["x"]) for i in range(4)],
                     resources=Resources(mem_mb=500))
    plan = rescue_plan(spec, status(4, oom={1}), scheduler="slurm", narrow=True, ran=RanWith(unit_mem_mb=500))
    assert [u.index for u in plan.spec.units] == [1] and plan.spec.resources.mem_mb == 1000
    assert any("ran out of memory (500 MB): memory -> 1000 MB" in n for n in plan.notes)
    with pytest.raises(CannotEscalate, match="cap"):
        rescue_plan(spec, status(4, oom={1}), scheduler="slurm", narrow=True, ran=RanWith(unit_mem_mb=MEM_CAP_MB))


def test_a_failed_fanin_alone_reruns_only_the_fanin():
    spec = RoundSpec(key="k", label="k", workdir="/w/k", units=[WorkUnit(index=i, argv=["u"]) for i in range(3, 35)],
                     fanin=["merge", "all"], resources=Resources(time_minutes=10),
                     fanin_resources=Resources(time_minutes=30, mem_mb=4000))
    ended = RoundStatus(key="k", units={i: DONE for i in range(3, 35)},
                        fanin=TaskStatus(state=JobState.FAILED, exit_code=1))
    d = classify_failures(ended, RescuePolicy(), 0, "r")
    assert d.action == "rescue" and d.ratio == 0 and "only the fan-in failed" in d.message  # not 1/32 of anything
    plan = rescue_plan(spec, ended, scheduler="slurm", narrow=True)
    # under an index no unit has (3-34): the record a re-attaching task reads tells it from unit 3
    assert plan.fanin_only and [(u.index, u.argv) for u in plan.spec.units] == [(35, ["merge", "all"])]
    assert plan.spec.fanin is None and plan.spec.resources == spec.fanin_resources  # the fan-in's resources
    # HTCondor: the same DAG again (its rescue DAG skips the done nodes)
    assert len(rescue_plan(spec, ended, scheduler="htcondor", narrow=False).spec.units) == 32
    # a fan-in killed at its limit gets more time; the units' resources are untouched
    timed = ended.model_copy(update={"fanin": TIMEOUT})
    plan = rescue_plan(spec, timed, scheduler="slurm", narrow=True, ran=RanWith(fanin_seconds=30 * 60))
    assert plan.spec.resources.time_minutes == 60 and plan.resources.time_minutes == 10
    # what the watch carries: the next rescue starts from the raised fan-in, not the request's
    watch = RoundWatch(site_conn_id="s", round_key="k", workdir="/w/k", fanout_id="1", indices="35", label="k",
                       **RoundWatch.raises(plan))
    assert watch.fanin_only and watch.raised(spec).fanin_resources.time_minutes == 60
    assert watch.raised(spec).resources.time_minutes == 10


def test_max_rescues_zero_means_no_rescue():
    d = classify_failures(status(100, failed={3}), RescuePolicy(max_rescues=0), 0, "r")
    assert d.action == "exhausted" and "max_rescues=0" in d.message


# ---------------------------------------------------------------------------- Slurm states

def test_slurm_out_of_memory_is_reported_as_such_not_as_signal_125():
    from batchsite.backends.slurm_parse import parse_sacct_lines

    # sacct -n -P -X -o JobID,State,ExitCode,Reason (the columns of the status script); 0:125 is
    # what Slurm 22.05 records for a task its cgroup killed out of memory
    st = parse_sacct_lines(["81_3|OUT_OF_MEMORY|0:125|None"]).tasks["81"][3]
    assert st.state is JobState.FAILED and st.native == "OUT_OF_MEMORY" and st.exit_code is None
    assert "out of memory" in st.reason and "signal" not in st.reason
    from batchsite.rounds import describe_failure, needs_more
    assert needs_more(st) and describe_failure(st).startswith("out of memory")


@pytest.mark.parametrize("reason", ["launch failed requeued held", "job requeued in held state", "JobHeldAdmin"])
def test_slurm_requeued_held_jobs_are_held(reason):
    """A failed launch requeued with priority 0 waits for `scontrol release`: HELD, so the hold
    policy (release after on_hold.after_seconds, then give up) applies, never WAITING forever."""
    from batchsite.backends.slurm_parse import parse_squeue_lines

    st = parse_squeue_lines([f"90_0|PENDING|{reason}|bs-x"]).tasks["90"][0]
    assert st.state is JobState.HELD and st.reason == reason
