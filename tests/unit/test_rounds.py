"""Round decisions without a site: failure classification, rescue specs, escalation."""

import pytest

from batchsite.config import local_site_config
from batchsite.model import JobState, Resources, RoundSpec, RoundStatus, TaskStatus, WorkUnit
from batchsite.rounds import (
    RescuePolicy, classify_failures, escalate, next_flavour, rescue_spec, spec_from_round_def,
)

DONE = TaskStatus(state=JobState.DONE, exit_code=0)
FAIL = TaskStatus(state=JobState.FAILED, exit_code=3)
TIMEOUT = TaskStatus(state=JobState.FAILED, native="TIMEOUT", timed_out=True)


def status(n, failed=(), timed_out=(), fanin=DONE):
    units = {i: (TIMEOUT if i in timed_out else FAIL if i in failed else DONE) for i in range(n)}
    return RoundStatus(key="k", units=units, fanin=fanin)


@pytest.mark.parametrize("n,failed,done,expect", [
    (100, [], 0, "success"),
    (100, [3], 0, "rescue"),        # 1% < 5%
    (100, [3], 2, "exhausted"),     # no rescues left
    (100, list(range(10)), 0, "review"),   # 10%: between 5% and 30%
    (10, [1, 2, 3], 0, "abort"),    # 30%
])
def test_wms2_failure_ratio_policy(n, failed, done, expect):
    d = classify_failures(status(n, failed), RescuePolicy(), done, "iter01")
    assert d.action == expect
    if expect == "review":
        assert "stopped for review" in d.message and "Clear the task" in d.message


def test_flavour_ladder():
    assert next_flavour("espresso") == "microcentury"
    assert next_flavour(None) == "microcentury"  # lxplus default is espresso
    assert next_flavour("testmatch") == "nextweek"
    assert next_flavour("nextweek") is None
    r = escalate(Resources(job_flavour="longlunch", time_minutes=30))
    assert r.job_flavour == "workday" and r.time_minutes == 60


def spec(n=8):
    return RoundSpec(key="bs-x-1", label="x", workdir="/w/bs-x-1",
                     units=[WorkUnit(index=i, argv=["true"]) for i in range(n)], fanin=["true"],
                     resources=Resources(job_flavour="espresso"))


def test_rescue_spec_narrows_and_escalates():
    s, notes = rescue_spec(spec(), status(8, failed=[2], timed_out=[5]), narrow=True)
    assert [u.index for u in s.units] == [2, 5]
    assert s.resources.job_flavour == "microcentury"
    assert any("JobFlavour espresso -> microcentury" in n for n in notes)
    # DAGMan's rescue DAG narrows by itself: keep every node
    s, _ = rescue_spec(spec(), status(8, failed=[2]), narrow=False)
    assert len(s.units) == 8 and s.resources.job_flavour == "espresso"


def test_spec_from_round_def_appends_key_and_applies_site_defaults(tmp_path):
    cfg = local_site_config(str(tmp_path))
    rd = {"units": [["echo", "a"], {"index": 7, "argv": ["echo", "b"], "name": "n7"}], "workdir": "rel/dir",
          "resources": {"mem_mb": 100, "partition": None}}
    s = spec_from_round_def(rd, key="bs-t-abc", cfg=cfg, site_path=lambda p: f"{tmp_path}/{p}")
    assert s.workdir == f"{tmp_path}/rel/dir/bs-t-abc"
    assert [u.index for u in s.units] == [0, 7] and s.resources.mem_mb == 100
    with pytest.raises(ValueError, match="units"):
        spec_from_round_def({"units": []}, key="bs-t-abc", cfg=cfg, site_path=str)


def test_maxidle_reaches_condor_submit_dag(tmp_path):
    from batchsite.backends.htcondor import render_submit_script

    cfg = local_site_config(str(tmp_path))
    s = spec_from_round_def({"units": [["true"]], "submit_options": {"maxidle": 10}}, key="bs-t-1", cfg=cfg,
                            site_path=lambda p: f"{tmp_path}/{p}")
    assert "condor_submit_dag -batch-name bs-t-1 -maxidle 10 bs-t-1.dag" in render_submit_script(s)
