"""Every transport against the real sshd on loopback (and the local machine): same behaviour."""

import asyncio
import json
import os
import subprocess
import uuid

import pytest

from batchsite.config import site_config_from_connection
from batchsite.hooks.site import async_transport_for_conn, transport_for_conn
from batchsite.transport.base import HostKeyError
from batchsite.transport.local import LocalTransport

from ..conftest import site_conn


@pytest.fixture
def conn_env(site_info, monkeypatch):
    conn = site_conn(site_info)
    monkeypatch.setenv("AIRFLOW_CONN_BS_TRANSPORT", json.dumps(conn))
    return conn


def make(kind, site_info, conn, tmp_path):
    if kind == "local":
        return LocalTransport()
    extra = {**conn["extra"], "transport": kind}
    if kind == "openssh":
        extra["control_path"] = str(tmp_path / "cm")
    cfg = site_config_from_connection("bs_transport", conn["host"], conn["port"], conn["login"], extra)
    return transport_for_conn(cfg)


KINDS = ["local", "ssh", "openssh"]


@pytest.mark.parametrize("kind", KINDS)
def test_run_quotes_arguments_and_reports_exit_codes(kind, site_info, conn_env, tmp_path):
    t = make(kind, site_info, conn_env, tmp_path)
    try:
        canary = f"/tmp/batchsite-pwned-{uuid.uuid4().hex}"
        hostile = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", "a\nb", "it's"]
        r = t.run(["printf", "%s|", *hostile])
        assert r.returncode == 0
        assert r.out == "|".join(hostile) + "|"
        assert not os.path.exists(canary)
        assert t.run(["sh", "-c", "exit 7"]).returncode == 7
        # stdin reaches the remote command unchanged (binary safe)
        payload = bytes(range(256)) * 1000
        r = t.run(["sh", "-c", "cat | sha256sum"], stdin=payload)
        import hashlib
        assert r.out.split()[0] == hashlib.sha256(payload).hexdigest()
        # a command killed by a signal is never success
        assert t.run(["sh", "-c", "kill -9 $$"]).returncode != 0
        # one connection for all of it
        for _ in range(10):
            t.run(["true"])
        assert t.counters.connections_opened == 1
        assert t.counters.commands_run == 14
    finally:
        t.close()


@pytest.mark.parametrize("kind", KINDS)
def test_output_written_after_the_exit_status_is_not_cut(kind, site_info, conn_env, tmp_path):
    """sshd sends a command's exit status when its process ends, and the output still in its
    pipes after that: here a child the shell left behind writes the last line 0.3 s after the
    exit. The paramiko transport stopped reading at the exit status and lost it (under load it
    also cut large outputs short: a status or a histogram read in half)."""
    t = make(kind, site_info, conn_env, tmp_path)
    try:
        r = t.run(["sh", "-c", "echo first; (sleep 0.3; echo last-line) & exit 0"])
        assert (r.returncode, r.out.split()) == (0, ["first", "last-line"])
    finally:
        t.close()


@pytest.mark.parametrize("kind", ["ssh", "openssh"])
def test_changed_host_key_fails_with_the_fix(kind, site_info, conn_env, tmp_path, monkeypatch):
    wrong = tmp_path / "known_hosts"
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().split()
    wrong.write_text(f"[{site_info['host']}]:{site_info['port']} {pub[0]} {pub[1]}\n")
    conn = json.loads(os.environ["AIRFLOW_CONN_BS_TRANSPORT"])
    conn["extra"]["known_hosts"] = str(wrong)
    monkeypatch.setenv("AIRFLOW_CONN_BS_TRANSPORT", json.dumps(conn))
    t = make(kind, site_info, conn, tmp_path)
    with pytest.raises(HostKeyError) as e:
        t.run(["true"])
    assert "ssh-keyscan -p" in str(e.value) and "CHANGED" in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_async_transports(kind, site_info, conn_env, tmp_path):
    extra = {**conn_env["extra"], "transport": kind}
    if kind == "openssh":
        extra["control_path"] = str(tmp_path / "cm")
    if kind == "local":
        from batchsite.config import local_site_config
        cfg = local_site_config(str(tmp_path))
    else:
        cfg = site_config_from_connection("bs_transport", conn_env["host"], conn_env["port"], conn_env["login"], extra)

    async def go():
        t = async_transport_for_conn(cfg)
        try:
            rs = [await t.run(["sh", "-c", f"echo {i}; exit {i % 3}"]) for i in range(6)]
            killed = await t.run(["sh", "-c", "kill -9 $$"])
            return rs, killed, t.counters.connections_opened
        finally:
            await t.close()

    rs, killed, opened = asyncio.run(go())
    assert [r.out.strip() for r in rs] == [str(i) for i in range(6)]
    assert [r.returncode for r in rs] == [i % 3 for i in range(6)]
    assert killed.returncode != 0
    assert opened == 1
