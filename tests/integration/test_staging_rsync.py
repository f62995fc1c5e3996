"""Pushes over rsync and over the tar fallback on the REAL sshd of the test site.

The fallback runs because rsync is hidden from the remote command's PATH (the site's
``env_script`` is replaced by one that sources it, then sets PATH to a directory holding every
command of the site except rsync). Both must leave identical trees, and the path-escape checks
hold on both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from batchsite.config import site_config_from_connection
from batchsite.hooks.connection import transport_for_conn
from batchsite.staging import UnsafePathError, push_tree

from ..conftest import site_conn

TRANSPORTS = ("openssh", "ssh", "ssh-private-key")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tree(base: Path) -> dict[str, tuple[str, bool]]:
    """{rel: (sha256, executable)} of the regular files, stage dirs and manifest caches left out."""
    return {p.relative_to(base).as_posix(): (_sha(p), bool(p.stat().st_mode & stat.S_IXUSR))
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.is_symlink() and ".batchsite-" not in p.as_posix()}


@pytest.fixture(scope="module")
def hidden_rsync_env(site_info):
    """A site env_script that sources the real one, prints to stdout (as some site scripts do),
    then leaves rsync off PATH."""
    root = Path(site_info["remote_root"]) / f"norsync-{uuid.uuid4().hex[:8]}"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name != "rsync" and not (bin_dir / name).exists() and os.access(os.path.join(d, name), os.X_OK):
                (bin_dir / name).symlink_to(os.path.join(d, name))
    script = root / "env.sh"
    script.write_text(f". {site_info['env_script']}\necho 'noise from the site env script'\nexport PATH={bin_dir}\n")
    root.chmod(0o755)
    bin_dir.chmod(0o755)
    yield str(script)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_transport(site_info, monkeypatch, tmp_path):
    """A transport of the real site: ``openssh``, ``ssh`` (paramiko, key_file) or ``ssh-private-key``
    (paramiko, the key's text in the connection), optionally with another env_script."""
    made = []

    def make(kind: str, env_script: str | None = None):
        extra = {"transport": "ssh" if kind.startswith("ssh") else "openssh",
                 "control_path": str(tmp_path / f"cm-{len(made)}")}
        if env_script:
            extra["env_script"] = env_script
        conn = site_conn(site_info, "slurm", **extra)
        if kind == "ssh-private-key":
            conn["extra"]["private_key"] = Path(conn["extra"].pop("key_file")).read_text()
        conn_id = f"stage_rsync_{len(made)}"
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        # the adapter's builder: for ssh, SSHHook's connector and the connection's key for rsync
        t = transport_for_conn(site_config_from_connection(conn_id, conn["host"], conn["port"], conn["login"],
                                                           conn["extra"]))
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()
    for cm in tmp_path.glob("cm-*"):
        subprocess.run(["ssh", "-o", f"ControlPath={cm}", "-O", "exit", "x"], capture_output=True)


@pytest.fixture
def remote_base(site_info):
    base = Path(site_info["remote_root"]) / f"rsync-test-{uuid.uuid4().hex[:8]}"
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _source(base: Path) -> Path:
    files = {
        "a.py": b"print('a')\n", "pkg/deep/b.bin": os.urandom(200_000), "sp ace/\u00fc-\u00e9.txt": b"u\n",
        "run.sh": b"#!/bin/sh\necho hi\n", "pkg/__pycache__/a.cpython-311.pyc": b"\0", "pkg/c.pyc": b"\0",
        "same-size.txt": b"version 1\n", "gone.txt": b"to be deleted\n",
    }
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    (base / "run.sh").chmod(0o755)
    (base / "link-to-a.py").symlink_to("a.py")  # a file symlink: its content is staged
    (base / "linked-dir").symlink_to(base / "pkg", target_is_directory=True)  # never followed
    old = time.time() - 3600
    for p in base.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p, (old, old))
    return base


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_rsync_and_tar_fallback_give_identical_trees(kind, make_transport, hidden_rsync_env, remote_base,
                                                     site_info, tmp_path):
    root = site_info["remote_root"]
    src = _source(tmp_path / "src")
    want = {rel: v for rel, v in _tree(src).items() if "__pycache__" not in rel and not rel.endswith(".pyc")
            and not rel.startswith("linked-dir/")}
    want["link-to-a.py"] = want["a.py"]
    with_rsync, without = make_transport(kind), make_transport(kind, env_script=hidden_rsync_env)
    dest_rsync, dest_tar = remote_base / "via-rsync", remote_base / "via-tar"

    def push_both(**kw):
        a = push_tree(with_rsync, src, str(dest_rsync), remote_root=root, cache_file=tmp_path / "a.json", **kw)
        b = push_tree(without, src, str(dest_tar), remote_root=root, cache_file=tmp_path / "b.json", **kw)
        assert (a.method, a.fallback_reason) == ("rsync", "")
        assert (b.method, b.fallback_reason) == ("tar", "no rsync on the site's PATH")
        assert _tree(dest_rsync) == _tree(dest_tar)
        return a, b

    a, b = push_both()
    assert _tree(dest_rsync) == want
    # never pushed from here: no listing, one rsync run compares and sends everything
    assert (a.files_sent, b.files_sent) == (len(want), len(want)) and a.commands == 1
    assert a.bytes_sent == b.bytes_sent == sum(len((src / rel).read_bytes()) for rel in want)
    assert a.skipped == b.skipped == ["linked-dir/"]

    # same size, old mtime put back (rsync -a's quick check would skip it), a new file, a deletion
    st = (src / "same-size.txt").stat()
    (src / "same-size.txt").write_bytes(b"version 2\n")
    os.utime(src / "same-size.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    (src / "new.txt").write_text("new\n")
    (src / "gone.txt").unlink()
    a, b = push_both(delete=True)
    assert sorted(a.sent) == sorted(b.sent) == ["new.txt", "same-size.txt"]
    assert (a.files_deleted, b.files_deleted) == (1, 1) and a.files_unchanged == b.files_unchanged == len(want) - 2
    assert (dest_rsync / "same-size.txt").read_bytes() == b"version 2\n" and not (dest_rsync / "gone.txt").exists()

    a, b = push_both()  # nothing changed: one listing command, no rsync run
    assert (a.files_sent, a.commands, a.stream_bytes) == (0, 1, 0) and b.files_sent == 0
    assert not list(remote_base.glob(".batchsite-stage.*"))


@pytest.mark.parametrize("method", ["rsync", "tar"])
@pytest.mark.parametrize("escape", ["symlinked dir", "symlinked file"])
def test_a_symlink_on_the_site_escaping_remote_root_is_refused(method, escape, make_transport, remote_base,
                                                               site_info, tmp_path):
    root = site_info["remote_root"]
    outside = Path(f"/tmp/batchsite-outside-{uuid.uuid4().hex[:8]}")
    outside.mkdir()
    outside.chmod(0o777)
    dest = remote_base / "code"
    try:
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "x.txt").write_text("x\n")
        (src / "ok.txt").write_text("ok\n")
        t = make_transport("openssh")
        push_tree(t, src, str(dest), remote_root=root, cache_file=None, method=method)
        shutil.rmtree(dest / "sub")
        if escape == "symlinked dir":
            (dest / "sub").symlink_to(outside, target_is_directory=True)
        else:
            (dest / "sub").mkdir()
            (dest / "sub" / "x.txt").symlink_to(outside / "x.txt")
        (src / "sub" / "x.txt").write_text("changed\n")
        (src / "ok.txt").write_text("ok, changed\n")
        with pytest.raises(UnsafePathError, match="outside remote_root"):
            push_tree(t, src, str(dest), remote_root=root, cache_file=None, method=method)
        assert list(outside.iterdir()) == []
        assert (dest / "ok.txt").read_text() == "ok\n"  # refused before anything was renamed into place
        assert not list(remote_base.glob(".batchsite-stage.*"))
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_paramiko_transport_gives_rsync_a_private_pinned_ssh_client(make_transport, site_info):
    t = make_transport("ssh-private-key")
    with t.ssh_client() as client:
        opts = dict(zip(client.argv, client.argv[1:]))
        key_dir = Path(opts["-i"]).parent
        known_hosts = key_dir / "known_hosts"
        assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(opts["-i"]).stat().st_mode) == 0o600
        assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
        # the only known host key is the one the transport's live connection was given
        assert known_hosts.read_text().split()[1:] == site_info["host_key"].split()
        assert "StrictHostKeyChecking=yes" in client.argv and f"UserKnownHostsFile={known_hosts}" in client.argv
        r = subprocess.run([*client.argv, client.destination, "echo", "reached"], capture_output=True, text=True,
                           timeout=60)
        assert (r.returncode, r.stdout) == (0, "reached\n"), r.stderr
    assert not key_dir.exists()
