"""The rsync push's command rendering and output parsing, with the real rsync binary.

The pushes themselves run against the real sshd in tests/integration/test_staging_rsync.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from batchsite.staging import StagingInputError, push_tree
from batchsite.staging.manifest import HashCache, LocalEntry
from batchsite.staging.transfer import TRANSFER, _forced, _parse_stat, parse_rsync_output, rsync_argv, rsync_rsh
from batchsite.transport.base import SSHClientCommand, render_command_line
from batchsite.transport.local import LocalTransport
from batchsite.transport.openssh import OpenSSHOptions, OpenSSHTransport
from batchsite.transport.ssh import SSHClientKey, SSHTarget, SSHTransport


def _openssh(tmp_path: Path, **kw) -> OpenSSHTransport:
    odd = tmp_path / "dir with 'quote' and space"
    odd.mkdir()
    opts = OpenSSHOptions("site.example.org", "alice", str(odd / "cm socket"), port=2200,
                          known_hosts=str(odd / "known hosts"), key_file=str(odd / "id key"), **kw)
    return OpenSSHTransport(opts)


def _rsh_seen_by_rsync(tmp_path: Path, client: SSHClientCommand) -> list[str]:
    """The argv the REAL rsync starts its remote shell with: a recorder script stands in for ssh
    (first word of -e), writes its argv as JSON lines and fails, so nothing is transferred."""
    record = tmp_path / "argv.txt"
    recorder = tmp_path / "fake ssh"
    recorder.write_text(f'#!/bin/sh\nfor a; do printf "%s\\n" "$a"; done > {shlex.quote(str(record))}\nexit 1\n')
    recorder.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    client = SSHClientCommand(argv=(str(recorder), *client.argv[1:]), destination=client.destination,
                              host=client.host, port=client.port, known_hosts=client.known_hosts)
    argv = rsync_argv(client, src, "/site/root/code", "sh -c 'exit 0' batchsite")
    subprocess.run(argv, input=b"", capture_output=True, timeout=30)
    return record.read_text().splitlines()


def test_rsync_argv_from_openssh_settings_reaches_ssh_unchanged(tmp_path):
    t = _openssh(tmp_path)
    with t.ssh_client() as client:
        seen = _rsh_seen_by_rsync(tmp_path, client)
    odd = tmp_path / "dir with 'quote' and space"
    # everything the transport itself passes to ssh, in order, then the destination and rsync's command
    assert seen[:len(client.argv) - 1] == list(client.argv[1:])
    opts = dict(zip(seen, seen[1:]))
    assert opts["-p"] == "2200" and opts["-i"] == str(odd / "id key")
    assert "StrictHostKeyChecking=yes" in seen and "BatchMode=yes" in seen
    assert f"UserKnownHostsFile={odd / 'known hosts'}" in seen
    assert f"ControlPath={odd / 'cm socket'}" in seen  # the transport's own ControlMaster
    # rsync passes user@host as `-l user host`
    assert seen[len(client.argv) - 1:len(client.argv) + 2] == ["-l", "alice", "site.example.org"]
    remote = seen[len(client.argv) + 2:]
    assert remote[0] == "sh -c 'exit 0' batchsite"  # the rsync path goes to the site's shell as it is
    assert remote[1] == "--server" and remote[-4:] == ["--compare-dest", "/site/root/code", ".",
                                                        "/dev/null/batchsite-stage"]


def test_no_host_key_check_is_passed_on_as_the_transport_has_it(tmp_path):
    with _openssh(tmp_path, no_host_key_check=True).ssh_client() as client:
        assert "StrictHostKeyChecking=no" in client.argv and "StrictHostKeyChecking=yes" not in client.argv


def test_rsync_rsh_refuses_what_rsync_cannot_pass():
    with pytest.raises(StagingInputError, match="rsync -e"):
        rsync_rsh(["ssh", "-i", "/keys/a\\b"])
    assert rsync_rsh(["ssh", "-o", "UserKnownHostsFile=/k h"]) == "ssh -o 'UserKnownHostsFile=/k h'"


def test_rsync_argv_options():
    client = SSHClientCommand(argv=("ssh", "-p", "22"), destination="u@h", host="h", port=22, known_hosts=None)
    argv = rsync_argv(client, Path("/local/src"), "/r/code", "RP")
    assert argv[0] == "rsync" and argv[-2:] == ["/local/src/", "u@h:/dev/null/batchsite-stage"]
    for opt in ("--files-from=-", "--from0", "--times", "--copy-links", "--compare-dest=/r/code", "--stats",
                "--no-human-readable", "--rsync-path=RP"):
        assert opt in argv
    assert "--ignore-times" not in argv
    assert "--ignore-times" in rsync_argv(client, Path("/local/src"), "/r/code", "RP", ignore_times=True)
    # never the owner, group, devices or a delete on the site: deletions are batchsite's own command
    assert not {"-a", "--delete", "-o", "-g", "-D", "--perms"} & set(argv)


def test_env_script_output_goes_to_stderr_when_stdout_is_a_protocol():
    line = render_command_line(["rsync"], env_script="/site env.sh", env_output_to_stderr=True)
    assert line == ". '/site env.sh' >&2 && rsync"
    assert render_command_line(["rsync"], env_script="/e.sh") == ". /e.sh && rsync"


def test_parse_rsync_output_of_a_real_run(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    names = ["plain.txt", "sp ace/ü-é.txt", "tab\there.txt"]
    for i, rel in enumerate(names):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x" * (10 + i))
    out = subprocess.run(["rsync", "--files-from=-", "--from0", "--times", "--out-format=%i %l %n", "--stats",
                          "--no-human-readable", f"{src}/", f"{dest}/"],
                         input="".join(f"{n}\0" for n in names).encode(), capture_output=True, check=True).stdout
    sent, total = parse_rsync_output(out)
    assert sorted(sent) == sorted((n, 10 + i) for i, n in enumerate(names))
    assert total > 0
    # unchanged: nothing itemized
    out = subprocess.run(["rsync", "--files-from=-", "--from0", "--times", "--out-format=%i %l %n", "--stats",
                          "--no-human-readable", f"{src}/", f"{dest}/"],
                         input="".join(f"{n}\0" for n in names).encode(), capture_output=True, check=True).stdout
    assert parse_rsync_output(out)[0] == []


def test_forced_files_are_the_ones_edited_with_their_mtime_put_back():
    last = 1_000
    mine = {
        "restored.txt": LocalEntry(Path("r"), 1, "", (1, 500, 1_500)),  # touch -r after the push
        "edited.txt": LocalEntry(Path("e"), 1, "", (1, 1_200, 1_200)),  # a normal edit: mtime changed
        "old.txt": LocalEntry(Path("o"), 1, "", (1, 500, 600)),  # untouched since before the push
    }
    assert _forced(mine, last) == ["restored.txt"]
    assert _forced(mine, None) == []  # no push of this pair recorded: rsync's own quick check


def test_last_push_times_survive_the_cache_file(tmp_path):
    cache = HashCache(tmp_path / "c.json")
    cache.pushed("/src\0u@h:22:/r/code", 123)
    cache.save()
    assert HashCache(tmp_path / "c.json").pushes == {"/src\0u@h:22:/r/code": 123}


def test_local_transport_uses_the_tar_push_and_says_why(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    root = tmp_path / "site"
    root.mkdir()
    rep = push_tree(LocalTransport(), src, str(root / "code"), remote_root=str(root), cache_file=None)
    assert (rep.method, rep.files_sent) == ("tar", 1)
    assert rep.fallback_reason == "the local transport gives no ssh client settings"
    assert "via tar (the local transport gives no ssh client settings)" in rep.summary()
    with pytest.raises(Exception, match="with rsync: the local transport"):
        push_tree(LocalTransport(), src, str(root / "code"), remote_root=str(root), cache_file=None, method="rsync")
    with pytest.raises(StagingInputError, match="method='scp'"):
        push_tree(LocalTransport(), src, str(root / "code"), remote_root=str(root), cache_file=None, method="scp")
    assert os.listdir(root / "code") == ["a.txt"]


def _site(tmp_path: Path) -> tuple[LocalTransport, Path]:
    root = tmp_path / "site"
    (root / "code" / "sub").mkdir(parents=True)
    (root / "code" / "a.txt").write_text("aa\n")
    (root / "code" / "sub" / "b c.txt").write_text("b\n")
    (root / "code" / "x.pyc").write_text("never listed\n")
    os.utime(root / "code" / "a.txt", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return LocalTransport(), root


def test_site_stat_listing_sizes_mtimes_and_rsync_probe(tmp_path):
    t, root = _site(tmp_path)
    r = t.sh(TRANSFER, "stat", str(root), str(root / "code"), str(root))
    listing = _parse_stat(r.out, "code")
    assert listing.has_rsync is (shutil.which("rsync") is not None)
    assert listing.files == {"a.txt": (3, 1_700_000_000_123_456_789),
                             "sub/b c.txt": (2, (root / "code" / "sub" / "b c.txt").stat().st_mtime_ns)}
    vfs = os.statvfs(root)
    assert abs(listing.free_bytes - vfs.f_bavail * vfs.f_frsize) < 64 << 20  # df's view, give or take other writers
    missing = _parse_stat(t.sh(TRANSFER, "stat", str(root), str(root / "no" / "dir"), str(root / "no")).out, "x")
    assert missing.files is None and missing.free_bytes is not None


def test_site_delete_removes_only_listed_files_inside_remote_root(tmp_path):
    t, root = _site(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (root / "code" / "escape.txt").symlink_to(outside)
    r = t.sh(TRANSFER, "delete", str(root), str(root / "code"), stdin=b"sub/b c.txt\nmissing.txt\n")
    assert r.returncode == 0 and r.out.splitlines() == ["@@DELETED", "sub/b c.txt", "@@END"]
    assert sorted(p.name for p in (root / "code").rglob("*") if p.is_file()) == ["a.txt", "escape.txt", "x.pyc"]
    r = t.sh(TRANSFER, "delete", str(root), str(root / "code"), stdin=b"escape.txt\n")
    assert r.returncode == 77 and "outside remote_root" in r.err
    assert outside.read_text() == "keep me\n" and (root / "code" / "escape.txt").is_symlink()


@pytest.mark.parametrize("extra, want", [
    ({"key_file": "/keys/id"}, SSHClientKey(key_file="/keys/id")),
    ({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n..."},
     SSHClientKey(private_key="-----BEGIN OPENSSH PRIVATE KEY-----\n...")),
    ({"private_key": "encrypted", "private_key_passphrase": "secret"}, None),  # ssh -o BatchMode cannot ask
    ({}, None),  # a password connection: the tar push
])
def test_the_connections_key_for_the_ssh_client(extra, want, monkeypatch):
    from batchsite.config import site_config_from_connection
    from batchsite.hooks.connection import _ssh_client_key

    conn = {"conn_type": "batchsite", "host": "h", "port": 22, "login": "u",
            "extra": {"scheduler": "slurm", "transport": "ssh", "remote_root": "/r", **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_KEYS_SITE", json.dumps(conn))
    cfg = site_config_from_connection("keys_site", "h", 22, "u", conn["extra"])
    assert _ssh_client_key(cfg)() == want


def test_ssh_transport_without_a_usable_key_gives_no_client_and_does_not_connect():
    def connect():
        raise AssertionError("no connection may be opened for this")

    t = SSHTransport(connect, SSHTarget("h"), client_key=lambda: None)
    with t.ssh_client() as client:
        assert client is None
