"""``ssh`` transport over the Airflow SSH provider: ``SSHHook`` (paramiko) in tasks,
``SSHHookAsync`` (asyncssh) in the triggerer.

One connection per transport object, opened lazily and reused for every command of a task
(the SSH provider's ``with hook.get_conn()`` pattern closes it after each use; we do not).
Host keys are always verified unless the connection says ``no_host_key_check: true``.
We do not inherit two provider behaviours: ``SSHHookAsync.run_command`` reports a command
killed by a signal as exit 0, and ``SSHHook`` retries a host-key rejection three times.
"""

from __future__ import annotations

import os
import socket
import time

from batchsite.transport.base import AsyncTransport, HostKeyError, Transport, TransportError


def host_key_help(host: str, port: int, known_hosts: str | None) -> str:
    where = f"the known_hosts file {known_hosts}" if known_hosts else "the connection's `host_key` extra"
    return (
        f"host key of {host}:{port} is unknown or has CHANGED. If the site really changed its key, "
        f"update {where} with the output of `ssh-keyscan -p {port} -t ed25519 {host}` (check the "
        f"fingerprint with the site admins first). Do not turn host-key checking off to get past this."
    )


def _key_from_known_hosts(path: str, host: str, port: int):
    import paramiko

    hk = paramiko.HostKeys()
    hk.load(os.path.expanduser(path))
    name = host if port == 22 else f"[{host}]:{port}"
    entry = hk.lookup(name)
    if not entry:
        return None
    # prefer ed25519, as ssh-keyscan -t ed25519 writes
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "ssh-rsa"):
        if kind in entry:
            return entry[kind]
    return next(iter(entry.values()))


class SSHTransport(Transport):
    kind = "ssh"

    def __init__(
        self,
        ssh_conn_id: str,
        *,
        env_script: str | None = None,
        known_hosts: str | None = None,
        connect_timeout: int = 20,
    ):
        super().__init__(env_script)
        from airflow.providers.ssh.hooks.ssh import SSHHook

        # conn_retry_attempts=1: retries belong to the layer that knows what is transient
        try:
            self.hook = SSHHook(ssh_conn_id=ssh_conn_id, conn_retry_attempts=1, conn_timeout=connect_timeout)
        except Exception as e:
            if "cannot be read by paramiko" not in str(e):
                raise
            # the provider's text never mentions the usual cause
            raise TransportError(
                f"connection {ssh_conn_id!r}: extra private_key cannot be decrypted or parsed: check the "
                "extra private_key_passphrase (or remove it for an unencrypted key) and that the key is "
                "RSA, ECDSA or Ed25519 in OpenSSH/PEM format"
            ) from None
        if getattr(self.hook, "allow_host_key_change", False) and not self.hook.no_host_key_check:
            raise ValueError(
                f"connection {ssh_conn_id!r}: extra allow_host_key_change=true silently disables host-key "
                "verification; remove it (or, knowingly, set no_host_key_check=true, which logs a warning)"
            )
        self.known_hosts = known_hosts
        if known_hosts and self.hook.host_key is None and not self.hook.no_host_key_check:
            self.hook.host_key = _key_from_known_hosts(known_hosts, self.hook.remote_host, self.hook.port)
            if self.hook.host_key is None:
                raise HostKeyError(host_key_help(self.hook.remote_host, self.hook.port, known_hosts))
        self._client = None

    def _connect(self):
        import paramiko

        if self._client is not None:
            t = self._client.get_transport()
            if t is not None and t.is_active():
                return self._client
            self._client = None
        host, port = self.hook.remote_host, self.hook.port
        try:
            self.hook.client = None  # never let the hook hand back a dead cached client
            client = self.hook.get_conn()
        except paramiko.BadHostKeyException as e:
            raise HostKeyError(host_key_help(host, port, self.known_hosts)) from e
        except paramiko.SSHException as e:
            if "known_hosts" in str(e) or "host key" in str(e).lower():
                raise HostKeyError(host_key_help(host, port, self.known_hosts)) from e
            raise TransportError(f"ssh {self.hook.username}@{host}:{port}: {e}") from e
        except (OSError, EOFError) as e:
            raise TransportError(f"ssh {self.hook.username}@{host}:{port}: {e}") from e
        self.counters.connections_opened += 1
        self._client = client
        return client

    def _exec(self, line, stdin, timeout):
        client = self._connect()
        try:
            chan = client.get_transport().open_session(timeout=30)
            chan.settimeout(1.0)
            chan.exec_command(line)
            if stdin:
                # paramiko's sendall slices the remaining bytes after every 32 kB packet: quadratic,
                # 1.8 MB/s for a 48 MB push. Feeding it 1 MB views keeps each copy small.
                view = memoryview(stdin)
                for i in range(0, len(view), 1 << 20):
                    chan.sendall(view[i:i + (1 << 20)])
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                progressed = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    progressed = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    progressed = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed and not progressed:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    # a silent connection (dropped traffic) would hang the next command too
                    chan.close()
                    self.close()
                    raise TransportError(f"remote command timed out after {timeout}s")
                if not progressed:
                    time.sleep(0.005)
            rc = chan.recv_exit_status()
            chan.close()
        except (OSError, EOFError, socket.timeout) as e:
            self._client = None
            raise TransportError(f"ssh connection lost: {e}") from e
        except Exception as e:  # paramiko.SSHException and friends
            if e.__class__.__module__.startswith("paramiko"):
                self._client = None
                raise TransportError(f"ssh connection lost: {e}") from e
            raise
        # -1: the remote process ended without an exit status (killed by a signal)
        return (255 if rc < 0 else rc), bytes(out), bytes(err)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AsyncSSHTransport(AsyncTransport):
    kind = "ssh"

    def __init__(self, ssh_conn_id: str, *, env_script: str | None = None, known_hosts: str | None = None,
                 connect_timeout: float = 20.0):
        super().__init__(env_script)
        import logging

        # asyncssh logs every command line at INFO: status scripts would flood the task logs
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        from airflow.providers.ssh.hooks.ssh import SSHHookAsync

        kw = {"known_hosts": known_hosts} if known_hosts else {}
        self.hook = SSHHookAsync(ssh_conn_id=ssh_conn_id, **kw)
        self.ssh_conn_id = ssh_conn_id
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self._conn = None

    async def _connect(self):
        import asyncio

        import asyncssh

        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        try:
            # SSHHookAsync sets no connect timeout: with dropped traffic a SYN waits ~2 min
            conn = await asyncio.wait_for(self.hook.get_conn(), self.connect_timeout)
        except asyncio.TimeoutError as e:
            raise TransportError(f"ssh ({self.ssh_conn_id}): no answer within {self.connect_timeout:.0f}s") from e
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyError(host_key_help(str(self.hook.host or self.ssh_conn_id), 0, self.known_hosts)) from e
        except (OSError, asyncssh.Error) as e:
            raise TransportError(f"ssh ({self.ssh_conn_id}): {e}") from e
        self.counters.connections_opened += 1
        self._conn = conn
        return conn

    async def _exec(self, line, stdin, timeout):
        import asyncio

        import asyncssh

        conn = await self._connect()
        try:
            # asyncssh's own timeout starts once the channel is open; opening it over a silent
            # connection (dropped traffic) would wait for TCP to give up, so bound the whole call
            r = await asyncio.wait_for(
                conn.run(line, input=stdin or b"", encoding=None, check=False, timeout=timeout), timeout)
        except (asyncssh.TimeoutError, asyncio.TimeoutError) as e:
            # the connection may be silently dead (dropped traffic): open a new one next time
            await self.close()
            raise TransportError(f"remote command timed out after {timeout}s") from e
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as e:
            self._conn = None
            raise TransportError(f"ssh connection lost: {e}") from e
        rc = r.exit_status
        if rc is None or rc < 0:  # killed by a signal: never "success"
            rc = 255
        return rc, r.stdout or b"", r.stderr or b""

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
