"""The submit-once protocol of ``Site`` (site.py), for real: ``LocalTransport`` and the
local backend in a tmp remote root, the remote snippets run by ``sh``, the runner under
python3. No mocks and no patching; where a path needs a backend that can search by name,
a small subclass of the local backend implements the optional find API with a real script.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from batchsite.backends.base import SubmitIds
from batchsite.backends.local import LocalBackend
from batchsite.backends.local_parse import parse_submit
from batchsite.model import JobState, RoundSpec, RoundStatus, Submission, TaskStatus, WorkUnit
from batchsite.site import LOCK_FAILED, LOCK_STALE, RoundSpecMismatchError, Site, SiteCommandError, spec_hash
from batchsite.transport.local import LocalTransport

PY = os.environ.get("BATCHSITE_TEST_LOCAL_PYTHON") or (
    "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3")


class Tracked(Site):
    """Remembers its submissions so the fixture can cancel what is left."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[Submission] = []

    def submit(self, spec):
        sub = super().submit(spec)
        self.seen.append(sub)
        return sub


class FindingLocal(LocalBackend):
    """The local backend plus a search "by name": the runner the round's state names.
    Exercises the find -> record / find -> clear paths of ``Site.submit``."""

    def render_find_script(self, spec: RoundSpec) -> str:
        pid = f"{spec.workdir}/state/runner.pid"
        return f"if [ -s '{pid}' ]; then read -r p h < '{pid}'; echo \"local=$h:$p\"; else echo none; fi\n"

    def parse_find(self, text: str, spec: RoundSpec) -> SubmitIds | None:
        return None if text.strip() == "none" else parse_submit(text)

    def format_submit(self, ids: SubmitIds) -> str:
        return f"local={ids.fanout_id}"

    def diagnose(self, text: str) -> str | None:
        return "install python3 or set BATCHSITE_PYTHON" if "no /nonexistent/python3" in text else None


def make_site(root: Path, backend=None) -> Tracked:
    return Tracked("laptop", LocalTransport(), backend or LocalBackend(), str(root))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    sites: list[Tracked] = []
    yield r, sites
    for s in sites:
        if s.seen:
            s.cancel(s.seen)


def new_site(root_fx, backend=None) -> Tracked:
    r, sites = root_fx
    s = make_site(r, backend)
    sites.append(s)
    return s


def make_spec(site: Site, key: str, argvs: list[list[str]], python: str = PY) -> RoundSpec:
    return RoundSpec(key=key, label=key, workdir=site.path(key),
                     units=[WorkUnit(index=i, argv=a) for i, a in enumerate(argvs)],
                     env={"BATCHSITE_PYTHON": python})


def meta(spec: RoundSpec) -> Path:
    return Path(spec.workdir, ".batchsite")


def runner_pids(workdir: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"localsched.py run {workdir}" in cmd and state not in ("Z", "X"):
            out.append(int(d))
    return out


def runner_starts(spec: RoundSpec) -> int:
    log = Path(spec.workdir, "logs", "localsched.log")
    return log.read_text().count(f"round {spec.key}: ") if log.exists() else 0


def wait_finished(site: Site, sub: Submission, timeout: float = 10.0) -> RoundStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = site.status([sub])[sub.key]
        if st.finished:
            return st
        assert time.monotonic() < deadline, f"not finished in {timeout}s: {st!r}"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- failed submit

def test_failed_submit_keeps_lock_and_marker_then_one_retry_starts_one_runner(root):
    site = new_site(root)
    bad = make_spec(site, "bs-fail-retry", [["true"]] * 2, python="/nonexistent/python3")
    with pytest.raises(SiteCommandError, match="python"):
        site.submit(bad)
    m = meta(bad)
    assert (m / "lock").is_dir() and (m / "lock" / "owner").read_text().strip()
    assert "submit.sh exited 1" in (m / "failed").read_text()
    assert "no /nonexistent/python3" in (m / "failed.log").read_text()
    assert not (m / "submitted").exists()

    good = make_spec(site, "bs-fail-retry", [["true"]] * 2)
    n0, t0 = site.transport.counters.commands_run, time.monotonic()
    sub = site.submit(good)
    # exit 76 at once (no 60 s wait), the lock cleared, the submit-once run again
    assert site.transport.counters.commands_run - n0 == 3
    assert time.monotonic() - t0 < 30
    assert not sub.adopted
    assert len(runner_pids(good.workdir)) <= 1 and runner_starts(good) == 1
    assert not (m / "failed").exists() and (m / "submitted").exists()
    assert "submit.sh exited 1" in (m / "failed.log").read_text()  # the history stays
    assert wait_finished(site, sub).succeeded
    # and from now on every submit re-attaches
    again = site.submit(good)
    assert again.adopted and again.fanout_id == sub.fanout_id and runner_starts(good) == 1


def test_failed_submit_error_carries_the_backends_hint(root):
    site = new_site(root, FindingLocal())
    bad = make_spec(site, "bs-hint", [["true"]], python="/nonexistent/python3")
    with pytest.raises(SiteCommandError, match="hint: install python3") as e:
        site.submit(bad)
    assert e.value.hint == "install python3 or set BATCHSITE_PYTHON"


def test_failed_submit_not_found_by_name_is_cleared_and_retried(root):
    site = new_site(root, FindingLocal())
    bad = make_spec(site, "bs-find-none", [["true"]], python="/nonexistent/python3")
    with pytest.raises(SiteCommandError):
        site.submit(bad)
    good = make_spec(site, "bs-find-none", [["true"]])
    n0 = site.transport.counters.commands_run
    sub = site.submit(good)
    assert site.transport.counters.commands_run - n0 == 4  # submit-once (76), find, clear, submit-once
    assert not sub.adopted and runner_starts(good) == 1
    assert wait_finished(site, sub).succeeded


# ---------------------------------------------------------------------------- stale lock

def test_stale_lock_without_marker_adopts_the_record_written_meanwhile(root):
    site = new_site(root)
    spec = make_spec(site, "bs-stale-adopt", [["sleep", "0.3"]])
    first = site.submit(spec)
    m = meta(spec)
    # a concurrent submitter still at work (its shell lives): lock held, no marker, its
    # record lands 1.5 s later
    hidden = m / "elsewhere"
    (m / "submitted").rename(hidden)
    assert (m / "lock").is_dir() and not (m / "failed").exists()
    other = subprocess.Popen(["sh", "-c", "sleep 30", "batchsite", spec.workdir], start_new_session=True)
    (m / "lock" / "owner").write_text(f"{socket.gethostname()} {other.pid} {int(time.time())}\n")
    t = threading.Timer(1.5, lambda: hidden.rename(m / "submitted"))
    t.start()
    try:
        sub = make_site(root[0]).submit(spec)
    finally:
        t.join()
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
    assert sub.adopted and sub.fanout_id == first.fanout_id
    assert runner_starts(spec) == 1
    assert wait_finished(site, first).succeeded


def test_stale_lock_names_the_scheduler_job_and_local_cannot_search(root):
    site = new_site(root)
    site.lock_wait_seconds = 1
    spec = make_spec(site, "bs-stale-1", [["true"]])
    m = meta(spec)
    (m / "lock").mkdir(parents=True)  # a submitter died half-way
    assert LocalBackend().render_find_script(spec) is None
    with pytest.raises(SiteCommandError) as e:
        site.submit(spec)
    msg = str(e.value)
    assert f"exited {LOCK_STALE}" in msg
    assert "jobs named bs-stale-1" in msg  # the scheduler name, i.e. spec.key
    assert f"{m}/lock" in msg and "cannot look for jobs by name" in msg
    assert (m / "lock").is_dir() and runner_starts(spec) == 0


def test_stale_lock_found_by_name_is_recorded_and_adopted(root):
    site = new_site(root, FindingLocal())
    site.lock_wait_seconds = 1
    spec = make_spec(site, "bs-stale-found", [["sleep", "0.3"]])
    first = site.submit(spec)
    m = meta(spec)
    (m / "submitted").unlink()  # submitted, but the record was never written
    sub = site.submit(spec)
    assert sub.adopted and sub.fanout_id == first.fanout_id
    rec = (m / "submitted").read_text().splitlines()
    assert rec[0].split()[0] == sub.script_hash and rec[2].startswith("# batchsite: found by scheduler name")
    assert rec[3] == f"local={first.fanout_id}"
    assert runner_starts(spec) == 1
    assert site.find(spec).fanout_id == first.fanout_id
    assert wait_finished(site, sub).succeeded


def test_lock_changed_hands_is_not_cleared(root):
    """The clear snippet removes the lock only while it has the owner the caller saw."""
    from batchsite.site import SUBMIT_ONCE

    site = new_site(root)
    spec = make_spec(site, "bs-owner", [["true"]])
    m = meta(spec)
    (m / "lock").mkdir(parents=True)
    (m / "lock" / "owner").write_text("host 2 3\n")
    r = site.transport.sh(SUBMIT_ONCE, "clear", spec.workdir, "host 1 2", "stale")
    assert r.out.strip() == "@@CHANGED" and (m / "lock").is_dir()
    r = site.transport.sh(SUBMIT_ONCE, "clear", spec.workdir, "host 2 3", "failed")  # no failed marker
    assert r.out.strip() == "@@CHANGED" and (m / "lock").is_dir()
    # another host, taken at epoch 3: long dead
    r = site.transport.sh(SUBMIT_ONCE, "clear", spec.workdir, "host 2 3", "stale")
    assert r.out.strip() == "@@CLEARED" and not (m / "lock").exists()
    assert not (m / "mutex").exists()


def test_lock_of_a_submitter_still_running_is_never_cleared(root):
    """75 is not "died half-way" while the owner's shell still runs (a slow sbatch): the
    waiter waits longer, and the lock is not cleared even when nothing is found by name."""
    site = new_site(root, FindingLocal())
    site.lock_wait_seconds = 1
    spec = make_spec(site, "bs-busy", [["true"]])
    m = meta(spec)
    (m / "lock").mkdir(parents=True)
    # stands in for the submit-once shell of another task: same argv shape (sh -c ... wd ...)
    other = subprocess.Popen(["sh", "-c", "sleep 30", "batchsite", spec.workdir], start_new_session=True)
    try:
        (m / "lock" / "owner").write_text(f"{socket.gethostname()} {other.pid} {int(time.time())}\n")
        t0 = time.monotonic()
        with pytest.raises(SiteCommandError, match="still running") as e:
            site.submit(spec)
        assert time.monotonic() - t0 >= 2.5  # waited past lock_wait_seconds, up to 3 times
        assert f"exited {LOCK_STALE}" in str(e.value)
        assert (m / "lock").is_dir() and runner_starts(spec) == 0
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # the shell and its sleep
        other.wait()
    # the owner is gone: found nothing by name, so the lock is cleared and the round submitted
    sub = site.submit(spec)
    assert not sub.adopted and runner_starts(spec) == 1
    assert wait_finished(site, sub).succeeded


# ---------------------------------------------------------------------------- resubmit

def test_resubmit_refuses_unfinished_keeps_old_record_and_runs_again(root):
    site = new_site(root)
    flaky = ["sh", "-c", "[ -e again ] || { touch again; exit 3; }"]
    spec = make_spec(site, "bs-resub", [["true"], flaky])
    first = site.submit(spec)
    running = RoundStatus(key=spec.key, units={0: TaskStatus(state=JobState.DONE),
                                               1: TaskStatus(state=JobState.RUNNING)})
    with pytest.raises(ValueError, match="not finished"):
        site.resubmit(spec, running, reason="too early")
    st = wait_finished(site, first)
    assert st.failed_indices == [1]
    with pytest.raises(ValueError, match="other"):
        site.resubmit(spec, st.model_copy(update={"key": "other"}), reason="x")
    m = meta(spec)
    old = (m / "submitted").read_text()

    second = site.resubmit(spec, st, reason="rescue: unit 1 failed")
    assert not second.adopted and second.fanout_id != first.fanout_id
    assert (m / "submitted.1").read_text() == old
    assert "rescue: unit 1 failed" in (m / "resubmit.log").read_text()
    assert Path(spec.workdir, "state.1", "runner.done").exists()  # the first run's state, kept
    assert wait_finished(site, second).succeeded
    assert runner_starts(spec) == 2
    # a caller that still holds the first status: the site checks the current submission
    with pytest.raises(ValueError, match="succeeded"):
        make_site(root[0]).resubmit(spec, st, reason="late")
    assert not (m / "submitted.2").exists() and runner_starts(spec) == 2


def test_readoption_after_a_narrowed_rescue_keeps_the_rescue_units(root):
    """Defect 2 of issue 13: the record says what the attempt ran; the round's caller (its
    whole spec, same key) re-attaches to the narrowed rescue, not to all the units."""
    site = new_site(root)
    flaky = ["sh", "-c", "[ -e again ] || { touch again; exit 3; }"]
    spec = make_spec(site, "bs-narrow", [["true"], flaky, ["true"]])
    st = wait_finished(site, site.submit(spec))
    assert st.failed_indices == [1]
    narrowed = spec.model_copy(update={"units": [u for u in spec.units if u.index == 1]})
    rescue = site.resubmit(narrowed, st, reason="rescue: unit 1")
    assert rescue.indices == [1]
    header = (meta(spec) / "submitted").read_text().splitlines()[0].split()
    assert header[1:] == [f"spec={spec_hash(spec)}", "attempt=2", "indices=1"]
    assert (meta(spec) / "submitted.1").read_text().splitlines()[0].split()[2:] == ["attempt=1", "indices=0-2"]
    # the units the rescue did not run: their exit files are the first attempt's, in status.1
    assert sorted(p.name for p in Path(spec.workdir, "status.1").glob("*.exit")) == ["0.exit", "1.exit", "2.exit"]
    again = make_site(root[0]).submit(spec)  # a task retry / clear: the caller's whole spec
    assert again.adopted and again.fanout_id == rescue.fanout_id and again.indices == [1]
    assert (rescue.attempt, again.attempt) == (2, 2)  # a re-attaching task continues the rescue count
    assert set(wait_finished(site, again).units) == {1} and runner_starts(spec) == 2
    # another spec under the same key is never adopted
    changed = spec.model_copy(update={"units": [*spec.units[:2], spec.units[2].model_copy(update={"argv": ["false"]})]})
    with pytest.raises(RoundSpecMismatchError, match=f"spec hash {spec_hash(spec)}.*new key"):
        make_site(root[0]).submit(changed)
    assert runner_starts(spec) == 2


def test_a_rescue_whose_record_was_lost_is_recorded_as_what_it_submitted(root):
    """A narrowed rescue dies after its runner started, before its record: the round's caller
    (whole spec, attempt 1 in its header) finds it by name, and the record written says what
    the lost submission submitted (the lock's header: attempt 2, unit 1), not the caller's guess."""
    site = new_site(root, FindingLocal())
    site.lock_wait_seconds = 1
    flaky = ["sh", "-c", "[ -e again ] || { touch again; exit 3; }"]
    spec = make_spec(site, "bs-lost-rescue", [["true"], flaky, ["true"]])
    first = site.submit(spec)
    assert first.attempt == 1
    st = wait_finished(site, first)
    narrowed = spec.model_copy(update={"units": [u for u in spec.units if u.index == 1]})
    rescue = site.resubmit(narrowed, st, reason="rescue: unit 1")
    m = meta(spec)
    assert (m / "lock" / "header").read_text().split()[2:] == ["attempt=2", "indices=1"]
    (m / "submitted").unlink()  # the rescue's record never made it
    found = new_site(root, FindingLocal()).submit(spec)
    assert found.adopted and found.fanout_id == rescue.fanout_id
    assert (found.indices, found.attempt) == ([1], 2)
    rec = (m / "submitted").read_text().splitlines()
    assert rec[0].split()[1:] == [f"spec={spec_hash(spec)}", "attempt=2", "indices=1"]
    assert rec[2].startswith("# batchsite: found by scheduler name")
    assert wait_finished(site, found).succeeded and runner_starts(spec) == 2


def test_a_dead_owner_is_not_waited_for(root):
    """A lock whose owner is a dead process of this host: 75 at once, not after the wait."""
    site = new_site(root, FindingLocal())
    site.lock_wait_seconds = 30
    spec = make_spec(site, "bs-dead-owner", [["true"]])
    m = meta(spec)
    (m / "lock").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (m / "lock" / "owner").write_text(f"{socket.gethostname()} {gone.pid} {int(time.time())}\n")
    t0 = time.monotonic()
    sub = site.submit(spec)  # found nothing by name: cleared and submitted
    assert time.monotonic() - t0 < 10 and not sub.adopted and runner_starts(spec) == 1
    assert wait_finished(site, sub).succeeded


def test_exit_codes_are_distinct():
    assert {LOCK_STALE, LOCK_FAILED} == {75, 76}


# ---------------------------------------------------------------------------- two callers at once

def _both(fn_a, fn_b):
    out: dict[str, object] = {}

    def run(name, fn):
        try:
            out[name] = fn()
        except Exception as e:  # reported below
            out[name] = e

    ts = [threading.Thread(target=run, args=(n, f)) for n, f in (("a", fn_a), ("b", fn_b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out["a"], out["b"]


@pytest.mark.parametrize("backend", [LocalBackend, FindingLocal])
def test_two_recoveries_at_once_start_one_runner(root, backend):
    site = new_site(root, backend())
    key = f"bs-two-{backend.__name__.lower()}"
    with pytest.raises(SiteCommandError):
        site.submit(make_spec(site, key, [["true"]], python="/nonexistent/python3"))
    good = make_spec(site, key, [["sleep", "0.3"]])
    a, b = _both(lambda: new_site(root, backend()).submit(good), lambda: new_site(root, backend()).submit(good))
    assert isinstance(a, Submission) and isinstance(b, Submission), (a, b)
    assert a.fanout_id == b.fanout_id and [a.adopted, b.adopted].count(False) == 1
    assert runner_starts(good) == 1
    assert wait_finished(site, a).succeeded


def test_two_resubmissions_at_once_submit_once(root):
    site = new_site(root)
    spec = make_spec(site, "bs-resub-two", [["sh", "-c", "[ -e again ] || { touch again; exit 3; }"]])
    st = wait_finished(site, site.submit(spec))
    assert st.failed_indices == [0]
    a, b = _both(lambda: new_site(root).resubmit(spec, st, reason="a"),
                 lambda: new_site(root).resubmit(spec, st, reason="b"))
    assert isinstance(a, Submission) and isinstance(b, Submission), (a, b)
    assert a.fanout_id == b.fanout_id and [a.adopted, b.adopted].count(False) == 1
    m = meta(spec)
    assert (m / "submitted.1").exists() and not (m / "submitted.2").exists()
    assert runner_starts(spec) == 2
    assert wait_finished(site, a).succeeded


# ---------------------------------------------------------------------------- environment
def test_local_jobs_do_not_inherit_airflow_secrets(root, monkeypatch):
    """A job on the local site sees an allow-listed environment: never Airflow's own variables
    (connection URIs with passwords and keys, the DB URL, the Fernet key) nor any other."""
    monkeypatch.setenv("AIRFLOW_CONN_SECRET_SITE", "ssh://u:BSSECRET-pw-local@h")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "BSSECRET-fernet-local")
    monkeypatch.setenv("BATCHSITE_USER_SETTING", "kept")
    site = new_site(root)
    spec = make_spec(site, "envjob", [["sh", "-c", "env > env.txt"]])
    sub = site.submit(spec)
    assert wait_finished(site, sub).units[0].state is JobState.DONE
    env = Path(spec.workdir, "env.txt").read_text()
    # an allow-list (transport/local.py ALLOWED_ENV), not "everything but Airflow's"
    assert "BATCHSITE_USER_SETTING" not in env and "PATH=" in env
    assert "BSSECRET" not in env and "AIRFLOW" not in env
