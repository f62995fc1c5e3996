"""The shell scripts shipped as ``.sh`` files: linted by shellcheck, shipped as package data,
and run ON THEIR OWN (``bash script.sh MODE ARGS``, no Python in between) in a temp dir.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tarfile
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: where shipped scripts live: the import package folders (pyproject's package-dir)
SCRIPT_ROOTS = ("providers", "include")
SUBMIT_ONCE = REPO / "providers/batchsite/submit_once.sh"
TRANSFER = REPO / "providers/batchsite/staging/transfer.sh"
LOCAL_JOBS = REPO / "providers/batchsite/backends/local_jobs.sh"
RUN_HELPER = REPO / "providers/batchsite/backends/run_helper.sh"


def shipped_scripts() -> list[Path]:
    return sorted(p for root in SCRIPT_ROOTS for p in (REPO / root).rglob("*.sh"))


def test_shellcheck_passes_on_every_shipped_script():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed; install the Debian package: `apt-get install -y shellcheck` "
                    "(tests/site/site.sh installs it with the test site)", pytrace=False)
    scripts = shipped_scripts()
    assert len(scripts) >= 7, scripts
    # every script names its shell (shebang), so shellcheck needs no -s; -x follows sourced files
    r = subprocess.run([shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"shellcheck found problems:\n{r.stdout}{r.stderr}"


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    """The source folder of an import package, by pyproject's package-dir."""
    root = max((p for p in package_dir if package == p or package.startswith(p + ".")), key=len)
    return REPO / package_dir[root] / Path(*package[len(root):].split(".")[1:])


def test_every_script_ships_as_package_data():
    """A wheel carries each script: some package-data glob (which never crosses a '/')
    of a listed package matches it, and importlib.resources finds it there."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir, package_data = setuptools["package-dir"], setuptools["package-data"]
    for script in shipped_scripts():
        shipped_by = []
        for package, patterns in package_data.items():
            folder = _folder_of(package, package_dir)
            if package in setuptools["packages"] and script.is_relative_to(folder):
                rel = script.relative_to(folder).as_posix()
                shipped_by += [package for p in patterns if rel.count("/") == p.count("/") and fnmatch(rel, p)]
        assert shipped_by, f"{script}: no [tool.setuptools.package-data] entry ships it"
        package = shipped_by[0]
        rel = script.relative_to(_folder_of(package, package_dir)).as_posix()
        assert resources.files(package).joinpath(rel).read_text() == script.read_text()


# ---------------------------------------------------------------------------- submit_once.sh, alone

def _round_tar(submit_body: str) -> bytes:
    """The stdin of `submit`: a tar with submit.sh (and what it leaves behind)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"#!/bin/sh\n{submit_body}\n".encode()
        info = tarfile.TarInfo("submit.sh")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def submit_once(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SUBMIT_ONCE), *args], input=stdin, capture_output=True, timeout=60)


COUNTING_SUBMIT = 'echo x >> ../submits.log; echo "job=42"'


def test_submit_once_records_before_it_answers_and_never_submits_twice(tmp_path):
    wd = tmp_path / "round"
    first = submit_once("submit", str(wd), "hash1", "bs-key", "1", stdin=_round_tar(COUNTING_SUBMIT))
    assert first.returncode == 0, first.stderr
    lines = first.stdout.decode().splitlines()
    assert lines[0] == "@@SUBMITTED" and lines[1] == "hash1" and lines[3] == "job=42"
    record = (wd / ".batchsite/submitted").read_text().splitlines()
    assert record == lines[1:]
    again = submit_once("submit", str(wd), "hash2", "bs-key", "1", stdin=_round_tar(COUNTING_SUBMIT))
    assert again.returncode == 0
    assert again.stdout.decode().splitlines() == ["@@ADOPT", *record]  # the first record, not hash2
    assert (tmp_path / "submits.log").read_text() == "x\n"  # submit.sh ran once


def test_submit_once_failed_submission_keeps_the_lock_and_says_so(tmp_path):
    wd = tmp_path / "round"
    failed = submit_once("submit", str(wd), "h", "bs-key", "1", stdin=_round_tar("echo boom >&2; exit 3"))
    assert failed.returncode == 3
    meta = wd / ".batchsite"
    assert (meta / "lock").is_dir() and "boom" in (meta / "failed").read_text()
    # the next attempt does not wait: 76 at once, with the lock's owner and the failure
    nxt = submit_once("submit", str(wd), "h", "bs-key", "30", stdin=_round_tar(COUNTING_SUBMIT))
    assert nxt.returncode == 76
    owner = (meta / "lock/owner").read_text().strip()
    assert nxt.stdout.decode().splitlines() == [f"@@LOCK {owner}"]
    assert b"boom" in nxt.stderr
    # clear it as the owner seen, in "failed" mode, then submit
    cleared = submit_once("clear", str(wd), owner, "failed")
    assert cleared.stdout.decode().strip() == "@@CLEARED" and not (meta / "lock").exists()
    ok = submit_once("submit", str(wd), "h", "bs-key", "1", stdin=_round_tar(COUNTING_SUBMIT))
    assert ok.returncode == 0 and ok.stdout.decode().startswith("@@SUBMITTED")


def test_submit_once_stale_lock_is_75_and_cleared_only_for_the_owner_seen(tmp_path):
    wd = tmp_path / "round"
    meta = wd / ".batchsite"
    (meta / "lock").mkdir(parents=True)
    (meta / "lock/owner").write_text("elsewhere 1 3\n")  # another host, taken at epoch 3: long dead
    stale = submit_once("submit", str(wd), "h", "bs-key", "0", stdin=_round_tar(COUNTING_SUBMIT))
    assert stale.returncode == 75
    assert stale.stdout.decode().splitlines() == ["@@LOCK elsewhere 1 3"]
    assert b"jobs named bs-key" in stale.stderr
    assert submit_once("clear", str(wd), "elsewhere 9 9", "stale").stdout.decode().strip() == "@@CHANGED"
    assert submit_once("clear", str(wd), "elsewhere 1 3", "stale").stdout.decode().strip() == "@@CLEARED"
    assert not (meta / "mutex").exists()


def test_submit_once_write_found_and_set_aside(tmp_path):
    wd = tmp_path / "round"
    meta = wd / ".batchsite"
    (meta / "lock").mkdir(parents=True)
    owner = f"{socket.gethostname()} 1 3"
    (meta / "lock/owner").write_text(owner + "\n")
    found = submit_once("write-found", str(wd), "h", owner, stdin=b"job=7\n")
    assert found.returncode == 0
    out = found.stdout.decode().splitlines()
    assert out[0] == "@@ADOPT" and out[1] == "h" and out[3:] == ["# batchsite: found by scheduler name, the "
                                                                 "submission's own output was lost", "job=7"]
    record = (meta / "submitted").read_text()
    (wd / "status").mkdir()
    assert submit_once("set-aside", str(wd), "other", stdin=b"not the record").stdout.decode().strip() == "@@CHANGED"
    moved = submit_once("set-aside", str(wd), "rescue 1", stdin=record.rstrip("\n").encode())
    assert moved.stdout.decode().strip() == "@@MOVED 1"
    assert (meta / "submitted.1").read_text() == record and (wd / "status.1").is_dir()
    assert not (meta / "lock").exists() and "rescue 1" in (meta / "resubmit.log").read_text()


def test_submit_once_usage_error():
    r = submit_once("frobnicate", "/nowhere")
    assert r.returncode == 64 and b"unknown mode" in r.stderr


# ---------------------------------------------------------------------------- transfer.sh, alone

def transfer(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TRANSFER), *args], input=stdin, capture_output=True, timeout=60)


def test_transfer_put_read_and_refuse_a_symlink_out_of_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    put = transfer("put", str(root), str(root / "a/b.txt"), "600", stdin=b"hello\n")
    assert put.returncode == 0 and put.stdout == b"@@DONE\n", put.stderr
    assert (root / "a/b.txt").read_text() == "hello\n" and (root / "a/b.txt").stat().st_mode & 0o777 == 0o600
    read = transfer("read", str(root), str(root / "a/b.txt"))
    assert read.stdout == b"\n@@BATCHSITE-FILE\nhello\n"
    missing = transfer("read", str(root), str(root / "nope"))
    assert missing.returncode == 3 and b"@@NOFILE" in missing.stderr
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    refused = transfer("put", str(root), str(root / "escape/x"), "644", stdin=b"x")
    assert refused.returncode == 77 and b"outside remote_root" in refused.stderr
    assert not (tmp_path / "outside/x").exists()


def test_transfer_manifest_lists_sizes_and_sums(tmp_path):
    root = tmp_path / "root"
    (root / "d/__pycache__").mkdir(parents=True)
    (root / "d/f.py").write_text("x\n")
    (root / "d/__pycache__/f.pyc").write_text("cached")
    r = transfer("manifest", str(root), str(root / "d"))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert out[0] == "@@SIZES" and out[1] == "2 ./f.py" and out[2] == "@@SUMS" and out[-1] == "@@END"
    assert out[3].endswith("  ./f.py") and len(out) == 5  # __pycache__ is never listed
    assert transfer("manifest", str(root), str(root / "none")).stdout == b"@@NODIR\n"


# ---------------------------------------------------------------------------- local_jobs.sh, run_helper.sh, alone

def test_local_jobs_status_of_a_round_without_runner_state(tmp_path):
    r = subprocess.run(["bash", str(LOCAL_JOBS), "bs_local", str(tmp_path)], capture_output=True, text=True,
                       timeout=30)
    assert (r.returncode, r.stdout) == (0, "nostate\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/runner.pid").write_text("999999999 elsewhere.example\n")
    (tmp_path / "state/3").write_text("running 999999998\n")
    r = subprocess.run(["bash", str(LOCAL_JOBS), "bs_local", str(tmp_path)], capture_output=True, text=True,
                       timeout=30)
    assert "runner 999999999 elsewhere.example" in r.stdout and "alive elsewhere" in r.stdout
    assert "state 3 running 999999998" in r.stdout


def test_run_helper_records_stderr_and_exit_code():
    r = subprocess.run(["bash", str(RUN_HELPER), "sh", "-c", "echo out; echo err >&2; exit 3"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3
    assert r.stdout == "out\n!err err\n!rc 3\n"
