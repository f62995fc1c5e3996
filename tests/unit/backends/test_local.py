"""The local backend with real processes: the runner (include/localsched.py) under
/usr/bin/python3, driven through ``Site`` + ``LocalTransport`` exactly as a task drives it.

No mocks. Every test leaves no process behind (the ``site`` fixture cancels what it saw).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from batchsite.backends import local
from batchsite.backends.local import LocalBackend
from batchsite.backends.local_parse import parse_status, parse_submit, split_job_id
from batchsite.model import JobState, RoundSpec, Submission, WorkUnit
from batchsite.polling import apply_vanish_grace
from batchsite.site import Site, tar_files
from batchsite.transport.local import LocalTransport

#: the runner's interpreter: Debian's python3 as on the real sites (override to try others)
PY = os.environ.get("BATCHSITE_TEST_LOCAL_PYTHON") or (
    "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3")


# ---------------------------------------------------------------------------- helpers

class Tracked(Site):
    """A Site that remembers its submissions so the fixture can cancel leftovers."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[Submission] = []

    def submit(self, spec):
        sub = super().submit(spec)
        self.seen.append(sub)
        return sub


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    s = Tracked("laptop", LocalTransport(), LocalBackend(), str(root))
    yield s
    if s.seen:
        s.cancel(s.seen)


def make_spec(site: Site, key: str, argvs: list[list[str]], **kw) -> RoundSpec:
    base = dict(
        key=key, label=key, workdir=site.path(key),
        units=[WorkUnit(index=i, argv=a) for i, a in enumerate(argvs)],
        env={"BATCHSITE_PYTHON": PY},
    )
    base.update(kw)
    return RoundSpec(**base)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def wait_for(site: Site, sub: Submission, pred, timeout: float = 4.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        st = site.status([sub])[sub.key]
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s; last status: {st!r}")
        time.sleep(every)


def read_state(sub: Submission, name) -> str:
    return Path(sub.workdir, "state", str(name)).read_text().strip()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, pgid) of a process, None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def live(pid: int) -> bool:
    """Exists and is not a zombie (orphans are never reaped in some containers)."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def live_in_groups(pgids: set[int]) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[1] in pgids and st[0] not in ("Z", "X"):
                out.append(int(d))
    return out


def runner_pids(workdir: str) -> list[int]:
    """Live processes whose command line is this round's runner."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"localsched.py run {workdir}" in cmd and live(int(d)):
            out.append(int(d))
    return out


# ---------------------------------------------------------------------------- rendering / parsing

def test_render_round_ships_the_runner_and_the_slurm_unit_script(tmp_path):
    spec = RoundSpec(key="bs-r", label="r", workdir=str(tmp_path / "w"), throttle=3,
                     units=[WorkUnit(index=4, argv=["true"]), WorkUnit(index=9, argv=["false"])],
                     fanin=["true"])
    r = LocalBackend().render_round(spec)
    assert set(r.files) == {"unit.sh", "units.tab", "fanin.sh", "local.json", "localsched.py"}
    assert 'IDX="${BATCHSITE_INDEX}"' in r.files["unit.sh"]
    assert r.files["localsched.py"] == Path(local.__file__).parents[3].joinpath(
        "include", "localsched.py").read_text()
    assert '"throttle": 3' in r.files["local.json"] and '"indices": [\n  4,\n  9\n ]' in r.files["local.json"]
    assert {"unit.sh", "fanin.sh", "localsched.py"} <= r.executable
    assert "python3" in r.submit_script and "nohup" in r.submit_script
    # no fan-in: no fanin.sh
    r2 = LocalBackend().render_round(spec.model_copy(update={"fanin": None}))
    assert "fanin.sh" not in r2.files


def test_parse_submit():
    assert parse_submit("local=node-1.example.org:4242\n").fanout_id == "node-1.example.org:4242"
    assert parse_submit("noise\nlocal=a:1\nlocal=b:2").fanout_id == "b:2"
    assert split_job_id("node-1:77") == ("node-1", 77)
    with pytest.raises(ValueError):
        parse_submit("sbatch: error")


def _sub(key="bs-p", wd="/w/p", indices=(0, 1)):
    return Submission(key=key, scheduler="local", workdir=wd, indices=list(indices), fanout_id="h:1")


def test_parse_status_runner_on_another_host_is_unknown_not_vanished():
    text = "\n".join([
        "@@BATCHSITE local bs-p", "host login2", "runner 123 login1", "alive elsewhere", "has-fanin",
        "state 0 running 200", "state 1 queued", "state fanin waiting",
        "@@BATCHSITE exit bs-p",
    ])
    st = parse_status(text, [_sub()])["bs-p"]
    assert not st.scheduler_ok and "login1" in st.note
    assert {s.state for s in st.units.values()} == {JobState.UNKNOWN}
    assert st.fanin.state is JobState.UNKNOWN
    assert not st.finished


def test_parse_status_missing_section_is_not_evidence():
    st = parse_status("", [_sub()])["bs-p"]
    assert not st.scheduler_ok
    assert all(s.state is JobState.UNKNOWN for s in st.units.values())


def test_parse_status_dead_runner():
    text = "\n".join([
        "@@BATCHSITE local bs-p", "host h", "runner 123 h", "alive no", "has-fanin",
        "state 0 running 200", "job-alive 0 no", "state 1 queued", "state fanin waiting",
        "@@BATCHSITE exit bs-p",
    ])
    st = parse_status(text, [_sub()])["bs-p"]
    assert st.units[0].state is JobState.VANISHED
    assert st.units[1].state is JobState.FAILED and st.units[1].native == "RUNNER-LOST"
    assert st.fanin.state is JobState.FAILED and st.fanin.native == "RUNNER-LOST"
    # with an exit file the unit's own word wins
    st = parse_status(text + "\n0 0\n", [_sub()])["bs-p"]
    assert st.units[0].state is JobState.DONE


# ---------------------------------------------------------------------------- real rounds

def test_throttle_and_fanin_after_all_units(site):
    units = [sh(f'date +%s%N > t/{i}.start; sleep 0.3; echo {i} > out/{i}; date +%s%N > t/{i}.end')
             for i in range(8)]
    fanin = sh("date +%s%N > t/fanin.start; ls out | sort -n > fanin.txt")
    spec = make_spec(site, "bs-throttle", units, throttle=2, fanin=fanin)
    Path(spec.workdir, "t").mkdir(parents=True)
    Path(spec.workdir, "out").mkdir()
    sub = site.submit(spec)
    assert not sub.adopted and sub.fanout_id.endswith(f":{read_state(sub, 'runner.pid').split()[0]}")
    st = wait_for(site, sub, lambda s: s.finished)
    assert st.succeeded and st.fanin.state is JobState.DONE
    assert all(s.exit_code == 0 for s in st.units.values())

    t = Path(spec.workdir, "t")
    spans = [(int((t / f"{i}.start").read_text()), int((t / f"{i}.end").read_text())) for i in range(8)]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    assert peak == 2, spans  # never more than the throttle, and the throttle was used
    assert int((t / "fanin.start").read_text()) >= max(b for _, b in spans)
    assert Path(spec.workdir, "fanin.txt").read_text().split() == [str(i) for i in range(8)]
    assert read_state(sub, "runner.done") == "finished"
    assert Path(spec.workdir, "logs", "bs-throttle_3.out").exists()


def test_failed_units_fanin_never_runs(site):
    units = [sh(f"echo {i} > out{i}; exit 3") if i in (2, 5) else sh(f"echo {i} > out{i}") for i in range(8)]
    spec = make_spec(site, "bs-fail", units, throttle=4, fanin=sh("touch fanin-ran"))
    sub = site.submit(spec)
    st = wait_for(site, sub, lambda s: s.finished)
    assert st.failed_indices == [2, 5]
    assert {i for i, s in st.units.items() if s.state is JobState.DONE} == {0, 1, 3, 4, 6, 7}
    assert st.units[2].exit_code == 3 and st.units[5].exit_code == 3
    assert st.fanin.reason == "DependencyNeverSatisfied" and st.fanin.state is not JobState.DONE
    assert not st.succeeded
    # the runner exits without ever starting the fan-in
    deadline = time.monotonic() + 3
    while not Path(sub.workdir, "state", "runner.done").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert read_state(sub, "fanin") == "dependency-never-satisfied"
    assert not Path(sub.workdir, "fanin-ran").exists()
    assert not Path(sub.workdir, "status", "fanin.exit").exists()
    assert not Path(sub.workdir, "logs", "bs-fail_fanin.out").exists()


def test_leftovers_of_a_finished_unit_are_killed(site):
    """As a batch system ends every process of a finished job: a unit's background
    process does not outlive the unit."""
    spec = make_spec(site, "bs-leftover", [sh("sleep 30 & echo $! > bg.pid")])
    sub = site.submit(spec)
    st = wait_for(site, sub, lambda s: s.finished)
    assert st.succeeded
    bg = int(Path(spec.workdir, "bg.pid").read_text())
    deadline = time.monotonic() + 2
    while live(bg):
        assert time.monotonic() < deadline, "the unit's background process survived it"
        time.sleep(0.02)


def test_reattach_starts_one_runner(site, tmp_path):
    spec = make_spec(site, "bs-again", [sh("sleep 0.5")] * 3, throttle=1)
    first = site.submit(spec)
    second = site.submit(spec)
    # another task process: a new transport and site on the same remote root
    other = Site("laptop", LocalTransport(), LocalBackend(), site.remote_root).submit(spec)
    assert not first.adopted and second.adopted and other.adopted
    assert first.fanout_id == second.fanout_id == other.fanout_id
    assert len(runner_pids(spec.workdir)) == 1
    log = Path(spec.workdir, "logs", "localsched.log").read_text()
    assert log.count("round bs-again: 3 units") == 1
    st = wait_for(site, second, lambda s: s.finished)
    assert st.succeeded


def test_cancel_kills_every_process_of_the_round(site):
    units = [sh("sleep 30 & wait")] * 4  # a grandchild in the unit's process group
    spec = make_spec(site, "bs-cancel", units, throttle=2, fanin=sh("touch fanin-ran"))
    sub = site.submit(spec)
    wait_for(site, sub, lambda s: s.counts()["running"] == 2)
    runner = int(read_state(sub, "runner.pid").split()[0])
    pgids = {int(read_state(sub, i).split()[1]) for i in range(4) if read_state(sub, i).startswith("running")}
    assert len(pgids) == 2 and live_in_groups(pgids)
    t0 = time.monotonic()
    out = site.cancel([sub])
    assert "bs-cancel: cancelled" in out
    assert time.monotonic() - t0 < 4
    assert not live(runner)
    assert live_in_groups(pgids) == []
    st = site.status([sub])[sub.key]
    assert all(s.state is JobState.FAILED and s.native == "CANCELLED" for s in st.units.values())
    assert st.fanin.state is JobState.FAILED and st.fanin.native == "CANCELLED"
    assert st.finished and not st.succeeded
    assert not Path(sub.workdir, "fanin-ran").exists()
    assert read_state(sub, "runner.done") == "cancelled"
    assert site.cancel([sub])  # cancelling again is harmless


def _sigkill_runner(sub: Submission) -> int:
    pid = int(read_state(sub, "runner.pid").split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while live(pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return pid


def test_sigkilled_runner_and_unit_never_look_running(site):
    spec = make_spec(site, "bs-killed", [sh("sleep 30")] * 4, throttle=1, fanin=sh("true"))
    sub = site.submit(spec)
    wait_for(site, sub, lambda s: s.units[0].state is JobState.RUNNING)
    _sigkill_runner(sub)
    unit_pgid = int(read_state(sub, 0).split()[1])
    os.killpg(unit_pgid, signal.SIGKILL)  # the machine "lost" the unit too
    st = wait_for(site, sub, lambda s: s.units[0].state is not JobState.RUNNING, timeout=2)
    assert st.units[0].state is JobState.VANISHED
    assert all(st.units[i].state is JobState.FAILED and st.units[i].native == "RUNNER-LOST" for i in (1, 2, 3))
    assert st.fanin.state is JobState.FAILED
    assert "gone" in st.note
    settled = apply_vanish_grace(st, {}, time.monotonic(), 0)
    assert settled.units[0].state is JobState.FAILED and settled.finished


def test_sigkilled_runner_orphan_unit_then_cancel(site):
    spec = make_spec(site, "bs-orphan", [sh("sleep 1; echo done > out0"), sh("sleep 30"), sh("true")],
                     throttle=2)
    sub = site.submit(spec)
    wait_for(site, sub, lambda s: s.counts()["running"] == 2)
    _sigkill_runner(sub)
    st = site.status([sub])[sub.key]
    # the orphaned units still run: RUNNING (because their own processes live), index 2 is lost
    assert st.units[0].state is JobState.RUNNING and st.units[1].state is JobState.RUNNING
    assert st.units[2].state is JobState.FAILED and st.units[2].native == "RUNNER-LOST"
    st = wait_for(site, sub, lambda s: s.units[0].state is JobState.DONE, timeout=3)
    assert st.units[1].state is JobState.RUNNING
    orphan = int(read_state(sub, 1).split()[1])
    out = site.cancel([sub])  # no runner: the cancel script kills the recorded groups itself
    assert "bs-orphan: cancelled" in out
    assert live_in_groups({orphan}) == []
    st = site.status([sub])[sub.key]
    assert st.units[0].state is JobState.DONE
    assert st.units[1].state is JobState.FAILED and st.units[1].native == "CANCELLED"
    assert st.finished and not any(s.state is JobState.RUNNING for s in st.units.values())


def test_one_status_command_for_three_rounds(site):
    subs = [site.submit(make_spec(site, f"bs-multi-{k}", [sh(f"exit {k}"), sh("true")], fanin=sh("true")))
            for k in range(3)]
    site.probe()  # once per connection; not part of a poll
    deadline = time.monotonic() + 4
    while True:
        sts = site.status(subs)
        if all(s.finished for s in sts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    before = site.transport.counters.commands_run
    sts = site.status(subs)
    assert site.transport.counters.commands_run == before + 1
    assert set(sts) == {s.key for s in subs}
    assert sts["bs-multi-0"].succeeded
    assert sts["bs-multi-1"].failed_indices == [0] and sts["bs-multi-1"].units[0].exit_code == 1
    assert sts["bs-multi-2"].units[0].exit_code == 2
    assert sts["bs-multi-2"].fanin.reason == "DependencyNeverSatisfied"


def test_time_limit_is_a_timeout(tmp_path):
    """Resources.time_minutes becomes local.json's time_limit_s; a shortened one shows the
    SIGTERM -> TIMEOUT path without waiting a minute."""
    wd = tmp_path / "w"
    spec = RoundSpec(key="bs-tl", label="tl", workdir=str(wd), env={"BATCHSITE_PYTHON": PY},
                     resources={"time_minutes": 1},
                     units=[WorkUnit(index=0, argv=sh("sleep 30")), WorkUnit(index=1, argv=["true"])])
    backend = LocalBackend()
    r = backend.render_round(spec)
    files = dict(r.files)
    assert '"time_limit_s": 60' in files["local.json"]
    files["local.json"] = files["local.json"].replace('"time_limit_s": 60', '"time_limit_s": 0.4')
    files["submit.sh"] = r.submit_script
    wd.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(wd)], input=tar_files(files, r.executable), check=True)
    p = subprocess.run(["sh", "./submit.sh"], cwd=wd, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    ids = backend.parse_submit(p.stdout)
    sub = Submission(key=spec.key, scheduler="local", workdir=str(wd), indices=[0, 1], fanout_id=ids.fanout_id)
    site = Site("laptop", LocalTransport(), backend, str(tmp_path))
    st = wait_for(site, sub, lambda s: s.finished, timeout=4)
    assert st.units[1].state is JobState.DONE
    assert st.units[0].state is JobState.FAILED and st.units[0].timed_out and st.units[0].native == "TIMEOUT"


def test_submit_fails_cleanly_without_python(site):
    spec = make_spec(site, "bs-nopy", [["true"]], env={"BATCHSITE_PYTHON": "/nonexistent/python3"})
    with pytest.raises(Exception, match="python"):
        site.submit(spec)
    assert not Path(spec.workdir, ".batchsite", "submitted").exists()
    # the submit-once protocol keeps the lock after a failed submit.sh and says why in
    # .batchsite/failed (was: the lock removed); no runner was started, so the
    # next Site.submit may retry (tests/unit/test_site.py)
    assert Path(spec.workdir, ".batchsite", "lock").is_dir()
    assert "python" in Path(spec.workdir, ".batchsite", "failed").read_text()
    assert not Path(spec.workdir, "state", "runner.lock").exists()
