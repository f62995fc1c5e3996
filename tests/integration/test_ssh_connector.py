"""The ``ssh`` transport is core: over connectors that are plain paramiko / asyncssh (no SSH
provider, Airflow made unimportable) it behaves as it does over the Airflow hooks
(``test_transport.py``): one connection for every command, a closed one reopened, a signal
exit never 0, a wrong host key refused with the ``ssh-keyscan`` fix."""

from __future__ import annotations

import subprocess

from ..without_airflow import run_without_airflow

CONNECTORS = """
    import asyncio, sys

    import asyncssh, paramiko

    from batchsite.transport.base import HostKeyError
    from batchsite.transport.ssh import AsyncSSHTransport, SSHTarget, SSHTransport

    info, wrong_known_hosts = {info!r}, {wrong!r}

    def paramiko_connect(known_hosts):
        def connect():
            client = paramiko.SSHClient()
            client.load_host_keys(known_hosts)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(info["host"], int(info["port"]), info["user"], key_filename=info["key_file"],
                           timeout=10, allow_agent=False, look_for_keys=False)
            return client
        return connect

    def asyncssh_connect():
        return asyncssh.connect(info["host"], port=int(info["port"]), username=info["user"],
                                client_keys=[info["key_file"]], known_hosts=info["known_hosts"])

    def target(known_hosts):
        return SSHTarget(info["host"], int(info["port"]), info["user"], known_hosts)
"""


def test_ssh_transports_over_plain_connectors_without_airflow(site_info, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{site_info['host']}]:{site_info['port']} {kind} {key}\n")

    r = run_without_airflow(CONNECTORS.format(info=site_info, wrong=str(wrong)) + """
    t = SSHTransport(paramiko_connect(info["known_hosts"]), target(info["known_hosts"]))
    codes = [(r.returncode, r.out.strip()) for r in (t.run(["sh", "-c", f"echo {i}; exit {i % 2}"]) for i in range(4))]
    assert codes == [(0, "0"), (1, "1"), (0, "2"), (1, "3")], codes
    assert t.run(["sh", "-c", "kill -9 $$"]).returncode == 255
    assert t.run(["sh", "-c", "cat | wc -c"], stdin=b"x" * (3 << 20)).out.strip() == str(3 << 20)
    assert t.counters.connections_opened == 1
    t.close()
    assert t.run(["true"]).returncode == 0 and t.counters.connections_opened == 2
    t.close()

    try:
        SSHTransport(paramiko_connect(wrong_known_hosts), target(wrong_known_hosts)).run(["true"])
        raise AssertionError("a wrong host key was accepted")
    except HostKeyError as e:
        assert f"ssh-keyscan -p {info['port']}" in str(e) and wrong_known_hosts in str(e), e

    async def watch():
        a = AsyncSSHTransport(asyncssh_connect, target(info["known_hosts"]), connect_timeout=10)
        try:
            outs = [(await a.run(["sh", "-c", "echo $((6 * 7))"])).out.strip() for _ in range(3)]
            killed = (await a.run(["sh", "-c", "kill -9 $$"])).returncode
            return outs, killed, a.counters.connections_opened
        finally:
            await a.close()

    assert asyncio.run(watch()) == (["42"] * 3, 255, 1)
    sys.exit("airflow" in sys.modules)
    """)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
