"""Round decisions without a site: failure classification, rescue specs, escalation."""

import pytest

from batchsite.config import local_site_config
from batchsite.model import JobState, Resources, RoundSpec, RoundStatus, TaskStatus, WorkUnit
from batchsite.rounds import (
    RescuePolicy, ResourceRequest, RoundRequest, RoundWatch, classify_failures, escalate, next_flavour, rescue_plan,
    spec_from_request,
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
        # no promise that cannot work ("clear the task to rescue" re-adopted the same submission)
        assert "needs a review" in d.message and "clear" not in d.message.lower()


def test_flavour_ladder():
    assert next_flavour("espresso") == "microcentury"
    assert next_flavour(None) == "microcentury"  # lxplus default is espresso
    assert next_flavour("testmatch") == "nextweek"
    assert next_flavour("nextweek") is None
    r = escalate(Resources(job_flavour="longlunch"), "htcondor")
    assert r.job_flavour == "workday" and r.time_minutes is None


def spec(n=8):
    return RoundSpec(key="bs-x-1", label="x", workdir="/w/bs-x-1",
                     units=[WorkUnit(index=i, argv=["true"]) for i in range(n)], fanin=["true"],
                     resources=Resources(job_flavour="espresso"))


def test_rescue_plan_narrows_and_escalates():
    plan = rescue_plan(spec(), status(8, failed=[2], timed_out=[5]), scheduler="htcondor", narrow=True)
    assert [u.index for u in plan.spec.units] == [2, 5]
    assert plan.spec.resources.job_flavour == "microcentury"
    assert any("JobFlavour espresso -> microcentury" in n for n in plan.notes)
    # DAGMan's rescue DAG narrows by itself: keep every node
    plan = rescue_plan(spec(), status(8, failed=[2]), scheduler="htcondor", narrow=False)
    assert len(plan.spec.units) == 8 and plan.spec.resources.job_flavour == "espresso"


def test_spec_from_request_appends_key_and_applies_site_defaults(tmp_path):
    cfg = local_site_config(str(tmp_path)).model_copy(update={"partition": "site-part", "mem_mb": 50})
    request = RoundRequest.model_validate({
        "units": [["echo", "a"], {"index": 7, "argv": ["echo", "b"], "name": "n7"}], "workdir": "rel/dir",
        "resources": {"mem_mb": 100, "partition": None}})
    s = spec_from_request(request, key="bs-t-abc", cfg=cfg, site_path=lambda p: f"{tmp_path}/{p}")
    assert s.workdir == f"{tmp_path}/rel/dir/bs-t-abc"
    assert [u.index for u in s.units] == [0, 7] and [u.name for u in s.units] == [None, "n7"]
    assert s.resources.mem_mb == 100 and s.resources.partition == "site-part"  # None = not set: the site's
    assert s.label == "bs-t-abc" and s.env["BATCHSITE_PYTHON"] == cfg.python
    with pytest.raises(ValueError, match="units"):
        spec_from_request(RoundRequest(units=[]), key="bs-t-abc", cfg=cfg, site_path=str)


def test_precedence_request_over_constructor_over_site_default(tmp_path):
    """The rule written in RoundRequest's docstring, field by field."""
    cfg = local_site_config(str(tmp_path)).model_copy(update={"partition": "site-part", "time_minutes": 5,
                                                              "mem_mb": 10})
    constructor = RoundRequest(units=[["ctor"]], fanin=["ctor-fanin"], label="ctor", throttle=2,
                               resources=ResourceRequest(time_minutes=30, mem_mb=20),
                               rescue=RescuePolicy(max_rescues=1),
                               fail_on_failure=True)
    asked = RoundRequest(units=[["asked"], ["asked"]], throttle=None, resources=ResourceRequest(mem_mb=99),
                         rescue=RescuePolicy(max_rescues=4), fail_on_failure=False)
    merged = asked.over(constructor)
    assert [u.argv for u in merged.units] == [["asked"], ["asked"]]  # set in the request: wins, whole
    assert merged.fanin == ["ctor-fanin"] and merged.label == "ctor" and merged.throttle == 2  # unset: constructor
    assert merged.rescue.max_rescues == 4 and merged.fail_on_failure is False
    spec = spec_from_request(merged, key="bs-t-1", cfg=cfg, site_path=lambda p: f"{tmp_path}/{p}")
    # resources key by key: request (mem) > constructor (time) > site (partition) > built-in (cpus)
    assert (spec.resources.mem_mb, spec.resources.time_minutes, spec.resources.partition, spec.resources.cpus) \
        == (99, 30, "site-part", 1)
    # nothing set anywhere: the built-in defaults
    bare = spec_from_request(RoundRequest(units=[["x"]]), key="bs-t-2", cfg=cfg, site_path=lambda p: f"{tmp_path}/{p}")
    assert bare.workdir == f"{tmp_path}/.batchsite/rounds/bs-t-2" and bare.throttle is None and bare.retries == 0


def test_round_request_crosses_xcom_as_json():
    request = RoundRequest(units=[["a"], ["b"]], resources=ResourceRequest(job_flavour="espresso"),
                           submit_options={"maxidle": None}, collect={"summary": "/r/s.json"})
    dumped = request.model_dump(mode="json")
    assert RoundRequest.model_validate(dumped) == request
    with pytest.raises(ValueError, match="unknwon"):
        RoundRequest.model_validate({**dumped, "unknwon": 1})  # a typo is refused, never ignored


def test_round_watch_is_flat_and_rebuilds_the_submission():
    from batchsite.model import Submission

    sub = Submission(key="bs-k-1", scheduler="slurm", workdir="/w/bs-k-1", indices=[0, 1, 2, 3, 7, 9, 10],
                     fanout_id="123", fanin_id="124")
    watch = RoundWatch.of(sub, site_conn_id="s", label="x", rescues=1)
    assert watch.indices == "0-3,7,9-10"
    assert watch.submission("slurm") == sub
    assert watch.moved_to(sub.model_copy(update={"fanout_id": "200", "indices": [7]})).indices == "7"


def test_maxidle_reaches_condor_submit_dag(tmp_path):
    from batchsite.backends.htcondor import render_submit_script

    cfg = local_site_config(str(tmp_path))
    request = RoundRequest(units=[["true"]], submit_options={"maxidle": 10, "maxjobs": None})
    s = spec_from_request(request, key="bs-t-1", cfg=cfg, site_path=lambda p: f"{tmp_path}/{p}")
    # the rendered submit.sh sets its inputs as variables after its header (shellscripts.with_values)
    script = render_submit_script(s)
    assert "options='-maxidle 10'" in script.splitlines() and "-maxjobs" not in script.split("options=", 1)[1]
