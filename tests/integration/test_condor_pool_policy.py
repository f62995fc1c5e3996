"""The lxplus-like policy of the real HTCondor test pool (tests/site/site.sh start-condor).

lxplus maps ``+JobFlavour`` to a wall-time limit (``MaxRuntime`` seconds; espresso when no
flavour is given; an explicit ``+MaxRuntime`` wins) and ``SYSTEM_PERIODIC_REMOVE`` removes a
job that runs longer ("Job removed by SYSTEM_PERIODIC_REMOVE due to wall time exceeded allowed
max."). The test pool does the same with the flavour limits scaled by BATCHSITE_FLAVOUR_SCALE
(default 5/1200: espresso 5 s, microcentury 15 s). Real jobs, submitted by bsite over real SSH.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid

import pytest

from ..conftest import SITE_SH, STATE, on_site

ESPRESSO_S = 5  # 20 min x 5/1200
MICROCENTURY_S = 15  # 1 h x 5/1200
ATTRS = ("ClusterId,ProcId,JobStatus,LastJobStatus,JobFlavour,MaxRuntime,RemoveReason,HoldReason,"
         "JobCurrentStartDate,EnteredCurrentStatus,BatchsiteCase")


def _start_condor(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SITE_SH), "start-condor"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _fail(what: str, r: subprocess.CompletedProcess) -> None:
    pytest.fail(f"{what} (exit {r.returncode}):\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}",
                pytrace=False)


@pytest.fixture(scope="module")
def pool(site_info):
    r = _start_condor()
    if r.returncode != 0:
        _fail("the HTCondor test pool (tests/site/site.sh start-condor) could not start", r)
    return site_info


@pytest.fixture
def workdir(pool):
    """A fresh directory under /home/bsite (DAGs/logs under /tmp are not lxplus-like)."""
    tag = uuid.uuid4().hex[:12]
    d = f"/home/bsite/policy-test/{tag}"
    r = on_site(pool, f"mkdir -p {d}")
    assert r.returncode == 0, r.stderr
    yield tag, d
    on_site(pool, f"condor_rm -constraint {shlex.quote(f'BatchsiteTag == {json.dumps(tag)}')} >/dev/null 2>&1;"
                  f" rm -rf {d}; rmdir /home/bsite/policy-test 2>/dev/null")


def _submit(info: dict, d: str, tag: str, case: str, extra: str, executable: str = "/bin/sleep",
            arguments: str = "30") -> int:
    sub = (f"universe = vanilla\nexecutable = {executable}\narguments = {arguments}\n"
           f"log = {case}.log\noutput = {case}.out\nerror = {case}.err\nrequest_memory = 128MB\n"
           f'+BatchsiteTag = "{tag}"\n+BatchsiteCase = "{case}"\n{extra}queue\n')
    r = on_site(info, f"cd {d} && printf %s {shlex.quote(sub)} > {case}.sub && condor_submit -terse {case}.sub")
    assert r.returncode == 0, f"condor_submit {case}: {r.stdout}{r.stderr}"
    return int(r.stdout.split(".")[0])


def _ads(info: dict, tag: str) -> dict[str, dict]:
    """Job ads of this test by BatchsiteCase: the queue, then the history (terminal, wins)."""
    c = shlex.quote(f'BatchsiteTag == "{tag}"')
    r = on_site(info, f"condor_q -allusers -constraint {c} -json -attributes {ATTRS}; echo '#####';"
                      f" condor_history -constraint {c} -json -attributes {ATTRS}")
    assert r.returncode == 0, r.stderr
    out: dict[str, dict] = {}
    for part in r.stdout.split("#####"):
        part = part.strip()
        for ad in json.loads(part) if part else []:
            out[ad["BatchsiteCase"]] = ad
    return out


def _wait(info: dict, tag: str, cond, what: str, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        ads = _ads(info, tag)
        if cond(ads):
            return ads
        if time.monotonic() > deadline:
            pytest.fail(f"timeout ({timeout} s) waiting for {what}; ads: {json.dumps(ads, indent=1)}", pytrace=False)
        time.sleep(0.5)


def _removed(ads: dict[str, dict], case: str) -> bool:
    ad = ads.get(case, {})
    return ad.get("JobStatus") == 3 and "RemoveReason" in ad


def test_flavour_limits_remove_running_jobs(pool, workdir):
    tag, d = workdir
    t0 = time.monotonic()
    cases = {
        "espresso": '+JobFlavour = "espresso"\n',
        "microcentury": '+JobFlavour = "microcentury"\n',
        "noflavour": "",
        "maxruntime": "+MaxRuntime = 100\n",
    }
    for case, extra in cases.items():
        _submit(pool, d, tag, case, extra)
    t_sub = time.monotonic() - t0

    # the schedd's transform: flavour -> scaled MaxRuntime; none -> espresso; explicit kept
    ads = _wait(pool, tag, lambda a: len(a) == 4, "the 4 jobs in the queue", 20)
    assert (ads["espresso"]["JobFlavour"], ads["espresso"]["MaxRuntime"]) == ("espresso", ESPRESSO_S)
    assert (ads["microcentury"]["JobFlavour"], ads["microcentury"]["MaxRuntime"]) == ("microcentury", MICROCENTURY_S)
    assert (ads["noflavour"]["JobFlavour"], ads["noflavour"]["MaxRuntime"]) == ("espresso", ESPRESSO_S)
    assert ads["maxruntime"]["MaxRuntime"] == 100 and "JobFlavour" not in ads["maxruntime"], ads["maxruntime"]

    # espresso and no-flavour: removed (JobStatus 3) while running, ~5 s after they started
    ads = _wait(pool, tag, lambda a: all(_removed(a, c) for c in ("espresso", "noflavour")),
                "the espresso jobs to be removed", 40)
    t_removed = time.monotonic() - t0
    for case in ("espresso", "noflavour"):
        ad = ads[case]
        ran = ad["EnteredCurrentStatus"] - ad["JobCurrentStartDate"]
        assert ad["LastJobStatus"] == 2, ad
        assert ESPRESSO_S <= ran <= ESPRESSO_S + 4, f"{case}: removed after {ran} s of running: {ad}"
        reason = ad["RemoveReason"]
        assert reason == ("Job removed by SYSTEM_PERIODIC_REMOVE due to wall time exceeded allowed max. "
                          f"(MaxRuntime {ESPRESSO_S} s, JobFlavour espresso)"), reason
    # the user log has the abort event with the reason (what lxplus users grep for)
    r = on_site(pool, f"cat {d}/espresso.log")
    assert "Job was aborted" in r.stdout and "SYSTEM_PERIODIC_REMOVE due to wall time exceeded" in r.stdout, r.stdout

    # microcentury (15 s) and +MaxRuntime = 100 outlive 8 s of running
    long = ("microcentury", "maxruntime")

    def settled(a: dict) -> bool:
        if any(a.get(c, {}).get("JobStatus", 1) not in (1, 2) for c in long):
            return True  # removed/held/completed too early: fails below
        return all(a.get(c, {}).get("JobStatus") == 2
                   and time.time() - a[c].get("JobCurrentStartDate", time.time()) >= 8.5 for c in long)
    ads = _wait(pool, tag, settled, "the microcentury / MaxRuntime=100 jobs to run 8.5 s", 30)
    for case in ("microcentury", "maxruntime"):
        assert ads[case]["JobStatus"] == 2, f"{case} did not survive 8 s: {ads[case]}"
    r = on_site(pool, f"condor_rm -constraint {shlex.quote(f'BatchsiteTag == {json.dumps(tag)}')}")
    assert r.returncode == 0, r.stdout + r.stderr
    ads = _wait(pool, tag, lambda a: all(_removed(a, c) for c in long), "condor_rm", 20)
    for case in ("microcentury", "maxruntime"):
        assert ads[case]["RemoveReason"].startswith("via condor_rm"), ads[case]
    print(f"\nsubmit 4 jobs {t_sub:.1f} s; espresso removed at {t_removed:.1f} s; total {time.monotonic() - t0:.1f} s;"
          f" espresso reason: {ads['espresso']['RemoveReason']!r}; rm reason: {ads['microcentury']['RemoveReason']!r}")


def test_start_condor_reconfigures_on_policy_change(pool, workdir):
    """Changed policy settings -> condor_reconfig of the running pool (same condor_master), once;
    the held-job removal (BATCHSITE_CONDOR_HELD_REMOVE_AFTER) is part of the same policy."""
    tag, d = workdir
    changed = {"BATCHSITE_FLAVOUR_SCALE": "10/1200", "BATCHSITE_CONDOR_HELD_REMOVE_AFTER": "2"}

    def master_pid() -> str:
        return (STATE / "pids" / "condor_master.pid").read_text().split()[0]

    pid = master_pid()
    try:
        r = _start_condor(**changed)
        if r.returncode != 0:
            _fail("start-condor with " + " ".join(f"{k}={v}" for k, v in changed.items()), r)
        assert "condor_reconfig" in r.stdout and master_pid() == pid, r.stdout
        r2 = _start_condor(**changed)  # idempotent: nothing to do
        assert r2.returncode == 0 and "condor_reconfig" not in r2.stdout and "restart" not in r2.stdout, r2.stdout
        # a new job gets the new limit; held at submission, it is removed after 2 s held
        _submit(pool, d, tag, "scaled", '+JobFlavour = "espresso"\nhold = true\n', executable="/bin/true", arguments="")
        ad = _ads(pool, tag)["scaled"]
        assert (ad["JobStatus"], ad["MaxRuntime"]) == (5, 10), ad
        hold_reason = ad.get("HoldReason")
        ad = _wait(pool, tag, lambda a: _removed(a, "scaled"), "the held job to be removed", 20)["scaled"]
        assert ad["LastJobStatus"] == 5 and ad["RemoveReason"] == "Job was held for more than 2 seconds", ad
        print(f"\nheld job: HoldReason {hold_reason!r}, RemoveReason {ad['RemoveReason']!r}")
    finally:
        r = _start_condor()
    if r.returncode != 0:
        _fail("start-condor back to the default policy", r)
    assert "condor_reconfig" in r.stdout and master_pid() == pid, r.stdout
    r = on_site(pool, "condor_config_val -schedd BATCHSITE_FLAVOUR_SCALE SYSTEM_PERIODIC_REMOVE")
    assert r.stdout.splitlines()[0] == "5/1200" and "> 86400)" in r.stdout, r.stdout + r.stderr
