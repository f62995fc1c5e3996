"""Staging faults over the REAL sshd: the site's disk fills up (a real tmpfs inside remote_root)
and the connection is cut half-way through a push. Nothing corrupt may appear under a final
name and the next push must complete with matching checksums."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from batchsite.staging import RemoteDiskFullError, push_tree
from batchsite.transport.base import TransportError

from ..conftest import site_conn


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(base: Path) -> dict[str, str]:
    if not base.exists():
        return {}
    return {p.relative_to(base).as_posix(): _sha(p) for p in sorted(base.rglob("*"))
            if p.is_file() and ".batchsite-stage." not in p.as_posix()}


def _write_tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


@pytest.fixture
def ssh_transport(site_info, monkeypatch):
    from batchsite.config import site_config_from_connection
    from batchsite.hooks.site import transport_for_conn

    conn = site_conn(site_info, "slurm")
    monkeypatch.setenv("AIRFLOW_CONN_STAGE_SITE", json.dumps(conn))
    cfg = site_config_from_connection("stage_site", conn["host"], conn["port"], conn["login"], conn["extra"])
    transports = []

    def make():
        t = transport_for_conn(cfg)
        transports.append(t)
        return t

    yield make
    for t in transports:
        t.close()


def _as_site_user(info, path: Path) -> None:
    pw = pwd.getpwnam(info["user"])
    os.chown(path, pw.pw_uid, pw.pw_gid)


def test_remote_disk_full_during_staging(site_info, ssh_transport, tmp_path, fault_record):
    """8: a 512 kB tmpfs mounted inside remote_root fills up mid-push."""
    row = fault_record(8, "ssh, tmpfs remote dir", involves_jobs=False)
    if os.geteuid() != 0:
        pytest.fail("this test mounts a real tmpfs on the site and needs root (as in CI)", pytrace=False)
    root = Path(site_info["remote_root"])
    mnt = root / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount tmpfs: {r.stderr}"
    try:
        _as_site_user(site_info, mnt)
        t = ssh_transport()
        cache = tmp_path / "cache.json"
        src = _write_tree(tmp_path / "src", {f"f{i}.dat": os.urandom(8 * 1024) for i in range(4)})
        dest = mnt / "code"
        assert push_tree(t, src, str(dest), remote_root=str(root), cache_file=cache).files_sent == 4
        v1 = _files(dest)

        vfs = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - 100 * 1024))
        free = os.statvfs(mnt)
        free_kb, size_kb = free.f_bavail * free.f_frsize >> 10, free.f_blocks * free.f_frsize >> 10
        _write_tree(src, {**{f"f{i}.dat": os.urandom(40 * 1024) for i in range(4)},
                          "new.dat": os.urandom(40 * 1024)})
        with pytest.raises(RemoteDiskFullError) as e:
            push_tree(t, src, str(dest), remote_root=str(root), cache_file=cache)
        assert "remote disk full or quota exceeded at" in str(e.value) and str(dest) in str(e.value)
        assert _files(dest) == v1  # the old content, nothing half-written under a final name
        assert not list(mnt.rglob(".batchsite-stage.*"))

        (mnt / "filler").unlink()  # space freed: the same push completes
        rep = push_tree(t, src, str(dest), remote_root=str(root), cache_file=cache)
        assert rep.files_sent == 5
        assert _files(dest) == _files(src)
        pushed_kb = sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) >> 10
        row.measured = (f"push of {pushed_kb} kB into a {size_kb} kB tmpfs with {free_kb} kB free: clear "
                        f"RemoteDiskFullError, "
                        f"old files intact; after freeing, {rep.files_sent} files in {rep.commands} commands")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def _ppid_comm(pid: int) -> tuple[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1]), stat[stat.index("(") + 1:stat.rindex(")")]


def site_info_listener() -> int:
    from ..conftest import STATE

    return int((STATE / "pids" / "sshd.pid").read_text().split()[0])


def _session_sshds(pid: int, listener: int) -> list[int]:
    """The sshd processes between ``pid`` and the sshd listener (the session's own)."""
    found = []
    while pid > 1 and pid != listener:
        ppid, comm = _ppid_comm(pid)
        if comm == "sshd":
            found.append(pid)
        pid = ppid
    assert found, "the push's remote process does not run under an sshd session"
    return found


def _cut_when_half_way(parent: Path, stop: threading.Event, result: dict) -> None:
    """Once the site has extracted part of the push, freeze the remote tar (so the cut is really
    mid-transfer) and SIGKILL the sshd session process serving it: the connection is gone."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        staged = [p for p in parent.glob(".batchsite-stage.*/f/*") if p.is_file()]
        if staged:
            # the site's receiver: tar (tar push) or the rsync server (rsync push), both into the stage
            tars = subprocess.run(["pgrep", "-f", f"^(tar -xf - -C |rsync --server .* ){parent}/.batchsite-stage"],
                                  capture_output=True, text=True).stdout.split()
            for tar in tars:
                os.kill(int(tar), signal.SIGSTOP)
            result["staged_when_cut"] = len(staged)
            for tar in tars:
                # tar <- shells of the push script <- "sshd: bsite@notty" <- "sshd: bsite [priv]":
                # end that one session (both sshd processes hold its socket), nothing else
                for pid in _session_sshds(int(tar), site_info_listener()):
                    result.setdefault("killed", []).append(pid)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            for tar in tars:
                try:
                    os.kill(int(tar), signal.SIGCONT)
                except ProcessLookupError:
                    pass
            return
        time.sleep(0.005)


def test_staging_connection_cut_half_way(site_info, ssh_transport, tmp_path, fault_record):
    """9: the SSH session carrying a push dies half-way through the transfer."""
    row = fault_record(9, "ssh", involves_jobs=False)
    root = Path(site_info["remote_root"])
    parent = root / f"cut-{uuid.uuid4().hex[:6]}"
    dest = parent / "code"
    cache = tmp_path / "cache.json"
    src = _write_tree(tmp_path / "src", {f"old{i}.dat": os.urandom(1024) for i in range(3)})
    t = ssh_transport()
    push_tree(t, src, str(dest), remote_root=str(root), cache_file=cache)
    v1 = _files(dest)
    _write_tree(src, {**{f"old{i}.dat": os.urandom(4096) for i in range(3)},
                      **{f"big{i:02d}.dat": os.urandom(1 << 20) for i in range(48)}})

    stop, result = threading.Event(), {}
    th = threading.Thread(target=_cut_when_half_way, args=(parent, stop, result), daemon=True)
    th.start()
    try:
        with pytest.raises(TransportError):
            push_tree(t, src, str(dest), remote_root=str(root), cache_file=cache)
    finally:
        stop.set()
        th.join(timeout=10)
    assert result.get("killed"), "the push finished before the connection could be cut"
    after_cut = _files(dest)
    # nothing new or changed under a final name: the files are the old ones, untouched
    assert after_cut == v1, sorted(set(after_cut.items()) ^ set(v1.items()))[:5]

    rep = push_tree(ssh_transport(), src, str(dest), remote_root=str(root), cache_file=cache)
    assert rep.files_sent == 51
    assert _files(dest) == _files(src)
    time.sleep(1)  # the cut session's script removes its stage dir as it exits
    leftovers = list(parent.glob(".batchsite-stage.*"))
    row.measured = (f"cut after {result['staged_when_cut']} of {len(_files(src))} files reached the site: old "
                    f"files untouched; "
                    f"next push sent {rep.files_sent} files ({rep.bytes_sent >> 20} MB), checksums match; "
                    f"{len(leftovers)} stage dirs left")
    assert leftovers == [], leftovers
